//! The order of kernels and peak memory: a model of the bytes live at each step of any
//! topological order of a plan's kernels (in-place reuse included), the heuristic orders
//! the search tries (as PyTorch Inductor's `reorder_for_peak_memory`: least peak memory
//! first, breadth first, depth first), and `best_order_bound`, a bound no order of the same
//! kernels can beat: exact by a dynamic programme over the sets of kernels already run
//! (Serenity's, pruned by the best heuristic order) where the graph is small enough, else a
//! proved lower bound. See `docs/memory-planning.md` §9.

use super::inplace::{accumulating_pair, can_take_over};
use super::liveness::{reads, writes};
use super::sizes::align_up;
use crate::schedule::{BufferId, BufferKind, KernelKind, Plan};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// A greedy order's choice: `(kernel, bytes during its step, bytes after)` to a sort key.
type GreedyKey<'a> = dyn Fn(usize, u64, u64) -> (u64, u64, usize) + 'a;

/// One arena buffer (or workspace) of the model.
#[derive(Clone, Debug)]
struct MBuf {
    /// Bytes rounded up to 16, as the arena and the lower bound count them.
    bytes: u64,
    /// The kernels that read it (distinct; never its producer).
    consumers: Vec<usize>,
    /// A program output: live from its producer to the end.
    output: bool,
}

/// The kernels of a plan as a dependency graph over the arena buffers they read and write.
#[derive(Clone, Debug)]
pub struct OrderModel {
    n: usize,
    preds: Vec<Vec<usize>>,
    bufs: Vec<MBuf>,
    /// Buffers each kernel writes (its workspace included) and reads (arena only), distinct.
    outs: Vec<Vec<usize>>,
    ins: Vec<Vec<usize>>,
    /// Per kernel: (written buffer, read buffer) pairs where the store may take over the read
    /// buffer's storage if the kernel is its last reader (`inplace::can_take_over`).
    pairs: Vec<Vec<(usize, usize)>>,
}

/// `best_order_bound`: no order of the plan's kernels holds fewer bytes live at its peak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct OrderBound {
    pub bytes: u64,
    /// The least peak over every order (found by the search over orders), not only a bound.
    pub exact: bool,
}

/// How many sets of run kernels the exact search may hold before it settles for a bound.
pub const MAX_STATES: usize = 200_000;

/// How many kernel steps `improve` may evaluate (each order it tries costs one per kernel):
/// about 10 ms of planning time, however many kernels.
pub const MAX_MOVES: usize = 2_000_000;

