//! The `tc` command line: argument parsing, diagnostics rendering and the subcommands.
//!
//! Every failure becomes a `CliError` whose kind fixes the exit code of SPEC §2:
//! 1 for the program or its data, 2 for usage, 3 for a device or compiler failure.

pub mod args;
pub mod diagnostics;
pub mod error;

use crate::tensor::HostTensor;
use crate::{cpu, cuda, data};
use args::{BenchArgs, Cli, Command, CompileArgs, DeviceChoice, EmitArgs, ExecArgs, RunArgs};
use clap::Parser;
pub use error::CliError;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;
use tc_compiler::report::MemoryReport;
use tc_compiler::{CompileOptions, PlanOptions, Program};

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    // Output piped into a reader that stops early (`tc emit --kernels x.tx | head`): end
    // quietly as other command-line tools do, instead of panicking on the failed write.
    // SAFETY: called first, before tc starts any thread; SIG_DFL is always a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn dispatch(command: Command) -> Result<(), CliError> {
    match command {
        Command::Check { file, dims } => check(&file, &dims),
        Command::Run(args) => run(&args),
        Command::Emit(args) => emit(&args),
        Command::Bench(args) => bench(&args),
    }
}

/// A source file read for compilation.
struct Source {
    path: String,
    text: String,
}

fn read_source(file: &Path) -> Result<Source, CliError> {
    let bytes = std::fs::read(file)
        .map_err(|e| CliError::Usage(format!("cannot read `{}`: {e}", file.display())))?;
    let path = file.display().to_string();
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Source { path, text }),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(CliError::Program(format!(
                "error[{}]: `{path}` is not valid UTF-8 (line {line}, byte {at})\n  \
                 = help: .tx files are UTF-8 text; re-save the file as UTF-8",
                tc_compiler::ErrorKind::InvalidUtf8
            )))
        }
    }
}

fn render(source: &Source, diags: &[tc_compiler::Diagnostic]) -> CliError {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    CliError::Program(diagnostics::render(
        &source.path,
        &source.text,
        diags,
        color,
    ))
}

fn check(file: &Path, dims: &[(String, u64)]) -> Result<(), CliError> {
    let source = read_source(file)?;
    let graph = tc_compiler::check(&source.text, dims).map_err(|d| render(&source, &d))?;
    println!(
        "{}: ok ({} inputs, {} params, {} outputs, {} nodes)",
        source.path,
        graph.inputs.len(),
        graph.params.len(),
        graph.outputs.len(),
        graph.len()
    );
    Ok(())
}

/// The device a command runs on, after `auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    Cpu,
    Cuda,
}

/// Resolves `--device`. `auto` falls back to the CPU and says so in one line; an explicit
/// `cuda` that cannot be had is a device failure (exit 3).
fn select_device(choice: DeviceChoice, quiet: bool) -> Result<Device, CliError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => match cuda::available() {
            Ok(_) => Ok(Device::Cuda),
            Err(why) => Err(CliError::Device(format!(
                "--device cuda: no usable GPU: {why}\n  = help: `--device cpu` runs the same plan on the CPU"
            ))),
        },
        DeviceChoice::Auto => match cuda::available() {
            Ok(_) => Ok(Device::Cuda),
            Err(why) => {
                if !quiet {
                    eprintln!("note: no GPU found ({why}); running on the CPU");
                }
                Ok(Device::Cpu)
            }
        },
    }
}

fn compile_options(args: &CompileArgs, device: Device) -> CompileOptions {
    CompileOptions {
        dims: args.dims.clone(),
        plan: PlanOptions {
            fuse: !args.no_fuse,
            reuse: !args.no_reuse,
            matmul_workspace: match device {
                Device::Cpu => 0,
                Device::Cuda => cuda::CUBLAS_WORKSPACE_BYTES,
            },
        },
    }
}

fn compile(source: &Source, options: &CompileOptions) -> Result<Program, CliError> {
    tc_compiler::compile(&source.text, options).map_err(|d| render(source, &d))
}

/// Inputs and params for one run: from files where given, else seeded random.
fn bind_data(
    program: &Program,
    exec: &ExecArgs,
) -> Result<(Vec<HostTensor>, Vec<HostTensor>), CliError> {
    data::load_leaves(
        &program.checked,
        &exec.inputs,
        exec.params.as_deref(),
        exec.seed,
    )
    .map_err(|e| CliError::Program(format!("error: {e}")))
}

/// What one execution produced.
struct Executed {
    outputs: Vec<HostTensor>,
    measured: Option<tc_compiler::report::Peak>,
    /// On CUDA: how far the driver's free-memory figure fell across tc's allocations (the
    /// cross-check of `measured`; the driver rounds each allocation up to its page size).
    driver_bytes: Option<u64>,
}

