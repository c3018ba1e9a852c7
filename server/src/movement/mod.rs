//! Server-authoritative movement: clients send [`MoveInput`]s on the
//! unreliable sequenced `MOVEMENT` channel; every tick the server validates
//! them and integrates positions with the same [`MovementRules::step`] the
//! clients predict with (see [`shared::movement`]).
//!
//! # The input model
//!
//! Each accepted input moves its player for exactly one tick; a tick
//! without input does not move the player. Validation, per input:
//!
//! | check | action | violation |
//! |---|---|---|
//! | `seq` not newer than the last accepted | dropped silently (a replay gains nothing) | — |
//! | `seq` one or two past the next expected (inputs lost on the way) | the missing ones move the player as this one, within the credit and the buffer (a real input takes a filled one's place there) | — |
//! | more than [`MovementConfig::max_inputs_per_tick`] this tick | dropped | `flood` |
//! | no movement credit left and the input buffer full (see below) | dropped | `rate` |
//! | non-finite velocity | applied as standing still | `non_finite` |
//! | speed above `max_speed × (1 + speed_tolerance)` | clamped to `max_speed` | `speed` |
//! | speed up to that | clamped to `max_speed`, not flagged | — |
//! | position outside the world | clamped to the bounds, not flagged | — |
//!
//! **Movement credit**: each player earns one input's worth of credit per
//! tick, and [`CREDIT_DRIFT_PER_MILLE`] ‰ more, and holds at most
//! [`MovementConfig::burst_ticks`], so that a jittery client whose inputs
//! arrive bunched is not punished, while over any window of `W` ticks at
//! most `W + burst_ticks - 1 + ⌊(W - 1) / 500⌋` inputs move the player.
//! The 0.2 % is for clients whose clocks run fast: one that is 50 ppm
//! fast sends an input more than the ticks every 11 minutes at 30 Hz, and
//! without it each would stay waiting for good (a tick of latency), and
//! those beyond the input buffer would be flagged. It takes 501 ticks to
//! earn an input more, so within any second (at most 128 ticks) the bound
//! is `W + burst_ticks - 1`: with the defaults (30 Hz, 3) displacement
//! over any second is at most `32/30 ≈ 1.07 ×` the maximum speed, over
//! longer windows 1.002 × plus the burst; a teleport is impossible.
//!
//! **Input buffer**: an input the credit does not cover yet waits, at most
//! [`MovementConfig::input_buffer`] of them per player, and moves the
//! player on a later tick, as credit comes. A client sending one input per
//! tick spends its bank on the first burst after a stall and earns it back
//! only by falling silent or from the 0.2 % (an input every 500 ticks);
//! without the buffer every later bunching of its inputs (two in one tick,
//! none in the next) would cost it an input. With it, bunched inputs are
//! late, never lost, and the credit bound above is unchanged (waiting does
//! not move the player); only a client that keeps sending faster than the
//! tick rate and the 0.2 % fills the buffer and loses inputs.
//!
//! **Stalls**: credit is earned per period of wall time, not per tick run
//! ([`TickStats::periods_this_tick`]). After a stall (the process paused,
//! a tick that overran by several periods) what clients sent meanwhile
//! arrives in one tick, which stands for that many periods: each player
//! earns credit for all of them, and may have as many more inputs over the
//! per-tick cap (both at most `burst_ticks + input_buffer` extra); catch-up
//! ticks run right after it earn none. Those inputs reach the tick only
//! once `net-io` has read them, which after a pause may be a few ticks
//! later: the raised caps last as many ticks after the stall as it earned
//! extra periods. An honest client's inputs move it as far as it would have
//! moved. The credit bound above holds for any window of wall time that
//! holds the stall or none of its allowance: credit a stall earned may be
//! spent in the ticks after it (late inputs look the same), so a window of
//! those ticks alone can see up to `burst_ticks + input_buffer` inputs more.
//! Inputs beyond that, after a tick that stands for more periods than it
//! earns (a longer stall), are dropped without being flagged
//! (`movement_inputs_late_total`) for as long; otherwise flooding is
//! flagged as always.
//!
//! Violations are counted per player in [`MovementViolations`], in the
//! `movement_violations_total{kind}` metric, and logged: a player's first,
//! then every hundredth, at most [`MAX_VIOLATION_LINES_PER_SECOND`] lines
//! a second, of them at most [`MAX_REPEAT_VIOLATION_LINES_PER_SECOND`]
//! repeats (so that a flood's repeats do not hide another player's first).
//! An honest client (one input per tick of its own clock, which may run up
//! to 0.2 % fast; speed at most `max_speed`) is never flagged, unless the
//! network holds its inputs back and hands over more than `burst_ticks +
//! input_buffer` ticks' worth at once (with the defaults, a delay spike of
//! over 230 ms): those beyond are flagged as rate or flood violations and
//! dropped.
//!
//! # Spawning
//!
//! A player who connects spawns at the next point of the spawn spiral
//! ([`MovementConfig::next_spawn`]), unless its account left less than
//! [`MovementConfig::rejoin_memory_secs`] ago: then it comes back where it
//! left ([`RejoinPositions`]), so that a reconnect is no free teleport and
//! a network blip does not lose a player its place. Its movement credit
//! is what the time it was away earned, not a full bank: reconnecting
//! every few ticks does not move a player faster. The memory is bounded
//! by [`MovementConfig::rejoin_memory_players`] (the longest gone are
//! forgotten first) and is not saved: after a restart of the server every
//! player starts on the spiral.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bevy_app::{App, FixedUpdate, Plugin};
use bevy_ecs::prelude::*;
use bevy_time::{Fixed, Time};
use glam::Vec2;
use shared::movement::{MovementRules, tick_dt};
use shared::protocol::channels;
use shared::protocol::movement::{MAX_WORLD_COORDINATE, MoveInput};

