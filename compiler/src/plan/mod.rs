//! The planner: turns fused groups, in a given order, into the schedule (see
//! `docs/memory-planning.md`). One stage per module: `kernel` builds each group's kernel
//! (loads, value-numbered insts, f16 rounding, stores) and the buffers; `label` names its
//! source ops and lines; `split` runs a large reduction into one value as two kernels over
//! partials; then `crate::memory` gives the buffers their lives, in-place reuse and arena
//! offsets. Which groups to plan (fused, sibling-merged, unfused) is the driver's search,
//! `crate::search`. `verify` checks a plan independently; `text` prints it for
//! `tc emit --plan`.

mod attention_backward;
mod index_add;
mod kernel;
pub mod label;
pub mod prologue;
pub mod split;
pub mod text;
pub mod tile;
pub mod verify;

pub use label::{source_key, source_op_name};
pub use text::print;
pub use verify::verify;

use crate::diag::{Diagnostic, ErrorKind};
use crate::fuse::{is_compute, to_domain, Group};
use crate::ir::layout::{layouts, layouts_through};
use crate::ir::types::contiguous_strides;
use crate::ir::{Graph, NodeId, Op};
use crate::memory::order::OrderModel;
use crate::memory::{inplace, liveness, pack, sizes::PARTIAL_BYTES};
use crate::schedule::{
    Buffer, BufferId, BufferKind, InstOp, Kernel, KernelKind, Plan, PlanOptions, PlanOutput, Region,
};
use kernel::Builder;
use std::collections::{BTreeSet, HashMap};

/// An error that is tc's fault, not the program's.
pub fn internal(msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error(ErrorKind::PlannerInternal, msg)
        .with_note("this is a bug in tc's planner, not in your program")
}

fn too_large(graph: &Graph, id: NodeId) -> Diagnostic {
    let o = graph.origin(id);
    Diagnostic::error(
        ErrorKind::TensorTooLarge,
        format!(
            "the tensor {} has more bytes than fit in 64 bits",
            graph.ty(id)
        ),
    )
    .with_primary(o.span.clone(), "this value")
}

/// The whole arena (with the inputs and params) needs more bytes than 64 bits count: names
/// the largest arena buffer, the one most to blame.
fn arena_too_large(graph: &Graph, buffers: &[Buffer]) -> Diagnostic {
    let largest = buffers
        .iter()
        .filter(|b| !matches!(b.kind, BufferKind::Input { .. } | BufferKind::Param { .. }))
        .max_by_key(|b| b.bytes);
    let d = Diagnostic::error(
        ErrorKind::TensorTooLarge,
        "the program's tensors together need more bytes than fit in 64 bits (its arena of \
         intermediate and output tensors, with the inputs and params, cannot be addressed)",
    );
    match largest.and_then(|b| b.node) {
        Some(n) => d.with_primary(
            graph.origin(n).span.clone(),
            format!("the largest of them, {}", graph.ty(n)),
        ),
        None => d,
    }
}

/// The plan of `groups` in their order, or in another topological order of them when that
/// packs smaller: with `reorder`, the orders `memory::order` proposes for peak memory (least
/// peak memory first, breadth first, depth first, the exact search's best) and the
/// as-late-as-possible order; without, only the latter, and only when the first exceeds the
/// eager figure `budget`. The first order wins ties, so reordering never raises the arena.
pub fn plan_ordered(
    graph: &Graph,
    groups: &[Group],
    options: &PlanOptions,
    budget: u64,
    reorder: bool,
) -> Result<Plan, Diagnostic> {
    let (mut best, trace) = plan_traced(graph, groups, options, budget)?;
    if !options.reuse {
        return Ok(best);
    }
    if !reorder {
        if best.arena_bytes <= budget {
            return Ok(best);
        }
        let late = plan_in_order(graph, &late_order(graph, groups), options, budget)?;
        return Ok(if late.arena_bytes < best.arena_bytes {
            late
        } else {
            best
        });
    }
    let model = OrderModel::of_plan(&best);
    let mut candidates: Vec<Vec<usize>> = model.heuristics();
    let own: Vec<usize> = (0..model.len()).collect();
    let mut known = (model.peak(&own), own);
    for o in &candidates {
        let p = model.peak(o);
        if p < known.0 {
            known = (p, o.clone());
        }
    }
    let (_, exact_order) = model.best_order((known.0, &known.1), SEARCH_STATES);
    candidates.push(exact_order);
    let mut tried: BTreeSet<Vec<usize>> = BTreeSet::new();
    tried.insert((0..groups.len()).collect());
    let mut orders: Vec<Vec<usize>> = Vec::new();
    for o in candidates {
        if model.peak(&o) >= best.arena_bytes {
            continue; // cannot pack below the arena already found
        }
        let g = group_order(&o, &trace, groups.len());
        if tried.insert(g.clone()) {
            orders.push(g);
        }
    }
    let late = late_order(graph, groups);
    for order in std::iter::once(late).chain(
        orders
            .into_iter()
            .map(|o| o.iter().map(|&g| groups[g].clone()).collect()),
    ) {
        let p = plan_in_order(graph, &order, options, budget)?;
        if p.arena_bytes < best.arena_bytes {
            best = p;
        }
    }
    Ok(best)
}

