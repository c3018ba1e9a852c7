//! Server side of the stack.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::EndpointConfigError;
use crate::netcode::{self, AddressLookup, ClientIndex, Located, ServerEvent, Transmit};
use crate::prefetch::prefetch;
use crate::transport::clock::{SharedClock, Stamp};
use crate::transport::{
    ChannelId, Connection, ConnectionStats, Deliver, DisconnectReason, Event, SendError,
    TransportConfig,
};

/// Configuration of both layers.
#[derive(Debug, Clone)]
pub struct ServerEndpointConfig {
    /// The secure layer: keys, addresses, client slots, handshake limits.
    pub netcode: netcode::ServerConfig,
    /// Channel layout and reliability settings of every connection.
    pub transport: TransportConfig,
    /// Receive-side memory (reassembly and out-of-order data) all clients
    /// together may hold. A datagram that pushes the total past it
    /// disconnects with [`DisconnectReason::Flooding`] its sender if that
    /// holds more than its even share (this divided by `max_clients`), else
    /// the client holding the most: one who filled the memory cannot have
    /// the next honest client to cross the line cut off in its stead.
    pub max_total_receive_buffer: usize,
    /// Reliable send memory (messages queued or unacknowledged) all
    /// clients together may hold before the heaviest are cut off: while the
    /// total is over it, a reliable send to a client holding more than its
    /// even share (this divided by `max_clients`) disconnects that client
    /// with [`DisconnectReason::SendQueueFull`], and what it held stops
    /// counting at once (so that one cut can bring the total back under).
    /// Clients within their share are served on, so the total stays under
    /// twice this plus a message for each client.
    pub max_total_send_buffer: usize,
}

impl ServerEndpointConfig {
    /// Both layers' defaults, a 512 MiB total receive bound and a 256 MiB
    /// total send bound.
    pub fn new(netcode: netcode::ServerConfig, transport: TransportConfig) -> Self {
        Self {
            netcode,
            transport,
            max_total_receive_buffer: 512 << 20,
            max_total_send_buffer: 256 << 20,
        }
    }
}

/// What the endpoint reports, drained with [`ServerEndpoint::poll_event`].
/// A client's events come in order: `Connected`, its messages, `Disconnected`.
#[derive(Debug, PartialEq, Eq)]
pub enum EndpointEvent<'a> {
    /// A client completed the handshake.
    Connected {
        /// Its slot.
        client: ClientIndex,
        /// The id its connect token carries (the player's account id).
        client_id: u64,
        /// This connection's number, unique for the endpoint's lifetime.
        session: u64,
    },
    /// A complete message from a client, borrowed until the next call.
    Message {
        /// The sender.
        client: ClientIndex,
        /// The sender's token id.
        client_id: u64,
        /// The sender's connection number.
        session: u64,
        /// The channel it came on.
        channel: ChannelId,
        /// Its bytes.
        payload: &'a [u8],
    },
    /// A client left; its slot is free.
    Disconnected {
        /// Its former slot.
        client: ClientIndex,
        /// The id its connect token carried.
        client_id: u64,
        /// The connection's number.
        session: u64,
        /// Why.
        reason: DisconnectReason,
    },
}

/// Why a send to a client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EndpointSendError {
    /// No client in that slot.
    #[error("no such client")]
    UnknownClient,
    /// The transport refused it.
    #[error(transparent)]
    Transport(#[from] SendError),
}

/// Transport counters summed over every connection, past and present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportTotals {
    /// Reliable messages (or fragments) sent again.
    pub resent: u64,
    /// Packets judged lost.
    pub packets_lost: u64,
    /// Received packets that did not parse.
    pub malformed_packets: u64,
    /// Unreliable messages shed before sending.
    pub unreliable_dropped: u64,
}

impl TransportTotals {
    fn add(&mut self, stats: &ConnectionStats) {
        self.resent += stats.resent;
        self.packets_lost += stats.packets_lost;
        self.malformed_packets += stats.malformed_packets;
        self.unreliable_dropped += stats.unreliable_dropped;
    }
}

/// Endpoint-wide counters (the secure layer's own are in [`netcode::ServerStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerEndpointStats {
    /// Clients disconnected because the total receive bound was hit.
    pub flooding_disconnects: u64,
    /// Clients disconnected because their reliable send queue was full, or
    /// held more than their share while the total send bound was hit.
    pub queue_full_disconnects: u64,
}

