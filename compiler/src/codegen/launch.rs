//! The launch strategy of a generated CUDA kernel: how its work maps onto the GPU (grid and
//! block sizes, vector width, threads per row, rows held in registers or re-read in each
//! pass, online reductions, index width). A value computed from the kernel IR alone, so
//! it is tested on its own; `cuda` writes the CUDA C that carries it out, and the executor
//! launches with `Strategy::launch`.

use super::Launch;
use crate::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use crate::lower::{KernelIr, Level, LoadId, ValueId, ValueOp};
use serde::Serialize;

/// Threads per block of a pointwise kernel and of a warp-per-row kernel.
pub const BLOCK: u32 = 256;
/// Most blocks a grid-stride kernel launches.
pub const MAX_GRID: u64 = 8192;
/// Most blocks of a row kernel (rows beyond are looped over).
pub const MAX_ROW_GRID: u64 = 65536;
/// Threads a column-reduction kernel aims to have running (about 2048 per SM on 132 SMs).
pub const TARGET_THREADS: u64 = 1 << 18;
/// Rows up to this length get one warp each; longer rows one block.
pub const WARP_ROW_MAX: u64 = 512;
/// Most row elements a thread keeps in registers, and most cached values per thread.
pub const MAX_ITEMS: u64 = 16;
pub const MAX_CACHED_VALUES: u64 = 64;
/// Index arithmetic is 32-bit when every index stays below this (room for grid strides).
pub const NARROW_LIMIT: u64 = (1 << 31) - (1 << 24);

/// How one fused kernel runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Pointwise(PointwiseLaunch),
    Rows(RowLaunch),
}

/// A grid-stride loop over the merged domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PointwiseLaunch {
    /// The merged domain (`[1]` for a single element).
    pub sizes: Vec<u64>,
    /// Elements.
    pub n: u64,
    /// Elements per vector access: 4 when any access is f32 (16 bytes), else 8.
    pub lanes: u64,
    /// Whether the loop runs over vectors of `lanes` (then a scalar tail, if any).
    pub vectorize: bool,
    pub grid: u64,
    /// 64-bit index arithmetic.
    pub wide: bool,
}

/// Rows spread over threads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowLaunch {
    pub rows: u64,
    /// Elements per row.
    pub len: u64,
    /// Threads sharing one row: 1 when the innermost axis is a row axis (neighbouring
    /// threads then read neighbouring rows, coalesced), a warp for short rows, else a block.
    pub group: u64,
    /// Row-per-thread kernels with few rows split each row over `slices` warps-worth of
    /// threads (lane = row, warp = slice) so enough loads are in flight; else 1.
    pub slices: u64,
    /// Threads walking one row (`slices` or `group`).
    pub threads: u64,
    /// Row elements per thread.
    pub items: u64,
    /// The loads held in registers (`items` per thread, read from memory once); empty when
    /// the row is re-read from memory in each pass.
    pub cached: Vec<LoadId>,
    /// Threads per block.
    pub block: u64,
    pub rows_per_block: u64,
    pub grid: u64,
    /// 64-bit index arithmetic.
    pub wide: bool,
    /// `len` is a multiple of `threads` (no bounds test in the register loops).
    pub exact: bool,
    /// Reductions computed in the pass before theirs.
    pub online: Vec<Online>,
    /// The row is walked in tiles of `threads` consecutive elements, every thread through
    /// every tile (those past the row's end on its last element, storing and folding
    /// nothing), so that a scan can combine each tile across the warp or block in order.
    pub tiled: bool,
    /// Elements per 16-byte read of a row held in registers (4 f32, 8 f16/bf16), 1 for
    /// scalar reads. Thread `tid`'s slot `t` is then element
    /// `((t / lanes) * threads + tid) * lanes + t % lanes` of the row.
    pub lanes: u64,
    /// A column reduction split over blocks (the kernel's workspace, `plan::split::column_split`).
    pub split: Option<ColumnSplit>,
}

/// Threads per block of the launch that folds a split column reduction's partials (one
/// thread per column).
pub const FOLD_BLOCK: u64 = 256;

