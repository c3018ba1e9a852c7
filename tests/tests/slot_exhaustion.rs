//! Slot exhaustion: clients take every slot of a small server and go
//! silent. A full server refuses newcomers with "server full" (an answer,
//! not silence), still does at half the timeout, and the silent clients'
//! slots are freed once the timeout has passed (probed for up to 5 s more),
//! whichever of the two timeouts is shorter: the connect token's
//! `timeout_seconds` (the secure layer) or the transport's idle timeout
//! (10 s in `shared::protocol::channels::transport_config`).

use std::time::{Duration, Instant};

use e2e::{HonestClient, ServerOptions, ServerProcess};
use shared::transport::DisconnectReason;

const MAX_CLIENTS: u32 = 8;
const TRANSPORT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the timeout newcomers keep probing for a freed slot.
const FREEING_SLACK: Duration = Duration::from_secs(5);

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
    // Connected and welcomed, and then a while longer, so that the
    // welcome's acknowledgement leaves (it may wait `max_ack_delay`): with
    // no reliable message unacknowledged, its timeout (also 10 s) cannot be
    // what frees the slots, only the timeout under test.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut welcomed_at = None;
    while welcomed_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_millis(300)) {
        assert!(
            Instant::now() < deadline,
            "the slot holders were not all connected and welcomed"
        );
        for client in &mut silent {
            client.pump(Instant::now());
        }
        if welcomed_at.is_none() && silent.iter().all(|c| c.is_connected() && c.seen.welcomed) {
            welcomed_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // From here on they neither read nor send.
    let silent_since = Instant::now();

    // A full server says so: an answer, while the slots are surely held.
    // (Each probe gives up before the next mark, so that none of them can
    // be let in by slots freed on time.)
    let refused = try_connect(server.game, 100, expected / 2);
    let Err(Some(DisconnectReason::ServerFull)) = refused else {
        panic!("a client of a full server got {refused:?}, not ServerFull");
    };
    let refusal_time = silent_since.elapsed();

    // Slots are still held at half the timeout...
    std::thread::sleep((expected / 2).saturating_sub(silent_since.elapsed()));
    let early = try_connect(server.game, 101, expected / 4);
    let Err(Some(DisconnectReason::ServerFull)) = early else {
        panic!("at half the timeout a newcomer got {early:?}, not ServerFull");
    };

    // ... and freed once it has passed: newcomers probe until one gets in,
    // for up to `FREEING_SLACK` after it.
    let mut freed_after = None;
    let mut probe = 1_000;
    while freed_after.is_none() && silent_since.elapsed() < expected + FREEING_SLACK {
        probe += 1;
        if try_connect(server.game, probe, Duration::from_secs(1)).is_ok() {
            freed_after = Some(silent_since.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let freed_after = freed_after.unwrap_or_else(|| {
        panic!("no slot was freed within {expected:?} + {FREEING_SLACK:?} of the silence")
    });
    eprintln!(
        "token timeout {token_timeout} s: ServerFull after {refusal_time:?}; \
         first slot free {freed_after:?} after the clients went silent"
    );
    // Not early either: the silent clients' last packets left at most a
    // keepalive interval before they fell silent, and timers never fire
    // early, however loaded the host.
    assert!(
        freed_after + Duration::from_millis(500) >= expected,
        "a slot was freed {freed_after:?} after the silence, before {expected:?}"
    );
    // Every slot is free: one newcomer got in above, seven more fit. The
    // silent clients' last packets left at slightly different times and
    // the server looks for timed-out clients every few milliseconds, so a
    // newcomer refused as full tries again, until the same bound: the
    // timeout plus `FREEING_SLACK` after the silence (a "full" after that
    // fails the test).
    let all_free_by = silent_since + expected + FREEING_SLACK;
    let mut refusals = 0;
    for id in 300..300 + u64::from(MAX_CLIENTS) - 1 {
        let result = loop {
            let result = try_connect(server.game, id, Duration::from_secs(2));
            if result == Err(Some(DisconnectReason::ServerFull)) && Instant::now() < all_free_by {
                refusals += 1;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            break result;
        };
        assert!(
            result.is_ok(),
            "newcomer {id}: {result:?} ({:?} after the silence)",
            silent_since.elapsed()
        );
    }
    eprintln!(
        "all {MAX_CLIENTS} slots taken again {:?} after the silence ({refusals} ServerFull \
         answers on the way)",
        silent_since.elapsed()
    );
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
