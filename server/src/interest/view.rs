//! One client's view: what it was sent, what it acknowledged, and the
//! budgeted, delta-encoded snapshot of the next tick. Plain
//! data, no bevy: tests and benchmarks drive it directly.

use std::collections::VecDeque;

use glam::IVec2;
use shared::movement::{CLIENT_SNAPSHOT_HISTORY, MAX_SNAPSHOT_ENTITIES};
use shared::prefetch::{prefetch, prefetch_buffer};
use shared::protocol::channels::{MAX_GAME_MESSAGE, SNAPSHOT_QUEUE_BYTES};
use shared::protocol::movement::{
    SnapshotEncoder, SnapshotHeader, signed_varint_len, tick_after, varint_len,
};

/// Upper bound of a snapshot's fixed part: message id (2), five u32
/// varints (5 each) and three list lengths (3 each).
pub const SNAPSHOT_HEADER_MAX: usize = 2 + 5 * 5 + 3 * 3;

/// Upper bound of one removal, one added entity or one moved entity.
pub const ENTRY_MAX: usize = 15;

/// The largest snapshot that reaches a client: the largest message the
/// transport carries, or what the snapshot channel queues if less.
const LARGEST_SNAPSHOT: usize = if SNAPSHOT_QUEUE_BYTES < MAX_GAME_MESSAGE {
    SNAPSHOT_QUEUE_BYTES
} else {
    MAX_GAME_MESSAGE
};

// A full snapshot of the largest view, which no budget cuts, is one
// snapshot that reaches the client (a delta is bounded by its budget, at
// most `SnapshotLimits::max_budget`), and the smallest budget of the
// largest view is not above the largest.
const _: () = assert!(
    SNAPSHOT_HEADER_MAX + MAX_SNAPSHOT_ENTITIES * ENTRY_MAX <= LARGEST_SNAPSHOT
        && SnapshotLimits::min_budget(MAX_SNAPSHOT_ENTITIES)
            <= SnapshotLimits::max_budget(MAX_SNAPSHOT_ENTITIES)
);

/// The newest frames [`ClientView::prefetch`] asks for: the client
/// acknowledges a frame about a round trip old, a few frames from the
/// newest.
const PREFETCH_FRAMES: usize = 4;

/// An entity in a client's area of interest.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Candidate {
    /// Its net id.
    pub id: u32,
    /// Its quantized position.
    pub position: IVec2,
    /// Squared distance to the viewer (priority: nearest first).
    pub distance_sq: f32,
}

/// Limits of one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Most encoded bytes (message id included).
    pub budget_bytes: usize,
    /// Most entities in a client's view.
    pub max_entities: usize,
    /// Sent snapshots kept as possible baselines (at most
    /// [`CLIENT_SNAPSHOT_HISTORY`]).
    pub history: usize,
}

impl SnapshotLimits {
    /// The smallest budget that always fits the header, the removal of a
    /// whole view and the client's own entity, so that leaving entities are
    /// announced whatever the budget pressure.
    pub const fn min_budget(max_entities: usize) -> usize {
        SNAPSHOT_HEADER_MAX + 5 * max_entities + ENTRY_MAX
    }

    /// The largest delta of a view of `max_entities` that no budget
    /// bounds: the removal of a whole view and a whole view added, each
    /// entry at its widest.
    pub const fn max_delta(max_entities: usize) -> usize {
        SNAPSHOT_HEADER_MAX + (5 + ENTRY_MAX) * max_entities
    }

    /// The largest budget for views of `max_entities`: any when their
    /// largest delta fits in the largest snapshot that reaches a client
    /// (the snapshot channel's queue, [`SNAPSHOT_QUEUE_BYTES`], below the
    /// largest message the transport carries), else that size (a larger
    /// delta would be refused or dropped by the transport, never reaching
    /// the client).
    pub const fn max_budget(max_entities: usize) -> usize {
        if Self::max_delta(max_entities) <= LARGEST_SNAPSHOT {
            usize::MAX
        } else {
            LARGEST_SNAPSHOT
        }
    }
}

/// What encoding one snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeStats {
    /// Encoded size in bytes, message id included.
    pub bytes: usize,
    /// Encoded without a baseline.
    pub full: bool,
    /// The budget stopped updates: farther entities were left stale (or
    /// not added).
    pub budget_limited: bool,
}

#[derive(Debug, Clone, Default)]
struct Frame {
    tick: u32,
    /// What the client holds after applying this snapshot, sorted by id.
    entities: Vec<(u32, IVec2)>,
}

/// How one entity of the view would be sent against the baseline.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// The client has it at this position already.
    Same,
    /// The client has it at `old`.
    Moved { old: IVec2 },
    /// The client does not have it.
    Added,
}

/// The bytes that sending `change` of `c`, at position `at`, takes with
/// its id gap counted from `base`: at most, from the snapshot's `id_base`;
/// exactly, from the entry before it in its list.
fn update_cost(c: &Candidate, change: Change, at: IVec2, base: u32) -> usize {
    let values = match change {
        Change::Same => return 0,
        Change::Moved { old } => at.wrapping_sub(old),
        Change::Added => at,
    };
    gap_len(c.id, base) + signed_varint_len(values.x) + signed_varint_len(values.y)
}

/// The server's record of one client's view.
#[derive(Debug, Default)]
pub struct ClientView {
    /// Sent frames, oldest first, `SnapshotLimits::history` of them once
    /// the first snapshot sized the view. Those before the acknowledged
    /// one are spent (acknowledgements only move forward, so they will
    /// never be a baseline again), and so are the placeholders (tick 0)
    /// the history starts with: each new frame takes the buffer of the
    /// newest spent frame, freed a few ticks before and still warm in the
    /// cache, where the oldest frame's was last written half a second
    /// before.
    history: VecDeque<Frame>,
    /// The tick of the newest frame sent (0 before the first): what an
    /// acknowledgement is checked against, kept here so that the check
    /// does not read the history, cold in the cache (acknowledgements
    /// come with the input, before the history is needed).
    newest: u32,
    acked: u32,
    /// The next frame's entities: the buffer of the frame last recycled.
    next: Vec<(u32, IVec2)>,
    /// The ids of the last frame sent, apart from their positions: the
    /// hysteresis check searches them for many candidates of every view,
    /// and a third of the bytes is a third of the cold cache lines.
    visible: Vec<u32>,
    /// Where the round of updates of a delta cut by the budget starts: the
    /// id of the first update the last cut left out (see
    /// [`encode`](Self::encode)).
    round_from: u32,
}

