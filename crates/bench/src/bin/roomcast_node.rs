//! Roomcast under the benchmark contract, built on the `gateway` library so it runs the
//! production adapter and bus: namespace `/`, each socket joins the room named in its
//! handshake `auth.room` (through `Cluster::join`, so interest routing applies); on
//! `publish {room, data}` the node emits `msg` with `data` to that room cluster-wide.
//!
//! Usage: `roomcast-bench-node <port> <redis-url> <node-id>`

use std::sync::Arc;

use gateway::{Args, BusAdapter, Cluster, Config, Node};
use rooms::{Room, ScopedRoom};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, TryData};

async fn on_connect(cluster: Arc<Cluster>, s: SocketRef<BusAdapter>, auth: Option<Value>) {
    // The benchmark contract has no users: not counted per user.
    if cluster.attach(&s, 0, None).is_err() {
        return;
    }
    s.on(
        "publish",
        async |io: SocketIo<BusAdapter>, Data(p): Data<Value>| {
            if let Some(room) = p["room"].as_str() {
                let _ = io.to(room.to_owned()).emit("msg", &p["data"]).await;
            }
        },
    );
    // The gateway's client publish path: an envelope delivered locally (the sender
    // excluded) and sent on the bus, as `publish {to, event, data}` does.
    let publishing = cluster.clone();
    s.on(
        "client_publish",
        move |s: SocketRef<BusAdapter>, Data(p): Data<Value>| {
            let cluster = publishing.clone();
            async move {
                if let Some(room) = p["room"].as_str() {
                    let env = envelope::Envelope::new(cluster.node_id(), "msg", p["data"].clone())
                        .to_rooms([room]);
                    let _ = cluster.publish_from(&env, Some(&s)).await;
                }
            }
        },
    );
    let room = auth
        .as_ref()
        .and_then(|a| a["room"].as_str())
        .and_then(|r| Room::parse(r).ok())
        .and_then(|r| ScopedRoom::new(None, &r).ok());
    if let Some(room) = room
        && let Ok(joined) = cluster.join(&s, &room)
    {
        let _ = joined.await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let usage = "usage: roomcast-bench-node <port> <redis-url> <node-id>";
    let port = argv.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let redis = argv.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let node_id = argv.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let args = <Args as clap::Parser>::try_parse_from([
        "roomcast-bench-node",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--jwt-secret",
        "bench",
        "--publish-api-key",
        "bench",
        "--redis-url",
        &redis,
        "--node-id",
        &node_id,
        "--redis-channel-prefix",
        "bench",
        "--legacy-channel",
        "",
    ])?;
    let config = Config::from_args(args)?;
    // Logging as the gateway binary sets it up, with trace export when OTEL_* asks.
    let telemetry = gateway::Telemetry::from_env()?;
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(telemetry.layer())
            .init();
    }
    let (bus, inbox) = gateway::connect_bus(&config)?;
    let node = Node::build_with(&config, bus, inbox, |io, cluster| {
        vec![io.ns(
            "/",
            move |s: SocketRef<BusAdapter>, TryData(auth): TryData<Value>| {
                on_connect(cluster.clone(), s, auth.ok())
            },
        )]
    })
    .await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>()?)).await?;
    println!("listening on {port}");
    node.serve(listener, std::future::pending()).await?;
    Ok(())
}