struct Peer {
    client: ClientIndex,
    client_id: u64,
    session: u64,
    /// Boxed: the peers' own fields, read on every call, then sit in a
    /// dense array (one 64-byte line a peer) instead of on a line of their
    /// own after each 704-byte connection, and stay in the cache between
    /// calls.
    conn: Box<Connection>,
    announced: bool,
    /// Set once the peer is over; the `Disconnected` event follows its messages.
    ended: Option<DisconnectReason>,
    queued_for_transmit: bool,
    queued_for_events: bool,
    /// The time of the peer's live entry in the timer heap: never later than
    /// its connection's next timeout (see `arm`).
    armed: Option<Stamp>,
    buffered: usize,
    /// Its send memory is in [`SendMemory::total`] (until it is cut off
    /// for holding too much, or the secure layer ends it).
    send_counted: bool,
    /// The caller has sent it a message: broadcasts reach it from then on.
    addressed: bool,
}

/// The messages every connection delivered that the caller has not
/// polled yet, in one arena for all peers. Each connection's own inbox
/// would be cold in the cache when its next datagram comes (the other
/// clients' datagrams came in between); this one is written and read for
/// every datagram and stays warm.
#[derive(Default)]
struct Arrivals {
    bytes: Vec<u8>,
    entries: VecDeque<Arrival>,
}

/// The arena keeps at most this much room once drained, so that one large
/// message does not pin its size on the endpoint.
const ARRIVALS_KEEP_CAPACITY: usize = 256 * 1024;

struct Arrival {
    index: usize,
    /// The connection it came from: its peer's slot may have been taken by
    /// a new client meanwhile.
    session: u64,
    channel: ChannelId,
    start: usize,
    len: usize,
}

/// One peer's [`Deliver`] into the arrivals.
struct PeerArrivals<'a> {
    arrivals: &'a mut Arrivals,
    index: usize,
    session: u64,
}

impl Deliver for PeerArrivals<'_> {
    fn deliver(&mut self, channel: ChannelId, payload: &[u8]) {
        let arrivals = &mut *self.arrivals;
        if arrivals.entries.is_empty() {
            arrivals.bytes.clear();
        }
        let start = arrivals.bytes.len();
        arrivals.bytes.extend_from_slice(payload);
        arrivals.entries.push_back(Arrival {
            index: self.index,
            session: self.session,
            channel,
            start,
            len: payload.len(),
        });
    }
}

impl Peer {
    /// Its `Connected` event, the first time only.
    fn announce(&mut self) -> Option<EndpointEvent<'static>> {
        (!self.announced).then(|| {
            self.announced = true;
            EndpointEvent::Connected {
                client: self.client,
                client_id: self.client_id,
                session: self.session,
            }
        })
    }

    /// Still `client`'s, and not over.
    fn is_live(&self, client: ClientIndex) -> bool {
        self.client == client && self.ended.is_none()
    }
}

/// Many clients on one socket: netcode handshakes and encryption, and one
/// reliable [`Connection`] per client inside the payload packets.
///
/// # Driving it
///
/// - `handle_datagram(now, unix_secs, from, buf)` for every datagram read;
/// - `handle_timeout(now)` when `now` reaches [`poll_timeout`](Self::poll_timeout);
/// - after either, drain [`poll_event`](Self::poll_event) until `None`, then
///   [`poll_transmit`](Self::poll_transmit) until `None` (sending each
///   datagram to its destination);
/// - `send`/`disconnect` at any time; their datagrams leave on the next
///   `poll_transmit` calls.
///
/// Work is proportional to the clients touched, not to the clients
/// connected: transmits and events are queued per client, and timers sit in
/// a heap.
pub struct ServerEndpoint {
    netcode: netcode::Server,
    /// One copy, shared by every connection.
    transport: Arc<TransportConfig>,
    peers: Vec<Option<Peer>>,
    /// Every connection's time: `now` becomes a stamp once per call.
    clock: SharedClock,
    timers: BinaryHeap<Reverse<(Stamp, usize)>>,
    due_scratch: Vec<(Stamp, usize)>,
    transmit_queue: VecDeque<usize>,
    event_queue: VecDeque<usize>,
    arrivals: Arrivals,
    plain: Vec<u8>,
    total_buffered: usize,
    max_total_buffered: usize,
    /// What a client may hold and still not be the one cut off when its
    /// datagram takes the total over `max_total_buffered`.
    receive_share: usize,
    sends: SendMemory,
    stats: ServerEndpointStats,
    retired: TransportTotals,
    /// The number the next connection gets.
    next_session: u64,
}

