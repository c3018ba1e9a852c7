//! Send halves of the channels: queues, reliable windows and the ready
//! queues that packing draws from.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::prefetch::prefetch;

use super::clock::Stamp;
use super::config::{ChannelConfig, ChannelKind};
use super::sent::SENT_HISTORY;
use super::seq::seq_distance;
use super::slots::IdSlots;
use super::wire::{FragmentInfo, MessageHeader, PacketWriter};

/// One transmitted piece of a reliable message: a whole message or one fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnitRef {
    pub(crate) channel: u8,
    pub(crate) id: u16,
    pub(crate) fragment: u16,
}

/// Where a sent packet's units sit in the [`UnitLog`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UnitSpan {
    start: u32,
    len: u16,
}

impl UnitSpan {
    pub(crate) fn len(self) -> u16 {
        self.len
    }
}

/// Reliable units in flight at most (see [`UnitLog`]): four per packet of
/// the sent history, more than the three reliable windows of the game's
/// channels hold single-fragment messages.
pub(crate) const UNITS_IN_FLIGHT: usize = 4 * SENT_HISTORY;

/// Slots a reliable channel's window starts with, on both sides; they
/// double while more messages are in flight, up to the window.
pub(crate) const INITIAL_WINDOW_SLOTS: usize = 8;

/// Units a new connection's log starts with; it doubles as needed (the
/// game's connections rarely have more than a few reliable units in flight,
/// and a small ring keeps the lines it writes warm in the cache).
const INITIAL_UNITS: usize = 64;

/// The reliable units of the packets in flight, in send order, in one ring
/// that grows to at most [`UNITS_IN_FLIGHT`] units. Each sent packet
/// records the [`UnitSpan`] of its units; everything before the oldest
/// packet still in flight is released. A full ring at that size holds back
/// further reliable units until acks or losses release some, so a long
/// lossy session (where resends put more units in a packet now and then)
/// never grows this memory past it.
pub(crate) struct UnitLog {
    ring: Box<[UnitRef]>,
    /// Absolute index (wrapping) of the oldest unit kept.
    head: u32,
    /// Absolute index (wrapping) one past the newest unit.
    tail: u32,
}

impl UnitLog {
    pub(crate) fn new() -> Self {
        const {
            assert!(UNITS_IN_FLIGHT.is_power_of_two() && UNITS_IN_FLIGHT <= u16::MAX as usize);
            assert!(INITIAL_UNITS.is_power_of_two() && INITIAL_UNITS <= UNITS_IN_FLIGHT);
        }
        Self {
            ring: Self::filled(INITIAL_UNITS),
            head: 0,
            tail: 0,
        }
    }

    /// A ring of `len` slots, every one written now, with a filler that is
    /// not all zeros: a zero filler lets the compiler ask the allocator for
    /// zeroed memory instead, whose pages join the resident set only as the
    /// ring first wraps, minutes into a session, which reads as a leak in a
    /// soak.
    fn filled(len: usize) -> Box<[UnitRef]> {
        let empty = UnitRef {
            channel: u8::MAX,
            id: 0,
            fragment: 0,
        };
        vec![empty; len].into_boxed_slice()
    }

    /// Whether another unit can be pushed, doubling a full ring that may
    /// still grow.
    fn make_room(&mut self) -> bool {
        if !self.is_full() {
            return true;
        }
        let len = self.ring.len();
        if len >= UNITS_IN_FLIGHT {
            return false;
        }
        // Absolute indices stay as they are; only their slots move.
        let mut larger = Self::filled(2 * len);
        let mut index = self.head;
        while index != self.tail {
            larger[index as usize & (2 * len - 1)] = self.ring[index as usize & (len - 1)];
            index = index.wrapping_add(1);
        }
        self.ring = larger;
        true
    }

    fn is_full(&self) -> bool {
        self.tail.wrapping_sub(self.head) as usize == self.ring.len()
    }

    /// Full at its largest: no reliable unit goes out until acks or
    /// losses release some.
    pub(crate) fn is_exhausted(&self) -> bool {
        self.is_full() && self.ring.len() >= UNITS_IN_FLIGHT
    }

    fn push(&mut self, unit: UnitRef) {
        debug_assert!(!self.is_full());
        let mask = self.ring.len() - 1;
        self.ring[self.tail as usize & mask] = unit;
        self.tail = self.tail.wrapping_add(1);
    }

    /// Where the next packet's units will start.
    pub(crate) fn tail(&self) -> u32 {
        self.tail
    }

