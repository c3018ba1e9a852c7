//! The inventory rules over a real SQLite store, without bevy: examples of
//! each operation, then a property test over random operation sequences
//! (several players, trades racing disconnects, repeated request ids,
//! failing commits) that checks the ledger and the stacks after every
//! batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::task::Poll;

use proptest::prelude::*;
use server::inventory::{
    AccountLoader, Batch, Catalogue, CoreConfig, Input, InventoryCore, LOAD_RETRY_TICKS,
    LoadedAccount, Output, prepare_account,
};
use server::persistence::{
    AccountState, AuditReport, BatchWrites, Counters, InventoryStore, ItemTotals, LedgerRow,
    SqliteStore, StoreError, WorldState,
};
use shared::protocol::inventory::{
    InventoryError, InventoryOp, InventoryReply, InventoryRequest, InventorySnapshot,
    InventoryTracker, ItemId, ItemStack, OfferedStack, REMEMBERED_REQUESTS, TradeOffer, TradeState,
    TradeUpdate, WorldItem,
};

/// A SQLite store whose next commit can be made to fail.
struct FlakyStore {
    inner: SqliteStore,
    fail_next: bool,
    /// Loads that fail before one succeeds.
    failing_loads: usize,
    loads: usize,
    /// Stored replies come back as bytes no server decodes (stored by a
    /// server of another protocol version).
    garble_replies: bool,
    /// An account whose every load fails (a damaged row).
    unloadable: Option<u64>,
}

impl InventoryStore for FlakyStore {
    fn load_world(&mut self) -> Result<WorldState, StoreError> {
        self.inner.load_world()
    }
    fn load_account(&mut self, account: u64) -> Result<AccountState, StoreError> {
        self.loads += 1;
        if self.unloadable == Some(account) {
            return Err(StoreError::Injected);
        }
        if self.failing_loads > 0 {
            self.failing_loads -= 1;
            return Err(StoreError::Injected);
        }
        let mut state = self.inner.load_account(account)?;
        if self.garble_replies {
            for (_, reply) in &mut state.applied {
                *reply = vec![0xff; 3];
            }
        }
        Ok(state)
    }
    fn commit(&mut self, batch: &BatchWrites) -> Result<(), StoreError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(StoreError::Injected);
        }
        self.inner.commit(batch)
    }
    fn audit(&mut self) -> Result<AuditReport, StoreError> {
        self.inner.audit()
    }
}

/// Loads as the `db-reader` thread does them: an account is read when it
/// is first asked for, and what was read is handed out only after the
/// next `delays[i]` asks (the delays taken in turn, one per read), while
/// the core goes on and commits. A forgotten account's read is kept and
/// handed to the account's next session, as the reader does with a read
/// that is still running when the player comes back.
#[derive(Default)]
struct LateLoads {
    delays: Vec<u8>,
    next_delay: usize,
    /// account → what was read, and the asks left before it is handed out.
    reads: HashMap<u64, (Result<AccountState, StoreError>, u8)>,
    /// Asks, by account.
    asks: HashMap<u64, usize>,
    forgotten: Vec<u64>,
}

impl LateLoads {
    fn asks(&self, account: u64) -> usize {
        self.asks.get(&account).copied().unwrap_or(0)
    }
}

/// [`LateLoads`] reading from the harness's store.
struct Late<'a> {
    loads: &'a mut LateLoads,
    store: &'a mut FlakyStore,
}

impl AccountLoader for Late<'_> {
    fn load(&mut self, account: u64, slots: usize) -> Poll<Result<LoadedAccount, StoreError>> {
        *self.loads.asks.entry(account).or_default() += 1;
        if !self.loads.reads.contains_key(&account) {
            let read = self.store.load_account(account);
            let delays = &self.loads.delays;
            let delay = delays.get(self.loads.next_delay % delays.len().max(1));
            self.loads.next_delay += 1;
            self.loads
                .reads
                .insert(account, (read, delay.copied().unwrap_or(0)));
        }
        if let Some((_, left)) = self.loads.reads.get_mut(&account)
            && *left > 0
        {
            *left -= 1;
            return Poll::Pending;
        }
        let (read, _) = self.loads.reads.remove(&account).expect("read above");
        Poll::Ready(read.map(|state| prepare_account(state, slots)))
    }

    fn forget(&mut self, account: u64) {
        self.loads.forgotten.push(account);
    }
}

const SLOTS: usize = 6;

fn config() -> CoreConfig {
    CoreConfig {
        slots: SLOTS,
        max_world_items: 12,
        spawn_every_ticks: 1,
        spawner_target: 8,
        ..CoreConfig::default()
    }
}

struct Harness {
    core: InventoryCore,
    store: FlakyStore,
    outputs: Vec<Output>,
    /// Loads that land later; `None`: loads read at once from `store`.
    late: Option<LateLoads>,
}

impl Harness {
    fn new() -> Self {
        Self::on(SqliteStore::open_in_memory().unwrap())
    }

    /// A harness on what `inner` holds.
    fn on(inner: SqliteStore) -> Self {
        Self::on_with(inner, config())
    }

    /// A harness on what `inner` holds, with `config`.
    fn on_with(inner: SqliteStore, config: CoreConfig) -> Self {
        let mut store = FlakyStore {
            inner,
            fail_next: false,
            failing_loads: 0,
            loads: 0,
            garble_replies: false,
            unloadable: None,
        };
        let catalogue = Arc::new(Catalogue::embedded().unwrap());
        let core = InventoryCore::load(catalogue, config, &mut store).unwrap();
        Self {
            core,
            store,
            outputs: Vec::new(),
            late: None,
        }
    }

    /// A harness whose loads land later ([`LateLoads`] with `delays`).
    fn with_late_loads(delays: Vec<u8>) -> Self {
        Self {
            late: Some(LateLoads {
                delays,
                ..LateLoads::default()
            }),
            ..Self::new()
        }
    }

    fn late(&mut self) -> &mut LateLoads {
        self.late.as_mut().expect("a harness with late loads")
    }

    fn prepare(&mut self) -> Option<Batch> {
        match &mut self.late {
            Some(loads) => self.core.prepare(&mut Late {
                loads,
                store: &mut self.store,
            }),
            None => self.core.prepare(&mut self.store),
        }
    }

    fn push(&mut self, input: Input) {
        if let Some(out) = self.core.push(input) {
            self.outputs.push(out);
        }
    }

    /// Prepares, commits (failing when `fail`) and completes one batch.
    fn flush(&mut self, fail: bool) -> Vec<Output> {
        let Some(batch) = self.prepare() else {
            return std::mem::take(&mut self.outputs);
        };
        self.commit(batch, fail)
    }

    /// Commits `batch` (failing when `fail`) and completes it: with the
    /// outputs since the last look.
    fn commit(&mut self, batch: Batch, fail: bool) -> Vec<Output> {
        self.store.fail_next = fail;
        let result = if batch.writes.is_empty() {
            Ok(())
        } else {
            self.store.commit(&batch.writes)
        };
        self.store.fail_next = false;
        let mut out = std::mem::take(&mut self.outputs);
        out.extend(self.core.complete(result));
        out
    }

    fn request(&mut self, account: u64, request_id: u64, op: InventoryOp) -> InventoryReply {
        self.exchange(account, request_id, op).0
    }

    /// One request in a batch of its own: its reply and every output.
    fn exchange(
        &mut self,
        account: u64,
        request_id: u64,
        op: InventoryOp,
    ) -> (InventoryReply, Vec<Output>) {
        self.push(request_input(account, request_id, op));
        let out = self.flush(false);
        let reply = reply_of(&out, account, request_id).expect("a reply");
        (reply, out)
    }

    fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.push(Input::Tick);
        }
        self.flush(false);
    }

    fn audit(&mut self) -> AuditReport {
        self.store.audit().unwrap()
    }
}

/// `account`'s request `request_id` (tagged with its id), as the game
/// pushes it.
fn request_input(account: u64, request_id: u64, op: InventoryOp) -> Input {
    Input::Request {
        account,
        request: InventoryRequest { request_id, op },
        position: None,
        tag: request_id,
    }
}

fn reply_of(out: &[Output], account: u64, request_id: u64) -> Option<InventoryReply> {
    out.iter().find_map(|o| match o {
        Output::Reply {
            account: a, reply, ..
        } if *a == account && reply.request_id == request_id => Some(reply.clone()),
        _ => None,
    })
}

/// The last state of `trade` that `account` was told of in `out`.
fn trade_seen(out: &[Output], account: u64, trade: u64) -> Option<TradeUpdate> {
    out.iter().rev().find_map(|o| match o {
        Output::Trade {
            account: a, update, ..
        } if *a == account && update.trade == trade => Some(update.clone()),
        _ => None,
    })
}

fn stacks(inv: &InventorySnapshot) -> Vec<(u32, u32)> {
    inv.slots
        .iter()
        .flatten()
        .map(|s| (s.item.0, s.count))
        .collect()
}

/// A world not around the origin (`[movement]` from 0 to 2,000 m): the
/// spawner places its items around the world's centre, where players can
/// reach them; around the origin, three quarters of them were out of it.
#[test]
fn items_spawn_around_the_worlds_centre() {
    let center = glam::Vec2::new(1_000.0, 1_000.0);
    let mut h = Harness::on_with(
        SqliteStore::open_in_memory().unwrap(),
        CoreConfig {
            world_center: center,
            ..config()
        },
    );
    h.ticks(8);
    let extent = config().world_extent;
    let positions: Vec<glam::Vec2> = h.core.world_items().map(|w| w.position).collect();
    assert_eq!(positions.len(), 8);
    for position in positions {
        assert!(
            (position - center).abs().max_element() <= extent,
            "{position} is not within {extent} m of {center}"
        );
    }
}

/// Spawns world items and has `account` pick up everything.
fn gather(h: &mut Harness, account: u64, first_request: u64) -> InventorySnapshot {
    h.ticks(8);
    let ids: Vec<u64> = h.core.world_items().map(|w| w.id).collect();
    let mut last = None;
    for (i, id) in ids.into_iter().enumerate() {
        let reply = h.request(
            account,
            first_request + i as u64,
            InventoryOp::PickUp { world_item: id },
        );
        if let Ok(inv) = reply.result {
            last = Some(inv);
        }
    }
    last.expect("picked something up")
}

