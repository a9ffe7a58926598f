//! The index ops of SPEC §3.3 end to end: how they plan (an embedding `take` feeding a
//! `layernorm` is one kernel; an `arange` and a causal mask made from it are never
//! buffers), what they compute on the CPU against the f64 reference (ties, NaN, scans),
//! and out-of-range indices as errors in the data — on the CPU, through `tc run` (exit 1,
//! the message, nothing saved), and under the CUDA emulation.

#[path = "support/cli.rs"]
mod cli;

use cli::{npy_bytes, tc_in, tc_run_cpu};
use tc_compiler::schedule::{BufferKind, KernelKind};
use tc_compiler::{CompileOptions, Program};
use tc_runtime::HostTensor;

fn compile(source: &str) -> Program {
    tc_compiler::compile(source, &CompileOptions::default())
        .unwrap_or_else(|d| panic!("does not compile: {d:?}\n{source}"))
}

fn fused_kernels(p: &Program) -> Vec<&tc_compiler::schedule::Kernel> {
    p.plan
        .kernels
        .iter()
        .filter(|k| matches!(k.kind, KernelKind::Fused(_)))
        .collect()
}

fn i64_tensor(shape: &[u64], values: &[i64]) -> HostTensor {
    HostTensor {
        dtype: tc_compiler::ir::DType::I64,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn f32_tensor(shape: &[u64], values: &[f32]) -> HostTensor {
    HostTensor {
        dtype: tc_compiler::ir::DType::F32,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

const EMBED: &str = "\
dim V = 50
dim D = 16
dim T = 12
input tokens : i64[T]
param wte : f32[V, D]
h = layernorm(take(wte, tokens, axis=0), axis=-1)
output h
";

#[test]
fn an_embedding_take_feeding_layernorm_is_one_kernel() {
    let p = compile(EMBED);
    let kernels = fused_kernels(&p);
    assert_eq!(
        p.plan.kernels.len(),
        1,
        "one kernel for the lookup and the norm: {:#?}",
        p.plan.kernels
    );
    assert_eq!(kernels.len(), 1);
    // Only the output is in the arena: the gathered rows never are.
    let arena: Vec<&str> = p
        .plan
        .buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Arena)
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(arena, ["h"]);
    let text = tc_compiler::plan::print(&p.plan);
    assert!(text.contains("gather"), "{text}");
}

#[test]
fn an_arange_and_a_causal_mask_from_it_are_never_buffers() {
    let src = "\
dim S = 32
input s : f32[2, S, S]
pos = arange(S)
causal = reshape(pos, [S, 1]) >= pos
p = softmax(where(causal, s, -1e9), axis=-1)
y = s * f32(arange(S))
output p, y
";
    let p = compile(src);
    for b in &p.plan.buffers {
        assert!(
            !(b.dtype.is_integral() || b.shape == [32, 32]),
            "a buffer for an index value: {b:?}"
        );
    }
    // The softmax is one kernel, and it computes the mask from its own index.
    let k = p
        .plan
        .kernels
        .iter()
        .find(|k| k.ops.iter().any(|o| o == "softmax"))
        .expect("a softmax kernel");
    let KernelKind::Fused(f) = &k.kind else {
        panic!("softmax is a fused kernel");
    };
    let indices = f
        .body
        .iter()
        .filter(|i| matches!(i.op, tc_compiler::schedule::InstOp::Index { .. }))
        .count();
    assert_eq!(
        indices, 2,
        "row and column index in the softmax kernel: {f:#?}"
    );
}

#[test]
fn gpt_block_plans_no_sequence_by_sequence_mask() {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gpt_block.tx"),
    )
    .expect("examples/gpt_block.tx");
    let p = compile(&src);
    let s = p
        .checked
        .dims
        .iter()
        .find(|(n, _)| n == "S")
        .map(|d| d.1)
        .expect("dim S");
    // No buffer holds S×S elements per batch and head other than the attention scores
    // (f32): in particular no bool or integer mask, and no [S, S] one.
    for b in &p.plan.buffers {
        let ss = b.shape.len() >= 2 && b.shape[b.shape.len() - 2..] == [s, s];
        assert!(
            !(ss && b.dtype != tc_compiler::ir::DType::F32),
            "a mask buffer: {b:?}"
        );
        assert!(b.shape != [s, s], "an S×S buffer: {b:?}");
        assert!(
            !b.dtype.is_integral() || b.kind != BufferKind::Arena,
            "an index buffer: {b:?}"
        );
    }
}

#[test]
fn argmax_argmin_cumsum_one_hot_and_gather_match_the_reference() {
    let src = "\
input x : f32[3, 5]
input idx : i64[3, 2]
a = argmax(x, axis=1)
b = argmin(x, axis=0, keepdim=true)
c = argmax(x)
s = cumsum(x, axis=1)
t = cumsum(idx, axis=0)
o = one_hot(a, 5)
g = gather(x, idx, axis=1)
k = take(x, idx, axis=1)
output a, b, c, s, t, o, g, k
";
    let nan = f32::NAN;
    #[rustfmt::skip]
    let x = f32_tensor(&[3, 5], &[
        1.0, 3.0, 3.0, -2.0, 0.5,   // a tie: the first 3 wins
        nan, 7.0, nan, -9.0, 7.0,   // NaN is the largest and the smallest: the first NaN
        -1.0, -1.0, -1.0, -1.0, -1.0,
    ]);
    let idx = i64_tensor(&[3, 2], &[4, 0, 1, 1, 3, 2]);
    let checked = tc_compiler::check(src, &[]).expect("checks");
    let want = tc_runtime::reference::evaluate(&checked, &[x.clone(), idx.clone()], &[])
        .expect("reference");
    // The reference's own meaning, spelled out.
    assert_eq!(want[0].values, [1.0, 0.0, 0.0]);
    assert_eq!(want[1].values, [1.0, 2.0, 1.0, 1.0, 2.0]);
    assert_eq!(want[2].values, [5.0]);
    assert_eq!(want[4].values, [4.0, 0.0, 5.0, 1.0, 8.0, 3.0]);
    for fuse in [true, false] {
        let options = CompileOptions {
            plan: tc_compiler::schedule::PlanOptions {
                fuse,
                ..Default::default()
            },
            ..Default::default()
        };
        let p = tc_compiler::compile(src, &options).expect("compiles");
        let got = tc_runtime::cpu::run(&p.plan, &[x.clone(), idx.clone()], &[]).expect("runs");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let g: Vec<f64> = g.to_f32().into_iter().map(f64::from).collect();
            assert_eq!(g.len(), w.values.len());
            for (a, b) in g.iter().zip(&w.values) {
                assert!(
                    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "output {i} (fuse {fuse}): {g:?} vs {:?}",
                    w.values
                );
            }
        }
    }
}

/// A bad token id: `tc run` exits 1 naming the index tensor, the value and the range, and
/// saves nothing.
#[test]
fn an_out_of_range_index_is_an_error_in_the_data_and_nothing_is_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = cli::write(dir.path(), "embed.tx", EMBED);
    let mut data = Vec::new();
    for v in [3i64, 7, 50, 1, 0, 2, 9, 9, 4, -1, 5, 6] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    let tokens = npy_bytes(dir.path(), "tokens.npy", "<i8", "(12,)", &data);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("out dir");
    {
        let device = "cpu";
        tc_in(
            dir.path(),
            &[
                "run",
                &prog,
                "--device",
                device,
                "--input",
                &format!("tokens={tokens}"),
                "--save",
                out.to_str().expect("utf-8 path"),
            ],
        )
        .expect_code(1)
        .expect_mentions(&["index -1", "[0, 50)", "tokens", "wte"]);
        let saved: Vec<_> = std::fs::read_dir(&out).expect("out").collect();
        assert!(saved.is_empty(), "nothing is saved: {saved:?}");
    }
    // In range, the same program runs and saves.
    let mut good = Vec::new();
    for v in 0i64..12 {
        good.extend_from_slice(&(v * 4).to_le_bytes());
    }
    let tokens = npy_bytes(dir.path(), "good.npy", "<i8", "(12,)", &good);
    tc_run_cpu(
        dir.path(),
        &prog,
        &[
            "--input",
            &format!("tokens={tokens}"),
            "--save",
            out.to_str().expect("utf-8 path"),
        ],
    )
    .expect_code(0);
    assert!(out.join("h.npy").is_file());
}

