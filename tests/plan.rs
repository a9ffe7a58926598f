//! Planner: plan invariants, memory figures and snapshots of plans and reports.
