//! Interop over real loopback UDP with `netcode-official` 1.0.0, an
//! independent implementation of netcode.io 1.02: its client against our
//! server (token minted by us) and our client against its server (token
//! minted by it). Payloads flow both ways for longer than the token timeout,
//! then nothing but keep-alives for longer than it again. Each test stops
//! by itself within a few seconds.

#![expect(
    clippy::disallowed_methods,
    reason = "tests anchor virtual time at a real Instant and use real sockets"
)]

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use getrandom::SysRng;
use rand_core::UnwrapErr;
use shared::netcode::{
    Client, ClientConfig, ClientEvent, ClientState, ConnectToken, Key, MAX_PACKET_BYTES, Server,
    ServerConfig, ServerEvent, TokenParams,
};

const PROTOCOL: u64 = 0x4e45_5443_4f44_4531;
const TIMEOUT_SECONDS: i32 = 2;
/// How long each test keeps exchanging payloads after connecting.
const EXCHANGE: Duration = Duration::from_secs(3);
/// Then no payloads for longer than the timeout: only keep-alives hold the
/// connection.
const IDLE: Duration = Duration::from_millis(2_500);
/// Hard limit per test.
const DEADLINE: Duration = Duration::from_secs(10);

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn bind() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    socket.set_nonblocking(true).expect("nonblocking");
    socket
}

