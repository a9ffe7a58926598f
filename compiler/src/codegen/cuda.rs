//! CUDA C for one `FusedKernel`: pointwise kernels (grid-stride loop, 16-byte vector
//! accesses where the layout allows) and row kernels (a warp or a block per row, the row
//! kept in registers when it fits so it is read from global memory once).
//!
//! Every size, offset and stride is a constant in the source; the only parameters are the
//! buffers' base pointers. Semantics are `schedule`'s module doc, exactly.

use super::writer::Writer;
use super::{storage_type, CudaKernel, Launch};
use crate::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use crate::schedule::{BufferId, FusedKernel, Inst, InstOp, Kernel, Level, Plan};

/// Threads per block of a pointwise kernel and of a warp-per-row kernel.
const BLOCK: u32 = 256;
/// Most blocks a grid-stride kernel launches.
const MAX_GRID: u64 = 8192;
/// Most blocks of a row kernel (rows beyond are looped over).
const MAX_ROW_GRID: u64 = 65536;
/// Threads a column-reduction kernel aims to have running (about 2048 per SM on 132 SMs).
const TARGET_THREADS: u64 = 1 << 18;
/// Rows up to this length get one warp each; longer rows one block.
const WARP_ROW_MAX: u64 = 512;
/// Most row elements a thread keeps in registers, and most cached values per thread.
const MAX_ITEMS: u64 = 16;
const MAX_CACHED_VALUES: u64 = 64;
/// Index arithmetic is 32-bit when every index stays below this (room for grid strides).
const NARROW_LIMIT: u64 = (1 << 31) - (1 << 24);

/// The kernel's pointer parameters: each distinct buffer once, loads first.
struct Params {
    buffers: Vec<BufferId>,
    written: Vec<bool>,
}

impl Params {
    fn new(k: &FusedKernel) -> Params {
        let mut buffers = Vec::new();
        for b in k
            .loads
            .iter()
            .map(|l| l.buffer)
            .chain(k.stores.iter().map(|s| s.buffer))
        {
            if !buffers.contains(&b) {
                buffers.push(b);
            }
        }
        let written = buffers
            .iter()
            .map(|b| k.stores.iter().any(|s| s.buffer == *b))
            .collect();
        Params { buffers, written }
    }

    fn index(&self, b: BufferId) -> usize {
        self.buffers.iter().position(|x| *x == b).unwrap_or(0)
    }

    fn name(&self, b: BufferId) -> String {
        format!("b{}", self.index(b))
    }

    fn signature(&self, plan: &Plan) -> String {
        let list: Vec<String> = self
            .buffers
            .iter()
            .zip(&self.written)
            .enumerate()
            .map(|(i, (b, w))| {
                let ty = storage_type(plan.buffer(*b).dtype);
                if *w {
                    format!("{ty}* b{i}")
                } else {
                    format!("const {ty}* b{i}")
                }
            })
            .collect();
        list.join(", ")
    }
}

/// A float literal that reads back as exactly `x` rounded to f32.
pub(crate) fn float_literal(x: f64) -> String {
    let f = x as f32;
    if f.is_nan() {
        "__int_as_float(0x7fc00000)".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "__int_as_float(0x7f800000)".into()
        } else {
            "__int_as_float(0xff800000)".into()
        }
    } else {
        let s = format!("{f:?}");
        let s = if s.contains('.') || s.contains('e') || s.contains("inf") {
            s
        } else {
            format!("{s}.0")
        };
        if f.is_sign_negative() {
            format!("({s}f)")
        } else {
            format!("{s}f")
        }
    }
}

/// Widening a stored element to f32.
pub(crate) fn load_conv(dtype: DType, raw: &str) -> String {
    match dtype {
        DType::F32 => raw.to_string(),
        DType::F16 => format!("tc_f16_to_f32({raw})"),
        DType::BF16 => format!("tc_bf16_to_f32({raw})"),
    }
}

/// Rounding an f32 to a stored element.
pub(crate) fn store_conv(dtype: DType, value: &str) -> String {
    match dtype {
        DType::F32 => value.to_string(),
        DType::F16 => format!("tc_f32_to_f16({value})"),
        DType::BF16 => format!("tc_f32_to_bf16({value})"),
    }
}

fn v(i: usize) -> String {
    format!("v{i}")
}

/// The f32 expression of an arithmetic inst (not `Load`/`Reduce`).
fn arith_expr(k: &FusedKernel, inst: &Inst) -> String {
    match &inst.op {
        InstOp::Const(c) => float_literal(*c),
        InstOp::Unary(op, a) => {
            let a = v(*a);
            match op {
                UnaryOp::Neg => format!("-{a}"),
                UnaryOp::Abs => format!("fabsf({a})"),
                UnaryOp::Exp => format!("expf({a})"),
                UnaryOp::Log => format!("logf({a})"),
                UnaryOp::Sqrt => format!("sqrtf({a})"),
                UnaryOp::Rsqrt => format!("1.0f / sqrtf({a})"),
                UnaryOp::Sin => format!("sinf({a})"),
                UnaryOp::Cos => format!("cosf({a})"),
                UnaryOp::Tanh => format!("tanhf({a})"),
                UnaryOp::Sigmoid => format!("1.0f / (1.0f + expf(-{a}))"),
                UnaryOp::Relu => format!("({a} < 0.0f ? 0.0f : {a})"),
                UnaryOp::Gelu => format!("0.5f * {a} * (1.0f + erff({a} * 0.70710678118654752f))"),
                UnaryOp::Silu => format!("{a} / (1.0f + expf(-{a}))"),
                UnaryOp::Erf => format!("erff({a})"),
                UnaryOp::Square => format!("{a} * {a}"),
            }
        }
        InstOp::Binary(op, a, b) => {
            let (x, y) = (v(*a), v(*b));
            match op {
                BinaryOp::Add => format!("{x} + {y}"),
                BinaryOp::Sub => format!("{x} - {y}"),
                BinaryOp::Mul => format!("{x} * {y}"),
                BinaryOp::Div => format!("{x} / {y}"),
                BinaryOp::Pow => match k.body.get(*b).map(|i| &i.op) {
                    Some(InstOp::Const(c)) if *c == 2.0 => format!("{x} * {x}"),
                    Some(InstOp::Const(c)) if *c == 1.0 => x,
                    // As the CPU executor: a square is exact, not `powf`'s approximation.
                    _ => format!("({y} == 2.0f ? {x} * {x} : powf({x}, {y}))"),
                },
                BinaryOp::Maximum => format!("tc_max({x}, {y})"),
                BinaryOp::Minimum => format!("tc_min({x}, {y})"),
            }
        }
        InstOp::Cast(a) => match inst.dtype {
            DType::F32 => v(*a),
            DType::F16 => format!("tc_round_f16({})", v(*a)),
            DType::BF16 => format!("tc_round_bf16({})", v(*a)),
        },
        // Only reached for a reduction over no axes, which is the identity.
        InstOp::Reduce(_, a) => v(*a),
        InstOp::Load(_) => "0.0f".into(),
    }
}

