//! Expressions: operators, weak scalars, promotion and broadcasting, matmul, constants.
//! Weak scalars fold with the scalar semantics of `ir::eval`; shapes broadcast by
//! `ir::types::broadcast_dims`.
//!
//! Chains of left-associative operators and runs of unary minus are walked in a loop, so a
//! 100 000-term sum checks in constant stack; other nesting is bounded by the parser.

use super::{Checker, Val, Weak};
use crate::diag::{Diagnostic, ErrorKind, Span};
use crate::ir::types::broadcast_dims as broadcast;
use crate::ir::{eval, BinaryOp, DType, Dim, NodeId, Op, TensorType, UnaryOp, ViewOp};
use crate::syntax::ast::{BinOp, Expr, ExprKind};

/// Recursion guard for the checker (the parser already limits nesting to 64).
const MAX_DEPTH: usize = 512;

impl Checker<'_> {
    pub(super) fn expr(&mut self, e: &Expr) -> Val {
        self.expr_at(e, 0)
    }

    pub(super) fn expr_at(&mut self, e: &Expr, depth: usize) -> Val {
        if depth > MAX_DEPTH {
            self.error(
                Diagnostic::error(ErrorKind::TooDeep, "expression nested too deeply")
                    .with_primary(e.span.clone(), "nesting too deep here")
                    .with_help("split the expression into several statements"),
            );
            return Val::Error;
        }
        match &e.kind {
            ExprKind::Number(text) if Expr::is_int_literal(text) => match text.parse::<i64>() {
                Ok(v) => Val::Weak(Weak::Int(v)),
                Err(_) => {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadNumber,
                            format!("the integer `{text}` is too large"),
                        )
                        .with_primary(e.span.clone(), "does not fit in 64 bits")
                        .with_help(format!("write it as a float, `{text}.0`")),
                    );
                    Val::Error
                }
            },
            ExprKind::Number(text) => match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Val::Weak(Weak::Float(v)),
                _ => {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadNumber,
                            format!("the number `{text}` is too large"),
                        )
                        .with_primary(e.span.clone(), "not a finite number"),
                    );
                    Val::Error
                }
            },
            ExprKind::Bool(b) => {
                self.error(
                    Diagnostic::error(ErrorKind::BadExpression, format!("`{b}` is not a value"))
                        .with_primary(e.span.clone(), "only allowed as a keyword argument")
                        .with_note("`true` and `false` are for arguments such as `keepdim=true`"),
                );
                Val::Error
            }
            ExprKind::List(_) => {
                self.error(
                    Diagnostic::error(ErrorKind::BadExpression, "a list is not a value")
                        .with_primary(e.span.clone(), "a list here")
                        .with_note("lists are axis lists and shapes: `sum(x, axis=[0, 1])`, `reshape(x, [B, -1])`"),
                );
                Val::Error
            }
            ExprKind::Name(n) => self.lookup(n, &e.span),
            ExprKind::Error => Val::Error,
            ExprKind::Neg(_) => {
                // A run of unary minus, walked in a loop.
                let mut negs = Vec::new();
                let mut cur = e;
                while let ExprKind::Neg(inner) = &cur.kind {
                    negs.push(cur.span.clone());
                    cur = inner;
                }
                let mut v = self.expr_at(cur, depth + 1);
                let mut vspan = cur.span.clone();
                for span in negs.into_iter().rev() {
                    v = self.unary(UnaryOp::Neg, v, &vspan, &span);
                    vspan = span;
                }
                v
            }
            ExprKind::Binary { .. } => {
                // The left spine of the tree, walked in a loop.
                let mut spine = Vec::new();
                let mut cur = e;
                while let ExprKind::Binary { lhs, .. } = &cur.kind {
                    spine.push(cur);
                    cur = lhs;
                }
                let mut acc = self.expr_at(cur, depth + 1);
                let mut acc_span = cur.span.clone();
                for node in spine.into_iter().rev() {
                    if let ExprKind::Binary { op, rhs, .. } = &node.kind {
                        let r = self.expr_at(rhs, depth + 1);
                        acc = self.binop(*op, (acc, &acc_span), (r, &rhs.span), &node.span);
                        acc_span = node.span.clone();
                    }
                }
                acc
            }
            ExprKind::Call { func, args } => self.call(func, args, &e.span, depth),
            ExprKind::Index { base, entries } => {
                let v = self.expr_at(base, depth + 1);
                self.index(v, &base.span, entries, &e.span)
            }
        }
    }

    fn binop(&mut self, op: BinOp, a: (Val, &Span), b: (Val, &Span), span: &Span) -> Val {
        let op = match op {
            BinOp::Add => BinaryOp::Add,
            BinOp::Sub => BinaryOp::Sub,
            BinOp::Mul => BinaryOp::Mul,
            BinOp::Div => BinaryOp::Div,
            BinOp::Pow => BinaryOp::Pow,
            BinOp::Cmp(c) => BinaryOp::Cmp(c),
            BinOp::MatMul => return self.matmul(a, b, span),
        };
        self.binary(op, a, b, span)
    }

    /// A tensor for `v`: a weak scalar becomes a rank-0 `Scalar` of `dtype` (an integer
    /// constant of an integer dtype must be exact in f64, as `Op::Scalar` holds it).
    pub(super) fn materialize(&mut self, v: Val, dtype: DType, span: &Span) -> Option<NodeId> {
        match v {
            Val::Tensor(id) => Some(id),
            Val::Weak(Weak::Int(i)) if dtype.is_integral() => {
                let c = eval::wrap(dtype, i);
                if (c as f64) as i64 != c || c == i64::MAX {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadDtype,
                            format!("the integer constant {c} is too large for tc to hold exactly"),
                        )
                        .with_primary(span.clone(), format!("{dtype} constant {c}"))
                        .with_note("integer constants of i64 tensors are limited to ±2^53"),
                    );
                    return None;
                }
                Some(self.push(Op::Scalar(c as f64), TensorType::scalar(dtype), span))
            }
            Val::Weak(x) => {
                Some(self.push(Op::Scalar(x.as_f64()), TensorType::scalar(dtype), span))
            }
            Val::Error => None,
        }
    }

    /// Converts `id` to `dtype` with an implicit cast, if it differs.
    pub(super) fn coerce_dtype(&mut self, id: NodeId, dtype: DType, span: &Span) -> NodeId {
        if self.graph.dtype(id) == dtype {
            return id;
        }
        let ty = TensorType::new(dtype, self.graph.ty(id).shape.clone());
        self.push(
            Op::Cast {
                arg: id,
                implicit: true,
            },
            ty,
            span,
        )
    }

    /// Broadcasts `id` to `shape` with an implicit expand, if its sizes differ.
    pub(super) fn coerce_shape(&mut self, id: NodeId, shape: &[Dim], span: &Span) -> NodeId {
        let sizes: Vec<u64> = shape.iter().map(|d| d.size).collect();
        if self.graph.ty(id).sizes() == sizes {
            return id;
        }
        let ty = TensorType::new(self.graph.dtype(id), shape.to_vec());
        self.push(Op::View(ViewOp::Expand { implicit: true }, id), ty, span)
    }

    /// The dtype values compute in, PyTorch's rule: the highest category (`bool` <
    /// integers < floats) among all operands decides the kind; within it, dimensioned
    /// tensors decide over rank-0 tensors, which decide over weak scalars (a weak float is
    /// f32, a weak integer i64: `i32[N] + 1` is i32, `i32[N] + 1.5` is f32, `bool[N] + 1`
    /// is i64, `f16[N] * f32[]` is f16). f32 when there are no operands.
    pub(super) fn result_dtype(&self, vals: &[Val]) -> DType {
        let mut groups: [Option<DType>; 3] = [None; 3];
        for v in vals {
            let (g, dt) = match v {
                Val::Tensor(id) => {
                    let g = if self.graph.ty(*id).rank() > 0 { 2 } else { 1 };
                    (g, self.graph.dtype(*id))
                }
                Val::Weak(w) => (0, w.dtype()),
                Val::Error => continue,
            };
            groups[g] = Some(groups[g].map_or(dt, |d| DType::promote(d, dt)));
        }
        let Some(top) = groups.iter().flatten().map(|d| d.category()).max() else {
            return DType::F32;
        };
        groups
            .iter()
            .rev()
            .flatten()
            .copied()
            .find(|d| d.category() == top)
            .unwrap_or(DType::F32)
    }

    /// Two weak scalars: folded (integers exactly, as Python's, and a result beyond 64
    /// bits is a `bad-number` error rather than a wrapped value; `/`, and `**` with a
    /// negative integer exponent, give floats as in Python); a comparison gives a rank-0
    /// `bool` tensor.
    fn fold_weak(&mut self, op: BinaryOp, x: Weak, y: Weak, span: &Span) -> Val {
        if let BinaryOp::Cmp(c) = op {
            let b = match (x, y) {
                (Weak::Int(a), Weak::Int(b)) => eval::compare_int(c, a, b),
                _ => eval::compare(c, x.as_f64(), y.as_f64()),
            };
            let id = self.push(
                Op::Scalar(if b { 1.0 } else { 0.0 }),
                TensorType::scalar(DType::Bool),
                span,
            );
            return Val::Tensor(id);
        }
        match (x, y) {
            (Weak::Int(a), Weak::Int(b))
                if !(op == BinaryOp::Div || op == BinaryOp::Pow && b < 0) =>
            {
                match exact_int(op, a, b) {
                    Some(v) => Val::Weak(Weak::Int(v)),
                    None => {
                        let sym = op.operator().unwrap_or(op.name());
                        self.int_overflow(format!("{a} {sym} {b}"), span);
                        Val::Error
                    }
                }
            }
            _ => Val::Weak(Weak::Float(eval::binary(op, x.as_f64(), y.as_f64()))),
        }
    }

    /// An elementwise operator on two values, with promotion and broadcasting made explicit.
    /// `/` of integers divides in f32; comparisons give `bool`; `logical_and`/`logical_or`
    /// read their operands as `bool` (`x != 0`).
    pub(super) fn binary(
        &mut self,
        op: BinaryOp,
        a: (Val, &Span),
        b: (Val, &Span),
        span: &Span,
    ) -> Val {
        match (a.0, b.0) {
            (Val::Error, _) | (_, Val::Error) => return Val::Error,
            (Val::Weak(x), Val::Weak(y)) if !matches!(op, BinaryOp::And | BinaryOp::Or) => {
                return self.fold_weak(op, x, y, span)
            }
            _ => {}
        }
        let mut dtype = self.result_dtype(&[a.0, b.0]);
        if op == BinaryOp::Div {
            dtype = dtype.float_or_f32();
        }
        if matches!(op, BinaryOp::And | BinaryOp::Or) {
            dtype = DType::Bool;
        }
        let mat = |cx: &mut Self, v: Val, s: &Span| match v {
            // A weak operand of a logical op is read as `bool` first, as a tensor would be.
            Val::Weak(w) if dtype == DType::Bool => cx.materialize(v, w.dtype(), s),
            _ => cx.materialize(v, dtype, s),
        };
        let (Some(ia), Some(ib)) = (mat(self, a.0, a.1), mat(self, b.0, b.1)) else {
            return Val::Error;
        };
        let (ta, tb) = (self.graph.ty(ia).clone(), self.graph.ty(ib).clone());
        let Some(shape) = broadcast(&ta.shape, &tb.shape) else {
            // Operators as written (`a + b`); the two-operand functions as calls
            // (`maximum(a, b)`), as the `where` message does.
            let both = match op.operator() {
                Some(sym) => format!("{ta} {sym} {tb}"),
                None => format!("{}({ta}, {tb})", op.name()),
            };
            let mut d = Diagnostic::error(
                ErrorKind::ShapeMismatch,
                format!("shapes do not broadcast: {both}"),
            )
            .with_primary(a.1.clone(), format!("this is {ta}"))
            .with_secondary(b.1.clone(), format!("this is {tb}"));
            if let Some(note) = mismatch_note(&ta.shape, &tb.shape) {
                d = d.with_note(note);
            }
            self.error(d.with_note(
                "shapes align from the right; two sizes broadcast when equal or when one is 1",
            ));
            return Val::Error;
        };
        let ia = self.coerce_dtype(ia, dtype, a.1);
        let ib = self.coerce_dtype(ib, dtype, b.1);
        let ia = self.coerce_shape(ia, &shape, a.1);
        let ib = self.coerce_shape(ib, &shape, b.1);
        let out = if op.is_cmp() { DType::Bool } else { dtype };
        Val::Tensor(self.push(Op::Binary(op, ia, ib), TensorType::new(out, shape), span))
    }

    /// An elementwise function of one value; folded when the value is a weak scalar and
    /// the function is simple to fold exactly. On an integer or `bool` tensor, `abs`,
    /// unary `-`, `square` and `relu` keep its dtype, `logical_not` reads it as `bool`, and
    /// every other function computes in f32.
    pub(super) fn unary(&mut self, op: UnaryOp, v: Val, arg_span: &Span, span: &Span) -> Val {
        if let Val::Weak(x) = v {
            match (x, op) {
                (Weak::Int(i), _) if op.keeps_int() => {
                    let exact = match op {
                        UnaryOp::Neg => i.checked_neg(),
                        UnaryOp::Abs => i.checked_abs(),
                        UnaryOp::Square => i.checked_mul(i),
                        _ => Some(eval::unary_int(op, DType::I64, i)),
                    };
                    let Some(v) = exact else {
                        let what = match op {
                            UnaryOp::Neg => format!("-({i})"),
                            _ => format!("{}({i})", op.name()),
                        };
                        self.int_overflow(what, span);
                        return Val::Error;
                    };
                    return Val::Weak(Weak::Int(v));
                }
                (_, UnaryOp::Not) => {}
                _ => {
                    if let Some(y) = fold_unary(op, x.as_f64()) {
                        return Val::Weak(Weak::Float(y));
                    }
                }
            }
        }
        let want = match v {
            Val::Weak(w) if op == UnaryOp::Not => w.dtype(),
            _ => DType::F32,
        };
        let Some(id) = self.materialize(v, want, arg_span) else {
            return Val::Error;
        };
        let dt = self.graph.dtype(id);
        let to = match op {
            UnaryOp::Not => DType::Bool,
            _ if op.keeps_int() => dt,
            _ => dt.float_or_f32(),
        };
        let id = self.coerce_dtype(id, to, arg_span);
        let ty = self.graph.ty(id).clone();
        Val::Tensor(self.push(Op::Unary(op, id), ty, span))
    }

    /// `a @ b` with batch broadcasting and promotion made explicit.
    fn matmul(&mut self, a: (Val, &Span), b: (Val, &Span), span: &Span) -> Val {
        let (ia, ib) = match (a.0, b.0) {
            (Val::Error, _) | (_, Val::Error) => return Val::Error,
            (Val::Tensor(x), Val::Tensor(y)) => (x, y),
            (x, _) => {
                let bad = if matches!(x, Val::Weak(_)) { a.1 } else { b.1 };
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadRank,
                        "`@` needs two tensors of rank 2 or more",
                    )
                    .with_primary(bad.clone(), "this is a scalar")
                    .with_help("to scale a tensor by a number, use `*`"),
                );
                return Val::Error;
            }
        };
        let (ta, tb) = (self.graph.ty(ia).clone(), self.graph.ty(ib).clone());
        let mut bad = false;
        for (t, s) in [(&ta, a.1), (&tb, b.1)] {
            if t.rank() < 2 {
                bad = true;
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadRank,
                        format!("`@` needs rank 2 or more, but this is {t}"),
                    )
                    .with_primary(s.clone(), format!("this is {t}"))
                    .with_help("make a vector a matrix with `reshape`, e.g. `reshape(v, [1, -1])`"),
                );
            }
        }
        if bad {
            return Val::Error;
        }
        let (ra, rb) = (ta.rank(), tb.rank());
        let (m, k) = (&ta.shape[ra - 2], &ta.shape[ra - 1]);
        let (k2, n) = (&tb.shape[rb - 2], &tb.shape[rb - 1]);
        if k.size != k2.size {
            let mut d = Diagnostic::error(ErrorKind::ShapeMismatch, format!("matmul inner dims differ: {ta} @ {tb}"))
                .with_primary(span.clone(), format!("{k} against {k2}"))
                .with_secondary(a.1.clone(), format!("this is {ta}"))
                .with_secondary(b.1.clone(), format!("this is {tb}"))
                .with_note("`[…, M, K] @ […, K, N]`: the last dim of the left must equal the second-to-last of the right");
            if k.size == n.size {
                let text = self.source.get(b.1.clone()).unwrap_or("…");
                d = d.with_help(format!("did you mean `transpose({text})`?"));
            }
            self.error(d);
            return Val::Error;
        }
        let Some(batch) = broadcast(&ta.shape[..ra - 2], &tb.shape[..rb - 2]) else {
            self.error(
                Diagnostic::error(
                    ErrorKind::ShapeMismatch,
                    format!("matmul batch dims do not broadcast: {ta} @ {tb}"),
                )
                .with_primary(a.1.clone(), format!("this is {ta}"))
                .with_secondary(b.1.clone(), format!("this is {tb}"))
                .with_note("the dims before the last two broadcast as for elementwise operators"),
            );
            return Val::Error;
        };
        let dtype = self.result_dtype(&[a.0, b.0]);
        if dtype.is_integral() {
            self.error(
                Diagnostic::error(
                    ErrorKind::BadDtype,
                    format!("`@` needs floating operands, but this is {ta} @ {tb}"),
                )
                .with_primary(span.clone(), format!("a product of {dtype}"))
                .with_help("convert one operand first, e.g. `f32(a) @ b`"),
            );
            return Val::Error;
        }
        let ia = self.coerce_dtype(ia, dtype, a.1);
        let ib = self.coerce_dtype(ib, dtype, b.1);
        let sa: Vec<Dim> = batch
            .iter()
            .cloned()
            .chain([m.clone(), k.clone()])
            .collect();
        let sb: Vec<Dim> = batch
            .iter()
            .cloned()
            .chain([k2.clone(), n.clone()])
            .collect();
        let ia = self.coerce_shape(ia, &sa, a.1);
        let ib = self.coerce_shape(ib, &sb, b.1);
        let out: Vec<Dim> = batch.into_iter().chain([m.clone(), n.clone()]).collect();
        Val::Tensor(self.push(Op::MatMul(ia, ib), TensorType::new(dtype, out), span))
    }

    /// A constant integer (dims, sizes, axes): literals, dims, `+ - *` and parentheses.
    pub(super) fn const_int(&mut self, e: &Expr, code: ErrorKind) -> Option<i128> {
        let mut err = None;
        let v = self.const_int_at(e, 0, &mut err);
        if let Some((span, msg)) = err {
            self.error(Diagnostic::error(code, msg).with_primary(span, "expected an integer here"));
        }
        v
    }

    fn const_int_at(
        &mut self,
        e: &Expr,
        depth: usize,
        err: &mut Option<(Span, String)>,
    ) -> Option<i128> {
        fn fail(err: &mut Option<(Span, String)>, span: &Span, msg: String) -> Option<i128> {
            if err.is_none() {
                *err = Some((span.clone(), msg));
            }
            None
        }
        if depth > 64 {
            return fail(
                err,
                &e.span,
                "this constant expression is nested too deeply".into(),
            );
        }
        match &e.kind {
            ExprKind::Number(t) => {
                if !Expr::is_int_literal(t) {
                    return fail(err, &e.span, format!("`{t}` is not an integer"));
                }
                match t.parse::<i128>() {
                    Ok(v) if v <= i128::from(u64::MAX) => Some(v),
                    _ => fail(err, &e.span, format!("`{t}` does not fit in 64 bits")),
                }
            }
            ExprKind::Name(n) => match self.env.get(n) {
                Some((super::Binding::Dim(v), _)) => Some(i128::from(*v)),
                Some((super::Binding::Poison, _)) => None,
                Some(_) => fail(err, &e.span, format!("`{n}` is a tensor, not a dim")),
                None => {
                    self.unknown_name(n, &e.span, super::Want::Dim);
                    None
                }
            },
            ExprKind::Neg(a) => self.const_int_at(a, depth + 1, err).map(|v| -v),
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.const_int_at(lhs, depth + 1, err)?;
                let r = self.const_int_at(rhs, depth + 1, err)?;
                let v = match op {
                    BinOp::Add => l.checked_add(r),
                    BinOp::Sub => l.checked_sub(r),
                    BinOp::Mul => l.checked_mul(r),
                    _ => {
                        return fail(
                            err,
                            &e.span,
                            format!("`{}` is not allowed in a size", op.symbol()),
                        )
                    }
                };
                match v {
                    Some(v) if v.abs() <= i128::from(u64::MAX) => Some(v),
                    _ => fail(err, &e.span, "this size does not fit in 64 bits".into()),
                }
            }
            ExprKind::Error => None,
            _ => fail(err, &e.span, "expected an integer".into()),
        }
    }

    /// An integer fold of weak scalars whose exact value does not fit in 64 bits: tc holds
    /// integer constants in 64 bits, and a wrapped value would silently differ from what
    /// Python (and SPEC §1's floating point) gives, so it is an error with the fix.
    fn int_overflow(&mut self, what: String, span: &Span) {
        self.error(
            Diagnostic::error(
                ErrorKind::BadNumber,
                format!("the integer `{what}` does not fit in 64 bits"),
            )
            .with_primary(span.clone(), "integer arithmetic on numbers overflows here")
            .with_help(
                "write one of the numbers as a float (`2.0` for `2`) to compute in floating point",
            ),
        );
    }
}

