//! Decoding what the real packages published (`fixtures/`, see its README), the room and
//! tenant mapping, and the Node format written for the mixed cluster.

use super::*;
use serde_json::json;

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/compat/fixtures/",
            $path
        ))
    };
}

fn compat(tenant: Option<&str>, room_kind: Option<&str>) -> Compat {
    Compat::new(
        CompatConfig {
            python_channels: vec!["socketio".into(), "flask-socketio".into()],
            node_key: Some("socket.io".into()),
            node_outbound: true,
            tenant: tenant.map(|t| TenantId::parse(t).unwrap()),
            room_kind: room_kind.map(str::to_owned),
        },
        "node-1",
    )
}

const MAX: usize = 65_536;

fn delivered(c: &Compat, source: Source, payload: &[u8]) -> Envelope {
    c.decode(source, payload, MAX).unwrap().unwrap()
}

#[test]
fn python_json_and_pickle_messages_decode_alike() {
    let c = compat(None, Some("room"));
    for (json_form, pickle_form) in [
        (
            &fixture!("python-5.18/0.bin")[..],
            &fixture!("python-5.13/0.bin")[..],
        ),
        (fixture!("python-5.18/1.bin"), fixture!("python-5.13/1.bin")),
        (fixture!("python-5.18/2.bin"), fixture!("python-5.13/2.bin")),
        (fixture!("python-5.18/3.bin"), fixture!("python-5.13/3.bin")),
        (fixture!("python-5.18/4.bin"), fixture!("python-5.13/4.bin")),
    ] {
        let (a, b) = (
            delivered(&c, Source::Python, json_form),
            delivered(&c, Source::Python, pickle_form),
        );
        assert_eq!(
            (&a.ns, &a.event, &a.args, &a.attachments, &a.to),
            (&b.ns, &b.event, &b.args, &b.attachments, &b.to)
        );
    }
    let greet = delivered(&c, Source::Python, fixture!("python-5.13/0.bin"));
    assert_eq!(greet.event, "greet");
    assert_eq!(greet.arguments(), &[json!({"n": 1})]);
    assert_eq!(greet.to, ["room:a"]);
    assert_eq!(greet.tenant, None);
    // No room: the whole namespace.
    let everyone = delivered(&c, Source::Python, fixture!("python-5.18/1.bin"));
    assert!(everyone.to.is_empty());
    assert_eq!(everyone.arguments(), &[json!("hi")]);
    // A tuple is several arguments; a name that is not kind:id is mapped.
    let many = delivered(&c, Source::Python, fixture!("python-5.13/2.bin"));
    assert_eq!(many.ns, "/chat");
    assert_eq!(many.arguments(), &[json!(1), json!("two"), json!([3])]);
    assert_eq!(many.to, ["room:lobby", "user:7"]);
    // Bytes become an attachment behind Socket.IO's placeholder.
    let bin = delivered(&c, Source::Python, fixture!("python-5.13/3.bin"));
    assert_eq!(
        bin.arguments(),
        &[json!({"raw": {"_placeholder": true, "num": 0}, "k": "v"})]
    );
    assert_eq!(bin.attachments, [Bytes::from_static(&[0, 1, 255])]);
    // A list is one argument.
    let list = delivered(&c, Source::Python, fixture!("python-5.18/4.bin"));
    assert_eq!(list.arguments(), &[json!([1, 2])]);
}

#[test]
fn python_methods_other_than_emit_are_ignored() {
    let c = compat(None, Some("room"));
    for payload in [
        &fixture!("python-5.18/5.bin")[..],
        fixture!("python-5.13/5.bin"),
    ] {
        assert_eq!(
            c.decode(Source::Python, payload, MAX),
            Ok(Err("close_room"))
        );
    }
}

#[test]
fn pickles_that_name_a_class_or_function_are_refused_as_unsafe() {
    let c = compat(None, Some("room"));
    for payload in [
        &fixture!("python-5.13/class.bin")[..],
        fixture!("python-5.13/date.bin"),
    ] {
        let err = c.decode(Source::Python, payload, MAX).unwrap_err();
        assert_eq!(err.label(), "unsafe", "{err}");
    }
}

