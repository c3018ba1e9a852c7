//! A pair of connections joined by two seeded simulated links on virtual time.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part of the harness"
)]

use std::time::{Duration, Instant};

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
}

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
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn drain(conn: &mut Connection, observed: &mut Observed) {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Message { channel, payload } => {
                    observed.messages.push((channel, payload.to_vec()))
                }
                Event::Disconnected { reason, by_peer } => {
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
                while let Some(len) = conn.poll_transmit(self.now, &mut self.buf) {
                    link.send(self.now, &self.buf[..len]);
                    progressed = true;
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
