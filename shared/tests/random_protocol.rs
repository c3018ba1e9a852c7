//! Seeded random-input tests for the handshake, the message codec and the
//! snapshot receiver: the CI stand-ins for the fuzz targets
//! `connect_token`, `netcode_server_datagram`, `protocol_decode` and
//! `snapshot_apply` in `shared/fuzz/` (see its README). Random,
//! truncated and bit-flipped inputs never panic, and every loop is bounded.
//! Keys, nonces and clocks are seeded and fixed: a failure replays.

#![expect(
    clippy::disallowed_methods,
    reason = "tests anchor virtual time at a real Instant"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use shared::movement::{ApplyScratch, MAX_SNAPSHOT_ENTITIES, SnapshotReceiver};
use shared::netcode::{
    self, CONNECT_TOKEN_BYTES, ConnectToken, MAX_PACKET_BYTES, ServerConfig, ServerEvent,
    TokenParams, USER_DATA_BYTES,
};
use shared::protocol::chat::{ChatLine, ChatRejected, ChatSend};
use shared::protocol::inventory::{
    InventoryReply, InventoryRequest, InventoryUpdate, TradeUpdate, WorldItems,
};
use shared::protocol::messages::{Emote, EmoteRequest, ServerNotice, Welcome};
use shared::protocol::movement::{EntityAdded, EntityMoved, MoveInput, Snapshot};
use shared::protocol::{self, NetMessage, PROTOCOL_ID};

mod support;

use support::{Rng, SeededRng};

/// The wall clock of every token and server here.
const UNIX: u64 = 1_700_000_000;

fn server_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().expect("an address")
}

/// A token minted at [`UNIX`] with the dev key, its keys and nonce from
/// `id`.
fn dev_token(id: u64) -> ConnectToken {
    let params = TokenParams {
        protocol_id: PROTOCOL_ID,
        client_id: id,
        create_timestamp: UNIX,
        expire_seconds: 60,
        timeout_seconds: 10,
        server_addresses: vec![server_addr()],
        user_data: [0; USER_DATA_BYTES],
    };
    ConnectToken::generate(&params, &shared::keys::dev_key(), &mut SeededRng(id))
        .expect("mint a token")
}

/// A netcode server whose keys come from `seed`.
fn server(seed: u64) -> netcode::Server {
    netcode::Server::new(
        ServerConfig::new(PROTOCOL_ID, shared::keys::dev_key(), vec![server_addr()]),
        &mut SeededRng(seed),
    )
    .expect("a server")
}

/// Connects a client from `from` to `server` and returns it with a
/// payload of its session the server was not given, for a flood to replay
/// and mutate.
fn live_session(
    server: &mut netcode::Server,
    id: u64,
    from: SocketAddr,
    now: Instant,
) -> (netcode::Client, Vec<u8>) {
    let mut client = netcode::Client::new(netcode::ClientConfig::new(PROTOCOL_ID));
    client.connect(&dev_token(id), now, UNIX).expect("connect");
    let (mut buf, mut out) = (vec![0u8; MAX_PACKET_BYTES], vec![0u8; MAX_PACKET_BYTES]);
    for _ in 0..8 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            server.handle_datagram(now, UNIX, from, &mut buf[..t.len]);
        }
        while let Some(t) = server.poll_transmit(now, &mut out) {
            client.handle_datagram(now, server_addr(), &mut out[..t.len]);
        }
    }
    while server.poll_event().is_some() {}
    assert_eq!(client.state(), netcode::ClientState::Connected);
    assert!(
        server.client_at(from).is_some(),
        "the server has the session"
    );
    let t = client
        .send_payload(now, b"input", &mut buf)
        .expect("a payload");
    let payload = buf[..t.len].to_vec();
    (client, payload)
}

