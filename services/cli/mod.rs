//! The `pas` subcommands. Each module owns its `clap::Args` (parsed in `main.rs`) and calls into
//! the layers below; none of them is needed by the services themselves.
//!
//! - [`config_check`]: `pas config check`.
//! - [`up`]: `pas up` / `down` / `restart` on top of [`supervisor`] (child processes, restarts with
//!   [`backoff`], health via [`probe`]) and [`rundir`] (pid, state and log files).
//! - [`status`]: `pas status`.
//! - [`dispatch`]: `pas dispatch`, and [`watch`]: `pas watch`, both following a task through
//!   [`follow`] (re-attach after a broken stream, Ctrl-C) and showing it live by [`dispatch_view`].
//! - [`tasks`]: `pas tasks` (the manager's task records).
//! - [`certs`]: `pas certs init` (development CA and certificates); [`token`]: `pas token new`.

pub mod backoff;
pub mod certs;
pub mod config_check;
pub mod demo;
pub mod dispatch;
pub mod dispatch_view;
pub mod follow;
pub mod probe;
pub mod rollout;
pub mod rundir;
pub mod status;
pub mod supervisor;
pub mod tasks;
pub mod token;
pub mod up;
pub mod watch;

/// A table in the style every `pas` table uses (condensed UTF-8 borders) with `header`: one look
/// for `pas status`, `pas up` and `pas tasks`.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}
