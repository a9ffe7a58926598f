//! The schedule: the contract between the planner and every executor.
//!
//! A `Plan` is a list of kernels run in order (kernel `i` runs at *step* `i`) over buffers:
//! inputs and params (supplied per run, outside the arena) and arena buffers (at planned
//! byte offsets in one allocation). A kernel names everything it touches by `BufferId`, with
//! element offsets and strides, so an executor needs neither the graph nor the planner:
//! the CPU executor interprets `FusedKernel`s as loops; `codegen` turns them into CUDA C.
//!
//! Semantics of a `FusedKernel` (the only thing an executor must get right):
//! - The kernel iterates over `domain`. Axes in `reduce_axes` are reduced; the others form
//!   the *row index*. With no reduce axes each element is its own row.
//! - `body` is in topological order. An `Element` inst has a value per domain element; a
//!   `Row` inst one value per row (constant along the reduce axes). `Reduce` turns an
//!   `Element` operand into a `Row` value by folding it over the row's reduce axes (a fold
//!   of a row-constant value is closed-form and the planner emits it as such).
//!   A `Row` inst never depends on an `Element` inst except through a `Reduce`.
//! - A `Load` reads `buffer[offset + Σ idx[d]·strides[d]]` (elements of the buffer's dtype)
//!   for domain index `idx`; a `Row` load has stride 0 on every reduce axis. A `Gather`
//!   inst reads its load's element plus its index value times its stride (the load's
//!   strides are 0 along the gathered axis), after checking the index is in range; an
//!   `Index` inst is the address computation alone (an `arange`, never a buffer).
//! - A `Scan` inst is the running sum of its operand along the row, in row order.
//! - A `Store` of an `Element` inst writes the buffer contiguously in `domain` order; of a
//!   `Row` inst, contiguously in row order (the non-reduced axes, in order). A store with a
//!   `region` writes `buffer[offset + Σ idx[d]·strides[d]]` instead: one part of a buffer
//!   that several kernels fill (a `concat`), never read by the kernel that writes it.
//! - Float arithmetic is done in f32 whatever the float dtypes; `Cast` rounds to its dtype
//!   (ties to even) and back. The planner follows every f16/bf16 arithmetic result with a
//!   `Cast`, so a fused program rounds exactly where the unfused one stores (an executor
//!   that rounds every inst to its dtype computes the same values).
//! - Integer and `bool` values (`DType::is_integral`) are exact: an executor holds them as
//!   64-bit integers (never in f32), with `ir::eval`'s integer meaning (`binary_int`, …:
//!   wrapping to the dtype); a `Cast` between kinds is `ir::eval::cast`. A comparison's
//!   inst has dtype `bool` and operands of one dtype; `Where` picks per element.
//! - A store may target a buffer the kernel also loads (in-place) only when every load of
//!   it reads the same element the store writes, at the same domain index (the planner
//!   guarantees it); a row kernel writes a row only after all its reductions are done.

use crate::ir::{BinaryOp, DType, NodeId, ReduceOp, UnaryOp};
use serde::Serialize;

/// A buffer of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BufferId(pub u32);

impl BufferId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    /// The `index`th program input; its own allocation, never written.
    Input { index: usize },
    /// The `index`th program param; its own allocation, never written.
    Param { index: usize },
    /// A kernel output in the arena at `offset` bytes.
    Arena,
    /// Scratch memory for one kernel (a cuBLAS workspace, an attention backward's row
    /// statistics), in the arena.
    Workspace,
    /// A value never stored whole (CPU plans only), no arena bytes: a matrix product's
    /// output whose only reader, the fused kernel right after the product, runs on each
    /// block of it as tc's GEMM finishes the block in a buffer of the thread's own
    /// (`plan::tile`); or a product's `A` that its `prologue` computes block by block as the
    /// GEMM packs it, read by such products alone (`plan::prologue`).
    Tile,
}

/// One storage region: a tensor of `dtype` and `shape`, contiguous.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Buffer {
    /// The tensor name from the source, else the producing kernel's output name (`k3.out`).
    pub name: String,
    pub kind: BufferKind,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// `numel · dtype size` (the workspace's size in bytes for `Workspace`).
    pub bytes: u64,
    /// Byte offset in the arena (16-byte aligned); 0 for inputs and params.
    pub offset: u64,
    /// First and last step (kernel index) at which the buffer is live. Inputs and params
    /// are live from step 0; outputs to the last step.
    pub first_step: usize,
    pub last_step: usize,
    /// Set when this buffer shares storage with an earlier one whose last use is the kernel
    /// that writes this one (same offset, same bytes).
    pub in_place_of: Option<BufferId>,
    /// The primitive-graph node whose value the buffer holds, if any.
    pub node: Option<NodeId>,
}

