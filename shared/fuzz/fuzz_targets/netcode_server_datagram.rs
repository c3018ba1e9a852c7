//! Feeds arbitrary datagrams (from a few source addresses) to a netcode
//! server: never panics, and requests alone never connect a client.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shared::netcode::{MAX_PACKET_BYTES, Server, ServerConfig, ServerEvent};
use shared::protocol::PROTOCOL_ID;

fuzz_target!(|data: &[u8]| {
    let public: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut server = Server::new(
        ServerConfig::new(PROTOCOL_ID, shared::keys::dev_key(), vec![public]),
        &mut shared::io::system_rng(),
    )
    .unwrap();
    let mut now = Instant::now();
    let mut out = vec![0u8; MAX_PACKET_BYTES];
    // A sequence of datagrams, each prefixed by a source byte and a 2-byte length.
    let mut rest = data;
    while let [source, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        let mut datagram = datagram.to_vec();
        let from = SocketAddr::from(([127, 0, 0, 1 + source % 8], 5_000));
        let event = server.handle_datagram(now, shared::io::unix_secs(), from, &mut datagram);
        assert!(!matches!(event, Some(ServerEvent::ClientConnected { .. })));
        for _ in 0..1_000 {
            if server.poll_transmit(now, &mut out).is_none() {
                break;
            }
        }
        now += Duration::from_millis(5);
        server.handle_timeout(now);
        rest = next;
    }
});
