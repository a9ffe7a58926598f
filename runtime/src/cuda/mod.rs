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
        "the plan needs {needed} bytes of device memory but only {free} bytes are free on {device}; \
         try smaller dims (--dim NAME=INT)"
    )]
    OutOfMemory {
        needed: u64,
        free: u64,
        device: String,
    },
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

pub use executor::{
    available, bench, copy_bandwidth, gather, run, CopyBandwidth, CudaBench, CudaOptions, CudaRun,
    DeviceInfo,
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
