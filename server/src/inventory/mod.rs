//! Inventory: server-authoritative, atomic, persisted item operations.
//!
//! ```text
//!                                  db-reader thread (SQLite, read-only)
//!                                        │ LoadedAccount (polled each tick)
//! FromClient<InventoryRequest> ─┐        ▼
//! ClientConnected/Disconnected ─┼─► InventoryCore ─► Batch ─► db-writer thread (SQLite, one transaction)
//! tick (spawner) ───────────────┘        ▲                          │
//!                                        └── complete(result) ◄─────┘  (polled next tick)
//!                                              └─► InventoryReply / InventoryUpdate / TradeUpdate / WorldItems
//! ```
//!
//! The rules are in [`core`] (plain Rust, tested without bevy). This
//! module feeds it from the network each tick and sends what it releases.
//! Replies leave only after their batch is durably committed; the tick
//! never waits for the database: it submits a batch and picks the result
//! up on a later tick, and it asks the `db-reader` thread for the account
//! of a player who connects and picks it up, read and decoded, on a later
//! tick (the player's requests wait meanwhile). The tick thread reads the
//! database only at start, for the world.

pub mod catalogue;
pub mod core;

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bevy_app::{App, AppExit, FixedUpdate, Last, Plugin, Update};
use bevy_ecs::prelude::*;
use shared::io::ClientId;
use shared::protocol::channels;
use shared::protocol::inventory::{
    InventoryError, InventoryReply, InventoryRequest, InventoryUpdate, TradeUpdate, WorldItems,
};

pub use self::catalogue::{Catalogue, CatalogueError, EMBEDDED_CATALOGUE, ItemDef};
pub use self::core::{
    AccountLoader, Batch, CoreConfig, CoreError, Input, InventoryCore, LOAD_RETRY_TICKS,
    LoadedAccount, Output, PARTNER_LOAD_ATTEMPTS, prepare_account,
};
use crate::metrics::{Counter, Faults, Histogram, Metrics, exponential_buckets};
use crate::movement::MovementSystems;
use crate::net::{
    ClientConnected, ClientDisconnected, FromClient, NetAppExt, SessionChange, ToClient,
    session_changes,
};
use crate::persistence::{AccountReader, InventoryStore, SqliteStore, StoreError, StoreWriter};
use crate::shutdown::{ShutdownReason, ShutdownRequested, ShutdownSystems};
use crate::world::Position;

/// The running inventory: the rules, the reader thread for account loads
/// and the writer thread. Build it with [`InventoryService::open`] (what
/// `build_app` does) or let [`InventoryPlugin`] make an in-memory one.
#[derive(Resource)]
pub struct InventoryService {
    core: InventoryCore,
    reader: AccountReader<LoadedAccount>,
    writer: StoreWriter,
    /// Request tag → when and from which client it arrived (for the
    /// latency metric). Entries of a client leave with it: its session's
    /// replies are not released (see [`core`]).
    received: HashMap<u64, (Instant, ClientId)>,
    next_tag: u64,
    members: HashMap<u64, ClientId>,
}

/// Why the inventory could not start.
#[derive(Debug, thiserror::Error)]
pub enum InventoryStartError {
    /// The catalogue is invalid.
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    /// Storage could not be opened or loaded.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Storage could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread could not start.
    #[error("cannot start the database writer thread: {0}")]
    Thread(std::io::Error),
    /// The reader thread could not start.
    #[error("cannot start the database reader thread: {0}")]
    ReaderThread(std::io::Error),
}

/// Loads through the `db-reader` thread: [`Poll::Pending`] until the
/// account is read and prepared there.
impl AccountLoader for AccountReader<LoadedAccount> {
    fn load(&mut self, account: u64, slots: usize) -> Poll<Result<LoadedAccount, StoreError>> {
        self.poll_load(account, slots)
    }

    fn forget(&mut self, account: u64) {
        AccountReader::forget(self, account);
    }
}

