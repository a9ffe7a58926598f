//! The tensor graph: nodes in an arena, referred to by `NodeId`, spans in a side table.
//!
//! Two graphs use this type. The *checked* graph mirrors the source (built-ins such as
//! `softmax` are single nodes); the *primitive* graph (after `decompose`) has only the ops
//! a kernel can compute. Invariants (checked by `verify`):
//! 1. operands precede their users (handles point backwards);
//! 2. `Binary` operands have the result's shape and dtype (broadcasts and promotions are
//!    explicit `Expand { implicit: true }` views and `Cast { implicit: true }` nodes);
//! 3. every node's type agrees with what its op computes from its operands' types.

use super::types::{DType, TensorType};
use crate::diag::Span;
use serde::Serialize;
use std::fmt;

/// A handle to a node of a `Graph`. Handles only point backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Relu,
    Gelu,
    Silu,
    Erf,
    Square,
    /// `logical_not`: on `bool` only.
    Not,
    /// `log(1 + x)`, accurate near 0.
    Log1p,
    /// `exp(x) - 1`, accurate near 0.
    Expm1,
    /// Round toward -inf (integers: themselves).
    Floor,
    /// Round toward +inf (integers: themselves).
    Ceil,
    /// Round to nearest, half to even (`torch.round`; integers: themselves).
    Round,
    /// -1, 0 or 1 (`torch.sign`: 0 for ±0 and for NaN; integers keep their dtype).
    Sign,
    /// `1 / x`.
    Reciprocal,
    Tan,
    /// `torch.nn.functional.softplus` with beta 1, threshold 20: `x` above 20, else
    /// `log1p(exp(x))`.
    Softplus,
    /// The tanh approximation of `gelu`: `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
}

impl UnaryOp {
    /// Every unary op (`Not` included: it is defined on 0/1 values, `bool`'s).
    pub const ALL: [UnaryOp; 26] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::Silu,
        UnaryOp::Erf,
        UnaryOp::Square,
        UnaryOp::Not,
        UnaryOp::Log1p,
        UnaryOp::Expm1,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Sign,
        UnaryOp::Reciprocal,
        UnaryOp::Tan,
        UnaryOp::Softplus,
        UnaryOp::GeluTanh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Silu => "silu",
            UnaryOp::Erf => "erf",
            UnaryOp::Square => "square",
            UnaryOp::Not => "logical_not",
            UnaryOp::Log1p => "log1p",
            UnaryOp::Expm1 => "expm1",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Round => "round",
            UnaryOp::Sign => "sign",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Tan => "tan",
            UnaryOp::Softplus => "softplus",
            UnaryOp::GeluTanh => "gelu_tanh",
        }
    }

    /// The built-in function of this name (`neg` is the unary minus, not a function).
    pub fn from_function(name: &str) -> Option<UnaryOp> {
        UnaryOp::ALL
            .into_iter()
            .find(|op| *op != UnaryOp::Neg && op.name() == name)
    }

    /// Whether the op keeps an integer operand's dtype (SPEC §3.1: `abs`, unary `-`,
    /// `square`, `relu`; and, as PyTorch, `floor`, `ceil`, `round` and `sign`); the other
    /// functions compute in f32 on integers and `bool`.
    pub fn keeps_int(self) -> bool {
        matches!(
            self,
            UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Square
                | UnaryOp::Relu
                | UnaryOp::Floor
                | UnaryOp::Ceil
                | UnaryOp::Round
                | UnaryOp::Sign
        )
    }
}

/// A comparison: `a < b` and friends. Operands have one dtype; the result is `bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    pub const ALL: [CmpOp; 6] = [
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
        CmpOp::Eq,
        CmpOp::Ne,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
        }
    }

    /// The operator as written in source (and in C).
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
    /// A comparison: the result is `bool` (operands of one dtype, any dtype).
    Cmp(CmpOp),
    /// `logical_and`, `logical_or`: `bool` operands and result.
    And,
    Or,
}

