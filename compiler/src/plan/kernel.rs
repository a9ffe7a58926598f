//! Kernel construction: one fused group becomes a `FusedKernel` — its loads (one per
//! distinct buffer, offset and strides), its body of insts (value-numbered: the same op on
//! the same insts is computed once; every f16/bf16 arithmetic result followed by a rounding
//! `Cast`; a fold of a row-constant value written closed-form) and its stores — or a
//! `MatMulKernel`. The `Builder` also makes the buffers the kernels name.

use super::{internal, too_large};
use crate::diag::Diagnostic;
use crate::fuse::attention::Attention;
use crate::fuse::{to_domain, Group};
use crate::ir::layout::Layout;
use crate::ir::{BinaryOp, Graph, NodeId, Op, ReduceOp};
use crate::schedule::{
    AttentionKernel, Buffer, BufferId, BufferKind, Epilogue, FusedKernel, Inst, InstId, InstOp,
    KernelKind, Level, Load, MatMulKernel, MatOperand, PlanOptions, Store, RESULT, SCORE,
};
use std::collections::HashMap;

pub(super) struct Builder<'a> {
    pub(super) graph: &'a Graph,
    pub(super) lays: &'a [Layout],
    /// Promotions read through converting loads (`fuse::folded_casts`), and the layouts
    /// that see through them.
    pub(super) folded: &'a [bool],
    pub(super) flays: &'a [Layout],
    pub(super) buffers: Vec<Buffer>,
    pub(super) buf_of: HashMap<NodeId, BufferId>,
}

