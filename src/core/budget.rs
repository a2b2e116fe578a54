//! Byte budgets for relayed media: the relay's whole cache, each client address's share of it,
//! and each publishing session's share of that.
//!
//! A [`Budget`] has a limit and an optional parent; a [`Charge`] takes bytes from a budget and
//! every ancestor at once, or from none of them, and gives them back when dropped. The relay
//! charges every cached object (and every object still arriving) to its publisher's session
//! budget, so one publisher, or one address, exhausts its own share long before the relay's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which level of the hierarchy refused a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{level} media budget of {limit} bytes exhausted")]
pub struct Exhausted {
    pub level: &'static str,
    pub limit: usize,
}

/// A limit on bytes held, nested inside its parent's.
#[derive(Debug)]
pub struct Budget {
    level: &'static str,
    limit: usize,
    used: AtomicUsize,
    parent: Option<Arc<Budget>>,
}

impl Budget {
    /// A budget with no parent (the relay's).
    pub fn root(level: &'static str, limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            level,
            limit,
            used: AtomicUsize::new(0),
            parent: None,
        })
    }

    /// A budget inside `self`: its bytes count against both.
    pub fn child(self: &Arc<Self>, level: &'static str, limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            level,
            limit,
            used: AtomicUsize::new(0),
            parent: Some(self.clone()),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty charge against this budget, to grow with [`Charge::add`].
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, n: usize) -> Result<(), Exhausted> {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            });
        if ok.is_err() {
            return Err(Exhausted {
                level: self.level,
                limit: self.limit,
            });
        }
        if let Some(parent) = &self.parent {
            if let Err(e) = parent.take(n) {
                self.used.fetch_sub(n, Ordering::AcqRel);
                return Err(e);
            }
        }
        Ok(())
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        if let Some(parent) = &self.parent {
            parent.give(n);
        }
    }
}

/// Bytes taken from a budget (and its ancestors), given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    /// Takes `n` more bytes, or nothing if any level would go over its limit.
    pub fn add(&mut self, n: usize) -> Result<(), Exhausted> {
        self.budget.take(n)?;
        self.bytes += n;
        Ok(())
    }

    /// Bytes held by this charge.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives every byte back now (the charge stays usable).
    pub fn clear(&mut self) {
        self.budget.give(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_takes_from_every_level_or_none() {
        let relay = Budget::root("relay", 100);
        let address = relay.child("address", 60);
        let a = address.child("session", 40);
        let b = address.child("session", 40);
        let mut ca = a.charge();
        ca.add(40).unwrap();
        assert_eq!(
            ca.add(1),
            Err(Exhausted {
                level: "session",
                limit: 40
            })
        );
        let mut cb = b.charge();
        // b has room, but the address has only 20 left: nothing is taken anywhere.
        assert_eq!(cb.add(30).unwrap_err().level, "address");
        assert_eq!((b.used(), address.used(), relay.used()), (0, 40, 40));
        cb.add(20).unwrap();
        assert_eq!(relay.used(), 60);
        drop(ca);
        assert_eq!((a.used(), address.used(), relay.used()), (0, 20, 20));
        cb.clear();
        assert_eq!(relay.used(), 0);
    }

    #[test]
    fn the_root_limits_every_address_together() {
        let relay = Budget::root("relay", 50);
        let one = relay.child("address", 40).child("session", 40);
        let two = relay.child("address", 40).child("session", 40);
        let mut c1 = one.charge();
        c1.add(30).unwrap();
        let mut c2 = two.charge();
        assert_eq!(c2.add(30).unwrap_err().level, "relay");
        assert_eq!(two.used(), 0);
    }
}
