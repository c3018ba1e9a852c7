//! One client's view: what it was sent, what it acknowledged, and the
//! budgeted, nearest-first, delta-encoded snapshot of the next tick. Plain
//! data, no bevy: tests and benchmarks drive it directly.

use std::collections::VecDeque;

use glam::IVec2;
use shared::movement::CLIENT_SNAPSHOT_HISTORY;
use shared::protocol::movement::{
    EntityAdded, EntityMoved, Snapshot, signed_varint_len, varint_len,
};

/// Upper bound of a snapshot's fixed part: message id (2), five u32
/// varints (5 each) and three list lengths (3 each).
pub const SNAPSHOT_HEADER_MAX: usize = 2 + 5 * 5 + 3 * 3;

/// Upper bound of one removal, one added entity or one moved entity.
pub const ENTRY_MAX: usize = 15;

/// An entity in a client's area of interest.
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// The server's record of one client's view.
#[derive(Debug, Default)]
pub struct ClientView {
    /// Sent frames, oldest first, at most `SnapshotLimits::history`.
    history: VecDeque<Frame>,
    acked: u32,
    // Scratch, reused every tick.
    chosen: Vec<u32>,
    removed: Vec<u32>,
    added: Vec<(u32, IVec2)>,
    moved: Vec<(u32, IVec2)>,
    next: Vec<(u32, IVec2)>,
}

fn find(entities: &[(u32, IVec2)], id: u32) -> Option<IVec2> {
    entities
        .binary_search_by_key(&id, |e| e.0)
        .ok()
        .map(|i| entities[i].1)
}

fn gap_len(id: u32, base: u32) -> usize {
    varint_len(u64::from(id - base))
}

