//! `tc plan` (SPEC §3.7): plans a program and reports its memory without running it or
//! allocating its data, for the CPU or for CUDA (cuBLAS workspace included) whether or not
//! a GPU is here, within `--memory-budget` (recomputation in a program with `grad`, as `tc
//! run`'s); and `--fit DIM --memory SIZE`, the largest value of a dim whose planned peak
//! with inputs and params fits SIZE (recomputing, in a program with `grad`, where that
//! makes it fit), found by doubling then bisection over compiles.

use super::args::{DeviceChoice, PlanArgs};
use super::{compile_error, compile_options, console, output, read_source, CliError, Source};
use crate::backend::{Backend, CpuBackend, CudaBackend};
use tc_compiler::units::{count, human};
use tc_compiler::{CompileOptions, ErrorKind, Program};

/// The backend whose plan `--device` asks for, without opening a device: `auto` is what
/// `tc run` would use here (CUDA when a GPU and its driver are found), so `tc plan` and
/// `tc emit --plan` show the plan `tc run` runs.
pub fn planning_backend(device: DeviceChoice) -> Box<dyn Backend> {
    match device {
        DeviceChoice::Cpu => Box::new(CpuBackend),
        DeviceChoice::Cuda => Box::new(CudaBackend::default()),
        DeviceChoice::Auto => match crate::cuda::available() {
            Ok(_) => Box::new(CudaBackend::default()),
            Err(_) => Box::new(CpuBackend),
        },
    }
}

pub fn plan(args: &PlanArgs) -> Result<(), CliError> {
    let source = read_source(&args.file)?;
    let destinations = output::plan_reports(
        &args.file,
        args.memory_json.as_deref(),
        args.memory_svg.as_deref(),
    )?;
    let backend = planning_backend(args.device);
    let options = compile_options(&args.compile, backend.as_ref());
    let program = match (&args.fit, args.memory) {
        (Some(dim), Some(size)) => fit(&source, &options, dim, size)?,
        _ => {
            console::status("planning");
            let p = super::compile_budgeted(&source, &options, args.memory_budget)?;
            console::clear_status();
            p
        }
    };
    let p = &program.memory.peaks;
    println!(
        "planned {} for {}: {}, arena {} ({} bytes); with inputs and params {} ({} bytes)",
        source.path,
        backend.name(),
        count(program.plan.kernels.len(), "kernel"),
        human(p.planned.without_inputs),
        p.planned.without_inputs,
        human(p.planned.with_inputs),
        p.planned.with_inputs
    );
    if args.report_memory {
        println!();
        print!(
            "{}",
            tc_compiler::report::text::render_text(&program.memory)
        );
    }
    destinations.commit(&[], &program.memory)
}

/// The plan at `dim = value` for a memory of `size` bytes, or `None` when some tensor or the
/// arena has more bytes than 64 bits count (it fits nothing). A program with `grad` whose
/// plan is above `size` is planned again under the budget `size` (recomputation, as
/// `--memory-budget`): the budgeted plan when it fits, else the unbudgeted one (whose
/// peak the answer names).
fn peak_at(
    source: &Source,
    options: &CompileOptions,
    dim: &str,
    value: u64,
    size: u64,
) -> Result<Option<Program>, CliError> {
    let mut opts = options.clone();
    opts.dims.push((dim.to_string(), value));
    console::status(&format!("planning with {dim} = {value}"));
    let result = tc_compiler::compile(&source.text, &opts);
    console::clear_status();
    let p = match result {
        Ok(p) => p,
        Err(d) if d.iter().all(|d| d.kind == ErrorKind::TensorTooLarge) => return Ok(None),
        Err(d) => return Err(compile_error(source, &d)),
    };
    if p.memory.peaks.planned.with_inputs <= size || p.checked.grads.is_empty() {
        return Ok(Some(p));
    }
    console::status(&format!(
        "planning with {dim} = {value}, recomputing within the budget"
    ));
    let budgeted = tc_compiler::compile_with_budget(&source.text, &opts, Some(size));
    console::clear_status();
    match budgeted {
        Ok(b) => Ok(Some(b)),
        Err(d) if d.iter().all(|d| d.kind == ErrorKind::OverBudget) => Ok(Some(p)),
        Err(d) => Err(compile_error(source, &d)),
    }
}

