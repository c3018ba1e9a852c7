//! The per-connection send budget: a token bucket whose rate adapts AIMD-style.
//!
//! The rate starts at `initial_send_rate` and doubles every round trip
//! (slow start) until the first congestion signal; after that it grows by
//! `rate / 16` per round trip without loss; either only in a round trip in
//! which the sender used its whole budget (a sender below its rate gives
//! no evidence that the path carries more) and is cut to 3/4
//! on a loss event or when the smoothed RTT climbs past twice the minimum
//! plus 50 ms (queues building). At most one cut per round trip. The rate
//! stays within `[min_send_rate, max_send_rate]`.
//!
//! A loss can prove spurious: the packet arrived, only late (the round
//! trip jumped, or packets behind it overtook it), and the peer's ack names
//! it after all. So a cut for loss keeps what it took (the rate before, and
//! whether slow start was on) and the packets judged lost from then on;
//! once acks have named every one of them, the cut is undone (RFC 4015's
//! Eifel response; Linux undoes its spurious reductions alike): the rate
//! goes back up to what it was (never down, never past the maximum). A cut
//! for loss while an earlier one may yet prove spurious joins it: the undo
//! restores the rate before the first, only once the losses of all of them
//! prove spurious. It is forgotten when one of those packets is lost for
//! good (the peer's acks move on past it without naming it), when they are
//! too far apart to be kept (32 sequences), or when the round trip climbs
//! (that cut is called for whatever the losses prove). Without it, a sender
//! below its budget (a game's movement and snapshots) would never grow the
//! rate back.
//!
//! The bucket holds at most 50 ms of budget (and never less than four
//! full datagrams), so a connection idle for a while cannot burst far past
//! its rate.

use std::time::Duration;

use super::clock::Stamp;
use super::seq::{seq_distance, seq_newer};

/// The budget's configuration (the transport's `min_send_rate`,
/// `max_send_rate` and `max_payload`), shared by every connection rather
/// than copied into each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateBounds {
    min: f64,
    max: f64,
    /// The bucket never holds less than four full datagrams.
    burst_floor: f64,
}

impl RateBounds {
    pub(crate) fn new(min: u32, max: u32, max_payload: usize) -> Self {
        Self {
            min: f64::from(min),
            max: f64::from(max),
            burst_floor: 4.0 * max_payload as f64,
        }
    }
}

/// The bucket and its rate (the bounds live in [`RateBounds`]).
#[derive(Debug, Clone)]
pub(crate) struct SendBudget {
    rate: f64,
    tokens: f64,
    /// [`Stamp::NEVER`] before the first refill, which accrues nothing
    /// (an `Option` would take 8 more bytes of the connection's hot state).
    last_refill: Stamp,
    slow_start: bool,
    epoch_start: Option<Stamp>,
    last_cut: Option<Stamp>,
    /// The budget ran out since the rate last grew: the sender wanted
    /// more than the rate. Only then does an acknowledgement grow it (a
    /// sender that never uses its budget gives no evidence that the path
    /// carries more; RFC 7661).
    limited: bool,
    /// The cuts for loss that may yet prove spurious; `None` when there
    /// are none, or when one of their losses proved genuine.
    undo: Option<Undo>,
}

/// What cuts for loss in a row took, and the packets judged lost since the
/// first that no ack has named yet. Twelve bytes, that the budget keeps
/// within the connection's hot state.
#[derive(Debug, Clone, Copy)]
struct Undo {
    /// The rate before the first cut, in bytes per second.
    rate: u32,
    /// Whether slow start was on before the first cut.
    slow_start: bool,
    /// Bit `i`: packet `base + i` was judged lost and no ack has named it
    /// since. Empty only between the cut and the report of its first loss.
    /// Losses more than 32 sequences apart are not held: the cuts stand.
    lost: u32,
    base: u16,
}

impl SendBudget {
    pub(crate) fn new(initial: u32, bounds: &RateBounds) -> Self {
        let rate = f64::from(initial);
        Self {
            rate,
            tokens: bounds.burst_floor.max(rate * 0.05),
            last_refill: Stamp::NEVER,
            slow_start: true,
            epoch_start: None,
            last_cut: None,
            limited: false,
            undo: None,
        }
    }

    fn capacity(&self, bounds: &RateBounds) -> f64 {
        (self.rate * 0.05).max(bounds.burst_floor)
    }

