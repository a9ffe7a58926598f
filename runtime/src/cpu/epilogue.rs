//! A fused kernel run as the epilogue of the matrix product just before it: the CPU
//! executor hands tc's GEMM the kernel that consumes the product (`bias + gelu` after
//! `h @ w1`, `+ b2 + x` after `@ w2`, a residual add and layer norm after `ctx @ wo`), and
//! the GEMM runs it on each block of the output as soon as that block is final, while the
//! block is still in the core's cache (`gemm::Finish`), instead of a second pass over the
//! whole output after the product. The plan is unchanged (the product's buffer is still
//! planned and written), so is the arena, and so is every bit: the kernel computes what it
//! would after the product, only sooner and a block at a time, which its elements allow —
//! a pointwise kernel's elements, or a row kernel's rows, are independent and run in any
//! order already (`fused::for_each_piece`, `fused::for_each_task`).
//!
//! A kernel is taken only where that holds: its domain is the product's output (a
//! pointwise kernel's elements, or a row kernel's rows of `n`, in the output's order), it
//! reads the product in place, element for element, and nothing else of it; it writes
//! neither the product's operands, its residual nor its packing workspace, nor any of the
//! output other than in place of the element it reads; and it is one the f32 interpreter
//! runs (no integer, bool or index values: `typed`). Otherwise the two kernels run one
//! after the other as before.

use super::fused::{self, Access, Prepared, Scratch};
use super::Mem;
use tc_compiler::schedule::{FusedKernel, Plan};

/// The product an epilogue finishes: its f32 output (`rows` of `n`, contiguous) and the
/// other buffers the GEMM uses while it runs.
pub(super) struct Product<'a> {
    pub out: Mem,
    pub rows: usize,
    pub n: usize,
    /// What it reads (operands, residual): the epilogue must not write them.
    pub reads: &'a [Mem],
    /// What it writes besides the output (the packing workspace): the epilogue must not
    /// touch them.
    pub writes: &'a [Mem],
}

/// A fused kernel prepared to run on a product's finished blocks.
pub(super) struct Epilogue {
    p: Prepared,
    n: usize,
}

impl Epilogue {
    /// `kernel` as the epilogue of `product`, or `None` where it cannot be one (see the
    /// module doc) or does not prepare (it then runs on its own, and reports its error).
    pub(super) fn new(
        plan: &Plan,
        name: &str,
        kernel: &FusedKernel,
        mems: &[Mem],
        product: &Product,
    ) -> Option<Epilogue> {
        let p = fused::prepare(plan, name, kernel, mems).ok()?;
        let pointwise = p.ir.is_pointwise();
        let (rows, n) = (product.rows, product.n);
        let shaped = if pointwise {
            p.rows * p.row_len == rows * n
        } else {
            p.rows == rows && p.row_len == n
        };
        if !shaped || rows == 0 || n == 0 || super::typed::needed(&p) || super::index::needed(&p) {
            return None;
        }
        let out = &product.out;
        let in_place = |a: &Access| a.mem.ptr == out.ptr && identity(&p, a);
        let mut reads_product = false;
        for a in &p.loads {
            if a.mem.overlaps(out) {
                if !in_place(a) || a.mem.dtype != out.dtype {
                    return None;
                }
                reads_product = true;
            }
        }
        let meets = |a: &Access, list: &[Mem]| list.iter().any(|m| m.overlaps(&a.mem));
        let bad_store = |a: &Access| {
            meets(a, product.reads)
                || meets(a, product.writes)
                || (a.mem.overlaps(out) && !in_place(a))
        };
        let bad_load = |a: &Access| meets(a, product.writes);
        if !reads_product
            || p.loads.iter().any(bad_load)
            || p.stores.iter().any(|(_, a)| bad_store(a))
        {
            return None;
        }
        Some(Epilogue { p, n })
    }

    /// Whether each block run must be whole rows (a row kernel's).
    pub(super) fn whole_rows(&self) -> bool {
        !self.p.ir.is_pointwise()
    }

    /// Runs the kernel on rows `r0 .. r0 + rows`, columns `c0 .. c0 + cols` of the product
    /// (rows counted over the batch: batch matrix `b`'s row `i` is `b·m + i`).
    ///
    /// # Safety
    /// Those elements of the product are final, the block is inside it (whole rows for a
    /// row kernel), and no other thread runs this epilogue on any of them.
    pub(super) unsafe fn run(&self, r0: usize, rows: usize, c0: usize, cols: usize) {
        let p = &self.p;
        let mut s = Scratch::new(p);
        if !self.whole_rows() {
            s.bases_for_row(p, 0);
            let pass = &p.passes[0];
            // SAFETY: the kernel was prepared (bounds checked over its whole domain, which
            // is the product's); a pointwise kernel's row values read no load.
            unsafe { s.row_values(p, pass) };
            // One run of elements for whole rows, else one a row.
            let (runs, len) = if c0 == 0 && cols == self.n {
                (1, rows * self.n)
            } else {
                (rows, cols)
            };
            for r in 0..runs {
                let start = (r0 + r) * self.n + c0;
                let mut at = start;
                while at < start + len {
                    let b = p.block.min(start + len - at);
                    // SAFETY: as above; these elements are this call's alone (the caller's
                    // promise).
                    unsafe { s.block(p, pass, at, b) };
                    at += b;
                }
            }
        } else {
            for r in r0..r0 + rows {
                // SAFETY: as above; row `r` is this call's alone.
                unsafe { s.row(p, r) };
            }
        }
    }
}

/// Whether `a` reaches element `e` of the kernel's walk (row `r`, inner index `i`: `e = r ·
/// row_len + i`) at offset `e`: the product's element in its own place.
fn identity(p: &Prepared, a: &Access) -> bool {
    let sizes = p.row_sizes.iter().chain(&p.inner_sizes);
    let strides = a.row_strides.iter().chain(&a.inner_strides);
    let dims: Vec<(usize, i64)> = sizes.copied().zip(strides.copied()).collect();
    let mut expect = 1i64;
    for &(size, stride) in dims.iter().rev() {
        if size > 1 && stride != expect {
            return false;
        }
        expect *= size as i64;
    }
    a.offset == 0
}
