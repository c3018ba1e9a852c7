//! The endpoints' timers on virtual time, in memory: a connection's
//! keepalives and idle timeout run from `handle_timeout` alone, whatever
//! the packets before did to the connection's timers.

#![expect(
    clippy::disallowed_methods,
    reason = "virtual time starts at a real Instant"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::endpoint::{ClientEndpoint, ClientEndpointEvent, EndpointEvent, ServerEndpoint};
use shared::io::unix_secs;
use shared::netcode::{ClientIndex, MAX_PACKET_BYTES};
use shared::protocol::channels;
use shared::transport::DisconnectReason;
use support::endpoints::{game_client, game_server};

mod support;

/// The connect token's timeout: well above the transport's idle timeout,
/// so that only the transport's timer can end the connection in time.
const TOKEN_TIMEOUT_S: i32 = 60;

struct Pair {
    server: ServerEndpoint,
    client: ClientEndpoint,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    slot: Option<ClientIndex>,
    ended: Option<DisconnectReason>,
    now: Instant,
    unix: u64,
    buf: Vec<u8>,
}

impl Pair {
    fn connected(token_timeout_s: i32) -> Self {
        let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 7_777));
        let server = game_server(server_addr);
        let now = Instant::now();
        let unix = unix_secs();
        let client = game_client(server_addr, 1, token_timeout_s, now, unix);
        let mut pair = Self {
            server,
            client,
            server_addr,
            client_addr: SocketAddr::from((Ipv4Addr::new(127, 1, 0, 1), 40_000)),
            slot: None,
            ended: None,
            now,
            unix,
            buf: vec![0; MAX_PACKET_BYTES],
        };
        for _ in 0..50 {
            pair.client_turn();
            pair.server_turn(true);
            if pair.slot.is_some() && pair.client.is_connected() {
                return pair;
            }
            pair.now += Duration::from_millis(5);
        }
        panic!("the client did not connect");
    }

    /// The client's timers and datagrams, to the server.
    fn client_turn(&mut self) {
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
        }
        while let Some(transmit) = self.client.poll_transmit(self.now, &mut self.buf) {
            let mut datagram = self.buf[..transmit.len].to_vec();
            self.server
                .handle_datagram(self.now, self.unix, self.client_addr, &mut datagram);
            self.drain_server_events();
        }
    }

    /// The server's timers, then its datagrams: delivered to the client,
    /// or lost (`deliver` false). Returns how many it sent.
    fn server_turn(&mut self, deliver: bool) -> usize {
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        self.drain_server_events();
        let mut sent = 0;
        while let Some(transmit) = self.server.poll_transmit(self.now, &mut self.buf) {
            sent += 1;
            if deliver {
                let mut datagram = self.buf[..transmit.len].to_vec();
                self.client
                    .handle_datagram(self.now, self.server_addr, &mut datagram);
                while let Some(event) = self.client.poll_event() {
                    if let ClientEndpointEvent::Disconnected { reason } = event {
                        panic!("the client was disconnected: {reason:?}");
                    }
                }
            }
        }
        self.drain_server_events();
        sent
    }

    fn drain_server_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match event {
                EndpointEvent::Connected { client, .. } => self.slot = Some(client),
                EndpointEvent::Disconnected { reason, .. } => self.ended = Some(reason),
                _ => {}
            }
        }
    }
}

#[test]
fn a_silent_client_gets_keepalives_then_times_out_on_the_servers_timers_alone() {
    let mut pair = Pair::connected(TOKEN_TIMEOUT_S);
    let slot = pair.slot.unwrap();
    // Traffic both ways moves the connection's timers (acks, losses, idle).
    for _ in 0..30 {
        pair.now += Duration::from_millis(33);
        pair.client
            .send(channels::MOVEMENT, Bytes::from_static(&[1; 24]))
            .unwrap();
        pair.client_turn();
        pair.server
            .send(pair.now, slot, channels::CHAT, Bytes::from_static(&[2; 64]))
            .unwrap();
        pair.server_turn(true);
    }
    // The client goes silent; its packets from now on are lost. Time jumps
    // straight to each timer the server asks for.
    let silent_since = pair.now;
    let idle = channels::transport_config().idle_timeout;
    let mut sent_while_silent = 0;
    while pair.ended.is_none() {
        let Some(at) = pair.server.poll_timeout() else {
            panic!(
                "the server has no timer left {:?} after the client went silent",
                pair.now - silent_since
            );
        };
        pair.now = pair.now.max(at);
        assert!(
            pair.now - silent_since <= idle + Duration::from_secs(1),
            "still connected {:?} after the client went silent",
            pair.now - silent_since
        );
        sent_while_silent += pair.server_turn(false);
    }
    assert_eq!(pair.ended, Some(DisconnectReason::Timeout));
    assert!(
        pair.now - silent_since >= idle,
        "timed out after {:?}, before the idle timeout",
        pair.now - silent_since
    );
    assert!(
        sent_while_silent >= 5,
        "{sent_while_silent} keepalives or resends while the client was silent"
    );
}

