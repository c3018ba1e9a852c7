//! Seeded random-input tests: the CI stand-in for the fuzz targets in
//! `shared/fuzz/` (see its README). Garbage, truncated and bit-flipped
//! datagrams and crafted fragment headers never panic a connection and never
//! push its receive memory past its bound (`max_receive_buffer` plus one
//! waited-for message per reliable channel).

#![expect(
    clippy::disallowed_methods,
    reason = "tests anchor virtual time at a real Instant and use real sockets"
)]

use std::time::{Duration, Instant};

use shared::sim::{LinkConfig, LinkSimulator};
use shared::transport::wire::{
    FragmentInfo, MessageHeader, PacketHeader, PacketKind, PacketWriter,
};
use shared::transport::{Connection, Event, TransportConfig};

mod support;

use support::Rng;

fn memory_bound(config: &TransportConfig) -> usize {
    let reliable = config
        .channels
        .iter()
        .filter(|c| c.kind.is_reliable())
        .count();
    config.max_receive_buffer + reliable * config.largest_reassembly()
}

fn drain(conn: &mut Connection) {
    while let Some(event) = conn.poll_event() {
        if let Event::Message { payload, .. } = event {
            assert!(payload.len() <= 256 * 1024);
        }
    }
}

#[test]
fn random_garbage_never_panics_and_memory_stays_capped() {
    let config = TransportConfig::default();
    let cap = memory_bound(&config);
    let start = Instant::now();
    let mut rng = Rng(0xC0FFEE);
    let mut buf = vec![0u8; 1500];
    let mut out = vec![0u8; 1500];
    for round in 0..200 {
        let mut conn = Connection::new(config.clone(), start).unwrap();
        let mut now = start;
        for _ in 0..1_000 {
            now += Duration::from_micros(rng.below(5_000));
            let len = rng.below(1_501) as usize;
            for byte in &mut buf[..len] {
                *byte = rng.next() as u8;
            }
            // Make most datagrams pass the header so the body parser is exercised.
            if len > 0 && round % 2 == 0 {
                buf[0] &= 0b1111;
                buf[0] &= !0b10;
            }
            conn.handle_datagram(now, &buf[..len]);
            drain(&mut conn);
            assert!(conn.receive_buffered_bytes() <= cap);
            while conn.poll_transmit(now, &mut out).is_some() {}
            conn.handle_timeout(now);
        }
    }
}

#[test]
fn bit_flipped_valid_traffic_never_panics() {
    // A flipped sequence number can carry the receiver's newest far ahead,
    // after which it takes every packet for stale: the pair stalls until
    // a timeout ends it and a fresh one takes over, soon here.
    let config = TransportConfig {
        idle_timeout: Duration::from_secs(1),
        reliable_timeout: Duration::from_secs(1),
        ..TransportConfig::default()
    };
    let start = Instant::now();
    let mut sender = Connection::new(config.clone(), start).unwrap();
    let mut receiver = Connection::new(config.clone(), start).unwrap();
    let mut link = LinkSimulator::new(
        LinkConfig::default().with_corrupt(0.5).with_duplicate(0.1),
        99,
    );
    let mut rng = Rng(7);
    let mut buf = vec![0u8; 1500];
    let mut datagram = Vec::new();
    let mut now = start;
    for i in 0..20_000u32 {
        now += Duration::from_millis(1);
        // Timers run as an endpoint runs them.
        for conn in [&mut sender, &mut receiver] {
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
            }
        }
        let channel = shared::transport::ChannelId((i % 4) as u8);
        let len = if i % 97 == 0 {
            5_000
        } else {
            rng.below(200) as usize
        };
        let _ = sender.send(channel, &vec![i as u8; len]);
        while let Some(n) = sender.poll_transmit(now, &mut buf) {
            link.send(now, &buf[..n]);
        }
        while link.poll_deliver(now, &mut datagram) {
            receiver.handle_datagram(now, &datagram);
            drain(&mut receiver);
            assert!(receiver.receive_buffered_bytes() <= memory_bound(&config));
        }
        if receiver.is_closed() {
            // A flipped bit can form a well-formed but illegal message: that is
            // a protocol violation, and a fresh receiver takes over.
            receiver = Connection::new(config.clone(), now).unwrap();
        }
        // Its acks go back clean: the sender keeps at most its sent
        // history's worth of packets unacknowledged.
        while let Some(n) = receiver.poll_transmit(now, &mut buf) {
            sender.handle_datagram(now, &buf[..n]);
        }
        while sender.poll_event().is_some() {}
        if sender.is_closed() {
            sender = Connection::new(config.clone(), now).unwrap();
        }
    }
    assert!(link.stats().corrupted > 1_000, "{:?}", link.stats());
}

