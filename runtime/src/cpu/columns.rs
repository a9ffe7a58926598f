//! The wide column mode of the fused interpreter (`cpu::fused`): a row kernel whose walk
//! along a row strides through memory while consecutive rows lie next to each other (a
//! column reduction, `sum(x, axis=0)`, with or without element-order stores) computes `W`
//! consecutive rows at once, `W` being `WIDE` (64) and then `NARROW` (16) for what a run of
//! rows has left. Its blocks hold `[inner index i][lane w]`, so a load copies `W`
//! contiguous floats per inner index instead of gathering one float per cache line per
//! row, and the element ops run unchanged over the `n·W` values (an operand that is a row
//! value is spread over the lanes, or is a scalar where every lane has the same bits, and
//! then is not spread). A row is still walked in the blocks of `p.block`, and each block's
//! sum is `math::block_sum`'s for each lane to the bit: the same halving tree, whose leaves
//! (at most 256 inner indices) are computed `SUB` (32) inner indices at a time, each chunk
//! folded by `math::LaneLeafSums` before the next is computed into the same slots (a slot
//! is 8 KiB, so the slots of a kernel of a few dozen values stay in the second-level
//! cache), then the same `KahanSum` per lane across blocks and the same division for a
//! mean. Row values are computed for the lanes by the same block loops. Kernels whose rows
//! are one element (a sum over an axis of one: a copy) run wide too, one row value per
//! lane. The rows a run leaves after its groups (fewer than 16) run on the row path, and so
//! do kernels with an index value or a `where`. A max or min is `math::block_extremum`'s
//! per lane (`Extremum`), its 32 interleaved accumulators fed a chunk at a time.

use super::block::Block;
use super::fused::{self, Access, Prepared, Scratch};
use super::math::{self, KahanSum, LaneLeafSums, Operand};
use tc_compiler::ir::{DType, ReduceOp};
use tc_compiler::lower::{Level, ValueOp};

/// Rows computed at once: 256 bytes of f32 per inner index (one float per cache line
/// costs most at large strides, where each inner index is another page as well).
pub(super) const WIDE: usize = 64;
/// Rows computed at once among the rows a run has left after its groups of `WIDE`.
pub(super) const NARROW: usize = 16;
/// Elements per leaf of `math::block_sum` (its `SUM_LEAF`).
const LEAF: usize = 256;
/// Inner indices computed at once within a leaf (`Lanes::chunk`): a slot is `SUB·W`
/// floats (8 KiB for `WIDE`), so a kernel's slots stay in the second-level
/// cache, where a leaf's (64 KiB each) spilled to the third; the chunks of
/// `math::LaneLeafSums`, which folds them.
const SUB: usize = 32;

/// Switches the wide mode off (tests compare it with the row path).
#[cfg(test)]
pub(super) static OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Groups of rows run wide so far (tests check the mode ran).
#[cfg(test)]
pub(super) static GROUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How a kernel runs wide (`plan`).
pub(super) struct Wide {
    /// Rows in a run of the innermost row dim: a group of rows never crosses its end, so
    /// lane `w`'s offsets are lane 0's plus `w` times the row stride.
    last: usize,
    /// Per load, then per store: the element distance between consecutive rows.
    lane_stride: Vec<i64>,
    /// Per pass: the element values computed per leaf, in the kernel IR's order (operands
    /// first, after `peephole`): all the pass needs, as no pass reuses an earlier pass's
    /// blocks, which are not kept.
    elems: Vec<Vec<usize>>,
    /// Per pass: the row values an element value, reduction or element store of the pass
    /// reads, spread over the lanes of a chunk; with each, whether a reduction or element
    /// store reads it (as a block whatever its lanes hold: an element value takes a row
    /// value whose lanes agree as a scalar, and then its block is not filled).
    spread: Vec<Vec<(usize, bool)>>,
    /// Per value: whether it has a slot of a chunk's values (`SUB·W`).
    slot: Vec<bool>,
}

