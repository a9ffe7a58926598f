//! The graph verifier: checks the graph invariants of `docs/architecture.md` that every pass
//! must keep, in every test, and names the one that breaks (`invariant::Violation`):
//! - 1 (operands come first): operands precede their users; outputs and leaves name nodes
//!   that exist, and `Input { index }` / `Param { index }` match their `Leaf`;
//! - 2 (explicit broadcasts): `Binary` operands have exactly the result's sizes and dtype;
//!   `MatMul` operands have the result's dtype, equal rank ≥ 2 and equal batch sizes;
//! - 3 (views never copy): a `Reshape` view has strides;
//! - 11 (types follow ops): elementwise and row ops keep the type, reductions drop (or keep
//!   as 1) sorted, distinct, in-range axes, matmul's matrix dims match, casts keep sizes,
//!   views are consistent (`Permute` is a permutation, `Reshape` keeps the element count,
//!   `Expand` follows NumPy `broadcast_to`);
//! - 12 (sizes are positive and countable): scalars are rank 0; every dim and every size is
//!   positive, and element counts fit u64.

use super::graph::{BinaryOp, Graph, NodeId, Op, ViewOp};
use super::layout::{apply_view, layouts};
use super::types::DType;
use crate::invariant::{Invariant, Violation};
use Invariant::{ExplicitBroadcast, OperandsFirst, SizesPositive, TypesFollowOps, ViewsNeverCopy};

fn bad(invariant: Invariant, message: String) -> Result<(), Violation> {
    Err(Violation::new(invariant, message))
}

/// `Ok` when `graph` keeps every invariant above, else the first violation.
pub fn verify(graph: &Graph) -> Result<(), Violation> {
    let lay = layouts(graph);
    for (name, v) in &graph.dims {
        if *v == 0 {
            return bad(SizesPositive, format!("dim {name} is 0"));
        }
    }
    for (kind, leaves) in [("input", &graph.inputs), ("param", &graph.params)] {
        for (i, leaf) in leaves.iter().enumerate() {
            if leaf.node.index() >= graph.len() {
                return bad(
                    OperandsFirst,
                    format!("{kind} {} names missing node {}", leaf.name, leaf.node),
                );
            }
            let ok = match graph.node(leaf.node).op {
                Op::Input { index } => kind == "input" && index == i,
                Op::Param { index } => kind == "param" && index == i,
                _ => false,
            };
            if !ok || graph.ty(leaf.node) != &leaf.ty {
                return bad(
                    OperandsFirst,
                    format!("{kind} {} does not match node {}", leaf.name, leaf.node),
                );
            }
        }
    }
    for o in &graph.outputs {
        if o.node.index() >= graph.len() {
            return bad(
                OperandsFirst,
                format!("output {} names missing node {}", o.name, o.node),
            );
        }
    }
    for id in graph.ids() {
        node(graph, id, &lay).map_err(|e| {
            let op = super::text::op_text(&graph.node(id).op);
            Violation::new(e.invariant, format!("{id} = {op}: {}", e.message))
        })?;
    }
    Ok(())
}

/// Whether `ty` is `t` reduced over `axes` (sorted, distinct, within its rank).
fn reduced_shape(
    t: &super::TensorType,
    axes: &[usize],
    keepdim: bool,
    ty: &super::TensorType,
) -> Result<(), Violation> {
    if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&a| a >= t.rank()) {
        return bad(
            TypesFollowOps,
            format!(
                "axes {axes:?} not sorted, distinct and within rank {}",
                t.rank()
            ),
        );
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
    if want != ty.sizes() {
        return bad(
            TypesFollowOps,
            format!("reducing {t} over {axes:?} gives {want:?}, node says {ty}"),
        );
    }
    Ok(())
}

