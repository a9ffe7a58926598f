//! tc's own matrix product on the CPU, f32-accumulated, BLIS-style: `C := A·B` or
//! `C := C + A·B` for strided `A` (`m × k`) and `B` (`k × n`) and a row-major `C` (row
//! stride `ldc`); an f16 or bf16 `B` is widened as it is packed (`gemm_of`), an `A` of any
//! kind comes through `AFrom`. `B` is packed, a column block of at most `nc` columns at a
//! time (the whole `k`), into the caller's buffer (on the executor's path, the product's
//! workspace in the plan's arena: `tc_compiler::schedule::cpu_packing_floats`), in panels
//! of `NR` = 16 columns, `k` cut into blocks of `KC`, every `KC × 16` block contiguous
//! (shared by the threads, packed once a column block); each task takes a block of rows
//! (and, where the rows are too few to share, of panels), packs its rows of `A` for one
//! `k` block into panels of `MR` = 6 rows (`KC × 6`, interleaved; a buffer per thread,
//! reused) and runs an AVX2+FMA micro-kernel of 6 × 16 (twelve accumulators) over them,
//! each `B` panel kept in L1 while the task's rows of `A` (in L2) stream past it. Where the
//! CPU has AVX-512 the whole tiles go two `A` panels by two `B` panels at a time through a
//! 512-bit micro-kernel of 12 × 32 (24 of the 32 registers; 105–110 GFLOP/s a core on Zen 4
//! against the 6 × 16 kernel's 94–100), the edge tiles through the 6 × 16 one.
//!
//! Every element of `C` is `c = fma(a_t, b_t, c)` for `t = 0, 1, …, k - 1` in order, from 0
//! (or from `C`'s value when accumulating): the micro-kernel starts each `k` block from what
//! the previous one stored (a store and a load of an f32 are exact), and rows or columns
//! past the matrix's edge are zeros in the packed copies, computed and thrown away. So the
//! result is the same bits whatever the blocking, the split over threads and the thread
//! count, and the scalar twin of the micro-kernel (used without AVX2+FMA, and by the
//! tests) gives the same bits as the vector one.
//!
//! A bf16 `A` times a bf16 `B` (`gemm_bf16`) goes through the same blocks and tasks with
//! both operands packed as bf16 pairs along `k` (`pairs`: half the bytes, blocks of 1024 of
//! `k`): there every element of `C` is the chain of `vdpbf16ps` steps over the pairs, by
//! that instruction (AVX512-BF16, two products a lane an instruction: twice the f32 rate),
//! by f32 FMAs where they give its bits, or by its scalar twin — the same bits on every
//! machine, whatever the blocking and threads.

use super::math::{self, Tier};
use rayon::prelude::*;
use std::cell::RefCell;
use tc_compiler::ir::DType;

mod pairs;
#[cfg(test)]
pub(crate) use pairs::dot as bf16_dot;
#[cfg(test)]
use pairs::has_dot as has_bf16_dot;

/// Rows of a micro-tile (of a packed panel of `A`).
pub const MR: usize = 6;
/// Columns of a micro-tile (of a packed panel of `B`): the planner's `CPU_GEMM_NR`.
pub const NR: usize = tc_compiler::schedule::CPU_GEMM_NR as usize;
/// The block of `k` a micro-kernel call sums: a `B` panel of `KC × NR` floats (32 KiB, the
/// L1's size: its lines stay while the `A` panels, `KC × MR`, 12 KiB each, pass). 128, 256
/// and 384 measured 0–15 % slower on one thread (one fewer pass over `C` per block too).
const KC: usize = 512;
/// Columns of a transposed `A` packed at once (`pack_a`).
const TB: usize = 8;
/// Rows of a task at most (a multiple of `MR`): its packed `A` block, `MC × KC` floats (288
/// KiB), stays in the 512 KiB L2 while every `B` panel of the `k` block meets it.
const MC: usize = tc_compiler::schedule::CPU_GEMM_MC as usize;
/// Tasks a thread, at least, where the work allows: a thread slowed by another process
/// leaves its last tasks to the others.
const TASKS_PER_THREAD: usize = 3;

/// A strided operand: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: an operand is only read, by the tasks of one `gemm` call, while the caller
// keeps it alive and unchanged (`gemm`'s contract).
unsafe impl Send for Operand {}
// SAFETY: as above.
unsafe impl Sync for Operand {}

/// Which micro-kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The widest the CPU runs (`Tier::best`): AVX-512, AVX2+FMA, else the scalar one.
    Best,
    /// The AVX2+FMA one (where the CPU has it; same bits). For bf16 pairs, the f32 steps.
    #[cfg_attr(not(test), allow(dead_code))]
    Avx2,
    /// The scalar twin (same bits).
    #[cfg_attr(not(test), allow(dead_code))]
    Scalar,
}

impl Kernel {
    /// The tier of instructions this kernel runs on this CPU.
    fn tier(self) -> Tier {
        match self {
            Kernel::Best => Tier::best(),
            Kernel::Avx2 => Tier::Avx2.min(Tier::hardware()),
            Kernel::Scalar => Tier::Base,
        }
    }

    fn simd(self) -> bool {
        self.tier() >= Tier::Avx2
    }
}

/// Whether this CPU runs the vector micro-kernel (the scalar twin is far slower than the
/// `gemm` crate: callers keep that crate where this is false).
pub fn has_simd() -> bool {
    Kernel::Best.simd()
}

thread_local! {
    /// This thread's packed `A` block (`MC × KC`; outside the plan: 288 KiB a thread).
    static A_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// This thread's block of a product never stored whole (`Finish::tile`; at most
    /// `MC × nc` floats, outside the plan: 288 KiB a thread for `CPU_GEMM_NC`).
    static C_TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// This thread's block of an `A` that is computed, not read (`AFrom`; at most `MC × KC`
    /// floats, outside the plan: 288 KiB a thread).
    static A_FROM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Where `A` comes from when it is computed rather than read (a product's prologue,
/// `cpu::prologue`): `f((r0, rows), (t0, kc), dst)` computes `A`'s rows `r0 .. r0 + rows`,
/// columns `t0 .. t0 + kc` into `dst` (`rows · kc` floats, the thread's own) and returns them
/// as an operand there; each task packs its block of `A` from that instead of from `a`.
/// Called from any of the pool's threads, for each task's rows and block of `k` once per
/// column block of `C`.
#[derive(Clone, Copy)]
pub struct AFrom<'a> {
    pub f: &'a FillA<'a>,
}

/// `AFrom::f`: `(rows of A, columns of A, the thread's buffer) → the block there`.
pub type FillA<'a> = dyn Fn((usize, usize), (usize, usize), &mut [f32]) -> Operand + Sync + 'a;

/// Floats of packed `B` that `gemm` needs for a `k × n` operand packed `nc` columns at a
/// time: the planner's formula (`cpu_packing_floats_in_blocks`), in `usize`.
pub fn packing_floats(n: usize, k: usize, nc: usize) -> usize {
    let floats = tc_compiler::schedule::cpu_packing_floats_in_blocks(n as u64, k as u64, nc as u64);
    usize::try_from(floats).unwrap_or(usize::MAX)
}

/// Runs `f` with this thread's buffer `key`, at least `len` floats (contents unspecified),
/// or a fresh one when it is in use (a product called from inside another's task).
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Work to run on each block of `C` as soon as its elements are final (after the last
/// block of `k`), on the thread that computed it while the block is still in that core's
/// cache (a fused kernel that consumes the product: `cpu::epilogue`). Every element of `C`
/// is in exactly one call; calls for different blocks may run at once on different threads.
#[derive(Clone, Copy)]
pub struct Finish<'a> {
    pub f: &'a (dyn Fn(Block) + Sync),
    /// Whether each call must cover whole rows (all `n` columns): a row kernel's.
    pub whole_rows: bool,
    /// `C` is never stored: each task computes its block in a buffer of its thread's own
    /// (`C_TILE`) and hands it to `f` there; `c` is not touched. Needs whole rows no wider
    /// than a column block where `whole_rows` (asserted).
    pub tile: bool,
}

/// A finished block of `C`: rows `r0 .. r0 + rows`, columns `c0 .. c0 + cols`, element
/// `(r0 + i, c0 + j)` at `at[i·ld + j]` (in `C`, or in the computing thread's tile).
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub r0: usize,
    pub rows: usize,
    pub c0: usize,
    pub cols: usize,
    pub at: *const f32,
    pub ld: usize,
}

/// `C := A·B`, or `C := C + A·B` when `accumulate` (each element the ordered fma sum over
/// `k`, from 0 or from `C`), for `A` `m × k`, `B` `k × n`, `C` `m × n` at row stride `ldc`
/// (columns contiguous). With `parallel`, the work is shared by the current rayon pool.
/// `B` is packed into `bp` `nc` columns at a time (rounded down to whole panels, at least
/// one): wider products are computed in column blocks, each packed in turn, `A` packed
/// again for each. `bp` holds at least `packing_floats(n, k, nc)` floats (asserted).
/// `finish`, if any, runs on each block of `C` once it is final: a task's block where it
/// can (whole rows when `whole_rows`: tasks then never split columns), else, for whole
/// rows of a product wider than `nc`, by blocks of rows after the last column block.
///
/// # Safety
/// `a` and `b` reach only readable f32s for every index in range; `C`'s `m` rows of `n`
/// elements at stride `ldc` are writable, owned by this call and distinct from `A` and `B`;
/// `finish` may run on any block of `C` once it is final, from any of the pool's threads.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    kernel: Kernel,
    bp: &mut [f32],
    nc: usize,
    finish: Option<Finish<'_>>,
    a_from: Option<AFrom<'_>>,
) {
    // SAFETY: forwarded (an f32 `B`).
    unsafe {
        gemm_of(
            m,
            n,
            k,
            a,
            b,
            DType::F32,
            c,
            ldc,
            accumulate,
            parallel,
            kernel,
            bp,
            nc,
            finish,
            a_from,
        )
    }
}

