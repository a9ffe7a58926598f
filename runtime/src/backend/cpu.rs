//! The CPU backend: `crate::cpu`'s executor behind `Backend`, its errors sorted by whose
//! fault they are, timed by the wall clock.

use super::{host_memory, Backend, BackendError, FreeMemory, Repeats, RunResult, Timing};
use crate::cpu::{self, CpuError};
use crate::tensor::HostTensor;
use std::time::Instant;
use tc_compiler::{Plan, PlanOptions};

/// Runs plans on the host, over one arena in host memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl From<CpuError> for BackendError {
    fn from(e: CpuError) -> Self {
        match e {
            CpuError::Count { .. } | CpuError::Mismatch { .. } | CpuError::IndexOutOfRange(_) => {
                BackendError::Data(e.to_string())
            }
            CpuError::ArenaTooLarge(_) => BackendError::OutOfMemory(e.to_string()),
            CpuError::BadPlan(_) => BackendError::Internal(e.to_string()),
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "the CPU"
    }

    fn plan_options(&self, base: PlanOptions) -> PlanOptions {
        // tc's GEMM packs each product's B into the workspace the plan gives it.
        PlanOptions {
            target: tc_compiler::Target::Cpu,
            ..base
        }
    }

    fn check_data(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        params: &[HostTensor],
    ) -> Result<(), BackendError> {
        Ok(cpu::check_data(plan, inputs, params)?)
    }

    fn free_memory(&self) -> FreeMemory {
        FreeMemory {
            host: host_memory::available(),
            device: None,
        }
    }

    fn run(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        params: &[HostTensor],
    ) -> Result<RunResult, BackendError> {
        self.check_data(plan, inputs, params)?;
        Ok(RunResult {
            outputs: cpu::run(plan, inputs, params)?,
            measured: None,
            driver_bytes: None,
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
        let mut times = Vec::with_capacity(repeats.runs);
        let mut cpu_start = 0.0;
        for i in 0..repeats.warmup + repeats.runs {
            if i == repeats.warmup {
                cpu_start = process_cpu_seconds();
            }
            // The outputs are freed after the clock stops, as the peer benchmarks time
            // a call (`scripts/bench_peers.py`: the result is dropped after its time is taken).
            let start = Instant::now();
            let outputs = cpu::run(plan, inputs, params)?;
            let elapsed = start.elapsed();
            drop(outputs);
            if i >= repeats.warmup {
                times.push(elapsed.as_secs_f64() * 1e3);
            }
        }
        let cpu_seconds = process_cpu_seconds() - cpu_start;
        times.sort_by(f64::total_cmp);
        Ok(Timing {
            median_ms: times[times.len() / 2],
            min_ms: times[0],
            runs: times.len(),
            startup_s: None,
            cpu_seconds_per_run: Some(cpu_seconds / times.len() as f64),
        })
    }
}

/// User + system CPU seconds of this process so far, all threads.
fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: a valid out-pointer to one `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: getrusage succeeded, so it filled the struct (and zeroed is valid anyway).
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