/// Whether an inst varies over the whole domain or only over rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Element,
    Row,
}

/// A strided read of a buffer, indexed by the kernel's domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Load {
    pub buffer: BufferId,
    /// The buffer's dtype (repeated here so codegen needs no lookup).
    pub dtype: DType,
    /// Element offset.
    pub offset: i64,
    /// Element stride per domain axis; 0 on broadcast axes (and on reduce axes for `Row`).
    pub strides: Vec<i64>,
}

/// Index of an inst within its kernel's `body`.
pub type InstId = usize;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstOp {
    /// The value of `loads[i]` at the current index, converted to f32.
    Load(usize),
    /// A constant.
    Const(f64),
    Unary(UnaryOp, InstId),
    Binary(BinaryOp, InstId, InstId),
    /// Round the operand to the inst's dtype (the value stays an f32 holding it).
    Cast(InstId),
    /// Fold the `Element` operand over the reduce axes (f32 accumulation; `Mean` divides by
    /// the number of reduced elements; integers fold exactly, sums wrapping; `ArgMax`/`ArgMin`
    /// give the position along the row).
    Reduce(ReduceOp, InstId),
    /// `where(c, a, b)`: `c` is `bool`; `a` and `b` have the inst's dtype.
    Where(InstId, InstId, InstId),
    /// The domain index through a strided map, `offset + Σ idx[d]·strides[d]`, as an `i64`
    /// value: an `arange` read through its views (element `e` of an arange is `e`).
    Index {
        offset: i64,
        strides: Vec<i64>,
    },
    /// `loads[load]` read at its own position for the current index plus the value of
    /// `index` times `stride`: a gathered read (`take`, `gather`). The index must lie in
    /// `[0, size)`; an executor that meets one outside it reads nothing there and reports
    /// an error in the data naming `what` (the index tensor and the axis it indexes).
    /// Without a load the table is an `arange`'s index map along the axis, and the value is
    /// the checked index times `stride` (what `one_hot` compares with).
    Gather {
        load: Option<usize>,
        index: InstId,
        stride: i64,
        size: u64,
        what: String,
    },
    /// The inclusive prefix sum of the operand along the row, in row order (`cumsum`; a
    /// float sum accumulates in f32, an integer one exactly). An `Element` value.
    Scan(InstId),
}

impl InstOp {
    /// The insts this one reads, in operand order.
    pub fn operands(&self) -> Vec<InstId> {
        match *self {
            InstOp::Load(_) | InstOp::Const(_) | InstOp::Index { .. } => Vec::new(),
            InstOp::Unary(_, a)
            | InstOp::Cast(a)
            | InstOp::Reduce(_, a)
            | InstOp::Scan(a)
            | InstOp::Gather { index: a, .. } => vec![a],
            InstOp::Binary(_, a, b) => vec![a, b],
            InstOp::Where(c, a, b) => vec![c, a, b],
        }
    }

    /// The same op reading `f(operand)` for each operand (a renumbering of the body).
    pub fn map_operands(&self, f: impl Fn(InstId) -> InstId) -> InstOp {
        match *self {
            InstOp::Load(l) => InstOp::Load(l),
            InstOp::Const(c) => InstOp::Const(c),
            InstOp::Unary(u, a) => InstOp::Unary(u, f(a)),
            InstOp::Binary(b, x, y) => InstOp::Binary(b, f(x), f(y)),
            InstOp::Cast(a) => InstOp::Cast(f(a)),
            InstOp::Reduce(r, a) => InstOp::Reduce(r, f(a)),
            InstOp::Index {
                offset,
                ref strides,
            } => InstOp::Index {
                offset,
                strides: strides.clone(),
            },
            InstOp::Gather {
                load,
                index,
                stride,
                size,
                ref what,
            } => InstOp::Gather {
                load,
                index: f(index),
                stride,
                size,
                what: what.clone(),
            },
            InstOp::Scan(a) => InstOp::Scan(f(a)),
            InstOp::Where(c, a, b) => InstOp::Where(f(c), f(a), f(b)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Inst {
    pub op: InstOp,
    /// The value's dtype: a value that is stored is rounded to it; arithmetic is in f32.
    pub dtype: DType,
    pub level: Level,
    /// The primitive-graph node this inst computes, for comments and the report.
    pub node: Option<NodeId>,
}

/// Writes inst `inst` to `buffer` (contiguous, or into a region; see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Store {
    pub inst: InstId,
    pub buffer: BufferId,
    /// `None`: the whole buffer, contiguously. Else the value is one part of a larger
    /// buffer (a `concat` operand written straight into its place).
    pub region: Option<Region>,
}

/// Where a store writes in a buffer larger than its value: element `idx` of the domain
/// goes to `buffer[offset + Σ idx[d]·strides[d]]` (0 on the reduce axes for a `Row` inst).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Region {
    pub offset: i64,
    pub strides: Vec<i64>,
}

/// A loop nest of elementwise maths with optional row reductions, fused into one kernel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FusedKernel {
    pub domain: Vec<u64>,
    /// Sorted, distinct axes of `domain`. Empty for a pointwise kernel.
    pub reduce_axes: Vec<usize>,
    pub loads: Vec<Load>,
    pub body: Vec<Inst>,
    pub stores: Vec<Store>,
    /// Scratch for a column reduction split over blocks on the GPU (`plan::split::column_split`:
    /// each block folds a part of every column into a partial, a second launch of the same
    /// step folds the partials in a fixed order). A `Workspace` buffer live at this step
    /// only; planned for the GPU alone (`PlanOptions::for_gpu`), and an executor that runs the
    /// kernel whole (the CPU's) ignores it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<BufferId>,
}

impl FusedKernel {
    /// Number of rows (product of the non-reduced domain axes).
    pub fn rows(&self) -> u64 {
        self.domain
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.reduce_axes.contains(i))
            .map(|(_, &s)| s)
            .product()
    }

