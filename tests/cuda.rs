//! CUDA: the generated CUDA C (snapshots), compiled by the real NVRTC for sm_80 and sm_90
//! (no GPU needed), and on a GPU the CUDA executor against the CPU executor.
//!
//! Without NVRTC the compile tests are reported as ignored, "needs NVRTC" (`tests/build.rs`
//! decides when the tests are built); they run, and fail, when `TC_REQUIRE_NVRTC=1` or with
//! `--include-ignored`. The GPU tests (`gpu_*`) are `#[ignore]`d so that a machine without
//! a GPU reports them as ignored, never as passed; `scripts/gpu.sh` runs them with
//! `--include-ignored`, and they fail when `TC_REQUIRE_CUDA=1` and no GPU answers.

use tc_compiler::codegen::{emit_kernels, emit_program, translation_unit, Launch};
use tc_compiler::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use tc_compiler::schedule::*;
use tc_runtime::cuda;

#[path = "cuda/emu.rs"]
mod emu;

#[path = "cuda/static_figures.rs"]
mod static_figures;

#[path = "cuda/sass.rs"]
mod sass;

#[path = "cuda/index_add.rs"]
mod index_add;

// ------------------------------------------------------------------ NVRTC setup

/// Loads NVRTC: the loader path, `$TC_NVRTC_LIB`, /usr/local/cuda, or the pip wheel
/// `nvidia-cuda-nvrtc` (located through `python3`). Whether it was found.
fn load_nvrtc() -> bool {
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
    false
}

/// Loads NVRTC for a test that needs it, or fails the test. Such a test runs only where
/// `tests/build.rs` found NVRTC, under `TC_REQUIRE_NVRTC=1`, or when asked to with
/// `--include-ignored`; elsewhere the harness reports it as ignored.
fn require_nvrtc() {
    if !load_nvrtc() {
        panic!("NVRTC was not found: {:?}", cuda::nvrtc_available().err());
    }
}

/// Compiles every kernel of `plan` as one translation unit for each arch; panics with the
/// NVRTC log on failure.
fn check_compiles(label: &str, plan: &Plan) -> Vec<f64> {
    let kernels = emit_kernels(plan).expect("the plan lowers");
    assert_eq!(
        kernels.len(),
        plan.kernels.len(),
        "{label}: one CUDA kernel per plan kernel"
    );
    let unit = translation_unit(&kernels);
    let mut seconds = Vec::new();
    for arch in ["sm_80", "sm_90"] {
        match cuda::compile(&unit, arch, cuda::Maths::Exact, &[]) {
            Ok(c) => {
                assert!(!c.cubin.is_empty(), "{label}: empty CUBIN for {arch}");
                seconds.push(c.compile_seconds);
            }
            Err(e) => panic!("{label}: {e}"),
        }
    }
    seconds
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
                // Plans for CUDA: each product's cuBLAS workspace is the 4 KiB it is given
                // (the CPU executor runs them through the gemm crate).
                options: PlanOptions {
                    target: tc_compiler::Target::Cuda {
                        matmul_workspace: 4096,
                    },
                    ..PlanOptions::default()
                },
                unfused_fallback: false,
                notes: Vec::new(),
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
        stores: vec![Store {
            inst: 6,
            buffer: y,
            region: None,
        }],
        workspace: None,
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
        stores: vec![Store {
            inst: 6,
            buffer: y,
            region: None,
        }],
        workspace: None,
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
        stores: vec![Store {
            inst: 1,
            buffer: t,
            region: None,
        }],
        workspace: None,
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
        stores: vec![Store {
            inst: 3,
            buffer: s,
            region: None,
        }],
        workspace: None,
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
            region: None,
        }],
        workspace: None,
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
            accumulate: None,
            prologue: None,
            packs_whole_b: false,
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
            accumulate: None,
            prologue: None,
            packs_whole_b: false,
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
    for d in DType::FLOATS {
        v.push((format!("pointwise_{d}"), pointwise_plan(d, 64, 1024)));
        v.push((format!("pointwise_odd_{d}"), pointwise_plan(d, 7, 13)));
        v.push((format!("softmax_warp_{d}"), softmax_plan(d, 100, 300)));
        v.push((format!("softmax_block_{d}"), softmax_plan(d, 16, 4096)));
        v.push((format!("softmax_long_{d}"), softmax_plan(d, 2, 100_000)));
        v.push((format!("matmul_{d}"), matmul_plan(d)));
    }
    v.push(("reductions".into(), reductions_plan()));
    v.push(("layernorm".into(), layernorm_plan(8, 2048)));
    // Rows too long for registers: Welford mean and variance in one read.
    v.push(("layernorm_long".into(), layernorm_plan(4, 40000)));
    v.push((
        "pointwise_huge".into(),
        pointwise_plan(DType::F16, 1 << 16, 1 << 16),
    ));
    v
}

