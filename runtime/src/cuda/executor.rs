//! Running a plan on one GPU: open the device, compile (or fetch from the cache) the
//! generated kernels, make exactly one arena allocation plus one per input and param,
//! launch every kernel in order on the default stream, gather the outputs.
//!
//! Driver and cuBLAS calls go through cudarc's raw bindings; every failure becomes a
//! `CudaError` carrying the driver's text.

use super::nvrtc::{compile_cached, nvrtc_available, nvrtc_version, Maths};
use super::place::{check_data, gemm_offsets, place, workspace_window, Allocation};
use super::CudaError;
use crate::tensor::HostTensor;
use cudarc::cublas::sys as cb;
use cudarc::driver::result as dr;
use cudarc::driver::sys as ds;
use std::ffi::{c_void, CString};
use tc_compiler::codegen::{emit_kernels, translation_unit, CudaKernel, GemmCall, Launch};
use tc_compiler::ir::DType;
use tc_compiler::schedule::{BufferId, BufferKind, Plan, PlanOutput};

/// What `available` found.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor) compute capability.
    pub compute_capability: (i32, i32),
    /// The NVRTC target, `sm_90` for compute capability 9.0.
    pub arch: String,
    pub multiprocessors: i32,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// `cuDriverGetVersion`, e.g. 13000.
    pub driver_version: i32,
    /// NVRTC's version, if NVRTC loads.
    pub nvrtc_version: Option<(i32, i32)>,
}

/// Options of a CUDA run.
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// Compile afresh and leave the disk cache alone.
    pub no_cache: bool,
    /// Let cuBLAS use TF32 tensor cores for f32 products (off: exact f32 products).
    pub allow_tf32: bool,
    /// How the generated kernels round (`--fast-math`: `Maths::Fast`).
    pub maths: Maths,
}

/// The result of `run`.
#[derive(Clone, Debug)]
pub struct CudaRun {
    /// The plan's outputs, in order, contiguous.
    pub outputs: Vec<HostTensor>,
    /// Bytes tc allocated on the device: the arena plus every input and param. Equals the
    /// plan's `planned` peak with inputs, by construction; `driver_bytes` checks it.
    pub measured_bytes: u64,
    /// Of which the arena (`plan.arena_bytes`).
    pub arena_bytes: u64,
    /// Drop in the driver's free-memory figure across those allocations (`cuMemGetInfo`
    /// before and after); the driver rounds allocations up to its page size, so this is
    /// `measured_bytes` rounded up per allocation.
    pub driver_bytes: u64,
    /// Free device memory before tc's allocations.
    pub free_before: u64,
    pub device: DeviceInfo,
    /// NVRTC time for this run (0 when the kernels came from the cache).
    pub compile_seconds: f64,
    pub from_cache: bool,
    /// Wall time from opening the device to the outputs on the host.
    pub total_seconds: f64,
    /// GPU time of the kernels (CUDA events around the launches, each kernel waited for
    /// before the next so that a fault names its kernel), milliseconds; `bench` times
    /// without the waits.
    pub gpu_ms: f64,
}

/// The result of `bench`.
#[derive(Clone, Debug)]
pub struct CudaBench {
    /// GPU time of one run of every kernel, milliseconds: median, min, max of `runs`.
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub runs: usize,
    pub warmup: usize,
    pub measured_bytes: u64,
    pub compile_seconds: f64,
    pub from_cache: bool,
    /// Wall time from the start to the first kernel launch (device open, compile or cache
    /// load, allocation, upload): the "start-up" figure.
    pub startup_seconds: f64,
    pub device: DeviceInfo,
}

/// A device-to-device copy, timed: the memory-bandwidth ceiling memory-bound kernels are
/// compared with.
#[derive(Clone, Debug)]
pub struct CopyBandwidth {
    pub bytes: u64,
    pub median_ms: f64,
    /// Bytes read plus bytes written per second, in GB/s (10^9).
    pub gbps: f64,
    pub device: DeviceInfo,
}

fn drv<T>(call: &'static str, r: Result<T, dr::DriverError>) -> Result<T, CudaError> {
    r.map_err(|e| {
        let message = format!("{e:?}");
        if is_sticky(e.0) {
            let _ = CONTEXT_LOST.set(format!("{call}: {message}"));
        }
        CudaError::Driver { call, message }
    })
}

/// The driver errors after which the context is unusable: every later call in the process
/// returns the same error (a kernel's illegal or misaligned address, illegal instruction,
/// device-side assert, launch failure or timeout).
fn is_sticky(code: ds::CUresult) -> bool {
    use ds::CUresult::*;
    matches!(
        code,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_LAUNCH_FAILED
    )
}

