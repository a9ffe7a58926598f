//! Memory: every rule about bytes, in one place. `sizes` (16-byte rounding, the staging a
//! split reduction takes), `liveness` (which buffers a kernel touches, buffer lifetimes, the
//! peak of a set of lifetimes), `inplace` (a kernel's store taking over a dead input's
//! storage; the walk from a buffer to its storage object), `pack` (arena offsets),
//! `models` (the naive and eager figures of the graph run op by op, the lower bound of a
//! plan), `order` (kernel orders for peak memory, `best_order_bound`), `remat` (forward
//! values recomputed in the backward, `--memory-budget`) and `report` (the memory report's
//! data). The planner uses the first four; the models use the same rules, so planned,
//! eager, naive and lower bound compare like with like. See `docs/memory-planning.md`.

pub mod inplace;
pub mod liveness;
pub mod models;
pub mod order;
pub mod pack;
pub mod remat;
pub mod report;
pub mod sizes;

pub use models::{eager_budget, lower_bound, unfused_model, Unfused};
pub use report::{memory_report, memory_report_for, MemoryReport};
