//! Every elementwise op of an executor against its accuracy contract: a one-op program,
//! compiled through the normal pipeline and run on the executor under test over a dense
//! sweep of f32 inputs, each result compared with the op's f64 meaning (`ir::eval::unary`,
//! `binary`, the functions the CPU's `transcendentals_dense_sweep` and the reference
//! evaluator use) by `ir::eval::Accuracy::admits` with the op's `unary_accuracy` /
//! `binary_accuracy`.
//!
//! One function (`check_elementwise_accuracy`) serves both executors: the CPU's test
//! (`tests/semantics.rs`, every CI run, `Sweep::CPU`) and the CUDA one (`tests/cuda.rs`,
//! `gpu_elementwise_ops_meet_their_accuracy`, on a GPU, `Sweep::GPU`).

use rayon::prelude::*;
use tc_compiler::ir::{eval, BinaryOp, CmpOp, DType, UnaryOp};
use tc_compiler::{CompileOptions, Program};
use tc_runtime::HostTensor;

/// The bounds an executor is held to: `ir::eval`'s contract for kernels as tc compiles them
/// by default (`EXACT`, the CPU's), for CUDA kernels (`CUDA`: NVIDIA's documented bounds
/// where a kernel calls the CUDA maths library), or for CUDA kernels compiled with fast
/// maths (`--fast-math`).
#[derive(Clone, Copy)]
pub struct Contract {
    pub name: &'static str,
    pub unary: fn(UnaryOp) -> eval::Accuracy,
    pub binary: fn(BinaryOp) -> eval::Accuracy,
}

impl Contract {
    pub const EXACT: Contract = Contract {
        name: "the accuracy contract",
        unary: eval::unary_accuracy,
        binary: eval::binary_accuracy,
    };
    pub const CUDA: Contract = Contract {
        name: "the CUDA accuracy contract",
        unary: eval::cuda_unary_accuracy,
        binary: eval::cuda_binary_accuracy,
    };
    pub const FAST_MATH: Contract = Contract {
        name: "the fast-maths contract",
        unary: eval::fast_math_unary_accuracy,
        binary: eval::fast_math_binary_accuracy,
    };
}

/// How densely the inputs cover f32: every `every`-th bit pattern (all exponents, both
/// signs, subnormals, NaNs), every `dense_every`-th f32 of 0.25 ≤ |x| < 10 (where the
/// functions switch forms), and the specials. Binary ops run on the grid of two such
/// sweeps, `grid.0` for the left operand and `grid.1` for the right.
#[derive(Clone, Copy, Debug)]
pub struct Sweep {
    pub every: u32,
    pub dense_every: u32,
    pub grid: ((u32, u32), (u32, u32)),
}

impl Sweep {
    /// For a GPU: 16.9 M inputs per unary op, a 4 368 × 455 grid per binary op.
    pub const GPU: Sweep = Sweep {
        every: 997,
        dense_every: 7,
        grid: ((2_000_003, 40_009), (20_000_003, 400_009)),
    };
    /// For the CPU on every CI run: 3.6 M inputs per unary op, a 2 194 × 310 grid.
    pub const CPU: Sweep = Sweep {
        every: 2003,
        dense_every: 61,
        grid: ((4_000_037, 80_021), (30_000_001, 600_011)),
    };
}

/// The f32 bit patterns `0 ≤ b ≤ u32::MAX` stepping by `every`, every `dense_every`-th f32
/// of 0.25 ≤ |x| < 10, and the specials: ±0, ±inf, NaN, the smallest and largest
/// subnormals and normals, ±1, ±0.5.
pub fn sweep_values(every: u32, dense_every: u32) -> Vec<f32> {
    let mut xs: Vec<f32> = (0..=u32::MAX)
        .step_by(every as usize)
        .map(f32::from_bits)
        .collect();
    for sign in [0u32, 0x8000_0000] {
        // 0x3e80_0000 is 0.25, 0x4120_0000 is 10.
        xs.extend(
            (0x3e80_0000u32..0x4120_0000)
                .step_by(dense_every as usize)
                .map(|b| f32::from_bits(b | sign)),
        );
    }
    for x in [
        0.0,
        f32::INFINITY,
        f32::NAN,
        f32::from_bits(1),
        f32::from_bits(0x007f_ffff),
        f32::MIN_POSITIVE,
        f32::MAX,
        1.0,
        0.5,
    ] {
        xs.push(x);
        xs.push(-x);
    }
    xs
}

/// The float ops swept: every unary op but `logical_not` (defined on `bool` only).
pub fn unary_ops() -> Vec<UnaryOp> {
    UnaryOp::ALL
        .into_iter()
        .filter(|&op| op != UnaryOp::Not)
        .collect()
}

