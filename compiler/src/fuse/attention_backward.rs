//! Attention's backward: recognises, among the fused groups, the kernels autodiff makes for
//! the backward of `softmax(f(q @ kᵀ)) @ v` (`autodiff::rules`: matmul's `g @ bᵀ`/`aᵀ @ g`,
//! softmax's `p ∘ (g − Σ g ∘ p)`, then the prologue's own backward) and makes them one
//! group, which the planner turns into one `schedule::AttentionBackwardKernel`: the
//! probabilities are recomputed a tile at a time from `q`, `k` and per-row statistics, so
//! neither the scores, the probabilities nor their gradients are stored (flash attention's
//! backward), and the forward, whose probabilities no stored reader is left, fuses too
//! (`fuse::attention`).
//!
//! The pattern, on the primitive graph after fusion, from the forward's probabilities `p`
//! (the one stored value of a softmax group between `q @ kᵀ` and `p @ v`, `attention::parts`):
//! `p`'s other readers are `dv = pᵀ @ dO` (optional) and one row group over the scores'
//! shape folding the last axis, which computes `gx = p ∘ (dp − Σ dp ∘ p)` from
//! `dp = dO @ vᵀ` (a product of its own) and then, by elementwise ops only (the prologue's
//! backward: a scale, a mask's `where`), the one value it stores, the gradient of the
//! scores `gs`, read only by `dq = gs @ (kᵀ)ᵀ` and `dk = qᵀ @ gs` (each optional, one at
//! least). Anything else keeps today's kernels (the probabilities stored), and `misses`
//! says why for `tc emit --plan`.

use super::attention::{parts, Attention};
use super::Fuser;
use crate::ir::layout::Layout;
use crate::ir::types::contiguous_strides;
use crate::ir::{BinaryOp, Graph, NodeId, Op, ReduceOp};
use std::collections::BTreeSet;

/// The parts of one attention backward group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionBackward {
    /// The forward attention (its nodes are another group's: recomputed here).
    pub forward: Attention,
    /// `dO`, the left operand of `dp = dO @ vᵀ` (through its view).
    pub d_out: NodeId,
    /// `dO @ vᵀ`.
    pub dprobs: NodeId,
    /// Softmax's backward: `dp ∘ p`, its row sum, `dp − Σ`, and `gx = p ∘ (dp − Σ)`.
    pub softmax: Vec<NodeId>,
    pub grad_logits: NodeId,
    /// The prologue's backward (sorted), from `grad_logits` to `grad_scores`; empty when
    /// they are one value.
    pub tail: Vec<NodeId>,
    pub grad_scores: NodeId,
    /// Forward prologue values (not computed from the scores: a mask compared from
    /// positions) that the prologue's backward reads: recomputed with it (sorted).
    pub masks: Vec<NodeId>,
    /// f32 promotions of the forward's operands (`q`, `k`, `v` in f16/bf16) that only this
    /// group's products read: the kernel reads the operands themselves.
    pub casts: Vec<NodeId>,
    /// `gs @ (kᵀ)ᵀ`, `qᵀ @ gs`, `pᵀ @ dO`.
    pub dq: Option<NodeId>,
    pub dk: Option<NodeId>,
    pub dv: Option<NodeId>,
}

impl AttentionBackward {
    /// The group's nodes (sorted).
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = [self.dprobs]
            .into_iter()
            .chain(self.softmax.iter().copied())
            .chain(self.tail.iter().copied())
            .chain(self.dq)
            .chain(self.dk)
            .chain(self.dv)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The forward nodes this group recomputes instead of reading: the scores, the
    /// prologue, the softmax and the probabilities.
    pub fn recomputed(&self, graph: &Graph, lays: &[Layout]) -> BTreeSet<NodeId> {
        let f = &self.forward;
        let mut set: BTreeSet<NodeId> = f.prologue.iter().copied().collect();
        set.extend([f.scores, f.logits, f.probs]);
        set.extend(self.casts.iter().copied());
        // The softmax's nodes between the logits and the probabilities.
        let mut stack = vec![f.probs];
        while let Some(n) = stack.pop() {
            if n == f.logits {
                continue;
            }
            for o in graph.node(n).op.operands() {
                let r = lays[o.index()].root;
                if set.insert(r) {
                    stack.push(r);
                }
            }
        }
        set
    }
}