impl BinaryOp {
    /// The arithmetic ops, whose result has the operands' dtype (every op but the
    /// comparisons and the logical ones): the list tests iterate over.
    pub const ARITHMETIC: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
    ];

    /// The infix operator a program writes the op with (`+`, `**`, `<=`), or `None` for the
    /// ops written as calls (`maximum(a, b)`, `logical_and(a, b)`).
    pub fn operator(self) -> Option<&'static str> {
        match self {
            BinaryOp::Add => Some("+"),
            BinaryOp::Sub => Some("-"),
            BinaryOp::Mul => Some("*"),
            BinaryOp::Div => Some("/"),
            BinaryOp::Pow => Some("**"),
            BinaryOp::Cmp(c) => Some(c.symbol()),
            BinaryOp::Maximum | BinaryOp::Minimum | BinaryOp::And | BinaryOp::Or => None,
        }
    }

    /// Whether the result is `bool` whatever the operands' dtype (the comparisons).
    pub fn is_cmp(self) -> bool {
        matches!(self, BinaryOp::Cmp(_))
    }

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Cmp(c) => c.name(),
            BinaryOp::And => "logical_and",
            BinaryOp::Or => "logical_or",
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    /// The position along the row (row-major over the reduced axes) of the first largest
    /// element, NaN counting as the largest (PyTorch's `argmax`); an `i64` result.
    ArgMax,
    /// As `ArgMax`, of the first smallest element, NaN counting as the smallest.
    ArgMin,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }

    /// `argmax` and `argmin`: the result is a position, not a value.
    pub fn is_arg(self) -> bool {
        matches!(self, ReduceOp::ArgMax | ReduceOp::ArgMin)
    }
}

/// Views never copy: each is an index map onto its operand's storage (see `layout`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewOp {
    /// Swap the last two axes.
    Transpose,
    /// `permute(x, perm)`: result axis `i` is operand axis `perm[i]`.
    Permute(Vec<usize>),
    /// To the node's shape; the operand's layout must allow it (else the checker put a
    /// `Copy` in front).
    Reshape,
    /// NumPy `broadcast_to` to the node's shape (stride 0 on new or size-1 axes).
    /// `implicit` marks the broadcasts the checker inserted for a binary operator.
    Expand { implicit: bool },
    /// Basic indexing `x[…]`: one entry per operand axis (see `SliceAxis`); the kept axes'
    /// sizes are the node's.
    Slice(Vec<SliceAxis>),
}

/// One operand axis of a `Slice`: result index `i` reads operand index `start + i·step`;
/// an integer index (`keep: false`) reads `start` and removes the axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SliceAxis {
    pub start: u64,
    pub step: u64,
    pub keep: bool,
}

