//! The server API's actions on sockets, cluster-wide: list a user's, a room's or one
//! socket; disconnect them with a reason the client receives; make them join or leave
//! rooms. The asking node acts on its own sockets and asks every other node on the
//! namespace's control channel (like presence); each node acts through the same
//! membership owner as a client's own `join` and `leave`, so subscriptions, limits and
//! presence events follow. Everything stays inside one tenant's scope.

use std::sync::Arc;

use envelope::{SocketAction, SocketInfo, SocketTarget};
use rooms::{Room, ScopedRoom, TargetError, TenantId};
use socketioxide::extract::SocketRef;

use super::presence::Control;
use super::{Cluster, JoinWarning};
use crate::adapter::BusAdapter;

/// Who asked for a [`Control::Sockets`] action, and in whose scope.
pub(in crate::cluster) struct Asked {
    pub(in crate::cluster) id: String,
    pub(in crate::cluster) from: String,
    pub(in crate::cluster) tenant: Option<String>,
    pub(in crate::cluster) any_tenant: bool,
}

/// Whose sockets an action is about.
#[derive(Debug, Clone, Copy)]
struct Scope<'a> {
    tenant: Option<&'a TenantId>,
    any_tenant: bool,
}

/// The tenant of a socket's token.
fn tenant_of(socket: &SocketRef<BusAdapter>) -> Option<TenantId> {
    socket
        .extensions
        .get::<Arc<crate::auth::Identity>>()
        .and_then(|i| i.tenant_id.clone())
}

/// A join's confirmation by the bus, awaited before answering.
type Confirmation = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The sockets an action reached, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketsAnswer {
    /// Every socket acted on (or listed), with its node.
    pub sockets: Vec<SocketInfo>,
    /// Nodes that answered, this one included.
    pub nodes_answered: usize,
    /// Nodes the registry knows; more than answered means some sockets may be missing.
    pub nodes_expected: usize,
}

/// Why a server API action was refused before anything was done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketsError {
    /// A room, user or tenant name is invalid, or a room names another tenant.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The namespace is not served.
    #[error("unknown namespace {0:?}")]
    Namespace(String),
}

fn scoped(tenant: Option<&TenantId>, room: &str) -> Result<ScopedRoom, TargetError> {
    let parsed = Room::parse(room).map_err(|source| TargetError::Room {
        name: room.to_owned(),
        source,
    })?;
    Ok(ScopedRoom::new(tenant, &parsed)?)
}

/// Checks every name of `action` and `target` in `tenant`'s scope.
fn validate(
    tenant: Option<&TenantId>,
    target: &SocketTarget,
    action: &SocketAction,
) -> Result<(), TargetError> {
    match target {
        SocketTarget::User(user) => {
            scoped(tenant, &format!("user:{user}"))?;
        }
        SocketTarget::Room(room) => {
            scoped(tenant, room)?;
        }
        SocketTarget::Socket(_) | SocketTarget::All => {}
    }
    if let SocketAction::Join { rooms } | SocketAction::Leave { rooms } = action {
        for room in rooms {
            scoped(tenant, room)?;
        }
    }
    Ok(())
}

impl Cluster {
    /// Does `action` to the sockets `target` names in `tenant`'s scope of namespace `ns`,
    /// on every node that answers within [`super::presence::ANSWER_WITHIN`].
    pub async fn act_on_sockets(
        &self,
        ns: &str,
        tenant: Option<&str>,
        target: SocketTarget,
        action: SocketAction,
    ) -> Result<SocketsAnswer, SocketsError> {
        self.act_on_sockets_in(ns, tenant, false, target, action)
            .await
    }

    /// [`Cluster::act_on_sockets`] on every tenant's sockets (the Admin UI's operator):
    /// rooms to join or leave are scoped to each socket's own tenant.
    pub(crate) async fn act_on_sockets_any_tenant(
        &self,
        ns: &str,
        target: SocketTarget,
        action: SocketAction,
    ) -> Result<SocketsAnswer, SocketsError> {
        self.act_on_sockets_in(ns, None, true, target, action).await
    }