    /// Elements per row (product of the reduced axes; 1 for a pointwise kernel).
    pub fn row_len(&self) -> u64 {
        self.reduce_axes.iter().map(|&a| self.domain[a]).product()
    }
}

/// An operand of a matrix product: `[batch…, rows, cols]` read through strides.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct MatOperand {
    pub buffer: BufferId,
    pub dtype: DType,
    /// Element offset.
    pub offset: i64,
    /// Element strides for each batch axis, then the two matrix axes.
    pub strides: Vec<i64>,
}

/// `out[b…, m, n] = Σ_k a[b…, m, k] · b[b…, k, n]`, accumulated in f32, out contiguous;
/// with `accumulate`, `out = x + a·b` (a residual add absorbed by the GEMM: BLAS's `beta = 1`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatMulKernel {
    pub batch: Vec<u64>,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub a: MatOperand,
    pub b: MatOperand,
    pub out: BufferId,
    pub out_dtype: DType,
    /// The product's workspace (`Target::matmul_workspace`): cuBLAS's on the GPU, the packed
    /// `B` of tc's GEMM on the CPU; none where the target gives it none.
    pub workspace: Option<BufferId>,
    /// `x` of `out = x + a·b`: a buffer of `out`'s dtype and shape, read contiguously. When
    /// `out` is planned in place of it (its storage, `x` read here for the last time) the
    /// GEMM accumulates into it as it stands; otherwise `x` is copied into `out` first. The
    /// product is rounded to `out`'s dtype before the add where the library lets it (the
    /// CPU and the fallback kernel, as the unfused add rounds); cuBLAS rounds `x + a·b`
    /// once, as PyTorch's `addmm` does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accumulate: Option<BufferId>,
    /// `a` computed, not read (`plan::prologue`, CPU plans only): a pointwise kernel over
    /// `a`'s buffer's domain whose one store writes that buffer, a `Tile` that is never
    /// stored. tc's CPU GEMM runs it on each block of `A` it packs (the rows and columns of
    /// the buffer that block reaches, into a buffer of the thread's own), so the value an
    /// activation such as `gelu(pre)` would be stored as is computed where the product
    /// needs it from what is stored anyway (`pre`). Its loads are the product's reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prologue: Option<Box<FusedKernel>>,
    /// tc's CPU GEMM packs all of `B` at once (`k × n`, the workspace sized so) rather than
    /// `CPU_GEMM_NC` columns at a time (`column_block`): set by `plan::tile` where a consumer
    /// of whole rows wider than `CPU_GEMM_NC` then runs on the product's blocks and the
    /// product is never stored, and where the larger workspace leaves the arena no larger
    /// (CPU plans only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub packs_whole_b: bool,
}

impl MatOperand {
    /// Whether a product reads it in place as f32: positive strides along its two matrix
    /// axes (the last two).
    pub fn in_place_f32(&self) -> bool {
        let r = self.strides.len();
        self.dtype == DType::F32 && r >= 2 && self.strides[r - 2] > 0 && self.strides[r - 1] > 0
    }
}

