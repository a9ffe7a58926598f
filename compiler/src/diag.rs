//! Diagnostics: the one plain error value every compiler stage produces.
//!
//! A `Diagnostic` knows nothing about printing. Stages build them from their own small
//! error enums; only the command line renders them (with ariadne, counting bytes). Every
//! kind of error is an `ErrorKind`, listed with its code and exit code in
//! `docs/reliability.md` (a test keeps the two equal).

use serde::{Serialize, Serializer};
use std::fmt;

/// A byte range into the source text (logos and chumsky both count bytes).
pub type Span = std::ops::Range<usize>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Declares `ErrorKind` and its list `ErrorKind::ALL` from one table, so no kind can be
/// left out of the list.
macro_rules! error_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident = $code:literal, )*) => {
        /// Every kind of error tc reports about a program or its source file. The code
        /// (`unknown-name`, …) is what users see in `[code]` and search the docs for; it never
        /// changes once released.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorKind {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl ErrorKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant),*];

            /// The stable short name shown as `[code]`.
            pub fn code(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $code,)*
                }
            }
        }
    };
}

error_kinds! {
    /// The source file is not UTF-8 text (reported by the command line, before parsing).
    InvalidUtf8 = "invalid-utf8",
    /// A character that starts no token.
    BadToken = "bad-token",
    /// A statement that does not parse.
    Syntax = "syntax",
    /// Brackets, `**` or unary minus nested deeper than the parser allows.
    TooDeep = "too-deep",
    /// A number literal that is not a finite f64.
    BadNumber = "bad-number",
    /// `a < b < c`: comparisons do not chain.
    ChainedComparison = "chained-comparison",
    /// A name used before it is bound, or never bound.
    UnknownName = "unknown-name",
    /// A name bound a second time.
    DuplicateName = "duplicate-name",
    /// A call of a function that is not a built-in.
    UnknownFunction = "unknown-function",
    /// A type whose dtype is not one of tc's (`f32 f16 bf16 i32 i64 bool`).
    UnknownDtype = "unknown-dtype",
    /// A name listed twice in `output`.
    DuplicateOutput = "duplicate-output",
    /// A program without an `output` statement.
    NoOutput = "no-output",
    /// A `--dim NAME=INT` whose name is no dim of the program.
    UnknownDimOverride = "unknown-dim-override",
    /// A dim that is not a positive integer that fits in 64 bits.
    BadDim = "bad-dim",
    /// A shape entry that is not a positive integer (or a dim).
    BadShape = "bad-shape",
    /// A tensor whose element or byte count does not fit in 64 bits.
    SizeOverflow = "size-overflow",
    /// Something used as a value that is not one (a function, a list, a bool).
    BadExpression = "bad-expression",
    /// Shapes that do not broadcast, or matmul dims that do not match.
    ShapeMismatch = "shape-mismatch",
    /// An operand of the wrong rank (`@` or `transpose` of rank < 2).
    BadRank = "bad-rank",
    /// A wrong number, name or kind of argument to a built-in.
    BadArgument = "bad-argument",
    /// An axis out of range or repeated.
    BadAxis = "bad-axis",
    /// A `reshape`, `permute` or `expand` that cannot produce the shape asked for.
    BadView = "bad-view",
    /// An operand of a dtype the operation does not take (`@` of integers, `logical_and` of
    /// floats, `where` with a float condition, an integer constant too large to be exact).
    BadDtype = "bad-dtype",
    /// An index `x[…]` out of range, a slice that selects nothing, a step below 1, or more
    /// entries than the tensor has axes.
    BadIndex = "bad-index",
    /// A `grad` whose loss is not a rank-0 float tensor, whose variable is not a float
    /// input or param, or whose loss depends on the variable through an op with no
    /// derivative.
    BadGrad = "bad-grad",
    /// `--memory-budget`: no plan tc finds (recomputing forward values in the backward
    /// included) fits the budget.
    OverBudget = "over-budget",
    /// A buffer the planner makes, or the whole arena with the inputs and params, whose byte
    /// count does not fit in 64 bits (the checker sizes every value first, with
    /// `SizeOverflow`, but not their sum).
    TensorTooLarge = "tensor-too-large",
    /// The planner produced, or was about to produce, a plan its verifier rejects: a bug in
    /// tc, not in the program.
    PlannerInternal = "planner-internal",
}

impl ErrorKind {
    /// The kind with this code, if any.
    pub fn from_code(code: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.iter().copied().find(|k| k.code() == code)
    }

    /// Whether the error is a bug in tc rather than in the user's program.
    pub fn is_internal(self) -> bool {
        matches!(self, ErrorKind::PlannerInternal)
    }

    /// The exit code of SPEC §2: 1 for an error in the program, 3 for a compiler failure.
    pub fn exit_code(self) -> u8 {
        if self.is_internal() {
            3
        } else {
            1
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// One labelled span. The first primary label is where the caret goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

/// A message about the user's program: what is wrong, where, and what to try.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// What kind of error this is; its code (`unknown-name`, `shape-mismatch`, …) is what
    /// tests and users searching the docs see.
    #[serde(rename = "code")]
    pub kind: ErrorKind,
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            kind,
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    /// Adds the primary label: the caret goes under `span`.
    pub fn with_primary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: true,
        });
        self
    }

    /// Adds a secondary label pointing at related source.
    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The stable short name of this diagnostic's kind.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The span of the first primary label, if any.
    pub fn primary_span(&self) -> Option<Span> {
        self.labels
            .iter()
            .find(|l| l.primary)
            .map(|l| l.span.clone())
    }
}

/// The diagnostics of one compilation; never empty when returned as an error.
pub type Diagnostics = Vec<Diagnostic>;
