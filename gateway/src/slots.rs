//! Places counted per key, for what one client may hold at once: event streams and long
//! polls per principal (each costs a connection, a task and a place in the hub for as
//! long as it lasts), TLS handshakes and unauthenticated connections per client address.
//! Without a cap one token or one address could open them until the gateway runs out of
//! file descriptors. Each holds a [`Slot`]; dropping it frees the place.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// A principal, as the rate limiter names it: a SHA-256 of issuer and identity.
pub type PrincipalKey = [u8; 32];

/// Event streams and long polls per principal.
pub type StreamSlots = Slots<PrincipalKey>;
/// Connections per client address.
pub type AddressSlots = Slots<IpAddr>;

#[derive(Debug)]
pub struct Slots<K> {
    /// Places a key may hold; 0 is no cap.
    cap: usize,
    open: Mutex<HashMap<K, usize>>,
}

/// One place held by a key; frees it when dropped.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq = PrincipalKey> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `key`, or `None` when it already holds `cap`.
    pub fn take(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_insert(0);
        if self.cap != 0 && *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Places `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_gets_cap_slots_and_one_more_after_one_is_dropped() {
        let slots = StreamSlots::new(2);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert!(
            slots.take(a).is_none(),
            "a third stream of the same principal"
        );
        assert!(slots.take(b).is_some(), "another principal is not affected");
        drop(first);
        let third = slots.take(a);
        assert!(third.is_some(), "the dropped one's place is free again");
        assert_eq!(slots.held(&a), 2);
    }

    #[test]
    fn nothing_is_kept_for_a_principal_with_no_open_stream() {
        let slots = StreamSlots::new(0);
        let many: Vec<Slot> = (0..100).map(|_| slots.take([3u8; 32]).unwrap()).collect();
        assert_eq!(slots.held(&[3u8; 32]), 100, "0 is no cap");
        drop(many);
        assert!(slots.open.lock().unwrap().is_empty());
    }
}