/// The wide plan of `p`, or `None` when the kernel is not eligible: a row kernel of float
/// ops (loads, constants, unary and binary ops, casts) and sums, means, maxes or mins, at
/// least `NARROW` rows to a run of the innermost row dim, a load whose consecutive rows
/// are adjacent while the row path reads them apart (an element load that walks the row
/// with a stride other than 1, or any load when a row is one element: a reduction over an
/// axis of one), every element load and store with consecutive rows adjacent (or the
/// same, for a load), and no store into a buffer a load reads other than element for
/// element in place.
pub(super) fn plan(p: &Prepared) -> Option<Wide> {
    #[cfg(test)]
    if OFF.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let last = *p.row_sizes.last()?;
    if last < NARROW || p.row_len == 0 {
        return None;
    }
    let values = &p.ir.values;
    for v in values {
        let ok = match v.op {
            ValueOp::Load(_) | ValueOp::Const(_) | ValueOp::Unary(..) | ValueOp::Binary(..) => true,
            ValueOp::Cast(_) => true,
            ValueOp::Reduce(op, _) => {
                v.level == Level::Row
                    && matches!(
                        op,
                        ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min
                    )
            }
            _ => false,
        };
        if !ok || !matches!(v.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return None;
        }
    }
    let accesses: Vec<&Access> = p
        .loads
        .iter()
        .chain(p.stores.iter().map(|(_, a)| a))
        .collect();
    let lane_stride: Vec<i64> = accesses
        .iter()
        .map(|a| a.row_strides.last().copied().unwrap_or(0))
        .collect();
    let inner_unit = |a: &Access| a.inner_strides.last() == Some(&1);
    // Whether some load reads its rows' values next to each other while the row path
    // reads them apart: along a strided walk, or one value a row.
    let mut adjacent = false;
    for v in values {
        if let ValueOp::Load(l) = v.op {
            let l = l.index();
            let apart = p.row_len == 1 || v.level == Level::Element && !inner_unit(&p.loads[l]);
            match lane_stride[l] {
                1 => adjacent |= apart,
                0 => {}
                _ if v.level == Level::Element => return None,
                _ => {}
            }
        }
    }
    if !adjacent {
        return None;
    }
    for (si, (inst, st)) in p.stores.iter().enumerate() {
        if p.level[*inst] == Level::Element && lane_stride[p.loads.len() + si] != 1 {
            return None;
        }
        for ld in &p.loads {
            let same = ld.mem.ptr == st.mem.ptr
                && ld.offset == st.offset
                && ld.row_strides == st.row_strides
                && ld.inner_strides == st.inner_strides;
            if ld.mem.overlaps(&st.mem) && !same {
                return None;
            }
        }
    }
    let n = values.len();
    let mut slot = vec![false; n];
    let mut elems = Vec::new();
    let mut spread = Vec::new();
    for (q, pass) in p.ir.passes.iter().enumerate() {
        let es: Vec<usize> = pass.elements.iter().map(|v| v.index()).collect();
        // (value, read as a block whatever its lanes)
        let mut reads: Vec<(usize, bool)> = Vec::new();
        for &i in &es {
            reads.extend(values[i].op.operands().iter().map(|o| (o.index(), false)));
        }
        for &r in &p.passes[q].reduces {
            reads.extend(values[r].op.operands().iter().map(|o| (o.index(), true)));
        }
        for &si in &p.passes[q].elem_stores {
            reads.push((p.stores[si].0, true));
        }
        let mut sp: Vec<(usize, bool)> = reads
            .into_iter()
            .filter(|&(o, _)| p.level[o] == Level::Row)
            .collect();
        // One entry a value, `true` where any read needs it.
        sp.sort_unstable_by_key(|&(o, block)| (o, !block));
        sp.dedup_by_key(|&mut (o, _)| o);
        for &i in es.iter().chain(sp.iter().map(|(o, _)| o)) {
            slot[i] = true;
        }
        elems.push(es);
        spread.push(sp);
    }
    Some(Wide {
        last,
        lane_stride,
        elems,
        spread,
        slot,
    })
}

