//! The bot swarm: a few worker threads, each multiplexing the UDP sockets
//! of its share of the bots with one `mio::Poll` and waking bots from a
//! timer heap. No thread per bot.
//!
//! Each worker loops:
//! 1. wait on its `Poll` until the earliest bot wake-up (at most
//!    [`MAX_WAIT`], to notice a stop request);
//! 2. for every readable socket, read all waiting datagrams, each handed
//!    to its bot at once, stamped with the time the read that returned it
//!    did (not the pass's start: reading a busy pass's datagrams takes
//!    milliseconds, and an early stamp would shorten every RTT sample
//!    from the datagrams read late in it): the bot handles the messages
//!    while its state is warm, and joins this pass's services only when that left it
//!    something to send now (otherwise its wake-up moves no later than its
//!    transport's next timer): a bot's frame runs at its input rate, not
//!    once per datagram;
//! 3. pop every due wake-up from the heap;
//! 4. `service` each touched bot once, which sends what it has and returns
//!    its next wake-up, pushed on the heap.
//!
//! Against a loopback IPv4 server on Linux, bots do not get a socket each:
//! they share a few sockets, each bot with its own source address, and
//! datagrams move in batches (see `pktinfo`). Elsewhere every bot has its
//! own socket.
//!
//! The heap holds `(time, bot)`; a bot's current wake-up is also stored per
//! bot, so an entry that no longer matches is stale and skipped. A bot pushes
//! a new entry only when its wake-up moves earlier or the old one fired, so
//! the heap stays within a small multiple of the number of bots.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use shared::netcode::MAX_PACKET_BYTES;

use crate::bot::{
    AfterReceive, Bot, BotContext, Outbox, Scratch, WorkerStats, new_micros_histogram,
};
use crate::verify::ReliableStats;

/// Longest a worker sleeps before checking for a stop request.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// How often a worker publishes its live counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// Readiness events taken per poll.
const EVENTS_PER_POLL: usize = 1024;
/// Shortest time between two passes of a worker. Waking for every single
/// datagram would cost a wake-up and a system call or two per datagram;
/// letting datagrams gather for up to this long lets a pass read and send
/// them in batches, at the price of at most this much added latency.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(1);

#[cfg(target_os = "linux")]
mod pktinfo;

/// Counters a worker publishes while it runs.
pub(crate) struct Live {
    /// Bots connected now.
    pub(crate) connected_now: u64,
    /// Bots that ever connected.
    pub(crate) ever_connected: u64,
    /// Connect failures plus unexpected disconnects so far.
    pub(crate) errors: u64,
    /// RTT samples since the sampler last took them.
    pub(crate) rtt_window_us: Histogram<u64>,
}

/// What a worker hands back when it ends.
pub(crate) struct WorkerResult {
    /// Its counters.
    pub(crate) stats: WorkerStats,
    /// Chat verification summed over its bots.
    pub(crate) reliable: ReliableStats,
    /// Why the worker stopped before its bots were done, if it did.
    pub(crate) failure: Option<String>,
}

/// Where each bot's socket binds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SourceIps {
    /// Every socket on the unspecified address of the server's family.
    Any,
    /// Loopback servers: spread bots over `count` addresses 127.1.x.y, so
    /// the server's per-IP handshake rate limit sees many sources.
    Loopback {
        /// Distinct addresses.
        count: u32,
    },
}

/// A bot's socket failure as its report names it: out of file
/// descriptors by name (std calls it "uncategorized").
fn socket_failure(error: &io::Error) -> String {
    #[cfg(target_os = "linux")]
    if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        return "socket: too many open files".to_owned();
    }
    format!("socket: {}", error.kind())
}

impl SourceIps {
    fn bind_addr(self, server: SocketAddr, index: u64) -> SocketAddr {
        match self {
            Self::Loopback { count } => {
                let base = u32::from(Ipv4Addr::new(127, 1, 0, 1));
                let offset = u32::try_from(index % u64::from(count.max(1))).unwrap_or(0);
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(base + offset)), 0)
            }
            Self::Any if server.is_ipv6() => "[::]:0".parse().unwrap_or(server),
            Self::Any => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        }
    }
}

/// A running worker.
pub(crate) struct WorkerHandle {
    /// Its live counters.
    pub(crate) live: Arc<Mutex<Live>>,
    /// Its thread.
    pub(crate) thread: JoinHandle<WorkerResult>,
}

