//! Telegram webhook mode: Telegram POSTs updates to us instead of being polled.
//!
//! What it does: [`webhook`] makes the two halves. The [`WebhookServer`] is a small HTTP/1.1
//! server (meant to sit behind the user's HTTPS reverse proxy or tunnel) that accepts `POST
//! <path>` only when `X-Telegram-Bot-Api-Secret-Token` equals the secret (compared in constant
//! time; 401 otherwise, before the body is read, and nothing is published), bounds the body,
//! parses the update, hands it to the channel and answers **200 only once the gateway has
//! secured it** (published and acknowledged, or refused and audited: `Channel::confirm`), else
//! 503 so Telegram delivers it again. The [`WebhookInbox`] is what the [`crate::telegram::Telegram`]
//! channel polls in this mode; it registers the webhook (`setWebhook` with the secret,
//! `allowed_updates = [message, callback_query]` and `max_connections = 1`, so Telegram sends one
//! update at a time, in order, and the update id stays a valid cursor) on its first poll.
//! [`WebhookSecret::random`] makes a fresh 256-bit secret per start: nothing to store or leak,
//! and `setWebhook` replaces the old one.
//!
//! What it does not do: TLS (Telegram requires HTTPS on 443, 80, 88 or 8443: terminate it in a
//! reverse proxy), certificate upload, or IP filtering of Telegram's ranges (the secret is the
//! authentication).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// The header Telegram puts the secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// The largest update body accepted (Telegram's own messages are far smaller; the gateway's
/// length limit refuses long texts with a notice, this bound only keeps memory in check).
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// How long a request waits for the gateway to secure its update before answering 503.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(25);
/// How many updates may wait for the inbound loop.
const QUEUE: usize = 64;

