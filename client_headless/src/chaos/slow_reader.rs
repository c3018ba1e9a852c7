//! A slow reader: a connected session that reads everything, acknowledges
//! nothing, sends an empty transport packet every 100 ms (so it is never
//! idle) and asks for its inventory `rate` times a second, so the server
//! has reliable replies to queue for it. It reports the disconnect reason
//! the server gave (expected: `SendQueueFull`, or the reliable timeout).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shared::protocol::inventory::{InventoryOp, InventoryRequest};
use shared::protocol::{self, channels};
use shared::transport::wire::MessageHeader;

use super::session::{Session, token};
use super::{ChaosPlan, Pacer, Summary};

pub(super) fn run(plan: &ChaosPlan) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let bind = match plan.server {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => SocketAddr::from(([127, 0, 51, 1], 0)),
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => "[::]:0".parse().map_err(|e| format!("{e}"))?,
    };
    let mut reader = Session::connect(
        bind,
        &token(plan.server, plan.first_account, 30)?,
        Duration::from_secs(5),
        &mut summary,
    )?;
    let connected = Instant::now();
    let mut pacer = Pacer::new(plan.rate, plan.duration);
    let mut next_keepalive = Instant::now();
    let mut requests: u64 = 0;
    while !pacer.finished() && reader.end_reason().is_none() {
        let now = Instant::now();
        reader.read(now, &mut summary);
        if reader.end_reason().is_some() {
            break;
        }
        for _ in 0..pacer.due() {
            let request = InventoryRequest {
                request_id: requests + 1,
                op: InventoryOp::List,
            };
            let bytes = protocol::encode(&request).map_err(|e| format!("{e:?}"))?;
            let header = MessageHeader {
                channel: channels::INVENTORY.0,
                id: Some(requests as u16),
                fragment: None,
            };
            // A request the socket refused is asked again under its id: a
            // reliable id skipped would stall the ordered channel, and the
            // server would end the session for the tool's own gap.
            if reader.send_messages(&[(header, &bytes)], &mut summary)? {
                requests += 1;
            }
        }
        if now >= next_keepalive {
            next_keepalive = now + Duration::from_millis(100);
            reader.send_messages(&[], &mut summary)?;
        }
        pacer.pause();
    }
    summary.add("inventory_requests", requests);
    match reader.end_reason() {
        Some(reason) => {
            summary.add("disconnect_reason", reason);
            summary.add(
                "disconnected_after_s",
                format!("{:.2}", connected.elapsed().as_secs_f64()),
            );
        }
        None => summary.add("disconnect_reason", "none"),
    }
    // Its slot freed at once, not at the server's timeout.
    reader.close(&mut summary);
    summary.add("unsent", pacer.unsent());
    Ok(summary)
}
