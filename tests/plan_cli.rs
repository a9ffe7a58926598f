//! `tc plan` and `--fit` (SPEC §3.7), `tc emit --plan` agreeing with `tc run` on `--device
//! auto`, and the memory picture's geometry (`report::svg::layout`, SPEC §3.8): every buffer
//! visible however small, in-place chains as one shape, distinct colours, inputs and params
//! in their own lane, clean ticks, kernels and lines on the steps axis.

#[path = "support/cli.rs"]
mod cli;

use cli::{repo_root, tc_in, write};

fn planned_with_inputs(json: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("JSON report");
    v["peaks"]["planned"]["with_inputs"]
        .as_u64()
        .expect("planned")
}

#[test]
fn plan_reports_without_running_and_cuda_adds_the_workspace() {
    let root = repo_root();
    let cpu = tc_in(
        &root,
        &[
            "plan",
            "examples/mlp.tx",
            "--device",
            "cpu",
            "--memory-json",
            "-",
        ],
    );
    cpu.expect_code(0);
    let cuda = tc_in(
        &root,
        &[
            "plan",
            "examples/mlp.tx",
            "--device",
            "cuda",
            "--memory-json",
            "-",
        ],
    );
    cuda.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&cuda.stdout).expect("JSON");
    assert!(v["peaks"]["measured"].is_null());
    assert!(v["peaks"]["best_order_bound"]["exact"].is_boolean());
    assert!(v["buffers"].as_array().is_some_and(|b| b
        .iter()
        .all(|b| b["label"].as_str().is_some_and(|l| l.contains("line ")))));
    // Two matmuls, a 32 MiB workspace each at its own step: the arena grows by one, less the
    // CPU plan's own largest workspace at the peak (`h @ w2`'s packed w2, 4096 rows of 512
    // columns: 8 MiB).
    assert_eq!(
        planned_with_inputs(&cuda.stdout) - planned_with_inputs(&cpu.stdout),
        (32 << 20) - (8 << 20)
    );
    // A program needing terabytes is planned, not refused: nothing is allocated.
    let big = tc_in(
        &root,
        &[
            "plan",
            "examples/mlp.tx",
            "--dim",
            "B=268435456",
            "--memory-json",
            "-",
        ],
    );
    big.expect_code(0);
    assert!(planned_with_inputs(&big.stdout) > 1 << 40);
    // The summary line counts in words: "1 kernel", not "1 kernels".
    let one = tc_in(&root, &["plan", "examples/chain.tx", "--dim", "N=1"]);
    one.expect_code(0);
    assert!(one.stdout.contains(": 1 kernel, arena"), "{}", one.stdout);
}

#[test]
fn fit_finds_the_largest_dim_checked_one_above_and_one_below() {
    let root = repo_root();
    for (file, dim, size, bytes) in [
        ("examples/mlp.tx", "B", "1GiB", 1u64 << 30),
        ("examples/branches.tx", "B", "300MB", 300_000_000),
        ("examples/softmax.tx", "N", "123456789", 123_456_789),
    ] {
        let r = tc_in(&root, &["plan", file, "--fit", dim, "--memory", size]);
        r.expect_code(0);
        let answer: u64 = r
            .stdout
            .split(&format!("{dim} = "))
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no answer in {}", r.stdout));
        let at = |v: u64| {
            let d = format!("{dim}={v}");
            let r = tc_in(&root, &["plan", file, "--dim", &d, "--memory-json", "-"]);
            r.expect_code(0);
            planned_with_inputs(&r.stdout)
        };
        assert!(at(answer) <= bytes, "{file}: {dim}={answer} does not fit");
        assert!(
            at(answer + 1) > bytes,
            "{file}: {dim}={} fits too",
            answer + 1
        );
        assert!(answer > 1, "{file}: {answer}");
    }
    // Even 1 does not fit: exit 1, saying so.
    tc_in(
        &root,
        &["plan", "examples/mlp.tx", "--fit", "B", "--memory", "1KiB"],
    )
    .expect_code(1)
    .expect_mentions(&["even B = 1 does not fit"]);
    // Bad sizes, a dim the program lacks, the dim given twice.
    tc_in(
        &root,
        &["plan", "examples/mlp.tx", "--fit", "B", "--memory", "lots"],
    )
    .expect_code(2);
    tc_in(
        &root,
        &["plan", "examples/mlp.tx", "--fit", "Q", "--memory", "1GiB"],
    )
    .expect_code(1)
    .expect_mentions(&["no dim `Q`"]);
    tc_in(
        &root,
        &[
            "plan",
            "examples/mlp.tx",
            "--fit",
            "B",
            "--memory",
            "1GiB",
            "--dim",
            "B=4",
        ],
    )
    .expect_code(2);
}

