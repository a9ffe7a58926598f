//! The `tc` command line: argument parsing, diagnostics rendering and the subcommands.

pub mod diagnostics;
