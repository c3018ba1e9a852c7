//! The history of sent packets, kept until each is acked or judged lost.

use super::clock::Stamp;
use super::send::UnitSpan;
use super::slots::IdSlots;

/// Slots a new connection's history starts with: a game's connection has a
/// few packets in flight (a tick's worth per round trip). It doubles while
/// more are in flight, up to [`SENT_HISTORY`].
pub(crate) const INITIAL_SENT_SLOTS: usize = 32;

/// Sent packets remembered for acknowledgement at most; an older packet
/// still unacknowledged when its slot is reused counts as lost.
pub(crate) const SENT_HISTORY: usize = 1024;

#[derive(Default)]
pub(crate) struct SentPacket {
    pub(crate) sequence: u16,
    pub(crate) in_flight: bool,
    /// Judged lost (its deadline passed, or packets sent after it were
    /// acked) and not acked since: an ack naming it after all is a late
    /// one, still a sample of the round trip.
    pub(crate) lost: bool,
    pub(crate) sent_at: Stamp,
    pub(crate) attempt: u8,
    pub(crate) units: UnitSpan,
}

/// The sent packets by sequence number.
pub(crate) type SentRing = IdSlots<SentPacket>;
