//! Fused attention (`fuse::attention`, `schedule::AttentionKernel`, `cpu::attention`): the
//! pattern is found where it should be and refused, with a reason in `tc emit --plan`, where
//! it should not; the CPU kernel matches the f64 reference on random shapes, dtypes, masks
//! and biases in every plan variant; and the memory figures of the examples: the scores are
//! never planned, while naive and eager still count them.

use tc_compiler::schedule::KernelKind;
use tc_compiler::{CompileOptions, PlanOptions, Program};
use tc_tests::attention::{programs, Sizes};
use tc_tests::{differential, examples};

fn compile(src: &str, dims: &[(&str, u64)], plan: PlanOptions) -> Program {
    let options = CompileOptions {
        dims: dims.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        plan,
    };
    match tc_compiler::compile(src, &options) {
        Ok(p) => p,
        Err(d) => panic!("does not compile: {d:?}\n{src}"),
    }
}

fn attention_kernels(p: &Program) -> usize {
    p.plan
        .kernels
        .iter()
        .filter(|k| matches!(k.kind, KernelKind::Attention(_)))
        .count()
}

#[test]
fn random_attention_programs_fuse_and_match_the_reference() {
    let mut failures = Vec::new();
    for (label, src) in programs(Sizes::Cpu, 24) {
        let p = compile(&src, &[], PlanOptions::default());
        if attention_kernels(&p) != 1 {
            failures.push(format!(
                "{label}: not fused into one attention kernel:\n{}",
                tc_compiler::plan::print(&p.plan)
            ));
            continue;
        }
        if let Err(e) = differential(&src, &[], 7) {
            failures.push(format!("{label}: {e}\n{src}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn fully_masked_rows_are_nan_as_in_pytorch_and_others_are_exact() {
    // A mask of -inf on every key of some rows: PyTorch's softmax gives NaN there; a key
    // masked only in some tiles must not disturb the other rows.
    let src = "dim S = 70\ndim T = 300\ninput q : f32[S, 16]\ninput k : f32[T, 16]\n\
               input v : f32[T, 8]\ninput m : f32[S, T]\n\
               out = softmax(q @ transpose(k) + log(m), axis=-1) @ v\noutput out\n";
    let p = compile(src, &[], PlanOptions::default());
    assert_eq!(attention_kernels(&p), 1);
    let q = tc_runtime::data::random_tensor(1, "q", tc_compiler::ir::DType::F32, &[70, 16]);
    let k = tc_runtime::data::random_tensor(2, "k", tc_compiler::ir::DType::F32, &[300, 16]);
    let v = tc_runtime::data::random_tensor(3, "v", tc_compiler::ir::DType::F32, &[300, 8]);
    // m = 0 (log: -inf) for rows 0..10 entirely and for keys 0..260 of rows 10..20 (only the
    // last tile of keys is visible there); 1 elsewhere.
    let mut m = vec![1.0f32; 70 * 300];
    for r in 0..20 {
        let upto = if r < 10 { 300 } else { 260 };
        for c in 0..upto {
            m[r * 300 + c] = 0.0;
        }
    }
    let mt = tc_runtime::HostTensor::from_f32(tc_compiler::ir::DType::F32, vec![70, 300], &m);
    let inputs = vec![q, k, v, mt];
    let got = tc_runtime::cpu::run(&p.plan, &inputs, &[]).expect("runs");
    let unfused = compile(
        src,
        &[],
        PlanOptions {
            fuse: false,
            ..PlanOptions::default()
        },
    );
    let want = tc_runtime::cpu::run(&unfused.plan, &inputs, &[]).expect("runs");
    let (g, w) = (got[0].to_f32(), want[0].to_f32());
    for r in 0..70 {
        for c in 0..8 {
            let (x, y) = (g[r * 8 + c], w[r * 8 + c]);
            if r < 10 {
                assert!(x.is_nan() && y.is_nan(), "row {r}: {x} vs {y}");
            } else {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "row {r} col {c}: {x} vs {y}"
                );
            }
        }
    }
}

/// Programs close to attention that must keep their stored scores, and the reason
/// `tc emit --plan` gives.
const MISSES: &[(&str, &str, &str)] = &[
    (
        "scores also an output",
        "input q : f32[8, 4]\ninput k : f32[8, 4]\ninput v : f32[8, 4]\ns = q @ transpose(k)\n\
         out = softmax(s, axis=-1) @ v\noutput out, s\n",
        "the scores are read by another kernel or are an output",
    ),
    (
        "probabilities also an output",
        "input q : f32[8, 4]\ninput k : f32[8, 4]\ninput v : f32[8, 4]\n\
         p = softmax(q @ transpose(k), axis=-1)\nout = p @ v\noutput out, p\n",
        "the probabilities are an output",
    ),
    (
        "the scaled scores also an output",
        "input q : f32[8, 4]\ninput k : f32[8, 4]\ninput v : f32[8, 4]\n\
         x = q @ transpose(k) * 2\nout = softmax(x, axis=-1) @ v\noutput out, x\n",
        "the softmax kernel stores more than the probabilities",
    ),
    (
        "probabilities on the right of the product",
        "input q : f32[8, 4]\ninput k : f32[8, 4]\ninput v : f32[4, 8]\n\
         p = softmax(q @ transpose(k), axis=-1)\nout = v @ p\noutput out\n",
        "the probabilities are not only the left operand of `@ v`",
    ),
    (
        "log_softmax, not softmax",
        "input q : f32[8, 4]\ninput k : f32[8, 4]\ninput v : f32[8, 4]\n\
         out = log_softmax(q @ transpose(k), axis=-1) @ v\noutput out\n",
        "the kernel between the products is not softmax(…)",
    ),
    (
        "head size above the kernel's",
        "input q : f32[8, 256]\ninput k : f32[8, 256]\ninput v : f32[8, 4]\n\
         out = softmax(q @ transpose(k), axis=-1) @ v\noutput out\n",
        "head size 256 is above the fused kernel's 128",
    ),
];

#[test]
fn near_misses_keep_their_scores_and_say_why() {
    for (what, src, why) in MISSES {
        let p = compile(src, &[], PlanOptions::default());
        assert_eq!(attention_kernels(&p), 0, "{what}: fused");
        let text = tc_compiler::plan::print(&p.plan);
        assert!(
            text.contains(why) && text.contains("not fused"),
            "{what}: the plan does not say `{why}`:\n{text}"
        );
        differential(src, &[], 3).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn no_fuse_plans_no_attention_kernel() {
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "attention")
        .expect("examples/attention.tx");
    let p = compile(
        &src,
        &[],
        PlanOptions {
            fuse: false,
            ..PlanOptions::default()
        },
    );
    assert_eq!(attention_kernels(&p), 0);
}

const MIB: u64 = 1 << 20;

#[test]
fn attention_examples_never_plan_the_scores() {
    let cuda = tc_compiler::codegen::cuda_plan_options(&PlanOptions::default());
    for (name, planned_with_inputs, eager_at_least) in [
        // q, k, v (inputs) and out: 4 × 32 MiB; no cuBLAS workspace (no cuBLAS call).
        ("attention", 128 * MIB, 1024 * MIB),
        // x and the weights (4 + 4·4 + 2·16 MiB and the vectors) and the arena.
        ("transformer_block", 0, 0),
    ] {
        let (_, src) = examples()
            .into_iter()
            .find(|(n, _)| n == name)
            .expect("the example");
        for options in [PlanOptions::default(), cuda.clone()] {
            let p = compile(&src, &[], options);
            assert_eq!(attention_kernels(&p), 1, "{name}");
            let peaks = &p.memory.peaks;
            if planned_with_inputs > 0 {
                assert_eq!(peaks.planned.with_inputs, planned_with_inputs, "{name}");
            }
            assert!(peaks.eager.with_inputs >= eager_at_least, "{name}");
            // No buffer of the plan has the scores' shape.
            for b in &p.plan.buffers {
                assert!(
                    !(b.shape.len() == 4 && b.shape[2] == 1024 && b.shape[3] == 1024),
                    "{name}: {} is planned",
                    b.name
                );
            }
            assert!(
                p.memory
                    .notes
                    .iter()
                    .any(|n| n.contains("never materialised")),
                "{name}: the report does not say the scores are never materialised"
            );
        }
    }
}

/// `examples/gpt_block.tx`: `q`, `k` and `v` are slices of one `xn @ w_qkv` product and the
/// attention is causal, its mask compared from `arange`s. Both are one flash kernel that
/// reads the three thirds of that buffer in place and computes the mask from the positions:
/// no `S×S` buffer (mask, scores or probabilities) is planned, on either target, and the
/// planned peak is the lower bound.
#[test]
fn gpt_block_causal_attention_on_sliced_qkv_is_one_kernel() {
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "gpt_block")
        .expect("examples/gpt_block.tx");
    let cuda = tc_compiler::codegen::cuda_plan_options(&PlanOptions::default());
    for options in [PlanOptions::default(), cuda] {
        let p = compile(&src, &[], options);
        let text = tc_compiler::plan::print(&p.plan);
        assert_eq!(attention_kernels(&p), 1, "{text}");
        let a = p
            .plan
            .kernels
            .iter()
            .find_map(|k| match &k.kind {
                KernelKind::Attention(a) => Some(a),
                _ => None,
            })
            .expect("an attention kernel");
        // One buffer, its thirds at 0, D and 2·D (D = 512), rows 3·D apart.
        assert!(
            a.q.buffer == a.k.buffer && a.k.buffer == a.v.buffer,
            "{text}"
        );
        assert_eq!(
            (a.q.offset, a.k.offset, a.v.offset),
            (0, 512, 1024),
            "{text}"
        );
        assert_eq!(a.q.strides[2], 1536, "{text}");
        // The mask is two index maps in the prologue, compared there: no load.
        assert!(a.loads.is_empty(), "{text}");
        for b in &p.plan.buffers {
            let s = &b.shape;
            assert!(
                !(s.len() >= 2 && s[s.len() - 2] == 256 && s[s.len() - 1] == 256),
                "{} {:?} is planned:\n{text}",
                b.name,
                b.shape
            );
        }
        let peaks = &p.memory.peaks;
        assert_eq!(
            peaks.planned.without_inputs,
            peaks.lower_bound.without_inputs
        );
        // The head-merge copy is the attention kernel's epilogue: it writes `[B, S, H, Dh]`
        // (strides over `[B, H, S, Dh]`: 131072, 64, 512, 1) and no copy kernel follows.
        head_merge_is_written_by_attention(&p, &[131072, 64, 512, 1]);
    }
}

/// The plan of a block whose head-merge copy `reshape(permute(att @ v, [0, 2, 1, 3]), …)`
/// the attention kernel writes: no kernel after it reads its output but a product, no
/// kernel copies, the attention kernel's output strides are `strides` (the merged layout)
/// with a one-cast epilogue, and the plan says nothing was left out.
fn head_merge_is_written_by_attention(p: &Program, strides: &[i64]) {
    let text = tc_compiler::plan::print(&p.plan);
    let (at, a) = p
        .plan
        .kernels
        .iter()
        .enumerate()
        .find_map(|(i, k)| match &k.kind {
            KernelKind::Attention(a) => Some((i, a)),
            _ => None,
        })
        .expect("an attention kernel");
    assert_eq!(a.out_strides, strides, "{text}");
    let e = a.epilogue.as_ref().expect("an epilogue");
    assert_eq!(e.body.len(), 2, "{text}");
    for k in &p.plan.kernels[at + 1..] {
        assert!(!k.ops.iter().any(|o| o == "copy"), "{}: {text}", k.name);
        if tc_compiler::memory::liveness::reads(k).contains(&a.out) {
            assert!(
                matches!(k.kind, KernelKind::MatMul(_)),
                "{}: {text}",
                k.name
            );
        }
    }
    assert!(!text.contains("epilogue not fused"), "{text}");
}

#[test]
fn transformer_block_head_merge_is_no_copy() {
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "transformer_block")
        .expect("examples/transformer_block.tx");
    let cuda = tc_compiler::codegen::cuda_plan_options(&PlanOptions::default());
    for options in [PlanOptions::default(), cuda] {
        let p = compile(&src, &[], options);
        // B 4, H 16, S 1024, Dh 64: [B, S, H, Dh] seen over [B, H, S, Dh].
        head_merge_is_written_by_attention(&p, &[1048576, 64, 1024, 1]);
        // One kernel fewer than with the copy (12), and no `[B, H, S, Dh]` buffer.
        assert_eq!(p.plan.kernels.len(), 11);
        assert!(!p.plan.buffers.iter().any(|b| b.shape == [4, 16, 1024, 64]));
    }
}

/// Epilogues the attention kernel cannot compute: its output stays stored, the kernel that
/// reads it stays, and the plan says why.
const EPILOGUE_MISSES: &[(&str, &str, &str)] = &[
    (
        "a reduction of the output",
        "input q : f32[2, 8, 4]\ninput k : f32[2, 8, 4]\ninput v : f32[2, 8, 4]\n\
         out = sum(softmax(q @ transpose(k), axis=-1) @ v, axis=-1)\noutput out\n",
        "that kernel is not elementwise",
    ),
    (
        "the output read by two kernels",
        "input q : f32[2, 8, 4]\ninput k : f32[2, 8, 4]\ninput v : f32[2, 8, 4]\n\
         a = softmax(q @ transpose(k), axis=-1) @ v\nout = a * 2\nm = sum(a, axis=-1)\n\
         output out, m\n",
        "the output is read by more than one kernel",
    ),
    (
        "the output also an output",
        "input q : f32[2, 8, 4]\ninput k : f32[2, 8, 4]\ninput v : f32[2, 8, 4]\n\
         a = softmax(q @ transpose(k), axis=-1) @ v\nout = a * 2\noutput out, a\n",
        "the output is also a program output",
    ),
    (
        "a broadcast read of the output",
        "input q : f32[8, 4]\ninput k : f32[8, 4]\ninput v : f32[8, 4]\n\
         a = softmax(q @ transpose(k), axis=-1) @ v\nout = reshape(a, [8, 1, 4]) + reshape(a, [1, 8, 4])\n\
         output out\n",
        "",
    ),
];

#[test]
fn epilogues_left_out_say_why() {
    for (what, src, why) in EPILOGUE_MISSES {
        let p = compile(src, &[], PlanOptions::default());
        assert_eq!(attention_kernels(&p), 1, "{what}");
        let text = tc_compiler::plan::print(&p.plan);
        let a = p
            .plan
            .kernels
            .iter()
            .find_map(|k| match &k.kind {
                KernelKind::Attention(a) => Some(a),
                _ => None,
            })
            .expect("attention");
        assert!(a.epilogue.is_none(), "{what}: {text}");
        assert!(
            text.contains("epilogue not fused") && text.contains(why),
            "{what}: the plan does not say `{why}`:\n{text}"
        );
        differential(src, &[], 3).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// Every epilogue of `tc_tests::attention`'s programs is taken into the attention kernel:
/// it is the plan's last kernel, with an epilogue exactly when the program has one.
#[test]
fn elementwise_epilogues_join_the_attention_kernel() {
    for (label, src) in programs(Sizes::Cpu, 12) {
        let p = compile(&src, &[], PlanOptions::default());
        let text = tc_compiler::plan::print(&p.plan);
        let Some(KernelKind::Attention(a)) = p.plan.kernels.last().map(|k| &k.kind) else {
            panic!("{label}: attention is not the last kernel:\n{text}");
        };
        // (The head merge of a single head is a view, no copy: nothing to take in.)
        let has = ["epilogue 2", "epilogue 3"]
            .iter()
            .any(|e| label.contains(e))
            || (label.contains("epilogue 1") && !label.contains(" H=1 "));
        assert_eq!(a.epilogue.is_some(), has, "{label}:\n{text}");
    }
}

/// Causal and sliding-window masks compared from `arange`s: the CPU kernel computes no key
/// tile the mask hides entirely from a tile of queries (its tile log counts them: about
/// half of them for a causal mask), and the results still match the reference. A mask of
/// `-inf` (`-1e39` rounds to it) is skipped by its position alone; a finite one (`-1e9`) once the rows' running
/// max is far above it.
#[test]
fn masked_key_tiles_are_not_computed_on_the_cpu() {
    // 1000 queries and keys: 8 tiles of 128 each way; causal leaves 1 + 2 + … + 8 = 36 of
    // the 64 tiles per head.
    for (what, mask, dh, want) in [
        (
            "causal, -inf",
            "where(qi >= kj, s, -1e39)",
            24,
            Some(2 * 36),
        ),
        ("causal, -1e9", "where(kj > qi, -1e9, s)", 40, Some(2 * 36)),
        (
            "sliding window of 200, -inf",
            "where(logical_and(qi >= kj, qi - kj < 200), s, -1e39)",
            56,
            None,
        ),
    ] {
        let src = format!(
            "dim S = 1000\ndim Dh = {dh}\ninput q : f32[2, S, Dh]\ninput k : f32[2, S, Dh]\n\
             input v : f32[2, S, 8]\nqi = reshape(arange(S), [S, 1])\nkj = arange(S)\n\
             s = q @ transpose(k) / sqrt(Dh)\nout = softmax({mask}, axis=-1) @ v\noutput out\n"
        );
        let p = compile(&src, &[], PlanOptions::default());
        assert_eq!(attention_kernels(&p), 1, "{what}");
        differential(&src, &[], 5).unwrap_or_else(|e| panic!("{what}: {e}"));
        let log = tc_runtime::cpu::TILE_LOG.lock().expect("the tile log");
        let run = log
            .iter()
            .rev()
            .find(|t| t.dims == (1000, 1000, dh, 8))
            .expect("the attention kernel ran");
        assert_eq!(run.all, 2 * 64, "{what}");
        match want {
            Some(n) => assert_eq!(run.computed, n, "{what}"),
            None => assert!(run.computed < run.all / 2, "{what}: {run:?}"),
        }
    }
}

/// The CUDA kernel of `examples/gpt_block.tx`'s causal attention walks, for each tile of 32
/// queries, only the key tiles its mask does not hide: a table of ranges in constant memory
/// (36 of the 8 × 8 tiles of 32 at S = 256), and the masked tiles (a finite `-1e9`) after
/// them, each skipped by a block vote once every row's running max is far above the mask.
#[test]
fn cuda_attention_walks_only_the_unmasked_key_tiles() {
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "gpt_block")
        .expect("examples/gpt_block.tx");
    let cuda = tc_compiler::codegen::cuda_plan_options(&PlanOptions::default());
    let p = compile(&src, &[], cuda);
    let kernels = tc_compiler::codegen::emit_kernels(&p.plan).expect("CUDA C");
    let at = p
        .plan
        .kernels
        .iter()
        .position(|k| matches!(k.kind, KernelKind::Attention(_)))
        .expect("attention");
    let k = kernels
        .iter()
        .find(|k| k.kernel_index == at)
        .expect("the attention kernel's CUDA C");
    let table =
        "__constant__ int k2_key_tiles[16] = {0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8};";
    assert!(k.source.contains(table), "{}", k.source);
    assert!(
        k.source.contains("(36 of 64 tiles computed)"),
        "{}",
        k.source
    );
    assert!(k.source.contains("if (skip) continue;"), "{}", k.source);
}

/// Under the CUDA emulation (`tc_runtime::cuda::emu`, which counts the kernel's
/// `TC_KEY_TILE()`, empty on the device), a causal attention over S = 1000 queries and keys
/// (not a multiple of the tile) computes exactly the key tiles its mask leaves — for each
/// tile of queries, the key tiles holding a key at or before its last query — and gives the
/// reference's results. With a mask of `-inf` the masked tiles are never visited; with a
/// finite `-1e9` (as `gpt_block`) each is skipped by the block vote. The same kernel with
/// its skipping taken out (every query tile's range made whole, the vote's `continue`
/// removed) computes every tile and must give bit for bit the same outputs: a skipped tile
/// would have added exactly nothing.
#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emulated_cuda_attention_computes_only_the_unmasked_key_tiles() {
    use tc_compiler::codegen::attention::{keys_per_tile, BQ};
    use tc_runtime::cuda::emu;
    if let Err(e) = emu::compiler() {
        panic!("no host C++ compiler: {e}");
    }
    let s = 1000u64;
    for (what, mask, dh) in [
        ("causal, -inf", "where(qi >= kj, s, -1e39)", 24),
        ("causal, -1e9", "where(kj > qi, -1e9, s)", 40),
    ] {
        let src = format!(
            "dim S = {s}\ndim Dh = {dh}\ninput q : f32[2, S, Dh]\ninput k : f32[2, S, Dh]\n\
             input v : f32[2, S, 8]\nqi = reshape(arange(S), [S, 1])\nkj = arange(S)\n\
             s = q @ transpose(k) / sqrt(Dh)\nout = softmax({mask}, axis=-1) @ v\noutput out\n"
        );
        let cuda = tc_compiler::codegen::cuda_plan_options(&PlanOptions::default());
        let p = compile(&src, &[], cuda);
        assert_eq!(attention_kernels(&p), 1, "{what}");
        let at = p
            .plan
            .kernels
            .iter()
            .position(|k| matches!(k.kind, KernelKind::Attention(_)))
            .expect("attention");
        let kernels = tc_compiler::codegen::emit_kernels(&p.plan).expect("CUDA C");
        let k = kernels
            .iter()
            .find(|k| k.kernel_index == at)
            .expect("the attention kernel's CUDA C");

        // The tiles: BQ queries by bk keys; query tile t's last query is
        // min((t + 1)·BQ, S) - 1, and it computes key tiles 0 ..= that / bk.
        let bk = keys_per_tile(dh, 8);
        let (qtiles, ktiles) = (s.div_ceil(BQ), s.div_ceil(bk));
        let per_head: u64 = (0..qtiles)
            .map(|t| (((t + 1) * BQ).min(s) - 1) / bk + 1)
            .sum();
        // 32 × 32 tiles of 32: 1 + 2 + … + 32 = 528 of 1024 per head.
        assert_eq!((BQ, bk, per_head), (32, 32, 528), "{what}");

        // Skipping taken out: every range whole, and the vote's `continue` gone.
        let table = format!("{}_key_tiles[{}] = {{", k.name, 2 * qtiles);
        let (head, rest) = k.source.split_once(&table).expect("the key-tile table");
        let (_, tail) = rest.split_once("};").expect("the table's end");
        let whole = vec![format!("0, {ktiles}"); qtiles as usize].join(", ");
        let mut full = format!("{head}{table}{whole}}};{tail}");
        if mask.contains("-1e9") {
            assert!(full.contains("if (skip) continue;"), "{}", k.source);
            full = full.replace("if (skip) continue;", "");
        }
        let mut unskipped = kernels.clone();
        unskipped[at].source = full;

        let checked = tc_compiler::check(&src, &[]).expect("checks");
        let inputs: Vec<_> = checked
            .inputs
            .iter()
            .map(|l| tc_runtime::data::random_leaf(&checked, l, 11))
            .collect();
        let want = tc_runtime::reference::evaluate(&checked, &inputs, &[]).expect("reference");
        let opts = emu::EmuOptions::default();
        let skipping = emu::run_counted(&p.plan, &kernels, &inputs, &[], &opts)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let every = emu::run_counted(&p.plan, &unskipped, &inputs, &[], &opts)
            .unwrap_or_else(|e| panic!("{what}, skipping taken out: {e}"));
        assert_eq!(
            skipping.key_tiles.get(&k.name),
            Some(&(2 * per_head)),
            "{what}: key tiles computed"
        );
        assert_eq!(
            every.key_tiles.get(&k.name),
            Some(&(2 * qtiles * ktiles)),
            "{what}: key tiles computed with skipping taken out"
        );
        tc_tests::compare(
            "out",
            &skipping.outputs[0],
            &want[0],
            tc_tests::tolerance_for(&checked, checked.outputs[0].node),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            skipping.outputs[0].bytes == every.outputs[0].bytes,
            "{what}: skipping masked tiles changed the results"
        );
    }
}
