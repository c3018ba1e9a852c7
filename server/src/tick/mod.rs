//! The fixed tick: a custom [`App`] runner that runs exactly one
//! `app.update()` per tick at absolute deadlines, measures every tick, and
//! exposes the measurements as [`TickStats`] and as metrics.
//!
//! # One update is one tick
//!
//! Gameplay goes in bevy's fixed schedules (`FixedPreUpdate`, `FixedUpdate`,
//! `FixedPostUpdate`) and reads `Res<Time>` as usual. [`TickPlugin`] sets
//! `Time<Fixed>` to the tick period and `TimeUpdateStrategy::FixedTimesteps(1)`,
//! so each `app.update()` advances virtual time by exactly one timestep and
//! the fixed schedules run exactly once, the first update included. We chose
//! this over a home-grown per-tick schedule so that ecosystem code written
//! against `FixedUpdate` and `Time<Fixed>` works unchanged; the wall clock
//! only decides *when* an update runs (see [`Pacer`]), never how much
//! simulation time passes, so the simulation is deterministic per tick.
//!
//! Pausing or slowing `Time<Virtual>` would stop or thin out the fixed
//! schedules; the server never does that.

mod clock;
mod pacer;
mod runner;

use std::time::Duration;

use bevy_app::{App, Plugin};
use bevy_ecs::resource::Resource;
use bevy_time::{Fixed, Time, TimePlugin, TimeUpdateStrategy, Virtual};
use hdrhistogram::Histogram as HdrHistogram;
use tracing::error;

use crate::metrics::{Counter, Gauge, Histogram, Metrics, exponential_buckets};

pub use clock::{Clock, ManualClock, SystemClock};
pub use pacer::Pacer;

/// Lowest accepted tick rate, in Hz.
pub const MIN_TICK_HZ: u32 = 1;
/// Highest accepted tick rate, in Hz.
pub const MAX_TICK_HZ: u32 = 128;

/// A tick rate within [`MIN_TICK_HZ`]`..=`[`MAX_TICK_HZ`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickRate(u32);

/// The tick rate was outside [`MIN_TICK_HZ`]`..=`[`MAX_TICK_HZ`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tick rate {0} Hz is out of range: it must be between 1 and 128 Hz")]
pub struct TickRateError(pub u32);

impl TickRate {
    /// Validates a rate in Hz.
    ///
    /// # Errors
    /// [`TickRateError`] when `hz` is outside `1..=128`.
    pub const fn new(hz: u32) -> Result<Self, TickRateError> {
        if hz >= MIN_TICK_HZ && hz <= MAX_TICK_HZ {
            Ok(Self(hz))
        } else {
            Err(TickRateError(hz))
        }
    }

    /// The rate in Hz.
    pub const fn hz(self) -> u32 {
        self.0
    }

    /// The period, rounded down to the nanosecond (used as the simulation
    /// timestep; wall-clock deadlines are computed exactly, see [`Pacer`]).
    pub const fn period(self) -> Duration {
        Duration::from_nanos(1_000_000_000 / self.0 as u64)
    }
}

impl Default for TickRate {
    fn default() -> Self {
        Self(30)
    }
}

/// How the tick runner paces and bounds the loop.
#[derive(Clone, Debug)]
pub struct TickConfig {
    /// Ticks per second.
    pub rate: TickRate,
    /// Overdue ticks run back to back after a hiccup, at most this many;
    /// further behind, missed deadlines are skipped (see [`Pacer`]).
    pub max_catch_up_ticks: u32,
    /// Once a shutdown has been requested (see [`crate::shutdown`]), the
    /// runner gives up on a graceful exit after this long and returns an
    /// error exit code, whatever the plugins are still doing.
    pub shutdown_timeout: Duration,
}

impl Default for TickConfig {
    fn default() -> Self {
        Self {
            rate: TickRate::default(),
            max_catch_up_ticks: 3,
            shutdown_timeout: Duration::from_secs(9),
        }
    }
}