    fn refill(&mut self, now: Stamp, bounds: &RateBounds) {
        let dt = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity(bounds));
        self.last_refill = now;
    }

    /// Whether a datagram may be sent now.
    pub(crate) fn can_send(&mut self, now: Stamp, bounds: &RateBounds) -> bool {
        self.refill(now, bounds);
        let can = self.tokens > 0.0;
        self.limited |= !can;
        can
    }

    /// Charges a sent datagram (the bucket may go negative by one datagram).
    pub(crate) fn on_sent(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
        self.limited |= self.tokens <= 0.0;
    }

    /// When enough budget will have accrued to send again.
    pub(crate) fn ready_at(&self, now: Stamp) -> Stamp {
        if self.tokens > 0.0 {
            return now;
        }
        let wait = (-self.tokens + 1.0) / self.rate;
        now + Duration::from_secs_f64(wait)
    }

    /// Acknowledged data: grow once per round trip.
    pub(crate) fn on_ack(
        &mut self,
        now: Stamp,
        srtt: Duration,
        min_rtt: Option<Duration>,
        bounds: &RateBounds,
    ) {
        let round = srtt.max(Duration::from_millis(10));
        if let Some(min_rtt) = min_rtt
            && srtt > min_rtt * 2 + Duration::from_millis(50)
        {
            // Queues building: the cut is called for whatever the losses
            // prove.
            self.undo = None;
            self.cut(now, round, bounds);
            return;
        }
        let epoch = *self.epoch_start.get_or_insert(now);
        if now.saturating_duration_since(epoch) < round {
            return;
        }
        self.epoch_start = Some(now);
        if !std::mem::take(&mut self.limited) {
            return;
        }
        self.rate = if self.slow_start {
            self.rate * 2.0
        } else {
            self.rate + self.rate / 16.0
        }
        .min(bounds.max);
    }

    /// Packets were declared lost: called before
    /// [`on_packet_lost`](Self::on_packet_lost) reports each of them, so
    /// that a cut keeps them with what it took.
    pub(crate) fn on_loss(&mut self, now: Stamp, srtt: Duration, bounds: &RateBounds) {
        let (rate, slow_start) = (self.rate(), self.slow_start);
        if self.cut(now, srtt.max(Duration::from_millis(10)), bounds) {
            // A cut while an earlier one may yet prove spurious joins it.
            self.undo.get_or_insert(Undo {
                rate,
                slow_start,
                lost: 0,
                base: 0,
            });
        }
    }

    /// Packet `sequence` was judged lost: while cuts for loss may yet prove
    /// spurious, it is one of the losses that must.
    pub(crate) fn on_packet_lost(&mut self, sequence: u16) {
        let Some(undo) = &mut self.undo else {
            return;
        };
        if undo.lost == 0 {
            undo.base = sequence;
        }
        let ahead = sequence.wrapping_sub(undo.base);
        let behind = undo.base.wrapping_sub(sequence);
        if ahead < 32 {
            undo.lost |= 1 << ahead;
        } else if u32::from(behind) <= undo.lost.leading_zeros() {
            // Sent before the others (its deadline was backed off).
            undo.lost = undo.lost << behind | 1;
            undo.base = sequence;
        } else {
            // Too far apart to be held: the cuts stand.
            self.undo = None;
        }
    }

    /// An ack named `latest` and, for each bit `i` of `bits`,
    /// `latest - 1 - i`. Those of the packets judged lost since cuts for
    /// loss arrived after all; once every one has, the losses were
    /// spurious and the cuts are undone. One that the ack is more than 64
    /// past can no longer be named: lost for good, and the cuts stand.
    /// Without cuts to undo this is one branch; with them, one step for
    /// each packet not named yet (at most 32).
    pub(crate) fn on_ack_names(&mut self, latest: u16, bits: u64, bounds: &RateBounds) {
        let Some(mut undo) = self.undo.filter(|undo| undo.lost != 0) else {
            return;
        };
        let mut rest = undo.lost;
        while rest != 0 {
            let i = rest.trailing_zeros();
            rest &= rest - 1;
            let back = latest.wrapping_sub(undo.base.wrapping_add(i as u16));
            if back == 0 || (back <= 64 && bits & (1 << (back - 1)) != 0) {
                undo.lost &= !(1 << i);
            }
        }
        if undo.lost == 0 {
            self.rate = self.rate.max(f64::from(undo.rate)).min(bounds.max);
            self.slow_start = undo.slow_start;
            // Undone, the last cut does not hold off the next one.
            self.last_cut = None;
            self.undo = None;
            return;
        }
        // The peer's acks name the 64 packets before their latest at most.
        let oldest = undo.base.wrapping_add(undo.lost.trailing_zeros() as u16);
        let gone = seq_newer(latest, oldest) && seq_distance(latest, oldest) > 64;
        self.undo = (!gone).then_some(undo);
    }

    /// Cuts the rate, unless it was cut less than `round` ago; whether it did.
    fn cut(&mut self, now: Stamp, round: Duration, bounds: &RateBounds) -> bool {
        if let Some(last) = self.last_cut
            && now.saturating_duration_since(last) < round
        {
            return false;
        }
        self.last_cut = Some(now);
        self.slow_start = false;
        self.epoch_start = Some(now);
        self.rate = (self.rate * 0.75).max(bounds.min);
        true
    }

    /// Current rate in bytes per second.
    pub(crate) fn rate(&self) -> u32 {
        self.rate as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: RateBounds = RateBounds {
        min: 20_000.0,
        max: 1_000_000.0,
        burst_floor: 4_400.0,
    };

    #[test]
    fn loss_cuts_once_per_round_trip_and_respects_the_floor() {
        let t0 = Stamp::ZERO;
        let rtt = Duration::from_millis(100);
        let mut budget = SendBudget::new(100_000, &B);
        budget.on_loss(t0, rtt, &B);
        assert_eq!(budget.rate(), 75_000);
        budget.on_loss(t0 + Duration::from_millis(50), rtt, &B);
        assert_eq!(
            budget.rate(),
            75_000,
            "a second loss in the same round trip does not cut again"
        );
        for i in 1..40 {
            budget.on_loss(t0 + rtt * i * 2, rtt, &B);
        }
        assert_eq!(budget.rate(), 20_000);
    }

    #[test]
    fn recovers_after_loss() {
        let t0 = Stamp::ZERO;
        let rtt = Duration::from_millis(50);
        let mut budget = SendBudget::new(100_000, &B);
        budget.on_loss(t0, rtt, &B);
        let after_cut = budget.rate();
        for i in 1..=100 {
            let now = t0 + rtt * i;
            // A sender with more to send than its budget.
            while budget.can_send(now, &B) {
                budget.on_sent(1_000);
            }
            budget.on_ack(now, rtt, Some(rtt), &B);
        }
        assert!(
            budget.rate() > after_cut * 2,
            "rate {} did not recover",
            budget.rate()
        );
        assert!(budget.rate() <= 1_000_000);
    }

    #[test]
    fn a_sender_below_its_budget_does_not_grow_it() {
        let t0 = Stamp::ZERO;
        let rtt = Duration::from_millis(50);
        let mut budget = SendBudget::new(100_000, &B);
        for i in 1..=100 {
            let now = t0 + rtt * i;
            // A keepalive a round trip: far below 100 kB/s.
            assert!(budget.can_send(now, &B));
            budget.on_sent(40);
            budget.on_ack(now, rtt, Some(rtt), &B);
        }
        assert_eq!(budget.rate(), 100_000, "no evidence for more");
    }

    #[test]
    fn rising_rtt_is_a_congestion_signal() {
        let t0 = Stamp::ZERO;
        let mut budget = SendBudget::new(100_000, &B);
        budget.on_ack(
            t0,
            Duration::from_millis(400),
            Some(Duration::from_millis(20)),
            &B,
        );
        assert_eq!(budget.rate(), 75_000);
    }

    #[test]
    fn bucket_limits_bursts() {
        let t0 = Stamp::ZERO;
        let bounds = RateBounds::new(20_000, 1_000_000, 1_000);
        let mut budget = SendBudget::new(100_000, &bounds);
        let mut sent = 0;
        while budget.can_send(t0, &bounds) {
            budget.on_sent(1_000);
            sent += 1;
        }
        assert_eq!(
            sent, 5,
            "capacity is max(50 ms of rate, 4 datagrams) = 5,000 bytes"
        );
        assert!(budget.ready_at(t0) > t0);
        assert!(budget.can_send(budget.ready_at(t0), &bounds));
    }

    /// A budget that doubles its rate a round trip (slow start) when the
    /// sender uses all of it, or grows it by a sixteenth (after a cut).
    fn busy_round(budget: &mut SendBudget, now: Stamp, rtt: Duration) {
        while budget.can_send(now, &B) {
            budget.on_sent(1_000);
        }
        budget.on_ack(now, rtt, Some(rtt), &B);
    }

    #[test]
    fn a_cut_whose_lost_packets_are_acked_late_is_undone() {
        let t0 = Stamp::ZERO;
        let rtt = Duration::from_millis(50);
        let mut budget = SendBudget::new(100_000, &B);
        budget.on_loss(t0, rtt, &B);
        budget.on_packet_lost(7);
        budget.on_packet_lost(9);
        assert_eq!(budget.rate(), 75_000);
        // Latest 10, and 9 and 8 before it.
        budget.on_ack_names(10, 0b11, &B);
        assert_eq!(budget.rate(), 75_000, "7 may still be lost");
        // Latest 12, and 7 (five back) before it.
        budget.on_ack_names(12, 1 << 4, &B);
        assert_eq!(budget.rate(), 100_000, "both arrived: the cut is undone");
        // Slow start with it.
        busy_round(&mut budget, t0 + rtt, rtt);
        assert_eq!(budget.rate(), 200_000, "slow start is back");
    }

    #[test]
    fn cuts_in_a_row_are_undone_together_when_all_their_losses_prove_spurious() {
        let t0 = Stamp::ZERO;
        let rtt = Duration::from_millis(50);
        let mut budget = SendBudget::new(100_000, &B);
        budget.on_loss(t0, rtt, &B);
        budget.on_packet_lost(7);
        budget.on_loss(t0 + rtt * 2, rtt, &B);
        budget.on_packet_lost(8);
        assert_eq!(budget.rate(), 56_250);
        budget.on_ack_names(8, 0, &B);
        assert_eq!(budget.rate(), 56_250, "7 may still be lost");
        budget.on_ack_names(9, 0b10, &B);
        assert_eq!(budget.rate(), 100_000, "the rate before the first cut");
    }

    #[test]
    fn a_cut_with_a_genuine_loss_among_its_losses_stands() {
        let t0 = Stamp::ZERO;
        let rtt = Duration::from_millis(50);
        let mut budget = SendBudget::new(100_000, &B);
        budget.on_loss(t0, rtt, &B);
        budget.on_packet_lost(7);
        // Another loss in the same round trip: no second cut, but 9 is
        // one of the losses that must prove spurious.
        budget.on_loss(t0 + rtt / 2, rtt, &B);
        budget.on_packet_lost(9);
        // Latest 12: 11, 10 and 7 before it, not 9.
        budget.on_ack_names(12, 0b10011, &B);
        assert_eq!(budget.rate(), 75_000, "9 is still lost");
        // The peer's acks move more than 64 past 9 without naming it:
        // lost for good, and the undo forgotten.
        budget.on_ack_names(9 + 65, u64::MAX, &B);
        budget.on_loss(t0 + rtt * 2, rtt, &B);
        budget.on_packet_lost(80);
        budget.on_ack_names(80, 0, &B);
        assert_eq!(budget.rate(), 75_000, "only the second cut is undone");
    }

    #[test]
    fn a_rising_round_trip_forgets_the_undo() {
        let t0 = Stamp::ZERO;
        let rtt = Duration::from_millis(50);
        let mut budget = SendBudget::new(100_000, &B);
        budget.on_loss(t0, rtt, &B);
        budget.on_packet_lost(7);
        // Queues building: no second cut within the round trip, but the
        // first one was called for.
        budget.on_ack(t0, Duration::from_millis(400), Some(rtt), &B);
        budget.on_ack_names(7, 0, &B);
        assert_eq!(budget.rate(), 75_000);
    }

    #[test]
    fn losses_too_far_apart_to_track_are_not_undone() {
        let t0 = Stamp::ZERO;
        let rtt = Duration::from_millis(50);
        let mut budget = SendBudget::new(100_000, &B);
        budget.on_loss(t0, rtt, &B);
        budget.on_packet_lost(7);
        budget.on_packet_lost(7 + 32);
        budget.on_ack_names(7 + 32, 1 << 31, &B);
        assert_eq!(budget.rate(), 75_000);
    }
}
