//! Matrix products on the CPU. Products of float operands read through positive strides
//! (`MatMulKernel::cpu_gemm_operands`) of at least `CPU_GEMM_MIN_ROWS` rows and 16 columns
//! go to tc's own GEMM (`gemm`) where the CPU has AVX2+FMA, packing `B` into the workspace
//! the plan gives the product (`Target::matmul_workspace`, the rule the planner follows: a
//! plan for the CPU whose workspace is missing or too small is an error, never a smaller
//! buffer written past); f16/bf16 operands are widened as the GEMM packs them (`A` a block
//! at a time into the thread's buffer, `AFrom`; `B` into its packing, `gemm_of`) — bf16
//! times bf16 instead packed as bf16 pairs for `vdpbf16ps` (`gemm_bf16`: that
//! instruction's bits on every machine that takes tc's GEMM) — and a half output is rounded
//! from each finished block (`Finish::tile`), so such a product takes nothing beyond its
//! workspace and one block a thread. The rest go to the `gemm`
//! crate: f32 operands read in place through their strides, f16/bf16 (or oddly strided)
//! operands widened to a contiguous f32 copy tile by tile. Accumulation is f32; the result
//! is rounded to the output dtype. A product with a residual (`MatMulKernel::accumulate`)
//! finds `x` in its output (copied there first unless the output is in place of it) and
//! adds to it: for an f32 output the sum over `k` continues from `x` (tc's GEMM; gemm's
//! `dst := dst + a·b`), else the product rounded to the output's dtype and then added, as
//! the unfused add rounds.
//!
//! Threads: tc's GEMM shares each batch matrix among the pool's threads (batch matrices
//! one after another, each packing its `B` into the one workspace). That is why the rule
//! (`cpu_packs_b`) gives it a batched product only when each matrix is large enough to
//! share well (`CPU_BATCH_MIN_MACS`): a batched product of smaller matrices goes to the gemm
//! crate, whose tasks spread the batch over the threads, with no workspace. With the gemm
//! crate a product read and written in place is split into column panels of its output
//! (per batch matrix), each a single-threaded gemm call, handed to the pool as one job
//! that the threads share dynamically (`Schedule`); gemm's own threads (a static split
//! with a wait for both threads at every 512-long block of `k`) only where it packs A once
//! for all of them.
//! Every output element is summed in the same order either way, so the results are the
//! same bits whatever the thread count.

use super::epilogue;
use super::fused::check_bounds;
use super::gemm as own;
use super::prologue;
use super::{CpuError, Mem};
use gemm::Parallelism;
use rayon::prelude::*;
use tc_compiler::ir::DType;
use tc_compiler::schedule::{FusedKernel, MatMulKernel, MatOperand, Plan, CPU_SHARE_MIN_MACS};