impl MatMulKernel {
    /// `[B…, M, K] @ [K, N]` (the right operand the same for every batch, the left one's
    /// batch and row axes one uniform axis) as the one `[B…·M, K] @ [K, N]` product it is:
    /// the same memory read and written (the output is contiguous), one large GEMM instead
    /// of a batch of small ones, `B` packed once. `None` for a product with no batch axes or
    /// another layout.
    pub fn batch_folded_into_rows(&self) -> Option<MatMulKernel> {
        let nb = self.batch.len();
        if nb == 0 || self.a.strides.len() != nb + 2 || self.b.strides.len() != nb + 2 {
            return None;
        }
        if !(0..nb).all(|d| self.batch[d] == 1 || self.b.strides[d] == 0) {
            return None;
        }
        let rs = self.a.strides[nb];
        let mut expect = rs.checked_mul(self.m as i64)?;
        for d in (0..nb).rev() {
            if self.batch[d] != 1 && self.a.strides[d] != expect {
                return None;
            }
            expect = expect.checked_mul(self.batch[d] as i64)?;
        }
        let rows: u64 = self.batch.iter().product::<u64>() * self.m;
        Some(MatMulKernel {
            batch: Vec::new(),
            m: rows,
            a: MatOperand {
                strides: vec![rs, self.a.strides[nb + 1]],
                ..self.a.clone()
            },
            b: MatOperand {
                strides: self.b.strides[nb..].to_vec(),
                ..self.b.clone()
            },
            ..self.clone()
        })
    }

    /// Whether the product's operands and output are all f32 read and written in place.
    pub fn in_place_f32(&self) -> bool {
        self.a.in_place_f32() && self.b.in_place_f32() && self.out_dtype == DType::F32
    }

    /// Batch matrices: the product of `batch` (1 for none).
    pub fn nbatch(&self) -> u64 {
        self.batch.iter().fold(1u64, |p, &b| p.saturating_mul(b))
    }

    /// Whether tc's CPU GEMM can take the product: float operands (f32, or f16/bf16
    /// widened as they are packed) read through positive strides, and a float output (f32
    /// written in place, a half dtype rounded from each finished block), a residual only
    /// into an f32 output.
    pub fn cpu_gemm_operands(&self) -> bool {
        let ok = |o: &MatOperand| {
            let r = o.strides.len();
            o.dtype.is_float() && r >= 2 && o.strides[r - 2] > 0 && o.strides[r - 1] > 0
        };
        ok(&self.a)
            && ok(&self.b)
            && self.out_dtype.is_float()
            && (self.accumulate.is_none() || self.out_dtype == DType::F32)
    }

    /// Bytes of workspace the product needs on `target` (`Target::matmul_workspace`; on the
    /// CPU with `packs_whole_b`, all of `B` packed).
    pub fn workspace_bytes(&self, target: &Target) -> u64 {
        let takes = self.cpu_gemm_operands();
        let bytes = target.matmul_workspace(self.nbatch(), self.m, self.n, self.k, takes);
        match target {
            Target::Cpu if self.packs_whole_b && bytes > 0 => {
                cpu_packing_floats_in_blocks(self.n, self.k, self.column_block()).saturating_mul(4)
            }
            _ => bytes,
        }
    }

    /// The columns of `B` tc's CPU GEMM packs at a time: `CPU_GEMM_NC`, or all of them
    /// (whole panels) with `packs_whole_b`.
    pub fn column_block(&self) -> u64 {
        if self.packs_whole_b {
            self.n.next_multiple_of(CPU_GEMM_NR).max(CPU_GEMM_NC)
        } else {
            CPU_GEMM_NC
        }
    }
}

/// Index of the score `q·kᵀ` in an `AttentionKernel`'s prologue: `InstOp::Load(SCORE)`
/// reads it; `InstOp::Load(i)` for `i > SCORE` reads `loads[i - 1]`.
pub const SCORE: usize = 0;

