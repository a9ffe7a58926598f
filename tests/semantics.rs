//! One scalar semantics: an op whose operands are literals is folded by the checker; the same
//! op on tensors (f32, f16, bf16) is run by the f64 reference evaluator and by the CPU
//! executor. All three
//! must agree on NaN, ±inf, ±0, subnormals and ordinary values, for every elementwise op:
//! the folded value and the reference bit for bit (or both NaN, whatever the payload), the
//! CPU executor bit for bit on the correctly rounded ops and within the op's documented
//! accuracy (`ir::eval::unary_accuracy`, `binary_accuracy`) on the others.
//!
//! And every float elementwise op on the CPU executor over a sweep of f32 inputs, within
//! its accuracy (`cpu_elementwise_ops_meet_their_accuracy`, `tc_tests::accuracy`, the same
//! check `tests/cuda.rs` runs on a GPU).
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

const BINARY: [BinaryOp; 7] = BinaryOp::ARITHMETIC;

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

/// More values for the one-operand ops: half-way cases of `round` (ties to even, in f32
/// and, once rounded to them, in f16 and bf16), the largest non-integral f32s, `softplus`'s
/// threshold and its neighbours, `tan` near its pole, `log1p`/`expm1` near 0 and -1.
fn unary_extras() -> Vec<f32> {
    vec![
        -0.5,
        1.5,
        2.5,
        -1.5,
        -3.5,
        0.49999997,
        8388607.5,
        -8388607.5,
        4194304.5,
        1.0000001,
        20.0,
        f32::from_bits(20f32.to_bits() + 1),
        f32::from_bits(20f32.to_bits() - 1),
        1.5707964,
        -std::f32::consts::FRAC_PI_2,
        1e-7,
        -1e-7,
        -0.99999994,
        -1.0,
        -20.0,
        -90.0,
        9.5,
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
    let folded_runs = run(&folded, dtype, &[])?;
    let tensor_runs = run(&tensor, dtype, &[x])?;
    let what = format!("{dtype} {}({x:e} = {:#x})", op.name(), x.to_bits());
    agree(
        &what,
        &folded,
        dtype,
        eval::unary_accuracy(op),
        folded_runs,
        tensor_runs,
    )
}

/// Checks one binary op at `(x, y)` in `dtype`: folded, reference and CPU executor.
fn check_binary(dtype: DType, op: BinaryOp, x: f32, y: f32) -> Result<(), String> {
    let (x, y) = (to(dtype, x), to(dtype, y));
    let folded = folded_in(dtype, &binary_text(op, &literal(x), &literal(y)));
    let tensor = format!(
        "input a : {dtype}[]\ninput b : {dtype}[]\ny = {}\noutput y\n",
        binary_text(op, "a", "b")
    );
    let folded_runs = run(&folded, dtype, &[])?;
    let tensor_runs = run(&tensor, dtype, &[x, y])?;
    let what = format!(
        "{dtype} {}({x:e} = {:#x}, {y:e} = {:#x})",
        op.name(),
        x.to_bits(),
        y.to_bits()
    );
    agree(
        &what,
        &folded,
        dtype,
        eval::binary_accuracy(op),
        folded_runs,
        tensor_runs,
    )
}

/// The three-way check of one op at one point: the folded constant equals the reference
/// run of the tensor program, and the CPU executor agrees with the reference, within
/// `acc`, on both programs. Each run is `(reference, cpu)`.
fn agree(
    what: &str,
    folded: &str,
    dtype: DType,
    acc: eval::Accuracy,
    (fold_ref, fold_cpu): (f32, f32),
    (ten_ref, ten_cpu): (f32, f32),
) -> Result<(), String> {
    if !same(fold_ref, ten_ref) {
        return Err(format!(
            "{what}: folded {fold_ref:e} but the reference runs it to {ten_ref:e}\n{folded}"
        ));
    }
    // Folded, a constant the CPU stores as is (`gelu` and `erf` of a literal stay nodes).
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
            for &x in xs.iter().chain(&unary_extras()) {
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

/// Every float elementwise op on the CPU executor, through the whole pipeline (a one-op
/// program over a sweep of f32 inputs, `tc_tests::accuracy`), within its accuracy contract
/// (`ir::eval::unary_accuracy`, `binary_accuracy`); the same check as the GPU's
/// `gpu_elementwise_ops_meet_their_accuracy`, at a sweep a CI run can afford.
#[test]
fn cpu_elementwise_ops_meet_their_accuracy() {
    let cpu = |p: &tc_compiler::Program, inputs: &[HostTensor]| {
        tc_runtime::cpu::run(&p.plan, inputs, &[]).map_err(|e| e.to_string())
    };
    if let Err(e) = tc_tests::accuracy::check_elementwise_accuracy(
        "CPU",
        &CompileOptions::default(),
        tc_tests::accuracy::Contract::EXACT,
        tc_tests::accuracy::Sweep::CPU,
        &cpu,
    ) {
        panic!("{e}");
    }
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
    cli::tc_run_cpu(dir.path(), &prog, &["--input", &format!("x={x}")])
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

/// `clamp` and `leaky_relu` (SPEC §3.5, decomposed into `maximum`/`minimum` and a `where`):
/// the call on a literal and on a rank-0 tensor agree in the reference, and the CPU
/// executor agrees with it (bit for bit for `clamp`; `leaky_relu` multiplies by the f32
/// slope, as PyTorch's kernel does, within an ulp of the exact product), in f32, f16 and
/// bf16, on the special values: NaN stays NaN, bounds cross (`min > max` gives `max`).
#[test]
fn clamp_and_leaky_relu_agree_on_special_values() {
    let calls: &[(&str, eval::Accuracy)] = &[
        ("clamp({}, min=-1, max=2)", eval::Accuracy::EXACT),
        ("clamp({}, min=0)", eval::Accuracy::EXACT),
        ("clamp({}, max=-0.5)", eval::Accuracy::EXACT),
        ("clamp({}, min=2, max=-1)", eval::Accuracy::EXACT),
        ("clamp({}, min=0.1, max=1e30)", eval::Accuracy::EXACT),
        (
            "leaky_relu({})",
            eval::Accuracy {
                ulps: 1.0,
                abs: 0.0,
            },
        ),
        (
            "leaky_relu({}, slope=-2)",
            eval::Accuracy {
                ulps: 1.0,
                abs: 0.0,
            },
        ),
    ];
    let mut failures = Vec::new();
    for dtype in DType::FLOATS {
        for (call, acc) in calls {
            for &x in specials().iter().chain(&unary_extras()) {
                let x = to(dtype, x);
                let folded = folded_in(dtype, &call.replace("{}", &literal(x)));
                let tensor = format!(
                    "input a : {dtype}[]\ny = {}\noutput y\n",
                    call.replace("{}", "a")
                );
                let what = format!("{dtype} {}", call.replace("{}", &format!("{x:e}")));
                let result =
                    run(&folded, dtype, &[]).and_then(|f| Ok((f, run(&tensor, dtype, &[x])?)));
                match result {
                    Err(e) => failures.push(format!("{what}: {e}")),
                    Ok(((fold_ref, fold_cpu), (ten_ref, ten_cpu))) => {
                        if !same(fold_ref, ten_ref) {
                            failures
                                .push(format!("{what}: folded {fold_ref:e}, tensor {ten_ref:e}"));
                        }
                        for got in [fold_cpu, ten_cpu] {
                            if !cpu_agrees(dtype, *acc, got, ten_ref) {
                                failures
                                    .push(format!("{what}: CPU {got:e}, reference {ten_ref:e}"));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}",
        failures[..failures.len().min(12)].join("\n")
    );
}

/// The clamp of an integer stays an integer (exact), a float bound makes it f32, and
/// `floor`/`ceil`/`round`/`sign` keep integer dtypes, as PyTorch's.
#[test]
fn integer_maths_keeps_its_dtype() {
    let src = "dim N = 7\ninput k : i32[N]\ninput b : bool[N]\n\
               c = clamp(k, min=-2, max=3)\nf = clamp(k, max=1.5)\ns = sign(k)\nr = round(k) + floor(k) - ceil(k)\n\
               cb = clamp(b, min=0)\nsb = sign(b)\nl = log1p(abs(k))\noutput c, f, s, r, cb, sb, l\n";
    let checked = tc_compiler::check(src, &[]).expect("checks");
    let dtypes: Vec<DType> = checked
        .outputs
        .iter()
        .map(|o| checked.dtype(o.node))
        .collect();
    use DType::*;
    assert_eq!(dtypes, [I32, F32, I32, I32, I64, Bool, F32]);
    for seed in 0..3 {
        if let Err(e) = tc_tests::differential(src, &[], seed) {
            panic!("seed {seed}: {e}");
        }
    }
}

/// `logsumexp`, `var` and `std` over rows holding NaN, ±inf, ±0, huge and subnormal
/// values: the CPU executor (every fuse/reuse combination) against the f64 reference.
/// PyTorch's special cases: a row of -inf has logsumexp -inf, a row with +inf +inf (not
/// NaN), a NaN anywhere NaN; the variance of a row with an infinity is NaN, of one
/// element with `correction=1` NaN (0/0).
#[test]
fn row_maths_on_special_values_match_the_reference() {
    let rows: &[[f32; 4]] = &[
        [f32::NAN, 1.0, 2.0, 3.0],
        [f32::INFINITY, 1.0, -2.0, 0.5],
        [f32::NEG_INFINITY; 4],
        [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, -1.0],
        [f32::INFINITY, f32::NEG_INFINITY, 0.0, 0.0],
        [1e18, 1e18, -1e18, 3e18],
        [0.0, -0.0, f32::from_bits(1), -f32::from_bits(1)],
        [100.0, 100.0, 100.0, 100.0],
        [-88.0, -104.0, -200.0, -1e15],
        [1.0, 2.0, 3.0, 4.0],
    ];
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    let n = rows.len() as u64;
    for dtype in DType::FLOATS {
        let src = format!(
            "input x : {dtype}[{n}, 4]\nl = logsumexp(x, axis=-1)\nlk = logsumexp(x, axis=[1], keepdim=true)\n\
             v = var(x, axis=1)\nv0 = var(x, axis=-1, correction=0)\ns = std(x, axis=-1, keepdim=true)\n\
             t = std(x[:, :1], axis=1)\nla = logsumexp(x[2:4])\noutput l, lk, v, v0, s, t, la\n"
        );
        let program = tc_compiler::compile(&src, &CompileOptions::default()).expect("compiles");
        let x = HostTensor::from_f32(dtype, vec![n, 4], &values);
        let want = reference::evaluate(&program.checked, std::slice::from_ref(&x), &[])
            .expect("reference");
        for (fuse, reuse) in tc_tests::COMBOS {
            let options = tc_tests::combo_options(fuse, reuse);
            let program = tc_compiler::compile(&src, &options).expect("compiles");
            let got =
                tc_runtime::cpu::run(&program.plan, std::slice::from_ref(&x), &[]).expect("runs");
            for ((g, w), o) in got.iter().zip(&want).zip(&program.checked.outputs) {
                let tol = tc_tests::tolerance(dtype);
                for (i, (&gv, &wv)) in g.to_f32().iter().zip(&w.values).enumerate() {
                    assert!(
                        tol.admits(gv as f64, wv, 1.0),
                        "{dtype} {} [{i}] fuse={fuse} reuse={reuse}: CPU {gv}, reference {wv}",
                        o.name
                    );
                }
            }
        }
        // PyTorch's special cases, in the reference itself.
        let l = &want[0].values;
        assert!(l[0].is_nan() && l[1] == f64::INFINITY && l[2] == f64::NEG_INFINITY);
        assert!(l[4] == f64::INFINITY && (l[3] - (1.0f64 + (-1f64).exp()).ln()).abs() < 1e-2);
        let v = &want[2].values;
        assert!(v[0].is_nan() && v[1].is_nan() && v[7] == 0.0);
        assert!(
            want[5].values.iter().all(|t| t.is_nan()),
            "std of one element, correction 1"
        );
    }
}

/// `var` and `std` of rows far from zero (1e4 ± 0.01) keep f32 accuracy: the mean rounded
/// to f32 is off by up to half an ulp of 1e4 (5e-4), which the plain two-pass form squared
/// into the variance (a relative error of 2e-3 here); the corrected two-pass form takes it
/// out (PyTorch, accumulating in f64 on the CPU, is within 1e-7). Constant rows stay 0.
#[test]
fn var_of_rows_far_from_zero_keeps_f32_accuracy() {
    let (rows, cols) = (6u64, 1000u64);
    let mut state = 12345u64;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f64 / (1u64 << 24) as f64 - 0.5
    };
    let offsets = [1e4, -3e4, 7.3, 1e4, 0.1, 2e5];
    let scales = [0.01, 0.02, 1e-3, 0.0, 0.0, 1.0];
    let values: Vec<f32> = (0..rows as usize)
        .flat_map(|r| {
            (0..cols)
                .map(|_| (offsets[r] + scales[r] * noise()) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let src = "input x : f32[6, 1000]\nv = var(x, axis=-1)\ns = std(x, axis=-1, correction=0)\n\
               output v, s\n";
    let x = HostTensor::from_f32(DType::F32, vec![rows, cols], &values);
    for (fuse, reuse) in tc_tests::COMBOS {
        let options = tc_tests::combo_options(fuse, reuse);
        let program = tc_compiler::compile(src, &options).expect("compiles");
        let got = tc_runtime::cpu::run(&program.plan, std::slice::from_ref(&x), &[]).expect("runs");
        for (r, row) in values.chunks(cols as usize).enumerate() {
            let n = cols as f64;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
            let ss: f64 = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
            for (out, want) in [(0, ss / (n - 1.0)), (1, (ss / n).sqrt())] {
                let g = got[out].to_f32()[r] as f64;
                let ok = if want == 0.0 {
                    g == 0.0
                } else {
                    ((g - want) / want).abs() < 1e-5
                };
                assert!(
                    ok,
                    "row {r} output {out} fuse={fuse} reuse={reuse}: {g}, want {want}"
                );
            }
        }
    }
}
