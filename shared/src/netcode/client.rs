//! The sans-IO netcode.io client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::addresses::same_address;
use super::crypto::PacketCipher;
use super::history::{NO_BLOCK, TokenHistory, block_of, handshake_block};
use super::packet::{self, CHALLENGE_BODY_BYTES, PacketKind, Side};
use super::replay::ReplayWindow;
use super::stats::{ClientStats, DropReason, bump};
use super::token::{ConnectToken, TokenError};
use super::{
    CHALLENGE_TOKEN_BYTES, MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES, MAX_SERVER_ADDRESSES,
    NUM_DISCONNECT_PACKETS, SendError, Transmit,
};

/// Sequence numbers a client may use per second of a token's age: one
/// that starts using a token it does not remember starts at its age in
/// seconds times this (see [`Client::connect`]), above every number an
/// earlier user of the token could have reached unless that one sent more
/// than about a million packets a second, or began within the same
/// second (on a clock behind the token's maker's, see
/// [`CLOCK_BEHIND_SPAN_SECS`]). A token a second old starts at 2^20 (three bytes on the wire),
/// an hour old at about 2^31.8 (four), a day old at about 2^36.4 (five).
pub const SEQUENCES_PER_SECOND: u64 = 1 << 20;

/// How far behind the token's maker a client's clock may be and still
/// number one run with a token past an earlier run's. A clock that reads
/// before the token's creation time cannot count the token's age; the
/// last [`CLOCK_BEHIND_SPAN_SECS`] seconds before it are spread over the
/// numbers of the token's first second instead, 2^20 / 1,024 = 1,024 a
/// second, so that runs on one such clock still start past each other
/// (unless the earlier one averaged more than 1,024 packets a second).
/// Further behind, every run starts at zero.
pub const CLOCK_BEHIND_SPAN_SECS: u64 = 1024;

/// Where a client that does not remember `token` starts numbering its
/// packets, its wall clock reading `unix_secs` (see [`Client::connect`]).
fn first_sequence(token: &ConnectToken, unix_secs: u64) -> u64 {
    match unix_secs.checked_sub(token.create_timestamp) {
        Some(age) => age.saturating_mul(SEQUENCES_PER_SECOND),
        None => {
            let behind = token.create_timestamp - unix_secs;
            CLOCK_BEHIND_SPAN_SECS.saturating_sub(behind)
                * (SEQUENCES_PER_SECOND / CLOCK_BEHIND_SPAN_SECS)
        }
    }
}

/// Client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The protocol id this build speaks; a token for another is refused at
    /// [`Client::connect`].
    pub protocol_id: u64,
    /// How often requests and responses are resent while connecting (the
    /// standard suggests 10 Hz).
    pub handshake_interval: Duration,
    /// A keep-alive is sent after this long without sending anything.
    pub keepalive_interval: Duration,
}

impl ClientConfig {
    /// Defaults: 10 Hz handshake resends and keep-alives.
    pub fn new(protocol_id: u64) -> Self {
        Self {
            protocol_id,
            handshake_interval: Duration::from_millis(100),
            keepalive_interval: Duration::from_millis(100),
        }
    }
}

/// The standard's client states; [`ClientState::code`] gives its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// The token expired before a connection was made (-6).
    ConnectTokenExpired,
    /// The token was refused at `connect` (-5).
    InvalidConnectToken,
    /// The connected server went silent (-4).
    ConnectionTimedOut,
    /// No keep-alive answered the responses (-3).
    ConnectionResponseTimedOut,
    /// No challenge or denial answered the requests (-2). This is also what
    /// a client sees when the server silently ignores its token (wrong key,
    /// wrong protocol id, address not in token, token used elsewhere).
    ConnectionRequestTimedOut,
    /// The server was full (-1).
    ConnectionDenied,
    /// Not connected (0).
    Disconnected,
    /// Sending connection requests (1).
    SendingConnectionRequest,
    /// Sending challenge responses (2).
    SendingConnectionResponse,
    /// Connected (3).
    Connected,
}

impl ClientState {
    /// The standard's numeric state.
    pub fn code(self) -> i8 {
        match self {
            Self::ConnectTokenExpired => -6,
            Self::InvalidConnectToken => -5,
            Self::ConnectionTimedOut => -4,
            Self::ConnectionResponseTimedOut => -3,
            Self::ConnectionRequestTimedOut => -2,
            Self::ConnectionDenied => -1,
            Self::Disconnected => 0,
            Self::SendingConnectionRequest => 1,
            Self::SendingConnectionResponse => 2,
            Self::Connected => 3,
        }
    }

