//! Slot holding: open up to `rate` sessions per second for `duration`, each
//! completing the handshake and then going silent (no keep-alives), and
//! report how many slots were held at once and how many attempts the
//! server refused as full. A silent session keeps its slot until the
//! server times it out (the transport's 10 s idle timeout); a later
//! attempt may then take the slot again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shared::netcode::ClientState;

use super::session::{Session, token};
use super::{ChaosPlan, GRACE, Pacer, Summary};

/// At most this many sessions per run, whatever the rate.
const MAX_SESSIONS: u64 = super::MAX_ACCOUNTS;

pub(super) fn run(plan: &ChaosPlan) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut pending: Vec<(Session, Instant)> = Vec::new();
    let mut held: Vec<Session> = Vec::new();
    let mut peak_held = 0;
    let (mut denied, mut failed, mut attempts) = (0u64, 0u64, 0u64);
    let mut pacer = Pacer::new(plan.rate, plan.duration);
    let end = Instant::now() + plan.duration + GRACE;
    // Attempts the pacer allowed past MAX_SESSIONS: not made.
    let mut capped = 0u64;
    let mut socket_failures = 0u64;
    let mut socket_error: Option<String> = None;
    while Instant::now() < end {
        let due = pacer.due();
        for i in 0..due {
            if attempts >= MAX_SESSIONS {
                capped += due - i;
                break;
            }
            // Spread the sources over 127.0.40-43.x so per-address handshake
            // limits do not decide the result (a remote server: one address).
            let a = 40 + (attempts / 250) as u8 % 4;
            let b = (attempts % 250) as u8 + 1;
            let bind = source_address(plan.server, a, b)?;
            attempts += 1;
            // Out of descriptors (held sessions keep theirs ~10 s): this
            // attempt fails, the attack goes on and says so.
            let socket = match std::net::UdpSocket::bind(bind)
                .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            {
                Ok(socket) => socket,
                Err(error) => {
                    socket_failures += 1;
                    socket_error.get_or_insert_with(|| format!("{bind}: {error}"));
                    continue;
                }
            };
            let token = token(plan.server, plan.first_account + attempts - 1, 30)?;
            pending.push((Session::start(socket, &token)?, Instant::now()));
        }
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            let (session, began) = &mut pending[i];
            session.pump(now, &mut summary);
            let state = session.state();
            if state == ClientState::Connected {
                held.push(pending.swap_remove(i).0);
            } else if state == ClientState::ConnectionDenied {
                denied += 1;
                pending.swap_remove(i);
            } else if state.is_error() || now.duration_since(*began) > Duration::from_secs(5) {
                failed += 1;
                pending.swap_remove(i);
            } else {
                i += 1;
            }
        }
        peak_held = peak_held.max(held.len());
        // Held sessions stay silent: read (and count) only, until the
        // server ends them.
        for session in &mut held {
            session.read(now, &mut summary);
        }
        held.retain(|session| session.end_reason().is_none());
        if pacer.finished() && pending.is_empty() {
            break;
        }
        pacer.pause();
    }
    summary.add("connect_attempts", attempts);
    summary.add("slots_held", peak_held);
    summary.add("slots_held_at_end", held.len());
    summary.add("server_full_denials", denied);
    summary.add("other_failures", failed + pending.len() as u64);
    summary.add("socket_failures", socket_failures);
    if let Some(error) = socket_error {
        summary.add("socket_error", error);
    }
    summary.add("unsent", pacer.unsent() + capped);
    // The slots held are freed as the attack ends, not at the server's
    // timeout: the next run, or a player, finds them free.
    for session in held.iter_mut().chain(pending.iter_mut().map(|(s, _)| s)) {
        session.close(&mut summary);
    }
    Ok(summary)
}

fn source_address(server: SocketAddr, a: u8, b: u8) -> Result<SocketAddr, String> {
    Ok(match server {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => SocketAddr::from(([127, 0, a, b], 0)),
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => "[::]:0".parse().map_err(|e| format!("{e}"))?,
    })
}