impl Builder<'_> {
    pub(super) fn push(&mut self, buf: Buffer) -> BufferId {
        let id = BufferId(self.buffers.len() as u32);
        if let Some(n) = buf.node {
            self.buf_of.insert(n, id);
        }
        self.buffers.push(buf);
        id
    }

    pub(super) fn leaf(
        &mut self,
        node: NodeId,
        name: &str,
        kind: BufferKind,
    ) -> Result<BufferId, Diagnostic> {
        let ty = self.graph.ty(node);
        let bytes = ty.bytes().ok_or_else(|| too_large(self.graph, node))?;
        Ok(self.push(Buffer {
            name: name.to_string(),
            kind,
            dtype: ty.dtype,
            shape: ty.sizes(),
            bytes,
            offset: 0,
            first_step: 0,
            last_step: 0,
            in_place_of: None,
            node: Some(node),
        }))
    }

    pub(super) fn arena(
        &mut self,
        node: NodeId,
        name: String,
        step: usize,
    ) -> Result<BufferId, Diagnostic> {
        let ty = self.graph.ty(node);
        let bytes = ty.bytes().ok_or_else(|| too_large(self.graph, node))?;
        Ok(self.push(Buffer {
            name,
            kind: BufferKind::Arena,
            dtype: ty.dtype,
            shape: ty.sizes(),
            bytes,
            offset: 0,
            first_step: step,
            last_step: step,
            in_place_of: None,
            node: Some(node),
        }))
    }

    pub(super) fn operand(&self, o: NodeId) -> Result<MatOperand, Diagnostic> {
        let lay = &self.lays[o.index()];
        let buffer = *self
            .buf_of
            .get(&lay.root)
            .ok_or_else(|| internal(format!("matmul operand {o} is not in memory")))?;
        Ok(MatOperand {
            buffer,
            dtype: self.buffers[buffer.index()].dtype,
            offset: lay.offset,
            strides: lay.strides.clone(),
        })
    }

    pub(super) fn matmul(
        &mut self,
        group: &Group,
        out: BufferId,
        options: &PlanOptions,
        step: usize,
    ) -> Result<KernelKind, Diagnostic> {
        let n = group.nodes[0];
        let Op::MatMul(a, bn) = self.graph.node(n).op else {
            return Err(internal("a matmul group without a matmul"));
        };
        let shape = self.graph.ty(n).sizes();
        let a_shape = self.graph.ty(a).sizes();
        let r = shape.len();
        if r < 2 || a_shape.len() != r || self.graph.ty(bn).rank() != r {
            return Err(internal(format!(
                "matmul {n} operands are not of equal rank ≥ 2"
            )));
        }
        // The residual add the product accumulates into (`fuse::gemm`): `x`'s buffer, read
        // whole and contiguously.
        let accumulate = match group.nodes[..] {
            [_] => None,
            [_, add] => {
                let x = match crate::fuse::gemm::accumulated(self.graph, add) {
                    Some((mm, x)) if mm == n => x,
                    _ => return Err(internal(format!("{add} is not a residual add of {n}"))),
                };
                let lay = &self.lays[x.index()];
                let buffer = *self.buf_of.get(&lay.root).ok_or_else(|| {
                    internal(format!("the residual {x} of matmul {n} is not in memory"))
                })?;
                let contiguous = crate::ir::types::contiguous_strides(&shape);
                if lay.offset != 0
                    || lay.strides != contiguous
                    || self.buffers[buffer.index()].shape != shape
                    || self.buffers[buffer.index()].dtype != self.graph.dtype(n)
                {
                    return Err(internal(format!(
                        "the residual {x} of matmul {n} is not its whole buffer"
                    )));
                }
                Some(buffer)
            }
            _ => return Err(internal("a matmul group of more than a product and an add")),
        };
        let mut mm = MatMulKernel {
            batch: shape[..r - 2].to_vec(),
            m: shape[r - 2],
            n: shape[r - 1],
            k: a_shape[r - 1],
            a: self.operand(a)?,
            b: self.operand(bn)?,
            out,
            out_dtype: self.graph.dtype(n),
            workspace: None,
            accumulate,
            prologue: None,
            packs_whole_b: false,
        };
        // The target's workspace for this product (cuBLAS's, or the CPU GEMM's packed B),
        // live at its step alone.
        let bytes = mm.workspace_bytes(&options.target);
        if bytes > 0 {
            mm.workspace = Some(self.push(Buffer {
                name: format!("k{step}.workspace"),
                kind: BufferKind::Workspace,
                dtype: crate::ir::DType::F32,
                shape: vec![bytes.div_ceil(4)],
                bytes,
                offset: 0,
                first_step: step,
                last_step: step,
                in_place_of: None,
                node: None,
            }));
        }
        Ok(KernelKind::MatMul(mm))
    }

    /// The attention kernel of `group` (`fuse::attention`): the products' operands, and
    /// the prologue built as a fused kernel over the scores' shape that loads the scores
    /// from a stand-in buffer, whose load becomes `SCORE`.
    pub(super) fn attention(
        &mut self,
        att: &Attention,
        live: &[bool],
        result: NodeId,
        out: BufferId,
    ) -> Result<KernelKind, Diagnostic> {
        let (Op::MatMul(qa, kb), Op::MatMul(_, vb)) = (
            &self.graph.node(att.scores).op,
            &self.graph.node(att.out).op,
        ) else {
            return Err(internal("an attention group without its products"));
        };
        let shape = self.graph.ty(att.scores).sizes();
        let r = shape.len();
        let out_shape = self.graph.ty(att.out).sizes();
        let q_shape = self.graph.ty(*qa).sizes();
        let score_dtype = self.graph.dtype(att.scores);
        // The stand-in for the scores, removed before anyone sees it.
        let stand_in = self.push(Buffer {
            name: "scores".into(),
            kind: BufferKind::Arena,
            dtype: score_dtype,
            shape: shape.clone(),
            bytes: 0,
            offset: 0,
            first_step: 0,
            last_step: 0,
            in_place_of: None,
            node: Some(att.scores),
        });
        let prologue = Group {
            nodes: att.prologue.clone(),
            domain: shape.clone(),
            reduce_axes: Vec::new(),
            levels: vec![Level::Element; att.prologue.len()],
            matmul: false,
            attention: None,
            attention_backward: None,
        };
        let built = if att.prologue.is_empty() {
            Ok(None)
        } else {
            self.fused(&prologue, live, &[att.logits], &[stand_in])
                .map(Some)
        };
        self.buffers.pop();
        self.buf_of.remove(&att.scores);
        let built = built?;
        let contiguous = crate::ir::types::contiguous_strides(&shape);
        let (loads, body, logits) = match built {
            None => (
                Vec::new(),
                vec![Inst {
                    op: InstOp::Load(SCORE),
                    dtype: score_dtype,
                    level: Level::Element,
                    node: Some(att.scores),
                }],
                0,
            ),
            Some(k) => {
                let (loads, body) = around_stand_in(
                    &k,
                    stand_in,
                    (0, &contiguous),
                    "the prologue reads the scores through a view",
                    SCORE,
                    <[i64]>::to_vec,
                )?;
                (loads, body, k.stores[0].inst)
            }
        };
        let (epilogue, out_strides) = self.epilogue(att, live, result, out)?;
        Ok(KernelKind::Attention(AttentionKernel {
            batch: shape[..r - 2].to_vec(),
            m: shape[r - 2],
            n: shape[r - 1],
            d: q_shape[r - 1],
            dv: out_shape[r - 1],
            q: self.operand(*qa)?,
            k: self.operand(*kb)?,
            v: self.operand(*vb)?,
            score_dtype,
            loads,
            body,
            logits,
            epilogue,
            out,
            // `result`'s dtype is its buffer's (the attention backward builds its forward
            // part with no buffer behind `out`).
            out_dtype: self.graph.dtype(result),
            out_offset: 0,
            out_strides,
        }))
    }

    /// The epilogue of `att` (its nodes built as a fused kernel over their own shape that
    /// loads `p @ v` from a stand-in buffer, whose load becomes `RESULT`), with every stride
    /// taken onto the output's axes `batch ++ [m, dv]`; and the strides `result`'s buffer
    /// `out` is written through over those axes (contiguous without an epilogue).
    fn epilogue(
        &mut self,
        att: &Attention,
        live: &[bool],
        result: NodeId,
        out: BufferId,
    ) -> Result<(Option<Epilogue>, Vec<i64>), Diagnostic> {
        let oshape = self.graph.ty(att.out).sizes();
        if att.epilogue.is_empty() {
            return Ok((None, crate::ir::types::contiguous_strides(&oshape)));
        }
        let eshape = self.graph.ty(result).sizes();
        let stand_in = self.push(Buffer {
            name: "attention".into(),
            kind: BufferKind::Arena,
            dtype: self.graph.dtype(att.out),
            shape: oshape.clone(),
            bytes: 0,
            offset: 0,
            first_step: 0,
            last_step: 0,
            in_place_of: None,
            node: Some(att.out),
        });
        let group = Group {
            nodes: att.epilogue.clone(),
            domain: eshape.clone(),
            reduce_axes: Vec::new(),
            levels: vec![Level::Element; att.epilogue.len()],
            matmul: false,
            attention: None,
            attention_backward: None,
        };
        let built = self.fused(&group, live, &[result], &[out]);
        self.buffers.pop();
        self.buf_of.remove(&att.out);
        let k = built?;
        let Some(read) = k.loads.iter().find(|l| l.buffer == stand_in) else {
            return Err(internal("the attention epilogue does not read the output"));
        };
        // Epilogue axis `d` walks output axis `perm[d]`: strides over the epilogue's axes
        // become strides over the output's.
        let perm =
            crate::fuse::attention::permutation(&oshape, &eshape, read.offset, &read.strides)
                .ok_or_else(|| internal("the attention epilogue's read is no permutation"))?;
        let onto = |strides: &[i64]| {
            let mut o = vec![0i64; strides.len()];
            for (d, &a) in perm.iter().enumerate() {
                o[a] = strides[d];
            }
            o
        };
        let (loads, body) = around_stand_in(
            &k,
            stand_in,
            (read.offset, &read.strides),
            "the attention epilogue reads the output twice",
            RESULT,
            onto,
        )?;
        let out_strides = onto(&crate::ir::types::contiguous_strides(&eshape));
        Ok((
            Some(Epilogue {
                loads,
                body,
                result: k.stores[0].inst,
            }),
            out_strides,
        ))
    }

    pub(super) fn fused(
        &self,
        group: &Group,
        live: &[bool],
        outs: &[NodeId],
        out_bufs: &[BufferId],
    ) -> Result<FusedKernel, Diagnostic> {
        let mut k = FusedKernel {
            domain: group.domain.clone(),
            reduce_axes: group.reduce_axes.clone(),
            loads: Vec::new(),
            body: Vec::new(),
            stores: Vec::new(),
            workspace: None,
        };
        let mut inst_of: HashMap<NodeId, InstId> = HashMap::new();
        let mut loads: HashMap<(BufferId, i64, Vec<i64>), InstId> = HashMap::new();
        let mut consts: HashMap<(u64, crate::ir::DType), InstId> = HashMap::new();
        // Value numbering: the same op on the same insts is computed once (a folded promotion
        // read twice converts once; sibling kernels merged by `fuse` often share their row
        // statistics, softmax's max and sum, say).
        let mut computed: HashMap<(Computed, crate::ir::DType, Level), InstId> = HashMap::new();
        let row_level = if k.reduce_axes.is_empty() {
            Level::Element
        } else {
            Level::Row
        };
        for (i, &n) in group.nodes.iter().enumerate() {
            if !live[n.index()] {
                continue; // computed for nobody
            }
            let level = group.levels.get(i).copied().unwrap_or(Level::Element);
            let node = self.graph.node(n);
            let dtype = node.ty.dtype;
            let consumer = if matches!(node.op, Op::Reduce { .. } | Op::Cumsum { .. }) {
                Level::Element
            } else {
                level
            };
            let mut value = |o: NodeId, k: &mut FusedKernel| -> Result<InstId, Diagnostic> {
                let lay = &self.lays[o.index()];
                if let Some(&i) = inst_of.get(&lay.root) {
                    return Ok(i);
                }
                if let Op::Scalar(v) = self.graph.node(lay.root).op {
                    let dt = self.graph.dtype(lay.root);
                    let id = *consts.entry((v.to_bits(), dt)).or_insert_with(|| {
                        k.body.push(Inst {
                            op: InstOp::Const(v),
                            dtype: dt,
                            level: row_level,
                            node: Some(lay.root),
                        });
                        k.body.len() - 1
                    });
                    return Ok(id);
                }
                if let Op::Arange = self.graph.node(lay.root).op {
                    // An arange read through its views: the index map itself, no buffer.
                    let strides = to_domain(
                        &lay.strides,
                        self.graph.ty(o).rank(),
                        consumer,
                        &k.domain,
                        &k.reduce_axes,
                    );
                    let is_row = !k.reduce_axes.is_empty()
                        && k.reduce_axes
                            .iter()
                            .all(|&a| strides[a] == 0 || k.domain[a] == 1);
                    let op = InstOp::Index {
                        offset: lay.offset,
                        strides,
                    };
                    if let Some(i) = k.body.iter().position(|x| x.op == op) {
                        return Ok(i);
                    }
                    k.body.push(Inst {
                        op,
                        dtype: self.graph.dtype(lay.root),
                        level: if is_row { row_level } else { Level::Element },
                        node: Some(lay.root),
                    });
                    return Ok(k.body.len() - 1);
                }
                // A folded promotion: load its input or param through the same views,
                // then round to the promoted dtype.
                let (lay, cast_to) = if self.folded[lay.root.index()] {
                    (&self.flays[o.index()], Some(self.graph.dtype(lay.root)))
                } else {
                    (lay, None)
                };
                let buffer = *self
                    .buf_of
                    .get(&lay.root)
                    .ok_or_else(|| internal(format!("{} is read before it is stored", lay.root)))?;
                let strides = to_domain(
                    &lay.strides,
                    self.graph.ty(o).rank(),
                    consumer,
                    &k.domain,
                    &k.reduce_axes,
                );
                if strides.len() != k.domain.len() {
                    return Err(internal(format!(
                        "load of {o} does not match the kernel domain"
                    )));
                }
                let key = (buffer, lay.offset, strides.clone());
                let loaded = match loads.get(&key) {
                    Some(&i) => i,
                    None => {
                        let is_row = !k.reduce_axes.is_empty()
                            && k.reduce_axes
                                .iter()
                                .all(|&a| strides[a] == 0 || k.domain[a] == 1);
                        let bdt = self.buffers[buffer.index()].dtype;
                        k.loads.push(Load {
                            buffer,
                            dtype: bdt,
                            offset: lay.offset,
                            strides,
                        });
                        k.body.push(Inst {
                            op: InstOp::Load(k.loads.len() - 1),
                            dtype: bdt,
                            level: if is_row { row_level } else { Level::Element },
                            node: None,
                        });
                        loads.insert(key, k.body.len() - 1);
                        k.body.len() - 1
                    }
                };
                match cast_to {
                    Some(dt) if dt != k.body[loaded].dtype => {
                        let level = k.body[loaded].level;
                        let key = (Computed::Cast(loaded), dt, level);
                        Ok(*computed.entry(key).or_insert_with(|| {
                            k.body.push(Inst {
                                op: InstOp::Cast(loaded),
                                dtype: dt,
                                level,
                                node: None,
                            });
                            k.body.len() - 1
                        }))
                    }
                    _ => Ok(loaded),
                }
            };
            let op = match &node.op {
                Op::Unary(u, a) => InstOp::Unary(*u, value(*a, &mut k)?),
                Op::Binary(bop, a, c) => {
                    let a = value(*a, &mut k)?;
                    InstOp::Binary(*bop, a, value(*c, &mut k)?)
                }
                Op::Cast { arg, .. } => InstOp::Cast(value(*arg, &mut k)?),
                Op::Reduce { op, arg, .. } => {
                    let a = value(*arg, &mut k)?;
                    if k.body[a].level == Level::Element || k.reduce_axes.is_empty() {
                        InstOp::Reduce(*op, a)
                    } else {
                        // A row-constant operand (a broadcast read): the fold is closed-form,
                        // so every executor computes the same exact figure.
                        match op {
                            ReduceOp::Sum => {
                                // Integers multiply exactly (wrapping) by an integer count.
                                let cdt = if dtype.is_integral() {
                                    dtype
                                } else {
                                    crate::ir::DType::F32
                                };
                                k.body.push(Inst {
                                    op: InstOp::Const(k.row_len() as f64),
                                    dtype: cdt,
                                    level: row_level,
                                    node: None,
                                });
                                InstOp::Binary(BinaryOp::Mul, a, k.body.len() - 1)
                            }
                            ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min => InstOp::Cast(a),
                            // Every element ties: the first position (NaN or not).
                            ReduceOp::ArgMax | ReduceOp::ArgMin => InstOp::Const(0.0),
                        }
                    }
                }
                Op::Scalar(v) => InstOp::Const(*v),
                Op::Where(c, a, b) => {
                    let c = value(*c, &mut k)?;
                    let a = value(*a, &mut k)?;
                    InstOp::Where(c, a, value(*b, &mut k)?)
                }
                // A copy rounds to its own dtype: the identity on a loaded value.
                Op::Copy(a) => InstOp::Cast(value(*a, &mut k)?),
                Op::Cumsum { arg, .. } => InstOp::Scan(value(*arg, &mut k)?),
                // An arange that must be in memory (a fill): its own index.
                Op::Arange => InstOp::Index {
                    offset: 0,
                    strides: vec![1],
                },
                Op::Gather { arg, index, axis } => {
                    let index_inst = value(*index, &mut k)?;
                    let what = self.gather_what(n, *index, *arg);
                    let root = self.lays[arg.index()].root;
                    if self.graph.node(root).op == Op::Arange && !self.buf_of.contains_key(&root) {
                        self.gathered_arange(&mut k, *arg, *axis, level, index_inst, what)
                    } else {
                        let (load, stride, size) =
                            self.gathered_load(&mut k, *arg, *axis, level)?;
                        InstOp::Gather {
                            load: Some(load),
                            index: index_inst,
                            stride,
                            size,
                            what,
                        }
                    }
                }
                other => {
                    return Err(internal(format!(
                        "{} cannot be part of a fused kernel",
                        other.name()
                    )))
                }
            };
            let key = Computed::of(&op).map(|c| (c, dtype, level));
            if let Some(&same) = key.as_ref().and_then(|key| computed.get(key)) {
                inst_of.insert(n, same);
                continue;
            }
            // Float arithmetic is in f32; a half-precision result is rounded right away, so
            // the fused kernel rounds exactly where the unfused program stores. (Integer
            // arithmetic is exact and wraps by itself.)
            let rounds = matches!(dtype, crate::ir::DType::F16 | crate::ir::DType::BF16)
                && matches!(
                    op,
                    InstOp::Unary(..) | InstOp::Binary(..) | InstOp::Reduce(..) | InstOp::Scan(..)
                );
            k.body.push(Inst {
                op,
                dtype,
                level,
                node: Some(n),
            });
            if rounds {
                let v = k.body.len() - 1;
                k.body.push(Inst {
                    op: InstOp::Cast(v),
                    dtype,
                    level,
                    node: Some(n),
                });
            }
            inst_of.insert(n, k.body.len() - 1);
            if let Some(key) = key {
                computed.insert(key, k.body.len() - 1);
            }
        }
        for (&n, &buffer) in outs.iter().zip(out_bufs) {
            let inst = *inst_of
                .get(&n)
                .ok_or_else(|| internal(format!("stored value {n} was not computed")))?;
            k.stores.push(Store {
                inst,
                buffer,
                region: None,
            });
        }
        Ok(k)
    }
}

