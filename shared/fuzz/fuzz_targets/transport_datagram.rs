//! Feeds arbitrary datagrams to a connection: the decoder, the reassembler
//! and the ack machinery must never panic, and receive memory stays bounded.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shared::transport::{Connection, TransportConfig};

fuzz_target!(|data: &[u8]| {
    let config = TransportConfig::default();
    let bound = config.max_receive_buffer + 2 * config.max_message_size;
    let start = Instant::now();
    let mut conn = Connection::new(config, start).unwrap();
    let mut out = [0u8; 1500];
    // The input is a sequence of datagrams, each prefixed by a 2-byte length.
    let mut rest = data;
    let mut now = start;
    while let [hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        now += Duration::from_millis(1);
        conn.handle_datagram(now, datagram);
        while conn.poll_event().is_some() {}
        while conn.poll_transmit(now, &mut out).is_some() {}
        assert!(conn.receive_buffered_bytes() <= bound);
        rest = next;
    }
});
