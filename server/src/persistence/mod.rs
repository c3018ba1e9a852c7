//! Persistence: the storage trait the inventory is written against, its
//! SQLite implementation, the reader and writer threads that keep account
//! loads and commits off the tick, and the offline audit.
//!
//! | piece | what |
//! |---|---|
//! | [`InventoryStore`] | load state, commit one [`BatchWrites`] atomically, audit |
//! | [`SqliteStore`] | the embedded default: one file `inventory.sqlite3` in the data dir, WAL, `synchronous=FULL`; the writer holds a lock on `server.lock` there (and on the directory, on Unix systems) |
//! | [`AccountReader`] | a `db-reader` thread owning a read-only store; a bounded channel of accounts in, loaded accounts out |
//! | [`StoreWriter`] | a `db-writer` thread owning a store; a bounded channel in, results out |
//! | [`audit`] | what `server audit --data-dir DIR` prints |
//!
//! # Durability
//!
//! A reply is sent to a player only after the commit holding its change
//! has returned `Ok` from the writer thread. With WAL, `synchronous=FULL`
//! fsyncs the WAL at every commit, so a committed transaction survives a
//! process crash *and* a power loss. `NORMAL` would also survive a process
//! crash (`kill -9`: the WAL is in the OS page cache) but may lose the
//! last commits on power loss, i.e. after their replies were sent; since
//! the promise is "nothing acknowledged is lost", the store uses `FULL`.
//! On macOS a plain fsync leaves data in the drive's cache: the store
//! asks SQLite for `F_FULLFSYNC` there (`fullfsync`, which other systems
//! ignore). The cost is about one fsync per batch (the WAL's restarts and
//! checkpoints add a few), and a batch holds every operation of a tick
//! (group commit), so it is paid once per tick at most.

mod reader;
mod sqlite;
mod writer;

use std::collections::BTreeMap;

use glam::Vec2;
use shared::protocol::inventory::{InventorySnapshot, ItemId, ItemStack, WorldItem};

pub use reader::{AccountReader, READER_QUEUE};
pub use sqlite::{DB_FILE, LOCK_FILE, SqliteStore};
pub use writer::{CommitDone, StoreWriter, WRITER_QUEUE};

use crate::inventory::Catalogue;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the data directory's lock.
    #[error("data directory {path} is in use by another server process")]
    InUse {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// The data directory's lock could not be taken.
    #[error("cannot lock data directory {path}: {source}")]
    Lock {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database stayed in another journal mode than write-ahead
    /// logging (a file system without shared memory, such as some network
    /// mounts): its readers would block the writer's commits.
    #[error(
        "the database cannot use write-ahead logging (journal mode stays {mode}); \
         put the data directory on a local file system"
    )]
    NoWal {
        /// The mode it stayed in.
        mode: String,
    },
    /// Stored data that cannot be right (a negative count, a bad reply).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The writer thread is gone.
    #[error("the database writer thread stopped")]
    WriterGone,
    /// The reader thread is gone.
    #[error("the database reader thread stopped")]
    ReaderGone,
    /// Injected by a test store.
    #[error("injected failure")]
    Injected,
}

/// Per item id: how many were ever minted and consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedgerRow {
    /// Minted by world spawners.
    pub minted: u64,
    /// Consumed by use.
    pub consumed: u64,
}

/// Counters that must survive restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// The next world item id.
    pub next_world_item: u64,
    /// How many spawns the world spawner has done (its deterministic
    /// sequence position).
    pub spawned: u64,
    /// The next trade id (0 in a store from before trade ids were kept:
    /// read as 1). Kept so that ids are never used again after a
    /// restart: a client re-sending an accept of a trade from before it
    /// must not accept a new trade that took the same id.
    pub next_trade: u64,
}

/// The shared world state, loaded once at start.
#[derive(Debug, Clone, Default)]
pub struct WorldState {
    /// Items lying in the world.
    pub world: Vec<WorldItem>,
    /// The ledger.
    pub ledger: BTreeMap<ItemId, LedgerRow>,
    /// The counters.
    pub counters: Counters,
}

/// One account's stored state.
#[derive(Debug, Clone, Default)]
pub struct AccountState {
    /// Its inventory (`None` for an account never stored).
    pub inventory: Option<InventorySnapshot>,
    /// Its most recent applied requests, oldest first: id and the encoded
    /// reply.
    pub applied: Vec<(u64, Vec<u8>)>,
}

/// Everything one batch changes, as final values (idempotent to apply).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchWrites {
    /// Whole inventories to store (replacing the account's slots).
    pub inventories: Vec<(u64, InventorySnapshot)>,
    /// World items added or changed.
    pub world_upserts: Vec<WorldItem>,
    /// World items gone.
    pub world_deletes: Vec<u64>,
    /// Ledger rows, absolute.
    pub ledger: Vec<(ItemId, LedgerRow)>,
    /// Applied requests: account, request id, encoded reply.
    pub applied: Vec<(u64, u64, Vec<u8>)>,
    /// The counters, when they changed.
    pub counters: Option<Counters>,
}

