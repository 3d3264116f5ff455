//! The rolling restart `pas up` makes when a re-read configuration file changes settings its
//! programmers read only as they start (`aider.nice`, the warm workers, the queue's bounds, …:
//! [`StartupSettings`]). A running programmer applies the rest of the file itself; these it cannot,
//! so without this the edit would wait, named in a warning, for whoever restarts the programmer.
//!
//! Each programmer whose settings differ is restarted in turn: stopped — it drains: it takes no new
//! task and its running ones finish, or are handed back to the manager at its drain timeout — then
//! started again, reading the file, and the next one waits until it is healthy and the manager `pas
//! up` runs routes to it again (its pool status says so). So the pool never loses more than one
//! programmer to a rollout, and a file that breaks programmers breaks one: a
//! programmer that does not come back healthy stops the rollout (an error naming it and its log),
//! and the ones after it keep their old settings until the next SIGHUP.
//!
//! The manager comes last, once, when a setting it reads at start-up changed (its ports, TLS,
//! durability, …: [`ManagerStartup`]): it restarts as after any stop — its tasks resume, and each
//! caller's stream breaks and re-attaches (`pas dispatch` and `pas watch` do it themselves).
//!
//! What a process runs with is known from the file it last started with: the file at `pas up`'s
//! start, or the re-read one that added, moved or restarted it. (A programmer the supervisor
//! restarted after a crash read the file then; if that was after an edit not yet followed, it is
//! restarted once more for nothing.)

use super::rundir::{ReloadReport, ReloadState};
use super::status::{self, StatusError};
use super::supervisor::Readiness;
use super::supervisor::{ChildSpec, Supervisor};
use super::up::{CRASH_LIMIT, MANAGER_KEY};
use crate::channel::ClientSecurity;
use crate::config::Config;
use crate::contract::v1::ProgrammerState;
use crate::manager::reconfigure::StartupSettings as ManagerStartup;
use crate::programmer::state::StartupSettings;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// One re-read of the configuration file, as `pas up` followed it.
#[derive(Debug)]
pub struct Reread {
    /// Which re-read it is ([`ReloadReport::seq`]).
    pub seq: u64,
    /// The file as it loaded.
    pub config: Arc<Config>,
    /// The children as the file describes them now (the manager's included).
    pub children: Vec<ChildSpec>,
    /// Programmers just started with this file (added to it, or moved to another address).
    pub started: Vec<String>,
}

/// The rollout's task: it follows the re-reads handed to [`Rollout::follow`], in order.
#[derive(Debug)]
pub struct Rollout {
    rereads: mpsc::UnboundedSender<Reread>,
}

impl Rollout {
    /// Follows the processes `sup` runs, every one started with `initial`; a restarted one has
    /// `healthy_within` to report healthy before the rollout stops at it. How each re-read ends
    /// is published on `reports` (for the state file, which `pas reload` reads).
    pub fn start(
        sup: Arc<Supervisor>,
        initial: &Config,
        healthy_within: Duration,
        reports: watch::Sender<Option<ReloadReport>>,
    ) -> (Self, JoinHandle<()>) {
        let started_with = initial
            .programmers()
            .iter()
            .map(|p| (p.id.clone(), StartupSettings::of(initial, p)))
            .collect();
        let manager = ManagerStartup::of(initial);
        let (rereads, next) = mpsc::unbounded_channel();
        let roll = Roll {
            sup,
            reported: Arc::new(initial.clone()),
            started_with,
            manager_started_with: manager,
            healthy_within,
            ask_manager: true,
            reports,
        };
        let task = tokio::spawn(roll.run(next));
        (Self { rereads }, task)
    }

    /// Restarts, one at a time, the programmers whose settings read at start-up `reread`
    /// changes (after any rollout still under way).
    pub fn follow(&self, reread: Reread) {
        // The task ends only with the runtime.
        let _ = self.rereads.send(reread);
    }
}