/// How a column reduction runs split over blocks: blocks `(x, y)` fold elements
/// `[y·chunk, min((y + 1)·chunk, len))` of the 32 columns of block `x` into partials
/// (`parts × rows` accumulators per reduction, at `offsets` bytes into the workspace), then
/// a second launch, `fold_grid` blocks of `FOLD_BLOCK` threads, folds each column's partials
/// in part order and finishes the row (deterministic: no atomics, a fixed order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnSplit {
    pub parts: u64,
    pub chunk: u64,
    /// Byte offset of each reduction's partials in the workspace, in value order.
    pub offsets: Vec<u64>,
    pub fold_grid: u64,
}

impl RowLaunch {
    /// Whether the row is held in registers.
    pub fn cache(&self) -> bool {
        !self.cached.is_empty()
    }

    /// A warp (or one thread) per row: reductions combine with shuffles.
    pub fn warp_mode(&self) -> bool {
        self.group <= 32
    }

    /// A block per row: reductions combine through shared memory.
    pub fn block_mode(&self) -> bool {
        !self.warp_mode() && self.group > 1
    }

    /// The `Online` pair whose first half is reduction `v`.
    pub fn pair_of(&self, v: ValueId) -> Option<Online> {
        self.online.iter().copied().find(|o| o.parts().0 == v)
    }
}

/// A reduction that needs the result of a reduction of the pass before, computed in that
/// pass's read of the row instead, for rows too long to keep in registers (which would
/// otherwise be read from memory once more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Online {
    /// `sum` = Σ exp(a − `max`), `max` = max(a): online softmax.
    Softmax { max: ValueId, sum: ValueId },
    /// `var` = Σ or mean of (a − `mean`)², `mean` = mean(a): Welford.
    Welford { mean: ValueId, var: ValueId },
}

impl Online {
    /// The reduction of the earlier pass, and the one folded into it.
    pub fn parts(self) -> (ValueId, ValueId) {
        match self {
            Online::Softmax { max, sum } => (max, sum),
            Online::Welford { mean, var } => (mean, var),
        }
    }
}

impl Strategy {
    /// The strategy for kernel `k`, run whole (no workspace).
    pub fn of(k: &KernelIr) -> Strategy {
        Strategy::with_workspace(k, None)
    }

    /// The strategy for kernel `k` whose plan gives it a workspace of `workspace` bytes
    /// (`FusedKernel::workspace`): a column reduction then splits over blocks when its
    /// shape is the one the planner sized the workspace for.
    pub fn with_workspace(k: &KernelIr, workspace: Option<u64>) -> Strategy {
        if k.is_pointwise() {
            Strategy::Pointwise(pointwise(k))
        } else {
            Strategy::Rows(rows(k, workspace))
        }
    }

    /// Grid and block the executor launches kernel `name` with (and its fold, for a split
    /// column reduction: `{name}_fold`).
    pub fn launch(&self, name: &str) -> Launch {
        let (grid, block) = match self {
            Strategy::Pointwise(p) => (p.grid, BLOCK as u64),
            Strategy::Rows(r) => (r.grid, r.block),
        };
        match self {
            Strategy::Rows(RowLaunch {
                split: Some(sp), ..
            }) => Launch::Split {
                grid: [grid as u32, sp.parts as u32, 1],
                block: [block as u32, 1, 1],
                fold: format!("{name}_fold"),
                fold_grid: [sp.fold_grid as u32, 1, 1],
                fold_block: [FOLD_BLOCK as u32, 1, 1],
            },
            _ => Launch::Grid {
                grid: [grid as u32, 1, 1],
                block: [block as u32, 1, 1],
                shared_bytes: 0,
            },
        }
    }

