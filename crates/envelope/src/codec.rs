//! JSON and MessagePack codecs with size limits and typed errors.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{Draft, Envelope, VERSION};

/// Default largest encoded envelope accepted: 1 MiB, the same default as Socket.IO's
/// `maxHttpBufferSize`.
pub const DEFAULT_MAX_SIZE: usize = 1024 * 1024;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded message accepted, in bytes. Default [`DEFAULT_MAX_SIZE`].
    pub max_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

impl Limits {
    /// Sets the largest accepted encoded size.
    pub fn with_max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than the configured limit; nothing was parsed.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    Oversize {
        /// Encoded size in bytes.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not valid JSON / MessagePack, or a field has the wrong type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message is from a newer (or an impossible) envelope version.
    #[error("unsupported envelope version {found}; this node reads versions 1 to {supported}")]
    UnknownVersion {
        /// The `v` found in the message.
        found: u64,
        /// The highest version this build understands.
        supported: u32,
    },
    /// `event` is missing or empty.
    #[error("missing event name")]
    MissingEvent,
    /// Both `data` and `args` were given.
    #[error("give either `data` or `args`, not both")]
    ConflictingArguments,
    /// The namespace does not start with `/`.
    #[error("namespace {0:?} must start with '/'")]
    InvalidNamespace(String),
    /// The payload is empty.
    #[error("empty message")]
    Empty,
    /// A binary placeholder names an attachment the message does not carry.
    #[error("placeholder {num} names a missing attachment (the message has {count})")]
    MissingAttachment {
        /// The placeholder's `num`.
        num: usize,
        /// How many attachments the message carries.
        count: usize,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serializer refused the value.
    #[error("cannot encode message: {0}")]
    Serialize(String),
}

/// Which codec a buffer is in, judged by its first significant byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Json,
    MessagePack,
}

fn sniff(bytes: &[u8]) -> Result<Codec, DecodeError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(DecodeError::Empty),
        Some(b'{') => Ok(Codec::Json),
        Some(0x80..=0x8f | 0xde | 0xdf) => Ok(Codec::MessagePack),
        Some(_) => Err(DecodeError::Malformed(
            "expected a JSON object or a MessagePack map".into(),
        )),
    }
}

fn check_size(bytes: &[u8], limits: Limits) -> Result<(), DecodeError> {
    if bytes.len() > limits.max_size {
        return Err(DecodeError::Oversize {
            size: bytes.len(),
            limit: limits.max_size,
        });
    }
    Ok(())
}

