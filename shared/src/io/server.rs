//! The server's `net-io` thread.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::TrySendError;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use thiserror::Error;

use super::batch::{RecvBatch, SendBatch, is_about_one_datagram};
use super::pipe::{PipeReceiver, PipeSender, pipe};
use super::priority::TickSignal;
use crate::chunks::Chunks;
use crate::endpoint::{EndpointEvent, ServerEndpoint, TransportTotals};
use crate::netcode::{AddressLookup, ClientIndex, DropReason, Located, MAX_PACKET_BYTES};
use crate::transport::{ChannelId, DisconnectReason};

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// The send-only socket, registered only while it would block.
const SENDER: Token = Token(2);
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);
/// Inbound message payloads are copied into chunks of this size and handed
/// to the game as slices of them: one allocation per chunk, not per
/// message. A chunk is freed once the game has dropped every message in it
/// (within a tick or two: messages are decoded as they are drained).
const INBOUND_CHUNK: usize = 64 * 1024;
/// Longer inbound messages get an allocation of their own instead: a
/// message in a chunk keeps the whole chunk alive as long as it lives, and
/// one evicted from the backlog (the game behind) leaves its space unusable
/// while its neighbours live, so long messages in chunks would let a few
/// counted bytes pin far more memory than
/// [`max_inbound_bytes`](ServerIoConfig::max_inbound_bytes) says. (A
/// message dropped on arrival is never copied.)
const INBOUND_SHARED_MAX: usize = 1024;
/// Datagrams read per `recvmmsg` (buffers of `MAX_PACKET_BYTES` + 1, so
/// that a longer datagram shows cut, reused).
const RECV_BATCH: usize = 64;
/// How soon the loop looks again while shutting down or while events wait
/// for room in the game's pipe.
const LOOK_AGAIN: Duration = Duration::from_millis(2);
/// The shortest wait while the socket takes no more datagrams: timers due
/// now (data ready to send) cannot send anything before it does, and
/// waking for them would spin the loop; the socket's writability wakes it.
const BLOCKED_WAIT: Duration = Duration::from_millis(1);
/// Longest the thread waits, once a shutdown's linger is over, for a
/// socket that would block to take the goodbyes still queued (a shutdown
/// says goodbye to every client at once: thousands of datagrams at a time,
/// more than a socket's send buffer holds on a real network).
const FINAL_FLUSH_LIMIT: Duration = Duration::from_millis(250);
/// Longest [`ServerIoConfig::shutdown_linger`] accepted.
pub const MAX_SHUTDOWN_LINGER: Duration = Duration::from_secs(3600);
/// Outgoing datagrams queued per loop iteration before they are sent with
/// `sendmmsg` (64 per call); also the bound of what waits while the socket
/// is not writable. When it is full and the socket blocks, the endpoint
/// keeps what it has not handed over yet (its queues are bounded) and the
/// loop waits for the socket to become writable.
const SEND_QUEUE: usize = 256;
/// Commands applied between two offers of the core to a running tick (see
/// [`TickSignal::give_way`]); datagrams are read and sent a batch at a time
/// between offers.
const COMMANDS_BETWEEN_OFFERS: usize = 64;

/// A connected client as the game sees it: the secure layer's slot, the
/// account, and the connection's number, so that whoever connects next in
/// that slot (another player, or the same one again) never receives what
/// was meant for this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    /// The endpoint slot.
    pub slot: ClientIndex,
    /// The account id from the connect token.
    pub account: u64,
    /// The connection's number, unique for the server's lifetime.
    pub session: u64,
}

/// What the `net-io` thread reports to the game.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A client completed the handshake.
    Connected {
        /// The client.
        client: ClientId,
    },
    /// A message arrived.
    Message {
        /// From whom.
        client: ClientId,
        /// On which channel.
        channel: ChannelId,
        /// The bytes.
        payload: Bytes,
    },
    /// A client left.
    Disconnected {
        /// The client.
        client: ClientId,
        /// Why.
        reason: DisconnectReason,
    },
}

/// What the game asks of the `net-io` thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCommand {
    /// One message to one client.
    Send {
        /// The recipient.
        client: ClientId,
        /// The channel.
        channel: ChannelId,
        /// The bytes (shared, not copied, when sent to many).
        payload: Bytes,
    },
    /// One message to every connected client, but `except` (the player
    /// whose action it relays, say): one command however many receive it.
    /// Only clients sent a message before it: one whose `Connected` the
    /// game has not handled gets nothing ahead of the game's own first
    /// message to it (its welcome).
    Broadcast {
        /// The channel.
        channel: ChannelId,
        /// The bytes, serialized once for everyone.
        payload: Bytes,
        /// A client left out: its account's, in whichever session (a
        /// player who reconnected since the game wrote this, before the
        /// game saw the new session, is still the player left out).
        except: Option<ClientId>,
    },
    /// End one client's session.
    Disconnect {
        /// The client.
        client: ClientId,
        /// Why (the client is told).
        reason: DisconnectReason,
    },
    /// Say goodbye to everyone, flush, and stop the thread.
    Shutdown {
        /// Why (every client is told).
        reason: DisconnectReason,
    },
}

/// Settings of the `net-io` thread.
#[derive(Debug, Clone)]
pub struct ServerIoConfig {
    /// Capacity of the event channel to the game. When it is full, events
    /// wait in a backlog with room for a quarter of this in messages
    /// (connects and disconnects wait beyond it: none is dropped while
    /// the thread runs; what waits when it stops is counted and logged);
    /// when that is full too,
    /// messages on [`droppable_channels`](Self::droppable_channels) are
    /// dropped (counted in `inbound_dropped`), and a reliable message takes
    /// the place of the oldest droppable ones waiting, or, when those are
    /// too few, of every message waiting of the sessions that have ended
    /// (their ends wait behind them; the game sees a prefix of each one's
    /// stream). When dropping them all would not make room, a client is
    /// disconnected with
    /// [`DisconnectReason::Flooding`]: the sender if it holds more than its
    /// even share of the backlog (a quarter of this divided by the clients
    /// connected) or as many of its reliable messages as anyone, else the
    /// client holding the most, whose messages waiting are dropped with it
    /// (the game sees them up to a point, then its end), and the sender's
    /// message is kept. The game never loses a reliable message of a
    /// client that stays.
    pub inbound_capacity: usize,
    /// Message bytes the events waiting for the game (in its channel and
    /// the backlog) may hold together. A game that stalls while clients
    /// send long messages then holds at most this much, not
    /// `inbound_capacity` times the longest message; a message that would
    /// go over it is handled as one that finds the backlog full (the share
    /// and the most held then count bytes in the backlog: what waits in
    /// the channel is the game's already, and when only that fills this
    /// the sender is the one disconnected). Droppable
    /// messages may fill half of it, so that a reliable message finds room
    /// behind them. Default 64 MiB (a second of 5,000 players' movement is
    /// under 4 MiB). The memory held is at most this plus 1 KiB for each
    /// event waiting (short messages share chunks of memory, see
    /// `INBOUND_SHARED_MAX`).
    pub max_inbound_bytes: usize,
    /// Capacity of the command channel, in batches (one per tick).
    pub outbound_batches: usize,
    /// A client delivering more messages than this in one second is
    /// disconnected with [`DisconnectReason::Flooding`].
    pub max_messages_per_second: u32,
    /// Channels whose messages may be dropped when the game falls behind.
    pub droppable_channels: Vec<ChannelId>,
    /// Longest the thread waits for a shutdown's goodbyes to leave; at
    /// most [`MAX_SHUTDOWN_LINGER`].
    pub shutdown_linger: Duration,
    /// Receive and send buffer size asked of the socket (see
    /// [`tune_udp_socket`](super::socket::tune_udp_socket)); the thread logs
    /// what it got and warns when the system grants less.
    pub socket_buffer_bytes: usize,
    /// How many nice steps the thread lowers its own priority by when it
    /// starts (0: not at all), so that it yields a shared core to the
    /// game's tick (see [`priority`](super::priority)).
    pub nice_steps: u8,
    /// `recvmmsg` batches (of 64 datagrams) the thread reads per turn of its
    /// loop before it applies the game's commands, runs the timers and
    /// sends, then reads on: datagrams arriving as fast as they are handled
    /// (a flood) slow those, never stop them. Default 256 (16,384
    /// datagrams, tens of milliseconds of work); 16 cost datagrams at 5,000
    /// clients on one core (see `BENCHMARKS.md`).
    pub recv_batches_per_turn: usize,
}

impl Default for ServerIoConfig {
    fn default() -> Self {
        Self {
            inbound_capacity: 64 * 1024,
            max_inbound_bytes: 64 << 20,
            outbound_batches: 8,
            max_messages_per_second: 2_000,
            droppable_channels: Vec::new(),
            shutdown_linger: Duration::from_millis(500),
            socket_buffer_bytes: super::socket::DEFAULT_SOCKET_BUFFER_BYTES,
            nice_steps: 0,
            recv_batches_per_turn: 256,
        }
    }
}

/// Counters the `net-io` thread keeps, readable from any thread.
#[derive(Debug, Default)]
pub struct IoStats {
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    send_errors: AtomicU64,
    inbound_dropped: AtomicU64,
    stale_commands: AtomicU64,
    socket_drops: AtomicU64,
    flooding_disconnects: AtomicU64,
    connected: AtomicU64,
    loop_wakeups: AtomicU64,
    tick_yields: AtomicU64,
    summary: Mutex<NetSummary>,
    summary_version: AtomicU64,
    /// Message bytes the game has taken from its channel, ever (see
    /// [`InboundEvents`]).
    inbound_taken: AtomicU64,
    /// Tests: while set, the socket takes nothing, as a full send buffer
    /// refuses datagrams (loopback never does).
    #[cfg(test)]
    choked: std::sync::atomic::AtomicBool,
}

/// One connected client in a [`NetSummary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSummary {
    /// Who.
    pub client: ClientId,
    /// Where its packets come from.
    pub addr: Option<SocketAddr>,
    /// Smoothed round-trip time, once measured.
    pub rtt: Option<Duration>,
}

