//! Validation of an incoming `TaskRequest`: everything is checked before anything runs, and each
//! violation becomes INVALID_ARGUMENT naming the field, so a caller can fix its request.
//!
//! Ids, description, base ref, workspace and file paths are checked with the shared rules of
//! [`crate::workspace`], the same ones the manager applies at Dispatch; what is the programmer's
//! own is applying its limits (cost cap, deadline, token cap).

use crate::config::JobLimits;
use crate::contract::v1::TaskRequest;
use crate::money::Usd;
use crate::programmer::mirror::{Mirrors, Remote};
use crate::repo_url::check_repo_url;
use crate::workspace::{self, Workspace, WorkspaceCache, invalid};
use std::time::Duration;
use tonic::Status;

/// A request that passed validation, with the programmer's limits applied.
#[derive(Debug)]
pub struct ValidatedTask {
    /// The caller's id, or a fresh UUID when it gave none.
    pub task_id: String,
    /// The id shared by every dispatch attempt of the task (`TaskRequest.origin_task_id`, or
    /// `task_id` when empty): names the one branch its result may be kept on.
    pub origin_task_id: String,
    pub description: String,
    /// Task files, relative to the workspace, each vetted against it (for a remote: lexically
    /// now, against the task's worktree once fetched).
    pub files: Vec<String>,
    /// Where the task works: a local workspace or a remote repository.
    pub repo: TaskRepo,
    /// The workspace as the caller named it (for a remote: its URL).
    pub workspace_name: String,
    pub run_id: String,
    pub dry_run: bool,
    /// Time the task may run once it holds a slot.
    pub deadline: Duration,
    pub base_ref: Option<String>,
    /// Cost cap for the task.
    pub max_cost: Usd,
    /// Token cap (sent + received) for the task.
    pub max_tokens: u64,
    pub capabilities: Vec<String>,
    /// The lease its caller asked for (`TaskRequest.lease_s`); `None`: the programmer's own.
    pub lease: Option<Duration>,
}

/// Where a task works.
#[derive(Debug)]
pub enum TaskRepo {
    /// A repository under the workspace root, opened and verified.
    Local(Workspace),
    /// A `repo_url` this programmer allows, with its credentials; fetched when the task starts.
    Remote(Remote),
}

