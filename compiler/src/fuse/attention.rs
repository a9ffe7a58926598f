//! Attention: recognises `softmax(f(q @ kᵀ, …)) @ v` among the fused groups and makes the
//! two matrix products and the softmax kernel between them one group, which the planner
//! turns into one `schedule::AttentionKernel` (flash attention: the scores and the
//! probabilities are never stored).
//!
//! The pattern, on the primitive graph after fusion: a matmul `s` read only by one fused row
//! group over `s`'s shape whose reductions fold the last axis; that group computes the logits
//! `x` from `s` and other operands by elementwise ops only (the *prologue*: scale, additive
//! masks and biases, any elementwise function; a mask built from indices is one more
//! operand, or computed in the prologue from `arange`s: `where(i >= j, s, -inf)` compares the
//! query and key positions, exactly in integers), then exactly softmax's primitives, `exp(x - max(x)) / sum(exp(x - max(x)))`
//! (and a rounding cast to a half dtype); its one stored value is the left operand of one
//! matmul `p @ v` and nothing else. Anything else keeps today's kernels, and `misses` says
//! why for `tc emit --plan`.

use super::Fuser;
use crate::ir::layout::Layout;
use crate::ir::{BinaryOp, Graph, NodeId, Op, ReduceOp, UnaryOp};
use std::collections::BTreeSet;

/// The largest head size (of `q`/`k` and of `v`) an attention kernel takes: the CUDA kernel
/// keeps a query's accumulator in registers and a tile of keys in 48 KiB of shared memory.
pub const MAX_HEAD: u64 = 128;

/// The parts of one attention group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attention {
    /// `q @ kᵀ`.
    pub scores: NodeId,
    /// The prologue's nodes (sorted), computing `logits` from `scores`; empty when the
    /// logits are the scores.
    pub prologue: Vec<NodeId>,
    pub logits: NodeId,
    /// The probabilities (the left operand of `out`).
    pub probs: NodeId,
    /// `probs @ v`.
    pub out: NodeId,
}

/// The attention parts of a group's `nodes` (sorted), or why they are not attention.
pub fn parts(graph: &Graph, lays: &[Layout], nodes: &[NodeId]) -> Result<Attention, String> {
    let set: BTreeSet<NodeId> = nodes.iter().copied().collect();
    let root = |n: NodeId| lays[n.index()].root;
    let mms: Vec<NodeId> = nodes
        .iter()
        .copied()
        .filter(|&n| matches!(graph.node(n).op, Op::MatMul(..)))
        .collect();
    let [scores, out] = mms[..] else {
        return Err("not two matrix products".into());
    };
    let Op::MatMul(qa, kb) = graph.node(scores).op else {
        unreachable!("filtered above")
    };
    let Op::MatMul(probs, v) = graph.node(out).op else {
        unreachable!("filtered above")
    };
    if [qa, kb, v].iter().any(|&o| set.contains(&root(o))) {
        return Err("q, k or v is computed in the same kernel".into());
    }
    if !set.contains(&probs) {
        return Err("the probabilities reach `@ v` through a view".into());
    }
    let shape = graph.ty(scores).sizes();
    let rank = shape.len();
    if rank < 2 || graph.ty(probs).sizes() != shape {
        return Err("the probabilities do not have the scores' shape".into());
    }
    let last = rank - 1;
    let (d, dv) = (graph.ty(qa).sizes()[last], graph.ty(out).sizes()[last]);
    if d > MAX_HEAD || dv > MAX_HEAD {
        return Err(format!(
            "head size {} is above the fused kernel's {MAX_HEAD}",
            d.max(dv)
        ));
    }
    // Direct operand `o` of a softmax primitive: a row statistic may come through a view.
    let reduce_of = |o: NodeId, want: ReduceOp| -> Option<NodeId> {
        let r = root(o);
        match &graph.node(r).op {
            Op::Reduce { op, arg, axes, .. } if *op == want && axes[..] == [last] => Some(*arg),
            _ => None,
        }
    };
    let not_softmax = || "the kernel between the products is not softmax(…)".to_string();
    let y = match graph.node(probs).op {
        Op::Cast { arg, .. } if set.contains(&arg) => arg,
        _ => probs,
    };
    let Op::Binary(BinaryOp::Div, e, sb) = graph.node(y).op else {
        return Err(not_softmax());
    };
    let sum = root(sb);
    if reduce_of(sb, ReduceOp::Sum) != Some(e) || !set.contains(&sum) {
        return Err(not_softmax());
    }
    let Op::Unary(UnaryOp::Exp, s) = graph.node(e).op else {
        return Err(not_softmax());
    };
    let Op::Binary(BinaryOp::Sub, x, mb) = graph.node(s).op else {
        return Err(not_softmax());
    };
    let mx = root(mb);
    if reduce_of(mb, ReduceOp::Max) != Some(x) || !set.contains(&mx) {
        return Err(not_softmax());
    }
    if !set.contains(&x) {
        return Err("the logits are read through a view".into());
    }
    if graph.dtype(x).is_integral() {
        return Err("the logits are integers".into());
    }
    let softmax: BTreeSet<NodeId> = [mx, s, e, sum, y, probs].into_iter().collect();
    // The prologue: the nodes of the group the logits depend on.
    let mut prologue = BTreeSet::new();
    let mut stack = vec![x];
    let mut reads_scores = false;
    while let Some(n) = stack.pop() {
        if n == scores {
            reads_scores = true;
            continue;
        }
        if !prologue.insert(n) {
            continue;
        }
        let node = graph.node(n);
        if !matches!(
            node.op,
            Op::Unary(..) | Op::Binary(..) | Op::Cast { .. } | Op::Where(..)
        ) {
            return Err(format!(
                "the logits are computed with {}, not elementwise",
                node.op.name()
            ));
        }
        // A value of a lower rank (a mask over `[S, S]` compared from `arange`s) is read
        // through a broadcast, as in the softmax kernel the fuser made: the prologue runs
        // over the same domain.
        let sizes = node.ty.sizes();
        if sizes.len() > rank
            || sizes
                .iter()
                .rev()
                .zip(shape.iter().rev())
                .any(|(&a, &b)| a != b && a != 1)
        {
            return Err("a prologue value does not broadcast to the scores' shape".into());
        }
        for o in node.op.operands() {
            let r = root(o);
            if r == scores && o != scores {
                return Err("the scores are read through a view".into());
            }
            if set.contains(&r) {
                if softmax.contains(&r) {
                    return Err(not_softmax());
                }
                stack.push(r);
            }
        }
    }
    if !reads_scores {
        return Err("the softmax does not read the scores".into());
    }
    let accounted = prologue.len() + softmax.len() + 2;
    if accounted != set.len() {
        return Err("the softmax kernel computes more than the probabilities".into());
    }
    Ok(Attention {
        scores,
        prologue: prologue.into_iter().collect(),
        logits: x,
        probs,
        out,
    })
}