/// The loads and body of `k`, a kernel built around the stand-in buffer `stand_in`, as a
/// part of a larger kernel (an attention's prologue, its backward or its epilogue): every
/// read of the stand-in, which must be through `view` (offset and strides; else the
/// internal error `misread`), becomes load `special` (`SCORE`, `GRAD`, `RESULT`); the
/// other loads follow it, numbered from `special + 1`, with their strides and those of
/// `Index` insts taken through `onto`; every inst runs per element.
pub(super) fn around_stand_in(
    k: &FusedKernel,
    stand_in: BufferId,
    view: (i64, &[i64]),
    misread: &str,
    special: usize,
    onto: impl Fn(&[i64]) -> Vec<i64>,
) -> Result<(Vec<Load>, Vec<Inst>), Diagnostic> {
    let mut map = Vec::with_capacity(k.loads.len());
    let mut loads = Vec::new();
    for l in &k.loads {
        if l.buffer == stand_in {
            if (l.offset, l.strides.as_slice()) != view {
                return Err(internal(misread));
            }
            map.push(special);
        } else {
            loads.push(Load {
                strides: onto(&l.strides),
                ..l.clone()
            });
            map.push(special + loads.len());
        }
    }
    let body = k
        .body
        .iter()
        .map(|i| Inst {
            op: match i.op {
                InstOp::Load(l) => InstOp::Load(map[l]),
                InstOp::Index {
                    offset,
                    ref strides,
                } => InstOp::Index {
                    offset,
                    strides: onto(strides),
                },
                ref op => op.clone(),
            },
            level: Level::Element,
            ..i.clone()
        })
        .collect();
    Ok((loads, body))
}

