//! The network thread's user-space work per game tick, without sockets:
//! 2,000 clients of the game's channel layout connected to one
//! `ServerEndpoint` in memory, each sending a 24-byte movement input every
//! tick and getting a 130-byte snapshot back (the load of
//! `assets/scenarios/default.toml` at 30 Hz, chat aside). Only the server's
//! side is timed: opening and handling every client's datagram, draining
//! the events, queueing the snapshots, and sealing every datagram out. The
//! clients run untimed between ticks, on virtual time (33 ms per tick).
//!
//! Every client's connection state is touched twice a tick, 2,000
//! connections apart, as on the real server: what this measures includes
//! the cache misses of per-connection state, which a two-connection
//! benchmark would not show. Divide by 4,000 for the cost per datagram.
//!
//! Run: `cargo bench -p shared --bench endpoint`. Instructions and
//! simulated cache misses of 30 measured ticks only (no criterion):
//!
//! ```sh
//! ENDPOINT_BENCH_CALLGRIND=1 valgrind --tool=callgrind --cache-sim=yes \
//!     --toggle-collect='*measured_server_turn*' target/release/deps/endpoint-HASH --bench
//! ```
//!
//! The clients' side of the same ticks (what each bot of a swarm pays to
//! send its input and take its snapshot): `--toggle-collect='*measured_clients*'`.

#![expect(
    clippy::disallowed_methods,
    reason = "benchmarks anchor virtual time at a real Instant"
)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use shared::endpoint::{
    ClientEndpoint, ClientEndpointEvent, EndpointEvent, ServerEndpoint, ServerEndpointConfig,
};
use shared::io::{system_rng, unix_secs};
use shared::netcode::{self, ClientIndex, ServerConfig};
use shared::protocol::{PROTOCOL_ID, channels};
use shared::transport::{ChannelId, Deliver};

const CLIENTS: usize = 2_000;
const TICK: Duration = Duration::from_millis(33);

fn client_addr(i: usize) -> SocketAddr {
    let [hi, lo] = u16::try_from(i)
        .expect("fewer than 65,536 clients")
        .to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(127, 1, hi, lo), 40_000))
}

fn client_of(addr: SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(v4) => {
            let [_, _, hi, lo] = v4.ip().octets();
            usize::from(u16::from_be_bytes([hi, lo]))
        }
        SocketAddr::V6(_) => unreachable!("the clients are IPv4"),
    }
}

/// Datagrams in flight, back to back in one reused buffer (as in a
/// `sendmmsg` batch: no allocation per datagram in the timed part).
struct Datagrams<A> {
    bytes: Vec<u8>,
    /// (peer, start, len) of each datagram in `bytes`.
    spans: Vec<(A, usize, usize)>,
}

impl<A: Copy> Datagrams<A> {
    fn new() -> Self {
        Self {
            bytes: Vec::with_capacity(4 << 20),
            spans: Vec::with_capacity(8_192),
        }
    }

    fn push(&mut self, peer: A, datagram: &[u8]) {
        self.spans.push((peer, self.bytes.len(), datagram.len()));
        self.bytes.extend_from_slice(datagram);
    }

    /// Calls `f` with each datagram (mutable: opened in place).
    fn drain(&mut self, mut f: impl FnMut(A, &mut [u8])) {
        for &(peer, start, len) in &self.spans {
            f(peer, &mut self.bytes[start..start + len]);
        }
        self.spans.clear();
        self.bytes.clear();
    }
}

/// The messages the clients received, in one buffer for all of them.
#[derive(Default)]
struct Messages {
    bytes: Vec<u8>,
}

impl Deliver for Messages {
    fn deliver(&mut self, _channel: ChannelId, payload: &[u8]) {
        self.bytes.extend_from_slice(payload);
    }
}

impl Messages {
    /// Hands the messages on, as a bot does with its snapshot.
    fn take(&mut self) {
        black_box(&self.bytes);
        self.bytes.clear();
    }
}

/// One server and its clients, exchanging datagrams in memory.
struct World {
    server: ServerEndpoint,
    server_addr: SocketAddr,
    clients: Vec<ClientEndpoint>,
    /// The server's slot of each client, once connected.
    slots: Vec<Option<ClientIndex>>,
    now: Instant,
    unix: u64,
    buf: Vec<u8>,
    /// Datagrams from the clients, for the server.
    to_server: Datagrams<SocketAddr>,
    /// Datagrams from the server, for the clients (by index).
    to_clients: Datagrams<usize>,
    client_messages: Messages,
    input: Bytes,
    snapshot: Bytes,
}

