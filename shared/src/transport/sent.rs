//! The history of sent packets, kept until each is acked or judged lost.

use super::clock::Stamp;
use super::send::UnitSpan;

/// Slots a new connection starts with: a game's connection has a few
/// packets in flight (a tick's worth per round trip), and a small ring
/// keeps the slots it writes warm in the cache. A server visits each
/// connection's next slot once per packet, after every other client's
/// state went through the cache; a slot revisited within a second is
/// still there, one revisited after half a minute (a 1,024-slot ring at
/// 30 packets a second) comes from memory.
const INITIAL_SLOTS: usize = 32;

/// Sent packets remembered for acknowledgement at most; an older packet
/// still unacknowledged when its slot is reused counts as lost. A power of
/// two that divides the sequence space, so that slots follow sequences
/// across the wrap.
pub(crate) const SENT_HISTORY: usize = 1024;

pub(crate) struct SentPacket {
    pub(crate) sequence: u16,
    pub(crate) in_flight: bool,
    pub(crate) sent_at: Stamp,
    pub(crate) attempt: u8,
    pub(crate) units: UnitSpan,
}

/// A ring of [`SentPacket`]s indexed by sequence number, which doubles
/// (up to [`SENT_HISTORY`] slots) when more packets are in flight than it
/// holds.
pub(crate) struct SentRing {
    slots: Box<[SentPacket]>,
}

impl SentRing {
    pub(crate) fn new(now: Stamp) -> Self {
        const {
            assert!(SENT_HISTORY.is_power_of_two() && SENT_HISTORY <= 1 << 16);
            assert!(INITIAL_SLOTS.is_power_of_two() && INITIAL_SLOTS <= SENT_HISTORY);
        }
        Self {
            slots: Self::empty(INITIAL_SLOTS, now),
        }
    }

    fn empty(len: usize, now: Stamp) -> Box<[SentPacket]> {
        (0..len)
            .map(|_| SentPacket {
                sequence: 0,
                in_flight: false,
                sent_at: now,
                attempt: 0,
                units: UnitSpan::default(),
            })
            .collect()
    }

    /// Slots held now.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether the ring is as large as it may grow.
    pub(crate) fn is_full_size(&self) -> bool {
        self.slots.len() >= SENT_HISTORY
    }

    /// The slot of packet `sequence`.
    pub(crate) fn slot(&self, sequence: u16) -> usize {
        usize::from(sequence) & (self.slots.len() - 1)
    }

    pub(crate) fn get(&self, slot: usize) -> &SentPacket {
        &self.slots[slot]
    }

    pub(crate) fn get_mut(&mut self, slot: usize) -> &mut SentPacket {
        &mut self.slots[slot]
    }

    /// Doubles the ring, keeping the packets of the `span` sequences
    /// before `next` (every sequence of which was sent, so each has its
    /// own slot in the larger ring).
    pub(crate) fn grow(&mut self, next: u16, span: u16) {
        debug_assert!(!self.is_full_size());
        debug_assert!(usize::from(span) <= self.slots.len());
        let now = self.slots[0].sent_at;
        let larger = Self::empty(self.slots.len() * 2, now);
        let mut old = std::mem::replace(&mut self.slots, larger);
        for back in 1..=span {
            let sequence = next.wrapping_sub(back);
            let from = usize::from(sequence) & (old.len() - 1);
            let to = self.slot(sequence);
            std::mem::swap(&mut self.slots[to], &mut old[from]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn send(ring: &mut SentRing, sequence: u16, at: u64) {
        let slot = ring.slot(sequence);
        let packet = ring.get_mut(slot);
        packet.sequence = sequence;
        packet.in_flight = true;
        packet.sent_at = Stamp::default() + Duration::from_nanos(at);
    }

    #[test]
    fn growing_keeps_every_packet_in_flight_at_its_sequence() {
        let mut ring = SentRing::new(Stamp::default());
        assert_eq!(ring.capacity(), INITIAL_SLOTS);
        // Sequences that wrap the u16 space, all in flight.
        let first = u16::MAX - 10;
        let span = INITIAL_SLOTS as u16;
        for k in 0..span {
            send(&mut ring, first.wrapping_add(k), u64::from(k));
        }
        let next = first.wrapping_add(span);
        ring.grow(next, span);
        assert_eq!(ring.capacity(), 2 * INITIAL_SLOTS);
        for k in 0..span {
            let sequence = first.wrapping_add(k);
            let packet = ring.get(ring.slot(sequence));
            assert!(packet.in_flight);
            assert_eq!(packet.sequence, sequence);
            assert_eq!(
                packet.sent_at,
                Stamp::default() + Duration::from_nanos(u64::from(k))
            );
        }
        // The new slots are free for the next sequences.
        for k in 0..span {
            let packet = ring.get(ring.slot(next.wrapping_add(k)));
            assert!(!packet.in_flight);
        }
    }

    #[test]
    fn the_ring_grows_to_its_bound() {
        let mut ring = SentRing::new(Stamp::default());
        let mut next = 0u16;
        while !ring.is_full_size() {
            let span = ring.capacity() as u16;
            for _ in 0..span {
                send(&mut ring, next, 0);
                next = next.wrapping_add(1);
            }
            ring.grow(next, span);
        }
        assert_eq!(ring.capacity(), SENT_HISTORY);
    }
}
