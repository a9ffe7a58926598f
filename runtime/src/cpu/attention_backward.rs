//! Attention's backward on the CPU (flash attention's backward, `AttentionBackwardKernel`):
//! two phases, each over batch matrices and tiles of `T` rows, claimed by the threads in
//! tasks (`fused::for_each_task`; a whole batch matrix a task where there are enough, so
//! that each matrix's operands are packed once). Phase 1, per tile of queries: one walk over
//! the keys in tiles recomputes the logits (the scores `q·k` as a `tile_gemm` product with a
//! constant scale folded in where the prologue is one, rounded to the score dtype, else
//! through the prologue) and `dp = dO·vᵀ`, folding them into each query's running max, sum
//! and `Σ dp·e^(x − max)` (online, `exp` by the forward's vector `exp_sum`), which go to the
//! workspace; a second walk gives `gs = g(p ∘ (dp − D))` per logit and `dq = gs·k`, on
//! the first walk's very tiles where the keys are few enough to keep them (`KEPT_KEYS`:
//! seven products a tile pair instead of nine), else on tiles computed again. Phase 2,
//! per tile of keys: a walk over the query tiles recomputes `p` and `gs` transposed (a row
//! per key: `k·qᵀ` is phase 1's `q·kᵀ` bit for bit, the same fused multiply-adds in order)
//! from the workspace's statistics and accumulates `dv = pᵀ·dO` and `dk = gsᵀ·q`, the
//! transposed tiles being those products' `A` as they stand. Where the tasks are whole batch
//! matrices (`Ctx::matrix`), phase 2 folds into phase 1's second walk: each tile pair's
//! probabilities and gradients, transposed, feed `dv` and `dk` there — phase 2's products on
//! the same values in the same order, without computing the tiles again (five products a
//! pair instead of seven). The scores, the probabilities
//! and their gradients never exist beyond one tile per thread; every sum runs in a fixed
//! order, so results do not depend on the threads.

use super::attention::{body_form, exp_sum, exp_sum_in_place, Logits};
use super::fused::{check_bounds, for_each_task};
use super::gemm::transpose_into;
use super::math;
use super::tile_gemm::{self, Product, Scale, NR};
use super::typed::{self, Lane};
use super::{CpuError, Mem, Options};
use tc_compiler::ir::{eval, BinaryOp, DType};
use tc_compiler::schedule::{
    AttentionBackwardKernel, BufferId, GradOut, Inst, InstOp, Load, MatOperand, Plan,
};

/// Rows (queries or keys) per tile: a tile of logits is `T × T` f32 (64 KiB); 128 measured
/// 6 % faster than 64 and 2 % faster than 96 (train_block, one thread).
pub const T: usize = 128;

/// An operand's memory with its strides.
#[derive(Clone, Copy)]
struct Mat<'a> {
    op: &'a MatOperand,
    mem: Mem,
}

impl Mat<'_> {
    fn base(&self, idx: &[usize]) -> i64 {
        self.op.offset
            + idx
                .iter()
                .zip(&self.op.strides)
                .map(|(&z, &s)| z as i64 * s)
                .sum::<i64>()
    }
}

/// An elementwise body (the prologue or its backward) with its loads' memory.
struct Body<'a> {
    insts: &'a [Inst],
    loads: &'a [Load],
    mems: Vec<Mem>,
    result: usize,
    /// The body is its input (`Load(0)`) alone.
    bare: bool,
}

impl Body<'_> {
    /// The body's result at batch index `idx`, query `i`, key `j`, from `input`.
    fn eval(&self, idx: &[usize], i: usize, j: usize, input: f32, regs: &mut Vec<Lane>) -> f32 {
        if self.bare {
            return input;
        }
        let nb = idx.len();
        let at = |offset: i64, strides: &[i64]| -> i64 {
            offset
                + idx
                    .iter()
                    .zip(strides)
                    .map(|(&z, &s)| z as i64 * s)
                    .sum::<i64>()
                + i as i64 * strides[nb]
                + j as i64 * strides[nb + 1]
        };
        regs.clear();
        for inst in self.insts {
            let dt = inst.dtype;
            let odt = |x: usize| self.insts[x].dtype;
            let v = match inst.op {
                InstOp::Load(0) => Lane::F(input),
                InstOp::Load(l) => {
                    let load = &self.loads[l - 1];
                    // SAFETY: inside the load's checked domain (`run`).
                    unsafe { read_lane(self.mems[l - 1], at(load.offset, &load.strides)) }
                }
                InstOp::Const(c) => typed::constant(dt, c),
                InstOp::Index {
                    offset,
                    ref strides,
                } => Lane::I(at(offset, strides)),
                InstOp::Unary(u, x) => match regs[x] {
                    Lane::F(v) => Lane::F(math::round_to(dt, math::unary(u, v))),
                    Lane::I(v) => Lane::I(eval::unary_int(u, dt, v)),
                },
                InstOp::Binary(b, x, y) => match (regs[x], regs[y]) {
                    (Lane::I(p), Lane::I(q)) => Lane::I(eval::binary_int(b, odt(x), p, q)),
                    (p, q) => {
                        let v = math::binary(b, p.f(), q.f());
                        if b.is_cmp() || matches!(b, BinaryOp::And | BinaryOp::Or) {
                            Lane::I(v as i64)
                        } else {
                            Lane::F(math::round_to(dt, v))
                        }
                    }
                },
                InstOp::Cast(x) => typed::cast(dt, regs[x]),
                InstOp::Where(k, x, y) => {
                    if regs[k].i() != 0 {
                        regs[x]
                    } else {
                        regs[y]
                    }
                }
                // Refused in `run`.
                InstOp::Reduce(..) | InstOp::Gather { .. } | InstOp::Scan(_) => Lane::F(f32::NAN),
            };
            regs.push(v);
        }
        regs[self.result].f()
    }
}