    /// One line saying what the kernel does, for the generated source's header.
    pub fn describe(&self) -> String {
        let width = |wide: bool| if wide { "64-bit" } else { "32-bit" };
        match self {
            Strategy::Pointwise(p) if p.vectorize => format!(
                "pointwise over {} elements ({:?} collapsed), {}-wide vectors{}, {} indices",
                p.n,
                p.sizes,
                p.lanes,
                if !p.n.is_multiple_of(p.lanes) {
                    " with a scalar tail"
                } else {
                    ""
                },
                width(p.wide)
            ),
            Strategy::Pointwise(p) => format!(
                "pointwise over {} elements ({:?} collapsed), scalar, {} indices",
                p.n,
                p.sizes,
                width(p.wide)
            ),
            Strategy::Rows(r) => format!(
                "{} rows of {} elements; {}; {}; {} indices",
                r.rows,
                r.len,
                match r.group {
                    1 if r.split.is_some() => {
                        let sp = r.split.as_ref().map_or((0, 0), |sp| (sp.parts, sp.chunk));
                        format!(
                            "32 rows per block, each split over {} threads and {} blocks of {} \
                             elements (partials in the workspace, folded in order by a second launch)",
                            r.slices, sp.0, sp.1
                        )
                    }
                    1 if r.slices > 1 =>
                        format!("32 rows per block, each split over {} threads", r.slices),
                    1 => "one thread per row".to_string(),
                    32 if r.tiled => "one warp per row, scanned in tiles of 32".to_string(),
                    32 => "one warp per row".to_string(),
                    _ if r.tiled => format!(
                        "one block of {} threads per row, scanned in tiles of {}",
                        r.threads, r.threads
                    ),
                    _ => format!("one block of {} threads per row", r.threads),
                },
                {
                    let names: Vec<&str> = r
                        .online
                        .iter()
                        .map(|o| match o {
                            Online::Softmax { .. } => "online softmax",
                            Online::Welford { .. } => "Welford mean and variance",
                        })
                        .collect();
                    match (r.cache(), names.is_empty()) {
                        (true, true) => {
                            format!("row held in registers ({} per thread), read once", r.items)
                        }
                        (true, false) => format!(
                            "row held in registers ({} per thread), read once, {} in one reduction",
                            r.items,
                            names.join(", ")
                        ),
                        (false, true) => "re-read from memory in each pass".into(),
                        (false, false) => format!(
                            "re-read from memory in each pass, {} in one",
                            names.join(", ")
                        ),
                    }
                },
                width(r.wide)
            ),
        }
    }
}

fn pointwise(k: &KernelIr) -> PointwiseLaunch {
    let sizes = if k.axes.sizes.is_empty() {
        vec![1u64]
    } else {
        k.axes.sizes.clone()
    };
    let n: u64 = sizes.iter().product();
    let rank = sizes.len();
    let last = sizes[rank - 1];
    let any_f32 = k
        .loads
        .iter()
        .map(|l| l.dtype)
        .chain(k.stores.iter().map(|s| s.dtype))
        .any(|d| d == DType::F32);
    let lanes: u64 = if any_f32 { 4 } else { 8 };
    // Vector accesses pack f32 or 16-bit floats; integer and bool buffers go element by
    // element, and a store into a region (a concat part) is strided: scalar accesses; so do
    // kernels that compute indices (aranges, gathers).
    let integral = k
        .loads
        .iter()
        .map(|l| l.dtype)
        .chain(k.stores.iter().map(|s| s.dtype))
        .any(|d| d.is_integral());
    let vectorize = n >= lanes
        && (rank == 1 || last % lanes == 0)
        && !k.stores.is_empty()
        && !integral
        && k.stores.iter().all(|s| s.is_plain(&k.axes))
        && !super::index::has_index_values(k);
    let work = if vectorize { n / lanes } else { n };
    PointwiseLaunch {
        grid: work.div_ceil(BLOCK as u64).clamp(1, MAX_GRID),
        wide: k.max_index().max(n) >= NARROW_LIMIT,
        sizes,
        n,
        lanes,
        vectorize,
    }
}