/// Starts a worker for `bots` (account and start time of each).
pub(crate) fn spawn_worker(
    index: usize,
    ctx: Arc<BotContext>,
    bots: Vec<(u64, Instant)>,
    sources: SourceIps,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> io::Result<WorkerHandle> {
    let live = Arc::new(Mutex::new(Live {
        connected_now: 0,
        ever_connected: 0,
        errors: 0,
        rtt_window_us: new_micros_histogram(),
    }));
    let poll = Poll::new()?;
    let shared_live = Arc::clone(&live);
    let thread = std::thread::Builder::new()
        .name(format!("bots-{index}"))
        .spawn(move || {
            let mut worker = Worker::new(poll, ctx, bots, sources, seed, shared_live);
            worker.run(&stop)
        })?;
    Ok(WorkerHandle { live, thread })
}

/// Bots that share one socket (see `pktinfo`).
#[cfg(target_os = "linux")]
struct SharedSocket {
    socket: UdpSocket,
    /// The bot each local address belongs to.
    bots: HashMap<Ipv4Addr, usize>,
    outbox: pktinfo::SendBatch,
    /// Datagrams of the outbox the kernel refused (a full send buffer).
    send_drops: u64,
    /// Bytes of those the bots had counted sent (their `bytes_up`).
    dropped_bytes: u64,
    /// When the outbox's first datagram was queued (`None`: it is empty).
    queued_since: Option<Instant>,
}

#[cfg(target_os = "linux")]
impl SharedSocket {
    /// Sends the outbox, counting what the kernel refused.
    fn flush(&mut self) {
        let flushed = self.outbox.flush(&self.socket);
        self.send_drops += flushed.dropped as u64;
        self.dropped_bytes += flushed.dropped_counted_bytes;
        self.queued_since = None;
    }
}

/// How long a datagram may wait in a shared socket's batch. The RTT counts
/// the wait (the datagram is stamped when its bot is served) and the bots'
/// lateness does not, so a batch is sent when full, at the end of a pass,
/// and once its first datagram has waited this long (a long pass, on a
/// loaded core).
#[cfg(target_os = "linux")]
const MAX_SEND_WAIT: Duration = Duration::from_millis(1);

/// How a worker's bots reach the network.
enum Sockets {
    /// One socket per bot (registered with the bot's index as token).
    PerBot(Vec<Option<UdpSocket>>),
    /// A few shared sockets (token: number of bots + socket index).
    #[cfg(target_os = "linux")]
    Shared {
        /// The sockets, each bot on the one for its `index / count`.
        sockets: Vec<SharedSocket>,
        /// Socket of each `index / count`.
        by_group: HashMap<u64, usize>,
        /// Each bot's socket and source address once it started.
        attached: Vec<Option<(usize, Ipv4Addr)>>,
        /// Datagrams read per call.
        inbox: Box<pktinfo::RecvBatch>,
        /// Sockets with datagrams left after a bounded read.
        unread: Vec<usize>,
        /// At or before the earliest `queued_since` of the sockets (`None`:
        /// no batch waits), so that the sockets are looked over only when
        /// one may have waited long enough.
        first_queued: Option<Instant>,
    },
}

/// Batches a shared socket reads before letting the bots run.
#[cfg(target_os = "linux")]
const MAX_READS_PER_WAKE: usize = 16;

/// Datagrams a bot's own socket reads before letting the bots run: a
/// flood to one bot's port (anyone can send to it) must not hold the
/// worker in its read loop, past the run's end, its memory growing.
const MAX_OWN_READS_PER_WAKE: usize = 1024;

/// A bot's own socket as its outbox.
struct SocketOutbox<'a> {
    socket: &'a UdpSocket,
    server: SocketAddr,
}

impl Outbox for SocketOutbox<'_> {
    fn send(&mut self, data: &[u8], _: bool) -> bool {
        self.socket.send_to(data, self.server).is_ok()
    }
}

/// A shared socket's batch as a bot's outbox, sent when full and at the
/// end of every worker pass.
#[cfg(target_os = "linux")]
struct BatchOutbox<'a> {
    shared: &'a mut SharedSocket,
    /// The worker's `first_queued`.
    first_queued: &'a mut Option<Instant>,
    source: Ipv4Addr,
    server: SocketAddrV4,
    /// The bot's time.
    now: Instant,
}

#[cfg(target_os = "linux")]
impl Outbox for BatchOutbox<'_> {
    fn send(&mut self, data: &[u8], counted: bool) -> bool {
        if self.shared.outbox.is_full() {
            self.shared.flush();
        }
        self.shared.queued_since.get_or_insert(self.now);
        self.first_queued.get_or_insert(self.now);
        self.shared
            .outbox
            .push(self.source, self.server, data, counted)
    }
}

struct Worker {
    poll: Poll,
    ctx: Arc<BotContext>,
    bots: Vec<Bot>,
    sockets: Sockets,
    indices: Vec<u64>,
    scheduled: Vec<Option<Instant>>,
    /// When a bot taken off the heap for this pass was due.
    due: Vec<Option<Instant>>,
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    touched: Vec<usize>,
    touched_mark: Vec<bool>,
    /// Bots handed datagrams in this pass, and what each asked for then
    /// (repeats allowed).
    received: Vec<(usize, AfterReceive)>,
    /// Bots whose own socket a bounded read left unfinished.
    unread_bots: Vec<usize>,
    /// Lent to each bot while it runs.
    scratch: Scratch,
    sources: SourceIps,
    stats: WorkerStats,
    live: Arc<Mutex<Live>>,
    published_rtt: Histogram<u64>,
}

