//! The CUDA executor: generated kernels compiled by NVRTC (cached on disk), matrix products
//! through cuBLAS, every buffer of the plan in one device arena, kernels on one stream.
//!
//! Every entry point checks that the driver, NVRTC and cuBLAS libraries can be loaded before
//! touching them, so a machine without CUDA gets a `CudaError` saying why, never a panic.
//!
//! For the command line:
//! - `--device auto`: `available()` → `Ok(DeviceInfo)` or an error whose text says why not.
//! - `tc run --device cuda`: plan with `tc_compiler::codegen::cuda_plan_options(&opts)` (adds
//!   the cuBLAS workspace), then `run(&plan, &inputs, &params, &CudaOptions::default())`;
//!   `CudaRun::measured_bytes` is the report's `measured` (with inputs; subtract the inputs'
//!   and params' bytes for "without"). Errors map to exit code 3.
//! - `tc bench`: `bench(&plan, …, warmup, runs)` for the planned and the unfused plan;
//!   `copy_bandwidth(bytes, runs, device)` for the memory-bandwidth floor.
//! - `tc emit --kernels`: `tc_compiler::codegen::emit_program(&plan)` (no device needed).

#[cfg(feature = "test-support")]
pub mod emu;
pub mod nvrtc;
mod place;

pub use nvrtc::{
    cache_dir, compile, compile_cached, compile_in_cache, nvrtc_available, nvrtc_version,
    preload_nvrtc, Compiled, NVRTC_OPTIONS,
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
