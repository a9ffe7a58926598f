//! CUDA C for the index values of a fused kernel (SPEC §3.3): an `arange` is its index
//! arithmetic (`ValueOp::Index`), a gathered read is a load at a computed position whose
//! index is checked first (`ValueOp::Gather`), a `cumsum` a running sum along the row
//! (`ValueOp::Scan`, in kernels that walk each row in one thread), `argmax`/`argmin` a
//! reduction keeping the best position.
//!
//! An out-of-range index is an error in the data that the host reports after the launch:
//! the kernel records the smallest bad index of each gather with `atomicMin` in a
//! `__device__` array of its own (`check_symbol`, one entry per gather, `NO_ERROR` when
//! none) and reads element 0 of the axis instead, so no access leaves its buffer. The
//! executor (and the emulation) reads the array back; `IndexCheck` says what each entry
//! is about.

use super::writer::Writer;
use crate::ir::ReduceOp;
use crate::lower::{KernelIr, LoadId, ValueId, ValueOp};
use serde::Serialize;

/// An entry of a kernel's index-check array that saw no bad index.
pub const NO_ERROR: i64 = i64::MAX;

/// One gather's check: entry `slot` of the kernel's `symbol` array holds the smallest bad
/// index seen, or `NO_ERROR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndexCheck {
    pub symbol: String,
    pub slot: usize,
    /// The valid indices are `[0, size)`.
    pub size: u64,
    /// The index tensor, the source line and the tensor it indexes.
    pub what: String,
}

impl IndexCheck {
    /// The error in the data for bad index `value`.
    pub fn message(&self, value: i64) -> String {
        format!(
            "index {value} is out of range [0, {}): {}",
            self.size, self.what
        )
    }
}

/// The error of the first check (in slot order) whose entry in `values` (the kernel's
/// check array, read back) holds a bad index.
pub fn first_error(checks: &[IndexCheck], values: &[i64]) -> Option<String> {
    checks.iter().find_map(|c| match values.get(c.slot) {
        Some(&v) if v != NO_ERROR => Some(c.message(v)),
        _ => None,
    })
}

/// The `__device__` array where kernel `kernel` records bad indices.
pub fn check_symbol(kernel: &str) -> String {
    format!("tc_bad_{kernel}")
}

/// The checks of kernel `k` named `kernel`: one per gather, in value order.
pub fn checks(kernel: &str, k: &KernelIr) -> Vec<IndexCheck> {
    k.values
        .iter()
        .filter_map(|v| match &v.op {
            ValueOp::Gather { size, what, .. } => Some((*size, what.clone())),
            _ => None,
        })
        .enumerate()
        .map(|(slot, (size, what))| IndexCheck {
            symbol: check_symbol(kernel),
            slot,
            size,
            what,
        })
        .collect()
}

/// Declares the check array of a kernel with gathers (before the kernel's function).
pub(super) fn declare_checks(w: &mut Writer, kernel: &str, k: &KernelIr) {
    let n = checks(kernel, k).len();
    if n == 0 {
        return;
    }
    let init = vec![format!("{NO_ERROR}LL"); n].join(", ");
    w.line(format!(
        "__device__ long long {}[{n}] = {{{init}}};",
        check_symbol(kernel)
    ));
}

/// Whether kernel `k` has values only `emit_value` writes (then its pointwise loop is
/// scalar: each element computes its own indices).
pub(super) fn has_index_values(k: &KernelIr) -> bool {
    k.values.iter().any(|v| {
        matches!(
            v.op,
            ValueOp::Index { .. } | ValueOp::Gather { .. } | ValueOp::Scan(_)
        )
    })
}

/// Whether a kernel must walk each row in order in one thread: a scan. (An
/// `argmax`/`argmin` need not: each thread keeps the first best of the elements it walks,
/// in increasing position, and `arg_combine` merges threads by value, then position.)
pub fn needs_row_order(k: &KernelIr) -> bool {
    k.values.iter().any(|v| matches!(v.op, ValueOp::Scan(_)))
}

/// Where a value is computed: the C name of each merged axis's index (`"0"` for an axis
/// whose index is not known there, along which the value does not move), and for a load
/// its buffer parameter and the element it reads at the current index.
pub(super) struct Site<'a> {
    pub kernel: &'a str,
    pub names: Vec<String>,
    pub at: &'a dyn Fn(LoadId) -> (String, String),
}

/// Emits value `i` when it is an arange or a gather (`false` for any other value).
pub(super) fn emit_value(w: &mut Writer, k: &KernelIr, i: ValueId, site: &Site<'_>) -> bool {
    let inst = k.value(i);
    let vt = super::cuda::value_type(inst.dtype);
    match &inst.op {
        ValueOp::Index { offset, strides } => {
            let e = super::cuda::address(*offset, &site.names, strides);
            w.line(format!("const {vt} {i} = (long long)({e});"));
            true
        }
        ValueOp::Gather {
            load,
            index,
            stride,
            size,
            ..
        } => {
            let slot = k.values[..i.index()]
                .iter()
                .filter(|v| matches!(v.op, ValueOp::Gather { .. }))
                .count();
            let g = format!("tc_g{}", i.index());
            w.line(format!("const long long {g} = (long long)({index});"));
            w.line(format!("const bool {g}_ok = {g} >= 0 && {g} < {size}LL;"));
            w.line(format!(
                "if (!{g}_ok) atomicMin(&{}[{slot}], {g});",
                check_symbol(site.kernel)
            ));
            let pos = format!("({g}_ok ? {g} : 0LL) * {stride}LL");
            match load {
                Some(l) => {
                    let (buf, at) = (site.at)(*l);
                    let raw = format!("{buf}[{at} + {pos}]");
                    w.line(format!(
                        "const {vt} {i} = {};",
                        super::cuda::load_conv(k.load(*l).dtype, &raw)
                    ));
                }
                None => w.line(format!("const {vt} {i} = {pos};")),
            }
            true
        }
        _ => false,
    }
}

