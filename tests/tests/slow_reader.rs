//! A slow reader: a connected client that keeps its session alive but never
//! acknowledges anything, while chatting players fill its reliable chat
//! stream. Its send queue reaches the cap (512 KiB per reliable channel)
//! and the server disconnects it with `SendQueueFull`, well before the
//! 10 s reliable timeout; server memory stays bounded and the chatting
//! players are unaffected.

use std::time::{Duration, Instant};

use e2e::{
    RawClient, ServerOptions, ServerProcess, connect_honest_without_chat, ended, mib, play_all,
    play_for,
};
use shared::transport::DisconnectReason;

#[test]
fn a_client_that_never_acknowledges_is_disconnected_for_a_full_send_queue() {
    // Chat rate limits raised so a handful of players can fill a queue
    // fast, and the bound on what one player is sent to its highest (the
    // queue's size, and a rate no one drains).
    let server = ServerProcess::start(&ServerOptions {
        config_toml: "[chat]\nburst = 2000\nrate_per_sec = 2000.0\n\
                      recipient_burst_bytes = 524288\nrecipient_bytes_per_sec = 1073741824\n"
            .to_owned(),
        ..ServerOptions::default()
    });
    // They chat only the test's lines.
    let mut chatters = connect_honest_without_chat(server.game, 1, 4, Duration::from_secs(10));
    let rss_before = server.rss_bytes();
    let mut reader = RawClient::connect(server.game, 99, 10, Duration::from_secs(5));
    let connected = Instant::now();
    let text: String = "x".repeat(250);
    let mut buf = [0u8; 64];
    let mut next_keepalive = Instant::now();
    let mut lines_sent = 0u64;
    while reader.server_reason.is_none() && connected.elapsed() < Duration::from_secs(9) {
        let now = Instant::now();
        // The reader: reads everything, acknowledges nothing, and sends an
        // empty transport packet every 100 ms so it is not idle.
        reader.read(now);
        if now >= next_keepalive {
            next_keepalive = now + Duration::from_millis(100);
            let seq = reader.take_seq();
            let len = RawClient::craft(&mut buf, seq, None, false, &[]);
            reader.send_raw(&buf[..len]);
        }
        for client in &mut chatters {
            for _ in 0..2 {
                client.say(&text);
                lines_sent += 1;
            }
        }
        play_all(&mut chatters);
        std::thread::sleep(Duration::from_millis(4));
    }
    let disconnected_after = connected.elapsed();
    play_for(&mut chatters, Duration::from_millis(500));
    let rss_after = server.rss_bytes();
    eprintln!(
        "slow reader ended with {:?} after {disconnected_after:?} ({lines_sent} lines chatted, \
         {} bytes reached the reader); server RSS {:.1} -> {:.1} MiB; queue_full metric {}",
        reader.server_reason,
        reader.bytes_received,
        mib(rss_before),
        mib(rss_after),
        server.metric("net_send_queue_full_disconnects_total")
    );
    assert_eq!(reader.server_reason, Some(DisconnectReason::SendQueueFull));
    assert!(
        rss_after <= rss_before + (32 << 20),
        "server RSS grew {:.1} MiB",
        mib(rss_after.saturating_sub(rss_before))
    );
    assert_eq!(
        ended(&chatters),
        vec![],
        "chatting players were disconnected"
    );
    for client in &chatters {
        assert!(!client.seen.chat_sequence_broken, "client {}", client.id);
        assert!(client.seen.chat_lines > 0);
    }
}
