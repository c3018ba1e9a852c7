//! Game-logic abuse from connected clients, against the real server binary:
//! speed hacks, teleport attempts and NaN/infinite velocities are clamped
//! or dropped and counted in `movement_violations_total{kind}`; an
//! inventory-request flood is answered (every request exactly once) with
//! `Busy` beyond the queue bound, never queued without limit; a chat flood
//! is rate-limited, then muted, then kicked, and counted in
//! `chat_rejected_total` and `chat_kicks_total`; trade races between three
//! players (one item offered to two partners at once, accept against
//! cancel, a gift of an offered item, a partner leaving mid-trade) neither
//! duplicate nor lose an item. An honest player stays connected throughout.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{
    PlayingAside, RawClient, ServerOptions, ServerProcess, connect_honest,
    connect_honest_without_chat, ended, mib, play_all, play_for, raw_send,
};
use glam::Vec2;
use shared::movement::{ApplyScratch, SnapshotReceiver};
use shared::protocol::chat::{ChatLine, ChatRejectReason, ChatRejected, ChatScope, ChatSend};
use shared::protocol::inventory::{
    InventoryError, InventoryOp, InventoryReply, InventoryRequest, InventorySnapshot, ItemId,
    TradeOffer, TradeState, TradeUpdate, WorldItems,
};
use shared::protocol::messages::Welcome;
use shared::protocol::movement::{MoveInput, Snapshot};
use shared::protocol::{self, NetMessage, channels};
use shared::transport::DisconnectReason;
use shared::transport::wire::MessageHeader;

/// `MovementConfig::default()`: 8 m/s at 30 Hz.
const MAX_SPEED: f32 = 8.0;
const TICK_HZ: f32 = 30.0;

/// A connected abuser: a [`RawClient`] with a real transport connection,
/// tracking its own position from the snapshots it receives.
struct Abuser {
    raw: RawClient,
    snapshots: SnapshotReceiver,
    apply_scratch: ApplyScratch,
    read: usize,
    seq: u32,
    welcomed: bool,
}

impl Abuser {
    fn connect(server: &ServerProcess, id: u64) -> Self {
        let mut raw = RawClient::connect(server.game, id, 10, Duration::from_secs(5));
        raw.attach_connection(Instant::now());
        let mut abuser = Self {
            raw,
            snapshots: SnapshotReceiver::new(),
            apply_scratch: ApplyScratch::default(),
            read: 0,
            seq: 0,
            welcomed: false,
        };
        // Stand still, one input per tick, until the own entity is in view.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(abuser.welcomed && abuser.snapshots.own_position().is_some()) {
            assert!(
                Instant::now() < deadline,
                "abuser {id} not in view: welcomed {}, {} messages, reason {:?}",
                abuser.welcomed,
                abuser.raw.messages.len(),
                abuser.raw.server_reason
            );
            if abuser.welcomed {
                abuser.input(Vec2::ZERO);
            }
            abuser.pump();
            std::thread::sleep(Duration::from_millis(33));
        }
        abuser
    }

    /// Reads, acknowledges and applies snapshots.
    fn pump(&mut self) {
        self.raw.pump(Instant::now());
        for (channel, payload) in &self.raw.messages[self.read..] {
            match protocol::message_id(payload) {
                Some(Welcome::ID) => self.welcomed = true,
                Some(Snapshot::ID) if *channel == channels::SNAPSHOT.0 => {
                    if let Ok(snapshot) = protocol::decode::<Snapshot>(payload) {
                        // Late or undecodable snapshots are skipped, as a client would.
                        let _ = self.snapshots.apply(&snapshot, &mut self.apply_scratch);
                    }
                }
                _ => {}
            }
        }
        self.read = self.raw.messages.len();
    }

    /// Pumps for `duration`.
    fn wait(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.pump();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn position(&self) -> Vec2 {
        self.snapshots
            .own_position()
            .expect("the own entity is in view")
    }

    /// Queues one movement input (call `pump` to send it).
    fn input(&mut self, velocity: Vec2) {
        self.seq += 1;
        let input = MoveInput {
            seq: self.seq,
            velocity,
            ack_snapshot: self.snapshots.ack(),
        };
        raw_send(&mut self.raw, channels::MOVEMENT, &input);
    }

    /// One input per tick for `ticks` ticks.
    fn move_for(&mut self, velocity: Vec2, ticks: u32) {
        for _ in 0..ticks {
            self.input(velocity);
            self.pump();
            std::thread::sleep(Duration::from_millis(33));
        }
    }

    /// Decoded messages of type `M` received so far.
    fn received<M: NetMessage>(&self) -> Vec<M> {
        self.raw
            .messages
            .iter()
            .filter(|(_, p)| protocol::message_id(p) == Some(M::ID))
            .filter_map(|(_, p)| protocol::decode::<M>(p).ok())
            .collect()
    }
}

