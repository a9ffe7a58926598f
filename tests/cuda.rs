//! CUDA: the generated CUDA C (snapshots), compiled by the real NVRTC for sm_80 and sm_90
//! (no GPU needed), and on a GPU the CUDA executor against the CPU executor.
//!
//! Without NVRTC the compile tests print "skipped: NVRTC not found" (they fail instead when
//! `TC_REQUIRE_NVRTC=1`); without a GPU the GPU tests skip (fail when `TC_REQUIRE_CUDA=1`).

use tc_compiler::codegen::{emit_kernels, emit_program, translation_unit, Launch};
use tc_compiler::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use tc_compiler::schedule::*;
use tc_runtime::cuda;

// ------------------------------------------------------------------ NVRTC setup

/// Finds NVRTC: the loader path, `$TC_NVRTC_LIB`, /usr/local/cuda, or the pip wheel
/// `nvidia-cuda-nvrtc` (located through `python3`). Prints the skip line when absent and
/// panics instead when `TC_REQUIRE_NVRTC=1`.
fn nvrtc_ready() -> bool {
    if cuda::nvrtc_available().is_ok() {
        return true;
    }
    for py in ["python3", "python"] {
        let out = std::process::Command::new(py)
            .args([
                "-c",
                "import nvidia, os; print('\\n'.join(nvidia.__path__))",
            ])
            .output();
        let Ok(out) = out else { continue };
        for dir in String::from_utf8_lossy(&out.stdout).lines() {
            for sub in [
                "cu13/lib/libnvrtc.so.13",
                "cuda_nvrtc/lib/libnvrtc.so.12",
                "cu12/lib/libnvrtc.so.12",
            ] {
                let p = std::path::Path::new(dir.trim()).join(sub);
                if p.is_file() && cuda::preload_nvrtc(&p).is_ok() && cuda::nvrtc_available().is_ok()
                {
                    return true;
                }
            }
        }
    }
    if std::env::var("TC_REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!(
            "TC_REQUIRE_NVRTC=1 but NVRTC was not found: {:?}",
            cuda::nvrtc_available().err()
        );
    }
    println!("skipped: NVRTC not found");
    false
}

/// Compiles every kernel of `plan` as one translation unit for each arch; panics with the
/// NVRTC log on failure.
fn check_compiles(label: &str, plan: &Plan) {
    let kernels = emit_kernels(plan);
    assert_eq!(
        kernels.len(),
        plan.kernels.len(),
        "{label}: one CUDA kernel per plan kernel"
    );
    let unit = translation_unit(&kernels);
    for arch in ["sm_80", "sm_90"] {
        match cuda::compile(&unit, arch, &[]) {
            Ok(c) => assert!(!c.cubin.is_empty(), "{label}: empty CUBIN for {arch}"),
            Err(e) => panic!("{label}: {e}"),
        }
    }
}

// ------------------------------------------------------------------ hand-built plans

/// Builds plans by hand: buffers packed one after another in the arena.
struct Builder {
    plan: Plan,
}

fn contiguous(shape: &[u64]) -> Vec<i64> {
    tc_compiler::ir::types::contiguous_strides(shape)
}

impl Builder {
    fn new() -> Builder {
        Builder {
            plan: Plan {
                kernels: Vec::new(),
                buffers: Vec::new(),
                arena_bytes: 0,
                inputs: Vec::new(),
                params: Vec::new(),
                outputs: Vec::new(),
                options: PlanOptions::default(),
            },
        }
    }

    fn input(&mut self, name: &str, dtype: DType, shape: &[u64]) -> BufferId {
        let index = self.plan.inputs.len();
        let id = self.push(name, BufferKind::Input { index }, dtype, shape);
        self.plan.inputs.push(id);
        id
    }

    fn arena(&mut self, name: &str, dtype: DType, shape: &[u64]) -> BufferId {
        self.push(name, BufferKind::Arena, dtype, shape)
    }

    fn push(&mut self, name: &str, kind: BufferKind, dtype: DType, shape: &[u64]) -> BufferId {
        let bytes = shape.iter().product::<u64>() * dtype.size();
        let offset = if kind == BufferKind::Arena {
            let o = self.plan.arena_bytes.div_ceil(16) * 16;
            self.plan.arena_bytes = o + bytes;
            o
        } else {
            0
        };
        let id = BufferId(self.plan.buffers.len() as u32);
        self.plan.buffers.push(Buffer {
            name: name.into(),
            kind,
            dtype,
            shape: shape.to_vec(),
            bytes,
            offset,
            first_step: 0,
            last_step: 0,
            in_place_of: None,
            node: None,
        });
        id
    }