#[test]
fn garbage_and_oversize_messages_are_refused_with_their_reason() {
    let c = compat(None, Some("room"));
    let cases: [(Source, &[u8], &str); 6] = [
        (Source::Python, b"\x80\x04\x95garbage", "malformed"),
        (Source::Python, b"{\"method\": \"emit\"", "malformed"),
        (
            Source::Python,
            br#"{"method":"emit","event":"x","data":"not a list"}"#,
            "malformed",
        ),
        (Source::Node, b"\xc1\xc1\xc1", "malformed"),
        (Source::Node, b"\x93\xa1x\x80\x80", "unsupported"),
        (Source::Node, &[0x91; 200], "malformed"),
    ];
    for (source, payload, label) in cases {
        let err = c.decode(source, payload, MAX).unwrap_err();
        assert_eq!(err.label(), label, "{payload:?}: {err}");
    }
    let big = fixture!("python-5.18/0.bin");
    assert_eq!(
        c.decode(Source::Python, big, big.len() - 1)
            .unwrap_err()
            .label(),
        "too_large"
    );
}

#[test]
fn node_emitter_broadcasts_decode_with_rooms_except_binary_and_volatile() {
    let c = compat(None, Some("room"));
    let greet = delivered(&c, Source::Node, fixture!("node-emitter-5.1/0.bin"));
    assert_eq!(
        (greet.event.as_str(), greet.to.clone()),
        ("greet", vec!["room:a".to_owned()])
    );
    assert_eq!(greet.arguments(), &[json!({"n": 1})]);
    let everyone = delivered(&c, Source::Node, fixture!("node-emitter-5.1/1.bin"));
    assert!(everyone.to.is_empty());
    let many = delivered(&c, Source::Node, fixture!("node-emitter-5.1/2.bin"));
    assert_eq!(many.ns, "/chat");
    assert_eq!(many.arguments(), &[json!(1), json!("two"), json!([3])]);
    assert_eq!(many.to, ["room:lobby", "user:7"]);
    assert_eq!(many.except, ["user:8"]);
    let bin = delivered(&c, Source::Node, fixture!("node-emitter-5.1/3.bin"));
    assert_eq!(bin.attachments, [Bytes::from_static(&[0, 1, 255])]);
    assert_eq!(
        bin.arguments(),
        &[json!({"raw": {"_placeholder": true, "num": 0}, "k": "v"})]
    );
    let vol = delivered(&c, Source::Node, fixture!("node-emitter-5.1/4.bin"));
    assert!(vol.flags.volatile);
}

#[test]
fn messages_are_delivered_in_the_configured_tenant_only() {
    let c = compat(Some("acme"), Some("room"));
    let greet = delivered(&c, Source::Python, fixture!("python-5.18/0.bin"));
    assert_eq!(greet.tenant.as_deref(), Some("acme"));
    let (to, _) = bus::targets(&greet).unwrap();
    assert_eq!(
        to,
        rooms::Audience::Rooms(vec![ScopedRoom::parse("@acme/room:a").unwrap()])
    );
    // The whole namespace means the whole tenant.
    let everyone = delivered(&c, Source::Node, fixture!("node-emitter-5.1/1.bin"));
    assert_eq!(
        bus::targets(&everyone).unwrap().0,
        rooms::Audience::Rooms(vec![ScopedRoom::parse("@acme/tenant:acme").unwrap()])
    );
    // Another tenant's room is refused, not delivered there.
    let other =
        br#"{"method":"emit","event":"x","data":[1],"namespace":"/","room":"tenant:globex"}"#;
    assert_eq!(
        c.decode(Source::Python, other, MAX).unwrap_err().label(),
        "refused_room"
    );
}

#[test]
fn names_that_are_not_kind_id_are_mapped_or_refused() {
    let strict = compat(None, None);
    let err = strict
        .decode(Source::Python, fixture!("python-5.18/2.bin"), MAX)
        .unwrap_err();
    assert_eq!(err.label(), "refused_room", "{err}");
    let mapped = compat(None, Some("legacy"));
    let many = delivered(&mapped, Source::Python, fixture!("python-5.18/2.bin"));
    assert_eq!(many.to, ["legacy:lobby", "user:7"]);
}

