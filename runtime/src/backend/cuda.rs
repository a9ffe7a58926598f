//! The CUDA backend: `crate::cuda`'s executor behind `Backend`. It opens nothing until a
//! plan runs, so it also gives the CUDA plan options (`tc emit`) on a machine without a GPU.

use super::{
    host_memory, Backend, BackendError, Bandwidth, DeviceFree, FreeMemory, Repeats, RunResult,
    Timing,
};
use crate::cuda::{self, CudaError, CudaOptions};
use crate::tensor::HostTensor;
use tc_compiler::report::Peak;
use tc_compiler::{Plan, PlanOptions};

/// Runs plans on one GPU.
#[derive(Clone, Debug, Default)]
pub struct CudaBackend {
    pub options: CudaOptions,
}

impl CudaBackend {
    pub fn new(options: CudaOptions) -> Self {
        CudaBackend { options }
    }
}

impl From<CudaError> for BackendError {
    /// Every failure of a run whose data was checked first is the device's (or, for data
    /// it then rejects, tc's own): exit 3, as the driver's or NVRTC's message says.
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::OutOfMemory { .. } => BackendError::OutOfMemory(e.to_string()),
            CudaError::Internal(_) => BackendError::Internal(e.to_string()),
            CudaError::IndexOutOfRange(_) => BackendError::Data(e.to_string()),
            _ => BackendError::Device(e.to_string()),
        }
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "CUDA"
    }

    fn plan_options(&self, base: PlanOptions) -> PlanOptions {
        // Each matmul kernel gets cuBLAS's workspace in the arena, so it is counted.
        PlanOptions {
            target: tc_compiler::Target::Cuda {
                matmul_workspace: cuda::CUBLAS_WORKSPACE_BYTES,
            },
            ..base
        }
    }

    fn check_data(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        params: &[HostTensor],
    ) -> Result<(), BackendError> {
        cuda::check_data(plan, inputs, params).map_err(BackendError::Data)
    }

    fn free_memory(&self) -> FreeMemory {
        FreeMemory {
            host: host_memory::available(),
            device: Some(match cuda::available_on(self.options.device) {
                // What a run may take: the free memory less what the CUDA libraries keep
                // (`cuda::DEVICE_RESERVE_BYTES`), the bar `cuda::run` itself applies.
                Ok(info) => DeviceFree {
                    name: info.name,
                    bytes: Some(info.free_bytes.saturating_sub(cuda::DEVICE_RESERVE_BYTES)),
                    kept: cuda::DEVICE_RESERVE_BYTES,
                },
                Err(_) => DeviceFree {
                    name: "the GPU".into(),
                    bytes: None,
                    kept: 0,
                },
            }),
        }
    }

    fn run(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        params: &[HostTensor],
    ) -> Result<RunResult, BackendError> {
        self.check_data(plan, inputs, params)?;
        let run = cuda::run(plan, inputs, params, &self.options)?;
        let leaves: u64 = inputs
            .iter()
            .chain(params)
            .map(|t| t.bytes.len() as u64)
            .sum();
        Ok(RunResult {
            outputs: run.outputs,
            measured: Some(Peak {
                with_inputs: run.measured_bytes,
                without_inputs: run.measured_bytes.saturating_sub(leaves),
            }),
            driver_bytes: Some(run.driver_bytes),
        })
    }

    fn bench(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        params: &[HostTensor],
        repeats: Repeats,
    ) -> Result<Timing, BackendError> {
        self.check_data(plan, inputs, params)?;
        let b = cuda::bench(
            plan,
            inputs,
            params,
            &self.options,
            repeats.warmup,
            repeats.runs,
        )?;
        Ok(Timing {
            median_ms: b.median_ms,
            min_ms: b.min_ms,
            runs: b.runs,
            startup_s: Some(b.startup_seconds),
            cpu_seconds_per_run: None,
        })
    }

    fn copy_bandwidth(&self) -> Result<Option<Bandwidth>, BackendError> {
        let bw = cuda::copy_bandwidth(256 << 20, 20, self.options.device)?;
        Ok(Some(Bandwidth {
            device: bw.device.name,
            gbps: bw.gbps,
        }))
    }
}