/// `offset + Σ idx·stride` as C, skipping zero terms.
fn address(offset: i64, idx: &[String], strides: &[i64]) -> String {
    let mut terms: Vec<String> = Vec::new();
    if offset != 0 {
        terms.push(offset.to_string());
    }
    for (name, &s) in idx.iter().zip(strides) {
        match s {
            0 => {}
            1 => terms.push(name.clone()),
            _ => terms.push(format!("{name} * {s}")),
        }
    }
    if terms.is_empty() {
        "0".into()
    } else {
        terms.join(" + ")
    }
}

/// Emits `const idx k_d = …` for each axis of `sizes` from the linear index `var`; returns
/// the per-axis names.
fn decompose(w: &mut Writer, idx_t: &str, var: &str, prefix: &str, sizes: &[u64]) -> Vec<String> {
    match sizes.len() {
        0 => Vec::new(),
        1 => vec![var.to_string()],
        n => {
            let q = format!("{prefix}q");
            w.line(format!("{idx_t} {q} = {var};"));
            let mut names = vec![String::new(); n];
            for d in (1..n).rev() {
                let name = format!("{prefix}{d}");
                w.line(format!(
                    "const {idx_t} {name} = {q} % {}; {q} /= {};",
                    sizes[d], sizes[d]
                ));
                names[d] = name;
            }
            let name = format!("{prefix}0");
            w.line(format!("const {idx_t} {name} = {q};"));
            names[0] = name;
            names
        }
    }
}

/// The kernel's domain after dropping size-1 axes and merging neighbours that every load
/// walks contiguously (stores are contiguous in domain order, so they always merge).
struct Axes {
    sizes: Vec<u64>,
    reduce: Vec<bool>,
    /// Per load, a stride per collapsed axis.
    strides: Vec<Vec<i64>>,
}

fn collapse(k: &FusedKernel) -> Axes {
    let keep: Vec<usize> = (0..k.domain.len()).filter(|&d| k.domain[d] != 1).collect();
    let mut axes = Axes {
        sizes: keep.iter().map(|&d| k.domain[d]).collect(),
        reduce: keep.iter().map(|d| k.reduce_axes.contains(d)).collect(),
        strides: k
            .loads
            .iter()
            .map(|l| {
                keep.iter()
                    .map(|&d| l.strides.get(d).copied().unwrap_or(0))
                    .collect()
            })
            .collect(),
    };
    let mut d = 0;
    while d + 1 < axes.sizes.len() {
        let inner = axes.sizes[d + 1] as i64;
        let mergeable = axes.reduce[d] == axes.reduce[d + 1]
            && axes
                .strides
                .iter()
                .all(|s| s[d] == s[d + 1].saturating_mul(inner));
        if mergeable {
            axes.sizes[d] *= axes.sizes[d + 1];
            axes.sizes.remove(d + 1);
            axes.reduce.remove(d);
            for s in &mut axes.strides {
                s.remove(d);
            }
        } else {
            d += 1;
        }
    }
    axes
}

fn contiguous(sizes: &[u64]) -> Vec<i64> {
    crate::ir::types::contiguous_strides(sizes)
}

/// Largest element index any access of the kernel reaches (and the domain size).
fn max_index(k: &FusedKernel) -> u64 {
    let numel: u64 = k.domain.iter().product();
    let mut m = numel;
    for l in &k.loads {
        let reach: i128 = l.offset as i128
            + k.domain
                .iter()
                .zip(&l.strides)
                .map(|(&s, &st)| (s as i128 - 1) * (st as i128).abs())
                .sum::<i128>();
        m = m.max(reach.clamp(0, u64::MAX as i128) as u64);
    }
    m
}

fn header(
    w: &mut Writer,
    plan: &Plan,
    kernel: &Kernel,
    k: &FusedKernel,
    params: &Params,
    strategy: &str,
) {
    let lines: Vec<String> = kernel.lines.iter().map(|l| l.to_string()).collect();
    w.line(format!(
        "// {}: {} (source lines {})",
        kernel.name,
        kernel.ops.join(", "),
        lines.join(", ")
    ));
    w.line(format!(
        "// domain {:?}, reduce axes {:?}: {strategy}",
        k.domain, k.reduce_axes
    ));
    for (i, l) in k.loads.iter().enumerate() {
        let b = plan.buffer(l.buffer);
        w.line(format!(
            "//   load {i}: {} = {} ({}), offset {}, strides {:?}",
            params.name(l.buffer),
            b.name,
            l.dtype,
            l.offset,
            l.strides
        ));
    }
    for s in &k.stores {
        let b = plan.buffer(s.buffer);
        let level = match k.body.get(s.inst).map(|i| i.level) {
            Some(Level::Row) => "row order",
            _ => "domain order",
        };
        w.line(format!(
            "//   store: {} = {} ({}) <- v{}, {level}",
            params.name(s.buffer),
            b.name,
            b.dtype,
            s.inst
        ));
    }
}

pub(crate) fn emit_fused(
    plan: &Plan,
    index: usize,
    kernel: &Kernel,
    k: &FusedKernel,
) -> CudaKernel {
    let params = Params::new(k);
    let (source, launch) = if k.reduce_axes.is_empty() {
        emit_pointwise(plan, kernel, k, &params)
    } else {
        emit_rows(plan, kernel, k, &params)
    };
    CudaKernel {
        kernel_index: index,
        name: kernel.name.clone(),
        source,
        launch,
        params: params.buffers,
    }
}

