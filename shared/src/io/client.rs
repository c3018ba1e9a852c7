//! A client endpoint on a real, non-blocking UDP socket.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Instant;

use super::batch::is_about_one_datagram;
use crate::endpoint::ClientEndpoint;
use crate::netcode::MAX_PACKET_BYTES;

/// Most receives one [`ClientSocket::pump`] makes. A flood of datagrams
/// (junk from anyone who can reach the port, or a server sending faster
/// than the game handles) then slows the caller's loop, never stops it:
/// timers still run, and the messages delivered wait in the endpoint for
/// at most this many datagrams' worth before the caller drains them.
pub const MAX_READS_PER_PUMP: usize = 256;

/// One client endpoint and its own socket. Call [`pump`](Self::pump)
/// whenever the socket is readable or [`ClientEndpoint::poll_timeout`] has
/// passed, then drain `endpoint.poll_event()`; call `pump` again after
/// sending so the datagrams leave, and at once when it read
/// [`MAX_READS_PER_PUMP`] (more may be waiting).
pub struct ClientSocket {
    socket: UdpSocket,
    /// The address `socket` is bound on, port aside: its family, and
    /// whether it is any address of it (a socket of the other family may
    /// then be opened too).
    bound: SocketAddr,
    /// A socket of the other family, bound to any address, opened for the
    /// first datagram to such an address when `socket` is bound to any
    /// address: a token may name a server's IPv4 and IPv6 addresses, and
    /// the endpoint tries them in order.
    other: Option<UdpSocket>,
    /// The stack.
    pub endpoint: ClientEndpoint,
    buf: Vec<u8>,
    /// The last datagram the socket refused, and why.
    send_error: Option<(SocketAddr, io::Error)>,
}

impl ClientSocket {
    /// Binds a non-blocking socket on `bind` (port 0 for any). Bound to
    /// any address (`0.0.0.0` or `[::]`), it reaches servers of either
    /// family: a second socket is opened for the first datagram to an
    /// address of the other one.
    pub fn bind(bind: SocketAddr, endpoint: ClientEndpoint) -> io::Result<Self> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            bound: bind,
            other: None,
            endpoint,
            // One byte more than a packet: a longer datagram is counted
            // as `Oversized`.
            buf: vec![0; MAX_PACKET_BYTES + 1],
            send_error: None,
        })
    }

    /// The socket bound on the address given, e.g. to register it with a
    /// poller (a socket of the other family, when one is open, is read by
    /// [`pump`](Self::pump) too).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Reads the waiting datagrams, up to [`MAX_READS_PER_PUMP`] in all,
    /// runs due timers, and sends everything the endpoint has to send.
    /// Returns the datagrams read. With a socket of the other family open,
    /// the first one reads at most half the budget before it: a flood to
    /// either port leaves the other read.
    pub fn pump(&mut self, now: Instant) -> io::Result<usize> {
        let mut budget = MAX_READS_PER_PUMP;
        let mut read = 0;
        if let Some(other) = &self.other {
            let mut half = MAX_READS_PER_PUMP / 2;
            read += read_into(
                &self.socket,
                &mut self.buf,
                &mut self.endpoint,
                now,
                &mut half,
            )?;
            budget -= MAX_READS_PER_PUMP / 2 - half;
            read += read_into(other, &mut self.buf, &mut self.endpoint, now, &mut budget)?;
        }
        read += read_into(
            &self.socket,
            &mut self.buf,
            &mut self.endpoint,
            now,
            &mut budget,
        )?;
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        self.flush(now);
        Ok(read)
    }

    /// Sends everything the endpoint has to send. A datagram the socket
    /// refuses is dropped (UDP may drop; the transport resends what
    /// matters) and kept as [`last_send_error`](Self::last_send_error).
    pub fn flush(&mut self, now: Instant) {
        while let Some(transmit) = self.endpoint.poll_transmit(now, &mut self.buf) {
            let to = unmapped(transmit.destination);
            let sent = socket_for(&self.socket, self.bound, &mut self.other, to)
                .and_then(|socket| socket.send_to(&self.buf[..transmit.len], to));
            if let Err(error) = sent {
                self.send_error = Some((transmit.destination, error));
            }
        }
    }

    /// The destination and error of the last datagram the socket refused,
    /// if any: what to tell a player whose connection timed out because
    /// nothing could be sent (a server address of a family this socket
    /// cannot reach, no route).
    pub fn last_send_error(&self) -> Option<(SocketAddr, &io::Error)> {
        self.send_error.as_ref().map(|(to, error)| (*to, error))
    }
}