use crate::metrics::{Counter, Metrics};
use crate::net::{
    ClientConnected, ClientDisconnected, Clients, DepartedPositions, FromClient, NetAppExt, Player,
    SessionChange, session_changes,
};
use crate::tick::{TickRate, TickStats};
use crate::world::Position;

/// Movement rules and anti-cheat limits. [`MovementPlugin`] inserts the
/// defaults when the resource is absent.
#[derive(Resource, Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MovementConfig {
    /// Fastest allowed speed, m/s. Default 8.
    pub max_speed: f32,
    /// Lowest world corner, metres. Default (-1000, -1000).
    pub world_min: Vec2,
    /// Highest world corner, metres. Default (1000, 1000).
    pub world_max: Vec2,
    /// Inputs accepted per player per tick; more are dropped and counted
    /// as `flood`. Default 8; at least `burst_ticks + input_buffer`, what
    /// credit and buffer can take in one tick, so that an honest client's
    /// inputs bunched after a stall are late, not a flood.
    pub max_inputs_per_tick: u32,
    /// Movement credit a player can bank, in ticks (1 to
    /// [`MAX_BURST_TICKS`]). Default 3; keep it at most `tick_hz / 10 + 1`
    /// for the 1.1 × max-speed bound over one second.
    pub burst_ticks: u32,
    /// Inputs a player may have waiting for credit (arrived bunched);
    /// more are dropped and counted as `rate`. Default 4; 0 to
    /// [`MAX_INPUT_BUFFER`] (an unchecked larger value counts as that).
    /// Each waiting input adds a tick of latency to
    /// that player's movement until the client's inputs thin out.
    pub input_buffer: u32,
    /// Relative speed excess tolerated without a `speed` flag (clients'
    /// float normalisation is not exact). The speed is clamped anyway.
    /// Default 0.01.
    pub speed_tolerance: f32,
    /// Spacing of the spawn spiral, metres: players spawn at a uniform
    /// density of one per `π·spacing²` m² (about 25 within a 60 m view at
    /// the default 12), so neighbours do not grow with the player count.
    pub spawn_spacing: f32,
    /// How long the server keeps where a player left, seconds: an account
    /// back within it spawns there, not at the next spawn point (see
    /// "Spawning" in the module docs). Default 300; 0 forgets at once.
    pub rejoin_memory_secs: u32,
    /// Most departed players whose place is kept at once; past it the
    /// longest gone is forgotten (and spawns at the next spawn point when
    /// it comes back). Default 10,000, about a megabyte.
    pub rejoin_memory_players: u32,
}

impl Default for MovementConfig {
    fn default() -> Self {
        let rules = MovementRules::default();
        Self {
            max_speed: rules.max_speed,
            world_min: rules.world_min,
            world_max: rules.world_max,
            max_inputs_per_tick: 8,
            burst_ticks: 3,
            input_buffer: 4,
            speed_tolerance: 0.01,
            spawn_spacing: 12.0,
            rejoin_memory_secs: 300,
            rejoin_memory_players: 10_000,
        }
    }
}

