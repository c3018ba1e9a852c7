//! The SQLite store.
//!
//! Schema (version 1):
//!
//! ```sql
//! meta(key TEXT PRIMARY KEY, value INTEGER)            -- schema_version, next_world_item, spawned, next_trade
//! inventories(account INTEGER PRIMARY KEY, version INTEGER, slots INTEGER)
//! inventory_slots(account, slot, item, count CHECK(count > 0), PRIMARY KEY(account, slot))
//! world_items(id INTEGER PRIMARY KEY, item, count CHECK(count > 0), x REAL, y REAL)
//! ledger(item INTEGER PRIMARY KEY, minted, consumed)
//! applied_requests(seq INTEGER PRIMARY KEY AUTOINCREMENT, account, request_id, reply BLOB,
//!                  UNIQUE(account, request_id))
//! ```

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use shared::protocol::MAX_MESSAGE_BYTES;
use shared::protocol::inventory::{InventorySnapshot, ItemId, MAX_SLOTS, REMEMBERED_REQUESTS};

use super::{
    AccountState, AuditReport, BatchWrites, Counters, InventoryStore, ItemTotals, LedgerRow,
    StoreError, WorldState, stack, world_item,
};

/// The database file inside the data directory.
pub const DB_FILE: &str = "inventory.sqlite3";

/// The lock file inside the data directory: a store opened for writing
/// holds an exclusive advisory lock on it (released when the store is
/// dropped or its process ends, however it ends), so that two servers
/// never write one directory. Where the system lets a directory be locked
/// (Unix systems, tested on Linux; not Windows), the directory itself is locked too: a
/// lock file deleted by hand while the server runs (taken for a stale one)
/// would otherwise let a second server in.
pub const LOCK_FILE: &str = "server.lock";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inventories(
    account INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    slots INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inventory_slots(
    account INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    item INTEGER NOT NULL,
    count INTEGER NOT NULL CHECK(count > 0),
    PRIMARY KEY(account, slot)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS world_items(
    id INTEGER PRIMARY KEY,
    item INTEGER NOT NULL,
    count INTEGER NOT NULL CHECK(count > 0),
    x REAL NOT NULL,
    y REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ledger(
    item INTEGER PRIMARY KEY,
    minted INTEGER NOT NULL CHECK(minted >= 0),
    consumed INTEGER NOT NULL CHECK(consumed >= 0));
CREATE TABLE IF NOT EXISTS applied_requests(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account INTEGER NOT NULL,
    request_id INTEGER NOT NULL,
    reply BLOB NOT NULL,
    UNIQUE(account, request_id));
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', 1);
";

/// The layout [`SCHEMA`] creates. A database of a newer layout (written by
/// a newer server) is refused rather than misread.
const SCHEMA_VERSION: u64 = 1;

/// A SQLite database: WAL journal, `synchronous=FULL` (see the module docs
/// of [`crate::persistence`] for why), foreign keys not needed.
pub struct SqliteStore {
    conn: Connection,
    /// The data directory's [`LOCK_FILE`] and the directory itself,
    /// locked while this store may write there; closing them releases the
    /// locks.
    _lock: Option<DirLock>,
}

/// The locks [`lock`] holds; dropped, they are released.
struct DirLock {
    _file: File,
    _dir: Option<File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

// u64 values are stored as i64 bit patterns where they may exceed
// i64::MAX (account and request ids chosen by others).
fn to_sql(v: u64) -> i64 {
    v as i64
}

fn from_sql(v: i64) -> u64 {
    v as u64
}

fn count_from_sql(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative total {v}")))
}

impl SqliteStore {
    /// Opens (creating) `DIR/inventory.sqlite3` for writing, creating
    /// `DIR` too, and holds the directory's [`LOCK_FILE`] lock while open.
    ///
    /// # Errors
    /// [`StoreError::InUse`] when another store (another server process)
    /// holds the lock; other [`StoreError`]s.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let lock = lock(data_dir)?;
        Self::setup(Connection::open(data_dir.join(DB_FILE))?, Some(lock))
    }

    /// Opens `DIR/inventory.sqlite3` read-only, without the lock: for
    /// reads next to the store that writes (the `db-reader` thread's
    /// account loads, the audit of a live server). Writes through it fail.
    ///
    /// # Errors
    /// [`StoreError`], also when the database does not exist.
    pub fn open_read_only(data_dir: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            data_dir.join(DB_FILE),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        check_version(&conn)?;
        Ok(Self { conn, _lock: None })
    }

    /// A private in-memory database (for tests and for running without a
    /// data directory); nothing survives the process.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?, None)
    }

    /// A named in-memory database shared by every connection of this
    /// process that opens the same name. They share one cache, where a
    /// read of a table waits for a commit writing it and back (SQLite's
    /// unlock notification; a file database's WAL lets them run side by
    /// side instead).
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn open_shared_memory(name: &str) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
        Self::setup(
            Connection::open_with_flags(format!("file:{name}?mode=memory&cache=shared"), flags)?,
            None,
        )
    }

    fn setup(conn: Connection, lock: Option<DirLock>) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Before anything is written: a newer server's database is left
        // as it is.
        check_version(&conn)?;
        // WAL: readers (the `db-reader` thread's account loads, an audit
        // of the live server) never block the writer. The pragma returns
        // the resulting mode: one that stayed another (a file system or
        // VFS without shared memory) is refused, as the writer's commits
        // would then wait on readers and fail; in-memory databases say
        // "memory", which is fine.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !["wal", "memory"].contains(&mode.to_ascii_lowercase().as_str()) {
            return Err(StoreError::NoWal { mode });
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // macOS: an fsync that reaches the disk, not only its cache.
        conn.pragma_update(None, "fullfsync", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn, _lock: lock })
    }

    /// A counter of the `meta` table (0 when unset). A negative one is
    /// corrupt: read as a `u64` it would be near its end, and the next id
    /// counted from it would wrap onto ids in use.
    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let value = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?;
        value.map_or(Ok(0), |v| {
            u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("meta {key}: {v}")))
        })
    }
}

