//! Attention's backward on the CPU (flash attention's backward, `AttentionBackwardKernel`):
//! two phases, each parallel (rayon) over batch matrices and tiles of `T` rows. Phase 1, per
//! tile of queries: one walk over the keys in tiles recomputes the logits (the scores `q·k`
//! as one small product, rounded to the score dtype, through the prologue) and `dp = dO·vᵀ`,
//! folding them into each query's running max, sum and `Σ dp·e^(x − max)` (online), which go
//! to the workspace; a second walk gives `gs = g(p ∘ (dp − D))` per logit and `dq = gs·k`.
//! Phase 2, per tile of keys: a walk over the query tiles recomputes `p` and `gs` from the
//! workspace's statistics and accumulates `dv = pᵀ·dO` and `dk = gsᵀ·q`. The scores, the
//! probabilities and their gradients never exist beyond one tile per thread; every sum runs
//! in a fixed order, so results do not depend on the threads.

use super::fused::check_bounds;
use super::math;
use super::typed::{self, Lane};
use super::{CpuError, Mem};
use gemm::Parallelism;
use rayon::prelude::*;
use tc_compiler::ir::{eval, BinaryOp, DType};
use tc_compiler::schedule::{
    AttentionBackwardKernel, BufferId, GradOut, Inst, InstOp, Load, MatOperand, Plan,
};

