//! The memory report as JSON (`--memory-json`): exactly the keys of SPEC §2's example
//! (`peaks`, `kernels`, `buffers`), plus `notes`, `arena_bytes`, `steps` and a `kind` per buffer.

use super::MemoryReport;

pub fn to_json(report: &MemoryReport) -> String {
    // Every field is plain data; serialising it cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