/// The first sticky error of this process (`is_sticky`), after which no device is opened
/// again: every later run fails at once with it (`CudaError::ContextLost`) instead of with
/// an unrelated-looking copy of it from its first call.
static CONTEXT_LOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The primary context of each device this process has opened, retained once and kept for
/// the life of the process (`Gpu::open`): releasing it after every run would destroy it
/// (the driver frees a primary context at its last release) and the next run would create
/// it again, a large part of a cached start. Entries: (ordinal, context address).
static CONTEXTS: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

fn blas(call: &'static str, status: cb::cublasStatus_t) -> Result<(), CudaError> {
    if status == cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Ok(());
    }
    // SAFETY: cublasGetStatusString returns a static C string for any status.
    let text = unsafe {
        let p = cb::cublasGetStatusString(status);
        if p.is_null() {
            format!("{status:?}")
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(CudaError::Cublas {
        call,
        message: text,
    })
}

fn driver_present() -> Result<(), CudaError> {
    if super::keep_if_present(ds::is_culib_present, ds::culib) {
        Ok(())
    } else {
        Err(CudaError::NoLibrary {
            library: "CUDA driver",
            detail: "libcuda.so not found (no NVIDIA driver on this machine)".into(),
        })
    }
}

fn cublas_present() -> Result<(), CudaError> {
    let found = || super::keep_if_present(cb::is_culib_present, cb::culib);
    if found() {
        return Ok(());
    }
    // Not on the loader path: load it (and cuBLASLt, which it needs) from the CUDA
    // toolkit's folder so that the lookup by name finds it already loaded.
    for dir in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
    ] {
        let dir = std::path::Path::new(dir);
        for major in ["13", "12"] {
            let lt = dir.join(format!("libcublasLt.so.{major}"));
            let blas = dir.join(format!("libcublas.so.{major}"));
            if lt.is_file() && blas.is_file() {
                // SAFETY: loading NVIDIA's libraries runs their initialisers, which have no
                // preconditions; they stay loaded for the life of the process.
                unsafe {
                    if let (Ok(a), Ok(b)) = (
                        libloading::Library::new(&lt),
                        libloading::Library::new(&blas),
                    ) {
                        std::mem::forget(a);
                        std::mem::forget(b);
                    }
                }
                if found() {
                    return Ok(());
                }
            }
        }
    }
    Err(CudaError::NoLibrary {
        library: "cuBLAS",
        detail: "libcublas.so not found on the loader path or in /usr/local/cuda/lib64".into(),
    })
}

/// An open device: its primary context (retained once a process, `CONTEXTS`), current on
/// this thread.
struct Gpu {
    info: DeviceInfo,
}