/// `gemm` with `B`'s elements of `b_dtype`: f32, or f16/bf16 widened to f32 as they are
/// packed (the operand's pointer then addresses 2-byte elements, its strides counted in
/// them), the same packing and so the same sums as the f32 product of the widened values.
///
/// # Safety
/// As `gemm`, `b` reaching readable, aligned elements of `b_dtype`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_of(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    b_dtype: DType,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    kernel: Kernel,
    bp: &mut [f32],
    nc: usize,
    finish: Option<Finish<'_>>,
    a_from: Option<AFrom<'_>>,
) {
    let ops = Operands::Floats {
        a,
        a_from,
        b,
        b_dtype,
    };
    // SAFETY: forwarded.
    unsafe {
        drive(
            m, n, k, ops, c, ldc, accumulate, parallel, kernel, bp, nc, finish,
        )
    }
}

/// `gemm` for a bf16 `A` and a bf16 `B` (each operand's pointer addressing 2-byte elements,
/// its strides counted in them), both packed as bf16 pairs along `k` (`pairs`): each
/// element of `C` the chain of `vdpbf16ps` steps over the pairs in order (`pairs::dot`,
/// from 0 or from `C`): by the instruction where the CPU has AVX512-BF16 and `kernel` is
/// `Best`, else (`Best` or `Avx2` with AVX2+FMA) by f32 FMAs where they give its bits, else
/// by its scalar twin — the same bits every way, whatever the blocking and the threads.
/// `bp` holds at least `packing_floats(n, k, nc)` (the pairs take half of it, rounded up).
/// With `a_from`, `A`'s blocks are computed (f32 values, each a bf16's) rather than read.
///
/// # Safety
/// As `gemm`, `a` (unless `a_from`) and `b` reaching readable, 2-byte aligned bf16
/// elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    kernel: Kernel,
    bp: &mut [f32],
    nc: usize,
    finish: Option<Finish<'_>>,
    a_from: Option<AFrom<'_>>,
) {
    // SAFETY: forwarded.
    unsafe {
        drive(
            m,
            n,
            k,
            Operands::Pairs { a, a_from, b },
            c,
            ldc,
            accumulate,
            parallel,
            kernel,
            bp,
            nc,
            finish,
        )
    }
}

/// What `drive` multiplies and how it packs it.
#[derive(Clone, Copy)]
enum Operands<'a> {
    /// An f32 `A` (or one computed, `a_from`) and a `B` of `b_dtype` widened to f32.
    Floats {
        a: Operand,
        a_from: Option<AFrom<'a>>,
        b: Operand,
        b_dtype: DType,
    },
    /// bf16 `A` (or one computed, `a_from`: f32 values of bf16s) and `B`, packed as pairs
    /// (`pairs`).
    Pairs {
        a: Operand,
        a_from: Option<AFrom<'a>>,
        b: Operand,
    },
}

/// The body of `gemm_of` and `gemm_bf16`: the column blocks, the packing of `B` and the
/// tasks.
///
/// # Safety
/// As `gemm_of` / `gemm_bf16`.
#[allow(clippy::too_many_arguments)]
unsafe fn drive(
    m: usize,
    n: usize,
    k: usize,
    ops: Operands<'_>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    kernel: Kernel,
    bp: &mut [f32],
    nc: usize,
    finish: Option<Finish<'_>>,
) {
    let (b, b_dtype) = match ops {
        Operands::Floats { b, b_dtype, .. } => (b, b_dtype),
        Operands::Pairs { b, .. } => (b, DType::BF16),
    };
    // The pairs' micro-kernel: `vdpbf16ps` (an AVX-512 instruction: not where
    // `TC_CPU_NO_AVX512` turns those off), the f32 steps where exact, or the twin.
    let mode = match kernel {
        Kernel::Best if pairs::has_dot() && kernel.tier() == Tier::Avx512 => pairs::Mode::Dot,
        Kernel::Best | Kernel::Avx2 if kernel.simd() => pairs::Mode::Fma,
        _ => pairs::Mode::Twin,
    };
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row `i` of C (the caller's promise).
                unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
            }
        }
        // An empty sum: zeros, `C`'s own or (in tiles) one row of them a row at a time.
        match finish {
            Some(fin) if fin.tile => {
                let zeros = vec![0f32; n];
                for r0 in 0..m {
                    (fin.f)(Block {
                        r0,
                        rows: 1,
                        c0: 0,
                        cols: n,
                        at: zeros.as_ptr(),
                        ld: n,
                    });
                }
            }
            Some(fin) => (fin.f)(Block {
                r0: 0,
                rows: m,
                c0: 0,
                cols: n,
                at: c.cast_const(),
                ld: ldc,
            }),
            None => {}
        }
        return;
    }
    let tier = kernel.tier();
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    // Column blocks of whole panels (at least one).
    let nc = (nc / NR).max(1) * NR;
    assert!(
        bp.len() >= packing_floats(n, k, nc),
        "a packing buffer of {} floats for {k} × {n} in blocks of {nc} columns",
        bp.len()
    );
    let c_addr = c as usize;
    // Whole rows wider than a column block are final only after the last block.
    let (per_task, after) = match finish {
        Some(fin) if fin.tile && accumulate => panic!("a product in tiles cannot accumulate"),
        Some(fin) if fin.whole_rows && n > nc => {
            assert!(!fin.tile, "whole rows of {n} columns in tiles of {nc}");
            (None, Some(fin))
        }
        fin => (fin, None),
    };
    for j0 in (0..n).step_by(nc) {
        let cols = nc.min(n - j0);
        let panels = cols.div_ceil(NR);
        let size = b_dtype.size() as isize;
        let b_blk = Operand {
            // SAFETY: column `j0` of B (in range).
            ptr: unsafe { b.ptr.cast::<u8>().offset(j0 as isize * b.cs * size).cast() },
            ..b
        };
        {
            let rows_packed = match ops {
                Operands::Pairs { .. } => k.div_ceil(2),
                Operands::Floats { .. } => k,
            };
            let bp = &mut bp[..rows_packed * panels * NR];
            // (Whether packed pairs are all `pairs::plain`.)
            let mut b_plain = false;
            match ops {
                Operands::Pairs { .. } => {
                    // SAFETY: the same memory read as bits (same size and alignment).
                    let bits = unsafe {
                        std::slice::from_raw_parts_mut(bp.as_mut_ptr().cast::<u32>(), bp.len())
                    };
                    let check = mode == pairs::Mode::Fma;
                    b_plain = pairs::pack_b(k, cols, b_blk, bits, threads > 1, check);
                }
                Operands::Floats { .. } if b_dtype == DType::F32 => {
                    pack_b(k, cols, b_blk, bp, threads > 1)
                }
                Operands::Floats { .. } => pack_b_half(k, cols, b_blk, b_dtype, bp, threads > 1),
            }
            let bp = &*bp;
            // SAFETY: columns j0.. of C, in range.
            let c_blk = (c_addr as *mut f32).wrapping_add(j0) as usize;
            let row_tasks = row_tasks(m, threads);
            let whole_rows = per_task.is_some_and(|f| f.whole_rows);
            let col_tasks = if row_tasks >= TASKS_PER_THREAD * threads || threads == 1 || whole_rows
            {
                1
            } else {
                (TASKS_PER_THREAD * threads)
                    .div_ceil(row_tasks)
                    .min(panels.div_ceil(4))
            };
            let per = panels.div_ceil(col_tasks);
            let col_tasks = panels.div_ceil(per);
            let task = |t: usize| {
                let (ri, ci) = (t / col_tasks, t % col_tasks);
                let (r0, rows) = task_rows(m, row_tasks, ri);
                let p0 = ci * per;
                let p1 = (p0 + per).min(panels);
                let (c0, c1) = (j0 + p0 * NR, j0 + (p1 * NR).min(cols));
                // SAFETY: the task's rows r0.. and panels p0..p1 are in range, and no other
                // task writes them.
                let compute = |at: *mut f32, ld: usize| unsafe {
                    match ops {
                        Operands::Floats { a, a_from, .. } => block(
                            (r0, rows),
                            (p0, p1, cols),
                            k,
                            (a, a_from),
                            bp,
                            at,
                            ld,
                            accumulate,
                            tier,
                        ),
                        Operands::Pairs { a, a_from, .. } => pairs::block(
                            (r0, rows),
                            (p0, p1, cols),
                            k,
                            (a, a_from),
                            (
                                std::slice::from_raw_parts(bp.as_ptr().cast::<u32>(), bp.len()),
                                b_plain,
                            ),
                            at,
                            ld,
                            accumulate,
                            mode,
                        ),
                    }
                };
                let done = |at: *const f32, ld: usize| {
                    if let Some(fin) = per_task {
                        (fin.f)(Block {
                            r0,
                            rows,
                            c0,
                            cols: c1 - c0,
                            at,
                            ld,
                        });
                    }
                };
                if per_task.is_some_and(|f| f.tile) {
                    // Whole panels wide (edge tiles store only their corner).
                    let ld = (p1 - p0) * NR;
                    with_buffer(&C_TILE, rows * ld, |t| {
                        compute(t.as_mut_ptr(), ld);
                        done(t.as_ptr(), ld);
                    });
                } else {
                    // SAFETY: row r0, column c0 of C (in range).
                    let at = unsafe { (c_blk as *mut f32).add(r0 * ldc + p0 * NR) };
                    compute(at, ldc);
                    done(at, ldc);
                }
            };
            let count = row_tasks * col_tasks;
            if threads > 1 && count > 1 {
                (0..count).into_par_iter().with_max_len(1).for_each(task);
            } else {
                (0..count).for_each(task);
            }
        }
    }
    if let Some(fin) = after {
        let tasks = row_tasks(m, threads);
        let rows_of = |t: usize| {
            let (r0, rows) = task_rows(m, tasks, t);
            (fin.f)(Block {
                r0,
                rows,
                c0: 0,
                cols: n,
                // SAFETY: row r0 of C (in range).
                at: unsafe { (c_addr as *const f32).add(r0 * ldc) },
                ld: ldc,
            })
        };
        if threads > 1 && tasks > 1 {
            (0..tasks).into_par_iter().with_max_len(1).for_each(rows_of);
        } else {
            (0..tasks).for_each(rows_of);
        }
    }
}

