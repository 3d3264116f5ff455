//! Configuration errors that say where: file, line, column, key path, and what is wrong.

use super::locate::KeyPath;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
///
/// Displays as `file:line:col: key.path: message` (line and column left out when unknown, the key
/// path left out for problems of the whole document such as a YAML syntax error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The configuration file as it was named to the loader.
    pub file: PathBuf,
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Where in the document, e.g. `programmers[3].port` (`.` = the document itself).
    pub key: KeyPath,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.key.is_root() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
///
/// Never contains secret values: the configuration names environment variables for API keys, and
/// the loader never reads them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration: every problem found, in file order.
    /// A YAML syntax or type error stops the check at that point (one issue); semantic checks
    /// report all their findings.
    #[error("{}", display_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The individual problems (empty for [`ConfigError::Read`]).
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid(issues) => issues,
        }
    }

    /// The file the error is about.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::Read { path, .. } => Some(path),
            Self::Invalid(issues) => issues.first().map(|i| i.file.as_path()),
        }
    }
}

fn display_issues(issues: &[ConfigIssue]) -> String {
    let lines: Vec<String> = issues.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_reads_file_line_column_key_message() {
        let issue = ConfigIssue {
            file: PathBuf::from("configs/x.yaml"),
            line: Some(42),
            column: Some(11),
            key: KeyPath::root().key("programmers").index(3).key("port"),
            message: "duplicate port 6152 (also used by programmer \"002\")".into(),
        };
        assert_eq!(
            issue.to_string(),
            "configs/x.yaml:42:11: programmers[3].port: duplicate port 6152 (also used by programmer \"002\")"
        );
        let whole = ConfigIssue {
            line: None,
            column: None,
            key: KeyPath::root(),
            ..issue
        };
        assert_eq!(
            whole.to_string(),
            "configs/x.yaml: duplicate port 6152 (also used by programmer \"002\")"
        );
    }

    #[test]
    fn invalid_lists_one_issue_per_line() {
        let issue = |line| ConfigIssue {
            file: PathBuf::from("f.yaml"),
            line: Some(line),
            column: Some(1),
            key: KeyPath::root().key("pool_size"),
            message: "bad".into(),
        };
        let err = ConfigError::Invalid(vec![issue(1), issue(2)]);
        assert_eq!(
            err.to_string(),
            "f.yaml:1:1: pool_size: bad\nf.yaml:2:1: pool_size: bad"
        );
        assert_eq!(err.issues().len(), 2);
    }
}