impl Gpu {
    fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        driver_present()?;
        if let Some(first) = CONTEXT_LOST.get() {
            return Err(CudaError::ContextLost(first.clone()));
        }
        drv("cuInit", dr::init())?;
        let count = drv("cuDeviceGetCount", dr::device::get_count())?;
        if count <= 0 {
            return Err(CudaError::NoDevice);
        }
        if ordinal >= count as usize {
            return Err(CudaError::Driver {
                call: "cuDeviceGet",
                message: format!("device {ordinal} requested but only {count} found"),
            });
        }
        let dev = drv("cuDeviceGet", dr::device::get(ordinal as i32))?;
        let ctx = {
            let mut contexts = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
            match contexts.iter().find(|(o, _)| *o == ordinal) {
                Some(&(_, ctx)) => ctx as ds::CUcontext,
                None => {
                    // SAFETY: `dev` is a valid device; the context stays retained for the
                    // life of the process (`CONTEXTS`).
                    let ctx = drv("cuDevicePrimaryCtxRetain", unsafe {
                        dr::primary_ctx::retain(dev)
                    })?;
                    contexts.push((ordinal, ctx as usize));
                    ctx
                }
            }
        };
        // SAFETY: `ctx` is retained for the life of the process.
        drv("cuCtxSetCurrent", unsafe { dr::ctx::set_current(ctx) })?;
        let attr = |a: ds::CUdevice_attribute| -> Result<i32, CudaError> {
            // SAFETY: `dev` is a valid device.
            drv("cuDeviceGetAttribute", unsafe {
                dr::device::get_attribute(dev, a)
            })
        };
        let major = attr(ds::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(ds::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let multiprocessors =
            attr(ds::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let name = drv("cuDeviceGetName", dr::device::get_name(dev))?;
        let (free, total) = drv("cuMemGetInfo", dr::mem_get_info())?;
        let mut driver_version = 0;
        // SAFETY: a valid out-pointer.
        drv(
            "cuDriverGetVersion",
            unsafe { ds::cuDriverGetVersion(&mut driver_version) }.result(),
        )?;
        let info = DeviceInfo {
            ordinal,
            name,
            compute_capability: (major, minor),
            arch: format!("sm_{major}{minor}"),
            multiprocessors,
            total_bytes: total as u64,
            free_bytes: free as u64,
            driver_version,
            nvrtc_version: nvrtc_version().ok(),
        };
        if driver_version / 1000 < REQUIRED_DRIVER_MAJOR {
            return Err(CudaError::Driver {
                call: "cuDriverGetVersion",
                message: format!(
                    "driver version {}.{} is older than CUDA {REQUIRED_DRIVER_MAJOR}, which tc's \
                     kernels and timing need (update the NVIDIA driver)",
                    driver_version / 1000,
                    driver_version % 1000 / 10
                ),
            });
        }
        Ok(Gpu { info })
    }
}

/// The oldest driver (CUDA major version) tc runs on: the version cudarc's bindings are
/// built for (`cuda-13000`), whose calls (`cuEventElapsedTime_v2`) an older driver lacks,
/// and the NVRTC 13 CUBINs need it anyway. Refused with an error rather than a panic when a
/// binding is first looked up.
const REQUIRED_DRIVER_MAJOR: i32 = 13;

/// One device allocation, freed on drop.
struct DeviceBuffer {
    ptr: ds::CUdeviceptr,
}

impl DeviceBuffer {
    fn new(bytes: u64) -> Result<DeviceBuffer, CudaError> {
        drv("cuMemAlloc", Self::try_new(bytes))
    }

    /// `new`, with the driver's own error (`CUDA_ERROR_OUT_OF_MEMORY` to tell apart).
    fn try_new(bytes: u64) -> Result<DeviceBuffer, dr::DriverError> {
        // SAFETY: plain device allocation of `bytes` (> 0) bytes; freed in Drop.
        let ptr = unsafe { dr::malloc_sync(bytes as usize) }?;
        Ok(DeviceBuffer { ptr })
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from cuMemAlloc and is freed once.
        let _ = unsafe { dr::free_sync(self.ptr) };
    }
}

struct Module {
    module: ds::CUmodule,
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: loaded once in `prepare`, unloaded once.
        let _ = unsafe { dr::module::unload(self.module) };
    }
}

struct Blas {
    handle: cb::cublasHandle_t,
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created once in `prepare`, destroyed once.
        let _ = unsafe { cb::cublasDestroy_v2(self.handle) };
    }
}

/// Everything ready to launch: compiled kernels, allocations, uploaded data. Field order
/// is drop order: buffers, module and handle go before the context.
struct Prepared {
    kernels: Vec<CudaKernel>,
    functions: Vec<Option<ds::CUfunction>>,
    /// The second function of each split column reduction (`Launch::Split`'s `fold`).
    folds: Vec<Option<ds::CUfunction>>,
    arena: Option<DeviceBuffer>,
    inputs: Vec<Option<DeviceBuffer>>,
    params: Vec<Option<DeviceBuffer>>,
    blas: Option<Blas>,
    _module: Option<Module>,
    measured_bytes: u64,
    driver_bytes: u64,
    free_before: u64,
    compile_seconds: f64,
    from_cache: bool,
    tf32: bool,
    gpu: Gpu,
}

