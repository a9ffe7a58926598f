//! The memory report: naive, eager, planned and lower-bound peaks, every buffer and every
//! kernel, as data (rendered to text, JSON and SVG by the submodules). (Being built: issue 3.)

use crate::ir::{DType, Graph};
use crate::schedule::Plan;
use serde::Serialize;

/// One peak figure, counted with and without the program's inputs and params.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Peak {
    pub with_inputs: u64,
    pub without_inputs: u64,
}

/// The peaks of SPEC §2, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Peaks {
    pub naive: Peak,
    pub eager: Peak,
    pub planned: Peak,
    pub lower_bound: Peak,
    /// Device memory tc really took; set by the CUDA runtime, `None` elsewhere.
    pub measured: Option<Peak>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelEntry {
    pub name: String,
    pub ops: Vec<String>,
    pub lines: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BufferEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: u64,
    pub first_step: usize,
    pub last_step: usize,
    pub offset: u64,
    pub view_of: Option<String>,
    pub in_place_of: Option<String>,
}

/// Everything `--report-memory`, `--memory-json` and `--memory-svg` show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    pub peaks: Peaks,
    pub kernels: Vec<KernelEntry>,
    pub buffers: Vec<BufferEntry>,
    /// Plain-language remarks (a `reshape` that copies, say).
    pub notes: Vec<String>,
}

/// Builds the report of a plan.
pub fn memory_report(_checked: &Graph, _primitive: &Graph, _plan: &Plan) -> MemoryReport {
    MemoryReport::default()
}