/// Measurements of the tick loop, updated by the runner around every
/// `app.update()`. Read it from systems (`Res<TickStats>`); only the runner
/// writes it.
#[derive(Resource, Debug, Clone)]
pub struct TickStats {
    rate: TickRate,
    tick: u64,
    last_duration: Duration,
    histogram: HdrHistogram<u64>,
    /// The ticks of the current minute of uptime and of the one before
    /// (see [`recent_quantile`](Self::recent_quantile)).
    recent: HdrHistogram<u64>,
    previous: HdrHistogram<u64>,
    /// The uptime at which the current minute began.
    recent_since: Duration,
    overruns: u64,
    skipped: u64,
    periods: u32,
    uptime: Duration,
}

/// Longest tick duration the histogram resolves, in microseconds; longer
/// ticks are recorded as this.
const HISTOGRAM_MAX_MICROS: u64 = 60_000_000;

impl TickStats {
    pub(crate) fn new(rate: TickRate) -> Self {
        // Two significant figures: 1% resolution from 1 µs to 60 s.
        let histogram = || {
            HdrHistogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 2)
                .expect("constant histogram bounds are valid")
        };
        Self {
            rate,
            tick: 0,
            last_duration: Duration::ZERO,
            histogram: histogram(),
            recent: histogram(),
            previous: histogram(),
            recent_since: Duration::ZERO,
            overruns: 0,
            skipped: 0,
            periods: 1,
            uptime: Duration::ZERO,
        }
    }

    /// The configured tick rate.
    pub fn rate(&self) -> TickRate {
        self.rate
    }

    /// Number of the tick running now (during an update) or last run
    /// (between updates), starting at zero. Skipped ticks are not numbered.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Wall-clock duration of the last completed tick.
    pub fn last_duration(&self) -> Duration {
        self.last_duration
    }

    /// Durations of all completed ticks, in microseconds.
    pub fn histogram(&self) -> &HdrHistogram<u64> {
        &self.histogram
    }

    /// The tick duration at quantile `q` (0.0..=1.0) since start.
    pub fn duration_quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.histogram.value_at_quantile(q))
    }

    /// The tick duration at quantile `q` over the ticks of the last one to
    /// two minutes of wall time (this minute's and the last one's; none
    /// when a tick took longer): what an operator looking at a server now
    /// wants, which days of history would drown.
    pub fn recent_quantile(&self, q: f64) -> Duration {
        let mut both = self.previous.clone();
        // Same bounds: adding cannot fail.
        let _ = both.add(&self.recent);
        Duration::from_micros(both.value_at_quantile(q))
    }

    /// Records one completed tick's duration, the tick ending `uptime`
    /// after the first began.
    pub(crate) fn record(&mut self, duration: Duration, uptime: Duration) {
        const MINUTE: Duration = Duration::from_secs(60);
        self.last_duration = duration;
        self.uptime = uptime;
        let elapsed = uptime.saturating_sub(self.recent_since);
        if elapsed >= MINUTE {
            std::mem::swap(&mut self.previous, &mut self.recent);
            self.recent.reset();
            if elapsed >= 2 * MINUTE {
                // Not the minute before: nothing of it is recent.
                self.previous.reset();
            }
            self.recent_since = uptime;
        }
        let micros = u64::try_from(duration.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.histogram.saturating_record(micros);
        self.recent.saturating_record(micros);
    }

    /// Ticks that took longer than the period.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Deadlines given up after stalls (see [`Pacer`]).
    pub fn skipped_ticks(&self) -> u64 {
        self.skipped
    }

    /// Periods of wall time from the start of the tick before to the start
    /// of this one, rounded (the rounding carried on, so that they add up
    /// to the time that passed): 1 on schedule; 0 for a catch-up tick run
    /// right after a late one; more for the first tick after a stall, in
    /// which what clients sent meanwhile arrives. 1 when no runner drives
    /// the app (tests that call `update` themselves).
    pub fn periods_this_tick(&self) -> u32 {
        self.periods
    }

    /// Time since the first tick started, as of this tick's start (read
    /// between ticks: as of the last tick's end).
    pub fn uptime(&self) -> Duration {
        self.uptime
    }
}

/// Metric handles the runner updates after every tick.
#[derive(Resource, Clone, Debug)]
pub(crate) struct TickMetrics {
    pub(crate) duration: Histogram,
    pub(crate) ticks: Counter,
    pub(crate) overruns: Counter,
    pub(crate) skipped: Counter,
    pub(crate) uptime: Gauge,
}

