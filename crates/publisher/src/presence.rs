//! Presence from a service: the same query a gateway node asks its peers, asked by the
//! publisher on the namespace's control channel and answered by every node.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, Inbox};
use envelope::{Control, Presence};
use rooms::{Channels, ScopedRoom};

/// How long a query waits for the nodes (as a node waits for its peers).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// Why a presence query could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The room or tenant is invalid.
    #[error("invalid room: {0}")]
    InvalidRoom(String),
    /// This publisher has no inbox for the answers (see `Publisher::with_inbox`).
    #[error(
        "this publisher cannot receive answers: build it with Publisher::connect or give it its bus's inbox with with_inbox"
    )]
    NoInbox,
    /// The bus refused the query, or the registry could not be read.
    #[error("bus unavailable: {0}")]
    Bus(String),
}

/// The answers' side of a publisher: its own id, the bus inbox the answers arrive on, and
/// the namespaces whose answer channel it subscribed. One query at a time.
#[derive(Debug)]
pub(crate) struct Replies {
    id: String,
    inbox: tokio::sync::Mutex<(Inbox, HashSet<String>)>,
}

impl Replies {
    pub(crate) fn new(inbox: Inbox) -> Self {
        Self {
            id: format!("publisher-{}", envelope::new_id()),
            inbox: tokio::sync::Mutex::new((inbox, HashSet::new())),
        }
    }

    /// Asks every node of `ns` who is in `room`, and merges the answers that come within
    /// [`ANSWER_WITHIN`].
    pub(crate) async fn ask(
        &self,
        bus: &Arc<dyn Bus>,
        channels: &Channels,
        ns: &str,
        room: &ScopedRoom,
    ) -> Result<Presence, PresenceError> {
        let mut presence = Presence::default();
        let room = room.as_str().to_owned();
        let (expected, _) = self
            .query(
                bus,
                channels,
                ns,
                |id, from| Control::Presence { id, from, room },
                |reply| match reply {
                    Control::PresenceReply { users, .. } => {
                        presence.add(&users);
                        true
                    }
                    _ => false,
                },
            )
            .await?;
        presence.nodes_expected = expected.max(presence.nodes_answered);
        Ok(presence)
    }

    /// Acts on the sockets `target` names in `tenant`'s scope of `ns`, on every node that
    /// answers within [`ANSWER_WITHIN`] (the server API, from a service).
    pub(crate) async fn sockets(
        &self,
        bus: &Arc<dyn Bus>,
        channels: &Channels,
        ns: &str,
        tenant: Option<String>,
        target: envelope::SocketTarget,
        action: envelope::SocketAction,
    ) -> Result<Sockets, PresenceError> {
        let mut answer = Sockets::default();
        let (expected, answered) = self
            .query(
                bus,
                channels,
                ns,
                |id, from| Control::Sockets {
                    id,
                    from,
                    tenant,
                    any_tenant: false,
                    target,
                    action,
                },
                |reply| match reply {
                    Control::SocketsReply { sockets, .. } => {
                        answer.sockets.extend(sockets);
                        true
                    }
                    _ => false,
                },
            )
            .await?;
        answer
            .sockets
            .sort_by(|a, b| (&a.node, &a.sid).cmp(&(&b.node, &b.sid)));
        answer.nodes_answered = answered;
        answer.nodes_expected = expected.max(answered);
        Ok(answer)
    }

    /// Sends the query `make(id, from)` on `ns`'s control channel and hands each answer
    /// to it to `take` (which says whether it was one) until every node in the registry
    /// answered or [`ANSWER_WITHIN`] passed; (nodes expected, nodes that answered).
    async fn query(
        &self,
        bus: &Arc<dyn Bus>,
        channels: &Channels,
        ns: &str,
        make: impl FnOnce(String, String) -> Control,
        mut take: impl FnMut(Control) -> bool,
    ) -> Result<(usize, usize), PresenceError> {
        let mut guard = self.inbox.lock().await;
        let (inbox, subscribed) = &mut *guard;
        if !subscribed.contains(ns) {
            bus.subscribe(vec![channels.control_for(ns, &self.id)])
                .await
                .map_err(|e| PresenceError::Bus(e.to_string()))?;
            subscribed.insert(ns.to_owned());
        }
        // Answers to an earlier query that came too late.
        while inbox.try_recv().is_ok() {}
        let nodes = bus
            .registered(&bus.colocated(&format!("{}:nodes:", channels.prefix())))
            .await
            .map_err(|e| PresenceError::Bus(e.to_string()))?
            .len();
        if nodes == 0 {
            return Ok((0, 0));
        }
        let id = envelope::new_id();
        let query = make(id.clone(), self.id.clone());
        let bytes = serde_json::to_vec(&query).map_err(|e| PresenceError::Bus(e.to_string()))?;
        bus.publish(&channels.control(ns), bytes.into())
            .await
            .map_err(|e| PresenceError::Bus(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        let mut answered = 0;
        while answered < nodes {
            let Ok(Some(message)) = tokio::time::timeout_at(deadline, inbox.recv()).await else {
                break;
            };
            let Ok(reply) = serde_json::from_slice::<Control>(&message.payload) else {
                continue;
            };
            let is_ours = matches!(
                &reply,
                Control::PresenceReply { id: answer, .. } | Control::SocketsReply { id: answer, .. }
                    if *answer == id
            );
            if is_ours && take(reply) {
                answered += 1;
            }
        }
        Ok((nodes, answered))
    }
}

/// The sockets a server API action reached ([`crate::Publisher::act_on_sockets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sockets {
    /// Each socket acted on (or listed), with its node.
    pub sockets: Vec<envelope::SocketInfo>,
    /// Nodes that answered.
    pub nodes_answered: usize,
    /// Nodes in the registry; more than answered means some sockets may be missing.
    pub nodes_expected: usize,
}
