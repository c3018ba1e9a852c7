//! The order of the server endpoint's events, in memory on virtual time:
//! a client's `Connected` comes before its first message and its
//! `Disconnected` after its last, even when the caller polls only after
//! many datagrams (the connections deliver into one arena for all peers).

#![expect(
    clippy::disallowed_methods,
    reason = "virtual time starts at a real Instant"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::endpoint::{ClientEndpoint, EndpointEvent, ServerEndpoint};
use shared::io::unix_secs;
use shared::netcode::MAX_PACKET_BYTES;
use shared::protocol::channels;
use shared::transport::DisconnectReason;
use support::endpoints::{game_client, game_server};

mod support;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Connected(u64),
    Message(u64, Vec<u8>),
    Disconnected(u64),
}

struct World {
    server: ServerEndpoint,
    clients: Vec<(ClientEndpoint, SocketAddr)>,
    server_addr: SocketAddr,
    now: Instant,
    unix: u64,
    buf: Vec<u8>,
}

impl World {
    fn new(clients: u64) -> Self {
        let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 7_777));
        let server = game_server(server_addr);
        let now = Instant::now();
        let unix = unix_secs();
        let clients = (1..=clients)
            .map(|id| {
                let octet = u8::try_from(id).unwrap();
                (
                    game_client(server_addr, id, 60, now, unix),
                    SocketAddr::from((Ipv4Addr::new(127, 1, 0, octet), 40_000)),
                )
            })
            .collect();
        Self {
            server,
            clients,
            server_addr,
            now,
            unix,
            buf: vec![0; MAX_PACKET_BYTES],
        }
    }

    /// Every client's timers and datagrams to the server, whose events
    /// nobody polls meanwhile.
    fn clients_send(&mut self) {
        for (client, addr) in &mut self.clients {
            if client.poll_timeout().is_some_and(|t| t <= self.now) {
                client.handle_timeout(self.now);
            }
            while let Some(transmit) = client.poll_transmit(self.now, &mut self.buf) {
                let mut datagram = self.buf[..transmit.len].to_vec();
                self.server
                    .handle_datagram(self.now, self.unix, *addr, &mut datagram);
            }
        }
    }

    /// The server's timers and datagrams to the clients (events unpolled).
    fn server_sends(&mut self) {
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        while let Some(transmit) = self.server.poll_transmit(self.now, &mut self.buf) {
            let mut datagram = self.buf[..transmit.len].to_vec();
            if let Some((client, _)) = self
                .clients
                .iter_mut()
                .find(|(_, addr)| *addr == transmit.destination)
            {
                client.handle_datagram(self.now, self.server_addr, &mut datagram);
                while client.poll_event().is_some() {}
            }
        }
    }

    fn poll(&mut self, seen: &mut Vec<Seen>) {
        while let Some(event) = self.server.poll_event() {
            seen.push(match event {
                EndpointEvent::Connected { client_id, .. } => Seen::Connected(client_id),
                EndpointEvent::Message {
                    client_id, payload, ..
                } => Seen::Message(client_id, payload.to_vec()),
                EndpointEvent::Disconnected {
                    client_id, reason, ..
                } => {
                    assert_eq!(reason, DisconnectReason::Closed);
                    Seen::Disconnected(client_id)
                }
            });
        }
    }
}

#[test]
fn each_clients_messages_come_between_its_connect_and_its_end() {
    let mut world = World::new(3);
    for _ in 0..50 {
        world.clients_send();
        world.server_sends();
        if world.clients.iter().all(|(c, _)| c.is_connected()) {
            break;
        }
        world.now += Duration::from_millis(5);
    }
    assert!(world.clients.iter().all(|(c, _)| c.is_connected()));

    // Three chat lines each, sent before the server's events are polled at
    // all (so before anyone polled its `Connected`); then client 2 leaves.
    for round in 0..3u8 {
        for (id, (client, _)) in (1u8..).zip(&mut world.clients) {
            client
                .send(channels::CHAT, Bytes::from(vec![id, round]))
                .unwrap();
        }
        world.clients_send();
        world.now += Duration::from_millis(10);
    }
    // (A close discards what is still queued: the last line leaves first.)
    world.clients[1]
        .0
        .send(channels::CHAT, Bytes::from(vec![2, 3]))
        .unwrap();
    world.clients_send();
    world.clients[1]
        .0
        .disconnect(world.now, DisconnectReason::Closed);
    world.clients_send();

    let mut seen = Vec::new();
    world.poll(&mut seen);
    // The server's goodbye packets leave, then the slot is freed.
    for _ in 0..10 {
        world.now += Duration::from_millis(10);
        world.server_sends();
        world.poll(&mut seen);
    }

    for id in 1..=3u64 {
        let own: Vec<&Seen> = seen
            .iter()
            .filter(|s| match s {
                Seen::Connected(c) | Seen::Message(c, _) | Seen::Disconnected(c) => *c == id,
            })
            .collect();
        let byte = u8::try_from(id).unwrap();
        let mut expected = vec![Seen::Connected(id)];
        let rounds = if id == 2 { 4 } else { 3 };
        expected.extend((0..rounds).map(|round| Seen::Message(id, vec![byte, round])));
        if id == 2 {
            expected.push(Seen::Disconnected(id));
        }
        assert_eq!(own, expected.iter().collect::<Vec<_>>(), "client {id}");
    }
}
