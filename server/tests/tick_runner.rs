//! The fixed tick runner on a virtual clock: deadlines, overruns and the
//! catch-up policy, through a real `App` and the real runner.

use std::time::{Duration, Instant};

use bevy_app::{App, AppExit, FixedUpdate, Last};
use bevy_ecs::prelude::*;
use server::shutdown::ShutdownSwitch;
use server::tick::{Clock, ManualClock, TickConfig, TickPlugin, TickRate, TickStats};

/// What the test app saw, one entry per tick.
#[derive(Resource, Default)]
struct Observed {
    /// Virtual-clock time at which each tick's `FixedUpdate` ran.
    starts: Vec<Instant>,
}

/// How long (virtual time) the tick with a given number takes.
#[derive(Resource)]
struct Workload {
    clock: ManualClock,
    cost: fn(u64) -> Duration,
    stop_after: u64,
}

fn work(mut observed: ResMut<Observed>, workload: Res<Workload>, stats: Res<TickStats>) {
    if stats.tick() >= workload.stop_after {
        return;
    }
    observed.starts.push(workload.clock.now());
    workload.clock.advance((workload.cost)(stats.tick()));
}

/// Exits in the tick after the last measured one, so that the stats read in
/// that tick cover every measured tick.
fn stop(workload: Res<Workload>, stats: Res<TickStats>, mut exit: MessageWriter<AppExit>) {
    if stats.tick() == workload.stop_after {
        exit.write(AppExit::Success);
    }
}

const HZ: u32 = 30;

fn period() -> Duration {
    TickRate::new(HZ).unwrap().period()
}

/// Exact start of tick `n` on the schedule anchored at `start`.
fn scheduled(start: Instant, n: u64) -> Instant {
    start + Duration::from_nanos(n * 1_000_000_000 / u64::from(HZ))
}

struct Run {
    exit: AppExit,
    stats: TickStats,
    starts: Vec<Instant>,
    start: Instant,
}

fn run(ticks: u64, cost: fn(u64) -> Duration) -> Run {
    let clock = ManualClock::new();
    let start = clock.now();
    let mut app = App::new();
    app.add_plugins(TickPlugin {
        config: TickConfig {
            rate: TickRate::new(HZ).unwrap(),
            ..TickConfig::default()
        },
        clock: clock.clone(),
    })
    .init_resource::<Observed>()
    .insert_resource(Workload {
        clock,
        cost,
        stop_after: ticks,
    })
    .add_systems(FixedUpdate, work)
    .add_systems(Last, stop);

    // `App::run` consumes the app: capture the final state from a system
    // that runs in the tick that asks to exit.
    let (sender, receiver) = std::sync::mpsc::channel();
    app.add_systems(
        Last,
        (move |exits: Res<Messages<AppExit>>, stats: Res<TickStats>, observed: Res<Observed>| {
            if !exits.is_empty() {
                let _ = sender.send((stats.clone(), observed.starts.clone()));
            }
        })
        .after(stop),
    );
    let exit = app.run();
    let (stats, starts) = receiver.recv().expect("the app exited through AppExit");
    Run {
        exit,
        stats,
        starts,
        start,
    }
}

#[test]
fn ten_thousand_ticks_start_exactly_on_schedule() {
    let run = run(10_000, |_| Duration::from_millis(1));
    assert_eq!(run.exit, AppExit::Success);
    // FixedUpdate ran once per update, the first update included.
    assert_eq!(run.starts.len(), 10_000);
    for (n, &at) in run.starts.iter().enumerate() {
        assert_eq!(at, scheduled(run.start, n as u64), "tick {n} drifted");
    }
    // 10,000 ticks at 30 Hz end at exactly 333.3 s: no accumulated rounding.
    assert_eq!(
        run.starts[9_999].duration_since(run.start),
        Duration::from_nanos(9_999 * 1_000_000_000 / 30)
    );
    assert_eq!(run.stats.tick(), 10_000);
    assert_eq!(run.stats.overruns(), 0);
    assert_eq!(run.stats.skipped_ticks(), 0);
    assert_eq!(run.stats.histogram().len(), 10_000);
}

