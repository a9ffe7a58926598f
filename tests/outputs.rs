//! The files tc reads and writes (SPEC §3.7; issue 12, items 1–8, 13, 16, 20, 22 and 23):
//! destinations that are devices, symlinks, FIFOs, pipes or standard output; destinations
//! that clash with an input or with each other; checks made before the program runs; saves
//! that happen whole or not at all, even under SIGTERM; write errors on the console; `-` for
//! standard input; and `.npy` files whose sizes lie.
//!
//! Runs as root (CI does) and as any other user: where a test needs a device node of its
//! own it makes one with `mknod` as root, and otherwise uses `/dev/full` or `/dev/null`,
//! which no other user can replace.

#[path = "support/cli.rs"]
mod cli;

use cli::{
    f32_bytes, npy_bytes, safetensors, tc_in, tc_path, tc_redirected, tc_stdin, write,
    write_npy_f32, Run,
};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One input, one param, one output.
const SMALL: &str = "dim N = 4\ninput x : f32[N]\nparam w : f32[N]\ny = x * w + 1\noutput y\n";
/// One input, two outputs, nothing random: y = 2x, z = x + 1.
const TWO: &str = "dim N = 4\ninput x : f32[N]\ny = x * 2\nz = x + 1\noutput y, z\n";

/// `tc run PROG --device cpu EXTRA…` in `dir`.
fn run_cpu(dir: &Path, prog: &str, extra: &[&str]) -> Run {
    let mut args = vec!["run", prog, "--device", "cpu"];
    args.extend_from_slice(extra);
    tc_in(dir, &args)
}

/// The names in `dir`, sorted.
fn ls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A device node of our own (as root) with the given minor of major 1 (3 = null, 7 = full),
/// else the system's, which only root could replace.
fn device(dir: &Path, name: &str, minor: u32, system: &str) -> PathBuf {
    let path = dir.join(name);
    let made = Command::new("mknod")
        .arg(&path)
        .args(["c", "1", &minor.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        path
    } else {
        PathBuf::from(system)
    }
}

fn is_char_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {}", path.display());
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The run did not start: nothing was computed, nothing printed as a result.
#[track_caller]
fn did_not_run(run: &Run) {
    assert!(
        !run.stdout.contains("ran ") && !run.stderr.contains("ran "),
        "the program ran before the error:\n{}",
        run.all()
    );
}

// --- item 1: devices, symlinks, FIFOs and pipes are written as they are

#[test]
fn a_device_is_written_in_place_and_stays_a_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    let full = device(dir.path(), "full", 7, "/dev/full");
    run_cpu(dir.path(), &prog, &["--memory-json", &s(&full)])
        .expect_code(1)
        .expect_mentions(&["--memory-json", "no space left"]);
    assert!(is_char_device(&full), "{} was replaced", full.display());

    let null = device(dir.path(), "null", 3, "/dev/null");
    run_cpu(dir.path(), &prog, &["--memory-svg", &s(&null)]).expect_code(0);
    assert!(is_char_device(&null), "{} was replaced", null.display());
}

#[test]
fn a_symlink_is_written_through_to_its_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    write(dir.path(), "real.json", "old");
    std::os::unix::fs::symlink("real.json", dir.path().join("link.json")).expect("symlink");
    // A dangling link: its target is made.
    std::os::unix::fs::symlink("real.safetensors", dir.path().join("link.safetensors"))
        .expect("symlink");
    run_cpu(
        dir.path(),
        &prog,
        &["--memory-json", "link.json", "--save", "link.safetensors"],
    )
    .expect_code(0);
    for link in ["link.json", "link.safetensors"] {
        let meta = std::fs::symlink_metadata(dir.path().join(link)).expect("link");
        assert!(meta.file_type().is_symlink(), "{link} was replaced");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("real.json")).expect("read"))
            .expect("real.json holds the report");
    assert!(json.get("peaks").is_some());
    let bytes = std::fs::read(dir.path().join("real.safetensors")).expect("target written");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
    assert_eq!(st.names(), vec!["y"]);
}

