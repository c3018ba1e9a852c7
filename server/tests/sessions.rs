//! Sessions through the real network, movement and inventory plugins on
//! the in-process loopback: an account that leaves and comes back within
//! one tick (the old session ends before the new one begins), and a
//! player's first tick; account loads off the tick; a writer or reader
//! thread that dies; an admin kick's reason; a player who comes back
//! where it left; the last tick's batch, handed over at the exit when
//! `net-io` had no room for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bevy_app::{App, AppExit};
use server::console::AdminKick;
use std::sync::Arc;

use glam::Vec2;
use server::chat::{ChatConfig, ChatPlugin};
use server::inventory::{Catalogue, CoreConfig, InventoryPlugin, InventoryService};
use server::movement::{MovementConfig, MovementPlugin, RejoinPositions};
use server::net::{Clients, Loopback, NetPlugin, NetServer};
use server::persistence::{
    AccountState, AuditReport, BatchWrites, InventoryStore, SqliteStore, StoreError, WorldState,
};
use server::players::{self, PlayerRoster};
use server::shutdown::{ShutdownPlugin, ShutdownSwitch};
use server::tick::{ManualClock, TickConfig, TickPlugin};
use server::world::Position;
use shared::io::{ClientId, NetCommand, NetEvent};
use shared::netcode::ClientIndex;
use shared::protocol::chat::{ChatKind, ChatLine, ChatScope, ChatSend};
use shared::protocol::inventory::{
    InventoryError, InventoryOp, InventoryReply, InventoryRequest, TradeOffer, TradeState,
    TradeUpdate, WorldItems,
};
use shared::protocol::movement::MoveInput;
use shared::protocol::{self, channels};
use shared::transport::{ChannelId, DisconnectReason};

#[path = "support/logs.rs"]
mod logs;

fn client(slot: u32, account: u64, session: u64) -> ClientId {
    ClientId {
        slot: ClientIndex::from_slot(slot),
        account,
        session,
    }
}

fn app() -> (App, Loopback) {
    app_with(None)
}

/// [`app`] with chat.
fn app_with_chat() -> (App, Loopback) {
    build(None, Some(ChatConfig::default()))
}

/// The app, on `inventory` when given (else the plugin's in-memory one).
fn app_with(inventory: Option<InventoryService>) -> (App, Loopback) {
    build(inventory, None)
}

fn build(inventory: Option<InventoryService>, chat: Option<ChatConfig>) -> (App, Loopback) {
    build_on(NetServer::loopback(), inventory, chat)
}

/// [`build`] on the given in-process network.
fn build_on(
    (server, net): (NetServer, Loopback),
    inventory: Option<InventoryService>,
    chat: Option<ChatConfig>,
) -> (App, Loopback) {
    let mut app = App::new();
    if let Some(service) = inventory {
        app.insert_resource(service);
    }
    app.add_plugins(TickPlugin {
        config: TickConfig::default(),
        clock: ManualClock::new(),
    })
    .insert_resource(server)
    .add_message::<AdminKick>()
    .add_plugins(ShutdownPlugin {
        grace_ticks: 2,
        grace_time: None,
    })
    .add_plugins((NetPlugin, MovementPlugin, InventoryPlugin));
    if let Some(config) = chat {
        app.add_plugins(ChatPlugin {
            config: Some(config),
        });
    }
    app.finish();
    app.cleanup();
    (app, net)
}

/// `client`'s inventory request, as `net-io` delivers it.
fn ask(net: &Loopback, client: ClientId, request: &InventoryRequest) {
    deliver(
        net,
        client,
        channels::INVENTORY,
        protocol::encode(request).unwrap(),
    );
}

/// `client`'s message on `channel`, as `net-io` delivers it.
fn deliver(net: &Loopback, client: ClientId, channel: ChannelId, payload: bytes::Bytes) {
    net.events
        .send(NetEvent::Message {
            client,
            channel,
            payload,
        })
        .unwrap();
}

/// Runs ticks until `found` picks something out of what the server sent
/// on the inventory channel (the inventory commits on a thread of its own).
fn tick_until<T>(
    app: &mut App,
    net: &Loopback,
    found: impl FnMut(ClientId, &[u8]) -> Option<T>,
) -> T {
    tick_until_on(app, net, channels::INVENTORY, found)
}

