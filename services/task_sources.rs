//! Where a task's code comes from: the configuration's `workspace_root` (local workspaces) and
//! its `repositories:` section (remote ones), held as one value that a re-read file replaces.
//!
//! The manager checks a task's `workspace` / `repo_url` against them at Dispatch and each
//! programmer again, as the authority, before it accepts the task. Both follow a re-read file the
//! same way ([`CurrentSources::follow`]), so no restart (and no drain of running tasks) is needed
//! to move the root or change the allow list. Each process applies a re-read file on its own (all
//! at once under `pas reload`, each pod as it gets its ConfigMap on Kubernetes): between the two,
//! a programmer still on the old sources refuses a task only the new ones allow, so an operator
//! keeps the old root's repositories until every process applied the change (README). A task
//! takes one snapshot as it is validated and keeps it for its whole life: a task accepted under
//! the old root finishes in the repository it was given.

use crate::config::{Config, RepositoriesConfig};
use crate::programmer::mirror::Mirrors;
use crate::repo_url::AllowList;
use crate::workspace::WorkspaceCache;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// The sources one configuration names.
#[derive(Debug)]
pub struct TaskSources {
    /// Task `workspace` names resolve under the configured root, verified repositories cached.
    pub workspaces: WorkspaceCache,
    /// Bare mirrors of the remote repositories tasks name (`repo_url`) and the `repositories:`
    /// settings; `None` without that section (every `repo_url` is refused).
    pub mirrors: Option<Mirrors>,
    /// What they were made from: a re-read file that changes neither keeps them (and the cache
    /// of verified repositories).
    made_from: (PathBuf, Option<RepositoriesConfig>),
}

impl TaskSources {
    /// The sources `config` names (a new, empty cache of verified repositories).
    pub fn of(config: &Config) -> Self {
        Self {
            workspaces: WorkspaceCache::new(config.workspace_root()),
            mirrors: Mirrors::new(config.repositories()),
            made_from: Self::key(config),
        }
    }

    fn key(config: &Config) -> (PathBuf, Option<RepositoriesConfig>) {
        (config.workspace_root(), config.pool.repositories.clone())
    }

    /// `repositories.allow`, when the file has that section.
    pub fn repo_allow(&self) -> Option<&AllowList> {
        self.mirrors.as_ref().map(Mirrors::allow)
    }
}

/// The sources in force, read once per task.
#[derive(Debug)]
pub struct CurrentSources(RwLock<Arc<TaskSources>>);

impl CurrentSources {
    /// The sources `config` names, in force.
    pub fn of(config: &Config) -> Self {
        Self(RwLock::new(Arc::new(TaskSources::of(config))))
    }

    /// The sources in force now: a task keeps this snapshot for its whole life.
    pub fn get(&self) -> Arc<TaskSources> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts the sources a re-read `config` names in force for the tasks validated from now, when
    /// it moves the workspace root or changes the `repositories:` section; returns whether it did.
    pub fn follow(&self, config: &Config) -> bool {
        if self.get().made_from == TaskSources::key(config) {
            return false;
        }
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(TaskSources::of(config));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::one_programmer_pool as config;

    /// A re-read file that moves the root (or changes `repositories:`) replaces the sources; one
    /// that changes neither keeps them, cache included; a snapshot taken before stays as it was.
    #[test]
    fn sources_follow_a_re_read_file_only_when_it_changes_them() {
        let first = config("workspace_root: /srv/a\n");
        let current = CurrentSources::of(&first);
        let before = current.get();
        assert!(!current.follow(&config(
            "workspace_root: /srv/a\nmanager:\n  max_queue: 3\n"
        )));
        assert!(Arc::ptr_eq(&before, &current.get()));

        assert!(current.follow(&config("workspace_root: /srv/b\n")));
        assert_eq!(
            current.get().workspaces.root(),
            std::path::Path::new("/srv/b")
        );
        assert_eq!(before.workspaces.root(), std::path::Path::new("/srv/a"));
        assert!(current.get().repo_allow().is_none());

        let with_repos = "workspace_root: /srv/b\nrepositories:\n  allow: [\"git://git.test/*\"]\n";
        assert!(current.follow(&config(with_repos)));
        let allow = current.get();
        let allow = allow.repo_allow().expect("the section's allow list");
        assert!(allow.allows(&crate::repo_url::RepoUrl::parse("git://git.test/x.git").unwrap()));
        assert!(!current.follow(&config(with_repos)));
    }
}