#[test]
fn a_fifo_is_written_in_place_for_its_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    let fifo = dir.path().join("report.fifo");
    mkfifo(&fifo);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        let got = std::fs::read(&reader_path);
        let _ = tx.send(got);
    });
    run_cpu(dir.path(), &prog, &["--memory-json", &s(&fifo)]).expect_code(0);
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the FIFO's reader got nothing: tc replaced the FIFO")
        .expect("read the FIFO");
    let json: serde_json::Value = serde_json::from_slice(&got).expect("the reader got the JSON");
    assert!(json.get("peaks").is_some());
    let meta = std::fs::symlink_metadata(&fifo).expect("fifo");
    assert!(meta.file_type().is_fifo(), "the FIFO was replaced");
}

#[test]
fn a_pipe_named_by_dev_fd_is_written_in_place() {
    // `--memory-json >(wc -c)` names a pipe as /dev/fd/N; here N is 1, captured by a pipe.
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    let run = run_cpu(dir.path(), &prog, &["--memory-json", "/dev/fd/1"]);
    run.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is the report alone ({e}):\n{}", run.stdout));
    assert!(json.get("peaks").is_some());
    assert!(run.stderr.contains("ran "), "the summary goes to stderr");
}

/// Replacing /dev/stdout by a rename would break the machine for everyone: only ever run
/// against a tc that writes in place (this test's name keeps it out of a run on older code).
#[test]
fn dev_stdout_is_written_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    let run = run_cpu(dir.path(), &prog, &["--memory-svg", "/dev/stdout"]);
    run.expect_code(0);
    assert!(run.stdout.trim_end().ends_with("</svg>"), "{}", run.stdout);
    let meta = std::fs::symlink_metadata("/dev/stdout").expect("/dev/stdout");
    assert!(!meta.file_type().is_file(), "/dev/stdout became a file");
}

// --- item 7: `-` is standard output

#[test]
fn dash_is_standard_output_for_the_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    let run = run_cpu(dir.path(), &prog, &["--memory-json", "-"]);
    run.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is the report alone ({e}):\n{}", run.stdout));
    assert!(json.get("buffers").is_some());
    assert!(run.stderr.contains("ran "), "the summary goes to stderr");
    assert_eq!(
        ls(dir.path()),
        vec!["prog.tx"],
        "a file named `-` was written"
    );

    let run = run_cpu(dir.path(), &prog, &["--memory-svg", "-", "--report-memory"]);
    run.expect_code(0);
    let svg = run.stdout.trim();
    assert!(svg.starts_with('<') && svg.ends_with("</svg>"), "{svg}");
    assert!(
        run.stderr.contains("planned"),
        "the text report goes to stderr"
    );
    assert_eq!(ls(dir.path()), vec!["prog.tx"]);
}

// --- item 2: a destination that is also an input, the program or another destination

