//! Movement validation through the real plugins, one `app.update()` per
//! tick: speed hacks, teleports (input floods) and NaN are clamped or
//! rejected and counted; an honest wanderer is never flagged and the
//! shared predictor agrees with the server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bevy_app::{App, AppExit, First, Last};
use bevy_ecs::prelude::*;
use bevy_time::{Fixed, Time};
use glam::Vec2;
use server::interest::{InterestPlugin, Viewer};
use server::metrics::Metrics;
use server::movement::{
    MAX_VIOLATION_LINES_PER_SECOND, MoveCommand, MovementConfig, MovementPlugin,
    MovementViolations, Mover, ViolationLog,
};
use server::net::{Clients, Outbox};
use server::tick::{Clock, ManualClock, TickConfig, TickPlugin, TickRate, TickStats};
use server::world::Position;
use shared::movement::{Predictor, tick_dt};
use shared::protocol::movement::MoveInput;

#[path = "support/logs.rs"]
mod logs;

use logs::logged;

fn app() -> App {
    let mut app = App::new();
    app.add_plugins(TickPlugin {
        config: TickConfig::default(),
        clock: ManualClock::new(),
    })
    .init_resource::<Clients>()
    .init_resource::<Outbox>()
    .add_plugins((MovementPlugin, InterestPlugin));
    app.finish();
    app.cleanup();
    app
}

fn spawn(app: &mut App, at: Vec2) -> Entity {
    let config = app.world().resource::<MovementConfig>().clone();
    app.world_mut()
        .spawn((
            Position(at),
            Mover::new(&config),
            MovementViolations::default(),
            Viewer::default(),
        ))
        .id()
}

fn send(app: &mut App, entity: Entity, seq: u32, velocity: Vec2) {
    app.world_mut().write_message(MoveCommand {
        entity,
        input: MoveInput {
            seq,
            velocity,
            ack_snapshot: 0,
        },
    });
}

fn position(app: &App, entity: Entity) -> Vec2 {
    app.world().get::<Position>(entity).unwrap().0
}

fn violations(app: &App, entity: Entity) -> MovementViolations {
    *app.world().get::<MovementViolations>(entity).unwrap()
}

fn dt(app: &App) -> f32 {
    app.world()
        .resource::<Time<Fixed>>()
        .timestep()
        .as_secs_f32()
}

