//! Fragment bombs: one connected session sends fragments of 65-fragment
//! messages that never complete, on all six channels (reliable ids across
//! the window, random unreliable ids), then a fragment claiming 65,535
//! fragments; it reports the disconnect reason the server gave.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shared::protocol::channels;

use super::generators::{FRAGMENT_BYTES, bomb_fragment, over_claim};
use super::session::{Session, token};
use super::{ChaosPlan, Pacer, Rng, Summary};

/// How often the over-claim is sent again while unanswered.
const CLAIM_AGAIN: Duration = Duration::from_millis(150);
/// Longest wait for the server's answer to the over-claim: a server the
/// bomb kept busy answers late.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

pub(super) fn run(plan: &ChaosPlan) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut rng = Rng::new(plan.seed);
    let bind = match plan.server {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => SocketAddr::from(([127, 0, 50, 1], 0)),
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => "[::]:0".parse().map_err(|e| format!("{e}"))?,
    };
    // It acknowledges what the server sends: unacknowledged, the server's
    // reliable welcome ends the session after its 10 s reliable timeout,
    // and a longer bomb would stop there, the over-claim never sent.
    let mut bomber = Session::connect(
        bind,
        &token(plan.server, plan.first_account, 10)?,
        Duration::from_secs(5),
        &mut summary,
    )?
    .acknowledging();
    let payload = [0xAB; FRAGMENT_BYTES];
    let mut pacer = Pacer::new(plan.rate, plan.duration);
    let mut n: u64 = 0;
    while !pacer.finished() && bomber.end_reason().is_none() {
        for _ in 0..pacer.due() {
            let header = bomb_fragment(&mut rng, n);
            if bomber.send_messages(&[(header, &payload)], &mut summary)? {
                n += 1;
            }
        }
        bomber.keep_up(Instant::now(), &mut summary)?;
        pacer.pause();
    }
    summary.add("fragments_sent", n);
    let bombing_reason = bomber.end_reason();
    // The over-claim: a fragment of a 64 MiB message, sent again every
    // `CLAIM_AGAIN` until the server answers (a datagram may be lost),
    // for at most `CLAIM_WAIT`.
    let claim = over_claim(channels::CHAT.0, 2_000);
    let began = Instant::now();
    if bombing_reason.is_none() {
        let mut claimed: Option<Instant> = None;
        while bomber.end_reason().is_none() && began.elapsed() < CLAIM_WAIT {
            if claimed.is_none_or(|at| at.elapsed() >= CLAIM_AGAIN) {
                bomber.send_messages(&[(claim, &payload)], &mut summary)?;
                claimed = Some(Instant::now());
            }
            bomber.read(Instant::now(), &mut summary);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let bombed_out = bombing_reason.is_some();
    summary.add(
        "disconnected_while_bombing",
        bombing_reason.unwrap_or_else(|| "no".to_owned()),
    );
    match bomber.end_reason() {
        Some(reason) => {
            summary.add("disconnect_reason", reason);
            if !bombed_out {
                summary.add(
                    "over_claim_answered_ms",
                    format!("{:.1}", began.elapsed().as_secs_f64() * 1e3),
                );
            }
        }
        None => summary.add("disconnect_reason", "none"),
    }
    // Its slot freed at once, not at the server's timeout.
    bomber.close(&mut summary);
    summary.add("unsent", pacer.unsent());
    Ok(summary)
}