#[test]
fn pickups_move_items_from_the_world_and_keep_the_ledger_balanced() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.ticks(8);
    assert_eq!(
        h.core.world_items().count(),
        8,
        "the spawner fills up to its target"
    );
    let before = h.audit();
    assert!(before.balanced && before.integrity_ok, "{before:?}");
    let minted: u64 = before.items.values().map(|t| t.minted).sum();
    assert!(minted >= 8);

    let inv = gather(&mut h, 1, 100);
    assert!(inv.version >= 1);
    let after = h.audit();
    assert!(after.balanced, "{after:?}");
    let held: u64 = after.items.values().map(|t| t.held).sum();
    let in_world: u64 = after.items.values().map(|t| t.in_world).sum();
    assert_eq!(
        held + in_world,
        after.items.values().map(|t| t.minted).sum::<u64>()
    );
    assert!(held > 0);
    h.core.check_stacks().unwrap();
}

#[test]
fn a_repeated_request_id_is_applied_once_and_answered_with_the_original_reply() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    let inv = gather(&mut h, 1, 100);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    let first = h.request(1, 7, InventoryOp::Drop { slot, count: 1 });
    assert!(first.result.is_ok());
    let again = h.request(1, 7, InventoryOp::Drop { slot, count: 1 });
    assert_eq!(again, first);
    let listed = h.request(1, 8, InventoryOp::List).result.unwrap();
    assert_eq!(listed, first.result.clone().unwrap(), "dropped once");

    // Remembered across a reconnect (it is stored with the change).
    h.push(Input::Disconnected { account: 1 });
    h.flush(false);
    h.push(Input::Connected { account: 1 });
    assert_eq!(h.request(1, 7, InventoryOp::List), first);
}

/// Read-only answers are remembered apart from changes: however many
/// lists follow a change, within one batch or later, its id stays
/// answered, in the session and after a reconnect (it is stored).
#[test]
fn many_read_only_requests_do_not_push_a_change_out() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    let inv = gather(&mut h, 1, 10_000);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    let lists = REMEMBERED_REQUESTS as u64 + 10;
    let drop = InventoryOp::Drop { slot, count: 1 };
    h.push(request_input(1, 1, drop.clone()));
    for request_id in 2..2 + lists {
        h.push(request_input(1, request_id, InventoryOp::List));
    }
    let out = h.flush(false);
    let first = reply_of(&out, 1, 1).expect("the drop's reply");
    let dropped = first.result.clone().expect("dropped");
    assert_eq!(dropped.version, inv.version + 1);
    // More lists in later batches.
    for request_id in 2 + lists..2 + 2 * lists {
        h.request(1, request_id, InventoryOp::List);
    }
    assert_eq!(h.request(1, 1, drop.clone()), first, "in the session");
    h.push(Input::Disconnected { account: 1 });
    h.flush(false);
    h.push(Input::Connected { account: 1 });
    assert_eq!(h.request(1, 1, drop), first, "after a reconnect");
    assert_eq!(h.core.inventory(1), Some(&dropped), "dropped once");
}

/// A whole-stack move of `inv`: from its first full slot to its first
/// empty one, `(from, to, count)`.
fn first_move(inv: &InventorySnapshot) -> (u16, u16, u32) {
    let from = inv.slots.iter().position(Option::is_some).unwrap();
    let to = inv.slots.iter().position(Option::is_none).unwrap();
    let count = inv.slots[from].unwrap().count;
    (from as u16, to as u16, count)
}

/// Connects account 1 with items gathered; its `i`-th whole-stack move
/// between a full slot and an empty one, there and back: each one a stored
/// change.
fn shuttle(h: &mut Harness) -> impl Fn(u64) -> InventoryOp + use<> {
    h.push(Input::Connected { account: 1 });
    let inv = gather(h, 1, 10_000);
    let (from, to, count) = first_move(&inv);
    move |i: u64| {
        let (from, to) = if i.is_multiple_of(2) {
            (from, to)
        } else {
            (to, from)
        };
        InventoryOp::Move { from, to, count }
    }
}

/// A failed commit forgets only the answers its own batch added. With
/// [`REMEMBERED_REQUESTS`] changes remembered, a batch of one more pushes
/// the oldest past the bound; the store keeps it when that commit fails,
/// and so must memory: the oldest id sent again gets its original answer
/// and is not applied a second time.
#[test]
fn a_failed_commit_does_not_forget_older_request_ids() {
    let mut h = Harness::new();
    let move_op = shuttle(&mut h);
    let first = h.request(1, 1, move_op(0));
    assert!(first.result.is_ok(), "{first:?}");
    for i in 1..REMEMBERED_REQUESTS as u64 {
        let reply = h.request(1, 1 + i, move_op(i));
        assert!(reply.result.is_ok(), "{reply:?}");
    }
    let before = h.core.inventory(1).unwrap().clone();

    h.push(request_input(1, 1_000, move_op(0)));
    let out = h.flush(true);
    assert_eq!(
        reply_of(&out, 1, 1_000).unwrap().result,
        Err(InventoryError::Storage)
    );
    assert_eq!(h.core.inventory(1), Some(&before));

    assert_eq!(h.request(1, 1, move_op(0)), first, "the original answer");
    assert_eq!(h.core.inventory(1), Some(&before), "not moved again");
}

/// A client keeps no more requests unanswered than the server remembers
/// the ids of: when a dropped connection lost every reply, the requests
/// it sends again after reconnecting are answered with their first
/// replies, none applied twice.
#[test]
fn requests_sent_again_after_lost_replies_are_not_applied_twice() {
    let mut h = Harness::new();
    let move_op = shuttle(&mut h);
    let mut tracker = InventoryTracker::starting_at(1);
    let mut first_replies = BTreeMap::new();
    let mut keep = |out: Vec<Output>| {
        for output in out {
            if let Output::Reply { reply, .. } = output {
                first_replies.insert(reply.request_id, reply);
            }
        }
    };
    // As many as the tracker lets out (bounded, should it never refuse),
    // 32 a batch; the client sees none of the replies.
    let mut sent = 0;
    while sent <= 2 * REMEMBERED_REQUESTS as u64 {
        let Ok(request) = tracker.request(move_op(sent)) else {
            break;
        };
        h.push(request_input(1, request.request_id, request.op));
        sent += 1;
        if sent.is_multiple_of(32) {
            keep(h.flush(false));
        }
    }
    keep(h.flush(false));
    assert_eq!(first_replies.len() as u64, sent, "every one answered");
    h.push(Input::Disconnected { account: 1 });
    h.flush(false);
    h.push(Input::Connected { account: 1 });
    h.flush(false);
    let before = h.core.inventory(1).unwrap().clone();
    let pending: Vec<_> = tracker.pending().collect();
    assert_eq!(pending.len() as u64, sent);
    for request in pending {
        let id = request.request_id;
        let reply = h.request(1, id, request.op);
        assert_eq!(reply, first_replies[&id], "request {id} applied again");
    }
    assert_eq!(h.core.inventory(1), Some(&before));
}

/// While a commit is in flight, one player's flood of requests fills
/// only its own share of the queue: the others are still served.
#[test]
fn a_flooding_player_is_busy_alone() {
    let mut h = Harness::new();
    for account in [1, 2] {
        h.push(Input::Connected { account });
    }
    h.ticks(1);
    let per_account = config().max_queued_per_account;
    assert!(per_account < config().max_queued);
    let list = |account, request_id| request_input(account, request_id, InventoryOp::List);
    // A batch in flight, so that requests wait in the queue.
    h.push(Input::Tick);
    let in_flight = h.core.prepare(&mut h.store).expect("a batch");
    let mut busy = 0;
    for request_id in 0..config().max_queued as u64 {
        if let Some(Output::Reply { reply, .. }) = h.core.push(list(1, request_id)) {
            assert_eq!(reply.result, Err(InventoryError::Busy));
            busy += 1;
        }
    }
    assert_eq!(busy, config().max_queued - per_account);
    assert_eq!(h.core.push(list(2, 1)), None, "queued, not busy");
    let result = h.store.commit(&in_flight.writes);
    h.core.complete(result);
    let out = h.flush(false);
    assert!(reply_of(&out, 2, 1).is_some_and(|r| r.result.is_ok()));
    // The next batch takes a full share again.
    assert_eq!(h.core.push(list(1, 1_000_000)), None);
}

/// While a commit is stalled, a player reconnecting over and over does
/// not grow the queue: a session that did nothing cancels out, so the
/// others are still served. What matters is kept: the disconnect ending
/// the session that holds a trade (its partner is told, the trade is
/// gone), a later session with a request (applied, though its player
/// left before the answer), and the last session (online at the end).
#[test]
fn a_player_reconnecting_while_a_commit_is_stalled_does_not_fill_the_queue() {
    let mut h = Harness::new();
    let trade = open_empty_trade(&mut h);
    let inv = gather(&mut h, 1, 100);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    // A batch in flight, so that inputs wait in the queue.
    h.push(Input::Tick);
    let in_flight = h.core.prepare(&mut h.store).expect("a batch");
    let in_world = h.core.world_items().count();
    let reconnects = |h: &mut Harness| {
        for _ in 0..config().max_queued {
            h.push(Input::Connected { account: 1 });
            h.push(Input::Disconnected { account: 1 });
        }
    };

    h.push(Input::Disconnected { account: 1 });
    reconnects(&mut h);
    assert_eq!(h.core.queued(), 1, "the first disconnect alone");
    h.push(Input::Connected { account: 1 });
    h.push(request_input(
        1,
        1_000,
        InventoryOp::Drop { slot, count: 1 },
    ));
    h.push(Input::Disconnected { account: 1 });
    reconnects(&mut h);
    assert_eq!(h.core.queued(), 4);
    h.push(Input::Connected { account: 1 });
    assert_eq!(h.core.queued(), 5);
    assert_eq!(
        h.core.push(request_input(2, 2, InventoryOp::List)),
        None,
        "queued, not busy"
    );

    let result = h.store.commit(&in_flight.writes);
    let mut out = h.core.complete(result);
    out.extend(h.flush(false));
    assert!(reply_of(&out, 2, 2).is_some_and(|r| r.result.is_ok()));
    assert_eq!(reply_of(&out, 1, 1_000), None, "its session had ended");
    assert_eq!(h.core.world_items().count(), in_world + 1, "dropped");
    assert_eq!(h.core.inventory(1).unwrap().version, inv.version + 1);
    the_trade_stays_cancelled(&mut h, &out, trade);
    h.core.check_trades().unwrap();
    assert!(
        h.request(1, 2_000, InventoryOp::List).result.is_ok(),
        "online"
    );
}

