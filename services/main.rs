//! The `pas` binary: parse the command line and hand over to [`pas::cli`] and the services.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Programmer Pool: a gRPC mesh of AI programmers (Aider) behind a load-balancing manager.
#[derive(Debug, Parser)]
#[command(name = "pas", version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "PAS_CONFIG", default_value = "configs/pas/programmer_pool.yaml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the offline LLM provider simulator (OpenAI, Ollama and Anthropic APIs, with fault injection).
    LlmSim(pas::llm_sim::SimArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print a summary (exit 1 and the errors when invalid).
    Check {
        /// The file to check (default: --config / PAS_CONFIG / configs/pas/programmer_pool.yaml).
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => {
            pas::cli::config_check::run(file.unwrap_or(cli.config))
        }
        Command::LlmSim(args) => block_on(pas::llm_sim::run(args)),
    }
}

/// Runs a service future on a multi-threaded runtime and turns its error into exit code 1.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
