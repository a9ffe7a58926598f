//! Fusion: groups the primitive graph's computing nodes into kernels.
//!
//! Rules (see `docs/memory-planning.md`): views, inputs, params and scalars are never
//! kernels; elementwise chains fuse; a reduction fuses with its elementwise producers and
//! consumers when every reduction of the kernel folds the same axes of the same domain;
//! matmul is a kernel of its own (with, at most, the residual add it accumulates into:
//! `gemm`); an in-kernel edge must read the producer's element at the
//! consumer's domain index (no transposed read, no recomputation of a smaller value).
//! `siblings` then merges kernels that load the same data (horizontal fusion), each merge
//! kept only when the caller (the driver's `search`: the arena must not grow) accepts it.

pub mod attention;
pub mod attention_backward;
pub mod gemm;
mod siblings;
#[cfg(test)]
pub(crate) mod testgraph;

pub use siblings::{siblings, MAX_SIBLING_TRIALS};

use crate::ir::layout::{layouts, Layout};
use crate::ir::types::contiguous_strides;
use crate::ir::{Graph, NodeId, Op};
use crate::schedule::Level;
use std::collections::{BTreeSet, HashMap, HashSet};

/// The nodes one kernel computes, in topological order, with the kernel's iteration domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub nodes: Vec<NodeId>,
    /// The loop domain: the shape every `Element` node of the group has.
    pub domain: Vec<u64>,
    /// Sorted axes of `domain` that the group's reductions fold (empty: pointwise).
    pub reduce_axes: Vec<usize>,
    /// The level of each node of `nodes`, in the same order.
    pub levels: Vec<Level>,
    /// The group is one matrix product.
    pub matmul: bool,
    /// The group is attention (`attention`): two products and the softmax between them.
    pub attention: Option<attention::Attention>,
    /// The group is attention's backward (`attention_backward`).
    pub attention_backward: Option<attention_backward::AttentionBackward>,
}

/// True for the nodes a kernel computes (everything but views, inputs, params, scalars).
pub fn is_compute(op: &Op) -> bool {
    !(op.is_view() || op.is_leaf())
}

/// The promotions that are never a kernel of their own: an implicit cast (inserted by the
/// checker or by `decompose`) of an input or param that no matmul reads and no output is. Each consumer kernel loads the
/// leaf through the same views and rounds with a `Cast` inst, as PyTorch converts inside
/// the consuming kernel (an f16 bias added to f32 activations costs no buffer).
pub fn folded_casts(graph: &Graph, lays: &[Layout]) -> Vec<bool> {
    let mut folded = vec![false; graph.len()];
    for id in graph.ids() {
        if let Op::Cast {
            arg,
            implicit: true,
        } = graph.node(id).op
        {
            let leaf = &graph.node(lays[arg.index()].root).op;
            folded[id.index()] = matches!(leaf, Op::Input { .. } | Op::Param { .. });
        }
    }
    for id in graph.ids() {
        if let Op::MatMul(a, b) = graph.node(id).op {
            folded[lays[a.index()].root.index()] = false;
            folded[lays[b.index()].root.index()] = false;
        }
    }
    for o in &graph.outputs {
        folded[lays[o.node.index()].root.index()] = false;
    }
    folded
}

/// Maps strides over a node's shape onto the kernel domain: the identity for an `Element`
/// node (its shape is the domain); for a `Row` node (shape = the domain with the reduce axes
/// set to 1 or dropped) stride 0 on every reduce axis.
pub fn to_domain(
    strides: &[i64],
    rank: usize,
    level: Level,
    domain: &[u64],
    reduce: &[usize],
) -> Vec<i64> {
    if level == Level::Element || reduce.is_empty() {
        return strides.to_vec();
    }
    if rank == domain.len() {
        return strides
            .iter()
            .enumerate()
            .map(|(i, &s)| if reduce.contains(&i) { 0 } else { s })
            .collect();
    }
    let mut it = strides.iter();
    (0..domain.len())
        .map(|d| {
            if reduce.contains(&d) {
                0
            } else {
                it.next().copied().unwrap_or(0)
            }
        })
        .collect()
}

/// The two shapes a row value may have: reduce axes kept as 1, or dropped.
pub fn row_shapes(domain: &[u64], reduce: &[usize]) -> (Vec<u64>, Vec<u64>) {
    let keep = domain
        .iter()
        .enumerate()
        .map(|(i, &s)| if reduce.contains(&i) { 1 } else { s })
        .collect();
    let drop = domain
        .iter()
        .enumerate()
        .filter(|(i, _)| !reduce.contains(i))
        .map(|(_, &s)| s)
        .collect();
    (keep, drop)
}

