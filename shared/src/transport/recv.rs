//! Receive halves of the channels: ordering, de-duplication and reassembly.

use std::time::Duration;

use super::clock::Stamp;
use super::config::{ChannelId, ChannelKind};
use super::send::INITIAL_WINDOW_SLOTS;
use super::seq::{seq_distance, seq_newer};
use super::slots::IdSlots;
use super::wire::{FragmentInfo, MessageView};

/// Unreliable reassembly buffers (at most `max_unreliable_reassemblies`
/// per channel) above this capacity are released after use instead of kept
/// for reuse: kept buffers are not charged to the receive memory, so a
/// connection keeps at most this much per reassembly slot outside it.
/// Reliable slots never keep buffers: a window has up to 16,384 of them.
const KEEP_CAPACITY: usize = 4 * 1024;

/// Receive-side memory of one connection: out-of-order messages and
/// reassembly buffers, charged against `max_receive_buffer`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvMemory {
    pub(crate) used: usize,
    pub(crate) cap: usize,
}

/// A message the peer could not legally have sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// Header fields that do not match the channel kind.
    BadHeader,
    /// A reliable id beyond the receive window.
    BeyondWindow,
    /// A fragment count claiming more than `max_message_size`, or a
    /// fragment of the wrong size.
    BadFragment,
    /// A whole (unfragmented) message longer than `max_message_size`.
    TooLong,
}

/// Limits every receive channel applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvLimits {
    pub(crate) fragment_size: usize,
    pub(crate) max_fragments: u16,
    /// The longest last fragment of a message of `max_fragments`
    /// fragments (the others are full): longer, it would take the message
    /// past `max_message_size`.
    pub(crate) max_last_fragment: u16,
    pub(crate) max_unreliable_reassemblies: usize,
    /// An incomplete unreliable message younger than this (µs) is not
    /// evicted for a newer one, which is dropped instead: each eviction
    /// begins a buffer of up to `max_message_size`, and a peer sending
    /// nothing but first fragments must not have one datagram cost that
    /// much work.
    pub(crate) min_eviction_age_us: u32,
}

impl RecvLimits {
    fn may_evict(&self, started: Option<Stamp>, now: Stamp) -> bool {
        started.is_none_or(|t| {
            now.saturating_duration_since(t)
                >= Duration::from_micros(u64::from(self.min_eviction_age_us))
        })
    }
}

impl RecvLimits {
    fn check_fragment(&self, fragment: FragmentInfo, len: usize) -> Result<(), Violation> {
        let last = fragment.index + 1 == fragment.count;
        let size_ok = if last {
            (1..=self.fragment_size).contains(&len)
                && (fragment.count < self.max_fragments
                    || len <= usize::from(self.max_last_fragment))
        } else {
            len == self.fragment_size
        };
        if fragment.count > self.max_fragments || !size_ok {
            return Err(Violation::BadFragment);
        }
        Ok(())
    }

    /// `max_message_size`, from the limits kept.
    fn max_message_size(&self) -> usize {
        (usize::from(self.max_fragments) - 1) * self.fragment_size
            + usize::from(self.max_last_fragment)
    }
}

/// Collects the fragments of one message into a buffer sized from the
/// fragment count (bounded by `max_message_size`).
#[derive(Default)]
struct Reassembly {
    active: bool,
    id: u16,
    count: u16,
    received: u16,
    have: Vec<u64>,
    buf: Vec<u8>,
    len: usize,
    started: Option<Stamp>,
}

impl Reassembly {
    fn begin(&mut self, id: u16, count: u16, fragment_size: usize, now: Stamp) -> usize {
        let bytes = usize::from(count) * fragment_size;
        self.active = true;
        self.id = id;
        self.count = count;
        self.received = 0;
        self.have.clear();
        self.have.resize(usize::from(count).div_ceil(64), 0);
        self.buf.clear();
        self.buf.resize(bytes, 0);
        self.len = 0;
        self.started = Some(now);
        bytes
    }