fn metric(app: &App, kind: &str) -> u64 {
    let mut text = String::new();
    app.world()
        .resource::<Metrics>()
        .registry()
        .render(&mut text);
    let needle = format!("movement_violations_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Largest displacement over any window of `window` ticks.
fn max_window_displacement(track: &[Vec2], window: usize) -> f32 {
    track
        .windows(window + 1)
        .map(|w| w[0].distance(w[window]))
        .fold(0.0, f32::max)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[test]
fn a_speed_hack_is_clamped_and_counted() {
    let mut app = app();
    let max = app.world().resource::<MovementConfig>().max_speed;
    let player = spawn(&mut app, Vec2::ZERO);
    for seq in 1..=30 {
        send(&mut app, player, seq, Vec2::new(100.0 * max, 0.0));
        app.update();
    }
    let travelled = position(&app, player).x;
    assert!(
        travelled <= max * 1.0001 && travelled > max * 0.99,
        "{travelled}"
    );
    assert_eq!(violations(&app, player).speed, 30);
    assert_eq!(metric(&app, "speed"), 30);
}

#[test]
fn a_teleport_by_input_flood_is_capped_and_counted() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let dt = dt(&app);
    let player = spawn(&mut app, Vec2::ZERO);
    // 50 inputs in one tick: the per-tick cap and the credit stop it (what
    // the credit does not cover waits in the buffer; nothing moves it yet).
    for seq in 1..=50 {
        send(&mut app, player, seq, Vec2::new(config.max_speed, 0.0));
    }
    app.update();
    let moved = position(&app, player).length();
    assert!(
        moved <= config.burst_ticks as f32 * config.max_speed * dt + 1e-4,
        "{moved}"
    );
    let v = violations(&app, player);
    assert_eq!(v.flood, 50 - config.max_inputs_per_tick);
    assert_eq!(
        v.rate,
        config
            .max_inputs_per_tick
            .saturating_sub(config.burst_ticks + config.input_buffer)
    );
    assert_eq!(metric(&app, "flood"), u64::from(v.flood));

    // Sustained: four inputs per tick for three seconds.
    let mut track = vec![position(&app, player)];
    let mut seq = 50;
    for _ in 0..90 {
        for _ in 0..4 {
            seq += 1;
            send(&mut app, player, seq, Vec2::new(0.0, config.max_speed));
        }
        app.update();
        track.push(position(&app, player));
    }
    let window = max_window_displacement(&track, 30);
    assert!(window <= 1.1 * config.max_speed, "{window} m in one second");
    assert!(violations(&app, player).rate >= 90 * 2);
}

/// Many flooding players: every violation is counted, but the log lines
/// about them keep to their budget a second.
#[test]
fn many_flooders_log_within_the_line_budget() {
    let mut app = app();
    let players: Vec<Entity> = (0..50)
        .map(|i| spawn(&mut app, Vec2::new(i as f32, 0.0)))
        .collect();
    let mut seq = 0;
    for _ in 0..3 {
        for &player in &players {
            for _ in 0..200 {
                seq += 1;
                send(&mut app, player, seq, Vec2::ZERO);
            }
        }
        app.update();
    }
    // Each player's first and hundredth violations would be lines: 50
    // players made 100 and more each.
    let flagged: u64 = players
        .iter()
        .map(|&p| u64::from(violations(&app, p).total()))
        .sum();
    assert_eq!(metric(&app, "flood") + metric(&app, "rate"), flagged);
    assert!(flagged >= 50 * 100, "{flagged}");
    let log = app.world().resource::<ViolationLog>();
    assert!(
        log.suppressed() >= 100 - u64::from(MAX_VIOLATION_LINES_PER_SECOND),
        "{log:?}"
    );
}

/// One connection flooding for seconds spends the line budget early in
/// each second; another player's first violation is still written, late
/// in a second whose budget the flood already spent.
#[test]
fn a_flood_does_not_hide_another_players_first_violation() {
    let mut app = app();
    let max = app.world().resource::<MovementConfig>().max_speed;
    let flooder = spawn(&mut app, Vec2::ZERO);
    let cheat = spawn(&mut app, Vec2::new(100.0, 0.0));
    let log = logged(|| {
        let mut seq = 0;
        for tick in 0..3 * 30 {
            for _ in 0..66 {
                seq += 1;
                send(&mut app, flooder, seq, Vec2::ZERO);
            }
            if tick == 85 {
                let suppressed = app.world().resource::<ViolationLog>().suppressed();
                assert!(suppressed > 0, "the flood spent this second's budget");
                send(&mut app, cheat, 1, Vec2::new(2.0 * max, 0.0));
            }
            app.update();
        }
    });
    assert_eq!(violations(&app, cheat).speed, 1);
    let entity = format!("entity={cheat:?}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("movement violation") && l.contains(&entity))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("Speed"), "{}", lines[0]);
}

#[test]
fn bunched_inputs_of_an_honest_client_are_late_but_never_lost() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let step = config.max_speed * dt(&app);
    let player = spawn(&mut app, Vec2::ZERO);
    let east = Vec2::new(config.max_speed, 0.0);
    let mut seq = 0;
    let mut send_next = |app: &mut App| {
        seq += 1;
        send(app, player, seq, east);
    };
    // One input per tick, then a 100 ms stall answered by a burst: the bank
    // is spent, and a client at exactly the tick rate never earns it back.
    for _ in 0..10 {
        send_next(&mut app);
        app.update();
    }
    for _ in 0..3 {
        app.update();
    }
    for _ in 0..4 {
        send_next(&mut app);
    }
    app.update();
    // A minute of jitter: each input sent on its tick arrives that tick or
    // the next (seeded), in order: ticks of none, one or two inputs.
    let mut rng = Rng(0x5eed_1e55);
    let mut arrivals = [0u32; 1_802];
    let mut last = 0;
    for sent_at in 0..1_800 {
        last = (sent_at + usize::from(rng.next_f32() < 0.5)).max(last);
        arrivals[last] += 1;
    }
    let mut most_waiting = 0;
    for &count in &arrivals {
        for _ in 0..count {
            send_next(&mut app);
        }
        app.update();
        most_waiting = most_waiting.max(app.world().get::<Mover>(player).unwrap().waiting());
    }
    let sent = 10 + 4 + 1_800;
    for _ in 0..config.input_buffer {
        app.update();
    }
    assert_eq!(violations(&app, player), MovementViolations::default());
    let mover = app.world().get::<Mover>(player).unwrap();
    assert_eq!((mover.last_seq, mover.waiting()), (sent, 0));
    let travelled = position(&app, player).x;
    let expected = sent as f32 * step;
    assert!(
        (travelled - expected).abs() < 1e-2 * expected,
        "{travelled} m, not {expected}"
    );
    assert!(most_waiting <= 3, "{most_waiting} inputs waited at once");
}

/// A client whose clock runs fast sends an input more than the server's
/// ticks now and then: one every 500 ticks here (2,000 ppm, forty times a
/// quartz clock's usual error). The credit earns each back before the
/// next: none waits on, none is flagged, however long it plays.
#[test]
fn a_client_with_a_fast_clock_is_never_flagged_nor_kept_waiting() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let player = spawn(&mut app, Vec2::ZERO);
    let east = Vec2::new(config.max_speed, 0.0);
    let mut seq = 0;
    let mut most_waiting = 0;
    for tick in 1..=5_000 {
        let inputs = if tick % 500 == 0 { 2 } else { 1 };
        for _ in 0..inputs {
            seq += 1;
            send(&mut app, player, seq, east);
        }
        app.update();
        most_waiting = most_waiting.max(app.world().get::<Mover>(player).unwrap().waiting());
    }
    assert_eq!(violations(&app, player), MovementViolations::default());
    assert_eq!(metric(&app, "rate"), 0);
    assert!(most_waiting <= 1, "{most_waiting} inputs waited at once");
    let mover = app.world().get::<Mover>(player).unwrap();
    assert_eq!((mover.last_seq, mover.waiting()), (seq, 0));
}

#[test]
fn a_stall_answered_by_a_burst_the_credit_and_buffer_can_take_is_no_flood() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let player = spawn(&mut app, Vec2::ZERO);
    let east = Vec2::new(config.max_speed, 0.0);
    let mut seq = 0;
    for _ in 0..10 {
        seq += 1;
        send(&mut app, player, seq, east);
        app.update();
    }
    // 200 ms without input, then all of it in one tick: six inputs, which
    // the banked credit (3) and the buffer (4) take.
    for _ in 0..5 {
        app.update();
    }
    let burst = 6;
    assert!(burst <= config.burst_ticks + config.input_buffer);
    for _ in 0..burst {
        seq += 1;
        send(&mut app, player, seq, east);
    }
    for _ in 0..8 {
        app.update();
    }
    assert_eq!(violations(&app, player), MovementViolations::default());
    assert_eq!(app.world().get::<Mover>(player).unwrap().last_seq, seq);
}