    fn output(&mut self, name: &str, buffer: BufferId) {
        let b = self.plan.buffer(buffer).clone();
        self.plan.outputs.push(PlanOutput {
            name: name.into(),
            buffer,
            dtype: b.dtype,
            strides: contiguous(&b.shape),
            shape: b.shape,
            offset: 0,
        });
    }

    fn kernel(&mut self, kind: KernelKind, ops: &[&str], lines: &[u32]) {
        let name = format!("k{}", self.plan.kernels.len());
        self.plan.kernels.push(Kernel {
            name,
            kind,
            ops: ops.iter().map(|s| s.to_string()).collect(),
            lines: lines.to_vec(),
        });
    }

    fn finish(mut self) -> Plan {
        let last = self.plan.kernels.len().saturating_sub(1);
        for b in &mut self.plan.buffers {
            b.last_step = last;
        }
        self.plan
    }
}

fn load(buffer: BufferId, dtype: DType, offset: i64, strides: Vec<i64>) -> Load {
    Load {
        buffer,
        dtype,
        offset,
        strides,
    }
}

fn el(op: InstOp, dtype: DType) -> Inst {
    Inst {
        op,
        dtype,
        level: Level::Element,
        node: None,
    }
}

fn row(op: InstOp, dtype: DType) -> Inst {
    Inst {
        op,
        dtype,
        level: Level::Row,
        node: None,
    }
}

/// `y = gelu(x * 1.5 + bias) ` over [rows, cols] with a broadcast bias, in `dtype`.
fn pointwise_plan(dtype: DType, rows: u64, cols: u64) -> Plan {
    let mut b = Builder::new();
    let x = b.input("x", dtype, &[rows, cols]);
    let bias = b.input("bias", dtype, &[cols]);
    let y = b.arena("y", dtype, &[rows, cols]);
    let f = FusedKernel {
        domain: vec![rows, cols],
        reduce_axes: vec![],
        loads: vec![
            load(x, dtype, 0, vec![cols as i64, 1]),
            load(bias, dtype, 0, vec![0, 1]),
        ],
        body: vec![
            el(InstOp::Load(0), dtype),
            el(InstOp::Const(1.5), dtype),
            el(InstOp::Binary(BinaryOp::Mul, 0, 1), dtype),
            el(InstOp::Load(1), dtype),
            el(InstOp::Binary(BinaryOp::Add, 2, 3), dtype),
            el(InstOp::Unary(UnaryOp::Gelu, 4), dtype),
            el(InstOp::Cast(5), dtype),
        ],
        stores: vec![Store { inst: 6, buffer: y }],
    };
    b.kernel(KernelKind::Fused(f), &["mul", "add", "gelu"], &[3, 4]);
    b.output("y", y);
    b.finish()
}

/// softmax over the last axis of [rows, cols] (max, exp, sum, div), in `dtype`.
fn softmax_plan(dtype: DType, rows: u64, cols: u64) -> Plan {
    let mut b = Builder::new();
    let x = b.input("x", dtype, &[rows, cols]);
    let y = b.arena("y", dtype, &[rows, cols]);
    let f = FusedKernel {
        domain: vec![rows, cols],
        reduce_axes: vec![1],
        loads: vec![load(x, dtype, 0, vec![cols as i64, 1])],
        body: vec![
            el(InstOp::Load(0), dtype),
            row(InstOp::Reduce(ReduceOp::Max, 0), DType::F32),
            el(InstOp::Binary(BinaryOp::Sub, 0, 1), DType::F32),
            el(InstOp::Unary(UnaryOp::Exp, 2), DType::F32),
            row(InstOp::Reduce(ReduceOp::Sum, 3), DType::F32),
            el(InstOp::Binary(BinaryOp::Div, 3, 4), DType::F32),
            el(InstOp::Cast(5), dtype),
        ],
        stores: vec![Store { inst: 6, buffer: y }],
    };
    b.kernel(KernelKind::Fused(f), &["softmax"], &[2]);
    b.output("y", y);
    b.finish()
}

