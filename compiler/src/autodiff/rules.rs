//! The derivative of each op: PyTorch's formulas (`tools/autograd/derivatives.yaml`) and
//! what each of its backward functions saves from the forward (`Tape::save`; the table is
//! in `docs/memory-planning.md`). Each formula reads only the values PyTorch saves, so the
//! eager model and the planned schedule keep the same tensors for the backward.

use super::build::Tape;
use crate::ir::graph::CmpOp;
use crate::ir::{BinaryOp, Dim, NodeId, Op, ReduceOp, SliceAxis, UnaryOp, ViewOp};

/// The contributions of `id`'s gradient `g` to each of its operands that carries gradient
/// (`req`), as (operand, contribution in f32 of the operand's shape). Emitted as one
/// backward function (one origin group). `Err` names an op with no derivative yet.
pub fn node_backward(
    t: &mut Tape,
    id: NodeId,
    g: NodeId,
    req: &[bool],
) -> Result<Vec<(NodeId, NodeId)>, String> {
    let op = t.graph().node(id).op.clone();
    let need = |n: NodeId| req[n.index()];
    t.begin();
    let mut out = Vec::new();
    match op {
        // Integer results: no gradient flows through them (SPEC §3.6).
        Op::Input { .. } | Op::Param { .. } | Op::Scalar(_) | Op::Arange | Op::OneHot { .. } => {}
        Op::Cumsum { arg, axis } => {
            if need(arg) {
                out.push((arg, cumsum_backward(t, axis, g)));
            }
        }
        Op::Concat { args, axis } => {
            // cat's backward (CatBackward0, saves only the sizes): the slice of the gradient
            // at each operand's place, a view. (`stack`'s operands are size-1 reshapes.)
            let mut at = 0;
            for a in args {
                let len = t.graph().ty(a).shape[axis].size;
                if need(a) {
                    out.push((a, t.narrow(g, axis, at, len)));
                }
                at += len;
            }
        }
        Op::Take { arg, index, axis } => {
            if need(arg) {
                out.push((arg, take_backward(t, arg, index, axis, g)));
            }
        }
        Op::Gather { arg, index, axis } => {
            if need(arg) {
                out.push((arg, gather_backward(t, arg, index, axis, g)));
            }
        }
        Op::IndexAdd {
            grad, index, axis, ..
        } => {
            // index_add's backward (IndexAddBackward0, saves the index): the gradient read
            // back at the rows the index names, `take(g, index, axis)`.
            if need(grad) {
                t.save(index);
                let ty = t.graph().ty(grad).clone();
                let gx = t.push(
                    Op::Take {
                        arg: g,
                        index,
                        axis,
                    },
                    crate::ir::TensorType::new(crate::ir::DType::F32, ty.shape),
                );
                out.push((grad, gx));
            }
        }
        Op::Unary(u, x) => {
            if need(x) {
                out.push((x, unary(t, u, x, id, g)?));
            }
        }
        Op::Binary(b, x, y) => {
            for (operand, gx) in binary(t, b, x, y, id, g, need(x), need(y))? {
                out.push((operand, gx));
            }
        }
        Op::Reduce {
            op,
            arg,
            axes,
            keepdim,
        } => {
            if need(arg) {
                out.push((arg, reduce(t, op, arg, &axes, keepdim, id, g)?));
            }
        }
        Op::Softmax { arg, axis, log } => {
            if need(arg) {
                // _softmax_backward_data(grad, result) / _log_softmax_backward_data.
                t.save(id);
                let gx = if log {
                    let s = t.reduce(ReduceOp::Sum, g, &[axis], true);
                    let p = t.un(UnaryOp::Exp, id);
                    let ps = t.mul(p, s);
                    t.sub(g, ps)
                } else {
                    let gy = t.mul(g, id);
                    let s = t.reduce(ReduceOp::Sum, gy, &[axis], true);
                    let d = t.sub(g, s);
                    t.mul(id, d)
                };
                out.push((arg, gx));
            }
        }
        Op::LayerNorm { arg, axis, eps } => {
            if need(arg) {
                // native_layer_norm_backward(grad, input, mean, rstd): mean and rstd are
                // the forward's small per-row statistics, recomputed here from the input.
                t.save(arg);
                let mu = t.reduce(ReduceOp::Mean, arg, &[axis], true);
                let xc = t.sub(arg, mu);
                let sq = t.mul(xc, xc);
                let var = t.reduce(ReduceOp::Mean, sq, &[axis], true);
                let ve = t.offset(var, eps);
                let rstd = t.un(UnaryOp::Rsqrt, ve);
                let xhat = t.mul(xc, rstd);
                let mg = t.reduce(ReduceOp::Mean, g, &[axis], true);
                let gx = t.mul(g, xhat);
                let mgx = t.reduce(ReduceOp::Mean, gx, &[axis], true);
                let a = t.sub(g, mg);
                let b = t.mul(xhat, mgx);
                let c = t.sub(a, b);
                out.push((arg, t.mul(c, rstd)));
            }
        }
        Op::RmsNorm { arg, axis, eps } => {
            if need(arg) {
                // rms_norm = x * rsqrt(mean(x²) + eps): saves the input (and the small rstd).
                t.save(arg);
                let sq = t.mul(arg, arg);
                let ms = t.reduce(ReduceOp::Mean, sq, &[axis], true);
                let me = t.offset(ms, eps);
                let r = t.un(UnaryOp::Rsqrt, me);
                let gx = t.mul(g, arg);
                let mgx = t.reduce(ReduceOp::Mean, gx, &[axis], true);
                let r2 = t.mul(r, r);
                let k = t.mul(r2, mgx);
                let xk = t.mul(arg, k);
                let d = t.sub(g, xk);
                out.push((arg, t.mul(d, r)));
            }
        }
        Op::MatMul(a, b) => {
            // mm_mat1_backward(grad, mat2) and mm_mat2_backward(grad, mat1): each operand is
            // saved only when the other needs a gradient. The product that reads a computed
            // value (an activation) comes first, so that value can be freed before the other
            // product's result is allocated (PyTorch runs both in one backward function).
            let leaf = |n: NodeId| t.graph().node(n).op.is_leaf();
            let a_first = leaf(a) || !leaf(b);
            for first in [a_first, !a_first] {
                if first && need(a) {
                    t.save(b);
                    let bt = t.transpose(b);
                    out.push((a, t.matmul(g, bt)));
                }
                if !first && need(b) {
                    t.save(a);
                    let at = t.transpose(a);
                    out.push((b, t.matmul(at, g)));
                }
            }
        }
        Op::Where(c, a, b) => {
            // where(cond, grad, 0) and where(cond, 0, grad): nothing into the condition.
            // (WhereBackward0 saves the condition.)
            if need(a) || need(b) {
                t.save(c);
            }
            let z = t.scalar(0.0, crate::ir::DType::F32);
            if need(a) {
                out.push((a, t.select(c, g, z)));
            }
            if need(b) {
                out.push((b, t.select(c, z, g)));
            }
        }
        Op::Clamp { arg, min, max } => {
            if need(arg) {
                out.push((arg, clamp(t, arg, min, max, g)));
            }
        }
        Op::LeakyRelu { arg, slope } => {
            if need(arg) {
                // leaky_relu_backward(grad, self, slope): self > 0 ? grad : grad * slope.
                t.save(arg);
                let pos = t.cmp_const(CmpOp::Gt, arg, 0.0);
                let gs = t.scale(g, slope);
                out.push((arg, t.select(pos, g, gs)));
            }
        }
        Op::Var {
            arg,
            axes,
            keepdim,
            correction,
            sqrt,
        } => {
            if need(arg) {
                out.push((arg, var(t, arg, &axes, keepdim, correction, sqrt, id, g)));
            }
        }
        Op::LogSumExp { arg, axes, keepdim } => {
            if need(arg) {
                // logsumexp_backward(grad, self, result): grad * exp(self - result).
                t.save(arg);
                t.save(id);
                let kept = kept_shape(t, arg, &axes);
                let (gk, yk) = if keepdim {
                    (g, id)
                } else {
                    (t.reshape(g, &kept), t.reshape(id, &kept))
                };
                let d = t.sub(arg, yk);
                let e = t.un(UnaryOp::Exp, d);
                out.push((arg, t.mul(gk, e)));
            }
        }
        Op::Cast { arg, .. } | Op::Copy(arg) => {
            // _to_copy and clone: the gradient passes through (gradients stay f32).
            if need(arg) {
                out.push((arg, g));
            }
        }
        Op::View(view, arg) => {
            if need(arg) {
                let shape = t.graph().ty(arg).shape.clone();
                let gx = match view {
                    ViewOp::Transpose => t.transpose(g),
                    ViewOp::Permute(perm) => {
                        let mut inv = vec![0; perm.len()];
                        for (i, &p) in perm.iter().enumerate() {
                            inv[p] = i;
                        }
                        t.permute(g, &inv)
                    }
                    ViewOp::Reshape => t.reshape(g, &shape),
                    // expand's backward is sum_to_size: a reduction, saving nothing.
                    ViewOp::Expand { .. } => t.sum_to(g, &shape),
                    ViewOp::Slice(axes) => slice_backward(t, &shape, &axes, g),
                };
                out.push((arg, gx));
            }
        }
    }
    Ok(out)
}