fn prepare(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
    opts: &CudaOptions,
) -> Result<Prepared, CudaError> {
    check_data(plan, &plan.inputs, inputs, "input").map_err(CudaError::Data)?;
    check_data(plan, &plan.params, params, "param").map_err(CudaError::Data)?;
    if let Some(b) = plan.buffers.iter().find(|b| b.kind == BufferKind::Tile) {
        return Err(CudaError::Internal(format!(
            "a plan for the CPU reached the CUDA executor: the product {} is never stored whole",
            b.name
        )));
    }
    let gpu = Gpu::open(opts.device)?;
    let kernels = emit_kernels(plan).map_err(|e| CudaError::Internal(e.to_string()))?;

    // Compile (or load from the cache) every CUDA C kernel as one module.
    let mut functions = vec![None; kernels.len()];
    let mut folds = vec![None; kernels.len()];
    let (mut module, mut compile_seconds, mut from_cache) = (None, 0.0, false);
    if kernels.iter().any(|k| !k.source.is_empty()) {
        nvrtc_available()?;
        let unit = translation_unit(&kernels);
        let compiled = compile_cached(&unit, &gpu.info.arch, opts.maths, &[], opts.no_cache)?;
        compile_seconds = compiled.compile_seconds;
        from_cache = compiled.cached;
        // SAFETY: `cubin` is a complete CUBIN image produced by NVRTC for this arch.
        let m = drv("cuModuleLoadData", unsafe {
            dr::module::load_data(compiled.cubin.as_ptr() as *const c_void)
        })?;
        let m = Module { module: m };
        for (i, k) in kernels.iter().enumerate() {
            if !k.source.is_empty() {
                let name = CString::new(k.name.clone())
                    .map_err(|_| CudaError::Nvrtc("kernel name has a NUL".into()))?;
                // SAFETY: the module is loaded; `name` is an extern "C" symbol in it.
                functions[i] = Some(drv("cuModuleGetFunction", unsafe {
                    dr::module::get_function(m.module, name)
                })?);
            }
            if let Launch::Split { fold, .. } = &k.launch {
                let name = CString::new(fold.clone())
                    .map_err(|_| CudaError::Nvrtc("kernel name has a NUL".into()))?;
                // SAFETY: the module is loaded; `name` is an extern "C" symbol in it.
                folds[i] = Some(drv("cuModuleGetFunction", unsafe {
                    dr::module::get_function(m.module, name)
                })?);
            }
        }
        module = Some(m);
    }
    let blas_handle = if kernels
        .iter()
        .any(|k| matches!(k.launch, Launch::Cublas(_)))
    {
        cublas_present()?;
        let mut handle: cb::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; destroyed by `Blas`'s Drop.
        blas("cublasCreate", unsafe { cb::cublasCreate_v2(&mut handle) })?;
        let b = Blas { handle };
        // SAFETY: a live handle; the null stream is the legacy default stream.
        blas("cublasSetStream", unsafe {
            cb::cublasSetStream_v2(b.handle, std::ptr::null_mut())
        })?;
        // Without TF32: the default maths with no reduced-precision reductions, so a
        // product with f16/bf16 output sums in f32 and rounds once (cuBLAS may otherwise
        // reduce split-K partial sums in the output type), as the CPU and the emulation do.
        let mode = if opts.allow_tf32 {
            cb::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cb::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
        };
        // SAFETY: a live handle.
        blas("cublasSetMathMode", unsafe {
            cb::cublasSetMathMode(b.handle, mode)
        })?;
        // No hidden workspace: each call gets the plan's Workspace buffer or none. (Should a
        // cuBLAS refuse a null workspace, it keeps its default one; only the driver figure,
        // not tc's `measured`, would show that.)
        // SAFETY: a live handle.
        let _ = unsafe { cb::cublasSetWorkspace_v2(b.handle, std::ptr::null_mut(), 0) };
        Some(b)
    } else {
        None
    };

    // Memory: refuse before allocating anything if it cannot fit.
    let data_bytes: u64 = inputs
        .iter()
        .chain(params)
        .map(|t| t.bytes.len() as u64)
        .sum();
    let needed = plan.arena_bytes + data_bytes;
    let (free_before, _) = drv("cuMemGetInfo", dr::mem_get_info())?;
    if needed.saturating_add(super::DEVICE_RESERVE_BYTES) > free_before as u64 {
        return Err(CudaError::OutOfMemory {
            needed,
            free: free_before as u64,
            device: gpu.info.name.clone(),
        });
    }
    // An allocation the driver refuses all the same (memory taken by another process since
    // the check) is the same out-of-memory error.
    let alloc = |bytes: u64| -> Result<Option<DeviceBuffer>, CudaError> {
        if bytes == 0 {
            return Ok(None);
        }
        match DeviceBuffer::try_new(bytes) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.0 == ds::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                Err(CudaError::OutOfMemory {
                    needed,
                    free: free_before as u64,
                    device: gpu.info.name.clone(),
                })
            }
            Err(e) => drv("cuMemAlloc", Err(e)),
        }
    };
    let arena = alloc(plan.arena_bytes)?;
    let mut dev_inputs = Vec::with_capacity(inputs.len());
    for t in inputs {
        dev_inputs.push(alloc(t.bytes.len() as u64)?);
    }
    let mut dev_params = Vec::with_capacity(params.len());
    for t in params {
        dev_params.push(alloc(t.bytes.len() as u64)?);
    }
    let (free_after, _) = drv("cuMemGetInfo", dr::mem_get_info())?;
    for (buf, t) in dev_inputs
        .iter()
        .zip(inputs)
        .chain(dev_params.iter().zip(params))
    {
        if let Some(b) = buf {
            // SAFETY: `b` holds exactly `t.bytes.len()` bytes.
            drv("cuMemcpyHtoD", unsafe {
                dr::memcpy_htod_sync(b.ptr, &t.bytes)
            })?;
        }
    }
    drv("cuCtxSynchronize", dr::ctx::synchronize())?;
    Ok(Prepared {
        kernels,
        functions,
        folds,
        arena,
        inputs: dev_inputs,
        params: dev_params,
        blas: blas_handle,
        _module: module,
        measured_bytes: needed,
        driver_bytes: (free_before as u64).saturating_sub(free_after as u64),
        free_before: free_before as u64,
        compile_seconds,
        from_cache,
        tf32: opts.allow_tf32,
        gpu,
    })
}