    /// Stores one fragment; returns whether the message is now complete.
    fn insert(&mut self, fragment: FragmentInfo, payload: &[u8], fragment_size: usize) -> bool {
        let index = usize::from(fragment.index);
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let Some(w) = self.have.get_mut(word) else {
            return false;
        };
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        let start = index * fragment_size;
        if let Some(dst) = self.buf.get_mut(start..start + payload.len()) {
            dst.copy_from_slice(payload);
        }
        if fragment.index + 1 == fragment.count {
            self.len = start + payload.len();
        }
        self.received += 1;
        self.received == self.count
    }

    /// Ends the reassembly, keeping at most `keep` bytes of capacity for
    /// reuse; returns the bytes it was charged.
    fn finish(&mut self, keep: usize) -> usize {
        let charged = self.buf.len();
        self.active = false;
        self.buf.clear();
        if self.buf.capacity() > keep {
            self.buf = Vec::new();
            self.have = Vec::new();
        }
        charged
    }
}

/// Where a connection puts the messages a datagram completes, in delivery
/// order (see [`Connection::handle_datagram_into`](super::Connection::handle_datagram_into)).
pub trait Deliver {
    /// One whole message on `channel`; the slice lives only for the call.
    fn deliver(&mut self, channel: ChannelId, payload: &[u8]);
}

/// Each channel starts a cache line (the connection keeps them in one
/// array), so an unreliable channel's receive state is one line, not two or
/// three that it happens to straddle.
#[repr(align(64))]
pub(crate) enum RecvChannel {
    Unreliable(UnreliableRecv),
    Reliable(ReliableRecv),
}

impl RecvChannel {
    pub(crate) fn new(kind: ChannelKind, window: u16) -> Self {
        match kind {
            ChannelKind::Unreliable | ChannelKind::UnreliableSequenced => {
                Self::Unreliable(UnreliableRecv {
                    sequenced: kind == ChannelKind::UnreliableSequenced,
                    newest: None,
                    reassemblies: Vec::new(),
                    stale: 0,
                })
            }
            ChannelKind::ReliableOrdered | ChannelKind::ReliableUnordered => {
                Self::Reliable(ReliableRecv {
                    ordered: kind == ChannelKind::ReliableOrdered,
                    window,
                    base: 0,
                    slots: IdSlots::new(INITIAL_WINDOW_SLOTS.min(usize::from(window))),
                    duplicates: 0,
                })
            }
        }
    }

    /// First pass over a packet: legality and the receive memory this
    /// message would newly need if buffered.
    pub(crate) fn check(
        &self,
        view: &MessageView<'_>,
        limits: &RecvLimits,
    ) -> Result<usize, Violation> {
        match view.header.fragment {
            Some(fragment) => limits.check_fragment(fragment, view.payload.len())?,
            None if view.payload.len() > limits.max_message_size() => {
                return Err(Violation::TooLong);
            }
            None => {}
        }
        match self {
            Self::Unreliable(c) => {
                let needs_id = c.sequenced || view.header.fragment.is_some();
                if needs_id != view.header.id.is_some() {
                    return Err(Violation::BadHeader);
                }
                Ok(0)
            }
            Self::Reliable(c) => {
                let id = view.header.id.ok_or(Violation::BadHeader)?;
                c.memory_needed(
                    id,
                    view.header.fragment,
                    view.payload.len(),
                    limits.fragment_size,
                )
            }
        }
    }

    /// Second pass: applies a message that passed [`check`](Self::check).
    pub(crate) fn receive(
        &mut self,
        channel: u8,
        view: &MessageView<'_>,
        now: Stamp,
        limits: &RecvLimits,
        memory: &mut RecvMemory,
        out: &mut impl Deliver,
    ) {
        match self {
            Self::Unreliable(c) => c.receive(channel, view, now, limits, memory, out),
            Self::Reliable(c) => c.receive(channel, view, now, limits, memory, out),
        }
    }

