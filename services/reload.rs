//! Files re-read while a process runs: a server's TLS certificate, key and CA, the manager's
//! client certificate and CA toward its programmers, its caller tokens, and the configuration.
//!
//! Certificates are renewed in place (cert-manager rewrites a Kubernetes Secret's files, `pas
//! certs renew` rewrites a development set) and a leaked token is revoked by deleting its line;
//! neither should need a restart, which drops every connection and makes every caller
//! re-attach. So each such value is a [`watch`] channel that a task keeps current: on SIGHUP, and
//! every [`CHECK_EVERY`], it reads the files, and when their bytes changed builds the value again
//! with the same code that built it at start-up. A value that does not build (a half-written
//! file, a malformed entry) is logged once, naming the file and what is wrong, and the last good
//! value stays in force: a mistake never turns the process's security off or locks every caller
//! out (a tokens file emptied on purpose is the one exception: see
//! `manager::auth::Authenticator::reloading`). The files are read and the value built on the
//! blocking pool. Readers take the current value per connection (TLS) or per request (tokens);
//! what was accepted before stays accepted, but for an open TLS connection whose client
//! certificate the renewed settings no longer trust: that one is closed (`tls::TlsConnection`).
//!
//! The configuration file is watched the same way ([`configuration`]); the manager applies what
//! it can of a new version at once (`manager::reconfigure`), a programmer names the changed keys
//! as waiting for its restart ([`log_unapplied`]).
//!
//! SIGHUP never ends a manager or a programmer ([`take_sighup`]); `pas up` passes it on to its
//! children.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the files are compared with what was last read (SIGHUP compares at once).
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Keeps `initial` — built from `files` at start-up by `build` — current while the process runs
/// (see the module docs): returns the receiver to read it from. `what` names the value in the
/// log ("TLS certificate", "caller tokens"). Must be called inside a tokio runtime; the task
/// stops with it.
pub fn reloaded<T, E>(
    what: &'static str,
    files: Vec<PathBuf>,
    initial: T,
    build: impl Fn() -> Result<T, E> + Send + Sync + 'static,
) -> watch::Receiver<T>
where
    T: Send + Sync + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (current, receiver) = watch::channel(initial);
    // What the files held when `initial` was built (read after it: a change in between is
    // only built once more).
    let mut seen = contents(&files);
    // Registered before this returns (not when the task first runs): from then on SIGHUP
    // reloads instead of ending the process, before it reports itself started.
    let mut hangup = sighup();
    let names = names(&files);
    let (files, build) = (Arc::new(files), Arc::new(build));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = next(&mut hangup) => true,
                () = current.closed() => return,
            };
            // Reading and building off the runtime's threads: the manager serves every caller
            // on one, and a file system can be slow.
            let (files_now, build_now, before) = (files.clone(), build.clone(), seen.clone());
            let checked = tokio::task::spawn_blocking(move || {
                let now = contents(&files_now);
                let built = (now != before).then(|| build_now());
                (now, built)
            })
            .await;
            let Ok((now, built)) = checked else {
                return; // The runtime is shutting down.
            };
            seen = now;
            match built {
                None if asked => tracing::info!(what, "SIGHUP: {what} unchanged"),
                None => {}
                Some(Ok(value)) => {
                    current.send_replace(value);
                    crate::telemetry::metrics::reload(what, true);
                    tracing::info!(what, files = %names, "{what} reloaded");
                }
                Some(Err(e)) => {
                    crate::telemetry::metrics::reload(what, false);
                    tracing::error!(
                        what,
                        files = %names,
                        "{what} not reloaded, the ones read before stay in force: {e}"
                    )
                }
            }
        }
    });
    receiver
}

/// Takes SIGHUP for this process from now on: it never ends a manager or a programmer (`pas up`
/// passes it on to its children), and it is logged once per signal. The reloaders
/// ([`reloaded`], [`configuration`]) get the same signal. Call inside a tokio runtime, before
/// the process reports itself started.
pub fn take_sighup() {
    let Some(mut hangup) = sighup() else {
        return;
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP: the configuration and credential files re-read; what changed is applied"
            );
        }
    });
}

/// The process's configuration file, kept current like the credentials ([`reloaded`], `what` =
/// "configuration"): a version that does not load — or fails `check`, for what the process
/// derives from it — is logged with its file, line and key, and the one in force stays. What a
/// new version changes is for the process to apply (the manager:
/// `manager::reconfigure`; a programmer: [`log_unapplied`]).
pub fn configuration(
    initial: Arc<crate::config::Config>,
    check: impl Fn(&crate::config::Config) -> anyhow::Result<()> + Send + Sync + 'static,
) -> watch::Receiver<Arc<crate::config::Config>> {
    let source = initial.source.clone();
    reloaded(CONFIGURATION, vec![source.clone()], initial, move || {
        let config = crate::config::Config::load(&source)?;
        check(&config)?;
        anyhow::Ok(Arc::new(config))
    })
}