/// Makes sure `peer` has a heap entry no later than its connection's
/// next timeout. A timeout that moved later keeps the earlier entry (every
/// packet in or out moves a connection's timers, mostly later): that entry
/// fires early, finds nothing due and re-arms, so the heap gets one entry
/// per timer that really comes due instead of one per packet.
fn arm(timers: &mut BinaryHeap<Reverse<(Stamp, usize)>>, peer: &mut Peer, index: usize) {
    let Some(next) = peer.conn.next_timeout() else {
        return;
    };
    if peer.armed.is_none_or(|armed| next < armed) {
        peer.armed = Some(next);
        timers.push(Reverse((next, index)));
    }
}

/// The reliable send memory all connections hold together, and its bound
/// (see [`ServerEndpointConfig::max_total_send_buffer`]).
struct SendMemory {
    /// Every connection's [`Connection::send_buffered_bytes`] together.
    total: usize,
    max: usize,
    /// What a client may hold while the total is over `max`.
    share: usize,
}

impl SendMemory {
    /// Queues `payload` on `peer`'s connection, counting what it adds. A
    /// full reliable queue, or a reliable send while the total is over its
    /// bound to a peer holding more than its share, disconnects the peer
    /// with [`DisconnectReason::SendQueueFull`] (what it held stops
    /// counting) and returns [`SendError::QueueFull`].
    fn send(
        &mut self,
        now: Stamp,
        peer: &mut Peer,
        channel: ChannelId,
        reliable: bool,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let held = peer.conn.send_buffered_bytes();
        // A peer on its way out refuses the send as closed: cutting it off
        // would drop its goodbye and change the reason it hears.
        let over_share = reliable
            && peer.send_counted
            && self.total > self.max
            && held > self.share
            && peer.conn.is_connected();
        let result = if over_share {
            Err(SendError::QueueFull)
        } else {
            peer.conn.send_bytes(channel, payload)
        };
        if !peer.send_counted {
            return result;
        }
        self.track(held, &peer.conn);
        if result == Err(SendError::QueueFull) {
            peer.conn
                .close_gracefully(now, DisconnectReason::SendQueueFull);
            // Nothing more is sent to it, and nothing it acknowledges is
            // read: what it holds stays until its slot is freed.
            self.total -= peer.conn.send_buffered_bytes();
            peer.send_counted = false;
        }
        result
    }

    /// Brings the total up to date with `conn`, which held `held` before.
    fn track(&mut self, held: usize, conn: &Connection) {
        self.total = self.total + conn.send_buffered_bytes() - held;
    }
}

/// Brings `peer`'s share of the endpoint's receive memory, and `total`, up
/// to what its connection holds now (after datagrams and timers, and after
/// a close, which frees what it held).
fn recount(total: &mut usize, peer: &mut Peer) {
    let buffered = peer.conn.receive_buffered_bytes();
    *total = *total + buffered - peer.buffered;
    peer.buffered = buffered;
}