/// Row tasks for `threads` threads: at least `TASKS_PER_THREAD` a thread, enough that none
/// has more than `MC` rows, and a multiple of the threads, so that with tasks of equal size
/// (`task_rows`) each thread gets the same share (with 1024 rows, eight tasks of 126–132
/// rows rather than seven of 144 and one of 16, which left one thread a task ahead).
fn row_tasks(m: usize, threads: usize) -> usize {
    let tiles = m.div_ceil(MR);
    let want = if threads > 1 {
        TASKS_PER_THREAD * threads
    } else {
        1
    };
    let tasks = want
        .max(tiles.div_ceil(MC / MR))
        .next_multiple_of(threads.max(1));
    tasks.min(tiles)
}

/// Rows of row task `t` of `tasks` (`row_tasks`): the micro-tiles of `MR` rows shared out
/// as evenly as they go (counts differing by at most one), the last tile cut at `m`.
fn task_rows(m: usize, tasks: usize, t: usize) -> (usize, usize) {
    let tiles = m.div_ceil(MR);
    let (q0, q1) = (t * tiles / tasks, (t + 1) * tiles / tasks);
    let r0 = q0 * MR;
    (r0, (q1 * MR).min(m) - r0)
}

/// `B`'s `k × cols` packed into `dst`: for each block of `KC` rows starting at `t0`, for
/// each panel `p`, the `kc × NR` block at `t0·NR·panels + p·kc·NR`, row by row, columns past
/// `cols` zero.
fn pack_b(k: usize, cols: usize, b: Operand, dst: &mut [f32], parallel: bool) {
    let panels = cols.div_ceil(NR);
    let base = dst.as_mut_ptr() as usize;
    let b_addr = b.ptr as usize;
    // A unit of work: one block of `KC` rows, `GROUP` panels of it (row-contiguous reads of
    // B where its columns are contiguous).
    const GROUP: usize = 8;
    let groups = panels.div_ceil(GROUP);
    let one = |u: usize| {
        let (t0, g) = ((u / groups) * KC, u % groups);
        let kc = KC.min(k - t0);
        let (pg0, pg1) = (g * GROUP, (g * GROUP + GROUP).min(panels));
        if b.cs == 1 && pg1 * NR <= cols {
            // Whole panels of row-contiguous B: row by row, each row's `GROUP · NR`
            // contiguous floats to their panels (one sequential read stream).
            let src = b_addr as *const f32;
            for t in 0..kc {
                // SAFETY: row t0 + t, columns pg0·NR .. pg1·NR of B (in range), and each
                // panel's row `t` of this block inside `dst`, written by this unit alone.
                unsafe {
                    let row = src.offset((t0 + t) as isize * b.rs);
                    for p in pg0..pg1 {
                        let o = (base as *mut f32).add(t0 * NR * panels + p * kc * NR + t * NR);
                        o.cast::<[f32; NR]>()
                            .write_unaligned(row.add(p * NR).cast::<[f32; NR]>().read_unaligned());
                    }
                }
            }
            return;
        }
        for p in pg0..pg1 {
            let c0 = p * NR;
            let w = NR.min(cols - c0);
            // SAFETY: inside `dst` (k·panels·NR floats), each panel's block written by one
            // unit.
            let out = unsafe { (base as *mut f32).add(t0 * NR * panels + p * kc * NR) };
            let src = b_addr as *const f32;
            // SAFETY: every (t, c) read is inside B (the caller's promise).
            unsafe {
                if b.cs == 1 {
                    for t in 0..kc {
                        let row = src.offset((t0 + t) as isize * b.rs + c0 as isize);
                        let o = out.add(t * NR);
                        if w == NR {
                            // A fixed-size copy: vector moves, not a call.
                            o.cast::<[f32; NR]>()
                                .write_unaligned(row.cast::<[f32; NR]>().read_unaligned());
                        } else {
                            std::ptr::copy_nonoverlapping(row, o, w);
                            std::ptr::write_bytes(o.add(w), 0, NR - w);
                        }
                    }
                } else if b.rs == 1 && w == NR && transpose::available() {
                    // A transposed B (a weight's gradient, `x @ transpose(w)`): each
                    // column's run of `kc` floats is contiguous, transposed 8 × 8 at a time.
                    let col = |j: usize| src.offset((c0 + j) as isize * b.cs + t0 as isize);
                    let whole = kc / 8 * 8;
                    for t in (0..whole).step_by(8) {
                        for j in (0..NR).step_by(8) {
                            transpose::block8(col(j).add(t), b.cs, out.add(t * NR + j), NR);
                        }
                    }
                    for t in whole..kc {
                        for j in 0..NR {
                            *out.add(t * NR + j) = *col(j).add(t);
                        }
                    }
                } else {
                    for j in 0..NR {
                        if j < w {
                            let col = src.offset((c0 + j) as isize * b.cs + t0 as isize * b.rs);
                            for t in 0..kc {
                                *out.add(t * NR + j) = *col.offset(t as isize * b.rs);
                            }
                        } else {
                            for t in 0..kc {
                                *out.add(t * NR + j) = 0.0;
                            }
                        }
                    }
                }
            }
        }
    };
    let units = k.div_ceil(KC) * groups;
    if parallel && units > 1 {
        (0..units).into_par_iter().for_each(one);
    } else {
        (0..units).for_each(one);
    }
}

