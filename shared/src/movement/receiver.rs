//! The client half of snapshot delta encoding.

use std::collections::VecDeque;

use glam::{IVec2, Vec2};
use thiserror::Error;

use crate::protocol::movement::{Snapshot, dequantize, tick_after};

/// Decoded snapshots a receiver keeps as possible baselines. The server
/// keeps at most this many too (its baseline history must not be longer,
/// or it could delta against a snapshot the client has forgotten).
pub const CLIENT_SNAPSHOT_HISTORY: usize = 32;

/// Longest list a snapshot may carry (each of `removed`, `added`, `moved`);
/// longer ones are refused as malformed before any work. Also the largest
/// view: small enough that the largest delta, one removing a whole view and
/// adding another, decodes within the codec's limit.
pub const MAX_SNAPSHOT_ENTITIES: usize = 4000;

// The codec's limit counts 4 bytes a 32-bit value and 8 a list length,
// whatever their encoded size: a snapshot's 5 head values and 3 lengths,
// one value a removal and three an added or moved entity (of which a view
// holds at most MAX_SNAPSHOT_ENTITIES together).
const _: () =
    assert!(5 * 4 + 3 * 8 + (4 + 12) * MAX_SNAPSHOT_ENTITIES <= crate::protocol::MAX_MESSAGE_BYTES);

/// Why a snapshot was not applied. In every case the receiver's state is
/// unchanged and [`SnapshotReceiver::ack`] still names the last applied
/// snapshot, so the server keeps (or falls back to) a baseline the client
/// has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ApplyError {
    /// Not newer than the last applied snapshot.
    #[error("snapshot {0} is not newer than the last one applied")]
    Stale(u32),
    /// The baseline is not in the history (lost, or too old).
    #[error("baseline snapshot {0} is unknown")]
    MissingBaseline(u32),
    /// Inconsistent with its baseline, or out of bounds.
    #[error("malformed snapshot")]
    Malformed,
}

/// Entities that entered and left the view with the last applied snapshot,
/// relative to the state before it, sorted by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewChanges {
    entered: Vec<u32>,
    left: Vec<u32>,
}

impl ViewChanges {
    /// Ids that are visible now and were not before.
    pub fn entered(&self) -> &[u32] {
        &self.entered
    }

    /// Ids that were visible before and are not now.
    pub fn left(&self) -> &[u32] {
        &self.left
    }
}

#[derive(Debug, Clone, Default)]
struct Frame {
    tick: u32,
    /// Sorted by id.
    entities: Vec<(u32, IVec2)>,
}

/// The working lists of [`SnapshotReceiver::apply`]: a snapshot's entries
/// with their ids ungapped. The caller owns them, so that a process with
/// thousands of receivers (a bot swarm) has one set, warm in the cache,
/// where each receiver's own would be cold by its next snapshot. Reusing
/// one allocates nothing in steady state.
#[derive(Debug, Default)]
pub struct ApplyScratch {
    removed: Vec<u32>,
    moved: Vec<(u32, IVec2)>,
    added: Vec<(u32, IVec2)>,
}

/// Reconstructs the server's view from full and delta snapshots, keeping a
/// bounded history of baselines ([`CLIENT_SNAPSHOT_HISTORY`]). In steady
/// state it allocates nothing: frames are recycled.
///
/// The server's baseline never moves back (it is the newest snapshot the
/// client acknowledged), so once a snapshot came as a delta against frame
/// B, the frames before B are spent, and a new frame takes the buffer of
/// the newest spent one: the history spans about a round trip, not
/// [`CLIENT_SNAPSHOT_HISTORY`] frames, and the buffer a snapshot is built
/// in was last written a few ticks before (a bot swarm's receivers stay
/// warm in the cache), not half a second before.
#[derive(Debug, Default)]
pub struct SnapshotReceiver {
    history: VecDeque<Frame>,
    /// The entities of the last frame recycled, for the next one.
    spare: Vec<(u32, IVec2)>,
    you: Option<u32>,
    last_input: u32,
    /// The tick of the latest frame (0 for none) and the viewer's own
    /// quantized position in it: kept beside the rest, so that the reads
    /// of every input (the ack, the own position) and the staleness check
    /// do not walk to the latest frame, cold in the cache by then.
    latest_tick: u32,
    own: Option<IVec2>,
}

