//! Built-in functions: argument binding (positional and keyword), then the dtype and shape
//! rule of each built-in (elementwise, reductions, row ops, views, casts).

use super::{hint, Checker, Val, Weak};
use crate::diag::{Diagnostic, ErrorKind, Span};
use crate::ir::{reduced_shape, BinaryOp, DType, Dim, Op, ReduceOp, TensorType, UnaryOp, ViewOp};
use crate::syntax::ast::{Arg, Expr, ExprKind, Ident};

/// The parameters of each built-in, in positional order. The first is the tensor argument.
fn params(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "maximum" | "minimum" | "logical_and" | "logical_or" => &["a", "b"],
        "where" => &["cond", "a", "b"],
        "sum" | "mean" | "max" | "min" | "any" | "all" | "logsumexp" => &["x", "axis", "keepdim"],
        "var" | "std" => &["x", "axis", "keepdim", "correction"],
        "clamp" => &["x", "min", "max"],
        "leaky_relu" => &["x", "slope"],
        "softmax" | "log_softmax" => &["x", "axis"],
        "layernorm" | "rmsnorm" => &["x", "axis", "eps"],
        "transpose" => &["x", "dim0", "dim1"],
        "squeeze" | "unsqueeze" => &["x", "axis"],
        "concat" | "stack" => &["tensors", "axis"],
        "f32" | "f16" | "bf16" | "i32" | "i64" | "bool" => &["x"],
        "permute" => &["x", "dims"],
        "reshape" | "expand" => &["x", "shape"],
        "grad" => &["loss", "wrt"],
        "detach" => &["x"],
        _ if UnaryOp::from_function(name).is_some() => &["x"],
        _ => return super::indices::params(name),
    })
}

/// Every built-in function name (for hints).
const BUILTINS: &[&str] = &[
    "abs",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "relu",
    "gelu",
    "silu",
    "erf",
    "square",
    "log1p",
    "expm1",
    "floor",
    "ceil",
    "round",
    "sign",
    "reciprocal",
    "tan",
    "softplus",
    "gelu_tanh",
    "clamp",
    "leaky_relu",
    "var",
    "std",
    "logsumexp",
    "logical_not",
    "logical_and",
    "logical_or",
    "where",
    "maximum",
    "minimum",
    "sum",
    "mean",
    "max",
    "min",
    "any",
    "all",
    "softmax",
    "log_softmax",
    "layernorm",
    "rmsnorm",
    "transpose",
    "squeeze",
    "unsqueeze",
    "concat",
    "stack",
    "permute",
    "reshape",
    "expand",
    "f32",
    "f16",
    "bf16",
    "i32",
    "i64",
    "bool",
    "grad",
    "detach",
];

pub(super) fn is_builtin(name: &str) -> bool {
    params(name).is_some()
}

