//! The index ops' rules, written once for the checker, the verifier and `decompose`:
//! `arange`, `take`, `gather`, `one_hot`, `cumsum` (SPEC §3.3; `argmax`/`argmin` are
//! `ReduceOp`s and follow the reductions' shape rule). Shapes of `take` and `gather`, the
//! verifier's check of each op, and the decomposition of the checked-graph-only ops
//! (`take` → views and a `gather`; `one_hot` → an `arange` compared with the index).

use super::graph::{BinaryOp, CmpOp, Graph, Node, NodeId, Op, Origin, ViewOp};
use super::types::{DType, Dim, TensorType};
use crate::invariant::Invariant::{self, ExplicitBroadcast, TypesFollowOps};

/// `numpy.take`'s shape: `x.shape[:axis] + idx.shape + x.shape[axis+1:]`.
pub fn take_shape(x: &[Dim], idx: &[Dim], axis: usize) -> Vec<Dim> {
    let mut out = x[..axis].to_vec();
    out.extend_from_slice(idx);
    out.extend_from_slice(&x[axis + 1..]);
    out
}

/// `numpy.take_along_axis`'s shape with broadcasting: on every axis but `axis` the two
/// shapes broadcast (equal, or one is 1); on `axis` the index's size. `Err(d)` names the
/// first axis `d` that does not broadcast. Both have one rank (the caller checks).
pub fn gather_shape(x: &[Dim], idx: &[Dim], axis: usize) -> Result<Vec<Dim>, usize> {
    x.iter()
        .zip(idx)
        .enumerate()
        .map(|(d, (a, b))| {
            if d == axis || a.size == b.size || a.size == 1 {
                Ok(b.clone())
            } else if b.size == 1 {
                Ok(a.clone())
            } else {
                Err(d)
            }
        })
        .collect()
}

/// The verifier's rule for the index ops (invariant 11; 2 for the primitive `gather`'s
/// explicit index broadcast).
pub fn verify(graph: &Graph, op: &Op, ty: &TensorType) -> Result<(), (Invariant, String)> {
    let sizes = ty.sizes();
    let bad = |inv: Invariant, msg: String| Err((inv, msg));
    let integral = |id: NodeId| graph.dtype(id).is_integral();
    match *op {
        Op::Arange => {
            if ty.rank() != 1 || ty.dtype != DType::I64 {
                return bad(TypesFollowOps, format!("arange of type {ty}"));
            }
            Ok(())
        }
        Op::Take { arg, index, axis } => {
            let (x, i) = (graph.ty(arg), graph.ty(index));
            if axis >= x.rank() || !integral(index) {
                return bad(TypesFollowOps, format!("take of {x} by {i} on axis {axis}"));
            }
            let want: Vec<u64> = take_shape(&x.shape, &i.shape, axis)
                .iter()
                .map(|d| d.size)
                .collect();
            if want != sizes || x.dtype != ty.dtype {
                return bad(
                    TypesFollowOps,
                    format!("take of {x} by {i} on axis {axis} is not {ty}"),
                );
            }
            Ok(())
        }
        Op::Gather { arg, index, axis } => {
            let (x, i) = (graph.ty(arg), graph.ty(index));
            if axis >= x.rank() || x.rank() != i.rank() || !integral(index) {
                return bad(
                    TypesFollowOps,
                    format!("gather of {x} by {i} on axis {axis}"),
                );
            }
            let want = gather_shape(&x.shape, &i.shape, axis)
                .map(|s| s.iter().map(|d| d.size).collect::<Vec<u64>>());
            if want.as_deref() != Ok(&sizes[..]) || x.dtype != ty.dtype {
                return bad(
                    TypesFollowOps,
                    format!("gather of {x} by {i} on axis {axis} is not {ty}"),
                );
            }
            Ok(())
        }
        Op::OneHot { arg, classes } => {
            let i = graph.ty(arg);
            let mut want = i.sizes();
            want.push(classes);
            if want != sizes || !integral(arg) || ty.dtype != DType::I64 {
                return bad(
                    TypesFollowOps,
                    format!("one_hot of {i} with {classes} classes is not {ty}"),
                );
            }
            Ok(())
        }
        Op::Cumsum { arg, axis } => {
            let x = graph.ty(arg);
            let dtype = cumsum_dtype(x.dtype);
            if axis >= x.rank() || x.sizes() != sizes || ty.dtype != dtype {
                return bad(
                    TypesFollowOps,
                    format!("cumsum of {x} on axis {axis} is not {ty}"),
                );
            }
            Ok(())
        }
        Op::IndexAdd {
            grad,
            index,
            axis,
            size,
        } => {
            let (g, i) = (graph.ty(grad).sizes(), graph.ty(index).sizes());
            let ok = integral(index)
                && graph.dtype(grad).is_float()
                && graph.dtype(grad) == ty.dtype
                && axis + i.len() <= g.len()
                && g[axis..axis + i.len()] == i[..]
                && sizes.len() == g.len() + 1 - i.len()
                && sizes[..axis] == g[..axis]
                && sizes[axis] == size
                && sizes[axis + 1..] == g[axis + i.len()..];
            if !ok {
                return bad(
                    TypesFollowOps,
                    format!(
                        "index_add of {} by {} on axis {axis} into {size} rows is not {ty}",
                        graph.ty(grad),
                        graph.ty(index)
                    ),
                );
            }
            Ok(())
        }
        _ => bad(
            ExplicitBroadcast,
            format!("{} is not an index op", op.name()),
        ),
    }
}