    /// Whether the channel delivers every message (and so recognises
    /// duplicates by id).
    pub(crate) fn is_reliable(&self) -> bool {
        matches!(self, Self::Reliable(_))
    }

    /// Drops unreliable reassemblies older than the timeout.
    pub(crate) fn expire(&mut self, now: Stamp, timeout: Duration, memory: &mut RecvMemory) {
        if let Self::Unreliable(c) = self {
            for r in c.reassemblies.iter_mut().filter(|r| r.active) {
                if r.started
                    .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
                {
                    memory.used -= r.finish(KEEP_CAPACITY);
                }
            }
        }
    }

    /// Earliest unreliable reassembly expiry.
    pub(crate) fn next_expiry(&self, timeout: Duration) -> Option<Stamp> {
        match self {
            Self::Unreliable(c) => c
                .reassemblies
                .iter()
                .filter(|r| r.active)
                .filter_map(|r| r.started)
                .min()
                .map(|t| t + timeout),
            Self::Reliable(_) => None,
        }
    }

    /// Messages dropped as stale (sequenced) or duplicate (reliable).
    pub(crate) fn discarded(&self) -> u64 {
        match self {
            Self::Unreliable(c) => c.stale,
            Self::Reliable(c) => c.duplicates,
        }
    }
}

/// Unreliable and unreliable-sequenced receive state.
pub(crate) struct UnreliableRecv {
    sequenced: bool,
    newest: Option<u16>,
    reassemblies: Vec<Reassembly>,
    stale: u64,
}

impl UnreliableRecv {
    fn is_stale(&self, id: Option<u16>) -> bool {
        match (self.sequenced, id, self.newest) {
            (true, Some(id), Some(newest)) => !seq_newer(id, newest),
            _ => false,
        }
    }

    fn receive(
        &mut self,
        channel: u8,
        view: &MessageView<'_>,
        now: Stamp,
        limits: &RecvLimits,
        memory: &mut RecvMemory,
        out: &mut impl Deliver,
    ) {
        if self.is_stale(view.header.id) {
            self.stale += 1;
            return;
        }
        let Some(fragment) = view.header.fragment else {
            out.deliver(ChannelId(channel), view.payload);
            if self.sequenced
                && let Some(id) = view.header.id
            {
                self.advance(id, memory);
            }
            return;
        };
        let Some(id) = view.header.id else {
            return;
        };
        let slot = match self
            .reassemblies
            .iter()
            .position(|r| r.active && r.id == id)
        {
            Some(i) => i,
            None => {
                // A slot begins a message that needs a buffer of its own
                // (beyond the one kept) at most once per minimum age, and
                // evicts a younger message never: each such begin
                // allocates and zeroes up to `max_message_size`.
                let bytes = usize::from(fragment.count) * limits.fragment_size;
                // The free slot begun longest ago if it may take the
                // message, else a new one, else that free slot or the
                // oldest's, whose memory the new message may then use.
                let oldest = |free: bool| {
                    (0..self.reassemblies.len())
                        .filter(|&i| free != self.reassemblies[i].active)
                        .min_by_key(|&i| self.reassemblies[i].started)
                };
                let i = match oldest(true) {
                    Some(i)
                        if bytes <= KEEP_CAPACITY
                            || limits.may_evict(self.reassemblies[i].started, now) =>
                    {
                        i
                    }
                    _ if self.reassemblies.len() < limits.max_unreliable_reassemblies => {
                        self.reassemblies.push(Reassembly::default());
                        self.reassemblies.len() - 1
                    }
                    free => free.or_else(|| oldest(false)).unwrap_or(0),
                };
                let Some(evicted) = self.reassemblies.get_mut(i) else {
                    return;
                };
                if (evicted.active || bytes > KEEP_CAPACITY)
                    && !limits.may_evict(evicted.started, now)
                {
                    self.stale += 1;
                    return;
                }
                let freed = if evicted.active { evicted.buf.len() } else { 0 };
                if memory.used - freed + bytes > memory.cap {
                    self.stale += 1;
                    return;
                }
                memory.used -= evicted.finish(KEEP_CAPACITY);
                memory.used += evicted.begin(id, fragment.count, limits.fragment_size, now);
                i
            }
        };
        let stale = self.is_stale(Some(id));
        let r = &mut self.reassemblies[slot];
        if r.count != fragment.count {
            return;
        }
        if r.insert(fragment, view.payload, limits.fragment_size) {
            let len = r.len;
            if !stale {
                out.deliver(ChannelId(channel), &r.buf[..len]);
            } else {
                self.stale += 1;
            }
            memory.used -= r.finish(KEEP_CAPACITY);
            // A message that arrived whole was paid for with all its
            // fragments: its slot may begin the next one at once (the
            // minimum age is for messages that never complete).
            r.started = None;
            if !stale && self.sequenced {
                self.advance(id, memory);
            }
        }
    }

