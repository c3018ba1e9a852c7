//! One reliable-UDP connection between two peers, as a sans-IO state machine.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use crate::prefetch::{prefetch, prefetch_bytes};

use super::clock::{Clock, Stamp};
use super::config::{ChannelConfig, ChannelId, ConfigError, TransportConfig};
use super::congestion::SendBudget;
use super::recv::{Deliver, RecvChannel, RecvLimits, RecvMemory, Violation};
use super::rtt::RttEstimator;
use super::send::{PackContext, ReliableTimedOut, SendChannel, UnitLog};
use super::sent::{INITIAL_SENT_SLOTS, SENT_HISTORY, SentPacket, SentRing};
use super::seq::{seq_distance, seq_newer};
use super::wire::{
    self, ACK_DELAY_UNIT_MICROS, AckInfo, MessageIter, PacketHeader, PacketKind, PacketWriter,
};

/// A packet is lost once a packet sent this many sequence numbers later is acked.
const PACKET_REORDER_THRESHOLD: u16 = 3;
/// Delivered-message arena capacity kept between drains.
const INBOX_KEEP_CAPACITY: usize = 64 * 1024;

/// Sequences from the oldest packet in flight to the newest sent, at most.
/// Past the history's length only by bare acks, which take no slot; the
/// bound keeps every sequence in flight within half the sequence space of
/// the newest, where comparing them holds (a peer sending ack-eliciting
/// packets faster than the loss timer runs could otherwise carry the
/// numbers round): past it, the oldest packet counts as lost.
const MAX_IN_FLIGHT_SPAN: usize = 2 * SENT_HISTORY;

/// Bare acks sent while the history was full whose send times are kept:
/// more than a round trip's worth (the peer's ack names one sent about a
/// round trip before it arrives, and a streaming peer is acked more often
/// than that).
const UNSLOTTED_ACKS: usize = 16;

/// The send times of the newest [`UNSLOTTED_ACKS`] bare acks that took no
/// slot of the sent history.
#[derive(Debug)]
struct UnslottedAcks {
    /// Sequence and send time; [`Stamp::NEVER`] for none yet.
    entries: [(u16, Stamp); UNSLOTTED_ACKS],
    /// Where the next goes.
    next: usize,
}

impl Default for UnslottedAcks {
    fn default() -> Self {
        Self {
            entries: [(0, Stamp::NEVER); UNSLOTTED_ACKS],
            next: 0,
        }
    }
}

impl UnslottedAcks {
    fn push(&mut self, sequence: u16, sent_at: Stamp) {
        self.entries[self.next] = (sequence, sent_at);
        self.next = (self.next + 1) % UNSLOTTED_ACKS;
    }

    /// When bare ack `sequence` was sent, the newest first (a sequence
    /// number comes round again).
    fn sent_at(&self, sequence: u16) -> Option<Stamp> {
        (1..=UNSLOTTED_ACKS)
            .map(|back| self.entries[(self.next + UNSLOTTED_ACKS - back) % UNSLOTTED_ACKS])
            .find(|&(s, at)| s == sequence && at != Stamp::NEVER)
            .map(|(_, at)| at)
    }
}

/// Why a connection ended. The code travels in disconnect packets, so both
/// sides can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// Nothing heard from the peer for `idle_timeout`, or a reliable
    /// message went unacknowledged for `reliable_timeout`.
    Timeout,
    /// The peer (or the local application) closed the connection normally.
    Closed,
    /// The server is shutting down.
    ServerShutdown,
    /// An operator or the game removed this client.
    Kicked,
    /// The peer sent something the protocol forbids.
    ProtocolViolation,
    /// The peer did not take its reliable data fast enough and the send
    /// queue hit its bound.
    SendQueueFull,
    /// The peer sent more than the server accepts.
    Flooding,
    /// The server had no free slot (decided by the connection layer).
    ServerFull,
    /// The connect token had expired (decided by the connection layer).
    TokenExpired,
    /// The connect token was refused at connect (decided by the connection layer).
    InvalidToken,
    /// The server never completed the handshake: unreachable, or it
    /// silently refused the token (wrong key, protocol or address).
    ConnectTimeout,
    /// An application-defined reason; use codes from 64 up.
    Custom(u8),
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Self::Timeout => "connection timed out",
            Self::Closed => "connection closed",
            Self::ServerShutdown => "the server is shutting down",
            Self::Kicked => "kicked from the server",
            Self::ProtocolViolation => "protocol violation",
            Self::SendQueueFull => "too slow to receive data (send queue full)",
            Self::Flooding => "sending too much data",
            Self::ServerFull => "the server is full",
            Self::TokenExpired => "the connect token has expired",
            Self::InvalidToken => "the connect token is invalid",
            Self::ConnectTimeout => "the server did not answer the connection request",
            Self::Custom(code) => return write!(f, "disconnected by the game (code {code})"),
        };
        f.write_str(text)
    }
}

impl DisconnectReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Self::Timeout => 1,
            Self::Closed => 2,
            Self::ServerShutdown => 3,
            Self::Kicked => 4,
            Self::ProtocolViolation => 5,
            Self::SendQueueFull => 6,
            Self::Flooding => 7,
            Self::ServerFull => 8,
            Self::TokenExpired => 9,
            Self::InvalidToken => 10,
            Self::ConnectTimeout => 11,
            Self::Custom(code) => code,
        }
    }

    /// Reads a wire code; unknown codes become [`Custom`](Self::Custom).
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Timeout,
            2 => Self::Closed,
            3 => Self::ServerShutdown,
            4 => Self::Kicked,
            5 => Self::ProtocolViolation,
            6 => Self::SendQueueFull,
            7 => Self::Flooding,
            8 => Self::ServerFull,
            9 => Self::TokenExpired,
            10 => Self::InvalidToken,
            11 => Self::ConnectTimeout,
            other => Self::Custom(other),
        }
    }
}

/// What a connection reports to its owner, drained with [`Connection::poll_event`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message, borrowed until the next call on the connection.
    Message {
        /// The channel it arrived on.
        channel: ChannelId,
        /// Its bytes.
        payload: &'a [u8],
    },
    /// The connection ended; no more events follow.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// The peer said so (otherwise it was decided locally).
        by_peer: bool,
    },
}

/// Why [`Connection::send`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SendError {
    /// No such channel.
    #[error("channel {0} does not exist")]
    NoSuchChannel(u8),
    /// Larger than `max_message_size`, or than a reliable channel's
    /// `max_queued_bytes` (which it would never fit in).
    #[error("message of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// the message
        size: usize,
        /// the limit
        max: usize,
    },
    /// The reliable channel holds `max_queued_bytes` already; try later.
    #[error("the channel's send queue is full")]
    QueueFull,
    /// An empty message: it carries nothing, and the queue bounds, which
    /// count payload bytes, would never stop them.
    #[error("an empty message carries nothing")]
    Empty,
    /// The connection is closing or closed.
    #[error("the connection is closed")]
    Closed,
}

/// Per-connection counters and estimates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Round-trip time variance.
    pub rtt_variance: Duration,
    /// Fraction of packets lost, smoothed over roughly the last 64 packets (0..=1).
    pub packet_loss: f32,
    /// Datagrams written.
    pub packets_sent: u64,
    /// Datagrams accepted.
    pub packets_received: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Bytes accepted.
    pub bytes_received: u64,
    /// Packets judged lost.
    pub packets_lost: u64,
    /// Reliable messages (or fragments) transmitted again.
    pub resent: u64,
    /// Received packets that were duplicates.
    pub duplicate_packets: u64,
    /// Received packets too old to place in the ack window.
    pub stale_packets: u64,
    /// Received datagrams that did not parse.
    pub malformed_packets: u64,
    /// Received packets refused (unacknowledged) because the receive buffer was full.
    pub receive_buffer_drops: u64,
    /// Unreliable messages dropped before sending (queue bound or budget shed).
    pub unreliable_dropped: u64,
    /// Received messages discarded as duplicates or stale.
    pub discarded_messages: u64,
    /// Current send budget in bytes per second.
    pub send_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connected,
    /// A local disconnect: what was queued before it is still sent (and
    /// resent) until acknowledged or `Connection::finish_by`, then
    /// `Closing`.
    Finishing {
        reason: DisconnectReason,
    },
    Closing {
        remaining: u8,
        reason: DisconnectReason,
    },
    Closed,
}

