//! The parser: tokens to the AST (chumsky), one statement at a time.
//!
//! Statements are split at line ends and `;` first (line breaks inside `( )` and `[ ]` do
//! not end a statement, and the statement parser never sees them), so an error in one statement never hides those of the next: every
//! error of a file is reported in one run. Within a statement the parser recovers at
//! delimiters. Nesting (brackets, `**`, runs of unary minus) is limited before parsing, so
//! no input can overflow the stack (`too-deep`).

use super::ast::*;
use super::lexer::{lex, Token};
use crate::diag::{Diagnostic, ErrorKind, Span};
use chumsky::error::RichPattern;
use chumsky::input::{Input as _, ValueInput};
use chumsky::prelude::*;

/// The deepest nesting of brackets, `**` and unary minus one statement may have.
pub const MAX_NESTING: usize = 64;

type Tok<'a> = Token<'a>;
type Err<'a> = extra::Err<Rich<'a, Tok<'a>, SimpleSpan>>;

/// Parses `source`. The program holds every statement (those that failed as `Broken`);
/// the diagnostics are every lexical and syntax error found.
pub fn parse(source: &str) -> (Program, Vec<Diagnostic>) {
    let tokens = lex(source);
    let mut diags = Vec::new();
    let mut program = Program::default();
    for stmt in split_statements(&tokens) {
        // Line breaks at the ends of a statement (inside a bracket left open) are not part of
        // it: the statement's span, and the end the parser reports, is its last token's.
        let first = stmt.iter().position(|(t, _)| *t != Token::Newline);
        let last = stmt.iter().rposition(|(t, _)| *t != Token::Newline);
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let stmt = &stmt[first..=last];
        let span = stmt[0].1.start..stmt[stmt.len() - 1].1.end;
        let binds = match (stmt.first(), stmt.get(1)) {
            (Some((Token::Ident(n), s)), Some((Token::Eq, _))) => Some(Ident {
                name: (*n).to_string(),
                span: s.clone(),
            }),
            (Some((Token::Dim | Token::Input | Token::Param, _)), Some((Token::Ident(n), s))) => {
                Some(Ident {
                    name: (*n).to_string(),
                    span: s.clone(),
                })
            }
            _ => None,
        };
        let broken = |binds| Stmt {
            kind: StmtKind::Broken { binds },
            span: span.clone(),
        };
        let bad: Vec<&(Tok, Span)> = stmt.iter().filter(|(t, _)| *t == Token::Error).collect();
        if !bad.is_empty() {
            for (_, s) in bad {
                let text = &source[s.clone()];
                diags.push(
                    Diagnostic::error(
                        ErrorKind::BadToken,
                        format!("unexpected character `{}`", text.escape_debug()),
                    )
                    .with_primary(s.clone(), "not part of the language")
                    .with_help(
                        "names are ASCII letters, digits and `_`; operators are `+ - * / ** @`",
                    ),
                );
            }
            program.stmts.push(broken(binds));
            continue;
        }
        if let Some(d) = nesting_error(stmt) {
            diags.push(d);
            program.stmts.push(broken(binds));
            continue;
        }
        let eoi = SimpleSpan::from(span.end..span.end);
        // Every line break left in a statement is inside brackets, where SPEC §1 ignores it.
        let toks: Vec<(Tok, SimpleSpan)> = stmt
            .iter()
            .filter(|(t, _)| *t != Token::Newline)
            .map(|(t, s)| (*t, SimpleSpan::from(s.clone())))
            .collect();
        let input = toks.as_slice().map(eoi, |(t, s)| (t, s));
        let (out, errs) = stmt_parser().parse(input).into_output_errors();
        let ok = errs.is_empty();
        let unclosed = unclosed_bracket(stmt);
        diags.extend(errs.into_iter().map(|e| {
            let d = syntax_diag(&e);
            match (&unclosed, e.found()) {
                (Some(open), None) => d
                    .with_secondary(open.clone(), "this bracket is never closed")
                    .with_help("close the bracket; a statement ends at the end of its line"),
                _ => d,
            }
        }));
        match out {
            Some(kind) if ok => program.stmts.push(Stmt { kind, span }),
            _ => program.stmts.push(broken(binds)),
        }
    }
    (program, diags)
}

