//! The `orchestrator` binary: wiring only.
//!
//! `orchestrator --config <file>` (or `ORCHESTRATOR_CONFIG`): tracing to stderr, the
//! configuration (any problem, including the planners' and the LLM client's setup, exits 64
//! before anything connects), the NATS connection as the orchestrator identity, then
//! `service::run` until SIGINT or SIGTERM. Exit 0 after a clean stop, 1 when the service fails.
//!
//! Test hook: `ORCHESTRATOR_FAULT=abort_after_intent|abort_after_dispatch` aborts the process
//! at that point of a step (see `execute::Fault`); unset, it does nothing, and any other value
//! is a configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use orchestrator::clock::SystemClock;
use orchestrator::config::Config;
use orchestrator::execute::Fault;
use orchestrator::plan::{LlmComposer, Planners};
use orchestrator::service::{self, Deps, Tuning};
use protocol::Principal;

/// Exit code for a bad configuration or usage (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator",
    about = "Plans, asks for approval, and runs approved plans through the agents."
)]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, env = "ORCHESTRATOR_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_no_filter| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "bad configuration");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let fault = match std::env::var(Fault::ENV) {
        Err(_unset) => None,
        Ok(v) => match Fault::parse(&v) {
            Some(f) => {
                tracing::warn!(fault = ?f, "test hook set: the process will abort mid-step");
                Some(f)
            }
            None => {
                tracing::error!(value = %v, "unknown {}", Fault::ENV);
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    // reqwest (the LLM client) needs the process-wide rustls provider before any client exists.
    provision::client::install_crypto_provider();
    let planner =
        match Planners::from_config(config.catalog(), config.llm.as_ref(), &config.routine_rooms) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(code = e.code(), error = %e, "planners cannot be set up");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    let composer = match config.llm.as_ref().map(LlmComposer::new).transpose() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "the summary composer cannot be set up");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "no async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let layout = config.layout();
        let client =
            match provision::client::connect(&config.nats_url, &layout, &Principal::orchestrator())
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(code = e.code(), error = %e, "cannot connect to NATS");
                    return ExitCode::FAILURE;
                }
            };
        let deps = Deps {
            client: client.clone(),
            layout,
            planner,
            agent_control: None,
            composer,
            clock: Arc::new(SystemClock),
            fault,
            tuning: Tuning::default(),
        };
        let result = service::run(config, deps, shutdown_signal()).await;
        let _ = client.flush().await;
        match result {
            Ok(()) => {
                tracing::info!("orchestrator stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(code = e.code(), error = %e, "orchestrator failed");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
