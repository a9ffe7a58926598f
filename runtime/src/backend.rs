//! One interface to the places a plan runs. The CPU and CUDA backends implement `Backend`:
//! the plan options their target needs (the matmul workspace), the check of the tensors
//! given for a run, the memory free for one, a run, and timed runs. They share one result
//! type per question and one error type, whose kind fixes the exit code of SPEC §2. The
//! command line (`tc run`, `tc bench`) and the `cpubench` benchmark reach the executors
//! only through it; the memory preflight and the bytes a plan moves are computed here, once.

mod cpu;
mod cuda;
pub mod host_memory;

pub use self::cpu::CpuBackend;
pub use self::cuda::CudaBackend;

use crate::tensor::HostTensor;
use tc_compiler::report::text::human;
use tc_compiler::report::Peak;
use tc_compiler::schedule::{BufferId, KernelKind};
use tc_compiler::{Plan, PlanOptions, Program};

/// Why a backend could not run a plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The tensors given do not fit the plan's inputs or params (exit 1).
    #[error("{0}")]
    Data(String),
    /// The program's memory does not fit in what is free (exit 3).
    #[error("{0}")]
    OutOfMemory(String),
    /// The device, its driver or its compiler failed (exit 3), with their message.
    #[error("{0}")]
    Device(String),
    /// tc broke its own contract, e.g. a plan the executor rejects (exit 3): a bug in tc,
    /// not in the program or its data.
    #[error("{0}")]
    Internal(String),
}

impl BackendError {
    /// The exit code of SPEC §2: 1 for the data, 3 for the device or tc itself.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackendError::Data(_) => 1,
            BackendError::OutOfMemory(_) | BackendError::Device(_) | BackendError::Internal(_) => 3,
        }
    }
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The plan's outputs, in order, contiguous.
    pub outputs: Vec<HostTensor>,
    /// Memory tc really took, where the backend counts it (CUDA: its device allocations).
    pub measured: Option<Peak>,
    /// On CUDA: how far the driver's free-memory figure fell across tc's allocations (the
    /// cross-check of `measured`; the driver rounds each allocation up to its page size).
    pub driver_bytes: Option<u64>,
}

/// How many untimed and timed runs a bench makes, within bounds (SPEC §2 leaves them to tc;
/// `docs/cli.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeats {
    pub warmup: usize,
    pub runs: usize,
}

impl Repeats {
    /// The most timed runs, and the most warm-up runs, one bench makes.
    pub const MAX: u64 = 1_000_000;

    /// `warmup` in 0..=MAX, `runs` in 1..=MAX; otherwise says which is out of range.
    pub fn new(warmup: u64, runs: u64) -> Result<Repeats, String> {
        if !(1..=Self::MAX).contains(&runs) {
            return Err(format!(
                "--runs must be between 1 and {}, not {runs}",
                Self::MAX
            ));
        }
        if warmup > Self::MAX {
            return Err(format!(
                "--warmup must be at most {}, not {warmup}",
                Self::MAX
            ));
        }
        Ok(Repeats {
            warmup: warmup as usize,
            runs: runs as usize,
        })
    }
}

/// The timings of one plan's runs, in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub median_ms: f64,
    /// The fastest run.
    pub min_ms: f64,
    pub runs: usize,
    /// Wall time before the first launch (device open, compile or cache, allocate,
    /// upload), where the backend has such a step.
    pub startup_s: Option<f64>,
    /// User + system CPU seconds of the whole process per timed run, where the backend
    /// runs on the host.
    pub cpu_seconds_per_run: Option<f64>,
}

/// Memory free for a run, in bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FreeMemory {
    /// Host memory, the tightest of what the system and this process's limits allow.
    pub host: Option<host_memory::HostFree>,
    /// The device's memory, where the arena lives on one.
    pub device: Option<DeviceFree>,
}

