//! The CPU executor: runs a plan's kernels in order over one host arena, every arena
//! buffer at its planned offset — the same plan CUDA runs, so a planning mistake shows up
//! here as wrong numbers. Fused kernels are interpreted block by block (`fused`), matrix
//! products go to tc's GEMM or the `gemm` crate (`matmul`), a product's consuming kernel
//! run on its finished blocks where it can be (`epilogue`); elementwise numerics live in
//! `math`; the arena's memory and how outputs leave it (moved page by page where possible)
//! in `arena`.

mod arena;
pub use arena::tune_host_allocator;
mod attention;
#[cfg(feature = "test-support")]
pub use attention::{TileCount, TILE_LOG};
mod attention_backward;
mod block;
mod columns;
mod epilogue;
mod fused;
mod gemm;
mod halves;
mod index;
mod index_add;
mod math;
mod matmul;
mod outputs;
mod peephole;
mod prologue;
#[cfg(test)]
mod tests;
mod tile_gemm;
mod typed;

use crate::tensor::HostTensor;
use arena::Arena;
use tc_compiler::ir::DType;
use tc_compiler::schedule::{BufferId, BufferKind, KernelKind, Plan};
use thiserror::Error;

/// Why a plan could not run on the CPU.
#[derive(Debug, Error, PartialEq)]
pub enum CpuError {
    #[error("the program has {expected} {what}s but {found} were supplied")]
    Count {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{what} `{name}` is {expected_dtype}{expected_shape:?} but the data is {found_dtype}{found_shape:?}")]
    Mismatch {
        what: &'static str,
        name: String,
        expected_dtype: DType,
        expected_shape: Vec<u64>,
        found_dtype: DType,
        found_shape: Vec<u64>,
    },
    #[error("the arena of {0} bytes does not fit in this machine's memory")]
    ArenaTooLarge(u64),
    /// The plan breaks its own contract (a planner bug).
    #[error("invalid plan: {0}")]
    BadPlan(String),
    /// A gathered read met an index out of range (`take`, `gather`): an error in the data.
    #[error("{0}")]
    IndexOutOfRange(String),
}

/// One resolved buffer: where its elements are, their dtype and count.
#[derive(Clone, Copy, Debug)]
struct Mem {
    ptr: *mut u8,
    dtype: DType,
    numel: usize,
    /// False for inputs and params, which are borrowed from the caller.
    writable: bool,
}

// SAFETY: a `Mem` is a view of the arena or of a caller's tensor that outlives every
// kernel; kernels only write disjoint elements from different threads (the plan's
// contract, bounds checked before each kernel runs).
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    /// The first byte (a method, so closures capture the whole `Send` value).
    fn base(&self) -> *mut u8 {
        self.ptr
    }

    fn bytes(&self) -> usize {
        self.numel * self.dtype.size() as usize
    }

    /// True when the two buffers share a byte (a tile-local product shares none).
    fn overlaps(&self, other: &Mem) -> bool {
        let (a, b) = (self.ptr as usize, other.ptr as usize);
        !self.is_tile() && !other.is_tile() && a < b + other.bytes() && b < a + self.bytes()
    }

    /// A product never stored whole (`BufferKind::Tile`): no storage here, its blocks are
    /// in the GEMM's threads' buffers (`epilogue`).
    fn tile(dtype: DType, numel: usize) -> Mem {
        Mem {
            ptr: std::ptr::null_mut(),
            dtype,
            numel,
            writable: false,
        }
    }

    fn is_tile(&self) -> bool {
        self.ptr.is_null()
    }
}