/// Runs the rows of `p` (a row kernel `plan` found eligible) over the rayon pool: each
/// run of the innermost row dim in groups of `WIDE` rows, then of `NARROW`, the rows left
/// over on the row path.
///
/// # Safety
/// As `Scratch::row`: the kernel was prepared (every access bounds-checked).
pub(super) unsafe fn run(p: &Prepared, wide: &Wide) {
    let groups = wide.last / WIDE;
    let narrow = wide.last % WIDE / NARROW;
    let singles = wide.last % NARROW;
    let units = groups + narrow + singles;
    let runs = p.rows / wide.last;
    let min_len = (fused::rows_per_task(p.row_len) / WIDE).max(1);
    type State = (Option<Scratch>, Option<Lanes<WIDE>>, Option<Lanes<NARROW>>);
    fused::for_each_task(
        runs * units,
        min_len,
        || -> State { (None, None, None) },
        |(s, wide_lanes, narrow_lanes), u| {
            let (k, j) = (u / units, u % units);
            let first = k * wide.last;
            if j < groups {
                let lanes = wide_lanes.get_or_insert_with(|| Lanes::new(p, wide));
                // SAFETY: forwarded from the caller; each group of rows is one task's.
                unsafe { lanes.group(p, wide, first + j * WIDE) };
            } else if j < groups + narrow {
                let lanes = narrow_lanes.get_or_insert_with(|| Lanes::new(p, wide));
                let r = first + groups * WIDE + (j - groups) * NARROW;
                // SAFETY: as above.
                unsafe { lanes.group(p, wide, r) };
            } else {
                let s = s.get_or_insert_with(|| Scratch::new(p));
                let r = first + groups * WIDE + narrow * NARROW + (j - groups - narrow);
                // SAFETY: as above.
                unsafe { s.row(p, r) };
            }
        },
    );
}

/// Per-thread state of the wide mode: a leaf's block per value, the lanes' row values and
/// sums, the access bases of the group's first row.
struct Lanes<const W: usize> {
    slots: Vec<Block>,
    row: Vec<[f32; W]>,
    /// Per row value: every lane holds the same bits (an operand then is a scalar).
    uniform: Vec<bool>,
    sums: Vec<[KahanSum; W]>,
    /// Per value: the lanes' max or min over the blocks so far (`math::maximum`/`minimum`
    /// of the blocks' extrema, as the row path folds them).
    extrema: Vec<[f32; W]>,
    /// Per reduction of the pass: the current block's extremum so far (for a max or min).
    block_extrema: Vec<Extremum<W>>,
    /// Per reduction of the pass: the current leaf's sums so far (for a sum or mean).
    leaf_sums: Vec<LaneLeafSums<W>>,
    /// The current block's first inner index and its length (for the extrema).
    block_at: usize,
    block_len: usize,
    /// Per depth of the halving tree, per reduction of the pass: the lanes' partial sums.
    partial: Vec<Vec<[f32; W]>>,
    /// Element offset of each load, then each store, at the group's first row.
    bases: Vec<i64>,
}

impl<const W: usize> Lanes<W> {
    fn new(p: &Prepared, wide: &Wide) -> Lanes<W> {
        let n = p.ir.values.len();
        let mut row = vec![[0f32; W]; n];
        for (r, v) in row.iter_mut().zip(&p.ir.values) {
            if let ValueOp::Const(c) = v.op {
                *r = [math::round_to(v.dtype, c as f32); W];
            }
        }
        Lanes {
            slots: wide
                .slot
                .iter()
                .enumerate()
                .map(|(j, &s)| {
                    if s {
                        Block::new(SUB * W, j)
                    } else {
                        Block::default()
                    }
                })
                .collect(),
            row,
            uniform: vec![true; n],
            sums: vec![[KahanSum::default(); W]; n],
            extrema: vec![[0f32; W]; n],
            block_extrema: Vec::new(),
            leaf_sums: Vec::new(),
            block_at: 0,
            block_len: 0,
            partial: Vec::new(),
            bases: vec![0i64; p.loads.len() + p.stores.len()],
        }
    }

