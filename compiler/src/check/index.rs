//! Indexing `x[…]`: Python's basic indexing, checked and lowered to one `Slice` view.
//!
//! Each entry is an integer (negative counts from the end; the axis goes) or a slice
//! `a:b:s` (each part optional, `s ≥ 1`; bounds clamp as Python's do). Missing trailing
//! entries mean `:`. An integer out of range, a slice that selects nothing (tc has no empty
//! tensors) and more entries than axes are `bad-index` errors.

use super::{Checker, Val};
use crate::diag::{Diagnostic, ErrorKind, Span};
use crate::ir::{Dim, Op, SliceAxis, TensorType, ViewOp};
use crate::syntax::ast::{Expr, IndexEntry, IndexKind};

impl Checker<'_> {
    /// `base[entries]`, where `base` is the value `v` written at `base_span`.
    pub(super) fn index(
        &mut self,
        v: Val,
        base_span: &Span,
        entries: &[IndexEntry],
        span: &Span,
    ) -> Val {
        let id = match v {
            Val::Error => return Val::Error,
            Val::Tensor(id) => id,
            Val::Weak(_) => {
                self.error(
                    Diagnostic::error(ErrorKind::BadIndex, "a number cannot be indexed")
                        .with_primary(base_span.clone(), "this is a scalar, not a tensor"),
                );
                return Val::Error;
            }
        };
        let ty = self.graph.ty(id).clone();
        if entries.len() > ty.rank() {
            let extra = &entries[ty.rank()];
            self.error(
                Diagnostic::error(
                    ErrorKind::BadIndex,
                    format!(
                        "too many indices: {} for {ty}, which has {} axes",
                        entries.len(),
                        ty.rank()
                    ),
                )
                .with_primary(
                    extra.span.start..entries[entries.len() - 1].span.end,
                    "one entry too many here",
                )
                .with_secondary(base_span.clone(), format!("this is {ty}")),
            );
            return Val::Error;
        }
        let mut axes = Vec::with_capacity(ty.rank());
        let mut shape = Vec::with_capacity(ty.rank());
        let mut ok = true;
        for (k, dim) in ty.shape.iter().enumerate() {
            let Some(entry) = entries.get(k) else {
                axes.push(SliceAxis {
                    start: 0,
                    step: 1,
                    keep: true,
                });
                shape.push(dim.clone());
                continue;
            };
            match self.entry(entry, k, dim, &ty, base_span) {
                Some((axis, out)) => {
                    axes.push(axis);
                    shape.extend(out);
                }
                None => ok = false,
            }
        }
        if !ok {
            return Val::Error;
        }
        let out = TensorType::new(ty.dtype, shape);
        Val::Tensor(self.push(Op::View(ViewOp::Slice(axes), id), out, span))
    }

    /// One entry on axis `k` (of size `dim`): its `SliceAxis` and the dim it keeps, if any.
    fn entry(
        &mut self,
        entry: &IndexEntry,
        k: usize,
        dim: &Dim,
        ty: &TensorType,
        base_span: &Span,
    ) -> Option<(SliceAxis, Option<Dim>)> {
        let n = i128::from(dim.size);
        match &entry.kind {
            IndexKind::At(e) => {
                let i = self.bound(e)?;
                let at = if i < 0 { i + n } else { i };
                if !(0..n).contains(&at) {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadIndex,
                            format!("index {i} is out of range for axis {k} of {ty}"),
                        )
                        .with_primary(e.span.clone(), format!("index {i}"))
                        .with_secondary(base_span.clone(), format!("this is {ty}"))
                        .with_note(format!(
                            "axis {k} has size {dim}: indices run from {} to {}",
                            -n,
                            n - 1
                        )),
                    );
                    return None;
                }
                Some((
                    SliceAxis {
                        start: at as u64,
                        step: 1,
                        keep: false,
                    },
                    None,
                ))
            }
            IndexKind::Range { start, stop, step } => {
                let step = match step {
                    None => 1,
                    Some(e) => {
                        let s = self.bound(e)?;
                        if s < 1 {
                            self.error(
                                Diagnostic::error(
                                    ErrorKind::BadIndex,
                                    format!("a slice step must be 1 or more, not {s}"),
                                )
                                .with_primary(e.span.clone(), format!("step {s}"))
                                .with_note("tc has no reversed slices"),
                            );
                            return None;
                        }
                        s
                    }
                };
                // Python's clamping for a positive step.
                let clamp = |cx: &mut Self, e: &Option<Expr>, default: i128| -> Option<i128> {
                    match e {
                        None => Some(default),
                        Some(e) => {
                            let v = cx.bound(e)?;
                            let v = if v < 0 { v + n } else { v };
                            Some(v.clamp(0, n))
                        }
                    }
                };
                let a = clamp(self, start, 0)?;
                let b = clamp(self, stop, n)?;
                let len = if b > a { (b - a + step - 1) / step } else { 0 };
                if len == 0 {
                    self.error(
                        Diagnostic::error(
                            ErrorKind::BadIndex,
                            format!("this slice of axis {k} of {ty} selects nothing"),
                        )
                        .with_primary(
                            entry.span.clone(),
                            format!("from {a} up to {b}: no elements"),
                        )
                        .with_secondary(base_span.clone(), format!("this is {ty}"))
                        .with_note(
                            "tc has no empty tensors; bounds clamp to the axis as in Python",
                        ),
                    );
                    return None;
                }
                let whole = a == 0 && step == 1 && len == n;
                let out = if whole {
                    dim.clone()
                } else {
                    Dim::new(len as u64)
                };
                Some((
                    SliceAxis {
                        start: a as u64,
                        step: step as u64,
                        keep: true,
                    },
                    Some(out),
                ))
            }
        }
    }

    /// An index bound: an integer literal, a dim, or `+ - *` of them (negative allowed).
    fn bound(&mut self, e: &Expr) -> Option<i128> {
        self.const_int(e, ErrorKind::BadIndex)
    }
}