/// The working buffers of [`ClientView::encode`]: one set serves every
/// view of a server, one view after the other, so they stay in the cache
/// instead of each view touching buffers of its own every tick.
#[derive(Debug, Default)]
pub struct EncodeScratch {
    /// The entities the next view may see (the caller fills it; see
    /// [`ClientView::encode`]).
    pub candidates: Vec<Candidate>,
    /// The view, sorted by id.
    view: Vec<Candidate>,
    /// `changes[i]` is how `view[i]` would be sent (snapshots that may
    /// not fit the budget only).
    changes: Vec<Change>,
    /// The position `view[i]` is sent at this tick, if it is (idem): its
    /// own, or the one the client holds from a snapshot it has not
    /// acknowledged yet.
    sent: Vec<Option<IVec2>>,
    /// The snapshot's lists.
    encoder: SnapshotEncoder,
    /// Sort keys: `id << 32 | index` to order the view by id, then
    /// `distance << 32 | index` to order it nearest first (budget-limited
    /// snapshots only). Sorting plain integers is cheaper than sorting
    /// candidates with a key function.
    keys: Vec<u64>,
}

/// Grows `v`'s capacity to at least `max` by writing it through once, so
/// that its pages are resident from now on instead of joining the resident
/// set as crowds grow (a slow creep a soak reads as a leak).
fn reserve_written<T: Copy>(v: &mut Vec<T>, max: usize, fill: T) {
    if v.capacity() < max {
        let len = v.len();
        v.resize(max, fill);
        v.truncate(len);
    }
}

impl EncodeScratch {
    /// Sizes the buffers for views of `max` entities; a no-op once done.
    fn reserve(&mut self, max: usize) {
        let nobody = Candidate {
            id: u32::MAX,
            position: IVec2::MAX,
            distance_sq: f32::MAX,
        };
        reserve_written(&mut self.view, max, nobody);
        reserve_written(&mut self.changes, max, Change::Same);
        reserve_written(&mut self.sent, max, None);
        self.encoder.reserve(max);
        reserve_written(&mut self.keys, max, u64::MAX);
    }
}

fn gap_len(id: u32, base: u32) -> usize {
    varint_len(u64::from(id - base))
}

/// The last id of the `added` and of the `moved` list while a snapshot's
/// updates are walked in id order: what the next entry's id gap is counted
/// from.
#[derive(Debug, Clone, Copy)]
struct Gaps {
    added: u32,
    moved: u32,
}

impl Gaps {
    /// Before any entry: gaps from `id_base`.
    fn new(id_base: u32) -> Self {
        Self {
            added: id_base,
            moved: id_base,
        }
    }

    /// The bytes `change` of `c`, at `at`, takes as the next entry of its
    /// list.
    fn cost(&self, c: &Candidate, change: Change, at: IVec2) -> usize {
        let base = match change {
            Change::Same => return 0,
            Change::Moved { .. } => self.moved,
            Change::Added => self.added,
        };
        update_cost(c, change, at, base)
    }

    /// `change` of `c` is the last entry of its list.
    fn record(&mut self, c: &Candidate, change: Change) {
        match change {
            Change::Same => {}
            Change::Moved { .. } => self.moved = c.id,
            Change::Added => self.added = c.id,
        }
    }
}

/// Nearest first; ties by id, so the choice is deterministic.
fn nearest(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    a.distance_sq
        .total_cmp(&b.distance_sq)
        .then(a.id.cmp(&b.id))
}

/// `d` as an unsigned integer in the order of [`f32::total_cmp`]: negatives
/// (all bits flipped) below positives (sign bit set).
fn distance_key(d: f32) -> u32 {
    let bits = d.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

/// `high << 32 | index`: sorting these sorts by `high`, then by index.
fn sort_key(high: u32, index: usize) -> u64 {
    u64::from(high) << 32 | index as u64
}

/// The index packed into a [`sort_key`].
fn key_index(key: u64) -> usize {
    (key & u64::from(u32::MAX)) as usize
}

/// One step of [`Merge`].
enum Step<'a> {
    /// A baseline entity that is not in the view.
    Left(u32),
    /// An entity of the view, and how it would be sent.
    Entity(&'a Candidate, Change),
}

/// Walks the view and the baseline (both sorted by id) side by side, in
/// id order. An iterator rather than a function taking a closure, so that
/// the work done at each step is compiled into the caller's loop.
struct Merge<'a, 'b> {
    view: std::slice::Iter<'a, Candidate>,
    base: &'b [(u32, IVec2)],
    /// The baseline's next entity.
    b: usize,
}

impl<'a, 'b> Merge<'a, 'b> {
    fn new(view: &'a [Candidate], base: &'b [(u32, IVec2)]) -> Self {
        Self {
            view: view.iter(),
            base,
            b: 0,
        }
    }
}

impl<'a> Iterator for Merge<'a, '_> {
    type Item = Step<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<Step<'a>> {
        let next_base = self.base.get(self.b).copied();
        let Some(c) = self.view.as_slice().first() else {
            let (id, _) = next_base?;
            self.b += 1;
            return Some(Step::Left(id));
        };
        let change = match next_base {
            Some((id, _)) if id < c.id => {
                self.b += 1;
                return Some(Step::Left(id));
            }
            Some((id, old)) if id == c.id => {
                self.b += 1;
                if old == c.position {
                    Change::Same
                } else {
                    Change::Moved { old }
                }
            }
            _ => Change::Added,
        };
        self.view.next();
        Some(Step::Entity(c, change))
    }
}

/// Writes a view's entities into the snapshot lists, in id order, and
/// records what the client will hold.
struct Emit<'a> {
    encoder: &'a mut SnapshotEncoder,
    next: &'a mut Vec<(u32, IVec2)>,
    previous_removed: u32,
    previous_added: u32,
    previous_moved: u32,
}

impl<'a> Emit<'a> {
    /// An empty snapshot, its id gaps counted from `id_base`.
    fn start(
        encoder: &'a mut SnapshotEncoder,
        next: &'a mut Vec<(u32, IVec2)>,
        id_base: u32,
    ) -> Self {
        let mut emit = Self {
            encoder,
            next,
            previous_removed: 0,
            previous_added: 0,
            previous_moved: 0,
        };
        emit.restart(id_base);
        emit
    }

    /// Forgets everything written: the snapshot starts again empty.
    fn restart(&mut self, id_base: u32) {
        self.encoder.clear();
        self.next.clear();
        self.previous_removed = id_base;
        self.previous_added = id_base;
        self.previous_moved = id_base;
    }

    /// A baseline entity that left the view; returns its gap's size.
    #[inline(always)]
    fn removed(&mut self, id: u32) -> usize {
        let gap = id - self.previous_removed;
        self.encoder.removed(gap);
        self.previous_removed = id;
        varint_len(u64::from(gap))
    }

    /// `c`, to be sent as `change` if `sent` (else the client keeps what it
    /// has, or does not get it yet).
    #[inline(always)]
    fn entity(&mut self, c: &Candidate, change: Change, sent: bool) {
        match change {
            Change::Same => self.next.push((c.id, c.position)),
            Change::Moved { old } if !sent => self.next.push((c.id, old)),
            Change::Moved { old } => {
                let d = c.position.wrapping_sub(old);
                self.encoder.moved(c.id - self.previous_moved, d.x, d.y);
                self.previous_moved = c.id;
                self.next.push((c.id, c.position));
            }
            Change::Added if !sent => {}
            Change::Added => {
                let p = c.position;
                self.encoder.added(c.id - self.previous_added, p.x, p.y);
                self.previous_added = c.id;
                self.next.push((c.id, c.position));
            }
        }
    }
}

