//! The fused-kernel interpreter: runs one `FusedKernel` as a loop nest over blocks of its
//! domain, with per-thread scratch of one block per inst (no full-size temporaries).
//!
//! A row kernel runs each row in passes: pass `q` first computes the `Row` insts whose
//! inputs are ready, then walks the row in blocks, computing the `Element` insts that the
//! reductions of that pass fold; the last pass computes and stores the outputs, so a row is
//! written only after all its reductions. A pointwise kernel is one pass over element pieces
//! that the threads claim as they come free (`for_each_piece`), rows go to the pool in tasks.
//! Every inst's value is rounded to its dtype as it is computed (a no-op for f32), so a
//! fused kernel rounds exactly where the unfused program stores. A block of a load that is
//! one contiguous f32 run is read where it lies rather than copied into its slot, and a
//! value stored in the last pass is computed straight into its buffer where nothing else
//! of the kernel touches that buffer. Before it runs, `peephole` may rewrite the kernel IR (a
//! shared exponential), and a single-use cheap inst is computed inside the loop of the
//! inst it feeds (`Fold`: a `neg`/`abs` into a unary op, an add/sub/mul/div/maximum/
//! minimum into another), the same IEEE operations in one pass over the block instead of
//! two. A row kernel whose walk along a row strides through memory while its consecutive
//! rows are adjacent (a column reduction) runs in the wide mode of `cpu::columns`: 64 or 16
//! rows at once, each row's values and sums the very bits of the row path.

use super::block::Block;
use super::math::{self, KahanSum, Operand};
use super::{CpuError, Mem};
use rayon::prelude::*;
use tc_compiler::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use tc_compiler::lower::{self, KernelIr, Level, ValueOp};
use tc_compiler::schedule::{FusedKernel, Plan};

/// Elements per block: one block per inst fits in L2 for kernels of a few dozen insts.
const BLOCK: usize = 1024;
/// The smallest piece of a pointwise kernel handed to a thread (`for_each_piece`).
const CHUNK: usize = 16 * BLOCK;
/// Rows up to this long are computed as one block, so each pass reuses the values the
/// earlier passes computed (per-thread scratch of one row per inst, never full-size).
const ROW_CACHE: usize = 16 * 1024;

/// Element offset and per-dim strides of one load or store over the coalesced dims.
#[derive(Clone, Debug)]
pub(super) struct Access {
    pub(super) mem: Mem,
    pub(super) offset: i64,
    /// Strides over the coalesced row dims, then over the coalesced inner dims.
    pub(super) row_strides: Vec<i64>,
    pub(super) inner_strides: Vec<i64>,
}

/// What one pass over a row computes: the kernel IR's pass (`tc_compiler::lower::Pass`) as
/// indices, with what this executor adds (`store_into`).
#[derive(Clone, Debug, Default)]
pub(super) struct Pass {
    /// Row values computed before the block loop, in order.
    pub(super) row_insts: Vec<usize>,
    /// Element values computed per block, in order (less, when rows are one block, those
    /// an earlier pass left in their slots).
    elem_insts: Vec<usize>,
    /// Reductions folded per block.
    pub(super) reduces: Vec<usize>,
    /// Indices into `stores`.
    pub(super) elem_stores: Vec<usize>,
    pub(super) row_stores: Vec<usize>,
    /// Per value: the store its block may be computed straight into, skipping the slot
    /// and the copy (see `prepare`).
    store_into: Vec<Option<usize>>,
}

/// How an element inst takes in the single-use cheap inst that feeds it, computed in the
/// same loop over the block (the fed inst is then in no pass's `elem_insts`): one pass over
/// memory instead of two, the same IEEE operations in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fold {
    None,
    /// A unary inst whose operand is `neg`/`abs` of another value: `op(pre(x))`.
    Pre(math::Pre),
    /// A binary inst one of whose operands (`t`, left or right) is a binary inst:
    /// `op2(op1(a, b), c)` with `a` an element value (`math::binary2_block`).
    Pair {
        t_left: bool,
    },
}

/// A kernel lowered, checked against its buffers and split into passes.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) ir: KernelIr,
    /// Level of each value (from the kernel IR).
    pub(super) level: Vec<Level>,
    /// Per value: whether it has a block-sized slot (element values, and row values that
    /// are stored in domain order or folded by a reduction, filled when needed).
    slot: Vec<bool>,
    pub(super) row_sizes: Vec<usize>,
    pub(super) inner_sizes: Vec<usize>,
    pub(super) rows: usize,
    pub(super) row_len: usize,
    pub(super) loads: Vec<Access>,
    pub(super) stores: Vec<(usize, Access)>,
    pub(super) passes: Vec<Pass>,
    /// Elements per block: `BLOCK`, or the whole row when rows are cached.
    pub(super) block: usize,
    /// Per value: how it takes in the inst that feeds it (`folds`).
    fold: Vec<Fold>,
    /// Per load: f32, 4-byte aligned, and in a buffer no store of this kernel writes, so a
    /// block of it that is one contiguous run is read in place instead of copied.
    direct: Vec<bool>,
    /// Per value: the smallest bad index a gather met (`cpu::index`).
    pub(super) bad: Vec<std::sync::atomic::AtomicI64>,
}

/// Runs `kernel` of `plan`, reading and writing the resolved buffers `mems`.
pub(super) fn run(
    plan: &Plan,
    name: &str,
    kernel: &FusedKernel,
    mems: &[Mem],
) -> Result<(), CpuError> {
    let p = prepare(plan, name, kernel, mems)?;
    if p.rows == 0 || p.row_len == 0 {
        return Ok(());
    }
    if super::typed::needed(&p) || super::index::needed(&p) {
        // SAFETY: every access was bounds-checked over the whole domain in `prepare`.
        unsafe { super::typed::run(&p) };
        return match super::index::first_error(&p, name) {
            Some(msg) => Err(CpuError::IndexOutOfRange(msg)),
            None => Ok(()),
        };
    }
    if kernel.reduce_axes.is_empty() {
        let total = p.row_len;
        for_each_piece(
            total,
            CHUNK,
            || Scratch::new(&p),
            |s, start, end| {
                s.bases_for_row(&p, 0);
                let pass = &p.passes[0];
                // SAFETY: as below (a pointwise kernel's row values read no load).
                unsafe { s.row_values(&p, pass) };
                // SAFETY: every access was bounds-checked over the whole domain in
                // `prepare`; parallel pieces store disjoint element ranges.
                unsafe { s.span(&p, pass, start, end) };
            },
        );
    } else if let Some(wide) = super::columns::plan(&p) {
        // SAFETY: as above; each row, and each group of rows run wide, is computed and
        // stored by one task.
        unsafe { super::columns::run(&p, &wide) };
    } else {
        // SAFETY: as above; each row is computed and stored by one task.
        for_each_task(
            p.rows,
            rows_per_task(p.row_len),
            || Scratch::new(&p),
            |s, r| unsafe { s.row(&p, r) },
        );
    }
    Ok(())
}