#[test]
fn a_destination_that_clashes_is_bad_usage_before_any_work() {
    struct Clash {
        name: &'static str,
        args: &'static [&'static str],
        mentions: &'static [&'static str],
        /// A file that must be left as it was.
        kept: Option<&'static str>,
    }
    let clashes = [
        Clash {
            name: "save and memory-json to one file",
            args: &["--save", "o.safetensors", "--memory-json", "o.safetensors"],
            mentions: &["--save", "--memory-json", "o.safetensors"],
            kept: None,
        },
        Clash {
            name: "memory-json and memory-svg to one file",
            args: &["--memory-json", "m.out", "--memory-svg", "./m.out"],
            mentions: &["--memory-json", "--memory-svg"],
            kept: None,
        },
        Clash {
            name: "both reports to standard output",
            args: &["--memory-json", "-", "--memory-svg", "-"],
            mentions: &["--memory-json", "--memory-svg", "standard output"],
            kept: None,
        },
        Clash {
            name: "save over the params",
            args: &["--params", "w.safetensors", "--save", "w.safetensors"],
            mentions: &["--params", "--save", "w.safetensors"],
            kept: Some("w.safetensors"),
        },
        Clash {
            name: "memory-json over the program",
            args: &["--memory-json", "prog.tx"],
            mentions: &["--memory-json", "program", "prog.tx"],
            kept: Some("prog.tx"),
        },
        Clash {
            name: "memory-svg through a symlink to the program",
            args: &["--memory-svg", "alias.tx"],
            mentions: &["--memory-svg", "program"],
            kept: Some("prog.tx"),
        },
        Clash {
            name: "save into the folder an input comes from",
            args: &["--input", "x=d/y.npy", "--save", "d"],
            mentions: &["--input", "--save", "y.npy"],
            kept: Some("d/y.npy"),
        },
    ];
    let program =
        "dim N = 4\ninput x : f32[N]\nparam w : f32[N]\ny = x * w\nz = x + 1\noutput y, z\n";
    let mut failures = Vec::new();
    for clash in &clashes {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(d, "prog.tx", program);
        std::os::unix::fs::symlink("prog.tx", d.join("alias.tx")).expect("symlink");
        safetensors(
            d,
            "w.safetensors",
            &[("w", "F32", &[4], f32_bytes(&[0.5; 4]))],
        );
        std::fs::create_dir(d.join("d")).expect("mkdir");
        write_npy_f32(&d.join("d"), "y.npy", &[4], &[1.0, 2.0, 3.0, 4.0]);
        let before = clash
            .kept
            .map(|k| std::fs::read(d.join(k)).expect("kept file"));
        let result = std::panic::catch_unwind(|| {
            let run = run_cpu(d, "prog.tx", clash.args);
            run.expect_code(2).expect_mentions(clash.mentions);
            did_not_run(&run);
        });
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("[{}] {msg}", clash.name));
            continue;
        }
        if let (Some(k), Some(before)) = (clash.kept, before) {
            let after = std::fs::read(d.join(k)).expect("kept file");
            if after != before {
                failures.push(format!("[{}] {k} was overwritten", clash.name));
            }
        }
        for stray in ["o.safetensors", "m.out"] {
            if d.join(stray).exists() {
                failures.push(format!("[{}] {stray} was written", clash.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn standard_input_is_read_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    tc_stdin(
        dir.path(),
        &["run", "-", "--device", "cpu", "--input", "x=-"],
        TWO.as_bytes(),
    )
    .expect_code(2)
    .expect_mentions(&["standard input", "--input"]);
}

// --- item 3: every destination is checked before the program runs, naming its option

#[test]
fn destinations_are_checked_before_the_run_naming_the_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    std::fs::create_dir(dir.path().join("afolder")).expect("mkdir");
    for (args, mentions) in [
        (
            &["--memory-json", "nodir/m.json"][..],
            &["--memory-json", "nodir"][..],
        ),
        (
            &["--memory-svg", "afolder"],
            &["--memory-svg", "afolder", "folder"],
        ),
        // /proc refuses new files to everyone, root included.
        (&["--save", "/proc"], &["--save", "/proc"]),
        (&["--save", "/proc/o.safetensors"], &["--save", "/proc"]),
        (&["--memory-svg", "/proc/m.svg"], &["--memory-svg", "/proc"]),
    ] {
        let run = run_cpu(dir.path(), &prog, args);
        run.expect_code(1).expect_mentions(mentions);
        did_not_run(&run);
    }
    assert_eq!(ls(dir.path()), vec!["afolder", "prog.tx"]);
}

#[test]
fn save_says_which_forms_it_takes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    let run = run_cpu(dir.path(), &prog, &["--save", "out.npy"]);
    run.expect_code(1)
        .expect_mentions(&["--save", "out.npy", "existing folder", ".safetensors"]);
    did_not_run(&run);
}

// --- item 4: a failed save leaves nothing of the outputs

#[test]
fn a_save_that_cannot_happen_is_refused_before_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", TWO);
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("z.npy")).expect("a folder in the way");
    let run = run_cpu(dir.path(), &prog, &["--save", "out"]);
    run.expect_code(1)
        .expect_mentions(&["--save", "z.npy", "folder"]);
    did_not_run(&run);
    assert_eq!(ls(&out), vec!["z.npy"]);

    // An output whose file name is longer than a file name may be.
    let long = "z".repeat(300);
    let prog = write(
        dir.path(),
        "long.tx",
        format!("dim N = 4\ninput x : f32[N]\ny = x * 2\n{long} = x + 1\noutput y, {long}\n"),
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let run = run_cpu(dir.path(), &prog, &["--save", "empty"]);
    run.expect_code(1).expect_mentions(&["--save", "too long"]);
    did_not_run(&run);
    assert!(ls(&empty).is_empty(), "left behind: {:?}", ls(&empty));
}

