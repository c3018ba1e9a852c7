//! A spoofed-connect flood over loopback UDP: 50,000 well-formed connection
//! requests with forged tokens from 500 source addresses (127.0.x.y), paced
//! over about 5 seconds. A legitimate client connecting in the middle of it
//! must be connected before the flood is over, and afterwards the server
//! must hold no state for the flood beyond its fixed-size rate-limit table.
//! Bounded: the flood stops after 50,000 datagrams and every loop has a
//! hard deadline.

#![expect(
    clippy::disallowed_methods,
    reason = "tests anchor virtual time at a real Instant and use real sockets"
)]

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use getrandom::SysRng;
use rand_core::{Rng, UnwrapErr};
use shared::netcode::{
    CONNECTION_REQUEST_BYTES, Client, ClientConfig, ClientState, ConnectToken, DropReason,
    HandshakeRateLimit, Key, MAX_PACKET_BYTES, Server, ServerConfig, ServerStats, TokenParams,
    VERSION_INFO,
};

const PROTOCOL: u64 = 0xf100d;
const FLOOD_SOURCES: usize = 500;
const FLOOD_REQUESTS: usize = 50_000;
const FLOOD_DURATION: Duration = Duration::from_secs(5);
const HARD_DEADLINE: Duration = Duration::from_secs(20);

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

struct ServerReport {
    stats: ServerStats,
    connected: usize,
    pending: usize,
    token_entries: usize,
    rate_limited_sources: usize,
    rate_limit_capacity: usize,
    /// Datagrams the kernel dropped for a full receive buffer (0 where it
    /// does not say).
    kernel_drops: u64,
}

/// Runs the server on `socket` until `stop` is set (or the hard deadline).
fn run_server(socket: UdpSocket, mut server: Server, stop: Arc<AtomicBool>) -> ServerReport {
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let mut out = [0u8; MAX_PACKET_BYTES];
    while !stop.load(Ordering::Relaxed) && start.elapsed() < HARD_DEADLINE {
        // Up to 256 datagrams per turn, then service timers and replies.
        for _ in 0..256 {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let now = Instant::now();
                    server.handle_datagram(now, unix_secs(), from, &mut buf[..n]);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("server recv: {e}"),
            }
        }
        let now = Instant::now();
        server.handle_timeout(now);
        while server.poll_event().is_some() {}
        while let Some(t) = server.poll_transmit(now, &mut out) {
            let _ = socket.send_to(&out[..t.len], t.destination);
        }
    }
    ServerReport {
        stats: server.stats().clone(),
        connected: server.num_connected(),
        pending: server.num_pending(),
        token_entries: server.num_token_entries(),
        rate_limited_sources: server.num_rate_limited_sources(),
        rate_limit_capacity: server.rate_limit_capacity(),
        kernel_drops: shared::io::socket::receive_drops(&socket).map_or(0, u64::from),
    }
}

/// Sends `FLOOD_REQUESTS` forged requests round-robin from `FLOOD_SOURCES`
/// loopback addresses, paced evenly over `FLOOD_DURATION`; every tenth
/// (so 450 of those addresses send) comes from one more address, a hot
/// source far over its rate (the
/// others, more than the rate-limit table tracks, keep evicting one
/// another, so whether one of them is ever limited is down to the hash).
fn run_flood(target: SocketAddr) -> usize {
    let sockets: Vec<UdpSocket> = (0..FLOOD_SOURCES)
        .map(|i| {
            let ip = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
            UdpSocket::bind((ip, 0)).expect("bind 127.0.x.y")
        })
        .collect();
    let hot = UdpSocket::bind((Ipv4Addr::new(127, 0, 3, 1), 0)).expect("bind 127.0.3.1");
    let mut rng = UnwrapErr(SysRng);
    let mut request = [0u8; CONNECTION_REQUEST_BYTES];
    let start = Instant::now();
    let mut sent = 0;
    for n in 0..FLOOD_REQUESTS {
        // Well-formed and unexpired, so the server must try the token.
        request[0] = 0;
        request[1..14].copy_from_slice(&VERSION_INFO);
        request[14..22].copy_from_slice(&PROTOCOL.to_le_bytes());
        request[22..30].copy_from_slice(&(unix_secs() + 60).to_le_bytes());
        rng.fill_bytes(&mut request[30..]);
        let socket = if n % 10 == 0 {
            &hot
        } else {
            &sockets[n % FLOOD_SOURCES]
        };
        if socket.send_to(&request, target).is_ok() {
            sent += 1;
        }
        // Pace: request n is due at n / FLOOD_REQUESTS of the duration.
        let due = FLOOD_DURATION.mul_f64(n as f64 / FLOOD_REQUESTS as f64);
        if let Some(wait) = due.checked_sub(start.elapsed())
            && n % 64 == 0
        {
            thread::sleep(wait);
        }
        if start.elapsed() > HARD_DEADLINE {
            break;
        }
    }
    sent
}

