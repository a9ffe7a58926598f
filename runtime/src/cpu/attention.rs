//! Attention on the CPU (flash attention): each task takes one tile of `BQ` queries of one
//! batch matrix (in parallel, rayon); the keys and values are walked in tiles of `BK`,
//! packed for `tile_gemm` (widened to f32 there) once per batch matrix and thread, and the queries are
//! taken `ROW_BLOCK` rows at a time: their scores `q·k` (a `tile_gemm` product, with a
//! constant scale of the scores applied to each sum), rounded to the score dtype and run
//! through the prologue a row at a time, then folded into a running max and sum per query
//! (online softmax: one pass for the max, one for `exp` and its sum) and into an f32
//! accumulator of `Σ p·v` (a second product). The scores never exist beyond `ROW_BLOCK × BK`
//! floats per thread, so the plan stores none. Every sum runs in a fixed order, so results
//! do not depend on the threads. Key tiles a mask hides entirely (`tc_compiler::masked`) are
//! not computed, and in the others a mask compared from `arange`s is not evaluated key by
//! key: an index map along the keys is kept as `base + c·step`, a comparison of two as the
//! range of keys where it holds (`cmp_range`), a `where` over that range as fills and a
//! copy. The output is written through its strides, the epilogue computed a row at a time
//! when it only rounds, else per element (`typed`'s meaning).

use super::fused::check_bounds;
use super::math::{self, Operand};
use super::tile_gemm::{self, Product, Scale, NR};
use super::typed::{self, Lane};
use super::{CpuError, Mem};
use rayon::prelude::*;
use tc_compiler::ir::{eval, BinaryOp, CmpOp, DType};
use tc_compiler::masked::{self, KeyTiles, SKIP_MARGIN};
use tc_compiler::schedule::{
    AttentionKernel, BufferId, Epilogue, Inst, InstOp, MatOperand, Plan, RESULT, SCORE,
};

/// Queries per tile (one task).
pub const BQ: usize = 128;
/// Keys per tile: a tile of scores is `BQ × BK` f32 (64 KiB), with the key and value tiles
/// it reads, within a core's L2.
pub const BK: usize = 512;

/// Where one operand's batch matrix is: its buffer, element offset and matrix strides, and
/// whether it may be read in place (f32, aligned).
struct MatRef<'a> {
    op: &'a MatOperand,
    mem: Mem,
    direct: bool,
}

impl MatRef<'_> {
    fn batch_offset(&self, idx: &[usize]) -> i64 {
        self.op.offset
            + idx
                .iter()
                .zip(&self.op.strides)
                .map(|(&z, &s)| z as i64 * s)
                .sum::<i64>()
    }

    /// Element (`r`, `c`) of the batch matrix at `base` as f32.
    ///
    /// # Safety
    /// In bounds (the kernel's bounds check covers every (r, c) of the matrix).
    #[inline]
    unsafe fn at(&self, base: i64, nb: usize, r: usize, c: usize) -> f32 {
        let s = &self.op.strides;
        // SAFETY: forwarded.
        unsafe {
            self.mem
                .read(base + r as i64 * s[nb] + c as i64 * s[nb + 1])
        }
    }

    /// Pointer to element (`r`, `c`) for a direct operand.
    fn ptr(&self, base: i64, nb: usize, r: usize, c: usize) -> *const f32 {
        let s = &self.op.strides;
        let i = base + r as i64 * s[nb] + c as i64 * s[nb + 1];
        self.mem.base().cast::<f32>().wrapping_offset(i as isize)
    }
}

pub(super) fn run(
    plan: &Plan,
    name: &str,
    a: &AttentionKernel,
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
    for (what, op, rows, cols) in [("q", &a.q, m, d), ("k", &a.k, d, n), ("v", &a.v, n, dv)] {
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
        let direct = mem.dtype == DType::F32
            && (mem.ptr as usize).is_multiple_of(std::mem::align_of::<f32>());
        ops.push(MatRef { op, mem, direct });
    }
    let mut dom = batch.clone();
    dom.extend([m, n]);
    let mut loads = Vec::new();
    for l in &a.loads {
        let mem = mem_of(l.buffer, "prologue load")?;
        if l.strides.len() != nb + 2 || l.dtype != mem.dtype {
            return Err(bad("a prologue load does not match its buffer".into()));
        }
        check_bounds(
            name,
            "prologue load",
            &plan.buffer(l.buffer).name,
            mem,
            l.offset,
            &l.strides,
            &dom,
        )?;
        loads.push(mem);
    }
    for (i, inst) in a.body.iter().enumerate() {
        let ok = match inst.op {
            InstOp::Load(l) => l <= a.loads.len(),
            InstOp::Reduce(..) | InstOp::Gather { .. } | InstOp::Scan(_) => false,
            InstOp::Index { ref strides, .. } => strides.len() == nb + 2,
            ref op => op.operands().iter().all(|&o| o < i),
        };
        if !ok {
            return Err(bad(format!("prologue inst {i} is not elementwise")));
        }
    }
    if a.logits >= a.body.len() || a.body[a.logits].dtype.is_integral() {
        return Err(bad("the logits are no float inst".into()));
    }
    let mut odom = batch.clone();
    odom.extend([m, dv]);
    let mut eloads = Vec::new();
    if let Some(e) = &a.epilogue {
        for l in &e.loads {
            let mem = mem_of(l.buffer, "epilogue load")?;
            if l.strides.len() != nb + 2 || l.dtype != mem.dtype {
                return Err(bad("an epilogue load does not match its buffer".into()));
            }
            check_bounds(
                name,
                "epilogue load",
                &plan.buffer(l.buffer).name,
                mem,
                l.offset,
                &l.strides,
                &odom,
            )?;
            eloads.push(mem);
        }
        for (i, inst) in e.body.iter().enumerate() {
            let ok = match inst.op {
                InstOp::Load(l) => l <= e.loads.len(),
                InstOp::Reduce(..) | InstOp::Gather { .. } | InstOp::Scan(_) => false,
                InstOp::Index { ref strides, .. } => strides.len() == nb + 2,
                ref op => op.operands().iter().all(|&o| o < i),
            };
            if !ok {
                return Err(bad(format!("epilogue inst {i} is not elementwise")));
            }
        }
        if e.result >= e.body.len() {
            return Err(bad("the epilogue's result is no inst".into()));
        }
    }
    let out = mem_of(a.out, "output")?;
    if a.out_strides.len() != nb + 2 {
        return Err(bad("the output's strides do not match its domain".into()));
    }
    check_bounds(
        name,
        "output",
        &plan.buffer(a.out).name,
        out,
        a.out_offset,
        &a.out_strides,
        &odom,
    )?;
    if !out.writable
        || out.dtype != a.out_dtype
        || out.numel < nbatch * m * dv
        || ops.iter().any(|o| o.mem.overlaps(&out))
        || loads.iter().chain(&eloads).any(|l| l.overlaps(&out))
    {
        return Err(bad(format!(
            "output {} is not a writable {} buffer of {} elements apart from the operands",
            plan.buffer(a.out).name,
            a.out_dtype,
            nbatch * m * dv
        )));
    }
    if nbatch == 0 || m == 0 || n == 0 || dv == 0 {
        return Ok(());
    }
    let masked = masked::key_tiles(a, BQ as u64, BK_MASKED as u64);
    let (bk, tiles) = if masked.masked.is_some() {
        (BK_MASKED, masked)
    } else {
        let kt = n.div_ceil(BK) as u64;
        (
            BK,
            KeyTiles {
                ranges: vec![(0, kt); m.div_ceil(BQ)],
                masked: None,
            },
        )
    };
    let ctx = Ctx {
        a,
        nb,
        batch: &batch,
        dims: (m, n, d, dv),
        q: &ops[0],
        k: &ops[1],
        v: &ops[2],
        loads: &loads,
        eloads: &eloads,
        out,
        bk,
        tiles,
        rounding: rounding_chain(a),
        logits: logits_form(a),
        typed_insts: a
            .body
            .iter()
            .map(|inst| {
                inst.dtype.is_integral()
                    || inst
                        .op
                        .operands()
                        .iter()
                        .any(|&o| a.body[o].dtype.is_integral())
            })
            .collect(),
    };
    // Tasks: one query tile each, in order (batch matrix, tile), every one its own job for
    // the pool, so that at the end a thread that is done takes a single tile (0.3 ms at
    // attention.tx's sizes) rather than waiting for another thread's group of tiles. Each
    // thread keeps its buffers (`SCRATCH`), and a thread walks a contiguous range of tasks
    // (rayon splits the range, a thief takes the half furthest away), so it packs a batch
    // matrix's keys and values once for all the tiles of it it computes. Which thread
    // computes a row changes nothing in its result.
    let qtiles = m.div_ceil(BQ);
    let run_id = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let computed: u64 = (0..nbatch * qtiles)
        .into_par_iter()
        .with_max_len(1)
        .map(|task| {
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                if scratch.run != Some(run_id) {
                    scratch.run = Some(run_id);
                    scratch.packed_for = None;
                }
                ctx.tile(task / qtiles, task % qtiles * BQ, &mut scratch)
            })
        })
        .sum();
    #[cfg(feature = "test-support")]
    if let Ok(mut log) = TILE_LOG.lock() {
        log.push(TileCount {
            kernel: name.to_string(),
            dims: (m, n, d, dv),
            computed,
            all: (nbatch * qtiles * n.div_ceil(bk)) as u64,
        });
    }
    #[cfg(not(feature = "test-support"))]
    let _ = computed;
    Ok(())
}

