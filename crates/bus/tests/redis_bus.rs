//! `RedisBus` against a real `redis-server` started on a free port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure report"
)]

use std::time::Duration;

use bus::{Bus, Inbox, RedisBus, RedisConfig};
use bytes::Bytes;
use testkit::RedisServer;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn fast(url: String) -> RedisConfig {
    RedisConfig::new(url).with_reconnect(Duration::from_millis(50), Duration::from_millis(500))
}

async fn recv(inbox: &mut Inbox) -> (String, Bytes) {
    let m = timeout(WAIT, inbox.recv())
        .await
        .expect("a message within 5 s")
        .expect("inbox open");
    (m.channel.to_string(), m.payload)
}

#[tokio::test]
async fn subscribe_is_confirmed_before_it_returns_and_delivers() {
    let redis = RedisServer::start().unwrap();
    let (a, mut a_in) = RedisBus::connect(fast(redis.url())).unwrap();
    let (b, _b_in) = RedisBus::connect(fast(redis.url())).unwrap();
    a.subscribe(vec!["t:x".into(), "t:y".into()]).await.unwrap();
    // Confirmed means Redis already lists the channels.
    assert_eq!(redis.pubsub_channels("t:*").unwrap(), vec!["t:x", "t:y"]);
    assert_eq!(b.publish("t:x", Bytes::from_static(b"1")).await.unwrap(), 1);
    assert_eq!(b.publish("t:z", Bytes::from_static(b"2")).await.unwrap(), 0);
    assert_eq!(
        recv(&mut a_in).await,
        ("t:x".into(), Bytes::from_static(b"1"))
    );
    a.unsubscribe(vec!["t:x".into()]).await.unwrap();
    assert_eq!(redis.pubsub_channels("t:*").unwrap(), vec!["t:y"]);
    assert!(a.wait_up(WAIT).await, "{:?}", a.health());
    assert_eq!(a.kind(), "redis");
}

#[tokio::test]
async fn publishes_from_one_bus_arrive_in_order() {
    let redis = RedisServer::start().unwrap();
    let (node, mut inbox) = RedisBus::connect(fast(redis.url())).unwrap();
    let (publisher, _) = RedisBus::connect(fast(redis.url())).unwrap();
    node.subscribe(vec!["order".into()]).await.unwrap();
    // Issued without awaiting each one: still delivered in call order.
    let futures: Vec<_> = (0..2000u32)
        .map(|i| publisher.publish("order", Bytes::from(i.to_string())))
        .collect();
    for f in futures {
        assert_eq!(f.await.unwrap(), 1);
    }
    for i in 0..2000u32 {
        assert_eq!(recv(&mut inbox).await.1, Bytes::from(i.to_string()));
    }
}

#[tokio::test]
async fn reconnects_and_resubscribes_after_a_redis_restart() {
    let mut redis = RedisServer::start().unwrap();
    let (node, mut inbox) = RedisBus::connect(fast(redis.url())).unwrap();
    let (publisher, _) = RedisBus::connect(fast(redis.url())).unwrap();
    node.subscribe(vec!["r:1".into()]).await.unwrap();

    redis.stop();
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.health().subscriber.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber never noticed Redis going away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While Redis is away: publishing fails clearly, subscribing answers at once.
    assert!(
        publisher
            .publish("r:1", Bytes::from_static(b"lost"))
            .await
            .is_err()
    );
    assert!(
        timeout(WAIT, node.subscribe(vec!["r:2".into()]))
            .await
            .unwrap()
            .is_err()
    );

    redis.restart().unwrap();
    assert!(
        node.wait_up(Duration::from_secs(10)).await,
        "{:?}",
        node.health()
    );
    // Both the channel from before and the one asked for during the outage are back.
    assert_eq!(redis.pubsub_channels("r:*").unwrap(), vec!["r:1", "r:2"]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while publisher
        .publish("r:2", Bytes::from_static(b"back"))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publisher never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        recv(&mut inbox).await,
        ("r:2".into(), Bytes::from_static(b"back"))
    );
}

#[tokio::test]
async fn publish_retries_within_its_budget_then_fails_clearly() {
    let mut redis = RedisServer::start().unwrap();
    let url = redis.url();
    redis.stop();
    let (bus, _) =
        RedisBus::connect(fast(url).with_publish_retry_budget(Duration::from_millis(300))).unwrap();
    let err = bus
        .publish("x", Bytes::from_static(b"1"))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("bus unavailable"), "{err}");
    assert!(!bus.health().publisher.is_up());
}

#[tokio::test]
async fn password_is_masked_and_auth_works() {
    let redis = RedisServer::start().unwrap();
    redis
        .cli(&["CONFIG", "SET", "requirepass", "s3cret"])
        .unwrap();
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port());
    let (bus, mut inbox) = RedisBus::connect(fast(url.clone())).unwrap();
    assert_eq!(
        bus.masked_url(),
        format!("redis://:***@127.0.0.1:{}", redis.port())
    );
    assert!(!format!("{:?}", fast(url)).contains("s3cret"));
    bus.subscribe(vec!["auth".into()]).await.unwrap();
    bus.publish("auth", Bytes::from_static(b"ok"))
        .await
        .unwrap();
    assert_eq!(recv(&mut inbox).await.1, Bytes::from_static(b"ok"));

    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port());
    let (bad, _) = RedisBus::connect(fast(wrong)).unwrap();
    let err = bad
        .publish("auth", Bytes::from_static(b"x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("wrong"), "{err}");
}

fn info_field(redis: &RedisServer, section: &str, field: &str) -> u64 {
    let info = redis.cli(&["INFO", section]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            // `cmdstat_ping:calls=3,...` or `total_connections_received:7`
            let rest = rest.trim_start_matches(':');
            let value = rest.strip_prefix("calls=").unwrap_or(rest);
            value.split(',').next().and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn keepalive_pings_do_not_drop_the_subscriber_connection() {
    let redis = RedisServer::start().unwrap();
    let mut config = fast(redis.url());
    config.ping_interval = Duration::from_millis(100);
    let (node, mut inbox) = RedisBus::connect(config).unwrap();
    node.subscribe(vec!["k".into()]).await.unwrap();
    assert!(node.wait_up(WAIT).await);
    let pubsub_clients = || {
        let list = redis.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]).unwrap();
        list.lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let before = pubsub_clients();
    assert_eq!(before.len(), 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    // Both links ping; wait until at least six pings were answered.
    while info_field(&redis, "commandstats", "cmdstat_ping") < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no keepalive pings seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pubsub_clients(),
        before,
        "a ping reply must not cause a reconnect"
    );
    redis.cli(&["PUBLISH", "k", "still"]).unwrap();
    assert_eq!(recv(&mut inbox).await.1, Bytes::from_static(b"still"));
}

/// `rediss://`: the same bus over TLS, against a `redis-server` that speaks only TLS.
#[tokio::test]
async fn works_over_tls() {
    let redis = RedisServer::start_tls().unwrap();
    assert!(redis.url().starts_with("rediss://"));
    let (node, mut inbox) = RedisBus::connect(fast(redis.url())).unwrap();
    let (publisher, _) = RedisBus::connect(fast(redis.url())).unwrap();
    node.subscribe(vec!["tls:1".into()]).await.unwrap();
    assert_eq!(redis.pubsub_channels("tls:*").unwrap(), vec!["tls:1"]);
    assert_eq!(
        publisher
            .publish("tls:1", Bytes::from_static(b"secret"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        recv(&mut inbox).await,
        ("tls:1".into(), Bytes::from_static(b"secret"))
    );
    assert!(node.health().is_up() && publisher.health().is_up());
}
