//! Simulated clients for the whole game tick: the network, movement,
//! interest and chat plugins, driven through [`NetServer::loopback`]
//! (no sockets, no threads, deterministic). Every client sends a
//! `MoveInput` each tick (acknowledging the snapshot of two ticks before,
//! like a ~60 ms round trip) and, when chat is on, a nearby chat line every
//! 5 s, like `assets/scenarios/default.toml`. Shared by the tick benchmark
//! and the allocation test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bevy_app::App;
use glam::Vec2;
use server::chat::ChatPlugin;
use server::console::AdminKick;
use server::interest::{InterestPlugin, SnapshotTick};
use server::movement::MovementPlugin;
use server::net::{Loopback, NetPlugin, NetServer};
use server::shutdown::ShutdownStarted;
use server::tick::{ManualClock, TickConfig, TickPlugin};
use shared::io::{ClientId, NetCommand, NetEvent};
use shared::netcode::ClientIndex;
use shared::protocol::chat::{ChatScope, ChatSend};
use shared::protocol::movement::MoveInput;
use shared::protocol::{self, EncodeBuffer, channels};

/// The system allocator, counting the calls that hand out memory
/// (`alloc`, `alloc_zeroed`, `realloc`) per thread.
pub(crate) struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`.
#[expect(
    unsafe_code,
    reason = "a counting GlobalAlloc must implement an unsafe trait"
)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations so far on this thread (the simulation runs on one).
pub(crate) fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

struct Client {
    id: ClientId,
    seq: u32,
    heading: Vec2,
}

/// What the server sent in one tick.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// `NetCommand::Send`s on the snapshot channel.
    pub(crate) snapshots: usize,
    /// `NetCommand::Send`s on the chat channel.
    pub(crate) chat: usize,
    /// Payload bytes of all of them.
    pub(crate) bytes: usize,
}

/// `clients` connected players and the server they play on.
pub(crate) struct Sim {
    /// The server.
    pub(crate) app: App,
    net: Loopback,
    /// Client messages share chunks, as `net-io` delivers them (one
    /// allocation per many messages, not one each).
    encoder: EncodeBuffer,
    clients: Vec<Client>,
    chat: bool,
    tick: u64,
    rng: u64,
}

impl Sim {
    /// Connects `clients` players and runs 60 ticks, so that every view
    /// is populated and deltas flow.
    pub(crate) fn new(clients: usize, chat: bool) -> Self {
        let (server, net) = NetServer::loopback();
        let mut app = App::new();
        app.add_plugins(TickPlugin {
            config: TickConfig::default(),
            clock: ManualClock::new(),
        })
        .insert_resource(server)
        // Read by the network plugin; sent by the console and shutdown
        // plugins, which are not part of the tick's work.
        .add_message::<AdminKick>()
        .add_message::<ShutdownStarted>()
        .add_plugins((
            NetPlugin,
            MovementPlugin,
            InterestPlugin,
            ChatPlugin { config: None },
        ));
        app.finish();
        app.cleanup();
        let clients = (0..clients)
            .map(|i| {
                let id = ClientId {
                    slot: ClientIndex::from_slot(i as u32),
                    account: i as u64 + 1,
                    session: i as u64 + 1,
                };
                net.events
                    .send(NetEvent::Connected { client: id })
                    .expect("the app holds the receiver");
                Client {
                    id,
                    seq: 0,
                    heading: Vec2::X,
                }
            })
            .collect();
        let mut sim = Self {
            app,
            net,
            encoder: EncodeBuffer::default(),
            clients,
            chat,
            tick: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        };
        for _ in 0..60 {
            sim.send_inputs();
            sim.app.update();
            sim.drain();
        }
        sim
    }

    fn unit(&mut self) -> f32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Queues this tick's client messages, as `net-io` would deliver them.
    pub(crate) fn send_inputs(&mut self) {
        self.tick += 1;
        let ack = self
            .app
            .world()
            .resource::<SnapshotTick>()
            .0
            .saturating_sub(1);
        for i in 0..self.clients.len() {
            // Turn about every 2 s, at 3 m/s (the default scenario).
            if self.unit() < 1.0 / 60.0 {
                let angle = self.unit() * std::f32::consts::TAU;
                self.clients[i].heading = Vec2::from_angle(angle) * 3.0;
            }
            let client = &mut self.clients[i];
            client.seq += 1;
            let input = MoveInput {
                seq: client.seq,
                velocity: client.heading,
                ack_snapshot: ack,
            };
            let payload = self.encoder.encode(&input);
            self.message(i, channels::MOVEMENT, payload);
            if self.chat && (self.tick + i as u64).is_multiple_of(150) {
                let send = ChatSend {
                    client_ref: self.tick as u32,
                    scope: ChatScope::Nearby,
                    text: format!("hello from {i} at tick {}", self.tick),
                };
                let payload = self.encoder.encode(&send);
                self.message(i, channels::CHAT, payload);
            }
        }
    }

    fn message(
        &self,
        i: usize,
        channel: shared::transport::ChannelId,
        payload: Result<bytes::Bytes, protocol::EncodeError>,
    ) {
        let event = NetEvent::Message {
            client: self.clients[i].id,
            channel,
            payload: payload.expect("client messages encode"),
        };
        self.net
            .events
            .send(event)
            .expect("the app holds the receiver");
    }

    /// Takes what the server sent since the last call.
    pub(crate) fn drain(&mut self) -> Sent {
        let mut sent = Sent::default();
        for batch in self.net.commands.try_iter() {
            for command in batch {
                if let NetCommand::Send {
                    channel, payload, ..
                } = command
                {
                    sent.bytes += payload.len();
                    if channel == channels::SNAPSHOT {
                        sent.snapshots += 1;
                    } else if channel == channels::CHAT {
                        sent.chat += 1;
                    }
                }
            }
        }
        sent
    }
}
