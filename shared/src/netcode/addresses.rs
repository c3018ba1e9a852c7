//! The table from a connected client's address to its slot: the lookup
//! every datagram in makes first.
//!
//! Its own open-addressing table rather than a `HashMap`, for one thing a
//! map cannot do: split a lookup in two. With thousands of clients the
//! table is larger than the cache, and the entry a lookup compares is a
//! memory round trip away. A batch of datagrams hashes every sender first
//! and asks for each one's entry ([`AddressTable::hash`]), then looks them
//! all up ([`AddressTable::get`]), by which time the entries have arrived.
//!
//! Linear probing over a fixed power-of-two array at least twice the most
//! clients: it never grows, never allocates after it is made, and the keyed
//! hash (see `KeyedHash`) keeps senders from choosing addresses that
//! collide.

use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddr};

use crate::prefetch::prefetch;

use super::server::KeyedHash;

/// Whether `a` and `b` are the same address however written: an IPv4
/// address and its IPv4-mapped IPv6 form are one (a dual-stack socket
/// reports IPv4 peers mapped), and a token, which carries no IPv6 flow
/// label or scope, names an address by IP and port.
pub(super) fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

/// A sender's hash under a table's key, from [`AddressTable::hash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AddressHash(u64);

#[derive(Debug, Clone, Copy)]
struct Entry {
    address: SocketAddr,
    /// [`VACANT`] for an empty entry.
    slot: u32,
}

/// The slot of an empty entry.
const VACANT: u32 = u32::MAX;

const EMPTY: Entry = Entry {
    address: SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    slot: VACANT,
};

/// Address → slot for up to a fixed number of clients.
pub(super) struct AddressTable {
    hasher: KeyedHash,
    entries: Box<[Entry]>,
    len: usize,
    capacity: usize,
}

impl AddressTable {
    /// A table for up to `capacity` addresses, hashed with `hasher`.
    pub(super) fn new(capacity: usize, hasher: KeyedHash) -> Self {
        let size = capacity.saturating_mul(2).max(8).next_power_of_two();
        Self {
            hasher,
            entries: vec![EMPTY; size].into_boxed_slice(),
            len: 0,
            capacity,
        }
    }

    /// How many addresses the table holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// `address`'s hash, its entry asked for (the first half of a lookup).
    pub(super) fn hash(&self, address: &SocketAddr) -> AddressHash {
        let hash = AddressHash(self.hasher.hash_one(address));
        prefetch(&self.entries[self.home(hash)]);
        hash
    }

    /// The slot of `address` (whose [`hash`](Self::hash) is `hash`), if held.
    pub(super) fn get(&self, address: &SocketAddr, hash: AddressHash) -> Option<u32> {
        self.find(address, hash).map(|i| self.entries[i].slot)
    }

    /// Whether `address` is held.
    pub(super) fn contains(&self, address: &SocketAddr) -> bool {
        self.find(address, self.hash(address)).is_some()
    }

    /// Maps `address` to `slot`, replacing what it mapped to. Returns false,
    /// changing nothing, when the table is full of other addresses.
    pub(super) fn insert(&mut self, address: SocketAddr, slot: u32) -> bool {
        debug_assert_ne!(slot, VACANT);
        let hash = self.hash(&address);
        if let Some(i) = self.find(&address, hash) {
            self.entries[i].slot = slot;
            return true;
        }
        if self.len >= self.capacity {
            return false;
        }
        let mut i = self.home(hash);
        while self.entries[i].slot != VACANT {
            i = self.next(i);
        }
        self.entries[i] = Entry { address, slot };
        self.len += 1;
        true
    }

    /// Removes `address`; returns its slot if it was held.
    pub(super) fn remove(&mut self, address: &SocketAddr) -> Option<u32> {
        let mut hole = self.find(address, self.hash(address))?;
        let slot = self.entries[hole].slot;
        // Backward shift: move each later entry of the run whose home does
        // not lie between the hole and it into the hole, so that no lookup
        // meets an empty entry before the address it looks for.
        let mut i = hole;
        loop {
            i = self.next(i);
            let entry = self.entries[i];
            if entry.slot == VACANT {
                break;
            }
            let home = self.home(AddressHash(self.hasher.hash_one(entry.address)));
            let mask = self.entries.len() - 1;
            if i.wrapping_sub(home) & mask >= i.wrapping_sub(hole) & mask {
                self.entries[hole] = entry;
                hole = i;
            }
        }
        self.entries[hole] = EMPTY;
        self.len -= 1;
        Some(slot)
    }

    fn find(&self, address: &SocketAddr, hash: AddressHash) -> Option<usize> {
        let mut i = self.home(hash);
        loop {
            let entry = &self.entries[i];
            if entry.slot == VACANT {
                return None;
            }
            if entry.address == *address {
                return Some(i);
            }
            i = self.next(i);
        }
    }

    fn home(&self, hash: AddressHash) -> usize {
        // The table's size is a power of two.
        hash.0 as usize & (self.entries.len() - 1)
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) & (self.entries.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv6Addr, SocketAddrV6};

    use proptest::prelude::*;

    use super::*;

    fn table(capacity: usize) -> AddressTable {
        AddressTable::new(capacity, KeyedHash::new([7, 11]))
    }

    fn v4(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    #[test]
    fn holds_what_was_inserted_and_forgets_what_was_removed() {
        let mut t = table(4);
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0, 3));
        assert!(t.insert(v4(1), 10));
        assert!(t.insert(v6, 11));
        assert!(t.insert(v4(1), 12));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&v4(1), t.hash(&v4(1))), Some(12));
        assert_eq!(t.get(&v6, t.hash(&v6)), Some(11));
        // Same IP and port, other scope: another address.
        let other_scope = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0, 4));
        assert!(!t.contains(&other_scope));
        assert_eq!(t.remove(&v4(1)), Some(12));
        assert_eq!(t.remove(&v4(1)), None);
        assert!(!t.contains(&v4(1)));
        assert!(t.contains(&v6));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_refuses_new_addresses_but_updates_held_ones() {
        let mut t = table(3);
        for n in 0..3 {
            assert!(t.insert(v4(n), u32::from(n)));
        }
        assert!(!t.insert(v4(3), 3));
        assert!(!t.contains(&v4(3)));
        assert!(t.insert(v4(2), 20));
        assert_eq!(t.get(&v4(2), t.hash(&v4(2))), Some(20));
        assert_eq!(t.len(), 3);
    }

    proptest! {
        /// Any sequence of inserts and removes leaves the table holding
        /// what a map given the same operations holds (removals shift
        /// runs of colliding entries; a tiny table collides a lot).
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((any::<bool>(), 0u16..24), 0..300)) {
            let capacity = 16;
            let mut t = table(capacity);
            let mut model = HashMap::new();
            for (i, (insert, port)) in ops.into_iter().enumerate() {
                let address = v4(port);
                if insert {
                    let fits = model.contains_key(&address) || model.len() < capacity;
                    prop_assert_eq!(t.insert(address, i as u32), fits);
                    if fits {
                        model.insert(address, i as u32);
                    }
                } else {
                    prop_assert_eq!(t.remove(&address), model.remove(&address));
                }
                prop_assert_eq!(t.len(), model.len());
                for port in 0..24 {
                    let a = v4(port);
                    prop_assert_eq!(t.get(&a, t.hash(&a)), model.get(&a).copied());
                }
            }
        }
    }
}
