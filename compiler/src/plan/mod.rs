//! The planner: buffers, liveness, in-place reuse and arena packing. (Being built: issue 3.)

use crate::diag::Diagnostic;
use crate::fuse::Group;
use crate::ir::Graph;
use crate::schedule::{Plan, PlanOptions};

/// Builds the schedule for the fused groups of a primitive graph.
pub fn plan(_graph: &Graph, _groups: &[Group], _options: &PlanOptions) -> Result<Plan, Diagnostic> {
    Err(Diagnostic::error(
        "not-built",
        "the planner is not built yet",
    ))
}
