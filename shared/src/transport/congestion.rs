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
//! The bucket holds at most 50 ms of budget (and never less than four
//! full datagrams), so a connection idle for a while cannot burst far past
//! its rate.

use std::time::Duration;

use super::clock::Stamp;

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
    last_refill: Option<Stamp>,
    slow_start: bool,
    epoch_start: Option<Stamp>,
    last_cut: Option<Stamp>,
    /// The budget ran out since the rate last grew: the sender wanted
    /// more than the rate. Only then does an acknowledgement grow it (a
    /// sender that never uses its budget gives no evidence that the path
    /// carries more; RFC 7661).
    limited: bool,
}

impl SendBudget {
    pub(crate) fn new(initial: u32, bounds: &RateBounds) -> Self {
        let rate = f64::from(initial);
        Self {
            rate,
            tokens: bounds.burst_floor.max(rate * 0.05),
            last_refill: None,
            slow_start: true,
            epoch_start: None,
            last_cut: None,
            limited: false,
        }
    }

    fn capacity(&self, bounds: &RateBounds) -> f64 {
        (self.rate * 0.05).max(bounds.burst_floor)
    }

    fn refill(&mut self, now: Stamp, bounds: &RateBounds) {
        if let Some(last) = self.last_refill {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.capacity(bounds));
        }
        self.last_refill = Some(now);
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

    /// Packets were declared lost.
    pub(crate) fn on_loss(&mut self, now: Stamp, srtt: Duration, bounds: &RateBounds) {
        self.cut(now, srtt.max(Duration::from_millis(10)), bounds);
    }

    fn cut(&mut self, now: Stamp, round: Duration, bounds: &RateBounds) {
        if let Some(last) = self.last_cut
            && now.saturating_duration_since(last) < round
        {
            return;
        }
        self.last_cut = Some(now);
        self.slow_start = false;
        self.epoch_start = Some(now);
        self.rate = (self.rate * 0.75).max(bounds.min);
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
}