    /// A sequenced channel delivered `id`: the reassemblies of older
    /// messages can never be delivered, and free their memory.
    fn advance(&mut self, id: u16, memory: &mut RecvMemory) {
        self.newest = Some(id);
        for r in &mut self.reassemblies {
            if r.active && !seq_newer(r.id, id) {
                memory.used -= r.finish(KEEP_CAPACITY);
                self.stale += 1;
            }
        }
    }
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum SlotState {
    #[default]
    Empty,
    /// Fragments arriving.
    Partial,
    /// Whole, waiting for its turn (ordered channels).
    Complete,
    /// Already handed out (unordered channels).
    Delivered,
}

#[derive(Default)]
struct RecvSlot {
    state: SlotState,
    id: u16,
    message: Vec<u8>,
    /// Only while a fragmented message arrives: a window's slots stay small
    /// (a window may grow to 16,384 of them).
    reassembly: Option<Box<Reassembly>>,
}

/// Reliable receive state: a window of `window` ids starting at `base`,
/// the oldest id not yet delivered (ordered) or not yet received (unordered).
pub(crate) struct ReliableRecv {
    ordered: bool,
    window: u16,
    base: u16,
    /// The messages of the window by id: as many slots as ids from `base`
    /// have arrived (rounded up to a power of two), not the whole window.
    slots: IdSlots<RecvSlot>,
    duplicates: u64,
}

impl ReliableRecv {
    fn memory_needed(
        &self,
        id: u16,
        fragment: Option<FragmentInfo>,
        len: usize,
        fragment_size: usize,
    ) -> Result<usize, Violation> {
        let distance = seq_distance(id, self.base);
        if distance >= 0x8000 {
            return Ok(0); // already delivered: a duplicate
        }
        if distance >= self.window {
            return Err(Violation::BeyondWindow);
        }
        let slot = self.slots.get(id);
        if slot.state != SlotState::Empty && slot.id == id {
            // Fragments of one message all give the same count, and a
            // message arriving in fragments never arrives whole as well.
            if slot.state == SlotState::Partial
                && fragment
                    .is_none_or(|f| slot.reassembly.as_ref().is_none_or(|r| f.count != r.count))
            {
                return Err(Violation::BadFragment);
            }
            return Ok(0);
        }
        Ok(match fragment {
            // The message everything else waits for is never refused for
            // memory, so a full buffer cannot deadlock the channel.
            _ if distance == 0 => 0,
            Some(f) => usize::from(f.count) * fragment_size,
            None if self.ordered => len,
            None => 0,
        })
    }