#[test]
fn a_reconnecting_player_gets_its_inventory_back() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 5 });
    let inv = gather(&mut h, 5, 1);
    h.push(Input::Disconnected { account: 5 });
    h.flush(false);
    assert!(h.core.inventory(5).is_none(), "unloaded after leaving");
    h.push(Input::Connected { account: 5 });
    let listed = h.request(5, 1000, InventoryOp::List).result.unwrap();
    assert_eq!(listed, inv);
}

#[test]
fn a_failed_commit_changes_nothing_and_answers_storage() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    let inv = gather(&mut h, 1, 100);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    h.push(Input::Request {
        account: 1,
        request: InventoryRequest {
            request_id: 9,
            op: InventoryOp::Drop { slot, count: 1 },
        },
        position: None,
        tag: 0,
    });
    let out = h.flush(true);
    assert_eq!(
        reply_of(&out, 1, 9).unwrap().result,
        Err(InventoryError::Storage)
    );
    assert_eq!(h.core.inventory(1), Some(&inv));
    assert!(h.audit().balanced);
    // Retrying the same id now applies it.
    assert!(
        h.request(1, 9, InventoryOp::Drop { slot, count: 1 })
            .result
            .is_ok()
    );
}

#[test]
fn a_failed_commit_answers_read_only_requests_storage_and_forgets_them() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.flush(false);
    // A List sharing its batch with writes (the spawner's) whose commit fails.
    h.push(Input::Request {
        account: 1,
        request: InventoryRequest {
            request_id: 4,
            op: InventoryOp::List,
        },
        position: None,
        tag: 0,
    });
    h.push(Input::Tick);
    let out = h.flush(true);
    assert_eq!(
        reply_of(&out, 1, 4).unwrap().result,
        Err(InventoryError::Storage)
    );
    assert_eq!(h.core.world_items().count(), 0, "the spawn rolled back");
    // Nothing was acknowledged, so id 4 is new: applied, not "Storage" again.
    assert_eq!(
        h.request(1, 4, InventoryOp::PickUp { world_item: 999 })
            .result,
        Err(InventoryError::NoSuchWorldItem)
    );
}

#[test]
fn a_session_that_ends_before_its_batch_resolves_receives_nothing() {
    // The property test's counterexample: a List, then the disconnect, in
    // one batch. Its answer must not reach the next session as if that
    // session had asked.
    let mut h = Harness::new();
    h.push(Input::Connected { account: 2 });
    h.push(Input::Request {
        account: 2,
        request: InventoryRequest {
            request_id: 7,
            op: InventoryOp::List,
        },
        position: None,
        tag: 0,
    });
    h.push(Input::Disconnected { account: 2 });
    let out = h.flush(false);
    assert!(
        out.iter().all(|o| o.account() != 2),
        "nothing for an ended session: {out:?}"
    );
    h.push(Input::Connected { account: 2 });
    assert_eq!(
        h.request(2, 7, InventoryOp::PickUp { world_item: 999 })
            .result,
        Err(InventoryError::NoSuchWorldItem),
        "a read-only id of an ended session is new"
    );
    // Within a session an unstored answer is repeated as it was.
    assert_eq!(
        h.request(2, 7, InventoryOp::List).result,
        Err(InventoryError::NoSuchWorldItem)
    );
}

#[test]
fn a_change_whose_session_ended_in_flight_is_committed_and_answered_on_retry() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    let inv = gather(&mut h, 1, 100);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    h.push(Input::Request {
        account: 1,
        request: InventoryRequest {
            request_id: 9,
            op: InventoryOp::Drop { slot, count: 1 },
        },
        position: None,
        tag: 0,
    });
    let batch = h.core.prepare(&mut h.store).expect("a batch");
    // The player leaves while the batch is being committed.
    h.push(Input::Disconnected { account: 1 });
    let result = h.store.commit(&batch.writes);
    let out = h.core.complete(result);
    assert!(
        out.iter().all(|o| o.account() != 1),
        "nothing for an ended session: {out:?}"
    );
    h.flush(false);
    assert!(h.audit().balanced);
    // The next session's retry of id 9 gets the stored answer, not a
    // second drop.
    h.push(Input::Connected { account: 1 });
    let retry = h.request(1, 9, InventoryOp::Drop { slot, count: 1 });
    let dropped = retry.result.expect("the original success");
    assert_eq!(dropped.version, inv.version + 1);
    assert_eq!(h.core.inventory(1), Some(&dropped), "dropped once");
}

/// After a failed commit: account 2 heard `trade` cancelled (in `out`),
/// and it is gone.
fn the_trade_stays_cancelled(h: &mut Harness, out: &[Output], trade: u64) {
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Trade { account: 2, update }
            if update.trade == trade && update.state == TradeState::Cancelled)),
        "the partner hears the cancel: {out:?}"
    );
    assert_eq!(
        h.request(2, 1, InventoryOp::Accept { trade, revision: 1 })
            .result,
        Err(InventoryError::NoSuchTrade)
    );
}

/// Accounts 1 and 2 connect and 1 offers 2 an empty trade: its id.
fn open_empty_trade(h: &mut Harness) -> u64 {
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    h.flush(false);
    h.request(
        1,
        1,
        InventoryOp::Offer {
            with: 2,
            offer: TradeOffer::default(),
        },
    )
    .trade
    .unwrap()
}

/// An account re-offering again and again sent its partner a trade update
/// for each (64 a tick): more than a reliable channel drains, so it could
/// cut a player off for a full send queue alone, without an item. A batch
/// now tells each side a trade's last state once; every request is still
/// answered.
#[test]
fn re_offers_in_one_batch_tell_the_partner_once() {
    let mut h = Harness::new();
    let trade = open_empty_trade(&mut h);
    for request_id in 2..66 {
        h.push(request_input(
            1,
            request_id,
            InventoryOp::Offer {
                with: 2,
                offer: TradeOffer::default(),
            },
        ));
    }
    let out = h.flush(false);
    let told = |account| {
        out.iter()
            .filter(|o| matches!(o, Output::Trade { account: a, .. } if *a == account))
            .count()
    };
    assert_eq!(told(2), 1, "{out:?}");
    assert_eq!(told(1), 1);
    assert_eq!(trade_seen(&out, 2, trade).unwrap().revision, 65);
    assert!((2..66).all(|request_id| reply_of(&out, 1, request_id).is_some()));
}

/// Accounts drawing one player into a trade and leaving it in turn, all
/// in one batch (each of its own next offer ending its trade with the
/// player), sent it an update for each: as many a tick as there were of
/// them. A player is drawn into one new trade a batch.
#[test]
fn a_player_passed_between_traders_is_drawn_into_one_trade_a_batch() {
    let mut h = Harness::new();
    let traders: Vec<u64> = (10..18).collect();
    for &account in traders.iter().chain([&1]) {
        h.push(Input::Connected { account });
    }
    h.flush(false);
    let mut request_id = 0;
    let mut offer = |h: &mut Harness, from: u64, with: u64| {
        request_id += 1;
        h.push(request_input(
            from,
            request_id,
            InventoryOp::Offer {
                with,
                offer: TradeOffer::default(),
            },
        ));
        (from, request_id)
    };
    let mut opens = Vec::new();
    for (i, &trader) in traders.iter().enumerate() {
        opens.push(offer(&mut h, trader, 1));
        // Into a trade with the next trader, which ends this one's with 1.
        offer(&mut h, trader, traders[(i + 1) % traders.len()]);
    }
    let out = h.flush(false);
    let to_player = out
        .iter()
        .filter(|o| matches!(o, Output::Trade { account: 1, .. }))
        .count();
    assert!(to_player <= 1, "{to_player} trade updates: {out:?}");
    let opened = opens
        .iter()
        .filter(|&&(from, id)| reply_of(&out, from, id).is_some_and(|r| r.result.is_ok()))
        .count();
    assert_eq!(opened, 1);
    let busy = opens
        .iter()
        .filter(|&&(from, id)| {
            reply_of(&out, from, id).is_some_and(|r| r.result == Err(InventoryError::PartnerBusy))
        })
        .count();
    assert_eq!(busy, traders.len() - 1);
}

/// Gifts in one batch send the recipient its inventory once, as it stands
/// after the last of them, not once per gift.
#[test]
fn gifts_in_one_batch_send_the_recipient_one_update() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    h.flush(false);
    let held = gather(&mut h, 1, 1);
    let gifts: Vec<(u16, u32)> = held
        .slots
        .iter()
        .enumerate()
        .filter_map(|(slot, stack)| Some((u16::try_from(slot).ok()?, stack.as_ref()?.count)))
        .flat_map(|(slot, count)| std::iter::repeat_n(slot, count as usize))
        .take(12)
        .map(|slot| (slot, 1))
        .collect();
    assert!(gifts.len() > 1, "{held:?}");
    for (i, &(slot, count)) in gifts.iter().enumerate() {
        h.push(request_input(
            1,
            1_000 + i as u64,
            InventoryOp::Give { to: 2, slot, count },
        ));
    }
    let out = h.flush(false);
    let updates: Vec<&shared::protocol::inventory::InventoryUpdate> = out
        .iter()
        .filter_map(|o| match o {
            Output::Update { account: 2, update } => Some(update),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 1, "{out:?}");
    let units: u32 = stacks(&updates[0].inventory).iter().map(|s| s.1).sum();
    assert_eq!(units as usize, gifts.len());
    assert_eq!(Some(&updates[0].inventory), h.core.inventory(2));
}

#[test]
fn a_failed_commit_does_not_restore_a_trade_whose_side_has_left() {
    let mut h = Harness::new();
    let trade = open_empty_trade(&mut h);
    h.push(Input::Disconnected { account: 1 });
    h.push(Input::Tick); // a write, so the commit is attempted and fails
    let out = h.flush(true);
    the_trade_stays_cancelled(&mut h, &out, trade);
}

/// The same when the side that left came back in the same batch: the
/// trade its earlier session accepted stays cancelled, for the partner
/// too, rather than come back with that acceptance for the new session,
/// which never saw it.
#[test]
fn a_failed_commit_does_not_restore_a_trade_whose_side_left_and_came_back() {
    let mut h = Harness::new();
    let trade = open_empty_trade(&mut h);
    h.request(1, 2, InventoryOp::Accept { trade, revision: 1 })
        .result
        .unwrap();
    h.push(Input::Disconnected { account: 1 });
    h.push(Input::Connected { account: 1 });
    h.push(Input::Tick); // a write, so the commit is attempted and fails
    let out = h.flush(true);
    the_trade_stays_cancelled(&mut h, &out, trade);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Trade { account: 1, .. })),
        "the new session hears of a trade it never saw: {out:?}"
    );
}