impl Prepared {
    /// Device address of a buffer's first element.
    fn ptr(&self, plan: &Plan, id: BufferId) -> Result<ds::CUdeviceptr, CudaError> {
        let base = |x: Option<&Option<DeviceBuffer>>, what: &str, index: usize| {
            x.map(|d| d.as_ref().map(|d| d.ptr).unwrap_or(0))
                .ok_or_else(|| CudaError::Data(format!("{what} {index} missing")))
        };
        let (allocation, offset) = place(plan, id);
        let start = match allocation {
            Allocation::Arena => Ok(self.arena.as_ref().map(|a| a.ptr).unwrap_or(0)),
            Allocation::Input(i) => base(self.inputs.get(i), "input", i),
            Allocation::Param(i) => base(self.params.get(i), "param", i),
        }?;
        Ok(start + offset)
    }

    /// After the launches (synchronised): every kernel's index checks (`codegen::index`), read
    /// back from their `__device__` arrays; the first bad index is an error in the data.
    fn check_indices(&self) -> Result<(), CudaError> {
        let Some(m) = &self._module else {
            return Ok(());
        };
        for k in &self.kernels {
            let Some(c) = k.checks.first() else { continue };
            let name = CString::new(c.symbol.clone())
                .map_err(|_| CudaError::Nvrtc("check symbol has a NUL".into()))?;
            // SAFETY: the module is loaded; the symbol is a `__device__ long long` array.
            let (ptr, bytes) = drv("cuModuleGetGlobal", unsafe {
                dr::module::get_global(m.module, name)
            })?;
            let mut values = vec![0i64; bytes / 8];
            // SAFETY: `values` holds the global's `bytes` bytes (rounded down to whole i64).
            drv("cuMemcpyDtoH", unsafe {
                dr::memcpy_dtoh_sync(&mut values, ptr)
            })?;
            if let Some(msg) = tc_compiler::codegen::index::first_error(&k.checks, &values) {
                return Err(CudaError::IndexOutOfRange(msg));
            }
        }
        Ok(())
    }

    /// Enqueues every kernel of the plan, in order, on the default stream. With `each`,
    /// waits for every kernel before the next, so a fault on the device is reported with
    /// the kernel that made it (`CudaError::Kernel`: its name, ops and source lines).
    fn launch_all(&self, plan: &Plan, each: bool) -> Result<(), CudaError> {
        for (i, k) in self.kernels.iter().enumerate() {
            self.launch(plan, i)?;
            if each {
                drv("cuCtxSynchronize", dr::ctx::synchronize()).map_err(|e| CudaError::Kernel {
                    kernel: k.name.clone(),
                    what: plan
                        .kernels
                        .get(k.kernel_index)
                        .map_or_else(|| "a kernel of the plan".into(), |pk| pk.origin()),
                    error: Box::new(e),
                })?;
            }
        }
        Ok(())
    }

    /// Enqueues the `i`-th kernel (its grid, its split reduction's two grids, or its
    /// cuBLAS call).
    fn launch(&self, plan: &Plan, i: usize) -> Result<(), CudaError> {
        let (k, f, fold) = (&self.kernels[i], &self.functions[i], &self.folds[i]);
        let launch = |f: ds::CUfunction, grid: &[u32; 3], block: &[u32; 3], shared: u32| {
            let mut ptrs: Vec<ds::CUdeviceptr> = k
                .params
                .iter()
                .map(|b| self.ptr(plan, *b))
                .collect::<Result<_, _>>()?;
            let mut args: Vec<*mut c_void> = ptrs
                .iter_mut()
                .map(|p| p as *mut ds::CUdeviceptr as *mut c_void)
                .collect();
            // SAFETY: `f` is from the loaded module; `args` point at one device
            // pointer per kernel parameter, in signature order, alive until the
            // call returns (the driver copies them).
            drv("cuLaunchKernel", unsafe {
                dr::launch_kernel(
                    f,
                    (grid[0], grid[1], grid[2]),
                    (block[0], block[1], block[2]),
                    shared,
                    std::ptr::null_mut(),
                    &mut args,
                )
            })
        };
        match (&k.launch, f) {
            (
                Launch::Grid {
                    grid,
                    block,
                    shared_bytes,
                },
                Some(f),
            ) => launch(*f, grid, block, *shared_bytes)?,
            // Both halves on the default stream: the fold starts after every part.
            (
                Launch::Split {
                    grid,
                    block,
                    fold_grid,
                    fold_block,
                    ..
                },
                Some(f),
            ) => {
                let g = fold.ok_or_else(|| {
                    CudaError::Nvrtc(format!("the fold of kernel {} was not compiled", k.name))
                })?;
                launch(*f, grid, block, 0)?;
                launch(g, fold_grid, fold_block, 0)?;
            }
            (Launch::Cublas(call), _) => self.gemm(plan, call)?,
            (Launch::Grid { .. } | Launch::Split { .. }, None) => {
                return Err(CudaError::Nvrtc(format!(
                    "kernel {} was not compiled",
                    k.name
                )));
            }
        }
        Ok(())
    }