#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn hand_built_kernels_compile_with_nvrtc() {
    require_nvrtc();
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
fn long_rows_fold_dependent_reductions_into_one_read() {
    // Rows held in registers are read once and combine max and sum across the block once
    // (one block reduction, 3 barriers, not two); layernorm's mean and variance there keep
    // two reductions (Welford's divide per element would cost more). Rows re-read from
    // memory compute max and sum (softmax) or mean and variance (layernorm) in one read.
    let short = emit_program(&softmax_plan(DType::F32, 16, 4096));
    assert!(short.contains("read once, online softmax in one reduction"));
    assert!(short.contains("tc_block_softmax(acc1, acc4, tc_smem2);"));
    assert!(!short.contains("reduction pass 2") && !short.contains("= tc_block_max(acc"));
    // ... and read 16 bytes at a time: 4096 = 2 float4s for each of 512 threads.
    assert!(short.contains("float4 r0 = *reinterpret_cast<const float4*>(b0 + base0 + j);"));
    for d in DType::FLOATS {
        let long = emit_program(&softmax_plan(d, 2, 100_000));
        assert!(long.contains("online softmax in one"), "{d}");
        assert!(
            long.contains("tc_block_softmax(acc1, acc4, tc_smem2);"),
            "{d}"
        );
        assert!(!long.contains("reduction pass 2"), "{d}");
    }
    let long = emit_program(&layernorm_plan(4, 40_000));
    assert!(long.contains("Welford mean and variance in one"));
    assert!(long.contains("tc_block_welford(tc_n1, acc1, acc4, tc_smem2);"));
    assert!(!emit_program(&layernorm_plan(8, 2048)).contains("welford(tc_n"));
    // A rounding between the steps (an f16 program) keeps the passes apart.
    let mut plan = softmax_plan(DType::F16, 2, 100_000);
    if let KernelKind::Fused(f) = &mut plan.kernels[0].kind {
        f.body.insert(3, el(InstOp::Cast(2), DType::F16));
        f.body[4].op = InstOp::Unary(UnaryOp::Exp, 3);
        f.body[5].op = InstOp::Reduce(ReduceOp::Sum, 4);
        f.body[6].op = InstOp::Binary(BinaryOp::Div, 4, 5);
        f.body[7].op = InstOp::Cast(6);
        f.stores[0].inst = 7;
    }
    let rounded = emit_program(&plan);
    assert!(rounded.contains("reduction pass 2") && !rounded.contains("online softmax"));
}

#[test]
fn launch_shapes_follow_the_kernel_kind() {
    // Vector path: 64×1024 f32 elements in float4s → 16384 vectors → 64 blocks of 256.
    let k = &emit_kernels(&pointwise_plan(DType::F32, 64, 1024)).expect("the plan lowers")[0];
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
    let huge =
        &emit_kernels(&pointwise_plan(DType::F16, 1 << 16, 1 << 16)).expect("the plan lowers")[0];
    assert!(
        huge.source.contains("long long vi"),
        "64-bit indices expected:\n{}",
        huge.source
    );
    // A 4096-wide row: one block per row, kept in registers.
    let sm = &emit_kernels(&softmax_plan(DType::F32, 16, 4096)).expect("the plan lowers")[0];
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
    let long = &emit_kernels(&softmax_plan(DType::F32, 2, 100_000)).expect("the plan lowers")[0];
    assert!(
        !long.source.contains("float c0["),
        "long row must not be cached:\n{}",
        long.source
    );
    // cuBLAS for the transposed operand, fallback kernel for the stride-0 one.
    let mm = emit_kernels(&matmul_plan(DType::F16)).expect("the plan lowers");
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

// ------------------------------------------------------------------ the examples

use tc_tests::examples;

/// Each example at small dims as planned, and with fusion and reuse off (one kernel per
/// op): (label, source, options).
fn example_variants() -> Vec<(String, String, tc_compiler::CompileOptions)> {
    let mut v = Vec::new();
    for (name, source) in examples() {
        let options = cuda_options(&small_dims(&source));
        let mut unfused = options.clone();
        unfused.plan.fuse = false;
        unfused.plan.reuse = false;
        v.push((name.clone(), source.clone(), options));
        v.push((format!("{name} --no-fuse --no-reuse"), source, unfused));
    }
    v
}

fn cuda_options(dims: &[(String, u64)]) -> tc_compiler::CompileOptions {
    tc_compiler::CompileOptions {
        dims: dims.to_vec(),
        plan: tc_compiler::codegen::cuda_plan_options(&PlanOptions::default()),
    }
}

fn compile_example(name: &str, source: &str, dims: &[(String, u64)]) -> tc_compiler::Program {
    match tc_compiler::compile(source, &cuda_options(dims)) {
        Ok(p) => p,
        Err(d) => panic!("{name}: does not compile: {d:?}"),
    }
}

#[test]
fn examples_kernels_snapshot() {
    let all = examples();
    assert!(all.len() >= 8, "expected the examples, found {}", all.len());
    for (name, source) in all {
        let program = compile_example(&name, &source, &[]);
        insta::assert_snapshot!(format!("example_{name}"), emit_program(&program.plan));
    }
}

#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn examples_kernels_compile_with_nvrtc() {
    require_nvrtc();
    // Prints the cold NVRTC time per example (docs/benchmarks.md quotes it).
    for (name, source) in examples() {
        let program = compile_example(&name, &source, &[]);
        let s = check_compiles(&name, &program.plan);
        println!(
            "nvrtc {name}: {} kernels, sm_80 {:.3} s, sm_90 {:.3} s",
            program.plan.kernels.len(),
            s[0],
            s[1]
        );
        // Fast maths (`--fast-math`): the same kernels under other options.
        let unit = translation_unit(&emit_kernels(&program.plan).expect("the plan lowers"));
        if let Err(e) = cuda::compile(&unit, "sm_90", cuda::Maths::Fast, &[]) {
            panic!("{name} --fast-math: {e}");
        }
        // Unfused: one kernel per op, the plan `tc bench` compares against.
        let mut options = cuda_options(&[]);
        options.plan.fuse = false;
        options.plan.reuse = false;
        let unfused = tc_compiler::compile(&source, &options).expect("unfused plan");
        check_compiles(&format!("{name} --no-fuse"), &unfused.plan);
    }
}

