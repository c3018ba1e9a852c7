//! In-memory protocol tests: handshake, payloads, rejections, nonces,
//! amplification, scale, and golden vectors against the reference C output.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::crypto::PacketCipher;
use super::packet::{self, PacketKind, Side};
use super::token::{self, PrivateConnectToken};
use super::*;

const PROTOCOL: u64 = 0x1122_3344_5566_7788;
const UNIX: u64 = 1_700_000_000;

/// Deterministic test randomness (splitmix64); never use outside tests.
pub(crate) struct TestRng(pub(crate) u64);

impl rand_core::TryRng for TestRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}
impl rand_core::TryCryptoRng for TestRng {}

fn server_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn client_addr(i: u32) -> SocketAddr {
    let b = (i + 1).to_be_bytes();
    SocketAddr::from(([127, b[1], b[2], b[3]], 50000))
}

fn params(client_id: u64) -> TokenParams {
    TokenParams {
        protocol_id: PROTOCOL,
        client_id,
        create_timestamp: UNIX,
        expire_seconds: 30,
        timeout_seconds: 5,
        server_addresses: vec![server_addr()],
        user_data: [client_id as u8; USER_DATA_BYTES],
    }
}

/// A server plus its key, on virtual time.
struct World {
    server: Server,
    key: Key,
    rng: TestRng,
    now: Instant,
    /// Every datagram the server sent, for nonce and size checks.
    server_sent: Vec<(SocketAddr, Vec<u8>)>,
}

impl World {
    fn new(max_clients: usize) -> Self {
        let mut rng = TestRng(7);
        let key = Key::generate(&mut rng);
        let mut config = ServerConfig::new(PROTOCOL, key, vec![server_addr()]);
        config.max_clients = max_clients;
        config.max_pending = max_clients.max(16);
        config.max_token_entries = max_clients.max(16) * 2;
        let server = Server::new(config, &mut rng).unwrap();
        Self {
            server,
            key,
            rng,
            now: Instant::now(),
            server_sent: Vec::new(),
        }
    }

    fn token(&mut self, client_id: u64) -> ConnectToken {
        ConnectToken::generate(&params(client_id), &self.key, &mut self.rng).unwrap()
    }

    fn deliver_to_server(&mut self, from: SocketAddr, bytes: &[u8]) -> Option<String> {
        let mut buf = bytes.to_vec();
        self.server
            .handle_datagram(self.now, UNIX, from, &mut buf)
            .map(|e| format!("{e:?}"))
    }

    /// Hands everything `client` at `addr` has to send to the server.
    fn send_from(&mut self, addr: SocketAddr, client: &mut Client) {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        while let Some(t) = client.poll_transmit(self.now, &mut buf) {
            self.server
                .handle_datagram(self.now, UNIX, addr, &mut buf[..t.len]);
        }
    }

    fn server_transmits(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_PACKET_BYTES];
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            out.push((t.destination, buf[..t.len].to_vec()));
        }
        self.server_sent.extend(out.iter().cloned());
        out
    }

    /// Shuttles datagrams between the server and `clients` until quiet.
    fn pump(&mut self, clients: &mut [(SocketAddr, Client)]) -> Vec<String> {
        let mut events = Vec::new();
        for _ in 0..16 {
            let mut moved = false;
            let mut buf = [0u8; MAX_PACKET_BYTES];
            for (addr, client) in clients.iter_mut() {
                while let Some(t) = client.poll_transmit(self.now, &mut buf) {
                    moved = true;
                    if let Some(e) =
                        self.server
                            .handle_datagram(self.now, UNIX, *addr, &mut buf[..t.len])
                    {
                        events.push(format!("{e:?}"));
                    }
                }
            }
            while let Some(e) = self.server.poll_event() {
                events.push(format!("{e:?}"));
            }
            for (to, bytes) in self.server_transmits() {
                moved = true;
                if let Some((_, c)) = clients.iter_mut().find(|(a, _)| *a == to) {
                    let mut b = bytes.clone();
                    c.handle_datagram(self.now, server_addr(), &mut b);
                }
            }
            if !moved {
                break;
            }
        }
        events
    }

    fn advance(&mut self, d: Duration, clients: &mut [(SocketAddr, Client)]) {
        self.now += d;
        self.server.handle_timeout(self.now);
        for (_, c) in clients.iter_mut() {
            c.handle_timeout(self.now);
        }
    }

    fn connected_pair(&mut self) -> (SocketAddr, Client) {
        let token = self.token(1);
        let mut client = Client::new(ClientConfig::new(PROTOCOL));
        client.connect(&token, self.now, UNIX).unwrap();
        let mut clients = [(client_addr(0), client)];
        self.pump(&mut clients);
        let [pair] = clients;
        assert_eq!(pair.1.state(), ClientState::Connected);
        pair
    }

    /// A client of account `client_id` at `client_addr(i)`, after the
    /// first exchange of its connection attempt.
    fn join(&mut self, client_id: u64, i: u32) -> [(SocketAddr, Client); 1] {
        let token = self.token(client_id);
        let mut client = Client::new(ClientConfig::new(PROTOCOL));
        client.connect(&token, self.now, UNIX).unwrap();
        let mut clients = [(client_addr(i), client)];
        self.pump(&mut clients);
        clients
    }

    /// Counters that must not move when a bad datagram arrives.
    fn state_summary(&self) -> (usize, usize, usize) {
        (
            self.server.num_connected(),
            self.server.num_pending(),
            self.server.num_token_entries(),
        )
    }
}

fn request_bytes(token: &ConnectToken) -> Vec<u8> {
    let mut buf = vec![0u8; CONNECTION_REQUEST_BYTES];
    packet::write_request(&mut buf, token).unwrap();
    buf
}

/// `token`'s request with its private data's tag broken: it fails to
/// decrypt.
fn junk_request(token: &ConnectToken) -> Vec<u8> {
    let mut buf = request_bytes(token);
    if let Some(last) = buf.last_mut() {
        *last ^= 1;
    }
    buf
}

#[test]
fn handshake_connects_and_payloads_flow_both_ways() {
    let mut w = World::new(4);
    let (addr, mut client) = w.connected_pair();
    assert_eq!(client.client_index(), Some(0));
    assert_eq!(client.max_clients(), Some(4));
    let slot = w.server.client_at(addr).unwrap();
    assert_eq!(w.server.client_id(slot), Some(1));
    assert_eq!(
        w.server.client_user_data(slot),
        Some(&[1u8; USER_DATA_BYTES])
    );

    let mut out = [0u8; MAX_PACKET_BYTES];
    let t = client
        .send_payload(w.now, b"hello server", &mut out)
        .unwrap();
    assert_eq!(t.destination, server_addr());
    let ev = w
        .server
        .handle_datagram(w.now, UNIX, addr, &mut out[..t.len]);
    assert_eq!(
        ev,
        Some(ServerEvent::Payload {
            client: slot,
            data: b"hello server"
        })
    );

    let t = w
        .server
        .send_payload(w.now, slot, b"hello client", &mut out)
        .unwrap();
    assert_eq!(t.destination, addr);
    let ev = client.handle_datagram(w.now, server_addr(), &mut out[..t.len]);
    assert_eq!(ev, Some(ClientEvent::Payload(b"hello client")));

    let mut big = [0u8; MAX_PAYLOAD_BYTES];
    big.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let t = client.send_payload(w.now, &big, &mut out).unwrap();
    assert_eq!(t.len, MAX_PACKET_BYTES - 7); // small sequence number
    match w
        .server
        .handle_datagram(w.now, UNIX, addr, &mut out[..t.len])
    {
        Some(ServerEvent::Payload { data, .. }) => assert_eq!(data, &big[..]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.send_payload(w.now, &[0; 1201], &mut out),
        Err(SendError::PayloadSize(1201))
    );
    assert_eq!(
        client.send_payload(w.now, &[], &mut out),
        Err(SendError::PayloadSize(0))
    );
}

#[test]
fn a_sender_looked_up_before_clients_joined_or_left_is_looked_up_again() {
    let mut w = World::new(4);
    let early = w.server.locate(w.server.lookup(client_addr(0)));
    assert_eq!(early.client(), None, "not connected yet");
    let (addr, mut client) = w.connected_pair();
    let slot = w.server.client_at(addr).unwrap();
    let mut out = [0u8; MAX_PACKET_BYTES];
    let t = client.send_payload(w.now, b"after", &mut out).unwrap();
    let ev = w
        .server
        .handle_located(w.now, UNIX, early, &mut out[..t.len]);
    assert_eq!(
        ev,
        Some(ServerEvent::Payload {
            client: slot,
            data: b"after"
        })
    );

    // A lookup that still stands is used as it is.
    let now = w.server.locate(w.server.lookup(addr));
    assert_eq!(now.client(), Some(slot));
    let t = client.send_payload(w.now, b"again", &mut out).unwrap();
    let ev = w.server.handle_located(w.now, UNIX, now, &mut out[..t.len]);
    assert!(matches!(ev, Some(ServerEvent::Payload { .. })), "{ev:?}");

    // Left since: the slot it found is nobody's now.
    client.disconnect();
    while let Some(t) = client.poll_transmit(w.now, &mut out) {
        w.deliver_to_server(addr, &out[..t.len]);
    }
    assert_eq!(w.server.num_connected(), 0);
    let mut late = out;
    assert!(
        w.server
            .handle_located(w.now, UNIX, now, &mut late)
            .is_none()
    );
}

#[test]
fn keepalives_hold_the_connection_and_silence_times_it_out() {
    let mut w = World::new(4);
    let pair = w.connected_pair();
    let mut clients = [pair];
    for _ in 0..200 {
        w.advance(Duration::from_millis(50), &mut clients);
        w.pump(&mut clients);
    }
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(w.server.num_connected(), 1);

    // Stop delivering: both sides time out after the token's 5 s.
    for _ in 0..120 {
        w.advance(Duration::from_millis(50), &mut clients);
        w.server_transmits();
    }
    assert_eq!(clients[0].1.state(), ClientState::ConnectionTimedOut);
    assert_eq!(w.server.num_connected(), 0);
    assert_eq!(w.server.stats().clients_timed_out, 1);
    let ev = format!("{:?}", w.server.poll_event());
    assert!(ev.contains("TimedOut"), "{ev}");
}

#[test]
fn client_disconnect_sends_ten_packets_and_frees_the_slot() {
    let mut w = World::new(4);
    let (addr, mut client) = w.connected_pair();
    client.disconnect();
    assert_eq!(client.state(), ClientState::Disconnected);
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut packets = Vec::new();
    while let Some(t) = client.poll_transmit(w.now, &mut buf) {
        packets.push(buf[..t.len].to_vec());
    }
    assert_eq!(packets.len(), NUM_DISCONNECT_PACKETS);
    let ev = w.deliver_to_server(addr, &packets[0]).unwrap();
    assert!(ev.contains("ClientDisconnected"), "{ev}");
    assert_eq!(w.server.num_connected(), 0);
    // The redundant copies are dropped quietly.
    for p in &packets[1..] {
        assert!(w.deliver_to_server(addr, p).is_none());
    }
}

/// Connecting with bytes that are no token ends the current connection as
/// `connect` does: with disconnect packets, so that the server frees the
/// slot and the account at once rather than after a timeout.
#[test]
fn a_token_that_does_not_parse_still_says_goodbye() {
    let mut w = World::new(4);
    let (addr, mut client) = w.connected_pair();
    assert!(client.connect_bytes(&[0; 10], w.now, UNIX).is_err());
    assert_eq!(client.state(), ClientState::InvalidConnectToken);
    let packets = drain(&mut client, w.now);
    assert_eq!(packets.len(), NUM_DISCONNECT_PACKETS);
    let ev = w.deliver_to_server(addr, &packets[0]).unwrap();
    assert!(ev.contains("ClientDisconnected"), "{ev}");
}

/// Everything `client` has queued for the server, in order.
fn drain(client: &mut Client, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut packets = Vec::new();
    while let Some(t) = client.poll_transmit(now, &mut buf) {
        packets.push(buf[..t.len].to_vec());
    }
    packets
}

#[test]
fn a_packet_from_an_earlier_connection_with_the_same_token_is_dropped() {
    let mut w = World::new(4);
    let token = w.token(1);
    let addr = client_addr(0);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, w.now, UNIX).unwrap();
    let mut clients = [(addr, client)];
    w.pump(&mut clients);
    let client = &mut clients[0].1;
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let t = client.send_payload(w.now, b"old", &mut buf).unwrap();
    let old_payload = buf[..t.len].to_vec();
    client.disconnect();
    let farewells = drain(client, w.now);
    let ev = w.deliver_to_server(addr, &farewells[0]).unwrap();
    assert!(ev.contains("ClientDisconnected"), "{ev}");

    client.connect(&token, w.now, UNIX).unwrap();
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(w.server.num_connected(), 1);
    let replayed = w.server.stats().dropped.get(DropReason::Replayed);
    // A late (or replayed) farewell and payload of the first connection.
    assert_eq!(w.deliver_to_server(addr, &farewells[5]), None);
    assert_eq!(w.deliver_to_server(addr, &old_payload), None);
    assert_eq!(w.server.num_connected(), 1);
    assert_eq!(
        w.server.stats().dropped.get(DropReason::Replayed),
        replayed + 2
    );
    // The new connection's own packets still arrive.
    let t = clients[0].1.send_payload(w.now, b"new", &mut buf).unwrap();
    let ev = w.deliver_to_server(addr, &buf[..t.len]).unwrap();
    assert!(ev.contains("Payload"), "{ev}");
}