/// Strides equal on every axis of size > 1.
pub fn strides_agree(a: &[i64], b: &[i64], sizes: &[u64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .zip(sizes)
            .all(|((x, y), &s)| s <= 1 || x == y)
}

/// Domain, reduce axes and levels of a candidate group, or `None` when the nodes cannot
/// form one kernel (mixed domains, different reductions, an in-kernel edge that does not
/// read the producer's element at the consumer's index, a matmul with anything else).
pub fn analyze(
    graph: &Graph,
    lays: &[Layout],
    nodes: &[NodeId],
) -> Option<(Vec<u64>, Vec<usize>, Vec<Level>)> {
    let set: BTreeSet<NodeId> = nodes.iter().copied().collect();
    let shape = shape_of(graph, nodes)?;
    let mut level: HashMap<NodeId, Level> = HashMap::new();
    let mut levels = Vec::with_capacity(nodes.len());
    for &n in nodes {
        let lvl = shape.level(graph, lays, n, |r| {
            if set.contains(&r) {
                Some(level.get(&r).copied())
            } else {
                None
            }
        })?;
        level.insert(n, lvl);
        levels.push(lvl);
    }
    Some((shape.domain, shape.reduce, levels))
}

/// What a group's nodes decide together: the loop domain, the reduce axes, whether a
/// reduction set them, whether the group is a matrix product.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    domain: Vec<u64>,
    reduce: Vec<usize>,
    reduces: bool,
    matmul: bool,
}

/// The shape of a candidate group (`analyze`'s first half): `None` when its reductions
/// disagree, its pointwise nodes differ in shape, or a matmul is not alone (but for the
/// residual add it accumulates into, `gemm`).
fn shape_of(graph: &Graph, nodes: &[NodeId]) -> Option<Shape> {
    if nodes
        .iter()
        .any(|&n| matches!(graph.node(n).op, Op::IndexAdd { .. }))
    {
        // An index add (`take`'s gradient) is a kernel of its own, like a matrix product.
        return (nodes.len() == 1).then(|| Shape {
            domain: graph.ty(nodes[0]).sizes(),
            reduce: Vec::new(),
            reduces: false,
            matmul: true,
        });
    }
    if nodes
        .iter()
        .any(|&n| matches!(graph.node(n).op, Op::MatMul(..)))
    {
        let alone = match nodes[..] {
            [_] => true,
            [mm, add] => gemm::accumulated(graph, add).is_some_and(|(p, _)| p == mm),
            _ => false,
        };
        return alone.then(|| Shape {
            domain: graph.ty(nodes[0]).sizes(),
            reduce: Vec::new(),
            reduces: false,
            matmul: true,
        });
    }
    let mut domain: Option<(Vec<u64>, Vec<usize>)> = None;
    for &n in nodes {
        // A scan walks its axis as a row, as a reduction does.
        let folds = match &graph.node(n).op {
            Op::Reduce { arg, axes, .. } => Some((*arg, axes.clone())),
            Op::Cumsum { arg, axis } => Some((*arg, vec![*axis])),
            _ => None,
        };
        if let Some((arg, axes)) = folds {
            let d = (graph.ty(arg).sizes(), axes);
            match &domain {
                None => domain = Some(d),
                Some(prev) if *prev != d => return None,
                Some(_) => {}
            }
        }
    }
    Some(match domain {
        Some((domain, reduce)) => Shape {
            domain,
            reduce,
            reduces: true,
            matmul: false,
        },
        None => {
            let d = graph.ty(nodes[0]).sizes();
            if nodes.iter().any(|&n| graph.ty(n).sizes() != d) {
                return None;
            }
            Shape {
                domain: d,
                reduce: Vec::new(),
                reduces: false,
                matmul: false,
            }
        }
    })
}

impl Shape {
    /// The shape of the union of two groups of shapes `self` and `other`, when `self`'s
    /// decides it (its domain stays, so its nodes' levels stand): `Some(Ok)`; `Some(Err)`
    /// when the union cannot be one kernel whatever its edges; `None` when `other`'s
    /// reductions would set the domain.
    fn absorbs(&self, other: &Shape) -> Option<Result<(), ()>> {
        if self.matmul || other.matmul {
            return Some(Err(()));
        }
        match (self.reduces, other.reduces) {
            (true, true) | (false, false) => Some(if self == other { Ok(()) } else { Err(()) }),
            (true, false) => Some(Ok(())),
            (false, true) => None,
        }
    }

