//! Running the `tc` command line as a process in end-to-end tests: exit code, stdout,
//! stderr, and a guard that a panic (exit 101) or a signal is always a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What one run of `tc` produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout and stderr together, for "the message names the culprit" checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts the exit code, with the whole output in the failure message.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Asserts that the output mentions every one of `needles` (case-insensitive).
    #[track_caller]
    pub fn expect_mentions(&self, needles: &[&str]) -> &Run {
        let all = self.all().to_lowercase();
        for n in needles {
            assert!(
                all.contains(&n.to_lowercase()),
                "output does not mention `{n}`\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout,
                self.stderr
            );
        }
        self
    }
}

pub fn tc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tc-under-test"))
}

/// Runs `tc ARGS` in `dir` with the GPU hidden unless the caller sets the environment.
#[track_caller]
pub fn tc_in(dir: &Path, args: &[&str]) -> Run {
    tc_env(dir, args, &[])
}

/// Runs `tc run PROG --device cpu REST` in `dir`: the end-to-end tests' usual run.
#[track_caller]
pub fn tc_run_cpu(dir: &Path, prog: &str, rest: &[&str]) -> Run {
    let mut args = vec!["run", prog, "--device", "cpu"];
    args.extend_from_slice(rest);
    tc_in(dir, &args)
}

/// Runs `tc ARGS` in `dir` with extra environment variables.
#[track_caller]
pub fn tc_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(tc_path());
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    finish(cmd.output().expect("the tc binary runs"))
}

/// Runs `tc ARGS` in `dir` with `stdin` fed to its standard input (`-` as a file).
#[track_caller]
pub fn tc_stdin(dir: &Path, args: &[&str], stdin: &[u8]) -> Run {
    let mut cmd = Command::new(tc_path());
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1");
    let mut child = cmd.spawn().expect("the tc binary runs");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let feed = stdin.to_vec();
    // Fed from a thread: tc may read only part of it, or write before it reads.
    let feeder = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut pipe, &feed);
    });
    let out = child.wait_with_output().expect("tc finishes");
    let _ = feeder.join();
    finish(out)
}

/// Runs `tc ARGS` in `dir` with its standard output and error sent where the caller says
/// (a device, a file); whatever is not captured reads as empty.
#[track_caller]
pub fn tc_redirected(dir: &Path, args: &[&str], stdout: Stdio, stderr: Stdio) -> Run {
    let out = Command::new(tc_path())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .env("NO_COLOR", "1")
        .output()
        .expect("the tc binary runs");
    finish(out)
}

/// A finished process as a `Run`, failing on a signal or a panic.
#[track_caller]
fn finish(out: std::process::Output) -> Run {
    let code = match out.status.code() {
        Some(c) => c,
        None => panic!(
            "tc was killed by a signal: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    let run = Run {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_ne!(run.code, 101, "tc panicked (exit 101):\n{}", run.stderr);
    assert!(
        !run.stderr.contains("panicked at"),
        "tc panicked:\n{}",
        run.stderr
    );
    run
}

/// The repository root (for `examples/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Writes `contents` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path.display().to_string()
}

/// Writes a little-endian f32 `.npy` file of `shape` (written by hand so the tests do not
/// trust the code under test to make their fixtures).
pub fn write_npy_f32(dir: &Path, name: &str, shape: &[usize], values: &[f32]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    npy_bytes(
        dir,
        name,
        "<f4",
        &shape_txt,
        &values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// Writes a `.npy` with the given descr, shape text and raw data.
pub fn npy_bytes(dir: &Path, name: &str, descr: &str, shape_txt: &str, data: &[u8]) -> String {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let total = 10 + header.len() + 1;
    let pad = (64 - total % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    write(dir, name, bytes)
}

/// Reads a little-endian f32 `.npy` written by tc: (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("read npy");
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "not an npy file: {}",
        path.display()
    );
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).expect("ascii header");
    assert!(header.contains("'<f4'"), "expected f32 data: {header}");
    let shape_part = header.split("'shape':").nth(1).expect("shape key");
    let inner = &shape_part[shape_part.find('(').expect("(") + 1..shape_part.find(')').expect(")")];
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    let values = bytes[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

/// A safetensors file built by hand: header JSON then raw little-endian data.
pub fn safetensors(dir: &Path, name: &str, tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> String {
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (tname, dtype, shape, bytes)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
        header.push_str(&format!(
            "\"{tname}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            shape.join(","),
            data.len(),
            data.len() + bytes.len()
        ));
        data.extend_from_slice(bytes);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    write(dir, name, bytes)
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
