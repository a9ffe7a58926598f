//! Kernel construction: one fused group becomes a `FusedKernel` — its loads (one per
//! distinct buffer, offset and strides), its body of insts (value-numbered: the same op on
//! the same insts is computed once; every f16/bf16 arithmetic result followed by a rounding
//! `Cast`; a fold of a row-constant value written closed-form) and its stores — or a
//! `MatMulKernel`. The `Builder` also makes the buffers the kernels name.

use super::{internal, too_large};
use crate::diag::Diagnostic;
use crate::fuse::{to_domain, Group};
use crate::ir::layout::Layout;
use crate::ir::{BinaryOp, Graph, NodeId, Op, ReduceOp};
use crate::schedule::{
    Buffer, BufferId, BufferKind, FusedKernel, Inst, InstId, InstOp, KernelKind, Level, Load,
    MatMulKernel, MatOperand, PlanOptions, Store,
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

    fn operand(&self, o: NodeId) -> Result<MatOperand, Diagnostic> {
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
        let workspace = if options.matmul_workspace > 0 {
            Some(self.push(Buffer {
                name: format!("k{step}.workspace"),
                kind: BufferKind::Workspace,
                dtype: crate::ir::DType::F32,
                shape: vec![options.matmul_workspace.div_ceil(4)],
                bytes: options.matmul_workspace,
                offset: 0,
                first_step: step,
                last_step: step,
                in_place_of: None,
                node: None,
            }))
        } else {
            None
        };
        Ok(KernelKind::MatMul(MatMulKernel {
            batch: shape[..r - 2].to_vec(),
            m: shape[r - 2],
            n: shape[r - 1],
            k: a_shape[r - 1],
            a: self.operand(a)?,
            b: self.operand(bn)?,
            out,
            out_dtype: self.graph.dtype(n),
            workspace,
        }))
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
            let consumer = if matches!(node.op, Op::Reduce { .. }) {
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
                    InstOp::Unary(..) | InstOp::Binary(..) | InstOp::Reduce(..)
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
            k.stores.push(Store { inst, buffer });
        }
        Ok(k)
    }
}

/// A computing inst's op, hashable (no `Const`: constants are numbered by their bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Computed {
    Unary(crate::ir::UnaryOp, InstId),
    Binary(BinaryOp, InstId, InstId),
    Cast(InstId),
    Reduce(ReduceOp, InstId),
    Where(InstId, InstId, InstId),
}

impl Computed {
    fn of(op: &InstOp) -> Option<Computed> {
        match *op {
            InstOp::Unary(u, a) => Some(Computed::Unary(u, a)),
            InstOp::Binary(b, x, y) => Some(Computed::Binary(b, x, y)),
            InstOp::Cast(a) => Some(Computed::Cast(a)),
            InstOp::Reduce(r, a) => Some(Computed::Reduce(r, a)),
            InstOp::Where(c, a, b) => Some(Computed::Where(c, a, b)),
            InstOp::Load(_) | InstOp::Const(_) => None,
        }
    }
}
