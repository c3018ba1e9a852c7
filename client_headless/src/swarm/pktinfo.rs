//! Shared bot sockets for loopback servers (Linux): one UDP socket on
//! `0.0.0.0:port` carries many bots, each with its own source address
//! 127.x.y.z, chosen per datagram with `IP_PKTINFO` on send and read back
//! from `IP_PKTINFO` (the datagram's destination address) on receive. The
//! server still sees one distinct address per bot, while the bot process
//! reads and writes up to [`BATCH`] datagrams per system call
//! (`recvmmsg(2)` / `sendmmsg(2)`) instead of one `recvfrom` (plus one that
//! finds the socket empty) and one `sendto` per datagram.
//!
//! The batches mirror `shared::io::batch` (plain `recvmmsg` / `sendmmsg`)
//! plus the per-datagram local address; the two could become one type with
//! an optional local address.
//!
//! Every buffer is allocated once, when the batch is created.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use shared::io::socket::linux::set_int_option;
use shared::io::socket::{DEFAULT_SOCKET_BUFFER_BYTES, tune_udp_socket};
use shared::netcode::MAX_PACKET_BYTES;

/// Datagrams per system call.
pub(super) const BATCH: usize = 64;
/// Each slot holds one byte more than the largest valid packet, so an
/// oversized datagram is seen whole-or-truncated rather than cut to size.
const SLOT_BYTES: usize = MAX_PACKET_BYTES + 1;
/// The control message carrying one `in_pktinfo`: the header followed by
/// the data at `CMSG_DATA` (the header's size is already aligned to
/// `size_t`, so `repr(C)` puts `info` exactly there), and its size is
/// `CMSG_SPACE(sizeof(in_pktinfo))`.
#[repr(C)]
#[derive(Clone, Copy)]
struct PktinfoCmsg {
    hdr: libc::cmsghdr,
    info: libc::in_pktinfo,
}

const _: () = assert!(
    std::mem::size_of::<libc::cmsghdr>().is_multiple_of(std::mem::size_of::<usize>()),
    "in_pktinfo must follow the header at CMSG_DATA"
);

/// Opens a non-blocking UDP socket on `0.0.0.0` (an ephemeral port) that
/// reports each datagram's destination address, with large buffers
/// (thousands of bots share a socket: the default ~200 KiB would fill within
/// a couple of milliseconds of a late worker) and the don't-fragment bit.
pub(super) fn open() -> io::Result<mio::net::UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    socket.set_nonblocking(true)?;
    set_int_option(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    tune_udp_socket(&socket, DEFAULT_SOCKET_BUFFER_BYTES);
    Ok(mio::net::UdpSocket::from_std(socket))
}

fn zeroed_cmsg() -> PktinfoCmsg {
    #[expect(
        unsafe_code,
        reason = "plain C structs of integers: all zeroes is a valid value"
    )]
    unsafe {
        std::mem::zeroed()
    }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    #[expect(unsafe_code, reason = "plain C struct of integers and null pointers")]
    unsafe {
        std::mem::zeroed()
    }
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    #[expect(
        unsafe_code,
        reason = "plain C struct of integers: all zeroes is a valid value"
    )]
    let mut out: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    out.sin_family = libc::AF_INET as libc::sa_family_t;
    out.sin_port = addr.port().to_be();
    out.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
    out
}

fn from_sockaddr_in(addr: &libc::sockaddr_in) -> Option<SocketAddrV4> {
    (i32::from(addr.sin_family) == libc::AF_INET).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(addr.sin_addr.s_addr.to_ne_bytes()),
            u16::from_be(addr.sin_port),
        )
    })
}

/// Up to [`BATCH`] datagrams read with one `recvmmsg`.
pub(super) struct RecvBatch {
    buffers: Vec<u8>,
    lengths: [usize; BATCH],
    /// Sender and local (destination) address of each datagram, `None`
    /// for one to skip (truncated, or its addresses unreadable).
    addresses: [Option<(SocketAddrV4, Ipv4Addr)>; BATCH],
    names: Vec<libc::sockaddr_in>,
    controls: Vec<PktinfoCmsg>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    count: usize,
}

