//! `cpubench FILE.tx [tc bench's options] [--reps N] [--print-plan]`: `tc bench`'s own path (the same
//! arguments, compile, preflight, data and `Backend::bench`), for one variant on the CPU
//! backend — the default plan, or `--no-fuse`/`--no-reuse` — printed as one JSON object
//! for `scripts/bench_cpu_numpy.py` and `scripts/bench_peers.py`: best and median seconds, CPU seconds per run, arena
//! bytes, resident memory before the data and at its peak. Errors exit as `tc` does.

use clap::Parser;
use std::process::ExitCode;
use tc_runtime::backend::{Backend, CpuBackend};
use tc_runtime::cli::{self, args::BenchArgs, CliError};

/// `tc bench`'s arguments (`--device` is ignored: this times the CPU backend).
#[derive(Debug, Parser)]
#[command(
    name = "cpubench",
    about = "times tc's CPU backend on one plan; prints JSON"
)]
struct Args {
    #[command(flatten)]
    bench: BenchArgs,
    /// Print the plan to stderr first.
    #[arg(long)]
    print_plan: bool,
    /// Timed runs with no warm-up (`--runs N --warmup 0`), as the peer scripts time their
    /// sides: best of N after the inputs exist.
    #[arg(long, value_name = "N")]
    reps: Option<u64>,
}

/// A `VmRSS`/`VmHWM`-style line of /proc/self/status, in bytes (0 where unavailable).
fn status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: &Args) -> Result<(), CliError> {
    let mut a = args.bench.clone();
    if let Some(n) = args.reps {
        a.runs = n;
        a.warmup = 0;
    }
    let a = &a;
    let backend = CpuBackend;
    let repeats = cli::repeats(a)?;
    let source = cli::read_source(&a.file)?;
    let options = cli::compile_options(&a.compile, &backend);
    let program = cli::compile(&source, &options)?;
    if args.print_plan {
        eprintln!("{}", tc_compiler::plan::text::print(&program.plan));
    }
    cli::preflight(&program, &backend)?;
    let baseline = status_bytes("VmRSS:");
    let (inputs, params) = cli::bind_data(&program, &a.exec)?;
    let figures = cli::time_variant(&backend, &program, &inputs, &params, repeats)?;
    let peak = status_bytes("VmHWM:");
    let t = &figures.timing;
    let dims: serde_json::Map<String, serde_json::Value> = a
        .compile
        .dims
        .iter()
        .map(|(n, v)| (n.clone(), (*v).into()))
        .collect();
    let json = serde_json::json!({
        "file": source.path,
        "device": backend.name(),
        "dims": dims,
        "fuse": options.plan.fuse,
        "reuse": options.plan.reuse,
        "reps": t.runs,
        "warmup": repeats.warmup,
        "outputs": program.plan.outputs.len(),
        "kernels": program.plan.kernels.len(),
        "best_s": t.min_ms * 1e-3,
        "median_s": t.median_ms * 1e-3,
        "cpu_s_per_run": t.cpu_seconds_per_run,
        "traffic_bytes": figures.traffic_bytes,
        "gbps": figures.gbps,
        "arena_bytes": program.plan.arena_bytes,
        "rss_baseline_bytes": baseline,
        "peak_rss_bytes": peak,
        "threads": rayon::current_num_threads(),
    });
    println!("{json}");
    Ok(())
}
