//! The inventory rules as plain Rust: no bevy, no threads, no clock.
//!
//! [`InventoryCore`] turns ordered [`Input`]s into batches of storage
//! writes and, once a batch's commit result is known, into [`Output`]s:
//!
//! ```text
//! push(Input)* ─► prepare(loader) ─► Batch { writes } ─► store.commit ─► complete(result) ─► Output*
//! ```
//!
//! At most one batch is in flight. Inputs pushed meanwhile wait in a
//! bounded queue, so every batch is computed from committed state: when a
//! commit fails, the pre-images recorded while building the batch restore
//! memory exactly, every request of the batch is answered
//! [`InventoryError::Storage`] and is not remembered as applied.
//!
//! # When a request counts as answered
//!
//! - Every reply, read-only (`List`, `ListWorld`) or not, is released only
//!   by [`InventoryCore::complete`], i.e. after its whole batch committed
//!   (a batch without writes has nothing to commit and is resolved with
//!   `Ok` without the store). The exceptions come from
//!   [`InventoryCore::push`] when the queue is full, or for an offer of
//!   more than [`MAX_TRADE_SLOTS`] stacks (refused on arrival):
//!   [`InventoryError::Busy`] or [`InventoryError::BadOffer`], which
//!   applied nothing and are not remembered, or, for an id whose change is
//!   already committed, its stored reply.
//! - When the commit fails, every request applied in the batch, read-only
//!   ones included, is answered `Storage` and nothing about it is
//!   remembered, so the same id sent again is a new request. A repeated
//!   id answered from memory in that batch keeps its original answer.
//! - A request of a player whose inventory failed to load waits in the
//!   queue (within its bounds) until a retry loads it: its id may have
//!   been applied in an earlier session, and the answers of those come
//!   with the inventory, so it is answered neither `Storage` ("not
//!   applied") nor applied again.
//! - A request id is answered once and then again with the same reply:
//!   changes (successful non-read-only operations) are stored with their
//!   reply in the same transaction and remembered across sessions and
//!   restarts (the most recent [`REMEMBERED_REQUESTS`] per account);
//!   read-only answers and refusals change nothing, are not stored and are
//!   remembered until the session ends (the most recent
//!   [`REMEMBERED_REQUESTS`], counted apart from the changes).
//! - Outputs go to the session that caused them. A session ends at its
//!   account's [`Input::Disconnected`]; outputs for the account not yet
//!   released then are dropped: those computed earlier in the same batch,
//!   and those of the in-flight batch when the `Disconnected` is queued
//!   behind it. Nobody received them, so nothing acknowledged is lost; a
//!   change among them is still committed, and its id sent again in a
//!   later session gets the stored answer.
//! - A disconnect is not rolled back by a failed commit: trades the
//!   rollback would restore with a side that has left stay cancelled,
//!   also when that side is back in a new session (it never saw them).
//!   Its partner is told.
//!
//! Conservation: items enter only through the spawner (minted), leave only
//! through use (consumed), and every other operation moves whole counts
//! between inventories and the world, all or nothing. So per item id,
//! held + in world = minted − consumed after every batch.
//!
//! # Retired items
//!
//! An item taken out of the catalogue (its id never reused) may still be
//! stored: held by players, or lying in the world. It stays where it is,
//! so that nothing acknowledged is lost and the item comes back as it
//! was should the catalogue define it again:
//!
//! - held ones load with their inventory and can be moved between slots
//!   (split and swapped, not merged); using, dropping, giving or offering them is
//!   refused [`InventoryError::NotUsable`], so they never spread to the
//!   world or to other players;
//! - world ones are left stored but out of the game:
//!   [`InventoryCore::load`] leaves them out of memory with a warning, so
//!   they are not listed, cannot be picked up and do not count towards
//!   [`CoreConfig::max_world_items`]. No write touches them (world item
//!   ids are never used again), so the store stays balanced.
//!
//! # Account loads
//!
//! A connecting player's account is read through an [`AccountLoader`],
//! which may answer [`Poll::Pending`] (the server's reads run on the
//! `db-reader` thread, see [`crate::persistence::AccountReader`]). Until
//! the account is in memory its requests wait in the queue, as those of
//! an account whose load failed do, and so do a give or an offer to it
//! (with the sender's later requests, in order), until its load has
//! failed [`PARTNER_LOAD_ATTEMPTS`] times in a row: the give or offer is
//! then answered [`InventoryError::Storage`] (not applied; sent again
//! with its id, it applies once that account loads). Every
//! [`InventoryCore::prepare`] without a batch in flight first polls the
//! accounts still loading, so an account lands at the first `prepare`
//! after its read finishes and the batch in flight, if any, resolves,
//! requests or not.
//!
//! A load may thus run while a batch commits on the writer. Its result
//! is the committed state all the same, even one requested in an earlier
//! session of the account:
//!
//! - a batch writes only accounts whose inventory is in memory (an
//!   operation, a give or a trade's swap needs every inventory it
//!   touches loaded; world items, the ledger and the counters are not
//!   per account and are loaded once, at start);
//! - an account leaves memory only when the batch holding its
//!   [`Input::Disconnected`] has resolved, i.e. after every batch that
//!   wrote it has committed (a failed one stored nothing, and memory is
//!   restored to match);
//! - a load is requested only for an account not in memory, from
//!   `prepare`, which runs only with no batch in flight;
//! - the account then enters memory only through that load's result:
//!   the loader has at most one read of an account under way (a second
//!   read, requested while the first ran, could come back after the
//!   first result had been loaded and changed by its session, and load
//!   the older state again in a later session).
//!
//! So from a load's request until its result is in memory, nothing
//! writes the account's rows.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::task::Poll;

use glam::Vec2;
use shared::protocol::inventory::{
    InventoryError, InventoryOp, InventoryReply, InventoryRequest, InventorySnapshot,
    InventoryUpdate, ItemId, ItemStack, MAX_LISTED_WORLD_ITEMS, MAX_SLOTS, MAX_TRADE_SLOTS,
    OfferedStack, REMEMBERED_REQUESTS, TradeOffer, TradeState, TradeUpdate, WorldItem, WorldItems,
};

use super::catalogue::Catalogue;
use crate::persistence::{
    AccountState, BatchWrites, Counters, InventoryStore, LedgerRow, StoreError, WorldState,
};

/// Tunables of the inventory rules (`[inventory]` in the config file).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// Slots per inventory (default 24, at most [`MAX_SLOTS`]).
    pub slots: usize,
    /// Most items lying in the world (default 256): the spawner stops
    /// there and drops are refused with [`InventoryError::WorldFull`].
    pub max_world_items: usize,
    /// The spawner mints one stack every this many ticks (default 10).
    pub spawn_every_ticks: u64,
    /// The spawner fills the world up to this many items (default 64).
    pub spawner_target: usize,
    /// Spawned items land within this many metres of `world_center` on
    /// both axes (default 100), a square that must lie inside the
    /// `[movement]` world (checked at start, as players cannot reach an item
    /// outside it) unless nothing spawns.
    pub world_extent: f32,
    /// The centre of the `[movement]` world, which the spawn square is
    /// around: set from it at start, not a setting of its own.
    #[serde(skip)]
    pub world_center: Vec2,
    /// How far a player reaches to pick up, in metres (default 5); not
    /// checked for a player without a position (not spawned in the world).
    pub pickup_radius: f32,
    /// Inputs waiting for the next batch (default 4096): those that come
    /// while a batch is in flight, and requests waiting for their
    /// player's inventory to load; requests beyond it are answered
    /// [`InventoryError::Busy`].
    pub max_queued: usize,
    /// Of those, requests of one account (default 64); its requests beyond
    /// are answered [`InventoryError::Busy`], so that a few flooding
    /// players cannot fill the queue and leave everyone else busy.
    pub max_queued_per_account: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            slots: 24,
            max_world_items: 256,
            spawn_every_ticks: 10,
            spawner_target: 64,
            world_extent: 100.0,
            world_center: Vec2::ZERO,
            pickup_radius: 5.0,
            max_queued: 4096,
            max_queued_per_account: 64,
        }
    }
}

impl CoreConfig {
    /// Whether these values can run a game: a clear message for the first
    /// that cannot (a NaN extent would fail every spawn's write, a NaN
    /// radius would let anyone pick up anything, a zero queue would answer
    /// every request busy).
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_SLOTS).contains(&self.slots) {
            return Err(format!(
                "slots must be 1 to {MAX_SLOTS}, got {}",
                self.slots
            ));
        }
        if self.spawn_every_ticks == 0 {
            return Err("spawn_every_ticks must be at least 1".to_owned());
        }
        if !(self.world_extent.is_finite() && self.world_extent > 0.0) {
            return Err(format!(
                "world_extent must be a positive number of metres, got {}",
                self.world_extent
            ));
        }
        if !(self.pickup_radius.is_finite() && self.pickup_radius >= 0.0) {
            return Err(format!(
                "pickup_radius must be zero or more metres, got {}",
                self.pickup_radius
            ));
        }
        for (name, value) in [
            ("max_queued", self.max_queued),
            ("max_queued_per_account", self.max_queued_per_account),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        // One batch in flight and as many queued behind it can be applied
        // but unanswered at once: all of them must stay remembered, or a
        // retry after a reconnect would apply one again.
        let most = REMEMBERED_REQUESTS / 2;
        if self.max_queued_per_account > most {
            return Err(format!(
                "max_queued_per_account must be at most {most} (half the request ids \
                 remembered per player), got {}",
                self.max_queued_per_account
            ));
        }
        Ok(())
    }
}

