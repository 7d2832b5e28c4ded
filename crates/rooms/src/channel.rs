//! Room → bus channel naming.

use crate::{Audience, ScopedRoom};

/// What a channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind<'a> {
    /// Envelopes (room or namespace channel).
    Event,
    /// Adapter requests for the namespace.
    Request(&'a str),
    /// Adapter responses for the namespace.
    Response(&'a str),
    /// Roomcast's own node-to-node requests and replies for the namespace (presence,
    /// server-side events).
    Control(&'a str),
    /// Not one of ours (e.g. the legacy channel).
    Other,
}

/// Names the bus channels for one deployment. Every node and publisher sharing a Redis
/// must use the same prefix; different apps sharing one Redis use different prefixes.
///
/// On Redis Cluster, the namespaces that keep a history ([`Channels::colocating`]) have
/// their room and namespace channels and their history stream under one hash tag, `{ns}`,
/// so one shard holds them all and a recorded publish is one atomic script there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    prefix: String,
    colocated: Vec<String>,
}

impl Default for Channels {
    /// The default prefix is `roomcast`.
    fn default() -> Self {
        Self::new("roomcast")
    }
}

impl Channels {
    /// Channel names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            colocated: Vec::new(),
        }
    }

    /// The same naming with the channels and history of each of `namespaces` under the
    /// hash tag `{ns}` (Redis Cluster then keeps them on one shard). Every node and
    /// publisher must colocate the same namespaces.
    ///
    /// ```
    /// use rooms::{Room, ScopedRoom};
    /// let ch = rooms::Channels::new("app").colocating(&["/"]);
    /// let room = ScopedRoom::new(None, &Room::user("42")?)?;
    /// assert_eq!(ch.room("/", &room), "app:room:{/}#user:42");
    /// assert_eq!(ch.namespace("/"), "app:ns:{/}");
    /// assert_eq!(ch.history("/"), "app:history:{/}");
    /// assert_eq!(ch.room("/chat", &room), "app:room:/chat#user:42");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn colocating<S: AsRef<str>>(mut self, namespaces: &[S]) -> Self {
        self.colocated = namespaces.iter().map(|n| n.as_ref().to_owned()).collect();
        self
    }

    /// Whether `ns`'s channels and history share one hash tag.
    pub fn is_colocated(&self, ns: &str) -> bool {
        self.colocated.iter().any(|n| n == ns)
    }

    /// `ns` as it appears in channel and stream names: `{ns}` when colocated.
    fn ns_part<'a>(&self, ns: &'a str) -> std::borrow::Cow<'a, str> {
        if self.is_colocated(ns) {
            std::borrow::Cow::Owned(format!("{{{ns}}}"))
        } else {
            std::borrow::Cow::Borrowed(ns)
        }
    }

    /// The prefix in use.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The channel carrying messages for `room` in namespace `ns`: one channel per
    /// (namespace, tenant, room), so interest routing stays per tenant.
    ///
    /// ```
    /// use rooms::{Room, ScopedRoom, TenantId};
    /// let ch = rooms::Channels::new("app");
    /// let room = Room::user("42")?;
    /// assert_eq!(ch.room("/", &ScopedRoom::new(None, &room)?), "app:room:/#user:42");
    /// let acme = TenantId::parse("acme")?;
    /// assert_eq!(ch.room("/", &ScopedRoom::new(Some(&acme), &room)?), "app:room:/#@acme/user:42");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn room(&self, ns: &str, room: &ScopedRoom) -> String {
        format!("{}:room:{}#{room}", self.prefix, self.ns_part(ns))
    }

    /// The channel for whole-namespace broadcasts (and multi-room messages), which every
    /// node subscribes to.
    pub fn namespace(&self, ns: &str) -> String {
        format!("{}:ns:{}", self.prefix, self.ns_part(ns))
    }

    /// The channel of cluster-wide adapter requests in namespace `ns` (fetch sockets,
    /// acks, remote joins), which every node subscribes to.
    pub fn requests(&self, ns: &str) -> String {
        format!("{}:req:{ns}", self.prefix)
    }

    /// The channel of adapter requests addressed to one server (`uid`, the Socket.IO
    /// server id) in `ns`.
    pub fn requests_for(&self, ns: &str, uid: &str) -> String {
        format!("{}:req:{ns}#{uid}", self.prefix)
    }

    /// The channel carrying responses to the requests of server `uid` in `ns`.
    pub fn responses_for(&self, ns: &str, uid: &str) -> String {
        format!("{}:res:{ns}#{uid}", self.prefix)
    }

    /// The Redis Stream that client events routed to services are appended to, one per
    /// namespace (a stream key, not a pub/sub channel).
    ///
    /// ```
    /// assert_eq!(rooms::Channels::new("p").upstream("/chat"), "p:upstream:/chat");
    /// ```
    pub fn upstream(&self, ns: &str) -> String {
        format!("{}:upstream:{ns}", self.prefix)
    }

    /// The history stream of a namespace with connection state recovery: every message
    /// published in it, with its offset (a stream key, not a pub/sub channel).
    ///
    /// ```
    /// assert_eq!(rooms::Channels::new("p").history("/"), "p:history:/");
    /// ```
    pub fn history(&self, ns: &str) -> String {
        format!("{}:history:{}", self.prefix, self.ns_part(ns))
    }

    /// The key of a recoverable session, by its private id.
    ///
    /// ```
    /// assert_eq!(rooms::Channels::new("p").session("abc"), "p:session:abc");
    /// ```
    pub fn session(&self, pid: &str) -> String {
        format!("{}:session:{pid}", self.prefix)
    }

    /// Node-to-node control messages of a namespace (presence queries, server-side
    /// events): every node subscribes.
    ///
    /// ```
    /// assert_eq!(rooms::Channels::new("p").control("/"), "p:ctl:/");
    /// ```
    pub fn control(&self, ns: &str) -> String {
        format!("{}:ctl:{ns}", self.prefix)
    }

    /// Control messages of a namespace for one node (replies to its queries).
    ///
    /// ```
    /// assert_eq!(rooms::Channels::new("p").control_for("/", "n1"), "p:ctl:/#n1");
    /// ```
    pub fn control_for(&self, ns: &str, node: &str) -> String {
        format!("{}:ctl:{ns}#{node}", self.prefix)
    }

    /// Which kind of channel `channel` is, and its namespace for adapter channels.
    ///
    /// ```
    /// use rooms::{Channels, ChannelKind};
    /// let ch = Channels::new("p");
    /// assert_eq!(ch.classify("p:req:/chat"), ChannelKind::Request("/chat"));
    /// assert_eq!(ch.classify("p:req:/chat#u1"), ChannelKind::Request("/chat"));
    /// assert_eq!(ch.classify("p:res:/#u1"), ChannelKind::Response("/"));
    /// assert_eq!(ch.classify("p:ctl:/chat#n1"), ChannelKind::Control("/chat"));
    /// assert_eq!(ch.classify("p:room:/#user:1"), ChannelKind::Event);
    /// assert_eq!(ch.classify("realtime"), ChannelKind::Other);
    /// ```
    pub fn classify<'a>(&self, channel: &'a str) -> ChannelKind<'a> {
        let Some(rest) = channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(':'))
        else {
            return ChannelKind::Other;
        };
        let ns_of = |s: &'a str| s.split_once('#').map_or(s, |(ns, _)| ns);
        if let Some(r) = rest.strip_prefix("req:") {
            ChannelKind::Request(ns_of(r))
        } else if let Some(r) = rest.strip_prefix("res:") {
            ChannelKind::Response(ns_of(r))
        } else if let Some(r) = rest.strip_prefix("ctl:") {
            ChannelKind::Control(ns_of(r))
        } else if rest.starts_with("room:") || rest.starts_with("ns:") {
            ChannelKind::Event
        } else {
            ChannelKind::Other
        }
    }

    /// The single channel a message for `audience` in `ns` is published on: the room's
    /// own channel for one room, else the namespace channel. A multi-room message is sent
    /// once on the namespace channel so each node receives it once and de-duplicates
    /// sockets locally, instead of receiving one copy per room.
    pub fn for_target(&self, ns: &str, audience: &Audience) -> String {
        match audience {
            Audience::Rooms(rooms) if rooms.len() == 1 => self.room(ns, &rooms[0]),
            _ => self.namespace(ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Room;

    #[test]
    fn names() {
        let ch = Channels::new("p");
        let u = ScopedRoom::new(None, &Room::user("1").unwrap()).unwrap();
        let t = ScopedRoom::new(None, &Room::tenant("t").unwrap()).unwrap();
        assert_eq!(ch.room("/chat", &u), "p:room:/chat#user:1");
        assert_eq!(ch.namespace("/"), "p:ns:/");
        assert_eq!(ch.requests("/"), "p:req:/");
        assert_eq!(ch.requests_for("/", "u"), "p:req:/#u");
        assert_eq!(ch.responses_for("/a", "u"), "p:res:/a#u");
        assert_eq!(ch.classify("q:req:/"), ChannelKind::Other);
        assert_eq!(
            ch.for_target("/", &Audience::Rooms(vec![u.clone()])),
            "p:room:/#user:1"
        );
        assert_eq!(
            ch.for_target("/", &Audience::Rooms(vec![t.clone()])),
            "p:room:/#@t/tenant:t"
        );
        assert_eq!(ch.for_target("/", &Audience::Rooms(vec![u, t])), "p:ns:/");
        assert_eq!(ch.for_target("/", &Audience::Everyone), "p:ns:/");
        assert_eq!(ch.classify("p:room:/#user:1"), ChannelKind::Event);
        assert_eq!(ch.classify("p:ns:/"), ChannelKind::Event);
        assert_eq!(ch.classify("q:room:/#user:1"), ChannelKind::Other);
        assert_eq!(Channels::default().prefix(), "roomcast");
    }
}
