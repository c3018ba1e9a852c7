//! Slot exhaustion: clients take every slot of a small server and go
//! silent. A full server refuses newcomers with "server full" at once, and
//! the silent clients' slots are freed within the timeout plus a second,
//! whichever of the two timeouts is shorter: the connect token's
//! `timeout_seconds` (the secure layer) or the transport's idle timeout
//! (10 s in `shared::protocol::channels::transport_config`).

use std::time::{Duration, Instant};

use e2e::{HonestClient, ServerOptions, ServerProcess};
use shared::transport::DisconnectReason;

const MAX_CLIENTS: u32 = 8;
const TRANSPORT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Drives a fresh client until it connects (`Ok(elapsed)`) or ends (`Err(reason)`).
fn try_connect(
    server: std::net::SocketAddr,
    id: u64,
    limit: Duration,
) -> Result<Duration, Option<DisconnectReason>> {
    let began = Instant::now();
    let mut client = HonestClient::connect(server, id, 10);
    while began.elapsed() < limit {
        client.pump(Instant::now());
        if client.is_connected() {
            return Ok(began.elapsed());
        }
        if let Some(reason) = client.seen.ended {
            return Err(Some(reason));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(None)
}

/// Fills the server with silent clients whose tokens carry
/// `token_timeout`, checks the refusal, then measures when slots free up.
fn silent_clients_lose_their_slots(token_timeout: i32, expected: Duration) {
    let server = ServerProcess::start(&ServerOptions {
        max_clients: MAX_CLIENTS,
        ..ServerOptions::default()
    });
    let mut silent: Vec<HonestClient> = (1..=u64::from(MAX_CLIENTS))
        .map(|id| HonestClient::connect(server.game, id, token_timeout))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !silent.iter().all(HonestClient::is_connected) {
        assert!(
            Instant::now() < deadline,
            "the slot holders did not connect"
        );
        for client in &mut silent {
            client.pump(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // From here on they neither read nor send.
    let silent_since = Instant::now();

    // A full server says so promptly.
    let refused = try_connect(server.game, 100, Duration::from_secs(3));
    let Err(Some(DisconnectReason::ServerFull)) = refused else {
        panic!("a client of a full server got {refused:?}, not ServerFull");
    };
    let refusal_time = silent_since.elapsed();
    assert!(
        refusal_time < Duration::from_secs(1),
        "ServerFull took {refusal_time:?}"
    );

    // Slots are still held a second before the timeout...
    std::thread::sleep((expected - Duration::from_secs(1)).saturating_sub(silent_since.elapsed()));
    let early = try_connect(server.game, 101, Duration::from_secs(1));
    assert_eq!(
        early,
        Err(Some(DisconnectReason::ServerFull)),
        "slots were freed before the timeout"
    );

    // ... and free within timeout + 1 s: probe until a newcomer gets in.
    let mut freed_after = None;
    for probe in 0..100u64 {
        if try_connect(server.game, 200 + probe, Duration::from_secs(1)).is_ok() {
            freed_after = Some(silent_since.elapsed());
            break;
        }
        if silent_since.elapsed() > expected + Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let freed_after = freed_after.expect("no slot was ever freed");
    eprintln!(
        "token timeout {token_timeout} s: ServerFull after {refusal_time:?}; \
         first slot free {freed_after:?} after the clients went silent"
    );
    assert!(
        freed_after <= expected + Duration::from_secs(1),
        "slot freed after {freed_after:?}, expected within {expected:?} + 1 s"
    );
    // Every slot is free: one newcomer got in above, seven more fit.
    for id in 300..300 + u64::from(MAX_CLIENTS) - 1 {
        let result = try_connect(server.game, id, Duration::from_secs(2));
        assert!(result.is_ok(), "newcomer {id}: {result:?}");
    }
    drop(silent);
}

#[test]
fn silent_clients_are_dropped_after_the_token_timeout() {
    // 3 s: shorter than the transport's idle timeout, so the secure layer
    // decides.
    silent_clients_lose_their_slots(3, Duration::from_secs(3));
}

#[test]
fn silent_clients_are_dropped_after_the_transport_idle_timeout() {
    // 30 s: longer than the transport's idle timeout, so the transport decides.
    silent_clients_lose_their_slots(30, TRANSPORT_IDLE_TIMEOUT);
}