#[test]
fn moves_split_merge_and_swap_within_the_stack_limits() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    gather(&mut h, 1, 100);
    let inv = h.request(1, 1, InventoryOp::List).result.unwrap();
    let (from, stack) = inv
        .slots
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.filter(|s| s.count >= 2).map(|s| (i as u16, s)))
        .expect("a stack of 2+");
    let empty = inv.slots.iter().position(Option::is_none).unwrap() as u16;
    // Split.
    let split = h
        .request(
            1,
            2,
            InventoryOp::Move {
                from,
                to: empty,
                count: 1,
            },
        )
        .result
        .unwrap();
    assert_eq!(
        split.slots[usize::from(empty)],
        Some(ItemStack {
            item: stack.item,
            count: 1
        })
    );
    assert_eq!(
        split.slots[usize::from(from)].unwrap().count,
        stack.count - 1
    );
    // Merge back.
    let merged = h
        .request(
            1,
            3,
            InventoryOp::Move {
                from: empty,
                to: from,
                count: 1,
            },
        )
        .result
        .unwrap();
    assert_eq!(merged.slots[usize::from(from)], Some(stack));
    // Errors.
    assert_eq!(
        h.request(
            1,
            4,
            InventoryOp::Move {
                from,
                to: from,
                count: 1
            }
        )
        .result,
        Err(InventoryError::SameSlot)
    );
    // Part of a stack onto another item: the slot is taken, although the
    // inventory has room.
    let other = inv
        .slots
        .iter()
        .position(|s| s.is_some_and(|s| s.item != stack.item))
        .expect("another item") as u16;
    assert_eq!(
        h.request(
            1,
            7,
            InventoryOp::Move {
                from,
                to: other,
                count: 1
            }
        )
        .result,
        Err(InventoryError::SlotTaken)
    );
    assert_eq!(
        h.request(
            1,
            5,
            InventoryOp::Move {
                from,
                to: empty,
                count: stack.count + 1
            }
        )
        .result,
        Err(InventoryError::BadCount)
    );
    assert_eq!(
        h.request(
            1,
            6,
            InventoryOp::Move {
                from: 99,
                to: empty,
                count: 1
            }
        )
        .result,
        Err(InventoryError::BadSlot)
    );
    h.core.check_stacks().unwrap();
}

#[test]
fn using_consumes_one_and_the_ledger_records_it() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    let inv = gather(&mut h, 1, 100);
    let catalogue = Catalogue::embedded().unwrap();
    let (slot, stack) = inv
        .slots
        .iter()
        .enumerate()
        .find_map(|(i, s)| {
            s.filter(|s| catalogue.get(s.item).unwrap().consumable)
                .map(|s| (i as u16, s))
        })
        .expect("something edible");
    h.request(1, 1, InventoryOp::Use { slot }).result.unwrap();
    let report = h.audit();
    assert_eq!(report.items[&stack.item.0.to_string()].consumed, 1);
    assert!(report.balanced);
}

/// An item id the embedded catalogue does not define: one retired since
/// it was stored.
const RETIRED: ItemId = ItemId(999);

/// A store where account 1 holds 3 of [`RETIRED`] in slot 0 and 2 apples
/// in slot 1, and, with `in_world`, 2 more of [`RETIRED`] lie in the world
/// (world item 1); its ledger balanced.
fn store_with_a_retired_item(in_world: bool) -> SqliteStore {
    let mut store = SqliteStore::open_in_memory().unwrap();
    let apple = ItemId(1);
    let mut slots = vec![None; SLOTS];
    slots[0] = Some(ItemStack {
        item: RETIRED,
        count: 3,
    });
    slots[1] = Some(ItemStack {
        item: apple,
        count: 2,
    });
    let minted = |minted| LedgerRow {
        minted,
        consumed: 0,
    };
    store
        .commit(&BatchWrites {
            inventories: vec![(1, InventorySnapshot { version: 4, slots })],
            world_upserts: in_world
                .then_some(WorldItem {
                    id: 1,
                    stack: ItemStack {
                        item: RETIRED,
                        count: 2,
                    },
                    position: glam::Vec2::ZERO,
                })
                .into_iter()
                .collect(),
            ledger: vec![
                (apple, minted(2)),
                (RETIRED, minted(if in_world { 5 } else { 3 })),
            ],
            counters: Some(Counters {
                next_world_item: 2,
                spawned: 0,
                next_trade: 1,
            }),
            ..BatchWrites::default()
        })
        .unwrap();
    assert!(store.audit().unwrap().balanced);
    store
}

/// Stacks past the catalogue's limit (a file written by something else)
/// whose sum passes `u32::MAX`: merging them is refused for the room, not
/// wrapped below the limit (billions of items gone) or a panic.
#[test]
fn merging_stored_stacks_past_any_count_is_refused() {
    let mut store = SqliteStore::open_in_memory().unwrap();
    let apple = ItemId(1);
    let mut slots = vec![None; SLOTS];
    slots[0] = Some(ItemStack {
        item: apple,
        count: 4_000_000_000,
    });
    slots[1] = Some(ItemStack {
        item: apple,
        count: 300_000_000,
    });
    store
        .commit(&BatchWrites {
            inventories: vec![(1, InventorySnapshot { version: 1, slots })],
            ..BatchWrites::default()
        })
        .unwrap();
    let mut h = Harness::on(store);
    h.push(Input::Connected { account: 1 });
    let reply = h.request(
        1,
        1,
        InventoryOp::Move {
            from: 0,
            to: 1,
            count: 4_000_000_000,
        },
    );
    assert_eq!(reply.result, Err(InventoryError::NoRoom));
    let after = h.request(1, 2, InventoryOp::List).result.unwrap();
    assert_eq!(stacks(&after)[..2], [(1, 4_000_000_000), (1, 300_000_000)]);
}

/// An inventory grown to more slots is stored with the next batch: a
/// later start with fewer slots keeps it, and its version. Growing the
/// old row again, to fewer slots, gave an older version than the one its
/// player had seen, and a few changes later that version again with other
/// contents.
#[test]
fn a_grown_inventory_is_stored_and_a_start_with_fewer_slots_keeps_it() {
    let mut store = SqliteStore::open_in_memory().unwrap();
    let inventory = InventorySnapshot {
        version: 30,
        slots: vec![None; 4],
    };
    store
        .commit(&BatchWrites {
            inventories: vec![(1, inventory)],
            ..BatchWrites::default()
        })
        .unwrap();
    // No spawner: nothing else writes (a quiet server's world is full).
    let slots = |slots| CoreConfig {
        slots,
        spawner_target: 0,
        ..config()
    };
    let mut h = Harness::on_with(store, slots(8));
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    // Another player's read-only request does not go to the store for
    // it: with the store failing, it is still answered.
    h.push(request_input(2, 1, InventoryOp::List));
    let out = h.flush(true);
    assert!(reply_of(&out, 2, 1).unwrap().result.is_ok(), "{out:?}");
    // Its own player is shown it only once it is stored.
    h.push(request_input(1, 1, InventoryOp::List));
    let out = h.flush(true);
    let refused = reply_of(&out, 1, 1).unwrap().result;
    assert_eq!(refused, Err(InventoryError::Storage));
    let grown = h.request(1, 2, InventoryOp::List).result.unwrap();
    assert_eq!((grown.version, grown.slots.len()), (34, 8));
    h.push(Input::Disconnected { account: 1 });
    h.ticks(10);
    let mut h = Harness::on_with(h.store.inner, slots(6));
    h.push(Input::Connected { account: 1 });
    let again = h.request(1, 3, InventoryOp::List).result.unwrap();
    assert_eq!((again.version, again.slots.len()), (34, 8));
}

/// A retired item held by a player stays with that player: it moves
/// between slots, but using, dropping, giving or offering it is refused,
/// so it never reaches the world (where it would have stopped the next
/// start) or another player. The player's other items drop as before,
/// and the server starts again on the store.
#[test]
fn a_held_retired_item_stays_held() {
    let mut h = Harness::on(store_with_a_retired_item(false));
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    let before = h.request(1, 1, InventoryOp::List).result.unwrap();
    for (request_id, op) in [
        (2, InventoryOp::Drop { slot: 0, count: 1 }),
        (3, InventoryOp::Drop { slot: 0, count: 3 }),
        (
            4,
            InventoryOp::Give {
                to: 2,
                slot: 0,
                count: 1,
            },
        ),
        (
            5,
            InventoryOp::Offer {
                with: 2,
                offer: TradeOffer {
                    items: vec![(1, 1), (0, 1)],
                },
            },
        ),
        (6, InventoryOp::Use { slot: 0 }),
    ] {
        let reply = h.request(1, request_id, op.clone());
        assert_eq!(reply.result, Err(InventoryError::NotUsable), "{op:?}");
        assert_eq!(reply.trade, None);
    }
    assert_eq!(h.core.inventory(1), Some(&before), "nothing changed");
    assert_eq!(stacks(h.core.inventory(2).unwrap()), []);
    assert_eq!(h.core.world_items().count(), 0);

    let moved = h
        .request(
            1,
            7,
            InventoryOp::Move {
                from: 0,
                to: 3,
                count: 3,
            },
        )
        .result
        .unwrap();
    assert_eq!(stacks(&moved), [(1, 2), (RETIRED.0, 3)]);
    let dropped = h
        .request(1, 8, InventoryOp::Drop { slot: 1, count: 2 })
        .result
        .unwrap();
    assert_eq!(stacks(&dropped), [(RETIRED.0, 3)]);
    h.core.check_stacks().unwrap();
    let report = h.audit();
    assert!(report.balanced && report.consistent, "{report:?}");
    assert_eq!(report.items[&RETIRED.0.to_string()].held, 3);

    let catalogue = Arc::new(Catalogue::embedded().unwrap());
    let restarted = InventoryCore::load(catalogue, config(), &mut h.store).unwrap();
    let world: Vec<_> = restarted.world_items().map(|w| w.stack).collect();
    assert_eq!(
        world,
        [ItemStack {
            item: ItemId(1),
            count: 2
        }]
    );
}

