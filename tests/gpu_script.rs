//! The GPU script's flow, on a machine without a GPU (a dry run): `scripts/gpu.sh` must get
//! through all six stages in order, every CUDA step failing cleanly with exit 3 (never a
//! hang, a panic or a shell error), so that the one device call a GPU session gets is not
//! spent on a broken script.

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
    let devbin = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(cli::tc_path(), devbin.path().join("tc")).expect("symlink tc");
    let run = Command::new("bash")
        .arg(root.join("scripts/gpu.sh"))
        .env("OUT", out.path())
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
