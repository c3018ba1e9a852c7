//! Movement replication costs.
//!
//! 1. Bandwidth: one client with 50 visible neighbours that all move every
//!    tick, at 30 Hz; bytes per client per second with full snapshots
//!    (no acks) and with delta encoding (the client acks every snapshot,
//!    the ack reaching the server 3 ticks = 100 ms later). Printed, and
//!    criterion times one snapshot encode.
//! 2. Server time per tick with 5,000 players (every one a viewer, moving
//!    every tick): a whole `app.update()` of the movement and interest
//!    plugins (input validation, grid rebuild, 5,000 AOI queries, 5,000
//!    budgeted delta snapshots), spread over the default 2 km world and
//!    crowded into 500 m.
//!
//! Run: `cargo bench -p server --bench movement`

use std::collections::VecDeque;
use std::hint::black_box;

use bevy_app::App;
use bevy_ecs::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use glam::Vec2;
use server::interest::{
    Candidate, ClientView, EncodeScratch, InterestConfig, InterestPlugin, LocalSnapshot,
};
use server::movement::{MoveCommand, MovementConfig, MovementPlugin, MovementViolations, Mover};
use server::net::{Clients, Outbox};
use server::tick::{ManualClock, TickConfig, TickPlugin};
use server::world::Position;
use shared::movement::{ApplyScratch, MovementRules, SnapshotReceiver};
use shared::protocol::NetMessage;
use shared::protocol::movement::{MoveInput, Snapshot, quantize};

const HZ: f32 = 30.0;
const NEIGHBOURS: usize = 50;

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// 51 wandering entities (the viewer is id 1) in a 50 m square around
/// the viewer: every one visible and moving.
struct Neighbourhood {
    positions: Vec<Vec2>,
    headings: Vec<Vec2>,
    rng: Rng,
    rules: MovementRules,
}

impl Neighbourhood {
    fn new() -> Self {
        let mut rng = Rng(42);
        let positions = (0..=NEIGHBOURS)
            .map(|i| {
                if i == 0 {
                    Vec2::ZERO
                } else {
                    Vec2::new(rng.unit() - 0.5, rng.unit() - 0.5) * 50.0
                }
            })
            .collect();
        Self {
            positions,
            headings: vec![Vec2::X; NEIGHBOURS + 1],
            rng,
            rules: MovementRules::default(),
        }
    }

    fn step(&mut self) {
        for (p, h) in self.positions.iter_mut().zip(&mut self.headings) {
            if self.rng.unit() < 0.1 {
                let angle = self.rng.unit() * std::f32::consts::TAU;
                *h = Vec2::from_angle(angle) * self.rules.max_speed;
            }
            // Stay in the neighbourhood.
            let next = self.rules.step(*p, *h, 1.0 / HZ);
            if next.length() > 28.0 {
                *h = -*h;
            }
            *p = self.rules.step(*p, *h, 1.0 / HZ);
        }
    }

    fn candidates(&self, out: &mut Vec<Candidate>) {
        out.clear();
        let own = self.positions[0];
        out.extend(self.positions.iter().enumerate().map(|(i, p)| Candidate {
            id: i as u32 + 1,
            position: quantize(*p),
            distance_sq: if i == 0 {
                -1.0
            } else {
                p.distance_squared(own)
            },
        }));
    }
}

/// Mean snapshot bytes over `ticks` ticks; `ack_delay` ticks between a
/// snapshot and its ack arriving (`None`: never acked, so always full).
fn mean_snapshot_bytes(ticks: u32, ack_delay: Option<usize>) -> f64 {
    let limits = InterestConfig {
        snapshot_budget_bytes: 60_000,
        ..InterestConfig::default()
    }
    .limits();
    let mut world = Neighbourhood::new();
    let mut view = ClientView::new();
    let mut client = SnapshotReceiver::new();
    let mut lists = ApplyScratch::default();
    let mut acks: VecDeque<u32> = VecDeque::new();
    let mut scratch = EncodeScratch::default();
    let mut body = Vec::new();
    let mut total = 0usize;
    for tick in 1..=ticks {
        world.step();
        if let Some(delay) = ack_delay
            && acks.len() > delay
            && let Some(ack) = acks.pop_front()
        {
            view.acknowledge(ack);
        }
        world.candidates(&mut scratch.candidates);
        let stats = view.encode(tick, 1, tick, &mut scratch, limits, &mut body);
        assert!(!stats.budget_limited);
        let snapshot = Snapshot::decode_body(&body).unwrap();
        total += shared::protocol::encode(&snapshot).unwrap().len();
        client.apply(&snapshot, &mut lists).unwrap();
        acks.push_back(client.ack());
    }
    total as f64 / f64::from(ticks)
}

