//! The cluster as the socketioxide adapter's host ([`AdapterHost`]): what the adapter may
//! ask of its node, and nothing more.

#[allow(
    clippy::wildcard_imports,
    reason = "the cluster's own imports, for its methods"
)]
use super::*;
use crate::adapter::AdapterHost;

impl AdapterHost for Cluster {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn channels(&self) -> &Channels {
        self.outbox.channels()
    }

    fn bus(&self) -> &Arc<dyn Bus> {
        self.outbox.bus()
    }

    fn register_adapter(&self, ns: &str, adapter: &Arc<BusAdapter>) {
        self.adapters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ns.to_owned(), Arc::downgrade(adapter));
    }

    fn send_to_bus<'a>(
        &'a self,
        env: &'a Envelope,
        to: &'a Audience,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>> {
        Box::pin(Cluster::send_to_bus(self, env, to))
    }

    fn join_remote(
        &self,
        ns: &str,
        sid: socketioxide::socket::Sid,
        room: &ScopedRoom,
        local: &mut dyn FnMut(),
    ) -> Option<crate::membership::Confirmation> {
        self.membership
            .join(&(Arc::from(ns), sid), room, local)
            .ok()
            .map(|(confirmation, _)| confirmation)
    }

    fn leave_remote(
        &self,
        ns: &str,
        sid: socketioxide::socket::Sid,
        room: &ScopedRoom,
        local: &mut dyn FnMut(),
    ) {
        self.membership.leave(&(Arc::from(ns), sid), room, local);
    }
}
