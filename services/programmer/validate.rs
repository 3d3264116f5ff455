//! Validation of an incoming `TaskRequest`: everything is checked before anything runs, and each
//! violation becomes INVALID_ARGUMENT naming the field, so a caller can fix its request.

use crate::config::JobLimits;
use crate::contract::v1::TaskRequest;
use crate::programmer::worktree::Workspace;
use std::path::Path;
use std::time::Duration;
use tonic::Status;

/// Largest accepted task description (bytes). Aider sends it to the LLM verbatim.
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
/// Most files one task may name.
pub const MAX_FILES: usize = 200;
/// Longest accepted task id / run id.
pub const MAX_ID_LEN: usize = 128;

/// A request that passed validation, with the programmer's limits applied.
#[derive(Debug)]
pub struct ValidatedTask {
    pub task_id: String,
    pub description: String,
    pub files: Vec<String>,
    pub workspace: Workspace,
    pub workspace_name: String,
    pub run_id: String,
    pub dry_run: bool,
    /// Time the task may run once it holds a slot.
    pub deadline: Duration,
    pub base_ref: Option<String>,
    /// Cost cap for the task in US dollars.
    pub max_cost_usd: f64,
    /// Token cap (sent + received) for the task.
    pub max_tokens: u64,
    pub capabilities: Vec<String>,
}

/// Checks `req` against the workspace root and the programmer's limits.
pub fn validate(req: TaskRequest, limits: &JobLimits, workspace_root: &Path) -> Result<ValidatedTask, Status> {
    let task_id = if req.task_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        check_id("task_id", &req.task_id)?;
        req.task_id
    };
    if !req.run_id.is_empty() {
        check_id("run_id", &req.run_id)?;
    }
    if req.task_description.trim().is_empty() {
        return Err(invalid("task_description", "must not be empty"));
    }
    if req.task_description.len() > MAX_DESCRIPTION_BYTES {
        return Err(invalid(
            "task_description",
            &format!("is {} bytes; the limit is {MAX_DESCRIPTION_BYTES}", req.task_description.len()),
        ));
    }
    if req.files.len() > MAX_FILES {
        return Err(invalid("files", &format!("names {} files; the limit is {MAX_FILES}", req.files.len())));
    }
    if req.workspace.is_empty() {
        return Err(invalid("workspace", "must name a git repository under the workspace root"));
    }
    let workspace = Workspace::open(workspace_root, &req.workspace)
        .map_err(|e| invalid("workspace", &format!("{:?}: {e}", req.workspace)))?;
    let mut seen = std::collections::HashSet::new();
    for (i, file) in req.files.iter().enumerate() {
        workspace
            .check_file(file)
            .map_err(|e| invalid(&format!("files[{i}]"), &format!("{file:?}: {e}")))?;
        if !seen.insert(file.as_str()) {
            return Err(invalid(&format!("files[{i}]"), &format!("{file:?} is listed twice")));
        }
    }
    let base_ref = (!req.base_ref.is_empty()).then_some(req.base_ref);
    if let Some(r) = &base_ref {
        if r.starts_with('-') || r.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("base_ref", &format!("{r:?} is not a valid git ref")));
        }
    }
    let max_cost_usd = if req.max_cost_usd == 0.0 {
        limits.max_cost_per_job_usd
    } else if req.max_cost_usd.is_finite() && req.max_cost_usd > 0.0 {
        req.max_cost_usd.min(limits.max_cost_per_job_usd)
    } else {
        return Err(invalid("max_cost_usd", "must be a positive number of US dollars (or 0 for the default)"));
    };
    let requested = if req.timeout_s == 0 { limits.timeout_s } else { u64::from(req.timeout_s) };
    let deadline = Duration::from_secs(requested.min(limits.max_duration_per_job_s));
    Ok(ValidatedTask {
        task_id,
        description: req.task_description,
        files: req.files,
        workspace,
        workspace_name: req.workspace,
        run_id: req.run_id,
        dry_run: req.dry_run,
        deadline,
        base_ref,
        max_cost_usd,
        max_tokens: limits.max_tokens_per_job,
        capabilities: req.capabilities,
    })
}

fn check_id(field: &str, value: &str) -> Result<(), Status> {
    let ok = value.len() <= MAX_ID_LEN
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        && !value.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            &format!("{value:?} must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 - _ . : (not starting with . or -)"),
        ))
    }
}

/// INVALID_ARGUMENT whose message starts with the offending field.
pub fn invalid(field: &str, problem: &str) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}
