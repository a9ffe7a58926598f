//! The index built-ins of SPEC §3.3: `arange`, `take`, `gather`, `one_hot`, `argmax`,
//! `argmin`, `cumsum` — their arguments, dtypes and shapes (the shape rules themselves are
//! `ir::index_ops`', shared with the verifier).

use super::{Checker, Val};
use crate::diag::{Diagnostic, ErrorKind, Span};
use crate::ir::index_ops::{cumsum_dtype, gather_shape, take_shape};
use crate::ir::{reduced_shape, DType, Dim, NodeId, Op, ReduceOp, TensorType};
use crate::syntax::ast::{Expr, ExprKind};

/// The index built-ins and their parameters, in positional order.
pub(super) fn params(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "arange" => &["n"],
        "take" | "gather" => &["x", "idx", "axis"],
        "one_hot" => &["idx", "n"],
        "argmax" | "argmin" => &["x", "axis", "keepdim"],
        "cumsum" => &["x", "axis"],
        _ => return None,
    })
}

/// The index built-ins' names (for hints).
pub(super) const NAMES: &[&str] = &[
    "arange", "take", "gather", "one_hot", "argmax", "argmin", "cumsum",
];

/// How many leading parameters a call must give.
pub(super) fn required(name: &str) -> usize {
    match name {
        "take" | "gather" | "one_hot" | "cumsum" => 2,
        _ => 1,
    }
}

