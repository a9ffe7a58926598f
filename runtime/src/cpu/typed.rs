//! The fused-kernel interpreter for kernels that hold integer or `bool` values: one element
//! at a time, each value a `Lane` — an f32 for the float dtypes (the same f32 maths, with the
//! same rounding, as `fused`) or an exact i64 for `i32`, `i64` and `bool`, with `ir::eval`'s
//! integer meaning (wrapping to the dtype). An i64 never travels in an f32 lane.
//!
//! A kernel goes here when any of its values, loads or stores is integral; the all-float
//! kernels keep the block interpreter (`fused`). The walk is the kernel IR's: per row, each
//! pass computes its row values, then walks the row computing its element values, folding
//! its reductions and writing its element stores; row stores follow their pass.

use super::fused::{Access, Prepared};
use super::math::{self, KahanSum};
use super::Mem;
use rayon::prelude::*;
use tc_compiler::ir::{eval, BinaryOp, DType, ReduceOp};
use tc_compiler::lower::{Level, ValueOp};

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

/// Per-row (per-task) state: every value's current lane, and the reductions' accumulators.
struct State {
    vals: Vec<Lane>,
    accs: Vec<Acc>,
    /// The current row (for `arange` values: `cpu::index`).
    row: usize,
    /// Each scan's running sum along the current row (reset at each pass).
    scans: Vec<Lane>,
}

/// Runs `p` (prepared against its buffers) one element at a time.
///
/// # Safety
/// `p` was prepared (every access bounds-checked over the domain) and no other thread
/// touches the kernel's stores while it runs.
pub(super) unsafe fn run(p: &Prepared) {
    if p.rows == 0 || p.row_len == 0 {
        return;
    }
    let init = State {
        vals: p
            .ir
            .values
            .iter()
            .map(|v| match v.op {
                ValueOp::Const(c) => constant(v.dtype, c),
                _ => Lane::I(0),
            })
            .collect(),
        accs: vec![Acc::Int(0); p.ir.values.len()],
        row: 0,
        scans: vec![Lane::I(0); p.ir.values.len()],
    };
    if p.ir.is_pointwise() {
        const CHUNK: usize = 16 * 1024;
        let total = p.row_len;
        (0..total.div_ceil(CHUNK)).into_par_iter().for_each(|c| {
            let mut s = State {
                vals: init.vals.clone(),
                accs: init.accs.clone(),
                row: 0,
                scans: init.scans.clone(),
            };
            let bases = bases(p, 0);
            let pass = &p.ir.passes[0];
            for &v in &pass.row {
                // SAFETY: forwarded from the caller.
                s.vals[v.index()] = unsafe { s.compute(p, v.index(), &bases, None) };
            }
            for j in c * CHUNK..((c + 1) * CHUNK).min(total) {
                // SAFETY: forwarded from the caller; chunks store disjoint elements.
                unsafe { s.element(p, 0, &bases, j) };
            }
        });
    } else {
        (0..p.rows).into_par_iter().for_each(|r| {
            let mut s = State {
                vals: init.vals.clone(),
                accs: init.accs.clone(),
                row: 0,
                scans: init.scans.clone(),
            };
            // SAFETY: forwarded from the caller; each row is one task's.
            unsafe { s.row(p, r) };
        });
    }
}

/// Element offsets of each load, then each store, at row `r`.
fn bases(p: &Prepared, r: usize) -> Vec<i64> {
    p.loads
        .iter()
        .chain(p.stores.iter().map(|(_, a)| a))
        .map(|acc| {
            let mut q = r;
            let mut off = acc.offset;
            for d in (0..p.row_sizes.len()).rev() {
                let stride = acc.row_strides.get(d).copied().unwrap_or(0);
                off += (q % p.row_sizes[d]) as i64 * stride;
                q /= p.row_sizes[d];
            }
            off
        })
        .collect()
}

/// The element offset of inner index `j` for `acc` from `base`.
fn at(p: &Prepared, acc: &Access, base: i64, j: usize) -> i64 {
    let mut q = j;
    let mut off = base;
    for d in (0..p.inner_sizes.len()).rev() {
        off += (q % p.inner_sizes[d]) as i64 * acc.inner_strides[d];
        q /= p.inner_sizes[d];
    }
    off
}