/// Receives everything waiting on `socket`, calling `f` for each datagram.
fn drain(socket: &UdpSocket, mut f: impl FnMut(SocketAddr, &mut [u8])) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => f(from, &mut buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn official_client_connects_to_our_server() {
    let mut rng = UnwrapErr(SysRng);
    let socket = bind();
    let server_addr = socket.local_addr().unwrap();
    let key = Key::generate(&mut rng);
    let mut config = ServerConfig::new(PROTOCOL, key, vec![server_addr]);
    config.max_clients = 8;
    let mut server = Server::new(config, &mut rng).unwrap();

    let token = ConnectToken::generate(
        &TokenParams {
            protocol_id: PROTOCOL,
            client_id: 0xc0ffee,
            create_timestamp: unix_secs(),
            expire_seconds: 30,
            timeout_seconds: TIMEOUT_SECONDS,
            server_addresses: vec![server_addr],
            user_data: [0x5a; 256],
        },
        &key,
        &mut rng,
    )
    .unwrap();
    let mut official = netcode::Client::new("127.0.0.1:0".parse().unwrap(), 0.0).unwrap();
    official.connect(&token.to_bytes()).unwrap();

    let start = Instant::now();
    let mut connected_at = None;
    let mut slot = None;
    let (mut to_us, mut to_them) = (0u32, 0u32);
    let mut out = [0u8; MAX_PACKET_BYTES];
    while start.elapsed() < DEADLINE {
        let now = Instant::now();
        official.update(start.elapsed().as_secs_f64());
        drain(&socket, |from, buf| {
            match server.handle_datagram(now, unix_secs(), from, buf) {
                Some(ServerEvent::ClientConnected {
                    client,
                    client_id,
                    user_data,
                }) => {
                    assert_eq!(client_id, 0xc0ffee);
                    assert_eq!(*user_data, [0x5a; 256]);
                    slot = Some(client);
                }
                Some(ServerEvent::Payload { data, .. }) => {
                    assert_eq!(data, b"from official client");
                    to_us += 1;
                }
                Some(ServerEvent::ClientDisconnected { reason, .. }) => {
                    panic!("disconnected: {reason:?}")
                }
                None => {}
            }
        });
        server.handle_timeout(now);
        if let Some(e) = server.poll_event() {
            panic!("unexpected {e:?}");
        }
        while let Some(t) = server.poll_transmit(now, &mut out) {
            socket.send_to(&out[..t.len], t.destination).unwrap();
        }
        if official.state() == netcode::ClientState::Connected {
            let since = *connected_at.get_or_insert(now);
            if now.duration_since(since) > EXCHANGE {
                break;
            }
            official.send_packet(b"from official client").unwrap();
            if let Some(client) = slot {
                let t = server
                    .send_payload(now, client, b"from our server", &mut out)
                    .unwrap();
                socket.send_to(&out[..t.len], t.destination).unwrap();
            }
            // Sparse traffic: every other 10 ms tick sends nothing, so idle
            // keep-alives are exercised too.
            std::thread::sleep(Duration::from_millis(20));
        }
        while let Some((payload, _)) = official.receive_packet() {
            assert_eq!(payload, b"from our server");
            to_them += 1;
        }
        assert!(
            !official.state().is_error(),
            "official client: {}",
            official.state()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(connected_at.is_some(), "official client never connected");
    assert_eq!(official.state(), netcode::ClientState::Connected);
    assert!(
        to_us > 20 && to_them > 20,
        "payloads: {to_us} up, {to_them} down"
    );

    // Silence but for keep-alives, past the timeout: both stay connected.
    let idle_since = Instant::now();
    while idle_since.elapsed() < IDLE {
        let now = Instant::now();
        official.update(start.elapsed().as_secs_f64());
        drain(&socket, |from, buf| {
            if let Some(ServerEvent::ClientDisconnected { reason, .. }) =
                server.handle_datagram(now, unix_secs(), from, buf)
            {
                panic!("idle: disconnected: {reason:?}");
            }
        });
        server.handle_timeout(now);
        if let Some(e) = server.poll_event() {
            panic!("idle: unexpected {e:?}");
        }
        while let Some(t) = server.poll_transmit(now, &mut out) {
            socket.send_to(&out[..t.len], t.destination).unwrap();
        }
        assert_eq!(official.state(), netcode::ClientState::Connected, "idle");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.num_connected(), 1);

    // A clean disconnect reaches our server.
    official.disconnect();
    let wait = Instant::now();
    let mut gone = false;
    while wait.elapsed() < Duration::from_secs(2) && !gone {
        drain(&socket, |from, buf| {
            if let Some(ServerEvent::ClientDisconnected { .. }) =
                server.handle_datagram(Instant::now(), unix_secs(), from, buf)
            {
                gone = true;
            }
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(gone);
    assert_eq!(server.num_connected(), 0);
}

#[test]
fn our_client_connects_to_official_server() {
    let key = netcode::generate_key();
    let mut official =
        netcode::Server::new("127.0.0.1:0".parse().unwrap(), PROTOCOL, &key, 0.0).unwrap();
    official.start(8).unwrap();
    let server_addr = official.address();
    let token = netcode::generate_connect_token(
        &[server_addr],
        &[server_addr],
        30,
        TIMEOUT_SECONDS,
        0xbeef,
        PROTOCOL,
        &key,
        &[0x33; netcode::USER_DATA_BYTES],
    )
    .unwrap();

    let socket = bind();
    let mut client = Client::new(ClientConfig::new(PROTOCOL));
    let start = Instant::now();
    client.connect_bytes(&token, start, unix_secs()).unwrap();

    let mut connected_at = None;
    let mut official_index = None;
    let (mut to_us, mut to_them) = (0u32, 0u32);
    let mut out = [0u8; MAX_PACKET_BYTES];
    while start.elapsed() < DEADLINE {
        let now = Instant::now();
        official.update(start.elapsed().as_secs_f64());
        while let Some(e) = official.next_event() {
            match e {
                netcode::ServerEvent::ClientConnected { client_index } => {
                    assert_eq!(official.client_id(client_index), 0xbeef);
                    official_index = Some(client_index);
                }
                other => panic!("official server: {other:?}"),
            }
        }
        drain(&socket, |from, buf| {
            match client.handle_datagram(now, from, buf) {
                Some(ClientEvent::Payload(data)) => {
                    assert_eq!(data, b"from official server");
                    to_us += 1;
                }
                Some(ClientEvent::Connected { client_index, .. }) => {
                    assert_eq!(Some(client_index as usize), official_index);
                }
                Some(ClientEvent::Disconnected) => panic!("official server disconnected us"),
                None => {}
            }
        });
        client.handle_timeout(now);
        while let Some(t) = client.poll_transmit(now, &mut out) {
            socket.send_to(&out[..t.len], t.destination).unwrap();
        }
        if client.state() == ClientState::Connected {
            let since = *connected_at.get_or_insert(now);
            if now.duration_since(since) > EXCHANGE {
                break;
            }
            let t = client
                .send_payload(now, b"from our client", &mut out)
                .unwrap();
            socket.send_to(&out[..t.len], t.destination).unwrap();
            if let Some(index) = official_index {
                official
                    .send_packet(index, b"from official server")
                    .unwrap();
                while let Some((payload, _)) = official.receive_packet(index) {
                    assert_eq!(payload, b"from our client");
                    to_them += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !client.state().is_error(),
            "our client: {:?}",
            client.state()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(connected_at.is_some(), "our client never connected");
    assert_eq!(client.state(), ClientState::Connected);
    assert!(
        to_us > 20 && to_them > 20,
        "payloads: {to_us} down, {to_them} up"
    );

    // Silence but for keep-alives, past the timeout: both stay connected.
    let idle_since = Instant::now();
    while idle_since.elapsed() < IDLE {
        let now = Instant::now();
        official.update(start.elapsed().as_secs_f64());
        if let Some(e) = official.next_event() {
            panic!("idle: official server: {e:?}");
        }
        drain(&socket, |from, buf| {
            if let Some(ClientEvent::Disconnected) = client.handle_datagram(now, from, buf) {
                panic!("idle: the official server disconnected us");
            }
        });
        client.handle_timeout(now);
        while let Some(t) = client.poll_transmit(now, &mut out) {
            socket.send_to(&out[..t.len], t.destination).unwrap();
        }
        assert_eq!(client.state(), ClientState::Connected, "idle");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(official.client_connected(official_index.unwrap()));

    // Our clean disconnect reaches the official server.
    let index = official_index.unwrap();
    client.disconnect();
    while let Some(t) = client.poll_transmit(Instant::now(), &mut out) {
        socket.send_to(&out[..t.len], t.destination).unwrap();
    }
    let wait = Instant::now();
    let mut gone = false;
    while wait.elapsed() < Duration::from_secs(2) && !gone {
        official.update(start.elapsed().as_secs_f64());
        while let Some(e) = official.next_event() {
            if let netcode::ServerEvent::ClientDisconnected { reason, .. } = e {
                assert_eq!(reason, netcode::DisconnectReason::ClientDisconnect);
                gone = true;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(gone);
    assert!(!official.client_connected(index));
}
