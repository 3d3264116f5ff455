//! Every integration test of the project, in one test binary: each `tests/<name>.rs` file is a
//! module of it, with the shared helpers (`common`, and the telemetry and interop support) compiled
//! once. As 56 binaries, each compiled the helpers again and was linked on its own; the project's
//! own crates took 293 s of a 555 s clean build here, 98 s now (BENCHMARKS.md, "Test suite time").
//!
//! Run one file's tests with its module name as the filter, e.g.
//! `cargo test --test integration manager_budget::`, or one test with `--exact` and its full name
//! (`manager_budget::two_hundred_concurrent_paid_tasks_never_overspend_and_alert_once`).
//!
//! Tests of different files run side by side (`--test-threads`), as tests of one file always did:
//! every test takes its ports from `common::pool::free_port`, its directories from `tempfile`, and
//! shares no process or file with another test.

mod common;
#[path = "interop/support.rs"]
mod interop_support;
#[path = "telemetry/support.rs"]
mod telemetry_support;

mod aider_real;
mod chaos;
mod cli_dispatch;
mod cli_follow;
mod cli_pool;
mod cli_status;
mod cli_up;
mod config_check_cli;
mod config_discovery;
mod config_errors;
mod config_keys;
mod config_load;
mod config_reload;
mod credential_reload;
mod dashboard_chromium;
mod deploy_manifests;
mod discovery_dns;
mod discovery_scale;
mod durability_power_loss;
mod http_api;
mod interop_grpcurl;
mod interop_node;
mod interop_python;
mod llm_sim_api;
mod manager_api;
mod manager_broken_stream;
mod manager_budget;
mod manager_cancel_race;
mod manager_dispatch;
mod manager_escalation;
mod manager_expected_wait;
mod manager_kill;
mod manager_large_tasks;
mod manager_queue;
mod manager_reroute_comeback;
mod manager_restart;
mod manager_routing;
mod multi_host;
mod overload;
mod programmer_admission;
mod programmer_breaker;
mod programmer_cleanup;
mod programmer_concurrency;
mod programmer_drain_handback;
mod programmer_execute;
mod programmer_job_limit;
mod programmer_keepalive;
mod programmer_restart;
mod python_client;
mod remote_workspace;
mod security_hostile_tasks;
mod security_tls_auth;
mod telemetry_metrics;
mod telemetry_traces;
mod worktree_concurrency;
mod worktree_isolation;
