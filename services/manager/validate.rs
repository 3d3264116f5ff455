//! Validation of a `DispatchRequest` before anything is queued or recorded: each violation is
//! INVALID_ARGUMENT naming the field. Path confinement (symlinks, repository checks) is done with
//! the same [`crate::workspace`] rules the programmers apply, so a bad path is refused up-front.

use crate::contract::v1::{DispatchRequest, Strategy};
use crate::workspace::{self, Workspace, WorkspaceCache};
use tonic::Status;

/// Longest capability name.
const MAX_CAPABILITY_LEN: usize = 64;
/// Most capabilities one task may ask for.
const MAX_CAPABILITIES: usize = 16;

/// Checks `req`; resolves the workspace through `workspaces`. Async because opening the
/// workspace runs git; the file-path checks run on the blocking pool.
pub async fn validate(
    req: &DispatchRequest,
    workspaces: &WorkspaceCache,
) -> Result<Workspace, Status> {
    workspace::check_id("task_id", &req.task_id, true)?;
    workspace::check_id("run_id", &req.run_id, true)?;
    workspace::check_description(&req.task_description)?;
    if let Some(problem) = crate::config::region_problem(&req.region) {
        return Err(workspace::invalid("region", &problem));
    }
    if Strategy::try_from(req.strategy).is_err() {
        return Err(workspace::invalid(
            "strategy",
            &format!("unknown value {}", req.strategy),
        ));
    }
    if req.capabilities.len() > MAX_CAPABILITIES {
        return Err(workspace::invalid(
            "capabilities",
            &format!(
                "names {} capabilities; the limit is {MAX_CAPABILITIES}",
                req.capabilities.len()
            ),
        ));
    }
    for (i, cap) in req.capabilities.iter().enumerate() {
        let ok = !cap.is_empty()
            && cap.len() <= MAX_CAPABILITY_LEN
            && cap
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(workspace::invalid(
                &format!("capabilities[{i}]"),
                &format!("{cap:?} must be 1-{MAX_CAPABILITY_LEN} characters of A-Z a-z 0-9 - _ ."),
            ));
        }
    }
    let ws = workspace::open_checked(workspaces, &req.workspace, &req.files).await?;
    if !req.base_ref.is_empty() {
        workspace::check_base_ref(&ws, "base_ref", &req.base_ref).await?;
    }
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tonic::Code;

    /// `<tmp>/root/proj`, a repository with one commit.
    fn root() -> (tempfile::TempDir, std::path::PathBuf) {
        crate::workspace::testing::root_with_repo()
    }

    fn request() -> DispatchRequest {
        DispatchRequest {
            task_description: "Add a usage section".into(),
            files: vec!["README.md".into(), "docs/usage.md".into()],
            workspace: "proj".into(),
            capabilities: vec!["python".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_good_request_resolves_its_workspace() {
        let (_tmp, root) = root();
        let ws = validate(&request(), &WorkspaceCache::new(&root))
            .await
            .expect("valid");
        assert_eq!(ws.name(), "proj");
        assert_eq!(
            ws.path(),
            fs::canonicalize(root.join("proj")).expect("canon")
        );
        // A base_ref naming a commit of the workspace passes.
        for base_ref in ["main", "HEAD", "HEAD~0"] {
            let req = DispatchRequest {
                base_ref: base_ref.into(),
                ..request()
            };
            validate(&req, &WorkspaceCache::new(&root))
                .await
                .expect(base_ref);
        }
    }

    #[tokio::test]
    async fn each_refusal_names_its_field() {
        let (_tmp, root) = root();
        let cases = [
            (
                DispatchRequest {
                    task_id: ".x".into(),
                    ..request()
                },
                "task_id",
            ),
            (
                DispatchRequest {
                    run_id: "a/b".into(),
                    ..request()
                },
                "run_id",
            ),
            (
                DispatchRequest {
                    task_description: "".into(),
                    ..request()
                },
                "task_description",
            ),
            (
                DispatchRequest {
                    strategy: 99,
                    ..request()
                },
                "strategy",
            ),
            (
                DispatchRequest {
                    capabilities: vec!["x".into(); MAX_CAPABILITIES + 1],
                    ..request()
                },
                "capabilities",
            ),
            (
                DispatchRequest {
                    capabilities: vec!["ok".into(), "no spaces".into()],
                    ..request()
                },
                "capabilities[1]",
            ),
            (
                DispatchRequest {
                    region: "eu west".into(),
                    ..request()
                },
                "region",
            ),
            (
                DispatchRequest {
                    base_ref: "-b".into(),
                    ..request()
                },
                "base_ref",
            ),
            (
                DispatchRequest {
                    base_ref: "no-such-branch".into(),
                    ..request()
                },
                "base_ref",
            ),
            (
                DispatchRequest {
                    base_ref: "bad..ref".into(),
                    ..request()
                },
                "base_ref",
            ),
            (
                DispatchRequest {
                    workspace: "missing".into(),
                    ..request()
                },
                "workspace",
            ),
            (
                DispatchRequest {
                    files: vec!["a.md".into(), "b.md".into(), "../../etc/passwd".into()],
                    ..request()
                },
                "files[2]",
            ),
            (
                DispatchRequest {
                    files: vec![
                        "a.md".into(),
                        "b.md".into(),
                        "--openai-api-base=http://elsewhere/v1".into(),
                    ],
                    ..request()
                },
                "files[2]",
            ),
        ];
        for (req, field) in cases {
            let s = validate(&req, &WorkspaceCache::new(&root))
                .await
                .expect_err(field);
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(
                s.message().starts_with(&format!("{field}: ")),
                "{:?} should name {field}",
                s.message()
            );
        }
    }
}