/// Runs product `mm`, and `next` (the kernel after it) as its epilogue where tc's GEMM
/// takes the product and `next` qualifies (`epilogue`); returns whether `next` ran.
pub(super) fn run(
    plan: &Plan,
    name: &str,
    mm: &MatMulKernel,
    mems: &[Mem],
    next: Option<(&str, &FusedKernel)>,
) -> Result<bool, CpuError> {
    // A batch over one shared `B` whose `A` rows run on from batch to batch is one
    // product of all the rows: `B` packed once, the threads sharing one large GEMM. (Where
    // the plan gave the batch no packing workspace, only if the one product needs none.)
    if let Some(folded) = mm.batch_folded_into_rows().filter(|f| {
        let target = &plan.options.target;
        mm.prologue.is_none() && (mm.workspace.is_some() || f.workspace_bytes(target) == 0)
    }) {
        return run(plan, name, &folded, mems, next);
    }
    let bad = |msg: String| CpuError::BadPlan(format!("kernel {name}: {msg}"));
    let nb = mm.batch.len();
    let (m, n, k) = (mm.m as usize, mm.n as usize, mm.k as usize);
    let batch: Vec<usize> = mm.batch.iter().map(|&b| b as usize).collect();
    let nbatch: usize = batch.iter().product();
    let mem_of = |id: tc_compiler::schedule::BufferId, what: &str| {
        mems.get(id.index())
            .copied()
            .ok_or_else(|| bad(format!("{what} buffer {} does not exist", id.0)))
    };
    let a_mem = mem_of(mm.a.buffer, "operand a")?;
    let b_mem = mem_of(mm.b.buffer, "operand b")?;
    let out = mem_of(mm.out, "output")?;
    for (what, op, mem, rows, cols) in [("a", &mm.a, a_mem, m, k), ("b", &mm.b, b_mem, k, n)] {
        if op.strides.len() != nb + 2 {
            return Err(bad(format!(
                "operand {what} has {} strides for {} batch axes",
                op.strides.len(),
                nb
            )));
        }
        if op.dtype != mem.dtype {
            return Err(bad(format!(
                "operand {what} reads {} as {}",
                mem.dtype, op.dtype
            )));
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
    }
    // An `A` computed, not read (`MatMulKernel::prologue`): each block as tc's GEMM packs it.
    let computed_a = match &mm.prologue {
        Some(p) => {
            if nbatch != 1 {
                return Err(bad(format!(
                    "the product computes its operand {} but is batched",
                    plan.buffer(mm.a.buffer).name
                )));
            }
            Some(prologue::Prologue::new(plan, name, p, mems, &mm.a)?)
        }
        None if a_mem.is_tile() => {
            return Err(bad(format!(
                "operand a {} is never stored and nothing computes it",
                plan.buffer(mm.a.buffer).name
            )))
        }
        None => None,
    };
    // A product never stored whole (`BufferKind::Tile`): computed block by block for the
    // kernel after it, which must run on the blocks.
    let never_stored = out.is_tile();
    if !(out.writable || never_stored) || out.dtype != mm.out_dtype || out.numel < nbatch * m * n {
        return Err(bad(format!(
            "output {} is not a writable {} buffer of {} elements",
            plan.buffer(mm.out).name,
            mm.out_dtype,
            nbatch * m * n
        )));
    }
    if never_stored && (mm.accumulate.is_some() || out.dtype != DType::F32) {
        return Err(bad(format!(
            "the product {} is never stored whole but accumulates or is not f32",
            plan.buffer(mm.out).name
        )));
    }
    if nbatch == 0 || m == 0 || n == 0 {
        // Nothing to compute; the kernel after an empty product in tiles has nothing to do.
        return Ok(never_stored && next.is_some());
    }
    // The residual when it is copied into the output (read before the product starts).
    let mut residual = None;
    let accumulate = match mm.accumulate {
        Some(x) => {
            let x_mem = mem_of(x, "residual")?;
            if x_mem.dtype != out.dtype || x_mem.numel < nbatch * m * n {
                return Err(bad(format!(
                    "the residual {} is not a {} buffer of {} elements",
                    plan.buffer(x).name,
                    out.dtype,
                    nbatch * m * n
                )));
            }
            if x_mem.ptr != out.ptr {
                if x_mem.overlaps(&out) || out.overlaps(&a_mem) || out.overlaps(&b_mem) {
                    return Err(bad(format!(
                        "the residual {} is copied into an output that overlaps it or an operand",
                        plan.buffer(x).name
                    )));
                }
                let bytes = nbatch * m * n * out.dtype.size() as usize;
                // SAFETY: both hold `bytes` bytes (checked above) and do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(x_mem.ptr.cast_const(), out.ptr, bytes) };
                residual = Some(x_mem);
            }
            true
        }
        None => false,
    };

    let direct_ok = |op: &MatOperand, mem: Mem| {
        mem.dtype == DType::F32
            && op.strides[nb] > 0
            && op.strides[nb + 1] > 0
            && (mem.ptr as usize).is_multiple_of(std::mem::align_of::<f32>())
    };
    let direct_a = direct_ok(&mm.a, a_mem);
    let direct_b = direct_ok(&mm.b, b_mem);
    // The output may be written straight into the arena when it is f32, aligned, and shares
    // no bytes with an operand (a plan never does that, but a wrong plan must not corrupt
    // an operand mid-product).
    let direct_out = out.dtype == DType::F32
        && (out.ptr as usize).is_multiple_of(std::mem::align_of::<f32>())
        && !out.overlaps(&a_mem)
        && !out.overlaps(&b_mem);
    let tiled = Tiled {
        a: (&mm.a, a_mem, direct_a),
        b: (&mm.b, b_mem, direct_b),
        accumulate,
        nb,
        scratch: scratch_bytes(plan),
        batch: &batch,
        m,
        n,
        k,
    };
    // Only a plan for the CPU gives its products the packed B (a CUDA plan run here, as the
    // emulation tests do, goes to the gemm crate).
    let packing = match plan.options.target {
        tc_compiler::Target::Cpu => mm.workspace_bytes(&plan.options.target),
        tc_compiler::Target::Cuda { .. } => 0,
    };
    // (A product never stored whole, or computing its `A`, goes to tc's GEMM even without
    // AVX2: its scalar twin.)
    let needs_own = never_stored || computed_a.is_some();
    // The product's workspace for tc's GEMM (its packed `B`): the plan's, a writable f32
    // buffer of the rule's size apart from the operands and the output.
    // (All of B where the plan packs it whole, `MatMulKernel::column_block`.)
    let nc = mm.column_block() as usize;
    let floats = own::packing_floats(n, k, nc);
    let workspace = || -> Result<Mem, CpuError> {
        let Some(ws_id) = mm.workspace else {
            return Err(bad(format!(
                "no workspace for a product that packs {packing} bytes"
            )));
        };
        let ws = mem_of(ws_id, "workspace")?;
        if !ws.writable
            || ws.dtype != DType::F32
            || ws.numel < floats
            || !(ws.ptr as usize).is_multiple_of(std::mem::align_of::<f32>())
            || [a_mem, b_mem, out].iter().any(|m| ws.overlaps(m))
        {
            return Err(bad(format!(
                "workspace {} is not a writable f32 buffer of {packing} bytes apart from the operands and the output",
                plan.buffer(ws_id).name
            )));
        }
        Ok(ws)
    };
    if direct_a && direct_b && direct_out && packing > 0 && (own::has_simd() || needs_own) {
        // tc's own GEMM, in place: the pool shares each batch matrix (its packed B, blocks
        // of its rows); B packed into the product's workspace.
        let ws = workspace()?;
        // What a prologue reads must stay as it is while the product runs (a plan never
        // places the output or the workspace over it, but a wrong plan must not corrupt it).
        let pro_reads: Vec<Mem> = computed_a
            .iter()
            .flat_map(prologue::Prologue::reads)
            .collect();
        if pro_reads
            .iter()
            .any(|m| m.overlaps(&out) || m.overlaps(&ws))
        {
            return Err(bad(format!(
                "the output or workspace of the product overlaps what its prologue reads to compute {}",
                plan.buffer(mm.a.buffer).name
            )));
        }
        // SAFETY: the workspace is the product's alone at its step (checked: writable,
        // `floats` f32s, sharing no byte with the operands or the output).
        let bp = unsafe { std::slice::from_raw_parts_mut(ws.base().cast::<f32>(), floats) };
        let base = out.base() as usize;
        let (a_op, b_op) = (&mm.a, &mm.b);
        let reads: Vec<Mem> = [a_mem, b_mem]
            .into_iter()
            .chain(residual)
            .chain(pro_reads)
            .collect();
        let product = epilogue::Product {
            id: mm.out,
            out,
            rows: nbatch * m,
            n,
            reads: &reads,
            writes: &[ws],
        };
        let tail = next.and_then(|(next_name, kernel)| {
            epilogue::Epilogue::new(plan, next_name, kernel, mems, &product)
        });
        if never_stored
            && (tail.is_none() || (tail.as_ref().is_some_and(|t| t.whole_rows()) && n > nc))
        {
            return Err(bad(format!(
                "the product {} is never stored whole, but the kernel after it cannot run on its blocks",
                plan.buffer(mm.out).name
            )));
        }
        // SAFETY: batch `bi`'s m×n output (checked above) is written by this call alone;
        // the operands hold the m×k and k×n elements their strides reach (bounds checked);
        // the epilogue runs on each block of it once final (`gemm::Finish`), a block of
        // rows `bi·m ..` of the product it was prepared for.
        let mut one = |bi: usize, parallel: bool| unsafe {
            let f = |block: own::Block| {
                if let Some(t) = &tail {
                    t.run(bi * m, block)
                }
            };
            let finish = tail.as_ref().map(|t| own::Finish {
                f: &f,
                whole_rows: t.whole_rows(),
                tile: never_stored,
            });
            let fill = computed_a.as_ref().map(prologue::Prologue::filler);
            let a_from = fill.as_ref().map(|f| own::AFrom { f });
            // (A computed `A` is never read where the operand points: nowhere.)
            let a_ptr = if computed_a.is_some() {
                std::ptr::null()
            } else {
                tiled.a_ptr(bi, 0)
            };
            own::gemm(
                m,
                n,
                k,
                strided(a_ptr, a_op, nb),
                strided(tiled.b_ptr(bi, 0), b_op, nb),
                (base as *mut f32).wrapping_add(bi * m * n),
                n,
                accumulate,
                parallel,
                own::Kernel::Best,
                &mut *bp,
                nc,
                finish,
                a_from,
            )
        };
        // Matrices one after another, each shared by the pool when large enough: the rule
        // (`cpu_packs_b`) gives tc's GEMM a batched product only when each matrix is, so
        // only a single matrix runs here on one thread.
        let threads = rayon::current_num_threads();
        let macs = m.saturating_mul(n).saturating_mul(k);
        let parallel = threads > 1 && macs >= INLINE_MACS;
        (0..nbatch).for_each(|bi| one(bi, parallel));
        return Ok(tail.is_some());
    }
    // (B is packed through typed pointers: aligned to its element's size.)
    let b_aligned = (b_mem.ptr as usize).is_multiple_of(b_mem.dtype.size() as usize);
    // (An output computed in tiles cannot take a residual: one only into an f32 output
    // written in place.)
    let takes = mm.cpu_gemm_operands() && b_aligned && (direct_out || !accumulate);
    if packing > 0 && (own::has_simd() || computed_a.is_some()) && !never_stored && takes {
        // tc's GEMM for f16/bf16 operands or output: each task's block of `A` widened into
        // its thread's buffer as it packs it (`AFrom`; or computed there by the product's
        // prologue), `B` widened as it is packed into the workspace (`gemm_of`), and a half
        // output rounded from each finished block, computed in the thread's own buffer
        // (`Finish::tile`); an f32 output in place.
        let ws = workspace()?;
        if out.overlaps(&a_mem) || out.overlaps(&b_mem) {
            return Err(bad(format!(
                "the output {} overlaps an operand",
                plan.buffer(mm.out).name
            )));
        }
        if computed_a
            .iter()
            .flat_map(prologue::Prologue::reads)
            .any(|m| m.overlaps(&out) || m.overlaps(&ws))
        {
            return Err(bad(format!(
                "the output or workspace of the product overlaps what its prologue reads to compute {}",
                plan.buffer(mm.a.buffer).name
            )));
        }
        // SAFETY: the workspace is the product's alone at its step (checked above).
        let bp = unsafe { std::slice::from_raw_parts_mut(ws.base().cast::<f32>(), floats) };
        let (a_op, b_op) = (&mm.a, &mm.b);
        let base = out.base() as usize;
        // bf16 times bf16 goes in bf16 pairs (`gemm_bf16`): `vdpbf16ps` where the CPU has
        // it, else its twin, the same bits.
        let pairs = a_mem.dtype == DType::BF16
            && b_mem.dtype == DType::BF16
            && (a_mem.ptr as usize).is_multiple_of(2);
        for bi in 0..nbatch {
            let a_off = tiled.base_off(a_op, bi);
            let (ars, acs) = (a_op.strides[nb], a_op.strides[nb + 1]);
            // SAFETY (the closure): rows r0.. and columns t0.. of batch `bi`'s A, inside the
            // operand (bounds checked); `dst` is the calling thread's `rows · kc` floats.
            let fill = |(r0, rows): (usize, usize), (t0, kc): (usize, usize), dst: &mut [f32]| {
                for (r, row) in dst[..rows * kc].chunks_exact_mut(kc).enumerate() {
                    let at = a_off + (r0 + r) as i64 * ars + t0 as i64 * acs;
                    unsafe { a_mem.read_run(at, acs, row) };
                }
                own::Operand {
                    ptr: dst.as_ptr(),
                    rs: kc as isize,
                    cs: 1,
                }
            };
            let computed = computed_a.as_ref().map(prologue::Prologue::filler);
            let a_from = match &computed {
                Some(f) => Some(own::AFrom { f }),
                None => (!direct_a).then_some(own::AFrom { f: &fill }),
            };
            let a_ptr = if direct_a && computed.is_none() {
                tiled.a_ptr(bi, 0)
            } else {
                std::ptr::null()
            };
            let b_at = tiled.base_off(b_op, bi) as isize * b_mem.dtype.size() as isize;
            // SAFETY (the closure): the block's rows of batch `bi`'s output, written by the
            // task that computed them alone.
            let store = |blk: own::Block| {
                for i in 0..blk.rows {
                    let row =
                        unsafe { std::slice::from_raw_parts(blk.at.add(i * blk.ld), blk.cols) };
                    let at = (bi * m * n + (blk.r0 + i) * n + blk.c0) as i64;
                    unsafe { out.write_run(at, 1, row) };
                }
            };
            let finish = (!direct_out).then_some(own::Finish {
                f: &store,
                whole_rows: false,
                tile: true,
            });
            let threads = rayon::current_num_threads();
            let parallel = threads > 1 && m.saturating_mul(n).saturating_mul(k) >= INLINE_MACS;
            let b_ptr = b_mem.base().cast_const().wrapping_offset(b_at).cast();
            if pairs {
                // bf16 times bf16: both packed as pairs (`gemm_bf16`), A read in place or
                // computed (its prologue).
                let a_at = a_off as isize * 2;
                let a_ptr = a_mem.base().cast_const().wrapping_offset(a_at).cast();
                let a_from = computed.as_ref().map(|f| own::AFrom { f });
                // SAFETY: the operands reach what their strides say (bounds checked), bf16
                // elements from `a_at` and `b_at` bytes in, 2-byte aligned; the output (f32,
                // in place, or written by `store`) is this call's; the workspace holds
                // `floats`.
                unsafe {
                    own::gemm_bf16(
                        m,
                        n,
                        k,
                        strided(a_ptr, a_op, nb),
                        strided(b_ptr, b_op, nb),
                        (base as *mut f32).wrapping_add(bi * m * n),
                        n,
                        accumulate,
                        parallel,
                        own::Kernel::Best,
                        &mut *bp,
                        nc,
                        finish,
                        a_from,
                    )
                };
                continue;
            }
            // SAFETY: the operands reach what their strides say (bounds checked), B's
            // elements of its dtype from `b_at` bytes in; the output (f32, in place, or
            // written by `store`) is this call's; the workspace holds `floats`.
            unsafe {
                own::gemm_of(
                    m,
                    n,
                    k,
                    strided(a_ptr, a_op, nb),
                    strided(b_ptr, b_op, nb),
                    b_mem.dtype,
                    (base as *mut f32).wrapping_add(bi * m * n),
                    n,
                    accumulate,
                    parallel,
                    own::Kernel::Best,
                    &mut *bp,
                    nc,
                    finish,
                    a_from,
                )
            };
        }
        return Ok(false);
    }
    if needs_own {
        return Err(bad(format!(
            "the product {} is never stored whole, or computes its A, but tc's GEMM does not take it",
            plan.buffer(mm.out).name
        )));
    }
    if direct_a && direct_b && direct_out {
        // Everything in place, no scratch: each task a single-threaded gemm call writing its
        // own columns of one batch matrix, or gemm's own threads (`Schedule`).
        let base = out.base() as usize;
        // SAFETY: the task writes columns c0..c1 of batch `bi`'s m×n output (checked
        // above), which no other task writes; the operands hold the m×k and k×n elements
        // their strides reach (bounds checked).
        let task = |bi: usize, (c0, c1): (usize, usize), parallelism: Parallelism| unsafe {
            let dst = (base as *mut f32).add(bi * m * n + c0);
            tiled.gemm(
                (m, c1 - c0),
                (tiled.a_ptr(bi, 0), tiled.b_ptr(bi, c0)),
                None,
                (dst, n),
                parallelism,
                tiled.accumulate,
            )
        };
        match Schedule::of(nbatch, m, n, k, rayon::current_num_threads()) {
            Schedule::Inline => (0..nbatch).for_each(|bi| task(bi, (0, n), Parallelism::None)),
            Schedule::Gemm => {
                (0..nbatch).for_each(|bi| task(bi, (0, n), Parallelism::Rayon(0)));
            }
            Schedule::Panels { count, width } => (0..nbatch * count)
                .into_par_iter()
                .with_max_len(1)
                .for_each(|t| {
                    let p = t % count;
                    let c1 = if p + 1 == count { n } else { (p + 1) * width };
                    task(t / count, (p * width, c1), Parallelism::None)
                }),
        }
        return Ok(false);
    }
    // The element's final value: the product, or (with a residual) the product rounded to
    // the output's dtype plus the residual the output holds, rounded again by the write.
    let put = |i: usize, v: f32| {
        // SAFETY: `i < nbatch·m·n <= out.numel` (checked above); each element is read and
        // written by one thread.
        unsafe {
            if accumulate {
                out.write(i as i64, out.read(i as i64) + round_to(out.dtype, v));
            } else {
                out.write(i as i64, v);
            }
        }
    };
    if out.overlaps(&a_mem) || out.overlaps(&b_mem) {
        // Only a wrong plan gets here: compute every batch first, then round into the
        // output, so that no operand is clobbered mid-product.
        let mut tmp = vec![0f32; nbatch * m * n];
        let base = tmp.as_mut_ptr() as usize;
        let products = Tiled {
            accumulate: false,
            ..tiled
        };
        products.run(None, &|bi, r, c, v| {
            // SAFETY: `(bi·m + r)·n + c < nbatch·m·n`; each element is written once.
            unsafe { *(base as *mut f32).add((bi * m + r) * n + c) = v };
        });
        for (i, &v) in tmp.iter().enumerate() {
            put(i, v);
        }
    } else {
        let direct = direct_out.then(|| out.base() as usize);
        tiled.run(direct, &|bi, r, c, v| put((bi * m + r) * n + c, v));
    }
    Ok(false)
}

/// How a product read and written in place shares the pool's threads. Each output element
/// is summed in the same order whichever is chosen (gemm blocks `k` by its length alone, and
/// `Schedule::of` never hands it a panel its small-matrix paths would take), so the results
/// are the same bits whatever the thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schedule {
    /// One single-threaded gemm call per batch matrix, on the calling thread: too little
    /// work to share, or one thread.
    Inline,
    /// gemm's own threads inside one call per batch matrix: outputs wider than
    /// `GEMM_PACKS_A` columns, where gemm packs A once for all its threads (a panel would
    /// read A unpacked), and outputs too narrow or short for panels.
    Gemm,
    /// `(batch matrix, column panel)` tasks handed to the pool, each a single-threaded gemm
    /// call writing `width` columns of one batch matrix (`count` panels a matrix, the last
    /// one the rest, less than twice as wide; `width` a multiple of 16, or `n` for whole
    /// matrices): one hand-off to
    /// the pool a product instead of gemm's one per 512-long block of `k` (each a wait for
    /// both threads), and a thread that is slowed (another process on its core) leaves its
    /// remaining panels to the other.
    Panels { count: usize, width: usize },
}