impl Checker<'_> {
    /// Checks a call of index built-in `name` with its bound arguments.
    pub(super) fn index_call(
        &mut self,
        name: &str,
        bound: &[Option<&Expr>],
        span: &Span,
        depth: usize,
    ) -> Val {
        match name {
            "arange" => {
                let Some(e) = bound[0] else { return Val::Error };
                let Some(n) = self.positive_size(e, "arange") else {
                    return Val::Error;
                };
                let dim = match &e.kind {
                    ExprKind::Name(d) => Dim::named(d.clone(), n),
                    _ => Dim::new(n),
                };
                Val::Tensor(self.push(Op::Arange, TensorType::new(DType::I64, vec![dim]), span))
            }
            "take" | "gather" => {
                let (Some(xe), Some(ie)) = (bound[0], bound[1]) else {
                    return Val::Error;
                };
                let x = self.expr_at(xe, depth + 1);
                let i = self.expr_at(ie, depth + 1);
                let Some(x) = self.materialize(x, DType::F32, &xe.span) else {
                    return Val::Error;
                };
                let Some(i) = self.index_tensor(i, ie, name) else {
                    return Val::Error;
                };
                let xt = self.graph.ty(x).clone();
                let it = self.graph.ty(i).clone();
                if xt.rank() == 0 {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadRank,
                            format!(
                                "`{name}` needs a tensor with an axis to index, but this is {xt}"
                            ),
                        )
                        .with_primary(xe.span.clone(), format!("this is {xt}")),
                    );
                    return Val::Error;
                }
                let default = if name == "take" { 0 } else { -1 };
                let axis = match bound[2] {
                    None => self.normalize_axis(default, &xt, &xe.span),
                    Some(e) => self
                        .const_int(e, ErrorKind::BadAxis)
                        .and_then(|a| self.normalize_axis(a, &xt, &e.span)),
                };
                let Some(axis) = axis else { return Val::Error };
                if name == "take" {
                    let shape = take_shape(&xt.shape, &it.shape, axis);
                    let ty = TensorType::new(xt.dtype, shape);
                    return Val::Tensor(self.push(
                        Op::Take {
                            arg: x,
                            index: i,
                            axis,
                        },
                        ty,
                        span,
                    ));
                }
                if it.rank() != xt.rank() {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadRank,
                            format!(
                                "`gather` needs an index of the same rank as the tensor: {it} for {xt}"
                            ),
                        )
                        .with_primary(ie.span.clone(), format!("this is {it}"))
                        .with_secondary(xe.span.clone(), format!("this is {xt}"))
                        .with_note(
                            "`gather(x, idx, axis)` is `numpy.take_along_axis`; to pick one \
                             entry per row, reshape the index: `reshape(labels, [B, 1])`",
                        ),
                    );
                    return Val::Error;
                }
                match gather_shape(&xt.shape, &it.shape, axis) {
                    Ok(shape) => Val::Tensor(self.push(
                        Op::Gather {
                            arg: x,
                            index: i,
                            axis,
                        },
                        TensorType::new(xt.dtype, shape),
                        span,
                    )),
                    Err(d) => {
                        self.error(
                            Diagnostic::error(
                                ErrorKind::ShapeMismatch,
                                format!("`gather` of {xt} by an index {it}: axis {d} does not broadcast"),
                            )
                            .with_primary(ie.span.clone(), format!("axis {d} is {}", it.shape[d]))
                            .with_secondary(xe.span.clone(), format!("axis {d} is {}", xt.shape[d]))
                            .with_note(format!(
                                "every axis but the gathered one ({axis}) must be equal or 1 in one of them"
                            )),
                        );
                        Val::Error
                    }
                }
            }
            "one_hot" => {
                let (Some(ie), Some(ne)) = (bound[0], bound[1]) else {
                    return Val::Error;
                };
                let i = self.expr_at(ie, depth + 1);
                let Some(i) = self.index_tensor(i, ie, name) else {
                    return Val::Error;
                };
                let Some(n) = self.positive_size(ne, "one_hot") else {
                    return Val::Error;
                };
                let mut shape = self.graph.ty(i).shape.clone();
                shape.push(match &ne.kind {
                    ExprKind::Name(d) => Dim::named(d.clone(), n),
                    _ => Dim::new(n),
                });
                Val::Tensor(self.push(
                    Op::OneHot { arg: i, classes: n },
                    TensorType::new(DType::I64, shape),
                    span,
                ))
            }
            "argmax" | "argmin" => {
                let Some(xe) = bound[0] else {
                    return Val::Error;
                };
                let x = self.expr_at(xe, depth + 1);
                let Some(x) = self.materialize(x, DType::F32, &xe.span) else {
                    return Val::Error;
                };
                let xt = self.graph.ty(x).clone();
                let axes: Vec<usize> = match bound[1] {
                    None => (0..xt.rank()).collect(),
                    Some(e) => {
                        if let ExprKind::List(_) = e.kind {
                            self.error(
                                Diagnostic::error(
                                    ErrorKind::BadAxis,
                                    format!("`{name}` takes one axis, not a list"),
                                )
                                .with_primary(e.span.clone(), "a list of axes")
                                .with_note(
                                    "as in PyTorch: one axis, or none for the position in the flattened tensor",
                                ),
                            );
                            return Val::Error;
                        }
                        match self
                            .const_int(e, ErrorKind::BadAxis)
                            .and_then(|a| self.normalize_axis(a, &xt, &e.span))
                        {
                            Some(a) => vec![a],
                            None => return Val::Error,
                        }
                    }
                };
                let keepdim = match bound[2] {
                    None => false,
                    Some(e) => match self.boolean(e, "keepdim") {
                        Some(b) => b,
                        None => return Val::Error,
                    },
                };
                let op = if name == "argmax" {
                    ReduceOp::ArgMax
                } else {
                    ReduceOp::ArgMin
                };
                if axes.is_empty() {
                    // A rank-0 tensor: its one element is at position 0.
                    let z = self.push(Op::Scalar(0.0), TensorType::scalar(DType::I64), span);
                    return Val::Tensor(z);
                }
                let shape: Vec<Dim> = reduced_shape(&xt.shape, &axes, keepdim);
                Val::Tensor(self.push(
                    Op::Reduce {
                        op,
                        arg: x,
                        axes,
                        keepdim,
                    },
                    TensorType::new(DType::I64, shape),
                    span,
                ))
            }
            "cumsum" => {
                let (Some(xe), Some(ae)) = (bound[0], bound[1]) else {
                    return Val::Error;
                };
                let x = self.expr_at(xe, depth + 1);
                let Some(x) = self.materialize(x, DType::F32, &xe.span) else {
                    return Val::Error;
                };
                let xt = self.graph.ty(x).clone();
                let Some(axis) = self
                    .const_int(ae, ErrorKind::BadAxis)
                    .and_then(|a| self.normalize_axis(a, &xt, &ae.span))
                else {
                    return Val::Error;
                };
                let ty = TensorType::new(cumsum_dtype(xt.dtype), xt.shape.clone());
                Val::Tensor(self.push(Op::Cumsum { arg: x, axis }, ty, span))
            }
            _ => Val::Error,
        }
    }

    /// A constant positive size (`arange(N)`, `one_hot(idx, N)`): a dim, an integer literal
    /// or integer arithmetic on them.
    fn positive_size(&mut self, e: &Expr, what: &str) -> Option<u64> {
        let v = self.const_int(e, ErrorKind::BadArgument)?;
        if v <= 0 {
            self.error(
                Diagnostic::error(
                    ErrorKind::BadArgument,
                    format!("`{what}` needs a positive size, got {v}"),
                )
                .with_primary(e.span.clone(), format!("this is {v}"))
                .with_note("tc has no empty tensors"),
            );
            return None;
        }
        u64::try_from(v).ok()
    }

    /// An index operand: an integer tensor, or an integer literal (a rank-0 `i64`).
    fn index_tensor(&mut self, v: Val, e: &Expr, what: &str) -> Option<NodeId> {
        match v {
            Val::Error => None,
            Val::Weak(super::Weak::Int(i)) => Some(self.push(
                Op::Scalar(i as f64),
                TensorType::scalar(DType::I64),
                &e.span,
            )),
            Val::Weak(x) => {
                let x = x.as_f64();
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadArgument,
                        format!("the index of `{what}` must be an integer, not {x}"),
                    )
                    .with_primary(e.span.clone(), "not an integer"),
                );
                None
            }
            Val::Tensor(id) => {
                let t = self.graph.ty(id).clone();
                if !t.dtype.is_int() {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadArgument,
                            format!("the index of `{what}` must be an i32 or i64 tensor, but this is {t}"),
                        )
                        .with_primary(e.span.clone(), format!("this is {t}"))
                        .with_help("convert it with `i64(…)`"),
                    );
                    return None;
                }
                Some(id)
            }
        }
    }
}
