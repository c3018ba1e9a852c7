//! Socket settings for game traffic: buffers large enough for a tick's
//! burst, no IP fragmentation, and the kernel's count of datagrams it
//! dropped because the receive buffer was full.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::SockRef;

/// Socket buffer size servers and bot swarms ask for by default. The
/// operating system's default (about 200 KiB on Linux) holds only a few
/// hundred small datagrams: a server that spends a few milliseconds sending
/// one tick's snapshots to thousands of clients would find their inputs of
/// that moment dropped by the kernel.
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// The buffer sizes a socket ended up with, as the operating system reports
/// them (Linux reports twice what it grants, the other half being its own
/// bookkeeping, and caps a request at `net.core.rmem_max` / `wmem_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Receive buffer, bytes (`None` when it could not be read).
    pub receive: Option<usize>,
    /// Send buffer, bytes (`None` when it could not be read).
    pub send: Option<usize>,
}

impl SocketBuffers {
    /// Whether both buffers are at least `bytes`.
    pub fn holds(&self, bytes: usize) -> bool {
        self.receive.is_some_and(|r| r >= bytes) && self.send.is_some_and(|s| s >= bytes)
    }
}

/// Prepares a UDP socket for game traffic, best effort (a setting the
/// system refuses is left as it was):
///
/// - receive and send buffers of `buffer_bytes`;
/// - on Linux (IPv4), the don't-fragment bit without path-MTU discovery
///   (`IP_PMTUDISC_PROBE`). The largest game datagram is 1,253 bytes with
///   its IPv4 and UDP headers, below the MTU of any path worth playing on
///   (never fragmented: above the local interface's MTU such datagrams fail
///   to send, counted as send errors; above a router's further on they are
///   lost, seen as the transport's loss); with
///   the bit set the kernel also skips its global IP-id table, a measurable
///   share of the send path at tens of thousands of datagrams a second.
///
/// Returns the buffer sizes obtained, for the caller to log or check.
pub fn tune_udp_socket(socket: &UdpSocket, buffer_bytes: usize) -> SocketBuffers {
    tune(socket, buffer_bytes, buffer_bytes)
}

/// [`tune_udp_socket`] for a socket that only sends (a [`GameSocket`]'s
/// twin): the smallest receive buffer, as nothing reads it (it still gets
/// the broadcasts to its port).
pub fn tune_send_only_socket(socket: &UdpSocket, buffer_bytes: usize) -> SocketBuffers {
    tune(socket, 0, buffer_bytes)
}

/// Asks for buffers of `receive` and `send` bytes (the kernel's least for
/// 0) and the don't-fragment setting of [`tune_udp_socket`].
fn tune(socket: &UdpSocket, receive: usize, send: usize) -> SocketBuffers {
    let sock = SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(receive);
    let _ = sock.set_send_buffer_size(send);
    #[cfg(target_os = "linux")]
    if socket.local_addr().is_ok_and(|a| a.is_ipv4()) {
        use std::os::fd::AsRawFd;
        let _ = linux::set_int_option(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        );
    }
    SocketBuffers {
        receive: sock.recv_buffer_size().ok(),
        send: sock.send_buffer_size().ok(),
    }
}

/// A server's game socket: the socket that receives and, from
/// [`bind_game_socket`] on Linux, a second one on its address that only
/// sends (its twin).
///
/// Why a twin: every datagram a socket sends, once the kernel frees it,
/// wakes the socket's waiters to say it may send again, and a game socket
/// always has one: its poller registration for reading. At thousands of
/// datagrams a second that wake-up, which finds nobody interested in
/// writing, was 1.8–2.7 % of a saturated server's samples. A socket nobody
/// polls has no waiters. The two share the address through
/// `SO_REUSEPORT`, and a one-instruction classic BPF program on the group
/// (`ret #0`) hands every arriving datagram to the first socket, the
/// group's first member: without it the kernel would spread the clients
/// over both by hash, and the twin is never read.
///
/// A socket bound elsewhere ([`From<UdpSocket>`]) gets no twin: a
/// `SO_REUSEPORT` group it is in is its owner's (a server sharded over
/// processes), not to be steered.
#[derive(Debug)]
pub struct GameSocket {
    socket: UdpSocket,
    twin: Option<UdpSocket>,
}

impl GameSocket {
    /// The address both sockets are bound on.
    ///
    /// # Errors
    /// The operating system's.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket that receives, and the twin that sends, if any.
    pub fn into_parts(self) -> (UdpSocket, Option<UdpSocket>) {
        (self.socket, self.twin)
    }
}