/// Every op of SPEC §3.5 (each unary arm, integer ones included, `clamp`, `leaky_relu`,
/// the `logsumexp`/`var`/`std` row kernels) in f32, f16, bf16 and i32 compiles for sm_80
/// and sm_90, fused and unfused.
#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn more_maths_kernels_compile_with_nvrtc() {
    require_nvrtc();
    for dtype in ["f32", "f16", "bf16"] {
        let source = format!(
            "dim R = 40\ndim C = 1100\ninput x : {dtype}[R, C]\ninput k : i32[R, C]\n\
             a = log1p(abs(x)) + expm1(x) + floor(x) + ceil(x) + round(x) + sign(x)\n\
             b = reciprocal(x) + tan(x) + softplus(x) + gelu_tanh(x) + leaky_relu(x, slope=0.1)\n\
             c = clamp(x, min=-1, max=2) + clamp(x, max=0.5)\n\
             i = clamp(k, min=0) + sign(k) + floor(k) + round(k)\n\
             l = logsumexp(x, axis=-1)\nv = var(x, axis=0, correction=0)\ns = std(x, axis=-1, keepdim=true)\n\
             output a, b, c, i, l, v, s\n"
        );
        for fuse in [true, false] {
            let mut options = cuda_options(&[]);
            options.plan.fuse = fuse;
            let program = tc_compiler::compile(&source, &options).expect("compiles");
            check_compiles(&format!("more maths {dtype} fuse={fuse}"), &program.plan);
        }
    }
}

/// The options of `tc run --fast-math` on CUDA.
fn fast_math() -> cuda::CudaOptions {
    cuda::CudaOptions {
        maths: cuda::Maths::Fast,
        ..Default::default()
    }
}

/// Every example (small dims) with fast maths on the GPU against the CPU executor, within
/// the same tolerance between executors: `--fast-math` moves results by a few ulps.
#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_examples_match_the_cpu_under_fast_math() {
    if !gpu_ready() {
        return;
    }
    let fast = fast_math();
    let failures: Vec<String> = examples()
        .iter()
        .filter_map(|(name, source)| {
            let options = cuda_options(&small_dims(source));
            check_cuda_against_cpu_in(&format!("{name} --fast-math"), source, &options, &fast).err()
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Split column reductions (`emu::COLUMN_REDUCTIONS`: f32, f16, bf16, integers, max and min,
/// two reduced axes, and the ones that run whole), fused and not: both launches of each
/// compile for sm_80 and sm_90.
#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn split_column_reductions_compile_with_nvrtc() {
    require_nvrtc();
    for fuse in [true, false] {
        let mut options = cuda_options(&[]);
        options.plan.fuse = fuse;
        let program = tc_compiler::compile(emu::COLUMN_REDUCTIONS, &options).expect("compiles");
        let kernels = emit_kernels(&program.plan).expect("the plan lowers");
        let folds = kernels
            .iter()
            .filter_map(|k| match &k.launch {
                Launch::Split { fold, .. } => Some(fold),
                _ => None,
            })
            .inspect(|fold| {
                assert!(
                    kernels.iter().any(|k| k
                        .source
                        .contains(&format!("__launch_bounds__(256) {fold}("))),
                    "{fold} is not in the source"
                )
            })
            .count();
        assert!(folds >= 6, "fuse={fuse}: {folds} split kernels");
        check_compiles(&format!("column reductions fuse={fuse}"), &program.plan);
    }
}

/// The fused attention kernel over every head size, dtype, prologue and operand layout of
/// `tc_tests::attention`'s programs compiles for sm_80 and sm_90.
#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn attention_programs_compile_with_nvrtc() {
    require_nvrtc();
    for (label, source) in tc_tests::attention::programs(tc_tests::attention::Sizes::Cpu, 10) {
        let program = tc_compiler::compile(&source, &cuda_options(&[])).expect("compiles");
        assert!(
            program
                .plan
                .kernels
                .iter()
                .any(|k| matches!(k.kind, KernelKind::Attention(_))),
            "{label}: not fused"
        );
        check_compiles(&label, &program.plan);
    }
}

/// The fused attention backward over the training steps of `tc_tests::attention`'s
/// programs (every head size; the f32 ones fuse) compiles for sm_80 and sm_90.
#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn attention_backward_programs_compile_with_nvrtc() {
    require_nvrtc();
    let mut fused = 0;
    for (label, source) in tc_tests::attention::programs(tc_tests::attention::Sizes::Cpu, 16) {
        let step = tc_tests::attention::training_step(&source, &["q", "k", "v"]);
        let program = tc_compiler::compile(&step, &cuda_options(&[])).expect("compiles");
        fused += usize::from(
            program
                .plan
                .kernels
                .iter()
                .any(|k| matches!(k.kind, KernelKind::AttentionBackward(_))),
        );
        check_compiles(&label, &program.plan);
    }
    assert!(fused >= 3, "only {fused} fused attention backwards");
}

