//! Health of a bus's links.

use std::fmt;

/// State of one link (the publishing pool or the subscriber connection).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// Connected and working.
    Up,
    /// Not connected yet, or reconnecting.
    Connecting,
    /// Failing; `error` is the last error (already free of secrets).
    Down {
        /// The last error seen.
        error: String,
    },
}

impl LinkState {
    /// True when the link is up.
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up)
    }

    /// A one-word label: `up`, `connecting` or `down`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Connecting => "connecting",
            Self::Down { .. } => "down",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Down { error } => write!(f, "down ({error})"),
            other => f.write_str(other.label()),
        }
    }
}

/// Health of a bus, and the figures an operator watches with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The link used for publishing.
    pub publisher: LinkState,
    /// The link receiving subscribed messages.
    pub subscriber: LinkState,
    /// Channels this bus is subscribed to (or will resubscribe when it reconnects).
    pub channels: usize,
    /// Times the subscribing link reconnected after it had been up.
    pub reconnects: u64,
    /// Subscriptions made again because the node found them missing: after a lost
    /// connection, a failover, or a check against what Redis reports (drift).
    pub repaired: u64,
}

impl Health {
    /// Both links still connecting, nothing subscribed: a Redis bus just created.
    pub const CONNECTING: Health = Health {
        publisher: LinkState::Connecting,
        subscriber: LinkState::Connecting,
        channels: 0,
        reconnects: 0,
        repaired: 0,
    };

    /// Both links up.
    pub const UP: Health = Health {
        publisher: LinkState::Up,
        subscriber: LinkState::Up,
        channels: 0,
        reconnects: 0,
        repaired: 0,
    };

    /// True when both links are up.
    pub fn is_up(&self) -> bool {
        self.publisher.is_up() && self.subscriber.is_up()
    }
}
