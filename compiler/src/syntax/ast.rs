//! The abstract syntax tree of a `.tx` program, with a byte span on every node.
//!
//! Expressions drop iteratively (see `Drop for Expr`), so a 100 000-term expression does
//! not overflow the stack when its tree is freed.

use crate::diag::Span;
pub use crate::ir::CmpOp;

/// A name as written, with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A whole program: its statements in source order.
#[derive(Debug, Default)]
pub struct Program {
    pub stmts: Vec<Stmt>,
}

#[derive(Debug)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    Input,
    Param,
}

#[derive(Debug)]
pub enum StmtKind {
    /// `dim NAME = SIZE`
    Dim { name: Ident, size: Expr },
    /// `input NAME : TYPE` or `param NAME : TYPE`
    Decl {
        kind: DeclKind,
        name: Ident,
        ty: TypeExpr,
    },
    /// `NAME = EXPR`
    Assign { name: Ident, value: Expr },
    /// `output NAME, NAME…`
    Output { names: Vec<Ident> },
    /// A statement that did not parse (its error is already reported). `binds` is the name
    /// it seems to bind, so later uses of that name do not report a second error.
    Broken { binds: Option<Ident> },
}

/// `DTYPE[SHAPE]` as written.
#[derive(Debug)]
pub struct TypeExpr {
    pub dtype: Ident,
    pub shape: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
    Pow,
    /// `< <= > >= == !=`: looser than `+ -`, and they do not chain.
    Cmp(CmpOp),
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Pow => "**",
            BinOp::Cmp(c) => c.symbol(),
        }
    }
}

#[derive(Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug)]
pub enum ExprKind {
    /// A number literal, as written (`12`, `1e-5`).
    Number(String),
    /// `true` or `false` (keyword arguments only).
    Bool(bool),
    /// A tensor or dim name.
    Name(String),
    /// Unary minus.
    Neg(Box<Expr>),
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `f(a, key=value)`
    Call { func: Ident, args: Vec<Arg> },
    /// `[a, b, …]` (axis lists and shapes).
    List(Vec<Expr>),
    /// Something that did not parse (already reported).
    Error,
}

/// One call argument, positional (`name: None`) or keyword.
#[derive(Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

impl Expr {
    pub fn new(kind: ExprKind, span: Span) -> Expr {
        Expr { kind, span }
    }

    /// True when the number literal is written as an integer (no `.` or exponent).
    pub fn is_int_literal(text: &str) -> bool {
        text.bytes().all(|b| b.is_ascii_digit())
    }
}

impl Drop for Expr {
    fn drop(&mut self) {
        fn take(kind: &mut ExprKind, stack: &mut Vec<Expr>) {
            if !matches!(
                kind,
                ExprKind::Neg(_)
                    | ExprKind::Binary { .. }
                    | ExprKind::Call { .. }
                    | ExprKind::List(_)
            ) {
                return;
            }
            match std::mem::replace(kind, ExprKind::Error) {
                ExprKind::Neg(a) => stack.push(*a),
                ExprKind::Binary { lhs, rhs, .. } => {
                    stack.push(*lhs);
                    stack.push(*rhs);
                }
                ExprKind::Call { args, .. } => stack.extend(args.into_iter().map(|a| a.value)),
                ExprKind::List(items) => stack.extend(items),
                _ => {}
            }
        }
        let mut stack = Vec::new();
        take(&mut self.kind, &mut stack);
        while let Some(mut e) = stack.pop() {
            take(&mut e.kind, &mut stack);
        }
    }
}