/// A virtual clock whose sleep number `pause_on_sleep` oversleeps by
/// `pause`: the process paused between two ticks (a VM paused, the thread
/// not scheduled), which the runner learns of only when the tick starts.
#[derive(Clone)]
struct PausingClock {
    clock: ManualClock,
    sleeps: Arc<AtomicU64>,
    pause_on_sleep: u64,
    pause: Duration,
}

impl Clock for PausingClock {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn sleep_until(&mut self, deadline: Instant) {
        self.clock.sleep_until(deadline);
        if self.sleeps.fetch_add(1, Ordering::SeqCst) == self.pause_on_sleep {
            self.clock.advance(self.pause);
        }
    }
}

/// Where a stall of the server happens.
#[derive(Clone, Copy)]
enum Stall {
    /// A tick takes this long (the runner then catches up or skips).
    InTick(Duration),
    /// The process pauses this long between two ticks.
    BetweenTicks(Duration),
}

/// A client sending one input per period of wall time, on the virtual
/// clock the runner ticks by; its tick `stall_at` takes `stall`.
#[derive(Resource)]
struct HonestClient {
    clock: ManualClock,
    start: Instant,
    player: Entity,
    sent: u32,
    stall_at: u64,
    stall: Duration,
    stop_after: u64,
    /// Ticks its inputs take to reach the tick (0: they are there when the
    /// next tick starts; 1: the tick after, as when `net-io` has not read
    /// them yet).
    lag_ticks: usize,
    /// Inputs due at the start of the last ticks, newest last.
    due_then: VecDeque<u32>,
}

