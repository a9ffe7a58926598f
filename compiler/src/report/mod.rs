//! The memory report, rendered: `text` (tables and an ASCII chart), `json` and `svg`. The
//! report's data (peaks, buffers, kernels, notes) is computed by `crate::memory::report`;
//! nothing here computes a figure.

pub mod json;
pub mod svg;
pub mod text;

pub use crate::memory::report::{BoundPeak, BufferEntry, KernelEntry, MemoryReport, Peak, Peaks};
pub use json::to_json;
pub use svg::render_svg;
pub use text::render_text;
