//! A fused kernel run as the epilogue of the matrix product just before it: the CPU
//! executor hands tc's GEMM the kernel that consumes the product (`bias + gelu` after
//! `h @ w1`, `+ b2 + x` after `@ w2`, a residual add and layer norm after `ctx @ wo`), and
//! the GEMM runs it on each block of the output as soon as that block is final, while the
//! block is still in the core's cache (`gemm::Finish`), instead of a second pass over the
//! whole output after the product. Every bit is the same: the kernel computes what it
//! would after the product, only sooner and a block at a time, which its elements allow —
//! a pointwise kernel's elements, or a row kernel's rows, are independent and run in any
//! order already (`fused::for_each_piece`, `fused::for_each_task`). The kernel reads the
//! product from the block the GEMM hands it (`fused::Product`): where the plan stores the
//! product, that is the product's buffer; where it never stores it whole
//! (`BufferKind::Tile`, `tc_compiler::plan::tile`), a buffer of the computing thread's own,
//! and the arena holds nothing of it.
//!
//! A kernel is taken only where that holds: its domain is the product's output (a
//! pointwise kernel's elements, or a row kernel's rows of `n`, in the output's order), it
//! reads the product in place, element for element, and nothing else of it; it writes
//! neither the product's operands, its residual nor its packing workspace, nor any of the
//! output other than in place of the element it reads; and it is one the f32 interpreter
//! runs (no integer, bool or index values: `typed`). Otherwise the two kernels run one
//! after the other as before.

use super::fused::{self, Access, Prepared, Scratch};
use super::gemm::Block;
use super::Mem;
use tc_compiler::schedule::{BufferId, FusedKernel, Plan};

/// The product an epilogue finishes: its f32 output (`rows` of `n`, contiguous; a tile
/// `Mem` where it is never stored whole) and the other buffers the GEMM uses while it runs.
pub(super) struct Product<'a> {
    pub id: BufferId,
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
    /// Per load: whether it reads the product (from the block, not its buffer).
    reads_product: Vec<bool>,
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
        // (A kernel that does not read the product is not lowered here a second time.)
        if !kernel.loads.iter().any(|l| l.buffer == product.id) {
            return None;
        }
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
        let reads_product: Vec<bool> = p.ir.loads.iter().map(|l| l.buffer == product.id).collect();
        // The product read element for element, never otherwise; no other product's tile.
        for (a, &of_product) in p.loads.iter().zip(&reads_product) {
            let ok = if of_product {
                identity(&p, a) && a.mem.dtype == out.dtype
            } else {
                !a.mem.is_tile() && !a.mem.overlaps(out)
            };
            if !ok {
                return None;
            }
        }
        let in_place = |a: &Access| !out.is_tile() && a.mem.ptr == out.ptr && identity(&p, a);
        let meets = |a: &Access, list: &[Mem]| list.iter().any(|m| m.overlaps(&a.mem));
        let bad_store = |a: &Access| {
            meets(a, product.reads)
                || meets(a, product.writes)
                || (a.mem.overlaps(out) && !in_place(a))
        };
        let bad_load = |a: &Access| meets(a, product.writes);
        if !reads_product.contains(&true)
            || p.loads.iter().any(bad_load)
            || p.stores.iter().any(|(_, a)| bad_store(a))
        {
            return None;
        }
        Some(Epilogue {
            p,
            n,
            reads_product,
        })
    }

    /// Whether each block run must be whole rows (a row kernel's).
    pub(super) fn whole_rows(&self) -> bool {
        !self.p.ir.is_pointwise()
    }

    /// Runs the kernel on `block` of the product, its rows counted from row `first` of the
    /// product (over the batch: batch matrix `b`'s row `i` is `b·m + i`).
    ///
    /// # Safety
    /// The block's elements are final and readable where it says, the block is inside the
    /// product (whole rows for a row kernel), and no other thread runs this epilogue on any
    /// of its rows and columns.
    pub(super) unsafe fn run(&self, first: usize, block: Block) {
        let p = &self.p;
        let (r0, rows, c0, cols) = (first + block.r0, block.rows, block.c0, block.cols);
        let mut s = Scratch::new(p);
        s.product = Some(fused::Product {
            loads: self.reads_product.clone(),
            base: block.at,
            origin: 0,
        });
        if !self.whole_rows() {
            s.bases_for_row(p, 0);
            let pass = &p.passes[0];
            // SAFETY: the kernel was prepared (bounds checked over its whole domain, which
            // is the product's); a pointwise kernel's row values read no load.
            unsafe { s.row_values(p, pass) };
            // One run of elements for whole rows stored contiguously, else one a row.
            let (runs, len) = if c0 == 0 && cols == self.n && block.ld == self.n {
                (1, rows * self.n)
            } else {
                (rows, cols)
            };
            for r in 0..runs {
                let start = (r0 + r) * self.n + c0;
                set_product(&mut s, &block, r, start);
                // SAFETY: as above; these elements are this call's alone (the caller's
                // promise).
                unsafe { s.span(p, pass, start, start + len) };
            }
        } else {
            for r in 0..rows {
                set_product(&mut s, &block, r, 0);
                // SAFETY: as above; row `r0 + r` is this call's alone.
                unsafe { s.row(p, r0 + r) };
            }
        }
    }
}

/// Points the product's loads of `s` at row `row` of `block`, its first element being
/// inner index `origin` of the kernel's walk.
fn set_product(s: &mut Scratch, block: &Block, row: usize, origin: usize) {
    if let Some(pr) = s.product.as_mut() {
        // SAFETY: row `row` of the block is in it (`Epilogue::run`'s promise).
        pr.base = unsafe { block.at.add(row * block.ld) };
        pr.origin = origin;
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
