//! NVRTC: finding the library, compiling the generated CUDA C to a CUBIN for one GPU
//! architecture, and the on-disk cache of compiled code keyed by (source, options,
//! NVRTC version, arch). Works without a GPU (the compile test uses it).

use super::CudaError;
use cudarc::nvrtc::sys;
use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Options every tc kernel is compiled with under the default `Maths::Exact`: no FMA
/// contraction, IEEE division and square root, denormals kept, C++17.
pub const NVRTC_OPTIONS: &[&str] = &[
    "--std=c++17",
    "--fmad=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
];

/// The options of `Maths::Fast` (`tc run --fast-math`): what torch.compile's Triton kernels
/// do on sm_90 — a multiply and an add may fuse into one FMA, `/` is `div.full.f32` (within
/// 2 ulp over the full range) and `sqrt` is `sqrt.approx.f32` (NVIDIA: 1 ulp on sm_52 and
/// later). Denormals are kept and every maths function (`expf`, `tanhf`, …) is the same
/// as under `Exact`: this is not nvcc's `--use_fast_math`, whose `__expf` and `__sinf` lose
/// accuracy over most of their range.
pub const FAST_MATH_OPTIONS: &[&str] = &[
    "--std=c++17",
    "--fmad=true",
    "--prec-div=false",
    "--prec-sqrt=false",
    "--ftz=false",
];

/// How generated kernels round their floating-point arithmetic on the GPU. The CPU
/// executor's maths is the same under both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Maths {
    /// Every op rounds on its own; `/` and `sqrt` are correctly rounded (`NVRTC_OPTIONS`).
    #[default]
    Exact,
    /// Contraction into FMAs, approximate `/` and `sqrt` (`FAST_MATH_OPTIONS`).
    Fast,
}

impl Maths {
    /// NVRTC's options for this mode (the architecture and any extra options come after).
    pub fn options(self) -> &'static [&'static str] {
        match self {
            Maths::Exact => NVRTC_OPTIONS,
            Maths::Fast => FAST_MATH_OPTIONS,
        }
    }
}

/// Where NVRTC was loaded from, once found.
static PRELOADED: OnceLock<PathBuf> = OnceLock::new();

/// Loads `libnvrtc` from an explicit file (e.g. a pip wheel's `nvidia/cu13/lib`) so that
/// cudarc's later lookup by name finds it already loaded. Also loads the builtins library
/// beside it. Keeps the libraries loaded for the life of the process.
pub fn preload_nvrtc(lib: &Path) -> Result<(), CudaError> {
    if PRELOADED.get().is_some() {
        return Ok(());
    }
    if let Some(dir) = lib.parent() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("libnvrtc-builtins.so") {
                    // SAFETY: loading a shared library runs its initialisers; NVIDIA's
                    // builtins library has none with preconditions.
                    if let Ok(l) = unsafe { libloading::Library::new(e.path()) } {
                        std::mem::forget(l);
                    }
                }
            }
        }
    }
    // SAFETY: as above, for libnvrtc itself.
    let l = unsafe { libloading::Library::new(lib) }.map_err(|e| CudaError::NoLibrary {
        library: "NVRTC",
        detail: format!("{}: {e}", lib.display()),
    })?;
    std::mem::forget(l);
    let _ = PRELOADED.set(lib.to_path_buf());
    Ok(())
}

/// Candidate NVRTC files outside the loader's search path: `$TC_NVRTC_LIB`, the CUDA
/// toolkit's usual folders.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("TC_NVRTC_LIB") {
        out.push(PathBuf::from(p));
    }
    for dir in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
    ] {
        for name in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
            out.push(Path::new(dir).join(name));
        }
    }
    out
}

/// Whether NVRTC can be used, loading it from a known folder if the loader cannot find it.
pub fn nvrtc_available() -> Result<(), CudaError> {
    let found = || super::keep_if_present(sys::is_culib_present, sys::culib);
    if found() {
        return Ok(());
    }
    for c in candidates() {
        if c.is_file() && preload_nvrtc(&c).is_ok() && found() {
            return Ok(());
        }
    }
    Err(CudaError::NoLibrary {
        library: "NVRTC",
        detail:
            "libnvrtc.so not found on the loader path, in $TC_NVRTC_LIB or /usr/local/cuda \
                 (install the CUDA toolkit or `pip install nvidia-cuda-nvrtc` and set TC_NVRTC_LIB)"
                .into(),
    })
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    nvrtc_available()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::Nvrtc(format!("{e:?}")))?;
    Ok((major, minor))
}

/// The result of one compilation.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Device code for `arch` (a CUBIN), ready for `cuModuleLoadData`.
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings), possibly empty.
    pub log: String,
    /// True when the CUBIN came from the disk cache.
    pub cached: bool,
    /// Wall time spent compiling (zero when cached).
    pub compile_seconds: f64,
}

fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: `prog` is a live program; NVRTC writes at most `size` bytes.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog, &mut size)
            .result()
            .is_err()
            || size == 0
        {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char)
            .result()
            .is_err()
        {
            return String::new();
        }
        String::from_utf8_lossy(&buf)
            .trim_end_matches('\0')
            .trim()
            .to_string()
    }
}

/// Writes `source` to a file in the temp dir for an error message; returns its path.
fn dump_source(source: &str, arch: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "tc-nvrtc-failed-{arch}-{:016x}.cu",
        fnv(source.as_bytes(), 0)
    ));
    match std::fs::write(&path, source) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(could not write the source to {}: {e})", path.display()),
    }
}

/// Compiles `source` to a CUBIN for `arch` (`sm_90`) with `maths`'s options plus `extra`.
/// No cache: see `compile_cached`.
pub fn compile(
    source: &str,
    arch: &str,
    maths: Maths,
    extra: &[String],
) -> Result<Compiled, CudaError> {
    nvrtc_available()?;
    let start = std::time::Instant::now();
    let src =
        CString::new(source).map_err(|_| CudaError::Nvrtc("source contains a NUL byte".into()))?;
    let name =
        CString::new("tc_kernels.cu").map_err(|_| CudaError::Nvrtc("bad program name".into()))?;
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&name))
        .map_err(|e| CudaError::Nvrtc(format!("{e:?}")))?;
    let mut opts: Vec<String> = maths.options().iter().map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={arch}"));
    opts.extend(extra.iter().cloned());
    // SAFETY: `prog` was just created and is destroyed below, on every path.
    let compiled = unsafe { cudarc::nvrtc::result::compile_program(prog, &opts) };
    let log = program_log(prog);
    let result = match compiled {
        Err(e) => Err(CudaError::Compile {
            arch: arch.to_string(),
            error: format!("{e:?}"),
            log: log.clone(),
            source_path: dump_source(source, arch),
        }),
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: `prog` compiled; the buffer is `size` bytes.
            unsafe {
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| CudaError::Nvrtc(format!("{e:?}")))?;
                let mut cubin = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char)
                    .result()
                    .map_err(|e| CudaError::Nvrtc(format!("{e:?}")))?;
                Ok(Compiled {
                    cubin,
                    log,
                    cached: false,
                    compile_seconds: start.elapsed().as_secs_f64(),
                })
            }
        }
    };
    // SAFETY: `prog` is live and destroyed once.
    let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
    result
}

/// FNV-1a, 64-bit, with a seed folded in: a stable hash for cache keys.
pub(super) fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cache folder: `$XDG_CACHE_HOME/tc`, else `~/.cache/tc`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("tc"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("tc"))
}

/// The cache key of a compilation: 128 bits of (source, options, NVRTC version, arch).
pub fn cache_key(
    source: &str,
    arch: &str,
    maths: Maths,
    extra: &[String],
    version: (i32, i32),
) -> String {
    let mut desc = String::new();
    desc.push_str(&format!("nvrtc {}.{}\narch {arch}\n", version.0, version.1));
    for o in maths
        .options()
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
    {
        desc.push_str(&o);
        desc.push('\n');
    }
    desc.push_str(source);
    format!(
        "{:016x}{:016x}",
        fnv(desc.as_bytes(), 1),
        fnv(desc.as_bytes(), 2)
    )
}

/// `compile`, through the disk cache (`cache_dir()`) unless `no_cache`.
pub fn compile_cached(
    source: &str,
    arch: &str,
    maths: Maths,
    extra: &[String],
    no_cache: bool,
) -> Result<Compiled, CudaError> {
    let dir = if no_cache { None } else { cache_dir() };
    compile_in_cache(source, arch, maths, extra, dir.as_deref())
}

/// `compile`, reading and writing compiled code in `dir` (none: no cache). A cache that
/// cannot be read or written is skipped silently (the compile still happens).
pub fn compile_in_cache(
    source: &str,
    arch: &str,
    maths: Maths,
    extra: &[String],
    dir: Option<&Path>,
) -> Result<Compiled, CudaError> {
    let Some(dir) = dir else {
        return compile(source, arch, maths, extra);
    };
    let version = nvrtc_version()?;
    let key = cache_key(source, arch, maths, extra, version);
    let path = dir.join(format!("{key}.cubin"));
    if let Ok(cubin) = std::fs::read(&path) {
        if !cubin.is_empty() {
            return Ok(Compiled {
                cubin,
                log: String::new(),
                cached: true,
                compile_seconds: 0.0,
            });
        }
    }
    let compiled = compile(source, arch, maths, extra)?;
    let _ = std::fs::create_dir_all(dir);
    // Write to a temporary name first so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, &compiled.cubin).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
    Ok(compiled)
}
