//! Client side of the stack.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use thiserror::Error;

use crate::netcode::{self, ClientEvent, ClientState, ConnectError, ConnectToken, Transmit};
use crate::transport::{
    ChannelId, Connection, ConnectionStats, Deliver, DisconnectReason, Event, SendError,
    TransportConfig,
};

/// What the client endpoint reports.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEndpointEvent<'a> {
    /// The handshake completed; messages can flow.
    Connected {
        /// Our slot on the server.
        client_index: u32,
    },
    /// A complete message from the server, borrowed until the next call.
    Message {
        /// Its channel.
        channel: ChannelId,
        /// Its bytes.
        payload: &'a [u8],
    },
    /// The session ended (or never started); nothing more follows.
    Disconnected {
        /// Why, as a player should be told.
        reason: DisconnectReason,
    },
}

/// Why a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ClientSendError {
    /// Not connected (yet, or any more).
    #[error("not connected")]
    NotConnected,
    /// The transport refused it.
    #[error(transparent)]
    Transport(#[from] SendError),
}

/// One client: the netcode handshake and encryption, and a reliable
/// [`Connection`] inside the payload packets once connected.
///
/// Drive it like [`ServerEndpoint`](super::ServerEndpoint): `handle_datagram`
/// and `handle_timeout` in, then [`poll_event`](Self::poll_event) and
/// [`poll_transmit`](Self::poll_transmit) until both are `None`.
pub struct ClientEndpoint {
    netcode: netcode::Client,
    /// One copy, shared by every connection.
    transport: Arc<TransportConfig>,
    conn: Option<Connection>,
    /// The slot the server gave this connection (its `Connected` event's).
    client_index: u32,
    announced: bool,
    ended: Option<DisconnectReason>,
    reported_end: bool,
}

impl ClientEndpoint {
    /// A client speaking `protocol_id` with this channel layout (clients
    /// in one process, such as a bot swarm, can share one `Arc`).
    pub fn new(protocol_id: u64, transport: impl Into<Arc<TransportConfig>>) -> Self {
        Self {
            netcode: netcode::Client::new(netcode::ClientConfig::new(protocol_id)),
            transport: transport.into(),
            conn: None,
            client_index: 0,
            announced: false,
            ended: None,
            reported_end: false,
        }
    }

    /// Starts connecting with `token`; `unix_secs` is the wall clock (token expiry).
    pub fn connect(
        &mut self,
        token: &ConnectToken,
        now: Instant,
        unix_secs: u64,
    ) -> Result<(), ConnectError> {
        self.conn = None;
        self.announced = false;
        self.ended = None;
        self.reported_end = false;
        let result = self.netcode.connect(token, now, unix_secs);
        if result.is_err() {
            self.end_from_state();
        }
        result
    }

    /// The secure layer's state.
    pub fn state(&self) -> ClientState {
        self.netcode.state()
    }

    /// Connected and able to send.
    pub fn is_connected(&self) -> bool {
        self.ended.is_none() && self.conn.as_ref().is_some_and(Connection::is_connected)
    }

    /// The server's address, once connecting.
    pub fn server_address(&self) -> Option<SocketAddr> {
        self.netcode.server_address()
    }

    /// The transport connection's stats, once connected.
    pub fn connection_stats(&self) -> Option<ConnectionStats> {
        self.conn.as_ref().map(Connection::stats)
    }

    /// Queues a message for the server.
    pub fn send(&mut self, channel: ChannelId, payload: Bytes) -> Result<(), ClientSendError> {
        match self.conn.as_mut() {
            Some(conn) if self.ended.is_none() => Ok(conn.send_bytes(channel, payload)?),
            _ => Err(ClientSendError::NotConnected),
        }
    }

    /// Leaves: the reason reaches the server, then disconnect packets follow.
    /// Once leaving, a call again changes nothing.
    pub fn disconnect(&mut self, now: Instant, reason: DisconnectReason) {
        match self.conn.as_mut() {
            Some(conn) if conn.is_connected() => conn.disconnect(now, reason),
            // Its goodbye is under way (the transport finishing or closing
            // over the secure layer): ending that now would cut it short.
            Some(conn) if !conn.is_closed() && self.netcode.state() == ClientState::Connected => {}
            _ => {
                self.netcode.disconnect();
                self.ended.get_or_insert(reason);
            }
        }
    }

    fn end_from_state(&mut self) {
        let reason = match self.netcode.state() {
            ClientState::ConnectTokenExpired => DisconnectReason::TokenExpired,
            ClientState::InvalidConnectToken => DisconnectReason::InvalidToken,
            ClientState::ConnectionTimedOut => DisconnectReason::Timeout,
            ClientState::ConnectionResponseTimedOut | ClientState::ConnectionRequestTimedOut => {
                DisconnectReason::ConnectTimeout
            }
            ClientState::ConnectionDenied => DisconnectReason::ServerFull,
            ClientState::Disconnected => DisconnectReason::Closed,
            _ => return,
        };
        self.ended.get_or_insert(reason);
    }

