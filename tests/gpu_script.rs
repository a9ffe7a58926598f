//! The GPU script's flow, on a machine without a GPU (a dry run): `scripts/gpu.sh` must get
//! through all six stages in order, every CUDA step failing cleanly with exit 3 (never a
//! hang, a panic or a shell error), so that the one device call a GPU session gets is not
//! spent on a broken script. The causal attentions stage 3 writes and benches for PyTorch's
//! `scaled_dot_product_attention(is_causal=True)` must be the ones `torch_compare.py` makes,
//! each one attention kernel that skips its masked key tiles.

#[path = "support/cli.rs"]
mod cli;

use std::process::Command;

#[test]
fn gpu_script_runs_every_stage_in_order_and_fails_cleanly_without_a_gpu() {
    if std::env::var("TC_REQUIRE_CUDA").as_deref() == Ok("1") {
        // On a GPU machine the script is run for real (it is what sets this variable).
        return;
    }
    let root = cli::repo_root();
    let out = tempfile::tempdir().expect("temp dir");
    let work = tempfile::tempdir().expect("temp dir");
    let devbin = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(cli::tc_path(), devbin.path().join("tc")).expect("symlink tc");
    let run = Command::new("bash")
        .arg(root.join("scripts/gpu.sh"))
        .env("OUT", out.path())
        .env("TC_GPU_WORK", work.path())
        .env("TC_DEVBIN", devbin.path())
        .env("TC_TESTS_BIN", devbin.path().join("no-such-test-binary"))
        .env("TC_GPU_BUDGET", "300")
        // No GPU may be found even where a driver library exists: an empty loader path
        // and no NVRTC override keep the dry run a dry run.
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .expect("bash runs scripts/gpu.sh");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let summary = std::fs::read_to_string(out.path().join("summary.md")).expect("summary.md");
    let all = format!("--- summary.md\n{summary}\n--- stderr\n{stderr}");
    // Something failed (no GPU), so the script says so with its exit status.
    assert_eq!(run.status.code(), Some(1), "{all}");
    // Every stage, in the order.
    let mut at = 0;
    for stage in [
        "## 1 differential",
        "## 2 measured == planned",
        "## 3 figures beside PyTorch",
        "## 4 compute-sanitizer",
        "## 5 cold and cached start",
        "## 6 reliability",
        "done at",
    ] {
        let found = summary[at..]
            .find(stage)
            .unwrap_or_else(|| panic!("stage {stage:?} missing or out of order\n{all}"));
        at += found + stage.len();
    }
    // Stage 1's two verdicts, the differential tests' and the accuracy sweep's: each failed,
    // with the exit status of a missing test binary.
    for verdict in [
        "- examples and random programs, CUDA = CPU (exit 2;",
        "- elementwise ops within their accuracy contract on CUDA (exit 2;",
        "- elementwise ops within the fast-maths contract (--fast-math) (exit 2;",
        "tc bench chain --fast-math",
        "tc bench layernorm --fast-math",
    ] {
        assert!(summary.contains(verdict), "{verdict:?} missing\n{all}");
    }
    // What comes back fits the device tool's limits (at most 8 files, 16 MiB each, plain
    // names): summary.md and logs.tar.gz, which holds every log of the work folder.
    let mut returned: Vec<String> = std::fs::read_dir(out.path())
        .expect("$OUT")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    returned.sort();
    assert_eq!(returned, ["logs.tar.gz", "summary.md"], "{all}");
    for name in &returned {
        let bytes = std::fs::metadata(out.path().join(name))
            .expect("a file")
            .len();
        assert!(bytes > 0 && bytes <= 16 << 20, "{name}: {bytes} bytes");
    }
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(out.path().join("logs.tar.gz"))
        .output()
        .expect("tar runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for log in [
        "./measured.log",
        "./bench.log",
        "./bench_fast.log",
        "./accuracy_fast.log",
        "./reliability.log",
        "./env.txt",
    ] {
        assert!(
            listing.lines().any(|l| l == log),
            "{log} not packed:\n{listing}"
        );
    }
    let out = work;
    // Every `tc run --device cuda` of stage 2 failed with the device exit code, 3.
    let measured = std::fs::read_to_string(out.path().join("measured.log")).expect("measured.log");
    let runs: Vec<&str> = measured
        .lines()
        .filter(|l| l.starts_with("==== "))
        .collect();
    let examples = std::fs::read_dir(root.join("examples"))
        .expect("examples/")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "tx"))
        })
        .count();
    assert_eq!(runs.len(), examples, "{measured}");
    for line in runs {
        assert!(line.ends_with("(exit 3)"), "{line}\n{measured}");
    }
    assert!(summary.contains("refused, exit 3"), "{all}");
    causal_attentions_are_benched(&root, out.path());
    // No shell or Python error in the script itself.
    for bad in [
        "command not found",
        "syntax error",
        "unbound variable",
        "Traceback",
    ] {
        assert!(!stderr.contains(bad), "{bad}\n{all}");
        assert!(!summary.contains(bad), "{bad}\n{all}");
    }
}