/// World items of a retired item do not stop the start: they stay stored
/// as they are (the store balanced, nothing lost should the item return)
/// but out of the game: not listed, not picked up, not counted towards
/// the world's capacity, and no later world item takes their id.
#[test]
fn a_retired_item_in_the_world_stays_stored_out_of_the_game() {
    let mut h = Harness::on(store_with_a_retired_item(true));
    assert_eq!(h.core.world_items().count(), 0);
    h.core.check_stacks().unwrap();
    h.push(Input::Connected { account: 1 });
    h.push(request_input(1, 1, InventoryOp::ListWorld));
    let out = h.flush(false);
    assert!(reply_of(&out, 1, 1).unwrap().result.is_ok());
    let listed: Vec<WorldItem> = out
        .iter()
        .flat_map(|o| match o {
            Output::World { items, .. } => items.items.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(listed, []);
    assert_eq!(
        h.request(1, 2, InventoryOp::PickUp { world_item: 1 })
            .result,
        Err(InventoryError::NoSuchWorldItem)
    );
    // The spawner fills the world to its target as if it were empty; the
    // player's apples drop beside its items.
    h.ticks(config().spawner_target);
    assert_eq!(h.core.world_items().count(), config().spawner_target);
    h.request(1, 3, InventoryOp::Drop { slot: 1, count: 2 })
        .result
        .unwrap();
    assert!(h.core.world_items().all(|w| w.id != 1));

    let report = h.audit();
    assert!(report.balanced && report.consistent, "{report:?}");
    assert_eq!(
        report.items[&RETIRED.0.to_string()],
        ItemTotals {
            held: 3,
            in_world: 2,
            minted: 5,
            consumed: 0
        },
        "stored as it was"
    );
}

#[test]
fn a_trade_swaps_atomically_when_both_accept_and_a_disconnect_cancels_it() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    let a = gather(&mut h, 1, 100);
    let b = gather(&mut h, 2, 200);
    let a_slot = a.slots.iter().position(Option::is_some).unwrap() as u16;
    let b_slot = b.slots.iter().position(Option::is_some).unwrap() as u16;
    let a_stack = a.slots[usize::from(a_slot)].unwrap();
    let b_stack = b.slots[usize::from(b_slot)].unwrap();

    let opened = h.request(
        1,
        1,
        InventoryOp::Offer {
            with: 2,
            offer: TradeOffer {
                items: vec![(a_slot, 1)],
            },
        },
    );
    let trade = opened.trade.unwrap();
    let (_, out) = h.exchange(
        2,
        1,
        InventoryOp::Offer {
            with: 1,
            offer: TradeOffer {
                items: vec![(b_slot, 1)],
            },
        },
    );
    let revision = trade_seen(&out, 1, trade).unwrap().revision;
    h.request(1, 2, InventoryOp::Accept { trade, revision })
        .result
        .unwrap();
    assert!(h.core.inventory(1) == Some(&a) || h.core.inventory(1).unwrap().version == a.version);
    h.push(Input::Request {
        account: 2,
        request: InventoryRequest {
            request_id: 2,
            op: InventoryOp::Accept { trade, revision },
        },
        position: None,
        tag: 0,
    });
    let out = h.flush(false);
    let completed = out
        .iter()
        .filter(
            |o| matches!(o, Output::Trade { update, .. } if update.state == TradeState::Completed),
        )
        .count();
    assert_eq!(completed, 2, "both sides hear it");
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Update { account: 1, .. })),
        "the initiator's inventory is pushed"
    );
    let count_of = |inv: &InventorySnapshot, item: ItemId| -> u32 {
        inv.slots
            .iter()
            .flatten()
            .filter(|s| s.item == item)
            .map(|s| s.count)
            .sum()
    };
    let a_after = h.core.inventory(1).unwrap().clone();
    let b_after = h.core.inventory(2).unwrap().clone();
    if a_stack.item != b_stack.item {
        assert_eq!(
            count_of(&a_after, a_stack.item) + 1,
            count_of(&a, a_stack.item)
        );
        assert_eq!(
            count_of(&a_after, b_stack.item),
            count_of(&a, b_stack.item) + 1
        );
    }
    assert!(h.audit().balanced);

    // A new trade, cancelled by a disconnect before the second accept.
    let (opened, out) = h.exchange(
        1,
        3,
        InventoryOp::Offer {
            with: 2,
            offer: TradeOffer::default(),
        },
    );
    let trade = opened.trade.unwrap();
    let revision = trade_seen(&out, 2, trade).unwrap().revision;
    h.request(1, 4, InventoryOp::Accept { trade, revision })
        .result
        .unwrap();
    h.push(Input::Disconnected { account: 1 });
    h.push(Input::Request {
        account: 2,
        request: InventoryRequest {
            request_id: 3,
            op: InventoryOp::Accept { trade, revision },
        },
        position: None,
        tag: 0,
    });
    let out = h.flush(false);
    assert_eq!(
        reply_of(&out, 2, 3).unwrap().result,
        Err(InventoryError::NoSuchTrade)
    );
    assert_eq!(stacks(h.core.inventory(2).unwrap()), stacks(&b_after));
}

/// An offer longer than any trade is refused when it arrives, not held
/// in the queue (the codec bounds its bytes, not its entries).
#[test]
fn an_oversized_offer_is_refused_without_waiting_in_the_queue() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    h.flush(false);
    let queued = h.core.queued();
    let answer = h.core.push(request_input(
        1,
        7,
        InventoryOp::Offer {
            with: 2,
            offer: TradeOffer {
                items: vec![(0, 1); 10_000],
            },
        },
    ));
    let Some(Output::Reply { reply, .. }) = answer else {
        panic!("answered at once: {answer:?}");
    };
    assert_eq!(reply.result, Err(InventoryError::BadOffer));
    assert_eq!(h.core.queued(), queued, "nothing queued");
}

/// Trade ids are never used twice, restarts included: an accept sent
/// before a restart (and sent again after it) cannot accept the new trade
/// that would otherwise have taken the same id.
#[test]
fn a_restart_does_not_hand_out_an_old_trade_id_again() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    let offer = |with| InventoryOp::Offer {
        with,
        offer: TradeOffer { items: Vec::new() },
    };
    let (opened, out) = h.exchange(1, 1, offer(2));
    let before = opened.trade.expect("a trade");
    let revision = trade_seen(&out, 2, before).expect("seen").revision;

    // The server restarts on the same store; both players come back.
    let catalogue = Arc::new(Catalogue::embedded().unwrap());
    h.core = InventoryCore::load(catalogue, config(), &mut h.store).unwrap();
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    let after = h.request(1, 2, offer(2)).trade.expect("a trade");
    assert!(
        after > before,
        "trade {after} after the restart, {before} before"
    );
    // Player 2's accept of the old trade, sent again after the restart.
    let stale = h.request(
        2,
        1,
        InventoryOp::Accept {
            trade: before,
            revision,
        },
    );
    assert_eq!(stale.result.map(|_| ()), Err(InventoryError::NoSuchTrade));
}

/// A third player cannot end someone else's trade: its offer to either
/// side is refused while they trade, and their trade completes.
#[test]
fn an_offer_to_a_player_already_trading_is_refused_and_ends_nothing() {
    let mut h = Harness::new();
    for account in [1, 2, 3] {
        h.push(Input::Connected { account });
    }
    let a = gather(&mut h, 1, 100);
    let a_slot = a.slots.iter().position(Option::is_some).unwrap() as u16;
    let offer = |with, items| InventoryOp::Offer {
        with,
        offer: TradeOffer { items },
    };
    let (opened, out) = h.exchange(1, 1, offer(2, vec![(a_slot, 1)]));
    let trade = opened.trade.unwrap();
    let revision = trade_seen(&out, 2, trade).unwrap().revision;
    h.request(1, 2, InventoryOp::Accept { trade, revision })
        .result
        .unwrap();

    let (busy, out) = h.exchange(3, 1, offer(1, Vec::new()));
    assert_eq!(busy.result, Err(InventoryError::PartnerBusy));
    assert_eq!(busy.trade, None);
    assert!(
        out.iter().all(|o| !matches!(o, Output::Trade { .. })),
        "nobody hears of a trade: {out:?}"
    );
    // Again, to the other side, in the batch of the accept that completes it.
    h.push(request_input(3, 2, offer(2, Vec::new())));
    h.push(request_input(2, 1, InventoryOp::Accept { trade, revision }));
    let out = h.flush(false);
    assert_eq!(
        reply_of(&out, 3, 2).unwrap().result,
        Err(InventoryError::PartnerBusy)
    );
    assert!(reply_of(&out, 2, 1).unwrap().result.is_ok());
    assert_eq!(
        trade_seen(&out, 1, trade).map(|u| u.state),
        Some(TradeState::Completed)
    );
    h.core.check_trades().unwrap();
    // Once they are done, the third player may trade with them.
    assert!(h.request(3, 3, offer(1, Vec::new())).result.is_ok());
}

/// Each side is told what both give: the slot, the item and how many,
/// so that accepting "the trade as it stands" is an informed choice.
#[test]
fn the_trade_update_names_the_items_each_side_offers() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.push(Input::Connected { account: 2 });
    let a = gather(&mut h, 1, 100);
    let b = gather(&mut h, 2, 200);
    let (a_slot, a_stack) = a
        .slots
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.filter(|s| s.count >= 2).map(|s| (i as u16, s)))
        .expect("a stack of 2+");
    let b_slot = b.slots.iter().position(Option::is_some).unwrap() as u16;
    let b_stack = b.slots[usize::from(b_slot)].unwrap();

    let (opened, out) = h.exchange(
        1,
        1,
        InventoryOp::Offer {
            with: 2,
            offer: TradeOffer {
                items: vec![(a_slot, 2)],
            },
        },
    );
    let trade = opened.trade.unwrap();
    let offered_a = OfferedStack {
        slot: a_slot,
        stack: ItemStack {
            item: a_stack.item,
            count: 2,
        },
    };
    let told = trade_seen(&out, 2, trade).unwrap();
    assert_eq!(told.initiator_offer, [offered_a]);
    assert_eq!(told.partner_offer, []);

    let (_, out) = h.exchange(
        2,
        1,
        InventoryOp::Offer {
            with: 1,
            offer: TradeOffer {
                items: vec![(b_slot, 1)],
            },
        },
    );
    let offered_b = OfferedStack {
        slot: b_slot,
        stack: ItemStack {
            item: b_stack.item,
            count: 1,
        },
    };
    for account in [1, 2] {
        let told = trade_seen(&out, account, trade).unwrap();
        assert_eq!(told.initiator_offer, [offered_a], "to {account}");
        assert_eq!(told.partner_offer, [offered_b], "to {account}");
    }
}