    /// The level of node `n` in a group of this shape, or `None` when it cannot be part of
    /// it. `member(r)` says whether the storage root `r` is in the group (`Some`) and, if
    /// so, its level (`Some(None)`: not decided yet, which refuses the group).
    fn level(
        &self,
        graph: &Graph,
        lays: &[Layout],
        n: NodeId,
        member: impl Fn(NodeId) -> Option<Option<Level>>,
    ) -> Option<Level> {
        let (domain, reduce) = (&self.domain, &self.reduce);
        let node = graph.node(n);
        let lvl = match &node.op {
            Op::Reduce { .. } => Level::Row,
            Op::Cumsum { .. } => Level::Element,
            _ => {
                let shape = node.ty.sizes();
                let (keep, drop) = row_shapes(domain, reduce);
                let mut in_group = node
                    .op
                    .operands()
                    .into_iter()
                    .filter_map(|o| member(lays[o.index()].root))
                    .peekable();
                let any = in_group.peek().is_some();
                let all_row = any && in_group.all(|l| l == Some(Level::Row));
                if shape == *domain && !(!reduce.is_empty() && shape == keep && all_row) {
                    Level::Element
                } else if !reduce.is_empty() && (shape == keep || shape == drop) {
                    Level::Row
                } else {
                    return None;
                }
            }
        };
        let consumer = if matches!(node.op, Op::Reduce { .. } | Op::Cumsum { .. }) {
            Level::Element
        } else {
            lvl
        };
        for o in node.op.operands() {
            let lay = &lays[o.index()];
            let r = lay.root;
            let Some(producer) = member(r) else { continue };
            if matches!(node.op, Op::Gather { arg, .. } if arg == o) {
                // A gathered table is read at computed positions: it must be in memory.
                return None;
            }
            let producer = producer?;
            if consumer == Level::Row && producer == Level::Element {
                return None;
            }
            if lay.offset != 0 {
                return None;
            }
            let o_rank = graph.ty(o).rank();
            let v = to_domain(&lay.strides, o_rank, consumer, domain, reduce);
            let r_sizes = graph.ty(r).sizes();
            let s = to_domain(
                &contiguous_strides(&r_sizes),
                r_sizes.len(),
                producer,
                domain,
                reduce,
            );
            if v.len() != domain.len() || !strides_agree(&v, &s, domain) {
                return None;
            }
        }
        Some(lvl)
    }
}

struct Fuser<'a> {
    graph: &'a Graph,
    lays: Vec<Layout>,
    /// Compute nodes reading each node (directly or through views), with repeats.
    consumers: Vec<Vec<NodeId>>,
    /// Group index of each compute node.
    gid: Vec<Option<usize>>,
    /// Members of each group, in no particular order (empty once merged away).
    members: Vec<Vec<NodeId>>,
    /// The group edges: `succ[g]` holds the other groups that read a value of `g`
    /// (`consumers` seen through `gid`), `pred[g]` those `g` reads.
    succ: Vec<HashSet<usize>>,
    pred: Vec<HashSet<usize>>,
    /// Each group's `analyze` result, kept while it is known (`None`: recompute): its shape,
    /// and in `level` the level of each of its nodes.
    shape: Vec<Option<Shape>>,
    level: Vec<Level>,
    /// The attention backwards `attention_backward::merge` made groups.
    backward: Vec<attention_backward::AttentionBackward>,
}