impl ClientView {
    /// A view that has been sent nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client says it applied snapshot `tick`. Acks of snapshots never
    /// sent, or older than the current ack, are ignored. An ack of 0 says
    /// the client holds no snapshot (it started again): the next one is
    /// full.
    pub fn acknowledge(&mut self, tick: u32) {
        if tick == 0 {
            self.acked = 0;
            return;
        }
        // Serial numbers: ticks go on from 1 after u32::MAX. Only the
        // ticks of the frames a history can hold count as sent: a client
        // cannot park the acknowledgement half the tick space away.
        let behind = self.newest.wrapping_sub(tick);
        let sent = self.newest != 0 && behind < CLIENT_SNAPSHOT_HISTORY as u32;
        if sent && (self.acked == 0 || tick_after(tick, self.acked)) {
            self.acked = tick;
        }
    }

    /// The acknowledged tick (0 for none).
    pub fn acked(&self) -> u32 {
        self.acked
    }

    /// Whether `id` was in the last snapshot sent (hysteresis: a visible
    /// entity stays until it is beyond radius + hysteresis).
    pub fn was_visible(&self, id: u32) -> bool {
        self.visible.binary_search(&id).is_ok()
    }

    /// Cuts `candidates` (own entity first, at distance −1) to the
    /// `max` nearest when there are more, counting an entity in view
    /// `hysteresis` metres nearer than it is: at the cap as at the radius,
    /// an entity in view keeps its place against one about as near, or two
    /// near the cut that take turns being nearer would each flicker in and
    /// out. The kept candidates keep their true distances (the budget's
    /// nearest-first order).
    pub fn cut_to_cap(&self, candidates: &mut Vec<Candidate>, max: usize, hysteresis: f32) {
        if candidates.len() <= max || hysteresis <= 0.0 || max == 0 {
            return;
        }
        // Signed squares keep the order of the distances and undo exactly
        // enough for an order (an entity in view may come out nearer than
        // 0); own entity stays first whatever the bonus.
        let own = candidates[0].id;
        candidates[0].distance_sq = f32::NEG_INFINITY;
        for c in candidates[1..].iter_mut() {
            if self.was_visible(c.id) {
                let nearer = c.distance_sq.sqrt() - hysteresis;
                c.distance_sq = nearer * nearer.abs();
            }
        }
        candidates.select_nth_unstable_by(max - 1, nearest);
        candidates.truncate(max);
        for c in candidates.iter_mut() {
            if c.id == own {
                c.distance_sq = -1.0;
            } else if self.was_visible(c.id) {
                let d = hysteresis + c.distance_sq.signum() * c.distance_sq.abs().sqrt();
                c.distance_sq = d * d;
            }
        }
    }

    /// What the client holds after the last snapshot sent, sorted by id.
    pub fn last_sent(&self) -> &[(u32, IVec2)] {
        self.history.back().map_or(&[], |f| &f.entities)
    }

    /// Sizes the next frame for `max` entities and the history for `keep`
    /// frames; a no-op once done.
    fn reserve(&mut self, max: usize, keep: usize) {
        // `next` is swapped with the recycled frame's buffer every tick.
        reserve_written(&mut self.next, max, (u32::MAX, IVec2::MAX));
        reserve_written(&mut self.visible, max, u32::MAX);
        if self.history.capacity() < keep {
            self.history.reserve_exact(keep - self.history.len());
        }
        while self.history.len() < keep {
            let mut entities = Vec::new();
            reserve_written(&mut entities, max, (u32::MAX, IVec2::MAX));
            self.history.push_front(Frame { tick: 0, entities });
        }
    }

    /// Asks the CPU for the lines encoding this view reads first: the
    /// records of the newest frames (where the baseline is looked for) and
    /// the ids last sent. Each view's state has gone cold since its last
    /// turn; asked for a few views ahead, the lines are on their way while
    /// the views before are encoded (see [`shared::prefetch`]).
    /// [`prefetch_frames`](Self::prefetch_frames) is the step after.
    pub fn prefetch(&self) {
        // The newest frames sit at the end of the ring's newer run (if the
        // ring wraps just before them, the few older ones are not asked for).
        let (older, newer) = self.history.as_slices();
        let newest = if newer.is_empty() { older } else { newer };
        prefetch(&newest[newest.len().saturating_sub(PREFETCH_FRAMES)..]);
        prefetch(&self.visible[..]);
    }

    /// The second step, once [`prefetch`](Self::prefetch)'s lines are in:
    /// the baseline frame's entities, and as much of the buffer the next
    /// frame is written into as the last frame filled.
    pub fn prefetch_frames(&self) {
        if let Some(i) = self.baseline() {
            prefetch(&self.history[i].entities[..]);
        }
        let last = self.history.back().map_or(0, |f| f.entities.len());
        prefetch_buffer(&self.next, last);
    }

    /// The baseline: the acknowledged frame, if still in the history.
    ///
    /// Searched from the newest frame back: the client acknowledges a frame
    /// about a round trip old, a few frames from the back of a history of
    /// up to [`CLIENT_SNAPSHOT_HISTORY`], and each frame visited is a cache
    /// line that has gone cold since the last tick.
    fn baseline(&self) -> Option<usize> {
        if self.acked == 0 {
            return None;
        }
        self.history.iter().rposition(|f| f.tick == self.acked)
    }

