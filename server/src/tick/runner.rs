//! The loop behind [`super::TickPlugin`].

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
    let mut skipped = 0;

    loop {
        clock.sleep_until(pacer.next_deadline());
        let tick_start = clock.now();
        if let Some(mut stats) = app.world_mut().get_resource_mut::<TickStats>() {
            stats.tick = tick;
            stats.skipped_before = skipped;
        }

        app.update();

        let tick_end = clock.now();
        let duration = tick_end.saturating_duration_since(tick_start);
        let overran = duration > period;
        skipped = pacer.tick_finished(tick_end);
        if overran {
            debug!(tick, ?duration, "tick overran its period");
        }
        if skipped > 0 {
            warn!(tick, skipped, "tick loop stalled; skipping missed ticks");
        }
        if let Some(mut stats) = app.world_mut().get_resource_mut::<TickStats>() {
            stats.last_duration = duration;
            let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
            stats.histogram.saturating_record(micros.max(1));
            stats.overruns += u64::from(overran);
            stats.skipped += skipped;
            stats.uptime = tick_end.saturating_duration_since(started);
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