fn execute(
    program: &Program,
    device: Device,
    exec: &ExecArgs,
    inputs: &[HostTensor],
    params: &[HostTensor],
) -> Result<Executed, CliError> {
    match device {
        Device::Cpu => {
            let outputs = cpu::run(&program.plan, inputs, params)
                .map_err(|e| CliError::Program(format!("error: {e}")))?;
            Ok(Executed {
                outputs,
                measured: None,
                driver_bytes: None,
            })
        }
        Device::Cuda => {
            let options = cuda_options(exec);
            let run = cuda::run(&program.plan, inputs, params, &options)
                .map_err(|e| CliError::Device(e.to_string()))?;
            let inputs_bytes: u64 = inputs
                .iter()
                .chain(params)
                .map(|t| t.bytes.len() as u64)
                .sum();
            let measured = tc_compiler::report::Peak {
                with_inputs: run.measured_bytes,
                without_inputs: run.measured_bytes.saturating_sub(inputs_bytes),
            };
            Ok(Executed {
                outputs: run.outputs,
                measured: Some(measured),
                driver_bytes: Some(run.driver_bytes),
            })
        }
    }
}

/// Refuses, before any data is made or anything launched, a program whose memory cannot
/// fit: on CUDA the arena plus inputs and params against the device's free memory; on the
/// host the inputs, params and outputs (and on the CPU the arena) against the memory the
/// kernel says is available. Exit 3, naming the bytes needed and free.
fn preflight(program: &Program, device: Device) -> Result<(), CliError> {
    use tc_compiler::report::text::human;
    let peaks = &program.memory.peaks;
    let leaves = peaks
        .planned
        .with_inputs
        .saturating_sub(peaks.planned.without_inputs);
    let outputs: u64 = program
        .plan
        .outputs
        .iter()
        .map(|o| {
            o.shape
                .iter()
                .product::<u64>()
                .saturating_mul(o.dtype.size())
        })
        .fold(0u64, u64::saturating_add);
    let refuse = |what: &str, needed: u64, free: u64| {
        CliError::Device(format!(
            "the program needs {} ({needed} bytes) of {what} memory but only {} ({free} bytes) \
             is free; nothing was run\n  = help: try smaller dims (--dim NAME=INT)",
            human(needed),
            human(free)
        ))
    };
    if device == Device::Cuda {
        if let Ok(info) = cuda::available() {
            let needed = peaks.planned.with_inputs;
            if needed > info.free_bytes {
                return Err(refuse(
                    &format!("device ({})", info.name),
                    needed,
                    info.free_bytes,
                ));
            }
        }
    }
    let host_needed = match device {
        Device::Cpu => peaks.planned.with_inputs.saturating_add(outputs),
        Device::Cuda => leaves.saturating_add(outputs),
    };
    if let Some(free) = host_available_bytes() {
        if host_needed > free {
            return Err(refuse("host", host_needed, free));
        }
    }
    Ok(())
}

/// `MemAvailable` from `/proc/meminfo`, where there is one.
fn host_available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn run(args: &RunArgs) -> Result<(), CliError> {
    let source = read_source(&args.file)?;
    let device = select_device(args.exec.device, false)?;
    let program = compile(&source, &compile_options(&args.compile, device))?;
    if let Some(save) = &args.save {
        data::check_save_path(save)
            .map_err(|e| CliError::Program(format!("error: --save {}: {e}", save.display())))?;
    }
    preflight(&program, device)?;
    let (inputs, params) = bind_data(&program, &args.exec)?;
    let executed = execute(&program, device, &args.exec, &inputs, &params)?;

    println!("ran {} on {}", source.path, device_name(device));
    for (out, tensor) in program.plan.outputs.iter().zip(&executed.outputs) {
        println!("{}: {}", out.name, data::summarize(tensor));
    }
    if let Some(save) = &args.save {
        let named: Vec<(String, HostTensor)> = program
            .plan
            .outputs
            .iter()
            .zip(&executed.outputs)
            .map(|(o, t)| (o.name.clone(), t.clone()))
            .collect();
        data::save_outputs(save, &named).map_err(|e| CliError::Program(format!("error: {e}")))?;
        println!("saved {} output(s) to {}", named.len(), save.display());
    }

    let mut report: MemoryReport = program.memory.clone();
    report.peaks.measured = executed.measured;
    write_reports(&report, args)?;
    if let (true, Some(m), Some(driver)) =
        (args.report_memory, executed.measured, executed.driver_bytes)
    {
        let verdict = if m.with_inputs == report.peaks.planned.with_inputs {
            "equals"
        } else {
            "DIFFERS FROM"
        };
        println!(
            "measured: tc allocated {} bytes on the device, which {verdict} planned; the driver's free \
             memory fell by {driver} bytes (each allocation rounded up to the driver's page size)",
            m.with_inputs
        );
    }
    Ok(())
}