impl InventoryService {
    /// Opens the SQLite store in `data_dir` (two connections: the writer
    /// thread's, which holds the directory's lock, and the reader
    /// thread's read-only one), loads the world and starts both threads.
    ///
    /// # Errors
    /// [`InventoryStartError`].
    pub fn open(
        data_dir: &std::path::Path,
        catalogue: Arc<Catalogue>,
        config: CoreConfig,
    ) -> Result<Self, InventoryStartError> {
        let writer = SqliteStore::open(data_dir)?;
        let reader = SqliteStore::open_read_only(data_dir)?;
        Self::start(Box::new(reader), Box::new(writer), catalogue, config)
    }

    /// An in-memory store shared by the reader and the writer; nothing
    /// survives the process.
    ///
    /// # Errors
    /// [`InventoryStartError`].
    pub fn in_memory(
        catalogue: Arc<Catalogue>,
        config: CoreConfig,
    ) -> Result<Self, InventoryStartError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "inventory-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let writer = SqliteStore::open_shared_memory(&name)?;
        let reader = SqliteStore::open_shared_memory(&name)?;
        Self::start(Box::new(reader), Box::new(writer), catalogue, config)
    }

    /// Starts on any pair of stores over the same data: loads the world
    /// from `reader` (here, before the first tick), then hands it to the
    /// `db-reader` thread for account loads and `writer` to the
    /// `db-writer` thread.
    ///
    /// # Errors
    /// [`InventoryStartError`].
    pub fn start(
        mut reader: Box<dyn InventoryStore>,
        writer: Box<dyn InventoryStore>,
        catalogue: Arc<Catalogue>,
        config: CoreConfig,
    ) -> Result<Self, InventoryStartError> {
        let core = InventoryCore::load(catalogue, config, reader.as_mut())?;
        let reader = AccountReader::spawn(reader, prepare_account)
            .map_err(InventoryStartError::ReaderThread)?;
        let writer = StoreWriter::spawn(writer).map_err(InventoryStartError::Thread)?;
        Ok(Self {
            core,
            reader,
            writer,
            received: HashMap::new(),
            next_tag: 0,
            members: HashMap::new(),
        })
    }

    /// The rules and state.
    pub fn core(&self) -> &InventoryCore {
        &self.core
    }

    /// Waits, up to `timeout`, for the batch being committed: at exit, so
    /// that one that fails (or does not finish) is an error, not a
    /// success with the last ticks' changes lost.
    ///
    /// # Errors
    /// What failed.
    pub fn finish_saving(&mut self, timeout: Duration) -> Result<(), String> {
        if !self.core.in_flight() {
            return Ok(());
        }
        let done = match self.writer.wait_done(timeout) {
            Ok(Some(done)) => done,
            Ok(None) => {
                return Err(format!(
                    "the last inventory batch was not stored within {timeout:?}"
                ));
            }
            Err(error) => return Err(format!("the last inventory batch was not stored: {error}")),
        };
        let failure = done.result.as_ref().err().map(ToString::to_string);
        // Its replies go nowhere now: their sessions are over.
        let _ = self.core.complete(done.result);
        match failure {
            None => Ok(()),
            Some(error) => Err(format!("the last inventory batch was not stored: {error}")),
        }
    }
}

/// Longest the exit waits for the batch being committed (the store's own
/// busy timeout is 5 s). The exit tick waits, so the tick runner's
/// shutdown timeout does not see it; the watchdog's limit counts it (see
/// [`crate::shutdown_watchdog_limit`]).
pub const FINAL_SAVE_TIMEOUT: Duration = Duration::from_secs(6);

/// `Last`, after the shutdown wrote its `AppExit`: the batch still being
/// committed is waited for, and an exit that would be a success becomes an
/// error if it fails.
fn finish_saving_on_exit(
    mut exits: ResMut<Messages<AppExit>>,
    mut seen: Local<bevy_ecs::message::MessageCursor<AppExit>>,
    mut service: ResMut<InventoryService>,
) {
    if seen.read(&exits).count() == 0 {
        return;
    }
    if let Err(error) = service.finish_saving(FINAL_SAVE_TIMEOUT) {
        tracing::error!(%error, "exiting with an error");
        exits.write(AppExit::error());
    }
}