/// The bearer of `theirs` keeps the challenge sent for it, then starts a
/// handshake with `mine` from `at` (an address it may not even receive at)
/// and answers that handshake with the kept challenge.
fn answer_with_a_kept_challenge(
    w: &mut World,
    theirs: &ConnectToken,
    mine: &ConnectToken,
    at: SocketAddr,
) -> Option<String> {
    w.deliver_to_server(client_addr(1), &request_bytes(theirs));
    let (to, mut challenge) = w.server_transmits().pop().unwrap();
    assert_eq!(to, client_addr(1));
    let header = packet::parse_header(&challenge, Side::Client).unwrap();
    assert_eq!(header.kind, PacketKind::Challenge);
    let keys = PacketCipher::new(&theirs.server_to_client_key);
    let body = packet::open_body(&mut challenge, &header, PROTOCOL, &keys)
        .unwrap()
        .to_vec();
    w.deliver_to_server(at, &request_bytes(mine));
    let mut response = [0u8; MAX_PACKET_BYTES];
    let len = packet::seal(
        &mut response,
        PacketKind::Response,
        0,
        &body,
        PROTOCOL,
        &PacketCipher::new(&mine.client_to_server_key),
    )
    .unwrap();
    w.deliver_to_server(at, &response[..len])
}

#[test]
fn a_challenge_minted_for_another_token_does_not_lend_its_identity() {
    let mut w = World::new(4);
    let (mine, theirs) = (w.token(1), w.token(2));
    assert_eq!(
        answer_with_a_kept_challenge(&mut w, &theirs, &mine, client_addr(0)),
        None
    );
    assert_eq!(w.server.client_by_id(2), None);
    assert_eq!(w.server.num_connected(), 0);
    assert_eq!(
        w.server.stats().dropped.get(DropReason::ChallengeInvalid),
        1
    );
}

#[test]
fn a_challenge_kept_from_another_token_of_the_same_account_proves_no_address() {
    // Two tokens of one account: the challenge sent to the address the
    // attacker receives at must not connect a spoofed address that never
    // saw its own challenge.
    let mut w = World::new(4);
    let (kept, spoofed) = (w.token(7), w.token(7));
    let victim = client_addr(0);
    assert_eq!(
        answer_with_a_kept_challenge(&mut w, &kept, &spoofed, victim),
        None
    );
    assert_eq!(w.server.client_at(victim), None);
    assert_eq!(w.server.num_connected(), 0);
    assert_eq!(
        w.server.stats().dropped.get(DropReason::ChallengeInvalid),
        1
    );
}

#[test]
fn a_wall_clock_that_steps_back_does_not_revive_a_purged_token() {
    let mut w = World::new(4); // a token table of 32
    let token = w.token(1);
    let at = client_addr(0);
    w.deliver_to_server(at, &request_bytes(&token));
    let (_, first) = w.server_transmits().pop().unwrap();
    for i in 0..31 {
        let other = w.token(100 + u64::from(i));
        w.deliver_to_server(client_addr(10 + i), &request_bytes(&other));
    }
    // A minute on, a new request finds the table full and purges the
    // expired tokens, the first among them.
    let later = TokenParams {
        create_timestamp: UNIX + 60,
        ..params(200)
    };
    let later = ConnectToken::generate(&later, &w.key, &mut w.rng).unwrap();
    let mut buf = request_bytes(&later);
    w.server
        .handle_datagram(w.now, UNIX + 60, client_addr(50), &mut buf);
    w.server_transmits();
    // The clock steps back (an NTP step, a restored VM) and the first
    // token's request comes again.
    w.deliver_to_server(at, &request_bytes(&token));
    let again: Vec<_> = w
        .server_transmits()
        .into_iter()
        .filter(|(to, _)| *to == at)
        .collect();
    let sequence = |p: &[u8]| packet::parse_header(p, Side::Client).unwrap().sequence;
    assert!(
        again.iter().all(|(_, p)| sequence(p) != sequence(&first)),
        "a sequence number sent again under the same key"
    );
    assert!(again.is_empty(), "the expired token was taken again");
    assert_eq!(w.server.stats().dropped.get(DropReason::TokenExpired), 1);
}

#[test]
fn switching_tokens_while_connected_still_says_goodbye_under_the_old_key() {
    let mut w = World::new(4);
    let (addr, mut client) = w.connected_pair();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut sent = Vec::new();
    for _ in 0..300 {
        let t = client.send_payload(w.now, b"x", &mut buf).unwrap();
        sent.push(buf[..t.len].to_vec());
        w.deliver_to_server(addr, &buf[..t.len]).unwrap();
    }
    let other = w.token(2);
    client.connect(&other, w.now, UNIX).unwrap();
    let farewells: Vec<_> = drain(&mut client, w.now)
        .into_iter()
        .filter(|p| p[0] != 0)
        .collect();
    assert_eq!(farewells.len(), NUM_DISCONNECT_PACKETS);
    let ev = w.deliver_to_server(addr, &farewells[0]).unwrap();
    assert!(ev.contains("ClientDisconnected"), "{ev}");
    assert_eq!(w.server.num_connected(), 0);
    // No sequence (nonce) under the old key was used twice.
    sent.extend(farewells);
    let seqs: HashSet<u64> = sent
        .iter()
        .map(|p| packet::parse_header(p, Side::Server).unwrap().sequence)
        .collect();
    assert_eq!(seqs.len(), sent.len());
}

/// Shuttles datagrams between `client` at `addr` and the server for a few
/// rounds, returning every packet the client sealed (requests are sealed
/// by no key and left out).
fn exchange_sealed(w: &mut World, addr: SocketAddr, client: &mut Client) -> Vec<Vec<u8>> {
    let mut sealed = Vec::new();
    for _ in 0..8 {
        for p in drain(client, w.now) {
            w.deliver_to_server(addr, &p);
            if p[0] != 0 {
                sealed.push(p);
            }
        }
        for (to, mut p) in w.server_transmits() {
            if to == addr {
                client.handle_datagram(w.now, server_addr(), &mut p);
            }
        }
        w.now += Duration::from_millis(100);
        client.handle_timeout(w.now);
    }
    sealed
}

/// Back to a token after another: the client's numbering under the first
/// token's key goes on where it stopped, so no nonce repeats under it and
/// the server (which remembers the token's newest sequence) takes it.
#[test]
fn coming_back_to_a_token_reuses_no_nonce_and_connects() {
    let mut w = World::new(4);
    let first = w.token(1);
    let addr = client_addr(0);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&first, w.now, UNIX).unwrap();
    let mut sealed = exchange_sealed(&mut w, addr, &mut client);
    assert_eq!(client.state(), ClientState::Connected);
    let mut buf = [0u8; MAX_PACKET_BYTES];
    for _ in 0..300 {
        let t = client.send_payload(w.now, b"x", &mut buf).unwrap();
        sealed.push(buf[..t.len].to_vec());
        w.deliver_to_server(addr, &buf[..t.len]).unwrap();
    }
    let second = w.token(2);
    client.connect(&second, w.now, UNIX).unwrap();
    for p in drain(&mut client, w.now) {
        w.deliver_to_server(addr, &p);
        if p[0] != 0 {
            sealed.push(p);
        }
    }
    assert_eq!(w.server.num_connected(), 0, "the goodbye was not heard");
    // Another token in between, never used for a packet here. Its
    // handshake holds the address until it times out: another account's
    // request from it meanwhile is dropped.
    client.connect(&first, w.now, UNIX).unwrap();
    for p in drain(&mut client, w.now) {
        assert_eq!(w.deliver_to_server(addr, &p), None);
    }
    assert_eq!(
        w.server.stats().dropped.get(DropReason::AddressInHandshake),
        1
    );
    w.now += Duration::from_secs(params(2).timeout_seconds as u64);
    w.server.handle_timeout(w.now);
    client.connect(&first, w.now, UNIX).unwrap();
    sealed.extend(exchange_sealed(&mut w, addr, &mut client));
    assert_eq!(client.state(), ClientState::Connected);
    assert_eq!(w.server.stats().dropped.get(DropReason::Replayed), 0);
    let seqs: HashSet<u64> = sealed
        .iter()
        .map(|p| packet::parse_header(p, Side::Server).unwrap().sequence)
        .collect();
    assert_eq!(seqs.len(), sealed.len(), "a nonce used twice under one key");
}

/// A denial the client took in an earlier attempt, replayed (or late)
/// while it tries again with the same token, is not taken for an answer
/// to this attempt.
/// Client B (account 2, at `client_addr(1)`) asks a one-slot server that
/// A holds: its token, B denied, B's address and the denial it took.
struct DeniedAtRequest {
    token: ConnectToken,
    b: Client,
    b_addr: SocketAddr,
    denial: Vec<u8>,
}

fn denied_at_request(w: &mut World) -> DeniedAtRequest {
    let token = w.token(2);
    let b_addr = client_addr(1);
    let mut b = Client::new(ClientConfig::new(PROTOCOL));
    b.connect(&token, w.now, UNIX).unwrap();
    for p in drain(&mut b, w.now) {
        w.deliver_to_server(b_addr, &p);
    }
    let denied = w.server_transmits();
    assert_eq!(denied.len(), 1);
    let denial = denied[0].1.clone();
    b.handle_datagram(w.now, server_addr(), &mut denial.clone());
    assert_eq!(b.state(), ClientState::ConnectionDenied);
    DeniedAtRequest {
        token,
        b,
        b_addr,
        denial,
    }
}

#[test]
fn an_earlier_attempts_denial_does_not_end_the_next_one() {
    let mut w = World::new(1);
    let (a_addr, _a) = w.connected_pair();
    let DeniedAtRequest {
        token,
        mut b,
        b_addr,
        mut denial,
    } = denied_at_request(&mut w);
    let a = w.server.client_at(a_addr).unwrap();
    w.server.disconnect(a).unwrap();
    w.server_transmits();
    b.connect(&token, w.now, UNIX).unwrap();
    b.handle_datagram(w.now, server_addr(), &mut denial);
    assert_eq!(b.state(), ClientState::SendingConnectionRequest);
    assert_eq!(b.stats().dropped.get(DropReason::Replayed), 1);
    exchange_sealed(&mut w, b_addr, &mut b);
    assert_eq!(b.state(), ClientState::Connected);
}

