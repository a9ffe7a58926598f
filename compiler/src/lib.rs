//! tc compiler core: `.tx` source to a fused, memory-planned schedule and CUDA C.
//!
//! The pipeline, one module per stage (see `docs/architecture.md`):
//! `syntax` (lex, parse) → `check` (names, dtypes, shapes → checked `ir::Graph`) →
//! `ir::decompose` (built-ins to primitives) → `fuse` (group ops into kernels) →
//! `plan` (kernels and buffers from groups → `schedule::Plan`, with `memory`'s liveness,
//! in-place reuse and arena packing), under `search` (which fusion variant to keep) →
//! `memory` (the memory report's figures), rendered by `report`; `codegen` (CUDA C).
//! This crate does no I/O and touches no device.

pub mod autodiff;
pub mod check;
pub mod codegen;
pub mod diag;
pub mod fuse;
pub mod invariant;
pub mod ir;
pub mod lower;
pub mod masked;
pub mod memory;
pub mod plan;
pub mod report;
pub mod schedule;
pub mod syntax;
pub mod units;

pub use diag::{Diagnostic, Diagnostics, ErrorKind, Span};
pub use schedule::{Plan, PlanOptions, Target};

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
    pub memory: memory::MemoryReport,
}

/// Parse and check only (`tc check`).
pub fn check(source: &str, dims: &[(String, u64)]) -> Result<ir::Graph, Diagnostics> {
    check::check_source(source, dims)
}

/// The whole pipeline: parse → check → decompose → fuse → plan (the search below) → report.
pub fn compile(source: &str, options: &CompileOptions) -> Result<Program, Diagnostics> {
    compile_with_budget(source, options, None)
}

/// `compile` under `--memory-budget`: the planned arena with inputs and params at most
/// `budget` bytes. A program with `grad` recomputes forward values in its backward pass to
/// get there (`memory::remat`; without a budget, only the elementwise ones that lower the
/// peak); on one without, the budget is a check. A budget no plan meets is an
/// `over-budget` error naming the smallest peak reached.
pub fn compile_with_budget(
    source: &str,
    options: &CompileOptions,
    budget: Option<u64>,
) -> Result<Program, Diagnostics> {
    let checked = check::check_source(source, &options.dims)?;
    let inputs = memory::unfused_model(&checked, &options.plan).inputs;
    let mut plan_of = |g: &ir::Graph| -> Result<memory::remat::Planned, Diagnostic> {
        let primitive = ir::decompose::decompose(g);
        let (groups, misses) = fuse::fuse_explained(&primitive, options.plan.fuse);
        let mut plan = search(&checked, &primitive, &groups, &options.plan)?;
        if !plan.unfused_fallback {
            plan.notes.extend(misses);
        }
        Ok(memory::remat::Planned {
            graph: g.clone(),
            primitive,
            plan,
        })
    };
    let chosen =
        memory::remat::choose(&checked, inputs, budget, &mut plan_of).map_err(|d| vec![d])?;
    let (planned, recompute) = match chosen {
        Ok(x) => x,
        Err(peak) => {
            let b = budget.unwrap_or(0);
            let what = if checked.passes.is_empty() {
                "the planned peak"
            } else {
                "the smallest peak tc reached, recomputing forward values in the backward pass,"
            };
            return Err(vec![Diagnostic::error(
                ErrorKind::OverBudget,
                format!(
                    "no plan fits the memory budget of {}: {what} is {} (inputs and params included)",
                    units::human(b),
                    units::human(peak)
                ),
            )
            .with_help("raise `--memory-budget`, or lower a dim (`--dim`)")]);
        }
    };
    let memory::remat::Planned {
        primitive, plan, ..
    } = planned;
    let mut memory = memory::memory_report_for(&checked, &primitive, &plan, Some(source));
    if !checked.passes.is_empty() || budget.is_some() {
        memory.recompute = Some(recompute);
    }
    let kernels = lower::lower(&plan).map_err(|e| vec![lower::internal(&e)])?;
    Ok(Program {
        checked,
        primitive,
        plan,
        kernels,
        memory,
    })
}

