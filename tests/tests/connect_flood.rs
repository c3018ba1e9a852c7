//! Connection-request floods from many loopback source addresses.
//!
//! - Spoofed: replayed requests of sniffed tokens, requests whose private
//!   token is random, and bit-flipped requests. A legitimate client still
//!   connects while the flood goes on, and no flood source receives more
//!   bytes than it sent (the handshake's anti-amplification rule).
//! - Valid tokens: thousands of distinct tokens signed with the right key
//!   (an attacker with access to the token backend), each sent once from
//!   one of many addresses, whose challenges are never answered. The
//!   half-open table holds at most `max_pending` (1,024) of them: no more
//!   challenges than that go out, memory stays flat, no source receives
//!   more than it sent, and a legitimate client connects at the latest when
//!   the half-open entries expire (see that test for why not sooner).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{
    FLOOD_BOUND, HonestClient, Rng, ServerOptions, ServerProcess, bind_loopback, drain_count,
    generators, mib, scale,
};
use shared::io::unix_secs;
use shared::netcode::{self, MAX_PACKET_BYTES};
use shared::protocol::PROTOCOL_ID;

/// A connection request for a fresh dev token (what a sniffer would capture).
fn sniffed_request(server: std::net::SocketAddr, id: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let now = Instant::now();
    let mut client = netcode::Client::new(netcode::ClientConfig::new(PROTOCOL_ID));
    client
        .connect(&e2e::dev_token(server, id, 10), now, unix_secs())
        .expect("connect");
    let t = client.poll_transmit(now, &mut buf).expect("a request");
    assert_eq!(t.len, netcode::CONNECTION_REQUEST_BYTES);
    buf[..t.len].to_vec()
}

