//! Shared helpers for the end-to-end tests: the one tolerance table, comparing a computed
//! tensor with the reference, the differential check (every fuse/reuse combination of the
//! CPU executor against the f64 reference evaluator), and the one random-program
//! generator (`gen`).

use tc_compiler::ir::DType;
use tc_compiler::{CompileOptions, PlanOptions};
use tc_runtime::reference::{self, RefTensor};
use tc_runtime::HostTensor;

pub mod accuracy;
pub mod attention;
pub mod gen;
pub mod gradcheck;
pub mod index_add;

/// The one tolerance table of the tests (the accuracy of single ops in f32 is
/// `ir::eval::unary_accuracy` / `binary_accuracy`, which the executors' kernels are held to).
///
/// A value is within a tolerance when `|got - want| <= abs · scale + rel · |want|`; NaN
/// only matches NaN and an infinity only itself. What `scale` is depends on the comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rel: f64,
    pub abs: f64,
}

impl Tolerance {
    /// Whether `got` is within this tolerance of `want`, absolute error scaled by `scale`.
    pub fn admits(self, got: f64, want: f64, scale: f64) -> bool {
        if want.is_nan() || got.is_nan() {
            want.is_nan() && got.is_nan()
        } else if want.is_infinite() || got.is_infinite() {
            got == want
        } else {
            (got - want).abs() <= self.abs * scale + self.rel * want.abs()
        }
    }
}

/// How far an executor's value may be from the f64 reference's, where `scale` is
/// `max(1, max |want|)` over the tensor (so a value that comes out near zero by cancellation
/// is judged against the size of its neighbours).
///
/// - f32: 1e-4 / 1e-4 — f32 arithmetic, polynomial `exp`/`tanh`/`erf` (within 2 ulp) and
///   f32 pairwise accumulation against f64 rounded per node.
/// - f16: 1e-2 / 1e-2 — both sides round every value to f16 (2^-11 relative), but from
///   slightly different f32/f64 values, and decomposed row ops round at different points, so
///   a value may land one or two f16 ulps away and carry that through later ops.
/// - bf16: 5e-2 / 5e-2 — the same with 2^-8 ulps.
/// - i32, i64, bool: exact (0 / 0) — integers are computed exactly everywhere.
pub fn tolerance(dtype: DType) -> Tolerance {
    match dtype {
        DType::I32 | DType::I64 | DType::Bool => Tolerance { rel: 0.0, abs: 0.0 },
        DType::F32 => Tolerance {
            rel: 1e-4,
            abs: 1e-4,
        },
        DType::F16 => Tolerance {
            rel: 1e-2,
            abs: 1e-2,
        },
        DType::BF16 => Tolerance {
            rel: 5e-2,
            abs: 5e-2,
        },
    }
}

/// How far two f32 executors (CUDA, or its emulation, against the CPU executor) may be
/// apart, value by value (`scale` 1): they sum in different orders (warp shuffles, block
/// partials and split folds against blocked pairwise sums, cuBLAS against `gemm`) and CUDA's
/// `expf`/`tanhf`/`erff` are not the CPU's polynomials.
///
/// - f32: rel 2e-3, abs 2e-4 — long sums and matrix products over thousands of terms.
/// - f16: 2e-2 / 2e-2, bf16: 6e-2 / 6e-2 — an f16/bf16 rounding that lands the other way.
/// - i32, i64, bool: exact.
pub fn between_executors(dtype: DType) -> Tolerance {
    match dtype {
        DType::I32 | DType::I64 | DType::Bool => Tolerance { rel: 0.0, abs: 0.0 },
        DType::F32 => Tolerance {
            rel: 2e-3,
            abs: 2e-4,
        },
        DType::F16 => Tolerance {
            rel: 2e-2,
            abs: 2e-2,
        },
        DType::BF16 => Tolerance {
            rel: 6e-2,
            abs: 6e-2,
        },
    }
}

