//! Arena packing: gives every storage object (a buffer, or a chain of buffers sharing
//! storage in place) a 16-byte-aligned offset so that objects live at a common step never
//! overlap. Greedy placement over several orderings, best-fit and first-fit, keeps the smallest.

use super::inplace::storage_objects;
pub use super::sizes::{align_up, ALIGN};
use crate::schedule::Buffer;

/// One storage object: `size` bytes live from step `first` to step `last` (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Item {
    pub size: u64,
    pub first: usize,
    pub last: usize,
}

/// Gives every arena and workspace buffer its offset: the storage objects (in-place chains
/// share one) are packed (`reuse`) or laid end to end; returns the arena's bytes. `budget`
/// is the eager figure the packer tries harder to reach (see `pack`).
pub fn pack_arena(buffers: &mut [Buffer], reuse: bool, budget: u64) -> u64 {
    let (objects, object_of) = storage_objects(buffers);
    let items: Vec<Item> = objects
        .iter()
        .map(|o| Item {
            size: o.bytes,
            first: o.first,
            last: o.last,
        })
        .collect();
    let (offsets, arena) = if reuse {
        pack(&items, budget)
    } else {
        let mut acc = 0u64;
        let offs = items
            .iter()
            .map(|it| {
                let o = acc;
                acc = acc.saturating_add(align_up(it.size));
                o
            })
            .collect();
        (offs, acc)
    };
    for (b, k) in buffers.iter_mut().zip(object_of) {
        if let Some(k) = k {
            b.offset = offsets[k];
        }
    }
    arena
}

/// The largest total of (aligned) bytes live at one step: no packing can beat it.
pub fn max_live(items: &[Item]) -> u64 {
    super::liveness::peak(items.iter().map(|i| (i.first, i.last, align_up(i.size))))
}

/// The offset for `size` bytes among the `busy` ranges `[lo, hi)` of the items it meets:
/// the first gap that fits (`best_fit: false`), the smallest one (`true`), else the end of
/// the highest range. Sorts `busy`.
fn lowest_fit(busy: &mut [(u64, u64)], size: u64, best_fit: bool) -> u64 {
    busy.sort_unstable();
    let mut chosen: Option<(u64, u64)> = None; // (gap size, offset)
    let mut end = 0u64;
    for &(lo, hi) in busy.iter() {
        if lo > end && lo - end >= size {
            let gap = lo - end;
            if !best_fit {
                return end;
            }
            if chosen.is_none_or(|(g, _)| gap < g) {
                chosen = Some((gap, end));
            }
        }
        end = end.max(hi);
    }
    chosen.map_or(end, |(_, o)| o)
}

/// Places items in `order`, each at the lowest offset that fits (`best_fit: false`) or in the
/// smallest gap that fits (`best_fit: true`) among the already placed items it meets in time.
/// Returns the offsets (by item index) and the arena size.
pub fn place(items: &[Item], order: &[usize], best_fit: bool) -> (Vec<u64>, u64) {
    let mut placer = Placer::new(items);
    match placer.place_below(order, best_fit, None) {
        Some(placed) => placed,
        None => unreachable!("a placement without a limit is never given up"),
    }
}

/// `place`, run many times over the same items: its storage is kept between placements.
struct Placer<'a> {
    placed: Placed<'a>,
    offsets: Vec<u64>,
    met: Vec<usize>,
    busy: Vec<(u64, u64)>,
}

