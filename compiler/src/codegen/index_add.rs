//! CUDA C for an `IndexAddKernel` (`take`'s gradient), deterministic with no atomics on
//! floats: one block per range of `R` table rows walks the index in position order, a
//! chunk of `CHUNK_PER_THREAD · T` positions at a time (each position's row, relative to
//! the block's range or -1, staged in shared memory between two barriers); each thread owns
//! some of the `Π pre · Π post` columns of the block's rows and adds the gradient of each
//! position whose row is in range into them in that order, holding the running sum of the
//! current row in a register while consecutive positions name the same row. So every
//! element is the sum of its positions in ascending order, from 0, in f32: the CPU's sums,
//! bit for bit. Cost: each block reads the whole index (`G · N` index reads, from L2) and
//! each column thread walks the `N` staged rows; the gradient is read once (`N · cols`)
//! and the result written once plus once per change of row in a thread's walk. An index
//! outside `[0, rows)` adds nothing; block 0 records the smallest such index with the
//! integer `atomicMin` of the gathers' checks (`codegen::index`), reported by the host.

use super::cuda::load_conv;
use super::index::{check_symbol, IndexCheck, NO_ERROR};
use super::writer::Writer;
use super::{storage_type, CudaKernel, Launch};
use crate::schedule::{BufferId, IndexAddKernel, Kernel, Plan};

/// Most blocks one kernel launches: a block per `ceil(rows / MAX_BLOCKS)` rows (each block
/// reads the whole index once, so more blocks read it more often).
pub const MAX_BLOCKS: u64 = 512;

/// Positions each thread stages per chunk (fewer barriers).
pub const CHUNK_PER_THREAD: u64 = 8;

/// Threads per block: the columns rounded up to a warp, at most 256.
pub fn threads(cols: u64) -> u64 {
    cols.div_ceil(32).clamp(1, 8) * 32
}

/// Rows per block and blocks.
pub fn blocks(rows: u64) -> (u64, u64) {
    let per = rows.div_ceil(MAX_BLOCKS).max(1);
    (per, rows.div_ceil(per).max(1))
}

/// Adjacent axes whose strides tile each other merged (`sizes`, `strides`), dropping
/// size-1 axes: fewer divisions when a position is unravelled.
fn merged(sizes: &[u64], strides: &[i64]) -> Vec<(u64, i64)> {
    let mut out: Vec<(u64, i64)> = Vec::new();
    for (&n, &s) in sizes.iter().zip(strides) {
        if n == 1 {
            continue;
        }
        match out.last_mut() {
            Some((pn, ps)) if *ps == s * n as i64 => {
                *pn *= n;
                *ps = s;
            }
            _ => out.push((n, s)),
        }
    }
    out
}

/// C expression of the element offset of flat position `var` over merged axes `axes`
/// (row-major), `"0"` for none.
fn unravel(var: &str, axes: &[(u64, i64)]) -> String {
    match axes {
        [] => "0".to_string(),
        [(_, s)] => format!("({var}) * {s}LL"),
        _ => {
            let mut terms = Vec::new();
            let mut div = 1u64;
            for &(n, s) in axes.iter().rev() {
                let q = if div == 1 {
                    format!("({var})")
                } else {
                    format!("(({var}) / {div}LL)")
                };
                terms.push(format!("({q} % {n}LL) * {s}LL"));
                div *= n;
            }
            terms.join(" + ")
        }
    }
}

