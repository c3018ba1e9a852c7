//! The whole game tick with simulated clients: network (in-process
//! loopback, no sockets), movement, interest and chat plugins, every
//! client moving each tick and chatting nearby every 5 s (the default
//! scenario's load). Prints allocations per tick at 500 and 2,000 clients
//! and times one tick at 2,000 with criterion.
//!
//! Run: `cargo bench -p server --bench tick`. Instruction counts of the
//! measured ticks only (2,000 clients, 30 ticks, no criterion):
//!
//! ```sh
//! TICK_BENCH_CALLGRIND=1 valgrind --tool=callgrind \
//!     --toggle-collect='*measured_tick*' target/release/deps/tick-HASH --bench
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/support/sim.rs"]
mod sim;

use sim::{CountingAlloc, Sim, allocations};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// One server tick; returns the allocations it made. Not inlined, so that
/// callgrind can collect inside it alone.
#[inline(never)]
fn measured_tick(sim: &mut Sim) -> u64 {
    let before = allocations();
    sim.app.update();
    allocations() - before
}

fn allocations_per_tick(c: &mut Criterion) {
    let callgrind = std::env::var_os("TICK_BENCH_CALLGRIND").is_some();
    let (sizes, ticks): (&[usize], u64) = if callgrind {
        (&[2000], 30)
    } else {
        (&[500, 2000], 150)
    };
    for &clients in sizes {
        let mut sim = Sim::new(clients, true);
        let mut during = 0;
        let mut sent = sim::Sent::default();
        for _ in 0..ticks {
            sim.send_inputs();
            during += measured_tick(&mut sim);
            let tick = sim.drain();
            sent.snapshots += tick.snapshots;
            sent.chat += tick.chat;
            sent.bytes += tick.bytes;
        }
        println!(
            "{clients} clients: {:.1} allocations per tick; per tick {:.0} snapshots, \
             {:.1} chat messages, {:.0} payload bytes",
            during as f64 / ticks as f64,
            sent.snapshots as f64 / ticks as f64,
            sent.chat as f64 / ticks as f64,
            sent.bytes as f64 / ticks as f64,
        );
    }
    if callgrind {
        return;
    }

    let mut group = c.benchmark_group("full_tick");
    group.sample_size(30);
    let mut sim = Sim::new(2000, true);
    group.bench_function("2000_clients", |b| {
        b.iter(|| {
            sim.send_inputs();
            sim.app.update();
            black_box(sim.drain())
        });
    });
    group.finish();
}

criterion_group!(benches, allocations_per_tick);
criterion_main!(benches);
