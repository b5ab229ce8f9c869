//! `egress-proxy`: the egress proxy binary. Wiring only: arguments, tracing, configuration,
//! NATS, signals; everything else is the `egress_proxy` library.
//!
//! Exit codes: 0 after SIGTERM or SIGINT (stopped accepting, drained), 64 on a bad
//! configuration or identity (before binding or connecting anything), 1 on any other failure
//! (for example the listen address is taken).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use audit::emit::AuditEmitter;
use clap::Parser;
use egress_proxy::config::DEFAULT_CONFIG_PATH;
use egress_proxy::{Config, Proxy, ProxyOptions, Reporter, SystemResolver};
use protocol::acl::Identity;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// The egress proxy: lets each agent reach only its allowlisted destinations.
#[derive(Debug, Parser)]
#[command(name = "egress-proxy", version)]
struct Args {
    /// The configuration file (JSON).
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

const EX_USAGE: u8 = 64;
/// How long queued audit events may take to go out at shutdown.
const AUDIT_GRACE: Duration = Duration::from_secs(5);

async fn shutdown_signal() {
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

async fn reload_on_sighup(proxy: Proxy, path: PathBuf) {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reloading is disabled");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        if let Err(e) = proxy.reload_from(&path) {
            tracing::error!(code = e.code(), error = %e, "reload refused; the previous configuration stays in force");
        }
    }
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
        .with_ansi(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_unset| EnvFilter::new("info")),
        )
        .init();
    // Everything local before any socket: the configuration and the identity files.
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "bad configuration");
            return ExitCode::from(EX_USAGE);
        }
    };
    let layout = provision::Layout::new(config.identity_dir.clone());
    let options = match provision::client::options(&layout, &Identity::Egress.principal()) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "cannot load the egress identity");
            return ExitCode::from(EX_USAGE);
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
    runtime.block_on(run(args.config, config, options))
}

async fn run(path: PathBuf, config: Config, options: async_nats::ConnectOptions) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "listening"),
        Err(e) => tracing::warn!(error = %e, "listening on an unknown address"),
    }
    // NATS connects in the background: the proxy refuses what it must whether or not it can
    // report the refusals.
    let client = match options
        .retry_on_initial_connect()
        .event_callback(|event| async move { tracing::info!(%event, "nats") })
        .connect(&config.nats_url)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the NATS connection");
            return ExitCode::FAILURE;
        }
    };
    let emitter = AuditEmitter::new(
        async_nats::jetstream::new(client.clone()),
        Identity::Egress.principal(),
    );
    let (reporter, reporter_task) = Reporter::start(emitter);
    let proxy = match Proxy::new(
        &config,
        Arc::new(SystemResolver),
        reporter,
        ProxyOptions::default(),
    ) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "bad configuration");
            return ExitCode::from(EX_USAGE);
        }
    };
    let reloader = tokio::spawn(reload_on_sighup(proxy.clone(), path));
    let summary = proxy.serve(listener, shutdown_signal()).await;
    reloader.abort();
    drop(proxy);
    reporter_task.finish(AUDIT_GRACE).await;
    if tokio::time::timeout(AUDIT_GRACE, client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS flush timed out at shutdown");
    }
    tracing::info!(
        accepted = summary.accepted,
        cut_at_shutdown = summary.cut_at_shutdown,
        "egress proxy stopped"
    );
    ExitCode::SUCCESS
}
