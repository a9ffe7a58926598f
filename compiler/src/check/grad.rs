//! `grad(L, P)` and `detach(x)`: the checks (a rank-0 float loss, a float input or param
//! as the variable) and the backward passes, built by `autodiff` where the first `grad` of
//! a loss appears. Every `grad` of one loss *name* shares one backward pass, so the
//! program is scanned first for the variables each loss is differentiated against.

use super::{Binding, Checker, Val};
use crate::autodiff;
use crate::diag::{Diagnostic, ErrorKind, Span};
use crate::ir::graph::GradOf;
use crate::ir::{layout, NodeId, Op, TensorType, ViewOp};
use crate::syntax::ast::{Expr, ExprKind, Program, StmtKind};
use std::collections::HashMap;

/// For each loss name, the names it is differentiated against (`grad(loss, w)`), in order.
pub(super) fn grad_requests(program: &Program) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut stack: Vec<&Expr> = Vec::new();
    for stmt in &program.stmts {
        if let StmtKind::Assign { value, .. } = &stmt.kind {
            stack.push(value);
        }
    }
    while let Some(e) = stack.pop() {
        match &e.kind {
            ExprKind::Neg(a) => stack.push(a),
            ExprKind::Binary { lhs, rhs, .. } => {
                stack.push(lhs);
                stack.push(rhs);
            }
            ExprKind::List(items) => stack.extend(items.iter()),
            ExprKind::Index { base, .. } => stack.push(base),
            ExprKind::Call { func, args } => {
                stack.extend(args.iter().map(|a| &a.value));
                if func.name != "grad" {
                    continue;
                }
                let arg = |pos: usize, key: &str| {
                    args.iter()
                        .find(|a| a.name.as_ref().is_some_and(|k| k.name == key))
                        .or_else(|| args.iter().filter(|a| a.name.is_none()).nth(pos))
                        .and_then(|a| match &a.value.kind {
                            ExprKind::Name(n) => Some(n.clone()),
                            _ => None,
                        })
                };
                if let (Some(l), Some(p)) = (arg(0, "loss"), arg(1, "wrt")) {
                    let v = out.entry(l).or_default();
                    if !v.contains(&p) {
                        v.push(p);
                    }
                }
            }
            ExprKind::Number(_) | ExprKind::Bool(_) | ExprKind::Name(_) | ExprKind::Error => {}
        }
    }
    out
}