/// `cumsum`'s result dtype: floats keep theirs, integers and `bool` give `i64`.
pub fn cumsum_dtype(x: DType) -> DType {
    if x.is_float() {
        x
    } else {
        DType::I64
    }
}

/// Pushes the nodes of one checked-graph index op into the primitive graph `g`, every
/// one with `origin`.
pub(super) struct Decomposer<'a> {
    pub g: &'a mut Graph,
    pub origin: Origin,
}

impl Decomposer<'_> {
    fn push(&mut self, op: Op, ty: TensorType) -> NodeId {
        self.g
            .push(Node { op, ty, name: None }, self.origin.clone())
    }

    /// A reshape view of `x` to `shape` (a no-op when the sizes agree). Only size-1 axes
    /// are added or removed, so strides always express it.
    fn reshape(&mut self, x: NodeId, shape: Vec<Dim>) -> NodeId {
        let ty = self.g.ty(x).clone();
        if ty.sizes() == shape.iter().map(|d| d.size).collect::<Vec<_>>() {
            return x;
        }
        self.push(
            Op::View(ViewOp::Reshape, x),
            TensorType::new(ty.dtype, shape),
        )
    }

    /// An implicit broadcast of `x` to `shape` (a no-op when the sizes agree).
    fn expand(&mut self, x: NodeId, shape: &[Dim]) -> NodeId {
        let ty = self.g.ty(x).clone();
        if ty.sizes() == shape.iter().map(|d| d.size).collect::<Vec<_>>() {
            return x;
        }
        self.push(
            Op::View(ViewOp::Expand { implicit: true }, x),
            TensorType::new(ty.dtype, shape.to_vec()),
        )
    }

    /// `gather` in primitive form: the index broadcast to the result's shape.
    pub fn gather(&mut self, x: NodeId, index: NodeId, axis: usize, node: &Node) -> NodeId {
        let out = node.ty.shape.clone();
        let index = self.expand(index, &out);
        self.push(
            Op::Gather {
                arg: x,
                index,
                axis,
            },
            node.ty.clone(),
        )
    }

    /// `take(x, idx, axis)` as `take_along_axis` of `x` with one size-1 axis per index
    /// axis but the last (which stands for `axis`), by the index with size-1 axes for
    /// `x`'s others; then the result reshaped to `take`'s shape. A rank-0 index keeps a
    /// size-1 `axis` that the final reshape drops.
    pub fn take(&mut self, x: NodeId, index: NodeId, axis: usize, node: &Node) -> NodeId {
        let xt = self.g.ty(x).clone();
        let it = self.g.ty(index).clone();
        let (pre, post) = (&xt.shape[..axis], &xt.shape[axis + 1..]);
        let one = || Dim::new(1);
        let r = it.rank().max(1);
        // x: pre + [1] * (r - 1) + [x.shape[axis]] + post
        let mut xs = pre.to_vec();
        xs.extend((0..r - 1).map(|_| one()));
        xs.push(xt.shape[axis].clone());
        xs.extend_from_slice(post);
        // index: [1] * len(pre) + index.shape (or [1]) + [1] * len(post)
        let mut is: Vec<Dim> = pre.iter().map(|_| one()).collect();
        if it.rank() == 0 {
            is.push(one());
        } else {
            is.extend_from_slice(&it.shape);
        }
        is.extend(post.iter().map(|_| one()));
        // result: pre + index.shape (or [1]) + post
        let mut out = pre.to_vec();
        if it.rank() == 0 {
            out.push(one());
        } else {
            out.extend_from_slice(&it.shape);
        }
        out.extend_from_slice(post);
        let gx = self.reshape(x, xs);
        let gi = self.reshape(index, is);
        let gi = self.expand(gi, &out);
        let g = self.push(
            Op::Gather {
                arg: gx,
                index: gi,
                axis: axis + r - 1,
            },
            TensorType::new(xt.dtype, out),
        );
        self.reshape(g, node.ty.shape.clone())
    }

    /// `one_hot(idx, N)` = `i64(checked(reshape(idx, [..., 1])) == arange(N))`: an
    /// elementwise comparison with the index computed in the kernel (no buffer for
    /// either). The index is first gathered from `arange(N)` (`[1, …, 1, N]`), which is
    /// the index itself checked to lie in `[0, N)`: an error in the data otherwise, as
    /// PyTorch's `one_hot` raises.
    pub fn one_hot(&mut self, index: NodeId, classes: u64, node: &Node) -> NodeId {
        let it = self.g.ty(index).clone();
        let out = node.ty.shape.clone();
        debug_assert_eq!(out.last().map(|d| d.size), Some(classes));
        let mut col = it.shape.clone();
        col.push(Dim::new(1));
        let i = self.reshape(index, col);
        let i = if it.dtype == DType::I64 {
            i
        } else {
            let shape = self.g.ty(i).shape.clone();
            self.push(
                Op::Cast {
                    arg: i,
                    implicit: true,
                },
                TensorType::new(DType::I64, shape),
            )
        };
        let i = self.expand(i, &out);
        let n = out[out.len() - 1].clone();
        let table = self.push(Op::Arange, TensorType::new(DType::I64, vec![n.clone()]));
        let mut ones: Vec<Dim> = out.iter().map(|_| Dim::new(1)).collect();
        *ones.last_mut().unwrap_or(&mut Dim::new(1)) = n.clone();
        let table = self.reshape(table, ones);
        let i = self.push(
            Op::Gather {
                arg: table,
                index: i,
                axis: out.len() - 1,
            },
            TensorType::new(DType::I64, out.clone()),
        );
        let a = self.push(Op::Arange, TensorType::new(DType::I64, vec![n]));
        let a = self.expand(a, &out);
        let eq = self.push(
            Op::Binary(BinaryOp::Cmp(CmpOp::Eq), i, a),
            TensorType::new(DType::Bool, out.clone()),
        );
        self.push(
            Op::Cast {
                arg: eq,
                implicit: false,
            },
            TensorType::new(DType::I64, out),
        )
    }
}