impl MovementConfig {
    /// Why these values cannot run a game, if they cannot: a speed cap
    /// that is not a positive number (a NaN would lift it), a world whose
    /// corners are not finite or not in order, or no input applied at all.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn check(&self) -> Result<(), String> {
        let finite = |v: Vec2| v.is_finite();
        if !(self.max_speed.is_finite() && self.max_speed > 0.0) {
            return Err(format!(
                "max_speed must be a positive number of m/s, got {}",
                self.max_speed
            ));
        }
        if !(finite(self.world_min) && finite(self.world_max))
            || self.world_min.cmpge(self.world_max).any()
        {
            return Err(format!(
                "world_min {} must be below world_max {} on both axes",
                self.world_min, self.world_max
            ));
        }
        let reach = self.world_min.abs().max(self.world_max.abs()).max_element();
        if reach > MAX_WORLD_COORDINATE {
            return Err(format!(
                "world_min {} and world_max {} must lie within ±{MAX_WORLD_COORDINATE} m: \
                 farther out, 32-bit float positions cannot keep a tick's motion",
                self.world_min, self.world_max
            ));
        }
        if !(1..=MAX_BURST_TICKS).contains(&self.burst_ticks) {
            return Err(format!(
                "burst_ticks must be 1 to {MAX_BURST_TICKS}, got {}",
                self.burst_ticks
            ));
        }
        if self.input_buffer > MAX_INPUT_BUFFER {
            return Err(format!(
                "input_buffer must be 0 to {MAX_INPUT_BUFFER}, got {}",
                self.input_buffer
            ));
        }
        let can_take = self.burst_ticks + self.input_buffer;
        if self.max_inputs_per_tick < can_take {
            return Err(format!(
                "max_inputs_per_tick must be at least burst_ticks + input_buffer ({can_take}), \
                 got {}: an honest client's inputs bunched after a stall would be a flood",
                self.max_inputs_per_tick
            ));
        }
        for (name, value) in [
            ("speed_tolerance", self.speed_tolerance),
            ("spawn_spacing", self.spawn_spacing),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{name} must be zero or more, got {value}"));
            }
        }
        Ok(())
    }

    /// The rules clients need to predict (sent in every `Welcome`).
    pub fn rules(&self) -> MovementRules {
        MovementRules {
            max_speed: self.max_speed,
            world_min: self.world_min,
            world_max: self.world_max,
        }
    }

    /// The spawn point for the next player, searching from point `from` of
    /// a golden-angle spiral around the world centre (`spawn_spacing`
    /// apart), and where the search after it starts. Points on or past the
    /// world's edge are passed over, and past the last point that can lie
    /// inside the world the spiral starts again from the centre: however
    /// many players joined since the start, spawns keep the spiral's
    /// density (instead of piling up on the edges and corners).
    pub fn next_spawn(&self, from: u32) -> (Vec2, u32) {
        const GOLDEN_ANGLE: f64 = 2.399_963_229_728_653;
        let centre = (self.world_min + self.world_max) / 2.0;
        // Spiral point `i` is `spacing * sqrt(i)` from the centre: those
        // past the half diagonal are outside whatever the angle.
        let half_diagonal = f64::from((self.world_max - self.world_min).length() / 2.0);
        let spacing = f64::from(self.spawn_spacing);
        let reach = (half_diagonal / spacing).powi(2).floor();
        let points = if reach.is_finite() && reach < f64::from(u32::MAX) {
            reach as u32 + 1
        } else {
            u32::MAX
        };
        let mut i = from % points;
        // Point 0, the centre, is inside: the search ends within `points`.
        for _ in 0..points {
            let angle = f64::from(i) * GOLDEN_ANGLE;
            let r = spacing * f64::from(i).sqrt();
            let at = centre + Vec2::new(angle.cos() as f32, angle.sin() as f32) * r as f32;
            let next = i.wrapping_add(1) % points;
            if i == 0 || (at.cmpgt(self.world_min).all() && at.cmplt(self.world_max).all()) {
                return (at.clamp(self.world_min, self.world_max), next);
            }
            i = next;
        }
        (centre, 1 % points)
    }

    /// The spawn points players get in turn, from the server's start.
    pub fn spawn_points(&self) -> impl Iterator<Item = Vec2> + '_ {
        let mut from = 0;
        std::iter::from_fn(move || {
            let (at, next) = self.next_spawn(from);
            from = next;
            Some(at)
        })
    }
}

/// The largest [`MovementConfig::input_buffer`] honoured.
pub const MAX_INPUT_BUFFER: u32 = 64;

/// Most inputs missing before an accepted one that move the player as it
/// does (see the module docs): a gap of one or two is a loss on the way;
/// a longer one is an outage, after which the client reconciles.
pub const MAX_FILLED_INPUTS: u32 = 2;

/// The largest [`MovementConfig::burst_ticks`] accepted.
pub const MAX_BURST_TICKS: u32 = 64;

/// The movement credit a period of wall time earns beyond one input, in
/// thousandths of an input: what a client's clock may run fast without its
/// surplus inputs waiting for good (see "Movement credit" in the module
/// docs).
pub const CREDIT_DRIFT_PER_MILLE: u32 = 2;

/// Movement credit is counted in thousandths of an input.
const CREDIT_PER_INPUT: u32 = 1_000;

/// The credit one period of wall time earns, in thousandths of an input.
const CREDIT_PER_PERIOD: u32 = CREDIT_PER_INPUT + CREDIT_DRIFT_PER_MILLE;

/// A player's movement state on the server.
#[derive(Component, Debug, Clone, PartialEq)]
pub struct Mover {
    /// The last input sequence applied (echoed in snapshots).
    pub last_seq: u32,
    /// The velocity of the last applied input, after clamping.
    pub velocity: Vec2,
    /// In thousandths of an input ([`CREDIT_PER_INPUT`]).
    credit: u32,
    inputs_this_tick: u32,
    /// The newest input sequence accepted (applied or waiting).
    newest_seq: u32,
    /// Accepted inputs waiting for credit, oldest first.
    waiting: VecDeque<Waiting>,
}

impl Mover {
    /// A mover with full credit and no input yet.
    pub fn new(config: &MovementConfig) -> Self {
        // Twice: after a stall, credit for the skipped ticks comes on top.
        let room = 2 * (config.burst_ticks.max(1) + config.input_buffer.min(MAX_INPUT_BUFFER));
        Self {
            last_seq: 0,
            velocity: Vec2::ZERO,
            credit: config.burst_ticks.max(1) * CREDIT_PER_INPUT,
            inputs_this_tick: 0,
            newest_seq: 0,
            waiting: VecDeque::with_capacity(room as usize),
        }
    }