fn violations(server: &ServerProcess, kind: &str) -> f64 {
    server.metric(&format!("movement_violations_total{{kind=\"{kind}\"}}"))
}

/// One tick at the maximum speed, metres.
const STEP: f32 = MAX_SPEED / TICK_HZ;
/// How far a distance read from two snapshots (positions to 1/32 m) can
/// be off.
const QUANTA: f32 = 2.0 * std::f32::consts::SQRT_2 / 32.0;

/// After `sent` over-speed inputs from `from`: pumps until the server has
/// applied all of them (each counts a `speed` violation over
/// `speed_before`) and the snapshots show the player where that many
/// ticks at the maximum speed put it, for up to 5 s. Returns the inputs
/// applied and the position.
fn settle(
    cheater: &mut Abuser,
    server: &ServerProcess,
    speed_before: f64,
    sent: u32,
    from: Vec2,
) -> (u32, Vec2) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        cheater.wait(Duration::from_millis(20));
        let applied = (violations(server, "speed") - speed_before) as u32;
        let position = cheater.position();
        let explained = (position.distance(from) - applied as f32 * STEP).abs() <= QUANTA;
        if (applied >= sent && explained) || Instant::now() >= deadline {
            return (applied, position);
        }
    }
}

/// `applied` over-speed inputs moved the player from `from` to `to` at
/// exactly the maximum speed (to the snapshots' precision), along
/// `heading`.
fn assert_clamped(from: Vec2, to: Vec2, applied: u32, heading: Vec2, what: &str) {
    let moved = to.distance(from);
    let expected = applied as f32 * STEP;
    assert!(
        (moved - expected).abs() <= QUANTA,
        "{what}: {applied} inputs moved the player {moved} m, not {expected} m (8 m/s for \
         {applied} ticks)"
    );
    let direction = (to - from).normalize_or_zero();
    assert!(
        direction.dot(heading) >= 0.999,
        "{what}: the player moved along {direction}, not {heading}"
    );
}

#[test]
fn speed_hacks_teleports_and_nan_velocities_are_clamped_dropped_and_counted() {
    let server = ServerProcess::start(&ServerOptions::default());
    let mut honest = connect_honest(server.game, 1, 2, Duration::from_secs(5));
    let mut cheater = Abuser::connect(&server, 100);

    // NaN and infinite velocities: applied as standing still, counted.
    let start = cheater.position();
    for velocity in [
        Vec2::NAN,
        Vec2::new(f32::NAN, 1.0),
        Vec2::new(f32::INFINITY, 0.0),
        Vec2::new(0.0, f32::NEG_INFINITY),
    ] {
        cheater.move_for(velocity, 5);
    }
    cheater.wait(Duration::from_millis(300));
    play_all(&mut honest);
    let after_nan = cheater.position();
    assert!(after_nan.is_finite(), "position {after_nan}");
    assert!(
        after_nan.distance(start) < 0.05,
        "non-finite inputs moved the player {start} -> {after_nan}"
    );
    assert!(violations(&server, "non_finite") >= 20.0);

    // A speed hack: 1e6 m/s for a second is clamped to the maximum speed:
    // every input the server applies (each is flagged `speed`) moves the
    // player exactly one tick at 8 m/s along +x.
    let speed_before = violations(&server, "speed");
    cheater.move_for(Vec2::new(1e6, 0.0), 30);
    let (applied, after_fast) = settle(&mut cheater, &server, speed_before, 30, after_nan);
    eprintln!(
        "speed hack 1e6 m/s: {applied} inputs applied, moved {:.2} m",
        after_fast.distance(after_nan)
    );
    assert!(applied >= 25, "only {applied} of 30 inputs were applied");
    assert_clamped(after_nan, after_fast, applied, Vec2::X, "1e6 m/s along +x");

    // 1e30 m/s: the squared length overflows f32; the server still clamps
    // it to the maximum speed along its heading, neither faster nor
    // slower (nor standing still, nor another way).
    let speed_before = violations(&server, "speed");
    cheater.move_for(Vec2::new(1e30, 1e30), 15);
    let (applied, after_speed) = settle(&mut cheater, &server, speed_before, 15, after_fast);
    eprintln!(
        "speed hack 1e30 m/s: {applied} inputs applied, moved {:.2} m",
        after_speed.distance(after_fast)
    );
    assert!(after_speed.is_finite());
    assert!(applied >= 12, "only {applied} of 15 inputs were applied");
    assert_clamped(
        after_fast,
        after_speed,
        applied,
        Vec2::ONE.normalize(),
        "1e30 m/s along (1, 1)",
    );

    // A teleport attempt: 280 inputs in 8 crafted packets sent at once
    // (the client's own transport sends only the newest of a sequenced
    // burst, so the packets are written by hand, with message ids after
    // the real connection's). At most 4 inputs per tick are looked at and
    // the movement credit is 3 ticks, so the player moves a few ticks' worth.
    let mut buf = [0u8; 1_200];
    let mut message_id = 30_000u16;
    for _ in 0..8 {
        let inputs: Vec<Vec<u8>> = (0..35)
            .map(|_| {
                cheater.seq += 1;
                let input = MoveInput {
                    seq: cheater.seq,
                    velocity: Vec2::new(0.0, MAX_SPEED),
                    ack_snapshot: cheater.snapshots.ack(),
                };
                protocol::encode(&input).expect("encode").to_vec()
            })
            .collect();
        let messages: Vec<(MessageHeader, &[u8])> = inputs
            .iter()
            .map(|bytes| {
                message_id = message_id.wrapping_add(1);
                (
                    MessageHeader {
                        channel: channels::MOVEMENT.0,
                        id: Some(message_id),
                        fragment: None,
                    },
                    bytes.as_slice(),
                )
            })
            .collect();
        let sequence = cheater.raw.take_seq();
        let len = RawClient::craft(&mut buf, sequence, None, false, &messages);
        cheater.raw.send_raw(&buf[..len]);
    }
    // Dropped inputs are counted on arrival; the few taken move the player
    // over the next ticks.
    let dropped = || violations(&server, "flood") + violations(&server, "rate");
    let deadline = Instant::now() + Duration::from_secs(5);
    cheater.wait(Duration::from_millis(500));
    while dropped() < 250.0 && Instant::now() < deadline {
        cheater.wait(Duration::from_millis(20));
    }
    let after_burst = cheater.position();
    let jumped = after_burst.distance(after_speed);
    eprintln!("280-input burst: moved {jumped:.2} m");
    // Credit (burst_ticks 3) and the buffer (4) take 7 of them; a tick that
    // ran late (a loaded machine) raises both caps by as much again for a
    // few ticks (movement's "Stalls"), so at most 14 ticks' worth, to the
    // snapshots' 1/32 m: 280 inputs would be 74 m.
    assert!(
        jumped <= 14.0 * STEP + 1.0 / 32.0,
        "a burst of inputs teleported the player {jumped} m"
    );
    let dropped = dropped();
    assert!(
        dropped >= 250.0,
        "only {dropped} of 280 burst inputs were dropped"
    );

    play_for(&mut honest, Duration::from_millis(300));
    assert!(
        cheater.raw.server_reason.is_none(),
        "{:?}",
        cheater.raw.server_reason
    );
    assert!(ended(&honest).is_empty(), "{:?}", ended(&honest));
    assert!(honest.iter().all(|c| c.seen.snapshots > 10));
}