/// Runs `f(state, i)` for every `i < n` over the rayon pool, in tasks of consecutive
/// indices (at least `min_len`, about eight tasks per thread for balance) that the threads
/// claim one at a time from an atomic counter as they come free, so a thread slowed by
/// another process never holds the others idle at the end. Each thread makes one state
/// with `new` when it claims its first task and keeps it for every task it runs (a task
/// runs its indices in order on one state, as one longer task would; the state must not
/// carry anything from one index to the next that changes what `f` computes). A kernel of
/// one task, or a pool of one thread, runs on the calling thread, paying no hand-off.
pub(super) fn for_each_task<S>(
    n: usize,
    min_len: usize,
    new: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize) + Sync,
) {
    let threads = rayon::current_num_threads();
    let per_task = n.div_ceil(8 * threads).max(min_len).max(1);
    let tasks = n.div_ceil(per_task);
    let run = |s: &mut S, t: usize| {
        for i in t * per_task..((t + 1) * per_task).min(n) {
            f(s, i);
        }
    };
    if tasks == 0 {
        return;
    }
    if tasks == 1 || threads == 1 {
        let mut s = new();
        (0..tasks).for_each(|t| run(&mut s, t));
        return;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let claim = || {
        let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (t < tasks).then_some(t)
    };
    share(threads.min(tasks), claim, new, run);
}

/// Runs `f(state, work)` for every piece of work `claim` hands out, on `workers` of the
/// pool's threads that claim as they come free: each makes its one state with `new` when
/// it claims its first piece (a worker that claims none makes none) and keeps it.
fn share<S, W>(
    workers: usize,
    claim: impl Fn() -> Option<W> + Sync,
    new: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, W) + Sync,
) {
    (0..workers).into_par_iter().with_max_len(1).for_each(|_| {
        let Some(first) = claim() else { return };
        let mut s = new();
        f(&mut s, first);
        while let Some(work) = claim() {
            f(&mut s, work);
        }
    });
}