impl ServerEndpoint {
    /// Builds the endpoint; `rng` seeds the secure layer's keys.
    ///
    /// # Errors
    /// A configuration of either layer that cannot work (see
    /// [`check_transport`](super::check_transport)).
    pub fn new(
        config: ServerEndpointConfig,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<Self, EndpointConfigError> {
        super::check_transport(&config.transport)?;
        let max_clients = config.netcode.max_clients;
        let netcode = netcode::Server::new(config.netcode, rng)?;
        Ok(Self {
            netcode,
            transport: Arc::new(config.transport),
            peers: (0..max_clients).map(|_| None).collect(),
            clock: SharedClock::default(),
            timers: BinaryHeap::new(),
            due_scratch: Vec::new(),
            transmit_queue: VecDeque::new(),
            event_queue: VecDeque::new(),
            arrivals: Arrivals::default(),
            plain: vec![0; netcode::MAX_PAYLOAD_BYTES],
            total_buffered: 0,
            max_total_buffered: config.max_total_receive_buffer,
            receive_share: config.max_total_receive_buffer / max_clients.max(1),
            sends: SendMemory {
                total: 0,
                max: config.max_total_send_buffer,
                share: config.max_total_send_buffer / max_clients.max(1),
            },
            stats: ServerEndpointStats::default(),
            retired: TransportTotals::default(),
            next_session: 1,
        })
    }

    /// The secure layer (its stats, addresses and client ids).
    pub fn netcode(&self) -> &netcode::Server {
        &self.netcode
    }

    /// Endpoint-wide counters.
    pub fn stats(&self) -> &ServerEndpointStats {
        &self.stats
    }

    /// Clients connected now.
    pub fn connected_clients(&self) -> usize {
        self.peers
            .iter()
            .flatten()
            .filter(|p| p.ended.is_none())
            .count()
    }

    /// The transport connection of `client`, for its stats.
    pub fn connection_stats(&self, client: ClientIndex) -> Option<ConnectionStats> {
        self.peer(client).map(|p| p.conn.stats())
    }

    /// Transport counters over all connections ever served; `connected`
    /// is called with every connected client's slot, client id, session
    /// and smoothed RTT (`None` before the first measurement). O(clients).
    pub fn transport_totals(
        &self,
        mut connected: impl FnMut(ClientIndex, u64, u64, Option<Duration>),
    ) -> TransportTotals {
        let mut totals = self.retired;
        for peer in self.peers.iter().flatten() {
            let stats = peer.conn.stats();
            totals.add(&stats);
            if peer.ended.is_none() {
                let rtt = (stats.rtt > Duration::ZERO).then_some(stats.rtt);
                connected(peer.client, peer.client_id, peer.session, rtt);
            }
        }
        totals
    }

    /// Receive memory held by all clients together.
    pub fn total_receive_buffered(&self) -> usize {
        self.total_buffered
    }

    /// Reliable send memory held for all clients together.
    pub fn total_send_buffered(&self) -> usize {
        self.sends.total
    }

    /// Bytes queued or unacknowledged for `client` on `channel`.
    pub fn queued_bytes(&self, client: ClientIndex, channel: ChannelId) -> usize {
        self.peer(client)
            .map_or(0, |p| p.conn.queued_bytes(channel))
    }

    fn peer(&self, client: ClientIndex) -> Option<&Peer> {
        self.peers
            .get(client.get())
            .and_then(Option::as_ref)
            .filter(|p| p.client == client)
    }

    /// The connection number (see [`EndpointEvent::Connected`]) of the
    /// client in this slot, while its session lasts.
    pub fn session(&self, client: ClientIndex) -> Option<u64> {
        self.peers
            .get(client.get())
            .and_then(Option::as_ref)
            .filter(|p| p.is_live(client))
            .map(|p| p.session)
    }

    /// `client`'s peer while its session lasts (a function of the peers
    /// alone, so that the endpoint's other fields stay free to borrow).
    fn live_peer_mut(peers: &mut [Option<Peer>], client: ClientIndex) -> Option<&mut Peer> {
        peers
            .get_mut(client.get())
            .and_then(Option::as_mut)
            .filter(|p| p.is_live(client))
    }

    /// Queues a message for one client. When a reliable channel's queue is
    /// full the client cannot keep up: it is disconnected with
    /// [`DisconnectReason::SendQueueFull`] and the error returned.
    pub fn send(
        &mut self,
        now: Instant,
        client: ClientIndex,
        channel: ChannelId,
        payload: Bytes,
    ) -> Result<(), EndpointSendError> {
        let peer =
            Self::live_peer_mut(&mut self.peers, client).ok_or(EndpointSendError::UnknownClient)?;
        peer.addressed = true;
        let reliable = self.transport.is_reliable(channel);
        let now = self.clock.stamp(now);
        let result = self.sends.send(now, peer, channel, reliable, payload);
        if result == Err(SendError::QueueFull) {
            recount(&mut self.total_buffered, peer);
            self.stats.queue_full_disconnects += 1;
        }
        self.touch(client.get());
        result.map_err(EndpointSendError::from)
    }

    /// Asks the CPU for what [`send`](Self::send) reads of the clients the
    /// caller sends to in its next few calls: `ahead(n)` is the client and
    /// channel of the send `n` calls from now (`None` if none). Called
    /// before each of a batch of sends, this takes each client's chain of
    /// cold lines (its slot, its connection, its channel) one step further
    /// every other call, so the lines have been on their way for a few
    /// sends when the client's turn comes (see [`crate::prefetch`]).
    pub fn prefetch_sends(&self, ahead: impl Fn(usize) -> Option<(ClientIndex, ChannelId)>) {
        let peer = |n: usize| {
            let (client, channel) = ahead(n)?;
            Some((self.peers.get(client.get())?, channel))
        };
        // A send whose lines are in takes about a memory round trip, so
        // each step is two sends ahead of the next.
        if let Some((slot, _)) = peer(6) {
            prefetch(slot);
        }
        if let Some((Some(peer), _)) = peer(4) {
            peer.conn.prefetch_send();
        }
        if let Some((Some(peer), channel)) = peer(2) {
            peer.conn.prefetch_send_channel(channel);
        }
    }

    /// Queues one shared message for every connected client but those of
    /// the account `except_account` (whichever session it is in: one that
    /// connected since the caller last looked too); a client whose reliable
    /// queue is full is disconnected as in [`send`](Self::send). Only
    /// clients the caller has [`send`](Self::send) a message to: a client
    /// whose `Connected` event the caller has not handled yet gets nothing
    /// before the caller's own first message to it (a game's welcome).
    pub fn broadcast(
        &mut self,
        now: Instant,
        channel: ChannelId,
        payload: &Bytes,
        except_account: Option<u64>,
    ) {
        let now = self.clock.stamp(now);
        let reliable = self.transport.is_reliable(channel);
        for index in 0..self.peers.len() {
            let Some(peer) = self.peers[index].as_mut() else {
                continue;
            };
            if peer.ended.is_some()
                || !peer.addressed
                || !peer.conn.is_connected()
                || Some(peer.client_id) == except_account
            {
                continue;
            }
            if self
                .sends
                .send(now, peer, channel, reliable, payload.clone())
                == Err(SendError::QueueFull)
            {
                recount(&mut self.total_buffered, peer);
                self.stats.queue_full_disconnects += 1;
            }
            self.touch(index);
        }
    }

    /// Ends a client's session: what was sent to it before still reaches
    /// it (within the transport's
    /// [`close_linger`](TransportConfig::close_linger)), then the reason,
    /// then the secure layer's disconnect packets. Nothing more from the
    /// client is delivered. Returns whether this began its disconnect
    /// (false when it had none, or was ending already).
    pub fn disconnect(
        &mut self,
        now: Instant,
        client: ClientIndex,
        reason: DisconnectReason,
    ) -> bool {
        let Some(peer) = Self::live_peer_mut(&mut self.peers, client) else {
            return false;
        };
        if !peer.conn.is_connected() {
            return false;
        }
        peer.conn.finish(self.clock.stamp(now), reason);
        recount(&mut self.total_buffered, peer);
        self.touch(client.get());
        true
    }

    /// Disconnects every client with `reason` (server shutdown), as
    /// [`disconnect`](Self::disconnect) does.
    pub fn disconnect_all(&mut self, now: Instant, reason: DisconnectReason) {
        let now = self.clock.stamp(now);
        for index in 0..self.peers.len() {
            if let Some(peer) = self.peers[index].as_mut()
                && peer.ended.is_none()
            {
                peer.conn.finish(now, reason);
                recount(&mut self.total_buffered, peer);
                self.touch(index);
            }
        }
    }

    /// Clients still finishing a [`disconnect`](Self::disconnect) (what was
    /// sent to them is not all acknowledged yet) stop waiting: their
    /// disconnect packets leave on the next `poll_transmit` calls. For a
    /// server that must stop before the linger is over.
    pub fn stop_lingering(&mut self, now: Instant) {
        let now = self.clock.stamp(now);
        for index in 0..self.peers.len() {
            if let Some(peer) = self.peers[index].as_mut()
                && peer.conn.stop_finishing(now)
            {
                self.touch(index);
            }
        }
    }

    /// Feeds one datagram read from the socket; `buf` is decrypted in place.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        unix_secs: u64,
        from: SocketAddr,
        buf: &mut [u8],
    ) {
        let located = self.netcode.locate(self.netcode.lookup(from));
        self.handle_located(now, unix_secs, located, buf);
    }