/// Writes the inputs the client sent since the last tick (`lag_ticks`
/// before): after a stall, all of those it sent meanwhile arrive together.
fn honest_client_sends(mut client: ResMut<HonestClient>, mut out: MessageWriter<MoveCommand>) {
    let period = TickRate::new(30).unwrap().period();
    let elapsed = client.clock.now().duration_since(client.start);
    let due_now = u32::try_from(elapsed.as_nanos() / period.as_nanos()).unwrap() + 1;
    client.due_then.push_back(due_now);
    if client.due_then.len() <= client.lag_ticks {
        return;
    }
    let due = client.due_then.pop_front().unwrap();
    while client.sent < due {
        client.sent += 1;
        out.write(MoveCommand {
            entity: client.player,
            input: MoveInput {
                seq: client.sent,
                velocity: Vec2::new(8.0, 0.0),
                ack_snapshot: 0,
            },
        });
    }
}

fn stall_and_stop(
    client: Res<HonestClient>,
    stats: Res<TickStats>,
    mut exit: MessageWriter<AppExit>,
) {
    if stats.tick() == client.stall_at {
        client.clock.advance(client.stall);
    }
    if stats.tick() == client.stop_after {
        exit.write(AppExit::Success);
    }
}

/// Movement on the real runner at 30 Hz, on `clock`, the process pausing
/// `pause` before tick `pause_on_sleep` (see [`PausingClock`]).
fn runner_app(clock: &ManualClock, pause_on_sleep: u64, pause: Duration) -> App {
    let mut app = App::new();
    app.add_plugins(TickPlugin {
        config: TickConfig {
            rate: TickRate::new(30).unwrap(),
            ..TickConfig::default()
        },
        clock: PausingClock {
            clock: clock.clone(),
            sleeps: Arc::default(),
            pause_on_sleep,
            pause,
        },
    })
    .init_resource::<Clients>()
    .init_resource::<Outbox>()
    .add_plugins(MovementPlugin);
    app
}

/// Runs an honest client through the real runner with its `stall_at`
/// tick taking `stall`; returns what its player ended with, the inputs it
/// sent and the ticks the runner skipped.
fn stall_run(stall: Stall) -> (Mover, MovementViolations, u32, u64) {
    stall_run_lagging(stall, 0)
}

/// [`stall_run`] with the client's inputs reaching the tick `lag_ticks`
/// late; "sent" counts those that reached it.
fn stall_run_lagging(stall: Stall, lag_ticks: usize) -> (Mover, MovementViolations, u32, u64) {
    let clock = ManualClock::new();
    let (in_tick, pause_on_sleep, pause) = match stall {
        Stall::InTick(d) => (d, u64::MAX, Duration::ZERO),
        // Sleep k comes before tick k.
        Stall::BetweenTicks(d) => (Duration::ZERO, 30, d),
    };
    let mut app = runner_app(&clock, pause_on_sleep, pause);
    let player = spawn(&mut app, Vec2::ZERO);
    app.insert_resource(HonestClient {
        start: clock.now(),
        clock,
        player,
        sent: 0,
        stall_at: 30,
        stall: in_tick,
        stop_after: 90,
        lag_ticks,
        due_then: VecDeque::new(),
    })
    .add_systems(First, honest_client_sends)
    .add_systems(Last, stall_and_stop);
    let (sender, receiver) = std::sync::mpsc::channel();
    app.add_systems(
        Last,
        (move |exits: Res<Messages<AppExit>>,
               stats: Res<TickStats>,
               client: Res<HonestClient>,
               players: Query<(&Mover, &MovementViolations)>| {
            if !exits.is_empty() {
                let (mover, violations) = players.get(client.player).unwrap();
                let _ = sender.send((
                    mover.clone(),
                    *violations,
                    client.sent,
                    stats.skipped_ticks(),
                ));
            }
        })
        .after(stall_and_stop),
    );
    assert_eq!(app.run(), AppExit::Success);
    receiver.recv().unwrap()
}

