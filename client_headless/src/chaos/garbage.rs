//! Garbage: random bytes of 0–1,500 bytes, the parsers' edge sizes and
//! connection requests with 1–8 bits flipped, from 8 source sockets; and
//! sealed payload packets with 1–8 bits flipped, from the address of the
//! connected session that sealed them (from anywhere else the server
//! drops them unread, as from no client). A healthy server answers none.

use std::time::{Duration, Instant};

use shared::netcode::{ClientState, MAX_PACKET_BYTES};

use super::generators::{MAX_GARBAGE_BYTES, garbage_datagram};
use super::session::{Session, token, token_lasting};
use super::{ChaosPlan, GRACE, Pacer, Rng, Summary, drain, send_due, source_sockets};

/// One garbage datagram in this many is a flipped sealed packet, when the
/// template session connected.
const SEALED_ONE_IN: u64 = 5;

/// How often the sealed templates are sealed again: the session's own
/// packets (its acknowledgements) move its sequence on, and a template
/// 256 packets behind is dropped as a replay, before decryption.
const RESEAL_EVERY: Duration = Duration::from_secs(1);

pub(super) fn run(plan: &ChaosPlan) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut rng = Rng::new(plan.seed);
    let Templates {
        requests,
        mut session,
        mut sealed,
    } = capture_valid_packets(plan, &mut summary)?;
    let mut sealed_at = Instant::now();
    let sockets = source_sockets(plan.server, 20, 8)?;
    // What the garbage sockets get back is what counts.
    let mut garbage = Summary::default();
    let mut sealed_sent = 0u64;
    let mut header_flipped = 0u64;
    let mut pacer = Pacer::new(plan.rate, plan.duration);
    let mut packet = [0u8; MAX_GARBAGE_BYTES];
    while !pacer.finished() {
        send_due(&mut pacer, &mut garbage, || {
            if let Some(session) = &session
                && !sealed.is_empty()
                && rng.below(SEALED_ONE_IN) == 0
            {
                let template = &sealed[rng.below(sealed.len() as u64) as usize];
                let flipped = &mut packet[..template.len()];
                flipped.copy_from_slice(template);
                rng.flip_bits(flipped);
                sealed_sent += 1;
                // The prefix byte and the sequence bytes it announces: a
                // flip there can make the packet read as a replay, one
                // past them cannot (a template is fresh, never sent whole).
                let header = (1 + usize::from(template[0] >> 4)).min(template.len());
                if flipped[..header] != template[..header] {
                    header_flipped += 1;
                }
                return session.send_raw(flipped).then_some(flipped.len());
            }
            let len = garbage_datagram(&mut rng, &requests, &mut packet);
            let socket = &sockets[rng.below(sockets.len() as u64) as usize];
            socket.send_to(&packet[..len], plan.server).ok()
        });
        for socket in &sockets {
            drain(socket, &mut garbage);
        }
        if let Some(live) = &mut session {
            live.keep_up(Instant::now(), &mut summary)?;
            if sealed_at.elapsed() >= RESEAL_EVERY {
                sealed = seal_templates(live);
                sealed_at = Instant::now();
            }
        }
        pacer.pause();
    }
    let end = Instant::now() + GRACE;
    while Instant::now() < end {
        for socket in &sockets {
            drain(socket, &mut garbage);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(session) = &mut session {
        let end = session.end_reason().map_or_else(
            || "connected to the end".to_owned(),
            |r| format!("ended: {r}"),
        );
        summary.add("template_session", end);
        session.close(&mut summary);
    }
    summary.add("garbage_sent_datagrams", garbage.sent_datagrams);
    summary.add("garbage_sent_bytes", garbage.sent_bytes);
    summary.add("garbage_sealed_flipped", sealed_sent);
    summary.add("garbage_sealed_header_flipped", header_flipped);
    summary.add("garbage_answers_datagrams", garbage.received_datagrams);
    summary.add("garbage_answers_bytes", garbage.received_bytes);
    summary.add("garbage_send_refused", garbage.send_refused);
    summary.sent_datagrams += garbage.sent_datagrams;
    summary.sent_bytes += garbage.sent_bytes;
    summary.received_datagrams += garbage.received_datagrams;
    summary.received_bytes += garbage.received_bytes;
    summary.send_refused += garbage.send_refused;
    summary.add("unsent", pacer.unsent());
    Ok(summary)
}

/// Valid packets to flip bits of.
struct Templates {
    /// A connection request, for a token that never connects.
    requests: Vec<Vec<u8>>,
    /// The session that sealed `sealed`, if the server let it in.
    session: Option<Session>,
    /// Sealed payload packets of `session`, never sent whole.
    sealed: Vec<Vec<u8>>,
}

/// A connection request (for a token that never connects and outlives the
/// run: an expired one is dropped before anything is decrypted) and, if
/// the server lets a session in, sealed payload packets of that session.
fn capture_valid_packets(plan: &ChaosPlan, summary: &mut Summary) -> Result<Templates, String> {
    let mut requests = Vec::new();
    let bind = super::source_sockets(plan.server, 21, 1)?
        .pop()
        .ok_or("no socket")?;
    let life = plan.duration + Duration::from_secs(60);
    let mut requester = Session::start(
        bind,
        &token_lasting(plan.server, plan.first_account, 10, life)?,
    )?;
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    if let Some(request) = requester.first_request(&mut buf) {
        requests.push(request);
    }
    let local = super::source_sockets(plan.server, 21, 2)?
        .pop()
        .and_then(|s| s.local_addr().ok())
        .ok_or("no socket")?;
    let bind = std::net::SocketAddr::new(local.ip(), 0);
    let mut sealed = Vec::new();
    let session = match Session::connect(
        bind,
        &token(plan.server, plan.first_account + 1, 10)?,
        Duration::from_secs(5),
        summary,
    ) {
        Ok(session) if session.state() == ClientState::Connected => {
            let mut session = session.acknowledging();
            sealed = seal_templates(&mut session);
            Some(session)
        }
        Ok(_) => None,
        Err(e) => {
            summary.add("template_session", format!("not connected ({e})"));
            None
        }
    };
    Ok(Templates {
        requests,
        session,
        sealed,
    })
}

/// Sealed payload packets of `session` of several sizes, never sent whole.
fn seal_templates(session: &mut Session) -> Vec<Vec<u8>> {
    [1usize, 15, 100, 1_100, 1_200]
        .iter()
        .filter_map(|&len| session.seal_copy(&vec![0x5A; len]))
        .collect()
}