/// Element `i` of `mem` as a lane: exact for the integral dtypes.
///
/// # Safety
/// `0 <= i < mem.numel`.
unsafe fn read_lane(mem: Mem, i: i64) -> Lane {
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

pub(super) fn run(
    plan: &Plan,
    name: &str,
    a: &AttentionBackwardKernel,
    mems: &[Mem],
    options: &Options,
) -> Result<(), CpuError> {
    let bad = |msg: String| CpuError::BadPlan(format!("kernel {name}: {msg}"));
    let nb = a.batch.len();
    let batch: Vec<usize> = a.batch.iter().map(|&b| b as usize).collect();
    let nbatch: usize = batch.iter().product();
    let (m, n, d, dv) = (a.m as usize, a.n as usize, a.d as usize, a.dv as usize);
    let mem_of = |id: BufferId, what: &str| {
        mems.get(id.index())
            .copied()
            .ok_or_else(|| bad(format!("{what} buffer {} does not exist", id.0)))
    };
    let mut ops = Vec::new();
    for (what, op, rows, cols) in [
        ("q", &a.q, m, d),
        ("k", &a.k, d, n),
        ("v", &a.v, n, dv),
        ("dO", &a.d_out, m, dv),
    ] {
        let mem = mem_of(op.buffer, what)?;
        if op.strides.len() != nb + 2 || op.dtype != mem.dtype {
            return Err(bad(format!("operand {what} does not match its buffer")));
        }
        let mut dom = batch.clone();
        dom.extend([rows, cols]);
        check_bounds(
            name,
            &format!("operand {what}"),
            &plan.buffer(op.buffer).name,
            mem,
            op.offset,
            &op.strides,
            &dom,
        )?;
        ops.push(Mat { op, mem });
    }
    let mut dom = batch.clone();
    dom.extend([m, n]);
    let mut bodies = Vec::new();
    for (what, insts, loads, result) in [
        ("prologue", &a.body, &a.loads, a.logits),
        (
            "prologue backward",
            &a.grad_body,
            &a.grad_loads,
            a.grad_scores,
        ),
    ] {
        let mut lm = Vec::new();
        for l in loads.iter() {
            let mem = mem_of(l.buffer, what)?;
            if l.strides.len() != nb + 2 || l.dtype != mem.dtype {
                return Err(bad(format!("a {what} load does not match its buffer")));
            }
            check_bounds(
                name,
                &format!("{what} load"),
                &plan.buffer(l.buffer).name,
                mem,
                l.offset,
                &l.strides,
                &dom,
            )?;
            lm.push(mem);
        }
        for (i, inst) in insts.iter().enumerate() {
            let ok = match inst.op {
                InstOp::Load(l) => l <= loads.len(),
                InstOp::Reduce(..) | InstOp::Gather { .. } | InstOp::Scan(_) => false,
                InstOp::Index { ref strides, .. } => strides.len() == nb + 2,
                ref op => op.operands().iter().all(|&o| o < i),
            };
            if !ok {
                return Err(bad(format!("{what} inst {i} is not elementwise")));
            }
        }
        if result >= insts.len() || insts[result].dtype.is_integral() {
            return Err(bad(format!("the {what}'s result is no float inst")));
        }
        let bare = insts.len() == 1 && result == 0 && insts[0].op == InstOp::Load(0);
        bodies.push(Body {
            insts,
            loads,
            mems: lm,
            result,
            bare,
        });
    }
    let ws = mem_of(a.workspace, "workspace")?;
    if !ws.writable || ws.dtype != DType::F32 || ws.numel < 3 * nbatch * m {
        return Err(bad("the workspace is not 3 writable f32 a row".into()));
    }
    let mut outs: Vec<Option<(&GradOut, Mem)>> = Vec::new();
    for (what, g, rows, cols) in [
        ("dq", &a.dq, m, d),
        ("dk", &a.dk, n, d),
        ("dv", &a.dv_out, n, dv),
    ] {
        let Some(g) = g else {
            outs.push(None);
            continue;
        };
        let mem = mem_of(g.buffer, what)?;
        let mut dom = batch.clone();
        dom.extend([rows, cols]);
        if !mem.writable
            || mem.dtype != g.dtype
            || g.strides.len() != nb + 2
            || ops.iter().any(|o| o.mem.overlaps(&mem))
            || mem.overlaps(&ws)
        {
            return Err(bad(format!(
                "gradient {what} is not a writable buffer apart from the operands"
            )));
        }
        check_bounds(
            name,
            what,
            &plan.buffer(g.buffer).name,
            mem,
            g.offset,
            &g.strides,
            &dom,
        )?;
        outs.push(Some((g, mem)));
    }
    if nbatch == 0 || m == 0 || n == 0 {
        // No scores: every gradient is a sum over none of them.
        for (o, rows, cols) in [(outs[0], m, d), (outs[1], n, d), (outs[2], n, dv)] {
            let Some((g, mem)) = o else { continue };
            for_each_index(&batch, |idx| {
                let base = g.offset + dot(idx, &g.strides);
                for r in 0..rows {
                    for c in 0..cols {
                        let at = base + r as i64 * g.strides[nb] + c as i64 * g.strides[nb + 1];
                        // SAFETY: inside the gradient's checked domain.
                        unsafe { mem.write(at, 0.0) };
                    }
                }
            });
        }
        return Ok(());
    }
    let ctx = Ctx {
        nb,
        batch: &batch,
        dims: (m, n, d, dv),
        q: ops[0],
        k: ops[1],
        v: ops[2],
        d_out: ops[3],
        score_dtype: a.score_dtype,
        prologue: &bodies[0],
        grad: &bodies[1],
        logits: body_form(&a.body, a.logits, a.score_dtype),
        grad_form: body_form(&a.grad_body, a.grad_scores, DType::F32),
        ws,
        dq: outs[0],
        dk: outs[1],
        dv: outs[2],
        kept_keys: if options.keep_tiles { KEPT_KEYS } else { 0 },
    };
    // Tasks of consecutive tiles, claimed by the threads as they come free, each thread
    // with its own buffers (`fused::for_each_task`); a task is a whole batch matrix's tiles
    // where there are enough matrices to go round, so each matrix's operands are packed
    // once, by the thread that computes it.
    let whole = nbatch >= 4 * rayon::current_num_threads();
    if whole && options.one_walk && (ctx.dk.is_some() || ctx.dv.is_some()) {
        for_each_task(nbatch, 1, Scratch::default, |sc, bi| ctx.matrix(bi, sc));
        return Ok(());
    }
    let per_task = |tiles: usize| if whole { tiles } else { 1 };
    let qtiles = m.div_ceil(T);
    for_each_task(
        nbatch * qtiles,
        per_task(qtiles),
        Scratch::default,
        |sc, task| ctx.queries(task / qtiles, (task % qtiles) * T, false, sc),
    );
    if ctx.dk.is_some() || ctx.dv.is_some() {
        let ktiles = n.div_ceil(T);
        for_each_task(
            nbatch * ktiles,
            per_task(ktiles),
            Scratch::default,
            |sc, task| ctx.keys(task / ktiles, (task % ktiles) * T, sc),
        );
    }
    Ok(())
}

fn dot(idx: &[usize], strides: &[i64]) -> i64 {
    idx.iter().zip(strides).map(|(&z, &s)| z as i64 * s).sum()
}

/// Calls `f` with every index of `shape`, in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    let total: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for t in 0..total {
        let mut rest = t;
        for ax in (0..shape.len()).rev() {
            idx[ax] = rest % shape[ax];
            rest /= shape[ax];
        }
        f(&idx);
    }
}