    /// The units pushed since `start` (a [`tail`](Self::tail) taken before).
    pub(crate) fn span_since(&self, start: u32) -> UnitSpan {
        UnitSpan {
            start,
            len: self.tail.wrapping_sub(start) as u16,
        }
    }

    /// Unit `i` of `span`, which must not have been released.
    pub(crate) fn get(&self, span: UnitSpan, i: u16) -> UnitRef {
        let mask = self.ring.len() - 1;
        self.ring[span.start.wrapping_add(u32::from(i)) as usize & mask]
    }

    /// Releases every unit before `span` (the oldest packet in flight).
    pub(crate) fn release_before(&mut self, span: UnitSpan) {
        self.head = span.start;
    }

    /// Releases every unit (no packet in flight).
    pub(crate) fn release_all(&mut self) {
        self.head = self.tail;
    }
}

/// What packing needs from the connection to write units.
pub(crate) struct PackContext<'a> {
    pub(crate) now: Stamp,
    pub(crate) sequence: u16,
    pub(crate) fragment_size: usize,
    pub(crate) units: &'a mut UnitLog,
}

/// A reliable message outlived `reliable_timeout` without an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReliableTimedOut;

/// Each channel starts a cache line (the connection keeps them in one
/// array), so an unreliable channel's send state is one line, not two or
/// three that it happens to straddle.
#[repr(align(64))]
pub(crate) enum SendChannel {
    Unreliable(UnreliableSend),
    Reliable(ReliableSend),
}

