//! The order of the server endpoint's events, in memory on virtual time:
//! a client's `Connected` comes before its first message and its
//! `Disconnected` after its last, even when the caller polls only after
//! many datagrams (the connections deliver into one arena for all peers);
//! and the endpoint's bound on what all clients together hold.

#![expect(
    clippy::disallowed_methods,
    reason = "virtual time starts at a real Instant"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::endpoint::{ClientEndpoint, EndpointEvent, EndpointSendError, ServerEndpoint};
use shared::io::unix_secs;
use shared::netcode::{ClientIndex, MAX_PACKET_BYTES};
use shared::protocol::channels;
use shared::transport::{DisconnectReason, SendError};
use support::endpoints::{game_client, game_server, game_server_with};

mod support;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Connected(u64),
    Message(u64, Vec<u8>),
    Disconnected(u64),
}

const SERVER_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7_777);

struct World {
    server: ServerEndpoint,
    clients: Vec<(ClientEndpoint, SocketAddr)>,
    server_addr: SocketAddr,
    now: Instant,
    unix: u64,
    buf: Vec<u8>,
    /// Clients that never receive what the server sends them.
    deaf: Vec<usize>,
    /// Clients whose datagrams never reach the server.
    mute: Vec<usize>,
    /// A client whose datagrams from the server are held in `held` instead
    /// of delivered.
    hold: Option<usize>,
    held: Vec<Vec<u8>>,
}

impl World {
    fn new(clients: u64) -> Self {
        Self::with_timeouts(&vec![60; usize::try_from(clients).unwrap()])
    }

    /// A client for each of `timeouts`: its token's timeout in seconds.
    fn with_timeouts(timeouts: &[i32]) -> Self {
        Self::with_server(game_server(SERVER_ADDR), timeouts)
    }

