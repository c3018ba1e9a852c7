//! One bot: a plain state machine around a [`ClientEndpoint`], driven by
//! the worker that owns its socket (see `swarm`).
//!
//! ```text
//! Idle ──start──► Connecting ──Connected──► Connected ──stop / churn──► Draining
//!                     │                        │                           │ nothing awaited
//!                     ▼ failure                ▼ dropped                   ▼ (or deadline)
//!                   Done ◄──────────────────── Done ◄──── Paused ◄── churn ─ Leaving
//! ```
//!
//! The worker calls [`Bot::on_datagram`] for what the socket read and
//! [`Bot::service`] when the bot's wake-up time has come; `service` returns
//! the next one.
//!
//! Behaviours, as a game client would play them:
//! - **wander** sends a `MoveInput` at the scenario's rate (at most the
//!   server's tick rate, from its welcome) from the first
//!   moment of the session (the server starts a client's snapshot stream
//!   with its first input), at the scenario's speed clamped to the
//!   server's `max_speed` (from its welcome too; standing still until it
//!   arrives: the server flags a faster input), built by a [`Predictor`]
//!   and acknowledging the newest snapshot the bot's [`SnapshotReceiver`] applied, so the server
//!   can delta-encode. Every received snapshot is applied; failures are
//!   counted by reason. While the inventory behaviour walks to a world
//!   item, the heading points at it.
//! - **chat** says a verified line (see `verify`) at the scenario's rate,
//!   whether or not earlier ones have been answered: every answer names the
//!   line it answers (`client_ref`). A slot is skipped only when
//!   `verify::MAX_IN_FLIGHT` lines are unanswered. The scenarios' rates stay
//!   far below the server's rate limit (burst 10, 1 line/s).
//! - **inventory**: see `inventory`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client_headless::chaos::generators::Rng;
use glam::Vec2;
use hdrhistogram::Histogram;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent};
use shared::io::unix_secs;
use shared::movement::{
    ApplyError, ApplyScratch, MovementRules, Predictor, SnapshotReceiver, tick_dt,
};
use shared::netcode::MAX_PACKET_BYTES;
use shared::protocol::chat::{ChatLine, ChatRejected, ChatScope, ChatSend};
use shared::protocol::inventory::{
    InventoryReply, InventoryRequest, InventoryUpdate, TradeUpdate, WorldItems,
};
use shared::protocol::messages::Welcome;
use shared::protocol::movement::Snapshot;
use shared::protocol::{self, EncodeBuffer, NetMessage, PROTOCOL_ID, channels};
use shared::sim::{LinkConfig, LinkSimulator};
use shared::transport::{ChannelId, Deliver, DisconnectReason, TransportConfig};

use crate::inventory::{InventoryBehaviour, InventoryHistory, InventoryStats};
use crate::scenario::{ChatScopeKind, Scenario};
use crate::token::TokenMinter;
use crate::verify::ChatVerifier;

/// The server's tick rate until its `Welcome` says otherwise.
const DEFAULT_TICK_HZ: u16 = 30;
/// Closer than this to its target item, the bot stops walking.
const ARRIVED: f32 = 1.0;
/// How long a leaving bot waits for its goodbye to complete.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// RTT is sampled once per second per connected bot, from the first second.
const RTT_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What a worker does with a bot after handing it a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterReceive {
    /// Run [`Bot::service`] in this pass.
    Service,
    /// Nothing to send yet: wake the bot no later than this.
    WakeBy(Instant),
}

/// The messages a bot's connection delivered and the bot has not handled
/// yet: one buffer for all the bots of a worker, which stays warm in the
/// cache (each bot's own inbox would be cold by its next datagram).
#[derive(Default)]
struct Messages {
    bytes: Vec<u8>,
    /// Each message's channel and end in `bytes`.
    ends: Vec<(ChannelId, usize)>,
}

impl Deliver for Messages {
    fn deliver(&mut self, channel: ChannelId, payload: &[u8]) {
        self.bytes.extend_from_slice(payload);
        self.ends.push((channel, self.bytes.len()));
    }
}

impl Messages {
    fn iter(&self) -> impl Iterator<Item = (ChannelId, &[u8])> {
        let mut start = 0;
        self.ends.iter().filter_map(move |&(channel, end)| {
            let payload = self.bytes.get(start..end)?;
            start = end;
            Some((channel, payload))
        })
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// What a worker lends each bot it runs: one of each for all its bots,
/// which stays warm in the cache.
pub(crate) struct Scratch {
    /// A datagram on its way through the link conditioner.
    datagram: Vec<u8>,
    /// The messages a connected bot's datagram delivered.
    messages: Messages,
    /// Movement inputs, encoded into shared chunks: no allocation per input.
    inputs: EncodeBuffer,
    /// A snapshot's decoding buffers.
    snapshots: SnapshotScratch,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Self {
            datagram: Vec::with_capacity(MAX_PACKET_BYTES),
            messages: Messages::default(),
            inputs: EncodeBuffer::default(),
            snapshots: SnapshotScratch::default(),
        }
    }
}

/// Where a bot decodes and applies its snapshots: one per worker, warm in
/// the cache, rather than one per bot, cold by its next snapshot.
#[derive(Default)]
pub(crate) struct SnapshotScratch {
    /// The snapshot, its lists reused from one to the next.
    snapshot: Snapshot,
    /// The receiver's working lists.
    lists: ApplyScratch,
}

/// Where a bot's datagrams to the server go: its own socket, or a batch
/// on a socket it shares with other bots.
pub(crate) trait Outbox {
    /// Sends (or queues) one datagram to the server; whether it was taken.
    /// `counted`: the bot counts the datagram's bytes in its `bytes_up`
    /// when it is taken, so an outbox that queues it and later has it
    /// refused takes them back out.
    fn send(&mut self, data: &[u8], counted: bool) -> bool;
}

/// What all bots of a run share.
pub(crate) struct BotContext {
    /// The server.
    pub(crate) server: SocketAddr,
    /// Mints a fresh token per connection.
    pub(crate) minter: TokenMinter,
    /// Behaviours and rates.
    pub(crate) scenario: Scenario,
    /// The link conditioner of each direction, if any.
    pub(crate) link: Option<LinkConfig>,
    /// The accounts of the swarm (`first..first + count`), for whispers.
    pub(crate) first_account: u64,
    /// Bots in the swarm.
    pub(crate) bots: u64,
    /// Longest wait for in-flight chat lines and inventory replies when
    /// stopping.
    pub(crate) drain_timeout: Duration,
    /// The game's channel layout, one copy for every bot's connection.
    pub(crate) transport: Arc<TransportConfig>,
    /// The end of the ramp: RTT samples taken from then on are the steady
    /// state's too ([`WorkerStats::rtt_steady_us`]).
    pub(crate) steady_from: Instant,
}

/// What a worker's bots count together.
pub(crate) struct WorkerStats {
    /// Bots connected right now.
    pub(crate) connected_now: u64,
    /// Bots that completed at least one handshake.
    pub(crate) ever_connected: u64,
    /// Handshakes that failed, by reason: bots that never connected.
    pub(crate) connect_failures: BTreeMap<String, u64>,
    /// Reconnects (churn) that failed, by reason: bots that had connected
    /// and are offline from then on.
    pub(crate) reconnect_failures: BTreeMap<String, u64>,
    /// Established connections that ended without the bot asking, by reason.
    pub(crate) disconnects: BTreeMap<String, u64>,
    /// RTT samples in microseconds.
    pub(crate) rtt_us: Histogram<u64>,
    /// The RTT samples taken at or after [`BotContext::steady_from`]: the
    /// steady state's, without the ramp's connect storm.
    pub(crate) rtt_steady_us: Histogram<u64>,
    /// How late bots were served after the time they were due, in
    /// microseconds: the bot process's own delay, which the RTT includes.
    pub(crate) lateness_us: Histogram<u64>,
    /// UDP payload bytes written to / read from the sockets while
    /// connected (the span `connected_time` adds up; a handshake's bytes,
    /// above all those of bots that never connect, are not in it).
    pub(crate) bytes_up: u64,
    /// See `bytes_up`.
    pub(crate) bytes_down: u64,
    /// Sum over bots of the time spent connected.
    pub(crate) connected_time: Duration,
    /// Inventory requests and replies of finished connections.
    pub(crate) inventory: InventoryStats,
    /// Chat refusals by reason.
    pub(crate) chat_rejected: BTreeMap<String, u64>,
    /// Chat slots skipped because `verify::MAX_IN_FLIGHT` lines were still
    /// unanswered.
    pub(crate) chat_skipped: u64,
    /// Movement inputs sent.
    pub(crate) moves_sent: u64,
    /// Inputs skipped: beats a bot was served too late for.
    pub(crate) moves_skipped: u64,
    /// Snapshots received and applied.
    pub(crate) snapshots_applied: u64,
    /// Snapshots that could not be decoded or applied, by reason.
    pub(crate) snapshot_errors: BTreeMap<String, u64>,
    /// Largest prediction correction on a snapshot, metres.
    pub(crate) max_correction_m: f32,
    /// Connections that sent input but never received a snapshot.
    pub(crate) no_snapshots: u64,
    /// Messages the transport refused to queue.
    pub(crate) send_errors: u64,
    /// Datagrams the bots' sockets refused (a full send buffer, a send
    /// error): the server never saw them.
    pub(crate) send_drops: u64,
    /// Messages from the server this bot could not decode.
    pub(crate) decode_errors: u64,
}

impl WorkerStats {
    /// Empty counters.
    pub(crate) fn new() -> Self {
        Self {
            connected_now: 0,
            ever_connected: 0,
            connect_failures: BTreeMap::new(),
            reconnect_failures: BTreeMap::new(),
            disconnects: BTreeMap::new(),
            rtt_us: new_micros_histogram(),
            rtt_steady_us: new_micros_histogram(),
            lateness_us: new_micros_histogram(),
            bytes_up: 0,
            bytes_down: 0,
            connected_time: Duration::ZERO,
            inventory: InventoryStats::default(),
            chat_rejected: BTreeMap::new(),
            chat_skipped: 0,
            moves_sent: 0,
            moves_skipped: 0,
            snapshots_applied: 0,
            snapshot_errors: BTreeMap::new(),
            max_correction_m: 0.0,
            no_snapshots: 0,
            send_errors: 0,
            send_drops: 0,
            decode_errors: 0,
        }
    }
}

/// The beat after `at` of a cadence of `period`: one period on, or, for a
/// caller late past that, the first beat after `now` in the same phase. No
/// backlog is queued, and bots late in the same stall do not fall into
/// step (each keeps the phase it started with).
pub(crate) fn next_beat(at: Instant, period: Duration, now: Instant) -> Instant {
    let next = at + period;
    if next > now {
        return next;
    }
    let beats = now.duration_since(at).as_nanos() / period.as_nanos().max(1) + 1;
    u32::try_from(beats)
        .ok()
        .and_then(|beats| period.checked_mul(beats))
        .and_then(|span| at.checked_add(span))
        .unwrap_or(now + period)
}

/// The beats between `at` and `next` (a [`next_beat`] of `period`) that
/// no service took: 0 on time, one less than the periods passed if late.
fn beats_skipped(at: Instant, next: Instant, period: Duration) -> u64 {
    let beats = next.saturating_duration_since(at).as_nanos() / period.as_nanos().max(1);
    u64::try_from(beats.saturating_sub(1)).unwrap_or(u64::MAX)
}

/// How often a wandering bot sends a `MoveInput`: at the scenario's `hz`,
/// but no faster than the server ticks (its welcome says; each input
/// moves a player for one tick, so a server ticking slower than `hz`
/// would drop the surplus and count it as a `rate` violation).
pub(crate) fn move_period(hz: f64, tick_hz: u16) -> Duration {
    Duration::from_secs_f64(1.0 / hz.min(f64::from(tick_hz.max(1))))
}

/// A histogram of durations from 1 µs to 10 minutes, 3 significant digits.
pub(crate) fn new_micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// A token the client refused, as a report key.
fn token_error_key(error: shared::netcode::ConnectError) -> &'static str {
    use shared::netcode::ConnectError;
    match error {
        ConnectError::Token(_) => "token_unreadable",
        ConnectError::InvalidToken => "token_invalid",
        ConnectError::WrongProtocolId { .. } => "token_wrong_protocol",
        ConnectError::Expired => "token_expired",
    }
}