    /// Whether this is one of the error states.
    pub fn is_error(self) -> bool {
        self.code() < 0
    }

    /// Whether the handshake is under way.
    pub fn is_connecting(self) -> bool {
        matches!(
            self,
            Self::SendingConnectionRequest | Self::SendingConnectionResponse
        )
    }
}

/// Why [`Client::connect`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The token bytes did not parse (includes a wrong version string).
    #[error("connect token does not parse: {0}")]
    Token(#[from] TokenError),
    /// Address count outside 1..=32, or create after expire.
    #[error("connect token is invalid")]
    InvalidToken,
    /// The token is for another game or application.
    #[error("connect token protocol id {got:#x} does not match {expected:#x}")]
    WrongProtocolId {
        /// This client's protocol id.
        expected: u64,
        /// The token's.
        got: u64,
    },
    /// The token's expire timestamp is not after the given unix time.
    #[error("connect token expired")]
    Expired,
}

/// What the client tells the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    /// The handshake completed.
    Connected {
        /// Our slot on the server.
        client_index: u32,
        /// The server's slot count.
        max_clients: u32,
    },
    /// A payload from the server, decrypted in place in the caller's buffer.
    Payload(&'a [u8]),
    /// The server sent a disconnect packet; the state is now `Disconnected`.
    Disconnected,
}

/// A connection attempt and then the connection. In the order of use
/// (`repr(C)`): the keys, the times and the server's address, read by
/// every datagram, come first and fill three cache lines; the token and
/// the challenge, read while connecting only, are boxed.
#[repr(C)]
struct Session {
    send: PacketCipher,
    recv: PacketCipher,
    last_received: Instant,
    last_sent: Option<Instant>,
    /// `token.server_addresses[server_index]`.
    server: SocketAddr,
    /// The token's timeout; `None` when it disables timeouts.
    timeout: Option<Duration>,
    /// When the token expires: its lifetime from `connect`, or what was
    /// left of it by the caller's clock if that is less (a token pasted in
    /// late), so that it ends as expired, not as a timeout.
    expires_at: Option<Instant>,
    server_index: usize,
    /// An address of the token refused the connection (server full): if
    /// none connects and the last is silent, that is the reason given.
    denied: bool,
    /// The server's block of the handshake whose challenge was taken
    /// ([`NO_BLOCK`] before): the server numbers everything of that
    /// handshake and the session it leads to in it, so a packet numbered in
    /// another is an earlier session's, replayed (see `TokenHistory::admits`).
    handshake_block: u32,
    token: Box<ConnectToken>,
    challenge: Option<Box<(u64, [u8; CHALLENGE_TOKEN_BYTES])>>,
}

struct Farewell {
    to: SocketAddr,
    cipher: PacketCipher,
    /// The ended connection's own counter: a connect with another token
    /// restarts the client's, and these packets still go out under the old
    /// key.
    next_sequence: u64,
    remaining: usize,
}