/// Refuses a database whose schema version is newer than this server's
/// (a new database, without tables yet, has none).
fn check_version(conn: &Connection) -> Result<(), StoreError> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(());
    }
    let version = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map_or(0, from_sql);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, newer than this server's \
             {SCHEMA_VERSION}: it was written by a newer server; run that one"
        )));
    }
    Ok(())
}

/// Takes the exclusive locks on `data_dir` and its [`LOCK_FILE`], without
/// waiting.
fn lock(data_dir: &Path) -> Result<DirLock, StoreError> {
    let lock_error = |source| StoreError::Lock {
        path: data_dir.to_owned(),
        source,
    };
    let in_use = || StoreError::InUse {
        path: data_dir.to_owned(),
    };
    // The directory first: a server holding it refuses the next however
    // its lock file fares. A directory that cannot be opened or locked
    // (another system, a network file system) leaves the file's lock.
    let dir = match File::open(data_dir) {
        Ok(dir) => match dir.try_lock() {
            Ok(()) => Some(dir),
            Err(TryLockError::WouldBlock) => return Err(in_use()),
            Err(TryLockError::Error(_)) => None,
        },
        Err(_) => None,
    };
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(data_dir.join(LOCK_FILE))
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock {
            _file: file,
            _dir: dir,
        }),
        Err(TryLockError::WouldBlock) => Err(in_use()),
        Err(TryLockError::Error(source)) => Err(lock_error(source)),
    }
}

/// A slot row that loads as a stack: an item id and a count of 1 or more,
/// each a `u32` (what [`super::stack`] takes).
const STACK: &str = "typeof(item) = 'integer' AND item BETWEEN 0 AND 4294967295 \
                     AND typeof(count) = 'integer' AND count BETWEEN 1 AND 4294967295";

/// A ledger row [`InventoryStore::load_world`] loads (the table's checks
/// let text through).
const LEDGER_ROW: &str = "item BETWEEN 0 AND 4294967295 \
                          AND typeof(minted) = 'integer' AND minted >= 0 \
                          AND typeof(consumed) = 'integer' AND consumed >= 0";

/// A stored value as the audit shows it.
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Integer(v) => v.to_string(),
        Value::Real(v) => v.to_string(),
        Value::Text(v) => format!("{v:?}"),
        Value::Blob(v) => format!("{} bytes", v.len()),
    }
}

/// A stored account id as the audit shows it.
fn account_shown(value: &Value) -> String {
    match value {
        Value::Integer(v) => from_sql(*v).to_string(),
        other => shown(other),
    }
}

/// Words for one row a check of [`unloadable`] found, from its columns.
type Describe = fn(&[Value]) -> String;