/// The tolerance for the value of `node`: that of the least precise dtype anywhere in the
/// computation of it (an f32 result of a bf16 intermediate inherits bf16's tolerance, as
/// one bf16 rounding that lands the other way moves it by a bf16 ulp).
pub fn tolerance_for(graph: &tc_compiler::ir::Graph, node: tc_compiler::ir::NodeId) -> Tolerance {
    let mut seen = vec![false; graph.len()];
    let mut stack = vec![node];
    let mut tol = tolerance(graph.dtype(node));
    while let Some(n) = stack.pop() {
        if std::mem::replace(&mut seen[n.index()], true) {
            continue;
        }
        let t = tolerance(graph.dtype(n));
        tol = Tolerance {
            rel: tol.rel.max(t.rel),
            abs: tol.abs.max(t.abs),
        };
        stack.extend(graph.node(n).op.operands());
    }
    tol
}

/// Compares `got` with the reference `want` (dtype, shape, then every value) within `tol`.
pub fn compare(
    name: &str,
    got: &HostTensor,
    want: &RefTensor,
    tol: Tolerance,
) -> Result<(), String> {
    if got.dtype != want.dtype || got.shape != want.shape {
        return Err(format!(
            "output {name}: got {}{:?}, reference {}{:?}",
            got.dtype, got.shape, want.dtype, want.shape
        ));
    }
    if want.dtype.is_integral() {
        // Integers and bools are exact: every value must be the reference's.
        let got = got.to_i64();
        let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want.ints[i]).collect();
        return match bad.first() {
            None => Ok(()),
            Some(&i) => Err(format!(
                "output {name} ({}{:?}): {} of {} values differ; first at flat index {i}: got {}, reference {}",
                want.dtype,
                want.shape,
                bad.len(),
                got.len(),
                got[i],
                want.ints[i]
            )),
        };
    }
    let scale = want
        .values
        .iter()
        .filter(|v| v.is_finite())
        .fold(1f64, |m, v| m.max(v.abs()));
    let got = got.to_f32();
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(&want.values).enumerate() {
        let g = g as f64;
        if !tol.admits(g, w, scale) {
            let err = if g.is_finite() {
                (g - w).abs()
            } else {
                f64::INFINITY
            };
            if worst.is_none_or(|(_, _, _, e)| err > e) {
                worst = Some((i, g, w, err));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, g, w, err)) => {
            let bad = got
                .iter()
                .zip(&want.values)
                .filter(|(g, w)| !tol.admits(**g as f64, **w, scale))
                .count();
            Err(format!(
                "output {name} ({}{:?}): {bad} of {} values out of tolerance; worst at flat index {i}: got {g}, reference {w} (error {err:.3e}, scale {scale:.3})",
                want.dtype,
                want.shape,
                got.len()
            ))
        }
    }
}

/// The four plan variants every differential test runs: (fuse, reuse).
pub const COMBOS: [(bool, bool); 4] = [(true, true), (true, false), (false, true), (false, false)];

/// The default compile options with fusion and reuse as given (one of `COMBOS`).
pub fn combo_options(fuse: bool, reuse: bool) -> CompileOptions {
    CompileOptions {
        plan: PlanOptions {
            fuse,
            reuse,
            ..PlanOptions::default()
        },
        ..CompileOptions::default()
    }
}