#[test]
fn random_and_mutated_connect_tokens_never_panic() {
    let mut rng = Rng(0x70CE);
    let valid = dev_token(7).to_bytes();
    assert!(ConnectToken::from_bytes(&valid).is_ok());
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut bytes = if rng.below(2) == 0 {
            valid.to_vec()
        } else {
            rng.bytes(CONNECT_TOKEN_BYTES as u64 + 64)
        };
        rng.mutate(&mut bytes);
        if let Ok(token) = ConnectToken::from_bytes(&bytes) {
            accepted += 1;
            // Whatever parses re-encodes to a token that parses.
            assert!(ConnectToken::from_bytes(&token.to_bytes()).is_ok());
        }
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let _ = ConnectToken::from_base64(&text);
        // Raw bytes as (lossy) text: invalid base64 of every shape.
        let _ = ConnectToken::from_base64(&String::from_utf8_lossy(&bytes));
    }
    // Mutations in the private (encrypted) part still parse: it is opaque
    // to the client.
    assert!(accepted > 0);
}

#[test]
fn random_request_shaped_datagrams_never_panic_the_netcode_server() {
    let mut rng = Rng(0x5E4E);
    const SEED: u64 = 0x5E4E;
    let mut server = server(SEED);
    // Templates: real connection requests, and a live session's sealed
    // payload and disconnect packets, which open under its key: from any
    // other address than its own, untouched or mutated, they must neither
    // connect anything nor end the session.
    let start = Instant::now();
    let mut templates: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    for id in 0..4 {
        let mut client = netcode::Client::new(netcode::ClientConfig::new(PROTOCOL_ID));
        client
            .connect(&dev_token(100 + id), start, UNIX)
            .expect("connect");
        if let Some(t) = client.poll_transmit(start, &mut buf) {
            templates.push(buf[..t.len].to_vec());
        }
    }
    // Their addresses are none of the flood's (127.0.x.y port 5000).
    let player = SocketAddr::from(([127, 9, 9, 9], 6_000));
    let (mut client, payload) = live_session(&mut server, 200, player, start);
    templates.push(payload);
    // A second session's disconnect packets, which its server never got.
    let leaver = SocketAddr::from(([127, 9, 9, 10], 6_000));
    let (mut leaving, _) = live_session(&mut server, 201, leaver, start);
    leaving.disconnect();
    while let Some(t) = leaving.poll_transmit(start, &mut buf) {
        templates.push(buf[..t.len].to_vec());
    }
    let mut now = start;
    let mut out = vec![0u8; MAX_PACKET_BYTES];
    let mut connected = 0;
    for i in 0..20_000u32 {
        let mut datagram = match rng.below(4) {
            0 => rng.bytes(1_300),
            _ => templates[rng.below(templates.len() as u64) as usize].clone(),
        };
        // A replay a quarter of the time; otherwise mutated.
        if rng.below(4) != 0 {
            rng.mutate(&mut datagram);
        }
        let from = SocketAddr::from(([127, 0, (i % 7) as u8, 1 + (i % 200) as u8], 5_000));
        if let Some(ServerEvent::ClientConnected { .. }) =
            server.handle_datagram(now, UNIX, from, &mut datagram)
        {
            connected += 1;
        }
        // Bounded drains: the server owes at most one answer per datagram
        // plus its keep-alives.
        for _ in 0..1_000 {
            if server.poll_transmit(now, &mut out).is_none() {
                break;
            }
        }
        for _ in 0..1_000 {
            if server.poll_event().is_none() {
                break;
            }
        }
        if i % 100 == 0 {
            now += Duration::from_millis(10);
            server.handle_timeout(now);
        }
    }
    // No client completes a handshake from requests, mutations or packets
    // from an address they are not from; the live session's own packets,
    // replayed from elsewhere, did not end it: its next payload opens.
    assert_eq!(connected, 0);
    assert!(
        server.client_at(player).is_some(),
        "the flood ended the session"
    );
    assert!(
        server.client_at(leaver).is_some(),
        "the flood's replayed disconnect packets ended a session"
    );
    let t = client
        .send_payload(now, b"still here", &mut buf)
        .expect("a payload");
    let opened = matches!(
        server.handle_datagram(now, UNIX, player, &mut buf[..t.len]),
        Some(ServerEvent::Payload { data, .. }) if data == b"still here"
    );
    assert!(opened, "the session's next payload did not open");
}

