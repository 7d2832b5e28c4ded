//! Redis over TLS with a private CA (`REDIS_TLS_CA_FILE`, and a client certificate with
//! `REDIS_TLS_CERT_FILE`/`REDIS_TLS_KEY_FILE`): a real `redis-server` speaking only TLS
//! with a certificate from a CA made here, which also asks clients for theirs. Nodes and
//! the SDK that trust the CA work across nodes; a bus trusting another CA, or without a
//! client certificate, is refused and says why.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use bus::{Bus, LinkState, RedisBus, RedisConfig, RedisTls};
use serde_json::json;
use testkit::{RedisServer, TestCa, spawn_redis_cluster};

fn trusting(ca: &TestCa) -> RedisTls {
    let (cert, key) = ca.client_files();
    RedisTls::from_files(Some(&ca.ca_file()), Some((&cert, &key))).unwrap()
}

/// The error a bus reports once its links fail, within 10 s.
async fn refusal(redis: RedisConfig) -> String {
    let (bus, _inbox) = RedisBus::connect(redis).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let LinkState::Down { error } = bus.health().subscriber {
            return error;
        }
        assert!(bus.health().subscriber != LinkState::Up, "connected");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nodes_and_the_sdk_trusting_the_private_ca_work_and_others_are_refused_with_the_reason() {
    let ca = TestCa::new().unwrap();
    let redis = RedisServer::start_with_ca(&ca, true).unwrap();
    assert!(redis.url().starts_with("rediss://") && !redis.url().contains("insecure"));
    let nodes = spawn_redis_cluster(2, &redis.url(), |_, c| {
        c.redis_tls = Some(trusting(&ca));
    })
    .await
    .unwrap();
    for node in &nodes {
        assert_eq!(node.cluster.bus().health().publisher, LinkState::Up);
    }

    // Cross-node delivery through the TLS Redis: from the HTTP API and from the SDK.
    let mut ann = nodes[1].member_of("ann", "doc:Task:1").await.unwrap();
    nodes[0]
        .publish_accepted(json!({"event": "via_http", "to": ["doc:Task:1"], "data": 1}))
        .await
        .unwrap();
    assert_eq!(ann.expect_arg("via_http").await.unwrap(), 1);
    let sdk = publisher::Publisher::connect_with(
        RedisConfig::new(redis.url())
            .with_tls(trusting(&ca))
            .with_publish_retry_budget(Duration::from_secs(2)),
    )
    .unwrap()
    .with_channel_prefix(nodes[0].cluster.channels().prefix());
    sdk.to_room("doc:Task:1").emit("via_sdk", &2).await.unwrap();
    assert_eq!(ann.expect_arg("via_sdk").await.unwrap(), 2);

    // Another company's CA: the server's certificate is not trusted.
    let other = TestCa::new().unwrap();
    let error = refusal(RedisConfig::new(redis.url()).with_tls(trusting(&other))).await;
    eprintln!("another CA: {error}");
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    // The right CA but no client certificate: the server refuses the client.
    let no_client = RedisTls::from_files(Some(&ca.ca_file()), None).unwrap();
    let error = refusal(RedisConfig::new(redis.url()).with_tls(no_client)).await;
    eprintln!("without a client certificate: {error}");
    assert!(error.contains("CertificateRequired"), "{error}");
    // No CA at all: the Web PKI does not know the private CA either.
    let error = refusal(RedisConfig::new(redis.url())).await;
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
}

#[test]
fn tls_files_need_a_rediss_url_and_must_be_readable() {
    let ca = TestCa::new().unwrap();
    let parse = |args: &[&str]| {
        let mut all = vec![
            "gateway",
            "--jwt-secret",
            testkit::TEST_SECRET,
            "--publish-api-key",
            testkit::TEST_KEY,
        ];
        all.extend_from_slice(args);
        gateway::Args::try_parse_hermetic(all)
            .map_err(|e| e.to_string())
            .and_then(|a| gateway::Config::from_args(a).map_err(|e| e.to_string()))
    };
    let ca_file = ca.ca_file();
    let ca_file = ca_file.to_str().unwrap();
    let plain = parse(&[
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--redis-tls-ca-file",
        ca_file,
    ]);
    assert!(plain.unwrap_err().contains("rediss://"));
    let missing = parse(&[
        "--redis-url",
        "rediss://127.0.0.1:6379",
        "--redis-tls-ca-file",
        "/nonexistent/ca.pem",
    ]);
    assert!(missing.unwrap_err().contains("/nonexistent/ca.pem"));
    let good = parse(&[
        "--redis-url",
        "rediss://127.0.0.1:6379",
        "--redis-tls-ca-file",
        ca_file,
    ]);
    assert!(good.unwrap().redis_tls.is_some());
}
