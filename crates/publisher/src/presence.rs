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
        let mut presence = Presence {
            nodes_expected: nodes,
            ..Presence::default()
        };
        if nodes == 0 {
            return Ok(presence);
        }
        let id = envelope::new_id();
        let query = Control::Presence {
            id: id.clone(),
            from: self.id.clone(),
            room: room.as_str().to_owned(),
        };
        let bytes = serde_json::to_vec(&query).map_err(|e| PresenceError::Bus(e.to_string()))?;
        bus.publish(&channels.control(ns), bytes.into())
            .await
            .map_err(|e| PresenceError::Bus(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        while presence.nodes_answered < nodes {
            let Ok(Some(message)) = tokio::time::timeout_at(deadline, inbox.recv()).await else {
                break;
            };
            if let Ok(Control::PresenceReply {
                id: answer, users, ..
            }) = serde_json::from_slice::<Control>(&message.payload)
                && answer == id
            {
                presence.add(&users);
            }
        }
        Ok(presence)
    }
}