/// The floor of server-wide denials holds for denials only: a reference
/// server numbers its challenges server-wide too, from a counter that
/// starts over at 2^63 when it restarts, and its challenges must still be
/// taken after a denial numbered higher.
#[test]
fn a_challenge_numbered_server_wide_is_not_held_to_the_denial_floor() {
    let mut w = World::new(1);
    let (_a_addr, _a) = w.connected_pair();
    let DeniedAtRequest {
        token,
        mut b,
        denial,
        ..
    } = denied_at_request(&mut w);
    let numbered = packet::parse_header(&denial, Side::Client)
        .unwrap()
        .sequence;
    assert!(numbered > 1 << 63, "a server-wide denial");

    b.connect(&token, w.now, UNIX).unwrap();
    let mut challenge = vec![0u8; MAX_PACKET_BYTES];
    let len = packet::seal(
        &mut challenge,
        PacketKind::Challenge,
        1 << 63,
        &[7u8; packet::CHALLENGE_BODY_BYTES],
        PROTOCOL,
        &PacketCipher::new(&token.server_to_client_key),
    )
    .unwrap();
    b.handle_datagram(w.now, server_addr(), &mut challenge[..len]);
    assert_eq!(b.state(), ClientState::SendingConnectionResponse);
}

/// The last keep-alive the server sent to `addr`.
fn last_keepalive_to(w: &World, addr: SocketAddr) -> Vec<u8> {
    w.server_sent
        .iter()
        .rev()
        .find(|(to, p)| {
            *to == addr
                && packet::parse_header(p, Side::Client)
                    .is_ok_and(|h| h.kind == PacketKind::KeepAlive)
        })
        .map(|(_, p)| p.clone())
        .expect("a keep-alive to the address")
}

/// A keep-alive of an earlier session with the same token, replayed while
/// the client answers the next challenge, does not connect it early (to a
/// slot that is no longer its own): the server numbers each session in a
/// block of its own, and the client knows the ended session's block.
#[test]
fn an_earlier_sessions_keepalive_does_not_end_the_next_handshake() {
    let mut w = World::new(4);
    let token = w.token(1);
    let addr = client_addr(0);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, w.now, UNIX).unwrap();
    exchange_sealed(&mut w, addr, &mut client);
    assert_eq!(client.state(), ClientState::Connected);
    let old_keepalive = last_keepalive_to(&w, addr);
    client.disconnect();
    for p in drain(&mut client, w.now) {
        w.deliver_to_server(addr, &p);
    }
    assert_eq!(w.server.num_connected(), 0);

    client.connect(&token, w.now, UNIX).unwrap();
    for p in drain(&mut client, w.now) {
        w.deliver_to_server(addr, &p);
    }
    for (_, mut p) in w.server_transmits() {
        client.handle_datagram(w.now, server_addr(), &mut p);
    }
    assert_eq!(client.state(), ClientState::SendingConnectionResponse);
    let mut replayed = old_keepalive;
    assert!(
        client
            .handle_datagram(w.now, server_addr(), &mut replayed)
            .is_none()
    );
    assert_eq!(client.state(), ClientState::SendingConnectionResponse);
    exchange_sealed(&mut w, addr, &mut client);
    assert_eq!(client.state(), ClientState::Connected);
    assert_eq!(w.server.num_connected(), 1);
}

/// The program run again with a saved token remembers no earlier session:
/// a keep-alive of the earlier run's session, replayed to it (the server's
/// address is easy to forge), moved its handshake to `Connected` in the
/// wrong session, and that session's payloads came through as this one's.
#[test]
fn a_new_client_takes_nothing_of_an_earlier_runs_session() {
    for restarted_with in [99, 7, 12_345] {
        let mut w = World::new(4);
        let token = w.token(1);
        let first_addr = client_addr(0);
        let mut first = Client::new(ClientConfig::new(PROTOCOL));
        first.connect(&token, w.now, UNIX).unwrap();
        exchange_sealed(&mut w, first_addr, &mut first);
        assert_eq!(first.state(), ClientState::Connected);
        let old_keepalive = last_keepalive_to(&w, first_addr);
        let slot = w.server.client_at(first_addr).unwrap();
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let mut old_payloads = Vec::new();
        for _ in 0..4 {
            let t = w
                .server
                .send_payload(w.now, slot, b"old", &mut buf)
                .unwrap();
            old_payloads.push(buf[..t.len].to_vec());
        }

        let key = w.key;
        w.server = Server::new(
            ServerConfig::new(PROTOCOL, key, vec![server_addr()]),
            &mut TestRng(restarted_with),
        )
        .unwrap();
        let addr = client_addr(1);
        let mut second = Client::new(ClientConfig::new(PROTOCOL));
        second.connect(&token, w.now, UNIX + 5).unwrap();
        for p in drain(&mut second, w.now) {
            w.server
                .handle_datagram(w.now, UNIX + 5, addr, &mut p.clone());
        }
        for (_, mut p) in w.server_transmits() {
            second.handle_datagram(w.now, server_addr(), &mut p);
        }
        assert_eq!(second.state(), ClientState::SendingConnectionResponse);
        assert!(
            second
                .handle_datagram(w.now, server_addr(), &mut old_keepalive.clone())
                .is_none()
        );
        assert_eq!(
            second.state(),
            ClientState::SendingConnectionResponse,
            "restarted with {restarted_with}: an earlier run's keep-alive connected"
        );
        for _ in 0..4 {
            for p in drain(&mut second, w.now) {
                w.server
                    .handle_datagram(w.now, UNIX + 5, addr, &mut p.clone());
            }
            for (_, mut p) in w.server_transmits() {
                second.handle_datagram(w.now, server_addr(), &mut p);
            }
        }
        assert_eq!(second.state(), ClientState::Connected);
        for old in &old_payloads {
            assert!(
                second
                    .handle_datagram(w.now, server_addr(), &mut old.clone())
                    .is_none(),
                "restarted with {restarted_with}: an earlier run's payload came through"
            );
        }
        let slot = w.server.client_at(addr).unwrap();
        let t = w
            .server
            .send_payload(w.now, slot, b"new", &mut buf)
            .unwrap();
        assert!(matches!(
            second.handle_datagram(w.now, server_addr(), &mut buf[..t.len]),
            Some(ClientEvent::Payload(p)) if p == b"new"
        ));
    }
}

#[test]
fn a_zero_timeout_means_no_timeout_on_both_sides() {
    let mut w = World::new(4);
    let mut p = params(1);
    p.timeout_seconds = 0;
    let token = ConnectToken::generate(&p, &w.key, &mut w.rng).unwrap();
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, w.now, UNIX).unwrap();
    let mut clients = [(client_addr(0), client)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    // A minute of silence: neither side gives up.
    for _ in 0..60 {
        w.advance(Duration::from_secs(1), &mut clients);
        w.server_transmits();
    }
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(w.server.num_connected(), 1);
}

#[test]
fn servers_start_a_token_where_another_server_did_not() {
    let mut a = World::new(4);
    let mut config = ServerConfig::new(PROTOCOL, a.key, vec![server_addr()]);
    config.max_clients = 4;
    // Another run of the server: the same key, another random start.
    let mut b = Server::new(config, &mut TestRng(8)).unwrap();
    let token = a.token(1);
    let challenge_sequence = |server: &mut Server, now| {
        let mut request = request_bytes(&token);
        server.handle_datagram(now, UNIX, client_addr(0), &mut request);
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let t = server.poll_transmit(now, &mut buf).unwrap();
        packet::parse_header(&buf[..t.len], Side::Client)
            .unwrap()
            .sequence
    };
    let now = a.now;
    let first = challenge_sequence(&mut a.server, now);
    let second = challenge_sequence(&mut b, now);
    // Each attempt has a block of 2^32 sequence numbers to itself.
    assert!(first.abs_diff(second) >= 1 << 32, "{first} {second}");
}

#[test]
fn server_disconnect_reaches_the_client() {
    let mut w = World::new(4);
    let (addr, mut client) = w.connected_pair();
    let slot = w.server.client_at(addr).unwrap();
    w.server.disconnect(slot).unwrap();
    assert_eq!(w.server.num_connected(), 0);
    assert_eq!(
        w.server.disconnect(slot),
        Err(DisconnectError::UnknownClient)
    );
    let sent = w.server_transmits();
    assert_eq!(sent.len(), NUM_DISCONNECT_PACKETS);
    let mut first = sent[0].1.clone();
    assert_eq!(
        client.handle_datagram(w.now, server_addr(), &mut first),
        Some(ClientEvent::Disconnected)
    );
    assert_eq!(client.state(), ClientState::Disconnected);
}

#[test]
fn a_held_slot_goes_to_no_one_until_released() {
    let mut w = World::new(1);
    let (addr, _first) = w.connected_pair();
    let slot = w.server.client_at(addr).unwrap();
    w.server.hold(slot);
    // The client is gone (its end reported), its slot is not free yet.
    w.server.disconnect(slot).unwrap();
    assert_eq!(w.server.num_connected(), 0);
    // Not denied: ignored, while the client keeps asking.
    let mut clients = w.join(2, 1);
    assert_eq!(clients[0].1.state(), ClientState::SendingConnectionRequest);
    assert!(w.server.stats().dropped.get(DropReason::SlotReleasing) > 0);
    assert_eq!(w.server.stats().denials_sent, 0);
    w.server.release(slot);
    w.advance(Duration::from_millis(200), &mut clients);
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(w.server.client_at(client_addr(1)), Some(slot));
    assert_eq!(w.server.num_connected(), 1);
    // Released while still connected, the slot frees when its client goes.
    w.server.hold(slot);
    w.server.release(slot);
    w.server.disconnect(slot).unwrap();
    assert_eq!(w.server.num_connected(), 0);
    assert_eq!(w.join(3, 2)[0].1.state(), ClientState::Connected);
}

#[test]
fn server_full_is_denied_and_the_client_says_so() {
    let mut w = World::new(1);
    let _first = w.connected_pair();
    let clients = w.join(2, 1);
    assert_eq!(clients[0].1.state(), ClientState::ConnectionDenied);
    assert_eq!(w.server.stats().denials_sent, 1);
    assert_eq!(
        w.server.num_pending(),
        0,
        "no half-open state for a denied client"
    );
}

/// Client B (account 2, at `client_addr(1)`) is challenged while a slot
/// is free: its token, B, and the response it answers with (not yet
/// delivered).
fn challenged_b(w: &mut World) -> (ConnectToken, Client, Vec<u8>) {
    let token = w.token(2);
    let mut b = Client::new(ClientConfig::new(PROTOCOL));
    b.connect(&token, w.now, UNIX).unwrap();
    let b_addr = client_addr(1);
    for p in drain(&mut b, w.now) {
        w.deliver_to_server(b_addr, &p);
    }
    for (to, mut p) in w.server_transmits() {
        assert_eq!(to, b_addr);
        b.handle_datagram(w.now, server_addr(), &mut p);
    }
    let response = drain(&mut b, w.now).pop().unwrap();
    (token, b, response)
}

#[test]
fn a_late_copy_of_a_denied_response_connects_no_one() {
    let mut w = World::new(1);
    // B is challenged while the slot is free...
    let (_, mut b, response) = challenged_b(&mut w);
    let b_addr = client_addr(1);
    // ...but A takes it before B's response arrives: B is denied.
    let (a_addr, _a) = w.connected_pair();
    assert_eq!(w.deliver_to_server(b_addr, &response), None);
    let denied = w.server_transmits();
    assert_eq!((denied.len(), denied[0].0), (1, b_addr));
    assert_eq!(w.server.stats().denials_sent, 1);
    let mut denial = denied[0].1.clone();
    b.handle_datagram(w.now, server_addr(), &mut denial);
    assert_eq!(b.state(), ClientState::ConnectionDenied);
    // A leaves, and a late copy of B's response arrives: B gave up, so it
    // must not get a session it never learns of (holding the slot and its
    // account until a timeout).
    let a = w.server.client_at(a_addr).unwrap();
    w.server.disconnect(a).unwrap();
    assert_eq!(w.deliver_to_server(b_addr, &response), None);
    assert_eq!(w.server.num_connected(), 0);
    assert_eq!(w.server.num_pending(), 0);
}

