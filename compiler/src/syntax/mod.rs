//! Syntax: the logos lexer, the chumsky parser and the AST.
//!
//! `parse` never fails: it returns the statements that parsed and a diagnostic for every
//! lexical and syntax error of the file.

pub mod ast;
pub mod lexer;
pub mod parser;

pub use parser::parse;