    async fn act_on_sockets_in(
        &self,
        ns: &str,
        tenant: Option<&str>,
        any_tenant: bool,
        target: SocketTarget,
        action: SocketAction,
    ) -> Result<SocketsAnswer, SocketsError> {
        let tenant_id = tenant
            .map(TenantId::parse)
            .transpose()
            .map_err(TargetError::from)?;
        validate(tenant_id.as_ref(), &target, &action)?;
        if self.io.get().and_then(|io| io.of(ns)).is_none() {
            return Err(SocketsError::Namespace(ns.to_owned()));
        }
        let scope = Scope {
            tenant: tenant_id.as_ref(),
            any_tenant,
        };
        let (sockets, confirmations) = self.act_locally(ns, scope, &target, &action);
        futures_util::future::join_all(confirmations).await;
        let mut answer = SocketsAnswer {
            sockets,
            nodes_answered: 1,
            nodes_expected: 1,
        };
        let id = envelope::new_id();
        let query = Control::Sockets {
            id: id.clone(),
            from: self.node_id.clone(),
            tenant: tenant.map(str::to_owned),
            any_tenant,
            target,
            action,
        };
        let (expected, answers) = self.ask_others(ns, &id, &query).await;
        for (_, sockets) in answers {
            if let Ok(sockets) = serde_json::from_value::<Vec<SocketInfo>>(sockets) {
                answer.sockets.extend(sockets);
                answer.nodes_answered += 1;
            }
        }
        answer.nodes_expected = (expected + 1).max(answer.nodes_answered);
        answer
            .sockets
            .sort_by(|a, b| (&a.node, &a.sid).cmp(&(&b.node, &b.sid)));
        Ok(answer)
    }

    /// Another node's [`Control::Sockets`]: act here and answer.
    pub(in crate::cluster) async fn on_sockets_query(
        &self,
        ns: &str,
        asked: Asked,
        target: SocketTarget,
        action: SocketAction,
    ) {
        let Asked {
            id,
            from,
            tenant,
            any_tenant,
        } = asked;
        let Ok(tenant) = tenant.as_deref().map(TenantId::parse).transpose() else {
            return;
        };
        if validate(tenant.as_ref(), &target, &action).is_err() {
            return;
        }
        let scope = Scope {
            tenant: tenant.as_ref(),
            any_tenant,
        };
        let (sockets, confirmations) = self.act_locally(ns, scope, &target, &action);
        let reply = Control::SocketsReply {
            id,
            node: self.node_id.clone(),
            sockets,
        };
        if confirmations.is_empty() {
            self.reply(ns, &from, &reply).await;
            return;
        }
        // Joins answer once their channels are confirmed; the dispatcher (which runs
        // this) must not wait for the bus it reads from.
        let (bus, channel) = (self.bus().clone(), self.channels().control_for(ns, &from));
        tokio::spawn(async move {
            futures_util::future::join_all(confirmations).await;
            if let Ok(bytes) = serde_json::to_vec(&reply) {
                let _ = bus.publish(&channel, bytes::Bytes::from(bytes)).await;
            }
        });
    }

    /// This node's sockets that `target` names, acted on; with the joins' confirmations to
    /// await before answering, so that a publish after the answer reaches the sockets.
    fn act_locally(
        &self,
        ns: &str,
        scope: Scope<'_>,
        target: &SocketTarget,
        action: &SocketAction,
    ) -> (Vec<SocketInfo>, Vec<Confirmation>) {
        let sockets = self.local_targets(ns, scope, target);
        let mut infos = Vec::with_capacity(sockets.len());
        let mut confirmations: Vec<Confirmation> = Vec::new();
        for socket in sockets {
            let own;
            let tenant = if scope.any_tenant {
                own = tenant_of(&socket);
                own.as_ref()
            } else {
                scope.tenant
            };
            match action {
                SocketAction::Disconnect { reason } => {
                    infos.push(self.describe(&socket));
                    Cluster::disconnect_with_reason(&socket, "disconnected_by_server", reason);
                }
                SocketAction::Join { rooms } => {
                    for room in rooms {
                        let Ok(room) = scoped(tenant, room) else {
                            continue;
                        };
                        match self.join(&socket, &room) {
                            Ok(confirmed) => confirmations.push(Box::pin(async move {
                                if let Err(JoinWarning::BusUnavailable(e)) = confirmed.await {
                                    tracing::warn!(error = %e, "a server API join is local only for now");
                                }
                            })),
                            Err(e) => tracing::info!(
                                sid = %socket.id, room = %room.room(), error = %e,
                                "a server API join was refused"
                            ),
                        }
                    }
                    infos.push(self.describe(&socket));
                }
                SocketAction::Leave { rooms } => {
                    for room in rooms {
                        if let Ok(room) = scoped(tenant, room) {
                            self.leave(&socket, &room);
                        }
                    }
                    infos.push(self.describe(&socket));
                }
                _ => infos.push(self.describe(&socket)),
            }
        }
        (infos, confirmations)
    }

