//! The `tc` command line, built inside the test package so end-to-end tests can run it as a
//! process (`CARGO_BIN_EXE_tc-under-test`); the same one-line shim as `runtime/src/main.rs`.

fn main() -> std::process::ExitCode {
    tc_runtime::cli::main()
}