/// The absolute address range of the arena bytes output `o` reads (empty when the output
/// is not in the arena).
fn arena_range(plan: &Plan, o: &tc_compiler::schedule::PlanOutput, base: usize) -> (usize, usize) {
    let Some(buf) = plan.buffers.get(o.buffer.index()) else {
        return (0, 0);
    };
    if !matches!(buf.kind, BufferKind::Arena | BufferKind::Workspace) {
        return (0, 0);
    }
    let size = buf.dtype.size() as i64;
    let (mut lo, mut hi) = (o.offset, o.offset);
    for (&st, &n) in o.strides.iter().zip(&o.shape) {
        let span = st * (n as i64 - 1).max(0);
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    let at = |e: i64| (base as i64 + buf.offset as i64 + e * size).max(0) as usize;
    (at(lo), at(hi + 1))
}

/// Checks the tensors given for a run against the plan's inputs and params: as many, each
/// of its buffer's dtype, shape and size (the check `run` makes first).
pub fn check_data(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
) -> Result<(), CpuError> {
    check_leaves(plan, "input", &plan.inputs, inputs)?;
    check_leaves(plan, "param", &plan.params, params)
}

/// Runs `plan` on the host and returns its outputs in `plan.outputs` order, each gathered
/// into a contiguous tensor of its dtype.
pub fn run(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
) -> Result<Vec<HostTensor>, CpuError> {
    run_observed(plan, inputs, params, &Options::default(), None)
}

/// How the executor may run a plan; every choice gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Run a fused kernel that consumes a matrix product on the product's blocks as they
    /// are finished (`epilogue`), rather than after the whole product.
    pub epilogues: bool,
    /// Attention's backward keeps the tiles of logits and `dp` its first walk over the
    /// keys computes for its second, where they fit (`attention_backward::KEPT_KEYS`),
    /// rather than computing them again.
    pub keep_tiles: bool,
    /// Attention's backward runs a task of whole batch matrices in one walk over their
    /// query tiles, `dk` and `dv` summed along (`attention_backward::Ctx::matrix`: five
    /// products a tile pair), rather than in two phases (seven).
    pub one_walk: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            epilogues: true,
            keep_tiles: true,
            one_walk: true,
        }
    }
}

/// `run` with `options`.
pub fn run_with(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
    options: &Options,
) -> Result<Vec<HostTensor>, CpuError> {
    run_observed(plan, inputs, params, options, None)
}

/// One kernel's time in one run: wall seconds, and the CPU seconds of the whole process
/// (every thread) meanwhile, which a loaded machine disturbs less.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KernelTime {
    pub wall_s: f64,
    pub cpu_s: f64,
    /// The product whose epilogue this kernel ran as (its time is that product's).
    pub epilogue_of: Option<usize>,
}

/// `run`, also returning each kernel's `KernelTime` in `plan.kernels` order (the per-kernel
/// breakdown `cpubench --per-kernel` prints). The clocks are read between kernels only.
pub fn run_timed(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
) -> Result<(Vec<HostTensor>, Vec<KernelTime>), CpuError> {
    let mut times = vec![KernelTime::default(); plan.kernels.len()];
    let outs = run_observed(
        plan,
        inputs,
        params,
        &Options::default(),
        Some(&mut |k, t| times[k] = t),
    )?;
    Ok((outs, times))
}