/// The strides of `lay` with its last two axes swapped (a transposed view of it).
fn swapped(lay: &Layout) -> Vec<i64> {
    let mut s = lay.strides.clone();
    let r = s.len();
    if r >= 2 {
        s.swap(r - 2, r - 1);
    }
    s
}

/// Whether operand `o` reads `lay` transposed (same storage, offset, last two strides
/// swapped).
fn reads_transposed(lays: &[Layout], o: NodeId, lay: &Layout) -> bool {
    let l = &lays[o.index()];
    l.root == lay.root && l.offset == lay.offset && l.strides == swapped(lay)
}

/// Whether operand `o` reads the forward operand `fwd` transposed: directly (`Some(None)`),
/// or through its f32 promotion (`Some(Some(cast))`, autodiff's `f32(…)` of an f16/bf16
/// operand).
fn reads_operand_transposed(
    graph: &Graph,
    lays: &[Layout],
    o: NodeId,
    fwd: NodeId,
) -> Option<Option<NodeId>> {
    if reads_transposed(lays, o, &lays[fwd.index()]) {
        return Some(None);
    }
    let r = lays[o.index()].root;
    let Op::Cast {
        arg,
        implicit: true,
    } = graph.node(r).op
    else {
        return None;
    };
    let whole = Layout::contiguous(r, &graph.ty(r).sizes());
    // `f32(fwd)` read transposed, or `f32(fwdᵀ)` read whole (the promotion of a view).
    let of_fwd = arg == fwd || lays[arg.index()] == lays[fwd.index()];
    let fwd_lay = &lays[fwd.index()];
    let of_transposed = lays[arg.index()].root == fwd_lay.root
        && lays[arg.index()].offset == fwd_lay.offset
        && lays[arg.index()].strides == swapped(fwd_lay);
    if (of_fwd && reads_transposed(lays, o, &whole)) || (of_transposed && lays[o.index()] == whole)
    {
        Some(Some(r))
    } else {
        None
    }
}

/// Whether operand `o` reads the value `n` as stored (contiguous, no offset).
fn reads_whole(graph: &Graph, lays: &[Layout], o: NodeId, n: NodeId) -> bool {
    let l = &lays[o.index()];
    l.root == n && l.offset == 0 && l.strides == contiguous_strides(&graph.ty(n).sizes())
}

/// The members of group `g` (sorted).
fn sorted(f: &Fuser<'_>, g: usize) -> Vec<NodeId> {
    let mut v = f.members[g].clone();
    v.sort();
    v
}

/// One candidate: the backward's parts and the groups it merges, or why it is not one.
type Candidate = (NodeId, Result<(AttentionBackward, Vec<usize>), String>);

/// Each softmax group value read by a product as its left operand and by something else
/// too: whether it is an attention forward whose other readers are its backward.
fn candidates(f: &Fuser<'_>) -> Vec<Candidate> {
    let graph = f.graph;
    let lays = &f.lays;
    let outputs = f.output_roots();
    let mut out = Vec::new();
    for (g2, members) in f.members.iter().enumerate() {
        if members.is_empty() || members.iter().any(|&n| is_mm(graph, n)) {
            continue;
        }
        for &p in members {
            let readers: BTreeSet<NodeId> = f.consumers[p.index()]
                .iter()
                .copied()
                .filter(|c| f.gid[c.index()] != Some(g2))
                .collect();
            let Some(mm3) = readers.iter().copied().find(
                |&c| matches!(graph.node(c).op, Op::MatMul(a, _) if reads_whole(graph, lays, a, p)),
            ) else {
                continue;
            };
            if readers.len() < 2 {
                continue; // the forward alone (`fuse::attention`)
            }
            let Some(g3) = f.gid[mm3.index()] else {
                continue;
            };
            // The forward: a product `q @ kᵀ` read only by this softmax group.
            let forward = f.pred[g2].iter().copied().find_map(|g1| {
                let [mm1] = f.members[g1][..] else {
                    return None;
                };
                if !is_mm(graph, mm1) || f.members[g3].len() != 1 {
                    return None;
                }
                let mut nodes: Vec<NodeId> = [g1, g2, g3]
                    .iter()
                    .flat_map(|&g| f.members[g].iter().copied())
                    .collect();
                nodes.sort();
                let att = parts(graph, lays, &nodes).ok()?;
                (att.probs == p && att.out == mm3).then_some((g1, att))
            });
            let Some((g1, att)) = forward else {
                continue;
            };
            let why = backward_of(f, &outputs, (g1, g2, g3), att, &readers);
            out.push((p, why));
        }
    }
    out
}