/// The report key of a disconnect reason: `ConnectTimeout` → `connect_timeout`.
pub(crate) fn reason_key(reason: DisconnectReason) -> String {
    snake_case(&format!("{reason:?}"))
}

/// A `Debug` name as a report key: `ConnectTimeout` → `connect_timeout`,
/// `Custom(70)` → `custom70`.
pub(crate) fn snake_case(debug: &str) -> String {
    let mut key = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                key.push('_');
            }
            key.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            key.push(c);
        }
    }
    key
}

fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_default() += 1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle { start_at: Instant },
    Connecting,
    Connected,
    Draining { deadline: Instant },
    Leaving { deadline: Instant },
    Paused { until: Instant },
    Done,
}

/// The two directions of the link conditioner.
struct Conditioner {
    up: LinkSimulator,
    down: LinkSimulator,
}

/// A random delay in `0..max_secs`: behaviour timing needs no crypto.
fn random_secs(rng: &mut Rng, max_secs: f64) -> Duration {
    Duration::from_secs_f64(rng.unit() * max_secs)
}

/// One simulated player.
pub(crate) struct Bot {
    account: u64,
    ctx: Arc<BotContext>,
    endpoint: ClientEndpoint,
    link: Option<Box<Conditioner>>,
    phase: Phase,
    rng: Rng,
    ever_connected: bool,
    connected_since: Option<Instant>,
    saw_snapshot: bool,
    sent_input: bool,
    tick_hz: u16,
    /// The server's movement rules, from its welcome (the defaults until
    /// then).
    rules: MovementRules,
    /// This session's welcome arrived: `rules` are the server's.
    welcomed: bool,
    receiver: SnapshotReceiver,
    predictor: Option<Predictor>,
    reconciled: bool,
    velocity: Vec2,
    inventory: Option<InventoryBehaviour>,
    /// What the inventory behaviour of the bot's next connection starts
    /// from: the newest state the last one was sent, checked against the
    /// next one's, and its request ids.
    inventory_history: InventoryHistory,
    next_move: Option<Instant>,
    next_turn: Instant,
    next_chat: Option<Instant>,
    next_inventory: Option<Instant>,
    session_end: Option<Instant>,
    next_rtt_sample: Option<Instant>,
    /// The connection's packets received at the last RTT sample.
    packets_at_rtt_sample: u64,
    verifier: ChatVerifier,
    stopping: bool,
    /// Messages were queued since the last [`flush`](Self::flush).
    unsent: bool,
    /// Done: until when it waits for what its conditioned link holds.
    link_release: Option<Instant>,
}

impl Bot {
    /// A bot for `account` that starts connecting at `start_at`.
    pub(crate) fn new(ctx: Arc<BotContext>, account: u64, start_at: Instant, seed: u64) -> Self {
        let link = ctx.link.clone().map(|config| {
            Box::new(Conditioner {
                up: LinkSimulator::new(config.clone(), seed ^ account.rotate_left(17)),
                down: LinkSimulator::new(config, !seed ^ account.rotate_left(41)),
            })
        });
        Self {
            account,
            endpoint: ClientEndpoint::new(PROTOCOL_ID, Arc::clone(&ctx.transport)),
            link,
            phase: Phase::Idle { start_at },
            rng: Rng::new(seed ^ account),
            ever_connected: false,
            link_release: None,
            connected_since: None,
            saw_snapshot: false,
            sent_input: false,
            tick_hz: DEFAULT_TICK_HZ,
            rules: MovementRules::default(),
            welcomed: false,
            receiver: SnapshotReceiver::new(),
            predictor: None,
            reconciled: false,
            velocity: Vec2::ZERO,
            inventory: None,
            inventory_history: InventoryHistory::default(),
            next_move: None,
            next_turn: start_at,
            next_chat: None,
            next_inventory: None,
            session_end: None,
            next_rtt_sample: None,
            packets_at_rtt_sample: 0,
            verifier: ChatVerifier::new(account),
            stopping: false,
            unsent: false,
            ctx,
        }
    }