/// Ticks remembered while a batch is in flight, at most; the spawner
/// skips the rest (about 30 s at 30 Hz).
pub const MAX_PENDING_TICKS: u64 = 1024;

/// Something that happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A player's session started (load its inventory).
    Connected {
        /// Its account.
        account: u64,
    },
    /// A player's session ended (cancel its trades, unload it).
    Disconnected {
        /// Its account.
        account: u64,
    },
    /// A request.
    Request {
        /// From whom.
        account: u64,
        /// What.
        request: InventoryRequest,
        /// The player's position, if it has one.
        position: Option<Vec2>,
        /// Opaque to the core; handed back with the reply (the caller
        /// measures latency with it).
        tag: u64,
    },
    /// One tick passed (the spawner's clock).
    Tick,
}

/// What to send once a batch is resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The answer to a request.
    Reply {
        /// To whom.
        account: u64,
        /// The answer.
        reply: InventoryReply,
        /// The request's tag.
        tag: u64,
    },
    /// An inventory changed without the owner asking.
    Update {
        /// Whose.
        account: u64,
        /// The new state.
        update: InventoryUpdate,
    },
    /// A trade changed; for both sides.
    Trade {
        /// To whom.
        account: u64,
        /// The trade.
        update: TradeUpdate,
    },
    /// World items, for a `ListWorld`.
    World {
        /// To whom.
        account: u64,
        /// The items.
        items: WorldItems,
    },
}

impl Output {
    /// To whom it goes.
    pub fn account(&self) -> u64 {
        match self {
            Self::Reply { account, .. }
            | Self::Update { account, .. }
            | Self::Trade { account, .. }
            | Self::World { account, .. } => *account,
        }
    }

    /// What a later output of the same key makes stale: an account's
    /// inventory, or its view of one trade. Answers are never stale.
    fn state_of(&self) -> Option<(u64, Option<u64>)> {
        match self {
            Self::Update { account, .. } => Some((*account, None)),
            Self::Trade { account, update } => Some((*account, Some(update.trade))),
            Self::Reply { .. } | Self::World { .. } => None,
        }
    }
}

/// `outputs` with only the last of the updates of each account's
/// inventory and of each trade it sees, where that one stands. Each
/// update carries the whole state, so the last says all the others would;
/// without this, other players' requests could send one player an update
/// each (64 re-offers a tick from one account, or gifts from many), more
/// than its reliable channel drains, until it was cut off for a full send
/// queue.
fn latest_states(outputs: Vec<Output>) -> Vec<Output> {
    let mut last = HashMap::new();
    for (i, output) in outputs.iter().enumerate() {
        if let Some(key) = output.state_of() {
            last.insert(key, i);
        }
    }
    outputs
        .into_iter()
        .enumerate()
        .filter(|(i, output)| output.state_of().is_none_or(|key| last[&key] == *i))
        .map(|(_, output)| output)
        .collect()
}

/// A batch to commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The writes, all in one transaction.
    pub writes: BatchWrites,
}

/// Why the core could not start or load.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Side {
    account: u64,
    /// (slot, item at offer time, count)
    items: Vec<(u16, ItemId, u32)>,
    accepted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Trade {
    initiator: Side,
    partner: Side,
    /// One more with every offer (see [`TradeUpdate::revision`]); an
    /// accept of another revision is refused.
    revision: u64,
}

impl Trade {
    fn side_mut(&mut self, account: u64) -> Option<&mut Side> {
        if self.initiator.account == account {
            Some(&mut self.initiator)
        } else if self.partner.account == account {
            Some(&mut self.partner)
        } else {
            None
        }
    }

    fn involves(&self, account: u64) -> bool {
        self.initiator.account == account || self.partner.account == account
    }

    fn update(&self, id: u64, state: TradeState) -> TradeUpdate {
        let offer = |s: &Side| {
            s.items
                .iter()
                .map(|&(slot, item, count)| OfferedStack {
                    slot,
                    stack: ItemStack { item, count },
                })
                .collect()
        };
        TradeUpdate {
            trade: id,
            revision: self.revision,
            initiator: self.initiator.account,
            partner: self.partner.account,
            initiator_offer: offer(&self.initiator),
            partner_offer: offer(&self.partner),
            state,
        }
    }
}

/// The open trades, by id and by player: a player is in at most one (an
/// offer that opens a trade cancels the opener's other one and is refused
/// when the partner is in one), so finding a player's trade does not scan
/// them all.
#[derive(Debug, Default)]
struct OpenTrades {
    by_id: BTreeMap<u64, Trade>,
    by_account: HashMap<u64, u64>,
}

impl OpenTrades {
    fn get(&self, id: u64) -> Option<&Trade> {
        self.by_id.get(&id)
    }

    /// The trade, to change its offers or acceptances (not its sides).
    fn get_mut(&mut self, id: u64) -> Option<&mut Trade> {
        self.by_id.get_mut(&id)
    }

    /// The open trade `account` is in.
    fn of(&self, account: u64) -> Option<u64> {
        self.by_account.get(&account).copied()
    }

    /// Opens a trade between two players who are in none.
    fn insert(&mut self, id: u64, trade: Trade) {
        for account in [trade.initiator.account, trade.partner.account] {
            let previous = self.by_account.insert(account, id);
            debug_assert_eq!(previous, None, "player {account} is in two trades");
        }
        self.by_id.insert(id, trade);
    }

    fn remove(&mut self, id: u64) -> Option<Trade> {
        let trade = self.by_id.remove(&id)?;
        for account in [trade.initiator.account, trade.partner.account] {
            if self.by_account.get(&account) == Some(&id) {
                self.by_account.remove(&account);
            }
        }
        Some(trade)
    }

