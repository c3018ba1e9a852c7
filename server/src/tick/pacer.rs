//! Deadline arithmetic for the fixed tick: when each tick is due, and what
//! happens after a stall.

use std::time::{Duration, Instant};

use super::TickRate;

/// Decides when each tick starts.
///
/// Tick `n` after the anchor is due at `anchor + n / hz` seconds, computed
/// exactly in integer nanoseconds from `n`, never by adding a rounded period
/// over and over, so the schedule does not drift.
///
/// **Catch-up policy.** When a tick finishes after the next deadline, the
/// overdue ticks run back to back, but only while at most
/// `max_catch_up_ticks` deadlines have passed. Beyond that the pacer gives up
/// on the missed deadlines: it counts all but one of them as skipped, runs
/// one tick now and re-anchors the schedule at now. A stall therefore costs
/// at most `max_catch_up_ticks` back-to-back ticks, and a server whose ticks
/// are persistently slower than the period degrades to running as fast as it
/// can instead of accumulating an ever-growing backlog (no spiral of death).
/// Skipped ticks do not advance simulation time: the game slows down rather
/// than jumping.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate: TickRate,
    max_catch_up_ticks: u32,
    anchor: Instant,
    /// Index, counted from the anchor, of the next tick to run.
    next: u64,
}

impl Pacer {
    /// A schedule whose first tick is due at `start`.
    pub fn new(start: Instant, rate: TickRate, max_catch_up_ticks: u32) -> Self {
        Self {
            rate,
            max_catch_up_ticks,
            anchor: start,
            next: 0,
        }
    }

    /// When the next tick is due.
    pub fn next_deadline(&self) -> Instant {
        self.anchor + self.offset(self.next)
    }

    /// Records that a tick finished at `now` and moves to the next deadline.
    /// Returns how many deadlines were skipped (zero unless far behind).
    pub fn tick_finished(&mut self, now: Instant) -> u64 {
        self.next += 1;
        let deadline = self.next_deadline();
        if now <= deadline {
            return 0;
        }
        // Deadlines at or before `now`, counting `deadline` itself.
        let elapsed = now.saturating_duration_since(self.anchor).as_nanos();
        let last_due = elapsed * u128::from(self.rate.hz()) / 1_000_000_000;
        let overdue = u64::try_from(last_due)
            .unwrap_or(u64::MAX)
            .saturating_sub(self.next)
            .saturating_add(1);
        if overdue <= u64::from(self.max_catch_up_ticks) {
            return 0;
        }
        self.anchor = now;
        self.next = 0;
        overdue - 1
    }

    /// Time from the anchor to tick `n`: `n / hz` seconds, exact to the
    /// nanosecond below.
    fn offset(&self, n: u64) -> Duration {
        let hz = u64::from(self.rate.hz());
        let whole = n / hz;
        let rest = n % hz;
        // rest < hz <= 128, so this cannot overflow.
        Duration::new(whole, u32::try_from(rest * 1_000_000_000 / hz).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(hz: u32) -> TickRate {
        TickRate::new(hz).unwrap()
    }

    #[test]
    fn deadlines_are_exact_multiples_of_the_period() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, rate(30), 3);
        for n in 0..=30_000u64 {
            let deadline = pacer.next_deadline();
            if n % 30 == 0 {
                assert_eq!(deadline, start + Duration::from_secs(n / 30));
            }
            assert_eq!(pacer.tick_finished(deadline), 0);
        }
    }

    #[test]
    fn small_lag_is_caught_up_on_the_original_grid() {
        let start = Instant::now();
        let period = Duration::from_millis(100);
        let mut pacer = Pacer::new(start, rate(10), 3);
        // Tick 0 overran into 2.5 periods: deadlines 1 and 2 are overdue.
        assert_eq!(pacer.tick_finished(start + period * 5 / 2), 0);
        assert_eq!(pacer.next_deadline(), start + period);
        assert_eq!(pacer.tick_finished(start + period * 5 / 2), 0);
        assert_eq!(pacer.next_deadline(), start + period * 2);
        assert_eq!(pacer.tick_finished(start + period * 5 / 2), 0);
        assert_eq!(pacer.next_deadline(), start + period * 3);
    }

    #[test]
    fn large_lag_skips_and_reanchors() {
        let start = Instant::now();
        let period = Duration::from_millis(100);
        let mut pacer = Pacer::new(start, rate(10), 3);
        let resume = start + period * 100 + period / 2;
        // Deadlines 1..=100 have passed: run one now, skip 99.
        assert_eq!(pacer.tick_finished(resume), 99);
        assert_eq!(pacer.next_deadline(), resume);
        assert_eq!(pacer.tick_finished(resume), 0);
        assert_eq!(pacer.next_deadline(), resume + period);
    }

    #[test]
    fn zero_catch_up_reanchors_on_any_lateness() {
        let start = Instant::now();
        let period = Duration::from_millis(100);
        let mut pacer = Pacer::new(start, rate(10), 0);
        let late = start + period + Duration::from_millis(1);
        assert_eq!(pacer.tick_finished(late), 0);
        assert_eq!(pacer.next_deadline(), late);
    }
}