    /// Runs every pass of rows `r0 .. r0 + W` (one run of the innermost row dim).
    ///
    /// # Safety
    /// As `Scratch::row`, for each of the rows.
    unsafe fn group(&mut self, p: &Prepared, wide: &Wide, r0: usize) {
        #[cfg(test)]
        GROUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fused::row_bases(p, r0, &mut self.bases);
        let body = &p.ir.values;
        for (q, pass) in p.passes.iter().enumerate() {
            for &i in &pass.row_insts {
                // SAFETY: forwarded from the caller.
                unsafe { self.row_inst(p, wide, i) };
            }
            for &(i, block) in &wide.spread[q] {
                if !block && self.uniform[i] {
                    continue; // read as a scalar (`chunk`)
                }
                let lanes = self.row[i];
                for c in self.slots[i].chunks_exact_mut(W) {
                    c.copy_from_slice(&lanes);
                }
            }
            for &i in &pass.reduces {
                self.sums[i] = [KahanSum::default(); W];
                self.extrema[i] = match body[i].op {
                    ValueOp::Reduce(ReduceOp::Max, _) => [f32::NEG_INFINITY; W],
                    _ => [f32::INFINITY; W],
                };
            }
            if !wide.elems[q].is_empty() || !pass.reduces.is_empty() || !pass.elem_stores.is_empty()
            {
                let k = pass.reduces.len();
                for level in self.partial.iter_mut() {
                    level.resize(k, [0f32; W]);
                }
                self.leaf_sums.resize_with(k, LaneLeafSums::default);
                let mut at = 0;
                while at < p.row_len {
                    let n = p.block.min(p.row_len - at);
                    (self.block_at, self.block_len) = (at, n);
                    self.block_extrema.clear();
                    for &i in &pass.reduces {
                        let max = matches!(body[i].op, ValueOp::Reduce(ReduceOp::Max, _));
                        self.block_extrema.push(Extremum::new(max));
                    }
                    // SAFETY: forwarded from the caller.
                    unsafe { self.tree(p, wide, q, at, n, 0) };
                    for (r, &i) in pass.reduces.iter().enumerate() {
                        match body[i].op {
                            ValueOp::Reduce(ReduceOp::Max, _) => {
                                let b = self.block_extrema[r].finish();
                                for (e, b) in self.extrema[i].iter_mut().zip(b) {
                                    *e = math::maximum(*e, b);
                                }
                            }
                            ValueOp::Reduce(ReduceOp::Min, _) => {
                                let b = self.block_extrema[r].finish();
                                for (e, b) in self.extrema[i].iter_mut().zip(b) {
                                    *e = math::minimum(*e, b);
                                }
                            }
                            _ => {
                                let sums = self.sums[i].iter_mut();
                                for (s, &x) in sums.zip(&self.partial[0][r]) {
                                    s.add(x);
                                }
                            }
                        }
                    }
                    at += n;
                }
            }
            for &i in &pass.reduces {
                for w in 0..W {
                    let v = match body[i].op {
                        ValueOp::Reduce(ReduceOp::Sum, _) => self.sums[i][w].value(),
                        ValueOp::Reduce(ReduceOp::Mean, _) => {
                            self.sums[i][w].value() / p.row_len as f32
                        }
                        _ => self.extrema[i][w],
                    };
                    self.row[i][w] = math::round_to(body[i].dtype, v);
                }
                self.uniform[i] = same_lanes(&self.row[i]);
            }
            for &si in &pass.row_stores {
                let (inst, acc) = &p.stores[si];
                let at = p.loads.len() + si;
                let (base, step) = (self.bases[at], wide.lane_stride[at]);
                // SAFETY: bounds checked in `prepare`; rows `r0 .. r0 + W` are this task's.
                unsafe { acc.mem.write_run(base, step, &self.row[*inst]) };
            }
        }
    }