    /// Puts back the trades a batch changed, from their pre-images.
    fn restore(&mut self, before: HashMap<u64, Option<Trade>>) {
        // All out first: a restored trade may hold a player whom the
        // batch moved into another of the changed trades.
        for &id in before.keys() {
            self.remove(id);
        }
        for (id, trade) in before {
            if let Some(trade) = trade {
                self.insert(id, trade);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Trade)> {
        self.by_id.iter().map(|(&id, t)| (id, t))
    }
}

/// The answers an account's repeated request ids get again: the newest
/// [`REMEMBERED_REQUESTS`] changes (stored with them, as the store keeps
/// them) and, apart, the newest as many other answers. One bound for both
/// would let read-only requests push a change's id out while the store
/// still holds it, and the change would be applied again.
///
/// The bound is applied by [`Applied::trim`] once the batch that added
/// answers has committed, as the store prunes in the same commit: while a
/// batch is built, the answers it adds come on top (at most the queued
/// requests of the account), so that a failed commit, which removes them,
/// leaves exactly the answers the store still holds.
///
/// An answer is kept as its message bytes ([`encode_reply`]; for a change,
/// the bytes stored with it) and decoded only when its id comes again,
/// which is rare: a reply carries the whole inventory, and 24 slots take
/// 288 bytes as values where they encode in about 80.
#[derive(Debug, Default)]
struct Applied {
    /// Request ids in arrival order: the stored ones, the others.
    order: [VecDeque<u64>; 2],
    /// request id → (original reply's message bytes, stored with its
    /// change?)
    replies: HashMap<u64, (Box<[u8]>, bool)>,
}

impl Applied {
    fn insert(&mut self, request_id: u64, reply: Box<[u8]>, stored: bool) {
        self.remove(request_id);
        self.order[usize::from(!stored)].push_back(request_id);
        self.replies.insert(request_id, (reply, stored));
    }

    /// Forgets the oldest answers beyond [`REMEMBERED_REQUESTS`] of each
    /// kind.
    fn trim(&mut self) {
        for order in &mut self.order {
            while order.len() > REMEMBERED_REQUESTS {
                if let Some(old) = order.pop_front() {
                    self.replies.remove(&old);
                }
            }
        }
    }

    fn get(&self, request_id: u64) -> Option<&[u8]> {
        self.replies.get(&request_id).map(|(reply, _)| &reply[..])
    }

    /// The answer of a change, stored with it.
    fn get_stored(&self, request_id: u64) -> Option<&[u8]> {
        match self.replies.get(&request_id) {
            Some((reply, true)) => Some(reply),
            _ => None,
        }
    }

    /// Forgets the answers that were not stored (read-only operations and
    /// refusals): they belong to the session that ends.
    fn forget_unstored(&mut self) {
        self.replies.retain(|_, (_, stored)| *stored);
        self.order[1].clear();
    }

    fn remove(&mut self, request_id: u64) {
        if let Some((_, stored)) = self.replies.remove(&request_id) {
            self.order[usize::from(!stored)].retain(|&r| r != request_id);
        }
    }
}

/// Pre-images and effects of the batch being built.
#[derive(Debug, Default)]
struct Building {
    inventories: HashMap<u64, Option<InventorySnapshot>>,
    world: HashMap<u64, Option<WorldItem>>,
    ledger: HashMap<ItemId, LedgerRow>,
    counters: Option<Counters>,
    trades: HashMap<u64, Option<Trade>>,
    /// Requests applied in this batch: (account, request id, persisted?).
    applied: Vec<(u64, u64, bool)>,
    outputs: Vec<Output>,
    evict: Vec<u64>,
    /// Accounts another's offer drew into a new trade in this batch: one
    /// each (see [`InventoryCore::offer`]).
    drawn_in: HashSet<u64>,
}

/// The inventory rules and state (see the module docs).
#[derive(Debug)]
pub struct InventoryCore {
    catalogue: Arc<Catalogue>,
    config: CoreConfig,
    inventories: HashMap<u64, InventorySnapshot>,
    applied: HashMap<u64, Applied>,
    online: HashSet<u64>,
    /// Online accounts whose inventory failed to load: the tick of the
    /// last attempt (their requests try again at most every
    /// [`LOAD_RETRY_TICKS`]) and the failures in a row.
    load_failed: HashMap<u64, (u64, u32)>,
    /// Online accounts whose load the loader has not finished
    /// ([`Poll::Pending`]): polled at every [`InventoryCore::prepare`]
    /// without a batch in flight.
    loading: HashSet<u64>,
    /// Loaded accounts whose inventory grew to more slots than its row
    /// holds: written with the next batch that writes (their version must
    /// not go back when a later start has fewer slots).
    unsaved_growth: HashSet<u64>,
    world: BTreeMap<u64, WorldItem>,
    ledger: BTreeMap<ItemId, LedgerRow>,
    counters: Counters,
    trades: OpenTrades,
    ticks: u64,
    pending_ticks: u64,
    queue: VecDeque<Input>,
    /// Requests in `queue`, by account.
    queued_by_account: HashMap<u64, usize>,
    /// Copies of each `(account, request id)` in `queue`.
    queued_ids: HashMap<(u64, u64), u8>,
    building: Option<Building>,
    in_flight: Option<Building>,
}

/// Ticks between two attempts to load an inventory that failed to load
/// (one second at 30 Hz): a store that stays broken for an account costs
/// one read a second, not one per request.
pub const LOAD_RETRY_TICKS: u64 = 30;

/// Failed loads in a row of a give's or an offer's other player after
/// which the request stops waiting for it and is answered
/// [`InventoryError::Storage`] (about two seconds at [`LOAD_RETRY_TICKS`]):
/// an inventory that never loads (a damaged row) must not hold its
/// sender's requests for as long as that player stays online.
pub const PARTNER_LOAD_ATTEMPTS: u32 = 3;

/// One account's stored state made ready for memory by
/// [`prepare_account`]: all the work of a load but the reads, so that it
/// can run where the reads run (the `db-reader` thread) and the core only
/// inserts it.
#[derive(Debug)]
pub struct LoadedAccount {
    inventory: InventorySnapshot,
    applied: Applied,
    /// Stored replies that did not decode.
    unreadable: usize,
    /// A stored inventory grown to more slots: newer than the row, which
    /// the next batch that writes brings up to date.
    grown: bool,
}

impl LoadedAccount {
    /// The inventory, with at least the slots asked for.
    pub fn inventory(&self) -> &InventorySnapshot {
        &self.inventory
    }

    /// How many stored replies did not decode: their ids are answered
    /// with the inventory as it is (see [`prepare_account`]).
    pub fn unreadable(&self) -> usize {
        self.unreadable
    }
}

/// Makes an account's stored state ready for memory: its inventory grown
/// to `slots` slots (a new account's empty; a stored one grown is newer
/// by the slots it gained, as a client that saw it before must not see
/// two contents under one version; the core stores the grown inventory
/// with its next batch that writes, so that a later start with fewer
/// slots keeps it,
/// and its version, instead of growing the old row to less), its stored
/// replies checked. Pure; runs on any thread.
///
/// A reply stored by a server of another protocol version may no longer
/// decode. Its change was applied all the same: the id must still not
/// apply again, so it is answered with the inventory as it is stored
/// ([`LoadedAccount::unreadable`] counts them): not as grown to more slots
/// here, which its player may be shown only once that is stored (such an
/// answer can go out at once, outside any batch, and a restart with fewer
/// slots would then make that version again, with other contents).
pub fn prepare_account(state: AccountState, slots: usize) -> LoadedAccount {
    let stored = state.inventory.is_some();
    let mut inventory = state.inventory.unwrap_or_default();
    let mut applied = Applied::default();
    let mut unreadable = 0usize;
    for (request_id, bytes) in state.applied {
        let reply = if decode_reply(&bytes, request_id).is_some() {
            bytes.into_boxed_slice()
        } else {
            unreadable += 1;
            encode_reply(&unreadable_reply(request_id, &inventory))
        };
        applied.insert(request_id, reply, true);
    }
    applied.trim();
    let grown = stored && inventory.slots.len() < slots;
    if inventory.slots.len() < slots {
        let gained = slots - inventory.slots.len();
        inventory.slots.resize(slots, None);
        if stored {
            inventory.version += gained as u64;
        }
    }
    LoadedAccount {
        inventory,
        applied,
        unreadable,
        grown,
    }
}

/// Where [`InventoryCore::prepare`] gets the accounts of players who
/// connect. Every [`InventoryStore`] is one that reads at once; the
/// server's is [`crate::persistence::AccountReader`], which reads on the
/// `db-reader` thread.
///
/// A loader that reads later must have at most one read of an account
/// under way, and hand out only what was read after it was first asked
/// for (see "Account loads" in the module docs).
pub trait AccountLoader {
    /// `account`'s stored state, prepared for `slots` slots
    /// ([`prepare_account`]), or [`Poll::Pending`] while it is being
    /// read: the core asks again at each `prepare` until it is ready or
    /// [`AccountLoader::forget`]s the account.
    ///
    /// # Errors
    /// [`StoreError`] when the account cannot be read; the core tries
    /// again after [`LOAD_RETRY_TICKS`] when its player sends a request.
    fn load(&mut self, account: u64, slots: usize) -> Poll<Result<LoadedAccount, StoreError>>;

    /// The core no longer waits for `account` (its session ended): a
    /// result for it may be dropped. Called at every disconnect.
    fn forget(&mut self, _account: u64) {}
}

impl<S: InventoryStore + ?Sized> AccountLoader for S {
    fn load(&mut self, account: u64, slots: usize) -> Poll<Result<LoadedAccount, StoreError>> {
        Poll::Ready(
            self.load_account(account)
                .map(|state| prepare_account(state, slots)),
        )
    }
}

/// A reply's message bytes, as remembered and stored. Should encoding
/// fail (it does not for a reply), the empty bytes left in its place are
/// answered as [`unreadable_reply`], now and after a restart.
fn encode_reply(reply: &InventoryReply) -> Box<[u8]> {
    shared::protocol::encode(reply)
        .map(|b| Box::from(&b[..]))
        .unwrap_or_default()
}

/// The reply `bytes` hold, if they hold one for `request_id`.
fn decode_reply(bytes: &[u8], request_id: u64) -> Option<InventoryReply> {
    shared::protocol::decode::<InventoryReply>(bytes)
        .ok()
        .filter(|reply| reply.request_id == request_id)
}

/// The answer of an applied id whose reply does not decode: its change
/// was applied all the same, so the id must still not apply again; it is
/// answered with `inventory` (as stored, see [`prepare_account`]).
fn unreadable_reply(request_id: u64, inventory: &InventorySnapshot) -> InventoryReply {
    InventoryReply {
        request_id,
        result: Ok(inventory.clone()),
        trade: None,
    }
}

impl InventoryCore {
    /// Loads the shared state from `store`.
    ///
    /// World items of a retired item (one the catalogue no longer
    /// defines) are left out of memory, with a warning: they stay stored
    /// as they are, out of the game (see "Retired items" in the module
    /// docs).
    ///
    /// # Errors
    /// [`CoreError`].
    pub fn load(
        catalogue: Arc<Catalogue>,
        mut config: CoreConfig,
        store: &mut dyn InventoryStore,
    ) -> Result<Self, CoreError> {
        config.slots = config.slots.clamp(1, MAX_SLOTS);
        let WorldState {
            world,
            ledger,
            counters,
        } = store.load_world()?;
        let (world, retired): (Vec<WorldItem>, Vec<WorldItem>) = world
            .into_iter()
            .partition(|w| catalogue.get(w.stack.item).is_some());
        if !retired.is_empty() {
            let items: std::collections::BTreeSet<u32> =
                retired.iter().map(|w| w.stack.item.0).collect();
            tracing::warn!(
                world_items = retired.len(),
                ?items,
                "world items of items the catalogue does not define are left stored, \
                 out of the game"
            );
        }
        Ok(Self {
            catalogue,
            config,
            inventories: HashMap::new(),
            applied: HashMap::new(),
            online: HashSet::new(),
            load_failed: HashMap::new(),
            loading: HashSet::new(),
            unsaved_growth: HashSet::new(),
            world: world.into_iter().map(|w| (w.id, w)).collect(),
            ledger,
            counters,
            trades: OpenTrades::default(),
            ticks: 0,
            pending_ticks: 0,
            queue: VecDeque::new(),
            queued_by_account: HashMap::new(),
            queued_ids: HashMap::new(),
            building: None,
            in_flight: None,
        })
    }

    /// The catalogue.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Queues an input. A request beyond [`CoreConfig::max_queued`], or
    /// beyond [`CoreConfig::max_queued_per_account`] of its account, is
    /// answered at once (returned here): with its stored reply when its id
    /// is a committed change, else with [`InventoryError::Busy`]; so is an
    /// offer of more than [`MAX_TRADE_SLOTS`] stacks, with
    /// [`InventoryError::BadOffer`]. Ticks are counted, not queued.
    ///
    /// Past those bounds, the repeat of an id that is queued or in the
    /// batch being stored is queued all the same, once (a further copy is
    /// busy while one waits): it is answered with that change's reply once
    /// stored. Busy would say the change was not applied, and a client
    /// that sent it again only after the server had forgotten the id (a
    /// reconnecting player whose first session's replies were lost) would
    /// have it applied twice. So the queue holds at most three times its
    /// bounds.
    ///
    /// A `Disconnected` cancels its account's queued `Connected` when
    /// nothing queued since names the account and the account was offline
    /// before it: that session did nothing, so neither is queued. Other
    /// connections and disconnections are always queued. So a player who
    /// reconnects over and over while a commit is stalled does not grow
    /// the queue (and leave everyone else [`InventoryError::Busy`]): each
    /// session left in it holds a request naming the account, and requests
    /// are bounded.
    pub fn push(&mut self, input: Input) -> Option<Output> {
        if let Input::Request {
            account,
            request,
            tag,
            ..
        } = &input
        {
            let (account, request_id, tag) = (*account, request.request_id, *tag);
            let queued = self.queued_by_account.get(&account).copied();
            // An offer longer than any trade decodes (the codec bounds only
            // its bytes: ~10,000 entries, 87 KiB in memory): it is refused
            // here rather than held in the queue.
            let oversized = matches!(
                &request.op,
                InventoryOp::Offer { offer, .. } if offer.items.len() > MAX_TRADE_SLOTS
            );
            let full = self.queue.len() >= self.config.max_queued
                || queued.unwrap_or(0) >= self.config.max_queued_per_account;
            if oversized || full && !self.repeat_may_wait(account, request_id) {
                let refusal = if oversized {
                    InventoryError::BadOffer
                } else {
                    InventoryError::Busy
                };
                let reply = self
                    .committed_reply(account, request_id)
                    .unwrap_or(InventoryReply {
                        request_id,
                        result: Err(refusal),
                        trade: None,
                    });
                return Some(Output::Reply {
                    account,
                    reply,
                    tag,
                });
            }
            *self.queued_by_account.entry(account).or_default() += 1;
            *self.queued_ids.entry((account, request_id)).or_default() += 1;
        }
        if input == Input::Tick {
            // Ticks are counted, not queued: a stalled store cannot make
            // the queue grow by one entry per tick.
            self.pending_ticks = (self.pending_ticks + 1).min(MAX_PENDING_TICKS);
            return None;
        }
        if let Input::Disconnected { account } = input
            && self.cancel_queued_connect(account)
        {
            return None;
        }
        self.queue.push_back(input);
        None
    }

    /// Removes `account`'s queued `Connected` if a `Disconnected` pushed
    /// now would undo it and nothing else: it is the last queued input
    /// naming the account (as the player or as a give's or an offer's
    /// partner), and the account was offline before it (a `Disconnected`
    /// of it queued earlier, or none and it is offline now). Applying the
    /// two would have loaded the account (or started its read) and
    /// unloaded it again, with no request of the session, no trade and no
    /// output for it in between; a `Disconnected` that ends a session
    /// which was applied, or which has a request, is always queued.
    fn cancel_queued_connect(&mut self, account: u64) -> bool {
        let names = |input: &Input| match input {
            Input::Connected { account: a } | Input::Disconnected { account: a } => *a == account,
            Input::Request {
                account: a,
                request,
                ..
            } => {
                *a == account
                    || matches!(
                        request.op,
                        InventoryOp::Give { to, .. } | InventoryOp::Offer { with: to, .. }
                            if to == account
                    )
            }
            Input::Tick => false,
        };
        let mut naming = self
            .queue
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, input)| names(input));
        let Some((at, Input::Connected { .. })) = naming.next() else {
            return false;
        };
        let offline_before = match naming.find(|(_, input)| !matches!(input, Input::Request { .. }))
        {
            Some((_, input)) => matches!(input, Input::Disconnected { .. }),
            None => !self.online.contains(&account),
        };
        if offline_before {
            self.queue.remove(at);
        }
        offline_before
    }