/// CPU seconds of this process so far, all threads (`CLOCK_PROCESS_CPUTIME_ID`; 0 where
/// unavailable).
fn process_cpu_s() -> f64 {
    cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU seconds so far on `clock` (`CLOCK_PROCESS_CPUTIME_ID` or `CLOCK_THREAD_CPUTIME_ID`;
/// 0 where unavailable): the executor's per-kernel times and the hand-run timings in tests.
pub(super) fn cpu_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to one `timespec`.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `run`, handing `kernel_done(index, time)` each kernel's time as it finishes; the clocks
/// are read only when there is one to hand them to.
fn run_observed(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
    options: &Options,
    mut kernel_done: Option<&mut dyn FnMut(usize, KernelTime)>,
) -> Result<Vec<HostTensor>, CpuError> {
    check_data(plan, inputs, params)?;

    // Large contiguous outputs that share no byte with another output get their vectors
    // now, so the arena can be placed where the largest one's pages line up with its
    // vector's and its pages can be moved there instead of copied (see `arena`).
    let mut dests = output_vectors(plan);
    let line_up = dests
        .iter()
        .zip(&plan.outputs)
        .filter_map(|(d, o)| Some((d.as_ref()?, arena_range(plan, o, 0).0)))
        .max_by_key(|(d, _)| d.capacity())
        .map(|(d, lo)| (lo, d.as_ptr() as usize));
    // The arena: 16-byte aligned, its contents unspecified (fresh zero pages, or a mapping
    // kept from the previous run: `arena`).
    let arena = Arena::new(plan.arena_bytes, line_up)?;
    let base = arena.ptr;

    let mut mems = Vec::with_capacity(plan.buffers.len());
    for buf in &plan.buffers {
        let numel = usize::try_from(buf.shape.iter().product::<u64>())
            .map_err(|_| CpuError::BadPlan(format!("buffer {} is too large", buf.name)))?;
        let mem = match buf.kind {
            BufferKind::Input { index } | BufferKind::Param { index } => {
                let (what, list) = if matches!(buf.kind, BufferKind::Input { .. }) {
                    ("input", inputs)
                } else {
                    ("param", params)
                };
                let t = list.get(index).ok_or_else(|| {
                    CpuError::BadPlan(format!(
                        "buffer {} is {what} {index}, which does not exist",
                        buf.name
                    ))
                })?;
                // Never written (stores to it are rejected), so the const data may be shared.
                Mem {
                    ptr: t.bytes.as_ptr().cast_mut(),
                    dtype: t.dtype,
                    numel: t.numel(),
                    writable: false,
                }
            }
            BufferKind::Arena | BufferKind::Workspace => {
                let end = buf.offset.checked_add(buf.bytes);
                if end.is_none_or(|e| e > plan.arena_bytes) {
                    return Err(CpuError::BadPlan(format!(
                        "buffer {} ({} bytes at offset {}) does not fit in the {}-byte arena",
                        buf.name, buf.bytes, buf.offset, plan.arena_bytes
                    )));
                }
                let numel = if buf.kind == BufferKind::Workspace {
                    buf.bytes as usize / buf.dtype.size() as usize
                } else {
                    numel
                };
                if buf.kind == BufferKind::Arena && numel as u64 * buf.dtype.size() > buf.bytes {
                    return Err(CpuError::BadPlan(format!(
                        "buffer {} holds {numel} {} elements in {} bytes",
                        buf.name, buf.dtype, buf.bytes
                    )));
                }
                // SAFETY: offset + bytes <= arena_bytes <= the allocation (checked above).
                let ptr = unsafe { base.add(buf.offset as usize) };
                Mem {
                    ptr,
                    dtype: buf.dtype,
                    numel,
                    writable: true,
                }
            }
            BufferKind::Tile => Mem::tile(buf.dtype, numel),
        };
        mems.push(mem);
    }

    // Output bytes still to take out of the arena (moved or copied); everything else is
    // handed back to the system before and while they leave, so copies do not add to the
    // peak. Outputs moved out leave holes, and an arena with holes is not kept for the next
    // run (`arena`), which then faults a fresh one in: so when the outputs to copy come to
    // at most `WARM_COPY_MAX` bytes in all, those that could move are copied too (a 2 MiB
    // hole costs ~1.5 ms of page faults here, its copy ~0.1 ms, and none at all where
    // `tune_host_allocator` has the allocator hand the copies the last run's freed output
    // pages), and larger ones still move. On an arena kept from an earlier run, whose pages
    // are resident already, releasing them would only make the next run fault them in
    // again: there, with such copies, nothing is released, so the peak grows by at most
    // `WARM_COPY_MAX`, and the outputs that can are computed in their vectors from the
    // start instead of copied at the end (`outputs`).
    let mut keep: Vec<(usize, usize)> = plan
        .outputs
        .iter()
        .map(|o| arena_range(plan, o, base as usize))
        .collect();
    let copy_small = keep
        .iter()
        .zip(&dests)
        .filter(|(_, d)| d.as_ref().is_none_or(|v| v.capacity() <= WARM_COPY_MAX))
        .map(|(&(a, b), _)| b.saturating_sub(a))
        .sum::<usize>()
        <= WARM_COPY_MAX;
    let release = !(arena.reused() && copy_small);
    let mut written_out: Vec<Option<Vec<u8>>> = vec![None; plan.outputs.len()];
    if !release {
        for (k, chain) in outputs::chains(plan).into_iter().enumerate() {
            let Some(chain) = chain else { continue };
            let len = plan.buffer(chain[0]).bytes as usize;
            let mut v = match dests[k].take() {
                Some(v) if v.capacity() >= len => v,
                _ => Vec::with_capacity(len),
            };
            // (Every buffer's offset in the arena is 16-byte aligned; so is `malloc`'s.)
            if !(v.as_ptr() as usize).is_multiple_of(16) {
                continue;
            }
            for b in &chain {
                mems[b.index()].ptr = v.as_mut_ptr();
            }
            #[cfg(test)]
            outputs::WRITTEN_OUT.with(|n| n.set(n.get() + 1));
            written_out[k] = Some(v);
        }
    }

    // (Only a plan with products never stored whole needs each kernel's reads checked.)
    let any_tiles = mems.iter().any(Mem::is_tile);
    let mut i = 0;
    while let Some(kernel) = plan.kernels.get(i) {
        let start = kernel_done
            .is_some()
            .then(|| (std::time::Instant::now(), process_cpu_s()));
        // The fused kernel after a product, offered to it as its epilogue (always to a
        // product never stored whole, which needs it).
        let in_tiles = |id: BufferId| mems.get(id.index()).is_some_and(Mem::is_tile);
        let never_stored = matches!(&kernel.kind, KernelKind::MatMul(m) if in_tiles(m.out));
        let next = match plan.kernels.get(i + 1).map(|k| (&k.name, &k.kind)) {
            Some((name, KernelKind::Fused(k))) if options.epilogues || never_stored => {
                Some((name.as_str(), k))
            }
            _ => None,
        };
        // A product never stored whole is read by the kernel after it alone, run on its
        // blocks (`matmul`), never here; an `A` never stored, by the products that compute
        // it (`prologue`).
        let computes = |b: BufferId| matches!(&kernel.kind, KernelKind::MatMul(m) if m.prologue.is_some() && m.a.buffer == b);
        let tile = any_tiles
            .then(|| tc_compiler::memory::liveness::reads(kernel))
            .and_then(|reads| reads.into_iter().find(|&b| in_tiles(b) && !computes(b)));
        if let Some(b) = tile {
            return Err(CpuError::BadPlan(format!(
                "kernel {} reads {}, a product never stored whole, but does not run on its blocks",
                kernel.name,
                plan.buffer(b).name
            )));
        }
        let mut with_next = false;
        match &kernel.kind {
            KernelKind::Fused(k) => fused::run(plan, &kernel.name, k, &mems)?,
            KernelKind::MatMul(k) => {
                with_next = matmul::run(plan, &kernel.name, k, &mems, next)?;
            }
            KernelKind::Attention(k) => attention::run(plan, &kernel.name, k, &mems)?,
            KernelKind::AttentionBackward(k) => {
                attention_backward::run(plan, &kernel.name, k, &mems, options)?
            }
            KernelKind::IndexAdd(k) => index_add::run(plan, &kernel.name, k, &mems)?,
        }
        if let (Some(done), Some((wall, cpu))) = (kernel_done.as_mut(), start) {
            done(
                i,
                KernelTime {
                    wall_s: wall.elapsed().as_secs_f64(),
                    cpu_s: process_cpu_s() - cpu,
                    epilogue_of: None,
                },
            );
            if with_next {
                let time = KernelTime {
                    epilogue_of: Some(i),
                    ..KernelTime::default()
                };
                done(i + 1, time);
            }
        }
        i += if with_next { 2 } else { 1 };
    }

    if release {
        arena.release_except(&keep);
    }
    let mut outs = Vec::with_capacity(plan.outputs.len());
    for ((o, dest), out) in plan.outputs.iter().zip(dests.iter_mut()).zip(written_out) {
        if !keep.is_empty() {
            keep.remove(0);
        }
        if let Some(mut bytes) = out {
            // SAFETY: the plan wrote every byte of the output's buffer, which lives in
            // this vector's capacity (`outputs::chains`: a whole buffer, `len` bytes).
            unsafe { bytes.set_len(plan.buffer(o.buffer).bytes as usize) };
            outs.push(HostTensor {
                dtype: o.dtype,
                shape: o.shape.clone(),
                bytes,
            });
            continue;
        }
        let mem = *mems.get(o.buffer.index()).ok_or_else(|| {
            CpuError::BadPlan(format!(
                "output {} reads buffer {}, which does not exist",
                o.name, o.buffer.0
            ))
        })?;
        let bad = |m: String| CpuError::BadPlan(format!("output {}: {m}", o.name));
        if mem.dtype != o.dtype || o.strides.len() != o.shape.len() {
            return Err(bad(format!(
                "reads a {} buffer as {} with {} strides",
                mem.dtype,
                o.dtype,
                o.strides.len()
            )));
        }
        let shape: Vec<usize> = o.shape.iter().map(|&s| s as usize).collect();
        fused::check_bounds(
            "output",
            &o.name,
            &plan.buffer(o.buffer).name,
            mem,
            o.offset,
            &o.strides,
            &shape,
        )?;
        let numel: usize = shape.iter().product();
        if o.strides == contiguous_strides(&shape) || numel <= 1 {
            let size = o.dtype.size() as usize;
            let (start, len) = (o.offset as usize * size, numel * size);
            let in_arena = (mem.ptr as usize)
                .checked_sub(base as usize)
                .filter(|at| at + start + len <= plan.arena_bytes as usize);
            let bytes = match (dest.take(), in_arena) {
                (Some(mut v), Some(_))
                    if copy_small && len <= WARM_COPY_MAX && v.capacity() >= len =>
                {
                    // SAFETY: elements offset .. offset + numel are in bounds (checked above).
                    let src = unsafe { std::slice::from_raw_parts(mem.ptr.add(start), len) };
                    if release {
                        // A step at a time, each step's pages handed back as it is copied:
                        // the copy adds at most a step to the peak (a first run's peak
                        // is the plan's).
                        v.clear();
                        arena::advise_huge(&v, len);
                        for step in src.chunks(RELEASE_STEP) {
                            v.extend_from_slice(step);
                            // (Kept meanwhile: the rest of this output.)
                            keep.push((
                                step.as_ptr_range().end as usize,
                                src.as_ptr_range().end as usize,
                            ));
                            arena.release_except(&keep);
                            keep.pop();
                        }
                    } else {
                        arena::copy_into(src, &mut v);
                    }
                    v
                }
                // SAFETY: the output's bytes are in bounds (checked above) and in the arena,
                // and no other output shares a byte with them (`output_vectors`).
                (Some(v), Some(at)) if v.capacity() >= len => unsafe {
                    arena.take(at + start, len, v)
                },
                // SAFETY: elements offset .. offset + numel are in bounds (checked above),
                // and a byte copy has no alignment requirement.
                _ => {
                    arena::copy_out(unsafe { std::slice::from_raw_parts(mem.ptr.add(start), len) })
                }
            };
            outs.push(HostTensor {
                dtype: o.dtype,
                shape: o.shape.clone(),
                bytes,
            });
            if release {
                arena.release_except(&keep);
            }
            continue;
        }
        let vals: Vec<f32> = crate::tensor::strided_offsets(o.offset, &o.strides, &o.shape)
            // SAFETY: every index of the shape is in bounds (checked above).
            .map(|off| unsafe { mem.read(off) })
            .collect();
        // Exact: the values were widened from this very dtype.
        outs.push(HostTensor::from_f32(o.dtype, o.shape.clone(), &vals));
        if release {
            arena.release_except(&keep);
        }
    }
    drop(arena);
    Ok(outs)
}

/// Per output: an empty vector with room for its bytes when they may be moved out of the
/// arena: a contiguous arena output of at least `arena::MOVE_MIN` bytes whose bytes no other
/// output reads (moving takes pages away from the arena).
fn output_vectors(plan: &Plan) -> Vec<Option<Vec<u8>>> {
    let ranges: Vec<(usize, usize)> = plan
        .outputs
        .iter()
        .map(|o| arena_range(plan, o, 0))
        .collect();
    plan.outputs
        .iter()
        .enumerate()
        .map(|(k, o)| {
            let shape: Vec<usize> = o.shape.iter().map(|&s| s as usize).collect();
            let (lo, hi) = ranges[k];
            let len = hi - lo;
            let alone = ranges
                .iter()
                .enumerate()
                .all(|(j, &(a, b))| j == k || a >= b || b <= lo || hi <= a);
            let contiguous = o.strides == contiguous_strides(&shape)
                && shape.iter().product::<usize>() * o.dtype.size() as usize == len;
            (len >= arena::MOVE_MIN && contiguous && alone).then(|| Vec::with_capacity(len))
        })
        .collect()
}

/// The most output bytes in all a run copies instead of moving their pages out of the arena
/// (and, on a kept arena, instead of releasing the rest: see `run_observed`): as much as
/// the tuned allocator serves from its heap (`arena::HEAP_BLOCK_MAX`), whose freed pages
/// the next run's copies reuse.
const WARM_COPY_MAX: usize = arena::HEAP_BLOCK_MAX;

/// Where a run hands the arena's pages back as its outputs leave (a first run), it copies
/// an output this many bytes at a time, handing back each step's pages after it: the copy
/// adds at most this to the peak (2 MiB steps measured +3 % on `chain.tx`'s 64 MiB plan).
const RELEASE_STEP: usize = 512 << 10;

fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc *= shape[i] as i64;
    }
    s
}

fn check_leaves(
    plan: &Plan,
    what: &'static str,
    ids: &[tc_compiler::schedule::BufferId],
    data: &[HostTensor],
) -> Result<(), CpuError> {
    if ids.len() != data.len() {
        return Err(CpuError::Count {
            what,
            expected: ids.len(),
            found: data.len(),
        });
    }
    for (&id, t) in ids.iter().zip(data) {
        let buf = plan
            .buffers
            .get(id.index())
            .ok_or_else(|| CpuError::BadPlan(format!("{what} buffer {} does not exist", id.0)))?;
        let numel: u64 = t.shape.iter().product();
        if buf.dtype != t.dtype
            || buf.shape != t.shape
            || t.bytes.len() as u64 != numel * t.dtype.size()
        {
            return Err(CpuError::Mismatch {
                what,
                name: buf.name.clone(),
                expected_dtype: buf.dtype,
                expected_shape: buf.shape.clone(),
                found_dtype: t.dtype,
                found_shape: t.shape.clone(),
            });
        }
    }
    Ok(())
}
