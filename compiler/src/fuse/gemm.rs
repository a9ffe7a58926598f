//! GEMM epilogues: a residual add `x + a @ b` (or `a @ b + x`) absorbed by the product's
//! kernel, which accumulates into a buffer holding `x` (BLAS's `beta = 1`), so that the add's
//! kernel, its read of the product and the product's buffer disappear.
//!
//! The pattern, after fusion and attention: a matmul alone in its group, read only by one add
//! (no output), whose other operand `x` has the add's shape and dtype, read contiguously from
//! a buffer in memory (an input, a param, or a value another kernel stores). The GEMM writes
//! in place of `x` when `x` is an arena value that no kernel but those the product depends on
//! reads (so it dies there: `memory::inplace`), else it copies `x` into its output first.
//!
//! Absorbing pays or not by the passes over the product's `m × n` elements it saves: the
//! product's store, the add's loads of the product and of `x` (when no other node of its
//! kernel loads `x`) and its store (when the sum leaves the kernel), against the GEMM's read
//! of its output, the copy of `x` (two passes, unless in place) and a load of the sum where
//! the add's kernel still uses it. An add is absorbed when that saves a pass, or saves none
//! but removes its kernel whole. Broadcast operands (a bias row) are never absorbed: filling
//! the output with the broadcast first costs the pass the add saves.

use super::{analyze, Fuser};
use crate::ir::layout::Layout;
use crate::ir::types::contiguous_strides;
use crate::ir::{BinaryOp, Graph, NodeId, Op};
use std::collections::HashSet;

/// `(product, x)` when `add` is `product + x` or `x + product` with `x` of the add's type
/// and not the product itself (the shape of the pattern only; `absorb` decides the rest).
pub fn accumulated(graph: &Graph, add: NodeId) -> Option<(NodeId, NodeId)> {
    let Op::Binary(BinaryOp::Add, p, q) = graph.node(add).op else {
        return None;
    };
    let is_mm = |n: NodeId| matches!(graph.node(n).op, Op::MatMul(..));
    let (mm, x) = match (is_mm(p), is_mm(q)) {
        (true, false) => (p, q),
        (false, true) => (q, p),
        // Both products: absorb the left one, the other is `x`.
        (true, true) if p != q => (p, q),
        _ => return None,
    };
    (graph.ty(x) == graph.ty(add) && graph.ty(mm) == graph.ty(add)).then_some((mm, x))
}

/// Whether `lay` reads all of its root, contiguously, in the root's own shape.
fn whole(graph: &Graph, lay: &Layout, shape: &[u64]) -> bool {
    let root = graph.ty(lay.root).sizes();
    lay.offset == 0 && root == shape && lay.strides == contiguous_strides(shape)
}

/// Whether a path of group edges leads from `from` to `to` (`from == to` counts).
fn reaches(f: &Fuser<'_>, from: usize, to: usize) -> bool {
    let mut stack = vec![from];
    let mut seen = HashSet::from([from]);
    while let Some(g) = stack.pop() {
        if g == to {
            return true;
        }
        for &h in &f.succ[g] {
            if seen.insert(h) {
                stack.push(h);
            }
        }
    }
    false
}

/// Moves each residual add that pays (see the module doc) into its product's group.
pub(super) fn absorb(f: &mut Fuser<'_>) {
    let graph = f.graph;
    let outputs = f.output_roots();
    for add in graph.ids() {
        let Some((mm, x)) = accumulated(graph, add) else {
            continue;
        };
        let (Some(gm), Some(ga)) = (f.gid[mm.index()], f.gid[add.index()]) else {
            continue;
        };
        if gm == ga || f.members[gm] != [mm] || outputs.contains(&mm) {
            continue;
        }
        if f.members[ga]
            .iter()
            .any(|&n| matches!(graph.node(n).op, Op::MatMul(..) | Op::Concat { .. }))
        {
            continue;
        }
        // The product feeds only this add, directly.
        if f.consumers[mm.index()].iter().any(|&c| c != add) || f.lays[mm.index()].root != mm {
            continue;
        }
        let shape = graph.ty(add).sizes();
        let lay = &f.lays[x.index()];
        let xr = lay.root;
        if !whole(graph, lay, &shape) {
            continue;
        }
        // `x` must be in memory: a leaf buffer or a value a kernel other than the add's stores.
        let xg = f.gid[xr.index()];
        match xg {
            None if matches!(graph.node(xr).op, Op::Input { .. } | Op::Param { .. }) => {}
            None => continue,
            Some(h) if h == ga || h == gm => continue,
            Some(h) => {
                if matches!(graph.node(xr).op, Op::Concat { .. })
                    || graph.node(xr).op.is_synthesized()
                    || reaches(f, ga, h)
                {
                    continue;
                }
            }
        }
        // In place when `x` is an arena value read, besides the add, only by kernels that
        // run before the product (its ancestors).
        let others: Vec<NodeId> = f.consumers[xr.index()]
            .iter()
            .copied()
            .filter(|&c| c != add)
            .collect();
        let in_place = xg.is_some()
            && !outputs.contains(&xr)
            && others.iter().all(|c| match f.gid[c.index()] {
                Some(h) => h != ga && h != gm && reaches(f, h, gm),
                None => false,
            });
        let x_elsewhere = others.iter().any(|c| f.gid[c.index()] == Some(ga));
        let readers: Vec<Option<usize>> = f.consumers[add.index()]
            .iter()
            .map(|c| f.gid[c.index()])
            .collect();
        let used_inside = readers.contains(&Some(ga));
        let stored = outputs.contains(&add) || readers.iter().any(|&g| g != Some(ga));
        let saved = i64::from(!x_elsewhere) + i64::from(stored);
        let cost = i64::from(used_inside) + if in_place { 0 } else { 2 };
        let alone = f.members[ga].len() == 1;
        if !(saved > cost || (saved == cost && alone)) {
            continue;
        }
        // What stays of the add's kernel must still be one kernel.
        let mut rest: Vec<NodeId> = f.members[ga]
            .iter()
            .copied()
            .filter(|&n| n != add)
            .collect();
        rest.sort();
        let levels = if rest.is_empty() {
            Some(Vec::new())
        } else {
            analyze(graph, &f.lays, &rest).map(|(_, _, l)| l)
        };
        let Some(levels) = levels else { continue };
        for (&n, l) in rest.iter().zip(levels) {
            f.level[n.index()] = l;
        }
        f.members[ga] = rest;
        f.members[gm].push(add);
        f.gid[add.index()] = Some(gm);
        f.level[add.index()] = crate::schedule::Level::Element;
        f.shape[ga] = None;
        f.shape[gm] = None;
        f.rebuild_edges();
    }
}
