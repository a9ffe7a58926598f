//! CUDA C for one `FusedKernel`: pointwise kernels (grid-stride loop, 16-byte vector
//! accesses where the layout allows) and row kernels (a warp or a block per row, the row
//! kept in registers when it fits so it is read from global memory once).
//!
//! Every size, offset and stride is a constant in the source; the only parameters are the
//! buffers' base pointers. Semantics are `schedule`'s module doc, exactly.

use super::launch::{ColumnSplit, Online, PointwiseLaunch, RowLaunch, Strategy, BLOCK, FOLD_BLOCK};
use super::writer::Writer;
use super::{storage_type, CudaKernel};
use crate::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use crate::lower::{KernelIr, Level, LoadId, StoreId, Value, ValueId, ValueOp};
use crate::schedule::{BufferId, BufferKind, Kernel, Plan};

/// The kernel's pointer parameters: each distinct buffer once, loads first.
struct Params {
    buffers: Vec<BufferId>,
    written: Vec<bool>,
}

impl Params {
    /// Loads' buffers, stores' and, last, the workspace of a split column reduction.
    fn new(k: &KernelIr, workspace: Option<BufferId>) -> Params {
        let mut buffers = Vec::new();
        for b in k
            .loads
            .iter()
            .map(|l| l.buffer)
            .chain(k.stores.iter().map(|s| s.buffer))
            .chain(workspace)
        {
            if !buffers.contains(&b) {
                buffers.push(b);
            }
        }
        let written = buffers
            .iter()
            .map(|b| k.stores.iter().any(|s| s.buffer == *b) || Some(*b) == workspace)
            .collect();
        Params { buffers, written }
    }

    fn index(&self, b: BufferId) -> usize {
        self.buffers.iter().position(|x| *x == b).unwrap_or(0)
    }

    fn name(&self, b: BufferId) -> String {
        format!("b{}", self.index(b))
    }

    /// The kernel's parameter list: `const T* b0` for a buffer it only reads, `T* b1` for
    /// one it writes, each `__restrict__` where `may_alias` says no other parameter's
    /// memory overlaps it in a way that matters (one of the two written). Read-only
    /// pointers so marked may be read through the non-coherent cache; an in-place pair (a
    /// store over the storage of a load, `Buffer::in_place_of`) keeps plain pointers.
    /// Only where `restrict` is asked for: row kernels are not, since ptxas, free to move
    /// their loads, held more values at once (layernorm: 47 registers became 40 with 12
    /// bytes spilled; the softmax of mlp.tx 32 → 38, in `cuda_static_figures`).
    fn signature(&self, plan: &Plan, restrict: bool) -> String {
        let list: Vec<String> =
            self.buffers
                .iter()
                .zip(&self.written)
                .enumerate()
                .map(|(i, (b, w))| {
                    let ty = storage_type(plan.buffer(*b).dtype);
                    let restrict =
                        restrict
                            && self.buffers.iter().zip(&self.written).enumerate().all(
                                |(j, (o, ow))| j == i || !(*w || *ow) || !may_alias(plan, *b, *o),
                            );
                    let q = if restrict { " __restrict__" } else { "" };
                    if *w {
                        format!("{ty}*{q} b{i}")
                    } else {
                        format!("const {ty}*{q} b{i}")
                    }
                })
                .collect();
        list.join(", ")
    }
}