/// The settings programmer `key` starts with under `config`; `None` when the file lacks it.
fn startup_of(config: &Config, key: &str) -> Option<StartupSettings> {
    config
        .programmer(key)
        .map(|spec| StartupSettings::of(config, spec))
}

/// Programmers started with `reread`'s file run with its settings.
fn note_started(started_with: &mut HashMap<String, StartupSettings>, reread: &Reread) {
    for key in &reread.started {
        if let Some(settings) = startup_of(&reread.config, key) {
            started_with.insert(key.clone(), settings);
        }
    }
}

/// A programmer to restart: its child as the file describes it now, the settings it will start
/// with, and the keys that changed.
struct Due {
    child: ChildSpec,
    settings: StartupSettings,
    keys: Vec<&'static str>,
}

/// The first supervised programmer (in the supervisor's order) whose settings under `reread`
/// differ from what it started with.
fn next_due(
    sup: &Supervisor,
    started_with: &HashMap<String, StartupSettings>,
    reread: &Reread,
) -> Option<Due> {
    sup.specs()
        .into_iter()
        .filter(|running| running.key != MANAGER_KEY)
        .find_map(|running| {
            let settings = startup_of(&reread.config, &running.key)?;
            let keys = started_with.get(&running.key)?.changed(&settings);
            let child = reread
                .children
                .iter()
                .find(|c| c.key == running.key)
                .cloned()
                .unwrap_or(running);
            (!keys.is_empty()).then_some(Due {
                child,
                settings,
                keys,
            })
        })
}

