//! Clients talk back, over Redis and three nodes: a chat through client publishes
//! (claims decide who may publish, tenants stay walls, order is kept), events to a
//! Redis Stream consumed with the SDK (including an entry a crashed consumer left
//! behind), a webhook whose answer is the client's ack, and after-commit batches.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{RedisServer, SioClient, TestNode, spawn_redis_cluster, token};

fn auth(user: &str, tenant: &str, publish: Value) -> Value {
    json!({"token": token(json!({
        "sub": user, "tenant_id": tenant, "rooms": ["room:chat-*"], "publish": publish,
    }))})
}

async fn member(node: &TestNode, user: &str, tenant: &str, publish: Value) -> SioClient {
    let mut c = node.client(auth(user, tenant, publish)).await.unwrap();
    assert_eq!(c.join("room:chat-1").await.unwrap()["ok"], true);
    c
}

async fn publish(c: &mut SioClient, body: Value) -> Value {
    c.emit_with_ack("publish", &[body]).await.unwrap().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_crosses_nodes_within_its_tenant_in_order_and_claims_decide_who_publishes() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let mut alice = member(&nodes[0], "alice", "acme", json!(["room:chat-*"])).await;
    let mut bob = member(&nodes[1], "bob", "acme", json!([])).await;
    let mut carol = member(&nodes[2], "carol", "acme", json!([])).await;
    let mut mallory = member(&nodes[2], "mallory", "evil", json!(["room:*"])).await;

    // Alice's message reaches the room on the other nodes, not Alice herself.
    let ack = publish(
        &mut alice,
        json!({"to": "room:chat-1", "event": "send_message", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(ack["id"].as_str().is_some_and(|id| !id.is_empty()));
    for c in [&mut bob, &mut carol] {
        assert_eq!(c.expect_arg("send_message").await.unwrap()["text"], "hi");
    }
    // With `self`, she gets her own — and it is the first she gets.
    let ack = publish(
        &mut alice,
        json!({"to": ["room:chat-1"], "event": "send_message", "data": {"text": "again"}, "self": true}),
    )
    .await;
    assert_eq!(ack["ok"], true);
    assert_eq!(
        alice.expect_arg("send_message").await.unwrap()["text"],
        "again"
    );

    // The same room name in another tenant is another room: Mallory's first message is
    // her own, nothing of acme's reached her.
    let ack = publish(
        &mut mallory,
        json!({"to": "room:chat-1", "event": "send_message", "data": {"text": "evil"}, "self": true}),
    )
    .await;
    assert_eq!(ack["ok"], true);
    assert_eq!(
        mallory.expect_arg("send_message").await.unwrap()["text"],
        "evil"
    );

    // Bob's token has no publish claim: refused with the reason, counted.
    let ack = publish(
        &mut bob,
        json!({"to": "room:chat-1", "event": "send_message", "data": {"text": "no"}}),
    )
    .await;
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"], "not allowed to publish to room:chat-1");
    // Bad requests are refused the same way, whatever the claims.
    for (body, error) in [
        (json!({"to": "room:chat-1", "event": "join"}), "reserved"),
        (json!({"to": [], "event": "x"}), "between 1 and 16 rooms"),
        (
            json!({"to": "room:other-1", "event": "x"}),
            "not allowed to publish",
        ),
        (json!("not an object"), "expected {to, event, data}"),
    ] {
        let ack = publish(&mut alice, body.clone()).await;
        assert_eq!(ack["ok"], false, "{body}");
        assert!(
            ack["error"].as_str().unwrap().contains(error),
            "{body}: {ack}"
        );
    }

    // 50 messages written back to back arrive in the order written, on another node.
    let batch: Vec<(&str, Vec<Value>)> = (0..50)
        .map(|i| {
            (
                "publish",
                vec![json!({"to": "room:chat-1", "event": "typed", "data": i})],
            )
        })
        .collect();
    let ids = alice.emit_batch(&batch).await.unwrap();
    for id in ids {
        assert_eq!(alice.wait_ack(id).await.unwrap()[0]["ok"], true);
    }
    for i in 0..50 {
        assert_eq!(bob.expect_arg("typed").await.unwrap(), json!(i));
    }

    // Typing indicators: volatile, dropped rather than queued for a socket that is busy
    // (so not counted on), but accepted like any publish.
    let ack = publish(
        &mut alice,
        json!({"to": "room:chat-1", "event": "typing", "data": true, "volatile": true}),
    )
    .await;
    assert_eq!(ack["ok"], true);

    let metrics = nodes[1].metrics().await.unwrap();
    assert!(
        metrics.contains(
            "roomcast_refusals_total{server_id=\"redis-node-1\",reason=\"publish_denied\"} 1"
        ),
        "{metrics}"
    );
}

fn routes(spec: &str, webhook: Option<gateway::WebhookConfig>) -> gateway::UpstreamConfig {
    gateway::UpstreamConfig {
        routes: gateway::Routes::parse(spec).unwrap(),
        stream_max_len: 1000,
        webhook,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consumer_confirms_to_the_sender_and_reclaims_a_crashed_consumers_entry() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(3, &redis.url(), |_, c| {
        c.upstream = routes("notification_read=stream", None);
    })
    .await
    .unwrap();
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let mut client = nodes[2]
        .client(auth("ann", "acme", json!([])))
        .await
        .unwrap();
    let mut crashing = publisher::Consumer::connect(&redis.url(), &prefix, "/", "svc", "w1")
        .await
        .unwrap();

    // The ack fires once the entry is in Redis.
    let ack = client
        .emit_with_ack("notification_read", &[json!({"id": 7})])
        .await
        .unwrap();
    assert_eq!(ack[0]["ok"], true, "{ack:?}");
    let entry = ack[0]["id"].as_str().unwrap().to_owned();

    // The first worker reads it and dies before acking.
    let got = crashing.next(Duration::from_secs(5), 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].entry, entry);
    let ev = got[0].event.clone().unwrap();
    assert_eq!(
        (ev.user.as_str(), ev.tenant.as_deref()),
        ("ann", Some("acme"))
    );
    assert_eq!(
        (ev.event.as_str(), ev.ns.as_str()),
        ("notification_read", "/")
    );
    assert_eq!(ev.node, "redis-node-2");
    assert_eq!(ev.args, vec![json!({"id": 7})]);
    drop(crashing);

    // Another worker takes it over, confirms to the very socket, and acks it.
    let mut worker = publisher::Consumer::connect(&redis.url(), &prefix, "/", "svc", "w2")
        .await
        .unwrap();
    assert!(
        worker
            .next(Duration::from_millis(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let reclaimed = worker.reclaim(Duration::ZERO, 10).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    let ev = reclaimed[0].event.clone().unwrap();
    let service = publisher::Publisher::connect(&redis.url(), Duration::from_secs(3))
        .unwrap()
        .with_channel_prefix(&prefix)
        .with_origin("notifications");
    service
        .reply_to_socket(&ev)
        .emit("notification_read_confirmed", &ev.args[0])
        .await
        .unwrap();
    assert_eq!(
        client
            .expect_arg("notification_read_confirmed")
            .await
            .unwrap(),
        json!({"id": 7})
    );
    worker.ack(&reclaimed[0]).await.unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let count: i64 = redis::cmd("XPENDING")
        .arg(worker.stream())
        .arg("svc")
        .query_async::<(i64, redis::Value, redis::Value, redis::Value)>(&mut conn)
        .await
        .unwrap()
        .0;
    assert_eq!(count, 0, "nothing left pending");

    // A blocking read longer than the Redis client's default 500 ms response timeout
    // still gets what arrives meanwhile (and leaves nothing pending behind).
    let emitting = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        client
            .emit_with_ack("notification_read", &[json!({"id": 8})])
            .await
            .unwrap()
    };
    let (got, ack) = tokio::join!(worker.next(Duration::from_secs(3), 10), emitting);
    assert_eq!(ack[0]["ok"], true);
    let got = got.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event.as_ref().unwrap().args, vec![json!({"id": 8})]);
    worker.ack(&got[0]).await.unwrap();

    // An event no route names is refused, not dropped.
    let ack = client.emit_with_ack("unrouted", &[json!(1)]).await.unwrap();
    assert_eq!(ack[0]["ok"], false);
}

/// A webhook service: checks each call's signature, records it, and answers by event.
async fn webhook_service(secret: &'static str) -> (String, Arc<Mutex<Vec<Value>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let sig = headers
                        .get(publisher::SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let now = gateway::unix_now();
                    if publisher::verify_signature(secret.as_bytes(), sig, &body, now, 60).is_err()
                    {
                        return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                    }
                    let ev: Value = serde_json::from_slice(&body).unwrap();
                    seen.lock().unwrap().push(ev.clone());
                    match ev["event"].as_str().unwrap() {
                        "rpc.fail" => {
                            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new())
                        }
                        "rpc.slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            (axum::http::StatusCode::OK, "{}".into())
                        }
                        _ => (
                            axum::http::StatusCode::OK,
                            json!({"ok": true, "echo": ev["args"], "user": ev["user"]}).to_string(),
                        ),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhooks_answer_is_the_clients_ack_and_its_failures_are_ack_errors() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-hook";
    let (url, calls) = webhook_service(SECRET).await;
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(1, &redis.url(), |_, c| {
        c.upstream = routes(
            "rpc.*=webhook",
            Some(gateway::WebhookConfig {
                url: url.clone(),
                secret: SECRET.into(),
                timeout: Duration::from_millis(300),
                retries: 1,
            }),
        );
    })
    .await
    .unwrap();
    let mut client = nodes[0]
        .client(auth("ann", "acme", json!([])))
        .await
        .unwrap();

    let ack = client
        .emit_with_ack("rpc.get", &[json!({"id": 1}), json!("two")])
        .await
        .unwrap();
    assert_eq!(
        ack[0],
        json!({"ok": true, "echo": [{"id": 1}, "two"], "user": "ann"})
    );
    let call = calls.lock().unwrap()[0].clone();
    assert_eq!(call["tenant"], "acme");
    assert_eq!(call["node"], "redis-node-0");
    assert!(call["sid"].as_str().is_some_and(|s| !s.is_empty()));

    // A 500: retried once, then an ack error naming it.
    let before = calls.lock().unwrap().len();
    let ack = client.emit_with_ack("rpc.fail", &[json!(1)]).await.unwrap();
    assert_eq!(ack[0]["ok"], false);
    assert!(ack[0]["error"].as_str().unwrap().contains("500"), "{ack:?}");
    assert_eq!(calls.lock().unwrap().len() - before, 2);

    // A service that does not answer in time: an ack error, not a hang.
    let started = Instant::now();
    let ack = client.emit_with_ack("rpc.slow", &[json!(1)]).await.unwrap();
    assert_eq!(ack[0]["ok"], false);
    assert!(
        ack[0]["error"].as_str().unwrap().contains("did not answer"),
        "{ack:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_published_in_order_on_commit_and_not_at_all_when_dropped() {
    let redis = RedisServer::start().unwrap();
    let nodes = spawn_redis_cluster(1, &redis.url(), |_, _| {})
        .await
        .unwrap();
    let prefix = nodes[0].cluster.channels().prefix().to_owned();
    let mut client = nodes[0]
        .client(auth("ann", "acme", json!([])))
        .await
        .unwrap();
    let service = publisher::Publisher::connect(&redis.url(), Duration::from_secs(3))
        .unwrap()
        .with_channel_prefix(&prefix)
        .in_tenant("acme");

    // Rolled back: staged, then dropped.
    let mut batch = service.batch();
    service
        .to_user("ann")
        .stage(&mut batch, "step", &"rolled back")
        .unwrap();
    assert_eq!(batch.len(), 1);
    drop(batch);

    // Committed: three, in order.
    let mut batch = service.batch();
    for i in 0..3 {
        service
            .to_user("ann")
            .stage(&mut batch, "step", &i)
            .unwrap();
    }
    let ids = batch.commit().await.unwrap();
    assert_eq!(ids.len(), 3);
    for i in 0..3 {
        // The rolled-back one never arrives: the first "step" is 0.
        assert_eq!(client.expect_arg("step").await.unwrap(), json!(i));
    }
}