/// Splits the token stream into statements at `;` and at line ends outside brackets. A
/// line break inside a bracket that never closes still ends the statement when the next
/// line starts a statement (see `starts_statement`).
fn split_statements<'t, 'a>(tokens: &'t [(Tok<'a>, Span)]) -> Vec<&'t [(Tok<'a>, Span)]> {
    let mut out = Vec::new();
    // The brackets open at this point, innermost last (`true` for `(`, `false` for `[`).
    let mut open: Vec<bool> = Vec::new();
    let mut start = 0;
    for (i, (t, _)) in tokens.iter().enumerate() {
        let ends = match t {
            Token::Semi => true,
            Token::Newline => open.is_empty() || starts_statement(tokens, i, &open),
            Token::LParen | Token::LBracket => {
                open.push(*t == Token::LParen);
                false
            }
            Token::RParen | Token::RBracket => {
                open.pop();
                false
            }
            _ => false,
        };
        if ends {
            out.push(without_newlines(&tokens[start..i]));
            start = i + 1;
            open.clear();
        }
    }
    out.push(without_newlines(&tokens[start..]));
    out.into_iter().flatten().collect()
}

/// A statement's tokens, or `None` for an empty statement. Line breaks inside brackets stay
/// in the slice; `parse` drops them before the statement parser sees the tokens.
fn without_newlines<'t, 'a>(tokens: &'t [(Tok<'a>, Span)]) -> Option<&'t [(Tok<'a>, Span)]> {
    if tokens.iter().all(|(t, _)| *t == Token::Newline) {
        None
    } else {
        Some(tokens)
    }
}

/// Whether the line after the newline at `i` (inside brackets `depth` deep) starts a new
/// statement. SPEC: line breaks inside brackets are ignored, so this is only ever true for
/// a bracket that is never closed (a broken program must not swallow the rest of the file):
/// the next line begins with a statement keyword (which no expression can continue with),
/// or with `NAME =` in the first column while the brackets do not close before the next
/// keyword line or the end of the file (`axis=-1)` on its own line is a continuation).
fn starts_statement(tokens: &[(Tok, Span)], i: usize, open: &[bool]) -> bool {
    match (tokens.get(i + 1), tokens.get(i + 2)) {
        (Some((Token::Dim | Token::Input | Token::Param | Token::Output, _)), _) => true,
        (Some((Token::Ident(_), s)), Some((Token::Eq, _))) if s.start == tokens[i].1.end => {
            !brackets_close(tokens, i + 1, open)
        }
        _ => false,
    }
}

/// Whether the brackets `open` (innermost last; `true` for `(`) all close, each by its own
/// kind, from token `from` on, before a `;`, a line that starts with a statement keyword, a
/// mismatched closer, or the end of the file.
fn brackets_close(tokens: &[(Tok, Span)], from: usize, open: &[bool]) -> bool {
    let mut open = open.to_vec();
    for (k, (t, _)) in tokens.iter().enumerate().skip(from) {
        match t {
            Token::LParen | Token::LBracket => open.push(*t == Token::LParen),
            Token::RParen | Token::RBracket => {
                if open.pop() != Some(*t == Token::RParen) {
                    return false;
                }
                if open.is_empty() {
                    return true;
                }
            }
            Token::Semi => return false,
            Token::Newline => {
                if let Some((Token::Dim | Token::Input | Token::Param | Token::Output, _)) =
                    tokens.get(k + 1)
                {
                    return false;
                }
            }
            _ => {}
        }
    }
    false
}

/// The span of the innermost bracket the statement leaves open, if any.
fn unclosed_bracket(stmt: &[(Tok, Span)]) -> Option<Span> {
    let mut open: Vec<&Span> = Vec::new();
    for (t, s) in stmt {
        match t {
            Token::LParen | Token::LBracket => open.push(s),
            Token::RParen | Token::RBracket => {
                open.pop();
            }
            _ => {}
        }
    }
    open.last().map(|s| (*s).clone())
}

/// A `too-deep` diagnostic when the statement nests deeper than `MAX_NESTING`.
fn nesting_error(stmt: &[(Tok, Span)]) -> Option<Diagnostic> {
    let mut brackets = 0usize;
    let mut pows = 0usize;
    let mut negs = 0usize;
    let mut prev: Option<&Tok> = None;
    for (t, s) in stmt {
        match t {
            Token::LParen | Token::LBracket => brackets += 1,
            Token::RParen | Token::RBracket => brackets = brackets.saturating_sub(1),
            Token::StarStar => pows += 1,
            Token::Newline => continue,
            _ => {}
        }
        let unary_minus = *t == Token::Minus
            && !matches!(
                prev,
                Some(
                    Token::Ident(_)
                        | Token::Number(_)
                        | Token::RParen
                        | Token::RBracket
                        | Token::True
                        | Token::False
                )
            );
        negs = if unary_minus { negs + 1 } else { 0 };
        if brackets + pows + negs > MAX_NESTING {
            return Some(
                Diagnostic::error(ErrorKind::TooDeep, "nesting too deep")
                    .with_primary(
                        s.clone(),
                        format!("more than {MAX_NESTING} levels of nesting here"),
                    )
                    .with_note("brackets, `**` and unary minus each add a level")
                    .with_help("split the expression into several statements"),
            );
        }
        prev = Some(t);
    }
    None
}

