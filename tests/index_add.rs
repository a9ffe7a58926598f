//! `take`'s gradient as an index add (`ir::Op::IndexAdd`, `schedule::IndexAddKernel`,
//! `cpu::index_add`): a large table with repeated indices on the CPU, fast and equal to the
//! f64 oracle; takes along a middle axis by a strided index; a GPT block's training step
//! plans its embedding gradients as index adds (no `V × N` comparison) and matches the
//! oracle in every plan variant; bitwise the same run to run; a bad index is the forward's
//! error in the data.

use std::time::Instant;
use tc_compiler::schedule::{BufferKind, KernelKind};
use tc_compiler::CompileOptions;
use tc_runtime::reference;
use tc_tests::differential;
use tc_tests::index_add::{
    gpt_small_dims, gpt_training_step, large_data, large_tokens, LARGE, MIDDLE_AXIS,
};

fn index_adds(p: &tc_compiler::Program) -> Vec<&tc_compiler::schedule::IndexAddKernel> {
    p.plan
        .kernels
        .iter()
        .filter_map(|k| match &k.kind {
            KernelKind::IndexAdd(ia) => Some(ia),
            _ => None,
        })
        .collect()
}

#[test]
fn a_large_table_with_repeated_indices_is_fast_and_matches_the_oracle() {
    let p = tc_compiler::compile(LARGE, &CompileOptions::default()).expect("compiles");
    let ias = index_adds(&p);
    assert_eq!(ias.len(), 1, "{}", tc_compiler::plan::print(&p.plan));
    // No scratch memory: planned stays at or below eager.
    assert!(!p
        .plan
        .buffers
        .iter()
        .any(|b| b.kind == BufferKind::Workspace));
    let m = &p.memory.peaks;
    assert!(m.planned.with_inputs <= m.eager.with_inputs, "{m:?}");
    // No kernel compares every row with every position.
    for k in &p.plan.kernels {
        if let KernelKind::Fused(f) = &k.kind {
            let n: u64 = f.domain.iter().product();
            assert!(n < 5000 * 2000, "{}: domain {:?}", k.name, f.domain);
        }
    }
    let tokens = large_tokens();
    let (inputs, params) = large_data(&tokens);
    let start = Instant::now();
    let got = tc_runtime::cpu::run(&p.plan, &inputs, &params).expect("runs");
    let secs = start.elapsed().as_secs_f64();
    assert!(secs < 2.0, "{secs} s for a 5000 x 2000 gradient");
    let want = reference::evaluate(&p.checked, &inputs, &params).expect("reference");
    let g = got[1].to_f32();
    let tol = tc_tests::tolerance(tc_compiler::ir::DType::F32);
    let mut hit = vec![false; 5000];
    for &t in &tokens {
        hit[t as usize] = true;
    }
    for (i, (&x, &w)) in g.iter().zip(&want[1].values).enumerate() {
        assert!(tol.admits(f64::from(x), w, 1.0), "g[{i}]: {x} vs {w}");
        if !hit[i / 8] {
            assert_eq!(x, 0.0, "row {} is read by no position", i / 8);
        }
    }
    // Each row summed in ascending position order, from 0, in f32: exactly that sum.
    let wv = inputs[1].to_f32();
    for row in [0usize, 51, 4999, 4500] {
        for c in 0..8 {
            let mut s = 0.0f32;
            for (p, &t) in tokens.iter().enumerate() {
                if t as usize == row {
                    s += wv[p * 8 + c];
                }
            }
            assert_eq!(
                g[row * 8 + c].to_bits(),
                s.to_bits(),
                "row {row} column {c}"
            );
        }
    }
    // The same bits on every run.
    let again = tc_runtime::cpu::run(&p.plan, &inputs, &params).expect("runs");
    assert_eq!(again[1].bytes, got[1].bytes);
    // And in every plan variant, against the oracle.
    differential(LARGE, &[], 3).expect("matches the reference");
}

#[test]
fn takes_along_a_middle_axis_by_a_strided_index_match_the_oracle() {
    let p = tc_compiler::compile(MIDDLE_AXIS, &CompileOptions::default()).expect("compiles");
    let ias = index_adds(&p);
    assert_eq!(ias.len(), 2, "{}", tc_compiler::plan::print(&p.plan));
    for ia in &ias {
        assert_eq!(
            (ia.pre.clone(), ia.rows, ia.post.clone()),
            (vec![3], 11, vec![4])
        );
    }
    // One reads the index through its transpose.
    assert!(ias
        .iter()
        .any(|ia| ia.index_shape == [7, 5] && ia.index.strides == [1, 7]));
    for seed in 0..3 {
        differential(MIDDLE_AXIS, &[], seed).expect("matches the reference");
    }
    tc_tests::gradcheck::gradcheck(MIDDLE_AXIS, &[], 1).expect("finite differences");
}

#[test]
fn a_gpt_training_step_plans_its_embedding_gradients_as_index_adds() {
    let src = gpt_training_step();
    let p = tc_compiler::compile(&src, &CompileOptions::default()).expect("compiles");
    let ias = index_adds(&p);
    // wte's rows read by the tokens, wpe's by the positions (an arange, written down).
    let mut seen: Vec<(u64, Vec<u64>)> = ias
        .iter()
        .map(|ia| (ia.rows, ia.index_shape.clone()))
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(1024, vec![256]), (8192, vec![4, 256])]);
    let text = tc_compiler::plan::print(&p.plan);
    assert!(
        text.contains("index add pre [] index [4, 256] rows 8192 post [512]"),
        "{text}"
    );
    assert!(text.contains("index add (line"), "{text}");
    // Nothing of the old form: no kernel over V × positions × D (4.3 G elements; the
    // largest domains now are the logits' gradient's, B × D × V).
    for k in &p.plan.kernels {
        if let KernelKind::Fused(f) = &k.kind {
            assert!(
                f.domain.iter().product::<u64>() <= 4 * 512 * 8192,
                "{}: domain {:?}\n{text}",
                k.name,
                f.domain
            );
        }
    }
    let m = &p.memory.peaks;
    let (l, pl, e, n) = (
        m.lower_bound.with_inputs,
        m.planned.with_inputs,
        m.eager.with_inputs,
        m.naive.with_inputs,
    );
    assert!(l <= pl && pl <= e && e <= n, "{m:?}");
    let dims = gpt_small_dims();
    differential(&src, &dims, 5).expect("matches the reference");
}

#[test]
fn an_index_out_of_range_is_an_error_in_the_data_not_a_bad_access() {
    let p = tc_compiler::compile(LARGE, &CompileOptions::default()).expect("compiles");
    for bad in [-1i64, 5000, i64::MAX] {
        let mut tokens = large_tokens();
        tokens[1234] = bad;
        let (inputs, params) = large_data(&tokens);
        let err = tc_runtime::cpu::run(&p.plan, &inputs, &params).expect_err("a bad index");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("index {bad} is out of range [0, 5000)"))
                && msg.contains("`tokens`"),
            "{msg}"
        );
    }
}
