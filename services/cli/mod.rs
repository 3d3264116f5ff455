//! The `pas` subcommands. Each module owns its `clap::Args` (parsed in `main.rs`) and calls into
//! the layers below; none of them is needed by the services themselves.
//!
//! - [`config_check`]: `pas config check`.
//! - [`up`]: `pas up` / `down` / `restart` on top of [`supervisor`] (child processes, restarts with
//!   [`backoff`], health via [`probe`]) and [`rundir`] (pid, state and log files).
//! - [`status`]: `pas status`.
//! - [`dispatch`]: `pas dispatch`, shown live by [`dispatch_view`].
//! - [`certs`]: `pas certs init` (development CA and certificates); [`token`]: `pas token new`.

pub mod backoff;
pub mod certs;
pub mod config_check;
pub mod demo;
pub mod dispatch;
pub mod dispatch_view;
pub mod probe;
pub mod rundir;
pub mod status;
pub mod supervisor;
pub mod token;
pub mod up;