/// The value of a constant (a `Scalar`, through broadcasts and casts), if `id` is one.
fn constant(t: &Tape, mut id: NodeId) -> Option<f64> {
    loop {
        match &t.graph().node(id).op {
            Op::Scalar(v) => return Some(*v),
            Op::View(ViewOp::Expand { .. }, a) | Op::Cast { arg: a, .. } => id = *a,
            _ => return None,
        }
    }
}

/// `d op(x) / dx · g`; `y` is the forward result.
fn unary(t: &mut Tape, u: UnaryOp, x: NodeId, y: NodeId, g: NodeId) -> Result<NodeId, String> {
    use std::f64::consts::PI;
    Ok(match u {
        UnaryOp::Neg => t.scale(g, -1.0),
        UnaryOp::Exp => {
            t.save(y);
            t.mul(g, y)
        }
        UnaryOp::Log => {
            t.save(x);
            t.div(g, x)
        }
        UnaryOp::Sqrt => {
            // grad / (2 * result)
            t.save(y);
            let d = t.scale(y, 2.0);
            t.div(g, d)
        }
        UnaryOp::Rsqrt => {
            // -0.5 * grad * result³
            t.save(y);
            let y2 = t.mul(y, y);
            let y3 = t.mul(y2, y);
            let gy = t.mul(g, y3);
            t.scale(gy, -0.5)
        }
        UnaryOp::Sin => {
            t.save(x);
            let c = t.un(UnaryOp::Cos, x);
            t.mul(g, c)
        }
        UnaryOp::Cos => {
            t.save(x);
            let s = t.un(UnaryOp::Sin, x);
            let gs = t.mul(g, s);
            t.scale(gs, -1.0)
        }
        UnaryOp::Tanh => {
            // tanh_backward(grad, result) = grad * (1 - result²)
            t.save(y);
            let y2 = t.mul(y, y);
            let d = t.rsub(1.0, y2);
            t.mul(g, d)
        }
        UnaryOp::Sigmoid => {
            // sigmoid_backward(grad, result) = grad * result * (1 - result)
            t.save(y);
            let d = t.rsub(1.0, y);
            let yd = t.mul(y, d);
            t.mul(g, yd)
        }
        UnaryOp::Gelu => {
            // gelu_backward(grad, self): Φ(x) + x·φ(x)
            t.save(x);
            let xs = t.scale(x, std::f64::consts::FRAC_1_SQRT_2);
            let e = t.un(UnaryOp::Erf, xs);
            let e1 = t.offset(e, 1.0);
            let cdf = t.scale(e1, 0.5);
            let x2 = t.mul(x, x);
            let h = t.scale(x2, -0.5);
            let ex = t.un(UnaryOp::Exp, h);
            let pdf = t.scale(ex, 1.0 / (2.0 * PI).sqrt());
            let xp = t.mul(x, pdf);
            let d = t.add(cdf, xp);
            t.mul(g, d)
        }
        UnaryOp::Silu => {
            // silu_backward(grad, self) = grad * s * (1 + x * (1 - s)), s = sigmoid(x)
            t.save(x);
            let s = t.un(UnaryOp::Sigmoid, x);
            let one_s = t.rsub(1.0, s);
            let xs = t.mul(x, one_s);
            let k = t.offset(xs, 1.0);
            let sk = t.mul(s, k);
            t.mul(g, sk)
        }
        UnaryOp::Erf => {
            // 2 / sqrt(pi) * exp(-x²) * grad
            t.save(x);
            let x2 = t.mul(x, x);
            let n = t.scale(x2, -1.0);
            let e = t.un(UnaryOp::Exp, n);
            let d = t.scale(e, 2.0 / PI.sqrt());
            t.mul(g, d)
        }
        UnaryOp::Square => {
            // pow(self, 2): 2 * self * grad
            t.save(x);
            let gx = t.mul(g, x);
            t.scale(gx, 2.0)
        }
        UnaryOp::Abs => {
            // grad * self.sgn(): slope 0 at 0.
            t.save(x);
            let pos = t.cmp_const(CmpOp::Gt, x, 0.0);
            let neg = t.cmp_const(CmpOp::Lt, x, 0.0);
            let p = t.as_f32(pos);
            let n = t.as_f32(neg);
            let sgn = t.sub(p, n);
            t.mul(g, sgn)
        }
        UnaryOp::Relu => {
            // threshold_backward(grad, result, 0): where(result <= 0, 0, grad).
            t.save(y);
            let off = t.cmp_const(CmpOp::Le, y, 0.0);
            let z = t.scalar(0.0, crate::ir::DType::F32);
            t.select(off, z, g)
        }
        UnaryOp::Not => return Err("`logical_not`".into()),
        UnaryOp::Log1p => {
            // grad / (self + 1)
            t.save(x);
            let x1 = t.offset(x, 1.0);
            t.div(g, x1)
        }
        UnaryOp::Expm1 => {
            // grad * (result + 1)
            t.save(y);
            let y1 = t.offset(y, 1.0);
            t.mul(g, y1)
        }
        // zeros_like(grad): piecewise constant; nothing saved.
        UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round | UnaryOp::Sign => t.zeros(&shape(t, x)),
        UnaryOp::Reciprocal => {
            // -grad * (result * result)
            t.save(y);
            let y2 = t.mul(y, y);
            let gy = t.mul(g, y2);
            t.scale(gy, -1.0)
        }
        UnaryOp::Tan => {
            // grad * (1 + result²)
            t.save(y);
            let y2 = t.mul(y, y);
            let d = t.offset(y2, 1.0);
            t.mul(g, d)
        }
        UnaryOp::Softplus => {
            // softplus_backward(grad, self, 1, 20): self > 20 ? grad : grad * z / (z + 1),
            // z = exp(self); z / (z + 1) is sigmoid(self).
            t.save(x);
            let s = t.un(UnaryOp::Sigmoid, x);
            let gs = t.mul(g, s);
            let over = t.cmp_const(CmpOp::Gt, x, 20.0);
            t.select(over, g, gs)
        }
        UnaryOp::GeluTanh => {
            // gelu_backward(grad, self, "tanh"): 0.5·(1 + tanh u) + 0.5·x·(1 - tanh² u)·u',
            // u = β(x + κx³), u' = β(1 + 3κx²).
            use crate::ir::eval::{GELU_TANH_BETA as BETA, GELU_TANH_KAPPA as KAPPA};
            t.save(x);
            let x2 = t.mul(x, x);
            let x3 = t.mul(x2, x);
            let kx3 = t.scale(x3, KAPPA);
            let inner = t.add(x, kx3);
            let u = t.scale(inner, BETA);
            let th = t.un(UnaryOp::Tanh, u);
            let right = t.offset(th, 1.0);
            let left_d = t.scale(right, 0.5);
            let th2 = t.mul(th, th);
            let sech2 = t.rsub(1.0, th2);
            let k = t.scale(x2, 3.0 * KAPPA);
            let k1 = t.offset(k, 1.0);
            let du = t.scale(k1, BETA);
            let hx = t.scale(x, 0.5);
            let a = t.mul(hx, sech2);
            let right_d = t.mul(a, du);
            let d = t.add(left_d, right_d);
            t.mul(g, d)
        }
    })
}