/// Rows (queries or keys) per tile: a tile of logits is `T × T` f32 (16 KiB).
pub const T: usize = 64;

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

    /// Rows `first..first + count` of the batch matrix at `base` as a contiguous f32
    /// `count × cols` tile; with `transposed`, element (`r`, `c`) is the matrix's (`c`, `r`)
    /// (the keys, stored `[d, n]`).
    fn tile(
        &self,
        base: i64,
        nb: usize,
        first: usize,
        count: usize,
        cols: usize,
        transposed: bool,
        out: &mut Vec<f32>,
    ) {
        let s = &self.op.strides;
        let (rs, cs) = if transposed {
            (s[nb + 1], s[nb])
        } else {
            (s[nb], s[nb + 1])
        };
        out.clear();
        for r in first..first + count {
            for c in 0..cols {
                // SAFETY: inside the matrix, whose bounds `run` checked.
                out.push(unsafe { self.mem.read(base + r as i64 * rs + c as i64 * cs) });
            }
        }
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

/// `dst (rows × cols, row stride cols) (+)= lhs · rhs` with `lhs` element (`r`, `k`) at
/// `lhs[r·lrs + k·lcs]` and `rhs` (`k`, `c`) at `rhs[k·rrs + c·rcs]`.
#[allow(clippy::too_many_arguments)]
fn product(
    dst: &mut [f32],
    accumulate: bool,
    (rows, cols, depth): (usize, usize, usize),
    lhs: &[f32],
    (lrs, lcs): (usize, usize),
    rhs: &[f32],
    (rrs, rcs): (usize, usize),
) {
    if rows == 0 || cols == 0 {
        return;
    }
    if depth == 0 {
        if !accumulate {
            dst[..rows * cols].fill(0.0);
        }
        return;
    }
    // SAFETY: every slice holds the elements its strides reach for these sizes.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            depth,
            dst.as_mut_ptr(),
            1,
            cols as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            if accumulate { 1.0f32 } else { 0.0f32 },
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

pub(super) fn run(
    plan: &Plan,
    name: &str,
    a: &AttentionBackwardKernel,
    mems: &[Mem],
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
        ws,
        dq: outs[0],
        dk: outs[1],
        dv: outs[2],
    };
    let qtiles = m.div_ceil(T);
    (0..nbatch * qtiles)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, task| {
            ctx.queries(task / qtiles, (task % qtiles) * T, sc)
        });
    if ctx.dk.is_some() || ctx.dv.is_some() {
        let ktiles = n.div_ceil(T);
        (0..nbatch * ktiles)
            .into_par_iter()
            .for_each_init(Scratch::default, |sc, task| {
                ctx.keys(task / ktiles, (task % ktiles) * T, sc)
            });
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

/// One thread's buffers, reused across its tasks.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    d_out: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    dp: Vec<f32>,
    g: Vec<f32>,
    acc: Vec<f32>,
    acc2: Vec<f32>,
    stats: Vec<f32>,
    regs: Vec<Lane>,
}

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
    ws: Mem,
    dq: Option<(&'a GradOut, Mem)>,
    dk: Option<(&'a GradOut, Mem)>,
    dv: Option<(&'a GradOut, Mem)>,
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

    /// The logits of queries `q0..q0 + rq` and keys `k0..k0 + rk` (tiles `sc.q`, `sc.k`)
    /// into `sc.s`, and `dp = dO·vᵀ` into `sc.dp` (both `rq × rk`).
    fn logits(
        &self,
        idx: &[usize],
        (q0, rq): (usize, usize),
        (k0, rk): (usize, usize),
        sc: &mut Scratch,
    ) {
        let (_, _, d, dv) = self.dims;
        sc.s.resize(rq * rk, 0.0);
        sc.dp.resize(rq * rk, 0.0);
        product(&mut sc.s, false, (rq, rk, d), &sc.q, (d, 1), &sc.k, (1, d));
        product(
            &mut sc.dp,
            false,
            (rq, rk, dv),
            &sc.d_out,
            (dv, 1),
            &sc.v,
            (1, dv),
        );
        for r in 0..rq {
            for c in 0..rk {
                let x = &mut sc.s[r * rk + c];
                let s = math::round_to(self.score_dtype, *x);
                *x = self.prologue.eval(idx, q0 + r, k0 + c, s, &mut sc.regs);
            }
        }
    }

    /// The gradient of the scores from the logits in `sc.s`, `dp` in `sc.dp` and the
    /// queries' statistics (`sc.stats`, three a query): `sc.g`; with `probs`, the
    /// probabilities replace the logits in `sc.s`.
    fn grads(
        &self,
        idx: &[usize],
        (q0, rq): (usize, usize),
        (k0, rk): (usize, usize),
        probs: bool,
        sc: &mut Scratch,
    ) {
        sc.g.resize(rq * rk, 0.0);
        for r in 0..rq {
            let (mref, l, dd) = (sc.stats[3 * r], sc.stats[3 * r + 1], sc.stats[3 * r + 2]);
            for c in 0..rk {
                let e = math::exp(sc.s[r * rk + c] - mref);
                let p = e / l;
                let gx = p * (sc.dp[r * rk + c] - dd);
                sc.g[r * rk + c] = self.grad.eval(idx, q0 + r, k0 + c, gx, &mut sc.regs);
                if probs {
                    sc.s[r * rk + c] = p;
                }
            }
        }
    }

    /// Phase 1 for queries `q0..` of batch matrix `bi`: their statistics, and `dq`.
    fn queries(&self, bi: usize, q0: usize, sc: &mut Scratch) {
        let (m, n, d, dv) = self.dims;
        let nb = self.nb;
        let idx = self.index(bi);
        let rq = T.min(m - q0);
        let (qb, kb, vb, ob) = (
            self.q.base(&idx),
            self.k.base(&idx),
            self.v.base(&idx),
            self.d_out.base(&idx),
        );
        let mut q = std::mem::take(&mut sc.q);
        self.q.tile(qb, nb, q0, rq, d, false, &mut q);
        sc.q = q;
        let mut o = std::mem::take(&mut sc.d_out);
        self.d_out.tile(ob, nb, q0, rq, dv, false, &mut o);
        sc.d_out = o;
        let mut mx = vec![f32::NEG_INFINITY; rq];
        let mut sum = vec![0.0f32; rq];
        let mut tot = vec![0.0f32; rq];
        for k0 in (0..n).step_by(T) {
            let rk = T.min(n - k0);
            self.keys_tile(kb, vb, k0, rk, sc);
            self.logits(&idx, (q0, rq), (k0, rk), sc);
            for r in 0..rq {
                let row = &sc.s[r * rk..(r + 1) * rk];
                let tmax = row
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, &b| math::maximum(a, b));
                let mnew = math::maximum(mx[r], tmax);
                let mref = if mnew == f32::NEG_INFINITY { 0.0 } else { mnew };
                let alpha = math::exp(mx[r] - mref);
                let (mut ts, mut tt) = (0.0f32, 0.0f32);
                for (c, &x) in row.iter().enumerate() {
                    let e = math::exp(x - mref);
                    ts += e;
                    tt += e * sc.dp[r * rk + c];
                }
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
        let Some((g, mem)) = self.dq else { return };
        sc.acc.clear();
        sc.acc.resize(rq * d, 0.0);
        for k0 in (0..n).step_by(T) {
            let rk = T.min(n - k0);
            self.keys_tile(kb, vb, k0, rk, sc);
            self.logits(&idx, (q0, rq), (k0, rk), sc);
            self.grads(&idx, (q0, rq), (k0, rk), false, sc);
            // dq += gs · k.
            product(
                &mut sc.acc,
                true,
                (rq, d, rk),
                &sc.g,
                (rk, 1),
                &sc.k,
                (d, 1),
            );
        }
        write(g, mem, &idx, q0, rq, d, &sc.acc);
    }

    /// Keys and values `k0..k0 + rk` into `sc.k` (`rk × d`) and `sc.v` (`rk × dv`).
    fn keys_tile(&self, kb: i64, vb: i64, k0: usize, rk: usize, sc: &mut Scratch) {
        let (_, _, d, dv) = self.dims;
        let mut k = std::mem::take(&mut sc.k);
        self.k.tile(kb, self.nb, k0, rk, d, true, &mut k);
        sc.k = k;
        let mut v = std::mem::take(&mut sc.v);
        self.v.tile(vb, self.nb, k0, rk, dv, false, &mut v);
        sc.v = v;
    }

    /// Phase 2 for keys `k0..` of batch matrix `bi`: `dk` and `dv`.
    fn keys(&self, bi: usize, k0: usize, sc: &mut Scratch) {
        let (m, n, d, dv) = self.dims;
        let nb = self.nb;
        let idx = self.index(bi);
        let rk = T.min(n - k0);
        let (qb, kb, vb, ob) = (
            self.q.base(&idx),
            self.k.base(&idx),
            self.v.base(&idx),
            self.d_out.base(&idx),
        );
        self.keys_tile(kb, vb, k0, rk, sc);
        sc.acc.clear();
        sc.acc.resize(rk * d, 0.0);
        sc.acc2.clear();
        sc.acc2.resize(rk * dv, 0.0);
        for q0 in (0..m).step_by(T) {
            let rq = T.min(m - q0);
            let mut q = std::mem::take(&mut sc.q);
            self.q.tile(qb, nb, q0, rq, d, false, &mut q);
            sc.q = q;
            let mut o = std::mem::take(&mut sc.d_out);
            self.d_out.tile(ob, nb, q0, rq, dv, false, &mut o);
            sc.d_out = o;
            sc.stats.clear();
            for i in 3 * (bi * m + q0)..3 * (bi * m + q0 + rq) {
                // SAFETY: phase 1 wrote every row's statistics before phase 2 began.
                sc.stats.push(unsafe { self.ws.read(i as i64) });
            }
            self.logits(&idx, (q0, rq), (k0, rk), sc);
            self.grads(&idx, (q0, rq), (k0, rk), true, sc);
            // dv += pᵀ · dO; dk += gsᵀ · q.
            product(
                &mut sc.acc2,
                true,
                (rk, dv, rq),
                &sc.s,
                (1, rk),
                &sc.d_out,
                (dv, 1),
            );
            product(
                &mut sc.acc,
                true,
                (rk, d, rq),
                &sc.g,
                (1, rk),
                &sc.q,
                (d, 1),
            );
        }
        if let Some((g, mem)) = self.dk {
            write(g, mem, &idx, k0, rk, d, &sc.acc);
        }
        if let Some((g, mem)) = self.dv {
            write(g, mem, &idx, k0, rk, dv, &sc.acc2);
        }
    }
}

/// Writes rows `first..first + rows` (`rows × cols` in `acc`) of a gradient.
fn write(
    g: &GradOut,
    mem: Mem,
    idx: &[usize],
    first: usize,
    rows: usize,
    cols: usize,
    acc: &[f32],
) {
    let nb = idx.len();
    let base = g.offset + dot(idx, &g.strides);
    for r in 0..rows {
        for c in 0..cols {
            let at = base + (first + r) as i64 * g.strides[nb] + c as i64 * g.strides[nb + 1];
            // SAFETY: inside the gradient's checked domain; these rows belong to this task.
            unsafe { mem.write(at, math::round_to(g.dtype, acc[r * cols + c])) };
        }
    }
}
