//! `pas config check [FILE]`: load and validate a configuration, print a summary or the errors.

use crate::config::{Config, ConfigError};
use std::path::PathBuf;
use std::process::ExitCode;

/// Loads `path`, prints a readable summary on success or every error on failure.
/// Exit code 0 when valid, 1 otherwise.
///
/// The summary goes to stdout; errors go to stderr, one per line as `file:line:col: key: message`,
/// followed by a count, so editors and CI logs can jump to each line.
pub fn run(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(config) => {
            print!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            let count = match &err {
                ConfigError::Read { .. } => 1,
                ConfigError::Invalid(issues) => issues.len(),
            };
            let noun = if count == 1 { "problem" } else { "problems" };
            eprintln!("config check: {count} {noun} in {}", path.display());
            ExitCode::FAILURE
        }
    }
}