/// States the exact order search may visit while planning (the report's bound allows more).
const SEARCH_STATES: usize = 20_000;

/// The order of groups that runs the kernels in `kernel_order` (`trace[k]` is kernel `k`'s
/// group; a group's place is that of its first kernel; groups with no kernel go last).
fn group_order(kernel_order: &[usize], trace: &[usize], groups: usize) -> Vec<usize> {
    let mut seen = vec![false; groups];
    let mut out = Vec::with_capacity(groups);
    for &k in kernel_order {
        let g = trace[k];
        if !seen[g] {
            seen[g] = true;
            out.push(g);
        }
    }
    out.extend((0..groups).filter(|&g| !seen[g]));
    out
}

/// The groups in a topological order that runs each group as late as its last node
/// (ties by first node), so a value is not computed long before eager would compute it.
pub fn late_order(graph: &Graph, groups: &[Group]) -> Vec<Group> {
    let lays = layouts(graph);
    let mut group_of = vec![usize::MAX; graph.len()];
    for (g, group) in groups.iter().enumerate() {
        for &n in &group.nodes {
            group_of[n.index()] = g;
        }
    }
    let mut preds: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); groups.len()];
    for (g, group) in groups.iter().enumerate() {
        for &n in &group.nodes {
            for o in graph.node(n).op.operands() {
                let h = group_of[lays[o.index()].root.index()];
                if h != usize::MAX && h != g {
                    preds[g].insert(h);
                }
            }
        }
    }
    let key = |g: usize| {
        (
            groups[g].nodes.iter().max().copied(),
            groups[g].nodes.first().copied(),
            g,
        )
    };
    let mut done = vec![false; groups.len()];
    let mut out = Vec::with_capacity(groups.len());
    while out.len() < groups.len() {
        let next = (0..groups.len())
            .filter(|&g| !done[g] && preds[g].iter().all(|&h| done[h]))
            .min_by_key(|&g| key(g));
        let Some(g) = next else {
            return groups.to_vec();
        };
        done[g] = true;
        out.push(groups[g].clone());
    }
    out
}

/// The plan of `groups` run in the order given. `budget` is the eager figure the arena
/// packer tries harder to reach.
pub fn plan_in_order(
    graph: &Graph,
    groups: &[Group],
    options: &PlanOptions,
    budget: u64,
) -> Result<Plan, Diagnostic> {
    plan_traced(graph, groups, options, budget).map(|(p, _)| p)
}

