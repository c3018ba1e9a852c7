//! The network plugin: the `net-io` thread bridged into the ECS.
//!
//! ```text
//! net-io thread ──NetEvent (bounded)──► NetSystems::Receive (FixedPreUpdate)
//!                                         ├─ ClientConnected / ClientDisconnected
//!                                         └─ FromClient<T> per registered type
//! gameplay (FixedUpdate) ── ToClient<T> ─► NetSystems::Encode, NetSystems::Send (FixedPostUpdate)
//!                                         └─ one batch of NetCommands per tick ──► net-io
//! ```
//!
//! Plugins never see bytes: they register message types once with
//! [`NetAppExt`] and then read [`FromClient<T>`] and write [`ToClient<T>`].

mod session;
mod typed;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bevy_app::{App, AppExit, First, FixedPostUpdate, FixedPreUpdate, Last, Plugin, Update};
use bevy_ecs::prelude::*;
use crossbeam_channel::{Receiver, Sender};
use shared::io::priority::TickSignal;
use shared::io::{ClientId, IoStats, IoStatsSnapshot, NetCommand, NetEvent, NetSummary, ServerIo};
use shared::netcode::DropReason;
use shared::transport::{ChannelId, ChannelKind, DisconnectReason};

pub use session::{
    ClientConnected, ClientDisconnected, DepartedPositions, Player, SessionChange, session_changes,
};
pub use typed::{FromClient, NetAppExt, NetSender, Recipients, ToClient};

use crate::config::{MemoryConfig, ServerConfig};
use crate::console::AdminKick;
use crate::metrics::{Counter, Gauge, Histogram, Metrics, exponential_buckets};
use crate::players::PlayerRoster;
use crate::shutdown::{
    ShutdownReason, ShutdownRequested, ShutdownStarted, ShutdownState, ShutdownSystems,
};

/// The game's side of the network, inserted before [`NetPlugin`] is added:
/// the running `net-io` thread, or an in-process [`Loopback`] that tests and
/// benchmarks drive without sockets.
#[derive(Resource)]
pub struct NetServer(Backend);

enum Backend {
    Io(ServerIo),
    Loopback {
        events: Receiver<NetEvent>,
        commands: Sender<Vec<NetCommand>>,
        stats: Arc<IoStats>,
        /// Set by [`Loopback::fail`].
        failed: Arc<AtomicBool>,
    },
}

impl NetServer {
    /// The running `net-io` thread.
    pub fn io(io: ServerIo) -> Self {
        Self(Backend::Io(io))
    }

    /// An in-process network: the returned [`Loopback`] plays the `net-io`
    /// thread (it injects events and takes the batches of commands).
    pub fn loopback() -> (Self, Loopback) {
        Self::loopback_with(crossbeam_channel::unbounded())
    }

    /// [`loopback`](Self::loopback) whose [`Loopback`] takes at most
    /// `batches` batches ahead, as `net-io` does (`outbound_batches`): a
    /// batch past them is refused until it takes one.
    pub fn loopback_behind_by(batches: usize) -> (Self, Loopback) {
        Self::loopback_with(crossbeam_channel::bounded(batches))
    }

    fn loopback_with(
        (commands, command_rx): (Sender<Vec<NetCommand>>, Receiver<Vec<NetCommand>>),
    ) -> (Self, Loopback) {
        let (event_tx, events) = crossbeam_channel::unbounded();
        let failed = Arc::new(AtomicBool::new(false));
        let server = Self(Backend::Loopback {
            events,
            commands,
            stats: Arc::new(IoStats::default()),
            failed: Arc::clone(&failed),
        });
        let loopback = Loopback {
            events: event_tx,
            commands: command_rx,
            failed,
        };
        (server, loopback)
    }

    /// Moves every event that has arrived into `out`.
    fn drain_events(&mut self, out: &mut Vec<NetEvent>) {
        match &mut self.0 {
            Backend::Io(io) => out.extend(io.events()),
            Backend::Loopback { events, .. } => out.extend(events.try_iter()),
        }
    }

    fn submit(&mut self, batch: Vec<NetCommand>) -> Result<(), Vec<NetCommand>> {
        match &mut self.0 {
            Backend::Io(io) => io.submit(batch),
            Backend::Loopback { commands, .. } => commands
                .try_send(batch)
                .map_err(|refused| refused.into_inner()),
        }
    }

    /// [`submit`](Self::submit), waiting for room (see
    /// [`ServerIo::submit_waiting`]).
    fn submit_waiting(&mut self, batch: Vec<NetCommand>) -> Result<(), Vec<NetCommand>> {
        match &mut self.0 {
            Backend::Io(io) => io.submit_waiting(batch),
            Backend::Loopback { commands, .. } => {
                commands.send(batch).map_err(|refused| refused.into_inner())
            }
        }
    }

    /// Where the game loop marks its ticks for `net-io` (none in-process).
    fn tick_signal(&self) -> Option<&TickSignal> {
        match &self.0 {
            Backend::Io(io) => Some(io.tick_signal()),
            Backend::Loopback { .. } => None,
        }
    }

    /// Whether the `net-io` thread has stopped (in-process: once
    /// [`Loopback::fail`] was called).
    fn io_stopped(&self) -> bool {
        match &self.0 {
            Backend::Io(io) => io.is_finished(),
            Backend::Loopback { failed, .. } => failed.load(Ordering::Relaxed),
        }
    }

    /// Stops the `net-io` thread (after the shutdown the game sent it, if
    /// it did) and waits for it; `false` if it stopped on a fault
    /// (in-process: once [`Loopback::fail`] was called).
    fn stop_and_wait(&mut self) -> bool {
        match &mut self.0 {
            Backend::Io(io) => io.stop_and_wait(DisconnectReason::ServerShutdown),
            Backend::Loopback { failed, .. } => !failed.load(Ordering::Relaxed),
        }
    }

    /// Whether the `net-io` thread has stopped on a fault, not after the
    /// shutdown the game sent it (in-process: once [`Loopback::fail`] was
    /// called).
    fn io_failed(&self) -> bool {
        match &self.0 {
            Backend::Io(io) => io.has_failed(),
            Backend::Loopback { failed, .. } => failed.load(Ordering::Relaxed),
        }
    }

    /// Where the game socket listens (in-process: nowhere).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.0 {
            Backend::Io(io) => Some(io.local_addr()),
            Backend::Loopback { .. } => None,
        }
    }

    fn stats(&self) -> &Arc<IoStats> {
        match &self.0 {
            Backend::Io(io) => io.stats(),
            Backend::Loopback { stats, .. } => stats,
        }
    }
}