/// A connection's packets are numbered within its handshake's block of
/// 2^32: the next block is the same token's next handshake, under the
/// same key, so running into it would reuse nonces. At the block's end
/// the connection is out of sequence numbers.
#[test]
fn a_connection_never_numbers_a_packet_in_the_next_block() {
    let mut w = World::new(1);
    let (addr, _client) = w.connected_pair();
    let slot = w.server.client_at(addr).unwrap();
    let block_end = 7u64 << 32;
    w.server.set_next_sequence(slot, block_end - 2);
    let mut out = [0u8; MAX_PACKET_BYTES];
    w.server.send_payload(w.now, slot, b"x", &mut out).unwrap();
    // The block's last number would leave the next one in the next block.
    assert_eq!(
        w.server
            .send_payload(w.now, slot, b"x", &mut out)
            .map(|_| ()),
        Err(SendError::SequenceExhausted)
    );
}

/// A handshake ends at its timeout or its token's expiry when the
/// response comes, not only once the service tick has forgotten it: a
/// response or a repeated request arriving in between (the datagrams of a
/// batch are handled before the timers) found it still there, and
/// connected or refreshed it.
#[test]
fn a_handshake_past_its_end_is_over_before_the_service_tick_forgets_it() {
    // Past the token's timeout (5 s).
    let mut w = World::new(1);
    let (_, _b, response) = challenged_b(&mut w);
    w.now += Duration::from_secs(6);
    assert_eq!(w.deliver_to_server(client_addr(1), &response), None);
    assert_eq!(w.server.num_connected(), 0);
    // Past the token's expiry (30 s after its creation): requested a second
    // before it, answered two seconds later.
    let mut w = World::new(1);
    let token = w.token(2);
    let mut b = Client::new(ClientConfig::new(PROTOCOL));
    b.connect(&token, w.now, UNIX + 29).unwrap();
    let b_addr = client_addr(1);
    for mut p in drain(&mut b, w.now) {
        w.server.handle_datagram(w.now, UNIX + 29, b_addr, &mut p);
    }
    for (_, mut p) in w.server_transmits() {
        b.handle_datagram(w.now, server_addr(), &mut p);
    }
    let mut response = drain(&mut b, w.now).pop().unwrap();
    w.now += Duration::from_secs(2);
    let event = (w.server).handle_datagram(w.now, UNIX + 31, b_addr, &mut response);
    assert!(event.is_none(), "{event:?}");
    assert_eq!(w.server.num_connected(), 0);
}

/// A copy of B's response from a denied attempt, arriving after B tries
/// again with the same token but before the new challenge is written,
/// must not complete the new handshake: B, still sending requests, would
/// drop the keep-alive, and the server would hold a session B never
/// learns of (its requests then refused as already connected).
#[test]
fn a_response_from_an_earlier_attempt_does_not_complete_a_later_one() {
    let mut w = World::new(1);
    let (token, mut b, response) = challenged_b(&mut w);
    let b_addr = client_addr(1);
    let (a_addr, _a) = w.connected_pair();
    assert_eq!(w.deliver_to_server(b_addr, &response), None);
    let denied = w.server_transmits();
    let mut denial = denied[0].1.clone();
    b.handle_datagram(w.now, server_addr(), &mut denial);
    assert_eq!(b.state(), ClientState::ConnectionDenied);
    let a = w.server.client_at(a_addr).unwrap();
    w.server.disconnect(a).unwrap();
    w.server_transmits();
    // B tries again; the old response arrives before the new challenge
    // is written.
    b.connect(&token, w.now, UNIX).unwrap();
    for p in drain(&mut b, w.now) {
        w.deliver_to_server(b_addr, &p);
    }
    assert_eq!(w.deliver_to_server(b_addr, &response), None);
    assert_eq!(
        w.server.num_connected(),
        0,
        "a session from the old attempt"
    );
    // The new attempt goes on.
    let mut clients = [(b_addr, b)];
    for (to, mut p) in w.server_transmits() {
        assert_eq!(to, b_addr);
        clients[0].1.handle_datagram(w.now, server_addr(), &mut p);
    }
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(w.server.num_connected(), 1);
}

/// The same race with the denial at request time: a resent request of B's
/// arrives once A holds the slot. The denial must end B's half-open
/// handshake too, or B's response, answering the challenge it got before,
/// connects it after A leaves although B gave up.
#[test]
fn a_request_denied_for_a_full_server_leaves_no_handshake_behind() {
    let mut w = World::new(1);
    let (token, mut b, response) = challenged_b(&mut w);
    let b_addr = client_addr(1);
    let (a_addr, _a) = w.connected_pair();
    // B's resent request arrives after A took the slot: denied.
    assert_eq!(w.deliver_to_server(b_addr, &request_bytes(&token)), None);
    let denied = w.server_transmits();
    assert_eq!((denied.len(), denied[0].0), (1, b_addr));
    let mut denial = denied[0].1.clone();
    b.handle_datagram(w.now, server_addr(), &mut denial);
    assert_eq!(b.state(), ClientState::ConnectionDenied);
    assert_eq!(w.server.num_pending(), 0);
    let a = w.server.client_at(a_addr).unwrap();
    w.server.disconnect(a).unwrap();
    assert_eq!(w.deliver_to_server(b_addr, &response), None);
    assert_eq!(w.server.num_connected(), 0);
}

#[test]
fn client_fails_over_to_the_next_address() {
    let mut w = World::new(4);
    let mut p = params(9);
    let dead: SocketAddr = "127.0.0.9:1".parse().unwrap();
    p.server_addresses = vec![dead, server_addr()];
    let token = ConnectToken::generate(&p, &w.key, &mut w.rng).unwrap();
    let mut c = Client::new(ClientConfig::new(PROTOCOL));
    c.connect(&token, w.now, UNIX).unwrap();
    let mut clients = [(client_addr(0), c)];
    let mut buf = [0u8; MAX_PACKET_BYTES];
    // Requests to the dead address vanish until the 5 s timeout.
    for _ in 0..110 {
        w.advance(Duration::from_millis(50), &mut clients);
        if clients[0].1.server_address() == Some(server_addr()) {
            break;
        }
        while clients[0].1.poll_transmit(w.now, &mut buf).is_some() {}
    }
    assert_eq!(clients[0].1.server_address(), Some(server_addr()));
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
}

#[test]
fn client_reports_distinct_token_errors() {
    let mut w = World::new(4);
    let token = w.token(1);
    let mut c = Client::new(ClientConfig::new(PROTOCOL + 1));
    assert_eq!(
        c.connect(&token, w.now, UNIX),
        Err(ConnectError::WrongProtocolId {
            expected: PROTOCOL + 1,
            got: PROTOCOL
        })
    );
    assert_eq!(c.state(), ClientState::InvalidConnectToken);

    let mut c = Client::new(ClientConfig::new(PROTOCOL));
    assert_eq!(
        c.connect(&token, w.now, UNIX + 30),
        Err(ConnectError::Expired)
    );
    assert_eq!(c.state(), ClientState::ConnectTokenExpired);

    let mut bytes = token.to_bytes();
    bytes[11] = b'1'; // "NETCODE 1.01"
    assert_eq!(
        c.connect_bytes(&bytes, w.now, UNIX),
        Err(ConnectError::Token(TokenError::WrongVersion))
    );
    assert_eq!(c.state(), ClientState::InvalidConnectToken);

    let mut bad = token.clone();
    bad.server_addresses.clear();
    assert_eq!(
        c.connect(&bad, w.now, UNIX),
        Err(ConnectError::InvalidToken)
    );
    assert_eq!(c.state(), ClientState::InvalidConnectToken);

    // Token lifetime runs out while connecting (no server answers).
    let mut c = Client::new(ClientConfig::new(PROTOCOL));
    let mut p = params(3);
    p.expire_seconds = 2;
    p.timeout_seconds = 10;
    let t = ConnectToken::generate(&p, &w.key, &mut w.rng).unwrap();
    c.connect(&t, w.now, UNIX).unwrap();
    c.handle_timeout(w.now + Duration::from_secs(2));
    assert_eq!(c.state(), ClientState::ConnectTokenExpired);
}