// ---------------------------------------------------------------- pointwise kernels

/// How a load is read in the vector loop.
enum VecLoad {
    /// One aligned 16- or 8-byte access.
    Vector,
    /// The same element for the whole vector (stride 0 on the innermost axis).
    Broadcast,
    /// One scalar access per lane.
    Gather,
}

fn vector_type(dtype: DType, lanes: u64) -> &'static str {
    match (dtype, lanes) {
        (DType::F32, _) => "float4",
        (_, 8) => "uint4",
        _ => "uint2",
    }
}

/// The `lanes` raw elements of vector `r` as C expressions.
fn unpack(dtype: DType, lanes: u64, r: &str) -> Vec<String> {
    let words = ["x", "y", "z", "w"];
    match dtype {
        DType::F32 => words.iter().map(|c| format!("{r}.{c}")).collect(),
        _ => (0..lanes as usize)
            .map(|e| {
                let word = words[e / 2];
                if e % 2 == 0 {
                    format!("(unsigned short)({r}.{word} & 0xffffu)")
                } else {
                    format!("(unsigned short)({r}.{word} >> 16)")
                }
            })
            .collect(),
    }
}

/// Statements storing the f32 lanes `o[0..lanes]` to `ptr` as one vector.
fn pack_store(w: &mut Writer, dtype: DType, lanes: u64, ptr: &str, o: &str, tmp: &str) {
    let words = ["x", "y", "z", "w"];
    let ty = vector_type(dtype, lanes);
    w.line(format!("{ty} {tmp};"));
    match dtype {
        DType::F32 => {
            for (e, c) in words.iter().enumerate() {
                w.line(format!("{tmp}.{c} = {o}[{e}];"));
            }
        }
        _ => {
            for (word, name) in words.iter().enumerate().take(lanes as usize / 2) {
                let lo = store_conv(dtype, &format!("{o}[{}]", 2 * word));
                let hi = store_conv(dtype, &format!("{o}[{}]", 2 * word + 1));
                w.line(format!(
                    "{tmp}.{} = (unsigned int){lo} | ((unsigned int){hi} << 16);",
                    name
                ));
            }
        }
    }
    w.line(format!("*reinterpret_cast<{ty}*>({ptr}) = {tmp};"));
}

/// The body of one element: `const float vI = …;` for every inst, with `load(l)` giving the
/// f32 value of load `l`.
fn pointwise_body(w: &mut Writer, k: &FusedKernel, load: &dyn Fn(usize) -> String) {
    for (i, inst) in k.body.iter().enumerate() {
        match &inst.op {
            InstOp::Const(_) => {}
            InstOp::Load(l) => w.line(format!("const float {} = {};", v(i), load(*l))),
            _ => w.line(format!("const float {} = {};", v(i), arith_expr(k, inst))),
        }
    }
}

fn consts(w: &mut Writer, k: &FusedKernel) {
    for (i, inst) in k.body.iter().enumerate() {
        if let InstOp::Const(c) = inst.op {
            w.line(format!("const float {} = {};", v(i), float_literal(c)));
        }
    }
}

