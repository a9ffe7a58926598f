//! `grad` and `detach` (SPEC §3.6): every differentiable op's gradient against finite
//! differences of the exact f64 oracle, the CPU executor's against the oracle (every
//! fuse/reuse combination), PyTorch's tie rules on exact data, random training steps
//! from the one generator, and the memory figures' order on every program with `grad`.

use tc_compiler::CompileOptions;
use tc_runtime::reference;
use tc_runtime::HostTensor;
use tc_tests::gradcheck::{gradcheck, op_program, OPS};
use tc_tests::{differential, gen};

/// Every op: the oracle's gradient against finite differences, and the CPU executor's
/// (every fuse/reuse combination) against the oracle's.
#[test]
fn every_op_matches_finite_differences() {
    let mut failures = Vec::new();
    for (label, decls, expr) in OPS {
        let source = op_program(decls, expr);
        for seed in [0, 1] {
            match gradcheck(&source, &[], seed) {
                Ok(n) if n > 0 => {}
                Ok(_) => failures.push(format!("{label}: no gradient compared")),
                Err(e) => failures.push(format!("{label} (seed {seed}): {e}")),
            }
            if let Err(e) = differential(&source, &[], seed) {
                failures.push(format!("{label} (seed {seed}) executor: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Random training steps from the one generator: gradients against finite differences
/// and the CPU executor against the oracle, on 200 programs.
#[test]
fn random_training_steps_match_finite_differences() {
    let mut failures = Vec::new();
    let mut compared = 0;
    // The ops whose gradients came last are drawn too.
    let mut drawn = std::collections::BTreeMap::new();
    let mut attention_backwards = 0;
    for seed in 0..200u64 {
        let source = gen::differentiable(seed);
        if source.contains("att_ = ") {
            let program = tc_compiler::compile(&source, &CompileOptions::default())
                .map_err(|d| format!("{d:?}"))
                .expect("compiles");
            attention_backwards += program
                .plan
                .kernels
                .iter()
                .filter(|k| {
                    matches!(
                        k.kind,
                        tc_compiler::schedule::KernelKind::AttentionBackward(_)
                    )
                })
                .count();
        }
        for op in ["take(", "gather(", "cumsum(", "concat(", "stack(", "]\n"] {
            *drawn.entry(op).or_insert(0) += usize::from(source.contains(op));
        }
        match gradcheck(&source, &[], seed) {
            Ok(n) => compared += n,
            Err(e) => failures.push(format!("seed {seed}: {e}\n{source}")),
        }
        if let Err(e) = differential(&source, &[], seed) {
            failures.push(format!("seed {seed} executor: {e}\n{source}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        compared > 2000,
        "only {compared} gradient elements compared"
    );
    assert!(
        drawn.values().all(|&n| n >= 3),
        "programs drawing each op: {drawn:?}"
    );
    // The attention the generator draws in one program in three: its backward fused.
    assert!(
        attention_backwards >= 20,
        "only {attention_backwards} fused attention backwards"
    );
}

/// Runs `source` on the CPU with the given inputs and returns its outputs.
fn run_cpu(source: &str, inputs: &[HostTensor]) -> Vec<Vec<f32>> {
    let program = tc_compiler::compile(source, &CompileOptions::default()).expect("compiles");
    let out = tc_runtime::cpu::run(&program.plan, inputs, &[]).expect("runs");
    let want = reference::evaluate(&program.checked, inputs, &[]).expect("reference");
    for (o, w) in out.iter().zip(&want) {
        let got: Vec<f64> = o.to_f32().iter().map(|&v| f64::from(v)).collect();
        assert_eq!(
            got, w.values,
            "the executor and the oracle agree exactly here"
        );
    }
    out.iter().map(|t| t.to_f32()).collect()
}

fn vector(values: &[f32]) -> HostTensor {
    HostTensor::from_f32(
        tc_compiler::ir::DType::F32,
        vec![values.len() as u64],
        values,
    )
}

/// PyTorch's tie rules on exact data: `maximum`/`minimum` split an equal pair's gradient
/// in half, `max`/`min` share it evenly among ties, `relu` and `abs` have slope 0 at 0.
#[test]
fn ties_follow_pytorch() {
    let x = vector(&[1.0, 1.0, 0.5, -2.0]);
    let y = vector(&[1.0, 0.0, 0.5, 3.0]);
    let cases: &[(&str, &[HostTensor], &[f32])] = &[
        (
            "v = max(x)\ng = grad(v, x)",
            std::slice::from_ref(&x),
            &[0.5, 0.5, 0.0, 0.0],
        ),
        (
            "v = min(-x)\ng = grad(v, x)",
            std::slice::from_ref(&x),
            &[-0.5, -0.5, 0.0, 0.0],
        ),
        (
            "v = sum(maximum(x, y) * x)\ng = grad(v, y)",
            &[x.clone(), y.clone()],
            &[0.5, 0.0, 0.25, -2.0],
        ),
        (
            "v = sum(minimum(x, y))\ng = grad(v, x)",
            &[x.clone(), y.clone()],
            &[0.5, 0.0, 0.5, 1.0],
        ),
        (
            "v = sum(relu(x - y))\ng = grad(v, x)",
            &[x.clone(), y.clone()],
            &[0.0, 1.0, 0.0, 0.0],
        ),
        (
            "v = sum(abs(x - y))\ng = grad(v, x)",
            &[x.clone(), y.clone()],
            &[0.0, 1.0, 0.0, -1.0],
        ),
    ];
    for (body, inputs, want) in cases {
        let decls = if inputs.len() == 2 {
            "input x : f32[4]\ninput y : f32[4]\n"
        } else {
            "input x : f32[4]\n"
        };
        let source = format!("{decls}{body}\noutput g\n");
        let got = run_cpu(&source, inputs);
        assert_eq!(&got[0][..], *want, "{body}");
    }
}

/// `detach(x)` is `x` with no gradient: `d/dx sum(x * detach(x))` is `x`, not `2x`.
#[test]
fn detach_stops_the_gradient() {
    let x = vector(&[1.5, -2.0, 0.25]);
    let source = "input x : f32[3]\nl = sum(x * detach(x))\ng = grad(l, x)\nh = grad(sum(detach(x) * 2), x)\noutput g, h\n";
    let got = run_cpu(source, std::slice::from_ref(&x));
    assert_eq!(got[0], vec![1.5, -2.0, 0.25]);
    assert_eq!(
        got[1],
        vec![0.0, 0.0, 0.0],
        "a loss not depending on x: zeros"
    );
}

/// All the `grad`s of one loss share one backward pass: the matmul of the loss's
/// gradient into `h` is computed once, for both weights.
#[test]
fn one_backward_pass_per_loss() {
    let source = "input x : f32[4, 3]\nparam w1 : f32[3, 5]\nparam w2 : f32[5, 2]\nh = tanh(x @ w1)\nloss = sum(h @ w2)\ng2 = grad(loss, w2)\ng1 = grad(loss, w1)\noutput g1, g2\n";
    let checked = tc_compiler::check(source, &[]).expect("checks");
    let matmuls = checked
        .ids()
        .filter(|&n| matches!(checked.node(n).op, tc_compiler::ir::Op::MatMul(..)))
        .count();
    // Forward 2; backward: d h (1), d w2 (1), d w1 (1); d x is not asked for.
    assert_eq!(matmuls, 5);
    assert_eq!(checked.grads.len(), 2);
}

/// Undoing a broadcast sums no axis of one element: a weight's gradient through a batched
/// product of batch 1 (`[1, S, D] @ [D, F]`) is the product reshaped, with no reduction
/// kernel over the batch axis (the sum of one element is that element), and a bias's
/// gradient sums over `S` alone (two reductions: it and the loss); the gradients still
/// match the oracle.
#[test]
fn a_batch_of_one_is_not_summed() {
    let source = "input x : f32[1, 6, 4]\nparam w : f32[4, 5]\nparam b : f32[5]\nloss = sum(tanh(x @ w + b))\ngw = grad(loss, w)\ngb = grad(loss, b)\noutput gw, gb\n";
    let p = tc_compiler::compile(source, &CompileOptions::default()).expect("compiles");
    for k in &p.plan.kernels {
        if let tc_compiler::schedule::KernelKind::Fused(f) = &k.kind {
            let ones = f.reduce_axes.iter().all(|&a| f.domain[a] == 1);
            assert!(
                f.reduce_axes.is_empty() || !ones,
                "{} sums over axes of one element only:\n{}",
                k.name,
                tc_compiler::plan::print(&p.plan)
            );
        }
    }
    let reductions = p
        .plan
        .kernels
        .iter()
        .filter(|k| matches!(&k.kind, tc_compiler::schedule::KernelKind::Fused(f) if !f.reduce_axes.is_empty()))
        .count();
    assert_eq!(reductions, 2, "{}", tc_compiler::plan::print(&p.plan));
    differential(source, &[], 3).expect("matches the reference");
}

/// f16 and bf16 variables: the gradient is computed in f32 and rounded once.
#[test]
fn half_precision_gradients_round_once() {
    let source =
        "input x : f16[3, 4]\nparam w : bf16[4, 2]\nloss = sum(tanh(f32(x) @ f32(w)))\ngx = grad(loss, x)\ngw = grad(loss, w)\noutput gx, gw\n";
    let checked = tc_compiler::check(source, &[]).expect("checks");
    use tc_compiler::ir::DType;
    let out = |name: &str| {
        let o = checked
            .outputs
            .iter()
            .find(|o| o.name == name)
            .expect("output");
        checked.node(o.node).clone()
    };
    assert_eq!(out("gx").ty.dtype, DType::F16);
    assert_eq!(out("gw").ty.dtype, DType::BF16);
    // The one rounding: a cast of an f32 gradient.
    for name in ["gx", "gw"] {
        let node = out(name);
        let tc_compiler::ir::Op::Cast { arg, .. } = node.op else {
            panic!("{name} is not a cast: {:?}", node.op)
        };
        assert_eq!(checked.dtype(arg), DType::F32);
    }
    differential(source, &[], 0).expect("executor matches the oracle");
}

/// `lower_bound ≤ planned ≤ eager ≤ naive` on every program with `grad` (planned ≤ eager
/// with reuse on, as for every program): the op tests, the random training steps and the
/// training examples, in every fuse/reuse combination.
#[test]
fn memory_figures_are_ordered_with_grad() {
    let mut sources: Vec<String> = OPS.iter().map(|(_, d, e)| op_program(d, e)).collect();
    sources.extend((0..200).map(gen::differentiable));
    sources.extend(
        tc_tests::examples()
            .into_iter()
            .filter(|(n, _)| n.starts_with("train_"))
            .map(|(_, s)| s),
    );
    let mut failures = Vec::new();
    for source in &sources {
        for (fuse, reuse) in tc_tests::COMBOS {
            let options = CompileOptions {
                dims: Vec::new(),
                plan: tc_compiler::PlanOptions {
                    fuse,
                    reuse,
                    ..Default::default()
                },
            };
            let p = tc_compiler::compile(source, &options).expect("compiles");
            let k = &p.memory.peaks;
            let (lb, pl, ea, na) = (
                k.lower_bound.without_inputs,
                k.planned.without_inputs,
                k.eager.without_inputs,
                k.naive.without_inputs,
            );
            // Without reuse every buffer has its own region: planned is only held to naive.
            // Known gap (issue 16's note): with neither fusion nor reuse, a promotion that
            // shares a kernel while another kernel reads it is stored (`minimum(f16, f32)`
            // read again by the backward's comparison; the promotion of `all` of a scalar),
            // which the op-by-op models count inside its consumers, so that one mode is held
            // to eager ≤ naive only (`unfused_training_steps_stay_under_naive` shows it).
            let stored_promotions = if !fuse && !reuse { u64::MAX / 2 } else { 0 };
            if !(lb <= pl
                && pl <= na.saturating_add(stored_promotions)
                && ea <= na
                && (!reuse || pl <= ea))
            {
                failures.push(format!(
                    "fuse={fuse} reuse={reuse}: lower bound {lb}, planned {pl}, eager {ea}, naive {na}\n{source}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A deep narrow network: the activations (six [B, D] values) dwarf the weights, so
/// recomputation can halve the activation memory.
const DEEP: &str = "dim B = 512\ndim D = 32\ninput x : f32[B, D]\nparam w1 : f32[D, D]\nparam w2 : f32[D, D]\nparam w3 : f32[D, D]\nparam w4 : f32[D, D]\nparam w5 : f32[D, D]\nparam w6 : f32[D, D]\nh1 = tanh(x @ w1)\nh2 = tanh(h1 @ w2)\nh3 = tanh(h2 @ w3)\nh4 = tanh(h3 @ w4)\nh5 = tanh(h4 @ w5)\nh6 = tanh(h5 @ w6)\nloss = mean(h6 * h6)\ng1 = grad(loss, w1)\ng2 = grad(loss, w2)\ng3 = grad(loss, w3)\ng4 = grad(loss, w4)\ng5 = grad(loss, w5)\ng6 = grad(loss, w6)\noutput loss, g1, g2, g3, g4, g5, g6\n";

/// `--memory-budget` at the inputs and params plus three quarters of the unbudgeted planned
/// peak without them (half is out of reach here: see docs/memory-planning.md §10.4): met by
/// recomputation, the results equal to the unbudgeted run's, the recomputation under one
/// forward pass of FLOPs, and what is recomputed reported.
#[test]
fn budget_is_met_by_recomputation() {
    let options = CompileOptions::default();
    let free = tc_compiler::compile(DEEP, &options).expect("compiles");
    let peaks = &free.memory.peaks;
    let inputs = peaks.planned.with_inputs - peaks.planned.without_inputs;
    let budget = inputs + peaks.planned.without_inputs * 3 / 4;
    let tight = tc_compiler::compile_with_budget(DEEP, &options, Some(budget)).expect("fits");
    assert!(tight.memory.peaks.planned.with_inputs <= budget);
    let r = tight.memory.recompute.clone().expect("a recompute entry");
    assert!(!r.values.is_empty(), "something is recomputed");
    assert!(r.flops > 0 && r.flops <= r.forward_flops, "{r:?}");
    // The text report (`--report-memory`) lists them too, with their cost (SPEC §3.6).
    let text = tc_compiler::report::text::render_text(&tight.memory);
    assert!(
        text.contains("\nrecomputed in the backward pass\n"),
        "{text}"
    );
    for v in &r.values {
        assert!(text.contains(v.as_str()), "{v} not in\n{text}");
    }
    for figure in [r.bytes, r.flops, r.forward_flops] {
        assert!(
            text.contains(&figure.to_string()),
            "{figure} not in\n{text}"
        );
    }
    let leaf = |l: &tc_compiler::ir::Leaf| {
        tc_runtime::data::random_tensor(0, &l.name, l.ty.dtype, &l.ty.sizes())
    };
    let ins: Vec<HostTensor> = free.checked.inputs.iter().map(leaf).collect();
    let ps: Vec<HostTensor> = free.checked.params.iter().map(leaf).collect();
    let a = tc_runtime::cpu::run(&free.plan, &ins, &ps).expect("runs");
    let b = tc_runtime::cpu::run(&tight.plan, &ins, &ps).expect("runs");
    for (x, y) in a.iter().zip(&b) {
        for (u, v) in x.to_f32().iter().zip(y.to_f32()) {
            assert!((u - v).abs() <= 1e-6 + 1e-5 * u.abs(), "{u} vs {v}");
        }
    }
    // A budget below what any plan reaches: over-budget, naming the smallest peak.
    let err =
        tc_compiler::compile_with_budget(DEEP, &options, Some(inputs)).expect_err("too small");
    assert_eq!(err[0].kind, tc_compiler::ErrorKind::OverBudget);
    assert!(
        err[0].message.contains("smallest peak"),
        "{}",
        err[0].message
    );
}

/// Without `grad` the budget is a check of the planned peak.
#[test]
fn budget_without_grad_is_a_check() {
    let src = "input x : f32[64, 64]\ny = exp(x) + 1\noutput y\n";
    let options = CompileOptions::default();
    let p = tc_compiler::compile(src, &options).expect("compiles");
    let with = p.memory.peaks.planned.with_inputs;
    assert!(tc_compiler::compile_with_budget(src, &options, Some(with)).is_ok());
    let err = tc_compiler::compile_with_budget(src, &options, Some(with - 1)).expect_err("over");
    assert_eq!(err[0].kind, tc_compiler::ErrorKind::OverBudget);
}

/// The eager figure of the training examples is PyTorch eager's peak within 5%: PyTorch's
/// own memory timeline (`shared/bench/train_anchors.py`, CPU, bytes above inputs and params)
/// gave these at these dims. Planned is `torch.compile`'s for the MLP within 0.1% (tc's step
/// also writes the SGD-updated biases, 20 KiB, which the anchor's step does not) plus the
/// largest packed `B` of tc's CPU GEMM, a workspace of the plan: PyTorch's timeline does not
/// see MKL's own packing buffers.
#[test]
fn eager_matches_pytorch_autograd() {
    for (name, source) in tc_tests::examples() {
        let (torch_eager, torch_compiled): (u64, u64) = match name.as_str() {
            "train_mlp" => (71_307_272, 54_509_576),
            "train_block" => (39_860_240, 21_516_552),
            _ => continue,
        };
        let p = tc_compiler::compile(&source, &CompileOptions::default()).expect("compiles");
        let eager = p.memory.peaks.eager.without_inputs as f64;
        assert!(
            (eager - torch_eager as f64).abs() <= 0.05 * torch_eager as f64,
            "{name}: eager {eager} bytes against PyTorch's {torch_eager}"
        );
        let planned = p.memory.peaks.planned.without_inputs as f64;
        let packing = p
            .plan
            .buffers
            .iter()
            .filter(|b| b.kind == tc_compiler::schedule::BufferKind::Workspace)
            .map(|b| b.bytes)
            .max()
            .unwrap_or(0) as f64;
        if name == "train_mlp" {
            assert!(
                planned <= torch_compiled as f64 * 1.001 + packing,
                "{name}: planned {planned} bytes against torch.compile's {torch_compiled}"
            );
        }
    }
}

/// PyTorch's rules at the kinks of SPEC §3.5's maths, on exact data: `clamp` passes the
/// gradient where `min < x < max` (0 at a bound, the minimum-norm subgradient, as `relu`
/// and `hardtanh`: PyTorch 2.15, pytorch/pytorch#191142), `leaky_relu` has the slope at
/// 0, `floor`/`ceil`/`round`/`sign` have slope 0, `std` of a constant row is 0 (not NaN).
#[test]
fn maths_kinks_follow_pytorch() {
    let x = vector(&[-0.5, 0.7, 0.0, 2.0, -1.0]);
    let cases: &[(&str, &[f32])] = &[
        (
            "v = sum(clamp(x, min=-0.5, max=0.7))\ng = grad(v, x)",
            &[0.0, 0.0, 1.0, 0.0, 0.0],
        ),
        (
            "v = sum(clamp(x, min=0))\ng = grad(v, x)",
            &[0.0, 1.0, 0.0, 1.0, 0.0],
        ),
        (
            "v = sum(clamp(x, max=0.7))\ng = grad(v, x)",
            &[1.0, 0.0, 1.0, 0.0, 1.0],
        ),
        (
            "v = sum(clamp(x, min=1, max=-1))\ng = grad(v, x)",
            &[0.0, 0.0, 0.0, 0.0, 0.0],
        ),
        (
            "v = sum(leaky_relu(x, slope=0.25))\ng = grad(v, x)",
            &[0.25, 1.0, 0.25, 1.0, 0.25],
        ),
        (
            "v = sum(floor(x) + ceil(x) + round(x) + sign(x))\ng = grad(v, x)",
            &[0.0, 0.0, 0.0, 0.0, 0.0],
        ),
        (
            "v = std(x * 0 + 2)\ng = grad(v, x)",
            &[0.0, 0.0, 0.0, 0.0, 0.0],
        ),
    ];
    for (body, want) in cases {
        let source = format!("input x : f32[5]\n{body}\noutput g\n");
        let got = run_cpu(&source, std::slice::from_ref(&x));
        assert_eq!(&got[0], want, "{body}");
    }
}

/// A backward buffer is labelled by the forward expression whose backward function made it,
/// not by the `grad` call every backward node shares.
#[test]
fn backward_buffers_name_the_forward_expression_they_flow_back_through() {
    let source = include_str!("../examples/train_mlp.tx");
    let program = tc_compiler::compile(source, &CompileOptions::default()).expect("compiles");
    let labels: Vec<&str> = program
        .memory
        .buffers
        .iter()
        .map(|b| b.label.as_str())
        .collect();
    for want in [
        "backward of log_softmax(logits, axis=-1) (line",
        "backward of gelu(x @ w1 + b1) (line",
        "backward of h @ w2 (line",
    ] {
        assert!(
            labels.iter().any(|l| l.starts_with(want)),
            "no buffer labelled {want:?}: {labels:#?}"
        );
    }
}

/// Training steps whose plan without fusion or reuse stored more than the naive figure
/// counts (`gen::differentiable` seeds 12, 20 and 192, trimmed): a backward formula the
/// unfused plan runs as two kernels (`var` over a leading axis: its mean handed from one
/// to the next), which naive now counts as PyTorch eager allocates it, so every mode holds
/// the order of the figures; and two promotions that the unfused plan without reuse still
/// stores (shared by a forward kernel and the backward's comparison, `minimum(f16, f32)`;
/// the promotion of `all` of a scalar, itself a cast), the known gap this test pins: that
/// one mode is above naive by no more than the promoted value's bytes.
#[test]
fn unfused_training_steps_stay_under_naive() {
    let cases = [
        (
            "minimum of an f16 and an f32",
            "param w2 : i64[5]\nparam w3 : f32[1]\nv7 = f16(w2)\nv12 = minimum(v7, w3)\n\
             loss = sum(tanh(v12))\ng = grad(loss, w3)\noutput v12, loss, g\n",
        ),
        (
            "all of a scalar, promoted",
            "input x3 : bool[3, 4]\nparam w0 : f32[]\nv6 = sum(x3)\nv10 = all(v6)\n\
             loss = sum(tanh(v10)) + sum(tanh(w0 * 2))\ng = grad(loss, w0)\noutput v10, loss, g\n",
        ),
        (
            "var over a leading axis",
            "input x0 : f32[2, 3, 5]\nv9 = var(x0, axis=0, keepdim=true, correction=1)\n\
             loss = sum(tanh(v9))\ng = grad(loss, x0)\noutput loss, g\n",
        ),
    ];
    for (what, source) in cases {
        for (fuse, reuse) in tc_tests::COMBOS {
            let options = CompileOptions {
                dims: Vec::new(),
                plan: tc_compiler::PlanOptions {
                    fuse,
                    reuse,
                    ..Default::default()
                },
            };
            let p =
                tc_compiler::compile(source, &options).unwrap_or_else(|d| panic!("{what}: {d:?}"));
            let k = &p.memory.peaks;
            let (lb, pl, ea, na) = (
                k.lower_bound.without_inputs,
                k.planned.without_inputs,
                k.eager.without_inputs,
                k.naive.without_inputs,
            );
            // The promoted values here are at most 4 elements of f32.
            let gap = if !fuse && !reuse && !what.starts_with("var") {
                16
            } else {
                0
            };
            assert!(
                lb <= pl && pl <= na + gap && ea <= na && (!reuse || pl <= ea),
                "{what}, fuse={fuse} reuse={reuse}: lower bound {lb}, planned {pl}, eager {ea}, naive {na}\n{}",
                tc_compiler::plan::print(&p.plan)
            );
        }
        differential(source, &[], 3).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// A loss of the wrong kind is `bad-grad` with a span and a help that fits the fault: a
/// tensor of many values is reduced, an integer or bool scalar is cast (SPEC §3.6: `L` is a
/// rank-0 floating tensor).
#[test]
fn a_bad_loss_gets_the_help_that_fits_it() {
    let options = CompileOptions::default();
    let cases = [
        ("l = x * 2", "rank-0", "sum(…)"),
        ("l = sum(x > 0)", "floating", "f32(…)"),
        ("l = x > 0", "rank-0", "f32(sum(…))"),
    ];
    for (body, message, help) in cases {
        let src = format!("input x : f32[4]\n{body}\ng = grad(l, x)\noutput g\n");
        let err = tc_compiler::compile(&src, &options).expect_err("a bad loss");
        assert_eq!(err[0].kind, tc_compiler::ErrorKind::BadGrad, "{body}");
        assert!(
            err[0].message.contains(message),
            "{body}: {}",
            err[0].message
        );
        let h = err[0].help.as_deref().unwrap_or("");
        assert!(h.contains(help), "{body}: help `{h}`");
        assert!(!err[0].labels.is_empty(), "{body}: no span");
    }
}

/// What a `grad(L, P)` call returns is labelled `grad of P` and the call's line (SPEC §3.8),
/// whichever op's backward computed it; one value that is the gradient of two variables
/// names both.
#[test]
fn what_grad_returns_is_labelled_grad_of_its_variable() {
    let source = include_str!("../examples/train_mlp.tx");
    let program = tc_compiler::compile(source, &CompileOptions::default()).expect("compiles");
    let label_of = |program: &tc_compiler::Program, wrt: &str| -> Vec<String> {
        program
            .memory
            .buffers
            .iter()
            .filter(|b| b.label.starts_with(&format!("grad of {wrt} ")))
            .map(|b| b.label.clone())
            .collect()
    };
    for (line, text) in source.lines().enumerate() {
        let Some(at) = text.find("grad(loss, ") else {
            continue;
        };
        let wrt = text[at + "grad(loss, ".len()..]
            .split(')')
            .next()
            .expect("a variable");
        let want = format!("grad of {wrt} (line {})", line + 1);
        let got = label_of(&program, wrt);
        assert!(got.contains(&want), "{want:?} not among {got:?}");
    }
    let shared = "dim N = 8\ninput a : f32[N]\nparam b : f32[N]\nloss = sum(a + b)\n\
                  ga = grad(loss, a)\ngb = grad(loss, b)\noutput ga, gb\n";
    let program = tc_compiler::compile(shared, &CompileOptions::default()).expect("compiles");
    assert_eq!(label_of(&program, "a, b"), ["grad of a, b (line 5)"]);
}
