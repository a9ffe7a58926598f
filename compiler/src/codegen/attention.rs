//! CUDA C for an `AttentionKernel` (flash attention): one block per (batch, tile of `BQ`
//! queries); the block's queries stay in shared memory while tiles of `BK` keys and values
//! are staged through it; each tile's logits (the scores `q·k`, rounded to the score dtype,
//! through the prologue) are folded into a running max and sum per query (online softmax)
//! and the rescaled f32 accumulator of `Σ p·v`. Four threads share a query: they split a
//! tile's logits for the max and the sum (combined by warp shuffles, in a fixed order) and
//! the output columns for the accumulator. Every sum runs in one fixed order, so the result
//! does not depend on scheduling. Key tiles a mask hides entirely (`crate::masked`) are not
//! walked: each query tile reads its range of the others from a table in constant memory;
//! the output is written through strides, with the epilogue computed per element. Each key
//! tile computed invokes `TC_KEY_TILE()`, empty on the device, a count under the CUDA
//! emulation (the tests hold it to the tiles the mask leaves).

use super::cuda::{address, float_literal, load_conv, op_expr, store_conv, value_type};
use super::writer::Writer;
use super::{storage_type, CudaKernel, Launch};
use crate::ir::DType;
use crate::lower::{ValueId, ValueOp};
use crate::schedule::{
    AttentionKernel, BufferId, Inst, InstOp, Kernel, Load, MatOperand, Plan, SCORE,
};

/// Queries per block.
pub const BQ: u64 = 32;
/// Threads per query.
pub const TPQ: u64 = 4;
/// Threads per block.
pub const THREADS: u64 = BQ * TPQ;
pub use crate::fuse::attention::MAX_HEAD;

/// The most query tiles whose key-tile table (two `int`s each) goes to constant memory;
/// a larger kernel computes every tile.
pub const MAX_TILE_TABLE: u64 = 4096;

/// Keys per tile: shared memory (queries, keys, values and a tile of logits, f32) stays
/// under the 48 KiB of static shared memory for heads up to `MAX_HEAD`.
pub fn keys_per_tile(d: u64, dv: u64) -> u64 {
    if d.max(dv) <= 64 {
        32
    } else {
        16
    }
}

/// `x` (an f32 expression) rounded to the float `dtype` (integral values are never rounded
/// here: they are `long long`, see `prologue`).
fn round_expr(dtype: DType, x: &str) -> String {
    match dtype {
        DType::F16 => format!("tc_round_f16({x})"),
        DType::BF16 => format!("tc_round_bf16({x})"),
        _ => x.to_string(),
    }
}