/// After a stall of the tick loop long enough that the runner gives up
/// ticks, an honest client's inputs for them arrive in one tick: they
/// move it on, none is flagged or lost, and none waits on afterwards.
#[test]
fn an_honest_client_is_not_flagged_after_the_tick_loop_skips_ticks() {
    // 300 ms: beyond the three ticks the runner catches up.
    let (mover, violations, sent, skipped) = stall_run(Stall::InTick(Duration::from_millis(300)));
    assert!(skipped >= 5, "the runner skipped {skipped} ticks");
    assert_eq!(violations, MovementViolations::default());
    assert_eq!((mover.last_seq, mover.waiting()), (sent, 0));
}

/// The same when the process pauses between ticks: the late tick, not the
/// one after it, receives the inputs and earns the credit.
#[test]
fn an_honest_client_is_not_flagged_after_the_process_paused_between_ticks() {
    let (mover, violations, sent, _) = stall_run(Stall::BetweenTicks(Duration::from_millis(300)));
    assert_eq!(violations, MovementViolations::default());
    assert_eq!((mover.last_seq, mover.waiting()), (sent, 0));
}

/// The same when the inputs bunched by the pause reach a tick after the
/// late one (`net-io` still reading and decrypting them when the late
/// tick drained its queue): the allowance of the stall lasts until they
/// come.
#[test]
fn an_honest_client_is_not_flagged_when_its_inputs_arrive_a_tick_after_a_pause() {
    for lag in [1, 3] {
        let (mover, violations, sent, _) =
            stall_run_lagging(Stall::BetweenTicks(Duration::from_millis(300)), lag);
        assert_eq!(violations, MovementViolations::default(), "lag {lag}");
        assert_eq!((mover.last_seq, mover.waiting()), (sent, 0), "lag {lag}");
    }
}

/// A pause of two periods is caught up: the late tick earns the credit,
/// the catch-up ticks run right after it earn none.
#[test]
fn a_short_pause_is_made_up_once() {
    let (mover, violations, sent, skipped) =
        stall_run(Stall::BetweenTicks(Duration::from_millis(70)));
    assert_eq!(skipped, 0);
    assert_eq!(violations, MovementViolations::default());
    assert_eq!((mover.last_seq, mover.waiting()), (sent, 0));
}

/// After a longer stall, the inputs beyond what the next tick takes are
/// dropped, but still not flagged: the server stalled, not the client.
#[test]
fn inputs_bunched_by_a_long_stall_are_dropped_unflagged() {
    let (mover, violations, sent, skipped) = stall_run(Stall::InTick(Duration::from_secs(2)));
    assert!(skipped >= 50, "the runner skipped {skipped} ticks");
    assert_eq!(violations, MovementViolations::default());
    assert!(mover.last_seq < sent && mover.waiting() <= 4);
}

/// A client that sends as many inputs as a tick looks at, every tick.
#[derive(Resource)]
struct GreedyClient {
    player: Entity,
    sent: u32,
    /// The player's x after each tick.
    xs: Vec<f32>,
    stop_after: u64,
}

fn greedy_client_sends(
    mut client: ResMut<GreedyClient>,
    config: Res<MovementConfig>,
    mut out: MessageWriter<MoveCommand>,
) {
    for _ in 0..config.max_inputs_per_tick {
        client.sent += 1;
        out.write(MoveCommand {
            entity: client.player,
            input: MoveInput {
                seq: client.sent,
                velocity: Vec2::new(config.max_speed, 0.0),
                ack_snapshot: 0,
            },
        });
    }
}