fn node(graph: &Graph, id: NodeId, lay: &[super::Layout]) -> Result<(), Violation> {
    let n = graph.node(id);
    let ty = &n.ty;
    let sizes = ty.sizes();
    for o in n.op.operands() {
        if o >= id {
            return bad(
                OperandsFirst,
                format!("operand {o} does not precede its user"),
            );
        }
    }
    if sizes.contains(&0) {
        return bad(SizesPositive, format!("size 0 in {ty}"));
    }
    if ty.numel().is_none() {
        return bad(SizesPositive, format!("{ty} overflows u64"));
    }
    let same = |a: NodeId, what: &str, inv: Invariant| -> Result<(), Violation> {
        let t = graph.ty(a);
        if t.sizes() != sizes || t.dtype != ty.dtype {
            return bad(inv, format!("{what} {a} is {t}, result is {ty}"));
        }
        Ok(())
    };
    match &n.op {
        Op::Input { .. } | Op::Param { .. } => Ok(()),
        Op::Scalar(_) => {
            if ty.rank() != 0 {
                return bad(SizesPositive, format!("scalar of rank {}", ty.rank()));
            }
            Ok(())
        }
        Op::Unary(_, a) | Op::Copy(a) => same(*a, "operand", TypesFollowOps),
        Op::Binary(op, a, b) if op.is_cmp() => {
            let (ta, tb) = (graph.ty(*a), graph.ty(*b));
            if ta.sizes() != sizes || tb.sizes() != sizes || ta.dtype != tb.dtype {
                return bad(
                    ExplicitBroadcast,
                    format!("{ta} {} {tb} -> {ty}", op.name()),
                );
            }
            if ty.dtype != DType::Bool {
                return bad(TypesFollowOps, format!("a comparison gives {ty}, not bool"));
            }
            Ok(())
        }
        Op::Concat { args, axis } => {
            let mut total = 0u64;
            for &a in args {
                let t = graph.ty(a);
                let fits = t.dtype == ty.dtype
                    && t.rank() == ty.rank()
                    && *axis < ty.rank()
                    && (0..ty.rank()).all(|d| d == *axis || t.shape[d].size == sizes[d]);
                if !fits {
                    return bad(
                        TypesFollowOps,
                        format!("concat operand {a} {t} does not fit {ty}"),
                    );
                }
                total = total.saturating_add(t.shape[*axis].size);
            }
            if args.is_empty() || total != sizes[*axis] {
                return bad(
                    TypesFollowOps,
                    format!("concat of {} operands is not {ty}", args.len()),
                );
            }
            Ok(())
        }
        Op::Binary(op, a, b) => {
            same(*a, "left operand", ExplicitBroadcast)?;
            same(*b, "right operand", ExplicitBroadcast)?;
            if matches!(op, BinaryOp::And | BinaryOp::Or) && ty.dtype != DType::Bool {
                return bad(TypesFollowOps, format!("{} of {ty}", op.name()));
            }
            Ok(())
        }
        Op::Where(c, a, b) => {
            let tc = graph.ty(*c);
            if tc.sizes() != sizes || tc.dtype != DType::Bool {
                return bad(
                    ExplicitBroadcast,
                    format!("where's condition {c} is {tc}, result is {ty}"),
                );
            }
            same(*a, "where's first choice", ExplicitBroadcast)?;
            same(*b, "where's second choice", ExplicitBroadcast)
        }
        Op::Softmax { arg, axis, .. }
        | Op::LayerNorm { arg, axis, .. }
        | Op::RmsNorm { arg, axis, .. } => {
            same(*arg, "operand", TypesFollowOps)?;
            if *axis >= ty.rank() {
                return bad(TypesFollowOps, format!("axis {axis} out of range for {ty}"));
            }
            Ok(())
        }
        Op::Clamp { arg, .. } | Op::LeakyRelu { arg, .. } => same(*arg, "operand", TypesFollowOps),
        Op::Var {
            arg, axes, keepdim, ..
        }
        | Op::LogSumExp { arg, axes, keepdim } => {
            let t = graph.ty(*arg);
            if t.dtype != ty.dtype || !ty.dtype.is_float() {
                return bad(TypesFollowOps, format!("operand is {t}, result is {ty}"));
            }
            reduced_shape(t, axes, *keepdim, ty)
        }
        Op::Reduce {
            op,
            arg,
            axes,
            keepdim,
        } => {
            let t = graph.ty(*arg);
            if !op.is_arg() && t.dtype != ty.dtype {
                return bad(TypesFollowOps, format!("operand is {t}, result is {ty}"));
            }
            reduced_shape(t, axes, *keepdim, ty)
        }
        Op::MatMul(a, b) => {
            let (ta, tb) = (graph.ty(*a), graph.ty(*b));
            let r = ty.rank();
            if ta.rank() < 2 || ta.rank() != tb.rank() || r != ta.rank() {
                return bad(ExplicitBroadcast, format!("ranks of {ta} @ {tb} -> {ty}"));
            }
            let (sa, sb) = (ta.sizes(), tb.sizes());
            if ta.dtype != ty.dtype || tb.dtype != ty.dtype {
                return bad(ExplicitBroadcast, format!("dtypes of {ta} @ {tb} -> {ty}"));
            }
            if sa[..r - 2] != sb[..r - 2] || sa[..r - 2] != sizes[..r - 2] {
                return bad(
                    ExplicitBroadcast,
                    format!("batch dims of {ta} @ {tb} -> {ty}"),
                );
            }
            if sa[r - 1] != sb[r - 2] || sizes[r - 2] != sa[r - 2] || sizes[r - 1] != sb[r - 1] {
                return bad(
                    TypesFollowOps,
                    format!("matrix dims of {ta} @ {tb} -> {ty}"),
                );
            }
            Ok(())
        }
        Op::Arange
        | Op::Take { .. }
        | Op::Gather { .. }
        | Op::OneHot { .. }
        | Op::IndexAdd { .. }
        | Op::Cumsum { .. } => super::index_ops::verify(graph, &n.op, ty)
            .map_err(|(inv, msg)| Violation::new(inv, msg)),
        Op::Cast { arg, .. } => {
            if graph.ty(*arg).sizes() != sizes {
                return bad(
                    TypesFollowOps,
                    format!("cast changes the shape of {}", graph.ty(*arg)),
                );
            }
            Ok(())
        }
        Op::View(view, arg) => {
            let t = graph.ty(*arg);
            if t.dtype != ty.dtype {
                return bad(TypesFollowOps, format!("view changes dtype of {t}"));
            }
            let ins = t.sizes();
            match view {
                ViewOp::Transpose => {
                    let mut want = ins.clone();
                    let r = want.len();
                    if r < 2 {
                        return bad(TypesFollowOps, format!("transpose of rank {r}"));
                    }
                    want.swap(r - 1, r - 2);
                    if want != sizes {
                        return bad(TypesFollowOps, format!("transpose of {t} is not {ty}"));
                    }
                }
                ViewOp::Permute(perm) => {
                    let mut seen = vec![false; ins.len()];
                    for &p in perm {
                        if p >= ins.len() || seen[p] {
                            return bad(
                                TypesFollowOps,
                                format!("{perm:?} is not a permutation of rank {}", ins.len()),
                            );
                        }
                        seen[p] = true;
                    }
                    let want: Vec<u64> = perm.iter().map(|&p| ins[p]).collect();
                    if perm.len() != ins.len() || want != sizes {
                        return bad(
                            TypesFollowOps,
                            format!("permute {perm:?} of {t} is not {ty}"),
                        );
                    }
                }
                ViewOp::Reshape => {
                    if t.numel() != ty.numel() {
                        return bad(
                            TypesFollowOps,
                            format!("reshape of {t} to {ty} changes the element count"),
                        );
                    }
                    if apply_view(view, &lay[arg.index()], &ins, &sizes).is_none() {
                        return bad(
                            ViewsNeverCopy,
                            format!("reshape of {t} to {ty} has no strides (needs a copy)"),
                        );
                    }
                }
                ViewOp::Slice(axes) => {
                    let kept: Vec<u64> = axes
                        .iter()
                        .zip(&ins)
                        .filter(|(a, _)| a.keep)
                        .map(|(_, &n)| n)
                        .collect();
                    let in_range = axes.len() == ins.len()
                        && kept.len() == sizes.len()
                        && axes
                            .iter()
                            .zip(&ins)
                            .all(|(a, &n)| a.step >= 1 && a.start < n);
                    let fits = in_range && {
                        let mut out = sizes.iter();
                        axes.iter().zip(&ins).all(|(a, &n)| {
                            !a.keep
                                || out.next().is_some_and(|&k| {
                                    k >= 1
                                        && (a.start as u128 + (k as u128 - 1) * a.step as u128)
                                            < u128::from(n)
                                })
                        })
                    };
                    if !fits {
                        return bad(TypesFollowOps, format!("slice {axes:?} of {t} is not {ty}"));
                    }
                }
                ViewOp::Expand { .. } => {
                    if sizes.len() < ins.len() {
                        return bad(TypesFollowOps, format!("expand of {t} to lower rank {ty}"));
                    }
                    let lead = sizes.len() - ins.len();
                    if ins
                        .iter()
                        .zip(&sizes[lead..])
                        .any(|(&i, &o)| i != o && i != 1)
                    {
                        return bad(TypesFollowOps, format!("{t} does not broadcast to {ty}"));
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
            backward_of: None,
            grad_of: None,
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
        let e = verify(&g).expect_err("a rank-1 scalar is wrong");
        assert_eq!(e.invariant, Invariant::SizesPositive, "{e}");
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
        assert_eq!(e.invariant, Invariant::ExplicitBroadcast, "{e}");
        assert!(e.message.contains("left operand"), "{e}");
    }

    fn node(g: &mut Graph, op: Op, dtype: DType, sizes: &[u64]) -> NodeId {
        let ty = TensorType::new(dtype, sizes.iter().map(|&s| Dim::new(s)).collect());
        g.push(Node { op, ty, name: None }, origin())
    }

    /// Each broken graph names the invariant of `docs/architecture.md` it breaks.
    #[test]
    fn violations_name_their_invariant() {
        use crate::ir::UnaryOp;
        let f32 = DType::F32;
        // 3: a reshape of a transposed tensor has no strides (the checker would copy first).
        let mut g = Graph::new();
        let x = node(&mut g, Op::Input { index: 0 }, f32, &[4, 6]);
        let t = node(&mut g, Op::View(ViewOp::Transpose, x), f32, &[6, 4]);
        node(&mut g, Op::View(ViewOp::Reshape, t), f32, &[24]);
        assert_eq!(
            verify(&g).map_err(|e| e.invariant),
            Err(Invariant::ViewsNeverCopy)
        );
        // 11: exp changes the shape.
        let mut g = Graph::new();
        let x = node(&mut g, Op::Input { index: 0 }, f32, &[4]);
        node(&mut g, Op::Unary(UnaryOp::Exp, x), f32, &[5]);
        assert_eq!(
            verify(&g).map_err(|e| e.invariant),
            Err(Invariant::TypesFollowOps)
        );
        // 1: an operand that does not precede its user.
        let mut g = Graph::new();
        node(&mut g, Op::Unary(UnaryOp::Exp, NodeId(1)), f32, &[4]);
        node(&mut g, Op::Input { index: 0 }, f32, &[4]);
        let e = verify(&g).expect_err("operand after its user");
        assert_eq!(e.invariant, Invariant::OperandsFirst, "{e}");
        assert!(
            e.to_string()
                .starts_with("invariant 1 (Operands come first): "),
            "{e}"
        );
    }
}