pub(crate) fn emit(plan: &Plan, index: usize, kernel: &Kernel, a: &AttentionKernel) -> CudaKernel {
    let mut params: Vec<BufferId> = Vec::new();
    for b in a.reads().into_iter().chain([a.out]) {
        if !params.contains(&b) {
            params.push(b);
        }
    }
    let pname = |b: BufferId| format!("b{}", params.iter().position(|x| *x == b).unwrap_or(0));
    let nb = a.batch.len();
    let batches: u64 = a.batch.iter().product();
    let bk = keys_per_tile(a.d, a.dv);
    let (d, dv, n, m) = (a.d, a.dv, a.n, a.m);
    let cols = dv.div_ceil(TPQ);
    let qtiles = m.div_ceil(BQ);

    let mut w = Writer::new();
    let ktiles = n.div_ceil(bk);
    // Key tiles a mask hides entirely from a tile of queries (`masked`): each query tile's
    // range of the others, in constant memory.
    let tiles = crate::masked::key_tiles(a, BQ, bk);
    let skipping = tiles.masked.is_some() && qtiles <= MAX_TILE_TABLE;
    let table = format!("{}_key_tiles", kernel.name);
    if skipping {
        w.line(format!(
            "// key tiles [first, end) per tile of {BQ} queries; the others are masked to {} ({} of {} tiles computed)",
            float_literal(tiles.masked.unwrap_or(0.0) as f64),
            tiles.computed(),
            qtiles * ktiles
        ));
        let body: Vec<String> = tiles
            .ranges
            .iter()
            .flat_map(|&(a, b)| [a.to_string(), b.to_string()])
            .collect();
        w.line(format!(
            "__constant__ int {table}[{}] = {{{}}};",
            2 * qtiles,
            body.join(", ")
        ));
    }
    // The emulation's count of the key tiles computed (`tc_runtime::cuda::emu`, which
    // defines it first); nothing on the device.
    w.line("#ifndef TC_KEY_TILE");
    w.line("#define TC_KEY_TILE()");
    w.line("#endif");
    w.line(format!(
        "// {}: attention (lines {:?}): batch {:?} m {m} n {n} d {d} dv {dv}; the scores are never stored",
        kernel.name, kernel.lines, a.batch
    ));
    w.line(format!(
        "// flash attention: {BQ} queries per block, {bk} keys per tile, {TPQ} threads per query, online softmax"
    ));
    let sig: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let ty = storage_type(plan.buffer(*b).dtype);
            if *b == a.out {
                format!("{ty}* __restrict__ b{i}")
            } else {
                format!("const {ty}* __restrict__ b{i}")
            }
        })
        .collect();
    w.open(format!(
        "extern \"C\" __global__ void __launch_bounds__({THREADS}) {}({})",
        kernel.name,
        sig.join(", ")
    ));
    w.line(format!("__shared__ float sq[{BQ}][{}];", d + 1));
    w.line(format!("__shared__ float sk[{bk}][{}];", d + 1));
    w.line(format!("__shared__ float sv[{bk}][{dv}];"));
    w.line(format!("__shared__ float sp[{BQ}][{}];", bk + 1));
    if skipping && tiles.masked != Some(f32::NEG_INFINITY) {
        w.line("__shared__ int svote[1];");
    }
    w.line("const int tid = threadIdx.x;");
    w.line(format!("const int row = tid / {TPQ};"));
    w.line(format!("const int part = tid % {TPQ};"));
    w.open(format!(
        "for (long long bz = blockIdx.y; bz < {batches}; bz += gridDim.y)"
    ));
    // Batch indices and each operand's batch offset.
    let mut zs: Vec<String> = Vec::new();
    w.line("long long bq = bz;");
    for dd in (0..nb).rev() {
        w.line(format!(
            "const long long z{dd} = bq % {}; bq /= {};",
            a.batch[dd], a.batch[dd]
        ));
    }
    for dd in 0..nb {
        zs.push(format!("z{dd}"));
    }
    let boff = |o: &MatOperand| -> String {
        let mut t = vec![o.offset.to_string()];
        for (dd, z) in zs.iter().enumerate() {
            if o.strides[dd] != 0 {
                t.push(format!("{z} * {}", o.strides[dd]));
            }
        }
        t.join(" + ")
    };
    w.line(format!("const long long oq = {};", boff(&a.q)));
    w.line(format!("const long long ok = {};", boff(&a.k)));
    w.line(format!("const long long ov = {};", boff(&a.v)));
    let (sqm, sqd) = (a.q.strides[nb], a.q.strides[nb + 1]);
    let (skd, skn) = (a.k.strides[nb], a.k.strides[nb + 1]);
    let (svn, svc) = (a.v.strides[nb], a.v.strides[nb + 1]);
    w.open(format!(
        "for (long long qt = blockIdx.x; qt < {qtiles}; qt += gridDim.x)"
    ));
    w.line(format!("const long long i = qt * {BQ} + row;"));
    // Stage the block's queries.
    w.open(format!("for (int e = tid; e < {}; e += {THREADS})", BQ * d));
    w.line(format!("const int r = e / {d}, c = e % {d};"));
    w.line(format!("const long long qi = qt * {BQ} + r;"));
    w.line(format!(
        "sq[r][c] = qi < {m} ? {} : 0.0f;",
        load_conv(
            a.q.dtype,
            &format!(
                "{}[oq + qi * {sqm} + (long long)c * {sqd}]",
                pname(a.q.buffer)
            )
        )
    ));
    w.close();
    w.line("float mx = -__int_as_float(0x7f800000);");
    w.line("float sum = 0.0f;");
    w.line(format!("float acc[{cols}];"));
    w.line("#pragma unroll");
    w.line(format!("for (int c = 0; c < {cols}; ++c) acc[c] = 0.0f;"));
    let finite = tiles.masked.filter(|c| *c != f32::NEG_INFINITY);
    if skipping {
        w.line(format!(
            "const int kfirst = {table}[2 * qt], kend = {table}[2 * qt + 1];"
        ));
        // The tiles in range, in order; then, with a finite mask, the masked ones, each
        // skipped when every row's running max is `SKIP_MARGIN` above the mask (a block
        // vote); with `-inf`, never visited.
        let steps = if finite.is_some() {
            ktiles.to_string()
        } else {
            "kend - kfirst".to_string()
        };
        w.open(format!("for (int step = 0; step < {steps}; ++step)"));
        w.line("const int late = step - (kend - kfirst);");
        w.line("const int jt = late < 0 ? kfirst + step : late < kfirst ? late : kend + late - kfirst;");
        if let Some(c) = finite {
            w.open("if (late >= 0)");
            w.line("__syncthreads();");
            w.line("if (tid == 0) svote[0] = 1;");
            w.line("__syncthreads();");
            w.line(format!(
                "if (!(i >= {m} || mx - ({}) > {})) svote[0] = 0;",
                float_literal(c as f64),
                float_literal(crate::masked::SKIP_MARGIN as f64)
            ));
            w.line("__syncthreads();");
            w.line("const int skip = svote[0];");
            w.line("__syncthreads();");
            w.line("if (skip) continue;");
            w.close();
        }
        w.line(format!("const long long kt = (long long)jt * {bk};"));
    } else {
        w.open(format!("for (long long kt = 0; kt < {n}; kt += {bk})"));
    }
    w.line("TC_KEY_TILE();");
    w.line("__syncthreads();");
    w.open(format!("for (int e = tid; e < {}; e += {THREADS})", bk * d));
    w.line(format!("const int r = e / {d}, c = e % {d};"));
    w.line("const long long j = kt + r;");
    w.line(format!(
        "sk[r][c] = j < {n} ? {} : 0.0f;",
        load_conv(
            a.k.dtype,
            &format!(
                "{}[ok + (long long)c * {skd} + j * {skn}]",
                pname(a.k.buffer)
            )
        )
    ));
    w.close();
    w.open(format!(
        "for (int e = tid; e < {}; e += {THREADS})",
        bk * dv
    ));
    w.line(format!("const int r = e / {dv}, c = e % {dv};"));
    w.line("const long long j = kt + r;");
    w.line(format!(
        "sv[r][c] = j < {n} ? {} : 0.0f;",
        load_conv(
            a.v.dtype,
            &format!(
                "{}[ov + j * {svn} + (long long)c * {svc}]",
                pname(a.v.buffer)
            )
        )
    ));
    w.close();
    w.line("__syncthreads();");
    // Logits of this thread's share of the tile; its max.
    w.line("float tmax = -__int_as_float(0x7f800000);");
    w.open(format!("for (int jj = part; jj < {bk}; jj += {TPQ})"));
    w.line("const long long j = kt + jj;");
    w.line("float lg = -__int_as_float(0x7f800000);");
    w.open(format!("if (j < {n} && i < {m})"));
    w.line("float s = 0.0f;");
    w.line("#pragma unroll 8");
    w.line(format!(
        "for (int c = 0; c < {d}; ++c) s += sq[row][c] * sk[jj][c];"
    ));
    if a.score_dtype != DType::F32 {
        w.line(format!("s = {};", round_expr(a.score_dtype, "s")));
    }
    let mut axes: Vec<String> = zs.clone();
    axes.extend(["i".to_string(), "j".to_string()]);
    insts(&mut w, &a.body, &a.loads, "s", &pname, &axes);
    w.line(format!("lg = {};", ValueId::new(a.logits)));
    w.close();
    w.line("sp[row][jj] = lg;");
    w.line("tmax = tc_max(tmax, lg);");
    w.close();
    // The four threads of a query are adjacent lanes of one warp.
    w.line("tmax = tc_max(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));");
    w.line("tmax = tc_max(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));");
    w.line("const float mnew = tc_max(mx, tmax);");
    w.line("// A query all of whose logits so far are -inf: exp(-inf - 0) = 0 keeps it at 0.");
    w.line("const float mref = mnew == -__int_as_float(0x7f800000) ? 0.0f : mnew;");
    w.line("const float alpha = expf(mx - mref);");
    w.line("float tsum = 0.0f;");
    w.open(format!("for (int jj = part; jj < {bk}; jj += {TPQ})"));
    w.line("const float p = expf(sp[row][jj] - mref);");
    w.line("sp[row][jj] = p;");
    w.line("tsum += p;");
    w.close();
    w.line("tsum += __shfl_xor_sync(0xffffffffu, tsum, 1);");
    w.line("tsum += __shfl_xor_sync(0xffffffffu, tsum, 2);");
    w.line("sum = sum * alpha + tsum;");
    w.line("mx = mnew;");
    w.line("__syncthreads();");
    w.line("#pragma unroll");
    w.line(format!("for (int c = 0; c < {cols}; ++c) acc[c] *= alpha;"));
    w.open(format!("for (int jj = 0; jj < {bk}; ++jj)"));
    w.line("const float p = sp[row][jj];");
    w.line("#pragma unroll");
    w.line(format!(
        "for (int c = 0; c < {cols}; ++c) if (part + c * {TPQ} < {dv}) acc[c] += p * sv[jj][part + c * {TPQ}];"
    ));
    w.close();
    w.close();
    // Write the row, through the output's strides (the epilogue computed per element).
    w.open(format!("if (i < {m})"));
    let (osm, osc) = (a.out_strides[nb], a.out_strides[nb + 1]);
    let mut oo = vec![a.out_offset.to_string()];
    for (dd, z) in zs.iter().enumerate() {
        if a.out_strides[dd] != 0 {
            oo.push(format!("{z} * {}", a.out_strides[dd]));
        }
    }
    w.line(format!(
        "const long long oo = {} + i * {osm};",
        oo.join(" + ")
    ));
    w.line("const float inv = 1.0f / sum;");
    w.open(format!("for (int c = 0; c < {cols}; ++c)"));
    w.line(format!("const int col = part + c * {TPQ};"));
    match &a.epilogue {
        None => w.line(format!(
            "if (col < {dv}) {}[oo + (long long)col * {osc}] = {};",
            pname(a.out),
            store_conv(a.out_dtype, "acc[c] * inv")
        )),
        Some(e) => {
            w.open(format!("if (col < {dv})"));
            let value_dtype = a.value_dtype();
            w.line(format!(
                "const float val = {};",
                round_expr(value_dtype, "acc[c] * inv")
            ));
            let mut axes: Vec<String> = zs.clone();
            axes.extend(["i".to_string(), "(long long)col".to_string()]);
            insts(&mut w, &e.body, &e.loads, "val", &pname, &axes);
            w.line(format!(
                "{}[oo + (long long)col * {osc}] = {};",
                pname(a.out),
                store_conv(a.out_dtype, &ValueId::new(e.result).to_string())
            ));
            w.close();
        }
    }
    w.close();
    w.close();
    w.line("__syncthreads();");
    w.close();
    w.close();
    w.close();
    CudaKernel {
        kernel_index: index,
        name: kernel.name.clone(),
        source: w.finish(),
        launch: Launch::clamped_grid([qtiles, batches, 1], THREADS as u32),
        params,
        // The prologue gathers nothing (`fuse::attention` takes only elementwise nodes and
        // aranges), so no index is checked.
        checks: Vec::new(),
    }
}