    /// Feeds one datagram from `from`; `buf` is decrypted in place.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8]) {
        self.datagram(now, from, buf, |conn, data| conn.handle_datagram(now, data));
    }

    /// Like [`handle_datagram`](Self::handle_datagram), but the messages the
    /// datagram completes go straight to `out`, in delivery order (see
    /// [`Connection::handle_datagram_into`]); [`poll_event`](Self::poll_event)
    /// still reports the connection's start and end. A process running many
    /// clients (a bot swarm) passes one buffer for all of them: each
    /// client's own inbox would be cold in the cache by its next datagram.
    /// Use one or the other on a connection, or messages may be seen out of
    /// order.
    pub fn handle_datagram_into(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        out: &mut impl Deliver,
    ) {
        self.datagram(now, from, buf, |conn, data| {
            conn.handle_datagram_into(now, data, out);
        });
    }

    fn datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        payload: impl FnOnce(&mut Connection, &[u8]),
    ) {
        match self.netcode.handle_datagram(now, from, buf) {
            Some(ClientEvent::Connected { client_index, .. }) => {
                self.client_index = client_index;
                let conn = super::check_transport(&self.transport)
                    .and_then(|()| Ok(Connection::new(Arc::clone(&self.transport), now)?));
                match conn {
                    Ok(conn) => self.conn = Some(conn),
                    Err(error) => {
                        tracing::error!(%error, "invalid transport configuration");
                        self.netcode.disconnect();
                        self.ended = Some(DisconnectReason::ProtocolViolation);
                    }
                }
            }
            Some(ClientEvent::Payload(data)) => {
                if let Some(conn) = self.conn.as_mut() {
                    payload(conn, data);
                }
            }
            Some(ClientEvent::Disconnected) => {
                self.ended.get_or_insert(DisconnectReason::Closed);
            }
            None => self.end_from_state(),
        }
    }

    /// The transport connection while the secure layer can still carry
    /// its packets. Once the secure layer's session is over (timed out,
    /// closed by either side), the connection can send nothing more: its
    /// timers no longer run and its goodbye is not waited for.
    fn live_conn(&self) -> Option<&Connection> {
        self.conn
            .as_ref()
            .filter(|_| self.netcode.state() == ClientState::Connected)
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.netcode.handle_timeout(now);
        self.end_from_state();
        if self
            .live_conn()
            .and_then(Connection::poll_timeout)
            .is_some_and(|t| t <= now)
            && let Some(conn) = self.conn.as_mut()
        {
            conn.handle_timeout(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = self.live_conn().and_then(Connection::poll_timeout);
        [conn, self.netcode.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes the next event.
    pub fn poll_event(&mut self) -> Option<ClientEndpointEvent<'_>> {
        if let Some(conn) = self.conn.as_mut() {
            if !self.announced {
                self.announced = true;
                return Some(ClientEndpointEvent::Connected {
                    client_index: self.client_index,
                });
            }
            if conn.next_event_is_message() {
                return self.take_message();
            }
            if let Some(Event::Disconnected { reason, .. }) = conn.poll_event() {
                // A reason from the server (or our own) beats the secure layer's.
                self.ended = Some(reason);
            }
        }
        let reason = self.ended?;
        // While our transport is still sending its goodbye, wait for it.
        let conn_done = self
            .live_conn()
            .is_none_or(|c| c.is_connected() || c.is_closed());
        if self.reported_end || !conn_done {
            return None;
        }
        self.reported_end = true;
        Some(ClientEndpointEvent::Disconnected { reason })
    }

    fn take_message(&mut self) -> Option<ClientEndpointEvent<'_>> {
        match self.conn.as_mut()?.poll_event()? {
            Event::Message { channel, payload } => {
                Some(ClientEndpointEvent::Message { channel, payload })
            }
            Event::Disconnected { .. } => None,
        }
    }

    /// Writes the next datagram into `buf` (at least
    /// [`netcode::MAX_PACKET_BYTES`]).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(conn) = self.conn.as_mut()
            && self.netcode.state() == ClientState::Connected
        {
            // The transport writes its packet where the secure layer
            // seals it, in `buf`, which the caller keeps warm.
            let start = self.netcode.payload_offset();
            let end = buf
                .len()
                .saturating_sub(netcode::MAC_BYTES)
                .min(start + netcode::MAX_PAYLOAD_BYTES);
            if let Some(len) = buf
                .get_mut(start..end)
                .and_then(|body| conn.poll_transmit(now, body))
            {
                match self.netcode.send_payload_in_place(now, len, buf) {
                    Ok(transmit) => return Some(transmit),
                    Err(error) => tracing::debug!(?error, "payload not sealed"),
                }
            } else if conn.is_closed() {
                // Our transport said goodbye; now the secure layer's packets.
                self.netcode.disconnect();
            }
        }
        self.netcode.poll_transmit(now, buf)
    }
}
