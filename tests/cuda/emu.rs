//! The CUDA backend on the host (`tc_runtime::cuda::emu`): every generated kernel run under
//! the emulated CUDA execution model against the CPU executor — the hand-built kernels, the
//! examples (as planned, and unfused), and random programs — forward and in reverse order
//! (which must agree bit for bit: a difference is a race), and hand-written faulty kernels
//! that the emulation must catch.
//!
//! Needs a host C++ compiler; without one these tests are reported as ignored, "needs a
//! host C++ compiler" (`tests/build.rs` decides when the tests are built); they run, and
//! fail, when `TC_REQUIRE_EMU=1` (as `.ci/run` sets) or with `--include-ignored`.

use super::*;
use tc_compiler::codegen::CudaKernel;
use tc_runtime::cuda::emu::{self, EmuError, EmuOptions};
use tc_runtime::HostTensor;

/// Fails a test that runs without a host C++ compiler: it runs only where `tests/build.rs`
/// found one, under `TC_REQUIRE_EMU=1`, or when asked to with `--include-ignored`.
fn require_emu() {
    if let Err(e) = emu::compiler() {
        panic!("no host C++ compiler: {e}");
    }
}

fn random_data(plan: &Plan, ids: &[BufferId], seed: u64) -> Vec<HostTensor> {
    ids.iter()
        .map(|id| {
            let b = plan.buffer(*id);
            tc_runtime::data::random_tensor(seed, &b.name, b.dtype, &b.shape)
        })
        .collect()
}

/// Emulates `plan`'s kernels forward and in reverse; both must match the CPU executor
/// within the dtype's tolerance and each other bit for bit.
fn check_plan(
    label: &str,
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
) -> Result<(), String> {
    let kernels = emit_kernels(plan).expect("the plan lowers");
    let cpu =
        tc_runtime::cpu::run(plan, inputs, params).map_err(|e| format!("{label}: CPU: {e}"))?;
    let mut runs = Vec::new();
    for reverse in [false, true] {
        let opts = EmuOptions {
            reverse,
            ..EmuOptions::default()
        };
        let out = emu::run(plan, &kernels, inputs, params, &opts)
            .map_err(|e| format!("{label} (reverse: {reverse}): {e}"))?;
        runs.push(out);
    }
    for (j, out) in plan.outputs.iter().enumerate() {
        if runs[0][j].bytes != runs[1][j].bytes {
            return Err(format!(
                "{label}: output {} differs between forward and reverse order: a race between threads",
                out.name
            ));
        }
    }
    compare_with_cpu(label, "emulated CUDA", plan, &cpu, &runs[0])
}

/// `require_emu` for the other test modules of this binary.
pub(super) fn require_emu_pub() {
    require_emu();
}

/// `check_plan` for the other test modules of this binary.
pub(super) fn check_plan_pub(
    label: &str,
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
) -> Result<(), String> {
    check_plan(label, plan, inputs, params)
}

fn check_source(
    label: &str,
    source: &str,
    options: &tc_compiler::CompileOptions,
) -> Result<(), String> {
    let program = tc_compiler::compile(source, options).map_err(|d| format!("{label}: {d:?}"))?;
    let (inputs, params) = tc_runtime::data::load_leaves(&program.checked, &[], None, 0)
        .map_err(|e| format!("{label}: {e}"))?;
    check_plan(label, &program.plan, &inputs, &params).map_err(|e| format!("{e}\n{source}"))
}

