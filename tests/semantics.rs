//! One scalar semantics: an op whose operands are literals is folded by the checker; the same
//! op on tensors (f32, f16, bf16) is run by the f64 reference evaluator and by the CPU
//! executor. All three
//! must agree on NaN, ±inf, ±0, subnormals and ordinary values, for every elementwise op:
//! the folded value and the reference bit for bit (or both NaN, whatever the payload), the
//! CPU executor bit for bit on the correctly rounded ops and within the op's documented
//! accuracy (`ir::eval::unary_accuracy`, `binary_accuracy`) on the others.
//!
//! Also the regression test of issue 11: `maximum(log(0 - 1), 0)` was folded to 0 while the
//! same maths on a tensor ran to NaN.

#[path = "support/cli.rs"]
mod cli;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tc_compiler::ir::{eval, BinaryOp, DType, UnaryOp};
use tc_compiler::CompileOptions;
use tc_runtime::{reference, HostTensor};

const BINARY: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Maximum,
    BinaryOp::Minimum,
];

/// The values every op is tried on, pairwise for binary ops.
fn specials() -> Vec<f32> {
    let sub_min = f32::from_bits(1); // 2^-149, the smallest subnormal
    let sub_max = f32::from_bits(0x007f_ffff); // the largest subnormal
    vec![
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        sub_min,
        -sub_min,
        sub_max,
        -sub_max,
        f32::MIN_POSITIVE,
        1.0,
        -1.0,
        0.5,
        2.0,
        -2.5,
        3.0,
        -100.0,
        88.75,
        1e30,
        f32::MAX,
        -f32::MAX,
    ]
}

/// `x` written as an expression the checker folds to exactly `x` (as f64).
fn literal(x: f32) -> String {
    if x.is_nan() {
        "(0 / 0)".into()
    } else if x == f32::INFINITY {
        "(1 / 0)".into()
    } else if x == f32::NEG_INFINITY {
        "(-1 / 0)".into()
    } else if x.is_sign_negative() {
        // `{:e}` of an f64 is the shortest text that parses back to it exactly.
        format!("(-{:e})", -(x as f64))
    } else {
        format!("{:e}", x as f64)
    }
}

fn unary_text(op: UnaryOp, a: &str) -> String {
    match op {
        UnaryOp::Neg => format!("-{a}"),
        _ => format!("{}({a})", op.name()),
    }
}

fn binary_text(op: BinaryOp, a: &str, b: &str) -> String {
    match op {
        BinaryOp::Add => format!("{a} + {b}"),
        BinaryOp::Sub => format!("{a} - {b}"),
        BinaryOp::Mul => format!("{a} * {b}"),
        BinaryOp::Div => format!("{a} / {b}"),
        BinaryOp::Pow => format!("{a} ** {b}"),
        BinaryOp::Cmp(c) => format!("{a} {} {b}", c.symbol()),
        BinaryOp::Maximum | BinaryOp::Minimum | BinaryOp::And | BinaryOp::Or => {
            format!("{}({a}, {b})", op.name())
        }
    }
}

/// Compiles `source`, feeds `args` as the rank-0 inputs of `dtype`, and returns the single
/// output as the reference evaluator and the CPU executor compute it.
fn run(source: &str, dtype: DType, args: &[f32]) -> Result<(f32, f32), String> {
    let program = tc_compiler::compile(source, &CompileOptions::default())
        .map_err(|d| format!("does not compile: {d:?}\n{source}"))?;
    let inputs: Vec<HostTensor> = args
        .iter()
        .map(|&v| HostTensor::from_f32(dtype, vec![], &[v]))
        .collect();
    let want = reference::evaluate(&program.checked, &inputs, &[])
        .map_err(|e| format!("reference: {e}\n{source}"))?;
    let got = tc_runtime::cpu::run(&program.plan, &inputs, &[])
        .map_err(|e| format!("cpu: {e}\n{source}"))?;
    Ok((want[0].values[0] as f32, got[0].to_f32()[0]))
}

