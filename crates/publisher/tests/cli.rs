//! The `publisher` command line against a real `redis-server`: what it prints and what
//! arrives on the room's channel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::process::Command;
use std::time::Duration;

use bus::{Bus, RedisBus, RedisConfig};
use envelope::{Envelope, Limits};
use rooms::{Channels, Room};
use testkit::RedisServer;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_publisher"))
        .args(args)
        .output()
        .expect("run the publisher CLI")
}

#[tokio::test]
async fn publishes_one_envelope_on_the_room_channel() {
    let redis = RedisServer::start().unwrap();
    let (listener, mut inbox) = RedisBus::connect(RedisConfig::new(redis.url())).unwrap();
    let acme = rooms::TenantId::parse("acme").unwrap();
    let room = rooms::ScopedRoom::new(Some(&acme), &Room::parse("user:42").unwrap()).unwrap();
    let channel = Channels::new("cli").room("/", &room);
    listener.subscribe(vec![channel.clone()]).await.unwrap();

    let out = cli(&[
        "--redis-url",
        &redis.url(),
        "--prefix",
        "cli",
        "--to",
        "user:42",
        "--tenant",
        "acme",
        "--event",
        "invoice.paid",
        "--data",
        r#"{"id":7}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 32, "prints the message id: {id:?}");

    let msg = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*msg.channel, channel);
    let env = Envelope::decode(&msg.payload, Limits::default()).unwrap();
    assert_eq!(
        (env.id.as_str(), env.event.as_str(), env.origin.as_str()),
        (id.as_str(), "invoice.paid", "publisher-cli")
    );
    assert_eq!(env.data, Some(serde_json::json!({"id": 7})));
    assert_eq!(env.tenant.as_deref(), Some("acme"));
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    // A publish must name its targets.
    let out = cli(&["--redis-url", "redis://127.0.0.1:1", "--event", "e"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to"));

    let out = cli(&[
        "--redis-url",
        "redis://127.0.0.1:1",
        "--to",
        "*",
        "--event",
        "e",
        "--data",
        "{not json",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data is not valid JSON"));

    let out = cli(&[
        "--redis-url",
        "redis://:hunter2@127.0.0.1:1",
        "--to",
        "nokind",
        "--event",
        "e",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid room"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    // Redis unreachable: fails once the retry budget is spent, never silently.
    let out = cli(&[
        "--redis-url",
        "redis://:hunter2@127.0.0.1:1",
        "--to",
        "user:1",
        "--event",
        "e",
        "--retry-ms",
        "300",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bus unavailable"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

// Several threads: the gateway nodes run in this process and must answer the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_disconnects_a_users_sockets_on_the_gateways() {
    let redis = RedisServer::start().unwrap();
    let nodes = testkit::spawn_redis_cluster(2, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let token = testkit::token(serde_json::json!({"sub": "ann", "tenant_id": "acme"}));
    let mut ann = nodes[1]
        .client(serde_json::json!({"token": token}))
        .await
        .unwrap();
    let base = [
        "--redis-url",
        &redis.url(),
        "--prefix",
        &prefix,
        "--tenant",
        "acme",
    ];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = tokio::task::block_in_place(|| cli(&args));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&["--sockets-of", "user:ann"]);
    let socket: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(
        (socket["sid"].as_str(), socket["user"].as_str()),
        (Some(ann.sid.as_str()), Some("ann"))
    );
    // Another tenant's scope finds nothing.
    let other = tokio::task::block_in_place(|| {
        cli(&[
            "--redis-url",
            &redis.url(),
            "--prefix",
            &prefix,
            "--tenant",
            "globex",
            "--sockets-of",
            "user:ann",
        ])
    });
    assert!(String::from_utf8_lossy(&other.stdout).trim().is_empty());
    run(&["--sockets-of", "user:ann", "--disconnect", "maintenance"]);
    let why = ann.expect_arg("disconnect_reason").await.unwrap();
    assert_eq!(why["message"], "maintenance");
    ann.expect_disconnect().await.unwrap();
}