/// `plan_in_order`, with the index of the group each kernel comes from.
fn plan_traced(
    graph: &Graph,
    groups: &[Group],
    options: &PlanOptions,
    budget: u64,
) -> Result<(Plan, Vec<usize>), Diagnostic> {
    let lays = layouts(graph);
    for id in graph.ids() {
        if graph.node(id).op.is_view() && lays[id.index()].root == id {
            return Err(internal(format!(
                "the view {id} has no strided layout and was not copied"
            )));
        }
    }
    let mut group_of: Vec<Option<usize>> = vec![None; graph.len()];
    for (g, group) in groups.iter().enumerate() {
        for &n in &group.nodes {
            group_of[n.index()] = Some(g);
        }
    }
    // Promotions in no kernel (`fuse` folded them): each consumer loads the operand through
    // the same views and converts; `flays` are the layouts that see through them.
    let folded: Vec<bool> = graph
        .ids()
        .map(|id| {
            matches!(graph.node(id).op, Op::Cast { implicit: true, .. })
                && group_of[id.index()].is_none()
        })
        .collect();
    let flays = layouts_through(graph, &folded);
    // Values the outputs need, and everything they depend on.
    let output_roots: BTreeSet<NodeId> = graph
        .outputs
        .iter()
        .map(|o| lays[o.node.index()].root)
        .collect();
    let live = graph.needed();
    // The forward values each attention backward recomputes rather than reads.
    let mut recomputes: HashMap<usize, BTreeSet<NodeId>> = HashMap::new();
    for (g, group) in groups.iter().enumerate() {
        if let Some(ab) = &group.attention_backward {
            recomputes.insert(g, ab.recomputed(graph, &lays));
        }
    }
    // Stored values: outputs, and values a later kernel reads.
    let mut stored = vec![false; graph.len()];
    for r in &output_roots {
        stored[r.index()] = true;
    }
    for id in graph.ids() {
        if !live[id.index()] || !is_compute(&graph.node(id).op) || folded[id.index()] {
            continue;
        }
        let recomputed = group_of[id.index()].and_then(|g| recomputes.get(&g));
        for o in graph.node(id).op.operands() {
            let r = flays[o.index()].root;
            if recomputed.is_some_and(|set| set.contains(&r)) {
                continue;
            }
            if group_of[r.index()].is_some() && group_of[r.index()] != group_of[id.index()] {
                stored[r.index()] = true;
            }
        }
    }
    for id in graph.ids() {
        if is_compute(&graph.node(id).op)
            && !folded[id.index()]
            && group_of[id.index()].is_none()
            && live[id.index()]
        {
            return Err(internal(format!(
                "the node {id} ({}) is in no kernel",
                graph.node(id).op.name()
            )));
        }
    }

    let mut b = Builder {
        graph,
        lays: &lays,
        folded: &folded,
        flays: &flays,
        buffers: Vec::new(),
        buf_of: HashMap::new(),
    };
    let mut inputs = Vec::new();
    let mut params = Vec::new();
    for (index, leaf) in graph.inputs.iter().enumerate() {
        inputs.push(b.leaf(leaf.node, &leaf.name, BufferKind::Input { index })?);
    }
    for (index, leaf) in graph.params.iter().enumerate() {
        params.push(b.leaf(leaf.node, &leaf.name, BufferKind::Param { index })?);
    }

    // Each operand (a `Copy`) of a concat: the concat and the element offset of its place.
    let mut part_of: HashMap<NodeId, (NodeId, i64)> = HashMap::new();
    for id in graph.ids() {
        if let Op::Concat { args, axis } = &graph.node(id).op {
            let stride = contiguous_strides(&graph.ty(id).sizes())[*axis];
            let mut at = 0i64;
            for &a in args {
                part_of.insert(a, (id, at * stride));
                at += graph.ty(a).shape[*axis].size as i64;
            }
        }
    }

    let mut kernels: Vec<Kernel> = Vec::new();
    let mut notes = Vec::new();
    let mut trace: Vec<usize> = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        let outs: Vec<NodeId> = group
            .nodes
            .iter()
            .copied()
            .filter(|n| stored[n.index()])
            .collect();
        if outs.is_empty() {
            continue; // nothing anyone reads
        }
        let step = kernels.len();
        let name = format!("k{step}");
        // A concat has no kernel: its operands' kernels wrote its buffer (made by the first).
        if let [c] = group.nodes[..] {
            if matches!(graph.node(c).op, Op::Concat { .. }) {
                if !b.buf_of.contains_key(&c) {
                    return Err(internal(format!("no kernel wrote the concat {c}")));
                }
                continue;
            }
        }
        let unnamed = outs
            .iter()
            .filter(|n| graph.node(**n).name.is_none() && !part_of.contains_key(n))
            .count();
        let mut out_bufs = Vec::new();
        let mut regions: Vec<Option<Region>> = Vec::new();
        let mut k = 0;
        for (pos, &n) in outs.iter().enumerate() {
            if let Some(&(c, offset)) = part_of.get(&n) {
                // Stored straight into its place in the concat's buffer.
                let buf = match b.buf_of.get(&c) {
                    Some(&id) => id,
                    None => {
                        let cname = graph
                            .node(c)
                            .name
                            .clone()
                            .unwrap_or_else(|| format!("{name}.concat"));
                        b.arena(c, cname, step)?
                    }
                };
                let at = group.nodes.iter().position(|&m| m == n).unwrap_or(pos);
                let level = group
                    .levels
                    .get(at)
                    .copied()
                    .unwrap_or(crate::schedule::Level::Element);
                let rank = graph.ty(n).rank();
                let strides = to_domain(
                    &contiguous_strides(&graph.ty(c).sizes()),
                    rank,
                    level,
                    &group.domain,
                    &group.reduce_axes,
                );
                if group.matmul || strides.len() != group.domain.len() {
                    return Err(internal(format!(
                        "the concat operand {n} does not match its kernel's domain"
                    )));
                }
                out_bufs.push(buf);
                regions.push(Some(Region { offset, strides }));
                continue;
            }
            regions.push(None);
            let bname = match &graph.node(n).name {
                Some(s) => s.clone(),
                None if unnamed == 1 => format!("{name}.out"),
                None => {
                    k += 1;
                    format!("{name}.out{}", k - 1)
                }
            };
            out_bufs.push(b.arena(n, bname, step)?);
        }
        let kind = if let Some(ab) = &group.attention_backward {
            let k = b.attention_backward(ab, &live, &outs, &out_bufs, step)?;
            notes.push(format!(
                "{name}: attention backward (line {}): the scores, the probabilities and their gradients ({} {}) never materialised (recomputed by tiles from q, k and each row's max and sum)",
                graph.origin(ab.forward.scores).line,
                graph.dtype(ab.forward.scores),
                list(&graph.ty(ab.forward.scores).sizes()),
            ));
            k
        } else if let Some(att) = &group.attention {
            let stored_ok = match outs[..] {
                [n] if att.epilogue.is_empty() => n == att.out,
                [n] => att.epilogue.contains(&n) && regions[0].is_none(),
                _ => false,
            };
            if !stored_ok {
                return Err(internal("an attention kernel stores more than its output"));
            }
            let k = b.attention(att, &live, outs[0], out_bufs[0])?;
            notes.push(format!(
                "{name}: attention (line {}): {} scores {} never materialised (flash attention: \
                 tiles of keys, online softmax)",
                graph.origin(att.scores).line,
                graph.dtype(att.scores),
                list(&graph.ty(att.scores).sizes()),
            ));
            k
        } else if group.matmul {
            b.matmul(group, out_bufs[0], options, step)?
        } else if matches!(graph.node(group.nodes[0]).op, Op::IndexAdd { .. }) {
            let k = b.index_add(group, out_bufs[0])?;
            if let KernelKind::IndexAdd(ia) = &k {
                notes.push(format!(
                    "{name}: index add (line {}): the gradient of {} positions added into the {} rows they read, no {} x {} comparison (the rows in ranges, each walking the index in order: {})",
                    graph.origin(group.nodes[0]).line,
                    ia.positions(),
                    ia.rows,
                    ia.rows,
                    ia.positions(),
                    if options.for_gpu() {
                        "a block a range"
                    } else {
                        "a task a range"
                    }
                ));
            }
            k
        } else {
            let mut f = b.fused(group, &live, &outs, &out_bufs)?;
            for (st, region) in f.stores.iter_mut().zip(&regions) {
                st.region = region.clone();
            }
            // On the GPU, a column reduction that would not fill it splits over blocks within
            // this step, through a workspace live at the step alone.
            if let Some(cs) = split::column_split(&f).filter(|_| options.for_gpu()) {
                f.workspace = Some(b.push(Buffer {
                    name: format!("{name}.workspace"),
                    kind: BufferKind::Workspace,
                    dtype: crate::ir::DType::F32,
                    shape: vec![cs.bytes / 4],
                    bytes: cs.bytes,
                    offset: 0,
                    first_step: step,
                    last_step: step,
                    in_place_of: None,
                    node: None,
                }));
            }
            KernelKind::Fused(f)
        };
        let (ops, lines) = label::kernel_label(graph, group, &live);
        // A large reduction into one value: two kernels over a small buffer of partials.
        let halves = match &kind {
            KernelKind::Fused(f) => split::splittable(f).map(|sp| {
                let partials: Vec<BufferId> = (0..sp.reduces.len())
                    .map(|i| {
                        b.push(Buffer {
                            name: format!(
                                "{name}.partials{}",
                                if sp.reduces.len() > 1 {
                                    i.to_string()
                                } else {
                                    String::new()
                                }
                            ),
                            kind: BufferKind::Arena,
                            dtype: crate::ir::DType::F32,
                            shape: vec![sp.rows],
                            bytes: sp.rows * PARTIAL_BYTES,
                            offset: 0,
                            first_step: step,
                            last_step: step + 1,
                            in_place_of: None,
                            node: None,
                        })
                    })
                    .collect();
                split::split(f, &sp, &partials)
            }),
            KernelKind::MatMul(_)
            | KernelKind::Attention(_)
            | KernelKind::AttentionBackward(_)
            | KernelKind::IndexAdd(_) => None,
        };
        match halves {
            Some((first, second)) => {
                // The values stored after the fold are written one step later.
                for st in &second.stores {
                    b.buffers[st.buffer.index()].first_step = step + 1;
                }
                let folds: Vec<String> = second
                    .body
                    .iter()
                    .filter_map(|i| match i.op {
                        InstOp::Reduce(op, _) => Some(format!("{} of partials", op.name())),
                        _ => None,
                    })
                    .collect();
                trace.extend([gi, gi]);
                kernels.push(Kernel {
                    name,
                    kind: KernelKind::Fused(first),
                    ops,
                    lines: lines.clone(),
                });
                kernels.push(Kernel {
                    name: format!("k{}", step + 1),
                    kind: KernelKind::Fused(second),
                    ops: folds,
                    lines,
                });
            }
            None => {
                trace.push(gi);
                kernels.push(Kernel {
                    name,
                    kind,
                    ops,
                    lines,
                })
            }
        }
    }

    let mut buffers = b.buffers;
    let buf_of = b.buf_of;
    let mut outputs = Vec::new();
    for o in &graph.outputs {
        let lay = &lays[o.node.index()];
        let id = *buf_of
            .get(&lay.root)
            .ok_or_else(|| internal(format!("output {} has no buffer", o.name)))?;
        outputs.push(PlanOutput {
            name: o.name.clone(),
            buffer: id,
            dtype: graph.dtype(o.node),
            shape: graph.ty(o.node).sizes(),
            offset: lay.offset,
            strides: lay.strides.clone(),
        });
    }
    liveness::extend_lives(&kernels, &mut buffers, &outputs);
    let output_bufs: BTreeSet<BufferId> = outputs.iter().map(|o| o.buffer).collect();
    let arena_bytes = place(&kernels, &mut buffers, &output_bufs, options.reuse, budget);
    // Packing saturates instead of wrapping: an arena of u64::MAX bytes is one whose
    // offsets overflowed, and so is one that, with the inputs and params, cannot be counted.
    let leaves: u64 = buffers
        .iter()
        .filter(|b| matches!(b.kind, BufferKind::Input { .. } | BufferKind::Param { .. }))
        .fold(0u64, |acc, b| acc.saturating_add(b.bytes));
    if arena_bytes == u64::MAX || arena_bytes.checked_add(leaves).is_none() {
        return Err(arena_too_large(graph, &buffers));
    }
    Ok((
        Plan {
            kernels,
            buffers,
            arena_bytes,
            inputs,
            params,
            outputs,
            options: options.clone(),
            unfused_fallback: false,
            notes,
        },
        trace,
    ))
}

/// Gives `buffers` (lives set, no storage chosen yet) their storage: in-place reuse where
/// `reuse`, then offsets in the arena; returns the arena's bytes.
pub(crate) fn place(
    kernels: &[Kernel],
    buffers: &mut [Buffer],
    outputs: &BTreeSet<BufferId>,
    reuse: bool,
    budget: u64,
) -> u64 {
    if reuse {
        inplace::in_place(kernels, buffers, outputs);
    }
    pack::pack_arena(buffers, reuse, budget)
}

fn list(xs: &[u64]) -> String {
    let v: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", v.join(", "))
}

#[cfg(test)]
mod tests;
