//! Unit tests of the CPU executor on hand-built plans: pointwise and row kernels, strided
//! and broadcast loads, in-place stores, matrix products, dtypes, views as outputs, errors.

use super::{run, CpuError};
use crate::tensor::HostTensor;
use tc_compiler::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use tc_compiler::schedule::*;

fn numel(shape: &[u64]) -> u64 {
    shape.iter().product()
}

fn leaf(name: &str, kind: BufferKind, dtype: DType, shape: &[u64]) -> Buffer {
    Buffer {
        name: name.into(),
        kind,
        dtype,
        shape: shape.to_vec(),
        bytes: numel(shape) * dtype.size(),
        offset: 0,
        first_step: 0,
        last_step: 0,
        in_place_of: None,
        node: None,
    }
}

fn arena(name: &str, dtype: DType, shape: &[u64], offset: u64) -> Buffer {
    Buffer {
        offset,
        ..leaf(name, BufferKind::Arena, dtype, shape)
    }
}

fn ld(buffer: u32, dtype: DType, offset: i64, strides: &[i64]) -> Load {
    Load {
        buffer: BufferId(buffer),
        dtype,
        offset,
        strides: strides.to_vec(),
    }
}

fn el(op: InstOp) -> Inst {
    Inst {
        op,
        dtype: DType::F32,
        level: Level::Element,
        node: None,
    }
}

fn row(op: InstOp) -> Inst {
    Inst {
        op,
        dtype: DType::F32,
        level: Level::Row,
        node: None,
    }
}

fn fused(
    domain: &[u64],
    reduce_axes: &[usize],
    loads: Vec<Load>,
    body: Vec<Inst>,
    stores: &[(usize, u32)],
) -> Kernel {
    Kernel {
        name: "k".into(),
        kind: KernelKind::Fused(FusedKernel {
            domain: domain.to_vec(),
            reduce_axes: reduce_axes.to_vec(),
            loads,
            body,
            stores: stores
                .iter()
                .map(|&(inst, b)| Store {
                    inst,
                    buffer: BufferId(b),
                    region: None,
                })
                .collect(),
            workspace: None,
        }),
        ops: vec![],
        lines: vec![],
    }
}

fn out(
    name: &str,
    buffer: u32,
    dtype: DType,
    shape: &[u64],
    offset: i64,
    strides: &[i64],
) -> PlanOutput {
    PlanOutput {
        name: name.into(),
        buffer: BufferId(buffer),
        dtype,
        shape: shape.to_vec(),
        offset,
        strides: strides.to_vec(),
    }
}

fn contiguous(shape: &[u64]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc *= shape[i] as i64;
    }
    s
}

fn plan(
    kernels: Vec<Kernel>,
    buffers: Vec<Buffer>,
    inputs: &[u32],
    outputs: Vec<PlanOutput>,
) -> Plan {
    let arena_bytes = buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Arena)
        .map(|b| b.offset + b.bytes.div_ceil(16) * 16)
        .max()
        .unwrap_or(0);
    Plan {
        kernels,
        buffers,
        arena_bytes,
        inputs: inputs.iter().map(|&i| BufferId(i)).collect(),
        params: vec![],
        outputs,
        options: PlanOptions::default(),
        unfused_fallback: false,
        notes: Vec::new(),
    }
}

/// Deterministic test values in roughly [-2, 2].
fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(salt.wrapping_mul(40503))
                >> 8)
                % 4001) as f32
                / 1000.0
                - 2.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w} (err {err})"
        );
    }
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + tc_compiler::ir::eval::erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn pointwise_chain_with_broadcast_and_transposed_loads() {
    // y[i, j] = gelu(x[i, j] * 1.5 + b[j]) - xt[j, i]   with x [3, 70] and xt read transposed.
    let (r, c) = (3u64, 70u64);
    let x = values((r * c) as usize, 1);
    let b = values(c as usize, 2);
    let t = values((r * c) as usize, 3); // stored as [c, r]
    let body = vec![
        el(InstOp::Load(0)),
        el(InstOp::Const(1.5)),
        el(InstOp::Binary(BinaryOp::Mul, 0, 1)),
        el(InstOp::Load(1)),
        el(InstOp::Binary(BinaryOp::Add, 2, 3)),
        el(InstOp::Unary(UnaryOp::Gelu, 4)),
        el(InstOp::Load(2)),
        el(InstOp::Binary(BinaryOp::Sub, 5, 6)),
    ];
    let p = plan(
        vec![fused(
            &[r, c],
            &[],
            vec![
                ld(0, DType::F32, 0, &[70, 1]),
                ld(1, DType::F32, 0, &[0, 1]),
                ld(2, DType::F32, 0, &[1, 3]),
            ],
            body,
            &[(7, 3)],
        )],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[r, c]),
            leaf("b", BufferKind::Input { index: 1 }, DType::F32, &[c]),
            leaf("t", BufferKind::Input { index: 2 }, DType::F32, &[c, r]),
            arena("y", DType::F32, &[r, c], 0),
        ],
        &[0, 1, 2],
        vec![out("y", 3, DType::F32, &[r, c], 0, &[70, 1])],
    );
    let inputs = [
        HostTensor::from_f32(DType::F32, vec![r, c], &x),
        HostTensor::from_f32(DType::F32, vec![c], &b),
        HostTensor::from_f32(DType::F32, vec![c, r], &t),
    ];
    let got = run(&p, &inputs, &[]).expect("runs");
    let mut want = Vec::new();
    for i in 0..r as usize {
        for j in 0..c as usize {
            let v = gelu64(x[i * 70 + j] as f64 * 1.5 + b[j] as f64) - t[j * 3 + i] as f64;
            want.push(v);
        }
    }
    assert_close(&got[0].to_f32(), &want, 1e-5);
}

#[test]
fn large_pointwise_kernel_over_a_permuted_domain() {
    // A [37, 41, 29] domain read through a permuted layout, many blocks and parallel chunks.
    let shape = [37u64, 41, 29];
    let n = numel(&shape) as usize;
    let x = values(n, 7); // stored as [29, 37, 41]
    let strides = [41, 1, 37 * 41];
    let p = plan(
        vec![fused(
            &shape,
            &[],
            vec![ld(0, DType::F32, 0, &strides)],
            vec![el(InstOp::Load(0)), el(InstOp::Unary(UnaryOp::Tanh, 0))],
            &[(1, 1)],
        )],
        vec![
            leaf(
                "x",
                BufferKind::Input { index: 0 },
                DType::F32,
                &[29, 37, 41],
            ),
            arena("y", DType::F32, &shape, 0),
        ],
        &[0],
        vec![out("y", 1, DType::F32, &shape, 0, &contiguous(&shape))],
    );
    let got = run(
        &p,
        &[HostTensor::from_f32(DType::F32, vec![29, 37, 41], &x)],
        &[],
    )
    .expect("runs")[0]
        .to_f32();
    let mut want = Vec::new();
    for i in 0..37 {
        for j in 0..41 {
            for k in 0..29 {
                want.push((x[i * 41 + j + k * 37 * 41] as f64).tanh());
            }
        }
    }
    assert_close(&got, &want, 1e-6);
}

fn softmax_kernel(rows: u64, cols: u64, input: u32, output: u32, row_strides: [i64; 2]) -> Kernel {
    let body = vec![
        el(InstOp::Load(0)),
        row(InstOp::Reduce(ReduceOp::Max, 0)),
        el(InstOp::Binary(BinaryOp::Sub, 0, 1)),
        el(InstOp::Unary(UnaryOp::Exp, 2)),
        row(InstOp::Reduce(ReduceOp::Sum, 3)),
        el(InstOp::Binary(BinaryOp::Div, 3, 4)),
    ];
    fused(
        &[rows, cols],
        &[1],
        vec![ld(input, DType::F32, 0, &row_strides)],
        body,
        &[(5, output)],
    )
}

fn softmax_rows(x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let mut want = Vec::new();
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        want.extend(row.iter().map(|&v| (v as f64 - m).exp() / s));
    }
    want
}

#[test]
fn row_softmax_matches_f64_and_runs_in_place() {
    // k0: a = x * 1 into the arena; k1: softmax(a) written over a (in place).
    let (r, c) = (9u64, 2500u64); // rows longer than a block
    let x = values((r * c) as usize, 11);
    let copy = fused(
        &[r, c],
        &[],
        vec![ld(0, DType::F32, 0, &[c as i64, 1])],
        vec![
            el(InstOp::Load(0)),
            el(InstOp::Const(1.0)),
            el(InstOp::Binary(BinaryOp::Mul, 0, 1)),
        ],
        &[(2, 1)],
    );
    let mut bufs = vec![
        leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[r, c]),
        arena("a", DType::F32, &[r, c], 0),
    ];
    bufs.push(Buffer {
        in_place_of: Some(BufferId(1)),
        ..arena("s", DType::F32, &[r, c], 0)
    });
    let p = plan(
        vec![copy, softmax_kernel(r, c, 1, 2, [c as i64, 1])],
        bufs,
        &[0],
        vec![out("s", 2, DType::F32, &[r, c], 0, &[c as i64, 1])],
    );
    let got = run(&p, &[HostTensor::from_f32(DType::F32, vec![r, c], &x)], &[]).expect("runs")[0]
        .to_f32();
    assert_close(&got, &softmax_rows(&x, r as usize, c as usize), 1e-6);
}

#[test]
fn reduction_over_a_leading_axis_with_row_and_element_stores() {
    // Domain [5, 6] reducing axis 0: colmean[j] = mean_i x[i, j] (row store), and
    // centred[i, j] = x[i, j] - colmean[j] (element store, contiguous in domain order).
    let x = values(30, 5);
    let body = vec![
        el(InstOp::Load(0)),
        row(InstOp::Reduce(ReduceOp::Mean, 0)),
        el(InstOp::Binary(BinaryOp::Sub, 0, 1)),
        row(InstOp::Reduce(ReduceOp::Min, 0)),
    ];
    let k = fused(
        &[5, 6],
        &[0],
        vec![ld(0, DType::F32, 0, &[6, 1])],
        body,
        &[(1, 1), (2, 2), (3, 3)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[5, 6]),
            arena("m", DType::F32, &[6], 0),
            arena("c", DType::F32, &[5, 6], 32),
            arena("lo", DType::F32, &[6], 160),
        ],
        &[0],
        vec![
            out("m", 1, DType::F32, &[6], 0, &[1]),
            out("c", 2, DType::F32, &[5, 6], 0, &[6, 1]),
            out("lo", 3, DType::F32, &[6], 0, &[1]),
        ],
    );
    let got = run(&p, &[HostTensor::from_f32(DType::F32, vec![5, 6], &x)], &[]).expect("runs");
    let mean: Vec<f64> = (0..6)
        .map(|j| (0..5).map(|i| x[i * 6 + j] as f64).sum::<f64>() / 5.0)
        .collect();
    let lo: Vec<f64> = (0..6)
        .map(|j| {
            (0..5)
                .map(|i| x[i * 6 + j] as f64)
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let centred: Vec<f64> = (0..30).map(|e| x[e] as f64 - mean[e % 6]).collect();
    assert_close(&got[0].to_f32(), &mean, 1e-6);
    assert_close(&got[1].to_f32(), &centred, 1e-6);
    assert_close(&got[2].to_f32(), &lo, 0.0);
}

#[test]
fn max_reduction_and_maximum_propagate_nan() {
    let x = [1.0f32, f32::NAN, 3.0, -1.0, 0.5, 2.0];
    let body = vec![
        el(InstOp::Load(0)),
        row(InstOp::Reduce(ReduceOp::Max, 0)),
        el(InstOp::Const(0.0)),
        el(InstOp::Binary(BinaryOp::Maximum, 0, 2)),
        el(InstOp::Unary(UnaryOp::Relu, 0)),
    ];
    let k = fused(
        &[2, 3],
        &[1],
        vec![ld(0, DType::F32, 0, &[3, 1])],
        body,
        &[(1, 1), (3, 2), (4, 3)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[2, 3]),
            arena("m", DType::F32, &[2], 0),
            arena("y", DType::F32, &[2, 3], 16),
            arena("z", DType::F32, &[2, 3], 48),
        ],
        &[0],
        vec![
            out("m", 1, DType::F32, &[2], 0, &[1]),
            out("y", 2, DType::F32, &[2, 3], 0, &[3, 1]),
            out("z", 3, DType::F32, &[2, 3], 0, &[3, 1]),
        ],
    );
    let got = run(&p, &[HostTensor::from_f32(DType::F32, vec![2, 3], &x)], &[]).expect("runs");
    let m = got[0].to_f32();
    assert!(m[0].is_nan() && m[1] == 2.0, "{m:?}");
    let y = got[1].to_f32();
    assert!(y[1].is_nan() && y[0] == 1.0 && y[3] == 0.0, "{y:?}");
    let z = got[2].to_f32();
    assert!(z[1].is_nan() && z[3] == 0.0 && z[5] == 2.0, "{z:?}");
}

