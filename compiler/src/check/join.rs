//! `concat([a, b, …], axis=A)` (`torch.cat`) and `stack([a, b, …], axis=A)`: operands
//! promote as for `+`; `concat` needs equal sizes but on `axis`, `stack` equal shapes (it
//! adds a size-1 axis to each, a view, then concatenates). `axis` defaults to 0, as
//! PyTorch's `dim`.

use super::{Checker, Val};
use crate::diag::{Diagnostic, ErrorKind, Span};
use crate::ir::{Dim, NodeId, Op, TensorType, ViewOp};
use crate::syntax::ast::{Expr, ExprKind};

impl Checker<'_> {
    /// `name` is `concat` or `stack`; `bound` its bound arguments (tensors, axis).
    pub(super) fn join(
        &mut self,
        name: &str,
        bound: &[Option<&Expr>],
        span: &Span,
        depth: usize,
    ) -> Val {
        let Some(list) = bound[0] else {
            return Val::Error;
        };
        let items = match &list.kind {
            ExprKind::List(items) if !items.is_empty() => items,
            _ => {
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadArgument,
                        format!("`{name}` needs a list of one or more tensors"),
                    )
                    .with_primary(list.span.clone(), "expected a list such as `[a, b]`")
                    .with_note(format!("usage: `{name}([a, b, …], axis=0)`")),
                );
                return Val::Error;
            }
        };
        let mut vals = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let v = self.expr_at(item, depth + 1);
            match v {
                Val::Error => ok = false,
                Val::Weak(_) => {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadArgument,
                            format!("`{name}` joins tensors, not numbers"),
                        )
                        .with_primary(item.span.clone(), "this is a number"),
                    );
                    ok = false;
                }
                Val::Tensor(_) => {}
            }
            vals.push(v);
        }
        if !ok {
            return Val::Error;
        }
        let ids: Vec<NodeId> = vals
            .iter()
            .filter_map(|v| match v {
                Val::Tensor(id) => Some(*id),
                _ => None,
            })
            .collect();
        let first = self.graph.ty(ids[0]).clone();
        // Shapes: equal rank; equal sizes but on the axis (`concat`) or everywhere (`stack`).
        let rank = first.rank();
        let out_rank = if name == "stack" { rank + 1 } else { rank };
        if out_rank == 0 {
            self.error(
                Diagnostic::error(
                    ErrorKind::BadRank,
                    "`concat` needs tensors of rank 1 or more",
                )
                .with_primary(items[0].span.clone(), format!("this is {first}"))
                .with_help("`stack` joins rank-0 tensors into a vector"),
            );
            return Val::Error;
        }
        let axis = match bound[1] {
            None => Some(0),
            Some(e) => {
                // The axis counts in the result (one axis more than the operands for `stack`).
                let r = out_rank as i128;
                match self.const_int(e, ErrorKind::BadAxis) {
                    Some(a) if (-r..r).contains(&a) => Some(if a < 0 { a + r } else { a } as usize),
                    Some(a) => {
                        self.error(
                            Diagnostic::error(
                                ErrorKind::BadAxis,
                                format!("axis {a} is out of range for `{name}` of {first}"),
                            )
                            .with_primary(e.span.clone(), format!("axis {a}"))
                            .with_note(format!(
                                "the result has {r} axes: axes run from {} to {}",
                                -r,
                                r - 1
                            )),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let Some(axis) = axis else { return Val::Error };
        for (k, &id) in ids.iter().enumerate().skip(1) {
            let t = self.graph.ty(id).clone();
            let fits = t.rank() == rank
                && (0..rank).all(|d| {
                    (name == "concat" && d == axis) || t.shape[d].size == first.shape[d].size
                });
            if !fits {
                let rule = if name == "stack" {
                    "`stack` needs operands of one shape".to_string()
                } else {
                    format!(
                        "`concat` needs operands of one rank and equal sizes but on axis {axis}"
                    )
                };
                self.error(
                    Diagnostic::error(
                        ErrorKind::ShapeMismatch,
                        format!("cannot {name} {first} and {t}"),
                    )
                    .with_primary(items[k].span.clone(), format!("this is {t}"))
                    .with_secondary(items[0].span.clone(), format!("this is {first}"))
                    .with_note(rule),
                );
                return Val::Error;
            }
        }
        let dtype = self.result_dtype(&vals);
        let mut parts = Vec::with_capacity(ids.len());
        for (&id, item) in ids.iter().zip(items) {
            let id = self.coerce_dtype(id, dtype, &item.span);
            let id = if name == "stack" {
                // A size-1 axis at `axis`: always a view.
                let mut shape = self.graph.ty(id).shape.clone();
                shape.insert(axis, Dim::new(1));
                self.push(
                    Op::View(ViewOp::Reshape, id),
                    TensorType::new(dtype, shape),
                    &item.span,
                )
            } else {
                id
            };
            parts.push(id);
        }
        let mut shape = self.graph.ty(parts[0]).shape.clone();
        let total: u64 = parts
            .iter()
            .map(|&p| self.graph.ty(p).shape[axis].size)
            .sum();
        if parts.len() > 1 {
            shape[axis] = Dim::new(total);
        }
        Val::Tensor(self.push(
            Op::Concat { args: parts, axis },
            TensorType::new(dtype, shape),
            span,
        ))
    }
}