/// `addr` as a socket sends to it: an IPv4-mapped IPv6 address (a token
/// may name a server so) as the IPv4 address it is, which an IPv4 socket
/// reaches, where an IPv6 one does only if it is dual-stack (not on Windows
/// by default, nor with Linux's `bindv6only`). The answers are the same
/// server's: the secure layer takes both forms as one.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(addr, |ip| SocketAddr::from((ip, v6.port()))),
        SocketAddr::V4(_) => addr,
    }
}

/// The socket that sends to `to`: `socket`, bound on `bound`, unless `to`
/// is of the other family and `bound` is any address; then `other`, that
/// family's, bound to any address now if it is not yet.
fn socket_for<'a>(
    socket: &'a UdpSocket,
    bound: SocketAddr,
    other: &'a mut Option<UdpSocket>,
    to: SocketAddr,
) -> io::Result<&'a UdpSocket> {
    if bound.is_ipv6() == to.is_ipv6() || !bound.ip().is_unspecified() {
        return Ok(socket);
    }
    let socket = match other.take() {
        Some(socket) => socket,
        None => {
            let any = if to.is_ipv6() {
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
            } else {
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
            };
            let socket = UdpSocket::bind(any)?;
            socket.set_nonblocking(true)?;
            socket
        }
    };
    Ok(other.insert(socket))
}

