//! Matrix products: the exact `cublasGemmStridedBatchedEx` call for a `MatMulKernel`
//! (row-major via the usual swap: C^T = B^T·A^T in cuBLAS's column-major terms), or, for
//! operands cuBLAS cannot take as they are, a generated tiled CUDA C kernel over strides.
//!
//! The fallback needs no extra memory, so the plan's figures hold whichever path runs.

use super::cuda::{load_conv, may_alias, origin_comment, store_conv};
use super::writer::Writer;
use super::{storage_type, CudaKernel, Launch};
use crate::ir::DType;
use crate::schedule::{BufferId, Kernel, MatMulKernel, MatOperand, Plan};
use serde::Serialize;

/// One matrix product as cuBLAS sees it (column-major). cuBLAS's `A` is the plan's right
/// operand `b`, cuBLAS's `B` the plan's left operand `a`, so that C (n×m, column-major) is
/// the plan's row-major m×n output. All offsets and strides are in elements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GemmCall {
    /// `CUBLAS_OP_T` for cuBLAS's A (else `CUBLAS_OP_N`).
    pub trans_a: bool,
    pub trans_b: bool,
    /// cuBLAS's m, n, k: the plan's n, m, k.
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub a: BufferId,
    pub a_type: DType,
    pub a_offset: i64,
    pub lda: i32,
    pub stride_a: i64,
    pub b: BufferId,
    pub b_type: DType,
    pub b_offset: i64,
    pub ldb: i32,
    pub stride_b: i64,
    pub c: BufferId,
    pub c_type: DType,
    pub ldc: i32,
    pub stride_c: i64,
    pub batch_count: i32,
    /// One strided-batched call per entry, at these extra element offsets of (A, B, C);
    /// a single `[0, 0, 0]` when one call covers every batch.
    pub calls: Vec<[i64; 3]>,
    /// The plan's scratch buffer, given to `cublasSetWorkspace` (none: workspace size 0).
    pub workspace: Option<BufferId>,
    /// `beta = 1`: C accumulates `x + A·B` (`MatMulKernel::accumulate`), `x` this buffer,
    /// copied into C first (all of C's bytes) unless C is in place of it (the same address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accumulate: Option<BufferId>,
}

/// cuBLAS op and leading dimension for a row-major `rows × cols` operand read with
/// strides (`rs`, `cs`), seen column-major as its transpose; `None` if neither order is
/// unit-stride with a legal leading dimension.
fn blas_layout(rows: u64, cols: u64, rs: i64, cs: i64) -> Option<(bool, i64)> {
    let (r, c) = (rows as i64, cols as i64);
    // Not transposed: column-major cols×rows with ld = rs.
    if cs == 1 || c == 1 {
        let ld = if r == 1 { c.max(1) } else { rs };
        if ld >= c.max(1) {
            return Some((false, ld));
        }
    }
    // Transposed: column-major rows×cols with ld = cs.
    if rs == 1 || r == 1 {
        let ld = if c == 1 { r.max(1) } else { cs };
        if ld >= r.max(1) {
            return Some((true, ld));
        }
    }
    None
}

/// The cuBLAS call for `mm`, or `None` when it needs the generated fallback kernel.
pub fn gemm_plan(mm: &MatMulKernel) -> Option<GemmCall> {
    match mm.batch_folded_into_rows() {
        Some(folded) => plan_call(&folded),
        None => plan_call(mm),
    }
}

