//! The `pas` subcommands.
