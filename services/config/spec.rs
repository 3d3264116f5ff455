//! The validated, resolved configuration the services run on: [`Config`].
//!
//! Loading = read → parse (types, unknown keys) → validate (all semantic findings) → resolve
//! (defaults merged into each programmer, LLM names into [`LlmSpec`]s, capabilities into sets,
//! paths made absolute). A [`Config`] exists only if every step passed, so its accessors never fail.

use super::error::{ConfigError, ConfigIssue};
use super::llm::{self, LlmSpec};
use super::locate::{KeyPath, Segment, SourceMap};
use super::model::{AiderStart, PoolConfig};
use super::parse;
use super::validate::{self, Finding, Point};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// Host programmers listen on when the file gives none.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// Environment variables that redirect the three paths, winning over the file (see [`PathEnv`]).
pub const ENV_WORKSPACE_ROOT: &str = "PAS_WORKSPACE_ROOT";
/// See [`ENV_WORKSPACE_ROOT`].
pub const ENV_DATA_DIR: &str = "PAS_DATA_DIR";
/// See [`ENV_WORKSPACE_ROOT`].
pub const ENV_AIDER_PYTHON: &str = "PAS_AIDER_PYTHON";

// ---------------------------------------------------------------------------------------------
// Resolved types
// ---------------------------------------------------------------------------------------------

/// A programmer's job limits: `defaults:` merged with the programmer's own overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLimits {
    /// Default task deadline in seconds when the request gives none.
    pub timeout_s: u64,
    /// Token cap over all attempts of one task.
    pub max_tokens_per_job: u64,
    /// Cost cap of one task; also what the manager reserves from the daily budget before a paid dispatch.
    pub max_cost_per_job_usd: f64,
    /// Hard cap on any task deadline, in seconds.
    pub max_duration_per_job_s: u64,
    /// Context window in tokens.
    pub context_limit: u64,
    /// Whether the edit is committed on the task's branch.
    pub auto_commit: bool,
    /// Aider's reflection limit.
    pub max_fix_iterations: u32,
    /// Memory ceiling of one aider process, MiB.
    pub memory_limit_mb: u64,
}

/// One programmer, ready to run: LLMs resolved, limits merged, capabilities expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgrammerSpec {
    /// Unique id, e.g. "001".
    pub id: String,
    /// Agent name shown in health output and logs, "Prog-<id>".
    pub agent: String,
    /// Host it listens on and the manager connects to.
    pub host: String,
    pub port: u16,
    pub primary: LlmSpec,
    pub backup: LlmSpec,
    /// The `capabilities:` tags as written (for status output, in file order).
    pub tags: Vec<String>,
    /// Everything this programmer can serve: its tags plus every `capability_routing` group that
    /// lists its id. A task asking for capability `c` may only run where `c` is in this set.
    pub capabilities: BTreeSet<String>,
    pub limits: JobLimits,
    /// The primary or the backup costs money, so dispatches are charged to the daily budget.
    pub paid: bool,
    /// Where it runs (empty: no region). Tasks that ask for a region prefer its programmers.
    pub region: String,
    /// How its attempts start aider: its own `aider_start`, else `aider.start`.
    pub aider_start: AiderStart,
}

/// Longest region name (a DNS label's length: regions often name zones).
pub const MAX_REGION_LEN: usize = 63;

/// Why `region` is not a usable region name (`None`: it is; empty means "no region"). Regions
/// appear in logs, metrics and status tables: letters, digits, `-`, `_` and `.`, at most
/// [`MAX_REGION_LEN`] characters.
pub fn region_problem(region: &str) -> Option<String> {
    let ok = region.len() <= MAX_REGION_LEN
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (!ok).then(|| {
        format!("{region:?} must be at most {MAX_REGION_LEN} characters of A-Z a-z 0-9 - _ .")
    })
}

/// What `pas programmer` flags say about a programmer, for an id the file does not list (or to
/// override a listed one's fields): a programmer found by DNS describes itself this way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgrammerOverrides {
    pub primary_llm: Option<String>,
    pub backup_llm: Option<String>,
    /// Capability tags (replace the listed ones when given).
    pub capabilities: Option<Vec<String>>,
    pub region: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub aider_start: Option<AiderStart>,
}

