//! The cluster registry: each node's record under `{prefix}:nodes:{node_id}`, refreshed
//! every third of its TTL, so a crashed node disappears within the TTL.

use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, PublishError};
use envelope::NodeInfo;
use rooms::Channels;

/// How long a registry read or write may take before it counts as failed.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a node may not join the cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A live node already holds this node id.
    #[error(
        "node id {node_id:?} is already held by a live node ({address}); give each node its own GATEWAY_NODE_ID (or wait {ttl_secs} s if that node just crashed)"
    )]
    DuplicateNodeId {
        /// The id.
        node_id: String,
        /// The other node's advertised address.
        address: String,
        /// The registry TTL.
        ttl_secs: u64,
    },
}

/// One node's handle on the registry.
#[derive(Debug)]
pub struct Registry {
    bus: Arc<dyn Bus>,
    prefix: String,
    key: String,
    node_id: String,
}

impl Registry {
    pub(crate) fn new(bus: Arc<dyn Bus>, channels: &Channels, node_id: &str) -> Self {
        let prefix = bus.colocated(&format!("{}:nodes:", channels.prefix()));
        Self {
            bus,
            key: format!("{prefix}{node_id}"),
            prefix,
            node_id: node_id.to_owned(),
        }
    }

    /// Refuses to start when a live node holds this node's id (each would drop the
    /// other's messages as its own echo). A record with this id is live if it is
    /// refreshed within one heartbeat period; the record of a crashed predecessor (a pod
    /// restarted under the same name) is not, and costs only that wait. A registry that
    /// cannot be read (Redis down at start) does not stop the node.
    pub async fn check_unique(&self, ttl: Duration) -> Result<(), RegistryError> {
        let Some(first) = self.own_record().await else {
            return Ok(());
        };
        tracing::info!(node_id = %self.node_id, "a registry record holds this node id; checking whether its node is alive");
        tokio::time::sleep(ttl / 3 + Duration::from_millis(500)).await;
        match self.own_record().await {
            Some(again) if again.ts > first.ts => Err(RegistryError::DuplicateNodeId {
                node_id: again.node_id,
                address: again.address,
                ttl_secs: ttl.as_secs(),
            }),
            _ => Ok(()),
        }
    }

    /// The registry record holding this node's id, if any (and readable).
    async fn own_record(&self) -> Option<NodeInfo> {
        match self.nodes().await {
            Ok(nodes) => nodes.into_iter().find(|n| n.node_id == self.node_id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster registry; node id uniqueness not checked");
                None
            }
        }
    }

    /// Writes `record()` every third of `ttl`, forever.
    pub(crate) async fn heartbeat(&self, ttl: Duration, record: impl Fn() -> NodeInfo) {
        let mut tick = tokio::time::interval(ttl / 3);
        loop {
            tick.tick().await;
            let Ok(json) = serde_json::to_vec(&record()) else {
                continue;
            };
            let write = self.bus.register(&self.key, json.into(), ttl);
            match tokio::time::timeout(REGISTRY_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat not recorded"),
                Err(_) => tracing::debug!("heartbeat timed out"),
            }
        }
    }

    /// Leaves the registry (on graceful shutdown).
    pub async fn deregister(&self) {
        match tokio::time::timeout(REGISTRY_TIMEOUT, self.bus.unregister(&self.key)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not leave the registry"),
            Err(_) => tracing::debug!("leaving the registry timed out"),
        }
    }

    /// The live nodes of the cluster, by node id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, PublishError> {
        let values = tokio::time::timeout(REGISTRY_TIMEOUT, self.bus.registered(&self.prefix))
            .await
            .map_err(|_| PublishError::Unavailable("registry read timed out".into()))??;
        let mut nodes: Vec<NodeInfo> = values
            .iter()
            .filter_map(|v| serde_json::from_slice(v).ok())
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }
}