pub(crate) fn emit(plan: &Plan, index: usize, kernel: &Kernel, k: &IndexAddKernel) -> CudaKernel {
    let params: Vec<BufferId> = vec![k.index.buffer, k.grad.buffer, k.out];
    let n = k.positions();
    let v = k.rows;
    let (a_n, c_n) = k.outer();
    let cols = a_n * c_n;
    let t = threads(cols);
    let chunk = t * CHUNK_PER_THREAD;
    let (per, grid) = blocks(v);
    let np = k.pre.len();
    let ni = k.index_shape.len();
    let idx_axes = merged(&k.index_shape, &k.index.strides);
    let pre_axes = merged(&k.pre, &k.grad.strides[..np]);
    let pos_axes = merged(&k.index_shape, &k.grad.strides[np..np + ni]);
    let post_axes = merged(&k.post, &k.grad.strides[np + ni..]);
    let sym = check_symbol(&kernel.name);
    let ity = storage_type(k.index.dtype);
    let gty = storage_type(k.grad.dtype);

    let mut w = Writer::new();
    w.line(format!(
        "// {}: index add (lines {:?}): pre {:?} index {:?} rows {v} post {:?}; a block per {per} rows walks the {n} positions in order, {t} threads over {cols} columns; no float atomics",
        kernel.name, kernel.lines, k.pre, k.index_shape, k.post
    ));
    w.line(format!("__device__ long long {sym}[1] = {{{NO_ERROR}LL}};"));
    w.open(format!(
        "extern \"C\" __global__ void __launch_bounds__({t}) {}(const {ity}* __restrict__ b0, const {gty}* __restrict__ b1, float* __restrict__ b2)",
        kernel.name
    ));
    w.line(format!("__shared__ int srow[{chunk}];"));
    w.line("const int tid = threadIdx.x;");
    w.line(format!(
        "const long long v0 = (long long)blockIdx.x * {per}LL;"
    ));
    w.line(format!(
        "const long long v1 = v0 + {per}LL < {v}LL ? v0 + {per}LL : {v}LL;"
    ));
    // Zero this block's rows (each thread its own columns, which it alone writes later).
    w.open(format!("for (long long j = tid; j < {cols}LL; j += {t})"));
    w.line(format!(
        "const long long ob = (j / {c_n}LL) * {}LL + j % {c_n}LL;",
        v * c_n
    ));
    w.line(format!(
        "for (long long r = v0; r < v1; ++r) b2[ob + r * {c_n}LL] = 0.0f;"
    ));
    w.close();
    w.open(format!(
        "for (long long base = 0; base < {n}LL; base += {chunk})"
    ));
    w.open(format!("for (int u = 0; u < {CHUNK_PER_THREAD}; ++u)"));
    w.line(format!("const int q = u * {t} + tid;"));
    w.line("const long long p = base + q;");
    w.line("int r = -1;");
    w.open(format!("if (p < {n}LL)"));
    w.line(format!(
        "const long long v = {};",
        load_conv(
            k.index.dtype,
            &format!("b0[{}LL + {}]", k.index.offset, unravel("p", &idx_axes))
        )
    ));
    w.line(format!(
        "if (v < 0 || v >= {v}LL) {{ if (blockIdx.x == 0) atomicMin(&{sym}[0], v); }}"
    ));
    w.line("else if (v >= v0 && v < v1) r = (int)(v - v0);");
    w.close();
    w.line("srow[q] = r;");
    w.close();
    w.line("__syncthreads();");
    w.line(format!(
        "const int cnt = {n}LL - base < {chunk}LL ? (int)({n}LL - base) : {chunk};"
    ));
    w.open(format!("for (long long j = tid; j < {cols}LL; j += {t})"));
    w.line(format!("const long long a = j / {c_n}LL, c = j % {c_n}LL;"));
    w.line(format!("const long long ob = a * {}LL + c;", v * c_n));
    w.line(format!(
        "const long long gb = {}LL + {} + {};",
        k.grad.offset,
        unravel("a", &pre_axes),
        unravel("c", &post_axes)
    ));
    w.line("int cur = -1;");
    w.line("float acc = 0.0f;");
    w.open("for (int q = 0; q < cnt; ++q)");
    w.line("const int rq = srow[q];");
    w.line("if (rq < 0) continue;");
    w.open("if (rq != cur)");
    w.line(format!(
        "if (cur >= 0) b2[ob + (v0 + cur) * {c_n}LL] = acc;"
    ));
    w.line("cur = rq;");
    w.line(format!("acc = b2[ob + (v0 + rq) * {c_n}LL];"));
    w.close();
    w.line(format!(
        "acc = acc + {};",
        load_conv(
            k.grad.dtype,
            &format!("b1[gb + {}]", unravel("base + q", &pos_axes))
        )
    ));
    w.close();
    w.line(format!(
        "if (cur >= 0) b2[ob + (v0 + cur) * {c_n}LL] = acc;"
    ));
    w.close();
    w.line("__syncthreads();");
    w.close();
    w.close();
    let _ = plan;
    CudaKernel {
        kernel_index: index,
        name: kernel.name.clone(),
        source: w.finish(),
        launch: Launch::Grid {
            grid: [grid as u32, 1, 1],
            block: [t as u32, 1, 1],
            shared_bytes: 0,
        },
        params,
        checks: vec![IndexCheck {
            symbol: sym,
            slot: 0,
            size: v,
            what: k.what.clone(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_axes_and_unravel() {
        assert_eq!(merged(&[2, 3], &[3, 1]), vec![(6, 1)]);
        assert_eq!(merged(&[2, 1, 3], &[1, 0, 2]), vec![(2, 1), (3, 2)]);
        assert_eq!(unravel("p", &[]), "0");
        assert_eq!(unravel("p", &[(6, 1)]), "(p) * 1LL");
        assert_eq!(
            unravel("p", &[(2, 1), (3, 2)]),
            "((p) % 3LL) * 2LL + (((p) / 3LL) % 2LL) * 1LL"
        );
    }

    #[test]
    fn blocks_cover_the_rows() {
        for rows in [0u64, 1, 5, 511, 512, 513, 50_257] {
            let (per, g) = blocks(rows);
            assert!(g <= MAX_BLOCKS && per * g >= rows, "{rows}: {per} x {g}");
        }
        assert_eq!(threads(8), 32);
        assert_eq!(threads(768), 256);
    }
}
