//! tc compiler core: `.tx` source to a fused, memory-planned schedule and CUDA C.
//!
//! The pipeline, one module per stage (see `docs/architecture.md`):
//! `syntax` (lex, parse) → `check` (names, dtypes, shapes → checked `ir::Graph`) →
//! `ir::decompose` (built-ins to primitives) → `fuse` (group ops into kernels) →
//! `plan` (sibling merges that do not grow the arena, buffers, liveness, in-place reuse,
//! arena packing → `schedule::Plan`) →
//! `report` (the memory report) and `codegen` (CUDA C).
//! This crate does no I/O and touches no device.

pub mod check;
pub mod codegen;
pub mod diag;
pub mod fuse;
pub mod invariant;
pub mod ir;
pub mod lower;
pub mod plan;
pub mod report;
pub mod schedule;
pub mod syntax;

pub use diag::{Diagnostic, Diagnostics, ErrorKind, Span};
pub use schedule::{Plan, PlanOptions};

/// Everything `compile` needs besides the source.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// `--dim NAME=INT` overrides, applied before checking.
    pub dims: Vec<(String, u64)>,
    pub plan: PlanOptions,
}

/// A compiled program: the checked graph, its primitive form, the plan and its report.
#[derive(Clone, Debug)]
pub struct Program {
    /// The graph as written (built-ins intact): what the reference evaluator runs and what
    /// the naive and eager memory models count.
    pub checked: ir::Graph,
    /// Built-ins decomposed into primitives: what the kernels compute.
    pub primitive: ir::Graph,
    pub plan: Plan,
    /// Every fused kernel of the plan as kernel IR (`lower`), what both backends read.
    pub kernels: lower::Lowered,
    pub memory: report::MemoryReport,
}

/// Parse and check only (`tc check`).
pub fn check(source: &str, dims: &[(String, u64)]) -> Result<ir::Graph, Diagnostics> {
    check::check_source(source, dims)
}

/// The whole pipeline: parse → check → decompose → fuse → plan → report.
pub fn compile(source: &str, options: &CompileOptions) -> Result<Program, Diagnostics> {
    let checked = check::check_source(source, &options.dims)?;
    let primitive = ir::decompose::decompose(&checked);
    let groups = fuse::fuse(&primitive, options.plan.fuse);
    // The planner also merges sibling kernels (`fuse::siblings`) where the arena does not grow.
    let plan = plan::plan(&primitive, &groups, &options.plan).map_err(|d| vec![d])?;
    let memory = report::memory_report(&checked, &primitive, &plan);
    let kernels = lower::lower(&plan).map_err(|e| vec![lower::internal(&e)])?;
    Ok(Program {
        checked,
        primitive,
        plan,
        kernels,
        memory,
    })
}
