//! A client endpoint on a real, non-blocking UDP socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use super::batch::is_about_one_datagram;
use crate::endpoint::ClientEndpoint;
use crate::netcode::MAX_PACKET_BYTES;

/// One client endpoint and its own socket. Call [`pump`](Self::pump)
/// whenever the socket is readable or [`ClientEndpoint::poll_timeout`] has
/// passed, then drain `endpoint.poll_event()`; call `pump` again after
/// sending so the datagrams leave.
pub struct ClientSocket {
    socket: UdpSocket,
    /// The stack.
    pub endpoint: ClientEndpoint,
    buf: Vec<u8>,
}

impl ClientSocket {
    /// Binds a non-blocking socket on `bind` (port 0 for any).
    pub fn bind(bind: SocketAddr, endpoint: ClientEndpoint) -> io::Result<Self> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            endpoint,
            // One byte more than a packet: a longer datagram is counted
            // as `Oversized`.
            buf: vec![0; MAX_PACKET_BYTES + 1],
        })
    }

    /// The socket, e.g. to register it with a poller.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Reads every waiting datagram, runs due timers, and sends everything
    /// the endpoint has to send. Returns the datagrams read.
    pub fn pump(&mut self, now: Instant) -> io::Result<usize> {
        let mut read = 0;
        loop {
            match self.socket.recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    read += 1;
                    self.endpoint
                        .handle_datagram(now, from, &mut self.buf[..len]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP port unreachable and the like (the server is not
                // there yet: the handshake timeout reports it) or, on
                // Windows, an oversized datagram: read on.
                Err(e) if is_about_one_datagram(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        self.flush(now);
        Ok(read)
    }

    /// Sends everything the endpoint has to send.
    pub fn flush(&mut self, now: Instant) {
        while let Some(transmit) = self.endpoint.poll_transmit(now, &mut self.buf) {
            // UDP may drop; the transport resends what matters.
            let _ = self
                .socket
                .send_to(&self.buf[..transmit.len], transmit.destination);
        }
    }
}