/// `total = mean(x, axis=0)` on [rows, cols] and `s = sum(x)` (reduce-all), two kernels:
/// the non-last-axis and the reduce-everything cases.
fn reductions_plan() -> Plan {
    let (r, c) = (300u64, 70u64);
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, &[r, c]);
    let t = b.arena("total", DType::F32, &[c]);
    let s = b.arena("s", DType::F32, &[]);
    let col = FusedKernel {
        domain: vec![r, c],
        reduce_axes: vec![0],
        loads: vec![load(x, DType::F32, 0, vec![c as i64, 1])],
        body: vec![
            el(InstOp::Load(0), DType::F32),
            row(InstOp::Reduce(ReduceOp::Mean, 0), DType::F32),
        ],
        stores: vec![Store { inst: 1, buffer: t }],
    };
    b.kernel(KernelKind::Fused(col), &["mean"], &[2]);
    let all = FusedKernel {
        domain: vec![r, c],
        reduce_axes: vec![0, 1],
        loads: vec![load(x, DType::F32, 0, vec![c as i64, 1])],
        body: vec![
            el(InstOp::Load(0), DType::F32),
            el(InstOp::Unary(UnaryOp::Square, 0), DType::F32),
            row(InstOp::Reduce(ReduceOp::Sum, 1), DType::F32),
            row(InstOp::Unary(UnaryOp::Sqrt, 2), DType::F32),
        ],
        stores: vec![Store { inst: 3, buffer: s }],
    };
    b.kernel(KernelKind::Fused(all), &["square", "sum", "sqrt"], &[3]);
    b.output("total", t);
    b.output("s", s);
    b.finish()
}

/// Layernorm over the last axis with an in-place residual add, bf16 storage.
fn layernorm_plan(rows: u64, cols: u64) -> Plan {
    let d = DType::BF16;
    let mut b = Builder::new();
    let x = b.input("x", d, &[rows, cols]);
    let g = b.input("g", DType::F32, &[cols]);
    let y = b.arena("y", d, &[rows, cols]);
    let f = FusedKernel {
        domain: vec![rows, cols],
        reduce_axes: vec![1],
        loads: vec![
            load(x, d, 0, vec![cols as i64, 1]),
            load(g, DType::F32, 0, vec![0, 1]),
        ],
        body: vec![
            el(InstOp::Load(0), d),
            row(InstOp::Reduce(ReduceOp::Mean, 0), DType::F32),
            el(InstOp::Binary(BinaryOp::Sub, 0, 1), DType::F32),
            el(InstOp::Binary(BinaryOp::Mul, 2, 2), DType::F32),
            row(InstOp::Reduce(ReduceOp::Mean, 3), DType::F32),
            row(InstOp::Const(1e-5), DType::F32),
            row(InstOp::Binary(BinaryOp::Add, 4, 5), DType::F32),
            row(InstOp::Unary(UnaryOp::Rsqrt, 6), DType::F32),
            el(InstOp::Binary(BinaryOp::Mul, 2, 7), DType::F32),
            el(InstOp::Load(1), DType::F32),
            el(InstOp::Binary(BinaryOp::Mul, 8, 9), DType::F32),
            el(InstOp::Cast(10), d),
        ],
        stores: vec![Store {
            inst: 11,
            buffer: y,
        }],
    };
    b.kernel(KernelKind::Fused(f), &["layernorm", "mul"], &[5]);
    b.output("y", y);
    b.finish()
}

/// Batched matmuls: one cuBLAS-compatible (b transposed), one that needs the fallback
/// kernel (an expanded operand with stride 0 on a matrix axis).
fn matmul_plan(dtype: DType) -> Plan {
    let (bt, m, k, n) = (3u64, 33u64, 40u64, 17u64);
    let mut b = Builder::new();
    let a = b.input("a", dtype, &[bt, m, k]);
    let w = b.input("w", dtype, &[bt, n, k]);
    let v = b.input("v", dtype, &[k]);
    let out = b.arena("out", dtype, &[bt, m, n]);
    let out2 = b.arena("out2", DType::F32, &[bt, m, n]);
    let ws = b.push("k0.workspace", BufferKind::Workspace, DType::F32, &[1024]);
    b.kernel(
        KernelKind::MatMul(MatMulKernel {
            batch: vec![bt],
            m,
            n,
            k,
            a: MatOperand {
                buffer: a,
                dtype,
                offset: 0,
                strides: vec![(m * k) as i64, k as i64, 1],
            },
            b: MatOperand {
                buffer: w,
                dtype,
                offset: 0,
                strides: vec![(n * k) as i64, 1, k as i64],
            },
            out,
            out_dtype: dtype,
            workspace: Some(ws),
        }),
        &["matmul"],
        &[4],
    );
    b.kernel(
        KernelKind::MatMul(MatMulKernel {
            batch: vec![bt],
            m,
            n,
            k,
            a: MatOperand {
                buffer: a,
                dtype,
                offset: 0,
                strides: vec![(m * k) as i64, k as i64, 1],
            },
            b: MatOperand {
                buffer: v,
                dtype,
                offset: 0,
                strides: vec![0, 1, 0],
            },
            out: out2,
            out_dtype: DType::F32,
            workspace: None,
        }),
        &["matmul"],
        &[5],
    );
    b.output("out", out);
    b.output("out2", out2);
    b.finish()
}