/// A deep narrow network whose activations dwarf its weights: recomputation can cut its
/// training step's peak (as `tests/grad.rs`'s).
const DEEP: &str = "dim B = 512\ndim D = 32\ninput x : f32[B, D]\nparam w1 : f32[D, D]\nparam w2 : f32[D, D]\nparam w3 : f32[D, D]\nparam w4 : f32[D, D]\nparam w5 : f32[D, D]\nparam w6 : f32[D, D]\nh1 = tanh(x @ w1)\nh2 = tanh(h1 @ w2)\nh3 = tanh(h2 @ w3)\nh4 = tanh(h3 @ w4)\nh5 = tanh(h4 @ w5)\nh6 = tanh(h5 @ w6)\nloss = mean(h6 * h6)\ng1 = grad(loss, w1)\ng2 = grad(loss, w2)\ng3 = grad(loss, w3)\ng4 = grad(loss, w4)\ng5 = grad(loss, w5)\ng6 = grad(loss, w6)\noutput loss, g1, g2, g3, g4, g5, g6\n";

/// `tc plan --memory-budget` (SPEC §3.6: `run` and `plan`): the plan and exit codes of `tc
/// run --memory-budget` without running; and `--fit B --memory SIZE` on a training step
/// buys, by recomputation, a batch whose plan without it would not fit.
#[test]
fn plan_takes_the_memory_budget_and_fit_recomputes_to_buy_a_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deep = write(dir.path(), "deep.tx", DEEP);
    let json = |args: &[&str]| {
        let r = tc_in(dir.path(), args);
        r.expect_code(0);
        serde_json::from_str::<serde_json::Value>(&r.stdout).expect("JSON report")
    };
    let free = json(&["plan", &deep, "--device", "cpu", "--memory-json", "-"]);
    let with = free["peaks"]["planned"]["with_inputs"]
        .as_u64()
        .expect("with");
    let without = free["peaks"]["planned"]["without_inputs"]
        .as_u64()
        .expect("without");
    let budget = (with - without) + without * 3 / 4;
    let b = budget.to_string();
    let planned = json(&[
        "plan",
        &deep,
        "--device",
        "cpu",
        "--memory-budget",
        &b,
        "--memory-json",
        "-",
    ]);
    let got = planned["peaks"]["planned"]["with_inputs"]
        .as_u64()
        .expect("planned");
    assert!(got <= budget, "planned {got} above the budget {budget}");
    let values = planned["recompute"]["values"]
        .as_array()
        .expect("recompute");
    assert!(!values.is_empty(), "nothing recomputed: {planned}");
    // `tc run` under the same budget plans the same peak.
    let ran = json(&[
        "run",
        &deep,
        "--device",
        "cpu",
        "--memory-budget",
        &b,
        "--memory-json",
        "-",
    ]);
    assert_eq!(ran["peaks"]["planned"]["with_inputs"].as_u64(), Some(got));
    // A budget no plan meets: exit 1 with the smallest peak reached, as `tc run`'s.
    let tiny = (with - without).to_string();
    for cmd in ["plan", "run"] {
        tc_in(
            dir.path(),
            &[cmd, &deep, "--device", "cpu", "--memory-budget", &tiny],
        )
        .expect_code(1)
        .expect_mentions(&["smallest peak"]);
    }
    // Not with --fit (its --memory is the budget there), and a bad size: usage errors.
    tc_in(
        dir.path(),
        &[
            "plan",
            &deep,
            "--fit",
            "B",
            "--memory",
            "1MiB",
            "--memory-budget",
            "1MiB",
        ],
    )
    .expect_code(2);
    tc_in(dir.path(), &["plan", &deep, "--memory-budget", "lots"]).expect_code(2);

    // --fit: the budget at B = 512 buys B >= 512, where the plan without recomputation is
    // above it; one more does not fit even recomputing.
    let r = tc_in(
        dir.path(),
        &[
            "plan", &deep, "--device", "cpu", "--fit", "B", "--memory", &b,
        ],
    );
    r.expect_code(0).expect_mentions(&["recomputes"]);
    let answer: u64 = r
        .stdout
        .split("B = ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer in {}", r.stdout));
    assert!(answer >= 512, "{}", r.stdout);
    let at = |v: u64, budgeted: bool| {
        let d = format!("B={v}");
        let mut args = vec!["plan", &deep, "--device", "cpu", "--dim", &d];
        if budgeted {
            args.extend(["--memory-budget", &b]);
        }
        tc_in(dir.path(), &args)
    };
    at(answer, true).expect_code(0);
    at(answer + 1, true).expect_code(1);
    let unbudgeted = at(answer, false);
    unbudgeted.expect_code(0);
    let line = unbudgeted.stdout.lines().next().unwrap_or_default();
    let peak: u64 = line
        .rsplit('(')
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {line}"));
    assert!(
        peak > budget,
        "B={answer} fits without recomputation: {line}"
    );

    // The training examples: the batch 80 MiB buys for train_mlp.
    let root = repo_root();
    tc_in(
        &root,
        &[
            "plan",
            "examples/train_mlp.tx",
            "--device",
            "cpu",
            "--fit",
            "B",
            "--memory",
            "80MiB",
        ],
    )
    .expect_code(0)
    .expect_mentions(&["largest B that fits in 80.0 MiB"]);
}