/// `x`'s shape with the `axes` set to 1 (a reduction's result with `keepdim`).
fn kept_shape(t: &Tape, x: NodeId, axes: &[usize]) -> Vec<Dim> {
    shape(t, x)
        .into_iter()
        .enumerate()
        .map(|(i, d)| if axes.contains(&i) { Dim::new(1) } else { d })
        .collect()
}

/// clamp_backward(grad, self, min, max): the gradient where `min < self < max`
/// (strict: 0 at a bound, the minimum-norm subgradient, as `relu` and `hardtanh`; PyTorch's
/// rule for number bounds since pytorch/pytorch#191142; NaN passes none), zero elsewhere.
/// Saves `self`.
fn clamp(t: &mut Tape, x: NodeId, min: Option<f64>, max: Option<f64>, g: NodeId) -> NodeId {
    t.save(x);
    let lo = min.map(|m| t.cmp_const(CmpOp::Gt, x, m));
    let hi = max.map(|m| t.cmp_const(CmpOp::Lt, x, m));
    let mask = match (lo, hi) {
        (Some(a), Some(b)) => t.and(a, b),
        (Some(m), None) | (None, Some(m)) => m,
        // (the checker requires a bound)
        (None, None) => return g,
    };
    let z = t.scalar(0.0, crate::ir::DType::F32);
    t.select(mask, g, z)
}

