//! The `tc` command line: argument parsing, diagnostics rendering and the subcommands.
//!
//! Every failure becomes a `CliError` whose kind fixes the exit code of SPEC §2:
//! 1 for the program or its data, 2 for usage, 3 for a device or compiler failure or a bug
//! in tc. `run` and `bench` reach the CPU and CUDA executors only through
//! `backend::Backend`; the functions they share with `cpubench` are public.

// First: `console`'s `print!`, `println!` and `eprintln!` shadow the standard ones in this
// module and every module declared after it (a failed write is an error exit, not a panic).
#[macro_use]
mod console;
pub mod args;
pub mod diagnostics;
pub mod error;
mod output;
mod plan;

use crate::backend::{self, Backend, CpuBackend, CudaBackend, Repeats, Timing};
use crate::tensor::HostTensor;
use crate::{cuda, data};
use args::{BenchArgs, Cli, Command, CompileArgs, DeviceChoice, EmitArgs, ExecArgs, RunArgs};
use clap::Parser;
pub use error::CliError;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
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
    // Repeated runs (`tc bench`) reuse the last run's freed output pages instead of
    // faulting in fresh ones.
    crate::cpu::tune_host_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match args::validate(&cli.command)
        .and_then(|()| dispatch(cli.command))
        .and_then(|()| console::check_stdout())
    {
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
        Command::Plan(args) => plan::plan(&args),
    }
}

/// A source file read for compilation.
#[derive(Debug)]
pub struct Source {
    pub path: String,
    pub text: String,
}