#[test]
fn half_precision_loads_casts_and_stores_round_to_nearest_even() {
    // y16 = f16(x16 / 3) stored as f16; yb = bf16 store of x16 / 3 (rounded at the store).
    let x = [1.0f32, 2.0, -7.0, 1000.0];
    let body = vec![
        Inst {
            op: InstOp::Load(0),
            dtype: DType::F16,
            level: Level::Element,
            node: None,
        },
        el(InstOp::Const(3.0)),
        el(InstOp::Binary(BinaryOp::Div, 0, 1)),
        Inst {
            op: InstOp::Cast(2),
            dtype: DType::F16,
            level: Level::Element,
            node: None,
        },
        el(InstOp::Binary(BinaryOp::Mul, 3, 1)),
    ];
    let k = fused(
        &[4],
        &[],
        vec![ld(0, DType::F16, 0, &[1])],
        body,
        &[(3, 1), (2, 2), (4, 3)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F16, &[4]),
            arena("y16", DType::F16, &[4], 0),
            arena("yb", DType::BF16, &[4], 16),
            arena("back", DType::F32, &[4], 32),
        ],
        &[0],
        vec![
            out("y16", 1, DType::F16, &[4], 0, &[1]),
            out("yb", 2, DType::BF16, &[4], 0, &[1]),
            out("back", 3, DType::F32, &[4], 0, &[1]),
        ],
    );
    let got = run(&p, &[HostTensor::from_f32(DType::F16, vec![4], &x)], &[]).expect("runs");
    let want16: Vec<f32> = x
        .iter()
        .map(|v| half::f16::from_f32(v / 3.0).to_f32())
        .collect();
    let wantb: Vec<f32> = x
        .iter()
        .map(|v| half::bf16::from_f32(v / 3.0).to_f32())
        .collect();
    assert_eq!(got[0].to_f32(), want16);
    assert_eq!(got[1].to_f32(), wantb);
    let back: Vec<f32> = want16.iter().map(|v| v * 3.0).collect();
    assert_eq!(got[2].to_f32(), back);
    assert_eq!(got[0].dtype, DType::F16);
    assert_eq!(got[1].dtype, DType::BF16);
}

fn matmul_ref(
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    a_at: impl Fn(usize, usize) -> usize,
    b_at: impl Fn(usize, usize) -> usize,
) -> Vec<f64> {
    let mut o = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            o[i * n + j] = (0..k)
                .map(|l| a[a_at(i, l)] as f64 * b[b_at(l, j)] as f64)
                .sum();
        }
    }
    o
}

#[test]
fn batched_matmul_with_transposed_and_broadcast_operands() {
    // out[b] = a[b] @ transpose(w) with a [3, 4, 5] and w [6, 5] broadcast over the batch.
    let (bt, m, k, n) = (3usize, 4usize, 5usize, 6usize);
    let a = values(bt * m * k, 21);
    let w = values(n * k, 22);
    let mm = MatMulKernel {
        batch: vec![bt as u64],
        m: m as u64,
        n: n as u64,
        k: k as u64,
        a: MatOperand {
            buffer: BufferId(0),
            dtype: DType::F32,
            offset: 0,
            strides: vec![(m * k) as i64, k as i64, 1],
        },
        b: MatOperand {
            buffer: BufferId(1),
            dtype: DType::F32,
            offset: 0,
            strides: vec![0, 1, k as i64],
        },
        out: BufferId(2),
        out_dtype: DType::F32,
        workspace: None,
        accumulate: None,
        prologue: None,
        packs_whole_b: false,
    };
    let shape = [bt as u64, m as u64, n as u64];
    let p = plan(
        vec![Kernel {
            name: "k0".into(),
            kind: KernelKind::MatMul(mm),
            ops: vec![],
            lines: vec![],
        }],
        vec![
            leaf("a", BufferKind::Input { index: 0 }, DType::F32, &[3, 4, 5]),
            leaf("w", BufferKind::Input { index: 1 }, DType::F32, &[6, 5]),
            arena("o", DType::F32, &shape, 0),
        ],
        &[0, 1],
        vec![out("o", 2, DType::F32, &shape, 0, &contiguous(&shape))],
    );
    let inputs = [
        HostTensor::from_f32(DType::F32, vec![3, 4, 5], &a),
        HostTensor::from_f32(DType::F32, vec![6, 5], &w),
    ];
    let got = run(&p, &inputs, &[]).expect("runs")[0].to_f32();
    let mut want = Vec::new();
    for b in 0..bt {
        want.extend(matmul_ref(
            &a,
            &w,
            m,
            n,
            k,
            |i, l| b * m * k + i * k + l,
            |l, j| j * k + l,
        ));
    }
    assert_close(&got, &want, 1e-5);
}

#[test]
fn half_matmul_accumulates_in_f32_and_rounds_the_result() {
    let (m, k, n) = (7usize, 300usize, 5usize);
    let a = values(m * k, 31);
    let b = values(k * n, 32);
    let a16 = HostTensor::from_f32(DType::F16, vec![m as u64, k as u64], &a);
    let bb = HostTensor::from_f32(DType::BF16, vec![k as u64, n as u64], &b);
    let mm = MatMulKernel {
        batch: vec![],
        m: m as u64,
        n: n as u64,
        k: k as u64,
        a: MatOperand {
            buffer: BufferId(0),
            dtype: DType::F16,
            offset: 0,
            strides: vec![k as i64, 1],
        },
        b: MatOperand {
            buffer: BufferId(1),
            dtype: DType::BF16,
            offset: 0,
            strides: vec![n as i64, 1],
        },
        out: BufferId(2),
        out_dtype: DType::BF16,
        workspace: None,
        accumulate: None,
        prologue: None,
        packs_whole_b: false,
    };
    let p = plan(
        vec![Kernel {
            name: "k0".into(),
            kind: KernelKind::MatMul(mm),
            ops: vec![],
            lines: vec![],
        }],
        vec![
            leaf(
                "a",
                BufferKind::Input { index: 0 },
                DType::F16,
                &[m as u64, k as u64],
            ),
            leaf(
                "b",
                BufferKind::Input { index: 1 },
                DType::BF16,
                &[k as u64, n as u64],
            ),
            arena("o", DType::BF16, &[m as u64, n as u64], 0),
        ],
        &[0, 1],
        vec![out(
            "o",
            2,
            DType::BF16,
            &[m as u64, n as u64],
            0,
            &[n as i64, 1],
        )],
    );
    let got = run(&p, &[a16.clone(), bb.clone()], &[]).expect("runs");
    assert_eq!(got[0].dtype, DType::BF16);
    let want = matmul_ref(
        &a16.to_f32(),
        &bb.to_f32(),
        m,
        n,
        k,
        |i, l| i * k + l,
        |l, j| l * n + j,
    );
    // bf16 keeps 8 bits of mantissa: the result is the exact product rounded once.
    assert_close(&got[0].to_f32(), &want, 1.0 / 128.0);
}

#[test]
fn outputs_may_be_views_and_inputs() {
    // Output 0 is the input itself; output 1 is a transposed view of an arena buffer.
    let x = values(6, 41);
    let k = fused(
        &[2, 3],
        &[],
        vec![ld(0, DType::F32, 0, &[3, 1])],
        vec![el(InstOp::Load(0)), el(InstOp::Unary(UnaryOp::Neg, 0))],
        &[(1, 1)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[2, 3]),
            arena("y", DType::F32, &[2, 3], 0),
        ],
        &[0],
        vec![
            out("x", 0, DType::F32, &[2, 3], 0, &[3, 1]),
            out("yt", 1, DType::F32, &[3, 2], 0, &[1, 3]),
        ],
    );
    let got = run(&p, &[HostTensor::from_f32(DType::F32, vec![2, 3], &x)], &[]).expect("runs");
    assert_eq!(got[0].to_f32(), x.to_vec());
    assert_eq!(got[1].shape, vec![3, 2]);
    let want: Vec<f32> = vec![-x[0], -x[3], -x[1], -x[4], -x[2], -x[5]];
    assert_eq!(got[1].to_f32(), want);
}

#[test]
fn data_that_does_not_match_the_plan_is_an_error() {
    let k = fused(
        &[4],
        &[],
        vec![ld(0, DType::F32, 0, &[1])],
        vec![el(InstOp::Load(0))],
        &[(0, 1)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[4]),
            arena("y", DType::F32, &[4], 0),
        ],
        &[0],
        vec![out("y", 1, DType::F32, &[4], 0, &[1])],
    );
    let wrong_shape = HostTensor::from_f32(DType::F32, vec![5], &[0.0; 5]);
    match run(&p, &[wrong_shape], &[]) {
        Err(CpuError::Mismatch {
            name, found_shape, ..
        }) => {
            assert_eq!(name, "x");
            assert_eq!(found_shape, vec![5]);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let wrong_dtype = HostTensor::from_f32(DType::F16, vec![4], &[0.0; 4]);
    assert!(matches!(
        run(&p, &[wrong_dtype], &[]),
        Err(CpuError::Mismatch { .. })
    ));
    assert_eq!(
        run(&p, &[], &[]),
        Err(CpuError::Count {
            what: "input",
            expected: 1,
            found: 0
        })
    );
}

#[test]
fn a_plan_reading_out_of_bounds_is_rejected_not_run() {
    // The load walks 4 elements with stride 2 over a 4-element buffer.
    let k = fused(
        &[4],
        &[],
        vec![ld(0, DType::F32, 0, &[2])],
        vec![el(InstOp::Load(0))],
        &[(0, 1)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[4]),
            arena("y", DType::F32, &[4], 0),
        ],
        &[0],
        vec![out("y", 1, DType::F32, &[4], 0, &[1])],
    );
    let err = run(
        &p,
        &[HostTensor::from_f32(DType::F32, vec![4], &[1.0; 4])],
        &[],
    )
    .expect_err("out of bounds");
    assert!(
        matches!(&err, CpuError::BadPlan(m) if m.contains("load 0")),
        "{err}"
    );
    // A store into an input is refused too.
    let k = fused(
        &[4],
        &[],
        vec![ld(0, DType::F32, 0, &[1])],
        vec![el(InstOp::Load(0))],
        &[(0, 0)],
    );
    let p2 = plan(
        vec![k],
        vec![leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[4])],
        &[0],
        vec![out("x", 0, DType::F32, &[4], 0, &[1])],
    );
    assert!(matches!(
        run(
            &p2,
            &[HostTensor::from_f32(DType::F32, vec![4], &[1.0; 4])],
            &[]
        ),
        Err(CpuError::BadPlan(_))
    ));
}