/// 8 × 8 transposes of f32 blocks, for packing a transposed `B` (`pack_b`).
mod transpose {
    /// Whether `block8` may run: AVX on x86-64 (`has_simd`'s CPUs have it), never
    /// elsewhere.
    pub(super) fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("avx");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Writes the 8 × 8 block whose row `i` is the 8 floats at `src + i·src_stride` to
    /// `dst` transposed: `dst[j·dst_stride + i] = src[i·src_stride + j]`.
    ///
    /// # Safety
    /// `available()`; the 64 floats read and the 64 written are in bounds, and the two
    /// blocks do not overlap.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn block8(
        src: *const f32,
        src_stride: isize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        use std::arch::x86_64::*;
        // SAFETY: in bounds by the caller's contract; unaligned loads and stores.
        unsafe {
            let r = |i: isize| _mm256_loadu_ps(src.offset(i * src_stride));
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
            // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves.
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let w = |j: usize, v: __m256| _mm256_storeu_ps(dst.add(j * dst_stride), v);
            w(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
            w(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
            w(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
            w(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
            w(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
            w(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
            w(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
            w(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
        }
    }

    /// Never called: `available()` is false off x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn block8(_: *const f32, _: isize, _: *mut f32, _: usize) {
        unreachable!("no transposes off x86-64")
    }
}

/// `dst[j·ld_dst + i] = src[i·ld_src + j]` for `i < rows`, `j < cols`: a block of a
/// row-major matrix written transposed (8 × 8 blocks through `transpose::block8` where the
/// CPU has AVX, the edges element by element). Panics where a slice is too short.
pub fn transpose_into(
    src: &[f32],
    ld_src: usize,
    (rows, cols): (usize, usize),
    dst: &mut [f32],
    ld_dst: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        cols <= ld_src
            && rows <= ld_dst
            && src.len() >= (rows - 1) * ld_src + cols
            && dst.len() >= (cols - 1) * ld_dst + rows
    );
    let (r8, c8) = if transpose::available() {
        (rows / 8 * 8, cols / 8 * 8)
    } else {
        (0, 0)
    };
    for i in (0..r8).step_by(8) {
        for j in (0..c8).step_by(8) {
            // SAFETY: rows i..i + 8 and columns j..j + 8 of `src`, rows j..j + 8 and
            // columns i..i + 8 of `dst` (in range: asserted), distinct slices; AVX present.
            unsafe {
                let from = src.as_ptr().add(i * ld_src + j);
                let to = dst.as_mut_ptr().add(j * ld_dst + i);
                transpose::block8(from, ld_src as isize, to, ld_dst);
            }
        }
    }
    for i in 0..rows {
        let first = if i < r8 { c8 } else { 0 };
        for j in first..cols {
            dst[j * ld_dst + i] = src[i * ld_src + j];
        }
    }
}

/// `pack_b` for an f16 or bf16 `B` (`dtype`), widened to f32 as it is packed: the same
/// layout, each row's run of a panel group converted at once (`half`'s vector f16
/// conversion, a shift for bf16) where the columns are contiguous.
fn pack_b_half(k: usize, cols: usize, b: Operand, dtype: DType, dst: &mut [f32], parallel: bool) {
    let b_addr = b.ptr as usize;
    pack_rows(k, KC, cols, dst, parallel, |t, (c0, c1), row| {
        let src = b_addr as *const u16;
        // SAFETY: row `t < k`, columns `c0 .. c1` of B (in range, the caller's promise).
        let at = |c: usize| unsafe { *src.offset(t as isize * b.rs + c as isize * b.cs) };
        if b.cs == 1 {
            // SAFETY: as above: `c1 - c0` contiguous elements.
            let run = unsafe {
                std::slice::from_raw_parts(src.offset(t as isize * b.rs + c0 as isize), c1 - c0)
            };
            math::widen_halves(dtype, run, row);
        } else {
            for (j, x) in row.iter_mut().enumerate() {
                math::widen_halves(dtype, &[at(c0 + j)], std::slice::from_mut(x));
            }
        }
    });
}

/// The frame of a packing of `B` made row by row (`pack_b_half`, `pairs::pack_b`): `rows`
/// packed rows of `cols` columns into `dst`, for each block of `block` rows starting at
/// `t0`, for each panel `p`, the `kb × NR` block at `t0·NR·panels + p·kb·NR`, row by row,
/// columns past `cols` zero. `fill(t, (c0, c1), row)` writes row `t`'s columns `c0 .. c1`
/// into `row`; units of a block of rows by `GROUP` panels (row-contiguous reads of `B` where
/// its columns are contiguous) go to the pool with `parallel`.
fn pack_rows<T: Copy + Default + Send>(
    rows: usize,
    block: usize,
    cols: usize,
    dst: &mut [T],
    parallel: bool,
    fill: impl Fn(usize, (usize, usize), &mut [T]) + Sync,
) {
    const GROUP: usize = 8;
    let panels = cols.div_ceil(NR);
    let groups = panels.div_ceil(GROUP);
    let base = dst.as_mut_ptr() as usize;
    let one = |u: usize| {
        let (t0, g) = ((u / groups) * block, u % groups);
        let kb = block.min(rows - t0);
        let (pg0, pg1) = (g * GROUP, (g * GROUP + GROUP).min(panels));
        let (c0, c1) = (pg0 * NR, (pg1 * NR).min(cols));
        let mut row = [T::default(); GROUP * NR];
        for t in 0..kb {
            fill(t0 + t, (c0, c1), &mut row[..c1 - c0]);
            row[c1 - c0..].fill(T::default());
            for p in pg0..pg1 {
                // SAFETY: each panel's row `t` of this block inside `dst`, written by this
                // unit alone.
                unsafe {
                    let o = (base as *mut T).add(t0 * NR * panels + p * kb * NR + t * NR);
                    o.cast::<[T; NR]>().write_unaligned(
                        row.as_ptr()
                            .add((p - pg0) * NR)
                            .cast::<[T; NR]>()
                            .read_unaligned(),
                    );
                }
            }
        }
    };
    let units = rows.div_ceil(block) * groups;
    if parallel && units > 1 {
        (0..units).into_par_iter().for_each(one);
    } else {
        (0..units).for_each(one);
    }
}

/// `A`'s rows `r0 .. r0 + rows`, columns `t0 .. t0 + kc`, packed into `dst`: panel `q` (rows
/// `r0 + MR·q ..`) at `q·kc·MR`, element `(r, t)` at `t·MR + r`, rows past `rows` zero.
///
/// # Safety
/// Every element read is inside `A`.
unsafe fn pack_a(
    a: Operand,
    (r0, rows): (usize, usize),
    (t0, kc): (usize, usize),
    dst: &mut [f32],
) {
    // A transposed (`xᵀ @ dy`, a weight's gradient): the panels' rows are contiguous in
    // each column, and the columns are far apart (4 KiB and more: one set of the first
    // cache). A panel at a time reads each column's lines again for every panel, after
    // the other columns have evicted them; so the whole panels go `TB` columns at a time,
    // whose lines stay (one set holds eight) while every panel takes its `TB·MR` floats.
    let mut first = 0;
    if a.rs == 1 && a.cs != 1 {
        let whole = rows / MR;
        // SAFETY: row r0, column t0 of A (in range).
        let src = unsafe { a.ptr.offset(r0 as isize + t0 as isize * a.cs) };
        for tb in (0..kc).step_by(TB) {
            let tn = TB.min(kc - tb);
            for q in 0..whole {
                for t in tb..tb + tn {
                    // SAFETY: rows r0 + q·MR .. + MR of column t0 + t, contiguous, are in A.
                    let x = unsafe {
                        std::slice::from_raw_parts(
                            src.offset(t as isize * a.cs + (q * MR) as isize),
                            MR,
                        )
                    };
                    let at = q * kc * MR + t * MR;
                    dst[at..at + MR].copy_from_slice(x);
                }
            }
        }
        first = whole;
    }
    for q in first..rows.div_ceil(MR) {
        let h = MR.min(rows - q * MR);
        let out = &mut dst[q * kc * MR..(q + 1) * kc * MR];
        // SAFETY: row r0 + q·MR, column t0 of A (in range).
        let src = unsafe {
            a.ptr
                .offset((r0 + q * MR) as isize * a.rs + t0 as isize * a.cs)
        };
        if a.cs == 1 && h == MR {
            // SAFETY: the panel's rows hold kc elements each.
            let rows: [&[f32]; MR] = std::array::from_fn(|r| unsafe {
                std::slice::from_raw_parts(src.offset(r as isize * a.rs), kc)
            });
            for (t, o) in out.chunks_exact_mut(MR).enumerate() {
                for r in 0..MR {
                    o[r] = rows[r][t];
                }
            }
        } else if a.cs == 1 {
            for r in 0..h {
                // SAFETY: row r's kc elements are in A.
                let row = unsafe { std::slice::from_raw_parts(src.offset(r as isize * a.rs), kc) };
                for (t, &x) in row.iter().enumerate() {
                    out[t * MR + r] = x;
                }
            }
        } else {
            for t in 0..kc {
                for r in 0..h {
                    // SAFETY: (r, t) is in A.
                    out[t * MR + r] = unsafe { *src.offset(r as isize * a.rs + t as isize * a.cs) };
                }
            }
        }
        if h < MR {
            for t in 0..kc {
                out[t * MR + h..(t + 1) * MR].fill(0.0);
            }
        }
    }
}

/// One task: rows `r0 .. r0 + rows` of `C` and its panels `p0 .. p1` (of a column block
/// `cols` wide), over the whole `k`, `B` packed in `bp` (`pack_b`).
///
/// # Safety
/// As `gemm`; `c` is the task's first element (row `r0`, the column of panel `p0`), rows
/// `ldc` apart, and this task alone writes its part.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    (r0, rows): (usize, usize),
    (p0, p1, cols): (usize, usize, usize),
    k: usize,
    (a, a_from): (Operand, Option<AFrom<'_>>),
    bp: &[f32],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    tier: Tier,
) {
    let simd = tier >= Tier::Avx2;
    let panels = cols.div_ceil(NR);
    with_buffer(&A_PACK, MC * KC, |ap| {
        for t0 in (0..k).step_by(KC) {
            let kc = KC.min(k - t0);
            match a_from {
                // The block computed into this thread's buffer, then packed from there.
                Some(from) => with_buffer(&A_FROM, rows * kc, |src| {
                    let op = (from.f)((r0, rows), (t0, kc), src);
                    // SAFETY: `f` put the block's `rows × kc` elements where `op` says.
                    unsafe { pack_a(op, (0, rows), (0, kc), ap) }
                }),
                // SAFETY: the rows and columns are inside A.
                None => unsafe { pack_a(a, (r0, rows), (t0, kc), ap) },
            }
            let load = accumulate || t0 > 0;
            #[cfg(target_arch = "x86_64")]
            if tier == Tier::Avx512 {
                // The whole tiles two panels of `B` by two of `A` (12 × 32) at a time, a
                // last odd panel or tile in a narrower group; edge tiles (past `cols` or
                // `rows`) below, one at a time.
                let full_p = p0.max(p1.min(cols / NR));
                let full_q = rows / MR;
                let bbase = t0 * NR * panels;
                let mut p = p0;
                while p < full_p {
                    let np = if p + 1 < full_p { 2 } else { 1 };
                    let bpan = &bp[bbase + p * kc * NR..][..np * kc * NR];
                    let mut q = 0;
                    while q < full_q {
                        let nq = if q + 1 < full_q { 2 } else { 1 };
                        let apan = &ap[q * kc * MR..][..nq * kc * MR];
                        // SAFETY: the tiles (rows r0 + q·MR .. + nq·MR, columns
                        // p·NR .. + np·NR) are whole and in C; AVX-512 is present (`tier`).
                        unsafe {
                            let ct = c.add(q * MR * ldc + (p - p0) * NR);
                            let args = (kc, apan.as_ptr(), bpan.as_ptr(), ct, ldc, load);
                            match (nq, np) {
                                (2, 2) => avx512::micro::<2, 2>(args),
                                (2, _) => avx512::micro::<2, 1>(args),
                                (_, 2) => avx512::micro::<1, 2>(args),
                                _ => avx512::micro::<1, 1>(args),
                            }
                        }
                        q += nq;
                    }
                    p += np;
                }
                // The edge tiles: the rows past the whole tiles in the whole panels, then
                // every tile of the panels past them.
                let none = Hint {
                    c: std::ptr::null(),
                    b: std::ptr::null(),
                };
                for p in p0..p1 {
                    let bpan = &bp[bbase + p * kc * NR..][..kc * NR];
                    let w = NR.min(cols - p * NR);
                    let first = if p < full_p { full_q } else { 0 };
                    for q in first..rows.div_ceil(MR) {
                        let apan = &ap[q * kc * MR..][..kc * MR];
                        let h = MR.min(rows - q * MR);
                        // SAFETY: the tile's `h × w` corner is in C (rows r0 + q·MR ..,
                        // columns p·NR ..); AVX2 and FMA are present (`tier`).
                        unsafe {
                            let ct = c.add(q * MR * ldc + (p - p0) * NR);
                            edge_tile(kc, apan, bpan, (ct, ldc), (h, w), load, none, true)
                        };
                    }
                }
                continue;
            }
            for p in p0..p1 {
                let bpan = &bp[t0 * NR * panels + p * kc * NR..][..kc * NR];
                let w = NR.min(cols - p * NR);
                let tiles = rows.div_ceil(MR);
                for q in 0..tiles {
                    let h = MR.min(rows - q * MR);
                    let apan = &ap[q * kc * MR..][..kc * MR];
                    // SAFETY: the tile (rows r0 + q·MR .., columns p·NR ..) is in C.
                    let ct = unsafe { c.add(q * MR * ldc + (p - p0) * NR) };
                    // Cache hints: the next tile of C (this panel's next rows, or the next
                    // panel's first), and with the panel's first tile the next B panel.
                    let hint = Hint {
                        c: if q + 1 < tiles {
                            ct.wrapping_add(MR * ldc)
                        } else {
                            c.wrapping_add((p + 1 - p0) * NR)
                        },
                        b: if q == 0 && p + 1 < p1 {
                            bp.as_ptr()
                                .wrapping_add(t0 * NR * panels + (p + 1) * kc * NR)
                        } else {
                            std::ptr::null()
                        },
                    };
                    if h == MR && w == NR {
                        // SAFETY: a whole 6 × 16 tile of C.
                        unsafe { micro(kc, apan, bpan, (ct, ldc), load, hint, simd) };
                    } else {
                        // SAFETY: the tile's `h × w` corner is in C.
                        unsafe { edge_tile(kc, apan, bpan, (ct, ldc), (h, w), load, hint, simd) };
                    }
                }
            }
        }
    });
}

/// An edge tile (its `h × w` corner of `C` at `ct`, short of a whole `MR × NR` tile)
/// through a whole one: copied into a whole tile, the micro-kernel, copied back.
///
/// # Safety
/// As `micro`, for the `h × w` corner of the tile at `ct` rather than the whole of it.
#[allow(clippy::too_many_arguments)]
unsafe fn edge_tile(
    kc: usize,
    apan: &[f32],
    bpan: &[f32],
    (ct, ldc): (*mut f32, usize),
    (h, w): (usize, usize),
    load: bool,
    hint: Hint,
    simd: bool,
) {
    let mut tmp = [0f32; MR * NR];
    for i in 0..h {
        for j in 0..w {
            if load {
                // SAFETY: (i, j) is in the tile.
                tmp[i * NR + j] = unsafe { *ct.add(i * ldc + j) };
            }
        }
    }
    // SAFETY: `tmp` is a whole tile at stride NR.
    unsafe { micro(kc, apan, bpan, (tmp.as_mut_ptr(), NR), load, hint, simd) };
    for i in 0..h {
        for j in 0..w {
            // SAFETY: as above.
            unsafe { *ct.add(i * ldc + j) = tmp[i * NR + j] };
        }
    }
}

/// Addresses the micro-kernel asks the cache for while it runs (hints only, never read:
/// they may point past the matrices): the next tile of C (`ldc` apart rows), and, unless
/// null, a `B` panel (`kc` rows of 64 bytes, one a step).
#[derive(Clone, Copy)]
struct Hint {
    c: *const f32,
    b: *const f32,
}

/// The 6 × 16 tile `c` (row stride `c.1`) `:=` (or, with `load`, `+=`) the packed `a`
/// panel times the packed `b` panel, each element an ordered fma sum.
///
/// # Safety
/// `c` holds a whole 6 × 16 tile at its stride.
#[inline]
unsafe fn micro(
    kc: usize,
    a: &[f32],
    b: &[f32],
    (c, ldc): (*mut f32, usize),
    load: bool,
    hint: Hint,
    simd: bool,
) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` only where the CPU has AVX2 and FMA; the rest is forwarded.
        unsafe {
            if hint.b.is_null() {
                avx2::micro::<false>(kc, a.as_ptr(), b.as_ptr(), c, ldc, load, hint)
            } else {
                avx2::micro::<true>(kc, a.as_ptr(), b.as_ptr(), c, ldc, load, hint)
            }
        };
        return;
    }
    let _ = (simd, hint);
    for i in 0..MR {
        for j in 0..NR {
            // SAFETY: (i, j) is in the tile.
            let ci = unsafe { c.add(i * ldc + j) };
            let mut s = if load { unsafe { *ci } } else { 0.0 };
            for t in 0..kc {
                s = a[t * MR + i].mul_add(b[t * NR + j], s);
            }
            // SAFETY: as above.
            unsafe { *ci = s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Hint, MR, NR};
    use std::arch::x86_64::*;

    /// The vector micro-kernel: twelve accumulators, per step two loads of `B` and six
    /// broadcasts of `A`; with `PF`, a prefetch of one row of `hint.b` a step.
    ///
    /// # Safety
    /// AVX2 and FMA are present; `a` holds `kc·MR` floats, `b` `kc·NR`, `c` a 6 × 16 tile.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro<const PF: bool>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        load: bool,
        hint: Hint,
    ) {
        // SAFETY (whole body): within the ranges of the contract; prefetches read nothing.
        unsafe {
            for r in 0..MR {
                let row = hint.c.wrapping_add(r * ldc).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T0>(row);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(60));
            }
            let mut lo = [_mm256_setzero_ps(); MR];
            let mut hi = [_mm256_setzero_ps(); MR];
            if load {
                for r in 0..MR {
                    lo[r] = _mm256_loadu_ps(c.add(r * ldc));
                    hi[r] = _mm256_loadu_ps(c.add(r * ldc + 8));
                }
            }
            let mut pf = hint.b.cast::<i8>();
            let (mut a, mut b) = (a, b);
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for r in 0..MR {
                    let x = _mm256_broadcast_ss(&*a.add(r));
                    lo[r] = _mm256_fmadd_ps(x, b0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(x, b1, hi[r]);
                }
                if PF {
                    _mm_prefetch::<_MM_HINT_T0>(pf);
                    pf = pf.wrapping_add(NR * 4);
                }
                a = a.add(MR);
                b = b.add(NR);
            }
            for r in 0..MR {
                _mm256_storeu_ps(c.add(r * ldc), lo[r]);
                _mm256_storeu_ps(c.add(r * ldc + 8), hi[r]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// The 512-bit micro-kernel: `QA` packed panels of `A` (6 rows each, `kc·MR` apart) by
    /// `PB` packed panels of `B` (16 columns each, `kc·NR` apart), one vector a row and panel
    /// (at most 24 accumulators of the 32 registers), each broadcast of `A` feeding `PB`
    /// multiply-adds; every element the same ordered fma sum as the 6 × 16 kernels.
    ///
    /// # Safety
    /// AVX-512 F/VL/DQ/BW, AVX2 and FMA are present; `a` holds `QA·kc·MR` floats, `b`
    /// `PB·kc·NR`, `c` a whole `QA·6 × PB·16` tile at stride `ldc`.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    #[allow(clippy::needless_range_loop)] // rows and panels index the accumulators alike
    pub(super) unsafe fn micro<const QA: usize, const PB: usize>(
        (kc, a, b, c, ldc, load): (usize, *const f32, *const f32, *mut f32, usize, bool),
    ) {
        // SAFETY (whole body): within the ranges of the contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; 2 * MR];
            if load {
                for r in 0..QA * MR {
                    for q in 0..PB {
                        acc[r][q] = _mm512_loadu_ps(c.add(r * ldc + q * NR));
                    }
                }
            }
            let (astride, bstride) = (kc * MR, kc * NR);
            let (mut a, mut b) = (a, b);
            for _ in 0..kc {
                let mut bv = [_mm512_setzero_ps(); 2];
                for (q, x) in bv.iter_mut().enumerate().take(PB) {
                    *x = _mm512_loadu_ps(b.add(q * bstride));
                }
                for qa in 0..QA {
                    for r in 0..MR {
                        let x = _mm512_set1_ps(*a.add(qa * astride + r));
                        for q in 0..PB {
                            acc[qa * MR + r][q] = _mm512_fmadd_ps(x, bv[q], acc[qa * MR + r][q]);
                        }
                    }
                }
                a = a.add(MR);
                b = b.add(NR);
            }
            for r in 0..QA * MR {
                for q in 0..PB {
                    _mm512_storeu_ps(c.add(r * ldc + q * NR), acc[r][q]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `product(kernel, c, packed_b, nc)` from `c0` on 1, 2, 3 and 5 threads (B
    /// packed whole or in blocks of two panels, alternately, the first `skip` of those runs
    /// left out), with every micro-kernel, and asserts each gives `want` bit for bit.
    fn every_run_gives(
        c0: &[f32],
        want: &[f32],
        (n, k): (usize, usize),
        skip: usize,
        what: &str,
        product: impl Fn(Kernel, *mut f32, &mut [f32], usize) + Sync,
    ) {
        let widths = [usize::MAX, 2 * NR];
        let runs = [1, 2, 3, 5].into_iter().zip(widths.into_iter().cycle());
        for (threads, nc) in runs.skip(skip) {
            for kernel in [Kernel::Best, Kernel::Avx2, Kernel::Scalar] {
                let mut c = c0.to_vec();
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                let cp = c.as_mut_ptr() as usize;
                let mut bp = vec![f32::NAN; packing_floats(n, k, nc)];
                pool.install(|| product(kernel, cp as *mut f32, &mut bp, nc));
                for (x, (g, w)) in c.iter().zip(want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{what} {threads} threads {kernel:?}: element {x}"
                    );
                }
            }
        }
    }

    /// A transposed `B` (rows contiguous down its columns) packs as the element-by-element
    /// path packs it: whole 8 × 8 transposes, the rows of `k` past the last whole eight,
    /// blocks of `KC`, and partial panels (which take the element path).
    /// `transpose_into` writes each element transposed, through whole 8 × 8 blocks and the
    /// rows and columns past them, and nothing past the block in `dst`.
    #[test]
    fn transpose_into_writes_the_transposed_block() {
        for (rows, cols) in [
            (0, 5),
            (1, 1),
            (7, 9),
            (8, 8),
            (17, 30),
            (128, 128),
            (33, 8),
        ] {
            let (ld_src, ld_dst) = (cols + 3, rows + 5);
            let src: Vec<f32> = (0..rows.max(1) * ld_src).map(|x| x as f32).collect();
            let mut dst = vec![-1.0f32; cols.max(1) * ld_dst];
            transpose_into(&src, ld_src, (rows, cols), &mut dst, ld_dst);
            for j in 0..cols.max(1) {
                for i in 0..ld_dst {
                    let want = if i < rows && j < cols {
                        src[i * ld_src + j]
                    } else {
                        -1.0
                    };
                    assert_eq!(dst[j * ld_dst + i], want, "{rows} × {cols}: ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn a_transposed_b_packs_as_element_by_element() {
        for (k, cols) in [
            (8, NR),
            (37, 3 * NR),
            (KC + 13, 2 * NR + 5),
            (2 * KC, NR * 9),
        ] {
            // B is k × cols, held column by column with 3 floats of padding per column.
            let ld = k + 3;
            let data: Vec<f32> = (0..cols * ld).map(|i| i as f32 * 0.5 - 7.0).collect();
            let b = Operand {
                ptr: data.as_ptr(),
                rs: 1,
                cs: ld as isize,
            };
            let mut got = vec![f32::NAN; packing_floats(cols, k, usize::MAX)];
            pack_b(k, cols, b, &mut got, true);
            let panels = cols.div_ceil(NR);
            for t0 in (0..k).step_by(KC) {
                let kc = KC.min(k - t0);
                for p in 0..panels {
                    for t in 0..kc {
                        for j in 0..NR {
                            let (row, col) = (t0 + t, p * NR + j);
                            let want = if col < cols {
                                data[col * ld + row]
                            } else {
                                0.0
                            };
                            let at = t0 * NR * panels + p * kc * NR + t * NR + j;
                            assert_eq!(
                                got[at].to_bits(),
                                want.to_bits(),
                                "k {k} cols {cols} ({row}, {col})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `pack_a` gives panel `q`'s element `(r, t)` at `q·kc·MR + t·MR + r`, zero past the
    /// rows, whatever `A`'s layout: rows contiguous (`cs = 1`), transposed (`rs = 1`, the
    /// columns packed `TB` at a time), or neither; whole and partial panels, `kc` not a
    /// multiple of `TB`, an offset block.
    #[test]
    fn a_packs_as_element_by_element_in_every_layout() {
        for (rows, kc) in [
            (MR, 1),
            (4 * MR, TB + 3),
            (MC, KC),
            (5 * MR + 4, 2 * TB),
            (3, 7),
        ] {
            let (m, k) = (rows + 5, kc + 9);
            let (r0, t0) = (2, 5);
            let data = values(3 * m * k + 64, rows as u64 + kc as u64);
            for (rs, cs) in [(k as isize, 1), (1, m as isize), (2 * k as isize, 2)] {
                let a = Operand {
                    ptr: data.as_ptr(),
                    rs,
                    cs,
                };
                let mut got = vec![f32::NAN; rows.div_ceil(MR) * MR * kc];
                // SAFETY: every (r, t) read is inside `data` (`rs·(m-1) + cs·(k-1)` is).
                unsafe { pack_a(a, (r0, rows), (t0, kc), &mut got) };
                for q in 0..rows.div_ceil(MR) {
                    for t in 0..kc {
                        for r in 0..MR {
                            let row = q * MR + r;
                            let want = if row < rows {
                                data[(r0 + row) * rs as usize + (t0 + t) * cs as usize]
                            } else {
                                0.0
                            };
                            let at = q * kc * MR + t * MR + r;
                            assert_eq!(
                                got[at].to_bits(),
                                want.to_bits(),
                                "rows {rows} kc {kc} rs {rs} cs {cs}: ({row}, {t})"
                            );
                        }
                    }
                }
            }
        }
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// The row tasks cover the rows once, in order, none over `MC` rows, their sizes within
    /// one micro-tile of each other, and (where there are enough tiles) as many for each
    /// thread.
    #[test]
    fn row_tasks_share_the_rows_evenly() {
        for threads in [1, 2, 3, 4, 8] {
            for m in (1..400).chain([1000, 1024, 2048, 4096, 8192]) {
                let tasks = row_tasks(m, threads);
                let mut next = 0;
                let (mut least, mut most) = (usize::MAX, 0);
                for t in 0..tasks {
                    let (r0, rows) = task_rows(m, tasks, t);
                    assert_eq!(r0, next, "m {m} threads {threads} task {t}");
                    assert!(
                        rows > 0 && rows <= MC && r0 % MR == 0,
                        "m {m} task {t}: {rows}"
                    );
                    next = r0 + rows;
                    if next < m {
                        (least, most) = (least.min(rows), most.max(rows));
                    }
                }
                assert_eq!(next, m, "m {m} threads {threads}");
                assert!(most == 0 || most - least <= MR, "m {m}: {least}..{most}");
                if m.div_ceil(MR) >= TASKS_PER_THREAD * threads {
                    assert_eq!(tasks % threads, 0, "m {m} threads {threads}: {tasks} tasks");
                }
            }
        }
    }

    /// Every shape's edges (rows not a multiple of 6, columns not of 16, `k` over several
    /// blocks and not a multiple of `KC`, more rows than `MC`), `A` and `B` row-major,
    /// transposed or both strided, `C` with a wider row stride, from 0 and accumulating:
    /// the same bits as the plain ordered fma loop, with each micro-kernel the CPU runs
    /// (512-bit, AVX2, scalar), in pools of 1, 2, 3 and 5 threads.
    /// `Finish` runs on every element of `C` exactly once, after the element is final (the
    /// block it is given already holds the product's bits), in whole rows when asked: blocks
    /// of one column block and of several, whole rows wider than a column block (after the
    /// last one), small products on one thread and shared ones, `k` of one block and more;
    /// and in tiles (`Finish::tile`), where `C` is never written.
    #[test]
    fn finish_runs_once_on_every_block_of_final_elements() {
        use std::sync::atomic::{AtomicU8, Ordering};
        for (m, k, n) in [(70, 40, 600), (13, 600, 50), (200, 64, 1040), (5, 3, 17)] {
            let (av, bv) = (values(m * k, 1), values(k * n, 2));
            let a = Operand {
                ptr: av.as_ptr(),
                rs: k as isize,
                cs: 1,
            };
            let b = Operand {
                ptr: bv.as_ptr(),
                rs: n as isize,
                cs: 1,
            };
            let mut want = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0f32;
                    for t in 0..k {
                        s = av[i * k + t].mul_add(bv[t * n + j], s);
                    }
                    want[i * n + j] = s;
                }
            }
            let nc = tc_compiler::schedule::CPU_GEMM_NC as usize;
            let cases = [
                (1, false, false),
                (2, false, false),
                (3, true, false),
                (2, true, false),
                (2, false, true),
                (3, n <= nc, true),
            ];
            for (threads, whole_rows, tile) in cases {
                let mut c = vec![f32::NAN; m * n];
                let cp = c.as_mut_ptr() as usize;
                let seen: Vec<AtomicU8> = (0..m * n).map(|_| AtomicU8::new(0)).collect();
                let f = |blk: Block| {
                    let (r0, c0, cols) = (blk.r0, blk.c0, blk.cols);
                    assert!(!whole_rows || (c0 == 0 && cols == n), "{c0} {cols} of {n}");
                    for i in 0..blk.rows {
                        for j in 0..cols {
                            // SAFETY: inside the block; it is final, so no task writes it.
                            let v = unsafe { *blk.at.add(i * blk.ld + j) };
                            let (i, j) = (r0 + i, c0 + j);
                            assert_eq!(v.to_bits(), want[i * n + j].to_bits(), "({i}, {j})");
                            seen[i * n + j].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                };
                let mut bp = vec![f32::NAN; packing_floats(n, k, nc)];
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                // SAFETY: the buffers hold the row-major matrices.
                pool.install(|| unsafe {
                    gemm(
                        m,
                        n,
                        k,
                        a,
                        b,
                        cp as *mut f32,
                        n,
                        false,
                        true,
                        Kernel::Best,
                        &mut bp,
                        nc,
                        Some(Finish {
                            f: &f,
                            whole_rows,
                            tile,
                        }),
                        None,
                    )
                });
                let what = format!("{m}×{k}×{n}, {threads} threads, rows {whole_rows} tile {tile}");
                assert!(
                    seen.iter().all(|x| x.load(Ordering::Relaxed) == 1),
                    "{what}"
                );
                // In tiles, C is never written.
                assert_eq!(c.iter().all(|x| x.is_nan()), tile, "{what}");
            }
        }
    }

    #[test]
    fn products_are_the_ordered_fma_sum_whatever_the_threads_and_kernel() {
        let shapes = [
            (1, 1, 1),
            (5, 17, 3),
            (6, 16, 256),
            (13, 33, 257),
            (150, 40, 600),
            (7, 300, 70),
            (290, 50, 0),
        ];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            let av = values(2 * m * k + m + n + k + 8, 1 + si as u64);
            let bv = values(2 * k * n + m + n + k + 8, 100 + si as u64);
            let ldc = n + 3;
            let c0 = values(m * ldc, 200 + si as u64);
            // (A row stride, column stride), (B's): row-major, transposed, strided.
            let layouts = [
                ((k as isize, 1), (n as isize, 1)),
                ((1, m as isize), (1, k as isize)),
                ((2 * k as isize + 1, 2), (1, 2 * k as isize + 1)),
            ];
            for (la, lb) in layouts {
                let a = Operand {
                    ptr: av.as_ptr(),
                    rs: la.0,
                    cs: la.1,
                };
                let b = Operand {
                    ptr: bv.as_ptr(),
                    rs: lb.0,
                    cs: lb.1,
                };
                let at = |i: usize, t: usize| av[(i as isize * la.0 + t as isize * la.1) as usize];
                let bt = |t: usize, j: usize| bv[(t as isize * lb.0 + j as isize * lb.1) as usize];
                for accumulate in [false, true] {
                    let mut want = c0.clone();
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = if accumulate { c0[i * ldc + j] } else { 0.0 };
                            for t in 0..k {
                                s = at(i, t).mul_add(bt(t, j), s);
                            }
                            want[i * ldc + j] = s;
                        }
                    }
                    // The whole of B packed at once, or in blocks of two panels (the
                    // last one narrower where n is not a multiple of 32).
                    let what = format!("{m}×{k}×{n} {la:?} {lb:?} acc {accumulate}");
                    every_run_gives(&c0, &want, (n, k), 0, &what, |kernel, cp, bp, nc| {
                        // SAFETY: the buffers cover every index the strides reach.
                        unsafe {
                            gemm(
                                m, n, k, a, b, cp, ldc, accumulate, true, kernel, bp, nc, None,
                                None,
                            )
                        }
                    });
                }
            }
        }
    }

    /// An `A` filled block by block (`AFrom`, a prologue's) gives the bits of the same `A`
    /// read in place, straight or as a transposed `h`, for edge sizes, `k` past one block,
    /// 1–3 threads and every micro-kernel; each block asked for lies inside `A`, and every
    /// element of `A` is asked for (a fill that skipped a row or column would change `C`).
    #[test]
    fn a_filled_by_blocks_gives_the_bits_of_a_read_in_place() {
        for (si, &(m, n, k)) in [(37, 29, 50), (150, 40, 600), (13, 70, 1030)]
            .iter()
            .enumerate()
        {
            let hv = values(m * k, 300 + si as u64);
            let bv = values(k * n, 400 + si as u64);
            let b = Operand {
                ptr: bv.as_ptr(),
                rs: n as isize,
                cs: 1,
            };
            // `A = h` (`h` is m × k) or `A = hᵀ` (`h` is k × m).
            for transposed in [false, true] {
                let (rs, cs) = if transposed {
                    (1, m as isize)
                } else {
                    (k as isize, 1)
                };
                let a = Operand {
                    ptr: hv.as_ptr(),
                    rs,
                    cs,
                };
                let fill =
                    |(r0, rows): (usize, usize), (t0, kc): (usize, usize), dst: &mut [f32]| {
                        assert!(r0 + rows <= m && t0 + kc <= k, "a block outside A");
                        for i in 0..rows {
                            for t in 0..kc {
                                dst[i * kc + t] =
                                    hv[((r0 + i) as isize * rs + (t0 + t) as isize * cs) as usize];
                            }
                        }
                        Operand {
                            ptr: dst.as_ptr(),
                            rs: kc as isize,
                            cs: 1,
                        }
                    };
                for (threads, kernel) in [(1, Kernel::Best), (2, Kernel::Scalar), (3, Kernel::Best)]
                {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("pool");
                    let run = |from: Option<AFrom<'_>>| {
                        let mut c = vec![0f32; m * n];
                        let mut bp = vec![0f32; packing_floats(n, k, 2 * NR)];
                        // SAFETY: the buffers hold the matrices the strides reach.
                        pool.install(|| unsafe {
                            gemm(
                                m,
                                n,
                                k,
                                if from.is_some() {
                                    Operand {
                                        ptr: std::ptr::null(),
                                        ..a
                                    }
                                } else {
                                    a
                                },
                                b,
                                c.as_mut_ptr(),
                                n,
                                false,
                                threads > 1,
                                kernel,
                                &mut bp,
                                2 * NR,
                                None,
                                from,
                            )
                        });
                        c
                    };
                    let stored = run(None);
                    let filled = run(Some(AFrom { f: &fill }));
                    let same = stored
                        .iter()
                        .zip(&filled)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(
                        same,
                        "{m}×{k}×{n}, transposed {transposed}, {threads} threads {kernel:?}"
                    );
                }
            }
        }
    }

    /// bf16 bits for the pair tests: mostly moderate values of both signs, with (where
    /// `specials`) denormals, tiny and huge values, signed zeros, infinities and NaNs.
    fn bf16s(len: usize, seed: u64, specials: bool) -> Vec<u16> {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 24) as u32
        };
        (0..len)
            .map(|_| {
                let (r, sign) = (next(), (next() as u16 & 1) << 15);
                let mant = next() as u16 & 0x7f;
                let kind = if specials { r % 16 } else { 15 };
                sign | match kind {
                    0 => mant,                                     // denormal or zero
                    1 => (1 + (next() % 40) as u16) << 7 | mant,   // tiny: products underflow
                    2 => (200 + (next() % 54) as u16) << 7 | mant, // huge: products overflow
                    3 if r % 64 == 3 => 0x7f80 | mant,             // infinity or NaN (quiet or not)
                    _ => (120 + (next() % 12) as u16) << 7 | mant,
                }
            })
            .collect()
    }

    fn pair(lo: u16, hi: u16) -> u32 {
        u32::from(lo) | u32::from(hi) << 16
    }

    /// The twin gives, bit for bit, what `vdpbf16ps` gave on a Zen 4 (`pairs`' module doc):
    /// the high products first, one rounding a product, denormal inputs read as zero,
    /// results tiny after rounding flushed (and one that rounds up to 2⁻¹²⁶ kept), the first
    /// NaN of `a`, `b`, the accumulator, quieted, the default NaN for `∞ − ∞`. Runs on every
    /// machine, so the twin stays what the hardware does where there is none to compare.
    #[test]
    fn the_bf16_twin_gives_what_vdpbf16ps_gave_on_zen4() {
        // (accumulator, A's pair (low, high), B's pair, the result), all as bits.
        let cases: [(u32, [u16; 2], [u16; 2], u32); 20] = [
            (0xbe28_0552, [0xc130, 0xc066], [0x4033, 0x427f], 0xc382_0400),
            (0xc305_1066, [0x3b89, 0xc059], [0xc0a3, 0xbbcc], 0xc305_1073),
            (0xc1bb_49f3, [0x40ee, 0xc0a0], [0x3f86, 0x4048], 0xc1f9_fff4),
            (0x703f_47e6, [0x7c3b, 0xd54a], [0xbf82, 0x5c16], 0xfc3d_ec07),
            (0x55bf_b9a7, [0x6c39, 0x5e99], [0xde1e, 0x6757], 0x7f80_0000),
            (0xfd42_f816, [0x7c79, 0xfc89], [0xf413, 0xf8fc], 0x7f80_0000),
            (0x726f_4a48, [0xe58f, 0xec37], [0xf966, 0x6617], 0xff80_0000),
            (0x7dad_b482, [0xeadc, 0x5fa0], [0xf188, 0xdf56], 0x7f80_0000),
            (0x0080_0000, [0x9a00, 0], [0x1a00, 0], 0),
            (0x0080_0000, [0, 0x9a00], [0, 0x1a00], 0),
            (0x0080_0000, [0x9a00, 0], [0x1980, 0], 0x0080_0000),
            (0x8080_0000, [0x1a00, 0], [0x1980, 0], 0x8080_0000),
            (0x0042_88e0, [0x21ef, 0x0bd6], [0x0057, 0x0a6d], 0),
            (0x0055_6541, [0x26a3, 0x255e], [0x82e7, 0xa399], 0x8984_ae00),
            (0x8080_0000, [0xa224, 0x1938], [0x26ef, 0x19c0], 0x8999_1c20),
            (0xaeca_8321, [0x7a3b, 0x85d7], [0x0079, 0x3272], 0xaeca_8321),
            (0xd62c_b322, [0x7fc9, 0x9d47], [0x7f90, 0xdd0d], 0x7fc9_0000),
            (0xe4d3_238f, [0xfffb, 0xffbf], [0x3f21, 0xbfe0], 0xfffb_0000),
            (0xff80_0000, [0x7fad, 0x6b49], [0x804e, 0x7f80], 0x7fed_0000),
            (0x7e46_2cf9, [0x006c, 0x7fb4], [0x7fcf, 0x0064], 0x7fcf_0000),
        ];
        for (acc, a, b, want) in cases {
            let got = pairs::dot(f32::from_bits(acc), pair(a[0], a[1]), pair(b[0], b[1]));
            assert_eq!(
                got.to_bits(),
                want,
                "acc {acc:08x} a {a:04x?} b {b:04x?}: {:08x}",
                got.to_bits()
            );
        }
    }

    /// The bf16 micro-kernels and the twin give the same bits on whole tiles: chains of
    /// 1 to 300 pairs from 0 or from a loaded tile (denormal, tiny, NaN accumulators too),
    /// of moderate values, cancelling ones (a pair's products of opposite signs), values at
    /// the edges of the range (denormals, products that underflow or overflow, infinities,
    /// NaNs), bits of any kind, sums at 2⁻¹²⁶ (tiny or not after rounding), and infinities
    /// and NaNs among moderate values from tiny, NaN or infinite accumulators. The f32
    /// steps (`Mode::Fma`, AVX2) are held to the same bits, on `plain` pairs (the others go
    /// to the twin); `vdpbf16ps` is skipped (saying so) where the CPU lacks AVX512-BF16.
    #[test]
    fn the_bf16_micro_kernel_and_its_twin_give_the_same_bits() {
        if !has_bf16_dot() {
            eprintln!("no AVX512-BF16 on this CPU: vdpbf16ps skipped, the f32 steps checked");
        }
        let mut seed = 1u64;
        for kp in [1usize, 2, 3, 17, 300] {
            for kind in 0..6 {
                for load in [false, true] {
                    seed += 1;
                    let (mut a, mut b): (Vec<u32>, Vec<u32>) = match kind {
                        // Bits of any kind.
                        3 => {
                            let bits = |len, s| -> Vec<u32> {
                                let v = bf16s(2 * len, s, true);
                                let w = values(2 * len, s + 7);
                                v.chunks(2)
                                    .zip(w.chunks(2))
                                    .map(|(h, f)| {
                                        let any = (f[0].to_bits() ^ f[1].to_bits() << 9) as u16;
                                        pair(h[0], if f[0] > 0.3 { any } else { h[1] })
                                    })
                                    .collect()
                            };
                            (bits(kp * MR, seed), bits(kp * NR, seed + 100))
                        }
                        // At the least normal: products of magnitude near 2⁻¹⁵⁰ added
                        // to accumulators at ±2⁻¹²⁶ (tiny or not after rounding).
                        4 => {
                            let near = |len, s| -> Vec<u32> {
                                let v = bf16s(2 * len, s, false);
                                let e = |h: u16| h & 0x807f | (50 + (h >> 7 & 3)) << 7;
                                v.chunks(2).map(|p| pair(e(p[0]), e(p[1]))).collect()
                            };
                            (near(kp * MR, seed), near(kp * NR, seed + 100))
                        }
                        // Infinities and NaNs among moderate values (`plain`, for the
                        // f32 steps), from accumulators that are tiny, NaNs, infinities.
                        5 => {
                            // (With an even `kp` no infinity or NaN, so that the f32 steps
                            // keep the tile: its accumulators start from tiny values.)
                            let fix = |h: u16| {
                                let small = h & 0x7fff != 0 && h & 0x7f80 < 72 << 7;
                                if small || (kp % 2 == 0 && h & 0x7f80 == 0x7f80) {
                                    (h & 0x807f) | 100 << 7
                                } else {
                                    h
                                }
                            };
                            let a = bf16s(2 * kp * MR, seed, true);
                            let b = bf16s(2 * kp * NR, seed + 100, true);
                            // (Row 0 of `A` zero: its accumulators stay as they start.)
                            let row =
                                |i: usize, h: u16| if i.is_multiple_of(MR) { 0 } else { fix(h) };
                            (
                                a.chunks(2)
                                    .enumerate()
                                    .map(|(i, p)| pair(row(i, p[0]), row(i, p[1])))
                                    .collect(),
                                b.chunks(2).map(|p| pair(fix(p[0]), fix(p[1]))).collect(),
                            )
                        }
                        _ => {
                            let specials = kind == 2;
                            let a = bf16s(2 * kp * MR, seed, specials);
                            let b = bf16s(2 * kp * NR, seed + 100, specials);
                            (
                                a.chunks(2).map(|p| pair(p[0], p[1])).collect(),
                                b.chunks(2).map(|p| pair(p[0], p[1])).collect(),
                            )
                        }
                    };
                    if kind == 1 {
                        // Cancelling: each pair's high product minus its low one (the same
                        // magnitudes), so sums land on 0 and near it.
                        for x in a.iter_mut().chain(b.iter_mut()).step_by(3) {
                            *x = pair(*x as u16, *x as u16 ^ 0x8000);
                        }
                    }
                    let c0: [f32; MR * NR] = std::array::from_fn(|i| {
                        let v = values(1, seed * 31 + i as u64)[0];
                        match (kind, i % 7) {
                            (2 | 5, 0) => f32::from_bits(0x0000_1234 | (i as u32 & 1) << 31),
                            (2 | 5, 1) => f32::MIN_POSITIVE * v.signum(),
                            // (A NaN sends the f32 steps' whole tile to the twin.)
                            (2, 2) => f32::NAN,
                            (5, 2) if kp % 2 == 1 => f32::NAN,
                            (2, 3) => -f32::INFINITY,
                            (5, 3) if kp % 2 == 1 => -f32::INFINITY,
                            (5, 4) => 1e-31 * v,
                            (1, _) => v * 1e-3,
                            (4, _) => f32::from_bits(
                                (f32::MIN_POSITIVE.to_bits() + (i as u32 % 3))
                                    | ((i as u32 & 8) << 28),
                            ),
                            _ => v,
                        }
                    });
                    let mut twin = c0;
                    pairs::micro_tile(kp, &a, &b, &mut twin, load, pairs::Mode::Twin);
                    for mode in [pairs::Mode::Dot, pairs::Mode::Fma] {
                        if !mode.runs() {
                            continue;
                        }
                        let mut simd = c0;
                        pairs::micro_tile(kp, &a, &b, &mut simd, load, mode);
                        for (x, (s, t)) in simd.iter().zip(&twin).enumerate() {
                            assert_eq!(
                                s.to_bits(),
                                t.to_bits(),
                                "{mode:?} kp {kp} kind {kind} load {load}: element {x}: {s:e} vs {t:e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// bf16 pairs packed for `B` with an odd `k`: each pair row holds rows `2t` (low) and
    /// `2t + 1` (high, zero past `k`), columns past `cols` zero, in blocks of `KP` pairs
    /// (3 blocks for `k` = 2·KP·2 + 1 … rows).
    #[test]
    fn bf16_pairs_pack_an_odd_k_with_a_zero() {
        let (k, cols) = (4 * pairs::KP + 3, 37);
        let bv = bf16s(k * cols, 5, false);
        let b = Operand {
            ptr: bv.as_ptr().cast(),
            rs: cols as isize,
            cs: 1,
        };
        let panels = cols.div_ceil(NR);
        let np = k.div_ceil(2);
        let mut dst = vec![u32::MAX; np * panels * NR];
        for parallel in [false, true] {
            assert!(pairs::pack_b(k, cols, b, &mut dst, parallel, true));
            for t in 0..np {
                let (blk, tt) = (t / pairs::KP * pairs::KP, t % pairs::KP);
                let kp = pairs::KP.min(np - blk);
                for j in 0..panels * NR {
                    let (p, jj) = (j / NR, j % NR);
                    let got = dst[blk * NR * panels + p * kp * NR + tt * NR + jj];
                    let el = |r: usize| {
                        if r < k && j < cols {
                            bv[r * cols + j]
                        } else {
                            0
                        }
                    };
                    assert_eq!(got, pair(el(2 * t), el(2 * t + 1)), "pair {t} column {j}");
                }
            }
        }
    }

    /// bf16 products in pairs (`gemm_bf16`) for every shape's edges (rows not a multiple of
    /// 6, columns not of 16, odd `k`, `k` over several blocks of pairs, more rows than
    /// `MC`), `A` and `B` row-major (a row-major `A` of even `k` read in place), transposed
    /// or strided, from 0 and accumulating, in
    /// pools of 1–5 threads and column blocks of the whole or two panels: the same bits as
    /// the plain chain of twin steps over the pairs (`pairs::dot`, the odd `k`'s last pair
    /// with a zero), with `vdpbf16ps` where the CPU has it and with the twin.
    #[test]
    fn bf16_products_are_the_chain_of_dot_steps_whatever_the_threads_and_kernel() {
        let shapes = [
            (1, 1, 1),
            (5, 17, 3),
            (6, 16, 256),
            (13, 33, 1025),
            (150, 40, 2 * pairs::KP * 2 + 6),
            // An even `k`, `A` read in place but for its last 3 rows (packed).
            (27, 40, 130),
            (7, 300, 71),
            (290, 50, 0),
        ];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            let specials = si % 2 == 1;
            let av = bf16s(2 * m * k + m + n + k + 8, 1 + si as u64, specials);
            let bv = bf16s(2 * k * n + m + n + k + 8, 100 + si as u64, specials);
            let ldc = n + 3;
            let c0 = values(m * ldc, 200 + si as u64);
            let layouts = [
                ((k as isize, 1), (n as isize, 1)),
                ((1, m as isize), (1, k as isize)),
                ((2 * k as isize + 1, 2), (1, 2 * k as isize + 1)),
            ];
            for (li, (la, lb)) in layouts.into_iter().enumerate() {
                let a = Operand {
                    ptr: av.as_ptr().cast(),
                    rs: la.0,
                    cs: la.1,
                };
                let b = Operand {
                    ptr: bv.as_ptr().cast(),
                    rs: lb.0,
                    cs: lb.1,
                };
                let at = |i: usize, t: usize| {
                    if t < k {
                        av[(i as isize * la.0 + t as isize * la.1) as usize]
                    } else {
                        0
                    }
                };
                let bt = |t: usize, j: usize| {
                    if t < k {
                        bv[(t as isize * lb.0 + j as isize * lb.1) as usize]
                    } else {
                        0
                    }
                };
                for accumulate in [false, true] {
                    let mut want = c0.clone();
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = if accumulate { c0[i * ldc + j] } else { 0.0 };
                            for t in (0..k).step_by(2) {
                                let (x, y) =
                                    (pair(at(i, t), at(i, t + 1)), pair(bt(t, j), bt(t + 1, j)));
                                s = pairs::dot(s, x, y);
                            }
                            want[i * ldc + j] = s;
                        }
                    }
                    let what = format!("{m}×{k}×{n} {la:?} {lb:?} acc {accumulate}");
                    every_run_gives(&c0, &want, (n, k), li % 2, &what, |kernel, cp, bp, nc| {
                        // SAFETY: the buffers cover every index the strides reach.
                        unsafe {
                            gemm_bf16(
                                m, n, k, a, b, cp, ldc, accumulate, true, kernel, bp, nc, None,
                                None,
                            )
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// Process CPU seconds (all the pool's threads).
    fn process_cpu() -> f64 {
        crate::cpu::cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID)
    }

    /// The examples' f32 products (m×k×n, row-major), tc's GEMM against the `gemm` crate:
    /// best process CPU and wall milliseconds of `TC_GEMM_REPS` (default 10) calls each,
    /// alternated, in the global pool (`RAYON_NUM_THREADS` threads): `cargo test --release
    /// -p tc-runtime --lib gemm_shapes -- --ignored --nocapture`. `TC_GEMM_SHAPES` picks
    /// shapes, e.g. `512x2048x512,1024x1024x4096`.
    #[test]
    #[ignore]
    fn gemm_shapes() {
        let shapes: Vec<(usize, usize, usize)> = std::env::var("TC_GEMM_SHAPES")
            .unwrap_or_else(|_| {
                "512x512x512,512x512x2048,512x2048x512,1024x1024x4096,1024x4096x1024,64x512x512,8x512x512".into()
            })
            .split(',')
            .map(|s| {
                let v: Vec<usize> = s.split('x').map(|x| x.parse().expect("m x k x n")).collect();
                (v[0], v[1], v[2])
            })
            .collect();
        let reps: usize = std::env::var("TC_GEMM_REPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let threads = rayon::current_num_threads();
        for (m, k, n) in shapes {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 97) as f32 * 0.01).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 89) as f32 * 0.01).collect();
            let mut c = vec![0f32; m * n];
            let nc: usize = std::env::var("TC_GEMM_NC")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(tc_compiler::schedule::CPU_GEMM_NC as usize);
            let mut bp = vec![0f32; packing_floats(n, k, nc)];
            let mut best = [(f64::MAX, f64::MAX); 2];
            for _ in 0..reps {
                for (side, slot) in best.iter_mut().enumerate() {
                    let (t0, w0) = (process_cpu(), std::time::Instant::now());
                    // SAFETY: the buffers hold the row-major matrices.
                    unsafe {
                        if side == 0 {
                            gemm(
                                m,
                                n,
                                k,
                                Operand {
                                    ptr: a.as_ptr(),
                                    rs: k as isize,
                                    cs: 1,
                                },
                                Operand {
                                    ptr: b.as_ptr(),
                                    rs: n as isize,
                                    cs: 1,
                                },
                                c.as_mut_ptr(),
                                n,
                                false,
                                threads > 1,
                                Kernel::Best,
                                &mut bp,
                                nc,
                                None,
                                None,
                            )
                        } else {
                            gemm::gemm(
                                m,
                                n,
                                k,
                                c.as_mut_ptr(),
                                1,
                                n as isize,
                                false,
                                a.as_ptr(),
                                1,
                                k as isize,
                                b.as_ptr(),
                                1,
                                n as isize,
                                0.0f32,
                                1.0f32,
                                false,
                                false,
                                false,
                                if threads > 1 {
                                    gemm::Parallelism::Rayon(0)
                                } else {
                                    gemm::Parallelism::None
                                },
                            )
                        }
                    }
                    let (cpu, wall) = (process_cpu() - t0, w0.elapsed().as_secs_f64());
                    slot.0 = slot.0.min(cpu);
                    slot.1 = slot.1.min(wall);
                }
            }
            let gf = |t: f64| 2.0 * (m * k * n) as f64 / t * 1e-9;
            println!(
                "{m}x{k}x{n} threads {threads}: tc cpu {:.2} wall {:.2} ms ({:.0} GFLOP/s wall) | gemm crate cpu {:.2} wall {:.2} ms ({:.0})",
                best[0].0 * 1e3,
                best[0].1 * 1e3,
                gf(best[0].1),
                best[1].0 * 1e3,
                best[1].1 * 1e3,
                gf(best[1].1)
            );
        }
    }
}