    /// When the bot first wants to run.
    pub(crate) fn start_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { start_at } => Some(start_at),
            _ => None,
        }
    }

    /// Finished for good.
    pub(crate) fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Done, with nothing left in a conditioned link to send: its worker
    /// may let go of it.
    pub(crate) fn is_finished(&self) -> bool {
        self.is_done() && self.link.as_ref().is_none_or(|l| l.up.in_flight() == 0)
    }

    /// The chat verifier (read at the end of the run).
    pub(crate) fn verifier(&self) -> &ChatVerifier {
        &self.verifier
    }

    /// The run is over: stop talking, wait for in-flight chat and
    /// inventory replies (bounded), then leave.
    pub(crate) fn stop(&mut self, now: Instant, stats: &mut WorkerStats) {
        self.stopping = true;
        match self.phase {
            Phase::Idle { .. } if !self.ever_connected => {
                // Its start came too late in the run (or its worker too
                // late to it): requested but never tried; counted so that
                // the failures still add up to requested minus connected.
                bump(
                    &mut stats.connect_failures,
                    "not_started_at_stop".to_owned(),
                );
                self.finish(now, stats);
            }
            Phase::Idle { .. } | Phase::Paused { .. } => self.finish(now, stats),
            Phase::Connecting => {
                // Still no answer when the run ends: the server did not take
                // this bot in time; say so rather than hide it. (A churning
                // bot that connected before is only between sessions.)
                if !self.ever_connected {
                    bump(
                        &mut stats.connect_failures,
                        "still_connecting_at_stop".to_owned(),
                    );
                }
                self.endpoint.disconnect(now, DisconnectReason::Closed);
                self.finish(now, stats);
            }
            Phase::Connected => self.begin_drain(now),
            Phase::Draining { .. } | Phase::Leaving { .. } | Phase::Done => {}
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        self.phase = Phase::Draining {
            deadline: now + self.ctx.drain_timeout,
        };
    }

    /// Ends the bot at once, its worker gone: counted as
    /// [`stop`](Self::stop) counts, without waiting for anything in flight
    /// (chat lines still awaited are lost).
    pub(crate) fn abandon(&mut self, now: Instant, stats: &mut WorkerStats) {
        self.stop(now, stats);
        if !self.is_done() {
            self.finish(now, stats);
        }
    }

    /// The bot could not start (no socket): counted once under `reason`,
    /// and done.
    pub(crate) fn fail_to_start(&mut self, reason: String, now: Instant, stats: &mut WorkerStats) {
        bump(&mut stats.connect_failures, reason);
        self.stopping = true;
        self.finish(now, stats);
    }

    fn finish(&mut self, now: Instant, stats: &mut WorkerStats) {
        self.end_session(now, stats);
        self.phase = Phase::Done;
    }

    /// Ends the current connection's bookkeeping (idempotent).
    fn end_session(&mut self, now: Instant, stats: &mut WorkerStats) {
        if let Some(since) = self.connected_since.take() {
            stats.connected_time += now.saturating_duration_since(since);
            stats.connected_now = stats.connected_now.saturating_sub(1);
            if !self.saw_snapshot && self.sent_input {
                stats.no_snapshots += 1;
            }
            self.verifier.end_connection();
            if let Some(inventory) = self.inventory.take() {
                let (counts, history) = inventory.end_connection();
                stats.inventory.add(&counts);
                self.inventory_history = history;
            }
        }
    }

    /// One datagram read from the socket.
    pub(crate) fn on_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &mut [u8],
        scratch: &mut Scratch,
        stats: &mut WorkerStats,
    ) {
        if from != self.ctx.server {
            return;
        }
        if self.connected_since.is_some() {
            stats.bytes_down += data.len() as u64;
        }
        match self.link.as_mut() {
            Some(link) => link.down.send(now, data),
            // Connected (its `Connected` event handled, so nothing waits in
            // its endpoint's inbox): the messages are handled now, while
            // this bot's state is warm. The connection's end still comes
            // as an event.
            None if self.phase == Phase::Connected => {
                self.endpoint
                    .handle_datagram_into(now, from, data, &mut scratch.messages);
                self.take_messages(now, scratch, stats);
            }
            None => self.endpoint.handle_datagram(now, from, data),
        }
    }

    /// One datagram read from the socket, handled at once
    /// ([`on_datagram`](Self::on_datagram), then
    /// [`after_receive`](Self::after_receive)): what the bot then asks for.
    pub(crate) fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &mut [u8],
        scratch: &mut Scratch,
        stats: &mut WorkerStats,
    ) -> AfterReceive {
        self.on_datagram(now, from, data, scratch, stats);
        self.after_receive(now, scratch, stats)
    }

    /// Handles the messages the datagrams read so far brought, as a game
    /// client does between its frames, and says whether that calls for a
    /// [`service`](Self::service) now. A connected bot that only received
    /// snapshots and chat lines has nothing to send until its next input
    /// (or the transport's next timer, e.g. a held acknowledgement): it
    /// waits for that instead of running a full pass for every datagram.
    pub(crate) fn after_receive(
        &mut self,
        now: Instant,
        scratch: &mut Scratch,
        stats: &mut WorkerStats,
    ) -> AfterReceive {
        // Handshakes, goodbyes and the conditioner's delays keep the plain path.
        if self.phase != Phase::Connected || self.link.is_some() {
            return AfterReceive::Service;
        }
        self.handle_events(now, scratch, stats);
        if self.phase != Phase::Connected || self.unsent {
            return AfterReceive::Service;
        }
        match self.endpoint.poll_timeout() {
            Some(at) if at > now => AfterReceive::WakeBy(at),
            _ => AfterReceive::Service,
        }
    }

    /// Runs everything due at `now` and sends what is ready. Returns when
    /// to call again (`None`: done).
    pub(crate) fn service(
        &mut self,
        now: Instant,
        out: &mut impl Outbox,
        tx: &mut [u8],
        scratch: &mut Scratch,
        stats: &mut WorkerStats,
    ) -> Option<Instant> {
        let server = self.ctx.server;
        if let Some(link) = self.link.as_mut() {
            // Each arrives when the link delivers it (with no latency, when
            // it was read), not at this service, later in the pass: its
            // wait would count in the round trip, and in no lateness.
            let datagram = &mut scratch.datagram;
            while let Some(due) = link.down.next_delivery().filter(|&due| due <= now)
                && link.down.poll_deliver(now, datagram)
            {
                self.endpoint.handle_datagram(due, server, datagram);
            }
        }
        match self.phase {
            Phase::Idle { start_at } | Phase::Paused { until: start_at } => {
                if now < start_at {
                    // What the last session left in a conditioned link
                    // (its goodbye) leaves at its time, not at the next
                    // session's start.
                    self.flush(now, out, tx, &mut scratch.datagram, stats);
                    let held = self.link.as_ref().and_then(|l| l.up.next_delivery());
                    return Some(held.map_or(start_at, |at| at.min(start_at)));
                }
                self.connect(now, stats);
            }
            Phase::Done => {
                // What ending left queued (a goodbye sent mid-handshake),
                // and what a conditioned link still holds, goes out before
                // the bot lets go of its socket.
                self.flush(now, out, tx, &mut scratch.datagram, stats);
                return self.hold_link(now);
            }
            _ => {}
        }
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        self.handle_events(now, scratch, stats);
        self.run_behaviours(now, &mut scratch.inputs, stats);
        self.advance_phase(now, stats);
        self.flush(now, out, tx, &mut scratch.datagram, stats);
        if matches!(self.phase, Phase::Leaving { .. }) {
            // Sending the goodbye ended the session (the server answers
            // nothing to it): its end is taken now, not at the leave's
            // deadline, which made a churn pause 2 s longer and held the
            // run's end as long.
            self.handle_events(now, scratch, stats);
        }
        if self.phase == Phase::Done {
            return self.hold_link(now);
        }
        self.next_wake()
    }

    /// A done bot's wait for what its conditioned link still holds (its
    /// goodbye): when to come back for the next of it, for at most
    /// [`LEAVE_TIMEOUT`] from the first call. Past that (a link of long
    /// latency), what is left is dropped with the link, as a network
    /// would lose it: the end of the run waits no longer.
    fn hold_link(&mut self, now: Instant) -> Option<Instant> {
        let link = self.link.as_ref()?;
        let until = *self.link_release.get_or_insert(now + LEAVE_TIMEOUT);
        match link.up.next_delivery() {
            Some(at) if at <= until => Some(at),
            _ => {
                self.link = None;
                None
            }
        }
    }

    fn connect(&mut self, now: Instant, stats: &mut WorkerStats) {
        let token = match self.ctx.minter.mint(self.account) {
            Ok(token) => token,
            Err(error) => {
                self.connect_failed(error, stats);
                return;
            }
        };
        match self.endpoint.connect(&token, now, unix_secs()) {
            Ok(()) => self.phase = Phase::Connecting,
            Err(error) => self.connect_failed(token_error_key(error).to_owned(), stats),
        }
    }

    /// A handshake failed for `reason`: the bot is done, counted as a bot
    /// that never connected or, if it had, as a failed reconnect.
    fn connect_failed(&mut self, reason: String, stats: &mut WorkerStats) {
        let failures = if self.ever_connected {
            &mut stats.reconnect_failures
        } else {
            &mut stats.connect_failures
        };
        bump(failures, reason);
        self.phase = Phase::Done;
    }

    fn handle_events(&mut self, now: Instant, scratch: &mut Scratch, stats: &mut WorkerStats) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                ClientEndpointEvent::Connected { .. } => {
                    if !self.ever_connected {
                        self.ever_connected = true;
                        stats.ever_connected += 1;
                    }
                    stats.connected_now += 1;
                    self.connected_since = Some(now);
                    self.phase = Phase::Connected;
                    self.saw_snapshot = false;
                    self.sent_input = false;
                    self.receiver = SnapshotReceiver::new();
                    self.predictor = None;
                    self.reconciled = false;
                    self.welcomed = false;
                    let scenario = &self.ctx.scenario;
                    self.inventory = scenario.inventory.as_ref().map(|_| {
                        let history = std::mem::take(&mut self.inventory_history);
                        InventoryBehaviour::new(self.account, first_request_id(), history)
                    });
                    self.next_move = scenario.wander.as_ref().map(|_| now);
                    self.next_chat = scenario
                        .chat
                        .as_ref()
                        .map(|c| now + random_secs(&mut self.rng, c.every_s));
                    self.next_inventory = scenario
                        .inventory
                        .as_ref()
                        .map(|i| now + random_secs(&mut self.rng, i.every_s));
                    self.session_end = scenario.churn.as_ref().map(|c| {
                        now + Duration::from_secs_f64(c.session_s * (0.5 + self.rng.unit()))
                    });
                    self.next_rtt_sample = Some(now + RTT_SAMPLE_EVERY);
                    // The new connection counts its packets from 0.
                    self.packets_at_rtt_sample = 0;
                }
                ClientEndpointEvent::Message { channel, payload } => {
                    scratch.messages.deliver(channel, payload);
                    self.take_messages(now, scratch, stats);
                }
                ClientEndpointEvent::Disconnected { reason } => {
                    self.on_disconnected(now, reason, stats);
                }
            }
        }
    }

    /// Handles the messages in `messages` (this bot's), then empties it.
    fn take_messages(&mut self, now: Instant, scratch: &mut Scratch, stats: &mut WorkerStats) {
        let Scratch {
            messages,
            snapshots,
            ..
        } = scratch;
        for (channel, payload) in messages.iter() {
            self.on_message(now, channel, payload, snapshots, stats);
        }
        messages.clear();
    }

    fn on_message(
        &mut self,
        now: Instant,
        channel: ChannelId,
        payload: &[u8],
        snapshots: &mut SnapshotScratch,
        stats: &mut WorkerStats,
    ) {
        if channel == channels::SNAPSHOT {
            self.saw_snapshot = true;
            apply_snapshot(
                &mut self.receiver,
                self.predictor.as_mut(),
                &mut self.reconciled,
                payload,
                snapshots,
                stats,
            );
            return;
        }
        let respond = self.phase == Phase::Connected;
        let mut reactions = Vec::new();
        match protocol::message_id(payload) {
            Some(ChatLine::ID) => {
                if let Some(line) = decode_counted::<ChatLine>(payload, stats) {
                    self.verifier.on_line(&line);
                }
            }
            Some(ChatRejected::ID) => {
                // Refusals by reason: each line's first answer, once (a
                // duplicate is the verifier's to count).
                if let Some(rejected) = decode_counted::<ChatRejected>(payload, stats)
                    && self.verifier.on_rejected(rejected.client_ref)
                {
                    bump(
                        &mut stats.chat_rejected,
                        snake_case(&format!("{:?}", rejected.reason)),
                    );
                }
            }
            Some(Welcome::ID) => {
                if let Some(welcome) = decode_counted::<Welcome>(payload, stats) {
                    self.tick_hz = welcome.tick_hz.max(1);
                    self.welcomed = true;
                    if welcome.rules.is_valid() {
                        self.rules = welcome.rules;
                    }
                    // The first inputs may have left before the welcome.
                    if let Some(predictor) = self.predictor.as_mut() {
                        predictor.set_rules(self.rules, tick_dt(self.tick_hz));
                    }
                }
            }
            Some(InventoryReply::ID) => {
                if let (Some(reply), Some(inv)) = (
                    decode_counted::<InventoryReply>(payload, stats),
                    self.inventory.as_mut(),
                ) {
                    reactions.extend(inv.on_reply(&reply, respond));
                }
            }
            Some(InventoryUpdate::ID) => {
                if let (Some(update), Some(inv)) = (
                    decode_counted::<InventoryUpdate>(payload, stats),
                    self.inventory.as_mut(),
                ) {
                    inv.on_update(&update);
                }
            }
            Some(TradeUpdate::ID) => {
                if let (Some(update), Some(inv)) = (
                    decode_counted::<TradeUpdate>(payload, stats),
                    self.inventory.as_mut(),
                ) {
                    reactions = inv.on_trade(&update, respond);
                }
            }
            Some(WorldItems::ID) => {
                if let (Some(items), Some(inv)) = (
                    decode_counted::<WorldItems>(payload, stats),
                    self.inventory.as_mut(),
                ) {
                    inv.on_world(now, &items);
                }
            }
            // Emotes, notices: nothing to verify.
            _ => {}
        }
        for request in reactions {
            self.send_inventory(&request, stats);
        }
    }

    fn on_disconnected(&mut self, now: Instant, reason: DisconnectReason, stats: &mut WorkerStats) {
        match self.phase {
            Phase::Connecting => self.connect_failed(reason_key(reason), stats),
            Phase::Connected | Phase::Draining { .. } => {
                bump(&mut stats.disconnects, reason_key(reason));
                self.finish(now, stats);
            }
            Phase::Leaving { .. } if reason != DisconnectReason::Closed => {
                // Its own goodbye ends it `Closed`; another reason is the
                // end the transport met before the goodbye went (a timeout
                // at the drain's deadline, a kick): a drop, which ends the
                // bot's run as one while connected does (a bot is counted
                // dropped once at most).
                bump(&mut stats.disconnects, reason_key(reason));
                self.finish(now, stats);
            }
            Phase::Leaving { .. } => {
                self.end_session(now, stats);
                self.phase = match &self.ctx.scenario.churn {
                    Some(churn) if !self.stopping => {
                        // A new connection: a new endpoint, fresh state.
                        self.endpoint =
                            ClientEndpoint::new(PROTOCOL_ID, Arc::clone(&self.ctx.transport));
                        Phase::Paused {
                            until: now + Duration::from_secs_f64(churn.pause_s),
                        }
                    }
                    _ => Phase::Done,
                };
            }
            Phase::Idle { .. } | Phase::Paused { .. } | Phase::Done => {}
        }
    }

    /// Sends an inventory request. One the transport refuses (counted in
    /// `send_errors`) is forgotten: neither sent nor awaited.
    fn send_inventory(&mut self, request: &InventoryRequest, stats: &mut WorkerStats) {
        let sent = protocol::encode(request)
            .is_ok_and(|payload| self.send(channels::INVENTORY, payload, stats));
        if !sent && let Some(inventory) = self.inventory.as_mut() {
            inventory.unsend(request.request_id);
        }
    }

    fn send(
        &mut self,
        channel: shared::transport::ChannelId,
        payload: Bytes,
        stats: &mut WorkerStats,
    ) -> bool {
        match self.endpoint.send(channel, payload) {
            Ok(()) => {
                self.unsent = true;
                true
            }
            Err(_) => {
                stats.send_errors += 1;
                false
            }
        }
    }

    fn run_behaviours(&mut self, now: Instant, inputs: &mut EncodeBuffer, stats: &mut WorkerStats) {
        if self.phase != Phase::Connected {
            return;
        }
        if let (Some(at), Some(wander)) = (self.next_move, self.ctx.scenario.wander.clone())
            && at <= now
        {
            if now >= self.next_turn {
                let angle = self.rng.unit() as f32 * std::f32::consts::TAU;
                self.velocity = Vec2::from_angle(angle) * wander.speed;
                self.next_turn = now + Duration::from_secs_f64(wander.turn_every_s);
            }
            let dt = tick_dt(self.tick_hz);
            let predictor = self
                .predictor
                .get_or_insert_with(|| Predictor::new(self.rules, dt, Vec2::ZERO));
            let here = predictor.position();
            let seek = self.inventory.as_ref().and_then(InventoryBehaviour::seek);
            let velocity = match (seek, &self.ctx.scenario.inventory) {
                (Some(target), Some(inv)) if here.distance(target) > ARRIVED => {
                    (target - here).normalize_or_zero() * inv.seek_speed
                }
                (Some(_), _) => Vec2::ZERO,
                (None, _) => self.velocity,
            };
            let velocity = allowed_velocity(self.welcomed.then_some(&self.rules), velocity);
            let input = predictor.input(velocity, self.receiver.ack());
            let me = self.receiver.own_position();
            if let Some(request) = self.inventory.as_mut().and_then(|i| i.poll_arrival(me)) {
                self.send_inventory(&request, stats);
            }
            if let Ok(payload) = inputs.encode(&input)
                && self.send(channels::MOVEMENT, payload, stats)
            {
                stats.moves_sent += 1;
                self.sent_input = true;
            }
            let period = move_period(wander.hz, self.tick_hz);
            let next = next_beat(at, period, now);
            stats.moves_skipped += beats_skipped(at, next, period);
            self.next_move = Some(next);
        }
        if let (Some(at), Some(chat)) = (self.next_chat, self.ctx.scenario.chat.clone())
            && at <= now
        {
            self.next_chat = Some(next_beat(at, Duration::from_secs_f64(chat.every_s), now));
            let scope = match chat.pick(self.rng.unit()) {
                ChatScopeKind::Global => ChatScope::Global,
                ChatScopeKind::Nearby => ChatScope::Nearby,
                ChatScopeKind::Whisper => ChatScope::WhisperId(self.other_bot()),
            };
            match self.verifier.next_line("hello from a load-test bot") {
                None => stats.chat_skipped += 1,
                Some((client_ref, text)) => {
                    let send = ChatSend {
                        client_ref,
                        scope,
                        text,
                    };
                    let sent = protocol::encode(&send)
                        .is_ok_and(|payload| self.send(channels::CHAT, payload, stats));
                    if !sent {
                        self.verifier.unsend_last();
                    }
                }
            }
        }
        if let (Some(at), Some(inventory)) =
            (self.next_inventory, self.ctx.scenario.inventory.clone())
            && at <= now
        {
            self.next_inventory = Some(next_beat(
                at,
                Duration::from_secs_f64(inventory.every_s),
                now,
            ));
            let kind = inventory.pick_op(self.rng.unit());
            let partner = self.other_bot();
            let draws = [self.rng.unit(), self.rng.unit()];
            let me = self.receiver.own_position();
            let request = self
                .inventory
                .as_mut()
                .and_then(|inv| inv.next(now, kind, me, partner, draws));
            if let Some(request) = request {
                self.send_inventory(&request, stats);
            }
        }
        if let Some(at) = self.next_rtt_sample
            && at <= now
        {
            self.next_rtt_sample = Some(now + RTT_SAMPLE_EVERY);
            // Zero: the transport has no measurement yet (a stalled server,
            // a round trip over a second); recording it would pull the
            // percentiles down. Nothing received since the last sample: the
            // estimate is that sample's (a server gone silent leaves it as
            // it was), and recording it again would hide the silence.
            if let Some(conn) = self.endpoint.connection_stats()
                && conn.rtt > Duration::ZERO
                && conn.packets_received > self.packets_at_rtt_sample
            {
                self.packets_at_rtt_sample = conn.packets_received;
                let us = u64::try_from(conn.rtt.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let _ = stats.rtt_us.record(us);
                if now >= self.ctx.steady_from {
                    let _ = stats.rtt_steady_us.record(us);
                }
            }
        }
        if let Some(end) = self.session_end
            && end <= now
        {
            self.begin_drain(now);
        }
    }

    /// Another bot of the swarm (or itself in a swarm of one).
    fn other_bot(&mut self) -> u64 {
        let bots = self.ctx.bots.max(1);
        if bots == 1 {
            return self.account;
        }
        let me = self.account - self.ctx.first_account;
        let other = (me + 1 + self.rng.next_u64() % (bots - 1)) % bots;
        self.ctx.first_account + other
    }

    fn advance_phase(&mut self, now: Instant, stats: &mut WorkerStats) {
        match self.phase {
            Phase::Draining { deadline } => {
                let waiting = self.verifier.awaited() > 0
                    || self.inventory.as_ref().is_some_and(|i| i.pending() > 0);
                if !self.endpoint.is_connected() && now < deadline {
                    // Ended by the transport (a timeout, a violation) while
                    // draining: its Disconnected event comes and counts it
                    // as a disconnect, not a goodbye.
                } else if !waiting || now >= deadline {
                    self.endpoint.disconnect(now, DisconnectReason::Closed);
                    self.phase = Phase::Leaving {
                        deadline: now + LEAVE_TIMEOUT,
                    };
                    self.end_session(now, stats);
                }
            }
            Phase::Leaving { deadline } if now >= deadline => {
                self.on_disconnected(now, DisconnectReason::Closed, stats);
            }
            _ => {}
        }
    }

    fn flush(
        &mut self,
        now: Instant,
        out: &mut impl Outbox,
        tx: &mut [u8],
        scratch: &mut Vec<u8>,
        stats: &mut WorkerStats,
    ) {
        self.unsent = false;
        let counted = self.connected_since.is_some();
        let mut sent = 0;
        while let Some(transmit) = self.endpoint.poll_transmit(now, tx) {
            let data = &tx[..transmit.len];
            match self.link.as_mut() {
                Some(link) => link.up.send(now, data),
                None => {
                    if out.send(data, counted) {
                        sent += data.len() as u64;
                    } else {
                        stats.send_drops += 1;
                    }
                }
            }
        }
        if let Some(link) = self.link.as_mut() {
            while link.up.poll_deliver(now, scratch) {
                if out.send(scratch, counted) {
                    sent += scratch.len() as u64;
                } else {
                    stats.send_drops += 1;
                }
            }
        }
        if counted {
            stats.bytes_up += sent;
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Done => return None,
            Phase::Idle { start_at } => Some(start_at),
            Phase::Paused { until } => Some(until),
            Phase::Draining { deadline } | Phase::Leaving { deadline } => Some(deadline),
            Phase::Connecting => None,
            Phase::Connected => [
                self.next_move,
                self.next_chat,
                self.next_inventory,
                self.session_end,
                self.next_rtt_sample,
            ]
            .into_iter()
            .flatten()
            .min(),
        };
        let link = self.link.as_ref().and_then(|l| {
            [l.up.next_delivery(), l.down.next_delivery()]
                .into_iter()
                .flatten()
                .min()
        });
        [phase, self.endpoint.poll_timeout(), link]
            .into_iter()
            .flatten()
            .min()
            // Always come back eventually, whatever the timers say.
            .or(Some(Instant::now() + Duration::from_millis(500)))
    }
}

