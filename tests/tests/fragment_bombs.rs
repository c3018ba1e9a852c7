//! Fragment bombs: connected clients send fragments of messages that never
//! complete, that claim more than the largest message allowed, or that
//! also arrive whole.
//!
//! - Against the server binary: resident memory grows by no more than the
//!   per-connection receive bound allows, the over-claiming client is
//!   disconnected with `ProtocolViolation`, honest players never notice.
//! - Against an in-process [`ServerEndpoint`]: the exact reassembly total
//!   ([`ServerEndpoint::total_receive_buffered`]) never passes its cap by
//!   more than one message, and the client that pushes it over is
//!   disconnected with `Flooding`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::{
    FLOOD_BOUND, RawClient, Rng, ServerOptions, ServerProcess, connect_honest, ended, generators,
    mib, play_all, play_for, scale,
};
use shared::endpoint::{EndpointEvent, ServerEndpoint, ServerEndpointConfig};
use shared::io::unix_secs;
use shared::netcode::{self, MAX_PACKET_BYTES};
use shared::protocol::{PROTOCOL_ID, channels};
use shared::transport::DisconnectReason;
use shared::transport::wire::{FragmentInfo, MessageHeader};

/// `transport_config()`: 1 KiB fragments, 64 KiB messages, 1 MiB receive
/// buffer per connection, three reliable channels.
const FRAGMENT: usize = generators::FRAGMENT_BYTES;
const MAX_MESSAGE: u64 = channels::MAX_GAME_MESSAGE as u64;
const RECEIVE_BUFFER: u64 = 1 << 20;
const RELIABLE_CHANNELS: u64 = 3;
/// Fragments each bomber sends (more if the server did not read them all).
const BOMB_FRAGMENTS: u64 = 3_000;
/// The documented hard bound of one connection's receive memory.
const PER_CONNECTION: u64 = RECEIVE_BUFFER + RELIABLE_CHANNELS * MAX_MESSAGE;

/// Sends the bomb's fragments `fragments` (their numbers in
/// [`generators::bomb_fragment`]); returns the bytes the socket took.
fn send_bomb(client: &mut RawClient, rng: &mut Rng, fragments: std::ops::Range<u64>) -> u64 {
    let mut buf = [0u8; 1_200];
    let payload = [0xAB; FRAGMENT];
    let mut bytes = 0;
    for n in fragments {
        let header = generators::bomb_fragment(rng, n);
        let seq = client.take_seq();
        let len = RawClient::craft(&mut buf, seq, None, false, &[(header, &payload)]);
        bytes += client.send_raw(&buf[..len]) as u64;
        if n % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
            // Acknowledges the server's packets (its welcome among them).
            client.pump(Instant::now());
        }
    }
    bytes
}