#[test]
fn legitimate_client_connects_during_a_spoofed_request_flood() {
    let mut rng = UnwrapErr(SysRng);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Room for the flood while the server's thread waits for a core.
    shared::io::socket::tune_udp_socket(&socket, shared::io::socket::DEFAULT_SOCKET_BUFFER_BYTES);
    let server_addr = socket.local_addr().unwrap();
    let key = Key::generate(&mut rng);
    let mut config = ServerConfig::new(PROTOCOL, key, vec![server_addr]);
    config.max_clients = 16;
    config.rate_limit = HandshakeRateLimit {
        per_second: 5,
        burst: 10,
        table_entries: 256,
        spare_per_second: 100,
    };
    let server = Server::new(config, &mut rng).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server_thread = {
        let stop = stop.clone();
        thread::spawn(move || run_server(socket, server, stop))
    };
    let flood_thread = thread::spawn(move || run_flood(server_addr));

    // Let the flood get going, then connect for real.
    thread::sleep(Duration::from_secs(2));
    let token = ConnectToken::generate(
        &TokenParams {
            protocol_id: PROTOCOL,
            client_id: 7,
            create_timestamp: unix_secs(),
            expire_seconds: 30,
            timeout_seconds: 5,
            server_addresses: vec![server_addr],
            user_data: [0; 256],
        },
        &key,
        &mut rng,
    )
    .unwrap();
    let client_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    client_socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    let started = Instant::now();
    client.connect(&token, started, unix_secs()).unwrap();
    let mut buf = [0u8; 2048];
    let mut out = [0u8; MAX_PACKET_BYTES];
    // The client's own requests: each may get a challenge (one resent
    // before the first challenge came, on a slow host, gets another).
    let mut requests = 0u64;
    // Until connected, or the flood is over (bounded by its hard deadline).
    while client.state() != ClientState::Connected && !flood_thread.is_finished() {
        let now = Instant::now();
        client.handle_timeout(now);
        while let Some(t) = client.poll_transmit(now, &mut out) {
            if client.state() == ClientState::SendingConnectionRequest {
                requests += 1;
            }
            client_socket.send_to(&out[..t.len], t.destination).unwrap();
        }
        if let Ok((n, from)) = client_socket.recv_from(&mut buf) {
            client.handle_datagram(Instant::now(), from, &mut buf[..n]);
        }
    }
    let took = started.elapsed();
    assert_eq!(
        client.state(),
        ClientState::Connected,
        "the legitimate client was not connected when the flood ended"
    );

    let sent = flood_thread.join().unwrap();
    // Give the server a moment to read what is still queued, then stop it.
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let report = server_thread.join().unwrap();

    assert_eq!(sent, FLOOD_REQUESTS);
    assert_eq!(report.connected, 1);
    // Nothing held for the flood: no half-open handshakes, no used-token
    // entries beyond the real client's, and a rate-limit table of the
    // configured size although 451 sources crowded it.
    assert_eq!(report.pending, 0);
    assert_eq!(report.token_entries, 1);
    assert_eq!(report.rate_limit_capacity, 256);
    assert!(
        report.rate_limited_sources > 128,
        "the flood filled {} entries",
        report.rate_limited_sources
    );
    let d = &report.stats.dropped;
    let flood_seen = d.get(DropReason::TokenInvalid) + d.get(DropReason::RateLimited);
    // All of the flood reached the socket; what a descheduled server
    // thread left to overflow its buffer the kernel counts.
    assert!(
        flood_seen + report.kernel_drops >= (FLOOD_REQUESTS as u64) * 9 / 10,
        "server saw {flood_seen} flood requests, the kernel dropped {}: {d:?}",
        report.kernel_drops
    );
    assert!(
        flood_seen >= FLOOD_REQUESTS as u64 / 2,
        "the server read only {flood_seen} of the flood"
    );
    assert!(d.get(DropReason::RateLimited) > 0);
    // And it answered none of them: only the client's requests.
    let challenges = report.stats.challenges_sent;
    assert!(
        (1..=requests).contains(&challenges),
        "{challenges} challenges for the client's {requests} requests"
    );
    eprintln!(
        "flood: {sent} sent, {} rejected as invalid tokens, {} rate limited; \
         legitimate client connected in {took:?}",
        d.get(DropReason::TokenInvalid),
        d.get(DropReason::RateLimited)
    );
}