    /// Row value `i` for every lane (`Scratch::row_inst` for rows `r0 .. r0 + W`): the
    /// block loops over the `W` lanes, each lane the scalar op's bits (`math`'s scalar and
    /// block forms agree to the bit), an operand whose lanes agree passed as a scalar.
    ///
    /// # Safety
    /// The kernel was prepared (bounds checked) and the bases are set for the group.
    unsafe fn row_inst(&mut self, p: &Prepared, wide: &Wide, i: usize) {
        let inst = &p.ir.values[i];
        let mut out = [0f32; W];
        let (row, uniform) = (&self.row, &self.uniform);
        let operand = |o: tc_compiler::lower::ValueId| -> Operand<'_> {
            let o = o.index();
            if uniform[o] {
                Operand::Scalar(row[o][0])
            } else {
                Operand::Block(&row[o])
            }
        };
        match inst.op {
            ValueOp::Load(l) => {
                let l = l.index();
                let (acc, base, step) = (&p.loads[l], self.bases[l], wide.lane_stride[l]);
                if acc.mem.dtype == DType::F32 && step == 1 {
                    // SAFETY: bounds checked in `prepare`; `out` is a distinct allocation
                    // and an unaligned byte copy is always valid.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            acc.mem.ptr.cast::<f32>().offset(base as isize).cast::<u8>(),
                            out.as_mut_ptr().cast::<u8>(),
                            W * 4,
                        )
                    };
                } else {
                    // SAFETY: as above.
                    unsafe { acc.mem.read_run(base, step, &mut out) };
                }
            }
            ValueOp::Const(c) => out.fill(math::round_to(inst.dtype, c as f32)),
            ValueOp::Unary(op, a) => {
                match operand(a) {
                    Operand::Block(src) => math::unary_block(op, src, &mut out),
                    Operand::Scalar(x) => out.fill(math::unary(op, x)),
                }
                math::round_block(inst.dtype, &mut out);
            }
            ValueOp::Binary(op, a, b) => {
                math::binary_block(op, operand(a), operand(b), &mut out);
                math::round_block(inst.dtype, &mut out);
            }
            ValueOp::Cast(a) | ValueOp::Reduce(_, a) => {
                out = self.row[a.index()];
                math::round_block(inst.dtype, &mut out);
            }
            // Not in a kernel `plan` admits.
            ValueOp::Index { .. }
            | ValueOp::Gather { .. }
            | ValueOp::Scan(_)
            | ValueOp::Where(..) => unreachable!("not a wide kernel"),
        }
        self.row[i] = out;
        self.uniform[i] = same_lanes(&out);
    }

    /// The block of inner indices `at .. at + n` of pass `q` in `block_sum`'s halving tree:
    /// halves down to leaves of at most `LEAF`, each computed (element values, element
    /// stores) and summed; the lanes' sums of each reduction go to `partial[depth]`.
    ///
    /// # Safety
    /// As `group`.
    unsafe fn tree(
        &mut self,
        p: &Prepared,
        wide: &Wide,
        q: usize,
        at: usize,
        n: usize,
        depth: usize,
    ) {
        let k = p.passes[q].reduces.len();
        if self.partial.len() <= depth + 1 {
            self.partial.resize(depth + 2, vec![[0f32; W]; k]);
        }
        if n > LEAF {
            let h = n / 2;
            // SAFETY: forwarded from the caller.
            unsafe { self.tree(p, wide, q, at, h, depth + 1) };
            let (upper, lower) = self.partial.split_at_mut(depth + 1);
            upper[depth].copy_from_slice(&lower[0]);
            // SAFETY: as above.
            unsafe { self.tree(p, wide, q, at + h, n - h, depth + 1) };
            let (upper, lower) = self.partial.split_at_mut(depth + 1);
            for (a, b) in upper[depth].iter_mut().zip(&lower[0]) {
                for (a, &b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            }
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.leaf(p, wide, q, at, n, depth) };
    }

    /// The leaf of inner indices `at .. at + n` (at most `LEAF`) of pass `q`: computed
    /// `SUB` inner indices at a time (`chunk`), each chunk's values folded into the
    /// reductions (`LaneLeafSums`, `Extremum`) before the next is computed into the same
    /// slots; the lanes' sums go to `partial[depth]`.
    ///
    /// # Safety
    /// As `group`.
    unsafe fn leaf(
        &mut self,
        p: &Prepared,
        wide: &Wide,
        q: usize,
        at: usize,
        n: usize,
        depth: usize,
    ) {
        let reduces = &p.passes[q].reduces;
        for s in &mut self.leaf_sums {
            s.reset();
        }
        let mut c0 = 0;
        while c0 < n {
            let len = SUB.min(n - c0);
            // SAFETY: forwarded from the caller.
            unsafe { self.chunk(p, wide, q, at + c0, len) };
            for (r, &i) in reduces.iter().enumerate() {
                if let ValueOp::Reduce(op, a) = p.ir.values[i].op {
                    let xs = &self.slots[a.index()][..len * W];
                    if matches!(op, ReduceOp::Max | ReduceOp::Min) {
                        let whole = self.block_len / 32 * 32;
                        self.block_extrema[r].feed(xs, at + c0 - self.block_at, whole);
                    } else {
                        self.leaf_sums[r].feed(xs);
                    }
                }
            }
            c0 += len;
        }
        for (r, &i) in reduces.iter().enumerate() {
            if !matches!(
                p.ir.values[i].op,
                ValueOp::Reduce(ReduceOp::Max | ReduceOp::Min, _)
            ) {
                self.partial[depth][r] = self.leaf_sums[r].finish();
            }
        }
    }

    /// Computes the element values of pass `q` at inner indices `at .. at + n` (at most
    /// `SUB`) for every lane, and writes its element stores.
    ///
    /// # Safety
    /// As `group`.
    unsafe fn chunk(&mut self, p: &Prepared, wide: &Wide, q: usize, at: usize, n: usize) {
        let body = &p.ir.values;
        let m = n * W;
        for &i in &wide.elems[q] {
            let mut own = std::mem::take(&mut self.slots[i]);
            let dst = &mut own[..m];
            let slots = &self.slots;
            let (row, uniform) = (&self.row, &self.uniform);
            let operand = |o: tc_compiler::lower::ValueId| -> Operand<'_> {
                let o = o.index();
                if p.level[o] == Level::Row && uniform[o] {
                    Operand::Scalar(row[o][0])
                } else {
                    Operand::Block(&slots[o][..m])
                }
            };
            match body[i].op {
                ValueOp::Load(l) => {
                    let l = l.index();
                    let acc = &p.loads[l];
                    let (base, step) = (self.bases[l], wide.lane_stride[l]);
                    // SAFETY: bounds checked in `prepare`.
                    unsafe { read_lanes::<W>(acc, &p.inner_sizes, base, step, at, dst) };
                }
                ValueOp::Const(c) => dst.fill(math::round_to(body[i].dtype, c as f32)),
                ValueOp::Unary(op, a) => {
                    match operand(a) {
                        Operand::Block(src) => math::unary_block(op, src, dst),
                        Operand::Scalar(x) => dst.fill(math::unary(op, x)),
                    }
                    math::round_block(body[i].dtype, dst);
                }
                ValueOp::Binary(op, a, b) => {
                    math::binary_block(op, operand(a), operand(b), dst);
                    math::round_block(body[i].dtype, dst);
                }
                ValueOp::Cast(a) => match operand(a) {
                    Operand::Block(src) => math::round_into(body[i].dtype, src, dst),
                    Operand::Scalar(x) => dst.fill(math::round_to(body[i].dtype, x)),
                },
                _ => unreachable!("not a wide kernel"),
            }
            self.slots[i] = own;
        }
        for &si in &p.passes[q].elem_stores {
            let (inst, acc) = &p.stores[si];
            let at_s = p.loads.len() + si;
            let (base, step) = (self.bases[at_s], wide.lane_stride[at_s]);
            // SAFETY: bounds checked in `prepare`; these rows are this task's.
            unsafe {
                write_lanes::<W>(acc, &p.inner_sizes, base, step, at, &self.slots[*inst][..m])
            };
        }
    }
}