/// The inventory systems (`FixedUpdate`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InventorySystems {
    /// Collect the commit result, feed the tick's inputs, submit a batch.
    Run,
}

/// Installs the inventory. Uses the [`InventoryService`] resource when
/// present; otherwise starts an in-memory one with the built-in catalogue
/// and [`CoreConfig::default`] (and warns: nothing is persisted).
#[derive(Debug, Clone, Default)]
pub struct InventoryPlugin;

#[derive(Resource, Clone)]
struct InventoryMetrics {
    requests: Counter,
    /// `inventory_refused_total{reason}`, one series per [`InventoryError`].
    refused: Vec<(InventoryError, Counter)>,
    commit_failures: Counter,
    /// The store's fault, set while its last commit failed.
    faults: Faults,
    op_latency: Histogram,
    commit_time: Histogram,
    system_time: Histogram,
}

impl Plugin for InventoryPlugin {
    fn build(&self, app: &mut App) {
        if !app.world().contains_resource::<InventoryService>() {
            tracing::warn!("inventory: no data directory configured; using an in-memory store");
            let service = Catalogue::embedded()
                .map_err(InventoryStartError::from)
                .and_then(|c| InventoryService::in_memory(Arc::new(c), CoreConfig::default()));
            match service {
                Ok(service) => {
                    app.insert_resource(service);
                }
                Err(error) => {
                    tracing::error!(%error, "inventory disabled");
                    return;
                }
            }
        }
        let metrics = app.world_mut().get_resource_or_init::<Metrics>().clone();
        let r = metrics.registry();
        let seconds = exponential_buckets(0.000_25, 2.0, 14);
        let histogram = |name: &str, help: &str| {
            r.histogram(name, help, &seconds).unwrap_or_else(|_| {
                Histogram::detached(&seconds).unwrap_or_else(|_| unreachable_histogram())
            })
        };
        let metrics = InventoryMetrics {
            requests: r
                .counter("inventory_requests_total", "Inventory requests received.")
                .unwrap_or_default(),
            refused: REFUSALS
                .iter()
                .map(|&(error, reason)| {
                    let counter = r
                        .counter_with_labels(
                            "inventory_refused_total",
                            "Inventory requests refused, by reason (nothing changed).",
                            &[("reason", reason)],
                        )
                        .unwrap_or_default();
                    (error, counter)
                })
                .collect(),
            commit_failures: r
                .counter(
                    "inventory_commit_failures_total",
                    "Inventory batches whose commit failed (rolled back).",
                )
                .unwrap_or_default(),
            faults: metrics.faults().clone(),
            op_latency: histogram(
                "inventory_op_seconds",
                "Inventory request received to reply sent (includes the durable commit).",
            ),
            commit_time: histogram(
                "inventory_commit_seconds",
                "Time to commit one batch on the db-writer thread.",
            ),
            system_time: histogram(
                "inventory_tick_seconds",
                "Time the inventory system takes per tick (its cost to the tick).",
            ),
        };
        app.add_message::<ClientConnected>()
            .add_message::<ClientDisconnected>()
            .add_client_message::<InventoryRequest>(channels::INVENTORY)
            // Registered first: a `ListWorld`'s list goes out before its
            // reply (see `typed` for the order of a tick's messages).
            .add_server_message::<WorldItems>(channels::INVENTORY)
            .add_server_message::<InventoryReply>(channels::INVENTORY)
            .add_server_message::<InventoryUpdate>(channels::INVENTORY)
            .add_server_message::<TradeUpdate>(channels::INVENTORY)
            .insert_resource(metrics)
            // Requests are judged where players stand after this tick's
            // movement; a new player's position is in place by then.
            .configure_sets(
                FixedUpdate,
                MovementSystems::Integrate.before(InventorySystems::Run),
            )
            .add_systems(FixedUpdate, run.in_set(InventorySystems::Run))
            .add_systems(Update, watch_db_threads)
            .add_systems(Last, finish_saving_on_exit.after(ShutdownSystems::Exit));
    }
}

