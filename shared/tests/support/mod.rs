//! A pair of connections joined by two seeded simulated links on virtual time.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part of the harness"
)]

use std::time::{Duration, Instant};

pub mod endpoints;

use shared::sim::{LinkConfig, LinkSimulator};
use shared::transport::{ChannelId, Connection, DisconnectReason, Event, TransportConfig};

/// What one side observed.
#[derive(Default, Debug)]
pub struct Observed {
    pub messages: Vec<(ChannelId, Vec<u8>)>,
    pub disconnected: Option<(DisconnectReason, bool)>,
}

pub struct Pair {
    pub now: Instant,
    pub start: Instant,
    pub a: Connection,
    pub b: Connection,
    pub a_to_b: LinkSimulator,
    pub b_to_a: LinkSimulator,
    pub at_a: Observed,
    pub at_b: Observed,
    buf: Vec<u8>,
    datagram: Vec<u8>,
    /// Steps of virtual time taken: a timer that keeps re-arming at once
    /// would make a run of seconds take for ever, not fail.
    steps: u64,
}

/// Steps a pair may take: far more than the longest scenario needs.
const MAX_STEPS: u64 = 10_000_000;
/// Datagrams one connection may send in one instant: a `poll_transmit`
/// that never returns `None` fails the test instead of spinning.
const MAX_BURST: u64 = 100_000;

impl Pair {
    pub fn new(config: TransportConfig, link: LinkConfig, seed: u64) -> Self {
        let start = Instant::now();
        Self {
            now: start,
            start,
            a: Connection::new(config.clone(), start).unwrap(),
            b: Connection::new(config, start).unwrap(),
            a_to_b: LinkSimulator::new(link.clone(), seed),
            b_to_a: LinkSimulator::new(link, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 1),
            at_a: Observed::default(),
            at_b: Observed::default(),
            buf: vec![0; 2048],
            datagram: Vec::new(),
            steps: 0,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Takes `conn`'s events; no event may follow `Disconnected`.
    fn drain(conn: &mut Connection, observed: &mut Observed) {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Message { channel, payload } => {
                    assert!(
                        observed.disconnected.is_none(),
                        "a message on {channel:?} after {:?}",
                        observed.disconnected
                    );
                    observed.messages.push((channel, payload.to_vec()))
                }
                Event::Disconnected { reason, by_peer } => {
                    assert!(
                        observed.disconnected.is_none(),
                        "a second Disconnected ({reason:?}, {by_peer}) after {:?}",
                        observed.disconnected
                    );
                    observed.disconnected = Some((reason, by_peer))
                }
            }
        }
    }

    /// Runs everything due at `now`: timers, transmissions, deliveries.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut progressed = false;
            for (conn, link) in [
                (&mut self.a, &mut self.a_to_b),
                (&mut self.b, &mut self.b_to_a),
            ] {
                if conn.poll_timeout().is_some_and(|t| t <= self.now) {
                    conn.handle_timeout(self.now);
                }
                let mut burst = 0;
                while let Some(len) = conn.poll_transmit(self.now, &mut self.buf) {
                    link.send(self.now, &self.buf[..len]);
                    progressed = true;
                    burst += 1;
                    assert!(
                        burst <= MAX_BURST,
                        "poll_transmit never stops at {:?}",
                        self.now - self.start
                    );
                }
            }
            while self.a_to_b.poll_deliver(self.now, &mut self.datagram) {
                self.b.handle_datagram(self.now, &self.datagram);
                progressed = true;
            }
            while self.b_to_a.poll_deliver(self.now, &mut self.datagram) {
                self.a.handle_datagram(self.now, &self.datagram);
                progressed = true;
            }
            Self::drain(&mut self.a, &mut self.at_a);
            Self::drain(&mut self.b, &mut self.at_b);
            let timers_due = [&self.a, &self.b]
                .iter()
                .any(|c| c.poll_timeout().is_some_and(|t| t <= self.now));
            if !progressed && !timers_due {
                return;
            }
        }
        panic!("livelock: no quiescence at {:?}", self.elapsed());
    }

    /// The next instant anything is scheduled, if anything is.
    pub fn next_wakeup(&self) -> Option<Instant> {
        [
            self.a.poll_timeout(),
            self.b.poll_timeout(),
            self.a_to_b.next_delivery(),
            self.b_to_a.next_delivery(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Settles, then advances virtual time to the next wakeup, never past `limit`.
    pub fn step_until(&mut self, limit: Instant) {
        self.steps += 1;
        assert!(
            self.steps <= MAX_STEPS,
            "{MAX_STEPS} steps and only {:?} of virtual time: a timer re-arms at once",
            self.elapsed()
        );
        self.settle();
        let next = self.next_wakeup().map_or(limit, |t| t.min(limit));
        self.now = next.max(self.now);
        self.settle();
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.step_until(end);
        }
    }

    /// Runs until `done` holds or `limit` of virtual time passes; returns `done`.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.settle();
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            self.step_until(end);
        }
    }
}

/// Deterministic randomness where the code wants a `CryptoRng` (keys,
/// nonces): a seed replays a test. Splitmix64; never outside tests.
pub struct SeededRng(pub u64);

impl rand_core::TryRng for SeededRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SeededRng {}

/// A message body carrying its index, padded to `len` bytes.
pub fn numbered(index: u32, len: usize) -> Vec<u8> {
    let mut body = vec![(index % 251) as u8; len.max(4)];
    body[..4].copy_from_slice(&index.to_le_bytes());
    body
}

/// The index of a [`numbered`] message; checks the padding.
pub fn index_of(body: &[u8]) -> u32 {
    let index = u32::from_le_bytes(body[..4].try_into().unwrap());
    assert!(
        body[4..].iter().all(|&b| b == (index % 251) as u8),
        "message {index} corrupted"
    );
    index
}

/// splitmix64: a tiny seeded generator for reproducible inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// A random byte string of 0..`max` bytes.
    pub fn bytes(&mut self, max: u64) -> Vec<u8> {
        let mut out = vec![0; self.below(max) as usize];
        self.fill(&mut out);
        out
    }

    /// Mutates `data`: bit flips, byte overwrites, truncation or extension.
    pub fn mutate(&mut self, data: &mut Vec<u8>) {
        for _ in 0..1 + self.below(4) {
            match self.below(5) {
                0 | 1 if !data.is_empty() => {
                    let bit = self.below(data.len() as u64 * 8) as usize;
                    data[bit / 8] ^= 1 << (bit % 8);
                }
                2 if !data.is_empty() => {
                    let i = self.below(data.len() as u64) as usize;
                    data[i] = self.next() as u8;
                }
                3 => {
                    let len = self.below(data.len() as u64 + 1) as usize;
                    data.truncate(len);
                }
                _ => {
                    let extra = self.bytes(16);
                    data.extend_from_slice(&extra);
                }
            }
        }
    }
}