    /// Whether a batch is waiting for its commit result.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The stored reply of `account`'s `request_id` when that change is
    /// committed: remembered with its change and not of the batch in
    /// flight (whose commit may still fail).
    fn committed_reply(&self, account: u64, request_id: u64) -> Option<InventoryReply> {
        let reply = self.applied.get(&account)?.get_stored(request_id)?;
        (!self.storing(account, request_id))
            .then(|| self.decode_remembered(account, request_id, reply))
    }

    /// Whether a repeat of `account`'s `request_id` may wait past the
    /// queue's bounds: the original is queued or in flight, and no other
    /// repeat waits.
    fn repeat_may_wait(&self, account: u64, request_id: u64) -> bool {
        let copies = self.queued_ids.get(&(account, request_id)).copied();
        match copies.unwrap_or(0) {
            0 => self.storing(account, request_id),
            1 => !self.storing(account, request_id),
            _ => false,
        }
    }

    /// Whether `account`'s `request_id` was applied in the batch in flight.
    fn storing(&self, account: u64, request_id: u64) -> bool {
        self.in_flight.as_ref().is_some_and(|b| {
            b.applied
                .iter()
                .any(|&(a, r, _)| (a, r) == (account, request_id))
        })
    }

    /// The remembered answer of `account`'s `request_id`, if any.
    fn remembered_reply(&self, account: u64, request_id: u64) -> Option<InventoryReply> {
        let reply = self.applied.get(&account)?.get(request_id)?;
        Some(self.decode_remembered(account, request_id, reply))
    }

    /// A remembered answer from its bytes; bytes this server encoded that
    /// do not decode are answered like an unreadable stored reply.
    fn decode_remembered(&self, account: u64, request_id: u64, bytes: &[u8]) -> InventoryReply {
        decode_reply(bytes, request_id).unwrap_or_else(|| {
            tracing::error!(
                account,
                request_id,
                "a remembered reply does not decode; answered with the current inventory"
            );
            let inventory = self.inventories.get(&account).cloned().unwrap_or_default();
            unreadable_reply(request_id, &inventory)
        })
    }

