//! `pas config check [FILE]`: load and validate a configuration, print a summary or the errors.

use std::path::PathBuf;
use std::process::ExitCode;

/// Loads `path`, prints a readable summary on success or every error on failure.
/// Exit code 0 when valid, 1 otherwise.
pub fn run(path: PathBuf) -> ExitCode {
    let _ = path;
    ExitCode::FAILURE
}