fn rows(k: &KernelIr, workspace: Option<u64>) -> RowLaunch {
    let rows = k.axes.rows();
    let len = k.axes.row_len();
    let innermost_is_row = k.axes.reduce.last() == Some(&false);
    // A scan walks each row in order: in one thread where neighbouring threads take
    // neighbouring rows (the innermost axis is a row axis), else in tiles of `threads`
    // elements that a warp or a block scans together (`tiled`). An argmax/argmin needs no
    // order: each thread keeps the first best of its elements, and threads combine by
    // value, then by position (`tc_warp_arg`).
    let in_order = super::index::needs_row_order(k);
    let group: u64 = if innermost_is_row {
        1
    } else if len <= WARP_ROW_MAX {
        32
    } else {
        len.div_ceil(8).next_power_of_two().clamp(128, 1024)
    };
    let slices: u64 = if innermost_is_row && !in_order {
        (TARGET_THREADS / rows.max(1)).clamp(1, 32).min(len.max(1))
    } else {
        1
    };
    let warp_mode = group <= 32;
    let threads = if innermost_is_row { slices } else { group };
    let tiled = in_order && group > 1;
    let items = len.div_ceil(threads);
    let per_element: Vec<LoadId> = (0..k.loads.len())
        .map(LoadId::new)
        .filter(|&l| k.load_is_read_per_element(l))
        .collect();
    // A load that only the last (writing) pass reads — layernorm's gamma and beta — is read
    // there, once, from memory: holding it in registers from the start saves no traffic and
    // costs `items` registers a thread through every pass.
    let last = k.passes.len().saturating_sub(1);
    let read_before_last = |l: LoadId| {
        k.passes[..last].iter().any(|p| {
            p.elements
                .iter()
                .any(|&i| k.value(i).op == ValueOp::Load(l))
        })
    };
    let early: Vec<LoadId> = per_element
        .iter()
        .copied()
        .filter(|&l| read_before_last(l))
        .collect();
    let cached = if early.is_empty() { per_element } else { early };
    // 1024-thread blocks have at most 64 registers per thread: cache less there.
    let register_budget = if threads >= 1024 {
        MAX_CACHED_VALUES / 2
    } else {
        MAX_CACHED_VALUES
    };
    let split = workspace.and_then(|bytes| column_split(k, slices, bytes));
    // (a tiled scan walks the row tile by tile, every thread in step: not from registers;
    // a split column's part is read once, by its own blocks)
    let cache = split.is_none()
        && !tiled
        && !cached.is_empty()
        && items <= MAX_ITEMS
        && cached.len() as u64 * items <= register_budget;
    // Rows held in registers by a warp or a block are read 16 bytes at a time where every
    // cached load allows: one reduce axis, read with stride 1 from a 16-byte aligned start
    // on every row, all of one float width, and a row a whole number of vectors.
    let lanes = if cache && group > 1 {
        vector_lanes(k, &cached, len)
    } else {
        1
    };
    // A thread's slots are whole vectors: `items` rounds up to them (scalar reads where
    // that would not fit).
    let vector_items = len.div_ceil(threads * lanes) * lanes;
    let (lanes, items) = if lanes > 1
        && vector_items <= MAX_ITEMS
        && cached.len() as u64 * vector_items <= register_budget
    {
        (lanes, vector_items)
    } else {
        (1, items)
    };
    let block: u64 = if slices > 1 {
        32 * slices
    } else if warp_mode {
        BLOCK as u64
    } else {
        threads
    };
    let rows_per_block = if slices > 1 {
        32
    } else if warp_mode {
        block / group
    } else {
        1
    };
    // Fold a pass into the one before where the maths allows: rows re-read in each pass
    // then read memory once less; rows held in registers combine across threads once (one
    // block reduction of (max, sum) instead of two: 3 barriers a row, not 6). Welford stays
    // for rows re-read only: in registers its divide per element costs more than the
    // block reduction it saves.
    // (a scan in registers would be walked twice)
    let online = if slices > 1 || (cache && in_order) {
        Vec::new()
    } else {
        online_pairs(k, len, cache)
    };
    RowLaunch {
        rows,
        len,
        group,
        slices,
        threads,
        items,
        cached: if cache { cached } else { Vec::new() },
        block,
        rows_per_block,
        grid: rows.div_ceil(rows_per_block).clamp(1, MAX_ROW_GRID),
        wide: k.max_index().max(rows.saturating_mul(len)) >= NARROW_LIMIT,
        exact: len.is_multiple_of(threads * lanes),
        online,
        tiled,
        lanes,
        split,
    }
}

/// The split of a column reduction walked by `slices` threads a column, when the planner
/// gave it a workspace of `bytes` (`plan::split::column_split`, whose sizes this checks
/// again on the kernel IR): the innermost axis a row axis, every reduction folded in the
/// first walk, nothing after it per element that needs one, no argmax/argmin or scan, and
/// the workspace the layout's size. `None`: the kernel runs whole.
fn column_split(k: &KernelIr, slices: u64, bytes: u64) -> Option<ColumnSplit> {
    let innermost_is_row = k.axes.reduce.last() == Some(&false);
    let reduces: Vec<ValueId> = k.passes.first()?.reduces.clone();
    let simple = innermost_is_row
        && slices == 32
        && k.passes.len() == 2
        && !super::index::needs_row_order(k)
        && !k.has_scan()
        && reduces
            .iter()
            .all(|&r| matches!(k.value(r).op, ValueOp::Reduce(op, _) if !op.is_arg()))
        && k.passes[1]
            .elements
            .iter()
            .all(|&v| k.value(v).pass.index() == 0)
        && k.stores.iter().all(|s| s.is_plain(&k.axes));
    if !simple {
        return None;
    }
    let (rows, len) = (k.axes.rows(), k.axes.row_len());
    let parts = crate::memory::sizes::shared_column_parts(rows, len, reduces.len())?;
    let integral: Vec<bool> = reduces
        .iter()
        .map(|&r| k.value(r).dtype.is_integral())
        .collect();
    let (offsets, total) = crate::plan::split::column_layout(rows, parts, &integral);
    (total == bytes).then(|| ColumnSplit {
        parts,
        chunk: len.div_ceil(parts),
        offsets,
        fold_grid: rows.div_ceil(FOLD_BLOCK).clamp(1, MAX_GRID),
    })
}