fn fits(p: &Option<Program>, size: u64) -> bool {
    p.as_ref()
        .is_some_and(|p| p.memory.peaks.planned.with_inputs <= size)
}

/// The largest `dim` (≥ 1) whose planned peak with inputs and params is at most `size`:
/// doubling from 1 until a value does not fit, then bisection (the peak grows with a dim).
/// Prints the answer and the peaks on either side; exit 1 when even 1 does not fit.
fn fit(
    source: &Source,
    options: &CompileOptions,
    dim: &str,
    size: u64,
) -> Result<Program, CliError> {
    let graph =
        tc_compiler::check(&source.text, &options.dims).map_err(|d| compile_error(source, &d))?;
    if !graph.dims.iter().any(|(n, _)| n == dim) {
        let declared: Vec<&str> = graph.dims.iter().map(|(n, _)| n.as_str()).collect();
        return Err(CliError::Program(format!(
            "error: --fit {dim}: {} declares no dim `{dim}` (its dims: {})",
            source.path,
            if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            }
        )));
    }
    let one = peak_at(source, options, dim, 1, size)?;
    if !fits(&one, size) {
        let need = one.as_ref().map_or_else(
            || "more bytes than 64 bits count".to_string(),
            |p| {
                let b = p.memory.peaks.planned.with_inputs;
                format!("{} ({b} bytes)", human(b))
            },
        );
        return Err(CliError::Program(format!(
            "error: even {dim} = 1 does not fit in {} ({size} bytes): its planned peak with \
             inputs and params is {need}",
            human(size)
        )));
    }
    let (mut lo, mut best) = (1u64, one);
    let mut hi: Option<(u64, Option<Program>)> = None;
    let mut v = 2u64;
    while hi.is_none() {
        let p = peak_at(source, options, dim, v, size)?;
        if fits(&p, size) {
            (lo, best) = (v, p);
            match v.checked_mul(2) {
                Some(next) if next <= 1 << 62 => v = next,
                _ => break,
            }
        } else {
            hi = Some((v, p));
        }
    }
    let Some((mut hi_v, mut hi_p)) = hi else {
        println!(
            "{dim} = {lo} fits in {} (and tc tries no larger value)",
            human(size)
        );
        return best.ok_or_else(|| CliError::Internal("no plan at the fitting value".into()));
    };
    while hi_v - lo > 1 {
        let mid = lo + (hi_v - lo) / 2;
        let p = peak_at(source, options, dim, mid, size)?;
        if fits(&p, size) {
            (lo, best) = (mid, p);
        } else {
            (hi_v, hi_p) = (mid, p);
        }
    }
    let best = best.ok_or_else(|| CliError::Internal("no plan at the fitting value".into()))?;
    let at = best.memory.peaks.planned.with_inputs;
    let above = hi_p.as_ref().map_or_else(
        || "more bytes than 64 bits count".to_string(),
        |p| {
            let b = p.memory.peaks.planned.with_inputs;
            format!("{} ({b} bytes)", human(b))
        },
    );
    println!(
        "largest {dim} that fits in {} ({size} bytes): {dim} = {lo}, planned peak with inputs and \
         params {} ({at} bytes); {dim} = {hi_v} needs {above}",
        human(size),
        human(at)
    );
    if let Some(r) = best
        .memory
        .recompute
        .as_ref()
        .filter(|r| !r.values.is_empty())
    {
        println!(
            "at {dim} = {lo} tc recomputes {} in the backward pass ({} FLOPs, {:.1}% of the \
             forward's)",
            r.values.join(", "),
            r.flops,
            100.0 * r.flops as f64 / r.forward_flops.max(1) as f64
        );
    }
    Ok(best)
}