/// Why [`Config::programmer_with`] could not build a programmer from the file and the flags.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The id is not listed and the flags do not name both LLMs.
    #[error(
        "no programmer with id {id:?} in {file}: give --primary-llm and --backup-llm (and optionally --capabilities, --region) to run it from flags"
    )]
    Unlisted { id: String, file: String },
    /// A flag's value is not usable.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

impl ProgrammerSpec {
    /// `host:port` for connecting (IPv6 hosts in brackets).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether this programmer can serve capability `c`.
    pub fn has_capability(&self, capability: &str) -> bool {
        self.capabilities.contains(capability)
    }
}

/// Where unset paths come from: three environment variables and the working directory.
///
/// Precedence for workspace root, data dir and aider python: the environment variable
/// ([`ENV_WORKSPACE_ROOT`], [`ENV_DATA_DIR`], [`ENV_AIDER_PYTHON`]) when set and non-empty, so tests
/// and operators can redirect a shipped file without editing it; else the file's key (relative to
/// the file's directory); else `./workspaces`, `./data`, `.aider-venv/bin/python` in `cwd`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathEnv {
    /// Directory relative paths from the environment and the built-in defaults are resolved in.
    pub cwd: PathBuf,
    /// Value of `PAS_WORKSPACE_ROOT`.
    pub workspace_root: Option<PathBuf>,
    /// Value of `PAS_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// Value of `PAS_AIDER_PYTHON`.
    pub aider_python: Option<PathBuf>,
}

impl PathEnv {
    /// The process's working directory and environment.
    pub fn from_process() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            workspace_root: var(ENV_WORKSPACE_ROOT),
            data_dir: var(ENV_DATA_DIR),
            aider_python: var(ENV_AIDER_PYTHON),
        }
    }

    /// No variables set, working directory `cwd` (tests).
    pub fn in_dir(cwd: impl Into<PathBuf>) -> Self {
        Self {
            cwd: cwd.into(),
            ..Self::default()
        }
    }
}

/// The `repositories:` section, resolved ([`Config::repositories`]).
#[derive(Debug, Clone)]
pub struct RepoSettings {
    /// Which `repo_url`s may be fetched.
    pub allow: crate::repo_url::AllowList,
    /// Where the bare mirrors live (absolute).
    pub mirror_dir: PathBuf,
    /// Push successful results to the remote.
    pub push: bool,
    /// SSH key for ssh URLs (absolute).
    pub ssh_key_file: Option<PathBuf>,
    /// Environment variable with an https token.
    pub https_token_env: Option<String>,
}

/// A loaded and validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file's sections as written (defaults filled in); for settings without an accessor.
    pub pool: PoolConfig,
    /// The file this came from, as named to the loader (used in messages).
    pub source: PathBuf,
    programmers: Vec<ProgrammerSpec>,
    llms: BTreeMap<String, LlmSpec>,
    workspace_root: PathBuf,
    data_dir: PathBuf,
    aider_python: PathBuf,
    config_dir: PathBuf,
}

