//! Garbage: random bytes of 0–1,500 bytes, the parsers' edge sizes, and
//! valid packets (a connection request, sealed payload packets) with 1–8
//! bits flipped, from 8 source sockets. A healthy server answers none.

use std::time::{Duration, Instant};

use shared::netcode::{ClientState, MAX_PACKET_BYTES};

use super::generators::{MAX_GARBAGE_BYTES, garbage_datagram};
use super::session::{Session, token};
use super::{ChaosPlan, Pacer, Rng, Summary, drain, send_due, source_sockets};

pub(super) fn run(plan: &ChaosPlan) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut rng = Rng::new(plan.seed);
    let templates = capture_valid_packets(plan, &mut summary)?;
    let sockets = source_sockets(plan.server, 20, 8)?;
    // What the garbage sockets get back is what counts.
    let mut garbage = Summary::default();
    let mut pacer = Pacer::new(plan.rate, plan.duration);
    let mut packet = [0u8; MAX_GARBAGE_BYTES];
    while !pacer.finished() {
        send_due(&mut pacer, &mut garbage, || {
            let len = garbage_datagram(&mut rng, &templates, &mut packet);
            let socket = &sockets[rng.below(sockets.len() as u64) as usize];
            socket.send_to(&packet[..len], plan.server).ok()
        });
        for socket in &sockets {
            drain(socket, &mut garbage);
        }
        pacer.pause();
    }
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        for socket in &sockets {
            drain(socket, &mut garbage);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    summary.add("garbage_sent_datagrams", garbage.sent_datagrams);
    summary.add("garbage_sent_bytes", garbage.sent_bytes);
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

/// A connection request (for a token that never connects) and, if the
/// server lets a session in, sealed payload packets of that session.
fn capture_valid_packets(plan: &ChaosPlan, summary: &mut Summary) -> Result<Vec<Vec<u8>>, String> {
    let mut packets = Vec::new();
    let bind = super::source_sockets(plan.server, 21, 1)?
        .pop()
        .ok_or("no socket")?;
    let mut requester = Session::start(bind, &token(plan.server, plan.first_account, 10)?)?;
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    if let Some(request) = requester.first_request(&mut buf) {
        packets.push(request);
    }
    let local = super::source_sockets(plan.server, 21, 2)?
        .pop()
        .and_then(|s| s.local_addr().ok())
        .ok_or("no socket")?;
    let bind = std::net::SocketAddr::new(local.ip(), 0);
    match Session::connect(
        bind,
        &token(plan.server, plan.first_account + 1, 10)?,
        Duration::from_secs(3),
        summary,
    ) {
        Ok(mut session) if session.state() == ClientState::Connected => {
            for len in [1usize, 15, 100, 1_100, 1_200] {
                packets.extend(session.seal_copy(&vec![0x5A; len]));
            }
        }
        Ok(_) => {}
        Err(e) => summary.add("template_session", format!("not connected ({e})")),
    }
    Ok(packets)
}