impl<'a> Fuser<'a> {
    /// The state after fusion, rebuilt from its groups (`group i` keeps index `i`) with
    /// `flays`, the layouts that see through promotions in no group (folded or dissolved):
    /// the readers of such a promotion count as readers of its operand's storage.
    fn from_groups(graph: &'a Graph, groups: &[Group], flays: &[Layout]) -> Fuser<'a> {
        let mut gid = vec![None; graph.len()];
        for (g, group) in groups.iter().enumerate() {
            for n in &group.nodes {
                gid[n.index()] = Some(g);
            }
        }
        let mut consumers = vec![Vec::new(); graph.len()];
        for id in graph.ids().filter(|id| gid[id.index()].is_some()) {
            for o in graph.node(id).op.operands() {
                consumers[flays[o.index()].root.index()].push(id);
            }
        }
        let mut f = Fuser {
            graph,
            lays: layouts(graph),
            consumers,
            gid,
            members: groups.iter().map(|g| g.nodes.clone()).collect(),
            succ: Vec::new(),
            pred: Vec::new(),
            shape: vec![None; groups.len()],
            level: vec![Level::Element; graph.len()],
            backward: groups
                .iter()
                .filter_map(|g| g.attention_backward.clone())
                .collect(),
        };
        f.rebuild_edges();
        f
    }

    /// Recomputes `succ` and `pred` from `members`, `consumers` and `gid`.
    fn rebuild_edges(&mut self) {
        let n = self.members.len();
        self.succ = vec![HashSet::new(); n];
        self.pred = vec![HashSet::new(); n];
        for g in 0..n {
            for m in &self.members[g] {
                for c in &self.consumers[m.index()] {
                    if let Some(h) = self.gid[c.index()].filter(|&h| h != g) {
                        self.succ[g].insert(h);
                        self.pred[h].insert(g);
                    }
                }
            }
        }
    }

    /// A new group of the one node `id`, read from the groups of its operands.
    fn add(&mut self, id: NodeId) -> usize {
        let g = self.members.len();
        self.members.push(vec![id]);
        self.gid[id.index()] = Some(g);
        self.succ.push(HashSet::new());
        self.pred.push(HashSet::new());
        for o in self.graph.node(id).op.operands() {
            let r = self.lays[o.index()].root;
            if let Some(h) = self.gid[r.index()].filter(|&h| h != g) {
                self.succ[h].insert(g);
                self.pred[g].insert(h);
            }
        }
        // One node is always a group (a reduction its own domain, anything else its shape).
        self.shape.push(shape_of(self.graph, &[id]));
        if let Some(l) = analyze(self.graph, &self.lays, &[id]).and_then(|a| a.2.first().copied()) {
            self.level[id.index()] = l;
        }
        g
    }

    /// Merges groups `a` and `b` into one, at the index of the larger (so that a long chain
    /// of merges moves each node few times); returns whether they could merge.
    fn merge(&mut self, a: usize, b: usize) -> bool {
        if self.members[a].len() >= self.members[b].len() {
            self.merge_into(a, b)
        } else {
            self.merge_into(b, a)
        }
    }

    /// Merges group `b` into group `a` (which keeps its index) when their union is one
    /// kernel (`analyze`) and no path through a third group leads from one to the other.
    fn merge_into(&mut self, a: usize, b: usize) -> bool {
        if a == b || self.creates_cycle(a, b) {
            return false;
        }
        let levels = self.union_levels(a, b);
        #[cfg(debug_assertions)]
        self.check_union(a, b, levels.as_deref());
        let Some(levels) = levels else {
            return false;
        };
        for (n, l) in levels {
            self.level[n.index()] = l;
        }
        for &n in &self.members[b] {
            self.gid[n.index()] = Some(a);
        }
        let moved = std::mem::take(&mut self.members[b]);
        self.members[a].extend(moved);
        for x in std::mem::take(&mut self.pred[b]) {
            self.succ[x].remove(&b);
            if x != a {
                self.succ[x].insert(a);
                self.pred[a].insert(x);
            }
        }
        for x in std::mem::take(&mut self.succ[b]) {
            self.pred[x].remove(&b);
            if x != a {
                self.pred[x].insert(a);
                self.succ[a].insert(x);
            }
        }
        self.shape[b] = None;
        true
    }

    /// The shape of the union of `a` and `b` (stored at `a`), and the levels that change,
    /// or `None` when the union is not one kernel. When both groups' analyses are known and
    /// one group's shape decides the union's, only the other's nodes and the nodes their
    /// levels reach are analysed again (the result is `analyze`'s on the union: a node's
    /// level depends only on the shape and on its operands in the group); otherwise the
    /// whole union is.
    fn union_levels(&mut self, a: usize, b: usize) -> Option<Vec<(NodeId, Level)>> {
        let known = self.shape[a].clone().zip(self.shape[b].clone());
        if let Some((sa, sb)) = known {
            for (keep, other, sk, so) in [(a, b, &sa, &sb), (b, a, &sb, &sa)] {
                let decides = match sk.absorbs(so) {
                    Some(Err(())) => return None,
                    Some(Ok(())) => true,
                    None => false,
                };
                // `a` first: `merge` makes it the larger group, so fewer nodes are revisited.
                if decides {
                    let changed = self.relevel(sk, keep, other)?;
                    self.shape[a] = Some(sk.clone());
                    return Some(changed);
                }
            }
        }
        let mut nodes: Vec<NodeId> = self.members[a]
            .iter()
            .chain(&self.members[b])
            .copied()
            .collect();
        nodes.sort();
        let (_, _, levels) = analyze(self.graph, &self.lays, &nodes)?;
        self.shape[a] = shape_of(self.graph, &nodes);
        Some(nodes.into_iter().zip(levels).collect())
    }

    /// The levels in the union of `keep` and `other` of shape `shape` (`keep`'s), in node
    /// order: every node of `other` and every node reading one (its operands in the group
    /// changed), then every node whose operand's level changed; the others' stand (a node's
    /// level depends only on the shape, its operands in the group and their levels).
    /// `None` when a node cannot belong.
    fn relevel(&self, shape: &Shape, keep: usize, other: usize) -> Option<Vec<(NodeId, Level)>> {
        let in_union =
            |n: NodeId| matches!(self.gid[n.index()], Some(g) if g == keep || g == other);
        let mut todo: BTreeSet<NodeId> = self.members[other].iter().copied().collect();
        for m in &self.members[other] {
            todo.extend(
                self.consumers[m.index()]
                    .iter()
                    .copied()
                    .filter(|&c| in_union(c)),
            );
        }
        let mut new: HashMap<NodeId, Level> = HashMap::new();
        let mut out = Vec::new();
        while let Some(n) = todo.pop_first() {
            let lvl = shape.level(self.graph, &self.lays, n, |r| {
                if !in_union(r) {
                    return None;
                }
                Some(match new.get(&r) {
                    Some(&l) => Some(l),
                    None if self.gid[r.index()] == Some(other) => None,
                    None => Some(self.level[r.index()]),
                })
            })?;
            let was = (self.gid[n.index()] == Some(keep)).then(|| self.level[n.index()]);
            if was != Some(lvl) {
                todo.extend(
                    self.consumers[n.index()]
                        .iter()
                        .copied()
                        .filter(|&c| in_union(c)),
                );
            }
            new.insert(n, lvl);
            out.push((n, lvl));
        }
        Some(out)
    }

    /// Debug builds: the incremental analysis of a small union agrees with `analyze`.
    #[cfg(debug_assertions)]
    fn check_union(&self, a: usize, b: usize, levels: Option<&[(NodeId, Level)]>) {
        if self.members[a].len() + self.members[b].len() > 256 {
            return;
        }
        let mut nodes: Vec<NodeId> = self.members[a]
            .iter()
            .chain(&self.members[b])
            .copied()
            .collect();
        nodes.sort();
        let full = analyze(self.graph, &self.lays, &nodes);
        debug_assert_eq!(full.is_some(), levels.is_some(), "fusion of {nodes:?}");
        if let (Some((_, _, full)), Some(changed)) = (full, levels) {
            let changed: HashMap<NodeId, Level> = changed.iter().copied().collect();
            for (n, l) in nodes.iter().zip(full) {
                let got = changed.get(n).copied().unwrap_or(self.level[n.index()]);
                debug_assert_eq!(got, l, "level of {n} in {nodes:?}");
            }
        }
    }

    /// Undoes `merge_into(a, b)`, given the members both had before it.
    fn unmerge(&mut self, a: usize, b: usize, old_a: Vec<NodeId>, old_b: Vec<NodeId>) {
        for &n in &old_b {
            self.gid[n.index()] = Some(b);
        }
        self.members[a] = old_a;
        self.members[b] = old_b;
        self.shape[a] = None;
        self.shape[b] = None;
        self.rebuild_edges();
    }

    fn successors(&self, g: usize) -> BTreeSet<usize> {
        self.succ[g].iter().copied().collect()
    }

    /// The storage of each program output (its layout's root).
    fn output_roots(&self) -> BTreeSet<NodeId> {
        self.graph
            .outputs
            .iter()
            .map(|o| self.lays[o.node.index()].root)
            .collect()
    }

    /// The members of group `g` whose value leaves it: a program output (`outputs`, from
    /// `output_roots`) or read by another group.
    fn leaving(&self, g: usize, outputs: &BTreeSet<NodeId>) -> Vec<NodeId> {
        self.members[g]
            .iter()
            .copied()
            .filter(|&n| {
                outputs.contains(&n)
                    || self.consumers[n.index()]
                        .iter()
                        .any(|c| self.gid[c.index()] != Some(g))
            })
            .collect()
    }

    /// Would merging `a` and `b` close a cycle through a third group?
    fn creates_cycle(&self, a: usize, b: usize) -> bool {
        let mut stack: Vec<usize> = self.succ[a]
            .iter()
            .chain(&self.succ[b])
            .copied()
            .filter(|&g| g != a && g != b)
            .collect();
        let mut seen: HashSet<usize> = stack.iter().copied().collect();
        while let Some(g) = stack.pop() {
            for &h in &self.succ[g] {
                if h == a || h == b {
                    return true;
                }
                if seen.insert(h) {
                    stack.push(h);
                }
            }
        }
        false
    }
}

/// Groups the computing nodes of `graph` into kernels, in an order they can run in;
/// `enabled: false` gives one group per source-level op (`Origin.group`), as eager runs it.
pub fn fuse(graph: &Graph, enabled: bool) -> Vec<Group> {
    fuse_explained(graph, enabled).0
}

/// `fuse`, and one line for each attention candidate that stays unfused, saying why.
pub fn fuse_explained(graph: &Graph, enabled: bool) -> (Vec<Group>, Vec<String>) {
    let lays = layouts(graph);
    let mut consumers = vec![Vec::new(); graph.len()];
    for id in graph.ids() {
        if is_compute(&graph.node(id).op) {
            for o in graph.node(id).op.operands() {
                consumers[lays[o.index()].root.index()].push(id);
            }
        }
    }
    let folded = folded_casts(graph, &lays);
    let mut f = Fuser {
        graph,
        lays,
        consumers,
        gid: vec![None; graph.len()],
        members: Vec::new(),
        succ: Vec::new(),
        pred: Vec::new(),
        shape: Vec::new(),
        level: vec![Level::Element; graph.len()],
        backward: Vec::new(),
    };
    let key = |n: NodeId| graph.origin(n).group.unwrap_or(n);
    // The backward pass (`autodiff`) a source-level node belongs to, if any.
    let backward = |k: NodeId| graph.passes.iter().position(|&(s, e)| s <= k && k < e);
    // Scalars and aranges that must exist in memory: an output, a matmul operand, a gathered
    // table.
    let mut fills = f.output_roots();
    for id in graph.ids() {
        match graph.node(id).op {
            Op::MatMul(a, b) => {
                fills.insert(f.lays[a.index()].root);
                fills.insert(f.lays[b.index()].root);
            }
            Op::IndexAdd { grad, index, .. } => {
                // Read at computed positions: both in memory.
                fills.insert(f.lays[grad.index()].root);
                fills.insert(f.lays[index.index()].root);
            }
            Op::Gather { arg, .. } => {
                // (a gathered arange is the checked index itself: no table)
                let r = f.lays[arg.index()].root;
                if graph.node(r).op != Op::Arange {
                    fills.insert(r);
                }
            }
            _ => {}
        }
    }
    for id in graph.ids() {
        let op = &graph.node(id).op;
        let fill = op.is_synthesized() && fills.contains(&id);
        if (!is_compute(op) || folded[id.index()]) && !fill {
            continue;
        }
        let g = f.add(id);
        // A concat is a group of its own with no kernel: its operands' kernels write its
        // buffer (`plan`); the group orders its readers after them.
        if matches!(op, Op::MatMul(..) | Op::Concat { .. } | Op::IndexAdd { .. }) || fill {
            continue;
        }
        for o in op.operands() {
            let r = f.lays[o.index()].root;
            let Some(h) = f.gid[r.index()] else { continue };
            let mine = f.gid[id.index()].unwrap_or(g);
            // A backward node never joins a forward kernel (nor the reverse): computed
            // early, its result would be stored across the whole pass.
            let same_pass = backward(key(r)) == backward(key(id));
            let allowed = (enabled && same_pass)
                || key(r) == key(id)
                || (matches!(graph.node(r).op, Op::Cast { implicit: true, .. })
                    && f.members[h] == [r]);
            if allowed
                && !matches!(
                    graph.node(r).op,
                    Op::MatMul(..) | Op::Scalar(_) | Op::Concat { .. } | Op::IndexAdd { .. }
                )
                && !graph.node(r).op.is_synthesized()
            {
                // Merge into the producer's group so the consumer's index stays stable.
                if f.merge(h, mine) {
                    continue;
                }
            }
        }
    }
    // A promotion the merging left alone in a kernel of its own (its consumer could not take
    // it in: a broadcast, another domain) is dissolved like a leaf's (`folded_casts`): each
    // consumer loads the stored operand and converts, so a promotion never costs a buffer.
    let materialised: BTreeSet<NodeId> = graph
        .ids()
        .filter_map(|id| match graph.node(id).op {
            Op::MatMul(a, b) => Some([f.lays[a.index()].root, f.lays[b.index()].root]),
            Op::IndexAdd { grad, index, .. } => {
                Some([f.lays[grad.index()].root, f.lays[index.index()].root])
            }
            _ => None,
        })
        .flatten()
        .chain(graph.outputs.iter().map(|o| f.lays[o.node.index()].root))
        .collect();
    for id in graph.ids() {
        let Op::Cast {
            arg,
            implicit: true,
        } = graph.node(id).op
        else {
            continue;
        };
        let src = f.lays[arg.index()].root;
        let Some(g) = f.gid[id.index()] else { continue };
        if f.members[g] != [id]
            || materialised.contains(&id)
            || matches!(graph.node(src).op, Op::Scalar(_))
        {
            continue;
        }
        let users = std::mem::take(&mut f.consumers[id.index()]);
        f.consumers[src.index()].extend(users);
        f.members[g].clear();
        f.gid[id.index()] = None;
    }
    f.rebuild_edges();
    let mut misses = Vec::new();
    if enabled {
        misses = attention_backward::merge(&mut f);
        attention::merge(&mut f);
        misses.extend(attention::misses(&f));
        gemm::absorb(&mut f);
    }
    (order(&f), misses)
}

/// The group of `nodes` (sorted): attention when they are two products and the softmax
/// between them (`attention::parts`), else what `analyze` makes of them.
fn group_of(f: &Fuser<'_>, nodes: Vec<NodeId>) -> Group {
    let graph = f.graph;
    if let Some(ab) = f.backward.iter().find(|ab| ab.nodes() == nodes) {
        return Group {
            domain: graph.ty(ab.forward.scores).sizes(),
            reduce_axes: Vec::new(),
            levels: vec![Level::Element; nodes.len()],
            nodes,
            matmul: false,
            attention: None,
            attention_backward: Some(ab.clone()),
        };
    }
    let products = nodes
        .iter()
        .filter(|&&n| matches!(graph.node(n).op, Op::MatMul(..)))
        .count();
    if products == 2 {
        if let Ok(att) = attention::parts(graph, &f.lays, &nodes) {
            return Group {
                domain: graph.ty(att.out).sizes(),
                reduce_axes: Vec::new(),
                levels: vec![Level::Element; nodes.len()],
                nodes,
                matmul: false,
                attention: Some(att),
                attention_backward: None,
            };
        }
    }
    let (domain, reduce_axes, levels) = analyze(graph, &f.lays, &nodes).unwrap_or_else(|| {
        (
            graph.ty(nodes[0]).sizes(),
            Vec::new(),
            vec![Level::Element; nodes.len()],
        )
    });
    let matmul = matches!(graph.node(nodes[0]).op, Op::MatMul(..));
    Group {
        nodes,
        domain,
        reduce_axes,
        levels,
        matmul,
        attention: None,
        attention_backward: None,
    }
}

/// The live groups in a topological order (ties broken by first node).
fn order(f: &Fuser<'_>) -> Vec<Group> {
    let live: Vec<usize> = (0..f.members.len())
        .filter(|&g| !f.members[g].is_empty())
        .collect();
    let mut indeg: HashMap<usize, usize> = live.iter().map(|&g| (g, 0)).collect();
    let succ: HashMap<usize, BTreeSet<usize>> =
        live.iter().map(|&g| (g, f.successors(g))).collect();
    for s in succ.values() {
        for h in s {
            *indeg.entry(*h).or_default() += 1;
        }
    }
    let first = |g: usize| f.members[g].iter().min().copied();
    let mut ready: BTreeSet<(Option<NodeId>, usize)> = live
        .iter()
        .filter(|g| indeg[g] == 0)
        .map(|&g| (first(g), g))
        .collect();
    let mut out = Vec::new();
    while let Some(&(n, g)) = ready.iter().next() {
        ready.remove(&(n, g));
        let mut nodes = f.members[g].clone();
        nodes.sort();
        out.push(group_of(f, nodes));
        for &h in &succ[&g] {
            if let Some(d) = indeg.get_mut(&h) {
                *d -= 1;
                if *d == 0 {
                    ready.insert((first(h), h));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::testgraph::G;
    use super::*;
    use crate::ir::{BinaryOp as B, DType, ReduceOp as R, UnaryOp as U};

    fn names(graph: &Graph, groups: &[Group]) -> Vec<Vec<&'static str>> {
        groups
            .iter()
            .map(|g| g.nodes.iter().map(|&n| graph.node(n).op.name()).collect())
            .collect()
    }

    #[test]
    fn elementwise_chain_is_one_kernel() {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[16]);
        let a = b.bin_s(B::Mul, x, 2.0);
        let c = b.bin_s(B::Add, a, 1.0);
        let e = b.un(U::Exp, c);
        b.output("y", e);
        let groups = fuse(&b.g, true);
        assert_eq!(names(&b.g, &groups), vec![vec!["mul", "add", "exp"]]);
        assert_eq!(groups[0].domain, vec![16]);
        // Unfused: one kernel per op.
        assert_eq!(fuse(&b.g, false).len(), 3);
    }

    #[test]
    fn hand_written_softmax_is_one_row_kernel() {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[4, 8]);
        let m = b.reduce(R::Max, x, &[1], true);
        let s = b.bin(B::Sub, x, m);
        let e = b.un(U::Exp, s);
        let sum = b.reduce(R::Sum, e, &[1], true);
        let p = b.bin(B::Div, e, sum);
        b.output("p", p);
        let groups = fuse(&b.g, true);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].reduce_axes, vec![1]);
        assert_eq!(
            groups[0].levels,
            vec![
                Level::Row,
                Level::Element,
                Level::Element,
                Level::Row,
                Level::Element
            ]
        );
    }

