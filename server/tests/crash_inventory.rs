//! Crash safety over real processes: two clients pick up world items,
//! move, drop, use and trade while the server binary is killed with
//! SIGKILL at pseudo-random moments (24 times), then restarted on the same
//! data directory. After every kill `server audit` must report an intact,
//! balanced store, and after every restart each client's inventory must be
//! at least as new as the newest state the server ever acknowledged to it
//! (same version ⇒ same contents; the tracker checks that), and requests
//! left unanswered by the crash are retried with their ids.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::readiness::Listening;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent};
use shared::io::{ClientSocket, unix_secs};
use shared::netcode::ConnectToken;
use shared::protocol::inventory::{
    InventoryOp, InventoryReply, InventoryTracker, InventoryUpdate, TradeOffer, TradeState,
    TradeUpdate, WorldItems,
};
use shared::protocol::messages::Welcome;
use shared::protocol::{self, NetMessage, PROTOCOL_ID, channels};

mod support;

use support::{KillOnDrop, start_listening};

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const KILLS: u32 = 24;
const IN_FLIGHT: usize = 3;

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

fn audit(dir: &Path) -> serde_json::Value {
    let out = Command::new(SERVER)
        .arg("audit")
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("audit printed no JSON ({e}): {out:?}"));
    assert!(out.status.success(), "audit failed: {report}");
    assert_eq!(report["integrity_ok"], true);
    assert_eq!(report["balanced"], true);
    assert_eq!(report["consistent"], true, "{report}");
    report
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

struct Player {
    account: u64,
    other: u64,
    tracker: InventoryTracker,
    world: Vec<u64>,
    socket: Option<ClientSocket>,
    welcomed: bool,
    /// The version every restart must reach: the newest acknowledged.
    floor: u64,
    /// The id of the post-restart List whose reply is checked.
    probe: Option<u64>,
    /// Sessions whose probe was answered (and checked).
    probes_checked: u32,
    acked: u64,
    pickups: u64,
    trades: u64,
}

impl Player {
    fn send(&mut self, op: InventoryOp, now: Instant) {
        let request = self.tracker.request(op);
        let socket = self.socket.as_mut().unwrap();
        let _ = socket
            .endpoint
            .send(channels::INVENTORY, protocol::encode(&request).unwrap());
        socket.flush(now);
    }

    fn resend_pending(&mut self, now: Instant) {
        let pending: Vec<_> = self.tracker.pending().collect();
        let socket = self.socket.as_mut().unwrap();
        for request in pending {
            let _ = socket
                .endpoint
                .send(channels::INVENTORY, protocol::encode(&request).unwrap());
        }
        socket.flush(now);
    }