/// Turns gap-coded ids into ids; false on overflow or a non-increasing id.
fn ungap<T>(
    base: u32,
    items: impl Iterator<Item = T>,
    gap: impl Fn(&T) -> u32,
    mut out: impl FnMut(u32, T),
) -> bool {
    let mut previous: Option<u32> = None;
    for item in items {
        let g = gap(&item);
        let id = match previous {
            None => base.checked_add(g),
            Some(_) if g == 0 => None,
            Some(p) => p.checked_add(g),
        };
        let Some(id) = id else { return false };
        previous = Some(id);
        out(id, item);
    }
    true
}

impl SnapshotReceiver {
    /// An empty receiver: nothing applied yet, acks 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `snapshot`, using `scratch` for its working lists; see
    /// [`changes`](Self::changes) for what entered and left the view.
    ///
    /// # Errors
    /// See [`ApplyError`]; the receiver is unchanged then.
    pub fn apply(
        &mut self,
        snapshot: &Snapshot,
        scratch: &mut ApplyScratch,
    ) -> Result<(), ApplyError> {
        if snapshot.tick == 0 {
            return Err(ApplyError::Malformed);
        }
        if self.latest_tick != 0 && !tick_after(snapshot.tick, self.latest_tick) {
            return Err(ApplyError::Stale(snapshot.tick));
        }
        if snapshot.removed.len() > MAX_SNAPSHOT_ENTITIES
            || snapshot.added.len() > MAX_SNAPSHOT_ENTITIES
            || snapshot.moved.len() > MAX_SNAPSHOT_ENTITIES
        {
            return Err(ApplyError::Malformed);
        }
        let baseline = if snapshot.baseline_age == 0 {
            None
        } else {
            // Wrapping, as the server counts the age across the wrap.
            let tick = snapshot.tick.wrapping_sub(snapshot.baseline_age);
            if tick == 0 || !tick_after(snapshot.tick, tick) {
                return Err(ApplyError::Malformed);
            }
            // From the newest back: the baseline is about a round trip
            // old, near the back of a full history, and every frame
            // visited is a cache line (a bot swarm's receivers are cold).
            let index = self
                .history
                .iter()
                .rposition(|f| f.tick == tick)
                .ok_or(ApplyError::MissingBaseline(tick))?;
            Some(index)
        };

        scratch.decode(snapshot)?;
        let mut next = std::mem::take(&mut self.spare);
        next.clear();
        let base: &[(u32, IVec2)] = baseline.map_or(&[], |i| &self.history[i].entities);
        if !build(base, scratch, &mut next) {
            self.spare = next;
            return Err(ApplyError::Malformed);
        }

        let mut frame = match baseline {
            Some(spent @ 1..) => self.history.remove(spent - 1).unwrap_or_default(),
            _ if self.history.len() >= CLIENT_SNAPSHOT_HISTORY => {
                self.history.pop_front().unwrap_or_default()
            }
            _ => Frame::default(),
        };
        self.spare = std::mem::replace(&mut frame.entities, next);
        frame.tick = snapshot.tick;
        self.own = find(&frame.entities, snapshot.you);
        self.history.push_back(frame);
        self.you = Some(snapshot.you);
        self.last_input = snapshot.last_input;
        self.latest_tick = snapshot.tick;
        Ok(())
    }

    /// The tick of the last applied snapshot (0 for none): send it as
    /// [`MoveInput::ack_snapshot`](crate::protocol::movement::MoveInput::ack_snapshot).
    pub fn ack(&self) -> u32 {
        self.latest_tick
    }

    /// The visible entities, `(id, quantized position)` sorted by id.
    pub fn entities(&self) -> &[(u32, IVec2)] {
        self.history.back().map_or(&[], |f| &f.entities)
    }

    /// Position in metres of a visible entity.
    pub fn position(&self, id: u32) -> Option<Vec2> {
        find(self.entities(), id).map(dequantize)
    }

    /// The client's own entity id, once a snapshot was applied.
    pub fn you(&self) -> Option<u32> {
        self.you
    }

    /// The client's own position as the server last sent it.
    pub fn own_position(&self) -> Option<Vec2> {
        self.own.map(dequantize)
    }