#[test]
fn long_sums_are_accurate() {
    // One row of 1e6 values 0.1: a naive f32 running sum is off by ~1e-3 relative.
    let n = 1_000_000u64;
    let x = vec![0.1f32; n as usize];
    let body = vec![el(InstOp::Load(0)), row(InstOp::Reduce(ReduceOp::Sum, 0))];
    let k = fused(
        &[n],
        &[0],
        vec![ld(0, DType::F32, 0, &[1])],
        body,
        &[(1, 1)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[n]),
            arena("s", DType::F32, &[], 0),
        ],
        &[0],
        vec![out("s", 1, DType::F32, &[], 0, &[])],
    );
    let got =
        run(&p, &[HostTensor::from_f32(DType::F32, vec![n], &x)], &[]).expect("runs")[0].to_f32();
    let want = 0.1f32 as f64 * n as f64;
    assert!(
        ((got[0] as f64) - want).abs() / want < 1e-6,
        "{} vs {want}",
        got[0]
    );
}

#[test]
fn a_row_kernel_stores_values_its_reduction_pass_already_computed() {
    // y = exp(x) (element store) and s = sum(exp(x)) (row store): with whole rows cached,
    // the last pass computes nothing new but must still store y.
    let (r, c) = (3u64, 50u64);
    let x = values((r * c) as usize, 51);
    let body = vec![
        el(InstOp::Load(0)),
        el(InstOp::Unary(UnaryOp::Exp, 0)),
        row(InstOp::Reduce(ReduceOp::Sum, 1)),
    ];
    let k = fused(
        &[r, c],
        &[1],
        vec![ld(0, DType::F32, 0, &[c as i64, 1])],
        body,
        &[(1, 1), (2, 2)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[r, c]),
            arena("y", DType::F32, &[r, c], 0),
            arena("s", DType::F32, &[r], 608),
        ],
        &[0],
        vec![
            out("y", 1, DType::F32, &[r, c], 0, &[c as i64, 1]),
            out("s", 2, DType::F32, &[r], 0, &[1]),
        ],
    );
    let got = run(&p, &[HostTensor::from_f32(DType::F32, vec![r, c], &x)], &[]).expect("runs");
    let y: Vec<f64> = x.iter().map(|&v| (v as f64).exp()).collect();
    let s: Vec<f64> = y.chunks(c as usize).map(|row| row.iter().sum()).collect();
    assert_close(&got[0].to_f32(), &y, 1e-6);
    assert_close(&got[1].to_f32(), &s, 1e-6);
}

/// Two pointwise kernels over [r, c]: t = x + 1 (buffer 1), then y = t * 2 and z = t * 3
/// (buffers 2 and 3).
fn plus_one_then_scaled(r: u64, c: u64) -> (Kernel, Kernel) {
    let k0 = fused(
        &[r, c],
        &[],
        vec![ld(0, DType::F32, 0, &[c as i64, 1])],
        vec![
            el(InstOp::Load(0)),
            el(InstOp::Const(1.0)),
            el(InstOp::Binary(BinaryOp::Add, 0, 1)),
        ],
        &[(2, 1)],
    );
    let k1 = fused(
        &[r, c],
        &[],
        vec![ld(1, DType::F32, 0, &[c as i64, 1])],
        vec![
            el(InstOp::Load(0)),
            el(InstOp::Const(2.0)),
            el(InstOp::Binary(BinaryOp::Mul, 0, 1)),
            el(InstOp::Const(3.0)),
            el(InstOp::Binary(BinaryOp::Mul, 0, 3)),
        ],
        &[(2, 2), (4, 3)],
    );
    (k0, k1)
}

#[test]
fn outputs_survive_the_release_of_the_rest_of_a_large_arena() {
    // Arena of ~3.6 MB: t = x + 1 (intermediate, not an output), then y = t * 2 and
    // z = transpose view of t * 3, each at its own offset; the pages of t are released
    // before the copies, and y's after its copy, without touching z.
    let (r, c) = (300u64, 1000u64);
    let n = r * c;
    let x = values(n as usize, 61);
    let bytes = n * 4;
    let (k0, k1) = plus_one_then_scaled(r, c);
    let p = plan(
        vec![k0, k1],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[r, c]),
            arena("t", DType::F32, &[r, c], 0),
            arena("y", DType::F32, &[r, c], bytes),
            arena("z", DType::F32, &[r, c], 2 * bytes),
        ],
        &[0],
        vec![
            out("y", 2, DType::F32, &[r, c], 0, &[c as i64, 1]),
            out("zt", 3, DType::F32, &[c, r], 0, &[1, c as i64]),
        ],
    );
    let got = run(&p, &[HostTensor::from_f32(DType::F32, vec![r, c], &x)], &[]).expect("runs");
    let y: Vec<f64> = x.iter().map(|&v| (v as f64 + 1.0) * 2.0).collect();
    let mut zt = vec![0f64; n as usize];
    for i in 0..r as usize {
        for j in 0..c as usize {
            zt[j * r as usize + i] = (x[i * c as usize + j] as f64 + 1.0) * 3.0;
        }
    }
    assert_close(&got[0].to_f32(), &y, 1e-6);
    assert_close(&got[1].to_f32(), &zt, 1e-6);
}

#[test]
fn outputs_moved_out_of_a_mapped_arena_keep_their_values() {
    // Arena of ~12 MB (a huge-page mapping): t = x + 1, y = t * 2, z = t * 3. Outputs: y
    // (contiguous and alone: its pages move), t both contiguous and as a transposed view
    // (shared: copied), z at an offset 16 bytes off the page grid (copied unless it lines
    // up), and y's first row as a small view (y is then shared too, so it is copied).
    // Then the same without the small view, so y moves.
    let (r, c) = (1000u64, 1000u64);
    let n = r * c;
    let x = values(n as usize, 71);
    let bytes = n * 4;
    let (k0, k1) = plus_one_then_scaled(r, c);
    let buffers = vec![
        leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[r, c]),
        arena("t", DType::F32, &[r, c], 0),
        arena("y", DType::F32, &[r, c], bytes + 4096),
        arena("z", DType::F32, &[r, c], 2 * bytes + 3 * 4096 + 16),
    ];
    let t: Vec<f64> = x.iter().map(|&v| v as f64 + 1.0).collect();
    let y: Vec<f64> = t.iter().map(|&v| v * 2.0).collect();
    let z: Vec<f64> = t.iter().map(|&v| v * 3.0).collect();
    let mut tt = vec![0f64; n as usize];
    for i in 0..r as usize {
        for j in 0..c as usize {
            tt[j * r as usize + i] = t[i * c as usize + j];
        }
    }
    let input = [HostTensor::from_f32(DType::F32, vec![r, c], &x)];
    let full = |name: &str, b: u32| out(name, b, DType::F32, &[r, c], 0, &[c as i64, 1]);
    for with_row in [true, false] {
        let mut outputs = vec![
            full("y", 2),
            full("t", 1),
            full("z", 3),
            out("tt", 1, DType::F32, &[c, r], 0, &[1, c as i64]),
        ];
        if with_row {
            outputs.push(out("y0", 2, DType::F32, &[c], 0, &[1]));
        }
        let p = plan(vec![k0.clone(), k1.clone()], buffers.clone(), &[0], outputs);
        let got = run(&p, &input, &[]).expect("runs");
        assert_close(&got[0].to_f32(), &y, 1e-6);
        assert_close(&got[1].to_f32(), &t, 1e-6);
        assert_close(&got[2].to_f32(), &z, 1e-6);
        assert_close(&got[3].to_f32(), &tt, 1e-6);
        if with_row {
            assert_close(&got[4].to_f32(), &y[..c as usize], 1e-6);
        }
    }
}

#[test]
fn loads_read_in_place_and_gathered_agree() {
    // One pointwise kernel reads x in place (contiguous rows) and through a transposed
    // view (gathered), and stores the loaded values themselves as well as their sum; a
    // row kernel then reads a buffer it also writes in place (so it must copy its loads).
    let (r, c) = (64u64, 64u64);
    let x = values((r * c) as usize, 81);
    let k0 = fused(
        &[r, c],
        &[],
        vec![
            ld(0, DType::F32, 0, &[c as i64, 1]),
            ld(0, DType::F32, 0, &[1, c as i64]),
        ],
        vec![
            el(InstOp::Load(0)),
            el(InstOp::Load(1)),
            el(InstOp::Binary(BinaryOp::Add, 0, 1)),
        ],
        &[(0, 1), (1, 2), (2, 3)],
    );
    let k1 = fused(
        &[r, c],
        &[1],
        vec![ld(3, DType::F32, 0, &[c as i64, 1])],
        vec![
            el(InstOp::Load(0)),
            row(InstOp::Reduce(ReduceOp::Max, 0)),
            el(InstOp::Binary(BinaryOp::Sub, 0, 1)),
        ],
        &[(2, 4), (0, 5)],
    );
    let size = r * c * 4;
    let mut s3 = arena("s", DType::F32, &[r, c], 3 * size);
    s3.last_step = 1;
    let mut s4 = arena("d", DType::F32, &[r, c], 3 * size);
    s4.in_place_of = Some(BufferId(3));
    s4.first_step = 1;
    s4.last_step = 1;
    let p = plan(
        vec![k0, k1],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[r, c]),
            arena("a", DType::F32, &[r, c], 0),
            arena("b", DType::F32, &[r, c], size),
            s3,
            s4,
            arena("e", DType::F32, &[r, c], 2 * size),
        ],
        &[0],
        vec![
            out("a", 1, DType::F32, &[r, c], 0, &[c as i64, 1]),
            out("b", 2, DType::F32, &[r, c], 0, &[c as i64, 1]),
            out("d", 4, DType::F32, &[r, c], 0, &[c as i64, 1]),
            out("e", 5, DType::F32, &[r, c], 0, &[c as i64, 1]),
        ],
    );
    let got = run(&p, &[HostTensor::from_f32(DType::F32, vec![r, c], &x)], &[]).expect("runs");
    let (ru, cu) = (r as usize, c as usize);
    let xt: Vec<f32> = (0..ru * cu).map(|k| x[(k % cu) * cu + k / cu]).collect();
    let s: Vec<f32> = x.iter().zip(&xt).map(|(a, b)| a + b).collect();
    assert_eq!(got[0].to_f32(), x);
    assert_eq!(got[1].to_f32(), xt);
    assert_eq!(got[3].to_f32(), s);
    let d: Vec<f32> = s
        .chunks(cu)
        .flat_map(|row| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.iter().map(move |&v| v - m)
        })
        .collect();
    assert_eq!(got[2].to_f32(), d);
}