impl RecvBatch {
    pub(super) fn new() -> Self {
        Self {
            buffers: vec![0; BATCH * SLOT_BYTES],
            lengths: [0; BATCH],
            addresses: [None; BATCH],
            names: vec![sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            controls: vec![zeroed_cmsg(); BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                BATCH
            ],
            headers: (0..BATCH).map(|_| zeroed_mmsghdr()).collect(),
            count: 0,
        }
    }

    /// Reads what is waiting (without blocking): returns how many datagrams
    /// arrived; fewer than [`BATCH`] means the socket was drained.
    pub(super) fn recv(&mut self, socket: &mio::net::UdpSocket) -> io::Result<usize> {
        self.count = 0;
        let base = self.buffers.as_mut_ptr();
        for (i, ((iov, header), (name, control))) in self
            .iovecs
            .iter_mut()
            .zip(self.headers.iter_mut())
            .zip(self.names.iter_mut().zip(self.controls.iter_mut()))
            .enumerate()
        {
            iov.iov_base = base.wrapping_add(i * SLOT_BYTES).cast();
            iov.iov_len = SLOT_BYTES;
            let msg = &mut header.msg_hdr;
            msg.msg_name = (name as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = iov;
            msg.msg_iovlen = 1;
            msg.msg_control = (control as *mut PktinfoCmsg).cast();
            msg.msg_controllen = std::mem::size_of::<PktinfoCmsg>() as _;
            msg.msg_flags = 0;
            header.msg_len = 0;
        }
        #[expect(
            unsafe_code,
            reason = "recvmmsg writes at most BATCH headers, each into the buffers its header points at, all owned by self and alive for the call"
        )]
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let Ok(n) = usize::try_from(n) else {
            return Err(io::Error::last_os_error());
        };
        let n = n.min(BATCH);
        for i in 0..n {
            let header = &self.headers[i];
            let msg = &header.msg_hdr;
            let len = header.msg_len as usize;
            let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
            let control = &self.controls[i];
            let has_pktinfo = msg.msg_controllen >= std::mem::size_of::<PktinfoCmsg>() as _
                && control.hdr.cmsg_level == libc::IPPROTO_IP
                && control.hdr.cmsg_type == libc::IP_PKTINFO;
            self.lengths[i] = len.min(SLOT_BYTES);
            self.addresses[i] = match from_sockaddr_in(&self.names[i]) {
                Some(from) if has_pktinfo && !truncated && len <= MAX_PACKET_BYTES => Some((
                    from,
                    Ipv4Addr::from(control.info.ipi_addr.s_addr.to_ne_bytes()),
                )),
                _ => None,
            };
        }
        self.count = n;
        Ok(n)
    }

    /// Datagrams read by the last [`recv`](Self::recv).
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Datagram `i` of the last read: its sender, the local address it
    /// was sent to, and its bytes; `None` for one to skip.
    pub(super) fn get_mut(&mut self, i: usize) -> Option<(SocketAddrV4, Ipv4Addr, &mut [u8])> {
        if i >= self.count {
            return None;
        }
        let (from, to) = self.addresses[i]?;
        let start = i * SLOT_BYTES;
        let data = self.buffers.get_mut(start..start + self.lengths[i])?;
        Some((from, to, data))
    }
}

/// Datagrams queued for one `sendmmsg`, each with its own source address.
pub(super) struct SendBatch {
    buffers: Vec<u8>,
    lengths: [usize; BATCH],
    /// Whether the sender counted each datagram's bytes sent.
    counted: [bool; BATCH],
    names: Vec<libc::sockaddr_in>,
    controls: Vec<PktinfoCmsg>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    count: usize,
}

/// What one [`SendBatch::flush`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Flushed {
    /// Datagrams the kernel took.
    pub(super) sent: usize,
    /// Datagrams it refused.
    pub(super) dropped: usize,
    /// Bytes of the refused ones queued as counted.
    pub(super) dropped_counted_bytes: u64,
}