fn parse<T: DeserializeOwned>(codec: Codec, bytes: &[u8]) -> Result<T, String> {
    match codec {
        Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// Only the version, so that a message from a newer publisher whose fields no longer
/// parse is reported as "unknown version" rather than "malformed".
#[derive(Deserialize)]
struct VersionProbe {
    #[serde(default)]
    v: Option<u64>,
}

fn check_version(v: u64) -> Result<(), DecodeError> {
    if v == 0 || v > u64::from(VERSION) {
        return Err(DecodeError::UnknownVersion {
            found: v,
            supported: VERSION,
        });
    }
    Ok(())
}

/// Parses `T`, and on failure tells an unknown version apart from a malformed message.
fn parse_versioned<T: DeserializeOwned>(codec: Codec, bytes: &[u8]) -> Result<T, DecodeError> {
    parse::<T>(codec, bytes).map_err(|detail| {
        match parse::<VersionProbe>(codec, bytes) {
            Ok(VersionProbe { v: Some(v) }) => check_version(v).err(),
            _ => None,
        }
        .unwrap_or(DecodeError::Malformed(detail))
    })
}

/// The parts of a message every decoder checks.
struct Body<'a> {
    event: &'a str,
    data: Option<&'a Value>,
    args: Option<&'a [Value]>,
    attachments: usize,
    ns: Option<&'a str>,
}

fn check_body(b: Body<'_>) -> Result<(), DecodeError> {
    if b.event.is_empty() {
        return Err(DecodeError::MissingEvent);
    }
    let args = match (b.data, b.args) {
        (Some(_), Some(_)) => return Err(DecodeError::ConflictingArguments),
        (Some(data), None) => std::slice::from_ref(data),
        (None, Some(args)) => args,
        (None, None) => &[],
    };
    if let Some(ns) = b.ns
        && !ns.starts_with('/')
    {
        return Err(DecodeError::InvalidNamespace(ns.to_owned()));
    }
    // Placeholders mean something only in a message that carries attachments.
    if b.attachments > 0
        && let Some(num) = crate::binary::dangling_placeholder(args, b.attachments)
    {
        return Err(DecodeError::MissingAttachment {
            num,
            count: b.attachments,
        });
    }
    Ok(())
}

impl Envelope {
    /// Decodes an envelope in either codec (see the crate docs for how they are told apart).
    ///
    /// ```
    /// use envelope::{Envelope, Limits, DecodeError};
    /// let env = Envelope::decode(br#"{"v":1,"id":"a","ts":1,"origin":"x","event":"hi"}"#, Limits::default())?;
    /// assert_eq!(env.event, "hi");
    /// let err = Envelope::decode(br#"{"v":9,"id":"a","ts":1,"origin":"x","event":"hi"}"#, Limits::default());
    /// assert!(matches!(err, Err(DecodeError::UnknownVersion { found: 9, .. })));
    /// # Ok::<(), DecodeError>(())
    /// ```
    pub fn decode(bytes: &[u8], limits: Limits) -> Result<Self, DecodeError> {
        check_size(bytes, limits)?;
        let codec = sniff(bytes)?;
        let env: Envelope = parse_versioned(codec, bytes)?;
        check_version(u64::from(env.v))?;
        check_body(Body {
            event: &env.event,
            data: env.data.as_ref(),
            args: env.args.as_deref(),
            attachments: env.attachments.len(),
            ns: Some(&env.ns),
        })?;
        Ok(env)
    }

    /// Encodes as JSON, the form for publishers in any language.
    pub fn to_json(&self) -> Result<Vec<u8>, EncodeError> {
        serde_json::to_vec(self).map_err(|e| EncodeError::Serialize(e.to_string()))
    }

    /// Encodes as MessagePack with named fields (a map), the node-to-node form. Named
    /// fields keep the format forward compatible: a reader skips keys it does not know.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, EncodeError> {
        rmp_serde::to_vec_named(self).map_err(|e| EncodeError::Serialize(e.to_string()))
    }
}

impl Draft {
    /// Decodes a draft from JSON, as sent to the HTTP publish endpoint.
    pub fn decode_json(bytes: &[u8], limits: Limits) -> Result<Self, DecodeError> {
        check_size(bytes, limits)?;
        if sniff(bytes)? != Codec::Json {
            return Err(DecodeError::Malformed("expected a JSON object".into()));
        }
        let draft: Draft = parse_versioned(Codec::Json, bytes)?;
        if let Some(v) = draft.v {
            check_version(u64::from(v))?;
        }
        check_body(Body {
            event: &draft.event,
            data: draft.data.as_ref(),
            args: draft.args.as_deref(),
            attachments: draft.attachments.len(),
            ns: draft.ns.as_deref(),
        })?;
        Ok(draft)
    }
}

