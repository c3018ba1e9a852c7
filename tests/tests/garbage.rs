//! Garbage datagrams: random bytes of every size, edge sizes around the
//! protocol's thresholds and bit-flipped connection requests, from several
//! source sockets, and bit-flipped sealed packets from the connected
//! client that sealed them, while honest clients play. The server keeps
//! serving, its memory stays flat, it never answers a garbage source, and
//! no honest client is disconnected.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use e2e::{
    FLOOD_BOUND, HonestClient, RawClient, Rng, ServerOptions, ServerProcess, bind_loopback,
    connect_honest, drain_count, ended, generators, mib, play_all, play_for, scale,
};
use shared::io::unix_secs;
use shared::netcode::{self, MAX_PACKET_BYTES};
use shared::protocol::PROTOCOL_ID;

const RSS_GROWTH_LIMIT: u64 = 32 << 20;

/// One flooded datagram in this many is a flipped sealed packet.
const SEALED_ONE_IN: u64 = 5;

/// Valid packets to mutate: connection requests (for a token that never
/// connects, sent from anywhere), and sealed payload packets of a
/// connected client with that client, to send them from (from another
/// address the server drops them unread).
fn capture_valid_packets(server: std::net::SocketAddr) -> (Vec<Vec<u8>>, RawClient, Vec<Vec<u8>>) {
    let mut packets = Vec::new();
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let now = Instant::now();
    let mut requester = netcode::Client::new(netcode::ClientConfig::new(PROTOCOL_ID));
    requester
        .connect(&e2e::dev_token(server, 9_000_001, 10), now, unix_secs())
        .expect("connect");
    if let Some(t) = requester.poll_transmit(now, &mut buf) {
        packets.push(buf[..t.len].to_vec());
    }
    // Payload packets of a real session: the flips land in the sequence,
    // the ciphertext and the tag.
    let mut raw = RawClient::connect(server, 9_000_002, 10, Duration::from_secs(5));
    let sealed = [1usize, 15, 100, 1_100, 1_200]
        .map(|len| raw.seal_copy(&vec![0x5A; len]))
        .to_vec();
    (packets, raw, sealed)
}