/// Whether two distinct buffers can share bytes: arena buffers (and workspaces) whose byte
/// ranges meet; an input or param is an allocation of its own.
pub(crate) fn may_alias(plan: &Plan, a: BufferId, b: BufferId) -> bool {
    if a == b {
        return true;
    }
    let range = |id: BufferId| {
        let buf = plan.buffer(id);
        match buf.kind {
            // (a tile-local product is in no CUDA plan; it has no storage to share)
            BufferKind::Input { .. } | BufferKind::Param { .. } | BufferKind::Tile => None,
            BufferKind::Arena | BufferKind::Workspace => Some((buf.offset, buf.offset + buf.bytes)),
        }
    };
    match (range(a), range(b)) {
        (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1,
        _ => false,
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

/// The C type a value of `dtype` is held in: `float` for the float dtypes (arithmetic is
/// in f32), `long long` for integers and `bool` (exact, wrapped to the dtype after each op).
pub(crate) fn value_type(dtype: DType) -> &'static str {
    if dtype.is_integral() {
        "long long"
    } else {
        "float"
    }
}

/// Widening a stored element to its value type (f32, or `long long` for integers).
pub(crate) fn load_conv(dtype: DType, raw: &str) -> String {
    match dtype {
        DType::F32 | DType::I64 => raw.to_string(),
        DType::F16 => format!("tc_f16_to_f32({raw})"),
        DType::BF16 => format!("tc_bf16_to_f32({raw})"),
        DType::I32 | DType::Bool => format!("(long long)({raw})"),
    }
}

/// Rounding a value to a stored element.
pub(crate) fn store_conv(dtype: DType, value: &str) -> String {
    match dtype {
        DType::F32 | DType::I64 => value.to_string(),
        DType::F16 => format!("tc_f32_to_f16({value})"),
        DType::BF16 => format!("tc_f32_to_bf16({value})"),
        DType::I32 => format!("(int)({value})"),
        DType::Bool => format!("(unsigned char)({value} != 0)"),
    }
}

/// A constant of `dtype` as a C literal.
pub(crate) fn literal(dtype: DType, c: f64) -> String {
    match crate::ir::eval::Value::constant(dtype, c) {
        crate::ir::eval::Value::Int(i) if i == i64::MIN => "(-9223372036854775807LL - 1)".into(),
        crate::ir::eval::Value::Int(i) => format!("{i}LL"),
        crate::ir::eval::Value::Float(_) => float_literal(c),
    }
}

fn v(i: ValueId) -> String {
    i.to_string()
}

/// The f32 expression of `op` on the f32 variable `a` (fused kernels and the attention prologue;
/// float values only).
pub(crate) fn unary_expr(op: UnaryOp, a: &str) -> String {
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
        UnaryOp::Sigmoid => format!("tc_sigmoid({a})"),
        UnaryOp::Relu => format!("({a} <= 0.0f ? 0.0f : {a})"),
        UnaryOp::Gelu => format!("0.5f * {a} * (1.0f + erff({a} * 0.70710678118654752f))"),
        UnaryOp::Silu => format!("tc_silu({a})"),
        UnaryOp::Erf => format!("erff({a})"),
        UnaryOp::Square => format!("{a} * {a}"),
        UnaryOp::Not => format!("({a} == 0.0f ? 1.0f : 0.0f)"),
        UnaryOp::Log1p => format!("log1pf({a})"),
        UnaryOp::Expm1 => format!("expm1f({a})"),
        UnaryOp::Floor => format!("floorf({a})"),
        UnaryOp::Ceil => format!("ceilf({a})"),
        // rintf rounds half to even (the default rounding mode), as torch.round.
        UnaryOp::Round => format!("rintf({a})"),
        // torch.sign: ±0 and NaN give +0.
        UnaryOp::Sign => format!("((0.0f < {a} ? 1.0f : 0.0f) - ({a} < 0.0f ? 1.0f : 0.0f))"),
        UnaryOp::Reciprocal => format!("1.0f / {a}"),
        UnaryOp::Tan => format!("tanf({a})"),
        UnaryOp::Softplus => format!("({a} > 20.0f ? {a} : log1pf(expf({a})))"),
        // x / (1 + e^(-2u)) = x · sigmoid(2u) = x/2 · (1 + tanh u), u = √(2/π)(x + 0.044715x³),
        // as on the CPU.
        UnaryOp::GeluTanh => {
            format!("{a} * tc_sigmoid(1.5957691216057308f * fmaf(0.044715f * {a} * {a}, {a}, {a}))")
        }
    }
}

/// The f32 expression of `op` on the f32 variables `x` and `y` (comparisons and logic give
/// 0 or 1); `exponent` is `y`'s value when it is a constant (`** 2` is an exact square, as
/// on the CPU).
pub(crate) fn binary_expr(op: BinaryOp, x: &str, y: &str, exponent: Option<f64>) -> String {
    match op {
        BinaryOp::Add => format!("{x} + {y}"),
        BinaryOp::Sub => format!("{x} - {y}"),
        BinaryOp::Mul => format!("{x} * {y}"),
        BinaryOp::Div => format!("{x} / {y}"),
        BinaryOp::Pow => match exponent {
            Some(2.0) => format!("{x} * {x}"),
            Some(1.0) => x.to_string(),
            _ => format!("({y} == 2.0f ? {x} * {x} : powf({x}, {y}))"),
        },
        BinaryOp::Maximum => format!("tc_max({x}, {y})"),
        BinaryOp::Minimum => format!("tc_min({x}, {y})"),
        BinaryOp::Cmp(c) => format!("(({x} {} {y}) ? 1.0f : 0.0f)", c.symbol()),
        BinaryOp::And => format!("(({x} != 0.0f && {y} != 0.0f) ? 1.0f : 0.0f)"),
        BinaryOp::Or => format!("(({x} != 0.0f || {y} != 0.0f) ? 1.0f : 0.0f)"),
    }
}

/// `e` (a `long long` expression) wrapped to the integral `dtype`.
fn wrap_int(dtype: DType, e: String) -> String {
    match dtype {
        DType::I32 => format!("tc_wrap_i32({e})"),
        DType::Bool => format!("(long long)(({e}) != 0)"),
        _ => e,
    }
}

/// The expression of an arithmetic value (not `Load`/`Reduce`), in its value type.
fn arith_expr(k: &KernelIr, inst: &Value) -> String {
    let dt = |i: ValueId| k.values.get(i.index()).map_or(DType::F32, |x| x.dtype);
    let konst = |i: ValueId| match k.values.get(i.index()).map(|x| &x.op) {
        Some(ValueOp::Const(c)) => Some(*c),
        _ => None,
    };
    op_expr(&inst.op, inst.dtype, &dt, &konst)
}

/// The expression of arithmetic `op` computing a value of `dtype` in its value type (fused
/// kernels and the attention prologue): its operands are the variables `v0`, `v1`, … whose
/// dtypes `dt` gives, `konst` the value of an operand that is a constant.
pub(crate) fn op_expr(
    op: &ValueOp,
    dtype: DType,
    dt: &dyn Fn(ValueId) -> DType,
    konst: &dyn Fn(ValueId) -> Option<f64>,
) -> String {
    match op {
        ValueOp::Const(c) => literal(dtype, *c),
        ValueOp::Unary(op, a) if dtype.is_integral() => {
            let x = v(*a);
            let e = match op {
                UnaryOp::Neg => format!("tc_isub(0LL, {x})"),
                UnaryOp::Abs => format!("({x} < 0 ? tc_isub(0LL, {x}) : {x})"),
                UnaryOp::Square => format!("tc_imul({x}, {x})"),
                UnaryOp::Relu => format!("({x} < 0 ? 0LL : {x})"),
                UnaryOp::Not => format!("(long long)({x} == 0)"),
                UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => x.clone(),
                UnaryOp::Sign => format!("(long long)(({x} > 0) - ({x} < 0))"),
                // Not made by the checker on integers (they compute in f32).
                _ => format!("tc_f2i64((float){x})"),
            };
            wrap_int(dtype, e)
        }
        ValueOp::Unary(op, a) => unary_expr(*op, &v(*a)),
        ValueOp::Binary(op, a, b) if op.is_cmp() || matches!(op, BinaryOp::And | BinaryOp::Or) => {
            let (x, y) = (v(*a), v(*b));
            match op {
                BinaryOp::Cmp(c) => format!("(long long)({x} {} {y})", c.symbol()),
                BinaryOp::And => format!("(long long)({x} != 0 && {y} != 0)"),
                _ => format!("(long long)({x} != 0 || {y} != 0)"),
            }
        }
        ValueOp::Binary(op, a, b) if dtype.is_integral() => {
            let (x, y) = (v(*a), v(*b));
            let e = match op {
                BinaryOp::Add => format!("tc_iadd({x}, {y})"),
                BinaryOp::Sub => format!("tc_isub({x}, {y})"),
                BinaryOp::Mul => format!("tc_imul({x}, {y})"),
                BinaryOp::Div => format!("({y} == 0 ? 0LL : {x} / {y})"),
                BinaryOp::Pow => format!("tc_ipow({x}, {y})"),
                BinaryOp::Maximum => format!("({x} > {y} ? {x} : {y})"),
                _ => format!("({x} < {y} ? {x} : {y})"),
            };
            wrap_int(dtype, e)
        }
        // Comparisons and logical ops are handled above.
        ValueOp::Binary(op, a, b) => binary_expr(*op, &v(*a), &v(*b), konst(*b)),
        ValueOp::Cast(a) => {
            let x = v(*a);
            match (dt(*a).is_integral(), dtype) {
                (false, DType::F32) => x,
                (false, DType::F16) => format!("tc_round_f16({x})"),
                (false, DType::BF16) => format!("tc_round_bf16({x})"),
                (false, DType::I32) => format!("tc_f2i32({x})"),
                (false, DType::I64) => format!("tc_f2i64({x})"),
                (false, DType::Bool) => format!("(long long)({x} != 0.0f)"),
                (true, DType::F32) => format!("(float)({x})"),
                (true, DType::F16) => format!("tc_round_f16((float)({x}))"),
                (true, DType::BF16) => format!("tc_round_bf16((float)({x}))"),
                (true, d) => wrap_int(d, x),
            }
        }
        ValueOp::Where(c, a, b) => format!("({} != 0 ? {} : {})", v(*c), v(*a), v(*b)),
        // Only reached for a reduction over no axes, which is the identity.
        ValueOp::Reduce(_, a) => v(*a),
        // Written by `index::emit_value` and `index::emit_scan`, never as an expression.
        ValueOp::Index { .. } | ValueOp::Gather { .. } | ValueOp::Scan(_) => "0".into(),
        ValueOp::Load(_) => "0.0f".into(),
    }
}

/// `offset + Σ idx·stride` as C, skipping zero terms.
pub(super) fn address(offset: i64, idx: &[String], strides: &[i64]) -> String {
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

/// The first comment line of a kernel's source: its name, the ops it computes and the
/// source lines they come from (fused and matmul kernels).
pub(super) fn origin_comment(w: &mut Writer, kernel: &Kernel) {
    w.line(format!("// {}: {}", kernel.name, kernel.origin()));
}

fn header(
    w: &mut Writer,
    plan: &Plan,
    kernel: &Kernel,
    k: &KernelIr,
    params: &Params,
    strategy: &str,
) {
    origin_comment(w, kernel);
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
            l.domain_strides
        ));
    }
    for s in &k.stores {
        let b = plan.buffer(s.buffer);
        let level = match s.order {
            Level::Row => "row order",
            Level::Element => "domain order",
        };
        let region = if s.is_plain(&k.axes) {
            String::new()
        } else {
            format!(", a part at offset {}, strides {:?}", s.offset, s.strides)
        };
        w.line(format!(
            "//   store: {} = {} ({}) <- {}, {level}{region}",
            params.name(s.buffer),
            b.name,
            b.dtype,
            s.value
        ));
    }
}