#[test]
fn a_client_whose_server_goes_silent_reports_the_timeout_once_and_then_rests() {
    // The token's timeout equals the transport's idle timeout (the game's
    // defaults): both layers time out at the same instant.
    let idle = channels::transport_config().idle_timeout;
    let mut pair = Pair::connected(i32::try_from(idle.as_secs()).unwrap());
    let slot = pair.slot.unwrap();
    for _ in 0..30 {
        pair.now += Duration::from_millis(33);
        pair.server
            .send(
                pair.now,
                slot,
                channels::SNAPSHOT,
                Bytes::from_static(&[3; 100]),
            )
            .unwrap();
        pair.server_turn(true);
        pair.client_turn();
    }
    // The server is gone: the client's packets go nowhere, nothing comes.
    let silent_since = pair.now;
    let mut reasons = Vec::new();
    for _ in 0..10_000 {
        let Some(at) = pair.client.poll_timeout() else {
            break;
        };
        if !reasons.is_empty() && at <= pair.now {
            panic!(
                "a timer due at once {:?} after the session ended",
                pair.now - silent_since
            );
        }
        pair.now = pair.now.max(at);
        pair.client.handle_timeout(pair.now);
        while pair.client.poll_transmit(pair.now, &mut pair.buf).is_some() {}
        while let Some(event) = pair.client.poll_event() {
            if let ClientEndpointEvent::Disconnected { reason } = event {
                reasons.push(reason);
            }
        }
        if pair.now - silent_since > idle + Duration::from_secs(5) {
            break;
        }
    }
    assert_eq!(reasons, [DisconnectReason::Timeout]);
    assert!(!pair.client.is_connected());
}

#[test]
fn a_server_that_must_stop_says_goodbye_without_waiting_for_acks() {
    let mut pair = Pair::connected(TOKEN_TIMEOUT_S);
    let slot = pair.slot.unwrap();
    pair.server
        .send(pair.now, slot, channels::CHAT, Bytes::from_static(&[2; 64]))
        .unwrap();
    pair.server
        .disconnect_all(pair.now, DisconnectReason::ServerShutdown);
    // The last message leaves and is lost: the disconnect waits for its ack.
    assert!(pair.server_turn(false) >= 1);
    assert_eq!(pair.server.connected_clients(), 1);
    assert!(pair.server.poll_transmit(pair.now, &mut pair.buf).is_none());
    // The server cannot wait: the goodbye leaves at once.
    pair.server.stop_lingering(pair.now);
    let mut reason = None;
    while let Some(transmit) = pair.server.poll_transmit(pair.now, &mut pair.buf) {
        let mut datagram = pair.buf[..transmit.len].to_vec();
        pair.client
            .handle_datagram(pair.now, pair.server_addr, &mut datagram);
        while let Some(event) = pair.client.poll_event() {
            if let ClientEndpointEvent::Disconnected { reason: r } = event {
                reason = Some(r);
            }
        }
    }
    assert_eq!(reason, Some(DisconnectReason::ServerShutdown));
}

#[test]
fn a_disconnect_gives_back_the_clients_share_of_the_total_receive_memory() {
    let mut pair = Pair::connected(TOKEN_TIMEOUT_S);
    let slot = pair.slot.unwrap();
    pair.client
        .send(channels::EVENTS, Bytes::from(vec![5u8; 3_000]))
        .unwrap();
    // Only the first fragment arrives: the server holds a reassembly.
    let transmit = pair
        .client
        .poll_transmit(pair.now, &mut pair.buf)
        .expect("a datagram");
    let mut datagram = pair.buf[..transmit.len].to_vec();
    while pair.client.poll_transmit(pair.now, &mut pair.buf).is_some() {}
    pair.server
        .handle_datagram(pair.now, pair.unix, pair.client_addr, &mut datagram);
    assert!(pair.server.total_receive_buffered() > 0);
    pair.server
        .disconnect(pair.now, slot, DisconnectReason::Kicked);
    assert_eq!(pair.server.total_receive_buffered(), 0);
}

/// A client that leaves gets its last message and its reason to the
/// server, also when asked twice (a quit button, then the window closing).
/// The second call used to end the secure layer at once, and with it the
/// transport's goodbye and resends; and the server reported `Closed`
/// whenever the secure layer's goodbye came in the same burst as the
/// transport's.
#[test]
fn a_clients_goodbye_reaches_the_server_with_its_reason() {
    for calls in [1, 2] {
        client_leaves(calls);
    }
}

fn client_leaves(calls: usize) {
    let mut pair = Pair::connected(TOKEN_TIMEOUT_S);
    pair.client
        .send(channels::CHAT, Bytes::from_static(b"last words"))
        .unwrap();
    for _ in 0..calls {
        pair.client
            .disconnect(pair.now, DisconnectReason::Custom(70));
    }
    let mut heard = Vec::new();
    for _ in 0..200 {
        if pair.client.poll_timeout().is_some_and(|t| t <= pair.now) {
            pair.client.handle_timeout(pair.now);
        }
        while let Some(transmit) = pair.client.poll_transmit(pair.now, &mut pair.buf) {
            let mut datagram = pair.buf[..transmit.len].to_vec();
            pair.server
                .handle_datagram(pair.now, pair.unix, pair.client_addr, &mut datagram);
        }
        if pair.server.poll_timeout().is_some_and(|t| t <= pair.now) {
            pair.server.handle_timeout(pair.now);
        }
        while let Some(event) = pair.server.poll_event() {
            match event {
                EndpointEvent::Message { payload, .. } => heard.push(payload.to_vec()),
                EndpointEvent::Disconnected { reason, .. } => pair.ended = Some(reason),
                EndpointEvent::Connected { .. } => {}
            }
        }
        while let Some(transmit) = pair.server.poll_transmit(pair.now, &mut pair.buf) {
            let mut datagram = pair.buf[..transmit.len].to_vec();
            pair.client
                .handle_datagram(pair.now, pair.server_addr, &mut datagram);
            while pair.client.poll_event().is_some() {}
        }
        if pair.ended.is_some() {
            break;
        }
        pair.now += Duration::from_millis(5);
    }
    assert_eq!(
        pair.ended,
        Some(DisconnectReason::Custom(70)),
        "{calls} calls"
    );
    assert_eq!(heard, [b"last words".to_vec()], "{calls} calls");
}