impl SendBatch {
    pub(super) fn new() -> Self {
        Self {
            buffers: vec![0; BATCH * SLOT_BYTES],
            lengths: [0; BATCH],
            counted: [false; BATCH],
            names: vec![sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            controls: vec![zeroed_cmsg(); BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                BATCH
            ],
            headers: (0..BATCH).map(|_| zeroed_mmsghdr()).collect(),
            count: 0,
        }
    }

    /// Whether another datagram fits before a flush.
    pub(super) fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Queues `data` from `source` to `to`; `false` (nothing queued) when
    /// the batch is full or `data` is larger than a packet. `counted`: the
    /// sender counts its bytes sent (see [`Flushed::dropped_counted_bytes`]).
    pub(super) fn push(
        &mut self,
        source: Ipv4Addr,
        to: SocketAddrV4,
        data: &[u8],
        counted: bool,
    ) -> bool {
        if self.count == BATCH || data.len() > SLOT_BYTES {
            return false;
        }
        let i = self.count;
        let start = i * SLOT_BYTES;
        self.buffers[start..start + data.len()].copy_from_slice(data);
        self.lengths[i] = data.len();
        self.counted[i] = counted;
        self.names[i] = sockaddr_in(to);
        let control = &mut self.controls[i];
        *control = zeroed_cmsg();
        control.hdr.cmsg_len =
            std::mem::size_of::<libc::cmsghdr>() + std::mem::size_of::<libc::in_pktinfo>();
        control.hdr.cmsg_level = libc::IPPROTO_IP;
        control.hdr.cmsg_type = libc::IP_PKTINFO;
        control.info.ipi_spec_dst.s_addr = u32::from_ne_bytes(source.octets());
        self.count += 1;
        true
    }

    /// Sends everything queued. A datagram the kernel refuses (full socket
    /// buffer, unreachable) is dropped, as UDP may.
    pub(super) fn flush(&mut self, socket: &mio::net::UdpSocket) -> Flushed {
        let count = std::mem::take(&mut self.count);
        let base = self.buffers.as_mut_ptr();
        for (i, ((iov, header), (name, control))) in self
            .iovecs
            .iter_mut()
            .zip(self.headers.iter_mut())
            .zip(self.names.iter_mut().zip(self.controls.iter_mut()))
            .enumerate()
            .take(count)
        {
            iov.iov_base = base.wrapping_add(i * SLOT_BYTES).cast();
            iov.iov_len = self.lengths[i];
            let msg = &mut header.msg_hdr;
            msg.msg_name = (name as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = iov;
            msg.msg_iovlen = 1;
            msg.msg_control = (control as *mut PktinfoCmsg).cast();
            msg.msg_controllen = std::mem::size_of::<PktinfoCmsg>() as _;
            msg.msg_flags = 0;
            header.msg_len = 0;
        }
        let mut flushed = Flushed {
            sent: 0,
            dropped: 0,
            dropped_counted_bytes: 0,
        };
        let mut next = 0;
        while next < count {
            let rest = &mut self.headers[next..count];
            #[expect(
                unsafe_code,
                reason = "sendmmsg reads at most rest.len() headers, each pointing into buffers owned by self and alive for the call"
            )]
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            match usize::try_from(n) {
                Ok(n) if n > 0 => {
                    flushed.sent += n;
                    next += n;
                }
                // The first remaining datagram failed: drop it, go on.
                _ => {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    flushed.dropped += 1;
                    if self.counted[next] {
                        flushed.dropped_counted_bytes += self.lengths[next] as u64;
                    }
                    next += 1;
                }
            }
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_leave_from_the_chosen_address_and_answers_are_demultiplexed() {
        let bots = open().unwrap();
        let port = bots.local_addr().unwrap().port();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(server_addr) = server.local_addr().unwrap() else {
            panic!("IPv4 expected");
        };
        let sources = [Ipv4Addr::new(127, 1, 0, 7), Ipv4Addr::new(127, 1, 3, 200)];
        let mut out = SendBatch::new();
        for (i, &source) in sources.iter().enumerate() {
            assert!(out.push(source, server_addr, &[i as u8; 10], true));
        }
        assert_eq!(
            out.flush(&bots),
            Flushed {
                sent: 2,
                dropped: 0,
                dropped_counted_bytes: 0
            }
        );
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        for (i, &source) in sources.iter().enumerate() {
            let (len, from) = server.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &[i as u8; 10]);
            assert_eq!(from, SocketAddr::from((source, port)));
            // Answer with something else, to the address the bot used.
            server.send_to(&[0xA0 + i as u8; 3], from).unwrap();
        }
        // An oversized datagram is skipped, not cut to size.
        server
            .send_to(
                &vec![1; MAX_PACKET_BYTES + 1],
                SocketAddr::from((sources[0], port)),
            )
            .unwrap();
        let mut batch = RecvBatch::new();
        let mut seen = Vec::new();
        let mut skipped = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.len() + skipped < 3 && std::time::Instant::now() < deadline {
            match batch.recv(&bots) {
                Ok(n) => {
                    for i in 0..n {
                        match batch.get_mut(i) {
                            Some((from, to, data)) => seen.push((from, to, data.to_vec())),
                            None => skipped += 1,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(skipped, 1);
        assert_eq!(
            seen,
            vec![
                (server_addr, sources[0], vec![0xA0; 3]),
                (server_addr, sources[1], vec![0xA1; 3]),
            ]
        );
    }

    #[test]
    fn refused_datagrams_report_the_bytes_counted_sent() {
        let bots = open().unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(to) = server.local_addr().unwrap() else {
            panic!("IPv4 expected");
        };
        // No interface has a TEST-NET-3 address, so the kernel refuses to
        // send from it.
        let foreign = Ipv4Addr::new(203, 0, 113, 9);
        let mut out = SendBatch::new();
        assert!(out.push(Ipv4Addr::LOCALHOST, to, &[1; 10], true));
        assert!(out.push(foreign, to, &[2; 20], true));
        assert!(out.push(foreign, to, &[3; 40], false));
        assert!(out.push(Ipv4Addr::LOCALHOST, to, &[4; 80], true));
        assert_eq!(
            out.flush(&bots),
            Flushed {
                sent: 2,
                dropped: 2,
                dropped_counted_bytes: 20
            }
        );
    }

    #[test]
    fn a_full_batch_refuses_more() {
        let mut out = SendBatch::new();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        for _ in 0..BATCH {
            assert!(out.push(Ipv4Addr::LOCALHOST, to, b"x", true));
        }
        assert!(out.is_full());
        assert!(!out.push(Ipv4Addr::LOCALHOST, to, b"x", true));
        assert!(!SendBatch::new().push(Ipv4Addr::LOCALHOST, to, &[0; SLOT_BYTES + 1], true));
    }
}
