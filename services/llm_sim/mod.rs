//! `pas llm-sim`: an offline LLM provider simulator (OpenAI, Ollama, Anthropic APIs) with fault
//! injection, so the whole mesh runs — and is tested — on a machine with no LLM.
//!
//! It answers aider's requests with edits aider really applies ([`edit`]), behaves per model as a
//! script says ([`script`]: latency, chunk pacing, HTTP errors, drops, hangs, malformed edits, empty
//! replies, "fail the next N"), and counts what it served ([`state`], `GET /_sim/usage`).
//!
//! Files: [`server`] (routes and control endpoints), [`openai`], [`ollama`], [`anthropic`] (one
//! API each), [`wire`] (pacing, faults on the wire), [`state`], [`script`], [`edit`].

pub mod anthropic;
pub mod edit;
pub mod ollama;
pub mod openai;
pub mod script;
pub mod server;
pub mod state;
pub mod wire;

use anyhow::Context;
use script::{Behaviour, Fault, Rule, Script};
use std::io::Write;
use std::path::PathBuf;

/// Command-line arguments of `pas llm-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 = any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:6199")]
    pub listen: String,
    /// Fault script (YAML or JSON): `rules: [{model, latency_ms, chunk_delay_ms, chunk_chars,
    /// fault, times}]`, `default: {...}`.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Default latency before the first byte, for models no rule matches.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Default delay between streamed chunks.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    /// Default fault (none, http_500, drop, hang, malformed, no_match, empty).
    #[arg(long, default_value = "none")]
    pub fault: Fault,
    /// Extra rule `PATTERN=FAULT[xN]` put before the script's rules, e.g. `gpt-*=http_503x3`
    /// (repeatable).
    #[arg(long = "model-fault", value_name = "PATTERN=FAULT[xN]")]
    pub model_faults: Vec<String>,
}

impl SimArgs {
    /// The startup script: the file's, then flags on top.
    pub fn script(&self) -> anyhow::Result<Script> {
        let mut script = match &self.script {
            Some(path) => Script::load(path)?,
            None => Script::default(),
        };
        if self.latency_ms != 0 {
            script.default.latency_ms = self.latency_ms;
        }
        if self.chunk_delay_ms != 0 {
            script.default.chunk_delay_ms = self.chunk_delay_ms;
        }
        if self.fault != Fault::None {
            script.default.fault = self.fault;
        }
        let mut extra = Vec::new();
        for spec in &self.model_faults {
            let (pattern, rest) = spec
                .split_once('=')
                .with_context(|| format!("--model-fault {spec:?}: expected PATTERN=FAULT[xN]"))?;
            let (fault, times) = match rest.rsplit_once('x') {
                Some((f, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                    (f, Some(n.parse::<u32>()?))
                }
                _ => (rest, None),
            };
            extra.push(Rule {
                model: pattern.to_string(),
                after: 0,
                behaviour: Behaviour {
                    fault: fault.parse()?,
                    times,
                    ..Behaviour::default()
                },
            });
        }
        extra.append(&mut script.rules);
        script.rules = extra;
        Ok(script)
    }
}

/// Runs the simulator until SIGTERM or Ctrl-C. The first line on stdout is
/// `llm-sim listening on http://ADDR` (tests parse it).
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let script = args.script()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "llm-sim listening on http://{addr}")?;
        out.flush()?;
    }
    let app = server::router(state::SimState::new(script));
    // Hung requests never finish, so do not wait for connections on shutdown: just stop.
    tokio::select! {
        served = axum::serve(listener, app) => served.context("server failed")?,
        () = crate::serve::shutdown_signal() => tracing::info!("llm-sim stopping"),
    }
    Ok(())
}
