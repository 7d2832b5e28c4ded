//! The cluster's side of other Socket.IO servers' formats ([`crate::compat`]): their
//! messages delivered to this node's sockets, and Roomcast's publishes written in Node's
//! format for the mixed cluster.

#[allow(
    clippy::wildcard_imports,
    reason = "the cluster's own imports, for its methods"
)]
use super::*;

impl Cluster {
    /// A message of another Socket.IO server: every node receives it and delivers to its
    /// own sockets (as those servers do), whole or not at all.
    pub(in crate::cluster) async fn on_compat(
        &self,
        compat: &crate::compat::Compat,
        source: crate::compat::Source,
        msg: &Message,
    ) {
        let label = source.label();
        match compat.decode(source, &msg.payload, self.limits.max_size) {
            Ok(Ok(env)) => {
                self.metrics.compat(label, "delivered");
                self.deliver_local(&env).await;
            }
            Ok(Err("own")) => self.metrics.compat(label, "own"),
            Ok(Err(why)) => {
                tracing::debug!(source = label, channel = %msg.channel, what = why, "ignored a message of another Socket.IO server");
                self.metrics.compat(label, "ignored");
            }
            Err(error) => {
                self.metrics
                    .compat(label, crate::compat::Compat::label(&error));
                compat.log_refusal(source, &msg.channel, &error);
            }
        }
    }

    /// With Node outbound on: publishes `env` in the Node adapter's format too, for the
    /// clients still on Node servers. Failures are counted and logged, never returned:
    /// Roomcast's own delivery does not depend on them.
    pub(crate) async fn mirror(&self, env: &Envelope) {
        let Some(compat) = &self.compat else { return };
        let Some(encoded) = compat.outbound(env) else {
            return;
        };
        let result = match encoded {
            Ok((channel, payload)) => self
                .bus()
                .publish(&channel, Bytes::from(payload))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => self.metrics.compat("node_out", "published"),
            Err(error) => {
                self.metrics.compat("node_out", "failed");
                tracing::warn!(id = %env.id, %error, "could not publish in the Node adapter's format");
            }
        }
    }
}