#[test]
fn fragment_bombs_stay_within_the_receive_bound_and_over_claims_are_violations() {
    let seed = e2e::seed();
    eprintln!("seed {seed}");
    let mut rng = Rng::new(seed);
    let attackers = scale(8u64, 32);
    let mut server = ServerProcess::start(&ServerOptions::default());
    let mut honest = connect_honest(server.game, 1, 5, Duration::from_secs(10));
    // Each with a real connection under the crafted packets, which
    // acknowledges what the server sends: a bomber that never did would
    // have its session ended by the welcome's reliable timeout (10 s) on a
    // slow host, and the bombs after that would be read and dropped, not
    // held.
    let mut bombers: Vec<RawClient> = (0..attackers)
        .map(|i| {
            let mut bomber = RawClient::connect(server.game, 1_000 + i, 10, Duration::from_secs(5));
            bomber.attach_connection(Instant::now());
            bomber
        })
        .collect();
    play_for(&mut honest, Duration::from_millis(300));
    let rss_before = server.rss_bytes();
    let snapshots_before: Vec<u64> = honest.iter().map(|c| c.seen.snapshots).collect();

    // Each bomber: 3,000 fragments of never-completing messages on all six
    // channels (about 3 MiB claimed each, more than its bound). The memory
    // bound means something only for bombs that arrived: the server must
    // read at least their fragments' bytes (`net_bytes_in_total`, where
    // the honest players' few hundred small datagrams are under 0.2 %),
    // so what the kernel dropped is sent again, up to eight times as many
    // in all (`net-io` runs at nice 10: a busy host's may read a small share).
    let bytes_before = server.metric("net_bytes_in_total");
    let must_read = attackers * BOMB_FRAGMENTS * FRAGMENT as u64;
    let (mut sent_bytes, mut fragments) = (0, 0..BOMB_FRAGMENTS);
    let read = loop {
        for bomber in &mut bombers {
            sent_bytes += send_bomb(bomber, &mut rng, fragments.clone());
            play_all(&mut honest);
        }
        // Read by the next tick or so; at most 2 s.
        let deadline = Instant::now() + Duration::from_secs(2);
        let read = loop {
            play_for(&mut honest, Duration::from_millis(50));
            let read = server.metric("net_bytes_in_total") - bytes_before;
            if read >= must_read as f64 || Instant::now() >= deadline {
                break read;
            }
        };
        let short = (must_read as f64 - read).max(0.0) as u64;
        let more = short.div_ceil(attackers * FRAGMENT as u64);
        if more == 0 || fragments.end + more > FLOOD_BOUND * BOMB_FRAGMENTS {
            break read;
        }
        fragments = fragments.end..fragments.end + more;
    };
    play_for(&mut honest, Duration::from_millis(500));
    let rss_after = server.rss_bytes();
    let growth = rss_after.saturating_sub(rss_before);
    let bound = attackers * PER_CONNECTION + (8 << 20);
    eprintln!(
        "{attackers} bombers: {} fragments each, {:.1} MiB sent, {:.1} MiB read by the server; \
         RSS {:.1} -> {:.1} MiB (+{:.1} MiB; bound {:.1} MiB)",
        fragments.end,
        mib(sent_bytes),
        read / f64::from(1 << 20),
        mib(rss_before),
        mib(rss_after),
        mib(growth),
        mib(bound)
    );
    assert!(server.is_running(), "the server died");
    for bomber in &mut bombers {
        bomber.pump(Instant::now());
        assert_eq!(
            (bomber.state(), bomber.server_reason),
            (netcode::ClientState::Connected, None),
            "a bomber's session ended: the memory bound was not tested against live sessions"
        );
    }
    assert!(
        read >= must_read as f64,
        "the server read {read} bytes, less than the {must_read} of the bombs' fragments: \
         the memory bound was not tested"
    );
    assert!(
        growth <= bound,
        "server RSS grew {:.1} MiB for {attackers} bombers",
        mib(growth)
    );

    // Over-claiming: a fragment of a message of 65,535 fragments (64 MiB).
    let mut buf = [0u8; 1_200];
    let claim = generators::over_claim(channels::CHAT.0, 2_000);
    let offender = &mut bombers[0];
    let seq = offender.take_seq();
    let len = RawClient::craft(&mut buf, seq, None, true, &[(claim, &[0; FRAGMENT])]);
    offender.send_raw(&buf[..len]);
    // A fragment of the wrong size is a violation as well.
    let short = MessageHeader {
        channel: channels::INVENTORY.0,
        id: Some(3),
        fragment: Some(FragmentInfo { index: 0, count: 4 }),
    };
    let other = &mut bombers[1];
    let seq = other.take_seq();
    let len = RawClient::craft(&mut buf, seq, None, true, &[(short, &[0; 100])]);
    other.send_raw(&buf[..len]);

    // Bounded wait for both answers.
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(10)
        && (bombers[0].server_reason.is_none() || bombers[1].server_reason.is_none())
    {
        bombers[0].read(Instant::now());
        bombers[1].read(Instant::now());
        play_all(&mut honest);
        std::thread::sleep(Duration::from_millis(2));
    }
    let violation_after = began.elapsed();
    eprintln!("over-claim and short fragment answered with a disconnect in {violation_after:?}");
    assert_eq!(
        bombers[0].server_reason,
        Some(DisconnectReason::ProtocolViolation)
    );
    assert_eq!(
        bombers[1].server_reason,
        Some(DisconnectReason::ProtocolViolation)
    );

    play_for(&mut honest, Duration::from_millis(500));
    assert_eq!(ended(&honest), vec![], "honest players were disconnected");
    for (client, before) in honest.iter().zip(snapshots_before) {
        assert!(
            client.seen.snapshots > before,
            "client {} starved",
            client.id
        );
    }
}

/// A message whose first fragment has arrived, sent again whole under the
/// same id: the whole copy must not be taken while the fragments' buffer
/// stays charged (each such pair held up to 64 KiB for a small datagram,
/// pushing the server's total past its cap); it is a protocol violation.
#[test]
fn a_message_sent_in_fragments_and_whole_is_a_violation() {
    let server = ServerProcess::start(&ServerOptions::default());
    let mut honest = connect_honest(server.game, 1, 2, Duration::from_secs(10));
    let mut offender = RawClient::connect(server.game, 2_000, 10, Duration::from_secs(5));
    let mut buf = [0u8; 1_200];
    // Chat's first message: the one its channel waits for.
    let first = MessageHeader {
        channel: channels::CHAT.0,
        id: Some(0),
        fragment: Some(FragmentInfo {
            index: 0,
            count: generators::MAX_FRAGMENTS,
        }),
    };
    let seq = offender.take_seq();
    let len = RawClient::craft(&mut buf, seq, None, true, &[(first, &[0; FRAGMENT])]);
    offender.send_raw(&buf[..len]);
    let whole = MessageHeader {
        fragment: None,
        ..first
    };
    let seq = offender.take_seq();
    let len = RawClient::craft(&mut buf, seq, None, true, &[(whole, b"whole")]);
    offender.send_raw(&buf[..len]);

    // Bounded wait for the answer.
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(10) && offender.server_reason.is_none() {
        offender.read(Instant::now());
        play_all(&mut honest);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        offender.server_reason,
        Some(DisconnectReason::ProtocolViolation)
    );
    play_for(&mut honest, Duration::from_millis(300));
    assert_eq!(ended(&honest), vec![], "honest players were disconnected");
}

