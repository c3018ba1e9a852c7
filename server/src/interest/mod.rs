//! Area of interest and replication: every tick each viewer (a connected
//! player, from its first movement input on: see [`Viewer`]) receives a
//! [`Snapshot`] of the entities near it, so a client's bandwidth grows
//! with its neighbours, not with the number of players.
//!
//! - **Who is replicated**: every entity with a [`Position`]; each gets a
//!   [`NetId`] (not reused in the first 4 billion spawns, so a client
//!   does not mistake a newcomer for someone who left).
//! - **Who sees what**: a [`SpatialGrid`] of [`InterestConfig::cell_size`]
//!   cells, rebuilt each tick. An entity enters a viewer's view within
//!   [`InterestConfig::radius`] and leaves beyond `radius + hysteresis`.
//!   The viewer's own entity is always first. At most
//!   [`InterestConfig::max_entities`], nearest first.
//! - **What is sent**: a delta against the last snapshot the client
//!   acknowledged (`MoveInput::ack_snapshot`), or a full snapshot when that
//!   is unknown, older than [`InterestConfig::baseline_history`] ticks, or
//!   0 (the client holds none: its first input, or it started again).
//!   At most [`InterestConfig::snapshot_budget_bytes`] per delta; when
//!   its updates do not all fit, they go first for the viewer and, at the
//!   position the client holds, for entities updated or added by
//!   snapshots it has not acknowledged yet (the client rebuilds each
//!   delta from the acknowledged snapshot: a delta left without them would
//!   take them back to an older position, or make them vanish), and at
//!   their own position for entities moved since the acknowledged
//!   snapshot that left the view after it and came back, then for
//!   the nearest, in half the room left, then round the view in id order
//!   (each such delta's round going on from the first update the last one
//!   left out) until the budget is spent. The rest keep the acknowledged
//!   snapshot's state until a later tick. So an entity never goes back in
//!   time at the client: the nearest are updated every tick, every other
//!   entity in its turn, each update sent again until acknowledged (a
//!   round trip: with acknowledgements two ticks behind, the turns come
//!   half as often). Only the first deltas after full snapshots not
//!   acknowledged yet, which no budget holds, take the farthest back.
//!   Leaving entities are always announced (`removed`). A full snapshot
//!   replaces the client's state, so it carries the whole view whatever
//!   the budget.
//!
//! The wire format and quantization are documented in
//! [`shared::protocol::movement`]; the client side is
//! [`shared::movement::SnapshotReceiver`]. The core ([`SpatialGrid`],
//! [`ClientView`]) is plain data that tests and benchmarks drive without
//! bevy.

mod grid;
mod view;

use std::collections::HashSet;

use bevy_app::{App, FixedUpdate, Plugin};
use bevy_ecs::prelude::*;
use glam::{IVec2, Vec2};
use shared::movement::{CLIENT_SNAPSHOT_HISTORY, MAX_SNAPSHOT_ENTITIES};
use shared::prefetch::prefetch;
use shared::protocol::NetMessage;
use shared::protocol::channels;
use shared::protocol::movement::{Snapshot, SnapshotBody, quantize};

pub use grid::{MAX_GRID_CELLS, SpatialGrid};
pub use view::{
    Candidate, ClientView, ENTRY_MAX, EncodeScratch, EncodeStats, SNAPSHOT_HEADER_MAX,
    SnapshotLimits,
};

use crate::metrics::{Counter, Metrics};
use crate::movement::{MoveCommand, MovementSystems, Mover};
use crate::net::{ClientConnected, NetAppExt, NetSender, Player};
use crate::world::Position;

