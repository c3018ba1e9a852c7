//! Steady state allocates nothing per packet: encoding, decoding and the ack
//! cycle reuse their buffers. A counting global allocator proves it.

#![expect(
    clippy::disallowed_methods,
    reason = "tests anchor virtual time at a real Instant and use real sockets"
)]
#![expect(
    unsafe_code,
    reason = "a counting GlobalAlloc must implement an unsafe trait"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::transport::{ChannelId, Connection, Event, TransportConfig};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn add_live(bytes: i64) {
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + bytes));
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        add_live(layout.size() as i64);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add_live(-(layout.size() as i64));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        add_live(new_size as i64 - layout.size() as i64);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Heap bytes this thread allocated and has not freed.
fn live_bytes() -> i64 {
    LIVE_BYTES.with(Cell::get)
}

/// One round: `a` sends eight messages on every channel, `b` receives and
/// acks, `a` takes the acks. The sequenced channel delivers only the newest
/// of its eight, so a round delivers 8 + 8 + 1 + 8 = 25 messages.
fn round(
    a: &mut Connection,
    b: &mut Connection,
    now: Instant,
    payload: &Bytes,
    buf: &mut [u8],
) -> usize {
    for channel in 0..4 {
        for _ in 0..8 {
            a.send_bytes(ChannelId(channel), payload.clone()).unwrap();
        }
    }
    let mut delivered = 0;
    while let Some(len) = a.poll_transmit(now, buf) {
        b.handle_datagram(now, &buf[..len]);
        while let Some(event) = b.poll_event() {
            assert!(matches!(event, Event::Message { .. }));
            delivered += 1;
        }
    }
    b.handle_timeout(now + Duration::from_millis(20));
    while let Some(len) = b.poll_transmit(now + Duration::from_millis(20), buf) {
        a.handle_datagram(now + Duration::from_millis(20), &buf[..len]);
    }
    delivered
}

/// Two connected transports exchanging [`round`]s in virtual time.
struct Pair {
    a: Connection,
    b: Connection,
    now: Instant,
    payload: Bytes,
    buf: Vec<u8>,
}

impl Pair {
    /// A pair with an unthrottled send rate and `reliable_window` slots.
    fn new(reliable_window: u16) -> Self {
        let now = Instant::now();
        let config = TransportConfig {
            max_send_rate: u32::MAX,
            initial_send_rate: 1 << 30,
            reliable_window,
            ..TransportConfig::default()
        };
        Self {
            a: Connection::new(config.clone(), now).unwrap(),
            b: Connection::new(config, now).unwrap(),
            now,
            payload: Bytes::from(vec![7u8; 32]),
            buf: vec![0u8; 1500],
        }
    }

    /// Runs `rounds` rounds 30 ms apart; returns the messages delivered.
    fn run(&mut self, rounds: usize) -> usize {
        let mut delivered = 0;
        for _ in 0..rounds {
            self.now += Duration::from_millis(30);
            delivered += round(
                &mut self.a,
                &mut self.b,
                self.now,
                &self.payload,
                &mut self.buf,
            );
        }
        delivered
    }
}

#[test]
fn steady_state_send_receive_and_ack_do_not_allocate() {
    let mut pair = Pair::new(TransportConfig::default().reliable_window);
    assert_eq!(pair.run(2_000), 2_000 * 25);
    let probe = allocations();
    std::hint::black_box(vec![0u8; 16]);
    assert!(
        allocations() > probe,
        "the counting allocator sees this thread"
    );

    let before = allocations();
    let delivered = pair.run(10_000);
    let during = allocations() - before;
    assert_eq!(delivered, 250_000);
    assert_eq!(
        during, 0,
        "{during} allocations in 10,000 steady-state rounds"
    );
    assert_eq!(pair.a.unacked_messages(ChannelId(0)), 0);
}

/// A reliable window's slots are reused as its ids advance, and a slot's
/// first use must not allocate (a long-lived session reaches new ids only
/// slowly: 1,024 chat lines at one every 5 s take 85 minutes), or a
/// server's memory creeps up for hours after its players connected. The
/// window is the largest allowed, so the warm-up sizes every other buffer
/// (the sent-packet ring's included) while most ids are still unused.
#[test]
fn first_use_of_a_reliable_window_slot_does_not_allocate() {
    let mut pair = Pair::new(16_384);
    assert_eq!(pair.run(1_100), 1_100 * 25);

    // The warm-up used 8,800 of each reliable channel's 16,384 slots; these
    // rounds use 6,400 more, each for the first time.
    let before = allocations();
    let delivered = pair.run(800);
    let during = allocations() - before;
    assert_eq!(delivered, 20_000);
    assert_eq!(
        during, 0,
        "{during} allocations while 6,400 reliable window slots were used for the first time"
    );
}

/// A deterministic lossy link for [`lossy_round`]: xorshift, 5% loss, or
/// every datagram lost while `dark`.
struct Lossy {
    state: u64,
    dark: bool,
}