    /// This node's sockets of `ns` that `target` names, in `tenant`'s scope only.
    fn local_targets(
        &self,
        ns: &str,
        scope: Scope<'_>,
        target: &SocketTarget,
    ) -> Vec<SocketRef<BusAdapter>> {
        let Some(op) = self.io.get().and_then(|io| io.of(ns)) else {
            return Vec::new();
        };
        let tenant = scope.tenant;
        let room = match target {
            SocketTarget::All if scope.any_tenant => return op.local().sockets(),
            SocketTarget::All => match tenant {
                Some(t) => scoped(None, &format!("tenant:{t}")),
                None => {
                    return op
                        .local()
                        .sockets()
                        .into_iter()
                        .filter(|s| tenant_of(s).is_none())
                        .collect();
                }
            },
            SocketTarget::User(user) => scoped(tenant, &format!("user:{user}")),
            SocketTarget::Room(room) => scoped(tenant, room),
            SocketTarget::Socket(sid) => {
                let Ok(sid) = sid.parse() else {
                    return Vec::new();
                };
                return op
                    .get_socket(sid)
                    .filter(|s| scope.any_tenant || tenant_of(s).as_ref() == tenant)
                    .into_iter()
                    .collect();
            }
        };
        match room {
            Ok(room) => op.to(room.into_string()).local().sockets(),
            Err(_) => Vec::new(),
        }
    }

    /// The Socket.IO server, once built.
    pub(crate) fn socket_io(&self) -> Option<&socketioxide::SocketIo<BusAdapter>> {
        self.io.get()
    }

    /// The namespaces this node serves.
    pub(crate) fn namespaces(&self) -> Vec<String> {
        self.namespaces.clone()
    }

    /// A socket as [`SocketInfo`].
    pub(crate) fn describe(&self, socket: &SocketRef<BusAdapter>) -> SocketInfo {
        let identity = socket.extensions.get::<Arc<crate::auth::Identity>>();
        let mut rooms: Vec<String> = socket
            .rooms()
            .into_iter()
            .filter_map(|r| ScopedRoom::parse(&r).ok().map(|s| s.room().to_owned()))
            .collect();
        rooms.sort();
        SocketInfo {
            sid: socket.id.to_string(),
            node: self.node_id.clone(),
            ns: socket.ns().to_owned(),
            user: identity
                .as_ref()
                .map(|i| i.user_id.clone())
                .unwrap_or_default(),
            tenant: identity
                .as_ref()
                .and_then(|i| i.tenant_id.as_ref())
                .map(ToString::to_string),
            rooms,
            transport: format!("{:?}", socket.transport_type()).to_lowercase(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_in_the_tenant_scope() {
        let acme = TenantId::parse("acme").ok();
        let join = |rooms: &[&str]| SocketAction::Join {
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        };
        let user = SocketTarget::User("ann".into());
        assert!(validate(acme.as_ref(), &user, &join(&["doc:Task:1"])).is_ok());
        assert!(validate(acme.as_ref(), &user, &join(&["tenant:globex"])).is_err());
        assert!(validate(acme.as_ref(), &user, &join(&["no-kind"])).is_err());
        let other = SocketTarget::Room("tenant:globex".into());
        assert!(validate(acme.as_ref(), &other, &SocketAction::List).is_err());
    }
}
