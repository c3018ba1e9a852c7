//! The inventory core under the trade scenario's load: 2,000 players
//! online, each sending a trade operation every 0.5 s at 30 Hz (≈ 133
//! requests per batch): offers to a random partner (which cancel both
//! sides' other trades), counter-offers, accepts and cancels, so about a
//! thousand trades are open at any time. One measured iteration is one
//! batch: `prepare` and `complete(Ok)`; the commit itself runs on the
//! writer thread in the server and is not part of it.
//!
//! The account cases measure a player's connect: its account (24 slots,
//! 22 filled, and the most recent 256 remembered changes, each with its
//! stored reply) loaded and then evicted again at its disconnect.
//!
//! - "account load and evict": the whole load through a store that reads
//!   at once (SQLite's reads, the replies checked, the insert), as tests
//!   and tools run the core; until the `db-reader` thread, the server's
//!   tick paid this for every connect.
//! - "account load off the tick": what the server's tick pays now, the
//!   insert of an account read and prepared on `db-reader` (and its
//!   eviction).
//! - "account load on db-reader, prepare": the reply checks moved to
//!   `db-reader` with the reads ([`prepare_account`]).
//!
//! Run: `cargo bench -p server --bench inventory`. Instruction counts of
//! 30 batches only (no criterion):
//!
//! ```sh
//! INVENTORY_BENCH_CALLGRIND=1 valgrind --tool=callgrind \
//!     --toggle-collect='*measured_batch*' target/release/deps/inventory-HASH --bench
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::task::Poll;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use server::inventory::{
    AccountLoader, Catalogue, CoreConfig, Input, InventoryCore, LoadedAccount, Output,
    prepare_account,
};
use server::persistence::{BatchWrites, InventoryStore, SqliteStore, StoreError};
use shared::protocol::inventory::{
    InventoryOp, InventoryReply, InventoryRequest, InventorySnapshot, ItemId, ItemStack,
    REMEMBERED_REQUESTS, TradeOffer,
};

const PLAYERS: u64 = 2000;
/// One operation per player per 0.5 s at 30 Hz.
const REQUESTS_PER_BATCH: u64 = PLAYERS / 15;

struct Load {
    core: InventoryCore,
    store: SqliteStore,
    rng: u64,
    request_id: u64,
    /// The newest trade each player heard of, and its revision (from the
    /// outputs).
    trade_of: Vec<(u64, u64)>,
}

