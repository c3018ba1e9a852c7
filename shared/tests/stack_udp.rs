//! The whole stack over real loopback UDP: the server's net-io thread and
//! clients on their own sockets, with tokens, encryption and reliability.

#![expect(
    clippy::disallowed_methods,
    reason = "tests anchor virtual time at a real Instant and use real sockets"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent, ServerEndpoint, ServerEndpointConfig};
use shared::io::{
    ClientId, ClientSocket, NetCommand, NetEvent, ServerIo, ServerIoConfig, SpawnError, system_rng,
    unix_secs,
};
use shared::netcode::{ClientIndex, ConnectToken, Key, ServerConfig, TokenParams};
use shared::transport::{ChannelId, DisconnectReason, TransportConfig};

const PROTOCOL: u64 = 0x5EED;
const CHAT: ChannelId = ChannelId(0);

fn token(key: &Key, server: SocketAddr, client_id: u64) -> ConnectToken {
    ConnectToken::generate(
        &TokenParams {
            protocol_id: PROTOCOL,
            client_id,
            create_timestamp: unix_secs(),
            expire_seconds: 30,
            timeout_seconds: 5,
            server_addresses: vec![server],
            user_data: [0; 256],
        },
        key,
        &mut system_rng(),
    )
    .unwrap()
}

#[derive(Default)]
struct Seen {
    connected: bool,
    echoes: Vec<Vec<u8>>,
    ended: Option<DisconnectReason>,
}

#[test]
fn clients_connect_exchange_messages_and_see_the_shutdown_reason() {
    connect_echo_and_shut_down("127.0.0.1:0");
}

#[test]
fn the_same_over_ipv6() {
    connect_echo_and_shut_down("[::1]:0");
}