/// Decodes random and mutated payloads as `M`; whatever decodes re-encodes.
fn decode_randomly<M: NetMessage + Clone>(rng: &mut Rng, sample: &M, rounds: u32) -> u32 {
    let valid = protocol::encode(sample).expect("encode").to_vec();
    assert!(protocol::decode::<M>(&valid).is_ok());
    let mut decoded = 0;
    for _ in 0..rounds {
        let mut payload = match rng.below(3) {
            0 => rng.bytes(300),
            1 => {
                let mut p = M::ID.to_le_bytes().to_vec();
                p.extend(rng.bytes(300));
                p
            }
            _ => valid.clone(),
        };
        rng.mutate(&mut payload);
        if let Ok(message) = protocol::decode::<M>(&payload) {
            decoded += 1;
            let again = protocol::encode(&message).expect("re-encode what decoded");
            assert!(protocol::decode::<M>(&again).is_ok());
        }
    }
    decoded
}

#[test]
fn every_message_type_decodes_random_bytes_without_panic() {
    let mut rng = Rng(0xDEC0DE);
    let snapshot = Snapshot {
        tick: 9,
        baseline_age: 0,
        last_input: 3,
        you: 1,
        id_base: 0,
        removed: vec![],
        added: vec![
            EntityAdded {
                id_gap: 1,
                x: 10,
                y: -4,
            },
            EntityAdded {
                id_gap: 2,
                x: 0,
                y: 7,
            },
        ],
        moved: vec![],
    };
    let rounds = 5_000;
    let mut decoded = 0;
    decoded += decode_randomly(
        &mut rng,
        &Welcome {
            client_id: 5,
            tick_hz: 30,
            rules: shared::movement::MovementRules::default(),
        },
        rounds,
    );
    decoded += decode_randomly(
        &mut rng,
        &ServerNotice {
            text: "hello".into(),
        },
        rounds,
    );
    decoded += decode_randomly(
        &mut rng,
        &MoveInput {
            seq: 1,
            velocity: glam::Vec2::new(1.0, 2.0),
            ack_snapshot: 0,
        },
        rounds,
    );
    decoded += decode_randomly(&mut rng, &snapshot, rounds);
    decoded += decode_randomly(
        &mut rng,
        &ChatSend {
            scope: shared::protocol::chat::ChatScope::Global,
            text: "hi".into(),
            client_ref: 1,
        },
        rounds,
    );
    decoded += decode_randomly(
        &mut rng,
        &InventoryRequest {
            request_id: 1,
            op: shared::protocol::inventory::InventoryOp::List,
        },
        rounds,
    );
    // The server → client types: decoded from random bytes only (their
    // samples would need the whole inventory model).
    for _ in 0..rounds {
        let mut payload = rng.bytes(300);
        rng.mutate(&mut payload);
        for id in [
            ChatLine::ID,
            ChatRejected::ID,
            InventoryReply::ID,
            InventoryUpdate::ID,
            TradeUpdate::ID,
            WorldItems::ID,
            Emote::ID,
            EmoteRequest::ID,
        ] {
            if payload.len() >= 2 {
                payload[..2].copy_from_slice(&id.to_le_bytes());
            }
            let _ = protocol::decode::<ChatLine>(&payload);
            let _ = protocol::decode::<ChatRejected>(&payload);
            let _ = protocol::decode::<InventoryReply>(&payload);
            let _ = protocol::decode::<InventoryUpdate>(&payload);
            let _ = protocol::decode::<TradeUpdate>(&payload);
            let _ = protocol::decode::<WorldItems>(&payload);
            let _ = protocol::decode::<Emote>(&payload);
            let _ = protocol::decode::<EmoteRequest>(&payload);
        }
    }
    assert!(decoded > 0, "some mutations still decode");
}

