//! A real netcode.io session whose transport packets the attack writes
//! (the chaos twin of the e2e tests' `RawClient`).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use shared::io::unix_secs;
use shared::netcode::{self, ClientEvent, ClientState, ConnectToken, MAX_PACKET_BYTES};
use shared::protocol::PROTOCOL_ID;
use shared::transport::DisconnectReason;
use shared::transport::wire::{self, AckInfo, MessageHeader, PacketHeader, PacketKind};

use super::Summary;

/// Tokens the attacks mint: a minute to connect, `timeout_seconds` of silence.
pub(crate) fn token(
    server: SocketAddr,
    id: u64,
    timeout_seconds: i32,
) -> Result<ConnectToken, String> {
    token_lasting(server, id, timeout_seconds, Duration::from_secs(60))
}

/// A dev-key token for `server` and account `id`, valid for `life` (whole
/// seconds, at least one).
pub(crate) fn token_lasting(
    server: SocketAddr,
    id: u64,
    timeout_seconds: i32,
    life: Duration,
) -> Result<ConnectToken, String> {
    shared::keys::mint_token(
        &shared::keys::dev_key(),
        vec![server],
        id,
        life.as_secs().max(1),
        timeout_seconds,
    )
    .map_err(|e| format!("cannot mint a token: {e}"))
}

/// Least time between two packets [`Session::keep_up`] sends to carry
/// acknowledgements alone.
const ACK_EVERY: Duration = Duration::from_millis(50);

/// One netcode.io client on its own socket.
pub(crate) struct Session {
    socket: UdpSocket,
    netcode: netcode::Client,
    buf: Vec<u8>,
    next_seq: u16,
    /// The transport disconnect reason the server sent, if any.
    pub(crate) server_reason: Option<DisconnectReason>,
    /// Whether its packets acknowledge the server's (see
    /// [`acknowledging`](Self::acknowledging)).
    acknowledges: bool,
    /// The newest transport packet received and the 64 before it (bit
    /// `i`: `latest - 1 - i`).
    received: Option<(u16, u64)>,
    last_ack_sent: Option<Instant>,
}

impl Session {
    /// Starts a handshake from `socket` (non-blocking) with `token`.
    pub(crate) fn start(socket: UdpSocket, token: &ConnectToken) -> Result<Self, String> {
        let mut netcode = netcode::Client::new(netcode::ClientConfig::new(PROTOCOL_ID));
        netcode
            .connect(token, Instant::now(), unix_secs())
            .map_err(|e| format!("cannot start a handshake: {e:?}"))?;
        Ok(Self {
            socket,
            netcode,
            buf: vec![0; MAX_PACKET_BYTES],
            next_seq: 0,
            server_reason: None,
            acknowledges: false,
            received: None,
            last_ack_sent: None,
        })
    }

    /// Acknowledges the server's packets from now on, as a client does:
    /// an attack that must outlast the server's `reliable_timeout` (10 s:
    /// its reliable welcome, unacknowledged, ends the session) and is not
    /// about acknowledgements. A session that never acknowledges is the
    /// slow reader's.
    pub(crate) fn acknowledging(mut self) -> Self {
        self.acknowledges = true;
        self
    }