/// The `net-io` side of [`NetServer::loopback`]: what a test or benchmark
/// uses to play connected clients in-process.
pub struct Loopback {
    /// Events for the game, drained at the start of each tick.
    pub events: Sender<NetEvent>,
    /// One batch of commands per tick that produced any.
    pub commands: Receiver<Vec<NetCommand>>,
    failed: Arc<AtomicBool>,
}

impl Loopback {
    /// Plays a `net-io` thread that stopped on a fault (a poll error, a
    /// panic): the game sees it stopped and failed.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// Commands gathered during a tick, handed to `net-io` in one batch.
#[derive(Resource)]
pub struct Outbox {
    commands: Vec<NetCommand>,
    /// What a batch `net-io` refused may carry over.
    carry: CarryBound,
    /// A shed's disconnects are carried in `commands`, not yet taken by
    /// `net-io`: only then are the batches looked through for them (see
    /// [`drop_sends_to_the_cut`]), not every tick.
    cut_carried: bool,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            carry: CarryBound::for_memory(&MemoryConfig::default()),
            cut_carried: false,
        }
    }
}

impl Outbox {
    /// Queues a command for this tick's batch.
    pub fn push(&mut self, command: NetCommand) {
        self.commands.push(command);
    }

    /// Commands queued this tick.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether nothing is queued this tick.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The commands queued this tick, in order.
    pub fn commands(&self) -> &[NetCommand] {
        &self.commands
    }
}

/// Connected clients and their player entities.
#[derive(Resource, Default)]
pub struct Clients {
    /// By endpoint slot (dense, at most `max_clients`): every message
    /// received is resolved here, so a lookup is an index, not a hash.
    by_slot: Vec<Option<(ClientId, Entity)>>,
    connected: usize,
    by_account: HashMap<u64, ClientId>,
}

impl Clients {
    /// The player entity of `client`.
    pub fn entity(&self, client: ClientId) -> Option<Entity> {
        match self.by_slot.get(client.slot.get()) {
            Some(&Some((held, entity))) if held == client => Some(entity),
            _ => None,
        }
    }

    /// The connected client with this account id.
    pub fn by_account(&self, account: u64) -> Option<ClientId> {
        self.by_account.get(&account).copied()
    }

    /// Every connected client, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (ClientId, Entity)> + '_ {
        self.by_slot.iter().flatten().copied()
    }

    /// How many are connected.
    pub fn len(&self) -> usize {
        self.connected
    }

    /// Whether nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.connected == 0
    }

    /// The client recorded in `client`'s slot, if any.
    fn occupant(&self, client: ClientId) -> Option<ClientId> {
        self.by_slot.get(client.slot.get())?.map(|(held, _)| held)
    }

    /// Records `client`'s player entity in its slot, which must be free.
    pub(crate) fn insert(&mut self, client: ClientId, entity: Entity) {
        let slot = client.slot.get();
        if self.by_slot.len() <= slot {
            self.by_slot.resize(slot + 1, None);
        }
        debug_assert!(self.by_slot[slot].is_none(), "slot {slot} still held");
        if self.by_slot[slot].replace((client, entity)).is_none() {
            self.connected += 1;
        }
        self.by_account.insert(client.account, client);
    }

    /// Forgets `client`; its player entity, if it was still recorded.
    fn remove(&mut self, client: ClientId) -> Option<Entity> {
        let held = self.by_slot.get_mut(client.slot.get())?;
        let (_, entity) = held.take_if(|(c, _)| *c == client)?;
        self.connected -= 1;
        if self.by_account.get(&client.account) == Some(&client) {
            self.by_account.remove(&client.account);
        }
        Some(entity)
    }
}

/// The network systems, in schedule order.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetSystems {
    /// Drains `net-io` events into ECS messages (`FixedPreUpdate`).
    Receive,
    /// Encodes `ToClient<T>` messages into commands (`FixedPostUpdate`).
    Encode,
    /// Hands the tick's batch to `net-io` (`FixedPostUpdate`, after `Encode`).
    Send,
}

/// A malformed message or a message on the wrong channel counts as a
/// strike; this many strikes disconnect the client with
/// [`DisconnectReason::ProtocolViolation`].
pub const MAX_STRIKES: u32 = 10;

/// Counters of the network plugin, exported as metrics.
#[derive(Resource, Clone)]
struct NetMetrics {
    connected: Gauge,
    datagrams_in: Counter,
    datagrams_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    inbound_dropped: Counter,
    stale_commands: Counter,
    socket_drops: Counter,
    flooding: Counter,
    wakeups: Counter,
    tick_yields: Counter,
    malformed: Counter,
    outbox_dropped: Counter,
    resent: Counter,
    packets_lost: Counter,
    queue_full: Counter,
    rtt: Option<Histogram>,
    /// `net_dropped_datagrams_total`, one series per reason, registered
    /// the first time its reason shows up in a summary: registering takes
    /// the registry's lock (held by `/metrics` for a whole render) and
    /// allocates, so the tick does it once per reason, not every second.
    dropped: Vec<(DropReason, Counter)>,
    last: IoStatsSnapshot,
    last_summary: (u64, NetSummary),
}

impl NetMetrics {
    fn register(metrics: &Metrics) -> Self {
        let r = metrics.registry();
        let counter = |name: &str, help: &str| r.counter(name, help).unwrap_or_default();
        Self {
            connected: r
                .gauge("connected_clients", "Clients connected now.")
                .unwrap_or_default(),
            datagrams_in: counter("net_packets_in_total", "Datagrams received."),
            datagrams_out: counter("net_packets_out_total", "Datagrams sent."),
            bytes_in: counter("net_bytes_in_total", "Bytes received."),
            bytes_out: counter("net_bytes_out_total", "Bytes sent."),
            inbound_dropped: counter(
                "net_inbound_dropped_total",
                "Messages dropped because the game fell behind the network thread.",
            ),
            stale_commands: counter(
                "net_stale_commands_total",
                "Sends and disconnects dropped because their client had already left.",
            ),
            socket_drops: counter(
                "net_socket_receive_drops_total",
                "Datagrams the operating system dropped because the game socket's receive buffer was full.",
            ),
            flooding: counter(
                "net_flooding_disconnects_total",
                "Clients disconnected for sending too much.",
            ),
            wakeups: counter(
                "net_io_wakeups_total",
                "Times the network thread woke up to read, send or run timers.",
            ),
            tick_yields: counter(
                "net_io_tick_yields_total",
                "Times the network thread handed its core back to a tick running on it.",
            ),
            malformed: counter(
                "net_malformed_messages_total",
                "Messages that did not decode or came on the wrong channel.",
            ),
            outbox_dropped: counter(
                "net_outbox_dropped_total",
                "Outgoing commands dropped because the network thread fell behind.",
            ),
            resent: counter(
                "net_resent_total",
                "Reliable messages or fragments sent again.",
            ),
            packets_lost: counter("net_packets_lost_total", "Packets judged lost."),
            queue_full: counter(
                "net_send_queue_full_disconnects_total",
                "Clients disconnected because they could not keep up with their reliable data.",
            ),
            rtt: r
                .histogram(
                    "net_rtt_seconds",
                    "Smoothed round-trip time of each connected client, sampled once a second.",
                    &exponential_buckets(0.001, 2.0, 12),
                )
                .ok(),
            dropped: Vec::new(),
            last: IoStatsSnapshot::default(),
            last_summary: (0, NetSummary::default()),
        }
    }
}