    /// The mover of a player back where it left (see "Spawning" in the
    /// module docs), `periods_away` periods of wall time after its last
    /// session ended: the credit those periods earn, up to the cap. Its
    /// last session may have spent its bank just before leaving, and would
    /// have at least this much now had it stayed; a full bank on every
    /// return would let a client that reconnects every other tick move
    /// twice the maximum speed.
    fn returning(config: &MovementConfig, periods_away: u32) -> Self {
        let full = Self::new(config);
        Self {
            credit: periods_away
                .saturating_mul(CREDIT_PER_PERIOD)
                .min(full.credit),
            ..full
        }
    }

    /// Inputs accepted and not applied yet.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Movement violations of one player, by kind.
#[derive(Component, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MovementViolations {
    /// Non-finite velocities.
    pub non_finite: u32,
    /// Speeds above the maximum (plus tolerance).
    pub speed: u32,
    /// Inputs over the per-tick cap.
    pub flood: u32,
    /// Inputs beyond the movement credit and the input buffer (sent
    /// faster than the tick rate for longer than the buffer absorbs).
    pub rate: u32,
}

impl MovementViolations {
    /// All violations (saturating: a session-long flood counts up to
    /// `u32::MAX`, not round to zero).
    pub fn total(&self) -> u32 {
        self.non_finite
            .saturating_add(self.speed)
            .saturating_add(self.flood)
            .saturating_add(self.rate)
    }
}

/// An input waiting for credit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Waiting {
    input: MoveInput,
    /// In place of one lost on the way (see [`MAX_FILLED_INPUTS`]): it gives
    /// way to a real input, and is not flagged for the one it copies.
    filled: bool,
}

/// An input for a player entity: what [`FromClient<MoveInput>`] becomes
/// once its client is resolved to its entity. Tests and in-process bots
/// write it directly.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
pub struct MoveCommand {
    /// The player entity.
    pub entity: Entity,
    /// The input.
    pub input: MoveInput,
}

/// The movement systems, in `FixedUpdate`, in this order.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MovementSystems {
    /// Spawns new players and resolves inputs to [`MoveCommand`]s.
    Receive,
    /// Validates inputs and moves players.
    Integrate,
}

#[derive(Resource, Default)]
struct SpawnCounter(u32);

/// Where players who left stood, by account, for their return (see
/// "Spawning" in the module docs): at most
/// [`MovementConfig::rejoin_memory_players`], none gone longer than
/// [`MovementConfig::rejoin_memory_secs`]. In memory only.
#[derive(Resource, Debug, Default)]
pub struct RejoinPositions {
    /// Each account's departure number (its key in `by_age`).
    by_account: HashMap<u64, u64>,
    /// By departure number, oldest first: the account, where it left and
    /// when (wall time, see `wall_time`).
    by_age: BTreeMap<u64, (u64, Vec2, Duration)>,
    next: u64,
}

impl RejoinPositions {
    /// Players whose place is kept.
    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    /// Whether no player's place is kept.
    pub fn is_empty(&self) -> bool {
        self.by_age.is_empty()
    }

    /// Keeps where `account` left, at `now` (wall time), forgetting the
    /// longest gone beyond `most` players.
    fn remember(&mut self, account: u64, at: Vec2, now: Duration, most: usize) {
        if let Some(earlier) = self.by_account.insert(account, self.next) {
            self.by_age.remove(&earlier);
        }
        self.by_age.insert(self.next, (account, at, now));
        self.next += 1;
        while self.by_age.len() > most
            && let Some((_, (gone, _, _))) = self.by_age.pop_first()
        {
            self.by_account.remove(&gone);
        }
    }

    /// Forgets the players gone for `keep` or longer at `now` (wall time).
    fn forget_older(&mut self, now: Duration, keep: Duration) {
        while let Some(oldest) = self.by_age.first_entry()
            && now.saturating_sub(oldest.get().2) >= keep
        {
            let (gone, _, _) = oldest.remove();
            self.by_account.remove(&gone);
        }
    }

    /// Where `account` left and when (wall time), if that is kept (and no
    /// longer after).
    fn take(&mut self, account: u64) -> Option<(Vec2, Duration)> {
        let key = self.by_account.remove(&account)?;
        self.by_age.remove(&key).map(|(_, at, when)| (at, when))
    }
}

#[derive(Resource, Clone)]
struct MovementMetrics {
    inputs: Counter,
    filled: Counter,
    non_finite: Counter,
    speed: Counter,
    flood: Counter,
    rate: Counter,
    late: Counter,
}

impl MovementMetrics {
    fn register(metrics: &Metrics) -> Self {
        let r = metrics.registry();
        let help = "Movement inputs that broke a rule, by kind.";
        let kind = |k: &str| {
            r.counter_with_labels("movement_violations_total", help, &[("kind", k)])
                .unwrap_or_default()
        };
        Self {
            inputs: r
                .counter("movement_inputs_total", "Movement inputs applied.")
                .unwrap_or_default(),
            filled: r
                .counter(
                    "movement_inputs_filled_total",
                    "Movement inputs lost on the way whose tick moved the player as the \
                     input after them (a gap of at most two).",
                )
                .unwrap_or_default(),
            non_finite: kind("non_finite"),
            speed: kind("speed"),
            flood: kind("flood"),
            rate: kind("rate"),
            late: r
                .counter(
                    "movement_inputs_late_total",
                    "Movement inputs dropped because a stall of the tick loop bunched more \
                     of them than the next tick takes (not violations).",
                )
                .unwrap_or_default(),
        }
    }
}

