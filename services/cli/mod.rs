//! The `pas` subcommands: each parses nothing itself (see `main.rs`) and calls into the layers below.

pub mod config_check;