/// A netcode.io 1.02 client as a sans-IO state machine.
///
/// Method families, as on [`Server`](super::Server):
/// - commands: [`connect`](Self::connect), [`send_payload`](Self::send_payload)
///   (seals one packet into the caller's buffer), [`disconnect`](Self::disconnect);
/// - `handle_*`: [`handle_datagram`](Self::handle_datagram) (returns an event
///   at once, a payload borrowing the caller's buffer),
///   [`handle_timeout`](Self::handle_timeout);
/// - `poll_*`: [`poll_transmit`](Self::poll_transmit) (requests, responses,
///   keep-alives, disconnect packets), [`poll_timeout`](Self::poll_timeout).
///
/// Drain order: after any command or `handle_*`, call `poll_transmit` until
/// `None`, then re-arm the timer from `poll_timeout`. Watch
/// [`state`](Self::state) after `handle_timeout` for timeouts and expiry.
///
/// In memory (`repr(C)`), what every datagram in or out reads comes first:
/// a swarm of bots keeps thousands of clients, each cold in the cache
/// when its next datagram comes.
#[repr(C)]
pub struct Client {
    session: Option<Session>,
    next_sequence: u64,
    config: ClientConfig,
    state: ClientState,
    replay: ReplayWindow,
    /// The server's block of the current session ([`NO_BLOCK`] before it
    /// is connected).
    session_block: u32,
    stats: ClientStats,
    farewell: Option<Farewell>,
    tokens: TokenHistory,
    client_index: u32,
    max_clients: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state)
            .field("server", &self.server_address())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A disconnected client.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            state: ClientState::Disconnected,
            session: None,
            next_sequence: 0,
            tokens: TokenHistory::default(),
            replay: ReplayWindow::default(),
            session_block: NO_BLOCK,
            client_index: 0,
            max_clients: 0,
            farewell: None,
            stats: ClientStats::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Counters, including drops by reason.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Our slot on the server, once connected.
    pub fn client_index(&self) -> Option<u32> {
        (self.state == ClientState::Connected).then_some(self.client_index)
    }

    /// The server's slot count, once connected.
    pub fn max_clients(&self) -> Option<u32> {
        (self.state == ClientState::Connected).then_some(self.max_clients)
    }

    /// The server address being tried or connected to.
    pub fn server_address(&self) -> Option<SocketAddr> {
        self.session.as_ref().map(|s| s.server)
    }

    /// Parses `bytes` as a 2048-byte token and connects with it; a token that
    /// does not parse moves the client to `InvalidConnectToken`. Either way
    /// any current connection is dropped, as by [`connect`](Self::connect).
    pub fn connect_bytes(
        &mut self,
        bytes: &[u8],
        now: Instant,
        unix_secs: u64,
    ) -> Result<(), ConnectError> {
        match ConnectToken::from_bytes(bytes) {
            Ok(token) => self.connect(&token, now, unix_secs),
            Err(e) => {
                self.disconnect();
                self.reset(ClientState::InvalidConnectToken);
                Err(ConnectError::Token(e))
            }
        }
    }

    /// Starts connecting to the token's first server address. `unix_secs` is
    /// the wall clock, to refuse an already expired token. Any current
    /// connection is dropped (with disconnect packets if connected).
    pub fn connect(
        &mut self,
        token: &ConnectToken,
        now: Instant,
        unix_secs: u64,
    ) -> Result<(), ConnectError> {
        self.disconnect();
        let count = token.server_addresses.len();
        if count == 0
            || count > MAX_SERVER_ADDRESSES
            || token.create_timestamp > token.expire_timestamp
        {
            self.state = ClientState::InvalidConnectToken;
            return Err(ConnectError::InvalidToken);
        }
        if token.protocol_id != self.config.protocol_id {
            self.state = ClientState::InvalidConnectToken;
            return Err(ConnectError::WrongProtocolId {
                expected: self.config.protocol_id,
                got: token.protocol_id,
            });
        }
        if token.expire_timestamp <= unix_secs {
            self.state = ClientState::ConnectTokenExpired;
            return Err(ConnectError::Expired);
        }
        // A token used before: keep counting so no (key, nonce) pair repeats.
        // One this client does not remember may have been used by another
        // (this program run before): start past anything that one could
        // have sent since the token was made, so that its packets are
        // neither sealed again under the same nonces nor, recorded and
        // replayed, taken as this connection's by a server that has not
        // seen the token (restarted, or the next of its addresses).
        let fresh = first_sequence(token, unix_secs);
        self.next_sequence = self
            .tokens
            .switch_to(token.nonce, self.next_sequence, fresh);
        let Some(&server) = token.server_addresses.first() else {
            self.state = ClientState::InvalidConnectToken;
            return Err(ConnectError::InvalidToken);
        };
        self.session = Some(Session {
            send: PacketCipher::new(&token.client_to_server_key),
            recv: PacketCipher::new(&token.server_to_client_key),
            last_received: now,
            last_sent: None,
            server,
            timeout: u64::try_from(token.timeout_seconds)
                .ok()
                .filter(|t| *t > 0)
                .map(Duration::from_secs),
            expires_at: now.checked_add(Duration::from_secs(
                token
                    .lifetime_seconds()
                    .min(token.expire_timestamp.saturating_sub(unix_secs)),
            )),
            server_index: 0,
            denied: false,
            token: Box::new(token.clone()),
            handshake_block: NO_BLOCK,
            challenge: None,
        });
        self.replay = ReplayWindow::default();
        self.state = ClientState::SendingConnectionRequest;
        Ok(())
    }

    /// Leaves the server: if connected, or sending responses (which the
    /// server may have taken already: it connects a client on its response,
    /// and the keep-alive saying so may be on its way or lost),
    /// [`NUM_DISCONNECT_PACKETS`] disconnect packets are queued for
    /// `poll_transmit`. The state becomes `Disconnected` at once, unless it
    /// is an error state (a timeout, a denial, an expired token), which
    /// stays to say why the session ended.
    pub fn disconnect(&mut self) {
        if matches!(
            self.state,
            ClientState::Connected | ClientState::SendingConnectionResponse
        ) && let (Some(s), Some(to)) = (self.session.as_ref(), self.server_address())
        {
            self.farewell = Some(Farewell {
                to,
                cipher: s.send.clone(),
                next_sequence: self.next_sequence,
                remaining: NUM_DISCONNECT_PACKETS,
            });
            // A reconnect with the same token counts on past them.
            self.next_sequence = self
                .next_sequence
                .saturating_add(NUM_DISCONNECT_PACKETS as u64);
        }
        if !self.state.is_error() {
            self.reset(ClientState::Disconnected);
        }
    }

    fn reset(&mut self, state: ClientState) {
        self.state = state;
        self.session = None;
        self.replay = ReplayWindow::default();
        self.end_session();
    }

    /// A session that was connected is over: its block is never the
    /// server's again.
    fn end_session(&mut self) {
        if self.session_block != NO_BLOCK {
            self.tokens.session_ended(self.session_block);
            self.session_block = NO_BLOCK;
        }
    }

    /// Seals a payload packet into `out` (at least [`MAX_PACKET_BYTES`]);
    /// send `out[..len]` to `destination` right away. Only while connected.
    pub fn send_payload(
        &mut self,
        now: Instant,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Transmit, SendError> {
        if payload.is_empty() || payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SendError::PayloadSize(payload.len()));
        }
        let start = self.payload_offset();
        out.get_mut(start..start + payload.len())
            .ok_or(SendError::BufferTooSmall)?
            .copy_from_slice(payload);
        self.send_payload_in_place(now, payload.len(), out)
    }

    /// Where the next payload packet's plaintext starts in its datagram:
    /// write the payload at `out[payload_offset()..]`, then seal it with
    /// [`send_payload_in_place`](Self::send_payload_in_place), without a
    /// copy.
    pub fn payload_offset(&self) -> usize {
        packet::body_offset(self.next_sequence)
    }

    /// [`send_payload`](Self::send_payload) for a payload of `len` bytes
    /// already written at `out[self.payload_offset()..]`.
    pub fn send_payload_in_place(
        &mut self,
        now: Instant,
        len: usize,
        out: &mut [u8],
    ) -> Result<Transmit, SendError> {
        if len == 0 || len > MAX_PAYLOAD_BYTES {
            return Err(SendError::PayloadSize(len));
        }
        if self.state != ClientState::Connected {
            return Err(SendError::UnknownClient);
        }
        let destination = self.server_address().ok_or(SendError::UnknownClient)?;
        let session = self.session.as_mut().ok_or(SendError::UnknownClient)?;
        let sequence = self.next_sequence;
        let next = sequence
            .checked_add(1)
            .ok_or(SendError::SequenceExhausted)?;
        let len = packet::seal_in_place(
            out,
            PacketKind::Payload,
            sequence,
            len,
            self.config.protocol_id,
            &session.send,
        )
        .map_err(|_| SendError::BufferTooSmall)?;
        self.next_sequence = next;
        session.last_sent = Some(now);
        bump(&mut self.stats.datagrams_sent);
        Ok(Transmit { destination, len })
    }

    /// Processes one datagram from `from`, decrypting `buf` in place.
    /// Invalid datagrams are counted in [`ClientStats::dropped`].
    pub fn handle_datagram<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &'b mut [u8],
    ) -> Option<ClientEvent<'b>> {
        match self.process(now, from, buf) {
            Ok(event) => event,
            Err(reason) => {
                tracing::trace!(%from, ?reason, "netcode client dropped datagram");
                self.stats.dropped.add(reason);
                None
            }
        }
    }

    fn process<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &'b mut [u8],
    ) -> Result<Option<ClientEvent<'b>>, DropReason> {
        let Some(&prefix) = buf.first() else {
            return Err(DropReason::Empty);
        };
        if buf.len() > MAX_PACKET_BYTES {
            return Err(DropReason::Oversized);
        }
        if !self
            .server_address()
            .is_some_and(|server| same_address(server, from))
        {
            return Err(DropReason::UnknownAddress);
        }
        if prefix == 0 {
            return Err(DropReason::UnexpectedPacketType);
        }
        let header = packet::parse_header(buf, Side::Client)?;
        use ClientState::*;
        let expected = match header.kind {
            PacketKind::Denied => self.state.is_connecting(),
            PacketKind::Challenge => self.state == SendingConnectionRequest,
            PacketKind::KeepAlive => matches!(self.state, SendingConnectionResponse | Connected),
            PacketKind::Payload | PacketKind::Disconnect => self.state == Connected,
            PacketKind::Response => false,
        };
        if !expected {
            return Err(DropReason::WrongState);
        }
        let protocol_id = self.config.protocol_id;
        let session = self.session.as_mut().ok_or(DropReason::WrongState)?;
        let protected = header.kind.replay_protected();
        if protected && self.replay.already_received(header.sequence)
            || !self.tokens.admits(
                from,
                header.sequence,
                header.kind == PacketKind::Denied,
                session.handshake_block,
            )
        {
            return Err(DropReason::Replayed);
        }
        let body = packet::open_body(buf, &header, protocol_id, &session.recv)?;
        if protected {
            self.replay.advance(header.sequence);
        }
        session.last_received = now;
        match header.kind {
            PacketKind::Denied => {
                self.tokens.denied(from, header.sequence);
                self.fail_over(now, ConnectionDenied);
                Ok(None)
            }
            PacketKind::Challenge => {
                let (seq, token) = body.split_at_checked(8).ok_or(DropReason::Truncated)?;
                let seq = u64::from_le_bytes(seq.try_into().map_err(|_| DropReason::Truncated)?);
                let token: [u8; CHALLENGE_TOKEN_BYTES] =
                    token.try_into().map_err(|_| DropReason::Truncated)?;
                session.challenge = Some(Box::new((seq, token)));
                session.handshake_block = handshake_block(header.sequence);
                session.last_sent = None;
                self.state = SendingConnectionResponse;
                Ok(None)
            }
            PacketKind::KeepAlive => {
                if self.state == SendingConnectionResponse {
                    let (index, max) = body.split_at_checked(4).ok_or(DropReason::Truncated)?;
                    self.client_index =
                        u32::from_le_bytes(index.try_into().map_err(|_| DropReason::Truncated)?);
                    self.max_clients =
                        u32::from_le_bytes(max.try_into().map_err(|_| DropReason::Truncated)?);
                    self.state = Connected;
                    self.session_block = block_of(header.sequence);
                    return Ok(Some(ClientEvent::Connected {
                        client_index: self.client_index,
                        max_clients: self.max_clients,
                    }));
                }
                Ok(None)
            }
            PacketKind::Payload => {
                bump(&mut self.stats.payloads_received);
                Ok(Some(ClientEvent::Payload(body)))
            }
            PacketKind::Disconnect => {
                self.reset(Disconnected);
                Ok(Some(ClientEvent::Disconnected))
            }
            PacketKind::Response => Err(DropReason::UnexpectedPacketType),
        }
    }

    /// Moves to the token's next server address, or to `error` if none is left.
    fn fail_over(&mut self, now: Instant, error: ClientState) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        session.denied |= error == ClientState::ConnectionDenied;
        let next = session.server_index.saturating_add(1);
        if let Some(&server) = session.token.server_addresses.get(next) {
            session.server_index = next;
            session.server = server;
            session.challenge = None;
            session.handshake_block = NO_BLOCK;
            session.last_received = now;
            session.last_sent = None;
            self.replay = ReplayWindow::default();
            self.state = ClientState::SendingConnectionRequest;
        } else if session.denied && error == ClientState::ConnectionRequestTimedOut {
            // An earlier address said it was full; this one never answered.
            self.reset(ClientState::ConnectionDenied);
        } else {
            self.reset(error);
        }
    }

    fn deadlines(&self) -> Option<(Option<Instant>, Option<Instant>)> {
        let s = self.session.as_ref()?;
        let timeout = s.timeout.and_then(|t| s.last_received.checked_add(t));
        let expiry = if self.state.is_connecting() {
            s.expires_at
        } else {
            None
        };
        Some((timeout, expiry))
    }

    /// Applies token expiry and timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((timeout, expiry)) = self.deadlines() else {
            return;
        };
        if expiry.is_some_and(|t| now >= t) {
            self.reset(ClientState::ConnectTokenExpired);
            return;
        }
        if timeout.is_some_and(|t| now >= t) {
            match self.state {
                ClientState::SendingConnectionRequest => {
                    self.fail_over(now, ClientState::ConnectionRequestTimedOut)
                }
                ClientState::SendingConnectionResponse => {
                    self.fail_over(now, ClientState::ConnectionResponseTimedOut)
                }
                ClientState::Connected => self.reset(ClientState::ConnectionTimedOut),
                _ => {}
            }
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) or
    /// [`poll_transmit`](Self::poll_transmit) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (timeout, expiry) = self.deadlines()?;
        let s = self.session.as_ref()?;
        let interval = if self.state == ClientState::Connected {
            self.config.keepalive_interval
        } else {
            self.config.handshake_interval
        };
        let send = match s.last_sent {
            Some(t) => t.checked_add(interval),
            None => Some(s.last_received),
        };
        [timeout, expiry, send].into_iter().flatten().min()
    }

    /// Writes the next datagram the client owes into `buf` (at least
    /// [`MAX_PACKET_BYTES`]): a pending disconnect packet, else a request,
    /// response or keep-alive when its interval has passed.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if buf.len() < MAX_PACKET_BYTES {
            return None;
        }
        let t = self.write_next(now, buf)?;
        bump(&mut self.stats.datagrams_sent);
        Some(t)
    }

    fn write_next(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let protocol_id = self.config.protocol_id;
        if let Some(farewell) = self.farewell.as_mut() {
            let sequence = farewell.next_sequence;
            let len = packet::seal(
                buf,
                PacketKind::Disconnect,
                sequence,
                &[],
                protocol_id,
                &farewell.cipher,
            )
            .ok()?;
            farewell.next_sequence = sequence.checked_add(1)?;
            let destination = farewell.to;
            farewell.remaining = farewell.remaining.saturating_sub(1);
            if farewell.remaining == 0 {
                self.farewell = None;
            }
            return Some(Transmit { destination, len });
        }
        let destination = self.server_address()?;
        let session = self.session.as_mut()?;
        let interval = if self.state == ClientState::Connected {
            self.config.keepalive_interval
        } else {
            self.config.handshake_interval
        };
        // At most one a call's `now`, whatever the interval (a zero one
        // would otherwise never let a "poll until None" loop end).
        if session
            .last_sent
            .is_some_and(|t| t >= now || now.saturating_duration_since(t) < interval)
        {
            return None;
        }
        let sequence = self.next_sequence;
        let len = match self.state {
            ClientState::SendingConnectionRequest => {
                packet::write_request(buf, &session.token).ok()?
            }
            ClientState::SendingConnectionResponse => {
                let (challenge_sequence, token) = &**session.challenge.as_ref()?;
                let start = packet::body_offset(sequence);
                let body = buf.get_mut(start..start.checked_add(CHALLENGE_BODY_BYTES)?)?;
                let (seq_out, token_out) = body.split_at_mut(8);
                seq_out.copy_from_slice(&challenge_sequence.to_le_bytes());
                token_out.copy_from_slice(token);
                let len = packet::seal_in_place(
                    buf,
                    PacketKind::Response,
                    sequence,
                    CHALLENGE_BODY_BYTES,
                    protocol_id,
                    &session.send,
                )
                .ok()?;
                self.next_sequence = sequence.checked_add(1)?;
                len
            }
            ClientState::Connected => {
                let mut body = [0u8; 8];
                body[..4].copy_from_slice(&self.client_index.to_le_bytes());
                body[4..].copy_from_slice(&self.max_clients.to_le_bytes());
                let len = packet::seal(
                    buf,
                    PacketKind::KeepAlive,
                    sequence,
                    &body,
                    protocol_id,
                    &session.send,
                )
                .ok()?;
                self.next_sequence = sequence.checked_add(1)?;
                len
            }
            _ => return None,
        };
        session.last_sent = Some(now);
        Some(Transmit { destination, len })
    }
}

#[cfg(test)]
mod layout {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn what_every_datagram_reads_keeps_to_the_first_cache_lines() {
        let session_hot = offset_of!(Session, timeout) + size_of::<Option<Duration>>();
        assert!(
            session_hot <= 3 * 64,
            "the session's hot part ends at {session_hot}"
        );
        let stats = offset_of!(Client, stats);
        let counters = stats + offset_of!(ClientStats, payloads_received) + size_of::<u64>();
        assert!(
            offset_of!(Client, state) < 5 * 64 && counters <= 5 * 64,
            "state at {}, counters end at {counters}",
            offset_of!(Client, state)
        );
    }
}