    fn receive(
        &mut self,
        channel: u8,
        view: &MessageView<'_>,
        now: Stamp,
        limits: &RecvLimits,
        memory: &mut RecvMemory,
        out: &mut impl Deliver,
    ) {
        let Some(id) = view.header.id else {
            return;
        };
        let distance = seq_distance(id, self.base);
        if distance >= 0x8000 || distance >= self.window {
            self.duplicates += 1;
            return;
        }
        self.slots.cover(self.base, distance);
        let slot = self.slots.get_mut(id);
        if slot.state != SlotState::Empty
            && slot.id == id
            // A message whose fragments are arriving may take more of them,
            // nothing else: a whole copy in the same packet (which `check`
            // saw before this message's fragments had begun) is ignored.
            && (slot.state != SlotState::Partial || view.header.fragment.is_none())
        {
            self.duplicates += 1;
            return;
        }
        match view.header.fragment {
            None => {
                if self.ordered && distance != 0 {
                    slot.message.clear();
                    slot.message.extend_from_slice(view.payload);
                    memory.used += view.payload.len();
                    slot.id = id;
                    slot.state = SlotState::Complete;
                    return;
                }
                out.deliver(ChannelId(channel), view.payload);
            }
            Some(fragment) => {
                let reassembly = slot.reassembly.get_or_insert_with(Box::default);
                if slot.state == SlotState::Empty || slot.id != id {
                    slot.id = id;
                    slot.state = SlotState::Partial;
                    memory.used += reassembly.begin(id, fragment.count, limits.fragment_size, now);
                }
                // (A count that disagrees came in the same packet as the
                // first fragment, before `check` could compare them.)
                if reassembly.count != fragment.count
                    || !reassembly.insert(fragment, view.payload, limits.fragment_size)
                {
                    return;
                }
                if self.ordered && distance != 0 {
                    slot.state = SlotState::Complete;
                    return;
                }
                out.deliver(ChannelId(channel), &reassembly.buf[..reassembly.len]);
                memory.used -= reassembly.finish(0);
                slot.reassembly = None;
            }
        }
        if self.ordered {
            slot.state = SlotState::Empty;
            self.base = self.base.wrapping_add(1);
            self.drain_ordered(channel, memory, out);
        } else {
            slot.id = id;
            slot.state = SlotState::Delivered;
            self.advance_unordered();
        }
    }

    fn drain_ordered(&mut self, channel: u8, memory: &mut RecvMemory, out: &mut impl Deliver) {
        loop {
            let slot = self.slots.get_mut(self.base);
            if slot.state != SlotState::Complete || slot.id != self.base {
                return;
            }
            if let Some(mut reassembly) = slot.reassembly.take() {
                out.deliver(ChannelId(channel), &reassembly.buf[..reassembly.len]);
                memory.used -= reassembly.finish(0);
            } else {
                out.deliver(ChannelId(channel), &slot.message);
                memory.used -= slot.message.len();
                slot.message = Vec::new();
            }
            slot.state = SlotState::Empty;
            self.base = self.base.wrapping_add(1);
        }
    }