    #[test]
    fn decomposed_builtins_stay_one_kernel_unfused() {
        let mut b = G::new();
        let x = b.input("x", DType::F16, &[4, 8]);
        let y = b.op(
            Op::LayerNorm {
                arg: x,
                axis: 1,
                eps: 1e-5,
            },
            DType::F16,
            &[4, 8],
        );
        let z = b.un(U::Relu, y);
        b.output("z", z);
        let p = crate::ir::decompose::decompose(&b.g);
        let unfused = fuse(&p, false);
        assert_eq!(unfused.len(), 2);
        // 8 primitives: the f16 input's upcast is a converting load (`folded_casts`).
        assert_eq!(unfused[0].nodes.len(), 8);
        let fused = fuse(&p, true);
        assert_eq!(fused.len(), 1);
    }

    #[test]
    fn matmul_is_alone_and_bias_gelu_fuse() {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[4, 8]);
        let w = b.param("w", DType::F32, &[8, 6]);
        let bias = b.param("b", DType::F32, &[6]);
        let mm = b.matmul(x, w);
        let h = b.bin(B::Add, mm, bias);
        let g = b.un(U::Gelu, h);
        b.output("h", g);
        let groups = fuse(&b.g, true);
        assert_eq!(
            names(&b.g, &groups),
            vec![vec!["matmul"], vec!["add", "gelu"]]
        );
        assert!(groups[0].matmul);
    }

    #[test]
    fn transposed_read_is_a_kernel_boundary() {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[8, 8]);
        let e = b.un(U::Exp, x);
        let t = b.transpose(e);
        let y = b.bin(B::Add, t, x);
        b.output("y", y);
        let groups = fuse(&b.g, true);
        assert_eq!(names(&b.g, &groups), vec![vec!["exp"], vec!["add"]]);
    }

    #[test]
    fn small_producer_is_not_recomputed_in_a_bigger_domain() {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[4, 8]);
        let v = b.param("v", DType::F32, &[8]);
        let e = b.un(U::Exp, v);
        let y = b.bin(B::Mul, x, e);
        b.output("y", y);
        assert_eq!(fuse(&b.g, true).len(), 2);
        // ...but a row value broadcast along the reduce axes is fine.
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[4, 8]);
        let s = b.reduce(R::Sum, x, &[1], true);
        let r = b.un(U::Rsqrt, s);
        let y = b.bin(B::Mul, x, r);
        b.output("y", y);
        let groups = fuse(&b.g, true);
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups[0].levels,
            vec![Level::Row, Level::Row, Level::Element]
        );
    }

    #[test]
    fn different_reductions_split() {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[4, 8]);
        let s = b.reduce(R::Sum, x, &[1], false);
        let t = b.reduce(R::Max, x, &[0], false);
        b.output("s", s);
        b.output("t", t);
        assert_eq!(fuse(&b.g, true).len(), 2);
    }
}