/// var_backward(grad, self, dim, correction, keepdim) = (2 / (N - correction)) · grad ·
/// (self - mean(self)); std_backward first divides the gradient by 2·result (0 where the
/// result is 0). Saves `self` (and std's `result`).
#[allow(clippy::too_many_arguments)]
fn var(
    t: &mut Tape,
    x: NodeId,
    axes: &[usize],
    keepdim: bool,
    correction: f64,
    sqrt: bool,
    y: NodeId,
    g: NodeId,
) -> NodeId {
    t.save(x);
    let kept = kept_shape(t, x, axes);
    let xs = shape(t, x);
    let count: f64 = axes.iter().map(|&a| xs[a].size as f64).product();
    let gk = if keepdim { g } else { t.reshape(g, &kept) };
    let gv = if sqrt {
        t.save(y);
        let yk = if keepdim { y } else { t.reshape(y, &kept) };
        let y2 = t.scale(yk, 2.0);
        let q = t.div(gk, y2);
        let zero = t.cmp_const(CmpOp::Eq, yk, 0.0);
        let z = t.scalar(0.0, crate::ir::DType::F32);
        t.select(zero, z, q)
    } else {
        gk
    };
    let mean = t.reduce(ReduceOp::Mean, x, axes, true);
    let xc = t.sub(x, mean);
    let k = t.scale(gv, 2.0 / (count - correction));
    t.mul(k, xc)
}