impl From<UdpSocket> for GameSocket {
    fn from(socket: UdpSocket) -> Self {
        Self { socket, twin: None }
    }
}

/// Binds a server's game socket at `addr`, with its twin where the
/// platform allows (see [`GameSocket`]).
///
/// Fails as a plain bind would: with `AddrInUse` when anything holds the
/// address already. On Linux the socket is then bound again with
/// `SO_REUSEPORT` (the twin needs it to share the address): first a plain
/// bind, which also picks the port for port 0, then, once that socket is
/// closed, the same address with the option, and the twin. Elsewhere, or
/// if the second bind fails (another process took the port in between),
/// it is a plain bind without a twin; so it is, with the option, when the
/// kernel refuses the twin.
///
/// # Errors
/// The plain bind's.
pub fn bind_game_socket(addr: SocketAddr) -> io::Result<GameSocket> {
    let probe = UdpSocket::bind(addr)?;
    #[cfg(target_os = "linux")]
    {
        let local = probe.local_addr()?;
        drop(probe);
        match linux::bind_shared(local) {
            Ok(socket) => {
                let twin = linux::send_twin(&socket)
                    .inspect_err(|error| tracing::debug!(%error, "no send-only game socket"))
                    .ok();
                Ok(GameSocket { socket, twin })
            }
            Err(error) => {
                tracing::debug!(%error, %local, "game socket bound without SO_REUSEPORT");
                UdpSocket::bind(addr).map(GameSocket::from)
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    Ok(GameSocket::from(probe))
}

/// Datagrams the kernel dropped on arrival at `socket`, since the socket
/// was opened (`None` when unreadable): above all because its receive
/// buffer was full (the kernel's `SK_MEMINFO_DROPS` counts a datagram with
/// a bad checksum too).
/// The kernel's counter is 32 bits wide and wraps.
#[cfg(target_os = "linux")]
pub fn receive_drops(socket: &impl std::os::fd::AsFd) -> Option<u32> {
    use std::os::fd::AsRawFd;
    linux::receive_drops(socket.as_fd().as_raw_fd())
}

/// Datagrams dropped by a full receive buffer: not available here.
#[cfg(not(target_os = "linux"))]
pub fn receive_drops<S>(_socket: &S) -> Option<u32> {
    None
}

/// Raw socket options (Linux).
#[cfg(target_os = "linux")]
pub mod linux {
    use std::io;
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::{AsRawFd, RawFd};

    use socket2::{Domain, Protocol, Socket, Type};

    /// Sets an `int` socket option on `fd`.
    ///
    /// # Errors
    /// The operating system's, when it refuses the option.
    pub fn set_int_option(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        set_option(fd, level, name, &value)
    }

    /// Sets a socket option of `fd` whose value is a `T` (the type the
    /// kernel expects for `level` and `name`).
    fn set_option<T>(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: &T,
    ) -> io::Result<()> {
        #[expect(
            unsafe_code,
            reason = "setsockopt reading a live T through a pointer, its size passed along; \
                      the kernel copies it"
        )]
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                std::ptr::from_ref(value).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        checked(rc)
    }

    /// `Ok` for a system call's 0, else the error it left in `errno`.
    fn checked(rc: libc::c_int) -> io::Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// A UDP socket bound to `addr` with `SO_REUSEPORT`.
    pub(super) fn bind_shared(addr: SocketAddr) -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        set_int_option(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    }

    /// The twin of `socket`, the one member of the `SO_REUSEPORT` group
    /// [`bind_shared`] just made (see [`super::GameSocket`]).
    pub(super) fn send_twin(socket: &UdpSocket) -> io::Result<UdpSocket> {
        // Steer before the twin joins: from its bind on, the group has two
        // members.
        steer_to_first(socket.as_raw_fd())?;
        let twin = bind_shared(socket.local_addr()?)?;
        twin.set_nonblocking(true)?;
        Ok(twin)
    }

    /// Attaches `ret #0` as the reuseport program of `fd`'s group: every
    /// datagram for the group goes to its member 0, the first bound.
    fn steer_to_first(fd: RawFd) -> io::Result<()> {
        const BPF_RET_K: u16 = 0x06;
        let mut program = [libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        // The program outlives the call, which copies it.
        set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
    }

    /// `SK_MEMINFO_DROPS` of `SO_MEMINFO` (Linux 4.7 and later).
    pub(super) fn receive_drops(fd: RawFd) -> Option<u32> {
        const SO_MEMINFO: libc::c_int = 55;
        const SK_MEMINFO_VARS: usize = 9;
        let mut info = [0u32; SK_MEMINFO_VARS];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        #[expect(
            unsafe_code,
            reason = "getsockopt into a buffer whose size is passed along"
        )]
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let drops = libc::SK_MEMINFO_DROPS as usize;
        (rc == 0 && len as usize > drops * std::mem::size_of::<u32>()).then(|| info[drops])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tuned_socket_gets_the_buffers_the_system_allows() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = SocketBuffers {
            receive: SockRef::from(&socket).recv_buffer_size().ok(),
            send: SockRef::from(&socket).send_buffer_size().ok(),
        };
        let wanted = 1 << 20;
        let after = tune_udp_socket(&socket, wanted);
        assert!(after.receive.unwrap() >= before.receive.unwrap());
        assert!(after.send.unwrap() >= before.send.unwrap());
        // Linux grants up to net.core.rmem_max (reporting it doubled).
        #[cfg(target_os = "linux")]
        {
            let max = |name: &str| -> usize {
                std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            assert_eq!(after.receive, Some(2 * wanted.min(max("rmem_max"))));
            assert_eq!(after.send, Some(2 * wanted.min(max("wmem_max"))));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn every_datagram_reaches_the_game_socket_and_the_twin_sends_from_its_address() {
        every_datagram_reaches_the_game_socket("127.0.0.1:0");
        every_datagram_reaches_the_game_socket("[::1]:0");
    }

    #[cfg(target_os = "linux")]
    fn every_datagram_reaches_the_game_socket(local: &str) {
        use std::time::Duration;
        let (game, twin) = bind_game_socket(local.parse().unwrap())
            .unwrap()
            .into_parts();
        let twin = twin.expect("a twin on Linux");
        let address = game.local_addr().unwrap();
        assert_eq!(twin.local_addr().unwrap(), address);
        // Many senders: without the steering program the kernel would hash
        // about half of them to the twin.
        let clients: Vec<UdpSocket> = (0..16).map(|_| UdpSocket::bind(local).unwrap()).collect();
        for (i, client) in clients.iter().enumerate() {
            for j in 0..8u8 {
                client.send_to(&[i as u8, j], address).unwrap();
            }
        }
        game.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        for _ in 0..16 * 8 {
            game.recv_from(&mut buf)
                .expect("every datagram at the game socket");
        }
        let mut spare = [0u8; 16];
        let stray = twin.recv_from(&mut spare);
        assert_eq!(
            stray.map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "the twin received a datagram"
        );
        // Replies come from the game address.
        twin.send_to(b"reply", clients[3].local_addr().unwrap())
            .unwrap();
        clients[3]
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (len, from) = clients[3].recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..len], from), (&b"reply"[..], address));
    }

    #[test]
    fn a_game_address_in_use_is_refused_as_by_a_plain_bind() {
        let game = bind_game_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = game.local_addr().unwrap();
        let again = bind_game_socket(address).map_err(|e| e.kind());
        assert_eq!(again.err(), Some(io::ErrorKind::AddrInUse));
        let plain = UdpSocket::bind(address).map_err(|e| e.kind());
        assert_eq!(plain.err(), Some(io::ErrorKind::AddrInUse));
    }

    #[test]
    fn a_socket_bound_elsewhere_gets_no_twin() {
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(GameSocket::from(plain).into_parts().1.is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_counts_what_a_full_receive_buffer_dropped() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        assert_eq!(receive_drops(&receiver), Some(0));
        // Nobody reads: the default buffer holds a few hundred datagrams.
        for _ in 0..5_000 {
            sender.send_to(&[7u8; 100], to).unwrap();
        }
        let drops = receive_drops(&receiver).unwrap();
        assert!(drops > 1_000, "only {drops} drops counted");
        // Receiving what was kept does not change the count.
        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 200];
        let mut kept = 0;
        while receiver.recv_from(&mut buf).is_ok() {
            kept += 1;
        }
        // (The loopback device may drop a few more before the socket.)
        assert!(
            kept > 0 && kept + drops <= 5_000,
            "kept {kept}, dropped {drops}"
        );
        assert_eq!(receive_drops(&receiver), Some(drops));
    }
}