/// The game's server endpoint on `server_addr`, in memory, whose clients
/// together may buffer `cap` bytes.
fn endpoint_with_total_cap(server_addr: SocketAddr, cap: usize) -> ServerEndpoint {
    let mut config = ServerEndpointConfig::new(
        netcode::ServerConfig::new(PROTOCOL_ID, shared::keys::dev_key(), vec![server_addr]),
        channels::transport_config(),
    );
    config.max_total_receive_buffer = cap;
    ServerEndpoint::new(config, &mut shared::io::system_rng()).expect("an endpoint")
}

/// A netcode client connected to `server` in memory.
fn connect_in_memory(
    server: &mut ServerEndpoint,
    server_addr: SocketAddr,
    from: SocketAddr,
    id: u64,
    now: Instant,
) -> netcode::Client {
    let mut client = netcode::Client::new(netcode::ClientConfig::new(PROTOCOL_ID));
    client
        .connect(&e2e::dev_token(server_addr, id, 10), now, unix_secs())
        .expect("connect");
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    for _ in 0..10 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            server.handle_datagram(now, unix_secs(), from, &mut buf[..t.len]);
        }
        while server.poll_event().is_some() {}
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            if t.destination == from {
                client.handle_datagram(now, server_addr, &mut buf[..t.len]);
            }
        }
        if client.state() == netcode::ClientState::Connected {
            return client;
        }
    }
    panic!(
        "in-memory client {id} did not connect: {:?}",
        client.state()
    );
}

#[test]
fn the_total_receive_bound_holds_exactly_and_the_client_crossing_it_is_flooding() {
    let server_addr: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
    let cap: usize = 4 << 20;
    let mut server = endpoint_with_total_cap(server_addr, cap);
    let now = Instant::now();
    let attackers = 6u16;
    let mut clients: Vec<(SocketAddr, netcode::Client)> = (0..attackers)
        .map(|i| {
            let from: SocketAddr = format!("127.0.0.1:{}", 50_000 + i).parse().expect("addr");
            let client = connect_in_memory(&mut server, server_addr, from, u64::from(i) + 1, now);
            (from, client)
        })
        .collect();
    while server.poll_event().is_some() {}

    let mut rng = Rng::new(7);
    let mut plain = [0u8; 1_200];
    let mut sealed = vec![0u8; MAX_PACKET_BYTES];
    let mut out = vec![0u8; MAX_PACKET_BYTES];
    let mut peak = 0usize;
    let mut reasons: Vec<DisconnectReason> = Vec::new();
    let payload = [0xAB; FRAGMENT];
    for n in 0..3_000u16 {
        for (i, (from, client)) in clients.iter_mut().enumerate() {
            let header = generators::bomb_fragment(&mut rng, u64::from(n));
            let len = RawClient::craft(&mut plain, n, None, false, &[(header, &payload)]);
            let Ok(t) = client.send_payload(now, &plain[..len], &mut sealed) else {
                continue;
            };
            server.handle_datagram(now, unix_secs(), *from, &mut sealed[..t.len]);
            peak = peak.max(server.total_receive_buffered());
            // Drained after every datagram: only the client whose datagram
            // crossed the cap can be over it, by at most what one datagram
            // may claim. Drain order as documented: events, transmits, then
            // events again (the removal of a peer whose goodbye has left).
            // (net-io sends only after a read turn: see the next test.)
            for _ in 0..2 {
                while let Some(event) = server.poll_event() {
                    if let EndpointEvent::Disconnected { reason, .. } = event {
                        reasons.push(reason);
                    }
                }
                while server.poll_transmit(now, &mut out).is_some() {}
            }
            assert!(
                server.total_receive_buffered() as u64 <= cap as u64 + PER_CONNECTION,
                "client {i}, packet {n}: {} bytes buffered, cap {cap}",
                server.total_receive_buffered()
            );
        }
    }
    eprintln!(
        "in-process: {attackers} bombers, cap {:.1} MiB, peak {:.2} MiB buffered, disconnects {reasons:?}",
        mib(cap as u64),
        mib(peak as u64)
    );
    assert!(
        reasons.contains(&DisconnectReason::Flooding),
        "{attackers} x {PER_CONNECTION} bytes exceed the cap, yet nobody was disconnected"
    );
    assert!(
        reasons.iter().all(|r| *r == DisconnectReason::Flooding),
        "{reasons:?}"
    );
    // Memory of the disconnected clients is released.
    let connected = server.connected_clients() as u64;
    assert!(
        server.total_receive_buffered() as u64 <= connected * PER_CONNECTION,
        "{} bytes still buffered for {connected} clients",
        server.total_receive_buffered()
    );

    // An over-claim in process: a ProtocolViolation, no memory charged.
    let (from, client) = clients
        .iter_mut()
        .find(|(from, _)| server.netcode().client_at(*from).is_some())
        .expect("a bomber is still connected (only those crossing the cap are disconnected)");
    let before = server.total_receive_buffered();
    let claim = generators::over_claim(1, 999);
    let len = RawClient::craft(&mut plain, 5_000, None, true, &[(claim, &[1; FRAGMENT])]);
    let t = client
        .send_payload(now, &plain[..len], &mut sealed)
        .expect("seal");
    server.handle_datagram(now, unix_secs(), *from, &mut sealed[..t.len]);
    assert!(server.total_receive_buffered() <= before);
    let mut violation = false;
    for _ in 0..3 {
        while let Some(event) = server.poll_event() {
            if let EndpointEvent::Disconnected { reason, .. } = event {
                violation |= reason == DisconnectReason::ProtocolViolation;
            }
        }
        while server.poll_transmit(now, &mut out).is_some() {}
        if violation {
            break;
        }
    }
    assert!(violation, "over-claiming was not a protocol violation");
}