fn syntax_diag(e: &Rich<'_, Tok<'_>, SimpleSpan>) -> Diagnostic {
    if let chumsky::error::RichReason::Custom(msg) = e.reason() {
        if let Some(rest) = msg.strip_prefix(CHAINED) {
            return Diagnostic::error(
                ErrorKind::ChainedComparison,
                format!("comparisons do not chain: {rest}"),
            )
            .with_primary(e.span().into_range(), "a second comparison")
            .with_help("compare two at a time and combine: `logical_and(a < b, b < c)`");
        }
    }
    let found = match e.found() {
        Some(t) => t.to_string(),
        None => "end of statement".to_string(),
    };
    let mut expected: Vec<String> = e
        .expected()
        .filter_map(|p| match p {
            RichPattern::Token(t) if **t == Token::Newline => None,
            RichPattern::Token(t) => Some((**t).to_string()),
            RichPattern::Label(l) => Some(l.to_string()),
            RichPattern::Identifier(i) => Some(format!("`{i}`")),
            RichPattern::Any => Some("more input".to_string()),
            RichPattern::SomethingElse => None,
            RichPattern::EndOfInput => Some("end of statement".to_string()),
        })
        .collect();
    expected.sort();
    expected.dedup();
    let label = if expected.is_empty() {
        "unexpected here".to_string()
    } else {
        format!("expected {}", expected.join(", "))
    };
    let span = e.span().into_range();
    let mut d = Diagnostic::error(ErrorKind::Syntax, format!("unexpected {found}"))
        .with_primary(span, label);
    if let Some((ctx, cspan)) = e.contexts().next() {
        d = d.with_secondary(cspan.into_range(), format!("in this {ctx}"));
    }
    d
}

/// The parser of one statement (a token slice without its terminator).
fn stmt_parser<'a, I>() -> impl Parser<'a, I, StmtKind, Err<'a>>
where
    I: ValueInput<'a, Token = Tok<'a>, Span = SimpleSpan>,
{
    let ident = select! { Token::Ident(n) => n }
        .map_with(|n: &str, e| Ident {
            name: n.to_string(),
            span: span_of(e.span()),
        })
        .labelled("a name");
    let expr = expr_parser().boxed();

    let dim = just(Token::Dim)
        .ignore_then(ident)
        .then_ignore(just(Token::Eq))
        .then(expr.clone())
        .map(|(name, size)| StmtKind::Dim { name, size });

    let shape = expr
        .clone()
        .separated_by(just(Token::Comma))
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(just(Token::LBracket), just(Token::RBracket));
    let ty = ident
        .then(shape)
        .map_with(|(dtype, shape), e| TypeExpr {
            dtype,
            shape,
            span: span_of(e.span()),
        })
        .labelled("a type such as `f32[B, D]`");
    let decl_kind = just(Token::Input)
        .to(DeclKind::Input)
        .or(just(Token::Param).to(DeclKind::Param));
    let decl = decl_kind
        .then(ident)
        .then_ignore(just(Token::Colon))
        .then(ty)
        .map(|((kind, name), ty)| StmtKind::Decl { kind, name, ty });

    let output = just(Token::Output)
        .ignore_then(
            ident
                .separated_by(just(Token::Comma))
                .at_least(1)
                .collect::<Vec<_>>(),
        )
        .map(|names| StmtKind::Output { names });

    let assign = ident
        .then_ignore(just(Token::Eq))
        .then(expr)
        .map(|(name, value)| StmtKind::Assign { name, value });

    choice((dim, decl, output, assign)).then_ignore(end())
}

fn span_of(s: SimpleSpan) -> Span {
    s.into_range()
}