fn greedy_client_records(
    mut client: ResMut<GreedyClient>,
    stats: Res<TickStats>,
    positions: Query<&Position>,
    mut exit: MessageWriter<AppExit>,
) {
    let x = positions.get(client.player).unwrap().0.x;
    client.xs.push(x);
    if stats.tick() == client.stop_after {
        exit.write(AppExit::Success);
    }
}

/// Catch-up ticks run right after a late one earn no credit: a client
/// sending as much as it may every tick moves, over the pause and the
/// ticks after it, one input per period of wall time (it banks nothing),
/// not one a tick run.
#[test]
fn catch_up_ticks_earn_no_credit() {
    // Tick 30 starts 70 ms late; ticks 31 and 32 catch up at once.
    let mut app = runner_app(&ManualClock::new(), 30, Duration::from_millis(70));
    let player = spawn(&mut app, Vec2::ZERO);
    app.insert_resource(GreedyClient {
        player,
        sent: 0,
        xs: Vec::new(),
        stop_after: 40,
    })
    .add_systems(First, greedy_client_sends)
    .add_systems(Last, greedy_client_records);
    let (sender, receiver) = std::sync::mpsc::channel();
    app.add_systems(
        Last,
        (move |exits: Res<Messages<AppExit>>, client: Res<GreedyClient>| {
            if !exits.is_empty() {
                let _ = sender.send(client.xs.clone());
            }
        })
        .after(greedy_client_records),
    );
    let config = app.world().resource::<MovementConfig>().clone();
    let step = config.max_speed / 30.0;
    assert_eq!(app.run(), AppExit::Success);
    let xs = receiver.recv().unwrap();
    // From the end of tick 29 to the end of tick 34: ticks 30 to 34 start
    // 5 periods apart (29 to 34 on the schedule); one more for rounding.
    let applied = ((xs[34] - xs[29]) / step).round();
    assert!(applied <= 6.0, "{applied} inputs in 5 periods");
    assert!(
        applied >= 4.0,
        "{applied} inputs in 5 periods: the credit came short"
    );
}

#[test]
fn nan_and_infinite_velocities_do_not_move_and_are_counted() {
    let mut app = app();
    let player = spawn(&mut app, Vec2::new(5.0, 5.0));
    let bad = [
        Vec2::new(f32::NAN, 0.0),
        Vec2::new(0.0, f32::INFINITY),
        Vec2::new(f32::NEG_INFINITY, f32::NAN),
    ];
    for (seq, velocity) in (1..).zip(bad) {
        send(&mut app, player, seq, velocity);
        app.update();
    }
    assert_eq!(position(&app, player), Vec2::new(5.0, 5.0));
    assert_eq!(violations(&app, player).non_finite, 3);
    assert_eq!(metric(&app, "non_finite"), 3);
}

#[test]
fn stale_and_replayed_inputs_are_ignored() {
    let mut app = app();
    let player = spawn(&mut app, Vec2::ZERO);
    send(&mut app, player, 10, Vec2::X);
    app.update();
    let after = position(&app, player);
    send(&mut app, player, 10, Vec2::X);
    send(&mut app, player, 3, Vec2::X);
    app.update();
    assert_eq!(position(&app, player), after);
    assert_eq!(app.world().get::<Mover>(player).unwrap().last_seq, 10);
    assert_eq!(violations(&app, player).total(), 0);
}

#[test]
fn the_world_bounds_hold() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let player = spawn(&mut app, config.world_max - Vec2::splat(0.1));
    for seq in 1..=30 {
        send(
            &mut app,
            player,
            seq,
            Vec2::ONE.normalize() * config.max_speed,
        );
        app.update();
    }
    assert_eq!(position(&app, player), config.world_max);
    assert_eq!(violations(&app, player).total(), 0);
}