#[test]
fn a_save_that_fails_while_writing_leaves_none_of_the_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", TWO);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    // z.npy is a link to a full device: y.npy is ready first, then writing z fails.
    let full = device(dir.path(), "full", 7, "/dev/full");
    std::os::unix::fs::symlink(&full, out.join("z.npy")).expect("symlink");
    run_cpu(dir.path(), &prog, &["--save", "out"])
        .expect_code(1)
        .expect_mentions(&["--save", "z.npy", "no space left"]);
    assert_eq!(
        ls(&out),
        vec!["z.npy"],
        "y.npy or a temporary file was left"
    );
    assert!(std::fs::symlink_metadata(out.join("z.npy"))
        .expect("link")
        .file_type()
        .is_symlink());
}

// --- item 5: SIGTERM during a save leaves no temporary file

#[test]
fn sigterm_during_a_save_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", TWO);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    // z.npy is a FIFO nobody reads: tc writes y.npy's temporary file (`*.tmp`), then
    // waits there.
    mkfifo(&out.join("z.npy"));
    let mut child = Command::new(tc_path())
        .args(["run", &prog, "--device", "cpu", "--save", &s(&out)])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tc starts");
    let start = Instant::now();
    let mut seen_temp = false;
    while start.elapsed() < Duration::from_secs(30) {
        if ls(&out).iter().any(|n| n.ends_with(".tmp")) {
            seen_temp = true;
            break;
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !seen_temp {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "tc never waited on the FIFO with y.npy pending: {:?}",
            ls(&out)
        );
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert!(!status.success(), "tc finished despite SIGTERM");
    assert_eq!(ls(&out), vec!["z.npy"], "left behind after SIGTERM");
}

// --- item 6: `__metadata__` cannot be a tensor of a safetensors file

#[test]
fn an_output_named_metadata_is_refused_for_safetensors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(
        dir.path(),
        "prog.tx",
        "dim N = 4\ninput x : f32[N]\n__metadata__ = x * 2\noutput __metadata__\n",
    );
    let run = run_cpu(dir.path(), &prog, &["--save", "o.safetensors"]);
    run.expect_code(1)
        .expect_mentions(&["__metadata__", "--save", "safetensors"]);
    did_not_run(&run);
    assert!(!dir.path().join("o.safetensors").exists());
    // A folder takes it.
    std::fs::create_dir(dir.path().join("d")).expect("mkdir");
    run_cpu(dir.path(), &prog, &["--save", "d"]).expect_code(0);
    assert_eq!(ls(&dir.path().join("d")), vec!["__metadata__.npy"]);
}

// --- item 8: a write error on the console is a clean error

#[test]
fn a_full_stdout_or_stderr_is_a_clean_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    let full = || {
        Stdio::from(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        )
    };
    tc_redirected(dir.path(), &["check", &prog], full(), Stdio::piped())
        .expect_code(1)
        .expect_mentions(&["standard output", "no space left"]);
    tc_redirected(
        dir.path(),
        &["run", &prog, "--device", "cpu", "--report-memory"],
        full(),
        Stdio::piped(),
    )
    .expect_code(1)
    .expect_mentions(&["standard output"]);
    // The error message itself cannot be written: the exit code still says so.
    let bad = write(
        dir.path(),
        "bad.tx",
        "dim N = 4\ninput x : f32[N]\ny = x + q\noutput y\n",
    );
    tc_redirected(dir.path(), &["check", &bad], Stdio::piped(), full()).expect_code(1);
    tc_redirected(dir.path(), &["check", &prog], Stdio::piped(), full()).expect_code(0);
}