/// Expressions, loosest first: comparisons (`< <= > >= == !=`, not chaining) < `+ -` <
/// `* / @` < unary `-` < `**` (right) < atoms.
fn expr_parser<'a, I>() -> impl Parser<'a, I, Expr, Err<'a>> + Clone
where
    I: ValueInput<'a, Token = Tok<'a>, Span = SimpleSpan>,
{
    recursive(|expr| {
        let inner = expr.clone();
        let ident = select! { Token::Ident(n) => n }.map_with(|n: &str, e| Ident {
            name: n.to_string(),
            span: span_of(e.span()),
        });

        let number = select! { Token::Number(n) => n }
            .map_with(|n: &str, e| Expr::new(ExprKind::Number(n.to_string()), span_of(e.span())));
        let boolean = select! { Token::True => true, Token::False => false }
            .map_with(|b, e| Expr::new(ExprKind::Bool(b), span_of(e.span())));

        let arg = ident
            .then_ignore(just(Token::Eq))
            .or_not()
            .then(inner.clone())
            .map_with(|(name, value), e| Arg {
                name,
                value,
                span: span_of(e.span()),
            });
        let args = arg
            .separated_by(just(Token::Comma))
            .allow_trailing()
            .collect::<Vec<_>>()
            .delimited_by(just(Token::LParen), just(Token::RParen));
        let name_or_call = ident.then(args.or_not()).map_with(|(func, args), e| {
            let span = span_of(e.span());
            match args {
                Some(args) => Expr::new(ExprKind::Call { func, args }, span),
                None => Expr::new(ExprKind::Name(func.name), span),
            }
        });

        let list = inner
            .clone()
            .separated_by(just(Token::Comma))
            .allow_trailing()
            .collect::<Vec<_>>()
            .delimited_by(just(Token::LBracket), just(Token::RBracket))
            .map_with(|items, e| Expr::new(ExprKind::List(items), span_of(e.span())));

        let parens = inner
            .clone()
            .delimited_by(just(Token::LParen), just(Token::RParen))
            .map_with(|mut x: Expr, e| {
                // The parenthesised expression's span includes the parentheses.
                x.span = span_of(e.span());
                x
            });

        let atom = choice((number, boolean, name_or_call, parens, list))
            .labelled("an expression")
            .recover_with(via_parser(nested_delimiters(
                Token::LParen,
                Token::RParen,
                [(Token::LBracket, Token::RBracket)],
                |s: SimpleSpan| Expr::new(ExprKind::Error, span_of(s)),
            )))
            .recover_with(via_parser(nested_delimiters(
                Token::LBracket,
                Token::RBracket,
                [(Token::LParen, Token::RParen)],
                |s: SimpleSpan| Expr::new(ExprKind::Error, span_of(s)),
            )))
            .boxed();

        // unary := '-'* power ; power := atom ('**' unary)?
        let unary = recursive(|unary| {
            let power = atom
                .clone()
                .then(just(Token::StarStar).ignore_then(unary).or_not())
                .map_with(|(base, exp): (Expr, Option<Expr>), e| match exp {
                    Some(exp) => Expr::new(
                        ExprKind::Binary {
                            op: BinOp::Pow,
                            lhs: Box::new(base),
                            rhs: Box::new(exp),
                        },
                        span_of(e.span()),
                    ),
                    None => base,
                });
            just(Token::Minus)
                .map_with(|_, e| span_of(e.span()).start)
                .repeated()
                .foldr(power, |start: usize, x: Expr| {
                    let span = start..x.span.end;
                    Expr::new(ExprKind::Neg(Box::new(x)), span)
                })
        })
        .boxed();

        let product_op = choice((
            just(Token::Star).to(BinOp::Mul),
            just(Token::Slash).to(BinOp::Div),
            just(Token::At).to(BinOp::MatMul),
        ));
        let product = unary
            .clone()
            .foldl(product_op.then(unary).repeated(), fold_binary)
            .boxed();
        let sum_op = choice((
            just(Token::Plus).to(BinOp::Add),
            just(Token::Minus).to(BinOp::Sub),
        ));
        let sum = product
            .clone()
            .foldl(sum_op.then(product).repeated(), fold_binary)
            .boxed();
        let cmp_op = choice((
            just(Token::Lt).to(CmpOp::Lt),
            just(Token::Le).to(CmpOp::Le),
            just(Token::Gt).to(CmpOp::Gt),
            just(Token::Ge).to(CmpOp::Ge),
            just(Token::EqEq).to(CmpOp::Eq),
            just(Token::Ne).to(CmpOp::Ne),
        ))
        .map_with(|op, e| (op, span_of(e.span())));
        // `a < b < c` is an error (Python would chain it, C would compare a bool): the
        // second operator is reported, and the comparisons fold left so checking goes on.
        sum.clone()
            .then(cmp_op.then(sum).repeated().collect::<Vec<_>>())
            .validate(|(first, rest): (Expr, Vec<CmpTail>), _, emitter| {
                if let Some(((op, span), _)) = rest.get(1) {
                    emitter.emit(Rich::custom(
                        SimpleSpan::from(span.clone()),
                        format!("{CHAINED}`{}` after another comparison", op.symbol()),
                    ));
                }
                rest.into_iter().fold(first, |lhs, ((op, _), rhs)| {
                    fold_binary(lhs, (BinOp::Cmp(op), rhs))
                })
            })
    })
}

