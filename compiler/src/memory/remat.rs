//! Rematerialisation: forward values recomputed in the backward pass instead of being kept
//! from the forward (SPEC §3.6, `--memory-budget`).
//!
//! A choice is a set `R` of forward nodes. `rewrite` copies the checked graph and, in each
//! backward pass, replaces the uses of a node of `R` by a clone computed just before its
//! first backward use (its operands in `R` cloned too, the others read as they are), so the
//! forward value dies at its last forward use. The rewritten graph goes through the same
//! decompose → fuse → plan pipeline as any program, so the figures are the planner's own.
//!
//! The search (`choose`) is greedy over measured plans, in the spirit of AOTAutograd's
//! min-cut partitioner (recompute what is cheap, keep what is expensive) but judged by the
//! planned arena rather than a cut's size: each round tries every candidate (a forward value
//! the backward reads, or an operand of one already chosen) and keeps the one that lowers the
//! peak most per FLOP recomputed; it stops at the budget (or, without one, when no cheap
//! elementwise recomputation lowers the peak: then every cheap value at once is tried, for
//! those that only help together, and each is dropped again where the peak allows), then
//! drops every chosen value the budget can do without, most expensive first. Its limits:
//! greedy, one value per round beyond that (a pair of expensive values that only helps
//! together is missed), and no reordering of the backward beyond the planner's own;
//! Checkmate's integer program would find the optimum at a far higher cost.

use crate::diag::Diagnostic;
use crate::ir::{decompose, Graph, Node, NodeId, Op, Origin};
use crate::schedule::Plan;
use serde::Serialize;
use std::collections::BTreeSet;

/// What the chosen plan recomputes and what that costs (the report's `recompute`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Recompute {
    /// Kernels the plan runs beyond those of the plan without recomputation.
    pub kernels: u64,
    /// Bytes the recomputations read and write.
    pub bytes: u64,
    /// Floating-point operations they perform.
    pub flops: u64,
    /// The recomputed values (source names, or `op (line N)`).
    pub values: Vec<String>,
    /// The FLOPs of the forward pass, for comparison.
    pub forward_flops: u64,
}

/// The node ranges `[start, end)` of the graph's backward passes.
fn passes(graph: &Graph) -> Vec<(usize, usize)> {
    graph
        .passes
        .iter()
        .map(|(s, e)| (s.index(), e.index()))
        .collect()
}

/// `graph` with each node of `remat` recomputed in every backward pass that reads it.
pub fn rewrite(graph: &Graph, remat: &BTreeSet<NodeId>) -> Graph {
    let ps = passes(graph);
    // Views of recomputed values are cloned with them.
    let mut chosen = vec![false; graph.len()];
    for id in graph.ids() {
        let node = graph.node(id);
        chosen[id.index()] = remat.contains(&id)
            || (node.op.is_view() && node.op.operands().iter().any(|o| chosen[o.index()]));
    }
    let mut out = Graph::new();
    out.dims = graph.dims.clone();
    let mut map: Vec<NodeId> = Vec::with_capacity(graph.len());
    let mut original: Vec<(usize, NodeId)> = Vec::new();
    let mut pass: Option<(usize, usize)> = None;
    for id in graph.ids() {
        let i = id.index();
        let here = ps.iter().copied().find(|&(s, e)| s <= i && i < e);
        if here != pass {
            // Leaving (or entering) a pass: forward values are read as they are again.
            for (n, v) in original.drain(..) {
                map[n] = v;
            }
            pass = here;
        }
        if let Some((start, _)) = here {
            for o in graph.node(id).op.operands() {
                clone_into(graph, &mut out, &mut map, &mut original, &chosen, o, start);
            }
        }
        let node = graph.node(id);
        let new_id = NodeId(out.len() as u32);
        let origin = graph.origin(id);
        let group = origin
            .group
            .map(|g| if g == id { new_id } else { map[g.index()] });
        let new = out.push(
            Node {
                op: decompose::remap(&node.op, &map),
                ty: node.ty.clone(),
                name: node.name.clone(),
            },
            Origin {
                group,
                ..origin.clone()
            },
        );
        map.push(new);
    }
    out.declarations_from(graph, &map);
    let m = |n: NodeId| map[n.index()];
    out.passes = graph
        .passes
        .iter()
        .map(|&(s, e)| (m(s), NodeId(m(NodeId(e.0 - 1)).0 + 1)))
        .collect();
    out
}