/// `out[b…, i, :] = Σ_j softmax_j(f(s[b…, i, j], …)) · v[b…, j, :]` with
/// `s = q[b…, i, :] · k[b…, :, j]` rounded to `score_dtype`, computed by tiles of keys with
/// an online max and sum, so neither the scores nor the probabilities are ever stored
/// (flash attention). `f` is the elementwise prologue `body` over the domain
/// `batch ++ [m, n]` (scale, masks, biases), whose result `logits` the softmax normalises
/// (f32 accumulation throughout; the probabilities are not rounded to a half dtype, as
/// PyTorch's fused attention does not round them).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttentionKernel {
    pub batch: Vec<u64>,
    /// Queries, keys, the head size of `q`/`k` and of `v`.
    pub m: u64,
    pub n: u64,
    pub d: u64,
    pub dv: u64,
    /// `[batch…, m, d]`.
    pub q: MatOperand,
    /// `[batch…, d, n]`: the right operand of `q @ kᵀ` (a transposed view of `k`).
    pub k: MatOperand,
    /// `[batch…, n, dv]`.
    pub v: MatOperand,
    pub score_dtype: DType,
    /// Extra operands of the prologue, strided over `batch ++ [m, n]`.
    pub loads: Vec<Load>,
    /// The prologue, all `Element` insts (see `SCORE` for its loads).
    pub body: Vec<Inst>,
    /// The inst of `body` holding the logits the softmax normalises.
    pub logits: InstId,
    /// The elementwise epilogue on `p @ v` (a cast, a scale, the head-merge copy), if any.
    pub epilogue: Option<Epilogue>,
    /// The buffer written: the value (or the epilogue's result) at `batch ++ [i, c]` goes
    /// to `out[out_offset + Σ idx·out_strides]` (a permutation of the output's elements:
    /// `permute(att @ v, [0, 2, 1, 3])` is written in `[B, S, H, Dh]` order).
    pub out: BufferId,
    /// The buffer's dtype.
    pub out_dtype: DType,
    pub out_offset: i64,
    /// Element strides over `batch ++ [m, dv]`.
    pub out_strides: Vec<i64>,
}

/// Index of the attention value `p @ v` in an `Epilogue`'s body: `InstOp::Load(RESULT)`
/// reads it (rounded to that inst's dtype); `InstOp::Load(i)` for `i > RESULT` reads
/// `loads[i - 1]`.
pub const RESULT: usize = 0;

/// An elementwise epilogue of an `AttentionKernel`: `body` over the output domain
/// `batch ++ [m, dv]`, all `Element` insts (no reduction, gather or scan); `result` is the
/// inst stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Epilogue {
    /// Other operands, strided over `batch ++ [m, dv]`.
    pub loads: Vec<Load>,
    pub body: Vec<Inst>,
    pub result: InstId,
}

impl AttentionKernel {
    /// The dtype `p @ v` is rounded to before the epilogue (the stored dtype without one).
    pub fn value_dtype(&self) -> DType {
        self.epilogue
            .as_ref()
            .and_then(|e| {
                e.body
                    .iter()
                    .find(|i| i.op == InstOp::Load(RESULT))
                    .map(|i| i.dtype)
            })
            .unwrap_or(self.out_dtype)
    }

    /// Every buffer the kernel reads: `q`, `k`, `v`, the prologue's and epilogue's loads.
    pub fn reads(&self) -> Vec<BufferId> {
        [self.q.buffer, self.k.buffer, self.v.buffer]
            .into_iter()
            .chain(self.loads.iter().map(|l| l.buffer))
            .chain(
                self.epilogue
                    .iter()
                    .flat_map(|e| e.loads.iter().map(|l| l.buffer)),
            )
            .collect()
    }
}

/// Index of the gradient of the logits in an `AttentionBackwardKernel`'s `grad_body`:
/// `InstOp::Load(GRAD)` reads it; `InstOp::Load(i)` for `i > GRAD` reads `grad_loads[i - 1]`.
pub const GRAD: usize = 0;

/// Where an attention gradient goes: element (`b…`, `r`, `c`) of the gradient, for batch
/// index `b…`, row `r` (a query for `dq`, a key for `dk` and `dv`) and column `c` (a head
/// component), is written at `buffer[offset + Σ b·strides[..nb] + r·strides[nb] +
/// c·strides[nb + 1]]` (`dk` is the gradient of `q @ kᵀ`'s right operand, `[batch…, d, n]`,
/// so its row stride is 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GradOut {
    pub buffer: BufferId,
    pub dtype: DType,
    pub offset: i64,
    pub strides: Vec<i64>,
}