/// An accept is of the offers the player saw. V offers `a`; P offers `b`
/// and accepts; V sees that and accepts, but before V's accept arrives P
/// takes `b` back and accepts the empty side. V's accept is refused: it
/// does not give `a` away for nothing.
#[test]
fn an_accept_sent_before_the_offers_changed_is_refused() {
    let (v, p) = (1, 2);
    let mut h = Harness::new();
    h.push(Input::Connected { account: v });
    h.push(Input::Connected { account: p });
    let v_before = gather(&mut h, v, 100);
    let p_before = gather(&mut h, p, 200);
    let a_slot = v_before.slots.iter().position(Option::is_some).unwrap() as u16;
    let b_slot = p_before.slots.iter().position(Option::is_some).unwrap() as u16;

    let offer = |with, items| InventoryOp::Offer {
        with,
        offer: TradeOffer { items },
    };
    let trade = h.request(v, 1, offer(p, vec![(a_slot, 1)])).trade.unwrap();
    let (_, out) = h.exchange(p, 1, offer(v, vec![(b_slot, 1)]));
    let revision = trade_seen(&out, p, trade).unwrap().revision;
    let (_, out) = h.exchange(p, 2, InventoryOp::Accept { trade, revision });
    let seen_by_v = trade_seen(&out, v, trade).unwrap();
    assert_eq!(seen_by_v.partner_offer.len(), 1);
    assert_eq!(
        seen_by_v.state,
        TradeState::Open {
            initiator_accepted: false,
            partner_accepted: true
        }
    );

    // V's accept of what it saw is on its way; meanwhile P switches.
    let (_, out) = h.exchange(p, 3, offer(v, Vec::new()));
    let switched = trade_seen(&out, p, trade).unwrap();
    assert!(switched.revision > seen_by_v.revision);
    h.request(
        p,
        4,
        InventoryOp::Accept {
            trade,
            revision: switched.revision,
        },
    )
    .result
    .unwrap();
    let (late, out) = h.exchange(
        v,
        2,
        InventoryOp::Accept {
            trade,
            revision: seen_by_v.revision,
        },
    );
    assert_eq!(late.result, Err(InventoryError::TradeChanged));
    assert!(
        !out.iter().any(
            |o| matches!(o, Output::Trade { update, .. } if update.state == TradeState::Completed)
        ),
        "{out:?}"
    );
    assert_eq!(stacks(h.core.inventory(v).unwrap()), stacks(&v_before));
    assert_eq!(stacks(h.core.inventory(p).unwrap()), stacks(&p_before));
    // The trade is still open: V may look again and decide.
    assert_eq!(
        h.request(v, 3, InventoryOp::Cancel { trade })
            .result
            .map(|_| ()),
        Ok(())
    );
}

#[derive(Debug, Clone)]
enum Step {
    Connect(u64),
    Disconnect(u64),
    Tick(u8),
    Request {
        player: u64,
        id: u64,
        op: OpSpec,
    },
    /// A batch prepared and held in flight: the steps up to the next
    /// flush (which commits it) arrive while it is being stored, as they
    /// do while the `db-writer` thread commits.
    Begin,
    Flush {
        fail: bool,
    },
}

#[derive(Debug, Clone)]
enum OpSpec {
    List,
    PickUp(usize),
    Drop(u16, u32),
    Move(u16, u16, u32),
    Use(u16),
    Give(u64, u16, u32),
    Offer(u64, Vec<(u16, u32)>),
    /// A trade, and how many revisions before the newest seen to accept.
    Accept(u64, u64),
    Cancel(u64),
}

const PLAYERS: u64 = 4;

fn op_spec() -> impl Strategy<Value = OpSpec> {
    let slot = || 0..(SLOTS as u16 + 1);
    let count = || 0u32..6;
    prop_oneof![
        1 => Just(OpSpec::List),
        3 => (0usize..16).prop_map(OpSpec::PickUp),
        1 => (slot(), count()).prop_map(|(s, c)| OpSpec::Drop(s, c)),
        2 => (slot(), slot(), count()).prop_map(|(a, b, c)| OpSpec::Move(a, b, c)),
        1 => slot().prop_map(OpSpec::Use),
        1 => (1..=PLAYERS, slot(), count()).prop_map(|(p, s, c)| OpSpec::Give(p, s, c)),
        2 => (1..=PLAYERS, prop::collection::vec((slot(), count()), 0..3))
            .prop_map(|(p, items)| OpSpec::Offer(p, items)),
        2 => (1u64..6, prop_oneof![3 => Just(0u64), 1 => 1u64..3])
            .prop_map(|(trade, back)| OpSpec::Accept(trade, back)),
        1 => (1u64..6).prop_map(OpSpec::Cancel),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (1..=PLAYERS).prop_map(Step::Connect),
        1 => (1..=PLAYERS).prop_map(Step::Disconnect),
        1 => (1u8..4).prop_map(Step::Tick),
        8 => (1..=PLAYERS, 0u64..12, op_spec()).prop_map(|(player, id, op)| Step::Request { player, id, op }),
        1 => Just(Step::Begin),
        3 => (0u8..6).prop_map(|n| Step::Flush { fail: n == 0 }),
    ]
}

/// `revisions`: the newest revision of each trade in the outputs so far.
fn resolve(spec: &OpSpec, core: &InventoryCore, revisions: &HashMap<u64, u64>) -> InventoryOp {
    match spec.clone() {
        OpSpec::List => InventoryOp::List,
        OpSpec::PickUp(i) => {
            let ids: Vec<u64> = core.world_items().map(|w| w.id).collect();
            InventoryOp::PickUp {
                world_item: if ids.is_empty() {
                    999
                } else {
                    ids[i % ids.len()]
                },
            }
        }
        OpSpec::Drop(slot, count) => InventoryOp::Drop { slot, count },
        OpSpec::Move(from, to, count) => InventoryOp::Move { from, to, count },
        OpSpec::Use(slot) => InventoryOp::Use { slot },
        OpSpec::Give(to, slot, count) => InventoryOp::Give { to, slot, count },
        OpSpec::Offer(with, items) => InventoryOp::Offer {
            with,
            offer: TradeOffer { items },
        },
        OpSpec::Accept(trade, back) => InventoryOp::Accept {
            trade,
            revision: revisions.get(&trade).map_or(1, |r| r.saturating_sub(back)),
        },
        OpSpec::Cancel(trade) => InventoryOp::Cancel { trade },
    }
}

fn check_after_batch(h: &mut Harness, online: &[bool]) -> Result<(), TestCaseError> {
    let report = h.audit();
    prop_assert!(report.integrity_ok);
    prop_assert!(report.balanced, "ledger unbalanced: {:?}", report.items);
    if let Err(e) = h.core.check_stacks().and_then(|()| h.core.check_trades()) {
        return Err(TestCaseError::fail(e));
    }
    // Memory equals storage for every loaded inventory.
    for account in 1..=PLAYERS {
        if let Some(mem) = h.core.inventory(account).cloned() {
            let stored = h.store.inner.load_account(account).unwrap().inventory;
            let stored = stored.unwrap_or(InventorySnapshot {
                version: 0,
                slots: vec![None; SLOTS],
            });
            prop_assert_eq!(&mem, &stored, "account {} diverged from storage", account);
        } else {
            let loading = h
                .late
                .as_ref()
                .is_some_and(|l| l.reads.contains_key(&account));
            prop_assert!(
                !online[account as usize] || loading,
                "online account {} not loaded nor loading",
                account
            );
        }
    }
    Ok(())
}

/// Runs `steps` on `h`, checking after every batch.
fn run_steps(mut h: Harness, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut online = vec![false; PLAYERS as usize + 1];
    // (account, request id) → the first successful reply this session.
    let mut answered: HashMap<(u64, u64), InventoryReply> = HashMap::new();
    // trade → the newest revision announced, for accepts.
    let mut revisions: HashMap<u64, u64> = HashMap::new();
    let note_revisions = |out: &[Output], revisions: &mut HashMap<u64, u64>| {
        for o in out {
            if let Output::Trade { update, .. } = o {
                revisions.insert(update.trade, update.revision);
            }
        }
    };
    let check_replies = |out: &[Output],
                         answered: &mut HashMap<(u64, u64), InventoryReply>|
     -> Result<(), TestCaseError> {
        for o in out {
            if let Output::Reply { account, reply, .. } = o {
                // Busy is no answer: send it again (see the protocol).
                if reply.result == Err(InventoryError::Busy) {
                    continue;
                }
                if let Some(first) = answered.get(&(*account, reply.request_id)) {
                    prop_assert_eq!(first, reply, "repeated id answered differently");
                } else if reply.result.is_ok() && reply.trade.is_none() {
                    answered.insert((*account, reply.request_id), reply.clone());
                }
            }
        }
        Ok(())
    };
    let mut in_flight = None;
    for step in steps {
        match step {
            Step::Begin => {
                if in_flight.is_none() {
                    in_flight = h.prepare();
                }
            }
            Step::Connect(p) => {
                if !online[p as usize] {
                    online[p as usize] = true;
                    h.push(Input::Connected { account: p });
                }
            }
            Step::Disconnect(p) => {
                if online[p as usize] {
                    online[p as usize] = false;
                    h.push(Input::Disconnected { account: p });
                    // Across sessions only changes' answers are
                    // remembered (see the reconnect example above);
                    // within a session every answer is.
                    answered.retain(|(account, _), _| *account != p);
                }
            }
            Step::Tick(n) => {
                for _ in 0..n {
                    h.push(Input::Tick);
                }
            }
            Step::Request { player, id, op } => {
                if online[player as usize] {
                    let op = resolve(&op, &h.core, &revisions);
                    h.push(Input::Request {
                        account: player,
                        request: InventoryRequest { request_id: id, op },
                        position: None,
                        tag: 0,
                    });
                }
            }
            Step::Flush { fail } => {
                // A batch held in flight completes first; what arrived
                // meanwhile (accounts to read among it: none is read
                // while a batch is in flight) goes in the next.
                if let Some(batch) = in_flight.take() {
                    let out = h.commit(batch, fail);
                    note_revisions(&out, &mut revisions);
                    check_replies(&out, &mut answered)?;
                }
                let out = h.flush(fail);
                note_revisions(&out, &mut revisions);
                check_replies(&out, &mut answered)?;
                check_after_batch(&mut h, &online)?;
            }
        }
    }
    if let Some(batch) = in_flight.take() {
        let out = h.commit(batch, false);
        check_replies(&out, &mut answered)?;
    }
    let out = h.flush(false);
    check_replies(&out, &mut answered)?;
    check_after_batch(&mut h, &online)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_keep_items_conserved_and_stacks_valid(
        steps in prop::collection::vec(step(), 1..120)
    ) {
        run_steps(Harness::new(), steps)?;
    }

    /// The same with loads that land batches later, as the `db-reader`
    /// thread's do: reads race commits, sessions end and begin again
    /// while their account is read, and memory still equals storage
    /// after every batch (see "Account loads" in the core's docs).
    #[test]
    fn the_same_with_loads_that_land_batches_later(
        steps in prop::collection::vec(step(), 1..120),
        delays in prop::collection::vec(0u8..4, 1..6),
    ) {
        run_steps(Harness::with_late_loads(delays), steps)?;
    }
}