/// The contributions of a binary op to its operands that carry gradient.
#[allow(clippy::too_many_arguments)]
fn binary(
    t: &mut Tape,
    b: BinaryOp,
    x: NodeId,
    y: NodeId,
    out: NodeId,
    g: NodeId,
    nx: bool,
    ny: bool,
) -> Result<Vec<(NodeId, NodeId)>, String> {
    let mut r = Vec::new();
    match b {
        BinaryOp::Add => {
            if nx {
                r.push((x, g));
            }
            if ny {
                r.push((y, g));
            }
        }
        BinaryOp::Sub => {
            if nx {
                r.push((x, g));
            }
            if ny {
                r.push((y, t.scale(g, -1.0)));
            }
        }
        BinaryOp::Mul => {
            if nx {
                t.save(y);
                r.push((x, t.mul(g, y)));
            }
            if ny {
                t.save(x);
                r.push((y, t.mul(g, x)));
            }
        }
        BinaryOp::Div => {
            // self: grad / other; other: -grad * self / (other * other)
            if nx || ny {
                t.save(y);
            }
            if nx {
                r.push((x, t.div(g, y)));
            }
            if ny {
                t.save(x);
                let gx = t.mul(g, x);
                let yy = t.mul(y, y);
                let q = t.div(gx, yy);
                r.push((y, t.scale(q, -1.0)));
            }
        }
        BinaryOp::Pow => {
            if nx {
                t.save(x);
                match constant(t, y) {
                    // pow_backward(grad, self, exponent): zeros for exponent 0.
                    Some(0.0) => r.push((x, t.zeros(&shape(t, x)))),
                    Some(c) => {
                        let c1 = t.scalar(c - 1.0, crate::ir::DType::F32);
                        let p = t.bin(BinaryOp::Pow, x, c1);
                        let k = t.scale(p, c);
                        r.push((x, t.mul(g, k)));
                    }
                    None => {
                        // pow_backward_self: where(exponent == 0, 0, grad * e * self^(e-1)).
                        t.save(y);
                        let one = t.scalar(1.0, crate::ir::DType::F32);
                        let e1 = t.sub(y, one);
                        let p = t.bin(BinaryOp::Pow, x, e1);
                        let k = t.mul(y, p);
                        let gk = t.mul(g, k);
                        let zero_e = t.cmp_const(CmpOp::Eq, y, 0.0);
                        let z = t.scalar(0.0, crate::ir::DType::F32);
                        r.push((x, t.select(zero_e, z, gk)));
                    }
                }
            }
            if ny {
                // pow_backward_exponent: where(self == 0 & exponent >= 0, 0, grad * result * log(self)).
                t.save(x);
                t.save(y);
                t.save(out);
                let l = t.un(UnaryOp::Log, x);
                let rl = t.mul(out, l);
                let gr = t.mul(g, rl);
                let x0 = t.cmp_const(CmpOp::Eq, x, 0.0);
                let e0 = t.cmp_const(CmpOp::Ge, y, 0.0);
                let both = t.and(x0, e0);
                let z = t.scalar(0.0, crate::ir::DType::F32);
                r.push((y, t.select(both, z, gr)));
            }
        }
        BinaryOp::Maximum | BinaryOp::Minimum => {
            // where(self == other, grad / 2, grad).masked_fill_(self < other, 0) for maximum's
            // self (self > other for minimum's), and the mirror for other.
            t.save(x);
            t.save(y);
            let half = t.scale(g, 0.5);
            let tie = t.cmp(CmpOp::Eq, x, y);
            let shared = t.select(tie, half, g);
            let z = t.scalar(0.0, crate::ir::DType::F32);
            let (lose_x, lose_y) = if b == BinaryOp::Maximum {
                (CmpOp::Lt, CmpOp::Gt)
            } else {
                (CmpOp::Gt, CmpOp::Lt)
            };
            if nx {
                let m = t.cmp(lose_x, x, y);
                r.push((x, t.select(m, z, shared)));
            }
            if ny {
                let m = t.cmp(lose_y, x, y);
                r.push((y, t.select(m, z, shared)));
            }
        }
        // Comparisons and logic give `bool`: no gradient passes through them.
        BinaryOp::Cmp(_) | BinaryOp::And | BinaryOp::Or => {}
    }
    Ok(r)
}