    fn advance_unordered(&mut self) {
        loop {
            let slot = self.slots.get_mut(self.base);
            if slot.state != SlotState::Delivered || slot.id != self.base {
                return;
            }
            slot.state = SlotState::Empty;
            self.base = self.base.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::wire::MessageHeader;

    struct Sink(Vec<Vec<u8>>);

    impl Deliver for Sink {
        fn deliver(&mut self, _channel: ChannelId, payload: &[u8]) {
            self.0.push(payload.to_vec());
        }
    }

    #[test]
    fn reliable_slots_keep_no_buffers_after_delivery() {
        let limits = RecvLimits {
            fragment_size: 1024,
            max_fragments: 256,
            max_last_fragment: 1024,
            max_unreliable_reassemblies: 4,
            min_eviction_age_us: 125_000,
        };
        let mut channel = RecvChannel::new(ChannelKind::ReliableOrdered, 64);
        let mut memory = RecvMemory {
            used: 0,
            cap: usize::MAX,
        };
        let mut sink = Sink(Vec::new());
        let now = Stamp::ZERO;
        let fragment = vec![7u8; 1024];
        // Messages 1..64 arrive whole (64 fragments each) before message 0,
        // so each is buffered out of order, then all are delivered.
        for id in (1..64u16).chain(0..1) {
            for index in 0..64u16 {
                let view = MessageView {
                    header: MessageHeader {
                        channel: 0,
                        id: Some(id),
                        fragment: Some(FragmentInfo { index, count: 64 }),
                    },
                    payload: &fragment,
                };
                assert_eq!(channel.check(&view, &limits).map(|_| ()), Ok(()));
                channel.receive(0, &view, now, &limits, &mut memory, &mut sink);
            }
        }
        assert_eq!(sink.0.len(), 64);
        assert_eq!(memory.used, 0);
        let RecvChannel::Reliable(reliable) = &channel else {
            panic!("reliable channel expected");
        };
        let retained: usize = reliable
            .slots
            .iter()
            .map(|s| s.message.capacity() + s.reassembly.as_ref().map_or(0, |r| r.buf.capacity()))
            .sum();
        assert_eq!(retained, 0, "delivered messages leave no buffers behind");
    }

    fn message(id: u16, fragment: Option<(u16, u16)>, payload: &[u8]) -> MessageView<'_> {
        MessageView {
            header: MessageHeader {
                channel: 0,
                id: Some(id),
                fragment: fragment.map(|(index, count)| FragmentInfo { index, count }),
            },
            payload,
        }
    }

    const LIMITS: RecvLimits = RecvLimits {
        fragment_size: 1024,
        max_fragments: 256,
        max_last_fragment: 1024,
        max_unreliable_reassemblies: 4,
        min_eviction_age_us: 125_000,
    };

    #[test]
    fn a_message_in_fragments_arriving_whole_as_well_is_a_violation() {
        let mut channel = RecvChannel::new(ChannelKind::ReliableOrdered, 64);
        let mut memory = RecvMemory {
            used: 0,
            cap: usize::MAX,
        };
        let mut sink = Sink(Vec::new());
        let part = [1u8; 1024];
        // Message 0 is the one the channel waits for, message 1 is buffered.
        for id in [0, 1] {
            let first = message(id, Some((0, 256)), &part);
            assert_eq!(channel.check(&first, &LIMITS).map(|_| ()), Ok(()));
            channel.receive(0, &first, Stamp::ZERO, &LIMITS, &mut memory, &mut sink);
            assert_eq!(
                channel.check(&message(id, None, b"whole"), &LIMITS),
                Err(Violation::BadFragment)
            );
            assert_eq!(
                channel.check(&message(id, Some((1, 2)), &part), &LIMITS),
                Err(Violation::BadFragment)
            );
        }
        assert!(sink.0.is_empty());
    }

    /// Within one packet `check` sees every message before any is applied,
    /// so a whole copy of a message whose first fragment is in the same
    /// packet passes it: applying it must neither deliver it nor leave
    /// the reassembly charged (before, the whole copy was delivered and
    /// the reassembly's charge, up to 256 KiB for one small datagram,
    /// was never released).
    #[test]
    fn a_whole_copy_beside_a_first_fragment_is_ignored() {
        for kind in [ChannelKind::ReliableOrdered, ChannelKind::ReliableUnordered] {
            let mut channel = RecvChannel::new(kind, 64);
            let mut memory = RecvMemory {
                used: 0,
                cap: usize::MAX,
            };
            let mut sink = Sink(Vec::new());
            let (head, tail) = ([1u8; 1024], [2u8; 10]);
            let mut apply = |view: MessageView<'_>| {
                channel.receive(0, &view, Stamp::ZERO, &LIMITS, &mut memory, &mut sink);
            };
            // Message 1 first (buffered on the ordered channel), then 0.
            for id in [1, 0] {
                apply(message(id, Some((0, 2)), &head));
                apply(message(id, None, b"whole"));
                apply(message(id, Some((1, 3)), &tail));
                apply(message(id, Some((1, 2)), &tail));
            }
            let whole: Vec<u8> = head.iter().chain(&tail).copied().collect();
            assert_eq!(sink.0, [whole.clone(), whole], "{kind:?}");
            assert_eq!(memory.used, 0, "{kind:?}");
        }
    }