/// One `< rhs` of a comparison: the operator, its span, and the right operand.
type CmpTail = ((CmpOp, Span), Expr);

/// The start of the message of a chained comparison (a custom parser error).
const CHAINED: &str = "comparisons do not chain: ";

fn fold_binary(lhs: Expr, (op, rhs): (BinOp, Expr)) -> Expr {
    let span = lhs.span.start..rhs.span.end;
    Expr::new(
        ExprKind::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
        span,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders an expression as a fully parenthesised string.
    fn show(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Number(n) => n.clone(),
            ExprKind::Bool(b) => b.to_string(),
            ExprKind::Name(n) => n.clone(),
            ExprKind::Neg(a) => format!("(-{})", show(a)),
            ExprKind::Binary { op, lhs, rhs } => {
                format!("({} {} {})", show(lhs), op.symbol(), show(rhs))
            }
            ExprKind::Call { func, args } => {
                let a: Vec<String> = args
                    .iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{}={}", n.name, show(&a.value)),
                        None => show(&a.value),
                    })
                    .collect();
                format!("{}({})", func.name, a.join(", "))
            }
            ExprKind::List(items) => {
                format!(
                    "[{}]",
                    items.iter().map(show).collect::<Vec<_>>().join(", ")
                )
            }
            ExprKind::Error => "<error>".into(),
        }
    }

    fn parse_expr(src: &str) -> String {
        let (p, d) = parse(src);
        assert!(d.is_empty(), "{d:?}");
        match &p.stmts[0].kind {
            StmtKind::Assign { value, .. } => show(value),
            other => panic!("not an assignment: {other:?}"),
        }
    }

    #[test]
    fn precedence() {
        assert_eq!(parse_expr("y = -x**2"), "(-(x ** 2))");
        assert_eq!(parse_expr("y = a ** b ** c"), "(a ** (b ** c))");
        assert_eq!(parse_expr("y = x ** -1"), "(x ** (-1))");
        assert_eq!(
            parse_expr("y = a + b * c @ d - e"),
            "((a + ((b * c) @ d)) - e)"
        );
        assert_eq!(parse_expr("y = -a * b"), "((-a) * b)");
        assert_eq!(parse_expr("y = (a + b) / 2"), "((a + b) / 2)");
    }

    #[test]
    fn calls_keywords_and_lists_across_lines() {
        assert_eq!(
            parse_expr("y = sum(x,\n  axis=[0, -1],\n  keepdim=true\n)"),
            "sum(x, axis=[0, (-1)], keepdim=true)"
        );
    }

    #[test]
    fn spans_cover_parentheses() {
        let src = "y = (a + b) * c";
        let (p, _) = parse(src);
        let StmtKind::Assign { value, .. } = &p.stmts[0].kind else {
            panic!("assign")
        };
        let ExprKind::Binary { lhs, .. } = &value.kind else {
            panic!("binary")
        };
        assert_eq!(&src[lhs.span.clone()], "(a + b)");
    }

    #[test]
    fn every_broken_line_is_reported() {
        let (p, d) = parse("x = (1 +\ny = 2 +* 3\nz = ]\noutput x");
        assert_eq!(p.stmts.len(), 4);
        assert!(d.len() >= 2, "{d:?}");
    }

    #[test]
    fn deep_nesting_is_a_diagnostic() {
        let src = format!("y = {}x{}", "(".repeat(100_000), ")".repeat(100_000));
        let (_, d) = parse(&src);
        assert_eq!(d[0].kind, ErrorKind::TooDeep);
    }

    #[test]
    fn long_sums_parse() {
        let src = format!("y = x{}", " + x".repeat(100_000));
        let (p, d) = parse(&src);
        assert!(d.is_empty());
        assert_eq!(p.stmts.len(), 1);
    }
}