/// A device's memory: its name, and the bytes a run may take where they could be read
/// (free, less `kept`).
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceFree {
    pub name: String,
    pub bytes: Option<u64>,
    /// Free bytes left out of `bytes` for the device's own libraries
    /// (`cuda::DEVICE_RESERVE_BYTES`).
    pub kept: u64,
}

/// A measured copy bandwidth, the ceiling memory-bound kernels are compared with.
#[derive(Clone, Debug, PartialEq)]
pub struct Bandwidth {
    pub device: String,
    /// Bytes read plus bytes written per second, in GB/s (10^9).
    pub gbps: f64,
}

/// A place a plan runs.
pub trait Backend {
    /// How the command line names it ("the CPU", "CUDA").
    fn name(&self) -> &'static str;

    /// `base` with what this target needs: the matmul workspace.
    fn plan_options(&self, base: PlanOptions) -> PlanOptions;

    /// Checks the tensors given for a run against the plan: as many inputs and params as
    /// it has, each of its buffer's dtype, shape and size.
    fn check_data(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        params: &[HostTensor],
    ) -> Result<(), BackendError>;

    /// The memory free now for a run.
    fn free_memory(&self) -> FreeMemory;

    /// Runs the plan once.
    fn run(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        params: &[HostTensor],
    ) -> Result<RunResult, BackendError>;

    /// Times the plan: `repeats.warmup` untimed runs, then `repeats.runs` timed ones.
    fn bench(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        params: &[HostTensor],
        repeats: Repeats,
    ) -> Result<Timing, BackendError>;

    /// The memory system's copy bandwidth, measured now, where the backend measures one.
    fn copy_bandwidth(&self) -> Result<Option<Bandwidth>, BackendError> {
        Ok(None)
    }
}

/// Refuses, before any data is made or anything launched, a program whose memory cannot
/// fit: where the backend has a device, the arena plus inputs and params against the
/// device's free memory, and the inputs, params and outputs against the host's; on the
/// host alone, all of it (arena, inputs, params, outputs) against the host's. The host's
/// free memory respects this process's limits (`host_memory`).
pub fn preflight(program: &Program, backend: &dyn Backend) -> Result<(), BackendError> {
    let peaks = &program.memory.peaks;
    let leaves = peaks
        .planned
        .with_inputs
        .saturating_sub(peaks.planned.without_inputs);
    let outputs: u64 = program
        .plan
        .outputs
        .iter()
        .map(|o| {
            o.shape
                .iter()
                .product::<u64>()
                .saturating_mul(o.dtype.size())
        })
        .fold(0u64, u64::saturating_add);
    let refuse = |what: &str, needed: u64, free: u64, why: &str| {
        BackendError::OutOfMemory(format!(
            "the program needs {} ({needed} bytes) of {what} memory but only {} ({free} bytes) \
             is free{why}; nothing was run\n  = help: try smaller dims (--dim NAME=INT)",
            human(needed),
            human(free)
        ))
    };
    let free = backend.free_memory();
    if let Some(DeviceFree {
        name,
        bytes: Some(free),
        kept,
    }) = &free.device
    {
        let needed = peaks.planned.with_inputs;
        if needed > *free {
            let why = if *kept > 0 {
                format!(" once {} is kept for the CUDA libraries", human(*kept))
            } else {
                String::new()
            };
            return Err(refuse(&format!("device ({name})"), needed, *free, &why));
        }
    }
    let host_needed = match free.device {
        Some(_) => leaves.saturating_add(outputs),
        None => peaks.planned.with_inputs.saturating_add(outputs),
    };
    if let Some(host) = free.host {
        if host_needed > host.bytes {
            return Err(refuse("host", host_needed, host.bytes, host.limit.why()));
        }
    }
    Ok(())
}

