//! Validation of a `DispatchRequest` before anything is queued or recorded: each violation is
//! INVALID_ARGUMENT naming the field. Path confinement (symlinks, repository checks) is done with
//! the same [`crate::workspace`] rules the programmers apply, so a bad path is refused up-front.

use crate::contract::v1::{DispatchRequest, Strategy};
use crate::repo_url::{AllowList, check_repo_url};
use crate::workspace::{self, Workspace, WorkspaceCache};
use tonic::Status;

/// Longest capability name.
const MAX_CAPABILITY_LEN: usize = 64;
/// Most capabilities one task may ask for.
const MAX_CAPABILITIES: usize = 16;

/// Checks `req` ([`check_fields`], then [`check_workspace`]). Exactly one of `workspace` and
/// `repo_url` must be set. Returns the opened local workspace.
pub async fn validate(
    req: &DispatchRequest,
    workspaces: &WorkspaceCache,
    allow: Option<&AllowList>,
) -> Result<Option<Workspace>, Status> {
    check_fields(req, allow)?;
    check_workspace(req, workspaces).await
}

/// The checks that need nothing but the request: no file system, no process. Admission runs
/// them before it takes a place for the task, so a malformed request is told what is wrong even
/// when the pool is full: every field's syntax, the file names lexically, and that a local task
/// names its workspace. A `repo_url`, which the manager cannot open, is checked entirely here:
/// its syntax and against `allow` when the configuration has a `repositories:` section (the
/// programmer is the authority: it checks again and vets the files in the fetched tree).
pub fn check_fields(req: &DispatchRequest, allow: Option<&AllowList>) -> Result<(), Status> {
    workspace::check_id("task_id", &req.task_id, true)?;
    if crate::manager::balancer::is_attempt_task_id(&req.task_id) {
        return Err(workspace::invalid(
            "task_id",
            &format!(
                "{:?} ends in `{}<n>`, which the manager keeps for its re-dispatches",
                req.task_id,
                crate::manager::balancer::ATTEMPT_SUFFIX
            ),
        ));
    }
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
    if !req.repo_url.is_empty() {
        if !req.workspace.is_empty() {
            return Err(workspace::invalid(
                "repo_url",
                "give either workspace or repo_url, not both",
            ));
        }
        check_repo_url("repo_url", &req.repo_url, allow)?;
    } else {
        workspace::check_workspace_named(&req.workspace)?;
    }
    if !req.base_ref.is_empty() {
        workspace::check_ref("base_ref", &req.base_ref)?;
    }
    workspace::check_file_names(&req.files)
}

/// The checks against a local workspace: the repository (opened once however many requests name
/// it together, see [`WorkspaceCache`]), the task files, and `base_ref`. Nothing for a
/// `repo_url` task ([`check_fields`] covered it).
pub async fn check_workspace(
    req: &DispatchRequest,
    workspaces: &WorkspaceCache,
) -> Result<Option<Workspace>, Status> {
    if !req.repo_url.is_empty() {
        return Ok(None);
    }
    let ws = workspace::open_checked(workspaces, &req.workspace, &req.files).await?;
    if !req.base_ref.is_empty() {
        workspaces
            .check_base_ref(&ws, "base_ref", &req.base_ref)
            .await?;
    }
    Ok(Some(ws))
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
        let ws = validate(&request(), &WorkspaceCache::new(&root), None)
            .await
            .expect("valid")
            .expect("a local workspace");
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
            validate(&req, &WorkspaceCache::new(&root), None)
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
                // The id of another task's second attempt, as a programmer knows it.
                DispatchRequest {
                    task_id: "x:attempt-2".into(),
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
            // Caller mistakes the file system reports (not INTERNAL): a reflog entry the
            // workspace lacks, a name too long for the file system, a path below a file.
            (
                DispatchRequest {
                    base_ref: "HEAD@{99}".into(),
                    ..request()
                },
                "base_ref",
            ),
            (
                DispatchRequest {
                    files: vec!["a.md".into(), "x".repeat(300)],
                    ..request()
                },
                "files[1]",
            ),
            (
                DispatchRequest {
                    workspace: "proj/README.md/x".into(),
                    ..request()
                },
                "workspace",
            ),
            (
                DispatchRequest {
                    workspace: "x".repeat(300),
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
            let s = validate(&req, &WorkspaceCache::new(&root), None)
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

    /// What a request alone shows to be wrong is found before admission takes a place for it
    /// (a full pool answers a malformed request with what is wrong, not "retry later").
    #[test]
    fn malformed_local_requests_are_refused_without_the_file_system() {
        let mut no_workspace = request();
        no_workspace.workspace.clear();
        let mut up = request();
        up.files = vec!["../x".into()];
        let mut twice = request();
        twice.files = vec!["a.md".into(), "./a.md".into()];
        let mut option_ref = request();
        option_ref.base_ref = "-b".into();
        let mut nul = request();
        nul.task_description = "a\0b".into();
        let mut huge_id = request();
        huge_id.task_id = "x".repeat(3 << 20);
        let cases = [
            (no_workspace, "workspace"),
            (up, "files[0]"),
            (twice, "files[1]"),
            (option_ref, "base_ref"),
            (nul, "task_description"),
            (huge_id, "task_id"),
        ];
        for (req, field) in cases {
            let s = check_fields(&req, None).expect_err(field);
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().starts_with(&format!("{field}: ")), "{s:?}");
            // What a refusal echoes is bounded (a message travels in a header).
            assert!(
                s.message().len() < 2 * workspace::MAX_ECHOED_BYTES,
                "{field}"
            );
        }
        check_fields(&request(), None).expect("a good request");
    }

    #[tokio::test]
    async fn a_repo_url_is_checked_without_a_local_repository() {
        let (_tmp, root) = root();
        let ws = WorkspaceCache::new(&root);
        let remote = |url: &str| DispatchRequest {
            workspace: String::new(),
            repo_url: url.into(),
            base_ref: "main".into(),
            ..request()
        };
        // Without a `repositories:` section the manager checks syntax only.
        let opened = validate(&remote("git://git.test/a.git"), &ws, None)
            .await
            .expect("valid");
        assert!(opened.is_none());
        let allow = AllowList::new(["git://git.test/*"]);
        validate(&remote("git://git.test/a.git"), &ws, Some(&allow))
            .await
            .expect("allowed");
        let cases = [
            (remote("git://other.test/a.git"), "repo_url"),
            (remote("ext::sh -c id"), "repo_url"),
            (remote("https://x:pw@git.test/a.git"), "repo_url"),
            (
                DispatchRequest {
                    workspace: "proj".into(),
                    ..remote("git://git.test/a.git")
                },
                "repo_url",
            ),
            (
                DispatchRequest {
                    base_ref: "-x".into(),
                    ..remote("git://git.test/a.git")
                },
                "base_ref",
            ),
            (
                DispatchRequest {
                    files: vec!["-rf".into()],
                    ..remote("git://git.test/a.git")
                },
                "files[0]",
            ),
        ];
        for (req, field) in cases {
            let s = validate(&req, &ws, Some(&allow))
                .await
                .expect_err("refused");
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(
                s.message().starts_with(&format!("{field}: ")),
                "{:?} should name {field}",
                s.message()
            );
            assert!(!s.message().contains("pw@"), "{}", s.message());
        }
    }
}