/// The search over fusion variants: the plan of `groups` (the fusion's result), improved
/// where memory allows, never above the eager figure when any variant fits under it.
///
/// 1. `groups` in their order, or as late as possible when that packs smaller and the first
///    exceeds the eager figure (`plan::plan_ordered`).
/// 2. With fusion on, each sibling merge `fuse::siblings` proposes is planned as in 1 and
///    kept only when its arena is not larger than the best so far.
/// 3. If the arena still exceeds the eager figure, the unfused groups (as late as possible,
///    then in order) are a last resort; the smallest arena wins. Without reuse (every
///    buffer its own region) the bar is the naive figure instead: a fused plan that stores a
///    value the unfused kernels keep in registers can exceed it.
///
/// The eager and naive figures are the memory report's, of the program as written
/// (`checked`), so the search judges by the same numbers the user reads.
pub fn search(
    checked: &ir::Graph,
    primitive: &ir::Graph,
    groups: &[fuse::Group],
    options: &PlanOptions,
) -> Result<Plan, Diagnostic> {
    // The stages above are greedy (a sibling merge is judged against the best so far; the
    // unfused last resort only runs above the eager figure), so a plan reordered at stage 1
    // can steer them elsewhere than the source order did: both searches run, the smaller
    // arena wins, the source order's on a tie. Reordering never raises the peak.
    let kept = search_with(checked, primitive, groups, options, false)?;
    if !options.reuse {
        return Ok(kept); // every buffer its own region: the order changes nothing
    }
    let reordered = search_with(checked, primitive, groups, options, true)?;
    Ok(if reordered.arena_bytes < kept.arena_bytes {
        reordered
    } else {
        kept
    })
}

/// `search`'s stages, with the reordering for peak memory (`plan::plan_ordered`) on or off:
/// off is the planner as it was before it.
pub fn search_with(
    checked: &ir::Graph,
    primitive: &ir::Graph,
    groups: &[fuse::Group],
    options: &PlanOptions,
    reorder: bool,
) -> Result<Plan, Diagnostic> {
    let figures = memory::unfused_model(checked, options);
    let budget = figures.eager;
    let mut best = plan::plan_ordered(primitive, groups, options, budget, reorder)?;
    if options.fuse {
        fuse::siblings(primitive, groups, |merged| {
            let p = plan::plan_ordered(primitive, merged, options, budget, reorder)?;
            let keep = p.arena_bytes <= best.arena_bytes;
            if keep {
                best = p;
            }
            Ok::<bool, Diagnostic>(keep)
        })?;
    }
    if options.fuse && !options.reuse && best.arena_bytes > figures.naive {
        let unfused = fuse::fuse(primitive, false);
        let p = plan::plan_in_order(primitive, &unfused, options, budget)?;
        if p.arena_bytes < best.arena_bytes {
            best = Plan {
                unfused_fallback: true,
                ..p
            };
        }
    }
    if options.reuse && options.fuse && best.arena_bytes > budget {
        let unfused = fuse::fuse(primitive, false);
        let orders = if reorder {
            vec![plan::plan_ordered(
                primitive, &unfused, options, budget, true,
            )?]
        } else {
            let late = plan::late_order(primitive, &unfused);
            vec![
                plan::plan_in_order(primitive, &late, options, budget)?,
                plan::plan_in_order(primitive, &unfused, options, budget)?,
            ]
        };
        for p in orders {
            if p.arena_bytes < best.arena_bytes {
                best = Plan {
                    unfused_fallback: true,
                    ..p
                };
            }
            if best.arena_bytes <= budget {
                break;
            }
        }
    }
    // On the CPU, the products whose consumer runs on their tiles never stored whole,
    // where that packs smaller (`plan::tile`).
    if options.fuse && options.target == schedule::Target::Cpu {
        plan::tile::retile(&mut best, budget);
    }
    // The independent verifier runs on every plan in debug builds (and in every test).
    if cfg!(debug_assertions) {
        plan::verify(&best)
            .map_err(|e| plan::internal(format!("the plan fails verification: {e}")))?;
    }
    Ok(best)
}