/// Clones the forward node `o` (and its chosen operands) before its first use in the pass
/// starting at `start`, pointing `map` at the clone for the rest of the pass.
fn clone_into(
    graph: &Graph,
    out: &mut Graph,
    map: &mut [NodeId],
    original: &mut Vec<(usize, NodeId)>,
    chosen: &[bool],
    o: NodeId,
    start: usize,
) {
    if o.index() >= start || !chosen[o.index()] || original.iter().any(|(n, _)| *n == o.index()) {
        return;
    }
    for p in graph.node(o).op.operands() {
        clone_into(graph, out, map, original, chosen, p, start);
    }
    let node = graph.node(o);
    let origin = graph.origin(o);
    let new_id = NodeId(out.len() as u32);
    let new = out.push(
        Node {
            op: decompose::remap(&node.op, map),
            ty: node.ty.clone(),
            name: None,
        },
        Origin {
            group: Some(new_id),
            ..origin.clone()
        },
    );
    original.push((o.index(), map[o.index()]));
    map[o.index()] = new;
}

/// The FLOPs of one checked-graph node (an estimate per element for the built-ins).
pub fn flops(graph: &Graph, id: NodeId) -> u64 {
    let node = graph.node(id);
    let n = node.ty.numel().unwrap_or(0);
    match &node.op {
        Op::Input { .. } | Op::Param { .. } | Op::Scalar(_) | Op::View(..) => 0,
        Op::MatMul(a, _) => {
            let k = graph.ty(*a).shape.last().map_or(1, |d| d.size);
            n.saturating_mul(2).saturating_mul(k)
        }
        Op::Reduce { arg, .. } => graph.ty(*arg).numel().unwrap_or(0),
        Op::Softmax { .. } => n.saturating_mul(5),
        Op::LayerNorm { .. } => n.saturating_mul(8),
        Op::RmsNorm { .. } => n.saturating_mul(5),
        Op::Var { arg, .. } | Op::LogSumExp { arg, .. } => {
            graph.ty(*arg).numel().unwrap_or(0).saturating_mul(4)
        }
        _ => n,
    }
}

/// Bytes a node reads and writes when computed on its own.
fn traffic(graph: &Graph, id: NodeId) -> u64 {
    let node = graph.node(id);
    if node.op.is_view() || node.op.is_leaf() {
        return 0;
    }
    let own = node.ty.bytes().unwrap_or(0);
    node.op.operands().iter().fold(own, |acc, o| {
        acc.saturating_add(graph.ty(*o).bytes().unwrap_or(0))
    })
}

/// What Inductor recomputes for free (no budget needed): everything but matrix products.
fn cheap(op: &Op) -> bool {
    !matches!(op, Op::MatMul(..))
}

/// The forward nodes the backward passes read (through views): the values kept for them.
fn saved_values(graph: &Graph) -> BTreeSet<NodeId> {
    let mut out = BTreeSet::new();
    for (start, end) in passes(graph) {
        for i in start..end {
            for mut o in graph.node(NodeId(i as u32)).op.operands() {
                while o.index() < start {
                    match &graph.node(o).op {
                        Op::View(_, a) => o = *a,
                        _ => break,
                    }
                }
                if o.index() < start && !graph.node(o).op.is_leaf() {
                    out.insert(o);
                }
            }
        }
    }
    out
}

/// The unit recomputing `c`: `c` and what it is computed from back to values kept anyway
/// (saved for the backward, leaves, or already chosen).
fn unit_of(
    graph: &Graph,
    c: NodeId,
    saved: &BTreeSet<NodeId>,
    chosen: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let mut unit = BTreeSet::new();
    let mut stack = vec![c];
    while let Some(n) = stack.pop() {
        if !unit.insert(n) {
            continue;
        }
        for mut o in graph.node(n).op.operands() {
            while let Op::View(_, a) = &graph.node(o).op {
                o = *a;
            }
            let op = &graph.node(o).op;
            if !op.is_leaf() && !saved.contains(&o) && !chosen.contains(&o) {
                stack.push(o);
            }
        }
    }
    unit
}

/// A plan of a (rewritten) graph and its primitive form.
pub struct Planned {
    pub graph: Graph,
    pub primitive: Graph,
    pub plan: Plan,
}

