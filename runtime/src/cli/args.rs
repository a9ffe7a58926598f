//! The command line's grammar (clap): `tc check|run|emit|bench` as SPEC §2 lists, and
//! `tc plan` (SPEC §3.7). `parse_size` reads a memory size (`--memory 2GiB`) for any option
//! that takes one.

use crate::backend::Repeats;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "tc",
    version,
    about = "tc: a tensor compiler that shows and shrinks where memory goes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and shape-check; exit 1 on any error.
    Check {
        file: PathBuf,
        /// Override a dim: NAME=INT (repeatable).
        #[arg(long = "dim", value_name = "NAME=INT", value_parser = parse_dim)]
        dims: Vec<(String, u64)>,
    },
    /// Compile, run, print a summary of each output.
    Run(RunArgs),
    /// Print the generated CUDA C, the schedule and buffer plan, or the IR.
    Emit(EmitArgs),
    /// Time the planned program against the unfused, unplanned one.
    Bench(BenchArgs),
    /// Plan and report memory without running or allocating the program's data; with
    /// `--fit DIM --memory SIZE`, the largest DIM whose planned peak fits SIZE.
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub compile: CompileArgs,
    /// Plan for this device; `cuda` includes the cuBLAS workspace, with or without a GPU
    /// here; `auto` is what `tc run` would use.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Print the memory report.
    #[arg(long)]
    pub report_memory: bool,
    /// Write the memory report as JSON.
    #[arg(long, value_name = "FILE")]
    pub memory_json: Option<PathBuf>,
    /// Write the memory report as an SVG picture of buffers over time.
    #[arg(long, value_name = "FILE")]
    pub memory_svg: Option<PathBuf>,
    /// Find the largest value of this dim whose planned peak, with inputs and params, is at
    /// most --memory.
    #[arg(long, value_name = "DIM", requires = "memory")]
    pub fit: Option<String>,
    /// The memory to fit in: bytes, or with a unit (512MiB, 2GiB, 80GB). A program with
    /// `grad` may recompute forward values to fit, as under --memory-budget.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "fit")]
    pub memory: Option<u64>,
    /// Plan within SIZE bytes with inputs and params (`512MiB`, `2GiB`, or bytes),
    /// recomputing forward values in the backward pass of a program with `grad`; exit 1
    /// when no plan fits, as `tc run --memory-budget`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "fit")]
    pub memory_budget: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// Options shared by everything that compiles a program.
#[derive(Debug, Args, Clone)]
pub struct CompileArgs {
    /// Override a dim: NAME=INT (repeatable).
    #[arg(long = "dim", value_name = "NAME=INT", value_parser = parse_dim)]
    pub dims: Vec<(String, u64)>,
    /// Switch off fusion (one kernel per source-level op).
    #[arg(long)]
    pub no_fuse: bool,
    /// Switch off in-place reuse and offset packing.
    #[arg(long)]
    pub no_reuse: bool,
}