/// A load that fails (a busy or briefly unreadable store) is tried again
/// by the player's requests, not left failing for the whole session; but
/// at most once every `LOAD_RETRY_TICKS`, so that a store that stays
/// broken for an account costs the tick one read a second, not one per
/// request. Meanwhile the requests wait, unanswered: their ids may have
/// been applied in an earlier session, whose answers come with the
/// inventory.
#[test]
fn an_inventory_that_failed_to_load_is_loaded_again_but_not_on_every_request() {
    let mut h = Harness::new();
    h.store.failing_loads = 2;
    h.push(Input::Connected { account: 1 });
    h.flush(false);
    assert_eq!(h.store.loads, 1);
    // Many requests at once: one more attempt at most, and none so soon.
    for id in 1..=20 {
        h.push(request_input(1, id, InventoryOp::List));
    }
    let out = h.flush(false);
    assert_eq!(h.store.loads, 1, "retried before the backoff");
    assert!(out.is_empty(), "waiting, not answered: {out:?}");
    assert_eq!(h.core.queued(), 20);
    h.ticks(LOAD_RETRY_TICKS as usize);
    for id in 21..=40 {
        h.push(request_input(1, id, InventoryOp::List));
    }
    let out = h.flush(false);
    assert_eq!(h.store.loads, 2, "one retry for forty requests");
    assert!(out.is_empty(), "waiting, not answered: {out:?}");
    // The store works again: the next retry loads it and every waiting
    // request is answered.
    h.ticks(LOAD_RETRY_TICKS as usize);
    let out = h.flush(false);
    assert_eq!(h.store.loads, 3);
    for id in 1..=40 {
        let reply = reply_of(&out, 1, id).expect("answered once loaded");
        assert!(reply.result.is_ok(), "{reply:?}");
    }
    assert_eq!(h.core.queued(), 0);
}

/// Account 1 drops one item with request 9 and leaves: the drop and its
/// committed reply, for a later session to send again.
fn drop_one_and_leave(h: &mut Harness) -> (InventoryOp, InventoryReply) {
    h.push(Input::Connected { account: 1 });
    let inv = gather(h, 1, 100);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    let drop_one = InventoryOp::Drop { slot, count: 1 };
    let dropped = h.request(1, 9, drop_one.clone());
    assert!(dropped.result.is_ok(), "{dropped:?}");
    h.push(Input::Disconnected { account: 1 });
    h.flush(false);
    (drop_one, dropped)
}

/// The client may take `Storage` as "not applied" and ask again under a
/// new id; a change committed in an earlier session must not get that
/// answer just because the inventory (and with it the remembered ids)
/// failed to load this time.
#[test]
fn an_id_applied_in_an_earlier_session_waits_for_its_answer_while_the_inventory_fails_to_load() {
    let mut h = Harness::new();
    let (drop_one, dropped) = drop_one_and_leave(&mut h);

    h.store.failing_loads = 1;
    h.push(Input::Connected { account: 1 });
    h.flush(false);
    h.push(request_input(1, 9, drop_one));
    let out = h.flush(false);
    assert_eq!(reply_of(&out, 1, 9), None, "no answer yet: {out:?}");

    h.ticks(LOAD_RETRY_TICKS as usize);
    let out = h.flush(false);
    assert_eq!(
        reply_of(&out, 1, 9),
        Some(dropped.clone()),
        "the original answer"
    );
    assert_eq!(
        h.core.inventory(1),
        dropped.result.as_ref().ok(),
        "dropped once"
    );
}

/// A give to an online player whose inventory failed to load (and is read
/// again) waits for it, as one to a player still loading does: that player
/// is not unknown, and a remembered `UnknownPlayer` would stick.
#[test]
fn a_give_to_an_online_player_whose_load_failed_waits_for_it() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.flush(false);
    let inv = gather(&mut h, 1, 1);
    h.store.failing_loads = 1;
    h.push(Input::Connected { account: 2 });
    h.flush(false);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    h.push(request_input(
        1,
        100,
        InventoryOp::Give {
            to: 2,
            slot,
            count: 1,
        },
    ));
    let out = h.flush(false);
    assert_eq!(reply_of(&out, 1, 100), None, "no answer yet: {out:?}");
    for _ in 0..LOAD_RETRY_TICKS {
        h.push(Input::Tick);
    }
    let mut out = h.flush(false);
    out.extend(h.flush(false));
    let reply = reply_of(&out, 1, 100).unwrap_or_else(|| {
        panic!(
            "answered once 2 is loaded: {out:?} {:?}",
            h.core.inventory(2)
        )
    });
    assert!(reply.result.is_ok(), "{reply:?}");
}

/// A give to an online player whose inventory never loads (a damaged row)
/// waits a few attempts, then is answered `Storage` (not applied: to be
/// sent again with its id), so that its sender's later requests, held
/// behind it in order, are answered too; sent again once the other
/// inventory loads, it applies.
#[test]
fn a_give_to_a_player_whose_inventory_never_loads_is_answered_in_the_end() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    h.flush(false);
    let inv = gather(&mut h, 1, 1);
    h.store.unloadable = Some(2);
    h.push(Input::Connected { account: 2 });
    h.flush(false);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    let give = InventoryOp::Give {
        to: 2,
        slot,
        count: 1,
    };
    h.push(request_input(1, 100, give.clone()));
    h.push(request_input(1, 101, InventoryOp::List));
    let mut out = Vec::new();
    for _ in 0..10 * LOAD_RETRY_TICKS {
        h.push(Input::Tick);
        out.extend(h.flush(false));
    }
    let refused = reply_of(&out, 1, 100).expect("the give answered");
    assert_eq!(refused.result, Err(InventoryError::Storage));
    let listed = reply_of(&out, 1, 101).expect("the list behind it answered");
    assert_eq!(listed.result, Ok(inv.clone()), "nothing given");
    assert!(h.store.loads <= 1 + 10 + 1, "{} loads", h.store.loads);

    h.store.unloadable = None;
    h.ticks(LOAD_RETRY_TICKS as usize);
    h.push(request_input(1, 100, give));
    let mut out = h.flush(false);
    out.extend(h.flush(false));
    let given = reply_of(&out, 1, 100).expect("the give sent again answered");
    assert!(given.result.is_ok(), "{given:?}");
    assert!(h.core.inventory(2).is_some());
}

/// A reply stored by a server of another protocol version may not decode:
/// its change was applied, so its id must still not apply again.
#[test]
fn an_applied_id_whose_stored_reply_no_longer_decodes_is_not_applied_again() {
    let mut h = Harness::new();
    let (drop_one, dropped) = drop_one_and_leave(&mut h);
    let after = dropped.result.expect("dropped");

    h.store.garble_replies = true;
    h.push(Input::Connected { account: 1 });
    h.flush(false);
    let again = h.request(1, 9, drop_one);
    assert_eq!(
        again.result,
        Ok(after.clone()),
        "answered with the inventory"
    );
    assert_eq!(h.core.inventory(1), Some(&after), "dropped once");
}

/// A session that ends while its requests wait for the inventory to load
/// takes them along: none is answered to the next session.
#[test]
fn requests_waiting_for_a_load_end_with_their_session() {
    let mut h = Harness::new();
    h.store.failing_loads = 1;
    h.push(Input::Connected { account: 1 });
    h.flush(false);
    h.push(request_input(1, 1, InventoryOp::List));
    h.flush(false);
    assert_eq!(h.core.queued(), 1);
    h.push(Input::Disconnected { account: 1 });
    h.push(Input::Connected { account: 1 });
    let out = h.flush(false);
    assert_eq!(reply_of(&out, 1, 1), None, "{out:?}");
    assert_eq!(h.core.queued(), 0);
}

/// A resent id whose change is committed is answered with its stored
/// reply even when the account's queue is full: `Busy` would say nothing
/// was applied. An id whose batch is still in flight is queued all the
/// same, once, and answered with its reply after the commit.
#[test]
fn a_full_queue_answers_a_committed_id_with_its_stored_reply() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    let inv = gather(&mut h, 1, 100);
    let (from, to, count) = first_move(&inv);
    let there = InventoryOp::Move { from, to, count };
    let back = InventoryOp::Move {
        from: to,
        to: from,
        count,
    };
    let committed = h.request(1, 1, there.clone());
    assert!(committed.result.is_ok(), "{committed:?}");

    // Id 2 in a batch in flight, then the account's queue filled.
    h.push(request_input(1, 2, back.clone()));
    let in_flight = h.core.prepare(&mut h.store).expect("a batch");
    for request_id in 0..config().max_queued_per_account as u64 {
        assert_eq!(
            h.core
                .push(request_input(1, 1_000 + request_id, InventoryOp::List)),
            None
        );
    }
    let answer =
        |h: &mut Harness, request_id, op| match h.core.push(request_input(1, request_id, op)) {
            Some(Output::Reply { reply, .. }) => reply.result,
            other => panic!("answered at once, got {other:?}"),
        };
    assert_eq!(answer(&mut h, 1, there.clone()), committed.result);
    assert_eq!(
        h.core.push(request_input(1, 2, back.clone())),
        None,
        "waits for its commit"
    );
    assert_eq!(answer(&mut h, 2, back), Err(InventoryError::Busy), "once");
    assert_eq!(answer(&mut h, 3, there), Err(InventoryError::Busy));

    let result = h.store.commit(&in_flight.writes);
    let mut out = h.core.complete(result);
    let original = reply_of(&out, 1, 2).expect("the original's reply");
    assert!(original.result.is_ok(), "{original:?}");
    out.extend(h.flush(false));
    assert_eq!(
        replies_to(&out, 1)
            .into_iter()
            .filter(|r| r.request_id == 2)
            .collect::<Vec<_>>(),
        vec![original.clone(), original],
        "the repeat answered with the original's reply"
    );
    assert_eq!(
        h.core.inventory(1).map(stacks),
        Some(stacks(&inv)),
        "moved there and back once"
    );
}

