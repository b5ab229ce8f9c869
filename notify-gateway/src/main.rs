//! `notify-gateway --config <file>`: wires the configuration, NATS and the channels together
//! and runs [`notify_gateway::run`] until SIGINT / SIGTERM. Exits 64 on bad configuration
//! before connecting anything.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use notify_gateway::config::Config;
use notify_gateway::inbound::Allowlist;
use notify_gateway::store::Store;
use notify_gateway::telegram::{BotToken, Telegram};
use protocol::{ChannelName, Principal};

const EXIT_CONFIG: u8 = 64;

/// The notify gateway.
#[derive(Debug, Parser)]
struct Args {
    /// The configuration file.
    #[arg(long, env = "NOTIFY_GATEWAY_CONFIG")]
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
    let Some(tg) = config.telegram.clone() else {
        tracing::error!(
            code = "config_invalid",
            "no channel configured ([telegram])"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let token = match tg.read_token() {
        Ok(t) => BotToken::new(&t),
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "bad telegram token file");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let api_url = match tg.api_url.as_deref().map(url::Url::parse).transpose() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(code = "config_invalid", error = %e, "bad telegram.api_url");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Ok(name) = ChannelName::new("telegram") else {
        return ExitCode::FAILURE;
    };
    let store = match Store::open(&config.state_db) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "cannot open the state database");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let channel = Telegram::new(
        &token,
        api_url,
        Duration::from_secs(tg.poll_timeout_secs.unwrap_or(10)),
        name,
    );
    let allow = Allowlist::new(tg.allowed_users.iter().map(u64::to_string));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "no async runtime");
            return ExitCode::FAILURE;
        }
    };
    // reqwest (teloxide) and the NATS TLS connection need the process-wide rustls provider.
    provision::client::install_crypto_provider();
    runtime.block_on(async move {
        let layout = provision::Layout::new(&config.home);
        let client = match provision::client::connect(
            &config.nats_url,
            &layout,
            &Principal::gateway(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(code = e.code(), error = %e, "cannot connect to NATS");
                return ExitCode::FAILURE;
            }
        };
        let result =
            notify_gateway::run(channel, allow, client.clone(), store, shutdown_signal()).await;
        let _ = client.flush().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(code = e.code(), error = %e, "gateway failed");
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
        Err(_no_handler) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