impl TickMetrics {
    fn register(metrics: &Metrics, rate: TickRate) -> Self {
        let registry = metrics.registry();
        let log = |error| {
            error!(%error, "tick metric registration failed; it will not be exported");
        };
        let counter = |name, help| {
            registry.counter(name, help).unwrap_or_else(|e| {
                log(e);
                Counter::default()
            })
        };
        let gauge = |name, help| {
            registry.gauge(name, help).unwrap_or_else(|e| {
                log(e);
                Gauge::default()
            })
        };
        let bounds = tick_duration_buckets();
        let duration = registry
            .histogram(
                "server_tick_duration_seconds",
                "Wall-clock time spent in one tick (one app update).",
                &bounds,
            )
            .unwrap_or_else(|e| {
                log(e);
                Histogram::detached(&bounds).expect("constant buckets are valid")
            });
        gauge("server_tick_rate_hz", "Configured ticks per second.").set(f64::from(rate.hz()));
        Self {
            duration,
            ticks: counter("server_ticks_total", "Ticks run since start."),
            overruns: counter(
                "server_tick_overruns_total",
                "Ticks that took longer than the tick period.",
            ),
            skipped: counter(
                "server_tick_skipped_total",
                "Tick deadlines skipped to recover from a stall instead of catching up.",
            ),
            uptime: gauge(
                "server_uptime_seconds",
                "Seconds since the first tick started.",
            ),
        }
    }
}

/// Bounds of `server_tick_duration_seconds`: 0.25 ms to 1.45 s in steps
/// of √2 (…, 11.3, 16, 22.6, 32 ms, …), fine enough to tell a 16 ms p99
/// from a 30 ms one, and above the longest period (1 s at 1 Hz), so that
/// every tick within its period has a bucket.
fn tick_duration_buckets() -> Vec<f64> {
    exponential_buckets(0.000_25, std::f64::consts::SQRT_2, 26)
}

/// Drives the app with the fixed tick runner.
///
/// Adds `bevy_time`'s `TimePlugin` if missing, configures `Time<Fixed>` (see
/// the module docs), inserts [`TickStats`], registers the tick metrics in
/// the [`Metrics`] resource (creating it if absent) and sets the app runner.
/// `C` is the clock; production uses [`SystemClock`], tests [`ManualClock`].
#[derive(Clone, Debug, Default)]
pub struct TickPlugin<C = SystemClock> {
    /// Pacing configuration.
    pub config: TickConfig,
    /// The clock the runner reads and sleeps on.
    pub clock: C,
}

impl<C: Clock + Clone + Sync> Plugin for TickPlugin<C> {
    fn build(&self, app: &mut App) {
        if !app.is_plugin_added::<TimePlugin>() {
            app.add_plugins(TimePlugin);
        }
        let rate = self.config.rate;
        let step = rate.period();
        let mut fixed = Time::<Fixed>::from_duration(step);
        // The first update has a zero delta; pre-load one step so that it,
        // like every later update, runs the fixed schedules exactly once.
        fixed.accumulate_overstep(step);
        app.insert_resource(fixed)
            .insert_resource(TimeUpdateStrategy::FixedTimesteps(1));
        {
            let mut virtual_time = app.world_mut().resource_mut::<Time<Virtual>>();
            // Virtual time clamps each delta to max_delta (250 ms by
            // default); at low tick rates that would thin out fixed steps.
            let max_delta = virtual_time.max_delta().max(step);
            virtual_time.set_max_delta(max_delta);
        }

        app.init_resource::<Metrics>();
        let metrics = TickMetrics::register(app.world().resource::<Metrics>(), rate);
        app.insert_resource(metrics)
            .insert_resource(TickStats::new(rate));

        let config = self.config.clone();
        let clock = self.clock.clone();
        app.set_runner(move |app| runner::run(app, clock, &config));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tick_within_the_longest_period_has_a_finite_bucket() {
        let longest = TickRate::new(MIN_TICK_HZ).unwrap().period().as_secs_f64();
        let buckets = tick_duration_buckets();
        assert!(
            buckets.last().is_some_and(|&top| top >= longest),
            "{buckets:?}"
        );
        for ms in [16.0, 32.0] {
            assert!(
                buckets.iter().any(|b| (b * 1e3 - ms).abs() < 1e-6),
                "{ms} ms"
            );
        }
    }
}