/// Area-of-interest and snapshot limits. [`InterestPlugin`] inserts the
/// defaults when the resource is absent, and corrects invalid values (with
/// a warning) at startup.
#[derive(Resource, Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterestConfig {
    /// Grid cell size, metres (at least 1). Default 32.
    pub cell_size: f32,
    /// Entities within this distance enter the view, metres. Default 60.
    pub radius: f32,
    /// A visible entity leaves the view only beyond `radius + hysteresis`,
    /// so that one walking along the edge does not flicker. Default 8.
    pub hysteresis: f32,
    /// Most bytes per delta snapshot (message id included; the transport
    /// adds its own headers). At 30 Hz the default 1000 caps a client at
    /// 30 kB/s of snapshots, but for full snapshots (a client's first, or
    /// one after its acknowledgements stopped), which carry the whole view
    /// (up to about 11 bytes an entity). At least
    /// [`SnapshotLimits::min_budget`] and at most
    /// [`SnapshotLimits::max_budget`] of `max_entities` (the largest
    /// snapshot the transport queues, when a delta of that many entities
    /// could be larger).
    pub snapshot_budget_bytes: usize,
    /// Most entities in one view, nearest first (1..=
    /// [`MAX_SNAPSHOT_ENTITIES`], what a client holds). Default 128.
    pub max_entities: usize,
    /// Sent snapshots kept per client as delta baselines, in ticks
    /// (1..=[`CLIENT_SNAPSHOT_HISTORY`]). An acknowledgement older than this
    /// gets a full snapshot, so a client whose acks take longer (its round
    /// trip plus a tick) gets only full ones. Default 16 (533 ms at 30 Hz;
    /// 125 ms at 128 Hz, where the server warns at start).
    pub baseline_history: usize,
}

impl Default for InterestConfig {
    fn default() -> Self {
        Self {
            cell_size: 32.0,
            radius: 60.0,
            hysteresis: 8.0,
            snapshot_budget_bytes: 1000,
            max_entities: 128,
            baseline_history: 16,
        }
    }
}

impl InterestConfig {
    /// Every setting out of its range: its name and what it must be.
    fn invalid(&self) -> Vec<(&'static str, String)> {
        let mut invalid = Vec::new();
        let mut check = |field, bad: bool, rule: String| {
            if bad {
                invalid.push((field, rule));
            }
        };
        check(
            "cell_size",
            !(self.cell_size.is_finite() && self.cell_size >= 1.0),
            format!("must be at least 1 m, got {}", self.cell_size),
        );
        check(
            "radius",
            !(self.radius.is_finite() && self.radius > 0.0),
            format!("must be a positive number of metres, got {}", self.radius),
        );
        check(
            "hysteresis",
            !(self.hysteresis.is_finite() && self.hysteresis >= 0.0),
            format!("must be 0 m or more, got {}", self.hysteresis),
        );
        // Clients refuse a view larger than they hold.
        check(
            "max_entities",
            !(1..=MAX_SNAPSHOT_ENTITIES).contains(&self.max_entities),
            format!(
                "must be 1 to {MAX_SNAPSHOT_ENTITIES}, got {}",
                self.max_entities
            ),
        );
        let max_entities = self.max_entities.clamp(1, MAX_SNAPSHOT_ENTITIES);
        let min = SnapshotLimits::min_budget(max_entities);
        check(
            "snapshot_budget_bytes",
            self.snapshot_budget_bytes < min,
            format!(
                "must be at least {min} for max_entities {}, got {}",
                self.max_entities, self.snapshot_budget_bytes
            ),
        );
        let max = SnapshotLimits::max_budget(max_entities);
        check(
            "snapshot_budget_bytes",
            self.snapshot_budget_bytes > max,
            format!(
                "must be at most {max} (the largest snapshot the transport queues; a \
                 delta of max_entities {} can be {} bytes), got {}",
                self.max_entities,
                SnapshotLimits::max_delta(max_entities),
                self.snapshot_budget_bytes
            ),
        );
        check(
            "baseline_history",
            !(1..=CLIENT_SNAPSHOT_HISTORY).contains(&self.baseline_history),
            format!(
                "must be 1 to {CLIENT_SNAPSHOT_HISTORY}, got {}",
                self.baseline_history
            ),
        );
        invalid
    }

    /// Whether every value is in its range (what the config file's
    /// `[interest]` must pass); else the first one out, named.
    ///
    /// # Errors
    /// The setting and what it must be.
    pub fn check(&self) -> Result<(), String> {
        match self.invalid().into_iter().next() {
            Some((field, rule)) => Err(format!("{field} {rule}")),
            None => Ok(()),
        }
    }