/// Below this many multiply-adds (about 0.03 ms on one core) a product runs on the calling
/// thread: handing it to the pool would cost about what the second thread saves
/// (`CPU_SHARE_MIN_MACS`, which the planner's batched threshold `CPU_BATCH_MIN_MACS` is
/// at least, so every matrix of a batched product tc's GEMM takes is shared).
const INLINE_MACS: usize = CPU_SHARE_MIN_MACS as usize;
/// Panels per thread: enough for one thread to take over another's share when that one is
/// slowed, few enough that each panel keeps gemm's 128-column blocks.
const PANELS_PER_THREAD: usize = 4;
/// The narrowest panel, in columns (a multiple of gemm's 16-row microkernel).
const MIN_PANEL: usize = 64;
/// gemm (0.19, x86-64) packs the f32 A operand of a row-major product (its internal
/// right-hand side) when the output is wider than this, once for all its threads.
const GEMM_PACKS_A: usize = 2048;

impl Schedule {
    fn of(nbatch: usize, m: usize, n: usize, k: usize, threads: usize) -> Schedule {
        let macs = nbatch.saturating_mul(m).saturating_mul(n).saturating_mul(k);
        if threads <= 1 || macs < INLINE_MACS {
            return Schedule::Inline;
        }
        let want = PANELS_PER_THREAD * threads;
        let whole = Schedule::Panels { count: 1, width: n };
        if nbatch >= want {
            return whole;
        }
        // A panel's single-threaded call must keep gemm's general path, as the whole
        // product's does: more than 64 rows (gemm's small-matrix path blocks `k` otherwise)
        // and panels of at least 64 columns (a panel of one column would take the vector
        // path, of a few its horizontal kernel, each summing in another order).
        let per_matrix = want.div_ceil(nbatch).min(n / MIN_PANEL).max(1);
        // Panels a multiple of 16 columns wide, the last one taking the rest.
        let width = n.div_ceil(per_matrix).next_multiple_of(16);
        let count = n / width;
        if n > GEMM_PACKS_A || m <= 64 || count < 2 {
            return if nbatch >= 2 { whole } else { Schedule::Gemm };
        }
        Schedule::Panels { count, width }
    }
}