#[test]
fn values_computed_straight_into_outputs_match_their_copies() {
    // Softmax storing its result twice (once computed straight into the buffer, once
    // copied from there) and its exp once, for short rows (one cached block) and long
    // ones (blocks of 1024 over several passes); then the same kernel where a transposed
    // load keeps the row from being one run, so every value goes through its slot.
    for (rows, cols) in [(3u64, 50u64), (3, 20_000)] {
        let n = (rows * cols) as usize;
        let x = values(n, 91);
        let mut k = softmax_kernel(rows, cols, 0, 1, [cols as i64, 1]);
        if let KernelKind::Fused(f) = &mut k.kind {
            f.stores = vec![
                Store {
                    inst: 5,
                    buffer: BufferId(1),
                    region: None,
                },
                Store {
                    inst: 5,
                    buffer: BufferId(2),
                    region: None,
                },
                Store {
                    inst: 3,
                    buffer: BufferId(3),
                    region: None,
                },
            ];
        }
        let bytes = n as u64 * 4;
        let p = plan(
            vec![k],
            vec![
                leaf(
                    "x",
                    BufferKind::Input { index: 0 },
                    DType::F32,
                    &[rows, cols],
                ),
                arena("y", DType::F32, &[rows, cols], 0),
                arena("y2", DType::F32, &[rows, cols], bytes.div_ceil(16) * 16),
                arena("e", DType::F32, &[rows, cols], 2 * bytes.div_ceil(16) * 16),
            ],
            &[0],
            (1..4)
                .map(|b| out("o", b, DType::F32, &[rows, cols], 0, &[cols as i64, 1]))
                .collect(),
        );
        let input = [HostTensor::from_f32(DType::F32, vec![rows, cols], &x)];
        let got = run(&p, &input, &[]).expect("runs");
        assert_close(
            &got[0].to_f32(),
            &softmax_rows(&x, rows as usize, cols as usize),
            1e-6,
        );
        assert_eq!(got[0].bytes, got[1].bytes);
        let m: Vec<f64> = x
            .chunks(cols as usize)
            .flat_map(|r| {
                let m = r.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                r.iter().map(move |&v| (v as f64 - m).exp())
            })
            .collect();
        assert_close(&got[2].to_f32(), &m, 1e-6);
    }
    // Softmax over two inner axes plus a load that walks them transposed: the inner axes
    // do not coalesce, so a row is several runs and every value goes through its slot.
    let (r, a, b) = (2u64, 8u64, 5u64);
    let x = values((r * a * b) as usize, 93);
    let body = vec![
        el(InstOp::Load(0)),
        row(InstOp::Reduce(ReduceOp::Max, 0)),
        el(InstOp::Binary(BinaryOp::Sub, 0, 1)),
        el(InstOp::Unary(UnaryOp::Exp, 2)),
        row(InstOp::Reduce(ReduceOp::Sum, 3)),
        el(InstOp::Binary(BinaryOp::Div, 3, 4)),
        el(InstOp::Load(1)),
        el(InstOp::Binary(BinaryOp::Add, 5, 6)),
    ];
    let k = fused(
        &[r, a, b],
        &[1, 2],
        vec![
            ld(0, DType::F32, 0, &[(a * b) as i64, b as i64, 1]),
            ld(0, DType::F32, 0, &[(a * b) as i64, 1, a as i64]),
        ],
        body,
        &[(7, 1), (5, 2)],
    );
    let n = r * a * b;
    let p = plan(
        vec![k],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[r, a, b]),
            arena("y", DType::F32, &[r, a, b], 0),
            arena("s", DType::F32, &[r, a, b], n * 4),
        ],
        &[0],
        vec![
            out("y", 1, DType::F32, &[r, a, b], 0, &contiguous(&[r, a, b])),
            out("s", 2, DType::F32, &[r, a, b], 0, &contiguous(&[r, a, b])),
        ],
    );
    let input = [HostTensor::from_f32(DType::F32, vec![r, a, b], &x)];
    let got = run(&p, &input, &[]).expect("runs");
    let s = got[1].to_f32();
    let (a, b) = (a as usize, b as usize);
    let want: Vec<f32> = (0..n as usize)
        .map(|k| {
            let (row, i, j) = (k / (a * b), k / b % a, k % b);
            s[k] + x[row * a * b + j * a + i]
        })
        .collect();
    assert_eq!(got[0].to_f32(), want);
    assert_close(&s, &softmax_rows(&x, r as usize, a * b), 1e-6);
}

#[test]
fn results_are_the_same_bits_whatever_the_thread_count() {
    // Row kernels with cached rows and with rows longer than the cache (blocked, several
    // passes, Kahan-combined block sums), column sums, a pointwise chain, half precision
    // and a matmul, each run in pools of 1, 2, 3 and 5 threads: every output byte must
    // agree.
    let cases: &[(&str, &[(&str, u64)])] = &[
        (
            include_str!("../../../examples/softmax.tx"),
            &[("N", 37), ("V", 300)],
        ),
        (
            include_str!("../../../examples/softmax.tx"),
            &[("N", 5), ("V", 40_000)],
        ),
        (
            include_str!("../../../examples/layernorm.tx"),
            &[("N", 9), ("D", 20_000)],
        ),
        (
            include_str!("../../../examples/chain.tx"),
            &[("N", 100_003)],
        ),
        (
            include_str!("../../../examples/mixed_precision.tx"),
            &[("N", 64), ("D", 256)],
        ),
        (
            include_str!("../../../examples/mlp.tx"),
            &[("B", 33), ("D", 64), ("H", 96), ("C", 50)],
        ),
        // Column sums run wide (`cpu::columns`): groups of 64 and 16 rows and single rows,
        // one with an element store; a training step's bias gradients.
        (
            include_str!("../../../examples/broadcast.tx"),
            &[("B", 300), ("D", 200)],
        ),
        (
            include_str!("../../../examples/train_mlp.tx"),
            &[("B", 33), ("D", 17), ("H", 70), ("C", 31)],
        ),
        // Kernels with index values (`cpu::typed`): rows in groups of 16, 10, 6 and 4 by
        // the thread count, their sums folded side by side; embedding rows taken by a row's
        // index; the one-hot of the labels as a select.
        (
            include_str!("../../../examples/gpt_block.tx"),
            &[
                ("B", 2),
                ("S", 20),
                ("P", 32),
                ("V", 50),
                ("D", 24),
                ("H", 2),
                ("Dh", 12),
                ("F", 32),
            ],
        ),
        (
            include_str!("../../../examples/train_block.tx"),
            &[
                ("B", 1),
                ("S", 40),
                ("D", 1100),
                ("H", 2),
                ("Dh", 550),
                ("F", 64),
            ],
        ),
        // Attention (two query tiles, the head-merge store), matrix products and the row
        // kernels between them.
        (
            include_str!("../../../examples/transformer_block.tx"),
            &[
                ("B", 2),
                ("S", 200),
                ("D", 32),
                ("H", 2),
                ("Dh", 16),
                ("F", 64),
            ],
        ),
    ];
    for (source, dims) in cases {
        let options = tc_compiler::CompileOptions {
            dims: dims.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            plan: Default::default(),
        };
        let program = tc_compiler::compile(source, &options).expect("compiles");
        let (inputs, params) =
            crate::data::load_leaves(&program.checked, &[], None, 0).expect("data");
        let in_pool = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(|| run(&program.plan, &inputs, &params).expect("runs"))
        };
        let one = in_pool(1);
        for threads in [2, 3, 5] {
            let got = in_pool(threads);
            for (a, b) in one.iter().zip(&got) {
                assert!(
                    a.bytes == b.bytes,
                    "{dims:?}: 1 and {threads} threads differ"
                );
            }
        }
    }
}

#[test]
fn repeated_runs_of_different_data_give_each_its_own_bits() {
    // Attention keeps each thread's buffers (and packed keys) across runs, and a 1 MiB
    // arena is kept for the next run (copying its output rather than moving its pages):
    // runs of two data sets, alternated in one pool, must each give the same bits every
    // time. Fails when a thread's packed keys of one run are used by the next.
    let options = tc_compiler::CompileOptions {
        dims: [("B", 2), ("H", 8), ("S", 256), ("Dh", 64)]
            .iter()
            .map(|(n, v)| (n.to_string(), *v))
            .collect(),
        plan: Default::default(),
    };
    let program = tc_compiler::compile(include_str!("../../../examples/attention.tx"), &options)
        .expect("compiles");
    assert!(program.plan.arena_bytes >= 1 << 20);
    let data = |seed| crate::data::load_leaves(&program.checked, &[], None, seed).expect("data");
    let (a, b) = (data(1), data(2));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let go = |(i, p): &(Vec<HostTensor>, Vec<HostTensor>)| {
        pool.install(|| run(&program.plan, i, p).expect("runs"))
    };
    let (a1, b1) = (go(&a), go(&b));
    assert!(a1[0].bytes != b1[0].bytes, "two data sets, two results");
    for _ in 0..3 {
        assert!(go(&a)[0].bytes == a1[0].bytes, "a run of a after b differs");
        assert!(go(&b)[0].bytes == b1[0].bytes, "a run of b after a differs");
    }
}

#[test]
fn timed_runs_give_the_same_outputs_and_a_time_per_kernel() {
    let options = tc_compiler::CompileOptions {
        dims: [
            ("B", 1),
            ("S", 70),
            ("D", 32),
            ("H", 2),
            ("Dh", 16),
            ("F", 48),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), *v))
        .collect(),
        plan: Default::default(),
    };
    let program = tc_compiler::compile(
        include_str!("../../../examples/transformer_block.tx"),
        &options,
    )
    .expect("compiles");
    let (inputs, params) = crate::data::load_leaves(&program.checked, &[], None, 0).expect("data");
    let plain = run(&program.plan, &inputs, &params).expect("runs");
    let (timed, times) = super::run_timed(&program.plan, &inputs, &params).expect("runs");
    assert_eq!(times.len(), program.plan.kernels.len());
    // A kernel run as a product's epilogue has its time in the product's.
    assert!(
        times.iter().enumerate().all(|(i, t)| t.cpu_s >= 0.0
            && match t.epilogue_of {
                None => t.wall_s > 0.0,
                Some(j) => j + 1 == i && t.wall_s == 0.0 && times[j].wall_s > 0.0,
            }),
        "{times:?}"
    );
    for (a, b) in plain.iter().zip(&timed) {
        assert!(a.bytes == b.bytes && a.shape == b.shape);
    }
    // A plan the executor rejects is the same error timed or not.
    let mut bad = program.plan.clone();
    bad.arena_bytes = 0;
    assert_eq!(
        super::run_timed(&bad, &inputs, &params).map(|_| ()),
        run(&bad, &inputs, &params).map(|_| ())
    );
}

/// `sigmoid(x)` in a kernel that also computes `1 + exp(-x)` shares that exponential
/// (`peephole`): the kernel IR divides instead, sigmoid first in value order as in
/// `examples/chain.tx`, and every output has the bits of the scalar functions, the
/// specials and both ends of the range included; in an f16 kernel nothing is shared.
#[test]
fn sigmoid_shares_one_plus_exp_of_minus_x_with_the_same_bits() {
    use super::math;
    use tc_compiler::lower::{self, ValueOp};
    let mut x = values(3000, 9);
    x.extend([
        -100.0,
        -88.8,
        -88.7,
        -87.0,
        0.0,
        -0.0,
        17.0,
        100.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-30,
    ]);
    let n = x.len() as u64;
    // s = sigmoid(x); t = 1 + exp(-x); y0 = s * 2, y1 = t
    let kernel = |dtype: DType| {
        let mut body = vec![
            el(InstOp::Load(0)),
            el(InstOp::Unary(UnaryOp::Sigmoid, 0)),
            el(InstOp::Const(2.0)),
            el(InstOp::Binary(BinaryOp::Mul, 1, 2)),
            el(InstOp::Unary(UnaryOp::Neg, 0)),
            el(InstOp::Unary(UnaryOp::Exp, 4)),
            el(InstOp::Const(1.0)),
            el(InstOp::Binary(BinaryOp::Add, 6, 5)),
        ];
        for inst in &mut body[1..] {
            inst.dtype = dtype;
        }
        fused(
            &[n],
            &[],
            vec![ld(0, DType::F32, 0, &[1])],
            body,
            &[(3, 1), (7, 2)],
        )
    };
    let p = |dtype| {
        plan(
            vec![kernel(dtype)],
            vec![
                leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[n]),
                arena("y0", DType::F32, &[n], 0),
                arena("y1", DType::F32, &[n], n * 4 + 64),
            ],
            &[0],
            vec![
                out("y0", 1, DType::F32, &[n], 0, &[1]),
                out("y1", 2, DType::F32, &[n], 0, &[1]),
            ],
        )
    };
    for (dtype, shared) in [(DType::F32, true), (DType::F16, false)] {
        let plan = p(dtype);
        let KernelKind::Fused(k) = &plan.kernels[0].kind else {
            unreachable!()
        };
        let mut ir = lower::lower_fused(&plan, "k", k).expect("lowers");
        super::peephole::rewrite(&mut ir);
        let divides = ir
            .values
            .iter()
            .any(|v| matches!(v.op, ValueOp::Binary(BinaryOp::Div, ..)));
        assert_eq!(divides, shared, "{dtype}");
        let order = &ir.passes[0].elements;
        for (k, id) in order.iter().enumerate() {
            for o in ir.value(*id).op.operands() {
                assert!(
                    !order[k..].contains(&o),
                    "{id} computed before its operand {o}"
                );
            }
        }
        let input = HostTensor::from_f32(DType::F32, vec![n], &x);
        let got = run(&plan, &[input], &[]).expect("runs");
        let (y0, y1) = (got[0].to_f32(), got[1].to_f32());
        let r = |v: f32| math::round_to(dtype, v);
        for (i, &xi) in x.iter().enumerate() {
            let s = r(math::sigmoid(xi));
            let want = [r(s * 2.0), r(1.0 + r(math::exp(r(-xi))))];
            for (got, want) in [y0[i], y1[i]].into_iter().zip(want) {
                assert!(
                    got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
                    "{dtype} x = {xi:e}: {got:e}, want {want:e}"
                );
            }
        }
    }
}

