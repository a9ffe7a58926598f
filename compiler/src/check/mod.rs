//! The checker: names, dims, dtypes and shapes; lowers the AST into the checked `ir::Graph`.
//!
//! Statements are checked in order; an error never stops the checker (a failed value is
//! `Val::Error` and errors about it are not repeated), but a program with errors never
//! produces a graph. Expressions (`expr.rs`) and built-ins (`builtins.rs`) live apart; indexing
//! (`x[…]`) is `index.rs`, `concat`/`stack` `join.rs`.

mod builtins;
mod expr;
mod grad;
mod hint;
mod index;
mod indices;
mod join;

use crate::diag::{Diagnostic, Diagnostics, ErrorKind, Span};
use crate::ir::layout::{apply_view, Layout};
use crate::ir::{DType, Dim, Graph, Leaf, Node, NodeId, Op, Origin, Output, TensorType};
use crate::syntax::ast::{DeclKind, Expr, Ident, Program, StmtKind, TypeExpr};
use std::collections::HashMap;

/// Parses and checks `source` with the `--dim` overrides `dims`.
pub fn check_source(source: &str, dims: &[(String, u64)]) -> Result<Graph, Diagnostics> {
    let (program, mut diags) = crate::syntax::parse(source);
    let mut cx = Checker::new(source, dims);
    cx.program(&program);
    diags.append(&mut cx.diags);
    diags.sort_by_key(|d| d.primary_span().map_or(usize::MAX, |s| s.start));
    if diags.is_empty() {
        Ok(cx.graph)
    } else {
        Err(diags)
    }
}

/// The message of a `size-overflow` about `what` (of type `ty`): the element count when it
/// does not fit in 64 bits, else the byte count, which is what overflowed.
fn too_big(what: &str, ty: &TensorType) -> String {
    match ty.numel() {
        None => format!("{what} has more elements than 64 bits can count"),
        Some(n) => format!(
            "{what} has {n} elements of {} bytes: more bytes than 64 bits can count",
            ty.dtype.size()
        ),
    }
}

/// Near-miss hints are looked for only for this many unknown names.
const MAX_HINTS: usize = 100;

/// What kind of name a place in the program needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// A tensor or a weak scalar: an operand in an expression.
    Value,
    /// A dim: in a shape, a dim's size or an axis.
    Dim,
}

/// What a name is bound to.
#[derive(Clone, Debug)]
enum Binding {
    Dim(u64),
    Tensor(NodeId),
    /// A weak scalar (`two = 2`): keeps the dtype of whatever tensor it meets.
    Weak(Weak),
    /// The statement binding it failed; uses report nothing more.
    Poison,
}

/// A weak scalar's value: an integer (integer literals, dims, and `+ - * **` on them,
/// exact: a result beyond 64 bits is an error) or a float (float literals, `/`, functions
/// of weak scalars).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Weak {
    Float(f64),
    Int(i64),
}

impl Weak {
    fn as_f64(self) -> f64 {
        match self {
            Weak::Float(x) => x,
            Weak::Int(i) => i as f64,
        }
    }

    /// The dtype the scalar has on its own: f32 for a float, i64 for an integer.
    fn dtype(self) -> DType {
        match self {
            Weak::Float(_) => DType::F32,
            Weak::Int(_) => DType::I64,
        }
    }
}

/// The value of an expression while checking.
#[derive(Clone, Copy, Debug)]
enum Val {
    Tensor(NodeId),
    /// A number literal or a dim (or arithmetic on them): dtype decided by its partner.
    Weak(Weak),
    /// Already reported.
    Error,
}

struct Checker<'s> {
    source: &'s str,
    line_starts: Vec<usize>,
    graph: Graph,
    layouts: Vec<Layout>,
    env: HashMap<String, (Binding, Span)>,
    /// Every name some statement binds, with its span (to say "used before it is bound").
    later: HashMap<String, Span>,
    overrides: Vec<(String, u64, bool)>,
    diags: Diagnostics,
    /// Set when a node of the current statement overflowed (reported once per statement).
    overflowed: bool,
    /// How many unknown names have been given a near-miss hint (see `MAX_HINTS`).
    hints: usize,
    /// For each loss name, the variables some `grad` differentiates it against.
    grad_requests: HashMap<String, Vec<String>>,
    /// Each loss's backward pass so far: (variable, its gradient).
    backwards: HashMap<NodeId, Vec<(NodeId, NodeId)>>,
    /// The `detach` nodes: no gradient flows through them.
    detached: Vec<NodeId>,
    /// Losses whose backward pass failed (reported once).
    grad_failed: Vec<NodeId>,
}