impl World {
    fn new(clients: usize) -> Self {
        let key = shared::keys::dev_key();
        let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 7_777));
        let mut netcode = ServerConfig::new(PROTOCOL_ID, key, vec![server_addr]);
        netcode.max_clients = clients;
        let config = ServerEndpointConfig::new(netcode, channels::transport_config());
        let server = ServerEndpoint::new(config, &mut system_rng()).expect("a valid server");
        let now = Instant::now();
        let unix = unix_secs();
        let clients = (0..clients)
            .map(|i| {
                let token = shared::keys::mint_token(&key, vec![server_addr], i as u64, 600, 30)
                    .expect("a token");
                let mut client = ClientEndpoint::new(PROTOCOL_ID, channels::transport_config());
                client.connect(&token, now, unix).expect("connect");
                client
            })
            .collect::<Vec<_>>();
        let mut world = Self {
            server,
            server_addr,
            slots: vec![None; clients.len()],
            clients,
            now,
            unix,
            buf: vec![0; netcode::MAX_PACKET_BYTES],
            to_server: Datagrams::new(),
            to_clients: Datagrams::new(),
            client_messages: Messages::default(),
            input: Bytes::from(vec![7u8; 24]),
            snapshot: Bytes::from(vec![9u8; 130]),
        };
        for _ in 0..200 {
            world.now += Duration::from_millis(5);
            world.clients_send(false);
            world.server_turn(false);
            world.clients_receive();
            if world.slots.iter().all(Option::is_some) {
                return world;
            }
        }
        let connected = world.slots.iter().flatten().count();
        panic!(
            "only {connected} of {} clients connected",
            world.slots.len()
        );
    }

    /// Each client queues an input (when `input`) and hands its datagrams
    /// to the server's queue.
    fn clients_send(&mut self, input: bool) {
        for (i, client) in self.clients.iter_mut().enumerate() {
            if client.poll_timeout().is_some_and(|t| t <= self.now) {
                client.handle_timeout(self.now);
            }
            if input && client.is_connected() {
                client
                    .send(channels::MOVEMENT, self.input.clone())
                    .expect("an input fits");
            }
            while let Some(transmit) = client.poll_transmit(self.now, &mut self.buf) {
                self.to_server
                    .push(client_addr(i), &self.buf[..transmit.len]);
            }
        }
    }

    /// The server's work of one tick: every datagram in, the events, a
    /// snapshot per connected client (when `snapshots`), every datagram out.
    fn server_turn(&mut self, snapshots: bool) {
        let now = self.now;
        let (server, slots, unix) = (&mut self.server, &mut self.slots, self.unix);
        self.to_server.drain(|from, datagram| {
            server.handle_datagram(now, unix, from, datagram);
            while let Some(event) = server.poll_event() {
                if let EndpointEvent::Connected {
                    client, client_id, ..
                } = event
                {
                    slots[client_id as usize] = Some(client);
                }
                black_box(&event);
            }
        });
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        if snapshots {
            for slot in self.slots.iter().flatten() {
                self.server
                    .send(now, *slot, channels::SNAPSHOT, self.snapshot.clone())
                    .expect("a connected client");
            }
        }
        while let Some(transmit) = self.server.poll_transmit(now, &mut self.buf) {
            self.to_clients
                .push(client_of(transmit.destination), &self.buf[..transmit.len]);
        }
        while let Some(event) = self.server.poll_event() {
            black_box(&event);
        }
    }

    /// As a bot swarm does: every client's messages into one buffer, taken
    /// right away.
    fn clients_receive(&mut self) {
        let (clients, now, server) = (&mut self.clients, self.now, self.server_addr);
        let messages = &mut self.client_messages;
        self.to_clients.drain(|i, datagram| {
            let client = &mut clients[i];
            client.handle_datagram_into(now, server, datagram, messages);
            messages.take();
            while let Some(event) = client.poll_event() {
                if let ClientEndpointEvent::Disconnected { reason } = event {
                    panic!("client {i} disconnected: {reason:?}");
                }
            }
        });
    }

    /// One tick for callgrind, which collects inside
    /// [`measured_server_turn`] or the `measured_clients_*` functions.
    fn tick_for_callgrind(&mut self) {
        self.now += TICK;
        measured_clients_send(self);
        measured_server_turn(self);
        measured_clients_receive(self);
    }

    /// One tick; returns the time the server's part took.
    fn tick(&mut self) -> Duration {
        self.now += TICK;
        self.clients_send(true);
        let began = Instant::now();
        self.server_turn(true);
        let took = began.elapsed();
        self.clients_receive();
        took
    }
}

/// The server's part of one tick. Not inlined, so that callgrind can
/// collect inside it alone.
#[inline(never)]
fn measured_server_turn(world: &mut World) {
    world.server_turn(true);
}

/// The clients' inputs of one tick, for callgrind likewise.
#[inline(never)]
fn measured_clients_send(world: &mut World) {
    world.clients_send(true);
}

/// The clients taking the server's datagrams of one tick, likewise.
#[inline(never)]
fn measured_clients_receive(world: &mut World) {
    world.clients_receive();
}

fn endpoint(c: &mut Criterion) {
    let mut world = World::new(CLIENTS);
    // Warm up: acks, RTT estimates and windows settle.
    for _ in 0..90 {
        world.tick();
    }
    if std::env::var_os("ENDPOINT_BENCH_CALLGRIND").is_some() {
        for _ in 0..30 {
            world.tick_for_callgrind();
        }
        return;
    }
    let mut group = c.benchmark_group("server_endpoint_tick");
    group.sample_size(30);
    group.bench_function("2000_clients", |b| {
        b.iter_custom(|ticks| (0..ticks).map(|_| world.tick()).sum());
    });
    group.finish();
}

criterion_group!(benches, endpoint);
criterion_main!(benches);
