//! SASS instructions an element of every pointwise kernel of the examples, measured without a
//! GPU: each example's kernels (default dims) compiled by NVRTC for sm_90, the CUBIN
//! disassembled by `nvdisasm`, and each pointwise kernel's grid-stride loop read as the GPU
//! runs it in the common case: the loop body from its label to its backward branch, less
//! the slow paths that the IEEE divide, reciprocal and square root branch over (regions a
//! conditional forward branch skips that hold a `CALL`), divided by the elements one
//! iteration handles: the vector width times the times ptxas unrolled the loop (its global
//! stores ÷ the kernel's stores a source iteration). An elementwise kernel is memory-bound only while
//! this stays under the device's issue rate ÷ its bytes an element (H100/H200: about 60–70
//! instructions for 8 bytes an element), so the figures sit in a snapshot
//! (`tests/cuda/snapshots/cuda__sass__cuda_sass_per_element.snap`) where a change of code
//! generation or of a maths function that costs instructions shows in review.
//! docs/benchmarks.md quotes them ("SASS an element"). Each kernel is counted twice: as tc
//! compiles it by default, and under `--fast-math` (`cuda::Maths::Fast`: contraction,
//! approximate `/` and `sqrt`), the rows marked so.

use super::{compile_example, require_nvrtc};
use std::collections::BTreeMap;
use std::fmt::Write;
use tc_compiler::codegen::launch::Strategy;
use tc_compiler::codegen::{emit_kernels, translation_unit};
use tc_compiler::lower::lower_kernel;
use tc_runtime::cuda;
use tc_tests::examples;

#[path = "../support/tools.rs"]
mod tools;

/// One disassembled line: an instruction, or a label (`.L_x_12`).
#[derive(Debug, PartialEq)]
enum Line {
    Instruction(String),
    Label(String),
}

/// `nvdisasm -c` output split by function (`.text.<name>` sections), each a list of lines.
fn functions(listing: &str) -> BTreeMap<String, Vec<Line>> {
    let mut out: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for raw in listing.lines() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix(".section") {
            // `.section	.text.k0,"ax",@progbits`
            current = rest
                .trim()
                .split(',')
                .next()
                .and_then(|s| s.strip_prefix(".text."))
                .map(str::to_string);
            continue;
        }
        let Some(f) = current.as_ref() else { continue };
        // `/*0150*/                   FMUL R2, R4, 1.5 ;`
        if let Some(rest) = line.strip_prefix("/*") {
            if let Some((_addr, text)) = rest.split_once("*/") {
                let text = text.trim().trim_end_matches(';').trim().to_string();
                out.entry(f.clone())
                    .or_default()
                    .push(Line::Instruction(text));
            }
        } else if let Some(label) = line.strip_suffix(':') {
            if label.starts_with(".L") {
                out.entry(f.clone())
                    .or_default()
                    .push(Line::Label(label.to_string()));
            }
        }
    }
    out
}

/// The branch target of `text` (`@!P0 BRA `(.L_x_4)`), and whether it is predicated.
fn branch(text: &str) -> Option<(&str, bool)> {
    let at = text.find("BRA `(")?;
    let target = text[at + 6..].split(')').next()?;
    Some((target, text.starts_with('@')))
}

/// A loop's common path, as `loop_fast_path` reads it.
#[derive(Debug, PartialEq)]
struct FastPath {
    /// Instructions on it.
    instructions: usize,
    /// Of which `MUFU` (the special-function unit: a quarter of the FP32 rate).
    mufu: usize,
    /// Of which global stores (`STG`).
    stores: usize,
    /// Slow paths branched over (one for each IEEE divide, reciprocal or square root).
    slow_paths: usize,
}

/// The common path of a function's longest loop; `None` when the function has no backward
/// branch.
fn loop_fast_path(lines: &[Line]) -> Option<FastPath> {
    let label_at: BTreeMap<&str, usize> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match l {
            Line::Label(name) => Some((name.as_str(), i)),
            Line::Instruction(_) => None,
        })
        .collect();
    let target_of = |i: usize| match &lines[i] {
        Line::Instruction(t) => branch(t).and_then(|(l, p)| Some((*label_at.get(l)?, p))),
        Line::Label(_) => None,
    };
    // The loop: the backward branch that spans the most lines.
    let (start, end) = (0..lines.len())
        .filter_map(|i| target_of(i).filter(|(t, _)| *t < i).map(|(t, _)| (t, i)))
        .max_by_key(|(t, i)| i - t)?;
    let mut slow = vec![false; lines.len()];
    let mut calls = 0;
    for i in start..end {
        if let Some((target, true)) = target_of(i) {
            let region = i + 1..target.max(i + 1);
            let holds_call = region
                .clone()
                .any(|j| matches!(&lines[j], Line::Instruction(t) if t.contains("CALL")));
            if target > i && holds_call {
                calls += 1;
                region.for_each(|j| slow[j] = true);
            }
        }
    }
    let fast: Vec<&str> = (start..=end)
        .filter(|&i| !slow[i])
        .filter_map(|i| match &lines[i] {
            Line::Instruction(t) => Some(t.as_str()),
            Line::Label(_) => None,
        })
        .collect();
    let count = |op: &str| fast.iter().filter(|t| t.contains(op)).count();
    Some(FastPath {
        instructions: fast.len(),
        mufu: count("MUFU"),
        stores: count("STG"),
        slow_paths: calls,
    })
}