/// Starts nothing itself: expects a [`NetServer`] resource (see
/// `build_app`), then wires it into the fixed tick.
pub struct NetPlugin;

impl Plugin for NetPlugin {
    fn build(&self, app: &mut App) {
        let metrics = app.world_mut().get_resource_or_init::<Metrics>().clone();
        let memory = app
            .world()
            .get_resource::<ServerConfig>()
            .map(|config| config.memory.clone())
            .unwrap_or_default();
        app.insert_resource(Outbox {
            carry: CarryBound::for_memory(&memory),
            ..Outbox::default()
        })
        .init_resource::<Clients>()
        .init_resource::<DepartedPositions>()
        .init_resource::<PlayerRoster>()
        .init_resource::<typed::InboundRegistry>()
        .insert_resource(NetMetrics::register(&metrics))
        .add_message::<ClientConnected>()
        .add_message::<ClientDisconnected>()
        .configure_sets(FixedPostUpdate, NetSystems::Encode.before(NetSystems::Send))
        .add_systems(FixedPreUpdate, session::receive.in_set(NetSystems::Receive))
        .add_systems(
            FixedPostUpdate,
            (
                kick_on_admin_request,
                say_goodbye_on_shutdown,
                submit_batch,
                export_metrics,
            )
                .chain()
                .in_set(NetSystems::Send),
        )
        .add_systems(Update, watch_net_io)
        .add_systems(Last, hand_over_at_exit.after(ShutdownSystems::Exit));
        let signal = app
            .world()
            .get_resource::<NetServer>()
            .and_then(NetServer::tick_signal)
            .cloned();
        if let Some(signal) = signal {
            app.insert_resource(TickRunning(signal))
                .add_systems(First, mark_tick_started)
                .add_systems(Last, mark_tick_finished);
        }
    }
}

/// `net-io`'s view of whether a tick is running (see [`TickSignal`]): set
/// from the first schedule of each update to the last.
#[derive(Resource)]
struct TickRunning(TickSignal);

fn mark_tick_started(running: Res<TickRunning>) {
    running.0.tick_started();
}

fn mark_tick_finished(running: Res<TickRunning>) {
    running.0.tick_finished();
}

fn kick_on_admin_request(
    mut kicks: MessageReader<AdminKick>,
    clients: Res<Clients>,
    mut outbox: ResMut<Outbox>,
) {
    for kick in kicks.read() {
        match clients.by_account(kick.client.0) {
            Some(client) => {
                tracing::info!(%client.account, reason = ?kick.reason, "kicking");
                outbox.push(NetCommand::Disconnect {
                    client,
                    reason: DisconnectReason::Kicked,
                });
            }
            None => tracing::warn!(account = kick.client.0, "kick: no such player"),
        }
    }
}

/// Bound on commands carried over when `net-io` refused a batch.
const MAX_CARRIED_COMMANDS: usize = 1 << 20;

/// How much of the batches `net-io` refused is carried over to the next
/// tick: past either bound, [`shed`] drops messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CarryBound {
    /// Commands ([`MAX_CARRIED_COMMANDS`]).
    commands: usize,
    /// Their payloads' bytes, a payload counted once for each command
    /// that holds it (reliable sends, chat's fan-out among them, are
    /// mostly a payload each): the reliable send memory's bound
    /// (`[memory] max_send_mib`), which is what these would take once
    /// `net-io` had them.
    bytes: usize,
}

impl CarryBound {
    fn for_memory(memory: &MemoryConfig) -> Self {
        Self {
            commands: MAX_CARRIED_COMMANDS,
            bytes: memory.max_send_bytes(),
        }
    }

    fn exceeded_by(&self, commands: &[NetCommand]) -> bool {
        commands.len() > self.commands || payload_bytes(commands) > self.bytes
    }
}

/// The bytes of `commands`' payloads, each command's counted.
fn payload_bytes(commands: &[NetCommand]) -> usize {
    commands
        .iter()
        .map(|command| match command {
            NetCommand::Send { payload, .. } | NetCommand::Broadcast { payload, .. } => {
                payload.len()
            }
            NetCommand::Disconnect { .. } | NetCommand::Shutdown { .. } => 0,
        })
        .sum()
}

fn submit_batch(
    mut net: ResMut<NetServer>,
    mut outbox: ResMut<Outbox>,
    clients: Res<Clients>,
    metrics: Res<NetMetrics>,
) {
    if outbox.commands.is_empty() {
        return;
    }
    let capacity = outbox.commands.len();
    let mut batch = std::mem::take(&mut outbox.commands);
    if outbox.cut_carried {
        metrics
            .outbox_dropped
            .add(drop_sends_to_the_cut(&mut batch, &clients));
    }
    disconnects_last(&mut batch);
    match net.submit(batch) {
        // The batch left with net-io; the next one starts at this one's
        // size, so that it does not grow by doubling every tick.
        Ok(()) => {
            outbox.commands = Vec::with_capacity(capacity);
            outbox.cut_carried = false;
        }
        Err(mut refused) => {
            // net-io is several ticks behind: keep the batch for the next
            // tick, within a bound.
            let layout = shared::protocol::channels::transport_config();
            drop_superseded(&mut refused, |channel| {
                layout
                    .channels
                    .get(usize::from(channel.0))
                    .is_some_and(|c| c.kind == ChannelKind::UnreliableSequenced)
            });
            if outbox.carry.exceeded_by(&refused) {
                let carry = outbox.carry;
                let dropped = shed(&mut refused, |c| layout.is_reliable(c), &clients, carry);
                metrics.outbox_dropped.add(dropped);
                outbox.cut_carried = true;
            }
            outbox.commands = refused;
        }
    }
}

