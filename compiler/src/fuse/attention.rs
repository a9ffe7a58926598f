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
//!
//! The *epilogue*: when the one kernel other than a product that reads `p @ v` is
//! elementwise, stores one value and reads the output through a permutation of its axes
//! (the head-merge copy `reshape(permute(att @ v, [0, 2, 1, 3]), [B, S, D])`, a cast, a
//! scale), it joins the attention group: the attention kernel computes it per output
//! element and writes its value through strides, so `p @ v` is never stored. Anything else
//! (a second reader, a reduction, a view that is no permutation) is said in `misses`.

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
    /// The elementwise epilogue's nodes (sorted): a kernel that read the output through a
    /// permutation of its axes (the head-merge copy of `permute(att @ v)`, a cast, a scale),
    /// taken into the attention kernel, which writes that kernel's one value instead of
    /// `out`; empty when there is none.
    pub epilogue: Vec<NodeId>,
}

/// For each axis of a value of shape `to` read from a contiguous `from`-shaped value
/// through `offset` and `strides`, the axis of `from` it walks, when the read is a
/// permutation of `from`'s axes (same rank and sizes, each element read once); else `None`.
pub fn permutation(from: &[u64], to: &[u64], offset: i64, strides: &[i64]) -> Option<Vec<usize>> {
    if from.len() != to.len() || strides.len() != to.len() || offset != 0 {
        return None;
    }
    let contiguous = crate::ir::types::contiguous_strides(from);
    let mut taken = vec![false; from.len()];
    let mut perm = vec![usize::MAX; to.len()];
    for d in 0..to.len() {
        if to[d] == 1 {
            continue;
        }
        let a = (0..from.len())
            .find(|&a| !taken[a] && from[a] == to[d] && contiguous[a] == strides[d])?;
        taken[a] = true;
        perm[d] = a;
    }
    // Axes of size 1 match the remaining ones of size 1, in order.
    for p in perm.iter_mut().filter(|p| **p == usize::MAX) {
        let a = (0..from.len()).find(|&a| !taken[a] && from[a] == 1)?;
        taken[a] = true;
        *p = a;
    }
    Some(perm)
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
    // The epilogue: every other node, elementwise over one shape, reading the output (and
    // nothing else of the kernel) through a permutation of its axes.
    let mut epilogue: Vec<NodeId> = set
        .iter()
        .copied()
        .filter(|n| !prologue.contains(n) && !softmax.contains(n) && ![scores, out].contains(n))
        .collect();
    epilogue.sort();
    let inner: BTreeSet<NodeId> = epilogue.iter().copied().collect();
    let mut read: Option<(i64, Vec<i64>)> = None;
    for &n in &epilogue {
        let node = graph.node(n);
        if !matches!(
            node.op,
            Op::Unary(..) | Op::Binary(..) | Op::Cast { .. } | Op::Where(..) | Op::Copy(_)
        ) {
            return Err("the softmax kernel computes more than the probabilities".into());
        }
        if node.ty.sizes() != graph.ty(epilogue[0]).sizes() {
            return Err("the epilogue's values have different shapes".into());
        }
        for o in node.op.operands() {
            let r = root(o);
            if r == out {
                let l = &lays[o.index()];
                let this = (l.offset, l.strides.clone());
                if read.as_ref().is_some_and(|r| *r != this) {
                    return Err("the epilogue reads the output through two views".into());
                }
                read = Some(this);
            } else if set.contains(&r) && !inner.contains(&r) {
                return Err("the softmax kernel computes more than the probabilities".into());
            }
        }
    }
    if !epilogue.is_empty() {
        let Some((offset, strides)) = read else {
            return Err("the softmax kernel computes more than the probabilities".into());
        };
        let eshape = graph.ty(epilogue[0]).sizes();
        if permutation(&graph.ty(out).sizes(), &eshape, offset, &strides).is_none() {
            return Err(
                "the epilogue reads the output through a view that is not a permutation of its axes"
                    .into(),
            );
        }
    }
    Ok(Attention {
        scores,
        prologue: prologue.into_iter().collect(),
        logits: x,
        probs,
        out,
        epilogue,
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
    // Then the epilogue of each: the one elementwise kernel reading its output.
    for g in 0..f.members.len() {
        if let Ok(Some(h)) = epilogue_of(f, g) {
            for &n in &f.members[h] {
                f.gid[n.index()] = Some(g);
            }
            let moved = std::mem::take(&mut f.members[h]);
            f.members[g].extend(moved);
            f.shape[h] = None;
            f.shape[g] = None;
            f.rebuild_edges();
        }
    }
}

/// The attention parts of group `g`, when it is attention.
fn attention_of(f: &Fuser<'_>, g: usize) -> Option<Attention> {
    let members = &f.members[g];
    let products = members
        .iter()
        .filter(|&&n| matches!(f.graph.node(n).op, Op::MatMul(..)))
        .count();
    if products != 2 {
        return None;
    }
    let mut nodes = members.clone();
    nodes.sort();
    parts(f.graph, &f.lays, &nodes).ok()
}

/// For an attention group `g` without an epilogue: the kernel its output's one reader is,
/// when the attention kernel can compute it as its epilogue (`Ok(Some)`); `Ok(None)` when
/// nothing but products reads the output (or `g` is no attention); else why not.
fn epilogue_of(f: &Fuser<'_>, g: usize) -> Result<Option<usize>, String> {
    let graph = f.graph;
    let Some(att) = attention_of(f, g) else {
        return Ok(None);
    };
    if !att.epilogue.is_empty() {
        return Ok(None);
    }
    let readers: BTreeSet<usize> = f.consumers[att.out.index()]
        .iter()
        .filter_map(|c| f.gid[c.index()])
        .filter(|&h| h != g)
        .collect();
    let only_products = |h: usize| {
        f.members[h]
            .iter()
            .all(|&n| matches!(graph.node(n).op, Op::MatMul(..)))
    };
    if readers.iter().all(|&h| only_products(h)) {
        return Ok(None);
    }
    let is_output = graph
        .outputs
        .iter()
        .any(|o| f.lays[o.node.index()].root == att.out);
    if is_output {
        return Err("the output is also a program output".into());
    }
    let [h] = readers.iter().copied().collect::<Vec<_>>()[..] else {
        return Err("the output is read by more than one kernel".into());
    };
    let elementwise = f.members[h].iter().all(|&n| {
        matches!(
            graph.node(n).op,
            Op::Unary(..) | Op::Binary(..) | Op::Cast { .. } | Op::Where(..) | Op::Copy(_)
        )
    });
    if !elementwise {
        return Err("that kernel is not elementwise".into());
    }
    let [result] = f.leaving(h, &f.output_roots())[..] else {
        return Err("that kernel stores more than one value".into());
    };
    if f.consumers[result.index()]
        .iter()
        .any(|&c| matches!(graph.node(c).op, Op::Concat { .. }))
    {
        return Err("that kernel writes a part of a concat".into());
    }
    let mut nodes: Vec<NodeId> = f.members[g].iter().chain(&f.members[h]).copied().collect();
    nodes.sort();
    parts(graph, &f.lays, &nodes).map(|_| Some(h))
}

/// The groups of `q @ kᵀ`, the softmax and `p @ v` (`usize::MAX` when not found), and
/// whether they form attention (else why not).
type Candidate = ((usize, usize, usize), Result<(), String>);

/// Each candidate (a matmul whose value some group folds with `max` over the last axis,
/// a group with a value that another product reads):
/// its three groups and whether they form attention (else why not).
fn triples(f: &Fuser<'_>) -> Vec<Candidate> {
    let graph = f.graph;
    let outputs = f.output_roots();
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
            let [p] = f.leaving(g2, &outputs)[..] else {
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

/// The epilogues left out of fused attention kernels: for each attention group whose
/// output a kernel other than a product reads and `epilogue_of` refused, a line naming that
/// kernel's ops and lines and why; the output is then stored and read again.
fn epilogues(f: &Fuser<'_>) -> Vec<String> {
    let graph = f.graph;
    let mut out = Vec::new();
    for g in 0..f.members.len() {
        let Err(why) = epilogue_of(f, g) else {
            continue;
        };
        let Some(att) = attention_of(f, g) else {
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
                "attention at line {}: epilogue not fused: the kernel of {} (line {}) reads its output: {why}; the output is stored",
                graph.origin(att.scores).line,
                ops.join(", "),
                lines.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}
