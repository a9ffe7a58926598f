//! The CUDA backend run on the host, for testing it on machines without a GPU: the CUDA C
//! `codegen` generated for a plan, compiled by the host C++ compiler against an emulation of
//! the CUDA execution model (`emu_runtime.hpp`: a fiber per thread, barriers and warp
//! shuffles as scheduling points, guard pages after every allocation, cuBLAS's GEMM by its
//! definition), then the plan's launches and cuBLAS calls replayed in order at the addresses
//! the executor uses (`place`). Never used by `tc run`: the executor is the real thing; this
//! is how the generated kernels' indexing, reductions, vector accesses and launch shapes are
//! checked against the CPU executor before (and besides) a GPU run.
//!
//! What it finds: wrong results (compared by the caller), reads and writes past the end of
//! an allocation, a barrier or shuffle not reached by every thread of a block, block or
//! grid shapes the driver would refuse, cuBLAS calls cuBLAS would refuse, misaligned vector
//! accesses, signed overflow in 32-bit index arithmetic and out-of-range register-array
//! indices (UBSan). Races between threads that need no barrier on the device show up as a
//! difference between `EmuOptions::reverse` and forward runs. What it cannot find: timing,
//! occupancy, register or shared-memory limits, and ulp differences of the device's maths.
//! What it counts, for the tests (`run_counted`): the key tiles each attention kernel
//! computes (`TC_KEY_TILE()` in its code, empty on the device), so that skipping masked
//! tiles is seen at run time, not only in the emitted text.

use super::executor::gather;
use super::nvrtc::fnv;
use super::place::{check_data, gemm_offsets, place, Allocation};
use crate::tensor::HostTensor;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tc_compiler::codegen::{CudaKernel, GemmCall, Launch, PRELUDE_PORTABLE};
use tc_compiler::ir::DType;
use tc_compiler::schedule::{BufferId, Plan};

/// The emulation runtime every emulated program starts with.
pub const EMU_RUNTIME: &str = include_str!("emu_runtime.hpp");

/// Flags of every emulated compile: C++17, IEEE maths as NVRTC is asked for (no
/// contraction), UBSan stopping at the first finding.
const CXX_FLAGS: &[&str] = &[
    "-std=c++17",
    "-O1",
    "-w",
    "-fno-strict-aliasing",
    "-ffp-contract=off",
    "-fsanitize=undefined",
    "-fno-sanitize-recover=undefined",
];

/// Options of an emulated run.
#[derive(Clone, Debug)]
pub struct EmuOptions {
    /// Run the blocks of every grid, and the threads of every block between two barriers,
    /// last first.
    pub reverse: bool,
    /// Give up on a run after this long.
    pub timeout: Duration,
}

impl Default for EmuOptions {
    fn default() -> Self {
        EmuOptions {
            reverse: false,
            timeout: Duration::from_secs(300),
        }
    }
}

/// Why an emulated run did not produce outputs.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    #[error("no host C++ compiler for the CUDA emulation: {0}")]
    NoCompiler(String),
    #[error("the host C++ compiler rejected the emulated program {source_path}:\n{log}")]
    Compile { log: String, source_path: String },
    #[error("the emulated run of {source_path} failed:\n{log}")]
    Run { log: String, source_path: String },
    #[error("CUDA emulation: {0}")]
    Io(String),
    #[error("bad data for the emulated run: {0}")]
    Data(String),
    /// A kernel met an index out of range (its check array said so after the run): an
    /// error in the data, as the executor reports it.
    #[error("{0}")]
    IndexOutOfRange(String),
}

fn io(what: &str, path: &Path, e: std::io::Error) -> EmuError {
    EmuError::Io(format!("{what} {}: {e}", path.display()))
}

/// The host C++ compiler: `$TC_EMU_CXX`, else the first of `g++`, `c++`, `clang++` that
/// answers `--version`.
pub fn compiler() -> Result<String, EmuError> {
    let candidates: Vec<String> = match std::env::var("TC_EMU_CXX") {
        Ok(c) if !c.is_empty() => vec![c],
        _ => ["g++", "c++", "clang++"].map(String::from).to_vec(),
    };
    for c in &candidates {
        let ok = Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(c.clone());
        }
    }
    Err(EmuError::NoCompiler(format!(
        "none of {} runs (set TC_EMU_CXX)",
        candidates.join(", ")
    )))
}

/// A name safe inside a C string literal and a comment.
fn c_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Index of an allocation in the program's table: the arena, the inputs, the params.
fn alloc_index(plan: &Plan, a: Allocation) -> usize {
    match a {
        Allocation::Arena => 0,
        Allocation::Input(i) => 1 + i,
        Allocation::Param(i) => 1 + plan.inputs.len() + i,
    }
}