    /// This configuration with every value brought into its valid range;
    /// each correction is logged.
    pub fn validated(mut self) -> Self {
        let defaults = Self::default();
        for (field, rule) in self.invalid() {
            tracing::warn!(field, rule, "invalid interest setting; corrected");
            match field {
                "cell_size" => self.cell_size = defaults.cell_size,
                "radius" => self.radius = defaults.radius,
                "hysteresis" => self.hysteresis = 0.0,
                "max_entities" => {
                    self.max_entities = self.max_entities.clamp(1, MAX_SNAPSHOT_ENTITIES);
                }
                "baseline_history" => {
                    self.baseline_history = self.baseline_history.clamp(1, CLIENT_SNAPSHOT_HISTORY);
                }
                _ => {}
            }
        }
        // After max_entities is in range: the budget it needs, and the
        // most its deltas may use.
        self.snapshot_budget_bytes = self.snapshot_budget_bytes.clamp(
            SnapshotLimits::min_budget(self.max_entities),
            SnapshotLimits::max_budget(self.max_entities),
        );
        self
    }

    /// The per-snapshot limits.
    pub fn limits(&self) -> SnapshotLimits {
        SnapshotLimits {
            budget_bytes: self.snapshot_budget_bytes,
            max_entities: self.max_entities,
            history: self.baseline_history,
        }
    }
}

/// The id an entity has on the wire. Ids count up from 1; after
/// `u32::MAX` they go round again, skipping those still held, so an id is
/// never reused while its entity lives, and not at all in the first 4
/// billion spawns. After the wrap an id may come back soon after its
/// entity went: a client that still holds the old one (its baseline
/// unacknowledged) then takes the newcomer for it.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetId(pub u32);

/// An entity that receives snapshots: its view state.
///
/// A connected player's viewer starts [`Viewer::awaiting_input`]: its
/// snapshot stream starts with its first movement input (whose
/// `ack_snapshot` of 0 asks for a full snapshot), so clients that never
/// move (chat-only tools, spectator probes) cost no snapshot bandwidth.
/// [`Viewer::default`] streams from the first tick (in-process viewers).
#[derive(Component, Debug)]
pub struct Viewer {
    view: ClientView,
    streaming: bool,
}

impl Default for Viewer {
    fn default() -> Self {
        Self {
            view: ClientView::new(),
            streaming: true,
        }
    }
}

impl Viewer {
    /// A viewer that receives nothing until its first movement input.
    pub fn awaiting_input() -> Self {
        Self {
            streaming: false,
            ..Self::default()
        }
    }

    /// Whether snapshots are being sent.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// The view state (what was sent, what was acknowledged).
    pub fn view(&self) -> &ClientView {
        &self.view
    }
}

/// A snapshot for a viewer that has no network connection ([`Player`]):
/// in-process bots, tests. Connected players get theirs encoded straight
/// into the tick's batch (a [`NetSender<Snapshot>`]) on the `SNAPSHOT`
/// channel.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct LocalSnapshot {
    /// The viewer.
    pub entity: Entity,
    /// Its snapshot.
    pub snapshot: Snapshot,
    /// How it was encoded.
    pub stats: EncodeStats,
}

/// The snapshot tick: 1 for the first tick's snapshots, then one more per
/// tick.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTick(pub u32);

/// The interest systems, in `FixedUpdate` after [`MovementSystems`].
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterestSystems {
    /// Gives new entities a [`NetId`] and new players a [`Viewer`].
    Register,
    /// Builds and sends every viewer's snapshot.
    Replicate,
}

#[derive(Resource, Default)]
struct NextNetId {
    /// The last id given.
    last: u32,
    /// Whether the ids went round: from then on an id still held is
    /// skipped.
    wrapped: bool,
}

/// What a viewer's query needs of each entity besides its position.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    id: u32,
    quantized: IVec2,
}

/// Per-tick buffers, reused.
#[derive(Resource, Default)]
struct Scratch {
    entities: Vec<(Vec2, Seen)>,
    grid: SpatialGrid<Seen>,
    encode: EncodeScratch,
    /// A viewer's candidates in the hysteresis band (between `radius` and
    /// `radius + hysteresis`): kept only if they were visible.
    band: Vec<Candidate>,
    body: Vec<u8>,
}

#[derive(Resource, Clone)]
struct InterestMetrics {
    snapshots: Counter,
    bytes: Counter,
    full: Counter,
    limited: Counter,
}

impl InterestMetrics {
    fn register(metrics: &Metrics) -> Self {
        let r = metrics.registry();
        let c = |name: &str, help: &str| r.counter(name, help).unwrap_or_default();
        Self {
            snapshots: c("snapshots_total", "Snapshots sent."),
            bytes: c(
                "snapshot_bytes_total",
                "Encoded snapshot bytes sent (before transport headers).",
            ),
            full: c(
                "snapshots_full_total",
                "Snapshots sent without a delta baseline.",
            ),
            limited: c(
                "snapshots_budget_limited_total",
                "Snapshots where the byte budget left some entities stale.",
            ),
        }
    }
}