/// Reads `socket`'s waiting datagrams into `endpoint`, one receive of the
/// `budget` each but the one that finds none; returns the datagrams read.
fn read_into(
    socket: &UdpSocket,
    buf: &mut [u8],
    endpoint: &mut ClientEndpoint,
    now: Instant,
    budget: &mut usize,
) -> io::Result<usize> {
    let mut read = 0;
    // Every receive counts, those that fail for one datagram too (a flood
    // of oversized ones on Windows, of ICMP errors anywhere).
    while *budget > 0 {
        match socket.recv_from(buf) {
            Ok((len, from)) => {
                read += 1;
                endpoint.handle_datagram(now, from, &mut buf[..len]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // ICMP port unreachable and the like (the server is not there
            // yet: the handshake timeout reports it) or, on Windows, an
            // oversized datagram: read on.
            Err(e) if is_about_one_datagram(&e) => {}
            Err(e) => return Err(e),
        }
        *budget -= 1;
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{system_rng, unix_secs};
    use crate::netcode::Key;
    use crate::protocol::PROTOCOL_ID;
    use crate::transport::TransportConfig;

    #[test]
    #[expect(clippy::disallowed_methods, reason = "a real socket: real time")]
    fn a_server_address_the_socket_cannot_reach_is_reported() {
        let server: SocketAddr = "[::1]:7777".parse().unwrap();
        let key = Key::generate(&mut system_rng());
        let token = crate::keys::mint_token(&key, vec![server], 1, 30, 5).unwrap();
        let mut endpoint = ClientEndpoint::new(PROTOCOL_ID, TransportConfig::default());
        let now = Instant::now();
        endpoint.connect(&token, now, unix_secs()).unwrap();
        let mut socket = ClientSocket::bind("127.0.0.1:0".parse().unwrap(), endpoint).unwrap();
        assert!(socket.last_send_error().is_none());
        socket.pump(now).unwrap();
        let (to, error) = socket
            .last_send_error()
            .expect("an IPv4 socket cannot send to ::1");
        assert_eq!(to, server);
        assert_ne!(error.kind(), io::ErrorKind::WouldBlock, "{error}");
    }

    /// A token may name its server by the IPv4-mapped IPv6 form of its
    /// address: an IPv4 socket could not send to it (every handshake packet
    /// refused, a connect timeout with the server up).
    #[test]
    #[expect(clippy::disallowed_methods, reason = "a real socket: real time")]
    fn a_server_named_by_an_ipv4_mapped_address_is_reached_over_ipv4() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
        let key = Key::generate(&mut system_rng());
        let token = crate::keys::mint_token(&key, vec![mapped], 1, 30, 5).unwrap();
        for bind in ["127.0.0.1:0", "0.0.0.0:0"] {
            let mut endpoint = ClientEndpoint::new(PROTOCOL_ID, TransportConfig::default());
            let now = Instant::now();
            endpoint.connect(&token, now, unix_secs()).unwrap();
            let mut socket = ClientSocket::bind(bind.parse().unwrap(), endpoint).unwrap();
            socket.pump(now).unwrap();
            assert!(
                socket.last_send_error().is_none(),
                "{bind}: {:?}",
                socket.last_send_error()
            );
            assert!(socket.other.is_none(), "{bind}: an IPv6 socket was opened");
            server
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let (len, _) = server.recv_from(&mut [0u8; 2048]).unwrap();
            assert_eq!(len, crate::netcode::CONNECTION_REQUEST_BYTES, "{bind}");
        }
    }

    /// A pump reading the socket of the other family (the server reached
    /// through it) reads a whole budget when that many wait: the empty
    /// socket bound first costs none of it, so `read ==
    /// MAX_READS_PER_PUMP` still says more may be waiting.
    #[test]
    #[expect(clippy::disallowed_methods, reason = "a real socket: real time")]
    fn a_pump_reads_its_whole_budget_from_the_other_familys_socket() {
        let endpoint = ClientEndpoint::new(PROTOCOL_ID, TransportConfig::default());
        let mut socket = ClientSocket::bind("0.0.0.0:0".parse().unwrap(), endpoint).unwrap();
        let other = UdpSocket::bind("[::1]:0").unwrap();
        other.set_nonblocking(true).unwrap();
        crate::io::socket::tune_udp_socket(&other, 4 << 20);
        let to = other.local_addr().unwrap();
        socket.other = Some(other);
        let flooder = UdpSocket::bind("[::1]:0").unwrap();
        for _ in 0..2 * MAX_READS_PER_PUMP {
            flooder.send_to(&[0x55], to).unwrap();
        }
        assert_eq!(socket.pump(Instant::now()).unwrap(), MAX_READS_PER_PUMP);
    }

    /// A flood to the first socket's port does not starve the other
    /// family's socket (the server's, after a fail-over): each pump reads
    /// it too.
    #[test]
    #[expect(clippy::disallowed_methods, reason = "a real socket: real time")]
    fn a_flood_to_the_first_socket_leaves_the_other_one_read() {
        let endpoint = ClientEndpoint::new(PROTOCOL_ID, TransportConfig::default());
        let mut socket = ClientSocket::bind("0.0.0.0:0".parse().unwrap(), endpoint).unwrap();
        crate::io::socket::tune_udp_socket(socket.socket(), 4 << 20);
        let first =
            SocketAddr::from(([127, 0, 0, 1], socket.socket().local_addr().unwrap().port()));
        let other = UdpSocket::bind("[::1]:0").unwrap();
        other.set_nonblocking(true).unwrap();
        let to_other = other.local_addr().unwrap();
        socket.other = Some(other);
        let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..2 * MAX_READS_PER_PUMP {
            flooder.send_to(&[0x55], first).unwrap();
        }
        UdpSocket::bind("[::1]:0")
            .unwrap()
            .send_to(b"server", to_other)
            .unwrap();
        assert_eq!(socket.pump(Instant::now()).unwrap(), MAX_READS_PER_PUMP);
        let unread = socket.other.as_ref().unwrap().recv_from(&mut [0u8; 16]);
        assert_eq!(
            unread.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock),
            "the other socket's datagram was left unread"
        );
    }

    /// A flood of junk datagrams cannot hold a pump: it reads its budget,
    /// runs the timers and returns; the next reads on.
    #[test]
    #[expect(clippy::disallowed_methods, reason = "a real socket: real time")]
    fn a_pump_reads_at_most_its_budget() {
        let endpoint = ClientEndpoint::new(PROTOCOL_ID, TransportConfig::default());
        let mut socket = ClientSocket::bind("127.0.0.1:0".parse().unwrap(), endpoint).unwrap();
        crate::io::socket::tune_udp_socket(socket.socket(), 4 << 20);
        let to = socket.socket().local_addr().unwrap();
        let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..2 * MAX_READS_PER_PUMP {
            flooder.send_to(&[0x55], to).unwrap();
        }
        let first = socket.pump(Instant::now()).unwrap();
        assert_eq!(first, MAX_READS_PER_PUMP);
        let second = socket.pump(Instant::now()).unwrap();
        assert!(second > 0, "the rest waits for the next pump");
    }
}