    /// The first step of looking up a datagram's sender (see
    /// [`netcode::Server::lookup`]): a caller with a batch of datagrams
    /// takes every sender's, then [`locate`](Self::locate)s each.
    pub fn lookup(&self, from: SocketAddr) -> AddressLookup {
        self.netcode.lookup(from)
    }

    /// Looks up the client a datagram from `sender` comes from, for
    /// [`handle_located`](Self::handle_located), and asks the CPU for the
    /// first lines of its state (see [`crate::prefetch`]). A caller with a
    /// batch of datagrams locates them all first, then hands each to
    /// `handle_located` after [`prefetch_datagrams`](Self::prefetch_datagrams),
    /// so that each client's cold state is on its way before its turn.
    pub fn locate(&self, sender: AddressLookup) -> Located {
        let located = self.netcode.locate(sender);
        if let Some(client) = located.client() {
            self.netcode.prefetch_client(client);
            if let Some(slot) = self.peers.get(client.get()) {
                prefetch(slot);
            }
        }
        located
    }

    /// The next steps of [`locate`](Self::locate)'s prefetch, before each
    /// datagram of a batch is handled: `ahead(n)` is the datagram handled
    /// `n` calls from now. Two datagrams ahead its connection's lines, one
    /// ahead what they point to that a datagram in reads.
    pub fn prefetch_datagrams(&self, ahead: impl Fn(usize) -> Option<Located>) {
        let peer = |n: usize| self.peer(ahead(n)?.client()?);
        if let Some(peer) = peer(2) {
            peer.conn.prefetch();
        }
        if let Some(peer) = peer(1) {
            peer.conn.prefetch_receive();
        }
    }