pub(crate) fn decode_json_object<T: DeserializeOwned>(
    bytes: &[u8],
    limits: Limits,
) -> Result<T, DecodeError> {
    check_size(bytes, limits)?;
    if sniff(bytes)? != Codec::Json {
        return Err(DecodeError::Malformed("expected a JSON object".into()));
    }
    parse(Codec::Json, bytes).map_err(DecodeError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Flags;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn check(input: &str, expected: Result<&str, DecodeError>) {
        let got = Envelope::decode(input.as_bytes(), Limits::default()).map(|e| e.event);
        assert_eq!(got, expected.map(str::to_owned), "input: {input}");
    }

    const HEAD: &str = r#""v":1,"id":"m1","ts":5,"origin":"svc""#;

    #[test]
    fn decode_cases() {
        check(&format!(r#"{{{HEAD},"event":"e"}}"#), Ok("e"));
        check(
            &format!(r#"{{{HEAD},"event":"e","future_field":[1,2]}}"#),
            Ok("e"),
        );
        check(
            &format!(r#"  {{{HEAD},"event":"e","flags":{{"volatile":true,"later":1}}}}"#),
            Ok("e"),
        );
        check(&format!(r#"{{{HEAD}}}"#), Err(DecodeError::MissingEvent));
        check(
            &format!(r#"{{{HEAD},"event":""}}"#),
            Err(DecodeError::MissingEvent),
        );
        check(
            &format!(r#"{{{HEAD},"event":"e","data":1,"args":[1]}}"#),
            Err(DecodeError::ConflictingArguments),
        );
        check(
            &format!(r#"{{{HEAD},"event":"e","ns":"chat"}}"#),
            Err(DecodeError::InvalidNamespace("chat".into())),
        );
        check(
            r#"{"v":2,"id":"m1","ts":5,"origin":"svc","event":"e"}"#,
            Err(DecodeError::UnknownVersion {
                found: 2,
                supported: 1,
            }),
        );
        // A future version whose fields changed shape is still "unknown version".
        check(
            r#"{"v":3,"id":7,"event":{"name":"e"}}"#,
            Err(DecodeError::UnknownVersion {
                found: 3,
                supported: 1,
            }),
        );
        check(
            r#"{"v":0,"id":"m1","ts":5,"origin":"svc","event":"e"}"#,
            Err(DecodeError::UnknownVersion {
                found: 0,
                supported: 1,
            }),
        );
        check("", Err(DecodeError::Empty));
        check("   ", Err(DecodeError::Empty));
        assert!(matches!(
            Envelope::decode(b"[1,2]", Limits::default()),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::decode(br#"{"v":1,"event":"#, Limits::default()),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn oversize_is_refused_before_parsing() {
        let big = format!(r#"{{{HEAD},"event":"e","data":"{}"}}"#, "x".repeat(200));
        let limits = Limits::default().with_max_size(100);
        assert_eq!(
            Envelope::decode(big.as_bytes(), limits),
            Err(DecodeError::Oversize {
                size: big.len(),
                limit: 100
            })
        );
        // Even garbage is only measured, never parsed.
        assert!(matches!(
            Envelope::decode(&[0xff; 101], limits),
            Err(DecodeError::Oversize { .. })
        ));
    }

    #[test]
    fn draft_fills_in_defaults() {
        let draft =
            Draft::decode_json(br#"{"event":"e","to":["user:1"]}"#, Limits::default()).unwrap();
        let env = draft.finish("node-a");
        assert_eq!(env.v, VERSION);
        assert_eq!(env.origin, "node-a");
        assert_eq!(env.ns, "/");
        assert!(!env.id.is_empty());
        assert!(env.ts > 1_600_000_000_000);
        assert_eq!(
            Draft::decode_json(br#"{"v":7,"event":"e"}"#, Limits::default()),
            Err(DecodeError::UnknownVersion {
                found: 7,
                supported: 1
            })
        );
        assert_eq!(
            Draft::decode_json(br#"{"data":1}"#, Limits::default()),
            Err(DecodeError::MissingEvent)
        );
    }

    #[test]
    fn arguments_prefers_args_then_data() {
        let mut env = Envelope::new("o", "e", json!(1));
        assert_eq!(env.arguments(), &[json!(1)]);
        env.args = Some(vec![json!("a"), json!("b")]);
        env.data = None;
        assert_eq!(env.arguments(), &[json!("a"), json!("b")]);
        env.args = None;
        assert!(env.arguments().is_empty());
    }

    #[test]
    fn attachments_travel_as_base64_in_json_and_as_bytes_in_msgpack() {
        let mut env = Envelope::new(
            "svc",
            "frame",
            json!({"meta": 1, "bin": crate::placeholder(0)}),
        );
        env.attachments = vec![bytes::Bytes::from_static(&[0, 159, 255, 1])];
        let text = String::from_utf8(env.to_json().unwrap()).unwrap();
        assert!(text.contains(r#""attachments":["AJ//AQ=="]"#), "{text}");
        assert_eq!(
            Envelope::decode(text.as_bytes(), Limits::default()).unwrap(),
            env
        );
        let packed = env.to_msgpack().unwrap();
        // The raw bytes appear as-is (a `bin 8` of length 4), not as text.
        assert!(packed.windows(6).any(|w| w == [0xc4, 4, 0, 159, 255, 1]));
        assert_eq!(Envelope::decode(&packed, Limits::default()).unwrap(), env);
    }

    #[test]
    fn attachment_errors_are_typed() {
        let body = |rest: &str| format!(r#"{{"event":"e",{rest}}}"#);
        let missing = body(r#""args":[{"_placeholder":true,"num":1}],"attachments":["AA=="]"#);
        assert_eq!(
            Draft::decode_json(missing.as_bytes(), Limits::default()),
            Err(DecodeError::MissingAttachment { num: 1, count: 1 })
        );
        let bad = body(r#""data":1,"attachments":["not base64!"]"#);
        let err = Draft::decode_json(bad.as_bytes(), Limits::default()).unwrap_err();
        assert!(err.to_string().contains("not valid base64"), "{err}");
        // Without attachments a placeholder-shaped object is ordinary data.
        let plain = body(r#""data":{"_placeholder":true,"num":0}"#);
        assert!(Draft::decode_json(plain.as_bytes(), Limits::default()).is_ok());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-1e9f64..1e9f64).prop_map(|f| json!(f)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    prop_compose! {
        fn arb_envelope()(
            id in "[a-z0-9]{1,32}",
            ts in any::<u64>(),
            origin in ".{0,16}",
            ns in "/[a-z]{0,8}",
            event in ".{1,16}",
            payload in prop_oneof![
                Just((None, None)),
                arb_json().prop_map(|d| (Some(d), None)),
                prop::collection::vec(arb_json(), 0..4).prop_map(|a| (None, Some(a))),
            ],
            to in prop::collection::vec("[a-z]{1,6}:.{1,12}", 0..4),
            except in prop::collection::vec("[a-z]{1,6}:.{1,12}", 0..2),
            volatile in any::<bool>(),
            local in any::<bool>(),
            trace in prop::option::of("[0-9a-f-]{55}"),
            tenant in prop::option::of(".{1,12}"),
            attachments in prop::collection::vec(
                prop::collection::vec(any::<u8>(), 0..16).prop_map(bytes::Bytes::from), 0..3),
        ) -> Envelope {
            Envelope {
                v: VERSION, id, ts, origin, ns, tenant, event,
                data: payload.0, args: payload.1, attachments, to, except,
                flags: Flags { volatile, local }, trace, socket: None, sender: None,
            }
        }
    }

    proptest! {
        #[test]
        fn json_round_trip(env in arb_envelope()) {
            let bytes = env.to_json().unwrap();
            prop_assert_eq!(Envelope::decode(&bytes, Limits::default()).unwrap(), env);
        }

        #[test]
        fn msgpack_round_trip(env in arb_envelope()) {
            let bytes = env.to_msgpack().unwrap();
            prop_assert_eq!(Envelope::decode(&bytes, Limits::default()).unwrap(), env);
        }

        #[test]
        fn fuzz_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes, Limits::default());
            let _ = Draft::decode_json(&bytes, Limits::default());
            let _ = crate::LegacyMessage::decode(&bytes, Limits::default());
        }

        #[test]
        fn fuzz_msgpack_prefixed_garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = vec![0x8c];
            bytes.extend(tail);
            let _ = Envelope::decode(&bytes, Limits::default());
        }
    }
}
