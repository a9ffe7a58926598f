//! A matrix product's `A` computed, not read: the product's prologue
//! (`MatMulKernel::prologue`, planned by `tc_compiler::plan::prologue`) is a pointwise kernel
//! over the buffer `h` that `A` reads (`gelu(pre)` in a training step), and `h` is never
//! stored (`BufferKind::Tile`). `h` may be of any float dtype (the planner gives only f32
//! values prologues today; a bf16 one feeds the bf16 pairs), each value rounded to it as
//! its store would. tc's GEMM asks for each block of `A` as it packs it
//! (`gemm::AFrom`): the block's rows and columns of `h` are computed by the interpreter into a
//! buffer of the packing thread's own, its element stores redirected there
//! (`fused::Scratch::out`), and packed from it as they would have been from `h`. The values
//! are the ones the kernel that stored `h` computed (the prologue is that kernel's maths,
//! reading back what it stored besides), so the product is the same bits.
//!
//! `A` reads `h` `[R, C]` from its start, straight (`A = h`, strides `[C, 1]`) or transposed
//! (`A = hᵀ`, strides `[1, C]`, the weight gradient `hᵀ · g`): a block of `A`'s rows `r0 ..`
//! and columns `t0 ..` is then a block of `h`'s rows and columns, one run of the kernel's
//! walk per row of it. Anything else is a plan error.

use super::fused::{self, Out, Prepared, Scratch};
use super::gemm::Operand;
use super::{math, CpuError, Mem};
use tc_compiler::ir::DType;
use tc_compiler::schedule::{FusedKernel, MatOperand, Plan};

/// A product's prologue, prepared to fill blocks of its `A`.
pub(super) struct Prologue {
    p: Prepared,
    /// `h`'s columns `C` (the kernel's domain is `[R, C]`).
    cols: usize,
    /// `A = hᵀ` rather than `A = h`.
    transposed: bool,
    /// `h`'s dtype, each value rounded to it as its store would.
    dtype: DType,
}

impl Prologue {
    /// `kernel`, the prologue of product `name` whose `A` is `a`, prepared over `mems`; a
    /// `BadPlan` error where it is not one this executor runs (see the module doc).
    pub(super) fn new(
        plan: &Plan,
        name: &str,
        kernel: &FusedKernel,
        mems: &[Mem],
        a: &MatOperand,
    ) -> Result<Prologue, CpuError> {
        let bad = |why: &str| {
            CpuError::BadPlan(format!(
                "kernel {name}: the prologue computing {} {why}",
                plan.buffer(a.buffer).name
            ))
        };
        let h = mems
            .get(a.buffer.index())
            .copied()
            .ok_or_else(|| bad("names no buffer"))?;
        let [rows, cols] = kernel.domain[..] else {
            return Err(bad("is not over a matrix"));
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let straight = a.strides == [cols as i64, 1];
        let transposed = a.strides == [1, cols as i64];
        let one_store =
            matches!(&kernel.stores[..], [s] if s.buffer == a.buffer && s.region.is_none());
        if !h.is_tile()
            || h.numel != rows * cols
            || !h.dtype.is_float()
            || !kernel.reduce_axes.is_empty()
            || !one_store
            || a.offset != 0
            || !(straight || transposed)
        {
            return Err(bad(
                "is not a pointwise kernel writing the whole of a float value never stored, read from its start straight or transposed",
            ));
        }
        // Its one store lands in the GEMM's f32 buffer (`Scratch::out`), never in `h`: so
        // `h` is a writable f32 buffer to the interpreter, which computes the values there
        // directly (`fill` rounds them to `h`'s dtype after).
        let mut own = mems.to_vec();
        own[a.buffer.index()].writable = true;
        own[a.buffer.index()].dtype = DType::F32;
        let p = fused::prepare(plan, name, kernel, &own)?;
        if !p.ir.is_pointwise() || super::typed::needed(&p) || super::index::needed(&p) {
            return Err(bad("holds values other than floats"));
        }
        if p.loads.iter().any(|l| l.mem.is_tile()) {
            return Err(bad("reads a value never stored"));
        }
        Ok(Prologue {
            p,
            cols,
            transposed,
            dtype: h.dtype,
        })
    }

    /// `fill` as the GEMM asks for blocks of `A` (`gemm::AFrom`).
    pub(super) fn filler(
        &self,
    ) -> impl Fn((usize, usize), (usize, usize), &mut [f32]) -> Operand + Sync + '_ {
        move |rows, cols, dst| self.fill(rows, cols, dst)
    }

    /// The loads' buffers: the product reads them while it runs.
    pub(super) fn reads(&self) -> Vec<Mem> {
        self.p.loads.iter().map(|l| l.mem).collect()
    }

    /// Computes `A`'s rows `r0 .. r0 + rows`, columns `t0 .. t0 + kc` into `dst` (at least
    /// `rows · kc` floats) and returns them as an operand there (`A`'s element `(r0 + i, t0 +
    /// j)` at `i·rs + j·cs`).
    pub(super) fn fill(
        &self,
        (r0, rows): (usize, usize),
        (t0, kc): (usize, usize),
        dst: &mut [f32],
    ) -> Operand {
        // The block of `h`: `A`'s block itself, or its transpose.
        let (h_r0, h_rows, h_c0, h_cols) = if self.transposed {
            (t0, kc, r0, rows)
        } else {
            (r0, rows, t0, kc)
        };
        let p = &self.p;
        let pass = &p.passes[0];
        let mut s = Scratch::new(p);
        s.bases_for_row(p, 0);
        // SAFETY: the kernel was prepared (bounds checked over its whole domain); a
        // pointwise kernel's row values read no load.
        unsafe { s.row_values(p, pass) };
        let dst = &mut dst[..h_rows * h_cols];
        for r in 0..h_rows {
            let start = (h_r0 + r) * self.cols + h_c0;
            s.out = Some(Out {
                base: dst[r * h_cols..].as_mut_ptr(),
                origin: start,
            });
            // SAFETY: elements `start .. start + h_cols` of the walk are inside the domain
            // (the block is inside `A`, so inside `h`), and their stores land in `dst`'s
            // row `r`, which this call alone writes.
            unsafe { s.span(p, pass, start, start + h_cols) };
            // (A store rounds to its buffer's dtype; `Scratch::out` takes the f32 values.)
            math::round_block(self.dtype, &mut dst[r * h_cols..(r + 1) * h_cols]);
        }
        let ptr = dst.as_ptr();
        if self.transposed {
            Operand {
                ptr,
                rs: 1,
                cs: h_cols as isize,
            }
        } else {
            Operand {
                ptr,
                rs: h_cols as isize,
                cs: 1,
            }
        }
    }
}
