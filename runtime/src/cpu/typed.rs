//! The fused-kernel interpreter for kernels that hold integer or `bool` values or index
//! values: block by block like `fused`, each element value a typed block (`Slot`) — f32 for
//! the float dtypes (the same f32 maths, with the same rounding, as `fused`) or exact i64
//! for `i32`, `i64` and `bool`, with `ir::eval`'s integer meaning (wrapping to the dtype).
//! An i64 never travels in an f32 lane. Row values are single `Lane`s.
//!
//! A kernel goes here when any of its values, loads or stores is integral, or it has an
//! index value (`index::needed`); the all-float kernels keep `fused`. The walk is the kernel
//! IR's: per row, each pass computes its row values, then walks the row in blocks computing
//! its element values (each inst over the whole block, its op matched once a block), folding
//! its reductions in element order and writing its element stores; row stores follow their
//! pass. Every result is the one the element-at-a-time meaning gives (the reductions and
//! scans fold one element at a time, in order).
//!
//! Three shortcuts keep that meaning at memory speed. A task runs up to 16 rows side by
//! side, block by block (`State::rows`), and folds their float sums in vector lanes
//! (`math::kahan_lanes`): each row's chain of dependent additions is the very one it was,
//! the rows' chains interleaved. A `where(iota == r, a, b)` of an `arange` along the row
//! and a row value (a label's one-hot) is a select at the one matching position
//! (`Select`), its index and condition blocks left uncomputed. A gather whose index is a
//! row value (an embedding row) is read as a load is, in runs.

use super::fused::{self, Prepared};
use super::math::{self, KahanSum, Operand};
use super::Mem;
use tc_compiler::ir::{eval, BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};
use tc_compiler::lower::{Level, ValueId, ValueOp};

/// Elements per block.
const BLOCK: usize = 1024;
/// Elements per parallel task of a pointwise kernel.
const CHUNK: usize = 16 * BLOCK;
/// Rows a task runs side by side at most (`State::rows`), their float sums folded in
/// vector lanes (`math::kahan_lanes`).
const LANES: usize = 16;

/// One value: f32 for the float dtypes, an exact integer for the integral ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Lane {
    F(f32),
    I(i64),
}

impl Lane {
    pub(super) fn f(self) -> f32 {
        match self {
            Lane::F(x) => x,
            Lane::I(i) => i as f32,
        }
    }

    pub(super) fn i(self) -> i64 {
        match self {
            Lane::F(x) => eval::float_to_int(DType::I64, x as f64),
            Lane::I(i) => i,
        }
    }
}

/// Whether a kernel must run here: some value, load or store is integral.
pub(super) fn needed(p: &Prepared) -> bool {
    p.ir.values.iter().any(|v| v.dtype.is_integral())
        || p.ir.loads.iter().any(|l| l.dtype.is_integral())
        || p.ir.stores.iter().any(|s| s.dtype.is_integral())
}

/// A constant of `dtype`, as `fused` rounds it (floats through f32).
pub(super) fn constant(dtype: DType, c: f64) -> Lane {
    if dtype.is_integral() {
        match eval::Value::constant(dtype, c) {
            eval::Value::Int(i) => Lane::I(i),
            eval::Value::Float(x) => Lane::I(x as i64),
        }
    } else {
        Lane::F(math::round_to(dtype, c as f32))
    }
}

/// `v` converted to `to` (`ir::eval::cast`, floats in f32).
pub(super) fn cast(to: DType, v: Lane) -> Lane {
    match (v, to.is_integral()) {
        (Lane::F(x), false) => Lane::F(math::round_to(to, x)),
        (Lane::F(x), true) => Lane::I(eval::float_to_int(to, x as f64)),
        // i64 → f32 rounds once, to nearest, ties to even.
        (Lane::I(i), false) => Lane::F(math::round_to(to, i as f32)),
        (Lane::I(i), true) => Lane::I(eval::wrap(to, i)),
    }
}

/// Whether `x`, met later along the row, replaces `best` in an `argmax` (`max`) or
/// `argmin`: strictly better (a tie keeps the first), NaN beating every number.
fn arg_better(max: bool, x: Lane, best: Lane) -> bool {
    match (x, best) {
        (Lane::I(a), Lane::I(b)) => (a > b) == max && a != b,
        (x, b) => {
            let (a, b) = (x.f(), b.f());
            (a.is_nan() && !b.is_nan()) || (if max { a > b } else { a < b })
        }
    }
}

/// A running reduction.
#[derive(Clone, Copy, Debug)]
enum Acc {
    Sum(KahanSum),
    Ext(f32),
    Int(i64),
    /// `argmax`/`argmin`: the best value so far and its position (-1: none yet).
    Arg {
        best: Lane,
        pos: i64,
    },
}

/// One value's block: f32 for a float dtype, exact i64 for an integral one (empty until
/// first written).
#[derive(Clone, Debug)]
enum Slot {
    F(Vec<f32>),
    I(Vec<i64>),
}

/// An integer operand of a block operation: a value per element, or one for the block.
#[derive(Clone, Copy)]
enum Ints<'a> {
    Block(&'a [i64]),
    Scalar(i64),
}

/// What a task holds for one row: its row values, reductions, scans and access offsets.
/// A task runs a group of rows block by block (`State::rows`), one `RowState` a row,
/// swapped into `State::r` while that row computes.
#[derive(Clone, Debug)]
struct RowState {
    /// The row (for `arange` values: `cpu::index`).
    row: usize,
    /// Each row value's (and constant's) lane.
    vals: Vec<Lane>,
    accs: Vec<Acc>,
    /// Each scan's running sum along the row (reset at each pass).
    scans: Vec<Lane>,
    /// Element offset of each load, then each store, at the row.
    bases: Vec<i64>,
    /// Per `Select`: its `arange`'s value at the row's start.
    select_bases: Vec<i64>,
}

/// Per-task state: the current row's `RowState`, block slots, scratch.
struct State {
    /// The row being computed.
    r: RowState,
    /// The other rows of the group (`rows`), each swapped with `r` in turn.
    group: Vec<RowState>,
    /// Where the current row is lane `k` of a group folded wide, its float sums go to
    /// `pending` instead of their accumulators (`fold`), for `fold_lanes`.
    lane: Option<usize>,
    /// Per reduction value: the block's elements of each lane, interleaved (element `j` of
    /// lane `k` at `j·LANES + k`).
    pending: Vec<Vec<f32>>,
    /// Per value: a `where` computed as a `Select` (taken out while it runs).
    selects: Vec<Option<Select>>,
    /// Per value: left out of the block loop (what only a `Select` would read).
    skip: Vec<bool>,
    /// Each value's block (a row value's is filled when a block operation needs it).
    slots: Vec<Slot>,
    /// Element offsets of the current block for one access.
    offs: Vec<i64>,
    /// Conversions of an operand to the other kind (one buffer per operand position), and
    /// a result before it goes into its slot.
    tmp_f: [Vec<f32>; 3],
    tmp_i: [Vec<i64>; 3],
}

