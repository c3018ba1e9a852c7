//! Batched UDP I/O: many datagrams per system call.
//!
//! [`RecvBatch`] reads up to its capacity of datagrams with one
//! `recvmmsg(2)`; [`SendBatch`] queues outgoing datagrams and sends them with
//! `sendmmsg(2)`, [`MAX_DATAGRAMS_PER_CALL`] at a time. Both own their
//! buffers, allocated once when they are created: nothing is allocated per
//! datagram. On other systems than Linux the same API loops over
//! `recv_from` / `send_to`, one datagram per call.
//!
//! Both work on any non-blocking [`DatagramSocket`] (std's and mio's UDP
//! sockets), IPv4 or IPv6. A typical loop, after the poller said the socket
//! is readable:
//!
//! ```no_run
//! # use shared::io::batch::{RecvBatch, SendBatch};
//! # fn demo(socket: &std::net::UdpSocket) {
//! let mut inbox = RecvBatch::new(64, 1500);
//! let mut outbox = SendBatch::new(256, 1500);
//! // Read until the socket is drained (a short batch may not be: see
//! // `RecvBatch::drained`).
//! while inbox.recv(socket).is_ok() {
//!     for (from, datagram) in inbox.iter() {
//!         // Echo it back.
//!         outbox.push(datagram, from);
//!     }
//!     if inbox.drained() {
//!         break;
//!     }
//! }
//! let flushed = outbox.flush(socket);
//! // Whatever the socket would not take yet stays queued: flush again when
//! // it is writable.
//! # let _ = flushed;
//! # }
//! ```

use std::io;
use std::net::SocketAddr;

/// The most datagrams one system call reads or writes (the arrays the
/// kernel is handed live on the stack, so this bounds their size).
pub const MAX_DATAGRAMS_PER_CALL: usize = 64;

/// A UDP socket the batches can read from and write to. Implemented for
/// [`std::net::UdpSocket`] and [`mio::net::UdpSocket`]; it should be
/// non-blocking (on Linux the batches never block regardless).
pub trait DatagramSocket {
    /// `recv_from`, used where batched calls are unavailable.
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// `send_to`, used where batched calls are unavailable.
    fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize>;
    /// The descriptor `recvmmsg` / `sendmmsg` work on.
    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> std::os::fd::RawFd;
}

impl DatagramSocket for std::net::UdpSocket {
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        std::net::UdpSocket::recv_from(self, buf)
    }
    fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        std::net::UdpSocket::send_to(self, buf, target)
    }
    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

impl DatagramSocket for mio::net::UdpSocket {
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        mio::net::UdpSocket::recv_from(self, buf)
    }
    fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        mio::net::UdpSocket::send_to(self, buf, target)
    }
    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

/// Reusable buffers for reading many datagrams at once.
///
/// Holds `capacity` buffers of `slot_len` bytes; a datagram longer than
/// `slot_len` is cut to it (as `recv_from` would cut it).
pub struct RecvBatch {
    buffers: Box<[u8]>,
    slot_len: usize,
    capacity: usize,
    /// Source and length of each datagram of the last read, by slot.
    received: Vec<(SocketAddr, usize)>,
    /// The last read found the socket empty.
    drained: bool,
}

impl RecvBatch {
    /// Room for `capacity` datagrams (clamped to
    /// 1..=[`MAX_DATAGRAMS_PER_CALL`]) of up to `slot_len` (at least 1)
    /// bytes each.
    pub fn new(capacity: usize, slot_len: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_DATAGRAMS_PER_CALL);
        let slot_len = slot_len.max(1);
        Self {
            buffers: vec![0; capacity * slot_len].into_boxed_slice(),
            slot_len,
            capacity,
            received: Vec::with_capacity(capacity),
            drained: false,
        }
    }

    /// How many datagrams one [`recv`](Self::recv) reads at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Replaces the held datagrams with up to `capacity` new ones from
    /// `socket` and returns how many arrived; [`drained`](Self::drained)
    /// then says whether the socket had no more queued. Nothing waiting is
    /// [`io::ErrorKind::WouldBlock`].
    pub fn recv<S: DatagramSocket>(&mut self, socket: &S) -> io::Result<usize> {
        self.received.clear();
        self.drained = false;
        self.drained = os::recv(socket, &mut self.buffers, self.slot_len, &mut self.received)?;
        Ok(self.received.len())
    }

    /// Whether the last [`recv`](Self::recv) found the socket empty (or an
    /// error stopped it, which the next call returns): a poller reports
    /// new datagrams from then on. A full batch, or one cut short by errors
    /// about single datagrams, is not drained: read again. After a `recv`
    /// that returned an error (`WouldBlock` included) it is `false`: the
    /// error says what happened.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// How many datagrams the last read returned.
    pub fn len(&self) -> usize {
        self.received.len()
    }

    /// Whether the last read returned nothing.
    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// Datagram `index` of the last read and its source, writable (e.g. for
    /// decryption in place).
    pub fn get_mut(&mut self, index: usize) -> Option<(SocketAddr, &mut [u8])> {
        let &(from, len) = self.received.get(index)?;
        let start = index * self.slot_len;
        Some((from, &mut self.buffers[start..start + len]))
    }

    /// The datagrams of the last read with their sources, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.received
            .iter()
            .zip(self.buffers.chunks_exact(self.slot_len))
            .map(|(&(from, len), slot)| (from, &slot[..len]))
    }
}