/// The CUDA C of plan kernel `index` (`kernel`, lowered to `k`).
pub(crate) fn emit_fused(plan: &Plan, index: usize, kernel: &Kernel, k: &KernelIr) -> CudaKernel {
    let workspace = match &kernel.kind {
        crate::schedule::KernelKind::Fused(f) => f.workspace,
        _ => None,
    };
    let strategy = Strategy::with_workspace(k, workspace.map(|w| plan.buffer(w).bytes));
    // (a workspace the strategy does not split with is not passed)
    let split = matches!(&strategy, Strategy::Rows(r) if r.split.is_some());
    let params = Params::new(k, workspace.filter(|_| split));
    let source = match &strategy {
        Strategy::Pointwise(s) => emit_pointwise(plan, kernel, k, &params, s, &strategy),
        Strategy::Rows(s) => {
            let mut source = emit_rows(plan, kernel, k, &params, s, &strategy);
            if let (Some(sp), Some(w)) = (&s.split, workspace) {
                source.push_str(&emit_fold(plan, kernel, k, &params, s, sp, w));
            }
            source
        }
    };
    CudaKernel {
        kernel_index: index,
        name: kernel.name.clone(),
        source,
        launch: strategy.launch(&kernel.name),
        params: params.buffers,
        checks: super::index::checks(&kernel.name, k),
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

/// The body of one element: `const float vI = …;` for every value, with `load(l)` giving the
/// f32 value of load `l`.
fn pointwise_body(
    w: &mut Writer,
    k: &KernelIr,
    load: &dyn Fn(LoadId) -> String,
    site: Option<&super::index::Site<'_>>,
) {
    for (i, inst) in k.values.iter().enumerate() {
        let i = ValueId::new(i);
        if site.is_some_and(|s| super::index::emit_value(w, k, i, s)) {
            continue;
        }
        match &inst.op {
            ValueOp::Const(_) => {}
            ValueOp::Load(l) => w.line(format!(
                "const {} {} = {};",
                value_type(inst.dtype),
                v(i),
                load(*l)
            )),
            _ => w.line(format!(
                "const {} {} = {};",
                value_type(inst.dtype),
                v(i),
                arith_expr(k, inst)
            )),
        }
    }
}

fn consts(w: &mut Writer, k: &KernelIr) {
    for (i, inst) in k.values.iter().enumerate() {
        if let ValueOp::Const(c) = inst.op {
            w.line(format!(
                "const {} {} = {};",
                value_type(inst.dtype),
                v(ValueId::new(i)),
                literal(inst.dtype, c)
            ));
        }
    }
}

fn emit_pointwise(
    plan: &Plan,
    kernel: &Kernel,
    k: &KernelIr,
    params: &Params,
    s: &PointwiseLaunch,
    strategy: &Strategy,
) -> String {
    let sizes = &s.sizes;
    let strides: Vec<Vec<i64>> = if k.axes.sizes.is_empty() {
        vec![vec![0i64]; k.loads.len()]
    } else {
        k.loads.iter().map(|l| l.strides.clone()).collect()
    };
    let (n, lanes, vectorize) = (s.n, s.lanes, s.vectorize);
    let rank = sizes.len();
    let idx_t = if s.wide { "long long" } else { "int" };
    let strategy = strategy.describe();
    let mut w = Writer::new();
    header(&mut w, plan, kernel, k, params, &strategy);
    super::index::declare_checks(&mut w, &kernel.name, k);
    w.open(format!(
        "extern \"C\" __global__ void __launch_bounds__({BLOCK}) {}({})",
        kernel.name,
        params.signature(plan, true)
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
        let idx = decompose(w, idx_t, "i", "i", sizes);
        let load = |l: LoadId| {
            let ld = k.load(l);
            let addr = address(ld.offset, &idx, &strides[l.index()]);
            load_conv(ld.dtype, &format!("{}[{addr}]", params.name(ld.buffer)))
        };
        let at = |l: LoadId| {
            let ld = k.load(l);
            (
                params.name(ld.buffer),
                address(ld.offset, &idx, &strides[l.index()]),
            )
        };
        let site = super::index::Site {
            kernel: &kernel.name,
            names: idx.clone(),
            at: &at,
        };
        pointwise_body(w, k, &load, Some(&site));
        for s in &k.stores {
            // A store into a region (a concat part) has its own offset and strides.
            let at = if s.is_plain(&k.axes) {
                "i".to_string()
            } else {
                address(s.offset, &idx, &s.strides)
            };
            w.line(format!(
                "{}[{at}] = {};",
                params.name(s.buffer),
                store_conv(s.dtype, &v(s.value))
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
        let idx = decompose(&mut w, idx_t, "i", "i", sizes);
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
        for (l, ld) in k.loads.iter().enumerate() {
            if !k.load_is_read(LoadId::new(l)) {
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
        let load = |l: LoadId| {
            let ld = k.load(l);
            let l = l.index();
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
        pointwise_body(&mut w, k, &load, None);
        for (si, s) in k.stores.iter().enumerate() {
            w.line(format!("o{si}[e] = {};", v(s.value)));
        }
        w.close();
        for (si, s) in k.stores.iter().enumerate() {
            pack_store(
                &mut w,
                s.dtype,
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
    w.finish()
}

// ---------------------------------------------------------------- row kernels

fn reduce_parts(op: ReduceOp) -> (&'static str, &'static str, &'static str) {
    // (initial value, combine function, reduction suffix)
    match op {
        ReduceOp::Sum | ReduceOp::Mean => ("0.0f", "tc_add", "sum"),
        ReduceOp::Max => ("__int_as_float(0xff800000)", "tc_max", "max"),
        ReduceOp::Min => ("__int_as_float(0x7f800000)", "tc_min", "min"),
        // (folded by `index::arg_step`, never by these)
        ReduceOp::ArgMax | ReduceOp::ArgMin => ("0.0f", "tc_max", "max"),
    }
}

fn emit_rows(
    plan: &Plan,
    kernel: &Kernel,
    k: &KernelIr,
    params: &Params,
    s: &RowLaunch,
    strategy: &Strategy,
) -> String {
    let row_axes = k.axes.row_axes();
    let red_axes = k.axes.reduce_axes();
    let row_sizes = k.axes.row_sizes();
    let red_sizes = k.axes.reduce_sizes();
    let (rows, len, group, slices, threads, items) =
        (s.rows, s.len, s.group, s.slices, s.threads, s.items);
    let (cache, exact, warp_mode, block_mode) = (s.cache(), s.exact, s.warp_mode(), s.block_mode());
    let tiled = s.tiled;
    let rows_per_block = s.rows_per_block;
    let block = s.block;
    let idx_t = if s.wide { "long long" } else { "int" };
    let online = &s.online;
    let value = |i: ValueId| k.value(i);

    let mut w = Writer::new();
    header(&mut w, plan, kernel, k, params, &strategy.describe());
    super::index::declare_checks(&mut w, &kernel.name, k);
    w.open(format!(
        "extern \"C\" __global__ void __launch_bounds__({block}) {}({})",
        kernel.name,
        params.signature(plan, false)
    ));
    if slices > 1 {
        w.line("__shared__ float tc_smem[33 * 32];");
    } else if !warp_mode {
        w.line("__shared__ float tc_smem[32];");
    }
    if block_mode && !online.is_empty() {
        w.line("__shared__ float tc_smem2[96];");
    }
    // Integer reductions combine across threads in 64-bit shared memory.
    let int_reduce = k
        .values
        .iter()
        .any(|x| matches!(x.op, ValueOp::Reduce(..)) && x.dtype.is_integral());
    if int_reduce && slices > 1 {
        w.line("__shared__ long long tc_smemi[33 * 32];");
    } else if int_reduce && !warp_mode {
        w.line("__shared__ long long tc_smemi[32];");
    }
    // Scans of a row a block shares add up each tile's warp totals in shared memory.
    if tiled && block_mode {
        let scans = || k.values.iter().filter(|x| matches!(x.op, ValueOp::Scan(_)));
        if scans().any(|x| !x.dtype.is_integral()) {
            w.line("__shared__ float tc_smemsf[32];");
        }
        if scans().any(|x| x.dtype.is_integral()) {
            w.line("__shared__ long long tc_smemsl[32];");
        }
    }
    // argmax/argmin combine (value, position) pairs: the values in an array of their
    // operand's type, the positions in `tc_smemaj`.
    let arg_operands: Vec<DType> = k
        .values
        .iter()
        .filter_map(|x| match x.op {
            ValueOp::Reduce(op, a) if op.is_arg() => Some(k.value(a).dtype),
            _ => None,
        })
        .collect();
    let arg_slots = if slices > 1 {
        Some("33 * 32")
    } else if !warp_mode {
        Some("32")
    } else {
        None
    };
    if let (Some(n), false) = (arg_slots, arg_operands.is_empty()) {
        if arg_operands.iter().any(|d| !d.is_integral()) {
            w.line(format!("__shared__ float tc_smemaf[{n}];"));
        }
        if arg_operands.iter().any(|d| d.is_integral()) {
            w.line(format!("__shared__ long long tc_smemal[{n}];"));
        }
        w.line(format!("__shared__ long long tc_smemaj[{n}];"));
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
    if let Some(sp) = &s.split {
        // This block's part of every column, and where its partials go.
        w.line(format!(
            "const {idx_t} tc_j0 = ({idx_t})blockIdx.y * {};",
            sp.chunk
        ));
        w.line(format!(
            "const {idx_t} tc_j1 = tc_j0 + {c} < {len} ? tc_j0 + {c} : {len};",
            c = sp.chunk
        ));
        split_pointers(&mut w, k, params, sp);
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
    for (l, ld) in k.loads.iter().enumerate() {
        if k.load_is_read(LoadId::new(l)) {
            let st: Vec<i64> = row_axes.iter().map(|&d| ld.strides[d]).collect();
            w.line(format!(
                "const {idx_t} base{l} = {};",
                address(ld.offset, &ridx, &st)
            ));
        }
    }
    let elem_stores: Vec<StoreId> = (0..k.stores.len())
        .map(StoreId::new)
        .filter(|&st| k.store(st).order == Level::Element)
        .collect();
    // Element stores contiguous over the merged domain share one base per row; a store into
    // a region (a concat part) has its own base and strides.
    let store_strides: Vec<i64> = elem_stores
        .iter()
        .find(|&&st| k.store(st).is_plain(&k.axes))
        .map_or_else(
            || vec![0; k.axes.sizes.len()],
            |&st| k.store(st).strides.clone(),
        );
    if elem_stores.iter().any(|&st| k.store(st).is_plain(&k.axes)) {
        let st: Vec<i64> = row_axes.iter().map(|&d| store_strides[d]).collect();
        w.line(format!("const {idx_t} obase = {};", address(0, &ridx, &st)));
    }
    for &si in &elem_stores {
        let st = k.store(si);
        if !st.is_plain(&k.axes) {
            let rs: Vec<i64> = row_axes.iter().map(|&d| st.strides[d]).collect();
            w.line(format!(
                "const {idx_t} obase{} = {};",
                si.index(),
                address(st.offset, &ridx, &rs)
            ));
        }
    }
    let red_strides =
        |l: LoadId| -> Vec<i64> { red_axes.iter().map(|&d| k.load(l).strides[d]).collect() };
    // The index of each merged axis by name, for aranges and gathers: the row's, then the
    // position along the row where it is known ("0" elsewhere: row values do not move
    // along the row).
    let axis_names = |jidx: &[String]| -> Vec<String> {
        let mut names = vec!["0".to_string(); k.axes.sizes.len()];
        for (p, &d) in row_axes.iter().enumerate() {
            names[d] = ridx[p].clone();
        }
        for (p, &d) in red_axes.iter().enumerate() {
            if let Some(j) = jidx.get(p) {
                names[d] = j.clone();
            }
        }
        names
    };
    let global_load = |l: LoadId, jidx: &[String]| {
        let ld = k.load(l);
        let off = address(0, jidx, &red_strides(l));
        load_conv(
            ld.dtype,
            &format!("{}[base{} + {off}]", params.name(ld.buffer), l.index()),
        )
    };

    // The loop over the row's elements: cached (unrolled over register slots) or strided.
    // The row position of register slot `t`: whole vectors of `lanes` per thread.
    let lanes = s.lanes;
    let slot_j = if lanes > 1 {
        format!("((t / {lanes}) * {threads} + tid) * {lanes} + t % {lanes}")
    } else {
        format!("tid + t * {threads}")
    };
    let open_loop = |w: &mut Writer, need_j: bool| {
        if cache {
            w.line("#pragma unroll");
            w.open(format!("for (int t = 0; t < {items}; ++t)"));
            if need_j || !exact {
                w.line(format!("const {idx_t} j = {slot_j};"));
            }
            if !exact {
                w.open(format!("if (j < {len})"));
            }
        } else if tiled {
            // every thread through every tile; past the row's end on its last element
            w.open(format!(
                "for ({idx_t} tc_jt = 0; tc_jt < {len}; tc_jt += {threads})"
            ));
            w.line(format!("const bool tc_in = tc_jt + tid < {len};"));
            w.line(format!(
                "const {idx_t} j = tc_in ? tc_jt + tid : {};",
                len.saturating_sub(1)
            ));
        } else if s.split.is_some() {
            w.open(format!(
                "for ({idx_t} j = tc_j0 + tid; j < tc_j1; j += {threads})"
            ));
        } else {
            w.open(format!("for ({idx_t} j = tid; j < {len}; j += {threads})"));
        }
    };
    let scan_mode = if !tiled {
        super::index::ScanMode::Thread
    } else if warp_mode {
        super::index::ScanMode::Warp
    } else {
        super::index::ScanMode::Block
    };
    let close_loop = |w: &mut Writer| {
        if cache && !exact {
            w.close();
        }
        w.close();
    };
    // Element values `list` inside the loop; `jidx` names the reduce-axis indices.
    let emit_elems = |w: &mut Writer, list: &[ValueId], jidx: &[String]| {
        let at = |l: LoadId| {
            (
                params.name(k.load(l).buffer),
                format!("base{} + {}", l.index(), address(0, jidx, &red_strides(l))),
            )
        };
        let site = super::index::Site {
            kernel: &kernel.name,
            names: axis_names(jidx),
            at: &at,
        };
        for &i in list {
            if super::index::emit_scan(w, k, i, scan_mode)
                || super::index::emit_value(w, k, i, &site)
            {
                continue;
            }
            let inst = value(i);
            match &inst.op {
                ValueOp::Load(l) => {
                    let val = if s.cached.contains(l) {
                        format!("c{}[t]", l.index())
                    } else {
                        global_load(*l, jidx)
                    };
                    w.line(format!(
                        "const {} {} = {val};",
                        value_type(inst.dtype),
                        v(i)
                    ));
                }
                _ => w.line(format!(
                    "const {} {} = {};",
                    value_type(inst.dtype),
                    v(i),
                    arith_expr(k, inst)
                )),
            }
        }
    };
    let needs_jidx = |list: &[ValueId], stores: bool| {
        // (a load not held in registers is read from memory at `j`)
        stores
            || list
                .iter()
                .any(|&i| matches!(value(i).op, ValueOp::Index { .. } | ValueOp::Gather { .. }))
            || list
                .iter()
                .any(|&i| matches!(value(i).op, ValueOp::Load(l) if !s.cached.contains(&l)))
    };

    if cache {
        for &l in &s.cached {
            w.line(format!(
                "{} c{}[{items}];",
                value_type(k.load(l).dtype),
                l.index()
            ));
        }
        if lanes > 1 {
            // 16-byte reads: vector `tv` of this thread is elements (tid + tv·threads)·lanes…
            w.line("#pragma unroll");
            w.open(format!("for (int tv = 0; tv < {}; ++tv)", items / lanes));
            w.line(format!(
                "const {idx_t} j = (tid + tv * {threads}) * {lanes};"
            ));
            if !exact {
                w.open(format!("if (j < {len})"));
            }
            for &l in &s.cached {
                let ld = k.load(l);
                let ty = vector_type(ld.dtype, lanes);
                let b = params.name(ld.buffer);
                w.line(format!(
                    "const {ty} r{li} = *reinterpret_cast<const {ty}*>({b} + base{li} + j);",
                    li = l.index()
                ));
                for (e, raw) in unpack(ld.dtype, lanes, &format!("r{}", l.index()))
                    .iter()
                    .enumerate()
                {
                    w.line(format!(
                        "c{}[tv * {lanes} + {e}] = {};",
                        l.index(),
                        load_conv(ld.dtype, raw)
                    ));
                }
            }
            if !exact {
                w.close();
                w.open("else");
                w.line("#pragma unroll");
                w.open(format!("for (int e = 0; e < {lanes}; ++e)"));
                for &l in &s.cached {
                    w.line(format!("c{}[tv * {lanes} + e] = 0;", l.index()));
                }
                w.close();
                w.close();
            }
            w.close();
        } else {
            w.line("#pragma unroll");
            w.open(format!("for (int t = 0; t < {items}; ++t)"));
            w.line(format!("const {idx_t} j = tid + t * {threads};"));
            if !exact {
                w.open(format!("if (j < {len})"));
            }
            let jidx = decompose(&mut w, idx_t, "j", "j", &red_sizes);
            for &l in &s.cached {
                w.line(format!("c{}[t] = {};", l.index(), global_load(l, &jidx)));
            }
            if !exact {
                w.close();
                w.open("else");
                for &l in &s.cached {
                    w.line(format!("c{}[t] = 0;", l.index()));
                }
                w.close();
            }
            w.close();
        }
    }
    // Each pass: its row values, then (but for the last) a walk of the row folding its
    // reductions.
    let last = k.passes.len() - 1;
    let row_values = |w: &mut Writer, pass: usize| {
        let at = |l: LoadId| (params.name(k.load(l).buffer), format!("base{}", l.index()));
        let site = super::index::Site {
            kernel: &kernel.name,
            names: axis_names(&[]),
            at: &at,
        };
        for &i in &k.passes[pass].row {
            if super::index::emit_value(w, k, i, &site) {
                continue;
            }
            let inst = value(i);
            match &inst.op {
                ValueOp::Load(l) => {
                    let ld = k.load(*l);
                    w.line(format!(
                        "const {} {} = {};",
                        value_type(inst.dtype),
                        v(i),
                        load_conv(
                            ld.dtype,
                            &format!("{}[base{}]", params.name(ld.buffer), l.index())
                        )
                    ));
                }
                _ => w.line(format!(
                    "const {} {} = {};",
                    value_type(inst.dtype),
                    v(i),
                    arith_expr(k, inst)
                )),
            }
        }
    };
    let cs: Vec<i64> = red_axes.iter().map(|&d| store_strides[d]).collect();
    let store_lines = |w: &mut Writer, stores: &[StoreId], jidx: &[String]| {
        let off = address(0, jidx, &cs);
        for &si in stores {
            let st = k.store(si);
            let at = if st.is_plain(&k.axes) {
                format!("obase + {off}")
            } else {
                let rcs: Vec<i64> = red_axes.iter().map(|&d| st.strides[d]).collect();
                format!("obase{} + {}", si.index(), address(0, jidx, &rcs))
            };
            w.line(format!(
                "{}{}[{at}] = {};",
                if slices > 1 {
                    "if (tc_live) "
                } else if tiled {
                    "if (tc_in) "
                } else {
                    ""
                },
                params.name(st.buffer),
                store_conv(st.dtype, &v(st.value))
            ));
        }
    };
    let elem_stores_of = |pass: usize| -> Vec<StoreId> {
        k.passes[pass]
            .stores
            .iter()
            .copied()
            .filter(|&st| k.store(st).order == Level::Element)
            .collect()
    };
    row_values(&mut w, 0);
    for q in 0..last {
        let phase = q + 1;
        let pass = &k.passes[q];
        let reduces = &pass.reduces;
        // (a moved pass's reductions were finished with the pass before)
        let moved = online.iter().any(|o| reduces.contains(&o.parts().1));
        if reduces.is_empty() || moved {
            row_values(&mut w, phase);
            continue;
        }
        let pairs: Vec<Online> = reduces.iter().filter_map(|&i| s.pair_of(i)).collect();
        if pairs.is_empty() {
            w.line(format!("// reduction pass {phase}"));
        } else {
            w.line(format!(
                "// reduction pass {phase}, and pass {} in the same read",
                phase + 1
            ));
        }
        for &i in reduces {
            if let ValueOp::Reduce(op, a) = value(i).op {
                if op.is_arg() {
                    super::index::arg_init(&mut w, k, i, a);
                    continue;
                }
                let dt = value(i).dtype;
                let init = if dt.is_integral() {
                    literal(dt, crate::ir::eval::reduce_init_int(op, dt) as f64)
                } else {
                    reduce_parts(op).0.to_string()
                };
                w.line(format!("{} acc{} = {init};", value_type(dt), i.index()));
            }
        }
        for p in &pairs {
            match *p {
                Online::Softmax { sum, .. } => w.line(format!("float acc{} = 0.0f;", sum.index())),
                Online::Welford { mean, var } => {
                    w.line(format!("float tc_n{} = 0.0f;", mean.index()));
                    w.line(format!("float acc{} = 0.0f;", var.index()));
                }
            }
        }
        let stores_here = elem_stores_of(q);
        let list = &pass.elements;
        let has_arg = reduces
            .iter()
            .any(|&r| matches!(value(r).op, ValueOp::Reduce(op, _) if op.is_arg()));
        let need_j = needs_jidx(list, !stores_here.is_empty()) || has_arg;
        super::index::scan_inits(&mut w, k, list);
        open_loop(&mut w, need_j);
        let jidx = if need_j {
            decompose(&mut w, idx_t, "j", "j", &red_sizes)
        } else {
            Vec::new()
        };
        emit_elems(&mut w, list, &jidx);
        store_lines(&mut w, &stores_here, &jidx);
        if tiled {
            w.open("if (tc_in)");
        }
        for &r in reduces {
            let ValueOp::Reduce(op, a) = value(r).op else {
                continue;
            };
            let a = v(a);
            let i = r.index();
            match s.pair_of(r) {
                // (in registers: this thread's max here, its sum in a second walk below)
                Some(Online::Softmax { .. }) if cache => {
                    w.line(format!("acc{i} = tc_max(acc{i}, {a});"));
                }
                Some(Online::Softmax { sum, .. }) => {
                    let sum = sum.index();
                    w.line(format!("const float tc_m{i} = tc_max(acc{i}, {a});"));
                    w.line(format!(
                        "if (tc_m{i} != acc{i}) {{ acc{sum} *= expf(acc{i} - tc_m{i}); acc{i} = tc_m{i}; }}"
                    ));
                    w.line(format!(
                        "if ({a} != __int_as_float(0xff800000)) acc{sum} += expf({a} - acc{i});"
                    ));
                }
                Some(Online::Welford { var, .. }) => {
                    let var = var.index();
                    w.line(format!("tc_n{i} += 1.0f;"));
                    w.line(format!("const float tc_d{i} = {a} - acc{i};"));
                    w.line(format!("acc{i} += tc_d{i} / tc_n{i};"));
                    w.line(format!("acc{var} += tc_d{i} * ({a} - acc{i});"));
                }
                None if op.is_arg() => {
                    super::index::arg_step(&mut w, k, op, r, value(r).op.operands()[0])
                }
                None => w.line(format!("acc{i} = {}(acc{i}, {a});", reduce_parts(op).1)),
            }
        }
        if tiled {
            w.close();
        }
        close_loop(&mut w);
        // A row in registers: each thread sums exp(x − its own max) over its registers (one
        // exp an element, as two passes), and the block merges the (max, sum) pairs once.
        let softmax_pairs: Vec<(ValueId, ValueId)> = pairs
            .iter()
            .filter_map(|p| match *p {
                Online::Softmax { max, sum } if cache => Some((max, sum)),
                _ => None,
            })
            .collect();
        if !softmax_pairs.is_empty() {
            let need_j = needs_jidx(list, false);
            open_loop(&mut w, need_j);
            let jidx = if need_j {
                decompose(&mut w, idx_t, "j", "j", &red_sizes)
            } else {
                Vec::new()
            };
            emit_elems(&mut w, list, &jidx);
            for (max, sum) in &softmax_pairs {
                let a = v(value(*max).op.operands()[0]);
                let (m, s) = (max.index(), sum.index());
                w.line(format!(
                    "if ({a} != __int_as_float(0xff800000)) acc{s} += expf({a} - acc{m});"
                ));
            }
            close_loop(&mut w);
        }
        for p in &pairs {
            let (combine, vars) = match *p {
                Online::Softmax { max, sum } => {
                    ("softmax", format!("acc{}, acc{}", max.index(), sum.index()))
                }
                Online::Welford { mean, var } => (
                    "welford",
                    format!(
                        "tc_n{}, acc{}, acc{}",
                        mean.index(),
                        mean.index(),
                        var.index()
                    ),
                ),
            };
            if block_mode {
                w.line(format!("tc_block_{combine}({vars}, tc_smem2);"));
            } else if warp_mode && group > 1 {
                w.line(format!("tc_warp_{combine}({vars});"));
            }
            let (first, second) = p.parts();
            w.line(format!("const float {} = acc{};", v(first), first.index()));
            let mean_of = matches!(value(second).op, ValueOp::Reduce(ReduceOp::Mean, _));
            if mean_of && matches!(p, Online::Welford { .. }) {
                w.line(format!(
                    "const float {} = acc{} / {};",
                    v(second),
                    second.index(),
                    float_literal(len as f64)
                ));
            } else {
                w.line(format!(
                    "const float {} = acc{};",
                    v(second),
                    second.index()
                ));
            }
        }
        for &r in reduces {
            if s.pair_of(r).is_some() {
                continue;
            }
            if let ValueOp::Reduce(op, _) = value(r).op {
                if op.is_arg() {
                    let mode = if slices > 1 {
                        super::index::ArgMode::Slices
                    } else if group == 1 {
                        super::index::ArgMode::Thread
                    } else if warp_mode {
                        super::index::ArgMode::Warp
                    } else {
                        super::index::ArgMode::Block
                    };
                    let operand = value(r).op.operands()[0];
                    let smem = if value(operand).dtype.is_integral() {
                        "tc_smemal"
                    } else {
                        "tc_smemaf"
                    };
                    super::index::arg_combine(&mut w, op, r, mode, smem);
                    super::index::arg_finish(&mut w, r);
                    continue;
                }
                let i = r.index();
                let suffix = reduce_parts(op).2;
                let dt = value(r).dtype;
                let smem = if dt.is_integral() {
                    "tc_smemi"
                } else {
                    "tc_smem"
                };
                if s.split.is_some() {
                    // This part's partial (a mean's is its sum); the fold finishes the row.
                    w.line(format!("acc{i} = tc_slice_{suffix}(acc{i}, {smem});"));
                    w.line(format!(
                        "if (tid == 0 && tc_live) tc_ws{i}[({idx_t})blockIdx.y * {rows} + r] = acc{i};"
                    ));
                    continue;
                } else if slices > 1 {
                    w.line(format!("acc{i} = tc_slice_{suffix}(acc{i}, {smem});"));
                } else if group == 1 {
                    // one thread holds the whole row: nothing to combine
                } else if warp_mode {
                    w.line(format!("acc{i} = tc_warp_{suffix}(acc{i});"));
                } else {
                    w.line(format!("acc{i} = tc_block_{suffix}(acc{i}, {smem});"));
                }
                if dt.is_integral() {
                    w.line(format!("const long long {} = acc{i};", v(r)));
                } else if op == ReduceOp::Mean {
                    w.line(format!(
                        "const float {} = acc{i} / {};",
                        v(r),
                        float_literal(len as f64)
                    ));
                } else {
                    w.line(format!("const float {} = acc{i};", v(r)));
                }
            }
        }
        if s.split.is_none() {
            row_values(&mut w, phase);
        }
    }
    let late = elem_stores_of(last);
    if !late.is_empty() {
        w.line("// write the row");
        super::index::scan_inits(&mut w, k, &k.passes[last].elements);
        // Rows read in vectors are written in vectors where every store is plain and of a
        // width a vector of `lanes` holds (f32 in 4, f16/bf16 in 4 or 8).
        let vector_stores = lanes > 1
            && late.iter().all(|&st| {
                let st = k.store(st);
                st.is_plain(&k.axes)
                    && match st.dtype {
                        DType::F32 => lanes == 4,
                        DType::F16 | DType::BF16 => true,
                        _ => false,
                    }
            });
        if vector_stores {
            for &si in &late {
                w.line(format!("float o{}[{lanes}];", si.index()));
            }
        }
        open_loop(&mut w, true);
        let jidx = decompose(&mut w, idx_t, "j", "j", &red_sizes);
        emit_elems(&mut w, &k.passes[last].elements, &jidx);
        if vector_stores {
            for &si in &late {
                let st = k.store(si);
                w.line(format!("o{}[t % {lanes}] = {};", si.index(), v(st.value)));
            }
            w.open(format!("if (t % {lanes} == {})", lanes - 1));
            for &si in &late {
                let st = k.store(si);
                pack_store(
                    &mut w,
                    st.dtype,
                    lanes,
                    &format!("{} + obase + j - {}", params.name(st.buffer), lanes - 1),
                    &format!("o{}", si.index()),
                    &format!("w{}", si.index()),
                );
            }
            w.close();
        } else {
            store_lines(&mut w, &late, &jidx);
        }
        close_loop(&mut w);
    }
    let row_stores: Vec<StoreId> = (0..k.stores.len())
        .map(StoreId::new)
        .filter(|&st| k.store(st).order == Level::Row)
        .collect();
    if !row_stores.is_empty() && s.split.is_none() {
        w.open(if slices > 1 {
            "if (tid == 0 && tc_live)"
        } else {
            "if (tid == 0)"
        });
        for &st in &row_stores {
            let st = k.store(st);
            let at = if st.is_plain(&k.axes) {
                "r".to_string()
            } else {
                let rs: Vec<i64> = row_axes.iter().map(|&d| st.strides[d]).collect();
                address(st.offset, &ridx, &rs)
            };
            w.line(format!(
                "{}[{at}] = {};",
                params.name(st.buffer),
                store_conv(st.dtype, &v(st.value))
            ));
        }
        w.close();
    }
    w.close();
    w.close();
    w.finish()
}

/// `tc_ws<i>`, the partials of reduction `i` in the workspace (the last parameter) of a split
/// column reduction, for each reduction of the first pass.
fn split_pointers(w: &mut Writer, k: &KernelIr, params: &Params, sp: &ColumnSplit) {
    let Some(&ws) = params.buffers.last() else {
        return;
    };
    let name = params.name(ws);
    for (&r, &off) in k.passes[0].reduces.iter().zip(&sp.offsets) {
        // (the workspace is addressed as f32; offsets are 16-byte multiples)
        let at = format!("{name} + {}", off / 4);
        if k.value(r).dtype.is_integral() {
            w.line(format!(
                "long long* const tc_ws{} = reinterpret_cast<long long*>({at});",
                r.index()
            ));
        } else {
            w.line(format!("float* const tc_ws{} = {at};", r.index()));
        }
    }
}

/// The second launch of a split column reduction (`{name}_fold`, same parameters): one
/// thread per column folds the column's partials in part order (0, 1, …: the same sums
/// whichever block finished first), then computes the row values after the reductions and
/// makes the row stores, as the whole kernel would after its walk.
fn emit_fold(
    plan: &Plan,
    kernel: &Kernel,
    k: &KernelIr,
    params: &Params,
    s: &RowLaunch,
    sp: &ColumnSplit,
    workspace: BufferId,
) -> String {
    let idx_t = if s.wide { "long long" } else { "int" };
    let rows = s.rows;
    let row_axes = k.axes.row_axes();
    let mut w = Writer::new();
    w.line(format!(
        "// {}_fold: the {} partials of each of {rows} columns of {} (workspace {}), folded in order",
        kernel.name,
        sp.parts,
        kernel.name,
        plan.buffer(workspace).name
    ));
    w.open(format!(
        "extern \"C\" __global__ void __launch_bounds__({FOLD_BLOCK}) {}_fold({})",
        kernel.name,
        params.signature(plan, false)
    ));
    consts(&mut w, k);
    split_pointers(&mut w, k, params, sp);
    w.open(format!(
        "for ({idx_t} r = ({idx_t})blockIdx.x * {FOLD_BLOCK} + threadIdx.x; r < {rows}; r += ({idx_t})gridDim.x * {FOLD_BLOCK})"
    ));
    let ridx = decompose(&mut w, idx_t, "r", "r", &k.axes.row_sizes());
    // The row values the row stores need (through the reductions' results, not into them).
    let mut need = vec![false; k.values.len()];
    let mut stack: Vec<ValueId> = k
        .stores
        .iter()
        .filter(|st| st.order == Level::Row)
        .map(|st| st.value)
        .collect();
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut need[i.index()], true)
            && !matches!(k.value(i).op, ValueOp::Reduce(..))
        {
            stack.extend(k.value(i).op.operands());
        }
    }
    let needed_rows = |pass: usize| -> Vec<ValueId> {
        k.passes[pass]
            .row
            .iter()
            .copied()
            .filter(|i| need[i.index()])
            .collect()
    };
    let row_loads: Vec<LoadId> = (0..k.loads.len())
        .map(LoadId::new)
        .filter(|&l| {
            (0..2).any(|p| {
                needed_rows(p).iter().any(|&i| {
                    matches!(k.value(i).op, ValueOp::Load(x) if x == l)
                        || k.gathers_from(k.value(i), l)
                })
            })
        })
        .collect();
    for &l in &row_loads {
        let ld = k.load(l);
        let st: Vec<i64> = row_axes.iter().map(|&d| ld.strides[d]).collect();
        w.line(format!(
            "const {idx_t} base{} = {};",
            l.index(),
            address(ld.offset, &ridx, &st)
        ));
    }
    let names = {
        let mut names = vec!["0".to_string(); k.axes.sizes.len()];
        for (p, &d) in row_axes.iter().enumerate() {
            names[d] = ridx[p].clone();
        }
        names
    };
    let at = |l: LoadId| (params.name(k.load(l).buffer), format!("base{}", l.index()));
    let site = super::index::Site {
        kernel: &kernel.name,
        names,
        at: &at,
    };
    let row_values = |w: &mut Writer, pass: usize| {
        for i in needed_rows(pass) {
            if super::index::emit_value(w, k, i, &site) {
                continue;
            }
            let inst = k.value(i);
            let e = match &inst.op {
                ValueOp::Load(l) => {
                    let ld = k.load(*l);
                    load_conv(
                        ld.dtype,
                        &format!("{}[base{}]", params.name(ld.buffer), l.index()),
                    )
                }
                _ => arith_expr(k, inst),
            };
            w.line(format!("const {} {} = {e};", value_type(inst.dtype), v(i)));
        }
    };
    row_values(&mut w, 0);
    for &r in &k.passes[0].reduces {
        let ValueOp::Reduce(op, _) = k.value(r).op else {
            continue;
        };
        if !need[r.index()] {
            continue;
        }
        let (i, dt) = (r.index(), k.value(r).dtype);
        let (init, combine) = if dt.is_integral() {
            (
                literal(dt, crate::ir::eval::reduce_init_int(op, dt) as f64),
                reduce_parts(op).1,
            )
        } else {
            (reduce_parts(op).0.to_string(), reduce_parts(op).1)
        };
        w.line(format!("{} acc{i} = {init};", value_type(dt)));
        w.line(format!(
            "for (int p = 0; p < {}; ++p) acc{i} = {combine}(acc{i}, tc_ws{i}[({idx_t})p * {rows} + r]);",
            sp.parts
        ));
        if !dt.is_integral() && op == ReduceOp::Mean {
            w.line(format!(
                "const float {} = acc{i} / {};",
                v(r),
                float_literal(s.len as f64)
            ));
        } else {
            w.line(format!("const {} {} = acc{i};", value_type(dt), v(r)));
        }
    }
    row_values(&mut w, 1);
    for st in k.stores.iter().filter(|st| st.order == Level::Row) {
        w.line(format!(
            "{}[r] = {};",
            params.name(st.buffer),
            store_conv(st.dtype, &v(st.value))
        ));
    }
    w.close();
    w.close();
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The functions an expression calls (`name(`), but tc's own (`tc_…`).
    fn library_calls(expr: &str) -> Vec<String> {
        let mut calls = Vec::new();
        let bytes = expr.as_bytes();
        for (i, _) in expr.match_indices('(') {
            let start = expr[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |j| j + 1);
            let name = &expr[start..i];
            if !name.is_empty() && !name.starts_with("tc_") && !bytes[start].is_ascii_digit() {
                calls.push(name.to_string());
            }
        }
        calls
    }

    /// Every CUDA maths function a kernel's elementwise code calls (and the prelude's) has
    /// NVIDIA's documented bound in `eval::CUDA_LIBRARY_ULPS`, and the CUDA contract of an
    /// op whose code calls it admits that bound: a new library call cannot slip under a
    /// contract the GPU would break.
    #[test]
    fn cuda_library_calls_are_within_the_cuda_contract() {
        use crate::ir::eval;
        let check = |what: &str, expr: &str, contract: eval::Accuracy| {
            for call in library_calls(expr) {
                let documented = eval::cuda_library_ulps(&call).unwrap_or_else(|| {
                    panic!("{what} calls {call}, whose bound CUDA_LIBRARY_ULPS does not list")
                });
                assert!(
                    contract.ulps >= documented,
                    "{what}'s CUDA contract ({} ulp) is below {call}'s documented {documented}",
                    contract.ulps
                );
            }
        };
        for op in UnaryOp::ALL {
            let cuda = eval::cuda_unary_accuracy(op);
            let cpu = eval::unary_accuracy(op);
            assert!(cuda.ulps >= cpu.ulps && cuda.abs >= cpu.abs, "{op:?}");
            check(&format!("{op:?}"), &unary_expr(op, "x"), cuda);
        }
        let logical = [BinaryOp::And, BinaryOp::Or];
        for op in BinaryOp::ARITHMETIC.into_iter().chain(logical) {
            let cuda = eval::cuda_binary_accuracy(op);
            assert!(cuda.ulps >= eval::binary_accuracy(op).ulps, "{op:?}");
            check(&format!("{op:?}"), &binary_expr(op, "x", "y", None), cuda);
        }
        // The prelude's helpers: each call is listed (what they feed is bounded above).
        for call in library_calls(crate::codegen::PRELUDE_PORTABLE) {
            if call.ends_with('f')
                && call
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                assert!(
                    eval::cuda_library_ulps(&call).is_some(),
                    "the prelude calls {call}, whose bound CUDA_LIBRARY_ULPS does not list"
                );
            }
        }
        // The check reads calls: `expf(` in exp's code.
        assert_eq!(
            library_calls("0.5f * expf(x) + tc_sigmoid(fabsf(y))"),
            ["expf", "fabsf"]
        );
    }

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
