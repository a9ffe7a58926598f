//! Front end: every example checks, every error kind has a snapshot of its rendered diagnostic, parsing never panics.