/// Waits until the manager at `addr` reports programmer `id` available (it routes tasks to it):
/// `Ok(false)` when it does not within `within`, `Err` when the manager will not tell (its
/// authentication refuses `pas up`'s credentials). A manager that does not answer is asked again.
async fn manager_takes_back(
    addr: &str,
    security: &ClientSecurity,
    id: &str,
    within: Duration,
) -> Result<bool, tonic::Status> {
    let available = ProgrammerState::Available as i32;
    let ask = async {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            match status::fetch(addr, security).await {
                Ok(pool)
                    if pool
                        .programmers
                        .iter()
                        .any(|p| p.id == id && p.state == available) =>
                {
                    return Ok(());
                }
                Ok(_) => {}
                Err(StatusError::Rpc { status, .. })
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(status);
                }
                Err(_) => {}
            }
        }
    };
    match tokio::time::timeout(within, ask).await {
        Ok(answer) => answer.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// Why process `name`, restarted with the re-read settings, is not back (`None`: it is healthy).
fn not_back(
    name: &str,
    log: &std::path::Path,
    within: Duration,
    readiness: Readiness,
) -> Option<String> {
    let log = log.display();
    match readiness {
        Readiness::Ready => None,
        Readiness::CrashLoop(report) => Some(format!(
            "{name}, restarted with the re-read settings, exited {} times without becoming healthy (last: {}; its log: {log})",
            report.restarts,
            report.last_exit.as_deref().unwrap_or("?")
        )),
        Readiness::TimedOut => Some(format!(
            "{name}, restarted with the re-read settings, was not healthy within {} s (its log: {log})",
            within.as_secs()
        )),
    }
}

/// How many changed keys a report names before it only counts the rest.
const NAMED_KEYS: usize = 8;

/// What a re-read changed, for its report (`pas reload` prints it): the keys, as written in the
/// file, and for `data_dir` that only `pas restart` applies it (nothing does while running).
fn changed_since(old: &Config, new: &Config) -> String {
    let keys = crate::config::diff::changed_keys(&old.pool, &new.pool);
    let named = keys
        .iter()
        .take(NAMED_KEYS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let mut summary = match keys.len() {
        0 => "no setting changed".to_string(),
        n if n <= NAMED_KEYS => format!("changed: {named}"),
        n => format!("changed: {named} and {} more", n - NAMED_KEYS),
    };
    if keys.iter().any(|k| k == "data_dir") {
        summary.push_str(" (data_dir applies only with `pas restart`)");
    }
    summary
}

/// How the restart of one process ended.
enum Restarted {
    /// Healthy again (and, for a programmer, available in the manager's pool).
    Yes,
    /// It was no longer supervised (removed from the file meanwhile): nothing started.
    Gone,
    /// Not back in time, or not started: the rollout stops here (logged); why.
    Failed(String),
}

/// The rollout's state across re-reads: what each process started with.
struct Roll {
    sup: Arc<Supervisor>,
    /// The file the last report covered: the next one names the keys changed since.
    reported: Arc<Config>,
    started_with: HashMap<String, StartupSettings>,
    manager_started_with: ManagerStartup,
    healthy_within: Duration,
    /// Whether the manager's pool status is asked after each programmer's restart (until it
    /// refuses `pas up`'s credentials).
    ask_manager: bool,
    /// Where each re-read's outcome is published.
    reports: watch::Sender<Option<ReloadReport>>,
}

impl Roll {
    /// Follows the re-reads, in order, until `pas up` ends.
    async fn run(mut self, mut rereads: mpsc::UnboundedReceiver<Reread>) {
        while let Some(mut latest) = rereads.recv().await {
            note_started(&mut self.started_with, &latest);
            let mut restarted: Vec<String> = Vec::new();
            let mut stopped = None;
            // The programmers, one at a time, each against the newest file re-read.
            while let Some(next) = next_due(&self.sup, &self.started_with, &latest) {
                let name = next.child.name.clone();
                match self.programmer(next, &latest).await {
                    Restarted::Yes => restarted.push(name),
                    Restarted::Gone => {}
                    Restarted::Failed(why) => {
                        stopped = Some(why);
                        break;
                    }
                }
                while let Ok(newer) = rereads.try_recv() {
                    note_started(&mut self.started_with, &newer);
                    latest = newer;
                }
            }
            if stopped.is_none() {
                match self.manager(&latest).await {
                    Some((name, Restarted::Yes)) => restarted.push(name),
                    Some((_, Restarted::Failed(why))) => stopped = Some(why),
                    Some((_, Restarted::Gone)) | None => {}
                }
            }
            let (state, detail) = match stopped {
                Some(why) => (ReloadState::Stopped, why),
                None if restarted.is_empty() => {
                    tracing::info!(
                        "configuration re-read: no process to restart (no setting it reads only at start-up changed)"
                    );
                    (
                        ReloadState::Done,
                        "applied while running: no process to restart".to_string(),
                    )
                }
                None => {
                    tracing::info!(
                        restarted = restarted.len(),
                        "rolling restart done: every process runs with the settings read at start-up of the re-read file"
                    );
                    (
                        ReloadState::Done,
                        format!(
                            "restarted with the settings read at start-up: {}",
                            restarted.join(", ")
                        ),
                    )
                }
            };
            let detail = format!(
                "{}; {detail}",
                changed_since(&self.reported, &latest.config)
            );
            self.reported = latest.config.clone();
            let seq = latest.seq;
            // A re-read after this one may have reported already (a file that did not load).
            self.reports.send_if_modified(|now| {
                let newer = now.as_ref().is_some_and(|r| r.seq > seq);
                if !newer {
                    *now = Some(ReloadReport { seq, state, detail });
                }
                !newer
            });
        }
    }

    /// Restarts one programmer (it drains first) and waits until it is healthy and, when the
    /// manager runs here, available in its pool.
    async fn programmer(&mut self, next: Due, latest: &Reread) -> Restarted {
        let (key, name, log) = (
            next.child.key.clone(),
            next.child.name.clone(),
            next.child.log.clone(),
        );
        tracing::info!(child = %name, keys = %next.keys.join(", "),
            "settings read at start-up changed: restarting the programmer (it drains first)");
        self.started_with.insert(key.clone(), next.settings);
        match self.sup.replace(next.child).await {
            Ok(true) => {}
            Ok(false) => return Restarted::Gone,
            Err(e) => {
                tracing::error!(child = %name, "cannot start it again: {e}");
                return Restarted::Failed(format!("{name} could not be started again: {e}"));
            }
        }
        let within = self.healthy_within;
        let readiness = self.sup.wait_healthy(&key, within, CRASH_LIMIT).await;
        if let Some(why) = not_back(&name, &log, within, readiness) {
            tracing::error!(child = %name, "{why}: the rolling restart stops here (the programmers after it keep their settings until the next SIGHUP)");
            return Restarted::Failed(format!("{why}; the rollout stopped there"));
        }
        let manager = self.sup.specs().into_iter().find(|s| s.key == MANAGER_KEY);
        if let Some(manager) = manager.filter(|_| self.ask_manager) {
            let security = ClientSecurity::for_config(Some(&latest.config));
            match manager_takes_back(&manager.addr, &security, &key, within).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(child = %name, within_s = within.as_secs(),
                        "the manager does not route to the restarted programmer: the rolling restart stops here (the programmers after it keep their settings until the next SIGHUP)");
                    return Restarted::Failed(format!(
                        "{name} was restarted, but the manager did not report it available within {} s; the rollout stopped there",
                        within.as_secs()
                    ));
                }
                Err(refused) => {
                    tracing::warn!(
                        "the manager does not let `pas up` read its pool status ({}): the rolling restart goes on without waiting for it to route to each restarted programmer (give `pas up` a PAS_TOKEN with the read role)",
                        refused.message()
                    );
                    self.ask_manager = false;
                }
            }
        }
        tracing::info!(child = %name, "programmer restarted with the re-read settings: healthy, and in the manager's pool");
        Restarted::Yes
    }

    /// Restarts the manager when a setting it reads at start-up differs in `latest` (`None`:
    /// none does, or it does not run here); with its name.
    async fn manager(&mut self, latest: &Reread) -> Option<(String, Restarted)> {
        let now = ManagerStartup::of(&latest.config);
        let keys = self.manager_started_with.changed(&now);
        let child = latest.children.iter().find(|c| c.key == MANAGER_KEY)?;
        if keys.is_empty() {
            return None;
        }
        tracing::info!(child = %child.name, keys = %keys.join(", "),
            "settings the manager reads at start-up changed: restarting it (its tasks resume; callers' streams re-attach)");
        self.manager_started_with = now;
        let within = self.healthy_within;
        let restarted = match self.sup.replace(child.clone()).await {
            Ok(true) => {
                let readiness = self
                    .sup
                    .wait_healthy(MANAGER_KEY, within, CRASH_LIMIT)
                    .await;
                match not_back(&child.name, &child.log, within, readiness) {
                    None => {
                        tracing::info!(child = %child.name, "manager restarted with the re-read settings: healthy");
                        Restarted::Yes
                    }
                    Some(why) => {
                        tracing::error!(child = %child.name, "{why}");
                        Restarted::Failed(why)
                    }
                }
            }
            Ok(false) => Restarted::Gone,
            Err(e) => {
                tracing::error!(child = %child.name, "cannot start it again: {e}");
                Restarted::Failed(format!("{} could not be started again: {e}", child.name))
            }
        };
        Some((child.name.clone(), restarted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::one_programmer_pool as config;

    /// A report names the keys a re-read changed, counts those past the first eight, and says
    /// that a new data dir waits for `pas restart`.
    #[test]
    fn a_report_names_what_the_re_read_changed() {
        let base = config("");
        assert_eq!(changed_since(&base, &config("")), "no setting changed");
        assert_eq!(
            changed_since(
                &base,
                &config("aider:\n  nice: 3\nmanager:\n  max_queue: 9\n")
            ),
            "changed: aider.nice, manager.max_queue"
        );
        let many = (1..=10)
            .map(|i| format!("  \"ollama/r{i}\": {{ context_limit: 4096 }}\n"))
            .collect::<String>();
        let summary = changed_since(
            &base,
            &config(&format!("llms:\n{many}data_dir: /srv/pas\n")),
        );
        assert!(
            summary.ends_with(" and 3 more (data_dir applies only with `pas restart`)"),
            "{summary}"
        );
    }
}