/// A `where(c, a, b)` whose condition compares an `arange` along the row with a row value
/// (`c = (index == r)`, or `!=` with the sides swapped), in a kernel whose rows are one
/// inner dim: a select of `hit` at the one position of each row where the index equals
/// `r` and `miss` elsewhere (`State::select`), the one-hot of a label without its index
/// and condition blocks (`skipped` leaves those out of the block loop where nothing else
/// reads them).
#[derive(Clone, Debug)]
struct Select {
    /// The row value compared (integral).
    row: usize,
    /// The `arange`'s index map, and its stride along the row.
    offset: i64,
    strides: Vec<i64>,
    step: i64,
    hit: ValueId,
    miss: ValueId,
}

/// Per value of `p`: its `where` as a `Select`, where it is one.
fn selects(p: &Prepared) -> Vec<Option<Select>> {
    let values = &p.ir.values;
    let one_inner = p.inner_sizes.len() == 1;
    values
        .iter()
        .map(|v| {
            let ValueOp::Where(c, a, b) = v.op else {
                return None;
            };
            let ValueOp::Binary(BinaryOp::Cmp(cmp @ (CmpOp::Eq | CmpOp::Ne)), x, y) =
                values[c.index()].op
            else {
                return None;
            };
            let (x, y) = (x.index(), y.index());
            let is_index = |i: usize| {
                matches!(values[i].op, ValueOp::Index { .. }) && values[i].level == Level::Element
            };
            let (row, ix) = match (is_index(x), is_index(y)) {
                (true, false) => (y, x),
                (false, true) => (x, y),
                _ => return None,
            };
            let ValueOp::Index {
                offset,
                ref strides,
            } = values[ix].op
            else {
                return None;
            };
            let ok = one_inner
                && v.level == Level::Element
                && values[row].level == Level::Row
                && values[row].dtype.is_integral()
                && values[ix].dtype.is_integral();
            let step = super::index::inner_strides(p, strides)[0];
            let (hit, miss) = if cmp == CmpOp::Eq { (a, b) } else { (b, a) };
            ok.then(|| Select {
                row,
                offset,
                strides: strides.clone(),
                step,
                hit,
                miss,
            })
        })
        .collect()
}

/// Per value of `p`: whether the block loop leaves it out, being read only by the
/// `Select`s that compute without it (a condition, then an index only it reads).
fn skipped(p: &Prepared, selects: &[Option<Select>]) -> Vec<bool> {
    let values = &p.ir.values;
    let mut uses = vec![0usize; values.len()];
    for v in values {
        for o in v.op.operands() {
            uses[o.index()] += 1;
        }
    }
    for (v, _) in &p.stores {
        uses[*v] += 1;
    }
    let mut skip = vec![false; values.len()];
    for (v, sel) in values.iter().zip(selects) {
        let (Some(_), ValueOp::Where(c, ..)) = (sel, &v.op) else {
            continue;
        };
        let c = c.index();
        if uses[c] == 1 {
            skip[c] = true;
            for o in values[c].op.operands() {
                if uses[o.index()] == 1 && values[o.index()].level == Level::Element {
                    skip[o.index()] = true;
                }
            }
        }
    }
    skip
}

/// Runs `p` (prepared against its buffers) block by block.
///
/// # Safety
/// `p` was prepared (every access bounds-checked over the domain) and no other thread
/// touches the kernel's stores while it runs.
pub(super) unsafe fn run(p: &Prepared) {
    if p.rows == 0 || p.row_len == 0 {
        return;
    }
    if p.ir.is_pointwise() {
        let total = p.row_len;
        let new = || State::new(p);
        fused::for_each_task(total.div_ceil(CHUNK), 1, new, |s, c| {
            s.set_row(p, 0);
            // SAFETY: forwarded from the caller.
            unsafe { s.row_values(p, 0) };
            let end = ((c + 1) * CHUNK).min(total);
            let mut at = c * CHUNK;
            while at < end {
                let n = BLOCK.min(end - at);
                // SAFETY: forwarded from the caller; chunks store disjoint elements.
                unsafe { s.block(p, 0, at, n) };
                at += n;
            }
        });
    } else {
        // Rows in groups when some pass folds a float sum, as many as keep every thread
        // two groups at least; each row's bits are the same in any group.
        let sums = p.ir.values.iter().any(|v| {
            matches!(v.op, ValueOp::Reduce(ReduceOp::Sum | ReduceOp::Mean, _))
                && !v.dtype.is_integral()
        });
        let threads = rayon::current_num_threads();
        let group = if sums {
            (p.rows / (2 * threads)).clamp(1, LANES)
        } else {
            1
        };
        let per_task = fused::rows_per_task(p.row_len).div_ceil(group);
        // SAFETY: forwarded from the caller; each group of rows is one task's.
        fused::for_each_task(
            p.rows.div_ceil(group),
            per_task,
            || State::new(p),
            |s, g| unsafe { s.rows(p, g * group, group.min(p.rows - g * group)) },
        );
    }
}

/// Fills `out` with the element offsets of inner indices `at ..` (`out.len()` of them)
/// over `sizes` with `strides` from `base`, wrapping (an `arange` may wrap as `index`'s
/// arithmetic does).
fn offsets(sizes: &[usize], strides: &[i64], base: i64, at: usize, out: &mut [i64]) {
    let nd = sizes.len();
    let last = sizes[nd - 1].max(1);
    let step = strides[nd - 1];
    let n = out.len();
    let (mut pos, mut j) = (0, at);
    while pos < n {
        let i_last = j % last;
        let len = (last - i_last).min(n - pos);
        let mut off = base.wrapping_add((i_last as i64).wrapping_mul(step));
        let mut q = j / last;
        for d in (0..nd - 1).rev() {
            let s = sizes[d].max(1);
            off = off.wrapping_add(((q % s) as i64).wrapping_mul(strides[d]));
            q /= s;
        }
        for (k, o) in out[pos..pos + len].iter_mut().enumerate() {
            *o = off.wrapping_add((k as i64).wrapping_mul(step));
        }
        pos += len;
        j += len;
    }
}

/// `dst[k] = f(a[k], b[k])` with either side possibly one value for the block.
#[inline(always)]
fn apply_ints(a: Ints<'_>, b: Ints<'_>, dst: &mut [i64], f: impl Fn(i64, i64) -> i64) {
    match (a, b) {
        (Ints::Block(a), Ints::Block(b)) => {
            for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
                *d = f(x, y);
            }
        }
        (Ints::Block(a), Ints::Scalar(y)) => {
            for (d, &x) in dst.iter_mut().zip(a) {
                *d = f(x, y);
            }
        }
        (Ints::Scalar(x), Ints::Block(b)) => {
            for (d, &y) in dst.iter_mut().zip(b) {
                *d = f(x, y);
            }
        }
        (Ints::Scalar(x), Ints::Scalar(y)) => dst.fill(f(x, y)),
    }
}