/// Options of `run` (and of `bench`).
#[derive(Debug, Args, Clone)]
pub struct ExecArgs {
    /// Where to run: CUDA when a GPU and its driver are found (auto), or force one.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Load an input from a .npy file: NAME=FILE.npy (repeatable).
    #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_input)]
    pub inputs: Vec<(String, PathBuf)>,
    /// Load params (and inputs) by name from a safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub params: Option<PathBuf>,
    /// Seed for every tensor not supplied.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Allow TF32 tensor cores for f32 matmuls on CUDA (off by default: full f32 precision).
    #[arg(long)]
    pub allow_tf32: bool,
    /// CUDA kernels round as torch.compile's do: multiply-adds fuse into FMAs, `/` within 2
    /// ulp, approximate `sqrt` (off by default: every op correctly rounded on its own). The
    /// CPU executor's maths is the same either way.
    #[arg(long)]
    pub fast_math: bool,
    /// Do not read or write the on-disk cache of compiled CUDA kernels.
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub compile: CompileArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Write the outputs: a directory gets NAME.npy each; FILE.safetensors gets one file.
    #[arg(long, value_name = "PATH")]
    pub save: Option<PathBuf>,
    /// Print the memory report.
    #[arg(long)]
    pub report_memory: bool,
    /// Write the memory report as JSON.
    #[arg(long, value_name = "FILE")]
    pub memory_json: Option<PathBuf>,
    /// Write the memory report as an SVG picture of buffers over time.
    #[arg(long, value_name = "FILE")]
    pub memory_svg: Option<PathBuf>,
    /// Plan within SIZE bytes with inputs and params (`512MiB`, `2GiB`, or bytes),
    /// recomputing forward values in the backward pass of a program with `grad`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_budget: Option<u64>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["kernels", "plan", "ir"])))]
pub struct EmitArgs {
    pub file: PathBuf,
    /// Print the generated CUDA C.
    #[arg(long)]
    pub kernels: bool,
    /// Print the schedule and buffer plan.
    #[arg(long)]
    pub plan: bool,
    /// Print the checked tensor graph (an extension).
    #[arg(long)]
    pub ir: bool,
    #[command(flatten)]
    pub compile: CompileArgs,
    /// Plan for this device (matters for the cuBLAS workspace).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub compile: CompileArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Timed runs per variant (the median is reported), 1 to 1000000.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=Repeats::MAX))]
    pub runs: u64,
    /// Untimed runs before timing, 0 to 1000000.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=Repeats::MAX))]
    pub warmup: u64,
}

fn parse_dim(s: &str) -> Result<(String, u64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=INT, got `{s}`"))?;
    if name.trim().is_empty() {
        return Err(format!("expected NAME=INT, got `{s}`"));
    }
    let value: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a positive integer (in --dim {s})"))?;
    if value == 0 {
        return Err(format!("a dim must be positive (in --dim {s})"));
    }
    Ok((name.trim().to_string(), value))
}

/// A memory size: a whole number of bytes (`1048576`), or a number and a unit (`512MiB`,
/// `1.5GiB`, `80GB`, `64 KiB`): B, KiB, MiB, GiB, TiB, PiB (powers of 1024), kB, MB, GB, TB,
/// PB (powers of 1000), units in any case. At least one byte; at most 2^64 − 1.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let bad = || {
        format!(
            "`{s}` is not a memory size: give bytes (1073741824) or a number and a unit \
             (512MiB, 2GiB, 80GB)"
        )
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(bad());
    }
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "pib" | "p" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        _ => return Err(bad()),
    };
    // Exact arithmetic: whole part × scale + fraction × scale, rounded down to a byte.
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.len() > 18 || (scale == 1 && !frac.is_empty()) {
        return Err(bad());
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let bytes = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac_value * scale / 10u128.pow(frac.len() as u32)))
        .ok_or_else(|| format!("`{s}` is more bytes than tc can count (2^64 - 1)"))?;
    if bytes > u64::MAX as u128 {
        return Err(format!("`{s}` is more bytes than tc can count (2^64 - 1)"));
    }
    if bytes == 0 {
        return Err(format!("`{s}`: a memory size must be at least one byte"));
    }
    Ok(bytes as u64)
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=FILE.npy, got `{s}`"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("expected NAME=FILE.npy, got `{s}`"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Checks across options that clap cannot make: a dim given twice with `--dim` (exit 1, as
/// an input given twice with `--input` is), and standard input (`-`) named more than once —
/// as the program, an `--input` or `--params` — since it can be read only once (exit 2).
pub fn validate(command: &Command) -> Result<(), super::CliError> {
    let (file, dims, exec) = match command {
        Command::Check { file, dims } => (file, dims, None),
        Command::Run(a) => (&a.file, &a.compile.dims, Some(&a.exec)),
        Command::Emit(a) => (&a.file, &a.compile.dims, None),
        Command::Bench(a) => (&a.file, &a.compile.dims, Some(&a.exec)),
        Command::Plan(a) => (&a.file, &a.compile.dims, None),
    };
    if let Command::Plan(PlanArgs {
        fit: Some(dim),
        compile,
        ..
    }) = command
    {
        if compile.dims.iter().any(|(n, _)| n == dim) {
            return Err(super::CliError::Usage(format!(
                "--fit {dim} searches for the value of `{dim}`: do not also give it with --dim"
            )));
        }
    }
    for (i, (name, _)) in dims.iter().enumerate() {
        if dims[..i].iter().any(|(n, _)| n == name) {
            let values: Vec<String> = dims
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| format!("--dim {name}={v}"))
                .collect();
            return Err(super::CliError::Program(format!(
                "error: `{name}` is given twice with --dim ({})",
                values.join(", ")
            )));
        }
    }
    let mut readers: Vec<String> = Vec::new();
    if file.as_os_str() == "-" {
        readers.push("the program".into());
    }
    if let Some(exec) = exec {
        for (name, path) in &exec.inputs {
            if path.as_os_str() == "-" {
                readers.push(format!("--input {name}=-"));
            }
        }
        if exec.params.as_ref().is_some_and(|p| p.as_os_str() == "-") {
            readers.push("--params -".into());
        }
    }
    if readers.len() > 1 {
        return Err(super::CliError::Usage(format!(
            "standard input (`-`) is given to {}, but it can be read only once",
            readers.join(" and ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_bytes_and_units() {
        let cases: [(&str, u64); 10] = [
            ("1", 1),
            ("1048576", 1 << 20),
            ("512MiB", 512 << 20),
            ("2GiB", 2 << 30),
            ("2 gib", 2 << 30),
            ("1.5GiB", 3 << 29),
            ("80GB", 80_000_000_000),
            ("64KiB", 64 << 10),
            ("1TiB", 1 << 40),
            ("16EiB0", 0),
        ];
        for (text, want) in &cases[..9] {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
        for bad in [
            cases[9].0,
            "",
            "MiB",
            "1.5",
            "-1",
            "0",
            "0GiB",
            "1.2.3GiB",
            "20000PiB",
            "12 parsecs",
            ".5GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} was taken");
        }
    }
}
