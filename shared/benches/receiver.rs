//! A bot swarm's snapshot work per game tick: 2,000 clients, each
//! decoding and applying one delta snapshot of ≈ 40 visible entities
//! (`assets/scenarios/default.toml`'s view at 2,000 bots), its baseline two
//! ticks old (the acknowledgement a round trip of ≈ 30 ms gives at 30 Hz).
//! Every receiver is touched once a tick, 2,000 receivers apart, as in
//! `client_headless load`: what this measures includes the cache misses of
//! per-receiver state, which a one-receiver benchmark would not show.
//!
//! Run: `cargo bench -p shared --bench receiver` (the time includes two
//! `Instant::now` per snapshot). Instructions and simulated cache misses of
//! 30 measured ticks, the snapshot's decode and apply only (its bytes are
//! written, untimed, just before, as a datagram's are):
//!
//! ```sh
//! RECEIVER_BENCH_CALLGRIND=1 valgrind --tool=callgrind --cache-sim=yes \
//!     --LL=1048576,8,64 --toggle-collect='*measured_apply*' \
//!     target/release/deps/receiver-HASH --bench
//! ```

#![expect(
    clippy::disallowed_methods,
    reason = "the benchmark times its snapshots with Instant"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use shared::movement::{ApplyScratch, SnapshotReceiver};
use shared::protocol::EncodeBuffer;
use shared::protocol::movement::{EntityAdded, EntityMoved, Snapshot};

const RECEIVERS: u32 = 2_000;
/// Entities each receiver sees.
const VIEW: u32 = 40;
/// Ticks between one entity leaving the view and the next entering.
const CHURN_TICKS: u32 = 8;
/// Ticks between a snapshot and its baseline.
const BASELINE_AGE: u32 = 2;

/// The entities receiver `r` sees at `tick`, `(id, quantized x, y)` by id:
/// a window of ids sliding by one every [`CHURN_TICKS`]; three of four
/// entities move every tick, by a few units.
fn view(r: u32, tick: u32, out: &mut Vec<(u32, i32, i32)>) {
    out.clear();
    let first = r * 3 + tick / CHURN_TICKS + 1;
    for id in first..first + VIEW {
        let (vx, vy) = if id % 4 == 0 {
            (0, 0)
        } else {
            ((id % 7) as i32 - 3, (id % 5) as i32 - 2)
        };
        let t = tick as i32;
        out.push((
            id,
            (id % 2_000) as i32 * 16 + vx * t,
            (id / 7) as i32 + vy * t,
        ));
    }
}

/// Receiver `r`'s snapshot at `tick`, as a server writes it.
fn snapshot(
    r: u32,
    tick: u32,
    now: &mut Vec<(u32, i32, i32)>,
    base: &mut Vec<(u32, i32, i32)>,
) -> Snapshot {
    view(r, tick, now);
    let id_base = r * 3;
    let mut snapshot = Snapshot {
        tick,
        last_input: tick,
        you: now[VIEW as usize / 2].0,
        id_base,
        ..Snapshot::default()
    };
    let gaps = |ids: &mut dyn Iterator<Item = u32>| -> Vec<u32> {
        let mut previous = id_base;
        ids.map(|id| {
            let gap = id - previous;
            previous = id;
            gap
        })
        .collect()
    };
    if tick <= BASELINE_AGE {
        let ids = gaps(&mut now.iter().map(|e| e.0));
        snapshot.added = ids
            .into_iter()
            .zip(now.iter())
            .map(|(id_gap, &(_, x, y))| EntityAdded { id_gap, x, y })
            .collect();
        return snapshot;
    }
    snapshot.baseline_age = BASELINE_AGE;
    view(r, tick - BASELINE_AGE, base);
    let in_view = |list: &[(u32, i32, i32)], id: u32| list.binary_search_by_key(&id, |e| e.0);
    let removed: Vec<u32> = base
        .iter()
        .map(|e| e.0)
        .filter(|&id| in_view(now, id).is_err())
        .collect();
    snapshot.removed = gaps(&mut removed.into_iter());
    let added: Vec<_> = now
        .iter()
        .filter(|e| in_view(base, e.0).is_err())
        .copied()
        .collect();
    let ids = gaps(&mut added.iter().map(|e| e.0));
    snapshot.added = ids
        .into_iter()
        .zip(&added)
        .map(|(id_gap, &(_, x, y))| EntityAdded { id_gap, x, y })
        .collect();
    let moved: Vec<_> = now
        .iter()
        .filter_map(|&(id, x, y)| {
            let old = base[in_view(base, id).ok()?];
            (old.1 != x || old.2 != y).then_some((id, x - old.1, y - old.2))
        })
        .collect();
    let ids = gaps(&mut moved.iter().map(|e| e.0));
    snapshot.moved = ids
        .into_iter()
        .zip(&moved)
        .map(|(id_gap, &(_, dx, dy))| EntityMoved { id_gap, dx, dy })
        .collect();
    snapshot
}

