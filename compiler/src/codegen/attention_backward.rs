//! CUDA C for an `AttentionBackwardKernel` (flash attention's backward): one block per
//! batch matrix runs both phases, so the row statistics one phase writes to the workspace
//! are read by the same block after a barrier (no second launch, no atomics). Phase 1, per
//! tile of `T` queries (`TPR` threads a query, splitting the keys): one walk over the keys
//! in tiles of `T` (staged through shared memory) recomputes each logit and `dp = dO·v`,
//! folding them into the query's running max, sum and `Σ dp·e^(x − max)` (online, combined
//! across the query's threads by warp shuffles in a fixed order), written to the
//! workspace; a second walk gives `gs` per logit and `dq = Σ gs·k` (each thread its share of
//! the columns). Phase 2, per tile of `T` keys (`TPR` threads a key): a walk over the
//! queries recomputes `p` and `gs` from the statistics and accumulates `dv = Σ p·dO` and
//! `dk = Σ gs·q`. Every sum runs in one fixed order, f32 throughout.

use super::cuda::{address, float_literal, load_conv, op_expr, store_conv, value_type};
use super::writer::Writer;
use super::{storage_type, CudaKernel, Launch};
use crate::ir::DType;
use crate::lower::{ValueId, ValueOp};
use crate::schedule::{
    AttentionBackwardKernel, BufferId, GradOut, Inst, InstOp, Kernel, Load, MatOperand, Plan,
};

/// Threads per block.
pub const THREADS: u64 = 128;

/// Rows (queries or keys) per tile and threads per row: shared memory (two tiles of
/// queries and output gradients, two of keys and values, two of logits, f32) stays under
/// the 48 KiB of static shared memory for heads up to `MAX_HEAD`.
pub fn tile(d: u64, dv: u64) -> (u64, u64) {
    if d.max(dv) <= 64 {
        (32, 4)
    } else {
        (16, 8)
    }
}

fn round_expr(dtype: DType, x: &str) -> String {
    match dtype {
        DType::F16 => format!("tc_round_f16({x})"),
        DType::BF16 => format!("tc_round_bf16({x})"),
        _ => x.to_string(),
    }
}