#[test]
fn an_inventory_flood_is_answered_busy_and_never_queued_without_bound() {
    const FLOOD: u64 = 600;
    let server = ServerProcess::start(&ServerOptions {
        config_toml: "[inventory]\nmax_queued = 32\n".into(),
        ..ServerOptions::default()
    });
    let mut honest = connect_honest(server.game, 1, 2, Duration::from_secs(5));
    let mut flooder = Abuser::connect(&server, 200);
    let rss_before = server.rss_bytes();
    let requests_before = server.metric("inventory_requests_total");

    // Hundreds of requests in one flush: they reach the server in one tick.
    for id in 1..=FLOOD {
        let op = if id % 2 == 0 {
            InventoryOp::List
        } else {
            InventoryOp::Move {
                from: 0,
                to: 1,
                count: 1,
            }
        };
        raw_send(
            &mut flooder.raw,
            channels::INVENTORY,
            &InventoryRequest { request_id: id, op },
        );
    }
    flooder.pump();
    let deadline = Instant::now() + Duration::from_secs(10);
    while flooder.received::<InventoryReply>().len() < FLOOD as usize && Instant::now() < deadline {
        flooder.wait(Duration::from_millis(20));
        play_all(&mut honest);
    }
    let replies = flooder.received::<InventoryReply>();
    let ids: HashSet<u64> = replies.iter().map(|r| r.request_id).collect();
    let busy = replies
        .iter()
        .filter(|r| r.result == Err(InventoryError::Busy))
        .count();
    let rss_after = server.rss_bytes();
    eprintln!(
        "inventory flood: {FLOOD} requests, {} replies, {busy} Busy; RSS {:.1} -> {:.1} MiB",
        replies.len(),
        mib(rss_before),
        mib(rss_after)
    );
    assert_eq!(
        replies.len() as u64,
        FLOOD,
        "every request is answered once"
    );
    assert_eq!(ids.len() as u64, FLOOD, "no request is answered twice");
    assert!(
        busy as u64 >= FLOOD - 64,
        "beyond the 32-request queue the answer is Busy: {busy} of {FLOOD}"
    );
    // Counted on arrival, before the queue: every one of them, nothing else
    // (the honest players send no inventory requests).
    assert_eq!(
        server.metric("inventory_requests_total") - requests_before,
        FLOOD as f64,
        "inventory_requests_total counts each request once"
    );
    assert!(rss_after.saturating_sub(rss_before) < 16 << 20);
    assert!(flooder.raw.server_reason.is_none());
    play_for(&mut honest, Duration::from_millis(200));
    assert!(ended(&honest).is_empty(), "{:?}", ended(&honest));
}

