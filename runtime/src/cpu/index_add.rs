//! `take`'s gradient on the CPU (`IndexAddKernel`): a stable counting sort of the index
//! positions by row (`N + V` steps, in the kernel's planned workspace: each row's first
//! place, then the positions' gradient offsets in sorted order), then the rows in parallel,
//! each element the f32 sum of its positions' gradients in ascending position order, from
//! 0 — the order the CUDA kernel adds in, so both give the same bits. An index outside
//! `[0, rows)` adds nothing and is the forward's error in the data.

use super::fused::{check_bounds, for_each_task};
use super::typed::{read, Lane};
use super::{CpuError, Mem};
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
    // The sort's memory: the planned workspace, or (a plan made for the GPU) a vector.
    let need = rows + 1 + n;
    let mut own: Vec<i64> = Vec::new();
    let sort: &mut [i64] = match k.workspace {
        Some(w) => {
            let m = mem(w)?;
            if m.dtype != DType::I64 || m.numel < need || !m.writable {
                return Err(bad(
                    name,
                    format!(
                        "workspace {} holds fewer than {need} i64",
                        plan.buffer(w).name
                    ),
                ));
            }
            // SAFETY: the workspace is this kernel's alone at this step (the plan's
            // contract), `need` i64 long and 16-byte aligned in the arena.
            unsafe { std::slice::from_raw_parts_mut(m.ptr.cast::<i64>(), need) }
        }
        None => {
            own.resize(need, 0);
            &mut own
        }
    };
    let (start, order) = sort.split_at_mut(rows + 1);
    start.fill(0);
    let ni = k.index_shape.len();
    let np = k.pre.len();
    let pos_strides = &k.grad.strides[np..np + ni];
    // Count, place (stable: positions in ascending order), shift the starts back.
    let mut smallest_bad: Option<i64> = None;
    let row_of = |p: usize| -> Option<usize> {
        let off = k.index.offset + offset(p, &k.index_shape, &k.index.strides);
        // SAFETY: every position of the index is in bounds (checked above).
        let v = match unsafe { read(index, off) } {
            Lane::I(v) => v,
            Lane::F(f) => f as i64,
        };
        (v >= 0 && (v as u64) < k.rows).then_some(v as usize)
    };
    for p in 0..n {
        match row_of(p) {
            Some(v) => start[v + 1] += 1,
            None => {
                let off = k.index.offset + offset(p, &k.index_shape, &k.index.strides);
                // SAFETY: as above.
                if let Lane::I(v) = unsafe { read(index, off) } {
                    smallest_bad = Some(smallest_bad.map_or(v, |b| b.min(v)));
                }
            }
        }
    }
    for v in 0..rows {
        start[v + 1] += start[v];
    }
    for p in 0..n {
        if let Some(v) = row_of(p) {
            order[start[v] as usize] = offset(p, &k.index_shape, pos_strides);
            start[v] += 1;
        }
    }
    for v in (1..=rows).rev() {
        start[v] = start[v - 1];
    }
    start[0] = 0;
    let (start, order) = (&*start, &*order);
    let pre_off: Vec<i64> = (0..a_n)
        .map(|a| k.grad.offset + offset(a, &k.pre, &k.grad.strides[..np]))
        .collect();
    let post_off: Vec<i64> = (0..c_n)
        .map(|c| offset(c, &k.post, &k.grad.strides[np + ni..]))
        .collect();
    for_each_task(
        rows,
        64,
        || vec![0f32; c_n],
        |acc, v| {
            let here = &order[start[v] as usize..start[v + 1] as usize];
            for (a, &pa) in pre_off.iter().enumerate() {
                acc.fill(0.0);
                for &pp in here {
                    let base = pa + pp;
                    for (s, &pc) in acc.iter_mut().zip(&post_off) {
                        // SAFETY: inside the gradient's bounds (checked above).
                        *s += unsafe { grad.read(base + pc) };
                    }
                }
                let o = ((a * rows + v) * c_n) as i64;
                for (c, &s) in acc.iter().enumerate() {
                    // SAFETY: row `v` of block `a` is this task's alone; in bounds (the
                    // buffer's size was checked above).
                    unsafe { out.write(o + c as i64, s) };
                }
            }
        },
    );
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