/// Stage 3's causal attentions (`causal/*.tx` in the work folder): each benched (the device's exit 3
/// here, not a program's error), each one CUDA attention kernel with its key-tile table
/// (the masked tiles skipped), and the same names as `torch_compare.py`'s `CAUSAL`, which
/// must at least compile as Python.
fn causal_attentions_are_benched(root: &std::path::Path, out: &std::path::Path) {
    let bench = std::fs::read_to_string(out.join("bench.log")).expect("bench.log");
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(out.join("causal")).expect("$OUT/causal") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let at = bench
            .find(&format!("==== bench {name}\n"))
            .unwrap_or_else(|| panic!("{name} not benched:\n{bench}"));
        let rest = &bench[at..];
        let exit = rest.find("(exit ").map(|i| &rest[i..]).unwrap_or("");
        assert!(exit.starts_with("(exit 3)"), "{name}:\n{rest}");
        let source = std::fs::read_to_string(&path).expect("the .tx");
        let options = tc_compiler::CompileOptions {
            dims: Vec::new(),
            plan: tc_compiler::codegen::cuda_plan_options(&Default::default()),
        };
        let p = tc_compiler::compile(&source, &options)
            .unwrap_or_else(|d| panic!("{name} does not compile: {d:?}\n{source}"));
        let at = p
            .plan
            .kernels
            .iter()
            .position(|k| matches!(k.kind, tc_compiler::schedule::KernelKind::Attention(_)))
            .unwrap_or_else(|| panic!("{name}: no attention kernel"));
        let kernels = tc_compiler::codegen::emit_kernels(&p.plan).expect("CUDA C");
        let k = kernels
            .iter()
            .find(|k| k.kernel_index == at)
            .expect("the attention kernel's CUDA C");
        assert!(k.source.contains("_key_tiles["), "{name}:\n{}", k.source);
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["attention_causal", "gpt_block_attention"]);
    let script =
        std::fs::read_to_string(root.join("scripts/torch_compare.py")).expect("torch_compare.py");
    let causal = script
        .lines()
        .find(|l| l.starts_with("CAUSAL = {"))
        .expect("torch_compare.py's CAUSAL");
    for name in &names {
        assert!(
            causal.contains(&format!("\"{name}\"")),
            "{name} not in {causal}"
        );
        assert!(
            script.contains(&format!("\"{name}\": ex_")),
            "{name} has no maker"
        );
    }
    if let Ok(py) = Command::new("python3")
        .args(["-m", "py_compile"])
        .arg(root.join("scripts/torch_compare.py"))
        .env("PYTHONPYCACHEPREFIX", out.join("pycache"))
        .output()
    {
        assert!(
            py.status.success(),
            "{}",
            String::from_utf8_lossy(&py.stderr)
        );
    }
}

/// Issue 10's stage 3 writes every example in PyTorch: each `examples/*.tx` has a maker
/// under its name in `scripts/torch_compare.py`'s `EXAMPLES` (an example added without one
/// would go unmeasured beside torch.compile).
#[test]
fn every_example_has_a_pytorch_twin() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script =
        std::fs::read_to_string(root.join("scripts/torch_compare.py")).expect("torch_compare.py");
    let table = script
        .split_once("\nEXAMPLES = {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .map(|(table, _)| table)
        .expect("torch_compare.py's EXAMPLES = { … }");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("examples")).expect("examples/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|x| x == "tx") {
            let name = path
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            if !table.contains(&format!("\"{name}\": ex_")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no PyTorch twin in torch_compare.py: {missing:?}"
    );
}
