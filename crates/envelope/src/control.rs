//! Node-to-node control messages: presence queries, server-side events and the server
//! API's actions on sockets (list, disconnect, join, leave), on a
//! namespace's control channel (`{prefix}:ctl:{ns}`, answers on
//! `{prefix}:ctl:{ns}#{node}`). JSON, tagged by `kind`; the publisher SDK asks presence
//! queries in the same form as a node does.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// A control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Control {
    /// Who of yours is in `room` (a scoped room name)? Answer on `from`'s channel.
    Presence {
        /// Query id, repeated in each answer.
        id: String,
        /// Who asks: a node id, or a publisher's own id.
        from: String,
        /// The scoped room (`@{tenant}/{room}` or the room name).
        room: String,
    },
    /// One node's answer to a presence query.
    PresenceReply {
        /// The query's id.
        id: String,
        /// The answering node.
        node: String,
        /// Its sockets in the room, by user id.
        users: HashMap<String, u32>,
    },
    /// A server-side event for the other nodes' handlers; `id` when the sender waits for
    /// their answers.
    ServerEvent {
        /// Set when the sender waits for answers.
        id: Option<String>,
        /// The sending node.
        from: String,
        /// Event name.
        event: String,
        /// Its arguments.
        args: Vec<serde_json::Value>,
    },
    /// One node's answer to a server-side event.
    ServerEventReply {
        /// The event's id.
        id: String,
        /// The answering node.
        node: String,
        /// What its handler returned.
        data: serde_json::Value,
    },
    /// Do `action` to your sockets that `target` names in `tenant`'s scope; answer with
    /// the sockets acted on.
    Sockets {
        /// Query id, repeated in each answer.
        id: String,
        /// Who asks.
        from: String,
        /// The tenant whose sockets are meant (absent: the shared scope).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// Every tenant's (the Admin UI's operator): `tenant` is ignored, and rooms to
        /// join or leave are scoped to each socket's own tenant.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        any_tenant: bool,
        /// Which sockets.
        target: SocketTarget,
        /// What to do to them.
        action: SocketAction,
    },
    /// One node's answer to [`Control::Sockets`].
    SocketsReply {
        /// The query's id.
        id: String,
        /// The answering node.
        node: String,
        /// The sockets acted on, as [`SocketInfo`]s.
        sockets: Vec<SocketInfo>,
    },
}

/// Which sockets a server API action is about (in one tenant's scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketTarget {
    /// Every socket of a user (the room `user:{id}`).
    User(String),
    /// The members of a room (`kind:id`).
    Room(String),
    /// One socket, by its Socket.IO id.
    Socket(String),
    /// Every socket of the namespace (in the tenant's scope; all of them with
    /// `any_tenant`).
    All,
}

/// What a server API action does to the sockets of a [`SocketTarget`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SocketAction {
    /// Nothing: list them.
    List,
    /// Tell them `reason` (the `disconnect_reason` event) and disconnect them.
    Disconnect {
        /// Why, as the client receives it.
        reason: String,
    },
    /// Make them join `rooms` (`kind:id` names, in the target's tenant).
    Join {
        /// The rooms.
        rooms: Vec<String>,
    },
    /// Make them leave `rooms`.
    Leave {
        /// The rooms.
        rooms: Vec<String>,
    },
}

/// A socket as the server API and the admin UI describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// Its Socket.IO id.
    pub sid: String,
    /// The node it is connected to.
    pub node: String,
    /// Its namespace.
    pub ns: String,
    /// Its user (the token's subject).
    pub user: String,
    /// Its tenant, if its token has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its rooms (`kind:id`, without the tenant scope).
    pub rooms: Vec<String>,
    /// `websocket` or `polling`.
    pub transport: String,
}

/// One room's presence, cluster-wide: the merged answers of the nodes that answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Presence {
    /// Each user in the room and how many sockets they have there, by user id.
    pub users: BTreeMap<String, u32>,
    /// Sockets in the room, all users together.
    pub sockets: u32,
    /// Nodes that answered.
    pub nodes_answered: usize,
    /// Nodes the registry knows; more than answered means some did not answer in time
    /// and their sockets are not counted.
    pub nodes_expected: usize,
}

impl Presence {
    /// The users as the HTTP API and the client request list them: `[{user, sockets}]`.
    pub fn users_json(&self) -> Vec<serde_json::Value> {
        self.users
            .iter()
            .map(|(user, sockets)| serde_json::json!({"user": user, "sockets": sockets}))
            .collect()
    }

    /// Adds one node's answer (its users and their socket counts).
    pub fn add(&mut self, users: &HashMap<String, u32>) {
        for (user, n) in users {
            *self.users.entry(user.clone()).or_default() += n;
            self.sockets += n;
        }
        self.nodes_answered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_as_it_is_written_and_answers_merge() {
        let q = Control::Presence {
            id: "q1".into(),
            from: "sdk-1".into(),
            room: "@acme/doc:Task:1".into(),
        };
        let json = serde_json::to_string(&q).unwrap_or_default();
        assert!(json.contains(r#""kind":"presence""#), "{json}");
        assert_eq!(serde_json::from_str::<Control>(&json).ok(), Some(q));
        let mut p = Presence::default();
        p.add(&HashMap::from([("ann".into(), 2)]));
        p.add(&HashMap::from([("ann".into(), 1), ("bob".into(), 1)]));
        assert_eq!((p.sockets, p.nodes_answered, p.users["ann"]), (4, 2, 3));
    }
}