impl SendChannel {
    pub(crate) fn new(config: &ChannelConfig, window: u16) -> Self {
        if config.kind.is_reliable() {
            Self::Reliable(ReliableSend::new(window, config.max_queued_bytes))
        } else {
            Self::Unreliable(UnreliableSend::new(
                config.kind == ChannelKind::UnreliableSequenced,
                config.max_queued_bytes,
            ))
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        match self {
            Self::Unreliable(c) => !c.queue.is_empty(),
            Self::Reliable(c) => !c.ready.is_empty(),
        }
    }

    /// Asks the CPU for the queue entry the next packing reads first (see
    /// [`crate::prefetch`]).
    pub(crate) fn prefetch_next(&self) {
        match self {
            Self::Unreliable(c) => {
                if let Some(next) = c.queue.front() {
                    prefetch(next);
                }
            }
            Self::Reliable(c) => {
                if let Some(next) = c.ready.front() {
                    prefetch(next);
                }
            }
        }
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        match self {
            Self::Unreliable(c) => c.queued_bytes,
            Self::Reliable(c) => c.queued_bytes,
        }
    }
}

struct PendingUnreliable {
    /// When the message was first up for sending (the first
    /// [`UnreliableSend::shed_stale`] after it was queued): `None` before.
    /// Counted from then, not from its queueing, whose stamp is the
    /// connection's last call (long ago on an idle connection).
    up_since: Option<Stamp>,
    payload: Bytes,
    id: Option<u16>,
    fragment_count: u16,
    next_fragment: u16,
}

/// Unreliable and unreliable-sequenced channels: sent once, never resent.
pub(crate) struct UnreliableSend {
    sequenced: bool,
    queue: VecDeque<PendingUnreliable>,
    queued_bytes: usize,
    max_queued_bytes: usize,
    next_id: u16,
    /// Messages dropped because the queue overflowed or the budget was short.
    pub(crate) dropped: u64,
}

impl UnreliableSend {
    fn new(sequenced: bool, max_queued_bytes: usize) -> Self {
        Self {
            sequenced,
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_queued_bytes,
            next_id: 0,
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, payload: Bytes, fragment_size: usize) {
        let fragment_count = payload.len().div_ceil(fragment_size).max(1) as u16;
        if self.sequenced {
            // Only the newest message of a sequenced channel matters: older
            // ones still waiting (untouched by a partial send) are obsolete.
            while self.queue.back().is_some_and(|m| m.next_fragment == 0) {
                if let Some(old) = self.queue.pop_back() {
                    self.queued_bytes -= old.payload.len();
                    self.dropped += 1;
                }
            }
        }
        let id = (self.sequenced || fragment_count > 1).then(|| {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            id
        });
        self.queued_bytes += payload.len();
        self.queue.push_back(PendingUnreliable {
            up_since: None,
            payload,
            id,
            fragment_count,
            next_fragment: 0,
        });
        // Over the bound, the oldest messages not begun go (this one too,
        // if it is the only one): what a begun one sent is wasted without
        // the rest.
        let begun = self.begun();
        while self.queued_bytes > self.max_queued_bytes {
            let Some(old) = self.queue.remove(begun) else {
                break;
            };
            self.queued_bytes -= old.payload.len();
            self.dropped += 1;
        }
    }

    /// 1 when the front message is partly sent, else 0: the index of the
    /// first message not begun.
    fn begun(&self) -> usize {
        usize::from(self.queue.front().is_some_and(|m| m.next_fragment > 0))
    }

    /// Drops messages that waited longer than `ttl` for send budget, the
    /// wait counted from the first call that saw them. A message partly
    /// sent is finished (the budget its first fragments spent is wasted
    /// without the rest) unless it has been up for `fragment_timeout`, by
    /// when the receiver has thrown its first fragments away.
    pub(crate) fn shed_stale(&mut self, now: Stamp, ttl: Duration, fragment_timeout: Duration) {
        // Messages queued since the last call: a suffix of the queue.
        for waiting in self.queue.iter_mut().rev() {
            if waiting.up_since.is_some() {
                break;
            }
            waiting.up_since = Some(now);
        }
        let up_for = |m: &PendingUnreliable, limit: Duration| {
            m.up_since
                .is_none_or(|since| now.saturating_duration_since(since) >= limit)
        };
        let mut begun = self.begun();
        if begun == 1
            && self
                .queue
                .front()
                .is_some_and(|m| up_for(m, fragment_timeout))
        {
            if let Some(old) = self.queue.pop_front() {
                self.queued_bytes -= old.payload.len();
                self.dropped += 1;
            }
            begun = 0;
        }
        while let Some(next) = self.queue.get(begun) {
            if !up_for(next, ttl) {
                return;
            }
            if let Some(old) = self.queue.remove(begun) {
                self.queued_bytes -= old.payload.len();
                self.dropped += 1;
            }
        }
    }

    /// Writes what fits; returns whether anything was written.
    pub(crate) fn pack(
        &mut self,
        channel: u8,
        writer: &mut PacketWriter<'_>,
        fragment_size: usize,
    ) -> bool {
        let mut wrote = false;
        while let Some(front) = self.queue.front_mut() {
            let (header, payload) = if front.fragment_count > 1 {
                let start = usize::from(front.next_fragment) * fragment_size;
                let end = (start + fragment_size).min(front.payload.len());
                (
                    MessageHeader {
                        channel,
                        id: front.id,
                        fragment: Some(FragmentInfo {
                            index: front.next_fragment,
                            count: front.fragment_count,
                        }),
                    },
                    &front.payload[start..end],
                )
            } else {
                (
                    MessageHeader {
                        channel,
                        id: front.id,
                        fragment: None,
                    },
                    &front.payload[..],
                )
            };
            if !writer.write_message(&header, payload) {
                break;
            }
            wrote = true;
            front.next_fragment += 1;
            if front.next_fragment >= front.fragment_count {
                self.queued_bytes -= front.payload.len();
                self.queue.pop_front();
            }
        }
        wrote
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct FragmentState {
    acked: bool,
    queued: bool,
    attempts: u8,
    last_sequence: Option<u16>,
    first_sent: Option<Stamp>,
}

#[derive(Default)]
struct SendSlot {
    in_use: bool,
    id: u16,
    payload: Bytes,
    fragment_count: u16,
    unacked: u16,
    /// Inline for the common one-fragment message, so a slot's first use
    /// allocates nothing and the window's memory is fixed at connect time.
    fragments: SmallVec<[FragmentState; 1]>,
}

/// Reliable channels: a window of messages in flight, resent until acked.
pub(crate) struct ReliableSend {
    window: u16,
    /// The messages of the window by id: as many slots as have been in
    /// flight at once (rounded up to a power of two), not the whole window.
    slots: IdSlots<SendSlot>,
    next_id: u16,
    oldest_unacked: u16,
    pending: VecDeque<Bytes>,
    /// Units to send, `(id, fragment)`, oldest id first: those judged lost
    /// go back in their place, ahead of the newer ones never sent.
    ready: VecDeque<(u16, u16)>,
    queued_bytes: usize,
    max_queued_bytes: usize,
    /// Units transmitted again after being judged lost.
    pub(crate) resent: u64,
    /// Data packets in a row that had this channel waiting and carried
    /// nothing of it (see [`STARVED_AFTER`]).
    passed_over: u8,
}

/// A reliable channel passed over by this many data packets in a row (the
/// channels before it filled them) goes first in the next one: priority
/// delays it but never starves it.
pub(crate) const STARVED_AFTER: u8 = 4;

impl ReliableSend {
    fn new(window: u16, max_queued_bytes: usize) -> Self {
        Self {
            window,
            slots: IdSlots::new(INITIAL_WINDOW_SLOTS.min(usize::from(window))),
            next_id: 0,
            oldest_unacked: 0,
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            queued_bytes: 0,
            max_queued_bytes,
            resent: 0,
            passed_over: 0,
        }
    }

    /// Whether the last [`STARVED_AFTER`] data packets passed this channel
    /// over.
    pub(crate) fn is_starved(&self) -> bool {
        self.passed_over >= STARVED_AFTER
    }

    /// Whether `bytes` more would stay within the queue bound.
    pub(crate) fn has_room(&self, bytes: usize) -> bool {
        self.queued_bytes + bytes <= self.max_queued_bytes
    }

    /// The queue bound: a message longer never fits, however empty the
    /// queue.
    pub(crate) fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes
    }

    pub(crate) fn push(&mut self, payload: Bytes, fragment_size: usize) {
        self.queued_bytes += payload.len();
        // A message that waits for the window gets its own copy: the
        // payload may be a slice of a chunk its encoder shares with many
        // other messages, which a slow receiver's backlog would otherwise
        // keep alive for as long as it lasts (16 KiB for a 50-byte line),
        // far beyond the bytes this queue counts.
        let waits = !self.pending.is_empty()
            || seq_distance(self.next_id, self.oldest_unacked) >= self.window;
        let payload = if waits {
            Bytes::copy_from_slice(&payload)
        } else {
            payload
        };
        self.pending.push_back(payload);
        self.fill_window(fragment_size);
    }

    fn fill_window(&mut self, fragment_size: usize) {
        while seq_distance(self.next_id, self.oldest_unacked) < self.window {
            let Some(payload) = self.pending.pop_front() else {
                return;
            };
            let id = self.next_id;
            self.next_id = id.wrapping_add(1);
            let count = payload.len().div_ceil(fragment_size).max(1) as u16;
            self.slots
                .cover(self.oldest_unacked, seq_distance(id, self.oldest_unacked));
            let slot = self.slots.get_mut(id);
            slot.in_use = true;
            slot.id = id;
            slot.payload = payload;
            slot.fragment_count = count;
            slot.unacked = count;
            slot.fragments.clear();
            slot.fragments.resize(
                usize::from(count),
                FragmentState {
                    queued: true,
                    ..FragmentState::default()
                },
            );
            if slot.fragments.spilled() && count <= 1 {
                slot.fragments.shrink_to_fit();
            }
            self.ready.extend((0..count).map(|fragment| (id, fragment)));
        }
    }

    /// Writes ready units that fit; returns whether anything was written.
    pub(crate) fn pack(
        &mut self,
        channel: u8,
        writer: &mut PacketWriter<'_>,
        ctx: &mut PackContext<'_>,
    ) -> bool {
        let mut wrote = false;
        while let Some(&(id, fragment)) = self.ready.front() {
            if !ctx.units.make_room() {
                break;
            }
            let slot = self.slots.get_mut(id);
            let live = slot.in_use && slot.id == id;
            let Some(state) = slot
                .fragments
                .get_mut(usize::from(fragment))
                .filter(|s| live && !s.acked)
            else {
                self.ready.pop_front();
                continue;
            };
            let (fragment_info, payload) = if slot.fragment_count > 1 {
                let start = usize::from(fragment) * ctx.fragment_size;
                let end = (start + ctx.fragment_size).min(slot.payload.len());
                (
                    Some(FragmentInfo {
                        index: fragment,
                        count: slot.fragment_count,
                    }),
                    &slot.payload[start..end],
                )
            } else {
                (None, &slot.payload[..])
            };
            let header = MessageHeader {
                channel,
                id: Some(id),
                fragment: fragment_info,
            };
            if !writer.write_message(&header, payload) {
                break;
            }
            wrote = true;
            if state.last_sequence.is_some() {
                self.resent += 1;
            }
            state.queued = false;
            state.last_sequence = Some(ctx.sequence);
            state.first_sent.get_or_insert(ctx.now);
            ctx.units.push(UnitRef {
                channel,
                id,
                fragment,
            });
            self.ready.pop_front();
        }
        self.passed_over = if wrote {
            0
        } else {
            self.passed_over.saturating_add(1)
        };
        wrote
    }

    /// Transmission count so far of a unit (for the packet's backoff).
    pub(crate) fn attempts(&self, id: u16, fragment: u16) -> u8 {
        let slot = self.slots.get(id);
        slot.fragments
            .get(usize::from(fragment))
            .map_or(0, |s| s.attempts)
    }

    /// A packet carrying this unit was acknowledged; returns the bytes
    /// this frees (its message's, once every fragment is acknowledged).
    pub(crate) fn on_acked(&mut self, id: u16, fragment: u16, fragment_size: usize) -> usize {
        let slot = self.slots.get_mut(id);
        if !slot.in_use || slot.id != id {
            return 0;
        }
        let Some(state) = slot.fragments.get_mut(usize::from(fragment)) else {
            return 0;
        };
        if state.acked {
            return 0;
        }
        state.acked = true;
        slot.unacked -= 1;
        if slot.unacked > 0 {
            return 0;
        }
        slot.in_use = false;
        let freed = slot.payload.len();
        self.queued_bytes -= freed;
        slot.payload = Bytes::new();
        while self.oldest_unacked != self.next_id {
            let oldest = self.slots.get(self.oldest_unacked);
            if oldest.in_use && oldest.id == self.oldest_unacked {
                break;
            }
            self.oldest_unacked = self.oldest_unacked.wrapping_add(1);
        }
        self.fill_window(fragment_size);
        freed
    }

    /// The packet last carrying this unit (`sequence`) was judged lost:
    /// queue the unit for resending, first in line.
    pub(crate) fn on_lost(
        &mut self,
        id: u16,
        fragment: u16,
        sequence: u16,
        now: Stamp,
        reliable_timeout: Duration,
    ) -> Result<(), ReliableTimedOut> {
        let slot = self.slots.get_mut(id);
        if !slot.in_use || slot.id != id {
            return Ok(());
        }
        let Some(state) = slot.fragments.get_mut(usize::from(fragment)) else {
            return Ok(());
        };
        if state.acked || state.queued || state.last_sequence != Some(sequence) {
            return Ok(());
        }
        if let Some(first) = state.first_sent
            && now.saturating_duration_since(first) >= reliable_timeout
        {
            return Err(ReliableTimedOut);
        }
        state.attempts = state.attempts.saturating_add(1);
        state.queued = true;
        // Oldest first: the receiver of an ordered channel waits for the
        // oldest, and a unit put in front of those lost before it would
        // starve them while newer losses keep coming.
        let oldest = self.oldest_unacked;
        let age = |&(id, fragment): &(u16, u16)| (seq_distance(id, oldest), fragment);
        let key = age(&(id, fragment));
        let at = self.ready.partition_point(|unit| age(unit) < key);
        self.ready.insert(at, (id, fragment));
        Ok(())
    }

    /// Messages sent or queued but not yet fully acknowledged.
    pub(crate) fn unacked_messages(&self) -> usize {
        usize::from(seq_distance(self.next_id, self.oldest_unacked)) + self.pending.len()
    }
}

#[cfg(test)]
mod unreliable_tests {
    use super::*;
    use crate::transport::wire::{PACKET_HEADER_LEN, PacketHeader, PacketKind};

    const TTL: Duration = Duration::from_millis(100);
    const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(1);

    /// Packs into a packet with room for one fragment.
    fn pack_one(send: &mut UnreliableSend) -> bool {
        let mut buf = vec![0u8; PACKET_HEADER_LEN + 1024 + 16];
        let header = PacketHeader {
            kind: PacketKind::Data,
            ack_eliciting: true,
            sequence: 0,
            ack: None,
        };
        let Some(mut writer) = PacketWriter::new(&mut buf, &header) else {
            panic!("no room for a header");
        };
        send.pack(0, &mut writer, 1024)
    }

    /// A begun message outlives the TTL, but not the receiver's fragment
    /// timeout: past it, the fragments already sent were thrown away and
    /// the rest would only begin a reassembly that never completes.
    #[test]
    fn a_begun_message_is_shed_once_the_receiver_gave_it_up() {
        let mut send = UnreliableSend::new(false, 1 << 20);
        send.push(Bytes::from(vec![1u8; 3 * 1024]), 1024);
        let start = Stamp::ZERO;
        send.shed_stale(start, TTL, FRAGMENT_TIMEOUT);
        assert!(pack_one(&mut send));
        send.shed_stale(start + Duration::from_millis(500), TTL, FRAGMENT_TIMEOUT);
        assert_eq!(
            (send.queue.len(), send.dropped),
            (1, 0),
            "kept past the TTL"
        );
        send.shed_stale(start + FRAGMENT_TIMEOUT, TTL, FRAGMENT_TIMEOUT);
        assert_eq!((send.queue.len(), send.dropped), (0, 1));
        assert_eq!(send.queued_bytes, 0);
    }

    /// At its bound, a channel drops the oldest messages not begun (the
    /// newest included), not the one it is sending.
    #[test]
    fn a_full_channel_keeps_the_message_it_is_sending() {
        let mut send = UnreliableSend::new(true, 4 * 1024);
        send.push(Bytes::from(vec![1u8; 3 * 1024]), 1024);
        send.shed_stale(Stamp::ZERO, TTL, FRAGMENT_TIMEOUT);
        assert!(pack_one(&mut send));
        send.push(Bytes::from(vec![2u8; 3 * 1024]), 1024);
        assert_eq!(send.queue.len(), 1);
        assert_eq!(send.queue[0].next_fragment, 1, "the begun one stays");
        assert_eq!(send.dropped, 1);
        assert!(pack_one(&mut send) && pack_one(&mut send));
        assert!(send.queue.is_empty());
    }
}

#[cfg(test)]
mod unit_log_tests {
    use super::*;

    fn unit(n: u32) -> UnitRef {
        UnitRef {
            channel: (n % 7) as u8,
            id: n as u16,
            fragment: (n / 7) as u16,
        }
    }

    #[test]
    fn a_unit_log_grows_keeping_its_units_and_stops_at_its_bound() {
        let mut log = UnitLog::new();
        // Start near the wrap of the absolute indices, with one unit
        // released, so that the live units straddle both wraps.
        log.head = u32::MAX - 2;
        log.tail = log.head;
        assert!(log.make_room());
        log.push(unit(0));
        log.release_before(log.span_since(log.tail));
        let start = log.tail();
        let mut pushed = 0;
        while log.make_room() {
            log.push(unit(pushed));
            pushed += 1;
        }
        assert_eq!(pushed as usize, UNITS_IN_FLIGHT);
        assert_eq!(log.ring.len(), UNITS_IN_FLIGHT);
        let span = log.span_since(start);
        for i in 0..pushed {
            let i = i as u16;
            assert_eq!(log.get(span, i), unit(u32::from(i)));
        }
        // Releasing makes room again without growing.
        log.release_all();
        assert!(log.make_room());
        assert_eq!(log.ring.len(), UNITS_IN_FLIGHT);
    }
}

#[cfg(all(test, target_os = "linux"))]
#[expect(
    unsafe_code,
    reason = "page residency is only observable through sysconf and mincore"
)]
mod tests {
    use super::*;