/// [`tick_until`] on `on`.
fn tick_until_on<T>(
    app: &mut App,
    net: &Loopback,
    on: ChannelId,
    mut found: impl FnMut(ClientId, &[u8]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        app.update();
        for command in net.commands.try_iter().flatten() {
            if let NetCommand::Send {
                client,
                channel,
                payload,
            } = command
                && channel == on
                && let Some(value) = found(client, &payload)
            {
                return value;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("nothing expected came within 10 s");
}

/// In what order `net-io` reports an account's old connection's end and
/// its new connection.
#[derive(Clone, Copy, PartialEq)]
enum Reported {
    /// The old one's end first, in one tick.
    OldFirst,
    /// The new one first, in one tick.
    NewFirst,
    /// The new one a tick before the old one's end.
    NewATickEarlier,
}

#[test]
fn an_account_back_within_a_tick_ends_its_old_session_first() {
    back_within_a_tick(Reported::OldFirst);
}

/// `net-io` may report the new connection first (the old one's end waits
/// for its last datagrams while the account's token is free again).
#[test]
fn the_same_when_the_new_connection_is_reported_first() {
    back_within_a_tick(Reported::NewFirst);
}

/// The same when the old connection's end comes ticks later (its last
/// datagrams wait behind a busy socket).
#[test]
fn the_same_when_the_old_connections_end_comes_a_tick_later() {
    back_within_a_tick(Reported::NewATickEarlier);
}

fn back_within_a_tick(order: Reported) {
    let (mut app, net) = app();
    let (first, partner) = (client(0, 7, 1), client(1, 8, 2));
    for c in [first, partner] {
        net.events.send(NetEvent::Connected { client: c }).unwrap();
    }
    let offer = InventoryRequest {
        request_id: 1,
        op: InventoryOp::Offer {
            with: partner.account,
            offer: TradeOffer::default(),
        },
    };
    ask(&net, first, &offer);
    let trade = tick_until(&mut app, &net, |to, payload| {
        let reply = protocol::decode::<InventoryReply>(payload).ok()?;
        assert_eq!(to, first);
        assert!(reply.result.is_ok(), "{reply:?}");
        reply.trade
    });

    // The account's connection ends and a new one begins.
    let back = client(2, first.account, 3);
    let ended = NetEvent::Disconnected {
        client: first,
        reason: DisconnectReason::Timeout,
    };
    let began = NetEvent::Connected { client: back };
    let ticks: Vec<Vec<NetEvent>> = match order {
        Reported::OldFirst => vec![vec![ended, began]],
        Reported::NewFirst => vec![vec![began, ended]],
        Reported::NewATickEarlier => vec![vec![began], vec![ended]],
    };
    for (at, events) in ticks.into_iter().enumerate() {
        if at > 0 {
            app.update();
        }
        for event in events {
            net.events.send(event).unwrap();
        }
    }
    let state = tick_until(&mut app, &net, |to, payload| {
        let update = protocol::decode::<TradeUpdate>(payload).ok()?;
        (to == partner && update.trade == trade).then_some(update.state)
    });
    assert_eq!(state, TradeState::Cancelled);
    let roster = app.world().resource::<PlayerRoster>();
    assert!(
        roster.get(players::ClientId(first.account)).is_some(),
        "the account is listed again"
    );
}

/// An old session ended early by its account's new connection says so,
/// and the reason it really ended (reported after the new connection)
/// is logged at info when it comes: operators see a player's crash and
/// reconnect as a timeout, not as a connection closed.
#[test]
fn the_real_reason_of_a_session_its_account_replaced_is_logged() {
    let (mut app, net) = app();
    let old = client(0, 7, 1);
    net.events
        .send(NetEvent::Connected { client: old })
        .unwrap();
    app.update();
    let log = logs::logged(|| {
        net.events
            .send(NetEvent::Connected {
                client: client(2, 7, 3),
            })
            .unwrap();
        net.events
            .send(NetEvent::Disconnected {
                client: old,
                reason: DisconnectReason::Timeout,
            })
            .unwrap();
        app.update();
    });
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" INFO ")).collect();
    assert!(lines.iter().any(|l| l.contains("connected again")), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&DisconnectReason::Timeout.to_string())),
        "the real reason at info: {log}"
    );
}

/// A `ListWorld` is answered with the list, then the reply, as the
/// protocol says: a client that acts on the reply has the list.
#[test]
fn a_world_list_comes_before_its_reply() {
    let (mut app, net) = app();
    let lister = client(0, 9, 1);
    net.events
        .send(NetEvent::Connected { client: lister })
        .unwrap();
    let list = InventoryRequest {
        request_id: 1,
        op: InventoryOp::ListWorld,
    };
    ask(&net, lister, &list);
    let first = tick_until(&mut app, &net, |to, payload| {
        if to != lister {
            return None;
        }
        if protocol::decode::<WorldItems>(payload).is_ok() {
            return Some("the list");
        }
        protocol::decode::<InventoryReply>(payload)
            .ok()
            .map(|_| "the reply")
    });
    assert_eq!(first, "the list");
}

/// A request in a player's very first tick is judged where the player
/// stands: its position is in place before the inventory runs (a pickup
/// checked with no position would reach an item anywhere in the world).
#[test]
fn a_pickup_in_the_first_tick_is_checked_against_the_spawn_point() {
    let (mut app, net) = app();

    // A first player lists the world's items once some have spawned.
    let lister = client(0, 8, 1);
    net.events
        .send(NetEvent::Connected { client: lister })
        .unwrap();
    let mut request_id = 0;
    let items = loop {
        request_id += 1;
        let list = InventoryRequest {
            request_id,
            op: InventoryOp::ListWorld,
        };
        ask(&net, lister, &list);
        let listed = tick_until(&mut app, &net, |_, payload| {
            protocol::decode::<WorldItems>(payload).ok()
        });
        if !listed.items.is_empty() {
            break listed.items;
        }
        assert!(request_id < 100, "no item ever spawned");
    };
    // The next player spawns at the second spawn point.
    let spawn = app
        .world()
        .resource::<MovementConfig>()
        .spawn_points()
        .nth(1)
        .unwrap();
    let far = items
        .iter()
        .find(|item| item.position.distance(spawn) > 20.0)
        .expect("an item away from the spawn point");

    let newcomer = client(1, 7, 2);
    let pickup = InventoryRequest {
        request_id: 1,
        op: InventoryOp::PickUp { world_item: far.id },
    };
    net.events
        .send(NetEvent::Connected { client: newcomer })
        .unwrap();
    ask(&net, newcomer, &pickup);
    let reply = tick_until(&mut app, &net, |to, payload| {
        (to == newcomer)
            .then(|| protocol::decode::<InventoryReply>(payload).ok())
            .flatten()
    });
    assert_eq!(reply.result, Err(InventoryError::TooFar));
}

