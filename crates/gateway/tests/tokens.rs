//! Tokens live and die correctly: real RSA and EC keys, a JWKS server that rotates its
//! keys, expiry that disconnects, `refresh` that extends, weak secrets and leaky logs
//! refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::{Config, JwtKey, unix_now};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use testkit::{
    ConnectError, KeyKind, KeyPair, RedisServer, SioClient, TEST_KEY, TEST_SECRET, TestNode,
    keypair, spawn_memory_cluster, spawn_redis_cluster, token,
};

fn sign(alg: Algorithm, key: &KeyPair, kid: Option<&str>, claims: &Value) -> String {
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key.private_pem),
        _ => EncodingKey::from_rsa_pem(&key.private_pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "tenant_id": "acme", "exp": unix_now() + 600})
}

async fn node_with(configure: impl Fn(&mut Config)) -> TestNode {
    let (_hub, mut nodes) = spawn_memory_cluster(1, |_, c| configure(c)).await.unwrap();
    nodes.remove(0)
}

async fn refused(node: &TestNode, token: &str) -> String {
    match SioClient::connect(&node.url(), "/", Some(json!({ "token": token }))).await {
        Err(ConnectError::Refused(message)) => message,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the token was accepted"),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_their_public_keys() {
    let rsa = keypair(KeyKind::Rsa).unwrap();
    let ec = keypair(KeyKind::EcP256).unwrap();
    let other = keypair(KeyKind::Rsa).unwrap();
    let (rsa_pub, ec_pub) = (rsa.public_pem.clone(), ec.public_pem.clone());
    let node = node_with(move |c| {
        c.jwt_keys = vec![
            JwtKey::PublicKeyPem(rsa_pub.clone()),
            JwtKey::PublicKeyPem(ec_pub.clone()),
        ];
    })
    .await;
    for (alg, key, user) in [
        (Algorithm::RS256, &rsa, "rsa"),
        (Algorithm::PS256, &rsa, "pss"),
        (Algorithm::ES256, &ec, "ec"),
    ] {
        let t = sign(alg, key, None, &claims(user));
        let mut c = SioClient::connect(&node.url(), "/", Some(json!({ "token": t })))
            .await
            .unwrap();
        assert_eq!(c.expect_arg("connected").await.unwrap()["user_id"], user);
    }
    let forged = sign(Algorithm::RS256, &other, None, &claims("x"));
    assert_eq!(refused(&node, &forged).await, "invalid token signature");
    // The HS secret of the test configuration is gone: HS tokens are refused.
    let hs = token(json!({"sub": "x"}));
    assert!(
        refused(&node, &hs)
            .await
            .contains("token algorithm HS256 is not accepted"),
    );
}

/// A JWKS endpoint whose key set the test changes.
async fn jwks_server(keys: Arc<Mutex<JwkSet>>) -> String {
    use axum::{Json, Router, routing::get};
    let app = Router::new().route(
        "/jwks.json",
        get(move || {
            let keys = keys.clone();
            async move { Json(keys.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn jwk(key: &KeyPair, alg: Algorithm, kid: &str) -> Jwk {
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key.private_pem),
        _ => EncodingKey::from_rsa_pem(&key.private_pem),
    }
    .unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

#[tokio::test]
async fn jwks_keys_are_found_by_kid_and_rotation_is_followed() {
    let (a, b) = (
        keypair(KeyKind::Rsa).unwrap(),
        keypair(KeyKind::EcP256).unwrap(),
    );
    let set = Arc::new(Mutex::new(JwkSet {
        keys: vec![jwk(&a, Algorithm::RS256, "a")],
    }));
    let url = jwks_server(set.clone()).await;
    let node = node_with(move |c| {
        c.jwt_keys.clear();
        c.token_rules.jwks_url = Some(url.clone());
        // Refetch whenever a token asks for it, so the test need not wait.
        c.token_rules.jwks_refresh = Duration::ZERO;
        c.token_rules.jwks_min_refetch = Duration::ZERO;
    })
    .await;
    let token_a = sign(Algorithm::RS256, &a, Some("a"), &claims("a"));
    let token_b = sign(Algorithm::ES256, &b, Some("b"), &claims("b"));
    node.client(json!({ "token": token_a })).await.unwrap();
    // Key b is not published yet.
    let message = refused(&node, &token_b).await;
    assert!(message.contains("not accepted"), "{message}");

    // The provider publishes b and retires a.
    *set.lock().unwrap() = JwkSet {
        keys: vec![jwk(&b, Algorithm::ES256, "b")],
    };
    let mut c = node.client(json!({ "token": token_b })).await.unwrap();
    c.join("room:x").await.unwrap();
    assert_eq!(
        refused(&node, &token_a).await,
        "token algorithm RS256 is not accepted (expected ES256, RS256)",
        "a retired key no longer verifies"
    );
}

#[tokio::test]
async fn an_unreachable_jwks_refuses_with_a_clear_reason() {
    let a = keypair(KeyKind::Rsa).unwrap();
    let port = testkit::free_port().unwrap();
    let node = node_with(move |c| {
        c.jwt_keys.clear();
        c.token_rules.jwks_url = Some(format!("http://127.0.0.1:{port}/jwks.json"));
    })
    .await;
    let t = sign(Algorithm::RS256, &a, Some("a"), &claims("a"));
    assert_eq!(
        refused(&node, &t).await,
        "token keys are unavailable right now; try again"
    );
}

#[tokio::test]
async fn audience_and_issuer_are_enforced_when_configured() {
    let node = node_with(|c| {
        c.token_rules.audience = vec!["roomcast".into()];
        c.token_rules.issuer = vec!["https://idp.example".into()];
    })
    .await;
    let good =
        token(json!({"sub": "a", "aud": ["other", "roomcast"], "iss": "https://idp.example"}));
    node.client(json!({ "token": good })).await.unwrap();
    let wrong = token(json!({"sub": "a", "aud": "other", "iss": "https://idp.example"}));
    assert_eq!(
        refused(&node, &wrong).await,
        "token audience is not accepted"
    );
    // Unset, a token from an identity provider (with aud and iss) is accepted as is.
    let plain = node_with(|_| {}).await;
    plain.client(json!({ "token": wrong })).await.unwrap();
}

#[tokio::test]
async fn an_expired_token_disconnects_with_a_reason_unless_refreshed() {
    let node = node_with(|_| {}).await;
    let short = |user: &str, rooms: Value| {
        token(json!({"sub": user, "tenant_id": "acme", "rooms": rooms, "exp": unix_now() + 2}))
    };
    let mut lapsing = node
        .client(json!({"token": short("lapsing", json!([]))}))
        .await
        .unwrap();
    let mut refreshing = node
        .client(json!({"token": short("fresh", json!(["doc:*", "room:*"]))}))
        .await
        .unwrap();
    let original_exp = unix_now() + 2;
    for room in ["doc:Task:1", "room:keep"] {
        assert_eq!(refreshing.join(room).await.unwrap()["ok"], true);
    }

    // Someone else's token is not a refresh.
    let other = token(json!({"sub": "mallory", "tenant_id": "acme", "rooms": ["*"]}));
    let ack = refreshing
        .emit_with_ack("refresh", &[json!(other)])
        .await
        .unwrap();
    assert_eq!(ack[0]["ok"], false);
    assert!(ack[0]["error"].as_str().unwrap().contains("another user"));

    let renewed = token(json!({"sub": "fresh", "tenant_id": "acme", "rooms": ["room:*"]}));
    let ack = refreshing
        .emit_with_ack("refresh", &[json!({ "token": renewed })])
        .await
        .unwrap();
    assert_eq!(ack[0]["ok"], true, "{ack:?}");
    assert_eq!(ack[0]["left"], json!(["doc:Task:1"]));

    // The lapsing socket is told why, then disconnected.
    let reason = lapsing
        .expect_arg(gateway::DISCONNECT_REASON_EVENT)
        .await
        .unwrap();
    assert_eq!(reason["reason"], "token_expired");
    lapsing.expect_disconnect().await.unwrap();

    // Past the original expiry (the check runs every second), the refreshed socket is
    // still served, in the rooms its new token allows.
    while unix_now() <= original_exp + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (event, room) in [("gone", "doc:Task:1"), ("kept", "room:keep")] {
        node.publish_accepted(json!({"tenant": "acme", "event": event, "to": [room]}))
            .await
            .unwrap();
    }
    let (_, before) = refreshing.expect("kept").await.unwrap();
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(
        node.cluster
            .stats
            .expired
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_second_node_with_a_live_node_id_is_refused_and_a_dead_ones_is_not() {
    let redis = RedisServer::start().unwrap();
    // A heartbeat every second.
    let mut nodes = spawn_redis_cluster(1, &redis.url(), |_, c| {
        c.node_ttl = Duration::from_secs(3);
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while nodes[0]
        .cluster
        .registry()
        .nodes()
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut config = Config::for_tests(TEST_SECRET, TEST_KEY);
    config.node_id = "redis-node-0".into();
    config.node_ttl = Duration::from_secs(3);
    config.redis_url = Some(redis.url());
    config.channel_prefix = nodes[0].cluster.channels().prefix().to_owned();
    let (bus, inbox) = gateway::connect_bus(&config).unwrap();
    let err = gateway::Node::build(&config, bus, inbox).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("node id \"redis-node-0\" is already held by a live node"),
        "{err}"
    );
    // A crashed node's record is not a live node: its successor starts under the same id
    // without waiting for the record to expire.
    nodes[0].crash();
    let (bus, inbox) = gateway::connect_bus(&config).unwrap();
    gateway::Node::build(&config, bus, inbox).await.unwrap();
}

#[test]
fn production_refuses_weak_secrets_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("GATEWAY_MODE", "production")
        .env("JWT_SECRET", "secret")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("JWT_SECRET of at least 32 bytes (got 6)"),
        "{err}"
    );
}

#[tokio::test]
async fn no_credential_in_the_logs_at_trace_level() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("PORT", "0")
        .env("RUST_LOG", "trace")
        .env("JWT_SECRET", "a-configured-secret-of-32-bytes!")
        .env("PUBLISH_API_KEY", "a-configured-publish-key-32bytes")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = String::new();
    let mut buf = [0u8; 1024];
    while !banner.contains("Socket.IO path") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the gateway exited: {banner}");
        banner.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let url = banner
        .split(" listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let claims = json!({"sub": "ann", "tenant_id": "acme", "exp": unix_now() + 600});
    let jwt = gateway::sign_hs256("a-configured-secret-of-32-bytes!", &claims).unwrap();
    let mut c = SioClient::connect(&url, "/", Some(json!({ "token": jwt })))
        .await
        .unwrap();
    c.expect("connected").await.unwrap();
    // Also in the query string and a refused one.
    let _ = SioClient::connect_with(&url, "/socket.io/", &format!("token={jwt}x"), "/", None).await;
    let (status, _) = testkit::publish(
        &url,
        "a-configured-publish-key-32bytes",
        &json!({"tenant": "acme", "event": "e", "to": ["user:ann"]}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    c.expect("e").await.unwrap();
    c.close().await;
    let _ = child.kill();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let _ = child.wait();
    // The gateway's own debug lines are there: low levels are on.
    assert!(
        logs.contains("refused a connection"),
        "debug logging is on: {logs}"
    );
    for secret in [
        jwt.as_str(),
        jwt.split('.').nth(1).unwrap(),
        "a-configured-secret-of-32-bytes!",
        "a-configured-publish-key-32bytes",
    ] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{secret} leaked into the logs: {leaks:#?}"
        );
    }
}
