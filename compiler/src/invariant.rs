//! The invariants of the compiler's data, numbered once: the list in `docs/architecture.md`
//! ("Invariants") is this enum, item for item (a test keeps them equal). Both verifiers
//! (`ir::verify` for graphs, `plan::verify` for plans) report a broken one as a `Violation`
//! that names it.

use std::fmt;

/// Declares `Invariant`, its list `Invariant::ALL`, its number and its title from one table.
macro_rules! invariants {
    ($( $(#[doc = $doc:literal])* $variant:ident = $n:literal, $title:literal; )*) => {
        /// One invariant of `docs/architecture.md`, by its number there.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Invariant {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Invariant {
            /// Every invariant, in the doc's order.
            pub const ALL: &'static [Invariant] = &[$(Invariant::$variant),*];

            /// Its number in `docs/architecture.md`.
            pub fn number(self) -> u32 {
                match self {
                    $(Invariant::$variant => $n,)*
                }
            }

            /// Its short title, the bold words that start its item in the doc.
            pub fn title(self) -> &'static str {
                match self {
                    $(Invariant::$variant => $title,)*
                }
            }
        }
    };
}

invariants! {
    /// A node's operands precede it; leaves and outputs name existing nodes of their kind.
    OperandsFirst = 1, "Operands come first";
    /// Binary operands (and matmul operands, but for their matrix dims) have the result's
    /// sizes and dtype: broadcasts and promotions are explicit.
    ExplicitBroadcast = 2, "Broadcasts and promotions are explicit";
    /// A reshape view has strides; a `Copy` exists only where it could have none.
    ViewsNeverCopy = 3, "Views never copy";
    /// Inputs and params are never written.
    LeavesReadOnly = 4, "Inputs and params are read-only";
    /// No two arena buffers live at a common step overlap, but an in-place pair.
    NoOverlap = 5, "Live buffers do not overlap";
    /// An in-place store reads exactly the element it writes; the overwritten buffer is dead.
    InPlaceSafe = 6, "In-place writes are safe";
    /// Arena offsets are 16-byte aligned; loads, stores and matmul operands stay in bounds.
    InBounds = 7, "Aligned and in bounds";
    /// `lower bound ≤ planned ≤ eager ≤ naive`.
    PeaksOrdered = 8, "Peaks are ordered";
    /// On CUDA the arena is the only allocation besides inputs and params.
    MeasuredIsPlanned = 9, "Measured is planned";
    /// Fused kernels: insts read earlier insts and existing loads; a `Reduce` folds an
    /// `Element` operand into a `Row` value; f16/bf16 results are rounded where unfused.
    KernelBody = 10, "Kernel bodies are well formed";
    /// Every node's type is the one its op computes from its operands' types.
    TypesFollowOps = 11, "Types follow ops";
    /// Every dim and size is positive, every element count fits in 64 bits, scalars are
    /// rank 0.
    SizesPositive = 12, "Sizes are positive and countable";
    /// An arena buffer is written once, at its first step, read only after it, until its last
    /// step; outputs live to the last step.
    Lifetimes = 13, "Buffers are written before they are read";
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {} ({})", self.number(), self.title())
    }
}

/// A broken invariant: which one, and what broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub message: String,
}

impl Violation {
    pub fn new(invariant: Invariant, message: impl Into<String>) -> Violation {
        Violation {
            invariant,
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.message)
    }
}

impl std::error::Error for Violation {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_one_to_n_in_order() {
        for (i, inv) in Invariant::ALL.iter().enumerate() {
            assert_eq!(inv.number() as usize, i + 1, "{inv}");
        }
    }
}