/// `dst[k] = a[k] op b[k]` on integers of `dtype` (`eval::binary_int`), the op matched
/// once for the block for the common ones.
fn binary_ints(op: BinaryOp, dtype: DType, a: Ints<'_>, b: Ints<'_>, dst: &mut [i64]) {
    macro_rules! wrapped {
        ($f:expr) => {
            match dtype {
                DType::I32 => apply_ints(a, b, dst, |x, y| $f(x, y) as i32 as i64),
                DType::Bool => apply_ints(a, b, dst, |x, y| ($f(x, y) != 0) as i64),
                _ => apply_ints(a, b, dst, |x, y| $f(x, y)),
            }
        };
    }
    match op {
        BinaryOp::Add => wrapped!(i64::wrapping_add),
        BinaryOp::Sub => wrapped!(i64::wrapping_sub),
        BinaryOp::Mul => wrapped!(i64::wrapping_mul),
        BinaryOp::Cmp(CmpOp::Lt) => apply_ints(a, b, dst, |x, y| (x < y) as i64),
        BinaryOp::Cmp(CmpOp::Le) => apply_ints(a, b, dst, |x, y| (x <= y) as i64),
        BinaryOp::Cmp(CmpOp::Gt) => apply_ints(a, b, dst, |x, y| (x > y) as i64),
        BinaryOp::Cmp(CmpOp::Ge) => apply_ints(a, b, dst, |x, y| (x >= y) as i64),
        BinaryOp::Cmp(CmpOp::Eq) => apply_ints(a, b, dst, |x, y| (x == y) as i64),
        BinaryOp::Cmp(CmpOp::Ne) => apply_ints(a, b, dst, |x, y| (x != y) as i64),
        BinaryOp::And => apply_ints(a, b, dst, |x, y| (x != 0 && y != 0) as i64),
        BinaryOp::Or => apply_ints(a, b, dst, |x, y| (x != 0 || y != 0) as i64),
        _ => apply_ints(a, b, dst, |x, y| eval::binary_int(op, dtype, x, y)),
    }
}

/// A float block converted to exact integers as a lane does (`Lane::i`).
fn to_ints(src: &[f32], dst: &mut [i64]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = Lane::F(x).i();
    }
}

/// An integer block as f32 (`Lane::f`: rounded once, to nearest).
fn to_floats(src: &[i64], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x as f32;
    }
}

/// A block of at least `n` entries of `v`, grown if needed.
fn grown<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n.max(BLOCK.min(n.next_power_of_two())), T::default());
    }
    &mut v[..n]
}

impl State {
    fn new(p: &Prepared) -> State {
        let values = &p.ir.values;
        let mut s = State {
            r: RowState {
                row: 0,
                vals: values
                    .iter()
                    .map(|v| match v.op {
                        ValueOp::Const(c) => constant(v.dtype, c),
                        _ => Lane::I(0),
                    })
                    .collect(),
                accs: vec![Acc::Int(0); values.len()],
                scans: vec![Lane::I(0); values.len()],
                bases: vec![0; p.loads.len() + p.stores.len()],
                select_bases: vec![0; values.len()],
            },
            group: Vec::new(),
            lane: None,
            pending: vec![Vec::new(); values.len()],
            selects: selects(p),
            skip: vec![false; values.len()],
            slots: values
                .iter()
                .map(|v| {
                    if v.dtype.is_integral() {
                        Slot::I(Vec::new())
                    } else {
                        Slot::F(Vec::new())
                    }
                })
                .collect(),
            offs: Vec::new(),
            tmp_f: [Vec::new(), Vec::new(), Vec::new()],
            tmp_i: [Vec::new(), Vec::new(), Vec::new()],
        };
        s.skip = skipped(p, &s.selects);
        s
    }

    /// Sets the current row and each access's base offset there.
    fn set_row(&mut self, p: &Prepared, r: usize) {
        self.r.row = r;
        fused::row_bases(p, r, &mut self.r.bases);
        for (b, sel) in self.r.select_bases.iter_mut().zip(&self.selects) {
            if let Some(sel) = sel {
                *b = super::index::index_value(p, sel.offset, &sel.strides, r, None);
            }
        }
    }