/// Replicates nearby entities to every viewer, each tick. Needs
/// [`MovementPlugin`](crate::movement::MovementPlugin) (acks and the last
/// applied input come with movement input).
pub struct InterestPlugin;

impl Plugin for InterestPlugin {
    fn build(&self, app: &mut App) {
        let metrics = app.world_mut().get_resource_or_init::<Metrics>().clone();
        let config = app
            .world_mut()
            .remove_resource::<InterestConfig>()
            .unwrap_or_default()
            .validated();
        app.insert_resource(config)
            .init_resource::<NextNetId>()
            .init_resource::<Scratch>()
            .init_resource::<SnapshotTick>()
            .insert_resource(InterestMetrics::register(&metrics))
            .add_server_message::<Snapshot>(channels::SNAPSHOT)
            .add_message::<LocalSnapshot>()
            .add_message::<MoveCommand>()
            .add_message::<ClientConnected>()
            .configure_sets(
                FixedUpdate,
                (
                    MovementSystems::Integrate,
                    InterestSystems::Register,
                    InterestSystems::Replicate,
                )
                    .chain(),
            )
            .add_systems(
                FixedUpdate,
                (assign_net_ids, add_viewers).in_set(InterestSystems::Register),
            )
            .add_systems(FixedUpdate, replicate.in_set(InterestSystems::Replicate));
    }
}

fn assign_net_ids(
    new: Query<Entity, (With<Position>, Without<NetId>)>,
    held: Query<&NetId>,
    mut next: ResMut<NextNetId>,
    mut live: Local<HashSet<u32>>,
    mut commands: Commands,
) {
    if new.is_empty() {
        return;
    }
    let collect = |live: &mut HashSet<u32>| {
        live.clear();
        live.extend(held.iter().map(|id| id.0));
    };
    if next.wrapped {
        collect(&mut live);
    }
    for entity in &new {
        loop {
            next.last = match next.last.checked_add(1) {
                Some(id) => id,
                None => {
                    next.wrapped = true;
                    collect(&mut live);
                    1
                }
            };
            if !next.wrapped || live.insert(next.last) {
                break;
            }
        }
        commands.entity(entity).insert(NetId(next.last));
    }
}

fn add_viewers(mut connected: MessageReader<ClientConnected>, mut commands: Commands) {
    for ClientConnected { entity, .. } in connected.read() {
        if let Ok(mut e) = commands.get_entity(*entity) {
            e.insert(Viewer::awaiting_input());
        }
    }
}

/// What [`replicate`] needs of each viewer.
type ViewerItem = (
    Entity,
    &'static NetId,
    &'static Position,
    &'static mut Viewer,
    Option<&'static Mover>,
    Option<&'static Player>,
);