    fn gemm(&self, plan: &Plan, call: &GemmCall) -> Result<(), CudaError> {
        let handle = self
            .blas
            .as_ref()
            .map(|b| b.handle)
            .ok_or(CudaError::Cublas {
                call: "cublasCreate",
                message: "no cuBLAS handle".into(),
            })?;
        let ty = |d: DType| match d {
            DType::F32 => cb::cudaDataType::CUDA_R_32F,
            DType::F16 => cb::cudaDataType::CUDA_R_16F,
            DType::BF16 => cb::cudaDataType::CUDA_R_16BF,
            // The checker makes no integer products.
            DType::I32 => cb::cudaDataType::CUDA_R_32I,
            DType::I64 => cb::cudaDataType::CUDA_R_64I,
            DType::Bool => cb::cudaDataType::CUDA_R_8U,
        };
        let op = |t: bool| {
            if t {
                cb::cublasOperation_t::CUBLAS_OP_T
            } else {
                cb::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let compute = if self.tf32 && call.a_type == DType::F32 {
            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        // cuBLAS wants a 256-byte aligned workspace: use the aligned part of the buffer.
        let (ws_ptr, ws_bytes) = match call.workspace {
            Some(ws) => {
                let (at, bytes) = workspace_window(self.ptr(plan, ws)?, plan.buffer(ws).bytes);
                (at, bytes as usize)
            }
            None => (0, 0),
        };
        // SAFETY: a live handle; the workspace lies inside the arena (or is null, size 0).
        let set = unsafe { cb::cublasSetWorkspace_v2(handle, ws_ptr as *mut c_void, ws_bytes) };
        if ws_bytes > 0 {
            blas("cublasSetWorkspace", set)?;
        }
        let (a, b, c) = (
            self.ptr(plan, call.a)?,
            self.ptr(plan, call.b)?,
            self.ptr(plan, call.c)?,
        );
        // `beta = 1`: C holds the residual `x` first (copied, unless C is in place of it).
        let beta = match call.accumulate {
            Some(x) => {
                let src = self.ptr(plan, x)?;
                let bytes = plan.buffer(call.c).bytes;
                if src != c {
                    if src < c + bytes && c < src + plan.buffer(x).bytes {
                        return Err(CudaError::Internal(format!(
                            "the residual {} overlaps the product {} without being in place",
                            plan.buffer(x).name,
                            plan.buffer(call.c).name
                        )));
                    }
                    // SAFETY: both ranges lie inside their allocations (placed by the plan)
                    // and do not overlap (checked above); ordered on the default stream
                    // before the GEMM.
                    drv("cuMemcpyDtoDAsync", unsafe {
                        dr::memcpy_dtod_async(c, src, bytes as usize, std::ptr::null_mut())
                    })?;
                }
                1.0f32
            }
            None => 0.0f32,
        };
        let alpha = 1.0f32;
        for [oa, ob, oc] in gemm_offsets(call) {
            let (pa, pb, pc) = (a + oa, b + ob, c + oc);
            // SAFETY: pointers and leading dimensions come from `gemm_plan`, which checked
            // every access stays inside the operands' buffers' layouts; alpha/beta are f32
            // host scalars as COMPUTE_32F requires.
            blas("cublasGemmStridedBatchedEx", unsafe {
                cb::cublasGemmStridedBatchedEx(
                    handle,
                    op(call.trans_a),
                    op(call.trans_b),
                    call.m,
                    call.n,
                    call.k,
                    &alpha as *const f32 as *const c_void,
                    pa as *const c_void,
                    ty(call.a_type),
                    call.lda,
                    call.stride_a,
                    pb as *const c_void,
                    ty(call.b_type),
                    call.ldb,
                    call.stride_b,
                    &beta as *const f32 as *const c_void,
                    pc as *mut c_void,
                    ty(call.c_type),
                    call.ldc,
                    call.stride_c,
                    call.batch_count,
                    compute,
                    cb::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
            })?;
        }
        Ok(())
    }

    /// Downloads each output buffer and gathers it through the output's layout.
    fn outputs(&self, plan: &Plan) -> Result<Vec<HostTensor>, CudaError> {
        plan.outputs
            .iter()
            .map(|out| {
                let b = plan.buffer(out.buffer);
                let mut raw = vec![0u8; b.bytes as usize];
                if !raw.is_empty() {
                    let src = self.ptr(plan, out.buffer)?;
                    // SAFETY: `raw` has the buffer's size; `src` is the buffer's address.
                    drv("cuMemcpyDtoH", unsafe {
                        dr::memcpy_dtoh_sync(&mut raw, src)
                    })?;
                }
                gather(out, &raw)
            })
            .collect()
    }
}

/// The contiguous tensor `out` reads from `raw` (its buffer's bytes) through its layout.
pub fn gather(out: &PlanOutput, raw: &[u8]) -> Result<HostTensor, CudaError> {
    let size = out.dtype.size() as usize;
    let numel: u64 = out.shape.iter().product();
    let mut bytes = Vec::with_capacity(numel as usize * size);
    for e in crate::tensor::strided_offsets(out.offset, &out.strides, &out.shape) {
        let at = usize::try_from(e)
            .ok()
            .map(|e| e * size)
            .filter(|&a| a + size <= raw.len())
            .ok_or_else(|| {
                CudaError::Data(format!(
                    "output `{}` reads element {e} outside its buffer",
                    out.name
                ))
            })?;
        bytes.extend_from_slice(&raw[at..at + size]);
    }
    Ok(HostTensor {
        dtype: out.dtype,
        shape: out.shape.clone(),
        bytes,
    })
}

/// Whether tc can run on CUDA here: the driver library, a device, and NVRTC (without which
/// no kernel can be built); says which device, or why not. cuBLAS is checked when a plan
/// first needs it.
pub fn available() -> Result<DeviceInfo, CudaError> {
    available_on(0)
}

/// `available` for device `ordinal` (`CudaOptions::device`).
pub fn available_on(ordinal: usize) -> Result<DeviceInfo, CudaError> {
    let info = Gpu::open(ordinal)?.info.clone();
    nvrtc_available()?;
    Ok(info)
}

/// Events on the default stream, timing GPU work.
struct Timer {
    start: ds::CUevent,
    stop: ds::CUevent,
}

impl Timer {
    fn new() -> Result<Timer, CudaError> {
        let start = drv(
            "cuEventCreate",
            dr::event::create(ds::CUevent_flags::CU_EVENT_DEFAULT),
        )?;
        let stop = drv(
            "cuEventCreate",
            dr::event::create(ds::CUevent_flags::CU_EVENT_DEFAULT),
        )?;
        Ok(Timer { start, stop })
    }

    /// Records `event` (one of this timer's) on the default stream.
    fn record(&self, event: ds::CUevent) -> Result<(), CudaError> {
        // SAFETY: the event is live; the null stream is the legacy default stream.
        drv("cuEventRecord", unsafe {
            dr::event::record(event, std::ptr::null_mut())
        })
    }

    /// Milliseconds between the two events, once `stop` has completed.
    fn elapsed(&self) -> Result<f64, CudaError> {
        // SAFETY: the event is live.
        drv("cuEventSynchronize", unsafe {
            dr::event::synchronize(self.stop)
        })?;
        // SAFETY: both events recorded and complete.
        Ok(drv("cuEventElapsedTime", unsafe {
            dr::event::elapsed(self.start, self.stop)
        })? as f64)
    }

    /// Milliseconds of GPU time `work` enqueues (waited for).
    fn time(&self, work: impl FnOnce() -> Result<(), CudaError>) -> Result<f64, CudaError> {
        self.record(self.start)?;
        work()?;
        self.record(self.stop)?;
        self.elapsed()
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: created once in `new`, destroyed once.
        unsafe {
            let _ = dr::event::destroy(self.start);
            let _ = dr::event::destroy(self.stop);
        }
    }
}

/// Milliseconds of GPU time of each of `runs` calls of `work`, enqueued back to back
/// (an event before and after each, one wait a batch of `TIMED_BATCH`): while the GPU is
/// busy, a run's time is its kernels', not the host's gap before its first launch.
/// `scripts/torch_compare.py` times PyTorch the same way.
fn time_back_to_back(
    runs: usize,
    mut work: impl FnMut() -> Result<(), CudaError>,
) -> Result<Vec<f64>, CudaError> {
    let timers = (0..runs.min(TIMED_BATCH))
        .map(|_| Timer::new())
        .collect::<Result<Vec<_>, _>>()?;
    let mut times = Vec::with_capacity(runs);
    while times.len() < runs {
        let batch = &timers[..(runs - times.len()).min(TIMED_BATCH)];
        for t in batch {
            t.record(t.start)?;
            work()?;
            t.record(t.stop)?;
        }
        drv("cuCtxSynchronize", dr::ctx::synchronize())?;
        for t in batch {
            times.push(t.elapsed()?);
        }
    }
    Ok(times)
}

/// Runs `time_back_to_back` enqueues before it waits (and pairs of events it holds).
const TIMED_BATCH: usize = 64;

/// Runs `plan` on the GPU: `inputs` and `params` by declaration index, as the CPU executor
/// takes them. Returns the outputs and the memory tc really took.
pub fn run(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
    opts: &CudaOptions,
) -> Result<CudaRun, CudaError> {
    let start = std::time::Instant::now();
    let p = prepare(plan, inputs, params, opts)?;
    let timer = Timer::new()?;
    let gpu_ms = timer.time(|| p.launch_all(plan, true))?;
    drv("cuCtxSynchronize", dr::ctx::synchronize())?;
    p.check_indices()?;
    let outputs = p.outputs(plan)?;
    Ok(CudaRun {
        outputs,
        measured_bytes: p.measured_bytes,
        arena_bytes: plan.arena_bytes,
        driver_bytes: p.driver_bytes,
        free_before: p.free_before,
        device: p.gpu.info.clone(),
        compile_seconds: p.compile_seconds,
        from_cache: p.from_cache,
        total_seconds: start.elapsed().as_secs_f64(),
        gpu_ms,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// Times `plan`: `warmup` untimed runs, then `runs` runs each timed with CUDA events;
/// reports the median (and min/max) GPU milliseconds of one whole run.
pub fn bench(
    plan: &Plan,
    inputs: &[HostTensor],
    params: &[HostTensor],
    opts: &CudaOptions,
    warmup: usize,
    runs: usize,
) -> Result<CudaBench, CudaError> {
    let start = std::time::Instant::now();
    let p = prepare(plan, inputs, params, opts)?;
    let startup_seconds = start.elapsed().as_secs_f64();
    for _ in 0..warmup {
        p.launch_all(plan, false)?;
    }
    drv("cuCtxSynchronize", dr::ctx::synchronize())?;
    let mut times = time_back_to_back(runs.max(1), || p.launch_all(plan, false))?;
    p.check_indices()?;
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max_ms = times.iter().copied().fold(0.0, f64::max);
    Ok(CudaBench {
        median_ms: median(&mut times),
        min_ms,
        max_ms,
        runs: runs.max(1),
        warmup,
        measured_bytes: p.measured_bytes,
        compile_seconds: p.compile_seconds,
        from_cache: p.from_cache,
        startup_seconds,
        device: p.gpu.info.clone(),
    })
}

/// Measures device-to-device copy bandwidth with a `bytes`-byte copy (median of `runs`).
pub fn copy_bandwidth(bytes: u64, runs: usize, device: usize) -> Result<CopyBandwidth, CudaError> {
    let gpu = Gpu::open(device)?;
    let (free, _) = drv("cuMemGetInfo", dr::mem_get_info())?;
    if bytes
        .saturating_mul(2)
        .saturating_add(super::DEVICE_RESERVE_BYTES)
        > free as u64
    {
        return Err(CudaError::OutOfMemory {
            needed: bytes * 2,
            free: free as u64,
            device: gpu.info.name.clone(),
        });
    }
    let src = DeviceBuffer::new(bytes)?;
    let dst = DeviceBuffer::new(bytes)?;
    // SAFETY: `src` holds `bytes` bytes.
    drv(
        "cuMemsetD8",
        unsafe { ds::cuMemsetD8_v2(src.ptr, 1, bytes as usize) }.result(),
    )?;
    let copy = || {
        // SAFETY: both buffers hold `bytes` bytes and do not overlap.
        drv(
            "cuMemcpyDtoDAsync",
            unsafe {
                ds::cuMemcpyDtoDAsync_v2(dst.ptr, src.ptr, bytes as usize, std::ptr::null_mut())
            }
            .result(),
        )
    };
    copy()?;
    drv("cuCtxSynchronize", dr::ctx::synchronize())?;
    let mut times = time_back_to_back(runs.max(1), copy)?;
    let median_ms = median(&mut times);
    let gbps = if median_ms > 0.0 {
        2.0 * bytes as f64 / (median_ms * 1e-3) / 1e9
    } else {
        0.0
    };
    Ok(CopyBandwidth {
        bytes,
        median_ms,
        gbps,
        device: gpu.info.clone(),
    })
}