    /// Computes the row values of pass `q` for the current row.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn row_values(&mut self, p: &Prepared, q: usize) {
        for &v in &p.ir.passes[q].row {
            // SAFETY: forwarded from the caller.
            self.r.vals[v.index()] = unsafe { self.row_value(p, v.index()) };
        }
    }

    /// Runs every pass of rows `first .. first + count` (at most `LANES`), block by block:
    /// each block of a pass is computed for every row of the group in turn (each row's
    /// `RowState` swapped into `r`), then, for a group of more than one row, the float
    /// sums of the block are folded for all the rows at once (`fold_lanes`): the very
    /// additions each row's own fold does, in its order, the rows side by side in vector
    /// lanes instead of one long chain of dependent additions each.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn rows(&mut self, p: &Prepared, first: usize, count: usize) {
        debug_assert!((1..=LANES).contains(&count));
        if self.group.len() < count - 1 {
            self.group.resize(count - 1, self.r.clone());
        }
        let wide = count > 1;
        // Row `first + k` is in `r` for k = 0 and in `group[k - 1]` otherwise; `each` swaps
        // each in turn into `r` and back.
        let each = |s: &mut State, f: &mut dyn FnMut(&mut State, usize)| {
            f(s, 0);
            for k in 1..count {
                std::mem::swap(&mut s.r, &mut s.group[k - 1]);
                f(s, k);
                std::mem::swap(&mut s.r, &mut s.group[k - 1]);
            }
        };
        each(self, &mut |s, k| s.set_row(p, first + k));
        for q in 0..p.ir.passes.len() {
            // SAFETY: forwarded from the caller.
            each(self, &mut |s, _| unsafe { s.begin_pass(p, q) });
            let pass = &p.ir.passes[q];
            let walks = !pass.elements.is_empty()
                || !pass.reduces.is_empty()
                || pass
                    .stores
                    .iter()
                    .any(|s| p.ir.store(*s).order == Level::Element);
            if walks {
                let mut at = 0;
                while at < p.row_len {
                    let n = BLOCK.min(p.row_len - at);
                    each(self, &mut |s, k| {
                        s.lane = wide.then_some(k);
                        // SAFETY: forwarded from the caller.
                        unsafe { s.block(p, q, at, n) };
                    });
                    self.lane = None;
                    if wide {
                        self.fold_lanes(p, q, count, n);
                    }
                    at += n;
                }
            }
            // SAFETY: forwarded from the caller.
            each(self, &mut |s, _| unsafe { s.end_pass(p, q) });
        }
    }

    /// Starts pass `q` of the current row: its scans from 0, its row values, its
    /// reductions' accumulators.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn begin_pass(&mut self, p: &Prepared, q: usize) {
        let pass = &p.ir.passes[q];
        // A scan walks the row again from its start in each pass that computes it.
        for (i, v) in p.ir.values.iter().enumerate() {
            if let ValueOp::Scan(_) = v.op {
                self.r.scans[i] = if v.dtype.is_integral() {
                    Lane::I(0)
                } else {
                    Lane::F(0.0)
                };
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.row_values(p, q) };
        for &v in &pass.reduces {
            let i = v.index();
            let inst = &p.ir.values[i];
            let ValueOp::Reduce(op, _) = inst.op else {
                continue;
            };
            self.r.accs[i] = if op.is_arg() {
                Acc::Arg {
                    best: Lane::I(0),
                    pos: -1,
                }
            } else if inst.dtype.is_integral() {
                Acc::Int(eval::reduce_init_int(op, inst.dtype))
            } else {
                match op {
                    ReduceOp::Sum | ReduceOp::Mean => Acc::Sum(KahanSum::default()),
                    ReduceOp::Max => Acc::Ext(f32::NEG_INFINITY),
                    ReduceOp::Min => Acc::Ext(f32::INFINITY),
                    ReduceOp::ArgMax | ReduceOp::ArgMin => Acc::Int(0),
                }
            };
        }
    }

    /// Ends pass `q` of the current row: its reductions' values, its row stores.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn end_pass(&mut self, p: &Prepared, q: usize) {
        let pass = &p.ir.passes[q];
        for &v in &pass.reduces {
            let i = v.index();
            let inst = &p.ir.values[i];
            let ValueOp::Reduce(op, _) = inst.op else {
                continue;
            };
            self.r.vals[i] = match self.r.accs[i] {
                Acc::Int(x) => Lane::I(x),
                Acc::Arg { pos, .. } => Lane::I(pos),
                Acc::Sum(k) if op == ReduceOp::Mean => {
                    Lane::F(math::round_to(inst.dtype, k.value() / p.row_len as f32))
                }
                Acc::Sum(k) => Lane::F(math::round_to(inst.dtype, k.value())),
                Acc::Ext(x) => Lane::F(math::round_to(inst.dtype, x)),
            };
        }
        let nl = p.loads.len();
        for &st in &pass.stores {
            let si = st.index();
            if p.ir.store(st).order != Level::Row {
                continue;
            }
            let (v, acc) = &p.stores[si];
            // SAFETY: bounds checked in `prepare`; this row is this task's.
            unsafe { write(acc.mem, self.r.bases[nl + si], self.r.vals[*v]) };
        }
    }

    /// Folds the `n` elements of the block that each of the group's `count` rows left in
    /// `pending` into its float sums, all the rows at once (`math::kahan_lanes`).
    fn fold_lanes(&mut self, p: &Prepared, q: usize, count: usize, n: usize) {
        for &v in &p.ir.passes[q].reduces {
            let i = v.index();
            if !matches!(self.r.accs[i], Acc::Sum(_)) {
                continue;
            }
            let mut sums = [KahanSum::default(); LANES];
            for (k, sum) in sums.iter_mut().enumerate().take(count) {
                let rs = if k == 0 { &self.r } else { &self.group[k - 1] };
                if let Acc::Sum(s) = rs.accs[i] {
                    *sum = s;
                }
            }
            math::kahan_lanes(&self.pending[i][..n * LANES], &mut sums);
            for (k, sum) in sums.into_iter().enumerate().take(count) {
                let rs = if k == 0 {
                    &mut self.r
                } else {
                    &mut self.group[k - 1]
                };
                rs.accs[i] = Acc::Sum(sum);
            }
        }
    }

    /// Inner indices `at .. at + n` of the current row in pass `q`: its element values,
    /// reductions and element stores.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn block(&mut self, p: &Prepared, q: usize, at: usize, n: usize) {
        let pass = &p.ir.passes[q];
        for &v in &pass.elements {
            if self.skip[v.index()] {
                continue;
            }
            // SAFETY: forwarded from the caller.
            unsafe { self.element_value(p, v.index(), at, n) };
        }
        for &v in &pass.reduces {
            let i = v.index();
            let ValueOp::Reduce(op, a) = p.ir.values[i].op else {
                continue;
            };
            self.fold(p, i, op, a.index(), at, n);
        }
        let nl = p.loads.len();
        for &st in &pass.stores {
            let si = st.index();
            if p.ir.store(st).order != Level::Element {
                continue;
            }
            let (v, acc) = &p.stores[si];
            self.spread(p, *v, n);
            let base = self.r.bases[nl + si];
            // SAFETY: bounds checked in `prepare`; these elements are this task's.
            unsafe { store_block(acc, &p.inner_sizes, base, at, &self.slots[*v], n) };
        }
    }

    /// Fills row value `i`'s slot with its lane (`n` entries; nothing for an element
    /// value, whose slot holds the block).
    fn spread(&mut self, p: &Prepared, i: usize, n: usize) {
        if p.ir.values[i].level != Level::Row {
            return;
        }
        match (&mut self.slots[i], self.r.vals[i]) {
            (Slot::F(v), x) => grown(v, n).fill(x.f()),
            (Slot::I(v), x) => grown(v, n).fill(x.i()),
        }
    }

    /// Operand `o` of a float operation over `n` elements (converted into `tmp` from an
    /// integer block).
    fn floats<'a>(
        p: &Prepared,
        vals: &[Lane],
        slots: &'a [Slot],
        o: ValueId,
        tmp: &'a mut Vec<f32>,
        n: usize,
    ) -> Operand<'a> {
        let o = o.index();
        if p.ir.values[o].level == Level::Row {
            return Operand::Scalar(vals[o].f());
        }
        match &slots[o] {
            Slot::F(v) => Operand::Block(&v[..n]),
            Slot::I(v) => {
                let t = grown(tmp, n);
                to_floats(&v[..n], t);
                Operand::Block(t)
            }
        }
    }

    /// Operand `o` of an integer operation over `n` elements (converted into `tmp` from a
    /// float block).
    fn ints<'a>(
        p: &Prepared,
        vals: &[Lane],
        slots: &'a [Slot],
        o: ValueId,
        tmp: &'a mut Vec<i64>,
        n: usize,
    ) -> Ints<'a> {
        let o = o.index();
        if p.ir.values[o].level == Level::Row {
            return Ints::Scalar(vals[o].i());
        }
        match &slots[o] {
            Slot::I(v) => Ints::Block(&v[..n]),
            Slot::F(v) => {
                let t = grown(tmp, n);
                to_ints(&v[..n], t);
                Ints::Block(t)
            }
        }
    }

    /// Element value `i` over inner indices `at .. at + n` of the current row, into its
    /// slot.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn element_value(&mut self, p: &Prepared, i: usize, at: usize, n: usize) {
        let inst = &p.ir.values[i];
        let dt = inst.dtype;
        // The slot is taken out while its operands (earlier values) are read.
        let mut slot = std::mem::replace(&mut self.slots[i], Slot::I(Vec::new()));
        match inst.op {
            ValueOp::Load(l) => {
                let l = l.index();
                let acc = &p.loads[l];
                // SAFETY: bounds checked in `prepare`.
                unsafe { load_block(acc, &p.inner_sizes, self.r.bases[l], at, &mut slot, n) };
            }
            ValueOp::Const(c) => match (&mut slot, constant(dt, c)) {
                (Slot::F(v), x) => grown(v, n).fill(x.f()),
                (Slot::I(v), x) => grown(v, n).fill(x.i()),
            },
            ValueOp::Unary(op, a) => {
                let a_int = p.ir.values[a.index()].dtype.is_integral();
                if a_int {
                    let [t0, _, t2] = &mut self.tmp_i;
                    let xs = Self::ints(p, &self.r.vals, &self.slots, a, t0, n);
                    ints_out(&mut slot, t2, n, |out| unary_ints(op, dt, xs, out));
                } else {
                    let [t0, _, t2] = &mut self.tmp_f;
                    let xs = Self::floats(p, &self.r.vals, &self.slots, a, t0, n);
                    floats_out(&mut slot, t2, n, |out| {
                        match xs {
                            Operand::Block(src) => math::unary_block(op, src, out),
                            Operand::Scalar(x) => out.fill(math::unary(op, x)),
                        }
                        math::round_block(dt, out);
                    });
                }
            }
            ValueOp::Binary(op, a, b) => {
                let (da, db) = (p.ir.values[a.index()].dtype, p.ir.values[b.index()].dtype);
                if da.is_integral() && db.is_integral() {
                    let [t0, t1, t2] = &mut self.tmp_i;
                    let x = Self::ints(p, &self.r.vals, &self.slots, a, t0, n);
                    let y = Self::ints(p, &self.r.vals, &self.slots, b, t1, n);
                    ints_out(&mut slot, t2, n, |out| binary_ints(op, da, x, y, out));
                } else {
                    let [t0, t1, t2] = &mut self.tmp_f;
                    let x = Self::floats(p, &self.r.vals, &self.slots, a, t0, n);
                    let y = Self::floats(p, &self.r.vals, &self.slots, b, t1, n);
                    // A comparison or logical op gives a truth value (1 or 0), an exact
                    // integer in its `bool` slot; the others are rounded to their dtype.
                    let flag = op.is_cmp() || matches!(op, BinaryOp::And | BinaryOp::Or);
                    floats_out(&mut slot, t2, n, |out| {
                        math::binary_block(op, x, y, out);
                        if !flag {
                            math::round_block(dt, out);
                        }
                    });
                }
            }
            ValueOp::Cast(a) | ValueOp::Reduce(_, a) => {
                // (A reduction here is in a pointwise kernel: over no axes, the identity.)
                self.cast_into(p, a, dt, &mut slot, n);
            }
            ValueOp::Where(..) if self.selects[i].is_some() => {
                let sel = self.selects[i].take();
                if let Some(sel) = &sel {
                    self.select(p, i, sel, &mut slot, at, n);
                }
                self.selects[i] = sel;
            }
            ValueOp::Where(c, a, b) => {
                self.spread(p, a.index(), n);
                self.spread(p, b.index(), n);
                let cond = match Self::ints(p, &self.r.vals, &self.slots, c, &mut self.tmp_i[0], n)
                {
                    Ints::Block(v) => v,
                    // One condition for the block: a copy of one side.
                    Ints::Scalar(x) => {
                        let cond = &mut self.tmp_i[1];
                        grown(cond, n).fill(x);
                        &cond[..n]
                    }
                };
                let (sa, sb) = (&self.slots[a.index()], &self.slots[b.index()]);
                let pick = |k: usize, s: &Slot| -> Lane {
                    match s {
                        Slot::F(v) => Lane::F(v[k]),
                        Slot::I(v) => Lane::I(v[k]),
                    }
                };
                match (&mut slot, sa, sb) {
                    // (Zipped, so the loops have no bounds checks and vectorise as blends.)
                    (Slot::F(d), Slot::F(x), Slot::F(y)) => {
                        let lanes = grown(d, n).iter_mut().zip(cond).zip(x).zip(y);
                        for (((d, &c), &x), &y) in lanes {
                            *d = if c != 0 { x } else { y };
                        }
                    }
                    (Slot::I(d), Slot::I(x), Slot::I(y)) => {
                        let lanes = grown(d, n).iter_mut().zip(cond).zip(x).zip(y);
                        for (((d, &c), &x), &y) in lanes {
                            *d = if c != 0 { x } else { y };
                        }
                    }
                    (Slot::F(d), _, _) => {
                        for (k, d) in grown(d, n).iter_mut().enumerate() {
                            *d = pick(k, if cond[k] != 0 { sa } else { sb }).f();
                        }
                    }
                    (Slot::I(d), _, _) => {
                        for (k, d) in grown(d, n).iter_mut().enumerate() {
                            *d = pick(k, if cond[k] != 0 { sa } else { sb }).i();
                        }
                    }
                }
            }
            ValueOp::Index {
                offset,
                ref strides,
            } => {
                let base = super::index::index_value(p, offset, strides, self.r.row, None);
                let inner = super::index::inner_strides(p, strides);
                ints_out(&mut slot, &mut self.tmp_i[2], n, |out| {
                    offsets(&p.inner_sizes, &inner, base, at, out)
                });
            }
            ValueOp::Gather {
                load,
                index,
                stride,
                size,
                ..
            } => {
                let row_index = p.ir.values[index.index()].level == Level::Row;
                if let (true, Some(l)) = (row_index, load) {
                    // One index for the block: the rows it picks are read as a load is,
                    // in runs (a copy, for f32).
                    let g = super::index::checked(p, i, self.r.vals[index.index()].i(), size);
                    let acc = &p.loads[l.index()];
                    let base = self.r.bases[l.index()] + g * stride;
                    // SAFETY: `prepare` checked every in-range index along the axis;
                    // `checked` gives one.
                    unsafe { load_block(acc, &p.inner_sizes, base, at, &mut slot, n) };
                    self.slots[i] = slot;
                    return;
                }
                let mut idx = std::mem::take(&mut self.tmp_i[2]);
                match Self::ints(p, &self.r.vals, &self.slots, index, &mut self.tmp_i[0], n) {
                    Ints::Block(v) => grown(&mut idx, n).copy_from_slice(v),
                    Ints::Scalar(x) => grown(&mut idx, n).fill(x),
                }
                for g in idx[..n].iter_mut() {
                    *g = super::index::checked(p, i, *g, size);
                }
                match load {
                    None => {
                        for g in idx[..n].iter_mut() {
                            *g = g.wrapping_mul(stride);
                        }
                        ints_out(&mut slot, &mut self.tmp_i[1], n, |out| {
                            out.copy_from_slice(&idx[..n])
                        });
                    }
                    Some(l) => {
                        let acc = &p.loads[l.index()];
                        let offs = grown(&mut self.offs, n);
                        offsets(
                            &p.inner_sizes,
                            &acc.inner_strides,
                            self.r.bases[l.index()],
                            at,
                            offs,
                        );
                        for (o, &g) in offs.iter_mut().zip(&idx[..n]) {
                            *o += g * stride;
                        }
                        // SAFETY: `prepare` checked every in-range index along the axis;
                        // `checked` gives one.
                        unsafe { read_at(acc.mem, offs, &mut slot) };
                    }
                }
                self.tmp_i[2] = idx;
            }
            ValueOp::Scan(a) => {
                // The running sum: f32 as the GPU's one thread per row adds, or exact.
                match (self.r.scans[i], &mut slot) {
                    (Lane::I(mut s), Slot::I(d)) => {
                        let xs = Self::ints(p, &self.r.vals, &self.slots, a, &mut self.tmp_i[0], n);
                        let d = grown(d, n);
                        for (k, d) in d.iter_mut().enumerate() {
                            let x = match xs {
                                Ints::Block(v) => v[k],
                                Ints::Scalar(x) => x,
                            };
                            s = s.wrapping_add(x);
                            *d = s;
                        }
                        self.r.scans[i] = Lane::I(s);
                    }
                    (Lane::F(mut s), Slot::F(d)) => {
                        let xs =
                            Self::floats(p, &self.r.vals, &self.slots, a, &mut self.tmp_f[0], n);
                        let d = grown(d, n);
                        for (k, d) in d.iter_mut().enumerate() {
                            let x = match xs {
                                Operand::Block(v) => v[k],
                                Operand::Scalar(x) => x,
                            };
                            s += x;
                            *d = s;
                        }
                        self.r.scans[i] = Lane::F(s);
                    }
                    // The running sum's kind follows the dtype (reset in `row`).
                    _ => {}
                }
            }
        }
        self.slots[i] = slot;
    }

    /// The block `at .. at + n` of `where` value `i`, computed as `sel`, into `slot`: the miss side
    /// everywhere, then the hit side where the `arange`'s value equals the row value.
    /// Each element is the lane the plain `where` picks, converted to the slot's kind as
    /// it converts it.
    fn select(
        &mut self,
        p: &Prepared,
        i: usize,
        sel: &Select,
        slot: &mut Slot,
        at: usize,
        n: usize,
    ) {
        let base = self.r.select_bases[i];
        let want = self.r.vals[sel.row].i();
        let (vals, slots) = (&self.r.vals, &self.slots);
        let lane = |v: ValueId, k: usize| -> Lane {
            if p.ir.values[v.index()].level == Level::Row {
                return vals[v.index()];
            }
            match &slots[v.index()] {
                Slot::F(x) => Lane::F(x[k]),
                Slot::I(x) => Lane::I(x[k]),
            }
        };
        let put = |slot: &mut Slot, k: usize, x: Lane| match slot {
            Slot::F(d) => d[k] = x.f(),
            Slot::I(d) => d[k] = x.i(),
        };
        // The miss side over the block: one value, a copy, or converted one by one.
        let miss = sel.miss.index();
        match (&mut *slot, &slots[miss]) {
            _ if p.ir.values[miss].level == Level::Row => match (&mut *slot, vals[miss]) {
                (Slot::F(d), x) => grown(d, n).fill(x.f()),
                (Slot::I(d), x) => grown(d, n).fill(x.i()),
            },
            (Slot::F(d), Slot::F(x)) => grown(d, n).copy_from_slice(&x[..n]),
            (Slot::I(d), Slot::I(x)) => grown(d, n).copy_from_slice(&x[..n]),
            (Slot::F(d), _) => {
                grown(d, n);
                (0..n).for_each(|k| put(slot, k, lane(sel.miss, k)));
            }
            (Slot::I(d), _) => {
                grown(d, n);
                (0..n).for_each(|k| put(slot, k, lane(sel.miss, k)));
            }
        }
        // The hits: the `arange`'s value at inner index j is `base + j·step` (wrapping, as
        // `offsets` computes it), solved for j where no step of the row wraps.
        let value = |j: usize| base.wrapping_add((j as i64).wrapping_mul(sel.step));
        let last = (p.row_len - 1) as i128;
        let exact = i64::try_from(base as i128 + last * sel.step as i128).is_ok();
        if sel.step == 0 {
            if base == want {
                (0..n).for_each(|k| put(slot, k, lane(sel.hit, k)));
            }
        } else if exact {
            let d = want as i128 - base as i128;
            let step = sel.step as i128;
            if d % step == 0 {
                let j = d / step;
                if j >= at as i128 && j < (at + n) as i128 {
                    let k = j as usize - at;
                    put(slot, k, lane(sel.hit, k));
                }
            }
        } else {
            for k in 0..n {
                if value(at + k) == want {
                    put(slot, k, lane(sel.hit, k));
                }
            }
        }
    }

    /// Value `a` over `n` elements converted to `to` into `slot` (`cast`).
    fn cast_into(&mut self, p: &Prepared, a: ValueId, to: DType, slot: &mut Slot, n: usize) {
        let from_int = p.ir.values[a.index()].dtype.is_integral();
        match (from_int, slot) {
            (false, Slot::F(d)) => {
                let d = grown(d, n);
                match Self::floats(p, &self.r.vals, &self.slots, a, &mut self.tmp_f[0], n) {
                    Operand::Block(v) => math::round_into(to, v, d),
                    Operand::Scalar(x) => d.fill(math::round_to(to, x)),
                }
            }
            (false, Slot::I(d)) => {
                let d = grown(d, n);
                match Self::floats(p, &self.r.vals, &self.slots, a, &mut self.tmp_f[0], n) {
                    Operand::Block(v) => {
                        for (d, &x) in d.iter_mut().zip(v) {
                            *d = eval::float_to_int(to, x as f64);
                        }
                    }
                    Operand::Scalar(x) => d.fill(eval::float_to_int(to, x as f64)),
                }
            }
            (true, Slot::F(d)) => {
                let d = grown(d, n);
                match Self::ints(p, &self.r.vals, &self.slots, a, &mut self.tmp_i[0], n) {
                    Ints::Block(v) => {
                        for (d, &x) in d.iter_mut().zip(v) {
                            *d = math::round_to(to, x as f32);
                        }
                    }
                    Ints::Scalar(x) => d.fill(math::round_to(to, x as f32)),
                }
            }
            (true, Slot::I(d)) => {
                let d = grown(d, n);
                match Self::ints(p, &self.r.vals, &self.slots, a, &mut self.tmp_i[0], n) {
                    Ints::Block(v) => {
                        for (d, &x) in d.iter_mut().zip(v) {
                            *d = eval::wrap(to, x);
                        }
                    }
                    Ints::Scalar(x) => d.fill(eval::wrap(to, x)),
                }
            }
        }
    }

    /// Folds `n` elements of value `a` into reduction `i`, in element order.
    fn fold(&mut self, p: &Prepared, i: usize, op: ReduceOp, a: usize, at: usize, n: usize) {
        self.spread(p, a, n);
        let dt = p.ir.values[i].dtype;
        let acc = &mut self.r.accs[i];
        match (&mut *acc, &self.slots[a]) {
            (Acc::Arg { best, pos }, s) => {
                let max = op == ReduceOp::ArgMax;
                let mut step = |k: usize, x: Lane| {
                    if *pos < 0 || arg_better(max, x, *best) {
                        *best = x;
                        *pos = (at + k) as i64;
                    }
                };
                match s {
                    // Floats: the block's extremum (NaN if any is) by the vector loop, then
                    // its first position. That is where the element-by-element fold ends:
                    // within the block the first occurrence of its extremum (or of its
                    // first NaN), taken only if strictly better than the best so far.
                    Slot::F(v) => {
                        let xs = &v[..n];
                        let m = math::block_extremum(xs, max);
                        let first = if m.is_nan() {
                            xs.iter().position(|x| x.is_nan())
                        } else {
                            xs.iter().position(|&x| x == m)
                        };
                        if let Some(k) = first {
                            if *pos < 0 || arg_better(max, Lane::F(m), *best) {
                                (*best, *pos) = (Lane::F(xs[k]), (at + k) as i64);
                            }
                        }
                    }
                    Slot::I(v) => v[..n]
                        .iter()
                        .enumerate()
                        .for_each(|(k, &x)| step(k, Lane::I(x))),
                }
            }
            (Acc::Int(r), s) => {
                let mut x = *r;
                match s {
                    Slot::I(v) => {
                        for &e in &v[..n] {
                            x = eval::reduce_step_int(op, dt, x, e);
                        }
                    }
                    Slot::F(v) => {
                        for &e in &v[..n] {
                            x = eval::reduce_step_int(op, dt, x, Lane::F(e).i());
                        }
                    }
                }
                *r = x;
            }
            // In a group folded wide: the elements into this row's lane of `pending`.
            (Acc::Sum(_), s) if self.lane.is_some() => {
                let k = self.lane.unwrap_or(0);
                let lanes = grown(&mut self.pending[i], n * LANES).chunks_exact_mut(LANES);
                match s {
                    Slot::F(v) => lanes.zip(&v[..n]).for_each(|(l, &x)| l[k] = x),
                    Slot::I(v) => lanes.zip(&v[..n]).for_each(|(l, &x)| l[k] = x as f32),
                }
            }
            (Acc::Sum(k), s) => match s {
                Slot::F(v) => v[..n].iter().for_each(|&x| k.add(x)),
                Slot::I(v) => v[..n].iter().for_each(|&x| k.add(x as f32)),
            },
            (Acc::Ext(e), s) => {
                let pick = if op == ReduceOp::Max {
                    math::maximum
                } else {
                    math::minimum
                };
                match s {
                    Slot::F(v) => v[..n].iter().for_each(|&x| *e = pick(*e, x)),
                    Slot::I(v) => v[..n].iter().for_each(|&x| *e = pick(*e, x as f32)),
                }
            }
        }
    }

    /// Row value `i` of the current row.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn row_value(&self, p: &Prepared, i: usize) -> Lane {
        let inst = &p.ir.values[i];
        let dt = inst.dtype;
        let v = |o: ValueId| self.r.vals[o.index()];
        match inst.op {
            ValueOp::Load(l) => {
                let acc = &p.loads[l.index()];
                // SAFETY: bounds checked in `prepare`.
                unsafe { read(acc.mem, self.r.bases[l.index()]) }
            }
            ValueOp::Const(c) => constant(dt, c),
            ValueOp::Unary(op, a) => unary(op, dt, v(a)),
            ValueOp::Binary(op, a, b) => binary(op, p.ir.values[a.index()].dtype, dt, v(a), v(b)),
            ValueOp::Cast(a) => cast(dt, v(a)),
            ValueOp::Where(c, a, b) => {
                if v(c).i() != 0 {
                    v(a)
                } else {
                    v(b)
                }
            }
            // Only in a pointwise kernel: a reduction over no axes is the identity.
            ValueOp::Reduce(_, a) => cast(dt, v(a)),
            ValueOp::Index {
                offset,
                ref strides,
            } => Lane::I(super::index::index_value(
                p, offset, strides, self.r.row, None,
            )),
            ValueOp::Gather {
                load,
                index,
                stride,
                size,
                ..
            } => {
                let g = super::index::checked(p, i, v(index).i(), size);
                match load {
                    None => Lane::I(g.wrapping_mul(stride)),
                    Some(l) => {
                        let acc = &p.loads[l.index()];
                        // SAFETY: `prepare` checked every in-range index along the axis;
                        // `checked` gives one.
                        unsafe { read(acc.mem, self.r.bases[l.index()] + g * stride) }
                    }
                }
            }
            // Element values only (a running sum along the row).
            ValueOp::Scan(_) => self.r.vals[i],
        }
    }
}