/// Equal bits, or both NaN.
fn same(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

/// Where `x` of `dtype` lies among that dtype's values, in order (±0 both at 0).
fn rank(dtype: DType, x: f32) -> i64 {
    let bits = match dtype {
        DType::F32 => x.to_bits() as i64,
        DType::F16 => half::f16::from_f32(x).to_bits() as i64,
        DType::BF16 => half::bf16::from_f32(x).to_bits() as i64,
        // Integral results are compared exactly, never by rank.
        DType::I32 | DType::I64 | DType::Bool => x as i64,
    };
    let sign = 1i64 << (8 * dtype.size() - 1);
    if bits & sign != 0 {
        -(bits & (sign - 1))
    } else {
        bits
    }
}

/// The CPU executor's `got` against the reference's `want`, both of `dtype`: bit for bit,
/// or (for the ops that are not correctly rounded in f32) within the op's documented
/// accuracy, or, in f16 and bf16, one step of that dtype away (an f32 result within its
/// accuracy may round to the neighbour of the exact value's rounding).
fn cpu_agrees(dtype: DType, acc: eval::Accuracy, got: f32, want: f32) -> bool {
    if same(got, want) {
        return true;
    }
    if acc == eval::Accuracy::EXACT || got.is_nan() || want.is_nan() {
        return false;
    }
    acc.admits(got, want as f64)
        || (dtype != DType::F32
            && got.is_finite()
            && want.is_finite()
            && (rank(dtype, got) - rank(dtype, want)).abs() <= 1)
}

/// `x` rounded to `dtype` (the value an input of that dtype can hold).
fn to(dtype: DType, x: f32) -> f32 {
    eval::round(dtype, x as f64) as f32
}

/// `y = expr` in `dtype`: a cast of a folded weak scalar, which keeps its value until then.
fn folded_in(dtype: DType, expr: &str) -> String {
    match dtype {
        DType::F32 => format!("y = {expr}\noutput y\n"),
        _ => format!("y = {dtype}({expr})\noutput y\n"),
    }
}

/// Checks one unary op at `x` in `dtype`: folded, reference and CPU executor.
fn check_unary(dtype: DType, op: UnaryOp, x: f32) -> Result<(), String> {
    let x = to(dtype, x);
    let folded = folded_in(dtype, &unary_text(op, &literal(x)));
    let tensor = format!(
        "input a : {dtype}[]\ny = {}\noutput y\n",
        unary_text(op, "a")
    );
    let (fold_ref, fold_cpu) = run(&folded, dtype, &[])?;
    let (ten_ref, ten_cpu) = run(&tensor, dtype, &[x])?;
    let what = format!("{dtype} {}({x:e} = {:#x})", op.name(), x.to_bits());
    if !same(fold_ref, ten_ref) {
        return Err(format!(
            "{what}: folded {fold_ref:e} but the reference runs it to {ten_ref:e}\n{folded}"
        ));
    }
    // Folded, a constant the CPU stores as is (`gelu` and `erf` of a literal stay nodes).
    let acc = eval::unary_accuracy(op);
    if !cpu_agrees(dtype, acc, fold_cpu, fold_ref) {
        return Err(format!(
            "{what}: folded to {fold_ref:e}, the CPU computes {fold_cpu:e}"
        ));
    }
    if !cpu_agrees(dtype, acc, ten_cpu, ten_ref) {
        return Err(format!(
            "{what}: the CPU executor computes {ten_cpu:e}, the reference {ten_ref:e}"
        ));
    }
    Ok(())
}

/// Checks one binary op at `(x, y)` in `dtype`: folded, reference and CPU executor.
fn check_binary(dtype: DType, op: BinaryOp, x: f32, y: f32) -> Result<(), String> {
    let (x, y) = (to(dtype, x), to(dtype, y));
    let folded = folded_in(dtype, &binary_text(op, &literal(x), &literal(y)));
    let tensor = format!(
        "input a : {dtype}[]\ninput b : {dtype}[]\ny = {}\noutput y\n",
        binary_text(op, "a", "b")
    );
    let (fold_ref, fold_cpu) = run(&folded, dtype, &[])?;
    let (ten_ref, ten_cpu) = run(&tensor, dtype, &[x, y])?;
    let what = format!(
        "{dtype} {}({x:e} = {:#x}, {y:e} = {:#x})",
        op.name(),
        x.to_bits(),
        y.to_bits()
    );
    if !same(fold_ref, ten_ref) {
        return Err(format!(
            "{what}: folded {fold_ref:e} but the reference runs it to {ten_ref:e}\n{folded}"
        ));
    }
    // Folded, a constant the CPU stores as is (`gelu` and `erf` of a literal stay nodes).
    let acc = eval::binary_accuracy(op);
    if !cpu_agrees(dtype, acc, fold_cpu, fold_ref) {
        return Err(format!(
            "{what}: folded to {fold_ref:e}, the CPU computes {fold_cpu:e}"
        ));
    }
    if !cpu_agrees(dtype, acc, ten_cpu, ten_ref) {
        return Err(format!(
            "{what}: the CPU executor computes {ten_cpu:e}, the reference {ten_ref:e}"
        ));
    }
    Ok(())
}

#[test]
fn folding_and_running_agree_on_special_values_for_every_op() {
    let mut failures = Vec::new();
    let xs = specials();
    for dtype in DType::FLOATS {
        for op in UnaryOp::ALL {
            for &x in &xs {
                failures.extend(check_unary(dtype, op, x).err());
            }
        }
        for op in BINARY {
            for &x in &xs {
                for &y in &xs {
                    failures.extend(check_binary(dtype, op, x, y).err());
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements; the first:\n{}",
        failures.len(),
        failures
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Any f32 bit pattern (every NaN payload, subnormals, both zeros), or a special value.
fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<u32>().prop_map(f32::from_bits),
        proptest::sample::select(specials()),
    ]
}

#[test]
fn folding_and_running_agree_on_random_values() {
    let cases = std::env::var("TC_SEMANTICS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let dtype = || proptest::sample::select(DType::FLOATS.to_vec());
    let unary = proptest::sample::select(UnaryOp::ALL.to_vec());
    let result = runner.run(&(dtype(), unary, any_f32()), |(dt, op, x)| {
        check_unary(dt, op, x).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let binary = proptest::sample::select(BINARY.to_vec());
    let result = runner.run(
        &(dtype(), binary, any_f32(), any_f32()),
        |(dt, op, x, y)| check_binary(dt, op, x, y).map_err(TestCaseError::fail),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Issue 11: `f64::max` dropped the NaN, so the folder made `maximum(log(0 - 1), 0)` 0 while
/// `maximum(log(z), 0)` with `z = -1` runs to NaN on every path.
#[test]
fn a_folded_maximum_of_nan_is_nan_as_on_tensors() {
    let (fold_ref, fold_cpu) = run("y = maximum(log(0 - 1), 0)\noutput y\n", DType::F32, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let (ten_ref, ten_cpu) = run(
        "input z : f32[]\ny = maximum(log(z), 0)\noutput y\n",
        DType::F32,
        &[-1.0],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(ten_ref.is_nan() && ten_cpu.is_nan(), "{ten_ref} {ten_cpu}");
    assert!(
        fold_ref.is_nan() && fold_cpu.is_nan(),
        "folded to {fold_ref} (reference) / {fold_cpu} (CPU), the tensor maths gives NaN"
    );
    // The same through the command line, the folded constant broadcast into a tensor.
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = cli::write(
        dir.path(),
        "nan.tx",
        "input x : f32[3]\ny = x * 0 + maximum(log(0 - 1), 0)\nm = minimum(0, 0 / 0)\noutput y, m\n",
    );
    let x = cli::write_npy_f32(dir.path(), "x.npy", &[3], &[1.0, 2.0, 3.0]);
    cli::tc_in(
        dir.path(),
        &[
            "run",
            &prog,
            "--device",
            "cpu",
            "--input",
            &format!("x={x}"),
        ],
    )
    .expect_code(0)
    .expect_mentions(&[
        "y: f32[3]  [NaN, NaN, NaN]  3 NaN",
        "m: f32[]  [NaN]  1 NaN",
    ]);
}

/// Integer, `bool` and comparison programs (SPEC §3.1–3.2) agree with the f64 reference,
/// exactly for integral outputs, in every fuse/reuse combination on the CPU executor.
const DTYPE_PROGRAMS: &[&str] = &[
    // comparisons, where, logical ops, any/all, casts, integer sums
    "dim N = 6\ninput x : f32[N]\ninput k : i32[N]\nm = x > 0\ny = where(m, x, 0.5 * x)\nc = sum(m)\ns = sum(k * 3 + 1, axis=0)\nz = i32(x * 10) / 4\nb = logical_and(m, k >= 0)\na = any(b)\ne = all(logical_not(b))\nw = k == 2 * k - k\noutput y, c, s, z, b, a, e, w\n",
    // wrapping i32 and i64 arithmetic, integer max/min/abs/neg, promotion with floats
    "dim N = 8\ninput k : i32[N]\ninput j : i64[N]\na = k * 1000000 * 1000\nb = j * 4611686018427387 * 1000\nc = maximum(k, j) - minimum(-k, abs(j))\nd = k + 0.5\ne = relu(k) ** 3\noutput a, b, c, d, e\n",
    // row reductions over integers and bools, keepdim, mean of integers
    "dim B = 4\ndim N = 33\ninput k : i64[B, N]\ninput x : f32[B, N]\nm = x > 0.25\nc = sum(m, axis=-1, keepdim=true)\nmx = max(k, axis=1)\nmn = min(k * 3, axis=0)\nav = mean(k, axis=1)\nt = any(m, axis=0)\nu = all(k > -20, axis=1)\nr = softmax(where(m, x, -1e9), axis=-1)\noutput c, mx, mn, av, t, u, r\n",
    // float -> int casts of special values, bool casts, bool arithmetic, integer division
    "dim N = 5\ninput x : f32[N]\ninput b : bool[N]\ni = i64(x / 0)\nj = i32(x * 1e10)\nk = bool(x)\nl = b + b\nq = i64(b) / 2\nn = b * 3\noutput i, j, k, l, q, n\n",
];

#[test]
fn integer_and_bool_programs_match_the_reference() {
    for (i, src) in DTYPE_PROGRAMS.iter().enumerate() {
        for seed in 0..3 {
            if let Err(e) = tc_tests::differential(src, &[], seed) {
                panic!("program {i}, seed {seed}: {e}\n{src}");
            }
        }
    }
}