fn emit_pointwise(
    plan: &Plan,
    kernel: &Kernel,
    k: &FusedKernel,
    params: &Params,
) -> (String, Launch) {
    let axes = collapse(k);
    let (sizes, strides) = if axes.sizes.is_empty() {
        (vec![1u64], vec![vec![0i64]; k.loads.len()])
    } else {
        (axes.sizes.clone(), axes.strides.clone())
    };
    let n: u64 = sizes.iter().product();
    let rank = sizes.len();
    let last = sizes[rank - 1];
    let any_f32 = k
        .loads
        .iter()
        .map(|l| l.dtype)
        .chain(k.stores.iter().map(|s| plan.buffer(s.buffer).dtype))
        .any(|d| d == DType::F32);
    let lanes: u64 = if any_f32 { 4 } else { 8 };
    let vectorize = n >= lanes && (rank == 1 || last % lanes == 0) && !k.stores.is_empty();
    let work = if vectorize { n / lanes } else { n };
    let grid = work.div_ceil(BLOCK as u64).clamp(1, MAX_GRID);
    let wide = max_index(k).max(n) >= NARROW_LIMIT;
    let idx_t = if wide { "long long" } else { "int" };

    let strategy =
        if vectorize {
            format!(
            "pointwise over {n} elements ({sizes:?} collapsed), {lanes}-wide vectors{}, {} indices",
            if !n.is_multiple_of(lanes) { " with a scalar tail" } else { "" },
            if wide { "64-bit" } else { "32-bit" }
        )
        } else {
            format!(
                "pointwise over {n} elements ({sizes:?} collapsed), scalar, {} indices",
                if wide { "64-bit" } else { "32-bit" }
            )
        };
    let mut w = Writer::new();
    header(&mut w, plan, kernel, k, params, &strategy);
    w.open(format!(
        "extern \"C\" __global__ void __launch_bounds__({BLOCK}) {}({})",
        kernel.name,
        params.signature(plan)
    ));
    consts(&mut w, k);
    w.line(format!(
        "const {idx_t} tc_start = ({idx_t})blockIdx.x * blockDim.x + threadIdx.x;"
    ));
    w.line(format!(
        "const {idx_t} tc_step = ({idx_t})gridDim.x * blockDim.x;"
    ));

    let scalar_loop = |w: &mut Writer, from: &str| {
        w.open(format!("for ({idx_t} i = {from}; i < {n}; i += tc_step)"));
        let idx = decompose(w, idx_t, "i", "i", &sizes);
        let load = |l: usize| {
            let ld = &k.loads[l];
            let addr = address(ld.offset, &idx, &strides[l]);
            load_conv(ld.dtype, &format!("{}[{addr}]", params.name(ld.buffer)))
        };
        pointwise_body(w, k, &load);
        for s in &k.stores {
            let dt = plan.buffer(s.buffer).dtype;
            w.line(format!(
                "{}[i] = {};",
                params.name(s.buffer),
                store_conv(dt, &v(s.inst))
            ));
        }
        w.close();
    };

    if vectorize {
        let nv = n / lanes;
        w.open(format!(
            "for ({idx_t} vi = tc_start; vi < {nv}; vi += tc_step)"
        ));
        w.line(format!("const {idx_t} i = vi * {lanes};"));
        let idx = decompose(&mut w, idx_t, "i", "i", &sizes);
        let kinds: Vec<VecLoad> = k
            .loads
            .iter()
            .enumerate()
            .map(|(l, ld)| {
                let s = &strides[l];
                let inner = s[rank - 1];
                let outer_aligned = s[..rank - 1].iter().all(|x| x % lanes as i64 == 0);
                if inner == 0 {
                    VecLoad::Broadcast
                } else if inner == 1 && ld.offset % lanes as i64 == 0 && outer_aligned {
                    VecLoad::Vector
                } else {
                    VecLoad::Gather
                }
            })
            .collect();
        let used: Vec<bool> = (0..k.loads.len())
            .map(|l| {
                k.body
                    .iter()
                    .any(|i| matches!(i.op, InstOp::Load(x) if x == l))
            })
            .collect();
        for (l, ld) in k.loads.iter().enumerate() {
            if !used[l] {
                continue;
            }
            let b = params.name(ld.buffer);
            let addr = address(ld.offset, &idx, &strides[l]);
            match kinds[l] {
                VecLoad::Vector => {
                    let ty = vector_type(ld.dtype, lanes);
                    w.line(format!(
                        "const {ty} r{l} = *reinterpret_cast<const {ty}*>({b} + {addr});"
                    ));
                    let raw = unpack(ld.dtype, lanes, &format!("r{l}"));
                    let vals: Vec<String> = raw.iter().map(|r| load_conv(ld.dtype, r)).collect();
                    w.line(format!(
                        "const float a{l}[{lanes}] = {{{}}};",
                        vals.join(", ")
                    ));
                }
                VecLoad::Broadcast => {
                    w.line(format!(
                        "const float s{l} = {};",
                        load_conv(ld.dtype, &format!("{b}[{addr}]"))
                    ));
                }
                VecLoad::Gather => w.line(format!("const {idx_t} g{l} = {addr};")),
            }
        }
        for (si, _) in k.stores.iter().enumerate() {
            w.line(format!("float o{si}[{lanes}];"));
        }
        w.line("#pragma unroll");
        w.open(format!("for (int e = 0; e < {lanes}; ++e)"));
        let load = |l: usize| {
            let ld = &k.loads[l];
            match kinds[l] {
                VecLoad::Vector => format!("a{l}[e]"),
                VecLoad::Broadcast => format!("s{l}"),
                VecLoad::Gather => {
                    let inner = strides[l][rank - 1];
                    load_conv(
                        ld.dtype,
                        &format!("{}[g{l} + e * {inner}]", params.name(ld.buffer)),
                    )
                }
            }
        };
        pointwise_body(&mut w, k, &load);
        for (si, s) in k.stores.iter().enumerate() {
            w.line(format!("o{si}[e] = {};", v(s.inst)));
        }
        w.close();
        for (si, s) in k.stores.iter().enumerate() {
            let dt = plan.buffer(s.buffer).dtype;
            pack_store(
                &mut w,
                dt,
                lanes,
                &format!("{} + i", params.name(s.buffer)),
                &format!("o{si}"),
                &format!("w{si}"),
            );
        }
        w.close();
        if !n.is_multiple_of(lanes) {
            w.line("// scalar tail");
            scalar_loop(&mut w, &format!("{} + tc_start", nv * lanes));
        }
    } else {
        scalar_loop(&mut w, "tc_start");
    }
    w.close();
    let launch = Launch::Grid {
        grid: [grid as u32, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes: 0,
    };
    (w.finish(), launch)
}

// ---------------------------------------------------------------- row kernels

/// Whether each inst is a per-row value (computed once per row) and after which reduction
/// phase it can be computed (0: before any).
struct RowInfo {
    row: Vec<bool>,
    depth: Vec<usize>,
}

fn row_info(k: &FusedKernel, reduce_strides_zero: &[bool]) -> RowInfo {
    let n = k.body.len();
    let mut row = vec![false; n];
    let mut depth = vec![0usize; n];
    for (i, inst) in k.body.iter().enumerate() {
        let ops = inst.op.operands();
        let d = ops
            .iter()
            .map(|&o| depth.get(o).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        match &inst.op {
            InstOp::Reduce(..) => {
                row[i] = true;
                depth[i] = d + 1;
            }
            InstOp::Const(_) => row[i] = true,
            InstOp::Load(l) => {
                row[i] = inst.level == Level::Row
                    && reduce_strides_zero.get(*l).copied().unwrap_or(false);
            }
            _ => {
                row[i] = ops.iter().all(|&o| row.get(o).copied().unwrap_or(false));
                depth[i] = d;
            }
        }
    }
    RowInfo { row, depth }
}

/// The element-level insts `targets` need, in body order.
fn element_closure(k: &FusedKernel, info: &RowInfo, targets: &[usize]) -> Vec<usize> {
    let mut need = vec![false; k.body.len()];
    let mut stack: Vec<usize> = targets.iter().copied().filter(|&t| !info.row[t]).collect();
    while let Some(i) = stack.pop() {
        if need[i] {
            continue;
        }
        need[i] = true;
        // (a `Reduce` is a row value, so never on the stack: only element insts are walked)
        stack.extend(
            k.body[i]
                .op
                .operands()
                .into_iter()
                .filter(|&o| !info.row[o]),
        );
    }
    (0..k.body.len()).filter(|&i| need[i]).collect()
}

/// Whether two buffers can share memory (the same buffer, the same input or param, or
/// overlapping arena ranges).
fn overlaps(plan: &Plan, a: BufferId, b: BufferId) -> bool {
    use crate::schedule::BufferKind as K;
    if a == b {
        return true;
    }
    let (x, y) = (plan.buffer(a), plan.buffer(b));
    match (&x.kind, &y.kind) {
        (K::Arena | K::Workspace, K::Arena | K::Workspace) => {
            x.offset < y.offset + y.bytes && y.offset < x.offset + x.bytes
        }
        (K::Input { index: i }, K::Input { index: j })
        | (K::Param { index: i }, K::Param { index: j }) => i == j,
        _ => false,
    }
}

fn reduce_parts(op: ReduceOp) -> (&'static str, &'static str, &'static str) {
    // (initial value, combine function, reduction suffix)
    match op {
        ReduceOp::Sum | ReduceOp::Mean => ("0.0f", "tc_add", "sum"),
        ReduceOp::Max => ("__int_as_float(0xff800000)", "tc_max", "max"),
        ReduceOp::Min => ("__int_as_float(0x7f800000)", "tc_min", "min"),
    }
}

/// A reduction that needs the result of a reduction of the pass before, computed in that
/// pass's read of the row instead, for rows too long to keep in registers (which would
/// otherwise be read from memory once more).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Online {
    /// `sum` = Σ exp(a − `max`), `max` = max(a): online softmax.
    Softmax { max: usize, sum: usize },
    /// `var` = Σ or mean of (a − `mean`)², `mean` = mean(a): Welford.
    Welford { mean: usize, var: usize },
}

impl Online {
    /// The reduction of the earlier pass, and the one folded into it.
    fn parts(self) -> (usize, usize) {
        match self {
            Online::Softmax { max, sum } => (max, sum),
            Online::Welford { mean, var } => (mean, var),
        }
    }
}

/// `r` as the second half of an `Online` pair, if its operand has exactly that shape. No
/// `Cast` may stand between the steps: a rounding there (f16/bf16 programs round after each
/// op) depends on the final max or mean, which a single pass does not know yet.
fn online_form(k: &FusedKernel, info: &RowInfo, r: usize) -> Option<Online> {
    let op = |i: usize| &k.body[i].op;
    let elem = |ids: &[usize]| ids.iter().all(|&i| !info.row[i]);
    let InstOp::Reduce(red, x) = *op(r) else {
        return None;
    };
    match (red, op(x)) {
        (ReduceOp::Sum, &InstOp::Unary(UnaryOp::Exp, d)) => {
            let InstOp::Binary(BinaryOp::Sub, a, m) = *op(d) else {
                return None;
            };
            let same = matches!(*op(m), InstOp::Reduce(ReduceOp::Max, a2) if a2 == a);
            (same && elem(&[x, d, a])).then_some(Online::Softmax { max: m, sum: r })
        }
        (ReduceOp::Sum | ReduceOp::Mean, &InstOp::Binary(bop, d, e)) => {
            let square = match bop {
                BinaryOp::Mul => d == e,
                BinaryOp::Pow => matches!(*op(e), InstOp::Const(c) if c == 2.0),
                _ => false,
            };
            let InstOp::Binary(BinaryOp::Sub, a, u) = *op(d) else {
                return None;
            };
            let same = matches!(*op(u), InstOp::Reduce(ReduceOp::Mean, a2) if a2 == a);
            (square && same && elem(&[x, d, a])).then_some(Online::Welford { mean: u, var: r })
        }
        _ => None,
    }
}

/// The `Online` pairs of a kernel whose rows are re-read in each pass: a pass is folded
/// into the one before when every reduction of it pairs with a distinct reduction there.
/// Welford counts in f32, so rows must stay below 2^24 elements.
fn online_pairs(k: &FusedKernel, info: &RowInfo, len: u64) -> Vec<Online> {
    let max_depth = info.depth.iter().copied().max().unwrap_or(0);
    let mut pairs: Vec<Online> = Vec::new();
    let mut folded = vec![false; max_depth + 1];
    for phase in 2..=max_depth {
        if folded[phase - 1] {
            continue;
        }
        let reduces: Vec<usize> = (0..k.body.len())
            .filter(|&i| matches!(k.body[i].op, InstOp::Reduce(..)) && info.depth[i] == phase)
            .collect();
        let forms: Option<Vec<Online>> = reduces.iter().map(|&r| online_form(k, info, r)).collect();
        let Some(forms) = forms.filter(|f| !f.is_empty()) else {
            continue;
        };
        let mut firsts: Vec<usize> = forms.iter().map(|f| f.parts().0).collect();
        let earlier = firsts.iter().all(|&f| info.depth[f] == phase - 1);
        let welford = forms.iter().any(|f| matches!(f, Online::Welford { .. }));
        firsts.sort_unstable();
        firsts.dedup();
        if earlier && firsts.len() == forms.len() && !(welford && len >= 1 << 24) {
            folded[phase] = true;
            pairs.extend(forms);
        }
    }
    pairs
}

fn emit_rows(plan: &Plan, kernel: &Kernel, k: &FusedKernel, params: &Params) -> (String, Launch) {
    let axes = collapse(k);
    let row_axes: Vec<usize> = (0..axes.sizes.len()).filter(|&d| !axes.reduce[d]).collect();
    let red_axes: Vec<usize> = (0..axes.sizes.len()).filter(|&d| axes.reduce[d]).collect();
    let row_sizes: Vec<u64> = row_axes.iter().map(|&d| axes.sizes[d]).collect();
    let red_sizes: Vec<u64> = red_axes.iter().map(|&d| axes.sizes[d]).collect();
    let rows: u64 = row_sizes.iter().product();
    let len: u64 = red_sizes.iter().product();
    let cstrides = contiguous(&axes.sizes);
    let reduce_zero: Vec<bool> = axes
        .strides
        .iter()
        .map(|s| red_axes.iter().all(|&d| s[d] == 0))
        .collect();
    let info = row_info(k, &reduce_zero);

    // Threads that share one row: 1 when the innermost axis is a row axis (neighbouring
    // threads then read neighbouring rows, coalesced), a warp for short rows, else a block.
    let innermost_is_row = axes.reduce.last() == Some(&false);
    let group: u64 = if innermost_is_row {
        1
    } else if len <= WARP_ROW_MAX {
        32
    } else {
        len.div_ceil(8).next_power_of_two().clamp(128, 1024)
    };
    // Row-per-thread kernels with few rows split each row over `slices` warps-worth of
    // threads (lane = row, warp = slice) so enough loads are in flight.
    let slices: u64 = if innermost_is_row {
        (TARGET_THREADS / rows.max(1)).clamp(1, 32).min(len.max(1))
    } else {
        1
    };
    let warp_mode = group <= 32;
    let threads = if innermost_is_row { slices } else { group };
    let items = len.div_ceil(threads);
    let cached: Vec<usize> = (0..k.loads.len())
        .filter(|&l| {
            k.body
                .iter()
                .enumerate()
                .any(|(i, inst)| matches!(inst.op, InstOp::Load(x) if x == l) && !info.row[i])
        })
        .collect();
    let cache = !cached.is_empty()
        && items <= MAX_ITEMS
        // 1024-thread blocks have at most 64 registers per thread: cache less there.
        && cached.len() as u64 * items <= if threads >= 1024 { MAX_CACHED_VALUES / 2 } else { MAX_CACHED_VALUES };
    let block: u64 = if slices > 1 {
        32 * slices
    } else if warp_mode {
        BLOCK as u64
    } else {
        threads
    };
    let rows_per_block = if slices > 1 {
        32
    } else if warp_mode {
        block / group
    } else {
        1
    };
    let grid = rows.div_ceil(rows_per_block).clamp(1, MAX_ROW_GRID);
    let wide = max_index(k).max(rows.saturating_mul(len)) >= NARROW_LIMIT;
    let idx_t = if wide { "long long" } else { "int" };
    let exact = len.is_multiple_of(threads);
    // Rows re-read in each pass: fold a pass into the one before where the maths allows.
    let online = if cache || slices > 1 {
        Vec::new()
    } else {
        online_pairs(k, &info, len)
    };
    let block_mode = !warp_mode && group > 1;

    let strategy = format!(
        "{} rows of {} elements; {}; {}; {} indices",
        rows,
        len,
        match group {
            1 if slices > 1 => format!("32 rows per block, each split over {slices} threads"),
            1 => "one thread per row".to_string(),
            32 => "one warp per row".to_string(),
            _ => format!("one block of {threads} threads per row"),
        },
        if cache {
            format!("row held in registers ({items} per thread), read once")
        } else if online.is_empty() {
            "re-read from memory in each pass".into()
        } else {
            let names: Vec<&str> = online
                .iter()
                .map(|o| match o {
                    Online::Softmax { .. } => "online softmax",
                    Online::Welford { .. } => "Welford mean and variance",
                })
                .collect();
            format!(
                "re-read from memory in each pass, {} in one",
                names.join(", ")
            )
        },
        if wide { "64-bit" } else { "32-bit" }
    );
    let mut w = Writer::new();
    header(&mut w, plan, kernel, k, params, &strategy);
    w.open(format!(
        "extern \"C\" __global__ void __launch_bounds__({block}) {}({})",
        kernel.name,
        params.signature(plan)
    ));
    if slices > 1 {
        w.line("__shared__ float tc_smem[33 * 32];");
    } else if !warp_mode {
        w.line("__shared__ float tc_smem[32];");
    }
    if block_mode && !online.is_empty() {
        w.line("__shared__ float tc_smem2[96];");
    }
    consts(&mut w, k);
    if slices > 1 {
        w.line("const int tid = threadIdx.x >> 5;");
        w.line(format!("const {idx_t} tc_row0 = ({idx_t})blockIdx.x * 32;"));
        w.line(format!("const {idx_t} tc_rstep = ({idx_t})gridDim.x * 32;"));
    } else if group == 1 {
        w.line("const int tid = 0;");
        w.line(format!(
            "const {idx_t} tc_row0 = ({idx_t})blockIdx.x * {rows_per_block} + threadIdx.x;"
        ));
        w.line(format!(
            "const {idx_t} tc_rstep = ({idx_t})gridDim.x * {rows_per_block};"
        ));
    } else if warp_mode {
        w.line("const int tid = threadIdx.x & 31;");
        w.line(format!(
            "const {idx_t} tc_row0 = ({idx_t})blockIdx.x * {rows_per_block} + (threadIdx.x >> 5);"
        ));
        w.line(format!(
            "const {idx_t} tc_rstep = ({idx_t})gridDim.x * {rows_per_block};"
        ));
    } else {
        w.line("const int tid = threadIdx.x;");
        w.line(format!("const {idx_t} tc_row0 = blockIdx.x;"));
        w.line(format!("const {idx_t} tc_rstep = gridDim.x;"));
    }
    if slices > 1 {
        // Every thread of the block runs every iteration (the reductions synchronise the
        // block); lanes past the last row work on the last row and store nothing.
        w.open(format!(
            "for ({idx_t} tc_rb = tc_row0; tc_rb < {rows}; tc_rb += tc_rstep)"
        ));
        w.line(format!(
            "const bool tc_live = tc_rb + (threadIdx.x & 31) < {rows};"
        ));
        w.line(format!(
            "const {idx_t} r = tc_live ? tc_rb + (threadIdx.x & 31) : {};",
            rows - 1
        ));
    } else {
        w.open(format!(
            "for ({idx_t} r = tc_row0; r < {rows}; r += tc_rstep)"
        ));
    }
    let ridx = decompose(&mut w, idx_t, "r", "r", &row_sizes);
    let used: Vec<bool> = (0..k.loads.len())
        .map(|l| {
            k.body
                .iter()
                .any(|i| matches!(i.op, InstOp::Load(x) if x == l))
        })
        .collect();
    for (l, ld) in k.loads.iter().enumerate() {
        if used[l] {
            let s: Vec<i64> = row_axes.iter().map(|&d| axes.strides[l][d]).collect();
            w.line(format!(
                "const {idx_t} base{l} = {};",
                address(ld.offset, &ridx, &s)
            ));
        }
    }
    let elem_stores: Vec<usize> = (0..k.stores.len())
        .filter(|&s| k.body.get(k.stores[s].inst).map(|i| i.level) != Some(Level::Row))
        .collect();
    if !elem_stores.is_empty() {
        let s: Vec<i64> = row_axes.iter().map(|&d| cstrides[d]).collect();
        w.line(format!("const {idx_t} obase = {};", address(0, &ridx, &s)));
    }
    let red_strides =
        |l: usize| -> Vec<i64> { red_axes.iter().map(|&d| axes.strides[l][d]).collect() };
    let global_load = |l: usize, jidx: &[String]| {
        let ld = &k.loads[l];
        let off = address(0, jidx, &red_strides(l));
        load_conv(
            ld.dtype,
            &format!("{}[base{l} + {off}]", params.name(ld.buffer)),
        )
    };

    // The loop over the row's elements: cached (unrolled over register slots) or strided.
    let open_loop = |w: &mut Writer, need_j: bool| {
        if cache {
            w.line("#pragma unroll");
            w.open(format!("for (int t = 0; t < {items}; ++t)"));
            if need_j || !exact {
                w.line(format!("const {idx_t} j = tid + t * {threads};"));
            }
            if !exact {
                w.open(format!("if (j < {len})"));
            }
        } else {
            w.open(format!("for ({idx_t} j = tid; j < {len}; j += {threads})"));
        }
    };
    let close_loop = |w: &mut Writer| {
        if cache && !exact {
            w.close();
        }
        w.close();
    };
    // Element insts `list` inside the loop; `jidx` names the reduce-axis indices.
    let emit_elems = |w: &mut Writer, list: &[usize], jidx: &[String]| {
        for &i in list {
            let inst = &k.body[i];
            match &inst.op {
                InstOp::Load(l) => {
                    let val = if cache {
                        format!("c{l}[t]")
                    } else {
                        global_load(*l, jidx)
                    };
                    w.line(format!("const float {} = {val};", v(i)));
                }
                _ => w.line(format!("const float {} = {};", v(i), arith_expr(k, inst))),
            }
        }
    };
    let needs_jidx = |list: &[usize], stores: bool| {
        stores
            || (!cache
                && list
                    .iter()
                    .any(|&i| matches!(k.body[i].op, InstOp::Load(_))))
    };

    if cache {
        for &l in &cached {
            w.line(format!("float c{l}[{items}];"));
        }
        w.line("#pragma unroll");
        w.open(format!("for (int t = 0; t < {items}; ++t)"));
        w.line(format!("const {idx_t} j = tid + t * {threads};"));
        if !exact {
            w.open(format!("if (j < {len})"));
        }
        let jidx = decompose(&mut w, idx_t, "j", "j", &red_sizes);
        for &l in &cached {
            w.line(format!("c{l}[t] = {};", global_load(l, &jidx)));
        }
        if !exact {
            w.close();
            w.open("else");
            for &l in &cached {
                w.line(format!("c{l}[t] = 0.0f;"));
            }
            w.close();
        }
        w.close();
    }
    // Row values available before any reduction, then each reduction phase.
    let max_depth = info.depth.iter().copied().max().unwrap_or(0);
    let row_insts_at = |w: &mut Writer, depth: usize| {
        for (i, inst) in k.body.iter().enumerate() {
            if !info.row[i] || info.depth[i] != depth {
                continue;
            }
            match &inst.op {
                InstOp::Const(_) | InstOp::Reduce(..) => {}
                InstOp::Load(l) => {
                    let ld = &k.loads[*l];
                    w.line(format!(
                        "const float {} = {};",
                        v(i),
                        load_conv(ld.dtype, &format!("{}[base{l}]", params.name(ld.buffer)))
                    ));
                }
                _ => w.line(format!("const float {} = {};", v(i), arith_expr(k, inst))),
            }
        }
    };
    // Element stores that need no reduction are written during the first pass (saving a
    // second read of the row) unless their memory is something the kernel loads.
    let loaded: Vec<BufferId> = k.loads.iter().map(|l| l.buffer).collect();
    let early: Vec<usize> = elem_stores
        .iter()
        .copied()
        .filter(|&s| {
            let st = &k.stores[s];
            max_depth >= 1
                && info.depth.get(st.inst) == Some(&0)
                && !loaded.iter().any(|&b| overlaps(plan, b, st.buffer))
        })
        .collect();
    let late: Vec<usize> = elem_stores
        .iter()
        .copied()
        .filter(|s| !early.contains(s))
        .collect();
    let cs: Vec<i64> = red_axes.iter().map(|&d| cstrides[d]).collect();
    let store_lines = |w: &mut Writer, stores: &[usize], jidx: &[String]| {
        let off = address(0, jidx, &cs);
        for &s in stores {
            let st = &k.stores[s];
            let dt = plan.buffer(st.buffer).dtype;
            w.line(format!(
                "{}{}[obase + {off}] = {};",
                if slices > 1 { "if (tc_live) " } else { "" },
                params.name(st.buffer),
                store_conv(dt, &v(st.inst))
            ));
        }
    };
    row_insts_at(&mut w, 0);
    let pair_of = |i: usize| online.iter().copied().find(|o| o.parts().0 == i);
    for phase in 1..=max_depth {
        let reduces: Vec<usize> = (0..k.body.len())
            .filter(|&i| matches!(k.body[i].op, InstOp::Reduce(..)) && info.depth[i] == phase)
            .collect();
        let folded = online.iter().any(|o| info.depth[o.parts().1] == phase);
        if reduces.is_empty() || folded {
            // (a folded pass's reductions were finished with the pass before)
            row_insts_at(&mut w, phase);
            continue;
        }
        let pairs: Vec<Online> = reduces.iter().filter_map(|&i| pair_of(i)).collect();
        if pairs.is_empty() {
            w.line(format!("// reduction pass {phase}"));
        } else {
            w.line(format!(
                "// reduction pass {phase}, and pass {} in the same read",
                phase + 1
            ));
        }
        let operands: Vec<usize> = reduces
            .iter()
            .filter_map(|&i| match k.body[i].op {
                InstOp::Reduce(_, a) => Some(a),
                _ => None,
            })
            .collect();
        for &i in &reduces {
            if let InstOp::Reduce(op, _) = k.body[i].op {
                w.line(format!("float acc{i} = {};", reduce_parts(op).0));
            }
        }
        for p in &pairs {
            match *p {
                Online::Softmax { sum, .. } => w.line(format!("float acc{sum} = 0.0f;")),
                Online::Welford { mean, var } => {
                    w.line(format!("float tc_n{mean} = 0.0f;"));
                    w.line(format!("float acc{var} = 0.0f;"));
                }
            }
        }
        let stores_here: &[usize] = if phase == 1 { &early } else { &[] };
        let mut targets = operands.clone();
        targets.extend(stores_here.iter().map(|&s| k.stores[s].inst));
        let list = element_closure(k, &info, &targets);
        let need_j = needs_jidx(&list, !stores_here.is_empty());
        open_loop(&mut w, need_j);
        let jidx = if need_j {
            decompose(&mut w, idx_t, "j", "j", &red_sizes)
        } else {
            Vec::new()
        };
        emit_elems(&mut w, &list, &jidx);
        store_lines(&mut w, stores_here, &jidx);
        for &i in &reduces {
            let InstOp::Reduce(op, a) = k.body[i].op else {
                continue;
            };
            let a = v(a);
            match pair_of(i) {
                Some(Online::Softmax { sum, .. }) => {
                    w.line(format!("const float tc_m{i} = tc_max(acc{i}, {a});"));
                    w.line(format!(
                        "if (tc_m{i} != acc{i}) {{ acc{sum} *= expf(acc{i} - tc_m{i}); acc{i} = tc_m{i}; }}"
                    ));
                    w.line(format!(
                        "if ({a} != __int_as_float(0xff800000)) acc{sum} += expf({a} - acc{i});"
                    ));
                }
                Some(Online::Welford { var, .. }) => {
                    w.line(format!("tc_n{i} += 1.0f;"));
                    w.line(format!("const float tc_d{i} = {a} - acc{i};"));
                    w.line(format!("acc{i} += tc_d{i} / tc_n{i};"));
                    w.line(format!("acc{var} += tc_d{i} * ({a} - acc{i});"));
                }
                None => w.line(format!("acc{i} = {}(acc{i}, {a});", reduce_parts(op).1)),
            }
        }
        close_loop(&mut w);
        for p in &pairs {
            let (combine, vars) = match *p {
                Online::Softmax { max, sum } => ("softmax", format!("acc{max}, acc{sum}")),
                Online::Welford { mean, var } => {
                    ("welford", format!("tc_n{mean}, acc{mean}, acc{var}"))
                }
            };
            if block_mode {
                w.line(format!("tc_block_{combine}({vars}, tc_smem2);"));
            } else if warp_mode && group > 1 {
                w.line(format!("tc_warp_{combine}({vars});"));
            }
            let (first, second) = p.parts();
            w.line(format!("const float {} = acc{first};", v(first)));
            let mean_of = matches!(k.body[second].op, InstOp::Reduce(ReduceOp::Mean, _));
            if mean_of && matches!(p, Online::Welford { .. }) {
                w.line(format!(
                    "const float {} = acc{second} / {};",
                    v(second),
                    float_literal(len as f64)
                ));
            } else {
                w.line(format!("const float {} = acc{second};", v(second)));
            }
        }
        for &i in &reduces {
            if pair_of(i).is_some() {
                continue;
            }
            if let InstOp::Reduce(op, _) = k.body[i].op {
                let suffix = reduce_parts(op).2;
                if slices > 1 {
                    w.line(format!("acc{i} = tc_slice_{suffix}(acc{i}, tc_smem);"));
                } else if group == 1 {
                    // one thread holds the whole row: nothing to combine
                } else if warp_mode {
                    w.line(format!("acc{i} = tc_warp_{suffix}(acc{i});"));
                } else {
                    w.line(format!("acc{i} = tc_block_{suffix}(acc{i}, tc_smem);"));
                }
                if op == ReduceOp::Mean {
                    w.line(format!(
                        "const float {} = acc{i} / {};",
                        v(i),
                        float_literal(len as f64)
                    ));
                } else {
                    w.line(format!("const float {} = acc{i};", v(i)));
                }
            }
        }
        row_insts_at(&mut w, phase);
    }
    if !late.is_empty() {
        w.line("// write the row");
        let targets: Vec<usize> = late.iter().map(|&s| k.stores[s].inst).collect();
        let list = element_closure(k, &info, &targets);
        open_loop(&mut w, true);
        let jidx = decompose(&mut w, idx_t, "j", "j", &red_sizes);
        emit_elems(&mut w, &list, &jidx);
        store_lines(&mut w, &late, &jidx);
        close_loop(&mut w);
    }
    let row_stores: Vec<usize> = (0..k.stores.len())
        .filter(|s| !elem_stores.contains(s))
        .collect();
    if !row_stores.is_empty() {
        w.open(if slices > 1 {
            "if (tid == 0 && tc_live)"
        } else {
            "if (tid == 0)"
        });
        for &s in &row_stores {
            let st = &k.stores[s];
            let dt = plan.buffer(st.buffer).dtype;
            w.line(format!(
                "{}[r] = {};",
                params.name(st.buffer),
                store_conv(dt, &v(st.inst))
            ));
        }
        w.close();
    }
    w.close();
    w.close();
    let launch = Launch::Grid {
        grid: [grid as u32, 1, 1],
        block: [block as u32, 1, 1],
        shared_bytes: 0,
    };
    (w.finish(), launch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_literals_read_back_exactly() {
        for x in [
            0.0,
            1.0,
            -1.0,
            0.1,
            1e-5,
            1.5e-45,
            3.4028235e38,
            -2.5e7,
            0.70710677,
        ] {
            let lit = float_literal(x);
            let body = lit
                .trim_start_matches('(')
                .trim_end_matches(')')
                .trim_end_matches('f');
            let back: f32 = body.parse().expect("a C float literal Rust can parse");
            assert_eq!(back.to_bits(), (x as f32).to_bits(), "{x} -> {lit}");
            assert!(
                lit.contains('.') || lit.contains('e'),
                "{lit} must be a float literal"
            );
        }
        assert_eq!(float_literal(f64::INFINITY), "__int_as_float(0x7f800000)");
        assert_eq!(
            float_literal(f64::NEG_INFINITY),
            "__int_as_float(0xff800000)"
        );
        assert!(float_literal(f64::NAN).contains("0x7fc00000"));
    }

    #[test]
    fn addresses_skip_zero_terms() {
        let idx = vec!["i0".to_string(), "i1".to_string()];
        assert_eq!(address(0, &idx, &[0, 1]), "i1");
        assert_eq!(address(5, &idx, &[7, 0]), "5 + i0 * 7");
        assert_eq!(address(0, &idx, &[0, 0]), "0");
    }
}