/// A batch matrix of an operand as the packing reads it: element (`r`, `c`) at
/// `base + r·rs + c·cs` of `mem` (inside the operand's checked domain, `run`). Packing
/// reads every element of the operands for each task, so an f32 matrix is copied a
/// contiguous run at a time where its rows or its columns are one (the heads of a
/// `[B, S, H, Dh]` projection viewed as `[B, H, S, Dh]`: rows of `Dh` floats, or those rows
/// as columns, transposed) instead of element by element.
#[derive(Clone, Copy)]
struct View {
    mem: Mem,
    base: i64,
    rs: i64,
    cs: i64,
}

impl View {
    /// The transposed matrix.
    fn t(self) -> View {
        View {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The matrix from row `r0` on.
    fn rows_from(self, r0: usize) -> View {
        View {
            base: self.base + r0 as i64 * self.rs,
            ..self
        }
    }

    /// Element (`r`, `c`) as f32.
    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> f32 {
        let i = self.base + r as i64 * self.rs + c as i64 * self.cs;
        // SAFETY: (r, c) is inside the matrix, whose bounds `run` checked; unaligned reads
        // are fine.
        unsafe {
            if self.mem.dtype == DType::F32 {
                self.mem
                    .ptr
                    .cast::<f32>()
                    .offset(i as isize)
                    .read_unaligned()
            } else {
                self.mem.read(i)
            }
        }
    }

    /// Whether each row is a contiguous run of aligned f32 (`cs` 1).
    fn rows_contiguous(&self) -> bool {
        let aligned = (self.mem.ptr as usize).is_multiple_of(std::mem::align_of::<f32>());
        self.mem.dtype == DType::F32 && self.cs == 1 && aligned
    }

    /// Elements (`r`, `c0 .. c0 + n`) as a slice, where rows are contiguous.
    #[inline(always)]
    fn row(&self, r: usize, c0: usize, n: usize) -> Option<&[f32]> {
        if !self.rows_contiguous() {
            return None;
        }
        let i = self.base + r as i64 * self.rs + c0 as i64;
        // SAFETY: the n elements are inside the matrix (bounds checked in `run`), f32 and
        // aligned; nothing writes the operands while the kernel runs.
        Some(unsafe {
            std::slice::from_raw_parts(self.mem.ptr.cast::<f32>().offset(i as isize), n)
        })
    }
}

/// Packs the `depth × cols` matrix `b` as `tile_gemm`'s `B`: panels of `NR` columns, `depth
/// × NR` each, zeros past the last column, into `out`. A panel is copied a row at a time
/// where `b`'s rows are contiguous, a column at a time where its columns are (the panel,
/// `depth × NR` floats, stays in the first cache while its columns are written).
fn pack_panels(out: &mut Vec<f32>, depth: usize, cols: usize, b: View) {
    let panels = cols.div_ceil(NR);
    out.clear();
    out.resize(panels * depth * NR, 0.0);
    let bt = b.t();
    let (by_rows, by_cols) = (b.rows_contiguous(), bt.rows_contiguous());
    for (p, panel) in out.chunks_exact_mut(depth * NR).enumerate() {
        let (c0, width) = (p * NR, NR.min(cols - p * NR));
        if by_rows {
            for (t, row) in panel.chunks_exact_mut(NR).enumerate() {
                row[..width].copy_from_slice(b.row(t, c0, width).expect("rows contiguous"));
            }
        } else if by_cols {
            for jj in 0..width {
                let col = bt.row(c0 + jj, 0, depth).expect("columns contiguous");
                for (t, &x) in col.iter().enumerate() {
                    panel[t * NR + jj] = x;
                }
            }
        } else {
            for (t, row) in panel.chunks_exact_mut(NR).enumerate() {
                for (jj, x) in row[..width].iter_mut().enumerate() {
                    *x = b.at(t, c0 + jj);
                }
            }
        }
    }
}

/// The `rows × cols` matrix `b` as `tile_gemm`'s `B` a tile of `T` rows at a time
/// (`pack_panels` of each), the tiles `T · cols` (in whole panels) floats apart, so tile
/// `r0 / T` starts at `(r0 / T) · T · cols` rounded up.
fn pack_tiles(out: &mut Vec<f32>, rows: usize, cols: usize, b: View) {
    let width = cols.next_multiple_of(NR);
    let mut tile = Vec::new();
    out.clear();
    for r0 in (0..rows).step_by(T) {
        let rt = T.min(rows - r0);
        pack_panels(&mut tile, rt, cols, b.rows_from(r0));
        out.extend_from_slice(&tile);
        out.resize(out.len() + (T - rt) * width, 0.0);
    }
}

/// Copies the `rows × cols` matrix `a` into `out`, row-major with row stride `cols`:
/// `tile_gemm`'s `A`.
fn copy_rows(out: &mut Vec<f32>, rows: usize, cols: usize, a: View) {
    out.clear();
    out.reserve(rows * cols);
    for r in 0..rows {
        match a.row(r, 0, cols) {
            Some(run) => out.extend_from_slice(run),
            None => out.extend((0..cols).map(|c| a.at(r, c))),
        }
    }
}

/// `c (rows × panels·NR, row stride ldc) (+)= a (rows × k, row stride lda) · b` (`panels`
/// panels of `k × NR`), then `scale`d: `tile_gemm`'s product over slices.
#[allow(clippy::too_many_arguments)]
fn product(
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    (rows, k): (usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    panels: usize,
    scale: Scale,
) {
    if rows == 0 || panels == 0 {
        return;
    }
    assert!(
        panels * NR <= ldc
            && c.len() >= (rows - 1) * ldc + panels * NR
            && (k == 0 || a.len() >= (rows - 1) * lda + k)
            && b.len() >= panels * k * NR
    );
    // SAFETY: the slices cover what `Product` reads and writes (asserted above), and `c`
    // is a distinct borrow from `a` and `b`.
    unsafe {
        tile_gemm::product(Product {
            rows,
            k,
            a: a.as_ptr(),
            lda,
            b: b.as_ptr(),
            panels,
            c: c.as_mut_ptr(),
            ldc,
            accumulate,
            scale,
        })
    }
}

/// One thread's buffers, reused across its tasks. Phase 1 packs its batch matrix's keys
/// and values (`kt`, `vt`: every key, as `B` of the scores and of `dp`; `kp`: each key
/// tile as `B` of `dq`), phase 2 its queries and output gradient likewise; `packed_for`
/// says for which batch matrix they are packed.
#[derive(Default)]
struct Scratch {
    packed_for: Option<usize>,
    /// The `A` operands of the tile (queries and `dO` rows in phase 1, keys and values
    /// in phase 2), row-major.
    a1: Vec<f32>,
    a2: Vec<f32>,
    /// Whole-matrix `B` panels (phase 1: `kᵀ`, `vᵀ` over the keys; phase 2: `qᵀ`, `dOᵀ`
    /// over the queries).
    b1: Vec<f32>,
    b2: Vec<f32>,
    /// Per tile `B` panels, `T · dp` floats a tile (phase 1: keys as `B` of `dq`; phase 2:
    /// queries as `B` of `dk`), and `T · dvp` (phase 2: `dO` as `B` of `dv`).
    bt1: Vec<f32>,
    bt2: Vec<f32>,
    /// Tiles of `T × T`, row stride `T`: logits (then probabilities), `dp`, the gradient.
    s: Vec<f32>,
    dp: Vec<f32>,
    g: Vec<f32>,
    row: Vec<f32>,
    acc: Vec<f32>,
    acc2: Vec<f32>,
    stats: Vec<f32>,
    regs: Vec<Lane>,
    /// Phase 1's tiles of logits and `dp` for every key tile of the query tile, as the
    /// first walk over the keys computed them, for the second walk (at most `KEPT_KEYS`
    /// keys: `KEPT_KEYS / T · 2` tiles, 512 KiB a thread, outside the plan).
    kept: Vec<(Vec<f32>, Vec<f32>)>,
    /// One row's exponentials in the first walk, where the logits are kept.
    e: Vec<f32>,
    /// One walk over a whole batch matrix (`Ctx::matrix`): its queries and `dO` as `B` of
    /// `dk` and `dv` a query tile at a time (`pack_tiles`), a tile pair's probabilities and
    /// gradients transposed (a row per key: those products' `A`), and `dk`, `dv` of every
    /// key, summed over the query tiles.
    bq: Vec<f32>,
    bo: Vec<f32>,
    pt: Vec<f32>,
    gt: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// The most keys for which phase 1 keeps its first walk's tiles for the second instead of
/// computing them again (two products of the nine a tile pair otherwise takes).
const KEPT_KEYS: usize = 512;

struct Ctx<'a> {
    nb: usize,
    batch: &'a [usize],
    dims: (usize, usize, usize, usize),
    q: Mat<'a>,
    k: Mat<'a>,
    v: Mat<'a>,
    d_out: Mat<'a>,
    score_dtype: DType,
    prologue: &'a Body<'a>,
    grad: &'a Body<'a>,
    /// The prologue's form: the scale folded into the score products where it is one.
    logits: Logits,
    /// The prologue backward's form: applied to a row of gradients at once where it is
    /// the gradient alone or scaled.
    grad_form: Logits,
    ws: Mem,
    dq: Option<(&'a GradOut, Mem)>,
    dk: Option<(&'a GradOut, Mem)>,
    dv: Option<(&'a GradOut, Mem)>,
    /// Phase 1 keeps its first walk's tiles for the second up to this many keys
    /// (`KEPT_KEYS`, or 0: `Options::keep_tiles`).
    kept_keys: usize,
}

// SAFETY: `Mem` is Send + Sync (see cpu/mod.rs); the rest is shared immutable data, and
// each task writes its own rows of the workspace and the gradients.
unsafe impl Sync for Ctx<'_> {}

impl Ctx<'_> {
    fn index(&self, bi: usize) -> Vec<usize> {
        let mut idx = vec![0usize; self.nb];
        let mut rest = bi;
        for ax in (0..self.nb).rev() {
            idx[ax] = rest % self.batch[ax];
            rest /= self.batch[ax];
        }
        idx
    }

    /// Operand `x`'s batch matrix at `base`.
    fn view(&self, x: &Mat, base: i64) -> View {
        let s = &x.op.strides;
        View {
            mem: x.mem,
            base,
            rs: s[self.nb],
            cs: s[self.nb + 1],
        }
    }

    /// The scale folded into the score products.
    fn scale(&self) -> Scale {
        match self.logits {
            Logits::Scaled(s) => s,
            _ => Scale::None,
        }
    }

    /// The logits from the scores in row `r` of `sc.s` (`cols` of them): rounded to the
    /// score dtype and through the prologue (the scale, when it is one, is already
    /// applied); `query`/`key` give element `c`'s query and key.
    fn logits_row(
        &self,
        idx: &[usize],
        r: usize,
        cols: usize,
        at: impl Fn(usize) -> (usize, usize),
        sc: &mut Scratch,
    ) {
        let row = &mut sc.s[r * T..r * T + cols];
        if self.score_dtype != DType::F32 {
            math::round_block(self.score_dtype, row);
        }
        if self.logits == Logits::Prologue {
            for (c, x) in row.iter_mut().enumerate() {
                let (i, j) = at(c);
                *x = self.prologue.eval(idx, i, j, *x, &mut sc.regs);
            }
        }
    }

    /// The gradient of the scores from the gradient of the logits in row `r` of `sc.g`.
    fn grad_row(
        &self,
        idx: &[usize],
        r: usize,
        cols: usize,
        at: impl Fn(usize) -> (usize, usize),
        sc: &mut Scratch,
    ) {
        let row = &mut sc.g[r * T..r * T + cols];
        match self.grad_form {
            Logits::Scores => {}
            Logits::Scaled(Scale::Mul(c)) => row.iter_mut().for_each(|x| *x *= c),
            Logits::Scaled(Scale::Div(c)) => row.iter_mut().for_each(|x| *x /= c),
            Logits::Scaled(Scale::None) | Logits::Prologue => {
                for (c, x) in row.iter_mut().enumerate() {
                    let (i, j) = at(c);
                    *x = self.grad.eval(idx, i, j, *x, &mut sc.regs);
                }
            }
        }
    }

    /// Phase 1 for queries `q0..` of batch matrix `bi`: their statistics, and `dq`.
    /// Phase 1 for queries `q0..` of batch matrix `bi`: their statistics, then `dq`. With
    /// `walk` (`matrix`), the second walk also sums each key tile's `dv += pᵀ·dO` and
    /// `dk += gsᵀ·q` into `sc.dv`, `sc.dk`.
    fn queries(&self, bi: usize, q0: usize, walk: bool, sc: &mut Scratch) {
        let (m, n, d, dv) = self.dims;
        let idx = self.index(bi);
        let rq = T.min(m - q0);
        let dp = d.next_multiple_of(NR);
        let (qb, kb, vb, ob) = (
            self.q.base(&idx),
            self.k.base(&idx),
            self.v.base(&idx),
            self.d_out.base(&idx),
        );
        if sc.packed_for != Some(bi) {
            sc.packed_for = Some(bi);
            pack_panels(&mut sc.b1, d, n, self.view(&self.k, kb));
            pack_panels(&mut sc.b2, dv, n, self.view(&self.v, vb).t());
            // Key tile by key tile: the keys as `dq`'s `B`.
            pack_tiles(&mut sc.bt1, n, d, self.view(&self.k, kb).t());
        }
        copy_rows(&mut sc.a1, rq, d, self.view(&self.q, qb).rows_from(q0));
        copy_rows(&mut sc.a2, rq, dv, self.view(&self.d_out, ob).rows_from(q0));
        sc.s.resize(T * T, 0.0);
        sc.dp.resize(T * T, 0.0);
        sc.g.resize(T * T, 0.0);
        let mut mx = vec![f32::NEG_INFINITY; rq];
        let mut sum = vec![0.0f32; rq];
        let mut tot = vec![0.0f32; rq];
        // Where the second walk will take the first's tiles, each tile pair's logits and
        // `dp` are swapped into `kept` as computed, and the exponentials go to `e`.
        let keep = self.dq.is_some() && n <= self.kept_keys;
        let mut kept = std::mem::take(&mut sc.kept);
        if keep {
            kept.resize_with(n.div_ceil(T), Default::default);
        }
        for (kt, k0) in (0..n).step_by(T).enumerate() {
            let rk = T.min(n - k0);
            self.scores(&idx, (q0, rq), (k0, rk), sc);
            let (s, dp) = if keep {
                std::mem::swap(&mut sc.s, &mut kept[kt].0);
                std::mem::swap(&mut sc.dp, &mut kept[kt].1);
                // (What came back is a tile from before, or nothing the first time.)
                sc.s.resize(T * T, 0.0);
                sc.dp.resize(T * T, 0.0);
                let (s, dp) = &mut kept[kt];
                (s, &*dp)
            } else {
                (&mut sc.s, &sc.dp)
            };
            for r in 0..rq {
                let row = &mut s[r * T..r * T + rk];
                let tmax = math::block_extremum(row, true);
                let mnew = math::maximum(mx[r], tmax);
                let mref = if mnew == f32::NEG_INFINITY { 0.0 } else { mnew };
                let alpha = math::exp(mx[r] - mref);
                // (The same exponentials either way: `exp_sum` is `exp_sum_in_place`'s
                // loop writing elsewhere.)
                let (ts, e) = if keep {
                    sc.e.resize(rk, 0.0);
                    (exp_sum(row, mref, &mut sc.e), &sc.e[..])
                } else {
                    (exp_sum_in_place(row, mref), &row[..])
                };
                sc.row.clear();
                sc.row
                    .extend(e.iter().zip(&dp[r * T..r * T + rk]).map(|(e, p)| e * p));
                let tt = math::block_sum(&sc.row);
                sum[r] = sum[r] * alpha + ts;
                tot[r] = tot[r] * alpha + tt;
                mx[r] = mnew;
            }
        }
        sc.stats.clear();
        for r in 0..rq {
            let mref = if mx[r] == f32::NEG_INFINITY {
                0.0
            } else {
                mx[r]
            };
            let st = [mref, sum[r], tot[r] / sum[r]];
            for (f, v) in st.into_iter().enumerate() {
                // SAFETY: rows q0.. of batch matrix bi belong to this task alone; the
                // workspace holds 3 floats for each of the nbatch·m rows (checked in `run`).
                unsafe { self.ws.write((3 * (bi * m + q0 + r) + f) as i64, v) };
                sc.stats.push(v);
            }
        }
        if self.dq.is_none() && !walk {
            sc.kept = kept;
            return;
        }
        let dvp = dv.next_multiple_of(NR);
        sc.acc.clear();
        sc.acc.resize(rq * dp, 0.0);
        for (kt, k0) in (0..n).step_by(T).enumerate() {
            let rk = T.min(n - k0);
            if keep {
                // The first walk's very tiles (swapped back into place: `s` is consumed).
                std::mem::swap(&mut sc.s, &mut kept[kt].0);
                std::mem::swap(&mut sc.dp, &mut kept[kt].1);
            } else {
                self.scores(&idx, (q0, rq), (k0, rk), sc);
            }
            for r in 0..rq {
                let (mref, l, dd) = (sc.stats[3 * r], sc.stats[3 * r + 1], sc.stats[3 * r + 2]);
                let row = &mut sc.s[r * T..r * T + rk];
                exp_sum_in_place(row, mref);
                let (dprow, grow) = (&sc.dp[r * T..r * T + rk], &mut sc.g[r * T..r * T + rk]);
                if walk {
                    // (The probabilities kept, for `dv`.)
                    for ((g, e), &p) in grow.iter_mut().zip(row.iter_mut()).zip(dprow) {
                        *e /= l;
                        *g = *e * (p - dd);
                    }
                } else {
                    for ((g, &e), &p) in grow.iter_mut().zip(row.iter()).zip(dprow) {
                        *g = (e / l) * (p - dd);
                    }
                }
                self.grad_row(&idx, r, rk, |c| (q0 + r, k0 + c), sc);
            }
            if self.dq.is_some() {
                // dq += gs · k.
                let kp = &sc.bt1[(k0 / T) * T * dp..][..rk * dp];
                product(
                    &mut sc.acc,
                    dp,
                    true,
                    (rq, rk),
                    &sc.g,
                    T,
                    kp,
                    dp / NR,
                    Scale::None,
                );
            }
            if walk {
                // dv += pᵀ · dO; dk += gsᵀ · q: phase 2's products on these very tiles
                // (its transposed ones are these, bit for bit), in the same order over the
                // query tiles.
                let none = Scale::None;
                if self.dv.is_some() {
                    transpose_into(&sc.s, T, (rq, rk), &mut sc.pt, T);
                    let op = &sc.bo[(q0 / T) * T * dvp..][..rq * dvp];
                    let acc = &mut sc.dv[k0 * dvp..];
                    product(acc, dvp, true, (rk, rq), &sc.pt, T, op, dvp / NR, none);
                }
                if self.dk.is_some() {
                    transpose_into(&sc.g, T, (rq, rk), &mut sc.gt, T);
                    let qp = &sc.bq[(q0 / T) * T * dp..][..rq * dp];
                    let acc = &mut sc.dk[k0 * dp..];
                    product(acc, dp, true, (rk, rq), &sc.gt, T, qp, dp / NR, none);
                }
            }
        }
        sc.kept = kept;
        if let Some((g, mem)) = self.dq {
            write(g, mem, &idx, (q0, rq), (d, dp), &sc.acc);
        }
    }

    /// A whole batch matrix in one walk: phase 1 for each query tile in order, its second
    /// walk also summing `dv += pᵀ·dO` and `dk += gsᵀ·q` for each key tile from the
    /// probabilities and gradients it has just computed (transposed: a row per key). Those
    /// are phase 2's products on the same values, summed over the query tiles in the same
    /// order, so the same bits, without the two products a tile pair with which phase 2
    /// computes the tiles again: five products a pair instead of seven. A task must hold
    /// whole matrices (the sums run over all their query tiles).
    fn matrix(&self, bi: usize, sc: &mut Scratch) {
        let (m, n, d, dv) = self.dims;
        let idx = self.index(bi);
        let (dp, dvp) = (d.next_multiple_of(NR), dv.next_multiple_of(NR));
        let (qb, ob) = (self.q.base(&idx), self.d_out.base(&idx));
        if self.dk.is_some() {
            pack_tiles(&mut sc.bq, m, d, self.view(&self.q, qb));
        }
        if self.dv.is_some() {
            pack_tiles(&mut sc.bo, m, dv, self.view(&self.d_out, ob));
        }
        // Only the wanted gradients' sums (the other stays empty, never read).
        for (acc, width, wanted) in [
            (&mut sc.dk, dp, self.dk.is_some()),
            (&mut sc.dv, dvp, self.dv.is_some()),
        ] {
            acc.clear();
            if wanted {
                acc.resize(n * width, 0.0);
            }
        }
        sc.pt.resize(T * T, 0.0);
        sc.gt.resize(T * T, 0.0);
        for q0 in (0..m).step_by(T) {
            self.queries(bi, q0, true, sc);
        }
        if let Some((g, mem)) = self.dk {
            write(g, mem, &idx, (0, n), (d, dp), &sc.dk);
        }
        if let Some((g, mem)) = self.dv {
            write(g, mem, &idx, (0, n), (dv, dvp), &sc.dv);
        }
    }

    /// Phase 1's tile of logits (`sc.s`) and `dp = dO·vᵀ` (`sc.dp`) for queries `q0..` and
    /// keys `k0..` (`T × T`, row stride `T`).
    fn scores(
        &self,
        idx: &[usize],
        (q0, rq): (usize, usize),
        (k0, rk): (usize, usize),
        sc: &mut Scratch,
    ) {
        let (_, _, d, dv) = self.dims;
        let panels = rk.div_ceil(NR);
        let (kt, vt) = (&sc.b1[k0 * d..], &sc.b2[k0 * dv..]);
        product(
            &mut sc.s,
            T,
            false,
            (rq, d),
            &sc.a1,
            d,
            kt,
            panels,
            self.scale(),
        );
        let none = Scale::None;
        product(&mut sc.dp, T, false, (rq, dv), &sc.a2, dv, vt, panels, none);
        for r in 0..rq {
            self.logits_row(idx, r, rk, |c| (q0 + r, k0 + c), sc);
        }
    }

    /// Phase 2 for keys `k0..` of batch matrix `bi`: `dk` and `dv`. The tiles are
    /// transposed (a row per key): the logits `k·qᵀ` are phase 1's `q·kᵀ` bit for bit
    /// (each is the same fused multiply-adds over `d` in order), so the probabilities are
    /// the ones phase 1's statistics describe.
    fn keys(&self, bi: usize, k0: usize, sc: &mut Scratch) {
        let (m, n, d, dv) = self.dims;
        let idx = self.index(bi);
        let rk = T.min(n - k0);
        let (dp, dvp) = (d.next_multiple_of(NR), dv.next_multiple_of(NR));
        let (qb, kb, vb, ob) = (
            self.q.base(&idx),
            self.k.base(&idx),
            self.v.base(&idx),
            self.d_out.base(&idx),
        );
        if sc.packed_for != Some(bi) {
            sc.packed_for = Some(bi);
            pack_panels(&mut sc.b1, d, m, self.view(&self.q, qb).t());
            pack_panels(&mut sc.b2, dv, m, self.view(&self.d_out, ob).t());
            // Query tile by query tile: the queries as `dk`'s `B`, `dO` as `dv`'s.
            pack_tiles(&mut sc.bt1, m, d, self.view(&self.q, qb));
            pack_tiles(&mut sc.bt2, m, dv, self.view(&self.d_out, ob));
        }
        copy_rows(&mut sc.a1, rk, d, self.view(&self.k, kb).t().rows_from(k0));
        copy_rows(&mut sc.a2, rk, dv, self.view(&self.v, vb).rows_from(k0));
        sc.s.resize(T * T, 0.0);
        sc.dp.resize(T * T, 0.0);
        sc.g.resize(T * T, 0.0);
        sc.acc.clear();
        sc.acc.resize(rk * dp, 0.0);
        sc.acc2.clear();
        sc.acc2.resize(rk * dvp, 0.0);
        for q0 in (0..m).step_by(T) {
            let rq = T.min(m - q0);
            let panels = rq.div_ceil(NR);
            let (qt, ot) = (&sc.b1[q0 * d..], &sc.b2[q0 * dv..]);
            product(
                &mut sc.s,
                T,
                false,
                (rk, d),
                &sc.a1,
                d,
                qt,
                panels,
                self.scale(),
            );
            let none = Scale::None;
            product(&mut sc.dp, T, false, (rk, dv), &sc.a2, dv, ot, panels, none);
            // The queries' max, sum and `D`, each a run of its own (so the loops below
            // run on vectors).
            sc.stats.clear();
            for f in 0..3 {
                for q in bi * m + q0..bi * m + q0 + rq {
                    // SAFETY: phase 1 wrote every row's statistics before phase 2 began.
                    sc.stats.push(unsafe { self.ws.read((3 * q + f) as i64) });
                }
            }
            for j in 0..rk {
                self.logits_row(&idx, j, rq, |c| (q0 + c, k0 + j), sc);
                // x − max per query, then exp (`exp(x − max − 0)` is `exp(x − max)`, the
                // very value phase 1 took), over the sum: the probabilities.
                let (mx, rest) = sc.stats.split_at(rq);
                let (sum, dd) = rest.split_at(rq);
                let row = &mut sc.s[j * T..j * T + rq];
                for (x, &mref) in row.iter_mut().zip(mx) {
                    *x -= mref;
                }
                exp_sum_in_place(row, 0.0);
                let (dprow, grow) = (&sc.dp[j * T..j * T + rq], &mut sc.g[j * T..j * T + rq]);
                for ((((g, p), &x), &l), &d) in grow
                    .iter_mut()
                    .zip(row.iter_mut())
                    .zip(dprow)
                    .zip(sum)
                    .zip(dd)
                {
                    *p /= l;
                    *g = *p * (x - d);
                }
                self.grad_row(&idx, j, rq, |c| (q0 + c, k0 + j), sc);
            }
            // dv += pᵀ · dO; dk += gsᵀ · q.
            let op = &sc.bt2[(q0 / T) * T * dvp..][..rq * dvp];
            product(
                &mut sc.acc2,
                dvp,
                true,
                (rk, rq),
                &sc.s,
                T,
                op,
                dvp / NR,
                none,
            );
            let qp = &sc.bt1[(q0 / T) * T * dp..][..rq * dp];
            product(&mut sc.acc, dp, true, (rk, rq), &sc.g, T, qp, dp / NR, none);
        }
        if let Some((g, mem)) = self.dk {
            write(g, mem, &idx, (k0, rk), (d, dp), &sc.acc);
        }
        if let Some((g, mem)) = self.dv {
            write(g, mem, &idx, (k0, rk), (dv, dvp), &sc.acc2);
        }
    }
}

/// Writes rows `first..first + rows` of a gradient, `cols` wide, from `acc` (row stride
/// `stride`).
fn write(
    g: &GradOut,
    mem: Mem,
    idx: &[usize],
    (first, rows): (usize, usize),
    (cols, stride): (usize, usize),
    acc: &[f32],
) {
    let nb = idx.len();
    let base = g.offset + dot(idx, &g.strides);
    for r in 0..rows {
        let at = base + (first + r) as i64 * g.strides[nb];
        // SAFETY: inside the gradient's checked domain (whose dtype is `g.dtype`, checked in
        // `run`: the run is rounded to it); these rows belong to this task.
        unsafe { mem.write_run(at, g.strides[nb + 1], &acc[r * stride..r * stride + cols]) };
    }
}
