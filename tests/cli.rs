//! End-to-end command-line tests: `tc check|run|emit` on the examples, data in through
//! `.npy` and safetensors, out through `.npy` and safetensors, values checked, and the
//! memory report in its three forms.

#[path = "support/cli.rs"]
mod cli;

use cli::{
    f32_bytes, read_npy_f32, repo_root, safetensors, tc_in, tc_run_cpu, write, write_npy_f32,
};
use std::path::Path;

/// Small dims for every example so a debug-build CPU run stays fast.
const SMALL_DIMS: &[&str] = &[
    "--dim", "B=2", "--dim", "D=16", "--dim", "H=4", "--dim", "C=8", "--dim", "N=8", "--dim",
    "V=16", "--dim", "S=8", "--dim", "Dh=4", "--dim", "F=32", "--dim", "Hf=2",
];

fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tx"))
        .map(|p| p.display().to_string())
        .collect();
    names.sort();
    assert!(
        names.len() >= 8,
        "expected the eight examples, found {names:?}"
    );
    names
}

/// `--dim` flags of `SMALL_DIMS` that name a dim the example declares.
fn small_dims_for(example: &str) -> Vec<String> {
    let src = std::fs::read_to_string(example).expect("example source");
    let declared: Vec<&str> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("dim "))
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .collect();
    SMALL_DIMS
        .chunks(2)
        .filter(|pair| declared.contains(&pair[1].split('=').next().unwrap_or("")))
        .flat_map(|pair| [pair[0].to_string(), pair[1].to_string()])
        .collect()
}

#[test]
fn every_example_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ex in examples() {
        tc_in(dir.path(), &["check", &ex])
            .expect_code(0)
            .expect_mentions(&["ok"]);
    }
}

#[test]
fn every_example_runs_on_the_cpu_and_reports_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ex in examples() {
        let mut args = vec![
            "run".to_string(),
            ex.clone(),
            "--device".into(),
            "cpu".into(),
            "--report-memory".into(),
        ];
        args.extend(small_dims_for(&ex));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tc_in(dir.path(), &args).expect_code(0).expect_mentions(&[
            "naive",
            "eager",
            "planned",
            "lower bound",
            "measured",
        ]);
    }
}

#[test]
fn every_example_emits_its_plan_and_kernels() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ex in examples() {
        tc_in(dir.path(), &["emit", &ex, "--plan"]).expect_code(0);
        let k = tc_in(dir.path(), &["emit", &ex, "--kernels"]);
        k.expect_code(0).expect_mentions(&["__global__"]);
        tc_in(dir.path(), &["emit", &ex, "--ir"]).expect_code(0);
    }
}

#[test]
fn readme_first_command_works() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let first = readme
        .lines()
        .find(|l| l.starts_with("cargo tc run"))
        .expect("README opens with a `cargo tc run` command");
    let args: Vec<&str> = first
        .split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(2)
        .collect();
    assert!(args.contains(&"--report-memory"), "{first}");
    let root = repo_root();
    tc_in(&root, &args)
        .expect_code(0)
        .expect_mentions(&["probs", "planned"]);
}

const AFFINE: &str = "dim N = 4\ninput x : f32[N]\nparam w : f32[N]\nparam b : f32[]\ny = x * w + b\nh = f16(y)\nbh = bf16(y)\noutput y, h, bh\n";

/// A safetensors file of f32 tensors.
fn safetensors_f32(dir: &Path, name: &str, tensors: &[(&str, &[usize], &[f32])]) -> String {
    let tensors: Vec<(&str, &str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape, v)| (*n, "F32", *shape, f32_bytes(v)))
        .collect();
    safetensors(dir, name, &tensors)
}

#[test]
fn npy_and_safetensors_in_npy_out_values_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "affine.tx", AFFINE);
    let x = write_npy_f32(dir.path(), "x.npy", &[4], &[1.0, 2.0, -3.0, 0.5]);
    let params = safetensors_f32(
        dir.path(),
        "p.safetensors",
        &[("w", &[4], &[2.0, 0.5, 1.0, 4.0]), ("b", &[], &[0.25])],
    );
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    tc_run_cpu(
        dir.path(),
        &prog,
        &[
            "--input",
            &format!("x={x}"),
            "--params",
            &params,
            "--save",
            &out.display().to_string(),
        ],
    )
    .expect_code(0);
    let (shape, y) = read_npy_f32(&out.join("y.npy"));
    assert_eq!(shape, vec![4]);
    assert_eq!(y, vec![2.25, 1.25, -2.75, 2.25]);
    // bf16 is written as f32, exactly: these values are representable in bf16.
    let (_, bh) = read_npy_f32(&out.join("bh.npy"));
    assert_eq!(bh, vec![2.25, 1.25, -2.75, 2.25]);
    // f16 goes out as a real f16 npy.
    let h = std::fs::read(out.join("h.npy")).expect("h.npy");
    let header = String::from_utf8_lossy(&h[..h.len().min(128)]).to_string();
    assert!(
        header.contains("<f2"),
        "f16 output should be an f2 npy: {header}"
    );
}