/// What one [`SendBatch::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the socket accepted.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Datagrams the socket refused with an error other than
    /// `WouldBlock` (they are dropped, not retried).
    pub errors: u64,
}

/// A bounded queue of outgoing datagrams in reusable buffers.
///
/// Holds at most `capacity` datagrams of up to `slot_len` bytes. When the
/// socket would block, [`flush`](Self::flush) keeps the rest queued, in
/// order; when the queue is full, pushing is refused until a flush makes
/// room.
pub struct SendBatch {
    buffers: Box<[u8]>,
    slot_len: usize,
    /// Length and destination of each slot's datagram.
    slots: Box<[(usize, SocketAddr)]>,
    /// The slot of the oldest queued datagram.
    head: usize,
    /// How many are queued (in slots `head`, `head + 1`, ... modulo the
    /// capacity).
    len: usize,
}

impl SendBatch {
    /// A queue of `capacity` (at least 1) datagrams of up to `slot_len`
    /// (at least 1) bytes.
    pub fn new(capacity: usize, slot_len: usize) -> Self {
        let capacity = capacity.max(1);
        let slot_len = slot_len.max(1);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            buffers: vec![0; capacity * slot_len].into_boxed_slice(),
            slot_len,
            slots: vec![(0, unspecified); capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    /// How many datagrams the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many datagrams are queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the queue is full.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity()
    }

    /// Queues a copy of `datagram` for `to`. Refused (false) when the queue
    /// is full or the datagram longer than a slot.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) -> bool {
        datagram.len() <= self.slot_len
            && self.push_with(|buf| {
                buf[..datagram.len()].copy_from_slice(datagram);
                Some((datagram.len(), to))
            })
    }

    /// Lets `fill` write the next datagram straight into its slot: it
    /// returns the length written and the destination, or `None` to queue
    /// nothing. Returns whether a datagram was queued (false too when the
    /// queue is full; `fill` is then not called).
    pub fn push_with(
        &mut self,
        fill: impl FnOnce(&mut [u8]) -> Option<(usize, SocketAddr)>,
    ) -> bool {
        if self.is_full() {
            return false;
        }
        let slot = (self.head + self.len) % self.capacity();
        let start = slot * self.slot_len;
        let Some((len, to)) = fill(&mut self.buffers[start..start + self.slot_len]) else {
            return false;
        };
        self.slots[slot] = (len.min(self.slot_len), to);
        self.len += 1;
        true
    }

    /// Sends queued datagrams, oldest first, until the queue is empty or
    /// the socket would block (the rest stay queued: flush again once it is
    /// writable). A datagram the socket refuses with another error is
    /// dropped and counted.
    pub fn flush<S: DatagramSocket>(&mut self, socket: &S) -> Flushed {
        self.flush_with(|batch| os::send_front(socket, batch))
    }

    /// [`flush`](Self::flush) with `send_front` sending from the front of
    /// the queue.
    fn flush_with(&mut self, mut send_front: impl FnMut(&Self) -> io::Result<Sent>) -> Flushed {
        let mut flushed = Flushed::default();
        while !self.is_empty() {
            match send_front(self) {
                // Never for a non-empty batch; if it were, retrying could
                // spin, so leave the rest queued.
                Ok(sent) if sent.datagrams == 0 => break,
                Ok(sent) => {
                    flushed.datagrams += sent.datagrams;
                    flushed.bytes += sent.bytes;
                    // The OS never reports more than it was given.
                    self.pop_front(usize::try_from(sent.datagrams).unwrap_or(usize::MAX));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    flushed.errors += 1;
                    self.pop_front(1);
                }
            }
        }
        flushed
    }