#[test]
fn a_chat_flood_is_rate_limited_then_muted_then_kicked_and_counted() {
    let server = ServerProcess::start(&ServerOptions::default());
    // Players that never chat themselves: the lines they count are the
    // spammer's.
    let mut honest = connect_honest_without_chat(server.game, 1, 2, Duration::from_secs(5));
    let mut spammer = Abuser::connect(&server, 300);
    let rejected_before = server.metric("chat_rejected_total");

    // Default rules: burst 10, then 5 offences (rate-limited or muted
    // sends) per mute, and the would-be third mute is a kick. In three
    // rounds; every send is answered, the one that gets its sender kicked
    // too (what the server sent before a kick still arrives).
    let mut client_ref = 0u32;
    for (round, sends) in [15u32, 5, 5].into_iter().enumerate() {
        for _ in 0..sends {
            client_ref += 1;
            raw_send(
                &mut spammer.raw,
                channels::CHAT,
                &ChatSend {
                    scope: ChatScope::Global,
                    text: format!("spam {client_ref}"),
                    client_ref,
                },
            );
        }
        spammer.pump();
        let deadline = Instant::now() + Duration::from_secs(5);
        let answered = |s: &Abuser| {
            s.received::<ChatRejected>().len()
                + s.received::<ChatLine>()
                    .iter()
                    .filter(|l| l.reply_to.is_some())
                    .count()
        };
        let expected = client_ref as usize;
        while answered(&spammer) < expected
            && spammer.raw.server_reason.is_none()
            && Instant::now() < deadline
        {
            spammer.wait(Duration::from_millis(10));
            play_all(&mut honest);
        }
        // The last round ends with the kick.
        assert_eq!(answered(&spammer), expected, "round {round}");
        if round < 2 {
            assert!(spammer.raw.server_reason.is_none());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while spammer.raw.server_reason.is_none() && Instant::now() < deadline {
        spammer.wait(Duration::from_millis(10));
        play_all(&mut honest);
    }
    assert_eq!(spammer.raw.server_reason, Some(DisconnectReason::Kicked));

    let own_lines: Vec<ChatLine> = spammer
        .received::<ChatLine>()
        .into_iter()
        .filter(|l| l.reply_to.is_some())
        .collect();
    let rejections = spammer.received::<ChatRejected>();
    let count = |reason| rejections.iter().filter(|r| r.reason == reason).count();
    eprintln!(
        "chat flood: {} lines delivered, {} rate-limited, {} muted, then kicked",
        own_lines.len(),
        count(ChatRejectReason::RateLimited),
        count(ChatRejectReason::Muted)
    );
    // The 15 sends of the first round arrive in one tick: 10 lines, then
    // 4 rate-limited sends and a 5th offence answered with the mute.
    assert_eq!(own_lines.len(), 10, "the burst is 10");
    assert_eq!(count(ChatRejectReason::RateLimited), 4);
    // That mute, and the 5 sends of the second round while muted.
    assert!(count(ChatRejectReason::Muted) >= 6);
    // The send that got the spammer kicked was answered, before the kick.
    assert_eq!(count(ChatRejectReason::Kicked), 1);
    assert_eq!(
        rejections.last().map(|r| r.reason),
        Some(ChatRejectReason::Kicked)
    );
    // The first rejection is a rate limit, and a mute comes after it.
    assert_eq!(
        rejections.first().map(|r| r.reason),
        Some(ChatRejectReason::RateLimited)
    );

    play_for(&mut honest, Duration::from_millis(300));
    // Every refusal sent is counted, and only the spammer was refused.
    assert_eq!(
        server.metric("chat_rejected_total") - rejected_before,
        rejections.len() as f64,
        "chat_rejected_total against the {} refusals the spammer received",
        rejections.len()
    );
    assert_eq!(server.metric("chat_kicks_total"), 1.0);
    // The honest players saw at most the burst, in sequence, and stayed.
    assert!(ended(&honest).is_empty(), "{:?}", ended(&honest));
    for client in &honest {
        assert_eq!(client.seen.chat_lines, 10);
        assert!(!client.seen.chat_sequence_broken);
    }
}

/// Request ids, unique over the whole test executable: changes are
/// remembered per account across sessions, so a reconnected player must
/// not reuse one.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// A player with an inventory on an [`Abuser`]'s real connection.
struct Trader {
    abuser: Abuser,
    /// Inventory requests sent in this session.
    sent: u64,
}

impl Trader {
    fn connect(server: &ServerProcess, account: u64) -> Self {
        Self {
            abuser: Abuser::connect(server, account),
            sent: 0,
        }
    }

    /// Refusals among the replies received in this session.
    fn refusals(&self) -> u64 {
        self.abuser
            .received::<InventoryReply>()
            .iter()
            .filter(|r| is_err(r))
            .count() as u64
    }

    /// Queues a request (sent at the next pump) and returns its id.
    fn send(&mut self, op: InventoryOp) -> u64 {
        self.sent += 1;
        let request_id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
        raw_send(
            &mut self.abuser.raw,
            channels::INVENTORY,
            &InventoryRequest { request_id, op },
        );
        request_id
    }

    fn reply(&self, request_id: u64) -> Option<InventoryReply> {
        self.abuser
            .received::<InventoryReply>()
            .into_iter()
            .find(|r| r.request_id == request_id)
    }

    /// The last state each trade reached, as this player was told.
    fn trade_states(&self) -> BTreeMap<u64, TradeState> {
        self.abuser
            .received::<TradeUpdate>()
            .into_iter()
            .map(|u| (u.trade, u.state))
            .collect()
    }
}

/// Flushes every trader at once (the requests reach the server in the same
/// tick or the next), then waits until each `(trader, request)` is
/// answered; returns the replies in order.
fn race(traders: &mut [Trader], requests: &[(usize, u64)]) -> Vec<InventoryReply> {
    for trader in traders.iter_mut() {
        trader.abuser.pump();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let replies: Vec<Option<InventoryReply>> = requests
            .iter()
            .map(|&(i, id)| traders[i].reply(id))
            .collect();
        if replies.iter().all(Option::is_some) {
            return replies.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "unanswered inventory requests: {requests:?} -> {replies:?}"
        );
        for trader in traders.iter_mut() {
            trader.abuser.wait(Duration::from_millis(5));
        }
    }
}

/// The revision of `trade` that trader `i` accepts: of the newest update
/// of it the trader was told of, once one satisfies `shows` (waiting for
/// it up to 5 s).
fn revision_seen(
    traders: &mut [Trader],
    i: usize,
    trade: u64,
    shows: impl Fn(&TradeUpdate) -> bool,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let newest = traders[i]
            .abuser
            .received::<TradeUpdate>()
            .into_iter()
            .rfind(|u| u.trade == trade);
        if let Some(update) = newest.filter(|u| shows(u)) {
            return update.revision;
        }
        assert!(
            Instant::now() < deadline,
            "trader {i} was not shown trade {trade}"
        );
        for trader in traders.iter_mut() {
            trader.abuser.wait(Duration::from_millis(5));
        }
    }
}

/// Trader `i`'s acceptance of `trade` as the newest update of it shows it.
fn accept(traders: &mut [Trader], i: usize, trade: u64) -> InventoryOp {
    let revision = revision_seen(traders, i, trade, |_| true);
    InventoryOp::Accept { trade, revision }
}

/// Every trader's inventory, from a `List` each (answered after every
/// earlier change of the same player has committed).
fn inventories(traders: &mut [Trader]) -> Vec<InventorySnapshot> {
    let requests: Vec<(usize, u64)> = (0..traders.len())
        .map(|i| (i, traders[i].send(InventoryOp::List)))
        .collect();
    race(traders, &requests)
        .into_iter()
        .map(|r| r.result.expect("List succeeds"))
        .collect()
}

/// Items held, per item, over all the inventories.
fn totals(inventories: &[InventorySnapshot]) -> BTreeMap<ItemId, u64> {
    let mut totals = BTreeMap::new();
    for stack in inventories.iter().flat_map(|i| i.slots.iter().flatten()) {
        *totals.entry(stack.item).or_insert(0) += u64::from(stack.count);
    }
    totals
}

/// Items held, per item, by one inventory.
fn holding(inventory: &InventorySnapshot) -> BTreeMap<ItemId, u64> {
    totals(std::slice::from_ref(inventory))
}

/// What `inventory` holds, per item, once it has given `lost` and been
/// given `gained` (stacks as item and count).
fn holding_after(
    inventory: &InventorySnapshot,
    lost: &[(ItemId, u32)],
    gained: &[(ItemId, u32)],
) -> BTreeMap<ItemId, u64> {
    let mut held = holding(inventory);
    for &(item, count) in gained {
        *held.entry(item).or_insert(0) += u64::from(count);
    }
    for &(item, count) in lost {
        *held.entry(item).or_insert(0) -= u64::from(count);
    }
    held.retain(|_, n| *n > 0);
    held
}

/// The item and count of the stack in `slot`.
fn stack_in(inventory: &InventorySnapshot, slot: u16) -> (ItemId, u32) {
    let stack = inventory.slots[usize::from(slot)].expect("an occupied slot");
    (stack.item, stack.count)
}

/// The occupied slots of an inventory, with their counts.
fn stacks(inventory: &InventorySnapshot) -> Vec<(u16, u32)> {
    inventory
        .slots
        .iter()
        .enumerate()
        .filter_map(|(slot, s)| s.map(|s| (slot as u16, s.count)))
        .collect()
}

/// Picks up world items until every trader holds at least `slots` stacks.
fn stock_up(traders: &mut [Trader], slots: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = inventories(traders);
        if held.iter().all(|i| stacks(i).len() >= slots) {
            return;
        }
        assert!(Instant::now() < deadline, "could not stock up: {held:?}");
        let lists: Vec<(usize, u64)> = (0..traders.len())
            .map(|i| (i, traders[i].send(InventoryOp::ListWorld)))
            .collect();
        race(traders, &lists);
        // Each trader takes a different share of the world, 3 items a round.
        let n = traders.len() as u64;
        let mut pickups = Vec::new();
        for (i, trader) in traders.iter_mut().enumerate() {
            let world = trader
                .abuser
                .received::<WorldItems>()
                .pop()
                .map(|w| w.items)
                .unwrap_or_default();
            for item in world.iter().filter(|w| w.id % n == i as u64).take(3) {
                pickups.push((
                    i,
                    trader.send(InventoryOp::PickUp {
                        world_item: item.id,
                    }),
                ));
            }
        }
        race(traders, &pickups);
        for trader in traders.iter_mut() {
            trader.abuser.wait(Duration::from_millis(100));
        }
    }
}