/// The timers a connection runs; [`Connection::poll_timeout`] is the earliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Nothing received for `idle_timeout`.
    Idle,
    /// Silence long enough to send a keepalive.
    Keepalive,
    /// The oldest in-flight packet's retransmission deadline.
    Loss,
    /// A held acknowledgement must go out.
    Ack,
    /// The send budget refills enough for waiting data.
    Pacing,
    /// An unreliable reassembly expires.
    Fragments,
}

const TIMER_COUNT: usize = 6;

/// Each timer's deadline, [`Stamp::NEVER`] when it is not running.
struct TimerTable([Stamp; TIMER_COUNT]);

impl Default for TimerTable {
    fn default() -> Self {
        Self([Stamp::NEVER; TIMER_COUNT])
    }
}

impl TimerTable {
    fn set(&mut self, timer: Timer, at: Option<Stamp>) {
        self.0[timer as usize] = at.unwrap_or(Stamp::NEVER);
    }

    fn next(&self) -> Option<Stamp> {
        self.0
            .iter()
            .min()
            .copied()
            .filter(|&at| at != Stamp::NEVER)
    }

    fn expired(&self, timer: Timer, now: Stamp) -> bool {
        self.0[timer as usize] <= now
    }
}

/// Messages delivered and not yet polled, in one reusable byte arena.
#[derive(Default)]
struct Inbox {
    bytes: Vec<u8>,
    entries: VecDeque<InboxEntry>,
}

enum InboxEntry {
    Message {
        channel: u8,
        start: usize,
        len: usize,
    },
    Disconnected {
        reason: DisconnectReason,
        by_peer: bool,
    },
}

impl Deliver for Inbox {
    fn deliver(&mut self, ChannelId(channel): ChannelId, payload: &[u8]) {
        // Everything delivered before has been taken: start the arena over.
        // `poll_event` does so too, but only when called on an empty inbox,
        // which a caller that checks `has_events` first never does.
        if self.entries.is_empty() {
            self.bytes.clear();
            if self.bytes.capacity() > INBOX_KEEP_CAPACITY {
                self.bytes = Vec::new();
            }
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.entries.push_back(InboxEntry::Message {
            channel,
            start,
            len: payload.len(),
        });
    }
}

/// A reliable-UDP connection: channels, packing, fragmentation, acks,
/// RTT-based resends, a congestion-controlled send budget, keepalives and
/// timeouts. It never touches a socket or a clock: every call takes `now`.
///
/// # Driving it
///
/// - `handle_datagram(now, bytes)` for each datagram from the peer;
/// - `handle_timeout(now)` once `now` reaches [`poll_timeout`](Self::poll_timeout);
/// - then drain, in this order: [`poll_event`](Self::poll_event) until `None`
///   (messages and the disconnect), and
///   [`poll_transmit`](Self::poll_transmit) until `None`, sending each
///   datagram to the peer;
/// - finally sleep until [`poll_timeout`](Self::poll_timeout) or the next
///   datagram, whichever comes first.
///
/// [`send`](Self::send) may be called at any time; its data leaves on the
/// next `poll_transmit`.
///
/// The connection trusts the datagrams it is handed to come from its peer
/// (the secure layer below authenticates them); a datagram that does not
/// parse is counted and dropped, and a well-formed one that breaks the
/// protocol ends the connection with [`DisconnectReason::ProtocolViolation`].
#[repr(C, align(64))]
pub struct Connection {
    // Laid out as written (`repr(C)`), most used first: a server touches
    // each connection's state a few times per tick, every time after the
    // other clients' state pushed it out of the cache, so the cost is the
    // cache lines a call touches. `send_bytes` reads the first line only;
    // a datagram in or out, the first eight (everything up to `stats`).
    /// Shared by every connection of an endpoint: one copy in the cache.
    config: Arc<TransportConfig>,
    /// Turns the callers' `Instant`s into the stamps kept inside.
    clock: Clock,
    state: State,
    next_sequence: u16,
    /// No packet older than this sequence is in flight: the packets in
    /// flight are among `oldest_in_flight..next_sequence` (at most as many
    /// as `sent` holds), read from `sent`, whose slots for recent sequences
    /// sit side by side (no separate list to touch per ack).
    oldest_in_flight: u16,
    /// Bit `c`: send channel `c` has data waiting to be packed. Kept in
    /// step with the channels (checked against them in debug builds), so
    /// that timers and transmits touch only the channels with data, not
    /// every channel's state, which is cold in the cache between packets.
    pending_channels: u64,
    send: Box<[SendChannel]>,
    /// Reliable bytes queued or unacknowledged, every channel together
    /// (an endpoint's total send bound counts them).
    send_memory: usize,
    recv: Box<[RecvChannel]>,
    sent: SentRing,
    received_bits: u64,
    received_latest: Option<u16>,
    largest_acked: Option<u16>,
    /// Ack-eliciting packets received since the last ack was sent
    /// (duplicates too), counted up to 255: none, one or more is what
    /// matters.
    ack_eliciting_unacked: u8,
    /// Acknowledgements kept back in `older_acks`, owed a datagram each.
    older_acks_len: u8,
    /// The oldest of the `ack_eliciting_unacked` packets (meaningless
    /// while there are none).
    oldest_unreported: u16,
    /// `loss_at` must be recomputed from the packets in flight.
    loss_at_stale: bool,
    /// Data packets sent, wrapping: whose turn it is among channels of
    /// equal priority (see [`next_channel`]).
    data_turn: u8,
    /// The newest `latest` an ack has named: an ack naming an older one
    /// was overtaken on the way by one sent after it. Not reset when
    /// nothing is in flight, unlike `largest_acked`; compared by distance
    /// back from `next_sequence`, and only against packets still in `sent`,
    /// so one older than the history is older than them all. (It fits the
    /// padding before `ack_owed_since`: the hot state grows by nothing.)
    newest_ack_latest: u16,
    /// When the first of the `ack_eliciting_unacked` packets arrived: its
    /// ack is due `max_ack_delay` after, whatever arrives meanwhile.
    ack_owed_since: Stamp,
    last_received: Stamp,
    last_sent: Stamp,
    /// When `received_latest` arrived (meaningless while it is `None`).
    received_latest_at: Stamp,
    /// The earliest loss deadline of the packets in flight, kept so
    /// that re-arming the timers after each transmit is O(1) rather than a
    /// scan of every packet in flight. Exact after
    /// [`detect_losses`](Self::detect_losses); lowered by each new packet;
    /// `None` with `loss_at_stale` when only a rescan can tell. Too early is
    /// harmless (the loss timer fires, finds nothing, re-arms).
    loss_at: Option<Stamp>,
    memory: RecvMemory,
    limits: RecvLimits,
    timers: TimerTable,
    units: UnitLog,
    rtt: RttEstimator,
    budget: SendBudget,
    traffic: Traffic,
    inbox: Inbox,
    /// The counters that change rarely ([`Traffic`] has the others).
    stats: ConnectionStats,
    /// While finishing a disconnect: when it closes whatever is still
    /// unacknowledged.
    finish_by: Stamp,
    /// The newest bare acks sent while the history was full, which took
    /// no slot (see `transmit_connected`), for the round trip of an ack
    /// naming one as the peer's newest; made the first time.
    unslotted_acks: Option<Box<UnslottedAcks>>,
    /// The first `older_acks_len`, oldest first: acknowledgements of
    /// packets that later ones pushed out of reach of the next ack's
    /// bitmap before any ack named them (see `record_received`).
    older_acks: [OlderAck; OLDER_ACKS],
}

/// Acknowledgements a connection keeps back for datagrams of their own:
/// with the 64 packets an ack names behind its latest, four cover the
/// 256 datagrams a driver may hand over before it transmits again
/// (`MAX_READS_PER_PUMP` of `io::ClientSocket`).
const OLDER_ACKS: usize = 4;

/// An acknowledgement kept back: `AckInfo` less the delay, which is
/// counted when it is sent.
#[derive(Clone, Copy)]
struct OlderAck {
    latest: u16,
    bits: u64,
    /// When `latest` arrived.
    at: Stamp,
}

/// The counters every packet changes, kept with the rest of the hot state
/// (they go into [`ConnectionStats`]).
#[derive(Default)]
struct Traffic {
    packets_sent: u64,
    packets_received: u64,
    bytes_sent: u64,
    bytes_received: u64,
    /// See [`ConnectionStats::packet_loss`].
    packet_loss: f32,
}

/// At most this much of the receive channels' state is prefetched for a
/// datagram in: the game's six channels fit; a layout with many channels
/// gets its first ones.
const RECEIVE_PREFETCH_BYTES: usize = 8 * 64;

/// How long a packet that arrived at `at` waited until `now`, in the
/// acks' units.
fn ack_delay(now: Stamp, at: Stamp) -> u16 {
    let units = now.saturating_duration_since(at).as_micros() / u128::from(ACK_DELAY_UNIT_MICROS);
    u16::try_from(units).unwrap_or(u16::MAX)
}

/// The indices of the bits set in `mask`, lowest first.
fn channel_bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let index = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            index
        })
    })
}

