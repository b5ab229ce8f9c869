//! `audit-writer`: fills the audit log from the `AUDIT` stream. Wiring only: arguments,
//! tracing, signals; everything else is `audit::service`.
//!
//! Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM: drained, final checkpoint written),
//! 64 on bad configuration (before connecting to anything), 1 on any other failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use audit::service::{self, ServiceConfig};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The audit writer: the only writer of the audit database.
#[derive(Debug, Parser)]
#[command(name = "audit-writer", version)]
struct Args {
    /// NATS server URL, e.g. tls://127.0.0.1:4222.
    #[arg(long, env = "AUDIT_NATS_URL")]
    nats_url: String,
    /// The provisioned identity directory (holds the `audit` identity and the checkpoint key).
    #[arg(long)]
    identity_dir: PathBuf,
    /// The audit database file (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// Append every signed checkpoint to this file too (another disk or host in production).
    #[arg(long)]
    witness: Option<PathBuf>,
    /// Write a signed checkpoint every this many rows.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// ... or this many seconds after the first unchecked row.
    #[arg(long, default_value_t = 60)]
    checkpoint_interval_secs: u64,
}

const EX_USAGE: u8 = 64;

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
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the writer");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested; draining");
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EX_USAGE),
            };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_unset| EnvFilter::new("info")),
        )
        .init();
    let config = ServiceConfig {
        nats_url: args.nats_url,
        identity_dir: args.identity_dir,
        db: args.db,
        witness: args.witness,
        checkpoint_every: args.checkpoint_every,
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval_secs),
    };
    // Everything local (settings, key, database, witness, writer thread) before any network.
    let prepared = match service::prepare(config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "audit writer cannot start");
            return ExitCode::from(e.exit_code());
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::run(prepared, shutdown_signal())) {
        Ok(summary) => {
            tracing::info!(
                received = summary.ingest.received,
                stored = summary.ingest.stored,
                duplicates = summary.ingest.duplicates,
                rejected = summary.ingest.rejected,
                tree_size = summary.closed.head.tree_size,
                checkpoint = summary.closed.last_checkpoint,
                "audit writer stopped cleanly"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "audit writer failed");
            ExitCode::from(e.exit_code())
        }
    }
}