#[test]
fn emit_plan_and_run_agree_on_auto() {
    let root = repo_root();
    let dims = [
        "--dim", "B=4", "--dim", "D=8", "--dim", "H=8", "--dim", "C=8",
    ];
    let mut emit = vec!["emit", "examples/mlp.tx", "--plan"];
    emit.extend(dims);
    let e = tc_in(&root, &emit);
    e.expect_code(0);
    let mut run = vec!["run", "examples/mlp.tx", "--memory-json", "-"];
    run.extend(dims);
    let r = tc_in(&root, &run);
    r.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    let arena = v["peaks"]["planned"]["without_inputs"]
        .as_u64()
        .expect("planned");
    assert!(
        e.stdout.contains(&format!("arena {arena} bytes")),
        "emit --plan shows another arena than run's {arena}:\n{}",
        e.stdout
    );
}

#[test]
fn the_picture_shows_every_buffer_chains_leaves_and_clean_ticks() {
    use tc_compiler::report::svg::{colour, layout, tick_label, ticks, MIN_H};
    let dir = tempfile::tempdir().expect("tempdir");
    // A 4-byte loss beside 4 MiB values, an in-place chain, eleven-plus buffers.
    let src = "dim N = 1024\ninput x : f32[N, N]\nparam w : f32[N, N]\n\
               h = tanh(x @ w)\na = exp(h) * 2\nb = sin(h)\nc = a + b\nd = c @ w\n\
               e = relu(d)\nf = e @ w\ng = f @ w\nk = g @ w\nloss = mean(h * h)\n\
               output loss, k, b\n";
    let path = write(dir.path(), "p.tx", src);
    let p = tc_compiler::compile(src, &Default::default()).expect("compiles");
    let l = layout(&p.memory);
    let arena: Vec<_> = p
        .memory
        .buffers
        .iter()
        .filter(|b| b.kind == "arena" || b.kind == "workspace")
        .collect();
    // Every arena buffer in exactly one shape; each shape at least MIN_H tall, inside the plot.
    for b in &arena {
        let n = l
            .shapes
            .iter()
            .filter(|s| s.names.contains(&b.name))
            .count();
        assert_eq!(n, 1, "{} drawn {n} times", b.name);
    }
    assert!(l.shapes.iter().all(|s| s.h >= MIN_H && s.w >= 2.0));
    let loss = l
        .shapes
        .iter()
        .find(|s| s.names.contains(&"loss".into()))
        .expect("loss");
    assert!(loss.h >= MIN_H);
    // A chain is one shape naming its buffers in order.
    let chained: Vec<_> = arena.iter().filter(|b| b.in_place_of.is_some()).collect();
    assert!(!chained.is_empty(), "the program has an in-place chain");
    for b in chained {
        let s = l
            .shapes
            .iter()
            .find(|s| s.names.contains(&b.name))
            .expect("drawn");
        let prev = b.in_place_of.as_ref().expect("chained");
        let (i, j) = (
            s.names
                .iter()
                .position(|n| n == prev)
                .expect("predecessor in the same shape"),
            s.names.iter().position(|n| n == &b.name).expect("itself"),
        );
        assert!(i < j);
    }
    // Distinct colours, past ten.
    let fills: std::collections::BTreeSet<_> = l.shapes.iter().map(|s| s.fill.clone()).collect();
    assert_eq!(fills.len(), l.shapes.len());
    assert!(l.shapes.len() >= 6, "{}", l.shapes.len());
    let many: std::collections::BTreeSet<String> = (0..40).map(colour).collect();
    assert_eq!(many.len(), 40);
    // Inputs and params in their own lane, below the arena's shapes.
    let leaves: Vec<_> = l.shapes.iter().filter(|s| s.leaf).collect();
    assert_eq!(leaves.len(), 2);
    let arena_bottom = l
        .shapes
        .iter()
        .filter(|s| !s.leaf)
        .map(|s| s.y + s.h)
        .fold(0.0, f64::max);
    assert!(leaves
        .iter()
        .all(|s| s.y >= l.lane_top && s.y + s.h <= l.lane_top + l.lane_h + 0.01));
    assert!(arena_bottom < l.lane_top);
    // Steps named by kernel and lines; ticks are clean.
    assert_eq!(l.steps.len(), p.plan.kernels.len());
    for ((_, text), k) in l.steps.iter().zip(&p.plan.kernels) {
        assert!(
            text.starts_with(&k.name) && text.contains("line "),
            "{text}"
        );
    }
    for (_, t) in &l.ticks {
        let num = t.split(' ').next().unwrap_or("");
        assert!(num.len() <= 6 && num.parse::<f64>().is_ok(), "tick {t}");
    }
    assert_eq!(tick_label(1536 << 10), "1.5 MiB");
    assert_eq!(tick_label(64 << 20), "64 MiB");
    assert_eq!(tick_label(4), "4 B");
    assert!(ticks(4198416).len() <= 10);
    // The CLI writes the same picture.
    let svg = dir.path().join("m.svg");
    tc_in(
        dir.path(),
        &["plan", &path, "--memory-svg", svg.to_str().expect("utf-8")],
    )
    .expect_code(0);
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert_eq!(text, tc_compiler::report::svg::render_svg(&p.memory));
    assert!(text.contains("inputs and params") && text.contains("loss"));
}