/// A `db-writer` thread that stops while the server runs (a store that
/// panicked) leaves every change refused `Storage` for good, a
/// `db-reader` thread that stops leaves every player who connects without
/// an inventory. The server shuts down with an error instead, so that a
/// supervisor restarts it; during a shutdown already under way too (what
/// it still had to save is lost: the exit is an error).
fn watch_db_threads(
    service: Res<InventoryService>,
    requests: Option<ResMut<Messages<ShutdownRequested>>>,
    mut reported: Local<bool>,
) {
    if *reported {
        return;
    }
    let stopped = if service.writer.is_stopped() {
        "the database writer thread stopped"
    } else if service.reader.is_stopped() {
        "the database reader thread stopped"
    } else {
        return;
    };
    *reported = true;
    tracing::error!("{stopped}; shutting down");
    if let Some(mut requests) = requests {
        requests.write(ShutdownRequested {
            reason: ShutdownReason::Failure(stopped.to_owned()),
        });
    }
}

/// The part of the server [`InventoryMetrics::faults`] names.
const STORE: &str = "inventory store";

impl InventoryMetrics {
    /// Counts a commit that failed with `error` (or clears the store's
    /// fault for a commit that worked): the server is unhealthy until one
    /// commits again, or for [`FAULT_HOLD`](crate::metrics::FAULT_HOLD) if
    /// none is tried meanwhile.
    fn committed(&self, result: Result<(), &StoreError>) {
        match result {
            Ok(()) => {
                if self.faults.clear(STORE) {
                    tracing::info!("inventory store: commits work again");
                }
            }
            Err(error) => {
                self.commit_failures.inc();
                let fault = format!("the last commit failed: {error}");
                self.faults.raise(STORE, fault, Instant::now());
            }
        }
    }
}

/// Every refusal reason and its `reason` label.
const REFUSALS: [(InventoryError, &str); 18] = [
    (InventoryError::BadSlot, "bad_slot"),
    (InventoryError::EmptySlot, "empty_slot"),
    (InventoryError::BadCount, "bad_count"),
    (InventoryError::NoRoom, "no_room"),
    (InventoryError::NoSuchWorldItem, "no_such_world_item"),
    (InventoryError::TooFar, "too_far"),
    (InventoryError::WorldFull, "world_full"),
    (InventoryError::NotUsable, "not_usable"),
    (InventoryError::UnknownPlayer, "unknown_player"),
    (InventoryError::NoSuchTrade, "no_such_trade"),
    (InventoryError::BadOffer, "bad_offer"),
    (InventoryError::TradeFailed, "trade_failed"),
    (InventoryError::Busy, "busy"),
    (InventoryError::Storage, "storage"),
    (InventoryError::TradeChanged, "trade_changed"),
    (InventoryError::PartnerBusy, "partner_busy"),
    (InventoryError::SameSlot, "same_slot"),
    (InventoryError::SlotTaken, "slot_taken"),
];

fn unreachable_histogram() -> Histogram {
    // `detached` only fails on unsorted bounds; ours are sorted.
    Histogram::detached(&[1.0]).unwrap_or_else(|_| unreachable_histogram())
}

#[derive(bevy_ecs::system::SystemParam)]
struct Outgoing<'w> {
    replies: MessageWriter<'w, ToClient<InventoryReply>>,
    updates: MessageWriter<'w, ToClient<InventoryUpdate>>,
    trades: MessageWriter<'w, ToClient<TradeUpdate>>,
    world: MessageWriter<'w, ToClient<WorldItems>>,
}

