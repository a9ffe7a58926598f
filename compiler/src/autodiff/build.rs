//! The tape: appends backward nodes to the graph with explicit casts and broadcasts (the
//! graph's invariant 2), strided layouts for views (a `reshape` no strides express copies
//! first, as the checker does), and the origin group of the backward function being built.

use crate::diag::Span;
use crate::ir::graph::CmpOp;
use crate::ir::graph::Saved;
use crate::ir::layout::{apply_view, Layout};
use crate::ir::reduced_shape;
use crate::ir::types::broadcast_dims;
use crate::ir::{
    BinaryOp, DType, Dim, Graph, Node, NodeId, Op, Origin, ReduceOp, SliceAxis, TensorType,
    UnaryOp, ViewOp,
};

/// Appends nodes to a graph on behalf of one backward pass.
pub struct Tape<'g> {
    graph: &'g mut Graph,
    layouts: Vec<Layout>,
    span: Span,
    line: u32,
    /// The first node of the backward function being emitted (its nodes' `Origin.group`).
    group: Option<NodeId>,
    /// The forward expression whose backward function is being emitted (span and line),
    /// for the nodes' `Origin.backward_of`.
    backward_of: Option<(Span, u32)>,
}

impl<'g> Tape<'g> {
    pub fn new(graph: &'g mut Graph, layouts: Vec<Layout>, span: Span, line: u32) -> Tape<'g> {
        Tape {
            graph,
            layouts,
            span,
            line,
            group: None,
            backward_of: None,
        }
    }

    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// Starts a new backward function: the next node opens a new origin group.
    pub fn begin(&mut self) {
        self.group = None;
    }

    /// The nodes emitted from now on belong to the backward function of forward node
    /// `forward` (`None`: to no one op's, as gradient accumulation and the results' casts).
    pub fn backward_of(&mut self, forward: Option<NodeId>) {
        self.backward_of = forward.map(|f| {
            let o = self.graph.origin(f);
            (o.span.clone(), o.line)
        });
    }

    /// Records that PyTorch's backward function being emitted saves `value` from the
    /// forward: the eager model keeps it live until this function runs.
    pub fn save(&mut self, value: NodeId) {
        let until = self.group.unwrap_or(NodeId(self.graph.len() as u32));
        self.graph.saved.push(Saved { value, until });
    }

    pub fn push(&mut self, op: Op, ty: TensorType) -> NodeId {
        let id = NodeId(self.graph.len() as u32);
        let sizes = ty.sizes();
        let layout = match &op {
            Op::View(view, arg) => {
                let in_sizes = self.graph.ty(*arg).sizes();
                apply_view(view, &self.layouts[arg.index()], &in_sizes, &sizes)
                    .unwrap_or_else(|| Layout::contiguous(id, &sizes))
            }
            _ => Layout::contiguous(id, &sizes),
        };
        let group = *self.group.get_or_insert(id);
        let origin = Origin {
            span: self.span.clone(),
            line: self.line,
            group: Some(group),
            backward_of: self.backward_of.clone(),
            grad_of: None,
        };
        let id = self.graph.push(Node { op, ty, name: None }, origin);
        self.layouts.push(layout);
        id
    }

    fn ty(&self, id: NodeId) -> TensorType {
        self.graph.ty(id).clone()
    }

    pub fn scalar(&mut self, v: f64, dtype: DType) -> NodeId {
        self.push(Op::Scalar(v), TensorType::scalar(dtype))
    }

    /// `x` as f32 (an implicit promotion when it is f16/bf16).
    pub fn f32(&mut self, x: NodeId) -> NodeId {
        self.cast(x, DType::F32, true)
    }

    /// `x` rounded to `dtype` (the one rounding of an f16/bf16 gradient).
    pub fn cast_to(&mut self, x: NodeId, dtype: DType) -> NodeId {
        self.cast(x, dtype, false)
    }

    fn cast(&mut self, x: NodeId, dtype: DType, implicit: bool) -> NodeId {
        let t = self.ty(x);
        if t.dtype == dtype {
            return x;
        }
        self.push(
            Op::Cast { arg: x, implicit },
            TensorType::new(dtype, t.shape),
        )
    }

    /// `x` broadcast to `shape` (a view; nothing when the sizes already agree).
    pub fn expand(&mut self, x: NodeId, shape: &[Dim]) -> NodeId {
        let t = self.ty(x);
        if t.sizes() == shape.iter().map(|d| d.size).collect::<Vec<_>>() {
            return x;
        }
        self.push(
            Op::View(ViewOp::Expand { implicit: true }, x),
            TensorType::new(t.dtype, shape.to_vec()),
        )
    }

    /// `a op b` in f32 with NumPy broadcasting (the operands' shapes must broadcast).
    pub fn bin(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
        self.broadcast_binary(op, a, b, DType::F32)
    }

    /// `a cmp b` (both read as f32, broadcast): a `bool` tensor.
    pub fn cmp(&mut self, op: CmpOp, a: NodeId, b: NodeId) -> NodeId {
        self.broadcast_binary(BinaryOp::Cmp(op), a, b, DType::Bool)
    }

    /// `a op b` of dtype `dtype`, both operands read as f32 and broadcast to their common
    /// shape (for `bin` and `cmp`).
    fn broadcast_binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId, dtype: DType) -> NodeId {
        let a = self.f32(a);
        let b = self.f32(b);
        let (ta, tb) = (self.ty(a), self.ty(b));
        let shape = broadcast_dims(&ta.shape, &tb.shape).unwrap_or_else(|| ta.shape.clone());
        let a = self.expand(a, &shape);
        let b = self.expand(b, &shape);
        self.push(Op::Binary(op, a, b), TensorType::new(dtype, shape))
    }