/// A store whose commits panic, as a broken store plugged into a fork
/// might: the writer thread dies with a batch in flight.
struct PanickingStore(SqliteStore);

impl InventoryStore for PanickingStore {
    fn load_world(&mut self) -> Result<WorldState, StoreError> {
        self.0.load_world()
    }
    fn load_account(&mut self, account: u64) -> Result<AccountState, StoreError> {
        self.0.load_account(account)
    }
    fn commit(&mut self, _: &BatchWrites) -> Result<(), StoreError> {
        panic!("the store broke");
    }
    fn audit(&mut self) -> Result<AuditReport, StoreError> {
        self.0.audit()
    }
}

/// An inventory service whose writer dies on the spawner's first batch.
fn service_whose_writer_dies(name: &str) -> InventoryService {
    let name = format!("{name}-{}", std::process::id());
    InventoryService::start(
        Box::new(SqliteStore::open_shared_memory(&name).unwrap()),
        Box::new(PanickingStore(
            SqliteStore::open_shared_memory(&name).unwrap(),
        )),
        Arc::new(Catalogue::embedded().unwrap()),
        CoreConfig {
            spawn_every_ticks: 1,
            ..CoreConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn a_writer_that_dies_leaves_requests_answered_not_waiting() {
    let service = service_whose_writer_dies("writer-dies");
    let (mut app, net) = app_with(Some(service));
    let player = client(0, 7, 1);
    net.events
        .send(NetEvent::Connected { client: player })
        .unwrap();
    // The spawner's first batch goes to the writer, which dies on it.
    for _ in 0..5 {
        app.update();
        std::thread::sleep(Duration::from_millis(20));
    }
    let list = InventoryRequest {
        request_id: 1,
        op: InventoryOp::List,
    };
    ask(&net, player, &list);
    let reply = tick_until(&mut app, &net, |to, payload| {
        assert_eq!(to, player);
        protocol::decode::<InventoryReply>(payload).ok()
    });
    assert_eq!(reply.request_id, 1);
    assert!(
        !app.world()
            .resource::<InventoryService>()
            .core()
            .in_flight(),
        "nothing stays in flight"
    );
}

/// A batch `net-io` refuses on the last tick of a shutdown (it is ticks
/// behind) is not dropped at the exit: no next tick carries it, so it is
/// handed over then, waiting for room, and its goodbye reaches the clients.
#[test]
fn the_last_ticks_batch_is_handed_over_at_exit_when_net_io_is_behind() {
    let (mut app, net) = build_on(NetServer::loopback_behind_by(1), None, None);
    // A player's welcome takes the one batch net-io is ahead by.
    net.events
        .send(NetEvent::Connected {
            client: client(0, 7, 1),
        })
        .unwrap();
    app.update();
    // The shutdown's ticks: their batches find net-io behind.
    app.world().resource::<ShutdownSwitch>().request();
    let taken = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let mut taken = Vec::new();
        while let Ok(batch) = net.commands.recv_timeout(Duration::from_secs(5)) {
            taken.extend(batch);
        }
        taken
    });
    assert_eq!(run_to_exit(&mut app), AppExit::Success);
    drop(app);
    let taken = taken.join().unwrap();
    assert!(
        taken
            .iter()
            .any(|c| matches!(c, NetCommand::Shutdown { .. })),
        "the shutdown never reached net-io: {taken:?}"
    );
}

/// A writer thread that dies leaves every change refused `Storage` for
/// good: the server shuts down with an error instead, so that a
/// supervisor restarts it.
/// Runs ticks until the app exits (at most 10 s) and returns how.
fn run_to_exit(app: &mut App) -> AppExit {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = app.should_exit() {
            return exit;
        }
        assert!(Instant::now() < deadline, "still running 10 s on");
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_writer_that_dies_shuts_the_server_down_with_an_error() {
    let service = service_whose_writer_dies("writer-dies-exit");
    let (mut app, _net) = app_with(Some(service));
    // The spawner's first batch goes to the writer, which dies on it;
    // the server notices whenever that happens.
    assert_eq!(run_to_exit(&mut app), AppExit::error());
}

/// A store that reports every account load (the account and the thread
/// that runs it) and holds the loads of one account until the test opens
/// its gate (or 10 s pass: then that load fails).
struct GatedReads {
    inner: SqliteStore,
    gated: u64,
    gate: crossbeam_channel::Receiver<()>,
    loads: crossbeam_channel::Sender<(u64, Option<String>)>,
    waiting: Arc<AtomicBool>,
}

impl InventoryStore for GatedReads {
    fn load_world(&mut self) -> Result<WorldState, StoreError> {
        self.inner.load_world()
    }
    fn load_account(&mut self, account: u64) -> Result<AccountState, StoreError> {
        let thread = std::thread::current().name().map(str::to_owned);
        // Waiting is set before the load is reported: the test reads it
        // as soon as the report comes.
        let gated = account == self.gated;
        if gated {
            self.waiting.store(true, Ordering::SeqCst);
        }
        let _ = self.loads.send((account, thread));
        if gated {
            let opened = self.gate.recv_timeout(Duration::from_secs(10));
            self.waiting.store(false, Ordering::SeqCst);
            opened.map_err(|_| StoreError::Injected)?;
        }
        self.inner.load_account(account)
    }
    fn commit(&mut self, _: &BatchWrites) -> Result<(), StoreError> {
        Err(StoreError::Injected)
    }
    fn audit(&mut self) -> Result<AuditReport, StoreError> {
        self.inner.audit()
    }
}

/// A cold disk makes one player's account slow to read: the tick does
/// not wait for it. Other players' requests are answered meanwhile, the
/// slow player's wait, and once its account is read they are answered.
#[test]
fn an_account_slow_to_read_holds_up_nobody_else() {
    let name = format!("gated-reads-{}", std::process::id());
    let (open, gate) = crossbeam_channel::bounded(1);
    let (loads_tx, loads) = crossbeam_channel::unbounded();
    let waiting = Arc::new(AtomicBool::new(false));
    let service = InventoryService::start(
        Box::new(GatedReads {
            inner: SqliteStore::open_shared_memory(&name).unwrap(),
            gated: 7,
            gate,
            loads: loads_tx,
            waiting: Arc::clone(&waiting),
        }),
        Box::new(SqliteStore::open_shared_memory(&name).unwrap()),
        Arc::new(Catalogue::embedded().unwrap()),
        CoreConfig::default(),
    )
    .unwrap();
    let (mut app, net) = app_with(Some(service));
    let (slow, other) = (client(0, 7, 1), client(1, 8, 2));
    let list = |request_id| InventoryRequest {
        request_id,
        op: InventoryOp::List,
    };
    let reply_to = |to: ClientId, request_id: u64| {
        move |at: ClientId, payload: &[u8]| {
            let reply = protocol::decode::<InventoryReply>(payload).ok()?;
            assert!(at == to, "{at:?} answered {reply:?}");
            (reply.request_id == request_id).then_some(reply)
        }
    };
    net.events
        .send(NetEvent::Connected { client: other })
        .unwrap();
    ask(&net, other, &list(1));
    tick_until(&mut app, &net, reply_to(other, 1));

    net.events
        .send(NetEvent::Connected { client: slow })
        .unwrap();
    ask(&net, slow, &list(1));
    // Every account is read on the reader thread; a read on the tick
    // would hold this update until the gate gives up.
    let read_on_the_reader = |loads: &crossbeam_channel::Receiver<(u64, Option<String>)>| {
        loads.try_iter().any(|(account, thread)| {
            assert_eq!(thread.as_deref(), Some("db-reader"), "account {account}");
            account == slow.account
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_on_the_reader(&loads) {
        assert!(Instant::now() < deadline, "the slow account is never read");
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }

    ask(&net, other, &list(2));
    let answered = tick_until(&mut app, &net, reply_to(other, 2));
    assert!(answered.result.is_ok(), "{answered:?}");
    assert!(
        waiting.load(Ordering::SeqCst),
        "the slow account is still being read"
    );

    open.send(()).unwrap();
    let reply = tick_until(&mut app, &net, reply_to(slow, 1));
    assert!(reply.result.is_ok(), "{reply:?}");
    read_on_the_reader(&loads);
}

/// A store whose account reads panic: the reader thread dies at the
/// first player's connect.
struct PanickingReads(SqliteStore);

impl InventoryStore for PanickingReads {
    fn load_world(&mut self) -> Result<WorldState, StoreError> {
        self.0.load_world()
    }
    fn load_account(&mut self, _: u64) -> Result<AccountState, StoreError> {
        panic!("the store broke");
    }
    fn commit(&mut self, batch: &BatchWrites) -> Result<(), StoreError> {
        self.0.commit(batch)
    }
    fn audit(&mut self) -> Result<AuditReport, StoreError> {
        self.0.audit()
    }
}

/// A reader thread that dies leaves every player who connects without an
/// inventory: the server shuts down with an error, as when the writer
/// dies.
#[test]
fn a_reader_that_dies_shuts_the_server_down_with_an_error() {
    let name = format!("reader-dies-exit-{}", std::process::id());
    let service = InventoryService::start(
        Box::new(PanickingReads(
            SqliteStore::open_shared_memory(&name).unwrap(),
        )),
        Box::new(SqliteStore::open_shared_memory(&name).unwrap()),
        Arc::new(Catalogue::embedded().unwrap()),
        CoreConfig::default(),
    )
    .unwrap();
    let (mut app, net) = app_with(Some(service));
    let player = client(0, 7, 1);
    net.events
        .send(NetEvent::Connected { client: player })
        .unwrap();
    assert_eq!(run_to_exit(&mut app), AppExit::error());
    assert!(
        app.world()
            .resource::<InventoryService>()
            .core()
            .inventory(player.account)
            .is_none()
    );
}

#[test]
fn strikes_past_the_limit_disconnect_again() {
    let (mut app, net) = app();
    let player = client(0, 9, 1);
    net.events
        .send(NetEvent::Connected { client: player })
        .unwrap();
    let disconnects = |app: &mut App, net: &Loopback, bad: usize| {
        for _ in 0..bad {
            deliver(net, player, channels::CHAT, vec![0xFF, 0xFF].into());
        }
        app.update();
        net.commands
            .try_iter()
            .flatten()
            .filter(|c| matches!(c, NetCommand::Disconnect { client, .. } if *client == player))
            .count()
    };
    assert_eq!(disconnects(&mut app, &net, 9), 0);
    // The tenth strike's disconnect is lost on its way (drained here).
    assert_eq!(disconnects(&mut app, &net, 1), 1);
    assert_eq!(disconnects(&mut app, &net, 1), 1, "the eleventh asks again");
    assert_eq!(
        disconnects(&mut app, &net, 20),
        1,
        "once a batch, however many strikes it holds"
    );
}

/// The console's `kick 9 afk` shows the player its reason: a system chat
/// line, sent before its disconnect in the same batch.
#[test]
fn a_kicked_player_reads_the_reason_before_its_disconnect() {
    let (mut app, net) = app_with_chat();
    let player = client(0, 9, 1);
    net.events
        .send(NetEvent::Connected { client: player })
        .unwrap();
    app.update();
    net.commands.try_iter().for_each(drop);
    app.world_mut().write_message(AdminKick {
        client: players::ClientId(9),
        reason: "afk".into(),
    });
    app.update();
    let commands: Vec<NetCommand> = net.commands.try_iter().flatten().collect();
    let reason = commands.iter().position(|c| {
        matches!(c, NetCommand::Send { client, channel, payload }
            if *client == player && *channel == channels::CHAT
            && protocol::decode::<ChatLine>(payload)
                .is_ok_and(|line| line.kind == ChatKind::System && line.text == "kicked: afk"))
    });
    let disconnect = commands.iter().position(|c| {
        matches!(c, NetCommand::Disconnect { client, reason: DisconnectReason::Kicked }
            if *client == player)
    });
    assert!(
        matches!((reason, disconnect), (Some(r), Some(d)) if r < d),
        "{commands:?}"
    );
}

/// Clients predict their own movement with the server's rules: an operator
/// who changes `[movement]` must not leave every client predicting with
/// the defaults (corrected on every snapshot).
#[test]
fn the_welcome_carries_the_servers_movement_rules() {
    use shared::protocol::NetMessage;
    use shared::protocol::messages::Welcome;
    let (mut app, net) = app();
    let config = MovementConfig {
        max_speed: 6.0,
        world_min: glam::Vec2::splat(-250.0),
        world_max: glam::Vec2::new(500.0, 250.0),
        ..MovementConfig::default()
    };
    app.insert_resource(config.clone());
    let player = client(0, 7, 1);
    net.events
        .send(NetEvent::Connected { client: player })
        .unwrap();
    let welcome = tick_until_on(&mut app, &net, channels::CONTROL, |to, payload| {
        (to == player && protocol::message_id(payload) == Some(Welcome::ID))
            .then(|| protocol::decode::<Welcome>(payload).unwrap())
    });
    assert_eq!(welcome.client_id, 7);
    assert_eq!(welcome.rules, config.rules());
    assert!(welcome.rules.is_valid());
}

/// The chat lines the server sent `to` since the last look, as (number,
/// text).
fn lines_heard(net: &Loopback, to: ClientId) -> Vec<(u64, String)> {
    let commands: Vec<NetCommand> = net.commands.try_iter().flatten().collect();
    chat_lines_to(&commands, to)
        .into_iter()
        .map(|line| (line.seq, line.text))
        .collect()
}

/// The chat lines `commands` send to `to`.
fn chat_lines_to(commands: &[NetCommand], to: ClientId) -> Vec<ChatLine> {
    commands
        .iter()
        .filter_map(|c| match c {
            NetCommand::Send {
                client,
                channel,
                payload,
            } if *client == to && *channel == channels::CHAT => {
                protocol::decode::<ChatLine>(payload).ok()
            }
            _ => None,
        })
        .collect()
}

/// A player's last line, sent right before it left (its message comes
/// before its end, in the same tick), is still said: to everyone, and
/// nearby where the player stood (its entity is gone by then).
#[test]
fn a_players_last_line_before_it_left_is_said() {
    for scope in [ChatScope::Global, ChatScope::Nearby] {
        last_line_before_leaving_is_said(scope);
    }
}

fn last_line_before_leaving_is_said(scope: ChatScope) {
    let (mut app, net) = app_with_chat();
    let (leaver, stayer) = (client(0, 1, 1), client(1, 2, 2));
    for c in [leaver, stayer] {
        net.events.send(NetEvent::Connected { client: c }).unwrap();
    }
    app.update();
    app.update();
    net.commands.try_iter().for_each(drop);
    let bye = ChatSend {
        client_ref: 1,
        scope: scope.clone(),
        text: "gg, bye".into(),
    };
    deliver(
        &net,
        leaver,
        channels::CHAT,
        protocol::encode(&bye).unwrap(),
    );
    net.events
        .send(NetEvent::Disconnected {
            client: leaver,
            reason: DisconnectReason::Closed,
        })
        .unwrap();
    app.update();
    let commands: Vec<NetCommand> = net.commands.try_iter().flatten().collect();
    let heard: Vec<String> = chat_lines_to(&commands, stayer)
        .into_iter()
        .map(|line| line.text)
        .collect();
    assert_eq!(heard, ["gg, bye"], "{scope:?}");
}

/// A player back within a tick gets, on its new connection, only that
/// connection's lines, numbered from 1: none of what was numbered for its
/// old one in the same tick (another player's leave, announced to it
/// before its own).
#[test]
fn a_player_back_within_a_tick_gets_only_its_new_sessions_lines() {
    let (mut app, net) = build(
        None,
        Some(ChatConfig {
            announce_sessions: true,
            ..ChatConfig::default()
        }),
    );
    let (other, old, new) = (client(0, 3, 1), client(1, 4, 2), client(2, 4, 3));
    for c in [other, old] {
        net.events.send(NetEvent::Connected { client: c }).unwrap();
    }
    app.update();
    net.commands.try_iter().for_each(drop);
    for event in [
        NetEvent::Disconnected {
            client: other,
            reason: DisconnectReason::Closed,
        },
        NetEvent::Disconnected {
            client: old,
            reason: DisconnectReason::Closed,
        },
        NetEvent::Connected { client: new },
    ] {
        net.events.send(event).unwrap();
    }
    app.update();
    let got = lines_heard(&net, new);
    assert_eq!(got, [(1, "player-4 joined".to_owned())]);
}

/// `client`'s chat line to everyone, as `net-io` delivers it.
fn say(net: &Loopback, client: ClientId, text: &str) {
    let line = ChatSend {
        client_ref: 1,
        scope: ChatScope::Global,
        text: text.into(),
    };
    deliver(
        net,
        client,
        channels::CHAT,
        protocol::encode(&line).unwrap(),
    );
}

/// A player whose new connection is reported a tick before its old one's
/// end gets that connection's lines numbered from 1, and the old one's
/// end, when it comes, does not end the new one.
#[test]
fn a_connection_reported_before_the_old_ones_end_numbers_its_lines_from_1() {
    let (mut app, net) = app_with_chat();
    let (other, old, new) = (client(0, 3, 1), client(1, 4, 2), client(2, 4, 3));
    for c in [other, old] {
        join(&mut app, &net, c);
    }
    say(&net, other, "one");
    app.update();
    assert_eq!(lines_heard(&net, old), [(1, "one".to_owned())]);

    join(&mut app, &net, new);
    leave(&mut app, &net, old);
    say(&net, other, "two");
    app.update();
    let got = lines_heard(&net, new);
    assert_eq!(got, [(1, "two".to_owned())]);
    assert_eq!(app.world().resource::<Clients>().by_account(4), Some(new));
    let roster = app.world().resource::<PlayerRoster>();
    assert!(roster.get(players::ClientId(4)).is_some(), "still listed");
}

/// Where `client`'s player stands.
fn position_of(app: &App, client: ClientId) -> Vec2 {
    let entity = app
        .world()
        .resource::<Clients>()
        .entity(client)
        .expect("connected");
    app.world().get::<Position>(entity).expect("spawned").0
}

/// `client`'s movement input, as `net-io` delivers it.
fn walk(net: &Loopback, client: ClientId, seq: u32, velocity: Vec2) {
    let input = MoveInput {
        seq,
        velocity,
        ack_snapshot: 0,
    };
    deliver(
        net,
        client,
        channels::MOVEMENT,
        protocol::encode(&input).unwrap(),
    );
}

/// `joined`'s connection and `left`'s end (`Closed`), as `net-io` reports
/// an account back within a tick.
fn reconnect(net: &Loopback, joined: ClientId, left: ClientId) {
    for event in [
        NetEvent::Connected { client: joined },
        NetEvent::Disconnected {
            client: left,
            reason: DisconnectReason::Closed,
        },
    ] {
        net.events.send(event).unwrap();
    }
}

/// Connects `client` and runs the tick it spawns in.
fn join(app: &mut App, net: &Loopback, client: ClientId) {
    net.events.send(NetEvent::Connected { client }).unwrap();
    app.update();
}

/// Disconnects `client` and runs the tick it leaves in.
fn leave(app: &mut App, net: &Loopback, client: ClientId) {
    net.events
        .send(NetEvent::Disconnected {
            client,
            reason: DisconnectReason::Timeout,
        })
        .unwrap();
    app.update();
}

/// A player who leaves and comes back is where it left, not at the next
/// spawn point: a reconnect is no free teleport (past the movement
/// credit, to items out of reach), and a network blip does not lose an
/// honest player its place, also when it is back within a tick. Newcomers
/// still get the spawn spiral, on from where it was.
#[test]
fn a_player_who_comes_back_is_where_it_left() {
    let (mut app, net) = app();
    let spawns: Vec<Vec2> = app
        .world()
        .resource::<MovementConfig>()
        .spawn_points()
        .take(2)
        .collect();
    let walker = client(0, 7, 1);
    join(&mut app, &net, walker);
    assert_eq!(position_of(&app, walker), spawns[0]);
    for seq in 1..=30 {
        walk(&net, walker, seq, Vec2::new(8.0, 0.0));
        app.update();
    }
    let left_at = position_of(&app, walker);
    assert!(left_at.x > spawns[0].x + 7.0, "walked east to {left_at}");
    leave(&mut app, &net, walker);

    let back = client(0, 7, 2);
    join(&mut app, &net, back);
    let came_back_to = position_of(&app, back);
    assert!(
        came_back_to.distance(left_at) < 1e-3,
        "left at {left_at}, came back to {came_back_to}"
    );
    let newcomer = client(1, 8, 3);
    join(&mut app, &net, newcomer);
    assert_eq!(position_of(&app, newcomer), spawns[1]);

    // `joined`'s connection and `left`'s end, in one tick.
    let in_one_tick = |app: &mut App, joined: ClientId, left: ClientId| {
        reconnect(&net, joined, left);
        app.update();
    };
    // Back within one tick, the new connection reported first.
    let again = client(2, 7, 4);
    in_one_tick(&mut app, again, back);
    assert_eq!(position_of(&app, again), came_back_to);

    // A connection that comes and goes within one tick (its client gave up
    // at once) leaves the place kept for the next one.
    leave(&mut app, &net, again);
    let blink = client(3, 7, 5);
    in_one_tick(&mut app, blink, blink);
    let last = client(4, 7, 6);
    join(&mut app, &net, last);
    assert_eq!(position_of(&app, last), came_back_to);

    // Back a tick before the old connection's end is reported: the end,
    // when it comes, leaves the new session where it is.
    let early = client(5, 7, 7);
    join(&mut app, &net, early);
    assert_eq!(position_of(&app, early), came_back_to);
    leave(&mut app, &net, last);
    assert_eq!(position_of(&app, early), came_back_to);
}

/// A player back where it left brings no fresh movement credit: a client
/// that reconnects every other tick and sends a burst of inputs with each
/// new session moves no faster than one that stays (it moved twice the
/// maximum speed when every session began with a full bank).
#[test]
fn reconnecting_every_other_tick_does_not_move_a_player_faster() {
    let (mut app, net) = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let period = app
        .world()
        .resource::<bevy_time::Time<bevy_time::Fixed>>()
        .timestep();
    let step = config.max_speed * period.as_secs_f32();
    let east = Vec2::new(config.max_speed, 0.0);
    let mut session = client(0, 7, 1);
    join(&mut app, &net, session);
    for seq in 1..=30 {
        walk(&net, session, seq, east);
        app.update();
    }
    let start = position_of(&app, session);
    let ticks: u32 = 60;
    let mut seq = 0;
    for tick in 0..ticks {
        if tick % 2 == 0 {
            // A new session of the same account, the old one's end in the
            // same tick, and three inputs at once: a full bank's worth.
            let next = client(1 + tick, 7, 2 + u64::from(tick));
            reconnect(&net, next, session);
            session = next;
            seq = 0;
            for _ in 0..config.burst_ticks {
                seq += 1;
                walk(&net, session, seq, east);
            }
        } else {
            seq += 1;
            walk(&net, session, seq, east);
        }
        app.update();
    }
    let moved = position_of(&app, session).x - start.x;
    // At most one input a tick and a bank's worth more (the bound of
    // "Movement credit" in the movement module's docs).
    let most = (ticks + config.burst_ticks) as f32 * step;
    assert!(
        moved <= most * 1.001,
        "moved {moved} m in {ticks} ticks, at most {most} m allowed"
    );
    // And the player did move: reconnects do not freeze it either.
    assert!(moved >= (ticks / 2) as f32 * step, "moved only {moved} m");
}

/// A player back after a while has the bank the time away earned: a burst
/// of inputs right after its return moves it at once, as it would have
/// had it stayed.
#[test]
fn a_player_back_after_a_while_has_its_bank() {
    let (mut app, net) = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let east = Vec2::new(config.max_speed, 0.0);
    let first = client(0, 7, 1);
    join(&mut app, &net, first);
    walk(&net, first, 1, east);
    app.update();
    leave(&mut app, &net, first);
    for _ in 0..config.burst_ticks {
        app.update();
    }
    let back = client(1, 7, 2);
    join(&mut app, &net, back);
    let before = position_of(&app, back);
    for seq in 1..=config.burst_ticks {
        walk(&net, back, seq, east);
    }
    app.update();
    let mover = |app: &App| {
        let entity = app.world().resource::<Clients>().entity(back).unwrap();
        app.world()
            .get::<server::movement::Mover>(entity)
            .unwrap()
            .clone()
    };
    // A full bank: every input moved the player at once, none waits.
    let moved = position_of(&app, back) - before;
    assert_eq!(mover(&app).waiting(), 0, "moved {moved}");
    assert_eq!(mover(&app).last_seq, config.burst_ticks);
}

/// The places kept for returning players are bounded in number (the
/// longest gone are forgotten first) and in time, so that reconnects of
/// many accounts cannot grow the server's memory.
#[test]
fn the_places_kept_for_returning_players_are_bounded() {
    let (mut app, net) = app();
    let config = MovementConfig {
        rejoin_memory_players: 4,
        rejoin_memory_secs: 2,
        ..MovementConfig::default()
    };
    app.insert_resource(config.clone());
    let spawns: Vec<Vec2> = config.spawn_points().take(12).collect();
    let kept = |app: &App| app.world().resource::<RejoinPositions>().len();
    // Ten accounts join (spawn points 0 to 9) and leave, in turn.
    let first: Vec<ClientId> = (1..=10).map(|a| client(a as u32, a, a)).collect();
    for &c in &first {
        net.events.send(NetEvent::Connected { client: c }).unwrap();
    }
    app.update();
    for &c in &first {
        net.events
            .send(NetEvent::Disconnected {
                client: c,
                reason: DisconnectReason::Timeout,
            })
            .unwrap();
    }
    app.update();
    assert_eq!(kept(&app), 4);

    // The first to leave was forgotten: it spawns anew. The last comes back.
    let (forgotten, remembered) = (client(1, 1, 11), client(10, 10, 12));
    join(&mut app, &net, forgotten);
    join(&mut app, &net, remembered);
    assert_eq!(position_of(&app, forgotten), spawns[10]);
    assert_eq!(position_of(&app, remembered), spawns[9]);
    assert_eq!(kept(&app), 3);

    // Two seconds on, the others are forgotten too.
    for _ in 0..2 * 30 {
        app.update();
    }
    assert_eq!(kept(&app), 0);
    let late = client(9, 9, 13);
    join(&mut app, &net, late);
    assert_eq!(position_of(&app, late), spawns[11]);
}

/// The place kept for a returning player lasts `rejoin_memory_secs` of
/// wall time, not of ticks run: a tick that stalls the loop for 10 s
/// (the pacer gives up the deadlines it missed) forgets a place kept for
/// 2 s, and the player comes back on the spawn spiral. (Counted in ticks
/// run, the 10 s were one tick, and the place was kept.)
#[test]
fn a_place_is_kept_for_wall_time_not_for_ticks_run() {
    use bevy_app::Update;
    use bevy_ecs::prelude::{MessageWriter, Res, Resource};
    use crossbeam_channel::Sender;
    use server::tick::TickStats;

    /// Who joins, leaves and joins again, and when (by tick).
    #[derive(Resource)]
    struct Script {
        events: Sender<NetEvent>,
        clock: ManualClock,
        /// Where the player came back, and the deadlines the pacer gave up.
        seen: std::sync::mpsc::Sender<(Option<Vec2>, u64)>,
    }
    let first = client(1, 7, 1);
    let again = client(2, 7, 2);
    let script = move |script: Res<Script>,
                       stats: Res<TickStats>,
                       clients: Res<Clients>,
                       positions: bevy_ecs::prelude::Query<&Position>,
                       mut exit: MessageWriter<AppExit>| {
        let event = match stats.tick() {
            1 => Some(NetEvent::Connected { client: first }),
            3 => Some(NetEvent::Disconnected {
                client: first,
                reason: DisconnectReason::Timeout,
            }),
            6 => Some(NetEvent::Connected { client: again }),
            _ => None,
        };
        if let Some(event) = event {
            script.events.send(event).unwrap();
        }
        if stats.tick() == 4 {
            script.clock.advance(Duration::from_secs(10));
        }
        if stats.tick() == 9 {
            let at = clients
                .entity(again)
                .and_then(|entity| positions.get(entity).ok())
                .map(|p| p.0);
            script.seen.send((at, stats.skipped_ticks())).unwrap();
            exit.write(AppExit::Success);
        }
    };

    let (server, net) = NetServer::loopback();
    let clock = ManualClock::new();
    let config = MovementConfig {
        rejoin_memory_secs: 2,
        ..MovementConfig::default()
    };
    let spawns: Vec<Vec2> = config.spawn_points().take(2).collect();
    let (seen, results) = std::sync::mpsc::channel();
    let mut app = App::new();
    app.add_plugins(TickPlugin {
        config: TickConfig::default(),
        clock: clock.clone(),
    })
    .insert_resource(server)
    .insert_resource(config)
    .add_message::<AdminKick>()
    .add_plugins(ShutdownPlugin {
        grace_ticks: 2,
        grace_time: None,
    })
    .add_plugins((NetPlugin, MovementPlugin, InventoryPlugin))
    .insert_resource(Script {
        events: net.events.clone(),
        clock,
        seen,
    })
    .add_systems(Update, script);
    assert_eq!(app.run(), AppExit::Success);
    let (at, skipped) = results.recv().unwrap();
    assert!(skipped > 0, "the stall gave up no deadline");
    assert_eq!(
        at,
        Some(spawns[1]),
        "came back to its old place ({}) 10 s after leaving, kept for 2 s",
        spawns[0]
    );
}