/// Runs `f(state, start, end)` over consecutive pieces that cover `0..n`, shared by the
/// rayon pool's threads as they come free (guided self-scheduling): each thread claims the
/// next piece from one atomic counter, a piece being about `1/(2·threads)` of what is left,
/// in multiples of `grain`, never less than `grain`. The pieces shrink towards the end, so
/// the threads finish within about one `grain` of each other whatever slows one of them
/// (another process, a page fault), while the first, large pieces keep the threads in
/// regions of their own. Each thread has one state from `new`. Which thread computes a
/// piece never changes what it computes. Work of at most two grains runs on the calling
/// thread.
pub(super) fn for_each_piece<S>(
    n: usize,
    grain: usize,
    new: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, usize) + Sync,
) {
    let grain = grain.max(1);
    let threads = rayon::current_num_threads();
    if n <= 2 * grain || threads == 1 {
        if n > 0 {
            f(&mut new(), 0, n);
        }
        return;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let claim = || {
        use std::sync::atomic::Ordering::Relaxed;
        let mut at = next.load(Relaxed);
        loop {
            if at >= n {
                return None;
            }
            let want = ((n - at) / (2 * threads))
                .next_multiple_of(grain)
                .max(grain);
            let end = (at + want).min(n);
            match next.compare_exchange_weak(at, end, Relaxed, Relaxed) {
                Ok(_) => return Some((at, end)),
                Err(now) => at = now,
            }
        }
    };
    share(threads, claim, new, |s, (start, end)| f(s, start, end));
}

/// The element offset of each load, then each store, at row `r`, into `bases`.
pub(super) fn row_bases(p: &Prepared, r: usize, bases: &mut [i64]) {
    let accesses = p.loads.iter().chain(p.stores.iter().map(|(_, a)| a));
    for (b, acc) in bases.iter_mut().zip(accesses) {
        let mut q = r;
        let mut off = acc.offset;
        for d in (0..p.row_sizes.len()).rev() {
            let stride = acc.row_strides.get(d).copied().unwrap_or(0);
            off += (q % p.row_sizes[d]) as i64 * stride;
            q /= p.row_sizes[d];
        }
        *b = off;
    }
}

/// Enough rows per task that a task does at least a few blocks of work.
pub(super) fn rows_per_task(row_len: usize) -> usize {
    (4 * BLOCK / row_len.max(1)).max(1)
}

fn bad(name: &str, msg: impl std::fmt::Display) -> CpuError {
    CpuError::BadPlan(format!("kernel {name}: {msg}"))
}

/// Lowers `kernel` (`tc_compiler::lower`: merged axes, levels, passes) and binds it to the
/// resolved buffers `mems`: every access checked in bounds over the whole domain.
pub(super) fn prepare(
    plan: &Plan,
    name: &str,
    kernel: &FusedKernel,
    mems: &[Mem],
) -> Result<Prepared, CpuError> {
    let mut ir =
        lower::lower_fused(plan, name, kernel).map_err(|e| CpuError::BadPlan(e.to_string()))?;
    super::peephole::rewrite(&mut ir);
    let pointwise = ir.is_pointwise();
    let n = ir.values.len();
    let level: Vec<Level> = ir.values.iter().map(|v| v.level).collect();

    // The merged axes as the row index (outer) and the walk along a row (inner); a
    // pointwise kernel is one row of every element.
    let merged_rank = ir.axes.sizes.len();
    let (row_dims, inner_dims) = if pointwise {
        (Vec::new(), (0..merged_rank).collect())
    } else {
        (ir.axes.row_axes(), ir.axes.reduce_axes())
    };
    let domain: Vec<usize> = ir.axes.sizes.iter().map(|&d| d as usize).collect();
    let row_sizes: Vec<usize> = row_dims.iter().map(|&d| domain[d]).collect();
    let mut inner_sizes: Vec<usize> = inner_dims.iter().map(|&d| domain[d]).collect();
    let no_inner = inner_sizes.is_empty();
    if no_inner {
        inner_sizes.push(1);
    }
    let access = |mem: Mem, offset: i64, strides: &[i64]| Access {
        mem,
        offset,
        row_strides: row_dims.iter().map(|&d| strides[d]).collect(),
        inner_strides: if no_inner {
            vec![0]
        } else {
            inner_dims.iter().map(|&d| strides[d]).collect()
        },
    };

    let mut accesses = Vec::with_capacity(ir.loads.len());
    for (li, load) in ir.loads.iter().enumerate() {
        let mem = *mems.get(load.buffer.index()).ok_or_else(|| {
            bad(
                name,
                format!(
                    "load {li} reads buffer {} which does not exist",
                    load.buffer.0
                ),
            )
        })?;
        if load.dtype != mem.dtype {
            return Err(bad(
                name,
                format!("load {li} reads {} as {}", mem.dtype, load.dtype),
            ));
        }
        // A gathered read also reaches every in-range index along its axis.
        let (mut strides, mut sizes) = (load.strides.clone(), domain.clone());
        for v in &ir.values {
            if let ValueOp::Gather {
                load: Some(l),
                stride,
                size,
                ..
            } = v.op
            {
                if l.index() == li {
                    strides.push(stride);
                    sizes.push(size as usize);
                }
            }
        }
        check_bounds(
            name,
            &format!("load {li}"),
            &plan.buffer(load.buffer).name,
            mem,
            load.offset,
            &strides,
            &sizes,
        )?;
        accesses.push(access(mem, load.offset, &load.strides));
    }
    let mut stores = Vec::with_capacity(ir.stores.len());
    for (si, st) in ir.stores.iter().enumerate() {
        let mem = *mems.get(st.buffer.index()).ok_or_else(|| {
            bad(
                name,
                format!(
                    "store {si} writes buffer {} which does not exist",
                    st.buffer.0
                ),
            )
        })?;
        if !mem.writable {
            return Err(bad(
                name,
                format!(
                    "store {si} writes input or param {}",
                    plan.buffer(st.buffer).name
                ),
            ));
        }
        check_bounds(
            name,
            &format!("store {si}"),
            &plan.buffer(st.buffer).name,
            mem,
            st.offset,
            &st.strides,
            &domain,
        )?;
        stores.push((st.value.index(), access(mem, st.offset, &st.strides)));
    }

    let direct: Vec<bool> = accesses
        .iter()
        .map(|a| {
            a.mem.dtype == DType::F32
                && (a.mem.ptr as usize).is_multiple_of(std::mem::align_of::<f32>())
                && stores.iter().all(|(_, st)| !st.mem.overlaps(&a.mem))
        })
        .collect();
    let row_len: usize = inner_sizes.iter().product();
    let block = if !pointwise && row_len <= ROW_CACHE {
        row_len.max(1)
    } else {
        BLOCK
    };

    let idx = |ids: &[lower::ValueId]| ids.iter().map(|v| v.index()).collect::<Vec<usize>>();
    let mut passes: Vec<Pass> = ir
        .passes
        .iter()
        .map(|q| {
            let of = |order: Level| -> Vec<usize> {
                q.stores
                    .iter()
                    .filter(|s| ir.store(**s).order == order)
                    .map(|s| s.index())
                    .collect()
            };
            Pass {
                row_insts: idx(&q.row),
                elem_insts: idx(&q.elements),
                reduces: idx(&q.reduces),
                elem_stores: of(Level::Element),
                row_stores: of(Level::Row),
                store_into: Vec::new(),
            }
        })
        .collect();
    let fold = folds(&ir);
    for pass in passes.iter_mut() {
        pass.elem_insts.retain(|&i| !fed(&ir, &fold, i));
    }
    let mut slot: Vec<bool> = level.iter().map(|&l| l == Level::Element).collect();
    for st in &ir.stores {
        if st.order == Level::Element {
            slot[st.value.index()] = true;
        }
    }
    for q in &ir.passes {
        for &r in &q.reduces {
            for a in ir.value(r).op.operands() {
                slot[a.index()] = true;
            }
        }
    }
    if block == row_len && !pointwise {
        // The whole row is one block: a value computed in an earlier pass is still in its
        // slot, so later passes skip it.
        let mut done = vec![false; n];
        for pass in passes.iter_mut() {
            pass.elem_insts.retain(|&i| !done[i]);
            for &i in &pass.elem_insts {
                done[i] = true;
            }
        }
    }
    // An element value computed in the pass that stores it, to an f32 buffer that no load
    // of this kernel reads and no other store writes, is computed straight into that
    // buffer (where the block is one contiguous run there): nothing reads the buffer
    // before the row is done, so writing it early changes nothing, and the copy is saved.
    let store_ok: Vec<bool> = stores
        .iter()
        .enumerate()
        .map(|(si, (_, st))| {
            st.mem.dtype == DType::F32
                && (st.mem.ptr as usize).is_multiple_of(std::mem::align_of::<f32>())
                && accesses.iter().all(|a| !a.mem.overlaps(&st.mem))
                && stores
                    .iter()
                    .enumerate()
                    .all(|(sj, (_, o))| sj == si || !o.mem.overlaps(&st.mem))
        })
        .collect();
    for pass in passes.iter_mut() {
        let mut store_into = vec![None; n];
        for &si in &pass.elem_stores {
            let i = stores[si].0;
            let computed_here = pass.elem_insts.contains(&i);
            if store_ok[si] && computed_here && !matches!(ir.values[i].op, ValueOp::Load(_)) {
                store_into[i].get_or_insert(si);
            }
        }
        pass.store_into = store_into;
    }
    Ok(Prepared {
        ir,
        level,
        slot,
        rows: row_sizes.iter().product(),
        row_len,
        row_sizes,
        inner_sizes,
        loads: accesses,
        stores,
        passes,
        block,
        fold,
        direct,
        bad: super::index::bad_indices(n),
    })
}

/// Chooses each element inst's `Fold`, in value order: a unary inst takes in a `neg` or
/// `abs`, a foldable binary inst a foldable binary inst (its left operand first), where the
/// fed inst is an f32 element value with no other use (no other operand, store or
/// reduction) and takes in nothing itself. Every inst here is f32, so folding changes no
/// rounding.
fn folds(ir: &KernelIr) -> Vec<Fold> {
    let n = ir.values.len();
    let mut uses = vec![0usize; n];
    for v in &ir.values {
        for o in v.op.operands() {
            uses[o.index()] += 1;
        }
    }
    for st in &ir.stores {
        uses[st.value.index()] += 1;
    }
    let f32_elem =
        |i: usize| ir.values[i].dtype == DType::F32 && ir.values[i].level == Level::Element;
    let mut fold = vec![Fold::None; n];
    for i in 0..n {
        if !f32_elem(i) {
            continue;
        }
        let single = |t: lower::ValueId, fold: &[Fold]| {
            let t = t.index();
            uses[t] == 1 && f32_elem(t) && fold[t] == Fold::None
        };
        match ir.values[i].op {
            ValueOp::Unary(_, t) if single(t, &fold) => {
                fold[i] = match ir.value(t).op {
                    ValueOp::Unary(UnaryOp::Neg, _) => Fold::Pre(math::Pre::Neg),
                    ValueOp::Unary(UnaryOp::Abs, _) => Fold::Pre(math::Pre::Abs),
                    _ => Fold::None,
                };
            }
            ValueOp::Binary(op2, l, r) if math::foldable(op2) => {
                let pair = |t: lower::ValueId| {
                    single(t, &fold)
                        && matches!(ir.value(t).op, ValueOp::Binary(op1, a, b)
                            if math::foldable(op1)
                                && (ir.value(a).level == Level::Element
                                    || commutes(op1) && ir.value(b).level == Level::Element))
                };
                if pair(l) {
                    fold[i] = Fold::Pair { t_left: true };
                } else if pair(r) {
                    fold[i] = Fold::Pair { t_left: false };
                }
            }
            _ => {}
        }
    }
    fold
}

/// Whether `op`'s operands may be swapped (bit for bit: IEEE `+` and `*` commute, and so
/// do the NaN-propagating `maximum`/`minimum` for anything but ±0 ties, which they resolve
/// by the second operand: not swapped).
fn commutes(op: BinaryOp) -> bool {
    matches!(op, BinaryOp::Add | BinaryOp::Mul)
}

/// Whether value `i` is computed inside the loop of the inst it feeds (`Fold`).
fn fed(ir: &KernelIr, fold: &[Fold], i: usize) -> bool {
    ir.values.iter().zip(fold).any(|(v, f)| match (*f, &v.op) {
        (Fold::Pre(_), &ValueOp::Unary(_, t)) => t.index() == i,
        (Fold::Pair { t_left }, &ValueOp::Binary(_, l, r)) => {
            (if t_left { l } else { r }).index() == i
        }
        _ => false,
    })
}

/// Checks that an access over `domain` stays inside its buffer.
pub(super) fn check_bounds(
    kernel: &str,
    what: &str,
    buffer: &str,
    mem: Mem,
    offset: i64,
    strides: &[i64],
    domain: &[usize],
) -> Result<(), CpuError> {
    let (mut lo, mut hi) = (offset as i128, offset as i128);
    for (&s, &d) in strides.iter().zip(domain) {
        let span = s as i128 * (d as i128 - 1).max(0);
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    if domain.contains(&0) {
        return Ok(());
    }
    if lo < 0 || hi >= mem.numel as i128 {
        return Err(bad(
            kernel,
            format!(
                "{what} reaches elements {lo}..={hi} of buffer {buffer}, which has {}",
                mem.numel
            ),
        ));
    }
    Ok(())
}

/// Per-thread state: one block per inst, row values, reduction accumulators, access bases.
pub(super) struct Scratch {
    slots: Vec<Block>,
    /// Per inst: where its block is when not in its slot (a load read in place, a value
    /// computed straight into a store's buffer), else null.
    views: Vec<*const f32>,
    /// Per store: whether the current block was computed straight into its buffer.
    stored: Vec<bool>,
    row_vals: Vec<f32>,
    sums: Vec<KahanSum>,
    extrema: Vec<f32>,
    /// Element offset of each load, then each store, at the current row.
    bases: Vec<i64>,
    /// Where the product's loads read instead, when the kernel runs as a product's epilogue.
    pub(super) product: Option<Product>,
    /// Where every element store writes instead, when the kernel runs as a product's
    /// prologue (`cpu::prologue`): inner index `at` of the current row to `base[at -
    /// origin]`, a block of `A` in the GEMM thread's own buffer.
    pub(super) out: Option<Out>,
}

/// The redirected element stores of a prologue (`Scratch::out`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Out {
    pub(super) base: *mut f32,
    pub(super) origin: usize,
}

/// The block of a product an epilogue reads (`cpu::epilogue`): for each load with `loads[l]`
/// set, inner index `at` of the current row is at `base[at - origin]`.
#[derive(Clone, Debug)]
pub(super) struct Product {
    pub(super) loads: Vec<bool>,
    pub(super) base: *const f32,
    pub(super) origin: usize,
}

impl Scratch {
    pub(super) fn new(p: &Prepared) -> Scratch {
        let n = p.ir.values.len();
        Scratch {
            slots: (0..n)
                .map(|i| {
                    if p.slot[i] {
                        Block::new(p.block, i)
                    } else {
                        Block::default()
                    }
                })
                .collect(),
            views: vec![std::ptr::null(); n],
            stored: vec![false; p.stores.len()],
            // Constants, rounded to their dtype once.
            row_vals: p
                .ir
                .values
                .iter()
                .map(|v| match v.op {
                    ValueOp::Const(c) => math::round_to(v.dtype, c as f32),
                    _ => 0.0,
                })
                .collect(),
            sums: vec![KahanSum::default(); n],
            extrema: vec![0f32; n],
            bases: vec![0i64; p.loads.len() + p.stores.len()],
            product: None,
            out: None,
        }
    }

    /// Sets each access's base offset for row `r`.
    pub(super) fn bases_for_row(&mut self, p: &Prepared, r: usize) {
        row_bases(p, r, &mut self.bases);
    }

    /// Runs every pass of row `r`.
    ///
    /// # Safety
    /// The kernel was prepared (bounds checked) and no other thread touches row `r`'s stores.
    pub(super) unsafe fn row(&mut self, p: &Prepared, r: usize) {
        self.bases_for_row(p, r);
        let body = &p.ir.values;
        for pass in &p.passes {
            // SAFETY: forwarded from the caller.
            unsafe { self.row_values(p, pass) };
            for &i in &pass.reduces {
                self.sums[i] = KahanSum::default();
                self.extrema[i] = match body[i].op {
                    ValueOp::Reduce(ReduceOp::Max, _) => f32::NEG_INFINITY,
                    _ => f32::INFINITY,
                };
            }
            if !pass.elem_insts.is_empty()
                || !pass.reduces.is_empty()
                || !pass.elem_stores.is_empty()
            {
                // SAFETY: forwarded from the caller.
                unsafe { self.span(p, pass, 0, p.row_len) };
            }
            for &i in &pass.reduces {
                let v = match body[i].op {
                    ValueOp::Reduce(ReduceOp::Sum, _) => self.sums[i].value(),
                    ValueOp::Reduce(ReduceOp::Mean, _) => self.sums[i].value() / p.row_len as f32,
                    _ => self.extrema[i],
                };
                self.row_vals[i] = math::round_to(body[i].dtype, v);
            }
            for &si in &pass.row_stores {
                let (inst, acc) = &p.stores[si];
                let base = self.bases[p.loads.len() + si];
                // SAFETY: bounds checked in `prepare`.
                unsafe { acc.mem.write(base, self.row_vals[*inst]) };
            }
        }
    }

    /// Computes inner indices `start .. end` of `pass` for the current row, a block
    /// (`p.block` elements) at a time.
    ///
    /// # Safety
    /// As `block`, for every element of the span.
    pub(super) unsafe fn span(&mut self, p: &Prepared, pass: &Pass, start: usize, end: usize) {
        let mut at = start;
        while at < end {
            let n = p.block.min(end - at);
            // SAFETY: forwarded from the caller.
            unsafe { self.block(p, pass, at, n) };
            at += n;
        }
    }

    /// Computes the row values of `pass` for the current row.
    ///
    /// # Safety
    /// The kernel was prepared (bounds checked) and the bases are set for the current row.
    pub(super) unsafe fn row_values(&mut self, p: &Prepared, pass: &Pass) {
        for &i in &pass.row_insts {
            // SAFETY: forwarded from the caller.
            self.row_vals[i] = unsafe { self.row_inst(p, i) };
        }
    }

    /// One row-level value (never a reduction over a row: those are folded by the passes;
    /// in a pointwise kernel a reduction is the identity).
    ///
    /// # Safety
    /// The kernel was prepared (bounds checked).
    unsafe fn row_inst(&self, p: &Prepared, i: usize) -> f32 {
        let inst = &p.ir.values[i];
        let v = |o: lower::ValueId| self.row_vals[o.index()];
        match inst.op {
            // SAFETY: bounds checked in `prepare`.
            ValueOp::Load(l) => unsafe { p.loads[l.index()].mem.read(self.bases[l.index()]) },
            ValueOp::Const(c) => math::round_to(inst.dtype, c as f32),
            ValueOp::Unary(op, a) => math::round_to(inst.dtype, math::unary(op, v(a))),
            ValueOp::Binary(op, a, b) => math::round_to(inst.dtype, math::binary(op, v(a), v(b))),
            ValueOp::Cast(a) | ValueOp::Reduce(_, a) => math::round_to(inst.dtype, v(a)),
            // Kernels with index values run in `typed` (`index::needed`).
            ValueOp::Index { .. } | ValueOp::Gather { .. } | ValueOp::Scan(_) => 0.0,
            ValueOp::Where(c, a, b) => {
                if v(c) != 0.0 {
                    v(a)
                } else {
                    v(b)
                }
            }
        }
    }

    /// Computes `n` elements of `pass` starting at inner index `at` of the current row:
    /// its element insts, its reductions and (last pass) its element stores.
    ///
    /// # Safety
    /// The kernel was prepared (bounds checked) and no other thread touches these elements.
    pub(super) unsafe fn block(&mut self, p: &Prepared, pass: &Pass, at: usize, n: usize) {
        let body = &p.ir.values;
        for &i in &pass.elem_insts {
            if let ValueOp::Load(l) = body[i].op {
                let l = l.index();
                if let Some(pr) = self.product.as_ref().filter(|pr| pr.loads[l]) {
                    // SAFETY: the epilogue's caller hands the block's `n` elements from
                    // `at` there (`Epilogue::run`).
                    let src = unsafe { pr.base.add(at - pr.origin) };
                    self.views[i] = if p.direct[l] {
                        src
                    } else {
                        // A store of the kernel writes there: read the block first.
                        // SAFETY: as above.
                        let xs = unsafe { std::slice::from_raw_parts(src, n) };
                        self.slots[i][..n].copy_from_slice(xs);
                        std::ptr::null()
                    };
                    continue;
                }
                let acc = &p.loads[l];
                let run = single_run(&p.inner_sizes, &acc.inner_strides, self.bases[l], at, n);
                self.views[i] = match run {
                    // SAFETY: bounds checked in `prepare`; the whole run is inside the buffer.
                    Some(off) if p.direct[l] => unsafe {
                        acc.mem.ptr.cast::<f32>().offset(off as isize)
                    },
                    _ => {
                        // SAFETY: bounds checked in `prepare`.
                        unsafe {
                            gather(
                                acc,
                                &p.inner_sizes,
                                self.bases[l],
                                at,
                                &mut self.slots[i][..n],
                            )
                        };
                        std::ptr::null()
                    }
                };
                continue;
            }
            // Straight into a store's buffer, or into the slot.
            let into = pass.store_into.get(i).copied().flatten().and_then(|si| {
                if let Some(o) = self.out {
                    // SAFETY: the prologue's caller hands `n` floats from `at` there
                    // (`Prologue::fill`).
                    return Some((si, unsafe { o.base.add(at - o.origin) }));
                }
                let acc = &p.stores[si].1;
                let base = self.bases[p.loads.len() + si];
                let off = single_run(&p.inner_sizes, &acc.inner_strides, base, at, n)?;
                // SAFETY: bounds checked in `prepare`; the whole run is inside the buffer.
                Some((si, unsafe {
                    acc.mem.ptr.cast::<f32>().offset(off as isize)
                }))
            });
            self.views[i] = into.map_or(std::ptr::null(), |(_, ptr)| ptr.cast_const());
            // The slot is taken out while the inst runs: operands are other insts' blocks
            // (an operand may have a larger index than its user after `peephole`).
            let mut own = std::mem::take(&mut self.slots[i]);
            let slots = &self.slots;
            let dst: &mut [f32] = match into {
                Some((si, ptr)) => {
                    self.stored[si] = true;
                    // SAFETY: n f32 of a buffer this task alone writes (this row, this block)
                    // and that no load or other store of the kernel touches (`store_into`).
                    unsafe { std::slice::from_raw_parts_mut(ptr, n) }
                }
                None => &mut own[..n],
            };
            let rv = &self.row_vals;
            let views = &self.views;
            let level = &p.level;
            let operand = |o: lower::ValueId| -> Operand<'_> {
                let o = o.index();
                if level[o] == Level::Element {
                    // SAFETY: a view is set only for an inst computed for this very block
                    // (same row, `at` and `n`): n f32 of a load's buffer that nothing
                    // writes while this kernel runs, or of a store's buffer that only this
                    // task writes, and not while the block lives (`store_into`).
                    Operand::Block(unsafe { block_of(views[o], &slots[o], n) })
                } else {
                    Operand::Scalar(rv[o])
                }
            };
            match body[i].op {
                // Read above, into `views` or the slot.
                ValueOp::Load(_) => {}
                ValueOp::Const(c) => dst.fill(math::round_to(body[i].dtype, c as f32)),
                ValueOp::Unary(op, t) => {
                    let (pre, a) = match (p.fold[i], &body[t.index()].op) {
                        (Fold::Pre(pre), &ValueOp::Unary(_, x)) => (Some(pre), x),
                        _ => (None, t),
                    };
                    match (operand(a), pre) {
                        (Operand::Block(src), None) => math::unary_block(op, src, dst),
                        (Operand::Block(src), Some(pre)) => {
                            math::unary_pre_block(op, pre, src, dst)
                        }
                        (Operand::Scalar(x), _) => {
                            let x = match pre {
                                Some(math::Pre::Neg) => -x,
                                Some(math::Pre::Abs) => x.abs(),
                                None => x,
                            };
                            dst.fill(math::unary(op, x))
                        }
                    }
                    math::round_block(body[i].dtype, dst);
                }
                ValueOp::Binary(op2, l, r) => {
                    let t = match p.fold[i] {
                        Fold::Pair { t_left } => Some((t_left, if t_left { l } else { r })),
                        _ => None,
                    };
                    match t.map(|(t_left, t)| (t_left, &body[t.index()].op)) {
                        Some((t_left, &ValueOp::Binary(op1, a, b))) => {
                            let c = operand(if t_left { r } else { l });
                            // `a` the element operand (`folds` checked that one of them
                            // is, and that `op1` commutes where it is `b`).
                            let (a, b) = match operand(a) {
                                Operand::Block(a) => (a, operand(b)),
                                Operand::Scalar(y) => match operand(b) {
                                    Operand::Block(b) => (b, Operand::Scalar(y)),
                                    Operand::Scalar(_) => unreachable!("an element value"),
                                },
                            };
                            math::binary2_block(op1, a, b, op2, c, t_left, dst)
                        }
                        _ => math::binary_block(op2, operand(l), operand(r), dst),
                    }
                    math::round_block(body[i].dtype, dst);
                }
                ValueOp::Cast(a) => match operand(a) {
                    Operand::Block(src) => math::round_into(body[i].dtype, src, dst),
                    Operand::Scalar(x) => dst.fill(math::round_to(body[i].dtype, x)),
                },
                // Kernels with a `where` hold a `bool` and run in `typed`; so do kernels
                // with index values (`index::needed`).
                ValueOp::Where(..)
                | ValueOp::Index { .. }
                | ValueOp::Gather { .. }
                | ValueOp::Scan(_) => {}
                // Only in a pointwise kernel: a reduction over no axes is the identity.
                ValueOp::Reduce(_, a) => match operand(a) {
                    Operand::Block(src) => {
                        dst.copy_from_slice(src);
                        math::round_block(body[i].dtype, dst);
                    }
                    Operand::Scalar(x) => dst.fill(math::round_to(body[i].dtype, x)),
                },
            }
            self.slots[i] = own;
        }
        for &i in &pass.reduces {
            if let ValueOp::Reduce(op, a) = body[i].op {
                let a = a.index();
                self.spread_row(p, a, n);
                // SAFETY: as for `operand` above.
                let xs = unsafe { block_of(self.views[a], &self.slots[a], n) };
                match op {
                    ReduceOp::Sum | ReduceOp::Mean => self.sums[i].add(math::block_sum(xs)),
                    ReduceOp::Max => {
                        self.extrema[i] =
                            math::maximum(self.extrema[i], math::block_extremum(xs, true))
                    }
                    ReduceOp::Min => {
                        self.extrema[i] =
                            math::minimum(self.extrema[i], math::block_extremum(xs, false))
                    }
                    // (an i64 result: such kernels run in `typed`)
                    ReduceOp::ArgMax | ReduceOp::ArgMin => {}
                }
            }
        }
        for &si in &pass.elem_stores {
            if std::mem::take(&mut self.stored[si]) {
                continue; // computed straight into the buffer
            }
            let (inst, acc) = &p.stores[si];
            let base = self.bases[p.loads.len() + si];
            self.spread_row(p, *inst, n);
            // SAFETY: as for `operand` above.
            let src = unsafe { block_of(self.views[*inst], &self.slots[*inst], n) };
            if let Some(o) = self.out {
                // SAFETY: as above (`Prologue::fill`); the block is the caller's own buffer,
                // apart from every load.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), o.base.add(at - o.origin), n)
                };
                continue;
            }
            // SAFETY: bounds checked in `prepare`; the caller owns these elements.
            unsafe { scatter(acc, &p.inner_sizes, base, at, src) };
        }
    }

    /// Spreads row value `i` over the first `n` entries of its slot, for a reduction that
    /// folds it or an element-order store that writes it (nothing for an element value).
    #[inline]
    fn spread_row(&mut self, p: &Prepared, i: usize, n: usize) {
        if p.level[i] == Level::Row {
            self.slots[i][..n].fill(self.row_vals[i]);
        }
    }
}