/// Chooses what to recompute. `plan_of` plans a graph (the caller's pipeline); `budget`
/// bounds the planned arena with inputs and params (`inputs` bytes). Without a budget only
/// elementwise values are candidates and only a lower peak is sought. `Err(peak)` is the
/// smallest peak (with inputs) reached when no choice meets the budget.
pub fn choose(
    graph: &Graph,
    inputs: u64,
    budget: Option<u64>,
    plan_of: &mut dyn FnMut(&Graph) -> Result<Planned, Diagnostic>,
) -> Result<Result<(Planned, Recompute), u64>, Diagnostic> {
    let base = plan_of(graph)?;
    let base_kernels = base.plan.kernels.len() as u64;
    let with = |p: &Planned| p.plan.arena_bytes.saturating_add(inputs);
    let fits = |p: &Planned| budget.is_none_or(|b| with(p) <= b);
    if graph.passes.is_empty() {
        return Ok(if fits(&base) {
            Ok((base, Recompute::default()))
        } else {
            Err(with(&base))
        });
    }
    let mut chosen: BTreeSet<NodeId> = BTreeSet::new();
    let mut best = base;
    let mut best_peak = with(&best);
    // Phase 1, always: elementwise values whose recomputation lowers the peak (Inductor's
    // free recomputation). Phase 2, over a budget: any value, until the budget is met.
    let mut free: BTreeSet<NodeId> = BTreeSet::new();
    for phase in [1, 2] {
        if phase == 2 && fits(&best) {
            break;
        }
        for _round in 0..64 {
            if phase == 2 && fits(&best) {
                break;
            }
            let mut cands: BTreeSet<NodeId> = saved_values(graph);
            for &c in &chosen {
                for mut o in graph.node(c).op.operands() {
                    while let Op::View(_, a) = &graph.node(o).op {
                        o = *a;
                    }
                    if !graph.node(o).op.is_leaf() {
                        cands.insert(o);
                    }
                }
            }
            let saved = saved_values(graph);
            let mut round_best: Option<(f64, BTreeSet<NodeId>, Planned, u64)> = None;
            for &c in &cands {
                if chosen.contains(&c) || (phase == 1 && !cheap(&graph.node(c).op)) {
                    continue;
                }
                let unit = unit_of(graph, c, &saved, &chosen);
                if phase == 1 && unit.iter().any(|&n| !cheap(&graph.node(n).op)) {
                    continue;
                }
                let mut trial = chosen.clone();
                trial.extend(unit.iter().copied());
                let p = plan_of(&rewrite(graph, &trial))?;
                let peak = with(&p);
                if peak >= best_peak {
                    continue;
                }
                let cost: u64 = unit.iter().map(|&n| flops(graph, n).max(1)).sum();
                let gain = (best_peak - peak) as f64 / cost as f64;
                if round_best.as_ref().is_none_or(|(g, ..)| gain > *g) {
                    round_best = Some((gain, unit, p, peak));
                }
            }
            let Some((_, unit, p, peak)) = round_best else {
                break;
            };
            chosen.extend(unit);
            best = p;
            best_peak = peak;
        }
        if phase == 1 {
            // Values that lower the peak only together (each alone leaves another step at
            // it): every cheap unit at once, then each dropped again, most expensive first,
            // where the peak does not rise without it.
            let saved = saved_values(graph);
            let units: Vec<BTreeSet<NodeId>> = saved
                .iter()
                .filter(|&&c| !chosen.contains(&c) && cheap(&graph.node(c).op))
                .map(|&c| unit_of(graph, c, &saved, &chosen))
                .filter(|u| u.iter().all(|&n| cheap(&graph.node(n).op)))
                .collect();
            if units.len() > 1 {
                let mut all = chosen.clone();
                all.extend(units.iter().flatten().copied());
                let p = plan_of(&rewrite(graph, &all))?;
                if with(&p) < best_peak {
                    (chosen, best_peak, best) = (all, with(&p), p);
                    let mut by_cost = units;
                    by_cost.sort_by_key(|u| {
                        std::cmp::Reverse(u.iter().map(|&n| flops(graph, n)).sum::<u64>())
                    });
                    for u in by_cost {
                        let trial: BTreeSet<NodeId> = chosen.difference(&u).copied().collect();
                        if trial.len() == chosen.len() {
                            continue;
                        }
                        let p = plan_of(&rewrite(graph, &trial))?;
                        if with(&p) <= best_peak {
                            (chosen, best_peak, best) = (trial, with(&p), p);
                        }
                    }
                }
            }
            free = chosen.clone();
        }
    }
    if !fits(&best) {
        return Ok(Err(best_peak));
    }
    // Drop what the budget does without, most expensive first (phase 1's stay: they
    // lower the peak for next to nothing).
    let mut order: Vec<NodeId> = chosen.difference(&free).copied().collect();
    order.sort_by_key(|&n| std::cmp::Reverse(flops(graph, n)));
    for n in order {
        let mut trial = chosen.clone();
        trial.remove(&n);
        let p = plan_of(&rewrite(graph, &trial))?;
        if fits(&p) {
            chosen = trial;
            best = p;
        }
    }
    let forward_flops = graph
        .ids()
        .filter(|id| graph.passes.iter().all(|(s, _)| id < s))
        .map(|id| flops(graph, id))
        .sum();
    let recompute = Recompute {
        kernels: (best.plan.kernels.len() as u64).saturating_sub(base_kernels),
        bytes: chosen.iter().map(|&n| traffic(graph, n)).sum(),
        flops: chosen.iter().map(|&n| flops(graph, n)).sum(),
        values: chosen
            .iter()
            .map(|&n| match &graph.node(n).name {
                Some(name) => name.clone(),
                None => format!(
                    "{} (line {})",
                    graph.node(n).op.name(),
                    graph.origin(n).line
                ),
            })
            .collect(),
        forward_flops,
    };
    Ok(Ok((best, recompute)))
}