/// The binary ops on f32 operands: arithmetic, `maximum`/`minimum` and the comparisons
/// (`logical_and`/`logical_or` take `bool` operands).
pub fn binary_ops() -> Vec<BinaryOp> {
    let mut ops = BinaryOp::ARITHMETIC.to_vec();
    ops.extend(CmpOp::ALL.map(BinaryOp::Cmp));
    ops
}

fn unary_source(op: UnaryOp, n: usize) -> String {
    let y = match op {
        UnaryOp::Neg => "-x".to_string(),
        _ => format!("{}(x)", op.name()),
    };
    format!("input x : f32[{n}]\ny = {y}\noutput y\n")
}

fn binary_source(op: BinaryOp, n: usize) -> String {
    let y = match op.operator() {
        Some(sym) => format!("a {sym} b"),
        None => format!("{}(a, b)", op.name()),
    };
    format!("input a : f32[{n}]\ninput b : f32[{n}]\ny = {y}\noutput y\n")
}

/// Runs a compiled program on the executor under test with the given inputs (no params):
/// its outputs, or the executor's error as text.
pub type Executor<'a> = &'a dyn Fn(&Program, &[HostTensor]) -> Result<Vec<HostTensor>, String>;

/// What one op's sweep found.
#[derive(Clone, Debug, Default)]
struct Stats {
    checked: usize,
    /// The largest error in ulps of the exact result's f32 (`eval::ulp_f32`) among the
    /// results whose absolute error is above the bound's `abs` part (both sides finite, the
    /// exact value within f32's range), and the input where it is.
    max_ulp: (f64, usize),
    /// The largest absolute error (finite results).
    max_abs: f64,
    /// The largest share of the bound an error uses, `|got - exact| / (ulps · ulp + abs)`
    /// (finite results; at most 1 within the bound).
    max_used: f64,
    violations: usize,
    /// The worst violations: (error in ulps, infinite for a NaN or infinity mismatch; input).
    worst: Vec<(f64, usize)>,
}

const WORST: usize = 5;

impl Stats {
    fn merge(mut self, other: Stats) -> Stats {
        self.checked += other.checked;
        if other.max_ulp.0 > self.max_ulp.0 {
            self.max_ulp = other.max_ulp;
        }
        self.max_abs = self.max_abs.max(other.max_abs);
        self.max_used = self.max_used.max(other.max_used);
        self.violations += other.violations;
        self.worst.extend(other.worst);
        self.keep_worst();
        self
    }

    fn keep_worst(&mut self) {
        self.worst
            .sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        self.worst.truncate(WORST);
    }
}

/// Compares `got[i]` with `want(i)` for every `i` under `acc` (in parallel).
fn measure(got: &[f32], want: &(dyn Fn(usize) -> f64 + Sync), acc: eval::Accuracy) -> Stats {
    const CHUNK: usize = 1 << 14;
    got.par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut s = Stats::default();
            for (k, &g) in chunk.iter().enumerate() {
                let i = c * CHUNK + k;
                let w = want(i);
                s.checked += 1;
                let admitted = acc.admits(g, w);
                let err = if w.is_finite() && g.is_finite() && (w as f32).is_finite() {
                    let abs = (g as f64 - w).abs();
                    let ulp = eval::ulp_f32(w);
                    s.max_abs = s.max_abs.max(abs);
                    s.max_used = s.max_used.max(abs / (acc.ulps * ulp + acc.abs));
                    if abs > acc.abs {
                        abs / ulp
                    } else {
                        0.0
                    }
                } else if admitted {
                    0.0
                } else {
                    // A NaN or an infinity where the meaning has another value.
                    f64::INFINITY
                };
                if err.is_finite() && err > s.max_ulp.0 {
                    s.max_ulp = (err, i);
                }
                if !admitted {
                    s.violations += 1;
                    s.worst.push((err, i));
                    if s.worst.len() > 4 * WORST {
                        s.keep_worst();
                    }
                }
            }
            s.keep_worst();
            s
        })
        .reduce(Stats::default, Stats::merge)
}

fn bound(acc: eval::Accuracy) -> String {
    if acc == eval::Accuracy::EXACT {
        "exact".into()
    } else if acc.abs > 0.0 {
        format!("{} ulp + {:.0e}", acc.ulps, acc.abs)
    } else {
        format!("{} ulp", acc.ulps)
    }
}

/// `x` and its bits.
fn show(x: f32) -> String {
    format!("{x:e} ({:#010x})", x.to_bits())
}