impl Checker<'_> {
    pub(super) fn call(&mut self, func: &Ident, args: &[Arg], span: &Span, depth: usize) -> Val {
        let name = func.name.as_str();
        let Some(params) = params(name) else {
            let mut d = Diagnostic::error(
                ErrorKind::UnknownFunction,
                format!("unknown function `{name}`"),
            )
            .with_primary(func.span.clone(), "not a built-in function");
            if self.env.contains_key(name) {
                d = d.with_note(format!("`{name}` is a value; only built-ins can be called"));
            }
            let names = BUILTINS.iter().chain(super::indices::NAMES).copied();
            if let Some(h) = hint::nearest(name, names) {
                d = d.with_help(format!("did you mean `{h}`?"));
            }
            self.error(d);
            // Still check the arguments, for their own errors.
            for a in args {
                if !matches!(a.value.kind, ExprKind::List(_) | ExprKind::Bool(_)) {
                    self.expr_at(&a.value, depth + 1);
                }
            }
            return Val::Error;
        };
        let Some(bound) = self.bind_args(func, params, args, span) else {
            return Val::Error;
        };
        if matches!(name, "concat" | "stack") {
            return self.join(name, &bound, span, depth);
        }
        if super::indices::params(name).is_some() {
            return self.index_call(name, &bound, span, depth);
        }
        if name == "grad" || name == "detach" {
            return self.grad_builtin(name, &bound, span, depth);
        }
        let (x_expr, x) = match bound[0] {
            Some(e) => (e, self.expr_at(e, depth + 1)),
            None => return Val::Error,
        };
        if let Some(op) = UnaryOp::from_function(name) {
            return self.unary(op, x, &x_expr.span, span);
        }
        match name {
            "maximum" | "minimum" | "logical_and" | "logical_or" => {
                let Some(b_expr) = bound[1] else {
                    return Val::Error;
                };
                let b = self.expr_at(b_expr, depth + 1);
                let op = match name {
                    "maximum" => BinaryOp::Maximum,
                    "minimum" => BinaryOp::Minimum,
                    "logical_and" => BinaryOp::And,
                    _ => BinaryOp::Or,
                };
                self.binary(op, (x, &x_expr.span), (b, &b_expr.span), span)
            }
            "clamp" => self.clamp(x, &x_expr.span, &bound, span, depth),
            "leaky_relu" => {
                let slope = match bound[1] {
                    None => 0.01,
                    Some(e) => match self.number_arg(e, "slope", "leaky_relu", depth) {
                        Some(w) => w.as_f64(),
                        None => return Val::Error,
                    },
                };
                let Some(id) = self.materialize(x, DType::F32, &x_expr.span) else {
                    return Val::Error;
                };
                let dt = self.graph.dtype(id).float_or_f32();
                let id = self.coerce_dtype(id, dt, &x_expr.span);
                let ty = self.graph.ty(id).clone();
                Val::Tensor(self.push(Op::LeakyRelu { arg: id, slope }, ty, span))
            }
            "where" => {
                let (Some(a_expr), Some(b_expr)) = (bound[1], bound[2]) else {
                    return Val::Error;
                };
                let a = self.expr_at(a_expr, depth + 1);
                let b = self.expr_at(b_expr, depth + 1);
                self.select(
                    (x, &x_expr.span),
                    (a, &a_expr.span),
                    (b, &b_expr.span),
                    span,
                )
            }
            "f32" | "f16" | "bf16" | "i32" | "i64" | "bool" => {
                let dtype = DType::from_name(name).unwrap_or(DType::F32);
                // A weak scalar becomes a tensor of the target dtype; to an integer or
                // `bool` by way of its own dtype, so `bool(0.5)` is true.
                let via = match x {
                    Val::Weak(w) if dtype.is_integral() => w.dtype(),
                    _ => dtype,
                };
                let Some(id) = self.materialize(x, via, &x_expr.span) else {
                    return Val::Error;
                };
                if self.graph.dtype(id) == dtype {
                    return Val::Tensor(id);
                }
                let ty = TensorType::new(dtype, self.graph.ty(id).shape.clone());
                Val::Tensor(self.push(
                    Op::Cast {
                        arg: id,
                        implicit: false,
                    },
                    ty,
                    span,
                ))
            }
            _ => {
                let Some(id) = self.materialize(x, DType::F32, &x_expr.span) else {
                    return Val::Error;
                };
                let ty = self.graph.ty(id).clone();
                self.tensor_builtin(name, id, &ty, &x_expr.span, &bound, span)
            }
        }
    }

    /// Matches arguments to parameters; `None` after reporting a mismatch.
    fn bind_args<'e>(
        &mut self,
        func: &Ident,
        params: &[&'static str],
        args: &'e [Arg],
        span: &Span,
    ) -> Option<Vec<Option<&'e Expr>>> {
        let mut bound: Vec<Option<&Expr>> = vec![None; params.len()];
        let mut ok = true;
        let mut positional = 0;
        for a in args {
            let slot = match &a.name {
                None => {
                    positional += 1;
                    if positional > params.len() {
                        self.error(
                            Diagnostic::error(
                                ErrorKind::BadArgument,
                                format!("`{}` takes at most {} arguments", func.name, params.len()),
                            )
                            .with_primary(a.span.clone(), "one too many")
                            .with_note(signature(&func.name, params)),
                        );
                        ok = false;
                        continue;
                    }
                    positional - 1
                }
                Some(k) => match params.iter().position(|p| *p == k.name) {
                    Some(i) if i > 0 => i,
                    _ => {
                        let mut d = Diagnostic::error(
                            ErrorKind::BadArgument,
                            format!("`{}` has no argument `{}`", func.name, k.name),
                        )
                        .with_primary(k.span.clone(), "unknown keyword")
                        .with_note(signature(&func.name, params));
                        if let Some(h) = hint::nearest(&k.name, params[1..].iter().copied()) {
                            d = d.with_help(format!("did you mean `{h}=`?"));
                        }
                        self.error(d);
                        ok = false;
                        continue;
                    }
                },
            };
            if bound[slot].is_some() {
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadArgument,
                        format!("argument `{}` given twice", params[slot]),
                    )
                    .with_primary(a.span.clone(), "given again here"),
                );
                ok = false;
                continue;
            }
            bound[slot] = Some(&a.value);
        }
        let required = match func.name.as_str() {
            "maximum" | "minimum" | "permute" | "reshape" | "expand" | "logical_and"
            | "logical_or" | "unsqueeze" | "grad" => 2,
            "where" => 3,
            _ => super::indices::required(&func.name),
        };
        for (i, p) in params.iter().enumerate().take(required) {
            if bound[i].is_none() {
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadArgument,
                        format!("`{}` is missing its argument `{p}`", func.name),
                    )
                    .with_primary(span.clone(), "in this call")
                    .with_note(signature(&func.name, params)),
                );
                ok = false;
            }
        }
        ok.then_some(bound)
    }

    /// Reductions, row operations and views on the tensor `id` of type `ty`.
    fn tensor_builtin(
        &mut self,
        name: &str,
        id: crate::ir::NodeId,
        ty: &TensorType,
        x_span: &Span,
        bound: &[Option<&Expr>],
        span: &Span,
    ) -> Val {
        let rank = ty.rank();
        match name {
            "sum" | "mean" | "max" | "min" | "any" | "all" => {
                let op = match name {
                    "sum" => ReduceOp::Sum,
                    "mean" => ReduceOp::Mean,
                    "max" | "any" => ReduceOp::Max,
                    _ => ReduceOp::Min,
                };
                // `sum` of `bool`/`i32` is i64; `mean` of integers is f32; `any`/`all` are
                // the `max`/`min` of the operand read as `bool`.
                let to = match name {
                    "sum" if ty.dtype.is_integral() => DType::I64,
                    "mean" => ty.dtype.float_or_f32(),
                    "any" | "all" => DType::Bool,
                    _ => ty.dtype,
                };
                let id = self.coerce_dtype(id, to, x_span);
                let ty = &self.graph.ty(id).clone();
                let Some((axes, keepdim)) = self.reduction_axes(bound[1], bound[2], ty) else {
                    return Val::Error;
                };
                if axes.is_empty() {
                    // A rank-0 reduction over all (no) axes is its argument.
                    return Val::Tensor(id);
                }
                let shape: Vec<Dim> = reduced_shape(&ty.shape, &axes, keepdim);
                let out = TensorType::new(ty.dtype, shape);
                Val::Tensor(self.push(
                    Op::Reduce {
                        op,
                        arg: id,
                        axes,
                        keepdim,
                    },
                    out,
                    span,
                ))
            }
            "var" | "std" | "logsumexp" => {
                // Float-only: integers and `bool` compute in f32.
                let id = self.coerce_dtype(id, ty.dtype.float_or_f32(), x_span);
                let ty = &self.graph.ty(id).clone();
                let Some((axes, keepdim)) = self.reduction_axes(bound[1], bound[2], ty) else {
                    return Val::Error;
                };
                let correction = match bound.get(3).copied().flatten() {
                    None => 1.0,
                    Some(e) => match self.float(e, "correction") {
                        Some(v) => v,
                        None => return Val::Error,
                    },
                };
                let shape: Vec<Dim> = reduced_shape(&ty.shape, &axes, keepdim);
                let op = match name {
                    "logsumexp" => Op::LogSumExp {
                        arg: id,
                        axes,
                        keepdim,
                    },
                    _ => Op::Var {
                        arg: id,
                        axes,
                        keepdim,
                        correction,
                        sqrt: name == "std",
                    },
                };
                Val::Tensor(self.push(op, TensorType::new(ty.dtype, shape), span))
            }
            "softmax" | "log_softmax" | "layernorm" | "rmsnorm" => {
                // Float-only: integers and `bool` compute in f32.
                let id = self.coerce_dtype(id, ty.dtype.float_or_f32(), x_span);
                let ty = &self.graph.ty(id).clone();
                let axis = match bound[1] {
                    None => self.normalize_axis(-1, ty, x_span),
                    Some(e) => self
                        .const_int(e, ErrorKind::BadAxis)
                        .and_then(|a| self.normalize_axis(a, ty, &e.span)),
                };
                let Some(axis) = axis else { return Val::Error };
                let default_eps = if name == "layernorm" { 1e-5 } else { 1e-6 };
                let eps = match bound.get(2).copied().flatten() {
                    None => default_eps,
                    Some(e) => match self.float(e, "eps") {
                        Some(v) => v,
                        None => return Val::Error,
                    },
                };
                let op = match name {
                    "softmax" => Op::Softmax {
                        arg: id,
                        axis,
                        log: false,
                    },
                    "log_softmax" => Op::Softmax {
                        arg: id,
                        axis,
                        log: true,
                    },
                    "layernorm" => Op::LayerNorm { arg: id, axis, eps },
                    _ => Op::RmsNorm { arg: id, axis, eps },
                };
                Val::Tensor(self.push(op, ty.clone(), span))
            }
            "transpose" if bound[1].is_some() || bound[2].is_some() => {
                let (Some(a), Some(b)) = (bound[1], bound[2]) else {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadArgument,
                            "`transpose` takes two axes or none",
                        )
                        .with_primary(span.clone(), "one axis given")
                        .with_note("`transpose(x)` swaps the last two axes; `transpose(x, 0, 2)` swaps axes 0 and 2"),
                    );
                    return Val::Error;
                };
                let a = self
                    .const_int(a, ErrorKind::BadAxis)
                    .and_then(|v| self.normalize_axis(v, ty, &a.span));
                let b = self
                    .const_int(b, ErrorKind::BadAxis)
                    .and_then(|v| self.normalize_axis(v, ty, &b.span));
                let (Some(a), Some(b)) = (a, b) else {
                    return Val::Error;
                };
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(a, b);
                let shape = perm.iter().map(|&p| ty.shape[p].clone()).collect();
                Val::Tensor(self.push(
                    Op::View(ViewOp::Permute(perm), id),
                    TensorType::new(ty.dtype, shape),
                    span,
                ))
            }
            "transpose" => {
                if rank < 2 {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadRank,
                            format!("`transpose` needs rank 2 or more, but this is {ty}"),
                        )
                        .with_primary(x_span.clone(), format!("this is {ty}"))
                        .with_note(
                            "`transpose(x)` swaps the last two axes; use `permute` for others",
                        ),
                    );
                    return Val::Error;
                }
                let mut shape = ty.shape.clone();
                shape.swap(rank - 1, rank - 2);
                Val::Tensor(self.push(
                    Op::View(ViewOp::Transpose, id),
                    TensorType::new(ty.dtype, shape),
                    span,
                ))
            }
            "squeeze" | "unsqueeze" => {
                let shape = if name == "squeeze" {
                    // PyTorch: without `axis` every size-1 axis goes; a named axis whose size
                    // is not 1 stays (no error).
                    let axes = match bound[1] {
                        None => (0..rank).collect(),
                        Some(e) => match self.axes(e, ty) {
                            Some(a) => a,
                            None => return Val::Error,
                        },
                    };
                    ty.shape
                        .iter()
                        .enumerate()
                        .filter(|(i, d)| !(axes.contains(i) && d.size == 1))
                        .map(|(_, d)| d.clone())
                        .collect::<Vec<Dim>>()
                } else {
                    let Some(e) = bound[1] else { return Val::Error };
                    let Some(v) = self.const_int(e, ErrorKind::BadAxis) else {
                        return Val::Error;
                    };
                    // The new axis's position in the result, of rank + 1 axes.
                    let r = rank as i128 + 1;
                    if v < -r || v >= r {
                        self.error(
                            Diagnostic::error(
                                ErrorKind::BadAxis,
                                format!("axis {v} is out of range for `unsqueeze` of {ty}"),
                            )
                            .with_primary(e.span.clone(), format!("axis {v}"))
                            .with_note(format!(
                                "the result has {r} axes: the new one may be at {} to {}",
                                -r,
                                r - 1
                            )),
                        );
                        return Val::Error;
                    }
                    let axis = if v < 0 { v + r } else { v } as usize;
                    let mut s = ty.shape.clone();
                    s.insert(axis, Dim::new(1));
                    s
                };
                // Adding or removing axes of size 1 always has strides: a view.
                let out = TensorType::new(ty.dtype, shape);
                Val::Tensor(self.push(Op::View(ViewOp::Reshape, id), out, span))
            }
            "permute" => {
                let Some(e) = bound[1] else { return Val::Error };
                let Some(perm) = self.permutation(e, ty) else {
                    return Val::Error;
                };
                let shape = perm.iter().map(|&p| ty.shape[p].clone()).collect();
                Val::Tensor(self.push(
                    Op::View(ViewOp::Permute(perm), id),
                    TensorType::new(ty.dtype, shape),
                    span,
                ))
            }
            "reshape" => {
                let Some(e) = bound[1] else { return Val::Error };
                let Some(shape) = self.reshape_target(e, ty) else {
                    return Val::Error;
                };
                let out = TensorType::new(ty.dtype, shape);
                let layout = &self.layouts[id.index()];
                let fits = crate::ir::layout::apply_view(
                    &ViewOp::Reshape,
                    layout,
                    &ty.sizes(),
                    &out.sizes(),
                )
                .is_some();
                // No strides express it (after a permute, say): copy first, as torch.reshape.
                let src = if fits {
                    id
                } else {
                    self.push(Op::Copy(id), ty.clone(), x_span)
                };
                Val::Tensor(self.push(Op::View(ViewOp::Reshape, src), out, span))
            }
            "expand" => {
                let Some(e) = bound[1] else { return Val::Error };
                let Some(shape) = self.expand_target(e, ty) else {
                    return Val::Error;
                };
                let out = TensorType::new(ty.dtype, shape);
                Val::Tensor(self.push(Op::View(ViewOp::Expand { implicit: false }, id), out, span))
            }
            _ => Val::Error,
        }
    }

    /// A number argument (`min=`, `slope=`): a constant expression of literals and dims,
    /// finite; `None` after reporting anything else.
    fn number_arg(&mut self, e: &Expr, what: &str, func: &str, depth: usize) -> Option<Weak> {
        match self.expr_at(e, depth + 1) {
            Val::Weak(w) if w.as_f64().is_finite() => Some(w),
            Val::Error => None,
            v => {
                let this = match v {
                    Val::Tensor(id) => format!("this is {}", self.graph.ty(id)),
                    _ => "this is not finite".to_string(),
                };
                let mut d = Diagnostic::error(
                    ErrorKind::BadArgument,
                    format!("`{what}` of `{func}` must be a finite number"),
                )
                .with_primary(e.span.clone(), this);
                if func == "clamp" && matches!(v, Val::Tensor(_)) {
                    d = d.with_help(
                        "to clamp by a tensor, use `maximum(x, lo)` and `minimum(x, hi)`",
                    );
                }
                self.error(d);
                None
            }
        }
    }

    /// `clamp(x, min=…, max=…)`: at least one bound, each a number; `x` and the bounds
    /// promote as for arithmetic (`clamp(i32, min=0)` is i32, `clamp(i32, min=0.5)` f32).
    fn clamp(
        &mut self,
        x: Val,
        x_span: &Span,
        bound: &[Option<&Expr>],
        span: &Span,
        depth: usize,
    ) -> Val {
        let mut bounds: [Option<Weak>; 2] = [None, None];
        let mut ok = true;
        for (slot, what) in [(1, "min"), (2, "max")] {
            if let Some(e) = bound[slot] {
                match self.number_arg(e, what, "clamp", depth) {
                    Some(w) => bounds[slot - 1] = Some(w),
                    None => ok = false,
                }
            }
        }
        if !ok || matches!(x, Val::Error) {
            return Val::Error;
        }
        if bounds.iter().all(Option::is_none) {
            self.error(
                Diagnostic::error(
                    ErrorKind::BadArgument,
                    "`clamp` needs `min=`, `max=` or both",
                )
                .with_primary(span.clone(), "no bound given")
                .with_note(signature("clamp", &["x", "min", "max"])),
            );
            return Val::Error;
        }
        let mut vals = vec![x];
        vals.extend(bounds.iter().flatten().map(|w| Val::Weak(*w)));
        let dtype = match x {
            // A number alone takes its own kind with its bounds': f32, or i64 for integers.
            Val::Weak(w) => bounds
                .iter()
                .flatten()
                .fold(w.dtype(), |d, b| DType::promote(d, b.dtype())),
            _ => self.result_dtype(&vals),
        };
        let Some(id) = self.materialize(x, dtype, x_span) else {
            return Val::Error;
        };
        let id = self.coerce_dtype(id, dtype, x_span);
        let ty = self.graph.ty(id).clone();
        let [min, max] = bounds.map(|b| b.map(Weak::as_f64));
        Val::Tensor(self.push(Op::Clamp { arg: id, min, max }, ty, span))
    }

    /// `where(cond, a, b)`: `cond` must be `bool`; `a` and `b` promote as for arithmetic;
    /// the three broadcast.
    fn select(&mut self, c: (Val, &Span), a: (Val, &Span), b: (Val, &Span), span: &Span) -> Val {
        if matches!(c.0, Val::Error) || matches!(a.0, Val::Error) || matches!(b.0, Val::Error) {
            return Val::Error;
        }
        let cond = match c.0 {
            Val::Tensor(id) if self.graph.dtype(id) == DType::Bool => id,
            other => {
                let what = match other {
                    Val::Tensor(id) => self.graph.ty(id).to_string(),
                    _ => "a number".to_string(),
                };
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadDtype,
                        format!("the condition of `where` must be bool, but this is {what}"),
                    )
                    .with_primary(c.1.clone(), format!("this is {what}"))
                    .with_help("compare to make a condition, e.g. `where(x > 0, x, 0)`"),
                );
                return Val::Error;
            }
        };
        let dtype = match (a.0, b.0) {
            // Two weak scalars alone take their own kind: f32, or i64 for two integers.
            (Val::Weak(x), Val::Weak(y)) => DType::promote(x.dtype(), y.dtype()),
            _ => self.result_dtype(&[a.0, b.0]),
        };
        let (Some(ia), Some(ib)) = (
            self.materialize(a.0, dtype, a.1),
            self.materialize(b.0, dtype, b.1),
        ) else {
            return Val::Error;
        };
        let (tc, ta, tb) = (
            self.graph.ty(cond).clone(),
            self.graph.ty(ia).clone(),
            self.graph.ty(ib).clone(),
        );
        let shape = crate::ir::types::broadcast_dims(&ta.shape, &tb.shape)
            .and_then(|s| crate::ir::types::broadcast_dims(&tc.shape, &s));
        let Some(shape) = shape else {
            self.error(
                Diagnostic::error(
                    ErrorKind::ShapeMismatch,
                    format!("shapes do not broadcast: where({tc}, {ta}, {tb})"),
                )
                .with_primary(span.clone(), "in this `where`")
                .with_secondary(c.1.clone(), format!("this is {tc}"))
                .with_secondary(a.1.clone(), format!("this is {ta}"))
                .with_secondary(b.1.clone(), format!("this is {tb}"))
                .with_note(
                    "shapes align from the right; two sizes broadcast when equal or when one is 1",
                ),
            );
            return Val::Error;
        };
        let ia = self.coerce_dtype(ia, dtype, a.1);
        let ib = self.coerce_dtype(ib, dtype, b.1);
        let ic = self.coerce_shape(cond, &shape, c.1);
        let ia = self.coerce_shape(ia, &shape, a.1);
        let ib = self.coerce_shape(ib, &shape, b.1);
        Val::Tensor(self.push(Op::Where(ic, ia, ib), TensorType::new(dtype, shape), span))
    }

    pub(super) fn normalize_axis(
        &mut self,
        axis: i128,
        ty: &TensorType,
        span: &Span,
    ) -> Option<usize> {
        let rank = ty.rank() as i128;
        if axis < -rank || axis >= rank {
            let range = if rank == 0 {
                "a rank-0 tensor has no axes".to_string()
            } else {
                format!("axes run from {} to {}", -rank, rank - 1)
            };
            self.error(
                Diagnostic::error(
                    ErrorKind::BadAxis,
                    format!("axis {axis} is out of range for {ty}"),
                )
                .with_primary(span.clone(), format!("axis {axis}"))
                .with_note(range),
            );
            return None;
        }
        Some(if axis < 0 {
            (axis + rank) as usize
        } else {
            axis as usize
        })
    }

    /// An axis or a list of axes: normalised, distinct, sorted.
    /// A reduction's `axis` (every axis when absent) and `keepdim` (false when absent)
    /// arguments; `None` once either has been reported.
    fn reduction_axes(
        &mut self,
        axis: Option<&Expr>,
        keepdim: Option<&Expr>,
        ty: &TensorType,
    ) -> Option<(Vec<usize>, bool)> {
        let axes = match axis {
            None => (0..ty.rank()).collect(),
            Some(e) => self.axes(e, ty)?,
        };
        let keepdim = match keepdim {
            None => false,
            Some(e) => self.boolean(e, "keepdim")?,
        };
        Some((axes, keepdim))
    }

    fn axes(&mut self, e: &Expr, ty: &TensorType) -> Option<Vec<usize>> {
        let items: Vec<&Expr> = match &e.kind {
            ExprKind::List(items) => items.iter().collect(),
            _ => vec![e],
        };
        let mut out: Vec<(usize, &Span)> = Vec::new();
        for item in items {
            let a = self.const_int(item, ErrorKind::BadAxis)?;
            let a = self.normalize_axis(a, ty, &item.span)?;
            if let Some((_, first)) = out.iter().find(|(x, _)| *x == a) {
                let first = (*first).clone();
                self.error(
                    Diagnostic::error(ErrorKind::BadAxis, format!("axis {a} is repeated"))
                        .with_primary(item.span.clone(), "repeated here")
                        .with_secondary(first, "first here")
                        .with_note(format!("for {ty}, negative axes count from the end")),
                );
                return None;
            }
            out.push((a, &item.span));
        }
        let mut axes: Vec<usize> = out.into_iter().map(|(a, _)| a).collect();
        axes.sort_unstable();
        Some(axes)
    }

    fn permutation(&mut self, e: &Expr, ty: &TensorType) -> Option<Vec<usize>> {
        let ExprKind::List(items) = &e.kind else {
            self.error(
                Diagnostic::error(ErrorKind::BadArgument, "`permute` needs a list of axes")
                    .with_primary(e.span.clone(), "expected a list such as `[0, 2, 1]`"),
            );
            return None;
        };
        if items.len() != ty.rank() {
            self.error(
                Diagnostic::error(
                    ErrorKind::BadView,
                    format!(
                        "`permute` of {ty} needs {} axes, got {}",
                        ty.rank(),
                        items.len()
                    ),
                )
                .with_primary(e.span.clone(), format!("{} axes", items.len())),
            );
            return None;
        }
        let perm = self.axes(e, ty)?;
        // `axes` sorted them; keep the written order.
        let mut written = Vec::with_capacity(items.len());
        for item in items {
            let a = self.const_int(item, ErrorKind::BadAxis)?;
            written.push(self.normalize_axis(a, ty, &item.span)?);
        }
        debug_assert_eq!(perm.len(), written.len());
        Some(written)
    }

    fn reshape_target(&mut self, e: &Expr, ty: &TensorType) -> Option<Vec<Dim>> {
        let ExprKind::List(items) = &e.kind else {
            self.error(
                Diagnostic::error(ErrorKind::BadArgument, "`reshape` needs a shape list")
                    .with_primary(e.span.clone(), "expected a list such as `[B, -1]`"),
            );
            return None;
        };
        let mut dims = self.shape_list(items, true)?;
        let infer: Vec<usize> = dims
            .iter()
            .enumerate()
            .filter(|(_, d)| d.1)
            .map(|(i, _)| i)
            .collect();
        let numel = ty.numel()?;
        let known = crate::ir::types::numel(
            &dims
                .iter()
                .filter(|d| !d.1)
                .map(|d| d.0.size)
                .collect::<Vec<_>>(),
        );
        let mismatch = |cx: &mut Self, what: String| {
            let shown: Vec<String> = dims_text(&dims);
            cx.error(
                Diagnostic::error(
                    ErrorKind::BadView,
                    format!("cannot reshape {ty} to [{}]", shown.join(", ")),
                )
                .with_primary(e.span.clone(), what)
                .with_note(format!("{ty} has {numel} elements")),
            );
        };
        match (infer.as_slice(), known) {
            (_, None) => {
                mismatch(
                    self,
                    "this shape has more elements than 64 bits can count".into(),
                );
                None
            }
            ([], Some(k)) if k != numel => {
                mismatch(self, format!("this shape has {k} elements"));
                None
            }
            ([], Some(_)) => Some(dims.into_iter().map(|d| d.0).collect()),
            ([i], Some(k)) if numel % k == 0 => {
                dims[*i].0.size = numel / k;
                Some(dims.into_iter().map(|d| d.0).collect())
            }
            ([_], Some(k)) => {
                mismatch(
                    self,
                    format!("{numel} elements do not divide into rows of {k}"),
                );
                None
            }
            _ => {
                self.error(
                    Diagnostic::error(ErrorKind::BadView, "only one `-1` is allowed in a reshape")
                        .with_primary(e.span.clone(), format!("{} entries are -1", infer.len())),
                );
                None
            }
        }
    }

    fn expand_target(&mut self, e: &Expr, ty: &TensorType) -> Option<Vec<Dim>> {
        let ExprKind::List(items) = &e.kind else {
            self.error(
                Diagnostic::error(ErrorKind::BadArgument, "`expand` needs a shape list")
                    .with_primary(e.span.clone(), "expected a list such as `[B, D]`"),
            );
            return None;
        };
        let dims = self.shape_list(items, true)?;
        let n = dims.len();
        let r = ty.rank();
        let fail = |cx: &mut Self, msg: String| {
            cx.error(
                Diagnostic::error(ErrorKind::BadView, format!("cannot expand {ty} to [{}]", dims_text(&dims).join(", ")))
                    .with_primary(e.span.clone(), msg)
                    .with_note("`expand` (NumPy `broadcast_to`) may add leading axes and stretch axes of size 1"),
            );
            None
        };
        if n < r {
            return fail(self, format!("{n} axes, fewer than the {r} of the tensor"));
        }
        let mut out = Vec::with_capacity(n);
        for (i, (d, infer)) in dims.iter().enumerate() {
            let src = (i + r).checked_sub(n).map(|j| &ty.shape[j]);
            match (src, infer) {
                (None, true) => return fail(self, format!("-1 at new axis {i}")),
                (None, false) => out.push(d.clone()),
                (Some(s), true) => out.push(s.clone()),
                (Some(s), false) if s.size == d.size || s.size == 1 => out.push(d.clone()),
                (Some(s), false) => return fail(self, format!("axis {i}: {s} cannot become {d}")),
            }
        }
        Some(out)
    }

    pub(super) fn boolean(&mut self, e: &Expr, what: &str) -> Option<bool> {
        if let ExprKind::Bool(b) = e.kind {
            return Some(b);
        }
        self.error(
            Diagnostic::error(
                ErrorKind::BadArgument,
                format!("`{what}` must be `true` or `false`"),
            )
            .with_primary(e.span.clone(), "expected `true` or `false`"),
        );
        None
    }

    fn float(&mut self, e: &Expr, what: &str) -> Option<f64> {
        let (neg, inner) = match &e.kind {
            ExprKind::Neg(a) => (true, &**a),
            _ => (false, e),
        };
        if let ExprKind::Number(t) = &inner.kind {
            if let Ok(v) = t.parse::<f64>() {
                if v.is_finite() {
                    return Some(if neg { -v } else { v });
                }
            }
        }
        self.error(
            Diagnostic::error(
                ErrorKind::BadArgument,
                format!("`{what}` must be a number literal"),
            )
            .with_primary(e.span.clone(), "expected a number such as `1e-5`"),
        );
        None
    }
}

fn dims_text(dims: &[(Dim, bool)]) -> Vec<String> {
    dims.iter()
        .map(|(d, infer)| {
            if *infer {
                "-1".to_string()
            } else {
                d.to_string()
            }
        })
        .collect()
}

fn signature(name: &str, params: &[&str]) -> String {
    if super::indices::params(name).is_some() {
        let k = super::indices::required(name);
        let mut all: Vec<String> = params[..k].iter().map(|p| p.to_string()).collect();
        all.extend(params[k..].iter().map(|p| format!("{p}=…")));
        return format!("usage: `{name}({})`", all.join(", "));
    }
    let rest: Vec<String> = params[1..].iter().map(|p| format!("{p}=…")).collect();
    let mut all = vec![params[0].to_string()];
    if matches!(
        name,
        "maximum"
            | "minimum"
            | "permute"
            | "reshape"
            | "expand"
            | "logical_and"
            | "logical_or"
            | "where"
            | "transpose"
            | "unsqueeze"
    ) {
        all.extend(params[1..].iter().map(|p| p.to_string()));
    } else {
        all.extend(rest);
    }
    format!("usage: `{name}({})`", all.join(", "))
}