/// A token naming the server in the other notation of the same address
/// (IPv4-mapped IPv6 for an IPv4 server) is the server's: the client
/// treats the two as one, and so does the server.
#[test]
fn a_token_naming_the_server_as_ipv4_mapped_ipv6_connects() {
    let mut w = World::new(1);
    let mut p = params(1);
    p.server_addresses = vec!["[::ffff:127.0.0.1]:40000".parse().unwrap()];
    let mut rng = TestRng(6);
    let mapped = ConnectToken::generate(&p, &w.key, &mut rng).unwrap();
    let mut c = Client::new(ClientConfig::new(PROTOCOL));
    c.connect(&mapped, w.now, UNIX).unwrap();
    let mut clients = [(client_addr(0), c)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(
        w.server.stats().dropped.get(DropReason::AddressNotInToken),
        0
    );
}

/// Runs a client against the server with a token the server ignores and
/// checks the client times out while the server counts `reason`.
fn ignored_token_times_out(token: ConnectToken, reason: DropReason) {
    let mut w = World::new(4);
    let mut c = Client::new(ClientConfig::new(token.protocol_id));
    c.connect(&token, w.now, UNIX).unwrap();
    let mut clients = [(client_addr(0), c)];
    for _ in 0..110 {
        w.pump(&mut clients);
        w.advance(Duration::from_millis(50), &mut clients);
    }
    assert_eq!(clients[0].1.state(), ClientState::ConnectionRequestTimedOut);
    assert!(w.server.stats().dropped.get(reason) > 0, "{reason:?}");
    assert_eq!(w.state_summary(), (0, 0, 0));
    assert!(w.server_sent.is_empty());
}

#[test]
fn silently_ignored_tokens_time_out_with_a_distinct_server_reason() {
    let mut rng = TestRng(99);
    let other_key = Key::generate(&mut rng);
    let forged = ConnectToken::generate(&params(1), &other_key, &mut rng).unwrap();
    ignored_token_times_out(forged, DropReason::TokenInvalid);

    let w = World::new(1);
    let mut p = params(1);
    p.server_addresses = vec!["127.0.0.1:40001".parse().unwrap()];
    let mut rng = TestRng(5);
    let elsewhere = ConnectToken::generate(&p, &w.key, &mut rng).unwrap();
    // The client must still send to our server, so point its public list here.
    let mut redirected = elsewhere.clone();
    redirected.server_addresses = vec![server_addr()];
    ignored_token_times_out(redirected, DropReason::AddressNotInToken);

    let mut p = params(1);
    p.protocol_id = PROTOCOL + 1;
    let other_game = ConnectToken::generate(&p, &w.key, &mut rng).unwrap();
    ignored_token_times_out(other_game, DropReason::WrongProtocolId);
}

#[test]
fn bad_requests_are_counted_and_change_nothing() {
    let mut w = World::new(4);
    let token = w.token(1);
    let good = request_bytes(&token);
    let from = client_addr(0);
    let before = w.state_summary();

    let mut cases: Vec<(Vec<u8>, u64, DropReason)> = Vec::new();
    cases.push((Vec::new(), UNIX, DropReason::Empty));
    cases.push((good[..1077].to_vec(), UNIX, DropReason::RequestWrongSize));
    let mut long = good.clone();
    long.push(0);
    cases.push((long, UNIX, DropReason::RequestWrongSize));
    cases.push((vec![0u8; 1300], UNIX, DropReason::Oversized));
    let mut v = good.clone();
    v[12] = b'0';
    cases.push((v, UNIX, DropReason::WrongVersion));
    let mut p = good.clone();
    p[14] ^= 1;
    cases.push((p, UNIX, DropReason::WrongProtocolId));
    cases.push((good.clone(), UNIX + 30, DropReason::TokenExpired));
    let mut e = good.clone();
    e[22] ^= 1; // expire timestamp changed: AD no longer matches
    cases.push((e, UNIX, DropReason::TokenInvalid));
    for i in [46, 500, 1053, 1054, 1077] {
        let mut t = good.clone();
        t[i] ^= 0x80;
        cases.push((t, UNIX, DropReason::TokenInvalid));
    }
    for (bytes, unix, reason) in cases {
        let dropped = w.server.stats().dropped.get(reason);
        let mut buf = bytes.clone();
        assert!(
            w.server
                .handle_datagram(w.now, unix, from, &mut buf)
                .is_none()
        );
        assert_eq!(
            w.server.stats().dropped.get(reason),
            dropped + 1,
            "{reason:?}"
        );
        assert_eq!(w.state_summary(), before, "{reason:?}");
        assert!(w.server_transmits().is_empty(), "{reason:?}");
    }
}

#[test]
fn token_is_bound_to_the_first_address() {
    let mut w = World::new(4);
    let token = w.token(1);
    let req = request_bytes(&token);
    assert!(w.deliver_to_server(client_addr(0), &req).is_none());
    assert_eq!(w.server_transmits().len(), 1);
    let before = w.state_summary();
    assert!(w.deliver_to_server(client_addr(1), &req).is_none());
    assert_eq!(
        w.server
            .stats()
            .dropped
            .get(DropReason::TokenUsedFromOtherAddress),
        1
    );
    assert_eq!(w.state_summary(), before);
    assert!(w.server_transmits().is_empty());
    // The first address may repeat its request and gets another challenge.
    assert!(w.deliver_to_server(client_addr(0), &req).is_none());
    assert_eq!(w.server_transmits().len(), 1);
}

/// One account holds at most one half-open handshake: a host with many
/// tokens for its one account, each from its own port, cannot fill the
/// table and lock every other player out.
#[test]
fn one_account_cannot_fill_the_half_open_table() {
    let mut w = World::new(4);
    let mut config = w.server.config().clone();
    config.max_pending = 4;
    w.server = Server::new(config, &mut w.rng).unwrap();
    for i in 0..4 {
        let token = w.token(7);
        w.deliver_to_server(client_addr(i), &request_bytes(&token));
        assert_eq!(w.server_transmits().len(), 1, "every attempt is challenged");
    }
    let token = w.token(8);
    w.deliver_to_server(client_addr(10), &request_bytes(&token));
    let sent = w.server_transmits();
    assert_eq!(sent.len(), 1, "another player is challenged");
    assert_eq!(sent[0].0, client_addr(10));
    assert_eq!(
        w.server.stats().dropped.get(DropReason::PendingTableFull),
        0
    );
    assert!(w.server.num_pending() <= 2, "{}", w.server.num_pending());
}

/// One account holds at most a few used-token entries: a host whose
/// backend mints its one account many tokens, each sent from its own
/// port, cannot fill the table and have every other player's new token
/// dropped. A token forgotten to make room is refused, not taken as new
/// (a new start would repeat its sequence numbers under its keys).
#[test]
fn one_account_cannot_fill_the_used_token_table() {
    let mut w = World::new(4);
    let mut config = w.server.config().clone();
    config.max_token_entries = 32;
    w.server = Server::new(config, &mut w.rng).unwrap();
    let ip = client_addr(0).ip();
    let mut first = None;
    for port in 0..40 {
        let token = w.token(7);
        let request = request_bytes(&token);
        w.deliver_to_server(SocketAddr::new(ip, 50_000 + port), &request);
        assert!(w.server_transmits().len() <= 1, "one reply at most");
        first.get_or_insert(request);
    }
    assert!(
        w.server.num_token_entries() <= 8,
        "{}",
        w.server.num_token_entries()
    );
    let token = w.token(8);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, w.now, UNIX).unwrap();
    let mut clients = [(client_addr(10), client)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(w.server.stats().dropped.get(DropReason::TokenTableFull), 0);
    let expired = w.server.stats().dropped.get(DropReason::TokenExpired);
    w.deliver_to_server(SocketAddr::new(ip, 60_000), &first.unwrap());
    assert!(
        w.server_transmits().is_empty(),
        "a forgotten token answered"
    );
    assert_eq!(
        w.server.stats().dropped.get(DropReason::TokenExpired),
        expired + 1
    );
}

/// A player whose NAT moved it to a new port tries again with a new
/// token: the new attempt takes the place of the first, and connects; the
/// first attempt's response, arriving late from the old port, connects no
/// one.
#[test]
fn a_player_trying_again_from_a_new_port_replaces_its_first_handshake() {
    let mut w = World::new(4);
    let old_addr = client_addr(0);
    let new_addr = SocketAddr::new(old_addr.ip(), old_addr.port() + 1);
    let first = w.token(7);
    let mut old = Client::new(ClientConfig::new(PROTOCOL));
    old.connect(&first, w.now, UNIX).unwrap();
    for p in drain(&mut old, w.now) {
        w.deliver_to_server(old_addr, &p);
    }
    for (_, mut p) in w.server_transmits() {
        old.handle_datagram(w.now, server_addr(), &mut p);
    }
    let response = drain(&mut old, w.now).pop().unwrap();
    let second = w.token(7);
    let mut new = Client::new(ClientConfig::new(PROTOCOL));
    new.connect(&second, w.now, UNIX).unwrap();
    w.send_from(new_addr, &mut new);
    let unknown = w.server.stats().dropped.get(DropReason::UnknownAddress);
    assert_eq!(w.deliver_to_server(old_addr, &response), None);
    assert_eq!(
        w.server.num_connected(),
        0,
        "the replaced attempt connected"
    );
    assert_eq!(
        w.server.stats().dropped.get(DropReason::UnknownAddress),
        unknown + 1
    );
    assert_eq!(w.server.num_pending(), 1);
    let mut clients = [(new_addr, new)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    let slot = w.server.client_at(new_addr).unwrap();
    assert_eq!(w.server.client_by_id(7), Some(slot));
    assert_eq!(w.server.client_at(old_addr), None);
}

/// A half-open handshake lives as long as its requests keep coming, as
/// the client's own timeout does: challenges lost for most of the timeout
/// must not leave the response that follows the first one through to find
/// the handshake gone.
#[test]
fn a_handshake_kept_alive_by_its_requests_outlives_its_first_timeout() {
    let mut w = World::new(4);
    let token = w.token(1);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, w.now, UNIX).unwrap();
    let addr = client_addr(0);
    // 4.9 s of requests whose challenges are all lost.
    for _ in 0..49 {
        w.send_from(addr, &mut client);
        assert!(!w.server_transmits().is_empty(), "a challenge, lost");
        w.now += Duration::from_millis(100);
        w.server.handle_timeout(w.now);
        client.handle_timeout(w.now);
    }
    w.send_from(addr, &mut client);
    for (_, mut bytes) in w.server_transmits() {
        client.handle_datagram(w.now, server_addr(), &mut bytes);
    }
    assert_eq!(client.state(), ClientState::SendingConnectionResponse);
    // The response comes after the first request's timeout.
    w.now += Duration::from_millis(200);
    w.server.handle_timeout(w.now);
    client.handle_timeout(w.now);
    let mut clients = [(addr, client)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
}

/// An IPv6 source is limited by its /64: one host cannot draw a fresh
/// bucket from each of its addresses.
#[test]
fn ipv6_sources_are_limited_by_their_64_bit_prefix() {
    let mut w = World::new(4);
    let req = junk_request(&w.token(1));
    let limit = w.server.config().rate_limit;
    for i in 0..limit.burst + limit.spare_per_second + 10 {
        let from = SocketAddr::new(format!("2001:db8::{:x}", i + 1).parse().unwrap(), 5000);
        w.deliver_to_server(from, &req);
    }
    assert_eq!(w.server.stats().dropped.get(DropReason::RateLimited), 10);
    // Another /64 has its own.
    let other: SocketAddr = "[2001:db8:0:1::1]:5000".parse().unwrap();
    w.deliver_to_server(other, &req);
    assert_eq!(w.server.stats().dropped.get(DropReason::RateLimited), 10);
}

/// A client whose socket is dual-stack sees its IPv4 server's packets
/// come from the IPv4-mapped address: the same server.
#[test]
fn a_server_seen_at_its_ipv4_mapped_address_is_the_same_server() {
    let mut w = World::new(4);
    let token = w.token(1);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, w.now, UNIX).unwrap();
    w.send_from(client_addr(0), &mut client);
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
    for (_, mut bytes) in w.server_transmits() {
        client.handle_datagram(w.now, mapped, &mut bytes);
    }
    assert_eq!(client.state(), ClientState::SendingConnectionResponse);
}

/// Players behind one address (a campus or carrier NAT) connecting at
/// once spend nothing of its budget: a request carrying a token not seen
/// before, and a response that connects, give their token back. Work that
/// yields nothing still spends it: junk from the same address after them
/// finds the whole burst, and no more.
#[test]
fn players_behind_one_address_connect_at_once_and_junk_still_spends_the_budget() {
    let players = 150u16;
    let mut w = World::new(usize::from(players));
    let burst = w.server.config().rate_limit.burst;
    let ip: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let mut clients: Vec<(SocketAddr, Client)> = (0..players)
        .map(|i| {
            let token = w.token(u64::from(i) + 1);
            let mut client = Client::new(ClientConfig::new(PROTOCOL));
            client.connect(&token, w.now, UNIX).unwrap();
            (SocketAddr::new(ip, 20000 + i), client)
        })
        .collect();
    assert!(
        u32::from(players) * 2 > burst,
        "more handshake packets than a burst"
    );
    w.pump(&mut clients);
    assert_eq!(w.server.stats().dropped.get(DropReason::RateLimited), 0);
    assert_eq!(w.server.num_connected(), usize::from(players));

    // The address's burst, then the spare budget of all sources.
    let spare = w.server.config().rate_limit.spare_per_second;
    let junk = junk_request(&w.token(9999));
    for port in 0..burst + spare + 10 {
        w.deliver_to_server(SocketAddr::new(ip, 40000 + port as u16), &junk);
    }
    let dropped = &w.server.stats().dropped;
    assert_eq!(
        dropped.get(DropReason::TokenInvalid),
        u64::from(burst + spare)
    );
    assert_eq!(dropped.get(DropReason::RateLimited), 10);
}

/// Runs a client's handshake from `client_addr(0)` while junk requests
/// forged with that address as their source arrive 4,000 a second (at
/// random gaps from `seed`: a flood keeps no step with the player), on a
/// server whose spare budget is `spare` a second; how long it took to
/// connect, if it did within 20 s of its start, a second into the flood.
/// Also checks the junk decrypted stays within the source's and the spare
/// budget's rates.
fn connect_under_forged_flood(spare: u32, seed: u64) -> Option<Duration> {
    use rand_core::TryRng;
    let mut w = World::new(4);
    w.rng = TestRng(seed);
    let mut config = w.server.config().clone();
    config.rate_limit.spare_per_second = spare;
    w.server = Server::new(config, &mut w.rng).unwrap();
    let limit = w.server.config().rate_limit;
    let junk = junk_request(&w.token(9999));
    let victim = client_addr(0);
    let flood_start = w.now;
    // 1 to 499 µs, 250 on average.
    let gap = |rng: &mut TestRng| {
        let micros = rng.try_next_u64().unwrap() % 499;
        Duration::from_micros(1 + micros)
    };
    while w.now - flood_start < Duration::from_secs(1) {
        w.deliver_to_server(victim, &junk);
        let d = gap(&mut w.rng);
        w.advance(d, &mut []);
    }
    let token = w.token(1);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    let start = w.now;
    client.connect(&token, start, UNIX).unwrap();
    let mut clients = [(victim, client)];
    let mut connected = None;
    while w.now - start < Duration::from_secs(20) {
        w.deliver_to_server(victim, &junk);
        let d = gap(&mut w.rng);
        w.advance(d, &mut clients);
        w.pump(&mut clients);
        if clients[0].1.state() == ClientState::Connected {
            connected = Some(w.now - start);
            break;
        }
    }
    let secs = (w.now - flood_start).as_secs() + 1;
    let decrypted = w.server.stats().dropped.get(DropReason::TokenInvalid);
    let bound = u64::from(limit.burst + spare) + u64::from(limit.per_second + spare) * secs;
    assert!(
        decrypted <= bound,
        "{decrypted} junk tokens tried, more than {bound}"
    );
    connected
}

/// One forging a player's address as its source spends the address's
/// limit: without a spare budget the player's packets get through only
/// when one slips in just as the address earns a token, and about half of
/// its handshakes never complete (12 of these 20 in 20 s); with the default
/// one every one completes within a few seconds, while the junk decrypted
/// stays within the budgets. Twenty flood patterns (seeds) each.
#[test]
fn a_player_connects_through_a_flood_forging_its_address() {
    let spare = HandshakeRateLimit::default().spare_per_second;
    assert!(spare > 0);
    let mut never_without_spare = 0;
    for seed in 0..20 {
        never_without_spare += usize::from(connect_under_forged_flood(0, seed).is_none());
        let took = connect_under_forged_flood(spare, seed)
            .unwrap_or_else(|| panic!("seed {seed}: the player never connected"));
        assert!(took < Duration::from_secs(5), "seed {seed}: took {took:?}");
    }
    assert!(
        never_without_spare >= 8,
        "without the spare, only {never_without_spare} of 20 never connected"
    );
}

#[test]
fn per_ip_rate_limit_applies_to_requests() {
    let mut w = World::new(4);
    let token = w.token(1);
    let req = request_bytes(&token);
    let limit = w.server.config().rate_limit;
    let allowed = (limit.burst + limit.spare_per_second) as usize;
    let mut answered = 0;
    for _ in 0..allowed + 10 {
        w.deliver_to_server(client_addr(0), &req);
        answered += w.server_transmits().len();
    }
    // The first, a token new to the server, gives its token back; the
    // repeats spend the burst, then the spare budget.
    assert_eq!(w.server.stats().dropped.get(DropReason::RateLimited), 9);
    assert_eq!(answered, allowed + 1);
    w.now += Duration::from_secs(1);
    w.deliver_to_server(client_addr(0), &req);
    assert_eq!(w.server.stats().dropped.get(DropReason::RateLimited), 9);
}

#[test]
fn tampered_truncated_replayed_and_oversized_packets_are_dropped() {
    let mut w = World::new(4);
    let (addr, mut client) = w.connected_pair();
    let mut out = [0u8; MAX_PACKET_BYTES];
    let t = client.send_payload(w.now, b"payload!", &mut out).unwrap();
    let packet = out[..t.len].to_vec();
    let before = (w.state_summary(), w.server.stats().payloads_received);

    for i in 0..packet.len() {
        for bit in [0x01u8, 0x80] {
            let mut p = packet.clone();
            p[i] ^= bit;
            assert!(w.deliver_to_server(addr, &p).is_none(), "byte {i}");
        }
    }
    for cut in 0..packet.len() {
        assert!(w.deliver_to_server(addr, &packet[..cut]).is_none());
    }
    let mut long = packet.clone();
    long.resize(MAX_PACKET_BYTES + 1, 0);
    assert!(w.deliver_to_server(addr, &long).is_none());
    assert_eq!(
        (w.state_summary(), w.server.stats().payloads_received),
        before
    );
    let d = &w.server.stats().dropped;
    assert!(d.get(DropReason::DecryptFailed) > 0);
    assert!(d.get(DropReason::Truncated) > 0);
    assert_eq!(d.get(DropReason::Oversized), 1);

    // The untouched packet is still accepted once, then replays are refused.
    // (A flipped bit in the sequence may already have counted as a replay:
    // it named a sequence from before the connection.)
    let replayed = w.server.stats().dropped.get(DropReason::Replayed);
    assert!(w.deliver_to_server(addr, &packet).is_some());
    assert!(w.deliver_to_server(addr, &packet).is_none());
    assert_eq!(
        w.server.stats().dropped.get(DropReason::Replayed),
        replayed + 1
    );
    // The same packet from another address is unknown there.
    assert!(w.deliver_to_server(client_addr(7), &packet).is_none());
    assert_eq!(w.server.stats().dropped.get(DropReason::UnknownAddress), 1);

    // Client side: tampered and replayed server packets.
    let slot = w.server.client_at(addr).unwrap();
    let t = w
        .server
        .send_payload(w.now, slot, b"down", &mut out)
        .unwrap();
    let down = out[..t.len].to_vec();
    let mut p = down.clone();
    *p.last_mut().unwrap() ^= 1;
    assert!(
        client
            .handle_datagram(w.now, server_addr(), &mut p)
            .is_none()
    );
    let mut p = down.clone();
    assert!(
        client
            .handle_datagram(w.now, server_addr(), &mut p)
            .is_some()
    );
    let mut p = down.clone();
    assert!(
        client
            .handle_datagram(w.now, server_addr(), &mut p)
            .is_none()
    );
    let mut p = down.clone();
    let stranger: SocketAddr = "127.0.0.2:40000".parse().unwrap();
    assert!(client.handle_datagram(w.now, stranger, &mut p).is_none());
    let d = &client.stats().dropped;
    assert_eq!(d.get(DropReason::DecryptFailed), 1);
    assert_eq!(d.get(DropReason::Replayed), 1);
    assert_eq!(d.get(DropReason::UnknownAddress), 1);
    assert_eq!(client.state(), ClientState::Connected);
}

#[test]
fn garbage_from_unknown_sources_gets_no_reply() {
    let mut w = World::new(4);
    let mut rng = TestRng(3);
    for len in [1usize, 17, 18, 19, 40, 333, 1078, 1225] {
        for prefix in 0u8..=0xff {
            let mut buf = vec![0u8; len];
            rand_core::Rng::fill_bytes(&mut rng, &mut buf);
            buf[0] = prefix;
            w.deliver_to_server(client_addr(3), &buf);
        }
    }
    assert!(w.server_transmits().is_empty());
    assert_eq!(w.state_summary(), (0, 0, 0));
}

#[test]
fn no_reply_is_larger_than_the_packet_that_caused_it() {
    let mut w = World::new(1);
    // Request -> challenge, for every sequence width the reply can use.
    let token = w.token(1);
    let req = request_bytes(&token);
    for _ in 0..40 {
        w.deliver_to_server(client_addr(0), &req);
        for (_, reply) in w.server_transmits() {
            assert!(
                reply.len() <= req.len(),
                "challenge {} > {}",
                reply.len(),
                req.len()
            );
        }
    }
    // Response -> keep-alive.
    let mut c = Client::new(ClientConfig::new(PROTOCOL));
    let t = w.token(2);
    c.connect(&t, w.now, UNIX).unwrap();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let n = c.poll_transmit(w.now, &mut buf).unwrap().len;
    w.deliver_to_server(client_addr(1), &buf[..n]);
    let replies = w.server_transmits();
    assert_eq!(replies.len(), 1);
    assert!(replies[0].1.len() <= n);
    c.handle_datagram(w.now, server_addr(), &mut replies[0].1.clone());
    assert_eq!(c.state(), ClientState::SendingConnectionResponse);
    let n = c.poll_transmit(w.now, &mut buf).unwrap().len;
    let resp = buf[..n].to_vec();
    w.deliver_to_server(client_addr(1), &resp);
    for (_, reply) in w.server_transmits() {
        assert!(reply.len() <= resp.len());
    }
    // Server full: request -> denied, response -> denied.
    let t = w.token(3);
    let req = request_bytes(&t);
    w.deliver_to_server(client_addr(2), &req);
    let replies = w.server_transmits();
    assert_eq!(replies.len(), 1);
    assert!(replies[0].1.len() <= req.len());
    assert_eq!(
        packet::parse_header(&replies[0].1, Side::Client)
            .unwrap()
            .kind,
        PacketKind::Denied
    );
}

/// A token pasted in with little of its life left ends as expired when
/// that runs out, not as a timeout of a server that was there (it counted
/// the token's whole lifetime from the connect, and the server dropped
/// its requests as expired meanwhile).
#[test]
fn a_token_used_late_expires_when_its_life_runs_out() {
    let w = World::new(1);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    let mut params = params(1);
    params.timeout_seconds = 5;
    let mut rng = TestRng(3);
    let token = ConnectToken::generate(&params, &w.key, &mut rng).unwrap();
    // 30 s of life, 28 of them gone.
    client.connect(&token, w.now, UNIX + 28).unwrap();
    client.handle_timeout(w.now + Duration::from_millis(1_900));
    assert_eq!(client.state(), ClientState::SendingConnectionRequest);
    client.handle_timeout(w.now + Duration::from_secs(2));
    assert_eq!(client.state(), ClientState::ConnectTokenExpired);
}

/// A client whose first server said it was full, and whose next one never
/// answered, says the server was full, not that nobody answered.
#[test]
fn a_denial_is_the_reason_when_the_next_address_is_silent() {
    let mut w = World::new(1);
    let _player = w.connected_pair();
    let silent: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let mut params = params(2);
    params.server_addresses = vec![server_addr(), silent];
    let token = ConnectToken::generate(&params, &w.key, &mut w.rng).unwrap();
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, w.now, UNIX).unwrap();
    let mut clients = [(client_addr(1), client)];
    w.pump(&mut clients);
    assert_eq!(
        clients[0].1.state(),
        ClientState::SendingConnectionRequest,
        "denied by the full server, on to the next address"
    );
    w.advance(Duration::from_secs(6), &mut clients);
    assert_eq!(clients[0].1.state(), ClientState::ConnectionDenied);
}

