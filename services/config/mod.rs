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

/// A pool of one programmer (`001` on the simulator's Ollama models) with `extra` appended, loaded
/// as `/cfg/pool.yaml` with no environment: what unit tests of a re-read compare.
#[cfg(test)]
pub fn one_programmer_pool(extra: &str) -> Config {
    let yaml = format!(
        "pool_size: 1\nprogrammers:\n  - {{ id: \"001\", port: 16151, primary_llm: \"ollama/qwen2.5-coder:7b-instruct\", backup_llm: \"ollama/qwen2.5-coder:14b-instruct\" }}\n{extra}"
    );
    let env = PathEnv::in_dir("/tmp");
    Config::from_yaml_with(&yaml, std::path::Path::new("/cfg/pool.yaml"), &env)
        .expect("the test pool loads")
}