    fn reassemblies(channel: &RecvChannel) -> &[Reassembly] {
        match channel {
            RecvChannel::Unreliable(c) => &c.reassemblies,
            RecvChannel::Reliable(_) => panic!("an unreliable channel expected"),
        }
    }

    /// The memory cap is full of the oldest reassemblies: a new message
    /// evicts the oldest (as `max_unreliable_reassemblies` says) instead
    /// of being refused until they time out.
    #[test]
    fn a_new_unreliable_message_evicts_the_oldest_even_when_memory_is_full() {
        let mut channel = RecvChannel::new(ChannelKind::Unreliable, 64);
        let mut memory = RecvMemory {
            used: 0,
            cap: 1 << 20,
        };
        let mut sink = Sink(Vec::new());
        let part = [5u8; 1024];
        for id in 0..4u16 {
            let first = message(id, Some((0, 256)), &part);
            channel.receive(0, &first, Stamp::ZERO, &LIMITS, &mut memory, &mut sink);
        }
        assert_eq!(memory.used, 1 << 20);
        let later = Stamp::ZERO + Duration::from_millis(200);
        for index in 0..256u16 {
            let view = message(4, Some((index, 256)), &part);
            channel.receive(0, &view, later, &LIMITS, &mut memory, &mut sink);
        }
        assert_eq!(sink.0.len(), 1, "the newest message was refused");
        assert_eq!(sink.0[0].len(), 256 * 1024);
        assert_eq!(memory.used, 3 << 18, "three old reassemblies left");
    }

    /// A slot freed young (a newer message made its message obsolete)
    /// may not begin a large buffer yet, but the slots never used may: the
    /// next large message is not refused while they are there.
    #[test]
    fn a_young_free_slot_does_not_refuse_a_large_message_while_unused_slots_remain() {
        let mut channel = RecvChannel::new(ChannelKind::UnreliableSequenced, 64);
        let mut memory = RecvMemory {
            used: 0,
            cap: 1 << 20,
        };
        let mut sink = Sink(Vec::new());
        let part = [3u8; 1024];
        let start = Stamp::ZERO;
        channel.receive(
            0,
            &message(1, Some((0, 8)), &part),
            start,
            &LIMITS,
            &mut memory,
            &mut sink,
        );
        channel.receive(
            0,
            &message(2, None, b"small"),
            start,
            &LIMITS,
            &mut memory,
            &mut sink,
        );
        let later = start + Duration::from_millis(1);
        for index in 0..8 {
            let view = message(3, Some((index, 8)), &part);
            channel.receive(0, &view, later, &LIMITS, &mut memory, &mut sink);
        }
        assert_eq!(sink.0.len(), 2, "message 3 was refused");
        assert_eq!(sink.0[1].len(), 8 * 1024);
        assert_eq!(channel.discarded(), 1, "only message 1, made obsolete");
    }

    /// On a sequenced channel a newer whole message frees the slots of
    /// older incomplete ones at once; a peer alternating first fragments
    /// of large messages with newer small ones still begins a large buffer
    /// at most once per slot and minimum age.
    #[test]
    fn large_messages_begin_at_most_once_per_slot_and_minimum_age() {
        let mut channel = RecvChannel::new(ChannelKind::UnreliableSequenced, 64);
        let mut memory = RecvMemory {
            used: 0,
            cap: 1 << 20,
        };
        let mut sink = Sink(Vec::new());
        let part = [9u8; 1024];
        let mut begun = 0;
        for k in 0..1_000u16 {
            let at = Stamp::ZERO + Duration::from_micros(u64::from(k));
            let before = memory.used;
            let first = message(2 * k, Some((0, 256)), &part);
            channel.receive(0, &first, at, &LIMITS, &mut memory, &mut sink);
            begun += usize::from(memory.used > before);
            let newer = message(2 * k + 1, None, b"m");
            channel.receive(0, &newer, at, &LIMITS, &mut memory, &mut sink);
        }
        assert_eq!(sink.0.len(), 1_000, "the small messages all arrive");
        assert!(begun <= 4, "{begun} buffers of 256 KiB begun within 1 ms");
        // Small fragmented messages reuse the kept buffers: not limited.
        let later = Stamp::ZERO + Duration::from_millis(1);
        for k in 0..100u16 {
            let id = 3_000 + 2 * k;
            for index in 0..2 {
                let part = message(id, Some((index, 2)), &[7u8; 1024]);
                channel.receive(0, &part, later, &LIMITS, &mut memory, &mut sink);
            }
        }
        assert_eq!(sink.0.len(), 1_100);
    }

