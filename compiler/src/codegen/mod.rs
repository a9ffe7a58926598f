//! Code generation: CUDA C for every kernel of a plan (NVRTC compiles it at run time) and
//! the cuBLAS call for every matrix product. Pure functions of the `Plan`: no I/O, no device.
//!
//! Fused kernels are printed from their kernel IR (`crate::lower`) following a launch
//! strategy (`launch`), a value decided before any text is written.
//! `emit_kernels` gives one `CudaKernel` per plan kernel, in order; `emit_program` prints them
//! all, readable, for `tc emit --kernels`. The executor compiles `PRELUDE` followed by every
//! kernel's `source` as one translation unit and launches by `name`.

pub mod attention;
pub mod attention_backward;
mod cuda;
pub mod index;
pub mod index_add;
pub mod launch;
mod matmul;
mod writer;

use crate::ir::DType;
use crate::lower;
use crate::schedule::{BufferId, KernelKind, Plan};
use serde::Serialize;

pub use matmul::{gemm_plan, GemmCall};

/// Helpers every generated kernel uses: f16/bf16 conversions (PTX `cvt`s, so NVRTC needs no
/// include path; bf16 from f32 in plain C below sm_80), NaN-propagating min/max and
/// warp/block reductions.
/// `PRELUDE_PTX` followed by `PRELUDE_PORTABLE`.
pub const PRELUDE: &str = concat!(
    include_str!("prelude_ptx.cu"),
    include_str!("prelude_portable.cu")
);

/// The part of `PRELUDE` written in inline PTX: f16 <-> f32 conversions, f32 -> bf16
/// (`cvt.rn.bf16.f32` on sm_80 and later) and `tc_rcp_approx` (`rcp.approx.ftz.f32`). The host
/// emulation of the CUDA backend (`tc_runtime::cuda::emu`) replaces it with C++ of the same
/// semantics and compiles the rest of the prelude unchanged.
pub const PRELUDE_PTX: &str = include_str!("prelude_ptx.cu");

/// The part of `PRELUDE` in plain CUDA C (no inline assembly): bf16 -> f32, rounding,
/// NaN-propagating min/max, warp, block and slice reductions.
pub const PRELUDE_PORTABLE: &str = include_str!("prelude_portable.cu");

/// Bytes of cuBLAS workspace to ask the planner for (`Target::Cuda`) when
/// planning for CUDA: NVIDIA's recommendation for Hopper. It is a `Workspace` buffer in the
/// arena, so `planned` and `measured` count it.
pub const CUBLAS_WORKSPACE_BYTES: u64 = 32 << 20;

/// Plan options for the CUDA target: `base` with the cuBLAS workspace set.
pub fn cuda_plan_options(base: &crate::schedule::PlanOptions) -> crate::schedule::PlanOptions {
    crate::schedule::PlanOptions {
        target: crate::schedule::Target::Cuda {
            matmul_workspace: CUBLAS_WORKSPACE_BYTES,
        },
        ..base.clone()
    }
}

/// How the executor runs one kernel.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Launch {
    /// Launch the `__global__` function `CudaKernel::name` with this grid and block
    /// (`shared_bytes` of dynamic shared memory; static shared memory is in the source).
    Grid {
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
    },
    /// Call cuBLAS (no CUDA C): `cublasGemmStridedBatchedEx`, see `GemmCall`.
    Cublas(GemmCall),
    /// A column reduction split over blocks (`launch::ColumnSplit`), two launches at the
    /// kernel's step on the same stream: `CudaKernel::name` over `grid` and `block` (each
    /// block writes its partials into the kernel's workspace), then `fold`, a second
    /// `__global__` function of the same source taking the same parameters, over
    /// `fold_grid` and `fold_block` (each column's partials folded in part order). No
    /// dynamic shared memory.
    Split {
        grid: [u32; 3],
        block: [u32; 3],
        fold: String,
        fold_grid: [u32; 3],
        fold_block: [u32; 3],
    },
}

impl Launch {
    /// A `Grid` launch of `threads` threads a block and no dynamic shared memory over
    /// `grid`, each dimension clamped into `1..=65535` (the product kernels' grids: they
    /// loop over what a clamped dimension leaves).
    pub fn clamped_grid(grid: [u64; 3], threads: u32) -> Launch {
        Launch::Grid {
            grid: grid.map(|x| x.clamp(1, 65535) as u32),
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }
}

/// One plan kernel turned into something a GPU runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CudaKernel {
    /// Index of the kernel in `Plan::kernels` (its step).
    pub kernel_index: usize,
    /// The plan's generated name (`k3`), also the `extern "C"` symbol; never a user name.
    pub name: String,
    /// The CUDA C of the `__global__` function, without `PRELUDE`; empty for `Launch::Cublas`.
    pub source: String,
    pub launch: Launch,
    /// The kernel's pointer parameters, in signature order: each is the device address of
    /// that buffer's first element (arena base + `Buffer::offset`, or the input's allocation).
    /// Element offsets and strides are constants in the source. Empty for `Launch::Cublas`.
    pub params: Vec<BufferId>,
    /// The kernel's index checks (one per gathered read, `index`): the `__device__` array
    /// the host reads after the launch for out-of-range indices. Empty for most kernels.
    pub checks: Vec<index::IndexCheck>,
}