impl Lossy {
    fn new(seed: u64) -> Self {
        Self {
            state: seed,
            dark: false,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn lost(&mut self) -> bool {
        self.next() % 100 < 5 || self.dark
    }
}

/// Like [`round`], but with a varying number of messages per channel and
/// 5% of the datagrams lost each way, so resends bundle more units into a
/// packet now and then. Returns the messages delivered.
fn lossy_round(pair: &mut Pair, link: &mut Lossy) -> usize {
    let now = pair.now;
    for channel in 0..4 {
        for _ in 0..link.next() % 9 {
            pair.a
                .send_bytes(ChannelId(channel), pair.payload.clone())
                .unwrap();
        }
    }
    let mut delivered = 0;
    let later = now + Duration::from_millis(15);
    // `a` sends data (and acks), then `b` acks (and sends nothing else).
    for (a_sends, at) in [(true, now), (false, later)] {
        let (sender, receiver) = if a_sends {
            (&mut pair.a, &mut pair.b)
        } else {
            (&mut pair.b, &mut pair.a)
        };
        sender.handle_timeout(at);
        while let Some(len) = sender.poll_transmit(at, &mut pair.buf) {
            if !link.lost() {
                receiver.handle_datagram(at, &pair.buf[..len]);
            }
        }
        while let Some(event) = receiver.poll_event() {
            assert!(matches!(event, Event::Message { .. }), "{event:?}");
            delivered += usize::from(a_sends);
        }
    }
    delivered
}

/// Heap growth allowed to the lossy pair after its warm-up. The server soak
/// allows 2 MiB over 20 minutes for 1,000 players, about 2 KiB per
/// connection; the pair gets a quarter of that (1 KiB for two) over ten
/// simulated minutes.
const LOSSY_PAIR_GROWTH_BUDGET: i64 = 1024;

/// A long session on a lossy link reaches its memory plateau early: after a
/// two-minute warm-up, ten more minutes stay within
/// [`LOSSY_PAIR_GROWTH_BUDGET`]. Resends put a varying number of units in a
/// packet: when each of the 1,024 sent-packet slots kept its own growable
/// list of them, the slots grew to the most they ever carried, slowly, for
/// as long as the session lasted (38 KB here).
///
/// The sent-packet history, the unit log and the reliable windows grow on
/// demand, doubling when more is in flight than they hold (up to their
/// bounds): each follows the largest burst the session has seen, and a
/// random 5 % loss sets a new record now and then. So the warm-up starts
/// with a second in which every datagram is lost, a burst larger than any
/// the random loss makes; after it, growth can only be a creep.

#[test]
fn a_lossy_session_does_not_grow_its_memory_after_warming_up() {
    let mut pair = Pair::new(TransportConfig::default().reliable_window);
    let mut link = Lossy::new(0x9E37_79B9_7F4A_7C15);
    let mut delivered = 0;
    // Two simulated minutes at 30 ms a round, the first second dark.
    for round in 0..12_000 {
        link.dark = round < 34;
        pair.now += Duration::from_millis(30);
        delivered += lossy_round(&mut pair, &mut link);
    }
    let warm = live_bytes();
    let mut peak = warm;
    // Ten more minutes.
    for _ in 0..20_000 {
        pair.now += Duration::from_millis(30);
        delivered += lossy_round(&mut pair, &mut link);
        peak = peak.max(live_bytes());
    }
    assert!(
        delivered > 24_000 * 10,
        "only {delivered} messages delivered"
    );
    assert!(
        pair.a.is_connected() && pair.b.is_connected(),
        "the lossy link must not end the session"
    );
    assert!(
        peak - warm <= LOSSY_PAIR_GROWTH_BUDGET,
        "the heap grew by {} bytes after the warm-up (from {warm} to {peak})",
        peak - warm
    );
}

/// What one connection of the game's channel layout holds from the start
/// (windows, sent-packet history, queues). The server allocates and
/// touches it at connect: at 650 KiB a connection (before the reassembly
/// buffers left the window slots and the game's window shrank to 256), a
/// ramp of a few hundred connects a second spent a third of the network
/// thread clearing fresh pages, long enough for the socket's receive buffer
/// to overflow; and every byte of it is a cache line the per-packet path
/// may miss. The windows and histories start small and grow on demand
/// (143 KiB a connection when they were made at their bounds).
#[test]
fn a_game_connection_starts_with_a_small_footprint() {
    // An endpoint's connections share one copy of the configuration.
    let config = std::sync::Arc::new(shared::protocol::channels::transport_config());
    let before = live_bytes();
    let connection = Connection::new(std::sync::Arc::clone(&config), Instant::now()).unwrap();
    let held = live_bytes() - before;
    drop(connection);
    eprintln!("a game connection holds {held} bytes");
    assert!(held <= 8 * 1024, "a game connection holds {held} bytes");
}