/// `op(x)` on one lane of a value of `dtype`: f32 maths rounded to a float dtype, or
/// `eval::unary_int`'s exact integer meaning.
pub(super) fn unary(op: UnaryOp, dtype: DType, x: Lane) -> Lane {
    match x {
        Lane::F(x) => Lane::F(math::round_to(dtype, math::unary(op, x))),
        Lane::I(x) => Lane::I(eval::unary_int(op, dtype, x)),
    }
}

/// `x op y` on lanes (`operand` is the operands' dtype, `dtype` the result's): exact on two
/// integers (`eval::binary_int`), else in f32 (a comparison or logical op gives an exact
/// 0 or 1).
pub(super) fn binary(op: BinaryOp, operand: DType, dtype: DType, x: Lane, y: Lane) -> Lane {
    match (x, y) {
        (Lane::I(x), Lane::I(y)) => Lane::I(eval::binary_int(op, operand, x, y)),
        (x, y) => {
            let r = math::binary(op, x.f(), y.f());
            if op.is_cmp() || matches!(op, BinaryOp::And | BinaryOp::Or) {
                Lane::I(r as i64)
            } else {
                Lane::F(math::round_to(dtype, r))
            }
        }
    }
}

/// `dst[k] = op(x[k])` on integers of `dtype` (`eval::unary_int`).
fn unary_ints(op: UnaryOp, dtype: DType, xs: Ints<'_>, dst: &mut [i64]) {
    match xs {
        Ints::Block(v) => {
            for (d, &x) in dst.iter_mut().zip(v) {
                *d = eval::unary_int(op, dtype, x);
            }
        }
        Ints::Scalar(x) => dst.fill(eval::unary_int(op, dtype, x)),
    }
}