/// Reads a program, `-` from standard input (exit 2 when it cannot be read, 1 when it is
/// not UTF-8).
pub fn read_source(file: &Path) -> Result<Source, CliError> {
    let bytes = data::read_path(file).map_err(|e| CliError::Usage(e.to_string()))?;
    let path = match file.to_str() {
        Some("-") => "<stdin>".to_string(),
        _ => file.display().to_string(),
    };
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

/// Resolves `--device` to a backend. `auto` falls back to the CPU and says so in one line
/// (unless `quiet`); an explicit `cuda` that cannot be had is a device failure (exit 3).
pub fn select_backend(exec: &ExecArgs, quiet: bool) -> Result<Box<dyn Backend>, CliError> {
    let cuda = || Box::new(CudaBackend::new(cuda_options(exec))) as Box<dyn Backend>;
    let cpu = || {
        if exec.fast_math && !quiet {
            eprintln!("note: --fast-math changes CUDA kernels only; the CPU executor's maths is the same either way");
        }
        Box::new(CpuBackend) as Box<dyn Backend>
    };
    match exec.device {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Cuda => match cuda::available() {
            Ok(_) => Ok(cuda()),
            Err(why) => Err(CliError::Device(format!(
                "--device cuda: no usable GPU: {why}\n  = help: `--device cpu` runs the same plan on the CPU"
            ))),
        },
        DeviceChoice::Auto => match cuda::available() {
            Ok(_) => Ok(cuda()),
            Err(why) => {
                if !quiet {
                    eprintln!("note: no GPU found ({why}); running on the CPU");
                }
                Ok(cpu())
            }
        },
    }
}

/// The compile options of `args` for `backend`'s target.
pub fn compile_options(args: &CompileArgs, backend: &dyn Backend) -> CompileOptions {
    CompileOptions {
        dims: args.dims.clone(),
        plan: backend.plan_options(PlanOptions {
            fuse: !args.no_fuse,
            reuse: !args.no_reuse,
            ..PlanOptions::default()
        }),
    }
}

/// Compiles a program; a planner-internal diagnostic (a bug in tc) exits 3, every other
/// diagnostic (the program's fault) 1.
pub fn compile(source: &Source, options: &CompileOptions) -> Result<Program, CliError> {
    tc_compiler::compile(&source.text, options).map_err(|d| compile_error(source, &d))
}

/// `compile` under `--memory-budget` (`None`: no budget).
pub fn compile_budgeted(
    source: &Source,
    options: &CompileOptions,
    budget: Option<u64>,
) -> Result<Program, CliError> {
    tc_compiler::compile_with_budget(&source.text, options, budget)
        .map_err(|d| compile_error(source, &d))
}

/// The error of a failed compile: the rendered diagnostics, exit 3 when one is tc's own
/// (`planner-internal`), else 1.
fn compile_error(source: &Source, diags: &[tc_compiler::Diagnostic]) -> CliError {
    let internal = diags.iter().any(|d| d.kind.is_internal());
    match render(source, diags) {
        CliError::Program(text) if internal => CliError::Internal(text),
        e => e,
    }
}

/// Inputs and params for one run: from files where given, else seeded random.
pub fn bind_data(
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

/// Refuses, before any data is made or anything launched, a program whose memory cannot
/// fit where `backend` runs it (`backend::preflight`; exit 3, naming the bytes needed and
/// free).
pub fn preflight(program: &Program, backend: &dyn Backend) -> Result<(), CliError> {
    Ok(backend::preflight(program, backend)?)
}

fn run(args: &RunArgs) -> Result<(), CliError> {
    let source = read_source(&args.file)?;
    let backend = select_backend(&args.exec, false)?;
    console::status("planning");
    let options = compile_options(&args.compile, backend.as_ref());
    let program = compile_budgeted(&source, &options, args.memory_budget)?;
    let destinations = output::plan(args, &program)?;
    preflight(&program, backend.as_ref())?;
    console::status("preparing inputs and params");
    let (inputs, params) = bind_data(&program, &args.exec)?;
    console::status(&format!(
        "compiling and running {} kernels on {}",
        program.plan.kernels.len(),
        backend.name()
    ));
    let executed = backend.run(&program.plan, &inputs, &params);
    console::clear_status();
    let executed = executed?;

    println!("ran {} on {}", source.path, backend.name());
    for (out, tensor) in program.plan.outputs.iter().zip(&executed.outputs) {
        println!("{}: {}", out.name, data::summarize(tensor));
    }
    let mut report: MemoryReport = program.memory.clone();
    report.peaks.measured = executed.measured;
    let named: Vec<(String, HostTensor)> = program
        .plan
        .outputs
        .iter()
        .map(|o| o.name.clone())
        .zip(executed.outputs)
        .collect();
    if args.save.is_some() || args.memory_json.is_some() || args.memory_svg.is_some() {
        console::status("saving");
    }
    let committed = destinations.commit(&named, &report);
    console::clear_status();
    committed?;
    if let Some(save) = &args.save {
        println!("saved {} output(s) to {}", named.len(), save.display());
    }
    if args.report_memory {
        println!();
        print!("{}", tc_compiler::report::text::render_text(&report));
    }
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

fn emit(args: &EmitArgs) -> Result<(), CliError> {
    let source = read_source(&args.file)?;
    if args.ir {
        let graph = tc_compiler::check(&source.text, &args.compile.dims)
            .map_err(|d| render(&source, &d))?;
        print!("{}", tc_compiler::ir::text::print(&graph));
        return Ok(());
    }
    // Emitting needs no device: `auto` plans for the device `tc run` would use here, so
    // `emit --plan` shows the plan `run` runs; `--device cuda` shows the CUDA plan anywhere.
    let backend = plan::planning_backend(args.device);
    let program = compile(&source, &compile_options(&args.compile, backend.as_ref()))?;
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
        maths: if exec.fast_math {
            cuda::Maths::Fast
        } else {
            cuda::Maths::Exact
        },
        ..Default::default()
    }
}

fn bench(args: &BenchArgs) -> Result<(), CliError> {
    let repeats = repeats(args)?;
    let source = read_source(&args.file)?;
    let backend = select_backend(&args.exec, false)?;
    let backend = backend.as_ref();
    let planned = compile(&source, &compile_options(&args.compile, backend))?;
    let mut naive_args = args.compile.clone();
    naive_args.no_fuse = true;
    naive_args.no_reuse = true;
    let naive = compile(&source, &compile_options(&naive_args, backend))?;
    preflight(&naive, backend)?;
    let (inputs, params) = bind_data(&planned, &args.exec)?;

    println!(
        "bench {} on {} ({} timed runs after {} warm-up)",
        source.path,
        backend.name(),
        repeats.runs,
        repeats.warmup
    );
    let floor = backend.copy_bandwidth()?;
    if let Some(bw) = &floor {
        println!(
            "  device: {}; copy bandwidth {:.0} GB/s (read + write, measured now)",
            bw.device, bw.gbps
        );
    }
    let mut medians = Vec::new();
    for (label, program) in [("planned", &planned), ("unfused, unplanned", &naive)] {
        let b = time_variant(backend, program, &inputs, &params, repeats)?;
        let t = &b.timing;
        // Against the copy bandwidth: the plan's own traffic (how well its kernels use the
        // memory system) and the program's least traffic (how far from the best any plan
        // could do: each input and param read once, each output written once).
        let vs_floor = match &floor {
            Some(f) => format!(
                "   {:.2}x the copy floor of its traffic, {:.2}x the program's floor",
                f.gbps / b.gbps.max(1e-12),
                t.median_ms * 1e-3 / (b.least_traffic_bytes as f64 / (f.gbps * 1e9)).max(1e-15)
            ),
            None => String::new(),
        };
        println!(
            "  {label:<20} median {:>10.3} ms   min {:>10.3} ms   {:>3} kernels   arena {:>12}   {:>8.1} GB/s{vs_floor}",
            t.median_ms,
            t.min_ms,
            program.plan.kernels.len(),
            tc_compiler::report::text::human(program.plan.arena_bytes),
            b.gbps,
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

/// `--warmup` and `--runs`, within `Repeats`' bounds (exit 2 otherwise; clap checks them
/// first, this keeps the library's callers to the same bounds).
pub fn repeats(args: &BenchArgs) -> Result<Repeats, CliError> {
    Repeats::new(args.warmup, args.runs).map_err(CliError::Usage)
}

/// One variant timed, with the bytes it moves.
#[derive(Clone, Debug)]
pub struct BenchFigures {
    pub timing: Timing,
    /// `backend::traffic_bytes` of the plan.
    pub traffic_bytes: u64,
    /// `backend::least_traffic_bytes` of the plan.
    pub least_traffic_bytes: u64,
    /// The plan's traffic over its median time, GB/s (10^9).
    pub gbps: f64,
}

/// Times one compiled variant on `backend` (what `tc bench` does for each of its two, and
/// `cpubench` for its one).
pub fn time_variant(
    backend: &dyn Backend,
    program: &Program,
    inputs: &[HostTensor],
    params: &[HostTensor],
    repeats: Repeats,
) -> Result<BenchFigures, CliError> {
    let timing = backend.bench(&program.plan, inputs, params, repeats)?;
    let traffic_bytes = backend::traffic_bytes(&program.plan);
    Ok(BenchFigures {
        gbps: traffic_bytes as f64 / (timing.median_ms * 1e-3) / 1e9,
        traffic_bytes,
        least_traffic_bytes: backend::least_traffic_bytes(&program.plan),
        timing,
    })
}

#[cfg(test)]
mod tests {
    use super::{compile_error, Source};
    use tc_compiler::Diagnostic;

    #[test]
    fn a_planner_internal_diagnostic_exits_3_and_a_programs_error_1() {
        let source = Source {
            path: "p.tx".into(),
            text: "dim N = 4\n".into(),
        };
        let internal = compile_error(
            &source,
            &[Diagnostic::error(
                tc_compiler::ErrorKind::PlannerInternal,
                "oops",
            )],
        );
        assert_eq!(internal.exit_code(), 3);
        let text = internal.to_string();
        assert!(
            text.contains("planner-internal") && text.contains("bug in tc"),
            "{text}"
        );
        let user = compile_error(
            &source,
            &[Diagnostic::error(
                tc_compiler::ErrorKind::UnknownName,
                "no `z`",
            )],
        );
        assert_eq!(user.exit_code(), 1);
    }
}