#[test]
fn a_slow_tick_is_counted_as_an_overrun_and_measured() {
    let run = run(20, |n| {
        if n == 5 {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(2)
        }
    });
    assert_eq!(run.stats.overruns(), 1);
    assert_eq!(run.stats.skipped_ticks(), 0);
    let max = run.stats.duration_quantile(1.0);
    assert!(
        max >= Duration::from_millis(49) && max <= Duration::from_millis(51),
        "{max:?}"
    );
    // Tick 6 was due at 6 periods but tick 5 ended at 5 periods + 50 ms:
    // it runs late, immediately, and tick 7 is back on the original grid.
    assert_eq!(
        run.starts[6],
        scheduled(run.start, 5) + Duration::from_millis(50)
    );
    assert_eq!(run.starts[7], scheduled(run.start, 7));
}

#[test]
fn a_short_stall_is_caught_up_back_to_back_on_the_original_grid() {
    // Tick 10 takes 2.5 periods: deadlines 11 and 12 pass during it.
    let run = run(30, |n| {
        if n == 10 {
            period() * 5 / 2
        } else {
            Duration::ZERO
        }
    });
    assert_eq!(run.stats.skipped_ticks(), 0);
    let end_of_stall = scheduled(run.start, 10) + period() * 5 / 2;
    assert_eq!(run.starts[11], end_of_stall);
    assert_eq!(run.starts[12], end_of_stall);
    assert_eq!(run.starts[13], scheduled(run.start, 13));
    assert_eq!(run.starts[29], scheduled(run.start, 29));
}

#[test]
fn a_long_stall_skips_missed_ticks_instead_of_bursting() {
    // Tick 10 stalls for 100.5 periods.
    let run = run(30, |n| {
        if n == 10 {
            period() * 201 / 2
        } else {
            Duration::ZERO
        }
    });
    let end_of_stall = scheduled(run.start, 10) + period() * 201 / 2;
    // Deadlines 11..=110 passed; one tick runs now, 99 are skipped.
    assert_eq!(run.stats.skipped_ticks(), 99);
    assert_eq!(run.starts[11], end_of_stall);
    // No burst: the following ticks are one period apart, re-anchored.
    for k in 12..30 {
        assert_eq!(
            run.starts[k].duration_since(end_of_stall),
            Duration::from_nanos((k as u64 - 11) * 1_000_000_000 / u64::from(HZ)),
            "tick {k}"
        );
    }
}

#[test]
fn persistently_slow_ticks_do_not_build_a_backlog() {
    // The first 1,000 ticks cost 1.5 periods each: the server cannot keep
    // up. Then ticks become free again.
    let slow = 1_000;
    let run = run(1_100, |n| {
        if n < 1_000 {
            period() * 3 / 2
        } else {
            Duration::ZERO
        }
    });
    assert_eq!(run.stats.overruns(), slow);
    // While slow, ticks run back to back and the missed deadlines are
    // written off rather than queued...
    for pair in run.starts[..=slow as usize].windows(2) {
        assert_eq!(pair[1].duration_since(pair[0]), period() * 3 / 2);
    }
    let skipped = run.stats.skipped_ticks();
    assert!((400..=500).contains(&skipped), "skipped {skipped}");
    // ...so once ticks are cheap again, at most the catch-up allowance (3)
    // runs immediately, not the ~500 ticks of backlog a naive catch-up
    // would owe. Then the server is back at one tick per period.
    let recovered = &run.starts[slow as usize..];
    let burst = recovered
        .windows(2)
        .take_while(|pair| pair[1] == pair[0])
        .count();
    assert!(burst <= 3, "{burst} back-to-back catch-up ticks");
    for pair in recovered[burst + 1..].windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= period() && gap <= period() + Duration::from_nanos(1),
            "{gap:?}"
        );
    }
}