    /// [`handle_datagram`](Self::handle_datagram) for a datagram from
    /// `located`'s address.
    pub fn handle_located(
        &mut self,
        now: Instant,
        unix_secs: u64,
        located: Located,
        buf: &mut [u8],
    ) {
        match self.netcode.handle_located(now, unix_secs, located, buf) {
            Some(ServerEvent::Payload { client, data }) => {
                let index = client.get();
                let Some(peer) = self.peers.get_mut(index).and_then(Option::as_mut) else {
                    return;
                };
                if peer.client != client || peer.ended.is_some() {
                    return;
                }
                let mut arrivals = PeerArrivals {
                    arrivals: &mut self.arrivals,
                    index,
                    session: peer.session,
                };
                let now = self.clock.stamp(now);
                let held = peer.conn.send_buffered_bytes();
                peer.conn.datagram_at(now, data, &mut arrivals);
                // Acknowledgements free send memory.
                if peer.send_counted {
                    self.sends.track(held, &peer.conn);
                }
                let before = peer.buffered;
                recount(&mut self.total_buffered, peer);
                // Only a datagram that grew its sender's share can have
                // pushed the total over. Closing frees what the one cut
                // off held at once, so the clients after it in this read
                // turn are not blamed.
                if self.total_buffered > self.max_total_buffered && peer.buffered > before {
                    let heaviest = if peer.buffered > self.receive_share {
                        index
                    } else {
                        self.heaviest_receiver().unwrap_or(index)
                    };
                    if let Some(peer) = self.peers.get_mut(heaviest).and_then(Option::as_mut) {
                        self.stats.flooding_disconnects += 1;
                        peer.conn.close_gracefully(now, DisconnectReason::Flooding);
                        recount(&mut self.total_buffered, peer);
                    }
                    self.touch(heaviest);
                }
                self.touch(index);
            }
            Some(event) => self.on_lifecycle(now, event),
            None => {}
        }
    }

    fn on_lifecycle(&mut self, now: Instant, event: ServerEvent<'_>) {
        match event {
            ServerEvent::ClientConnected {
                client, client_id, ..
            } => {
                let (clock, now) = self.clock.at(now);
                let Ok(conn) = Connection::with_clock(Arc::clone(&self.transport), clock, now)
                else {
                    tracing::error!("invalid transport configuration; refusing client");
                    let _ = self.netcode.disconnect(client);
                    return;
                };
                let index = client.get();
                if let Some(slot) = self.peers.get_mut(index) {
                    let session = self.next_session;
                    self.next_session += 1;
                    *slot = Some(Peer {
                        client,
                        client_id,
                        session,
                        conn: Box::new(conn),
                        announced: false,
                        ended: None,
                        queued_for_transmit: false,
                        queued_for_events: false,
                        armed: None,
                        buffered: 0,
                        send_counted: true,
                        addressed: false,
                    });
                    // The slot stays this peer's until `remove_peer`.
                    self.netcode.hold(client);
                    self.touch(index);
                }
            }
            ServerEvent::ClientDisconnected { client, reason, .. } => {
                let index = client.get();
                if let Some(peer) = self.peers.get_mut(index).and_then(Option::as_mut)
                    && peer.client == client
                    && peer.ended.is_none()
                {
                    // A connection ending on this side's account (a kick
                    // lingering to deliver what was sent, a cut whose
                    // goodbye is under way) ends for the reason it was
                    // given, as the transport's own timeouts do: the
                    // secure layer's only says how the wait ended. So
                    // does one the client ended, whose transport goodbye
                    // came in the same burst as its secure layer's.
                    let secure = match reason {
                        netcode::DisconnectReason::ClientDisconnected => DisconnectReason::Closed,
                        netcode::DisconnectReason::TimedOut => DisconnectReason::Timeout,
                    };
                    peer.ended = Some(peer.conn.end_reason().unwrap_or(secure));
                    // No datagram comes in or goes out any more: what it
                    // held for later delivery never will be, and what it
                    // queued never leaves. Both stop counting now, not
                    // when its slot is freed after the next transmits:
                    // until then the bounds would count memory nobody
                    // holds, and cut an honest client for it (this one,
                    // ended, is never the one cut).
                    peer.conn.discard_received();
                    recount(&mut self.total_buffered, peer);
                    if peer.send_counted {
                        self.sends.total -= peer.conn.send_buffered_bytes();
                        peer.send_counted = false;
                    }
                    self.touch(index);
                }
            }
            ServerEvent::Payload { .. } => {}
        }
    }