/// Drops the sends a later send in `commands` to the same client on the
/// same `sequenced` channel supersedes: of those only the newest counts
/// (a client drops a sequenced message older than one it has), so a batch
/// carried over while net-io is behind keeps one snapshot a client, not one
/// a client for every tick of the delay (at 5,000 players, megabytes a
/// tick of snapshots already out of date).
fn drop_superseded(commands: &mut Vec<NetCommand>, sequenced: impl Fn(ChannelId) -> bool) {
    let mut newest: HashSet<(ClientId, ChannelId)> = HashSet::new();
    let superseded: Vec<bool> = commands
        .iter()
        .rev()
        .map(|command| match command {
            NetCommand::Send {
                client, channel, ..
            } => sequenced(*channel) && !newest.insert((*client, *channel)),
            _ => false,
        })
        .collect();
    let mut from_the_end = superseded.into_iter().rev();
    commands.retain(|_| !from_the_end.next().unwrap_or(false));
}

/// Sheds `commands` (carried over past `bound`) and returns how many
/// messages it dropped: those on unreliable channels first (what a client
/// misses of them, the next ones replace); if that leaves them past
/// `bound`, the reliable ones too, and then every client that misses
/// one is disconnected (`SendQueueFull`): a reliable message is never
/// lost silently; the client reconnects and asks again. Disconnects and a
/// shutdown (what tells every client goodbye) always stay; with a shutdown
/// among them, its goodbye is what every client hears.
fn shed(
    commands: &mut Vec<NetCommand>,
    reliable: impl Fn(ChannelId) -> bool,
    clients: &Clients,
    bound: CarryBound,
) -> u64 {
    let is_message =
        |c: &NetCommand| matches!(c, NetCommand::Send { .. } | NetCommand::Broadcast { .. });
    let messages = commands.iter().filter(|c| is_message(c)).count();
    commands.retain(|command| match command {
        NetCommand::Send { channel, .. } | NetCommand::Broadcast { channel, .. } => {
            reliable(*channel)
        }
        NetCommand::Disconnect { .. } | NetCommand::Shutdown { .. } => true,
    });
    if bound.exceeded_by(commands) {
        let mut missed: Vec<ClientId> = Vec::new();
        for command in commands.iter() {
            match command {
                NetCommand::Send { client, .. } => missed.push(*client),
                NetCommand::Broadcast { except, .. } => missed.extend(
                    clients
                        .iter()
                        .map(|(client, _)| client)
                        .filter(|client| !is_excepted(client, *except)),
                ),
                NetCommand::Disconnect { .. } | NetCommand::Shutdown { .. } => {}
            }
        }
        commands.retain(|command| {
            matches!(
                command,
                NetCommand::Disconnect { .. } | NetCommand::Shutdown { .. }
            )
        });
        if commands
            .iter()
            .any(|c| matches!(c, NetCommand::Shutdown { .. }))
        {
            missed.clear();
        }
        missed.sort_unstable();
        missed.dedup();
        commands.extend(missed.into_iter().map(|client| NetCommand::Disconnect {
            client,
            reason: DisconnectReason::SendQueueFull,
        }));
        disconnects_last(commands);
    }
    let kept = commands.iter().filter(|c| is_message(c)).count();
    (messages - kept) as u64
}

/// Drops every send to a client that [`shed`] cut off (its disconnect,
/// `SendQueueFull`, waits in the batch): a reliable message to it was
/// lost, and a later one reaching it before its disconnect (which
/// [`disconnects_last`] would move behind it) would show the client a gap
/// in its stream, not the reason. A broadcast is then sent to each of
/// `clients` but those (and its own exception) instead. Returns how many
/// messages it dropped.
fn drop_sends_to_the_cut(batch: &mut Vec<NetCommand>, clients: &Clients) -> u64 {
    let cut = cut_off(batch);
    if cut.is_empty() {
        return 0;
    }
    let mut dropped = 0;
    let commands = std::mem::take(batch);
    for command in commands {
        match command {
            NetCommand::Send { client, .. } if cut.contains(&client) => dropped += 1,
            NetCommand::Broadcast {
                channel,
                payload,
                except,
            } => batch.extend(
                clients
                    .iter()
                    .map(|(client, _)| client)
                    .filter(|client| !is_excepted(client, except) && !cut.contains(client))
                    .map(|client| NetCommand::Send {
                        client,
                        channel,
                        payload: payload.clone(),
                    }),
            ),
            command => batch.push(command),
        }
    }
    dropped
}

/// Whether a broadcast excepting `except` leaves `client` out: the
/// exception is an account, in whichever session (net-io's reading, see
/// `Recipients::AllExcept`).
fn is_excepted(client: &ClientId, except: Option<ClientId>) -> bool {
    except.is_some_and(|except| except.account == client.account)
}

/// The clients [`shed`] cut off whose disconnects wait in `commands`.
fn cut_off(commands: &[NetCommand]) -> HashSet<ClientId> {
    commands
        .iter()
        .filter_map(|command| match command {
            NetCommand::Disconnect {
                client,
                reason: DisconnectReason::SendQueueFull,
            } => Some(*client),
            _ => None,
        })
        .collect()
}

/// Moves the tick's disconnects after everything else, and a shutdown
/// after those, keeping order within each group: whatever the game said to
/// a client this tick reaches it before its disconnect (a kicked flooder
/// still gets its refusals, every player the tick's goodbyes).
fn disconnects_last(batch: &mut [NetCommand]) {
    batch.sort_by_key(|command| match command {
        NetCommand::Disconnect { .. } => 1,
        NetCommand::Shutdown { .. } => 2,
        _ => 0,
    });
}