/// Casts that change no value (f16 or bf16 to f32, a float dtype to itself) are skipped
/// (`peephole`): their users, chains of them and stores of them read the operand, no pass
/// computes them; so is a cast only stored to its own dtype (the store rounds alike); and
/// the outputs are the bits of the element-at-a-time meaning — in a row kernel (a max over
/// the row of an exact cast), every f16 bit pattern as input.
#[test]
fn exact_casts_are_skipped_with_the_same_bits() {
    use super::math;
    use tc_compiler::lower::{self, ValueOp};
    let typed = |op: InstOp, dtype: DType, level: Level| Inst {
        op,
        dtype,
        level,
        node: None,
    };
    let (rows, cols) = (256u64, 256u64);
    let n = rows * cols;
    // Every f16 bit pattern, NaNs and infinities included.
    let x: Vec<f32> = (0..=u16::MAX)
        .map(|h| half::f16::from_bits(h).to_f32())
        .collect();
    let e = Level::Element;
    // a = f32(x) (exact); b = f32(a) (exact); c = bf16(3·b) (rounds); d = f16(f32(c) + a);
    // y0 = f16(d) (exact), y1 = b, y2 = max over the row of f32(d) (exact), y3 = f16(3·b)
    // stored to f16 (the store rounds), y4 = c stored to f32 (the cast rounds).
    let body = vec![
        typed(InstOp::Load(0), DType::F16, e),
        typed(InstOp::Cast(0), DType::F32, e),
        typed(InstOp::Cast(1), DType::F32, e),
        el(InstOp::Const(3.0)),
        el(InstOp::Binary(BinaryOp::Mul, 2, 3)),
        typed(InstOp::Cast(4), DType::BF16, e),
        typed(InstOp::Cast(5), DType::F32, e),
        typed(InstOp::Binary(BinaryOp::Add, 6, 1), DType::F16, e),
        typed(InstOp::Cast(7), DType::F16, e),
        typed(InstOp::Cast(8), DType::F32, e),
        row(InstOp::Reduce(ReduceOp::Max, 9)),
        typed(InstOp::Cast(4), DType::F16, e),
    ];
    let k = fused(
        &[rows, cols],
        &[1],
        vec![ld(0, DType::F16, 0, &[cols as i64, 1])],
        body,
        &[(8, 1), (2, 2), (10, 3), (11, 4), (5, 5)],
    );
    let p = plan(
        vec![k],
        vec![
            leaf(
                "x",
                BufferKind::Input { index: 0 },
                DType::F16,
                &[rows, cols],
            ),
            arena("y0", DType::F16, &[rows, cols], 0),
            arena("y1", DType::F32, &[rows, cols], n * 2),
            arena("y2", DType::F32, &[rows], n * 6),
            arena("y3", DType::F16, &[rows, cols], n * 6 + rows * 4),
            arena("y4", DType::F32, &[rows, cols], n * 8 + rows * 4),
        ],
        &[0],
        vec![
            out("y0", 1, DType::F16, &[rows, cols], 0, &[cols as i64, 1]),
            out("y1", 2, DType::F32, &[rows, cols], 0, &[cols as i64, 1]),
            out("y2", 3, DType::F32, &[rows], 0, &[1]),
            out("y3", 4, DType::F16, &[rows, cols], 0, &[cols as i64, 1]),
            out("y4", 5, DType::F32, &[rows, cols], 0, &[cols as i64, 1]),
        ],
    );
    let KernelKind::Fused(fk) = &p.kernels[0].kind else {
        unreachable!()
    };
    let mut ir = lower::lower_fused(&p, "k", fk).expect("lowers");
    let casts = |ir: &lower::KernelIr| {
        ir.passes
            .iter()
            .flat_map(|q| q.elements.iter().chain(&q.row))
            .filter(|v| matches!(ir.value(**v).op, ValueOp::Cast(_)))
            .count()
    };
    assert_eq!(casts(&ir), 7, "the kernel as lowered");
    super::peephole::rewrite(&mut ir);
    assert_eq!(casts(&ir), 1, "only the cast to bf16 is computed");
    // y0 stores the add, y3 the product (their casts skipped); y4 keeps its cast.
    let stored = |s: usize| &ir.value(ir.stores[s].value).op;
    assert!(matches!(stored(0), ValueOp::Binary(BinaryOp::Add, ..)));
    assert!(matches!(stored(3), ValueOp::Binary(BinaryOp::Mul, ..)));
    assert!(matches!(stored(4), ValueOp::Cast(_)));
    let input = HostTensor::from_f32(DType::F16, vec![rows, cols], &x);
    let got = run(&p, &[input], &[]).expect("runs");
    let [y0, y1, y2, y3, y4] = [0, 1, 2, 3, 4].map(|o| got[o].to_f32());
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan();
    for (r, row) in x.chunks(cols as usize).enumerate() {
        let mut max = f32::NEG_INFINITY;
        for (j, &xi) in row.iter().enumerate() {
            let i = r * cols as usize + j;
            let c = math::round_to(DType::BF16, 3.0 * xi);
            assert!(same(y4[i], c), "x = {xi:e}: {} want {c:e}", y4[i]);
            let d = math::round_to(DType::F16, c + xi);
            assert!(same(y0[i], d), "x = {xi:e}: {} want {d:e}", y0[i]);
            assert!(same(y1[i], xi), "x = {xi:e}: {}", y1[i]);
            let f = math::round_to(DType::F16, 3.0 * xi);
            assert!(same(y3[i], f), "x = {xi:e}: {} want {f:e}", y3[i]);
            max = math::maximum(max, d);
        }
        assert!(same(y2[r], max), "row {r}: {} want {max:e}", y2[r]);
    }
}

/// Cheap insts folded into the loop of the inst they feed (`fused::Fold`) give the bits of
/// one inst at a time: `exp(-x)`, `sqrt(|x|)`, `x·1.5 + 0.25`, `c - a/b` (the fed inst on
/// the right), `maximum(r + x, y)` with a row-level left operand (swapped: `+` commutes),
/// `maximum(-0, x)` whose ±0 ties must not be swapped, and `y - x` fed into a value that
/// is also stored. Checked element by element against the scalar functions.
#[test]
fn folded_cheap_insts_give_the_bits_of_one_inst_at_a_time() {
    use super::math::{maximum, unary};
    let mut x = values(2500, 4);
    x.extend([
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        -f32::INFINITY,
        1e-40,
        -3.0,
    ]);
    let y: Vec<f32> = x.iter().rev().map(|v| v * 0.5).collect();
    let n = x.len() as u64;
    let c = |v: f64| el(InstOp::Const(v));
    let body = vec![
        el(InstOp::Load(0)),                          // 0 x
        el(InstOp::Load(1)),                          // 1 y
        el(InstOp::Unary(UnaryOp::Neg, 0)),           // 2
        el(InstOp::Unary(UnaryOp::Exp, 2)),           // 3 exp(-x)
        el(InstOp::Unary(UnaryOp::Abs, 1)),           // 4
        el(InstOp::Unary(UnaryOp::Sqrt, 4)),          // 5 sqrt(|y|)
        c(1.5),                                       // 6
        el(InstOp::Binary(BinaryOp::Mul, 0, 6)),      // 7
        c(0.25),                                      // 8
        el(InstOp::Binary(BinaryOp::Add, 7, 8)),      // 9 x·1.5 + 0.25
        el(InstOp::Binary(BinaryOp::Div, 3, 5)),      // 10
        el(InstOp::Binary(BinaryOp::Sub, 9, 10)),     // 11 (x·1.5 + 0.25) - exp(-x)/sqrt(|y|)
        c(-2.0),                                      // 12
        el(InstOp::Binary(BinaryOp::Add, 12, 0)),     // 13 -2 + x
        el(InstOp::Binary(BinaryOp::Maximum, 13, 1)), // 14 maximum(-2 + x, y)
        el(InstOp::Binary(BinaryOp::Sub, 1, 0)),      // 15 y - x
        c(-0.0),                                      // 16
        el(InstOp::Binary(BinaryOp::Maximum, 16, 0)), // 17 maximum(-0, x): not swapped
        el(InstOp::Binary(BinaryOp::Mul, 0, 15)),     // 18 x·(y - x), also stored
        el(InstOp::Binary(BinaryOp::Mul, 17, 18)),    // 19
    ];
    let stores = [(11, 2), (14, 3), (19, 4), (18, 5)];
    let bytes = n * 4 + 64;
    let p = plan(
        vec![fused(
            &[n],
            &[],
            vec![ld(0, DType::F32, 0, &[1]), ld(1, DType::F32, 0, &[1])],
            body,
            &stores,
        )],
        vec![
            leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[n]),
            leaf("y", BufferKind::Input { index: 1 }, DType::F32, &[n]),
            arena("o0", DType::F32, &[n], 0),
            arena("o1", DType::F32, &[n], bytes),
            arena("o2", DType::F32, &[n], 2 * bytes),
            arena("o3", DType::F32, &[n], 3 * bytes),
        ],
        &[0, 1],
        (0..4)
            .map(|k| out(&format!("o{k}"), 2 + k, DType::F32, &[n], 0, &[1]))
            .collect(),
    );
    let inputs = [
        HostTensor::from_f32(DType::F32, vec![n], &x),
        HostTensor::from_f32(DType::F32, vec![n], &y),
    ];
    let got: Vec<Vec<f32>> = run(&p, &inputs, &[])
        .expect("runs")
        .iter()
        .map(|t| t.to_f32())
        .collect();
    for i in 0..x.len() {
        let (xi, yi) = (x[i], y[i]);
        let e = unary(UnaryOp::Exp, -xi) / unary(UnaryOp::Sqrt, yi.abs());
        let want = [
            (xi * 1.5 + 0.25) - e,
            maximum(-2.0 + xi, yi),
            maximum(-0.0, xi) * (xi * (yi - xi)),
            xi * (yi - xi),
        ];
        for (k, w) in want.into_iter().enumerate() {
            let g = got[k][i];
            assert!(
                g.to_bits() == w.to_bits() || g.is_nan() && w.is_nan(),
                "output {k}, x = {xi:e}, y = {yi:e}: {g:e}, want {w:e}"
            );
        }
    }
}

