//! Per-packet cost of netcode payload packets: sealing a 1200-byte payload
//! into a caller buffer, and opening one (header checks, replay window,
//! ChaCha20-Poly1305 verify + decrypt in place) through the server's public
//! `handle_datagram`. Results and the command are in BENCHMARKS.md.

#![expect(
    clippy::disallowed_methods,
    reason = "tests anchor virtual time at a real Instant and use real sockets"
)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use getrandom::SysRng;
use rand_core::UnwrapErr;
use shared::netcode::{
    Client, ClientConfig, ClientIndex, ClientState, ConnectToken, Key, MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES, Server, ServerConfig, ServerEvent, TokenParams,
};

const PROTOCOL: u64 = 0xbe4c;
const UNIX: u64 = 1_700_000_000;

/// A server and one connected client, in memory.
fn connected_pair(now: Instant) -> (Server, Client, SocketAddr, ClientIndex) {
    let mut rng = UnwrapErr(SysRng);
    let server_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let key = Key::generate(&mut rng);
    let mut server = Server::new(
        ServerConfig::new(PROTOCOL, key, vec![server_addr]),
        &mut rng,
    )
    .expect("server config");
    let token = ConnectToken::generate(
        &TokenParams {
            protocol_id: PROTOCOL,
            client_id: 1,
            create_timestamp: UNIX,
            expire_seconds: 60,
            timeout_seconds: 10,
            server_addresses: vec![server_addr],
            user_data: [0; 256],
        },
        &key,
        &mut rng,
    )
    .expect("token");
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    client.connect(&token, now, UNIX).expect("connect");
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut slot = None;
    for _ in 0..4 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            if let Some(ServerEvent::ClientConnected { client, .. }) =
                server.handle_datagram(now, UNIX, client_addr, &mut buf[..t.len])
            {
                slot = Some(client);
            }
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            client.handle_datagram(now, server_addr, &mut buf[..t.len]);
        }
    }
    assert_eq!(client.state(), ClientState::Connected);
    (server, client, client_addr, slot.expect("connected"))
}

fn payload_packets(c: &mut Criterion) {
    let now = Instant::now();
    let (mut server, mut client, client_addr, slot) = connected_pair(now);
    let payload = [0xa5u8; MAX_PAYLOAD_BYTES];
    let mut out = [0u8; MAX_PACKET_BYTES];

    let mut group = c.benchmark_group("netcode_payload_1200B");
    group.throughput(Throughput::Bytes(MAX_PAYLOAD_BYTES as u64));
    group.bench_function("seal", |b| {
        b.iter(|| {
            let t = server
                .send_payload(now, slot, black_box(&payload), &mut out)
                .expect("send");
            black_box(t.len)
        })
    });
    group.bench_function("open", |b| {
        b.iter_batched_ref(
            || {
                let mut packet = [0u8; MAX_PACKET_BYTES];
                let t = client
                    .send_payload(now, &payload, &mut packet)
                    .expect("send");
                (packet, t.len)
            },
            |(packet, len)| {
                let event = server.handle_datagram(now, UNIX, client_addr, &mut packet[..*len]);
                assert!(matches!(event, Some(ServerEvent::Payload { .. })));
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, payload_packets);
criterion_main!(benches);
