//! The `tc` command line; everything lives in `tc_runtime::cli`.

fn main() -> std::process::ExitCode {
    tc_runtime::cli::main()
}