    /// The slot of the open connection holding the most receive memory.
    /// O(clients), but only when a datagram takes the total over its bound
    /// from within its sender's share, which each time frees the most held.
    fn heaviest_receiver(&self) -> Option<usize> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(index, peer)| Some((index, peer.as_ref()?)))
            .filter(|(_, peer)| peer.ended.is_none() && peer.conn.is_open())
            .max_by_key(|(_, peer)| peer.buffered)
            .map(|(index, _)| index)
    }

    /// Queues the peer for events and transmits and re-arms its timer.
    fn touch(&mut self, index: usize) {
        let Some(peer) = self.peers.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        if !peer.queued_for_events {
            peer.queued_for_events = true;
            self.event_queue.push_back(index);
        }
        if !peer.queued_for_transmit {
            peer.queued_for_transmit = true;
            self.transmit_queue.push_back(index);
        }
        arm(&mut self.timers, peer, index);
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.netcode.handle_timeout(now);
        while let Some(event) = self.netcode.poll_event() {
            self.on_lifecycle(now, event);
        }
        let now = self.clock.stamp(now);
        // Take everything due first: a timer re-armed at or before `now`
        // (data waiting to be transmitted) is for poll_transmit, not for
        // another round here.
        let mut due = std::mem::take(&mut self.due_scratch);
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.push((at, index));
        }
        for &(at, index) in &due {
            let Some(peer) = self.peers.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if peer.armed != Some(at) {
                continue; // superseded
            }
            peer.armed = None;
            if peer.conn.next_timeout().is_some_and(|t| t <= now) {
                peer.conn.timeout_at(now);
                // Expired reassemblies, or a connection that ended, free
                // receive memory.
                recount(&mut self.total_buffered, peer);
                self.touch(index);
            } else {
                // Armed early (see `arm`): only the timer moves.
                arm(&mut self.timers, peer, index);
            }
        }
        due.clear();
        self.due_scratch = due;
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self
            .timers
            .peek()
            .and_then(|Reverse((at, _))| self.clock.instant(*at));
        [peers, self.netcode.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes the next event; a message's payload borrows the endpoint until
    /// the next call.
    ///
    /// Messages come first, each peer announced before its first one; the
    /// peers' other events (announcements, ends) after them, so a peer's end
    /// always follows all its messages.
    pub fn poll_event(&mut self) -> Option<EndpointEvent<'_>> {
        while let Some(&Arrival { index, session, .. }) = self.arrivals.entries.front() {
            let Some(peer) = self
                .peers
                .get_mut(index)
                .and_then(Option::as_mut)
                .filter(|peer| peer.session == session)
            else {
                self.arrivals.entries.pop_front();
                continue;
            };
            if let Some(connected) = peer.announce() {
                return Some(connected);
            }
            let (client, client_id) = (peer.client, peer.client_id);
            let arrival = self.arrivals.entries.pop_front()?;
            return Some(EndpointEvent::Message {
                client,
                client_id,
                session,
                channel: arrival.channel,
                payload: self
                    .arrivals
                    .bytes
                    .get(arrival.start..arrival.start + arrival.len)?,
            });
        }
        self.arrivals.bytes.clear();
        if self.arrivals.bytes.capacity() > ARRIVALS_KEEP_CAPACITY {
            self.arrivals.bytes = Vec::new();
        }
        loop {
            let &index = self.event_queue.front()?;
            let Some(peer) = self.peers.get_mut(index).and_then(Option::as_mut) else {
                self.event_queue.pop_front();
                continue;
            };
            if let Some(connected) = peer.announce() {
                return Some(connected);
            }
            // Its messages came through the arrivals; what the connection
            // keeps is its end, which only a connection no longer connected
            // has (the check reads a hot line, the inbox a cold one).
            if !peer.conn.is_connected()
                && let Some(event) = peer.conn.poll_event()
            {
                if let Event::Disconnected { reason, .. } = event {
                    peer.ended.get_or_insert(reason);
                }
                continue;
            }
            self.event_queue.pop_front();
            peer.queued_for_events = false;
            // Over, and its last datagrams (the transport's disconnect
            // packets) have left: free the slot.
            if peer.ended.is_some() && !peer.queued_for_transmit {
                return self.remove_peer(index);
            }
        }
    }

    /// Frees a finished peer's slot and reports its end.
    fn remove_peer(&mut self, index: usize) -> Option<EndpointEvent<'_>> {
        let peer = self.peers.get_mut(index)?.take()?;
        self.total_buffered -= peer.buffered;
        if peer.send_counted {
            self.sends.total -= peer.conn.send_buffered_bytes();
        }
        self.retired.add(&peer.conn.stats());
        // Idempotent if the secure layer already dropped the client.
        let _ = self.netcode.disconnect(peer.client);
        self.netcode.release(peer.client);
        Some(EndpointEvent::Disconnected {
            client: peer.client,
            client_id: peer.client_id,
            session: peer.session,
            reason: peer.ended.unwrap_or(DisconnectReason::Closed),
        })
    }

    /// Writes the next datagram into `buf` (at least
    /// [`netcode::MAX_PACKET_BYTES`]); send `buf[..len]` to `destination`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(transmit) = self.netcode.poll_transmit(now, buf) {
            return Some(transmit);
        }
        let stamp = self.clock.stamp(now);
        while let Some(&index) = self.transmit_queue.front() {
            let Some(peer) = self.peers.get_mut(index).and_then(Option::as_mut) else {
                self.transmit_queue.pop_front();
                continue;
            };
            // Ended by the secure layer (the client left or timed out):
            // nothing can be sealed for it any more.
            let network_gone = peer.ended.is_some() && peer.conn.is_open();
            let sent = if network_gone {
                None
            } else {
                peer.conn.transmit_at(stamp, &mut self.plain)
            };
            // A transmit can end the connection (a packet counted lost to
            // bound the span in flight takes a reliable message past its
            // timeout), which frees what it held. Only then does its
            // share change: one compare on the peer's line otherwise.
            if peer.buffered != 0 && !peer.conn.is_open() {
                recount(&mut self.total_buffered, peer);
            }
            if let Some(len) = sent {
                match self
                    .netcode
                    .send_payload(now, peer.client, &self.plain[..len], buf)
                {
                    Ok(transmit) => return Some(transmit),
                    Err(error) => {
                        tracing::debug!(?error, client = index, "payload not sealed");
                        peer.ended.get_or_insert(DisconnectReason::Closed);
                    }
                }
                continue;
            }
            self.transmit_queue.pop_front();
            peer.queued_for_transmit = false;
            // A closed transport's reason is in its event queue (read by
            // poll_event, whichever of the two the caller drains first).
            if peer.ended.is_some() || peer.conn.is_closed() {
                // Its events (and the final Disconnected) are still to be drained.
                if !peer.queued_for_events {
                    peer.queued_for_events = true;
                    self.event_queue.push_back(index);
                }
            } else {
                arm(&mut self.timers, peer, index);
            }
            self.prefetch_transmits();
        }
        None
    }

    /// Asks the CPU for the state of the peers the transmit queue reaches
    /// next, called as each peer's turn ends: a peer's state is a chain of
    /// cold lines (its slot, its connection, the channels the connection
    /// points to, their messages), each read to find the next, so each turn
    /// takes the chain one step further for the peers a step closer (see
    /// [`crate::prefetch`]). When a peer's turn comes, its lines have been
    /// on their way for four turns instead of being read one stall after
    /// the other.
    fn prefetch_transmits(&self) {
        let ahead = |turns: usize| {
            self.transmit_queue
                .get(turns)
                .and_then(|&index| self.peers.get(index))
        };
        if let Some(slot) = ahead(4) {
            prefetch(slot);
        }
        if let Some(Some(peer)) = ahead(3) {
            peer.conn.prefetch();
            self.netcode.prefetch_client(peer.client);
        }
        if let Some(Some(peer)) = ahead(2) {
            peer.conn.prefetch_transmit();
        }
        if let Some(Some(peer)) = ahead(1) {
            peer.conn.prefetch_transmit_messages();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_keeps_to_one_cache_line() {
        assert!(std::mem::size_of::<Option<Peer>>() <= 64);
    }
}