    fn next_op(&mut self, rng: &mut Rng) -> InventoryOp {
        let filled: Vec<u16> = self
            .tracker
            .inventory()
            .map(|inv| {
                inv.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_some())
                    .map(|(i, _)| i as u16)
                    .collect()
            })
            .unwrap_or_default();
        let any_slot = |rng: &mut Rng| filled[rng.below(filled.len() as u64) as usize];
        match rng.below(10) {
            0..=3 if !self.world.is_empty() => {
                let i = rng.below(self.world.len() as u64) as usize;
                InventoryOp::PickUp {
                    world_item: self.world.swap_remove(i),
                }
            }
            4 if !filled.is_empty() => InventoryOp::Move {
                from: any_slot(rng),
                to: rng.below(24) as u16,
                count: 1,
            },
            5 if !filled.is_empty() => InventoryOp::Drop {
                slot: any_slot(rng),
                count: 1,
            },
            6 if !filled.is_empty() => InventoryOp::Use {
                slot: any_slot(rng),
            },
            7 | 8 if !filled.is_empty() => InventoryOp::Offer {
                with: self.other,
                offer: TradeOffer {
                    items: vec![(any_slot(rng), 1)],
                },
            },
            _ => InventoryOp::ListWorld,
        }
    }
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
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // A guard against a hang, not a measure of speed: each kill costs a
    // server start, a handshake, up to 1.2 s of play and an audit.
    let test_deadline = Instant::now() + Duration::from_secs(240);
    let mut players: Vec<Player> = [(1u64, 2u64), (2, 1)]
        .into_iter()
        .map(|(account, other)| Player {
            account,
            other,
            tracker: InventoryTracker::starting_at(1),
            world: Vec::new(),
            socket: None,
            welcomed: false,
            floor: 0,
            probe: None,
            probes_checked: 0,
            acked: 0,
            pickups: 0,
            trades: 0,
        })
        .collect();
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
            p.world.clear();
            p.floor = p.tracker.inventory().map_or(0, |i| i.version);
        }
        // Play for a pseudo-random while after both are in.
        let play_for = Duration::from_millis(300 + rng.below(900));
        let mut both_in: Option<Instant> = None;
        let session_deadline = start + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            assert!(now < session_deadline, "session {kills} never got going");
            if let Some(t) = both_in
                && now >= t + play_for
            {
                break;
            }
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
                            p.resend_pending(now);
                            let probe = p.tracker.request(InventoryOp::List);
                            p.probe = Some(probe.request_id);
                            let socket = p.socket.as_mut().unwrap();
                            let _ = socket
                                .endpoint
                                .send(channels::INVENTORY, protocol::encode(&probe).unwrap());
                            socket.flush(now);
                        }
                        Some(InventoryReply::ID) => {
                            let reply: InventoryReply = protocol::decode(&payload).unwrap();
                            if p.probe == Some(reply.request_id) {
                                p.probe = None;
                                p.probes_checked += 1;
                                let inv = reply.result.as_ref().expect("list after restart");
                                assert!(
                                    inv.version >= p.floor,
                                    "account {}: acknowledged version {} lost (found {})",
                                    p.account,
                                    p.floor,
                                    inv.version
                                );
                            }
                            let op = p
                                .tracker
                                .on_reply(&reply)
                                .unwrap_or_else(|e| panic!("account {}: {e}", p.account));
                            if reply.result.is_ok() {
                                p.acked += 1;
                                if matches!(op, InventoryOp::PickUp { .. }) {
                                    p.pickups += 1;
                                }
                            }
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
                            match update.state {
                                TradeState::Open {
                                    initiator_accepted,
                                    partner_accepted,
                                } => {
                                    let mine = if update.initiator == p.account {
                                        initiator_accepted
                                    } else {
                                        partner_accepted
                                    };
                                    if !mine {
                                        p.send(
                                            InventoryOp::Accept {
                                                trade: update.trade,
                                                revision: update.revision,
                                            },
                                            now,
                                        );
                                    }
                                }
                                TradeState::Completed => p.trades += 1,
                                TradeState::Cancelled => {}
                            }
                        }
                        _ => {}
                    }
                }
                if p.welcomed && p.tracker.pending().count() < IN_FLIGHT {
                    let op = p.next_op(&mut rng);
                    p.send(op, now);
                }
            }
            // Play starts once both have checked their inventory after
            // the restart (every session checks it).
            if both_in.is_none() && players.iter().all(|p| p.welcomed && p.probe.is_none()) {
                both_in = Some(now);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if kills + 1 == KILLS {
            last_metrics = scrape_metrics(metrics);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        audit(&dir);
        for p in &mut players {
            p.socket = None;
        }
    }
    let acked: u64 = players.iter().map(|p| p.acked).sum();
    let pickups: u64 = players.iter().map(|p| p.pickups).sum();
    let trades: u64 = players.iter().map(|p| p.trades).sum();
    println!(
        "{kills} kills, {acked} acknowledged operations, {pickups} pickups, {trades} trade completions (seen per side)"
    );
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
    assert!(pickups > 0, "nothing was picked up");
    let report = audit(&dir);
    assert!(report["accounts"].as_u64().unwrap() >= 2);
    let _ = std::fs::remove_dir_all(&dir);
}