fn plan_call(mm: &MatMulKernel) -> Option<GemmCall> {
    let nb = mm.batch.len();
    if mm.a.strides.len() != nb + 2 || mm.b.strides.len() != nb + 2 || mm.a.dtype != mm.b.dtype {
        return None;
    }
    let supported = matches!(
        (mm.a.dtype, mm.out_dtype),
        (DType::F32, DType::F32)
            | (DType::F16, DType::F16)
            | (DType::F16, DType::F32)
            | (DType::BF16, DType::BF16)
            | (DType::BF16, DType::F32)
    );
    if !supported {
        return None;
    }
    let (trans_a, lda) = blas_layout(mm.k, mm.n, mm.b.strides[nb], mm.b.strides[nb + 1])?;
    let (trans_b, ldb) = blas_layout(mm.m, mm.k, mm.a.strides[nb], mm.a.strides[nb + 1])?;
    // Batch axes: drop size-1 axes, merge the innermost run that all three walk uniformly
    // into one strided batch, enumerate the rest.
    let mn = (mm.m * mm.n) as i64;
    let c_strides = crate::ir::types::contiguous_strides(&mm.batch);
    let mut axes: Vec<(u64, [i64; 3])> = (0..nb)
        .filter(|&d| mm.batch[d] != 1)
        .map(|d| {
            (
                mm.batch[d],
                [
                    mm.b.strides[d],
                    mm.a.strides[d],
                    c_strides[d].saturating_mul(mn),
                ],
            )
        })
        .collect();
    let (mut count, mut strides) = (1u64, [0i64; 3]);
    if let Some((size, s)) = axes.pop() {
        count = size;
        strides = s;
        while let Some(&(size, s)) = axes.last() {
            let inner = count as i64;
            if (0..3).all(|o| s[o] == strides[o].saturating_mul(inner)) {
                count *= size;
                axes.pop();
            } else {
                break;
            }
        }
    }
    let mut calls: Vec<[i64; 3]> = vec![[0, 0, 0]];
    for &(size, s) in &axes {
        calls = calls
            .iter()
            .flat_map(|base| {
                (0..size as i64)
                    .map(move |i| [base[0] + i * s[0], base[1] + i * s[1], base[2] + i * s[2]])
            })
            .collect();
    }
    let small = |x: i64| i32::try_from(x).ok();
    Some(GemmCall {
        trans_a,
        trans_b,
        m: small(mm.n as i64)?,
        n: small(mm.m as i64)?,
        k: small(mm.k as i64)?,
        a: mm.b.buffer,
        a_type: mm.b.dtype,
        a_offset: mm.b.offset,
        lda: small(lda)?,
        stride_a: strides[0],
        b: mm.a.buffer,
        b_type: mm.a.dtype,
        b_offset: mm.a.offset,
        ldb: small(ldb)?,
        stride_b: strides[1],
        c: mm.out,
        c_type: mm.out_dtype,
        ldc: small(mm.n as i64)?,
        stride_c: strides[2],
        batch_count: small(count as i64)?,
        calls,
        workspace: mm.workspace,
        accumulate: mm.accumulate,
    })
}

pub(crate) fn emit_matmul(
    plan: &Plan,
    index: usize,
    kernel: &Kernel,
    mm: &MatMulKernel,
) -> CudaKernel {
    match gemm_plan(mm) {
        Some(call) => CudaKernel {
            kernel_index: index,
            name: kernel.name.clone(),
            source: String::new(),
            launch: Launch::Cublas(call),
            params: Vec::new(),
            checks: Vec::new(),
        },
        None => emit_fallback(plan, index, kernel, mm),
    }
}

fn header(w: &mut Writer, plan: &Plan, kernel: &Kernel, mm: &MatMulKernel) {
    origin_comment(w, kernel);
    w.line(format!(
        "// out[{:?}, {}, {}] = a[.., {}, {}] @ b[.., {}, {}], f32 accumulation",
        mm.batch, mm.m, mm.n, mm.m, mm.k, mm.k, mm.n
    ));
    let op = |name: &str, o: &MatOperand| {
        format!(
            "//   {name} = {} ({}), offset {}, strides {:?}",
            plan.buffer(o.buffer).name,
            o.dtype,
            o.offset,
            o.strides
        )
    };
    w.line(op("a", &mm.a));
    w.line(op("b", &mm.b));
    w.line(format!(
        "//   out = {} ({}), contiguous",
        plan.buffer(mm.out).name,
        mm.out_dtype
    ));
    if let Some(x) = mm.accumulate {
        let how = if plan.buffer(mm.out).in_place_of == Some(x) {
            "out in place of it"
        } else {
            "it is copied into out first"
        };
        w.line(format!(
            "//   beta = 1: out = {} + a @ b (the residual add; {how})",
            plan.buffer(x).name
        ));
    }
}

/// A comment giving the exact cuBLAS call, for `emit_program`.
pub(crate) fn describe_call(plan: &Plan, name: &str, call: &GemmCall) -> String {
    let mut w = Writer::new();
    if let Some(kernel) = plan.kernels.iter().find(|k| k.name == name) {
        if let crate::schedule::KernelKind::MatMul(mm) = &kernel.kind {
            header(&mut w, plan, kernel, mm);
        }
    }
    let op = |t: bool| if t { "CUBLAS_OP_T" } else { "CUBLAS_OP_N" };
    let ty = |d: DType| match d {
        DType::F32 => "CUDA_R_32F",
        DType::F16 => "CUDA_R_16F",
        DType::BF16 => "CUDA_R_16BF",
        // The checker makes no integer products; named for completeness.
        DType::I32 => "CUDA_R_32I",
        DType::I64 => "CUDA_R_64I",
        DType::Bool => "CUDA_R_8U",
    };
    let buf = |b: BufferId| plan.buffer(b).name.clone();
    w.line(format!(
        "// cuBLAS: cublasGemmStridedBatchedEx({}, {}, m={}, n={}, k={}, A={}+{} {} lda={} strideA={}, B={}+{} {} ldb={} strideB={}, C={} {} ldc={} strideC={}, batch={}, CUBLAS_COMPUTE_32F)",
        op(call.trans_a),
        op(call.trans_b),
        call.m,
        call.n,
        call.k,
        buf(call.a),
        call.a_offset,
        ty(call.a_type),
        call.lda,
        call.stride_a,
        buf(call.b),
        call.b_offset,
        ty(call.b_type),
        call.ldb,
        call.stride_b,
        buf(call.c),
        ty(call.c_type),
        call.ldc,
        call.stride_c,
        call.batch_count
    ));
    if call.calls.len() > 1 {
        w.line(format!(
            "//   repeated {} times over the non-uniform batch axes",
            call.calls.len()
        ));
    }
    match call.workspace {
        Some(ws) => w.line(format!(
            "//   workspace: {} ({} bytes)",
            buf(ws),
            plan.buffer(ws).bytes
        )),
        None => w.line("//   workspace: none"),
    }
    w.finish()
}