/// Of the `waiting` channels, the one the data packet numbered `turn`
/// (counting data packets only) packs next: of those of the lowest
/// priority value, the packets take turns at which goes first. A fixed
/// order among equals would let the first starve the others (their resends
/// included) whenever it alone fills the send budget. Across priorities,
/// starved reliable channels are offered first (see `STARVED_AFTER`).
fn next_channel(channels: &[ChannelConfig], waiting: u64, turn: u8) -> Option<usize> {
    let priority = channel_bits(waiting).map(|c| channels[c].priority).min()?;
    let tied = channel_bits(waiting)
        .filter(|&c| channels[c].priority == priority)
        .fold(0u64, |mask, c| mask | 1 << c);
    if tied & (tied - 1) == 0 {
        // One channel of that priority (always, with distinct priorities).
        return Some(tied.trailing_zeros() as usize);
    }
    channel_bits(tied).nth(usize::from(turn) % tied.count_ones() as usize)
}

impl Connection {
    /// A connection that is established at `now` (the handshake is the
    /// secure layer's business). An endpoint passes every connection the
    /// same `Arc`, so they share one copy of the configuration.
    pub fn new(config: impl Into<Arc<TransportConfig>>, now: Instant) -> Result<Self, ConfigError> {
        let clock = Clock::new(now);
        Self::with_clock(config, clock, clock.stamp(now))
    }

    /// [`new`](Self::new) on a clock shared with other connections (an
    /// endpoint's), which then drives it with the `*_at` methods.
    pub(crate) fn with_clock(
        config: impl Into<Arc<TransportConfig>>,
        clock: Clock,
        now: Stamp,
    ) -> Result<Self, ConfigError> {
        let config: Arc<TransportConfig> = config.into();
        config.validate()?;
        let send = config
            .channels
            .iter()
            .map(|c| SendChannel::new(c, config.reliable_window))
            .collect();
        let recv = config
            .channels
            .iter()
            .map(|c| RecvChannel::new(c.kind, config.reliable_window))
            .collect();
        // In range: the config is checked (a fragment within a packet, a
        // message within 65,535 fragments).
        let max_fragments = config.max_message_size.div_ceil(config.fragment_size) as u16;
        let limits = RecvLimits {
            fragment_size: config.fragment_size,
            max_fragments,
            max_last_fragment: (config.max_message_size
                - (usize::from(max_fragments) - 1) * config.fragment_size)
                as u16,
            max_unreliable_reassemblies: config.max_unreliable_reassemblies,
            min_eviction_age_us: u32::try_from(
                (config.unreliable_fragment_timeout / 8).as_micros(),
            )
            .unwrap_or(u32::MAX),
        };
        let memory = RecvMemory {
            used: 0,
            cap: config.max_receive_buffer,
        };
        let sent = SentRing::new(INITIAL_SENT_SLOTS);
        let mut connection = Self {
            rtt: RttEstimator::new(),
            budget: SendBudget::new(config.initial_send_rate, &config.rate_bounds()),
            config,
            clock,
            state: State::Connected,
            send,
            send_memory: 0,
            recv,
            pending_channels: 0,
            limits,
            memory,
            next_sequence: 0,
            sent,
            units: UnitLog::new(),
            oldest_in_flight: 0,
            loss_at: None,
            loss_at_stale: false,
            data_turn: 0,
            // The one before the first packet: older than any packet sent.
            newest_ack_latest: u16::MAX,
            largest_acked: None,
            received_latest: None,
            received_bits: 0,
            oldest_unreported: 0,
            older_acks_len: 0,
            older_acks: [OlderAck {
                latest: 0,
                bits: 0,
                at: now,
            }; OLDER_ACKS],
            received_latest_at: now,
            ack_eliciting_unacked: 0,
            ack_owed_since: now,
            last_received: now,
            last_sent: now,
            timers: TimerTable::default(),
            traffic: Traffic::default(),
            inbox: Inbox::default(),
            stats: ConnectionStats::default(),
            finish_by: now,
            unslotted_acks: None,
        };
        connection.update_timers(now);
        Ok(connection)
    }

    /// Queues a message on `channel`, copying it once.
    pub fn send(&mut self, channel: ChannelId, payload: &[u8]) -> Result<(), SendError> {
        self.send_bytes(channel, Bytes::copy_from_slice(payload))
    }

    /// Queues a shared message: the same `Bytes` can go to many
    /// connections. It is copied only when it has to wait for a reliable
    /// channel's window (a slow receiver then never keeps a shared encoder
    /// chunk alive).
    pub fn send_bytes(&mut self, channel: ChannelId, payload: Bytes) -> Result<(), SendError> {
        if self.state != State::Connected {
            return Err(SendError::Closed);
        }
        if payload.is_empty() {
            return Err(SendError::Empty);
        }
        if payload.len() > self.config.max_message_size {
            return Err(SendError::TooLarge {
                size: payload.len(),
                max: self.config.max_message_size,
            });
        }
        let fragment_size = self.config.fragment_size;
        let index = usize::from(channel.0);
        match self.send.get_mut(index) {
            None => return Err(SendError::NoSuchChannel(channel.0)),
            Some(SendChannel::Unreliable(c)) => c.push(payload, fragment_size),
            Some(SendChannel::Reliable(c)) => {
                if !c.has_room(payload.len()) {
                    // Longer than the queue holds: no wait makes room.
                    if payload.len() > c.max_queued_bytes() {
                        return Err(SendError::TooLarge {
                            size: payload.len(),
                            max: c.max_queued_bytes(),
                        });
                    }
                    return Err(SendError::QueueFull);
                }
                self.send_memory += payload.len();
                c.push(payload, fragment_size);
            }
        }
        self.note_pending(index);
        Ok(())
    }

    /// Asks the CPU for this connection's per-packet lines (everything
    /// before `stats`): the first step of serving it after the other
    /// clients' turns pushed it out of the cache (see [`crate::prefetch`]).
    pub(crate) fn prefetch(&self) {
        prefetch_bytes(self, std::mem::offset_of!(Connection, stats));
    }

    /// The second step of a datagram in, once [`prefetch`](Self::prefetch)'s
    /// lines are in: the receive channels (their messages' checks and
    /// delivery) and the history slot of the newest packet sent (what its
    /// acknowledgement most likely acknowledges).
    pub(crate) fn prefetch_receive(&self) {
        prefetch_bytes(&*self.recv, RECEIVE_PREFETCH_BYTES);
        prefetch(self.sent.get(self.next_sequence.wrapping_sub(1)));
    }

    /// Asks for the line [`send_bytes`](Self::send_bytes) reads of the
    /// connection itself (see [`crate::prefetch`]);
    /// [`prefetch_send_channel`](Self::prefetch_send_channel) is the step
    /// after.
    pub(crate) fn prefetch_send(&self) {
        prefetch_bytes(self, 1);
    }