/// Validates and applies movement input; spawns players at
/// [`MovementConfig::next_spawn`] points when they connect, or where they
/// left when they come back (see "Spawning" in the module docs).
pub struct MovementPlugin;

impl Plugin for MovementPlugin {
    fn build(&self, app: &mut App) {
        let metrics = app.world_mut().get_resource_or_init::<Metrics>().clone();
        app.init_resource::<MovementConfig>()
            .init_resource::<SpawnCounter>()
            .init_resource::<RejoinPositions>()
            .init_resource::<StallAllowance>()
            .init_resource::<ViolationLog>()
            .insert_resource(MovementMetrics::register(&metrics))
            .add_client_message::<MoveInput>(channels::MOVEMENT)
            .add_message::<MoveCommand>()
            .add_message::<ClientConnected>()
            .add_message::<ClientDisconnected>()
            .configure_sets(
                FixedUpdate,
                MovementSystems::Receive.before(MovementSystems::Integrate),
            )
            .add_systems(
                FixedUpdate,
                (spawn_players, resolve_inputs).in_set(MovementSystems::Receive),
            )
            .add_systems(
                FixedUpdate,
                (refill_credit, apply_inputs)
                    .chain()
                    .in_set(MovementSystems::Integrate),
            );
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one system takes a tick's joins and leaves in their order"
)]
fn spawn_players(
    mut connected: MessageReader<ClientConnected>,
    mut disconnected: MessageReader<ClientDisconnected>,
    departed: Option<Res<DepartedPositions>>,
    config: Res<MovementConfig>,
    time: Res<Time<Fixed>>,
    stats: Option<Res<TickStats>>,
    mut counter: ResMut<SpawnCounter>,
    mut rejoins: ResMut<RejoinPositions>,
    mut commands: Commands,
) {
    let now = wall_time(&time, stats.as_deref());
    let period = time.timestep().max(Duration::from_nanos(1));
    let keep = Duration::from_secs(config.rejoin_memory_secs.into());
    rejoins.forget_older(now, keep);
    // Places taken this tick by sessions that may leave within it (their
    // entity never placed): those leave the place as they found it.
    let mut taken: Vec<(shared::io::ClientId, Vec2)> = Vec::new();
    // In order per account: one that left and came back within the tick
    // comes back where it left.
    for change in session_changes(&mut connected, &mut disconnected) {
        match change {
            SessionChange::Left(ClientDisconnected { client, .. }) => {
                let at = departed
                    .as_ref()
                    .and_then(|d| d.0.get(&client.account).copied())
                    .or_else(|| taken.iter().find(|(c, _)| *c == client).map(|(_, at)| *at));
                if let Some(at) = at {
                    let most = config.rejoin_memory_players as usize;
                    rejoins.remember(client.account, at, now, most);
                    rejoins.forget_older(now, keep);
                }
            }
            SessionChange::Joined(ClientConnected { client, entity }) => {
                let (at, mover) = match rejoins.take(client.account) {
                    Some((left_at, left_when)) => {
                        taken.push((client, left_at));
                        let away = now.saturating_sub(left_when).as_nanos() / period.as_nanos();
                        (
                            left_at.clamp(config.world_min, config.world_max),
                            Mover::returning(&config, u32::try_from(away).unwrap_or(u32::MAX)),
                        )
                    }
                    None => {
                        let (at, next) = config.next_spawn(counter.0);
                        counter.0 = next;
                        (at, Mover::new(&config))
                    }
                };
                if let Ok(mut e) = commands.get_entity(entity) {
                    e.insert((Position(at), mover, MovementViolations::default()));
                }
            }
        }
    }
}

fn resolve_inputs(
    mut inputs: MessageReader<FromClient<MoveInput>>,
    clients: Option<Res<Clients>>,
    mut commands: MessageWriter<MoveCommand>,
) {
    let Some(clients) = clients else {
        inputs.clear();
        return;
    };
    for FromClient { client, message } in inputs.read() {
        if let Some(entity) = clients.entity(*client) {
            commands.write(MoveCommand {
                entity,
                input: *message,
            });
        }
    }
}

/// Time since the first tick, in wall time: the runner's uptime, which
/// goes on through a stall, where the ticks run times the period fall
/// behind it (by every deadline the pacer gives up, whole pauses of the
/// process included); the ticks run when no runner drives the app (tests
/// that call `update` themselves). What the rejoin memory and the
/// violation log's budget count their seconds in.
fn wall_time(time: &Time<Fixed>, stats: Option<&TickStats>) -> Duration {
    let ticks = time.elapsed();
    stats.map_or(ticks, |stats| stats.uptime().max(ticks))
}

/// The periods of wall time this tick earns credit for, of them the ones
/// beyond one, and whether the tick stands for more periods than that
/// (an honest client's inputs for them may then not all fit: those left
/// over are dropped unflagged). See "Stalls" in the module docs.
fn periods_earned(config: &MovementConfig, stats: Option<&TickStats>) -> (u32, u32, bool) {
    let periods = stats.map_or(1, TickStats::periods_this_tick);
    let most_extra = config.burst_ticks.max(1) + config.input_buffer.min(MAX_INPUT_BUFFER);
    let earned = periods.min(1 + most_extra);
    (earned, earned.saturating_sub(1), periods > earned)
}