/// `math::block_extremum` of a block for each lane, fed the block a leaf at a time: the
/// first whole chunks of 32 elements go to 32 interleaved accumulators (element `i` to
/// accumulator `i % 32`), which are then folded in order, followed by the elements after
/// the last whole chunk; NaN if any element is. The same picks in the same order as the
/// scalar loop, so the same bits (which of ±0 wins a tie included).
struct Extremum<const W: usize> {
    max: bool,
    lanes: [[f32; W]; 32],
    nan: [bool; W],
    /// The fold of `lanes` and of the elements after the chunks, once begun.
    m: [f32; W],
    folded: bool,
}

impl<const W: usize> Extremum<W> {
    fn new(max: bool) -> Extremum<W> {
        let init = if max {
            f32::NEG_INFINITY
        } else {
            f32::INFINITY
        };
        Extremum {
            max,
            lanes: [[init; W]; 32],
            nan: [false; W],
            m: [init; W],
            folded: false,
        }
    }

    /// `block_extremum`'s pick: the new value where it is greater (smaller), else the old.
    #[inline(always)]
    fn pick(max: bool, l: &mut [f32; W], x: &[f32]) {
        if max {
            for (l, &x) in l.iter_mut().zip(x) {
                *l = if x > *l { x } else { *l };
            }
        } else {
            for (l, &x) in l.iter_mut().zip(x) {
                *l = if x < *l { x } else { *l };
            }
        }
    }