/// What [`InventoryStore::load_account`] refuses to load, or what it
/// leaves behind, in words (the first few of each kind): an inventory's
/// size or version, a slot row out of place (beyond its inventory, or
/// of no inventory: deleted with the account's next change) or not a
/// stack, a remembered request whose id or reply is not one; and what
/// [`InventoryStore::load_world`] refuses, which stops the server's
/// start: a world item that is not one, a counter below 0, a ledger row
/// whose counts are not counts.
fn unloadable(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let checks: [(String, Describe); 9] = [
        (
            format!(
                "SELECT account, slots FROM inventories WHERE typeof(slots) != 'integer' \
                 OR slots < 0 OR slots > {MAX_SLOTS} LIMIT 10"
            ),
            |v| {
                format!(
                    "account {}: inventory of {} slots, not 0 to {MAX_SLOTS}",
                    account_shown(&v[0]),
                    shown(&v[1])
                )
            },
        ),
        (
            "SELECT account, version FROM inventories WHERE typeof(version) != 'integer' \
             OR version < 0 LIMIT 10"
                .to_owned(),
            |v| {
                format!(
                    "account {}: version {}, not 0 or more",
                    account_shown(&v[0]),
                    shown(&v[1])
                )
            },
        ),
        (
            "SELECT s.account, s.slot, i.slots FROM inventory_slots s \
             LEFT JOIN inventories i ON i.account = s.account \
             WHERE i.account IS NULL OR typeof(s.slot) != 'integer' OR s.slot < 0 \
             OR s.slot >= i.slots LIMIT 10"
                .to_owned(),
            |v| match &v[2] {
                Value::Null => format!(
                    "account {}: slot {} stored, no inventory",
                    account_shown(&v[0]),
                    shown(&v[1])
                ),
                slots => format!(
                    "account {}: slot {} stored, inventory of {}",
                    account_shown(&v[0]),
                    shown(&v[1]),
                    shown(slots)
                ),
            },
        ),
        (
            format!(
                "SELECT account, slot, item, count FROM inventory_slots WHERE NOT ({STACK}) \
                 LIMIT 10"
            ),
            |v| {
                format!(
                    "account {}: slot {} holds item {}, count {}: not a stack",
                    account_shown(&v[0]),
                    shown(&v[1]),
                    shown(&v[2]),
                    shown(&v[3])
                )
            },
        ),
        (
            "SELECT account, request_id, typeof(request_id) = 'integer', typeof(reply) \
             FROM applied_requests \
             WHERE typeof(request_id) != 'integer' OR typeof(reply) != 'blob' LIMIT 10"
                .to_owned(),
            |v| match &v[2] {
                Value::Integer(0) => format!(
                    "account {}: remembered request id {}, not a number",
                    account_shown(&v[0]),
                    shown(&v[1])
                ),
                _ => format!(
                    "account {}: remembered reply to request {} is {}, not bytes",
                    account_shown(&v[0]),
                    account_shown(&v[1]),
                    match &v[3] {
                        Value::Text(type_name) => type_name.clone(),
                        other => shown(other),
                    }
                ),
            },
        ),
        (
            format!(
                "SELECT id, item, count, x, y FROM world_items WHERE id < 0 OR NOT ({STACK}) \
                 OR typeof(x) NOT IN ('real', 'integer') OR typeof(y) NOT IN ('real', 'integer') \
                 LIMIT 10"
            ),
            |v| {
                format!(
                    "world item {}: item {}, count {} at ({}, {}): not one",
                    shown(&v[0]),
                    shown(&v[1]),
                    shown(&v[2]),
                    shown(&v[3]),
                    shown(&v[4])
                )
            },
        ),
        (
            "SELECT key, value FROM meta \
             WHERE key IN ('next_world_item', 'spawned', 'next_trade') \
             AND (typeof(value) != 'integer' OR value < 0) LIMIT 10"
                .to_owned(),
            |v| format!("counter {}: {}, not 0 or more", shown(&v[0]), shown(&v[1])),
        ),
        (
            // The next id counted onto one in use would overwrite that item
            // (a retired one's too, which no write may touch).
            "SELECT counter, top FROM (SELECT COALESCE((SELECT value FROM meta \
             WHERE key = 'next_world_item'), 0) AS counter, (SELECT MAX(id) FROM world_items) \
             AS top) WHERE top IS NOT NULL AND typeof(counter) = 'integer' AND counter <= top"
                .to_owned(),
            |v| {
                format!(
                    "counter \"next_world_item\": {}, not above world item {}",
                    shown(&v[0]),
                    shown(&v[1])
                )
            },
        ),
        (
            format!("SELECT item, minted, consumed FROM ledger WHERE NOT ({LEDGER_ROW}) LIMIT 10"),
            |v| {
                format!(
                    "ledger item {}: minted {}, consumed {}: not counts",
                    shown(&v[0]),
                    shown(&v[1]),
                    shown(&v[2])
                )
            },
        ),
    ];
    let mut problems = Vec::new();
    for (sql, describe) in checks {
        let mut stmt = conn.prepare(&sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let values = (0..columns)
                .map(|i| r.get::<_, Value>(i))
                .collect::<Result<Vec<_>, _>>()?;
            problems.push(describe(&values));
        }
    }
    Ok(problems)
}