/// Runs `f` on a block of `n` integer results: the slot itself when it is an integer
/// one, else `tmp`, converted into the slot after (as `Lane::f`).
fn ints_out(slot: &mut Slot, tmp: &mut Vec<i64>, n: usize, f: impl FnOnce(&mut [i64])) {
    match slot {
        Slot::I(v) => f(grown(v, n)),
        Slot::F(v) => {
            let t = grown(tmp, n);
            f(t);
            to_floats(t, grown(v, n));
        }
    }
}

/// Runs `f` on a block of `n` f32 results: the slot itself when it is a float one, else
/// `tmp`, converted into the slot after (as exact integers, `Lane::i`).
fn floats_out(slot: &mut Slot, tmp: &mut Vec<f32>, n: usize, f: impl FnOnce(&mut [f32])) {
    match slot {
        Slot::F(v) => f(grown(v, n)),
        Slot::I(v) => {
            let t = grown(tmp, n);
            f(t);
            to_ints(t, grown(v, n));
        }
    }
}

/// Reads `n` elements of load `acc` from inner index `at` into `slot`.
///
/// # Safety
/// Every element read lies inside `acc.mem` (checked in `prepare`).
unsafe fn load_block(
    acc: &fused::Access,
    sizes: &[usize],
    base: i64,
    at: usize,
    slot: &mut Slot,
    n: usize,
) {
    let mem = acc.mem;
    match slot {
        Slot::F(v) if !mem.dtype.is_integral() => {
            let out = grown(v, n);
            fused::runs(
                sizes,
                &acc.inner_strides,
                base,
                at,
                n,
                |pos, off, len, step| {
                    // SAFETY: forwarded from the caller.
                    unsafe { mem.read_run(off, step, &mut out[pos..pos + len]) }
                },
            );
        }
        _ => {
            let mut offs = vec![0i64; n];
            offsets(sizes, &acc.inner_strides, base, at, &mut offs);
            // SAFETY: forwarded from the caller.
            unsafe { read_at(mem, &offs, slot) };
        }
    }
}