/// Query rows taken from scores to `p · v` at a time (a multiple of the micro-kernel's 6):
/// their scores (`ROW_BLOCK × BK` f32, 24 KiB, all the scores a thread holds) stay in L1.
const ROW_BLOCK: usize = 12;

/// Keys per tile: `BK`, or `BK_MASKED` when some tiles are masked (`tc_compiler::masked`),
/// so that a causal mask leaves about half the tiles (with `BK` keys a tile, `S = 1024`
/// has two key tiles per query tile, one of which is masked for only half the query tiles).
pub const BK_MASKED: usize = 128;

/// The key tiles computed in one run of an attention kernel (tests only).
#[cfg(feature = "test-support")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileCount {
    pub kernel: String,
    /// `m`, `n`, `d`, `dv`.
    pub dims: (usize, usize, usize, usize),
    /// (batch, query tile, key tile) triples computed, and all there are.
    pub computed: u64,
    pub all: u64,
}

/// Every attention run's `TileCount`, in order (tests only: a test finds its own run by
/// its kernel's dims).
#[cfg(feature = "test-support")]
pub static TILE_LOG: std::sync::Mutex<Vec<TileCount>> = std::sync::Mutex::new(Vec::new());

/// Counts the attention kernels' runs: which run a thread's `SCRATCH` last packed keys for.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Each thread's buffers, kept across tasks and runs (their memory stays faulted in; the
    /// packed keys and values are valid only for the run that packed them: `Scratch::run`).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One thread's buffers, reused across its tasks.
#[derive(Default)]
struct Scratch {
    /// The kernel run (`RUNS`) the packed keys and values belong to.
    run: Option<u64>,
    /// The query tile as contiguous f32 (`rows × d`), when it is not read in place.
    q: Vec<f32>,
    /// The keys of batch matrix `packed_for`, each key tile in panels of `NR` keys
    /// (`d × NR`, `tile_gemm`'s `B`), `bk · d` floats a tile.
    kpack: Vec<f32>,
    /// Its values, each key tile in panels of `NR` columns (`cols × NR`), `bk · dvp` floats
    /// a tile (`dvp`: `dv` rounded up to `NR`, zeros past `dv`).
    vpack: Vec<f32>,
    /// Which key tiles of `kpack`/`vpack` hold their batch matrix's keys and values.
    packed: Vec<bool>,
    packed_for: Option<usize>,
    s: Vec<f32>,
    acc: Vec<f32>,
    regs: Vec<f32>,
    /// Integer and `bool` prologue values, exact (`typed`'s meaning).
    iregs: Vec<i64>,
    /// One integral inst's values for a row, before they are stored.
    lanes: Vec<Lane>,
    kinds: Vec<Reg>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// The epilogue's values at one output element.
    elanes: Vec<Lane>,
}

struct Ctx<'a> {
    a: &'a AttentionKernel,
    nb: usize,
    batch: &'a [usize],
    dims: (usize, usize, usize, usize),
    q: &'a MatRef<'a>,
    k: &'a MatRef<'a>,
    v: &'a MatRef<'a>,
    loads: &'a [Mem],
    /// The epilogue's loads.
    eloads: &'a [Mem],
    out: Mem,
    /// Keys per tile (at most `BK`) and the key tiles each tile of `BQ` queries computes.
    bk: usize,
    tiles: KeyTiles,
    /// The roundings `p @ v` goes through before its store when the epilogue is only
    /// casts to float dtypes (`rounding_chain`), in order; `None` for any other epilogue,
    /// which is evaluated per element.
    rounding: Option<Vec<DType>>,
    /// Where the logits come from (`logits_form`).
    logits: Logits,
    /// Per prologue inst: whether it or an operand is integral (`Ctx::typed`'s insts).
    typed_insts: Vec<bool>,
}

/// How a key tile's logits are made from its scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Logits {
    /// They are the scores (the prologue is the score alone).
    Scores,
    /// f32 scores multiplied or divided by a constant (`s / sqrt(Dh)`): the score product
    /// applies it to each finished sum, the same IEEE operation the prologue would.
    Scaled(Scale),
    /// Anything else: the prologue runs over each row of scores.
    Prologue,
}

/// The form of `a`'s prologue (`Logits`).
fn logits_form(a: &AttentionKernel) -> Logits {
    body_form(&a.body, a.logits, a.score_dtype)
}

/// The form of an elementwise body over one f32 input (`Load(0)`: the scores, or in the
/// backward the gradient of the logits) whose value `result` is: the input alone, the
/// input times or over a constant (`Logits::Scaled`), or anything else. `input_dtype` is
/// the input's dtype (a scaled form needs f32 throughout).
pub(super) fn body_form(body: &[Inst], result: usize, input_dtype: DType) -> Logits {
    let input = |x: usize| matches!(body[x].op, InstOp::Load(SCORE));
    if body.len() == 1 && result == 0 && input(0) {
        return Logits::Scores;
    }
    if input_dtype != DType::F32 || body.len() != 3 || body.iter().any(|i| i.dtype != DType::F32) {
        return Logits::Prologue;
    }
    let konst = |x: usize| match body[x].op {
        InstOp::Const(c) => Some(c as f32),
        _ => None,
    };
    let scale = match body[result].op {
        InstOp::Binary(BinaryOp::Div, x, y) if input(x) => konst(y).map(Scale::Div),
        InstOp::Binary(BinaryOp::Mul, x, y) if input(x) => konst(y).map(Scale::Mul),
        InstOp::Binary(BinaryOp::Mul, x, y) if input(y) => konst(x).map(Scale::Mul),
        _ => None,
    };
    // Dividing by a power of two is multiplying by its reciprocal, exactly (the same
    // correctly rounded value), and cheaper.
    let scale = match scale {
        Some(Scale::Div(c))
            if c.is_normal() && c.to_bits() & 0x007f_ffff == 0 && (1.0 / c).is_normal() =>
        {
            Some(Scale::Mul(1.0 / c))
        }
        s => s,
    };
    scale.map_or(Logits::Prologue, Logits::Scaled)
}

/// The float dtypes the stored value is rounded to, in order, when the epilogue computes
/// nothing but roundings of `p @ v` (the head-merge copy of a permute is such an epilogue:
/// its store's strides do the permuting): the chain of casts from the result back to
/// `Load(RESULT)`. Empty without an epilogue; `None` when the result depends on anything
/// else.
fn rounding_chain(a: &AttentionKernel) -> Option<Vec<DType>> {
    let Some(e) = &a.epilogue else {
        return Some(Vec::new());
    };
    let mut chain = Vec::new();
    let mut at = e.result;
    loop {
        let inst = e.body.get(at)?;
        if inst.dtype.is_integral() {
            return None;
        }
        chain.push(inst.dtype);
        match inst.op {
            InstOp::Load(RESULT) => break,
            InstOp::Cast(x) if x < at => at = x,
            _ => return None,
        }
    }
    chain.reverse();
    Some(chain)
}

// SAFETY: `Mem` is Send + Sync (see cpu/mod.rs); the rest is shared immutable data.
unsafe impl Sync for Ctx<'_> {}