fn export_metrics(
    net: Res<NetServer>,
    mut metrics: ResMut<NetMetrics>,
    clients: Res<Clients>,
    mut roster: ResMut<PlayerRoster>,
    registry: Res<Metrics>,
) {
    let metrics = &mut *metrics;
    // The summary (a line per client) is copied only when a new one is
    // out, once a second, not every tick.
    if net.stats().summary_version() != metrics.last_summary.0 {
        let (version, summary) = net.stats().summary();
        let last = &metrics.last_summary.1;
        metrics
            .resent
            .add(summary.transport.resent - last.transport.resent);
        metrics
            .packets_lost
            .add(summary.transport.packets_lost - last.transport.packets_lost);
        metrics
            .queue_full
            .add(summary.queue_full_disconnects - last.queue_full_disconnects);
        if let Some(histogram) = &metrics.rtt {
            for rtt in summary.clients.iter().filter_map(|c| c.rtt) {
                histogram.observe_duration(rtt);
            }
        }
        // What the console's `players` shows; a session that has ended
        // (or not begun) in the game is left alone.
        for client in &summary.clients {
            if clients.entity(client.client).is_some()
                && let Some(player) =
                    roster.get_mut(crate::players::ClientId(client.client.account))
            {
                player.addr = client.addr;
                player.rtt = client.rtt;
            }
        }
        for &(reason, total) in &summary.drops {
            let before = last
                .drops
                .iter()
                .find(|(r, _)| *r == reason)
                .map_or(0, |(_, n)| *n);
            let counter = match metrics.dropped.iter().find(|(r, _)| *r == reason) {
                Some((_, counter)) => counter,
                None => {
                    let counter = registry
                        .registry()
                        .counter_with_labels(
                            "net_dropped_datagrams_total",
                            "Datagrams the connection layer ignored, by reason.",
                            &[("reason", &format!("{reason:?}"))],
                        )
                        .unwrap_or_default();
                    metrics.dropped.push((reason, counter));
                    &metrics.dropped[metrics.dropped.len() - 1].1
                }
            };
            counter.add(total - before);
        }
        metrics.last_summary = (version, summary);
    }
    let now = net.stats().snapshot();
    let last = metrics.last;
    metrics.connected.set(clients.len() as f64);
    metrics
        .datagrams_in
        .add(now.datagrams_in - last.datagrams_in);
    metrics
        .datagrams_out
        .add(now.datagrams_out - last.datagrams_out);
    metrics.bytes_in.add(now.bytes_in - last.bytes_in);
    metrics.bytes_out.add(now.bytes_out - last.bytes_out);
    metrics
        .inbound_dropped
        .add(now.inbound_dropped - last.inbound_dropped);
    metrics
        .stale_commands
        .add(now.stale_commands - last.stale_commands);
    metrics
        .socket_drops
        .add(now.socket_drops - last.socket_drops);
    metrics
        .flooding
        .add(now.flooding_disconnects - last.flooding_disconnects);
    metrics.wakeups.add(now.loop_wakeups - last.loop_wakeups);
    metrics.tick_yields.add(now.tick_yields - last.tick_yields);
    metrics.last = now;
}

/// A `net-io` thread that stops while the server runs (a poll error, a
/// panic) leaves a game nobody can reach: no events, no sends, players
/// never leave. The server shuts down with an error instead, so that a
/// supervisor restarts it. During a shutdown the thread stops by itself
/// once its clients are gone; one that stops on a fault instead makes the
/// exit an error too (its clients may not have heard their goodbyes).
fn watch_net_io(
    net: Res<NetServer>,
    state: Option<Res<ShutdownState>>,
    requests: Option<ResMut<Messages<ShutdownRequested>>>,
    mut reported: Local<bool>,
) {
    let running = state.is_none_or(|s| *s == ShutdownState::Running);
    if *reported || !(net.io_failed() || running && net.io_stopped()) {
        return;
    }
    *reported = true;
    let fault = if running {
        "the network thread stopped"
    } else {
        "the network thread stopped on a fault during the shutdown"
    };
    tracing::error!("{fault}; shutting down");
    if let Some(mut requests) = requests {
        requests.write(ShutdownRequested {
            reason: ShutdownReason::Failure(fault.to_owned()),
        });
    }
}

/// `Last`, once the app exits: a batch `net-io` refused on the last tick
/// (it was `outbound_batches` ticks behind), which no next tick carries, is
/// handed over now, waiting for room: the goodbyes in it reach the
/// clients. Then the thread is stopped and waited for: one that stopped on
/// a fault, during the goodbyes too (after the last tick `watch_net_io`
/// sees), makes the exit an error.
fn hand_over_at_exit(
    mut exits: ResMut<Messages<AppExit>>,
    mut seen: Local<bevy_ecs::message::MessageCursor<AppExit>>,
    mut net: ResMut<NetServer>,
    mut outbox: ResMut<Outbox>,
) {
    if seen.read(&exits).count() == 0 {
        return;
    }
    if !outbox.commands.is_empty() {
        let mut batch = std::mem::take(&mut outbox.commands);
        disconnects_last(&mut batch);
        if let Err(lost) = net.submit_waiting(batch) {
            tracing::warn!(
                commands = lost.len(),
                "net-io stopped before the last tick's commands reached it"
            );
        }
    }
    if !net.stop_and_wait() {
        tracing::error!("the network thread stopped on a fault; exiting with an error");
        exits.write(AppExit::error());
    }
}