fn is_mm(graph: &Graph, n: NodeId) -> bool {
    matches!(graph.node(n).op, Op::MatMul(..))
}

/// The backward of the forward attention `att` (groups `g1`, `g2`, `g3`) whose
/// probabilities `readers` (outside `g2`) read, and the groups it merges; else why not.
fn backward_of(
    f: &Fuser<'_>,
    outputs: &BTreeSet<NodeId>,
    (g1, g2, _g3): (usize, usize, usize),
    att: Attention,
    readers: &BTreeSet<NodeId>,
) -> Result<(AttentionBackward, Vec<usize>), String> {
    let graph = f.graph;
    let lays = &f.lays;
    let root = |n: NodeId| lays[n.index()].root;
    let p = att.probs;
    let (Op::MatMul(qa, kb), Op::MatMul(_, vb)) =
        (&graph.node(att.scores).op, &graph.node(att.out).op)
    else {
        return Err("the forward has no products".into());
    };
    let (qa, kb, vb) = (*qa, *kb, *vb);
    if outputs.contains(&att.scores)
        || f.consumers[att.scores.index()]
            .iter()
            .any(|c| f.gid[c.index()] != Some(g2))
    {
        return Err("the scores are read by another kernel or are an output".into());
    }
    let _ = g1;
    if outputs.contains(&p) {
        return Err("the probabilities are an output".into());
    }
    let single = |n: NodeId| -> Result<usize, String> {
        let g = f.gid[n.index()].ok_or("a backward product is in no kernel")?;
        if f.members[g] != [n] {
            return Err("a backward product is not a kernel of its own".into());
        }
        Ok(g)
    };
    // `dv = pᵀ @ dO` and the softmax backward's group.
    // An f16/bf16 `p` is read through its f32 promotion, in the softmax backward's group.
    // An f16/bf16 `p` is read through its f32 promotions (autodiff makes one per use): of
    // `p` in the softmax backward's group, and of `pᵀ` (`f32(transpose(p))`) for `dv`.
    let mut readers = readers.clone();
    let mut p32: Vec<NodeId> = Vec::new();
    let mut pt32 = None;
    let p_whole = Layout::contiguous(p, &graph.ty(p).sizes());
    for &c in &readers.clone() {
        let Op::Cast {
            arg,
            implicit: true,
        } = graph.node(c).op
        else {
            continue;
        };
        if reads_whole(graph, lays, arg, p) {
            p32.push(c);
        } else if reads_transposed(lays, arg, &p_whole) {
            if pt32.replace(c).is_some() {
                return Err("the probabilities are promoted to f32 transposed twice".into());
            }
        } else {
            continue;
        }
        readers.remove(&c);
        readers.extend(f.consumers[c.index()].iter().copied());
    }
    // `p` itself or one of its promotions.
    let is_pv = |n: NodeId| n == p || p32.contains(&n) || pt32 == Some(n);
    let is_p = |o: NodeId| {
        reads_whole(graph, lays, o, p) || p32.iter().any(|&c| reads_whole(graph, lays, o, c))
    };
    let is_pt = |a: NodeId| {
        reads_transposed(lays, a, &p_whole)
            || p32
                .iter()
                .any(|&c| reads_transposed(lays, a, &Layout::contiguous(c, &graph.ty(c).sizes())))
            || pt32.is_some_and(|t| reads_whole(graph, lays, a, t))
    };
    let mut dv = None;
    let mut g4 = None;
    for &c in &readers {
        if c == att.out {
            continue;
        }
        match graph.node(c).op {
            Op::MatMul(a, b) if is_pt(a) && !is_pv(root(b)) => {
                if dv.replace((c, b)).is_some() {
                    return Err("the probabilities are read by more than one `pᵀ @ …`".into());
                }
            }
            Op::MatMul(..) => {
                return Err("the probabilities are read by another product".into());
            }
            _ => {
                let g = f.gid[c.index()].ok_or("a reader of the probabilities is in no kernel")?;
                if g4.replace(g).is_some_and(|h| h != g) {
                    return Err("the probabilities are read by more than one other kernel".into());
                }
            }
        }
    }
    let g4 = g4.ok_or("no softmax backward reads the probabilities")?;
    let nodes4 = sorted(f, g4);
    if p32.iter().any(|c| f.gid[c.index()] != Some(g4)) {
        return Err("the probabilities' promotion is a kernel of its own".into());
    }
    // The promotion of `pᵀ`: in the softmax backward's kernel or a kernel of its own, read
    // by `dv` alone (the group computes it from the recomputed `p`).
    let mut g_pt = None;
    if let Some(c) = pt32 {
        if f.consumers[c.index()]
            .iter()
            .any(|&x| Some(x) != dv.map(|d: (NodeId, NodeId)| d.0))
            || outputs.contains(&c)
        {
            return Err("the promotion of the probabilities is read by more than `dv`".into());
        }
        let g = f.gid[c.index()].ok_or("the probabilities' promotion is in no kernel")?;
        if g != g4 {
            if f.members[g] != [c] {
                return Err("the probabilities' promotion shares a kernel".into());
            }
            g_pt = Some(g);
        }
    }
    // The softmax group stores `p`, and values the prologue's backward reads that do not
    // depend on the scores (a mask compared from positions): recomputed with it.
    let mut masks: BTreeSet<NodeId> = BTreeSet::new();
    for &n in &f.members[g2] {
        let outside: Vec<NodeId> = f.consumers[n.index()]
            .iter()
            .copied()
            .filter(|c| f.gid[c.index()] != Some(g2))
            .collect();
        if n == p || (outside.is_empty() && !outputs.contains(&n)) {
            continue;
        }
        if outputs.contains(&n) {
            return Err("a value of the softmax kernel is an output".into());
        }
        if outside.iter().any(|c| f.gid[c.index()] != Some(g4)) {
            return Err("the softmax kernel stores more than the probabilities".into());
        }
        let mut stack = vec![n];
        while let Some(x) = stack.pop() {
            if !masks.insert(x) {
                continue;
            }
            for o in graph.node(x).op.operands() {
                let r = root(o);
                if r == att.scores {
                    return Err(
                        "the prologue's backward reads a value computed from the scores".into(),
                    );
                }
                if f.gid[r.index()] == Some(g2) {
                    stack.push(r);
                }
            }
        }
    }
    let shape = graph.ty(att.scores).sizes();
    let last = shape.len() - 1;
    // Softmax's backward in g4: m1 = dp ∘ p, r = Σ m1, s1 = dp − r, gx = p ∘ s1.
    let not_softmax =
        || "the kernel reading the probabilities is not softmax's backward".to_string();
    let mut dprobs = None;
    let mut m1 = None;
    let mut gx = None;
    for &n in &nodes4 {
        if let Op::Binary(BinaryOp::Mul, a, b) = graph.node(n).op {
            let other = if is_p(a) {
                b
            } else if is_p(b) {
                a
            } else {
                continue;
            };
            let r = root(other);
            if is_mm(graph, r) && reads_whole(graph, lays, other, r) {
                if m1.replace(n).is_some() {
                    return Err(not_softmax());
                }
                dprobs = Some(r);
            } else if gx.replace((n, other)).is_some() {
                return Err(not_softmax());
            }
        }
    }
    let (Some(m1), Some(dprobs), Some((gx, s1o))) = (m1, dprobs, gx) else {
        return Err(not_softmax());
    };
    let s1 = s1o;
    if !nodes4.contains(&s1) {
        return Err(not_softmax());
    }
    let Op::Binary(BinaryOp::Sub, dp2, rb) = graph.node(s1).op else {
        return Err(not_softmax());
    };
    if !reads_whole(graph, lays, dp2, dprobs) {
        return Err(not_softmax());
    }
    let r = root(rb);
    match &graph.node(r).op {
        Op::Reduce {
            op: ReduceOp::Sum,
            arg,
            axes,
            ..
        } if *arg == m1 && axes[..] == [last] && nodes4.contains(&r) => {}
        _ => return Err(not_softmax()),
    }
    // Reads of p in g4: m1 and gx only (and the promotion).
    for &n in &nodes4 {
        if n != m1
            && n != gx
            && !p32.contains(&n)
            && Some(n) != pt32
            && graph.node(n).op.operands().iter().any(|&o| is_pv(root(o)))
        {
            return Err("the softmax backward reads the probabilities elsewhere".into());
        }
    }
    // `dp = dO @ vᵀ`.
    let Op::MatMul(d_out, vt) = graph.node(dprobs).op else {
        return Err(not_softmax());
    };
    let mut casts = Vec::new();
    match reads_operand_transposed(graph, lays, vt, vb) {
        Some(c) => casts.extend(c),
        None => return Err("`dO @ vᵀ` does not read the forward's `v`".into()),
    }
    if let Some((_, dob)) = dv {
        if lays[dob.index()] != lays[d_out.index()] {
            return Err("`pᵀ @ dO` and `dO @ vᵀ` read different gradients".into());
        }
    }
    let g_dp = single(dprobs)?;
    let mut softmax = vec![m1, r, s1, gx];
    softmax.extend(&p32);
    softmax.extend(pt32);
    // The prologue's backward: the rest of g4, elementwise, reading none of p, dp, m1, r, s1.
    let tail: Vec<NodeId> = nodes4
        .iter()
        .copied()
        .filter(|n| !softmax.contains(n))
        .collect();
    for &n in &tail {
        let node = graph.node(n);
        if !matches!(
            node.op,
            Op::Unary(..) | Op::Binary(..) | Op::Cast { .. } | Op::Where(..)
        ) {
            return Err(format!(
                "the prologue's backward computes {}, not elementwise",
                node.op.name()
            ));
        }
        if node
            .op
            .operands()
            .iter()
            .any(|&o| is_pv(root(o)) || [dprobs, m1, r, s1].contains(&root(o)))
        {
            return Err("the prologue's backward reads the softmax's values".into());
        }
        let sizes = node.ty.sizes();
        if sizes.len() > shape.len()
            || sizes
                .iter()
                .rev()
                .zip(shape.iter().rev())
                .any(|(&a, &b)| a != b && a != 1)
        {
            return Err(
                "a value of the prologue's backward does not broadcast to the scores' shape".into(),
            );
        }
        if node
            .op
            .operands()
            .iter()
            .any(|&o| nodes4.contains(&root(o)) && o != root(o))
        {
            return Err("the prologue's backward reads a value through a view".into());
        }
    }
    let escaping4: Vec<NodeId> = nodes4
        .iter()
        .copied()
        .filter(|&n| {
            outputs.contains(&n)
                || f.consumers[n.index()]
                    .iter()
                    .any(|c| f.gid[c.index()] != Some(g4) && Some(*c) != dv.map(|x| x.0))
        })
        .collect();
    let [gs] = escaping4[..] else {
        return Err("the softmax backward's kernel stores more than the scores' gradient".into());
    };
    if outputs.contains(&gs) || graph.ty(gs).sizes() != shape || graph.dtype(gs).is_integral() {
        return Err("the scores' gradient is an output or not of the scores' shape".into());
    }
    if tail.is_empty() && gs != gx {
        return Err(not_softmax());
    }
    // `dq = gs @ (kᵀ)ᵀ`, `dk = qᵀ @ gs`.
    let mut dq = None;
    let mut dk = None;
    let users: BTreeSet<NodeId> = f.consumers[gs.index()]
        .iter()
        .copied()
        .filter(|c| f.gid[c.index()] != Some(g4))
        .collect();
    for c in users {
        match graph.node(c).op {
            Op::MatMul(a, b) if reads_whole(graph, lays, a, gs) && dq.is_none() => {
                match reads_operand_transposed(graph, lays, b, kb) {
                    Some(cast) => casts.extend(cast),
                    None => return Err("`dq` does not read the forward's `k`".into()),
                }
                dq = Some(c)
            }
            Op::MatMul(a, b) if reads_whole(graph, lays, b, gs) && dk.is_none() => {
                match reads_operand_transposed(graph, lays, a, qa) {
                    Some(cast) => casts.extend(cast),
                    None => return Err("`dk` does not read the forward's `q`".into()),
                }
                dk = Some(c)
            }
            _ => {
                return Err(
                    "the scores' gradient is read by something other than `dq` and `dk`".into(),
                )
            }
        }
    }
    if dq.is_none() && dk.is_none() {
        return Err("no product reads the scores' gradient".into());
    }
    let mut groups = vec![g4, g_dp];
    groups.extend(g_pt);
    for n in [dq, dk, dv.map(|x| x.0)].into_iter().flatten() {
        groups.push(single(n)?);
    }
    Ok((
        AttentionBackward {
            forward: att,
            d_out,
            dprobs,
            softmax,
            grad_logits: gx,
            tail,
            grad_scores: gs,
            masks: masks.into_iter().collect(),
            casts: {
                casts.sort();
                casts.dedup();
                casts
            },
            dq,
            dk,
            dv: dv.map(|x| x.0),
        },
        groups,
    ))
}

