//! Configuration: the YAML data model, loading with precise errors, validation, and the LLM catalog.
//!
//! - [`model`]: what the file may contain (serde types; the original sections keep their names).
//! - [`locate`]: key paths and where each key is written (line/column for messages).
//! - `parse`: text → model, syntax and type errors located.
//! - `validate`: semantic checks, all findings collected.
//! - [`catalog`]: built-in providers, endpoints and paid-model prices.
//! - `llm`: model names → [`LlmSpec`].
//! - `spec`: the validated [`Config`] the services run on.
//! - `summary`: the text `pas config check` prints.
//! - [`diff`]: which keys changed between two versions of the file (a re-read configuration).
//!
//! Typical use: `let config = Config::load(path)?;` then `config.programmers()`, `config.llm(name)`.

pub mod catalog;
pub mod diff;
mod error;
mod llm;
pub mod locate;
pub mod model;
mod parse;
mod spec;
mod summary;
mod validate;

pub use catalog::Provider;
pub use error::{ConfigError, ConfigIssue};
pub use llm::{LlmSpec, token_cost};
pub use locate::KeyPath;
pub use model::*;
pub use spec::{
    Config, DEFAULT_HOST, ENV_AIDER_PYTHON, ENV_DATA_DIR, ENV_WORKSPACE_ROOT, JobLimits,
    MAX_REGION_LEN, PathEnv, ProgrammerOverrides, ProgrammerSpec, RepoSettings, SpecError,
    region_problem,
};
