//! A uniform spatial grid, rebuilt every tick with a counting sort: O(N +
//! cells), no allocation once warm.

use glam::Vec2;
use shared::prefetch::prefetch;

/// Most cells a grid uses; when the entities spread wider than this many
/// cells of the configured size, the cells grow (queries stay correct,
/// they just visit more entities).
pub const MAX_GRID_CELLS: usize = 1 << 20;

/// Items (a position and what the caller keeps with it, `T`) bucketed by
/// cell. The grid keeps a copy of the items in cell order, so that a query
/// reads everything it visits front to back instead of looking each item
/// up elsewhere.
#[derive(Debug, Clone, Default)]
pub struct SpatialGrid<T> {
    cell_size: f32,
    origin: Vec2,
    cols: usize,
    rows: usize,
    /// `starts[c]..starts[c + 1]` are the slots of cell `c` in `by_cell`.
    starts: Vec<u32>,
    /// Item indices in cell order (rebuild only).
    order: Vec<u32>,
    /// The items in cell order.
    by_cell: Vec<(Vec2, T)>,
    cell_of: Vec<u32>,
}

impl<T: Copy> SpatialGrid<T> {
    /// An empty grid with cells of `cell_size` metres (at least 1 m).
    pub fn new(cell_size: f32) -> Self {
        Self {
            cell_size: if cell_size.is_finite() {
                cell_size.max(1.0)
            } else {
                1.0
            },
            origin: Vec2::ZERO,
            cols: 0,
            rows: 0,
            starts: Vec::new(),
            order: Vec::new(),
            by_cell: Vec::new(),
            cell_of: Vec::new(),
        }
    }

    /// The cell size in use after the last rebuild.
    pub fn cell_size(&self) -> f32 {
        self.cell_size
    }

    fn cell(&self, p: Vec2) -> (usize, usize) {
        let rel = ((p - self.origin) / self.cell_size).max(Vec2::ZERO);
        // Non-finite → 0 through the saturating casts.
        let x = (rel.x as usize).min(self.cols.saturating_sub(1));
        let y = (rel.y as usize).min(self.rows.saturating_sub(1));
        (x, y)
    }

    /// Buckets `items` by their positions.
    pub fn rebuild(&mut self, items: &[(Vec2, T)], cell_size: f32) {
        let mut min = Vec2::splat(f32::MAX);
        let mut max = Vec2::splat(f32::MIN);
        for (p, _) in items.iter().filter(|(p, _)| p.is_finite()) {
            min = min.min(*p);
            max = max.max(*p);
        }
        if min.x > max.x {
            min = Vec2::ZERO;
            max = Vec2::ZERO;
        }
        let mut size = if cell_size.is_finite() {
            cell_size.max(1.0)
        } else {
            1.0
        };
        let extent = max - min;
        let dims = |size: f32| {
            // `as` saturates (an infinite extent is usize::MAX cells).
            let c = ((extent.x / size) as usize).saturating_add(1);
            let r = ((extent.y / size) as usize).saturating_add(1);
            (c, r)
        };
        while dims(size).0.saturating_mul(dims(size).1) > MAX_GRID_CELLS {
            size *= 2.0;
        }
        self.cell_size = size;
        self.origin = min;
        (self.cols, self.rows) = dims(size);
        let cells = self.cols * self.rows;

        self.starts.clear();
        self.starts.resize(cells + 1, 0);
        self.cell_of.clear();
        for (p, _) in items {
            let (x, y) = self.cell(*p);
            let c = y * self.cols + x;
            self.cell_of.push(c as u32);
            self.starts[c + 1] += 1;
        }
        for c in 0..cells {
            self.starts[c + 1] += self.starts[c];
        }
        self.order.clear();
        self.order.resize(items.len(), 0);
        // Fill using `starts[c]` as a cursor, then restore it.
        for (i, &c) in self.cell_of.iter().enumerate() {
            let slot = &mut self.starts[c as usize];
            self.order[*slot as usize] = i as u32;
            *slot += 1;
        }
        for c in (1..=cells).rev() {
            self.starts[c] = self.starts[c - 1];
        }
        self.starts[0] = 0;
        self.by_cell.clear();
        self.by_cell
            .extend(self.order.iter().map(|&i| items[i as usize]));
    }