/// Before each race: every trader holds two stacks or more (picked up from
/// the world); returns the inventories and the per-item totals the race
/// must keep.
fn prepare(traders: &mut [Trader]) -> (Vec<InventorySnapshot>, BTreeMap<ItemId, u64>) {
    stock_up(traders, 2);
    let held = inventories(traders);
    let expected = totals(&held);
    (held, expected)
}

/// `from` offers `stack` (slot, count) to `with`; returns the trade's id.
fn open_trade(traders: &mut [Trader], from: usize, with: u64, stack: (u16, u32)) -> u64 {
    let open = traders[from].send(InventoryOp::Offer {
        with,
        offer: TradeOffer { items: vec![stack] },
    });
    race(traders, &[(from, open)])[0].trade.expect("a trade id")
}

fn is_err(reply: &InventoryReply) -> bool {
    reply.result.is_err()
}

#[test]
fn trade_races_neither_duplicate_nor_lose_items() {
    // Every item within reach, and a world that fills quickly.
    let server = ServerProcess::start(&ServerOptions {
        config_toml: "[inventory]\npickup_radius = 1000000.0\nspawn_every_ticks = 1\n".into(),
        ..ServerOptions::default()
    });
    // Played aside: the races take seconds of request-reply turns.
    let honest = PlayingAside::start(connect_honest(server.game, 1, 1, Duration::from_secs(5)));
    let (a, b, c) = (0usize, 1usize, 2usize);
    let accounts = [500u64, 501, 502];
    let mut traders: Vec<Trader> = accounts
        .iter()
        .map(|&account| Trader::connect(&server, account))
        .collect();
    let requests_before = server.metric("inventory_requests_total");
    let refused_before = server.metric_sum("inventory_refused_total");
    let mut rejected = 0usize;
    let (start, expected) = prepare(&mut traders);
    eprintln!("trade races: holding {expected:?}");

    // 1. One stack offered to two partners in the same flush, and every
    //    side accepting both trades at once: at most one trade completes.
    let (slot, count) = stacks(&start[a])[0];
    let offer = TradeOffer {
        items: vec![(slot, count)],
    };
    let to_b = traders[a].send(InventoryOp::Offer {
        with: accounts[b],
        offer: offer.clone(),
    });
    let to_c = traders[a].send(InventoryOp::Offer {
        with: accounts[c],
        offer,
    });
    let offers = race(&mut traders, &[(a, to_b), (a, to_c)]);
    let trades: Vec<u64> = offers.iter().filter_map(|r| r.trade).collect();
    assert_eq!(trades.len(), 2, "{offers:?}");
    // What each side saw first, then all the accepts in one flush.
    let accepts = [
        (b, trades[0]),
        (c, trades[1]),
        (a, trades[0]),
        (a, trades[1]),
    ]
    .map(|(i, trade)| (i, accept(&mut traders, i, trade)));
    let accepts = accepts.map(|(i, op)| (i, traders[i].send(op)));
    let replies = race(&mut traders, &accepts);
    rejected += replies.iter().filter(|r| is_err(r)).count();
    let after = inventories(&mut traders);
    assert_eq!(
        totals(&after),
        expected,
        "race 1 (double offer): {replies:?}"
    );
    let completed = traders[a]
        .trade_states()
        .into_iter()
        .filter(|(id, state)| trades.contains(id) && *state == TradeState::Completed)
        .count();
    assert!(completed <= 1, "one stack completed {completed} trades");
    assert_eq!(
        replies[0].result.as_ref().err(),
        Some(&InventoryError::NoSuchTrade),
        "the first trade was cancelled by the second: {replies:?}"
    );

    // 2. Accept against cancel, both orders, six rounds: the trade either
    //    swaps or not, never half.
    for round in 0..6 {
        let (held, expected) = prepare(&mut traders);
        let (a_slot, a_count) = stacks(&held[a])[0];
        let (b_slot, b_count) = stacks(&held[b])[0];
        let trade = open_trade(&mut traders, a, accounts[b], (a_slot, a_count));
        let counter = traders[b].send(InventoryOp::Offer {
            with: accounts[a],
            offer: TradeOffer {
                items: vec![(b_slot, b_count)],
            },
        });
        race(&mut traders, &[(b, counter)]);
        // Both accept the trade with B's counter-offer in it.
        let countered = |u: &TradeUpdate| !u.partner_offer.is_empty();
        let revision = revision_seen(&mut traders, a, trade, countered);
        let accept_a = traders[a].send(InventoryOp::Accept { trade, revision });
        race(&mut traders, &[(a, accept_a)]);
        let accept_b = InventoryOp::Accept {
            trade,
            revision: revision_seen(&mut traders, b, trade, countered),
        };
        // B accepts (completing the swap) while one side cancels.
        let canceller = if round % 2 == 0 { a } else { b };
        let cancel_first = round % 4 >= 2;
        let moves = if cancel_first {
            [
                (
                    canceller,
                    traders[canceller].send(InventoryOp::Cancel { trade }),
                ),
                (b, traders[b].send(accept_b)),
            ]
        } else {
            [
                (b, traders[b].send(accept_b)),
                (
                    canceller,
                    traders[canceller].send(InventoryOp::Cancel { trade }),
                ),
            ]
        };
        let replies = race(&mut traders, &moves);
        rejected += replies.iter().filter(|r| is_err(r)).count();
        let after = inventories(&mut traders);
        assert_eq!(
            totals(&after),
            expected,
            "race 2 round {round}: {replies:?}"
        );
        let state = traders[a].trade_states().get(&trade).copied();
        assert!(
            matches!(state, Some(TradeState::Completed | TradeState::Cancelled)),
            "round {round}: the trade ended {state:?}"
        );
        // The cancel is refused exactly when the swap came first.
        let cancel = &replies[if cancel_first { 0 } else { 1 }];
        let completed = state == Some(TradeState::Completed);
        assert_eq!(
            is_err(cancel),
            completed,
            "race 2 round {round}: the cancel's reply after {state:?}: {replies:?}"
        );
        // Each side holds what the outcome gives it: both stacks swapped,
        // or nothing moved; C, outside the trade, holds what it held.
        let (a_stack, b_stack) = ([stack_in(&held[a], a_slot)], [stack_in(&held[b], b_slot)]);
        let (a_gives, b_gives) = if completed {
            (&a_stack[..], &b_stack[..])
        } else {
            (&[][..], &[][..])
        };
        for (i, lost, gained) in [(a, a_gives, b_gives), (b, b_gives, a_gives)] {
            assert_eq!(
                holding(&after[i]),
                holding_after(&held[i], lost, gained),
                "race 2 round {round}: trader {i} after {state:?}: {replies:?}"
            );
        }
        assert_eq!(
            holding(&after[c]),
            holding(&held[c]),
            "race 2 round {round}: C, outside the trade, after {state:?}"
        );
    }

    // 3. A gift of the offered stack in the flush that completes the trade:
    //    the stack goes to one of them, never both.
    for gift_first in [true, false] {
        let (held, expected) = prepare(&mut traders);
        let (slot, count) = stacks(&held[a])[0];
        let trade = open_trade(&mut traders, a, accounts[b], (slot, count));
        let accept_b = accept(&mut traders, b, trade);
        let accept_b = traders[b].send(accept_b);
        race(&mut traders, &[(b, accept_b)]);
        let revision = revision_seen(&mut traders, a, trade, |_| true);
        let give = InventoryOp::Give {
            to: accounts[c],
            slot,
            count,
        };
        let accept_a = InventoryOp::Accept { trade, revision };
        let moves = if gift_first {
            [(a, traders[a].send(give)), (a, traders[a].send(accept_a))]
        } else {
            [(a, traders[a].send(accept_a)), (a, traders[a].send(give))]
        };
        let replies = race(&mut traders, &moves);
        rejected += replies.iter().filter(|r| is_err(r)).count();
        assert_eq!(
            replies.iter().filter(|r| is_err(r)).count(),
            1,
            "exactly one of gift and trade takes the stack: {replies:?}"
        );
        let after = inventories(&mut traders);
        assert_eq!(
            totals(&after),
            expected,
            "race 3 (gift first: {gift_first}): {replies:?}"
        );
        // A lost the stack either way: to C if the gift was taken (the
        // trade then cancelled), to B if the trade completed.
        let give = &replies[if gift_first { 0 } else { 1 }];
        let state = traders[a].trade_states().get(&trade).copied();
        let stack = [stack_in(&held[a], slot)];
        let (to_b, to_c, outcome) = if is_err(give) {
            (&stack[..], &[][..], TradeState::Completed)
        } else {
            (&[][..], &stack[..], TradeState::Cancelled)
        };
        assert_eq!(
            state,
            Some(outcome),
            "race 3 (gift first: {gift_first}): the trade after {replies:?}"
        );
        for (i, lost, gained) in [(a, &stack[..], &[][..]), (b, &[], to_b), (c, &[], to_c)] {
            assert_eq!(
                holding(&after[i]),
                holding_after(&held[i], lost, gained),
                "race 3 (gift first: {gift_first}): trader {i} after {state:?}: {replies:?}"
            );
        }
    }

    // 4. The partner leaves mid-trade, right after accepting, while the
    //    initiator accepts: the trade completes or is cancelled, never
    //    half, and the leaver comes back to the inventory that outcome
    //    gives it.
    let (held, expected) = prepare(&mut traders);
    let online = server.metric("connected_clients");
    let (slot, count) = stacks(&held[a])[0];
    let stack = [stack_in(&held[a], slot)];
    let trade = open_trade(&mut traders, a, accounts[c], (slot, count));
    let (accept_c, accept_a) = (
        accept(&mut traders, c, trade),
        accept(&mut traders, a, trade),
    );
    traders[c].send(accept_c);
    traders[c].abuser.pump();
    traders[c].abuser.raw.disconnect();
    let accept_a = traders[a].send(accept_a);
    let replies = race(&mut traders[..2], &[(a, accept_a)]);
    rejected += replies.iter().filter(|r| is_err(r)).count();
    let leaver = traders.pop().expect("the leaver");
    // What the leaver's session sent and was refused (it hears nothing
    // after its accept).
    let (left_sent, left_refusals) = (leaver.sent, leaver.refusals());
    drop(leaver);
    // The account is free again once the server has processed the leave.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.metric("connected_clients") >= online {
        assert!(Instant::now() < deadline, "the leaver is still connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    traders.push(Trader::connect(&server, accounts[c]));
    let after = inventories(&mut traders);
    assert_eq!(
        totals(&after),
        expected,
        "race 4 (partner left): {replies:?}"
    );
    let state = traders[a].trade_states().get(&trade).copied();
    assert!(
        matches!(state, Some(TradeState::Completed | TradeState::Cancelled)),
        "the trade with the leaver ended {state:?}"
    );
    // Each side holds what the outcome gives it: the stack moved from A
    // to C if the trade completed, else nothing moved.
    let moved = if state == Some(TradeState::Completed) {
        &stack[..]
    } else {
        &[]
    };
    assert_eq!(
        holding(&after[a]),
        holding_after(&held[a], moved, &[]),
        "race 4: the initiator after {state:?}"
    );
    assert_eq!(
        holding(&after[c]),
        holding_after(&held[c], &[], moved),
        "race 4: the leaver came back to another inventory after {state:?}"
    );

    // Every request sent is counted once, on arrival. One exception: the
    // leaver's accept, when its leave is processed first (the same tick:
    // a session's end is handled before its requests), is ignored, not
    // counted; the trade cannot have completed then.
    let sent = left_sent + traders.iter().map(|t| t.sent).sum::<u64>();
    let counted = server.metric("inventory_requests_total") - requests_before;
    let seen_refusals = left_refusals + traders.iter().map(Trader::refusals).sum::<u64>();
    let refused = server.metric_sum("inventory_refused_total") - refused_before;
    eprintln!(
        "trade races: {sent} requests sent, {counted} counted; {rejected} refused in the races, \
         {seen_refusals} refusals received in all, {refused} counted; trade with the leaver \
         {state:?}; holding {:?}",
        totals(&after)
    );
    assert!(rejected >= 4, "the races refused only {rejected} requests");
    let leaver_accept_ignored = if counted == sent as f64 {
        false
    } else {
        assert_eq!(
            counted,
            (sent - 1) as f64,
            "inventory_requests_total counted {counted} of the {sent} requests sent"
        );
        true
    };
    assert!(
        !(leaver_accept_ignored && state == Some(TradeState::Completed)),
        "the trade completed without the leaver's accept being counted"
    );
    // Every refusal is counted: those the traders received, and the
    // leaver's accept's if it was taken and refused (nobody heard that).
    let unheard = if leaver_accept_ignored { 0.0 } else { 1.0 };
    assert!(
        refused >= seen_refusals as f64 && refused <= seen_refusals as f64 + unheard,
        "inventory_refused_total counted {refused} for the {seen_refusals} refusals the traders \
         received"
    );
    let mut honest = honest.stop();
    let snapshots = honest[0].seen.snapshots;
    play_for(&mut honest, Duration::from_millis(200));
    assert!(ended(&honest).is_empty(), "{:?}", ended(&honest));
    assert!(
        honest[0].seen.snapshots > snapshots,
        "the honest player gets no snapshots"
    );
}
