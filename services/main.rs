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
    #[arg(
        long,
        global = true,
        env = "PAS_CONFIG",
        default_value = "configs/pas/programmer_pool.yaml"
    )]
    config: PathBuf,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = pas::telemetry::LogFormat::Text)]
    log_format: pas::telemetry::LogFormat,
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
    /// Run one programmer (pas.v1.Programmer + health + reflection + GET /health on one port).
    Programmer(pas::programmer::ProgrammerArgs),
    /// Run the manager (pas.v1.ProgrammerPool + health + reflection + GET /health and
    /// /programmer_pool/status on one port).
    Manager(pas::manager::ManagerArgs),
    /// Start the manager and the programmers as supervised child processes (restarted with
    /// backoff when they crash), wait until all are healthy and print a table.
    Up(pas::cli::up::UpArgs),
    /// Stop the pool started by `pas up` (SIGTERM, then SIGKILL after a timeout).
    Down(pas::cli::up::DownArgs),
    /// `pas down`, then `pas up --detach` (with the previous `--only` unless one is given).
    Restart(pas::cli::up::UpArgs),
    /// Show the pool: programmers, LLMs, circuits, queues, budget and alerts.
    Status(pas::cli::status::StatusArgs),
    /// Send a task to the pool and follow it live (exit 0 succeeded, 1 failed, 2 bad input,
    /// 130 cancelled).
    Dispatch(pas::cli::dispatch::DispatchArgs),
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
        Command::LlmSim(args) => {
            pas::telemetry::init_logging(cli.log_format);
            block_on(pas::llm_sim::run(args))
        }
        Command::Programmer(args) => {
            pas::telemetry::init_logging(cli.log_format);
            block_on(async move { pas::programmer::run(load_config(&cli.config)?, args).await })
        }
        Command::Manager(args) => {
            pas::telemetry::init_logging(cli.log_format);
            block_on(async move { pas::manager::run(load_config(&cli.config)?, args).await })
        }
        Command::Up(args) => pas::cli::up::up(&cli.config, cli.log_format, args),
        Command::Down(args) => pas::cli::up::down(&cli.config, args),
        Command::Restart(args) => pas::cli::up::restart(&cli.config, cli.log_format, args),
        Command::Status(args) => pas::cli::status::run(&cli.config, args),
        Command::Dispatch(args) => pas::cli::dispatch::run(&cli.config, args),
    }
}

/// Loads and validates the configuration, with every error listed.
fn load_config(path: &std::path::Path) -> anyhow::Result<pas::config::Config> {
    pas::config::Config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
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