/// What the `net-io` thread publishes once a second about all connections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetSummary {
    /// Transport counters over every connection served.
    pub transport: TransportTotals,
    /// Every connected client, with its address and smoothed RTT.
    pub clients: Vec<ClientSummary>,
    /// Datagrams the secure layer ignored, by reason (cumulative).
    pub drops: Vec<(DropReason, u64)>,
    /// Clients disconnected because their reliable send queue was full.
    pub queue_full_disconnects: u64,
}

/// A copy of [`IoStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStatsSnapshot {
    /// Datagrams read from the socket.
    pub datagrams_in: u64,
    /// Datagrams written to the socket (accepted by it).
    pub datagrams_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Datagrams the socket refused to send (and that were dropped; a
    /// socket that would block is waited for, not counted).
    pub send_errors: u64,
    /// Messages dropped because the game fell behind: droppable ones, a
    /// reliable one that found no room (its sender then disconnected as
    /// flooding), the messages waiting of a client cut off to make room,
    /// and those still waiting for room when the thread stopped. Not
    /// counted: what a client sends after it floods (rate or room) until
    /// its disconnect, and messages over the rate limit; the clients are
    /// in `flooding_disconnects`.
    pub inbound_dropped: u64,
    /// Sends and disconnects dropped because their client had left and,
    /// perhaps, a new client had taken its slot (the game had not yet seen
    /// the departure when it wrote them).
    pub stale_commands: u64,
    /// Datagrams the operating system dropped on arrival because the
    /// socket's receive buffer was full (the thread fell behind a burst);
    /// updated once a second, Linux only.
    pub socket_drops: u64,
    /// Clients disconnected for flooding: rate, a full inbound channel,
    /// or receive memory over the endpoint's total bound.
    pub flooding_disconnects: u64,
    /// Clients connected now.
    pub connected: u64,
    /// Times the I/O loop woke up.
    pub loop_wakeups: u64,
    /// Times the thread offered its core to a tick running on it (see
    /// [`TickSignal`]).
    pub tick_yields: u64,
}

impl IoStats {
    /// The latest once-a-second summary and its version (which increases
    /// with every publication).
    pub fn summary(&self) -> (u64, NetSummary) {
        // The version is read under the lock it is raised under: the pair
        // is one publication.
        match self.summary.lock() {
            Ok(summary) => (
                self.summary_version.load(Ordering::Acquire),
                summary.clone(),
            ),
            Err(_) => (
                self.summary_version.load(Ordering::Acquire),
                NetSummary::default(),
            ),
        }
    }

    /// The version [`summary`](Self::summary) would return now: it changes
    /// when a new summary is out.
    pub fn summary_version(&self) -> u64 {
        self.summary_version.load(Ordering::Acquire)
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> IoStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IoStatsSnapshot {
            datagrams_in: get(&self.datagrams_in),
            datagrams_out: get(&self.datagrams_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            send_errors: get(&self.send_errors),
            inbound_dropped: get(&self.inbound_dropped),
            stale_commands: get(&self.stale_commands),
            socket_drops: get(&self.socket_drops),
            flooding_disconnects: get(&self.flooding_disconnects),
            connected: get(&self.connected),
            loop_wakeups: get(&self.loop_wakeups),
            tick_yields: get(&self.tick_yields),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Why the I/O thread could not start.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// Binding or registering the socket failed.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Creating the poller or the thread failed.
    #[error("cannot start the net-io thread: {0}")]
    Thread(#[from] io::Error),
    /// A [`ServerIoConfig`] value the thread cannot work with.
    #[error("invalid net-io configuration: {0}")]
    Config(&'static str),
}

/// The game's handle on the `net-io` thread.
pub struct ServerIo {
    events: PipeReceiver<NetEvent>,
    commands: PipeSender<Vec<NetCommand>>,
    waker: Arc<Waker>,
    stats: Arc<IoStats>,
    tick: TickSignal,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
    /// Set by the thread when it stops after the shutdown it was sent
    /// (not on a poll error, nor a panic).
    stopped_as_asked: Arc<AtomicBool>,
}

impl ServerIo {
    /// Binds `bind`, moves `endpoint` onto a new thread named `net-io` and
    /// starts serving.
    pub fn spawn(
        bind: SocketAddr,
        endpoint: ServerEndpoint,
        config: ServerIoConfig,
    ) -> Result<Self, SpawnError> {
        let socket = super::socket::bind_game_socket(bind)
            .map_err(|source| SpawnError::Bind { addr: bind, source })?;
        Self::spawn_on(socket, endpoint, config)
    }

    /// Like [`spawn`](Self::spawn) on a socket bound already (e.g. to learn
    /// the port the OS picked before configuring the endpoint). Bound with
    /// [`bind_game_socket`](super::socket::bind_game_socket), it sends from
    /// a second socket on its address where the platform allows (see
    /// [`GameSocket`](super::socket::GameSocket)); a `UdpSocket` bound
    /// elsewhere sends for itself.
    pub fn spawn_on(
        socket: impl Into<super::socket::GameSocket>,
        endpoint: ServerEndpoint,
        config: ServerIoConfig,
    ) -> Result<Self, SpawnError> {
        let (socket, twin) = socket.into().into_parts();
        if config.outbound_batches == 0 {
            return Err(SpawnError::Config(
                "outbound_batches must be at least 1 (a batch a tick)",
            ));
        }
        if config.inbound_capacity < 4 {
            return Err(SpawnError::Config(
                "inbound_capacity must be at least 4 (its backlog is a quarter of it)",
            ));
        }
        if config.shutdown_linger > MAX_SHUTDOWN_LINGER {
            return Err(SpawnError::Config(
                "shutdown_linger must be at most an hour (a shutdown's deadline is counted \
                 from its start)",
            ));
        }
        socket.set_nonblocking(true)?;
        let local_addr = socket.local_addr()?;
        let wanted = config.socket_buffer_bytes;
        let buffers = super::socket::tune_udp_socket(&socket, wanted);
        if buffers.holds(wanted) {
            tracing::debug!(?buffers, "game socket buffers");
        } else {
            tracing::warn!(
                wanted,
                receive = ?buffers.receive,
                send = ?buffers.send,
                "the game socket got smaller buffers than asked for; bursts of datagrams \
                 may be dropped (on Linux raise net.core.rmem_max and net.core.wmem_max)"
            );
        }
        // Count from the socket's opening: whatever it dropped before the
        // thread started (a burst during startup) was game traffic too.
        let socket_drops_seen = super::socket::receive_drops(&socket).map(|_| 0);
        let sender = twin.map(|twin| {
            super::socket::tune_send_only_socket(&twin, wanted);
            UdpSocket::from_std(twin)
        });
        tracing::debug!(send_only_socket = sender.is_some(), "game socket");
        let mut socket = UdpSocket::from_std(socket);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (event_tx, events) = pipe(config.inbound_capacity);
        let (commands, command_rx) = pipe(config.outbound_batches);
        let stats = Arc::new(IoStats::default());
        let tick = TickSignal::new();
        let nice_steps = config.nice_steps;
        let to_game = ToGame {
            events: event_tx,
            backlog: VecDeque::new(),
            backlog_room: config.inbound_capacity / 4,
            lifecycle_waiting: 0,
            max_bytes: config.max_inbound_bytes as u64,
            droppable: config.droppable_channels.clone(),
            handed: 0,
            held: Vec::new(),
            departed: HashMap::new(),
            chunks: Chunks::new(INBOUND_CHUNK),
            stats: Arc::clone(&stats),
        };
        let mut io_loop = IoLoop {
            poll,
            socket,
            sender,
            endpoint,
            to_game,
            commands: command_rx,
            stats: Arc::clone(&stats),
            tick: tick.clone(),
            config,
            rates: Vec::new(),
            shutting_down: None,
            next_summary: None,
            summary_owed: false,
            // One byte more than a packet may have: a longer datagram
            // arrives cut to this, which the secure layer counts as
            // `Oversized` (cut to the limit, it would pass as a packet of
            // the largest size and fail as something else).
            inbox: RecvBatch::new(RECV_BATCH, MAX_PACKET_BYTES + 1),
            lookups: Vec::with_capacity(RECV_BATCH),
            located: Vec::with_capacity(RECV_BATCH),
            outbox: SendBatch::new(SEND_QUEUE, MAX_PACKET_BYTES),
            wants_writable: false,
            socket_drops_seen,
            endpoint_floods_seen: 0,
        };
        let stopped_as_asked = Arc::new(AtomicBool::new(false));
        let as_asked = Arc::clone(&stopped_as_asked);
        let thread = std::thread::Builder::new()
            .name("net-io".into())
            .spawn(move || {
                if nice_steps > 0 {
                    match super::priority::lower_current_thread_priority(nice_steps) {
                        Ok(nice) => tracing::debug!(?nice, "net-io thread priority lowered"),
                        Err(error) => {
                            tracing::warn!(%error, "cannot lower the net-io thread's priority");
                        }
                    }
                }
                let stopped_as_asked = io_loop.run();
                // However the loop ended: what the game never took is counted.
                io_loop.to_game.abandon_backlog();
                if stopped_as_asked {
                    as_asked.store(true, Ordering::Release);
                }
            })?;
        Ok(Self {
            events,
            commands,
            waker,
            stats,
            tick,
            local_addr,
            thread: Some(thread),
            stopped_as_asked,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The inbound side: drain it once per tick.
    pub fn events(&mut self) -> InboundEvents<'_> {
        InboundEvents {
            receiver: &mut self.events,
            taken: &self.stats.inbound_taken,
            bytes: 0,
        }
    }

    /// Hands one tick's commands to the thread and wakes it. When the thread
    /// is `outbound_batches` ticks behind the batch is refused and returned.
    pub fn submit(&mut self, batch: Vec<NetCommand>) -> Result<(), Vec<NetCommand>> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.commands.try_send(batch) {
            Ok(()) => {
                let _ = self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => Err(batch),
        }
    }

    /// Hands over a batch like [`submit`](Self::submit), waiting while the
    /// thread is `outbound_batches` ticks behind: for the last batch before
    /// the server stops, which no later tick would carry. Fails (returning
    /// the batch) only once the thread has stopped.
    pub fn submit_waiting(&mut self, batch: Vec<NetCommand>) -> Result<(), Vec<NetCommand>> {
        if batch.is_empty() {
            return Ok(());
        }
        let _ = self.waker.wake();
        let sent = self.commands.send(batch).map_err(|refused| refused.0);
        let _ = self.waker.wake();
        sent
    }

    /// The thread's counters.
    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }

    /// What the game loop marks each tick's start and end in, so that the
    /// thread hands back the core while a tick runs on it.
    pub fn tick_signal(&self) -> &TickSignal {
        &self.tick
    }

    /// Whether the thread has stopped.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Whether the thread has stopped on a fault (its poll failed, or it
    /// panicked), not after a shutdown it was sent: during a shutdown too,
    /// its clients may not have heard their goodbyes.
    pub fn has_failed(&self) -> bool {
        self.is_finished() && !self.stopped_as_asked.load(Ordering::Acquire)
    }

    /// Says goodbye to every client with `reason`, waits for the thread to
    /// flush and stop (at most `shutdown_linger`, then up to 250 ms more
    /// while the socket would not take the goodbyes).
    pub fn shutdown(mut self, reason: DisconnectReason) {
        self.stop(reason);
    }

    /// [`shutdown`](Self::shutdown) on a handle kept, returning whether the
    /// thread stopped as asked: `false` if it stopped on a fault (before or
    /// during its goodbyes; see [`has_failed`](Self::has_failed)). A
    /// shutdown already sent is not sent again.
    pub fn stop_and_wait(&mut self, reason: DisconnectReason) -> bool {
        self.stop(reason);
        !self.has_failed()
    }

    /// Queues the shutdown behind whatever the thread has still to apply
    /// (waiting for room when the game is `outbound_batches` ahead: a
    /// shutdown that did not fit would leave the thread running and this
    /// waiting on it forever), then waits for the thread.
    fn stop(&mut self, reason: DisconnectReason) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let _ = self.waker.wake();
        // Fails only if the thread has stopped already.
        let _ = self.commands.send(vec![NetCommand::Shutdown { reason }]);
        let _ = self.waker.wake();
        let _ = thread.join();
    }
}

impl Drop for ServerIo {
    fn drop(&mut self) {
        self.stop(DisconnectReason::ServerShutdown);
    }
}

/// What shortens or lengthens the loop's wait beyond the endpoint's timer.
#[derive(Debug, Clone, Copy, Default)]
struct Waits {
    /// The last turn stopped reading with datagrams possibly left.
    unread: bool,
    /// Shutting down, or events wait for room in the game's pipe.
    busy: bool,
    /// The socket takes no more datagrams until it becomes writable.
    blocked: bool,
}

/// How long the loop may wait for the socket or the waker, given the
/// endpoint's next timer (`timer`, from now; `None` for no wait limit).
fn wait_for(timer: Option<Duration>, waits: Waits) -> Option<Duration> {
    if waits.unread {
        return Some(Duration::ZERO);
    }
    let timer = if waits.blocked {
        timer.map(|t| t.max(BLOCKED_WAIT))
    } else {
        timer
    };
    if waits.busy {
        Some(timer.map_or(LOOK_AGAIN, |t| t.min(LOOK_AGAIN)))
    } else {
        timer
    }
}

/// The events waiting for the game, taken as they are iterated. The
/// message bytes taken are handed back to the thread's
/// [`max_inbound_bytes`](ServerIoConfig::max_inbound_bytes) when the
/// iterator is dropped (one write a drain, not one a message).
pub struct InboundEvents<'a> {
    receiver: &'a mut PipeReceiver<NetEvent>,
    taken: &'a AtomicU64,
    bytes: u64,
}

impl Iterator for InboundEvents<'_> {
    type Item = NetEvent;

    fn next(&mut self) -> Option<NetEvent> {
        let event = self.receiver.try_recv()?;
        self.bytes += payload_bytes(&event);
        Some(event)
    }
}

impl Drop for InboundEvents<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.taken.fetch_add(self.bytes, Ordering::Release);
        }
    }
}

