//! Reference-counted interest in channels.

use std::collections::HashMap;
use std::hash::Hash;

/// A change in what a node must be subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta<K> {
    /// First local member: subscribe.
    Subscribe(K),
    /// Last local member gone: unsubscribe.
    Unsubscribe(K),
}

/// Counts local members per key (a room channel) and reports only the transitions that
/// matter to the bus: 0 → 1 is a [`Delta::Subscribe`], 1 → 0 an [`Delta::Unsubscribe`].
///
/// ```
/// use rooms::{Interest, Delta};
/// let mut interest = Interest::default();
/// assert_eq!(interest.add("a"), Some(Delta::Subscribe("a")));
/// assert_eq!(interest.add("a"), None);
/// assert_eq!(interest.remove(&"a"), None);
/// assert_eq!(interest.remove(&"a"), Some(Delta::Unsubscribe("a")));
/// assert!(interest.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct Interest<K> {
    counts: HashMap<K, usize>,
}

impl<K> Default for Interest<K> {
    fn default() -> Self {
        Self {
            counts: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Interest<K> {
    /// One more member for `key`.
    pub fn add(&mut self, key: K) -> Option<Delta<K>> {
        let count = self.counts.entry(key.clone()).or_insert(0);
        *count += 1;
        (*count == 1).then_some(Delta::Subscribe(key))
    }

    /// One member fewer for `key`. Removing an unknown key is a no-op.
    pub fn remove(&mut self, key: &K) -> Option<Delta<K>> {
        let count = self.counts.get_mut(key)?;
        *count -= 1;
        if *count == 0 {
            self.counts.remove(key);
            return Some(Delta::Unsubscribe(key.clone()));
        }
        None
    }

    /// Applies many changes at once and returns the net deltas (a key that goes 0 → 1 → 0
    /// within one batch produces nothing).
    pub fn apply<I>(&mut self, adds: I, removes: I) -> Vec<Delta<K>>
    where
        I: IntoIterator<Item = K>,
    {
        let mut touched: HashMap<K, bool> = HashMap::new();
        for key in adds {
            let was = self.contains(&key);
            touched.entry(key.clone()).or_insert(was);
            self.add(key);
        }
        for key in removes {
            let was = self.contains(&key);
            touched.entry(key.clone()).or_insert(was);
            self.remove(&key);
        }
        touched
            .into_iter()
            .filter_map(|(key, was)| match (was, self.contains(&key)) {
                (false, true) => Some(Delta::Subscribe(key)),
                (true, false) => Some(Delta::Unsubscribe(key)),
                _ => None,
            })
            .collect()
    }

    /// Members of `key`.
    pub fn count(&self, key: &K) -> usize {
        self.counts.get(key).copied().unwrap_or(0)
    }

    /// True if `key` has at least one member.
    pub fn contains(&self, key: &K) -> bool {
        self.counts.contains_key(key)
    }

    /// Number of keys with members.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True when nothing has members.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Every key with members (for resubscribing after a reconnect).
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.counts.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn batch_nets_out() {
        let mut i = Interest::default();
        i.add("keep");
        let mut deltas = i.apply(vec!["new", "tmp", "keep"], vec!["tmp", "keep", "keep"]);
        deltas.sort_by_key(|d| format!("{d:?}"));
        assert_eq!(
            deltas,
            vec![Delta::Subscribe("new"), Delta::Unsubscribe("keep")]
        );
        assert_eq!(i.count(&"new"), 1);
        assert!(!i.contains(&"tmp"));
        assert_eq!(i.remove(&"missing"), None);
    }

    proptest! {
        /// Replaying the deltas reproduces exactly the set of keys with members.
        #[test]
        fn deltas_track_membership(ops in prop::collection::vec((any::<bool>(), 0u8..6), 0..200)) {
            let mut i = Interest::default();
            let mut model: HashMap<u8, usize> = HashMap::new();
            let mut subscribed = std::collections::HashSet::new();
            for (add, key) in ops {
                let delta = if add {
                    *model.entry(key).or_default() += 1;
                    i.add(key)
                } else {
                    if let Some(c) = model.get_mut(&key) { *c -= 1; if *c == 0 { model.remove(&key); } }
                    i.remove(&key)
                };
                match delta {
                    Some(Delta::Subscribe(k)) => prop_assert!(subscribed.insert(k)),
                    Some(Delta::Unsubscribe(k)) => prop_assert!(subscribed.remove(&k)),
                    None => {}
                }
                let live: std::collections::HashSet<u8> = model.keys().copied().collect();
                prop_assert_eq!(&subscribed, &live);
                prop_assert_eq!(i.len(), live.len());
            }
        }
    }
}