/// What recent stalls allow this tick: a stall's inputs reach the tick it
/// ends in only if `net-io` has read them by then, and may come over the
/// next ticks instead, so each stall's allowance lasts as many ticks after
/// it as it earned extra periods. See "Stalls" in the module docs.
#[derive(Resource, Debug, Default, Clone)]
struct StallAllowance {
    /// Extra periods earned, on top of the credit cap and of the inputs a
    /// tick takes: the largest of the stalls in force.
    extra: u32,
    /// A stall in force stood for more periods than it earned: inputs
    /// beyond the caps are dropped unflagged.
    late: bool,
    /// The stalls in force, each with its own expiry: extra periods, late,
    /// ticks after this one it holds for. At most one a tick, each for at
    /// most `burst_ticks + input_buffer` ticks.
    stalls: VecDeque<(u32, bool, u32)>,
}

impl StallAllowance {
    /// Moves on to a tick that earned `extra` periods beyond one (`late`:
    /// it stood for more than it earned).
    fn next(&mut self, extra: u32, late: bool) {
        self.stalls
            .retain_mut(|(_, _, ticks_after)| match ticks_after.checked_sub(1) {
                Some(left) => {
                    *ticks_after = left;
                    true
                }
                None => false,
            });
        if extra > 0 {
            self.stalls.push_back((extra, late, extra));
        }
        self.extra = self.stalls.iter().map(|s| s.0).max().unwrap_or(0);
        self.late = self.stalls.iter().any(|s| s.1);
    }
}

fn refill_credit(
    config: Res<MovementConfig>,
    stats: Option<Res<TickStats>>,
    mut allowance: ResMut<StallAllowance>,
    mut movers: Query<&mut Mover>,
) {
    let (earned, extra, late) = periods_earned(&config, stats.as_deref());
    allowance.next(extra, late);
    let cap = (config.burst_ticks.max(1) + allowance.extra) * CREDIT_PER_INPUT;
    for mut mover in &mut movers {
        mover.credit = (mover.credit + earned * CREDIT_PER_PERIOD).min(cap);
        mover.inputs_this_tick = 0;
    }
}

/// What went wrong with one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Violation {
    NonFinite,
    Speed,
    Flood,
    Rate,
}

#[expect(
    clippy::too_many_arguments,
    reason = "one system validates and applies a tick's inputs in order"
)]
fn apply_inputs(
    mut inputs: MessageReader<MoveCommand>,
    config: Res<MovementConfig>,
    allowance: Res<StallAllowance>,
    time: Res<Time<Fixed>>,
    stats: Option<Res<TickStats>>,
    metrics: Res<MovementMetrics>,
    mut log: ResMut<ViolationLog>,
    mut players: Query<(
        Entity,
        &mut Position,
        &mut Mover,
        &mut MovementViolations,
        Option<&Player>,
    )>,
) {
    let now = wall_time(&time, stats.as_deref());
    log.roll(now);
    let buffer = config.input_buffer.min(MAX_INPUT_BUFFER) as usize;
    let (extra, stalled) = (allowance.extra, allowance.late);
    let max_inputs = config.max_inputs_per_tick.saturating_add(extra);
    for MoveCommand { entity, input } in inputs.read() {
        let Ok((_, _, mut mover, mut violations, player)) = players.get_mut(*entity) else {
            continue;
        };
        if input.seq <= mover.newest_seq {
            continue;
        }
        mover.inputs_this_tick = mover.inputs_this_tick.saturating_add(1);
        let full = |mover: &Mover| {
            mover.waiting.len() >= (mover.credit / CREDIT_PER_INPUT) as usize + buffer
        };
        if mover.inputs_this_tick <= max_inputs && full(&mover) {
            // A real input takes the place of the newest filled one.
            if let Some(at) = mover.waiting.iter().rposition(|w| w.filled) {
                mover.waiting.remove(at);
            }
        }
        let violation = if mover.inputs_this_tick > max_inputs {
            Some(Violation::Flood)
        } else if full(&mover) {
            Some(Violation::Rate)
        } else {
            None
        };
        if let Some(violation) = violation {
            if stalled {
                metrics.late.inc();
            } else {
                record(
                    violation,
                    *entity,
                    &mut violations,
                    player,
                    &metrics,
                    &mut log,
                    now,
                );
            }
        } else {
            // Inputs missing just before this one were lost on the way (or
            // overtaken by it: the channel drops them as stale). They move
            // the player as this one does, so that it ends up where its
            // client predicted (a player keeps a heading for many ticks),
            // paid for with credit like any input, in the room the buffer
            // has left (never at the cost of this one).
            let missing = input.seq - mover.newest_seq - 1;
            let room = ((mover.credit / CREDIT_PER_INPUT) as usize + buffer)
                .saturating_sub(mover.waiting.len() + 1);
            let filled = missing.min(MAX_FILLED_INPUTS).min(room as u32);
            if missing <= MAX_FILLED_INPUTS {
                for seq in input.seq - filled..input.seq {
                    mover.waiting.push_back(Waiting {
                        input: MoveInput { seq, ..*input },
                        filled: true,
                    });
                }
            }
            mover.newest_seq = input.seq;
            mover.waiting.push_back(Waiting {
                input: *input,
                filled: false,
            });
        }
    }

    let rules = config.rules();
    // What clients predict with, from the welcome's tick rate (at most
    // MAX_TICK_HZ, which a u16 holds).
    let hz = stats.map_or_else(TickRate::default, |s| s.rate()).hz();
    let dt = tick_dt(u16::try_from(hz).unwrap_or(u16::MAX));
    let flag_above = config.max_speed * (1.0 + config.speed_tolerance.max(0.0));
    for (entity, mut position, mut mover, mut violations, player) in &mut players {
        // Read through `Deref` first: a player with nothing to apply is not
        // marked changed.
        if mover.waiting.is_empty() || mover.credit < CREDIT_PER_INPUT {
            continue;
        }
        while mover.credit >= CREDIT_PER_INPUT
            && let Some(Waiting { input, filled }) = mover.waiting.pop_front()
        {
            mover.credit -= CREDIT_PER_INPUT;
            mover.last_seq = input.seq;
            if filled {
                metrics.filled.inc();
            } else {
                metrics.inputs.inc();
            }
            // The step clamps, as the client's: once.
            mover.velocity = rules.clamp_velocity(input.velocity).unwrap_or(Vec2::ZERO);
            position.0 = rules.step(position.0, input.velocity, dt);
            // A filled input copies the next one's velocity: that one is
            // flagged for it.
            let violation = if filled {
                None
            } else if !input.velocity.is_finite() {
                Some(Violation::NonFinite)
            } else if input.velocity.length() > flag_above {
                Some(Violation::Speed)
            } else {
                None
            };
            if let Some(violation) = violation {
                record(
                    violation,
                    entity,
                    &mut violations,
                    player,
                    &metrics,
                    &mut log,
                    now,
                );
            }
        }
    }
}

