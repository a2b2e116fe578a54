//! Places held per client address, within a total: HTTP connections and QUIC handshakes are
//! both bounded this way. Plain data, no sockets; a place is given back when its [`Slot`] is
//! dropped. Addresses are keyed by [`super::client_key`] (an IPv6 client by its /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// At most `max` places in all, `per_address` for one client address. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AddressSlots {
    max: usize,
    per_address: usize,
    counts: Arc<Mutex<Counts>>,
}

impl AddressSlots {
    pub fn new(max: usize, per_address: usize) -> Self {
        Self {
            max,
            per_address,
            counts: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places held now, in all.
    pub fn in_use(&self) -> usize {
        self.lock().total
    }

    /// A place for `ip`, if it and the total are under their bounds.
    pub fn take(&self, ip: IpAddr) -> Option<Slot> {
        let key = super::client_key(ip);
        let mut c = self.lock();
        let mine = c.per_address.get(&key).copied().unwrap_or(0);
        if c.total >= self.max || mine >= self.per_address {
            return None;
        }
        c.total += 1;
        *c.per_address.entry(key).or_default() += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Addresses holding a place now.
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.lock().per_address.len()
    }
}

/// One place, given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: AddressSlots,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.lock();
        c.total -= 1;
        if let Some(n) = c.per_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&self.key);
            }
        }
    }
}
