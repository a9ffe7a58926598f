//! The lexer: `.tx` source text to tokens with byte spans (logos).
//!
//! Lexing never fails: an unrecognised character becomes a `Token::Error` and the parser
//! reports it. Newlines are tokens (they end statements); `#` comments and blanks are skipped.

use crate::diag::Span;
use logos::Logos;
use std::fmt;

#[derive(Logos, Clone, Copy, Debug, PartialEq)]
#[logos(skip r"[ \t\r\x0C]+")]
#[logos(skip(r"#[^\n]*", allow_greedy = true))]
pub enum Token<'a> {
    /// A character no token starts with.
    Error,
    #[token("dim")]
    Dim,
    #[token("input")]
    Input,
    #[token("param")]
    Param,
    #[token("output")]
    Output,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*", |lex| lex.slice())]
    Ident(&'a str),
    #[regex(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?", |lex| lex.slice())]
    #[regex(r"\.[0-9]+([eE][+-]?[0-9]+)?", |lex| lex.slice())]
    Number(&'a str),
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("**")]
    StarStar,
    #[token("/")]
    Slash,
    #[token("@")]
    At,
    #[token("=")]
    Eq,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("==")]
    EqEq,
    #[token("!=")]
    Ne,
    #[token(":")]
    Colon,
    #[token(",")]
    Comma,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token(";")]
    Semi,
    #[token("\n")]
    Newline,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Token::Error => "an unknown character",
            Token::Dim => "`dim`",
            Token::Input => "`input`",
            Token::Param => "`param`",
            Token::Output => "`output`",
            Token::True => "`true`",
            Token::False => "`false`",
            Token::Ident(s) => return write!(f, "`{s}`"),
            Token::Number(s) => return write!(f, "`{s}`"),
            Token::Plus => "`+`",
            Token::Minus => "`-`",
            Token::Star => "`*`",
            Token::StarStar => "`**`",
            Token::Slash => "`/`",
            Token::At => "`@`",
            Token::Eq => "`=`",
            Token::Lt => "`<`",
            Token::Le => "`<=`",
            Token::Gt => "`>`",
            Token::Ge => "`>=`",
            Token::EqEq => "`==`",
            Token::Ne => "`!=`",
            Token::Colon => "`:`",
            Token::Comma => "`,`",
            Token::LParen => "`(`",
            Token::RParen => "`)`",
            Token::LBracket => "`[`",
            Token::RBracket => "`]`",
            Token::Semi => "`;`",
            Token::Newline => "end of line",
        };
        f.write_str(s)
    }
}

/// Lexes `source` into tokens with byte spans. Error tokens are merged when adjacent and
/// their spans always lie on character boundaries. A UTF-8 byte order mark at the very
/// start (which some editors write) is skipped; anywhere else it is a stray character.
pub fn lex(source: &str) -> Vec<(Token<'_>, Span)> {
    let skip = if source.starts_with('\u{FEFF}') {
        '\u{FEFF}'.len_utf8()
    } else {
        0
    };
    let mut out: Vec<(Token<'_>, Span)> = Vec::new();
    for (tok, span) in Token::lexer(&source[skip..]).spanned() {
        let span = span.start + skip..span.end + skip;
        let tok = tok.unwrap_or(Token::Error);
        if tok == Token::Error {
            let span = widen_to_chars(source, span);
            if let Some((Token::Error, prev)) = out.last_mut() {
                if prev.end >= span.start {
                    prev.end = prev.end.max(span.end);
                    continue;
                }
            }
            out.push((tok, span));
        } else {
            out.push((tok, span));
        }
    }
    out
}

/// Widens a byte range to the enclosing character boundaries.
fn widen_to_chars(source: &str, span: Span) -> Span {
    let mut start = span.start.min(source.len());
    while start > 0 && !source.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = span.end.clamp(start, source.len());
    while end < source.len() && !source.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Token<'_>> {
        lex(src).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn lexes_statements_and_comments() {
        assert_eq!(
            kinds("dim B = 8 # size\ny = x ** -2.5e+3;"),
            vec![
                Token::Dim,
                Token::Ident("B"),
                Token::Eq,
                Token::Number("8"),
                Token::Newline,
                Token::Ident("y"),
                Token::Eq,
                Token::Ident("x"),
                Token::StarStar,
                Token::Minus,
                Token::Number("2.5e+3"),
                Token::Semi,
            ]
        );
    }

    #[test]
    fn keywords_need_whole_words() {
        assert_eq!(
            kinds("dims input_ int"),
            vec![
                Token::Ident("dims"),
                Token::Ident("input_"),
                Token::Ident("int")
            ]
        );
    }

    #[test]
    fn non_ascii_is_one_error_on_char_boundaries() {
        let src = "x = é€ + 1";
        let toks = lex(src);
        let (t, span) = &toks[2];
        assert_eq!(*t, Token::Error);
        assert_eq!(&src[span.clone()], "é€");
    }
}