/// `velocity` as a server with `rules` takes it without a violation:
/// clamped to its `max_speed` (it flags any input faster than that, and
/// scenarios may ask for more); standing still while the rules are not
/// known yet (`None`: its welcome has not arrived), which still starts the
/// session's snapshots.
fn allowed_velocity(rules: Option<&MovementRules>, velocity: Vec2) -> Vec2 {
    rules
        .and_then(|rules| rules.clamp_velocity(velocity))
        .unwrap_or(Vec2::ZERO)
}

/// Applies one snapshot to `receiver` and reconciles the prediction with
/// it; failures are counted by reason.
fn apply_snapshot(
    receiver: &mut SnapshotReceiver,
    predictor: Option<&mut Predictor>,
    reconciled: &mut bool,
    payload: &[u8],
    scratch: &mut SnapshotScratch,
    stats: &mut WorkerStats,
) {
    if scratch.snapshot.decode_from(payload).is_err() {
        bump(&mut stats.snapshot_errors, "decode".to_owned());
        return;
    }
    match receiver.apply(&scratch.snapshot, &mut scratch.lists) {
        Ok(_) => {
            stats.snapshots_applied += 1;
            if let (Some(predictor), Some(own)) = (predictor, receiver.own_position()) {
                let correction = predictor.reconcile(own, receiver.last_input());
                // The first one only moves the guess (the origin) to the
                // spawn point: not a misprediction.
                if *reconciled {
                    stats.max_correction_m = stats.max_correction_m.max(correction);
                }
                *reconciled = true;
            }
        }
        Err(error) => {
            let key = match error {
                ApplyError::Stale(_) => "stale",
                ApplyError::MissingBaseline(_) => "missing_baseline",
                ApplyError::Malformed => "malformed",
            };
            bump(&mut stats.snapshot_errors, key.to_owned());
        }
    }
}

