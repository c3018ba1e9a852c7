//! A connection-request flood from hundreds of (spoofed) loopback source
//! addresses: replayed requests of sniffed tokens, requests whose private
//! token is random, and bit-flipped requests. A legitimate client still
//! connects within a second, and no flood source receives more bytes than
//! it sent (the handshake's anti-amplification rule).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{HonestClient, Rng, ServerOptions, ServerProcess, bind_loopback, drain_count, scale};
use shared::io::unix_secs;
use shared::netcode::{self, CONNECT_TOKEN_PRIVATE_BYTES, MAX_PACKET_BYTES};
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

struct FloodSource {
    socket: UdpSocket,
    sent_bytes: u64,
    received_bytes: u64,
    received_datagrams: u64,
}

#[test]
fn a_legitimate_client_connects_within_a_second_during_a_spoofed_connect_flood() {
    let seed = e2e::seed();
    eprintln!("seed {seed}");
    let requests = scale(50_000u64, 500_000);
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

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut sent = 0u64;
            let started = Instant::now();
            // Bounded: stops at 4x the request count or 20 s whatever happens.
            while (sent < requests || !stop.load(Ordering::Relaxed))
                && sent < 4 * requests
                && started.elapsed() < Duration::from_secs(20)
            {
                for _ in 0..50 {
                    let i = rng.below(sources.len() as u64) as usize;
                    let mut packet = templates[rng.below(templates.len() as u64) as usize].clone();
                    match rng.below(3) {
                        // A replay of a sniffed request, as is.
                        0 => {}
                        // A forged private token.
                        1 => {
                            let start = packet.len() - CONNECT_TOKEN_PRIVATE_BYTES;
                            rng.fill(&mut packet[start..]);
                        }
                        // A corrupted request.
                        _ => {
                            let bit = rng.below(packet.len() as u64 * 8) as usize;
                            packet[bit / 8] ^= 1 << (bit % 8);
                        }
                    }
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
            }
            std::thread::sleep(Duration::from_millis(300));
            for source in &mut sources {
                let (n, b) = drain_count(&source.socket);
                source.received_datagrams += n;
                source.received_bytes += b;
            }
            (sent, started.elapsed(), sources)
        })
    };

    // Let the flood build up, then connect for real.
    std::thread::sleep(Duration::from_millis(500));
    let began = Instant::now();
    let mut client = HonestClient::connect(game, 1, 10);
    let connected_after = loop {
        client.pump(Instant::now());
        if client.is_connected() {
            break began.elapsed();
        }
        assert!(
            client.seen.ended.is_none(),
            "the legitimate client failed: {:?}",
            client.seen.ended
        );
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the legitimate client did not connect within 5 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    stop.store(true, Ordering::Relaxed);
    let (sent, flood_time, sources) = flooder.join().expect("the flooder");
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
    assert!(
        connected_after < Duration::from_secs(1),
        "the legitimate client needed {connected_after:?}"
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
    // The legitimate session works: it is welcomed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.seen.welcomed && Instant::now() < deadline {
        client.play(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(client.seen.welcomed, "no welcome after the flood");
}