    /// Processes every queued input into one batch, unless a batch is in
    /// flight (then `None`). Loads accounts that connect through
    /// `loader`, first polling those whose load is under way. Requests of
    /// players whose inventory has not loaded stay queued. When the batch
    /// has no writes, resolve it with `complete(Ok(()))` right away,
    /// without the store.
    pub fn prepare<L: AccountLoader + ?Sized>(&mut self, loader: &mut L) -> Option<Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        if !self.loading.is_empty() {
            let loading: Vec<u64> = self.loading.iter().copied().collect();
            for account in loading {
                self.poll_load(account, loader);
            }
        }
        if self.queue.is_empty() && self.pending_ticks == 0 {
            return None;
        }
        self.building = Some(Building::default());
        self.queued_by_account.clear();
        self.queued_ids.clear();
        let mut waiting = VecDeque::new();
        // Accounts with a request waiting: their later ones wait behind it,
        // so that a player's requests are applied in the order sent.
        let mut held = HashSet::new();
        while let Some(input) = self.queue.pop_front() {
            match &input {
                Input::Disconnected { account } => {
                    // The session's waiting requests end with it, unanswered.
                    waiting.retain(
                        |w| !matches!(w, Input::Request { account: a, .. } if a == account),
                    );
                    held.remove(account);
                }
                Input::Request { account, .. } if held.contains(account) => {
                    waiting.push_back(input);
                    continue;
                }
                _ => {}
            }
            if let Some(wait) = self.apply(input, loader) {
                if let Input::Request { account, .. } = &wait {
                    held.insert(*account);
                }
                waiting.push_back(wait);
            }
        }
        for input in &waiting {
            if let Input::Request {
                account, request, ..
            } = input
            {
                *self.queued_by_account.entry(*account).or_default() += 1;
                *self
                    .queued_ids
                    .entry((*account, request.request_id))
                    .or_default() += 1;
            }
        }
        self.queue = waiting;
        for _ in 0..std::mem::take(&mut self.pending_ticks) {
            self.tick();
        }
        let mut building = self.building.take()?;
        let mut writes = self.writes(&building);
        // A grown inventory still in memory is stored before its player is
        // shown it (a batch that answers the player), or with any batch
        // that writes anyway; as it is: its state before the batch is the
        // same. Not with every batch: read-only requests, answered without
        // the store, would fail with a failing store.
        self.unsaved_growth
            .retain(|account| self.inventories.contains_key(account));
        let due: Vec<u64> = (self.unsaved_growth.iter().copied())
            .filter(|&account| {
                !writes.is_empty() || building.outputs.iter().any(|o| o.account() == account)
            })
            .collect();
        if !due.is_empty() {
            for account in due {
                if let Some(inventory) = self.inventories.get(&account) {
                    (building.inventories)
                        .entry(account)
                        .or_insert_with(|| Some(inventory.clone()));
                }
            }
            writes = self.writes(&building);
        }
        self.in_flight = Some(building);
        Some(Batch { writes })
    }

    /// Resolves the in-flight batch: on `Ok` its outputs are released; on
    /// `Err` memory is restored to its state before the batch and every
    /// request in it is answered [`InventoryError::Storage`].
    pub fn complete(&mut self, result: Result<(), StoreError>) -> Vec<Output> {
        let Some(building) = self.in_flight.take() else {
            return Vec::new();
        };
        let mut outputs = match result {
            Ok(()) => {
                self.unsaved_growth
                    .retain(|account| !building.inventories.contains_key(account));
                // The store pruned its answers in this commit; memory
                // follows (see `Applied`).
                for &(account, _, _) in &building.applied {
                    if let Some(applied) = self.applied.get_mut(&account) {
                        applied.trim();
                    }
                }
                latest_states(building.outputs)
            }
            Err(_) => {
                for (account, before) in building.inventories {
                    match before {
                        Some(inv) => {
                            self.inventories.insert(account, inv);
                        }
                        None => {
                            self.inventories.remove(&account);
                        }
                    }
                }
                for (id, before) in building.world {
                    match before {
                        Some(w) => {
                            self.world.insert(id, w);
                        }
                        None => {
                            self.world.remove(&id);
                        }
                    }
                }
                for (item, before) in building.ledger {
                    self.ledger.insert(item, before);
                }
                if let Some(counters) = building.counters {
                    self.counters = counters;
                }
                self.trades.restore(building.trades);
                for &(account, request_id, _) in &building.applied {
                    if let Some(applied) = self.applied.get_mut(&account) {
                        applied.remove(request_id);
                    }
                }
                let fresh: HashSet<(u64, u64)> = building
                    .applied
                    .iter()
                    .map(|&(account, request_id, _)| (account, request_id))
                    .collect();
                building
                    .outputs
                    .into_iter()
                    .filter_map(|o| match o {
                        // A repeated id answered from memory keeps its
                        // original (committed) answer.
                        Output::Reply {
                            account,
                            reply,
                            tag,
                        } if !fresh.contains(&(account, reply.request_id)) => Some(Output::Reply {
                            account,
                            reply,
                            tag,
                        }),
                        Output::Reply {
                            account,
                            reply,
                            tag,
                        } => Some(Output::Reply {
                            account,
                            reply: InventoryReply {
                                request_id: reply.request_id,
                                result: Err(InventoryError::Storage),
                                trade: None,
                            },
                            tag,
                        }),
                        _ => None,
                    })
                    .chain(self.cancel_trades_of_departed(&building.evict))
                    .collect()
            }
        };
        for account in building.evict {
            if !self.online.contains(&account) {
                self.inventories.remove(&account);
                self.applied.remove(&account);
            }
        }
        // Sessions that ended while the batch was in flight (their
        // `Disconnected` waits in the queue) receive nothing either.
        let ended: HashSet<u64> = self
            .queue
            .iter()
            .filter_map(|input| match input {
                Input::Disconnected { account } => Some(*account),
                _ => None,
            })
            .collect();
        outputs.retain(|o| !ended.contains(&o.account()));
        outputs
    }

    /// A loaded inventory.
    pub fn inventory(&self, account: u64) -> Option<&InventorySnapshot> {
        self.inventories.get(&account)
    }

    /// Items lying in the world.
    pub fn world_items(&self) -> impl Iterator<Item = &WorldItem> {
        self.world.values()
    }

    /// How many inputs wait.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn writes(&self, b: &Building) -> BatchWrites {
        let mut writes = BatchWrites::default();
        let mut accounts: Vec<_> = b.inventories.keys().copied().collect();
        accounts.sort_unstable();
        for account in accounts {
            if let Some(inv) = self.inventories.get(&account) {
                writes.inventories.push((account, inv.clone()));
            }
        }
        let mut ids: Vec<_> = b.world.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            match self.world.get(&id) {
                Some(w) => writes.world_upserts.push(*w),
                None => writes.world_deletes.push(id),
            }
        }
        let mut items: Vec<_> = b.ledger.keys().copied().collect();
        items.sort_unstable();
        for item in items {
            writes
                .ledger
                .push((item, self.ledger.get(&item).copied().unwrap_or_default()));
        }
        for &(account, request_id, persisted) in &b.applied {
            if !persisted {
                continue;
            }
            if let Some(reply) = self.applied.get(&account).and_then(|a| a.get(request_id)) {
                writes.applied.push((account, request_id, reply.to_vec()));
            }
        }
        if b.counters.is_some() {
            writes.counters = Some(self.counters);
        }
        writes
    }

    fn b(&mut self) -> &mut Building {
        self.building.get_or_insert_with(Building::default)
    }

    fn touch_inventory(&mut self, account: u64) {
        if !self.b().inventories.contains_key(&account) {
            let before = self.inventories.get(&account).cloned();
            self.b().inventories.insert(account, before);
        }
    }

    fn touch_world(&mut self, id: u64) {
        let before = self.world.get(&id).copied();
        self.b().world.entry(id).or_insert(before);
    }

    fn touch_ledger(&mut self, item: ItemId) -> &mut LedgerRow {
        let before = self.ledger.get(&item).copied().unwrap_or_default();
        self.b().ledger.entry(item).or_insert(before);
        self.ledger.entry(item).or_default()
    }

    fn touch_counters(&mut self) {
        let before = self.counters;
        self.b().counters.get_or_insert(before);
    }

    fn touch_trade(&mut self, id: u64) {
        if !self.b().trades.contains_key(&id) {
            let before = self.trades.get(id).cloned();
            self.b().trades.insert(id, before);
        }
    }

    /// A new trade's id, never one used before, restarts included (the
    /// counter is stored with the batch).
    fn next_trade_id(&mut self) -> u64 {
        self.touch_counters();
        let id = self.counters.next_trade.max(1);
        self.counters.next_trade = id + 1;
        id
    }

    fn emit(&mut self, output: Output) {
        self.b().outputs.push(output);
    }

    /// Applies one input; gives back a request that must wait for its
    /// player's inventory to load.
    fn apply<L: AccountLoader + ?Sized>(&mut self, input: Input, loader: &mut L) -> Option<Input> {
        match input {
            Input::Connected { account } => self.connect(account, loader),
            Input::Disconnected { account } => {
                self.online.remove(&account);
                self.load_failed.remove(&account);
                self.loading.remove(&account);
                loader.forget(account);
                self.cancel_trades_of(account);
                // The session is over: nothing of this batch is sent to it
                // (a later session of the account must not receive it),
                // and its unstored answers are forgotten.
                self.b().outputs.retain(|o| o.account() != account);
                if let Some(applied) = self.applied.get_mut(&account) {
                    applied.forget_unstored();
                }
                self.b().evict.push(account);
            }
            Input::Tick => self.tick(),
            Input::Request {
                account,
                request,
                position,
                tag,
            } => {
                let partner = match request.op {
                    InventoryOp::Give { to, .. } => Some(to),
                    InventoryOp::Offer { with, .. } => Some(with),
                    _ => None,
                };
                // An inventory that failed to load is tried again (at most
                // every LOAD_RETRY_TICKS) when its player, or a request
                // naming it, needs it: a store that was briefly busy must
                // not fail the whole session.
                for needed in std::iter::once(account).chain(partner) {
                    let retry = self
                        .load_failed
                        .get(&needed)
                        .is_some_and(|&(at, _)| self.ticks >= at + LOAD_RETRY_TICKS);
                    if retry && self.online.contains(&needed) && !self.loading.contains(&needed) {
                        self.connect(needed, loader);
                    }
                }
                // A give or an offer to a player whose inventory is still
                // being read (or read again after a failed load) waits for
                // it too: that player is online, not unknown.
                let unloaded = |account: u64| {
                    self.online.contains(&account) && !self.inventories.contains_key(&account)
                };
                let partner_loading = partner.is_some_and(unloaded);
                let self_loading = unloaded(account);
                let partner_broken = partner.is_some_and(|partner| {
                    !self.loading.contains(&partner)
                        && self
                            .load_failed
                            .get(&partner)
                            .is_some_and(|&(_, failures)| failures >= PARTNER_LOAD_ATTEMPTS)
                });
                if partner_loading && partner_broken && !self_loading {
                    // Not applied, so not remembered: sent again with its
                    // id, it applies once that inventory loads (an id
                    // applied before gets its answer).
                    let request_id = request.request_id;
                    let reply =
                        self.remembered_reply(account, request_id)
                            .unwrap_or(InventoryReply {
                                request_id,
                                result: Err(InventoryError::Storage),
                                trade: None,
                            });
                    self.emit(Output::Reply {
                        account,
                        reply,
                        tag,
                    });
                    return None;
                }
                if self_loading || partner_loading {
                    return Some(Input::Request {
                        account,
                        request,
                        position,
                        tag,
                    });
                }
                self.request(account, request, position, tag);
            }
        }
        None
    }

    fn connect<L: AccountLoader + ?Sized>(&mut self, account: u64, loader: &mut L) {
        self.online.insert(account);
        if self.inventories.contains_key(&account) {
            return;
        }
        self.poll_load(account, loader);
    }

    /// Asks `loader` for an online account that is not in memory and
    /// inserts it when it is there. Until then its requests wait (see
    /// `apply`): polled again at the next `prepare` while pending, tried
    /// again now and then after a failure.
    fn poll_load<L: AccountLoader + ?Sized>(&mut self, account: u64, loader: &mut L) {
        let loaded = match loader.load(account, self.config.slots) {
            Poll::Pending => {
                self.loading.insert(account);
                return;
            }
            Poll::Ready(result) => {
                self.loading.remove(&account);
                result
            }
        };
        let loaded = match loaded {
            Ok(loaded) => {
                if self.load_failed.remove(&account).is_some() {
                    tracing::info!(account, "inventory loaded after failing");
                }
                loaded
            }
            Err(error) => {
                let failed = self.load_failed.entry(account).or_insert((self.ticks, 0));
                *failed = (self.ticks, failed.1.saturating_add(1));
                if failed.1 == 1 {
                    tracing::error!(account, %error, "cannot load inventory; will retry");
                }
                return;
            }
        };
        let LoadedAccount {
            inventory,
            applied,
            unreadable,
            grown,
        } = loaded;
        if grown {
            self.unsaved_growth.insert(account);
        }
        if unreadable > 0 {
            tracing::warn!(
                account,
                unreadable,
                "stored replies that do not decode; answered with the current inventory"
            );
        }
        self.applied.insert(account, applied);
        self.inventories.insert(account, inventory);
    }

    fn tick(&mut self) {
        self.ticks += 1;
        let every = self.config.spawn_every_ticks.max(1);
        if !self.ticks.is_multiple_of(every) {
            return;
        }
        let catalogue = Arc::clone(&self.catalogue);
        let spawnable = catalogue.spawnable();
        let target = self.config.spawner_target.min(self.config.max_world_items);
        if spawnable.is_empty() || self.world.len() >= target {
            return;
        }
        self.touch_counters();
        let n = self.counters.spawned;
        let item = spawnable[(n % spawnable.len() as u64) as usize];
        let max = self.catalogue.get(item).map_or(1, |d| d.max_stack);
        let count = 1 + (splitmix(n) % u64::from(max.min(5))) as u32;
        let extent = self.config.world_extent;
        let unit = |v: u64| (v % 10_000) as f32 / 10_000.0 * 2.0 - 1.0;
        let h = splitmix(n ^ 0x5eed);
        let position =
            self.config.world_center + Vec2::new(unit(h) * extent, unit(h >> 32) * extent);
        let id = self.counters.next_world_item;
        self.counters.next_world_item += 1;
        self.counters.spawned += 1;
        self.touch_world(id);
        self.world.insert(
            id,
            WorldItem {
                id,
                stack: ItemStack { item, count },
                position,
            },
        );
        self.touch_ledger(item).minted += u64::from(count);
    }

    fn request(
        &mut self,
        account: u64,
        request: InventoryRequest,
        position: Option<Vec2>,
        tag: u64,
    ) {
        let request_id = request.request_id;
        if let Some(reply) = self.remembered_reply(account, request_id) {
            self.emit(Output::Reply {
                account,
                reply,
                tag,
            });
            return;
        }
        if !self.inventories.contains_key(&account) {
            // Not online (the requests of an online player wait for its
            // inventory in `apply`).
            self.emit(Output::Reply {
                account,
                reply: InventoryReply {
                    request_id,
                    result: Err(InventoryError::UnknownPlayer),
                    trade: None,
                },
                tag,
            });
            return;
        }
        let (result, trade) = match self.op(account, &request.op, position) {
            Ok(trade) => (Ok(()), trade),
            Err(e) => (Err(e), None),
        };
        let snapshot = self.inventories.get(&account).cloned().unwrap_or_default();
        let reply = InventoryReply {
            request_id,
            result: result.map(|()| snapshot),
            trade,
        };
        // Persist the request id when it changed stored state; remember
        // every answer in memory.
        let persisted = reply.result.is_ok()
            && !matches!(request.op, InventoryOp::List | InventoryOp::ListWorld);
        self.applied.entry(account).or_default().insert(
            request_id,
            encode_reply(&reply),
            persisted,
        );
        self.b().applied.push((account, request_id, persisted));
        self.emit(Output::Reply {
            account,
            reply,
            tag,
        });
    }

    /// How many of `item` fit in one slot: one of a retired item.
    fn def_max(&self, item: ItemId) -> u32 {
        self.catalogue.get(item).map_or(1, |d| d.max_stack)
    }

    /// `stack`, unless it is of a retired item, which stays where it is
    /// ([`InventoryError::NotUsable`]).
    fn known(&self, stack: ItemStack) -> Result<ItemStack, InventoryError> {
        match self.catalogue.get(stack.item) {
            Some(_) => Ok(stack),
            None => Err(InventoryError::NotUsable),
        }
    }

    fn bump(&mut self, account: u64) {
        if let Some(inv) = self.inventories.get_mut(&account) {
            inv.version += 1;
        }
    }

    /// Performs one operation; on error nothing changed.
    fn op(
        &mut self,
        account: u64,
        op: &InventoryOp,
        position: Option<Vec2>,
    ) -> Result<Option<u64>, InventoryError> {
        match op {
            InventoryOp::List => Ok(None),
            InventoryOp::ListWorld => {
                let mut items: Vec<WorldItem> = self.world.values().copied().collect();
                if let Some(p) = position {
                    items.sort_by(|a, b| {
                        a.position
                            .distance_squared(p)
                            .total_cmp(&b.position.distance_squared(p))
                    });
                }
                items.truncate(MAX_LISTED_WORLD_ITEMS);
                self.emit(Output::World {
                    account,
                    items: WorldItems { items },
                });
                Ok(None)
            }
            InventoryOp::PickUp { world_item } => {
                let item = *self
                    .world
                    .get(world_item)
                    .ok_or(InventoryError::NoSuchWorldItem)?;
                if let Some(p) = position
                    && p.distance(item.position) > self.config.pickup_radius
                {
                    return Err(InventoryError::TooFar);
                }
                let mut inv = self.inventories[&account].clone();
                add_stack(&mut inv.slots, item.stack, self.def_max(item.stack.item))?;
                self.commit_inventory(account, inv);
                self.touch_world(*world_item);
                self.world.remove(world_item);
                Ok(None)
            }
            InventoryOp::Drop { slot, count } => {
                if self.world.len() >= self.config.max_world_items {
                    return Err(InventoryError::WorldFull);
                }
                let mut inv = self.inventories[&account].clone();
                let stack = self.known(take(&mut inv.slots, *slot, *count)?)?;
                self.commit_inventory(account, inv);
                self.touch_counters();
                let id = self.counters.next_world_item;
                self.counters.next_world_item += 1;
                self.touch_world(id);
                self.world.insert(
                    id,
                    WorldItem {
                        id,
                        stack,
                        position: position.unwrap_or(Vec2::ZERO),
                    },
                );
                Ok(None)
            }
            InventoryOp::Move { from, to, count } => {
                let mut inv = self.inventories[&account].clone();
                move_stack(&mut inv.slots, *from, *to, *count, |i| self.def_max(i))?;
                self.commit_inventory(account, inv);
                Ok(None)
            }
            InventoryOp::Use { slot } => {
                let mut inv = self.inventories[&account].clone();
                let stack = peek(&inv.slots, *slot)?;
                if !self.catalogue.get(stack.item).is_some_and(|d| d.consumable) {
                    return Err(InventoryError::NotUsable);
                }
                let used = take(&mut inv.slots, *slot, 1)?;
                self.commit_inventory(account, inv);
                self.touch_ledger(used.item).consumed += 1;
                Ok(None)
            }
            InventoryOp::Give { to, slot, count } => {
                if *to == account || !self.online.contains(to) || !self.inventories.contains_key(to)
                {
                    return Err(InventoryError::UnknownPlayer);
                }
                let mut mine = self.inventories[&account].clone();
                let mut theirs = self.inventories[to].clone();
                let stack = self.known(take(&mut mine.slots, *slot, *count)?)?;
                add_stack(&mut theirs.slots, stack, self.def_max(stack.item))?;
                self.commit_inventory(account, mine);
                self.commit_inventory(*to, theirs);
                self.push_update(*to);
                Ok(None)
            }
            InventoryOp::Offer { with, offer } => self.offer(account, *with, offer).map(Some),
            InventoryOp::Accept { trade, revision } => self
                .accept(account, *trade, *revision)
                .map(|()| Some(*trade)),
            InventoryOp::Cancel { trade } => {
                if !self.trades.get(*trade).is_some_and(|t| t.involves(account)) {
                    return Err(InventoryError::NoSuchTrade);
                }
                self.end_trade(*trade, TradeState::Cancelled);
                Ok(Some(*trade))
            }
        }
    }

    fn commit_inventory(&mut self, account: u64, inv: InventorySnapshot) {
        self.touch_inventory(account);
        self.inventories.insert(account, inv);
        self.bump(account);
    }

    fn push_update(&mut self, account: u64) {
        if let Some(inv) = self.inventories.get(&account).cloned() {
            self.emit(Output::Update {
                account,
                update: InventoryUpdate { inventory: inv },
            });
        }
    }

    fn validate_offer(
        &self,
        account: u64,
        offer: &TradeOffer,
    ) -> Result<Vec<(u16, ItemId, u32)>, InventoryError> {
        if offer.items.len() > MAX_TRADE_SLOTS {
            return Err(InventoryError::BadOffer);
        }
        let inv = &self.inventories[&account];
        let mut seen = HashSet::new();
        let mut items = Vec::with_capacity(offer.items.len());
        for &(slot, count) in &offer.items {
            if !seen.insert(slot) {
                return Err(InventoryError::BadOffer);
            }
            let stack = self.known(peek(&inv.slots, slot)?)?;
            if count == 0 || count > stack.count {
                return Err(InventoryError::BadCount);
            }
            items.push((slot, stack.item, count));
        }
        Ok(items)
    }

    fn offer(
        &mut self,
        account: u64,
        with: u64,
        offer: &TradeOffer,
    ) -> Result<u64, InventoryError> {
        if with == account || !self.online.contains(&with) || !self.inventories.contains_key(&with)
        {
            return Err(InventoryError::UnknownPlayer);
        }
        let items = self.validate_offer(account, offer)?;
        let existing = self
            .trades
            .of(account)
            .filter(|&id| self.trades.get(id).is_some_and(|t| t.involves(with)));
        let id = match existing {
            Some(id) => id,
            None => {
                // One open trade per player. The partner's is not the
                // sender's to end: an offer to a player in a trade with
                // someone else is refused. The sender's own other trade
                // ends. And one new trade a batch per partner: accounts
                // opening a trade with one player and ending it in turn
                // would each send it updates, as many as there are of
                // them (an honest second offer finds the first trade
                // open, and is refused anyway).
                if self.trades.of(with).is_some() || self.b().drawn_in.contains(&with) {
                    return Err(InventoryError::PartnerBusy);
                }
                self.b().drawn_in.insert(with);
                self.cancel_trades_of(account);
                let id = self.next_trade_id();
                self.touch_trade(id);
                self.trades.insert(
                    id,
                    Trade {
                        initiator: Side {
                            account,
                            items: Vec::new(),
                            accepted: false,
                        },
                        partner: Side {
                            account: with,
                            items: Vec::new(),
                            accepted: false,
                        },
                        revision: 0,
                    },
                );
                id
            }
        };
        self.touch_trade(id);
        if let Some(trade) = self.trades.get_mut(id) {
            trade.revision += 1;
            trade.initiator.accepted = false;
            trade.partner.accepted = false;
            if let Some(side) = trade.side_mut(account) {
                side.items = items;
            }
        }
        self.announce(id);
        Ok(id)
    }

    fn announce(&mut self, id: u64) {
        if let Some(trade) = self.trades.get(id) {
            let update = trade.update(
                id,
                TradeState::Open {
                    initiator_accepted: trade.initiator.accepted,
                    partner_accepted: trade.partner.accepted,
                },
            );
            let (a, b) = (trade.initiator.account, trade.partner.account);
            self.emit(Output::Trade {
                account: a,
                update: update.clone(),
            });
            self.emit(Output::Trade { account: b, update });
        }
    }

    fn end_trade(&mut self, id: u64, state: TradeState) {
        self.touch_trade(id);
        if let Some(trade) = self.trades.remove(id) {
            let update = trade.update(id, state);
            self.emit(Output::Trade {
                account: trade.initiator.account,
                update: update.clone(),
            });
            self.emit(Output::Trade {
                account: trade.partner.account,
                update,
            });
        }
    }

    fn cancel_trades_of(&mut self, account: u64) {
        if let Some(id) = self.trades.of(account) {
            self.end_trade(id, TradeState::Cancelled);
        }
    }

    /// Ends the trades a rollback restored although one side's session
    /// has ended since (a disconnect is not rolled back): a side offline,
    /// or one of `left`, the accounts whose `Disconnected` was in the batch
    /// (back since, in a session that never saw the trade). Tells the
    /// sides still in the session that had it.
    fn cancel_trades_of_departed(&mut self, left: &[u64]) -> Vec<Output> {
        let online = &self.online;
        let departed = |account: &u64| !online.contains(account) || left.contains(account);
        let gone: Vec<u64> = self
            .trades
            .iter()
            .filter(|(_, t)| departed(&t.initiator.account) || departed(&t.partner.account))
            .map(|(id, _)| id)
            .collect();
        let mut outputs = Vec::new();
        for id in gone {
            if let Some(trade) = self.trades.remove(id) {
                let update = trade.update(id, TradeState::Cancelled);
                for account in [trade.initiator.account, trade.partner.account] {
                    if self.online.contains(&account) && !left.contains(&account) {
                        outputs.push(Output::Trade {
                            account,
                            update: update.clone(),
                        });
                    }
                }
            }
        }
        outputs
    }

    fn accept(&mut self, account: u64, id: u64, revision: u64) -> Result<(), InventoryError> {
        let Some(trade) = self.trades.get(id).filter(|t| t.involves(account)) else {
            return Err(InventoryError::NoSuchTrade);
        };
        // An accept sent before an offer changed the trade is of offers
        // that are gone: counting it would swap what the player never saw.
        if trade.revision != revision {
            return Err(InventoryError::TradeChanged);
        }
        self.touch_trade(id);
        let Some(trade) = self.trades.get_mut(id) else {
            return Err(InventoryError::NoSuchTrade);
        };
        if let Some(side) = trade.side_mut(account) {
            side.accepted = true;
        }
        if !(trade.initiator.accepted && trade.partner.accepted) {
            self.announce(id);
            return Ok(());
        }
        let trade = trade.clone();
        match self.swap(&trade) {
            Ok((a, b)) => {
                let (ia, pa) = (trade.initiator.account, trade.partner.account);
                self.commit_inventory(ia, a);
                self.commit_inventory(pa, b);
                self.end_trade(id, TradeState::Completed);
                let other = if ia == account { pa } else { ia };
                self.push_update(other);
                Ok(())
            }
            Err(e) => {
                self.end_trade(id, TradeState::Cancelled);
                Err(e)
            }
        }
    }

    /// Both inventories after the swap, or why it cannot happen.
    fn swap(
        &self,
        trade: &Trade,
    ) -> Result<(InventorySnapshot, InventorySnapshot), InventoryError> {
        let (Some(a), Some(b)) = (
            self.inventories.get(&trade.initiator.account),
            self.inventories.get(&trade.partner.account),
        ) else {
            return Err(InventoryError::TradeFailed);
        };
        let (mut a, mut b) = (a.clone(), b.clone());
        let take_side = |inv: &mut InventorySnapshot, side: &Side| {
            let mut taken = Vec::new();
            for &(slot, item, count) in &side.items {
                match peek(&inv.slots, slot) {
                    Ok(s) if s.item == item && s.count >= count => {}
                    _ => return Err(InventoryError::TradeFailed),
                }
                taken.push(
                    take(&mut inv.slots, slot, count).map_err(|_| InventoryError::TradeFailed)?,
                );
            }
            Ok(taken)
        };
        let from_a = take_side(&mut a, &trade.initiator)?;
        let from_b = take_side(&mut b, &trade.partner)?;
        for s in from_b {
            add_stack(&mut a.slots, s, self.def_max(s.item))
                .map_err(|_| InventoryError::TradeFailed)?;
        }
        for s in from_a {
            add_stack(&mut b.slots, s, self.def_max(s.item))
                .map_err(|_| InventoryError::TradeFailed)?;
        }
        Ok((a, b))
    }

    /// Checks the invariants of memory: every stack in an inventory 1..=max
    /// of a known item, or at least 1 of a retired one (held from before it
    /// retired), inventories of the configured size, world items not empty
    /// and of known items. For tests and debugging.
    ///
    /// # Errors
    /// A description of the first violation.
    pub fn check_stacks(&self) -> Result<(), String> {
        let check = |s: &ItemStack, whose: &str| match self.catalogue.get(s.item) {
            Some(d) if s.count >= 1 && s.count <= d.max_stack => Ok(()),
            None if s.count >= 1 => Ok(()),
            _ => Err(format!("bad stack {s:?} in {whose}")),
        };
        for (account, inv) in &self.inventories {
            if inv.slots.len() != self.config.slots {
                return Err(format!(
                    "inventory of {account} has {} slots",
                    inv.slots.len()
                ));
            }
            for s in inv.slots.iter().flatten() {
                check(s, &format!("account {account}"))?;
            }
        }
        for w in self.world.values() {
            if w.stack.count == 0 || self.catalogue.get(w.stack.item).is_none() {
                return Err(format!("bad world item {w:?}"));
            }
        }
        Ok(())
    }

    /// Checks the open trades: two players online each, a player in one
    /// trade at most, and the index by player agreeing with them. For
    /// tests and debugging.
    ///
    /// # Errors
    /// A description of the first violation.
    pub fn check_trades(&self) -> Result<(), String> {
        let mut players = 0;
        for (id, t) in self.trades.iter() {
            let (a, b) = (t.initiator.account, t.partner.account);
            if a == b {
                return Err(format!("trade {id} is {a} with itself"));
            }
            for account in [a, b] {
                if !self.online.contains(&account) {
                    return Err(format!("trade {id} holds {account}, who is offline"));
                }
                if self.trades.of(account) != Some(id) {
                    return Err(format!(
                        "player {account} of trade {id} is indexed to {:?}",
                        self.trades.of(account)
                    ));
                }
            }
            players += 2;
        }
        if self.trades.by_account.len() != players {
            return Err(format!(
                "{} players indexed, {players} in trades",
                self.trades.by_account.len()
            ));
        }
        Ok(())
    }
}