impl OrderModel {
    /// The model of `plan`'s kernels and arena buffers (inputs and params are outside).
    pub fn of_plan(plan: &Plan) -> OrderModel {
        let n = plan.kernels.len();
        let outputs: BTreeSet<BufferId> = plan.outputs.iter().map(|o| o.buffer).collect();
        let mut index: HashMap<BufferId, usize> = HashMap::new();
        let mut bufs = Vec::new();
        for (i, b) in plan.buffers.iter().enumerate() {
            // A product never stored whole (`plan::tile`) holds no bytes but still orders
            // its consumer after it.
            if matches!(
                b.kind,
                BufferKind::Arena | BufferKind::Workspace | BufferKind::Tile
            ) {
                let id = BufferId(i as u32);
                index.insert(id, bufs.len());
                let bytes = if b.kind == BufferKind::Tile {
                    0
                } else {
                    b.bytes
                };
                bufs.push(MBuf {
                    bytes: align_up(bytes),
                    consumers: Vec::new(),
                    output: outputs.contains(&id),
                });
            }
        }
        let mut producer = vec![usize::MAX; bufs.len()];
        let mut outs = vec![Vec::new(); n];
        let mut ins = vec![Vec::new(); n];
        let mut pairs = vec![Vec::new(); n];
        // A buffer several kernels write (the parts of a `concat`): the first writer in the
        // plan's order allocates it; each later writer runs after that one and counts as a
        // consumer (it keeps the buffer live); readers run after every writer.
        let mut later_writers: Vec<Vec<usize>> = vec![Vec::new(); bufs.len()];
        for (k, kernel) in plan.kernels.iter().enumerate() {
            for id in writes(kernel) {
                if let Some(&b) = index.get(&id) {
                    if producer[b] == usize::MAX || producer[b] == k {
                        producer[b] = k;
                        if !outs[k].contains(&b) {
                            outs[k].push(b);
                        }
                    } else if !ins[k].contains(&b) {
                        ins[k].push(b);
                        bufs[b].consumers.push(k);
                        later_writers[b].push(k);
                    }
                }
            }
            for id in reads(kernel) {
                if let Some(&b) = index.get(&id) {
                    if !ins[k].contains(&b) && !outs[k].contains(&b) {
                        ins[k].push(b);
                        bufs[b].consumers.push(k);
                    }
                }
            }
            if let KernelKind::MatMul(m) = &kernel.kind {
                if let Some(x) = accumulating_pair(m, &plan.buffers) {
                    if let (Some(&o), Some(&c)) = (index.get(&m.out), index.get(&x)) {
                        if !bufs[c].output {
                            pairs[k].push((o, c));
                        }
                    }
                }
            }
            if let KernelKind::Fused(f) = &kernel.kind {
                for store in &f.stores {
                    let Some(&o) = index.get(&store.buffer) else {
                        continue;
                    };
                    let cands: BTreeSet<BufferId> = f.loads.iter().map(|l| l.buffer).collect();
                    for cand in cands {
                        if let Some(&c) = index.get(&cand) {
                            if !bufs[c].output
                                && c != o
                                && can_take_over(f, store, cand, &plan.buffers)
                            {
                                pairs[k].push((o, c));
                            }
                        }
                    }
                }
            }
        }
        let mut preds = vec![Vec::new(); n];
        for k in 0..n {
            for &b in &ins[k] {
                let p = producer[b];
                if p != usize::MAX && p != k && !preds[k].contains(&p) {
                    preds[k].push(p);
                }
                if later_writers[b].contains(&k) {
                    continue;
                }
                for &w in &later_writers[b] {
                    if w != k && !preds[k].contains(&w) {
                        preds[k].push(w);
                    }
                }
            }
        }
        OrderModel {
            n,
            preds,
            bufs,
            outs,
            ins,
            pairs,
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether `prefix` runs kernels once each, each after the kernels it reads from.
    pub fn is_prefix(&self, prefix: &[usize]) -> bool {
        let mut done = vec![false; self.n];
        prefix.iter().all(|&k| {
            let ok = k < self.n && !done[k] && self.preds[k].iter().all(|&p| done[p]);
            if ok {
                done[k] = true;
            }
            ok
        })
    }

    /// Whether `order` runs every kernel once, each after the kernels it reads from.
    pub fn is_topological(&self, order: &[usize]) -> bool {
        order.len() == self.n && self.is_prefix(order)
    }

    /// Bytes saved at kernel `k` by in-place reuse when the buffers `dying` are read there
    /// for the last time: the largest matching of written to dying buffers among the
    /// allowed pairs (the planner's greedy choice saves at most this).
    fn saving(&self, k: usize, dying: &dyn Fn(usize) -> bool) -> u64 {
        if self.pairs[k].is_empty() {
            return 0;
        }
        let pairs: Vec<(usize, usize)> = self.pairs[k]
            .iter()
            .copied()
            .filter(|&(_, c)| dying(c))
            .collect();
        if pairs.is_empty() {
            return 0;
        }
        // Augmenting paths (Kuhn); written and read buffers are few per kernel.
        let writers: Vec<usize> = pairs
            .iter()
            .map(|p| p.0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut matched_to: HashMap<usize, usize> = HashMap::new(); // read buffer → writer
        fn augment(
            w: usize,
            pairs: &[(usize, usize)],
            seen: &mut BTreeSet<usize>,
            matched_to: &mut HashMap<usize, usize>,
        ) -> bool {
            for &(o, c) in pairs {
                if o != w || !seen.insert(c) {
                    continue;
                }
                let free = match matched_to.get(&c) {
                    None => true,
                    Some(&other) => augment(other, pairs, seen, matched_to),
                };
                if free {
                    matched_to.insert(c, w);
                    return true;
                }
            }
            false
        }
        for w in writers {
            augment(w, &pairs, &mut BTreeSet::new(), &mut matched_to);
        }
        matched_to.keys().map(|&c| self.bufs[c].bytes).sum()
    }

    /// Bytes live while kernel `k` runs after the kernels `done` (which hold `live` bytes
    /// between them), and the bytes live after it.
    fn step(&self, done: &dyn Fn(usize) -> bool, live: u64, k: usize) -> (u64, u64) {
        let dies = |b: usize| {
            !self.bufs[b].output && self.bufs[b].consumers.iter().all(|&c| c == k || done(c))
        };
        let mut during = live;
        let mut after = live;
        for &b in &self.outs[k] {
            let buf = &self.bufs[b];
            during = during.saturating_add(buf.bytes);
            if buf.output || !buf.consumers.is_empty() {
                after = after.saturating_add(buf.bytes);
            }
        }
        during = during.saturating_sub(self.saving(k, &|b| self.ins[k].contains(&b) && dies(b)));
        for &b in &self.ins[k] {
            if dies(b) {
                after = after.saturating_sub(self.bufs[b].bytes);
            }
        }
        (during, after)
    }

    /// The most bytes live at one step when the kernels run in `order` (topological): the
    /// plan's lower bound, had the planner run them so.
    pub fn peak(&self, order: &[usize]) -> u64 {
        let mut done = vec![false; self.n];
        let (mut live, mut peak) = (0u64, 0u64);
        for &k in order {
            let (during, after) = self.step(&|j| done[j], live, k);
            peak = peak.max(during);
            live = after;
            done[k] = true;
        }
        peak
    }

    /// Greedy orders: each step runs a ready kernel chosen by `key(k, bytes during, bytes after)` (least).
    fn greedy(&self, key: &GreedyKey<'_>) -> Vec<usize> {
        let mut done = vec![false; self.n];
        let mut missing: Vec<usize> = self.preds.iter().map(|p| p.len()).collect();
        let mut succs = vec![Vec::new(); self.n];
        for (k, ps) in self.preds.iter().enumerate() {
            for &p in ps {
                succs[p].push(k);
            }
        }
        let mut ready: BTreeSet<usize> = (0..self.n).filter(|&k| missing[k] == 0).collect();
        let mut live = 0u64;
        let mut order = Vec::with_capacity(self.n);
        while let Some(&first) = ready.iter().next() {
            let mut best = (first, (u64::MAX, u64::MAX, usize::MAX), 0u64);
            for &k in &ready {
                let (during, after) = self.step(&|j| done[j], live, k);
                let kk = key(k, during, after);
                if kk < best.1 {
                    best = (k, kk, after);
                }
            }
            let (k, _, after) = best;
            ready.remove(&k);
            done[k] = true;
            live = after;
            order.push(k);
            for &s in &succs[k] {
                missing[s] -= 1;
                if missing[s] == 0 {
                    ready.insert(s);
                }
            }
        }
        order
    }

    /// Least peak memory first (Inductor's `lpmf`): run the ready kernel whose step holds the
    /// fewest bytes, then the one leaving the fewest live.
    pub fn lpmf(&self) -> Vec<usize> {
        self.greedy(&|k, during, after| (during, after, k))
    }

    /// Breadth first: by depth (the longest path of kernels before it), then source order.
    pub fn bfs(&self) -> Vec<usize> {
        let mut depth = vec![0u64; self.n];
        for k in 0..self.n {
            // Plans are in a topological order: every predecessor has a smaller index.
            depth[k] = self.preds[k]
                .iter()
                .map(|&p| depth[p] + 1)
                .max()
                .unwrap_or(0);
        }
        let mut order: Vec<usize> = (0..self.n).collect();
        order.sort_by_key(|&k| (depth[k], k));
        if self.is_topological(&order) {
            order
        } else {
            self.greedy(&|k, _, _| (depth[k], 0, k))
        }
    }

    /// Depth first (Inductor's `dfs`): each output's producers are run first, the one needing
    /// more bytes to finish before the others, so a branch is finished and freed before the
    /// next starts.
    pub fn dfs(&self) -> Vec<usize> {
        // Bytes a kernel's branch holds: its own outputs plus its predecessors'.
        let mut weight = vec![0u64; self.n];
        for k in 0..self.n {
            let own: u64 = self.outs[k].iter().map(|&b| self.bufs[b].bytes).sum();
            let below = self.preds[k].iter().map(|&p| weight[p]).max().unwrap_or(0);
            weight[k] = own.saturating_add(below);
        }
        let mut has_succ = vec![false; self.n];
        for ps in &self.preds {
            for &p in ps {
                has_succ[p] = true;
            }
        }
        let mut done = vec![false; self.n];
        let mut order = Vec::with_capacity(self.n);
        // Iterative post-order from each sink, in source order.
        for sink in (0..self.n).filter(|&k| !has_succ[k]) {
            let mut stack: Vec<(usize, bool)> = vec![(sink, false)];
            while let Some((k, expanded)) = stack.pop() {
                if done[k] {
                    continue;
                }
                if expanded {
                    done[k] = true;
                    order.push(k);
                    continue;
                }
                stack.push((k, true));
                let mut ps: Vec<usize> = self.preds[k]
                    .iter()
                    .copied()
                    .filter(|&p| !done[p])
                    .collect();
                // Pushed last, popped first: the heaviest predecessor runs first.
                ps.sort_by_key(|&p| (weight[p], std::cmp::Reverse(p)));
                for p in ps {
                    stack.push((p, false));
                }
            }
        }
        order
    }

    /// A bound no order beats, valid whatever the order: each kernel holds its reads and
    /// writes at its step (less the most in-place reuse could save), and the last step holds
    /// every output.
    pub fn static_bound(&self) -> u64 {
        let each = (0..self.n).map(|k| {
            let bytes = self.ins[k]
                .iter()
                .chain(&self.outs[k])
                .fold(0u64, |acc, &b| acc.saturating_add(self.bufs[b].bytes));
            bytes.saturating_sub(self.saving(k, &|b| !self.bufs[b].output))
        });
        let outputs = self
            .bufs
            .iter()
            .filter(|b| b.output)
            .fold(0u64, |acc, b| acc.saturating_add(b.bytes));
        each.max()
            .unwrap_or(0)
            .max(if self.n > 0 { outputs } else { 0 })
    }

    /// `best_order_bound`, and an order reaching it when exact. `upper` is the peak of an
    /// order already known (its `order`): sets of run kernels that reach it are pruned. A
    /// breadth-first dynamic programme over the sets of kernels run so far: a set's value is
    /// the least peak of any order running exactly those kernels first (the bytes live after
    /// them depend on the set alone). It gives up past `max_states` sets, and then the least
    /// value of the last complete layer (every order passes through one set of each size) is
    /// a bound, with `static_bound`; likewise past `4 · max_states` (set, kernel) pairs.
    pub fn best_order(
        &self,
        upper: (u64, &[usize]),
        max_states: usize,
    ) -> (OrderBound, Vec<usize>) {
        let (ub, ub_order) = upper;
        let floor = self.static_bound();
        if self.n == 0 {
            return (
                OrderBound {
                    bytes: 0,
                    exact: true,
                },
                Vec::new(),
            );
        }
        if floor >= ub {
            // The heuristic order meets a bound every order obeys.
            return (
                OrderBound {
                    bytes: ub,
                    exact: true,
                },
                ub_order.to_vec(),
            );
        }
        let words = self.n.div_ceil(64);
        let has = |s: &[u64], k: usize| s[k / 64] >> (k % 64) & 1 == 1;
        // Each state: (set, peak so far, live after, parent state in the previous layer, kernel).
        struct State {
            set: Vec<u64>,
            peak: u64,
            live: u64,
            parent: usize,
            kernel: usize,
        }
        let mut layers: Vec<Vec<State>> = vec![vec![State {
            set: vec![0; words],
            peak: 0,
            live: 0,
            parent: usize::MAX,
            kernel: usize::MAX,
        }]];
        let mut total = 1usize;
        // Pairs (set, kernel) looked at: a wide graph of many kernels gives up early.
        let mut work = 0usize;
        let max_work = max_states.saturating_mul(4);
        for _ in 0..self.n {
            let prev = layers.last().map_or(&[][..], |l| &l[..]);
            let mut next: Vec<State> = Vec::new();
            let mut at: HashMap<Vec<u64>, usize> = HashMap::new();
            let mut overflow = false;
            for (si, s) in prev.iter().enumerate() {
                work += self.n;
                if total + next.len() > max_states || work > max_work {
                    overflow = true;
                    break;
                }
                for k in 0..self.n {
                    if has(&s.set, k) || !self.preds[k].iter().all(|&p| has(&s.set, p)) {
                        continue;
                    }
                    let (during, after) = self.step(&|j| has(&s.set, j), s.live, k);
                    let peak = s.peak.max(during);
                    if peak >= ub {
                        continue;
                    }
                    let mut set = s.set.clone();
                    set[k / 64] |= 1 << (k % 64);
                    match at.get(&set) {
                        Some(&i) => {
                            if peak < next[i].peak {
                                next[i].peak = peak;
                                next[i].parent = si;
                                next[i].kernel = k;
                            }
                        }
                        None => {
                            at.insert(set.clone(), next.len());
                            next.push(State {
                                set,
                                peak,
                                live: after,
                                parent: si,
                                kernel: k,
                            });
                        }
                    }
                }
            }
            if overflow {
                // Every order passes through one set of the last complete layer, `prev`;
                // sets pruned there had peaks of at least `ub`.
                let least = prev.iter().map(|s| s.peak).min().unwrap_or(ub);
                let bytes = floor.max(least).min(ub);
                return (
                    OrderBound {
                        bytes,
                        exact: bytes == ub,
                    },
                    ub_order.to_vec(),
                );
            }
            total += next.len();
            if next.is_empty() {
                // No order beats the known one.
                return (
                    OrderBound {
                        bytes: ub,
                        exact: true,
                    },
                    ub_order.to_vec(),
                );
            }
            layers.push(next);
        }
        // The one full set: its peak is the least, and its parents give the order.
        let last = &layers[self.n];
        let best = &last[0];
        let mut order = Vec::with_capacity(self.n);
        let (mut layer, mut i) = (self.n, 0usize);
        while layer > 0 {
            let s = &layers[layer][i];
            order.push(s.kernel);
            i = s.parent;
            layer -= 1;
        }
        order.reverse();
        (
            OrderBound {
                bytes: best.peak,
                exact: true,
            },
            order,
        )
    }

    /// `best_order_bound` of a plan: the DP above, seeded with the best of the plan's own
    /// order and the heuristic orders.
    pub fn bound(&self) -> (OrderBound, Vec<usize>) {
        let own: Vec<usize> = (0..self.n).collect();
        let mut best = (self.peak(&own), own);
        for o in self.heuristics() {
            let p = self.peak(&o);
            if p < best.0 {
                best = (p, o);
            }
        }
        self.best_order((best.0, &best.1), MAX_STATES)
    }

    /// The heuristic orders (least peak memory first, breadth first, depth first), and the
    /// best of them and the plan's own order improved by `improve`.
    pub fn heuristics(&self) -> Vec<Vec<usize>> {
        let mut orders = vec![self.lpmf(), self.bfs(), self.dfs()];
        let own: Vec<usize> = (0..self.n).collect();
        let start = orders
            .iter()
            .chain(std::iter::once(&own))
            .min_by_key(|o| self.peak(o))
            .cloned()
            .unwrap_or(own);
        orders.push(self.improve(start, MAX_MOVES));
        orders
    }

    /// The bytes live during each step of `order`, in order.
    fn steps(&self, order: &[usize]) -> Vec<u64> {
        let mut done = vec![false; self.n];
        let mut live = 0u64;
        order
            .iter()
            .map(|&k| {
                let (during, after) = self.step(&|j| done[j], live, k);
                live = after;
                done[k] = true;
                during
            })
            .collect()
    }

    /// What a local move must lower: the peak, then how many steps reach it, then the bytes
    /// summed over the steps (freeing sooner), so that moves off a plateau are taken.
    pub fn cost(&self, order: &[usize]) -> (u64, usize, u64) {
        let steps = self.steps(order);
        let peak = steps.iter().copied().max().unwrap_or(0);
        let at = steps.iter().filter(|&&s| s == peak).count();
        let sum = steps.iter().fold(0u64, |a, &s| a.saturating_add(s));
        (peak, at, sum)
    }

    /// Local search from `order`: move one kernel to another place between its last
    /// predecessor and its first successor whenever that lowers `cost`, until no move does
    /// or `max_moves` kernel steps have been counted (each order tried counts one per
    /// kernel, however much of it is evaluated). The order stays topological and its peak
    /// never rises. A trial order shares its steps before the moved kernel's old and new
    /// places with the current order, so it is evaluated from there (`Prefix`), and given up
    /// as soon as its steps so far cost as much as the best (the cost only grows).
    pub fn improve(&self, mut order: Vec<usize>, max_moves: usize) -> Vec<usize> {
        let mut succs = vec![Vec::new(); self.n];
        for (k, ps) in self.preds.iter().enumerate() {
            for &p in ps {
                succs[p].push(k);
            }
        }
        let mut best = self.cost(&order);
        let mut prefixes = self.prefixes(&order);
        let mut done = vec![false; self.n];
        let mut evaluated = 0usize;
        let mut improved = true;
        while improved {
            improved = false;
            for i in 0..order.len() {
                let k = order[i];
                let mut pos = vec![0usize; self.n];
                for (at, &j) in order.iter().enumerate() {
                    pos[j] = at;
                }
                let lo = self.preds[k].iter().map(|&p| pos[p] + 1).max().unwrap_or(0);
                let hi = succs[k]
                    .iter()
                    .map(|&s| pos[s])
                    .min()
                    .unwrap_or(order.len());
                // Without `k`, it may go back at any index in `lo..hi` (shifted past `i`).
                let mut rest = order.clone();
                rest.remove(i);
                let (lo, hi) = (lo.min(rest.len()), (hi - 1).min(rest.len()));
                for j in lo..=hi {
                    if j == i {
                        continue;
                    }
                    evaluated += self.n;
                    if evaluated > max_moves {
                        return order;
                    }
                    let mut trial = rest.clone();
                    trial.insert(j, k);
                    let from = i.min(j);
                    if let Some(c) = self.cost_below(&trial, from, &prefixes[from], best, &mut done)
                    {
                        best = c;
                        order = trial;
                        prefixes = self.prefixes(&order);
                        improved = true;
                        break;
                    }
                }
            }
        }
        order
    }

    /// The state after each prefix of `order` (`out[p]`: after its first `p` kernels).
    fn prefixes(&self, order: &[usize]) -> Vec<Prefix> {
        let mut done = vec![false; self.n];
        let mut at = Prefix::default();
        let mut out = Vec::with_capacity(order.len() + 1);
        out.push(at);
        for &k in order {
            let (during, after) = self.step(&|j| done[j], at.live, k);
            at = at.then(during, after);
            done[k] = true;
            out.push(at);
        }
        out
    }

    /// `cost(order)` when it is below `best`, else `None`: `order`'s first `from` kernels
    /// have the state `prefix`; evaluation stops once the cost so far reaches `best`.
    fn cost_below(
        &self,
        order: &[usize],
        from: usize,
        prefix: &Prefix,
        best: (u64, usize, u64),
        done: &mut [bool],
    ) -> Option<(u64, usize, u64)> {
        done.fill(false);
        for &k in &order[..from] {
            done[k] = true;
        }
        let mut at = *prefix;
        for &k in &order[from..] {
            let (during, after) = self.step(&|j| done[j], at.live, k);
            at = at.then(during, after);
            done[k] = true;
            if at.cost() >= best {
                return None;
            }
        }
        Some(at.cost())
    }
}

/// The state of an order after some of its kernels: the bytes live, and `cost`'s three
/// figures over the steps so far (each step can only raise them, in `cost`'s order).
#[derive(Clone, Copy, Debug, Default)]
struct Prefix {
    live: u64,
    peak: u64,
    at: usize,
    sum: u64,
}

impl Prefix {
    /// After one more step holding `during` bytes and leaving `after`.
    fn then(self, during: u64, after: u64) -> Prefix {
        let (peak, at) = match during.cmp(&self.peak) {
            std::cmp::Ordering::Greater => (during, 1),
            std::cmp::Ordering::Equal => (self.peak, self.at + 1),
            std::cmp::Ordering::Less => (self.peak, self.at),
        };
        Prefix {
            live: after,
            peak,
            at,
            sum: self.sum.saturating_add(during),
        }
    }

    fn cost(&self) -> (u64, usize, u64) {
        (self.peak, self.at, self.sum)
    }
}