    /// `a cmp c` for a constant `c`.
    pub fn cmp_const(&mut self, op: CmpOp, a: NodeId, c: f64) -> NodeId {
        let s = self.scalar(c, DType::F32);
        self.cmp(op, a, s)
    }

    /// `logical_and(a, b)` of two `bool` tensors of one shape.
    pub fn and(&mut self, a: NodeId, b: NodeId) -> NodeId {
        let t = self.ty(a);
        self.push(Op::Binary(BinaryOp::And, a, b), t)
    }

    /// `where(cond, a, b)` in f32, the three broadcast to one shape.
    pub fn select(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> NodeId {
        let a = self.f32(a);
        let b = self.f32(b);
        let (tc, ta, tb) = (self.ty(cond), self.ty(a), self.ty(b));
        let shape = broadcast_dims(&ta.shape, &tb.shape)
            .and_then(|s| broadcast_dims(&tc.shape, &s))
            .unwrap_or_else(|| tc.shape.clone());
        let c = self.expand(cond, &shape);
        let a = self.expand(a, &shape);
        let b = self.expand(b, &shape);
        self.push(Op::Where(c, a, b), TensorType::new(DType::F32, shape))
    }

    /// A `bool` tensor as f32 ones and zeros.
    pub fn as_f32(&mut self, mask: NodeId) -> NodeId {
        self.cast_to(mask, DType::F32)
    }

    pub fn add(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Add, a, b)
    }

