//! The `pas` binary: parse the command line and hand over to [`pas::cli`] and the services.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use pas::telemetry::ServiceIdentity;
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc with its background thread: it gives the pages a burst freed back to the system within
/// seconds (`dirty_decay_ms`), where glibc's allocator kept them for good, and it allocates from
/// per-CPU arenas without glibc's arena growth across tokio's threads (BENCHMARKS.md, "Overload").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Have the running `pas up` re-read the configuration file (SIGHUP) and wait for the
    /// outcome: applied while running, or the processes whose start-up settings changed restarted
    /// one at a time (exit 1 when the file does not load or one does not come back).
    Reload(pas::cli::up::ReloadArgs),
    /// Show the pool: programmers, LLMs, circuits, queues, budget and alerts.
    Status(pas::cli::status::StatusArgs),
    /// Send a task to the pool and follow it live, re-attaching if the stream breaks (exit 0
    /// succeeded, 1 failed, 2 bad input, 130 cancelled). Ctrl-C cancels the task; --detach leaves
    /// it running.
    Dispatch(pas::cli::dispatch::DispatchArgs),
    /// Follow a dispatched task by id: replay its events, then live until its result (same view
    /// and exit codes as dispatch). Ctrl-C stops watching; the task runs on.
    Watch(pas::cli::watch::WatchArgs),
    /// List the manager's tasks, newest first (filter by run id and state).
    Tasks(pas::cli::tasks::TasksArgs),
    /// Development TLS: a CA and certificates for every process of the configuration.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Bearer tokens for the manager's callers.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The main job: start llm-sim (or use real providers) and the whole pool, run the example
    /// tasks with live progress, show the pool status and the diffs.
    Demo(pas::cli::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print a summary (exit 1 and the errors when invalid).
    Check {
        /// The file to check (default: --config / PAS_CONFIG / configs/pas/programmer_pool.yaml).
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a development CA and a certificate + key for the manager, each programmer and the
    /// CLI into DIR, and print the `tls:` section that uses them.
    Init(pas::cli::certs::CertsInitArgs),
    /// Issue every certificate + key in DIR again with the CA already there (ca.pem stays):
    /// running processes take the new ones up without a restart (within 10 s, or on SIGHUP).
    Renew(pas::cli::certs::CertsRenewArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random token and the `<name> <role> sha256:<hash>` entry for the manager.
    New(pas::cli::token::TokenNewArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => {
            pas::cli::config_check::run(file.unwrap_or(cli.config))
        }
        Command::LlmSim(args) => block_on(
            cli.log_format,
            ServiceIdentity::other("llm-sim"),
            1.0,
            0,
            pas::llm_sim::run(args),
        ),
        Command::Programmer(args) => {
            let config = load_config(&cli.config);
            block_on(
                cli.log_format,
                ServiceIdentity::programmer(&args.id),
                sample_ratio(&config),
                0,
                async move { pas::programmer::run(config?, args).await },
            )
        }
        Command::Manager(args) => {
            let config = load_config(&cli.config);
            let ratio = sample_ratio(&config);
            // An invalid configuration is reported by the service, on the default runtime.
            let threads = config.as_ref().map_or(1, |c| c.pool.manager.worker_threads);
            block_on(
                cli.log_format,
                ServiceIdentity::manager(),
                ratio,
                threads as usize,
                async move { pas::manager::run(config?, args).await },
            )
        }
        Command::Up(args) => pas::cli::up::up(&cli.config, cli.log_format, args),
        Command::Down(args) => pas::cli::up::down(&cli.config, args),
        Command::Restart(args) => pas::cli::up::restart(&cli.config, cli.log_format, args),
        Command::Reload(args) => pas::cli::up::reload(&cli.config, args),
        Command::Status(args) => pas::cli::status::run(&cli.config, args),
        Command::Dispatch(args) => pas::cli::dispatch::run(&cli.config, args),
        Command::Watch(args) => pas::cli::watch::run(&cli.config, args),
        Command::Tasks(args) => pas::cli::tasks::run(&cli.config, args),
        Command::Certs(CertsCommand::Init(args)) => pas::cli::certs::run(&cli.config, args),
        Command::Certs(CertsCommand::Renew(args)) => pas::cli::certs::run_renew(&cli.config, args),
        Command::Token(TokenCommand::New(args)) => pas::cli::token::run(args),
        Command::Demo(args) => pas::cli::demo::run(&cli.config, cli.log_format, args),
    }
}

/// Loads and validates the configuration, with every error listed.
fn load_config(path: &std::path::Path) -> anyhow::Result<pas::config::Config> {
    pas::config::Config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
}

/// `telemetry.sample_ratio` of a loaded configuration (an invalid one is reported by the service,
/// with every span kept meanwhile).
fn sample_ratio(config: &anyhow::Result<pas::config::Config>) -> f64 {
    config
        .as_ref()
        .map_or(1.0, |c| c.pool.telemetry.sample_ratio)
}

/// Runs a service future on a runtime of `threads` threads (1: current-thread, 0: one worker per
/// core) with telemetry (logs, OTLP traces when configured and sampled at `sample_ratio`,
/// metrics) installed, flushes the traces at the end, and turns the service's error into exit
/// code 1.
fn block_on(
    log_format: pas::telemetry::LogFormat,
    service: ServiceIdentity,
    sample_ratio: f64,
    threads: usize,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match threads {
        // tokio's basic scheduler, where more threads would bring no benefit (as linkerd2-proxy
        // does on one core).
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Runtime::new(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let telemetry = pas::telemetry::init(log_format, &service, sample_ratio);
        let outcome = fut.await;
        telemetry.shutdown().await;
        outcome
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
