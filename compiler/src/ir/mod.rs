//! The tensor-graph IR: types, the node arena, layouts of views, and passes over graphs.

pub mod decompose;
pub mod eval;
pub mod graph;
pub mod index_ops;
pub mod layout;
pub mod text;
pub mod types;
pub mod verify;

pub use graph::{
    BinaryOp, CmpOp, Graph, Leaf, Node, NodeId, Op, Origin, Output, ReduceOp, SliceAxis, UnaryOp,
    ViewOp,
};
pub use layout::Layout;
pub use types::{broadcast, reduced_shape, DType, Dim, TensorType};
