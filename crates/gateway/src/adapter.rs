//! A socketioxide adapter backed by the cluster bus, so that `io.to(room).emit(..)` in
//! gateway code reaches sockets on every node.

use std::sync::Arc;
use std::time::Duration;

use envelope::{Envelope, Flags, VERSION};
use socketioxide::adapter::Emitter;
use socketioxide_core::Value as SioValue;
use socketioxide_core::adapter::errors::BroadcastError;
use socketioxide_core::adapter::{
    BroadcastFlags, BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter, SocketEmitter,
};
use socketioxide_core::packet::{Packet, PacketData};

use crate::cluster::Cluster;

/// The adapter of every namespace: local state in socketioxide's [`CoreLocalAdapter`],
/// cluster-wide broadcasts over the bus.
pub struct BusAdapter {
    local: CoreLocalAdapter<Emitter>,
    cluster: Arc<Cluster>,
}

impl std::fmt::Debug for BusAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusAdapter")
            .field("node_id", &self.cluster.node_id())
            .finish_non_exhaustive()
    }
}

impl DefinedAdapter for BusAdapter {}

impl CoreAdapter<Emitter> for BusAdapter {
    type Error = std::convert::Infallible;
    type State = Arc<Cluster>;
    type AckStream = <Emitter as SocketEmitter>::AckStream;
    type InitRes = ();

    fn new(state: &Self::State, local: CoreLocalAdapter<Emitter>) -> Self {
        Self {
            local,
            cluster: state.clone(),
        }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        on_success();
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        if !opts.is_local(self.local.server_id()) {
            match to_envelope(&packet, &opts, self.cluster.node_id()) {
                Some(env) => {
                    if let Err(e) = self.cluster.send_to_bus(&env).await {
                        tracing::warn!(error = %e, event = %env.event, "cluster broadcast failed; delivered on this node only");
                    }
                }
                None => tracing::debug!(
                    "broadcast cannot cross the bus (binary payload or socket target); local only"
                ),
            }
        }
        self.local
            .broadcast(packet, opts)
            .map_err(BroadcastError::from)
    }

    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<Self::AckStream, Self::Error> {
        Ok(self.local.broadcast_with_ack(packet, opts, timeout).0)
    }

    fn get_local(&self) -> &CoreLocalAdapter<Emitter> {
        &self.local
    }
}

/// Converts an event packet into an envelope. `None` for what cannot cross the bus as
/// JSON: binary attachments, acks, and targets that are not valid room names (such as a
/// socket id).
fn to_envelope(packet: &Packet, opts: &BroadcastOptions, origin: &str) -> Option<Envelope> {
    let PacketData::Event(SioValue::Str(text, bins), None) = &packet.inner else {
        return None;
    };
    if bins.as_ref().is_some_and(|b| !b.is_empty()) {
        return None;
    }
    let mut items: Vec<serde_json::Value> = serde_json::from_str(text.as_str()).ok()?;
    if items.is_empty() {
        return None;
    }
    let event = match items.remove(0) {
        serde_json::Value::String(e) => e,
        _ => return None,
    };
    let to: Vec<String> = opts.rooms.iter().map(|r| r.to_string()).collect();
    let except: Vec<String> = opts.except.iter().map(|r| r.to_string()).collect();
    if bus::parse_rooms(&to).is_err() || bus::parse_rooms(&except).is_err() {
        return None;
    }
    let mut flags = Flags::default();
    flags.volatile = opts.has_flag(BroadcastFlags::Volatile);
    Some(Envelope {
        v: VERSION,
        id: envelope::new_id(),
        ts: envelope::now_ms(),
        origin: origin.to_owned(),
        ns: packet.ns.to_string(),
        event,
        data: None,
        args: Some(items),
        to,
        except,
        flags,
        trace: None,
    })
}