fn device_name(device: Device) -> &'static str {
    match device {
        Device::Cpu => "the CPU",
        Device::Cuda => "CUDA",
    }
}

fn write_reports(report: &MemoryReport, args: &RunArgs) -> Result<(), CliError> {
    if args.report_memory {
        println!();
        print!("{}", tc_compiler::report::text::render_text(report));
    }
    if let Some(path) = &args.memory_json {
        write_file(path, &tc_compiler::report::json::to_json(report))?;
    }
    if let Some(path) = &args.memory_svg {
        write_file(path, &tc_compiler::report::svg::render_svg(report))?;
    }
    Ok(())
}

/// Writes a whole file through a temporary name and a rename: never a half-written file.
fn write_file(path: &Path, contents: &str) -> Result<(), CliError> {
    data::write_file_atomically(path, contents.as_bytes())
        .map_err(|e| CliError::Program(format!("error: {e}")))
}

fn emit(args: &EmitArgs) -> Result<(), CliError> {
    let source = read_source(&args.file)?;
    if args.ir {
        let graph = tc_compiler::check(&source.text, &args.compile.dims)
            .map_err(|d| render(&source, &d))?;
        print!("{}", tc_compiler::ir::text::print(&graph));
        return Ok(());
    }
    // Emitting needs no device: plan for CUDA unless the CPU is asked for, since the CUDA
    // plan is the one the kernels belong to.
    let device = match args.device {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda | DeviceChoice::Auto => Device::Cuda,
    };
    let program = compile(&source, &compile_options(&args.compile, device))?;
    if args.plan {
        print!("{}", tc_compiler::plan::text::print(&program.plan));
    }
    if args.kernels {
        print!("{}", tc_compiler::codegen::emit_program(&program.plan));
    }
    Ok(())
}

fn cuda_options(exec: &ExecArgs) -> cuda::CudaOptions {
    cuda::CudaOptions {
        allow_tf32: exec.allow_tf32,
        no_cache: exec.no_cache,
        ..Default::default()
    }
}

fn bench(args: &BenchArgs) -> Result<(), CliError> {
    let source = read_source(&args.file)?;
    let device = select_device(args.exec.device, false)?;
    let planned_opts = compile_options(&args.compile, device);
    let mut naive_args = args.compile.clone();
    naive_args.no_fuse = true;
    naive_args.no_reuse = true;
    let naive_opts = compile_options(&naive_args, device);
    let planned = compile(&source, &planned_opts)?;
    let naive = compile(&source, &naive_opts)?;
    preflight(&naive, device)?;
    let (inputs, params) = bind_data(&planned, &args.exec)?;

    println!(
        "bench {} on {} ({} timed runs after {} warm-up)",
        source.path,
        device_name(device),
        args.runs,
        args.warmup
    );
    let floor = match device {
        Device::Cuda => {
            let bw = cuda::copy_bandwidth(256 << 20, 20, 0)
                .map_err(|e| CliError::Device(e.to_string()))?;
            println!(
                "  device: {}; copy bandwidth {:.0} GB/s (read + write, measured now)",
                bw.device.name, bw.gbps
            );
            Some(bw.gbps)
        }
        Device::Cpu => None,
    };
    let mut medians = Vec::new();
    for (label, program) in [("planned", &planned), ("unfused, unplanned", &naive)] {
        let t = time_program(program, device, &args.exec, &inputs, &params, args)?;
        let traffic = traffic_bytes(&program.plan) as f64;
        let gbps = traffic / (t.median_ms * 1e-3) / 1e9;
        // Against the copy bandwidth: the plan's own traffic (how well its kernels use the
        // memory system) and the program's least traffic (how far from the best any plan
        // could do: each input and param read once, each output written once).
        let vs_floor = match floor {
            Some(f) => {
                let least = least_traffic_bytes(&program.plan) as f64;
                format!(
                    "   {:.2}x the copy floor of its traffic, {:.2}x the program's floor",
                    f / gbps.max(1e-12),
                    t.median_ms * 1e-3 / (least / (f * 1e9)).max(1e-15)
                )
            }
            None => String::new(),
        };
        println!(
            "  {label:<20} median {:>10.3} ms   min {:>10.3} ms   {:>3} kernels   arena {:>12}   {:>8.1} GB/s{vs_floor}",
            t.median_ms,
            t.min_ms,
            program.plan.kernels.len(),
            tc_compiler::report::text::human(program.plan.arena_bytes),
            gbps,
        );
        if let Some(s) = t.startup_s {
            println!(
                "  {:<20} start-up (open, compile or cache, allocate, upload) {:.1} ms",
                "",
                s * 1e3
            );
        }
        medians.push(t.median_ms);
    }
    println!("  speed-up of the plan: {:.2}x", medians[1] / medians[0]);
    Ok(())
}