/// Checks `req` against the workspaces (or, for a `repo_url`, the `repositories:` settings in
/// `mirrors`) and the programmer's limits. Exactly one of `workspace` and `repo_url` must be set.
/// Async because opening the workspace runs git; the file-path checks run on the blocking pool.
pub async fn validate(
    req: TaskRequest,
    limits: &JobLimits,
    workspaces: &WorkspaceCache,
    mirrors: Option<&Mirrors>,
) -> Result<ValidatedTask, Status> {
    workspace::check_id("task_id", &req.task_id, true)?;
    workspace::check_id("run_id", &req.run_id, true)?;
    workspace::check_id("origin_task_id", &req.origin_task_id, true)?;
    workspace::check_description(&req.task_description)?;
    let base_ref = (!req.base_ref.is_empty()).then_some(req.base_ref);
    if let Some(r) = &base_ref {
        workspace::check_ref("base_ref", r)?;
    }
    // Validated positive and finite when the configuration was loaded.
    let configured = Usd::from_usd(limits.max_cost_per_job_usd)
        .map_err(|e| Status::internal(format!("max_cost_per_job_usd: {e}")))?;
    // The exact field wins; the double is for callers that predate it.
    let requested = if req.max_cost_nanousd != 0 {
        Some(Usd::from_contract(req.max_cost_nanousd))
    } else if req.max_cost_usd == 0.0 {
        None
    } else {
        let cap = Usd::from_usd(req.max_cost_usd)
            .ok()
            .filter(|_| req.max_cost_usd > 0.0);
        Some(cap.ok_or_else(|| {
            invalid(
                "max_cost_usd",
                "must be a positive number of US dollars (or 0 for the default)",
            )
        })?)
    };
    let max_cost = requested.map_or(configured, |cap| cap.min(configured));
    let requested = if req.timeout_s == 0 {
        limits.timeout_s
    } else {
        u64::from(req.timeout_s)
    };
    // The whole task's deadline (every attempt, failover pauses included). It is not cut to
    // max_duration_per_job_s, which bounds each aider run instead (see `failover`).
    let deadline = Duration::from_secs(requested);
    let (repo, workspace_name) = match (req.workspace.is_empty(), req.repo_url.is_empty()) {
        (false, false) => {
            return Err(invalid(
                "repo_url",
                "give either workspace or repo_url, not both",
            ));
        }
        (true, false) => {
            // The programmer is the authority: without `repositories:` nothing is allowed.
            let empty = crate::repo_url::AllowList::default();
            let allow = mirrors.map_or(&empty, Mirrors::allow);
            let url = check_repo_url("repo_url", &req.repo_url, Some(allow))?;
            let mirrors = mirrors.ok_or_else(|| {
                invalid(
                    "repo_url",
                    &format!("{:?} is not in repositories.allow", url.as_str()),
                )
            })?;
            workspace::check_file_names(&req.files)?;
            // The base ref is resolved after the fetch, when the task starts.
            (TaskRepo::Remote(mirrors.remote(&url)), url.to_string())
        }
        (_, true) => {
            let ws = workspace::open_checked(workspaces, &req.workspace, &req.files).await?;
            if let Some(r) = &base_ref {
                // The task resolves it again when it starts, from the repository as it is then.
                workspaces.check_base_ref(&ws, "base_ref", r).await?;
            }
            (TaskRepo::Local(ws), req.workspace)
        }
    };
    let task_id = if req.task_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        req.task_id
    };
    let origin_task_id = if req.origin_task_id.is_empty() {
        task_id.clone()
    } else {
        req.origin_task_id
    };
    Ok(ValidatedTask {
        task_id,
        origin_task_id,
        description: req.task_description,
        files: req.files,
        repo,
        workspace_name,
        run_id: req.run_id,
        dry_run: req.dry_run,
        deadline,
        base_ref,
        max_cost,
        max_tokens: limits.max_tokens_per_job,
        capabilities: req.capabilities,
        lease: (req.lease_s > 0).then(|| Duration::from_secs(req.lease_s.into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn limits() -> JobLimits {
        JobLimits {
            timeout_s: 300,
            max_tokens_per_job: 50_000,
            max_cost_per_job_usd: 0.5,
            max_duration_per_job_s: 600,
            context_limit: 32_000,
            auto_commit: true,
            max_fix_iterations: 3,
            memory_limit_mb: 2048,
        }
    }

    /// `<tmp>/root/proj`, a repository with one commit.
    fn root() -> (tempfile::TempDir, std::path::PathBuf) {
        crate::workspace::testing::root_with_repo()
    }

    fn request() -> TaskRequest {
        TaskRequest {
            task_description: "Add a usage section".into(),
            files: vec!["README.md".into()],
            workspace: "proj".into(),
            ..Default::default()
        }
    }

    #[track_caller]
    fn assert_field(r: Result<ValidatedTask, Status>, field: &str) {
        let s = r.expect_err("must be refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(
            s.message().starts_with(&format!("{field}: ")),
            "{:?} should name {field}",
            s.message()
        );
    }

    #[tokio::test]
    async fn the_default_deadline_is_not_cut_to_the_per_run_limit() {
        let (_tmp, root) = root();
        // The shipped values: 900 s per task, 600 s per aider run.
        let shipped = JobLimits {
            timeout_s: 900,
            max_duration_per_job_s: 600,
            ..limits()
        };
        let t = validate(request(), &shipped, &WorkspaceCache::new(&root), None)
            .await
            .expect("valid");
        assert_eq!(t.deadline, Duration::from_secs(900));
    }

    #[tokio::test]
    async fn applies_defaults_and_caps() {
        let (_tmp, root) = root();
        let t = validate(request(), &limits(), &WorkspaceCache::new(&root), None)
            .await
            .expect("valid");
        assert!(uuid::Uuid::parse_str(&t.task_id).is_ok(), "{}", t.task_id);
        assert_eq!(t.origin_task_id, t.task_id, "one attempt: its own origin");
        assert_eq!(t.deadline, Duration::from_secs(300));
        assert_eq!(t.max_cost, Usd::from_nanos(500_000_000));
        assert_eq!(t.max_tokens, 50_000);
        assert_eq!(t.base_ref, None);
        assert_eq!(t.workspace_name, "proj");
        assert!(matches!(&t.repo, TaskRepo::Local(ws) if ws.name() == "proj"));

        let req = TaskRequest {
            task_id: "task-7".into(),
            timeout_s: 10_000,
            max_cost_usd: 2.0,
            base_ref: "main".into(),
            ..request()
        };
        let t = validate(req, &limits(), &WorkspaceCache::new(&root), None)
            .await
            .expect("valid");
        assert_eq!(t.task_id, "task-7");
        assert_eq!(t.origin_task_id, "task-7");
        assert_eq!(
            t.deadline,
            Duration::from_secs(10_000),
            "the request's deadline stands: max_duration_per_job_s bounds each aider run"
        );
        assert_eq!(t.max_cost, Usd::from_nanos(500_000_000), "capped");
        assert_eq!(t.base_ref.as_deref(), Some("main"));
        let req = TaskRequest {
            timeout_s: 20,
            max_cost_usd: 0.1,
            ..request()
        };
        let t = validate(req, &limits(), &WorkspaceCache::new(&root), None)
            .await
            .expect("valid");
        assert_eq!(t.deadline, Duration::from_secs(20));
        assert_eq!(t.max_cost, Usd::from_nanos(100_000_000));
        // The exact field wins over the double, and is capped the same way.
        for (nanos, expected) in [(123_456_789, 123_456_789), (u64::MAX, 500_000_000)] {
            let req = TaskRequest {
                max_cost_usd: 0.1,
                max_cost_nanousd: nanos,
                ..request()
            };
            let t = validate(req, &limits(), &WorkspaceCache::new(&root), None)
                .await
                .expect("valid");
            assert_eq!(t.max_cost, Usd::from_nanos(expected));
        }
        // A re-dispatch names the caller's task it belongs to.
        let req = TaskRequest {
            task_id: "task-7:attempt-2".into(),
            origin_task_id: "task-7".into(),
            ..request()
        };
        let t = validate(req, &limits(), &WorkspaceCache::new(&root), None)
            .await
            .expect("valid");
        assert_eq!(
            (t.task_id.as_str(), t.origin_task_id.as_str()),
            ("task-7:attempt-2", "task-7")
        );
    }

    #[tokio::test]
    async fn each_refusal_names_its_field() {
        let (_tmp, root) = root();
        let l = limits();
        let cases = [
            (
                TaskRequest {
                    task_id: "-x".into(),
                    ..request()
                },
                "task_id",
            ),
            (
                TaskRequest {
                    run_id: "a b".into(),
                    ..request()
                },
                "run_id",
            ),
            (
                TaskRequest {
                    origin_task_id: "../x".into(),
                    ..request()
                },
                "origin_task_id",
            ),
            (
                TaskRequest {
                    task_description: " ".into(),
                    ..request()
                },
                "task_description",
            ),
            (
                TaskRequest {
                    base_ref: "--orphan".into(),
                    ..request()
                },
                "base_ref",
            ),
            (
                TaskRequest {
                    base_ref: "no-such-branch".into(),
                    ..request()
                },
                "base_ref",
            ),
            (
                TaskRequest {
                    max_cost_usd: -1.0,
                    ..request()
                },
                "max_cost_usd",
            ),
            (
                TaskRequest {
                    max_cost_usd: f64::NAN,
                    ..request()
                },
                "max_cost_usd",
            ),
            (
                TaskRequest {
                    workspace: "".into(),
                    ..request()
                },
                "workspace",
            ),
            (
                TaskRequest {
                    workspace: "../x".into(),
                    ..request()
                },
                "workspace",
            ),
            (
                TaskRequest {
                    files: vec!["README.md".into(), "/etc/passwd".into()],
                    ..request()
                },
                "files[1]",
            ),
            (
                TaskRequest {
                    files: vec![".aider.conf.yml".into()],
                    ..request()
                },
                "files[0]",
            ),
            (
                TaskRequest {
                    files: vec![
                        "README.md".into(),
                        "b.md".into(),
                        "--test-cmd=touch X".into(),
                    ],
                    ..request()
                },
                "files[2]",
            ),
        ];
        for (req, field) in cases {
            assert_field(
                validate(req, &l, &WorkspaceCache::new(&root), None).await,
                field,
            );
        }
    }

    fn mirrors(dir: &std::path::Path, allow: &[&str]) -> Mirrors {
        Mirrors::new(Some(crate::config::RepoSettings {
            allow: crate::repo_url::AllowList::new(allow),
            mirror_dir: dir.join("mirrors"),
            push: true,
            ssh_key_file: None,
            https_token_env: None,
        }))
        .expect("settings")
    }

    fn remote_request(url: &str) -> TaskRequest {
        TaskRequest {
            workspace: String::new(),
            repo_url: url.into(),
            ..request()
        }
    }

    #[tokio::test]
    async fn a_repo_url_is_allowed_by_the_programmers_list_only() {
        let (tmp, root) = root();
        let ws = WorkspaceCache::new(&root);
        let m = mirrors(tmp.path(), &["git://git.test/*"]);
        let t = validate(
            remote_request("git://git.test/a.git"),
            &limits(),
            &ws,
            Some(&m),
        )
        .await
        .expect("allowed");
        assert!(
            matches!(&t.repo, TaskRepo::Remote(r) if r.url().as_str() == "git://git.test/a.git")
        );
        assert_eq!(t.workspace_name, "git://git.test/a.git");

        let s = validate(
            remote_request("git://other.test/a.git"),
            &limits(),
            &ws,
            Some(&m),
        )
        .await
        .expect_err("not allowed");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "repo_url: \"git://other.test/a.git\" is not in repositories.allow"
        );
        // No `repositories:` section: nothing is allowed.
        assert_field(
            validate(remote_request("git://git.test/a.git"), &limits(), &ws, None).await,
            "repo_url",
        );
        // Both, or credentials in the URL (never echoed).
        let both = TaskRequest {
            workspace: "proj".into(),
            ..remote_request("git://git.test/a.git")
        };
        assert_field(validate(both, &limits(), &ws, Some(&m)).await, "repo_url");
        let s = validate(
            remote_request("https://u:hunter2@git.test/a.git"),
            &limits(),
            &ws,
            Some(&m),
        )
        .await
        .expect_err("credentials");
        assert!(s.message().starts_with("repo_url: "), "{}", s.message());
        assert!(!s.message().contains("hunter2"), "{}", s.message());
        // Neither: the workspace is named as missing.
        let neither = TaskRequest {
            workspace: String::new(),
            ..request()
        };
        assert_field(
            validate(neither, &limits(), &ws, Some(&m)).await,
            "workspace",
        );
        // Files are checked lexically before the repository is fetched.
        let bad_file = TaskRequest {
            files: vec!["ok.md".into(), "../x".into()],
            ..remote_request("git://git.test/a.git")
        };
        assert_field(
            validate(bad_file, &limits(), &ws, Some(&m)).await,
            "files[1]",
        );
    }
}