/// What [`configuration`] calls the configuration (log lines and the metrics' `what`).
pub const CONFIGURATION: &str = "configuration";

/// For a process that applies a few settings while it runs (a programmer: `live` keys): each
/// new version of the file from `versions` whose `live` keys changed is handed to `apply` and
/// the keys logged as applied; the settings it reads only at start-up that differ from the ones
/// it started with (`waiting`, given a version) are named in a warning, so an edit nobody
/// restarted for is seen in the log instead of silently ignored, and
/// `pas_config_restart_pending` is 1 while there are any.
pub fn follow(
    mut versions: watch::Receiver<Arc<crate::config::Config>>,
    live: &'static [&'static str],
    waiting: impl Fn(&crate::config::Config) -> Vec<&'static str> + Send + 'static,
    apply: impl Fn(&crate::config::Config) + Send + 'static,
) {
    use crate::config::diff::{changed_keys, under};
    // Live: compared with the version last applied.
    let mut applied = versions.borrow().clone();
    crate::telemetry::metrics::config_restart_pending(false);
    tokio::spawn(async move {
        while versions.changed().await.is_ok() {
            let new = versions.borrow_and_update().clone();
            let now_live: Vec<String> = changed_keys(&applied.pool, &new.pool)
                .into_iter()
                .filter(|k| under(k, live))
                .collect();
            if !now_live.is_empty() {
                apply(&new);
                applied = new.clone();
                tracing::info!(file = %new.source.display(), applied = %now_live.join(", "),
                    "configuration reloaded");
            }
            let later = waiting(&new);
            crate::telemetry::metrics::config_restart_pending(!later.is_empty());
            if !later.is_empty() {
                tracing::warn!(file = %new.source.display(), keys = %later.join(", "),
                    "configuration changed in settings read only at start-up: they apply when the process restarts");
            }
        }
    });
}

/// Each file's bytes (`None`: unreadable now — a change like any other).
fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

fn names(files: &[PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(", ")
}

/// SIGHUP as a stream (`None` where signals cannot be had: then only the timer reloads).
fn sighup() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

async fn next(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value built from one file: its text, refused when it says "bad".
    fn build(path: PathBuf) -> impl Fn() -> Result<String, String> {
        move || {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            match text.trim() {
                "bad" => Err(format!("{}: bad content", path.display())),
                good => Ok(good.to_string()),
            }
        }
    }

    /// Waits for `changed` at most one check period (of tokio's paused clock).
    async fn within_a_check<E: std::fmt::Debug>(changed: impl Future<Output = Result<(), E>>) {
        tokio::time::timeout(CHECK_EVERY + Duration::from_millis(1), changed)
            .await
            .expect("seen within one check")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_file_is_built_again_and_a_bad_one_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "one").unwrap();
        let mut value = reloaded(
            "test value",
            vec![file.clone()],
            "one".to_string(),
            build(file.clone()),
        );
        // Unchanged: nothing is sent however long it runs.
        tokio::time::sleep(CHECK_EVERY * 3).await;
        assert!(!value.has_changed().unwrap());

        std::fs::write(&file, "two").unwrap();
        within_a_check(value.changed()).await;
        assert_eq!(*value.borrow_and_update(), "two");

        // A value that does not build: the last good one stays, and it is not retried while
        // the file stays as it is.
        std::fs::write(&file, "bad").unwrap();
        tokio::time::sleep(CHECK_EVERY * 3).await;
        assert!(!value.has_changed().unwrap());
        assert_eq!(*value.borrow(), "two");

        // A file gone is a change too, and keeps the last good value as well.
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(CHECK_EVERY * 2).await;
        assert_eq!(*value.borrow(), "two");

        // Fixed: built again.
        std::fs::write(&file, "three").unwrap();
        within_a_check(value.changed()).await;
        assert_eq!(*value.borrow_and_update(), "three");
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ends_when_every_reader_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cert");
        std::fs::write(&file, "one").unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let build = build(file.clone());
        // The builder, and the sender it holds, go with the task.
        let value = reloaded("test value", vec![file], String::new(), move || {
            let _held = &tx;
            build()
        });
        drop(value);
        assert!(rx.await.is_err(), "the task ended and dropped its builder");
    }
}
