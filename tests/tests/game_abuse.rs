//! Game-logic abuse from connected clients, against the real server binary:
//! speed hacks, teleport attempts and NaN/infinite velocities are clamped
//! or dropped and counted in `movement_violations_total{kind}`; an
//! inventory-request flood is answered (every request exactly once) with
//! `Busy` beyond the queue bound, never queued without limit; a chat flood
//! is rate-limited, then muted, then kicked, and counted in
//! `chat_rejected_total` and `chat_kicks_total`. An honest player stays
//! connected throughout.
//!
//! Not covered here: trade races (offer/accept/cancel interleavings over
//! the network); `server/tests/inventory_core.rs` covers the atomic swap
//! and cancellation by disconnect in process.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use e2e::{
    RawClient, ServerOptions, ServerProcess, connect_honest, ended, mib, play_all, play_for,
    raw_send,
};
use glam::Vec2;
use shared::movement::SnapshotReceiver;
use shared::protocol::chat::{ChatLine, ChatRejectReason, ChatRejected, ChatScope, ChatSend};
use shared::protocol::inventory::{InventoryError, InventoryOp, InventoryReply, InventoryRequest};
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
                        let _ = self.snapshots.apply(&snapshot);
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

    // A speed hack: 1e6 m/s for a second is clamped to the maximum speed.
    let began = Instant::now();
    cheater.move_for(Vec2::new(1e6, 0.0), 30);
    cheater.wait(Duration::from_millis(300));
    let elapsed = began.elapsed().as_secs_f32();
    let after_fast = cheater.position();
    let moved = after_fast.distance(after_nan);
    eprintln!("speed hack 1e6 m/s: moved {moved:.2} m in {elapsed:.2} s");
    assert!(
        moved > 0.5,
        "a clamped input still moves the player: {moved}"
    );
    assert!(
        moved <= MAX_SPEED * (elapsed + 0.2),
        "moved {moved} m in {elapsed} s at most {MAX_SPEED} m/s"
    );
    assert!(violations(&server, "speed") >= 25.0);

    // 1e30 m/s: the squared length overflows f32; the server still clamps
    // it to the maximum speed, never faster.
    let began = Instant::now();
    cheater.move_for(Vec2::new(1e30, 1e30), 15);
    cheater.wait(Duration::from_millis(300));
    let elapsed = began.elapsed().as_secs_f32();
    let after_speed = cheater.position();
    let moved = after_speed.distance(after_fast);
    eprintln!("speed hack 1e30 m/s: moved {moved:.2} m in {elapsed:.2} s");
    assert!(after_speed.is_finite());
    assert!(moved <= MAX_SPEED * (elapsed + 0.2));

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
    cheater.wait(Duration::from_millis(500));
    let after_burst = cheater.position();
    let jumped = after_burst.distance(after_speed);
    eprintln!("300-input burst: moved {jumped:.2} m");
    assert!(
        jumped <= 8.0 * MAX_SPEED / TICK_HZ,
        "a burst of inputs teleported the player {jumped} m"
    );
    let dropped = violations(&server, "flood") + violations(&server, "rate");
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
    assert!(server.metric("inventory_requests_total") - requests_before >= FLOOD as f64);
    assert!(rss_after.saturating_sub(rss_before) < 16 << 20);
    assert!(flooder.raw.server_reason.is_none());
    play_for(&mut honest, Duration::from_millis(200));
    assert!(ended(&honest).is_empty(), "{:?}", ended(&honest));
}

#[test]
fn a_chat_flood_is_rate_limited_then_muted_then_kicked_and_counted() {
    let server = ServerProcess::start(&ServerOptions::default());
    let mut honest = connect_honest(server.game, 1, 2, Duration::from_secs(5));
    for client in &mut honest {
        client.set_chat_interval(None);
    }
    let mut spammer = Abuser::connect(&server, 300);
    let rejected_before = server.metric("chat_rejected_total");

    // Default rules: burst 10, then 5 offences (rate-limited or muted
    // sends) per mute, and the would-be third mute is a kick. In three
    // rounds so the answers of each arrive before the kick closes the
    // connection (the send that gets its sender kicked goes unanswered).
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
        // The last round ends with the kick.
        let expected = if round == 2 { 24 } else { client_ref as usize };
        while answered(&spammer) < expected
            && spammer.raw.server_reason.is_none()
            && Instant::now() < deadline
        {
            spammer.wait(Duration::from_millis(10));
            play_all(&mut honest);
        }
        if round < 2 {
            assert_eq!(answered(&spammer), expected, "round {round}");
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
    // The first rejection is a rate limit, and a mute comes after it.
    assert_eq!(
        rejections.first().map(|r| r.reason),
        Some(ChatRejectReason::RateLimited)
    );

    play_for(&mut honest, Duration::from_millis(300));
    assert!(server.metric("chat_rejected_total") - rejected_before >= 10.0);
    assert_eq!(server.metric("chat_kicks_total"), 1.0);
    // The honest players saw at most the burst, in sequence, and stayed.
    assert!(ended(&honest).is_empty(), "{:?}", ended(&honest));
    for client in &honest {
        assert_eq!(client.seen.chat_lines, 10);
        assert!(!client.seen.chat_sequence_broken);
    }
}
