//! Crash safety over real processes: two clients pick up world items,
//! move, split, swap, drop, use, give to each other and trade (offer,
//! counter-offer, accept, cancel) while the server binary is killed with
//! SIGKILL at pseudo-random moments (24 times), then restarted on the same
//! data directory. Requests left unanswered by a crash are sent again with
//! their ids, and a few the server had already answered with a change are
//! sent again too (echoes). Checked:
//!
//! - after every kill, before the restart, the store holds every state a
//!   player was shown, or a newer one, and remembers the ids of its newest
//!   acknowledged changes; `server audit` reports an intact, balanced
//!   store, whose consumed items are at least the uses acknowledged and at
//!   most those plus the uses still unanswered;
//! - an echo is answered with its original reply, unchanged (it is not
//!   applied again);
//! - after every restart, once both clients have every request answered,
//!   each lists its inventory (the census): its version is at least the
//!   newest acknowledged (same version ⇒ same contents; the tracker checks
//!   that) and is exactly what the acknowledged requests account for (see
//!   [`expected_version`]): a request applied twice, or applied but
//!   answered as if it was not, shows as a version off by one or more;
//!   and `server audit` of the live store agrees with the two inventories
//!   listed (items held) and with the uses acknowledged (items consumed).
//!
//! The operations, the kill moments and the echoes are drawn from a seeded
//! generator whose seed is printed; `CRASH_SEED` (decimal or `0x` hex)
//! sets it. Real processes still decide when each answer arrives, and the
//! draws follow the answers, so a seed replays the draws, not the exact
//! course of a run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::persistence::{InventoryStore, SqliteStore};
use server::readiness::Listening;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent};
use shared::io::{ClientSocket, unix_secs};
use shared::netcode::ConnectToken;
use shared::protocol::inventory::{
    InventoryError, InventoryOp, InventoryReply, InventoryRequest, InventorySnapshot,
    InventoryTracker, InventoryUpdate, REMEMBERED_REQUESTS, TradeOffer, TradeState, TradeUpdate,
    WorldItems,
};
use shared::protocol::messages::Welcome;
use shared::protocol::{self, NetMessage, PROTOCOL_ID, channels};

mod support;

use support::process::output_within;
use support::{KillOnDrop, start_listening};

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const KILLS: u32 = 24;
const IN_FLIGHT: usize = 3;
/// Acknowledged changes each player sends again after a restart.
const ECHOES: usize = 3;
/// Only changes among a player's last this many request ids are sent
/// again. The server keeps an account's newest [`REMEMBERED_REQUESTS`]
/// changes, in the order applied, and applies a player's requests in the
/// order of their ids but for the few sent again (pending across a
/// restart, or answered busy): the changes stored after one of these are
/// at most this many plus those few, so it is still remembered.
const ECHO_WINDOW: u64 = REMEMBERED_REQUESTS as u64 / 2;
/// The generator's seed unless `CRASH_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

fn dev_token(server: SocketAddr, client_id: u64) -> ConnectToken {
    shared::keys::mint_token(&shared::keys::dev_key(), vec![server], client_id, 60, 5).unwrap()
}

/// This test is about crash safety, not reach: players stand near the world
/// centre while items spawn up to 100 m away, so every item is in reach.
const CONFIG: &str = "[inventory]\npickup_radius = 1000.0\n";

