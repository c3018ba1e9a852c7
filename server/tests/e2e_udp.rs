//! The server binary end to end over loopback UDP: 50 clients connect with
//! dev-key tokens, exchange typed messages both ways, and a SIGTERM ends
//! every session with `ServerShutdown` and the process with exit code 0.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared::endpoint::{ClientEndpoint, ClientEndpointEvent};
use shared::io::{ClientSocket, unix_secs};
use shared::netcode::ConnectToken;
use shared::protocol::messages::{Emote, EmoteRequest, Welcome};
use shared::protocol::{self, NetMessage, PROTOCOL_ID, channels};
use shared::transport::DisconnectReason;

mod support;

use support::{KillOnDrop, start_listening};

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENTS: u64 = 50;

fn dev_token(server: SocketAddr, client_id: u64) -> ConnectToken {
    shared::keys::dev_token(server, client_id).unwrap()
}

fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[derive(Default)]
struct Seen {
    welcome: Option<Welcome>,
    emotes_from: Vec<u64>,
    ended: Option<DisconnectReason>,
}

#[test]
fn fifty_clients_play_and_see_a_graceful_shutdown() {
    let dir = std::env::temp_dir().join(format!("server-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(SERVER);
    command
        .current_dir(&dir)
        .args(["--data-dir", "data", "--shutdown-grace-ms", "500"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let (mut child, listening) = start_listening(command);
    let (game, metrics) = (listening.public, listening.metrics);

    let start = Instant::now();
    let mut clients: Vec<(u64, ClientSocket, Seen)> = (1..=CLIENTS)
        .map(|id| {
            let mut endpoint = ClientEndpoint::new(PROTOCOL_ID, channels::transport_config());
            endpoint
                .connect(&dev_token(game, id), start, unix_secs())
                .unwrap();
            let socket = ClientSocket::bind("127.0.0.1:0".parse().unwrap(), endpoint).unwrap();
            (id, socket, Seen::default())
        })
        .collect();

    let mut emoted = false;
    let mut terminated = false;
    let deadline = start + Duration::from_secs(30);
    while Instant::now() < deadline {
        let now = Instant::now();
        for (_, socket, seen) in &mut clients {
            let _ = socket.pump(now);
            while let Some(event) = socket.endpoint.poll_event() {
                match event {
                    ClientEndpointEvent::Message { channel, payload } => {
                        match protocol::message_id(payload) {
                            Some(Welcome::ID) => {
                                assert_eq!(channel, channels::CONTROL);
                                seen.welcome = Some(protocol::decode(payload).unwrap());
                            }
                            Some(Emote::ID) => {
                                let emote: Emote = protocol::decode(payload).unwrap();
                                seen.emotes_from.push(emote.from);
                            }
                            other => panic!("unexpected message {other:?}"),
                        }
                    }
                    ClientEndpointEvent::Disconnected { reason } => seen.ended = Some(reason),
                    ClientEndpointEvent::Connected { .. } => {}
                }
            }
        }
        if !emoted && clients.iter().all(|(_, _, s)| s.welcome.is_some()) {
            emoted = true;
            for (id, socket, _) in &mut clients {
                let request = protocol::encode(&EmoteRequest {
                    emote: (*id % 16) as u8,
                })
                .unwrap();
                socket.endpoint.send(channels::EVENTS, request).unwrap();
                socket.flush(now);
            }
        }
        let all_emotes = clients
            .iter()
            .all(|(_, _, s)| s.emotes_from.len() as u64 == CLIENTS - 1);
        if emoted && all_emotes && !terminated {
            terminated = true;
            // The summary the metrics export is published once a second:
            // scraped until it shows every client (within 5 s).
            let published = Instant::now() + Duration::from_secs(5);
            let mut text = scrape(metrics);
            while !(text.contains("\nconnected_clients 50\n")
                && metric(&text, "net_rtt_seconds_count") >= 50.0)
                && Instant::now() < published
            {
                std::thread::sleep(Duration::from_millis(100));
                text = scrape(metrics);
            }
            assert!(text.contains("\nconnected_clients 50\n"), "{text}");
            assert!(metric(&text, "net_packets_in_total") > 0.0);
            assert!(metric(&text, "net_io_wakeups_total") > 0.0, "{text}");
            assert!(metric(&text, "net_rtt_seconds_count") >= 50.0, "{text}");
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        if clients.iter().all(|(_, _, s)| s.ended.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    for (id, _, seen) in &clients {
        let welcome = seen.welcome.as_ref().expect("welcomed");
        assert_eq!(welcome.client_id, *id);
        let mut from = seen.emotes_from.clone();
        from.sort_unstable();
        let expected: Vec<u64> = (1..=CLIENTS).filter(|other| other != id).collect();
        assert_eq!(
            from, expected,
            "client {id} sees every other client's emote once"
        );
        assert_eq!(
            seen.ended,
            Some(DisconnectReason::ServerShutdown),
            "client {id}"
        );
    }
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < exit_deadline,
            "server did not exit within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_sending_malformed_messages_is_disconnected_for_protocol_violation() {
    let dir = std::env::temp_dir().join(format!("server-e2e-strikes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(SERVER);
    command
        .current_dir(&dir)
        .args(["--shutdown-grace-ms", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let (_child, listening) = start_listening(command);
    let game = listening.public;
    let start = Instant::now();
    let mut endpoint = ClientEndpoint::new(PROTOCOL_ID, channels::transport_config());
    endpoint
        .connect(&dev_token(game, 77), start, unix_secs())
        .unwrap();
    let mut socket = ClientSocket::bind("127.0.0.1:0".parse().unwrap(), endpoint).unwrap();
    let mut sent_garbage = false;
    let mut ended = None;
    while Instant::now() < start + Duration::from_secs(15) && ended.is_none() {
        let now = Instant::now();
        let _ = socket.pump(now);
        while let Some(event) = socket.endpoint.poll_event() {
            match event {
                ClientEndpointEvent::Message { payload, .. }
                    if protocol::message_id(payload) == Some(Welcome::ID) && !sent_garbage =>
                {
                    sent_garbage = true;
                }
                ClientEndpointEvent::Disconnected { reason } => ended = Some(reason),
                _ => {}
            }
        }
        if sent_garbage {
            // An emote request on the chat channel, then bytes that are no message at all.
            let misplaced = protocol::encode(&EmoteRequest { emote: 1 }).unwrap();
            let _ = socket.endpoint.send(channels::CHAT, misplaced);
            let _ = socket.endpoint.send(
                channels::CHAT,
                bytes::Bytes::from_static(&[0xFF, 0xFF, 1, 2, 3]),
            );
            socket.flush(now);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ended, Some(DisconnectReason::ProtocolViolation));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_that_cannot_start_is_reported_with_its_last_log_lines() {
    use server::readiness::{NotListening, wait_until_listening};
    let dir = std::env::temp_dir().join(format!("server-e2e-nostart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A data folder that is a file: the inventory storage cannot open.
    std::fs::write(dir.join("data"), b"not a folder").unwrap();
    let mut child = KillOnDrop(
        Command::new(SERVER)
            .current_dir(&dir)
            .args(["--bind", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0"])
            .args(["--data-dir", "data", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    match wait_until_listening(&mut child, Duration::from_secs(20)) {
        Err(NotListening::Exited { log, .. }) => {
            assert!(log.contains("startup failed"), "{log}");
        }
        other => panic!("expected an early exit, got {other:?}"),
    }
    assert!(!child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