impl Ctx<'_> {
    /// Queries `q0 .. q0 + BQ` of batch matrix `bi`; the number of key tiles computed.
    fn tile(&self, bi: usize, q0: usize, sc: &mut Scratch) -> u64 {
        let (m, n, d, dv) = self.dims;
        let nb = self.nb;
        let rows = BQ.min(m - q0);
        let mut idx = vec![0usize; nb];
        let mut rest = bi;
        for ax in (0..nb).rev() {
            idx[ax] = rest % self.batch[ax];
            rest /= self.batch[ax];
        }
        let qb = self.q.batch_offset(&idx);
        // The queries: f32 rows of unit stride read in place, else copied as contiguous
        // f32 (`rows × d`); `tile_gemm` reads row `r` at `qa + r · lda`.
        sc.q.clear();
        let qs = &self.q.op.strides;
        let (qa, lda) = if self.q.direct && qs[nb + 1] == 1 && qs[nb] >= 0 {
            (self.q.ptr(qb, nb, q0, 0), qs[nb] as usize)
        } else {
            for r in 0..rows {
                for c in 0..d {
                    // SAFETY: (q0 + r, c) is inside the matrix checked in `run`.
                    sc.q.push(unsafe { self.q.at(qb, nb, q0 + r, c) });
                }
            }
            (sc.q.as_ptr(), d)
        };
        let dvp = dv.next_multiple_of(NR);
        sc.acc.clear();
        sc.acc.resize(rows * dvp, 0.0);
        sc.max.clear();
        sc.max.resize(rows, f32::NEG_INFINITY);
        sc.sum.clear();
        sc.sum.resize(rows, 0.0);
        sc.s.resize(ROW_BLOCK * BK, 0.0);
        let body = &self.a.body;
        if self.logits == Logits::Prologue {
            sc.regs.resize(body.len() * BK, 0.0);
            if body.iter().any(|i| i.dtype.is_integral()) {
                sc.iregs.resize(body.len() * BK, 0);
            }
        }
        // The key tiles that are not masked for these queries, in order; then, with a
        // finite mask constant, the masked ones, each skipped once every row's running max
        // is far enough above it (`tc_compiler::masked`); with `-inf`, never visited.
        let bk = self.bk;
        let kt = n.div_ceil(bk);
        let (first, end) = self.tiles.ranges[q0 / BQ];
        let (first, end) = (first as usize, end as usize);
        let late = match self.tiles.masked {
            Some(c) if c != f32::NEG_INFINITY => (0..first).chain(end..kt),
            _ => (0..0).chain(0..0),
        };
        // Keys and values are packed once per batch matrix (for every query tile of it
        // that this thread computes), each key tile when first needed.
        if sc.packed_for != Some(bi) {
            sc.packed_for = Some(bi);
            sc.packed.clear();
            sc.packed.resize(kt, false);
            sc.kpack.resize(kt * bk * d, 0.0);
            sc.vpack.resize(kt * bk * dvp, 0.0);
        }
        let mut computed = 0u64;
        for j in (first..end).chain(late) {
            if j < first || j >= end {
                let c = self.tiles.masked.unwrap_or(f32::NAN);
                if sc.max[..rows].iter().all(|&mx| mx - c > SKIP_MARGIN) {
                    continue;
                }
            }
            computed += 1;
            if !sc.packed[j] {
                self.pack(&idx, j, sc);
                sc.packed[j] = true;
            }
            // A block of query rows at a time from the scores to `p · v`, so that its
            // scores stay in L1 while the packed keys and values stream from L2.
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + ROW_BLOCK).min(rows);
                self.rows(&idx, q0, (qa, lda), j, r0..r1, sc);
                r0 = r1;
            }
        }
        let os = &self.a.out_strides;
        let base = self.a.out_offset + idx.iter().zip(os).map(|(&z, &s)| z as i64 * s).sum::<i64>();
        for r in 0..rows {
            let inv = 1.0 / sc.sum[r];
            let row = base + (q0 + r) as i64 * os[nb];
            let acc = &mut sc.acc[r * dvp..r * dvp + dv];
            match (&self.a.epilogue, &self.rounding) {
                // The value, rounded as the casts round, stored through the strides.
                (_, Some(chain)) => {
                    for x in acc.iter_mut() {
                        *x *= inv;
                    }
                    for &dt in chain.iter().filter(|&&dt| dt != DType::F32) {
                        math::round_block(dt, acc);
                    }
                    if self.out.dtype == DType::F32 && os[nb + 1] == 1 {
                        // SAFETY: batch `bi`, rows q0.. of the output belong to this task
                        // alone; the row's `dv` elements are inside the buffer (checked in
                        // `run`), and the accumulator is a distinct allocation; a byte copy
                        // needs no alignment.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                acc.as_ptr().cast::<u8>(),
                                self.out.base().offset(row as isize * 4),
                                dv * 4,
                            )
                        };
                    } else {
                        for (c, &x) in acc.iter().enumerate() {
                            // SAFETY: as above.
                            unsafe { self.out.write(row + c as i64 * os[nb + 1], x) };
                        }
                    }
                }
                (Some(e), None) => {
                    for (c, &a) in acc.iter().enumerate() {
                        let value = a * inv;
                        let v = self.epilogue(e, &idx, q0 + r, c, value, &mut sc.elanes);
                        // SAFETY: as above.
                        unsafe { typed::write(self.out, row + c as i64 * os[nb + 1], v) };
                    }
                }
                // `rounding_chain` is `Some` without an epilogue.
                (None, None) => {}
            }
        }
        computed
    }

    /// Rows `rs` of the query tile at `q0` against key tile `j`: their scores (`q · k`),
    /// logits, online-softmax step and `acc += p · v`.
    fn rows(
        &self,
        idx: &[usize],
        q0: usize,
        (qa, lda): (*const f32, usize),
        j: usize,
        rs: std::ops::Range<usize>,
        sc: &mut Scratch,
    ) {
        let (_, n, d, dv) = self.dims;
        let bk = self.bk;
        let dvp = dv.next_multiple_of(NR);
        let k0 = j * bk;
        let cols = bk.min(n - k0);
        let kpanels = cols.div_ceil(NR);
        let scale = match self.logits {
            Logits::Scaled(s) => s,
            _ => Scale::None,
        };
        let (r0, nr) = (rs.start, rs.len());
        let kp = &sc.kpack[j * bk * d..][..kpanels * NR * d];
        // Scores: s = q · k (nr × cols, row stride BK), scaled when the prologue is
        // one multiply or divide by a constant.
        // SAFETY: `qa` has rows `rs` of `d` at stride `lda` (the query matrix, checked in
        // `run`, or `sc.q`, unchanged since `tile` filled it), `kp` is `kpanels` panels of `d × NR`,
        // `sc.s` has `ROW_BLOCK ≥ nr` rows of `BK ≥ kpanels · NR`.
        unsafe {
            tile_gemm::product(Product {
                rows: nr,
                k: d,
                a: qa.add(r0 * lda),
                lda,
                b: kp.as_ptr(),
                panels: kpanels,
                c: sc.s.as_mut_ptr(),
                ldc: BK,
                accumulate: false,
                scale,
            })
        };
        for r in rs {
            // Row `r` of the tile is row `i` of the block's scores.
            let i = r - r0;
            if self.a.score_dtype != DType::F32 {
                math::round_block(self.a.score_dtype, &mut sc.s[i * BK..i * BK + cols]);
            }
            // The logits: the scores themselves, or a prologue's row of registers
            // (read there, not copied back).
            let logits = match self.logits {
                Logits::Prologue => self.prologue(idx, q0 + r, k0, cols, i, sc),
                _ => None,
            };
            let lrow = match logits {
                Some(l) => l * BK,
                None => usize::MAX,
            };
            let tmax = if lrow == usize::MAX {
                math::block_extremum(&sc.s[i * BK..i * BK + cols], true)
            } else {
                math::block_extremum(&sc.regs[lrow..lrow + cols], true)
            };
            // Online softmax: the row's new max (NaN if a logit is), the old terms
            // rescaled.
            let old = sc.max[r];
            let mnew = math::maximum(old, tmax);
            // A row all of whose logits so far are -inf keeps p = 0 (exp(-inf - 0)).
            let mref = if mnew == f32::NEG_INFINITY { 0.0 } else { mnew };
            let alpha = math::exp(old - mref);
            let srow = &mut sc.s[i * BK..i * BK + cols];
            let tsum = if lrow == usize::MAX {
                exp_sum_in_place(srow, mref)
            } else {
                exp_sum(&sc.regs[lrow..lrow + cols], mref, srow)
            };
            sc.sum[r] = sc.sum[r] * alpha + tsum;
            sc.max[r] = mnew;
            if alpha != 1.0 {
                for x in &mut sc.acc[r * dvp..(r + 1) * dvp] {
                    *x *= alpha;
                }
            }
        }
        let vp = &sc.vpack[j * bk * dvp..][..cols * dvp];
        // acc += p · v (nr × dvp).
        // SAFETY: `sc.s` holds `nr` rows of `cols` at stride BK, `vp` is `dvp / NR`
        // panels of `cols × NR`, `sc.acc` has rows `rs` of `dvp`.
        unsafe {
            tile_gemm::product(Product {
                rows: nr,
                k: cols,
                a: sc.s.as_ptr(),
                lda: BK,
                b: vp.as_ptr(),
                panels: dvp / NR,
                c: sc.acc.as_mut_ptr().add(r0 * dvp),
                ldc: dvp,
                accumulate: true,
                scale: Scale::None,
            })
        };
    }

    /// Packs key tile `j` of batch matrix `idx` into `sc.kpack` (panels of `NR` keys,
    /// `kp[p][t][jj] = k(t, k0 + p·NR + jj)`, zeros past the last key) and its values into
    /// `sc.vpack` (panels of `NR` columns, `vp[p][c][jj] = v(k0 + c, p·NR + jj)`, zeros past
    /// `dv`), widened to f32.
    fn pack(&self, idx: &[usize], j: usize, sc: &mut Scratch) {
        let (_, n, d, dv) = self.dims;
        let (nb, bk) = (self.nb, self.bk);
        let dvp = dv.next_multiple_of(NR);
        let k0 = j * bk;
        let cols = bk.min(n - k0);
        let (kb, vb) = (self.k.batch_offset(idx), self.v.batch_offset(idx));
        let kpanels = cols.div_ceil(NR);
        let kp = &mut sc.kpack[j * bk * d..][..kpanels * NR * d];
        let k_rows_unit = self.k.direct && self.k.op.strides[nb] == 1;
        for (p, panel) in kp.chunks_exact_mut(d * NR).enumerate() {
            for jj in 0..NR {
                let key = p * NR + jj;
                if key >= cols {
                    for t in 0..d {
                        panel[t * NR + jj] = 0.0;
                    }
                } else if k_rows_unit {
                    let src = self.k.ptr(kb, nb, 0, k0 + key);
                    for t in 0..d {
                        // SAFETY: (t, k0 + key) is inside the matrix checked in `run`.
                        panel[t * NR + jj] = unsafe { src.add(t).read() };
                    }
                } else {
                    for t in 0..d {
                        // SAFETY: as above.
                        panel[t * NR + jj] = unsafe { self.k.at(kb, nb, t, k0 + key) };
                    }
                }
            }
        }
        let vp = &mut sc.vpack[j * bk * dvp..][..cols * dvp];
        let v_cols_unit = self.v.direct && self.v.op.strides[nb + 1] == 1;
        for (p, panel) in vp.chunks_exact_mut(cols * NR).enumerate() {
            let c0 = p * NR;
            let width = NR.min(dv - c0);
            for (c, dst) in panel.chunks_exact_mut(NR).enumerate() {
                if v_cols_unit && width == NR {
                    // SAFETY: (k0 + c, c0 .. c0 + NR) is inside the matrix.
                    let src = unsafe {
                        self.v
                            .ptr(vb, nb, k0 + c, c0)
                            .cast::<[f32; NR]>()
                            .read_unaligned()
                    };
                    dst.copy_from_slice(&src);
                } else if v_cols_unit {
                    // SAFETY: (k0 + c, c0 .. c0 + width) is inside the matrix.
                    let src = unsafe {
                        std::slice::from_raw_parts(self.v.ptr(vb, nb, k0 + c, c0), width)
                    };
                    dst[..width].copy_from_slice(src);
                } else {
                    for (jj, x) in dst[..width].iter_mut().enumerate() {
                        // SAFETY: as above.
                        *x = unsafe { self.v.at(vb, nb, k0 + c, c0 + jj) };
                    }
                }
                dst[width..].fill(0.0);
            }
        }
    }

    /// The epilogue at output element (batch `idx`, query `qi`, column `c`) of the value
    /// `value` (`p @ v`, before its rounding): each inst one lane, with `typed`'s meaning.
    fn epilogue(
        &self,
        e: &Epilogue,
        idx: &[usize],
        qi: usize,
        c: usize,
        value: f32,
        lanes: &mut Vec<Lane>,
    ) -> Lane {
        let nb = self.nb;
        let at = |offset: i64, strides: &[i64]| {
            offset
                + idx
                    .iter()
                    .zip(strides)
                    .map(|(&z, &s)| z as i64 * s)
                    .sum::<i64>()
                + qi as i64 * strides[nb]
                + c as i64 * strides[nb + 1]
        };
        lanes.clear();
        for inst in &e.body {
            let v = match inst.op {
                InstOp::Load(RESULT) => Lane::F(math::round_to(inst.dtype, value)),
                InstOp::Load(l) => {
                    let load = &e.loads[l - 1];
                    // SAFETY: inside the load's checked domain (`run`).
                    unsafe { typed::read(self.eloads[l - 1], at(load.offset, &load.strides)) }
                }
                InstOp::Index {
                    offset,
                    ref strides,
                } => Lane::I(at(offset, strides)),
                ref op => lane_value(op, inst.dtype, |x| lanes[x], |x| e.body[x].dtype),
            };
            lanes.push(v);
        }
        lanes[e.result]
    }

    /// Runs the prologue over one row's tile of scores (`sc.s`, row `r`): each inst over
    /// the whole row of `cols` keys at once, a value that is the same for every key (a
    /// constant, a row-constant load, maths on those) as one number. Returns where the
    /// logits are: `Some(i)`, row `i` of `sc.regs` (inst `i`'s values), or `None`, the
    /// scores' row itself (overwritten when the logits are one number).
    fn prologue(
        &self,
        idx: &[usize],
        qi: usize,
        k0: usize,
        cols: usize,
        r: usize,
        sc: &mut Scratch,
    ) -> Option<usize> {
        let a = self.a;
        let nb = self.nb;
        sc.kinds.clear();
        for (i, inst) in a.body.iter().enumerate() {
            if self.typed_insts[i] {
                let kind = self.typed(inst, i, idx, qi, k0, cols, r, sc);
                sc.kinds.push(kind);
                continue;
            }
            let (done, rest) = sc.regs.split_at_mut(i * BK);
            let dst = &mut rest[..cols];
            let score = &sc.s[r * BK..r * BK + cols];
            let kinds = &sc.kinds;
            let operand = |x: usize| match kinds[x] {
                Reg::Score => Operand::Block(score),
                Reg::Scalar(v) => Operand::Scalar(v),
                Reg::Row => Operand::Block(&done[x * BK..x * BK + cols]),
                // Integral operands take the `typed` path (above).
                Reg::IScalar(_) | Reg::IRow | Reg::IAffine(..) | Reg::IRange(..) => {
                    Operand::Scalar(f32::NAN)
                }
            };
            let kind = match inst.op {
                InstOp::Load(SCORE) => Reg::Score,
                InstOp::Load(l) => {
                    let load = &a.loads[l - 1];
                    let mem = self.loads[l - 1];
                    let base = load.offset
                        + idx
                            .iter()
                            .zip(&load.strides)
                            .map(|(&z, &s)| z as i64 * s)
                            .sum::<i64>()
                        + qi as i64 * load.strides[nb];
                    let step = load.strides[nb + 1];
                    if step == 0 {
                        // SAFETY: inside the load's checked domain.
                        Reg::Scalar(unsafe { mem.read(base) })
                    } else {
                        for (c, x) in dst.iter_mut().enumerate() {
                            // SAFETY: inside the load's checked domain.
                            *x = unsafe { mem.read(base + (k0 + c) as i64 * step) };
                        }
                        Reg::Row
                    }
                }
                InstOp::Const(v) => Reg::Scalar(math::round_to(inst.dtype, v as f32)),
                InstOp::Unary(u, x) => match operand(x) {
                    Operand::Scalar(v) => Reg::Scalar(math::unary(u, v)),
                    Operand::Block(src) => {
                        math::unary_block(u, src, dst);
                        Reg::Row
                    }
                },
                InstOp::Binary(b, x, y) => match (operand(x), operand(y)) {
                    (Operand::Scalar(p), Operand::Scalar(q)) => Reg::Scalar(math::binary(b, p, q)),
                    (p, q) => {
                        math::binary_block(b, p, q, dst);
                        Reg::Row
                    }
                },
                // A cast to bool is `x != 0`: 1 or 0.
                InstOp::Cast(x) if inst.dtype == DType::Bool => match operand(x) {
                    Operand::Scalar(v) => Reg::Scalar(f32::from(v != 0.0)),
                    Operand::Block(src) => {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = f32::from(v != 0.0);
                        }
                        Reg::Row
                    }
                },
                InstOp::Cast(x) => match operand(x) {
                    Operand::Scalar(v) => Reg::Scalar(math::round_to(inst.dtype, v)),
                    Operand::Block(src) => {
                        dst.copy_from_slice(src);
                        math::round_block(inst.dtype, dst);
                        Reg::Row
                    }
                },
                InstOp::Where(c, x, y) => {
                    let at = |o: Operand<'_>, j: usize| match o {
                        Operand::Scalar(v) => v,
                        Operand::Block(b) => b[j],
                    };
                    match (operand(c), operand(x), operand(y)) {
                        (Operand::Scalar(c), x, y) => {
                            let pick = if c != 0.0 { x } else { y };
                            match pick {
                                Operand::Scalar(v) => Reg::Scalar(v),
                                Operand::Block(src) => {
                                    dst.copy_from_slice(src);
                                    Reg::Row
                                }
                            }
                        }
                        (c, x, y) => {
                            for (j, d) in dst.iter_mut().enumerate() {
                                *d = if at(c, j) != 0.0 { at(x, j) } else { at(y, j) };
                            }
                            Reg::Row
                        }
                    }
                }
                // Never in a prologue (refused in `run`); an index is integral (`typed`).
                InstOp::Reduce(..)
                | InstOp::Index { .. }
                | InstOp::Gather { .. }
                | InstOp::Scan(_) => Reg::Scalar(f32::NAN),
            };
            sc.kinds.push(kind);
        }
        let l = a.logits;
        match sc.kinds[l] {
            Reg::Score => None,
            Reg::Row => Some(l),
            Reg::Scalar(v) => {
                sc.s[r * BK..r * BK + cols].fill(v);
                None
            }
            // The logits are a float inst (checked in `run`).
            Reg::IScalar(_) | Reg::IRow | Reg::IAffine(..) | Reg::IRange(..) => {
                sc.s[r * BK..r * BK + cols].fill(f32::NAN);
                None
            }
        }
    }

    /// Prologue inst `i` when it or an operand is integral (`i32`, `i64`, `bool`): one
    /// element at a time, each value a `typed::Lane` (exact integers, f32 floats rounded to
    /// their dtype), with `typed`'s meaning; once for the row when every operand is one
    /// number. An `arange` read through its views is its index map at (batch `idx`, query
    /// `qi`, key `k0 + c`): a causal mask is compared from the positions.
    #[allow(clippy::too_many_arguments)]
    fn typed(
        &self,
        inst: &Inst,
        i: usize,
        idx: &[usize],
        qi: usize,
        k0: usize,
        cols: usize,
        r: usize,
        sc: &mut Scratch,
    ) -> Reg {
        let a = self.a;
        let nb = self.nb;
        let dt = inst.dtype;
        // The element offset (or index value) at key 0 of the tile, and the step per key.
        let row_base = |offset: i64, strides: &[i64]| {
            let base = offset
                + idx
                    .iter()
                    .zip(strides)
                    .map(|(&z, &s)| z as i64 * s)
                    .sum::<i64>()
                + qi as i64 * strides[nb];
            (base + k0 as i64 * strides[nb + 1], strides[nb + 1])
        };
        match inst.op {
            InstOp::Index {
                offset,
                ref strides,
            } => {
                let (base, step) = row_base(offset, strides);
                if step == 0 {
                    return Reg::IScalar(base);
                }
                // Written out only where a user needs the values (`materialize`).
                return Reg::IAffine(base, step);
            }
            InstOp::Load(l) if l != SCORE => {
                let load = &a.loads[l - 1];
                let mem = self.loads[l - 1];
                let (base, step) = row_base(load.offset, &load.strides);
                // SAFETY: inside the load's checked domain (`run`).
                let read = |c: usize| unsafe { read_lane(mem, base + c as i64 * step) };
                return self.put(dt, i, cols, step != 0, read, sc);
            }
            _ => {}
        }
        if let Some(kind) = Self::ranges(inst, cols, sc) {
            return kind;
        }
        if let Some(kind) = Self::range_where(inst, i, cols, r, sc) {
            return kind;
        }
        for o in inst.op.operands() {
            Self::materialize(o, cols, sc);
        }
        if let Some(kind) = Self::fast(inst, i, cols, r, sc) {
            return kind;
        }
        let Scratch {
            kinds,
            regs,
            iregs,
            s,
            lanes,
            ..
        } = sc;
        let score = &s[r * BK..r * BK + cols];
        let lane = |x: usize, c: usize| match kinds[x] {
            Reg::Score => Lane::F(score[c]),
            Reg::Scalar(v) => Lane::F(v),
            Reg::Row => Lane::F(regs[x * BK + c]),
            Reg::IScalar(v) => Lane::I(v),
            Reg::IRow => Lane::I(iregs[x * BK + c]),
            Reg::IAffine(..) | Reg::IRange(..) => unreachable!("operands written out above"),
        };
        let odt = |x: usize| a.body[x].dtype;
        let value = |c: usize| lane_value(&inst.op, dt, |x| lane(x, c), odt);
        let per_key = inst
            .op
            .operands()
            .iter()
            .any(|&o| matches!(kinds[o], Reg::Score | Reg::Row | Reg::IRow));
        // Computed before inst `i`'s own row is written (its operands come earlier).
        lanes.clear();
        lanes.extend((0..if per_key { cols } else { 1 }).map(value));
        let lanes = std::mem::take(lanes);
        let kind = self.put(dt, i, cols, per_key, |c| lanes[c], sc);
        sc.lanes = lanes;
        kind
    }

    /// A comparison of index maps as the range of keys where it holds, without a value a
    /// key: both sides are `a + c·s` in the key `c` (`IAffine`, or `IScalar` with `s = 0`),
    /// so their difference is linear in `c` and `<`, `<=`, `>`, `>=` hold on a prefix or a
    /// suffix of the row and `==` on at most one key (a causal mask's `i >= j`). `None`
    /// for anything else (`!=`, other operands), which then takes the element path.
    fn ranges(inst: &Inst, cols: usize, sc: &Scratch) -> Option<Reg> {
        let InstOp::Binary(BinaryOp::Cmp(op), x, y) = inst.op else {
            return None;
        };
        let affine = |k: Reg| match k {
            Reg::IScalar(v) => Some((v as i128, 0i128)),
            Reg::IAffine(b, s) => Some((b as i128, s as i128)),
            _ => None,
        };
        let ((a, s), (b, t)) = (affine(sc.kinds[x])?, affine(sc.kinds[y])?);
        let (lo, hi) = cmp_range(op, a - b, s - t, cols)?;
        Some(Reg::IRange(lo, hi))
    }

    /// A float `where` whose condition is a range of keys (`ranges`): the keys `lo .. hi`
    /// take `x`, the others `y`, as copies and fills of the operands' rows. `None` for
    /// anything else.
    fn range_where(inst: &Inst, i: usize, cols: usize, r: usize, sc: &mut Scratch) -> Option<Reg> {
        let InstOp::Where(k, x, y) = inst.op else {
            return None;
        };
        let Reg::IRange(lo, hi) = sc.kinds[k] else {
            return None;
        };
        let float = |o: usize| matches!(sc.kinds[o], Reg::Score | Reg::Scalar(_) | Reg::Row);
        if inst.dtype.is_integral() || !float(x) || !float(y) {
            return None;
        }
        let Scratch { kinds, regs, s, .. } = sc;
        let (done, rest) = regs.split_at_mut(i * BK);
        let dst = &mut rest[..cols];
        let score = &s[r * BK..r * BK + cols];
        let mut fill = |o: usize, part: std::ops::Range<usize>| match kinds[o] {
            Reg::Score => dst[part.clone()].copy_from_slice(&score[part]),
            Reg::Scalar(v) => dst[part].fill(v),
            Reg::Row => dst[part.clone()].copy_from_slice(&done[o * BK..o * BK + cols][part]),
            _ => unreachable!("checked above"),
        };
        fill(y, 0..lo);
        fill(x, lo..hi);
        fill(y, hi..cols);
        Some(Reg::Row)
    }

    /// Writes out operand `o`'s values where they are held as a formula (`IAffine`,
    /// `IRange`), making it an `IRow`.
    fn materialize(o: usize, cols: usize, sc: &mut Scratch) {
        let row = &mut sc.iregs[o * BK..o * BK + cols];
        match sc.kinds[o] {
            Reg::IAffine(base, step) => {
                for (c, x) in row.iter_mut().enumerate() {
                    *x = base + c as i64 * step;
                }
            }
            Reg::IRange(lo, hi) => {
                row.fill(0);
                row[lo..hi].fill(1);
            }
            _ => return,
        }
        sc.kinds[o] = Reg::IRow;
    }

    /// The masks' common shapes without `Lane`s (the same values as `typed`'s general
    /// path): an integer comparison of two rows or a row and a number (`i >= j`), and a
    /// `where` of an integral condition row between float values (`where(causal, s, -inf)`).
    fn fast(inst: &Inst, i: usize, cols: usize, r: usize, sc: &mut Scratch) -> Option<Reg> {
        let Scratch {
            kinds,
            regs,
            iregs,
            s,
            ..
        } = sc;
        let (done, rest) = iregs.split_at_mut(i * BK);
        let idst = &mut rest[..cols];
        match inst.op {
            InstOp::Binary(BinaryOp::Cmp(c), x, y) => {
                let int = |k: Reg, o: usize| match k {
                    Reg::IScalar(v) => Some(Val::One(v)),
                    Reg::IRow => Some(Val::Row(&done[o * BK..o * BK + cols])),
                    _ => None,
                };
                let (p, q) = (int(kinds[x], x)?, int(kinds[y], y)?);
                if let (Val::One(_), Val::One(_)) = (p, q) {
                    return None;
                }
                // One loop a comparison and operand shape, so that each compiles to
                // straight vector code (the per-element matches cost more than the rest
                // of a causal mask's row).
                macro_rules! each {
                    ($f:expr) => {{
                        let f = $f;
                        match (p, q) {
                            (Val::Row(x), Val::One(y)) => {
                                for (d, &x) in idst.iter_mut().zip(x) {
                                    *d = f(x, y) as i64;
                                }
                            }
                            (Val::One(x), Val::Row(y)) => {
                                for (d, &y) in idst.iter_mut().zip(y) {
                                    *d = f(x, y) as i64;
                                }
                            }
                            (Val::Row(x), Val::Row(y)) => {
                                for ((d, &x), &y) in idst.iter_mut().zip(x).zip(y) {
                                    *d = f(x, y) as i64;
                                }
                            }
                            (Val::One(_), Val::One(_)) => unreachable!("returned above"),
                        }
                    }};
                }
                match c {
                    CmpOp::Lt => each!(|x: i64, y: i64| x < y),
                    CmpOp::Le => each!(|x: i64, y: i64| x <= y),
                    CmpOp::Gt => each!(|x: i64, y: i64| x > y),
                    CmpOp::Ge => each!(|x: i64, y: i64| x >= y),
                    CmpOp::Eq => each!(|x: i64, y: i64| x == y),
                    CmpOp::Ne => each!(|x: i64, y: i64| x != y),
                }
                Some(Reg::IRow)
            }
            InstOp::Where(k, x, y) if !inst.dtype.is_integral() => {
                let Reg::IRow = kinds[k] else { return None };
                let cond = &done[k * BK..k * BK + cols];
                let (done, rest) = regs.split_at_mut(i * BK);
                let dst = &mut rest[..cols];
                let score = &s[r * BK..r * BK + cols];
                let float = |o: usize| match kinds[o] {
                    Reg::Score => Some(Val::Row(score)),
                    Reg::Scalar(v) => Some(Val::One(v)),
                    Reg::Row => Some(Val::Row(&done[o * BK..o * BK + cols])),
                    _ => None,
                };
                let (p, q) = (float(x)?, float(y)?);
                // One loop an operand shape (as for the comparison above).
                match (p, q) {
                    (Val::Row(x), Val::One(y)) => {
                        for ((d, &k), &x) in dst.iter_mut().zip(cond).zip(x) {
                            *d = if k != 0 { x } else { y };
                        }
                    }
                    (Val::One(x), Val::Row(y)) => {
                        for ((d, &k), &y) in dst.iter_mut().zip(cond).zip(y) {
                            *d = if k != 0 { x } else { y };
                        }
                    }
                    (Val::Row(x), Val::Row(y)) => {
                        for (((d, &k), &x), &y) in dst.iter_mut().zip(cond).zip(x).zip(y) {
                            *d = if k != 0 { x } else { y };
                        }
                    }
                    (Val::One(x), Val::One(y)) => {
                        for (d, &k) in dst.iter_mut().zip(cond) {
                            *d = if k != 0 { x } else { y };
                        }
                    }
                }
                Some(Reg::Row)
            }
            _ => None,
        }
    }

    /// Stores inst `i`'s values (`value(c)` for key `c`, or one number when not `per_key`)
    /// in the register of its dtype's kind.
    fn put(
        &self,
        dt: DType,
        i: usize,
        cols: usize,
        per_key: bool,
        value: impl Fn(usize) -> Lane,
        sc: &mut Scratch,
    ) -> Reg {
        if !per_key {
            return match value(0) {
                Lane::I(v) if dt.is_integral() => Reg::IScalar(v),
                v if dt.is_integral() => Reg::IScalar(v.i()),
                v => Reg::Scalar(v.f()),
            };
        }
        if dt.is_integral() {
            for (c, x) in sc.iregs[i * BK..i * BK + cols].iter_mut().enumerate() {
                *x = value(c).i();
            }
            Reg::IRow
        } else {
            for (c, x) in sc.regs[i * BK..i * BK + cols].iter_mut().enumerate() {
                *x = value(c).f();
            }
            Reg::Row
        }
    }
}