/// Sibling fusion (docs/memory-planning.md §2 rule 10) makes kernels with several stores and
/// several sets of reductions: one of each code path of the generator, each a single kernel
/// loading `x` once, storing both values, and compiling with NVRTC.
#[test]
fn sibling_fused_kernels_in_every_strategy_compile() {
    let two_rows = |shape: &str, axis: i32, a: &str, b: &str| {
        format!(
            "input x : f32[{shape}]\na = {a}(x, axis={axis})\nb = {b}(x, axis={axis})\noutput a, b\n"
        )
    };
    let cases = [
        (
            "softmax pair, short rows",
            two_rows("64, 80", -1, "softmax", "log_softmax"),
            "one warp per row",
        ),
        (
            "softmax pair, long rows",
            two_rows("8, 4096", -1, "softmax", "log_softmax"),
            "one block of",
        ),
        (
            "column sums, few rows",
            two_rows("64, 8", 0, "sum", "max"),
            "each split over",
        ),
        (
            "column sums, many rows",
            two_rows("4, 262144", 0, "sum", "min"),
            "one thread per row",
        ),
        (
            "pointwise pair",
            "input x : f32[64, 1024]\na = exp(x)\nb = sin(x) * 2\noutput a, b\n".to_string(),
            "pointwise over",
        ),
    ];
    // The strategies are checked everywhere; the kernels compiled only where NVRTC is (the
    // NVRTC tests, reported as ignored elsewhere, compile these kernels' shapes too).
    let nvrtc = cfg!(not(tc_no_nvrtc));
    if nvrtc {
        require_nvrtc();
    }
    for (label, source, strategy) in cases {
        let program = compile_example(label, &source, &[]);
        let plan = &program.plan;
        assert_eq!(
            plan.kernels.len(),
            1,
            "{label}:\n{}",
            tc_compiler::plan::print(plan)
        );
        let KernelKind::Fused(f) = &plan.kernels[0].kind else {
            panic!("{label}: not a fused kernel")
        };
        assert_eq!((f.loads.len(), f.stores.len()), (1, 2), "{label}");
        let kernel = &emit_kernels(plan).expect("the plan lowers")[0];
        assert!(
            kernel.source.contains(strategy),
            "{label}: expected `{strategy}` in\n{}",
            kernel.source
        );
        if nvrtc {
            check_compiles(label, plan);
        }
    }
}

/// Small dims for running the examples: each example's `dim` lines get these values
/// (D = H·Dh keeps the transformer's reshapes valid; N = 1000 leaves a vector tail).
fn small_dims(source: &str) -> Vec<(String, u64)> {
    let table: [(&str, u64); 10] = [
        ("B", 2),
        ("S", 8),
        ("D", 8),
        ("H", 2),
        ("Dh", 4),
        ("F", 16),
        ("N", 1000),
        ("V", 24),
        ("C", 6),
        ("Hf", 2),
    ];
    let declared: Vec<String> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("dim "))
        .filter_map(|l| l.split('=').next())
        .map(|n| n.trim().to_string())
        .collect();
    table
        .iter()
        .filter(|(n, _)| declared.iter().any(|d| d == n))
        .map(|(n, v)| (n.to_string(), *v))
        .collect()
}

// ------------------------------------------------------------------ cuBLAS call semantics on the host

/// A deterministic generator of test data (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn value(&mut self) -> f64 {
        (self.below(2001) as f64 - 1000.0) / 250.0
    }
}