/// What a node computes. A closed set: `match` checks every pass handles every op.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The `index`th `input` statement.
    Input {
        index: usize,
    },
    /// The `index`th `param` statement.
    Param {
        index: usize,
    },
    /// A rank-0 constant: a number literal or a dim used as a value.
    Scalar(f64),
    Unary(UnaryOp, NodeId),
    Binary(BinaryOp, NodeId, NodeId),
    /// Reduce over `axes` (sorted, distinct, non-negative).
    Reduce {
        op: ReduceOp,
        arg: NodeId,
        axes: Vec<usize>,
        keepdim: bool,
    },
    /// `softmax` or (`log: true`) `log_softmax` along `axis`. Checked graph only.
    Softmax {
        arg: NodeId,
        axis: usize,
        log: bool,
    },
    /// `layernorm` along `axis`. Checked graph only.
    LayerNorm {
        arg: NodeId,
        axis: usize,
        eps: f64,
    },
    /// `rmsnorm` along `axis`. Checked graph only.
    RmsNorm {
        arg: NodeId,
        axis: usize,
        eps: f64,
    },
    /// `a @ b`; batch dims already broadcast to equal sizes.
    MatMul(NodeId, NodeId),
    /// Convert to the node's dtype (round to nearest, ties to even). `implicit` marks the
    /// promotions the checker inserted.
    Cast {
        arg: NodeId,
        implicit: bool,
    },
    View(ViewOp, NodeId),
    /// Materialise a view contiguously (a `reshape` no strides can express). In the
    /// primitive graph also each operand of a `Concat`, written into its place.
    Copy(NodeId),
    /// `arange(N)`: an `i64[N]` whose element `i` is `i`. Like a `Scalar`, a value no
    /// kernel loads: each reader computes it from its own index through the views it is
    /// read by, so it never has a buffer unless it must exist in memory (an output, a
    /// matmul operand, a gathered table).
    Arange,
    /// `take(arg, index, axis)` (`numpy.take`). Checked graph only: `decompose` writes it
    /// as views and a `Gather`.
    Take {
        arg: NodeId,
        index: NodeId,
        axis: usize,
    },
    /// `gather(arg, index, axis)` (`numpy.take_along_axis` with broadcasting): element `p`
    /// is `arg[p with p[axis] = index[p]]`, where `arg`'s other axes broadcast. In the
    /// primitive graph `index` has the node's shape (an explicit broadcast). An index
    /// outside `[0, arg.shape[axis])` is an error in the data.
    Gather {
        arg: NodeId,
        index: NodeId,
        axis: usize,
    },
    /// `one_hot(arg, classes)`: `i64[..., classes]`. Checked graph only: `decompose` writes
    /// it as a comparison of the index with an `arange`.
    OneHot {
        arg: NodeId,
        classes: u64,
    },
    /// `cumsum(arg, axis)`: the inclusive prefix sum along `axis` (a scan; f16/bf16 add
    /// in f32 and round each result).
    Cumsum {
        arg: NodeId,
        axis: usize,
    },
    /// `where(cond, a, b)`: `cond` is `bool`; all three have the node's shape (implicit
    /// expands), `a` and `b` its dtype (implicit casts).
    Where(NodeId, NodeId, NodeId),
    /// `clamp(arg, min=…, max=…)`: `minimum(maximum(x, min), max)` with either bound left
    /// out, as PyTorch (NaN stays NaN; `min > max` gives `max`). The bounds are constants
    /// of the node's dtype (the checker promoted the operand to it). Checked graph only:
    /// `decompose` writes it as `maximum` and `minimum` with constants, which fuse.
    Clamp {
        arg: NodeId,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// `leaky_relu(arg, slope)`: `x > 0 ? x : x·slope`, as PyTorch. Checked graph only:
    /// `decompose` writes it as a comparison, a product and a `where` (one fused kernel).
    LeakyRelu {
        arg: NodeId,
        slope: f64,
    },
    /// `var` (`std` with `sqrt: true`) over `axes` (sorted, distinct): the sum of squared
    /// deviations from the mean over `max(count - correction, 0)`, as `torch.var`.
    /// Checked graph only: `decompose` writes it as two passes over the row (the mean, then
    /// the squared deviations), which fuse into one row kernel.
    Var {
        arg: NodeId,
        axes: Vec<usize>,
        keepdim: bool,
        correction: f64,
        sqrt: bool,
    },
    /// `logsumexp` over `axes` (sorted, distinct): `log(sum(exp(x - m))) + m` with `m` the
    /// row's max (0 where it is infinite), as `torch.logsumexp`. Checked graph only:
    /// `decompose` writes it as a max and a sum of exponentials in one row kernel.
    LogSumExp {
        arg: NodeId,
        axes: Vec<usize>,
        keepdim: bool,
    },
    /// `concat(args, axis)`: the operands (same dtype, same sizes but on `axis`) one after
    /// another along `axis`. In the primitive graph its operands are `Copy` nodes whose
    /// kernels store straight into their place in its buffer (`plan`): it has no kernel.
    Concat {
        args: Vec<NodeId>,
        axis: usize,
    },
    /// `take`'s gradient (`index_add`, PyTorch's `embedding_dense_backward`): `grad` has
    /// shape `pre ++ index.shape ++ post` (`pre` of rank `axis`), the node
    /// `pre ++ [size] ++ post`, and element `[a, v, c]` is the sum of `grad[a, p, c]` over
    /// the index positions `p` with `index[p] == v`, in ascending order of `p` (f32
    /// accumulation, rounded once to the node's dtype). An index outside `[0, size)` is an
    /// error in the data, as in the `take` it differentiates. Its own kernel
    /// (`schedule::IndexAddKernel`): `N · |pre ++ post|` adds, never `V · N`.
    IndexAdd {
        grad: NodeId,
        index: NodeId,
        axis: usize,
        size: u64,
    },
}