/// A fused kernel that consumes a matrix product, run on the product's finished blocks
/// (`epilogue`), gives the bits it gives run after the product: pointwise kernels over
/// products one column block wide and several, a row kernel over rows one block wide and
/// wider (run after the last block), a product with a residual absorbed, a batched
/// product, edges that are not whole micro-tiles, in pools of 1, 2 and 3 threads. Which
/// kernels ran as an epilogue is checked too: a consumer that reads the product transposed,
/// or writes over an operand's storage or the packing workspace, must not.
#[test]
fn product_epilogues_give_the_bits_of_the_kernels_after_the_product() {
    let dense = "dim M = 70\ndim K = 40\ndim N = 600\n\
        input x : f32[M, K]\nparam w : f32[K, N]\nparam b : f32[N]\nparam r : f32[M, N]\n";
    /// (source, dims, kernels expected to run as an epilogue)
    type Case = (String, Vec<(&'static str, u64)>, Vec<usize>);
    let cases: Vec<Case> = vec![
        // bias + gelu over one column block, then over two (600 > 512 columns).
        (
            format!("{dense}y = gelu(x @ w + b)\noutput y"),
            vec![("N", 500)],
            vec![1],
        ),
        (
            format!("{dense}y = gelu(x @ w + b)\noutput y"),
            vec![],
            vec![1],
        ),
        // Two stores, one in place of the product (`s`, which a later product reads).
        (
            format!("{dense}param w2 : f32[N, N]\ns = r + x @ w\ny = tanh(s) * b\nz = s @ w2\noutput y, z"),
            vec![("M", 31), ("N", 77)],
            vec![1],
        ),
        // Not epilogues: `y` planned where the product's packing workspace was (dead once
        // the product is done, live while it runs); `y` planned in place of `s`, which
        // the product `s @ w2` reads.
        (
            format!("{dense}s = r + x @ w\ny = tanh(s) * b\noutput y, s"),
            vec![("M", 31), ("N", 77)],
            vec![],
        ),
        (
            format!("{dense}param w2 : f32[N, N]\ns = r + x @ w\nz = s @ w2\ny = tanh(z) * s\noutput y"),
            vec![("M", 31), ("N", 77)],
            vec![],
        ),
        // Row kernels: rows of one column block, and wider (run after the last block).
        (
            format!("{dense}y = layernorm(x @ w + r, axis=-1) * b\noutput y"),
            vec![("N", 200)],
            vec![1],
        ),
        (
            format!("{dense}y = softmax(x @ w + b, axis=-1)\noutput y"),
            vec![("M", 100)],
            vec![1],
        ),
        // A batched product whose matrices tc's GEMM shares (each large enough).
        (
            "dim G = 2\ndim M = 150\ndim K = 320\ndim N = 360\n\
             input x : f32[G, M, K]\nparam w : f32[G, K, N]\nparam b : f32[N]\n\
             y = relu(x @ w + b)\noutput y"
                .to_string(),
            vec![],
            vec![1],
        ),
        // The product read transposed: not an epilogue.
        (
            format!("{dense}y = transpose(x @ w) * 2.0\noutput y"),
            vec![("N", 70)],
            vec![],
        ),
    ];
    for (source, dims, want) in &cases {
        let options = tc_compiler::CompileOptions {
            dims: dims.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            plan: Default::default(),
        };
        let program = tc_compiler::compile(source, &options).expect("compiles");
        let plan = &program.plan;
        let (inputs, params) =
            crate::data::load_leaves(&program.checked, &[], None, 7).expect("data");
        let (_, times) = super::run_timed(plan, &inputs, &params).expect("runs");
        let got: Vec<usize> = (0..times.len())
            .filter(|&i| times[i].epilogue_of.is_some())
            .collect();
        assert_eq!(&got, want, "{source}\n{dims:?}: kernels run as an epilogue");
        assert_same_bits_as_stored(plan, &inputs, &params, &format!("{source}\n{dims:?}"));
    }
}

/// A plan whose products are never stored whole (`BufferKind::Tile`: products of the
/// transformer block consumed on their tiles: a pointwise consumer and a row kernel's)
/// gives the bits of the same plan with those products stored and the kernels run one after
/// the other, in pools of 1, 2 and 3 threads; a plan whose tile a kernel reads other than
/// on the product's blocks is an error, not a read of nothing.
#[test]
fn products_in_tiles_give_the_bits_of_products_stored() {
    let dims = [
        ("B", 1),
        ("S", 128),
        ("D", 256),
        ("H", 4),
        ("Dh", 64),
        ("F", 1024),
    ];
    let options = tc_compiler::CompileOptions {
        dims: dims.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        plan: Default::default(),
    };
    let program = tc_compiler::compile(
        include_str!("../../../examples/transformer_block.tx"),
        &options,
    )
    .expect("compiles");
    let plan = &program.plan;
    let tiles: Vec<usize> = (0..plan.buffers.len())
        .filter(|&i| plan.buffers[i].kind == BufferKind::Tile)
        .collect();
    assert!(
        !tiles.is_empty(),
        "no product in tiles:\n{}",
        tc_compiler::plan::text::print(plan)
    );
    let (inputs, params) = crate::data::load_leaves(&program.checked, &[], None, 3).expect("data");
    assert_same_bits_as_stored(plan, &inputs, &params, "transformer block");
    // The kernel after a tiled product moved away from it: an error naming the tile.
    let mut bad = plan.clone();
    let t = tiles[0];
    let step = bad.buffers[t].first_step;
    bad.kernels.swap(step + 1, step + 2);
    match run(&bad, &inputs, &params) {
        Err(CpuError::BadPlan(msg)) => assert!(msg.contains("never stored whole"), "{msg}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Asserts that `plan` gives, in pools of 1, 2 and 3 threads, the bits of the same plan
/// with every product stored whole (`stored_whole`) and no epilogue (each kernel after the
/// one before).
fn assert_same_bits_as_stored(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
    what: &str,
) {
    let stored = stored_whole(plan);
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let go = |plan: &Plan, epilogues| {
            let options = super::Options {
                epilogues,
                ..super::Options::default()
            };
            pool.install(|| super::run_with(plan, inputs, params, &options))
                .expect("runs")
        };
        let (with, without) = (go(plan, true), go(&stored, false));
        for (a, b) in with.iter().zip(&without) {
            assert!(
                a.bytes == b.bytes && a.shape == b.shape,
                "{what}, {threads} threads: epilogues or tiles changed the result"
            );
        }
    }
}

/// `plan` with every product stored whole: each tile buffer given arena bytes of its own
/// past the others.
fn stored_whole(plan: &Plan) -> Plan {
    let mut stored = plan.clone();
    for b in stored
        .buffers
        .iter_mut()
        .filter(|b| b.kind == BufferKind::Tile)
    {
        b.kind = BufferKind::Arena;
        b.offset = stored.arena_bytes.next_multiple_of(16);
        stored.arena_bytes = b.offset + b.bytes;
    }
    stored
}

/// `plan` with the pointwise kernel that stores the `A` of the product after it, read by
/// that product alone, moved into the product as its prologue (`MatMulKernel::prologue`)
/// and `A` made a tile, never stored; and the names of the buffers so computed (those the
/// planner gave prologues already among them).
fn with_prologues(plan: &Plan) -> (Plan, Vec<String>) {
    let mut out = plan.clone();
    let mut names: Vec<String> = plan
        .kernels
        .iter()
        .filter_map(|k| match &k.kind {
            KernelKind::MatMul(mm) if mm.prologue.is_some() => {
                Some(plan.buffers[mm.a.buffer.index()].name.clone())
            }
            _ => None,
        })
        .collect();
    let mut i = 0;
    while i + 1 < out.kernels.len() {
        let (KernelKind::Fused(f), KernelKind::MatMul(mm)) =
            (&out.kernels[i].kind, &out.kernels[i + 1].kind)
        else {
            i += 1;
            continue;
        };
        let h = mm.a.buffer;
        let readers = out
            .kernels
            .iter()
            .filter(|k| tc_compiler::memory::liveness::reads(k).contains(&h))
            .count();
        let is_output = out.outputs.iter().any(|o| o.buffer == h);
        if !f.reduce_axes.is_empty()
            || f.stores.len() != 1
            || f.stores[0].buffer != h
            || readers != 1
            || is_output
        {
            i += 1;
            continue;
        }
        let f = Box::new(f.clone());
        let KernelKind::MatMul(mm) = &mut out.kernels[i + 1].kind else {
            unreachable!()
        };
        mm.prologue = Some(f);
        out.buffers[h.index()].kind = BufferKind::Tile;
        names.push(out.buffers[h.index()].name.clone());
        out.kernels.remove(i);
    }
    (out, names)
}

/// The inverse of `with_prologues`: every prologue run as its own kernel just before its
/// product, and the tile it computes given arena bytes of its own past the others.
fn prologues_stored(plan: &Plan) -> Plan {
    let mut stored = plan.clone();
    let mut i = 0;
    while i < stored.kernels.len() {
        let taken = match &mut stored.kernels[i].kind {
            KernelKind::MatMul(mm) => mm.prologue.take().map(|p| (*p, mm.a.buffer)),
            _ => None,
        };
        if let Some((f, h)) = taken {
            let b = &mut stored.buffers[h.index()];
            b.kind = BufferKind::Arena;
            b.offset = stored.arena_bytes.next_multiple_of(16);
            stored.arena_bytes = b.offset + b.bytes;
            let name = format!("{}_prologue", stored.kernels[i].name);
            stored.kernels.insert(
                i,
                Kernel {
                    name,
                    kind: KernelKind::Fused(f),
                    ops: vec![],
                    lines: vec![],
                },
            );
            i += 1;
        }
        i += 1;
    }
    stored
}

/// A product whose `A` a prologue computes where tc's GEMM packs it (`h = gelu(pre)`, `h =
/// x * y + 1`, a bf16 `h = bf16(f32(x) * s)`, read straight as `h @ w` and transposed as
/// `hᵀ @ g`; `k` below and past `KC` = 512) gives, in pools of 1, 2 and 3 threads, the bits
/// of the same plan with the prologue run as its own kernel and `h` stored.
#[test]
fn prologue_products_give_the_bits_of_a_stored() {
    let cases = [
        // (source, R, C, N)
        ("h = gelu(pre)\ny = h @ w\n", 37, 50, 29),
        ("h = gelu(pre)\ny = h @ w\n", 37, 600, 29),
        ("h = pre * q + 1.0\ny = h @ w\n", 41, 530, 70),
        ("h = gelu(pre)\ny = transpose(h) @ g\n", 37, 50, 29),
        ("h = gelu(pre)\ny = transpose(h) @ g\n", 620, 50, 29),
        ("h = pre * q + 1.0\ny = transpose(h) @ g\n", 700, 45, 33),
        // With an epilogue after the product (which reads what the prologue reads).
        ("h = gelu(pre)\ny = (h @ w) * 2.0 + 1.0\n", 150, 600, 40),
    ];
    // bf16 products (`gemm_bf16`: the computed rows as bits read in place by `vdpbf16ps`,
    // or packed) of a bf16 `h` computed from f16 and f32: `k` even, odd, past `2·KP`.
    let halves = [
        ("h = bf16(f32(x) * s)\ny = h @ w\n", 37, 50, 29),
        ("h = bf16(f32(x) * s)\ny = h @ w\n", 37, 51, 29),
        ("h = bf16(f32(x) * s)\ny = h @ w\n", 150, 1030, 40),
        ("h = bf16(f32(x) * s)\ny = transpose(h) @ g\n", 41, 45, 33),
    ];
    let f32_leaves = "input pre : f32[R, C]\nparam q : f32[R, C]\nparam w : f32[C, N]\n\
                      param g : f32[R, N]\n";
    let half_leaves = "input x : f16[R, C]\nparam s : f32[C]\nparam w : bf16[C, N]\n\
                       param g : bf16[R, N]\n";
    let all = cases
        .iter()
        .map(|c| (f32_leaves, c))
        .chain(halves.iter().map(|c| (half_leaves, c)));
    for (leaves, &(body, r, c, n)) in all {
        let source = format!("dim R = {r}\ndim C = {c}\ndim N = {n}\n{leaves}{body}output y");
        let program = tc_compiler::compile(&source, &Default::default()).expect("compiles");
        let (plan, names) = with_prologues(&program.plan);
        assert_eq!(
            names,
            ["h"],
            "{source}\n{}",
            tc_compiler::plan::text::print(&program.plan)
        );
        let stored = prologues_stored(&plan);
        let (inputs, params) =
            crate::data::load_leaves(&program.checked, &[], None, 5).expect("data");
        if body.contains("* 2.0") {
            // The kernel after the product runs on its blocks, beside the prologue.
            let (_, times) = super::run_timed(&plan, &inputs, &params).expect("runs");
            assert!(
                times.iter().any(|t| t.epilogue_of.is_some()),
                "{source}: no epilogue"
            );
        }
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let go = |plan: &Plan| pool.install(|| run(plan, &inputs, &params)).expect("runs");
            let (with, without) = (go(&plan), go(&stored));
            assert_eq!(with.len(), without.len());
            for (a, b) in with.iter().zip(&without) {
                assert!(
                    a.bytes == b.bytes && a.shape == b.shape,
                    "{source}\n{threads} threads: the prologue changed the result"
                );
            }
        }
    }
}

/// A prologue the executor cannot run where the GEMM packs (strides that read `h` other
/// than straight or transposed, a reduction, a store of another buffer), or a prologue
/// tile read by a kernel other than its product, is a plan error naming the problem,
/// never a panic or a read of nothing.
#[test]
fn bad_prologues_are_plan_errors() {
    let source = "dim R = 37\ndim C = 50\ndim N = 29\ninput pre : f32[R, C]\n\
                  param w : f32[C, N]\nh = gelu(pre)\ny = h @ w\noutput y";
    let program = tc_compiler::compile(source, &Default::default()).expect("compiles");
    let (plan, names) = with_prologues(&program.plan);
    assert_eq!(names, ["h"]);
    let (inputs, params) = crate::data::load_leaves(&program.checked, &[], None, 5).expect("data");
    run(&plan, &inputs, &params).expect("the good plan runs");
    let mm_at = plan
        .kernels
        .iter()
        .position(|k| matches!(&k.kind, KernelKind::MatMul(m) if m.prologue.is_some()))
        .expect("a product with a prologue");
    let edit = |f: &dyn Fn(&mut MatMulKernel)| {
        let mut bad = plan.clone();
        let KernelKind::MatMul(mm) = &mut bad.kernels[mm_at].kind else {
            unreachable!()
        };
        f(mm);
        bad
    };
    let expect_bad = |bad: &Plan, what: &str| match run(bad, &inputs, &params) {
        Err(CpuError::BadPlan(msg)) => assert!(msg.contains(what), "{msg}"),
        other => panic!("{what}: {:?}", other.map(|_| ())),
    };
    // `h` read other than straight or transposed (in bounds: 37 × 25 with strides [25, 2]).
    let bad = edit(&|mm| {
        mm.a.strides = vec![25, 2];
        mm.k = 25;
    });
    expect_bad(&bad, "prologue");
    // A prologue that is a reduction (its domain no longer pointwise).
    let bad = edit(&|mm| {
        let p = mm.prologue.as_mut().expect("prologue");
        p.reduce_axes = vec![1];
    });
    expect_bad(&bad, "prologue");
    // A prologue storing another buffer than `A`'s.
    let bad = edit(&|mm| {
        let p = mm.prologue.as_mut().expect("prologue");
        p.stores[0].buffer = mm.b.buffer;
    });
    expect_bad(&bad, "prologue");
    // A product whose `A` is a tile and no prologue computes it.
    let bad = edit(&|mm| mm.prologue = None);
    expect_bad(&bad, "never stored");
    // The prologue's tile read by a kernel other than its product.
    let mut bad = plan.clone();
    let h = match &bad.kernels[mm_at].kind {
        KernelKind::MatMul(mm) => mm.a.buffer,
        _ => unreachable!(),
    };
    let y = bad.outputs[0].buffer;
    bad.kernels.push(fused(
        &[37, 29],
        &[],
        vec![ld(h.0, DType::F32, 0, &[50, 1])],
        vec![el(InstOp::Load(0))],
        &[(0, y.0)],
    ));
    expect_bad(&bad, "never stored");
}

/// Column reductions over awkward sizes, run wide (`cpu::columns`) and on the row path:
/// every output the same bits, the plain sums and means also those of `math::block_sum`
/// per column block and `KahanSum` across blocks (what the row path does), with ±0, ±inf
/// and NaN in some columns.
#[test]
fn column_reductions_run_wide_give_the_row_paths_bits() {
    use super::columns;
    use std::sync::atomic::Ordering::Relaxed;
    // The kernels over domain [r, c] reducing axis 0, x [r, c] row-major, bias [c], scale
    // [r, 1]; buffer 0 is x, 1 bias, 2 scale, then the outputs.
    let kernels = |r: u64, c: u64| -> Vec<(&str, Kernel, Vec<Vec<u64>>)> {
        let x = || ld(0, DType::F32, 0, &[c as i64, 1]);
        let bias = || ld(1, DType::F32, 0, &[0, 1]);
        let scale = || ld(2, DType::F32, 0, &[1, 0]);
        let col = vec![c];
        let whole = vec![r, c];
        let reduce = |op| {
            fused(
                &[r, c],
                &[0],
                vec![x()],
                vec![el(InstOp::Load(0)), row(InstOp::Reduce(op, 0))],
                &[(1, 3)],
            )
        };
        vec![
            ("sum", reduce(ReduceOp::Sum), vec![col.clone()]),
            ("mean", reduce(ReduceOp::Mean), vec![col.clone()]),
            ("max", reduce(ReduceOp::Max), vec![col.clone()]),
            ("min", reduce(ReduceOp::Min), vec![col.clone()]),
            (
                // broadcast.tx: ((x + bias) + x·bias)·scale stored, and its column sum.
                "fused",
                fused(
                    &[r, c],
                    &[0],
                    vec![x(), bias(), scale()],
                    vec![
                        el(InstOp::Load(0)),
                        row(InstOp::Load(1)),
                        el(InstOp::Binary(BinaryOp::Add, 0, 1)),
                        el(InstOp::Binary(BinaryOp::Mul, 0, 1)),
                        el(InstOp::Binary(BinaryOp::Add, 2, 3)),
                        el(InstOp::Load(2)),
                        el(InstOp::Binary(BinaryOp::Mul, 4, 5)),
                        row(InstOp::Reduce(ReduceOp::Sum, 6)),
                    ],
                    &[(6, 3), (7, 4)],
                ),
                vec![whole.clone(), col.clone()],
            ),
            (
                // Two passes: the column mean, then x - mean stored and the mean of its
                // squares (a per-lane row value spread over the lanes), and a constant.
                "centred",
                fused(
                    &[r, c],
                    &[0],
                    vec![x()],
                    vec![
                        el(InstOp::Load(0)),
                        row(InstOp::Reduce(ReduceOp::Mean, 0)),
                        el(InstOp::Binary(BinaryOp::Sub, 0, 1)),
                        el(InstOp::Binary(BinaryOp::Mul, 2, 2)),
                        el(InstOp::Const(0.5)),
                        el(InstOp::Binary(BinaryOp::Mul, 3, 4)),
                        row(InstOp::Reduce(ReduceOp::Mean, 5)),
                        row(InstOp::Unary(UnaryOp::Sqrt, 6)),
                    ],
                    &[(2, 3), (7, 4)],
                ),
                vec![whole.clone(), col.clone()],
            ),
            (
                // A sum over an axis of one (a copy, rows of one element): row values only.
                "axis of one",
                fused(
                    &[1, r, c],
                    &[0],
                    vec![ld(0, DType::F32, 0, &[(r * c) as i64, c as i64, 1])],
                    vec![
                        row(InstOp::Load(0)),
                        row(InstOp::Const(1.0)),
                        row(InstOp::Binary(BinaryOp::Mul, 0, 1)),
                        row(InstOp::Unary(UnaryOp::Exp, 2)),
                    ],
                    &[(2, 3), (3, 4)],
                ),
                vec![whole.clone(), whole.clone()],
            ),
        ]
    };
    let run_with = |off: bool, p: &Plan, inputs: &[HostTensor]| {
        columns::OFF.store(off, Relaxed);
        let before = columns::GROUPS.load(Relaxed);
        let got = run(p, inputs, &[]).expect("runs");
        columns::OFF.store(false, Relaxed);
        (got, columns::GROUPS.load(Relaxed) - before)
    };
    let mut wide_groups = 0;
    for r in [1u64, 31, 257, 1025, 20000] {
        for c in [1u64, 15, 17, 100, 130] {
            let (ru, cu) = (r as usize, c as usize);
            let mut x = values(ru * cu, (r * 7 + c) as u32);
            // Column 0: ±0 only; column 1 (where there is one): an infinity; the last
            // column: a NaN. Some large values, so the order of additions shows.
            for i in 0..ru {
                x[i * cu] = if i % 3 == 0 { -0.0 } else { 0.0 };
                x[i * cu + cu - 1] *= 1e4 * (i % 7) as f32;
            }
            if cu > 2 {
                x[(ru / 2) * cu + 1] = f32::INFINITY;
                x[(ru - 1) * cu + cu - 1] = f32::NAN;
            }
            let bias = values(cu, 3);
            let scale = values(ru, 4);
            let inputs = [
                HostTensor::from_f32(DType::F32, vec![r, c], &x),
                HostTensor::from_f32(DType::F32, vec![c], &bias),
                HostTensor::from_f32(DType::F32, vec![r, 1], &scale),
            ];
            for (name, k, outs) in kernels(r, c) {
                let mut buffers = vec![
                    leaf("x", BufferKind::Input { index: 0 }, DType::F32, &[r, c]),
                    leaf("bias", BufferKind::Input { index: 1 }, DType::F32, &[c]),
                    leaf("scale", BufferKind::Input { index: 2 }, DType::F32, &[r, 1]),
                ];
                let mut offset = 0;
                let mut plan_outs = Vec::new();
                for (j, shape) in outs.iter().enumerate() {
                    let b = arena(&format!("o{j}"), DType::F32, shape, offset);
                    offset += b.bytes.div_ceil(64) * 64;
                    buffers.push(b);
                    let id = 3 + j as u32;
                    plan_outs.push(out(
                        &format!("o{j}"),
                        id,
                        DType::F32,
                        shape,
                        0,
                        &contiguous(shape),
                    ));
                }
                let p = plan(vec![k], buffers, &[0, 1, 2], plan_outs);
                let (rows, _) = run_with(true, &p, &inputs);
                let (wide, groups) = run_with(false, &p, &inputs);
                if (r > 1 || name == "axis of one") && c >= columns::NARROW as u64 {
                    assert!(groups > 0, "{name} {r}×{c}: not run wide");
                }
                wide_groups += groups;
                for (j, (a, b)) in rows.iter().zip(&wide).enumerate() {
                    assert!(
                        a.bytes == b.bytes,
                        "{name} {r}×{c}: output {j} differs: row path {:?}…, wide {:?}…",
                        &a.to_f32()[..cu.min(20)],
                        &b.to_f32()[..cu.min(20)]
                    );
                }
                if name == "sum" || name == "mean" {
                    let block = if ru <= 16 * 1024 { ru } else { 1024 };
                    let want: Vec<u32> = (0..cu)
                        .map(|j| {
                            let column: Vec<f32> = (0..ru).map(|i| x[i * cu + j]).collect();
                            let mut s = super::math::KahanSum::default();
                            for b in column.chunks(block) {
                                s.add(super::math::block_sum(b));
                            }
                            let v = s.value();
                            if name == "mean" { v / r as f32 } else { v }.to_bits()
                        })
                        .collect();
                    let got: Vec<u32> = wide[0].to_f32().iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{name} {r}×{c}: not block_sum's bits");
                }
            }
        }
    }
    assert!(wide_groups > 0);
}

/// `math::LaneLeafSums` fed a leaf in chunks of 32 (the last one shorter), in every tier
/// this CPU runs, gives for each of its lanes the bits of `math::block_sum` over that lane's
/// column alone, for every leaf length (0 to 256), 16 and 64 lanes.
#[test]
fn lane_leaf_sums_are_block_sum_per_lane_in_every_tier() {
    use super::math::{self, Tier};
    fn check<const W: usize>() {
        for n in 0..=256usize {
            let mut xs = values(n * W, n as u32 + W as u32);
            // Magnitudes far apart, so any other order of additions shows.
            for (i, x) in xs.iter_mut().enumerate() {
                *x *= [1.0, 1e-3, 1e4, 3e7][(i * i + i / 3) % 4];
            }
            let want: Vec<u32> = (0..W)
                .map(|w| {
                    let column: Vec<f32> = (0..n).map(|i| xs[i * W + w]).collect();
                    math::block_sum(&column).to_bits()
                })
                .collect();
            for tier in Tier::available() {
                let mut sums = Box::<math::LaneLeafSums<W>>::default();
                // Dirty state first: `reset` must clear all of it.
                sums.feed_in(tier, &vec![1.0; 7 * W]);
                sums.reset();
                for chunk in xs.chunks(32 * W) {
                    sums.feed_in(tier, chunk);
                }
                let got: Vec<u32> = sums.finish().iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{W} lanes, {n} elements, {tier:?}");
            }
        }
    }
    check::<64>();
    check::<16>();
}

/// `out = w - exp(z)·sum(w)` with `w = where(iota ⋈ label, g, 0)` per row (`⋈` one of
/// `==`, `!=`), the backward of a `gather` of labels: in one kernel (`cpu::typed` takes the
/// where as a select without its index and condition blocks, and folds the sums of 16 rows
/// side by side) and with the condition stored by a kernel before and loaded (the plain
/// `where`), run on as many threads as rows (one row a group: each sum folded alone). The
/// two give the same bits for labels in range, negative and past the row, an `arange` of
/// any offset and step (one that wraps along the row too), rows of one, three and several
/// blocks, 37 rows (two groups of 16 and one of 5), and integer branches.
#[test]
fn a_one_hot_select_and_sums_folded_side_by_side_give_the_plain_where_bits() {
    use tc_compiler::ir::CmpOp;
    let typed = |dtype: DType, op: InstOp| Inst { dtype, ..el(op) };
    let pool = |threads: usize, p: &Plan, inputs: &[HostTensor]| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| run(p, inputs, &[]).expect("runs"))
    };
    let rows = 37u64;
    for (cols, offset, step, cmp, int) in [
        (7u64, 0i64, 1i64, CmpOp::Eq, false),
        (2500, 0, 1, CmpOp::Eq, false),
        (2500, 5, 2, CmpOp::Ne, false),
        (1100, 3000, -1, CmpOp::Eq, false),
        (300, i64::MAX - 100, 1, CmpOp::Eq, false),
        (300, 0, 1, CmpOp::Eq, true),
        (1030, -7, 3, CmpOp::Ne, true),
    ] {
        let (r, c) = (rows as usize, cols as usize);
        // Labels that hit in every block, miss both ways, and hit the wrapped values.
        let labels: Vec<i64> = (0..r)
            .map(|i| match i % 6 {
                0 => offset.wrapping_add(step.wrapping_mul((i * 131 % c) as i64)),
                1 => -1 - i as i64,
                2 => offset.wrapping_add(step.wrapping_mul(c as i64 + i as i64)),
                3 => offset.wrapping_add(step.wrapping_mul((c - 1) as i64)),
                4 => i64::MIN + 99 + i as i64,
                _ => offset,
            })
            .collect();
        let vt = if int { DType::I64 } else { DType::F32 };
        let g: Vec<f32> = values(r, 3).iter().map(|x| x.round() * 3.0 + 0.5).collect();
        let z = values(r * c, 4);
        // The value kernel's body after its condition (inst `cond`): where, sum, and the
        // rest; loads l0 labels, l1 g, l2 z (and l3 the stored condition).
        let tail = |cond: usize| {
            let n = cond + 1;
            let mut body = vec![
                Inst {
                    level: Level::Row,
                    ..typed(vt, InstOp::Load(1))
                },
                typed(vt, InstOp::Const(0.0)),
                typed(vt, InstOp::Where(cond, n, n + 1)),
                Inst {
                    level: Level::Row,
                    ..typed(vt, InstOp::Reduce(ReduceOp::Sum, n + 2))
                },
            ];
            if !int {
                body.extend([
                    el(InstOp::Load(2)),
                    el(InstOp::Unary(UnaryOp::Exp, n + 4)),
                    el(InstOp::Binary(BinaryOp::Mul, n + 5, n + 3)),
                    el(InstOp::Binary(BinaryOp::Sub, n + 2, n + 6)),
                ]);
            }
            let last = cond + body.len();
            (body, vec![(last, 3u32), (n + 3, 4u32)])
        };
        let cond_insts = vec![
            Inst {
                level: Level::Row,
                ..typed(DType::I64, InstOp::Load(0))
            },
            typed(
                DType::I64,
                InstOp::Index {
                    offset,
                    strides: vec![0, step],
                },
            ),
            typed(DType::Bool, InstOp::Binary(BinaryOp::Cmp(cmp), 1, 0)),
        ];
        let mut loads = vec![
            ld(0, DType::I64, 0, &[1, 0]),
            ld(1, vt, 0, &[1, 0]),
            ld(2, DType::F32, 0, &[cols as i64, 1]),
        ];
        let (mut body, stores) = tail(2);
        body.splice(0..0, cond_insts.clone());
        let one = fused(&[rows, cols], &[1], loads.clone(), body, &stores);
        // The plain path: the condition stored, then loaded.
        let first = fused(
            &[rows, cols],
            &[],
            vec![ld(0, DType::I64, 0, &[1, 0])],
            cond_insts,
            &[(2, 5)],
        );
        loads.push(ld(5, DType::Bool, 0, &[cols as i64, 1]));
        let (mut body, stores) = tail(0);
        body.insert(0, typed(DType::Bool, InstOp::Load(3)));
        let second = fused(&[rows, cols], &[1], loads, body, &stores);
        let n = rows * cols;
        let buffers = vec![
            leaf(
                "labels",
                BufferKind::Input { index: 0 },
                DType::I64,
                &[rows],
            ),
            leaf("g", BufferKind::Input { index: 1 }, vt, &[rows]),
            leaf(
                "z",
                BufferKind::Input { index: 2 },
                DType::F32,
                &[rows, cols],
            ),
            arena("out", vt, &[rows, cols], 0),
            arena("sum", vt, &[rows], (n * 8).next_multiple_of(64)),
            arena(
                "cond",
                DType::Bool,
                &[rows, cols],
                (n * 8).next_multiple_of(64) + 512,
            ),
        ];
        let outputs = vec![
            out("out", 3, vt, &[rows, cols], 0, &[cols as i64, 1]),
            out("sum", 4, vt, &[rows], 0, &[1]),
        ];
        let inputs = [
            HostTensor::from_i64(DType::I64, vec![rows], &labels),
            if int {
                let g: Vec<i64> = g.iter().map(|&x| x as i64).collect();
                HostTensor::from_i64(vt, vec![rows], &g)
            } else {
                HostTensor::from_f32(vt, vec![rows], &g)
            },
            HostTensor::from_f32(DType::F32, vec![rows, cols], &z),
        ];
        let fused_plan = plan(vec![one], buffers.clone(), &[0, 1, 2], outputs.clone());
        let plain_plan = plan(vec![first, second], buffers, &[0, 1, 2], outputs);
        let got = pool(1, &fused_plan, &inputs);
        let want = pool(rows as usize, &plain_plan, &inputs);
        let case = format!("{cols} columns, arange {offset} + {step}·j, {cmp:?}, int {int}");
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a.bytes == b.bytes, "{case}: output {k} differs");
        }
        // Not vacuous: some rows' sums are not zero, some are.
        let sums = want[1].to_f32();
        assert!(sums.iter().any(|&s| s != 0.0), "{case}: {sums:?}");
        if cmp == CmpOp::Eq {
            assert!(sums.contains(&0.0), "{case}: {sums:?}");
        }
    }
}