    pub fn sub(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Sub, a, b)
    }

    pub fn mul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Mul, a, b)
    }

    pub fn div(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(BinaryOp::Div, a, b)
    }

    /// `a * c` for a constant `c`.
    pub fn scale(&mut self, a: NodeId, c: f64) -> NodeId {
        let s = self.scalar(c, DType::F32);
        self.mul(a, s)
    }

    /// `a + c` for a constant `c`.
    pub fn offset(&mut self, a: NodeId, c: f64) -> NodeId {
        let s = self.scalar(c, DType::F32);
        self.add(a, s)
    }

    /// `c - a` for a constant `c`.
    pub fn rsub(&mut self, c: f64, a: NodeId) -> NodeId {
        let s = self.scalar(c, DType::F32);
        self.sub(s, a)
    }

    pub fn un(&mut self, op: UnaryOp, a: NodeId) -> NodeId {
        let a = self.f32(a);
        let t = self.ty(a);
        self.push(Op::Unary(op, a), t)
    }

    /// A reduction over `axes` (sorted, distinct) in f32.
    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize], keepdim: bool) -> NodeId {
        let x = self.f32(x);
        if axes.is_empty() {
            return x;
        }
        let t = self.ty(x);
        let shape: Vec<Dim> = reduced_shape(&t.shape, axes, keepdim);
        self.push(
            Op::Reduce {
                op,
                arg: x,
                axes: axes.to_vec(),
                keepdim,
            },
            TensorType::new(DType::F32, shape),
        )
    }

    /// `x` viewed as `shape` (same element count); copied first when no strides express it.
    pub fn reshape(&mut self, x: NodeId, shape: &[Dim]) -> NodeId {
        let t = self.ty(x);
        let sizes: Vec<u64> = shape.iter().map(|d| d.size).collect();
        if t.sizes() == sizes {
            return x;
        }
        let fits = apply_view(
            &ViewOp::Reshape,
            &self.layouts[x.index()],
            &t.sizes(),
            &sizes,
        )
        .is_some();
        let src = if fits {
            x
        } else {
            self.push(Op::Copy(x), t.clone())
        };
        self.push(
            Op::View(ViewOp::Reshape, src),
            TensorType::new(t.dtype, shape.to_vec()),
        )
    }

    pub fn transpose(&mut self, x: NodeId) -> NodeId {
        let mut t = self.ty(x);
        let r = t.rank();
        t.shape.swap(r - 1, r - 2);
        self.push(Op::View(ViewOp::Transpose, x), t)
    }

    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> NodeId {
        let t = self.ty(x);
        let shape = perm.iter().map(|&p| t.shape[p].clone()).collect();
        self.push(
            Op::View(ViewOp::Permute(perm.to_vec()), x),
            TensorType::new(t.dtype, shape),
        )
    }

    /// `a @ b` in f32; batch dims equal (the forward's were broadcast explicitly).
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        let a = self.f32(a);
        let b = self.f32(b);
        let (ta, tb) = (self.ty(a), self.ty(b));
        let mut shape = ta.shape[..ta.rank() - 1].to_vec();
        shape.push(tb.shape[tb.rank() - 1].clone());
        self.push(Op::MatMul(a, b), TensorType::new(DType::F32, shape))
    }

    /// The sum of `g` down to `shape`, undoing a NumPy broadcast (`sum_to_size`). An axis
    /// of one element is not summed (its sum is the element): a leading batch axis of
    /// size 1 (a weight's gradient through `x @ w` with `B = 1`) is a reshape, no kernel.
    pub fn sum_to(&mut self, g: NodeId, shape: &[Dim]) -> NodeId {
        let t = self.ty(g);
        let lead = t.rank() - shape.len();
        let axes: Vec<usize> = (0..t.rank())
            .filter(|&i| t.shape[i].size != 1 && (i < lead || shape[i - lead].size == 1))
            .collect();
        if axes.is_empty() {
            return self.reshape(g, shape);
        }
        let s = self.reduce(ReduceOp::Sum, g, &axes, true);
        self.reshape(s, shape)
    }

    /// `arange(n)` (`i64[n]`) viewed with `n` on axis `axis` of a rank-`rank` shape of ones.
    pub fn arange_on(&mut self, n: &Dim, axis: usize, rank: usize) -> NodeId {
        let a = self.push(Op::Arange, TensorType::new(DType::I64, vec![n.clone()]));
        let mut shape = vec![Dim::new(1); rank];
        shape[axis] = n.clone();
        self.reshape(a, &shape)
    }

    /// `a == b` of two integer tensors compared as `i64` (no rounding through f32, so a
    /// vocabulary beyond 2^24 compares exactly), broadcast: a `bool` tensor.
    pub fn index_eq(&mut self, a: NodeId, b: NodeId) -> NodeId {
        let a = self.cast(a, DType::I64, true);
        let b = self.cast(b, DType::I64, true);
        let (ta, tb) = (self.ty(a), self.ty(b));
        let shape = broadcast_dims(&ta.shape, &tb.shape).unwrap_or_else(|| ta.shape.clone());
        let a = self.expand(a, &shape);
        let b = self.expand(b, &shape);
        self.push(
            Op::Binary(BinaryOp::Cmp(CmpOp::Eq), a, b),
            TensorType::new(DType::Bool, shape),
        )
    }

    /// `x[…]` along one axis: `len` entries from `start` (step 1), the other axes whole (a
    /// view).
    pub fn narrow(&mut self, x: NodeId, axis: usize, start: u64, len: u64) -> NodeId {
        let t = self.ty(x);
        let axes = (0..t.rank())
            .map(|a| SliceAxis {
                start: if a == axis { start } else { 0 },
                step: 1,
                keep: true,
            })
            .collect();
        let mut shape = t.shape.clone();
        shape[axis] = Dim::new(len);
        self.push(
            Op::View(ViewOp::Slice(axes), x),
            TensorType::new(t.dtype, shape),
        )
    }

    /// `concat(parts, axis)` of f32 tensors (each part written into its place).
    pub fn concat(&mut self, parts: Vec<NodeId>, axis: usize) -> NodeId {
        let parts: Vec<NodeId> = parts.into_iter().map(|p| self.f32(p)).collect();
        let mut shape = self.ty(parts[0]).shape;
        shape[axis] = Dim::new(parts.iter().map(|&p| self.ty(p).shape[axis].size).sum());
        self.push(
            Op::Concat { args: parts, axis },
            TensorType::new(DType::F32, shape),
        )
    }

    /// `x` with its entries reversed along `axis` (`torch.flip`): a gather by the index
    /// expression `n - 1 - arange(n)`, computed in the kernel that reads it.
    pub fn flip(&mut self, x: NodeId, axis: usize) -> NodeId {
        let t = self.ty(x);
        let n = t.shape[axis].clone();
        let last = self.push(
            Op::Scalar((n.size - 1) as f64),
            TensorType::scalar(DType::I64),
        );
        let a = self.arange_on(&n, axis, t.rank());
        let sizes = self.ty(a).shape;
        let last = self.expand(last, &sizes);
        let rev = self.push(
            Op::Binary(BinaryOp::Sub, last, a),
            TensorType::new(DType::I64, sizes),
        );
        self.push(
            Op::Gather {
                arg: x,
                index: rev,
                axis,
            },
            t,
        )
    }

    /// Zeros of `shape` (f32): a broadcast constant, no memory.
    pub fn zeros(&mut self, shape: &[Dim]) -> NodeId {
        let z = self.scalar(0.0, DType::F32);
        self.expand(z, shape)
    }
}
