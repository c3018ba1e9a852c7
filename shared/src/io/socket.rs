//! Socket settings for game traffic: buffers large enough for a tick's
//! burst, no IP fragmentation, and the kernel's count of datagrams it
//! dropped because the receive buffer was full.

use std::net::UdpSocket;

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
///   (`IP_PMTUDISC_PROBE`). Game datagrams are far below any real MTU; with
///   the bit set the kernel also skips its global IP-id table, a measurable
///   share of the send path at tens of thousands of datagrams a second.
///
/// Returns the buffer sizes obtained, for the caller to log or check.
pub fn tune_udp_socket(socket: &UdpSocket, buffer_bytes: usize) -> SocketBuffers {
    let sock = SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(buffer_bytes);
    let _ = sock.set_send_buffer_size(buffer_bytes);
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

/// Datagrams the kernel dropped on arrival at `socket` because its receive
/// buffer was full, since the socket was opened (`None` when unreadable).
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
    use std::os::fd::RawFd;

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
        #[expect(
            unsafe_code,
            reason = "setsockopt on a descriptor the caller owns, with an int option"
        )]
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
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
