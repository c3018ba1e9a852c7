//! The steady-state game tick does no per-client allocation: 500 clients
//! moving every tick (inputs decoded, validated, integrated, 500 AOI
//! queries and 500 delta snapshots encoded and queued for `net-io`) cost a
//! bounded number of allocations per tick, not one or more per client.
//!
//! The bound is one allocation per ten clients: the per-tick fixed costs
//! (the batch handed to `net-io`, the drained event list, bevy's message
//! buffers) are a handful, and the encoded snapshots share 16 KiB chunks
//! (500 snapshots of ~100 bytes fill about four). Any allocation per
//! client or per snapshot on the hot path (a `Vec` per snapshot, a fresh
//! buffer per encode) costs at least 500 and fails the test.

#[path = "support/sim.rs"]
mod sim;

use sim::{CountingAlloc, Sim, allocations};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn a_steady_tick_with_500_moving_clients_allocates_less_than_once_per_ten_clients() {
    const CLIENTS: usize = 500;
    const TICKS: u64 = 30;
    let mut sim = Sim::new(CLIENTS, false);
    let mut during = 0;
    let mut snapshots = 0;
    let mut bytes = 0;
    for _ in 0..TICKS {
        sim.send_inputs();
        let before = allocations();
        sim.app.update();
        during += allocations() - before;
        let sent = sim.drain();
        assert_eq!(sent.chat, 0, "nobody chats in this test");
        snapshots += sent.snapshots;
        bytes += sent.bytes;
    }
    // The work was done: every client got a snapshot with its neighbours
    // every tick.
    assert_eq!(snapshots, CLIENTS * TICKS as usize);
    assert!(
        bytes / snapshots > 40,
        "{bytes} bytes in {snapshots} snapshots"
    );
    let per_tick = during / TICKS;
    assert!(
        per_tick < (CLIENTS / 10) as u64,
        "{per_tick} allocations per tick with {CLIENTS} clients"
    );
}