#[test]
fn kahan_lanes_are_kahan_sums_per_lane_in_every_tier() {
    use super::math::{self, KahanSum, Tier};
    fn check<const W: usize>() {
        for n in [0usize, 1, 2, 7, 300] {
            let mut xs = values(n * W, n as u32 + 7 * W as u32);
            // Magnitudes far apart (so the carry matters), infinities and NaN (so the
            // carry is dropped), signed zeros.
            for (i, x) in xs.iter_mut().enumerate() {
                *x *= [1.0, 1e-3, 1e4, 3e7, 1e-30][(i * i + i / 3) % 5];
                match i % 97 {
                    13 => *x = f32::INFINITY,
                    41 if i % 3 == 0 => *x = f32::NAN,
                    50 => *x = -0.0,
                    _ => {}
                }
            }
            let start: [KahanSum; W] = std::array::from_fn(|w| {
                let mut k = KahanSum::default();
                k.add(w as f32 * 0.1);
                k.add(1e-9 * w as f32);
                k
            });
            let want: Vec<(u32, u32)> = (0..W)
                .map(|w| {
                    let mut k = start[w];
                    (0..n).for_each(|i| k.add(xs[i * W + w]));
                    // The carry shows in the next addition.
                    let v = k.value().to_bits();
                    k.add(1.0);
                    (v, k.value().to_bits())
                })
                .collect();
            for tier in Tier::available() {
                let mut sums = start;
                math::kahan_lanes_in(tier, &xs, &mut sums);
                let got: Vec<(u32, u32)> = sums
                    .iter()
                    .map(|k| {
                        let mut k = *k;
                        let v = k.value().to_bits();
                        k.add(1.0);
                        (v, k.value().to_bits())
                    })
                    .collect();
                assert_eq!(got, want, "{W} lanes, {n} elements, {tier:?}");
            }
        }
    }
    check::<16>();
    check::<3>();
}