/// The groups after vertical fusion, each attention triple merged: `q @ kᵀ`'s group (which
/// keeps its index), the softmax group and `p @ v`'s group. Edges are rebuilt after.
pub(super) fn merge(f: &mut Fuser<'_>) {
    for (g1, g2, g3) in triples(f)
        .into_iter()
        .filter_map(|(t, why)| why.is_ok().then_some(t))
    {
        // Two products feeding one softmax: the first takes it, the other stays stored.
        if [g1, g2, g3].iter().any(|&g| f.members[g].is_empty()) || f.members[g1].len() != 1 {
            continue;
        }
        for g in [g2, g3] {
            for &n in &f.members[g] {
                f.gid[n.index()] = Some(g1);
            }
            let moved = std::mem::take(&mut f.members[g]);
            f.members[g1].extend(moved);
            f.shape[g] = None;
        }
        f.shape[g1] = None;
    }
    f.rebuild_edges();
}

/// The groups of `q @ kᵀ`, the softmax and `p @ v` (`usize::MAX` when not found), and
/// whether they form attention (else why not).
type Candidate = ((usize, usize, usize), Result<(), String>);

/// Each candidate (a matmul whose value some group folds with `max` over the last axis,
/// a group with a value that another product reads):
/// its three groups and whether they form attention (else why not).
fn triples(f: &Fuser<'_>) -> Vec<Candidate> {
    let graph = f.graph;
    let outputs: BTreeSet<NodeId> = graph
        .outputs
        .iter()
        .map(|o| f.lays[o.node.index()].root)
        .collect();
    let mut out = Vec::new();
    for (g1, members) in f.members.iter().enumerate() {
        let [mm1] = members[..] else { continue };
        if !matches!(graph.node(mm1).op, Op::MatMul(..)) {
            continue;
        }
        let last = graph.ty(mm1).rank().saturating_sub(1);
        let readers: BTreeSet<usize> = f.consumers[mm1.index()]
            .iter()
            .filter_map(|c| f.gid[c.index()])
            .collect();
        let softmax_like = |g: usize| {
            f.members[g].iter().any(|&n| {
                matches!(&graph.node(n).op,
                    Op::Reduce { op: ReduceOp::Max, axes, .. } if axes[..] == [last])
            })
        };
        let Some(&g2) = readers.iter().find(|&&g| softmax_like(g)) else {
            continue;
        };
        // A candidate only when a value of that group feeds a product (`softmax(…) @ v`).
        let feeds_product = f.members[g2].iter().any(|&n| {
            f.consumers[n.index()].iter().any(|&c| {
                f.gid[c.index()] != Some(g2) && matches!(graph.node(c).op, Op::MatMul(..))
            })
        });
        if !feeds_product {
            continue;
        }
        let why = (|| {
            if readers.len() > 1 || outputs.contains(&mm1) {
                return Err("the scores are read by another kernel or are an output".into());
            }
            // The values of the softmax group that leave it.
            let escaping: Vec<NodeId> = f.members[g2]
                .iter()
                .copied()
                .filter(|&n| {
                    outputs.contains(&n)
                        || f.consumers[n.index()]
                            .iter()
                            .any(|c| f.gid[c.index()] != Some(g2))
                })
                .collect();
            let [p] = escaping[..] else {
                return Err("the softmax kernel stores more than the probabilities".into());
            };
            if outputs.contains(&p) {
                return Err("the probabilities are an output".into());
            }
            let users: BTreeSet<NodeId> = f.consumers[p.index()].iter().copied().collect();
            let [mm3] = users.iter().copied().collect::<Vec<_>>()[..] else {
                return Err("the probabilities are read by more than one product".into());
            };
            let g3 = f.gid[mm3.index()].ok_or("the probabilities' reader is in no kernel")?;
            match graph.node(mm3).op {
                Op::MatMul(a, b) if a == p && b != p => {}
                _ => return Err("the probabilities are not only the left operand of `@ v`".into()),
            }
            let mut nodes: Vec<NodeId> = [g1, g2, g3]
                .iter()
                .flat_map(|&g| f.members[g].iter().copied())
                .collect();
            nodes.sort();
            parts(graph, &f.lays, &nodes).map(|_| g3)
        })();
        let g3 = match &why {
            Ok(g3) => *g3,
            Err(_) => usize::MAX,
        };
        out.push(((g1, g2, g3), why.map(|_| ())));
    }
    out
}