fn shape(t: &Tape, id: NodeId) -> Vec<Dim> {
    t.graph().ty(id).shape.clone()
}

/// The gradient of a reduction: `g` broadcast back over the reduced axes.
fn reduce(
    t: &mut Tape,
    op: ReduceOp,
    x: NodeId,
    axes: &[usize],
    keepdim: bool,
    y: NodeId,
    g: NodeId,
) -> Result<NodeId, String> {
    let xs = shape(t, x);
    let kept: Vec<Dim> = xs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if axes.contains(&i) {
                Dim::new(1)
            } else {
                d.clone()
            }
        })
        .collect();
    let gk = if keepdim { g } else { t.reshape(g, &kept) };
    Ok(match op {
        // sum_backward: grad.expand(sizes); saves nothing.
        ReduceOp::Sum => t.expand(gk, &xs),
        ReduceOp::Mean => {
            let n: u64 = axes.iter().map(|&a| xs[a].size).product();
            let s = t.scale(gk, 1.0 / n as f64);
            t.expand(s, &xs)
        }
        ReduceOp::Max | ReduceOp::Min => {
            // amax/amin: scale_grad_by_count(grad, result == self) = grad / count * mask.
            t.save(x);
            t.save(y);
            let yk = if keepdim { y } else { t.reshape(y, &kept) };
            let eq = t.cmp(CmpOp::Eq, x, yk);
            let mask = t.as_f32(eq);
            let count = t.reduce(ReduceOp::Sum, mask, axes, true);
            let share = t.div(gk, count);
            t.mul(share, mask)
        }
        // argmax/argmin give integers: nothing to differentiate.
        ReduceOp::ArgMax | ReduceOp::ArgMin => return Err(format!("`{}`", op.name())),
    })
}