/// The server on `dir`; the handle kills it when it drops, so a failing
/// test leaves no server behind.
fn start_server(dir: &Path) -> (KillOnDrop, Listening) {
    let config = dir.join("crash-test.toml");
    if !config.exists() {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&config, CONFIG).unwrap();
    }
    let mut command = Command::new(SERVER);
    command
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir)
        .args(["--log-filter", "warn,server=info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    start_listening(command)
}

/// What the store holds right after a kill, before a restart lets the
/// requests sent again apply anything: every state a player was shown
/// (a reply or an update goes out once its batch is durable) is stored, or
/// a newer one, and the ids of its newest acknowledged changes are
/// remembered. A reply sent before its batch was stored, the batch then
/// lost with the process, shows here; after the restart its request, sent
/// again as an echo, would be applied anew and answered alike.
fn check_stored(players: &[Player], dir: &Path, kills: u32) {
    let mut store = SqliteStore::open_read_only(dir).unwrap();
    for p in players {
        let state = store.load_account(p.account).unwrap();
        if let Some(seen) = p.tracker.inventory() {
            // An account never stored is shown empty, at version 0.
            let stored = state.inventory.as_ref();
            let kept = match stored {
                Some(stored) => stored.version > seen.version || stored == seen,
                None => seen.version == 0 && seen.slots.iter().all(Option::is_none),
            };
            assert!(
                kept,
                "after kill {kills}: account {} stored {stored:?}, acknowledged {seen:?}",
                p.account
            );
        }
        let remembered: BTreeSet<u64> = state.applied.iter().map(|(id, _)| *id).collect();
        for (request, _) in &p.changes {
            assert!(
                remembered.contains(&request.request_id),
                "after kill {kills}: account {}'s acknowledged change {} is not remembered",
                p.account,
                request.request_id
            );
        }
    }
}

/// `server audit` of `dir` (read-only: also next to a live server), which
/// must find the store intact and balanced.
fn audit(dir: &Path) -> serde_json::Value {
    const RUN_LIMIT: Duration = Duration::from_secs(60);
    let out = output_within(
        Command::new(SERVER).arg("audit").arg("--data-dir").arg(dir),
        RUN_LIMIT,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("audit printed no JSON ({e}): {out:?}"));
    assert!(out.status.success(), "audit failed: {report}");
    assert_eq!(report["integrity_ok"], true);
    assert_eq!(report["balanced"], true);
    assert_eq!(report["consistent"], true, "{report}");
    report
}

/// One per-item total of an audit report (`held`, `in_world`, `minted`,
/// `consumed`), by item id.
fn audit_totals(report: &serde_json::Value, field: &str) -> BTreeMap<u32, u64> {
    report["items"]
        .as_object()
        .expect("items in the audit")
        .iter()
        .map(|(item, totals)| {
            let count = totals[field].as_u64().expect("a count");
            (item.parse().expect("an item id"), count)
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `CRASH_SEED` if set (decimal or `0x` hex), else [`DEFAULT_SEED`].
fn seed() -> u64 {
    let Ok(text) = std::env::var("CRASH_SEED") else {
        return DEFAULT_SEED;
    };
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    match parsed {
        // xorshift stays at zero from zero.
        Ok(0) | Err(_) => panic!("CRASH_SEED must be a non-zero number, got {text:?}"),
        Ok(seed) => seed,
    }
}

/// A short name per operation, for the tallies.
fn op_name(op: &InventoryOp) -> &'static str {
    match op {
        InventoryOp::List => "list",
        InventoryOp::ListWorld => "list_world",
        InventoryOp::PickUp { .. } => "pick_up",
        InventoryOp::Drop { .. } => "drop",
        InventoryOp::Move { .. } => "move",
        InventoryOp::Use { .. } => "use",
        InventoryOp::Give { .. } => "give",
        InventoryOp::Offer { .. } => "offer",
        InventoryOp::Accept { .. } => "accept",
        InventoryOp::Cancel { .. } => "cancel",
    }
}

/// What one player's requests answered `Ok` did, by the protocol's rules.
/// Every applied request is answered `Ok` once: at the time, or with its
/// remembered reply when its id comes again after a crash lost the answer.
/// So once every request is answered, these count every change applied,
/// each once.
#[derive(Debug, Default)]
struct Tally {
    /// Changes of the player's own inventory (pick up, drop, move, use,
    /// give): each moved its version on by exactly one.
    own_changes: u64,
    /// Of those, gives: each also moved the other player's version on by one.
    gives: u64,
    /// Of those, uses: each consumed one item.
    uses: u64,
    /// `(trade, revision)` of every accept answered `Ok`. A trade both
    /// sides accepted at the same revision with `Ok` completed: the later
    /// accept found the earlier's acceptance standing (only an offer
    /// resets it, and an offer makes a new revision) and its `Ok` means the
    /// swap happened (a failed swap is answered `TradeFailed`). A trade
    /// completes once, so at one revision; its swap moved both versions on
    /// by one.
    accepted: BTreeSet<(u64, u64)>,
    /// `Ok` answers by operation.
    ok: BTreeMap<&'static str, u64>,
}

impl Tally {
    /// Counts `op`, answered `Ok` with `after`.
    fn record(&mut self, op: &InventoryOp, after: &InventorySnapshot) {
        *self.ok.entry(op_name(op)).or_default() += 1;
        if let InventoryOp::Move { from, to, .. } = op {
            // What the move was, from the slots right after it.
            let slot = |i: u16| after.slots.get(usize::from(i)).copied().flatten();
            let kind = match (slot(*from), slot(*to)) {
                (None, _) => "move (whole stack)",
                // A split, or part of a stack merged onto the same item.
                (Some(a), Some(b)) if a.item == b.item => "move (split)",
                _ => "move (swap)",
            };
            *self.ok.entry(kind).or_default() += 1;
        }
        match op {
            InventoryOp::PickUp { .. } | InventoryOp::Drop { .. } | InventoryOp::Move { .. } => {
                self.own_changes += 1;
            }
            InventoryOp::Use { .. } => {
                self.own_changes += 1;
                self.uses += 1;
            }
            InventoryOp::Give { .. } => {
                self.own_changes += 1;
                self.gives += 1;
            }
            InventoryOp::Accept { trade, revision } => {
                self.accepted.insert((*trade, *revision));
            }
            InventoryOp::List
            | InventoryOp::ListWorld
            | InventoryOp::Offer { .. }
            | InventoryOp::Cancel { .. } => {}
        }
    }

    fn ok(&self, name: &str) -> u64 {
        self.ok.get(name).copied().unwrap_or(0)
    }
}

/// Trades the two players both accepted `Ok` at one revision: completed.
fn completed_trades(a: &Tally, b: &Tally) -> u64 {
    a.accepted.intersection(&b.accepted).count() as u64
}

/// The version `mine`'s inventory has once every request of both players
/// is answered. A version moves on by exactly one with every committed
/// change of the inventory, from 0 for a new account, and only three
/// things change it: the player's own changes, the other's gives to it, and
/// completed trades (offers, cancels, lists and refusals do not). Sound:
/// each term counts applied changes exactly (see [`Tally`]). Sharp: an
/// applied request answered as if it were not (a refusal, say, when its
/// id came again after a crash) makes the version one more than this, one
/// applied again makes it one more, one lost one less.
fn expected_version(mine: &Tally, theirs: &Tally) -> u64 {
    mine.own_changes + theirs.gives + completed_trades(mine, theirs)
}

struct Player {
    account: u64,
    other: u64,
    tracker: InventoryTracker,
    /// The id the tracker gives the next request.
    next_id: u64,
    world: Vec<u64>,
    socket: Option<ClientSocket>,
    welcomed: bool,
    /// The version every restart must reach: the newest acknowledged.
    floor: u64,
    /// The id of the post-restart List (the census) whose reply is checked.
    probe: Option<u64>,
    /// What the census found.
    census: Option<InventorySnapshot>,
    /// Sessions whose census was answered (and checked).
    probes_checked: u32,
    /// The open trade this session, as the last trade update told.
    open_trade: Option<u64>,
    /// The newest changes acknowledged (`Ok`, not a list): the request
    /// and its reply, for echoes.
    changes: VecDeque<(InventoryRequest, InventoryReply)>,
    /// Echoes sent and not answered yet: id → request and original reply.
    echoes: BTreeMap<u64, (InventoryRequest, InventoryReply)>,
    echoes_checked: u64,
    /// Requests sent again after a restart (unanswered at the crash).
    retried: u64,
    tally: Tally,
    acked: u64,
    trades_seen: u64,
}

impl Player {
    fn new(account: u64, other: u64) -> Self {
        Self {
            account,
            other,
            tracker: InventoryTracker::starting_at(1),
            next_id: 1,
            world: Vec::new(),
            socket: None,
            welcomed: false,
            floor: 0,
            probe: None,
            census: None,
            probes_checked: 0,
            open_trade: None,
            changes: VecDeque::new(),
            echoes: BTreeMap::new(),
            echoes_checked: 0,
            retried: 0,
            tally: Tally::default(),
            acked: 0,
            trades_seen: 0,
        }
    }

    fn send_request(&mut self, request: &InventoryRequest, now: Instant) {
        let socket = self.socket.as_mut().unwrap();
        let _ = socket
            .endpoint
            .send(channels::INVENTORY, protocol::encode(request).unwrap());
        socket.flush(now);
    }

    /// Sends `op` under a new id; returns the id.
    fn send(&mut self, op: InventoryOp, now: Instant) -> u64 {
        let request = self
            .tracker
            .request(op)
            .expect("a player waits for its replies long before the tracker's bound");
        self.next_id = request.request_id + 1;
        self.send_request(&request, now);
        request.request_id
    }

    fn resend_pending(&mut self, now: Instant) {
        let pending: Vec<_> = self.tracker.pending().collect();
        self.retried += pending.len() as u64;
        for request in &pending {
            self.send_request(request, now);
        }
    }

    /// Sends again the newest acknowledged changes and one older one
    /// (within [`ECHO_WINDOW`]), as a client whose acknowledgement was
    /// duplicated would.
    fn send_echoes(&mut self, rng: &mut Rng, now: Instant) {
        let recent: Vec<_> = self
            .changes
            .iter()
            .filter(|(request, _)| self.next_id - request.request_id <= ECHO_WINDOW)
            .cloned()
            .collect();
        let mut chosen: Vec<_> = recent.iter().rev().take(ECHOES - 1).cloned().collect();
        if !recent.is_empty() {
            chosen.push(recent[rng.below(recent.len() as u64) as usize].clone());
        }
        for (request, reply) in chosen {
            if !self.echoes.contains_key(&request.request_id) {
                self.send_request(&request, now);
                self.echoes.insert(request.request_id, (request, reply));
            }
        }
    }

    /// Every request answered, echoes included.
    fn settled(&self) -> bool {
        self.welcomed && self.tracker.pending().next().is_none() && self.echoes.is_empty()
    }

    fn on_reply(&mut self, reply: InventoryReply, now: Instant) {
        if let Some((request, original)) = self.echoes.remove(&reply.request_id) {
            if reply.result == Err(InventoryError::Busy) {
                self.send_request(&request, now);
                self.echoes.insert(request.request_id, (request, original));
                return;
            }
            assert_eq!(
                reply, original,
                "account {}: request {} was acknowledged; sent again after a restart, it must \
                 get the same reply, not be applied again ({:?})",
                self.account, request.request_id, request.op
            );
            self.echoes_checked += 1;
            return;
        }
        let op = self
            .tracker
            .on_reply(&reply)
            .unwrap_or_else(|e| panic!("account {}: {e}", self.account));
        let snapshot = match &reply.result {
            Err(InventoryError::Busy | InventoryError::Storage) => {
                // Still pending in the tracker: retried with its id.
                let request = InventoryRequest {
                    request_id: reply.request_id,
                    op,
                };
                self.send_request(&request, now);
                return;
            }
            Err(_) => return,
            Ok(snapshot) => snapshot,
        };
        self.acked += 1;
        self.tally.record(&op, snapshot);
        if self.probe == Some(reply.request_id) {
            self.probe = None;
            self.probes_checked += 1;
            assert!(
                snapshot.version >= self.floor,
                "account {}: acknowledged version {} lost (found {})",
                self.account,
                self.floor,
                snapshot.version
            );
            self.census = Some(snapshot.clone());
        }
        if !matches!(op, InventoryOp::List | InventoryOp::ListWorld) {
            if self.changes.len() == 64 {
                self.changes.pop_front();
            }
            let request = InventoryRequest {
                request_id: reply.request_id,
                op,
            };
            self.changes.push_back((request, reply));
        }
    }

    /// The filled slots of the newest inventory seen, with their counts.
    fn filled(&self) -> Vec<(u16, u32)> {
        self.tracker
            .inventory()
            .map(|inv| {
                inv.slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.map(|s| (i as u16, s.count)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One or two stacks (or parts of them), now and then none.
    fn some_offer(&self, rng: &mut Rng) -> TradeOffer {
        let mut filled = self.filled();
        let mut items = Vec::new();
        let wanted = match rng.below(8) {
            0 => 0,
            1..=5 => 1,
            _ => 2,
        };
        while items.len() < wanted && !filled.is_empty() {
            let (slot, count) = filled.swap_remove(rng.below(filled.len() as u64) as usize);
            items.push((slot, 1 + rng.below(u64::from(count)) as u32));
        }
        TradeOffer { items }
    }

    fn next_op(&mut self, rng: &mut Rng) -> InventoryOp {
        let filled = self.filled();
        let any = |rng: &mut Rng| filled[rng.below(filled.len() as u64) as usize];
        // 1..=count: a part or the whole.
        let part = |rng: &mut Rng, count: u32| 1 + rng.below(u64::from(count)) as u32;
        match rng.below(20) {
            0..=5 if !self.world.is_empty() => {
                let i = rng.below(self.world.len() as u64) as usize;
                InventoryOp::PickUp {
                    world_item: self.world.swap_remove(i),
                }
            }
            6..=7 if !filled.is_empty() => {
                let (from, count) = any(rng);
                let count = match rng.below(3) {
                    0 => 1,
                    1 => part(rng, count), // a split, or a move
                    _ => count,            // a move, merge or swap
                };
                InventoryOp::Move {
                    from,
                    to: rng.below(24) as u16,
                    count,
                }
            }
            8 if !filled.is_empty() => {
                let (slot, count) = any(rng);
                InventoryOp::Drop {
                    slot,
                    count: part(rng, count),
                }
            }
            9..=10 if !filled.is_empty() => InventoryOp::Use { slot: any(rng).0 },
            11..=12 if !filled.is_empty() => {
                let (slot, count) = any(rng);
                InventoryOp::Give {
                    to: self.other,
                    slot,
                    count: part(rng, count),
                }
            }
            13..=14 => InventoryOp::Offer {
                with: self.other,
                offer: self.some_offer(rng),
            },
            15 if self.open_trade.is_some() => InventoryOp::Cancel {
                trade: self.open_trade.unwrap_or_default(),
            },
            _ => InventoryOp::ListWorld,
        }
    }

    /// A trade update while playing: an open trade this player has not
    /// accepted is mostly accepted, else answered with an offer of its
    /// own (a new revision) or cancelled.
    fn on_trade(&mut self, update: &TradeUpdate, playing: bool, rng: &mut Rng, now: Instant) {
        match update.state {
            TradeState::Open {
                initiator_accepted,
                partner_accepted,
            } => {
                self.open_trade = Some(update.trade);
                let mine = if update.initiator == self.account {
                    initiator_accepted
                } else {
                    partner_accepted
                };
                if !playing || mine {
                    return;
                }
                let op = match rng.below(10) {
                    0..=6 => InventoryOp::Accept {
                        trade: update.trade,
                        revision: update.revision,
                    },
                    7 | 8 => InventoryOp::Offer {
                        with: self.other,
                        offer: self.some_offer(rng),
                    },
                    _ => InventoryOp::Cancel {
                        trade: update.trade,
                    },
                };
                self.send(op, now);
            }
            TradeState::Completed | TradeState::Cancelled => {
                if update.state == TradeState::Completed {
                    self.trades_seen += 1;
                }
                if self.open_trade == Some(update.trade) {
                    self.open_trade = None;
                }
            }
        }
    }
}

/// Where a session is: the clients first get every request answered
/// (those the crash left unanswered, the echoes), then list their
/// inventories with nothing else under way (the census), then play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Recovering,
    Census,
    Playing(Instant),
}

/// The census, after restart `kills`: every request of both players is
/// answered and both inventories listed since. Their versions must be what
/// the acknowledged requests account for ([`expected_version`]), and the
/// live store what the lists said (items held) and the acknowledged uses
/// imply (items consumed).
fn check_census(players: &[Player], dir: &Path, kills: u32) {
    for (i, p) in players.iter().enumerate() {
        let other = &players[1 - i];
        let version = p.census.as_ref().expect("census taken").version;
        let expected = expected_version(&p.tally, &other.tally);
        assert_eq!(
            version,
            expected,
            "account {} after restart {kills}: version {version}, but its acknowledged requests \
             account for {expected} ({} own changes, {} gives from {}, {} completed trades): \
             a change applied twice, lost, or applied but answered as not",
            p.account,
            p.tally.own_changes,
            other.tally.gives,
            other.account,
            completed_trades(&p.tally, &other.tally),
        );
    }
    let report = audit(dir);
    let mut held: BTreeMap<u32, u64> = BTreeMap::new();
    for p in players {
        let census = p.census.as_ref().expect("census taken");
        for stack in census.slots.iter().flatten() {
            *held.entry(stack.item.0).or_default() += u64::from(stack.count);
        }
    }
    assert_eq!(
        audit_totals(&report, "held"),
        held,
        "after restart {kills}: items held in the store and in the inventories listed"
    );
    let consumed: u64 = audit_totals(&report, "consumed").values().sum();
    let uses: u64 = players.iter().map(|p| p.tally.uses).sum();
    assert_eq!(
        consumed, uses,
        "after restart {kills}: items consumed in the store and uses acknowledged"
    );
}

fn scrape_metrics(addr: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

#[test]
fn killing_the_server_never_loses_acknowledged_items_or_unbalances_the_ledger() {
    let dir = std::env::temp_dir().join(format!("server-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let seed = seed();
    println!("seed {seed:#x} (CRASH_SEED={seed:#x} reuses it)");
    let mut rng = Rng(seed);
    // A guard against a hang, not a measure of speed: each kill costs a
    // server start, a handshake, the census, up to 1.2 s of play and two
    // audits.
    let test_deadline = Instant::now() + Duration::from_secs(240);
    let mut players = vec![Player::new(1, 2), Player::new(2, 1)];
    let mut kills = 0;
    let mut last_metrics = String::new();
    while kills < KILLS {
        assert!(Instant::now() < test_deadline, "only {kills} kills in time");
        let (mut child, listening) = start_server(&dir);
        let (game, metrics) = (listening.public, listening.metrics);
        let start = Instant::now();
        for p in &mut players {
            let mut endpoint = ClientEndpoint::new(PROTOCOL_ID, channels::transport_config());
            endpoint
                .connect(&dev_token(game, p.account), start, unix_secs())
                .unwrap();
            p.socket = Some(ClientSocket::bind("127.0.0.1:0".parse().unwrap(), endpoint).unwrap());
            p.welcomed = false;
            p.probe = None;
            p.census = None;
            p.open_trade = None;
            p.world.clear();
            p.floor = p.tracker.inventory().map_or(0, |i| i.version);
        }
        // Play for a pseudo-random while after the census.
        let play_for = Duration::from_millis(300 + rng.below(900));
        let mut phase = Phase::Recovering;
        let session_deadline = start + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            assert!(
                now < session_deadline,
                "session {kills} never got going ({phase:?})"
            );
            if let Phase::Playing(t) = phase
                && now >= t + play_for
            {
                break;
            }
            let playing = matches!(phase, Phase::Playing(_));
            for p in &mut players {
                let socket = p.socket.as_mut().unwrap();
                let _ = socket.pump(now);
                let mut events = Vec::new();
                while let Some(event) = socket.endpoint.poll_event() {
                    if let ClientEndpointEvent::Message { payload, .. } = event {
                        events.push(payload.to_vec());
                    }
                }
                for payload in events {
                    match protocol::message_id(&payload) {
                        Some(Welcome::ID) => {
                            p.welcomed = true;
                            p.send_echoes(&mut rng, now);
                            p.resend_pending(now);
                        }
                        Some(InventoryReply::ID) => {
                            p.on_reply(protocol::decode(&payload).unwrap(), now);
                        }
                        Some(InventoryUpdate::ID) => {
                            let update: InventoryUpdate = protocol::decode(&payload).unwrap();
                            p.tracker.on_update(&update).unwrap();
                        }
                        Some(WorldItems::ID) => {
                            let items: WorldItems = protocol::decode(&payload).unwrap();
                            p.world = items.items.iter().map(|w| w.id).take(32).collect();
                        }
                        Some(TradeUpdate::ID) => {
                            let update: TradeUpdate = protocol::decode(&payload).unwrap();
                            p.on_trade(&update, playing, &mut rng, now);
                        }
                        _ => {}
                    }
                }
                if playing && p.tracker.pending().count() < IN_FLIGHT {
                    let op = p.next_op(&mut rng);
                    p.send(op, now);
                }
            }
            match phase {
                Phase::Recovering if players.iter().all(Player::settled) => {
                    for p in &mut players {
                        p.probe = Some(p.send(InventoryOp::List, now));
                    }
                    phase = Phase::Census;
                }
                Phase::Census if players.iter().all(|p| p.census.is_some()) => {
                    check_census(&players, &dir, kills);
                    phase = Phase::Playing(Instant::now());
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if kills + 1 == KILLS {
            last_metrics = scrape_metrics(metrics);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        check_stored(&players, &dir, kills);
        // What the crash left: every acknowledged use is stored, and at
        // most the unanswered ones besides.
        let report = audit(&dir);
        let consumed: u64 = audit_totals(&report, "consumed").values().sum();
        let acked_uses: u64 = players.iter().map(|p| p.tally.uses).sum();
        let unanswered_uses = players
            .iter()
            .flat_map(|p| p.tracker.pending())
            .filter(|r| matches!(r.op, InventoryOp::Use { .. }))
            .count() as u64;
        assert!(
            (acked_uses..=acked_uses + unanswered_uses).contains(&consumed),
            "after kill {kills}: {consumed} items consumed in the store, {acked_uses} uses \
             acknowledged and {unanswered_uses} unanswered"
        );
        for p in &mut players {
            p.socket = None;
        }
    }
    let acked: u64 = players.iter().map(|p| p.acked).sum();
    let ok = |name: &str| players.iter().map(|p| p.tally.ok(name)).sum::<u64>();
    let completed = completed_trades(&players[0].tally, &players[1].tally);
    let echoes: u64 = players.iter().map(|p| p.echoes_checked).sum();
    let retried: u64 = players.iter().map(|p| p.retried).sum();
    let seen: u64 = players.iter().map(|p| p.trades_seen).sum();
    println!(
        "{kills} kills, {acked} acknowledged operations, {retried} requests retried after a \
         restart, {echoes} echoes answered as before, {completed} trades completed \
         ({seen} completions seen per side)"
    );
    println!("acknowledged by operation: {:?}", {
        let mut all = players[0].tally.ok.clone();
        for (name, n) in &players[1].tally.ok {
            *all.entry(name).or_default() += n;
        }
        all
    });
    for line in last_metrics.lines().filter(|l| {
        l.starts_with("inventory_op_seconds")
            || l.starts_with("inventory_commit_seconds")
            || l.starts_with("inventory_tick_seconds")
            || l.starts_with("tick_duration")
    }) {
        println!("{line}");
    }
    for p in &players {
        assert_eq!(
            p.probes_checked, KILLS,
            "account {}: sessions checked",
            p.account
        );
    }
    assert!(acked > 50, "the clients got {acked} operations through");
    for name in [
        "pick_up",
        "move (split)",
        "move (swap)",
        "drop",
        "use",
        "give",
        "offer",
        "accept",
        "cancel",
    ] {
        assert!(ok(name) > 0, "no {name} was acknowledged");
    }
    assert!(completed > 0, "no trade completed");
    assert!(retried > 0, "no request was left unanswered by a crash");
    assert!(
        echoes >= u64::from(KILLS),
        "only {echoes} acknowledged changes were sent again"
    );
    let report = audit(&dir);
    assert!(report["accounts"].as_u64().unwrap() >= 2);
    let _ = std::fs::remove_dir_all(&dir);
}