/// Training steps under the emulation: every op's gradient program and random training
/// steps from the one generator, emulated against the CPU executor (which the gradient
/// tests hold to the oracle, and the oracle to finite differences).
#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_gradients_match_the_cpu() {
    require_emu();
    let mut sources: Vec<(String, String)> = tc_tests::gradcheck::OPS
        .iter()
        .map(|(l, d, e)| (l.to_string(), tc_tests::gradcheck::op_program(d, e)))
        .collect();
    sources.extend((0..40u64).map(|s| (format!("seed {s}"), tc_tests::gen::differentiable(s))));
    let options = tc_compiler::CompileOptions::default();
    let failures: Vec<String> = sources
        .iter()
        .filter_map(|(label, src)| check_source(label, src, &options).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_hand_built_kernels_match_the_cpu() {
    require_emu();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, plan) in hand_built() {
        // 2^32 elements: the 64-bit indexing case is for NVRTC and the CPU, not emulation.
        if name == "pointwise_huge" {
            continue;
        }
        let inputs = random_data(&plan, &plan.inputs, 1);
        let params = random_data(&plan, &plan.params, 2);
        checked += 1;
        failures.extend(check_plan(&name, &plan, &inputs, &params).err());
    }
    assert!(checked >= 20, "only {checked} hand-built plans");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_examples_match_the_cpu() {
    require_emu();
    let failures: Vec<String> = example_variants()
        .iter()
        .filter_map(|(label, source, options)| check_source(label, source, options).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_random_programs_match_the_cpu() {
    require_emu();
    let count = std::env::var("TC_EMU_PROGRAMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let mut checked = 0;
    let mut failures = Vec::new();
    for (i, source) in random_programs(count, 3).iter().enumerate() {
        let options = cuda_options(&[]);
        if tc_compiler::compile(source, &options).is_err() {
            continue;
        }
        checked += 1;
        failures.extend(check_source(&format!("random program {i}"), source, &options).err());
    }
    assert!(
        checked * 10 >= count * 9,
        "only {checked} of {count} random programs compiled"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} disagree:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_large_reductions_into_one_value_match_the_cpu() {
    require_emu();
    // Split by the planner into partials and their fold (warp and block rows).
    let mut failures = Vec::new();
    for (i, source) in tc_tests::LARGE_REDUCTIONS.iter().enumerate() {
        failures.extend(
            check_source(&format!("large reduction {i}"), source, &cuda_options(&[])).err(),
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_single_pass_row_statistics_keep_ieee_special_values() {
    require_emu();
    // Rows too long for registers (online softmax, Welford) with -inf (masked), NaN and
    // +inf placed first, last and alone: the single pass must give what the CPU's two
    // passes give, NaN for NaN.
    let cols = 40_000u64;
    let specials: [&[(usize, f32)]; 6] = [
        &[],
        &[
            (0, f32::NEG_INFINITY),
            (1, f32::NEG_INFINITY),
            (39_999, f32::NEG_INFINITY),
        ],
        &[(5, f32::NAN)],
        &[(7, f32::INFINITY)],
        &[(0, 1e30), (1, -1e30)],
        &[(39_999, 88.0)],
    ];
    let rows = specials.len() as u64 + 1;
    let mut values = Vec::new();
    for r in 0..rows as usize {
        let mut row: Vec<f32> = (0..cols)
            .map(|j| ((j * 7919 + r as u64 * 31) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        match specials.get(r) {
            Some(s) => {
                for &(j, x) in s.iter() {
                    row[j] = x;
                }
            }
            None => row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
        }
        values.extend(row);
    }
    for (name, plan) in [
        ("softmax_long_f32", softmax_plan(DType::F32, rows, cols)),
        ("layernorm_long_f32_input", {
            let mut p = layernorm_plan(rows, cols);
            // f32 data in the bf16 plan's place: same kernel shape.
            for b in &mut p.buffers {
                if b.dtype == DType::BF16 {
                    b.dtype = DType::F32;
                    b.bytes *= 2;
                }
            }
            let mut off = 0;
            for b in &mut p.buffers {
                if b.kind == BufferKind::Arena {
                    b.offset = off;
                    off += b.bytes.div_ceil(16) * 16;
                }
            }
            p.arena_bytes = off;
            if let KernelKind::Fused(f) = &mut p.kernels[0].kind {
                f.loads[0].dtype = DType::F32;
                for i in &mut f.body {
                    if i.dtype == DType::BF16 {
                        i.dtype = DType::F32;
                    }
                }
            }
            for o in &mut p.outputs {
                o.dtype = DType::F32;
            }
            p
        }),
    ] {
        assert!(emit_program(&plan).contains("in the same read"), "{name}");
        let mut inputs = random_data(&plan, &plan.inputs, 3);
        inputs[0] = HostTensor::from_f32(DType::F32, vec![rows, cols], &values);
        let cpu = tc_runtime::cpu::run(&plan, &inputs, &[]).expect("CPU");
        let emulated = emu::run(
            &plan,
            &emit_kernels(&plan).expect("the plan lowers"),
            &inputs,
            &[],
            &EmuOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = compare_with_cpu(name, "emulated CUDA", &plan, &cpu, &emulated) {
            panic!("{e}");
        }
    }
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_signed_zeros_and_nan_give_the_cpus_bits() {
    require_emu();
    // The ops whose zero sign or NaN handling is a choice (ir::eval defines it): the
    // generated CUDA C must make the same choice as the CPU executor, bit for bit.
    let source = "input x : f32[8]\n\
                  r = relu(x)\n\
                  hi = maximum(x, 0)\n\
                  lo = minimum(x, 0)\n\
                  a = abs(x)\n\
                  output r, hi, lo, a\n";
    let program =
        tc_compiler::compile(source, &tc_compiler::CompileOptions::default()).expect("compiles");
    let plan = &program.plan;
    let values = [
        -0.0f32,
        0.0,
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.5,
        2.5,
    ];
    let inputs = vec![HostTensor::from_f32(DType::F32, vec![8], &values)];
    let cpu = tc_runtime::cpu::run(plan, &inputs, &[]).expect("CPU");
    let kernels = emit_kernels(plan).expect("the plan lowers");
    let emulated =
        emu::run(plan, &kernels, &inputs, &[], &EmuOptions::default()).expect("emulated");
    // Bit for bit, zero signs included; a NaN's sign and payload are the hardware's (the
    // GPU makes its own canonical NaN), so any NaN matches any NaN.
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    for (j, out) in plan.outputs.iter().enumerate() {
        let (c, e) = (cpu[j].to_f32(), emulated[j].to_f32());
        assert!(
            c.iter().zip(&e).all(|(&a, &b)| same(a, b)),
            "{}: for {values:?} the CPU gives {c:?}, the emulated CUDA C {e:?}",
            out.name
        );
    }
}

// ---------------------------------------------------------------- faults the emulation must catch

const N: u64 = 1024;

/// `y = f(x)` over N floats, as one hand-written kernel of 4 blocks of 256 threads.
fn faulty(body: &str, block: u32) -> (Plan, Vec<CudaKernel>, Vec<HostTensor>) {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, &[N]);
    let y = b.arena("y", DType::F32, &[N]);
    let f = FusedKernel {
        domain: vec![N],
        reduce_axes: vec![],
        loads: vec![load(x, DType::F32, 0, vec![1])],
        body: vec![el(InstOp::Load(0), DType::F32)],
        stores: vec![Store {
            inst: 0,
            buffer: y,
            region: None,
        }],
        workspace: None,
    };
    b.kernel(KernelKind::Fused(f), &["copy"], &[1]);
    b.output("y", y);
    let plan = b.finish();
    let source = format!(
        "extern \"C\" __global__ void __launch_bounds__(256) k0(const float* b0, float* b1) {{\n\
         const int i = blockIdx.x * blockDim.x + threadIdx.x;\n{body}\n}}\n"
    );
    let kernel = CudaKernel {
        kernel_index: 0,
        name: "k0".into(),
        source,
        launch: Launch::Grid {
            grid: [(N as u32).div_ceil(block), 1, 1],
            block: [block, 1, 1],
            shared_bytes: 0,
        },
        params: vec![x, y],
        checks: Vec::new(),
    };
    let inputs = random_data(&plan, &plan.inputs, 5);
    (plan, vec![kernel], inputs)
}

fn fault(body: &str, block: u32, reverse: bool) -> Result<Vec<HostTensor>, EmuError> {
    let (plan, kernels, inputs) = faulty(body, block);
    let opts = EmuOptions {
        reverse,
        ..EmuOptions::default()
    };
    emu::run(&plan, &kernels, &inputs, &[], &opts)
}

fn expect_error(body: &str, block: u32, needles: &[&str]) {
    match fault(body, block, false) {
        Ok(_) => panic!("the emulation missed a fault in:\n{body}"),
        Err(e) => {
            let msg = e.to_string();
            for n in needles {
                assert!(msg.contains(n), "expected `{n}` in:\n{msg}");
            }
        }
    }
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_runs_a_correct_hand_written_kernel() {
    require_emu();
    // The harness of the fault tests, without a fault: outputs are x * 2.
    let (plan, kernels, inputs) = faulty("b1[i] = b0[i] * 2.0f;", 256);
    let out = emu::run(&plan, &kernels, &inputs, &[], &EmuOptions::default()).expect("runs");
    let want: Vec<f32> = inputs[0].to_f32().iter().map(|v| v * 2.0).collect();
    assert_eq!(out[0].to_f32(), want);
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_catches_a_write_past_the_end() {
    require_emu();
    expect_error(
        "b1[i + 1] = b0[i];",
        256,
        &["past the end of the arena", "kernel k0", "block (3, 0, 0)"],
    );
    expect_error(
        "b1[i] = b0[i + 4];",
        256,
        &["past the end of input x", "kernel k0"],
    );
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_catches_barrier_divergence() {
    require_emu();
    expect_error(
        "if (threadIdx.x < 32) __syncthreads();\nb1[i] = b0[i];",
        256,
        &[
            "barrier divergence",
            "32 wait at __syncthreads",
            "224 have finished",
        ],
    );
    expect_error(
        "float v = b0[i];\nif (threadIdx.x & 1) v = __shfl_xor_sync(0xffffffffu, v, 1);\nb1[i] = v;",
        256,
        &["barrier divergence", "at __shfl_xor_sync"],
    );
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_catches_a_race_between_threads() {
    require_emu();
    // Each thread writes its element, then reads its neighbour's with no barrier between:
    // whichever of the pair runs first sees the poison of an unwritten element.
    let body = "b1[i] = b0[i];\nconst float n = b1[i ^ 1];\nb1[i] = n == n ? 1.0f : 2.0f;";
    let forward = fault(body, 256, false).expect("forward runs");
    let reverse = fault(body, 256, true).expect("reverse runs");
    assert!(forward[0].bytes != reverse[0].bytes, "the race went unseen");
    // With the barrier it needs, both orders agree.
    let fixed = "b1[i] = b0[i];\n__syncthreads();\nconst float n = b1[i ^ 1];\n__syncthreads();\nb1[i] = n == n ? 1.0f : 2.0f;";
    let forward = fault(fixed, 256, false).expect("forward runs");
    let reverse = fault(fixed, 256, true).expect("reverse runs");
    assert!(
        forward[0].bytes == reverse[0].bytes,
        "orders differ with the barrier"
    );
    assert!(forward[0].to_f32().iter().all(|v| *v == 1.0));
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_shared_memory_starts_each_block_undefined() {
    require_emu();
    // Thread 0 of each block reads a shared slot nobody wrote: NaN, not a stale or zero value.
    let body = "__shared__ float sh[256];\nif (threadIdx.x > 0) sh[threadIdx.x] = b0[i];\n__syncthreads();\nb1[i] = sh[threadIdx.x];";
    let out = fault(body, 256, false).expect("runs")[0].to_f32();
    for block in 0..4 {
        assert!(
            out[block * 256].is_nan(),
            "block {block}: {}",
            out[block * 256]
        );
        assert!(!out[block * 256 + 1].is_nan());
    }
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_catches_index_overflow_misalignment_and_bad_launches() {
    require_emu();
    expect_error(
        "const int big = 2147483647 - (int)threadIdx.x;\nb1[i] = (float)(big + 8);",
        256,
        &["signed integer overflow"],
    );
    expect_error(
        "if (i % 4 == 0 && i + 5 < 1024) { const float4 v = *reinterpret_cast<const float4*>(b0 + i + 1); b1[i] = v.x; }",
        256,
        &["misaligned"],
    );
    expect_error("b1[i] = b0[i];", 512, &["__launch_bounds__(256)"]);
    expect_error(
        "float r[4];\nfor (int t = 0; t <= (int)(threadIdx.x % 5); ++t) r[t] = b0[i];\nb1[i] = r[0];",
        256,
        &["out of bounds"],
    );
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_attention_programs_match_the_cpu() {
    require_emu();
    let mut failures = Vec::new();
    for (label, source) in tc_tests::attention::programs(tc_tests::attention::Sizes::Emu, 12) {
        let options = cuda_options(&[]);
        let program = tc_compiler::compile(&source, &options).expect("compiles");
        assert!(
            program
                .plan
                .kernels
                .iter()
                .any(|k| matches!(k.kind, KernelKind::Attention(_))),
            "{label}: not fused"
        );
        failures.extend(check_source(&label, &source, &options).err());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Training steps of attention programs: the fused attention backward's CUDA C (both phases
/// in one block per batch matrix) under the emulation against the CPU executor.
#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_attention_backward_matches_the_cpu() {
    require_emu();
    let mut failures = Vec::new();
    let mut fused = 0;
    for (label, source) in tc_tests::attention::programs(tc_tests::attention::Sizes::Emu, 12) {
        let step = tc_tests::attention::training_step(&source, &["q", "k", "v"]);
        let options = cuda_options(&[]);
        let program = tc_compiler::compile(&step, &options).expect("compiles");
        if program
            .plan
            .kernels
            .iter()
            .any(|k| matches!(k.kind, KernelKind::AttentionBackward(_)))
        {
            fused += 1;
        } else if tc_tests::attention::backward_fuses(&label) && !program.plan.unfused_fallback {
            failures.push(format!("{label}: backward not fused"));
        }
        failures.extend(check_source(&label, &step, &options).err());
    }
    assert!(fused >= 3, "only {fused} fused attention backwards");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// SPEC §3.5's maths in the generated CUDA C against the CPU executor on special values:
/// the correctly rounded ones (`floor`, `ceil`, `round` half to even, `sign` with +0 for ±0
/// and NaN, `reciprocal`, `clamp` with crossed bounds) bit for bit, the transcendental ones
/// (CUDA's `log1pf`, `expm1f`, `tanf`, `expf` against the CPU's) within the executors'
/// tolerance with the same infinities and NaNs; `logsumexp`, `var`, `std` as row kernels.
#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_more_maths_matches_the_cpu_on_special_values() {
    require_emu();
    let source = "input x : f32[4, 8]\n\
                  f = floor(x)\nc = ceil(x)\nr = round(x)\ns = sign(x)\nq = reciprocal(x)\n\
                  k = clamp(x, min=-1, max=2)\nkx = clamp(x, min=2, max=-1)\nl = leaky_relu(x)\n\
                  p = log1p(x)\ne = expm1(x)\nt = tan(x)\nsp = softplus(x)\ng = gelu_tanh(x)\n\
                  lse = logsumexp(x, axis=-1)\nv = var(x, axis=1, keepdim=true)\nsd = std(x, axis=0)\n\
                  output f, c, r, s, q, k, kx, l, p, e, t, sp, g, lse, v, sd\n";
    let exact = ["f", "c", "r", "s", "q", "k", "kx"];
    let program =
        tc_compiler::compile(source, &tc_compiler::CompileOptions::default()).expect("compiles");
    let plan = &program.plan;
    let values = [
        -0.0f32,
        0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.5,
        -0.5,
        1.5,
        2.5,
        -2.5,
        8388607.5,
        f32::from_bits(1),
        -1e-7,
        20.0,
        20.5,
        -30.0,
        1.5707964,
        -0.999,
        3.0,
        -100.0,
        0.1,
        7.25,
        -3.75,
        1e30,
        -1e30,
        2.0,
        -1.0,
        0.75,
        4.5,
        -4.5,
        90.0,
        -0.25,
    ];
    let inputs = vec![HostTensor::from_f32(DType::F32, vec![4, 8], &values)];
    let cpu = tc_runtime::cpu::run(plan, &inputs, &[]).expect("CPU");
    let kernels = emit_kernels(plan).expect("the plan lowers");
    let emulated =
        emu::run(plan, &kernels, &inputs, &[], &EmuOptions::default()).expect("emulated");
    let tol = tc_tests::between_executors(DType::F32);
    for (j, out) in plan.outputs.iter().enumerate() {
        let (c, e) = (cpu[j].to_f32(), emulated[j].to_f32());
        for (i, (&a, &b)) in c.iter().zip(&e).enumerate() {
            let ok = if exact.contains(&out.name.as_str()) {
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
            } else {
                tol.admits(b as f64, a as f64, 1.0)
            };
            assert!(
                ok,
                "{}[{i}]: the CPU gives {a:e}, the emulated CUDA C {b:e}",
                out.name
            );
        }
    }
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_argmax_over_threads_keeps_the_first_position() {
    require_emu();
    // argmax/argmin whose rows are shared by a warp (300), a block (3000) and split over
    // slices (a column reduction), on data made of ties (5 values) with NaNs in some rows
    // (first, last, twice, alone): the threads' combine must give the CPU's first
    // position, exactly, and the same bits forward and in reverse.
    let source = "input x : f32[6, 3000]\n\
                  input s : f32[6, 300]\n\
                  input n : i32[6, 3000]\n\
                  a = argmax(x, axis=1)\n\
                  b = argmin(x, axis=1)\n\
                  c = argmax(x, axis=0)\n\
                  d = argmin(s, axis=1)\n\
                  e = argmax(n, axis=1)\n\
                  f = argmin(x, axis=0)\n\
                  output a, b, c, d, e, f\n";
    let program =
        tc_compiler::compile(source, &tc_compiler::CompileOptions::default()).expect("compiles");
    let plan = &program.plan;
    let ties = |rows: usize, cols: usize, nan_rows: bool| {
        let mut v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 + i / cols * 13) % 5) as f32 - 2.0)
            .collect();
        if nan_rows {
            v[cols - 1] = f32::NAN;
            v[2 * cols] = f32::NAN;
            v[3 * cols + 1700] = f32::NAN;
            v[3 * cols + 2100] = f32::NAN;
            // a row of one value but for a NaN in the middle
            for x in &mut v[4 * cols..5 * cols] {
                *x = 1.0;
            }
            v[4 * cols + 1234] = f32::NAN;
        }
        v
    };
    let x = ties(6, 3000, true);
    let s = ties(6, 300, false);
    let n: Vec<i64> = (0..6 * 3000).map(|i| ((i * 31) % 7) as i64).collect();
    let inputs = vec![
        HostTensor::from_f32(DType::F32, vec![6, 3000], &x),
        HostTensor::from_f32(DType::F32, vec![6, 300], &s),
        HostTensor::from_i64(DType::I32, vec![6, 3000], &n),
    ];
    let kernels = emit_kernels(plan).expect("the plan lowers");
    let modes = ["one warp per row", "one block of", "32 rows per block"];
    for m in modes {
        assert!(
            kernels.iter().any(|k| k.source.contains(m)),
            "no argmax kernel runs with {m}"
        );
    }
    assert!(
        kernels
            .iter()
            .all(|k| !k.source.contains("one thread per row")),
        "argmax no longer walks a row in one thread"
    );
    check_plan("argmax over threads", plan, &inputs, &[]).unwrap_or_else(|e| panic!("{e}"));
    let cpu = tc_runtime::cpu::run(plan, &inputs, &[]).expect("CPU");
    let emulated =
        emu::run(plan, &kernels, &inputs, &[], &EmuOptions::default()).expect("emulated");
    for (j, out) in plan.outputs.iter().enumerate() {
        assert_eq!(cpu[j].to_i64(), emulated[j].to_i64(), "{}", out.name);
    }
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_cumsum_scans_rows_in_tiles() {
    require_emu();
    // cumsum over rows a block (3000) and a warp (300) share, scanned tile by tile, with a
    // reduction and an elementwise consumer fused in, f32, f16 and integers; and a column
    // cumsum (one thread per row, neighbouring rows in neighbouring threads).
    let source = "input x : f32[5, 3000]\n\
                  input s : f32[7, 300]\n\
                  input h : f16[3, 1000]\n\
                  input n : i32[5, 3000]\n\
                  a = cumsum(x, axis=1)\n\
                  m = sum(cumsum(x * 2, axis=1), axis=1)\n\
                  b = cumsum(s, axis=1) * 2\n\
                  c = cumsum(n, axis=1)\n\
                  d = cumsum(x, axis=0)\n\
                  e = cumsum(h, axis=1)\n\
                  output a, m, b, c, d, e\n";
    let program = tc_compiler::compile(source, &cuda_options(&[])).expect("compiles");
    let kernels = emit_kernels(&program.plan).expect("the plan lowers");
    for m in [
        "one warp per row, scanned in tiles",
        "threads per row, scanned in tiles",
    ] {
        assert!(
            kernels.iter().any(|k| k.source.contains(m)),
            "no cumsum kernel runs with {m}"
        );
    }
    for fuse in [true, false] {
        let options = tc_compiler::CompileOptions {
            dims: Vec::new(),
            plan: tc_compiler::codegen::cuda_plan_options(&PlanOptions {
                fuse,
                ..PlanOptions::default()
            }),
        };
        check_source(&format!("cumsum (fuse: {fuse})"), source, &options)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Column reductions (the innermost axis kept) as the GPU plan runs them: split over blocks
/// with partials in a workspace and a second launch folding them in order, where the GPU
/// would otherwise be underfilled, and whole where not; against the CPU executor, forward
/// and in reverse block order (bit for bit: the fold's order is fixed).
pub(crate) const COLUMN_REDUCTIONS: &str = "input a : f32[8192, 64]\n\
     input o : f32[1501, 777]\n\
     input h : f16[4096, 100]\n\
     input g : bf16[2048, 130]\n\
     input n : i32[4096, 96]\n\
     input t : f32[64, 128, 40]\n\
     input s : f32[300, 200]\n\
     input q : f32[1024, 300]\n\
     sa = sum(a, axis=0)\n\
     ma = mean(exp(a) * 2, axis=0)\n\
     mo = max(o, axis=0)\n\
     no = min(o * 3, axis=0) + 1\n\
     sh = sum(h, axis=0)\n\
     sg = sum(g * g, axis=0)\n\
     sn = sum(n, axis=0)\n\
     st = sum(t, axis=[0, 1])\n\
     ss = sum(s, axis=0)\n\
     am = argmax(q, axis=0)\n\
     output sa, ma, mo, no, sh, sg, sn, st, ss, am\n";

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_split_column_reductions_match_the_cpu() {
    require_emu();
    let program = tc_compiler::compile(COLUMN_REDUCTIONS, &cuda_options(&[])).expect("compiles");
    let plan = &program.plan;
    let kernels = emit_kernels(plan).expect("the plan lowers");
    let split: Vec<&str> = kernels
        .iter()
        .filter(|k| matches!(k.launch, tc_compiler::codegen::Launch::Split { .. }))
        .map(|k| k.source.lines().next().unwrap_or(""))
        .collect();
    // Every column reduction above SPLIT_MIN elements splits (f32 alone and fused, odd
    // sizes, max and min fused, f16, bf16, integers, two reduced axes); the small one and the
    // argmax do not.
    assert!(split.len() >= 6, "{split:#?}");
    let whole: Vec<&str> = kernels
        .iter()
        .filter(|k| matches!(k.launch, tc_compiler::codegen::Launch::Grid { .. }))
        .map(|k| k.source.as_str())
        .collect();
    assert!(
        whole.iter().any(|k| k.contains("argmax"))
            && whole.iter().any(|k| k.contains("[300, 200]")),
        "the argmax and the small reduction run whole"
    );
    let workspaces = plan
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Workspace)
        .count();
    assert_eq!(workspaces, split.len());
    let (inputs, params) =
        tc_runtime::data::load_leaves(&program.checked, &[], None, 0).expect("data");
    check_plan("column reductions", plan, &inputs, &params).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_bf16_rounding_is_the_cpus_bit_for_bit() {
    require_emu();
    // The prelude's f32 -> bf16 (`cvt.rn.bf16.f32` on sm_80+, emulated in integers): a dense
    // sweep of f32 bit patterns and every kind of tie (low half exactly 0x8000 with an even
    // and an odd upper half, one below and one above), subnormals, the largest finites
    // (which round to infinity) and infinities, against the CPU's rounding, bit for bit.
    let mut bits: Vec<u32> = (0..1u32 << 17).map(|i| i.wrapping_mul(32771)).collect();
    for hi in (0..0xffffu32)
        .step_by(97)
        .chain([0x7f7f, 0x0000, 0x8000, 0x0001, 0x7f80])
    {
        for lo in [0x8000u32, 0x7fff, 0x8001, 0x0000, 0xffff] {
            bits.push(hi << 16 | lo);
        }
    }
    bits.extend([
        0x7f7f_ffff,
        0xff7f_ffff,
        0x7f80_0000,
        0xff80_0000,
        0x0000_0001,
        0x8000_8000,
    ]);
    let values: Vec<f32> = bits
        .iter()
        .map(|&b| f32::from_bits(b))
        .filter(|x| !x.is_nan())
        .collect();
    let n = values.len() as u64;
    let source = format!("input x : f32[{n}]\ny = bf16(x * 1)\noutput y\n");
    let program = tc_compiler::compile(&source, &cuda_options(&[])).expect("compiles");
    let inputs = vec![HostTensor::from_f32(DType::F32, vec![n], &values)];
    let cpu = tc_runtime::cpu::run(&program.plan, &inputs, &[]).expect("CPU");
    let kernels = emit_kernels(&program.plan).expect("the plan lowers");
    let emulated = emu::run(
        &program.plan,
        &kernels,
        &inputs,
        &[],
        &EmuOptions::default(),
    )
    .expect("emulated");
    assert_eq!(cpu[0].dtype, DType::BF16);
    let differ = cpu[0]
        .bytes
        .chunks(2)
        .zip(emulated[0].bytes.chunks(2))
        .position(|(a, b)| a != b);
    if let Some(i) = differ {
        panic!(
            "bf16({:e} = {:#010x}): CPU {:?}, emulated CUDA {:?}",
            values[i],
            values[i].to_bits(),
            &cpu[0].bytes[2 * i..2 * i + 2],
            &emulated[0].bytes[2 * i..2 * i + 2]
        );
    }
}