/// One line per attention candidate that stays unfused, naming its line and why; then one
/// per fused attention whose output a kernel reads elementwise (see `epilogues`).
pub(super) fn misses(f: &Fuser<'_>) -> Vec<String> {
    let mut out: Vec<String> = triples(f)
        .into_iter()
        .filter_map(|((g1, _, _), why)| {
            let mm1 = *f.members[g1].first()?;
            why.err().map(|w| {
                format!(
                    "attention at line {} not fused: {w}; the scores are stored",
                    f.graph.origin(mm1).line
                )
            })
        })
        .collect();
    out.extend(epilogues(f));
    out
}

/// The epilogues left out of fused attention kernels: for each attention group, each other
/// kernel that reads its output and is not a matrix product (a scale, the head-merge copy
/// of `permute(att @ v)`, a residual add), a line naming its ops and lines. The attention
/// kernel writes its output contiguously as `[batch…, m, dv]` and takes no epilogue, so the
/// output is stored and read again by that kernel.
fn epilogues(f: &Fuser<'_>) -> Vec<String> {
    let graph = f.graph;
    let mut out = Vec::new();
    for (g, members) in f.members.iter().enumerate() {
        if members
            .iter()
            .filter(|&&n| matches!(graph.node(n).op, Op::MatMul(..)))
            .count()
            != 2
        {
            continue;
        }
        let mut nodes = members.clone();
        nodes.sort();
        let Ok(att) = parts(graph, &f.lays, &nodes) else {
            continue;
        };
        let readers: BTreeSet<usize> = f.consumers[att.out.index()]
            .iter()
            .filter_map(|c| f.gid[c.index()])
            .filter(|&h| h != g)
            .collect();
        for h in readers {
            if f.members[h]
                .iter()
                .all(|&n| matches!(graph.node(n).op, Op::MatMul(..)))
            {
                continue;
            }
            let mut ops: Vec<&str> = Vec::new();
            let mut lines: BTreeSet<u32> = BTreeSet::new();
            for &n in &f.members[h] {
                let name = graph.node(n).op.name();
                if !ops.contains(&name) {
                    ops.push(name);
                }
                lines.insert(graph.origin(n).line);
            }
            out.push(format!(
                "attention at line {}: epilogue not fused: the kernel of {} (line {}) reads its output; the attention kernel writes `[batch…, m, dv]` contiguously and takes no epilogue yet, so the output is stored",
                graph.origin(att.scores).line,
                ops.join(", "),
                lines.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}