#[expect(
    clippy::too_many_arguments,
    reason = "a system: each parameter is one resource or query it needs"
)]
fn replicate(
    config: Res<InterestConfig>,
    mut tick: ResMut<SnapshotTick>,
    mut scratch: ResMut<Scratch>,
    metrics: Res<InterestMetrics>,
    mut acks: MessageReader<MoveCommand>,
    entities: Query<(&NetId, &Position)>,
    mut viewers: Query<ViewerItem>,
    mut remote: NetSender<Snapshot>,
    mut local: MessageWriter<LocalSnapshot>,
) {
    tick.0 = tick.0.wrapping_add(1).max(1);
    for MoveCommand { entity, input } in acks.read() {
        if let Ok((.., mut viewer, _, _)) = viewers.get_mut(*entity) {
            viewer.streaming = true;
            viewer.view.acknowledge(input.ack_snapshot);
        }
    }

    let Scratch {
        entities: seen,
        grid,
        encode,
        band,
        body,
    } = &mut *scratch;
    seen.clear();
    seen.extend(entities.iter().map(|(id, position)| {
        let quantized = quantize(position.0);
        (
            position.0,
            Seen {
                id: id.0,
                quantized,
            },
        )
    }));
    grid.rebuild(seen, config.cell_size);

    let limits = config.limits();
    let enter_sq = config.radius * config.radius;
    let reach = config.radius + config.hysteresis;
    let leave_sq = reach * reach;
    // Each view's state is cold: ask for the next three views' lines, one
    // step of their chain each (the view, then see `ClientView::prefetch`),
    // and for the grid cells around the viewer after next.
    let mut items = viewers.iter_mut();
    let mut ahead = [items.next(), items.next(), items.next()];
    while let Some((entity, own, position, mut viewer, mover, player)) = ahead[0].take() {
        ahead.rotate_left(1);
        ahead[2] = items.next();
        if let Some((_, _, _, upcoming, _, _)) = &ahead[2] {
            prefetch(&**upcoming);
        }
        if let Some((_, _, at, upcoming, _, _)) = &ahead[1] {
            upcoming.view.prefetch();
            grid.prefetch_query(at.0, reach);
        }
        if let Some((_, _, _, upcoming, _, _)) = &ahead[0] {
            upcoming.view.prefetch_frames();
        }
        if !viewer.streaming {
            continue;
        }
        let candidates = &mut encode.candidates;
        candidates.clear();
        candidates.push(Candidate {
            id: own.0,
            position: quantize(position.0),
            distance_sq: -1.0,
        });
        // Every item is written at the ends of both lists, and kept by
        // moving an end past it: whether an item is in range is close to
        // random in the cells the circle's edge crosses, so a branch on it
        // would often be mispredicted.
        band.clear();
        for run in grid.runs(position.0, reach) {
            let mut near = candidates.len();
            let mut edge = band.len();
            candidates.resize(near + run.len(), Candidate::default());
            band.resize(edge + run.len(), Candidate::default());
            for (at, seen) in run {
                let candidate = Candidate {
                    id: seen.id,
                    position: seen.quantized,
                    distance_sq: at.distance_squared(position.0),
                };
                let inside = candidate.distance_sq <= enter_sq;
                let within_reach = candidate.distance_sq <= leave_sq;
                candidates[near] = candidate;
                band[edge] = candidate;
                near += usize::from(inside & (seen.id != own.0));
                edge += usize::from(!inside & within_reach);
            }
            candidates.truncate(near);
            band.truncate(edge);
        }
        candidates.extend(band.iter().filter(|c| viewer.view.was_visible(c.id)));
        viewer
            .view
            .cut_to_cap(candidates, limits.max_entities, config.hysteresis);
        let last_input = mover.map_or(0, |m| m.last_seq);
        let stats = viewer
            .view
            .encode(tick.0, own.0, last_input, encode, limits, body);
        metrics.snapshots.inc();
        metrics.bytes.add(stats.bytes as u64);
        if stats.full {
            metrics.full.inc();
        }
        if stats.budget_limited {
            metrics.limited.inc();
        }
        match player {
            Some(player) => remote.send(player.client, &SnapshotBody(body)),
            None => match Snapshot::decode_body(body) {
                Ok(snapshot) => {
                    local.write(LocalSnapshot {
                        entity,
                        snapshot,
                        stats,
                    });
                }
                Err(error) => tracing::error!(%error, "cannot read back a local snapshot"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_never_larger_than_a_client_holds() {
        let config = InterestConfig {
            max_entities: 5_000,
            ..InterestConfig::default()
        }
        .validated();
        assert_eq!(config.max_entities, MAX_SNAPSHOT_ENTITIES);
        assert!(config.snapshot_budget_bytes >= SnapshotLimits::min_budget(MAX_SNAPSHOT_ENTITIES));
    }

    #[test]
    fn check_names_the_setting_out_of_range_and_validated_corrects_it() {
        assert_eq!(InterestConfig::default().check(), Ok(()));
        for (config, field) in [
            (
                InterestConfig {
                    radius: f32::NAN,
                    ..InterestConfig::default()
                },
                "radius",
            ),
            (
                InterestConfig {
                    cell_size: 0.5,
                    ..InterestConfig::default()
                },
                "cell_size",
            ),
            (
                InterestConfig {
                    hysteresis: -1.0,
                    ..InterestConfig::default()
                },
                "hysteresis",
            ),
            (
                InterestConfig {
                    snapshot_budget_bytes: 1,
                    ..InterestConfig::default()
                },
                "snapshot_budget_bytes",
            ),
            (
                InterestConfig {
                    baseline_history: 0,
                    ..InterestConfig::default()
                },
                "baseline_history",
            ),
        ] {
            let error = config.check().unwrap_err();
            assert!(error.starts_with(field), "{error}");
            assert_eq!(config.validated().check(), Ok(()), "{field} corrected");
        }
    }

    /// A delta of a large view can outgrow the largest snapshot the
    /// transport queues (a view replaced by another, sparse ids, far
    /// positions): a budget above it is refused for such views, and
    /// corrected down to it. (The bound was the largest message, 2 bytes
    /// above what the snapshot channel queues: such a delta was dropped as
    /// it was queued, and never reached the client.)
    #[test]
    fn a_budget_past_the_largest_snapshot_is_refused_for_views_that_could_reach_it() {
        use shared::protocol::channels::{self, SNAPSHOT_QUEUE_BYTES};
        let harmless = InterestConfig {
            snapshot_budget_bytes: 100_000,
            ..InterestConfig::default()
        };
        assert_eq!(harmless.check(), Ok(()), "a delta of 128 is far smaller");
        let config = InterestConfig {
            max_entities: MAX_SNAPSHOT_ENTITIES,
            snapshot_budget_bytes: 100_000,
            ..InterestConfig::default()
        };
        let error = config.check().unwrap_err();
        assert!(error.starts_with("snapshot_budget_bytes"), "{error}");
        assert!(error.contains(&SNAPSHOT_QUEUE_BYTES.to_string()), "{error}");
        let corrected = config.clone().validated();
        assert_eq!(corrected.check(), Ok(()));
        // A snapshot of the corrected budget stays queued.
        let mut connection = shared::transport::Connection::new(
            channels::transport_config(),
            std::time::Instant::now(),
        )
        .unwrap();
        let snapshot = vec![0u8; corrected.snapshot_budget_bytes];
        connection.send(channels::SNAPSHOT, &snapshot).unwrap();
        assert_eq!(
            connection.queued_bytes(channels::SNAPSHOT),
            snapshot.len(),
            "the largest snapshot was dropped as it was queued"
        );

        // The whole view replaced by another: every removal and every
        // added entity at its widest.
        let delta = |limits: SnapshotLimits| {
            let mut view = ClientView::new();
            let mut scratch = EncodeScratch::default();
            let mut out = Vec::new();
            let crowd = |scratch: &mut EncodeScratch, first: u32, at: i32| {
                scratch.candidates.clear();
                scratch.candidates.push(Candidate {
                    id: 1,
                    position: IVec2::ZERO,
                    distance_sq: -1.0,
                });
                scratch
                    .candidates
                    .extend((1..MAX_SNAPSHOT_ENTITIES as u32).map(|k| Candidate {
                        id: first + k * 70_000,
                        position: IVec2::splat(at),
                        distance_sq: k as f32,
                    }));
            };
            crowd(&mut scratch, 2, 1);
            view.encode(1, 1, 0, &mut scratch, limits, &mut out);
            view.acknowledge(1);
            crowd(&mut scratch, 3, 40_000_000);
            let stats = view.encode(2, 1, 0, &mut scratch, limits, &mut out);
            assert!(!stats.full);
            stats.bytes
        };
        assert!(delta(config.limits()) > SNAPSHOT_QUEUE_BYTES);
        assert!(delta(corrected.limits()) <= SNAPSHOT_QUEUE_BYTES);
    }

    #[test]
    fn net_ids_go_round_without_repeating_one_still_held() {
        let mut app = App::new();
        app.insert_resource(NextNetId {
            last: u32::MAX - 1,
            wrapped: false,
        })
        .add_systems(bevy_app::Update, assign_net_ids);
        // Players that have held ids 1 and 4 since the server started.
        for id in [1, 4] {
            app.world_mut().spawn((Position(Vec2::ZERO), NetId(id)));
        }
        let mut spawn = |n: usize| -> Vec<u32> {
            let new: Vec<Entity> = (0..n)
                .map(|_| app.world_mut().spawn(Position(Vec2::ZERO)).id())
                .collect();
            app.update();
            let mut ids: Vec<u32> = new
                .iter()
                .map(|&e| app.world().get::<NetId>(e).unwrap().0)
                .collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(spawn(3), [2, 3, u32::MAX]);
        assert_eq!(spawn(2), [5, 6], "4 is still held");
    }
}