fn splitmix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn peek(slots: &[Option<ItemStack>], slot: u16) -> Result<ItemStack, InventoryError> {
    slots
        .get(usize::from(slot))
        .ok_or(InventoryError::BadSlot)?
        .ok_or(InventoryError::EmptySlot)
}

/// Removes `count` from a slot.
fn take(
    slots: &mut [Option<ItemStack>],
    slot: u16,
    count: u32,
) -> Result<ItemStack, InventoryError> {
    let stack = peek(slots, slot)?;
    if count == 0 || count > stack.count {
        return Err(InventoryError::BadCount);
    }
    let cell = &mut slots[usize::from(slot)];
    *cell = (count < stack.count).then_some(ItemStack {
        item: stack.item,
        count: stack.count - count,
    });
    Ok(ItemStack {
        item: stack.item,
        count,
    })
}

/// Adds a whole stack: tops up stacks of the same item, then fills empty
/// slots; all or nothing.
fn add_stack(
    slots: &mut [Option<ItemStack>],
    stack: ItemStack,
    max: u32,
) -> Result<(), InventoryError> {
    let room: u64 = slots
        .iter()
        .map(|s| match s {
            Some(s) if s.item == stack.item => u64::from(max.saturating_sub(s.count)),
            Some(_) => 0,
            None => u64::from(max),
        })
        .sum();
    if room < u64::from(stack.count) {
        return Err(InventoryError::NoRoom);
    }
    let mut left = stack.count;
    for s in slots.iter_mut().flatten() {
        if s.item == stack.item && left > 0 {
            let n = left.min(max.saturating_sub(s.count));
            s.count += n;
            left -= n;
        }
    }
    for s in slots.iter_mut() {
        if left == 0 {
            break;
        }
        if s.is_none() {
            let n = left.min(max);
            *s = Some(ItemStack {
                item: stack.item,
                count: n,
            });
            left -= n;
        }
    }
    Ok(())
}