    /// Writes the body of the snapshot of `tick` for this view (a
    /// [`Snapshot`](shared::protocol::movement::Snapshot) without its
    /// message id) into `out`, replacing what `out` held.
    ///
    /// `scratch.candidates` (in any order, distinct ids) must hold only entities the
    /// client may see (the caller applies radius and hysteresis), the
    /// viewer's own entity nearer than any other (e.g. a negative
    /// `distance_sq`). The `max_entities` nearest form the view. The
    /// snapshot is a delta against the acknowledged snapshot when it is
    /// still in the history, else full. When a delta's updates do not all
    /// fit the budget, they go first for the viewer's own entity, and, at
    /// the position the client holds, for every entity the last snapshot
    /// sent has elsewhere than the baseline (updated or added by snapshots
    /// the client has not acknowledged yet: it rebuilds from the baseline,
    /// so left out they would go back to an older position, or vanish);
    /// then for the nearest, in half the room left besides those held,
    /// then round the view in id order, from the first update the last
    /// such delta left out, until one does not fit (an entity held costs
    /// only the difference). The rest keep their baseline value (or,
    /// absent from the baseline, are left out until a later tick). So an
    /// entity's position at the client never goes back in time: the
    /// nearest are updated every tick, and every other entity in its turn,
    /// each update sent again until acknowledged. Only when those held do
    /// not all fit (the first deltas after full snapshots not acknowledged
    /// yet, which no budget holds) do the farthest of them go back to the
    /// baseline's, and nothing else is updated. Leaving entities are
    /// always announced (see [`SnapshotLimits::min_budget`]).
    ///
    /// Cost: one sort of the view by id and a merge with the baseline; the
    /// view is sorted by distance, each update looked up in the last frame
    /// sent, and the view walked again in id order for the round, only
    /// when the budget does not fit every update. The entries are written straight into `out`. The candidates
    /// are reordered when they are more than `max_entities`.
    ///
    /// Memory: the first call sizes every buffer of the view for
    /// `max_entities` and the history for `history` frames, so a client's
    /// view never grows afterwards, whatever crowds it meets.
    pub fn encode(
        &mut self,
        tick: u32,
        you: u32,
        last_input: u32,
        scratch: &mut EncodeScratch,
        limits: SnapshotLimits,
        out: &mut Vec<u8>,
    ) -> EncodeStats {
        let max = limits.max_entities;
        let keep = limits.history.clamp(1, CLIENT_SNAPSHOT_HISTORY);
        self.reserve(max, keep);
        scratch.reserve(max);
        let EncodeScratch {
            candidates,
            view,
            changes,
            sent,
            encoder,
            keys,
        } = scratch;
        let in_view = if candidates.len() > max {
            candidates.select_nth_unstable_by(max.saturating_sub(1), nearest);
            &candidates[..max]
        } else {
            &candidates[..]
        };
        keys.clear();
        keys.extend(in_view.iter().enumerate().map(|(i, c)| sort_key(c.id, i)));
        keys.sort_unstable();
        view.clear();
        view.extend(keys.iter().map(|&k| in_view[key_index(k)]));

        let baseline = self.baseline();
        let base: &[(u32, IVec2)] = baseline.map_or(&[], |i| &self.history[i].entities);
        let baseline_age = baseline.map_or(0, |i| tick.wrapping_sub(self.history[i].tick));
        let id_base = view
            .first()
            .map(|c| c.id)
            .into_iter()
            .chain(base.first().map(|e| e.0))
            .min()
            .unwrap_or(0);
        let header = SnapshotHeader {
            tick,
            baseline_age,
            last_input,
            you,
            id_base,
        };
        let header_len = 2 + header.encoded_len();
        // The list lengths at their largest.
        let lengths = varint_len(base.len() as u64) + 2 * varint_len(max as u64);

        // A full snapshot replaces what the client has: one that left out
        // entities for the budget would make the client drop them. It
        // carries the whole view (at most `max_entities` × `ENTRY_MAX`).
        let budget = if baseline.is_some() {
            limits.budget_bytes
        } else {
            usize::MAX
        };
        let mut emit = Emit::start(encoder, &mut self.next, id_base);
        // Most snapshots fit with room to spare (a moved entity is usually
        // 3 bytes, not ENTRY_MAX): write every update in one pass, and cost
        // them nearest first only when that overran the budget.
        for step in Merge::new(view, base) {
            match step {
                Step::Left(id) => {
                    emit.removed(id);
                }
                Step::Entity(c, change) => emit.entity(c, change, true),
            }
        }
        let budget_limited = if header_len + emit.encoder.lists_len() <= budget {
            false
        } else {
            emit.restart(id_base);
            // Its exact size is over the budget: cost it, the removals
            // exactly, the updates first with their id gap from `id_base`
            // (an upper bound), and send those that fit.
            let mut removals = 0;
            changes.clear();
            for step in Merge::new(view, base) {
                match step {
                    Step::Left(id) => removals += emit.removed(id),
                    Step::Entity(_, change) => changes.push(change),
                }
            }
            let mut used = header_len + lengths + removals;
            sent.clear();
            sent.resize(view.len(), None);
            // The view is sorted by id, so index order breaks distance
            // ties by id, as `nearest` does.
            keys.clear();
            keys.extend(
                view.iter()
                    .enumerate()
                    .map(|(i, c)| sort_key(distance_key(c.distance_sq), i)),
            );
            keys.sort_unstable();
            // First the viewer's own entity, then, at the position the
            // client holds, every entity the newest snapshot sent has
            // elsewhere than the baseline (updated or added by a snapshot
            // not acknowledged yet): the client rebuilds from the
            // baseline, so left out it would go back to an older position
            // (or vanish, and with it its place in the hysteresis). An
            // update is thus sent again until acknowledged, about a round
            // trip; the nearest and the round below may send the entity's
            // own position instead. So, at its own position, is every
            // entity moved since the baseline that the newest snapshot
            // removed (it left the view and is back): a snapshot in
            // between may have shown it past the baseline's position.
            // When they do not all fit (the first deltas after full
            // snapshots not acknowledged yet), the farthest go back and
            // nothing else is updated: the view held still, the next
            // frames match their baselines within a round trip, where
            // moving the nearest on would hold them again.
            let newest = self.history.back().map_or(&[][..], |f| &f.entities[..]);
            let first = |i: usize| {
                let c = &view[i];
                if c.distance_sq < 0.0 {
                    return Some(c.position);
                }
                let Ok(k) = newest.binary_search_by_key(&c.id, |e| e.0) else {
                    return matches!(changes[i], Change::Moved { .. }).then_some(c.position);
                };
                let held = newest[k].1;
                match changes[i] {
                    Change::Moved { old } if old == held => None,
                    _ => Some(held),
                }
            };
            let mut stopped = false;
            // The nearest's half of the room is counted without what the
            // client holds: the nearest, sent every tick, are each held
            // the next, and would otherwise take more of it every tick.
            let mut near = used;
            for &key in keys.iter() {
                let i = key_index(key);
                if matches!(changes[i], Change::Same) {
                    continue;
                }
                let Some(at) = first(i) else { continue };
                let cost = update_cost(&view[i], changes[i], at, id_base);
                if used + cost > budget {
                    stopped = true;
                    break;
                }
                used += cost;
                if view[i].distance_sq < 0.0 {
                    near += cost;
                }
                sent[i] = Some(at);
            }
            if stopped {
                // Costed from `id_base`, an update counts up to 4 bytes
                // more than it takes: those a delta fitted by their real
                // sizes, held the next tick, would then not all fit, and
                // go back. Cost the held ones exactly before giving up on
                // any.
                let mut exact = header_len + lengths + removals;
                let mut gaps = Gaps::new(id_base);
                for (i, c) in view.iter().enumerate() {
                    if let (false, Some(at)) = (matches!(changes[i], Change::Same), first(i)) {
                        exact += gaps.cost(c, changes[i], at);
                        gaps.record(c, changes[i]);
                    }
                }
                if exact <= budget {
                    for (i, held) in sent.iter_mut().enumerate() {
                        if !matches!(changes[i], Change::Same) {
                            *held = first(i);
                        }
                    }
                    used = exact;
                    stopped = false;
                }
            }
            if !stopped {
                // Then the nearest, in half the room left: a position
                // left out stays the baseline's for the client, better a
                // far one. The other half goes round the view in id
                // order, from where the last round stopped, so that the
                // farther entities are each updated in their turn instead
                // of never while the nearer fill the budget (an update
                // left out costs as much the next tick: the baseline is
                // older still). An entity held above costs only the
                // difference.
                let nearest = near + (budget - near) / 2;
                for &key in keys.iter() {
                    let i = key_index(key);
                    let (c, change) = (&view[i], changes[i]);
                    if sent[i] == Some(c.position) || matches!(change, Change::Same) {
                        continue;
                    }
                    let cost = update_cost(c, change, c.position, id_base);
                    let held = sent[i].map_or(0, |at| update_cost(c, change, at, id_base));
                    if near + cost > nearest || used - held + cost > budget {
                        break;
                    }
                    near += cost;
                    used = used - held + cost;
                    sent[i] = Some(c.position);
                }
                // The updates chosen so far costed again, their id
                // gaps counted from the entry before them, as they are
                // written: the bound from `id_base` is up to 4 bytes
                // an entry too many. The round's updates are costed
                // the same way as it goes (one put between two others
                // only shortens the gap of the next).
                let start = view.partition_point(|c| c.id < self.round_from);
                used = header_len + lengths + removals;
                let mut gaps = Gaps::new(id_base);
                let mut at_start = gaps;
                for (i, c) in view.iter().enumerate() {
                    if i == start {
                        at_start = gaps;
                    }
                    if let Some(at) = sent[i] {
                        used += gaps.cost(c, changes[i], at);
                        gaps.record(c, changes[i]);
                    }
                }
                gaps = at_start;
                for i in (start..view.len()).chain(0..start) {
                    if i == 0 {
                        gaps = Gaps::new(id_base);
                    }
                    let (c, change) = (&view[i], changes[i]);
                    if sent[i] != Some(c.position) && !matches!(change, Change::Same) {
                        let cost = gaps.cost(c, change, c.position);
                        let held = sent[i].map_or(0, |at| gaps.cost(c, change, at));
                        if used - held + cost > budget {
                            self.round_from = c.id;
                            break;
                        }
                        used = used - held + cost;
                        sent[i] = Some(c.position);
                    }
                    if sent[i].is_some() {
                        gaps.record(c, change);
                    }
                }
            }
            for ((c, &change), &sent) in view.iter().zip(changes.iter()).zip(sent.iter()) {
                match sent {
                    Some(at) => emit.entity(&Candidate { position: at, ..*c }, change, true),
                    None => emit.entity(c, change, false),
                }
            }
            // Its exact size is over the budget: some updates were left out.
            true
        };
        out.clear();
        let body = emit.encoder.write(&header, out);

        // Record the frame in the newest spent frame, or the oldest if
        // none is spent.
        let spent = baseline.unwrap_or_else(|| {
            let acked = self.acked;
            self.history
                .iter()
                .take_while(|f| f.tick == 0 || (acked != 0 && tick_after(acked, f.tick)))
                .count()
        });
        let mut frame = self
            .history
            .remove(spent.saturating_sub(1))
            .unwrap_or_default();
        while self.history.len() >= keep {
            self.history.pop_front();
        }
        frame.tick = tick;
        std::mem::swap(&mut frame.entities, &mut self.next);
        self.visible.clear();
        self.visible.extend(frame.entities.iter().map(|e| e.0));
        self.history.push_back(frame);
        self.newest = tick;

        EncodeStats {
            bytes: 2 + body,
            full: baseline.is_none(),
            budget_limited,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use shared::protocol::NetMessage;
    use shared::protocol::movement::Snapshot;

    use super::*;

    proptest! {
        #[test]
        fn distance_keys_order_like_total_cmp(
            a in proptest::num::f32::ANY,
            b in proptest::num::f32::ANY,
        ) {
            prop_assert_eq!(distance_key(a).cmp(&distance_key(b)), a.total_cmp(&b));
        }
    }

    #[test]
    fn the_viewer_and_every_distance_sort_in_total_order() {
        let ordered = [
            f32::NEG_INFINITY,
            -1.0,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            1.0,
            1e30,
            f32::INFINITY,
            f32::NAN,
        ];
        let keys: Vec<u32> = ordered.iter().map(|&d| distance_key(d)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:x?}");
        assert_eq!(key_index(sort_key(7, 3)), 3);
        assert!(sort_key(7, 0) > sort_key(6, usize::from(u16::MAX)));
    }

    impl ClientView {
        /// Bytes this view holds on the heap.
        fn heap_bytes(&self) -> usize {
            use std::mem::size_of;
            self.next.capacity() * size_of::<(u32, IVec2)>()
                + self.visible.capacity() * size_of::<u32>()
                + self.history.capacity() * size_of::<Frame>()
                + self
                    .history
                    .iter()
                    .map(|f| f.entities.capacity() * size_of::<(u32, IVec2)>())
                    .sum::<usize>()
        }
    }

    impl EncodeScratch {
        /// Bytes the working buffers (not the candidates) hold.
        fn heap_bytes(&self) -> usize {
            use std::mem::size_of;
            self.view.capacity() * size_of::<Candidate>()
                + self.changes.capacity() * size_of::<Change>()
                + self.sent.capacity()
                + self.keys.capacity() * size_of::<u64>()
                + self.encoder.heap_bytes()
        }
    }

    /// Fills `scratch.candidates` with a crowd of `size` (the viewer is 1).
    fn crowd(scratch: &mut EncodeScratch, size: u32, tick: u32) -> &mut EncodeScratch {
        scratch.candidates.clear();
        scratch.candidates.extend((1..=size).map(|id| Candidate {
            id,
            position: IVec2::new((id * 7 + tick) as i32, id as i32),
            distance_sq: if id == 1 { -1.0 } else { id as f32 },
        }));
        scratch
    }

    /// Empties the candidates but for the viewer (id 1) at the origin.
    fn viewer_at_origin(scratch: &mut EncodeScratch) -> &mut Vec<Candidate> {
        scratch.candidates.clear();
        scratch.candidates.push(Candidate {
            id: 1,
            position: IVec2::ZERO,
            distance_sq: -1.0,
        });
        &mut scratch.candidates
    }

    /// How far the crowd of [`moving_crowd`] moves a tick (70 m): each
    /// position tells its tick.
    const CROWD_STEP: i32 = 70_000;

    /// Where entity `id` of the crowd is at `tick`.
    fn crowd_position(id: u32, tick: u32) -> IVec2 {
        IVec2::new(
            id as i32 * 100 + tick as i32 * CROWD_STEP,
            tick as i32 * CROWD_STEP,
        )
    }

    /// The viewer at the origin and entities 2..=127 at
    /// [`crowd_position`], the lower ids nearer.
    fn moving_crowd(scratch: &mut EncodeScratch, tick: u32) {
        viewer_at_origin(scratch).extend((2..=127).map(|id| Candidate {
            id,
            position: crowd_position(id, tick),
            distance_sq: 10.0 + id as f32,
        }));
    }

    /// A budget the moves of [`moving_crowd`] overrun many times over.
    const CROWD_LIMITS: SnapshotLimits = SnapshotLimits {
        budget_bytes: SnapshotLimits::min_budget(128),
        ..LIMITS
    };

    /// The viewer of [`moving_crowd`]: its view on the server and its
    /// receiver at the client.
    struct CrowdViewer {
        view: ClientView,
        scratch: EncodeScratch,
        rx: shared::movement::SnapshotReceiver,
        apply: shared::movement::ApplyScratch,
        out: Vec<u8>,
    }

    impl CrowdViewer {
        fn new() -> Self {
            Self {
                view: ClientView::new(),
                scratch: EncodeScratch::default(),
                rx: shared::movement::SnapshotReceiver::new(),
                apply: shared::movement::ApplyScratch::default(),
                out: Vec::new(),
            }
        }

        /// The crowd at `tick` (and `extra`) encoded under
        /// [`CROWD_LIMITS`] after `acked` was acknowledged, and applied
        /// at the client.
        fn step(&mut self, tick: u32, acked: Option<u32>, extra: &[Candidate]) -> EncodeStats {
            if let Some(acked) = acked {
                self.view.acknowledge(acked);
            }
            moving_crowd(&mut self.scratch, tick);
            self.scratch.candidates.extend_from_slice(extra);
            self.send(tick, CROWD_LIMITS)
        }

        /// The candidates in `scratch` encoded under `limits` at `tick`,
        /// and applied at the client.
        fn send(&mut self, tick: u32, limits: SnapshotLimits) -> EncodeStats {
            let stats = self
                .view
                .encode(tick, 1, 0, &mut self.scratch, limits, &mut self.out);
            let snapshot = Snapshot::decode_body(&self.out).unwrap();
            self.rx.apply(&snapshot, &mut self.apply).unwrap();
            stats
        }
    }

    /// The default interest settings' limits.
    const LIMITS: SnapshotLimits = SnapshotLimits {
        budget_bytes: 1000,
        max_entities: 128,
        history: 16,
    };

    #[test]
    fn only_acknowledgements_of_snapshots_sent_and_newer_count() {
        let mut view = ClientView::new();
        let mut scratch = EncodeScratch::default();
        let mut out = Vec::new();
        view.acknowledge(1);
        assert_eq!(view.acked(), 0, "nothing was sent yet");
        view.acknowledge(0x8000_0001);
        assert_eq!(view.acked(), 0, "nor half the tick space away");
        for tick in 1..=3 {
            view.encode(tick, 1, 0, crowd(&mut scratch, 3, tick), LIMITS, &mut out);
        }
        view.acknowledge(4);
        assert_eq!(view.acked(), 0, "4 was never sent");
        view.acknowledge(3);
        assert_eq!(view.acked(), 3);
        view.acknowledge(2);
        assert_eq!(view.acked(), 3, "acknowledgements only move forward");
        view.encode(4, 1, 0, crowd(&mut scratch, 3, 4), LIMITS, &mut out);
        view.acknowledge(4);
        assert_eq!(view.acked(), 4, "sent since");
        view.acknowledge(u32::MAX - 1);
        assert_eq!(view.acked(), 4, "a tick never sent, before the first");
    }

    #[test]
    fn frames_before_the_acknowledged_one_are_recycled_first() {
        let limits = LIMITS;
        let mut view = ClientView::new();
        let mut scratch = EncodeScratch::default();
        let mut out = Vec::new();
        let sent = |view: &ClientView| {
            view.history
                .iter()
                .map(|f| f.tick)
                .filter(|&t| t != 0)
                .collect::<Vec<_>>()
        };
        for tick in 1..=5 {
            view.encode(tick, 1, 0, crowd(&mut scratch, 3, tick), limits, &mut out);
        }
        assert_eq!(sent(&view), [1, 2, 3, 4, 5]);
        assert_eq!(view.history.len(), limits.history);
        view.acknowledge(3);
        let stats = view.encode(6, 1, 0, crowd(&mut scratch, 3, 6), limits, &mut out);
        assert!(!stats.full, "a delta against 3");
        // Frame 6 took the buffer of frame 2, the newest spent one.
        assert_eq!(sent(&view), [1, 3, 4, 5, 6]);
        view.acknowledge(5);
        view.encode(7, 1, 0, crowd(&mut scratch, 3, 7), limits, &mut out);
        assert_eq!(sent(&view), [1, 3, 5, 6, 7]);
        // Unacknowledged, the history keeps its bound, the oldest going first.
        for tick in 8..40 {
            view.encode(tick, 1, 0, crowd(&mut scratch, 3, tick), limits, &mut out);
        }
        assert_eq!(sent(&view), (24..40).collect::<Vec<_>>());
    }

    /// With acknowledgements a round trip behind and a crowd whose moves
    /// alone fill the budget, an entity coming into view near the viewer
    /// is still sent: updates go nearest first, not known entities first.
    #[test]
    fn a_near_newcomer_is_sent_while_a_moving_crowd_fills_the_budget() {
        let mut viewer = CrowdViewer::new();
        let newcomer = Candidate {
            id: 999,
            position: IVec2::new(1, 1),
            distance_sq: 0.25,
        };
        let mut applied = Vec::new();
        for tick in 1..=40u32 {
            let extra = if tick >= 10 { &[newcomer][..] } else { &[] };
            let stats = viewer.step(tick, (tick >= 3).then(|| tick - 2), extra);
            assert!(
                tick < 3 || stats.budget_limited,
                "tick {tick}: the budget bites"
            );
            applied.push(viewer.rx.position(999).is_some());
        }
        assert!(applied[11..].iter().all(|&seen| seen), "{applied:?}");
    }

    /// With acknowledgements a round trip behind and a crowd whose moves
    /// alone fill the budget many times over, the far entities are updated
    /// too, each in its turn, while the nearest are updated every tick.
    #[test]
    fn under_steady_budget_pressure_every_entity_gets_its_turn() {
        use shared::protocol::movement::dequantize;
        let mut viewer = CrowdViewer::new();
        // Ticks each entity's position at the client is its current one,
        // from tick 10 on.
        let mut fresh = [0u32; 128];
        for tick in 1..60u32 {
            let stats = viewer.step(tick, (tick >= 3).then(|| tick - 2), &[]);
            assert!(
                tick < 3 || stats.budget_limited,
                "tick {tick}: the budget bites"
            );
            assert!(stats.bytes <= CROWD_LIMITS.budget_bytes || stats.full);
            if tick >= 10 {
                for id in 2..=127 {
                    let current = dequantize(crowd_position(id, tick));
                    fresh[id as usize] += u32::from(viewer.rx.position(id) == Some(current));
                }
            }
        }
        let fresh = &fresh[2..];
        assert!(fresh.iter().all(|&n| n > 0), "never fresh: {fresh:?}");
        assert!(
            fresh[..10].iter().all(|&n| n == 50),
            "the nearest, every tick: {fresh:?}"
        );
        assert!(
            fresh[..10].iter().min() > fresh[fresh.len() - 60..].iter().max(),
            "the nearest favoured over the farthest: {fresh:?}"
        );
    }

    /// With acknowledgements two to four ticks behind and a crowd whose
    /// moves alone fill the budget many times over, no entity goes back in
    /// time at the client: a cut delta is rebuilt from the acknowledged
    /// snapshot, so an update sent since (in the round) is sent again until
    /// acknowledged, not left out to the baseline's older position. The
    /// nearest are still updated every tick, and every entity in its turn.
    /// Checked from the 15th tick: the first deltas follow full snapshots
    /// (sent until the first acknowledgement) that no budget holds.
    #[test]
    fn under_budget_pressure_an_entity_never_goes_back_in_time() {
        const START: u32 = 15;
        for lag in 2..=4u32 {
            let mut viewer = CrowdViewer::new();
            // The tick of the position the client shows, per entity.
            let mut shown = [0u32; 128];
            // Ticks each entity's position at the client is its current one.
            let mut fresh = [0u32; 128];
            for tick in 1..60u32 {
                let stats = viewer.step(tick, (tick > lag).then(|| tick - lag), &[]);
                assert!(tick <= lag || stats.budget_limited, "tick {tick}: no cut");
                assert!(stats.bytes <= CROWD_LIMITS.budget_bytes || stats.full);
                for &(id, at) in &viewer.rx.entities()[1..] {
                    let when = (at.y / CROWD_STEP) as u32;
                    assert_eq!(at, crowd_position(id, when));
                    let before = std::mem::replace(&mut shown[id as usize], when);
                    if tick >= START {
                        assert!(
                            when >= before,
                            "lag {lag}, tick {tick}: entity {id} went back from \
                             tick {before} to tick {when}"
                        );
                        fresh[id as usize] += u32::from(when == tick);
                    }
                }
            }
            let fresh = &fresh[2..];
            assert!(
                fresh.iter().all(|&n| n > 0),
                "lag {lag}, never fresh: {fresh:?}"
            );
            assert!(
                fresh[..10].iter().all(|&n| n == 60 - START),
                "lag {lag}, the nearest every tick: {fresh:?}"
            );
        }
    }

    /// The viewer at the origin and 127 entities of ids 100,001 up, the
    /// k-th at (k + shift, k + shift) and the k-th nearest.
    fn sparse_crowd(scratch: &mut EncodeScratch, shift: i32) {
        viewer_at_origin(scratch).extend((1..=127).map(|k| Candidate {
            id: 100_000 + k,
            position: IVec2::splat(k as i32 + shift),
            distance_sq: 10.0 + k as f32,
        }));
    }

    /// A viewer with a low id in a crowd of high ids: each update's id gap
    /// is one byte in the snapshot (counted from the entry before it), and
    /// the budget is filled as far as the updates' real sizes go.
    #[test]
    fn a_cut_delta_fills_its_budget_by_the_updates_real_sizes() {
        let crowd = sparse_crowd;
        let mut view = ClientView::new();
        let mut scratch = EncodeScratch::default();
        let mut out = Vec::new();
        crowd(&mut scratch, 0);
        view.encode(1, 1, 0, &mut scratch, LIMITS, &mut out);
        view.acknowledge(1);
        // Every entity moved 40,000 units a coordinate: 5 bytes each.
        crowd(&mut scratch, 40_000);
        let stats = view.encode(2, 1, 0, &mut scratch, LIMITS, &mut out);
        assert!(stats.budget_limited);
        assert!(stats.bytes <= LIMITS.budget_bytes);
        let snapshot = Snapshot::decode_body(&out).unwrap();
        assert!(
            stats.bytes + ENTRY_MAX > LIMITS.budget_bytes,
            "{} bytes of {} used, {} of 127 updates sent",
            stats.bytes,
            LIMITS.budget_bytes,
            snapshot.moved.len()
        );
    }

    /// The same a tick later, its acknowledgement still on the way: the
    /// updates that delta sent are held (the client rebuilds from the
    /// older baseline) and fit again by their real sizes, so none goes
    /// back. Costed by their gaps from `id_base`, 23 of them did not fit,
    /// no other update went out, and those went back 40,000 units.
    #[test]
    fn held_updates_that_fitted_fit_again_by_their_real_sizes() {
        let crowd = sparse_crowd;
        let mut w = CrowdViewer::new();
        crowd(&mut w.scratch, 0);
        w.send(1, LIMITS);
        w.view.acknowledge(1);
        crowd(&mut w.scratch, 40_000);
        w.send(2, LIMITS);
        let after_2 = w.rx.entities().to_vec();
        crowd(&mut w.scratch, 40_000);
        w.send(3, LIMITS);
        let went_back: Vec<u32> = after_2
            .iter()
            .filter(|&&(id, at)| {
                w.rx.entities().iter().find(|e| e.0 == id).map(|e| e.1) != Some(at)
            })
            .map(|e| e.0)
            .collect();
        assert_eq!(went_back, Vec::<u32>::new(), "entities that went back");
    }

    /// A client that holds nothing any more (it started again) acknowledges
    /// 0: it gets a full snapshot, not deltas against a baseline it lost.
    #[test]
    fn an_acknowledgement_of_0_asks_for_a_full_snapshot() {
        use shared::movement::{ApplyScratch, SnapshotReceiver};
        let mut view = ClientView::new();
        let mut scratch = EncodeScratch::default();
        let mut out = Vec::new();
        for tick in 1..=3 {
            view.encode(tick, 1, 0, crowd(&mut scratch, 5, tick), LIMITS, &mut out);
            view.acknowledge(tick);
        }
        let stats = view.encode(4, 1, 0, crowd(&mut scratch, 5, 4), LIMITS, &mut out);
        assert!(!stats.full);
        view.acknowledge(0);
        assert_eq!(view.acked(), 0);
        let stats = view.encode(5, 1, 0, crowd(&mut scratch, 5, 5), LIMITS, &mut out);
        assert!(stats.full, "{stats:?}");
        let mut rx = SnapshotReceiver::new();
        rx.apply(
            &Snapshot::decode_body(&out).unwrap(),
            &mut ApplyScratch::default(),
        )
        .unwrap();
        assert_eq!(rx.entities(), view.last_sent());
        assert_eq!(rx.entities().len(), 5);
    }

    /// The tick goes on from 1 after u32::MAX (4.5 years at 30 Hz): the
    /// client keeps applying snapshots, and deltas keep their baselines.
    #[test]
    fn snapshots_go_on_across_the_tick_wrap() {
        use shared::movement::{ApplyScratch, SnapshotReceiver};
        let mut view = ClientView::new();
        let mut scratch = EncodeScratch::default();
        let mut rx = SnapshotReceiver::new();
        let mut apply = ApplyScratch::default();
        let mut out = Vec::new();
        let mut tick = u32::MAX - 20;
        let mut fulls = 0;
        for step in 0..40i32 {
            view.acknowledge(rx.ack());
            scratch.candidates.clear();
            scratch.candidates.extend((1..=5).map(|id| Candidate {
                id,
                position: IVec2::new(id as i32 * 10 + step, 0),
                distance_sq: if id == 1 { -1.0 } else { id as f32 },
            }));
            let stats = view.encode(tick, 1, 0, &mut scratch, LIMITS, &mut out);
            fulls += u32::from(stats.full);
            let snapshot = Snapshot::decode_body(&out).unwrap();
            rx.apply(&snapshot, &mut apply)
                .unwrap_or_else(|e| panic!("tick {tick}: {e:?}"));
            assert_eq!(rx.ack(), tick);
            tick = tick.wrapping_add(1).max(1);
        }
        assert_eq!(fulls, 1, "only the first snapshot is full");
    }

    /// Tick `tick` for `viewer`: 100 entities near it, `shift` from their
    /// first places, and, when given, a far one (id 500) at `far`; whether
    /// the budget cut the delta, and where the client has the far one.
    fn with_far_entity(
        viewer: &mut CrowdViewer,
        tick: u32,
        shift: i32,
        far: Option<IVec2>,
    ) -> (bool, Option<glam::Vec2>) {
        viewer_at_origin(&mut viewer.scratch).extend((2..=101).map(|id| Candidate {
            id,
            position: IVec2::splat(id as i32 + shift),
            distance_sq: id as f32,
        }));
        if let Some(position) = far {
            viewer.scratch.candidates.push(Candidate {
                id: 500,
                position,
                distance_sq: 1e6,
            });
        }
        let stats = viewer.send(tick, LIMITS);
        (stats.budget_limited, viewer.rx.position(500))
    }

    /// A delta cut by the budget does not take back what a snapshot the
    /// client has not acknowledged yet gave it: deltas are against the
    /// acknowledged one, which lacks it, and the client rebuilds from that.
    #[test]
    fn a_cut_delta_keeps_what_an_unacknowledged_snapshot_gave() {
        let mut watch = CrowdViewer::new();
        // Tick 1 (no far entity) is acknowledged.
        with_far_entity(&mut watch, 1, 0, None);
        watch.view.acknowledge(1);
        // Tick 2 adds the far entity; its acknowledgement is in flight.
        let far = IVec2::new(5, 5);
        let (cut, seen) = with_far_entity(&mut watch, 2, 0, Some(far));
        assert!(!cut);
        assert!(seen.is_some(), "the far entity arrived");
        // Tick 3: everyone moved, more than the budget takes.
        let (cut, seen) = with_far_entity(&mut watch, 3, 70_000, Some(far));
        assert!(cut, "the budget bit");
        assert_eq!(
            seen,
            Some(shared::protocol::movement::dequantize(far)),
            "still there"
        );
        assert!(
            watch.view.was_visible(500),
            "and in view for the hysteresis"
        );
    }

    /// An entity the acknowledged snapshot has, that a later one moved and
    /// the newest removed (it left the view), comes back within the round
    /// trip: a cut delta does not put it where the acknowledged snapshot
    /// had it, back before the position the client showed since.
    #[test]
    fn an_entity_back_in_view_before_the_ack_does_not_go_back_in_time() {
        use shared::protocol::movement::dequantize;
        let mut watch = CrowdViewer::new();
        let (a, b) = (IVec2::new(5, 5), IVec2::new(9, 9));
        // Tick 1, with the far entity at A, is acknowledged.
        with_far_entity(&mut watch, 1, 0, Some(a));
        watch.view.acknowledge(1);
        // Tick 2 moves it to B, tick 3 takes it out of view.
        assert_eq!(
            with_far_entity(&mut watch, 2, 0, Some(b)),
            (false, Some(dequantize(b)))
        );
        assert_eq!(with_far_entity(&mut watch, 3, 0, None), (false, None));
        // Tick 4: it is back at B, and everyone moved, more than the
        // budget takes.
        let (cut, seen) = with_far_entity(&mut watch, 4, 70_000, Some(b));
        assert!(cut, "the budget bit");
        assert_eq!(seen, Some(dequantize(b)), "not back at A");
    }

    /// A full snapshot (the client's acknowledgements stopped for longer
    /// than the history) replaces the client's state: it carries the whole
    /// view whatever the budget, or the client would drop entities still in
    /// view that did not fit.
    #[test]
    fn a_full_snapshot_carries_the_whole_view_past_the_budget() {
        use shared::movement::{ApplyScratch, SnapshotReceiver};
        let limits = LIMITS;
        // Sparse ids and far positions: about 10 bytes an entity added.
        let crowd = |scratch: &mut EncodeScratch, tick: u32| {
            scratch.candidates.clear();
            scratch.candidates.extend((0..128).map(|k| Candidate {
                id: 1 + k * 1000,
                position: IVec2::new(40_000 + k as i32, 40_000 + tick as i32),
                distance_sq: if k == 0 { -1.0 } else { k as f32 },
            }));
        };
        let mut view = ClientView::new();
        let mut scratch = EncodeScratch::default();
        let (mut rx, mut apply) = (SnapshotReceiver::new(), ApplyScratch::default());
        let mut out = Vec::new();
        let mut tick = 0;
        while rx.entities().len() < 128 {
            tick += 1;
            assert!(tick < 20, "the view never filled");
            crowd(&mut scratch, tick);
            view.encode(tick, 1, 0, &mut scratch, limits, &mut out);
            rx.apply(&Snapshot::decode_body(&out).unwrap(), &mut apply)
                .unwrap();
            view.acknowledge(tick);
        }
        let mut full = 0;
        for _ in 0..2 * limits.history {
            tick += 1;
            crowd(&mut scratch, tick);
            let stats = view.encode(tick, 1, 0, &mut scratch, limits, &mut out);
            full += usize::from(stats.full);
            rx.apply(&Snapshot::decode_body(&out).unwrap(), &mut apply)
                .unwrap();
            assert_eq!(rx.changes().left(), [0u32; 0], "tick {tick}, {stats:?}");
            assert_eq!(rx.entities().len(), 128);
        }
        assert!(full > 0, "no full snapshot was sent");
    }

    #[test]
    fn a_view_keeps_its_memory_whatever_crowds_it_meets() {
        let limits = LIMITS;
        let mut view = ClientView::new();
        let mut scratch = EncodeScratch::default();
        let mut out = Vec::new();
        // Warm up alone, acknowledging every snapshot, until the history
        // has cycled.
        let mut tick = 0;
        for _ in 0..=limits.history {
            tick += 1;
            view.encode(
                tick,
                1,
                tick,
                crowd(&mut scratch, 1, tick),
                limits,
                &mut out,
            );
            view.acknowledge(tick);
        }
        let warm = view.heap_bytes();
        let warm_scratch = scratch.heap_bytes();
        // Crowds grow to four times the view's cap and back.
        for size in (2..=512).chain((2..512).rev()) {
            tick += 1;
            let candidates = crowd(&mut scratch, size, tick);
            let stats = view.encode(tick, 1, tick, candidates, limits, &mut out);
            view.acknowledge(tick);
            let snapshot = Snapshot::decode_body(&out).unwrap();
            assert!(snapshot.added.len() + snapshot.moved.len() <= limits.max_entities);
            assert!(stats.bytes <= limits.budget_bytes);
            assert_eq!(stats.bytes, 2 + out.len());
            assert_eq!(view.heap_bytes(), warm, "grew with a crowd of {size}");
            assert_eq!(
                scratch.heap_bytes(),
                warm_scratch,
                "the scratch grew with a crowd of {size}"
            );
        }
        assert!(view.last_sent().len() <= limits.max_entities);
    }
}