impl State {
    /// Runs every pass of row `r`.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn row(&mut self, p: &Prepared, r: usize) {
        let bases = bases(p, r);
        let nl = p.loads.len();
        self.row = r;
        for (q, pass) in p.ir.passes.iter().enumerate() {
            // A scan walks the row again from its start in each pass that computes it.
            for (i, v) in p.ir.values.iter().enumerate() {
                if let ValueOp::Scan(_) = v.op {
                    self.scans[i] = if v.dtype.is_integral() {
                        Lane::I(0)
                    } else {
                        Lane::F(0.0)
                    };
                }
            }
            for &v in &pass.row {
                // SAFETY: forwarded from the caller.
                self.vals[v.index()] = unsafe { self.compute(p, v.index(), &bases, None) };
            }
            for &v in &pass.reduces {
                let i = v.index();
                let inst = &p.ir.values[i];
                let ValueOp::Reduce(op, _) = inst.op else {
                    continue;
                };
                self.accs[i] = if op.is_arg() {
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
            let walks = !pass.elements.is_empty()
                || !pass.reduces.is_empty()
                || pass
                    .stores
                    .iter()
                    .any(|s| p.ir.store(*s).order == Level::Element);
            if walks {
                for j in 0..p.row_len {
                    // SAFETY: forwarded from the caller.
                    unsafe { self.element(p, q, &bases, j) };
                }
            }
            for &v in &pass.reduces {
                let i = v.index();
                let inst = &p.ir.values[i];
                let ValueOp::Reduce(op, _) = inst.op else {
                    continue;
                };
                self.vals[i] = match self.accs[i] {
                    Acc::Int(x) => Lane::I(x),
                    Acc::Arg { pos, .. } => Lane::I(pos),
                    Acc::Sum(k) if op == ReduceOp::Mean => {
                        Lane::F(math::round_to(inst.dtype, k.value() / p.row_len as f32))
                    }
                    Acc::Sum(k) => Lane::F(math::round_to(inst.dtype, k.value())),
                    Acc::Ext(x) => Lane::F(math::round_to(inst.dtype, x)),
                };
            }
            for &st in &pass.stores {
                let si = st.index();
                if p.ir.store(st).order != Level::Row {
                    continue;
                }
                let (v, acc) = &p.stores[si];
                // SAFETY: bounds checked in `prepare`; this row is this task's.
                unsafe { write(acc.mem, bases[nl + si], self.vals[*v]) };
            }
        }
    }

    /// Element `j` of the current row in pass `q`: its element values, reductions and
    /// element stores.
    ///
    /// # Safety
    /// As `run`.
    unsafe fn element(&mut self, p: &Prepared, q: usize, bases: &[i64], j: usize) {
        let pass = &p.ir.passes[q];
        for &v in &pass.elements {
            let i = v.index();
            if let ValueOp::Scan(a) = p.ir.values[i].op {
                // The running sum: f32 as the GPU's one thread per row adds, or exact.
                self.scans[i] = match (self.scans[i], self.vals[a.index()]) {
                    (Lane::I(s), x) => Lane::I(s.wrapping_add(x.i())),
                    (Lane::F(s), x) => Lane::F(s + x.f()),
                };
                self.vals[i] = self.scans[i];
                continue;
            }
            // SAFETY: forwarded from the caller.
            self.vals[i] = unsafe { self.compute(p, i, bases, Some(j)) };
        }
        for &v in &pass.reduces {
            let i = v.index();
            let inst = &p.ir.values[i];
            let ValueOp::Reduce(op, a) = inst.op else {
                continue;
            };
            let x = self.vals[a.index()];
            self.accs[i] = match self.accs[i] {
                Acc::Arg { best, pos } => {
                    if pos < 0 || arg_better(op == ReduceOp::ArgMax, x, best) {
                        Acc::Arg {
                            best: x,
                            pos: j as i64,
                        }
                    } else {
                        Acc::Arg { best, pos }
                    }
                }
                Acc::Int(acc) => Acc::Int(eval::reduce_step_int(op, inst.dtype, acc, x.i())),
                Acc::Sum(mut k) => {
                    k.add(x.f());
                    Acc::Sum(k)
                }
                Acc::Ext(e) if op == ReduceOp::Max => Acc::Ext(math::maximum(e, x.f())),
                Acc::Ext(e) => Acc::Ext(math::minimum(e, x.f())),
            };
        }
        let nl = p.loads.len();
        for &st in &pass.stores {
            let si = st.index();
            if p.ir.store(st).order != Level::Element {
                continue;
            }
            let (v, acc) = &p.stores[si];
            let off = at(p, acc, bases[nl + si], j);
            // SAFETY: bounds checked in `prepare`; this element is this task's.
            unsafe { write(acc.mem, off, self.vals[*v]) };
        }
    }

    /// Value `i` at inner index `j` (`None` for a row value).
    ///
    /// # Safety
    /// As `run`.
    unsafe fn compute(&self, p: &Prepared, i: usize, bases: &[i64], j: Option<usize>) -> Lane {
        let inst = &p.ir.values[i];
        let dt = inst.dtype;
        let v = |o: tc_compiler::lower::ValueId| self.vals[o.index()];
        match inst.op {
            ValueOp::Load(l) => {
                let acc = &p.loads[l.index()];
                let off = match j {
                    Some(j) => at(p, acc, bases[l.index()], j),
                    None => bases[l.index()],
                };
                // SAFETY: bounds checked in `prepare`.
                unsafe { read(acc.mem, off) }
            }
            ValueOp::Const(c) => constant(dt, c),
            ValueOp::Unary(op, a) => match v(a) {
                Lane::F(x) => Lane::F(math::round_to(dt, math::unary(op, x))),
                Lane::I(x) => Lane::I(eval::unary_int(op, dt, x)),
            },
            ValueOp::Binary(op, a, b) => match (v(a), v(b)) {
                (Lane::I(x), Lane::I(y)) => {
                    let odt = p.ir.values[a.index()].dtype;
                    Lane::I(eval::binary_int(op, odt, x, y))
                }
                (x, y) => {
                    let r = math::binary(op, x.f(), y.f());
                    if op.is_cmp() || matches!(op, BinaryOp::And | BinaryOp::Or) {
                        Lane::I(r as i64)
                    } else {
                        Lane::F(math::round_to(dt, r))
                    }
                }
            },
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
            } => Lane::I(super::index::index_value(p, offset, strides, self.row, j)),
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
                        let off = match j {
                            Some(j) => at(p, acc, bases[l.index()], j),
                            None => bases[l.index()],
                        };
                        // SAFETY: `prepare` checked every in-range index along the axis;
                        // `checked` gives one.
                        unsafe { read(acc.mem, off + g * stride) }
                    }
                }
            }
            // Computed by `element` (a running sum along the row).
            ValueOp::Scan(_) => self.vals[i],
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