impl Load {
    fn new() -> Self {
        let mut store = SqliteStore::open_in_memory().expect("in-memory store");
        let catalogue = Arc::new(Catalogue::embedded().expect("embedded catalogue"));
        let core = InventoryCore::load(catalogue, CoreConfig::default(), &mut store)
            .expect("inventory core");
        let mut load = Self {
            core,
            store,
            rng: 0x5eed,
            request_id: 0,
            trade_of: vec![(0, 0); PLAYERS as usize + 1],
        };
        for account in 1..=PLAYERS {
            load.core.push(Input::Connected { account });
        }
        load.batch(resolve);
        // Warm up until about half the players are in a trade.
        for _ in 0..60 {
            load.queue_requests();
            load.batch(resolve);
        }
        load
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn queue_requests(&mut self) {
        for _ in 0..REQUESTS_PER_BATCH {
            let account = 1 + self.next() % PLAYERS;
            let (known, revision) = self.trade_of[account as usize];
            let op = match self.next() % 8 {
                0..=3 => InventoryOp::Offer {
                    with: 1 + self.next() % PLAYERS,
                    offer: TradeOffer { items: Vec::new() },
                },
                4..=6 => InventoryOp::Accept {
                    trade: known,
                    revision,
                },
                _ => InventoryOp::Cancel { trade: known },
            };
            self.request_id += 1;
            self.core.push(Input::Request {
                account,
                request: InventoryRequest {
                    request_id: self.request_id,
                    op,
                },
                position: None,
                tag: self.request_id,
            });
        }
        self.core.push(Input::Tick);
    }

    fn batch(&mut self, run: fn(&mut InventoryCore, &mut SqliteStore) -> Vec<Output>) -> usize {
        let outputs = run(&mut self.core, &mut self.store);
        for output in &outputs {
            if let Output::Trade { account, update } = output {
                self.trade_of[*account as usize] = (update.trade, update.revision);
            }
        }
        outputs.len()
    }
}

/// One batch, prepared and resolved.
fn resolve<L: AccountLoader + ?Sized>(core: &mut InventoryCore, loader: &mut L) -> Vec<Output> {
    match core.prepare(loader) {
        Some(_) => core.complete(Ok(())),
        None => Vec::new(),
    }
}

/// [`resolve`] for the measured batches only (not the warm-up). Not
/// inlined, so that callgrind can collect inside it alone.
#[inline(never)]
fn measured_batch(core: &mut InventoryCore, store: &mut SqliteStore) -> Vec<Output> {
    resolve(core, store)
}

fn inventory(c: &mut Criterion) {
    let mut load = Load::new();
    if std::env::var_os("INVENTORY_BENCH_CALLGRIND").is_some() {
        let mut outputs = 0;
        for _ in 0..30 {
            load.queue_requests();
            outputs += load.batch(measured_batch);
        }
        println!("30 batches of {REQUESTS_PER_BATCH} trade requests: {outputs} outputs");
        return;
    }
    c.bench_function("inventory batch, 2000 players trading", |b| {
        b.iter(|| {
            load.queue_requests();
            black_box(load.batch(measured_batch))
        });
    });
}

/// Accounts stored for the load case; each iteration loads the next.
const STORED_ACCOUNTS: u64 = 500;

/// A store of [`STORED_ACCOUNTS`] accounts at the bounds of what one
/// account keeps.
fn stored_accounts() -> SqliteStore {
    let mut store = SqliteStore::open_in_memory().expect("in-memory store");
    let mut slots = vec![None; 24];
    for (i, slot) in slots.iter_mut().take(22).enumerate() {
        *slot = Some(ItemStack {
            item: ItemId(1 + i as u32 % 4),
            count: 1 + i as u32,
        });
    }
    for account in 1..=STORED_ACCOUNTS {
        let snapshot = InventorySnapshot {
            version: REMEMBERED_REQUESTS as u64,
            slots: slots.clone(),
        };
        let applied = (1..=REMEMBERED_REQUESTS as u64)
            .map(|request_id| {
                let reply = InventoryReply {
                    request_id,
                    result: Ok(snapshot.clone()),
                    trade: None,
                };
                let bytes = shared::protocol::encode(&reply).expect("reply encodes");
                (account, request_id, bytes.to_vec())
            })
            .collect();
        let batch = BatchWrites {
            inventories: vec![(account, snapshot)],
            applied,
            ..BatchWrites::default()
        };
        store.commit(&batch).expect("stored");
    }
    store
}

/// Hands over an account read and prepared beforehand, as the
/// `db-reader` thread does.
struct Prepared(Option<LoadedAccount>);

impl AccountLoader for Prepared {
    fn load(&mut self, _: u64, _: usize) -> Poll<Result<LoadedAccount, StoreError>> {
        self.0
            .take()
            .map_or(Poll::Pending, |loaded| Poll::Ready(Ok(loaded)))
    }
}

fn account_load(c: &mut Criterion) {
    let mut store = stored_accounts();
    let catalogue = Arc::new(Catalogue::embedded().expect("embedded catalogue"));
    let config = CoreConfig::default();
    let slots = config.slots;
    let mut core = InventoryCore::load(catalogue, config, &mut store).expect("inventory core");
    let mut account = 0;
    c.bench_function(
        "inventory account load and evict, 256 remembered changes",
        |b| {
            b.iter(|| {
                account = account % STORED_ACCOUNTS + 1;
                core.push(Input::Connected { account });
                black_box(resolve(&mut core, &mut store));
                assert!(core.inventory(account).is_some(), "loaded");
                core.push(Input::Disconnected { account });
                black_box(resolve(&mut core, &mut store))
            });
        },
    );
    c.bench_function(
        "inventory account load off the tick: insert and evict, 256 remembered changes",
        |b| {
            b.iter_batched(
                || {
                    account = account % STORED_ACCOUNTS + 1;
                    let state = store.load_account(account).expect("stored account");
                    (account, Prepared(Some(prepare_account(state, slots))))
                },
                |(account, mut prepared)| {
                    core.push(Input::Connected { account });
                    black_box(resolve(&mut core, &mut prepared));
                    assert!(core.inventory(account).is_some(), "loaded");
                    core.push(Input::Disconnected { account });
                    black_box(resolve(&mut core, &mut prepared))
                },
                BatchSize::SmallInput,
            );
        },
    );
    c.bench_function(
        "inventory account load on db-reader, prepare, 256 remembered changes",
        |b| {
            b.iter_batched(
                || {
                    account = account % STORED_ACCOUNTS + 1;
                    store.load_account(account).expect("stored account")
                },
                |state| prepare_account(state, slots),
                BatchSize::SmallInput,
            );
        },
    );
}

criterion_group!(benches, inventory, account_load);
criterion_main!(benches);
