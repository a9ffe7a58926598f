//! The graph verifier: checks the invariants every pass must keep, in every test.
//!
//! Invariants:
//! 1. operands precede their users (handles point backwards); outputs and leaves name
//!    nodes that exist, and `Input { index }` / `Param { index }` match their `Leaf`;
//! 2. `Binary` operands have exactly the result's sizes and dtype (broadcasts and promotions
//!    are explicit `Expand` views and `Cast` nodes); `MatMul` operands have the result's
//!    dtype, equal rank ≥ 2, equal batch sizes and equal inner sizes;
//! 3. every node's type is what its op computes from its operands' types: elementwise and
//!    row ops keep the type, reductions drop (or keep as 1) sorted, distinct, in-range
//!    axes, casts keep sizes, views are consistent (`Permute` is a permutation, `Reshape`
//!    keeps the element count and has strides, `Expand` follows NumPy `broadcast_to`);
//! 4. scalars are rank 0; every dim and every size is positive, and element counts fit u64.

use super::graph::{Graph, NodeId, Op, ViewOp};
use super::layout::{apply_view, layouts};

/// `Ok` when `graph` keeps every invariant above, else the first violation.
pub fn verify(graph: &Graph) -> Result<(), String> {
    let lay = layouts(graph);
    for (name, v) in &graph.dims {
        if *v == 0 {
            return Err(format!("dim {name} is 0"));
        }
    }
    for (kind, leaves) in [("input", &graph.inputs), ("param", &graph.params)] {
        for (i, leaf) in leaves.iter().enumerate() {
            if leaf.node.index() >= graph.len() {
                return Err(format!(
                    "{kind} {} names missing node {}",
                    leaf.name, leaf.node
                ));
            }
            let ok = match graph.node(leaf.node).op {
                Op::Input { index } => kind == "input" && index == i,
                Op::Param { index } => kind == "param" && index == i,
                _ => false,
            };
            if !ok || graph.ty(leaf.node) != &leaf.ty {
                return Err(format!(
                    "{kind} {} does not match node {}",
                    leaf.name, leaf.node
                ));
            }
        }
    }
    for o in &graph.outputs {
        if o.node.index() >= graph.len() {
            return Err(format!("output {} names missing node {}", o.name, o.node));
        }
    }
    for id in graph.ids() {
        node(graph, id, &lay)
            .map_err(|e| format!("{id} = {}: {e}", super::text::op_text(&graph.node(id).op)))?;
    }
    Ok(())
}