    /// The second step, once [`prefetch_send`](Self::prefetch_send)'s line
    /// is in: the state of the channel `send_bytes` queues on.
    pub(crate) fn prefetch_send_channel(&self, channel: ChannelId) {
        if let Some(state) = self.send.get(usize::from(channel.0)) {
            prefetch(state);
        }
    }

    /// The second step, once [`prefetch`](Self::prefetch)'s lines are in:
    /// the channels a transmit packs from and the history slot it records
    /// its packet in.
    pub(crate) fn prefetch_transmit(&self) {
        self.waiting_channels().for_each(prefetch);
        prefetch(self.sent.get(self.next_sequence));
    }

    /// The third step, once the channels are in: the messages a transmit
    /// packs first.
    pub(crate) fn prefetch_transmit_messages(&self) {
        self.waiting_channels().for_each(SendChannel::prefetch_next);
    }

    /// The send channels with data waiting.
    fn waiting_channels(&self) -> impl Iterator<Item = &SendChannel> {
        channel_bits(self.pending_channels).filter_map(|index| self.send.get(index))
    }

    /// Brings channel `index`'s bit of `pending_channels` in step with it
    /// (after anything that may have changed what it has ready).
    fn note_pending(&mut self, index: usize) {
        let bit = 1u64 << index;
        if self.send[index].has_pending() {
            self.pending_channels |= bit;
        } else {
            self.pending_channels &= !bit;
        }
    }

    /// Starts a graceful close: the messages queued before it are still
    /// sent, and resent until acknowledged, for at most
    /// [`close_linger`](TransportConfig::close_linger); then a few
    /// redundant disconnect packets carrying `reason` leave on the next
    /// `poll_transmit` calls, and the connection is closed. From the call
    /// on, nothing is delivered from the peer and nothing new can be sent.
    pub fn disconnect(&mut self, now: Instant, reason: DisconnectReason) {
        self.finish(self.clock.stamp(now), reason);
    }

    /// [`disconnect`](Self::disconnect) at a stamp of its clock.
    pub(crate) fn finish(&mut self, now: Stamp, reason: DisconnectReason) {
        if self.state != State::Connected {
            return;
        }
        self.state = State::Finishing { reason };
        self.finish_by = now + self.config.close_linger;
        self.discard_received();
        if !self.settle_finish(now) {
            self.update_timers(now);
        }
    }

    /// A connection finishing a [`disconnect`](Self::disconnect) stops
    /// waiting and starts closing with its reason (a server that must stop
    /// now); `true` if it was finishing.
    pub(crate) fn stop_finishing(&mut self, now: Stamp) -> bool {
        let State::Finishing { reason } = self.state else {
            return false;
        };
        self.close_gracefully(now, reason);
        true
    }

    /// A finishing connection whose queued messages are all acknowledged
    /// (or whose linger is over) starts closing; returns whether it did.
    fn settle_finish(&mut self, now: Stamp) -> bool {
        let State::Finishing { reason } = self.state else {
            return false;
        };
        let settled = self.pending_channels == 0
            && self.send.iter().all(|c| match c {
                SendChannel::Reliable(c) => c.unacked_messages() == 0,
                SendChannel::Unreliable(_) => true,
            });
        if settled || now >= self.finish_by {
            self.close_gracefully(now, reason);
            return true;
        }
        false
    }