    /// Calls `visit` with every item in the cells that overlap the square
    /// of half-side `radius` around `center` (a superset of the circle:
    /// the caller checks distances).
    pub fn query(&self, center: Vec2, radius: f32, mut visit: impl FnMut(Vec2, &T)) {
        for run in self.runs(center, radius) {
            for (position, item) in run {
                visit(*position, item);
            }
        }
    }

    /// Asks the CPU for the items a [`query`](Self::query) with the same
    /// arguments visits (see [`shared::prefetch`]): a few queries ahead,
    /// so that they are in the cache when it runs. Consecutive queries
    /// (viewers in the order the game keeps them) are far apart, and
    /// between two visits of the same cells every viewer's own state has
    /// gone through the cache.
    pub fn prefetch_query(&self, center: Vec2, radius: f32) {
        for run in self.runs(center, radius) {
            prefetch(run);
        }
    }

    /// The items a [`query`](Self::query) visits, as one slice per row of
    /// cells that overlap the square of half-side `radius` around
    /// `center`, for callers that filter a whole run at a time.
    pub fn runs(&self, center: Vec2, radius: f32) -> impl Iterator<Item = &[(Vec2, T)]> {
        let (x0, y0) = self.cell(center - Vec2::splat(radius));
        let (x1, y1) = self.cell(center + Vec2::splat(radius));
        let rows = if self.cols == 0 { 0..0 } else { y0..y1 + 1 };
        rows.map(move |y| {
            let row = y * self.cols;
            let from = self.starts[row + x0] as usize;
            let to = self.starts[row + x1 + 1] as usize;
            &self.by_cell[from..to]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_find_everything_in_range() {
        let items: Vec<(Vec2, u32)> = (0..500)
            .map(|i| {
                let f = i as f32;
                let p = Vec2::new((f * 37.0) % 400.0 - 200.0, (f * 91.0) % 300.0 - 150.0);
                (p, i)
            })
            .collect();
        let positions: Vec<Vec2> = items.iter().map(|&(p, _)| p).collect();
        let mut grid = SpatialGrid::new(16.0);
        grid.rebuild(&items, 16.0);
        for center in [Vec2::ZERO, Vec2::new(-200.0, 150.0), Vec2::new(500.0, 0.0)] {
            let mut found = Vec::new();
            grid.query(center, 40.0, |p, &i| {
                assert_eq!(p, positions[i as usize]);
                found.push(i);
            });
            for (i, p) in positions.iter().enumerate() {
                if p.distance(center) <= 40.0 {
                    assert!(found.contains(&(i as u32)), "{i} missing near {center}");
                }
            }
            let mut dedup = found.clone();
            dedup.sort_unstable();
            dedup.dedup();
            assert_eq!(dedup.len(), found.len());
        }
    }

    #[test]
    fn huge_spreads_grow_the_cells_instead_of_the_memory() {
        let items = [
            (Vec2::splat(-1e7), 0),
            (Vec2::splat(1e7), 1),
            (Vec2::NAN, 2),
        ];
        let mut grid = SpatialGrid::new(1.0);
        grid.rebuild(&items, 1.0);
        assert!(grid.cols * grid.rows <= MAX_GRID_CELLS);
        let mut found = Vec::new();
        grid.query(Vec2::splat(1e7), 1.0, |_, &i| found.push(i));
        assert!(found.contains(&1));
    }

    /// Spreads past what `usize` counts in cells (or infinite ones) grow
    /// the cells too, instead of overflowing the count.
    #[test]
    fn spreads_beyond_any_cell_count_grow_the_cells_too() {
        for far in [1e30, f32::MAX] {
            let items = [(Vec2::splat(-far), 0), (Vec2::splat(far), 1)];
            let mut grid = SpatialGrid::new(32.0);
            grid.rebuild(&items, 32.0);
            assert!(grid.cols * grid.rows <= MAX_GRID_CELLS, "{far}");
            let mut found = Vec::new();
            grid.query(Vec2::splat(-far), 1.0, |_, &i| found.push(i));
            assert!(found.contains(&0), "{far}: {found:?}");
        }
    }
}