    /// Pages lying wholly inside `len` bytes at `addr`, and how many of
    /// them are resident (faulted in).
    fn resident_pages(addr: usize, len: usize) -> (usize, usize) {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let start = addr.next_multiple_of(page);
        let pages = ((addr + len) / page * page).saturating_sub(start) / page;
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is page-aligned and lies inside a live
        // allocation; `vec` holds one byte per page.
        let rc = unsafe { libc::mincore(start as *mut _, pages * page, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        (vec.iter().filter(|&&b| b & 1 == 1).count(), pages)
    }

    #[test]
    fn a_message_waiting_for_the_window_holds_its_own_copy() {
        let chunk = Bytes::from(vec![7u8; 16 * 1024]);
        let in_chunk = |b: &Bytes| chunk.as_ptr_range().contains(&b.as_ptr());
        let mut send = ReliableSend::new(2, 1 << 20);
        for _ in 0..3 {
            send.push(chunk.slice(0..50), 1024);
        }
        assert_eq!(send.pending.len(), 1, "two in the window, one waits");
        assert!(!in_chunk(&send.pending[0]), "its own copy");
        assert_eq!(&send.pending[0][..], &chunk[..50]);
        let in_window = send.slots.get_mut(0).payload.clone();
        assert!(in_chunk(&in_window), "sent ones are not copied");
    }

    #[test]
    fn a_unit_log_commits_its_memory_when_made() {
        // Large enough for a mapping of its own, whose pages are resident
        // only once written.
        let ring = UnitLog::filled(1 << 15);
        let (resident, pages) = resident_pages(ring.as_ptr() as usize, size_of_val(&*ring));
        assert!(pages >= 32, "{pages} pages");
        assert_eq!(resident, pages, "{resident} of {pages} pages resident");
    }
}