/// A player whose connection dropped sends its unanswered requests again.
/// One whose original still waits in a full queue (the commit before it is
/// slow) is queued behind it, not answered busy: busy would say it was not
/// applied, and sent again once the server has forgotten the id it would be
/// applied twice.
#[test]
fn a_repeat_of_a_queued_request_waits_for_it_in_a_full_queue() {
    let mut h = Harness::new();
    h.push(Input::Connected { account: 1 });
    let inv = gather(&mut h, 1, 100);
    let (from, to, count) = first_move(&inv);
    let there = InventoryOp::Move { from, to, count };

    // A batch in flight holds up the queue, where the move then waits
    // with the account's other requests up to its bound.
    h.push(request_input(1, 1, InventoryOp::List));
    let in_flight = h.core.prepare(&mut h.store).expect("a batch");
    assert_eq!(h.core.push(request_input(1, 2, there.clone())), None);
    for request_id in 1..config().max_queued_per_account as u64 {
        assert_eq!(
            h.core
                .push(request_input(1, 1_000 + request_id, InventoryOp::List)),
            None
        );
    }
    assert_eq!(h.core.push(request_input(1, 2, there.clone())), None);
    assert!(
        matches!(
            h.core.push(request_input(1, 2, there.clone())),
            Some(Output::Reply { reply, .. }) if reply.result == Err(InventoryError::Busy)
        ),
        "one copy waits at most"
    );

    let result = h.store.commit(&in_flight.writes);
    let mut out = h.core.complete(result);
    out.extend(h.flush(false));
    let answers: Vec<_> = replies_to(&out, 1)
        .into_iter()
        .filter(|r| r.request_id == 2)
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers[0].result.is_ok(), "{answers:?}");
    assert_eq!(
        answers[0], answers[1],
        "the repeat gets the original's reply"
    );
    let moved = h.core.inventory(1).unwrap();
    assert_eq!(moved.slots[usize::from(to)], inv.slots[usize::from(from)]);
    assert_eq!(moved.slots[usize::from(from)], None, "moved once");
}

/// Account 1 with items, stored and unloaded again: its inventory.
fn stored_with_items(h: &mut Harness) -> InventorySnapshot {
    h.push(Input::Connected { account: 1 });
    let inv = gather(h, 1, 100);
    h.push(Input::Disconnected { account: 1 });
    h.flush(false);
    assert!(h.core.inventory(1).is_none(), "unloaded");
    inv
}

/// The replies to `account` in `out`, in order.
fn replies_to(out: &[Output], account: u64) -> Vec<InventoryReply> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reply {
                account: a, reply, ..
            } if *a == account => Some(reply.clone()),
            _ => None,
        })
        .collect()
}

/// One tick: a `Tick` and a batch.
fn tick(h: &mut Harness) -> Vec<Output> {
    h.push(Input::Tick);
    h.flush(false)
}

/// A give to a player who is online but whose account is still being
/// read waits for it (it is no unknown player), and the giver's later
/// requests wait behind it, in order.
#[test]
fn a_give_to_a_player_still_loading_waits_for_the_load() {
    let mut h = Harness::with_late_loads(vec![0]);
    h.push(Input::Connected { account: 1 });
    let inv = gather(&mut h, 1, 100);
    let slot = inv.slots.iter().position(Option::is_some).unwrap() as u16;
    let stack = inv.slots[usize::from(slot)].unwrap();

    h.late().delays = vec![3];
    h.push(Input::Connected { account: 2 });
    tick(&mut h);
    h.push(request_input(
        1,
        50,
        InventoryOp::Give {
            to: 2,
            slot,
            count: stack.count,
        },
    ));
    h.push(request_input(1, 51, InventoryOp::List));
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.extend(replies_to(&tick(&mut h), 1));
    }
    let ids: Vec<u64> = replies.iter().map(|r| r.request_id).collect();
    assert_eq!(ids, [50, 51], "in order: {replies:?}");
    assert!(replies[0].result.is_ok(), "{replies:?}");
    let got = h.core.inventory(2).expect("loaded");
    assert!(got.slots.contains(&Some(stack)), "{got:?}");
}

/// While a player's account is being read, its requests wait and the
/// others' are answered; once it lands they are answered in the order
/// they came (here each move depends on the one before).
#[test]
fn requests_wait_for_a_load_under_way_and_are_answered_in_order_once_it_lands() {
    let mut h = Harness::with_late_loads(vec![0]);
    let inv = stored_with_items(&mut h);
    h.push(Input::Connected { account: 2 });
    tick(&mut h);
    let (from, to, count) = first_move(&inv);

    h.late().delays = vec![3];
    h.push(Input::Connected { account: 1 });
    h.push(request_input(1, 1, InventoryOp::Move { from, to, count }));
    h.push(request_input(
        1,
        2,
        InventoryOp::Move {
            from: to,
            to: from,
            count,
        },
    ));
    h.push(request_input(1, 3, InventoryOp::List));
    h.push(request_input(2, 10, InventoryOp::List));
    let out = tick(&mut h);
    assert!(reply_of(&out, 2, 10).is_some(), "the others go on: {out:?}");
    for _ in 0..2 {
        assert_eq!(replies_to(&out, 1), vec![], "waiting");
        assert_eq!(h.core.queued(), 3);
        assert!(h.core.inventory(1).is_none());
        let out = tick(&mut h);
        assert_eq!(replies_to(&out, 1), vec![], "waiting");
    }
    let out = tick(&mut h);
    let replies = replies_to(&out, 1);
    let ids: Vec<u64> = replies.iter().map(|r| r.request_id).collect();
    assert_eq!(ids, [1, 2, 3], "in order: {replies:?}");
    let moved = replies[0].result.clone().expect("moved there");
    assert_eq!(moved.slots[usize::from(to)], inv.slots[usize::from(from)]);
    let back = replies[1].result.clone().expect("moved back");
    assert_eq!(stacks(&back), stacks(&inv));
    assert_eq!(replies[2].result, Ok(back));
    assert_eq!(h.core.queued(), 0);
    assert_eq!(h.late().asks(1), 1 + 4, "one ask per batch while loading");
}

/// An account that sends nothing lands too: loads under way are polled at
/// every batch, not only when a request of theirs comes.
#[test]
fn a_load_under_way_lands_without_requests() {
    let mut h = Harness::with_late_loads(vec![2]);
    h.push(Input::Connected { account: 1 });
    tick(&mut h);
    tick(&mut h);
    assert!(h.core.inventory(1).is_none(), "still loading");
    tick(&mut h);
    assert_eq!(
        h.core.inventory(1).map(|inv| inv.slots.len()),
        Some(SLOTS),
        "landed, at the configured size"
    );
}

/// A session that ends while its account is read takes its waiting
/// requests along, and the core stops asking for the account and tells
/// the loader; a new session asks again.
#[test]
fn a_disconnect_while_the_load_is_under_way_forgets_it() {
    let mut h = Harness::with_late_loads(vec![0]);
    let inv = stored_with_items(&mut h);
    h.late().forgotten.clear();
    h.late().delays = vec![5];
    h.push(Input::Connected { account: 1 });
    h.push(request_input(1, 1, InventoryOp::List));
    tick(&mut h);
    assert_eq!(h.core.queued(), 1);

    h.push(Input::Disconnected { account: 1 });
    let out = tick(&mut h);
    assert_eq!(replies_to(&out, 1), vec![]);
    assert_eq!(h.late().forgotten, vec![1]);
    assert_eq!(h.core.queued(), 0, "its requests ended with it");
    let asks = h.late().asks(1);
    for _ in 0..6 {
        let out = tick(&mut h);
        assert_eq!(replies_to(&out, 1), vec![]);
    }
    assert_eq!(h.late().asks(1), asks, "not asked for once gone");
    assert!(h.core.inventory(1).is_none());

    h.push(Input::Connected { account: 1 });
    h.push(request_input(1, 2, InventoryOp::List));
    let mut answer = None;
    for _ in 0..10 {
        let out = tick(&mut h);
        assert_eq!(reply_of(&out, 1, 1), None, "the old session's request");
        if let Some(reply) = reply_of(&out, 1, 2) {
            answer = Some(reply);
            break;
        }
    }
    assert_eq!(
        answer.expect("answered").result.map(|i| stacks(&i)),
        Ok(stacks(&inv))
    );
}

/// A load that fails after a while goes the way of any failed load: its
/// requests wait, it is not asked for on every batch, and a request after
/// `LOAD_RETRY_TICKS` starts it again; when that one lands they are all
/// answered.
#[test]
fn a_load_that_fails_after_a_while_is_retried_and_its_requests_answered() {
    let mut h = Harness::with_late_loads(vec![2]);
    h.store.failing_loads = 1;
    h.push(Input::Connected { account: 1 });
    h.push(request_input(1, 1, InventoryOp::List));
    for _ in 0..3 {
        let out = tick(&mut h);
        assert_eq!(replies_to(&out, 1), vec![]);
    }
    assert_eq!(h.store.loads, 1);
    let asks = h.late().asks(1);
    for _ in 0..3 {
        let out = tick(&mut h);
        assert_eq!(replies_to(&out, 1), vec![], "failed, waiting");
    }
    assert_eq!(h.late().asks(1), asks, "failed loads wait for a request");
    assert_eq!(h.core.queued(), 1);

    h.ticks(LOAD_RETRY_TICKS as usize);
    h.push(request_input(1, 2, InventoryOp::List));
    let mut out = Vec::new();
    for _ in 0..4 {
        out.extend(tick(&mut h));
    }
    assert_eq!(h.store.loads, 2, "read again once");
    let ids: Vec<u64> = replies_to(&out, 1).iter().map(|r| r.request_id).collect();
    assert_eq!(ids, [1, 2]);
    assert!(h.core.inventory(1).is_some());
}