/// A token saved and used again by a new `Client` (the program run again)
/// after its first user's session, on a server that has not seen it (this
/// one restarted): the new client's numbers start past the first's, so
/// that none of its packets is sealed under a nonce the first used, and
/// the first's packets, recorded and replayed from the new address, are
/// refused as old (a new client started at zero, and they were taken as
/// the new session's payloads).
#[test]
fn a_token_used_again_by_a_new_client_repeats_no_nonce_and_takes_no_replay() {
    // Five seconds later, from another port.
    a_new_client_repeats_no_nonce_of_an_earlier_ones(UNIX, UNIX + 5);
}

/// A client clock behind the token's maker's (the token is made at
/// `UNIX`): both runs started at zero, sealing new packets under the first
/// run's nonces, and a server that had not seen the token took the first
/// run's packets, replayed, as the second's.
#[test]
fn runs_on_a_clock_behind_the_tokens_maker_repeat_no_nonce_and_take_no_replay() {
    a_new_client_repeats_no_nonce_of_an_earlier_ones(UNIX - 120, UNIX - 90);
}

/// Two runs (two `Client`s, from two ports) with one token, their wall
/// clocks reading `first_unix` and then `second_unix`, the server
/// restarted in between: the second seals no packet under a sequence the
/// first used, and the restarted server refuses the first's packets.
fn a_new_client_repeats_no_nonce_of_an_earlier_ones(first_unix: u64, second_unix: u64) {
    let mut w = World::new(4);
    let token = w.token(1);
    let mut first = [(client_addr(0), Client::new(ClientConfig::new(PROTOCOL)))];
    first[0].1.connect(&token, w.now, first_unix).unwrap();
    w.pump(&mut first);
    assert_eq!(first[0].1.state(), ClientState::Connected);
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut recorded = Vec::new();
    for _ in 0..50 {
        let t = first[0].1.send_payload(w.now, b"trade", &mut buf).unwrap();
        recorded.push(buf[..t.len].to_vec());
        assert!(w.deliver_to_server(client_addr(0), &buf[..t.len]).is_some());
    }
    let key = w.key;
    w.server = Server::new(
        ServerConfig::new(PROTOCOL, key, vec![server_addr()]),
        &mut TestRng(99),
    )
    .unwrap();

    let mut second = [(client_addr(1), Client::new(ClientConfig::new(PROTOCOL)))];
    second[0].1.connect(&token, w.now, second_unix).unwrap();
    let mut sealed = Vec::new();
    for _ in 0..16 {
        while let Some(t) = second[0].1.poll_transmit(w.now, &mut buf) {
            if buf[0] != 0 {
                sealed.push(buf[..t.len].to_vec());
            }
            w.server
                .handle_datagram(w.now, UNIX + 5, client_addr(1), &mut buf[..t.len]);
        }
        for (_, mut bytes) in w.server_transmits() {
            second[0]
                .1
                .handle_datagram(w.now, server_addr(), &mut bytes);
        }
    }
    assert_eq!(second[0].1.state(), ClientState::Connected);
    let t = second[0].1.send_payload(w.now, b"new", &mut buf).unwrap();
    sealed.push(buf[..t.len].to_vec());
    assert!(w.deliver_to_server(client_addr(1), &buf[..t.len]).is_some());

    let sequence = |p: &Vec<u8>| packet::parse_header(p, Side::Server).unwrap().sequence;
    let before: HashSet<u64> = recorded.iter().map(sequence).collect();
    let again: Vec<u64> = sealed
        .iter()
        .map(sequence)
        .filter(|s| before.contains(s))
        .collect();
    assert_eq!(again, [], "sequences sealed again under the token's key");
    for old in &recorded {
        assert_eq!(
            w.deliver_to_server(client_addr(1), old),
            None,
            "a replayed packet of the first session was taken"
        );
    }
}