#[test]
fn runner_gives_up_on_a_shutdown_that_never_finishes() {
    let clock = ManualClock::new();
    let start = clock.now();
    let config = TickConfig {
        shutdown_timeout: Duration::from_secs(2),
        ..TickConfig::default()
    };
    let (timeout, period) = (config.shutdown_timeout, config.rate.period());
    let mut app = App::new();
    app.add_plugins(TickPlugin {
        config,
        clock: clock.clone(),
    });
    // A shutdown is requested but nothing (no ShutdownPlugin) ever exits.
    let switch = ShutdownSwitch::default();
    switch.request();
    app.insert_resource(switch);
    assert_eq!(app.run(), AppExit::error());
    // It gave up at the first tick past the timeout, on the virtual clock
    // it shares with the test.
    let waited = clock.now().duration_since(start);
    assert!(
        waited > timeout && waited <= timeout + 2 * period,
        "gave up after {waited:?} (timeout {timeout:?}, period {period:?})"
    );
}

#[derive(Resource, Default)]
struct FixedRuns(u32);

#[test]
fn every_update_runs_the_fixed_schedules_exactly_once_at_any_rate() {
    for hz in [1, 7, 30, 128] {
        let mut app = App::new();
        app.add_plugins(TickPlugin {
            config: TickConfig {
                rate: TickRate::new(hz).unwrap(),
                ..TickConfig::default()
            },
            clock: ManualClock::new(),
        })
        .init_resource::<FixedRuns>()
        .add_systems(FixedUpdate, |mut runs: ResMut<FixedRuns>| runs.0 += 1);
        app.finish();
        app.cleanup();
        for update in 1..=50 {
            app.update();
            assert_eq!(app.world().resource::<FixedRuns>().0, update, "{hz} Hz");
        }
    }
}

/// A [`ManualClock`] whose `stall_on`-th sleep lasts `stall` longer: the
/// host paused the process while the runner slept.
#[derive(Clone)]
struct StallingClock {
    inner: ManualClock,
    sleeps: std::sync::Arc<std::sync::atomic::AtomicU32>,
    stall_on: u32,
    stall: Duration,
}

impl Clock for StallingClock {
    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep_until(&mut self, deadline: Instant) {
        self.inner.sleep_until(deadline);
        let sleeps = self
            .sleeps
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if sleeps == self.stall_on {
            self.inner.advance(self.stall);
        }
    }
}

/// What each tick's systems read of the wall time: the periods it stands
/// for and the uptime.
#[derive(Resource, Default)]
struct WallTime(Vec<(u32, Duration)>);

/// The uptime a tick's systems read goes on through a stall while the
/// runner slept, as the periods the tick stands for do: it lagged a tick
/// behind (the end of the tick before), so a player rejoining in the tick
/// after a stall was measured as away for the time before it.
#[test]
fn a_stall_in_the_sleep_is_in_the_next_ticks_uptime_and_periods() {
    let clock = StallingClock {
        inner: ManualClock::new(),
        sleeps: Default::default(),
        stall_on: 5,
        stall: Duration::from_secs(10),
    };
    let mut app = App::new();
    app.add_plugins(TickPlugin {
        config: TickConfig {
            rate: TickRate::new(HZ).unwrap(),
            ..TickConfig::default()
        },
        clock,
    })
    .init_resource::<WallTime>()
    .add_systems(
        FixedUpdate,
        |stats: Res<TickStats>, mut seen: ResMut<WallTime>, mut exit: MessageWriter<AppExit>| {
            seen.0.push((stats.periods_this_tick(), stats.uptime()));
            if seen.0.len() == 8 {
                exit.write(AppExit::Success);
            }
        },
    );
    let (sender, receiver) = std::sync::mpsc::channel();
    app.add_systems(Last, move |seen: Res<WallTime>| {
        let _ = sender.send(seen.0.clone());
    });
    assert_eq!(app.run(), AppExit::Success);
    let seen = receiver.try_iter().last().expect("ticks ran");
    // The fifth sleep precedes the fifth tick (index 4).
    let (periods, uptime) = seen[4];
    assert!(periods >= 300, "{seen:?}");
    assert!(uptime >= Duration::from_secs(10), "{seen:?}");
}
