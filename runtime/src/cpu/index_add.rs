//! `take`'s gradient on the CPU (`IndexAddKernel`), as the CUDA kernel runs it and as
//! PyTorch's CPU `embedding_dense_backward` does: the table's rows split into ranges, one
//! task a range (in parallel), each zeroing its rows and then walking the index in position
//! order, adding the gradient of each position whose row is in its range. Every element is
//! the f32 sum of its positions' gradients in ascending position order from 0, the CUDA
//! kernel's order, so both give the same bits, run after run; no scratch memory beyond
//! the result (so `planned` needs nothing the eager model does not count). Work:
//! `tasks · N` index reads (a few per thread) plus `N · row` adds. An index outside
//! `[0, rows)` adds nothing and is the forward's error in the data.

use super::fused::check_bounds;
use super::typed::{read, Lane};
use super::{CpuError, Mem};
use rayon::prelude::*;
use tc_compiler::codegen::index::IndexCheck;
use tc_compiler::ir::DType;
use tc_compiler::schedule::{IndexAddKernel, Plan};

/// Element offset of flat position `q` over `sizes` (row-major) with `strides`.
fn offset(mut q: usize, sizes: &[u64], strides: &[i64]) -> i64 {
    let mut off = 0i64;
    for (&n, &s) in sizes.iter().zip(strides).rev() {
        let n = n.max(1) as usize;
        off += (q % n) as i64 * s;
        q /= n;
    }
    off
}

fn bad(name: &str, msg: impl std::fmt::Display) -> CpuError {
    CpuError::BadPlan(format!("kernel {name}: {msg}"))
}

/// Rows per task: enough tasks to balance the threads (a few each), few enough that
/// reading the whole index once per task stays small beside the adds.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(1)
}

pub(super) fn run(
    plan: &Plan,
    name: &str,
    k: &IndexAddKernel,
    mems: &[Mem],
) -> Result<(), CpuError> {
    let mem = |id: tc_compiler::schedule::BufferId| {
        mems.get(id.index())
            .copied()
            .ok_or_else(|| bad(name, format!("buffer {} does not exist", id.0)))
    };
    let (index, grad, out) = (mem(k.index.buffer)?, mem(k.grad.buffer)?, mem(k.out)?);
    let us = |v: &[u64]| v.iter().map(|&x| x as usize).collect::<Vec<usize>>();
    let mut g_shape = k.pre.clone();
    g_shape.extend(&k.index_shape);
    g_shape.extend(&k.post);
    check_bounds(
        name,
        "index",
        &plan.buffer(k.index.buffer).name,
        index,
        k.index.offset,
        &k.index.strides,
        &us(&k.index_shape),
    )?;
    check_bounds(
        name,
        "gradient",
        &plan.buffer(k.grad.buffer).name,
        grad,
        k.grad.offset,
        &k.grad.strides,
        &us(&g_shape),
    )?;
    let n = k.positions() as usize;
    let rows = k.rows as usize;
    let (a_n, c_n) = k.outer();
    let (a_n, c_n) = (a_n as usize, c_n as usize);
    if !out.writable || out.dtype != DType::F32 || out.numel != a_n * rows * c_n {
        return Err(bad(
            name,
            format!(
                "the result {} is not a writable f32 buffer of {} elements",
                plan.buffer(k.out).name,
                a_n * rows * c_n
            ),
        ));
    }
    let (np, ni) = (k.pre.len(), k.index_shape.len());
    let pos_strides = &k.grad.strides[np..np + ni];
    let index_at = |p: usize| -> i64 {
        let off = k.index.offset + offset(p, &k.index_shape, &k.index.strides);
        // SAFETY: every position of the index is in bounds (checked above).
        match unsafe { read(index, off) } {
            Lane::I(v) => v,
            Lane::F(f) => f as i64,
        }
    };
    let pre_off: Vec<i64> = (0..a_n)
        .map(|a| k.grad.offset + offset(a, &k.pre, &k.grad.strides[..np]))
        .collect();
    let post_off: Vec<i64> = (0..c_n)
        .map(|c| offset(c, &k.post, &k.grad.strides[np + ni..]))
        .collect();
    let per = rows_per_task(rows);
    let tasks = rows.div_ceil(per);
    let smallest_bad = (0..tasks.max(1))
        .into_par_iter()
        .map(|t| {
            let (v0, v1) = (t * per, ((t + 1) * per).min(rows));
            for a in 0..a_n {
                for v in v0..v1 {
                    let o = ((a * rows + v) * c_n) as i64;
                    for c in 0..c_n {
                        // SAFETY: rows v0..v1 are this task's alone; in bounds (the
                        // buffer's size was checked above).
                        unsafe { out.write(o + c as i64, 0.0) };
                    }
                }
            }
            let mut worst: Option<i64> = None;
            for p in 0..n {
                let v = index_at(p);
                if v < 0 || v as u64 >= k.rows {
                    worst = Some(worst.map_or(v, |w| w.min(v)));
                    continue;
                }
                let v = v as usize;
                if v < v0 || v >= v1 {
                    continue;
                }
                let pp = offset(p, &k.index_shape, pos_strides);
                for (a, &pa) in pre_off.iter().enumerate() {
                    let o = ((a * rows + v) * c_n) as i64;
                    for (c, &pc) in post_off.iter().enumerate() {
                        // SAFETY: the gradient's element is in bounds (checked above); the
                        // result's row is this task's alone.
                        unsafe {
                            let s = out.read(o + c as i64) + grad.read(pa + pp + pc);
                            out.write(o + c as i64, s);
                        }
                    }
                }
            }
            worst
        })
        .reduce(|| None, |x, y| x.into_iter().chain(y).min());
    match smallest_bad {
        Some(v) => Err(CpuError::IndexOutOfRange(
            IndexCheck {
                symbol: String::new(),
                slot: 0,
                size: k.rows,
                what: k.what.clone(),
            }
            .message(v),
        )),
        None => Ok(()),
    }
}