/// Whether node `n` of `g` is an *index expression*: a value computed from aranges and
/// constants alone (an arange or scalar, a view of one, or elementwise maths over index
/// expressions), which any kernel can compute at any index instead of reading it.
pub fn is_index_expr(g: &Graph, n: NodeId) -> bool {
    let mut stack = vec![n];
    let mut seen = std::collections::HashSet::new();
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        match &g.node(x).op {
            op if op.is_synthesized() => {}
            Op::View(_, a) => {
                // Only views of aranges and constants: their layout composes.
                let mut r = *a;
                while let Op::View(_, b) = g.node(r).op {
                    r = b;
                }
                if !g.node(r).op.is_synthesized() {
                    return false;
                }
            }
            Op::Unary(_, a) | Op::Cast { arg: a, .. } => stack.push(*a),
            Op::Binary(_, a, b) => stack.extend([*a, *b]),
            Op::Where(c, a, b) => stack.extend([*c, *a, *b]),
            _ => return false,
        }
    }
    true
}

/// Whether a broadcast of `x` is better written as `x` computed again at the broadcast
/// shape (`Decomposer::broadcast`): `x` is elementwise maths over aranges and constants,
/// or a gather by such an index (a position embedding `take(wpe, arange(S))` added to
/// `[B, S, D]` activations: read where it is used, never stored).
pub fn sinks(g: &Graph, x: NodeId) -> bool {
    match g.node(x).op {
        Op::Unary(..) | Op::Cast { .. } | Op::Binary(..) | Op::Where(..) => is_index_expr(g, x),
        Op::Gather { index, .. } => is_index_expr(g, index),
        _ => false,
    }
}

impl Decomposer<'_> {
    /// A broadcast of `x` to `shape`: when `x` is an index expression computed by a kernel
    /// (a causal mask `reshape(pos, [S, 1]) >= pos`, say), the expression again at the
    /// broadcast shape, its operands broadcast instead — so the kernel that reads the
    /// broadcast computes it in place and no buffer of it exists; else a plain expand view.
    pub fn broadcast(&mut self, x: NodeId, shape: &[Dim]) -> NodeId {
        let node = self.g.node(x).clone();
        if !sinks(self.g, x) {
            return self.expand(x, shape);
        }
        let op = match node.op {
            Op::Gather { arg, index, axis } => {
                // The table with leading size-1 axes for the new ones (it broadcasts on
                // every axis but `axis`), the index broadcast to the whole shape.
                let at = self.g.ty(arg).clone();
                let k = shape.len() - at.rank();
                let mut s: Vec<Dim> = (0..k).map(|_| Dim::new(1)).collect();
                s.extend(at.shape.iter().cloned());
                let arg = self.reshape(arg, s);
                Op::Gather {
                    arg,
                    index: self.broadcast(index, shape),
                    axis: axis + k,
                }
            }
            Op::Unary(u, a) => Op::Unary(u, self.broadcast(a, shape)),
            Op::Cast { arg, implicit } => Op::Cast {
                arg: self.broadcast(arg, shape),
                implicit,
            },
            Op::Binary(b, l, r) => {
                let l = self.broadcast(l, shape);
                Op::Binary(b, l, self.broadcast(r, shape))
            }
            Op::Where(c, a, b) => {
                let c = self.broadcast(c, shape);
                let a = self.broadcast(a, shape);
                Op::Where(c, a, self.broadcast(b, shape))
            }
            other => other,
        };
        self.push(op, TensorType::new(node.ty.dtype, shape.to_vec()))
    }
}