/// The `n` values of an element inst in the current block: in place where `view` is set,
/// else in its slot.
///
/// # Safety
/// A non-null `view` points at `n` valid f32 that nothing writes while the result lives.
#[inline]
unsafe fn block_of(view: *const f32, slot: &[f32], n: usize) -> &[f32] {
    if view.is_null() {
        &slot[..n]
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { std::slice::from_raw_parts(view, n) }
    }
}

/// The element offset where `n` consecutive inner indices from `at` start, when they are
/// one contiguous run (unit stride along the innermost dim, not crossing its end).
#[inline]
fn single_run(sizes: &[usize], strides: &[i64], base: i64, at: usize, n: usize) -> Option<i64> {
    let nd = sizes.len();
    let last = sizes[nd - 1];
    let i_last = at % last;
    if strides[nd - 1] != 1 || i_last + n > last {
        return None;
    }
    let mut off = base + i_last as i64;
    let mut q = at / last;
    for d in (0..nd - 1).rev() {
        off += (q % sizes[d]) as i64 * strides[d];
        q /= sizes[d];
    }
    Some(off)
}

/// Walks `n` consecutive inner indices from `at` as runs along the innermost dim, calling
/// `f(position in block, element offset of the run start, run length, run stride)`.
#[inline]
pub(super) fn runs(
    sizes: &[usize],
    strides: &[i64],
    base: i64,
    at: usize,
    n: usize,
    mut f: impl FnMut(usize, i64, usize, i64),
) {
    let nd = sizes.len();
    let last = sizes[nd - 1];
    let step = strides[nd - 1];
    let mut pos = 0;
    let mut p = at;
    while pos < n {
        let i_last = p % last;
        let len = (last - i_last).min(n - pos);
        let mut off = base + i_last as i64 * step;
        let mut q = p / last;
        for d in (0..nd - 1).rev() {
            off += (q % sizes[d]) as i64 * strides[d];
            q /= sizes[d];
        }
        f(pos, off, len, step);
        pos += len;
        p += len;
    }
}

