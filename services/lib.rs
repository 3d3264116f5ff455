//! Programmer Pool: a gRPC service mesh that runs a pool of AI "programmers".
//!
//! # Layout
//!
//! Layers only point down; the manager and the programmer are peers that share nothing but the
//! lower floor.
//!
//! - [`cli`]: the `pas` subcommands (thin: parse, call into the layers below).
//! - [`manager`]: `pas.v1.ProgrammerPool` — routing, queues, budget, task records.
//! - [`programmer`]: `pas.v1.Programmer` — validation, queue, failover, breaker, aider, worktrees.
//! - [`llm_sim`]: an offline OpenAI/Ollama/Anthropic-compatible LLM simulator with fault injection.
//! - Lower floor: [`config`], [`contract`], [`money`] (integer nano-dollars), [`serve`] (gRPC +
//!   HTTP JSON on one port), [`telemetry`].
//!
//! See `ARCHITECTURE.md` for the code map and invariants.

#![forbid(unsafe_code)]

pub mod channel;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod contract;
pub mod git;
pub mod llm_sim;
pub mod manager;
pub mod money;
pub mod programmer;
pub mod reload;
pub mod repo_url;
pub mod serve;
pub mod task_events;
pub mod task_sources;
pub mod telemetry;
pub mod tls;
pub mod workspace;