/// What an event counts against
/// [`max_inbound_bytes`](ServerIoConfig::max_inbound_bytes).
fn payload_bytes(event: &NetEvent) -> u64 {
    match event {
        NetEvent::Message { payload, .. } => payload.len() as u64,
        NetEvent::Connected { .. } | NetEvent::Disconnected { .. } => 0,
    }
}

/// What `net-io` hands the game: the event channel, a bounded backlog for
/// when the channel is full, and the accounting of
/// [`max_inbound_bytes`](ServerIoConfig::max_inbound_bytes).
struct ToGame {
    events: PipeSender<NetEvent>,
    backlog: VecDeque<NetEvent>,
    /// Most messages the backlog holds: a quarter of the channel.
    /// Connects and disconnects wait beyond it: the game must hear every
    /// one, none is dropped to make room, and each costs a handshake with
    /// a token of the server's key. Counted in it, they could fill it, and
    /// every reliable message after them would flood its sender, who held
    /// nothing.
    backlog_room: usize,
    /// The connects and disconnects in `backlog`.
    lifecycle_waiting: usize,
    max_bytes: u64,
    droppable: Vec<ChannelId>,
    /// Message bytes handed over (into the channel or the backlog) since
    /// the start, less those dropped from the backlog; the game's part is
    /// [`IoStats::inbound_taken`].
    handed: u64,
    /// The reliable messages waiting in the backlog, by slot: counted only
    /// while the backlog is in use.
    held: Vec<Held>,
    /// The sessions whose end waits in the backlog behind reliable
    /// messages of theirs, with what those hold: they give way before
    /// anyone still here is cut off (see [`admit`](Self::admit)).
    departed: HashMap<ClientId, Held>,
    /// The chunks short payloads are copied into.
    chunks: Chunks,
    stats: Arc<IoStats>,
}

/// A client's reliable messages waiting in the backlog: what decides who
/// is disconnected when a reliable message finds no room.
#[derive(Clone, Copy, Default)]
struct Held {
    /// Whose; `None` once the client's end waits behind them (they are
    /// then counted in [`ToGame::departed`]) or nothing was counted.
    client: Option<ClientId>,
    messages: u64,
    bytes: u64,
}

/// Whose messages waiting [`ToGame::make_room`] drops, all of them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    Nobody,
    /// A client being cut off.
    Client(ClientId),
    /// Every [`ToGame::departed`] session.
    Departed,
}

/// What a full backlog is short of for a reliable message.
#[derive(Clone, Copy)]
enum Short {
    Events,
    Bytes,
}

/// What [`ToGame::admit`] decided for a message.
enum Admission {
    /// Copy it and hand it over.
    Keep,
    /// Dropped (counted): droppable, and no room.
    Drop,
    /// Dropped (counted), and its sender is to be disconnected as flooding:
    /// reliable, and no room even with every droppable message waiting
    /// and every departed session's dropped, and the sender holds more
    /// than its share or the most.
    Flood,
    /// Copy it and hand it over; the client named, holding the most of the
    /// backlog, is to be disconnected as flooding: its messages waiting
    /// were dropped (counted) to make room.
    Cut(ClientId),
}

impl ToGame {
    /// Decides, before anything is copied, whether a message of `len`
    /// bytes from `client` on `channel` is handed over. When the channel
    /// is full, messages wait in the backlog; once that is full too, or
    /// the message bytes waiting would pass `max_bytes`, a droppable
    /// message is dropped, and a reliable one takes the place of the
    /// oldest droppable messages waiting or, when those are too few, of
    /// every message waiting of every session that has ended (a player
    /// reconnecting again and again must not add up to less than each of
    /// its sessions; all of a session's, so that the game sees a prefix of
    /// its stream; all sessions at once, so that a flood of them costs one
    /// walk of the backlog, not one each). If that is not enough, the
    /// sender floods if it holds more than its even share of what binds
    /// (events or bytes in the backlog) or as much as anyone; else the
    /// client holding the most is cut off, its messages waiting going too.
    fn admit(&mut self, client: ClientId, channel: ChannelId, len: usize) -> Admission {
        self.flush_backlog();
        let bytes = len as u64;
        // Droppable messages may fill half of `max_bytes`, so that
        // droppable traffic alone never leaves a reliable one without room.
        let droppable = self.droppable.contains(&channel);
        let limit = if droppable {
            self.max_bytes / 2
        } else {
            self.max_bytes
        };
        if self.backlog.is_empty() && !self.events.is_full() && self.bytes_fit(bytes, limit) {
            return Admission::Keep;
        }
        if self.backlog_fits(bytes, limit) {
            return Admission::Keep;
        }
        if droppable {
            bump(&self.stats.inbound_dropped, 1);
            return Admission::Drop;
        }
        let short = match self.make_room(bytes, limit, Cut::Nobody) {
            Ok(()) => return Admission::Keep,
            Err(short) => short,
        };
        let measure = |held: &Held| match short {
            Short::Events => held.messages,
            Short::Bytes => held.bytes,
        };
        if !self.departed.is_empty() && self.make_room(bytes, limit, Cut::Departed).is_ok() {
            return Admission::Keep;
        }
        // Who is cut off: a scan of the slots, made only when a reliable
        // message finds no room; each cut frees the most held.
        let connected = self.stats.connected.load(Ordering::Relaxed).max(1);
        let share = match short {
            Short::Events => self.backlog_room as u64,
            Short::Bytes => self.max_bytes,
        } / connected;
        let own = self.held_by(client).map_or(0, |held| measure(&held));
        let heaviest = self
            .held
            .iter()
            .filter_map(|held| Some((held.client?, measure(held))))
            .max_by_key(|&(_, most)| most);
        match heaviest {
            Some((holder, most))
                if own <= share
                    && most > own
                    && self.make_room(bytes, limit, Cut::Client(holder)).is_ok() =>
            {
                Admission::Cut(holder)
            }
            _ => {
                bump(&self.stats.inbound_dropped, 1);
                Admission::Flood
            }
        }
    }