/// Declares the running sums of the scans among `list` (before a walk of the row).
pub(super) fn scan_inits(w: &mut Writer, k: &KernelIr, list: &[ValueId]) {
    for &i in list {
        if let ValueOp::Scan(_) = k.value(i).op {
            let vt = super::cuda::value_type(k.value(i).dtype);
            w.line(format!("{vt} tc_scan{} = 0;", i.index()));
        }
    }
}

/// How the threads of a row scan it (`RowLaunch::tiled`): one thread walks the whole row,
/// or a warp or a block scans each tile of the row together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ScanMode {
    Thread,
    Warp,
    Block,
}

/// Emits scan value `i` inside the walk (`false` for any other value). In a tiled walk the
/// tile's inclusive prefix (`tc_warp_scan`/`tc_block_scan`; threads past the row's end add
/// 0) is added to the running sum of the tiles before, which then grows by the tile's total.
pub(super) fn emit_scan(w: &mut Writer, k: &KernelIr, i: ValueId, mode: ScanMode) -> bool {
    let inst = k.value(i);
    let ValueOp::Scan(a) = inst.op else {
        return false;
    };
    let n = i.index();
    let int = inst.dtype.is_integral();
    if mode == ScanMode::Thread {
        if int {
            w.line(format!("tc_scan{n} = tc_iadd(tc_scan{n}, {a});"));
            w.line(format!("const long long {i} = tc_scan{n};"));
        } else {
            w.line(format!("tc_scan{n} += {a};"));
            w.line(format!("const float {i} = tc_scan{n};"));
        }
        return true;
    }
    let (vt, zero, smem) = if int {
        ("long long", "0LL", "tc_smemsl")
    } else {
        ("float", "0.0f", "tc_smemsf")
    };
    w.line(format!("{vt} tc_p{n}, tc_t{n};"));
    match mode {
        ScanMode::Warp => w.line(format!(
            "tc_warp_scan(({vt})(tc_in ? {a} : {zero}), tc_p{n}, tc_t{n});"
        )),
        _ => w.line(format!(
            "tc_block_scan(({vt})(tc_in ? {a} : {zero}), tc_p{n}, tc_t{n}, {smem});"
        )),
    }
    w.line(format!(
        "const {vt} {i} = tc_scan_add(tc_scan{n}, tc_p{n});"
    ));
    w.line(format!("tc_scan{n} = tc_scan_add(tc_scan{n}, tc_t{n});"));
    true
}

/// The accumulators of an `argmax`/`argmin` `r` over operand `a` (before the walk).
pub(super) fn arg_init(w: &mut Writer, k: &KernelIr, r: ValueId, a: ValueId) {
    let vt = super::cuda::value_type(k.value(a).dtype);
    let n = r.index();
    w.line(format!("{vt} acc{n} = 0;"));
    w.line(format!("long long acc{n}_j = -1;"));
}

/// Folds element `a` at row position `j` into `argmax`/`argmin` `r` (in row order, so a
/// tie keeps the first; the first NaN wins, as in PyTorch).
pub(super) fn arg_step(w: &mut Writer, k: &KernelIr, op: ReduceOp, r: ValueId, a: ValueId) {
    let n = r.index();
    let cmp = if op == ReduceOp::ArgMax { ">" } else { "<" };
    let better = if k.value(a).dtype.is_integral() {
        format!("{a} {cmp} acc{n}")
    } else {
        format!("({a} != {a} && acc{n} == acc{n}) || {a} {cmp} acc{n}")
    };
    w.line(format!(
        "if (acc{n}_j < 0 || {better}) {{ acc{n} = {a}; acc{n}_j = (long long)j; }}"
    ));
}

/// Combines the `(value, position)` pairs of `argmax`/`argmin` `r` across the threads that
/// share a row (after the walk; `mode` as `RowLaunch`: slices, a warp or a block per row;
/// nothing for one thread per row): the better value wins, NaN above every number, and of
/// equal values (or two NaNs) the smaller position: the first, as the walk in order gives.
/// Deterministic: the winner is the least pair of a total order, whatever the tree.
pub(super) fn arg_combine(w: &mut Writer, op: ReduceOp, r: ValueId, mode: ArgMode, smem: &str) {
    let n = r.index();
    let max = op == ReduceOp::ArgMax;
    match mode {
        ArgMode::Thread => {}
        ArgMode::Warp => w.line(format!("tc_warp_arg<{max}>(acc{n}, acc{n}_j);")),
        ArgMode::Block => w.line(format!(
            "tc_block_arg<{max}>(acc{n}, acc{n}_j, {smem}, tc_smemaj);"
        )),
        ArgMode::Slices => w.line(format!(
            "tc_slice_arg<{max}>(acc{n}, acc{n}_j, {smem}, tc_smemaj);"
        )),
    }
}

/// How the threads of a row share it, for `arg_combine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ArgMode {
    Thread,
    Warp,
    Block,
    Slices,
}

/// The result of `argmax`/`argmin` `r` once the walk is done.
pub(super) fn arg_finish(w: &mut Writer, r: ValueId) {
    w.line(format!("const long long {r} = acc{}_j;", r.index()));
}