/// Tile edge of the fallback kernel.
const TILE: u64 = 16;

fn emit_fallback(plan: &Plan, index: usize, kernel: &Kernel, mm: &MatMulKernel) -> CudaKernel {
    let mut params: Vec<BufferId> = vec![mm.a.buffer];
    if mm.b.buffer != mm.a.buffer {
        params.push(mm.b.buffer);
    }
    // The residual read where each element is written: no copy first, in place or not.
    if let Some(x) = mm.accumulate.filter(|x| !params.contains(x)) {
        params.push(x);
    }
    params.push(mm.out);
    let pname = |b: BufferId| format!("b{}", params.iter().position(|x| *x == b).unwrap_or(0));
    let nb = mm.batch.len();
    let batches: u64 = mm.batch.iter().product();
    let (mt, nt) = (mm.m.div_ceil(TILE), mm.n.div_ceil(TILE));
    let reach = |o: &MatOperand, rows: u64, cols: u64| -> i128 {
        let dims: Vec<u64> = mm.batch.iter().copied().chain([rows, cols]).collect();
        o.offset as i128
            + dims
                .iter()
                .zip(&o.strides)
                .map(|(&s, &st)| (s as i128 - 1) * (st as i128).abs())
                .sum::<i128>()
    };
    let limit: i128 = (1i128 << 31) - (1 << 24);
    let wide = reach(&mm.a, mm.m, mm.k) >= limit
        || reach(&mm.b, mm.k, mm.n) >= limit
        || (batches as i128) * (mm.m * mm.n) as i128 >= limit;
    let idx_t = if wide { "long long" } else { "int" };

    let mut w = Writer::new();
    header(&mut w, plan, kernel, mm);
    w.line("// operands cuBLAS cannot take as laid out: tiled 16x16 kernel over the strides");
    let sig: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let ty = storage_type(plan.buffer(*b).dtype);
            // `__restrict__` where the output shares no bytes with an operand.
            let alone = if *b == mm.out {
                params.iter().all(|o| o == b || !may_alias(plan, *b, *o))
            } else {
                !may_alias(plan, *b, mm.out)
            };
            let q = if alone { " __restrict__" } else { "" };
            if *b == mm.out {
                format!("{ty}*{q} b{i}")
            } else {
                format!("const {ty}*{q} b{i}")
            }
        })
        .collect();
    w.open(format!(
        "extern \"C\" __global__ void __launch_bounds__(256) {}({})",
        kernel.name,
        sig.join(", ")
    ));
    w.line(format!("__shared__ float ta[{TILE}][{}];", TILE + 1));
    w.line(format!("__shared__ float tb[{TILE}][{}];", TILE + 1));
    w.line("const int tx = threadIdx.x & 15;");
    w.line("const int ty = threadIdx.x >> 4;");
    w.open(format!(
        "for ({idx_t} bz = blockIdx.z; bz < {batches}; bz += gridDim.z)"
    ));
    // Batch offsets of each operand.
    let mut q = String::from("bz");
    let mut oa = vec![mm.a.offset.to_string()];
    let mut ob = vec![mm.b.offset.to_string()];
    if nb > 0 {
        w.line(format!("{idx_t} bq = {q};"));
        q = "bq".into();
        for d in (0..nb).rev() {
            w.line(format!(
                "const {idx_t} z{d} = {q} % {}; {q} /= {};",
                mm.batch[d], mm.batch[d]
            ));
            oa.push(format!("z{d} * {}", mm.a.strides[d]));
            ob.push(format!("z{d} * {}", mm.b.strides[d]));
        }
    }
    w.line(format!("const {idx_t} oa = {};", oa.join(" + ")));
    w.line(format!("const {idx_t} ob = {};", ob.join(" + ")));
    w.line(format!("const {idx_t} oc = bz * {};", mm.m * mm.n));
    let (sam, sak) = (mm.a.strides[nb], mm.a.strides[nb + 1]);
    let (sbk, sbn) = (mm.b.strides[nb], mm.b.strides[nb + 1]);
    w.open(format!(
        "for ({idx_t} mt = blockIdx.y; mt < {mt}; mt += gridDim.y)"
    ));
    w.open(format!(
        "for ({idx_t} nt = blockIdx.x; nt < {nt}; nt += gridDim.x)"
    ));
    w.line(format!("const {idx_t} row = mt * {TILE} + ty;"));
    w.line(format!("const {idx_t} col = nt * {TILE} + tx;"));
    w.line("float acc = 0.0f;");
    w.open(format!("for ({idx_t} k0 = 0; k0 < {}; k0 += {TILE})", mm.k));
    let la = load_conv(
        mm.a.dtype,
        &format!(
            "{}[oa + row * {sam} + (k0 + tx) * {sak}]",
            pname(mm.a.buffer)
        ),
    );
    let lb = load_conv(
        mm.b.dtype,
        &format!(
            "{}[ob + (k0 + ty) * {sbk} + col * {sbn}]",
            pname(mm.b.buffer)
        ),
    );
    w.line(format!(
        "ta[ty][tx] = (row < {} && k0 + tx < {}) ? {la} : 0.0f;",
        mm.m, mm.k
    ));
    w.line(format!(
        "tb[ty][tx] = (k0 + ty < {} && col < {}) ? {lb} : 0.0f;",
        mm.k, mm.n
    ));
    w.line("__syncthreads();");
    w.line("#pragma unroll");
    w.line(format!(
        "for (int kk = 0; kk < {TILE}; ++kk) acc += ta[ty][kk] * tb[kk][tx];"
    ));
    w.line("__syncthreads();");
    w.close();
    w.open(format!("if (row < {} && col < {})", mm.m, mm.n));
    let value = match mm.accumulate {
        // The product rounded to the output's dtype, then the add, as the unfused add.
        Some(x) => {
            let rounded = load_conv(mm.out_dtype, &store_conv(mm.out_dtype, "acc"));
            let res = load_conv(
                mm.out_dtype,
                &format!("{}[oc + row * {} + col]", pname(x), mm.n),
            );
            store_conv(mm.out_dtype, &format!("{res} + {rounded}"))
        }
        None => store_conv(mm.out_dtype, "acc"),
    };
    w.line(format!(
        "{}[oc + row * {} + col] = {value};",
        pname(mm.out),
        mm.n
    ));
    w.close();
    w.close();
    w.close();
    w.close();
    w.close();
    CudaKernel {
        kernel_index: index,
        name: kernel.name.clone(),
        source: w.finish(),
        launch: Launch::clamped_grid([nt, mt, batches], 256),
        params,
        checks: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blas_layouts() {
        // Row-major 3×4: not transposed, ld 4; its transpose view (strides [1, 3]) of a 4×3.
        assert_eq!(blas_layout(3, 4, 4, 1), Some((false, 4)));
        assert_eq!(blas_layout(3, 4, 1, 3), Some((true, 3)));
        // Padded rows are fine; overlapping rows (ld < cols) and broadcast axes are not.
        assert_eq!(blas_layout(3, 4, 8, 1), Some((false, 8)));
        assert_eq!(blas_layout(3, 4, 2, 1), None);
        assert_eq!(blas_layout(3, 4, 0, 1), None);
        assert_eq!(blas_layout(3, 4, 4, 2), None);
        // One row: its stride never matters.
        assert_eq!(blas_layout(1, 4, 0, 1), Some((false, 4)));
    }

    #[test]
    fn shared_weight_batches_fold_into_one_gemm() {
        let op = |buffer: u32, strides: Vec<i64>| MatOperand {
            buffer: BufferId(buffer),
            dtype: DType::F32,
            offset: 0,
            strides,
        };
        let mm = MatMulKernel {
            batch: vec![2, 3],
            m: 5,
            n: 7,
            k: 4,
            a: op(0, vec![60, 20, 4, 1]),
            b: op(1, vec![0, 0, 7, 1]),
            out: BufferId(2),
            out_dtype: DType::F32,
            workspace: None,
            accumulate: None,
            prologue: None,
            packs_whole_b: false,
        };
        let call = gemm_plan(&mm).expect("cuBLAS can take it");
        assert_eq!((call.m, call.n, call.k, call.batch_count), (7, 30, 4, 1));
        assert_eq!(call.calls, vec![[0, 0, 0]]);
        // With a per-batch weight it stays batched: 6 products of 5×7.
        let batched = MatMulKernel {
            b: op(1, vec![84, 28, 7, 1]),
            ..mm
        };
        let call = gemm_plan(&batched).expect("cuBLAS can take it");
        assert_eq!((call.m, call.n, call.batch_count), (7, 5, 6));
        assert_eq!((call.stride_a, call.stride_b, call.stride_c), (28, 20, 35));
    }
}
