//! Validation of a `DispatchRequest` before anything is queued or recorded: each violation is
//! INVALID_ARGUMENT naming the field. Path confinement (symlinks, repository checks) is done with
//! the same [`crate::workspace`] rules the programmers apply, so a bad path is refused up-front.

use crate::contract::v1::{DispatchRequest, Strategy};
use crate::workspace::{self, Workspace};
use std::path::Path;
use tonic::Status;

/// Longest capability name.
const MAX_CAPABILITY_LEN: usize = 64;
/// Most capabilities one task may ask for.
const MAX_CAPABILITIES: usize = 16;

/// Checks `req`; resolves the workspace under `workspace_root`.
pub fn validate(req: &DispatchRequest, workspace_root: &Path) -> Result<Workspace, Status> {
    workspace::check_id("task_id", &req.task_id, true)?;
    workspace::check_id("run_id", &req.run_id, true)?;
    workspace::check_description(&req.task_description)?;
    if Strategy::try_from(req.strategy).is_err() {
        return Err(workspace::invalid("strategy", &format!("unknown value {}", req.strategy)));
    }
    if req.capabilities.len() > MAX_CAPABILITIES {
        return Err(workspace::invalid(
            "capabilities",
            &format!("names {} capabilities; the limit is {MAX_CAPABILITIES}", req.capabilities.len()),
        ));
    }
    for (i, cap) in req.capabilities.iter().enumerate() {
        let ok = !cap.is_empty()
            && cap.len() <= MAX_CAPABILITY_LEN
            && cap.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(workspace::invalid(
                &format!("capabilities[{i}]"),
                &format!("{cap:?} must be 1-{MAX_CAPABILITY_LEN} characters of A-Z a-z 0-9 - _ ."),
            ));
        }
    }
    if !req.base_ref.is_empty() {
        workspace::check_ref("base_ref", &req.base_ref)?;
    }
    workspace::open_checked(workspace_root, &req.workspace, &req.files)
}
