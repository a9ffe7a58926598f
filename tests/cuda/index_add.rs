//! `take`'s gradient in CUDA C (`codegen::index_add`): NVRTC compiles the GPU plans of the
//! index-add programs (`tc_tests::index_add`) for sm_80 and sm_90, and the emulation runs
//! them — a 5 000-row table with repeated indices, a middle axis through a strided index,
//! a GPT block's training step — against the CPU executor: the table's gradient bit for
//! bit (both add each row's positions in ascending order from 0), forward and reverse
//! block order equal; a bad index is reported in the data, with no access out of bounds.

use super::*;
use tc_tests::index_add::{
    gpt_small_dims, gpt_training_step, large_data, large_tokens, LARGE, MIDDLE_AXIS,
};

fn gpu_plan(src: &str, dims: &[(String, u64)]) -> tc_compiler::Program {
    tc_compiler::compile(src, &cuda_options(dims)).expect("compiles")
}

fn has_index_add(p: &Plan) -> bool {
    p.kernels
        .iter()
        .any(|k| matches!(&k.kind, KernelKind::IndexAdd(_)))
}

#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
fn index_add_kernels_compile_with_nvrtc() {
    require_nvrtc();
    for (label, src, dims) in [
        ("large", LARGE.to_string(), Vec::new()),
        ("middle axis", MIDDLE_AXIS.to_string(), Vec::new()),
        ("gpt training step", gpt_training_step(), Vec::new()),
    ] {
        let p = gpu_plan(&src, &dims);
        assert!(has_index_add(&p.plan), "{label}: no index add");
        check_compiles(label, &p.plan);
    }
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_index_add_matches_the_cpu_bit_for_bit() {
    emu::require_emu_pub();
    let opts = tc_runtime::cuda::emu::EmuOptions::default();
    // The large table, on hand-made tokens.
    let p = gpu_plan(LARGE, &[]);
    assert!(has_index_add(&p.plan));
    let (inputs, params) = large_data(&large_tokens());
    let kernels = emit_kernels(&p.plan).expect("lowers");
    let cpu = tc_runtime::cpu::run(&p.plan, &inputs, &params).expect("CPU");
    let start = std::time::Instant::now();
    let emu =
        tc_runtime::cuda::emu::run(&p.plan, &kernels, &inputs, &params, &opts).expect("emulated");
    println!("large: emulated in {:.2} s", start.elapsed().as_secs_f64());
    assert_eq!(cpu[1].bytes, emu[1].bytes, "the table's gradient differs");
    emu::check_plan_pub("large", &p.plan, &inputs, &params).unwrap_or_else(|e| panic!("{e}"));
    // A middle axis through a strided index, and the GPT step at small dims.
    for (label, src, dims) in [
        ("middle axis", MIDDLE_AXIS.to_string(), Vec::new()),
        ("gpt training step", gpt_training_step(), gpt_small_dims()),
    ] {
        let p = gpu_plan(&src, &dims);
        assert!(has_index_add(&p.plan), "{label}");
        let (inputs, params) =
            tc_runtime::data::load_leaves(&p.checked, &[], None, 0).expect("data");
        emu::check_plan_pub(label, &p.plan, &inputs, &params).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
#[cfg_attr(
    tc_no_emu,
    ignore = "needs a host C++ compiler, not found when the tests were built (tests/build.rs)"
)]
fn emu_index_add_reports_a_bad_index_without_a_bad_access() {
    emu::require_emu_pub();
    let p = gpu_plan(LARGE, &[]);
    let kernels = emit_kernels(&p.plan).expect("lowers");
    let mut tokens = large_tokens();
    tokens[777] = 5000;
    let (inputs, params) = large_data(&tokens);
    let opts = tc_runtime::cuda::emu::EmuOptions::default();
    let err = tc_runtime::cuda::emu::run(&p.plan, &kernels, &inputs, &params, &opts)
        .expect_err("a bad index")
        .to_string();
    assert!(
        err.contains("index 5000 is out of range [0, 5000)") && !err.contains("tc-emu:"),
        "{err}"
    );
}

/// On a GPU: the large table's gradient equals the CPU executor's bit for bit, twice (no
/// float atomics, so every run adds in the same order), and the GPT step's outputs agree.
#[test]
#[ignore = "needs a GPU: scripts/gpu.sh runs it (--include-ignored, TC_REQUIRE_CUDA=1)"]
fn gpu_index_add_matches_the_cpu_bit_for_bit() {
    if !gpu_ready() {
        return;
    }
    let p = gpu_plan(LARGE, &[]);
    let (inputs, params) = large_data(&large_tokens());
    let cpu = tc_runtime::cpu::run(&p.plan, &inputs, &params).expect("CPU");
    for _ in 0..2 {
        let gpu = cuda::run(&p.plan, &inputs, &params, &cuda::CudaOptions::default())
            .expect("runs")
            .outputs;
        assert_eq!(gpu[1].bytes, cpu[1].bytes, "the table's gradient differs");
    }
    check_cuda_against_cpu_with(
        "gpt training step",
        &gpt_training_step(),
        &cuda_options(&gpt_small_dims()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
