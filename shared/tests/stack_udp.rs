//! The whole stack over real loopback UDP: the server's net-io thread and
//! clients on their own sockets, with tokens, encryption and reliability.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent, ServerEndpoint, ServerEndpointConfig};
use shared::io::{
    ClientSocket, NetCommand, NetEvent, ServerIo, ServerIoConfig, system_rng, unix_secs,
};
use shared::netcode::{ConnectToken, Key, ServerConfig, TokenParams};
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
    let key = Key::generate(&mut system_rng());
    // Bind first to learn the port, then put the real address in the config.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_addr = probe.local_addr().unwrap();
    drop(probe);
    let mut netcode = ServerConfig::new(PROTOCOL, key, vec![server_addr]);
    netcode.max_clients = 64;
    let endpoint = ServerEndpoint::new(
        ServerEndpointConfig::new(netcode, TransportConfig::default()),
        &mut system_rng(),
    )
    .unwrap();
    let server = ServerIo::spawn(server_addr, endpoint, ServerIoConfig::default()).unwrap();

    let start = Instant::now();
    let mut clients: Vec<(ClientSocket, Seen)> = (0..20)
        .map(|i| {
            let mut endpoint = ClientEndpoint::new(PROTOCOL, TransportConfig::default());
            endpoint
                .connect(&token(&key, server_addr, 1000 + i), start, unix_secs())
                .unwrap();
            (
                ClientSocket::bind("127.0.0.1:0".parse().unwrap(), endpoint).unwrap(),
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
        for event in server.events().try_iter() {
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