impl Op {
    /// The operands, in order.
    pub fn operands(&self) -> Vec<NodeId> {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Scalar(_) | Op::Arange => Vec::new(),
            Op::Unary(_, a)
            | Op::Reduce { arg: a, .. }
            | Op::Softmax { arg: a, .. }
            | Op::LayerNorm { arg: a, .. }
            | Op::RmsNorm { arg: a, .. }
            | Op::Cast { arg: a, .. }
            | Op::View(_, a)
            | Op::Copy(a)
            | Op::OneHot { arg: a, .. }
            | Op::Cumsum { arg: a, .. }
            | Op::Clamp { arg: a, .. }
            | Op::LeakyRelu { arg: a, .. }
            | Op::Var { arg: a, .. }
            | Op::LogSumExp { arg: a, .. } => vec![*a],
            Op::Binary(_, a, b) | Op::MatMul(a, b) => vec![*a, *b],
            Op::Take { arg, index, .. } | Op::Gather { arg, index, .. } => vec![*arg, *index],
            Op::Where(c, a, b) => vec![*c, *a, *b],
            Op::Concat { args, .. } => args.clone(),
            Op::IndexAdd { grad, index, .. } => vec![*grad, *index],
        }
    }

    /// A short name for reports and kernel headers (`add`, `gelu`, `sum`, `matmul`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Scalar(_) => "scalar",
            Op::Unary(op, _) => op.name(),
            Op::Binary(op, ..) => op.name(),
            Op::Reduce { op, .. } => op.name(),
            Op::Softmax { log: false, .. } => "softmax",
            Op::Softmax { log: true, .. } => "log_softmax",
            Op::LayerNorm { .. } => "layernorm",
            Op::RmsNorm { .. } => "rmsnorm",
            Op::MatMul(..) => "matmul",
            Op::Cast { .. } => "cast",
            Op::View(ViewOp::Transpose, _) => "transpose",
            Op::View(ViewOp::Permute(_), _) => "permute",
            Op::View(ViewOp::Reshape, _) => "reshape",
            Op::View(ViewOp::Expand { .. }, _) => "expand",
            Op::View(ViewOp::Slice(_), _) => "slice",
            Op::Copy(_) => "copy",
            Op::Arange => "arange",
            Op::Take { .. } => "take",
            Op::Gather { .. } => "gather",
            Op::OneHot { .. } => "one_hot",
            Op::Cumsum { .. } => "cumsum",
            Op::Where(..) => "where",
            Op::Concat { .. } => "concat",
            Op::Clamp { .. } => "clamp",
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::Var { sqrt: false, .. } => "var",
            Op::Var { sqrt: true, .. } => "std",
            Op::LogSumExp { .. } => "logsumexp",
            Op::IndexAdd { .. } => "index_add",
        }
    }

    pub fn is_view(&self) -> bool {
        matches!(self, Op::View(..))
    }

    /// Inputs, params, scalars and aranges: values no kernel computes (a kernel that reads
    /// a scalar or an arange writes it down itself, see `is_synthesized`).
    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Param { .. } | Op::Scalar(_) | Op::Arange
        )
    }

    /// Scalars and aranges: leaves with no storage, which every reading kernel computes
    /// from its own index (a constant; the index through the views it is read by), and
    /// which are written to memory only where they must exist there (a "fill").
    pub fn is_synthesized(&self) -> bool {
        matches!(self, Op::Scalar(_) | Op::Arange)
    }
}

/// Where a node came from in the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The span of the expression that produced the node.
    pub span: Span,
    /// 1-based source line of `span.start`.
    pub line: u32,
    /// For nodes of the primitive graph: the checked-graph node they were decomposed from
    /// (all nodes of one `softmax` share it). In the checked graph, the node itself.
    pub group: Option<NodeId>,
    /// For nodes of a backward pass (`grad`), whose `span` is the `grad` call's: the span
    /// and line of the forward expression whose backward function made the node, so the
    /// report can say which gradient a buffer holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backward_of: Option<(Span, u32)>,
    /// For the value a `grad(L, P)` call returns: `P`'s name and the call's line, so the
    /// report labels it `grad of P (line N)` (SPEC §3.8). Names joined by ", " where one
    /// value is the gradient of several variables (`L = sum(a + b)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_of: Option<(String, u32)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// The name the program bound this value to (`h = …`), if it is a bound value.
    pub name: Option<String>,
}