    fn note_nan(&mut self, x: &[f32]) {
        for (n, &x) in self.nan.iter_mut().zip(x) {
            *n |= x.is_nan();
        }
    }

    /// Takes in `xs` (`xs.len() / W` elements of each lane, interleaved), the elements
    /// from `pos` of a block whose whole chunks end at `whole`.
    fn feed(&mut self, xs: &[f32], pos: usize, whole: usize) {
        for (j, x) in xs.chunks_exact(W).enumerate() {
            self.note_nan(x);
            let p = pos + j;
            if p < whole {
                Self::pick(self.max, &mut self.lanes[p % 32], x);
            } else {
                self.fold();
                Self::pick(self.max, &mut self.m, x);
            }
        }
    }

    /// Folds the 32 accumulators into `m`, once.
    fn fold(&mut self) {
        if !self.folded {
            for l in 0..32 {
                let lane = self.lanes[l];
                self.note_nan(&lane);
                Self::pick(self.max, &mut self.m, &lane);
            }
            self.folded = true;
        }
    }

    /// The block's extremum per lane.
    fn finish(&mut self) -> [f32; W] {
        self.fold();
        std::array::from_fn(|w| if self.nan[w] { f32::NAN } else { self.m[w] })
    }
}

/// Whether every lane holds the same bits.
fn same_lanes<const W: usize>(x: &[f32; W]) -> bool {
    x.iter().all(|v| v.to_bits() == x[0].to_bits())
}