impl Config {
    /// Reads and validates `path`, resolving paths against the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&yaml, path)
    }

    /// Validates `yaml`; `source` names it in messages and anchors relative paths in it.
    pub fn from_yaml(yaml: &str, source: &Path) -> Result<Config, ConfigError> {
        Self::from_yaml_with(yaml, source, &PathEnv::from_process())
    }

    /// [`Config::from_yaml`] with an explicit environment for path resolution.
    pub fn from_yaml_with(yaml: &str, source: &Path, env: &PathEnv) -> Result<Config, ConfigError> {
        let map = SourceMap::build(yaml);
        let pool =
            parse::parse(yaml, source, &map).map_err(|issue| ConfigError::Invalid(vec![issue]))?;
        let mut findings = validate::check(&pool);
        let llms = resolve_llms(&pool, &mut findings);
        if !findings.is_empty() {
            return Err(ConfigError::Invalid(locate(findings, source, &map)));
        }
        let programmers = resolve_programmers(&pool, &llms);
        let config_dir = absolute(&env.cwd, source.parent().unwrap_or(Path::new("")));
        let pick = |from_env: &Option<PathBuf>, in_file: &Option<PathBuf>, default: &str| match (
            from_env, in_file,
        ) {
            (Some(p), _) => absolute(&env.cwd, p),
            (None, Some(p)) => absolute(&config_dir, p),
            (None, None) => absolute(&env.cwd, Path::new(default)),
        };
        Ok(Config {
            workspace_root: pick(&env.workspace_root, &pool.workspace_root, "workspaces"),
            data_dir: pick(&env.data_dir, &pool.data_dir, "data"),
            aider_python: pick(
                &env.aider_python,
                &pool.aider.python,
                ".aider-venv/bin/python",
            ),
            source: source.to_path_buf(),
            pool,
            programmers,
            llms,
            config_dir,
        })
    }

    /// The programmers, in configuration order.
    pub fn programmers(&self) -> &[ProgrammerSpec] {
        &self.programmers
    }

    /// The programmer with this id.
    pub fn programmer(&self, id: &str) -> Option<&ProgrammerSpec> {
        self.programmers.iter().find(|p| p.id == id)
    }

    /// Programmer `id` as `pas programmer` runs it: its entry in the file (if any) with the
    /// flags' values winning; an unlisted id takes its LLMs, capabilities and region from the
    /// flags and its limits from `defaults:` (a pod started as `--id $(POD_NAME)`).
    pub fn programmer_with(
        &self,
        id: &str,
        flags: &ProgrammerOverrides,
    ) -> Result<ProgrammerSpec, SpecError> {
        let flag = |flag: &'static str, message: String| SpecError::Flag { flag, message };
        if let Some(problem) = id_problem(id) {
            return Err(flag("--id", problem));
        }
        let model = |flag_name: &'static str, name: &str| {
            self.resolve_llm(name, flag_name)
                .map_err(|message| flag(flag_name, format!("model {name:?}: {message}")))
        };
        let primary = flags
            .primary_llm
            .as_deref()
            .map(|n| model("--primary-llm", n))
            .transpose()?;
        let backup = flags
            .backup_llm
            .as_deref()
            .map(|n| model("--backup-llm", n))
            .transpose()?;
        let mut spec = match (self.programmer(id), primary, backup) {
            (Some(listed), primary, backup) => {
                let mut spec = listed.clone();
                spec.primary = primary.unwrap_or(spec.primary);
                spec.backup = backup.unwrap_or(spec.backup);
                spec
            }
            (None, Some(primary), Some(backup)) => ProgrammerSpec {
                id: id.to_string(),
                agent: format!("Prog-{id}"),
                host: DEFAULT_HOST.to_string(),
                port: 0,
                primary,
                backup,
                tags: Vec::new(),
                capabilities: BTreeSet::new(),
                limits: default_limits(&self.pool),
                paid: false,
                region: String::new(),
                aider_start: self.pool.aider.start,
            },
            (None, _, _) => {
                return Err(SpecError::Unlisted {
                    id: id.to_string(),
                    file: self.source.display().to_string(),
                });
            }
        };
        spec.paid = !spec.primary.free || !spec.backup.free;
        if let Some(tags) = &flags.capabilities {
            let tags: Vec<String> = tags
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            spec.capabilities = tags.iter().cloned().collect();
            for (capability, members) in &self.pool.capability_routing {
                if members.iter().any(|m| m == id) {
                    spec.capabilities.insert(capability.clone());
                }
            }
            spec.tags = tags;
        }
        if let Some(region) = &flags.region {
            if let Some(problem) = region_problem(region) {
                return Err(flag("--region", problem));
            }
            spec.region = region.clone();
        }
        if let Some(host) = &flags.host {
            spec.host = host.clone();
        }
        if let Some(start) = flags.aider_start {
            spec.aider_start = start;
        }
        if let Some(port) = flags.port {
            spec.port = port;
        }
        Ok(spec)
    }

    /// The `defaults:` limits: those of a programmer the file does not list.
    pub fn default_limits(&self) -> JobLimits {
        default_limits(&self.pool)
    }

    /// Model `name` from this file's catalog, or resolved like a name the file uses (built-in
    /// catalog, provider prefix); the error says why not. `used_at` names where it came from.
    fn resolve_llm(&self, name: &str, used_at: &str) -> Result<LlmSpec, String> {
        if let Some(known) = self.llms.get(name) {
            return Ok(known.clone());
        }
        llm::resolve(&self.pool, name, &KeyPath::root().key(used_at)).map_err(|f| f.message)
    }

    /// What this manager can know of model `name` that a programmer reported: the catalog's
    /// entry when it resolves here, else [`LlmSpec::named`] with the programmer's `free` figure.
    pub fn describe_llm(&self, name: &str, free: bool) -> LlmSpec {
        self.resolve_llm(name, "llm")
            .unwrap_or_else(|_| LlmSpec::named(name, free))
    }

    /// A model by name: every model a programmer names, and every `llms:` entry, is here.
    pub fn llm(&self, name: &str) -> Option<&LlmSpec> {
        self.llms.get(name)
    }

    /// Every model in the catalog, by name.
    pub fn llms(&self) -> impl Iterator<Item = &LlmSpec> {
        self.llms.values()
    }

    /// Directory task `workspace` names resolve under (absolute).
    pub fn workspace_root(&self) -> PathBuf {
        self.workspace_root.clone()
    }

    /// Directory for the budget ledger, task records, pid and log files (absolute).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// The Python interpreter that runs aider (absolute).
    pub fn aider_python(&self) -> PathBuf {
        self.aider_python.clone()
    }

    /// The directory of the config file (absolute): relative paths in the file start here.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The TLS files of process `name` (`manager`, `programmer-<id>`, `client`) from the `tls:`
    /// section, `{name}` substituted and paths made absolute; `None` without the section.
    pub fn tls_files(&self, name: &str) -> Option<crate::tls::TlsFiles> {
        let tls = self.pool.tls.as_ref()?;
        let resolve = |p: &Path| {
            let text = p.to_string_lossy().replace("{name}", name);
            absolute(&self.config_dir, Path::new(&text))
        };
        Some(crate::tls::TlsFiles {
            ca: resolve(&tls.ca),
            cert: resolve(&tls.cert),
            key: resolve(&tls.key),
        })
    }

    /// The `repositories:` section with paths resolved (mirror_dir default `<data_dir>/mirrors`);
    /// `None` without the section (then no `repo_url` is accepted by a programmer).
    pub fn repositories(&self) -> Option<RepoSettings> {
        let repos = self.pool.repositories.as_ref()?;
        Some(RepoSettings {
            allow: crate::repo_url::AllowList::new(&repos.allow),
            mirror_dir: repos.mirror_dir.as_ref().map_or_else(
                || self.data_dir.join("mirrors"),
                |p| absolute(&self.config_dir, p),
            ),
            push: repos.push,
            ssh_key_file: repos
                .ssh_key_file
                .as_ref()
                .map(|p| absolute(&self.config_dir, p)),
            https_token_env: repos.https_token_env.clone(),
        })
    }

    /// Programmers that have `capability` (see [`ProgrammerSpec::capabilities`]), in config order.
    pub fn capability_holders(&self, capability: &str) -> Vec<&ProgrammerSpec> {
        self.programmers
            .iter()
            .filter(|p| p.has_capability(capability))
            .collect()
    }

    /// Every capability some programmer has, sorted.
    pub fn capabilities(&self) -> BTreeSet<&str> {
        self.programmers
            .iter()
            .flat_map(|p| p.capabilities.iter().map(String::as_str))
            .collect()
    }

    /// A human-readable summary (what `pas config check` prints).
    pub fn summary(&self) -> String {
        super::summary::render(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------------

/// Resolves every model programmers name (reported where first used) and every `llms:` entry.
fn resolve_llms(pool: &PoolConfig, findings: &mut Vec<Finding>) -> BTreeMap<String, LlmSpec> {
    let mut llms = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let list = KeyPath::root().key("programmers");
    let uses = pool.programmers.iter().enumerate().flat_map(|(i, p)| {
        [
            (p.primary_llm.as_str(), list.index(i).key("primary_llm")),
            (p.backup_llm.as_str(), list.index(i).key("backup_llm")),
        ]
    });
    let entries = pool.llms.keys().map(|name| {
        (
            name.as_str(),
            KeyPath::root().key("llms").key(name.as_str()),
        )
    });
    for (name, at) in uses.chain(entries) {
        if name.trim().is_empty() || !seen.insert(name.to_string()) {
            continue; // empty names are reported by validation; each model is resolved once
        }
        match llm::resolve(pool, name, &at) {
            Ok(spec) => {
                llms.insert(name.to_string(), spec);
            }
            Err(mut finding) => {
                if finding.key == at && at.segments().first() == Some(&Segment::Key("llms".into()))
                {
                    finding.point = Point::Key; // an `llms:` entry: point at its name
                }
                findings.push(finding);
            }
        }
    }
    llms
}

/// Why `id` cannot name a programmer (it names branches, directories and metric labels).
fn id_problem(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (!ok).then(|| {
        format!(
            "{id:?} must be 1-63 characters of letters, digits, '-' and '_' (it names branches)"
        )
    })
}

/// The `defaults:` limits, for a programmer with no overrides of its own.
fn default_limits(pool: &PoolConfig) -> JobLimits {
    let d = &pool.defaults;
    JobLimits {
        timeout_s: d.timeout_s,
        max_tokens_per_job: d.max_tokens_per_job,
        max_cost_per_job_usd: d.max_cost_per_job_usd,
        max_duration_per_job_s: d.max_duration_per_job_s,
        context_limit: d.context_limit,
        auto_commit: d.auto_commit,
        max_fix_iterations: d.max_fix_iterations,
        memory_limit_mb: pool.aider.memory_limit_mb,
    }
}

/// Builds the programmer specs. Only called after validation and LLM resolution succeeded.
fn resolve_programmers(pool: &PoolConfig, llms: &BTreeMap<String, LlmSpec>) -> Vec<ProgrammerSpec> {
    let d = &pool.defaults;
    pool.programmers
        .iter()
        .filter_map(|p| {
            let mut primary = llms.get(&p.primary_llm)?.clone();
            let mut backup = llms.get(&p.backup_llm)?.clone();
            // A programmer's own context_limit is the window its models run with here (e.g. an
            // Ollama host's num_ctx): it replaces the catalog's figure in aider's model metadata.
            if let Some(context_limit) = p.context_limit {
                primary.context_limit = context_limit;
                backup.context_limit = context_limit;
            }
            let mut capabilities: BTreeSet<String> = p.capabilities.iter().cloned().collect();
            for (capability, members) in &pool.capability_routing {
                if members.contains(&p.id) {
                    capabilities.insert(capability.clone());
                }
            }
            Some(ProgrammerSpec {
                id: p.id.clone(),
                agent: format!("Prog-{}", p.id),
                host: p.host.clone().unwrap_or_else(|| DEFAULT_HOST.to_string()),
                port: p.port,
                paid: !primary.free || !backup.free,
                primary,
                backup,
                tags: p.capabilities.clone(),
                capabilities,
                limits: JobLimits {
                    timeout_s: p.timeout_s.unwrap_or(d.timeout_s),
                    max_tokens_per_job: p.max_tokens_per_job.unwrap_or(d.max_tokens_per_job),
                    max_cost_per_job_usd: p.max_cost_per_job_usd.unwrap_or(d.max_cost_per_job_usd),
                    max_duration_per_job_s: p
                        .max_duration_per_job_s
                        .unwrap_or(d.max_duration_per_job_s),
                    context_limit: p.context_limit.unwrap_or(d.context_limit),
                    auto_commit: p.auto_commit.unwrap_or(d.auto_commit),
                    max_fix_iterations: p.max_fix_iterations.unwrap_or(d.max_fix_iterations),
                    memory_limit_mb: p.memory_limit_mb.unwrap_or(pool.aider.memory_limit_mb),
                },
                region: p.region.clone().unwrap_or_default(),
                aider_start: p.aider_start.unwrap_or(pool.aider.start),
            })
        })
        .collect()
}

/// Turns findings into issues with line and column, in file order (unlocated ones last).
fn locate(findings: Vec<Finding>, source: &Path, map: &SourceMap) -> Vec<ConfigIssue> {
    let mut issues: Vec<ConfigIssue> = findings
        .into_iter()
        .map(|f| {
            let position = match f.point {
                Point::Key => map.key_position(&f.key),
                Point::Value => map.value_position(&f.key),
            };
            ConfigIssue {
                file: source.to_path_buf(),
                line: position.map(|p| p.line),
                column: position.map(|p| p.column),
                key: f.key,
                message: f.message,
            }
        })
        .collect();
    issues.sort_by_key(|i| (i.line.is_none(), i.line, i.column));
    issues
}

/// `path` made absolute against `base` and cleaned lexically: `.` dropped, `dir/..` folded.
///
/// Lexical, not `canonicalize`: the directories need not exist yet. A `..` after a symlinked
/// directory therefore folds to the link's parent, not the target's (as in a shell's `cd`).
fn absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut clean: Vec<Component> = Vec::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if matches!(clean.last(), Some(Component::Normal(_))) => {
                clean.pop();
            }
            Component::ParentDir if matches!(clean.last(), Some(Component::RootDir)) => {}
            other => clean.push(other),
        }
    }
    clean.iter().collect()
}
