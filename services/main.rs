//! The `pas` binary: parse the command line and hand over to [`pas::cli`].

#![forbid(unsafe_code)]

fn main() {}
