//! The loop behind [`super::TickPlugin`].

use std::time::{Duration, Instant};

use bevy_app::{App, AppExit};
use tracing::{debug, error, warn};

use super::{Clock, Pacer, TickConfig, TickMetrics, TickStats};
use crate::metrics::Metrics;
use crate::shutdown::ShutdownSwitch;

/// Runs `app` one update per tick until it asks to exit.
pub(super) fn run<C: Clock>(mut app: App, mut clock: C, config: &TickConfig) -> AppExit {
    app.finish();
    app.cleanup();

    let period = config.rate.period();
    let tick_metrics = app.world().get_resource::<TickMetrics>().cloned();
    let heartbeat = app
        .world()
        .get_resource::<Metrics>()
        .map(|metrics| metrics.heartbeat().clone());
    let started = clock.now();
    let mut pacer = Pacer::new(started, config.rate, config.max_catch_up_ticks);
    let mut shutdown_seen_at = None;
    let mut tick: u64 = 0;
    let mut periods = Periods::default();

    loop {
        clock.sleep_until(pacer.next_deadline());
        let tick_start = clock.now();
        let periods = periods.at(tick_start, period);
        if let Some(mut stats) = app.world_mut().get_resource_mut::<TickStats>() {
            stats.tick = tick;
            stats.periods = periods;
            // Wall time as this tick's periods count it: a stall while
            // the runner slept is in both.
            stats.uptime = tick_start.saturating_duration_since(started);
        }

        app.update();

        let tick_end = clock.now();
        let duration = tick_end.saturating_duration_since(tick_start);
        let overran = duration > period;
        let skipped = pacer.tick_finished(tick_end);
        if overran {
            debug!(tick, ?duration, "tick overran its period");
        }
        if skipped > 0 {
            warn!(tick, skipped, "tick loop stalled; skipping missed ticks");
        }
        if let Some(mut stats) = app.world_mut().get_resource_mut::<TickStats>() {
            stats.record(duration, tick_end.saturating_duration_since(started));
            stats.overruns += u64::from(overran);
            stats.skipped += skipped;
        }
        if let Some(metrics) = &tick_metrics {
            metrics.duration.observe_duration(duration);
            metrics.ticks.inc();
            if overran {
                metrics.overruns.inc();
            }
            metrics.skipped.add(skipped);
            metrics
                .uptime
                .set(tick_end.saturating_duration_since(started).as_secs_f64());
        }
        if let Some(heartbeat) = &heartbeat {
            heartbeat.beat();
        }

        if let Some(exit) = app.should_exit() {
            return exit;
        }

        // Backstop for a graceful shutdown that does not finish.
        let requested = app
            .world()
            .get_resource::<ShutdownSwitch>()
            .is_some_and(ShutdownSwitch::is_requested);
        if requested {
            let seen = *shutdown_seen_at.get_or_insert(tick_end);
            if tick_end.saturating_duration_since(seen) > config.shutdown_timeout {
                error!(
                    timeout = ?config.shutdown_timeout,
                    "graceful shutdown did not finish in time; exiting anyway"
                );
                return AppExit::error();
            }
        }
        tick += 1;
    }
}

/// Counts the periods of wall time between tick starts (see
/// [`TickStats::periods_this_tick`]).
#[derive(Default)]
struct Periods {
    last_start: Option<Instant>,
    /// What rounding left over, in periods (-0.5 to 0.5).
    carry: f64,
}

impl Periods {
    /// The periods from the last tick's start to `start`, rounded, the
    /// rounding carried to the next call; 1 for the first tick.
    fn at(&mut self, start: Instant, period: Duration) -> u32 {
        let Some(last) = self.last_start.replace(start) else {
            return 1;
        };
        self.carry += start.saturating_duration_since(last).as_secs_f64() / period.as_secs_f64();
        // Never negative: a carry of -0.5 (a tie rounded up last time)
        // with no time passed stays -0.5 instead of paying out -1.
        let periods = self.carry.round().clamp(0.0, f64::from(u32::MAX));
        self.carry -= periods;
        // Saturating: after a stall of more than 2^32 periods the carry
        // stays large; the next ticks then count it down.
        periods as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_add_up_to_the_time_that_passed() {
        let period = Duration::from_millis(30);
        let mut periods = Periods::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(periods.at(at(0), period), 1, "the first tick");
        assert_eq!(periods.at(at(30), period), 1, "on schedule");
        // A 300 ms stall, then two catch-up ticks right after.
        assert_eq!(periods.at(at(330), period), 10);
        assert_eq!(periods.at(at(331), period), 0);
        assert_eq!(periods.at(at(332), period), 0);
        // Jitter: late, then early; the rounding carries, nothing is lost.
        let mut total = 0;
        for ms in [380, 400, 430, 460, 490, 520] {
            total += periods.at(at(ms), period);
        }
        assert_eq!(total, 6, "190 ms after 330: six periods");
    }

    /// Rounding a carry of exactly -0.5 for two ticks at one instant gave
    /// -1 periods: read as 0, but the carry jumped to +0.5 and a period
    /// that never passed was paid out later.
    #[test]
    fn ticks_at_one_instant_after_a_tie_pay_out_no_extra_period() {
        let period = Duration::from_millis(100);
        let mut periods = Periods::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        periods.at(at(0), period);
        let total: u32 = [250, 250, 300, 400]
            .into_iter()
            .map(|ms| periods.at(at(ms), period))
            .sum();
        assert_eq!(total, 4, "400 ms: four periods");
    }
}
