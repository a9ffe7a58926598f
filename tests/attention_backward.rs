//! The attention backward (`fuse::attention_backward`, `schedule::AttentionBackwardKernel`,
//! `cpu::attention_backward`): training steps over the random attention programs fuse
//! their backward into one kernel (and their forward into another) and match the f64
//! oracle on the CPU in every plan variant; programs whose backward cannot fuse say why in
//! `tc emit --plan` and keep their stored probabilities; and `train_block`'s plan, in f32
//! and in bf16, stores no S×S buffer.

use tc_compiler::schedule::KernelKind;
use tc_compiler::{CompileOptions, Program};
use tc_tests::attention::{backward_fuses, programs, training_step, Sizes};
use tc_tests::{differential, examples};

fn compile(src: &str) -> Program {
    match tc_compiler::compile(src, &CompileOptions::default()) {
        Ok(p) => p,
        Err(d) => panic!("does not compile: {d:?}\n{src}"),
    }
}

fn count(p: &Program, backward: bool) -> usize {
    p.plan
        .kernels
        .iter()
        .filter(|k| match k.kind {
            KernelKind::AttentionBackward(_) => backward,
            KernelKind::Attention(_) => !backward,
            _ => false,
        })
        .count()
}

#[test]
fn random_attention_training_steps_fuse_the_backward_and_match_the_reference() {
    let mut failures = Vec::new();
    let wrts: [&[&str]; 4] = [&["q", "k", "v"], &["q"], &["k", "v"], &["v", "q"]];
    for (i, (label, src)) in programs(Sizes::Cpu, 20).into_iter().enumerate() {
        let step = training_step(&src, wrts[i % wrts.len()]);
        let p = compile(&step);
        // Fused: programs of every dtype whose prologue's derivative needs no forward value
        // computed from the scores (not `tanh`, not `maximum`: prologues 2 and 4), unless
        // the fused plan exceeds eager's and the program runs unfused (memory first); the
        // others must say why.
        let fusable = backward_fuses(&label);
        let text = tc_compiler::plan::print(&p.plan);
        if !fusable && count(&p, true) == 0 && !text.contains("backward not fused") {
            failures.push(format!("{label}: no reason given:\n{text}"));
        }
        if fusable && !p.plan.unfused_fallback && (count(&p, true) != 1 || count(&p, false) != 1) {
            failures.push(format!(
                "{label}: not one attention and one attention backward kernel:\n{}",
                tc_compiler::plan::print(&p.plan)
            ));
            continue;
        }
        if let Err(e) = differential(&step, &[], 11 + i as u64) {
            failures.push(format!("{label}: {e}\n{step}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_backward_that_does_not_match_says_why_and_stores_the_probabilities() {
    // The probabilities are also an output: the forward keeps them, and so does the
    // backward.
    let src = "dim S = 40\ninput q : f32[S, 16]\ninput k : f32[S, 16]\ninput v : f32[S, 16]\n\
               p = softmax(q @ transpose(k), axis=-1)\nout = p @ v\nloss = sum(out * out)\n\
               g = grad(loss, q)\noutput loss, g, p\n";
    let p = compile(src);
    assert_eq!(count(&p, true), 0);
    let text = tc_compiler::plan::print(&p.plan);
    assert!(
        text.contains("backward not fused: the probabilities are an output"),
        "{text}"
    );
    differential(src, &[], 3).expect("matches the reference");
    // A learnt bias on the scores: its gradient is a sum of the scores' gradient, which
    // another kernel reads, so that gradient is stored.
    let src = "dim S = 40\ninput q : f32[S, 16]\ninput k : f32[S, 16]\ninput v : f32[S, 16]\n\
               param bias : f32[S, S]\nout = softmax(q @ transpose(k) + bias, axis=-1) @ v\n\
               loss = sum(out * out)\ng = grad(loss, bias)\ngq = grad(loss, q)\noutput loss, g, gq\n";
    let p = compile(src);
    assert_eq!(count(&p, true), 0);
    let text = tc_compiler::plan::print(&p.plan);
    assert!(text.contains("backward not fused:"), "{text}");
    differential(src, &[], 4).expect("matches the reference");
}

/// Sizes that fill no tile and no panel evenly (`cpu::attention_backward` takes tiles of 128
/// queries and keys and packs operands in panels of 16 columns): a head size of 20, values
/// of 12, 200 queries against 300 keys, scaled by a constant that is not a power of two
/// (a divide folded into the score products) and by one that is (a multiply); the fused
/// backward matches the reference.
#[test]
fn ragged_tiles_and_panels_match_the_reference() {
    for scale in ["/ 3", "* 0.25"] {
        let src = format!(
            "input q : f32[2, 200, 20]\ninput k : f32[2, 300, 20]\ninput v : f32[2, 300, 12]\n\
             input w : f32[2, 200, 12]\n\
             out = softmax(q @ transpose(k) {scale}, axis=-1) @ v\nloss = sum(out * w)\n\
             gq = grad(loss, q)\ngk = grad(loss, k)\ngv = grad(loss, v)\noutput gq, gk, gv\n"
        );
        let p = compile(&src);
        assert_eq!(count(&p, true), 1, "{}", tc_compiler::plan::print(&p.plan));
        differential(&src, &[], 5).expect("matches the reference");
    }
}

/// Phase 1 keeps its first walk's tiles of logits and `dp` for the second where the keys
/// fit (`cpu::Options::keep_tiles`, up to 512 keys): the same bits as computing them
/// again. Past that (700 keys) it computes them again, and matches the reference.
#[test]
fn kept_tiles_give_the_bits_of_tiles_computed_again() {
    for keys in [300, 700] {
        let src = format!(
            "input q : f32[2, 150, 24]\ninput k : f32[2, {keys}, 24]\n\
             input v : f32[2, {keys}, 16]\ninput w : f32[2, 150, 16]\n\
             out = softmax(q @ transpose(k) / 5, axis=-1) @ v\nloss = sum(out * w)\n\
             gq = grad(loss, q)\ngk = grad(loss, k)\ngv = grad(loss, v)\noutput gq, gk, gv\n"
        );
        let p = compile(&src);
        assert_eq!(count(&p, true), 1, "{}", tc_compiler::plan::print(&p.plan));
        let leaf = |l: &tc_compiler::ir::Leaf| {
            tc_runtime::data::random_tensor(3, &l.name, l.ty.dtype, &l.ty.sizes())
        };
        let ins: Vec<_> = p.checked.inputs.iter().map(leaf).collect();
        let run = |keep_tiles| {
            let options = tc_runtime::cpu::Options {
                keep_tiles,
                ..Default::default()
            };
            tc_runtime::cpu::run_with(&p.plan, &ins, &[], &options).expect("runs")
        };
        let (kept, again) = (run(true), run(false));
        for (a, b) in kept.iter().zip(&again) {
            assert!(
                a.bytes == b.bytes,
                "{keys} keys: the kept tiles changed the bits"
            );
        }
        if keys > 512 {
            differential(&src, &[], 7).expect("matches the reference");
        }
    }
}

/// Where the tasks are whole batch matrices (at least four a thread: 12 on two threads
/// here), the backward runs each matrix in one walk, `dk` and `dv` summed in phase 1's
/// second walk (`cpu::Options::one_walk`): the same bits as the two phases, with kept
/// tiles (300 keys) and without (700), ragged tiles and panels, and for every subset of
/// the gradients.
#[test]
fn one_walk_gives_the_bits_of_two_phases() {
    for (keys, wrt) in [
        (
            300,
            "gq = grad(loss, q)\ngk = grad(loss, k)\ngv = grad(loss, v)\noutput gq, gk, gv",
        ),
        (700, "gk = grad(loss, k)\ngv = grad(loss, v)\noutput gk, gv"),
        (300, "gk = grad(loss, k)\noutput gk"),
        (300, "gq = grad(loss, q)\ngv = grad(loss, v)\noutput gq, gv"),
    ] {
        let src = format!(
            "input q : f32[12, 150, 24]\ninput k : f32[12, {keys}, 24]\n\
             input v : f32[12, {keys}, 20]\ninput w : f32[12, 150, 20]\n\
             out = softmax(q @ transpose(k) / 5, axis=-1) @ v\nloss = sum(out * w)\n{wrt}\n"
        );
        let p = compile(&src);
        assert_eq!(count(&p, true), 1, "{}", tc_compiler::plan::print(&p.plan));
        let leaf = |l: &tc_compiler::ir::Leaf| {
            tc_runtime::data::random_tensor(5, &l.name, l.ty.dtype, &l.ty.sizes())
        };
        let ins: Vec<_> = p.checked.inputs.iter().map(leaf).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool of two threads");
        let run = |one_walk| {
            let options = tc_runtime::cpu::Options {
                one_walk,
                ..Default::default()
            };
            pool.install(|| tc_runtime::cpu::run_with(&p.plan, &ins, &[], &options))
                .expect("runs")
        };
        let (one, two) = (run(true), run(false));
        assert_eq!(one.len(), two.len());
        for (i, (a, b)) in one.iter().zip(&two).enumerate() {
            assert!(
                a.bytes == b.bytes,
                "{keys} keys, {wrt}: output {i} differs between one walk and two phases"
            );
        }
    }
}

#[test]
fn train_block_stores_no_scores_and_plans_below_torch_compile() {
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "train_block")
        .expect("examples/train_block.tx");
    let p = compile(&src);
    assert_eq!(count(&p, false), 1, "one fused forward attention");
    assert_eq!(count(&p, true), 1, "one fused attention backward");
    // S = 512, H = 8: no buffer of H·S·S elements anywhere in the plan.
    let ss = 8 * 512 * 512;
    for b in &p.plan.buffers {
        let n: u64 = b.shape.iter().product();
        assert!(n < ss, "{} {:?} is an S×S buffer", b.name, b.shape);
    }
    // torch.compile's peak above inputs and params at these dims: 20.5 MiB
    // (`shared/bench/train_anchors.py`).
    assert!(
        p.plan.arena_bytes <= 20 * 1024 * 1024 + 512 * 1024,
        "planned {} bytes",
        p.plan.arena_bytes
    );
    // The eager model still counts the probabilities as saved.
    assert!(p.memory.peaks.eager.without_inputs > p.plan.arena_bytes + 8 * 1024 * 1024);
}

#[test]
fn a_bf16_train_block_stores_no_scores() {
    // Every f32 tensor of train_block in bf16: autodiff reads `p`, `q`, `k` and `v` through
    // f32 promotions (one per use), which the backward's group computes from what it reads.
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "train_block")
        .expect("examples/train_block.tx");
    let src = src.replace("f32[", "bf16[");
    let p = compile(&src);
    assert_eq!(count(&p, false), 1, "one fused forward attention");
    assert_eq!(count(&p, true), 1, "one fused attention backward");
    let ss = 8 * 512 * 512;
    for b in &p.plan.buffers {
        let n: u64 = b.shape.iter().product();
        assert!(n < ss, "{} {:?} is an S×S buffer", b.name, b.shape);
    }
    // Smaller dims (several tiles of queries and keys), against the f64 oracle.
    let dims: Vec<(String, u64)> = [("S", 80), ("D", 64), ("H", 2), ("Dh", 32), ("F", 128)]
        .iter()
        .map(|&(n, v)| (n.to_string(), v))
        .collect();
    differential(&src, &dims, 5).expect("matches the reference");
}