/// Reads the elements of `mem` at `offs` into `slot` (converted as `Lane::f`/`Lane::i`
/// where the kinds differ).
///
/// # Safety
/// Every offset is inside `mem`.
unsafe fn read_at(mem: Mem, offs: &[i64], slot: &mut Slot) {
    let n = offs.len();
    // SAFETY (all reads): in bounds by the caller; unaligned reads are fine.
    match (slot, mem.dtype) {
        (Slot::I(v), DType::I64) => {
            for (d, &o) in grown(v, n).iter_mut().zip(offs) {
                *d = unsafe { mem.ptr.cast::<i64>().offset(o as isize).read_unaligned() };
            }
        }
        (Slot::I(v), DType::I32) => {
            for (d, &o) in grown(v, n).iter_mut().zip(offs) {
                *d = unsafe { mem.ptr.cast::<i32>().offset(o as isize).read_unaligned() } as i64;
            }
        }
        (Slot::I(v), _) => {
            for (d, &o) in grown(v, n).iter_mut().zip(offs) {
                *d = unsafe { read(mem, o) }.i();
            }
        }
        (Slot::F(v), DType::F32) => {
            for (d, &o) in grown(v, n).iter_mut().zip(offs) {
                *d = unsafe { mem.ptr.cast::<f32>().offset(o as isize).read_unaligned() };
            }
        }
        (Slot::F(v), _) => {
            for (d, &o) in grown(v, n).iter_mut().zip(offs) {
                *d = unsafe { read(mem, o) }.f();
            }
        }
    }
}