    /// Binds `bind`, starts a handshake and waits up to `limit` for it.
    pub(crate) fn connect(
        bind: SocketAddr,
        token: &ConnectToken,
        limit: Duration,
        summary: &mut Summary,
    ) -> Result<Self, String> {
        let socket = UdpSocket::bind(bind).map_err(|e| format!("cannot bind {bind}: {e}"))?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut session = Self::start(socket, token)?;
        let deadline = Instant::now() + limit;
        while session.state() != ClientState::Connected {
            if session.state().is_error() {
                return Err(format!("the handshake failed: {:?}", session.state()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no connection within {limit:?}"));
            }
            session.pump(Instant::now(), summary);
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(session)
    }

    pub(crate) fn state(&self) -> ClientState {
        self.netcode.state()
    }

    /// Why a session that was connected is over: the transport's reason
    /// when the server sent one, else the secure layer's state (its
    /// disconnect packets may arrive alone, or first); `None` while it
    /// is connected.
    pub(crate) fn end_reason(&self) -> Option<String> {
        match (self.server_reason, self.state()) {
            (Some(reason), _) => Some(format!("{reason:?}")),
            (None, ClientState::Connected) => None,
            (None, state) => Some(format!("{state:?}")),
        }
    }

    /// Reads, runs the handshake's timers and sends what it has to.
    pub(crate) fn pump(&mut self, now: Instant, summary: &mut Summary) {
        self.read(now, summary);
        self.netcode.handle_timeout(now);
        // Bounded: the handshake has at most a couple of packets due.
        for _ in 0..16 {
            let Some(t) = self.netcode.poll_transmit(now, &mut self.buf) else {
                break;
            };
            match self.socket.send_to(&self.buf[..t.len], t.destination) {
                Ok(_) => summary.sent(t.len),
                Err(_) => summary.send_refused += 1,
            }
        }
    }

    /// Reads every waiting datagram; notes a transport disconnect.
    pub(crate) fn read(&mut self, now: Instant, summary: &mut Summary) {
        for _ in 0..10_000 {
            let (len, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            summary.received(len);
            let Some(ClientEvent::Payload(payload)) =
                self.netcode
                    .handle_datagram(now, from, &mut self.buf[..len])
            else {
                continue;
            };
            let Ok((header, body)) = wire::decode_header(payload) else {
                continue;
            };
            match header.kind {
                PacketKind::Disconnect => {
                    if let Some(&code) = body.first() {
                        self.server_reason
                            .get_or_insert(DisconnectReason::from_code(code));
                    }
                }
                PacketKind::Data => self.note_received(header.sequence),
            }
        }
    }

    /// Counts transport packet `sequence` as received, for the acks.
    fn note_received(&mut self, sequence: u16) {
        let Some((latest, bits)) = self.received else {
            self.received = Some((sequence, 0));
            return;
        };
        // Half the sequence space either way: newer, or older.
        let ahead = sequence.wrapping_sub(latest) as i16;
        self.received = Some(if ahead > 0 {
            let shift = u32::from(ahead.unsigned_abs());
            let bits =
                bits.checked_shl(shift).unwrap_or(0) | 1u64.checked_shl(shift - 1).unwrap_or(0);
            (sequence, bits)
        } else if ahead < 0 {
            let back = u32::from(ahead.unsigned_abs()) - 1;
            (latest, bits | 1u64.checked_shl(back).unwrap_or(0))
        } else {
            (latest, bits)
        });
    }

    /// The acknowledgement its next packet carries, if it acknowledges.
    fn ack(&self) -> Option<AckInfo> {
        let (latest, bits) = self.received.filter(|_| self.acknowledges)?;
        Some(AckInfo {
            latest,
            bits,
            delay: 0,
        })
    }

    /// Reads, runs the secure layer's timers (its keep-alives) and, when
    /// it acknowledges, sends an acknowledgement now and then: what keeps
    /// an attack's session alive while it sends nothing of its own.
    pub(crate) fn keep_up(&mut self, now: Instant, summary: &mut Summary) -> Result<(), String> {
        self.pump(now, summary);
        let due = self
            .last_ack_sent
            .is_none_or(|at| now.saturating_duration_since(at) >= ACK_EVERY);
        if self.ack().is_some() && due {
            self.send_messages(&[], summary)?;
        }
        Ok(())
    }

    /// Says goodbye (the secure layer's disconnect packets): the server
    /// frees its slot at once instead of at its timeout.
    pub(crate) fn close(&mut self, summary: &mut Summary) {
        self.netcode.disconnect();
        self.pump(Instant::now(), summary);
    }

    /// Sends `datagram` as it is from this session's socket: what the
    /// server then reads comes from a connected client's address.
    pub(crate) fn send_raw(&self, datagram: &[u8]) -> bool {
        self.netcode
            .server_address()
            .is_some_and(|to| self.socket.send_to(datagram, to).is_ok())
    }

    /// Writes a data packet with `messages` (and an acknowledgement, if it
    /// [acknowledges](Self::acknowledging)) and sends it sealed; true
    /// when the socket took it. A session that is not connected (any
    /// more) sends nothing (see [`end_reason`](Self::end_reason)).
    pub(crate) fn send_messages(
        &mut self,
        messages: &[(MessageHeader, &[u8])],
        summary: &mut Summary,
    ) -> Result<bool, String> {
        if self.state() != ClientState::Connected {
            return Ok(false);
        }
        let mut plain = [0u8; 1_200];
        let header = PacketHeader {
            kind: PacketKind::Data,
            ack_eliciting: !messages.is_empty(),
            sequence: self.next_seq,
            ack: self.ack(),
        };
        if header.ack.is_some() {
            self.last_ack_sent = Some(Instant::now());
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        let mut writer = wire::PacketWriter::new(&mut plain, &header)
            .ok_or_else(|| "no room for a packet header".to_owned())?;
        for (h, payload) in messages {
            if !writer.write_message(h, payload) {
                return Err("a crafted message does not fit a packet".into());
            }
        }
        let len = writer.len();
        let t = self
            .netcode
            .send_payload(Instant::now(), &plain[..len], &mut self.buf)
            .map_err(|e| format!("cannot seal a packet: {e:?}"))?;
        match self.socket.send_to(&self.buf[..t.len], t.destination) {
            Ok(_) => {
                summary.sent(t.len);
                Ok(true)
            }
            Err(_) => {
                summary.send_refused += 1;
                Ok(false)
            }
        }
    }

    /// Seals `payload` and returns the datagram without sending it.
    pub(crate) fn seal_copy(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let t = self
            .netcode
            .send_payload(Instant::now(), payload, &mut self.buf)
            .ok()?;
        Some(self.buf[..t.len].to_vec())
    }
}

impl Session {
    /// The first connection request this session would send (not sent).
    pub(crate) fn first_request(&mut self, buf: &mut [u8]) -> Option<Vec<u8>> {
        let t = self.netcode.poll_transmit(Instant::now(), buf)?;
        Some(buf[..t.len].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Its acknowledgement names the newest packet received and, bit `i`,
    /// `newest - 1 - i`: out of order, across the wrap, and only once it
    /// acknowledges.
    #[test]
    fn the_acknowledgement_names_what_was_received() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut session = Session::start(socket, &token(server, 1, 10).unwrap()).unwrap();
        session.note_received(65_534);
        assert_eq!(session.ack(), None, "not acknowledging");
        let mut session = session.acknowledging();
        for sequence in [1, 0, 65_535] {
            session.note_received(sequence);
        }
        let ack = session.ack().unwrap();
        assert_eq!((ack.latest, ack.bits), (1, 0b111));
        session.note_received(70);
        let ack = session.ack().unwrap();
        // 1 is 69 behind 70: past the 64 the bits hold.
        assert_eq!((ack.latest, ack.bits), (70, 0));
        session.note_received(68);
        assert_eq!(session.ack().unwrap().bits, 0b10);
    }

    #[test]
    fn a_session_that_is_not_connected_sends_nothing_and_says_why() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut session = Session::start(socket, &token(server, 1, 10).unwrap()).unwrap();
        let mut summary = Summary::default();
        // As after the server's disconnect packets: not connected.
        assert_ne!(session.state(), ClientState::Connected);
        assert_eq!(session.send_messages(&[], &mut summary), Ok(false));
        assert!(session.end_reason().is_some());
        session.server_reason = Some(DisconnectReason::SendQueueFull);
        assert_eq!(session.end_reason().as_deref(), Some("SendQueueFull"));
    }
}