/// Merges each recognised attention backward into one group (the softmax backward's
/// group keeps its index) and records it in `f.backward`; the readers of the forward's
/// probabilities in it stop counting as readers (the group recomputes them), so the forward
/// fuses (`attention::merge`, run after). Returns one line per candidate left unfused.
pub(super) fn merge(f: &mut Fuser<'_>) -> Vec<String> {
    let mut misses = Vec::new();
    for (p, why) in candidates(f) {
        let line = f.graph.origin(p).line;
        let (ab, groups) = match why {
            Ok(x) => x,
            Err(w) => {
                misses.push(format!(
                    "attention at line {line}: backward not fused: {w}; the probabilities are stored for it"
                ));
                continue;
            }
        };
        if groups.iter().any(|&g| f.members[g].is_empty()) {
            continue;
        }
        let keep = groups[0];
        let mut cyclic = false;
        for &g in &groups[1..] {
            if f.creates_cycle(keep, g) {
                cyclic = true;
                break;
            }
        }
        if cyclic {
            misses.push(format!(
                "attention at line {line}: backward not fused: its kernels are ordered apart by another kernel; the probabilities are stored for it"
            ));
            continue;
        }
        for &g in &groups[1..] {
            for &n in &f.members[g] {
                f.gid[n.index()] = Some(keep);
            }
            let moved = std::mem::take(&mut f.members[g]);
            f.members[keep].extend(moved);
            f.shape[g] = None;
        }
        f.shape[keep] = None;
        // The group recomputes the probabilities: it reads the forward's operands instead.
        let nodes = ab.nodes();
        for r in ab.recomputed(f.graph, &f.lays) {
            f.consumers[r.index()].retain(|c| !nodes.contains(c));
        }
        let reader = ab.dprobs;
        let fw = &ab.forward;
        let (Op::MatMul(qa, kb), Op::MatMul(_, vb)) =
            (&f.graph.node(fw.scores).op, &f.graph.node(fw.out).op)
        else {
            continue;
        };
        let mut extra: Vec<NodeId> = vec![*qa, *kb, *vb];
        for &n in &fw.prologue {
            extra.extend(f.graph.node(n).op.operands());
        }
        let recomputed = ab.recomputed(f.graph, &f.lays);
        for &c in &ab.casts {
            extra.extend(f.graph.node(c).op.operands());
        }
        for o in extra {
            let r = f.lays[o.index()].root;
            if f.gid[r.index()].is_some()
                && f.gid[r.index()] != Some(keep)
                && !recomputed.contains(&r)
            {
                f.consumers[r.index()].push(reader);
            }
        }
        f.backward.push(ab);
        f.rebuild_edges();
    }
    f.rebuild_edges();
    misses
}
