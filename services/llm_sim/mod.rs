//! `pas llm-sim`: an offline LLM provider simulator (OpenAI, Ollama, Anthropic APIs) with fault injection.

/// Command-line arguments of `pas llm-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 = any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:6199")]
    pub listen: String,
}

/// Runs the simulator until interrupted.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let _ = args;
    Ok(())
}