/// Executes a `GemmCall` exactly as cuBLAS defines it (column-major, op(A)·op(B)) over
/// host arrays indexed by buffer; returns C's buffer.
fn simulate_gemm(
    call: &tc_compiler::codegen::GemmCall,
    a: &[f64],
    b: &[f64],
    c_len: usize,
) -> Vec<f64> {
    let mut c = vec![f64::NAN; c_len];
    for off in &call.calls {
        for batch in 0..call.batch_count as i64 {
            let (ao, bo, co) = (
                call.a_offset + off[0] + batch * call.stride_a,
                call.b_offset + off[1] + batch * call.stride_b,
                off[2] + batch * call.stride_c,
            );
            for i in 0..call.m as i64 {
                for j in 0..call.n as i64 {
                    let mut acc = 0.0;
                    for l in 0..call.k as i64 {
                        let av = if call.trans_a {
                            a[(ao + l + i * call.lda as i64) as usize]
                        } else {
                            a[(ao + i + l * call.lda as i64) as usize]
                        };
                        let bv = if call.trans_b {
                            b[(bo + j + l * call.ldb as i64) as usize]
                        } else {
                            b[(bo + l + j * call.ldb as i64) as usize]
                        };
                        acc += av * bv;
                    }
                    c[(co + i + j * call.ldc as i64) as usize] = acc;
                }
            }
        }
    }
    c
}

/// `MatMulKernel` semantics straight from `schedule`'s definition.
fn reference_matmul(mm: &MatMulKernel, a: &[f64], b: &[f64]) -> Vec<f64> {
    let nb = mm.batch.len();
    let batches: u64 = mm.batch.iter().product();
    let mut out = Vec::new();
    for z in 0..batches {
        let mut rem = z;
        let mut idx = vec![0u64; nb];
        for d in (0..nb).rev() {
            idx[d] = rem % mm.batch[d];
            rem /= mm.batch[d];
        }
        let ao: i64 = mm.a.offset
            + idx
                .iter()
                .zip(&mm.a.strides)
                .map(|(&i, &s)| i as i64 * s)
                .sum::<i64>();
        let bo: i64 = mm.b.offset
            + idx
                .iter()
                .zip(&mm.b.strides)
                .map(|(&i, &s)| i as i64 * s)
                .sum::<i64>();
        for i in 0..mm.m as i64 {
            for j in 0..mm.n as i64 {
                let mut acc = 0.0;
                for l in 0..mm.k as i64 {
                    acc += a[(ao + i * mm.a.strides[nb] + l * mm.a.strides[nb + 1]) as usize]
                        * b[(bo + l * mm.b.strides[nb] + j * mm.b.strides[nb + 1]) as usize];
                }
                out.push(acc);
            }
        }
    }
    out
}

/// Every cuBLAS call the code generator plans computes the plan's matrix product: checked
/// on the host by running the call's exact column-major definition (no GPU needed).
fn check_gemm_calls(label: &str, plan: &Plan) {
    let mut rng = Rng(0x9e37_79b9 ^ plan.kernels.len() as u64);
    for (kernel, cuda_kernel) in plan
        .kernels
        .iter()
        .zip(emit_kernels(plan).expect("the plan lowers"))
    {
        let (KernelKind::MatMul(mm), Launch::Cublas(call)) = (&kernel.kind, &cuda_kernel.launch)
        else {
            continue;
        };
        let numel = |id: BufferId| plan.buffer(id).shape.iter().product::<u64>() as usize;
        let a: Vec<f64> = (0..numel(mm.a.buffer)).map(|_| rng.value()).collect();
        let b: Vec<f64> = if mm.b.buffer == mm.a.buffer {
            a.clone()
        } else {
            (0..numel(mm.b.buffer)).map(|_| rng.value()).collect()
        };
        // cuBLAS's A is the plan's b and its B the plan's a.
        assert_eq!(
            (call.a, call.b, call.c),
            (mm.b.buffer, mm.a.buffer, mm.out),
            "{label} {}",
            kernel.name
        );
        let got = simulate_gemm(call, &b, &a, numel(mm.out));
        let want = reference_matmul(mm, &a, &b);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                "{label} {}: element {i}: cuBLAS call gives {g}, matmul is {w}",
                kernel.name
            );
        }
    }
}

#[test]
fn cublas_calls_compute_the_planned_products() {
    for d in DType::FLOATS {
        check_gemm_calls(&format!("hand matmul {d}"), &matmul_plan(d));
    }
    for (name, source) in examples() {
        let program = compile_example(&name, &source, &small_dims(&source));
        check_gemm_calls(&name, &program.plan);
    }
    for (i, source) in random_programs(120, 7).iter().enumerate() {
        if let Ok(program) = tc_compiler::compile(source, &cuda_options(&[])) {
            check_gemm_calls(&format!("random program {i}:\n{source}"), &program.plan);
        }
    }
}

// ------------------------------------------------------------------ random programs

/// `count` random programs from the one generator (`tc_tests::gen`), over the long rows and
/// odd widths of `Sizes::rows`, so every launch strategy of a row kernel comes up.
fn random_programs(count: usize, seed: u64) -> Vec<String> {
    use tc_tests::gen::{program_with, Sizes};
    (0..count as u64)
        .map(|i| {
            let s = seed.wrapping_mul(1_000_003).wrapping_add(i);
            program_with(s, &Sizes::rows(s))
        })
        .collect()
}

