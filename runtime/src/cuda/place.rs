//! Where a run puts things: which allocation holds each buffer of a plan (the one arena,
//! or an input's or param's own allocation) and at which byte offset, and the byte offsets
//! of a cuBLAS call's operands; and the check of the tensors given for a run. Shared by
//! the executor and its host emulation (`emu`), so the emulation replays exactly the
//! addresses, and refuses exactly the data, the GPU run does.

use crate::tensor::HostTensor;
use tc_compiler::codegen::GemmCall;
use tc_compiler::schedule::{BufferId, BufferKind, Plan};

/// One of a run's device allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Allocation {
    /// The plan's arena (`Plan::arena_bytes`; no allocation when 0).
    Arena,
    /// The allocation of input `i` (declaration order).
    Input(usize),
    /// The allocation of param `i`.
    Param(usize),
}

/// The allocation holding `id`'s first element, and its byte offset there.
pub(crate) fn place(plan: &Plan, id: BufferId) -> (Allocation, u64) {
    let b = plan.buffer(id);
    match b.kind {
        // (a product never stored whole is in CPU plans only: `prepare` refuses them)
        BufferKind::Arena | BufferKind::Workspace | BufferKind::Tile => {
            (Allocation::Arena, b.offset)
        }
        BufferKind::Input { index } => (Allocation::Input(index), 0),
        BufferKind::Param { index } => (Allocation::Param(index), 0),
    }
}

/// Byte offsets of A, B and C, from the start of each operand's buffer, of each of the
/// strided-batched calls `call` makes.
pub(crate) fn gemm_offsets(call: &GemmCall) -> Vec<[u64; 3]> {
    let (sa, sb, sc) = (call.a_type.size(), call.b_type.size(), call.c_type.size());
    call.calls
        .iter()
        .map(|off| {
            [
                (call.a_offset + off[0]) as u64 * sa,
                (call.b_offset + off[1]) as u64 * sb,
                off[2] as u64 * sc,
            ]
        })
        .collect()
}

/// The part of a workspace buffer at device address `start` (`bytes` long) that cuBLAS
/// may use: 256-byte aligned at both ends. `(address, bytes)`, `(0, 0)` when none is left.
pub(crate) fn workspace_window(start: u64, bytes: u64) -> (u64, u64) {
    let aligned = start.div_ceil(256) * 256;
    let usable = bytes.saturating_sub(aligned - start) / 256 * 256;
    if usable == 0 {
        (0, 0)
    } else {
        (aligned, usable)
    }
}

/// Checks the tensors given for a run against the plan's input (or param) buffers `ids`:
/// as many, each of the buffer's dtype, shape and size. `what` names them in the message.
pub(crate) fn check_data(
    plan: &Plan,
    ids: &[BufferId],
    data: &[HostTensor],
    what: &str,
) -> Result<(), String> {
    if ids.len() != data.len() {
        return Err(format!(
            "the plan has {} {what}s but {} were given",
            ids.len(),
            data.len()
        ));
    }
    for (id, t) in ids.iter().zip(data) {
        let b = plan.buffer(*id);
        if b.dtype != t.dtype || b.shape != t.shape || t.bytes.len() as u64 != b.bytes {
            return Err(format!(
                "{what} `{}` is {}{:?} ({} bytes) but the plan wants {}{:?} ({} bytes)",
                b.name,
                t.dtype,
                t.shape,
                t.bytes.len(),
                b.dtype,
                b.shape,
                b.bytes
            ));
        }
    }
    Ok(())
}