/// Starts a legitimate client and waits until it is connected, calling
/// `between` every millisecond or so; panics after `limit`. Returns the
/// client and how long its handshake took.
fn connect_timed(
    game: std::net::SocketAddr,
    limit: Duration,
    mut between: impl FnMut(),
) -> (HonestClient, Duration) {
    let began = Instant::now();
    let mut client = HonestClient::connect(game, 1, 10);
    loop {
        client.pump(Instant::now());
        between();
        if client.is_connected() {
            return (client, began.elapsed());
        }
        assert!(
            client.seen.ended.is_none(),
            "the legitimate client failed: {:?}",
            client.seen.ended
        );
        assert!(
            began.elapsed() < limit,
            "the legitimate client did not connect within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct FloodSource {
    socket: UdpSocket,
    sent_bytes: u64,
    received_bytes: u64,
    received_datagrams: u64,
}

#[test]
fn a_legitimate_client_connects_during_a_spoofed_connect_flood() {
    let seed = e2e::seed();
    eprintln!("seed {seed}");
    let requests = scale(50_000u64, 500_000);
    e2e::room_for_sockets(250);
    let server = ServerProcess::start(&ServerOptions::default());
    let game = server.game;

    let templates: Vec<Vec<u8>> = (0..4).map(|i| sniffed_request(game, 5_000 + i)).collect();
    // 250 source addresses: 127.0.10.1 ... 127.0.10.250.
    let mut sources: Vec<FloodSource> = (1..=250u8)
        .map(|b| FloodSource {
            socket: bind_loopback(10, b),
            sent_bytes: 0,
            received_bytes: 0,
            received_datagrams: 0,
        })
        .collect();
    let in_before = server.metric("net_packets_in_total");

    let stop = AtomicBool::new(false);
    let (sent, flood_time, ran_out, sources, mut client, connected_after) =
        std::thread::scope(|scope| {
            let flooder = scope.spawn(|| {
                let mut rng = Rng::new(seed);
                let mut sent = 0u64;
                // Datagrams the server has read (`net_packets_in_total`,
                // updated every tick), checked every 10,000 sent.
                let (mut read, mut checked) = (0.0, 0u64);
                let started = Instant::now();
                // Floods until the legitimate client is in and the server
                // has read at least `requests` datagrams (the kernel drops
                // what its socket buffer cannot hold); bounded: stops at 8x
                // the request count or 20 s whatever happens, and then says
                // it ran out.
                let ran_out = loop {
                    if read >= requests as f64 && stop.load(Ordering::Relaxed) {
                        break false;
                    }
                    if sent >= FLOOD_BOUND * requests
                        || started.elapsed() >= Duration::from_secs(20)
                    {
                        break true;
                    }
                    for _ in 0..50 {
                        let i = rng.below(sources.len() as u64) as usize;
                        let mut packet =
                            templates[rng.below(templates.len() as u64) as usize].clone();
                        // A replay, a forged private token or a corrupted request.
                        generators::spoof_request(&mut rng, &mut packet);
                        if sources[i].socket.send_to(&packet, game).is_ok() {
                            sources[i].sent_bytes += packet.len() as u64;
                            sent += 1;
                        }
                    }
                    for source in &mut sources {
                        let (n, b) = drain_count(&source.socket);
                        source.received_datagrams += n;
                        source.received_bytes += b;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                    if sent >= checked + 10_000 {
                        checked = sent;
                        read = server.metric("net_packets_in_total") - in_before;
                    }
                };
                std::thread::sleep(Duration::from_millis(300));
                for source in &mut sources {
                    let (n, b) = drain_count(&source.socket);
                    source.received_datagrams += n;
                    source.received_bytes += b;
                }
                (sent, started.elapsed(), ran_out, sources)
            });

            // Let the flood build up, then connect for real.
            std::thread::sleep(Duration::from_millis(500));
            let (mut client, connected_after) = connect_timed(game, Duration::from_secs(15), || {});
            stop.store(true, Ordering::Relaxed);
            // The session is kept up while the flood finishes.
            while !flooder.is_finished() {
                client.play(Instant::now());
                std::thread::sleep(Duration::from_millis(2));
            }
            let (sent, flood_time, ran_out, sources) = flooder.join().expect("the flooder");
            (sent, flood_time, ran_out, sources, client, connected_after)
        });
    let received = server.metric("net_packets_in_total") - in_before;

    let sent_bytes: u64 = sources.iter().map(|s| s.sent_bytes).sum();
    let got_bytes: u64 = sources.iter().map(|s| s.received_bytes).sum();
    let got_datagrams: u64 = sources.iter().map(|s| s.received_datagrams).sum();
    eprintln!(
        "flood: {sent} requests ({sent_bytes} bytes) from {} addresses in {flood_time:?}; \
         server read {received} datagrams; flood sources got {got_datagrams} datagrams \
         ({got_bytes} bytes); legitimate handshake took {connected_after:?}",
        sources.len()
    );
    assert!(sent >= requests, "only {sent} requests sent");
    // The server read the flood (the few datagrams of the legitimate
    // client included), not only the kernel.
    assert!(
        received >= requests as f64,
        "the server read only {received} datagrams of the {sent} requests sent: the test did \
         not test"
    );
    assert!(
        !ran_out,
        "the flood ran out ({sent} requests in {flood_time:?}) before the legitimate client \
         connected ({connected_after:?}) and the server had read {requests} datagrams: it did \
         not connect during the flood"
    );
    assert!(
        got_bytes <= sent_bytes,
        "amplification: {got_bytes} bytes out for {sent_bytes} in"
    );
    for source in &sources {
        assert!(
            source.received_bytes <= source.sent_bytes,
            "{:?} received {} bytes for {} sent",
            source.socket.local_addr(),
            source.received_bytes,
            source.sent_bytes
        );
    }
    // What keeps the replays from being answered: a token is answered only
    // from the first address that used it, so at most one source a sniffed
    // token heard from the server, and the rest were dropped for it.
    let answered = sources.iter().filter(|s| s.received_datagrams > 0).count();
    assert!(
        answered <= templates.len(),
        "{answered} flood sources were answered: replays of {} tokens from other addresses \
         got challenges",
        templates.len()
    );
    // The legitimate session works: it is welcomed, and it is the only
    // one the flood left connected.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.seen.welcomed && Instant::now() < deadline {
        client.play(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(client.seen.welcomed, "no welcome after the flood");
    assert_eq!(server.metric("connected_clients"), 1.0);
    // The drops by reason are exported once a second.
    let other_address = "net_dropped_datagrams_total{reason=\"TokenUsedFromOtherAddress\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.metric_or_zero(other_address) == 0.0 && Instant::now() < deadline {
        client.play(Instant::now());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        server.metric_or_zero(other_address) > 0.0,
        "no replay was dropped as a token used from another address"
    );
}

/// `netcode::ServerConfig::new`'s `max_pending`, which the server binary
/// keeps: half-open handshakes held at once.
const MAX_PENDING: u64 = 1_024;

#[test]
fn a_valid_token_flood_fills_only_the_bounded_half_open_table() {
    // Half-open entries are keyed by source address and port (one at a
    // time: another account's token from the same address and port is
    // dropped while the first lives), so the flood comes from one and a half tables' worth of sockets, 8 per
    // address (well within the per-address handshake burst of 64), each
    // sending one request with its own valid token.
    let sockets = scale(MAX_PENDING * 3 / 2, MAX_PENDING * 3);
    // The attacker's tokens let a half-open entry live 6 s: many times what
    // the flood takes (about 0.1 s), so no entry expires while it runs and
    // the table is tested full.
    const ATTACK_TIMEOUT_S: i32 = 6;
    e2e::room_for_sockets(sockets);
    let mut server = ServerProcess::start(&ServerOptions::default());
    let game = server.game;
    let sources: Vec<UdpSocket> = (0..sockets).map(|i| bind_loopback_3(i / 8)).collect();
    let mut sent_bytes = vec![0u64; sources.len()];
    let mut received = vec![(0u64, 0u64); sources.len()];
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    // Requests prepared up front, so the flood itself is quick.
    let requests: Vec<Vec<u8>> = (0..sockets)
        .map(|i| {
            let token = shared::keys::mint_token(
                &shared::keys::dev_key(),
                vec![game],
                3_000_000 + i,
                120,
                ATTACK_TIMEOUT_S,
            )
            .expect("mint a token");
            let mut client = netcode::Client::new(netcode::ClientConfig::new(PROTOCOL_ID));
            let now = Instant::now();
            client.connect(&token, now, unix_secs()).expect("connect");
            let t = client.poll_transmit(now, &mut buf).expect("a request");
            buf[..t.len].to_vec()
        })
        .collect();
    // A player first, so the baseline includes a session's memory.
    let mut player = e2e::connect_honest(game, 2, 1, Duration::from_secs(5));
    e2e::play_for(&mut player, Duration::from_millis(300));
    let rss_before = server.rss_bytes();

    let began = Instant::now();
    let read_before = server.metric("net_packets_in_total");
    for (i, (source, request)) in sources.iter().zip(&requests).enumerate() {
        if source.send_to(request, game).is_ok() {
            sent_bytes[i] += request.len() as u64;
        }
        // Paced by what the server has read (`net_packets_in_total`,
        // counted every tick): at most 128 requests wait in its socket
        // (about 300 KB of buffer, within the kernel's default), so that
        // none is dropped however slowly a busy host runs `net-io`. About
        // a tick a step, well within the entries' 6 s.
        let sent = i as f64 + 1.0;
        if i % 128 == 127 {
            let waited = Instant::now();
            while server.metric("net_packets_in_total") - read_before < sent
                && waited.elapsed() < Duration::from_secs(1)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let flood_time = began.elapsed();
    assert!(
        flood_time < Duration::from_secs(ATTACK_TIMEOUT_S as u64),
        "the flood took {flood_time:?}, past the half-open entries' {ATTACK_TIMEOUT_S} s: the \
         first could expire before the last came, and the table was not tested full"
    );
    // A newcomer right after the flood.
    let drain = |received: &mut [(u64, u64)]| {
        for (source, got) in sources.iter().zip(received.iter_mut()) {
            let (n, b) = drain_count(source);
            got.0 += n;
            got.1 += b;
        }
    };
    let (mut client, connected_after) = connect_timed(
        game,
        Duration::from_secs(ATTACK_TIMEOUT_S as u64 + 5),
        || drain(&mut received),
    );
    std::thread::sleep(Duration::from_millis(200));
    drain(&mut received);
    let rss_after = server.rss_bytes();
    let challenges: u64 = received.iter().map(|r| r.0).sum();
    let got_bytes: u64 = received.iter().map(|r| r.1).sum();
    let total_sent: u64 = sent_bytes.iter().sum();
    eprintln!(
        "valid-token flood: {sockets} tokens ({total_sent} bytes) from {sockets} sockets on {} \
         addresses in {flood_time:?}; {challenges} challenges ({got_bytes} bytes) came back; legitimate client \
         connected after {connected_after:?}; RSS {:.1} -> {:.1} MiB",
        sockets.div_ceil(8),
        mib(rss_before),
        mib(rss_after)
    );
    assert!(
        challenges <= MAX_PENDING,
        "{challenges} challenges: more half-open handshakes than the table holds \
         (unless entries expired during the flood: it took {flood_time:?}, \
         entries live {ATTACK_TIMEOUT_S} s)"
    );
    assert!(
        challenges >= MAX_PENDING * 9 / 10,
        "only {challenges} challenges: the flood did not fill the table"
    );
    for (i, (sent, got)) in sent_bytes.iter().zip(&received).enumerate() {
        assert!(
            got.1 <= *sent,
            "source {i} received {} bytes for {sent}",
            got.1
        );
    }
    assert!(
        rss_after <= rss_before + (8 << 20),
        "server RSS grew {:.1} MiB",
        mib(rss_after.saturating_sub(rss_before))
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.seen.welcomed && Instant::now() < deadline {
        client.play(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(client.seen.welcomed, "no welcome after the flood");
    assert!(server.is_running());
}

/// A socket on 127.3.<i / 250>.<1 + i % 250>.
fn bind_loopback_3(i: u64) -> UdpSocket {
    let address = std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(127, 3, (i / 250) as u8, 1 + (i % 250) as u8),
        0,
    );
    let socket = UdpSocket::bind(address).unwrap_or_else(|e| panic!("bind {address}: {e}"));
    socket.set_nonblocking(true).expect("non-blocking");
    socket
}
