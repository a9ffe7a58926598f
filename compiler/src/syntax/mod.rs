//! Syntax: the logos lexer, the chumsky parser and the AST. (Being built: issue 2.)
