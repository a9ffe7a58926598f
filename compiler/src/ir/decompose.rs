//! Decomposition: rewrites the built-ins (softmax, log_softmax, layernorm, rmsnorm) into the
//! primitive ops a kernel computes (reductions, elementwise maths, implicit broadcasts and
//! casts); `take` and `one_hot` as `index_ops` writes them (views and a `gather`; an
//! `arange` comparison). f16/bf16 inputs are upcast to f32 and the result is cast back to the input dtype.

use super::graph::{BinaryOp, Graph, Node, NodeId, Op, Origin, ReduceOp, UnaryOp, ViewOp};
use super::types::{reduced_shape, DType, Dim, TensorType};

/// The primitive form of a checked graph. Every new node's `Origin.group` is the checked
/// node it came from; every copied node's group is its checked group (its own id, or the
/// first node of its backward function). The final node of a built-in keeps its name.
pub fn decompose(graph: &Graph) -> Graph {
    let mut out = Graph::new();
    out.dims = graph.dims.clone();
    let mut map: Vec<NodeId> = Vec::with_capacity(graph.len());
    let users = graph.users();
    for id in graph.ids() {
        let node = graph.node(id);
        // A node of a backward function (`autodiff`) keeps that function's group: it is one
        // source-level op, as a built-in's primitives are.
        let origin = Origin {
            group: graph.origin(id).group.or(Some(id)),
            ..graph.origin(id).clone()
        };
        let new_id = match &node.op {
            Op::Softmax { arg, axis, log } => {
                let mut b = Builder {
                    g: &mut out,
                    origin,
                };
                b.softmax(map[arg.index()], *axis, *log, node)
            }
            Op::LayerNorm { arg, axis, eps } => {
                let mut b = Builder {
                    g: &mut out,
                    origin,
                };
                b.norm(map[arg.index()], *axis, *eps, true, node)
            }
            Op::RmsNorm { arg, axis, eps } => {
                let mut b = Builder {
                    g: &mut out,
                    origin,
                };
                b.norm(map[arg.index()], *axis, *eps, false, node)
            }
            Op::Clamp { arg, min, max } => {
                let mut b = Builder {
                    g: &mut out,
                    origin,
                };
                b.clamp(map[arg.index()], *min, *max, node)
            }
            Op::LeakyRelu { arg, slope } => {
                let mut b = Builder {
                    g: &mut out,
                    origin,
                };
                b.leaky_relu(map[arg.index()], *slope, node)
            }
            Op::Var {
                arg,
                axes,
                keepdim,
                correction,
                sqrt,
            } => {
                let mut b = Builder {
                    g: &mut out,
                    origin,
                };
                b.var(map[arg.index()], axes, *keepdim, *correction, *sqrt, node)
            }
            Op::LogSumExp { arg, axes, keepdim } => {
                let mut b = Builder {
                    g: &mut out,
                    origin,
                };
                b.logsumexp(map[arg.index()], axes, *keepdim, node)
            }
            Op::Concat { args, axis } => {
                // Each operand is copied into its place: the copy fuses into the operand's
                // kernel where it can, which then writes the place directly (`plan`).
                let parts: Vec<NodeId> = args
                    .iter()
                    .map(|a| {
                        let a = map[a.index()];
                        let ty = out.ty(a).clone();
                        out.push(
                            Node {
                                op: Op::Copy(a),
                                ty,
                                name: None,
                            },
                            origin.clone(),
                        )
                    })
                    .collect();
                out.push(
                    Node {
                        op: Op::Concat {
                            args: parts,
                            axis: *axis,
                        },
                        ty: node.ty.clone(),
                        name: node.name.clone(),
                    },
                    origin,
                )
            }
            Op::Take { arg, index, axis } => {
                let mut d = super::index_ops::Decomposer {
                    g: &mut out,
                    origin,
                };
                let y = d.take(map[arg.index()], map[index.index()], *axis, node);
                out.node_mut(y).name = node.name.clone();
                y
            }
            Op::Gather { arg, index, axis } => {
                let mut d = super::index_ops::Decomposer {
                    g: &mut out,
                    origin,
                };
                let y = d.gather(map[arg.index()], map[index.index()], *axis, node);
                out.node_mut(y).name = node.name.clone();
                y
            }
            Op::OneHot { arg, classes } => {
                let mut d = super::index_ops::Decomposer {
                    g: &mut out,
                    origin,
                };
                let y = d.one_hot(map[arg.index()], *classes, node);
                out.node_mut(y).name = node.name.clone();
                y
            }
            Op::View(ViewOp::Expand { implicit }, a)
                if super::index_ops::sinks(&out, map[a.index()]) =>
            {
                // A broadcast index expression (a causal mask): computed again at the
                // broadcast shape, so the kernel reading it computes it in place. The
                // copy counts as part of the op the checker broadcast it for.
                let origin = match users[id.index()].as_slice() {
                    [user] if *implicit => Origin {
                        group: Some(*user),
                        ..origin
                    },
                    _ => origin,
                };
                let mut d = super::index_ops::Decomposer {
                    g: &mut out,
                    origin,
                };
                let y = d.broadcast(map[a.index()], &node.ty.shape);
                out.node_mut(y).name = node.name.clone();
                y
            }
            op => {
                let op = remap(op, &map);
                out.push(
                    Node {
                        op,
                        ty: node.ty.clone(),
                        name: node.name.clone(),
                    },
                    origin,
                )
            }
        };
        map.push(new_id);
    }
    out.declarations_from(graph, &map);
    // Backward passes, in checked-graph ids (the primitive nodes' `Origin.group`s).
    out.passes = graph.passes.clone();
    out
}