impl<'a> Placer<'a> {
    fn new(items: &'a [Item]) -> Placer<'a> {
        Placer::with_index(items, items.len() > SCAN_MAX)
    }

    /// A placer whose placed items are kept in the tree (`tree`) or scanned.
    fn with_index(items: &'a [Item], tree: bool) -> Placer<'a> {
        Placer {
            placed: Placed::new(items, tree),
            offsets: vec![0; items.len()],
            met: Vec::new(),
            busy: Vec::new(),
        }
    }

    /// `place`'s offsets and arena when the arena is below `limit` (if any); `None` as soon as
    /// the items placed so far reach it (the arena only grows as items are placed).
    fn place_below(
        &mut self,
        order: &[usize],
        best_fit: bool,
        limit: Option<u64>,
    ) -> Option<(Vec<u64>, u64)> {
        let items = self.placed.items;
        self.placed.clear();
        let mut arena = 0u64;
        for &i in order {
            let size = align_up(items[i].size);
            self.placed.meeting(&items[i], &mut self.met);
            self.busy.clear();
            let offsets = &self.offsets;
            self.busy.extend(self.met.iter().map(|&j| {
                (
                    offsets[j],
                    offsets[j].saturating_add(align_up(items[j].size)),
                )
            }));
            let off = lowest_fit(&mut self.busy, size, best_fit);
            self.offsets[i] = off;
            arena = arena.max(off.saturating_add(size));
            if limit.is_some_and(|l| arena >= l) {
                return None;
            }
            self.placed.insert(i);
        }
        // Items not in `order` (none, from `pack`) keep offset 0, as `place` always gave them.
        let mut offsets = vec![0u64; items.len()];
        for &i in order {
            offsets[i] = self.offsets[i];
        }
        Some((offsets, arena))
    }
}

/// The items placed so far, indexed by time: a segment tree over the steps, each item kept
/// at the O(log steps) nodes that cover its lifetime, so the placed items a new one meets are
/// found without looking at every placed item (the packer was quadratic in their number).
struct Placed<'a> {
    items: &'a [Item],
    steps: usize,
    /// Items kept at each node, and how many are kept in each node's subtree.
    at: Vec<Vec<usize>>,
    below: Vec<usize>,
    /// The query that last reported each item (an item kept at several nodes is reported once).
    seen: Vec<usize>,
    query: usize,
    /// The placed items in placement order, looked at one by one instead of the tree when
    /// there are few items (`SCAN_MAX`): a scan of a hundred is cheaper than the tree's walk.
    list: Vec<usize>,
    tree: bool,
}

/// Up to this many items, `Placed` scans its placed items rather than keeping the tree.
const SCAN_MAX: usize = 256;

impl<'a> Placed<'a> {
    /// The index for `items`: the tree (`tree`) or the scanned list.
    fn new(items: &'a [Item], tree: bool) -> Placed<'a> {
        let steps = items.iter().map(|i| i.last + 1).max().unwrap_or(1).max(1);
        let nodes = if tree { 4 * steps } else { 0 };
        Placed {
            items,
            steps,
            at: vec![Vec::new(); nodes],
            below: vec![0; nodes],
            seen: vec![usize::MAX; items.len()],
            query: 0,
            list: Vec::new(),
            tree,
        }
    }

    /// Forgets every placed item.
    fn clear(&mut self) {
        self.list.clear();
        for (at, below) in self.at.iter_mut().zip(&mut self.below) {
            if *below != 0 {
                at.clear();
                *below = 0;
            }
        }
    }

    fn insert(&mut self, i: usize) {
        let it = self.items[i];
        if !self.tree {
            self.list.push(i);
            return;
        }
        if it.first <= it.last {
            self.insert_at(1, 0, self.steps - 1, it.first, it.last, i);
        }
    }

    fn insert_at(&mut self, node: usize, lo: usize, hi: usize, f: usize, l: usize, i: usize) {
        self.below[node] += 1;
        if f <= lo && hi <= l {
            self.at[node].push(i);
            return;
        }
        let mid = (lo + hi) / 2;
        if f <= mid {
            self.insert_at(2 * node, lo, mid, f, l, i);
        }
        if l > mid {
            self.insert_at(2 * node + 1, mid + 1, hi, f, l, i);
        }
        // `below[node]` is non-zero exactly when some item is kept in the subtree.
    }

    /// The placed items whose lifetime meets `it`'s, into `out` (in no particular order).
    fn meeting(&mut self, it: &Item, out: &mut Vec<usize>) {
        out.clear();
        if !self.tree {
            let items = self.items;
            out.extend(self.list.iter().copied().filter(|&j| {
                let o = &items[j];
                o.first <= o.last && it.first <= it.last && o.first <= it.last && it.first <= o.last
            }));
            return;
        }
        self.query += 1;
        if it.first <= it.last {
            self.meeting_at(
                1,
                0,
                self.steps - 1,
                it.first,
                it.last.min(self.steps - 1),
                out,
            );
        }
    }

    fn meeting_at(
        &mut self,
        node: usize,
        lo: usize,
        hi: usize,
        f: usize,
        l: usize,
        out: &mut Vec<usize>,
    ) {
        if self.below[node] == 0 || hi < f || l < lo || f > l {
            return;
        }
        for &j in &self.at[node] {
            if self.seen[j] != self.query {
                self.seen[j] = self.query;
                out.push(j);
            }
        }
        if lo < hi {
            let mid = (lo + hi) / 2;
            self.meeting_at(2 * node, lo, mid, f, l, out);
            self.meeting_at(2 * node + 1, mid + 1, hi, f, l, out);
        }
    }
}

/// A tiny deterministic generator for the fallback orderings.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Packs `items`: tries the orderings (size, lifetime length, size × length, first step,
/// last step) with best fit and first fit and keeps the smallest arena; then, while the
/// arena exceeds `max_live` (which no packing can beat), 256 seeded random orderings, and
/// up to 2048 while it also exceeds `budget` (the eager figure the plan must not exceed).
///
/// `pack` is a pure function of its items and budget, and the planner's search packs the
/// same items many times over (the search with and without reordering plans the same groups
/// first; orders that differ only where it does not matter give the same lifetimes): the
/// last `MEMO` results are kept per thread and given back as they are.
pub fn pack(items: &[Item], budget: u64) -> (Vec<u64>, u64) {
    type Memo = std::collections::HashMap<(Vec<Item>, u64), (Vec<u64>, u64)>;
    thread_local! {
        static PACKED: std::cell::RefCell<Memo> = std::cell::RefCell::new(Memo::new());
    }
    let key = (items.to_vec(), budget);
    if let Some(hit) = PACKED.with(|m| m.borrow().get(&key).cloned()) {
        return hit;
    }
    let result = pack_with(items, budget, 256);
    PACKED.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= MEMO {
            m.clear();
        }
        m.insert(key, result.clone());
    });
    result
}