/// One `output` entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Output {
    pub name: String,
    pub node: NodeId,
    pub span: Span,
}

/// One `input` or `param` declaration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Leaf {
    pub name: String,
    pub node: NodeId,
    pub ty: TensorType,
}

/// A forward value a backward function saves (PyTorch's `SavedVariable`): live in the
/// eager model until that function runs (the first node of its `Origin.group`, `until`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Saved {
    pub value: NodeId,
    pub until: NodeId,
}

/// One `grad(loss, wrt)` of the program and the node holding its result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradOf {
    pub loss: NodeId,
    pub wrt: NodeId,
    pub grad: NodeId,
}

/// A tensor program as a DAG of typed nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Graph {
    nodes: Vec<Node>,
    /// Side table, indexed like `nodes`.
    origins: Vec<Origin>,
    pub inputs: Vec<Leaf>,
    pub params: Vec<Leaf>,
    pub outputs: Vec<Output>,
    /// The dims after `--dim` overrides, in declaration order.
    pub dims: Vec<(String, u64)>,
    /// The forward values each backward pass (`autodiff`) saves, for the eager model.
    pub saved: Vec<Saved>,
    /// Every gradient `autodiff` computed, with its loss and variable.
    pub grads: Vec<GradOf>,
    /// The node ranges `[start, end)` of the backward passes `autodiff` appended.
    pub passes: Vec<(NodeId, NodeId)>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Appends a node. Operands must already be in the graph.
    pub fn push(&mut self, node: Node, origin: Origin) -> NodeId {
        debug_assert!(node
            .op
            .operands()
            .iter()
            .all(|o| o.index() < self.nodes.len()));
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(node);
        self.origins.push(origin);
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.index()]
    }

    pub fn origin(&self, id: NodeId) -> &Origin {
        &self.origins[id.index()]
    }

    /// Takes `from`'s inputs, params and outputs, each pointing at `map[node]`: for a pass
    /// that rebuilds a graph node by node (`map[old]` being the new id of `old`).
    pub fn declarations_from(&mut self, from: &Graph, map: &[NodeId]) {
        let m = |n: NodeId| map[n.index()];
        let leaf = |l: &Leaf| Leaf {
            node: m(l.node),
            ..l.clone()
        };
        self.inputs = from.inputs.iter().map(leaf).collect();
        self.params = from.params.iter().map(leaf).collect();
        self.outputs = from
            .outputs
            .iter()
            .map(|o| Output {
                node: m(o.node),
                ..o.clone()
            })
            .collect();
    }

    /// Records that `id` is what a `grad(L, name)` call on `line` returns (`Origin.grad_of`).
    pub fn mark_grad_of(&mut self, id: NodeId, name: &str, line: u32) {
        let o = &mut self.origins[id.index()];
        o.grad_of = match o.grad_of.take() {
            Some((prev, l)) if prev.split(", ").any(|n| n == name) => Some((prev, l)),
            Some((prev, l)) => Some((format!("{prev}, {name}"), l)),
            None => Some((name.to_string(), line)),
        };
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.nodes[id.index()].ty
    }

    pub fn dtype(&self, id: NodeId) -> DType {
        self.nodes[id.index()].ty.dtype
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// All node ids in order (a topological order, by invariant 1).
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// For each node, the nodes that use it (in order, with repeats for `x * x`).
    pub fn users(&self) -> Vec<Vec<NodeId>> {
        let mut users = vec![Vec::new(); self.nodes.len()];
        for id in self.ids() {
            for o in self.node(id).op.operands() {
                users[o.index()].push(id);
            }
        }
        users
    }

    /// For each node, whether an output depends on it (the output nodes included).
    pub fn needed(&self) -> Vec<bool> {
        let mut needed = vec![false; self.nodes.len()];
        for o in &self.outputs {
            needed[o.node.index()] = true;
        }
        for id in (0..self.nodes.len() as u32).rev().map(NodeId) {
            if needed[id.index()] {
                for o in self.node(id).op.operands() {
                    needed[o.index()] = true;
                }
            }
        }
        needed
    }

    /// A display name for a node: its bound name, else `%N`.
    pub fn display_name(&self, id: NodeId) -> String {
        match &self.node(id).name {
            Some(n) => n.clone(),
            None => id.to_string(),
        }
    }
}