impl InventoryStore for SqliteStore {
    fn load_world(&mut self) -> Result<WorldState, StoreError> {
        let mut world = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT id, item, count, x, y FROM world_items ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            world.push(world_item(
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            )?);
        }
        drop(rows);
        drop(stmt);
        let mut ledger = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT item, minted, consumed FROM ledger")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let item: i64 = r.get(0)?;
            let item = u32::try_from(item)
                .map_err(|_| StoreError::Corrupt(format!("ledger item {item}")))?;
            ledger.insert(
                ItemId(item),
                LedgerRow {
                    minted: count_from_sql(r.get(1)?)?,
                    consumed: count_from_sql(r.get(2)?)?,
                },
            );
        }
        drop(rows);
        drop(stmt);
        // Never an id in use: the counter behind the stored items (a store
        // edited by hand, say; `audit` reports it) counts on past them.
        let stored = self.meta("next_world_item")?;
        let past_items = world.last().map_or(0, |w| w.id.saturating_add(1));
        if stored < past_items {
            tracing::warn!(
                stored,
                past_items,
                "the world item counter is behind the stored items; counting on past them"
            );
        }
        Ok(WorldState {
            world,
            ledger,
            counters: Counters {
                next_world_item: stored.max(past_items),
                spawned: self.meta("spawned")?,
                next_trade: self.meta("next_trade")?,
            },
        })
    }

    fn load_account(&mut self, account: u64) -> Result<AccountState, StoreError> {
        let header: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT version, slots FROM inventories WHERE account = ?1",
                [to_sql(account)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let inventory = match header {
            None => None,
            Some((version, slots)) => {
                let size = usize::try_from(slots)
                    .ok()
                    .filter(|&s| s <= MAX_SLOTS)
                    .ok_or_else(|| StoreError::Corrupt(format!("{slots} slots")))?;
                let mut snapshot = InventorySnapshot {
                    version: count_from_sql(version)?,
                    slots: vec![None; size],
                };
                let mut stmt = self.conn.prepare_cached(
                    "SELECT slot, item, count FROM inventory_slots WHERE account = ?1",
                )?;
                let mut rows = stmt.query([to_sql(account)])?;
                while let Some(r) = rows.next()? {
                    let slot: i64 = r.get(0)?;
                    let cell = usize::try_from(slot)
                        .ok()
                        .and_then(|s| snapshot.slots.get_mut(s))
                        .ok_or_else(|| StoreError::Corrupt(format!("slot {slot}")))?;
                    *cell = Some(stack(r.get(1)?, r.get(2)?)?);
                }
                Some(snapshot)
            }
        };
        // The newest REMEMBERED_REQUESTS, as commits keep them, whatever
        // the file holds; a reply longer than any message is read as
        // empty (unreadable: answered with the inventory as it is).
        let mut applied = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT request_id, CASE WHEN length(reply) <= ?3 THEN reply ELSE x'' END \
             FROM applied_requests WHERE account = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![
            to_sql(account),
            REMEMBERED_REQUESTS as i64,
            MAX_MESSAGE_BYTES as i64
        ])?;
        while let Some(r) = rows.next()? {
            applied.push((from_sql(r.get(0)?), r.get(1)?));
        }
        applied.reverse();
        Ok(AccountState { inventory, applied })
    }

    fn commit(&mut self, batch: &BatchWrites) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut header = tx.prepare_cached(
                "INSERT OR REPLACE INTO inventories(account, version, slots) VALUES (?1, ?2, ?3)",
            )?;
            let mut clear = tx.prepare_cached("DELETE FROM inventory_slots WHERE account = ?1")?;
            let mut slot = tx.prepare_cached(
                "INSERT INTO inventory_slots(account, slot, item, count) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (account, inventory) in &batch.inventories {
                let account = to_sql(*account);
                header.execute(params![
                    account,
                    to_sql(inventory.version),
                    inventory.slots.len() as i64
                ])?;
                clear.execute([account])?;
                for (i, s) in inventory.slots.iter().enumerate() {
                    if let Some(s) = s {
                        slot.execute(params![account, i as i64, s.item.0, s.count])?;
                    }
                }
            }
            let mut upsert = tx.prepare_cached(
                "INSERT OR REPLACE INTO world_items(id, item, count, x, y) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for w in &batch.world_upserts {
                upsert.execute(params![
                    to_sql(w.id),
                    w.stack.item.0,
                    w.stack.count,
                    f64::from(w.position.x),
                    f64::from(w.position.y)
                ])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM world_items WHERE id = ?1")?;
            for id in &batch.world_deletes {
                delete.execute([to_sql(*id)])?;
            }
            let mut ledger = tx.prepare_cached(
                "INSERT OR REPLACE INTO ledger(item, minted, consumed) VALUES (?1, ?2, ?3)",
            )?;
            for (item, row) in &batch.ledger {
                ledger.execute(params![item.0, to_sql(row.minted), to_sql(row.consumed)])?;
            }
            let mut applied = tx.prepare_cached(
                "INSERT OR REPLACE INTO applied_requests(account, request_id, reply) VALUES (?1, ?2, ?3)",
            )?;
            // Keep the newest REMEMBERED_REQUESTS per account.
            let mut prune = tx.prepare_cached(
                "DELETE FROM applied_requests WHERE account = ?1 AND seq <= \
                 (SELECT seq FROM applied_requests WHERE account = ?1 ORDER BY seq DESC \
                  LIMIT 1 OFFSET ?2)",
            )?;
            let mut pruned = std::collections::BTreeSet::new();
            for (account, request_id, reply) in &batch.applied {
                applied.execute(params![to_sql(*account), to_sql(*request_id), reply])?;
                pruned.insert(*account);
            }
            for account in pruned {
                prune.execute(params![to_sql(account), REMEMBERED_REQUESTS as i64])?;
            }
            if let Some(c) = batch.counters {
                let mut meta =
                    tx.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?;
                meta.execute(params!["next_world_item", to_sql(c.next_world_item)])?;
                meta.execute(params!["spawned", to_sql(c.spawned)])?;
                meta.execute(params!["next_trade", to_sql(c.next_trade)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn audit(&mut self) -> Result<AuditReport, StoreError> {
        // One read transaction: with WAL, every read in it sees the
        // database as of its first read, so a commit by a live server
        // between two of the sums cannot make them disagree. It writes
        // nothing and ends (rolled back) when dropped.
        let tx = self.conn.transaction()?;
        let mut problems: Vec<String> = {
            let mut stmt = tx.prepare("PRAGMA integrity_check(10)")?;
            let lines = stmt.query_map([], |r| r.get::<_, String>(0))?;
            lines.collect::<Result<_, _>>()?
        };
        if problems != ["ok"] {
            // Damage: the sums' scans would fail on it (and say less).
            return Ok(AuditReport {
                integrity_ok: false,
                balanced: false,
                consistent: false,
                problems,
                items: BTreeMap::new(),
                accounts: 0,
                unknown_items: Vec::new(),
            });
        }
        problems = unloadable(&tx)?;
        let mut items: BTreeMap<u32, ItemTotals> = BTreeMap::new();
        let mut totals =
            |sql: &str, set: fn(&mut ItemTotals, u64, u64)| -> Result<(), StoreError> {
                let mut stmt = tx.prepare(sql)?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let item: i64 = r.get(0)?;
                    let item = u32::try_from(item)
                        .map_err(|_| StoreError::Corrupt(format!("item id {item}")))?;
                    let a = count_from_sql(r.get(1)?)?;
                    let b = count_from_sql(r.get(2)?)?;
                    set(items.entry(item).or_default(), a, b);
                }
                Ok(())
            };
        totals(
            &format!("SELECT item, SUM(count), 0 FROM inventory_slots WHERE {STACK} GROUP BY item"),
            |t, a, _| t.held = a,
        )?;
        // Totals of the rows that load: the others are listed in
        // `problems` (so `consistent` is false), not a failed read.
        totals(
            &format!("SELECT item, SUM(count), 0 FROM world_items WHERE {STACK} GROUP BY item"),
            |t, a, _| t.in_world = a,
        )?;
        totals(
            &format!("SELECT item, minted, consumed FROM ledger WHERE {LEDGER_ROW}"),
            |t, a, b| {
                t.minted = a;
                t.consumed = b;
            },
        )?;
        let accounts: i64 = tx.query_row("SELECT COUNT(*) FROM inventories", [], |r| r.get(0))?;
        Ok(AuditReport {
            integrity_ok: true,
            balanced: items.values().all(ItemTotals::balanced),
            consistent: problems.is_empty(),
            problems,
            items: items.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            accounts: count_from_sql(accounts)?,
            unknown_items: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use glam::Vec2;
    use shared::protocol::inventory::{ItemStack, WorldItem};

    use super::*;
    use crate::inventory::Catalogue;

    fn snapshot(version: u64, slots: Vec<Option<(u32, u32)>>) -> InventorySnapshot {
        InventorySnapshot {
            version,
            slots: slots
                .into_iter()
                .map(|s| {
                    s.map(|(item, count)| ItemStack {
                        item: ItemId(item),
                        count,
                    })
                })
                .collect(),
        }
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused_not_misread() {
        let dir = std::env::temp_dir().join(format!("sqlite-schema-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        // A newer server's database, one of whose tables this server
        // would create.
        store
            .conn
            .execute_batch(
                "UPDATE meta SET value = 2 WHERE key = 'schema_version'; \
                 DROP TABLE applied_requests;",
            )
            .unwrap();
        drop(store);
        for opened in [SqliteStore::open(&dir), SqliteStore::open_read_only(&dir)] {
            let error = opened.unwrap_err().to_string();
            assert!(error.contains("schema version 2"), "{error}");
        }
        // Refused before anything was written to it.
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'applied_requests'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the refusing server created its table");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file database left in another journal mode than WAL is refused:
    /// its readers would block the writer.
    #[test]
    fn a_database_that_cannot_use_wal_is_refused() {
        let dir = std::env::temp_dir().join(format!("sqlite-nowal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A VFS without shared memory: WAL cannot be used.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI;
        let uri = format!("file:{}?vfs=unix-none", dir.join(DB_FILE).display());
        let conn = Connection::open_with_flags(uri, flags).unwrap();
        let refused = SqliteStore::setup(conn, None).map(|_| ());
        assert!(
            matches!(&refused, Err(StoreError::NoWal { mode }) if mode == "delete"),
            "{refused:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Commits are durable past a power loss: fsynced at each one, to the
    /// disk itself where the system tells the two apart.
    #[test]
    fn the_writer_syncs_every_commit_to_the_disk() {
        let dir = std::env::temp_dir().join(format!("sqlite-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let get = |pragma: &str| -> i64 {
            store
                .conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(get("synchronous"), 2, "FULL");
        assert_eq!(get("fullfsync"), 1);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Slot rows a server could not load (beyond the inventory's slots) or
    /// would delete with the account's next change (no inventory row) are
    /// found, balanced ledger or not.
    #[test]
    fn slot_rows_out_of_place_make_the_audit_fail() {
        let dir = std::env::temp_dir().join(format!("sqlite-orphans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = SqliteStore::open(&dir).unwrap();
        store
            .commit(&BatchWrites {
                inventories: vec![(1, snapshot(1, vec![Some((1, 4)), None, None]))],
                ledger: vec![(
                    ItemId(1),
                    LedgerRow {
                        minted: 12,
                        consumed: 0,
                    },
                )],
                ..BatchWrites::default()
            })
            .unwrap();
        // 8 more items held, where no server put them.
        store
            .conn
            .execute_batch(
                "INSERT INTO inventory_slots VALUES (1, 5, 1, 4); \
                 INSERT INTO inventory_slots VALUES (2, 0, 1, 4);",
            )
            .unwrap();
        let report = store.audit().unwrap();
        assert!(report.integrity_ok && report.balanced, "{report:?}");
        assert!(!report.consistent);
        assert_eq!(
            report.problems,
            [
                "account 1: slot 5 stored, inventory of 3",
                "account 2: slot 0 stored, no inventory"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Items held or in the world that the catalogue does not define
    /// (retired since they were stored) are listed as a finding: the
    /// store is still intact, balanced and consistent. An id only in the
    /// ledger (all used up) is not listed.
    #[test]
    fn the_audit_lists_items_the_catalogue_does_not_define() {
        let dir = std::env::temp_dir().join(format!("sqlite-unknown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = SqliteStore::open(&dir).unwrap();
        let minted = |minted, consumed| LedgerRow { minted, consumed };
        store
            .commit(&BatchWrites {
                inventories: vec![(1, snapshot(1, vec![Some((1, 4)), Some((999, 2))]))],
                world_upserts: vec![WorldItem {
                    id: 1,
                    stack: ItemStack {
                        item: ItemId(1_000),
                        count: 3,
                    },
                    position: Vec2::ZERO,
                }],
                ledger: vec![
                    (ItemId(1), minted(4, 0)),
                    (ItemId(999), minted(2, 0)),
                    (ItemId(1_000), minted(3, 0)),
                    (ItemId(998), minted(1, 1)),
                ],
                counters: Some(Counters {
                    next_world_item: 2,
                    spawned: 1,
                    next_trade: 0,
                }),
                ..BatchWrites::default()
            })
            .unwrap();
        let report = crate::persistence::audit(&dir, &Catalogue::embedded().unwrap()).unwrap();
        assert!(
            report.integrity_ok && report.balanced && report.consistent,
            "{report:?}"
        );
        assert_eq!(report.unknown_items, [999, 1_000]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["unknown_items"], serde_json::json!([999, 1_000]));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every row `load_account` refuses makes the audit fail, naming it:
    /// an inventory too large or of a negative version, a slot row that is
    /// no stack, a remembered reply that is no bytes. An account the
    /// server loads is not named.
    #[test]
    fn rows_the_server_cannot_load_make_the_audit_fail() {
        let dir = std::env::temp_dir().join(format!("sqlite-unloadable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = SqliteStore::open(&dir).unwrap();
        store
            .commit(&BatchWrites {
                inventories: (1..=8)
                    .map(|account| (account, snapshot(1, vec![Some((1, 1)), None, None])))
                    .collect(),
                ledger: vec![(
                    ItemId(1),
                    LedgerRow {
                        minted: 7,
                        consumed: 0,
                    },
                )],
                applied: vec![(5, 1, vec![1]), (7, 1, vec![1]), (8, 1, vec![1])],
                ..BatchWrites::default()
            })
            .unwrap();
        store
            .conn
            .execute_batch(
                "UPDATE inventories SET slots = 65 WHERE account = 1; \
                 UPDATE inventories SET version = -1 WHERE account = 2; \
                 UPDATE inventories SET version = 'one' WHERE account = 3; \
                 UPDATE inventory_slots SET item = -1 WHERE account = 4; \
                 INSERT INTO inventory_slots VALUES (4, 1, 1, 4294967296); \
                 UPDATE applied_requests SET reply = 'text' WHERE account = 5; \
                 UPDATE inventory_slots SET slot = 'first' WHERE account = 6; \
                 UPDATE applied_requests SET request_id = 'x' WHERE account = 8;",
            )
            .unwrap();
        for account in [1, 2, 3, 4, 5, 6, 8] {
            let loaded = store.load_account(account);
            assert!(loaded.is_err(), "account {account}: {loaded:?}");
        }
        store.load_account(7).unwrap();
        // The world's rows and counters: each alone stops the start.
        for damage in [
            "INSERT INTO world_items VALUES (-5, 1, 1, 0.0, 0.0)",
            "INSERT INTO world_items VALUES (9, 1, 4294967296, 0.0, 0.0)",
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_trade', -1)",
            "INSERT INTO ledger VALUES (2, 'many', 0)",
        ] {
            let world = store.load_world().map(|_| ());
            assert!(world.is_ok(), "before {damage}: {world:?}");
            store.conn.execute_batch(damage).unwrap();
            assert!(store.load_world().is_err(), "{damage}");
            // Undone for the next, and all of them again below.
            store
                .conn
                .execute_batch(
                    "DELETE FROM world_items; DELETE FROM meta WHERE key = 'next_trade'; \
                     DELETE FROM ledger WHERE item = 2",
                )
                .unwrap();
        }
        store
            .conn
            .execute_batch(
                "INSERT INTO world_items VALUES (-5, 1, 1, 0.0, 0.0); \
                 INSERT INTO world_items VALUES (9, 1, 4294967296, 0.0, 0.0); \
                 INSERT INTO world_items VALUES (10, -1, 1, 0.0, 0.0); \
                 INSERT OR REPLACE INTO meta(key, value) VALUES ('next_trade', -1); \
                 INSERT INTO ledger VALUES (2, 'many', 0);",
            )
            .unwrap();

        let report = store.audit().unwrap();
        assert!(report.integrity_ok, "{report:?}");
        assert!(!report.consistent);
        assert_eq!(
            report.problems,
            [
                "account 1: inventory of 65 slots, not 0 to 64",
                "account 2: version -1, not 0 or more",
                "account 3: version \"one\", not 0 or more",
                "account 6: slot \"first\" stored, inventory of 3",
                "account 4: slot 0 holds item -1, count 1: not a stack",
                "account 4: slot 1 holds item 1, count 4294967296: not a stack",
                "account 5: remembered reply to request 1 is text, not bytes",
                "account 8: remembered request id \"x\", not a number",
                "world item -5: item 1, count 1 at (0, 0): not one",
                "world item 9: item 1, count 4294967296 at (0, 0): not one",
                "world item 10: item -1, count 1 at (0, 0): not one",
                "counter \"next_trade\": -1, not 0 or more",
                "counter \"next_world_item\": 0, not above world item 10",
                "ledger item 2: minted \"many\", consumed 0: not counts",
            ]
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Damage the integrity check finds is a failed check with its lines,
    /// not an error of the audit (whose scans would fail on it).
    #[test]
    fn a_damaged_page_is_a_failed_integrity_check_not_an_error() {
        let dir = std::env::temp_dir().join(format!("sqlite-damage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = SqliteStore::open(&dir).unwrap();
        let inventories = (1..=3000)
            .map(|account| (account, snapshot(1, vec![Some((1, 1)); 5])))
            .collect();
        store
            .commit(&BatchWrites {
                inventories,
                ledger: vec![(
                    ItemId(1),
                    LedgerRow {
                        minted: 15_000,
                        consumed: 0,
                    },
                )],
                ..BatchWrites::default()
            })
            .unwrap();
        let leaf: i64 = store
            .conn
            .query_row(
                "SELECT pageno FROM dbstat WHERE name = 'inventory_slots' AND pagetype = 'leaf' \
                 ORDER BY pageno LIMIT 1 OFFSET 5",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let page_size: i64 = store
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        drop(store);
        let path = dir.join(DB_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = usize::try_from((leaf - 1) * page_size).unwrap();
        bytes[at + 8..at + 72].fill(0xA5);
        std::fs::write(&path, bytes).unwrap();
        let report = crate::persistence::audit(&dir, &Catalogue::embedded().unwrap()).unwrap();
        assert!(!report.integrity_ok, "{report:?}");
        assert!(!report.balanced);
        assert!(!report.problems.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A world item counter at or behind a stored item's id would count
    /// onto it, overwriting the item: the audit reports it, and a load
    /// counts on past the items.
    #[test]
    fn a_world_item_counter_behind_the_items_is_reported_and_passed_over() {
        let dir = std::env::temp_dir().join(format!("sqlite-counter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = SqliteStore::open(&dir).unwrap();
        let item = |id| WorldItem {
            id,
            stack: ItemStack {
                item: ItemId(1),
                count: 1,
            },
            position: Vec2::ZERO,
        };
        store
            .commit(&BatchWrites {
                world_upserts: vec![item(2), item(5)],
                ledger: vec![(
                    ItemId(1),
                    LedgerRow {
                        minted: 2,
                        consumed: 0,
                    },
                )],
                counters: Some(Counters {
                    next_world_item: 3,
                    spawned: 2,
                    next_trade: 0,
                }),
                ..BatchWrites::default()
            })
            .unwrap();
        let report = store.audit().unwrap();
        assert_eq!(
            report.problems,
            ["counter \"next_world_item\": 3, not above world item 5"]
        );
        assert_eq!(store.load_world().unwrap().counters.next_world_item, 6);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_round_trips_and_the_audit_checks_the_ledger() {
        let dir = std::env::temp_dir().join(format!("sqlite-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = SqliteStore::open(&dir).unwrap();
        let inventory = snapshot(3, vec![Some((1, 4)), None, Some((2, 1))]);
        let batch = BatchWrites {
            inventories: vec![(u64::MAX, inventory.clone())],
            world_upserts: vec![WorldItem {
                id: 9,
                stack: ItemStack {
                    item: ItemId(1),
                    count: 2,
                },
                position: Vec2::new(1.5, -2.0),
            }],
            world_deletes: vec![],
            ledger: vec![
                (
                    ItemId(1),
                    LedgerRow {
                        minted: 7,
                        consumed: 1,
                    },
                ),
                (
                    ItemId(2),
                    LedgerRow {
                        minted: 1,
                        consumed: 0,
                    },
                ),
            ],
            applied: vec![(u64::MAX, 5, vec![1, 2, 3])],
            counters: Some(Counters {
                next_world_item: 10,
                spawned: 4,
                next_trade: 7,
            }),
        };
        store.commit(&batch).unwrap();
        drop(store);

        let mut store = SqliteStore::open(&dir).unwrap();
        let account = store.load_account(u64::MAX).unwrap();
        assert_eq!(account.inventory, Some(inventory));
        assert_eq!(account.applied, vec![(5, vec![1, 2, 3])]);
        let world = store.load_world().unwrap();
        assert_eq!(world.world, batch.world_upserts);
        assert_eq!(
            world.counters,
            Counters {
                next_world_item: 10,
                spawned: 4,
                next_trade: 7,
            }
        );
        let report = store.audit().unwrap();
        assert!(report.integrity_ok);
        assert!(report.balanced, "{report:?}");
        assert_eq!(
            report.items["1"],
            ItemTotals {
                held: 4,
                in_world: 2,
                minted: 7,
                consumed: 1
            }
        );

        // An unbalanced ledger is reported.
        store
            .commit(&BatchWrites {
                ledger: vec![(
                    ItemId(2),
                    LedgerRow {
                        minted: 2,
                        consumed: 0,
                    },
                )],
                ..BatchWrites::default()
            })
            .unwrap();
        assert!(!store.audit().unwrap().balanced);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_batch_stores_nothing() {
        let mut store = SqliteStore::open_in_memory().unwrap();
        let bad = BatchWrites {
            ledger: vec![(
                ItemId(1),
                LedgerRow {
                    minted: 1,
                    consumed: 0,
                },
            )],
            world_upserts: vec![WorldItem {
                id: 1,
                stack: ItemStack {
                    item: ItemId(1),
                    count: 0,
                }, // violates CHECK
                position: Vec2::ZERO,
            }],
            ..BatchWrites::default()
        };
        assert!(store.commit(&bad).is_err());
        assert!(store.load_world().unwrap().ledger.is_empty());
    }

    #[test]
    fn only_the_newest_applied_requests_are_kept() {
        let mut store = SqliteStore::open_in_memory().unwrap();
        for id in 0..(REMEMBERED_REQUESTS as u64 + 10) {
            store
                .commit(&BatchWrites {
                    applied: vec![(1, id, vec![])],
                    ..BatchWrites::default()
                })
                .unwrap();
        }
        let applied = store.load_account(1).unwrap().applied;
        assert_eq!(applied.len(), REMEMBERED_REQUESTS);
        assert_eq!(applied[0].0, 10);
    }

    /// A data folder written by something else (a tool, an older build, an
    /// attacker with the file) is read within the bounds commits keep: the
    /// newest remembered requests only, each reply at most a message long,
    /// and no counter that would wrap its next id onto one in use.
    #[test]
    fn a_file_past_the_stores_bounds_is_read_within_them() {
        let mut store = SqliteStore::open_in_memory().unwrap();
        store
            .conn
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9999)
                 INSERT INTO applied_requests(account, seq, request_id, reply)
                 SELECT 7, i, i, x'00' FROM n;
                 UPDATE applied_requests SET reply = zeroblob(1000000) WHERE seq = 9999;",
            )
            .unwrap();
        let applied = store.load_account(7).unwrap().applied;
        assert_eq!(applied.len(), REMEMBERED_REQUESTS);
        let ids: Vec<u64> = applied.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids[0], 10_000 - REMEMBERED_REQUESTS as u64);
        assert!(ids.is_sorted());
        assert_eq!(applied.last().unwrap(), &(9_999, Vec::new()));
        store
            .conn
            .execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_world_item', -1)",
                [],
            )
            .unwrap();
        assert!(matches!(
            store.load_world(),
            Err(StoreError::Corrupt(message)) if message.contains("next_world_item")
        ));
    }

    thread_local! {
        /// A second connection to the store, standing in for the live
        /// server while [`use_one_item_while_the_audit_reads`] runs.
        static SERVER: std::cell::RefCell<Option<Connection>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Commits, from the second connection, the use of one item (one
    /// fewer held, one more consumed: balanced on its own) as the audit
    /// starts a statement on the world items, i.e. after it has read the
    /// held totals and before it reads the ledger. Once.
    fn use_one_item_while_the_audit_reads(event: rusqlite::trace::TraceEvent<'_>) {
        if let rusqlite::trace::TraceEvent::Stmt(_, sql) = event
            && sql.contains("FROM world_items")
            && let Some(server) = SERVER.with_borrow_mut(Option::take)
        {
            server
                .execute_batch(
                    "BEGIN;
                     UPDATE inventory_slots SET count = count - 1 WHERE account = 1 AND slot = 0;
                     UPDATE ledger SET consumed = consumed + 1 WHERE item = 1;
                     COMMIT;",
                )
                .expect("the server's commit");
        }
    }

    /// `server audit` runs next to a live server: a commit landing between
    /// two of its reads must not make a balanced store look unbalanced.
    #[test]
    fn the_audit_reads_one_snapshot_while_the_server_commits() {
        let dir = std::env::temp_dir().join(format!("sqlite-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = SqliteStore::open(&dir).unwrap();
        store
            .commit(&BatchWrites {
                inventories: vec![(1, snapshot(1, vec![Some((1, 4))]))],
                ledger: vec![(
                    ItemId(1),
                    LedgerRow {
                        minted: 4,
                        consumed: 0,
                    },
                )],
                ..BatchWrites::default()
            })
            .unwrap();
        SERVER.set(Some(Connection::open(dir.join(DB_FILE)).unwrap()));
        store.conn.trace_v2(
            rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
            Some(use_one_item_while_the_audit_reads),
        );

        let during = store.audit().unwrap();
        assert!(
            SERVER.with_borrow(Option::is_none),
            "the server committed during the audit"
        );
        assert!(during.balanced, "{during:?}");
        let before = ItemTotals {
            held: 4,
            in_world: 0,
            minted: 4,
            consumed: 0,
        };
        assert_eq!(during.items["1"], before, "the state before the commit");
        let after = store.audit().unwrap();
        assert_eq!(
            after.items["1"],
            ItemTotals {
                held: 3,
                consumed: 1,
                ..before
            },
            "the commit took effect"
        );
        assert!(after.balanced);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Two servers writing one data directory would overwrite each
    /// other's acknowledged changes: the second is refused. The audit,
    /// which only reads, still runs next to the one that writes.
    #[test]
    fn a_data_dir_is_written_by_one_store_at_a_time() {
        let dir = std::env::temp_dir().join(format!("sqlite-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = SqliteStore::open(&dir).unwrap();
        let second = SqliteStore::open(&dir).map(drop).unwrap_err();
        assert!(matches!(second, StoreError::InUse { .. }), "{second:?}");
        assert_eq!(
            second.to_string(),
            format!(
                "data directory {} is in use by another server process",
                dir.display()
            )
        );
        let report = crate::persistence::audit(&dir, &Catalogue::embedded().unwrap()).unwrap();
        assert!(report.integrity_ok && report.balanced, "{report:?}");
        drop(first);
        drop(SqliteStore::open(&dir).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The lock file deleted by hand while a server runs (taken for a
    /// stale one, as a pid file would be): the next server is refused all
    /// the same, by the lock on the directory. Before, it made a new lock
    /// file, locked it, and wrote the database beside the first.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_deleted_lock_file_lets_no_second_store_in() {
        let dir = std::env::temp_dir().join(format!("sqlite-unlock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = SqliteStore::open(&dir).unwrap();
        std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        let second = SqliteStore::open(&dir).map(drop).unwrap_err();
        assert!(matches!(second, StoreError::InUse { .. }), "{second:?}");
        drop(first);
        drop(SqliteStore::open(&dir).unwrap());
        assert!(dir.join(LOCK_FILE).exists(), "made again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