/// Inst `op` of dtype `dt` on its operands' lanes (`lane(x)`; `odt(x)` their dtypes), with
/// `typed`'s meaning: a constant, unary, binary, cast or `where` (loads and indices are the
/// caller's; anything else, refused in `run`, is NaN).
fn lane_value(
    op: &InstOp,
    dt: DType,
    lane: impl Fn(usize) -> Lane,
    odt: impl Fn(usize) -> DType,
) -> Lane {
    match *op {
        InstOp::Const(v) => typed::constant(dt, v),
        InstOp::Unary(u, x) => match lane(x) {
            Lane::F(v) => Lane::F(math::round_to(dt, math::unary(u, v))),
            Lane::I(v) => Lane::I(eval::unary_int(u, dt, v)),
        },
        InstOp::Binary(b, x, y) => match (lane(x), lane(y)) {
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
        InstOp::Cast(x) => typed::cast(dt, lane(x)),
        InstOp::Where(k, x, y) => {
            if lane(k).i() != 0 {
                lane(x)
            } else {
                lane(y)
            }
        }
        _ => Lane::F(f32::NAN),
    }
}

/// `dst[i] = exp(src[i] - m)` for every `i < src.len()`, and their sum.
pub(super) fn exp_sum(src: &[f32], m: f32, dst: &mut [f32]) -> f32 {
    assert!(dst.len() >= src.len());
    // SAFETY: `dst` covers `src.len()` elements and does not overlap `src` (borrows).
    unsafe { exp_sum_raw(src.as_ptr(), dst.as_mut_ptr(), src.len(), m) }
}

/// `x[i] = exp(x[i] - m)`, and their sum.
pub(super) fn exp_sum_in_place(x: &mut [f32], m: f32) -> f32 {
    let p = x.as_mut_ptr();
    // SAFETY: `x` covers its elements; each is read before it is written.
    unsafe { exp_sum_raw(p, p, x.len(), m) }
}

/// `exp_sum` through pointers, in one pass: `math::exp` (built for AVX2 and FMA where the
/// CPU has them, the same bits either way), element `i` added into lane `i % 8` of eight
/// running sums, which are then added pairwise. The order is fixed, so the sum depends only
/// on the values.
///
/// # Safety
/// `src` and `dst` cover `n` elements; they are the same or do not overlap.
unsafe fn exp_sum_raw(src: *const f32, dst: *mut f32, n: usize, m: f32) -> f32 {
    // SAFETY: forwarded.
    unsafe { exp_sum_raw_in(math::Tier::best(), src, dst, n, m) }
}

/// `exp_sum_raw` built for `tier` (or the hardware's widest, when that is narrower): every
/// tier gives the same bits.
///
/// # Safety
/// As `exp_sum_raw`.
unsafe fn exp_sum_raw_in(
    tier: math::Tier,
    src: *const f32,
    dst: *mut f32,
    n: usize,
    m: f32,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match tier.min(math::Tier::hardware()) {
        // SAFETY: the CPU has AVX-512 F/VL/DQ/BW, AVX2 and FMA; the rest is forwarded.
        math::Tier::Avx512 => return unsafe { exp_sum_avx512(src, dst, n, m) },
        // SAFETY: the CPU has AVX2 and FMA; the rest is forwarded.
        math::Tier::Avx2 => return unsafe { exp_sum_avx2(src, dst, n, m) },
        math::Tier::Base => {}
    }
    // SAFETY: forwarded.
    unsafe { exp_sum_impl(src, dst, n, m) }
}

/// `exp_sum_avx2` sixteen lanes at a time: the same operations on a 512-bit vector (half
/// the instructions a value), each sixteen values then added into the eight running sums
/// as two halves, lower first, so that every sum sees the values of `exp_sum_avx2`'s in
/// its order (the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn exp_sum_avx512(src: *const f32, dst: *mut f32, n: usize, m: f32) -> f32 {
    use math::exp_parts::*;
    use std::arch::x86_64::*;
    let mut lanes = [0f32; 8];
    let mut i = 0;
    // SAFETY (whole body): every access is inside `i .. i + 16 <= n` (or `i + 8 <= n` for
    // the masked step), inside both ranges; the values are read before any is written.
    unsafe {
        let set = _mm512_set1_ps;
        let (mv, lo, hi) = (set(m), set(LO), set(HI));
        let (magic, log2e) = (set(MAGIC), set(std::f32::consts::LOG2_E));
        let (ln2_hi, ln2_lo) = (set(LN2_HI), set(LN2_LO));
        let c = POLY.map(|x| set(x));
        let one = set(1.0);
        let magic_bits = _mm512_set1_epi32(MAGIC.to_bits() as i32);
        let bias = _mm512_set1_epi32(127);
        let zero_below = set(ZERO_BELOW);
        // `math::exp(x - m)` of sixteen lanes (`exp_sum_avx2`'s steps, in its order).
        let exp16 = |v: __m512| {
            let x = _mm512_sub_ps(v, mv);
            let xc = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
            let t = _mm512_fmadd_ps(xc, log2e, magic);
            let nf = _mm512_sub_ps(t, magic);
            let r = _mm512_fmadd_ps(nf, ln2_hi, xc);
            let r = _mm512_fmadd_ps(nf, ln2_lo, r);
            let mut p = _mm512_fmadd_ps(c[0], r, c[1]);
            for &ck in &c[2..] {
                p = _mm512_fmadd_ps(p, r, ck);
            }
            let er = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), one);
            let ni = _mm512_sub_epi32(_mm512_castps_si512(t), magic_bits);
            let half = _mm512_srai_epi32::<1>(ni);
            let s1 = _mm512_slli_epi32::<23>(_mm512_add_epi32(half, bias));
            let s2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_sub_epi32(ni, half), bias));
            // Lanes below `ZERO_BELOW` (not NaN) multiplied by +0, as in `exp_sum_avx2`.
            let live = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, zero_below);
            let s2 = _mm512_maskz_mov_ps(live, _mm512_castsi512_ps(s2));
            _mm512_mul_ps(_mm512_mul_ps(er, _mm512_castsi512_ps(s1)), s2)
        };
        let mut sum = _mm256_setzero_ps();
        while i + 16 <= n {
            let e = exp16(_mm512_loadu_ps(src.add(i)));
            _mm512_storeu_ps(dst.add(i), e);
            sum = _mm256_add_ps(sum, _mm512_castps512_ps256(e));
            sum = _mm256_add_ps(sum, _mm512_extractf32x8_ps::<1>(e));
            i += 16;
        }
        if i + 8 <= n {
            let e = exp16(_mm512_maskz_loadu_ps(0x00ff, src.add(i)));
            let e = _mm512_castps512_ps256(e);
            _mm256_storeu_ps(dst.add(i), e);
            sum = _mm256_add_ps(sum, e);
            i += 8;
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    }
    // SAFETY: the rest, `i .. n`, as `exp_sum_impl` (forwarded).
    unsafe { exp_sum_tail(src, dst, n, m, i, lanes) }
}