/// Sweeps every float unary op (`unary_ops`) and f32 binary op (`binary_ops`) on
/// `executor`, programs compiled with `options`: prints a table, one row per op (inputs
/// checked, the largest error in ulps measured and where, the contract's bound, the
/// verdict), and returns an error listing the worst few inputs of every op outside its
/// bound. `label` names the executor in the output, which ends with the seconds taken in
/// all and by the host's share (the f64 meaning and the comparison).
pub fn check_elementwise_accuracy(
    label: &str,
    options: &CompileOptions,
    contract: Contract,
    sweep: Sweep,
    executor: Executor,
) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut reference_s = 0.0;
    let mut failures = Vec::new();
    println!(
        "elementwise ops on {label} against ir::eval's f64 meaning, within {} ({sweep:?})",
        contract.name
    );
    println!(
        "| op | inputs | max ulp (error above the abs part) | at | max abs error (abs bounds) \
         | bound | max share of the bound | outside | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut report = |name: &str,
                      acc: eval::Accuracy,
                      s: &Stats,
                      input: &dyn Fn(usize) -> String,
                      show_at: &dyn Fn(usize) -> String| {
        let verdict = if s.violations == 0 { "pass" } else { "FAIL" };
        // Only where the bound has an absolute part (elsewhere it is the error of the
        // largest results, which says nothing).
        let max_abs = if acc.abs > 0.0 {
            format!("{:.2e}", s.max_abs)
        } else {
            "-".into()
        };
        let at = if s.max_ulp.0 > 0.0 {
            input(s.max_ulp.1)
        } else {
            "-".into()
        };
        println!(
            "| {name} | {} | {:.3} | {at} | {max_abs} | {} | {:.3} | {} | {verdict} |",
            s.checked,
            s.max_ulp.0,
            bound(acc),
            s.max_used,
            s.violations
        );
        if s.violations > 0 {
            let worst: Vec<String> = s
                .worst
                .iter()
                .map(|&(e, i)| format!("    {} ({e:.3} ulp)", show_at(i)))
                .collect();
            failures.push(format!(
                "{label}: {name} outside {} at {} of {} inputs; the worst:\n{}",
                bound(acc),
                s.violations,
                s.checked,
                worst.join("\n")
            ));
        }
    };

    let xs = sweep_values(sweep.every, sweep.dense_every);
    let input = [HostTensor::from_f32(DType::F32, vec![xs.len() as u64], &xs)];
    for op in unary_ops() {
        let got = run_one(executor, options, &unary_source(op, xs.len()), &input)
            .map_err(|e| format!("{label}: {}: {e}", op.name()))?;
        let acc = (contract.unary)(op);
        let t = std::time::Instant::now();
        let s = measure(&got, &|i| eval::unary(op, xs[i] as f64), acc);
        reference_s += t.elapsed().as_secs_f64();
        let show_at = |i: usize| {
            format!(
                "x = {} -> {:e}, meaning {:e}",
                show(xs[i]),
                got[i],
                eval::unary(op, xs[i] as f64)
            )
        };
        report(op.name(), acc, &s, &|i| show(xs[i]), &show_at);
    }

    let ((ea, da), (eb, db)) = sweep.grid;
    let (xa, xb) = (sweep_values(ea, da), sweep_values(eb, db));
    let (a, b): (Vec<f32>, Vec<f32>) = xa
        .iter()
        .flat_map(|&x| xb.iter().map(move |&y| (x, y)))
        .unzip();
    let n = a.len() as u64;
    let inputs = [
        HostTensor::from_f32(DType::F32, vec![n], &a),
        HostTensor::from_f32(DType::F32, vec![n], &b),
    ];
    for op in binary_ops() {
        let got = run_one(executor, options, &binary_source(op, a.len()), &inputs)
            .map_err(|e| format!("{label}: {}: {e}", op.name()))?;
        let acc = (contract.binary)(op);
        let t = std::time::Instant::now();
        let s = measure(&got, &|i| eval::binary(op, a[i] as f64, b[i] as f64), acc);
        reference_s += t.elapsed().as_secs_f64();
        let show_at = |i: usize| {
            format!(
                "(a, b) = ({}, {}) -> {:e}, meaning {:e}",
                show(a[i]),
                show(b[i]),
                got[i],
                eval::binary(op, a[i] as f64, b[i] as f64)
            )
        };
        let input = |i: usize| format!("({}, {})", show(a[i]), show(b[i]));
        report(op.name(), acc, &s, &input, &show_at);
    }
    println!(
        "{label}: {:.2} s in all, {reference_s:.2} s of it computing the meaning and comparing",
        start.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Compiles `source`, runs it on `executor` and returns its one output as f32 (a `bool`
/// output as 0 and 1).
fn run_one(
    executor: Executor,
    options: &CompileOptions,
    source: &str,
    inputs: &[HostTensor],
) -> Result<Vec<f32>, String> {
    let program = tc_compiler::compile(source, options)
        .map_err(|d| format!("does not compile: {d:?}\n{source}"))?;
    let outputs = executor(&program, inputs)?;
    let [out] = outputs.as_slice() else {
        return Err(format!("{} outputs, expected 1", outputs.len()));
    };
    Ok(out.to_f32())
}