/// Bytes a plan must move at the least: each kernel reads every buffer it loads once and
/// writes every buffer it stores once (what a bandwidth figure is measured against).
pub fn traffic_bytes(plan: &tc_compiler::Plan) -> u64 {
    use tc_compiler::schedule::KernelKind;
    let mut total = 0u64;
    for kernel in &plan.kernels {
        let mut touched: Vec<tc_compiler::schedule::BufferId> = match &kernel.kind {
            KernelKind::Fused(f) => f
                .loads
                .iter()
                .map(|l| l.buffer)
                .chain(f.stores.iter().map(|s| s.buffer))
                .collect(),
            KernelKind::MatMul(m) => vec![m.a.buffer, m.b.buffer, m.out],
        };
        touched.sort();
        touched.dedup();
        total += touched.iter().map(|b| plan.buffer(*b).bytes).sum::<u64>();
    }
    total
}

/// Bytes any plan of the program must move: every input and param read once, every output
/// written once (the floor `tc bench` and the bandwidth targets compare with).
pub fn least_traffic_bytes(plan: &tc_compiler::Plan) -> u64 {
    let mut buffers: Vec<tc_compiler::schedule::BufferId> = plan
        .inputs
        .iter()
        .chain(&plan.params)
        .copied()
        .chain(plan.outputs.iter().map(|o| o.buffer))
        .collect();
    buffers.sort();
    buffers.dedup();
    buffers.iter().map(|b| plan.buffer(*b).bytes).sum()
}

/// Timings of one variant, in milliseconds.
struct Timing {
    median_ms: f64,
    min_ms: f64,
    startup_s: Option<f64>,
}

/// Times the plan: device events on CUDA, wall clock on the CPU.
fn time_program(
    program: &Program,
    device: Device,
    exec: &ExecArgs,
    inputs: &[HostTensor],
    params: &[HostTensor],
    args: &BenchArgs,
) -> Result<Timing, CliError> {
    match device {
        Device::Cuda => {
            let b = cuda::bench(
                &program.plan,
                inputs,
                params,
                &cuda_options(exec),
                args.warmup,
                args.runs.max(1),
            )
            .map_err(|e| CliError::Device(e.to_string()))?;
            Ok(Timing {
                median_ms: b.median_ms,
                min_ms: b.min_ms,
                startup_s: Some(b.startup_seconds),
            })
        }
        Device::Cpu => {
            let mut times = Vec::with_capacity(args.runs);
            for i in 0..args.warmup + args.runs.max(1) {
                let start = Instant::now();
                cpu::run(&program.plan, inputs, params)
                    .map_err(|e| CliError::Program(format!("error: {e}")))?;
                if i >= args.warmup {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(|a, b| a.total_cmp(b));
            Ok(Timing {
                median_ms: times[times.len() / 2],
                min_ms: times[0],
                startup_s: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{least_traffic_bytes, traffic_bytes};

    fn plan(source: &str) -> tc_compiler::Plan {
        tc_compiler::compile(source, &tc_compiler::CompileOptions::default())
            .expect("compiles")
            .plan
    }

    #[test]
    fn one_kernel_moves_exactly_the_programs_least_traffic() {
        let p = plan("dim N = 1000\ninput x : f32[N]\ny = exp(x) * 2 + 1\noutput y\n");
        assert_eq!(least_traffic_bytes(&p), 8000);
        assert_eq!(traffic_bytes(&p), 8000);
    }

    #[test]
    fn least_traffic_counts_each_input_and_output_once() {
        // Two row kernels read x; the least traffic reads it once.
        let p = plan(
            "dim N = 10\ndim D = 100\ninput x : f32[N, D]\n\
             a = softmax(x, axis=-1)\nb = sum(x, axis=-1)\nc = x\noutput a, b, c\n",
        );
        let x = 10 * 100 * 4;
        assert_eq!(least_traffic_bytes(&p), x + x + 10 * 4);
        assert!(traffic_bytes(&p) >= least_traffic_bytes(&p));
    }
}