/// Every `x < ZERO_BELOW` has `math::exp(x) == +0.0` (below `-150 · ln 2 ≈ -103.97` the
/// result is under half the least subnormal; `tests::exp_is_zero_below_zero_below` checks
/// every f32 from it down to the clamp).
const ZERO_BELOW: f32 = -104.0;

/// `exp_sum_impl` eight lanes at a time: `math::exp`'s operations, in its order, as vector
/// instructions (the clamp as `max`/`min` that keep NaN), so each lane's bits are
/// `math::exp`'s; lanes below `ZERO_BELOW` get their +0 from a multiply by +0 (no
/// underflow).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sum_avx2(src: *const f32, dst: *mut f32, n: usize, m: f32) -> f32 {
    use math::exp_parts::*;
    use std::arch::x86_64::*;
    let mut lanes = [0f32; 8];
    let mut i = 0;
    // SAFETY (whole body): `i + 8 <= n`, inside both ranges; eight values are read before
    // any of them is written.
    unsafe {
        let set = _mm256_set1_ps;
        let (mv, lo, hi) = (set(m), set(LO), set(HI));
        let (magic, log2e) = (set(MAGIC), set(std::f32::consts::LOG2_E));
        let (ln2_hi, ln2_lo) = (set(LN2_HI), set(LN2_LO));
        let c = POLY.map(|x| set(x));
        let one = set(1.0);
        let magic_bits = _mm256_set1_epi32(MAGIC.to_bits() as i32);
        let bias = _mm256_set1_epi32(127);
        let zero_below = set(ZERO_BELOW);
        let mut sum = _mm256_setzero_ps();
        while i + 8 <= n {
            let x = _mm256_sub_ps(_mm256_loadu_ps(src.add(i)), mv);
            // `clamp`: NaN stays NaN (`max_ps`/`min_ps` return their second operand then).
            let xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
            let t = _mm256_fmadd_ps(xc, log2e, magic);
            let nf = _mm256_sub_ps(t, magic);
            let r = _mm256_fmadd_ps(nf, ln2_hi, xc);
            let r = _mm256_fmadd_ps(nf, ln2_lo, r);
            let mut p = _mm256_fmadd_ps(c[0], r, c[1]);
            for &ck in &c[2..] {
                p = _mm256_fmadd_ps(p, r, ck);
            }
            let er = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), one);
            let ni = _mm256_sub_epi32(_mm256_castps_si256(t), magic_bits);
            let half = _mm256_srai_epi32::<1>(ni);
            let s1 = _mm256_slli_epi32::<23>(_mm256_add_epi32(half, bias));
            let s2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias));
            // Lanes below `ZERO_BELOW` are +0 either way; multiplying them by +0 instead of
            // by a tiny power of two makes the same +0 without the CPU's slow underflow
            // path (3× the cost of a vector on Zen 3: peaked rows are mostly such lanes).
            // NaN compares unordered and keeps its factor.
            let live = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, zero_below);
            let s2 = _mm256_and_ps(_mm256_castsi256_ps(s2), live);
            let e = _mm256_mul_ps(_mm256_mul_ps(er, _mm256_castsi256_ps(s1)), s2);
            _mm256_storeu_ps(dst.add(i), e);
            sum = _mm256_add_ps(sum, e);
            i += 8;
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    }
    // SAFETY: the rest, `i .. n`, as `exp_sum_impl` (forwarded).
    unsafe { exp_sum_tail(src, dst, n, m, i, lanes) }
}