#[test]
fn safetensors_out_keeps_every_dtype() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "affine.tx", AFFINE);
    let x = write_npy_f32(dir.path(), "x.npy", &[4], &[1.0, 2.0, -3.0, 0.5]);
    let params = safetensors_f32(
        dir.path(),
        "p.safetensors",
        &[("w", &[4], &[2.0, 0.5, 1.0, 4.0]), ("b", &[], &[0.25])],
    );
    let path = dir.path().join("out.safetensors");
    tc_run_cpu(
        dir.path(),
        &prog,
        &[
            "--input",
            &format!("x={x}"),
            "--params",
            &params,
            "--save",
            &path.display().to_string(),
        ],
    )
    .expect_code(0);
    let bytes = std::fs::read(&path).expect("saved");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("a valid safetensors file");
    let y = st.tensor("y").expect("y");
    assert_eq!(y.dtype(), safetensors::Dtype::F32);
    let yv: Vec<f32> = y
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(yv, vec![2.25, 1.25, -2.75, 2.25]);
    let h = st.tensor("h").expect("h");
    assert_eq!(h.dtype(), safetensors::Dtype::F16);
    let hv: Vec<f32> = h
        .data()
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(hv, vec![2.25, 1.25, -2.75, 2.25]);
    let bh = st.tensor("bh").expect("bh");
    assert_eq!(bh.dtype(), safetensors::Dtype::BF16);
    assert_eq!(bh.shape(), &[4]);
}

#[test]
fn f32_npy_feeds_an_f16_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(
        dir.path(),
        "h.tx",
        "dim N = 3\ninput x : f16[N]\ny = f32(x) * 2\noutput y\n",
    );
    let x = write_npy_f32(dir.path(), "x.npy", &[3], &[1.0, 0.1, 65504.0]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    tc_run_cpu(
        dir.path(),
        &prog,
        &[
            "--input",
            &format!("x={x}"),
            "--save",
            &out.display().to_string(),
        ],
    )
    .expect_code(0);
    let (_, y) = read_npy_f32(&out.join("y.npy"));
    let tenth_in_f16 = half::f16::from_f32(0.1).to_f32();
    assert_eq!(y, vec![2.0, 2.0 * tenth_in_f16, 131008.0]);
}

#[test]
fn memory_json_has_the_spec_keys_and_svg_draws_buffers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = repo_root().join("examples/mlp.tx").display().to_string();
    let json = dir.path().join("m.json");
    let svg = dir.path().join("m.svg");
    let mut args = vec!["run", &ex, "--device", "cpu", "--memory-json"];
    let json_s = json.display().to_string();
    let svg_s = svg.display().to_string();
    args.push(&json_s);
    args.push("--memory-svg");
    args.push(&svg_s);
    let dims = small_dims_for(&ex);
    args.extend(dims.iter().map(String::as_str));
    tc_in(dir.path(), &args).expect_code(0);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("valid JSON");
    for peak in ["naive", "eager", "planned", "lower_bound"] {
        for k in ["with_inputs", "without_inputs"] {
            assert!(
                v["peaks"][peak][k].is_u64(),
                "peaks.{peak}.{k} missing: {v}"
            );
        }
    }
    assert!(
        v["peaks"]["measured"].is_null(),
        "measured is null off CUDA"
    );
    let p = &v["peaks"];
    let get = |n: &str| p[n]["without_inputs"].as_u64().unwrap_or(u64::MAX);
    assert!(
        get("lower_bound") <= get("planned")
            && get("planned") <= get("eager")
            && get("eager") <= get("naive"),
        "{p}"
    );
    let kernels = v["kernels"].as_array().expect("kernels");
    assert!(!kernels.is_empty());
    for k in kernels {
        assert!(
            k["name"].is_string() && k["ops"].is_array() && k["lines"].is_array(),
            "{k}"
        );
    }
    let buffers = v["buffers"].as_array().expect("buffers");
    assert!(buffers.iter().any(|b| b["name"] == "probs"), "{buffers:?}");
    for b in buffers {
        for key in [
            "name",
            "dtype",
            "shape",
            "bytes",
            "first_step",
            "last_step",
            "offset",
            "view_of",
            "in_place_of",
        ] {
            assert!(b.get(key).is_some(), "buffer lacks `{key}`: {b}");
        }
    }
    let svg_text = std::fs::read_to_string(&svg).expect("svg");
    assert!(
        svg_text.trim_start().starts_with("<svg") || svg_text.trim_start().starts_with("<?xml")
    );
    assert!(
        svg_text.contains("<rect") && svg_text.contains("probs"),
        "the picture labels its buffers"
    );
}