/// 20 clients connect to a server on `loopback`, send 10 messages each,
/// get every echo back in order, and see the server's shutdown reason.
fn connect_echo_and_shut_down(loopback: &str) {
    let loopback: SocketAddr = loopback.parse().unwrap();
    let key = Key::generate(&mut system_rng());
    // Bind first to learn the port, then put the real address in the config;
    // the server keeps the socket, so no other test can take the port.
    let socket = shared::io::socket::bind_game_socket(loopback).unwrap();
    let server_addr = socket.local_addr().unwrap();
    let mut netcode = ServerConfig::new(PROTOCOL, key, vec![server_addr]);
    netcode.max_clients = 64;
    let endpoint = ServerEndpoint::new(
        ServerEndpointConfig::new(netcode, TransportConfig::default()),
        &mut system_rng(),
    )
    .unwrap();
    let mut server = ServerIo::spawn_on(socket, endpoint, ServerIoConfig::default()).unwrap();

    let start = Instant::now();
    let mut clients: Vec<(ClientSocket, Seen)> = (0..20)
        .map(|i| {
            let mut endpoint = ClientEndpoint::new(PROTOCOL, TransportConfig::default());
            endpoint
                .connect(&token(&key, server_addr, 1000 + i), start, unix_secs())
                .unwrap();
            (
                ClientSocket::bind(loopback, endpoint).unwrap(),
                Seen::default(),
            )
        })
        .collect();

    let mut server_connected = 0;
    let mut server_messages = 0;
    let mut sent_messages = false;
    let mut shutdown_at = None;
    let deadline = start + Duration::from_secs(20);
    while Instant::now() < deadline {
        let now = Instant::now();
        // The "game": echo every message back to its sender.
        let mut batch = Vec::new();
        for event in server.events() {
            match event {
                NetEvent::Connected { .. } => server_connected += 1,
                NetEvent::Message {
                    client,
                    channel,
                    payload,
                } => {
                    server_messages += 1;
                    batch.push(NetCommand::Send {
                        client,
                        channel,
                        payload,
                    });
                }
                NetEvent::Disconnected { .. } => {}
            }
        }
        server.submit(batch).unwrap();
        for (socket, seen) in &mut clients {
            socket.pump(now).unwrap();
            while let Some(event) = socket.endpoint.poll_event() {
                match event {
                    ClientEndpointEvent::Connected { .. } => seen.connected = true,
                    ClientEndpointEvent::Message { payload, .. } => {
                        seen.echoes.push(payload.to_vec())
                    }
                    ClientEndpointEvent::Disconnected { reason } => seen.ended = Some(reason),
                }
            }
        }
        if !sent_messages && clients.iter().all(|(_, s)| s.connected) {
            sent_messages = true;
            for (i, (socket, _)) in clients.iter_mut().enumerate() {
                for n in 0..10u8 {
                    let body = Bytes::from(vec![i as u8, n, 0xAA]);
                    socket.endpoint.send(CHAT, body).unwrap();
                }
                socket.flush(now);
            }
        }
        if shutdown_at.is_none() && clients.iter().all(|(_, s)| s.echoes.len() == 10) {
            shutdown_at = Some(now);
            server
                .submit(vec![NetCommand::Shutdown {
                    reason: DisconnectReason::ServerShutdown,
                }])
                .unwrap();
        }
        if clients.iter().all(|(_, s)| s.ended.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(server_connected, 20);
    assert_eq!(server_messages, 200);
    for (i, (_, seen)) in clients.iter().enumerate() {
        let expected: Vec<Vec<u8>> = (0..10u8).map(|n| vec![i as u8, n, 0xAA]).collect();
        assert_eq!(
            seen.echoes, expected,
            "client {i}: every echo, once, in order"
        );
        assert_eq!(
            seen.ended,
            Some(DisconnectReason::ServerShutdown),
            "client {i}"
        );
    }
    let stats = server.stats().snapshot();
    assert!(stats.datagrams_in > 0 && stats.datagrams_out > 0);
    server.shutdown(DisconnectReason::ServerShutdown);
}

fn spawn_server(key: Key, io_config: ServerIoConfig) -> (ServerIo, SocketAddr) {
    spawn_server_with_slots(
        key,
        io_config,
        ServerConfig::new(PROTOCOL, key, vec![]).max_clients,
    )
}

fn spawn_server_with_slots(
    key: Key,
    io_config: ServerIoConfig,
    max_clients: usize,
) -> (ServerIo, SocketAddr) {
    // The server keeps the socket it learns its port from.
    let socket = shared::io::socket::bind_game_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = socket.local_addr().unwrap();
    let endpoint = endpoint_at(key, server_addr, max_clients);
    (
        ServerIo::spawn_on(socket, endpoint, io_config).unwrap(),
        server_addr,
    )
}

/// A server endpoint of `max_clients` slots for tokens naming `server_addr`.
fn endpoint_at(key: Key, server_addr: SocketAddr, max_clients: usize) -> ServerEndpoint {
    ServerEndpoint::new(
        ServerEndpointConfig::new(
            ServerConfig {
                max_clients,
                ..ServerConfig::new(PROTOCOL, key, vec![server_addr])
            },
            TransportConfig::default(),
        ),
        &mut system_rng(),
    )
    .unwrap()
}

/// Capacities the thread cannot work with are refused at spawn, saying
/// which: a command channel of no batches made `shutdown` wait for ever,
/// an event channel under 4 left no backlog for reliable messages, and a
/// linger past an hour could overflow the shutdown's deadline.
#[test]
fn capacities_the_thread_cannot_work_with_are_refused_at_spawn() {
    let key = Key::generate(&mut system_rng());
    for (config, field) in [
        (
            ServerIoConfig {
                outbound_batches: 0,
                ..ServerIoConfig::default()
            },
            "outbound_batches",
        ),
        (
            ServerIoConfig {
                inbound_capacity: 3,
                ..ServerIoConfig::default()
            },
            "inbound_capacity",
        ),
        // "Wait forever": its deadline overflowed and the thread panicked
        // at the shutdown, sending no goodbye.
        (
            ServerIoConfig {
                shutdown_linger: Duration::MAX,
                ..ServerIoConfig::default()
            },
            "shutdown_linger",
        ),
    ] {
        let socket = shared::io::socket::bind_game_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let server_addr = socket.local_addr().unwrap();
        let endpoint = endpoint_at(key, server_addr, 4);
        match ServerIo::spawn_on(socket, endpoint, config) {
            Err(error @ SpawnError::Config(_)) => {
                assert!(error.to_string().contains(field), "{error}");
            }
            Err(other) => panic!("{field}: {other}"),
            Ok(server) => {
                // Its shutdown is what hangs.
                std::mem::forget(server);
                panic!("{field}: spawned");
            }
        }
    }
}

fn client(key: &Key, server: SocketAddr, id: u64) -> ClientSocket {
    let mut endpoint = ClientEndpoint::new(PROTOCOL, TransportConfig::default());
    endpoint
        .connect(&token(key, server, id), Instant::now(), unix_secs())
        .unwrap();
    ClientSocket::bind("127.0.0.1:0".parse().unwrap(), endpoint).unwrap()
}

/// Pumps a client and returns its disconnect reason once it has one.
fn pump(socket: &mut ClientSocket, seen: &mut Seen) {
    socket.pump(Instant::now()).unwrap();
    while let Some(event) = socket.endpoint.poll_event() {
        match event {
            ClientEndpointEvent::Connected { .. } => seen.connected = true,
            ClientEndpointEvent::Message { payload, .. } => seen.echoes.push(payload.to_vec()),
            ClientEndpointEvent::Disconnected { reason } => seen.ended = Some(reason),
        }
    }
}

#[test]
fn a_flooding_client_is_disconnected_and_others_are_unaffected() {
    let key = Key::generate(&mut system_rng());
    let config = ServerIoConfig {
        max_messages_per_second: 200,
        ..ServerIoConfig::default()
    };
    let (mut server, addr) = spawn_server(key, config);
    let mut flooder = client(&key, addr, 1);
    let mut honest = client(&key, addr, 2);
    let (mut flood_seen, mut honest_seen) = (Seen::default(), Seen::default());
    let mut honest_received = 0;
    let mut flood_disconnect = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut flooded = false;
    while Instant::now() < deadline {
        pump(&mut flooder, &mut flood_seen);
        pump(&mut honest, &mut honest_seen);
        if flood_seen.connected && honest_seen.connected && !flooded {
            flooded = true;
            for i in 0..1_000u32 {
                let _ = flooder
                    .endpoint
                    .send(CHAT, Bytes::from(i.to_le_bytes().to_vec()));
            }
            for i in 0..10u8 {
                honest.endpoint.send(CHAT, Bytes::from(vec![i])).unwrap();
            }
            flooder.flush(Instant::now());
            honest.flush(Instant::now());
        }
        for event in server.events() {
            match event {
                NetEvent::Message { client, .. } if client.account == 2 => honest_received += 1,
                NetEvent::Disconnected { client, reason } if client.account == 1 => {
                    flood_disconnect = Some(reason);
                }
                _ => {}
            }
        }
        if flood_seen.ended.is_some() && honest_received == 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(flood_disconnect, Some(DisconnectReason::Flooding));
    assert_eq!(
        flood_seen.ended,
        Some(DisconnectReason::Flooding),
        "the flooder is told why"
    );
    assert_eq!(honest_received, 10);
    assert!(
        honest_seen.ended.is_none(),
        "the honest client stays connected"
    );
    assert_eq!(server.stats().snapshot().flooding_disconnects, 1);
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// The once-a-second summary names every connected client with the
/// address its packets come from and, once measured, its RTT.
#[test]
fn the_summary_lists_each_client_with_its_address_and_rtt() {
    let key = Key::generate(&mut system_rng());
    let (mut server, server_addr) = spawn_server(key, ServerIoConfig::default());
    let mut player = client(&key, server_addr, 42);
    let player_addr = player.socket().local_addr().unwrap();
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut listed = None;
    while Instant::now() < deadline && listed.is_none() {
        pump(&mut player, &mut seen);
        if seen.connected {
            // Traffic both ways, so that the RTT gets measured.
            let _ = player.endpoint.send(CHAT, Bytes::from_static(b"ping"));
            player.flush(Instant::now());
        }
        let mut echoes = Vec::new();
        for event in server.events() {
            if let NetEvent::Message { client, .. } = event {
                echoes.push(NetCommand::Send {
                    client,
                    channel: CHAT,
                    payload: Bytes::from_static(b"pong"),
                });
            }
        }
        if !echoes.is_empty() {
            let _ = server.submit(echoes);
        }
        let (_, summary) = server.stats().summary();
        listed = summary
            .clients
            .into_iter()
            .find(|c| c.client.account == 42 && c.rtt.is_some());
        std::thread::sleep(Duration::from_millis(5));
    }
    let listed = listed.expect("the client is listed with an RTT within 15 s");
    assert_eq!(listed.addr, Some(player_addr));
    assert!(listed.rtt.is_some_and(|rtt| rtt < Duration::from_secs(1)));
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// The endpoint's bound on what all clients together may buffer: the
/// client crossing it is disconnected as flooding, and counted as such.
#[test]
fn a_client_over_the_total_receive_bound_is_counted_as_flooding() {
    let key = Key::generate(&mut system_rng());
    let socket = shared::io::socket::bind_game_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = socket.local_addr().unwrap();
    let mut config = ServerEndpointConfig::new(
        ServerConfig::new(PROTOCOL, key, vec![server_addr]),
        TransportConfig::default(),
    );
    config.max_total_receive_buffer = 64 << 10;
    let endpoint = ServerEndpoint::new(config, &mut system_rng()).unwrap();
    let mut server = ServerIo::spawn_on(socket, endpoint, ServerIoConfig::default()).unwrap();
    let mut bomber = client(&key, server_addr, 1);
    let mut seen = Seen::default();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && (seen.ended.is_none() || server.stats().snapshot().flooding_disconnects == 0)
    {
        pump(&mut bomber, &mut seen);
        if seen.connected && !sent {
            sent = true;
            bomber
                .endpoint
                .send(CHAT, Bytes::from(vec![7u8; 200 << 10]))
                .unwrap();
            bomber.flush(Instant::now());
        }
        for _ in server.events() {}
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(seen.ended, Some(DisconnectReason::Flooding));
    assert_eq!(server.stats().snapshot().flooding_disconnects, 1);
    server.shutdown(DisconnectReason::ServerShutdown);
}

#[test]
fn a_client_that_cannot_keep_up_is_disconnected_with_send_queue_full() {
    let key = Key::generate(&mut system_rng());
    let (mut server, addr) = spawn_server(key, ServerIoConfig::default());
    let mut slow = client(&key, addr, 9);
    let mut seen = Seen::default();
    let mut slow_client = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut disconnected = None;
    // The client connects, then stops reading its socket altogether.
    while Instant::now() < deadline && !seen.connected {
        pump(&mut slow, &mut seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    while Instant::now() < deadline && disconnected.is_none() {
        for event in server.events() {
            match event {
                NetEvent::Connected { client } => slow_client = Some(client),
                NetEvent::Disconnected { reason, .. } => disconnected = Some(reason),
                NetEvent::Message { .. } => {}
            }
        }
        if let Some(client) = slow_client {
            // 64 KiB a tick towards a client that never acknowledges.
            let batch = (0..64)
                .map(|_| NetCommand::Send {
                    client,
                    channel: CHAT,
                    payload: Bytes::from(vec![0u8; 1024]),
                })
                .collect();
            let _ = server.submit(batch);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(disconnected, Some(DisconnectReason::SendQueueFull));
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// Pumps `socket` until `done` holds (or 10 s pass), handing the server's
/// events to `on_event`.
fn pump_until(
    server: &mut ServerIo,
    socket: &mut ClientSocket,
    seen: &mut Seen,
    mut on_event: impl FnMut(NetEvent),
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !done(seen) {
        pump(socket, seen);
        server.events().for_each(&mut on_event);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(done(seen), "timed out");
}

#[test]
fn commands_for_a_client_that_left_never_reach_the_next_client_in_its_slot() {
    stale_commands_are_dropped(1, 2);
}

#[test]
fn commands_for_a_previous_connection_never_reach_the_same_player_reconnected() {
    stale_commands_are_dropped(7, 7);
}

/// Account `first` connects to a one-slot server and leaves; account
/// `second` takes the slot. A send and a kick written for the first
/// connection reach nobody; the second connection gets its own, and a
/// broadcast to everyone but the first connection's player unless it is
/// that player (who was sent its own emote back).
fn stale_commands_are_dropped(first_account: u64, second_account: u64) {
    let key = Key::generate(&mut system_rng());
    // One slot: the second client takes the first one's.
    let (mut server, addr) = spawn_server_with_slots(key, ServerIoConfig::default(), 1);
    let mut first = client(&key, addr, first_account);
    let mut first_seen = Seen::default();
    let mut clients = Vec::new();
    let mut connects = |event| {
        if let NetEvent::Connected { client } = event {
            clients.push(client);
        }
    };
    pump_until(
        &mut server,
        &mut first,
        &mut first_seen,
        &mut connects,
        |s| s.connected,
    );
    first
        .endpoint
        .disconnect(Instant::now(), DisconnectReason::Closed);
    first.flush(Instant::now());
    let mut second = client(&key, addr, second_account);
    let mut second_seen = Seen::default();
    pump_until(
        &mut server,
        &mut second,
        &mut second_seen,
        &mut connects,
        |s| s.connected,
    );
    let [gone, current] = clients[..] else {
        panic!("expected two connects, got {clients:?}");
    };
    assert_eq!(gone.slot, current.slot, "the slot was reused");
    assert_eq!(
        (gone.account, current.account),
        (first_account, second_account)
    );
    assert_ne!(gone.session, current.session);

    // What the game wrote for the first client before it saw it leave.
    let stale = vec![
        NetCommand::Send {
            client: gone,
            channel: CHAT,
            payload: Bytes::from_static(b"for the first client"),
        },
        NetCommand::Disconnect {
            client: gone,
            reason: DisconnectReason::Kicked,
        },
        NetCommand::Send {
            client: current,
            channel: CHAT,
            payload: Bytes::from_static(b"for the second client"),
        },
        NetCommand::Broadcast {
            channel: CHAT,
            payload: Bytes::from_static(b"to all but the first client's player"),
            except: Some(gone),
        },
    ];
    server.submit(stale).unwrap();
    pump_until(
        &mut server,
        &mut second,
        &mut second_seen,
        |_| {},
        |s| !s.echoes.is_empty(),
    );
    // Anything else would have arrived with (or before) its own message.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        pump(&mut second, &mut second_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut expected = vec![b"for the second client".to_vec()];
    if second_account != first_account {
        expected.push(b"to all but the first client's player".to_vec());
    }
    assert_eq!(second_seen.echoes, expected);
    assert_eq!(second_seen.ended, None, "the kick was not for this client");
    assert_eq!(server.stats().snapshot().stale_commands, 2);
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// Datagrams the kernel drops because the game socket's receive buffer is
/// full are game traffic lost before the server saw it: net-io reports
/// them (here a burst that arrived before the thread started reading).
#[cfg(target_os = "linux")]
#[test]
fn datagrams_dropped_by_a_full_socket_buffer_are_counted() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_addr = socket.local_addr().unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3_000 {
        sender.send_to(&[0u8; 100], server_addr).unwrap();
    }
    let dropped = shared::io::socket::receive_drops(&socket).unwrap();
    assert!(
        dropped > 1_000,
        "the default buffer kept {dropped} of 3,000?"
    );
    let key = Key::generate(&mut system_rng());
    let endpoint = endpoint_at(key, server_addr, 4);
    let server = ServerIo::spawn_on(socket, endpoint, ServerIoConfig::default()).unwrap();
    // The counter is read once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().snapshot().socket_drops == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = server.stats().snapshot();
    assert_eq!(stats.socket_drops, u64::from(dropped));
    // (The loopback device itself may drop a few under load, uncounted.)
    assert!(stats.datagrams_in > 0 && stats.datagrams_in + stats.socket_drops <= 3_000);
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// `net-io` reads a bounded number of datagrams per turn of its loop, so
/// that a flood cannot keep it from the game's commands, its timers and
/// its sends; what a turn leaves in the socket is read by the next ones,
/// without waiting for another datagram to arrive.
#[cfg(target_os = "linux")]
#[test]
fn more_datagrams_than_a_turn_reads_are_all_read_at_once() {
    // Four turns' worth, which a socket buffer of the kernel's default
    // size (212,992 bytes doubled, ≈ 900 bytes a small datagram) holds.
    const SENT: u32 = 256;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    shared::io::socket::tune_udp_socket(&socket, 8 << 20);
    let server_addr = socket.local_addr().unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..SENT {
        sender.send_to(&[0u8; 100], server_addr).unwrap();
    }
    let dropped = shared::io::socket::receive_drops(&socket).unwrap();
    let waiting = u64::from(SENT - dropped);
    // Turns of one batch of 64.
    let config = ServerIoConfig {
        recv_batches_per_turn: 1,
        ..ServerIoConfig::default()
    };
    assert!(
        waiting > 2 * 64,
        "the socket kept only {waiting} datagrams (net.core.rmem_max is too small?)"
    );
    let endpoint = ServerEndpoint::new(
        ServerEndpointConfig::new(
            ServerConfig::new(
                PROTOCOL,
                Key::generate(&mut system_rng()),
                vec![server_addr],
            ),
            TransportConfig::default(),
        ),
        &mut system_rng(),
    )
    .unwrap();
    let server = ServerIo::spawn_on(socket, endpoint, config).unwrap();
    // Nothing else arrives: only looking again reads the rest.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().snapshot().datagrams_in < waiting && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.stats().snapshot().datagrams_in, waiting);
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// A game that lets go of its handle while `net-io` is a whole queue of
/// batches behind still stops the thread, after every batch it handed
/// over: the shutdown waits for room instead of being dropped (which left
/// the thread running and the drop waiting on it forever).
#[test]
fn dropping_the_handle_behind_a_full_command_queue_applies_everything_and_stops() {
    const PER_BATCH: usize = 200_000;
    let (mut server, _) = spawn_server(
        Key::generate(&mut system_rng()),
        ServerIoConfig {
            outbound_batches: 1,
            ..ServerIoConfig::default()
        },
    );
    // No client holds the slot, so each command is a stale one: counted,
    // a little work for the thread, nothing sent.
    let nobody = ClientId {
        slot: ClientIndex::from_slot(0),
        account: 1,
        session: 1,
    };
    let batch = move || {
        vec![
            NetCommand::Disconnect {
                client: nobody,
                reason: DisconnectReason::Kicked,
            };
            PER_BATCH
        ]
    };
    let stats = std::sync::Arc::clone(server.stats());
    let (dropped, done) = std::sync::mpsc::channel();
    // The game, on a thread of its own so that a drop that never returns
    // fails the test instead of hanging it.
    std::thread::spawn(move || {
        let mut accepted = 0;
        while server.submit(batch()).is_ok() {
            accepted += 1;
        }
        // Right away, while net-io still works on an earlier batch.
        drop(server);
        let _ = dropped.send(accepted);
    });
    let accepted = done
        .recv_timeout(Duration::from_secs(30))
        .expect("the drop is still waiting for net-io");
    assert!(accepted > 0);
    assert_eq!(
        stats.snapshot().stale_commands,
        (accepted * PER_BATCH) as u64,
        "every accepted batch was applied before the thread stopped"
    );
}

/// A game that falls behind fills the event channel and its backlog with
/// droppable traffic (movement); a reliable message that arrives then
/// takes the place of the oldest droppable one waiting, instead of getting
/// its sender disconnected for a flood it did not cause.
#[test]
fn a_game_behind_drops_unreliable_traffic_before_a_reliable_message() {
    const UNRELIABLE: ChannelId = ChannelId(3);
    let key = Key::generate(&mut system_rng());
    let config = ServerIoConfig {
        inbound_capacity: 8,
        droppable_channels: vec![UNRELIABLE],
        ..ServerIoConfig::default()
    };
    let (mut server, addr) = spawn_server(key, config);
    let mut mover = client(&key, addr, 1);
    let mut talker = client(&key, addr, 2);
    let (mut mover_seen, mut talker_seen) = (Seen::default(), Seen::default());
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(mover_seen.connected && talker_seen.connected) {
        assert!(Instant::now() < deadline, "the clients did not connect");
        pump(&mut mover, &mut mover_seen);
        pump(&mut talker, &mut talker_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    // The game stops draining; the mover fills everything up.
    for i in 0..50u32 {
        mover
            .endpoint
            .send(UNRELIABLE, Bytes::from(i.to_le_bytes().to_vec()))
            .unwrap();
        mover.flush(Instant::now());
    }
    while server.stats().snapshot().inbound_dropped == 0 {
        assert!(Instant::now() < deadline, "the backlog never filled");
        pump(&mut mover, &mut mover_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    talker
        .endpoint
        .send(CHAT, Bytes::from_static(b"hello"))
        .unwrap();
    talker.flush(Instant::now());
    let mut said = false;
    while !said && Instant::now() < deadline {
        pump(&mut talker, &mut talker_seen);
        pump(&mut mover, &mut mover_seen);
        for event in server.events() {
            if let NetEvent::Message {
                client, payload, ..
            } = &event
            {
                said |= client.account == 2 && payload.as_ref() == b"hello";
            }
            events.push(event);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let disconnected: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            NetEvent::Disconnected { client, reason } => Some((client.account, *reason)),
            _ => None,
        })
        .collect();
    assert!(
        said,
        "the reliable message was lost; disconnects {disconnected:?}"
    );
    assert_eq!(disconnected, []);
    assert_eq!(server.stats().snapshot().flooding_disconnects, 0);
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// A backlog filled by one client's reliable messages does not cut off
/// the next client whose reliable message finds it full, holding nothing
/// there: the filler is disconnected as flooding, its messages waiting
/// give way, and the other client's message is handed over. The game sees
/// a prefix of the filler's messages, in order, then its end.
#[test]
fn a_full_backlog_cuts_off_the_client_filling_it_not_the_next_sender() {
    // Eight events in the channel, two in the backlog.
    const MESSAGE: usize = 1_000;
    let config = ServerIoConfig {
        inbound_capacity: 8,
        ..ServerIoConfig::default()
    };
    let (mut server, (mut filler, mut filler_seen), (mut talker, mut talker_seen), deadline) =
        two_connected(config);
    while server.stats().snapshot().connected < 2 {
        assert!(Instant::now() < deadline, "the server never saw both");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The game does not drain: two connects and six messages fill the
    // channel, two more the backlog. One message a datagram: all eight
    // have been read once eight messages' bytes have (what else comes
    // meanwhile, keepalives and acks, is far shorter).
    let bytes_before = server.stats().snapshot().bytes_in;
    for i in 0..8u8 {
        filler
            .endpoint
            .send(CHAT, Bytes::from(vec![i; MESSAGE]))
            .unwrap();
        filler.flush(Instant::now());
    }
    while server.stats().snapshot().bytes_in < bytes_before + 8 * MESSAGE as u64 {
        assert!(
            Instant::now() < deadline,
            "the filler's messages never arrived"
        );
        pump(&mut filler, &mut filler_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    talker
        .endpoint
        .send(CHAT, Bytes::from_static(b"hello"))
        .unwrap();
    talker.flush(Instant::now());
    // The game drains only once someone has been cut off: before that,
    // what it took would make room for the line.
    while server.stats().snapshot().flooding_disconnects == 0 {
        assert!(Instant::now() < deadline, "no one was cut off");
        pump(&mut filler, &mut filler_seen);
        pump(&mut talker, &mut talker_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut filler_said, mut said, mut ends) = (Vec::new(), false, Vec::new());
    while !(said && filler_seen.ended.is_some()) {
        assert!(
            Instant::now() < deadline && talker_seen.ended.is_none(),
            "said {said}, ends {ends:?}, talker {:?}",
            talker_seen.ended
        );
        for event in server.events() {
            match event {
                NetEvent::Message {
                    client, payload, ..
                } if client.account == 1 => {
                    assert!(ends.is_empty(), "a message of the filler after its end");
                    filler_said.push(payload[0]);
                }
                NetEvent::Message { payload, .. } => said |= payload.as_ref() == b"hello",
                NetEvent::Disconnected { client, reason } => ends.push((client.account, reason)),
                NetEvent::Connected { .. } => {}
            }
        }
        pump(&mut filler, &mut filler_seen);
        pump(&mut talker, &mut talker_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(filler_seen.ended, Some(DisconnectReason::Flooding));
    let prefix: Vec<u8> = (0..).take(filler_said.len()).collect();
    assert_eq!(filler_said, prefix, "the filler's messages, in order");
    assert!(filler_said.len() < 8, "its messages waiting gave way");
    // Its end may still be on its way (the transport's goodbye first).
    while ends.is_empty() {
        assert!(Instant::now() < deadline, "the filler's end never came");
        ends.extend(server.events().filter_map(|e| match e {
            NetEvent::Disconnected { client, reason } => Some((client.account, reason)),
            _ => None,
        }));
        pump(&mut filler, &mut filler_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(ends, [(1, DisconnectReason::Flooding)]);
    assert_eq!(server.stats().snapshot().flooding_disconnects, 1);
    assert!(talker_seen.ended.is_none());
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// Pumps `socket` until it is connected.
/// A server of `config` and two clients of it (accounts 1 and 2), both
/// connected, with what each has seen; and a deadline 15 s on.
fn two_connected(
    config: ServerIoConfig,
) -> (
    ServerIo,
    (ClientSocket, Seen),
    (ClientSocket, Seen),
    Instant,
) {
    let key = Key::generate(&mut system_rng());
    let (server, addr) = spawn_server(key, config);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut first = (client(&key, addr, 1), Seen::default());
    let mut second = (client(&key, addr, 2), Seen::default());
    connect(&mut first.0, &mut first.1, deadline);
    connect(&mut second.0, &mut second.1, deadline);
    (server, first, second, deadline)
}

fn connect(socket: &mut ClientSocket, seen: &mut Seen, deadline: Instant) {
    while !seen.connected {
        assert!(Instant::now() < deadline, "the client did not connect");
        pump(socket, seen);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A stalled game holds at most `max_inbound_bytes` of messages, however
/// few they are: a client whose reliable messages would go past it is
/// disconnected as flooding; what the game then takes is room again.
#[test]
fn a_stalled_game_holds_a_bounded_number_of_message_bytes() {
    const MESSAGE: usize = 4 << 10;
    let key = Key::generate(&mut system_rng());
    let config = ServerIoConfig {
        max_inbound_bytes: 8 * MESSAGE,
        ..ServerIoConfig::default()
    };
    let (mut server, addr) = spawn_server(key, config);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut talker = client(&key, addr, 1);
    let mut talker_seen = Seen::default();
    connect(&mut talker, &mut talker_seen, deadline);
    // The game does not drain; the talker sends twice what may wait.
    for i in 0..16u8 {
        talker
            .endpoint
            .send(CHAT, Bytes::from(vec![i; MESSAGE]))
            .unwrap();
    }
    talker.flush(Instant::now());
    while talker_seen.ended.is_none() {
        assert!(
            Instant::now() < deadline,
            "the talker was never disconnected"
        );
        pump(&mut talker, &mut talker_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(talker_seen.ended, Some(DisconnectReason::Flooding));
    let (mut delivered, mut ended) = (Vec::new(), None);
    for event in server.events() {
        match event {
            NetEvent::Message { payload, .. } => delivered.push(payload[0]),
            NetEvent::Disconnected { reason, .. } => ended = Some(reason),
            NetEvent::Connected { .. } => {}
        }
    }
    assert_eq!(delivered, (0..8).collect::<Vec<u8>>(), "what waited");
    assert_eq!(ended, Some(DisconnectReason::Flooding));

    let mut next = client(&key, addr, 2);
    let mut next_seen = Seen::default();
    connect(&mut next, &mut next_seen, deadline);
    for i in 0..8u8 {
        next.endpoint
            .send(CHAT, Bytes::from(vec![i; MESSAGE]))
            .unwrap();
    }
    next.flush(Instant::now());
    let mut received = 0;
    while received < 8 {
        assert!(
            Instant::now() < deadline && next_seen.ended.is_none(),
            "the bytes the game took were not given back: {received} messages, {:?}",
            next_seen.ended
        );
        pump(&mut next, &mut next_seen);
        received += server
            .events()
            .filter(|event| matches!(event, NetEvent::Message { .. }))
            .count();
        std::thread::sleep(Duration::from_millis(1));
    }
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// Droppable messages fill at most half of `max_inbound_bytes`: reliable
/// messages arriving behind a stalled game's movement still find room.
#[test]
fn droppable_messages_leave_room_for_reliable_ones() {
    const UNRELIABLE: ChannelId = ChannelId(3);
    const MESSAGE: usize = 1_000;
    let config = ServerIoConfig {
        max_inbound_bytes: 16 * MESSAGE,
        droppable_channels: vec![UNRELIABLE],
        ..ServerIoConfig::default()
    };
    let (mut server, (mut mover, _), (mut talker, mut talker_seen), deadline) =
        two_connected(config);
    // The game does not drain; the mover sends until its messages are dropped.
    while server.stats().snapshot().inbound_dropped == 0 {
        assert!(Instant::now() < deadline, "no movement was ever dropped");
        mover
            .endpoint
            .send(UNRELIABLE, Bytes::from(vec![1; MESSAGE]))
            .unwrap();
        mover.flush(Instant::now());
        std::thread::sleep(Duration::from_millis(1));
    }
    let datagrams_before = server.stats().snapshot().datagrams_in;
    for i in 0..8u8 {
        talker
            .endpoint
            .send(CHAT, Bytes::from(vec![i; MESSAGE]))
            .unwrap();
    }
    talker.flush(Instant::now());
    // One message a datagram: all eight have been read once eight more
    // datagrams have.
    while server.stats().snapshot().datagrams_in < datagrams_before + 8 {
        assert!(
            Instant::now() < deadline,
            "the talker's messages never arrived"
        );
        pump(&mut talker, &mut talker_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    // A moment more, in case some of those were the mover's, read late.
    let settle = Instant::now() + Duration::from_millis(50);
    while Instant::now() < settle {
        pump(&mut talker, &mut talker_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut said, mut disconnected) = (Vec::new(), Vec::new());
    while said.len() < 8 && disconnected.is_empty() {
        assert!(Instant::now() < deadline, "only {said:?} arrived");
        for event in server.events() {
            match event {
                NetEvent::Message {
                    client, payload, ..
                } if client.account == 2 => said.push(payload[0]),
                NetEvent::Disconnected { client, reason } => {
                    disconnected.push((client.account, reason));
                }
                _ => {}
            }
        }
        pump(&mut talker, &mut talker_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(disconnected, []);
    assert_eq!(said, (0..8).collect::<Vec<u8>>());
    assert!(talker_seen.ended.is_none());
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// Messages the stalled game's limit drops do not sit between the ones it
/// keeps, where they would keep memory the limit does not count alive for
/// as long as their neighbours live: the talker's one-byte chat lines,
/// sent between dropped droppable messages, lie side by side.
#[test]
fn dropped_long_messages_pin_no_memory_between_kept_ones() {
    dropped_messages_pin_no_memory_between_kept_ones(8 << 10);
}

/// The same with droppable messages short enough to share chunks.
#[test]
fn dropped_short_messages_pin_no_memory_between_kept_ones() {
    dropped_messages_pin_no_memory_between_kept_ones(1_000);
}

fn dropped_messages_pin_no_memory_between_kept_ones(len: usize) {
    const UNRELIABLE: ChannelId = ChannelId(3);
    let key = Key::generate(&mut system_rng());
    let config = ServerIoConfig {
        max_inbound_bytes: 8 * len,
        droppable_channels: vec![UNRELIABLE],
        ..ServerIoConfig::default()
    };
    let (mut server, addr) = spawn_server(key, config);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sender = client(&key, addr, 1);
    let mut seen = Seen::default();
    connect(&mut sender, &mut seen, deadline);
    // The game does not drain. Half the limit fills with long droppable
    // messages; those after it are dropped, a chat line after each.
    let mut lines = 0u8;
    while lines < 20 {
        assert!(Instant::now() < deadline, "only {lines} lines sent");
        sender
            .endpoint
            .send(UNRELIABLE, Bytes::from(vec![1; len]))
            .unwrap();
        if server.stats().snapshot().inbound_dropped > 0 {
            sender
                .endpoint
                .send(CHAT, Bytes::from(vec![lines]))
                .unwrap();
            lines += 1;
        }
        sender.flush(Instant::now());
        pump(&mut sender, &mut seen);
        std::thread::sleep(Duration::from_millis(40));
    }
    let mut said: Vec<Bytes> = Vec::new();
    while said.len() < 20 {
        assert!(Instant::now() < deadline, "{} lines arrived", said.len());
        pump(&mut sender, &mut seen);
        said.extend(server.events().filter_map(|e| match e {
            NetEvent::Message {
                channel, payload, ..
            } if channel == CHAT => Some(payload),
            _ => None,
        }));
        std::thread::sleep(Duration::from_millis(1));
    }
    let gaps: Vec<usize> = said
        .windows(2)
        .map(|w| (w[1].as_ptr() as usize).wrapping_sub(w[0].as_ptr() as usize))
        .filter(|&gap| gap != 1)
        .collect();
    assert!(gaps.is_empty(), "gaps between the chat lines: {gaps:?}");
    assert!(seen.ended.is_none(), "{:?}", seen.ended);
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// A datagram longer than any packet is counted as oversized, not cut to
/// size and counted as whatever the cut bytes fail as.
#[test]
fn datagrams_longer_than_a_packet_are_counted_as_oversized() {
    let key = Key::generate(&mut system_rng());
    let (server, addr) = spawn_server(key, ServerIoConfig::default());
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        sender.send_to(&[1u8; 1_300], addr).unwrap();
    }
    let oversized = || {
        let (_, summary) = server.stats().summary();
        summary
            .drops
            .iter()
            .find(|(reason, _)| *reason == shared::netcode::DropReason::Oversized)
            .map_or(0, |(_, n)| *n)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while oversized() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, summary) = server.stats().summary();
    assert_eq!(oversized(), 3, "drops: {:?}", summary.drops);
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// A drop counted less than a second after the last summary still shows
/// in the next one, although nothing wakes the idle thread afterwards.
#[test]
fn a_drop_just_after_a_summary_is_in_the_next_one_on_an_idle_server() {
    let key = Key::generate(&mut system_rng());
    let (server, addr) = spawn_server(key, ServerIoConfig::default());
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let oversized = || {
        let (version, summary) = server.stats().summary();
        let n = summary
            .drops
            .iter()
            .find(|(reason, _)| *reason == shared::netcode::DropReason::Oversized)
            .map_or(0, |(_, n)| *n);
        (version, n)
    };
    sender.send_to(&[1u8; 1_300], addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while oversized().1 < 1 {
        assert!(Instant::now() < deadline, "the first drop never showed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Within the second after that summary: not due yet when it is read.
    sender.send_to(&[1u8; 1_300], addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while oversized().1 < 2 {
        assert!(
            Instant::now() < deadline,
            "the second drop never showed: {:?}",
            oversized()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown(DisconnectReason::ServerShutdown);
}

#[test]
fn a_client_that_connects_while_the_server_shuts_down_is_told_so() {
    let key = Key::generate(&mut system_rng());
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    // A first client that never acknowledges what it was sent keeps the
    // server lingering (up to 10 s) after the shutdown begins.
    let transport = TransportConfig {
        close_linger: Duration::from_secs(10),
        ..TransportConfig::default()
    };
    let endpoint = ServerEndpoint::new(
        ServerEndpointConfig::new(ServerConfig::new(PROTOCOL, key, vec![addr]), transport),
        &mut system_rng(),
    )
    .unwrap();
    let config = ServerIoConfig {
        shutdown_linger: Duration::from_secs(10),
        ..ServerIoConfig::default()
    };
    let mut server = ServerIo::spawn_on(probe, endpoint, config).unwrap();
    let mut silent = client(&key, addr, 1);
    let mut silent_seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut joined = None;
    while joined.is_none() && Instant::now() < deadline {
        pump(&mut silent, &mut silent_seen);
        joined = server.events().find_map(|e| match e {
            NetEvent::Connected { client } => Some(client),
            _ => None,
        });
        std::thread::sleep(Duration::from_millis(1));
    }
    let silent_id = joined.expect("the first client connected");
    server
        .submit(vec![
            NetCommand::Send {
                client: silent_id,
                channel: CHAT,
                payload: Bytes::from_static(b"never acknowledged"),
            },
            NetCommand::Shutdown {
                reason: DisconnectReason::ServerShutdown,
            },
        ])
        .unwrap();
    // A second client's handshake ends during the shutdown.
    let mut late = client(&key, addr, 2);
    let mut late_seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while late_seen.ended.is_none() && Instant::now() < deadline {
        pump(&mut late, &mut late_seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        late_seen.connected,
        "the handshake completed: {:?}",
        late_seen.ended
    );
    assert_eq!(late_seen.ended, Some(DisconnectReason::ServerShutdown));
    server.shutdown(DisconnectReason::ServerShutdown);
}

/// A second shutdown (the handle dropped after the game asked for one)
/// keeps the first one's linger: a client that acknowledges nothing holds
/// the server for one linger, not two.
#[test]
fn a_second_shutdown_does_not_prolong_the_linger() {
    let key = Key::generate(&mut system_rng());
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    let transport = TransportConfig {
        close_linger: Duration::from_secs(30),
        ..TransportConfig::default()
    };
    let endpoint = ServerEndpoint::new(
        ServerEndpointConfig::new(ServerConfig::new(PROTOCOL, key, vec![addr]), transport),
        &mut system_rng(),
    )
    .unwrap();
    // Long enough that a slow host's timer and join fit in the margin
    // (linger / 3), short of the client's 5 s timeout, which would end a
    // second linger early (still past the bound: the second shutdown
    // comes at 3/4 of the first).
    let linger = Duration::from_secs(3);
    let config = ServerIoConfig {
        shutdown_linger: linger,
        ..ServerIoConfig::default()
    };
    let mut server = ServerIo::spawn_on(probe, endpoint, config).unwrap();
    let mut silent = client(&key, addr, 1);
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut joined = None;
    while joined.is_none() && Instant::now() < deadline {
        pump(&mut silent, &mut seen);
        joined = server.events().find_map(|e| match e {
            NetEvent::Connected { client } => Some(client),
            _ => None,
        });
        std::thread::sleep(Duration::from_millis(1));
    }
    let id = joined.expect("the client connected");
    // From here the client reads nothing: what it is sent stays unacknowledged.
    let started = Instant::now();
    server
        .submit(vec![
            NetCommand::Send {
                client: id,
                channel: CHAT,
                payload: Bytes::from_static(b"never acknowledged"),
            },
            NetCommand::Shutdown {
                reason: DisconnectReason::ServerShutdown,
            },
        ])
        .unwrap();
    std::thread::sleep(linger * 3 / 4);
    server.shutdown(DisconnectReason::ServerShutdown);
    let took = started.elapsed();
    assert!(
        took < linger + linger / 3,
        "the shutdown took {took:?}, the linger is {linger:?}"
    );
}

/// A token's addresses may be of both families (a server's IPv4 and IPv6
/// addresses): a client on a socket of the first one's family, bound to
/// any address, still reaches the next one when the first stays silent.
#[test]
fn a_client_fails_over_to_an_address_of_the_other_family() {
    fails_over_across_families("0.0.0.0:0", "127.0.0.1:0", "[::1]:0");
    fails_over_across_families("[::]:0", "[::1]:0", "127.0.0.1:0");
}

/// A client bound to `bind`, with a token naming a silent socket on
/// `silent` first and a server on `live` second, connects to the server.
fn fails_over_across_families(bind: &str, silent: &str, live: &str) {
    let key = Key::generate(&mut system_rng());
    let silent = std::net::UdpSocket::bind(silent).unwrap();
    let socket = shared::io::socket::bind_game_socket(live.parse().unwrap()).unwrap();
    let server_addr = socket.local_addr().unwrap();
    let mut server = ServerIo::spawn_on(
        socket,
        endpoint_at(key, server_addr, 4),
        ServerIoConfig::default(),
    )
    .unwrap();
    let token = ConnectToken::generate(
        &TokenParams {
            protocol_id: PROTOCOL,
            client_id: 1,
            create_timestamp: unix_secs(),
            expire_seconds: 30,
            timeout_seconds: 3,
            server_addresses: vec![silent.local_addr().unwrap(), server_addr],
            user_data: [0; 256],
        },
        &key,
        &mut system_rng(),
    )
    .unwrap();
    let mut endpoint = ClientEndpoint::new(PROTOCOL, TransportConfig::default());
    endpoint
        .connect(&token, Instant::now(), unix_secs())
        .unwrap();
    let mut client = ClientSocket::bind(bind.parse().unwrap(), endpoint).unwrap();
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.connected {
        assert!(
            Instant::now() < deadline,
            "{bind} did not reach {server_addr}: {:?}, last send error {:?}",
            seen.ended,
            client.last_send_error()
        );
        assert!(seen.ended.is_none(), "{bind}: {:?}", seen.ended);
        pump(&mut client, &mut seen);
        for _ in server.events() {}
        std::thread::sleep(Duration::from_millis(1));
    }
    server.shutdown(DisconnectReason::ServerShutdown);
}