// --- items 13 and 20: `.npy` sizes are checked against the file before anything is allocated

/// `tc ARGS` with its address space capped at about 1.5 GiB, so a 4 GiB allocation fails.
fn tc_capped(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1500000 && exec \"$0\" \"$@\"")
        .arg(tc_path())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .output()
        .expect("sh runs");
    let code = out.status.code().unwrap_or_else(|| {
        panic!(
            "tc was killed by a signal ({:?}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let run = Run {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_ne!(run.code, 101, "tc panicked:\n{}", run.stderr);
    run
}

#[test]
fn an_npy_header_larger_than_its_file_is_refused_before_allocating() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "prog.tx", SMALL);
    // Version 2: a four-byte header length, here 0xFFFFFFF0, in a 130-byte file.
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bytes.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }");
    bytes.resize(130, b' ');
    write(dir.path(), "x.npy", &bytes);
    tc_capped(
        dir.path(),
        &["run", "prog.tx", "--device", "cpu", "--input", "x=x.npy"],
    )
    .expect_code(1)
    .expect_mentions(&["x.npy", "header", "4294967280", "130 bytes"]);
}

#[test]
fn an_npy_whose_shape_needs_more_data_than_it_holds_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "prog.tx", SMALL);
    npy_bytes(dir.path(), "x.npy", "<f4", "(4,)", &[0u8; 7]);
    tc_in(
        dir.path(),
        &["run", "prog.tx", "--device", "cpu", "--input", "x=x.npy"],
    )
    .expect_code(1)
    .expect_mentions(&["x.npy", "truncated", "16 bytes", "7"]);
    // A shape of 10^12 elements in a file of a few bytes: refused, not allocated.
    npy_bytes(dir.path(), "big.npy", "<f4", "(1000000000000,)", &[0u8; 4]);
    tc_capped(
        dir.path(),
        &["run", "prog.tx", "--device", "cpu", "--input", "x=big.npy"],
    )
    .expect_code(1)
    .expect_mentions(&["big.npy", "truncated", "4000000000000 bytes"]);
}

#[test]
fn a_float64_npy_for_an_f32_input_hints_astype() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "prog.tx", SMALL);
    npy_bytes(dir.path(), "x.npy", "<f8", "(4,)", &[0u8; 32]);
    tc_in(
        dir.path(),
        &["run", "prog.tx", "--device", "cpu", "--input", "x=x.npy"],
    )
    .expect_code(1)
    .expect_mentions(&["`x`", "f32", ".astype(np.float32)"]);
}

// --- item 16: a dim given twice

#[test]
fn a_dim_given_twice_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = write(dir.path(), "prog.tx", SMALL);
    for cmd in ["check", "run"] {
        let run = tc_in(dir.path(), &[cmd, &prog, "--dim", "N=2", "--dim", "N=3"]);
        run.expect_code(1)
            .expect_mentions(&["`N`", "given twice", "--dim"]);
        assert!(!run.all().contains("names no dim"), "{}", run.all());
    }
}

// --- item 22: `-` reads standard input

#[test]
fn dash_reads_the_program_or_an_input_from_standard_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    tc_stdin(dir.path(), &["check", "-"], SMALL.as_bytes())
        .expect_code(0)
        .expect_mentions(&["ok"]);

    let prog = write(dir.path(), "prog.tx", TWO);
    let mut npy = Vec::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let x = write_npy_f32(tmp.path(), "x.npy", &[4], &[1.0, 2.0, 3.0, 4.0]);
    npy.extend(std::fs::read(x).expect("npy"));
    std::fs::create_dir(dir.path().join("out")).expect("mkdir");
    tc_stdin(
        dir.path(),
        &[
            "run", &prog, "--device", "cpu", "--input", "x=-", "--save", "out",
        ],
        &npy,
    )
    .expect_code(0);
    let (_, y) = cli::read_npy_f32(&dir.path().join("out").join("y.npy"));
    assert_eq!(y, vec![2.0, 4.0, 6.0, 8.0]);
}