impl BatchWrites {
    /// Whether there is nothing to store.
    pub fn is_empty(&self) -> bool {
        self.inventories.is_empty()
            && self.world_upserts.is_empty()
            && self.world_deletes.is_empty()
            && self.ledger.is_empty()
            && self.applied.is_empty()
            && self.counters.is_none()
    }
}

/// Per item id totals, as the audit reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ItemTotals {
    /// In inventories.
    pub held: u64,
    /// Lying in the world.
    pub in_world: u64,
    /// Ever minted.
    pub minted: u64,
    /// Ever consumed.
    pub consumed: u64,
}

impl ItemTotals {
    /// The ledger identity: held + in world = minted − consumed.
    pub fn balanced(&self) -> bool {
        self.minted.checked_sub(self.consumed) == Some(self.held + self.in_world)
    }
}

/// What the audit found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    /// SQLite's `PRAGMA integrity_check` said "ok" (when it did not, the
    /// other checks are not run: their scans would fail on the damage).
    pub integrity_ok: bool,
    /// The ledger identity holds for every item id.
    pub balanced: bool,
    /// Every stored account loads as the server loads it: its inventory
    /// of 0 to [`MAX_SLOTS`](shared::protocol::inventory::MAX_SLOTS) slots
    /// and a version of 0 or more, every slot row a stack within its
    /// inventory's slots (a row of no stored inventory would be deleted
    /// with the account's next change), every remembered request an id
    /// and its reply's bytes; and the world loads: every world item a
    /// stack with an id of 0 or more, the counters and every ledger row's
    /// counts 0 or more.
    pub consistent: bool,
    /// What failed, in words: integrity check lines (the first few) and
    /// the rows that break `consistent` (the first few of each kind).
    pub problems: Vec<String>,
    /// Per item id (as a decimal string key).
    pub items: BTreeMap<String, ItemTotals>,
    /// Accounts with a stored inventory.
    pub accounts: u64,
    /// Item ids held or lying in the world that the server's catalogue
    /// does not define (retired items, see `assets/items.toml`), in
    /// order. A finding, not a failed check: the server runs with them
    /// (they stay where they are), but an id listed here by mistake means
    /// an item missing from the catalogue. Filled by [`audit`]; empty from
    /// [`InventoryStore::audit`], which does not know the catalogue.
    pub unknown_items: Vec<u32>,
}

impl AuditReport {
    /// Lists in [`AuditReport::unknown_items`] the ids of [`AuditReport::items`]
    /// held or in the world that `catalogue` does not define.
    pub fn find_unknown_items(&mut self, catalogue: &Catalogue) {
        let mut unknown: Vec<u32> = self
            .items
            .iter()
            .filter(|(_, totals)| totals.held + totals.in_world > 0)
            .filter_map(|(item, _)| item.parse().ok())
            .filter(|&item| catalogue.get(ItemId(item)).is_none())
            .collect();
        unknown.sort_unstable();
        self.unknown_items = unknown;
    }
}

/// Where inventories, the world and the ledger live. Implementations must
/// make [`InventoryStore::commit`] atomic (all of the batch or none) and
/// durable before it returns `Ok`.
pub trait InventoryStore: Send {
    /// The world items, ledger and counters.
    ///
    /// # Errors
    /// [`StoreError`].
    fn load_world(&mut self) -> Result<WorldState, StoreError>;
    /// One account's inventory and recent applied requests (in the
    /// server, on the `db-reader` thread).
    ///
    /// # Errors
    /// [`StoreError`].
    fn load_account(&mut self, account: u64) -> Result<AccountState, StoreError>;
    /// Stores a batch in one transaction.
    ///
    /// # Errors
    /// [`StoreError`]; then nothing of the batch is stored.
    fn commit(&mut self, batch: &BatchWrites) -> Result<(), StoreError>;
    /// Checks storage integrity and the ledger identity, reading one
    /// consistent state even while a live server commits.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read at all.
    fn audit(&mut self) -> Result<AuditReport, StoreError>;
}

/// Runs the audit over the store in `data_dir`, read-only: it runs next
/// to a live server too. Items the store holds that `catalogue` does not
/// define are listed in [`AuditReport::unknown_items`].
///
/// # Errors
/// [`StoreError`] when the database cannot be opened or read.
pub fn audit(data_dir: &std::path::Path, catalogue: &Catalogue) -> Result<AuditReport, StoreError> {
    let mut report = SqliteStore::open_read_only(data_dir)?.audit()?;
    report.find_unknown_items(catalogue);
    Ok(report)
}

/// Converts a stored `(item, count)` pair.
pub(crate) fn stack(item: i64, count: i64) -> Result<ItemStack, StoreError> {
    match (u32::try_from(item), u32::try_from(count)) {
        (Ok(item), Ok(count)) if count > 0 => Ok(ItemStack {
            item: ItemId(item),
            count,
        }),
        _ => Err(StoreError::Corrupt(format!(
            "stack of item {item} with count {count}"
        ))),
    }
}

/// A world item from stored columns.
pub(crate) fn world_item(
    id: i64,
    item: i64,
    count: i64,
    x: f64,
    y: f64,
) -> Result<WorldItem, StoreError> {
    Ok(WorldItem {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("world item id {id}")))?,
        stack: stack(item, count)?,
        position: Vec2::new(x as f32, y as f32),
    })
}