    /// The queued datagrams from the oldest, with their destinations, as
    /// they sit in the ring (at most `limit`).
    fn front(&self, limit: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..self.len.min(limit)).map(move |i| {
            let slot = (self.head + i) % self.capacity();
            let (len, to) = self.slots[slot];
            let start = slot * self.slot_len;
            (to, &self.buffers[start..start + len])
        })
    }

    fn pop_front(&mut self, count: usize) {
        let count = count.min(self.len);
        self.head = (self.head + count) % self.capacity();
        self.len -= count;
        if self.len == 0 {
            self.head = 0;
        }
    }
}

/// Whether a receive error is about one datagram or one earlier send,
/// not the socket, so that the next read works: an ICMP error from a
/// peer's port (refused on Linux, reset on Windows: `WSAECONNRESET`) or,
/// on Windows, an ICMP time-exceeded for an earlier send (`WSAENETRESET`;
/// Linux reports none) or a datagram longer than the buffer
/// (`WSAEMSGSIZE`; Linux truncates it instead, and the packet layer drops
/// it as oversized).
pub fn is_about_one_datagram(error: &io::Error) -> bool {
    /// `WSAEMSGSIZE`.
    #[cfg(windows)]
    const MESSAGE_TOO_LONG: i32 = 10040;
    /// `WSAENETRESET`, which std leaves uncategorized.
    #[cfg(windows)]
    const TIME_TO_LIVE_EXPIRED: i32 = 10052;
    #[cfg(windows)]
    if matches!(
        error.raw_os_error(),
        Some(MESSAGE_TOO_LONG | TIME_TO_LIVE_EXPIRED)
    ) {
        return true;
    }
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

/// What one send call accepted.
struct Sent {
    datagrams: u64,
    bytes: u64,
}

#[cfg(target_os = "linux")]
use linux as os;
#[cfg(not(target_os = "linux"))]
use portable as os;

/// One datagram per system call, for systems without `recvmmsg` /
/// `sendmmsg` (and, in tests, to check it behaves like the batched path).
#[cfg(any(not(target_os = "linux"), test))]
mod portable {
    use super::{DatagramSocket, SendBatch, Sent, is_about_one_datagram};
    use std::io;
    use std::net::SocketAddr;

    pub(super) fn recv<S: DatagramSocket>(
        socket: &S,
        buffers: &mut [u8],
        slot_len: usize,
        received: &mut Vec<(SocketAddr, usize)>,
    ) -> io::Result<bool> {
        let slots = buffers.len() / slot_len;
        // An error about one datagram is passed over (at most one a slot
        // per call, so that a flood of them cannot hold the loop): reading
        // on to `WouldBlock` is what re-arms a poller on Windows.
        let mut passed_over = 0;
        while received.len() < slots {
            let start = received.len() * slot_len;
            match socket.recv_from(&mut buffers[start..start + slot_len]) {
                Ok((len, from)) => received.push((from, len.min(slot_len))),
                Err(e) if is_about_one_datagram(&e) && passed_over < slots => passed_over += 1,
                // Stopped at the bound with more to read: not drained.
                Err(e) if is_about_one_datagram(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !received.is_empty() => {
                    return Ok(true);
                }
                Err(e) if received.is_empty() => return Err(e),
                // Report what arrived; the error comes back on the next call.
                Err(_) => return Ok(true),
            }
        }
        Ok(false)
    }

    pub(super) fn send_front<S: DatagramSocket>(socket: &S, batch: &SendBatch) -> io::Result<Sent> {
        let Some((to, datagram)) = batch.front(1).next() else {
            return Ok(Sent {
                datagrams: 0,
                bytes: 0,
            });
        };
        let bytes = socket.send_to(datagram, to)?;
        Ok(Sent {
            datagrams: 1,
            bytes: bytes as u64,
        })
    }
}

/// `recvmmsg(2)` / `sendmmsg(2)`. The only unsafe code is the two calls
/// and the zeroing of the headers handed to them.
#[cfg(target_os = "linux")]
#[expect(
    unsafe_code,
    reason = "recvmmsg/sendmmsg are only reachable through libc; each block says why it is sound"
)]
mod linux {
    use super::{DatagramSocket, MAX_DATAGRAMS_PER_CALL, SendBatch, Sent};
    use std::io;
    use std::mem::{offset_of, size_of};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    /// A socket address as the kernel reads and writes it, in a
    /// `sockaddr_in6`, which is large enough for both families.
    ///
    /// An IPv4 address uses the leading `sockaddr_in` part: family, port
    /// and address sit at the same offsets as the family, port and flow
    /// label of a `sockaddr_in6` (checked below), so both families are read
    /// and written through plain fields, without casts.
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    struct RawAddr(libc::sockaddr_in6);