#[test]
fn the_cpu_executor_reports_the_smallest_bad_index() {
    let p = compile(EMBED);
    let table = tc_runtime::data::random_tensor(0, "wte", tc_compiler::ir::DType::F32, &[50, 16]);
    let tokens = i64_tensor(&[12], &[3, 70, 50, 1, 0, 2, 9, 9, 4, 60, 5, 6]);
    let e = tc_runtime::cpu::run(&p.plan, &[tokens], &[table]).expect_err("out of range");
    let msg = e.to_string();
    assert!(
        msg.contains("index 50 is out of range [0, 50)") && msg.contains("`tokens`"),
        "{msg}"
    );
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn the_emulated_gpu_kernel_flags_an_out_of_range_index() {
    use tc_runtime::cuda::emu::{self, EmuError, EmuOptions};
    if let Err(e) = emu::compiler() {
        panic!("no host C++ compiler: {e}");
    }
    let options = CompileOptions {
        plan: tc_compiler::codegen::cuda_plan_options(&Default::default()),
        ..Default::default()
    };
    let p = tc_compiler::compile(EMBED, &options).expect("compiles");
    let kernels = tc_compiler::codegen::emit_kernels(&p.plan).expect("emits");
    assert!(kernels.iter().any(|k| !k.checks.is_empty()));
    let table = tc_runtime::data::random_tensor(0, "wte", tc_compiler::ir::DType::F32, &[50, 16]);
    let bad = i64_tensor(&[12], &[3, 70, 50, 1, 0, 2, 9, 9, 4, 60, 5, 6]);
    for reverse in [false, true] {
        let opts = EmuOptions {
            reverse,
            ..EmuOptions::default()
        };
        match emu::run(
            &p.plan,
            &kernels,
            std::slice::from_ref(&bad),
            std::slice::from_ref(&table),
            &opts,
        ) {
            Err(EmuError::IndexOutOfRange(msg)) => assert!(
                msg.contains("index 50 is out of range [0, 50)") && msg.contains("`tokens`"),
                "{msg}"
            ),
            other => panic!("expected an index error, got {other:?}"),
        }
    }
    // In range: the emulation agrees with the CPU.
    let good = i64_tensor(&[12], &[3, 7, 49, 1, 0, 2, 9, 9, 4, 0, 5, 6]);
    let cpu = tc_runtime::cpu::run(
        &p.plan,
        std::slice::from_ref(&good),
        std::slice::from_ref(&table),
    )
    .expect("cpu");
    let gpu =
        emu::run(&p.plan, &kernels, &[good], &[table], &EmuOptions::default()).expect("emulated");
    let (a, b) = (cpu[0].to_f32(), gpu[0].to_f32());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn the_random_program_generator_draws_every_index_op() {
    let programs: Vec<String> = (0..400).map(tc_tests::gen::program).collect();
    for op in [
        "take(", "gather(", "one_hot(", "argmax(", "argmin(", "cumsum(", "arange(",
    ] {
        let n = programs.iter().filter(|p| p.contains(op)).count();
        assert!(n >= 5, "{op} in only {n} of 400 programs");
    }
    // Every one checks: indices are in range by construction, shapes fit.
    for p in &programs {
        tc_compiler::check(p, &[]).unwrap_or_else(|d| panic!("{d:?}\n{p}"));
    }
}

/// The typed interpreter (`cpu::typed`) walks rows in blocks of 1024 elements: masks from
/// `arange`, ties of `argmax`/`argmin`, running sums (f32 and wrapping i32), wrapping
/// products, gathers, a one-hot and NaN first met in the second block (`log` of negatives
/// past 1500) over rows of 2500 (three blocks, the last partial), and
/// an integer pointwise kernel longer than one parallel task (16384), against the reference.
#[test]
fn integer_kernels_over_several_blocks_match_the_reference() {
    let src = "\
dim N = 3
dim V = 2500
dim M = 40000
input x : f32[N, V]
input k : i32[N, V]
input z : i64[M]
pos = arange(V)
m = where(pos <= reshape(arange(N), [N, 1]) * 1100, x, -1.0)
t = floor(x * 2)
a = argmax(t, axis=1)
b = argmin(t, axis=-1)
c = cumsum(k * 1000003, axis=1)
w = k * 1000003 * 7919
s = cumsum(x, axis=1)
g = gather(x, reshape(a, [N, 1]), axis=1)
oh = one_hot(b, 2500)
y = z * z - 3 * z + (z > 2)
n = where(pos > 1500, log(x), x)
na = argmax(n, axis=1)
nb = argmin(n, axis=1)
output m, a, b, c, w, s, g, oh, y, na, nb
";
    for seed in 0..2 {
        if let Err(e) = tc_tests::differential(src, &[], seed) {
            panic!("seed {seed}: {e}");
        }
    }
}

/// A `take` of whole rows by a row's one index, in a kernel with a reduction (the index a
/// row value: `cpu::typed` reads the picked row as a load, in runs): the rows come out as
/// the table's very bytes for every dtype, from a contiguous and a transposed table, over
/// rows of 1100 (two blocks); the sums agree with the plain path of an unfused program;
/// and a bad index, negative or too large, is the same error in the data as elsewhere.
#[test]
fn a_take_of_whole_rows_copies_them_in_every_dtype_and_layout() {
    use tc_compiler::ir::DType;
    let tokens: Vec<i64> = (0..37).map(|t| (t * 7 + 3) % 40).collect();
    for (dt, name) in [
        (DType::F32, "f32"),
        (DType::F16, "f16"),
        (DType::BF16, "bf16"),
        (DType::I32, "i32"),
        (DType::I64, "i64"),
    ] {
        for transposed in [false, true] {
            let table_decl = if transposed {
                format!("input w : {name}[D, V]\nt = transpose(w)")
            } else {
                format!("input w : {name}[V, D]\nt = w")
            };
            let src = format!(
                "dim V = 40\ndim D = 1100\ndim T = 37\ninput tokens : i64[T]\n{table_decl}\n\
                 e = take(t, tokens, axis=0)\ns = sum(e, axis=-1)\noutput e, s\n"
            );
            let p = compile(&src);
            let shape: Vec<u64> = if transposed {
                vec![1100, 40]
            } else {
                vec![40, 1100]
            };
            let w = tc_runtime::data::random_tensor(5, "w", dt, &shape);
            let ids = i64_tensor(&[37], &tokens);
            let got = tc_runtime::cpu::run(&p.plan, &[ids.clone(), w.clone()], &[])
                .unwrap_or_else(|e| panic!("{name} (transposed {transposed}): {e}"));
            let size = dt.size() as usize;
            let at = |v: usize, d: usize| if transposed { d * 40 + v } else { v * 1100 + d };
            for (t, &v) in tokens.iter().enumerate() {
                for d in 0..1100 {
                    let (i, o) = (at(v as usize, d) * size, (t * 1100 + d) * size);
                    assert_eq!(
                        w.bytes[i..i + size],
                        got[0].bytes[o..o + size],
                        "{name} (transposed {transposed}): row {t}, column {d}"
                    );
                }
            }
            // The rows and sums of an unfused program, whose take is a gather by an index
            // per element and whose sum is a kernel of its own (block sums for floats: the
            // same sums to rounding).
            let options = CompileOptions {
                plan: tc_compiler::schedule::PlanOptions {
                    fuse: false,
                    ..Default::default()
                },
                ..Default::default()
            };
            let unfused = tc_compiler::compile(&src, &options).expect("compiles");
            let plain = tc_runtime::cpu::run(&unfused.plan, &[ids.clone(), w.clone()], &[])
                .expect("runs unfused");
            assert_eq!(got[0].bytes, plain[0].bytes, "{name}: the rows");
            for (a, b) in got[1].to_f32().iter().zip(plain[1].to_f32()) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{name} (transposed {transposed}): the sums {a} vs {b}"
                );
            }
            // Bad indices: the smallest is reported, negative or not.
            for (bad, want) in [
                (vec![(3, 40i64), (9, 41)], "index 40"),
                (vec![(5, -2), (30, 70)], "index -2"),
            ] {
                let mut ids = tokens.clone();
                for (k, x) in bad {
                    ids[k] = x;
                }
                let e = tc_runtime::cpu::run(&p.plan, &[i64_tensor(&[37], &ids), w.clone()], &[])
                    .expect_err("out of range");
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("{want} is out of range [0, 40)"))
                        && msg.contains("`tokens`"),
                    "{name}: {msg}"
                );
            }
        }
    }
}