impl Builder<'_> {
    /// The load a `Gather` of `arg` along `axis` reads through, in a kernel where the
    /// gather is at `level`: `arg`'s layout over the domain with stride 0 along `axis` and
    /// wherever `arg` broadcasts (size 1); and the stride and size of `axis`, which the
    /// index's value moves along.
    fn gathered_load(
        &self,
        k: &mut FusedKernel,
        arg: NodeId,
        axis: usize,
        level: Level,
    ) -> Result<(usize, i64, u64), Diagnostic> {
        let lay = &self.lays[arg.index()];
        let buffer = *self
            .buf_of
            .get(&lay.root)
            .ok_or_else(|| internal(format!("the gathered table {} is not in memory", lay.root)))?;
        let sizes = self.graph.ty(arg).sizes();
        let mut own = lay.strides.clone();
        for (d, s) in own.iter_mut().enumerate() {
            if d == axis || sizes[d] == 1 {
                *s = 0;
            }
        }
        let strides = to_domain(&own, sizes.len(), level, &k.domain, &k.reduce_axes);
        if strides.len() != k.domain.len() || axis >= sizes.len() {
            return Err(internal(format!(
                "gather of {arg} does not match the kernel domain"
            )));
        }
        k.loads.push(Load {
            buffer,
            dtype: self.buffers[buffer.index()].dtype,
            offset: lay.offset,
            strides,
        });
        Ok((k.loads.len() - 1, lay.strides[axis], sizes[axis]))
    }

    /// A gather from an arange (`one_hot`'s range check, `take(arange(N), idx)`): the
    /// checked index times the arange's stride along `axis`, plus its index map at the other
    /// axes when that is not 0 — no table in memory.
    fn gathered_arange(
        &self,
        k: &mut FusedKernel,
        arg: NodeId,
        axis: usize,
        level: Level,
        index: InstId,
        what: String,
    ) -> InstOp {
        let lay = &self.lays[arg.index()];
        let sizes = self.graph.ty(arg).sizes();
        let checked = InstOp::Gather {
            load: None,
            index,
            stride: lay.strides[axis],
            size: sizes[axis],
            what,
        };
        let mut own = lay.strides.clone();
        for (d, s) in own.iter_mut().enumerate() {
            if d == axis || sizes[d] == 1 {
                *s = 0;
            }
        }
        let strides = to_domain(&own, sizes.len(), level, &k.domain, &k.reduce_axes);
        if lay.offset == 0 && strides.iter().all(|&s| s == 0) {
            return checked;
        }
        let dtype = crate::ir::DType::I64;
        k.body.push(Inst {
            op: checked,
            dtype,
            level,
            node: None,
        });
        k.body.push(Inst {
            op: InstOp::Index {
                offset: lay.offset,
                strides,
            },
            dtype,
            level,
            node: None,
        });
        InstOp::Binary(BinaryOp::Add, k.body.len() - 2, k.body.len() - 1)
    }

    /// What an out-of-range index of gather `n` is reported as: the index tensor (by name
    /// where it has one), the source line and the tensor it indexes.
    fn gather_what(&self, n: NodeId, index: NodeId, arg: NodeId) -> String {
        let g = self.graph;
        let root = |x: NodeId| self.lays[x.index()].root;
        let named = |x: NodeId, what: &str| match &g.node(root(x)).name {
            Some(name) => format!("{what} `{name}`"),
            None => what.to_string(),
        };
        if g.node(root(arg)).op == Op::Arange {
            // `one_hot`'s check (or a take from an arange).
            return format!(
                "{} (line {}), as a class index",
                named(index, "the index tensor"),
                g.origin(n).line
            );
        }
        format!(
            "{} (line {}) indexing {} {}",
            named(index, "the index tensor"),
            g.origin(n).line,
            named(arg, "the table"),
            g.ty(root(arg)),
        )
    }
}

/// A computing inst's op, hashable (no `Const`: constants are numbered by their bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Computed {
    Unary(crate::ir::UnaryOp, InstId),
    Binary(BinaryOp, InstId, InstId),
    Cast(InstId),
    Reduce(ReduceOp, InstId),
    Scan(InstId),
    Where(InstId, InstId, InstId),
}

impl Computed {
    fn of(op: &InstOp) -> Option<Computed> {
        match *op {
            InstOp::Unary(u, a) => Some(Computed::Unary(u, a)),
            InstOp::Binary(b, x, y) => Some(Computed::Binary(b, x, y)),
            InstOp::Cast(a) => Some(Computed::Cast(a)),
            InstOp::Reduce(r, a) => Some(Computed::Reduce(r, a)),
            InstOp::Scan(a) => Some(Computed::Scan(a)),
            InstOp::Where(c, a, b) => Some(Computed::Where(c, a, b)),
            // (aranges are numbered by their index map where they are made; a gather reads
            // through a load of its own)
            InstOp::Load(_) | InstOp::Const(_) | InstOp::Index { .. } | InstOp::Gather { .. } => {
                None
            }
        }
    }
}