    /// Makes room for a message of `bytes` within `limit`: the oldest
    /// droppable messages waiting give way, as few as make room, and every
    /// message of `cut` goes. Changes nothing and
    /// says what is short when that does not make room. The walk stops at
    /// the last droppable message needed: a reliable message does not cost
    /// a walk of the whole backlog (thousands of events while the game is
    /// behind, when this thread's time is scarcest), unless it cuts
    /// messages of `cut` (a client cut off, or every departed session at
    /// once: each such walk empties [`departed`](Self::departed)).
    fn make_room(&mut self, bytes: u64, limit: u64, cut: Cut) -> Result<(), Short> {
        let held = match cut {
            Cut::Nobody => Held::default(),
            Cut::Client(client) => self.held_by(client).unwrap_or_default(),
            Cut::Departed => self
                .departed
                .values()
                .fold(Held::default(), |sum, held| Held {
                    client: None,
                    messages: sum.messages + held.messages,
                    bytes: sum.bytes + held.bytes,
                }),
        };
        let mut left = (self.messages_waiting() as u64).saturating_sub(held.messages);
        let mut freed = held.bytes;
        let mut end = 0;
        for (at, waiting) in self.backlog.iter().enumerate() {
            if left < self.backlog_room as u64 && self.bytes_fit(bytes, limit + freed) {
                break;
            }
            if self.is_droppable(waiting) {
                left -= 1;
                freed += payload_bytes(waiting);
                end = at + 1;
            }
        }
        if left >= self.backlog_room as u64 {
            return Err(Short::Events);
        }
        if !self.bytes_fit(bytes, limit + freed) {
            return Err(Short::Bytes);
        }
        // Every droppable message before `end` gives way, and every one of
        // `cut`; the others there close up, in order.
        let last = if cut == Cut::Nobody {
            end
        } else {
            self.backlog.len()
        };
        let (mut write, mut dropped, mut freed) = (0, 0, 0);
        for read in 0..last {
            let event = &self.backlog[read];
            if (read < end && self.is_droppable(event)) || self.is_cut(event, cut) {
                dropped += 1;
                freed += payload_bytes(event);
            } else {
                self.backlog.swap(write, read);
                write += 1;
            }
        }
        self.backlog.drain(write..last);
        if cut != Cut::Nobody {
            // The cut messages shared chunks with those left, each of which
            // would keep its dropped neighbours' memory alive (up to a
            // chunk apiece) past what `handed` counts: those left are
            // copied afresh. Cuts are rare (a client disconnected, or
            // every departed session at once), and this copies at most the
            // backlog's short messages.
            for event in &mut self.backlog {
                if let NetEvent::Message { payload, .. } = event
                    && payload.len() <= INBOUND_SHARED_MAX
                {
                    *payload = self.chunks.copy(payload);
                }
            }
        }
        match cut {
            Cut::Nobody => {}
            Cut::Client(client) => {
                if let Some(held) = self.held.get_mut(client.slot.get())
                    && held.client == Some(client)
                {
                    *held = Held::default();
                }
            }
            Cut::Departed => self.departed.clear(),
        }
        bump(&self.stats.inbound_dropped, dropped);
        self.handed -= freed;
        Ok(())
    }

    /// Whether `event` is a message of `cut`.
    fn is_cut(&self, event: &NetEvent, cut: Cut) -> bool {
        match (cut, event) {
            (Cut::Nobody, _) | (_, NetEvent::Connected { .. } | NetEvent::Disconnected { .. }) => {
                false
            }
            (Cut::Client(cut), NetEvent::Message { client, .. }) => *client == cut,
            (Cut::Departed, NetEvent::Message { client, .. }) => self.departed.contains_key(client),
        }
    }

    /// What `client` holds in the backlog, if anything is counted.
    fn held_by(&self, client: ClientId) -> Option<Held> {
        self.held
            .get(client.slot.get())
            .filter(|held| held.client == Some(client))
            .copied()
    }

    /// A reliable message's sender and bytes, for [`Held`].
    fn counted(&self, event: &NetEvent) -> Option<(ClientId, u64)> {
        match event {
            NetEvent::Message {
                client,
                channel,
                payload,
            } if !self.droppable.contains(channel) => Some((*client, payload.len() as u64)),
            _ => None,
        }
    }

    /// Puts `event` at the end of the backlog and counts it: a reliable
    /// message against its sender's hold; a client's end ends the count
    /// of its messages before it, which are then its departed session's.
    fn wait(&mut self, event: NetEvent) {
        if let Some((client, bytes)) = self.counted(&event) {
            let index = client.slot.get();
            if self.held.len() <= index {
                self.held.resize(index + 1, Held::default());
            }
            let held = &mut self.held[index];
            if held.client != Some(client) {
                *held = Held {
                    client: Some(client),
                    ..Held::default()
                };
            }
            held.messages += 1;
            held.bytes += bytes;
        } else if let NetEvent::Disconnected { client, .. } = &event
            && let Some(held) = self.held.get_mut(client.slot.get())
            && held.client == Some(*client)
        {
            if held.messages > 0 {
                self.departed.insert(*client, *held);
            }
            *held = Held::default();
        }
        if !matches!(event, NetEvent::Message { .. }) {
            self.lifecycle_waiting += 1;
        }
        self.backlog.push_back(event);
    }

    /// Whether `event` is a message that may be dropped.
    fn is_droppable(&self, event: &NetEvent) -> bool {
        matches!(event, NetEvent::Message { channel, .. } if self.droppable.contains(channel))
    }

    /// A kept message's bytes, as the game will hold them. Short ones are
    /// copied back to back into shared chunks (one allocation for many);
    /// longer ones get an allocation of their own, so that no message
    /// keeps a chunk alive for more than [`INBOUND_SHARED_MAX`] bytes of
    /// others (messages are copied only once [`admit`](Self::admit)
    /// kept them: one dropped never sits in a chunk).
    fn copy(&mut self, payload: &[u8]) -> Bytes {
        if payload.len() > INBOUND_SHARED_MAX {
            Bytes::copy_from_slice(payload)
        } else {
            self.chunks.copy(payload)
        }
    }

    /// Hands over a message [`admit`](Self::admit) kept, or a connect or
    /// disconnect (always kept), in order.
    fn hand(&mut self, event: NetEvent) {
        let bytes = payload_bytes(&event);
        self.flush_backlog();
        let event = if self.backlog.is_empty() {
            match self.events.try_send(event) {
                Ok(()) => {
                    self.handed += bytes;
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(event)) => event,
            }
        } else {
            event
        };
        self.handed += bytes;
        self.wait(event);
    }

    /// Whether `bytes` more keep what waits for the game within `limit`.
    fn bytes_fit(&self, bytes: u64, limit: u64) -> bool {
        let taken = self.stats.inbound_taken.load(Ordering::Acquire);
        let waiting = self.handed.saturating_sub(taken);
        waiting + bytes <= limit
    }

    /// Whether a message of `bytes` may wait in the backlog.
    fn backlog_fits(&self, bytes: u64, limit: u64) -> bool {
        self.messages_waiting() < self.backlog_room && self.bytes_fit(bytes, limit)
    }

    /// The messages in the backlog, what `backlog_room` bounds.
    fn messages_waiting(&self) -> usize {
        self.backlog.len() - self.lifecycle_waiting
    }

    /// At the thread's end: what the game's channel takes of the backlog
    /// goes in, and the rest is dropped, counted, and said in the log.
    fn abandon_backlog(&mut self) {
        self.flush_backlog();
        if self.backlog.is_empty() {
            return;
        }
        let messages = self.messages_waiting();
        bump(&self.stats.inbound_dropped, messages as u64);
        tracing::warn!(
            messages,
            connects_and_disconnects = self.lifecycle_waiting,
            "net-io stops with events the game never took"
        );
        self.backlog.clear();
        self.lifecycle_waiting = 0;
    }

    /// Whether events wait in the backlog (the loop then looks again soon).
    fn is_waiting(&self) -> bool {
        !self.backlog.is_empty()
    }

    fn flush_backlog(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            let counted = self.counted(&event);
            let ended = match &event {
                NetEvent::Disconnected { client, .. } => Some(*client),
                NetEvent::Connected { .. } | NetEvent::Message { .. } => None,
            };
            let lifecycle = !matches!(event, NetEvent::Message { .. });
            match self.events.try_send(event) {
                Ok(()) => {
                    if lifecycle {
                        self.lifecycle_waiting -= 1;
                    }
                    if let Some((client, bytes)) = counted {
                        let held = match self.held.get_mut(client.slot.get()) {
                            Some(held) if held.client == Some(client) => Some(held),
                            _ => self.departed.get_mut(&client),
                        };
                        if let Some(held) = held {
                            held.messages = held.messages.saturating_sub(1);
                            held.bytes = held.bytes.saturating_sub(bytes);
                        }
                    } else if let Some(client) = ended
                        && !self.departed.is_empty()
                    {
                        self.departed.remove(&client);
                    }
                }
                Err(TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.backlog.clear();
                    self.lifecycle_waiting = 0;
                    self.held.clear();
                    self.departed.clear();
                    return;
                }
            }
        }
    }
}

/// Per-slot inbound message counting for the flood limit.
#[derive(Clone, Copy, Default)]
struct Rate {
    window_start: Option<Instant>,
    count: u32,
}

struct IoLoop {
    poll: Poll,
    socket: UdpSocket,
    /// Where datagrams go out when the platform allows a second socket on
    /// the address (see [`GameSocket`](super::socket::GameSocket));
    /// else `socket` sends too.
    sender: Option<UdpSocket>,
    endpoint: ServerEndpoint,
    to_game: ToGame,
    commands: PipeReceiver<Vec<NetCommand>>,
    stats: Arc<IoStats>,
    /// Whether the game's tick is running, and where.
    tick: TickSignal,
    config: ServerIoConfig,
    rates: Vec<Rate>,
    /// Since a `Shutdown`: until when clients may linger, and what they
    /// are told.
    shutting_down: Option<(Instant, DisconnectReason)>,
    next_summary: Option<Instant>,
    /// A turn skipped the summary as not due: one is owed at `next_summary`.
    summary_owed: bool,
    /// Reused buffers for reading datagrams.
    inbox: RecvBatch,
    /// The senders of the datagrams in `inbox`, hashed ahead.
    lookups: Vec<AddressLookup>,
    /// The same, looked up ahead.
    located: Vec<Located>,
    /// Datagrams produced this iteration, sent together; what the socket
    /// would not take yet waits here (bounded).
    outbox: SendBatch,
    /// Whether the socket is registered for writability (only while the
    /// outbox waits on it).
    wants_writable: bool,
    /// The kernel's (wrapping) drop counter of the socket when last read.
    socket_drops_seen: Option<u32>,
    /// The endpoint's own flooding disconnects already in
    /// [`IoStats::flooding_disconnects`].
    endpoint_floods_seen: u64,
}