/// How many packings `pack` remembers per thread.
const MEMO: usize = 512;

/// `pack` with `restarts` random orderings while above the floor (0: the five heuristic
/// orderings only, plus the budget fallback).
pub fn pack_with(items: &[Item], budget: u64, restarts: usize) -> (Vec<u64>, u64) {
    let n = items.len();
    let floor = max_live(items);
    let len = |i: usize| (items[i].last - items[i].first + 1) as u64;
    let keys: [&dyn Fn(usize) -> (u64, u64, u64); 5] = [
        &|i| (u64::MAX - items[i].size, items[i].first as u64, i as u64),
        &|i| (u64::MAX - len(i), u64::MAX - items[i].size, i as u64),
        &|i| {
            (
                u64::MAX - items[i].size.saturating_mul(len(i)),
                items[i].first as u64,
                i as u64,
            )
        },
        &|i| (items[i].first as u64, u64::MAX - items[i].size, i as u64),
        &|i| {
            (
                u64::MAX - items[i].last as u64,
                u64::MAX - items[i].size,
                i as u64,
            )
        },
    ];
    let mut best: Option<(Vec<u64>, u64)> = None;
    let mut placer = Placer::new(items);
    // A placement is kept only below the best arena so far, so it is given up on reaching it.
    let mut consider = |order: &[usize], best: &mut Option<(Vec<u64>, u64)>| {
        for best_fit in [true, false] {
            let limit = best.as_ref().map(|(_, a)| *a);
            if let Some(p) = placer.place_below(order, best_fit, limit) {
                *best = Some(p);
            }
        }
    };
    for key in keys {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| key(i));
        consider(&order, &mut best);
        if best.as_ref().is_some_and(|(_, a)| *a <= floor) {
            break;
        }
    }
    let mut rng = Lcg(0x5eed);
    let mut tries = 0;
    // Random orderings: a few hundred while above the floor, more while above the budget.
    while best
        .as_ref()
        .is_some_and(|(_, a)| *a > floor && (tries < restarts || (*a > budget && tries < 2048)))
    {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        consider(&order, &mut best);
        tries += 1;
    }
    best.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: &Item, b: &Item) -> bool {
        a.first <= b.last && b.first <= a.last
    }

    fn it(size: u64, first: usize, last: usize) -> Item {
        Item { size, first, last }
    }

    /// `place` as it was before the time index: every placed item looked at.
    fn place_by_scan(items: &[Item], order: &[usize], best_fit: bool) -> (Vec<u64>, u64) {
        let mut offsets = vec![0u64; items.len()];
        let mut placed: Vec<usize> = Vec::new();
        let mut arena = 0u64;
        for &i in order {
            let size = align_up(items[i].size);
            let mut busy: Vec<(u64, u64)> = placed
                .iter()
                .filter(|&&j| overlaps(&items[i], &items[j]))
                .map(|&j| (offsets[j], offsets[j] + align_up(items[j].size)))
                .collect();
            let off = lowest_fit(&mut busy, size, best_fit);
            offsets[i] = off;
            arena = arena.max(off + size);
            placed.push(i);
        }
        (offsets, arena)
    }

    #[test]
    fn the_time_index_finds_exactly_the_items_a_scan_finds() {
        let mut rng = Lcg(7);
        for round in 0..300 {
            let n = 1 + (rng.next() % 40) as usize;
            let items: Vec<Item> = (0..n)
                .map(|_| {
                    let first = (rng.next() % 30) as usize;
                    let len = (rng.next() % if round % 3 == 0 { 30 } else { 4 }) as usize;
                    it(16 * (1 + rng.next() % 16), first, first + len)
                })
                .collect();
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            for tree in [false, true] {
                let mut placer = Placer::with_index(&items, tree);
                for best_fit in [true, false] {
                    let scan = place_by_scan(&items, &order, best_fit);
                    assert_eq!(place(&items, &order, best_fit), scan, "{items:?}");
                    assert_eq!(
                        placer.place_below(&order, best_fit, None),
                        Some(scan.clone())
                    );
                    // Reused storage, and a limit: given up exactly when the arena reaches it.
                    for limit in [scan.1, scan.1 + 1, scan.1 / 2] {
                        let below = placer.place_below(&order, best_fit, Some(limit));
                        assert_eq!(below, (scan.1 < limit).then(|| scan.clone()), "{items:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn disjoint_lifetimes_share_offset_zero() {
        let items = [it(100, 0, 1), it(64, 2, 3), it(32, 4, 4)];
        let (offs, arena) = pack(&items, u64::MAX);
        assert_eq!(offs, vec![0, 0, 0]);
        assert_eq!(arena, 112);
    }

    #[test]
    fn overlapping_items_do_not_overlap_in_space() {
        let items = [it(48, 0, 2), it(16, 1, 3), it(32, 2, 2), it(80, 3, 4)];
        let (offs, arena) = pack(&items, u64::MAX);
        for i in 0..items.len() {
            assert_eq!(offs[i] % ALIGN, 0);
            for j in 0..i {
                if overlaps(&items[i], &items[j]) {
                    let (a, b) = (offs[i], offs[j]);
                    assert!(a + align_up(items[i].size) <= b || b + align_up(items[j].size) <= a);
                }
            }
        }
        assert_eq!(arena, max_live(&items));
    }

    #[test]
    fn first_fit_beats_best_fit_on_some_order_and_pack_keeps_it() {
        // A case where size order with best fit leaves a hole: pack must still reach max-live.
        let items = [
            it(32, 0, 1),
            it(32, 1, 2),
            it(32, 2, 3),
            it(16, 0, 0),
            it(16, 3, 3),
        ];
        let (_, arena) = pack(&items, u64::MAX);
        assert_eq!(arena, max_live(&items));
    }
}