/// Most "movement violation" lines a second, all players together: many
/// flooding clients must not turn the log (written from the tick) into
/// their amplifier. The metrics count every violation.
pub const MAX_VIOLATION_LINES_PER_SECOND: u32 = 10;

/// Of [`MAX_VIOLATION_LINES_PER_SECOND`], the most that may be repeats (a
/// player's hundredth violation, two hundredth, ...): the rest is kept for
/// players' first violations, which a flood of one connection's repeats
/// would otherwise leave out.
pub const MAX_REPEAT_VIOLATION_LINES_PER_SECOND: u32 = 5;

/// The budget of violation log lines: [`MAX_VIOLATION_LINES_PER_SECOND`]
/// per second of wall time, of them at most
/// [`MAX_REPEAT_VIOLATION_LINES_PER_SECOND`] repeats, and one line a
/// second saying how many were left out.
#[derive(Resource, Debug, Default)]
pub struct ViolationLog {
    second: u64,
    lines: u32,
    repeats: u32,
    suppressed: u64,
}

impl ViolationLog {
    /// Starts the second of wall time `now` if it is a new one, saying
    /// how many lines the last one left out (returned too). The movement
    /// system calls it every tick, so the count is said within a second,
    /// not at the next violation.
    pub fn roll(&mut self, now: Duration) -> Option<u64> {
        let second = now.as_secs();
        if second == self.second {
            return None;
        }
        let suppressed = std::mem::replace(
            self,
            Self {
                second,
                ..Self::default()
            },
        )
        .suppressed;
        (suppressed > 0).then(|| {
            tracing::warn!(
                suppressed,
                "movement violation lines left out (at most {MAX_VIOLATION_LINES_PER_SECOND} \
                 a second; movement_violations_total counts them all)"
            );
            suppressed
        })
    }

    /// Whether the line of a player's first violation may be written at
    /// wall time `now`.
    pub fn admit_first(&mut self, now: Duration) -> bool {
        self.roll(now);
        self.admit(self.lines < MAX_VIOLATION_LINES_PER_SECOND)
    }

    /// Whether the line of a repeat (a player's hundredth violation, ...)
    /// may be written at wall time `now`.
    pub fn admit_repeat(&mut self, now: Duration) -> bool {
        self.roll(now);
        let admitted = self.admit(
            self.lines < MAX_VIOLATION_LINES_PER_SECOND
                && self.repeats < MAX_REPEAT_VIOLATION_LINES_PER_SECOND,
        );
        self.repeats += u32::from(admitted);
        admitted
    }

    /// Counts a line written if `room`, else left out.
    fn admit(&mut self, room: bool) -> bool {
        if room {
            self.lines += 1;
        } else {
            self.suppressed += 1;
        }
        room
    }