#[test]
fn crafted_fragment_headers_are_bounded() {
    let config = TransportConfig::default();
    let start = Instant::now();
    let mut rng = Rng(42);
    let mut conn = Connection::new(config.clone(), start).unwrap();
    let mut buf = vec![0u8; 1100];
    let fragment = vec![0u8; config.fragment_size];
    let mut now = start;
    let mut sequence = 0u16;
    for _ in 0..50_000 {
        now += Duration::from_micros(100);
        sequence = sequence.wrapping_add(1);
        let header = PacketHeader {
            kind: PacketKind::Data,
            ack_eliciting: true,
            sequence,
            ack: None,
        };
        let mut writer = PacketWriter::new(&mut buf, &header).unwrap();
        let count = 2 + rng.below(300) as u16;
        let message = MessageHeader {
            channel: rng.below(4) as u8,
            id: Some(rng.below(2_048) as u16),
            fragment: Some(FragmentInfo {
                index: rng.below(u64::from(count) - 1) as u16,
                count,
            }),
        };
        assert!(writer.write_message(&message, &fragment));
        let len = writer.len();
        conn.handle_datagram(now, &buf[..len]);
        drain(&mut conn);
        assert!(conn.receive_buffered_bytes() <= memory_bound(&config));
        if conn.is_closed() {
            conn = Connection::new(config.clone(), now).unwrap();
        }
    }
}

/// A datagram whose unreliable fragments come before its reliable ones:
/// the unreliable reassemblies cannot take the memory that the check of
/// the whole packet counted for the reliable ones, so the bound holds
/// within one packet too.
#[test]
fn unreliable_fragments_ahead_in_a_packet_leave_the_reliable_ones_their_room() {
    let config = TransportConfig::default();
    let now = Instant::now();
    let mut conn = Connection::new(config.clone(), now).unwrap();
    let mut buf = vec![0u8; 1100];
    let header = PacketHeader {
        kind: PacketKind::Data,
        ack_eliciting: true,
        sequence: 0,
        ack: None,
    };
    let mut writer = PacketWriter::new(&mut buf, &header).unwrap();
    // Each a last fragment of 1 byte, of a message of 256 fragments: a
    // reassembly of 256 KiB. Channel 3 is unreliable, 0 and 1 reliable
    // (none of the reliable ids is the one its channel waits for).
    let count = u16::try_from(config.max_message_size / config.fragment_size).unwrap();
    for (channel, id) in [
        (3, 0),
        (3, 1),
        (3, 2),
        (3, 3),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 1),
    ] {
        let message = MessageHeader {
            channel,
            id: Some(id),
            fragment: Some(FragmentInfo {
                index: count - 1,
                count,
            }),
        };
        assert!(writer.write_message(&message, &[0]));
    }
    let len = writer.len();
    conn.handle_datagram(now, &buf[..len]);
    drain(&mut conn);
    assert!(!conn.is_closed());
    assert!(
        conn.receive_buffered_bytes() <= memory_bound(&config),
        "{} buffered, bound {}",
        conn.receive_buffered_bytes(),
        memory_bound(&config)
    );
}