#[test]
fn node_channels_follow_rooms_of_the_compat_scope() {
    let c = compat(Some("acme"), Some("room"));
    let lobby = ScopedRoom::parse("@acme/room:lobby").unwrap();
    assert_eq!(
        c.room_channels("/", &lobby),
        ["socket.io#/#room:lobby#", "socket.io#/#lobby#"]
    );
    let user = ScopedRoom::parse("@acme/user:7").unwrap();
    assert_eq!(c.room_channels("/chat", &user), ["socket.io#/chat#user:7#"]);
    // Rooms of other tenants, and of the shared scope, have none.
    assert!(
        c.room_channels("/", &ScopedRoom::parse("@globex/user:7").unwrap())
            .is_empty()
    );
    assert!(
        c.room_channels("/", &ScopedRoom::parse("user:7").unwrap())
            .is_empty()
    );
    assert_eq!(c.source_of("socket.io#/#lobby#"), Some(Source::Node));
    assert_eq!(c.source_of("socket.io#/chat#"), Some(Source::Node));
    assert_eq!(c.source_of("socketio"), Some(Source::Python));
    assert_eq!(c.source_of("flask-socketio"), Some(Source::Python));
    assert_eq!(c.source_of("socket.io-request#/#"), None);
    assert_eq!(
        c.base_channels(&["/".into(), "/chat".into()]),
        [
            "socketio",
            "flask-socketio",
            "socket.io#/#",
            "socket.io#/chat#"
        ]
    );
}

#[test]
fn outbound_is_the_node_format_and_reads_back_as_roomcast_own() {
    let c = compat(None, Some("room"));
    let mut env = Envelope::new("svc", "bin", json!({"raw": envelope::placeholder(0)}))
        .to_rooms(["room:lobby"]);
    env.attachments = vec![Bytes::from_static(b"\x01\x02")];
    let (channel, payload) = c.outbound(&env).unwrap().unwrap();
    // `room:lobby` also names Node's `lobby`: both rooms, on the namespace channel.
    assert_eq!(channel, "socket.io#/#");
    // Another node's copy is its own, not a message to deliver again.
    assert_eq!(c.decode(Source::Node, &payload, MAX), Ok(Err("own")));
    let other_reader = Compat::new(c.config().clone(), "node-2");
    assert_eq!(
        other_reader.decode(Source::Node, &payload, MAX),
        Ok(Err("own"))
    );
    // Read as a foreign message, it is what was published.
    let Decoded::Emit(f) = node::decode(&payload, "nobody").unwrap() else {
        panic!("not an event");
    };
    assert_eq!(
        f.rooms,
        Some(vec!["room:lobby".to_owned(), "lobby".to_owned()])
    );
    assert_eq!(
        f.args,
        env.args.clone().unwrap_or_else(|| env.arguments().to_vec())
    );
    assert_eq!(f.attachments, env.attachments);
    // One room: its own channel. Other tenants and single-socket replies: nothing.
    let user = Envelope::new("svc", "e", json!(1)).to_rooms(["user:7"]);
    assert_eq!(c.outbound(&user).unwrap().unwrap().0, "socket.io#/#user:7#");
    assert!(c.outbound(&user.clone().in_tenant("acme")).is_none());
}

#[test]
fn a_deeply_nested_pickle_is_refused_without_exhausting_the_stack() {
    // Protocol 2: EMPTY_LIST opened 30 000 times, each appended to the one before —
    // 30 000 levels in 60 KB, under the size limit; decoded on a 2 MiB stack like a
    // runtime worker's. (A 5.13 publisher never nests this deep: Python's own pickle
    // recurses and stops near 1000.)
    let depth = 30_000;
    let mut payload = b"\x80\x02}(X\x06\x00\x00\x00methodX\x04\x00\x00\x00emitX\x05\x00\x00\x00eventX\x01\x00\x00\x00xX\x04\x00\x00\x00data".to_vec();
    payload.extend(std::iter::repeat_n(b']', depth));
    payload.extend(std::iter::repeat_n(b'a', depth - 1));
    payload.extend(b"u.");
    // TUPLE1 nests one level per byte: 60 000 levels.
    let mut tuples = b"\x80\x02}(X\x06\x00\x00\x00methodX\x04\x00\x00\x00emitX\x05\x00\x00\x00eventX\x01\x00\x00\x00xX\x04\x00\x00\x00dataK\x01".to_vec();
    tuples.extend(std::iter::repeat_n(0x85, 60_000));
    tuples.extend(b"u.");
    for payload in [payload, tuples] {
        let c = compat(None, Some("room"));
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || c.decode(Source::Python, &payload, MAX).map(|r| r.is_ok()))
            .unwrap()
            .join()
            .expect("the decoder ran out of stack");
        assert_eq!(outcome.unwrap_err().label(), "malformed");
    }
}
