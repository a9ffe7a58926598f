//! Outputs written straight into their vectors. A run on an arena kept from an earlier run
//! (`arena`) holds the whole arena resident and copies its outputs out at the end, so the
//! copies sit beside the arena for that moment anyway (`cpu::run_observed`); an output
//! whose arena bytes no other buffer uses while it is being computed and kept can instead
//! be computed in its vector from the start, which takes the copy away (8 MiB of gradients
//! in `train_block`, about 1 ms a run) and holds the same bytes.
//!
//! An output qualifies when it is a whole arena buffer read contiguously, no other output
//! shares a byte with it, and the bytes of its buffer and of the buffers it was computed
//! in place of (its chain: same offset, same size) belong to no other buffer from the
//! first of the chain's steps to the end. The chain's buffers then all live in the vector,
//! so what the plan computes in place stays in place (an in-place kernel reads each element
//! before it writes it, so the output alone in its vector would be right too, at the cost of
//! reading one place and writing another).

use tc_compiler::schedule::{BufferId, BufferKind, Plan};

/// Per output: the buffers to place in its vector (the output's own first, then those it
/// was computed in place of), or `None` where it stays in the arena.
pub(super) fn chains(plan: &Plan) -> Vec<Option<Vec<BufferId>>> {
    let chain_of = |k: usize| -> Option<Vec<BufferId>> {
        let o = &plan.outputs[k];
        let buf = plan.buffers.get(o.buffer.index())?;
        let shape: Vec<usize> = o.shape.iter().map(|&s| s as usize).collect();
        let numel: usize = shape.iter().product();
        let whole = buf.kind == BufferKind::Arena
            && o.dtype == buf.dtype
            && o.offset == 0
            && o.strides == super::contiguous_strides(&shape)
            && numel as u64 * o.dtype.size() == buf.bytes
            && buf.bytes > 0;
        if !whole {
            return None;
        }
        let mut chain = vec![o.buffer];
        let mut at = buf;
        while let Some(prev) = at.in_place_of {
            let p = plan.buffers.get(prev.index())?;
            let same =
                p.kind == BufferKind::Arena && p.offset == buf.offset && p.bytes == buf.bytes;
            if !same || chain.contains(&prev) {
                return None;
            }
            chain.push(prev);
            at = p;
        }
        let first = chain.iter().map(|b| plan.buffer(*b).first_step).min()?;
        let (lo, hi) = (buf.offset, buf.offset + buf.bytes);
        let others_apart = plan.buffers.iter().enumerate().all(|(i, x)| {
            let id = BufferId(i as u32);
            let in_arena = matches!(x.kind, BufferKind::Arena | BufferKind::Workspace);
            !in_arena
                || chain.contains(&id)
                || x.offset + x.bytes <= lo
                || hi <= x.offset
                || x.last_step < first
        });
        let alone = plan.outputs.iter().enumerate().all(|(j, other)| {
            if j == k {
                return true;
            }
            let Some(ob) = plan.buffers.get(other.buffer.index()) else {
                return false;
            };
            !chain.contains(&other.buffer)
                && (ob.kind != BufferKind::Arena || ob.offset + ob.bytes <= lo || hi <= ob.offset)
        });
        (others_apart && alone).then_some(chain)
    };
    (0..plan.outputs.len()).map(chain_of).collect()
}

#[cfg(test)]
thread_local! {
    /// Outputs this thread's runs computed in their vectors (tests check the path ran).
    pub(super) static WRITTEN_OUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(source: &str, dims: &[(&str, u64)]) -> Plan {
        let options = tc_compiler::CompileOptions {
            dims: dims.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            plan: Default::default(),
        };
        tc_compiler::compile(source, &options)
            .expect("compiles")
            .plan
    }

    #[test]
    fn gradients_qualify_and_shared_or_strided_outputs_do_not() {
        let p = plan(
            include_str!("../../../examples/train_block.tx"),
            &[
                ("B", 1),
                ("S", 24),
                ("D", 32),
                ("H", 2),
                ("Dh", 16),
                ("F", 48),
            ],
        );
        let found = chains(&p);
        let names: Vec<&str> = p
            .outputs
            .iter()
            .zip(&found)
            .filter(|(_, c)| c.is_some())
            .map(|(o, _)| o.name.as_str())
            .collect();
        // The weights' gradients are products stored whole, each in bytes of its own from
        // its step on.
        for g in ["g_wq", "g_wk", "g_wv", "g_wo", "g_w1", "g_w2"] {
            assert!(names.contains(&g), "{g} not written out: {names:?}");
        }
        for (o, c) in p.outputs.iter().zip(&found) {
            let Some(c) = c else { continue };
            assert_eq!(c[0], o.buffer);
            let b = p.buffer(o.buffer);
            for &m in c {
                let m = p.buffer(m);
                assert_eq!((m.offset, m.bytes), (b.offset, b.bytes));
            }
        }
        // train_mlp's updated weights are computed in place of their gradients.
        let p = plan(
            include_str!("../../../examples/train_mlp.tx"),
            &[("B", 64), ("D", 32), ("H", 128), ("C", 16)],
        );
        let found = chains(&p);
        let w2 = p
            .outputs
            .iter()
            .position(|o| o.name == "w2_next")
            .expect("w2_next");
        assert_eq!(found[w2].as_ref().map(Vec::len), Some(2), "{found:?}");
        // An output and a transposed view of it share bytes: both copied out as before.
        let p = plan(
            "input x : f32[8, 4]\ny = x * 2.0\nt = transpose(y)\noutput y, t\n",
            &[],
        );
        assert_eq!(chains(&p), vec![None, None]);
        let p = plan(
            "input x : f32[8, 4]\ny = x * 2.0\nz = transpose(x * 3.0)\noutput y, z\n",
            &[],
        );
        let c = chains(&p);
        assert!(c[0].is_some() && c[1].is_none(), "{c:?}");
    }
}