/// The shutdown goes in the tick's batch, after the goodbyes the tick's
/// plugins wrote (and is kept with them when net-io refuses the batch,
/// handed over at the exit if that was the last tick).
fn say_goodbye_on_shutdown(
    mut started: MessageReader<ShutdownStarted>,
    mut outbox: ResMut<Outbox>,
) {
    if started.read().next().is_some() {
        tracing::info!("telling every client the server is shutting down");
        outbox.push(NetCommand::Shutdown {
            reason: DisconnectReason::ServerShutdown,
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shared::netcode::ClientIndex;
    use shared::protocol::channels;

    use super::*;

    #[test]
    fn net_io_is_told_while_each_update_runs() {
        let config = crate::config::ServerConfig {
            bind_set: Some(std::net::SocketAddr::from((
                std::net::Ipv4Addr::LOCALHOST,
                0,
            ))),
            ..Default::default()
        };
        let network = crate::start_network(&config).unwrap();
        let signal = network.tick_signal().unwrap().clone();
        let during = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut app = App::new();
        app.add_message::<ShutdownStarted>()
            .insert_resource(network)
            .add_plugins(NetPlugin);
        let (seen, running) = (Arc::clone(&during), signal.clone());
        app.add_systems(Update, move || {
            seen.store(running.is_running(), std::sync::atomic::Ordering::Relaxed);
        });
        assert!(!signal.is_running());
        app.update();
        assert!(during.load(std::sync::atomic::Ordering::Relaxed));
        assert!(!signal.is_running());
    }

    /// A ticking app with the network on loopback, and its game address.
    fn loopback_app() -> (App, SocketAddr) {
        let config = crate::config::ServerConfig {
            bind_set: Some(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))),
            ..Default::default()
        };
        let network = crate::start_network(&config).unwrap();
        let server_addr = network.local_addr().unwrap();
        (ticking_app(network), server_addr)
    }

    #[test]
    fn the_roster_shows_each_players_address_and_rtt() {
        use shared::endpoint::ClientEndpoint;
        use shared::io::ClientSocket;
        let (mut app, server_addr) = loopback_app();
        let mut endpoint = ClientEndpoint::new(
            shared::protocol::PROTOCOL_ID,
            shared::protocol::channels::transport_config(),
        );
        let token = shared::keys::dev_token(server_addr, 77).unwrap();
        endpoint
            .connect(&token, std::time::Instant::now(), shared::io::unix_secs())
            .unwrap();
        let mut player = ClientSocket::bind(
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            endpoint,
        )
        .unwrap();
        let player_addr = player.socket().local_addr().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let listed = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no address and RTT within 15 s: {:?}",
                app.world()
                    .resource::<PlayerRoster>()
                    .get(crate::players::ClientId(77))
            );
            app.update();
            player.pump(std::time::Instant::now()).unwrap();
            while player.endpoint.poll_event().is_some() {}
            let roster = app.world().resource::<PlayerRoster>();
            if let Some(player) = roster.get(crate::players::ClientId(77))
                && player.rtt.is_some()
            {
                break player.clone();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(listed.addr, Some(player_addr));
    }

    /// `net_dropped_datagrams_total` is registered once per reason: the
    /// exports after the first for a reason add to the counter then
    /// registered, without going back to the registry (whose lock
    /// `/metrics` holds for a whole render) from the tick.
    #[test]
    fn a_drop_reason_seen_before_is_counted_without_registering_again() {
        let (mut app, server_addr) = loopback_app();
        let junk = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        // Ticks until the summary exported counts `total` drops.
        let exported = |app: &mut App, total: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                app.update();
                let drops = &app.world().resource::<NetMetrics>().last_summary.1.drops;
                if drops.iter().map(|(_, n)| n).sum::<u64>() >= total {
                    return drops.clone();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "not exported within 15 s: {drops:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let sample = |metrics: &Metrics| {
            let mut out = String::new();
            metrics.registry().render(&mut out);
            out.lines()
                .filter(|line| line.starts_with("net_dropped_datagrams_total{"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };

        junk.send_to(&[0xff; 40], server_addr).unwrap();
        let drops = exported(&mut app, 1);
        let [(reason, 1)] = drops[..] else {
            panic!("one datagram dropped once: {drops:?}");
        };
        let first = app.world().resource::<Metrics>().clone();
        let line = format!("net_dropped_datagrams_total{{reason=\"{reason:?}\"}}");
        assert_eq!(sample(&first), [format!("{line} 1")]);

        // What registers from now on lands in a registry of its own.
        app.insert_resource(Metrics::default());
        junk.send_to(&[0xff; 40], server_addr).unwrap();
        assert_eq!(exported(&mut app, 2), [(reason, 2)]);
        assert_eq!(
            sample(app.world().resource::<Metrics>()),
            Vec::<String>::new(),
            "registered again"
        );
        assert_eq!(sample(&first), [format!("{line} 2")]);
    }

    #[test]
    fn a_network_thread_that_stops_shuts_the_server_down_with_an_error() {
        let config = crate::config::ServerConfig {
            bind_set: Some(std::net::SocketAddr::from((
                std::net::Ipv4Addr::LOCALHOST,
                0,
            ))),
            ..Default::default()
        };
        let network = crate::start_network(&config).unwrap();
        let mut app = App::new();
        app.add_plugins(crate::shutdown::ShutdownPlugin {
            grace_ticks: 2,
            grace_time: None,
        })
        .insert_resource(network)
        .add_plugins(NetPlugin);
        app.update();
        assert_eq!(app.should_exit(), None);
        // net-io stops without the game having asked (as on a fault).
        let mut net = app.world_mut().resource_mut::<NetServer>();
        assert!(
            net.submit(vec![NetCommand::Shutdown {
                reason: DisconnectReason::ServerShutdown,
            }])
            .is_ok()
        );
        let began = std::time::Instant::now();
        while !app.world().resource::<NetServer>().io_stopped() {
            assert!(began.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            !app.world().resource::<NetServer>().io_failed(),
            "it stopped as asked, not on a fault"
        );
        for _ in 0..5 {
            app.update();
            if app.should_exit().is_some() {
                break;
            }
        }
        assert_eq!(app.should_exit(), Some(bevy_app::AppExit::error()));
    }

    /// During a shutdown net-io stops by itself once its clients are gone;
    /// stopping on a fault instead still makes the exit an error.
    #[test]
    fn a_network_thread_that_fails_during_the_shutdown_makes_the_exit_an_error() {
        let (server, loopback) = NetServer::loopback();
        let mut app = App::new();
        app.add_plugins(crate::shutdown::ShutdownPlugin {
            grace_ticks: 100,
            grace_time: None,
        });
        let mut app = ticking_app_with(server, app);
        app.world_mut().write_message(ShutdownRequested {
            reason: ShutdownReason::Console,
        });
        app.update();
        assert!(matches!(
            app.world().resource::<ShutdownState>(),
            ShutdownState::Draining { failed: false, .. }
        ));
        loopback.fail();
        for _ in 0..100 {
            app.update();
            if app.should_exit().is_some() {
                break;
            }
        }
        assert_eq!(app.should_exit(), Some(bevy_app::AppExit::error()));
    }

    /// A net-io that says its goodbyes and stops as asked leaves the exit
    /// a success.
    #[test]
    fn a_network_thread_stopped_at_the_exit_leaves_it_a_success() {
        let config = crate::config::ServerConfig {
            bind_set: Some(std::net::SocketAddr::from((
                std::net::Ipv4Addr::LOCALHOST,
                0,
            ))),
            ..Default::default()
        };
        let network = crate::start_network(&config).unwrap();
        let mut app = ticking_app(network);
        app.update();
        app.world_mut().write_message(AppExit::Success);
        app.update();
        assert_eq!(app.should_exit(), Some(AppExit::Success));
        assert!(app.world().resource::<NetServer>().io_stopped());
    }

    /// After the last tick `watch_net_io` sees nothing: a net-io that
    /// failed while saying its goodbyes is found at the exit.
    #[test]
    fn a_network_thread_that_fails_after_the_last_tick_makes_the_exit_an_error() {
        let (server, loopback) = NetServer::loopback();
        let mut app = ticking_app(server);
        loopback.fail();
        app.world_mut().write_message(AppExit::Success);
        app.update();
        assert_eq!(app.should_exit(), Some(bevy_app::AppExit::error()));
    }

    #[test]
    fn a_ticks_messages_go_before_its_disconnects_in_order() {
        let client = ClientId {
            slot: ClientIndex::from_slot(0),
            account: 1,
            session: 1,
        };
        let send = |n: u8| NetCommand::Send {
            client,
            channel: channels::CHAT,
            payload: Bytes::from(vec![n]),
        };
        let kick = NetCommand::Disconnect {
            client,
            reason: DisconnectReason::Kicked,
        };
        let mut batch = vec![send(1), kick.clone(), send(2), send(3)];
        disconnects_last(&mut batch);
        assert_eq!(batch, vec![send(1), send(2), send(3), kick]);
    }

    /// The network plugin on `server`, one tick an update, with the
    /// messages it reads from the plugins not installed here.
    fn ticking_app(server: NetServer) -> App {
        ticking_app_with(server, App::new())
    }

    /// [`ticking_app`] on `app` (holding, say, a configuration).
    fn ticking_app_with(server: NetServer, mut app: App) -> App {
        app.add_plugins(crate::tick::TickPlugin {
            config: crate::tick::TickConfig::default(),
            clock: crate::tick::ManualClock::new(),
        })
        .add_message::<ShutdownStarted>()
        .add_message::<AdminKick>()
        .insert_resource(server)
        .add_plugins(NetPlugin);
        app.finish();
        app.cleanup();
        app
    }

    #[test]
    fn a_refused_shutdown_is_kept_behind_the_ticks_goodbyes() {
        let client = ClientId {
            slot: ClientIndex::from_slot(0),
            account: 1,
            session: 1,
        };
        let goodbye = NetCommand::Send {
            client,
            channel: channels::CHAT,
            payload: Bytes::from_static(b"bye"),
        };
        let (server, loopback) = NetServer::loopback();
        // net-io refuses every batch (here: gone; in the server: behind).
        drop(loopback);
        let mut app = ticking_app(server);
        app.world_mut()
            .resource_mut::<Outbox>()
            .push(goodbye.clone());
        app.world_mut().write_message(ShutdownStarted {
            reason: ShutdownReason::Console,
            grace_ticks: 1,
        });
        app.update();
        let shutdown = NetCommand::Shutdown {
            reason: DisconnectReason::ServerShutdown,
        };
        assert_eq!(
            app.world().resource::<Outbox>().commands,
            vec![goodbye.clone(), shutdown.clone()],
            "kept for the next tick, in order"
        );
        // Beyond the bound of what is carried over, the sends go; the
        // shutdown stays, and its reason is what the client hears (not
        // that it missed a reliable message).
        let mut outbox = app.world_mut().resource_mut::<Outbox>();
        outbox.commands.clear();
        outbox
            .commands
            .resize(MAX_CARRIED_COMMANDS + 1, goodbye.clone());
        outbox.commands.push(shutdown.clone());
        app.update();
        assert_eq!(app.world().resource::<Outbox>().commands, vec![shutdown]);
    }

    /// A batch carried over tick after tick keeps each client's newest
    /// snapshot only, and every message on other channels.
    #[test]
    fn a_carried_batch_keeps_only_each_clients_newest_snapshot() {
        let client = |slot: u32| ClientId {
            slot: ClientIndex::from_slot(slot),
            account: u64::from(slot) + 1,
            session: 1,
        };
        let send = |slot, channel, tick: u8| NetCommand::Send {
            client: client(slot),
            channel,
            payload: Bytes::from(vec![tick]),
        };
        let (server, loopback) = NetServer::loopback();
        drop(loopback);
        let mut app = ticking_app(server);
        for tick in 0..20 {
            let mut outbox = app.world_mut().resource_mut::<Outbox>();
            outbox.push(send(0, channels::SNAPSHOT, tick));
            outbox.push(send(1, channels::SNAPSHOT, tick));
            outbox.push(send(0, channels::EVENTS, tick));
            outbox.push(send(0, channels::CHAT, tick));
            app.update();
        }
        let carried = &app.world().resource::<Outbox>().commands;
        let on = |channel| {
            carried
                .iter()
                .filter(|c| matches!(c, NetCommand::Send { channel: c, .. } if *c == channel))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            on(channels::SNAPSHOT),
            vec![
                send(0, channels::SNAPSHOT, 19),
                send(1, channels::SNAPSHOT, 19)
            ]
        );
        let every_tick = |channel| (0..20).map(|t| send(0, channel, t)).collect::<Vec<_>>();
        assert_eq!(on(channels::EVENTS), every_tick(channels::EVENTS));
        assert_eq!(on(channels::CHAT), every_tick(channels::CHAT));
    }

    /// Past the bound, unreliable messages go first; reliable ones only if
    /// that is not enough, and then their clients are disconnected, never
    /// left waiting for a reply that was dropped.
    #[test]
    fn a_carried_batch_sheds_unreliable_messages_first_and_never_reliable_ones_silently() {
        let client = |slot: u32| ClientId {
            slot: ClientIndex::from_slot(slot),
            account: u64::from(slot) + 1,
            session: 1,
        };
        let send = |slot, channel| NetCommand::Send {
            client: client(slot),
            channel,
            payload: Bytes::from_static(b"x"),
        };
        let reliable = |c: ChannelId| c != channels::SNAPSHOT;
        let clients = Clients::default();
        let bound = CarryBound::for_memory(&MemoryConfig::default());

        let mut commands = vec![send(0, channels::SNAPSHOT); MAX_CARRIED_COMMANDS];
        commands.push(send(1, channels::INVENTORY));
        assert_eq!(
            shed(&mut commands, reliable, &clients, bound),
            MAX_CARRIED_COMMANDS as u64
        );
        assert_eq!(commands, vec![send(1, channels::INVENTORY)]);

        let mut commands = vec![send(2, channels::INVENTORY); MAX_CARRIED_COMMANDS];
        commands.push(send(3, channels::CHAT));
        commands.push(send(0, channels::SNAPSHOT));
        assert_eq!(
            shed(&mut commands, reliable, &clients, bound),
            MAX_CARRIED_COMMANDS as u64 + 2
        );
        let missed = |slot| NetCommand::Disconnect {
            client: client(slot),
            reason: DisconnectReason::SendQueueFull,
        };
        assert_eq!(commands, vec![missed(2), missed(3)]);
    }

    /// The payloads carried over are bounded in bytes too: chat's fan-out
    /// of long lines reaches the memory bound long before a million
    /// commands.
    #[test]
    fn a_carried_batch_holds_at_most_the_send_memory_bound_of_payloads() {
        let mut config = ServerConfig::default();
        config.memory.max_send_mib = 1;
        let mut app = App::new();
        app.insert_resource(config);
        let (server, loopback) = NetServer::loopback();
        drop(loopback);
        let mut app = ticking_app_with(server, app);
        let client = |slot: u32| ClientId {
            slot: ClientIndex::from_slot(slot),
            account: u64::from(slot) + 1,
            session: 1,
        };
        let line = Bytes::from(vec![b'x'; 1_100]);
        let mut disconnected = HashSet::new();
        for _ in 0..8 {
            let mut outbox = app.world_mut().resource_mut::<Outbox>();
            for slot in 0..300 {
                outbox.push(NetCommand::Send {
                    client: client(slot),
                    channel: channels::CHAT,
                    payload: line.clone(),
                });
            }
            app.update();
            let carried = app.world().resource::<Outbox>().commands();
            assert!(
                payload_bytes(carried) <= 1 << 20,
                "{}",
                payload_bytes(carried)
            );
            let cut = cut_off(carried);
            // Nothing more goes to a client cut off: a line after the one
            // it missed would show it a gap before its disconnect.
            assert!(
                !carried.iter().any(
                    |command| matches!(command, NetCommand::Send { client, .. } if cut.contains(client))
                ),
                "a line to a client cut off"
            );
            disconnected.extend(cut);
        }
        assert_eq!(
            disconnected,
            (0..300).map(client).collect::<HashSet<_>>(),
            "every client that missed a line is told why"
        );
    }

    /// After a shed cuts a client off, nothing more goes to it, a
    /// broadcast neither: it is sent to every other client instead (it
    /// reached the client before its disconnect, a gap on a reliable
    /// channel).
    #[test]
    fn a_broadcast_after_a_shed_reaches_everyone_but_the_cut() {
        let client = |slot: u32| ClientId {
            slot: ClientIndex::from_slot(slot),
            account: u64::from(slot) + 1,
            session: 1,
        };
        let mut world = World::new();
        let mut clients = Clients::default();
        for slot in 0..4 {
            clients.insert(client(slot), world.spawn_empty().id());
        }
        let cut = NetCommand::Disconnect {
            client: client(0),
            reason: DisconnectReason::SendQueueFull,
        };
        let line = Bytes::from_static(b"line");
        let mut batch = vec![
            cut.clone(),
            NetCommand::Send {
                client: client(0),
                channel: channels::CHAT,
                payload: line.clone(),
            },
            NetCommand::Broadcast {
                channel: channels::CHAT,
                payload: line.clone(),
                except: Some(client(3)),
            },
        ];
        assert_eq!(drop_sends_to_the_cut(&mut batch, &clients), 1);
        let send = |slot| NetCommand::Send {
            client: client(slot),
            channel: channels::CHAT,
            payload: line.clone(),
        };
        assert_eq!(batch, vec![cut, send(1), send(2)]);
    }

    /// A broadcast's exception is an account, as net-io reads it: expanded
    /// for a shed's cut, it reached the excepted account's newer session.
    #[test]
    fn a_broadcast_after_a_shed_leaves_out_every_session_of_its_exception() {
        let session = |slot: u32, account: u64, session: u64| ClientId {
            slot: ClientIndex::from_slot(slot),
            account,
            session,
        };
        let mut world = World::new();
        let mut clients = Clients::default();
        for client in [session(0, 1, 1), session(1, 2, 1), session(2, 7, 2)] {
            clients.insert(client, world.spawn_empty().id());
        }
        let cut = NetCommand::Disconnect {
            client: session(0, 1, 1),
            reason: DisconnectReason::SendQueueFull,
        };
        let line = Bytes::from_static(b"line");
        let mut batch = vec![
            cut.clone(),
            NetCommand::Broadcast {
                channel: channels::CHAT,
                payload: line.clone(),
                // Account 7's session that sent it, ended since.
                except: Some(session(5, 7, 1)),
            },
        ];
        drop_sends_to_the_cut(&mut batch, &clients);
        assert_eq!(
            batch,
            vec![
                cut,
                NetCommand::Send {
                    client: session(1, 2, 1),
                    channel: channels::CHAT,
                    payload: line,
                }
            ]
        );
    }

    #[test]
    fn shedding_by_bytes_drops_unreliable_payloads_first() {
        let client = |slot: u32| ClientId {
            slot: ClientIndex::from_slot(slot),
            account: u64::from(slot) + 1,
            session: 1,
        };
        let send = |slot, channel, len| NetCommand::Send {
            client: client(slot),
            channel,
            payload: Bytes::from(vec![0; len]),
        };
        let reliable = |c: ChannelId| c != channels::SNAPSHOT;
        let bound = CarryBound {
            commands: MAX_CARRIED_COMMANDS,
            bytes: 1_000,
        };
        let clients = Clients::default();
        let mut commands = vec![
            send(0, channels::SNAPSHOT, 900),
            send(1, channels::CHAT, 900),
        ];
        assert!(bound.exceeded_by(&commands));
        assert_eq!(shed(&mut commands, reliable, &clients, bound), 1);
        assert_eq!(commands, vec![send(1, channels::CHAT, 900)]);

        commands.push(send(2, channels::INVENTORY, 200));
        assert_eq!(shed(&mut commands, reliable, &clients, bound), 2);
        let missed = |slot| NetCommand::Disconnect {
            client: client(slot),
            reason: DisconnectReason::SendQueueFull,
        };
        assert_eq!(commands, vec![missed(1), missed(2)]);
    }

    #[test]
    fn clients_are_found_by_slot_only_while_the_same_session_holds_it() {
        let client = |slot, session| ClientId {
            slot: ClientIndex::from_slot(slot),
            account: 100 + u64::from(slot),
            session,
        };
        let mut world = World::new();
        let (e1, e2, e3) = (
            world.spawn_empty().id(),
            world.spawn_empty().id(),
            world.spawn_empty().id(),
        );
        let mut clients = Clients::default();
        clients.insert(client(7, 1), e1);
        clients.insert(client(2, 2), e2);
        assert_eq!(clients.len(), 2);
        assert_eq!(clients.entity(client(7, 1)), Some(e1));
        assert_eq!(
            clients.entity(client(7, 9)),
            None,
            "an older or newer session"
        );
        assert_eq!(clients.entity(client(3, 1)), None, "an empty slot");
        assert_eq!(clients.entity(client(4_000, 1)), None, "a slot never seen");
        assert_eq!(clients.by_account(107), Some(client(7, 1)));
        assert_eq!(
            clients.iter().collect::<Vec<_>>(),
            vec![(client(2, 2), e2), (client(7, 1), e1)]
        );

        assert_eq!(
            clients.remove(client(7, 9)),
            None,
            "not the session in the slot"
        );
        assert_eq!(clients.remove(client(7, 1)), Some(e1));
        assert_eq!(clients.remove(client(7, 1)), None);
        assert_eq!((clients.len(), clients.by_account(107)), (1, None));

        clients.insert(client(7, 3), e3);
        assert_eq!(clients.occupant(client(7, 4)), Some(client(7, 3)));
        assert_eq!(clients.entity(client(7, 3)), Some(e3));
        assert_eq!(clients.len(), 2);
    }
}