impl CudaKernel {
    /// The kernel as a standalone translation unit (`PRELUDE` + `source`), or `None` for a
    /// cuBLAS call.
    pub fn standalone_source(&self) -> Option<String> {
        if self.source.is_empty() {
            None
        } else {
            Some(format!("{PRELUDE}\n{}", self.source))
        }
    }
}

/// The C type a buffer of `dtype` is addressed as: f16/bf16 travel as their raw 16 bits.
pub fn storage_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float",
        DType::F16 | DType::BF16 => "unsigned short",
        DType::I32 => "int",
        DType::I64 => "long long",
        DType::Bool => "unsigned char",
    }
}

/// One `CudaKernel` per kernel of `plan`, in schedule order (its fused kernels lowered
/// first; an error is a tc bug).
pub fn emit_kernels(plan: &Plan) -> Result<Vec<CudaKernel>, lower::Error> {
    emit_lowered(plan, &lower::lower(plan)?)
}

/// One `CudaKernel` per kernel of `plan`, whose fused kernels are lowered in `lowered`
/// (`lower::lower(plan)`, as `Program::kernels` holds it); an error when a fused kernel
/// has no kernel IR there.
pub fn emit_lowered(
    plan: &Plan,
    lowered: &lower::Lowered,
) -> Result<Vec<CudaKernel>, lower::Error> {
    plan.kernels
        .iter()
        .enumerate()
        .map(
            |(index, kernel)| match (&kernel.kind, lowered.kernels.get(index)) {
                (KernelKind::Fused(_), Some(Some(ir))) => {
                    Ok(cuda::emit_fused(plan, index, kernel, ir))
                }
                (KernelKind::MatMul(mm), _) => Ok(matmul::emit_matmul(plan, index, kernel, mm)),
                (KernelKind::Attention(a), _) => Ok(attention::emit(plan, index, kernel, a)),
                (KernelKind::AttentionBackward(a), _) => {
                    Ok(attention_backward::emit(plan, index, kernel, a))
                }
                (KernelKind::IndexAdd(k), _) => Ok(index_add::emit(plan, index, kernel, k)),
                (KernelKind::Fused(_), _) => Err(lower::Error::Missing {
                    kernel: kernel.name.clone(),
                    what: "its kernel IR".into(),
                }),
            },
        )
        .collect()
}

/// The translation unit the executor compiles: `PRELUDE` then every kernel's source.
pub fn translation_unit(kernels: &[CudaKernel]) -> String {
    let mut out = String::from(PRELUDE);
    for k in kernels.iter().filter(|k| !k.source.is_empty()) {
        out.push('\n');
        out.push_str(&k.source);
    }
    out
}

/// Every kernel of `plan`, readable: a header, the prelude once, then each kernel (a cuBLAS
/// call is shown as a comment giving its exact arguments). A plan that does not lower (a tc
/// bug) gives a program that says why in an `#error` line, so it cannot be compiled.
pub fn emit_program(plan: &Plan) -> String {
    let kernels = match emit_kernels(plan) {
        Ok(k) => k,
        Err(e) => return format!("#error \"tc internal error: {e}\"\n"),
    };
    let mut out = String::new();
    out.push_str(
        "// Generated by tc: CUDA C for every kernel of the plan, compiled by NVRTC at run\n",
    );
    out.push_str("// time (no fast math, no FMA contraction); matrix products are cuBLAS calls.\n");
    out.push_str("// Buffers:\n");
    for (i, b) in plan.buffers.iter().enumerate() {
        let shape: Vec<String> = b.shape.iter().map(|s| s.to_string()).collect();
        let place = match b.kind {
            crate::schedule::BufferKind::Input { index } => format!("input {index}"),
            crate::schedule::BufferKind::Param { index } => format!("param {index}"),
            crate::schedule::BufferKind::Arena => format!("arena +{}", b.offset),
            crate::schedule::BufferKind::Workspace => format!("workspace, arena +{}", b.offset),
            crate::schedule::BufferKind::Tile => "never stored: tiles".to_string(),
        };
        out.push_str(&format!(
            "//   b{i} {} {}[{}] {} bytes ({place})\n",
            b.name,
            b.dtype,
            shape.join(", "),
            b.bytes
        ));
    }
    out.push('\n');
    out.push_str(PRELUDE);
    for k in &kernels {
        out.push('\n');
        match &k.launch {
            Launch::Grid {
                grid,
                block,
                shared_bytes,
            } => {
                out.push_str(&format!(
                    "// launch {}: grid [{}, {}, {}], block [{}, {}, {}], {} bytes dynamic shared memory\n",
                    k.name, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared_bytes
                ));
                out.push_str(&k.source);
            }
            Launch::Split {
                grid,
                block,
                fold,
                fold_grid,
                fold_block,
            } => {
                out.push_str(&format!(
                    "// launch {}: grid [{}, {}, {}], block [{}, {}, {}]; then {fold}: grid [{}, {}, {}], block [{}, {}, {}]\n",
                    k.name, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                    fold_grid[0], fold_grid[1], fold_grid[2], fold_block[0], fold_block[1], fold_block[2]
                ));
                out.push_str(&k.source);
            }
            Launch::Cublas(call) => out.push_str(&matmul::describe_call(plan, &k.name, call)),
        }
    }
    out
}