pub(crate) fn emit(
    plan: &Plan,
    index: usize,
    kernel: &Kernel,
    a: &AttentionBackwardKernel,
) -> CudaKernel {
    let grads: Vec<&GradOut> = [&a.dq, &a.dk, &a.dv_out].into_iter().flatten().collect();
    let mut params: Vec<BufferId> = Vec::new();
    for b in [a.q.buffer, a.k.buffer, a.v.buffer, a.d_out.buffer]
        .into_iter()
        .chain(a.loads.iter().map(|l| l.buffer))
        .chain(a.grad_loads.iter().map(|l| l.buffer))
        .chain(grads.iter().map(|g| g.buffer))
        .chain([a.workspace])
    {
        if !params.contains(&b) {
            params.push(b);
        }
    }
    let written: Vec<BufferId> = grads
        .iter()
        .map(|g| g.buffer)
        .chain([a.workspace])
        .collect();
    let pname = |b: BufferId| format!("b{}", params.iter().position(|x| *x == b).unwrap_or(0));
    let nb = a.batch.len();
    let batches: u64 = a.batch.iter().product();
    let (d, dv, n, m) = (a.d, a.dv, a.n, a.m);
    let (t, tpr) = tile(d, dv);
    let cq = d.div_ceil(tpr);
    let cv = dv.div_ceil(tpr);
    let ninf = "-__int_as_float(0x7f800000)";

    let mut w = Writer::new();
    w.line(format!(
        "// {}: attention backward (lines {:?}): batch {:?} m {m} n {n} d {d} dv {dv}; the scores, probabilities and their gradients are never stored",
        kernel.name, kernel.lines, a.batch
    ));
    w.line(format!(
        "// one block per batch matrix; tiles of {t} rows, {tpr} threads a row; phase 1 (row statistics, dq) then phase 2 (dk, dv)"
    ));
    let sig: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let ty = storage_type(plan.buffer(*b).dtype);
            if written.contains(b) {
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
    w.line(format!("__shared__ float sq[{t}][{}];", d + 1));
    w.line(format!("__shared__ float sdo[{t}][{}];", dv + 1));
    w.line(format!("__shared__ float sk[{t}][{}];", d + 1));
    w.line(format!("__shared__ float sv[{t}][{}];", dv + 1));
    w.line(format!("__shared__ float sa[{t}][{}];", t + 1));
    w.line(format!("__shared__ float sb[{t}][{}];", t + 1));
    w.line(format!("__shared__ float sst[3][{t}];"));
    w.line("const int tid = threadIdx.x;");
    w.line(format!("const int row = tid / {tpr};"));
    w.line(format!("const int part = tid % {tpr};"));
    w.open(format!(
        "for (long long bz = blockIdx.y; bz < {batches}; bz += gridDim.y)"
    ));
    w.line("long long bq = bz;");
    for dd in (0..nb).rev() {
        w.line(format!(
            "const long long z{dd} = bq % {}; bq /= {};",
            a.batch[dd], a.batch[dd]
        ));
    }
    let zs: Vec<String> = (0..nb).map(|dd| format!("z{dd}")).collect();
    let boff = |offset: i64, strides: &[i64]| -> String {
        let mut s = vec![offset.to_string()];
        for (dd, z) in zs.iter().enumerate() {
            if strides[dd] != 0 {
                s.push(format!("{z} * {}", strides[dd]));
            }
        }
        s.join(" + ")
    };
    w.line(format!(
        "const long long oq = {};",
        boff(a.q.offset, &a.q.strides)
    ));
    w.line(format!(
        "const long long ok = {};",
        boff(a.k.offset, &a.k.strides)
    ));
    w.line(format!(
        "const long long ov = {};",
        boff(a.v.offset, &a.v.strides)
    ));
    w.line(format!(
        "const long long odo = {};",
        boff(a.d_out.offset, &a.d_out.strides)
    ));
    w.line(format!(
        "float* __restrict__ ws = {} + bz * {};",
        pname(a.workspace),
        3 * m
    ));
    let elem = |o: &MatOperand, base: &str, r: &str, c: &str| -> String {
        load_conv(
            o.dtype,
            &format!(
                "{}[{base} + ({r}) * {} + ({c}) * {}]",
                pname(o.buffer),
                o.strides[nb],
                o.strides[nb + 1]
            ),
        )
    };
    // Stages `rows` rows starting at `first` of a [rows, cols] operand into `arr`.
    let stage = |w: &mut Writer, arr: &str, cols: u64, limit: u64, first: &str, value: &str| {
        w.open(format!(
            "for (int e = tid; e < {}; e += {THREADS})",
            t * cols
        ));
        w.line(format!("const int r = e / {cols}, c = e % {cols};"));
        w.line(format!("const long long x = {first} + r;"));
        w.line(format!("{arr}[r][c] = x < {limit} ? {value} : 0.0f;"));
        w.close();
    };
    let q_at = elem(&a.q, "oq", "x", "c");
    let k_at = elem(&a.k, "ok", "c", "x");
    let v_at = elem(&a.v, "ov", "x", "c");
    let do_at = elem(&a.d_out, "odo", "x", "c");
    // The logit `lg` and, with `grad`, `gs` of query `i`, key `j` from the staged rows
    // `qr` (queries) and `kr` (keys), given the query's `mref`, `l` and `dd`.
    let logit = |w: &mut Writer, qr: &str, kr: &str| {
        w.line("float s = 0.0f;");
        w.line("#pragma unroll 8");
        w.line(format!(
            "for (int c = 0; c < {d}; ++c) s += sq[{qr}][c] * sk[{kr}][c];"
        ));
        if a.score_dtype != DType::F32 {
            w.line(format!("s = {};", round_expr(a.score_dtype, "s")));
        }
        w.line("float lg;");
        w.open("");
        body(w, &a.body, &a.loads, "s", &pname, &zs, nb);
        w.line(format!("lg = {};", ValueId::new(a.logits)));
        w.close();
        w.line("float dp = 0.0f;");
        w.line("#pragma unroll 8");
        w.line(format!(
            "for (int c = 0; c < {dv}; ++c) dp += sdo[{qr}][c] * sv[{kr}][c];"
        ));
    };
    let grad = |w: &mut Writer| {
        w.line("const float p = expf(lg - mref) / l;");
        w.line("const float gx = p * (dp - dd);");
        w.line("float gs;");
        w.open("");
        body(w, &a.grad_body, &a.grad_loads, "gx", &pname, &zs, nb);
        w.line(format!("gs = {};", ValueId::new(a.grad_scores)));
        w.close();
    };
    // Writes gradient `g` from the accumulator `acc[c]` (`c < cols`) of this thread's row
    // `row` (when `row < rows`), each column `col < width` it holds.
    let store_grad =
        |w: &mut Writer, g: &GradOut, row: &str, rows: u64, acc: &str, cols: u64, width: u64| {
            w.open(format!("if ({row} < {rows})"));
            w.line(format!(
                "const long long oo = {} + {row} * {};",
                boff(g.offset, &g.strides),
                g.strides[nb]
            ));
            w.open(format!("for (int c = 0; c < {cols}; ++c)"));
            w.line(format!("const int col = part + c * {tpr};"));
            w.line(format!(
                "if (col < {width}) {}[oo + (long long)col * {}] = {};",
                pname(g.buffer),
                g.strides[nb + 1],
                store_conv(g.dtype, &format!("{acc}[c]"))
            ));
            w.close();
            w.close();
        };
    let shuffles = |w: &mut Writer, var: &str, max: bool| {
        let mut s = 1;
        while s < tpr {
            if max {
                w.line(format!(
                    "{var} = tc_max({var}, __shfl_xor_sync(0xffffffffu, {var}, {s}));"
                ));
            } else {
                w.line(format!(
                    "{var} += __shfl_xor_sync(0xffffffffu, {var}, {s});"
                ));
            }
            s *= 2;
        }
    };

    // Phase 1: per tile of queries.
    w.open(format!("for (long long qt = 0; qt < {m}; qt += {t})"));
    w.line("const long long i = qt + row;");
    w.line("__syncthreads();");
    stage(&mut w, "sq", d, m, "qt", &q_at);
    stage(&mut w, "sdo", dv, m, "qt", &do_at);
    w.line(format!("float mx = {ninf};"));
    w.line("float sum = 0.0f;");
    w.line("float tot = 0.0f;");
    w.open(format!("for (long long kt = 0; kt < {n}; kt += {t})"));
    w.line("__syncthreads();");
    stage(&mut w, "sk", d, n, "kt", &k_at);
    stage(&mut w, "sv", dv, n, "kt", &v_at);
    w.line("__syncthreads();");
    w.line(format!("float tmax = {ninf};"));
    w.open(format!("for (int jj = part; jj < {t}; jj += {tpr})"));
    w.line("const long long j = kt + jj;");
    w.line(format!("float lgv = {ninf};"));
    w.line("float dpv = 0.0f;");
    w.open(format!("if (j < {n} && i < {m})"));
    logit(&mut w, "row", "jj");
    w.line("lgv = lg;");
    w.line("dpv = dp;");
    w.close();
    w.line("sa[row][jj] = lgv;");
    w.line("sb[row][jj] = dpv;");
    w.line("tmax = tc_max(tmax, lgv);");
    w.close();
    shuffles(&mut w, "tmax", true);
    w.line("const float mnew = tc_max(mx, tmax);");
    w.line(format!("const float mref = mnew == {ninf} ? 0.0f : mnew;"));
    w.line("const float alpha = expf(mx - mref);");
    w.line("float tsum = 0.0f;");
    w.line("float ttot = 0.0f;");
    w.open(format!("for (int jj = part; jj < {t}; jj += {tpr})"));
    w.line("const float e = expf(sa[row][jj] - mref);");
    w.line("tsum += e;");
    w.line("ttot += e * sb[row][jj];");
    w.close();
    shuffles(&mut w, "tsum", false);
    shuffles(&mut w, "ttot", false);
    w.line("sum = sum * alpha + tsum;");
    w.line("tot = tot * alpha + ttot;");
    w.line("mx = mnew;");
    w.close();
    w.line(format!("const float mref = mx == {ninf} ? 0.0f : mx;"));
    w.line("const float l = sum;");
    w.line("const float dd = tot / sum;");
    w.open(format!("if (part == 0 && i < {m})"));
    w.line("ws[3 * i] = mref;");
    w.line("ws[3 * i + 1] = l;");
    w.line("ws[3 * i + 2] = dd;");
    w.close();
    if let Some(dq) = &a.dq {
        w.line(format!("float acc[{cq}];"));
        w.line("#pragma unroll");
        w.line(format!("for (int c = 0; c < {cq}; ++c) acc[c] = 0.0f;"));
        w.open(format!("for (long long kt = 0; kt < {n}; kt += {t})"));
        w.line("__syncthreads();");
        stage(&mut w, "sk", d, n, "kt", &k_at);
        stage(&mut w, "sv", dv, n, "kt", &v_at);
        w.line("__syncthreads();");
        w.open(format!("for (int jj = part; jj < {t}; jj += {tpr})"));
        w.line("const long long j = kt + jj;");
        w.line("float g = 0.0f;");
        w.open(format!("if (j < {n} && i < {m})"));
        logit(&mut w, "row", "jj");
        grad(&mut w);
        w.line("g = gs;");
        w.close();
        w.line("sa[row][jj] = g;");
        w.close();
        w.line("__syncthreads();");
        w.open(format!("for (int jj = 0; jj < {t}; ++jj)"));
        w.line("const float g = sa[row][jj];");
        w.line("#pragma unroll");
        w.line(format!(
            "for (int c = 0; c < {cq}; ++c) if (part + c * {tpr} < {d}) acc[c] += g * sk[jj][part + c * {tpr}];"
        ));
        w.close();
        w.close();
        store_grad(&mut w, dq, "i", m, "acc", cq, d);
    }
    w.close();
    w.line("__syncthreads();");

    // Phase 2: per tile of keys.
    if a.dk.is_some() || a.dv_out.is_some() {
        w.open(format!("for (long long kt = 0; kt < {n}; kt += {t})"));
        w.line("const long long j = kt + row;");
        w.line("__syncthreads();");
        stage(&mut w, "sk", d, n, "kt", &k_at);
        stage(&mut w, "sv", dv, n, "kt", &v_at);
        w.line(format!("float accv[{cv}];"));
        w.line(format!("float acck[{cq}];"));
        w.line("#pragma unroll");
        w.line(format!("for (int c = 0; c < {cv}; ++c) accv[c] = 0.0f;"));
        w.line("#pragma unroll");
        w.line(format!("for (int c = 0; c < {cq}; ++c) acck[c] = 0.0f;"));
        w.open(format!("for (long long qt = 0; qt < {m}; qt += {t})"));
        w.line("__syncthreads();");
        stage(&mut w, "sq", d, m, "qt", &q_at);
        stage(&mut w, "sdo", dv, m, "qt", &do_at);
        w.open(format!("for (int e = tid; e < {}; e += {THREADS})", 3 * t));
        w.line(format!("const int r = e % {t}, f = e / {t};"));
        w.line(format!(
            "sst[f][r] = qt + r < {m} ? ws[3 * (qt + r) + f] : 0.0f;"
        ));
        w.close();
        w.line("__syncthreads();");
        w.open(format!("for (int ii = part; ii < {t}; ii += {tpr})"));
        w.line("const long long i = qt + ii;");
        w.line("float pv = 0.0f;");
        w.line("float gv = 0.0f;");
        w.open(format!("if (j < {n} && i < {m})"));
        w.line("const float mref = sst[0][ii];");
        w.line("const float l = sst[1][ii];");
        w.line("const float dd = sst[2][ii];");
        logit(&mut w, "ii", "row");
        grad(&mut w);
        w.line("pv = p;");
        w.line("gv = gs;");
        w.close();
        w.line("sa[row][ii] = pv;");
        w.line("sb[row][ii] = gv;");
        w.close();
        w.line("__syncthreads();");
        w.open(format!("for (int ii = 0; ii < {t}; ++ii)"));
        w.line("const float pv = sa[row][ii];");
        w.line("const float gv = sb[row][ii];");
        w.line("#pragma unroll");
        w.line(format!(
            "for (int c = 0; c < {cv}; ++c) if (part + c * {tpr} < {dv}) accv[c] += pv * sdo[ii][part + c * {tpr}];"
        ));
        w.line("#pragma unroll");
        w.line(format!(
            "for (int c = 0; c < {cq}; ++c) if (part + c * {tpr} < {d}) acck[c] += gv * sq[ii][part + c * {tpr}];"
        ));
        w.close();
        w.close();
        for (g, acc, cols, width) in [(&a.dk, "acck", cq, d), (&a.dv_out, "accv", cv, dv)] {
            let Some(g) = g else { continue };
            store_grad(&mut w, g, "j", n, acc, cols, width);
        }
        w.close();
    }
    w.line("__syncthreads();");
    w.close();
    w.close();
    CudaKernel {
        kernel_index: index,
        name: kernel.name.clone(),
        source: w.finish(),
        launch: Launch::clamped_grid([1, batches, 1], THREADS as u32),
        params,
        // The prologue and its backward gather nothing (`fuse::attention_backward` takes
        // only elementwise nodes and aranges), so no index is checked.
        checks: Vec::new(),
    }
}

/// An elementwise body as `const T vN = …;` (`T` the value type) for query `i`, key `j`
/// (batch indices `zs`), its load 0 the expression `first` (the score, or the gradient of
/// the logits): an `arange` read through its views is its index map over `batch ++ [i, j]`.
fn body(
    w: &mut Writer,
    insts: &[Inst],
    loads: &[Load],
    first: &str,
    pname: &dyn Fn(BufferId) -> String,
    zs: &[String],
    nb: usize,
) {
    let mut axes: Vec<String> = zs.to_vec();
    axes.extend(["i".to_string(), "j".to_string()]);
    let dt = |x: ValueId| insts.get(x.index()).map_or(DType::F32, |i| i.dtype);
    let konst = |x: ValueId| match insts.get(x.index()).map(|i| &i.op) {
        Some(InstOp::Const(c)) => Some(*c),
        _ => None,
    };
    for (idx, inst) in insts.iter().enumerate() {
        let rhs = match &inst.op {
            InstOp::Load(0) => first.to_string(),
            InstOp::Load(l) => {
                let load = &loads[l - 1];
                let at = address(load.offset, &axes[..nb + 2], &load.strides);
                load_conv(load.dtype, &format!("{}[{at}]", pname(load.buffer)))
            }
            InstOp::Const(c) if !inst.dtype.is_integral() => {
                round_expr(inst.dtype, &float_literal(*c))
            }
            InstOp::Index { offset, strides } => {
                format!(
                    "(long long)({})",
                    address(*offset, &axes[..nb + 2], strides)
                )
            }
            // `fuse::attention_backward` takes only unary, binary, cast and `where` nodes
            // (and the aranges they read), and `plan::verify` refuses the rest.
            InstOp::Reduce(..) | InstOp::Gather { .. } | InstOp::Scan(_) => {
                unreachable!("a reduction, gather or scan in an attention backward's body")
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