#[test]
fn no_fuse_and_no_reuse_never_plan_less_than_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = repo_root()
        .join("examples/transformer_block.tx")
        .display()
        .to_string();
    let planned = |extra: &[&str]| -> u64 {
        let json = dir.path().join("r.json");
        let json_s = json.display().to_string();
        let dims = small_dims_for(&ex);
        let mut args = vec!["run", &ex, "--device", "cpu", "--memory-json", &json_s];
        args.extend(dims.iter().map(String::as_str));
        args.extend_from_slice(extra);
        tc_in(dir.path(), &args).expect_code(0);
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("JSON");
        v["peaks"]["planned"]["without_inputs"]
            .as_u64()
            .expect("planned")
    };
    let best = planned(&[]);
    let no_fuse = planned(&["--no-fuse"]);
    let no_reuse = planned(&["--no-reuse"]);
    let neither = planned(&["--no-fuse", "--no-reuse"]);
    assert!(
        best <= no_fuse && best <= no_reuse && no_reuse <= neither && no_fuse <= neither,
        "{best} {no_fuse} {no_reuse} {neither}"
    );
    assert!(
        best < neither,
        "planning should save memory on a transformer block"
    );
}

#[test]
fn output_into_a_pipe_closed_early_ends_quietly() {
    // `tc emit --kernels x.tx | head -1`: the reader goes away after one line; tc must not
    // panic on the failed write (it ends by SIGPIPE, as other command-line tools do).
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    // 400 unfused kernels: far more CUDA C than a pipe buffers.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut source = String::from("dim N = 1000\ninput x : f32[N]\ny0 = exp(x)\n");
    for i in 1..400 {
        source.push_str(&format!("y{i} = exp(y{})\n", i - 1));
    }
    source.push_str("output y399\n");
    let file = write(dir.path(), "long.tx", source);
    let mut child = std::process::Command::new(cli::tc_path())
        .args(["emit", "--kernels", "--no-fuse", &file])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tc starts");
    let mut first = [0u8; 64];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("tc writes");
    // The read end is dropped here, long before tc has written its ~500 KB.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let status = child.wait().expect("tc ends");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        status.success() || status.signal() == Some(13),
        "tc ended with {status:?}: {stderr}"
    );
}

/// `--fast-math` (an extension: CUDA kernels round as torch.compile's do) is accepted by
/// `run` and `bench`; on the CPU it says it changes nothing there, and the outputs are the
/// same bits as without it.
#[test]
fn fast_math_on_the_cpu_says_so_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = repo_root().join("examples/chain.tx").display().to_string();
    let (plain, fast) = (dir.path().join("plain"), dir.path().join("fast"));
    for (out, extra) in [(&plain, None), (&fast, Some("--fast-math"))] {
        std::fs::create_dir(out).expect("mkdir");
        let mut args = vec!["--dim", "N=4096", "--save", out.to_str().expect("utf-8")];
        args.extend(extra);
        let run = tc_run_cpu(dir.path(), &chain, &args);
        run.expect_code(0);
        let said = run.all().contains("--fast-math changes CUDA kernels only");
        assert_eq!(said, extra.is_some(), "{}", run.all());
    }
    let (_, want) = read_npy_f32(&plain.join("y.npy"));
    let (_, got) = read_npy_f32(&fast.join("y.npy"));
    assert_eq!(want.len(), 4096);
    assert!(
        want.iter()
            .zip(&got)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "--fast-math changed the CPU executor's results"
    );
    tc_in(
        dir.path(),
        &[
            "bench",
            &chain,
            "--device",
            "cpu",
            "--dim",
            "N=4096",
            "--fast-math",
        ],
    )
    .expect_code(0)
    .expect_mentions(&["--fast-math changes CUDA kernels only"]);
}