/// `op` with each operand `n` replaced by `map[n]`.
pub(crate) fn remap(op: &Op, map: &[NodeId]) -> Op {
    let m = |n: &NodeId| map[n.index()];
    match op {
        Op::Input { index } => Op::Input { index: *index },
        Op::Param { index } => Op::Param { index: *index },
        Op::Scalar(v) => Op::Scalar(*v),
        Op::Unary(u, a) => Op::Unary(*u, m(a)),
        Op::Binary(b, x, y) => Op::Binary(*b, m(x), m(y)),
        Op::Reduce {
            op,
            arg,
            axes,
            keepdim,
        } => Op::Reduce {
            op: *op,
            arg: m(arg),
            axes: axes.clone(),
            keepdim: *keepdim,
        },
        Op::Softmax { arg, axis, log } => Op::Softmax {
            arg: m(arg),
            axis: *axis,
            log: *log,
        },
        Op::LayerNorm { arg, axis, eps } => Op::LayerNorm {
            arg: m(arg),
            axis: *axis,
            eps: *eps,
        },
        Op::RmsNorm { arg, axis, eps } => Op::RmsNorm {
            arg: m(arg),
            axis: *axis,
            eps: *eps,
        },
        Op::MatMul(a, b) => Op::MatMul(m(a), m(b)),
        Op::Cast { arg, implicit } => Op::Cast {
            arg: m(arg),
            implicit: *implicit,
        },
        Op::View(v, a) => Op::View(v.clone(), m(a)),
        Op::Copy(a) => Op::Copy(m(a)),
        Op::Arange => Op::Arange,
        Op::Take { arg, index, axis } => Op::Take {
            arg: m(arg),
            index: m(index),
            axis: *axis,
        },
        Op::Gather { arg, index, axis } => Op::Gather {
            arg: m(arg),
            index: m(index),
            axis: *axis,
        },
        Op::OneHot { arg, classes } => Op::OneHot {
            arg: m(arg),
            classes: *classes,
        },
        Op::Cumsum { arg, axis } => Op::Cumsum {
            arg: m(arg),
            axis: *axis,
        },
        Op::Where(c, a, b) => Op::Where(m(c), m(a), m(b)),
        Op::IndexAdd {
            grad,
            index,
            axis,
            size,
        } => Op::IndexAdd {
            grad: m(grad),
            index: m(index),
            axis: *axis,
            size: *size,
        },
        Op::Concat { args, axis } => Op::Concat {
            args: args.iter().map(m).collect(),
            axis: *axis,
        },
        Op::Clamp { arg, min, max } => Op::Clamp {
            arg: m(arg),
            min: *min,
            max: *max,
        },
        Op::LeakyRelu { arg, slope } => Op::LeakyRelu {
            arg: m(arg),
            slope: *slope,
        },
        Op::Var {
            arg,
            axes,
            keepdim,
            correction,
            sqrt,
        } => Op::Var {
            arg: m(arg),
            axes: axes.clone(),
            keepdim: *keepdim,
            correction: *correction,
            sqrt: *sqrt,
        },
        Op::LogSumExp { arg, axes, keepdim } => Op::LogSumExp {
            arg: m(arg),
            axes: axes.clone(),
            keepdim: *keepdim,
        },
    }
}

/// Pushes the nodes of one built-in, all with the same origin.
struct Builder<'a> {
    g: &'a mut Graph,
    origin: Origin,
}