/// Bytes a plan must move at the least: each kernel reads every buffer it loads once and
/// writes every buffer it stores once (what a bandwidth figure is measured against).
pub fn traffic_bytes(plan: &Plan) -> u64 {
    let mut total = 0u64;
    for kernel in &plan.kernels {
        let mut touched: Vec<BufferId> = match &kernel.kind {
            KernelKind::Fused(f) => f
                .loads
                .iter()
                .map(|l| l.buffer)
                .chain(f.stores.iter().map(|s| s.buffer))
                .collect(),
            KernelKind::MatMul(m) => [m.a.buffer, m.b.buffer, m.out]
                .into_iter()
                .chain(m.accumulate)
                .collect(),
            KernelKind::Attention(a) => a.reads().into_iter().chain([a.out]).collect(),
            KernelKind::AttentionBackward(a) => {
                [a.q.buffer, a.k.buffer, a.v.buffer, a.d_out.buffer]
                    .into_iter()
                    .chain(a.loads.iter().chain(&a.grad_loads).map(|l| l.buffer))
                    .chain(
                        [&a.dq, &a.dk, &a.dv_out]
                            .into_iter()
                            .flatten()
                            .map(|g| g.buffer),
                    )
                    .collect()
            }
            KernelKind::IndexAdd(k) => vec![k.index.buffer, k.grad.buffer, k.out],
        };
        touched.sort();
        touched.dedup();
        total += touched.iter().map(|b| plan.buffer(*b).bytes).sum::<u64>();
    }
    total
}