#[test]
fn no_nonce_is_used_twice_under_one_key() {
    let mut w = World::new(2);
    let token = w.token(1);
    let mut c = Client::new(ClientConfig::new(PROTOCOL));
    c.connect(&token, w.now, UNIX).unwrap();
    let addr = client_addr(0);
    let mut client_sent: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    // Repeated requests and responses, a lost keep-alive, payloads, idle
    // keep-alives, and a reconnect with the same token.
    for round in 0..60 {
        while let Some(t) = c.poll_transmit(w.now, &mut buf) {
            client_sent.push(buf[..t.len].to_vec());
            let mut b = buf[..t.len].to_vec();
            w.server.handle_datagram(w.now, UNIX, addr, &mut b);
        }
        for (_, bytes) in w.server_transmits() {
            if round > 3 {
                c.handle_datagram(w.now, server_addr(), &mut bytes.clone());
            }
        }
        if c.state() == ClientState::Connected {
            let t = c.send_payload(w.now, b"x", &mut buf).unwrap();
            client_sent.push(buf[..t.len].to_vec());
            w.server
                .handle_datagram(w.now, UNIX, addr, &mut buf[..t.len]);
            let slot = w.server.client_at(addr).unwrap();
            let t = w.server.send_payload(w.now, slot, b"y", &mut buf).unwrap();
            w.server_sent.push((addr, buf[..t.len].to_vec()));
        }
        if round == 40 {
            c.disconnect();
            while let Some(t) = c.poll_transmit(w.now, &mut buf) {
                client_sent.push(buf[..t.len].to_vec());
                w.server
                    .handle_datagram(w.now, UNIX, addr, &mut buf[..t.len]);
            }
            assert_eq!(w.server.num_connected(), 0);
            c.connect(&token, w.now, UNIX).unwrap();
        }
        w.advance(Duration::from_millis(60), &mut []);
    }
    let seqs = |packets: &[Vec<u8>]| -> Vec<u64> {
        packets
            .iter()
            .filter(|p| p[0] != 0)
            .map(|p| {
                packet::parse_header(p, Side::Server)
                    .or_else(|_| packet::parse_header(p, Side::Client))
                    .unwrap()
                    .sequence
            })
            .collect()
    };
    assert_eq!(c.state(), ClientState::Connected);
    assert_eq!(w.server.stats().clients_connected, 2);
    let up = seqs(&client_sent);
    assert!(up.len() > 50);
    assert_eq!(
        up.iter().collect::<HashSet<_>>().len(),
        up.len(),
        "client reused a nonce"
    );
    let down_packets: Vec<Vec<u8>> = w.server_sent.iter().map(|(_, p)| p.clone()).collect();
    let down = seqs(&down_packets);
    assert!(down.len() > 50);
    assert_eq!(
        down.iter().collect::<HashSet<_>>().len(),
        down.len(),
        "server reused a nonce"
    );
}

#[test]
fn ten_thousand_clients_connect() {
    const N: u32 = 10_000;
    let mut w = World::new(N as usize);
    let mut clients: Vec<(SocketAddr, Client)> = (0..N)
        .map(|i| {
            let token = w.token(u64::from(i) + 1);
            let mut c = Client::new(ClientConfig::new(PROTOCOL));
            c.connect(&token, w.now, UNIX).unwrap();
            (client_addr(i), c)
        })
        .collect();
    let mut connected = 0;
    for chunk in clients.chunks_mut(500) {
        for e in w.pump(chunk) {
            if e.starts_with("ClientConnected") {
                connected += 1;
            }
        }
    }
    assert_eq!(connected, N);
    assert_eq!(w.server.num_connected(), N as usize);
    assert!(
        clients
            .iter()
            .all(|(_, c)| c.state() == ClientState::Connected)
    );
    // O(1) lookups by address and id agree.
    for (i, (addr, c)) in clients.iter().enumerate().step_by(997) {
        let slot = w.server.client_at(*addr).unwrap();
        assert_eq!(slot.get() as u32, c.client_index().unwrap());
        assert_eq!(w.server.client_by_id(i as u64 + 1), Some(slot));
    }
    // One more is denied.
    let token = w.token(u64::from(N) + 1);
    let mut c = Client::new(ClientConfig::new(PROTOCOL));
    c.connect(&token, w.now, UNIX).unwrap();
    let mut extra = [(client_addr(N), c)];
    w.pump(&mut extra);
    assert_eq!(extra[0].1.state(), ClientState::ConnectionDenied);
}

#[test]
fn tokens_round_trip_through_bytes_and_base64() {
    let mut w = World::new(1);
    let mut p = params(77);
    p.server_addresses = vec![
        "10.0.0.1:1".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    ];
    let token = ConnectToken::generate(&p, &w.key, &mut w.rng).unwrap();
    assert_eq!(ConnectToken::from_bytes(&token.to_bytes()).unwrap(), token);
    let text = token.to_base64();
    assert_eq!(text.len(), 2732);
    assert_eq!(
        ConnectToken::from_base64(&format!(" {text}\n")).unwrap(),
        token
    );
    assert_eq!(ConnectToken::from_base64("AAAA"), Err(TokenError::Encoding));
    assert_eq!(
        ConnectToken::from_base64(&text.replace('A', "!")),
        Err(TokenError::Encoding)
    );
    let mut private = *token.private_data;
    token::decrypt_private(
        &mut private,
        PROTOCOL,
        token.expire_timestamp,
        &token.nonce,
        &w.key,
    )
    .unwrap();
    let inner = PrivateConnectToken::read(&private).unwrap();
    assert_eq!(inner.client_id, 77);
    assert_eq!(inner.server_addresses, p.server_addresses);
    assert_eq!(inner.user_data, p.user_data);
    assert_eq!(inner.client_to_server_key, token.client_to_server_key);
    assert!(matches!(
        ConnectToken::generate(
            &TokenParams {
                server_addresses: vec![],
                ..params(1)
            },
            &w.key,
            &mut w.rng
        ),
        Err(TokenError::ServerAddressCount(0))
    ));
}

// ---------------------------------------------------------------------------
// Golden vectors: the reference C implementation's output for fixed inputs,
// shipped as files in the `netcode-official` crate (our dev-dependency).
// They are read from Cargo's registry at test time, not copied here.

const V_PROTOCOL: u64 = 0x1122334455667788;
const V_CLIENT_ID: u64 = 0x0102030405060708;
const V_CREATE: u64 = 1720000000;
const V_EXPIRE: u64 = 1720000100;
const V_CHALLENGE_SEQUENCE: u64 = 1000;
const V_PACKET_SEQUENCE: u64 = 0x1122334455;
const V_PRIVATE_KEY: [u8; 32] = [
    0x60, 0x6a, 0xbe, 0x6e, 0xc9, 0x19, 0x10, 0xea, 0x9a, 0x65, 0x62, 0xf6, 0x6f, 0x2b, 0x30, 0xe4,
    0x43, 0x71, 0xd6, 0x2c, 0xd1, 0x99, 0x27, 0x26, 0x6b, 0x3c, 0x60, 0xf4, 0xb7, 0x15, 0xab, 0xa1,
];

fn bytes_from(f: impl Fn(usize) -> u8) -> [u8; 32] {
    std::array::from_fn(f)
}

fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NETCODE_REFERENCE_VECTORS") {
        return dir.into();
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = home.join("registry").join("src");
    for entry in std::fs::read_dir(&registry).expect("cargo registry sources") {
        let dir = entry
            .unwrap()
            .path()
            .join("netcode-official-1.0.0/tests/vectors");
        if dir.is_dir() {
            return dir;
        }
    }
    panic!(
        "netcode-official 1.0.0 sources not found under {}; set NETCODE_REFERENCE_VECTORS",
        registry.display()
    );
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(vectors_dir().join(name)).unwrap()
}

fn vector_token() -> (PrivateConnectToken, ConnectToken) {
    let servers: Vec<SocketAddr> = vec![
        "127.0.0.1:40000".parse().unwrap(),
        "[::1]:50000".parse().unwrap(),
    ];
    let private = PrivateConnectToken {
        client_id: V_CLIENT_ID,
        timeout_seconds: 15,
        server_addresses: servers.clone(),
        client_to_server_key: Key::from_bytes(bytes_from(|i| i as u8)),
        server_to_client_key: Key::from_bytes(bytes_from(|i| 255 - i as u8)),
        user_data: std::array::from_fn(|i| i as u8),
    };
    let token = ConnectToken::generate_with(
        &TokenParams {
            protocol_id: V_PROTOCOL,
            client_id: V_CLIENT_ID,
            create_timestamp: V_CREATE,
            expire_seconds: V_EXPIRE - V_CREATE,
            timeout_seconds: 15,
            server_addresses: servers,
            user_data: private.user_data,
        },
        &Key::from_bytes(V_PRIVATE_KEY),
        std::array::from_fn(|i| (100 + i) as u8),
        private.client_to_server_key,
        private.server_to_client_key,
    )
    .unwrap();
    (private, token)
}

#[test]
fn golden_private_and_public_connect_token() {
    let (private, token) = vector_token();
    let mut plain = [0u8; CONNECT_TOKEN_PRIVATE_BYTES];
    private.write(&mut plain).unwrap();
    assert_eq!(
        &plain[..],
        &vector("private_connect_token_plaintext.bin")[..]
    );
    assert_eq!(
        &token.private_data[..],
        &vector("private_connect_token_encrypted.bin")[..]
    );
    let reference = vector("connect_token.bin");
    assert_eq!(&token.to_bytes()[..], &reference[..]);
    assert_eq!(ConnectToken::from_bytes(&reference).unwrap(), token);
    let mut decrypted = *token.private_data;
    token::decrypt_private(
        &mut decrypted,
        V_PROTOCOL,
        V_EXPIRE,
        &token.nonce,
        &Key::from_bytes(V_PRIVATE_KEY),
    )
    .unwrap();
    assert_eq!(PrivateConnectToken::read(&decrypted).unwrap(), private);
}

#[test]
fn golden_challenge_token() {
    let cipher = PacketCipher::new(&Key::from_bytes(bytes_from(|i| (i * 2) as u8)));
    let mut out = [0u8; CHALLENGE_TOKEN_BYTES];
    let user: [u8; USER_DATA_BYTES] = std::array::from_fn(|i| i as u8);
    // The standard binds the challenge to nothing; this server binds it to
    // its token (below), the construction is the same.
    token::write_challenge(
        &mut out,
        V_CLIENT_ID,
        &user,
        V_CHALLENGE_SEQUENCE,
        &[],
        &cipher,
    )
    .unwrap();
    let reference = vector("challenge_token_encrypted.bin");
    assert_eq!(&out[..], &reference[..]);
    let mut back = reference.clone();
    let (id, data) = token::open_challenge(&mut back, V_CHALLENGE_SEQUENCE, &[], &cipher).unwrap();
    assert_eq!((id, data), (V_CLIENT_ID, user));
}