/// Reads `dst.len()` elements of `acc` from inner index `at`, widened to f32.
///
/// # Safety
/// Every element read lies inside `acc.mem` (checked in `prepare`).
unsafe fn gather(acc: &Access, sizes: &[usize], base: i64, at: usize, dst: &mut [f32]) {
    let n = dst.len();
    runs(
        sizes,
        &acc.inner_strides,
        base,
        at,
        n,
        |pos, off, len, step| {
            let out = &mut dst[pos..pos + len];
            // SAFETY: forwarded from the caller.
            unsafe { acc.mem.read_run(off, step, out) };
        },
    );
}

/// Writes `src` to `acc` from inner index `at`, rounded to the buffer's dtype.
///
/// # Safety
/// Every element written lies inside `acc.mem`, and no other thread touches it.
unsafe fn scatter(acc: &Access, sizes: &[usize], base: i64, at: usize, src: &[f32]) {
    runs(
        sizes,
        &acc.inner_strides,
        base,
        at,
        src.len(),
        |pos, off, len, step| {
            // SAFETY: forwarded from the caller.
            unsafe { acc.mem.write_run(off, step, &src[pos..pos + len]) };
        },
    );
}

impl Mem {
    /// Reads element `i` as f32.
    ///
    /// # Safety
    /// `0 <= i < numel`.
    #[inline]
    pub(super) unsafe fn read(&self, i: i64) -> f32 {
        // SAFETY: in bounds by the caller; reads are unaligned-safe.
        unsafe {
            match self.dtype {
                DType::F32 => self.ptr.cast::<f32>().offset(i as isize).read_unaligned(),
                DType::F16 => {
                    half::f16::from_bits(self.ptr.cast::<u16>().offset(i as isize).read_unaligned())
                        .to_f32()
                }
                DType::BF16 => half::bf16::from_bits(
                    self.ptr.cast::<u16>().offset(i as isize).read_unaligned(),
                )
                .to_f32(),
                // Integral buffers are read exactly by `typed`; as f32 here for completeness.
                DType::I32 => self.ptr.cast::<i32>().offset(i as isize).read_unaligned() as f32,
                DType::I64 => self.ptr.cast::<i64>().offset(i as isize).read_unaligned() as f32,
                DType::Bool => f32::from(self.ptr.offset(i as isize).read()),
            }
        }
    }