/// Issue 16's half budget (inputs and params plus half the unbudgeted planned peak without
/// them) on the two training examples: their outputs, all live at the end beside the inputs
/// and params, already exceed it, so no schedule meets it (docs/memory-planning.md §10.4);
/// `tc plan --memory-budget` says so with exit 1 and the smallest peak it reached, which is
/// above the budget and at most the unbudgeted plan's.
/// A CPU plan's products never stored whole (`tile`) are in the picture's lane below the
/// arena, over their own steps, and in no arena shape.
#[test]
fn the_picture_shows_products_in_tiles_over_their_steps() {
    use tc_compiler::report::svg::layout;
    let src = std::fs::read_to_string(repo_root().join("examples/transformer_block.tx"))
        .expect("example");
    let p = tc_compiler::compile(&src, &Default::default()).expect("compiles");
    let tiles: Vec<_> = p
        .memory
        .buffers
        .iter()
        .filter(|b| b.kind == "tile")
        .collect();
    assert!(!tiles.is_empty(), "no product in tiles");
    let l = layout(&p.memory);
    for t in tiles {
        let drawn: Vec<_> = l
            .shapes
            .iter()
            .filter(|s| s.names.contains(&t.name))
            .collect();
        assert_eq!(drawn.len(), 1, "{} drawn {} times", t.name, drawn.len());
        let lane_shape = drawn[0];
        assert!(
            lane_shape.leaf && lane_shape.y >= l.lane_top,
            "{} not in the lane",
            t.name
        );
        // Starts at its own step, not at step 0 as an input does.
        let leftmost = l.shapes.iter().map(|s| s.x).fold(f64::MAX, f64::min);
        assert!(lane_shape.x > leftmost, "{} drawn from step 0", t.name);
    }
}

#[test]
fn half_budget_of_the_training_examples_is_below_their_outputs() {
    let root = repo_root();
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["train_block", "train_mlp"] {
        let file = root.join("examples").join(format!("{name}.tx"));
        let file = file.to_str().expect("utf-8 path");
        let r = tc_in(dir.path(), &["plan", file, "--memory-json", "-"]);
        r.expect_code(0);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON report");
        let planned = &v["peaks"]["planned"];
        let with = planned["with_inputs"].as_u64().expect("with");
        let without = planned["without_inputs"].as_u64().expect("without");
        let budget = (with - without) + without / 2;
        // The outputs, by the program's `output` line, as the report sizes them.
        let source = std::fs::read_to_string(file).expect("example");
        let outputs: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix("output "))
            .flat_map(|l| l.split(',').map(str::trim))
            .collect();
        assert!(!outputs.is_empty(), "{name}: no output line");
        let buffers = v["buffers"].as_array().expect("buffers");
        let output_bytes: u64 = outputs
            .iter()
            .map(|o| {
                // Its own size (an output can be a view of a kernel's result).
                let b = buffers
                    .iter()
                    .find(|b| b["name"] == *o)
                    .unwrap_or_else(|| panic!("{name}: no buffer for output {o}"));
                let elements: u64 = b["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("dim"))
                    .product();
                let dtype = b["dtype"].as_str().expect("dtype");
                let dtype = tc_compiler::ir::DType::from_name(dtype)
                    .unwrap_or_else(|| panic!("{name}: output {o} of dtype {dtype}"));
                elements * dtype.size()
            })
            .sum();
        assert!(
            (with - without) + output_bytes > budget,
            "{name}: inputs and params {} plus outputs {output_bytes} fit the half budget {budget}",
            with - without
        );
        let b = budget.to_string();
        let r = tc_in(dir.path(), &["plan", file, "--memory-budget", &b]);
        r.expect_code(1);
        assert!(
            r.stderr.contains("smallest peak tc reached"),
            "{name}: {}",
            r.stderr
        );
    }
}