    /// The last input sequence the server had applied, as of the last
    /// applied snapshot.
    pub fn last_input(&self) -> u32 {
        self.last_input
    }

    /// What the last applied snapshot changed: its view against the one
    /// before it (both still in the history), compared when asked, so that
    /// clients that do not ask pay nothing.
    pub fn changes(&self) -> ViewChanges {
        let mut changes = ViewChanges::default();
        let mut frames = self.history.iter().rev();
        if let Some(latest) = frames.next() {
            let previous: &[(u32, IVec2)] = frames.next().map_or(&[], |f| &f.entities);
            diff(previous, &latest.entities, &mut changes);
        }
        changes
    }
}

impl ApplyScratch {
    /// Fills the lists from `snapshot`, ids ungapped.
    fn decode(&mut self, snapshot: &Snapshot) -> Result<(), ApplyError> {
        self.removed.clear();
        self.moved.clear();
        self.added.clear();
        let removed = &mut self.removed;
        let moved = &mut self.moved;
        let added = &mut self.added;
        let ok = ungap(
            snapshot.id_base,
            snapshot.removed.iter(),
            |g| **g,
            |id, _| removed.push(id),
        ) && ungap(
            snapshot.id_base,
            snapshot.moved.iter(),
            |m| m.id_gap,
            |id, m| moved.push((id, IVec2::new(m.dx, m.dy))),
        ) && ungap(
            snapshot.id_base,
            snapshot.added.iter(),
            |a| a.id_gap,
            |id, a| added.push((id, IVec2::new(a.x, a.y))),
        );
        if ok && (snapshot.baseline_age != 0 || (removed.is_empty() && moved.is_empty())) {
            Ok(())
        } else {
            Err(ApplyError::Malformed)
        }
    }
}

/// The quantized position of entity `id` in `entities` (sorted by id).
fn find(entities: &[(u32, IVec2)], id: u32) -> Option<IVec2> {
    entities
        .binary_search_by_key(&id, |e| e.0)
        .ok()
        .map(|i| entities[i].1)
}

/// `base` − removed, moved applied, + added (the lists of `lists`), into
/// `next` in one pass; false when the lists do not fit the baseline.
/// A view larger than [`MAX_SNAPSHOT_ENTITIES`] is refused too: each list
/// is bounded, and without this so would not be the views deltas build up.
fn build(base: &[(u32, IVec2)], lists: &ApplyScratch, next: &mut Vec<(u32, IVec2)>) -> bool {
    let (removed, moved, added) = (&lists.removed[..], &lists.moved[..], &lists.added[..]);
    if (base.len() + added.len()).saturating_sub(removed.len()) > MAX_SNAPSHOT_ENTITIES {
        return false;
    }
    next.reserve(base.len() + added.len());
    let (mut r, mut m, mut a) = (0, 0, 0);
    for &(id, position) in base {
        // The added entities before this one.
        while let Some(&entry) = added.get(a)
            && entry.0 < id
        {
            next.push(entry);
            a += 1;
        }
        if removed.get(r) == Some(&id) {
            r += 1;
            continue;
        }
        if added.get(a).is_some_and(|entry| entry.0 == id) {
            return false;
        }
        let mut position = position;
        if let Some(&(moved_id, delta)) = moved.get(m)
            && moved_id == id
        {
            position = position.wrapping_add(delta);
            m += 1;
        }
        next.push((id, position));
    }
    next.extend_from_slice(&added[a..]);
    r == removed.len() && m == moved.len()
}