/// `tc_allocs[i].base + offset`, the address of `id`'s first element plus `extra` bytes.
fn address(plan: &Plan, id: BufferId, extra: u64) -> String {
    let (a, offset) = place(plan, id);
    format!(
        "tc_allocs[{}].base + {}",
        alloc_index(plan, a),
        offset + extra
    )
}

/// The emulated GEMM's operand type code (products are of float dtypes only; the integral
/// dtypes have codes so the table is total, and the GEMM refuses them).
fn type_code(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::I32 => 3,
        DType::I64 => 4,
        DType::Bool => 5,
    }
}

/// The `N` of `__launch_bounds__(N)` of function `name` in a kernel's source (0: none).
fn launch_bound(source: &str, name: &str) -> u32 {
    source
        .split("__launch_bounds__(")
        .skip(1)
        .find_map(|rest| {
            let (n, after) = rest.split_once(')')?;
            after
                .trim_start()
                .starts_with(&format!("{name}("))
                .then(|| n.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// One `tc_launch` statement of function `name` over `grid` and `block`.
fn launch_line(
    s: &mut String,
    args: &[String],
    name: &str,
    grid: &[u32; 3],
    block: &[u32; 3],
    shared_bytes: u32,
    bound: u32,
) {
    let _ = writeln!(
        s,
        "    {{\n        void* a[] = {{{}}};\n        tc_launch(\"{}\", tc_thunk_{}, {}, {}, {}, {}, {}, {}, {}, {}, a);\n    }}",
        args.join(", "),
        name,
        name,
        grid[0],
        grid[1],
        grid[2],
        block[0],
        block[1],
        block[2],
        shared_bytes,
        bound
    );
}

fn gemm_lines(out: &mut String, plan: &Plan, call: &GemmCall) {
    // `beta = 1`: C holds the residual first, copied unless C is in place of it.
    if let Some(x) = call.accumulate {
        let _ = writeln!(
            out,
            "    tc_residual({}, {}, {}ULL, {}ULL);",
            address(plan, x, 0),
            address(plan, call.c, 0),
            plan.buffer(x).bytes,
            plan.buffer(call.c).bytes,
        );
    }
    for [oa, ob, oc] in gemm_offsets(call) {
        let _ = writeln!(
            out,
            "    tc_gemm({}, {}, {}, {}, {}, {}, {}, {}, {}LL, {}, {}, {}, {}LL, {}, {}, {}, {}LL, {}, {});",
            call.trans_a as u32,
            call.trans_b as u32,
            call.m,
            call.n,
            call.k,
            address(plan, call.a, oa),
            type_code(call.a_type),
            call.lda,
            call.stride_a,
            address(plan, call.b, ob),
            type_code(call.b_type),
            call.ldb,
            call.stride_b,
            address(plan, call.c, oc),
            type_code(call.c_type),
            call.ldc,
            call.stride_c,
            call.batch_count,
            u8::from(call.accumulate.is_some()),
        );
    }
}

/// The whole emulated program for `kernels` (as `codegen::emit_kernels` gives them for
/// `plan`, possibly altered by a test): the runtime, the portable prelude, every kernel,
/// the allocation table, the launch sequence and `main`.
pub fn program_source(plan: &Plan, kernels: &[CudaKernel]) -> String {
    let mut s = String::new();
    s.push_str(EMU_RUNTIME);
    s.push('\n');
    s.push_str(PRELUDE_PORTABLE);
    for k in kernels.iter().filter(|k| !k.source.is_empty()) {
        s.push('\n');
        s.push_str(&poison_shared(&k.source));
    }
    s.push_str("\n// ---- the plan\n");
    for k in kernels.iter().filter(|k| !k.source.is_empty()) {
        let _ = writeln!(
            s,
            "static void tc_thunk_{0}(void** a) {{ tc_call({0}, a); }}",
            k.name
        );
        if let Launch::Split { fold, .. } = &k.launch {
            let _ = writeln!(
                s,
                "static void tc_thunk_{0}(void** a) {{ tc_call({0}, a); }}",
                fold
            );
        }
    }
    s.push_str("static TcAlloc tc_allocs[] = {\n");
    let _ = writeln!(
        s,
        "    {{\"the arena\", {}ULL, nullptr, nullptr}},",
        plan.arena_bytes
    );
    for (what, ids) in [("input", &plan.inputs), ("param", &plan.params)] {
        for id in ids.iter() {
            let b = plan.buffer(*id);
            let _ = writeln!(
                s,
                "    {{\"{what} {}\", {}ULL, nullptr, nullptr}},",
                c_name(&b.name),
                b.bytes
            );
        }
    }
    s.push_str("};\n\nstatic void tc_program() {\n");
    for k in kernels {
        match &k.launch {
            Launch::Grid {
                grid,
                block,
                shared_bytes,
            } => {
                let args: Vec<String> = k.params.iter().map(|b| address(plan, *b, 0)).collect();
                let bound = launch_bound(&k.source, &k.name);
                launch_line(&mut s, &args, &k.name, grid, block, *shared_bytes, bound);
            }
            Launch::Split {
                grid,
                block,
                fold,
                fold_grid,
                fold_block,
            } => {
                let args: Vec<String> = k.params.iter().map(|b| address(plan, *b, 0)).collect();
                let bound = launch_bound(&k.source, &k.name);
                launch_line(&mut s, &args, &k.name, grid, block, 0, bound);
                let bound = launch_bound(&k.source, fold);
                launch_line(&mut s, &args, fold, fold_grid, fold_block, 0, bound);
            }
            Launch::Cublas(call) => gemm_lines(&mut s, plan, call),
        }
    }
    s.push_str("}\n\nint main(int argc, char** argv) {\n");
    s.push_str("    if (argc != 2) return 2;\n");
    s.push_str("    const int count = sizeof tc_allocs / sizeof tc_allocs[0];\n");
    s.push_str("    tc_start(tc_allocs, count);\n");
    s.push_str("    char name[64];\n");
    s.push_str("    for (int i = 1; i < count; ++i) {\n");
    s.push_str("        snprintf(name, sizeof name, \"alloc%d.bin\", i);\n");
    s.push_str("        tc_read_file(argv[1], name, tc_allocs[i].base, tc_allocs[i].bytes);\n");
    s.push_str("    }\n    tc_program();\n    tc_write_counts(argv[1]);\n");
    for (i, k) in kernels.iter().enumerate() {
        if let Some(c) = k.checks.first() {
            let _ = writeln!(
                s,
                "    tc_write_file(argv[1], \"check{i}.bin\", (const unsigned char*){0}, sizeof {0});",
                c.symbol
            );
        }
    }
    for (j, out) in plan.outputs.iter().enumerate() {
        let _ = writeln!(
            s,
            "    tc_write_file(argv[1], \"out{j}.bin\", {}, {}ULL);",
            address(plan, out.buffer, 0),
            plan.buffer(out.buffer).bytes
        );
    }
    s.push_str("    return 0;\n}\n");
    s
}

/// `source` with a `tc_poison_shared` call after each `__shared__ T name[...];` line: shared
/// memory starts each block as NaN bytes, as undefined as on the device.
fn poison_shared(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        out.push_str(line);
        out.push('\n');
        let t = line.trim();
        let name = t
            .strip_prefix("__shared__ ")
            .and_then(|rest| rest.split('[').next())
            .and_then(|decl| decl.split_whitespace().last());
        if let Some(name) = name.filter(|_| t.ends_with(';')) {
            let _ = writeln!(
                out,
                "{{ static unsigned long long tc_epoch; tc_poison_shared({name}, sizeof {name}, &tc_epoch); }}"
            );
        }
    }
    out
}

/// A fresh, empty folder under the system's temporary folder.
fn fresh_dir(prefix: &str) -> Result<PathBuf, EmuError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
    Ok(dir)
}

/// Compiles `source` once per distinct text (a binary cached under the temporary folder);
/// returns the binary and the saved source.
fn build(source: &str) -> Result<(PathBuf, PathBuf), EmuError> {
    let cxx = compiler()?;
    let mut key = String::from(source);
    key.push_str(&cxx);
    key.push_str(&CXX_FLAGS.join(" "));
    let tag = format!(
        "{:016x}{:016x}",
        fnv(key.as_bytes(), 1),
        fnv(key.as_bytes(), 2)
    );
    let dir = std::env::temp_dir().join("tc-emu-cache");
    std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
    let src = dir.join(format!("{tag}.cpp"));
    let bin = dir.join(format!("{tag}.bin"));
    if bin.is_file() && src.is_file() {
        return Ok((bin, src));
    }
    // Build under unique names, then rename: parallel tests may build the same program.
    let work = fresh_dir("tc-emu-build")?;
    let (wsrc, wbin) = (work.join("program.cpp"), work.join("program.bin"));
    std::fs::write(&wsrc, source).map_err(|e| io("cannot write", &wsrc, e))?;
    let out = Command::new(&cxx)
        .args(CXX_FLAGS)
        .arg("-o")
        .arg(&wbin)
        .arg(&wsrc)
        .output()
        .map_err(|e| EmuError::NoCompiler(format!("{cxx}: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::rename(&wsrc, &src);
        let _ = std::fs::remove_dir_all(&work);
        return Err(EmuError::Compile {
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
            source_path: src.display().to_string(),
        });
    }
    std::fs::rename(&wsrc, &src).map_err(|e| io("cannot move", &wsrc, e))?;
    std::fs::rename(&wbin, &bin).map_err(|e| io("cannot move", &wbin, e))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok((bin, src))
}

/// An emulated run: the outputs, and what the kernels counted.
#[derive(Clone, Debug)]
pub struct EmuRun {
    /// The plan's outputs, gathered through their layouts as the executor does.
    pub outputs: Vec<HostTensor>,
    /// Key tiles each attention kernel computed (`TC_KEY_TILE()`, once per block and
    /// tile), by kernel name; kernels that computed none are absent.
    pub key_tiles: BTreeMap<String, u64>,
}

/// Runs `kernels` (the plan's, from `codegen::emit_kernels`) over `plan`'s allocations on
/// the host: `inputs` and `params` by declaration index, as `cuda::run` takes them. Returns
/// the outputs, gathered through their layouts as the executor does.
pub fn run(
    plan: &Plan,
    kernels: &[CudaKernel],
    inputs: &[HostTensor],
    params: &[HostTensor],
    opts: &EmuOptions,
) -> Result<Vec<HostTensor>, EmuError> {
    run_counted(plan, kernels, inputs, params, opts).map(|r| r.outputs)
}

/// `run`, with what the kernels counted (`EmuRun::key_tiles`).
pub fn run_counted(
    plan: &Plan,
    kernels: &[CudaKernel],
    inputs: &[HostTensor],
    params: &[HostTensor],
    opts: &EmuOptions,
) -> Result<EmuRun, EmuError> {
    check_data(plan, &plan.inputs, inputs, "input").map_err(EmuError::Data)?;
    check_data(plan, &plan.params, params, "param").map_err(EmuError::Data)?;
    let (bin, src) = build(&program_source(plan, kernels))?;
    let dir = fresh_dir("tc-emu-run")?;
    let result = run_in(plan, kernels, &bin, &src, &dir, inputs, params, opts);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    plan: &Plan,
    kernels: &[CudaKernel],
    bin: &Path,
    src: &Path,
    dir: &Path,
    inputs: &[HostTensor],
    params: &[HostTensor],
    opts: &EmuOptions,
) -> Result<EmuRun, EmuError> {
    for (i, t) in inputs.iter().chain(params).enumerate() {
        let p = dir.join(format!("alloc{}.bin", i + 1));
        std::fs::write(&p, &t.bytes).map_err(|e| io("cannot write", &p, e))?;
    }
    let log_path = dir.join("stderr.txt");
    let log = std::fs::File::create(&log_path).map_err(|e| io("cannot create", &log_path, e))?;
    let mut child = Command::new(bin)
        .arg(dir)
        .env(
            "TC_EMU_ORDER",
            if opts.reverse { "reverse" } else { "forward" },
        )
        .env(
            "UBSAN_OPTIONS",
            "halt_on_error=1:abort_on_error=1:print_stacktrace=0",
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| io("cannot start", bin, e))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > opts.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(EmuError::Run {
                    log: format!("no result after {:?}: killed", opts.timeout),
                    source_path: src.display().to_string(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(io("cannot wait for", bin, e)),
        }
    };
    if !status.success() {
        let mut log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.trim().is_empty() {
            log = format!("{status} with nothing on stderr");
        }
        return Err(EmuError::Run {
            log,
            source_path: src.display().to_string(),
        });
    }
    // The kernels' index checks, read back as the executor reads them after the launches.
    for (i, k) in kernels.iter().enumerate() {
        if k.checks.is_empty() {
            continue;
        }
        let p = dir.join(format!("check{i}.bin"));
        let raw = std::fs::read(&p).map_err(|e| io("cannot read", &p, e))?;
        let values: Vec<i64> = raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if let Some(msg) = tc_compiler::codegen::index::first_error(&k.checks, &values) {
            return Err(EmuError::IndexOutOfRange(msg));
        }
    }
    let outputs = plan
        .outputs
        .iter()
        .enumerate()
        .map(|(j, out)| {
            let p = dir.join(format!("out{j}.bin"));
            let raw = std::fs::read(&p).map_err(|e| io("cannot read", &p, e))?;
            gather(out, &raw).map_err(|e| EmuError::Data(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let p = dir.join("key_tiles.txt");
    let text = std::fs::read_to_string(&p).map_err(|e| io("cannot read", &p, e))?;
    let mut key_tiles = BTreeMap::new();
    for line in text.lines() {
        let count = line
            .split_once(' ')
            .and_then(|(k, n)| Some((k.to_string(), n.parse::<u64>().ok()?)));
        let (kernel, n) =
            count.ok_or_else(|| EmuError::Data(format!("{}: bad line `{line}`", p.display())))?;
        key_tiles.insert(kernel, n);
    }
    Ok(EmuRun { outputs, key_tiles })
}
