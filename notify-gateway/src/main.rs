//! `notify-gateway --config <file>`: wires the configuration, NATS and the channels together
//! and runs [`notify_gateway::run`] until SIGINT / SIGTERM. Exits 64 on bad configuration
//! before connecting anything.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use notify_gateway::config::Config;
#[cfg(feature = "imessage")]
use notify_gateway::imessage::{ChatDb, IMessage, default_osascript, normalize_handle};
use notify_gateway::inbound::Allowlist;
#[cfg(feature = "slack")]
use notify_gateway::slack::{SLACK_API_URL, Slack, SlackSettings, SlackToken};
use notify_gateway::store::Store;
use notify_gateway::telegram::{BotToken, Telegram};
use notify_gateway::telegram_webhook::{WebhookSecret, WebhookServer, webhook};
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
    if config.telegram.is_none()
        && config.imessage.is_none()
        && config.slack.is_none()
        && config.web.is_none()
    {
        tracing::error!(
            code = "config_invalid",
            "no channel configured ([telegram], [imessage], [slack] or [web])"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let store = match Store::open(&config.state_db) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "cannot open the state database");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let telegram = match config.telegram.as_ref().map(telegram_channel).transpose() {
        Ok(t) => t,
        Err(code) => return code,
    };
    #[cfg(feature = "imessage")]
    let imessage = match config.imessage.as_ref().map(imessage_channel).transpose() {
        Ok(i) => i,
        Err(code) => return code,
    };
    #[cfg(not(feature = "imessage"))]
    if config.imessage.is_some() {
        tracing::error!(
            code = "config_invalid",
            "[imessage] is configured but this build has no iMessage support"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    #[cfg(not(feature = "web"))]
    if config.web.is_some() {
        tracing::error!(
            code = "config_invalid",
            "[web] is configured but this build has no web chat"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    #[cfg(feature = "web")]
    let web = match config
        .web
        .as_ref()
        .map(|w| web::prepare(w, &config.state_db))
        .transpose()
    {
        Ok(w) => w,
        Err(code) => return code,
    };
    #[cfg(feature = "slack")]
    let slack = match config.slack.as_ref().map(slack_secrets).transpose() {
        Ok(s) => s,
        Err(code) => return code,
    };
    #[cfg(not(feature = "slack"))]
    if config.slack.is_some() {
        tracing::error!(
            code = "config_invalid",
            "[slack] is configured but this build has no Slack support"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
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
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let limits = config.limits.limits();
        let (telegram, hook) = match telegram {
            Some((channel, allow, Some((server, listen)))) => {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(code = "webhook_listen_failed", error = %e, %listen, "cannot listen for the Telegram webhook");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                };
                tracing::info!(%listen, "Telegram webhook mode");
                (Some((channel, allow)), Some((server, listener)))
            }
            Some((channel, allow, None)) => (Some((channel, allow)), None),
            None => (None, None),
        };
        if let Some((server, listener)) = hook {
            tokio::spawn(server.serve(listener, stopped(stop_rx.clone())));
        }
        let signal = async {
            shutdown_signal().await;
            stop_tx.send_replace(true);
        };
        let telegram = run_channel(telegram, limits, &client, &store, stop_rx.clone());
        #[cfg(feature = "imessage")]
        let imessage = run_channel(imessage, limits, &client, &store, stop_rx.clone());
        #[cfg(not(feature = "imessage"))]
        let imessage = async { Ok::<(), notify_gateway::GatewayError>(()) };
        #[cfg(feature = "web")]
        let web = web::run(web, limits, client.clone(), store.clone(), stop_rx.clone());
        #[cfg(not(feature = "web"))]
        let web = async { Ok::<(), notify_gateway::GatewayError>(()) };
        #[cfg(feature = "slack")]
        let slack = match slack {
            Some(secrets) => match slack_channel(secrets, &client).await {
                Ok(s) => Some(s),
                Err(code) => return code,
            },
            None => None,
        };
        #[cfg(feature = "slack")]
        let slack = run_channel(slack, limits, &client, &store, stop_rx.clone());
        #[cfg(not(feature = "slack"))]
        let slack = async { Ok::<(), notify_gateway::GatewayError>(()) };
        // The channels run until a signal; when one fails, the others are stopped too (an
        // unconfigured channel returns at once and stops nothing).
        let channels = async {
            let (a, b, c, d) = tokio::join!(
                stop_all_on_error(telegram, &stop_tx),
                stop_all_on_error(imessage, &stop_tx),
                stop_all_on_error(web, &stop_tx),
                stop_all_on_error(slack, &stop_tx),
            );
            a.and(b).and(c).and(d)
        };
        let result = tokio::select! {
            r = channels => r,
            () = async { signal.await; std::future::pending::<()>().await } => Ok(()),
        };
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

/// The Telegram channel, its allowlist and (webhook mode) the webhook server with its listen
/// address, or the exit code for a bad configuration.
#[allow(clippy::type_complexity)]
fn telegram_channel(
    tg: &notify_gateway::config::TelegramConfig,
) -> Result<
    (
        Telegram,
        Allowlist,
        Option<(WebhookServer, std::net::SocketAddr)>,
    ),
    ExitCode,
> {
    let token = match tg.read_token() {
        Ok(t) => BotToken::new(&t),
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "bad telegram token file");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let api_url = match tg.api_url.as_deref().map(url::Url::parse).transpose() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(code = "config_invalid", error = %e, "bad telegram.api_url");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let Ok(name) = ChannelName::new("telegram") else {
        return Err(ExitCode::FAILURE);
    };
    let channel = Telegram::new(
        &token,
        api_url,
        Duration::from_secs(tg.poll_timeout_secs.unwrap_or(10)),
        name,
    );
    let allow = Allowlist::new(tg.allowed_users.iter().map(u64::to_string));
    let Some(hook) = &tg.webhook else {
        return Ok((channel, allow, None));
    };
    let (Ok(public_url), Ok(secret)) = (url::Url::parse(&hook.public_url), WebhookSecret::random())
    else {
        tracing::error!(
            code = "config_invalid",
            "bad telegram.webhook.public_url, or no randomness"
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    };
    let (inbox, server) = webhook(public_url, secret);
    Ok((
        channel.with_webhook(inbox),
        allow,
        Some((server, hook.listen)),
    ))
}

/// The iMessage channel and its allowlist (normalised handles), or the exit code for a bad
/// configuration.
#[cfg(feature = "imessage")]
fn imessage_channel(
    im: &notify_gateway::config::IMessageConfig,
) -> Result<(IMessage, Allowlist), ExitCode> {
    let handles: Vec<String> = im
        .allowed_handles
        .iter()
        .filter_map(|h| normalize_handle(h))
        .collect();
    if handles.len() != im.allowed_handles.len() {
        tracing::error!(
            code = "config_invalid",
            "imessage.allowed_handles holds an entry that is neither a phone number nor an email"
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    if im.osascript.is_none() && default_osascript().is_none() {
        tracing::error!(
            code = "imessage_unsupported_platform",
            "iMessage needs macOS (or imessage.osascript)"
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    let chat_db = match (&im.chat_db, std::env::var_os("HOME")) {
        (Some(p), _) => p.clone(),
        (None, Some(home)) => ChatDb::default_path(std::path::Path::new(&home)),
        (None, None) => {
            tracing::error!(
                code = "config_invalid",
                "imessage.chat_db unset and no HOME"
            );
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let Ok(name) = ChannelName::new("imessage") else {
        return Err(ExitCode::FAILURE);
    };
    let channel = IMessage::new(
        name,
        ChatDb::new(chat_db),
        &handles,
        im.osascript.clone(),
        Duration::from_millis(im.poll_interval_ms.unwrap_or(2_000)),
    );
    Ok((channel, Allowlist::new(handles)))
}

/// The web chat's wiring (feature `web`).
#[cfg(feature = "web")]
mod web {
    use std::path::Path;
    use std::process::ExitCode;

    use notify_gateway::GatewayError;
    use notify_gateway::config::WebConfig;
    use notify_gateway::store::Store;
    use notify_gateway::webchat::WebChat;
    use notify_gateway::webchat::history::History;
    use notify_gateway::webchat::token::WebToken;
    use protocol::ChannelName;
    use tokio::sync::watch;

    /// What the web chat needs, checked before anything connects.
    #[derive(Debug)]
    pub(super) struct Prepared {
        token: WebToken,
        history: History,
        listener: std::net::TcpListener,
        name: ChannelName,
        user: String,
    }

    /// Reads (or creates) the token file, opens the history and binds the loopback address, or
    /// returns the exit code.
    pub(super) fn prepare(web: &WebConfig, state_db: &Path) -> Result<Prepared, ExitCode> {
        let config_error = ExitCode::from(super::EXIT_CONFIG);
        let name = ChannelName::new("web").map_err(|_invalid| ExitCode::FAILURE)?;
        let token = WebToken::load_or_create(&web.token_file).map_err(|e| {
            tracing::error!(code = e.code(), error = %e, "bad web chat token file");
            config_error
        })?;
        let history = History::open(state_db).map_err(|e| {
            tracing::error!(code = e.code(), error = %e, "cannot open the web chat history");
            config_error
        })?;
        let listener = std::net::TcpListener::bind(web.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                tracing::error!(code = "web_listen_failed", listen = %web.listen, error = %e, "cannot listen");
                config_error
            })?;
        // The token is never logged: the page is this URL plus `#` and the token.
        tracing::info!(
            url = %format!("http://{}/", web.listen),
            token_file = %web.token_file.display(),
            "web chat listening; open the URL followed by `#` and the token file's content"
        );
        Ok(Prepared {
            token,
            history,
            listener,
            name,
            user: web.user.clone(),
        })
    }

    /// Runs the web chat's page server and gateway loops until `stop` turns true (nothing if
    /// `[web]` is not configured).
    pub(super) async fn run(
        web: Option<Prepared>,
        limits: notify_gateway::limits::Limits,
        client: async_nats::Client,
        store: Store,
        stop: watch::Receiver<bool>,
    ) -> Result<(), GatewayError> {
        let Some(web) = web else {
            return Ok(());
        };
        let listener =
            tokio::net::TcpListener::from_std(web.listener).map_err(GatewayError::WebServer)?;
        let chat = WebChat::new(web.name, &web.user, web.history).await?;
        // Either half ending (the loops failing, the server failing) stops the other.
        let (ended, ended_rx) = watch::channel(false);
        let until = |mut stop: watch::Receiver<bool>, mut ended: watch::Receiver<bool>| async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = ended.wait_for(|s| *s) => {}
            }
        };
        let server = async {
            let r = notify_gateway::webchat::http::serve(
                listener,
                chat.clone(),
                web.token,
                until(stop.clone(), ended_rx.clone()),
            )
            .await;
            ended.send_replace(true);
            r
        };
        let allow = chat.allowlist();
        let loops = async {
            let r = notify_gateway::run_with(
                chat.clone(),
                allow,
                limits,
                client,
                store,
                until(stop.clone(), ended_rx.clone()),
            )
            .await;
            ended.send_replace(true);
            r
        };
        let (served, ran) = tokio::join!(server, loops);
        ran.and(served.map_err(GatewayError::WebServer))
    }
}

/// The Slack configuration with its secrets read (before anything connects).
#[cfg(feature = "slack")]
struct SlackSecrets {
    config: notify_gateway::config::SlackConfig,
    bot_token: SlackToken,
    app_token: Option<SlackToken>,
    signing_secret: Option<notify_gateway::slack::signing::SigningSecret>,
}

/// Reads the Slack secret files, or the exit code for a bad configuration.
#[cfg(feature = "slack")]
fn slack_secrets(sc: &notify_gateway::config::SlackConfig) -> Result<SlackSecrets, ExitCode> {
    use notify_gateway::config::SlackConfig;
    let read = |source: &notify_gateway::secret::SecretSource, prefix: &str| {
        SlackConfig::read_secret(source, prefix).map_err(|e| {
            tracing::error!(code = e.code(), error = %e, secret = %source.describe(), "bad slack secret");
            ExitCode::from(EXIT_CONFIG)
        })
    };
    let bot_token = SlackToken::new(&read(&sc.bot_token_file, "xoxb-")?);
    let app_token = match (&sc.events_listen, &sc.app_token_file) {
        (None, Some(path)) => Some(SlackToken::new(&read(path, "xapp-")?)),
        _ => None,
    };
    let signing_secret = match (&sc.events_listen, &sc.signing_secret_file) {
        (Some(_), Some(path)) => {
            let secret = read(path, "")?;
            match notify_gateway::slack::signing::SigningSecret::new(secret) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(code = e.code(), "bad slack signing secret");
                    return Err(ExitCode::from(EXIT_CONFIG));
                }
            }
        }
        _ => None,
    };
    Ok(SlackSecrets {
        config: sc.clone(),
        bot_token,
        app_token,
        signing_secret,
    })
}

/// The Slack channel (Socket Mode, or the Events API endpoint bound) and its allowlist.
#[cfg(feature = "slack")]
async fn slack_channel(
    secrets: SlackSecrets,
    client: &async_nats::Client,
) -> Result<(Slack, Allowlist), ExitCode> {
    let Ok(name) = ChannelName::new("slack") else {
        return Err(ExitCode::FAILURE);
    };
    let sc = &secrets.config;
    let settings = SlackSettings {
        bot_token: secrets.bot_token,
        api_url: sc
            .api_url
            .clone()
            .unwrap_or_else(|| SLACK_API_URL.to_owned()),
        team_id: sc.team_id.clone(),
        poll_wait: Duration::from_secs(10),
    };
    let channel = match (sc.events_listen, secrets.signing_secret, secrets.app_token) {
        (Some(addr), Some(secret), _) => {
            let audit = audit::emit::AuditEmitter::new(
                async_nats::jetstream::new(client.clone()),
                Principal::gateway(),
            );
            let endpoint = match notify_gateway::slack::events_api::Endpoint::bind(
                addr,
                secret,
                sc.team_id.clone(),
                name.clone(),
                Some(audit),
            )
            .await
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(code = "slack_listen_failed", error = %e, "cannot listen for the Slack Events API");
                    return Err(ExitCode::FAILURE);
                }
            };
            Slack::events_api(name, settings, endpoint)
        }
        (_, _, Some(app_token)) => Slack::socket_mode(name, settings, app_token),
        _ => return Err(ExitCode::from(EXIT_CONFIG)),
    };
    match channel {
        Ok(c) => Ok((c, Allowlist::new(sc.allowed_users.iter().cloned()))),
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "cannot set up the Slack channel");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Runs one configured channel's loops until `stop` turns true (nothing if not configured).
async fn run_channel<C: notify_gateway::channel::Channel>(
    configured: Option<(C, Allowlist)>,
    limits: notify_gateway::limits::Limits,
    client: &async_nats::Client,
    store: &Store,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), notify_gateway::GatewayError> {
    let Some((channel, allow)) = configured else {
        return Ok(());
    };
    notify_gateway::run_with(
        channel,
        allow,
        limits,
        client.clone(),
        store.clone(),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )
    .await
}

/// Awaits one channel; if it fails, tells every other channel to stop.
async fn stop_all_on_error(
    channel: impl std::future::Future<Output = Result<(), notify_gateway::GatewayError>>,
    stop: &tokio::sync::watch::Sender<bool>,
) -> Result<(), notify_gateway::GatewayError> {
    let r = channel.await;
    if r.is_err() {
        stop.send_replace(true);
    }
    r
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