/// The prologue's or the epilogue's insts as `const T vN = …;` (`T` the value type:
/// `float`, or `long long` for integers and `bool`, exact as in fused kernels) at the index
/// `axes` (batch indices, then query `i` and key `j` for the prologue, or query `i` and
/// column `col` for the epilogue); `InstOp::Load(0)` (`SCORE`, `RESULT`) is the variable
/// `first`: an `arange` read through its views is its index map over the axes, so a causal
/// mask is compared from the positions, never loaded.
fn insts(
    w: &mut Writer,
    body: &[Inst],
    loads: &[Load],
    first: &str,
    pname: &dyn Fn(BufferId) -> String,
    axes: &[String],
) {
    let dt = |x: ValueId| body.get(x.index()).map_or(DType::F32, |i| i.dtype);
    let konst = |x: ValueId| match body.get(x.index()).map(|i| &i.op) {
        Some(InstOp::Const(c)) => Some(*c),
        _ => None,
    };
    for (idx, inst) in body.iter().enumerate() {
        let rhs = match &inst.op {
            InstOp::Load(SCORE) => first.to_string(),
            InstOp::Load(l) => {
                let load = &loads[l - 1];
                let at = address(load.offset, axes, &load.strides);
                load_conv(load.dtype, &format!("{}[{at}]", pname(load.buffer)))
            }
            InstOp::Const(c) if !inst.dtype.is_integral() => {
                round_expr(inst.dtype, &float_literal(*c))
            }
            InstOp::Index { offset, strides } => {
                format!("(long long)({})", address(*offset, axes, strides))
            }
            // `fuse::attention` takes only unary, binary, cast, copy and `where` nodes (and
            // the aranges they read) into a prologue or an epilogue, and `plan::verify`
            // refuses the rest.
            InstOp::Reduce(..) | InstOp::Gather { .. } | InstOp::Scan(_) => {
                unreachable!("a reduction, gather or scan in an attention prologue")
            }
            op => op_expr(&ValueOp::of(op), inst.dtype, &dt, &konst),
        };
        w.line(format!(
            "const {} {} = {rhs};",
            value_type(inst.dtype),
            ValueId::new(idx)
        ));
    }
}