/// Elements per 16-byte vector for reading the `cached` loads of a row of `len`, or 1.
fn vector_lanes(k: &KernelIr, cached: &[LoadId], len: u64) -> u64 {
    let red = k.axes.reduce_axes();
    let rows = k.axes.row_axes();
    let Some(first) = cached.first() else {
        return 1;
    };
    let dtype = k.load(*first).dtype;
    let lanes = match dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 8,
        _ => return 1,
    };
    let fits = red.len() == 1
        && len.is_multiple_of(lanes as u64)
        && cached.iter().all(|&l| {
            let ld = k.load(l);
            ld.dtype.size() == dtype.size()
                && !ld.dtype.is_integral()
                && ld.strides[red[0]] == 1
                && ld.offset % lanes == 0
                && rows.iter().all(|&d| ld.strides[d] % lanes == 0)
        });
    if fits {
        lanes as u64
    } else {
        1
    }
}

/// `r` as the second half of an `Online` pair, if its operand has exactly that shape. No
/// `Cast` may stand between the steps: a rounding there (f16/bf16 programs round after each
/// op) depends on the final max or mean, which a single pass does not know yet.
fn online_form(k: &KernelIr, r: ValueId) -> Option<Online> {
    let op = |i: ValueId| &k.value(i).op;
    let elem = |ids: &[ValueId]| ids.iter().all(|&i| k.value(i).level == Level::Element);
    let ValueOp::Reduce(red, x) = *op(r) else {
        return None;
    };
    if k.value(r).dtype.is_integral() {
        return None;
    }
    match (red, op(x)) {
        (ReduceOp::Sum, &ValueOp::Unary(UnaryOp::Exp, d)) => {
            let ValueOp::Binary(BinaryOp::Sub, a, m) = *op(d) else {
                return None;
            };
            let same = matches!(*op(m), ValueOp::Reduce(ReduceOp::Max, a2) if a2 == a);
            (same && elem(&[x, d, a])).then_some(Online::Softmax { max: m, sum: r })
        }
        (ReduceOp::Sum | ReduceOp::Mean, &ValueOp::Binary(bop, d, e)) => {
            let square = match bop {
                BinaryOp::Mul => d == e,
                BinaryOp::Pow => matches!(*op(e), ValueOp::Const(c) if c == 2.0),
                _ => false,
            };
            let ValueOp::Binary(BinaryOp::Sub, a, u) = *op(d) else {
                return None;
            };
            let same = matches!(*op(u), ValueOp::Reduce(ReduceOp::Mean, a2) if a2 == a);
            (square && same && elem(&[x, d, a])).then_some(Online::Welford { mean: u, var: r })
        }
        _ => None,
    }
}