fn hand_built() -> Vec<(String, Plan)> {
    let mut v = Vec::new();
    for d in DType::ALL {
        v.push((format!("pointwise_{d}"), pointwise_plan(d, 64, 1024)));
        v.push((format!("pointwise_odd_{d}"), pointwise_plan(d, 7, 13)));
        v.push((format!("softmax_warp_{d}"), softmax_plan(d, 100, 300)));
        v.push((format!("softmax_block_{d}"), softmax_plan(d, 16, 4096)));
        v.push((format!("softmax_long_{d}"), softmax_plan(d, 2, 100_000)));
        v.push((format!("matmul_{d}"), matmul_plan(d)));
    }
    v.push(("reductions".into(), reductions_plan()));
    v.push(("layernorm".into(), layernorm_plan(8, 2048)));
    v.push((
        "pointwise_huge".into(),
        pointwise_plan(DType::F16, 1 << 16, 1 << 16),
    ));
    v
}

#[test]
fn hand_built_kernels_compile_with_nvrtc() {
    if !nvrtc_ready() {
        return;
    }
    for (label, plan) in hand_built() {
        check_compiles(&label, &plan);
    }
}

#[test]
fn hand_built_kernels_snapshot() {
    insta::assert_snapshot!(
        "hand_pointwise_f32",
        emit_program(&pointwise_plan(DType::F32, 64, 1024))
    );
    insta::assert_snapshot!(
        "hand_pointwise_f16_odd",
        emit_program(&pointwise_plan(DType::F16, 7, 13))
    );
    insta::assert_snapshot!(
        "hand_softmax_block",
        emit_program(&softmax_plan(DType::F32, 16, 4096))
    );
    insta::assert_snapshot!(
        "hand_softmax_warp_bf16",
        emit_program(&softmax_plan(DType::BF16, 100, 300))
    );
    insta::assert_snapshot!("hand_reductions", emit_program(&reductions_plan()));
    insta::assert_snapshot!("hand_layernorm", emit_program(&layernorm_plan(8, 2048)));
    insta::assert_snapshot!("hand_matmul_bf16", emit_program(&matmul_plan(DType::BF16)));
}

#[test]
fn launch_shapes_follow_the_kernel_kind() {
    // Vector path: 64×1024 f32 elements in float4s → 16384 vectors → 64 blocks of 256.
    let k = &emit_kernels(&pointwise_plan(DType::F32, 64, 1024))[0];
    assert_eq!(
        k.launch,
        Launch::Grid {
            grid: [64, 1, 1],
            block: [256, 1, 1],
            shared_bytes: 0
        }
    );
    assert!(
        k.source.contains("float4"),
        "f32 pointwise kernel should use float4:\n{}",
        k.source
    );
    assert!(
        k.source.contains("for (int vi"),
        "32-bit indices expected:\n{}",
        k.source
    );
    // 2^32 elements need 64-bit indices.
    let huge = &emit_kernels(&pointwise_plan(DType::F16, 1 << 16, 1 << 16))[0];
    assert!(
        huge.source.contains("long long vi"),
        "64-bit indices expected:\n{}",
        huge.source
    );
    // A 4096-wide row: one block per row, kept in registers.
    let sm = &emit_kernels(&softmax_plan(DType::F32, 16, 4096))[0];
    assert_eq!(
        sm.launch,
        Launch::Grid {
            grid: [16, 1, 1],
            block: [512, 1, 1],
            shared_bytes: 0
        }
    );
    assert!(
        sm.source.contains("float c0[8]"),
        "row should be cached:\n{}",
        sm.source
    );
    // A 100000-wide row does not fit: re-read per pass.
    let long = &emit_kernels(&softmax_plan(DType::F32, 2, 100_000))[0];
    assert!(
        !long.source.contains("float c0["),
        "long row must not be cached:\n{}",
        long.source
    );
    // cuBLAS for the transposed operand, fallback kernel for the stride-0 one.
    let mm = emit_kernels(&matmul_plan(DType::F16));
    match &mm[0].launch {
        Launch::Cublas(call) => {
            // cuBLAS's A is w (n×k row-major read as [k, n] with strides [1, k]) → transposed.
            assert!(call.trans_a && !call.trans_b);
            assert_eq!((call.m, call.n, call.k), (17, 33, 40));
            assert_eq!((call.lda, call.ldb, call.ldc), (40, 40, 17));
            assert_eq!(
                (call.stride_a, call.stride_b, call.stride_c),
                (17 * 40, 33 * 40, 33 * 17)
            );
            assert_eq!(call.batch_count, 3);
        }
        other => panic!("expected cuBLAS, got {other:?}"),
    }
    assert!(
        matches!(mm[1].launch, Launch::Grid { .. }) && mm[1].source.contains("__shared__ float ta")
    );
}