impl<'s> Checker<'s> {
    fn new(source: &'s str, dims: &[(String, u64)]) -> Checker<'s> {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Checker {
            source,
            line_starts,
            graph: Graph::new(),
            layouts: Vec::new(),
            env: HashMap::new(),
            later: HashMap::new(),
            overrides: dims.iter().map(|(n, v)| (n.clone(), *v, false)).collect(),
            diags: Vec::new(),
            overflowed: false,
            hints: 0,
            grad_requests: HashMap::new(),
            backwards: HashMap::new(),
            detached: Vec::new(),
            grad_failed: Vec::new(),
        }
    }

    fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn line(&self, pos: usize) -> u32 {
        (self.line_starts.partition_point(|&s| s <= pos)) as u32
    }

    /// Appends a node with its origin (group = itself) and layout.
    fn push(&mut self, op: Op, ty: TensorType, span: &Span) -> NodeId {
        if ty.bytes().is_none() && !self.overflowed {
            self.overflowed = true;
            self.error(
                Diagnostic::error(
                    ErrorKind::SizeOverflow,
                    too_big(&format!("the tensor {ty}"), &ty),
                )
                .with_primary(span.clone(), format!("this is {ty}"))
                .with_help("check the dims (and any `--dim` overrides)"),
            );
        }
        let sizes = ty.sizes();
        let id = NodeId(self.graph.len() as u32);
        let layout = match &op {
            Op::View(view, arg) => {
                let in_sizes = self.graph.ty(*arg).sizes();
                apply_view(view, &self.layouts[arg.index()], &in_sizes, &sizes)
                    .unwrap_or_else(|| Layout::contiguous(id, &sizes))
            }
            _ => Layout::contiguous(id, &sizes),
        };
        let origin = Origin {
            span: span.clone(),
            line: self.line(span.start),
            group: Some(id),
            backward_of: None,
            grad_of: None,
        };
        let id = self.graph.push(Node { op, ty, name: None }, origin);
        self.layouts.push(layout);
        id
    }

    fn program(&mut self, program: &Program) {
        self.grad_requests = grad::grad_requests(program);
        for stmt in &program.stmts {
            let name = match &stmt.kind {
                StmtKind::Dim { name, .. }
                | StmtKind::Decl { name, .. }
                | StmtKind::Assign { name, .. } => Some(name),
                StmtKind::Broken { binds } => binds.as_ref(),
                StmtKind::Output { .. } => None,
            };
            if let Some(n) = name {
                self.later
                    .entry(n.name.clone())
                    .or_insert_with(|| n.span.clone());
            }
        }
        let mut broken = false;
        let mut saw_output = false;
        for stmt in &program.stmts {
            self.overflowed = false;
            match &stmt.kind {
                StmtKind::Dim { name, size } => self.dim(name, size),
                StmtKind::Decl { kind, name, ty } => self.decl(*kind, name, ty),
                StmtKind::Assign { name, value } => {
                    let v = self.expr(value);
                    let b = match v {
                        Val::Tensor(id) => {
                            let node = self.graph.node_mut(id);
                            if node.name.is_none() {
                                node.name = Some(name.name.clone());
                            }
                            Binding::Tensor(id)
                        }
                        Val::Weak(x) => Binding::Weak(x),
                        Val::Error => Binding::Poison,
                    };
                    self.bind(name, b);
                }
                StmtKind::Output { names } => {
                    saw_output = true;
                    for n in names {
                        self.output(n);
                    }
                }
                StmtKind::Broken { binds } => {
                    broken = true;
                    if let Some(n) = binds {
                        if !self.env.contains_key(&n.name) {
                            self.env
                                .insert(n.name.clone(), (Binding::Poison, n.span.clone()));
                        }
                    }
                }
            }
        }
        for (name, value, used) in std::mem::take(&mut self.overrides) {
            if !used {
                let dims: Vec<&str> = self.graph.dims.iter().map(|(n, _)| n.as_str()).collect();
                let mut d = Diagnostic::error(
                    ErrorKind::UnknownDimOverride,
                    format!("`--dim {name}={value}` names no dim of this program"),
                );
                d = match hint::nearest(&name, dims.iter().copied()) {
                    Some(h) => d.with_help(format!("did you mean `--dim {h}={value}`?")),
                    None if dims.is_empty() => d.with_note("the program declares no dims"),
                    None => d.with_note(format!("the program's dims are {}", dims.join(", "))),
                };
                self.error(d);
            }
        }
        if !saw_output && !broken {
            let end = self.source.len();
            self.error(
                Diagnostic::error(ErrorKind::NoOutput, "the program has no `output` statement")
                    .with_primary(end..end, "expected `output NAME` by here")
                    .with_help("mark at least one result, e.g. `output y`"),
            );
        }
    }

    /// Binds `name`, reporting a second binding.
    fn bind(&mut self, name: &Ident, b: Binding) {
        if let Some((_, first)) = self.env.get(&name.name) {
            let first = first.clone();
            self.error(
                Diagnostic::error(
                    ErrorKind::DuplicateName,
                    format!("`{}` is already bound", name.name),
                )
                .with_primary(name.span.clone(), "bound a second time here")
                .with_secondary(first, "first bound here")
                .with_help("every name is bound once; pick a new name"),
            );
            return;
        }
        self.env.insert(name.name.clone(), (b, name.span.clone()));
    }

    fn dim(&mut self, name: &Ident, size: &Expr) {
        let written = self.const_int(size, ErrorKind::BadDim);
        let mut value = written;
        if let Some(o) = self.overrides.iter_mut().find(|o| o.0 == name.name) {
            o.2 = true;
            value = Some(i128::from(o.1));
            if o.1 == 0 {
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadDim,
                        format!("`--dim {}=0`: a dim must be positive", name.name),
                    )
                    .with_primary(name.span.clone(), "the dim declared here"),
                );
                self.bind(name, Binding::Poison);
                return;
            }
        }
        let Some(v) = value else {
            self.bind(name, Binding::Poison);
            return;
        };
        if v <= 0 || v > i128::from(u64::MAX) {
            let msg = if v <= 0 {
                "a dim must be positive"
            } else {
                "a dim must fit in 64 bits"
            };
            self.error(
                Diagnostic::error(
                    ErrorKind::BadDim,
                    format!("dim `{}` is {v}: {msg}", name.name),
                )
                .with_primary(size.span.clone(), format!("this is {v}")),
            );
            self.bind(name, Binding::Poison);
            return;
        }
        let v = v as u64;
        if !self.env.contains_key(&name.name) {
            self.graph.dims.push((name.name.clone(), v));
        }
        self.bind(name, Binding::Dim(v));
    }

    fn decl(&mut self, kind: DeclKind, name: &Ident, ty: &TypeExpr) {
        let Some(t) = self.type_expr(ty) else {
            self.bind(name, Binding::Poison);
            return;
        };
        if t.bytes().is_none() {
            self.error(
                Diagnostic::error(
                    ErrorKind::SizeOverflow,
                    too_big(&format!("`{}`", name.name), &t),
                )
                .with_primary(ty.span.clone(), format!("this is {t}")),
            );
            self.bind(name, Binding::Poison);
            return;
        }
        if self.env.contains_key(&name.name) {
            self.bind(name, Binding::Poison);
            return;
        }
        let op = match kind {
            DeclKind::Input => Op::Input {
                index: self.graph.inputs.len(),
            },
            DeclKind::Param => Op::Param {
                index: self.graph.params.len(),
            },
        };
        let span = name.span.start..ty.span.end;
        let id = self.push(op, t.clone(), &span);
        self.graph.node_mut(id).name = Some(name.name.clone());
        let leaf = Leaf {
            name: name.name.clone(),
            node: id,
            ty: t,
        };
        match kind {
            DeclKind::Input => self.graph.inputs.push(leaf),
            DeclKind::Param => self.graph.params.push(leaf),
        }
        self.bind(name, Binding::Tensor(id));
    }

    /// `DTYPE[SHAPE]` to a type.
    fn type_expr(&mut self, ty: &TypeExpr) -> Option<TensorType> {
        let dtype = DType::from_name(&ty.dtype.name);
        if dtype.is_none() {
            let mut d = Diagnostic::error(
                ErrorKind::UnknownDtype,
                format!("unknown dtype `{}`", ty.dtype.name),
            )
            .with_primary(ty.dtype.span.clone(), "not a dtype")
            .with_note("the dtypes are f32, f16, bf16, i32, i64 and bool");
            if let Some(h) = hint::nearest(&ty.dtype.name, DType::ALL.map(|d| d.name())) {
                d = d.with_help(format!("did you mean `{h}`?"));
            }
            self.error(d);
        }
        let shape = self.shape_list(&ty.shape, false)?;
        Some(TensorType::new(
            dtype?,
            shape.into_iter().map(|(d, _)| d).collect(),
        ))
    }

    /// A shape list (`[B, 4, 256]`): dims keep their names. With `allow_infer`, entries may
    /// be -1 (returned as size 0, flagged true).
    fn shape_list(&mut self, items: &[Expr], allow_infer: bool) -> Option<Vec<(Dim, bool)>> {
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(v) = self.const_int(item, ErrorKind::BadShape) else {
                ok = false;
                continue;
            };
            if allow_infer && v == -1 {
                out.push((Dim::new(0), true));
                continue;
            }
            if v <= 0 || v > i128::from(u64::MAX) {
                self.error(
                    Diagnostic::error(
                        ErrorKind::BadShape,
                        format!("a size must be positive, got {v}"),
                    )
                    .with_primary(item.span.clone(), format!("this is {v}")),
                );
                ok = false;
                continue;
            }
            let name = match &item.kind {
                crate::syntax::ast::ExprKind::Name(n) => Some(n.clone()),
                _ => None,
            };
            out.push((
                Dim {
                    size: v as u64,
                    name,
                },
                false,
            ));
        }
        ok.then_some(out)
    }

    fn output(&mut self, n: &Ident) {
        if self.graph.outputs.iter().any(|o| o.name == n.name) {
            self.error(
                Diagnostic::error(
                    ErrorKind::DuplicateOutput,
                    format!("`{}` is already an output", n.name),
                )
                .with_primary(n.span.clone(), "listed again here"),
            );
            return;
        }
        let node = match self.lookup(&n.name, &n.span) {
            Val::Tensor(id) => id,
            Val::Weak(x) => {
                // A weak value alone is f32, integers included (§1: an output of literals
                // and dims has always been f32).
                let id = self.push(
                    Op::Scalar(x.as_f64()),
                    TensorType::scalar(DType::F32),
                    &n.span,
                );
                self.graph.node_mut(id).name = Some(n.name.clone());
                id
            }
            Val::Error => return,
        };
        self.graph.outputs.push(Output {
            name: n.name.clone(),
            node,
            span: n.span.clone(),
        });
    }

    /// The value of a name, reporting unknown names with a hint.
    fn lookup(&mut self, name: &str, span: &Span) -> Val {
        match self.env.get(name) {
            Some((Binding::Tensor(id), _)) => Val::Tensor(*id),
            Some((Binding::Dim(v), _)) => Val::Weak(Weak::Int(*v as i64)),
            Some((Binding::Weak(v), _)) => Val::Weak(*v),
            Some((Binding::Poison, _)) => Val::Error,
            None => {
                self.unknown_name(name, span, Want::Value);
                Val::Error
            }
        }
    }

    /// Reports an unknown `name` used where a `want` belongs. A near-miss hint offers only
    /// names of that kind, and only for the first `MAX_HINTS` unknown names: finding one
    /// scans every bound name, and a file of thousands of errors must stay linear (the
    /// command line prints only the first errors anyway).
    fn unknown_name(&mut self, name: &str, span: &Span, want: Want) {
        let mut d = Diagnostic::error(ErrorKind::UnknownName, format!("unknown name `{name}`"))
            .with_primary(span.clone(), "not bound before this line");
        if let Some(later) = self.later.get(name).cloned() {
            d = d
                .with_secondary(later, "bound here, later")
                .with_help(format!("bind `{name}` before using it"));
        } else if want == Want::Value && builtins::is_builtin(name) {
            d = d.with_help(format!("`{name}` is a function: call it as `{name}(…)`"));
        } else if self.hints < MAX_HINTS {
            self.hints += 1;
            let names = self.env.iter().filter_map(|(n, (b, _))| {
                let kind = match b {
                    Binding::Dim(_) => Want::Dim,
                    Binding::Tensor(_) | Binding::Weak(_) | Binding::Poison => Want::Value,
                };
                (kind == want).then_some(n.as_str())
            });
            if let Some(h) = hint::nearest(name, names) {
                d = d.with_help(format!("did you mean `{h}`?"));
            }
        }
        self.error(d);
    }
}