#[test]
fn golden_packets_match_the_reference_both_ways() {
    let (_, token) = vector_token();
    let mut out = [0u8; 1400];
    let n = packet::write_request(&mut out, &token).unwrap();
    assert_eq!(&out[..n], &vector("packet_request.bin")[..]);

    let cipher = PacketCipher::new(&Key::from_bytes(bytes_from(|i| (i + 17) as u8)));
    let challenge = vector("challenge_token_encrypted.bin");
    let mut challenge_body = V_CHALLENGE_SEQUENCE.to_le_bytes().to_vec();
    challenge_body.extend_from_slice(&challenge);
    let mut keep_alive = 7u32.to_le_bytes().to_vec();
    keep_alive.extend_from_slice(&32u32.to_le_bytes());
    let payload: Vec<u8> = (0..MAX_PAYLOAD_BYTES).map(|i| i as u8).collect();
    let cases: [(&str, PacketKind, Vec<u8>, Side); 6] = [
        (
            "packet_denied.bin",
            PacketKind::Denied,
            vec![],
            Side::Client,
        ),
        (
            "packet_challenge.bin",
            PacketKind::Challenge,
            challenge_body.clone(),
            Side::Client,
        ),
        (
            "packet_response.bin",
            PacketKind::Response,
            challenge_body,
            Side::Server,
        ),
        (
            "packet_keep_alive.bin",
            PacketKind::KeepAlive,
            keep_alive,
            Side::Client,
        ),
        (
            "packet_payload.bin",
            PacketKind::Payload,
            payload,
            Side::Client,
        ),
        (
            "packet_disconnect.bin",
            PacketKind::Disconnect,
            vec![],
            Side::Client,
        ),
    ];
    for (file, kind, body, side) in cases {
        let reference = vector(file);
        let n = packet::seal(
            &mut out,
            kind,
            V_PACKET_SEQUENCE,
            &body,
            V_PROTOCOL,
            &cipher,
        )
        .unwrap();
        assert_eq!(&out[..n], &reference[..], "{file}");
        let mut read = reference.clone();
        let header = packet::parse_header(&read, side).unwrap();
        assert_eq!((header.kind, header.sequence), (kind, V_PACKET_SEQUENCE));
        let opened = packet::open_body(&mut read, &header, V_PROTOCOL, &cipher).unwrap();
        assert_eq!(opened, &body[..], "{file}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Arbitrary datagrams, shaped like each packet kind or not, from an
    /// unknown or a connected address: never a panic, never a reply to an
    /// unknown source, never a state change.
    #[test]
    fn arbitrary_datagrams_are_dropped_safely(
        prefix in proptest::prelude::any::<u8>(),
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1300),
        from_connected in proptest::prelude::any::<bool>(),
    ) {
        let mut w = World::new(2);
        let (addr, mut client) = w.connected_pair();
        w.server_transmits();
        let before = w.state_summary();
        let mut datagram = body.clone();
        datagram.insert(0, prefix);
        let from = if from_connected { addr } else { client_addr(5) };
        let event = w.deliver_to_server(from, &datagram);
        proptest::prop_assert!(event.is_none());
        proptest::prop_assert_eq!(w.state_summary(), before);
        proptest::prop_assert!(w.server_transmits().is_empty());
        let mut copy = datagram.clone();
        proptest::prop_assert!(client.handle_datagram(w.now, server_addr(), &mut copy).is_none());
        proptest::prop_assert_eq!(client.state(), ClientState::Connected);
    }
}

/// A client that gives up after sending its response, before the
/// keep-alive that says it is connected arrives (a cancel, the keep-alive
/// lost), still says goodbye: the server connected it on the response, and
/// would otherwise hold the slot and the account until the token's
/// timeout, refusing the player's next attempt meanwhile.
#[test]
fn a_client_that_gives_up_after_its_response_frees_its_slot() {
    let mut world = World::new(4);
    let token = world.token(1);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, world.now, UNIX).unwrap();
    let addr = client_addr(0);
    // The request, then the challenge back.
    world.send_from(addr, &mut client);
    for (_, bytes) in world.server_transmits() {
        let mut bytes = bytes;
        client.handle_datagram(world.now, server_addr(), &mut bytes);
    }
    assert_eq!(client.state(), ClientState::SendingConnectionResponse);
    // The response connects it on the server; the keep-alive is lost.
    world.send_from(addr, &mut client);
    assert_eq!(world.server.num_connected(), 1);
    world.server_transmits();
    client.disconnect();
    world.send_from(addr, &mut client);
    assert_eq!(world.server.num_connected(), 0);
}

/// `poll_transmit` until `None` ends also with zero intervals: one request
/// (or keep-alive) per instant, not one per call.
#[test]
fn zero_intervals_send_once_an_instant() {
    let mut world = World::new(4);
    let token = world.token(1);
    let config = ClientConfig {
        handshake_interval: Duration::ZERO,
        keepalive_interval: Duration::ZERO,
        ..ClientConfig::new(PROTOCOL)
    };
    let mut client = Client::new(config);
    client.connect(&token, world.now, UNIX).unwrap();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let now = world.now;
    let sent = std::iter::from_fn(|| client.poll_transmit(now, &mut buf))
        .take(100)
        .count();
    assert_eq!(sent, 1);
    let later = now + Duration::from_millis(1);
    let sent = std::iter::from_fn(|| client.poll_transmit(later, &mut buf))
        .take(100)
        .count();
    assert_eq!(sent, 1);
}

/// A player at `client_addr(0)` who has taken its challenge, and a
/// request of another account forged from its address.
fn handshake_and_forged_request(w: &mut World) -> (Client, Vec<u8>) {
    let token = w.token(1);
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, w.now, UNIX).unwrap();
    w.send_from(client_addr(0), &mut client);
    for (_, mut challenge) in w.server_transmits() {
        client.handle_datagram(w.now, server_addr(), &mut challenge);
    }
    let forged = request_bytes(&w.token(666));
    (client, forged)
}

/// A request forged from a player's address with a token of the forger's
/// own account took the place of the player's handshake: every response
/// of the player then failed to decrypt, and it never connected.
#[test]
fn a_forged_request_of_another_account_leaves_a_players_handshake_alone() {
    let mut w = World::new(4);
    let (client, forged) = handshake_and_forged_request(&mut w);
    assert_eq!(w.deliver_to_server(client_addr(0), &forged), None);
    assert!(
        w.server_transmits().is_empty(),
        "the forged request is not answered"
    );
    assert_eq!(
        w.server.stats().dropped.get(DropReason::AddressInHandshake),
        1
    );
    let mut clients = [(client_addr(0), client)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(
        w.server
            .client_id(w.server.client_at(client_addr(0)).unwrap()),
        Some(1)
    );
}

/// A recorded request of the player's older token, replayed from its
/// address while its newer token's handshake is under way, leaves that
/// handshake alone: it took its place (the same account, so no
/// `AddressInHandshake`), and the player's responses, sealed with the
/// newer token's keys, failed to decrypt, every attempt, until the newer
/// token expired.
#[test]
fn a_replayed_request_of_an_older_token_leaves_the_newer_handshake_alone() {
    let mut w = World::new(4);
    let a = client_addr(0);
    let older = w.token(7);
    let sniffed = request_bytes(&older);
    w.deliver_to_server(a, &sniffed);
    w.server_transmits();
    let newer = ConnectToken::generate(
        &TokenParams {
            create_timestamp: UNIX + 10,
            ..params(7)
        },
        &w.key,
        &mut w.rng,
    )
    .unwrap();
    assert!(newer.expire_timestamp > older.expire_timestamp);
    let mut player = Client::new(ClientConfig::new(PROTOCOL));
    player.connect(&newer, w.now, UNIX).unwrap();
    w.send_from(a, &mut player);
    for (_, mut challenge) in w.server_transmits() {
        player.handle_datagram(w.now, server_addr(), &mut challenge);
    }
    w.deliver_to_server(a, &sniffed);
    assert!(
        w.server_transmits().is_empty(),
        "the replay is not answered"
    );
    assert_eq!(w.server.stats().dropped.get(DropReason::TokenSuperseded), 1);
    let mut clients = [(a, player)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(w.server.stats().dropped.get(DropReason::DecryptFailed), 0);
}

/// A token of `client_id` made `age` seconds after the others, valid for
/// `life` seconds.
fn token_made(w: &mut World, client_id: u64, age: u64, life: u64) -> ConnectToken {
    let params = TokenParams {
        create_timestamp: UNIX + age,
        expire_seconds: life,
        ..params(client_id)
    };
    ConnectToken::generate(&params, &w.key, &mut w.rng).unwrap()
}

/// The older token's request replayed again and again does not hold off
/// a newer token that expires first (tokens of one account may have
/// different lifetimes: `server token` mints 300 s, the bots 60 s): the
/// check compared expiries, so the older, longer-lived token held the
/// handshake and the newer one was refused.
#[test]
fn a_replayed_longer_lived_older_token_holds_off_no_newer_one() {
    let mut w = World::new(4);
    let a = client_addr(0);
    let older = token_made(&mut w, 7, 0, 300);
    let sniffed = request_bytes(&older);
    w.deliver_to_server(a, &sniffed);
    w.server_transmits();
    let newer = token_made(&mut w, 7, 10, 60);
    assert!(newer.expire_timestamp < older.expire_timestamp);
    let mut player = Client::new(ClientConfig::new(PROTOCOL));
    player.connect(&newer, w.now, UNIX).unwrap();
    let mut clients = [(a, player)];
    for _ in 0..5 {
        w.deliver_to_server(a, &sniffed);
        w.server_transmits();
        w.pump(&mut clients);
        w.advance(Duration::from_millis(100), &mut clients);
    }
    assert_eq!(clients[0].1.state(), ClientState::Connected);
}

/// A player who gave up a handshake (no goodbye) and tries again at once
/// with a new token from another port connects at once, whatever the
/// tokens' lifetimes.
#[test]
fn a_new_token_after_an_abandoned_handshake_connects_at_once() {
    let mut w = World::new(4);
    let abandoned = token_made(&mut w, 7, 0, 300);
    w.deliver_to_server(client_addr(0), &request_bytes(&abandoned));
    w.server_transmits();
    let fresh = token_made(&mut w, 7, 5, 60);
    let mut player = Client::new(ClientConfig::new(PROTOCOL));
    player.connect(&fresh, w.now, UNIX).unwrap();
    let mut clients = [(client_addr(1), player)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
    assert_eq!(w.server.stats().dropped.get(DropReason::TokenSuperseded), 0);
}

/// On a full server, the denial of a forged request does not end the
/// handshake another token started at its address either: the player
/// connects once a slot frees.
#[test]
fn a_forged_request_to_a_full_server_leaves_a_players_handshake_alone() {
    let mut w = World::new(2);
    let mut others: Vec<_> = (0..1).map(|i| w.join(100 + i, 10 + i as u32)).collect();
    let (client, forged) = handshake_and_forged_request(&mut w);
    // The last slot taken after the player's challenge.
    others.push(w.join(200, 20));
    assert_eq!(w.server.num_connected(), 2);
    assert_eq!(w.deliver_to_server(client_addr(0), &forged), None);
    w.server_transmits();
    assert_eq!(w.server.num_pending(), 1, "the player's handshake stays");
    let slot = w.server.client_at(client_addr(20)).unwrap();
    w.server.disconnect(slot).unwrap();
    w.server_transmits();
    let mut clients = [(client_addr(0), client)];
    w.pump(&mut clients);
    assert_eq!(clients[0].1.state(), ClientState::Connected);
}
