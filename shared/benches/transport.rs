//! Throughput of the transport core: 32-byte messages through an in-memory
//! connection pair on one thread (encode, decode, ack; no crypto, no sockets).
//!
//! Run: `cargo bench -p shared --bench transport`

#![expect(
    clippy::disallowed_methods,
    reason = "tests anchor virtual time at a real Instant and use real sockets"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shared::transport::{ChannelId, Connection, Event, TransportConfig};

const BATCH: usize = 10_000;

fn config() -> TransportConfig {
    TransportConfig {
        initial_send_rate: 1 << 30,
        max_send_rate: u32::MAX,
        reliable_window: 4_096,
        ..TransportConfig::default()
    }
}

/// Sends `BATCH` messages from `a` to `b` with acks flowing back; returns
/// how many `b` received.
fn transfer(
    a: &mut Connection,
    b: &mut Connection,
    now: &mut Instant,
    channel: ChannelId,
    payload: &Bytes,
    buf: &mut [u8],
) -> usize {
    let mut received = 0;
    let mut queued = 0;
    while received < BATCH {
        while queued < BATCH && a.send_bytes(channel, payload.clone()).is_ok() {
            queued += 1;
            if queued % 256 == 0 {
                break;
            }
        }
        *now += Duration::from_micros(50);
        while let Some(len) = a.poll_transmit(*now, buf) {
            b.handle_datagram(*now, &buf[..len]);
            while let Some(event) = b.poll_event() {
                if let Event::Message { payload, .. } = event {
                    black_box(payload);
                    received += 1;
                }
            }
        }
        while let Some(len) = b.poll_transmit(*now, buf) {
            a.handle_datagram(*now, &buf[..len]);
        }
        if a.poll_timeout().is_some_and(|t| t <= *now) {
            a.handle_timeout(*now);
        }
        if b.poll_timeout().is_some_and(|t| t <= *now) {
            b.handle_timeout(*now);
        }
    }
    received
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("transport_32_byte_messages");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, channel) in [
        ("reliable_ordered", ChannelId(0)),
        ("unreliable", ChannelId(3)),
    ] {
        group.bench_function(name, |bencher| {
            let mut now = Instant::now();
            let mut a = Connection::new(config(), now).unwrap();
            let mut b = Connection::new(config(), now).unwrap();
            let payload = Bytes::from(vec![0xAB; 32]);
            let mut buf = vec![0u8; 1500];
            bencher.iter(|| transfer(&mut a, &mut b, &mut now, channel, &payload, &mut buf));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
