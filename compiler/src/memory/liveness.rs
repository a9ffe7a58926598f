//! Liveness: which buffers each kernel reads and writes, the steps at which each buffer of a
//! schedule is live, and the largest total live at one step of any set of lifetimes (one
//! sweep over the steps, shared by the packer's floor, the lower bound and the eager model).

use crate::schedule::{Buffer, BufferId, BufferKind, Kernel, KernelKind, MatMulKernel, PlanOutput};
use std::collections::BTreeSet;

/// The buffers a kernel reads.
pub fn reads(kernel: &Kernel) -> Vec<BufferId> {
    match &kernel.kind {
        KernelKind::Fused(f) => f.loads.iter().map(|l| l.buffer).collect(),
        KernelKind::MatMul(m) => product_reads(m),
        KernelKind::Attention(a) => a.reads(),
        KernelKind::AttentionBackward(a) => [a.q.buffer, a.k.buffer, a.v.buffer, a.d_out.buffer]
            .into_iter()
            .chain(a.loads.iter().map(|l| l.buffer))
            .chain(a.grad_loads.iter().map(|l| l.buffer))
            .collect(),
        KernelKind::IndexAdd(k) => vec![k.index.buffer, k.grad.buffer],
    }
}

/// The buffers a matrix product reads: its operands, its residual and its prologue's loads.
pub fn product_reads(m: &MatMulKernel) -> Vec<BufferId> {
    [m.a.buffer, m.b.buffer]
        .into_iter()
        .chain(m.accumulate)
        .chain(
            m.prologue
                .iter()
                .flat_map(|p| p.loads.iter().map(|l| l.buffer)),
        )
        .collect()
}

/// The buffers a kernel writes (its workspace included).
pub fn writes(kernel: &Kernel) -> Vec<BufferId> {
    match &kernel.kind {
        KernelKind::Fused(f) => f
            .stores
            .iter()
            .map(|s| s.buffer)
            .chain(f.workspace)
            .collect(),
        KernelKind::MatMul(m) => std::iter::once(m.out).chain(m.workspace).collect(),
        KernelKind::Attention(a) => vec![a.out],
        KernelKind::AttentionBackward(a) => [&a.dq, &a.dk, &a.dv_out]
            .into_iter()
            .flatten()
            .map(|o| o.buffer)
            .chain([a.workspace])
            .collect(),
        KernelKind::IndexAdd(k) => vec![k.out],
    }
}

/// Extends each buffer's life (from the step that writes it, `first_step`) to the last
/// kernel reading it; the outputs' buffers live to the last step.
pub fn extend_lives(kernels: &[Kernel], buffers: &mut [Buffer], outputs: &[PlanOutput]) {
    for (step, kernel) in kernels.iter().enumerate() {
        for id in reads(kernel) {
            let buf = &mut buffers[id.index()];
            buf.last_step = buf.last_step.max(step);
        }
    }
    let last = kernels.len().saturating_sub(1);
    for o in outputs {
        buffers[o.buffer.index()].last_step = last;
    }
}

/// Sets every buffer's life from the kernels alone (after kernels are inserted or their
/// reads change, `plan::tile::retile`): a buffer kernels write from the first step that
/// writes it, one no kernel writes (an input or param from step 0, a product's `A` its
/// prologue computes from its first reader) to the last step that reads or writes it; the
/// outputs' buffers to the last step.
pub fn set_lives(kernels: &[Kernel], buffers: &mut [Buffer], outputs: &BTreeSet<BufferId>) {
    let mut first: Vec<Option<usize>> = vec![None; buffers.len()];
    let mut read_first: Vec<Option<usize>> = vec![None; buffers.len()];
    let mut last = vec![0usize; buffers.len()];
    for (step, kernel) in kernels.iter().enumerate() {
        for id in writes(kernel) {
            first[id.index()].get_or_insert(step);
            last[id.index()] = step;
        }
        for id in reads(kernel) {
            read_first[id.index()].get_or_insert(step);
            last[id.index()] = step;
        }
    }
    let end = kernels.len().saturating_sub(1);
    for (i, b) in buffers.iter_mut().enumerate() {
        b.first_step = match b.kind {
            BufferKind::Input { .. } | BufferKind::Param { .. } => 0,
            _ => first[i].or(read_first[i]).unwrap_or(0),
        };
        b.last_step = if outputs.contains(&BufferId(i as u32)) {
            end
        } else {
            last[i].max(b.first_step)
        };
    }
}

/// The largest total of `bytes` live at one step, over lifetimes `(first, last, bytes)`
/// (inclusive steps); 0 for none. Sums saturate at `u64::MAX`.
pub fn peak(lives: impl IntoIterator<Item = (usize, usize, u64)>) -> u64 {
    // Events: +bytes at `first`, -bytes after `last`; exact in 128 bits, clamped at the end.
    let mut events: Vec<(usize, i128)> = Vec::new();
    for (first, last, bytes) in lives {
        if first > last {
            continue;
        }
        events.push((first, bytes as i128));
        events.push((last + 1, -(bytes as i128)));
    }
    events.sort_unstable_by_key(|&(step, delta)| (step, delta));
    let mut live: i128 = 0;
    let mut best: i128 = 0;
    let mut i = 0;
    while i < events.len() {
        let step = events[i].0;
        while i < events.len() && events[i].0 == step {
            live += events[i].1;
            i += 1;
        }
        best = best.max(live);
    }
    best.min(u64::MAX as i128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step-by-step definition `peak` must equal.
    fn by_steps(lives: &[(usize, usize, u64)]) -> u64 {
        let steps = lives.iter().map(|l| l.1 + 1).max().unwrap_or(0);
        (0..steps)
            .map(|s| {
                lives
                    .iter()
                    .filter(|l| l.0 <= s && s <= l.1)
                    .fold(0u64, |acc, l| acc.saturating_add(l.2))
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn peak_is_the_largest_total_live_at_one_step() {
        let cases: [&[(usize, usize, u64)]; 5] = [
            &[],
            &[(0, 0, 16)],
            &[(0, 1, 100), (1, 2, 50), (2, 3, 70), (3, 3, 5)],
            &[(0, 4, 10), (2, 2, 30), (3, 4, 25), (5, 5, 64)],
            &[(0, 1, u64::MAX), (1, 1, 16), (2, 2, 1)],
        ];
        for lives in cases {
            assert_eq!(peak(lives.iter().copied()), by_steps(lives), "{lives:?}");
        }
    }
}