fn diff(old: &[(u32, IVec2)], new: &[(u32, IVec2)], changes: &mut ViewChanges) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 == n.0 => {
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.0 < n.0 => {
                changes.left.push(o.0);
                i += 1;
            }
            (Some(o), None) => {
                changes.left.push(o.0);
                i += 1;
            }
            (_, Some(n)) => {
                changes.entered.push(n.0);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::movement::{EntityAdded, EntityMoved};

    fn full(tick: u32, entities: &[(u32, i32, i32)]) -> Snapshot {
        let mut previous = 0;
        Snapshot {
            tick,
            you: entities[0].0,
            added: entities
                .iter()
                .map(|&(id, x, y)| {
                    let gap = id - previous;
                    previous = id;
                    EntityAdded { id_gap: gap, x, y }
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn deltas_cannot_grow_a_view_past_the_entity_cap() {
        let mut rx = SnapshotReceiver::new();
        let mut scratch = ApplyScratch::default();
        let crowd: Vec<(u32, i32, i32)> = (1..=MAX_SNAPSHOT_ENTITIES as u32)
            .map(|id| (id, 0, 0))
            .collect();
        rx.apply(&full(1, &crowd), &mut scratch).unwrap();
        // Each list is within its bound; the view they make is not.
        let more = Snapshot {
            tick: 2,
            baseline_age: 1,
            you: 1,
            id_base: MAX_SNAPSHOT_ENTITIES as u32,
            added: vec![EntityAdded {
                id_gap: 1,
                x: 0,
                y: 0,
            }],
            ..Snapshot::default()
        };
        assert_eq!(rx.apply(&more, &mut scratch), Err(ApplyError::Malformed));
        assert_eq!(rx.entities().len(), MAX_SNAPSHOT_ENTITIES);
    }

    #[test]
    fn full_then_delta_then_view_changes() {
        let mut rx = SnapshotReceiver::new();
        let mut scratch = ApplyScratch::default();
        rx.apply(&full(1, &[(3, 0, 0), (5, 10, 10)]), &mut scratch)
            .unwrap();
        assert_eq!(rx.changes().entered(), &[3, 5]);
        assert_eq!(rx.ack(), 1);
        let delta = Snapshot {
            tick: 2,
            baseline_age: 1,
            you: 3,
            removed: vec![5],
            added: vec![EntityAdded {
                id_gap: 9,
                x: 1,
                y: 2,
            }],
            moved: vec![EntityMoved {
                id_gap: 3,
                dx: 4,
                dy: -4,
            }],
            ..Snapshot::default()
        };
        rx.apply(&delta, &mut scratch).unwrap();
        assert_eq!(rx.changes().entered(), &[9]);
        assert_eq!(rx.changes().left(), &[5]);
        assert_eq!(
            rx.entities(),
            &[(3, IVec2::new(4, -4)), (9, IVec2::new(1, 2))]
        );
        assert_eq!(rx.apply(&delta, &mut scratch), Err(ApplyError::Stale(2)));
        // A refused snapshot leaves the last changes as they were.
        assert_eq!(rx.changes().entered(), &[9]);
    }

    #[test]
    fn inconsistent_deltas_are_refused_without_change() {
        let mut rx = SnapshotReceiver::new();
        let mut scratch = ApplyScratch::default();
        rx.apply(&full(1, &[(3, 0, 0)]), &mut scratch).unwrap();
        let bad = [
            // Removes an id the baseline lacks.
            Snapshot {
                tick: 2,
                baseline_age: 1,
                removed: vec![4],
                ..Snapshot::default()
            },
            // Adds an id the baseline has.
            full(2, &[(3, 0, 0)]).clone_with_age(1),
            // Baseline at tick 0, which no tick is.
            Snapshot {
                tick: 2,
                baseline_age: 2,
                ..Snapshot::default()
            },
            // An age of 2^31 or more: no baseline comes after it.
            Snapshot {
                tick: 2,
                baseline_age: 1 << 31,
                ..Snapshot::default()
            },
            // Repeated id.
            Snapshot {
                tick: 2,
                removed: vec![3, 0],
                baseline_age: 1,
                ..Snapshot::default()
            },
        ];
        for snapshot in &bad {
            assert_eq!(
                rx.apply(snapshot, &mut scratch),
                Err(ApplyError::Malformed),
                "{snapshot:?}"
            );
            assert_eq!(rx.ack(), 1);
            assert_eq!(rx.entities(), &[(3, IVec2::ZERO)]);
        }
        let missing = Snapshot {
            tick: 9,
            baseline_age: 2,
            ..Snapshot::default()
        };
        assert_eq!(
            rx.apply(&missing, &mut scratch),
            Err(ApplyError::MissingBaseline(7))
        );
    }

    trait WithAge {
        fn clone_with_age(self, age: u32) -> Snapshot;
    }

    impl WithAge for Snapshot {
        fn clone_with_age(mut self, age: u32) -> Snapshot {
            self.baseline_age = age;
            self
        }
    }

    /// A delta against the frame `age` ticks before `tick` that moves
    /// entity 7 (the viewer) by +1 in x.
    fn moved(tick: u32, age: u32) -> Snapshot {
        Snapshot {
            tick,
            baseline_age: age,
            you: 7,
            moved: vec![EntityMoved {
                id_gap: 7,
                dx: 1,
                dy: 0,
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_baseline_is_found_across_missed_snapshots() {
        let mut rx = SnapshotReceiver::new();
        let mut scratch = ApplyScratch::default();
        // Tick 3 never arrived: the history holds 1, 2, 4 and 5.
        for (tick, x) in [(1, 0), (2, 10), (4, 20), (5, 30)] {
            rx.apply(&full(tick, &[(7, x, 0)]), &mut scratch).unwrap();
        }
        // Against 2, three frames back but four ticks old.
        rx.apply(&moved(6, 4), &mut scratch).unwrap();
        assert_eq!(rx.entities(), &[(7, IVec2::new(11, 0))]);
        // Against 5, the newest frame.
        rx.apply(&moved(7, 2), &mut scratch).unwrap();
        assert_eq!(rx.entities(), &[(7, IVec2::new(31, 0))]);
        assert_eq!(
            rx.apply(&moved(8, 5), &mut scratch),
            Err(ApplyError::MissingBaseline(3))
        );
    }

    #[test]
    fn a_new_frame_takes_the_newest_spent_ones_buffer() {
        let mut rx = SnapshotReceiver::new();
        let mut scratch = ApplyScratch::default();
        for tick in 1..=3 {
            rx.apply(&full(tick, &[(7, 0, 0)]), &mut scratch).unwrap();
        }
        let ticks = |rx: &SnapshotReceiver| rx.history.iter().map(|f| f.tick).collect::<Vec<_>>();
        // Against 2: frame 1 will never be a baseline again, and frame 4
        // is built in its buffer.
        rx.apply(&moved(4, 2), &mut scratch).unwrap();
        assert_eq!(ticks(&rx), [2, 3, 4]);
        assert_eq!(
            rx.apply(&moved(5, 4), &mut scratch),
            Err(ApplyError::MissingBaseline(1))
        );
        // The same baseline again is fine (the server's ack did not move).
        rx.apply(&moved(5, 3), &mut scratch).unwrap();
        assert_eq!(rx.entities(), &[(7, IVec2::new(1, 0))]);
        // A long run of deltas two ticks behind keeps the three frames it
        // needs (and frame 2, spent, not recycled since newer ones were
        // spent after it), and the last two still give the view's changes.
        for tick in 6..200 {
            rx.apply(&moved(tick, 2), &mut scratch).unwrap();
            assert_eq!(ticks(&rx), [2, tick - 2, tick - 1, tick]);
        }
        assert_eq!(rx.changes(), ViewChanges::default());
    }

    #[test]
    fn history_is_bounded() {
        let mut rx = SnapshotReceiver::new();
        let mut scratch = ApplyScratch::default();
        for tick in 1..=100 {
            rx.apply(&full(tick, &[(1, 0, 0)]), &mut scratch).unwrap();
        }
        assert_eq!(rx.history.len(), CLIENT_SNAPSHOT_HISTORY);
        let old = Snapshot {
            tick: 101,
            baseline_age: CLIENT_SNAPSHOT_HISTORY as u32 + 1,
            ..Snapshot::default()
        };
        assert!(matches!(
            rx.apply(&old, &mut scratch),
            Err(ApplyError::MissingBaseline(_))
        ));
    }

    /// Gap-codes sorted ids against base 0.
    fn gaps(ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut previous = 0;
        ids.into_iter()
            .map(|id| {
                let gap = id - previous;
                previous = id;
                gap
            })
            .collect()
    }

    /// What a delta should give, computed the plain way: `None` when the
    /// lists do not fit the baseline.
    fn model(
        base: &BTreeMap<u32, IVec2>,
        removed: &[u32],
        moved: &BTreeMap<u32, IVec2>,
        added: &BTreeMap<u32, IVec2>,
    ) -> Option<Vec<(u32, IVec2)>> {
        let mut view = base.clone();
        for id in removed {
            view.remove(id)?;
        }
        for (id, delta) in moved {
            let position = view.get_mut(id)?;
            *position = position.wrapping_add(*delta);
        }
        for (&id, &position) in added {
            if view.insert(id, position).is_some() {
                return None;
            }
        }
        Some(view.into_iter().collect())
    }

    fn entities() -> impl Strategy<Value = BTreeMap<u32, IVec2>> {
        prop::collection::btree_map(1u32..60, (-50i32..50, -50i32..50), 0..30).prop_map(|m| {
            m.into_iter()
                .map(|(id, (x, y))| (id, IVec2::new(x, y)))
                .collect()
        })
    }

    proptest! {
        /// Any delta on any baseline: the receiver's one-pass merge gives
        /// the model's view, or refuses exactly the deltas the model
        /// refuses, and the changes are the two views' difference.
        #[test]
        fn deltas_apply_like_the_plain_model(
            base in entities(),
            actions in prop::collection::vec(0u8..4, 60),
            deltas in prop::collection::vec((-5i32..5, -5i32..5), 60),
            new in entities(),
            flaw in 0u8..6,
        ) {
            // Per baseline entity: kept, removed, moved, or removed and
            // added again; new ids are added.
            let mut removed = Vec::new();
            let mut moved = BTreeMap::new();
            let mut added: BTreeMap<u32, IVec2> =
                new.into_iter().filter(|(id, _)| !base.contains_key(id)).collect();
            for (i, (&id, &position)) in base.iter().enumerate() {
                match actions[i] {
                    1 => removed.push(id),
                    2 => {
                        moved.insert(id, IVec2::new(deltas[i].0, deltas[i].1));
                    }
                    3 => {
                        removed.push(id);
                        added.insert(id, position);
                    }
                    _ => {}
                }
            }
            let kept = base.keys().copied().find(|id| !removed.contains(id));
            match (flaw, kept, removed.first()) {
                // Adds an entity the view still has.
                (0, Some(id), _) => {
                    added.insert(id, IVec2::ZERO);
                }
                // Removes one the baseline lacks.
                (1, _, _) => {
                    removed.push(60);
                }
                // Moves one it removes.
                (2, _, Some(&id)) => {
                    moved.insert(id, IVec2::ONE);
                }
                _ => {}
            }
            let added_list = |entities: &BTreeMap<u32, IVec2>| -> Vec<EntityAdded> {
                gaps(entities.keys().copied())
                    .into_iter()
                    .zip(entities.values())
                    .map(|(id_gap, p)| EntityAdded { id_gap, x: p.x, y: p.y })
                    .collect()
            };
            let mut rx = SnapshotReceiver::new();
            let mut scratch = ApplyScratch::default();
            let full = Snapshot {
                tick: 1,
                added: added_list(&base),
                ..Snapshot::default()
            };
            rx.apply(&full, &mut scratch).unwrap();
            let delta = Snapshot {
                tick: 2,
                baseline_age: 1,
                removed: gaps(removed.iter().copied()),
                moved: gaps(moved.keys().copied())
                    .into_iter()
                    .zip(moved.values())
                    .map(|(id_gap, d)| EntityMoved { id_gap, dx: d.x, dy: d.y })
                    .collect(),
                added: added_list(&added),
                ..Snapshot::default()
            };
            let before: Vec<(u32, IVec2)> = base.clone().into_iter().collect();
            match model(&base, &removed, &moved, &added) {
                Some(expected) => {
                    prop_assert_eq!(rx.apply(&delta, &mut scratch), Ok(()));
                    prop_assert_eq!(rx.entities(), &expected[..]);
                    let changes = rx.changes();
                    let had = |id: &u32| base.contains_key(id);
                    let has = |id: &u32| expected.iter().any(|e| e.0 == *id);
                    let entered: Vec<u32> = expected.iter().map(|e| e.0).filter(|id| !had(id)).collect();
                    let left: Vec<u32> = base.keys().copied().filter(|id| !has(id)).collect();
                    prop_assert_eq!(changes.entered(), &entered[..]);
                    prop_assert_eq!(changes.left(), &left[..]);
                }
                None => {
                    prop_assert_eq!(rx.apply(&delta, &mut scratch), Err(ApplyError::Malformed));
                    prop_assert_eq!(rx.entities(), &before[..]);
                    prop_assert_eq!(rx.ack(), 1);
                }
            }
        }
    }
}