fn send(
    service: &mut InventoryService,
    outputs: Vec<Output>,
    out: &mut Outgoing,
    metrics: &InventoryMetrics,
) {
    for output in outputs {
        match output {
            Output::Reply {
                account,
                reply,
                tag,
            } => {
                if let Some((at, _)) = service.received.remove(&tag) {
                    metrics.op_latency.observe_duration(at.elapsed());
                }
                if let Err(error) = reply.result
                    && let Some((_, refused)) = metrics.refused.iter().find(|(e, _)| *e == error)
                {
                    refused.inc();
                }
                if let Some(&client) = service.members.get(&account) {
                    out.replies.write(ToClient::one(client, reply));
                }
            }
            Output::Update { account, update } => {
                if let Some(&client) = service.members.get(&account) {
                    out.updates.write(ToClient::one(client, update));
                }
            }
            Output::Trade { account, update } => {
                if let Some(&client) = service.members.get(&account) {
                    out.trades.write(ToClient::one(client, update));
                }
            }
            Output::World { account, items } => {
                if let Some(&client) = service.members.get(&account) {
                    out.world.write(ToClient::one(client, items));
                }
            }
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one system feeds every input of the core, in order"
)]
fn run(
    mut service: ResMut<InventoryService>,
    mut connected: MessageReader<ClientConnected>,
    mut disconnected: MessageReader<ClientDisconnected>,
    mut requests: MessageReader<FromClient<InventoryRequest>>,
    positions: Query<&Position>,
    entities: Local<HashMap<u64, Entity>>,
    mut out: Outgoing,
    metrics: Res<InventoryMetrics>,
) {
    let started = Instant::now();
    let service = &mut *service;
    let mut entities = entities;
    match service.writer.try_done() {
        Ok(Some(done)) => {
            metrics.commit_time.observe_duration(done.commit_time);
            metrics.committed(done.result.as_ref().map(|_| ()));
            let outputs = service.core.complete(done.result);
            send(service, outputs, &mut out, &metrics);
        }
        Ok(None) => {}
        Err(error) if service.core.in_flight() => {
            tracing::error!(%error, "inventory batch in flight lost with the writer; refused");
            metrics.committed(Err(&error));
            let outputs = service.core.complete(Err(error));
            send(service, outputs, &mut out, &metrics);
        }
        Err(_) => {}
    }
    for change in session_changes(&mut connected, &mut disconnected) {
        match change {
            SessionChange::Joined(c) => {
                service.members.insert(c.client.account, c.client);
                entities.insert(c.client.account, c.entity);
                service.core.push(Input::Connected {
                    account: c.client.account,
                });
            }
            SessionChange::Left(d) => {
                if service.members.get(&d.client.account) == Some(&d.client) {
                    service.members.remove(&d.client.account);
                    service.received.retain(|_, (_, from)| *from != d.client);
                    entities.remove(&d.client.account);
                    service.core.push(Input::Disconnected {
                        account: d.client.account,
                    });
                }
            }
        }
    }
    for FromClient { client, message } in requests.read() {
        if service.members.get(&client.account) != Some(client) {
            continue; // no session: ignored
        }
        metrics.requests.inc();
        let tag = service.next_tag;
        service.next_tag = service.next_tag.wrapping_add(1);
        service.received.insert(tag, (Instant::now(), *client));
        let position = entities
            .get(&client.account)
            .and_then(|e| positions.get(*e).ok())
            .map(|p| p.0);
        if let Some(answer) = service.core.push(Input::Request {
            account: client.account,
            request: message.clone(),
            position,
            tag,
        }) {
            send(service, vec![answer], &mut out, &metrics);
        }
    }
    service.core.push(Input::Tick);
    // Nothing while a batch is in flight; else the accounts read since the
    // last tick land first, then the inputs make the next batch.
    if let Some(batch) = service.core.prepare(&mut service.reader) {
        let outputs = if batch.writes.is_empty() {
            service.core.complete(Ok(()))
        } else {
            match service.writer.submit(0, batch.writes) {
                Ok(()) => Vec::new(),
                Err(_) => {
                    tracing::error!("inventory writer gone or stuck; batch refused");
                    metrics.committed(Err(&StoreError::WriterGone));
                    service.core.complete(Err(StoreError::WriterGone))
                }
            }
        };
        send(service, outputs, &mut out, &metrics);
    }
    metrics.system_time.observe_duration(started.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::{AccountState, AuditReport, BatchWrites, WorldState};

    /// A store that fails its commits while `failing` is set (a full
    /// disk).
    struct FailWhile(SqliteStore, Arc<std::sync::atomic::AtomicBool>);

    impl InventoryStore for FailWhile {
        fn load_world(&mut self) -> Result<WorldState, StoreError> {
            self.0.load_world()
        }
        fn load_account(&mut self, account: u64) -> Result<AccountState, StoreError> {
            self.0.load_account(account)
        }
        fn commit(&mut self, writes: &BatchWrites) -> Result<(), StoreError> {
            if self.1.load(std::sync::atomic::Ordering::Relaxed) {
                Err(StoreError::Injected)
            } else {
                self.0.commit(writes)
            }
        }
        fn audit(&mut self) -> Result<AuditReport, StoreError> {
            self.0.audit()
        }
    }

    /// A store refusing every commit (a full disk) leaves the tick running
    /// and every change refused: the server says it is unhealthy until a
    /// commit works again.
    #[test]
    fn a_store_failing_its_commits_is_a_fault_until_one_works() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let name = format!("inventory-fault-{}", std::process::id());
        let failing = Arc::new(AtomicBool::new(true));
        let service = InventoryService::start(
            Box::new(SqliteStore::open_shared_memory(&name).unwrap()),
            Box::new(FailWhile(
                SqliteStore::open_shared_memory(&name).unwrap(),
                failing.clone(),
            )),
            Arc::new(Catalogue::embedded().unwrap()),
            CoreConfig {
                spawn_every_ticks: 1,
                ..CoreConfig::default()
            },
        )
        .unwrap();
        let (server, _net) = crate::net::NetServer::loopback();
        let mut app = App::new();
        app.add_plugins(crate::tick::TickPlugin {
            config: crate::tick::TickConfig::default(),
            clock: crate::tick::ManualClock::new(),
        })
        .insert_resource(server)
        .insert_resource(service)
        .add_message::<crate::console::AdminKick>()
        .add_plugins(crate::shutdown::ShutdownPlugin {
            grace_ticks: 1,
            grace_time: None,
        })
        .add_plugins((crate::net::NetPlugin, InventoryPlugin));
        app.finish();
        app.cleanup();
        let faults = app.world().resource::<Metrics>().faults().clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        let tick_until = |app: &mut App, done: &dyn Fn() -> bool| {
            while !done() {
                assert!(
                    Instant::now() < deadline,
                    "{:?}",
                    faults.describe(Instant::now())
                );
                app.update();
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        tick_until(&mut app, &|| faults.describe(Instant::now()).is_some());
        let fault = faults.describe(Instant::now()).unwrap();
        assert!(
            fault.starts_with("inventory store: the last commit failed"),
            "{fault}"
        );
        failing.store(false, Ordering::Relaxed);
        tick_until(&mut app, &|| faults.describe(Instant::now()).is_none());
    }

    /// The batch still being stored when the server exits is waited for:
    /// if it fails, the exit is an error, not a success with the last
    /// ticks' changes lost.
    #[test]
    fn a_last_batch_that_fails_to_store_makes_the_exit_an_error() {
        let name = format!("inventory-final-{}", std::process::id());
        let reader = SqliteStore::open_shared_memory(&name).unwrap();
        let writer = FailWhile(
            SqliteStore::open_shared_memory(&name).unwrap(),
            Arc::new(std::sync::atomic::AtomicBool::new(true)),
        );
        let mut service = InventoryService::start(
            Box::new(reader),
            Box::new(writer),
            Arc::new(Catalogue::embedded().unwrap()),
            CoreConfig::default(),
        )
        .unwrap();
        // The spawner's first item: a batch with writes, in flight.
        for _ in 0..CoreConfig::default().spawn_every_ticks {
            service.core.push(Input::Tick);
        }
        let batch = service.core.prepare(&mut service.reader).expect("a batch");
        assert!(!batch.writes.is_empty());
        service.writer.submit(0, batch.writes).unwrap();
        assert!(service.core.in_flight());

        let mut app = App::new();
        app.insert_resource(service)
            .add_systems(Last, finish_saving_on_exit);
        app.world_mut().write_message(AppExit::Success);
        app.update();
        assert_eq!(app.should_exit(), Some(AppExit::error()));
        assert!(!app.world().resource::<InventoryService>().core.in_flight());
    }
}