/// Reads inner indices `at .. at + dst.len() / W` of `acc` for the `W` rows whose offsets
/// are `base + w·step`, into `dst[i·W + w]`, widened to f32.
///
/// # Safety
/// Every element read lies inside `acc.mem` (checked in `prepare`).
unsafe fn read_lanes<const W: usize>(
    acc: &Access,
    sizes: &[usize],
    base: i64,
    step: i64,
    at: usize,
    dst: &mut [f32],
) {
    let f32_run = acc.mem.dtype == DType::F32 && step == 1;
    let f32_same = acc.mem.dtype == DType::F32 && step == 0;
    fused::runs(
        sizes,
        &acc.inner_strides,
        base,
        at,
        dst.len() / W,
        |pos, off, len, stride| {
            for (j, d) in dst[pos * W..(pos + len) * W]
                .chunks_exact_mut(W)
                .enumerate()
            {
                let o = off + j as i64 * stride;
                if f32_run {
                    // SAFETY: in bounds by the caller; `d` holds W floats, a distinct
                    // allocation.
                    unsafe { copy_lanes::<W>(acc.mem.ptr.cast::<f32>().offset(o as isize), d) };
                } else if f32_same {
                    // SAFETY: in bounds by the caller.
                    d.fill(unsafe {
                        acc.mem
                            .ptr
                            .cast::<f32>()
                            .offset(o as isize)
                            .read_unaligned()
                    });
                } else {
                    // SAFETY: in bounds by the caller.
                    unsafe { acc.mem.read_run(o, step, d) };
                }
            }
        },
    );
}

/// `W` floats from `src` into `dst` (`W` a multiple of 16), 64 bytes a move, inline: a
/// call of `memcpy` a row group and inner index cost a third of a column kernel's time.
///
/// # Safety
/// `W` floats readable at `src`, apart from `dst`.
#[inline(always)]
unsafe fn copy_lanes<const W: usize>(src: *const f32, dst: &mut [f32]) {
    let dst = &mut dst[..W];
    for (c, d) in dst.chunks_exact_mut(16).enumerate() {
        // SAFETY: floats `16c .. 16c + 16 ≤ W` of `src` (the caller's bounds), unaligned.
        let v = unsafe { src.add(16 * c).cast::<[f32; 16]>().read_unaligned() };
        d.copy_from_slice(&v);
    }
}

/// `W` floats from `src` to `dst` (`W` a multiple of 16), as `copy_lanes`.
///
/// # Safety
/// `W` floats writable at `dst`, apart from `src`.
#[inline(always)]
unsafe fn store_lanes<const W: usize>(src: &[f32], dst: *mut f32) {
    for (c, s) in src[..W].chunks_exact(16).enumerate() {
        let v: [f32; 16] = s.try_into().expect("16 floats");
        // SAFETY: floats `16c .. 16c + 16 ≤ W` of `dst` (the caller's bounds), unaligned.
        unsafe { dst.add(16 * c).cast::<[f32; 16]>().write_unaligned(v) };
    }
}

/// Writes `src[i·W + w]` to inner index `at + i` of `acc` for the `W` rows whose offsets
/// are `base + w·step`, rounded to the buffer's dtype.
///
/// # Safety
/// Every element written lies inside `acc.mem`, and no other thread touches it.
unsafe fn write_lanes<const W: usize>(
    acc: &Access,
    sizes: &[usize],
    base: i64,
    step: i64,
    at: usize,
    src: &[f32],
) {
    let f32_run = acc.mem.dtype == DType::F32 && step == 1;
    fused::runs(
        sizes,
        &acc.inner_strides,
        base,
        at,
        src.len() / W,
        |pos, off, len, stride| {
            for (j, s) in src[pos * W..(pos + len) * W].chunks_exact(W).enumerate() {
                let o = off + j as i64 * stride;
                if f32_run {
                    // SAFETY: in bounds and this thread's by the caller.
                    unsafe { store_lanes::<W>(s, acc.mem.ptr.cast::<f32>().offset(o as isize)) };
                } else {
                    // SAFETY: as above.
                    unsafe { acc.mem.write_run(o, step, s) };
                }
            }
        },
    );
}