impl Worker {
    fn new(
        poll: Poll,
        ctx: Arc<BotContext>,
        plan: Vec<(u64, Instant)>,
        sources: SourceIps,
        seed: u64,
        live: Arc<Mutex<Live>>,
    ) -> Self {
        let count = plan.len();
        let mut heap = BinaryHeap::with_capacity(count * 2);
        let mut scheduled = Vec::with_capacity(count);
        let mut bots = Vec::with_capacity(count);
        let mut indices = Vec::with_capacity(count);
        for (i, (account, start_at)) in plan.into_iter().enumerate() {
            heap.push(Reverse((start_at, i)));
            scheduled.push(Some(start_at));
            indices.push(account - ctx.first_account);
            bots.push(Bot::new(Arc::clone(&ctx), account, start_at, seed));
        }
        let sockets = match sources {
            #[cfg(target_os = "linux")]
            SourceIps::Loopback { .. } if ctx.server.is_ipv4() => Sockets::Shared {
                sockets: Vec::new(),
                by_group: HashMap::new(),
                attached: vec![None; count],
                inbox: Box::new(pktinfo::RecvBatch::new()),
                unread: Vec::new(),
                first_queued: None,
            },
            _ => Sockets::PerBot((0..count).map(|_| None).collect()),
        };
        Self {
            poll,
            ctx,
            bots,
            sockets,
            indices,
            scheduled,
            due: vec![None; count],
            heap,
            touched: Vec::with_capacity(count),
            touched_mark: vec![false; count],
            received: Vec::with_capacity(count),
            unread_bots: Vec::new(),
            sources,
            stats: WorkerStats::new(),
            scratch: Scratch::new(),
            live,
            published_rtt: new_micros_histogram(),
        }
    }

    fn run(&mut self, stop: &AtomicBool) -> WorkerResult {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut rx = vec![0u8; MAX_PACKET_BYTES];
        let mut tx = vec![0u8; MAX_PACKET_BYTES];
        let mut stopping = false;
        let mut failure = None;
        let mut next_publish = Instant::now();
        let mut last_pass = Instant::now();
        loop {
            let mut now = Instant::now();
            let since = now.saturating_duration_since(last_pass);
            if self.is_idle() && since < MIN_PASS_INTERVAL {
                std::thread::sleep(MIN_PASS_INTERVAL - since);
                now = Instant::now();
            }
            if !stopping && stop.load(Ordering::Relaxed) {
                stopping = true;
                for (i, bot) in self.bots.iter_mut().enumerate() {
                    bot.stop(now, &mut self.stats);
                    mark(&mut self.touched, &mut self.touched_mark, i);
                }
            }
            let wait = self
                .heap
                .peek()
                .map_or(MAX_WAIT, |Reverse((t, _))| t.saturating_duration_since(now))
                .min(MAX_WAIT);
            let wait = if self.is_idle() { wait } else { Duration::ZERO };
            if let Err(error) = self.poll.poll(&mut events, Some(wait))
                && error.kind() != io::ErrorKind::Interrupted
            {
                // The worker cannot go on: its bots end here, and the run
                // says so rather than report them as if they had played.
                failure = Some(format!("poll failed: {error}"));
                let now = Instant::now();
                for bot in &mut self.bots {
                    bot.abandon(now, &mut self.stats);
                }
                break;
            }
            let now = Instant::now();
            last_pass = now;
            let mut clock = Instant::now;
            self.read_unread(&mut clock, &mut rx);
            for event in &events {
                let token = event.token().0;
                if token < self.bots.len() {
                    self.read_socket(token, &mut clock, &mut rx);
                } else {
                    self.read_shared(token - self.bots.len(), &mut clock);
                }
            }
            self.absorb_received();
            while let Some(&Reverse((at, i))) = self.heap.peek() {
                if at > now {
                    break;
                }
                self.heap.pop();
                if self.scheduled[i] == Some(at) {
                    self.scheduled[i] = None;
                    self.due[i] = Some(at);
                    mark(&mut self.touched, &mut self.touched_mark, i);
                }
            }
            self.serve_touched(&mut tx);
            self.flush_shared();
            if now >= next_publish {
                next_publish = now + PUBLISH_EVERY;
                self.publish();
            }
            if stopping && self.bots.iter().all(Bot::is_finished) {
                break;
            }
        }
        self.publish();
        let mut reliable = ReliableStats::default();
        for bot in &self.bots {
            reliable.add(&bot.verifier().stats());
        }
        self.count_shared_drops();
        WorkerResult {
            stats: std::mem::replace(&mut self.stats, WorkerStats::new()),
            reliable,
            failure,
        }
    }

