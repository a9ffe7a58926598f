//! `cpubench FILE.tx [--dim NAME=INT]… [--reps N] [--no-fuse] [--no-reuse] [--print-plan]`: times the CPU
//! executor on a program with seeded random data and prints one JSON object (best and
//! median seconds, arena bytes, resident memory before the data and at its peak), for
//! `scripts/bench_cpu_numpy.py`.

use std::time::Instant;
use tc_compiler::{CompileOptions, PlanOptions};
use tc_runtime::{cpu, data};

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

/// User + system CPU seconds of this process so far (all threads), from /proc/self/stat
/// (clock ticks of 1/100 s, as on every Linux x86 system).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("cpubench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut dims = Vec::new();
    let mut reps = 5usize;
    let mut plan = PlanOptions::default();
    let mut print_plan = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dim" => {
                let v = args.next().ok_or("--dim needs NAME=INT")?;
                let (n, s) = v.split_once('=').ok_or("--dim needs NAME=INT")?;
                dims.push((
                    n.to_string(),
                    s.parse::<u64>().map_err(|e| format!("--dim {v}: {e}"))?,
                ));
            }
            "--reps" => {
                reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--reps needs a count")?
            }
            "--no-fuse" => plan.fuse = false,
            "--no-reuse" => plan.reuse = false,
            "--print-plan" => print_plan = true,
            _ if file.is_none() => file = Some(a),
            _ => return Err(format!("unexpected argument {a}")),
        }
    }
    let file = file
        .ok_or("usage: cpubench FILE.tx [--dim NAME=INT]… [--reps N] [--no-fuse] [--no-reuse]")?;
    let source = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
    let program = tc_compiler::compile(
        &source,
        &CompileOptions {
            dims: dims.clone(),
            plan: plan.clone(),
        },
    )
    .map_err(|d| {
        d.iter()
            .map(|d| d.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    if print_plan {
        eprintln!("{}", tc_compiler::plan::text::print(&program.plan));
    }
    let baseline = status_bytes("VmRSS:");
    let (inputs, params) =
        data::load_leaves(&program.checked, &[], None, 0).map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(reps);
    let cpu0 = cpu_seconds();
    let mut outputs = 0;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let outs = cpu::run(&program.plan, &inputs, &params).map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64());
        outputs = outs.len();
        drop(outs);
    }
    let cpu_per_run = (cpu_seconds() - cpu0) / times.len() as f64;
    let peak = status_bytes("VmHWM:");
    times.sort_by(f64::total_cmp);
    let dims_json: Vec<String> = dims.iter().map(|(n, v)| format!("\"{n}\": {v}")).collect();
    println!(
        "{{\"file\": \"{file}\", \"dims\": {{{}}}, \"fuse\": {}, \"reuse\": {}, \"reps\": {}, \"outputs\": {outputs}, \"kernels\": {}, \"best_s\": {:.6}, \"median_s\": {:.6}, \"cpu_s_per_run\": {cpu_per_run:.3}, \"arena_bytes\": {}, \"rss_baseline_bytes\": {baseline}, \"peak_rss_bytes\": {peak}, \"threads\": {}}}",
        dims_json.join(", "),
        plan.fuse,
        plan.reuse,
        times.len(),
        program.plan.kernels.len(),
        times[0],
        times[times.len() / 2],
        program.plan.arena_bytes,
        rayon::current_num_threads()
    );
    Ok(())
}