/// "axis -1: D=1024 against H=4096" for the first axis that does not broadcast.
fn mismatch_note(a: &[Dim], b: &[Dim]) -> Option<String> {
    let n = a.len().min(b.len());
    (1..=n).find_map(|k| {
        let (x, y) = (&a[a.len() - k], &b[b.len() - k]);
        (x.size != y.size && x.size != 1 && y.size != 1)
            .then(|| format!("axis -{k}: {x} against {y}"))
    })
}

/// Folds an elementwise function of a weak scalar with its meaning (`ir::eval`). `erf` and
/// `gelu` of a literal stay nodes, computed in the dtype the literal takes, as they always
/// have been (folding them would change the graphs of programs that use them).
fn fold_unary(op: UnaryOp, x: f64) -> Option<f64> {
    match op {
        UnaryOp::Gelu | UnaryOp::Erf => None,
        _ => Some(eval::unary(op, x)),
    }
}

/// `a op b` on two integer weak scalars, exactly as Python computes it: `None` when the
/// result does not fit in 64 bits (`+ - * **`; the other ops cannot overflow). `**` has a
/// non-negative exponent here.
fn exact_int(op: BinaryOp, a: i64, b: i64) -> Option<i64> {
    match op {
        BinaryOp::Add => a.checked_add(b),
        BinaryOp::Sub => a.checked_sub(b),
        BinaryOp::Mul => a.checked_mul(b),
        BinaryOp::Pow => match u32::try_from(b) {
            Ok(e) => a.checked_pow(e),
            // An exponent beyond 2^32 keeps only 0, 1 and -1 in range.
            Err(_) => match a {
                0 | 1 => Some(a),
                -1 => Some(if b % 2 == 0 { 1 } else { -1 }),
                _ => None,
            },
        },
        _ => Some(eval::binary_int(op, DType::I64, a, b)),
    }
}