impl Builder<'_> {
    fn push(&mut self, op: Op, ty: TensorType) -> NodeId {
        self.g
            .push(Node { op, ty, name: None }, self.origin.clone())
    }

    fn ty(&self, id: NodeId) -> TensorType {
        self.g.ty(id).clone()
    }

    /// `x` upcast to f32 when it is f16/bf16.
    fn upcast(&mut self, x: NodeId) -> NodeId {
        let ty = self.ty(x);
        if ty.dtype == DType::F32 {
            return x;
        }
        self.push(
            Op::Cast {
                arg: x,
                implicit: true,
            },
            TensorType::new(DType::F32, ty.shape),
        )
    }

    /// Finishes a built-in: casts back to `node`'s dtype and gives the last node its name.
    fn finish(&mut self, mut y: NodeId, node: &Node) -> NodeId {
        if self.g.dtype(y) != node.ty.dtype {
            y = self.push(
                Op::Cast {
                    arg: y,
                    implicit: true,
                },
                node.ty.clone(),
            );
        }
        self.g.node_mut(y).name = node.name.clone();
        y
    }

    /// `op(x, axis, keepdim=true)`.
    fn reduce(&mut self, op: ReduceOp, x: NodeId, axis: usize) -> NodeId {
        let mut ty = self.ty(x);
        if let Some(d) = ty.shape.get_mut(axis) {
            *d = Dim::new(1);
        }
        self.push(
            Op::Reduce {
                op,
                arg: x,
                axes: vec![axis],
                keepdim: true,
            },
            ty,
        )
    }

    /// An implicit broadcast of `x` to `ty`'s shape (a no-op when the shapes agree).
    fn expand(&mut self, x: NodeId, shape: &[Dim]) -> NodeId {
        let ty = self.ty(x);
        if ty.sizes() == shape.iter().map(|d| d.size).collect::<Vec<_>>() {
            return x;
        }
        self.push(
            Op::View(ViewOp::Expand { implicit: true }, x),
            TensorType::new(ty.dtype, shape.to_vec()),
        )
    }

    fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
        let shape = self.ty(a).shape;
        let b = self.expand(b, &shape);
        let ty = self.ty(a);
        self.push(Op::Binary(op, a, b), ty)
    }

    fn unary(&mut self, op: UnaryOp, a: NodeId) -> NodeId {
        let ty = self.ty(a);
        self.push(Op::Unary(op, a), ty)
    }

    fn scalar(&mut self, v: f64) -> NodeId {
        self.push(Op::Scalar(v), TensorType::scalar(DType::F32))
    }

    /// softmax = exp(x - max) / sum; log_softmax = (x - max) - log(sum(exp(x - max))).
    fn softmax(&mut self, x: NodeId, axis: usize, log: bool, node: &Node) -> NodeId {
        let x = self.upcast(x);
        let m = self.reduce(ReduceOp::Max, x, axis);
        let s = self.binary(BinaryOp::Sub, x, m);
        let e = self.unary(UnaryOp::Exp, s);
        let sum = self.reduce(ReduceOp::Sum, e, axis);
        let y = if log {
            let l = self.unary(UnaryOp::Log, sum);
            self.binary(BinaryOp::Sub, s, l)
        } else {
            self.binary(BinaryOp::Div, e, sum)
        };
        self.finish(y, node)
    }

    /// `op(x, axes)` with the result's shape as `keepdim` says.
    /// (No axes, a rank-0 operand's: `x` itself, each element its own line.)
    fn reduce_axes(&mut self, op: ReduceOp, x: NodeId, axes: &[usize], keepdim: bool) -> NodeId {
        let ty = self.ty(x);
        if axes.is_empty() {
            return x;
        }
        let shape = reduced_shape(&ty.shape, axes, keepdim);
        self.push(
            Op::Reduce {
                op,
                arg: x,
                axes: axes.to_vec(),
                keepdim,
            },
            TensorType::new(ty.dtype, shape),
        )
    }

    /// A rank-0 constant of `dtype`.
    fn constant(&mut self, v: f64, dtype: DType) -> NodeId {
        self.push(Op::Scalar(v), TensorType::scalar(dtype))
    }

    /// `op(c, x)` for a constant `c` broadcast to `x`'s shape (the constant first: of two
    /// equal values `maximum` and `minimum` give the second, `x`, so `clamp(-0.0, min=0)`
    /// is `-0.0`, as PyTorch's).
    fn const_first(&mut self, op: BinaryOp, c: NodeId, x: NodeId) -> NodeId {
        let ty = self.ty(x);
        let c = self.expand(c, &ty.shape);
        let ty = if op.is_cmp() {
            TensorType::new(DType::Bool, ty.shape)
        } else {
            ty
        };
        self.push(Op::Binary(op, c, x), ty)
    }

    /// clamp = minimum(max, maximum(min, x)), in `x`'s own dtype (the bounds are rounded to
    /// it first, as PyTorch converts them to the tensor's scalar type).
    fn clamp(&mut self, x: NodeId, min: Option<f64>, max: Option<f64>, node: &Node) -> NodeId {
        let dtype = self.ty(x).dtype;
        let mut y = x;
        if let Some(lo) = min {
            let c = self.constant(lo, dtype);
            y = self.const_first(BinaryOp::Maximum, c, y);
        }
        if let Some(hi) = max {
            let c = self.constant(hi, dtype);
            y = self.const_first(BinaryOp::Minimum, c, y);
        }
        if y == x {
            // (no bound: the checker refuses it; a copy keeps the operand's own name)
            let ty = self.ty(x);
            y = self.push(Op::Copy(x), ty);
        }
        self.finish(y, node)
    }

    /// leaky_relu = where(0 < x, x, x · slope), in f32.
    fn leaky_relu(&mut self, x: NodeId, slope: f64, node: &Node) -> NodeId {
        let x = self.upcast(x);
        let zero = self.scalar(0.0);
        let pos = self.const_first(BinaryOp::Cmp(super::graph::CmpOp::Lt), zero, x);
        let k = self.scalar(slope);
        let neg = self.binary(BinaryOp::Mul, x, k);
        let ty = self.ty(x);
        let y = self.push(Op::Where(pos, x, neg), ty);
        self.finish(y, node)
    }

    /// var = sum((x - mean)²) / max(count - correction, 0), two passes over the row (as
    /// layernorm's); std = sqrt(var).
    fn var(
        &mut self,
        x: NodeId,
        axes: &[usize],
        keepdim: bool,
        correction: f64,
        sqrt: bool,
        node: &Node,
    ) -> NodeId {
        let x = self.upcast(x);
        let count: f64 = axes
            .iter()
            .map(|&a| self.ty(x).shape[a].size as f64)
            .product();
        let mean = self.reduce_axes(ReduceOp::Mean, x, axes, true);
        let xc = self.binary(BinaryOp::Sub, x, mean);
        let sq = self.binary(BinaryOp::Mul, xc, xc);
        let s2 = self.reduce_axes(ReduceOp::Sum, sq, axes, keepdim);
        // The corrected two-pass form (Chan, Golub and LeVeque): the deviations' own sum,
        // zero in exact arithmetic, takes out the error of the mean's rounding to f32, so
        // a row far from zero (1e4 ± 0.01) keeps its variance to f32 accuracy.
        let s1 = self.reduce_axes(ReduceOp::Sum, xc, axes, keepdim);
        let s1sq = self.binary(BinaryOp::Mul, s1, s1);
        let n = self.scalar(count);
        let fix = self.binary(BinaryOp::Div, s1sq, n);
        let s = self.binary(BinaryOp::Sub, s2, fix);
        // Never below 0 by rounding (a constant row whose mean rounded off it).
        let zero = self.scalar(0.0);
        let s = self.binary(BinaryOp::Maximum, s, zero);
        let dof = self.scalar((count - correction).max(0.0));
        let v = self.binary(BinaryOp::Div, s, dof);
        let y = if sqrt {
            self.unary(UnaryOp::Sqrt, v)
        } else {
            v
        };
        self.finish(y, node)
    }

    /// logsumexp = log(sum(exp(x - m))) + m, `m` the max with ±inf replaced by 0 (as
    /// PyTorch, so a row of -inf gives -inf and a row with +inf gives +inf, not NaN): a max
    /// and a sum over the row, one row kernel.
    fn logsumexp(&mut self, x: NodeId, axes: &[usize], keepdim: bool, node: &Node) -> NodeId {
        let x = self.upcast(x);
        let m = self.reduce_axes(ReduceOp::Max, x, axes, true);
        let a = self.unary(UnaryOp::Abs, m);
        let inf = self.scalar(f64::INFINITY);
        let infinite = self.const_first(BinaryOp::Cmp(super::graph::CmpOp::Eq), inf, a);
        let zero = self.scalar(0.0);
        let mty = self.ty(m);
        let zero = self.expand(zero, &mty.shape);
        let mz = self.push(Op::Where(infinite, zero, m), mty);
        let s = self.binary(BinaryOp::Sub, x, mz);
        let e = self.unary(UnaryOp::Exp, s);
        let sum = self.reduce_axes(ReduceOp::Sum, e, axes, keepdim);
        let l = self.unary(UnaryOp::Log, sum);
        let mz = if keepdim {
            mz
        } else {
            let lty = self.ty(l);
            self.push(Op::View(ViewOp::Reshape, mz), lty)
        };
        let y = self.binary(BinaryOp::Add, l, mz);
        self.finish(y, node)
    }

    /// layernorm = (x - mean) · rsqrt(mean((x - mean)²) + eps); rmsnorm = x · rsqrt(mean(x²) + eps).
    fn norm(&mut self, x: NodeId, axis: usize, eps: f64, center: bool, node: &Node) -> NodeId {
        let x = self.upcast(x);
        let xc = if center {
            let mean = self.reduce(ReduceOp::Mean, x, axis);
            self.binary(BinaryOp::Sub, x, mean)
        } else {
            x
        };
        let sq = self.binary(BinaryOp::Mul, xc, xc);
        let var = self.reduce(ReduceOp::Mean, sq, axis);
        let eps = self.scalar(eps);
        let v = self.binary(BinaryOp::Add, var, eps);
        let r = self.unary(UnaryOp::Rsqrt, v);
        let y = self.binary(BinaryOp::Mul, xc, r);
        self.finish(y, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::testgraph::G;

    fn ops(g: &Graph) -> Vec<&'static str> {
        g.ids().map(|i| g.node(i).op.name()).collect()
    }

    #[test]
    fn softmax_becomes_max_sub_exp_sum_div() {
        let mut b = G::new();
        let x = b.input("x", DType::F32, &[4, 8]);
        let s = b.op(
            Op::Softmax {
                arg: x,
                axis: 1,
                log: false,
            },
            DType::F32,
            &[4, 8],
        );
        b.name(s, "p");
        b.output("p", s);
        let p = decompose(&b.g);
        assert_eq!(
            ops(&p),
            ["input", "max", "expand", "sub", "exp", "sum", "expand", "div"]
        );
        let last = p.outputs[0].node;
        assert_eq!(p.node(last).name.as_deref(), Some("p"));
        assert!(p.ids().skip(1).all(|i| p.origin(i).group == Some(s)));
        assert_eq!(p.ty(NodeId(1)).sizes(), vec![4, 1]);
    }

    #[test]
    fn half_layernorm_upcasts_and_casts_back() {
        let mut b = G::new();
        let x = b.input("x", DType::F16, &[2, 6]);
        let y = b.op(
            Op::LayerNorm {
                arg: x,
                axis: 1,
                eps: 1e-5,
            },
            DType::F16,
            &[2, 6],
        );
        b.output("y", y);
        let p = decompose(&b.g);
        assert_eq!(
            ops(&p),
            [
                "input", "cast", "mean", "expand", "sub", "mul", "mean", "scalar", "expand", "add",
                "rsqrt", "expand", "mul", "cast"
            ]
        );
        let out = p.outputs[0].node;
        assert_eq!(p.dtype(out), DType::F16);
        assert_eq!(p.dtype(NodeId(4)), DType::F32);
        assert_eq!(p.node(NodeId(7)).op, Op::Scalar(1e-5));
    }

    #[test]
    fn log_softmax_and_rmsnorm_shapes() {
        let mut b = G::new();
        let x = b.input("x", DType::BF16, &[3, 5]);
        let l = b.op(
            Op::Softmax {
                arg: x,
                axis: 0,
                log: true,
            },
            DType::BF16,
            &[3, 5],
        );
        let r = b.op(
            Op::RmsNorm {
                arg: l,
                axis: 1,
                eps: 1e-6,
            },
            DType::BF16,
            &[3, 5],
        );
        b.output("r", r);
        let p = decompose(&b.g);
        // Reductions keep the reduced axis as 1.
        let shapes: Vec<Vec<u64>> = p
            .ids()
            .filter(|&i| matches!(p.node(i).op, Op::Reduce { .. }))
            .map(|i| p.ty(i).sizes())
            .collect();
        assert_eq!(shapes, vec![vec![1, 5], vec![1, 5], vec![3, 1]]);
        assert_eq!(p.dtype(p.outputs[0].node), DType::BF16);
        assert_eq!(p.inputs[0].node, NodeId(0));
    }
}
