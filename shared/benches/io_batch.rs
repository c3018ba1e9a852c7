//! Loopback UDP, one system call per datagram against batches: 64
//! datagrams of 100 bytes sent from one socket to another and read back,
//! with `send_to` / `recv_from` and with `shared::io::batch` (`sendmmsg` /
//! `recvmmsg` on Linux). Both sides' system calls are in the measurement,
//! as they are on the server's net-io thread.
//!
//! Run: `cargo bench -p shared --bench io_batch`

#![expect(
    clippy::disallowed_methods,
    reason = "a socket benchmark binds sockets"
)]

use std::hint::black_box;
use std::io;
use std::net::UdpSocket;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shared::io::batch::{RecvBatch, SendBatch};

const DATAGRAMS: usize = 64;
const LEN: usize = 100;
/// Reads that found nothing before the benchmark gives up (loopback
/// delivers during the send, so this is never reached when all is well).
const MAX_EMPTY_READS: u32 = 1_000_000;

fn socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    socket
}

fn io_batch(c: &mut Criterion) {
    let sender = socket();
    let receiver = socket();
    let to = receiver.local_addr().unwrap();
    let payload = [0x5A; LEN];
    let mut group = c.benchmark_group("loopback_64x100B");
    group.throughput(Throughput::Elements(DATAGRAMS as u64));

    let mut buf = [0u8; 1_500];
    group.bench_function("send_to+recv_from", |b| {
        b.iter(|| {
            for _ in 0..DATAGRAMS {
                sender.send_to(black_box(&payload), to).unwrap();
            }
            let (mut got, mut empty) = (0, 0);
            while got < DATAGRAMS {
                match receiver.recv_from(&mut buf) {
                    Ok((len, _)) => {
                        got += 1;
                        black_box(len);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && empty < MAX_EMPTY_READS => {
                        empty += 1;
                    }
                    Err(e) => panic!("{got} of {DATAGRAMS} arrived: {e}"),
                }
            }
        });
    });

    let mut outbox = SendBatch::new(DATAGRAMS, 1_500);
    let mut inbox = RecvBatch::new(DATAGRAMS, 1_500);
    group.bench_function("sendmmsg+recvmmsg", |b| {
        b.iter(|| {
            for _ in 0..DATAGRAMS {
                outbox.push(black_box(&payload), to);
            }
            assert_eq!(outbox.flush(&sender).datagrams, DATAGRAMS as u64);
            let (mut got, mut empty) = (0, 0);
            while got < DATAGRAMS {
                match inbox.recv(&receiver) {
                    Ok(n) => {
                        got += n;
                        black_box(inbox.len());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && empty < MAX_EMPTY_READS => {
                        empty += 1;
                    }
                    Err(e) => panic!("{got} of {DATAGRAMS} arrived: {e}"),
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, io_batch);
criterion_main!(benches);
