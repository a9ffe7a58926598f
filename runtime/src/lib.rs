//! tc runtime: runs a compiled plan on the CPU or on CUDA (both behind `backend::Backend`),
//! moves data in and out, and holds the `tc` command line.

pub mod backend;
pub mod cli;
pub mod cpu;
pub mod cuda;
pub mod data;
#[cfg(any(test, feature = "test-support"))]
pub mod reference;
pub mod tensor;

pub use tensor::HostTensor;
