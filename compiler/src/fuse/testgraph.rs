//! A tiny test-only graph builder that keeps the checked graph's invariants (explicit
//! broadcasts and promotions), for unit tests of decomposition, fusion and planning.

use crate::ir::{
    BinaryOp, DType, Dim, Graph, Leaf, Node, NodeId, Op, Origin, Output, ReduceOp, TensorType,
    UnaryOp, ViewOp,
};

pub(crate) struct G {
    pub g: Graph,
    line: u32,
}

impl G {
    pub fn new() -> G {
        G {
            g: Graph::new(),
            line: 1,
        }
    }

    /// Following ops are attributed to source line `line`.
    pub fn line(&mut self, line: u32) {
        self.line = line;
    }

    pub fn op(&mut self, op: Op, dtype: DType, shape: &[u64]) -> NodeId {
        let ty = TensorType::new(dtype, shape.iter().map(|&s| Dim::new(s)).collect());
        let id = NodeId(self.g.len() as u32);
        let origin = Origin {
            span: 0..0,
            line: self.line,
            group: Some(id),
            backward_of: None,
            grad_of: None,
        };
        self.g.push(Node { op, ty, name: None }, origin)
    }

    pub fn name(&mut self, id: NodeId, name: &str) {
        self.g.node_mut(id).name = Some(name.to_string());
    }

    pub fn input(&mut self, name: &str, dtype: DType, shape: &[u64]) -> NodeId {
        let index = self.g.inputs.len();
        let id = self.op(Op::Input { index }, dtype, shape);
        self.name(id, name);
        let ty = self.g.ty(id).clone();
        self.g.inputs.push(Leaf {
            name: name.to_string(),
            node: id,
            ty,
        });
        id
    }

    pub fn param(&mut self, name: &str, dtype: DType, shape: &[u64]) -> NodeId {
        let index = self.g.params.len();
        let id = self.op(Op::Param { index }, dtype, shape);
        self.name(id, name);
        let ty = self.g.ty(id).clone();
        self.g.params.push(Leaf {
            name: name.to_string(),
            node: id,
            ty,
        });
        id
    }

    pub fn output(&mut self, name: &str, node: NodeId) {
        self.g.outputs.push(Output {
            name: name.to_string(),
            node,
            span: 0..0,
        });
    }

    pub fn sizes(&self, id: NodeId) -> Vec<u64> {
        self.g.ty(id).sizes()
    }

    pub fn scalar(&mut self, v: f64, dtype: DType) -> NodeId {
        self.op(Op::Scalar(v), dtype, &[])
    }

    pub fn view(&mut self, v: ViewOp, a: NodeId, shape: &[u64]) -> NodeId {
        let dt = self.g.dtype(a);
        self.op(Op::View(v, a), dt, shape)
    }

    fn to(&mut self, a: NodeId, shape: &[u64]) -> NodeId {
        if self.sizes(a) == shape {
            a
        } else {
            self.view(ViewOp::Expand { implicit: true }, a, shape)
        }
    }

    pub fn bin(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
        let shape =
            crate::ir::broadcast(&self.sizes(a), &self.sizes(b)).expect("test graphs broadcast");
        let dt = self.g.dtype(a);
        let a = self.to(a, &shape);
        let b = self.to(b, &shape);
        self.op(Op::Binary(op, a, b), dt, &shape)
    }

    /// `a op literal`.
    pub fn bin_s(&mut self, op: BinaryOp, a: NodeId, v: f64) -> NodeId {
        let s = self.scalar(v, self.g.dtype(a));
        self.bin(op, a, s)
    }

    pub fn un(&mut self, op: UnaryOp, a: NodeId) -> NodeId {
        let dt = self.g.dtype(a);
        let shape = self.sizes(a);
        self.op(Op::Unary(op, a), dt, &shape)
    }

    pub fn reduce(&mut self, op: ReduceOp, a: NodeId, axes: &[usize], keepdim: bool) -> NodeId {
        let mut shape = Vec::new();
        for (i, &s) in self.sizes(a).iter().enumerate() {
            if !axes.contains(&i) {
                shape.push(s);
            } else if keepdim {
                shape.push(1);
            }
        }
        let dt = self.g.dtype(a);
        self.op(
            Op::Reduce {
                op,
                arg: a,
                axes: axes.to_vec(),
                keepdim,
            },
            dt,
            &shape,
        )
    }

    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        let (sa, sb) = (self.sizes(a), self.sizes(b));
        let mut shape = sa[..sa.len() - 1].to_vec();
        shape.push(sb[sb.len() - 1]);
        let dt = self.g.dtype(a);
        self.op(Op::MatMul(a, b), dt, &shape)
    }

    pub fn transpose(&mut self, a: NodeId) -> NodeId {
        let mut shape = self.sizes(a);
        let n = shape.len();
        shape.swap(n - 1, n - 2);
        self.view(ViewOp::Transpose, a, &shape)
    }

    pub fn cast(&mut self, a: NodeId, dtype: DType, implicit: bool) -> NodeId {
        let shape = self.sizes(a);
        self.op(Op::Cast { arg: a, implicit }, dtype, &shape)
    }
}