/// The scalar form (see `exp_sum_raw`).
unsafe fn exp_sum_impl(src: *const f32, dst: *mut f32, n: usize, m: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut i = 0;
    while i + 8 <= n {
        for (l, lane) in lanes.iter_mut().enumerate() {
            // SAFETY: `i + l < n`, inside both ranges.
            unsafe {
                let p = math::exp(*src.add(i + l) - m);
                *dst.add(i + l) = p;
                *lane += p;
            }
        }
        i += 8;
    }
    // SAFETY: forwarded.
    unsafe { exp_sum_tail(src, dst, n, m, i, lanes) }
}

/// Elements `i .. n` (fewer than 8) into their lanes, then the lanes added pairwise.
#[inline(always)]
unsafe fn exp_sum_tail(
    src: *const f32,
    dst: *mut f32,
    n: usize,
    m: f32,
    i: usize,
    mut lanes: [f32; 8],
) -> f32 {
    for (l, lane) in lanes.iter_mut().enumerate().take(n - i) {
        // SAFETY: `i + l < n`, inside both ranges.
        unsafe {
            let p = math::exp(*src.add(i + l) - m);
            *dst.add(i + l) = p;
            *lane += p;
        }
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// A prologue operand in `Ctx::fast`: a row of values, or one for the whole row.
#[derive(Clone, Copy)]
enum Val<'a, T> {
    Row(&'a [T]),
    One(T),
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

/// Where a prologue value is: the scores' row, one number for the whole row, or its own
/// row of `Scratch::regs`; an integral one (`i32`, `i64`, `bool`), one exact number or its
/// own row of `Scratch::iregs`.
#[derive(Clone, Copy)]
enum Reg {
    Score,
    Scalar(f32),
    Row,
    IScalar(i64),
    IRow,
    /// `base + c · step` at key `c` (an index map along the keys), not written out.
    IAffine(i64, i64),
    /// A `bool` that is 1 at the keys `lo .. hi` and 0 elsewhere (`Ctx::ranges`).
    IRange(usize, usize),
}

/// The keys `c` in `0 .. cols` where `e + c·g op 0` holds, as one range `lo .. hi` (empty
/// as `0 .. 0`); `None` for `!=`, which can hold on two ranges.
fn cmp_range(op: CmpOp, e: i128, g: i128, cols: usize) -> Option<(usize, usize)> {
    let n = cols as i128;
    // ⌊p / q⌋ and ⌈p / q⌉ for q ≠ 0.
    let floor = |p: i128, q: i128| {
        let d = p / q;
        if p % q != 0 && ((p < 0) != (q < 0)) {
            d - 1
        } else {
            d
        }
    };
    let ceil = |p: i128, q: i128| -floor(-p, q);
    // `e + c·g >= k` (`at_least`) or `<= k`, over the integers.
    let bound = |k: i128, at_least: bool| -> (i128, i128) {
        if g == 0 {
            let holds = if at_least { e >= k } else { e <= k };
            return if holds { (0, n) } else { (0, 0) };
        }
        // c·g >= k - e (or <=): dividing by a negative g turns the inequality round.
        if at_least == (g > 0) {
            (ceil(k - e, g), n)
        } else {
            (0, floor(k - e, g) + 1)
        }
    };
    let (lo, hi) = match op {
        CmpOp::Ge => bound(0, true),
        CmpOp::Gt => bound(1, true),
        CmpOp::Le => bound(0, false),
        CmpOp::Lt => bound(-1, false),
        CmpOp::Eq if g == 0 => {
            if e == 0 {
                (0, n)
            } else {
                (0, 0)
            }
        }
        CmpOp::Eq if (-e) % g == 0 => (-e / g, -e / g + 1),
        CmpOp::Eq => (0, 0),
        CmpOp::Ne => return None,
    };
    let (lo, hi) = (lo.clamp(0, n), hi.clamp(0, n));
    Some(if lo < hi {
        (lo as usize, hi as usize)
    } else {
        (0, 0)
    })
}

#[cfg(test)]
mod tests {
    use super::{cmp_range, Logits, Scale};
    use super::{
        exp_sum, exp_sum_impl, exp_sum_in_place, exp_sum_raw_in, logits_form, rounding_chain,
    };
    use tc_compiler::ir::{eval, CmpOp, DType};
    use tc_compiler::schedule::{AttentionKernel, KernelKind};

    /// `cmp_range` is the set of keys where the comparison of the two index maps holds,
    /// key by key: every comparison, offsets and slopes of both signs (a causal mask's
    /// `i >= j` is offset `i - k0`, slope -1), rows of 0 to 9 keys; `!=` is left to the
    /// element path.
    #[test]
    fn cmp_range_is_where_the_comparison_holds() {
        let mut checked = 0;
        for op in CmpOp::ALL {
            for (a, s) in [
                (0i64, 0i64),
                (3, 0),
                (5, 1),
                (-4, 1),
                (7, -1),
                (2, 2),
                (9, -3),
            ] {
                for (b, t) in [(0i64, 0i64), (4, 0), (0, 1), (6, -1), (-3, 2), (1, 3)] {
                    for cols in 0..10usize {
                        let got = cmp_range(op, (a - b) as i128, (s - t) as i128, cols);
                        let holds: Vec<bool> = (0..cols as i64)
                            .map(|c| eval::compare_int(op, a + c * s, b + c * t))
                            .collect();
                        let Some((lo, hi)) = got else {
                            assert_eq!(op, CmpOp::Ne);
                            continue;
                        };
                        let want: Vec<bool> = (0..cols).map(|c| (lo..hi).contains(&c)).collect();
                        assert_eq!(want, holds, "{op:?} {a}+{s}c vs {b}+{t}c over {cols}");
                        assert!(lo <= hi && hi <= cols && (lo < hi || lo == 0));
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 5 * 7 * 6 * 10);
    }

    /// The plan's attention kernel for `body` (after q, k, v of `[B, H, S, Dh]` in `dt`).
    fn attention(dt: &str, body: &str) -> AttentionKernel {
        let source = format!(
            "dim B = 1\ndim H = 2\ndim S = 8\ndim Dh = 4\n\
             input q : {dt}[B, H, S, Dh]\ninput k : {dt}[B, H, S, Dh]\n\
             input v : {dt}[B, H, S, Dh]\n{body}output out\n"
        );
        let program = tc_compiler::compile(&source, &Default::default()).expect("compiles");
        program
            .plan
            .kernels
            .iter()
            .find_map(|k| match &k.kind {
                KernelKind::Attention(a) => Some(a.clone()),
                _ => None,
            })
            .expect("an attention kernel")
    }

    /// Epilogues that only round (the head-merge copy, a cast) are stored by the rounding
    /// chain; one that computes anything goes element by element.
    #[test]
    fn only_rounding_epilogues_have_a_rounding_chain() {
        let att = "softmax(q @ transpose(k) / 2, axis=-1) @ v";
        let plain = attention("f32", &format!("out = {att}\n"));
        assert!(plain.epilogue.is_none());
        assert_eq!(rounding_chain(&plain), Some(vec![]));
        let merge = format!("out = reshape(permute({att}, [0, 2, 1, 3]), [B, S, H * Dh])\n");
        let a = attention("f32", &merge);
        assert!(a.epilogue.is_some());
        let chain = rounding_chain(&a).expect("a rounding epilogue");
        assert!(chain.iter().all(|&d| d == DType::F32), "{chain:?}");
        let a = attention("f16", &merge);
        let chain = rounding_chain(&a).expect("a rounding epilogue");
        assert!(chain.contains(&DType::F16), "{chain:?}");
        let a = attention("f32", &format!("out = f16({att} * 2)\n"));
        assert!(a.epilogue.is_some());
        assert_eq!(rounding_chain(&a), None);
    }

    /// A constant scale of the scores is folded into the score product (a power-of-two
    /// divisor as the exact multiply by its reciprocal); anything else runs the prologue.
    #[test]
    fn scaled_scores_are_recognised() {
        let at = |dt: &str, s: &str| {
            logits_form(&attention(
                dt,
                &format!("out = softmax({s}, axis=-1) @ v\n"),
            ))
        };
        let qk = "q @ transpose(k)";
        assert_eq!(at("f32", qk), Logits::Scores);
        assert_eq!(
            at("f32", &format!("{qk} / sqrt(Dh)")),
            Logits::Scaled(Scale::Mul(0.5))
        );
        assert_eq!(
            at("f32", &format!("{qk} / 3")),
            Logits::Scaled(Scale::Div(3.0))
        );
        assert_eq!(
            at("f32", &format!("{qk} * 0.3")),
            Logits::Scaled(Scale::Mul(0.3))
        );
        assert_eq!(at("f32", &format!("{qk} / 2 + 1")), Logits::Prologue);
        assert_eq!(at("f16", &format!("{qk} / 2")), Logits::Prologue);
    }

    /// The vector `exp` and sum give the scalar form's bits: every lane count, NaN, ±inf,
    /// values past both ends of `exp`'s range, in place or not; the sum is within a few
    /// ulps of the f64 sum.
    #[test]
    fn exp_sum_is_the_scalar_form_bit_for_bit() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 60.0
        };
        let mut xs: Vec<f32> = (0..600).map(|_| rnd()).collect();
        xs[3] = f32::NEG_INFINITY;
        xs[17] = -1e9;
        xs[40] = 200.0;
        xs[41] = -200.0;
        xs[70] = -0.0;
        for m in [0.0f32, 29.9, -3.5, 120.0] {
            for n in (0..40).chain([255, 512, 600]) {
                let src = &xs[..n];
                let mut want = vec![0f32; n];
                // SAFETY: `src` and `want` cover `n` elements and do not overlap.
                let s0 = unsafe { exp_sum_impl(src.as_ptr(), want.as_mut_ptr(), n, m) };
                let mut got = vec![0f32; n];
                let s1 = exp_sum(src, m, &mut got);
                let mut inplace = src.to_vec();
                let s2 = exp_sum_in_place(&mut inplace, m);
                // Every tier the CPU runs, the same bits.
                for tier in super::math::Tier::available() {
                    let mut t = vec![0f32; n];
                    // SAFETY: as above.
                    let st = unsafe { exp_sum_raw_in(tier, src.as_ptr(), t.as_mut_ptr(), n, m) };
                    assert_eq!(st.to_bits(), s0.to_bits(), "{tier:?} {m} {n}");
                    for i in 0..n {
                        assert_eq!(t[i].to_bits(), want[i].to_bits(), "{tier:?} {m} {n} {i}");
                    }
                }
                for i in 0..n {
                    assert_eq!(want[i].to_bits(), got[i].to_bits(), "{m} {n} {i}");
                    assert_eq!(want[i].to_bits(), inplace[i].to_bits(), "{m} {n} {i}");
                    assert_eq!(want[i].to_bits(), super::math::exp(src[i] - m).to_bits());
                }
                assert_eq!(s0.to_bits(), s1.to_bits(), "{m} {n}");
                assert_eq!(s0.to_bits(), s2.to_bits(), "{m} {n}");
                let exact: f64 = want.iter().map(|&p| p as f64).sum();
                assert!(
                    s0 as f64 == exact || (s0 as f64 - exact).abs() <= 1e-6 * exact + 1e-30,
                    "{m} {n}: {s0} against {exact}"
                );
            }
        }
        let mut nan = xs[..9].to_vec();
        nan[8] = f32::NAN;
        assert!(exp_sum_in_place(&mut nan, 0.0).is_nan() && nan[8].is_nan());
    }

    /// `ZERO_BELOW`'s promise: `math::exp` is +0 for every f32 below it, down to the clamp
    /// and past it.
    #[test]
    fn exp_is_zero_below_zero_below() {
        let mut x = super::ZERO_BELOW;
        let mut seen = 0;
        while x >= -105.0 {
            x = f32::from_bits(x.to_bits() + 1);
            assert_eq!(super::math::exp(x).to_bits(), 0, "{x}");
            seen += 1;
        }
        assert!(seen > 60_000, "{seen}");
        for x in [-1e9, f32::MIN, f32::NEG_INFINITY] {
            assert_eq!(super::math::exp(x).to_bits(), 0, "{x}");
        }
        // The constant is tight: just above it, results are subnormal, not zero.
        assert!(super::math::exp(-103.9) > 0.0);
    }

    /// Every f32 of [-106, -86] (the subnormal results, the zeros, the boundary between
    /// them) through the vector `exp` and sum, in rows whose lanes mix them, against the
    /// scalar `math::exp` bit for bit.
    #[test]
    fn exp_sum_underflow_band_is_the_scalar_form() {
        let (lo, hi) = ((-86.0f32).to_bits(), (-106.0f32).to_bits());
        let all: Vec<f32> = (lo..=hi).map(f32::from_bits).collect();
        // Interleave the band's two ends so that vectors hold zeros and subnormals together.
        let half = all.len() / 2;
        let xs: Vec<f32> = (0..all.len())
            .map(|i| {
                if i % 3 == 0 {
                    all[i / 2]
                } else {
                    all[half + i / 2]
                }
            })
            .collect();
        let mut got = vec![0f32; 509];
        for chunk in xs.chunks(509) {
            let n = chunk.len();
            let mut want = vec![0f32; n];
            // SAFETY: `chunk` and `want` cover `n` elements and do not overlap.
            let s0 = unsafe { exp_sum_impl(chunk.as_ptr(), want.as_mut_ptr(), n, 0.0) };
            let s1 = exp_sum(chunk, 0.0, &mut got[..n]);
            for i in 0..n {
                assert_eq!(want[i].to_bits(), got[i].to_bits(), "{}", chunk[i]);
            }
            assert_eq!(s0.to_bits(), s1.to_bits());
        }
    }

    /// `exp_sum_in_place` over rows of 512 (the key tile), ns an element on this thread
    /// (`cargo test --release -p tc-runtime --lib exp_sum_cost -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn exp_sum_cost() {
        // The best of 2000 timed passes over `row`, in ns an element.
        let cost = |row: &[f32]| {
            let mut x = row.to_vec();
            let mut best = f64::MAX;
            for _ in 0..2000 {
                x.copy_from_slice(row);
                let t = std::time::Instant::now();
                std::hint::black_box(exp_sum_in_place(&mut x, 0.0));
                best = best.min(t.elapsed().as_secs_f64());
            }
            best * 1e9 / row.len() as f64
        };
        let row: Vec<f32> = (0..512).map(|i| -((i * 37 % 512) as f32) / 40.0).collect();
        println!("exp_sum: {:.3} ns an element", cost(&row));
        // A peaked row: most results underflow to zero.
        let row: Vec<f32> = (0..512).map(|i| -((i * 37 % 512) as f32) * 2.0).collect();
        println!("exp_sum, peaked: {:.3} ns an element", cost(&row));
    }
}
