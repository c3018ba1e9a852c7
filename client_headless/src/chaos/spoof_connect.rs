//! A spoofed connect flood: replays of sniffed connection requests, requests
//! whose private token is random, and bit-flipped requests, from 250 source
//! addresses (one for a remote server); halfway through, a legitimate probe
//! client connects and the time it takes is reported.

use std::time::{Duration, Instant};

use shared::netcode::{ClientState, MAX_PACKET_BYTES};

use super::generators::spoof_request;
use super::session::{Session, token, token_lasting};
use super::{ChaosPlan, GRACE, Pacer, Rng, Summary, drain, send_due, source_sockets};

/// How long the probe may take to connect.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

pub(super) fn run(plan: &ChaosPlan) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut rng = Rng::new(plan.seed);
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let mut templates = Vec::new();
    for i in 0..4 {
        let socket = source_sockets(plan.server, 31, 1)?
            .pop()
            .ok_or("no socket")?;
        // Replays of a request whose token expired are dropped before
        // anything is decrypted: these must outlive the flood.
        let template_token = token_lasting(
            plan.server,
            plan.first_account + i,
            10,
            plan.duration + Duration::from_secs(60),
        )?;
        let mut sniffed = Session::start(socket, &template_token)?;
        templates.extend(sniffed.first_request(&mut buf));
    }
    if templates.is_empty() {
        return Err("could not build a connection request".into());
    }
    let sockets = source_sockets(plan.server, 30, 250)?;
    let probe_socket = source_sockets(plan.server, 32, 1)?
        .pop()
        .ok_or("no socket")?;
    let mut probe: Option<(Session, Instant)> = None;
    let mut probe_result: Option<Result<Duration, String>> = None;
    let mut probe_summary = Summary::default();
    let mut probe_socket = Some(probe_socket);

    let mut pacer = Pacer::new(plan.rate, plan.duration);
    let started = Instant::now();
    // The probe starts by half the duration and gets PROBE_LIMIT: the run
    // ends after it has an answer, however short the duration.
    let hard_end = started + plan.duration + GRACE + PROBE_LIMIT;
    while Instant::now() < hard_end {
        let sending = !pacer.finished();
        if sending {
            send_due(&mut pacer, &mut summary, || {
                let mut packet = templates[rng.below(templates.len() as u64) as usize].clone();
                spoof_request(&mut rng, &mut packet);
                let socket = &sockets[rng.below(sockets.len() as u64) as usize];
                socket.send_to(&packet, plan.server).ok()
            });
        }
        for socket in &sockets {
            drain(socket, &mut summary);
        }
        // The probe starts halfway through the flood.
        if probe.is_none()
            && probe_result.is_none()
            && started.elapsed() >= plan.duration / 2
            && let Some(socket) = probe_socket.take()
        {
            // Minted now: one minted before a long flood would have expired.
            let probe_token = token(plan.server, plan.first_account + 100, 10)?;
            probe = Some((Session::start(socket, &probe_token)?, Instant::now()));
        }
        if let Some((session, began)) = probe.as_mut() {
            session.pump(Instant::now(), &mut probe_summary);
            if session.state() == ClientState::Connected {
                probe_result = Some(Ok(began.elapsed()));
            } else if session.state().is_error() {
                probe_result = Some(Err(format!("{:?}", session.state())));
            } else if began.elapsed() > PROBE_LIMIT {
                probe_result = Some(Err(format!("no connection within {PROBE_LIMIT:?}")));
            }
            if probe_result.is_some() {
                // Its slot freed at once, not at the server's timeout.
                session.close(&mut probe_summary);
                probe = None;
            }
        }
        if !sending && probe.is_none() && probe_result.is_some() {
            break;
        }
        pacer.pause();
    }
    // Answers of a server the flood kept behind still count.
    let end = Instant::now() + GRACE;
    while Instant::now() < end {
        for socket in &sockets {
            drain(socket, &mut summary);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    summary.add("flood_sources", sockets.len());
    match probe_result {
        Some(Ok(after)) => {
            summary.add("probe_connected", "yes");
            summary.add(
                "probe_connect_ms",
                format!("{:.1}", after.as_secs_f64() * 1e3),
            );
        }
        Some(Err(why)) => {
            summary.add("probe_connected", "no");
            summary.add("probe_error", why);
        }
        None => summary.add("probe_connected", "not started"),
    }
    summary.add("unsent", pacer.unsent());
    Ok(summary)
}