#[test]
fn garbage_from_many_sources_changes_nothing_for_honest_players() {
    let seed = e2e::seed();
    eprintln!("seed {seed} (E2E_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let honest_count = scale(20, 100);
    let datagrams = scale(100_000u64, 1_000_000);

    let mut server = ServerProcess::start(&ServerOptions::default());
    let mut honest = connect_honest(server.game, 1, honest_count, Duration::from_secs(20));
    play_for(&mut honest, Duration::from_millis(500));
    let (valid, mut sealer, mut sealed) = capture_valid_packets(server.game);
    assert_eq!(valid.len(), 1, "a connection request");
    // The sealer's session must last the flood for its flipped packets to
    // reach decryption (from an address without one, the server drops them
    // unread): it acknowledges and keeps alive through a real connection,
    // and its templates are sealed again every second, so that their
    // numbers stay within the server's replay window.
    sealer.attach_connection(Instant::now());
    let mut sealed_at = Instant::now();
    let mut sealed_sent = 0u64;
    let decrypt_failed = "net_dropped_datagrams_total{reason=\"DecryptFailed\"}";
    let decrypt_failed_before = server.metric_or_zero(decrypt_failed);

    let sources: Vec<UdpSocket> = (0..8u8)
        .map(|i| bind_loopback(2 + i / 4, 1 + i % 4))
        .collect();
    let rss_before = server.rss_bytes();
    let in_before = server.metric("net_packets_in_total");
    // Every garbage datagram the server reads, it drops (counted by reason,
    // from its once-a-second network summary); honest traffic drops none.
    let dropped_before = server.metric_sum_or_zero("net_dropped_datagrams_total");
    let garbage_read = |server: &ServerProcess| {
        server.metric_sum_or_zero("net_dropped_datagrams_total") - dropped_before
    };
    let snapshots_before: Vec<u64> = honest.iter().map(|c| c.seen.snapshots).collect();
    let chat_before: Vec<u64> = honest.iter().map(|c| c.seen.chat_lines).collect();
    let said = |honest: &[HonestClient]| honest.iter().map(|c| u64::from(c.lines_said())).sum();
    let said_before: u64 = said(&honest);

    let started = Instant::now();
    let mut buf = [0u8; generators::MAX_GARBAGE_BYTES];
    let mut replies = (0u64, 0u64);
    let mut sent = 0u64;
    let mut last_play = Instant::now();
    // Send until the server has read at least `datagrams` (the kernel drops
    // what its socket buffer cannot hold), at most eight times that many
    // (`net-io` runs at nice 10: a busy host's may read a small share).
    // All datagrams read (`net_packets_in_total`, updated every tick) steer
    // the flood; the dropped ones (garbage only, updated once a second)
    // decide, with more rounds if the honest datagrams made up the rest.
    let mut read_target = datagrams as f64;
    let mut garbage = 0.0;
    let mut rounds = 0;
    while garbage < datagrams as f64 && sent < FLOOD_BOUND * datagrams {
        rounds += 1;
        let mut received = server.metric("net_packets_in_total") - in_before;
        while received < read_target && sent < FLOOD_BOUND * datagrams {
            for _ in 0..100 {
                if rng.below(SEALED_ONE_IN) == 0 {
                    let template = &sealed[rng.below(sealed.len() as u64) as usize];
                    let flipped = &mut buf[..template.len()];
                    flipped.copy_from_slice(template);
                    rng.flip_bits(flipped);
                    if sealer.send_datagram(flipped) {
                        sealed_sent += 1;
                    }
                } else {
                    let source = &sources[rng.below(sources.len() as u64) as usize];
                    let len = generators::garbage_datagram(&mut rng, &valid, &mut buf);
                    let _ = source.send_to(&buf[..len], server.game);
                }
                sent += 1;
            }
            // Pace: give the server and the players their turn.
            if last_play.elapsed() >= Duration::from_millis(5) {
                play_all(&mut honest);
                sealer.pump(Instant::now());
                last_play = Instant::now();
            }
            if sealed_at.elapsed() >= Duration::from_secs(1) {
                sealed = [1usize, 15, 100, 1_100, 1_200]
                    .map(|len| sealer.seal_copy(&vec![0x5A; len]))
                    .to_vec();
                sealed_at = Instant::now();
            }
            std::thread::sleep(Duration::from_micros(500));
            for source in &sources {
                let (n, b) = drain_count(source);
                replies.0 += n;
                replies.1 += b;
            }
            if sent.is_multiple_of(10_000) {
                received = server.metric("net_packets_in_total") - in_before;
            }
        }
        // Let the backlog clear and the drops reach the metrics page (the
        // summary comes once a second): at most 3 s.
        let deadline = Instant::now() + Duration::from_secs(3);
        play_for(&mut honest, Duration::from_millis(500));
        sealer.pump(Instant::now());
        garbage = garbage_read(&server);
        while garbage < datagrams as f64 && Instant::now() < deadline {
            play_for(&mut honest, Duration::from_millis(100));
            sealer.pump(Instant::now());
            garbage = garbage_read(&server);
        }
        read_target = received + (datagrams as f64 - garbage);
    }
    let flood_time = started.elapsed();
    // Each player says a line as the flood ends: that line and those said
    // during the flood reach every player (the speaker included) by the end
    // of the second the players settle.
    for client in &mut honest {
        client.say("the flood is over");
    }
    let said_in_flood = said(&honest) - said_before;
    // The players settle.
    play_for(&mut honest, Duration::from_millis(1_000));
    sealer.pump(Instant::now());
    for source in &sources {
        let (n, b) = drain_count(source);
        replies.0 += n;
        replies.1 += b;
    }
    let rss_after = server.rss_bytes();
    let heard: Vec<u64> = honest
        .iter()
        .zip(chat_before)
        .map(|(c, before)| c.seen.chat_lines - before)
        .collect();
    let received = server.metric("net_packets_in_total") - in_before;
    let garbage = garbage_read(&server);
    let reasons: Vec<String> = server
        .scrape()
        .lines()
        .filter_map(|l| l.strip_prefix("net_dropped_datagrams_total{reason="))
        .map(str::to_owned)
        .collect();
    eprintln!("dropped by reason (whole run): {}", reasons.join(", "));

    eprintln!(
        "sent {sent} garbage datagrams in {rounds} rounds, {flood_time:?}; server read \
         {received} datagrams, dropped {garbage} (the garbage); RSS {:.1} -> {:.1} MiB; replies \
         to garbage sources: {replies:?}; honest players said {said_in_flood} chat lines until \
         it ended, each heard {heard:?} since it began",
        mib(rss_before),
        mib(rss_after)
    );
    assert!(server.is_running(), "the server process died");
    assert!(
        garbage >= datagrams as f64,
        "the server read and dropped only {garbage} of the {datagrams} garbage datagrams it \
         needs to (of {sent} sent, {received} datagrams read in all): the test did not test"
    );
    // Only garbage is dropped: no more drops than garbage sent.
    assert!(
        garbage <= sent as f64,
        "{garbage} datagrams dropped for {sent} garbage datagrams sent"
    );
    assert_eq!(replies, (0, 0), "the server answered garbage sources");
    // The flipped sealed packets were opened, and refused: most of those
    // the server read (a flip in the prefix or the number may be dropped
    // before decryption), for as long as the flood lasted.
    let opened = server.metric_or_zero(decrypt_failed) - decrypt_failed_before;
    let read_share = garbage / sent as f64;
    assert!(
        opened >= sealed_sent as f64 * read_share / 2.0,
        "{opened} sealed packets failed decryption of the {sealed_sent} sent (the server read \
         {:.0} % of the flood): {reasons:?}",
        read_share * 100.0
    );
    assert_eq!(
        (sealer.state(), sealer.server_reason),
        (netcode::ClientState::Connected, None),
        "the sealer's session ended: its flipped packets were no longer opened"
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT,
        "server RSS grew by {:.1} MiB",
        mib(rss_after.saturating_sub(rss_before))
    );
    assert_eq!(ended(&honest), vec![], "honest clients were disconnected");
    for ((client, before), heard) in honest.iter().zip(snapshots_before).zip(heard) {
        assert!(
            client.seen.snapshots > before,
            "client {} received no snapshot during or after the flood",
            client.id
        );
        assert!(
            heard >= said_in_flood,
            "client {} heard {heard} chat lines since the flood began, of the {said_in_flood} said \
             until it ended",
            client.id
        );
        assert!(!client.seen.chat_sequence_broken, "client {}", client.id);
    }
    // Still serving: a newcomer connects and is welcomed (or this panics).
    let newcomer = connect_honest(server.game, 10_000, 1, Duration::from_secs(5));
    assert!(newcomer.iter().all(|c| c.seen.welcomed));
}
