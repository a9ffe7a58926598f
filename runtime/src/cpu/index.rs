//! The index values of a fused kernel on the CPU (SPEC §3.3), for the typed block
//! interpreter (`typed`), which runs every kernel that has one: an `arange`'s value from
//! the current row and position, a gathered read's index check, and after the run the
//! error in the data for the smallest bad index of each gather (`IndexCheck::message`, the
//! text the CUDA executor and the emulation give too).

use super::fused::Prepared;
use std::sync::atomic::{AtomicI64, Ordering};
use tc_compiler::codegen::index::{IndexCheck, NO_ERROR};
use tc_compiler::lower::ValueOp;

/// Per value of a kernel: the smallest bad index a gather met (`NO_ERROR`: none).
pub(super) fn bad_indices(values: usize) -> Vec<AtomicI64> {
    (0..values).map(|_| AtomicI64::new(NO_ERROR)).collect()
}

/// Whether a kernel must run in the typed interpreter (`typed`): it has an index value (an
/// `arange`, a gather, a scan or an `argmax`/`argmin`).
pub(super) fn needed(p: &Prepared) -> bool {
    p.ir.values.iter().any(|v| match v.op {
        ValueOp::Index { .. } | ValueOp::Gather { .. } | ValueOp::Scan(_) => true,
        ValueOp::Reduce(op, _) => op.is_arg(),
        _ => false,
    })
}

/// The value of an `arange` index map (`offset`, `strides` over the merged axes) at row
/// `row` and position `j` along it (`None`: a row value, which does not move along it).
pub(super) fn index_value(
    p: &Prepared,
    offset: i64,
    strides: &[i64],
    row: usize,
    j: Option<usize>,
) -> i64 {
    let (row_dims, inner_dims) = if p.ir.is_pointwise() {
        (Vec::new(), (0..p.ir.axes.sizes.len()).collect::<Vec<_>>())
    } else {
        (p.ir.axes.row_axes(), p.ir.axes.reduce_axes())
    };
    let stride = |d: usize| strides.get(d).copied().unwrap_or(0);
    let mut off = offset;
    let mut q = row;
    for (k, &d) in row_dims.iter().enumerate().rev() {
        let n = p.row_sizes[k].max(1);
        off = off.wrapping_add((q % n) as i64 * stride(d));
        q /= n;
    }
    if let Some(j) = j {
        let mut q = j;
        for (k, &d) in inner_dims.iter().enumerate().rev() {
            let n = p.inner_sizes.get(k).copied().unwrap_or(1).max(1);
            off = off.wrapping_add((q % n) as i64 * stride(d));
            q /= n;
        }
    }
    off
}

/// An `arange` index map's strides over the inner dims of `p` (one per entry of
/// `p.inner_sizes`), so that its value at inner index `j` is the row part
/// (`index_value(.., None)`) plus the odometer of `j` over `p.inner_sizes` with these.
pub(super) fn inner_strides(p: &Prepared, strides: &[i64]) -> Vec<i64> {
    let inner_dims: Vec<usize> = if p.ir.is_pointwise() {
        (0..p.ir.axes.sizes.len()).collect()
    } else {
        p.ir.axes.reduce_axes()
    };
    let mut s: Vec<i64> = inner_dims
        .iter()
        .map(|&d| strides.get(d).copied().unwrap_or(0))
        .collect();
    s.resize(p.inner_sizes.len(), 0);
    s
}

/// Checks gather `i`'s index `g` against `size`: the index to read at (`g`, or 0 for a bad
/// one, which is recorded).
pub(super) fn checked(p: &Prepared, i: usize, g: i64, size: u64) -> i64 {
    if g >= 0 && (g as u64) < size {
        g
    } else {
        if let Some(b) = p.bad.get(i) {
            b.fetch_min(g, Ordering::Relaxed);
        }
        0
    }
}

/// The error in the data of the run, if a gather met a bad index: the first gather (in
/// value order) with one, its smallest.
pub(super) fn first_error(p: &Prepared, kernel: &str) -> Option<String> {
    p.ir.values.iter().enumerate().find_map(|(i, v)| {
        let ValueOp::Gather { size, what, .. } = &v.op else {
            return None;
        };
        let bad = p.bad.get(i)?.load(Ordering::Relaxed);
        (bad != NO_ERROR).then(|| {
            IndexCheck {
                symbol: kernel.to_string(),
                slot: 0,
                size: *size,
                what: what.clone(),
            }
            .message(bad)
        })
    })
}