#[test]
fn random_programs_compile() {
    // The generator is only useful if the whole compiler accepts everything it writes.
    let programs = random_programs(200, 1);
    let failures: Vec<String> = programs
        .iter()
        .filter_map(|s| {
            tc_compiler::compile(s, &cuda_options(&[]))
                .err()
                .map(|d| format!("{s}\n{d:?}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 200 random programs do not compile; first:\n{}",
        failures.len(),
        failures.first().cloned().unwrap_or_default()
    );
}

#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn random_programs_compile_with_nvrtc() {
    require_nvrtc();
    let mut compiled = 0;
    for (i, source) in random_programs(60, 2).iter().enumerate() {
        if let Ok(program) = tc_compiler::compile(source, &cuda_options(&[])) {
            check_compiles(&format!("random program {i}:\n{source}"), &program.plan);
            compiled += 1;
        }
    }
    assert!(
        compiled == 60,
        "only {compiled} of 60 random programs reached NVRTC"
    );
}

// ------------------------------------------------------------------ on a GPU

/// Whether a GPU is usable; prints the skip line, or panics when `TC_REQUIRE_CUDA=1`.
fn gpu_ready() -> bool {
    let nvrtc = load_nvrtc();
    match cuda::available() {
        Ok(info) if nvrtc => {
            println!("GPU: {} ({})", info.name, info.arch);
            true
        }
        other => {
            let why = match other {
                Ok(_) => "NVRTC not found".to_string(),
                Err(e) => e.to_string(),
            };
            if std::env::var("TC_REQUIRE_CUDA").as_deref() == Ok("1") {
                panic!("TC_REQUIRE_CUDA=1 but CUDA is unavailable: {why}");
            }
            println!("skipped: no GPU ({why})");
            false
        }
    }
}

/// Runs `source` on CUDA and on the CPU executor with the same seeded data; outputs must
/// agree within the dtype's tolerance and `measured` must equal `planned`.
fn check_cuda_against_cpu(label: &str, source: &str, dims: &[(String, u64)]) -> Result<(), String> {
    check_cuda_against_cpu_with(label, source, &cuda_options(dims))
}

fn check_cuda_against_cpu_with(
    label: &str,
    source: &str,
    options: &tc_compiler::CompileOptions,
) -> Result<(), String> {
    check_cuda_against_cpu_in(label, source, options, &cuda::CudaOptions::default())
}

/// Panics where `e` left the CUDA context unusable, naming its kernel: every later run in
/// the process would fail with the same error (`CudaError::ContextLost`), so a test stops
/// at the first fault instead of listing it once per case.
fn stop_if_context_lost(label: &str, e: &cuda::CudaError, source: &str) {
    if matches!(cuda::available(), Err(cuda::CudaError::ContextLost(_))) {
        panic!(
            "{label}: CUDA: {e}\nthe CUDA context is lost; stopping at the first fault\n{source}"
        );
    }
}

/// `check_cuda_against_cpu_with`, the CUDA run under `run_options` (fast maths, say).
fn check_cuda_against_cpu_in(
    label: &str,
    source: &str,
    options: &tc_compiler::CompileOptions,
    run_options: &cuda::CudaOptions,
) -> Result<(), String> {
    let program = tc_compiler::compile(source, options).map_err(|d| format!("{label}: {d:?}"))?;
    let (inputs, params) = tc_runtime::data::load_leaves(&program.checked, &[], None, 0)
        .map_err(|e| format!("{label}: {e}"))?;
    let cpu = tc_runtime::cpu::run(&program.plan, &inputs, &params)
        .map_err(|e| format!("{label}: CPU: {e}"))?;
    let gpu = cuda::run(&program.plan, &inputs, &params, run_options).map_err(|e| {
        stop_if_context_lost(label, &e, source);
        format!("{label}: CUDA: {e}")
    })?;
    let planned = program.memory.peaks.planned.with_inputs;
    if gpu.measured_bytes != planned {
        return Err(format!(
            "{label}: measured {} bytes, planned {planned}",
            gpu.measured_bytes
        ));
    }
    compare_with_cpu(label, "CUDA", &program.plan, &cpu, &gpu.outputs)
        .map_err(|e| format!("{e}\n{source}"))
}

/// Every output of `got` (from `device`) equals the CPU executor's within the dtype's
/// tolerance between executors (`tc_tests::between_executors`), NaN where the CPU has NaN.
fn compare_with_cpu(
    label: &str,
    device: &str,
    plan: &Plan,
    cpu: &[tc_runtime::HostTensor],
    got: &[tc_runtime::HostTensor],
) -> Result<(), String> {
    for ((want, got), out) in cpu.iter().zip(got).zip(&plan.outputs) {
        if want.shape != got.shape || want.dtype != got.dtype {
            return Err(format!(
                "{label}: output {} is {:?} on {device}, {:?} on the CPU",
                out.name, got.shape, want.shape
            ));
        }
        let tol = tc_tests::between_executors(want.dtype);
        for (i, (w, g)) in want.to_f32().iter().zip(got.to_f32()).enumerate() {
            if !tol.admits(g as f64, *w as f64, 1.0) {
                return Err(format!(
                    "{label}: output {} element {i}: {device} {g}, CPU {w}",
                    out.name
                ));
            }
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_examples_match_the_cpu() {
    if !gpu_ready() {
        return;
    }
    let failures: Vec<String> = example_variants()
        .iter()
        .filter_map(|(label, source, options)| {
            check_cuda_against_cpu_with(label, source, options).err()
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Split column reductions (`emu::COLUMN_REDUCTIONS`: both launches of each, partials in the
/// planned workspace) on the GPU against the CPU, twice: bitwise the same both times (the
/// fold's order is fixed), measured = planned.
#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_split_column_reductions_match_the_cpu() {
    if !gpu_ready() {
        return;
    }
    let options = cuda_options(&[]);
    check_cuda_against_cpu_with("column reductions", emu::COLUMN_REDUCTIONS, &options)
        .unwrap_or_else(|e| panic!("{e}"));
    let program = tc_compiler::compile(emu::COLUMN_REDUCTIONS, &options).expect("compiles");
    let (inputs, params) =
        tc_runtime::data::load_leaves(&program.checked, &[], None, 0).expect("data");
    let run = || {
        cuda::run(
            &program.plan,
            &inputs,
            &params,
            &cuda::CudaOptions::default(),
        )
        .expect("runs")
        .outputs
    };
    let (first, second) = (run(), run());
    for ((a, b), out) in first.iter().zip(&second).zip(&program.plan.outputs) {
        assert!(a.bytes == b.bytes, "{}: two runs differ", out.name);
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_runs_are_bitwise_deterministic() {
    if !gpu_ready() {
        return;
    }
    // The same program, data and seed give the same bits, run after run (issue 6).
    for (name, source) in examples() {
        let program = tc_compiler::compile(&source, &cuda_options(&small_dims(&source)))
            .unwrap_or_else(|d| panic!("{name}: {d:?}"));
        let (inputs, params) = tc_runtime::data::load_leaves(&program.checked, &[], None, 7)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let runs: Vec<Vec<Vec<u8>>> = (0..3)
            .map(|_| {
                cuda::run(
                    &program.plan,
                    &inputs,
                    &params,
                    &cuda::CudaOptions::default(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .outputs
                .into_iter()
                .map(|t| t.bytes)
                .collect()
            })
            .collect();
        assert!(
            runs[0] == runs[1] && runs[1] == runs[2],
            "{name}: CUDA outputs differ between runs"
        );
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_refuses_a_plan_larger_than_free_memory_before_any_launch() {
    if !gpu_ready() {
        return;
    }
    // A one-number input expanded to 2^36 elements: a 256 GiB arena, more than any GPU has.
    let source = "dim N = 68719476736\ninput x : f32[1]\ny = expand(x, [N]) * 2\noutput y\n";
    let program = tc_compiler::compile(source, &cuda_options(&[])).expect("compiles");
    let (inputs, params) =
        tc_runtime::data::load_leaves(&program.checked, &[], None, 0).expect("data");
    match cuda::run(
        &program.plan,
        &inputs,
        &params,
        &cuda::CudaOptions::default(),
    ) {
        Err(e @ cuda::CudaError::OutOfMemory { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("smaller dims"), "{msg}");
            assert!(
                msg.contains(&program.memory.peaks.planned.with_inputs.to_string())
                    || msg.contains("bytes"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected an out-of-memory refusal, got: {e}"),
        Ok(_) => panic!("a 256 GiB plan ran"),
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_random_programs_match_the_cpu() {
    if !gpu_ready() {
        return;
    }
    let mut checked = 0;
    let mut failures = Vec::new();
    for (i, source) in random_programs(240, 3).iter().enumerate() {
        if tc_compiler::compile(source, &cuda_options(&[])).is_err() {
            continue;
        }
        checked += 1;
        if let Err(e) = check_cuda_against_cpu(&format!("random program {i}"), source, &[]) {
            failures.push(e);
        }
    }
    assert!(checked >= 200, "only {checked} random programs compiled");
    assert!(
        failures.is_empty(),
        "{} of {checked} disagree:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Every float elementwise op on the CUDA executor (libdevice's `expf`, `sinf`, `powf`, …
/// as `codegen::cuda` writes them) over a dense sweep of f32 inputs, within the CUDA
/// accuracy contract (`ir::eval::cuda_unary_accuracy`, `cuda_binary_accuracy`: the CPU's,
/// widened to NVIDIA's documented bound where a kernel calls the CUDA maths library): one
/// table row per op, the worst inputs of any op outside its bound.
#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_elementwise_ops_meet_their_accuracy() {
    if !gpu_ready() {
        return;
    }
    check_gpu_accuracy(
        "CUDA",
        &cuda::CudaOptions::default(),
        tc_tests::accuracy::Contract::CUDA,
        tc_tests::accuracy::Sweep::GPU,
    );
}

/// `tc_tests::accuracy::check_elementwise_accuracy` on the GPU, kernels run with `run`;
/// panics with the worst inputs of every op outside `contract`.
fn check_gpu_accuracy(
    label: &str,
    run: &cuda::CudaOptions,
    contract: tc_tests::accuracy::Contract,
    sweep: tc_tests::accuracy::Sweep,
) {
    let gpu = |p: &tc_compiler::Program, inputs: &[tc_runtime::HostTensor]| {
        cuda::run(&p.plan, inputs, &[], run)
            .map(|r| r.outputs)
            .map_err(|e| {
                stop_if_context_lost(label, &e, "");
                e.to_string()
            })
    };
    let options = cuda_options(&[]);
    if let Err(e) =
        tc_tests::accuracy::check_elementwise_accuracy(label, &options, contract, sweep, &gpu)
    {
        panic!("{e}");
    }
}

/// The same sweep on kernels compiled with fast maths (`tc run --fast-math`), within
/// `ir::eval::fast_math_unary_accuracy` / `fast_math_binary_accuracy`: `/`, `sqrt`,
/// `reciprocal`, `rsqrt` at NVIDIA's documented bounds, every other op at its own (the
/// sparser CPU sweep: only the ops with a `/`, a `sqrt` or a multiply-add can change).
#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_elementwise_ops_meet_their_fast_math_accuracy() {
    if !gpu_ready() {
        return;
    }
    let fast = fast_math();
    check_gpu_accuracy(
        "CUDA --fast-math",
        &fast,
        tc_tests::accuracy::Contract::FAST_MATH,
        tc_tests::accuracy::Sweep::CPU,
    );
}

#[test]
fn cuda_entry_points_never_panic_without_a_gpu() {
    // On any machine: `available` and `run` answer with a value, and on a machine without
    // CUDA the error says why.
    let plan = pointwise_plan(DType::F32, 4, 8);
    let x = tc_runtime::HostTensor::from_f32(DType::F32, vec![4, 8], &[1.0; 32]);
    let bias = tc_runtime::HostTensor::from_f32(DType::F32, vec![8], &[0.5; 8]);
    match (
        cuda::available(),
        cuda::run(&plan, &[x, bias], &[], &cuda::CudaOptions::default()),
    ) {
        (Ok(_), Ok(run)) => {
            assert_eq!(run.measured_bytes, plan.arena_bytes + 4 * 32 + 4 * 8);
            let y = run.outputs[0].to_f32();
            // gelu(1 · 1.5 + 0.5), as `ir::eval` defines it.
            let want = tc_compiler::ir::eval::unary(UnaryOp::Gelu, 2.0) as f32;
            assert!((y[0] - want).abs() < 1e-5, "{} vs {want}", y[0]);
        }
        (Err(e), Err(e2)) => {
            assert!(
                e.to_string().contains("CUDA unavailable") || e.to_string().contains("CUDA driver"),
                "{e}"
            );
            assert!(!e2.to_string().is_empty());
        }
        (a, b) => panic!(
            "available() and run() disagree: {:?} / {:?}",
            a.map(|i| i.name),
            b.map(|r| r.measured_bytes)
        ),
    }
}

#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn nvrtc_failure_carries_log_arch_and_source_file() {
    require_nvrtc();
    let bad = "extern \"C\" __global__ void k0(float* p) { p[0] = undeclared_name; }\n";
    let err = match cuda::compile(bad, "sm_90", cuda::Maths::Exact, &[]) {
        Ok(_) => panic!("NVRTC accepted an undeclared identifier"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("sm_90") && err.contains("undeclared_name"),
        "{err}"
    );
    let path = err
        .split("the source is in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a path in the message");
    let saved = std::fs::read_to_string(path).expect("the source file named in the message");
    assert_eq!(saved, bad);
}

#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn compiled_kernels_are_cached_on_disk() {
    require_nvrtc();
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = translation_unit(
        &emit_kernels(&softmax_plan(DType::F16, 10, 70)).expect("the plan lowers"),
    );
    let first = cuda::compile_in_cache(&unit, "sm_80", cuda::Maths::Exact, &[], Some(dir.path()))
        .expect("compiles");
    let second = cuda::compile_in_cache(&unit, "sm_80", cuda::Maths::Exact, &[], Some(dir.path()))
        .expect("cached");
    assert!(!first.cached && second.cached);
    assert_eq!(first.cubin, second.cubin);
    // Another arch or other source is another entry.
    let other = cuda::compile_in_cache(&unit, "sm_90", cuda::Maths::Exact, &[], Some(dir.path()))
        .expect("compiles");
    assert!(!other.cached);
    // Fast maths is other code, so another entry too.
    let fast = cuda::compile_in_cache(&unit, "sm_90", cuda::Maths::Fast, &[], Some(dir.path()))
        .expect("compiles");
    assert!(!fast.cached);
    assert_ne!(
        fast.cubin, other.cubin,
        "fast maths changes the softmax's division"
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("cache dir").count(), 3);
}