/// The webhook secret (`setWebhook secret_token`): 1-256 characters of `A-Z a-z 0-9 _ -`.
/// Never printed.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Checks a secret against Telegram's rules.
    pub fn new(secret: &str) -> Result<Self, &'static str> {
        let ok = !secret.is_empty()
            && secret.len() <= 256
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(WebhookSecret(secret.to_owned()))
        } else {
            Err("a webhook secret is 1-256 characters of A-Z a-z 0-9 _ -")
        }
    }

    /// A fresh random secret (256 bits, hex).
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)?;
        Ok(WebhookSecret(
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    /// Whether `candidate` is the secret, in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        if candidate.len() != secret.len() {
            return false;
        }
        candidate
            .iter()
            .zip(secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// An update received over the webhook, waiting for the inbound loop.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) update: teloxide::types::Update,
    pub(crate) secured: oneshot::Sender<()>,
}

/// The channel's side: received updates and the requests waiting for them to be secured.
#[derive(Debug)]
pub struct WebhookInbox {
    pub(crate) url: url::Url,
    pub(crate) secret: WebhookSecret,
    pub(crate) registered: std::sync::atomic::AtomicBool,
    rx: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    waiting: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
}

impl WebhookInbox {
    /// Waits up to `timeout` for updates; returns those that arrived (at most 100).
    pub(crate) async fn take(&self, timeout: Duration) -> Option<Vec<teloxide::types::Update>> {
        let mut rx = self.rx.lock().await;
        let first = match tokio::time::timeout(timeout, rx.recv()).await {
            Err(_elapsed) => return Some(Vec::new()),
            Ok(None) => return None,
            Ok(Some(d)) => d,
        };
        let mut batch = vec![first];
        while batch.len() < 100
            && let Ok(d) = rx.try_recv()
        {
            batch.push(d);
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        Some(
            batch
                .into_iter()
                .map(|d| {
                    waiting
                        .entry(u64::from(d.update.id.0))
                        .or_default()
                        .push(d.secured);
                    d.update
                })
                .collect(),
        )
    }

    /// Every update up to `cursor` is secured: answer their requests 200.
    pub(crate) fn confirm(&self, cursor: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let later = waiting.split_off(&cursor.saturating_add(1));
        for sender in std::mem::replace(&mut *waiting, later)
            .into_values()
            .flatten()
        {
            let _ = sender.send(());
        }
    }
}

/// The HTTP side.
#[derive(Debug)]
pub struct WebhookServer {
    path: String,
    secret: WebhookSecret,
    tx: mpsc::Sender<Delivery>,
    confirm_timeout: Duration,
}

/// Makes the inbox (for [`crate::telegram::Telegram::with_webhook`]) and the server for a
/// webhook at `public_url` (its path is the path served) with `secret`.
pub fn webhook(public_url: url::Url, secret: WebhookSecret) -> (Arc<WebhookInbox>, WebhookServer) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let server = WebhookServer {
        path: public_url.path().to_owned(),
        secret: secret.clone(),
        tx,
        confirm_timeout: CONFIRM_TIMEOUT,
    };
    let inbox = Arc::new(WebhookInbox {
        url: public_url,
        secret,
        registered: std::sync::atomic::AtomicBool::new(false),
        rx: tokio::sync::Mutex::new(rx),
        waiting: Mutex::new(BTreeMap::new()),
    });
    (inbox, server)
}

impl WebhookServer {
    /// How long a request waits for its update to be secured (tests shorten it).
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
        let this = Arc::new(self);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    stop_tx.send_replace(true);
                    return;
                }
                accepted = listener.accept() => {
                    let Ok((tcp, _peer)) = accepted else { continue };
                    let this = Arc::clone(&this);
                    let mut stop = stop_rx.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let this = Arc::clone(&this);
                            async move { Ok::<_, Infallible>(this.handle(req).await) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service);
                        tokio::select! {
                            _ = conn => {}
                            _ = stop.wait_for(|s| *s) => {}
                        }
                    });
                }
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != self.path {
            return status(StatusCode::NOT_FOUND);
        }
        if req.method() != Method::POST {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let authentic = req
            .headers()
            .get(SECRET_HEADER)
            .is_some_and(|v| self.secret.matches(v.as_bytes()));
        if !authentic {
            tracing::warn!(
                code = "webhook_secret_invalid",
                "Telegram webhook request without the right secret refused"
            );
            return status(StatusCode::UNAUTHORIZED);
        }
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return status(StatusCode::PAYLOAD_TOO_LARGE);
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_too_big_or_broken) => return status(StatusCode::PAYLOAD_TOO_LARGE),
        };
        let update: teloxide::types::Update = match serde_json::from_slice(&body) {
            Ok(u) => u,
            Err(_malformed) => {
                tracing::warn!(code = "webhook_update_invalid", "malformed webhook update");
                return status(StatusCode::BAD_REQUEST);
            }
        };
        let (secured, done) = oneshot::channel();
        if self.tx.try_send(Delivery { update, secured }).is_err() {
            // Full or stopping: Telegram delivers it again later.
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }
        match tokio::time::timeout(self.confirm_timeout, done).await {
            Ok(Ok(())) => status(StatusCode::OK),
            Ok(Err(_)) | Err(_) => status(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secrets_follow_telegrams_rules_and_compare_exactly() {
        assert!(WebhookSecret::new("abc_DEF-123").is_ok());
        assert!(WebhookSecret::new("").is_err());
        assert!(WebhookSecret::new(&"a".repeat(257)).is_err());
        assert!(WebhookSecret::new("with space").is_err());
        assert!(WebhookSecret::new("semi;colon").is_err());
        let s = WebhookSecret::new("abc_DEF-123").unwrap();
        assert!(s.matches(b"abc_DEF-123"));
        assert!(!s.matches(b"abc_DEF-124"));
        assert!(!s.matches(b"abc_DEF-12"));
        assert!(!s.matches(b""));
        let r = WebhookSecret::random().unwrap();
        assert_eq!(r.expose().len(), 64);
        assert!(WebhookSecret::new(r.expose()).is_ok());
        assert_eq!(format!("{r:?}"), "WebhookSecret(<redacted>)");
    }
}
