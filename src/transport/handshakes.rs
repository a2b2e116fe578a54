//! Admission of QUIC handshakes, the same on both endpoints: at most [`super::MAX_HANDSHAKES`]
//! in progress, at most [`MAX_HANDSHAKES_PER_ADDRESS`] of them from one client address (an
//! IPv6 client by its /64), and past [`super::RETRY_ABOVE`] in progress a client must first
//! prove its address with a Retry round trip, so spoofed floods hold no slot at all.
//!
//! Plain data, no sockets: the endpoints ask [`Handshakes::admit`] with what quinn tells of
//! the incoming connection and act on the answer.

use std::net::IpAddr;

use super::slots::AddressSlots;
pub use super::slots::Slot;

/// Handshakes one client address may have in progress at once (a school behind one NAT
/// connecting at the start of a class stays well under it).
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;

/// What to do with an incoming connection.
#[derive(Debug)]
pub enum Admit {
    /// Go ahead; the slot is given back when dropped (handshake done, failed or timed out).
    Go(Slot),
    /// Ask the client to prove its address first.
    Retry,
    /// Refuse: too many in progress, in all or from this address.
    Refuse,
}

/// The handshakes in progress on one endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handshakes {
    retry_above: usize,
    slots: AddressSlots,
}

impl Default for Handshakes {
    fn default() -> Self {
        Self::new(
            super::MAX_HANDSHAKES,
            MAX_HANDSHAKES_PER_ADDRESS,
            super::RETRY_ABOVE,
        )
    }
}

impl Handshakes {
    pub fn new(max: usize, per_address: usize, retry_above: usize) -> Self {
        Self {
            retry_above,
            slots: AddressSlots::new(max, per_address),
        }
    }

    /// Decides on a handshake from `ip`; `validated` says whether the client already proved
    /// its address (it answered a Retry).
    pub fn admit(&self, ip: IpAddr, validated: bool) -> Admit {
        if self.slots.in_use() >= self.retry_above && !validated {
            return Admit::Retry;
        }
        match self.slots.take(ip) {
            Some(slot) => Admit::Go(slot),
            None => Admit::Refuse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_slot_and_floods_are_asked_to_retry() {
        let h = Handshakes::new(8, 3, 4);
        let attacker: Vec<_> = (0..3)
            .map(|_| match h.admit(ip("192.0.2.1"), true) {
                Admit::Go(slot) => slot,
                other => panic!("{other:?}"),
            })
            .collect();
        // The address's share is used up, also for validated (Retry-answering) attempts.
        assert!(matches!(h.admit(ip("192.0.2.1"), true), Admit::Refuse));
        // A neighbour gets in; unvalidated ones are asked to Retry once 4 are in progress.
        let n = h.admit(ip("198.51.100.7"), false);
        assert!(matches!(n, Admit::Go(_)));
        assert!(matches!(h.admit(ip("198.51.100.8"), false), Admit::Retry));
        assert!(matches!(h.admit(ip("198.51.100.8"), true), Admit::Go(_)));
        // Slots come back when handshakes end.
        drop(attacker);
        drop(n);
        assert!(matches!(h.admit(ip("192.0.2.1"), false), Admit::Go(_)));
        assert!(h.slots.addresses() <= 1);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let h = Handshakes::new(8, 2, 8);
        let _a = h.admit(ip("2001:db8::1"), false);
        let _b = h.admit(ip("2001:db8::2"), false);
        assert!(matches!(h.admit(ip("2001:db8::3"), false), Admit::Refuse));
        assert!(matches!(
            h.admit(ip("2001:db8:0:1::1"), false),
            Admit::Go(_)
        ));
    }
}