#[test]
fn a_length_prefix_claiming_gigabytes_is_refused_without_allocating_it() {
    // ServerNotice { text }: a varint length of u64::MAX - 1, then nothing.
    let mut payload = ServerNotice::ID.to_le_bytes().to_vec();
    payload.push(0xFF);
    payload.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
    assert!(protocol::decode::<ServerNotice>(&payload).is_err());
    let mut payload = Snapshot::ID.to_le_bytes().to_vec();
    payload.extend_from_slice(&[1, 0, 0, 1, 0]);
    payload.push(0xFD);
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(protocol::decode::<Snapshot>(&payload).is_err());
}

fn random_snapshot(rng: &mut Rng, tick: u32) -> Snapshot {
    let small = |rng: &mut Rng| -> u32 {
        match rng.below(4) {
            0 => rng.next() as u32,
            _ => rng.below(40) as u32,
        }
    };
    let count = |rng: &mut Rng| {
        let max = if rng.below(50) == 0 { 5_000 } else { 30 };
        rng.below(max) as usize
    };
    let n_removed = count(rng);
    let n_added = count(rng);
    let n_moved = count(rng);
    Snapshot {
        tick,
        baseline_age: if rng.below(2) == 0 { 0 } else { small(rng) },
        last_input: rng.next() as u32,
        you: small(rng),
        id_base: small(rng),
        removed: (0..n_removed).map(|_| small(rng)).collect(),
        added: (0..n_added)
            .map(|_| EntityAdded {
                id_gap: small(rng),
                x: rng.next() as i32,
                y: rng.next() as i32,
            })
            .collect(),
        moved: (0..n_moved)
            .map(|_| EntityMoved {
                id_gap: small(rng),
                dx: rng.next() as i32,
                dy: rng.next() as i32,
            })
            .collect(),
    }
}

#[test]
fn the_snapshot_receiver_survives_random_and_mutated_snapshots() {
    let mut rng = Rng(0x5A4B);
    let mut receiver = SnapshotReceiver::new();
    let mut lists = ApplyScratch::default();
    let mut applied = 0;
    // The tick of the last snapshot this receiver applied.
    let mut latest = 0;
    let mut tick = 0u32;
    for round in 0..20_000u32 {
        tick = match rng.below(10) {
            0 => rng.next() as u32,
            1 => tick.saturating_sub(rng.below(5) as u32),
            _ => tick.wrapping_add(1 + rng.below(3) as u32),
        };
        let snapshot = if rng.below(3) == 0 {
            // Decoded from mutated bytes, as off the wire.
            let mut bytes = protocol::encode(&random_snapshot(&mut rng, tick))
                .expect("encode")
                .to_vec();
            rng.mutate(&mut bytes);
            match protocol::decode::<Snapshot>(&bytes) {
                Ok(s) => s,
                Err(_) => continue,
            }
        } else {
            random_snapshot(&mut rng, tick)
        };
        if receiver.apply(&snapshot, &mut lists).is_ok() {
            applied += 1;
            latest = snapshot.tick;
        }
        assert!(receiver.entities().len() <= MAX_SNAPSHOT_ENTITIES);
        if let Some(position) = receiver.own_position() {
            assert!(position.is_finite());
        }
        // What the receiver keeps at hand agrees with its latest frame,
        // after a refused snapshot too.
        assert_eq!(
            receiver.own_position(),
            receiver.you().and_then(|id| receiver.position(id))
        );
        assert_eq!(receiver.ack(), latest);
        if round % 1_000 == 999 {
            receiver = SnapshotReceiver::new();
            latest = 0;
        }
    }
    assert!(applied > 0, "some random snapshots are valid");
}