/// The `Online` pairs of a kernel whose rows are re-read in each pass: the reductions of a
/// pass are moved into the pass before when every one pairs with a distinct reduction
/// there. Welford counts in f32, so rows must stay below 2^24 elements; rows in registers
/// (`cache`) take online softmax only.
fn online_pairs(k: &KernelIr, len: u64, cache: bool) -> Vec<Online> {
    let mut pairs: Vec<Online> = Vec::new();
    let mut moved = vec![false; k.passes.len()];
    // Pass `q`'s reductions into pass `q - 1`, unless that pass's own were moved.
    for q in 1..k.passes.len() {
        if moved[q - 1] {
            continue;
        }
        let forms: Option<Vec<Online>> = k.passes[q]
            .reduces
            .iter()
            .map(|&r| online_form(k, r))
            .collect();
        let Some(forms) = forms.filter(|f| !f.is_empty()) else {
            continue;
        };
        let mut firsts: Vec<ValueId> = forms.iter().map(|f| f.parts().0).collect();
        let earlier = firsts.iter().all(|&f| k.passes[q - 1].reduces.contains(&f));
        let welford = forms.iter().any(|f| matches!(f, Online::Welford { .. }));
        firsts.sort_unstable();
        firsts.dedup();
        if earlier && firsts.len() == forms.len() && !(welford && (cache || len >= 1 << 24)) {
            moved[q] = true;
            pairs.extend(forms);
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::UnaryOp;
    use crate::lower::lower_fused;
    use crate::schedule::{
        Buffer, BufferId, BufferKind, FusedKernel, Inst, InstOp, Kernel, KernelKind, Load, Plan,
        PlanOptions, Store,
    };

    fn buffer(kind: BufferKind, dtype: DType, numel: u64, offset: u64) -> Buffer {
        Buffer {
            name: "b".into(),
            kind,
            dtype,
            shape: vec![numel],
            bytes: numel * dtype.size(),
            offset,
            first_step: 0,
            last_step: 0,
            in_place_of: None,
            node: None,
        }
    }

    fn inst(op: InstOp, level: Level) -> Inst {
        Inst {
            op,
            dtype: DType::F32,
            level,
            node: None,
        }
    }

    /// The strategy of one kernel over `domain` reading input `x` (strides `strides`) with
    /// `body`, storing `stores` (inst, order) to separate arena buffers.
    fn strategy(
        dtype: DType,
        domain: &[u64],
        reduce_axes: &[usize],
        strides: &[i64],
        body: Vec<Inst>,
        stores: &[(usize, Level)],
    ) -> Strategy {
        let numel: u64 = domain.iter().product();
        let rows: u64 = domain
            .iter()
            .enumerate()
            .filter(|(i, _)| !reduce_axes.contains(i))
            .map(|(_, s)| s)
            .product();
        let mut buffers = vec![buffer(BufferKind::Input { index: 0 }, dtype, numel, 0)];
        let mut offset = 0;
        for &(_, order) in stores {
            let n = if order == Level::Row { rows } else { numel };
            buffers.push(buffer(BufferKind::Arena, dtype, n, offset));
            offset += (n * dtype.size()).div_ceil(16) * 16;
        }
        let kernel = FusedKernel {
            domain: domain.to_vec(),
            reduce_axes: reduce_axes.to_vec(),
            loads: vec![Load {
                buffer: BufferId(0),
                dtype,
                offset: 0,
                strides: strides.to_vec(),
            }],
            body,
            stores: stores
                .iter()
                .enumerate()
                .map(|(i, &(inst, _))| Store {
                    inst,
                    buffer: BufferId(i as u32 + 1),
                    region: None,
                })
                .collect(),
            workspace: None,
        };
        let plan = Plan {
            kernels: vec![Kernel {
                name: "k0".into(),
                kind: KernelKind::Fused(kernel.clone()),
                ops: Vec::new(),
                lines: Vec::new(),
            }],
            buffers,
            arena_bytes: offset,
            inputs: vec![BufferId(0)],
            params: Vec::new(),
            outputs: Vec::new(),
            options: PlanOptions::default(),
            unfused_fallback: false,
            notes: Vec::new(),
        };
        Strategy::of(&lower_fused(&plan, "k0", &kernel).expect("lowers"))
    }

    fn exp_of_load() -> Vec<Inst> {
        vec![
            inst(InstOp::Load(0), Level::Element),
            inst(InstOp::Unary(UnaryOp::Exp, 0), Level::Element),
        ]
    }

    /// softmax's statistics over the last axis: max, then Σ exp(x − max).
    fn softmax_body() -> Vec<Inst> {
        vec![
            inst(InstOp::Load(0), Level::Element),
            inst(InstOp::Reduce(ReduceOp::Max, 0), Level::Row),
            inst(InstOp::Binary(BinaryOp::Sub, 0, 1), Level::Element),
            inst(InstOp::Unary(UnaryOp::Exp, 2), Level::Element),
            inst(InstOp::Reduce(ReduceOp::Sum, 3), Level::Row),
        ]
    }

    #[test]
    fn pointwise_kernels_use_vectors_where_the_layout_allows() {
        let Strategy::Pointwise(p) = strategy(
            DType::F32,
            &[64, 1024],
            &[],
            &[1024, 1],
            exp_of_load(),
            &[(1, Level::Element)],
        ) else {
            panic!("pointwise")
        };
        // Both axes merge; 4 f32 lanes; 65536 / 4 / 256 blocks.
        assert_eq!(p.sizes, [65536]);
        assert_eq!((p.lanes, p.vectorize, p.grid, p.wide), (4, true, 64, false));
        // f16 only: 8 lanes; an odd inner size of a transposed read stays scalar.
        let Strategy::Pointwise(p) = strategy(
            DType::F16,
            &[7, 13],
            &[],
            &[1, 7],
            exp_of_load(),
            &[(1, Level::Element)],
        ) else {
            panic!("pointwise")
        };
        assert_eq!(p.sizes, [7, 13]);
        assert_eq!((p.lanes, p.vectorize, p.grid), (8, false, 1));
        // 2^32 elements need 64-bit indices; the grid is capped.
        let Strategy::Pointwise(p) = strategy(
            DType::F16,
            &[1 << 16, 1 << 16],
            &[],
            &[1 << 16, 1],
            exp_of_load(),
            &[(1, Level::Element)],
        ) else {
            panic!("pointwise")
        };
        assert!(p.wide);
        assert_eq!(p.grid, MAX_GRID);
    }

    #[test]
    fn short_rows_take_a_warp_long_rows_a_block_and_registers_while_they_fit() {
        let rows = |cols: u64| match strategy(
            DType::F32,
            &[16, cols],
            &[1],
            &[cols as i64, 1],
            softmax_body(),
            &[(4, Level::Row)],
        ) {
            Strategy::Rows(r) => r,
            Strategy::Pointwise(_) => panic!("rows"),
        };
        let warp = rows(300);
        assert_eq!((warp.group, warp.threads, warp.block), (32, 32, 256));
        // 300 f32 a row, a whole number of float4s: each thread's 10 values round up to
        // 3 vectors (12 slots, the last ones past the row's end on some threads).
        assert_eq!((warp.rows_per_block, warp.grid, warp.items), (8, 2, 12));
        assert_eq!(warp.lanes, 4);
        // In registers, max and sum still combine across the warp once (online softmax).
        let pair = [Online::Softmax {
            max: ValueId(1),
            sum: ValueId(4),
        }];
        assert!(warp.cache() && !warp.exact && warp.online == pair);
        let block = rows(4096);
        assert_eq!((block.group, block.threads, block.block), (512, 512, 512));
        assert_eq!((block.rows_per_block, block.grid, block.items), (1, 16, 8));
        assert!(block.cache() && block.exact && block.block_mode());
        assert_eq!(block.online, pair);
        assert_eq!(block.lanes, 4);
        // A row not a whole number of vectors is read element by element.
        assert_eq!(rows(301).lanes, 1);
        assert!(Strategy::Rows(block)
            .describe()
            .contains("read once, online softmax in one reduction"));
        // 100 000 per row: too long for registers, re-read, softmax's passes in one.
        let long = rows(100_000);
        assert_eq!(long.group, 1024);
        assert!(!long.cache());
        assert_eq!(
            long.online,
            [Online::Softmax {
                max: ValueId(1),
                sum: ValueId(4)
            }]
        );
        assert!(Strategy::Rows(long.clone())
            .describe()
            .contains("online softmax"));
        assert_eq!(
            Strategy::Rows(long).launch("k0"),
            Launch::Grid {
                grid: [16, 1, 1],
                block: [1024, 1, 1],
                shared_bytes: 0
            }
        );
    }

    #[test]
    fn column_reductions_give_each_thread_a_row_and_split_few_rows() {
        // sum over axis 0 of [4096, 64]: the innermost axis is a row axis.
        let Strategy::Rows(r) = strategy(
            DType::F32,
            &[4096, 64],
            &[0],
            &[64, 1],
            vec![
                inst(InstOp::Load(0), Level::Element),
                inst(InstOp::Reduce(ReduceOp::Sum, 0), Level::Row),
            ],
            &[(1, Level::Row)],
        ) else {
            panic!("rows")
        };
        assert_eq!((r.group, r.rows, r.len), (1, 64, 4096));
        // 64 rows: each split over 32 slices of threads, 32 rows per block.
        assert_eq!(
            (r.slices, r.threads, r.block, r.rows_per_block, r.grid),
            (32, 32, 1024, 32, 2)
        );
    }
}