    /// Writes `v` rounded to the buffer's dtype at element `i`.
    ///
    /// # Safety
    /// `0 <= i < numel`, the buffer is writable, and no other thread touches element `i`.
    #[inline]
    pub(super) unsafe fn write(&self, i: i64, v: f32) {
        // SAFETY: in bounds by the caller; writes are unaligned-safe.
        unsafe {
            match self.dtype {
                DType::F32 => self.ptr.cast::<f32>().offset(i as isize).write_unaligned(v),
                DType::F16 => self
                    .ptr
                    .cast::<u16>()
                    .offset(i as isize)
                    .write_unaligned(half::f16::from_f32(v).to_bits()),
                DType::BF16 => self
                    .ptr
                    .cast::<u16>()
                    .offset(i as isize)
                    .write_unaligned(half::bf16::from_f32(v).to_bits()),
                // Integral buffers are written exactly by `typed`; converted here as a cast.
                DType::I32 => self
                    .ptr
                    .cast::<i32>()
                    .offset(i as isize)
                    .write_unaligned(v as i32),
                DType::I64 => self
                    .ptr
                    .cast::<i64>()
                    .offset(i as isize)
                    .write_unaligned(v as i64),
                DType::Bool => self.ptr.offset(i as isize).write(u8::from(v != 0.0)),
            }
        }
    }