#[test]
fn an_honest_wanderer_is_never_flagged_for_sixty_seconds() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    // Start near a corner so the walk also meets the world's edge.
    let start = config.world_min + Vec2::splat(3.0);
    let player = spawn(&mut app, start);
    let mut client = Predictor::new(config.rules(), tick_dt(30), start);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut track = vec![start];
    let mut heading = Vec2::X;
    for tick in 0..60 * 30 {
        if tick % 15 == 0 {
            let angle = rng.next_f32() * std::f32::consts::TAU;
            // Full speed half of the time: exactly at the limit.
            let speed = if rng.next_f32() < 0.5 {
                config.max_speed
            } else {
                rng.next_f32() * config.max_speed
            };
            heading = Vec2::from_angle(angle) * speed;
        }
        let input = client.input(heading, 0);
        app.world_mut().write_message(MoveCommand {
            entity: player,
            input,
        });
        app.update();
        let server = position(&app, player);
        track.push(server);
        let last = app.world().get::<Mover>(player).unwrap().last_seq;
        let correction = client.reconcile(server, last);
        assert!(
            correction < 1e-3,
            "tick {tick}: prediction off by {correction}"
        );
    }
    assert_eq!(violations(&app, player), MovementViolations::default());
    for kind in ["speed", "flood", "rate", "non_finite"] {
        assert_eq!(metric(&app, kind), 0, "{kind}");
    }
    let window = max_window_displacement(&track, 30);
    assert!(window <= 1.1 * config.max_speed, "{window}");
    assert!(window > 0.5 * config.max_speed, "the wanderer did wander");
}

/// The server moves a player to the bit where a client predicts it: the
/// same step, clamping once, with the tick period a client takes from the
/// welcome's tick rate (`1 / tick_hz`), for a velocity within the limit
/// and for one the step clamps.
#[test]
fn the_server_moves_a_player_to_the_bit_where_a_client_predicts() {
    let mut app = app();
    let rules = app.world().resource::<MovementConfig>().rules();
    let velocities = [Vec2::new(8.0, 0.0), Vec2::new(77.099_39, -51.053_047)];
    let mut players = Vec::new();
    for velocity in velocities {
        let player = spawn(&mut app, Vec2::ZERO);
        let mut client = Predictor::new(rules, 1.0 / 30.0, Vec2::ZERO);
        let input = client.input(velocity, 0);
        app.world_mut().write_message(MoveCommand {
            entity: player,
            input,
        });
        players.push((player, client));
    }
    app.update();
    for ((player, client), velocity) in players.iter().zip(velocities) {
        assert_eq!(position(&app, *player), client.position(), "{velocity}");
    }
}

#[test]
fn spawn_points_are_distinct_and_inside_the_world() {
    let config = MovementConfig::default();
    let points: Vec<Vec2> = config.spawn_points().take(1000).collect();
    for (i, p) in points.iter().enumerate() {
        assert!(p.cmpge(config.world_min).all() && p.cmple(config.world_max).all());
        for q in &points[..i] {
            assert!(p.distance(*q) > 0.5, "spawn {i} too close to another");
        }
    }
    assert_eq!(points[0], (config.world_min + config.world_max) / 2.0);
}

/// The spawn counter runs on for the server's life: past the spawns the
/// world holds, the spiral starts again from the centre instead of piling
/// players on the world's edge and corners.
#[test]
fn spawn_points_stay_off_the_edges_however_many_players_joined() {
    let config = MovementConfig {
        world_min: Vec2::new(-300.0, -100.0),
        world_max: Vec2::new(300.0, 100.0),
        ..MovementConfig::default()
    };
    let strictly_inside =
        |p: Vec2| p.cmpgt(config.world_min).all() && p.cmplt(config.world_max).all();
    for start in [0, 1_000, 10_000, 100_000, u32::MAX - 1_000] {
        let mut from = start;
        let points: Vec<Vec2> = (0..1_000)
            .map(|_| {
                let (at, next) = config.next_spawn(from);
                from = next;
                at
            })
            .collect();
        assert!(points.iter().all(|p| strictly_inside(*p)), "from {start}");
        let mut distinct = points.clone();
        distinct.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.y.total_cmp(&b.y)));
        distinct.dedup();
        // The world holds 600 x 200 / (pi x 12^2) = 265 spawns at the
        // spiral's density: a thousand in a row visit each about 4 times.
        assert!(distinct.len() >= 250, "from {start}: {}", distinct.len());
    }
}