#[test]
fn outputs_computed_in_their_vectors_have_the_bits_of_outputs_copied_out() {
    // A run on a kept arena computes the gradients (and train_mlp's updated weights, each
    // in place of its gradient) in their vectors (`outputs`), a first run copies or moves
    // them out of the arena: the same bits either way, run after run. Fails when an output's
    // values do not reach its vector (its buffer left in the arena) or when another buffer
    // shares the vector's bytes.
    type Case<'a> = (&'a str, &'a [(&'a str, u64)], usize);
    let cases: [Case; 2] = [
        (
            include_str!("../../../examples/train_block.tx"),
            &[
                ("B", 1),
                ("S", 128),
                ("D", 256),
                ("H", 4),
                ("Dh", 64),
                ("F", 512),
            ],
            6,
        ),
        (
            include_str!("../../../examples/train_mlp.tx"),
            &[("B", 256), ("D", 128), ("H", 512), ("C", 128)],
            2,
        ),
    ];
    for (source, dims, at_least) in cases {
        let options = tc_compiler::CompileOptions {
            dims: dims.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            plan: Default::default(),
        };
        let program = tc_compiler::compile(source, &options).expect("compiles");
        assert!(program.plan.arena_bytes >= 1 << 20, "a mapped arena, kept");
        let (inputs, params) =
            crate::data::load_leaves(&program.checked, &[], None, 0).expect("data");
        let written = || super::outputs::WRITTEN_OUT.with(|n| n.get());
        let first = run(&program.plan, &inputs, &params).expect("runs");
        // The arena is kept process-wide: another test's run may take it between two of
        // these, so run until a run has found it (almost always the second).
        let mut found = false;
        for _ in 0..20 {
            let before = written();
            let again = run(&program.plan, &inputs, &params).expect("runs");
            for (o, (a, b)) in program.plan.outputs.iter().zip(first.iter().zip(&again)) {
                assert!(a.bytes == b.bytes, "{} differs between runs", o.name);
            }
            if written() >= before + at_least {
                found = true;
                break;
            }
        }
        assert!(found, "no run computed {at_least} outputs in their vectors");
    }
}