impl ClientView {
    /// A view that has been sent nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client says it applied snapshot `tick`. Acks of snapshots never
    /// sent, or older than the current ack, are ignored.
    pub fn acknowledge(&mut self, tick: u32) {
        let newest = self.history.back().map_or(0, |f| f.tick);
        if tick > self.acked && tick <= newest {
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
        self.history
            .back()
            .is_some_and(|f| find(&f.entities, id).is_some())
    }

    /// What the client holds after the last snapshot sent, sorted by id.
    pub fn last_sent(&self) -> &[(u32, IVec2)] {
        self.history.back().map_or(&[], |f| &f.entities)
    }

    /// The baseline: the acknowledged frame, if still in the history.
    fn baseline(&self) -> Option<usize> {
        if self.acked == 0 {
            return None;
        }
        self.history.iter().position(|f| f.tick == self.acked)
    }

    /// Builds the snapshot of `tick` for this view.
    ///
    /// `candidates` must be sorted nearest first, the viewer's own entity
    /// first, and hold only entities the client may see (the caller
    /// applies radius and hysteresis). The first `max_entities` form the
    /// view. The snapshot is a delta against the acknowledged snapshot when
    /// it is still in the history, else full. Entities are updated nearest
    /// first while the budget lasts; once an update does not fit, every
    /// farther entity keeps the value the client already has (or, if the
    /// client does not have it, is left out until a later tick). Leaving
    /// entities are always announced (see [`SnapshotLimits::min_budget`]).
    pub fn encode(
        &mut self,
        tick: u32,
        you: u32,
        last_input: u32,
        candidates: &[Candidate],
        limits: SnapshotLimits,
    ) -> (Snapshot, EncodeStats) {
        let view = &candidates[..candidates.len().min(limits.max_entities)];
        let baseline = self.baseline();
        let base: &[(u32, IVec2)] = baseline.map_or(&[], |i| &self.history[i].entities);
        let baseline_age = baseline.map_or(0, |i| tick.wrapping_sub(self.history[i].tick));

        self.chosen.clear();
        self.chosen.extend(view.iter().map(|c| c.id));
        self.chosen.sort_unstable();
        let id_base = self
            .chosen
            .first()
            .copied()
            .into_iter()
            .chain(base.first().map(|e| e.0))
            .min()
            .unwrap_or(0);

        self.removed.clear();
        self.removed.extend(
            base.iter()
                .map(|e| e.0)
                .filter(|id| self.chosen.binary_search(id).is_err()),
        );
        let mut used = 2
            + [tick, baseline_age, last_input, you, id_base]
                .iter()
                .map(|&v| varint_len(u64::from(v)))
                .sum::<usize>()
            + varint_len(self.removed.len() as u64)
            + 2 * varint_len(limits.max_entities as u64);
        let mut previous = id_base;
        for &id in &self.removed {
            used += gap_len(id, previous);
            previous = id;
        }

        self.added.clear();
        self.moved.clear();
        self.next.clear();
        let mut budget_limited = false;
        for c in view {
            let id_cost = gap_len(c.id, id_base);
            match find(base, c.id) {
                Some(old) if old == c.position => self.next.push((c.id, old)),
                Some(old) => {
                    let d = c.position.wrapping_sub(old);
                    let cost = id_cost + signed_varint_len(d.x) + signed_varint_len(d.y);
                    if !budget_limited && used + cost <= limits.budget_bytes {
                        used += cost;
                        self.moved.push((c.id, d));
                        self.next.push((c.id, c.position));
                    } else {
                        budget_limited = true;
                        self.next.push((c.id, old));
                    }
                }
                None => {
                    let p = c.position;
                    let cost = id_cost + signed_varint_len(p.x) + signed_varint_len(p.y);
                    if !budget_limited && used + cost <= limits.budget_bytes {
                        used += cost;
                        self.added.push((c.id, p));
                        self.next.push((c.id, p));
                    } else {
                        budget_limited = true;
                    }
                }
            }
        }
        self.added.sort_unstable_by_key(|e| e.0);
        self.moved.sort_unstable_by_key(|e| e.0);
        self.next.sort_unstable_by_key(|e| e.0);

        // Ids go out as gaps from the previous id (from `id_base` for the
        // first), computed while collecting: one allocation per list.
        let gap_from = |previous: &mut u32, id: u32| {
            let gap = id - *previous;
            *previous = id;
            gap
        };
        let mut previous = id_base;
        let removed = self
            .removed
            .iter()
            .map(|&id| gap_from(&mut previous, id))
            .collect();
        let mut previous = id_base;
        let added = self
            .added
            .iter()
            .map(|&(id, p)| EntityAdded {
                id_gap: gap_from(&mut previous, id),
                x: p.x,
                y: p.y,
            })
            .collect();
        let mut previous = id_base;
        let moved = self
            .moved
            .iter()
            .map(|&(id, d)| EntityMoved {
                id_gap: gap_from(&mut previous, id),
                dx: d.x,
                dy: d.y,
            })
            .collect();
        let snapshot = Snapshot {
            tick,
            baseline_age,
            last_input,
            you,
            id_base,
            removed,
            added,
            moved,
        };

        // Record the frame, recycling the oldest.
        let keep = limits.history.clamp(1, CLIENT_SNAPSHOT_HISTORY);
        let mut frame = if self.history.len() >= keep {
            self.history.pop_front().unwrap_or_default()
        } else {
            Frame::default()
        };
        while self.history.len() >= keep {
            self.history.pop_front();
        }
        frame.tick = tick;
        std::mem::swap(&mut frame.entities, &mut self.next);
        self.history.push_back(frame);

        let stats = EncodeStats {
            bytes: encoded_len(&snapshot),
            full: baseline.is_none(),
            budget_limited,
        };
        (snapshot, stats)
    }
}

/// The exact encoded size of a snapshot, message id included.
pub fn encoded_len(s: &Snapshot) -> usize {
    let v = |x: u32| varint_len(u64::from(x));
    2 + v(s.tick)
        + v(s.baseline_age)
        + v(s.last_input)
        + v(s.you)
        + v(s.id_base)
        + varint_len(s.removed.len() as u64)
        + s.removed.iter().map(|&g| v(g)).sum::<usize>()
        + varint_len(s.added.len() as u64)
        + s.added
            .iter()
            .map(|a| v(a.id_gap) + signed_varint_len(a.x) + signed_varint_len(a.y))
            .sum::<usize>()
        + varint_len(s.moved.len() as u64)
        + s.moved
            .iter()
            .map(|m| v(m.id_gap) + signed_varint_len(m.dx) + signed_varint_len(m.dy))
            .sum::<usize>()
}