/// The backward of an `AttentionKernel`'s attention (flash attention's backward): with
/// `p = softmax(f(q·k))` recomputed a tile at a time from `q`, `k`, the forward's prologue
/// and each query row's max and sum, and `dp = dO·vᵀ`,
/// `gx = p ∘ (dp − Σ_j dp ∘ p)` (softmax's backward), `gs = g(gx, …)` (the prologue's
/// backward, the elementwise `grad_body`), then `dq = gs·kᵀ`, `dk = qᵀ·gs`
/// (`[batch…, d, n]`), `dv = pᵀ·dO`. Neither the scores, the probabilities nor their
/// gradients are ever stored. Deterministic in two phases: per query tile, one walk over the
/// keys gives each row's max, sum and `Σ dp ∘ p` (online, written to `workspace`), a second
/// gives `dq`; per key tile, a walk over the queries gives `dk` and `dv`. f32 accumulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttentionBackwardKernel {
    pub batch: Vec<u64>,
    pub m: u64,
    pub n: u64,
    pub d: u64,
    pub dv: u64,
    /// The forward's operands, as in `AttentionKernel`.
    pub q: MatOperand,
    pub k: MatOperand,
    pub v: MatOperand,
    pub score_dtype: DType,
    /// The forward's prologue (see `AttentionKernel`).
    pub loads: Vec<Load>,
    pub body: Vec<Inst>,
    pub logits: InstId,
    /// The gradient of the output, `[batch…, m, dv]`.
    pub d_out: MatOperand,
    /// The prologue's backward: elementwise insts over `batch ++ [m, n]` from the gradient
    /// of the logits (`GRAD`) to that of the scores (`grad_scores`).
    pub grad_loads: Vec<Load>,
    pub grad_body: Vec<Inst>,
    pub grad_scores: InstId,
    pub dq: Option<GradOut>,
    pub dk: Option<GradOut>,
    pub dv_out: Option<GradOut>,
    /// `3 · rows` f32 (`rows = Π batch · m`): each query row's max, sum and `Σ dp ∘ p`.
    pub workspace: BufferId,
}

/// `out[a, v, c] = Σ_{p : index[p] = v, p ascending} grad[a, p, c]`: `take`'s gradient
/// (`ir::Op::IndexAdd`), with `a` over `pre`, `p` over the index's shape (`N` positions,
/// in row-major order), `v` over `rows`, `c` over `post`; `out` is f32, contiguous
/// `pre ++ [rows] ++ post`, every element written (0 where no position names the row).
/// Both executors split the rows into ranges and walk the index in position order for each
/// (no scratch memory: PyTorch's `index_add_` needs none either, so neither does `planned`).
/// The sum for each element is taken in ascending position order in f32 (no atomics), so
/// every executor gives the same bits run to run and the CPU and CUDA the same sums. An
/// index outside `[0, rows)` adds nothing and is an error in the data naming `what` (the
/// text of the `take` it differentiates), as the forward's gathered read is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndexAddKernel {
    pub pre: Vec<u64>,
    /// The index's shape (`N` = its product).
    pub index_shape: Vec<u64>,
    pub rows: u64,
    pub post: Vec<u64>,
    /// The index (an integer dtype), strided over `index_shape`.
    pub index: Load,
    /// The gradient read (a float dtype), strided over `pre ++ index_shape ++ post`.
    pub grad: Load,
    pub out: BufferId,
    pub what: String,
}

impl IndexAddKernel {
    /// `N`, the index's positions.
    pub fn positions(&self) -> u64 {
        self.index_shape.iter().product()
    }

    /// `Π pre` and `Π post`.
    pub fn outer(&self) -> (u64, u64) {
        (self.pre.iter().product(), self.post.iter().product())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelKind {
    Fused(FusedKernel),
    MatMul(MatMulKernel),
    Attention(AttentionKernel),
    AttentionBackward(Box<AttentionBackwardKernel>),
    IndexAdd(IndexAddKernel),
}

/// One step of the schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kernel {
    /// `k0`, `k1`, … (generated, never a user identifier).
    pub name: String,
    pub kind: KernelKind,
    /// Short names of the source-level ops it computes, in order (`["add", "gelu"]`).
    pub ops: Vec<String>,
    /// 1-based source lines it fuses, sorted and distinct.
    pub lines: Vec<u32>,
}

impl Kernel {
    /// What the kernel computes, for people: its ops and source lines
    /// (`add, gelu (source lines 35)`), as its CUDA C's first comment and a GPU fault's
    /// error name it.
    pub fn origin(&self) -> String {
        format!(
            "{} (source lines {})",
            self.ops.join(", "),
            self.source_lines()
        )
    }

    /// Its source lines, as people read them: `31, 34`.
    pub fn source_lines(&self) -> String {
        let lines: Vec<String> = self.lines.iter().map(|l| l.to_string()).collect();
        lines.join(", ")
    }
}

/// A program output: `name`, read from `buffer` through a layout (an output may be a view).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanOutput {
    pub name: String,
    pub buffer: BufferId,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub offset: i64,
    pub strides: Vec<i64>,
}

/// How the plan was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanOptions {
    /// Fuse ops into kernels (`--no-fuse` turns it off: one kernel per source-level op).
    pub fuse: bool,
    /// In-place reuse and offset packing (`--no-reuse`: every arena buffer gets its own
    /// region, nothing shared).
    pub reuse: bool,
    /// The executor the plan is for, and so the scratch each matrix product gets.
    pub target: Target,
}

