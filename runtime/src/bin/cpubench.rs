//! `cpubench FILE.tx [tc bench's options] [--reps N] [--print-plan] [--per-kernel]`: `tc
//! bench`'s own path (the same arguments, compile, preflight, data and `Backend::bench`),
//! for one variant on the CPU backend — the default plan, or `--no-fuse`/`--no-reuse` —
//! printed as one JSON object for `scripts/bench_cpu_numpy.py` and `scripts/bench_peers.py`:
//! best and median seconds, CPU seconds per run, arena bytes, resident memory before the
//! data and at its peak (a run's time stops before its outputs are freed, as the peers'
//! do). `--per-kernel` adds a breakdown: as many more runs, each kernel's best wall and CPU
//! times (with its kind, ops and lines), each run's time outside its kernels (best and
//! median) and its minor page faults (least and median), also printed as a table on stderr. Errors exit as `tc` does.

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
    /// After the timed runs, as many runs again timing each kernel (`cpu::run_timed`): each
    /// kernel's best time goes into the JSON (`per_kernel`) and a table on stderr.
    #[arg(long)]
    per_kernel: bool,
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

/// Minor page faults of this process so far, all threads (0 where unavailable).
fn minor_faults() -> i64 {
    // SAFETY: a zeroed `rusage` is a valid out-value for `getrusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer to one `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_minflt as i64
}

fn main() -> ExitCode {
    // As `tc` does (`tc bench` is what this times).
    tc_runtime::cpu::tune_host_allocator();
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
    let per_kernel = if args.per_kernel {
        per_kernel(&program.plan, &inputs, &params, repeats.runs)?
    } else {
        serde_json::Value::Null
    };
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
        "per_kernel": per_kernel,
    });
    println!("{json}");
    Ok(())
}

/// Each kernel's best wall time and best process CPU time over `runs` runs of the plan
/// (after one untimed run), as a JSON list in plan order; the same as a table on stderr,
/// with each kernel's share of the sum of the best wall times.
fn per_kernel(
    plan: &tc_compiler::schedule::Plan,
    inputs: &[tc_runtime::HostTensor],
    params: &[tc_runtime::HostTensor],
    runs: usize,
) -> Result<serde_json::Value, CliError> {
    use tc_compiler::schedule::KernelKind;
    let error =
        |e: tc_runtime::cpu::CpuError| CliError::from(tc_runtime::backend::BackendError::from(e));
    let n = plan.kernels.len();
    let (mut best, mut best_cpu) = (vec![f64::INFINITY; n], vec![f64::INFINITY; n]);
    // Per kernel: the product it ran in as the epilogue (its time counted there).
    let mut epilogue_of = vec![None; n];
    // Per run: its wall time less the sum of its kernels' (set-up, arena, outputs, and the
    // gaps between kernels).
    let mut outside = Vec::new();
    // Per run: the minor page faults of the run and of freeing its outputs.
    let mut faults = Vec::new();
    for i in 0..=runs.max(1) {
        let before = minor_faults();
        let start = std::time::Instant::now();
        let (outs, times) = tc_runtime::cpu::run_timed(plan, inputs, params).map_err(error)?;
        let wall = start.elapsed().as_secs_f64();
        drop(outs);
        if i == 0 {
            continue;
        }
        faults.push(minor_faults() - before);
        outside.push(wall - times.iter().map(|t| t.wall_s).sum::<f64>());
        for (k, t) in times.iter().enumerate() {
            best[k] = best[k].min(t.wall_s);
            best_cpu[k] = best_cpu[k].min(t.cpu_s);
            epilogue_of[k] = t.epilogue_of;
        }
    }
    outside.sort_by(f64::total_cmp);
    let total: f64 = best.iter().sum();
    eprintln!("kernel  kind         best ms   share  best CPU ms  ops (lines)");
    let mut list = Vec::new();
    for (((k, &t), &c), of) in plan
        .kernels
        .iter()
        .zip(&best)
        .zip(&best_cpu)
        .zip(&epilogue_of)
    {
        let kind = match &k.kind {
            KernelKind::Fused(_) => "fused",
            KernelKind::MatMul(m) if m.prologue.is_some() => "matmul+pro",
            KernelKind::MatMul(_) => "matmul",
            KernelKind::Attention(_) => "attention",
            KernelKind::AttentionBackward(_) => "attention_bwd",
            KernelKind::IndexAdd(_) => "index_add",
        };
        let host = of.map(|j| plan.kernels[j].name.as_str());
        let within = host.map_or(String::new(), |h| format!(" [epilogue of {h}]"));
        eprintln!(
            "{:<7} {:<12} {:>8.3} {:>6.1}%  {:>11.3}  {} ({}){within}",
            k.name,
            kind,
            t * 1e3,
            100.0 * t / total.max(f64::MIN_POSITIVE),
            c * 1e3,
            k.ops.join(", "),
            k.source_lines()
        );
        list.push(serde_json::json!({
            "kernel": k.name,
            "kind": kind,
            "ops": k.ops,
            "lines": k.lines,
            "best_s": t,
            "best_cpu_s": c,
            "epilogue_of": host,
        }));
    }
    let (out_best, out_median) = (outside[0], outside[outside.len() / 2]);
    faults.sort_unstable();
    let (faults_least, faults_median) = (faults[0], faults[faults.len() / 2]);
    eprintln!(
        "sum of best times {:.3} ms; outside the kernels per run: best {:.3} ms, median {:.3} ms; \
         page faults per run: least {faults_least}, median {faults_median}",
        total * 1e3,
        out_best * 1e3,
        out_median * 1e3
    );
    Ok(serde_json::json!({
        "kernels": list,
        "outside_best_s": out_best,
        "outside_median_s": out_median,
        "page_faults_least": faults_least,
        "page_faults_median": faults_median,
    }))
}