    /// A peer sending nothing but first fragments of new messages: each
    /// eviction would begin a buffer of up to the largest message for one
    /// datagram, so the young ones are not evicted; the new ones are
    /// dropped instead.
    #[test]
    fn first_fragments_of_ever_new_messages_do_not_evict_young_ones() {
        let mut channel = RecvChannel::new(ChannelKind::Unreliable, 64);
        let mut memory = RecvMemory {
            used: 0,
            cap: usize::MAX,
        };
        let mut sink = Sink(Vec::new());
        let part = [8u8; 1024];
        for id in 0..1_000u16 {
            let at = Stamp::ZERO + Duration::from_micros(u64::from(id));
            let first = message(id, Some((0, 256)), &part);
            channel.receive(0, &first, at, &LIMITS, &mut memory, &mut sink);
        }
        let ids: Vec<u16> = reassemblies(&channel)
            .iter()
            .filter(|r| r.active)
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [0, 1, 2, 3], "the first four are kept");
        assert_eq!(channel.discarded(), 996);
    }

    /// On a sequenced channel a reassembly older than the newest message
    /// delivered can never be delivered: it frees its memory at once.
    #[test]
    fn sequenced_reassemblies_behind_the_newest_message_are_dropped() {
        let mut channel = RecvChannel::new(ChannelKind::UnreliableSequenced, 64);
        let mut memory = RecvMemory {
            used: 0,
            cap: usize::MAX,
        };
        let mut sink = Sink(Vec::new());
        let part = [6u8; 1024];
        for id in [1, 2] {
            let first = message(id, Some((0, 4)), &part);
            channel.receive(0, &first, Stamp::ZERO, &LIMITS, &mut memory, &mut sink);
        }
        channel.receive(
            0,
            &message(3, None, b"newer"),
            Stamp::ZERO,
            &LIMITS,
            &mut memory,
            &mut sink,
        );
        assert_eq!(sink.0, [b"newer".to_vec()]);
        assert_eq!(memory.used, 0);
        assert!(reassemblies(&channel).iter().all(|r| !r.active));
    }

    /// Buffers kept for reuse are not charged to the connection's memory,
    /// so they stay small: an attacker's many-fragment first fragments
    /// must not leave large buffers behind.
    #[test]
    fn unreliable_buffers_kept_for_reuse_stay_small() {
        let mut channel = RecvChannel::new(ChannelKind::Unreliable, 64);
        let mut memory = RecvMemory {
            used: 0,
            cap: usize::MAX,
        };
        let mut sink = Sink(Vec::new());
        let part = [7u8; 1024];
        for id in 0..4u16 {
            let first = message(id, Some((0, 64)), &part);
            channel.receive(0, &first, Stamp::ZERO, &LIMITS, &mut memory, &mut sink);
        }
        channel.expire(
            Stamp::ZERO + Duration::from_secs(10),
            Duration::from_secs(1),
            &mut memory,
        );
        assert_eq!(memory.used, 0);
        let kept: usize = reassemblies(&channel)
            .iter()
            .map(|r| r.buf.capacity() + 8 * r.have.capacity())
            .sum();
        assert!(kept <= 4 * (4 * 1024 + 64), "{kept} bytes kept, uncharged");
    }
}
