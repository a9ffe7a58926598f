//! Reliability of the planner (issue 12): programs `tc check` accepts that the planner once
//! refused, and programs large enough that a quadratic step in fusion, planning or the
//! memory models would not finish.

use super::cli::{tc_in, tc_run_cpu, write, write_npy_f32};

/// Item 9: a scalar input reshaped to one element (or viewed further) checked, then failed
/// to plan with `[planner-internal]` (the reshape of a rank-0 value had no strides).
#[test]
fn reshapes_of_a_scalar_plan_and_run() {
    let cases = [
        ("reshape(x, [1])", "y: f32[1] "),
        ("reshape(sum(x), [1])", "y: f32[1] "),
        ("reshape(x, [-1])", "y: f32[1] "),
        ("reshape(x, [1, 1])", "y: f32[1, 1] "),
        ("transpose(reshape(x, [1, 1]))", "y: f32[1, 1] "),
        ("reshape(x * 2, [1, 1, 1]) + 1", "y: f32[1, 1, 1] "),
        ("reshape(reshape(x, [1]), [])", "y: f32[] "),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let x = write_npy_f32(dir.path(), "x.npy", &[], &[0.5]);
    for (expr, shape) in cases {
        let src = format!("input x : f32[]\ny = {expr}\noutput y\n");
        let prog = write(dir.path(), "scalar.tx", &src);
        tc_in(dir.path(), &["emit", &prog, "--plan"]).expect_code(0);
        let want = if expr.contains("* 2") { "[2]" } else { "[0.5]" };
        tc_run_cpu(dir.path(), &prog, &["--input", &format!("x={x}")])
            .expect_code(0)
            .expect_mentions(&[shape, want]);
        // Every plan passes the independent verifier, fused or not.
        for fuse in [true, false] {
            let options = tc_compiler::CompileOptions {
                plan: tc_compiler::PlanOptions {
                    fuse,
                    ..Default::default()
                },
                ..Default::default()
            };
            let p =
                tc_compiler::compile(&src, &options).unwrap_or_else(|d| panic!("{expr}: {d:?}"));
            tc_compiler::plan::verify(&p.plan).unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
    }
}

/// Item 11: compile time was quadratic in program size (fusion re-analysed the whole growing
/// kernel at each merge; the eager model and the lower bound summed every buffer at every
/// step; the kernel labels searched every op for every op): 8,000 terms took 9 s, 100,000
/// would have taken about 25 minutes. Not a timed test (`scripts/bench_compile.py` measures
/// and `docs/benchmarks.md` records): before the fix these two did not finish in minutes.
#[test]
fn programs_of_tens_of_thousands_of_ops_plan() {
    let terms: Vec<String> = (1..=20_000).map(|i| format!("x * {i}")).collect();
    let sum = format!("input x : f32[16]\ny = {}\noutput y\n", terms.join(" + "));
    let mut chain = String::from("input x : f32[16]\na0 = x + 1\n");
    for i in 1..10_000 {
        chain.push_str(&if i % 2 == 1 {
            format!("a{i} = a{} * 2 + 1\n", i - 1)
        } else {
            format!("a{i} = a{} - x\n", i - 1)
        });
    }
    chain.push_str("output a9999\n");
    for (name, src, ops) in [("sum", &sum, 39_999), ("chain", &chain, 15_000)] {
        let p = tc_compiler::compile(src, &tc_compiler::CompileOptions::default())
            .unwrap_or_else(|d| panic!("{name}: {d:?}"));
        // One fused kernel computing every op, one arena buffer: the output.
        assert_eq!(p.plan.kernels.len(), 1, "{name}");
        assert_eq!(p.plan.kernels[0].ops.len(), ops, "{name}");
        assert_eq!(p.memory.peaks.planned.without_inputs, 64, "{name}");
    }
}
