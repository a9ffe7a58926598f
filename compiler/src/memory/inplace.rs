//! In-place reuse: a kernel's store takes over the storage of an arena buffer it reads for
//! the last time, and the walk from any buffer to the *storage object* it lives in (the
//! first buffer of its in-place chain). Packing, the lower bound and the report all see
//! storage through `storage_root`, the one walk of a chain.

use crate::fuse::{row_shapes, strides_agree, to_domain};
use crate::ir::types::contiguous_strides;
use crate::schedule::{
    Buffer, BufferId, BufferKind, FusedKernel, Kernel, KernelKind, Level, MatMulKernel, Store,
};
use std::collections::BTreeSet;

/// Strides, over the domain, of the contiguous store of an inst of `level`.
pub fn store_strides(kernel: &FusedKernel, level: Level) -> Vec<i64> {
    match level {
        Level::Element => contiguous_strides(&kernel.domain),
        Level::Row => {
            let (_, drop) = row_shapes(&kernel.domain, &kernel.reduce_axes);
            to_domain(
                &contiguous_strides(&drop),
                drop.len(),
                Level::Row,
                &kernel.domain,
                &kernel.reduce_axes,
            )
        }
    }
}

/// Sets `in_place_of` where a kernel's store can take over the storage of an arena buffer it
/// reads for the last time (its `last_step` is this kernel's; not an output), of the same
/// bytes and dtype, when every load of it reads exactly the element the store writes (and no
/// gathered read does: `can_take_over`).
pub fn in_place(kernels: &[Kernel], buffers: &mut [Buffer], outputs: &BTreeSet<BufferId>) {
    for (step, kernel) in kernels.iter().enumerate() {
        if let KernelKind::MatMul(m) = &kernel.kind {
            // A GEMM accumulating into `x` (`fuse::gemm`) writes in place of it where `x`
            // dies there; else the runtime copies `x` into the output first.
            if let Some(x) = accumulating_pair(m, buffers) {
                if buffers[x.index()].last_step == step && !outputs.contains(&x) {
                    buffers[m.out.index()].in_place_of = Some(x);
                }
            }
            continue;
        }
        let KernelKind::Fused(f) = &kernel.kind else {
            continue;
        };
        let mut taken: BTreeSet<BufferId> = BTreeSet::new();
        for store in &f.stores {
            let out = store.buffer;
            // A part of a concat shares its buffer with the other parts: never in place.
            if buffers[out.index()].kind != BufferKind::Arena || store.region.is_some() {
                continue;
            }
            let candidates: BTreeSet<BufferId> = f.loads.iter().map(|l| l.buffer).collect();
            for cand in candidates {
                let ok = buffers[cand.index()].last_step == step
                    && !outputs.contains(&cand)
                    && !taken.contains(&cand)
                    && can_take_over(f, store, cand, buffers);
                if ok {
                    taken.insert(cand);
                    buffers[out.index()].in_place_of = Some(cand);
                    break;
                }
            }
        }
    }
}

/// Whether `store` of kernel `f` may take over the storage of `cand` once `cand` is read
/// for the last time there (and is no output): both arena buffers of the same bytes and
/// dtype, every load of `cand` reading exactly the element the store writes. What does not
/// depend on the order of kernels; `crate::memory::order` models the rest.
pub fn can_take_over(f: &FusedKernel, store: &Store, cand: BufferId, buffers: &[Buffer]) -> bool {
    let c = &buffers[cand.index()];
    let o = &buffers[store.buffer.index()];
    let want = store_strides(f, f.body[store.inst].level);
    // A gathered table is read at positions only known at run time: never taken over.
    let gathered = f.body.iter().any(|i| match i.op {
        crate::schedule::InstOp::Gather { load: Some(l), .. } => f.loads[l].buffer == cand,
        _ => false,
    });
    !gathered
        && c.kind == BufferKind::Arena
        && o.kind == BufferKind::Arena
        && c.bytes == o.bytes
        && c.dtype == o.dtype
        && f.loads
            .iter()
            .filter(|l| l.buffer == cand)
            .all(|l| l.offset == 0 && strides_agree(&l.strides, &want, &f.domain))
}

/// The buffer a GEMM's output may take over: the `x` it accumulates into, when both are arena
/// buffers of the same bytes and dtype and `x` is not an operand of the product (which is
/// read while the output is written). What does not depend on the order of kernels.
pub fn accumulating_pair(m: &MatMulKernel, buffers: &[Buffer]) -> Option<BufferId> {
    let x = m.accumulate?;
    let (c, o) = (&buffers[x.index()], &buffers[m.out.index()]);
    (c.kind == BufferKind::Arena
        && o.kind == BufferKind::Arena
        && c.bytes == o.bytes
        && c.dtype == o.dtype
        && x != m.a.buffer
        && x != m.b.buffer
        && x != m.out)
        .then_some(x)
}

/// The storage object (first buffer of its in-place chain) a buffer lives in.
pub fn storage_root(buffers: &[Buffer], mut id: BufferId) -> BufferId {
    while let Some(prev) = buffers[id.index()].in_place_of {
        id = prev;
    }
    id
}

/// Whether a buffer lives in the arena (a kernel's value, or a workspace).
pub fn in_arena(b: &Buffer) -> bool {
    matches!(b.kind, BufferKind::Arena | BufferKind::Workspace)
}

/// One storage object of the arena: the root buffer of an in-place chain, its bytes, and
/// the steps from the root's first to the chain's last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    pub root: BufferId,
    pub bytes: u64,
    pub first: usize,
    pub last: usize,
}

/// The storage objects of the arena, in buffer order of their roots, and for each buffer the
/// index of the object it lives in (`None` outside the arena).
pub fn storage_objects(buffers: &[Buffer]) -> (Vec<Storage>, Vec<Option<usize>>) {
    let mut objects: Vec<Storage> = Vec::new();
    let mut object_of: Vec<Option<usize>> = vec![None; buffers.len()];
    for (i, b) in buffers.iter().enumerate() {
        if in_arena(b) && b.in_place_of.is_none() {
            object_of[i] = Some(objects.len());
            objects.push(Storage {
                root: BufferId(i as u32),
                bytes: b.bytes,
                first: b.first_step,
                last: b.last_step,
            });
        }
    }
    for (i, b) in buffers.iter().enumerate() {
        let Some(prev) = b.in_place_of.filter(|_| in_arena(b)) else {
            continue;
        };
        // A chain points backwards (a kernel takes over a buffer written before it), so the
        // object of `prev` is known; walk the chain only if not.
        let k = if prev.index() < i {
            object_of[prev.index()]
        } else {
            object_of[storage_root(buffers, prev).index()]
        };
        if let Some(k) = k {
            object_of[i] = Some(k);
            objects[k].last = objects[k].last.max(b.last_step);
        }
    }
    (objects, object_of)
}