    /// Connected or finishing a [`disconnect`](Self::disconnect): packets
    /// still flow both ways.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Connected | State::Finishing { .. })
    }

    /// Why the connection ends: the reason this side gave (a
    /// [`disconnect`](Self::disconnect), or an end it decided itself) from
    /// the moment it is given, or the one the peer's disconnect carried once
    /// it arrived, until its `Disconnected` event is taken. `None` while
    /// connected.
    pub(crate) fn end_reason(&self) -> Option<DisconnectReason> {
        match self.state {
            State::Connected => None,
            State::Finishing { reason } | State::Closing { reason, .. } => Some(reason),
            State::Closed => match self.inbox.entries.back() {
                Some(&InboxEntry::Disconnected { reason, .. }) => Some(reason),
                _ => None,
            },
        }
    }

    /// Starts closing at once: a few redundant disconnect packets carrying
    /// `reason` leave on the next `poll_transmit` calls, then the
    /// connection is closed. Queued data is discarded.
    pub(crate) fn close_gracefully(&mut self, now: Stamp, reason: DisconnectReason) {
        if !self.is_open() {
            return;
        }
        self.state = State::Closing {
            remaining: self.config.disconnect_packets.max(1),
            reason,
        };
        self.discard_received();
        self.inbox.entries.push_back(InboxEntry::Disconnected {
            reason,
            by_peer: false,
        });
        self.update_timers(now);
    }

    /// The connection has ended (nothing more will be sent or received).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The connection is established and not closing.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Counters and estimates.
    pub fn stats(&self) -> ConnectionStats {
        let mut stats = self.stats.clone();
        stats.packets_sent = self.traffic.packets_sent;
        stats.packets_received = self.traffic.packets_received;
        stats.bytes_sent = self.traffic.bytes_sent;
        stats.bytes_received = self.traffic.bytes_received;
        stats.packet_loss = self.traffic.packet_loss;
        stats.rtt = self.rtt.smoothed();
        stats.rtt_variance = self.rtt.variance();
        stats.send_rate = self.budget.rate();
        for channel in &self.send {
            match channel {
                SendChannel::Unreliable(c) => stats.unreliable_dropped += c.dropped,
                SendChannel::Reliable(c) => stats.resent += c.resent,
            }
        }
        stats.discarded_messages += self.recv.iter().map(RecvChannel::discarded).sum::<u64>();
        stats
    }

    /// Bytes queued or unacknowledged on `channel` (0 for an unknown channel).
    pub fn queued_bytes(&self, channel: ChannelId) -> usize {
        self.send
            .get(usize::from(channel.0))
            .map_or(0, SendChannel::queued_bytes)
    }

    /// Reliable messages queued or in flight on `channel`.
    pub fn unacked_messages(&self, channel: ChannelId) -> usize {
        match self.send.get(usize::from(channel.0)) {
            Some(SendChannel::Reliable(c)) => c.unacked_messages(),
            _ => 0,
        }
    }

    /// Reliable bytes queued or unacknowledged on every channel.
    pub fn send_buffered_bytes(&self) -> usize {
        self.send_memory
    }

    /// Receive-side bytes buffered (out-of-order messages and reassembly).
    pub fn receive_buffered_bytes(&self) -> usize {
        self.memory.used
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next().map(|at| self.clock.instant(at))
    }

    /// [`poll_timeout`](Self::poll_timeout) as a stamp of its clock.
    pub(crate) fn next_timeout(&self) -> Option<Stamp> {
        self.timers.next()
    }

    /// Whether [`poll_event`](Self::poll_event) has anything.
    pub fn has_events(&self) -> bool {
        !self.inbox.entries.is_empty()
    }

    /// Whether the next event is a message (so a caller can branch before
    /// borrowing it).
    pub fn next_event_is_message(&self) -> bool {
        matches!(self.inbox.entries.front(), Some(InboxEntry::Message { .. }))
    }

    /// Takes the next event. The payload of a message borrows the
    /// connection until the next call.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        let Some(entry) = self.inbox.entries.pop_front() else {
            self.inbox.bytes.clear();
            // One large message must not pin its size on the connection.
            if self.inbox.bytes.capacity() > INBOX_KEEP_CAPACITY {
                self.inbox.bytes = Vec::new();
            }
            return None;
        };
        Some(match entry {
            InboxEntry::Message {
                channel,
                start,
                len,
            } => Event::Message {
                channel: ChannelId(channel),
                payload: &self.inbox.bytes[start..start + len],
            },
            InboxEntry::Disconnected { reason, by_peer } => Event::Disconnected { reason, by_peer },
        })
    }

    fn close(&mut self, reason: DisconnectReason, by_peer: bool) {
        self.inbox
            .entries
            .push_back(InboxEntry::Disconnected { reason, by_peer });
        self.state = State::Closed;
        self.timers = TimerTable::default();
        self.discard_received();
    }

    /// Frees what a connection that delivers nothing more still held for
    /// later delivery (reassemblies, out-of-order messages): it would
    /// never be delivered, and an endpoint's total bound counts it. An
    /// endpoint calls it when the layer below ends the connection's path
    /// (no datagram comes in any more) while the transport is still open.
    pub(crate) fn discard_received(&mut self) {
        if self.memory.used == 0 {
            return;
        }
        let window = self.config.reliable_window;
        self.stats.discarded_messages += self.recv.iter().map(RecvChannel::discarded).sum::<u64>();
        self.recv = self
            .config
            .channels
            .iter()
            .map(|c| RecvChannel::new(c.kind, window))
            .collect();
        self.memory.used = 0;
    }

    /// Fails the connection locally: tells the peer why (best effort) and
    /// ends. One finishing a disconnect ends for the reason it was given,
    /// whatever else ends the wait (a timeout, the peer going silent too):
    /// that is why this side left.
    fn fail(&mut self, now: Stamp, reason: DisconnectReason) {
        let reason = match self.state {
            State::Finishing { reason } => reason,
            _ => reason,
        };
        self.close_gracefully(now, reason);
    }

    /// Feeds one datagram from the peer; the messages it completes wait
    /// for [`poll_event`](Self::poll_event).
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let mut inbox = std::mem::take(&mut self.inbox);
        self.datagram_at(self.clock.stamp(now), datagram, &mut inbox);
        // `close` may have queued a `Disconnected` meanwhile: after the messages.
        inbox.entries.append(&mut self.inbox.entries);
        self.inbox = inbox;
    }

    /// Feeds one datagram from the peer and hands the messages it completes
    /// straight to `out`, in delivery order, instead of keeping them for
    /// [`poll_event`](Self::poll_event) (which still reports the
    /// connection's end). An endpoint with many connections passes one
    /// buffer for all of them: a connection's own inbox is cold in the
    /// cache by the time its next datagram comes, a shared one is not.
    /// Use either this or [`handle_datagram`](Self::handle_datagram) on a
    /// connection, not both, or messages may be seen out of order.
    pub fn handle_datagram_into(&mut self, now: Instant, datagram: &[u8], out: &mut impl Deliver) {
        self.datagram_at(self.clock.stamp(now), datagram, out);
    }

    /// [`handle_datagram_into`](Self::handle_datagram_into) at a stamp of
    /// its clock.
    pub(crate) fn datagram_at(&mut self, now: Stamp, datagram: &[u8], out: &mut impl Deliver) {
        if self.state == State::Closed {
            return;
        }
        let Ok((header, body)) = wire::decode_header(datagram) else {
            self.stats.malformed_packets += 1;
            return;
        };
        if header.kind == PacketKind::Disconnect {
            if let Some(&code) = body.first()
                && self.is_open()
            {
                // A connection finishing for a reason this side gave ends
                // for it, decided here, whatever else ends the wait (the
                // peer's goodbye crossing it, too).
                match self.state {
                    State::Finishing { reason } => self.close(reason, false),
                    _ => self.close(DisconnectReason::from_code(code), true),
                }
            }
            return;
        }
        if !self.is_open() {
            return;
        }
        if let Some(latest) = self.received_latest {
            if header.sequence == latest {
                self.on_duplicate(header.ack_eliciting, now);
                return;
            }
            if !seq_newer(header.sequence, latest) {
                let back = seq_distance(latest, header.sequence);
                if back > 64 {
                    self.stats.stale_packets += 1;
                    return;
                }
                if self.received_bits & (1 << (back - 1)) != 0 {
                    self.on_duplicate(header.ack_eliciting, now);
                    return;
                }
            }
        }
        if self.state != State::Connected {
            // Finishing: its acks are what still matters; its messages are
            // not delivered (and not checked: the receive state is gone),
            // but its packets are acknowledged, so that a peer finishing
            // a disconnect of its own at the same time settles too.
            self.last_received = now;
            self.record_received(header.sequence, now);
            self.traffic.packets_received += 1;
            self.traffic.bytes_received += datagram.len() as u64;
            if header.ack_eliciting {
                self.owe_ack(now, header.sequence);
            }
            if let Some(ack) = header.ack
                && self.on_ack(now, ack).is_err()
            {
                self.fail(now, DisconnectReason::Timeout);
                return;
            }
            if !self.settle_finish(now) {
                self.update_timers(now);
            }
            return;
        }
        // Pass 1: the whole packet must be legal and fit before any of it
        // applies. A message's fragments follow each other in a packet; its
        // memory counts once.
        let mut needed = 0usize;
        let mut counted = None;
        for message in MessageIter::new(body) {
            let Ok(view) = message else {
                self.stats.malformed_packets += 1;
                return;
            };
            let Some(channel) = self.recv.get(usize::from(view.header.channel)) else {
                self.fail(now, DisconnectReason::ProtocolViolation);
                return;
            };
            match channel.check(&view, &self.limits) {
                Ok(0) => {}
                Ok(bytes) => {
                    let message = view
                        .header
                        .fragment
                        .map(|f| (view.header.channel, view.header.id, f.count));
                    if message.is_none() || message != counted {
                        needed += bytes;
                        counted = message;
                    }
                }
                Err(
                    Violation::BadHeader
                    | Violation::BeyondWindow
                    | Violation::BadFragment
                    | Violation::TooLong,
                ) => {
                    self.fail(now, DisconnectReason::ProtocolViolation);
                    return;
                }
            }
        }
        // Over budget, the packet is not acknowledged (the peer sends its
        // messages again), but its acks count, and so do the reliable
        // messages that need no memory: the one an ordered channel waits
        // for is among them, and delivering it frees the buffer. Without
        // them a resend packed with messages that do need memory would be
        // refused for ever. Its unreliable messages are dropped: the
        // packet is not recorded, so a duplicate of it would deliver them
        // again, and reliable ids are what filter duplicates.
        let over_budget = self.memory.used + needed > self.memory.cap;
        if over_budget {
            self.stats.receive_buffer_drops += 1;
        } else {
            self.record_received(header.sequence, now);
            self.traffic.packets_received += 1;
            self.traffic.bytes_received += datagram.len() as u64;
        }
        self.last_received = now;
        if let Some(ack) = header.ack
            && self.on_ack(now, ack).is_err()
        {
            self.fail(now, DisconnectReason::Timeout);
            return;
        }
        // Pass 2: apply. What pass 1 counted for a reliable message stays
        // its own until it applies: the cap that the unreliable messages
        // ahead of it begin their reassemblies within (one by one, as they
        // apply) leaves it out.
        let cap = self.memory.cap;
        let mut reserved = if over_budget { 0 } else { needed };
        self.memory.cap -= reserved;
        for view in MessageIter::new(body).flatten() {
            let channel = usize::from(view.header.channel);
            if let Some(recv) = self.recv.get_mut(channel) {
                if over_budget && (!recv.is_reliable() || recv.check(&view, &self.limits) != Ok(0))
                {
                    continue;
                }
                if reserved > 0 && recv.is_reliable() {
                    let counted = recv.check(&view, &self.limits).unwrap_or(0).min(reserved);
                    reserved -= counted;
                    self.memory.cap += counted;
                }
                recv.receive(
                    view.header.channel,
                    &view,
                    now,
                    &self.limits,
                    &mut self.memory,
                    out,
                );
            }
        }
        self.memory.cap = cap;
        if header.ack_eliciting && !over_budget {
            self.owe_ack(now, header.sequence);
        }
        self.update_timers(now);
    }

    /// An ack-eliciting packet, `sequence`, arrived: one more to
    /// acknowledge.
    fn owe_ack(&mut self, now: Stamp, sequence: u16) {
        if self.ack_eliciting_unacked == 0 {
            self.ack_owed_since = now;
            self.oldest_unreported = sequence;
        } else if seq_newer(self.oldest_unreported, sequence) {
            self.oldest_unreported = sequence;
        }
        self.ack_eliciting_unacked = self.ack_eliciting_unacked.saturating_add(1);
    }

    fn on_duplicate(&mut self, ack_eliciting: bool, now: Stamp) {
        self.stats.duplicate_packets += 1;
        if ack_eliciting {
            // Our ack may have been lost: acknowledge again. The copy's
            // packet was named by an ack sent or kept back already, or is
            // among those owed: it is no older unreported packet (counting
            // it as one would keep acks back for nothing and use up their
            // room).
            let oldest = match self.ack_eliciting_unacked {
                0 => self.received_latest.unwrap_or_default(),
                _ => self.oldest_unreported,
            };
            self.owe_ack(now, oldest);
            self.update_timers(now);
        }
    }

    /// Records `sequence` for the acks. An ack names its latest packet and
    /// the 64 before it, so a packet newer by more than 64 than one no ack
    /// has named yet (a driver that hands over a long burst before it
    /// transmits) would leave that one unacknowledged for good: the peer
    /// would count it lost, send its messages again and cut its rate. The
    /// ack that names it is kept back then, for a datagram of its own at
    /// the next transmit (up to [`OLDER_ACKS`] of them).
    fn record_received(&mut self, sequence: u16, now: Stamp) {
        match self.received_latest {
            None => {
                self.received_latest = Some(sequence);
                self.received_bits = 0;
                self.received_latest_at = now;
            }
            Some(latest) if seq_newer(sequence, latest) => {
                let out_of_reach = self.ack_eliciting_unacked != 0
                    && seq_distance(sequence, self.oldest_unreported) > 64;
                if out_of_reach && usize::from(self.older_acks_len) < OLDER_ACKS {
                    self.older_acks[usize::from(self.older_acks_len)] = OlderAck {
                        latest,
                        bits: self.received_bits,
                        at: self.received_latest_at,
                    };
                    self.older_acks_len += 1;
                    // The ack kept back names them all.
                    self.ack_eliciting_unacked = 0;
                }
                let shift = u32::from(seq_distance(sequence, latest));
                // The old latest becomes bit (shift - 1); bit 63 is the
                // packet 64 behind.
                self.received_bits = if shift > 64 {
                    0
                } else {
                    ((self.received_bits << 1) | 1) << (shift - 1)
                };
                self.received_latest = Some(sequence);
                self.received_latest_at = now;
            }
            Some(latest) => {
                let back = seq_distance(latest, sequence);
                self.received_bits |= 1 << (back - 1);
            }
        }
    }

    /// Takes the oldest acknowledgement kept back, if any.
    fn take_older_ack(&mut self, now: Stamp) -> Option<AckInfo> {
        if self.older_acks_len == 0 {
            return None;
        }
        let older = self.older_acks[0];
        let len = usize::from(self.older_acks_len);
        self.older_acks.copy_within(1..len, 0);
        self.older_acks_len -= 1;
        Some(AckInfo {
            latest: older.latest,
            bits: older.bits,
            delay: ack_delay(now, older.at),
        })
    }

    fn on_ack(&mut self, now: Stamp, ack: AckInfo) -> Result<(), ReliableTimedOut> {
        // Packets judged lost that the ack names: their losses were
        // spurious, and may undo the cuts they caused.
        self.budget
            .on_ack_names(ack.latest, ack.bits, &self.config.rate_bounds());
        let back = self.next_sequence.wrapping_sub(ack.latest);
        let newest_ack =
            back != 0 && back < self.next_sequence.wrapping_sub(self.newest_ack_latest);
        if newest_ack {
            self.newest_ack_latest = ack.latest;
        }
        let mut newest_acked: Option<(u16, Stamp)> = None;
        // The ack covers `latest` and the 64 before it. With fewer packets
        // sent since the oldest one in flight, visit those (newest first,
        // as the ack order) instead of every sequence the ack names.
        let mut acked = [0u16; 65];
        let mut count = 0;
        let mut push = |sequence: u16| {
            acked[count] = sequence;
            count += 1;
        };
        let covers = |sequence: u16| {
            let back = ack.latest.wrapping_sub(sequence);
            back == 0 || (back <= 64 && ack.bits & (1 << (back - 1)) != 0)
        };
        let span = self.in_flight_span();
        if span <= 64 {
            (1..=span)
                .map(|back| self.next_sequence.wrapping_sub(back))
                .filter(|&s| covers(s))
                .for_each(&mut push);
        } else {
            (0..=64u16)
                .map(|back| ack.latest.wrapping_sub(back))
                .filter(|&s| covers(s))
                .for_each(&mut push);
        }
        for &sequence in &acked[..count] {
            let packet = self.sent.get_mut(sequence);
            if !packet.in_flight || packet.sequence != sequence {
                continue;
            }
            packet.in_flight = false;
            if newest_acked.is_none() {
                newest_acked = Some((sequence, packet.sent_at));
            }
            self.traffic.packet_loss -= self.traffic.packet_loss / 64.0;
            let span = std::mem::take(&mut packet.units);
            for i in 0..span.len() {
                let unit = self.units.get(span, i);
                let index = usize::from(unit.channel);
                if let Some(SendChannel::Reliable(c)) = self.send.get_mut(index) {
                    // A slot freed may let waiting messages into the window.
                    self.send_memory -=
                        c.on_acked(unit.id, unit.fragment, self.config.fragment_size);
                    self.note_pending(index);
                }
            }
        }
        // The newest packet the peer has was judged lost before this ack
        // came: the round trip has grown past the loss deadline. Its ack,
        // late, is the only measure of the new round trip (sequence numbers
        // are not reused: it is no retransmission's); without it the
        // estimate would stay as it was and every packet would be judged
        // lost, while the path stays slow, and the send rate cut with each.
        // Unless a newer ack overtook this one: the peer had newer packets
        // then, this one's round trip counts the hold-up of the ack, and
        // the newer ack's sample came first (`largest_acked`, forgotten
        // once nothing older is in flight, cannot tell).
        let latest = self.sent.get_mut(ack.latest);
        if latest.lost && latest.sequence == ack.latest {
            latest.lost = false;
            if newest_ack {
                newest_acked = Some((ack.latest, latest.sent_at));
            }
        }
        let Some((sequence, sent_at)) = newest_acked else {
            return Ok(());
        };
        if self.largest_acked.is_none_or(|l| seq_newer(sequence, l)) {
            self.largest_acked = Some(sequence);
            // The peer's delay runs from its newest packet: the newest
            // acked here, or a bare ack of ours sent after it (never in
            // flight), which this ack is the first to name.
            let timed = if sequence == ack.latest {
                Some(sent_at)
            } else if !newest_ack {
                None
            } else {
                let latest = self.sent.get(ack.latest);
                if latest.sequence == ack.latest {
                    Some(latest.sent_at)
                } else {
                    self.unslotted_acks
                        .as_ref()
                        .and_then(|acks| acks.sent_at(ack.latest))
                }
            };
            if let Some(sent_at) = timed {
                let delay = Duration::from_micros(u64::from(ack.delay) * ACK_DELAY_UNIT_MICROS);
                let raw = now.saturating_duration_since(sent_at);
                let min = self.rtt.min().unwrap_or(raw);
                // The peer's delay counts only while what is left of the
                // round trip stays at least the fastest one seen.
                let sample = raw
                    .checked_sub(delay)
                    .filter(|rest| *rest >= min)
                    .unwrap_or(raw);
                self.rtt.on_sample(sample, now);
            }
        }
        self.budget.on_ack(
            now,
            self.rtt.smoothed(),
            self.rtt.min(),
            &self.config.rate_bounds(),
        );
        self.detect_losses(now)
    }

    /// Sequences from the oldest that may be in flight to the newest sent.
    fn in_flight_span(&self) -> u16 {
        self.next_sequence.wrapping_sub(self.oldest_in_flight)
    }

    /// Whether packet `sequence` is still in flight.
    fn is_in_flight(&self, sequence: u16) -> bool {
        let packet = self.sent.get(sequence);
        packet.in_flight && packet.sequence == sequence
    }

    /// Moves `oldest_in_flight` past the acked or lost packets at the front.
    fn skip_settled(&mut self) {
        while self.oldest_in_flight != self.next_sequence
            && !self.is_in_flight(self.oldest_in_flight)
        {
            self.oldest_in_flight = self.oldest_in_flight.wrapping_add(1);
        }
        // Only a packet still in flight can be older than the largest
        // acked; one from before them all tells nothing, and packets not
        // tracked (bare acks) could carry the numbers round past it, after
        // which it would look newer than everything sent.
        if self.largest_acked.is_some_and(|largest| {
            largest.wrapping_sub(self.oldest_in_flight) >= self.in_flight_span()
        }) {
            self.largest_acked = None;
        }
    }

    /// Releases the units of every packet older than the oldest one still
    /// in flight.
    fn release_units(&mut self) {
        self.skip_settled();
        match self.in_flight_span() {
            0 => self.units.release_all(),
            _ => {
                self.units
                    .release_before(self.sent.get(self.oldest_in_flight).units);
            }
        }
    }

    fn loss_deadline(&self, packet: &SentPacket) -> Stamp {
        packet.sent_at
            + self
                .rtt
                .backed_off_rto(packet.attempt, &self.config.rto_bounds())
            + self.config.max_ack_delay
    }

    fn detect_losses(&mut self, now: Stamp) -> Result<(), ReliableTimedOut> {
        let mut any_lost = false;
        let mut earliest: Option<Stamp> = None;
        // An early return leaves `loss_at` to be recomputed.
        self.loss_at_stale = true;
        self.skip_settled();
        for k in 0..self.in_flight_span() {
            let sequence = self.oldest_in_flight.wrapping_add(k);
            if !self.is_in_flight(sequence) {
                continue;
            }
            let packet = self.sent.get(sequence);
            let by_reorder = self.largest_acked.is_some_and(|largest| {
                seq_newer(largest, sequence)
                    && seq_distance(largest, sequence) >= PACKET_REORDER_THRESHOLD
            });
            let deadline = self.loss_deadline(packet);
            if by_reorder || now >= deadline {
                if !any_lost {
                    // The cut first: it keeps the packets it answers.
                    self.budget
                        .on_loss(now, self.rtt.smoothed(), &self.config.rate_bounds());
                    any_lost = true;
                }
                self.on_packet_lost(sequence, now)?;
                continue;
            }
            earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
        }
        self.loss_at = earliest;
        self.loss_at_stale = false;
        Ok(())
    }

    fn on_packet_lost(&mut self, sequence: u16, now: Stamp) -> Result<(), ReliableTimedOut> {
        self.stats.packets_lost += 1;
        self.traffic.packet_loss += (1.0 - self.traffic.packet_loss) / 64.0;
        self.budget.on_packet_lost(sequence);
        let packet = self.sent.get_mut(sequence);
        packet.in_flight = false;
        packet.lost = true;
        let span = std::mem::take(&mut packet.units);
        let mut result = Ok(());
        for i in 0..span.len() {
            let unit = self.units.get(span, i);
            let index = usize::from(unit.channel);
            if let Some(SendChannel::Reliable(c)) = self.send.get_mut(index) {
                if let Err(e) = c.on_lost(
                    unit.id,
                    unit.fragment,
                    sequence,
                    now,
                    self.config.reliable_timeout,
                ) {
                    result = Err(e);
                }
                self.note_pending(index);
            }
        }
        result
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.timeout_at(self.clock.stamp(now));
    }

    /// [`handle_timeout`](Self::handle_timeout) at a stamp of its clock.
    pub(crate) fn timeout_at(&mut self, now: Stamp) {
        if !self.is_open() {
            if let State::Closing { .. } = self.state {
                self.update_timers(now);
            }
            return;
        }
        if self.settle_finish(now) {
            return;
        }
        if self.timers.expired(Timer::Idle, now) {
            // The peer is probably gone, but tell it in case only one direction failed.
            self.fail(now, DisconnectReason::Timeout);
            return;
        }
        if self.timers.expired(Timer::Loss, now) && self.detect_losses(now).is_err() {
            self.fail(now, DisconnectReason::Timeout);
            return;
        }
        if self.timers.expired(Timer::Fragments, now) {
            let timeout = self.config.unreliable_fragment_timeout;
            for channel in &mut self.recv {
                channel.expire(now, timeout, &mut self.memory);
            }
        }
        self.update_timers(now);
    }

    /// Whether a packet sent now could carry a message: one waits, and
    /// not only on reliable channels while the log of units in flight is
    /// exhausted (those wait for acks or losses to release units; a packet
    /// sent meanwhile would carry nothing, and pacing would not wait).
    fn has_sendable_data(&mut self) -> bool {
        if !self.has_pending_data() || self.history_full() {
            return false;
        }
        if !self.units.is_exhausted() {
            return true;
        }
        self.release_units();
        !self.units.is_exhausted()
            || channel_bits(self.pending_channels)
                .any(|index| matches!(self.send[index], SendChannel::Unreliable(_)))
    }

    /// The next packet's slot of the sent history holds a packet still in
    /// flight, and the history is as long as it grows: sent now, a data
    /// packet or keepalive would count that one lost before its ack could
    /// come (a bare ack, untracked, leaves the slot alone). On a
    /// long, fast path that was every packet, for ever (each resent and
    /// "lost" again, nothing ever acknowledged): data waits instead, until
    /// an ack or the loss timer frees the slot. Asked in this order, the
    /// common case reads only the hot fields.
    fn history_full(&self) -> bool {
        usize::from(self.in_flight_span()) >= SENT_HISTORY
            && self.sent.len() >= SENT_HISTORY
            && self.sent.get(self.next_sequence).in_flight
    }

    fn has_pending_data(&self) -> bool {
        debug_assert!(
            self.send
                .iter()
                .enumerate()
                .all(|(i, c)| c.has_pending() == (self.pending_channels >> i & 1 == 1)),
            "pending_channels out of step with the channels"
        );
        debug_assert_eq!(
            self.send_memory,
            self.send
                .iter()
                .filter(|c| matches!(c, SendChannel::Reliable(_)))
                .map(SendChannel::queued_bytes)
                .sum::<usize>(),
            "send_memory out of step with the channels"
        );
        self.pending_channels != 0
    }

    fn update_timers(&mut self, now: Stamp) {
        match self.state {
            State::Closed => {
                self.timers = TimerTable::default();
                return;
            }
            State::Closing { .. } => {
                self.timers = TimerTable::default();
                self.timers.set(Timer::Pacing, Some(now));
                return;
            }
            State::Connected | State::Finishing { .. } => {}
        }
        let idle = self.last_received + self.config.idle_timeout;
        let idle = match self.state {
            State::Finishing { .. } => idle.min(self.finish_by),
            _ => idle,
        };
        self.timers.set(Timer::Idle, Some(idle));
        // None while the history is full (see `transmit_at`): an ack or
        // the loss timer comes first, and this is set again then.
        let keepalive =
            (!self.history_full()).then(|| self.last_sent + self.config.keepalive_interval);
        self.timers.set(Timer::Keepalive, keepalive);
        if self.loss_at_stale {
            self.loss_at = (0..self.in_flight_span())
                .map(|k| self.oldest_in_flight.wrapping_add(k))
                .filter(|&sequence| self.is_in_flight(sequence))
                .map(|sequence| self.loss_deadline(self.sent.get(sequence)))
                .min();
            self.loss_at_stale = false;
        }
        self.timers.set(Timer::Loss, self.loss_at);
        let ack = match self.ack_eliciting_unacked {
            _ if self.older_acks_len != 0 => Some(now),
            0 => None,
            1 => Some(self.ack_owed_since + self.config.max_ack_delay),
            _ => Some(now),
        };
        self.timers.set(Timer::Ack, ack);
        let pacing = self.has_sendable_data().then(|| self.budget.ready_at(now));
        self.timers.set(Timer::Pacing, pacing);
        // Every active reassembly holds receive memory (a fragmented
        // message has at least two fragments), so with none held there is
        // nothing to expire and the channels need not be visited.
        let fragments = if self.memory.used == 0 {
            None
        } else {
            let timeout = self.config.unreliable_fragment_timeout;
            self.recv
                .iter()
                .filter_map(|c| c.next_expiry(timeout))
                .min()
        };
        self.timers.set(Timer::Fragments, fragments);
    }

    fn ack_info(&self, now: Stamp) -> Option<AckInfo> {
        let latest = self.received_latest?;
        Some(AckInfo {
            latest,
            bits: self.received_bits,
            delay: ack_delay(now, self.received_latest_at),
        })
    }

    /// Writes the next datagram for the peer into `buf` (which should hold
    /// `max_payload` bytes) and returns its length, or `None` when there is
    /// nothing to send now.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.transmit_at(self.clock.stamp(now), buf)
    }

    /// [`poll_transmit`](Self::poll_transmit) at a stamp of its clock.
    pub(crate) fn transmit_at(&mut self, now: Stamp, buf: &mut [u8]) -> Option<usize> {
        let limit = buf.len().min(self.config.max_payload);
        let buf = &mut buf[..limit];
        match self.state {
            State::Closed => None,
            State::Closing { remaining, reason } => {
                let header = PacketHeader {
                    kind: PacketKind::Disconnect,
                    ack_eliciting: false,
                    sequence: self.next_sequence,
                    ack: None,
                };
                let mut writer = PacketWriter::new(buf, &header)?;
                writer.write_u8(reason.code());
                let len = writer.len();
                if remaining <= 1 {
                    self.state = State::Closed;
                    self.timers = TimerTable::default();
                } else {
                    self.state = State::Closing {
                        remaining: remaining - 1,
                        reason,
                    };
                }
                self.count_sent(now, len);
                Some(len)
            }
            State::Connected => self.transmit_connected(now, buf),
            State::Finishing { .. } => {
                let sent = self.transmit_connected(now, buf);
                if sent.is_none() && self.settle_finish(now) {
                    return self.transmit_at(now, buf);
                }
                sent
            }
        }
    }

    fn transmit_connected(&mut self, now: Stamp, buf: &mut [u8]) -> Option<usize> {
        let ttl = self.config.unreliable_ttl;
        let fragment_timeout = self.config.unreliable_fragment_timeout;
        for index in channel_bits(self.pending_channels) {
            if let SendChannel::Unreliable(c) = &mut self.send[index] {
                c.shed_stale(now, ttl, fragment_timeout);
                self.note_pending(index);
            }
        }
        // An acknowledgement kept back goes first, alone in a bare ack.
        let older_ack = self.take_older_ack(now);
        let current = older_ack.is_none();
        let has_data = current && self.has_sendable_data();
        let may_send_data = has_data && self.budget.can_send(now, &self.config.rate_bounds());
        let ack_due = !current || self.timers.expired(Timer::Ack, now);
        // With the history full, packets are in flight: no keepalive is
        // needed, and one would count the oldest lost.
        let keepalive_due = current
            && now >= self.last_sent + self.config.keepalive_interval
            && !self.history_full();
        if !may_send_data && !ack_due && !keepalive_due {
            self.update_timers(now);
            return None;
        }
        let sequence = self.next_sequence;
        // The slot's packet (a ring's length of sequences back) can be in
        // flight only when that many are outstanding; asked in that order,
        // the common case does not wait on the slot's cache line.
        let span = self.in_flight_span();
        let mut keeps_slot = false;
        if usize::from(span) >= self.sent.len() && self.sent.get(sequence).in_flight {
            if self.sent.len() >= SENT_HISTORY {
                // The history is full, so this is a bare ack (data and
                // keepalives wait, `history_full`). Not tracked, it needs
                // no slot: the packet there stays in flight, its ack still
                // to come. Taking the slot counted it lost, and every ack
                // sent while the history was full cost a resend.
                keeps_slot = true;
                if usize::from(span) >= MAX_IN_FLIGHT_SPAN
                    && self.on_packet_lost(self.oldest_in_flight, now).is_err()
                {
                    self.fail(now, DisconnectReason::Timeout);
                    return self.transmit_at(now, buf);
                }
            } else {
                self.sent.cover(self.oldest_in_flight, span);
            }
        }
        let header = PacketHeader {
            kind: PacketKind::Data,
            ack_eliciting: true,
            sequence,
            ack: older_ack.or_else(|| self.ack_info(now)),
        };
        self.release_units();
        let units_start = self.units.tail();
        let mut writer = PacketWriter::new(buf, &header)?;
        let mut wrote_messages = false;
        if may_send_data {
            let fragment_size = self.config.fragment_size;
            let mut ctx = PackContext {
                now,
                sequence,
                fragment_size,
                units: &mut self.units,
            };
            let channels = &self.config.channels;
            let mut waiting = self.pending_channels;
            let starved = channel_bits(waiting)
                .filter(|&c| matches!(&self.send[c], SendChannel::Reliable(r) if r.is_starved()))
                .fold(0u64, |mask, c| mask | 1 << c);
            // Starved reliable channels first, then lower priority first (as
            // the channels are few and one or two have data, a scan beats
            // keeping an order).
            while let Some(index) = next_channel(channels, waiting & starved, self.data_turn)
                .or_else(|| next_channel(channels, waiting, self.data_turn))
            {
                waiting &= !(1 << index);
                let channel = index as u8;
                wrote_messages |= match &mut self.send[index] {
                    SendChannel::Unreliable(c) => c.pack(channel, &mut writer, fragment_size),
                    SendChannel::Reliable(c) => c.pack(channel, &mut writer, &mut ctx),
                };
            }
            for index in channel_bits(self.pending_channels) {
                self.note_pending(index);
            }
        }
        if !wrote_messages && !ack_due && !keepalive_due {
            // Data was due but none fit the caller's buffer (smaller than
            // the configured payload): a bare ack now would be sent again
            // on every call, for ever.
            self.update_timers(now);
            return None;
        }
        let len = writer.len();
        let ack_eliciting = wrote_messages || (keepalive_due && !ack_due);
        if !ack_eliciting {
            // A bare acknowledgement: not ack-eliciting and not tracked.
            buf[0] &= !(1 << 2);
        }
        let units = self.units.span_since(units_start);
        let attempt = (0..units.len())
            .map(|i| self.units.get(units, i))
            .filter_map(|u| match &self.send[usize::from(u.channel)] {
                SendChannel::Reliable(c) => Some(c.attempts(u.id, u.fragment)),
                SendChannel::Unreliable(_) => None,
            })
            .max()
            .unwrap_or(0);
        if keeps_slot {
            self.unslotted_acks
                .get_or_insert_with(Box::default)
                .push(sequence, now);
        } else {
            let packet = self.sent.get_mut(sequence);
            packet.units = units;
            packet.sequence = sequence;
            packet.sent_at = now;
            packet.attempt = attempt;
            packet.in_flight = ack_eliciting;
            packet.lost = false;
        }
        if ack_eliciting {
            let deadline = self.loss_deadline(self.sent.get(sequence));
            self.loss_at = Some(self.loss_at.map_or(deadline, |e| e.min(deadline)));
        }
        self.next_sequence = sequence.wrapping_add(1);
        // `release_units` above moved past the packet this slot held, and
        // only bare acks of a full history pass its length.
        debug_assert!(
            usize::from(self.in_flight_span())
                <= if self.sent.len() < SENT_HISTORY {
                    self.sent.len()
                } else {
                    MAX_IN_FLIGHT_SPAN
                }
        );
        if current {
            self.ack_eliciting_unacked = 0;
        }
        if wrote_messages {
            self.budget.on_sent(len);
            self.data_turn = self.data_turn.wrapping_add(1);
        }
        self.count_sent(now, len);
        self.update_timers(now);
        Some(len)
    }

    fn count_sent(&mut self, now: Stamp, len: usize) {
        self.last_sent = now;
        self.traffic.packets_sent += 1;
        self.traffic.bytes_sent += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn the_hot_state_keeps_to_its_cache_lines() {
        let send_end = offset_of!(Connection, send_memory) + size_of::<usize>();
        assert!(send_end <= 64, "send_bytes' fields end at {send_end}");
        let hot_end = offset_of!(Connection, stats);
        assert!(hot_end <= 8 * 64, "the per-packet fields end at {hot_end}");
    }
}
