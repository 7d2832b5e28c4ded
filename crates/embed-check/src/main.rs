//! Two gateway nodes embedded in one process on an in-memory hub: a server-side event
//! sent from one reaches the other's handler. Exits non-zero if it does not.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hub = bus::MemoryHub::new();
    let mut nodes = Vec::new();
    for name in ["embedded-a", "embedded-b"] {
        let args = gateway::Args::try_parse_hermetic([
            "embedded",
            "--node-id",
            name,
            "--jwt-secret",
            "embedded-check-secret-of-at-least-32-bytes",
            "--publish-api-key",
            "embedded-check-publish-key-of-32-bytes",
        ])?;
        let config = gateway::Config::from_args(args)?;
        let (bus, inbox) = hub.connect();
        nodes.push(gateway::Node::build(&config, Arc::new(bus), inbox).await?);
    }

    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    nodes[1].cluster.on_server_event(move |event| {
        seen_tx
            .send((event.event.clone(), event.args.clone(), event.from.clone()))
            .ok();
        None
    });
    nodes[0]
        .cluster
        .server_side_emit("/", "cache.flush", vec![json!("prices")])
        .await?;
    let (event, args, from) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .context("no server-side event within 5 s")?
        .context("handler dropped")?;
    if (event.as_str(), &args[..], from.as_str())
        != ("cache.flush", &[json!("prices")][..], "embedded-a")
    {
        bail!("unexpected server-side event {event} {args:?} from {from}");
    }
    println!("embedded nodes: server-side event {event} {args:?} from {from} received");
    Ok(())
}