fn node(graph: &Graph, id: NodeId, lay: &[super::Layout]) -> Result<(), String> {
    let n = graph.node(id);
    let ty = &n.ty;
    let sizes = ty.sizes();
    for o in n.op.operands() {
        if o >= id {
            return Err(format!("operand {o} does not precede its user"));
        }
    }
    if sizes.contains(&0) {
        return Err(format!("size 0 in {ty}"));
    }
    if ty.numel().is_none() {
        return Err(format!("{ty} overflows u64"));
    }
    let same = |a: NodeId, what: &str| -> Result<(), String> {
        let t = graph.ty(a);
        if t.sizes() != sizes || t.dtype != ty.dtype {
            return Err(format!("{what} {a} is {t}, result is {ty}"));
        }
        Ok(())
    };
    match &n.op {
        Op::Input { .. } | Op::Param { .. } => Ok(()),
        Op::Scalar(_) => {
            if ty.rank() != 0 {
                return Err(format!("scalar of rank {}", ty.rank()));
            }
            Ok(())
        }
        Op::Unary(_, a) | Op::Copy(a) => same(*a, "operand"),
        Op::Binary(_, a, b) => {
            same(*a, "left operand")?;
            same(*b, "right operand")
        }
        Op::Softmax { arg, axis, .. }
        | Op::LayerNorm { arg, axis, .. }
        | Op::RmsNorm { arg, axis, .. } => {
            same(*arg, "operand")?;
            if *axis >= ty.rank() {
                return Err(format!("axis {axis} out of range for {ty}"));
            }
            Ok(())
        }
        Op::Reduce {
            arg, axes, keepdim, ..
        } => {
            let t = graph.ty(*arg);
            if t.dtype != ty.dtype {
                return Err(format!("operand is {t}, result is {ty}"));
            }
            if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&a| a >= t.rank()) {
                return Err(format!(
                    "axes {axes:?} not sorted, distinct and within rank {}",
                    t.rank()
                ));
            }
            let want: Vec<u64> = t
                .sizes()
                .into_iter()
                .enumerate()
                .filter_map(|(i, s)| match (axes.contains(&i), keepdim) {
                    (false, _) => Some(s),
                    (true, true) => Some(1),
                    (true, false) => None,
                })
                .collect();
            if want != sizes {
                return Err(format!(
                    "reducing {t} over {axes:?} gives {want:?}, node says {ty}"
                ));
            }
            Ok(())
        }
        Op::MatMul(a, b) => {
            let (ta, tb) = (graph.ty(*a), graph.ty(*b));
            let r = ty.rank();
            if ta.rank() < 2 || ta.rank() != tb.rank() || r != ta.rank() {
                return Err(format!("ranks of {ta} @ {tb} -> {ty}"));
            }
            let (sa, sb) = (ta.sizes(), tb.sizes());
            if ta.dtype != ty.dtype || tb.dtype != ty.dtype {
                return Err(format!("dtypes of {ta} @ {tb} -> {ty}"));
            }
            if sa[..r - 2] != sb[..r - 2] || sa[..r - 2] != sizes[..r - 2] {
                return Err(format!("batch dims of {ta} @ {tb} -> {ty}"));
            }
            if sa[r - 1] != sb[r - 2] || sizes[r - 2] != sa[r - 2] || sizes[r - 1] != sb[r - 1] {
                return Err(format!("matrix dims of {ta} @ {tb} -> {ty}"));
            }
            Ok(())
        }
        Op::Cast { arg, .. } => {
            if graph.ty(*arg).sizes() != sizes {
                return Err(format!("cast changes the shape of {}", graph.ty(*arg)));
            }
            Ok(())
        }
        Op::View(view, arg) => {
            let t = graph.ty(*arg);
            if t.dtype != ty.dtype {
                return Err(format!("view changes dtype of {t}"));
            }
            let ins = t.sizes();
            match view {
                ViewOp::Transpose => {
                    let mut want = ins.clone();
                    let r = want.len();
                    if r < 2 {
                        return Err(format!("transpose of rank {r}"));
                    }
                    want.swap(r - 1, r - 2);
                    if want != sizes {
                        return Err(format!("transpose of {t} is not {ty}"));
                    }
                }
                ViewOp::Permute(perm) => {
                    let mut seen = vec![false; ins.len()];
                    for &p in perm {
                        if p >= ins.len() || seen[p] {
                            return Err(format!(
                                "{perm:?} is not a permutation of rank {}",
                                ins.len()
                            ));
                        }
                        seen[p] = true;
                    }
                    let want: Vec<u64> = perm.iter().map(|&p| ins[p]).collect();
                    if perm.len() != ins.len() || want != sizes {
                        return Err(format!("permute {perm:?} of {t} is not {ty}"));
                    }
                }
                ViewOp::Reshape => {
                    if t.numel() != ty.numel() {
                        return Err(format!("reshape of {t} to {ty} changes the element count"));
                    }
                    if apply_view(view, &lay[arg.index()], &ins, &sizes).is_none() {
                        return Err(format!(
                            "reshape of {t} to {ty} has no strides (needs a copy)"
                        ));
                    }
                }
                ViewOp::Expand { .. } => {
                    if sizes.len() < ins.len() {
                        return Err(format!("expand of {t} to lower rank {ty}"));
                    }
                    let lead = sizes.len() - ins.len();
                    if ins
                        .iter()
                        .zip(&sizes[lead..])
                        .any(|(&i, &o)| i != o && i != 1)
                    {
                        return Err(format!("{t} does not broadcast to {ty}"));
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BinaryOp, DType, Dim, Node, Origin, TensorType};

    fn origin() -> Origin {
        Origin {
            span: 0..0,
            line: 1,
            group: None,
        }
    }

    #[test]
    fn catches_an_implicit_broadcast() {
        let mut g = Graph::new();
        let a = g.push(
            Node {
                op: Op::Scalar(1.0),
                ty: TensorType::scalar(DType::F32),
                name: None,
            },
            origin(),
        );
        let b = g.push(
            Node {
                op: Op::Scalar(2.0),
                ty: TensorType::new(DType::F32, vec![Dim::new(4)]),
                name: None,
            },
            origin(),
        );
        assert!(verify(&g).is_err(), "a rank-1 scalar is wrong");
        let mut g = Graph::new();
        let a2 = g.push(
            Node {
                op: Op::Scalar(1.0),
                ty: TensorType::scalar(DType::F32),
                name: None,
            },
            origin(),
        );
        let _ = (a, b);
        g.push(
            Node {
                op: Op::Binary(BinaryOp::Add, a2, a2),
                ty: TensorType::new(DType::F32, vec![Dim::new(4)]),
                name: None,
            },
            origin(),
        );
        let e = verify(&g).expect_err("operands are not broadcast");
        assert!(e.contains("left operand"), "{e}");
    }
}
