//! The CUDA executor: generated kernels compiled by NVRTC (cached on disk), matrix products
//! through cuBLAS, every buffer of the plan in one device arena, kernels on one stream.
//!
//! Every entry point checks that the driver, NVRTC and cuBLAS libraries can be loaded before
//! touching them, so a machine without CUDA gets a `CudaError` saying why, never a panic.
//!
//! The command line and the benchmarks reach it through `backend::CudaBackend` (the plan
//! options with the cuBLAS workspace, the data check, free memory, `run`, `bench`,
//! `copy_bandwidth`), whose errors map to exit code 3; `available()` answers `--device
//! auto`. `tc emit --kernels` needs no device (`tc_compiler::codegen::emit_program`).

#[cfg(feature = "test-support")]
pub mod emu;
pub mod nvrtc;
mod place;

pub use nvrtc::{
    cache_dir, compile, compile_cached, compile_in_cache, nvrtc_available, nvrtc_version,
    preload_nvrtc, Compiled, Maths, FAST_MATH_OPTIONS, NVRTC_OPTIONS,
};

/// Why CUDA could not be used or a run failed. Messages carry the driver's / NVRTC's text.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA unavailable: the {library} library could not be loaded: {detail}")]
    NoLibrary {
        library: &'static str,
        detail: String,
    },
    #[error("CUDA unavailable: no CUDA device found")]
    NoDevice,
    #[error("CUDA driver error in {call}: {message}")]
    Driver { call: &'static str, message: String },
    #[error("cuBLAS error in {call}: {message}")]
    Cublas { call: &'static str, message: String },
    #[error("NVRTC error: {0}")]
    Nvrtc(String),
    #[error("NVRTC failed to compile the generated CUDA C for {arch} ({error}); the source is in {source_path}\n{log}")]
    Compile {
        arch: String,
        error: String,
        log: String,
        source_path: String,
    },
    #[error(
        "the plan needs {needed} bytes of device memory but only {free} bytes are free on {device} \
         (less {reserve} bytes kept for the CUDA libraries' own code and buffers); try smaller \
         dims (--dim NAME=INT)",
        reserve = DEVICE_RESERVE_BYTES
    )]
    OutOfMemory {
        needed: u64,
        free: u64,
        device: String,
    },
    /// A kernel failed on the device (found by the synchronisation after it, `run`).
    #[error("kernel {kernel}: {what} failed on the GPU: {error}")]
    Kernel {
        kernel: String,
        what: String,
        error: Box<CudaError>,
    },
    /// An earlier error of this process left the CUDA context unusable (a kernel's illegal
    /// address, a launch failure): nothing more can run on the device in this process.
    #[error(
        "the CUDA context is unusable after an earlier error in this process ({0}); \
         nothing more can run on the GPU until the process restarts"
    )]
    ContextLost(String),
    #[error("bad data for the CUDA run: {0}")]
    Data(String),
    /// A kernel met an index out of range (`take`, `gather`): an error in the data.
    #[error("{0}")]
    IndexOutOfRange(String),
    /// A plan that does not lower to kernel IR: a bug in tc.
    #[error("internal error (a bug in tc): {0}")]
    Internal(String),
}

mod executor;

/// Whether a CUDA library opens by its usual names (`present`: cudarc's
/// `is_culib_present`, which loads and unloads it each time); if so it stays loaded for the
/// life of the process (`culib`: cudarc's own handle to it), so later checks are cheap.
fn keep_if_present(
    present: unsafe fn() -> bool,
    culib: unsafe fn() -> &'static libloading::Library,
) -> bool {
    // SAFETY: only tries to open the library by its usual names.
    let found = unsafe { present() };
    if found {
        // SAFETY: present, so cudarc's loader finds it.
        unsafe { culib() };
    }
    found
}

/// Device memory a run leaves free beyond its own allocations: what loading tc's module,
/// creating cuBLAS's handle and loading its kernels (lazily, at the first product) may
/// still take after tc's memory check. A plan needing more than the free memory less this
/// is refused before anything is allocated (exit 3), not failed at its first launch.
pub const DEVICE_RESERVE_BYTES: u64 = 256 << 20;

pub use executor::{
    available, available_on, bench, copy_bandwidth, gather, run, CopyBandwidth, CudaBench,
    CudaOptions, CudaRun, DeviceInfo,
};

pub use tc_compiler::codegen::CUBLAS_WORKSPACE_BYTES;

/// Checks the tensors given for a run against the plan's inputs and params (as many, each
/// of its buffer's dtype, shape and size): the check `run` makes first, for
/// `backend::CudaBackend` to make before any device is opened.
pub fn check_data(
    plan: &tc_compiler::Plan,
    inputs: &[crate::tensor::HostTensor],
    params: &[crate::tensor::HostTensor],
) -> Result<(), String> {
    place::check_data(plan, &plan.inputs, inputs, "input")?;
    place::check_data(plan, &plan.params, params, "param")
}