fn bandwidth(c: &mut Criterion) {
    let full = mean_snapshot_bytes(3000, None);
    let delta = mean_snapshot_bytes(3000, Some(3));
    println!(
        "snapshot bandwidth, {NEIGHBOURS} moving neighbours at {HZ} Hz: \
         full {full:.1} B/tick = {:.0} B/s; delta {delta:.1} B/tick = {:.0} B/s ({:.0}% of full)",
        full * f64::from(HZ),
        delta * f64::from(HZ),
        100.0 * delta / full
    );

    let limits = InterestConfig::default().limits();
    let mut world = Neighbourhood::new();
    let mut scratch = EncodeScratch::default();
    let mut view = ClientView::new();
    let mut body = Vec::new();
    let mut tick = 0;
    c.bench_function("encode_snapshot_50_neighbours_delta", |b| {
        b.iter(|| {
            tick += 1;
            world.step();
            world.candidates(&mut scratch.candidates);
            view.acknowledge(tick - 1);
            black_box(view.encode(tick, 1, tick, &mut scratch, limits, &mut body))
        });
    });
}

fn drain(mut snapshots: MessageReader<LocalSnapshot>) {
    black_box(snapshots.read().count());
}

struct Server {
    app: App,
    players: Vec<(Entity, Vec2)>,
    seq: u32,
    rng: Rng,
}

impl Server {
    fn new(players: usize, half_extent: f32) -> Self {
        let mut app = App::new();
        app.add_plugins(TickPlugin {
            config: TickConfig::default(),
            clock: ManualClock::new(),
        })
        .init_resource::<Clients>()
        .init_resource::<Outbox>()
        .add_plugins((MovementPlugin, InterestPlugin))
        .add_systems(bevy_app::Last, drain);
        app.finish();
        app.cleanup();
        let config = app.world().resource::<MovementConfig>().clone();
        let mut rng = Rng(5);
        let players = (0..players)
            .map(|_| {
                let at = Vec2::new(rng.unit() * 2.0 - 1.0, rng.unit() * 2.0 - 1.0) * half_extent;
                let entity = app
                    .world_mut()
                    .spawn((
                        Position(at),
                        Mover::new(&config),
                        MovementViolations::default(),
                        server::interest::Viewer::default(),
                    ))
                    .id();
                (entity, Vec2::X)
            })
            .collect();
        let mut server = Self {
            app,
            players,
            seq: 0,
            rng,
        };
        // Warm up: views populated, deltas flowing.
        for _ in 0..10 {
            server.tick();
        }
        server
    }

    fn tick(&mut self) {
        self.seq += 1;
        let ack = self.seq.saturating_sub(3);
        for (entity, heading) in &mut self.players {
            if self.rng.unit() < 0.1 {
                *heading = Vec2::from_angle(self.rng.unit() * std::f32::consts::TAU) * 7.0;
            }
            self.app.world_mut().write_message(MoveCommand {
                entity: *entity,
                input: MoveInput {
                    seq: self.seq,
                    velocity: *heading,
                    ack_snapshot: ack,
                },
            });
        }
        self.app.update();
    }
}

fn server_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_tick_5000_players");
    group.sample_size(20);
    for (name, half_extent) in [("spread_2km", 990.0), ("crowded_500m", 250.0)] {
        let mut server = Server::new(5000, half_extent);
        group.bench_function(name, |b| b.iter(|| server.tick()));
    }
    group.finish();
}

criterion_group!(benches, bandwidth, server_tick);
criterion_main!(benches);
