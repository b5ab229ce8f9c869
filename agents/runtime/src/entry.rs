//! The binary entry point every agent's `main` calls: [`main`].
//!
//! Order: tracing, the crypto provider, the configuration (strict, size-limited; any problem
//! exits 64 before anything connects), the agent's settings, self-confinement when the
//! configuration asks for it, the token gate and the agent itself (still exit 64), then the
//! NATS connection as the agent's own identity and [`crate::serve`] until SIGTERM or SIGINT.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use protocol::Principal;
use protocol::deploy::{
    AGENT_CONFIG_ENV, AgentConfig, DEFAULT_AGENT_CONFIG_PATH, MAX_AGENT_CONFIG_BYTES,
};
use protocol::message::IsolationReport;
use provision::Layout;
use tracing_subscriber::EnvFilter;

use crate::agent::{Agent, AgentContext};
use crate::error::{EXIT_FAILURE, StartError};
use crate::serve::{TokenGate, serve};

/// Most commands the NATS client buffers for the agent before it drops them (the server then
/// counts the agent as a slow consumer). Requests beyond the concurrency bound wait here.
const SUBSCRIPTION_CAPACITY: usize = 256;

/// Runs agent `A` as a process: see the module documentation. Exit codes: 0 after a clean
/// shutdown, 64 for a configuration problem (before any connection), 70 if the agent's manifest
/// is missing from the build, 1 for anything else.
pub fn main<A: Agent>() -> ExitCode {
    init_tracing();
    provision::client::install_crypto_provider();
    let path = config_path(std::env::var_os(AGENT_CONFIG_ENV));
    let (config, settings) = match prepare::<A>(&path) {
        Ok(p) => p,
        Err(e) => return fail_start(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(start::<A>(config, settings))
}

/// Everything before the async runtime: the configuration, the settings, and confinement
/// (whose report is merged into the configuration's isolation report).
fn prepare<A: Agent>(path: &Path) -> Result<(AgentConfig, A::Settings), StartError> {
    let mut config = load_config::<A>(path)?;
    let settings = parse_settings::<A>(&config)?;
    config.isolation = confine_self(&config)?;
    Ok((config, settings))
}

async fn start<A: Agent>(config: AgentConfig, settings: A::Settings) -> ExitCode {
    let ctx = AgentContext::from_config(&config);
    let local = TokenGate::open(&config).and_then(|gate| {
        let agent = A::new(settings, &ctx)?;
        let principal = Principal::from(&config.name);
        let options = provision::client::options(&Layout::new(&config.identity_dir), &principal)
            .map_err(StartError::Identity)?;
        Ok((gate, agent, options))
    });
    let (gate, agent, options) = match local {
        Ok(l) => l,
        Err(e) => return fail_start(&e),
    };
    let client = match options
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .connect(&config.nats_url)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(code = "nats_connect_failed", error = %e, "cannot connect to NATS");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match serve(config, agent, gate, client, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "agent stopped on an error");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Completes on SIGTERM or SIGINT.
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
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the agent");
            let _interrupted = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

fn fail_start(e: &StartError) -> ExitCode {
    tracing::error!(code = e.code(), error = %e, "agent cannot start");
    ExitCode::from(e.exit_code())
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_unset| EnvFilter::new("info"));
    // Already initialised (an embedding test) is fine.
    let _already = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

/// `$AGENT_CONFIG` when set and not empty, else [`DEFAULT_AGENT_CONFIG_PATH`].
pub fn config_path(env: Option<std::ffi::OsString>) -> PathBuf {
    env.filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_AGENT_CONFIG_PATH), PathBuf::from)
}

/// Reads the configuration file (at most [`MAX_AGENT_CONFIG_BYTES`]), parses it strictly,
/// checks its fields and that it is for agent `A`.
pub fn load_config<A: Agent>(path: &Path) -> Result<AgentConfig, StartError> {
    let unreadable = |source| StartError::ConfigUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_AGENT_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() > MAX_AGENT_CONFIG_BYTES {
        return Err(StartError::ConfigTooLarge {
            path: path.to_path_buf(),
            limit: MAX_AGENT_CONFIG_BYTES,
        });
    }
    let config = AgentConfig::from_json(&bytes).map_err(StartError::ConfigInvalid)?;
    check_config(&config)?;
    let manifest = A::manifest().ok_or(StartError::ManifestMissing)?;
    if manifest.name() != &config.name {
        return Err(StartError::WrongAgent {
            config: config.name,
            manifest: manifest.name().clone(),
        });
    }
    Ok(config)
}

/// Field rules the types cannot express.
pub fn check_config(config: &AgentConfig) -> Result<(), StartError> {
    let invalid = |m: &str| Err(StartError::ConfigInvalid(m.to_owned()));
    if config.nats_url.is_empty() {
        return invalid("nats_url is empty");
    }
    if config.identity_dir.is_empty() || config.data_dir.is_empty() {
        return invalid("identity_dir and data_dir must be set");
    }
    if !(100..=3_600_000).contains(&config.heartbeat_interval_ms) {
        return invalid("heartbeat_interval_ms must be 100 to 3600000");
    }
    if !(1..=1024).contains(&config.max_concurrency) {
        return invalid("max_concurrency must be 1 to 1024");
    }
    if config.shutdown_grace_ms > 600_000 {
        return invalid("shutdown_grace_ms must be at most 600000");
    }
    if let Some(proxy) = &config.egress_proxy
        && !proxy.starts_with("http://")
    {
        return invalid("egress_proxy must be an http:// URL");
    }
    Ok(())
}

/// The agent's settings, parsed strictly into `A::Settings`.
pub fn parse_settings<A: Agent>(config: &AgentConfig) -> Result<A::Settings, StartError> {
    serde_json::from_value(config.settings.clone()).map_err(StartError::Settings)
}

/// Applies the configuration's confinement plan, if any (`confine::apply`: no_new_privs,
/// Landlock, the seccomp allowlist; irreversible), and returns the isolation report with what it
/// established and what it could not. Called before the async runtime exists, so no thread
/// escapes the filter.
fn confine_self(config: &AgentConfig) -> Result<IsolationReport, StartError> {
    let mut report = config.isolation.clone();
    if let Some(plan) = &config.confine {
        let applied = confine::apply(plan).map_err(StartError::Confine)?;
        tracing::info!(
            measures = ?applied.measures,
            missing = ?applied.missing,
            "confined"
        );
        report.measures.extend(applied.measures);
        report.missing.extend(applied.missing);
    }
    Ok(report)
}
