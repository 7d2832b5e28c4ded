//! The wire format shared with the Python SDK (`sdk/fixtures/wire.json`): channel names,
//! room rules, envelopes, the legacy routing rule and webhook signatures, as the Rust
//! crates produce and accept them. `sdk/python/tests/test_wire.py` checks the Python
//! package against the same file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use serde_json::Value;

fn fixtures() -> Value {
    serde_json::from_str(include_str!("../../../sdk/fixtures/wire.json")).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn channel_names_follow_the_targets() {
    let fx = fixtures();
    for case in fx["channels"].as_array().unwrap() {
        let (audience, _) =
            rooms::resolve_targets(case["tenant"].as_str(), &strings(&case["to"]), &[]).unwrap();
        let channels = rooms::Channels::new(case["prefix"].as_str().unwrap());
        assert_eq!(
            channels.for_target(case["ns"].as_str().unwrap(), &audience),
            case["channel"].as_str().unwrap(),
            "{case}"
        );
    }
    for case in fx["streams"].as_array().unwrap() {
        let channels = rooms::Channels::new(case["prefix"].as_str().unwrap());
        let ns = case["ns"].as_str().unwrap();
        assert_eq!(channels.history(ns), case["history"].as_str().unwrap());
        assert_eq!(channels.upstream(ns), case["upstream"].as_str().unwrap());
    }
}

#[test]
fn room_names_and_targets_are_checked_alike() {
    let fx = fixtures();
    for name in strings(&fx["rooms"]["valid"]) {
        assert!(
            rooms::Room::parse(&name).is_ok(),
            "{name:?} should be valid"
        );
    }
    for name in strings(&fx["rooms"]["invalid"]) {
        assert!(
            rooms::Room::parse(&name).is_err(),
            "{name:?} should be invalid"
        );
    }
    for case in fx["invalid_targets"].as_array().unwrap() {
        assert!(
            rooms::resolve_targets(case["tenant"].as_str(), &strings(&case["to"]), &[]).is_err(),
            "{case}"
        );
    }
    for case in fx["legacy_targets"].as_array().unwrap() {
        let target = rooms::legacy_target(
            case["room"].as_str(),
            case["user"].as_str(),
            case["doctype"].as_str(),
            case["docname"].as_str(),
        )
        .unwrap();
        let to: Vec<String> = match target {
            rooms::Target::Broadcast => Vec::new(),
            rooms::Target::Rooms(rooms) => rooms.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(to, strings(&case["to"]), "{case}");
    }
}

#[test]
fn envelopes_decode_and_encode_to_the_same_json() {
    for case in fixtures()["envelopes"].as_array().unwrap() {
        let mut json = case["envelope"].clone();
        json["id"] = "0193-fixture".into();
        json["ts"] = 1_700_000_000_000u64.into();
        let env =
            envelope::Envelope::decode(json.to_string().as_bytes(), envelope::Limits::default())
                .unwrap();
        let back: Value = serde_json::from_slice(&env.to_json().unwrap()).unwrap();
        assert_eq!(back, json, "field names and omissions are the wire's");
    }
}

#[test]
fn webhook_signatures_verify_as_specified() {
    for case in fixtures()["signatures"].as_array().unwrap() {
        let got = publisher::verify_signature(
            case["secret"].as_str().unwrap().as_bytes(),
            case["header"].as_str().unwrap(),
            case["body"].as_str().unwrap().as_bytes(),
            case["now"].as_u64().unwrap(),
            case["tolerance"].as_u64().unwrap(),
        );
        let expected = match case["result"].as_str().unwrap() {
            "ok" => Ok(()),
            "mismatch" => Err(publisher::SignatureError::Mismatch),
            "stale" => Err(publisher::SignatureError::Stale),
            _ => Err(publisher::SignatureError::Malformed),
        };
        assert_eq!(got, expected, "{case}");
    }
}