impl IoLoop {
    /// Serves until a shutdown the game sent is done (`true`), or the
    /// poll fails (`false`).
    fn run(&mut self) -> bool {
        let mut events = Events::with_capacity(64);
        let mut unread = false;
        loop {
            let now = Instant::now();
            // A summary skipped as not due yet is owed: the loop wakes for
            // it even with nothing else to do (what changed since the last
            // one would otherwise not show until traffic came).
            let owed = self.summary_owed.then_some(self.next_summary).flatten();
            let timer = [self.endpoint.poll_timeout(), owed]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now));
            let timeout = wait_for(
                timer,
                Waits {
                    unread,
                    busy: self.shutting_down.is_some() || self.to_game.is_waiting(),
                    blocked: self.wants_writable,
                },
            );
            if let Err(error) = self.poll.poll(&mut events, timeout)
                && error.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%error, "net-io poll failed; stopping");
                return false;
            }
            bump(&self.stats.loop_wakeups, 1);
            let now = Instant::now();
            self.to_game.flush_backlog();
            unread = self.read_socket(now);
            self.count_endpoint_floods();
            // A read turn may take milliseconds: what follows (timers, the
            // packets sent and their send times) is of the time after it.
            let now = Instant::now();
            self.drain_commands(now);
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            self.flush(now);
            self.publish_summary(now);
            if let Some((deadline, _)) = self.shutting_down
                && (self.endpoint.connected_clients() == 0 || now >= deadline)
            {
                return self.finish(now, &mut events);
            }
        }
    }

    /// Sends the last goodbyes: clients whose last messages are still
    /// unacknowledged get theirs now, not a timeout. While the socket would
    /// block, waits for it, up to [`FINAL_FLUSH_LIMIT`]. `false` if the
    /// poll failed.
    fn finish(&mut self, now: Instant, events: &mut Events) -> bool {
        self.endpoint.stop_lingering(now);
        let deadline = now + FINAL_FLUSH_LIMIT;
        let mut now = now;
        while !self.flush(now) {
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                tracing::warn!(
                    queued = self.outbox.len(),
                    "net-io stops with goodbyes unsent: the socket would not take them"
                );
                return true;
            }
            // Woken when the socket is writable (see `send_queued`); the
            // slices keep a missed wake-up from costing the whole limit.
            if let Err(error) = self.poll.poll(events, Some(left.min(BLOCKED_WAIT)))
                && error.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%error, "net-io poll failed; stopping");
                return false;
            }
            now = Instant::now();
        }
        true
    }

    /// Adds the clients the endpoint disconnected for crossing the total
    /// receive bound to the flooding disconnects.
    fn count_endpoint_floods(&mut self) {
        let floods = self.endpoint.stats().flooding_disconnects;
        bump(
            &self.stats.flooding_disconnects,
            floods - self.endpoint_floods_seen,
        );
        self.endpoint_floods_seen = floods;
    }

    /// Once a second: totals, RTTs and drop reasons for the metrics.
    fn publish_summary(&mut self, now: Instant) {
        if self.next_summary.is_some_and(|t| now < t) {
            self.summary_owed = true;
            return;
        }
        self.summary_owed = false;
        self.next_summary = Some(now + SUMMARY_INTERVAL);
        if let (Some(seen), Some(drops)) = (
            self.socket_drops_seen,
            super::socket::receive_drops(&self.socket),
        ) {
            bump(
                &self.stats.socket_drops,
                u64::from(drops.wrapping_sub(seen)),
            );
            self.socket_drops_seen = Some(drops);
        }
        let mut clients = Vec::new();
        let netcode = self.endpoint.netcode();
        let transport = self
            .endpoint
            .transport_totals(|slot, account, session, rtt| {
                clients.push(ClientSummary {
                    client: ClientId {
                        slot,
                        account,
                        session,
                    },
                    addr: netcode.client_address(slot),
                    rtt,
                });
            });
        let summary = NetSummary {
            transport,
            clients,
            drops: self.endpoint.netcode().stats().dropped.iter().collect(),
            queue_full_disconnects: self.endpoint.stats().queue_full_disconnects,
        };
        if let Ok(mut slot) = self.stats.summary.lock() {
            *slot = summary;
            self.stats.summary_version.fetch_add(1, Ordering::Release);
        }
    }

    /// Reads and handles up to `recv_batches_per_turn` batches; true if
    /// the socket may hold more (the poller reports no new readiness for
    /// those: the loop must look again without waiting).
    fn read_socket(&mut self, now: Instant) -> bool {
        let unix = super::unix_secs();
        for _ in 0..self.config.recv_batches_per_turn.max(1) {
            match self.inbox.recv(&self.socket) {
                Ok(_) => {
                    // Every sender first, so that each one's state is on
                    // its way before its datagram's turn: their lines of
                    // the address table, then the lookups (by then the
                    // lines are in), which ask for each client's state.
                    self.lookups.clear();
                    self.lookups.extend(
                        self.inbox
                            .iter()
                            .map(|(from, _)| self.endpoint.lookup(from)),
                    );
                    self.located.clear();
                    self.located.extend(
                        self.lookups
                            .iter()
                            .map(|&lookup| self.endpoint.locate(lookup)),
                    );
                    for index in 0..self.located.len() {
                        let located = self.located[index];
                        let upcoming = &self.located[index + 1..];
                        self.endpoint
                            .prefetch_datagrams(|n| upcoming.get(n - 1).copied());
                        let Some((_, datagram)) = self.inbox.get_mut(index) else {
                            break;
                        };
                        bump(&self.stats.datagrams_in, 1);
                        bump(&self.stats.bytes_in, datagram.len() as u64);
                        self.endpoint.handle_located(now, unix, located, datagram);
                        self.forward_events(now);
                    }
                    // Read to WouldBlock: the socket is drained (a datagram
                    // arriving from now on wakes the poller again).
                    if self.inbox.drained() {
                        return false;
                    }
                    self.give_way();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // ICMP errors and (on Windows) an oversized datagram surface
                // here; they say nothing trustworthy about any client, and
                // the datagrams behind them must still be read.
                Err(e) if e.kind() == io::ErrorKind::Interrupted || is_about_one_datagram(&e) => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Applies the commands the game had finished queueing when this
    /// began: batches it queues meanwhile wait for the next turn, after a
    /// read turn and the timers (taken as they came, a game that queues
    /// faster than they apply would keep the thread from reading, and
    /// every client would time out).
    fn drain_commands(&mut self, now: Instant) {
        // The game's handle sends a shutdown before it goes, so a pipe
        // with no sender left needs no case of its own.
        for _ in 0..self.commands.ready() {
            let Some(batch) = self.commands.try_recv() else {
                break;
            };
            let mut commands = batch.into_iter();
            let mut applied = 0;
            while let Some(command) = commands.next() {
                applied += 1;
                if applied % COMMANDS_BETWEEN_OFFERS == 0 {
                    self.give_way();
                }
                let upcoming = commands.as_slice();
                self.endpoint.prefetch_sends(|n| match upcoming.get(n - 1) {
                    Some(NetCommand::Send {
                        client, channel, ..
                    }) => Some((client.slot, *channel)),
                    _ => None,
                });
                match command {
                    NetCommand::Send {
                        client,
                        channel,
                        payload,
                    } => {
                        if self.is_current(client) {
                            let _ = self.endpoint.send(now, client.slot, channel, payload);
                        }
                    }
                    NetCommand::Broadcast {
                        channel,
                        payload,
                        except,
                    } => {
                        let except = except.map(|c| c.account);
                        self.endpoint.broadcast(now, channel, &payload, except);
                    }
                    NetCommand::Disconnect { client, reason } => {
                        if self.is_current(client) {
                            self.endpoint.disconnect(now, client.slot, reason);
                        }
                    }
                    NetCommand::Shutdown { reason } => self.begin_shutdown(now, reason),
                }
            }
        }
    }

    /// Whether `client`'s connection still holds its slot. A command the
    /// game wrote before it saw the client leave must not reach whoever
    /// took the slot since (another player's chat lines, a kick meant for
    /// someone else, or for the same player's previous connection); it is
    /// dropped and counted.
    fn is_current(&mut self, client: ClientId) -> bool {
        let current = self.endpoint.session(client.slot) == Some(client.session);
        if !current {
            bump(&self.stats.stale_commands, 1);
        }
        current
    }

    /// Says goodbye to everyone; a second shutdown (the handle dropped
    /// after the game asked for one) keeps the first one's deadline and
    /// reason.
    fn begin_shutdown(&mut self, now: Instant, reason: DisconnectReason) {
        self.endpoint.disconnect_all(now, reason);
        let (deadline, reason) = self
            .shutting_down
            .unwrap_or((now + self.config.shutdown_linger, reason));
        self.shutting_down = Some((deadline, reason));
    }

    /// Moves endpoint events into the game's channel, applying the overflow
    /// and flood policies.
    fn forward_events(&mut self, now: Instant) {
        let mut flooders: Vec<ClientIndex> = Vec::new();
        while let Some(event) = self.endpoint.poll_event() {
            let event = match event {
                EndpointEvent::Connected {
                    client,
                    client_id,
                    session,
                } => {
                    bump(&self.stats.connected, 1);
                    // A handshake that ends while the server shuts down
                    // gets the same goodbye as those connected before.
                    if let Some((_, reason)) = self.shutting_down {
                        self.endpoint.disconnect(now, client, reason);
                    }
                    NetEvent::Connected {
                        client: ClientId {
                            slot: client,
                            account: client_id,
                            session,
                        },
                    }
                }
                EndpointEvent::Disconnected {
                    client,
                    client_id,
                    session,
                    reason,
                } => {
                    self.stats.connected.fetch_sub(1, Ordering::Relaxed);
                    if let Some(rate) = self.rates.get_mut(client.get()) {
                        *rate = Rate::default();
                    }
                    NetEvent::Disconnected {
                        client: ClientId {
                            slot: client,
                            account: client_id,
                            session,
                        },
                        reason,
                    }
                }
                EndpointEvent::Message {
                    client,
                    client_id,
                    session,
                    channel,
                    payload,
                } => {
                    // A client being disconnected delivers nothing more:
                    // its ordered stream must not go on past a gap.
                    if flooders.contains(&client) {
                        continue;
                    }
                    let index = client.get();
                    if self.rates.len() <= index {
                        self.rates.resize(index + 1, Rate::default());
                    }
                    let rate = &mut self.rates[index];
                    let window = rate.window_start.get_or_insert(now);
                    if now.saturating_duration_since(*window) >= Duration::from_secs(1) {
                        *window = now;
                        rate.count = 0;
                    }
                    rate.count += 1;
                    if rate.count > self.config.max_messages_per_second {
                        if rate.count == self.config.max_messages_per_second + 1 {
                            flooders.push(client);
                        }
                        continue;
                    }
                    let sender = ClientId {
                        slot: client,
                        account: client_id,
                        session,
                    };
                    // Decided before the copy: a message dropped here never
                    // takes memory (see `ToGame::copy`).
                    match self.to_game.admit(sender, channel, payload.len()) {
                        Admission::Keep => {}
                        Admission::Drop => continue,
                        Admission::Flood => {
                            flooders.push(client);
                            continue;
                        }
                        // Its end comes after what it had handed over; what
                        // it sends from now on is not delivered.
                        Admission::Cut(holder) => {
                            if !flooders.contains(&holder.slot) {
                                flooders.push(holder.slot);
                            }
                        }
                    }
                    NetEvent::Message {
                        client: sender,
                        channel,
                        payload: self.to_game.copy(payload),
                    }
                }
            };
            self.to_game.hand(event);
        }
        for client in flooders {
            // The endpoint may have ended it already (its own receive
            // bound), and counted it then.
            if self
                .endpoint
                .disconnect(now, client, DisconnectReason::Flooding)
            {
                bump(&self.stats.flooding_disconnects, 1);
            }
        }
    }

    /// Pulls every datagram the endpoint has into the outbox and sends
    /// them, `sendmmsg` by `sendmmsg`; true when all left (the endpoint had
    /// no more and the socket took the outbox).
    fn flush(&mut self, now: Instant) -> bool {
        let mut all_out = false;
        for _ in 0..4 {
            self.forward_events(now);
            let mut produced_any = false;
            all_out = false;
            loop {
                if self.outbox.is_full() && !self.send_queued() {
                    // The socket blocks: the endpoint keeps the rest.
                    break;
                }
                let endpoint = &mut self.endpoint;
                let queued = self.outbox.push_with(|buf| {
                    endpoint
                        .poll_transmit(now, buf)
                        .map(|transmit| (transmit.len, transmit.destination))
                });
                if !queued {
                    all_out = true;
                    break;
                }
                produced_any = true;
            }
            all_out &= self.send_queued();
            if !produced_any {
                break;
            }
        }
        self.forward_events(now);
        all_out
    }

    /// Offers the core to the game's tick if it runs on this one (see
    /// [`TickSignal`]); called between batches of work.
    fn give_way(&self) {
        if self.tick.give_way() {
            bump(&self.stats.tick_yields, 1);
        }
    }

    /// Sends the outbox; true once it is empty. While the socket would
    /// block, the loop also waits for it to become writable.
    fn send_queued(&mut self) -> bool {
        self.give_way();
        let flushed = match &self.sender {
            #[cfg(test)]
            _ if self.stats.choked.load(Ordering::Relaxed) => super::batch::Flushed::default(),
            Some(sender) => self.outbox.flush(sender),
            None => self.outbox.flush(&self.socket),
        };
        bump(&self.stats.datagrams_out, flushed.datagrams);
        bump(&self.stats.bytes_out, flushed.bytes);
        // UDP may drop; the transport resends what matters.
        bump(&self.stats.send_errors, flushed.errors);
        let blocked = !self.outbox.is_empty();
        if blocked != self.wants_writable {
            let registry = self.poll.registry();
            let changed = match (&mut self.sender, blocked) {
                (Some(sender), true) => registry.register(sender, SENDER, Interest::WRITABLE),
                (Some(sender), false) => registry.deregister(sender),
                (None, true) => registry.reregister(
                    &mut self.socket,
                    SOCKET,
                    Interest::READABLE | Interest::WRITABLE,
                ),
                (None, false) => registry.reregister(&mut self.socket, SOCKET, Interest::READABLE),
            };
            match changed {
                Ok(()) => self.wants_writable = blocked,
                Err(error) => tracing::warn!(%error, "net-io cannot change socket interest"),
            }
        }
        !blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOVEMENT: ChannelId = ChannelId(3);
    const CHAT: ChannelId = ChannelId(1);

    /// A game's inbound side whose pipe holds one event, with a backlog of
    /// `backlog_room` and `max_bytes`, movement droppable; its counters;
    /// the game's end of the pipe (kept open).
    fn to_game(
        backlog_room: usize,
        max_bytes: u64,
    ) -> (ToGame, Arc<IoStats>, PipeReceiver<NetEvent>) {
        let stats = Arc::new(IoStats::default());
        let (events, game) = pipe(1);
        let to_game = ToGame {
            events,
            backlog: VecDeque::new(),
            backlog_room,
            lifecycle_waiting: 0,
            max_bytes,
            droppable: vec![MOVEMENT],
            handed: 0,
            held: Vec::new(),
            departed: HashMap::new(),
            chunks: Chunks::new(INBOUND_CHUNK),
            stats: Arc::clone(&stats),
        };
        (to_game, stats, game)
    }

    /// The client in `slot`.
    fn player(slot: u32) -> ClientId {
        ClientId {
            slot: ClientIndex::from_slot(slot),
            account: u64::from(slot) + 1,
            session: u64::from(slot) + 1,
        }
    }

    /// A message of the client in slot 0 on `channel`.
    fn message(channel: ChannelId, payload: Vec<u8>) -> NetEvent {
        message_of(player(0), channel, payload)
    }

    fn message_of(client: ClientId, channel: ChannelId, payload: Vec<u8>) -> NetEvent {
        NetEvent::Message {
            client,
            channel,
            payload: Bytes::from(payload),
        }
    }

    /// A reliable message that would not fit even with every droppable
    /// message waiting dropped floods its sender and drops nothing else:
    /// other players' inputs stay, and only the one message is counted.
    #[test]
    fn droppable_messages_give_way_only_when_that_makes_room() {
        let (movement, chat) = (MOVEMENT, CHAT);
        let (mut to_game, stats, _game) = to_game(8, 100);
        let message = |channel, len: usize| message(channel, vec![0; len]);
        for _ in 0..3 {
            assert!(matches!(
                to_game.admit(player(0), movement, 5),
                Admission::Keep
            ));
            to_game.hand(message(movement, 5));
        }
        assert!(matches!(
            to_game.admit(player(0), chat, 80),
            Admission::Keep
        ));
        to_game.hand(message(chat, 80));
        assert_eq!(to_game.backlog.len(), 3, "two inputs and the line wait");
        // 95 bytes wait; freeing the 10 of the inputs leaves no room for 30.
        assert!(matches!(
            to_game.admit(player(0), chat, 30),
            Admission::Flood
        ));
        assert_eq!(to_game.backlog.len(), 3, "the inputs stay");
        assert_eq!(stats.inbound_dropped.load(Ordering::Relaxed), 1);
        // 10 bytes fit once the oldest input gives way.
        assert!(matches!(
            to_game.admit(player(0), chat, 10),
            Admission::Keep
        ));
        assert_eq!(to_game.backlog.len(), 2, "an input and the line stay");
        assert_eq!(stats.inbound_dropped.load(Ordering::Relaxed), 2);
    }

    /// Droppable messages give way oldest first, as few as make room; the
    /// messages around them keep their order.
    #[test]
    fn the_oldest_droppable_messages_give_way_and_the_rest_keep_their_order() {
        let (movement, chat) = (MOVEMENT, CHAT);
        let (mut to_game, stats, _game) = to_game(6, 1000);
        let message = |channel, n: u8| message(channel, vec![n]);
        // One in the pipe, then six waiting: the backlog is full.
        let arrivals = [
            (chat, 0),
            (chat, 1),
            (movement, 2),
            (chat, 3),
            (movement, 4),
            (movement, 5),
            (chat, 6),
        ];
        for (channel, n) in arrivals {
            assert!(matches!(
                to_game.admit(player(0), channel, 1),
                Admission::Keep
            ));
            to_game.hand(message(channel, n));
        }
        assert!(matches!(to_game.admit(player(0), chat, 1), Admission::Keep));
        to_game.hand(message(chat, 7));
        assert!(matches!(to_game.admit(player(0), chat, 1), Admission::Keep));
        to_game.hand(message(chat, 8));
        let waiting: Vec<_> = to_game.backlog.iter().map(|e| payload(e)[0]).collect();
        assert_eq!(waiting, [1, 3, 5, 6, 7, 8]);
        assert_eq!(stats.inbound_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(to_game.handed, 9 - 2);
    }

    /// A backlog filled by one client's reliable messages: the next
    /// client whose reliable message finds it full, holding nothing there,
    /// is not the one cut off. The filler is, its messages waiting go (the
    /// room they held is free again), and the other's line is handed over;
    /// the filler's end follows what it had handed over.
    #[test]
    fn a_full_backlog_cuts_off_the_client_holding_the_most_not_the_sender() {
        let (filler, talker) = (player(0), player(1));
        let (mut to_game, stats, mut game) = to_game(4, 1000);
        stats.connected.store(2, Ordering::Relaxed);
        // One in the pipe, four waiting.
        for n in 0..5 {
            assert!(matches!(to_game.admit(filler, CHAT, 10), Admission::Keep));
            to_game.hand(message_of(filler, CHAT, vec![n; 10]));
        }
        let Admission::Cut(cut) = to_game.admit(talker, CHAT, 5) else {
            panic!("the talker is not the one to cut off");
        };
        assert_eq!(cut, filler);
        to_game.hand(message_of(talker, CHAT, vec![9; 5]));
        to_game.hand(NetEvent::Disconnected {
            client: filler,
            reason: DisconnectReason::Flooding,
        });
        assert_eq!(stats.inbound_dropped.load(Ordering::Relaxed), 4);
        assert_eq!(to_game.handed, 10 + 5, "the filler's 40 bytes are free");
        let mut seen = Vec::new();
        while let Some(event) = game.try_recv() {
            seen.push(event);
            to_game.flush_backlog();
        }
        let seen: Vec<_> = seen
            .iter()
            .map(|event| match event {
                NetEvent::Message {
                    client, payload, ..
                } => (client.account, Some(payload[0])),
                NetEvent::Disconnected { client, .. } => (client.account, None),
                NetEvent::Connected { client } => panic!("{client:?}"),
            })
            .collect();
        assert_eq!(seen, [(1, Some(0)), (2, Some(9)), (1, None)]);
        assert!(to_game.held.iter().all(|held| held.messages == 0));
    }

    /// Cutting a client off frees the memory its messages held also where
    /// they shared chunks with messages left waiting: those are copied
    /// afresh (left in place, each talker's byte kept seven of the filler's
    /// 1,000-byte messages alive, uncounted).
    #[test]
    fn a_cut_clients_messages_pin_no_memory_between_those_left() {
        let (filler, talker) = (player(0), player(1));
        let (mut to_game, stats, mut game) = to_game(64, 1 << 20);
        stats.connected.store(2, Ordering::Relaxed);
        // One in the pipe, 64 waiting: every eighth the talker's.
        for n in 0..65u8 {
            let (client, len) = if n % 8 == 0 {
                (talker, 1)
            } else {
                (filler, 1000)
            };
            assert!(matches!(to_game.admit(client, CHAT, len), Admission::Keep));
            let payload = to_game.copy(&vec![n; len]);
            to_game.hand(NetEvent::Message {
                client,
                channel: CHAT,
                payload,
            });
        }
        let Admission::Cut(cut) = to_game.admit(talker, CHAT, 1) else {
            panic!("nobody cut off");
        };
        assert_eq!(cut, filler);
        let mut kept = Vec::new();
        while let Some(event) = game.try_recv() {
            if let NetEvent::Message { payload, .. } = event {
                kept.push(payload);
            }
            to_game.flush_backlog();
        }
        let firsts: Vec<u8> = kept.iter().map(|p| p[0]).collect();
        assert_eq!(firsts, (0..65).step_by(8).collect::<Vec<u8>>());
        // Those that waited are back to back: no dropped message between.
        for pair in kept[1..].windows(2) {
            assert_eq!(
                pair[1].as_ptr() as usize - pair[0].as_ptr() as usize,
                1,
                "{} and {} are apart",
                pair[0][0],
                pair[1][0]
            );
        }
    }

    /// A sender holding more than its even share of the backlog is the one
    /// cut off, though another holds as much: its messages waiting stay
    /// (the game sees them, then its end). A sender within its share cuts
    /// off one holding the most.
    #[test]
    fn a_sender_over_its_share_is_cut_off_else_one_holding_the_most() {
        let (hog, greedy, other) = (player(0), player(1), player(2));
        let (mut to_game, stats, _game) = to_game(6, 1000);
        stats.connected.store(3, Ordering::Relaxed);
        // One in the pipe; the hog holds three waiting, the greedy one
        // three: the backlog is full, each over its share of two.
        let arrivals = [hog, hog, hog, hog, greedy, greedy, greedy];
        for client in arrivals {
            assert!(matches!(to_game.admit(client, CHAT, 1), Admission::Keep));
            to_game.hand(message_of(client, CHAT, vec![0]));
        }
        assert!(matches!(to_game.admit(greedy, CHAT, 1), Admission::Flood));
        assert!(matches!(to_game.admit(hog, CHAT, 1), Admission::Flood));
        assert_eq!(to_game.backlog.len(), 6, "their messages stay");
        // Within its share, the other client cuts off one holding the most.
        assert!(matches!(
            to_game.admit(other, CHAT, 1),
            Admission::Cut(cut) if cut == hog || cut == greedy
        ));
        assert_eq!(to_game.backlog.len(), 3);
    }

    /// A client that has left holds nothing anyone could be cut off for:
    /// once the droppable messages waiting are not enough, the messages of
    /// a session whose end waits behind them give way, all of them (the
    /// game, which applies them until it reads the end, sees what it had
    /// of the stream and no more: never a later message past a gap), its
    /// end staying, before a client still here is cut off or a sender
    /// within its share is told it floods.
    #[test]
    fn a_departed_sessions_messages_give_way_before_anyone_is_cut() {
        let (gone, talker) = (player(0), player(1));
        let (mut to_game, stats, mut game) = to_game(4, 1000);
        stats.connected.store(1, Ordering::Relaxed);
        // One in the pipe, then three of the gone client's, its end, and
        // an input of the talker: the backlog's room for four messages is
        // full.
        for n in 0..4 {
            assert!(matches!(to_game.admit(gone, CHAT, 1), Admission::Keep));
            to_game.hand(message_of(gone, CHAT, vec![n]));
        }
        to_game.hand(NetEvent::Disconnected {
            client: gone,
            reason: DisconnectReason::Timeout,
        });
        assert!(matches!(
            to_game.admit(talker, MOVEMENT, 1),
            Admission::Keep
        ));
        to_game.hand(message_of(talker, MOVEMENT, vec![10]));
        // The input goes first, then the oldest of the gone client's.
        for n in [11, 12] {
            assert!(matches!(to_game.admit(talker, CHAT, 1), Admission::Keep));
            to_game.hand(message_of(talker, CHAT, vec![n]));
        }
        let waiting: Vec<_> = to_game
            .backlog
            .iter()
            .map(|event| match event {
                NetEvent::Message { payload, .. } => Some(payload[0]),
                _ => None,
            })
            .collect();
        assert_eq!(waiting, [None, Some(11), Some(12)]);
        assert_eq!(stats.inbound_dropped.load(Ordering::Relaxed), 4);
        assert_eq!(to_game.handed, 7 - 4);
        let mut seen = Vec::new();
        while let Some(event) = game.try_recv() {
            if let NetEvent::Message {
                client, payload, ..
            } = &event
                && *client == gone
            {
                seen.push(payload[0]);
            }
            to_game.flush_backlog();
        }
        assert_eq!(seen, [0], "a prefix of what it sent");
    }

    /// Sessions that have ended give way together: several small ones left
    /// behind by a player reconnecting make room for a message larger than
    /// any of them before anyone still here is cut off (one alone, the
    /// largest, was tried before, and the honest client cut off).
    #[test]
    fn ended_sessions_give_way_together_before_anyone_is_cut() {
        let honest = player(1);
        let session = |n: u64| ClientId {
            session: n,
            ..player(0)
        };
        let (mut to_game, stats, _game) = to_game(10, 12);
        stats.connected.store(2, Ordering::Relaxed);
        let send = |to_game: &mut ToGame, client, len: usize| {
            assert!(matches!(to_game.admit(client, CHAT, len), Admission::Keep));
            to_game.hand(message_of(client, CHAT, vec![0; len]));
        };
        // One byte in the pipe; 3 of each ended session and 4 of the
        // honest client wait: 11 of the 12.
        send(&mut to_game, honest, 1);
        for n in [1, 2] {
            send(&mut to_game, session(n), 3);
            to_game.hand(NetEvent::Disconnected {
                client: session(n),
                reason: DisconnectReason::Closed,
            });
        }
        send(&mut to_game, honest, 4);
        let admission = to_game.admit(session(3), CHAT, 5);
        assert!(
            matches!(admission, Admission::Keep),
            "{}",
            match admission {
                Admission::Cut(cut) if cut == honest => "the honest client is cut off",
                _ => "refused",
            }
        );
        assert_eq!(to_game.handed, 11 - 6);
        assert!(to_game.departed.is_empty());
    }

    /// What waits in the backlog when the thread stops is dropped and
    /// counted, after the game's channel took what it could: it was
    /// dropped with the thread, uncounted.
    #[test]
    fn a_backlog_left_at_the_end_is_counted() {
        let (mut to_game, stats, mut game) = to_game(4, 1000);
        for n in 0..3 {
            assert!(matches!(to_game.admit(player(0), CHAT, 1), Admission::Keep));
            to_game.hand(message(CHAT, vec![n]));
        }
        to_game.hand(NetEvent::Disconnected {
            client: player(0),
            reason: DisconnectReason::Closed,
        });
        assert!(game.try_recv().is_some(), "the game took one");
        to_game.abandon_backlog();
        assert!(game.try_recv().is_some(), "and one more went in");
        assert!(game.try_recv().is_none());
        assert!(to_game.backlog.is_empty());
        assert_eq!(stats.inbound_dropped.load(Ordering::Relaxed), 1);
    }

    /// Connects and disconnects wait beyond the backlog's room: the game
    /// must hear each, none can give way, and counted in the room they
    /// filled it while the game was behind and clients came and went, and
    /// every reliable message after them flooded its sender, who held
    /// nothing (each flood one more disconnect waiting).
    #[test]
    fn sessions_coming_and_going_leave_the_backlog_room_to_messages() {
        let (mut to_game, stats, _game) = to_game(2, 1000);
        stats.connected.store(2, Ordering::Relaxed);
        assert!(matches!(to_game.admit(player(0), CHAT, 1), Admission::Keep));
        to_game.hand(message(CHAT, vec![0]));
        for slot in 1..4 {
            let client = player(slot);
            to_game.hand(NetEvent::Connected { client });
            to_game.hand(NetEvent::Disconnected {
                client,
                reason: DisconnectReason::Closed,
            });
        }
        assert_eq!(to_game.backlog.len(), 6, "the pipe is full");
        for _ in 0..2 {
            assert!(matches!(to_game.admit(player(5), CHAT, 1), Admission::Keep));
            to_game.hand(message_of(player(5), CHAT, vec![5]));
        }
        // The room is the messages': two wait, and the third finds it full.
        assert!(matches!(
            to_game.admit(player(5), CHAT, 1),
            Admission::Flood
        ));
        assert_eq!(stats.inbound_dropped.load(Ordering::Relaxed), 1);
    }

    /// Sessions that leave with messages waiting do not add up to one
    /// client that could be cut off: a player who reconnects again and
    /// again while the game is behind, each session holding less than an
    /// honest client, does not get that client cut off.
    #[test]
    fn reconnecting_while_the_game_is_behind_gets_nobody_else_cut_off() {
        let honest = player(1);
        let session = |n: u64| ClientId {
            session: n,
            ..player(0)
        };
        let (mut to_game, stats, _game) = to_game(5, 1000);
        stats.connected.store(2, Ordering::Relaxed);
        // One in the pipe; the honest client holds two waiting.
        for _ in 0..3 {
            assert!(matches!(to_game.admit(honest, CHAT, 1), Admission::Keep));
            to_game.hand(message_of(honest, CHAT, vec![0]));
        }
        // A session sends two and leaves; the next one sends on.
        for _ in 0..2 {
            assert!(matches!(
                to_game.admit(session(1), CHAT, 1),
                Admission::Keep
            ));
            to_game.hand(message_of(session(1), CHAT, vec![1]));
        }
        to_game.hand(NetEvent::Disconnected {
            client: session(1),
            reason: DisconnectReason::Closed,
        });
        assert!(matches!(
            to_game.admit(session(2), CHAT, 1),
            Admission::Keep
        ));
        to_game.hand(message_of(session(2), CHAT, vec![2]));
        assert_eq!(to_game.messages_waiting(), 5, "full");
        for _ in 0..2 {
            let admission = to_game.admit(session(2), CHAT, 1);
            assert!(
                matches!(admission, Admission::Keep),
                "{}",
                match admission {
                    Admission::Cut(cut) if cut == honest => "the honest client is cut off",
                    _ => "the session is refused",
                }
            );
            to_game.hand(message_of(session(2), CHAT, vec![2]));
        }
        let honest_waiting = to_game
            .backlog
            .iter()
            .filter(|event| to_game.is_cut(event, Cut::Client(honest)))
            .count();
        assert_eq!(honest_waiting, 2);
        // With nothing of a departed session left, the session holds the
        // most: it floods, and nobody is cut off.
        assert!(matches!(
            to_game.admit(session(2), CHAT, 1),
            Admission::Flood
        ));
    }

    fn payload(event: &NetEvent) -> &[u8] {
        match event {
            NetEvent::Message { payload, .. } => payload,
            other => panic!("not a message: {other:?}"),
        }
    }

    /// A socket bound elsewhere, in a `SO_REUSEPORT` group of its owner's
    /// (a server sharded over processes), is served as it is: the group is
    /// not steered to its first member, which took every datagram meant
    /// for this one, and no second socket joins it.
    #[cfg(target_os = "linux")]
    #[test]
    #[expect(
        clippy::disallowed_methods,
        reason = "real sockets on loopback: real time"
    )]
    fn a_reuseport_group_the_server_did_not_make_is_left_alone() {
        use std::os::fd::AsRawFd;

        use crate::endpoint::ServerEndpointConfig;
        use crate::io::system_rng;
        use crate::netcode::{Key, ServerConfig};
        use crate::protocol::PROTOCOL_ID as PROTOCOL;
        use crate::transport::TransportConfig;

        let member = |addr: SocketAddr| {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .unwrap();
            super::super::socket::linux::set_int_option(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                1,
            )
            .unwrap();
            socket.bind(&addr.into()).unwrap();
            std::net::UdpSocket::from(socket)
        };
        let first = member("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap();
        let ours = member(addr);
        let endpoint = ServerEndpoint::new(
            ServerEndpointConfig::new(
                ServerConfig::new(PROTOCOL, Key::generate(&mut system_rng()), vec![addr]),
                TransportConfig::default(),
            ),
            &mut system_rng(),
        )
        .unwrap();
        let server = ServerIo::spawn_on(ours, endpoint, ServerIoConfig::default()).unwrap();
        // 64 senders: the kernel hashes about half of them to `ours`
        // (all 64 to `first` once in 2^64 runs).
        let senders: Vec<std::net::UdpSocket> = (0..64)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for sender in &senders {
            sender.send_to(&[0x55], addr).unwrap();
        }
        first
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 8];
        let mut at_first = 0;
        while first.recv_from(&mut buf).is_ok() {
            at_first += 1;
        }
        assert!(
            at_first < 64,
            "every datagram went to the group's first member"
        );
        server.shutdown(DisconnectReason::ServerShutdown);
    }

    /// A shutdown whose goodbyes meet a socket that would block (its send
    /// buffer full, as on a real network when thousands of clients are
    /// told at once) waits for the socket instead of dropping them: the
    /// client hears the reason, not a timeout.
    #[test]
    #[expect(
        clippy::disallowed_methods,
        reason = "real sockets on loopback: real time"
    )]
    fn goodbyes_wait_for_a_socket_that_would_block() {
        use crate::endpoint::{ClientEndpoint, ClientEndpointEvent, ServerEndpointConfig};
        use crate::io::{ClientSocket, system_rng, unix_secs};
        use crate::netcode::{Key, ServerConfig};
        use crate::protocol::PROTOCOL_ID as PROTOCOL;
        use crate::transport::TransportConfig;

        let key = Key::generate(&mut system_rng());
        let socket =
            super::super::socket::bind_game_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let endpoint = ServerEndpoint::new(
            ServerEndpointConfig::new(
                ServerConfig::new(PROTOCOL, key, vec![addr]),
                TransportConfig::default(),
            ),
            &mut system_rng(),
        )
        .unwrap();
        // No linger: the goodbyes go at once, into the blocked socket.
        let config = ServerIoConfig {
            shutdown_linger: Duration::ZERO,
            ..ServerIoConfig::default()
        };
        let mut server = ServerIo::spawn_on(socket, endpoint, config).unwrap();
        // A timeout far beyond the test's wait: only a goodbye ends it.
        let token = crate::keys::mint_token(&key, vec![addr], 1, 30, 30).unwrap();
        let mut client_endpoint = ClientEndpoint::new(PROTOCOL, TransportConfig::default());
        client_endpoint
            .connect(&token, Instant::now(), unix_secs())
            .unwrap();
        let mut client =
            ClientSocket::bind("127.0.0.1:0".parse().unwrap(), client_endpoint).unwrap();
        let mut ended = None;
        let pump = |client: &mut ClientSocket,
                    connected: &mut bool,
                    ended: &mut Option<DisconnectReason>| {
            client.pump(Instant::now()).unwrap();
            while let Some(event) = client.endpoint.poll_event() {
                match event {
                    ClientEndpointEvent::Connected { .. } => *connected = true,
                    ClientEndpointEvent::Message { .. } => {}
                    ClientEndpointEvent::Disconnected { reason } => *ended = Some(reason),
                }
            }
        };
        let mut connected = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(connected
            && server
                .events()
                .any(|e| matches!(e, NetEvent::Connected { .. })))
        {
            assert!(Instant::now() < deadline, "the client connects");
            pump(&mut client, &mut connected, &mut ended);
            std::thread::sleep(Duration::from_millis(1));
        }

        let stats = Arc::clone(server.stats());
        stats.choked.store(true, Ordering::Relaxed);
        let unchoke = std::thread::spawn(move || {
            std::thread::sleep(FINAL_FLUSH_LIMIT / 2);
            stats.choked.store(false, Ordering::Relaxed);
        });
        server.shutdown(DisconnectReason::ServerShutdown);
        unchoke.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while ended.is_none() && Instant::now() < deadline {
            pump(&mut client, &mut connected, &mut ended);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ended, Some(DisconnectReason::ServerShutdown));
    }

    #[test]
    fn the_wait_follows_the_timer_unless_something_else_is_due() {
        let ms = Duration::from_millis;
        let idle = Waits::default();
        assert_eq!(wait_for(None, idle), None);
        assert_eq!(wait_for(Some(ms(7)), idle), Some(ms(7)));
        assert_eq!(wait_for(Some(Duration::ZERO), idle), Some(Duration::ZERO));

        // Datagrams left unread: look again at once, whatever else.
        for (busy, blocked) in [(false, false), (true, false), (false, true), (true, true)] {
            let waits = Waits {
                unread: true,
                busy,
                blocked,
            };
            assert_eq!(wait_for(None, waits), Some(Duration::ZERO));
            assert_eq!(wait_for(Some(ms(7)), waits), Some(Duration::ZERO));
        }

        let busy = Waits {
            busy: true,
            ..Waits::default()
        };
        assert_eq!(wait_for(None, busy), Some(LOOK_AGAIN));
        assert_eq!(wait_for(Some(ms(50)), busy), Some(LOOK_AGAIN));
        assert_eq!(wait_for(Some(ms(1)), busy), Some(ms(1)));

        // A socket that takes nothing: a transmit due now waits for it.
        let blocked = Waits {
            blocked: true,
            ..Waits::default()
        };
        assert_eq!(wait_for(Some(Duration::ZERO), blocked), Some(BLOCKED_WAIT));
        assert_eq!(wait_for(Some(ms(50)), blocked), Some(ms(50)));
        assert_eq!(wait_for(None, blocked), None);
        let both = Waits {
            busy: true,
            blocked: true,
            ..Waits::default()
        };
        assert_eq!(wait_for(Some(Duration::ZERO), both), Some(BLOCKED_WAIT));
        assert_eq!(wait_for(None, both), Some(LOOK_AGAIN));
    }
}