    /// Lines left out in the current second.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Counts a violation for its player and in the metrics, and logs a
/// player's first and every hundredth, within the [`ViolationLog`]'s
/// budget (the first within its part kept for them).
fn record(
    violation: Violation,
    entity: Entity,
    violations: &mut MovementViolations,
    player: Option<&Player>,
    metrics: &MovementMetrics,
    log: &mut ViolationLog,
    now: Duration,
) {
    let (count, counter) = match violation {
        Violation::NonFinite => (&mut violations.non_finite, &metrics.non_finite),
        Violation::Speed => (&mut violations.speed, &metrics.speed),
        Violation::Flood => (&mut violations.flood, &metrics.flood),
        Violation::Rate => (&mut violations.rate, &metrics.rate),
    };
    *count = count.saturating_add(1);
    counter.inc();
    let total = violations.total();
    let admitted = match total {
        1 => log.admit_first(now),
        _ if total.is_multiple_of(100) => log.admit_repeat(now),
        _ => false,
    };
    if admitted {
        let account = player.map(|p| p.client.account);
        tracing::warn!(?entity, ?account, ?violation, total, "movement violation");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_lines_keep_to_their_budget_a_second() {
        let mut log = ViolationLog::default();
        let second = |s: u64, ms: u64| Duration::from_secs(s) + Duration::from_millis(ms);
        // Repeats first: they take their part and leave the rest to firsts.
        let repeats = (0..1_000)
            .filter(|&i| log.admit_repeat(second(5, i % 1000)))
            .count();
        assert_eq!(repeats, MAX_REPEAT_VIOLATION_LINES_PER_SECOND as usize);
        let firsts = (0..1_000)
            .filter(|&i| log.admit_first(second(5, i % 1000)))
            .count();
        assert_eq!(repeats + firsts, MAX_VIOLATION_LINES_PER_SECOND as usize);
        assert_eq!(log.suppressed(), 1_990);
        assert_eq!(log.roll(second(5, 999)), None, "the same second");
        assert_eq!(
            log.roll(second(6, 0)),
            Some(1_990),
            "said as the next begins"
        );
        assert_eq!(log.roll(second(7, 0)), None, "and once");
        assert!(log.admit_repeat(second(7, 1)), "a new second, a new budget");
        assert_eq!(log.suppressed(), 0);
        // Firsts may take all of it, and then nothing more is written.
        for ms in 2..=u64::from(MAX_VIOLATION_LINES_PER_SECOND) {
            assert!(log.admit_first(second(7, ms)));
        }
        assert!(!log.admit_first(second(7, 500)));
        assert!(!log.admit_repeat(second(7, 500)));
    }

    #[test]
    fn violation_counts_saturate_instead_of_wrapping() {
        let violations = MovementViolations {
            non_finite: u32::MAX,
            speed: 1,
            flood: 2,
            rate: 3,
        };
        assert_eq!(violations.total(), u32::MAX);
    }

    #[test]
    fn a_world_larger_than_positions_can_travel_is_refused() {
        let big = MovementConfig {
            world_max: Vec2::new(1.0e8, 10.0),
            ..MovementConfig::default()
        };
        let error = big.check().unwrap_err();
        assert!(error.contains("world_max"), "{error}");
        let edge = MovementConfig {
            world_min: Vec2::splat(-MAX_WORLD_COORDINATE),
            world_max: Vec2::splat(MAX_WORLD_COORDINATE),
            ..MovementConfig::default()
        };
        assert_eq!(edge.check(), Ok(()));
        let far = shared::protocol::movement::quantize(edge.world_max);
        assert!(
            far.x < i32::MAX,
            "the edge still quantizes without saturating"
        );
        // At the edge a tick's motion keeps its length within 1 %.
        let rules = edge.rules();
        let dt = 1.0 / 30.0;
        let from = Vec2::new(MAX_WORLD_COORDINATE - 100.0, 0.0);
        let moved = rules.step(from, Vec2::new(rules.max_speed, 0.0), dt).x - from.x;
        let expected = rules.max_speed * dt;
        assert!(
            (moved - expected).abs() <= 0.01 * expected,
            "moved {moved} m, expected {expected} m"
        );
    }

    #[test]
    fn a_stalls_allowance_lasts_as_many_ticks_after_it_as_it_earned_extra_periods() {
        let mut allowance = StallAllowance::default();
        allowance.next(5, true);
        for _ in 0..5 {
            assert_eq!((allowance.extra, allowance.late), (5, true));
            allowance.next(0, false);
        }
        assert_eq!((allowance.extra, allowance.late), (5, true));
        allowance.next(0, false);
        assert_eq!((allowance.extra, allowance.late), (0, false));
        assert!(allowance.stalls.is_empty());
        // A second stall within the first's allowance: the larger while
        // both hold, then the second's own for what is left of it.
        allowance.next(3, false);
        allowance.next(0, false);
        allowance.next(2, true);
        assert_eq!((allowance.extra, allowance.late), (3, true));
        allowance.next(0, false);
        assert_eq!((allowance.extra, allowance.late), (3, true));
        allowance.next(0, false);
        assert_eq!((allowance.extra, allowance.late), (2, true));
        allowance.next(0, false);
        assert_eq!((allowance.extra, allowance.late), (0, false));
    }

    /// A loaded tick loop earns two periods every other tick: each such
    /// tick's small allowance must not keep a big stall's in force.
    #[test]
    fn small_stalls_in_a_row_do_not_prolong_a_big_ones_allowance() {
        let mut allowance = StallAllowance::default();
        allowance.next(7, true);
        for tick in 0..300 {
            allowance.next(u32::from(tick % 2 == 0), false);
        }
        assert!(!allowance.late);
        assert!(allowance.extra <= 1, "{allowance:?}");
        assert!(allowance.stalls.len() <= 2, "{allowance:?}");
    }
}
