//! The notify gateway: the only component that talks to chat platforms.
//!
//! What it does: for each configured channel, runs two loops over the
//! channel-neutral [`channel::Channel`] interface. [`inbound`] turns platform events from
//! allowlisted users into `chat.in.<channel>` / `chat.decision.<channel>` messages (JetStream,
//! acknowledged before the platform cursor advances; default deny with an audit row for anyone
//! else). [`outbound`] pulls the channel's `out-<channel>` consumer of `CHAT_OUT`, renders plans
//! and messages for the platform, delivers them, and acknowledges only after the platform
//! answered (retrying 429 / 5xx, never sending a delivered envelope twice). Its own state (the
//! cursor, what was posted where, what was delivered, which buttons each message shows, so a
//! press of a button it did not show there is refused before anything is published) lives in
//! [`store`].
//!
//! What it does not do: it holds no capability key and never signs or verifies button MACs
//! (the orchestrator does); it may publish only chat input, decisions and its own audit events
//! and read only chat output (`protocol::acl`, identity `gateway`). Channels: Telegram
//! ([`telegram`], with an optional webhook mode in [`telegram_webhook`]), iMessage
//! ([`imessage`], macOS), Slack ([`slack`], feature `slack`: Socket Mode by default or the
//! Events API over HTTP, Block Kit buttons) and the web chat ([`webchat`], a token-protected
//! page on loopback, feature `web`). One-time pairing codes (`bot pair`): [`pairing`];
//! per-user length and rate limits: [`limits`].

#![forbid(unsafe_code)]

pub mod channel;
pub mod config;
#[cfg(feature = "imessage")]
pub mod imessage;
pub mod inbound;
pub mod limits;
pub mod outbound;
pub mod pairing;
pub mod plain;
pub mod secret;
#[cfg(feature = "slack")]
pub mod slack;
pub mod store;
#[cfg(feature = "telegram")]
pub mod telegram;
#[cfg(feature = "telegram")]
pub mod telegram_webhook;
#[cfg(feature = "web")]
pub mod webchat;

use std::future::Future;

use audit::emit::AuditEmitter;
use protocol::Principal;
use tokio::sync::watch;

use crate::channel::Channel;
use crate::inbound::Allowlist;
use crate::limits::Limits;
use crate::store::Store;

/// Why the gateway stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// NATS or JetStream failed in a way the loop cannot retry.
    #[error("NATS: {0}")]
    Nats(String),
    /// A message could not be encoded.
    #[error("cannot encode a message: {0}")]
    Encode(#[source] protocol::EncodeError),
    /// A loop task died.
    #[error("gateway task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The web chat's page server could not run.
    #[error("web chat server: {0}")]
    WebServer(#[source] std::io::Error),
}

impl GatewayError {
    /// A stable code for logs and users.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Store(e) => e.code(),
            GatewayError::Nats(_) => "nats_failed",
            GatewayError::Encode(_) => "message_encode_failed",
            GatewayError::Task(_) => "gateway_task_failed",
            GatewayError::WebServer(_) => "web_server_failed",
        }
    }
}

/// Runs one channel's inbound and outbound loops with the default [`Limits`] until `shutdown`
/// resolves (or one fails). `client` must be connected as the `gateway` principal.
pub async fn run<C: Channel>(
    channel: C,
    allow: Allowlist,
    client: async_nats::Client,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    run_with(channel, allow, Limits::default(), client, store, shutdown).await
}

/// [`run`] with explicit per-user limits.
pub async fn run_with<C: Channel>(
    channel: C,
    allow: Allowlist,
    limits: Limits,
    client: async_nats::Client,
    store: Store,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    let js = async_nats::jetstream::new(client);
    let audit = AuditEmitter::new(js.clone(), Principal::gateway());
    let (stop_tx, stop_rx) = watch::channel(false);
    let inbound = inbound::run(
        &channel,
        &allow,
        limits,
        &js,
        &audit,
        &store,
        stop_rx.clone(),
    );
    let outbound = outbound::run(&channel, &js, &store, stop_rx);
    tokio::pin!(inbound, outbound, shutdown);
    let mut inbound_done = false;
    let mut outbound_done = false;
    let mut result = Ok(());
    while !(inbound_done && outbound_done) {
        tokio::select! {
            () = &mut shutdown, if !*stop_tx.borrow() => {
                tracing::info!("shutting down");
                stop_tx.send_replace(true);
            }
            r = &mut inbound, if !inbound_done => {
                inbound_done = true;
                stop_tx.send_replace(true);
                if let Err(e) = r { result = Err(e); }
            }
            r = &mut outbound, if !outbound_done => {
                outbound_done = true;
                stop_tx.send_replace(true);
                if let Err(e) = r && result.is_ok() { result = Err(e); }
            }
        }
    }
    result
}