/// Bytes any plan of the program must move: every input and param read once, every output
/// written once (the floor `tc bench` and the bandwidth targets compare with).
pub fn least_traffic_bytes(plan: &Plan) -> u64 {
    let mut buffers: Vec<BufferId> = plan
        .inputs
        .iter()
        .chain(&plan.params)
        .copied()
        .chain(plan.outputs.iter().map(|o| o.buffer))
        .collect();
    buffers.sort();
    buffers.dedup();
    buffers.iter().map(|b| plan.buffer(*b).bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(source: &str) -> Program {
        tc_compiler::compile(source, &tc_compiler::CompileOptions::default()).expect("compiles")
    }

    #[test]
    fn one_kernel_moves_exactly_the_programs_least_traffic() {
        let p = program("dim N = 1000\ninput x : f32[N]\ny = exp(x) * 2 + 1\noutput y\n").plan;
        assert_eq!(least_traffic_bytes(&p), 8000);
        assert_eq!(traffic_bytes(&p), 8000);
    }

    #[test]
    fn least_traffic_counts_each_input_and_output_once() {
        // Two row kernels read x; the least traffic reads it once.
        let p = program(
            "dim N = 10\ndim D = 100\ninput x : f32[N, D]\n\
             a = softmax(x, axis=-1)\nb = sum(x, axis=-1)\nc = x\noutput a, b, c\n",
        )
        .plan;
        let x = 10 * 100 * 4;
        assert_eq!(least_traffic_bytes(&p), x + x + 10 * 4);
        assert!(traffic_bytes(&p) >= least_traffic_bytes(&p));
    }

    #[test]
    fn repeats_are_bounded() {
        assert_eq!(
            Repeats::new(3, 20),
            Ok(Repeats {
                warmup: 3,
                runs: 20
            })
        );
        assert!(Repeats::new(0, 0).is_err());
        assert!(Repeats::new(0, Repeats::MAX + 1).is_err());
        assert!(Repeats::new(u64::MAX, 1).is_err());
        assert!(Repeats::new(Repeats::MAX, Repeats::MAX).is_ok());
    }

    #[test]
    fn the_cpu_backend_plans_for_the_cpu_and_cuda_with_cublas_workspace() {
        let base = PlanOptions {
            target: tc_compiler::Target::Cuda {
                matmul_workspace: 7,
            },
            ..PlanOptions::default()
        };
        assert_eq!(
            CpuBackend.plan_options(base.clone()).target,
            tc_compiler::Target::Cpu
        );
        assert_eq!(
            CudaBackend::default().plan_options(base).target,
            tc_compiler::Target::Cuda {
                matmul_workspace: crate::cuda::CUBLAS_WORKSPACE_BYTES
            }
        );
    }

    #[test]
    fn a_plan_the_executor_rejects_is_an_internal_error_exit_3() {
        // A tc bug, simulated: a buffer placed past the end of the arena.
        let mut p = program("dim N = 64\ninput x : f32[N]\ny = exp(x)\noutput y\n").plan;
        let arena = p
            .buffers
            .iter_mut()
            .find(|b| b.kind == tc_compiler::schedule::BufferKind::Arena)
            .expect("an arena buffer");
        arena.offset = 1 << 40;
        let x = HostTensor::from_f32(tc_compiler::ir::DType::F32, vec![64], &[0.5; 64]);
        let err = CpuBackend
            .run(&p, &[x], &[])
            .expect_err("the plan is broken");
        assert!(matches!(err, BackendError::Internal(_)), "{err:?}");
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn data_that_does_not_fit_the_plan_is_a_data_error_exit_1() {
        let p = program("dim N = 64\ninput x : f32[N]\ny = exp(x)\noutput y\n").plan;
        let x = HostTensor::from_f32(tc_compiler::ir::DType::F32, vec![63], &[0.5; 63]);
        for backend in [&CpuBackend as &dyn Backend, &CudaBackend::default()] {
            let err = backend
                .check_data(&p, std::slice::from_ref(&x), &[])
                .expect_err("wrong shape");
            assert!(matches!(err, BackendError::Data(_)), "{err:?}");
            assert_eq!(err.exit_code(), 1);
        }
        let err = CpuBackend.run(&p, &[x], &[]).expect_err("wrong shape");
        assert_eq!(err.exit_code(), 1);
    }

    /// A backend with set free memory, for the preflight.
    struct Fixed(FreeMemory);

    impl Backend for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn plan_options(&self, base: PlanOptions) -> PlanOptions {
            base
        }
        fn check_data(
            &self,
            _: &Plan,
            _: &[HostTensor],
            _: &[HostTensor],
        ) -> Result<(), BackendError> {
            Ok(())
        }
        fn free_memory(&self) -> FreeMemory {
            self.0.clone()
        }
        fn run(
            &self,
            _: &Plan,
            _: &[HostTensor],
            _: &[HostTensor],
        ) -> Result<RunResult, BackendError> {
            unreachable!("the preflight runs nothing")
        }
        fn bench(
            &self,
            _: &Plan,
            _: &[HostTensor],
            _: &[HostTensor],
            _: Repeats,
        ) -> Result<Timing, BackendError> {
            unreachable!("the preflight runs nothing")
        }
    }

    #[test]
    fn preflight_counts_the_arena_where_it_lives() {
        use host_memory::{HostFree, Limit};
        // 4000 bytes of input, 4000 of output (in the arena).
        let p = program("dim N = 1000\ninput x : f32[N]\ny = exp(x)\noutput y\n");
        let host = |bytes| {
            Some(HostFree {
                bytes,
                limit: Limit::AddressSpace,
            })
        };
        // On the host alone: arena + input + the output's copy = 12000.
        let cpu = |bytes| {
            Fixed(FreeMemory {
                host: host(bytes),
                device: None,
            })
        };
        assert!(preflight(&p, &cpu(12000)).is_ok());
        let err = preflight(&p, &cpu(11999)).expect_err("does not fit");
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("ulimit -v"), "{err}");
        // With a device: 8000 there, the input and the output (8000) on the host.
        let gpu = |dev, bytes| {
            Fixed(FreeMemory {
                host: host(bytes),
                device: Some(DeviceFree {
                    name: "GPU".into(),
                    bytes: Some(dev),
                    kept: 256 << 20,
                }),
            })
        };
        assert!(preflight(&p, &gpu(8000, 8000)).is_ok());
        let err = preflight(&p, &gpu(7999, 8000)).expect_err("does not fit the device");
        assert!(
            err.to_string().contains("kept for the CUDA libraries"),
            "{err}"
        );
        assert!(preflight(&p, &gpu(8000, 7999)).is_err());
    }
}