    /// Reads `out.len()` elements from `off` with stride `step`.
    ///
    /// # Safety
    /// Every element read is in bounds.
    #[inline]
    pub(super) unsafe fn read_run(&self, off: i64, step: i64, out: &mut [f32]) {
        if step == 1 && self.dtype == DType::F32 {
            // SAFETY: in bounds by the caller; `out` is a distinct Rust allocation, and an
            // unaligned byte copy is always valid.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.ptr.cast::<f32>().offset(off as isize).cast::<u8>(),
                    out.as_mut_ptr().cast::<u8>(),
                    out.len() * 4,
                )
            };
            return;
        }
        if step == 1 && self.halves() {
            // SAFETY: in bounds by the caller; 2-byte aligned (`halves`).
            let src = unsafe {
                std::slice::from_raw_parts(self.ptr.cast::<u16>().offset(off as isize), out.len())
            };
            math::widen_halves(self.dtype, src, out);
            return;
        }
        for (j, o) in out.iter_mut().enumerate() {
            // SAFETY: in bounds by the caller.
            *o = unsafe { self.read(off + j as i64 * step) };
        }
    }

    /// An f16 or bf16 buffer that is 2-byte aligned, so runs of it convert as `u16` slices
    /// (the `half` crate's vector conversions for f16, `halves::bf16_bits` for bf16: the bits
    /// of the one-element forms).
    #[inline]
    fn halves(&self) -> bool {
        matches!(self.dtype, DType::F16 | DType::BF16) && (self.ptr as usize).is_multiple_of(2)
    }

    /// Writes `src` to `off` with stride `step`, rounded to the buffer's dtype.
    ///
    /// # Safety
    /// Every element written is in bounds and owned by this thread.
    #[inline]
    pub(super) unsafe fn write_run(&self, off: i64, step: i64, src: &[f32]) {
        if step == 1 && self.dtype == DType::F32 {
            // SAFETY: in bounds and owned by this thread (the caller); byte copies need no
            // alignment.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr().cast::<u8>(),
                    self.ptr.cast::<f32>().offset(off as isize).cast::<u8>(),
                    src.len() * 4,
                )
            };
            return;
        }
        if step == 1 && self.halves() {
            // SAFETY: in bounds and owned by this thread (the caller); 2-byte aligned
            // (`halves`).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.cast::<u16>().offset(off as isize),
                    src.len(),
                )
            };
            math::narrow_to_halves(self.dtype, src, dst);
            return;
        }
        for (j, &v) in src.iter().enumerate() {
            // SAFETY: in bounds by the caller.
            unsafe { self.write(off + j as i64 * step, v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Runs `f` in a pool of `threads`.
    fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(f)
    }

    /// Runs `for_each_piece` in a pool of `threads` and returns its pieces in order.
    fn pieces(threads: usize, n: usize, grain: usize) -> Vec<(usize, usize)> {
        let got = Mutex::new(Vec::new());
        let states = std::sync::atomic::AtomicUsize::new(0);
        in_pool(threads, || {
            for_each_piece(
                n,
                grain,
                || states.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                |_, a, b| got.lock().expect("lock").push((a, b)),
            )
        });
        assert!(
            states.into_inner() <= threads.max(1),
            "one state per thread at most"
        );
        let mut got = got.into_inner().expect("lock");
        got.sort_unstable();
        got
    }

    #[test]
    fn pieces_cover_the_domain_once_in_grains_shrinking_towards_the_end() {
        for threads in [1, 2, 3, 5] {
            for (n, grain) in [
                (0, 16),
                (5, 16),
                (32, 16),
                (33, 16),
                (1000, 16),
                (1 << 20, 1 << 14),
                ((1 << 20) + 7, 1 << 14),
            ] {
                let got = pieces(threads, n, grain);
                let mut at = 0;
                for &(a, b) in &got {
                    assert_eq!(a, at, "{threads} threads, n {n}: pieces {got:?}");
                    assert!(a < b);
                    assert!(
                        b == n || (b - a) % grain == 0,
                        "a piece is whole grains but the last: {got:?}"
                    );
                    at = b;
                }
                assert_eq!(at, n, "{threads} threads, n {n}: pieces {got:?}");
                if n > 2 * grain && threads > 1 {
                    // Guided: the first piece is about 1/(2·threads) of the whole, the last
                    // ones a grain.
                    let first = got[0].1 - got[0].0;
                    assert!(first >= n / (2 * threads) && first <= n / (2 * threads) + grain);
                    assert!(got.last().is_some_and(|&(a, b)| b - a <= grain));
                }
            }
        }
    }
    #[test]
    fn tasks_run_every_index_once_with_one_state_a_thread() {
        for threads in [1, 2, 3, 5] {
            for (n, min_len) in [
                (0, 1),
                (1, 1),
                (7, 1),
                (100, 1),
                (100, 8),
                (4096, 8),
                (13, 50),
            ] {
                let seen = Mutex::new(vec![0u32; n]);
                let states = std::sync::atomic::AtomicUsize::new(0);
                in_pool(threads, || {
                    for_each_task(
                        n,
                        min_len,
                        || {
                            states.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Vec::<usize>::new()
                        },
                        |mine, i| {
                            mine.push(i);
                            seen.lock().expect("lock")[i] += 1;
                        },
                    )
                });
                let seen = seen.into_inner().expect("lock");
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "{threads} threads, n {n}: every index once: {seen:?}"
                );
                let states = states.into_inner();
                assert!(
                    states <= threads && (n == 0 || states >= 1),
                    "{threads} threads, n {n}: {states} states, one a thread at most"
                );
            }
        }
    }
}