    /// [`with_timeouts`](Self::with_timeouts) for `server`, at [`SERVER_ADDR`].
    fn with_server(server: ServerEndpoint, timeouts: &[i32]) -> Self {
        let server_addr = SERVER_ADDR;
        let now = Instant::now();
        let unix = unix_secs();
        let clients = (1..)
            .zip(timeouts)
            .map(|(id, &timeout)| {
                let octet = u8::try_from(id).unwrap();
                (
                    game_client(server_addr, id, timeout, now, unix),
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
            deaf: Vec::new(),
            mute: Vec::new(),
            hold: None,
            held: Vec::new(),
        }
    }

    /// Runs the handshakes until every client is connected; returns each
    /// client's account and slot, by account.
    fn connect_all(&mut self) -> Vec<(u64, ClientIndex)> {
        let mut slots = Vec::new();
        for _ in 0..50 {
            self.clients_send();
            self.server_sends();
            while let Some(event) = self.server.poll_event() {
                if let EndpointEvent::Connected {
                    client, client_id, ..
                } = event
                {
                    slots.push((client_id, client));
                }
            }
            if slots.len() == self.clients.len() {
                break;
            }
            self.now += Duration::from_millis(5);
        }
        slots.sort_unstable();
        slots
    }

    /// Every client's timers and datagrams to the server (but a mute
    /// client's), whose events nobody polls meanwhile.
    fn clients_send(&mut self) {
        for index in 0..self.clients.len() {
            let datagrams = self.client_datagrams(index);
            if self.mute.contains(&index) {
                continue;
            }
            for mut datagram in datagrams {
                let from = self.clients[index].1;
                self.server
                    .handle_datagram(self.now, self.unix, from, &mut datagram);
            }
        }
    }

    /// What the client at `index` sends now (its timers run first).
    fn client_datagrams(&mut self, index: usize) -> Vec<Vec<u8>> {
        let (client, _) = &mut self.clients[index];
        if client.poll_timeout().is_some_and(|t| t <= self.now) {
            client.handle_timeout(self.now);
        }
        let mut datagrams = Vec::new();
        while let Some(transmit) = client.poll_transmit(self.now, &mut self.buf) {
            datagrams.push(self.buf[..transmit.len].to_vec());
        }
        datagrams
    }

    /// Client 0 sends a 3,000-byte line on the ordered chat channel, of
    /// which only the second fragment reaches the server: it holds that
    /// half, waiting for the first.
    fn hold_half_a_message(&mut self) {
        self.clients[0]
            .0
            .send(channels::CHAT, Bytes::from(vec![1; 3_000]))
            .unwrap();
        let mut datagrams = self.client_datagrams(0);
        assert!(datagrams.len() > 1, "the message goes in fragments");
        let from = self.clients[0].1;
        self.server
            .handle_datagram(self.now, self.unix, from, &mut datagrams[1]);
        assert!(self.server.total_receive_buffered() > 0);
    }

    /// Client `client` sends a chat line of `size` bytes, reaching the
    /// server unless `lost`. No time passes: nothing lost is resent
    /// meanwhile.
    fn say(&mut self, client: usize, size: usize, lost: bool) {
        self.clients[client]
            .0
            .send(channels::CHAT, Bytes::from(vec![7u8; size]))
            .unwrap();
        self.mute = if lost { vec![client] } else { Vec::new() };
        self.clients_send();
        self.mute.clear();
    }

    /// Both sides' traffic, then the disconnects the server reports, as
    /// (account, reason); then 10 ms pass.
    fn exchange(&mut self) -> Vec<(u64, DisconnectReason)> {
        self.server_sends();
        self.clients_send();
        let ended = self.disconnects();
        self.now += Duration::from_millis(10);
        ended
    }

    /// The server's events polled, its disconnects kept as (account,
    /// reason).
    fn disconnects(&mut self) -> Vec<(u64, DisconnectReason)> {
        let mut ended = Vec::new();
        while let Some(event) = self.server.poll_event() {
            if let EndpointEvent::Disconnected {
                client_id, reason, ..
            } = event
            {
                ended.push((client_id, reason));
            }
        }
        ended
    }

    /// The server's timers and datagrams to the clients (events unpolled).
    fn server_sends(&mut self) {
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        while let Some(transmit) = self.server.poll_transmit(self.now, &mut self.buf) {
            let mut datagram = self.buf[..transmit.len].to_vec();
            if let Some(held) = self.hold
                && self.clients[held].1 == transmit.destination
            {
                self.held.push(datagram);
                continue;
            }
            if let Some((_, (client, _))) =
                self.clients
                    .iter_mut()
                    .enumerate()
                    .find(|(index, (_, addr))| {
                        *addr == transmit.destination && !self.deaf.contains(index)
                    })
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
                EndpointEvent::Disconnected { client_id, .. } => Seen::Disconnected(client_id),
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
    // The last line is still queued when client 2 leaves: it is sent
    // first (and acknowledged), then the goodbye.
    world.clients[1]
        .0
        .send(channels::CHAT, Bytes::from(vec![2, 3]))
        .unwrap();
    world.clients[1]
        .0
        .disconnect(world.now, DisconnectReason::Closed);
    world.clients_send();

    let mut seen = Vec::new();
    world.poll(&mut seen);
    // The acks and the goodbye packets go to and fro, then the slot is freed.
    for _ in 0..10 {
        world.now += Duration::from_millis(10);
        world.server_sends();
        world.clients_send();
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

/// A slot the secure layer frees (a client timed out, or sent its
/// disconnect packets) may be handed to the next client's handshake
/// response before the endpoint has reported the first client's end. The
/// game must still see the first client leave, before the second arrives,
/// and the first one's buffered bytes must not stay counted.
#[test]
fn a_freed_slot_goes_to_the_next_client_only_after_its_client_left() {
    // Client 1 times out after 1 s of silence; client 2 keeps trying.
    let mut world = World::with_timeouts(&[1, 60]);
    let mut seen = Vec::new();
    for _ in 0..50 {
        for mut datagram in world.client_datagrams(0) {
            let from = world.clients[0].1;
            world
                .server
                .handle_datagram(world.now, world.unix, from, &mut datagram);
        }
        world.server_sends();
        if world.clients[0].0.is_connected() {
            break;
        }
        world.now += Duration::from_millis(5);
    }
    assert!(world.clients[0].0.is_connected());
    world.hold_half_a_message();
    world.poll(&mut seen);

    // Client 2's request reaches the server, the challenge comes back, and
    // its response waits.
    let from = world.clients[1].1;
    for mut request in world.client_datagrams(1) {
        world
            .server
            .handle_datagram(world.now, world.unix, from, &mut request);
    }
    world.server_sends();
    let responses = world.client_datagrams(1);
    assert!(!responses.is_empty());

    // Client 1 falls silent and times out; the server's timers and
    // transmits run (as `net-io` does), then the response arrives before
    // anyone polls the server's events.
    world.now += Duration::from_secs(2);
    world.server_sends();
    for mut response in responses {
        world
            .server
            .handle_datagram(world.now, world.unix, from, &mut response);
    }
    world.poll(&mut seen);
    assert_eq!(
        seen,
        [
            Seen::Connected(1),
            Seen::Disconnected(1),
            Seen::Connected(2)
        ]
    );
    assert_eq!(world.server.connected_clients(), 1);
    assert_eq!(world.server.total_receive_buffered(), 0);
}

/// A client the server kicked while a line to it was still
/// unacknowledged (its connection lingers up to a second to deliver it)
/// is reported as kicked when the secure layer times it out inside that
/// linger: the reason the server gave is why it left. A client that fell
/// silent with no reason given still timed out, and one that said goodbye
/// still closed.
#[test]
fn a_kick_lingering_when_the_secure_layer_times_the_client_out_is_reported_as_the_kick() {
    // Clients 1 and 2 time out after 1 s of silence, and fall silent now.
    let mut world = World::with_timeouts(&[1, 1, 60]);
    let slots = world.connect_all();
    let [(1, kicked), (2, _), (3, _)] = slots[..] else {
        panic!("the clients did not connect: {slots:?}");
    };
    world.mute = vec![0, 1];
    world
        .server
        .send(
            world.now,
            kicked,
            channels::CHAT,
            Bytes::from_static(b"bye"),
        )
        .unwrap();
    let mut ended = world.exchange();
    world.now += Duration::from_millis(500);
    assert!(
        world
            .server
            .disconnect(world.now, kicked, DisconnectReason::Kicked)
    );
    world.clients[2]
        .0
        .disconnect(world.now, DisconnectReason::Closed);
    // The kick lingers until 1.5 s; the secure layer gives up on both
    // silent clients at 1 s.
    for _ in 0..150 {
        ended.extend(world.exchange());
    }
    ended.sort_unstable_by_key(|&(account, _)| account);
    assert_eq!(
        ended,
        [
            (1, DisconnectReason::Kicked),
            (2, DisconnectReason::Timeout),
            (3, DisconnectReason::Closed)
        ]
    );
}

/// A kicked client whose own goodbye crosses the kick (its connection
/// lingering to deliver a line) is reported as kicked, as every other end
/// of that linger is: the reason the server gave stands (it was reported
/// with the client's own reason, though `net-io` had counted the kick).
#[test]
fn a_kick_crossed_by_the_clients_goodbye_is_reported_as_the_kick() {
    let mut world = World::with_timeouts(&[60, 60]);
    let slots = world.connect_all();
    let [(1, kicked), (2, _)] = slots[..] else {
        panic!("the clients did not connect: {slots:?}");
    };
    world
        .server
        .send(
            world.now,
            kicked,
            channels::CHAT,
            Bytes::from_static(b"bye"),
        )
        .unwrap();
    assert!(
        world
            .server
            .disconnect(world.now, kicked, DisconnectReason::Kicked)
    );
    world.clients[0]
        .0
        .disconnect(world.now, DisconnectReason::Custom(70));
    let mut ended = Vec::new();
    for _ in 0..50 {
        ended.extend(world.exchange());
    }
    assert_eq!(ended, [(1, DisconnectReason::Kicked)]);
}

/// The lines the send-bound tests send.
const LINE: usize = 1_000;

/// A server of 4 slots whose send memory is bounded at 64 lines in all,
/// with two clients connected: account 1, deaf (it acknowledges nothing),
/// and account 2, who listens.
fn over_a_send_bound() -> (World, ClientIndex, ClientIndex) {
    let server = game_server_with(SERVER_ADDR, |config| {
        config.netcode.max_clients = 4;
        config.max_total_send_buffer = 64 * LINE;
    });
    let mut world = World::with_server(server, &[60, 60]);
    let slots = world.connect_all();
    let [(1, deaf), (2, listener)] = slots[..] else {
        panic!("the clients did not connect: {slots:?}");
    };
    world.deaf = vec![0];
    (world, deaf, listener)
}

/// The total send bound: a client that acknowledges nothing while the
/// server keeps sending to it is cut off once the total is over the bound
/// and it holds more than its share, long before its own 512 KiB queue
/// fills; a client that acknowledges is served on, and what was counted
/// for the one cut off is freed with it.
#[test]
fn a_client_holding_more_than_its_share_of_send_memory_is_cut_off() {
    let (mut world, deaf, listener) = over_a_send_bound();

    let mut cut_at = None;
    let mut ended = Vec::new();
    for round in 0..200u8 {
        let line = Bytes::from(vec![round; LINE]);
        if cut_at.is_none() {
            let sent = world
                .server
                .send(world.now, deaf, channels::CHAT, line.clone());
            if sent.is_err() {
                cut_at = Some(round);
            }
        }
        world
            .server
            .send(world.now, listener, channels::CHAT, line)
            .unwrap_or_else(|error| panic!("line {round} to the listener: {error}"));
        ended.extend(world.exchange());
    }
    // Over 64 lines in total, with more than 16 of its own (64 / 4 slots).
    assert!(
        cut_at.is_some_and(|round| (64..=66).contains(&round)),
        "cut off at line {cut_at:?}"
    );
    assert_eq!(ended, [(1, DisconnectReason::SendQueueFull)]);
    assert_eq!(world.server.stats().queue_full_disconnects, 1);
    assert!(world.clients[1].0.is_connected());
    assert!(
        world.server.total_send_buffered() <= 4 * LINE,
        "{} bytes still counted",
        world.server.total_send_buffered()
    );
}

/// A client being disconnected (kicked while the server is over its send
/// bound, holding more than its share) is not cut off again by the game's
/// next reliable send: that send is refused as to a closed connection and
/// the client still hears why it was kicked.
#[test]
fn a_send_to_a_client_on_its_way_out_does_not_cut_it_off_as_send_queue_full() {
    let (mut world, deaf, _) = over_a_send_bound();
    let mut round = 0u8;
    while world.server.total_send_buffered() <= 64 * LINE {
        let line = Bytes::from(vec![round; LINE]);
        world
            .server
            .send(world.now, deaf, channels::CHAT, line)
            .unwrap_or_else(|error| panic!("line {round}: {error}"));
        round += 1;
    }
    assert!(
        world
            .server
            .disconnect(world.now, deaf, DisconnectReason::Kicked)
    );
    let after = world
        .server
        .send(world.now, deaf, channels::CHAT, Bytes::from_static(b"late"));
    assert!(
        !matches!(
            after,
            Err(EndpointSendError::Transport(SendError::QueueFull))
        ),
        "{after:?}"
    );
    assert_eq!(world.server.stats().queue_full_disconnects, 0);
    let ended: Vec<_> = (0..300).flat_map(|_| world.exchange()).collect();
    assert_eq!(ended, [(1, DisconnectReason::Kicked)]);
}

/// A client cut off for holding too much send memory, whose token's
/// timeout then passes before anyone polls the server's events (the cut
/// in one net-io turn's commands, the secure layer's timeout in the same
/// turn's timers): the game still hears SendQueueFull, the reason the cut
/// counted, whether or not the cut's goodbyes have left yet. The
/// listener, silent as long, timed out.
#[test]
fn a_cut_whose_client_then_times_out_is_reported_as_the_cut() {
    for goodbyes_sent in [false, true] {
        let (mut world, deaf, _) = over_a_send_bound();
        let mut round = 0u8;
        let refused = loop {
            let line = Bytes::from(vec![round; LINE]);
            if let Err(error) = world.server.send(world.now, deaf, channels::CHAT, line) {
                break error;
            }
            round += 1;
        };
        assert_eq!(refused, EndpointSendError::Transport(SendError::QueueFull));
        if goodbyes_sent {
            let mut buf = vec![0; MAX_PACKET_BYTES];
            while world.server.poll_transmit(world.now, &mut buf).is_some() {}
        }
        world.now += Duration::from_secs(61);
        world.server.handle_timeout(world.now);
        let mut ended: Vec<_> = (0..10).flat_map(|_| world.exchange()).collect();
        ended.sort_unstable_by_key(|&(account, _)| account);
        assert_eq!(
            ended,
            [
                (1, DisconnectReason::SendQueueFull),
                (2, DisconnectReason::Timeout)
            ],
            "goodbyes sent before the timeout: {goodbyes_sent}"
        );
        assert_eq!(world.server.stats().queue_full_disconnects, 1);
    }
}

/// Three clients that acknowledge nothing, one that does: each crossing
/// of the total bound cuts one holder over its share, whose memory then
/// stops counting, so the other two are cut later, one at a time, and
/// never by a snapshot (unreliable: it adds no send memory).
#[test]
fn one_cut_brings_the_total_back_under_and_snapshots_cut_no_one() {
    let server = game_server_with(SERVER_ADDR, |config| {
        config.netcode.max_clients = 4;
        config.max_total_send_buffer = 64 * LINE;
    });
    let mut world = World::with_server(server, &[60, 60, 60, 60]);
    let slots = world.connect_all();
    assert_eq!(slots.len(), 4, "{slots:?}");
    world.deaf = vec![0, 1, 2];
    let mut cut_at = [None; 4];
    for round in 0..200u8 {
        for (i, &(_, slot)) in slots.iter().enumerate() {
            if cut_at[i].is_some() {
                continue;
            }
            let snapshot = Bytes::from(vec![round; 100]);
            let sent = world
                .server
                .send(world.now, slot, channels::SNAPSHOT, snapshot);
            assert!(
                sent.is_ok(),
                "a snapshot to client {i} in round {round}: {sent:?}"
            );
            let line = Bytes::from(vec![round; LINE]);
            if world
                .server
                .send(world.now, slot, channels::CHAT, line)
                .is_err()
            {
                cut_at[i] = Some(round);
            }
        }
        world.server_sends();
        world.clients_send();
        while world.server.poll_event().is_some() {}
        world.now += Duration::from_millis(10);
    }
    assert_eq!(cut_at[3], None, "the listener was cut");
    let mut rounds: Vec<u8> = cut_at[..3]
        .iter()
        .map(|at| at.expect("a deaf client was never cut"))
        .collect();
    rounds.sort_unstable();
    assert!(
        rounds[0] < rounds[1] && rounds[1] < rounds[2],
        "cut in rounds {rounds:?}"
    );
}

/// A connection whose handshake completes and whose end arrives in the
/// same batch of datagrams, before anyone polls the client: its
/// `Connected` still names the slot the server gave it.
#[test]
fn a_connection_that_ends_before_it_is_polled_reports_its_own_slot() {
    let mut world = World::new(4);
    world.hold = Some(3);
    let mut slot = None;
    for _ in 0..50 {
        world.clients_send();
        world.server_sends();
        while let Some(event) = world.server.poll_event() {
            if let EndpointEvent::Connected {
                client, client_id, ..
            } = event
                && client_id == 4
            {
                slot = Some(client);
            }
        }
        if slot.is_some() {
            break;
        }
        // Client 4 gets what was held for it (its challenge), and goes on.
        for mut datagram in std::mem::take(&mut world.held) {
            world.clients[3]
                .0
                .handle_datagram(world.now, world.server_addr, &mut datagram);
        }
        world.now += Duration::from_millis(5);
    }
    let slot = slot.expect("client 4 connected on the server");
    assert_ne!(
        slot.get(),
        0,
        "a slot other than the one a default would name"
    );
    // The server ends it at once; the keep-alive that completes its
    // handshake and the goodbyes reach it together.
    world
        .server
        .disconnect(world.now, slot, DisconnectReason::Kicked);
    for _ in 0..20 {
        world.server_sends();
        while world.server.poll_event().is_some() {}
        world.now += Duration::from_millis(10);
    }
    let client = &mut world.clients[3].0;
    for mut datagram in std::mem::take(&mut world.held) {
        client.handle_datagram(world.now, world.server_addr, &mut datagram);
    }
    let mut events = Vec::new();
    while let Some(event) = client.poll_event() {
        events.push(format!("{event:?}"));
    }
    assert_eq!(
        events.first().map(String::as_str),
        Some(format!("Connected {{ client_index: {} }}", slot.get()).as_str()),
        "{events:?}"
    );
}

/// `disconnect` says whether it began the client's disconnect: a second
/// one (a flood found twice, once by the endpoint's own bound) does not,
/// so that it is counted once.
#[test]
fn a_disconnect_begins_once() {
    let mut world = World::new(1);
    let connected = world.connect_all();
    let (_, slot) = connected[0];
    let now = world.now;
    assert!(
        world
            .server
            .disconnect(now, slot, DisconnectReason::Flooding)
    );
    assert!(
        !world
            .server
            .disconnect(now, slot, DisconnectReason::Flooding)
    );
    assert!(
        !world
            .server
            .disconnect(now, ClientIndex::from_slot(9), DisconnectReason::Kicked)
    );
}

/// The receive bound of the hog tests: eight lines.
const HOG_BOUND: usize = 8 * LINE;

/// Two clients (tokens timing out after `timeouts` seconds) of a server
/// whose receive memory all clients together may hold is
/// [`HOG_BOUND`]; client 0, the hog, holds more than half of it: its
/// first chat line is lost, and the lines after it wait for it, until one
/// more would take the total over.
fn world_with_a_hog(timeouts: &[i32; 2]) -> World {
    let server = game_server_with(SERVER_ADDR, |config| {
        config.netcode.max_clients = 2;
        config.max_total_receive_buffer = HOG_BOUND;
    });
    let mut world = World::with_server(server, timeouts);
    let slots = world.connect_all();
    assert_eq!(slots.len(), 2, "the clients did not connect: {slots:?}");
    world.say(0, 10, true);
    while world.server.total_receive_buffered() + 2 * LINE < HOG_BOUND {
        world.say(0, LINE, false);
    }
    let hog_holds = world.server.total_receive_buffered();
    assert!(hog_holds > HOG_BOUND / 2, "the hog holds {hog_holds} bytes");
    world
}

/// A client that fills the receive memory of all clients together (a
/// reliable channel's out-of-order messages behind one never delivered)
/// is the one cut off when an honest client's datagram takes the total
/// over the bound: the honest client holds less than its even share and
/// is served on.
#[test]
fn the_client_holding_the_receive_memory_is_cut_off_not_the_one_crossing_the_bound() {
    let mut world = world_with_a_hog(&[60, 60]);
    // The honest client's first line is lost too, and its second, within
    // its share (half the bound), takes the total over.
    world.say(1, 10, true);
    world.say(1, 2 * LINE + LINE / 2, false);
    let mut ended = Vec::new();
    for _ in 0..5 {
        ended.extend(world.exchange());
    }
    assert_eq!(ended, [(1, DisconnectReason::Flooding)]);
    assert_eq!(world.server.stats().flooding_disconnects, 1);
    assert!(world.clients[1].0.is_connected());
    assert!(
        world.server.total_receive_buffered() < HOG_BOUND / 2,
        "{} bytes still counted",
        world.server.total_receive_buffered()
    );
}

/// A client that held most of the receive memory of all clients together
/// and then left through the secure layer (its token's timeout, here)
/// stops counting at once. Before, its memory counted until its slot was
/// freed after the next transmits, and an honest client whose datagram
/// took the total over the bound meanwhile was cut off as Flooding: the
/// one holding the memory, ended, could no longer be the one cut.
#[test]
fn a_client_the_secure_layer_ends_stops_counting_what_it_held() {
    let mut world = world_with_a_hog(&[2, 60]);
    // The hog falls silent past its token's 2 s timeout; the secure layer
    // ends it at the server's next timer, before any transmit.
    world.now += Duration::from_millis(2_500);
    world.server.handle_timeout(world.now);
    assert_eq!(world.server.total_receive_buffered(), 0);
    // The honest client's line that would have crossed the bound.
    world.say(1, 10, true);
    world.say(1, 2 * LINE + LINE / 2, false);
    let mut ended = Vec::new();
    for _ in 0..5 {
        ended.extend(world.exchange());
    }
    assert_eq!(ended, [(1, DisconnectReason::Timeout)]);
    assert_eq!(world.server.stats().flooding_disconnects, 0);
    assert!(world.clients[1].0.is_connected());
}

/// A connection that a transmit ends frees its receive memory from the
/// endpoint's total at once, not when its slot is freed: until then every
/// datagram was checked against a total that still counted it, and an
/// honest client could be cut off as Flooding for memory nobody held.
/// The transmit that ends it: with the sent history full (1,024 packets
/// in flight, and data waiting for a slot), acks owed still leave, bare;
/// past twice the history in flight, one counts the oldest packet lost,
/// and that packet's reliable line is past the reliable timeout.
#[test]
fn a_connection_ended_by_a_transmit_stops_counting_what_it_held() {
    let server = game_server_with(SERVER_ADDR, |config| {
        // Nothing is judged lost by the loss timer within the test, and
        // half a message is held as long.
        config.transport.min_rto = Duration::from_secs(10);
        config.transport.initial_rto = Duration::from_secs(10);
        config.transport.max_rto = Duration::from_secs(10);
        config.transport.reliable_timeout = Duration::from_secs(1);
        config.transport.unreliable_fragment_timeout = Duration::from_secs(10);
    });
    let mut world = World::with_server(server, &[60]);
    let slots = world.connect_all();
    let [(1, client)] = slots[..] else {
        panic!("the client did not connect: {slots:?}");
    };
    // Half of a long unreliable message reaches the server, which holds
    // it for the other half (never resent).
    let from = world.clients[0].1;
    world.clients[0]
        .0
        .send(channels::EVENTS, Bytes::from(vec![1; 3_000]))
        .unwrap();
    let mut datagrams = world.client_datagrams(0);
    assert!(datagrams.len() > 1, "the message goes in fragments");
    (world.server).handle_datagram(world.now, world.unix, from, &mut datagrams[1]);
    assert!(world.server.total_receive_buffered() > 0);
    // The client falls silent; the server sends a line, then a packet
    // every 2 ms, its timers and transmits run as net-io runs them, until
    // its history is full: then nothing more leaves.
    world.mute = vec![0];
    world.deaf = vec![0];
    let line = Bytes::from_static(b"never acknowledged");
    world
        .server
        .send(world.now, client, channels::CHAT, line)
        .unwrap();
    let movement = Bytes::from_static(b"move");
    let sent = |world: &World| world.server.connection_stats(client).unwrap().packets_sent;
    let mut last = sent(&world);
    loop {
        (world.server)
            .send(world.now, client, channels::MOVEMENT, movement.clone())
            .unwrap();
        world.server_sends();
        world.now += Duration::from_millis(2);
        let now_sent = sent(&world);
        if now_sent == last {
            break;
        }
        last = now_sent;
        assert!(last < 1_100, "the history never filled");
    }
    assert!(last >= 1_024, "full after {last} packets");
    // The client, hearing the server again, asks for acks, two packets at
    // a time: each ack leaves at once, bare, until one ends the
    // connection.
    world.deaf.clear();
    let full = last;
    let mut rounds = 0;
    while world.server.total_receive_buffered() > 0 {
        for _ in 0..2 {
            (world.clients[0].0)
                .send(channels::MOVEMENT, movement.clone())
                .unwrap();
            for mut datagram in world.client_datagrams(0) {
                (world.server).handle_datagram(world.now, world.unix, from, &mut datagram);
            }
        }
        world.server_sends();
        world.now += Duration::from_millis(2);
        if let Some(stats) = world.server.connection_stats(client) {
            last = stats.packets_sent;
        }
        rounds += 1;
        assert!(
            rounds <= 1_500,
            "still connected after {} acks",
            last - full
        );
    }
    assert!(last - full >= 1_024, "ended after {} acks", last - full);
    assert_eq!(world.disconnects(), [(1, DisconnectReason::Timeout)]);
}

/// A broadcast reaches only the clients the caller has sent a message
/// to: one whose `Connected` the game had not handled yet got another
/// player's broadcast ahead of the game's welcome to it.
#[test]
fn a_broadcast_reaches_a_client_only_after_the_callers_first_message_to_it() {
    use shared::endpoint::ClientEndpointEvent;
    let mut world = World::new(2);
    let slots = world.connect_all();
    let welcomed = slots[1].1;
    let now = world.now;
    world
        .server
        .broadcast(now, channels::EVENTS, &Bytes::from_static(b"before"), None);
    world
        .server
        .send(
            now,
            welcomed,
            channels::CONTROL,
            Bytes::from_static(b"welcome"),
        )
        .unwrap();
    world
        .server
        .broadcast(now, channels::EVENTS, &Bytes::from_static(b"after"), None);
    let mut received: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 2];
    while let Some(transmit) = world.server.poll_transmit(now, &mut world.buf) {
        let mut datagram = world.buf[..transmit.len].to_vec();
        let index = world
            .clients
            .iter()
            .position(|(_, addr)| *addr == transmit.destination)
            .unwrap();
        let client = &mut world.clients[index].0;
        client.handle_datagram(now, SERVER_ADDR, &mut datagram);
        while let Some(event) = client.poll_event() {
            if let ClientEndpointEvent::Message { payload, .. } = event {
                received[index].push(payload.to_vec());
            }
        }
    }
    assert_eq!(received[0], Vec::<Vec<u8>>::new(), "never sent a message");
    let mut got = received[1].clone();
    got.sort();
    assert_eq!(got, [b"after".to_vec(), b"welcome".to_vec()]);
}