/// Writes `n` elements of `slot` to store `acc` from inner index `at`, converted to the
/// buffer's dtype (`write`).
///
/// # Safety
/// Every element written lies inside `acc.mem`, and no other thread touches it.
unsafe fn store_block(
    acc: &fused::Access,
    sizes: &[usize],
    base: i64,
    at: usize,
    slot: &Slot,
    n: usize,
) {
    let mem = acc.mem;
    match slot {
        Slot::F(v) if !mem.dtype.is_integral() => {
            fused::runs(
                sizes,
                &acc.inner_strides,
                base,
                at,
                n,
                |pos, off, len, step| {
                    // SAFETY: forwarded from the caller.
                    unsafe { mem.write_run(off, step, &v[pos..pos + len]) }
                },
            );
        }
        _ => {
            let mut offs = vec![0i64; n];
            offsets(sizes, &acc.inner_strides, base, at, &mut offs);
            for (k, &o) in offs.iter().enumerate() {
                let x = match slot {
                    Slot::F(v) => Lane::F(v[k]),
                    Slot::I(v) => Lane::I(v[k]),
                };
                // SAFETY: forwarded from the caller.
                unsafe { write(mem, o, x) };
            }
        }
    }
}

/// Element `i` of `mem` as a lane.
///
/// # Safety
/// `0 <= i < mem.numel`.
pub(super) unsafe fn read(mem: Mem, i: i64) -> Lane {
    // SAFETY: in bounds by the caller; unaligned reads are fine.
    unsafe {
        match mem.dtype {
            DType::I32 => Lane::I(mem.ptr.cast::<i32>().offset(i as isize).read_unaligned() as i64),
            DType::I64 => Lane::I(mem.ptr.cast::<i64>().offset(i as isize).read_unaligned()),
            DType::Bool => Lane::I((mem.ptr.offset(i as isize).read() != 0) as i64),
            _ => Lane::F(mem.read(i)),
        }
    }
}

/// Writes `v` (of the buffer's dtype) at element `i` of `mem`.
///
/// # Safety
/// `0 <= i < mem.numel`, the buffer is writable and no other thread touches element `i`.
pub(super) unsafe fn write(mem: Mem, i: i64, v: Lane) {
    // SAFETY: in bounds and owned by the caller; unaligned writes are fine.
    unsafe {
        match mem.dtype {
            DType::I32 => mem
                .ptr
                .cast::<i32>()
                .offset(i as isize)
                .write_unaligned(v.i() as i32),
            DType::I64 => mem
                .ptr
                .cast::<i64>()
                .offset(i as isize)
                .write_unaligned(v.i()),
            DType::Bool => mem.ptr.offset(i as isize).write((v.i() != 0) as u8),
            _ => mem.write(i, v.f()),
        }
    }
}