/// The executor a plan is made for. It decides each matrix product's workspace
/// (`Target::matmul_workspace`): a `Workspace` buffer of the arena live at the product's
/// step alone, which the planned peak, the report and the models count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// tc's CPU executor: a product tc's own GEMM takes (`cpu_packs_b`; f32, f16 or bf16)
    /// gets its packed `B` (`cpu_packing_floats`, f32); the rest (the `gemm` crate's) none.
    Cpu,
    /// CUDA: every product gets `matmul_workspace` bytes of cuBLAS workspace (0: none). The
    /// GPU plan also gives each column reduction that would not fill the GPU the scratch of
    /// its split (`FusedKernel::workspace`).
    Cuda { matmul_workspace: u64 },
}

impl PlanOptions {
    /// Whether the plan is for the GPU.
    pub fn for_gpu(&self) -> bool {
        matches!(self.target, Target::Cuda { .. })
    }
}

impl Target {
    /// Bytes of workspace a product of `nbatch` matrices `m × k` by `k × n` gets on this
    /// target, `in_place` saying whether tc's CPU GEMM can take it: float operands read
    /// through positive strides, a float output (`MatMulKernel::cpu_gemm_operands`). The one rule the planner,
    /// the memory models, `verify` and the executors share.
    pub fn matmul_workspace(&self, nbatch: u64, m: u64, n: u64, k: u64, in_place: bool) -> u64 {
        match *self {
            Target::Cuda { matmul_workspace } => matmul_workspace,
            Target::Cpu if cpu_packs_b(nbatch, m, n, k, in_place) => {
                cpu_packing_floats(n, k).saturating_mul(4)
            }
            Target::Cpu => 0,
        }
    }
}

/// Columns of a packed panel of tc's CPU GEMM (its micro-tile's width).
pub const CPU_GEMM_NR: u64 = 16;
/// Columns of `B` the CPU GEMM packs at a time (a multiple of `CPU_GEMM_NR`): wider products
/// are computed in column blocks, `A` packed again for each. 512 and 1024 measured alike on
/// the examples' products (one thread; 256 and 2048 slower), 512 at half the memory (mlp's
/// `h @ w2`, k = 4096: 8 MiB).
pub const CPU_GEMM_NC: u64 = 512;
/// Rows of a task of tc's CPU GEMM at most: its thread's packed block of `A` (`MC × KC`
/// floats) and, for a product never stored whole, its thread's tile of the product (`MC`
/// rows of a column block), both outside the plan.
pub const CPU_GEMM_MC: u64 = 144;
/// The fewest output rows of a product tc's CPU GEMM takes (the `gemm` crate's small-matrix
/// paths are faster below).
pub const CPU_GEMM_MIN_ROWS: u64 = 24;

/// Multiply-adds of one matrix below which the CPU executor runs it on one thread: handing
/// it to the pool would cost about what a second thread saves (about 0.03 ms on one core).
pub const CPU_SHARE_MIN_MACS: u64 = 1 << 21;

/// Multiply-adds of each matrix below which a batched product goes to the `gemm` crate
/// (`cpu_packs_b`): about where the crate's spreading of the batch over the threads stops
/// beating tc's GEMM sharing one matrix at a time (measured below).
pub const CPU_BATCH_MIN_MACS: u64 = 1 << 24;
// A batched product's matrices tc's GEMM takes are each large enough to share.
const _: () = assert!(CPU_BATCH_MIN_MACS >= CPU_SHARE_MIN_MACS);

/// Whether kernel `i` is a product and the kernel after it a fused kernel that reads it:
/// the pair the CPU executor may run as product and epilogue, the consumer on the product's
/// finished blocks (`cpu::epilogue`), for which the plan may keep the product's operands
/// and workspace live through the consumer's step (`plan::tile`).
pub fn epilogue_pair(kernels: &[Kernel], i: usize) -> bool {
    match (
        kernels.get(i).map(|k| &k.kind),
        kernels.get(i + 1).map(|k| &k.kind),
    ) {
        (Some(KernelKind::MatMul(mm)), Some(KernelKind::Fused(f))) => {
            f.loads.iter().any(|l| l.buffer == mm.out)
        }
        _ => false,
    }
}