/// Compiles `source` with `dims` in every fuse/reuse combination, runs each plan on the
/// CPU with seeded random inputs and params, and compares every output with the reference
/// evaluation of the checked graph. The error says which combination and output failed.
pub fn differential(source: &str, dims: &[(String, u64)], seed: u64) -> Result<(), String> {
    let diag = |d: tc_compiler::Diagnostics| {
        let msgs: Vec<String> = d
            .iter()
            .map(|d| format!("{}: {}", d.code(), d.message))
            .collect();
        msgs.join("; ")
    };
    // The reference runs the checked graph, which no plan option changes.
    let checked =
        tc_compiler::check(source, dims).map_err(|d| format!("does not check: {}", diag(d)))?;
    let leaf = |l: &tc_compiler::ir::Leaf| tc_runtime::data::random_leaf(&checked, l, seed);
    let inputs: Vec<HostTensor> = checked.inputs.iter().map(leaf).collect();
    let params: Vec<HostTensor> = checked.params.iter().map(leaf).collect();
    let want =
        reference::evaluate(&checked, &inputs, &params).map_err(|e| format!("reference: {e}"))?;
    for (fuse, reuse) in COMBOS {
        let options = CompileOptions {
            dims: dims.to_vec(),
            plan: PlanOptions {
                fuse,
                reuse,
                ..PlanOptions::default()
            },
        };
        let program = tc_compiler::compile(source, &options)
            .map_err(|d| format!("fuse={fuse} reuse={reuse}: does not compile: {}", diag(d)))?;
        // The independent plan checker, in release builds too (compile runs it in debug only).
        tc_compiler::plan::verify(&program.plan)
            .map_err(|e| format!("fuse={fuse} reuse={reuse}: plan fails verification: {e}"))?;
        let got = tc_runtime::cpu::run(&program.plan, &inputs, &params)
            .map_err(|e| format!("fuse={fuse} reuse={reuse}: cpu executor: {e}"))?;
        if got.len() != want.len() {
            return Err(format!(
                "fuse={fuse} reuse={reuse}: {} outputs, reference has {}",
                got.len(),
                want.len()
            ));
        }
        for (((out, g), w), o) in program
            .plan
            .outputs
            .iter()
            .zip(&got)
            .zip(&want)
            .zip(&checked.outputs)
        {
            compare(&out.name, g, w, tolerance_for(&checked, o.node))
                .map_err(|e| format!("fuse={fuse} reuse={reuse}: {e}"))?;
        }
    }
    Ok(())
}

/// Reductions of 2^18+ elements into one value, which the planner splits into a kernel of
/// partials and a fold of them (`plan::split`): sums, means, max/min, f16 data, a
/// row-level tail after the fold, an element output beside the reduction, a transposed
/// read (not split: one stride cannot read it in order) and a prime count (not split).
pub const LARGE_REDUCTIONS: &[&str] = &[
    "dim N = 262144\ninput x : f32[N]\ns = sum(x)\noutput s\n",
    "dim N = 512\ndim M = 1024\ninput x : f32[N, M]\ninput t : f32[N, M]\nloss = mean((x - t) ** 2)\noutput loss\n",
    "dim N = 300000\ninput x : f32[N]\na = max(x)\nb = min(exp(x))\noutput a, b\n",
    "dim N = 262144\ninput x : f16[N]\ns = sum(x * 0.5)\nm = mean(x)\noutput s, m\n",
    "dim N = 262144\ninput x : f32[N]\nparam w : f32[1]\ny = exp(x)\ns = sqrt(sum(y)) * w + 1\noutput y, s\n",
    "dim N = 512\ndim M = 1024\ninput x : f32[N, M]\ns = sum(transpose(x) * 2)\noutput s\n",
    "dim N = 262147\ninput x : f32[N]\ns = sum(x)\noutput s\n",
    "dim N = 1048576\ninput x : f32[N]\ns = mean(abs(x))\noutput s\n",
    "dim N = 1048576\ninput x : f32[N]\ny = sum(x) + max(x)\noutput y\n",
];

/// Every `examples/*.tx` as (name, source), sorted by name. `TC_EXAMPLES_DIR` points
/// elsewhere: the GPU machine runs a test binary built here, far from this checkout.
pub fn examples() -> Vec<(String, String)> {
    let dir = match std::env::var_os("TC_EXAMPLES_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples"),
    };
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("examples folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tx"))
        .map(|p| {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            (name, std::fs::read_to_string(&p).expect("readable example"))
        })
        .collect();
    v.sort();
    v
}