#[test]
#[cfg_attr(
    tc_no_nvrtc,
    ignore = "needs NVRTC, not found when the tests were built (tests/build.rs)"
)]
#[cfg_attr(
    tc_no_nvdisasm,
    ignore = "needs nvdisasm (pip install nvidia-cuda-nvdisasm), not found when the tests were built (tests/build.rs)"
)]
fn cuda_sass_per_element() {
    require_nvrtc();
    let nvdisasm = tools::find_nvdisasm()
        .expect("nvdisasm: set TC_NVDISASM, put it on PATH or pip install nvidia-cuda-nvdisasm");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut table = String::from(
        "example kernel: elements an iteration, SASS an element on the common path (MUFU of them), slow-path branches an element (sm_90)\n",
    );
    let mut kernels_seen = 0;
    for (name, source) in examples() {
        let program = compile_example(&name, &source, &[]);
        let plan = &program.plan;
        // Pointwise kernels: the elements one source iteration handles, and its stores.
        let mut widths: BTreeMap<String, (u64, usize)> = BTreeMap::new();
        for kernel in &plan.kernels {
            let Some(ir) = lower_kernel(plan, kernel).expect("the kernel lowers") else {
                continue;
            };
            if let Strategy::Pointwise(p) = Strategy::of(&ir) {
                let lanes = if p.vectorize { p.lanes } else { 1 };
                widths.insert(kernel.name.clone(), (lanes, ir.stores.len()));
            }
        }
        if widths.is_empty() {
            continue;
        }
        let unit = translation_unit(&emit_kernels(plan).expect("the plan lowers"));
        for (maths, mode) in [
            (cuda::Maths::Exact, ""),
            (cuda::Maths::Fast, " --fast-math"),
        ] {
            let compiled = cuda::compile(&unit, "sm_90", maths, &[])
                .unwrap_or_else(|e| panic!("{name}{mode}: {e}"));
            let path = dir.path().join(format!("{name}.cubin"));
            std::fs::write(&path, &compiled.cubin).expect("writing the CUBIN");
            let out = std::process::Command::new(&nvdisasm)
                .arg("-c")
                .arg(&path)
                .output()
                .expect("nvdisasm runs");
            assert!(
                out.status.success(),
                "{name}: nvdisasm failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let listing = String::from_utf8_lossy(&out.stdout);
            let functions = functions(&listing);
            for (kernel, &(lanes, stores)) in &widths {
                let lines = functions
                    .get(kernel)
                    .unwrap_or_else(|| panic!("{name}: {kernel} is not in the disassembly"));
                let common = loop_fast_path(lines)
                    .unwrap_or_else(|| panic!("{name} {kernel}: no grid-stride loop found"));
                assert!(
                    stores > 0 && common.stores > 0 && common.stores.is_multiple_of(stores),
                    "{name} {kernel}: {} global stores in the loop, {stores} a source iteration",
                    common.stores
                );
                let elements = lanes * (common.stores / stores) as u64;
                let per = |n: usize| n as f64 / elements as f64;
                writeln!(
                    table,
                    "{name} {kernel}{mode}: {elements}, {:.1} ({:.1}), {:.2}",
                    per(common.instructions),
                    per(common.mufu),
                    per(common.slow_paths)
                )
                .expect("writing to a String");
                kernels_seen += 1;
            }
        }
    }
    assert!(
        kernels_seen >= 5,
        "expected the examples' pointwise kernels, found {kernels_seen}"
    );
    print!("{table}");
    insta::assert_snapshot!("cuda_sass_per_element", table);
}

#[test]
fn the_loop_reader_skips_slow_paths_and_finds_the_loop() {
    // A loop of 6 instructions, one of them a slow path's CALL behind a predicated branch
    // (the region MOV, CALL skipped), and a forward branch over no CALL (kept).
    let listing = "\t.section\t.text.k0,\"ax\",@progbits\n\
        /*0000*/ S2R R0, SR_TID.X ;\n\
        .L_x_1:\n\
        /*0010*/ LDG.E R4, desc[UR4][R2.64] ;\n\
        /*0020*/ MUFU.RCP R5, R4 ;\n\
        /*0030*/ @!P0 BRA `(.L_x_2) ;\n\
        /*0040*/ MOV R16, 0x60 ;\n\
        /*0050*/ CALL.REL.NOINC `($slowpath) ;\n\
        .L_x_2:\n\
        /*0060*/ @P1 BRA `(.L_x_3) ;\n\
        /*0070*/ FMUL R5, R5, 2 ;\n\
        .L_x_3:\n\
        /*0080*/ STG.E desc[UR4][R6.64], R5 ;\n\
        /*0090*/ @P2 BRA `(.L_x_1) ;\n\
        /*00a0*/ EXIT ;\n";
    let f = functions(listing);
    let lines = &f["k0"];
    // Common path: LDG, MUFU, @!P0 BRA, @P1 BRA, FMUL, STG, @P2 BRA = 7; one MUFU, one
    // store, one slow path.
    assert_eq!(
        loop_fast_path(lines),
        Some(FastPath {
            instructions: 7,
            mufu: 1,
            stores: 1,
            slow_paths: 1
        })
    );
    assert_eq!(branch("@!P0 BRA `(.L_x_2)"), Some((".L_x_2", true)));
    assert_eq!(branch("BRA `(.L_x_2)"), Some((".L_x_2", false)));
    assert_eq!(branch("FMUL R5, R5, 2"), None);
}