/// Whether tc's CPU GEMM takes a product of `nbatch` matrices `m × k` by `k × n` (on a CPU
/// with AVX2+FMA; elsewhere the `gemm` crate does, and the workspace is unused): f32 read
/// and written in place, at least `CPU_GEMM_MIN_ROWS` rows, `CPU_GEMM_NR` columns and one
/// step of `k` — and, when batched, matrices of at least `CPU_BATCH_MIN_MACS` each.
///
/// Why batched products of smaller matrices go to the `gemm` crate: tc's GEMM shares one
/// matrix at a time among the threads (one packed `B` in the workspace), and a matrix under
/// `CPU_SHARE_MIN_MACS` is not worth sharing, so such a product ran its matrices one after
/// another on one thread, and one a little larger pays a fork and a join (two with its
/// `B` packing) for each matrix; the crate's path hands all `(matrix, panel)` tasks to the
/// pool at once and needs no workspace. Measured on 2 cores (the product's kernel, best of 5 × 20
/// runs, µs at 1 → 2 threads, tc's GEMM vs the crate): 64 matrices of 128×64 by 64×128
/// 1799 → 1939 vs 1813 → 746; 8·8 of the same 1825 → 1750 vs 1692 → 891; 256 of 32×64 by
/// 64×32 588 → 603 vs 380 → 245; 48 of 64×64 by 64×256 1474 → 1306 vs 1222 → 544 — the
/// crate no slower on one thread, twice as fast on two. The alternative, tc's GEMM running
/// the matrices in parallel, each packing into its own slot of a workspace of a fixed
/// number of slots (measured with a buffer allocated per task: 1927 → 998, 1842 → 900,
/// 724 → 397, 1612 → 680), was no faster than the crate on two threads and slower on one,
/// and would grow the plan by a packed `B` a slot; this rule instead frees the product's
/// workspace. Above `CPU_SHARE_MIN_MACS` (the product's kernel through `cpubench`, 2
/// threads, best of 30, ms, tc's GEMM vs the crate, alternated twice): 4 × 128³ (2^21)
/// 0.15–0.25 vs 0.12–0.13; 8 × [256,64]@[64,256] (2^22) 0.49–0.51 vs 0.33; 4 ×
/// [256,128]@[128,256] (2^23) 0.45–0.50 vs 0.42; 16 × [128,64]@[64,1024] (2^23) 2.4–2.6 vs
/// 1.9–2.1; 4 × 256³ (2^24) 0.79–0.88 vs 0.75–0.81, a tie; 4 × 512³ alike within the
/// noise. A single matrix keeps tc's GEMM at any size (no batch to spread; through the
/// executor it measured as fast as the crate or faster from 2^21 up: [128,1024]@[1024,128]
/// 0.22 vs 0.22–0.23, [128,64]@[64,1024] 0.17 vs 0.22). The rule
/// depends on shapes alone, never on the thread count, so a plan is the same on any
/// machine.
pub fn cpu_packs_b(nbatch: u64, m: u64, n: u64, k: u64, in_place: bool) -> bool {
    let per_matrix = m.saturating_mul(n).saturating_mul(k);
    in_place
        && m >= CPU_GEMM_MIN_ROWS
        && n >= CPU_GEMM_NR
        && k > 0
        && (nbatch <= 1 || per_matrix >= CPU_BATCH_MIN_MACS)
}

/// Floats of the CPU GEMM's packed `B` for a product of `k` by `n`: `k` rows of the widest
/// column block (`CPU_GEMM_NC` columns, or all `n` rounded up to whole panels).
pub fn cpu_packing_floats(n: u64, k: u64) -> u64 {
    cpu_packing_floats_in_blocks(n, k, CPU_GEMM_NC)
}

/// Floats of the CPU GEMM's packed `B` for a `k × n` operand packed `nc` columns at a time
/// (at least one panel): `k` rows of the widest column block, in whole panels of
/// `CPU_GEMM_NR`. The one formula the planner and the GEMM itself (`cpu::gemm`) use.
pub fn cpu_packing_floats_in_blocks(n: u64, k: u64, nc: u64) -> u64 {
    k.saturating_mul(n.next_multiple_of(CPU_GEMM_NR).min(nc.max(CPU_GEMM_NR)))
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            fuse: true,
            reuse: true,
            target: Target::Cpu,
        }
    }
}

/// The executable schedule: kernels in order over buffers in one arena.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub kernels: Vec<Kernel>,
    pub buffers: Vec<Buffer>,
    /// Bytes of the one arena allocation: every `Arena`/`Workspace` buffer fits below it.
    pub arena_bytes: u64,
    /// Buffers of the inputs and params, by declaration index.
    pub inputs: Vec<BufferId>,
    pub params: Vec<BufferId>,
    pub outputs: Vec<PlanOutput>,
    pub options: PlanOptions,
    /// Fusion was asked for, but every fused plan needed a larger arena than eager
    /// execution, so these are the unfused kernels (`crate::search`, stage 3).
    pub unfused_fallback: bool,
    /// What the planner decided about each attention candidate, one line each (the fused
    /// kernel, or why the scores had to be stored), for `tc emit --plan`.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn buffer(&self, id: BufferId) -> &Buffer {
        &self.buffers[id.index()]
    }
}
