//! The `tc` command line, built inside the test package so end-to-end tests can run it as a
//! process (`CARGO_BIN_EXE_tc-under-test`); the same one-line shim as `runtime/src/main.rs`,
//! plus one test-only hook: with `TC_TEST_PEAK_RSS=FILE` set, it writes the process's peak
//! resident set (`VmHWM`, in bytes) to FILE when the command ends.

fn main() -> std::process::ExitCode {
    let code = tc_runtime::cli::main();
    if let Some(path) = std::env::var_os("TC_TEST_PEAK_RSS") {
        let peak = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(0, |kib| kib * 1024);
        std::fs::write(path, peak.to_string()).expect("write the peak");
    }
    code
}