    /// Reads bot `i`'s own socket until it is drained or
    /// [`MAX_OWN_READS_PER_WAKE`] datagrams were read (then it is read
    /// again on the next pass: edge-triggered readiness will not tell
    /// again), each datagram stamped by `clock` when its read returned.
    fn read_socket(&mut self, i: usize, clock: &mut impl FnMut() -> Instant, rx: &mut [u8]) {
        let Sockets::PerBot(sockets) = &self.sockets else {
            return;
        };
        let Some(socket) = sockets[i].as_ref() else {
            return;
        };
        for _ in 0..MAX_OWN_READS_PER_WAKE {
            match socket.recv_from(rx) {
                Ok((len, from)) => {
                    let after = self.bots[i].receive(
                        clock(),
                        from,
                        &mut rx[..len],
                        &mut self.scratch,
                        &mut self.stats,
                    );
                    self.received.push((i, after));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: drained. ConnectionRefused and the like: the
                // server is not there; the handshake timeout reports it.
                Err(_) => return,
            }
        }
        // Once: a socket read on from the list and then for its readiness
        // event in the same pass would otherwise be listed twice, and each
        // pass under a flood would read it once more than the last.
        if !self.unread_bots.contains(&i) {
            self.unread_bots.push(i);
        }
    }

    /// Nothing to do before the next readiness event or timer.
    fn is_idle(&self) -> bool {
        self.touched.is_empty() && !self.has_unread()
    }

    fn has_unread(&self) -> bool {
        if !self.unread_bots.is_empty() {
            return true;
        }
        match &self.sockets {
            #[cfg(target_os = "linux")]
            Sockets::Shared { unread, .. } => !unread.is_empty(),
            Sockets::PerBot(_) => false,
        }
    }

    /// Reads on from the sockets a bounded read left unfinished.
    fn read_unread(&mut self, clock: &mut impl FnMut() -> Instant, rx: &mut [u8]) {
        for i in std::mem::take(&mut self.unread_bots) {
            self.read_socket(i, clock, rx);
        }
        #[cfg(target_os = "linux")]
        if let Sockets::Shared { unread, .. } = &mut self.sockets {
            for s in std::mem::take(unread) {
                self.read_shared(s, clock);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = clock;
    }

    /// Reads a shared socket in batches, handing each datagram to the bot
    /// it was addressed to, stamped by `clock` when its batch's read
    /// returned, until it is drained (a short batch) or
    /// [`MAX_READS_PER_WAKE`] batches were read (then it is read again on
    /// the next pass: edge-triggered readiness will not tell again).
    #[cfg(target_os = "linux")]
    fn read_shared(&mut self, s: usize, clock: &mut impl FnMut() -> Instant) {
        let Sockets::Shared {
            sockets,
            inbox,
            unread,
            ..
        } = &mut self.sockets
        else {
            return;
        };
        let Some(shared) = sockets.get(s) else {
            return;
        };
        for _ in 0..MAX_READS_PER_WAKE {
            let n = match inbox.recv(&shared.socket) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or a reported error: the data may still be there.
                Err(_) => continue,
            };
            let now = clock();
            for k in 0..inbox.len() {
                let Some((from, to, data)) = inbox.get_mut(k) else {
                    continue;
                };
                let Some(&i) = shared.bots.get(&to) else {
                    continue;
                };
                let after = self.bots[i].receive(
                    now,
                    SocketAddr::V4(from),
                    data,
                    &mut self.scratch,
                    &mut self.stats,
                );
                self.received.push((i, after));
            }
            if n < pktinfo::BATCH {
                return;
            }
        }
        // Once, as for a bot's own socket (see `read_socket`).
        if !unread.contains(&s) {
            unread.push(s);
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn read_shared(&mut self, _: usize, _: &mut impl FnMut() -> Instant) {}

    /// Serves the bots marked this pass, each at its own time: what it
    /// sends is stamped when it is served, not when a long pass began. A
    /// bot's wake-up that fell due by then (one served for a datagram,
    /// late in the pass) is served with it: its lateness is counted now,
    /// and its heap entry, stale from here, counts nothing later.
    fn serve_touched(&mut self, tx: &mut [u8]) {
        let touched = std::mem::take(&mut self.touched);
        for &i in &touched {
            self.touched_mark[i] = false;
            let now = Instant::now();
            if self.due[i].is_none() && self.scheduled[i].is_some_and(|at| at <= now) {
                self.due[i] = self.scheduled[i].take();
            }
            if let Some(due) = self.due[i].take() {
                let late = now.saturating_duration_since(due).as_micros();
                let late = u64::try_from(late).unwrap_or(u64::MAX).max(1);
                let _ = self.stats.lateness_us.record(late);
            }
            self.service(i, now, tx);
            self.flush_waiting(now);
        }
        self.touched = touched;
        self.touched.clear();
    }

    /// Services in this pass the bots whose datagrams left them something
    /// to send now; the others wake when their next input or transport
    /// timer is due. (Each bot said which when it took its datagram, while
    /// its state was warm: up to a thousand other bots' datagrams may have
    /// been read since.)
    fn absorb_received(&mut self) {
        let mut received = std::mem::take(&mut self.received);
        for &(i, after) in &received {
            match after {
                AfterReceive::Service => mark(&mut self.touched, &mut self.touched_mark, i),
                AfterReceive::WakeBy(at) => self.schedule(i, Some(at)),
            }
        }
        received.clear();
        self.received = received;
    }

    /// Adds what the kernel refused of the shared sockets' batches to the
    /// stats (once, at the end): the drops, and their bytes out of
    /// `bytes_up`, where the bots counted them when they queued them.
    fn count_shared_drops(&mut self) {
        #[cfg(target_os = "linux")]
        if let Sockets::Shared { sockets, .. } = &mut self.sockets {
            for shared in sockets {
                self.stats.send_drops += std::mem::take(&mut shared.send_drops);
                let refused = std::mem::take(&mut shared.dropped_bytes);
                self.stats.bytes_up = self.stats.bytes_up.saturating_sub(refused);
            }
        }
    }

    /// Sends the shared sockets' batches whose first datagram has waited
    /// [`MAX_SEND_WAIT`] by `now`.
    fn flush_waiting(&mut self, now: Instant) {
        #[cfg(target_os = "linux")]
        if let Sockets::Shared {
            sockets,
            first_queued,
            ..
        } = &mut self.sockets
        {
            let waited = |since: Instant| now.saturating_duration_since(since) >= MAX_SEND_WAIT;
            if !first_queued.is_some_and(waited) {
                return;
            }
            *first_queued = None;
            for shared in sockets {
                match shared.queued_since {
                    Some(since) if waited(since) => shared.flush(),
                    Some(since) => {
                        *first_queued = Some(first_queued.map_or(since, |f| f.min(since)))
                    }
                    None => {}
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = now;
    }

    /// Sends what the bots queued on shared sockets this pass.
    fn flush_shared(&mut self) {
        #[cfg(target_os = "linux")]
        if let Sockets::Shared {
            sockets,
            first_queued,
            ..
        } = &mut self.sockets
        {
            for shared in sockets {
                shared.flush();
            }
            *first_queued = None;
        }
    }

    fn service(&mut self, i: usize, now: Instant, tx: &mut [u8]) {
        if !self.is_attached(i) && !self.bots[i].is_done() {
            if self.bots[i].start_at().is_some_and(|t| t > now) {
                self.schedule(i, self.bots[i].start_at());
                return;
            }
            if let Err(error) = self.attach(i) {
                let reason = socket_failure(&error);
                self.bots[i].fail_to_start(reason, now, &mut self.stats);
                return;
            }
        }
        let server = self.ctx.server;
        let wake = match &mut self.sockets {
            Sockets::PerBot(sockets) => {
                let Some(socket) = sockets[i].as_ref() else {
                    return;
                };
                let mut out = SocketOutbox { socket, server };
                self.bots[i].service(now, &mut out, tx, &mut self.scratch, &mut self.stats)
            }
            #[cfg(target_os = "linux")]
            Sockets::Shared {
                sockets,
                attached,
                first_queued,
                ..
            } => {
                let (Some((s, source)), SocketAddr::V4(server)) = (attached[i], server) else {
                    return;
                };
                let mut out = BatchOutbox {
                    shared: &mut sockets[s],
                    first_queued,
                    source,
                    server,
                    now,
                };
                self.bots[i].service(now, &mut out, tx, &mut self.scratch, &mut self.stats)
            }
        };
        if wake.is_none() {
            self.detach(i);
        }
        self.schedule(i, wake);
    }

    fn is_attached(&self, i: usize) -> bool {
        match &self.sockets {
            Sockets::PerBot(sockets) => sockets[i].is_some(),
            #[cfg(target_os = "linux")]
            Sockets::Shared { attached, .. } => attached[i].is_some(),
        }
    }

    /// Gives bot `i` its way to the network.
    fn attach(&mut self, i: usize) -> io::Result<()> {
        let bind = self.sources.bind_addr(self.ctx.server, self.indices[i]);
        let shared_tokens = self.bots.len();
        match &mut self.sockets {
            Sockets::PerBot(sockets) => {
                let mut socket = UdpSocket::bind(bind)?;
                self.poll
                    .registry()
                    .register(&mut socket, Token(i), Interest::READABLE)?;
                sockets[i] = Some(socket);
            }
            #[cfg(target_os = "linux")]
            Sockets::Shared {
                sockets,
                by_group,
                attached,
                ..
            } => {
                let IpAddr::V4(source) = bind.ip() else {
                    return Err(io::Error::other("shared sockets need IPv4"));
                };
                // Bots `count` apart share a source address, so they get
                // different sockets (ports).
                let group = match self.sources {
                    SourceIps::Loopback { count } => self.indices[i] / u64::from(count.max(1)),
                    SourceIps::Any => 0,
                };
                let s = match by_group.get(&group) {
                    Some(&s) => s,
                    None => {
                        let mut socket = pktinfo::open()?;
                        self.poll.registry().register(
                            &mut socket,
                            Token(shared_tokens + sockets.len()),
                            Interest::READABLE,
                        )?;
                        sockets.push(SharedSocket {
                            socket,
                            bots: HashMap::new(),
                            outbox: pktinfo::SendBatch::new(),
                            send_drops: 0,
                            dropped_bytes: 0,
                            queued_since: None,
                        });
                        by_group.insert(group, sockets.len() - 1);
                        sockets.len() - 1
                    }
                };
                sockets[s].bots.insert(source, i);
                attached[i] = Some((s, source));
            }
        }
        Ok(())
    }

    /// Bot `i` is done: close its socket, or stop routing to it.
    fn detach(&mut self, i: usize) {
        match &mut self.sockets {
            Sockets::PerBot(sockets) => {
                if let Some(mut socket) = sockets[i].take() {
                    let _ = self.poll.registry().deregister(&mut socket);
                }
            }
            #[cfg(target_os = "linux")]
            Sockets::Shared {
                sockets, attached, ..
            } => {
                if let Some((s, source)) = attached[i] {
                    sockets[s].bots.remove(&source);
                }
            }
        }
    }

    fn schedule(&mut self, i: usize, wake: Option<Instant>) {
        let Some(wake) = wake else {
            return;
        };
        if self.scheduled[i].is_none_or(|current| wake < current) {
            self.scheduled[i] = Some(wake);
            self.heap.push(Reverse((wake, i)));
        }
    }

    fn publish(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.connected_now = self.stats.connected_now;
        live.ever_connected = self.stats.ever_connected;
        live.errors = self.stats.connect_failures.values().sum::<u64>()
            + self.stats.disconnects.values().sum::<u64>();
        // Hand over the samples recorded since the last publish; the worker
        // keeps the whole run's histogram for the report.
        if self.stats.rtt_us.len() > self.published_rtt.len() {
            let mut window = self.stats.rtt_us.clone();
            let _ = window.subtract(&self.published_rtt);
            let _ = live.rtt_window_us.add(&window);
            self.published_rtt.clone_from(&self.stats.rtt_us);
        }
    }
}

fn mark(touched: &mut Vec<usize>, marks: &mut [bool], i: usize) {
    if !marks[i] {
        marks[i] = true;
        touched.push(i);
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdUdpSocket;

    use shared::endpoint::{EndpointEvent, ServerEndpoint, ServerEndpointConfig};
    use shared::io::{system_rng, unix_secs};
    use shared::netcode::ServerConfig;
    use shared::protocol::{PROTOCOL_ID, channels};
    use shared::sim::LinkConfig;

    use super::*;
    use crate::scenario::{self, Scenario};
    use crate::token::TokenMinter;

    /// A worker of one bot (its own socket) and an in-memory server
    /// endpoint behind a loopback socket, on a clock the test moves.
    struct Harness {
        worker: Worker,
        server: ServerEndpoint,
        socket: StdUdpSocket,
        /// The bot's address, as the server saw it.
        bot: Option<SocketAddr>,
        buf: Vec<u8>,
        tx: Vec<u8>,
        now: Instant,
    }

    impl Harness {
        fn new() -> Self {
            Self::with_sources(SourceIps::Any)
        }

        fn with_sources(sources: SourceIps) -> Self {
            Self::with(sources, None)
        }

        /// A bot whose datagrams go through a conditioned link.
        fn conditioned(link: LinkConfig) -> Self {
            Self::with(SourceIps::Any, Some(link))
        }

        fn with(sources: SourceIps, link: Option<LinkConfig>) -> Self {
            let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            socket.set_nonblocking(true).unwrap();
            let addr = socket.local_addr().unwrap();
            let netcode = ServerConfig::new(PROTOCOL_ID, shared::keys::dev_key(), vec![addr]);
            let config = ServerEndpointConfig::new(netcode, channels::transport_config());
            let server = ServerEndpoint::new(config, &mut system_rng()).unwrap();
            let ctx = Arc::new(BotContext {
                server: addr,
                minter: TokenMinter::dev(addr),
                scenario: Scenario::parse(scenario::DEFAULT_TOML, "default.toml").unwrap(),
                link,
                first_account: 1,
                bots: 1,
                drain_timeout: Duration::from_secs(2),
                transport: Arc::new(channels::transport_config()),
                steady_from: Instant::now(),
            });
            let now = Instant::now();
            let live = Arc::new(Mutex::new(Live {
                connected_now: 0,
                ever_connected: 0,
                errors: 0,
                rtt_window_us: new_micros_histogram(),
            }));
            let worker = Worker::new(Poll::new().unwrap(), ctx, vec![(1, now)], sources, 7, live);
            Self {
                worker,
                server,
                socket,
                bot: None,
                buf: vec![0; MAX_PACKET_BYTES],
                tx: vec![0; MAX_PACKET_BYTES],
                now,
            }
        }

        /// The server handles what the bot sent (at `now`) and puts its
        /// answers on the wire, for the worker to read.
        fn server_turn(&mut self) -> Option<shared::netcode::ClientIndex> {
            let mut slot = None;
            while let Ok((len, from)) = self.socket.recv_from(&mut self.buf) {
                self.bot = Some(from);
                let mut datagram = self.buf[..len].to_vec();
                self.server
                    .handle_datagram(self.now, unix_secs(), from, &mut datagram);
            }
            while let Some(event) = self.server.poll_event() {
                if let EndpointEvent::Connected { client, .. } = event {
                    slot = Some(client);
                }
            }
            while let Some(transmit) = self.server.poll_transmit(self.now, &mut self.buf) {
                self.socket
                    .send_to(&self.buf[..transmit.len], transmit.destination)
                    .unwrap();
            }
            slot
        }

        /// The worker reads its socket on a clock that stands still.
        fn read(&mut self) {
            let now = self.now;
            let mut rx = vec![0; MAX_PACKET_BYTES];
            self.worker.read_socket(0, &mut || now, &mut rx);
            self.worker.absorb_received();
        }

        fn service(&mut self) {
            let now = self.now;
            self.worker.service(0, now, &mut self.tx);
        }
    }

    /// A bot served for a datagram after its wake-up fell due (late in a
    /// pass) is late by then: counted once, then, not again, later, when
    /// the stale heap entry comes up for a service that sends nothing.
    #[test]
    fn a_wake_up_due_when_a_datagram_serves_the_bot_counts_its_lateness_then() {
        let mut h = Harness::new();
        h.service();
        let due = Instant::now() - Duration::from_millis(3);
        h.worker.scheduled[0] = None;
        h.worker.schedule(0, Some(due));
        h.worker.received.push((0, AfterReceive::Service));
        h.worker.absorb_received();
        h.worker.serve_touched(&mut h.tx);
        assert_eq!(h.worker.stats.lateness_us.len(), 1);
        assert!(h.worker.stats.lateness_us.max() >= 3_000);
        assert_ne!(h.worker.scheduled[0], Some(due), "the wake-up was served");
    }

    /// A flood to a bot's own port, faster than the worker reads it,
    /// holds the worker for a bounded read, not until the flood stops (it
    /// held it past the run's end, one entry a datagram piling up).
    #[test]
    fn a_flood_to_a_bots_socket_holds_the_worker_for_a_bounded_read() {
        let mut h = Harness::new();
        h.service();
        h.server_turn();
        let bot = h.bot.expect("the bot's address");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flooder = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                let began = Instant::now();
                while !stop.load(Ordering::Relaxed) && began.elapsed() < Duration::from_secs(5) {
                    let _ = socket.send_to(b"junk", bot);
                }
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        // Each read costs 20 µs: slower than the flood comes.
        let mut clock = || {
            std::thread::sleep(Duration::from_micros(20));
            Instant::now()
        };
        let mut rx = vec![0; MAX_PACKET_BYTES];
        let began = Instant::now();
        h.worker.read_socket(0, &mut clock, &mut rx);
        let took = began.elapsed();
        assert!(took < Duration::from_secs(2), "the read took {took:?}");
        assert_eq!(h.worker.received.len(), MAX_OWN_READS_PER_WAKE);
        // Read again in the pass (its readiness event): still listed once
        // to read on, or each pass would read it once more than the last.
        h.worker.read_socket(0, &mut clock, &mut rx);
        stop.store(true, Ordering::Relaxed);
        flooder.join().unwrap();
        assert_eq!(h.worker.unread_bots, [0]);
        h.worker.received.clear();
        // Read on in the next pass.
        assert!(h.worker.has_unread());
        h.worker.received.clear();
        h.worker.read_unread(&mut clock, &mut rx);
        assert!(!h.worker.received.is_empty());
    }

    /// A datagram queued on a shared socket waited for the batch to fill
    /// or the pass to end: on a loaded core, a long pass, counted in the
    /// RTT and not in the bots' lateness.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_shared_sockets_batch_waits_at_most_the_send_wait() {
        let mut h = Harness::with_sources(SourceIps::Loopback { count: 1 });
        h.service();
        let queued = h.now;
        let mut buf = [0u8; 2048];
        let arrived = |h: &Harness, buf: &mut [u8]| {
            std::thread::sleep(Duration::from_millis(20));
            h.socket.recv_from(buf).is_ok()
        };
        h.worker
            .flush_waiting(queued + MAX_SEND_WAIT - Duration::from_micros(1));
        assert!(!arrived(&h, &mut buf), "sent before the batch waited");
        h.worker.flush_waiting(queued + MAX_SEND_WAIT);
        assert!(arrived(&h, &mut buf), "the batch still waits");
    }

    /// What the kernel refuses of a shared socket's batch was counted in
    /// `bytes_up` when the bot queued it.
    #[cfg(target_os = "linux")]
    #[test]
    fn bytes_a_shared_socket_could_not_send_are_not_counted_up() {
        let mut h = Harness::with_sources(SourceIps::Loopback { count: 1 });
        h.service();
        h.worker.flush_shared();
        let (sent, drops) = (h.worker.stats.bytes_up, h.worker.stats.send_drops);
        let SocketAddr::V4(server) = h.socket.local_addr().unwrap() else {
            panic!("IPv4 expected");
        };
        let Sockets::Shared { sockets, .. } = &mut h.worker.sockets else {
            panic!("shared sockets expected");
        };
        // From an address no interface has: the kernel refuses it.
        let foreign = Ipv4Addr::new(203, 0, 113, 9);
        assert!(sockets[0].outbox.push(foreign, server, &[7; 100], true));
        h.worker.stats.bytes_up += 100;
        h.worker.flush_shared();
        h.worker.count_shared_drops();
        assert_eq!(h.worker.stats.bytes_up, sent);
        assert_eq!(h.worker.stats.send_drops, drops + 1);
    }

    #[test]
    fn each_read_is_stamped_when_it_returned_not_when_the_pass_began() {
        let (rtt, reads) = rtt_of_an_ack_read_second(Harness::new(), 0);
        assert!(
            (19_900..=20_100).contains(&rtt),
            "the acknowledgement was read 20 ms after the input left, not 10: {rtt} µs"
        );
        assert_eq!(reads, 2, "the junk, then the acknowledgement");
    }

    /// A conditioned bot's datagram reaches its transport when the link
    /// delivers it, not when the bot is next served: with loss only (no
    /// latency), at its read; the service later in the pass added its wait
    /// to the RTT, unseen by the bots' lateness (a service for a datagram
    /// is due at no timer).
    #[test]
    fn a_conditioned_bots_datagram_arrives_when_its_link_delivers_it() {
        let link = LinkConfig::default().with_loss(0.0);
        let (rtt, _) = rtt_of_an_ack_read_second(Harness::conditioned(link), 30);
        assert!(
            (19_900..=20_100).contains(&rtt),
            "the acknowledgement was read 20 ms after the input left, not served at 30: {rtt} µs"
        );
    }

    /// The bot's RTT sample of an input acknowledged at once, whose ack it
    /// reads second (each read taking 10 ms), then serves `served_ms`
    /// after the input left (0: not before its next wake-up); and how many
    /// reads there were.
    fn rtt_of_an_ack_read_second(mut h: Harness, served_ms: u64) -> (u64, u64) {
        let mut slot = None;
        for _ in 0..20 {
            h.service();
            slot = h.server_turn().or(slot);
            h.read();
            h.now += Duration::from_millis(5);
            if h.worker.stats.ever_connected == 1 {
                break;
            }
        }
        let slot = slot.expect("the bot connected");
        // An input is due: it leaves at `sent`; the server acknowledges
        // it at once, behind a datagram of junk from the same address,
        // which the bot reads first.
        h.now += Duration::from_millis(50);
        h.service();
        let sent = h.now;
        h.server
            .send(sent, slot, channels::CHAT, bytes::Bytes::from_static(b"x"))
            .unwrap();
        let bot = h.bot.expect("the bot's address");
        h.socket.send_to(b"junk", bot).unwrap();
        h.server_turn();
        // Each read of the socket takes 10 ms of the pass.
        let reads = std::cell::Cell::new(0);
        let mut clock = || {
            reads.set(reads.get() + 1);
            sent + Duration::from_millis(10 * reads.get())
        };
        let mut rx = vec![0; MAX_PACKET_BYTES];
        h.worker.read_socket(0, &mut clock, &mut rx);
        if served_ms > 0 {
            h.now = sent + Duration::from_millis(served_ms);
            h.service();
        }
        // The bot samples its RTT a second into the session.
        h.now = sent + Duration::from_millis(1_100);
        h.service();
        (h.worker.stats.rtt_us.max(), reads.get())
    }
}