/// `take(x, idx, axis)`'s gradient: `g` added back into the rows of `x` it read
/// (`index_select_backward` / `embedding_dense_backward`: `zeros(x.shape).index_add_(axis,
/// idx, grad)`; saves `idx`). One `index_add` node, its own kernel: the table's rows in
/// ranges, each range walking the index in order and adding the gradient of the positions
/// that name its rows, so each row is the sum of its positions' gradients in ascending
/// position order and both executors give the same bits every run with no atomics;
/// `N · row` adds, where the comparison of every index with every row
/// (`where(idx == v, g, 0)` summed over the positions) was `V · N`.
fn take_backward(t: &mut Tape, x: NodeId, idx: NodeId, axis: usize, g: NodeId) -> NodeId {
    t.save(idx);
    let xs = shape(t, x);
    let g = t.f32(g);
    let ty = crate::ir::TensorType::new(crate::ir::DType::F32, xs.clone());
    t.push(
        Op::IndexAdd {
            grad: g,
            index: idx,
            axis,
            size: xs[axis].size,
        },
        ty,
    )
}

/// `gather(x, idx, axis)`'s gradient (`take_along_axis` with broadcasting): `g` added back
/// into the entries it read (`gather_backward`: `zeros(x.shape).scatter_add_(axis, idx,
/// grad)`; saves `idx` and `x`), then summed over the axes on which `x` was broadcast. As
/// for `take`, a sum over the index's `axis` of `where(idx == v, g, 0)` with `v` the
/// entry's position along `axis`: one fused reduction, or (an index of one entry per row,
/// a label) one elementwise kernel.
fn gather_backward(t: &mut Tape, x: NodeId, idx: NodeId, axis: usize, g: NodeId) -> NodeId {
    t.save(idx);
    t.save(x);
    let xs = shape(t, x);
    let os = shape(t, g);
    let is = shape(t, idx);
    if os[axis].size == 1 {
        // One entry per row (a label): `where(idx == v, g, 0)` at x's size on `axis`,
        // elementwise, with no extra axis to sum (nor a reshape between it and the next
        // gradient's kernel).
        let rows = t.arange_on(&xs[axis], axis, os.len());
        let hit = t.index_eq(idx, rows);
        let z = t.scalar(0.0, crate::ir::DType::F32);
        let picked = t.select(hit, g, z);
        return t.sum_to(picked, &xs);
    }
    let rank = os.len() + 1;
    // Insert an axis after `axis` for the index's entries: [out[..=axis'], K, out[axis+1..]]
    // where axis' holds the entry positions (size V for the rows, 1 for the rest).
    let widen = |s: &[Dim], at: Dim| {
        let mut v = s[..axis].to_vec();
        v.push(at);
        v.extend_from_slice(&s[axis..]);
        v
    };
    let gr = t.reshape(g, &widen(&os, Dim::new(1)));
    let ir = t.reshape(idx, &widen(&is, Dim::new(1)));
    let rows = t.arange_on(&xs[axis], axis, rank);
    let hit = t.index_eq(ir, rows);
    let z = t.scalar(0.0, crate::ir::DType::F32);
    let picked = t.select(hit, gr, z);
    // The result's shape but with x's size on `axis` (x may broadcast on the others).
    let mut full = os.clone();
    full[axis] = xs[axis].clone();
    let s = sum_out(t, picked, &[axis + 1], &full);
    t.sum_to(s, &xs)
}