/// What a bot worker lends its bots: a snapshot to decode into and the
/// receiver's working lists.
type Scratch = (Snapshot, ApplyScratch);

struct Swarm {
    receivers: Vec<SnapshotReceiver>,
    scratch: Scratch,
    tick: u32,
    payload: EncodeBuffer,
    now: Vec<(u32, i32, i32)>,
    base: Vec<(u32, i32, i32)>,
}

impl Swarm {
    fn new() -> Self {
        Self {
            receivers: (0..RECEIVERS).map(|_| SnapshotReceiver::new()).collect(),
            scratch: (Snapshot::default(), ApplyScratch::default()),
            tick: 0,
            payload: EncodeBuffer::default(),
            now: Vec::new(),
            base: Vec::new(),
        }
    }

    /// One tick: every receiver applies its snapshot, through `apply`.
    fn tick(&mut self, mut apply: impl FnMut(&mut SnapshotReceiver, &mut Scratch, &[u8])) {
        self.tick += 1;
        for (r, receiver) in self.receivers.iter_mut().enumerate() {
            let snapshot = snapshot(r as u32, self.tick, &mut self.now, &mut self.base);
            let payload = self.payload.encode(&snapshot).expect("a snapshot encodes");
            apply(receiver, &mut self.scratch, &payload);
        }
    }
}

/// [`apply`], in the calls callgrind counts.
#[inline(never)]
fn measured_apply(receiver: &mut SnapshotReceiver, scratch: &mut Scratch, payload: &[u8]) {
    apply(receiver, scratch, payload);
}

/// Decodes and applies one snapshot.
#[inline(always)]
fn apply(receiver: &mut SnapshotReceiver, scratch: &mut Scratch, payload: &[u8]) {
    scratch.0.decode_from(payload).expect("a snapshot decodes");
    receiver
        .apply(&scratch.0, &mut scratch.1)
        .expect("the snapshot applies");
    black_box(receiver.ack());
}

fn receiver(c: &mut Criterion) {
    let mut swarm = Swarm::new();
    // Warm up: every receiver's history fills.
    for _ in 0..60 {
        swarm.tick(apply);
    }
    if std::env::var_os("RECEIVER_BENCH_CALLGRIND").is_some() {
        for _ in 0..30 {
            swarm.tick(measured_apply);
        }
        return;
    }
    let mut group = c.benchmark_group("snapshot_receive_tick");
    group.sample_size(30);
    group.bench_function("2000_receivers", |b| {
        b.iter_custom(|ticks| {
            let mut spent = Duration::ZERO;
            for _ in 0..ticks {
                swarm.tick(|receiver, scratch, payload| {
                    let start = Instant::now();
                    apply(receiver, scratch, payload);
                    spent += start.elapsed();
                });
            }
            spent
        });
    });
    group.finish();
}

criterion_group!(benches, receiver);
criterion_main!(benches);