/// Inputs travel unreliably: one lost (or overtaken by the next, which the
/// sequenced channel then drops as stale) used to leave the player a tick
/// short of where its client predicted it, and the client snapped back
/// when the next snapshot came. A gap of up to two inputs now moves the
/// player as the input after it does.
#[test]
fn inputs_lost_on_the_way_move_the_player_as_the_next_one_does() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let player = spawn(&mut app, Vec2::ZERO);
    let east = Vec2::new(config.max_speed, 0.0);
    let mut client = Predictor::new(config.rules(), dt(&app), Vec2::ZERO);
    let mut lost = 0;
    for tick in 1..=600u32 {
        let input = client.input(east, 0);
        // Every 20th input lost, and every 100th two in a row; the last
        // arrives.
        let dropped = tick < 600 && (tick % 20 == 0 || tick % 100 == 1);
        if dropped {
            lost += 1;
        } else {
            send(&mut app, player, input.seq, input.velocity);
        }
        app.update();
    }
    assert!(lost >= 35, "{lost} inputs lost");
    let mover = app.world().get::<Mover>(player).unwrap();
    assert_eq!((mover.last_seq, mover.waiting()), (600, 0));
    let predicted = client.reconcile(position(&app, player), mover.last_seq);
    assert!(
        predicted < 1e-3,
        "the client's prediction is {predicted} m off"
    );
    assert_eq!(violations(&app, player), MovementViolations::default());
}

/// Skipping sequence numbers to have gaps filled gains no speed: the
/// filled inputs are paid for with movement credit like the others.
#[test]
fn skipping_sequence_numbers_gains_no_speed() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let player = spawn(&mut app, Vec2::ZERO);
    let east = Vec2::new(config.max_speed, 0.0);
    let mut track = vec![Vec2::ZERO];
    for tick in 1..=300u32 {
        send(&mut app, player, tick * 3, east);
        app.update();
        track.push(position(&app, player));
    }
    let step = config.max_speed * dt(&app);
    let ticks = app.world().resource::<TickStats>().tick() as usize;
    let window = ticks.min(track.len() - 1);
    let most = max_window_displacement(&track, window);
    let bound = (window as f32 + config.burst_ticks as f32) * step;
    assert!(
        most <= bound + 1e-3,
        "{most} m over {window} ticks, bound {bound}"
    );
    assert!(
        app.world().get::<Mover>(player).unwrap().waiting()
            <= (config.burst_ticks + config.input_buffer) as usize
    );
}

/// A filled-in input gives way to a real one: a loss followed by a burst
/// the credit and buffer take (a delay spike after a loss) is not flagged.
#[test]
fn a_filled_input_gives_way_to_a_real_one() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let player = spawn(&mut app, Vec2::ZERO);
    let east = Vec2::new(config.max_speed, 0.0);
    send(&mut app, player, 1, east);
    app.update();
    for _ in 0..7 {
        app.update();
    }
    // Input 2 lost; 3 and the next ones held back, then all at once: as
    // many real inputs as the credit and the buffer take.
    let burst = config.burst_ticks + config.input_buffer;
    for seq in 3..3 + burst {
        send(&mut app, player, seq, east);
    }
    for _ in 0..10 {
        app.update();
    }
    assert_eq!(violations(&app, player), MovementViolations::default());
    assert_eq!(metric(&app, "rate"), 0);
    assert_eq!(
        app.world().get::<Mover>(player).unwrap().last_seq,
        2 + burst
    );
}

/// A filled-in input copies the next one's velocity, not its violation:
/// a speed hack after a loss is flagged once.
#[test]
fn a_filled_input_is_not_flagged_for_the_input_it_copies() {
    let mut app = app();
    let config = app.world().resource::<MovementConfig>().clone();
    let player = spawn(&mut app, Vec2::ZERO);
    send(&mut app, player, 1, Vec2::X);
    app.update();
    send(&mut app, player, 4, Vec2::new(config.max_speed * 10.0, 0.0));
    app.update();
    app.update();
    assert_eq!(violations(&app, player).speed, 1);
}