/// `x` summed over `axes` (sorted) down to `shape`: a reshape when those axes all have
/// size 1.
fn sum_out(t: &mut Tape, x: NodeId, axes: &[usize], to: &[Dim]) -> NodeId {
    let xs = shape(t, x);
    if axes.iter().all(|&a| xs[a].size == 1) {
        return t.reshape(x, to);
    }
    let s = t.reduce(ReduceOp::Sum, x, axes, false);
    t.reshape(s, to)
}

/// `cumsum`'s gradient, the reversed cumulative sum of `g` (`cumsum_backward`:
/// `grad.flip(dim).cumsum(dim).flip(dim)`; saves nothing): each flip a gather by an index
/// computed in its kernel. Three ops, as PyTorch runs them (each its own step of the eager
/// model: PyTorch allocates each result).
fn cumsum_backward(t: &mut Tape, axis: usize, g: NodeId) -> NodeId {
    if shape(t, g)[axis].size == 1 {
        return g;
    }
    let r = t.flip(g, axis);
    t.begin();
    let ty = t.graph().ty(r).clone();
    let c = t.push(Op::Cumsum { arg: r, axis }, ty);
    t.begin();
    t.flip(c, axis)
}

/// A slice's gradient (`slice_backward`: zeros of the operand's shape with `g` written at
/// the region; saves nothing): `g` padded with zeros by a `concat` on each axis the slice
/// does not take whole, so `g` is written straight into its place (the region write of a
/// concat) and the zeros are a fill. A step `s > 1` first interleaves `s - 1` zeros after
/// each entry (a concat on a new axis, reshaped). Each axis's concat is its own step of the
/// eager model (tc allocates each; PyTorch's one zero-filled tensor is the last of them).
fn slice_backward(t: &mut Tape, xs: &[Dim], axes: &[SliceAxis], g: NodeId) -> NodeId {
    // The gradient with the axes an integer index removed put back (size 1).
    let gs = shape(t, g);
    let mut kept = gs.iter();
    let mut cur_shape: Vec<Dim> = axes
        .iter()
        .map(|a| {
            if a.keep {
                kept.next().cloned().unwrap_or_else(|| Dim::new(1))
            } else {
                Dim::new(1)
            }
        })
        .collect();
    let mut cur = t.reshape(g, &cur_shape);
    for (k, a) in axes.iter().enumerate() {
        let n = cur_shape[k].size;
        let whole = xs[k].size;
        let step = if a.keep && n > 1 { a.step } else { 1 };
        if a.start == 0 && n == whole && step == 1 {
            continue;
        }
        t.begin();
        let mut len = n;
        if step > 1 {
            // [.., n, 1, ..] beside zeros [.., n, s - 1, ..] → [.., n·s, ..] → its first
            // (n - 1)·s + 1 entries.
            let mut col = cur_shape.clone();
            col.insert(k + 1, Dim::new(1));
            let c = t.reshape(cur, &col);
            let mut zs = col.clone();
            zs[k + 1] = Dim::new(step - 1);
            let z = t.zeros(&zs);
            let wide = t.concat(vec![c, z], k + 1);
            let mut flat = cur_shape.clone();
            flat[k] = Dim::new(n * step);
            let w = t.reshape(wide, &flat);
            len = (n - 1) * step + 1;
            cur = t.narrow(w, k, 0, len);
        }
        let after = whole - a.start - len;
        let mut parts = Vec::new();
        for (pad, at_end) in [(a.start, false), (after, true)] {
            if pad == 0 {
                continue;
            }
            let mut zs = cur_shape.clone();
            zs[k] = Dim::new(pad);
            let z = t.zeros(&zs);
            if at_end {
                parts.push(z);
            } else {
                parts.insert(0, z);
            }
        }
        // (the region itself between the two paddings)
        let mid = usize::from(a.start > 0);
        parts.insert(mid, cur);
        if parts.len() > 1 {
            cur = t.concat(parts, k);
        }
        cur_shape[k] = xs[k].clone();
    }
    t.reshape(cur, xs)
}