impl Checker<'_> {
    /// `grad(loss, wrt)` or `detach(x)`, arguments already bound to their parameters.
    pub(super) fn grad_builtin(
        &mut self,
        name: &str,
        bound: &[Option<&Expr>],
        span: &Span,
        depth: usize,
    ) -> Val {
        let Some(x_expr) = bound[0] else {
            return Val::Error;
        };
        if name == "detach" {
            return match self.expr_at(x_expr, depth + 1) {
                Val::Tensor(id) => {
                    // A view of the same shape that no gradient passes through.
                    let ty = self.graph.ty(id).clone();
                    let d = self.push(Op::View(ViewOp::Reshape, id), ty, span);
                    self.detached.push(d);
                    Val::Tensor(d)
                }
                v => v,
            };
        }
        let Some(p_expr) = bound[1] else {
            return Val::Error;
        };
        let loss = self.expr_at(x_expr, depth + 1);
        let wrt = self.expr_at(p_expr, depth + 1);
        let (Some(loss), Some(wrt)) = (
            self.check_loss(loss, &x_expr.span),
            self.check_wrt(wrt, p_expr),
        ) else {
            return Val::Error;
        };
        if self.grad_failed.contains(&loss) {
            return Val::Error;
        }
        let line = self.line(span.start);
        let wrt_name = self.graph.display_name(wrt);
        if let Some(g) = self
            .backwards
            .get(&loss)
            .and_then(|gs| gs.iter().find(|(w, _)| *w == wrt))
        {
            let g = g.1;
            self.graph.mark_grad_of(g, &wrt_name, line);
            return Val::Tensor(g);
        }
        // The first `grad` of this loss: one backward pass for every variable it is
        // differentiated against (by name) that is bound by now.
        let mut wrts = vec![wrt];
        if let ExprKind::Name(l) = &x_expr.kind {
            for p in self.grad_requests.get(l).cloned().unwrap_or_default() {
                if let Some((Binding::Tensor(id), _)) = self.env.get(&p) {
                    let id = *id;
                    let is_leaf =
                        matches!(self.graph.node(id).op, Op::Input { .. } | Op::Param { .. });
                    if is_leaf && autodiff::is_float(self.graph.dtype(id)) && !wrts.contains(&id) {
                        wrts.push(id);
                    }
                }
            }
        }
        let detached = self.detached.clone();
        match autodiff::backward(&mut self.graph, loss, &wrts, &detached, span.clone(), line) {
            Ok(grads) => {
                self.layouts = layout::layouts(&self.graph);
                let pairs: Vec<(NodeId, NodeId)> = wrts.into_iter().zip(grads).collect();
                for &(wrt, grad) in &pairs {
                    self.graph.grads.push(GradOf { loss, wrt, grad });
                }
                let g = pairs[0].1;
                self.graph.mark_grad_of(g, &wrt_name, line);
                self.backwards.entry(loss).or_default().extend(pairs);
                Val::Tensor(g)
            }
            Err(what) => {
                self.grad_failed.push(loss);
                self.layouts = layout::layouts(&self.graph);
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadGrad,
                        format!("`grad` cannot differentiate {what} yet"),
                    )
                    .with_primary(span.clone(), "the loss depends on the variable through it")
                    .with_help("`detach` the value to stop the gradient there"),
                );
                Val::Error
            }
        }
    }

    /// The loss: a rank-0 float tensor.
    fn check_loss(&mut self, v: Val, span: &Span) -> Option<NodeId> {
        let id = match v {
            Val::Error => return None,
            Val::Weak(x) => {
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadGrad,
                        "the loss of `grad` must be a tensor of the program",
                    )
                    .with_primary(span.clone(), format!("this is the number {}", x.as_f64()))
                    .with_note("a constant has no gradient"),
                );
                return None;
            }
            Val::Tensor(id) => id,
        };
        let ty: TensorType = self.graph.ty(id).clone();
        if ty.rank() != 0 || !autodiff::is_float(ty.dtype) {
            let what = if ty.rank() != 0 {
                "a rank-0 (one-value) tensor"
            } else {
                "a floating tensor"
            };
            self.error(
                Diagnostic::error(
                    ErrorKind::BadGrad,
                    format!("the loss of `grad` must be {what}, but this is {ty}"),
                )
                .with_primary(span.clone(), format!("this is {ty}"))
                .with_help(match (ty.rank() != 0, autodiff::is_float(ty.dtype)) {
                    (true, true) => "reduce it to one value first, e.g. `mean(…)` or `sum(…)`",
                    (true, false) => "reduce it to one float value first, e.g. `f32(sum(…))`",
                    _ => "cast it to a float dtype first, e.g. `f32(…)`",
                }),
            );
            return None;
        }
        Some(id)
    }

    /// The variable: a float `input` or `param`, by name.
    fn check_wrt(&mut self, v: Val, e: &Expr) -> Option<NodeId> {
        let id = match v {
            Val::Error => return None,
            Val::Tensor(id)
                if matches!(e.kind, ExprKind::Name(_))
                    && matches!(self.graph.node(id).op, Op::Input { .. } | Op::Param { .. }) =>
            {
                id
            }
            _ => {
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadGrad,
                        "`grad` differentiates with respect to an `input` or `param` only",
                    )
                    .with_primary(e.span.clone(), "not an input or param")
                    .with_help("name an `input` or `param`; to differentiate with respect to an intermediate value, make it an input"),
                );
                return None;
            }
        };
        let ty = self.graph.ty(id).clone();
        if !autodiff::is_float(ty.dtype) {
            self.error(
                Diagnostic::error(
                    ErrorKind::BadGrad,
                    format!("`grad` needs a floating variable, but this is {ty}"),
                )
                .with_primary(e.span.clone(), format!("this is {ty}"))
                .with_note("integer and bool tensors carry no gradient"),
            );
            return None;
        }
        Some(id)
    }
}