    const _: () = {
        use libc::{sockaddr_in as V4, sockaddr_in6 as V6};
        assert!(offset_of!(V4, sin_family) == offset_of!(V6, sin6_family));
        assert!(offset_of!(V4, sin_port) == offset_of!(V6, sin6_port));
        assert!(offset_of!(V4, sin_addr) == offset_of!(V6, sin6_flowinfo));
        assert!(size_of::<libc::in_addr>() == size_of::<u32>());
        assert!(size_of::<V4>() <= size_of::<V6>());
    };

    impl RawAddr {
        const EMPTY: Self = Self(libc::sockaddr_in6 {
            sin6_family: 0,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
            sin6_scope_id: 0,
        });

        /// `addr` and the length to tell the kernel.
        fn new(addr: SocketAddr) -> (Self, libc::socklen_t) {
            match addr {
                SocketAddr::V4(a) => (
                    Self(libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET as libc::sa_family_t,
                        sin6_port: a.port().to_be(),
                        // `sin_addr`: the octets in network order.
                        sin6_flowinfo: u32::from_ne_bytes(a.ip().octets()),
                        ..Self::EMPTY.0
                    }),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ),
                SocketAddr::V6(a) => (
                    Self(libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: a.port().to_be(),
                        sin6_flowinfo: a.flowinfo(),
                        sin6_addr: libc::in6_addr {
                            s6_addr: a.ip().octets(),
                        },
                        sin6_scope_id: a.scope_id(),
                    }),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                ),
            }
        }

        /// The address the kernel wrote (`len` bytes), if it is IP.
        fn get(&self, len: libc::socklen_t) -> Option<SocketAddr> {
            let raw = &self.0;
            let port = u16::from_be(raw.sin6_port);
            match i32::from(raw.sin6_family) {
                libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
                    let ip = Ipv4Addr::from(raw.sin6_flowinfo.to_ne_bytes());
                    Some(SocketAddrV4::new(ip, port).into())
                }
                libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
                    let ip = Ipv6Addr::from(raw.sin6_addr.s6_addr);
                    Some(SocketAddrV6::new(ip, port, raw.sin6_flowinfo, raw.sin6_scope_id).into())
                }
                _ => None,
            }
        }
    }

    /// Headers for the kernel, all null and zero until filled in.
    fn empty_headers() -> [libc::mmsghdr; MAX_DATAGRAMS_PER_CALL] {
        // SAFETY: `mmsghdr` is a plain C struct of integers and raw
        // pointers (some of its padding fields are private, so it cannot
        // be written as a literal); all-zero is a valid value of each.
        unsafe { std::mem::zeroed() }
    }

    pub(super) fn recv<S: DatagramSocket>(
        socket: &S,
        buffers: &mut [u8],
        slot_len: usize,
        received: &mut Vec<(SocketAddr, usize)>,
    ) -> io::Result<bool> {
        let count = (buffers.len() / slot_len).min(MAX_DATAGRAMS_PER_CALL);
        let mut names = [RawAddr::EMPTY; MAX_DATAGRAMS_PER_CALL];
        let mut iovecs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_DATAGRAMS_PER_CALL];
        let mut headers = empty_headers();
        let slots = buffers.chunks_exact_mut(slot_len);
        for (((slot, iovec), name), header) in
            slots.zip(&mut iovecs).zip(&mut names).zip(&mut headers)
        {
            *iovec = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot_len,
            };
            header.msg_hdr.msg_name = std::ptr::from_mut(name).cast();
            header.msg_hdr.msg_namelen = size_of::<RawAddr>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `count` headers point at an iovec and a name
        // buffer each, filled in above and alive until this function
        // returns; each iovec points at a distinct `slot_len`-byte slot of
        // `buffers`, which we borrow mutably; the kernel writes at most
        // `iov_len` bytes there and at most `msg_namelen` bytes into the
        // name. A null timeout is allowed (no timeout).
        let n = unsafe {
            libc::recvmmsg(
                socket.raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        for (header, name) in headers.iter().zip(&names).take(n) {
            // A source that is not IP cannot happen on a UDP/IP socket;
            // such a datagram has no one to answer: it is kept as an empty
            // one from nowhere (dropped as too short), so that entry `i`
            // stays the datagram in slot `i`.
            match name.get(header.msg_hdr.msg_namelen) {
                Some(from) => received.push((from, (header.msg_len as usize).min(slot_len))),
                None => received.push((SocketAddr::from(([0, 0, 0, 0], 0)), 0)),
            }
        }
        // A short batch: the socket had no more queued.
        Ok(n < count)
    }

    pub(super) fn send_front<S: DatagramSocket>(socket: &S, batch: &SendBatch) -> io::Result<Sent> {
        let mut names = [(RawAddr::EMPTY, 0); MAX_DATAGRAMS_PER_CALL];
        let mut iovecs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_DATAGRAMS_PER_CALL];
        let mut headers = empty_headers();
        let mut count = 0;
        for ((((to, datagram), iovec), name), header) in batch
            .front(MAX_DATAGRAMS_PER_CALL)
            .zip(&mut iovecs)
            .zip(&mut names)
            .zip(&mut headers)
        {
            *name = RawAddr::new(to);
            *iovec = libc::iovec {
                // The kernel only reads through it (sendmmsg).
                iov_base: datagram.as_ptr().cast_mut().cast(),
                iov_len: datagram.len(),
            };
            header.msg_hdr.msg_name = std::ptr::from_mut(&mut name.0).cast();
            header.msg_hdr.msg_namelen = name.1;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            count += 1;
        }
        if count == 0 {
            return Ok(Sent {
                datagrams: 0,
                bytes: 0,
            });
        }
        // SAFETY: the first `count` headers point at an iovec and an
        // address each, filled in above and alive until this function
        // returns; each iovec points at a queued datagram in `batch`,
        // borrowed for this call, which the kernel only reads; each name
        // is `msg_namelen` initialised bytes. The kernel writes only the
        // headers' `msg_len`.
        let n = unsafe {
            libc::sendmmsg(
                socket.raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT as _,
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        Ok(Sent {
            datagrams: n as u64,
            bytes: headers[..n.min(count)]
                .iter()
                .map(|h| u64::from(h.msg_len))
                .sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::UdpSocket;
    use mio::{Events, Interest, Poll, Token};
    use std::time::Duration;

    /// Sizes covering the edges: empty, one byte, the server's packet
    /// size, and a full Ethernet payload.
    const SIZES: [usize; 7] = [0, 1, 2, 100, 1_200, 1_201, 1_500];

    fn bind(addr: &str) -> UdpSocket {
        UdpSocket::bind(addr.parse().unwrap()).unwrap()
    }

    /// A datagram that says who sent it, which one it is and how long it
    /// is, so a mix-up or truncation shows.
    fn datagram(sender: u8, index: u16, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| match i {
                0 => sender,
                1 => index.to_le_bytes()[0],
                2 => index.to_le_bytes()[1],
                _ => (i as u8).wrapping_mul(31) ^ sender ^ (index as u8),
            })
            .collect()
    }

    /// A socket that answers reads from a script, then `WouldBlock`.
    struct Scripted(std::cell::RefCell<std::collections::VecDeque<io::Result<Vec<u8>>>>);

    impl Scripted {
        fn new(script: Vec<io::Result<Vec<u8>>>) -> Self {
            Self(std::cell::RefCell::new(script.into()))
        }
    }

    impl DatagramSocket for Scripted {
        fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
            let from = SocketAddr::from(([127, 0, 0, 1], 9));
            match self.0.borrow_mut().pop_front() {
                Some(Ok(datagram)) => {
                    buf[..datagram.len()].copy_from_slice(&datagram);
                    Ok((datagram.len(), from))
                }
                Some(Err(e)) => Err(e),
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        fn send_to(&self, buf: &[u8], _: SocketAddr) -> io::Result<usize> {
            Ok(buf.len())
        }
        #[cfg(target_os = "linux")]
        fn raw_fd(&self) -> std::os::fd::RawFd {
            -1
        }
    }

    /// One portable read of `socket` into `batch`; whether it drained.
    fn read_portable<S: DatagramSocket>(socket: &S, batch: &mut RecvBatch) -> io::Result<bool> {
        batch.received.clear();
        portable::recv(
            socket,
            &mut batch.buffers,
            batch.slot_len,
            &mut batch.received,
        )
    }

    #[test]
    fn the_portable_read_passes_over_errors_about_one_datagram() {
        let reset = || Err(io::Error::from(io::ErrorKind::ConnectionReset));
        let socket = Scripted::new(vec![
            reset(),
            Ok(b"one".to_vec()),
            Err(io::ErrorKind::ConnectionRefused.into()),
            Ok(b"two".to_vec()),
            reset(),
        ]);
        let mut batch = RecvBatch::new(8, 16);
        read_portable(&socket, &mut batch).unwrap();
        let got: Vec<&[u8]> = batch.iter().map(|(_, d)| d).collect();
        assert_eq!(got, [&b"one"[..], &b"two"[..]], "read on to WouldBlock");
        // Any other error ends the read; alone, it is the read's error.
        let socket = Scripted::new(vec![Err(io::ErrorKind::PermissionDenied.into())]);
        let error = read_portable(&socket, &mut batch).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        // A flood of them cannot hold the read: one a slot at most, and
        // then the read is not drained (read again).
        let socket = Scripted::new((0..100).map(|_| reset()).collect());
        let drained = read_portable(&socket, &mut batch).unwrap();
        assert_eq!((batch.len(), drained), (0, false));
        assert_eq!(
            socket.0.borrow().len(),
            100 - 9,
            "one a slot, then the bound"
        );
        // Stopped at that bound with datagrams read: not drained, so the
        // caller reads again (on Windows nothing else would wake it).
        let mut script = vec![Ok(b"a".to_vec())];
        script.extend((0..9).map(|_| reset()));
        script.push(Ok(b"b".to_vec()));
        let socket = Scripted::new(script);
        let drained = read_portable(&socket, &mut batch).unwrap();
        assert_eq!((batch.len(), drained), (1, false));
        // Read to WouldBlock: drained.
        let socket = Scripted::new(vec![Ok(b"a".to_vec())]);
        let drained = read_portable(&socket, &mut batch).unwrap();
        assert_eq!((batch.len(), drained), (1, true));
    }

    /// On Windows an ICMP time-exceeded for a datagram sent earlier fails
    /// the next read with `WSAENETRESET`, and a datagram longer than the
    /// buffer fails it with `WSAEMSGSIZE`: the read passes over both, on
    /// to `WouldBlock`, as over a reset.
    #[cfg(windows)]
    #[test]
    fn the_portable_read_passes_over_windows_errors_about_one_datagram() {
        let os_error = |code| Err(io::Error::from_raw_os_error(code));
        let socket = Scripted::new(vec![
            os_error(10052),
            Ok(b"one".to_vec()),
            os_error(10040),
            Ok(b"two".to_vec()),
            os_error(10052),
        ]);
        let mut batch = RecvBatch::new(8, 16);
        let drained = read_portable(&socket, &mut batch).unwrap();
        let got: Vec<&[u8]> = batch.iter().map(|(_, d)| d).collect();
        assert_eq!(got, [&b"one"[..], &b"two"[..]], "read on to WouldBlock");
        assert!(drained);
    }

    /// Which implementation to read with.
    #[derive(Clone, Copy)]
    enum Path {
        Native,
        Portable,
    }

    fn recv(batch: &mut RecvBatch, socket: &UdpSocket, path: Path) -> io::Result<usize> {
        match path {
            Path::Native => batch.recv(socket),
            Path::Portable => {
                read_portable(socket, batch)?;
                Ok(batch.received.len())
            }
        }
    }

    fn flush(batch: &mut SendBatch, socket: &UdpSocket, path: Path) -> Flushed {
        match path {
            Path::Native => batch.flush(socket),
            Path::Portable => batch.flush_with(|batch| portable::send_front(socket, batch)),
        }
    }

    /// Reads until `expected` datagrams arrived, waiting on the poller
    /// between reads (at most 5 s without progress). Returns each with its
    /// source, and how many reads returned a full batch.
    fn receive(
        socket: &mut UdpSocket,
        batch: &mut RecvBatch,
        expected: usize,
        path: Path,
    ) -> (Vec<(SocketAddr, Vec<u8>)>, usize) {
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(socket, Token(0), Interest::READABLE)
            .unwrap();
        let mut events = Events::with_capacity(4);
        let mut got = Vec::new();
        let mut full_batches = 0;
        while got.len() < expected {
            match recv(batch, socket, path) {
                Ok(n) => {
                    assert!(n > 0 && n <= batch.capacity());
                    assert_eq!(batch.len(), n);
                    full_batches += usize::from(n == batch.capacity());
                    got.extend(batch.iter().map(|(from, d)| (from, d.to_vec())));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll.poll(&mut events, Some(Duration::from_secs(5)))
                        .unwrap();
                    assert!(
                        !events.is_empty(),
                        "only {} of {expected} datagrams arrived",
                        got.len()
                    );
                }
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        poll.registry().deregister(socket).unwrap();
        (got, full_batches)
    }

    /// Two senders, `per_sender` datagrams each in every size, read in
    /// batches: every datagram arrives once, intact, with its sender's
    /// address, in each sender's order.
    fn two_senders_to_one_batch(loopback: &str, per_sender: u16, path: Path) {
        let mut receiver = bind(loopback);
        let to = receiver.local_addr().unwrap();
        let senders = [bind(loopback), bind(loopback)];
        let mut expected: Vec<Vec<(SocketAddr, Vec<u8>)>> = vec![Vec::new(), Vec::new()];
        for index in 0..per_sender {
            for (s, sender) in senders.iter().enumerate() {
                let d = datagram(s as u8, index, SIZES[usize::from(index) % SIZES.len()]);
                assert_eq!(sender.send_to(&d, to).unwrap(), d.len());
                expected[s].push((sender.local_addr().unwrap(), d));
            }
        }
        let mut batch = RecvBatch::new(32, 1_500);
        let total = 2 * usize::from(per_sender);
        let (got, full_batches) = receive(&mut receiver, &mut batch, total, path);
        assert_eq!(got.len(), total, "nothing extra");
        assert!(full_batches >= 1, "some reads returned a whole batch");
        for (s, sender) in senders.iter().enumerate() {
            let from = sender.local_addr().unwrap();
            let theirs: Vec<_> = got.iter().filter(|(f, _)| *f == from).cloned().collect();
            assert_eq!(theirs, expected[s], "sender {s}");
        }
        // Drained: the next read says so instead of returning stale data.
        let next = recv(&mut batch, &receiver, path);
        assert_eq!(next.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn every_datagram_arrives_intact_with_its_source_over_ipv4() {
        two_senders_to_one_batch("127.0.0.1:0", 50, Path::Native);
    }

    #[test]
    fn every_datagram_arrives_intact_with_its_source_over_ipv6() {
        two_senders_to_one_batch("[::1]:0", 50, Path::Native);
    }

    #[test]
    fn the_portable_reader_behaves_the_same() {
        two_senders_to_one_batch("127.0.0.1:0", 50, Path::Portable);
        two_senders_to_one_batch("[::1]:0", 20, Path::Portable);
    }

    #[test]
    fn a_datagram_longer_than_a_slot_is_cut_to_it() {
        let mut receiver = bind("127.0.0.1:0");
        let sender = bind("127.0.0.1:0");
        let d = datagram(9, 0, 1_500);
        sender.send_to(&d, receiver.local_addr().unwrap()).unwrap();
        sender
            .send_to(b"next", receiver.local_addr().unwrap())
            .unwrap();
        let mut batch = RecvBatch::new(8, 1_000);
        let (got, _) = receive(&mut receiver, &mut batch, 2, Path::Native);
        assert_eq!(got[0].1, d[..1_000]);
        assert_eq!(got[1].1, b"next");
    }

    /// More datagrams than one `sendmmsg` takes, to one receiver: all of
    /// them arrive, in order, and the counts are exact.
    fn a_send_batch_larger_than_one_call(loopback: &str, path: Path) {
        let mut receiver = bind(loopback);
        let to = receiver.local_addr().unwrap();
        let sender = bind(loopback);
        let count = 2 * MAX_DATAGRAMS_PER_CALL + 10;
        let mut outbox = SendBatch::new(count, 1_500);
        let mut expected = Vec::new();
        for index in 0..count {
            // Mostly small, so the receiver's default buffer holds them all.
            let len = if index % 40 == 0 { 1_500 } else { index % 7 };
            let d = datagram(1, index as u16, len);
            assert!(outbox.push(&d, to));
            expected.push((sender.local_addr().unwrap(), d));
        }
        assert!(outbox.is_full());
        assert!(!outbox.push(b"one too many", to), "the queue is bounded");
        let bytes: usize = expected.iter().map(|(_, d)| d.len()).sum();
        assert_eq!(
            flush(&mut outbox, &sender, path),
            Flushed {
                datagrams: count as u64,
                bytes: bytes as u64,
                errors: 0
            }
        );
        assert!(outbox.is_empty());
        let mut inbox = RecvBatch::new(MAX_DATAGRAMS_PER_CALL, 1_500);
        let (got, _) = receive(&mut receiver, &mut inbox, count, path);
        assert_eq!(got, expected);
    }

    #[test]
    fn a_send_batch_larger_than_one_call_arrives_whole_and_in_order() {
        a_send_batch_larger_than_one_call("127.0.0.1:0", Path::Native);
        a_send_batch_larger_than_one_call("[::1]:0", Path::Native);
        a_send_batch_larger_than_one_call("127.0.0.1:0", Path::Portable);
    }

    #[test]
    fn the_queue_is_a_ring_that_keeps_order_across_partial_flushes() {
        let mut receiver = bind("127.0.0.1:0");
        let to = receiver.local_addr().unwrap();
        let sender = bind("127.0.0.1:0");
        let mut outbox = SendBatch::new(3, 16);
        assert!(!outbox.push(&[0; 17], to), "longer than a slot");
        for i in 0..3u8 {
            assert!(outbox.push(&[i], to));
        }
        // As if the socket had taken only the first one.
        outbox.pop_front(1);
        assert!(outbox.push(&[3], to), "room again, wrapping around");
        assert!(!outbox.push_with(|_| unreachable!("full: not asked to fill")));
        assert_eq!(outbox.len(), 3);
        let flushed = outbox.flush(&sender);
        assert_eq!(
            (flushed.datagrams, flushed.bytes, flushed.errors),
            (3, 3, 0)
        );
        let mut inbox = RecvBatch::new(8, 16);
        let (got, _) = receive(&mut receiver, &mut inbox, 3, Path::Native);
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, [vec![1], vec![2], vec![3]]);
        // A fill that produces nothing queues nothing.
        assert!(!outbox.push_with(|_| None));
        assert!(outbox.is_empty());
    }

    /// Datagrams to a closed port and one the socket refuses outright do
    /// not hold up the others, and the socket keeps working afterwards.
    fn unreachable_destinations(path: Path) {
        let mut receiver = bind("127.0.0.1:0");
        let live = receiver.local_addr().unwrap();
        let closed = {
            let gone = bind("127.0.0.1:0");
            gone.local_addr().unwrap()
        };
        // An IPv6 destination from an IPv4 socket: refused with an error.
        let wrong_family: SocketAddr = "[::1]:9".parse().unwrap();
        let sender = bind("127.0.0.1:0");
        let mut outbox = SendBatch::new(64, 64);
        for round in 0..2u16 {
            for i in 0..10u16 {
                assert!(outbox.push(&datagram(2, i, 10), closed));
                assert!(outbox.push(&datagram(3, round * 10 + i, 10), live));
            }
            assert!(outbox.push(b"nope", wrong_family));
            assert!(outbox.push(b"after", live));
            let flushed = flush(&mut outbox, &sender, path);
            assert_eq!(
                (flushed.datagrams, flushed.errors),
                (21, 1),
                "round {round}"
            );
            assert_eq!(flushed.bytes, 20 * 10 + 5);
            assert!(outbox.is_empty(), "nothing stuck in the queue");
            let mut inbox = RecvBatch::new(64, 64);
            let (got, _) = receive(&mut receiver, &mut inbox, 11, path);
            let mut want: Vec<Vec<u8>> = (0..10).map(|i| datagram(3, round * 10 + i, 10)).collect();
            want.push(b"after".to_vec());
            let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
            assert_eq!(got, want, "round {round}");
        }
        // Whatever the closed port caused (nothing, or an ICMP error),
        // reading the sender's socket returns promptly.
        let mut inbox = RecvBatch::new(8, 64);
        assert!(recv(&mut inbox, &sender, path).is_err());
        // And it still sends.
        assert!(outbox.push(b"still here", live));
        assert_eq!(flush(&mut outbox, &sender, path).datagrams, 1);
        let (got, _) = receive(&mut receiver, &mut inbox, 1, path);
        assert_eq!(
            got[0],
            (sender.local_addr().unwrap(), b"still here".to_vec())
        );
    }

    #[test]
    fn unreachable_destinations_do_not_wedge_the_queue() {
        unreachable_destinations(Path::Native);
        unreachable_destinations(Path::Portable);
    }
}