/// The first inventory request id of a new session: milliseconds since
/// the Unix epoch × 2^16, so a session's ids never repeat an earlier
/// session's (of this run or an earlier one) unless that session sent more
/// than 65,536 requests per millisecond between the two starts. The server
/// remembers applied ids per account across restarts, and answers a
/// repeated id with the old reply instead of applying it. Within a run,
/// [`InventoryBehaviour::new`] also starts past the bot's earlier
/// sessions' ids, should the clock step back.
fn first_request_id() -> u64 {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    u64::try_from(millis).unwrap_or(u64::MAX >> 16) << 16
}

/// `payload` as a `M`; one this bot cannot decode is counted, not dropped
/// without a trace (snapshots count theirs in `snapshot_errors`).
fn decode_counted<M: protocol::NetMessage>(payload: &[u8], stats: &mut WorkerStats) -> Option<M> {
    match protocol::decode::<M>(payload) {
        Ok(message) => Some(message),
        Err(_) => {
            stats.decode_errors += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use shared::endpoint::{EndpointEvent, ServerEndpoint, ServerEndpointConfig};
    use shared::io::system_rng;
    use shared::netcode::{ClientIndex, ServerConfig};
    use shared::protocol::inventory::{InventorySnapshot, ItemId, ItemStack};
    use shared::protocol::movement::{EntityAdded, MoveInput};

    use super::*;
    use crate::report;
    use crate::token::TokenMinter;

    #[test]
    fn a_late_beat_keeps_its_phase_and_queues_no_backlog() {
        let start = Instant::now();
        let period = Duration::from_millis(33);
        let ms = |v| start + Duration::from_millis(v);
        assert_eq!(next_beat(ms(0), period, ms(10)), ms(33), "on time");
        // Two bots 10 ms apart, both served only after a 100 ms stall:
        // each resumes on its own beat, not both at the end of the stall.
        let (a, b) = (
            next_beat(ms(0), period, ms(110)),
            next_beat(ms(10), period, ms(110)),
        );
        assert_eq!((a, b), (ms(132), ms(142)));
        assert_eq!(
            next_beat(ms(0), period, ms(33)),
            ms(66),
            "due now: the next beat"
        );
    }

    /// Beats a bot was served too late for are skipped, and counted: the
    /// inputs sent fell short of the scenario's rate with nothing saying so.
    #[test]
    fn inputs_skipped_by_a_late_service_are_counted() {
        let start = Instant::now();
        let period = Duration::from_millis(33);
        let ms = |v| start + Duration::from_millis(v);
        // The beat of 33 ms served at 110 ms: those of 66 and 99 are gone.
        let next = next_beat(ms(33), period, ms(110));
        assert_eq!((next, beats_skipped(ms(33), next, period)), (ms(132), 2));
        let on_time = next_beat(ms(33), period, ms(40));
        assert_eq!(beats_skipped(ms(33), on_time, period), 0);
        // A bot served on time skips none; one stalled for 200 ms, about 6.
        let mut pair = Pair::new();
        pair.connect();
        for _ in 0..30 {
            pair.now += Duration::from_millis(11);
            pair.service();
            pair.deliver();
        }
        assert_eq!(pair.stats.moves_skipped, 0);
        pair.now += Duration::from_millis(200);
        pair.service();
        assert!(
            (5..=6).contains(&pair.stats.moves_skipped),
            "{}",
            pair.stats.moves_skipped
        );
    }

    #[test]
    fn inputs_go_no_faster_than_the_server_ticks() {
        let hz = |period: Duration| (1.0 / period.as_secs_f64()).round();
        assert_eq!(hz(move_period(30.0, 30)), 30.0);
        assert_eq!(hz(move_period(30.0, 20)), 20.0, "a 20 Hz server");
        assert_eq!(hz(move_period(10.0, 30)), 10.0, "a slower scenario");
        assert_eq!(hz(move_period(30.0, 0)), 1.0, "no rate: one a second");
    }

    /// Datagrams a bot queued.
    #[derive(Default)]
    struct Sent(Vec<Vec<u8>>);

    impl Outbox for Sent {
        fn send(&mut self, data: &[u8], _: bool) -> bool {
            self.0.push(data.to_vec());
            true
        }
    }

    /// One bot of `default.toml` and a server endpoint, in memory.
    struct Pair {
        bot: Bot,
        server: ServerEndpoint,
        server_addr: SocketAddr,
        bot_addr: SocketAddr,
        slot: Option<ClientIndex>,
        /// The movement inputs the server received.
        inputs: Vec<MoveInput>,
        /// The inventory requests the server received and has not answered.
        requests: Vec<InventoryRequest>,
        stats: WorkerStats,
        scratch: Scratch,
        now: Instant,
        buf: Vec<u8>,
    }

    impl Pair {
        fn new() -> Self {
            Self::with_scenario(
                include_str!("../../assets/scenarios/default.toml"),
                "default.toml",
            )
        }

        fn with_scenario(toml: &str, name: &str) -> Self {
            Self::build(toml, name, Duration::ZERO, None)
        }

        /// One bot of `default.toml` behind a link conditioner.
        fn with_link(link: LinkConfig) -> Self {
            Self::build(
                include_str!("../../assets/scenarios/default.toml"),
                "default.toml",
                Duration::ZERO,
                Some(link),
            )
        }

        /// One bot of `default.toml` in a run whose ramp ends `ramp` after
        /// the bot's start.
        fn with_ramp(ramp: Duration) -> Self {
            Self::build(
                include_str!("../../assets/scenarios/default.toml"),
                "default.toml",
                ramp,
                None,
            )
        }

        fn build(toml: &str, name: &str, ramp: Duration, link: Option<LinkConfig>) -> Self {
            let now = Instant::now();
            let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 7_777));
            let key = shared::keys::dev_key();
            let netcode = ServerConfig::new(PROTOCOL_ID, key, vec![server_addr]);
            let config =
                ServerEndpointConfig::new(netcode, shared::protocol::channels::transport_config());
            let server = ServerEndpoint::new(config, &mut system_rng()).unwrap();
            let scenario = Scenario::parse(toml, name).unwrap();
            let ctx = Arc::new(BotContext {
                server: server_addr,
                minter: TokenMinter::dev(server_addr),
                scenario,
                link,
                first_account: 1,
                bots: 1,
                drain_timeout: Duration::from_secs(2),
                transport: Arc::new(shared::protocol::channels::transport_config()),
                steady_from: now + ramp,
            });
            Self {
                bot: Bot::new(ctx, 1, now, 7),
                server,
                server_addr,
                bot_addr: SocketAddr::from((Ipv4Addr::new(127, 1, 0, 1), 40_000)),
                slot: None,
                inputs: Vec::new(),
                requests: Vec::new(),
                stats: WorkerStats::new(),
                scratch: Scratch::new(),
                now,
                buf: vec![0; MAX_PACKET_BYTES],
            }
        }

        /// The bot's service; its datagrams reach the server.
        fn service(&mut self) -> Option<Instant> {
            let mut sent = Sent::default();
            let wake = self.bot.service(
                self.now,
                &mut sent,
                &mut self.buf.clone(),
                &mut self.scratch,
                &mut self.stats,
            );
            for mut datagram in sent.0 {
                self.server
                    .handle_datagram(self.now, unix_secs(), self.bot_addr, &mut datagram);
                while let Some(event) = self.server.poll_event() {
                    match event {
                        EndpointEvent::Connected { client, .. } => self.slot = Some(client),
                        EndpointEvent::Message {
                            channel, payload, ..
                        } if channel == channels::MOVEMENT => {
                            self.inputs
                                .extend(protocol::decode::<MoveInput>(payload).ok());
                        }
                        EndpointEvent::Message {
                            channel, payload, ..
                        } if channel == channels::INVENTORY => {
                            self.requests
                                .extend(protocol::decode::<InventoryRequest>(payload).ok());
                        }
                        _ => {}
                    }
                }
            }
            wake
        }

        /// Hands the server's datagrams to the bot.
        fn receive(&mut self) {
            while let Some(transmit) = self.server.poll_transmit(self.now, &mut self.buf) {
                let mut datagram = self.buf[..transmit.len].to_vec();
                self.bot.on_datagram(
                    self.now,
                    self.server_addr,
                    &mut datagram,
                    &mut self.scratch,
                    &mut self.stats,
                );
            }
        }

        /// Hands the server's datagrams to the bot; what it then asks for.
        fn deliver(&mut self) -> AfterReceive {
            self.receive();
            self.bot
                .after_receive(self.now, &mut self.scratch, &mut self.stats)
        }

        /// Answers every inventory request received so far with `state`;
        /// returns how many.
        fn answer_inventory(&mut self, state: &InventorySnapshot) -> usize {
            let slot = self.slot.expect("the bot connected");
            let requests = std::mem::take(&mut self.requests);
            for request in &requests {
                let reply = InventoryReply {
                    request_id: request.request_id,
                    result: Ok(state.clone()),
                    trade: None,
                };
                let payload = protocol::encode(&reply).unwrap();
                self.server
                    .send(self.now, slot, channels::INVENTORY, payload)
                    .unwrap();
            }
            requests.len()
        }

        /// The report's `connected_not_dropped` of this bot's counts.
        fn stayed(&self) -> u64 {
            report::connected_not_dropped(
                self.stats.ever_connected,
                &self.stats.disconnects,
                &self.stats.reconnect_failures,
            )
        }

        fn connect(&mut self) {
            for _ in 0..100 {
                self.service();
                self.deliver();
                self.now += Duration::from_millis(5);
                if self.bot.phase == Phase::Connected {
                    self.service();
                    return;
                }
            }
            panic!("the bot did not connect: {:?}", self.bot.phase);
        }
    }

    /// A bot stopped while its connection response is out (the server has
    /// taken it in, the bot not heard so yet) says goodbye: its last
    /// service sends the disconnect packets (they stayed queued, the bot
    /// done, and the server held the slot until its timeout).
    #[test]
    fn a_bot_stopped_mid_handshake_says_goodbye() {
        let mut pair = Pair::new();
        pair.service();
        pair.deliver();
        pair.now += Duration::from_millis(5);
        pair.service();
        assert!(pair.slot.is_some(), "the server took the response");
        assert_eq!(pair.server.connected_clients(), 1);
        // The server's keep-alive is lost: the bot is still connecting.
        while pair.server.poll_transmit(pair.now, &mut pair.buf).is_some() {}
        assert_eq!(pair.bot.phase, Phase::Connecting);
        pair.bot.stop(pair.now, &mut pair.stats);
        pair.service();
        pair.server.handle_timeout(pair.now);
        assert_eq!(
            pair.server.connected_clients(),
            0,
            "the server never heard the goodbye"
        );
    }

    /// Behind a link conditioner, the goodbye packets a bot sends as it
    /// ends wait in the link: they still leave, each at its time, before
    /// the bot lets go of its socket (it let go at once, and the server
    /// held the slot until its timeout).
    #[test]
    fn a_conditioned_bots_goodbye_leaves_before_it_lets_go() {
        let link = LinkConfig::lossy(0.0, Duration::from_millis(20), Duration::from_millis(10));
        let mut pair = Pair::with_link(link);
        pair.connect();
        assert_eq!(pair.server.connected_clients(), 1);
        pair.bot.stop(pair.now, &mut pair.stats);
        let mut done = false;
        for _ in 0..1_000 {
            pair.receive();
            if pair.service().is_none() {
                done = true;
                break;
            }
            pair.now += Duration::from_millis(5);
        }
        assert!(done, "the bot never ended");
        let held = pair.bot.link.as_ref().map_or(0, |l| l.up.in_flight());
        assert_eq!(held, 0, "goodbyes left in the link");
        pair.server.handle_timeout(pair.now);
        assert_eq!(pair.server.connected_clients(), 0, "no goodbye arrived");
    }

    /// A session the transport ended (a timeout) as the drain's deadline
    /// passed, so that the bot said its goodbye to an ended connection,
    /// is a drop: it was counted as a bot leaving on its own.
    #[test]
    fn a_drop_met_while_leaving_is_counted() {
        // A churning bot, which would otherwise come back.
        let mut pair = Pair::with_scenario(
            include_str!("../../assets/scenarios/churn.toml"),
            "churn.toml",
        );
        pair.connect();
        let deadline = pair.now + LEAVE_TIMEOUT;
        pair.bot.phase = Phase::Leaving { deadline };
        (pair.bot).on_disconnected(pair.now, DisconnectReason::Timeout, &mut pair.stats);
        assert_eq!(
            pair.stats.disconnects.get("timeout"),
            Some(&1),
            "{:?}",
            pair.stats.disconnects
        );
        // Its run ends there: dropped once at most.
        assert!(pair.bot.is_done(), "{:?}", pair.bot.phase);
        let mut pair = Pair::new();
        pair.connect();
        pair.bot.phase = Phase::Leaving { deadline };
        (pair.bot).on_disconnected(pair.now, DisconnectReason::Closed, &mut pair.stats);
        assert!(
            pair.stats.disconnects.is_empty(),
            "its own goodbye is no drop"
        );
    }

    /// A link whose latency is longer than the leave timeout is not waited
    /// for: what it still holds when the bot is done is dropped, and the
    /// end of the run waits no longer than the timeout for it.
    #[test]
    fn a_done_bot_waits_for_its_link_no_longer_than_the_leave_timeout() {
        let link = LinkConfig::lossy(0.0, Duration::from_secs(600), Duration::ZERO);
        let mut pair = Pair::with_link(link);
        pair.service();
        pair.now += Duration::from_millis(5);
        pair.bot.stop(pair.now, &mut pair.stats);
        let stopped = pair.now;
        while pair.service().is_some() {
            pair.now += Duration::from_millis(100);
            assert!(
                pair.now - stopped <= LEAVE_TIMEOUT * 2,
                "still waiting on the link"
            );
        }
        assert!(pair.bot.is_finished());
    }

    #[test]
    fn a_bot_that_only_received_a_snapshot_waits_for_its_next_input() {
        let mut pair = Pair::new();
        pair.connect();
        let slot = pair.slot.expect("the server saw the bot connect");
        let snapshot = Snapshot {
            tick: 1,
            baseline_age: 0,
            last_input: 0,
            you: 5,
            id_base: 0,
            removed: Vec::new(),
            added: vec![EntityAdded {
                id_gap: 5,
                x: 64,
                y: 32,
            }],
            moved: Vec::new(),
        };
        pair.now += Duration::from_millis(1);
        let payload = protocol::encode(&snapshot).unwrap();
        pair.server
            .send(pair.now, slot, channels::SNAPSHOT, payload)
            .unwrap();
        let after = pair.deliver();
        // Applied at once, and the bot's frame waits for its schedule.
        assert_eq!(pair.stats.snapshots_applied, 1);
        assert_eq!(pair.bot.receiver.own_position(), Some(Vec2::new(2.0, 1.0)));
        match after {
            AfterReceive::WakeBy(at) => {
                assert!(at > pair.now, "{at:?} is not after {:?}", pair.now)
            }
            AfterReceive::Service => panic!("a snapshot alone asked for a service"),
        }
    }

    #[test]
    fn a_bot_with_something_to_send_or_a_lost_connection_is_serviced_now() {
        let mut pair = Pair::new();
        pair.connect();
        let slot = pair.slot.expect("the server saw the bot connect");
        // A message queued after the datagram was handled (as a reaction
        // to it would be) must go out in this pass.
        pair.now += Duration::from_millis(1);
        pair.server
            .send(pair.now, slot, channels::SNAPSHOT, Bytes::from_static(b"x"))
            .unwrap();
        pair.receive();
        assert!(
            pair.bot
                .send(channels::CHAT, Bytes::from_static(b"hi"), &mut pair.stats)
        );
        assert_eq!(
            pair.bot
                .after_receive(pair.now, &mut pair.scratch, &mut pair.stats),
            AfterReceive::Service
        );
        pair.service();
        // The server closes the connection: the bot must notice now.
        pair.now += Duration::from_millis(1);
        pair.server
            .disconnect(pair.now, slot, DisconnectReason::Closed);
        assert_eq!(pair.deliver(), AfterReceive::Service);
        assert_eq!(
            pair.bot.service(
                pair.now,
                &mut Sent::default(),
                &mut pair.buf,
                &mut pair.scratch,
                &mut pair.stats
            ),
            None
        );
    }

    #[test]
    fn only_connected_traffic_and_measured_round_trips_are_counted() {
        let mut pair = Pair::new();
        pair.connect();
        // The handshake (a 1,078-byte request at least) is not in the
        // bandwidth: its denominator is connected time.
        assert!(pair.stats.bytes_up > 0);
        assert!(pair.stats.bytes_up < 1_000, "{}", pair.stats.bytes_up);
        // No packet of the connection acknowledged yet: the transport has
        // no round trip, and a sample of it would read as 1 µs.
        assert_eq!(
            pair.bot.endpoint.connection_stats().unwrap().rtt,
            Duration::ZERO
        );
        pair.now += Duration::from_millis(1_100);
        pair.service();
        assert!(pair.stats.rtt_us.is_empty(), "{}", pair.stats.rtt_us.len());
    }

    /// The ramp ends 1.5 s after the bot's start: its sample a second
    /// after connecting is the connect storm's, the next one the steady
    /// state's too.
    #[test]
    fn only_rtt_samples_after_the_ramp_are_steady() {
        let mut pair = Pair::with_ramp(Duration::from_millis(1_500));
        pair.connect();
        let connected = pair.now;
        let run_until = |pair: &mut Pair, at: Instant| {
            // A round trip of 5 ms, the server's held acknowledgements
            // included.
            while pair.now < at {
                pair.service();
                pair.now += Duration::from_millis(5);
                pair.server.handle_timeout(pair.now);
                pair.deliver();
            }
        };
        run_until(&mut pair, connected + Duration::from_millis(1_050));
        assert_eq!(pair.stats.rtt_us.len(), 1, "a round trip was measured");
        assert!(pair.stats.rtt_steady_us.is_empty(), "sampled in the ramp");
        run_until(&mut pair, connected + Duration::from_millis(2_050));
        assert_eq!(pair.stats.rtt_us.len(), 2);
        assert_eq!(pair.stats.rtt_steady_us.len(), 1, "sampled after the ramp");
    }

    /// A server gone silent adds no RTT samples: the transport's estimate
    /// stays as it was while nothing is acknowledged, and each second's
    /// sample of it until the timeout was a healthy-looking round trip.
    #[test]
    fn a_silent_server_adds_no_rtt_samples() {
        let mut pair = Pair::with_ramp(Duration::ZERO);
        pair.connect();
        let connected = pair.now;
        while pair.now < connected + Duration::from_millis(1_050) {
            pair.service();
            pair.now += Duration::from_millis(5);
            pair.server.handle_timeout(pair.now);
            pair.deliver();
        }
        assert_eq!(pair.stats.rtt_us.len(), 1, "a round trip was measured");
        // The server stops answering; the bot goes on for five seconds.
        for _ in 0..500 {
            pair.service();
            pair.now += Duration::from_millis(10);
        }
        // One more at most: what arrived between that sample and the
        // silence is a second's measurement.
        assert!(
            pair.stats.rtt_us.len() <= 2,
            "{} samples of a server silent for five seconds",
            pair.stats.rtt_us.len()
        );
    }

    /// A churning bot's next session measures round trips from its first
    /// second on: its new connection's packet count starts again from 0
    /// (a bar left at the last session's count took no sample until the
    /// new one had received more).
    #[test]
    fn a_churning_bots_next_session_is_sampled_from_its_start() {
        let mut pair = Pair::with_scenario(
            include_str!("../../assets/scenarios/churn.toml"),
            "churn.toml",
        );
        pair.connect();
        let step = |pair: &mut Pair| {
            pair.service();
            pair.now += Duration::from_millis(10);
            pair.server.handle_timeout(pair.now);
            pair.deliver();
        };
        while !matches!(pair.bot.phase, Phase::Paused { .. }) {
            assert!(pair.stats.ever_connected == 1, "{:?}", pair.bot.phase);
            step(&mut pair);
        }
        let first = pair.stats.rtt_us.len();
        assert!(first >= 9, "{first} samples of the first session");
        while pair.bot.phase != Phase::Connected {
            step(&mut pair);
        }
        let back = pair.now;
        while pair.now < back + Duration::from_millis(2_050) {
            step(&mut pair);
        }
        assert!(
            pair.stats.rtt_us.len() >= first + 2,
            "{} samples after the next session's first two seconds, {first} before it",
            pair.stats.rtt_us.len()
        );
    }

    /// The server keeps an inventory's version and contents across a
    /// player's sessions: a churning bot whose next session is sent an
    /// older state than its last one was (here the next session's first
    /// `List`) has found a server that lost an acknowledged change, not a
    /// fresh start.
    #[test]
    fn a_churning_bot_notices_an_inventory_older_than_its_last_session_was_sent() {
        let mut pair = Pair::with_scenario(
            "name = \"churn-inventory\"\n\
             [wander]\nhz = 30.0\nspeed = 1.0\nturn_every_s = 1.0\n\
             [inventory]\nevery_s = 0.1\ndrop = 1\n\
             [churn]\nsession_s = 1.0\npause_s = 0.1\n",
            "churn-inventory.toml",
        );
        let state = |version| InventorySnapshot {
            version,
            slots: vec![
                Some(ItemStack {
                    item: ItemId(3),
                    count: 4,
                }),
                None,
            ],
        };
        pair.connect();
        // Answered in the first session at version 5, in the second at 4.
        let mut answered = [0; 2];
        let mut session = 0;
        for _ in 0..2_000 {
            if session == 1 && answered[1] > 0 {
                break;
            }
            pair.service();
            if matches!(pair.bot.phase, Phase::Connected | Phase::Draining { .. }) {
                answered[session] += pair.answer_inventory(&state(5 - session as u64));
            }
            pair.now += Duration::from_millis(10);
            pair.server.handle_timeout(pair.now);
            pair.deliver();
            if matches!(pair.bot.phase, Phase::Paused { .. }) {
                session = 1;
                pair.requests.clear();
            }
        }
        assert!(answered[0] > 0 && answered[1] > 0, "{answered:?}");
        let now = pair.now;
        pair.bot.stop(now, &mut pair.stats);
        run_to_done(&mut pair);
        let inventory = &pair.stats.inventory;
        assert!(inventory.regressed >= 1, "{inventory:?}");
        assert_eq!(inventory.inconsistent, 0, "{inventory:?}");
    }

    /// A scenario faster than the server allows: every input the bot
    /// sends stays within the server's `max_speed` (the server flags any
    /// input above it as a speed violation), from the first one on,
    /// before the welcome says what it is.
    #[test]
    fn inputs_stay_within_the_servers_max_speed() {
        let mut pair = Pair::with_scenario(
            "name = \"fast\"\n[wander]\nhz = 30.0\nspeed = 20.0\nturn_every_s = 0.2\n",
            "fast.toml",
        );
        pair.connect();
        let slot = pair.slot.expect("the server saw the bot connect");
        let rules = MovementRules {
            max_speed: 2.0,
            ..MovementRules::default()
        };
        let welcome = Welcome {
            client_id: 1,
            tick_hz: 30,
            rules,
        };
        pair.now += Duration::from_millis(20);
        pair.service();
        pair.server
            .send(
                pair.now,
                slot,
                channels::CONTROL,
                protocol::encode(&welcome).unwrap(),
            )
            .unwrap();
        pair.deliver();
        for _ in 0..100 {
            pair.now += Duration::from_millis(10);
            pair.service();
            pair.deliver();
        }
        let speeds: Vec<f32> = pair.inputs.iter().map(|i| i.velocity.length()).collect();
        assert!(speeds.len() > 20, "{speeds:?}");
        assert!(
            speeds.iter().all(|&v| v <= rules.max_speed * 1.000_1),
            "{speeds:?}"
        );
        assert!(speeds.iter().any(|&v| v > 1.9), "the bot moves: {speeds:?}");
    }

    /// A churning bot's goodbye ends its session as it goes out (the
    /// server answers nothing to it): the pause starts then. It waited for
    /// the leave's deadline (2 s) first, each pause that much longer than
    /// the scenario's.
    #[test]
    fn a_churning_bots_pause_starts_when_its_goodbye_goes_out() {
        let mut pair = Pair::with_scenario(
            include_str!("../../assets/scenarios/churn.toml"),
            "churn.toml",
        );
        pair.connect();
        let left = pair.now;
        pair.bot.session_end = Some(left);
        let mut wake = pair.service();
        for _ in 0..100 {
            if matches!(pair.bot.phase, Phase::Paused { .. }) {
                break;
            }
            pair.now = wake.expect("a wake-up while leaving");
            wake = pair.service();
        }
        let Phase::Paused { until } = pair.bot.phase else {
            panic!("not paused: {:?}", pair.bot.phase);
        };
        // churn.toml's pause_s = 2.
        let away = until - left;
        assert!(away <= Duration::from_millis(2_100), "{away:?}");
    }

    /// Services the bot and hands it the server's answers until it is done.
    fn run_to_done(pair: &mut Pair) {
        for _ in 0..1_000 {
            if pair.bot.is_done() {
                return;
            }
            pair.service();
            pair.deliver();
            pair.now += Duration::from_millis(10);
        }
        panic!("the bot did not finish: {:?}", pair.bot.phase);
    }

    #[test]
    fn leaving_at_the_end_of_the_run_is_no_drop_and_a_server_drop_is() {
        let mut pair = Pair::new();
        pair.connect();
        pair.now += Duration::from_millis(100);
        pair.service();
        pair.deliver();
        let now = pair.now;
        pair.bot.stop(now, &mut pair.stats);
        run_to_done(&mut pair);
        assert!(
            pair.stats.disconnects.is_empty(),
            "{:?}",
            pair.stats.disconnects
        );
        assert_eq!(pair.stayed(), 1);

        let mut pair = Pair::new();
        pair.connect();
        let slot = pair.slot.expect("the server saw the bot connect");
        pair.now += Duration::from_millis(100);
        pair.server
            .disconnect(pair.now, slot, DisconnectReason::Timeout);
        pair.deliver();
        run_to_done(&mut pair);
        assert_eq!(pair.stats.disconnects.values().sum::<u64>(), 1);
        assert_eq!(pair.stayed(), 0);
    }

    /// A churning bot whose next session never gets an answer is offline
    /// for the rest of the run: counted as a failed reconnect (not as a bot
    /// that never connected) and not among the bots that stayed.
    #[test]
    fn a_churning_bot_whose_reconnect_fails_is_not_counted_as_staying() {
        let mut pair = Pair::with_scenario(
            include_str!("../../assets/scenarios/churn.toml"),
            "churn.toml",
        );
        pair.connect();
        for _ in 0..20_000 {
            if matches!(pair.bot.phase, Phase::Paused { .. }) {
                break;
            }
            pair.service();
            pair.deliver();
            pair.now += Duration::from_millis(10);
        }
        assert!(
            matches!(pair.bot.phase, Phase::Paused { .. }),
            "{:?}",
            pair.bot.phase
        );
        // The server stops answering.
        for _ in 0..3_000 {
            if pair.bot.is_done() {
                break;
            }
            pair.service();
            pair.now += Duration::from_millis(10);
        }
        assert!(pair.bot.is_done(), "{:?}", pair.bot.phase);
        assert!(pair.stats.connect_failures.is_empty());
        assert_eq!(pair.stats.reconnect_failures.values().sum::<u64>(), 1);
        assert_eq!(pair.stayed(), 0);
    }

    /// A connection its transport ends while the bot drains (a violation
    /// here; a reliable timeout the same) is a disconnect, not a goodbye.
    #[test]
    fn a_connection_that_fails_while_draining_is_a_disconnect() {
        let mut pair = Pair::new();
        let mut transport = shared::protocol::channels::transport_config();
        transport
            .channels
            .push(shared::transport::ChannelConfig::new(
                shared::transport::ChannelKind::ReliableOrdered,
            ));
        let netcode =
            ServerConfig::new(PROTOCOL_ID, shared::keys::dev_key(), vec![pair.server_addr]);
        pair.server = ServerEndpoint::new(
            ServerEndpointConfig::new(netcode, transport),
            &mut system_rng(),
        )
        .unwrap();
        pair.connect();
        let slot = pair.slot.expect("the server saw the bot connect");
        // A line awaited: the drain waits for it.
        assert!(pair.bot.verifier.next_line("x").is_some());
        let now = pair.now;
        pair.bot.stop(now, &mut pair.stats);
        pair.now += Duration::from_millis(1);
        // A channel the bot does not have: a protocol violation.
        pair.server
            .send(pair.now, slot, ChannelId(6), Bytes::from_static(b"x"))
            .unwrap();
        pair.deliver();
        run_to_done(&mut pair);
        assert_eq!(
            pair.stats.disconnects.values().sum::<u64>(),
            1,
            "{:?}",
            pair.stats.disconnects
        );
        assert_eq!(pair.stayed(), 0);
    }

    /// A churning bot between two sessions when the run ends connected
    /// before: not a bot that failed to connect.
    #[test]
    fn a_churning_bot_reconnecting_at_the_stop_is_no_connect_failure() {
        let mut pair = Pair::with_scenario(
            include_str!("../../assets/scenarios/churn.toml"),
            "churn.toml",
        );
        pair.connect();
        for _ in 0..20_000 {
            if matches!(pair.bot.phase, Phase::Connecting) {
                break;
            }
            pair.service();
            pair.deliver();
            pair.now += Duration::from_millis(10);
        }
        assert!(
            matches!(pair.bot.phase, Phase::Connecting),
            "{:?}",
            pair.bot.phase
        );
        let now = pair.now;
        pair.bot.stop(now, &mut pair.stats);
        assert!(
            pair.stats.connect_failures.is_empty(),
            "{:?}",
            pair.stats.connect_failures
        );
    }

    #[test]
    fn a_bot_the_run_ends_before_it_starts_is_counted() {
        let mut pair = Pair::new();
        let now = pair.now;
        pair.bot = Bot::new(
            Arc::clone(&pair.bot.ctx),
            1,
            now + Duration::from_secs(1),
            7,
        );
        pair.bot.stop(now, &mut pair.stats);
        assert_eq!(
            pair.stats.connect_failures.get("not_started_at_stop"),
            Some(&1)
        );
        assert!(pair.bot.is_done());
    }

    #[test]
    fn a_bot_abandoned_by_its_worker_ends_its_session_at_once() {
        let mut pair = Pair::new();
        pair.connect();
        assert_eq!(pair.stats.connected_now, 1);
        let now = pair.now;
        pair.bot.abandon(now, &mut pair.stats);
        assert!(pair.bot.is_done());
        assert_eq!(pair.stats.connected_now, 0);
        assert!(pair.stats.connected_time > Duration::ZERO);
    }

    #[test]
    fn a_bot_that_cannot_start_is_one_failure() {
        let mut pair = Pair::new();
        let now = pair.now;
        pair.bot
            .fail_to_start("socket: too_many_open_files".into(), now, &mut pair.stats);
        pair.bot.stop(now, &mut pair.stats);
        assert_eq!(pair.stats.connect_failures.values().sum::<u64>(), 1);
        assert!(pair.bot.is_done());
    }

    /// An outbox whose socket refuses everything (its send buffer full).
    struct Refused;

    impl Outbox for Refused {
        fn send(&mut self, _: &[u8], _: bool) -> bool {
            false
        }
    }

    #[test]
    fn datagrams_the_socket_refuses_are_counted() {
        let mut pair = Pair::new();
        pair.connect();
        pair.now += Duration::from_millis(100);
        let up = pair.stats.bytes_up;
        pair.bot.service(
            pair.now,
            &mut Refused,
            &mut pair.buf.clone(),
            &mut pair.scratch,
            &mut pair.stats,
        );
        assert!(pair.stats.send_drops > 0);
        assert_eq!(
            pair.stats.bytes_up, up,
            "refused bytes are not counted sent"
        );
    }

    #[test]
    fn messages_the_bot_cannot_decode_are_counted() {
        let mut pair = Pair::new();
        pair.connect();
        let slot = pair.slot.expect("the server saw the bot connect");
        pair.now += Duration::from_millis(1);
        // A chat line's id with a cut body.
        let mut truncated = ChatLine::ID.to_le_bytes().to_vec();
        truncated.push(0xFF);
        pair.server
            .send(pair.now, slot, channels::CHAT, Bytes::from(truncated))
            .unwrap();
        pair.deliver();
        assert_eq!(pair.stats.decode_errors, 1);
    }

    #[test]
    fn reasons_become_snake_case_keys() {
        assert_eq!(
            reason_key(DisconnectReason::ConnectTimeout),
            "connect_timeout"
        );
        assert_eq!(reason_key(DisconnectReason::ServerFull), "server_full");
        assert_eq!(reason_key(DisconnectReason::Custom(70)), "custom70");
    }

    #[test]
    fn the_rng_is_uniform_enough_and_seeded() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        let draws: Vec<f64> = (0..1000).map(|_| a.unit()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((0.45..0.55).contains(&mean), "{mean}");
        assert_eq!(b.unit(), draws[0]);
    }
}