/// `v` rounded to `dtype` (a float dtype), as a store of it would round.
fn round_to(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// tc's GEMM's view of operand `op` (batch axes `nb`) whose batch matrix starts at `ptr`.
fn strided(ptr: *const f32, op: &MatOperand, nb: usize) -> own::Operand {
    own::Operand {
        ptr,
        rs: op.strides[nb] as isize,
        cs: op.strides[nb + 1] as isize,
    }
}

/// Bytes of f32 scratch a product that cannot be read and written in place (f16/bf16 or
/// oddly strided operands, a non-f32 output) may use at once: the widened rows of A and
/// columns of B of one output tile, and the tile itself when the output is not f32. The
/// memory report counts no scratch, so it is a small share of the plan's memory (the arena
/// plus inputs and params) — 1/40, between 256 KiB and 64 MiB — instead of whole widened
/// matrices (which took up to twice the operands and the output again). Larger tiles
/// mean fewer gemm calls, each packing its operands again.
pub(super) fn scratch_bytes(plan: &Plan) -> usize {
    let leaves: u64 = plan
        .inputs
        .iter()
        .chain(&plan.params)
        .map(|&b| plan.buffer(b).bytes)
        .fold(0, u64::saturating_add);
    let planned = plan.arena_bytes.saturating_add(leaves);
    (planned / 40).clamp(256 << 10, 64 << 20) as usize
}

/// A product's operands and sizes, computed whole or tile by tile. Each tile is one gemm
/// call over the whole `k`, so every element sums in the same order as untiled.
struct Tiled<'a> {
    /// Each operand, its memory and whether it is read in place (f32, positive strides).
    a: (&'a MatOperand, Mem, bool),
    b: (&'a MatOperand, Mem, bool),
    /// gemm adds to what the destination holds (`dst := dst + a·b`) when it writes the
    /// output directly.
    accumulate: bool,
    /// Batch axes.
    nb: usize,
    /// The scratch budget (`scratch_bytes`).
    scratch: usize,
    batch: &'a [usize],
    m: usize,
    n: usize,
    k: usize,
}

impl Tiled<'_> {
    /// Rows and columns per tile. B's widened block (`k × cols`, made once per column
    /// block) takes at most half the scratch budget, A's widened rows (`rows × k`, made
    /// once per tile) and the f32 tile (`rows × cols`) the other half; each side between 16
    /// and 512, then spread evenly so that no tile is a thin remainder.
    fn tile(&self, out_scratch: bool) -> (usize, usize) {
        let half = self.scratch / 4 / 2;
        let cols = if self.b.2 {
            512
        } else {
            (half / self.k.max(1)).clamp(16, 512)
        };
        let cols = self.n.div_ceil(self.n.div_ceil(cols));
        let per_row = if self.a.2 { 0 } else { self.k } + if out_scratch { cols } else { 0 };
        let rows = (half / per_row.max(1)).clamp(16, 512);
        (self.m.div_ceil(self.m.div_ceil(rows)), cols)
    }

    /// Element offset of batch `bi`'s first element in an operand.
    fn base_off(&self, op: &MatOperand, bi: usize) -> i64 {
        let mut q = bi;
        let mut off = op.offset;
        for d in (0..self.nb).rev() {
            off += (q % self.batch[d]) as i64 * op.strides[d];
            q /= self.batch[d];
        }
        off
    }

    /// The element of batch `bi`'s row `r0` (column 0) of A, read in place as f32.
    fn a_ptr(&self, bi: usize, r0: usize) -> *const f32 {
        let (a, mem, _) = self.a;
        let at = self.base_off(a, bi) + r0 as i64 * a.strides[self.nb];
        // SAFETY: inside the operand, whose bounds were checked; called only when it is f32.
        unsafe { mem.base().cast::<f32>().cast_const().offset(at as isize) }
    }

    /// The element of batch `bi`'s column `c0` (row 0) of B, read in place as f32.
    fn b_ptr(&self, bi: usize, c0: usize) -> *const f32 {
        let (b, mem, _) = self.b;
        let at = self.base_off(b, bi) + c0 as i64 * b.strides[self.nb + 1];
        // SAFETY: as for A.
        unsafe { mem.base().cast::<f32>().cast_const().offset(at as isize) }
    }

    /// `dst := A·B` (or `dst := dst + A·B` with `accumulate`) for a `rows × cols` tile: A and
    /// B in place at
    /// `ptrs` through their strides, or widened (`widened = Some((a, b))`, each `true` for
    /// a contiguous copy: A `rows × k`, B `k × cols`); `dst` at row stride `dst.1`.
    ///
    /// # Safety
    /// `dst` holds the tile, owned by this call; the operands hold every element read.
    unsafe fn gemm(
        &self,
        (rows, cols): (usize, usize),
        (a_ptr, b_ptr): (*const f32, *const f32),
        widened: Option<(bool, bool)>,
        (dst, dst_rs): (*mut f32, usize),
        parallelism: Parallelism,
        read_dst: bool,
    ) {
        let nb = self.nb;
        let (wa, wb) = widened.unwrap_or((false, false));
        let (a_rs, a_cs) = if wa {
            (self.k as isize, 1)
        } else {
            (
                self.a.0.strides[nb] as isize,
                self.a.0.strides[nb + 1] as isize,
            )
        };
        let (b_rs, b_cs) = if wb {
            (cols as isize, 1)
        } else {
            (
                self.b.0.strides[nb] as isize,
                self.b.0.strides[nb + 1] as isize,
            )
        };
        // SAFETY: forwarded from the caller; dst := 0·dst + 1·a·b, or with `read_dst`
        // dst := 1·dst + 1·a·b (the sum rounded once, as `x + (a·b)` rounds in f32).
        unsafe {
            gemm::gemm(
                rows,
                cols,
                self.k,
                dst,
                1,
                dst_rs as isize,
                read_dst,
                a_ptr,
                a_cs,
                a_rs,
                b_ptr,
                b_cs,
                b_rs,
                if read_dst { 1.0f32 } else { 0.0f32 },
                1.0f32,
                false,
                false,
                false,
                parallelism,
            )
        };
    }

    /// Computes every tile in turn (gemm's own threads inside each), handing each f32
    /// result to `put(batch, row, col, value)`; or, with `direct = Some(address)`, letting
    /// gemm write it into the f32 output at that address (row-major, `m × n` per batch).
    fn run(&self, direct: Option<usize>, put: &(dyn Fn(usize, usize, usize, f32) + Sync)) {
        let (m, n, k, nb) = (self.m, self.n, self.k, self.nb);
        let (mb, nbc) = self.tile(direct.is_none());
        let nbatch: usize = self.batch.iter().product();
        let (a, a_mem, direct_a) = self.a;
        let (b, b_mem, direct_b) = self.b;
        let (mut a_tmp, mut b_tmp, mut o_tmp) = (Vec::new(), Vec::new(), Vec::new());
        for bi in 0..nbatch {
            let (a_off, b_off) = (self.base_off(a, bi), self.base_off(b, bi));
            for c0 in (0..n).step_by(nbc) {
                let cols = nbc.min(n - c0);
                let b_ptr = if direct_b {
                    self.b_ptr(bi, c0)
                } else {
                    let at = b_off + c0 as i64 * b.strides[nb + 1];
                    // SAFETY: the block lies inside the operand, whose bounds were checked.
                    unsafe {
                        widen(
                            &mut b_tmp,
                            b_mem,
                            at,
                            b.strides[nb],
                            b.strides[nb + 1],
                            k,
                            cols,
                        )
                    };
                    b_tmp.as_ptr()
                };
                for r0 in (0..m).step_by(mb) {
                    let rows = mb.min(m - r0);
                    let a_ptr = if direct_a {
                        self.a_ptr(bi, r0)
                    } else {
                        let at = a_off + r0 as i64 * a.strides[nb];
                        // SAFETY: as for B.
                        unsafe {
                            widen(
                                &mut a_tmp,
                                a_mem,
                                at,
                                a.strides[nb],
                                a.strides[nb + 1],
                                rows,
                                k,
                            )
                        };
                        a_tmp.as_ptr()
                    };
                    let dst = match direct {
                        // SAFETY: the tile is inside batch `bi` of the output.
                        Some(base) => (
                            unsafe { (base as *mut f32).add(bi * m * n + r0 * n + c0) },
                            n,
                        ),
                        None => {
                            o_tmp.clear();
                            o_tmp.resize(rows * cols, 0f32);
                            (o_tmp.as_mut_ptr(), cols)
                        }
                    };
                    // SAFETY: `dst` holds the rows × cols tile; the operands (in place or
                    // widened) hold every element the strides reach.
                    unsafe {
                        self.gemm(
                            (rows, cols),
                            (a_ptr, b_ptr),
                            Some((!direct_a, !direct_b)),
                            dst,
                            Parallelism::Rayon(0),
                            self.accumulate && direct.is_some(),
                        )
                    };
                    if direct.is_none() {
                        // (with a residual, `put` adds the rounded product to it)
                        o_tmp.par_chunks(cols).enumerate().for_each(|(r, row)| {
                            for (c, &v) in row.iter().enumerate() {
                                put(bi, r0 + r, c0 + c, v);
                            }
                        });
                    }
                }
            }
        }
    }
}

/// A `rows × cols` block read through strides into `v` (reused across calls), widened to
/// contiguous row-major f32, rows in parallel. Contiguous f16/bf16 rows convert a slice at a
/// time (SIMD where the CPU has it), since the same rows are widened once per tile.
///
/// # Safety
/// Every element the strides reach is inside `mem`.
unsafe fn widen(v: &mut Vec<f32>, mem: Mem, off: i64, rs: i64, cs: i64, rows: usize, cols: usize) {
    use half::slice::HalfFloatSliceExt;
    v.clear();
    v.resize(rows * cols, 0f32);
    let base = mem.base() as usize;
    v.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            let at = off + r as i64 * rs;
            // The row's first element, when the row is contiguous 2-byte elements.
            let halves = (cs == 1 && mem.dtype != DType::F32)
                .then(|| base.wrapping_add((at as usize).wrapping_mul(2)))
                .filter(|p| p % 2 == 0);
            match (mem.dtype, halves) {
                // SAFETY: the row's `cols` elements are inside `mem` (the caller's promise)
                // and 2-byte aligned; f16 has the layout of u16.
                (DType::F16, Some(p)) => {
                    unsafe { std::slice::from_raw_parts(p as *const half::f16, row.len()) }
                        .convert_to_f32_slice(row)
                }
                // SAFETY: as above, for bf16.
                (DType::BF16, Some(p)) => {
                    unsafe { std::slice::from_raw_parts(p as *const half::bf16, row.len()) }
                        .convert_to_f32_slice(row)
                }
                _ => {
                    for (c, x) in row.iter_mut().enumerate() {
                        // SAFETY: forwarded from the caller.
                        *x = unsafe { mem.read(at + c as i64 * cs) };
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use crate::tensor::HostTensor;
    use tc_compiler::ir::DType;

    /// `len` values in about [-1.94, 1.94], a different sequence for each `seed`.
    fn vals(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 - 1001.0) / 517.0)
            .collect()
    }

    /// Runs `plan` on one thread and on each of `threads`, asserts that every run gives the
    /// one-thread run's bytes, and returns those outputs.
    fn same_bytes_at_thread_counts(
        plan: &tc_compiler::schedule::Plan,
        inputs: &[HostTensor],
        threads: &[usize],
    ) -> Vec<HostTensor> {
        let in_pool = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(|| super::super::run(plan, inputs, &[]).expect("runs"))
        };
        let one = in_pool(1);
        for &t in threads {
            let got = in_pool(t);
            for (x, y) in one.iter().zip(&got) {
                assert!(x.bytes == y.bytes, "1 and {t} threads differ");
            }
        }
        one
    }

    /// Every schedule covers each output column of each batch matrix once, in panels that
    /// keep gemm on its general path (more than 64 rows) and, but for the last, a multiple of
    /// 16 columns wide; small products stay on the calling thread.
    #[test]
    fn schedules_cover_the_output_in_panels_gemm_treats_alike() {
        use super::{Schedule, GEMM_PACKS_A, INLINE_MACS};
        let mut seen = [false; 3];
        for threads in [1, 2, 3, 4, 8] {
            for nbatch in [1, 2, 3, 7, 40] {
                for m in [1, 17, 64, 65, 512, 1000] {
                    for n in [1, 16, 63, 64, 127, 128, 300, 321, 512, 2048, 2049, 4096] {
                        for k in [1, 64, 600, 4096] {
                            let s = Schedule::of(nbatch, m, n, k, threads);
                            let macs = nbatch * m * n * k;
                            match s {
                                Schedule::Inline => {
                                    seen[0] = true;
                                    assert!(threads == 1 || macs < INLINE_MACS, "{s:?}");
                                }
                                Schedule::Gemm => {
                                    seen[1] = true;
                                    assert!(threads > 1 && macs >= INLINE_MACS, "{s:?}");
                                }
                                Schedule::Panels { count, width } => {
                                    seen[2] = true;
                                    assert!(count >= 1 && width >= 1, "{s:?}");
                                    // Every panel `width` wide, the last one the rest.
                                    assert!(count * width <= n && (count + 1) * width > n);
                                    if count > 1 {
                                        assert!(m > 64 && width % 16 == 0 && width >= 64);
                                        assert!(n <= GEMM_PACKS_A, "{nbatch} {m} {n} {k}");
                                    } else {
                                        assert_eq!(width, n);
                                    }
                                    assert!(nbatch * count > 1, "{s:?}: one task");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(seen, [true; 3]);
        // The transformer block's and mlp's products at the benchmark's sizes, two threads.
        assert_eq!(
            Schedule::of(1, 512, 512, 512, 2),
            Schedule::Panels {
                count: 8,
                width: 64
            }
        );
        assert_eq!(
            Schedule::of(1, 512, 2048, 512, 2),
            Schedule::Panels {
                count: 8,
                width: 256
            }
        );
        assert_eq!(Schedule::of(1, 1024, 4096, 1024, 2), Schedule::Gemm);
    }

    /// f32 products read and written in place, split into column panels (batched, with a
    /// residual, with B transposed, `k` not a multiple of gemm's blocks, 321 columns:
    /// 80-column panels would leave one column, which gemm sums as a vector product when B
    /// is transposed): the same bytes in pools of 1, 2, 3 and 5 threads, and every element
    /// within f32 rounding of the f64 product.
    #[test]
    fn panelled_products_are_the_same_bits_whatever_the_thread_count() {
        let (b, m, k, n) = (3usize, 130usize, 600usize, 321usize);
        let source = format!(
            "dim B = {b}\ndim M = {m}\ndim K = {k}\ndim N = {n}\n\
             input a : f32[B, M, K]\ninput w : f32[K, N]\ninput x : f32[M, N]\n\
             input c : f32[48, 1400]\ninput v : f32[1400, 128]\ninput wt : f32[N, K]\n\
             y = a @ w\nz = x + a[1] @ w\nu = c @ v\nt = a[0] @ transpose(wt)\n\
             output y, z, u, t\n"
        );
        let program = tc_compiler::compile(&source, &Default::default()).expect("compiles");
        let accumulates = program.plan.kernels.iter().any(|kernel| {
            matches!(&kernel.kind, tc_compiler::schedule::KernelKind::MatMul(mm) if mm.accumulate.is_some())
        });
        assert!(accumulates, "the residual is the product's");
        // Two threads split each product into panels.
        for nbatch in [1, b] {
            assert!(matches!(
                super::Schedule::of(nbatch, m, n, k, 2),
                super::Schedule::Panels { count, .. } if count > 1
            ));
        }
        let (af, wf, xf) = (vals(b * m * k, 1), vals(k * n, 2), vals(m * n, 3));
        let inputs = [
            HostTensor::from_f32(DType::F32, vec![b as u64, m as u64, k as u64], &af),
            HostTensor::from_f32(DType::F32, vec![k as u64, n as u64], &wf),
            HostTensor::from_f32(DType::F32, vec![m as u64, n as u64], &xf),
            // 48 rows: gemm's small-matrix path would sum a 64-column panel of it in
            // other blocks of `k` than the whole product (467 against 512).
            HostTensor::from_f32(DType::F32, vec![48, 1400], &vals(48 * 1400, 4)),
            HostTensor::from_f32(DType::F32, vec![1400, 128], &vals(1400 * 128, 5)),
            // w's transpose, laid out [N, K].
            HostTensor::from_f32(
                DType::F32,
                vec![n as u64, k as u64],
                &(0..n * k)
                    .map(|i| wf[i % k * n + i / k])
                    .collect::<Vec<_>>(),
            ),
        ];
        let one = same_bytes_at_thread_counts(&program.plan, &inputs, &[2, 3, 5]);
        let (y, z, t) = (one[0].to_f32(), one[1].to_f32(), one[3].to_f32());
        for bi in 0..b {
            for r in 0..m {
                for c in 0..n {
                    let (mut sum, mut mag) = (0f64, 0f64);
                    for kk in 0..k {
                        let p = af[(bi * m + r) * k + kk] as f64 * wf[kk * n + c] as f64;
                        sum += p;
                        mag += p.abs();
                    }
                    let got = y[(bi * m + r) * n + c] as f64;
                    // f32 sums of `k` products: within k·2^-24 of the magnitudes' sum.
                    let tol = mag * k as f64 * f32::EPSILON as f64 / 2.0;
                    assert!(
                        (got - sum).abs() <= tol,
                        "y[{bi}, {r}, {c}]: {got} vs {sum}"
                    );
                    if bi == 0 {
                        let got = t[r * n + c] as f64;
                        assert!((got - sum).abs() <= tol, "t[{r}, {c}]: {got} vs {sum}");
                    }
                    if bi == 1 {
                        let want = sum + xf[r * n + c] as f64;
                        let got = z[r * n + c] as f64;
                        assert!(
                            (got - want).abs() <= tol * 2.0,
                            "z[{r}, {c}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// f16 and bf16 products go to tc's GEMM (`cpu_gemm_operands`), at any thread count the
    /// same bits — with `B` transposed (strided columns), more than one column block (`n` >
    /// 512), a batch over a shared `B` and one over a batched `B`: an f16 product, `A`
    /// widened by blocks as it is packed and `B` into its packing, is the f32 product of the
    /// widened operands rounded once; a bf16 one (`gemm_bf16`, both packed as bf16 pairs) is
    /// each element's chain of `vdpbf16ps` steps over the pairs of `k` (`gemm::bf16_dot`),
    /// rounded once.
    #[test]
    fn half_products_are_the_f32_product_of_their_values_rounded_once() {
        let (b, m, k, n, n2) = (2usize, 50usize, 701usize, 530usize, 480usize);
        for dt in [DType::BF16, DType::F16] {
            let src = |t: &str| {
                format!(
                    "input a : {t}[{b}, {m}, {k}]\ninput w : {t}[{k}, {n}]\ninput v : {t}[{n}, {k}]\n\
                     input x : {t}[{b}, {k}, {n2}]\n\
                     y = a @ w\nz = a[1] @ transpose(v)\nu = a @ x\noutput y, z, u\n"
                )
            };
            let half =
                tc_compiler::compile(&src(&dt.to_string()), &Default::default()).expect("compiles");
            let full = tc_compiler::compile(&src("f32"), &Default::default()).expect("compiles");
            let own = half.plan.kernels.iter().all(|kernel| match &kernel.kind {
                tc_compiler::schedule::KernelKind::MatMul(mm) => mm.workspace.is_some(),
                _ => true,
            });
            assert!(own, "{}", tc_compiler::plan::print(&half.plan));
            let round = |v: Vec<f32>| -> Vec<f32> {
                let mut v = v;
                super::super::math::round_block(dt, &mut v);
                v
            };
            let (af, wf, vf, xf) = (
                round(vals(b * m * k, 1)),
                round(vals(k * n, 2)),
                round(vals(n * k, 3)),
                round(vals(b * k * n2, 4)),
            );
            let tensors = |t: DType| {
                vec![
                    HostTensor::from_f32(t, vec![b as u64, m as u64, k as u64], &af),
                    HostTensor::from_f32(t, vec![k as u64, n as u64], &wf),
                    HostTensor::from_f32(t, vec![n as u64, k as u64], &vf),
                    HostTensor::from_f32(t, vec![b as u64, k as u64, n2 as u64], &xf),
                ]
            };
            let got = same_bytes_at_thread_counts(&half.plan, &tensors(dt), &[2, 3]);
            let want: Vec<Vec<f32>> = if dt == DType::BF16 {
                // Each element's chain over the pairs of `k` (the last with a zero), as bits.
                let bits = |x: f32| half::bf16::from_f32(x).to_bits();
                let chain = |rows: usize,
                             cols: usize,
                             a: &dyn Fn(usize, usize) -> f32,
                             w: &dyn Fn(usize, usize) -> f32| {
                    let mut out = Vec::with_capacity(rows * cols);
                    for i in 0..rows {
                        for j in 0..cols {
                            let ai = |t: usize| if t < k { u32::from(bits(a(i, t))) } else { 0 };
                            let wj = |t: usize| if t < k { u32::from(bits(w(t, j))) } else { 0 };
                            let mut s = 0f32;
                            for t in (0..k).step_by(2) {
                                let (pa, pb) = (ai(t) | ai(t + 1) << 16, wj(t) | wj(t + 1) << 16);
                                s = super::own::bf16_dot(s, pa, pb);
                            }
                            out.push(s);
                        }
                    }
                    round(out)
                };
                let y = chain(b * m, n, &|i, t| af[i * k + t], &|t, j| wf[t * n + j]);
                let z = chain(m, n, &|i, t| af[(m + i) * k + t], &|t, j| vf[j * k + t]);
                let mut u = chain(m, n2, &|i, t| af[i * k + t], &|t, j| xf[t * n2 + j]);
                u.extend(chain(m, n2, &|i, t| af[(m + i) * k + t], &|t, j| {
                    xf[(k + t) * n2 + j]
                }));
                vec![y, z, u]
            } else {
                let full = same_bytes_at_thread_counts(&full.plan, &tensors(DType::F32), &[]);
                full.iter().map(|w| round(w.to_f32())).collect()
            };
            for (o, (g, w)) in got.iter().zip(&want).enumerate() {
                let g = g.to_f32();
                let first = g
                    .iter()
                    .zip(w)
                    .position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(first.is_none(), "{dt} output {o} element {first:?}");
            }
        }
    }

    /// A batch over one shared `B` whose rows run on from batch to batch runs as one
    /// product of all its rows (`MatMulKernel::batch_folded_into_rows`): the same bits as
    /// the product of those rows written as one matrix, at any thread count.
    #[test]
    fn a_batch_over_a_shared_b_is_one_product() {
        // Matrices large enough that the plan gives the batch tc's GEMM and its packing
        // workspace (`cpu_packs_b`), so the executor folds it.
        let (b, m, k, n) = (2usize, 130usize, 300usize, 450usize);
        let batched = tc_compiler::compile(
            "input a : f32[2, 130, 300]\ninput w : f32[300, 450]\ny = a @ w\noutput y\n",
            &Default::default(),
        )
        .expect("compiles");
        let flat = tc_compiler::compile(
            "input a : f32[260, 300]\ninput w : f32[300, 450]\ny = a @ w\noutput y\n",
            &Default::default(),
        )
        .expect("compiles");
        let folds = batched.plan.kernels.iter().any(|kernel| {
            matches!(&kernel.kind, tc_compiler::schedule::KernelKind::MatMul(mm)
                if mm.batch == [2] && mm.workspace.is_some()
                    && mm.batch_folded_into_rows().is_some_and(|f| f.m == 260))
        });
        assert!(folds, "{}", tc_compiler::plan::print(&batched.plan));
        let (af, wf) = (vals(b * m * k, 1), vals(k * n, 2));
        let w = HostTensor::from_f32(DType::F32, vec![k as u64, n as u64], &wf);
        let a3 = HostTensor::from_f32(DType::F32, vec![b as u64, m as u64, k as u64], &af);
        let a2 = HostTensor::from_f32(DType::F32, vec![(b * m) as u64, k as u64], &af);
        let one = same_bytes_at_thread_counts(&batched.plan, &[a3, w.clone()], &[1, 2, 3]);
        let two = same_bytes_at_thread_counts(&flat.plan, &[a2, w], &[1, 2]);
        assert_eq!(one[0].bytes, two[0].bytes);
    }

    /// Products whose tiles do not cover the matrices in one (the scratch budget is at its
    /// floor for so small a plan), batched, with a transposed (strided) operand and a bf16
    /// output: every element as an f64 product of the same rounded inputs, rounded to bf16.
    #[test]
    fn tiled_products_match_the_whole_product() {
        let (b, m, k, n) = (2usize, 300usize, 300usize, 290usize);
        let source = format!(
            "dim B = {b}\ndim M = {m}\ndim K = {k}\ndim N = {n}\n\
             input a : bf16[B, M, K]\ninput w : bf16[K, N]\ninput v : f16[N, K]\n\
             y = a @ w\nz = f16(a) @ transpose(v)\noutput y, z\n"
        );
        let program = tc_compiler::compile(&source, &Default::default()).expect("compiles");
        // The tiles really are smaller than the matrices.
        assert!(super::scratch_bytes(&program.plan) < k * n * 4);
        let a = HostTensor::from_f32(
            DType::BF16,
            vec![b as u64, m as u64, k as u64],
            &vals(b * m * k, 1),
        );
        let w = HostTensor::from_f32(DType::BF16, vec![k as u64, n as u64], &vals(k * n, 2));
        let v = HostTensor::from_f32(DType::F16, vec![n as u64, k as u64], &vals(n * k, 3));
        let (af, wf, vf) = (a.to_f32(), w.to_f32(), v.to_f32());
        let outs = super::super::run(&program.plan, &[a, w, v], &[]).expect("runs");
        let (y, z) = (outs[0].to_f32(), outs[1].to_f32());
        let a16: Vec<f32> = af
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        for bi in 0..b {
            for r in 0..m {
                for c in 0..n {
                    let (mut sy, mut sz) = (0f64, 0f64);
                    for kk in 0..k {
                        let at = (bi * m + r) * k + kk;
                        sy += af[at] as f64 * wf[kk * n + c] as f64;
                        sz += a16[at] as f64 * vf[c * k + kk] as f64;
                    }
                    let at = (bi * m + r) * n + c;
                    for (got, want, ulp) in [(y[at], sy, 1.0 / 128.0), (z[at], sz, 1.0 / 1024.0)] {
                        assert!(
                            (got as f64 - want).abs() <= ulp * want.abs() + 1e-3,
                            "[{bi}, {r}, {c}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The executor packs `B` into the plan's workspace only when it holds the product's
    /// packed `B`: a workspace a float short, or none, is an error (never memory written past
    /// a buffer), and the planned one gives the f64 product within f32 rounding.
    #[test]
    fn a_workspace_too_small_for_the_packed_b_is_an_error() {
        if !super::own::has_simd() {
            eprintln!("skipped: no AVX2+FMA, tc's GEMM does not run here");
            return;
        }
        let source = "input a : f32[48, 70]\ninput w : f32[70, 600]\ny = a @ w\noutput y\n";
        let program = tc_compiler::compile(source, &Default::default()).expect("compiles");
        let (af, wf) = (vals(48 * 70, 1), vals(70 * 600, 2));
        let inputs = [
            HostTensor::from_f32(DType::F32, vec![48, 70], &af),
            HostTensor::from_f32(DType::F32, vec![70, 600], &wf),
        ];
        let y = super::super::run(&program.plan, &inputs, &[]).expect("runs")[0].to_f32();
        for (i, &got) in y.iter().enumerate() {
            let (r, c) = (i / 600, i % 600);
            let want: f64 = (0..70)
                .map(|t| af[r * 70 + t] as f64 * wf[t * 600 + c] as f64)
                .sum();
            assert!(
                (got as f64 - want).abs() <= 1e-3,
                "[{r}, {c}]: {got} vs {want}"
            );
        }
        let ws = program
            .plan
            .buffers
            .iter()
            .position(|b| b.kind == tc_compiler::schedule::BufferKind::Workspace)
            .expect("the product's workspace");
        // 600 columns in blocks of 512: 70 rows of 512.
        assert_eq!(program.plan.buffers[ws].bytes, 70 * 512 * 4);
        let mut short = program.plan.clone();
        short.buffers[ws].bytes -= 4;
        short.buffers[ws].shape[0] -= 1;
        let e = super::super::run(&short, &inputs, &[]).expect_err("a short workspace runs");
        assert!(matches!(e, super::CpuError::BadPlan(_)), "{e}");
        assert!(e.to_string().contains("workspace"), "{e}");
        let mut none = program.plan.clone();
        for k in &mut none.kernels {
            if let tc_compiler::schedule::KernelKind::MatMul(mm) = &mut k.kind {
                mm.workspace = None;
            }
        }
        let e = super::super::run(&none, &inputs, &[]).expect_err("no workspace runs");
        assert!(e.to_string().contains("workspace"), "{e}");
    }

    /// Batched f32 products of matrices too small to share (24 of 96 × 64 × 80, 4-D batch)
    /// go to the gemm crate, with no workspace, and one of matrices large enough (2 of
    /// 260 × 256 × 260) to tc's GEMM with its packed `B`: each the same bytes in pools of 1,
    /// 2 and 3 threads, and within f32 rounding of the f64 product.
    #[test]
    fn batched_products_are_the_same_bits_whatever_the_thread_count() {
        let source = "input a : f32[6, 4, 96, 64]\ninput b : f32[6, 4, 64, 80]\n\
                      input c : f32[2, 260, 256]\ninput d : f32[2, 256, 260]\n\
                      y = a @ b\nz = c @ d\noutput y, z\n";
        let program = tc_compiler::compile(source, &Default::default()).expect("compiles");
        let mut products = Vec::new();
        for k in &program.plan.kernels {
            if let tc_compiler::schedule::KernelKind::MatMul(mm) = &k.kind {
                products.push((mm.nbatch(), mm.workspace.is_some()));
            }
        }
        products.sort();
        assert_eq!(products, [(2, true), (24, false)]);
        // (batch matrices, m, k, n) of y and z.
        let shapes = [(24usize, 96usize, 64usize, 80usize), (2, 260, 256, 260)];
        let mut operands = Vec::new();
        let mut inputs = Vec::new();
        for (i, &(nb, m, k, n)) in shapes.iter().enumerate() {
            let (a, b) = (vals(nb * m * k, 2 * i), vals(nb * k * n, 2 * i + 1));
            let lead: Vec<u64> = if i == 0 { vec![6, 4] } else { vec![2] };
            let dims = |r: usize, c: usize| -> Vec<u64> {
                lead.iter().copied().chain([r as u64, c as u64]).collect()
            };
            inputs.push(HostTensor::from_f32(DType::F32, dims(m, k), &a));
            inputs.push(HostTensor::from_f32(DType::F32, dims(k, n), &b));
            operands.push((a, b));
        }
        let one = same_bytes_at_thread_counts(&program.plan, &inputs, &[2, 3]);
        for (out, (&(nb, m, k, n), (a, b))) in one.iter().zip(shapes.iter().zip(&operands)) {
            let got = out.to_f32();
            for bi in 0..nb {
                for r in 0..m {
                    for c in 0..n {
                        let (mut sum, mut mag) = (0f64, 0f64);
                        for t in 0..k {
                            let p = a[(bi * m + r) * k + t] as f64 * b[(bi * k + t) * n + c] as f64;
                            sum += p;
                            mag += p.abs();
                        }
                        let g = got[(bi * m + r) * n + c] as f64;
                        let tol = mag * k as f64 * f32::EPSILON as f64 / 2.0;
                        assert!((g - sum).abs() <= tol, "[{bi}, {r}, {c}]: {g} vs {sum}");
                    }
                }
            }
        }
    }
}
