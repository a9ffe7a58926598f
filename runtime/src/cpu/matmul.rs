//! Matrix products on the CPU with the `gemm` crate: f32 operands are read in place through
//! their strides; f16/bf16 (or oddly strided) operands are widened to a contiguous f32 copy
//! of one batch matrix. Accumulation is f32; the result is rounded to the output dtype.

use super::fused::check_bounds;
use super::{CpuError, Mem};
use gemm::Parallelism;
use rayon::prelude::*;
use tc_compiler::ir::DType;
use tc_compiler::schedule::{MatMulKernel, MatOperand, Plan};

pub(super) fn run(
    plan: &Plan,
    name: &str,
    mm: &MatMulKernel,
    mems: &[Mem],
) -> Result<(), CpuError> {
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
    if !out.writable || out.dtype != mm.out_dtype || out.numel < nbatch * m * n {
        return Err(bad(format!(
            "output {} is not a writable {} buffer of {} elements",
            plan.buffer(mm.out).name,
            mm.out_dtype,
            nbatch * m * n
        )));
    }
    if nbatch == 0 || m == 0 || n == 0 {
        return Ok(());
    }

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
    let base_off = |op: &MatOperand, bi: usize| -> i64 {
        let mut q = bi;
        let mut off = op.offset;
        for d in (0..nb).rev() {
            off += (q % batch[d]) as i64 * op.strides[d];
            q /= batch[d];
        }
        off
    };
    let par_inside = if nbatch == 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };

    // One batch matrix into `dst` (m·n f32, row-major).
    let one = |bi: usize, dst: *mut f32| {
        let a_off = base_off(&mm.a, bi);
        let b_off = base_off(&mm.b, bi);
        let (a_tmp, b_tmp);
        let (a_ptr, a_rs, a_cs) = if direct_a {
            // SAFETY: bounds checked above; f32 and aligned.
            (
                unsafe {
                    a_mem
                        .base()
                        .cast::<f32>()
                        .cast_const()
                        .offset(a_off as isize)
                },
                mm.a.strides[nb],
                mm.a.strides[nb + 1],
            )
        } else {
            // SAFETY: bounds checked above.
            a_tmp = unsafe { widen(a_mem, a_off, mm.a.strides[nb], mm.a.strides[nb + 1], m, k) };
            (a_tmp.as_ptr(), k as i64, 1)
        };
        let (b_ptr, b_rs, b_cs) = if direct_b {
            // SAFETY: as above.
            (
                unsafe {
                    b_mem
                        .base()
                        .cast::<f32>()
                        .cast_const()
                        .offset(b_off as isize)
                },
                mm.b.strides[nb],
                mm.b.strides[nb + 1],
            )
        } else {
            // SAFETY: bounds checked above.
            b_tmp = unsafe { widen(b_mem, b_off, mm.b.strides[nb], mm.b.strides[nb + 1], k, n) };
            (b_tmp.as_ptr(), n as i64, 1)
        };
        // SAFETY: `dst` holds m·n f32 owned by this call; the operands hold the m×k and
        // k×n elements their strides reach (bounds checked); dst := 0·dst + 1·a·b.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                n as isize,
                false,
                a_ptr,
                a_cs as isize,
                a_rs as isize,
                b_ptr,
                b_cs as isize,
                b_rs as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par_inside,
            )
        };
    };

    if direct_out {
        (0..nbatch).into_par_iter().for_each(|bi| {
            // SAFETY: batch `bi` owns output elements bi·m·n .. (bi+1)·m·n (checked above).
            let dst = unsafe { out.base().cast::<f32>().add(bi * m * n) };
            one(bi, dst);
        });
    } else {
        // Compute every batch first, then round into the output: the output may overlap an
        // operand only in a wrong plan, and then no operand is clobbered mid-product.
        let mut tmp = vec![0f32; nbatch * m * n];
        tmp.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(bi, chunk)| one(bi, chunk.as_mut_ptr()));
        for (i, &v) in tmp.iter().enumerate() {
            // SAFETY: `i < nbatch·m·n <= out.numel`, checked above; single-threaded.
            unsafe { out.write(i as i64, v) };
        }
    }
    Ok(())
}

/// A `rows × cols` matrix read through strides, widened to contiguous row-major f32.
///
/// # Safety
/// Every element the strides reach is inside `mem`.
unsafe fn widen(mem: Mem, off: i64, rs: i64, cs: i64, rows: usize, cols: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            // SAFETY: forwarded from the caller.
            v.push(unsafe { mem.read(off + r as i64 * rs + c as i64 * cs) });
        }
    }
    v
}