fn move_stack(
    slots: &mut [Option<ItemStack>],
    from: u16,
    to: u16,
    count: u32,
    max_of: impl Fn(ItemId) -> u32,
) -> Result<(), InventoryError> {
    let src = peek(slots, from)?;
    let (f, t) = (usize::from(from), usize::from(to));
    if t >= slots.len() {
        return Err(InventoryError::BadSlot);
    }
    if f == t {
        return Err(InventoryError::SameSlot);
    }
    if count == 0 || count > src.count {
        return Err(InventoryError::BadCount);
    }
    match slots[t] {
        None => {
            take(slots, from, count)?;
            slots[t] = Some(ItemStack {
                item: src.item,
                count,
            });
        }
        Some(dst) if dst.item == src.item => {
            // Stored stacks past the limit may sum past any count.
            let merged = dst.count.checked_add(count);
            let Some(merged) = merged.filter(|&m| m <= max_of(src.item)) else {
                return Err(InventoryError::NoRoom);
            };
            take(slots, from, count)?;
            slots[t] = Some(ItemStack {
                item: dst.item,
                count: merged,
            });
        }
        Some(_) if count == src.count => slots.swap(f, t),
        Some(_) => return Err(InventoryError::SlotTaken),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;
    use crate::persistence::SqliteStore;

    /// A stored inventory grown to more slots (the server's `slots` raised
    /// between two runs) is a new version: a client that kept the old one
    /// sees a newer state, not two contents under one version.
    /// A stored reply that no longer decodes is answered with the
    /// inventory as stored, not as grown to more slots at load: that
    /// growth is not stored yet, and the answer can go out at once (the
    /// stored reply of a repeated id, outside any batch).
    #[test]
    fn an_unreadable_reply_shows_the_inventory_as_stored() {
        let stored = InventorySnapshot {
            version: 7,
            slots: vec![None; 4],
        };
        let state = AccountState {
            inventory: Some(stored.clone()),
            applied: vec![(5, vec![0xff])],
        };
        let loaded = prepare_account(state, 6);
        assert_eq!(loaded.unreadable, 1);
        assert_eq!(loaded.inventory.slots.len(), 6, "grown at load");
        let reply = decode_reply(loaded.applied.get(5).expect("remembered"), 5).unwrap();
        assert_eq!(reply.result, Ok(stored));
    }

    #[test]
    fn an_inventory_grown_to_more_slots_is_a_new_version() {
        let stored = InventorySnapshot {
            version: 7,
            slots: vec![None; 4],
        };
        let load = |slots| {
            let state = AccountState {
                inventory: Some(stored.clone()),
                applied: Vec::new(),
            };
            prepare_account(state, slots).inventory
        };
        assert_eq!(load(4), stored);
        let grown = load(6);
        assert_eq!(grown.slots.len(), 6);
        assert!(grown.version > stored.version);
        let mut tracker = shared::protocol::inventory::InventoryTracker::default();
        for inventory in [stored.clone(), grown, load(8)] {
            // Each load grows the same stored row (nothing changed since):
            // the second growth is newer than the first.
            assert_eq!(tracker.on_update(&InventoryUpdate { inventory }), Ok(()));
        }
        assert_eq!(tracker.inventory().unwrap().slots.len(), 8, "the newest");
    }

    impl Applied {
        /// Bytes these answers hold on the heap: the tables at their
        /// capacity (an entry and a control byte a slot) and the answers'
        /// bytes.
        fn heap_bytes(&self) -> usize {
            self.order
                .iter()
                .map(|o| o.capacity() * size_of::<u64>())
                .sum::<usize>()
                + self.replies.capacity() * (size_of::<(u64, (Box<[u8]>, bool))>() + 1)
                + self
                    .replies
                    .values()
                    .map(|(reply, _)| reply.len())
                    .sum::<usize>()
        }
    }

    /// A core whose account 1 is online with a 24-slot inventory, the
    /// first `full` slots holding whole stacks.
    fn online_with(full: usize) -> (InventoryCore, SqliteStore) {
        let catalogue = Arc::new(Catalogue::embedded().unwrap());
        let mut store = SqliteStore::open_in_memory().unwrap();
        let items: Vec<_> = catalogue.iter().collect();
        let slots = (0..24)
            .map(|i| {
                (i < full).then(|| ItemStack {
                    item: items[i % items.len()].id,
                    count: items[i % items.len()].max_stack,
                })
            })
            .collect();
        store
            .commit(&BatchWrites {
                inventories: vec![(1, InventorySnapshot { version: 1, slots })],
                ..BatchWrites::default()
            })
            .unwrap();
        let mut core = InventoryCore::load(catalogue, CoreConfig::default(), &mut store).unwrap();
        run(&mut core, &mut store, vec![Input::Connected { account: 1 }]);
        (core, store)
    }

    /// Pushes `inputs` and runs one batch to its commit: the replies.
    fn run(
        core: &mut InventoryCore,
        store: &mut SqliteStore,
        inputs: Vec<Input>,
    ) -> Vec<InventoryReply> {
        let mut outputs: Vec<Output> = inputs.into_iter().filter_map(|i| core.push(i)).collect();
        if let Some(batch) = core.prepare(store) {
            let result = store.commit(&batch.writes);
            outputs.extend(core.complete(result));
        }
        outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::Reply { reply, .. } => Some(reply),
                _ => None,
            })
            .collect()
    }

    fn request(request_id: u64, op: InventoryOp) -> Input {
        Input::Request {
            account: 1,
            request: InventoryRequest { request_id, op },
            position: None,
            tag: request_id,
        }
    }

    /// Whole-stack moves between slot 0 and slot 23, there and back.
    fn move_op(i: u64, count: u32) -> InventoryOp {
        let (from, to) = if i.is_multiple_of(2) {
            (0, 23)
        } else {
            (23, 0)
        };
        InventoryOp::Move { from, to, count }
    }

    /// An account that has sent more than [`REMEMBERED_REQUESTS`] changes
    /// and as many lists, 22 of its 24 slots full, holds its remembered
    /// answers in at most 256 bytes each, tables included (a reply held as
    /// a value takes more than that for its slots alone).
    #[test]
    fn the_answers_remembered_for_a_full_inventory_stay_small() {
        let (mut core, mut store) = online_with(22);
        let count = core.inventory(1).unwrap().slots[0].unwrap().count;
        let answers = REMEMBERED_REQUESTS as u64 + 40;
        for first in (0..answers).step_by(20) {
            let inputs = (first..(first + 20).min(answers))
                .flat_map(|i| {
                    [
                        request(2 * i, move_op(i, count)),
                        request(2 * i + 1, InventoryOp::List),
                    ]
                })
                .collect();
            for reply in run(&mut core, &mut store, inputs) {
                assert!(reply.result.is_ok(), "{reply:?}");
            }
        }

        let applied = &core.applied[&1];
        assert_eq!(applied.order[0].len(), REMEMBERED_REQUESTS);
        assert_eq!(applied.order[1].len(), REMEMBERED_REQUESTS);
        let bytes = applied.heap_bytes();
        assert!(bytes <= 2 * REMEMBERED_REQUESTS * 256, "{bytes} bytes");
    }

    /// Remembered bytes that do not decode (this server encoded them, so
    /// none should) are answered like a stored reply that does not: with
    /// the inventory as it is, and the id is not applied again.
    #[test]
    fn a_remembered_answer_that_does_not_decode_is_answered_with_the_inventory() {
        let (mut core, mut store) = online_with(1);
        let count = core.inventory(1).unwrap().slots[0].unwrap().count;
        run(&mut core, &mut store, vec![request(7, move_op(0, count))]);
        let back = run(&mut core, &mut store, vec![request(8, move_op(1, count))]);
        let now = back[0].result.clone().expect("moved back");
        let (reply, _) = core
            .applied
            .get_mut(&1)
            .and_then(|a| a.replies.get_mut(&7))
            .expect("remembered");
        *reply = Box::new([0xff; 3]);

        let again = run(&mut core, &mut store, vec![request(7, move_op(0, count))]);
        assert_eq!(
            again,
            vec![InventoryReply {
                request_id: 7,
                result: Ok(now.clone()),
                trade: None,
            }]
        );
        assert_eq!(core.inventory(1), Some(&now), "not moved again");
    }
}