#[test]
fn only_the_client_crossing_the_total_bound_is_flooding_not_those_after_it() {
    let server_addr: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
    let mut server = endpoint_with_total_cap(server_addr, 512 << 10);
    let now = Instant::now();
    let bomber_addr: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
    let honest_addr: SocketAddr = "127.0.0.1:50001".parse().expect("addr");
    let mut bomber = connect_in_memory(&mut server, server_addr, bomber_addr, 1, now);
    let mut honest = connect_in_memory(&mut server, server_addr, honest_addr, 2, now);
    while server.poll_event().is_some() {}

    let mut rng = Rng::new(11);
    let mut plain = [0u8; 1_200];
    let mut sealed = vec![0u8; MAX_PACKET_BYTES];
    let payload = [0xAB; FRAGMENT];
    // The bomber crosses the bound; within the same read turn (net-io
    // drains events between datagrams, transmits only after the turn) an
    // honest client sends a two-fragment message.
    let mut n = 0u16;
    while server.stats().flooding_disconnects == 0 {
        let header = generators::bomb_fragment(&mut rng, u64::from(n));
        let len = RawClient::craft(&mut plain, n, None, false, &[(header, &payload)]);
        let t = bomber
            .send_payload(now, &plain[..len], &mut sealed)
            .expect("seal");
        server.handle_datagram(now, unix_secs(), bomber_addr, &mut sealed[..t.len]);
        while server.poll_event().is_some() {}
        n += 1;
        assert!(n < 5_000, "the bomber never crossed the bound");
    }
    let mut delivered = Vec::new();
    for index in 0..2u16 {
        let header = MessageHeader {
            channel: channels::CHAT.0,
            id: Some(0),
            fragment: Some(FragmentInfo { index, count: 2 }),
        };
        let len = RawClient::craft(&mut plain, index, None, true, &[(header, &payload)]);
        let t = honest
            .send_payload(now, &plain[..len], &mut sealed)
            .expect("seal");
        server.handle_datagram(now, unix_secs(), honest_addr, &mut sealed[..t.len]);
        while let Some(event) = server.poll_event() {
            if let EndpointEvent::Message { payload, .. } = event {
                delivered.push(payload.len());
            }
        }
    }
    // The turn ends: transmits, then events.
    let mut reasons = Vec::new();
    let mut out = vec![0u8; MAX_PACKET_BYTES];
    for _ in 0..3 {
        while server.poll_transmit(now, &mut out).is_some() {}
        while let Some(event) = server.poll_event() {
            if let EndpointEvent::Disconnected {
                client_id, reason, ..
            } = event
            {
                reasons.push((client_id, reason));
            }
        }
    }
    assert_eq!(reasons, [(1, DisconnectReason::Flooding)]);
    assert_eq!(delivered, [2 * FRAGMENT], "the honest message");
    assert!(server.netcode().client_at(honest_addr).is_some());
}
