//! The web chat's HTTP server (axum, HTTP/1.1, loopback).
//!
//! What it does: serves the page (`GET /`, `/app.js`, `/app.css`, embedded) and the API:
//! `POST /api/messages` (the user's text), `POST /api/press` (a button press), `GET
//! /api/messages?after=<version>` (the conversation changed after a version, long-polled up to
//! 25 s). Every request must name this server in `Host` (`127.0.0.1`, `localhost` or `[::1]`
//! with the bound port; anything else is a DNS-rebinding attempt: 421); a `POST` whose `Origin`
//! is present must come from that same origin (403); every `/api/` request must carry the token
//! as `Authorization: Bearer` (401, compared in constant time). Bodies are at most 16 KiB (413)
//! and JSON with no unknown fields; at most [`MAX_POLLS`] long polls are open at once. Every
//! response carries a strict CSP, `nosniff`, `no-referrer` and `no-store`. Errors are
//! `{"error": {"code", "correlation_id"}}`, logged with the same correlation id and never with
//! internals. A text or press is answered only once the inbound loop secured it
//! ([`super::WebChat`]).
//!
//! What it does not do: no cookies or sessions (the page holds the token in memory, so there
//! is no ambient credential to forge a request with), no CORS (there is no cross-origin
//! caller), no TLS (loopback only; [`crate::config`] refuses any other address), and it never
//! logs the token or the request's headers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use protocol::CorrelationId;
use protocol::message::MAX_CHAT_TEXT;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use super::token::WebToken;
use super::{CHAT_ID, QueueError, Secured, WebChat};
use crate::channel::{Channel as _, InboundKind};
use crate::inbound::{Action, decide};

/// The largest request body, in bytes.
pub const MAX_BODY: usize = 16 * 1024;
/// The longest a long poll waits.
pub const MAX_WAIT: Duration = Duration::from_secs(25);
/// Most long polls open at once (several tabs are fine; more is a runaway page).
pub const MAX_POLLS: usize = 16;
/// How long a text or press may take to be secured before the page is told to retry.
const SECURE_WAIT: Duration = Duration::from_secs(10);

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

#[derive(Debug, Clone)]
struct App {
    chat: WebChat,
    token: WebToken,
    port: u16,
    stop: watch::Receiver<bool>,
    polls: Arc<Semaphore>,
}

/// Serves the web chat on `listener` until `shutdown` resolves (open long polls and waits end
/// at once; then in-flight requests are drained).
pub async fn serve(
    listener: tokio::net::TcpListener,
    chat: WebChat,
    token: WebToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let (stop_tx, stop) = watch::channel(false);
    let app = router(chat, token, port, stop);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop_tx.send_replace(true);
        })
        .await
}

/// The routes, for a server bound to `port`.
fn router(chat: WebChat, token: WebToken, port: u16, stop: watch::Receiver<bool>) -> Router {
    let app = App {
        chat,
        token,
        port,
        stop,
        polls: Arc::new(Semaphore::new(MAX_POLLS)),
    };
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/messages", get(list).post(send_text))
        .route("/api/press", post(press))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

// ---------------------------------------------------------------------------------------------
// Checks (pure)

/// Whether `host` (a `Host` header or a request URI's authority) names this server.
pub fn host_allowed(host: &str, port: u16) -> bool {
    let host = host.to_ascii_lowercase();
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|name| host == format!("{name}:{port}"))
}

/// Whether a POST's `Origin` is the page's own origin (`http://` + the checked host).
pub fn origin_allowed(origin: &str, host: &str) -> bool {
    origin.eq_ignore_ascii_case(&format!("http://{host}"))
}

/// The bearer token of an `Authorization` header, if it has that form.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A page-chosen id: 8 to 64 of `A-Za-z0-9-`.
pub fn id_allowed(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

// ---------------------------------------------------------------------------------------------
// Responses

/// An error answer: a status, a stable code and a fresh correlation id (logged with the code).
fn error(status: StatusCode, code: &'static str) -> Response {
    let correlation_id = CorrelationId::random();
    tracing::info!(channel = "web", code, %correlation_id, status = status.as_u16(), "web chat request refused");
    let body = json!({"error": {"code": code, "correlation_id": correlation_id.to_string()}});
    (status, Json(body)).into_response()
}

fn set_security_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
}

/// A refused request: its status and code (the response is built by [`error`]).
type Refusal = (StatusCode, &'static str);

/// Host, origin and token checks before any handler; security headers on every answer.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let mut response = match check(&app, &req) {
        Ok(()) => next.run(req).await,
        Err((status, code)) => {
            let mut r = error(status, code);
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            r
        }
    };
    set_security_headers(response.headers_mut());
    response
}

fn check(app: &App, req: &Request) -> Result<(), Refusal> {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| host_allowed(h, app.port))
        .ok_or((StatusCode::MISDIRECTED_REQUEST, "host_not_allowed"))?;
    if let Some(authority) = req.uri().authority()
        && !host_allowed(authority.as_str(), app.port)
    {
        return Err((StatusCode::MISDIRECTED_REQUEST, "host_not_allowed"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let foreign = headers
            .get(header::ORIGIN)
            .is_some_and(|o| !o.to_str().is_ok_and(|o| origin_allowed(o, host)));
        if foreign {
            return Err((StatusCode::FORBIDDEN, "origin_not_allowed"));
        }
    }
    if req.uri().path().starts_with("/api/") {
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .is_some_and(|t| app.token.matches(t));
        if !authorized {
            return Err((StatusCode::UNAUTHORIZED, "unauthorized"));
        }
    }
    Ok(())
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    static_file("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    static_file("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    static_file("text/css; charset=utf-8", APP_CSS)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found")
}

/// A JSON body: the right content type, within the limit, no unknown fields.
fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Refusal> {
    let body = body.map_err(|rejected| {
        if rejected.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        } else {
            (StatusCode::BAD_REQUEST, "request_invalid")
        }
    })?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_type_invalid"));
    }
    serde_json::from_slice(&body).map_err(|_invalid| (StatusCode::BAD_REQUEST, "request_invalid"))
}

/// Waits until the inbound loop secured the request (or the wait or the server ends): the
/// outcome, or the refusal to answer with.
async fn secured(
    app: &App,
    waiting: Result<tokio::sync::oneshot::Receiver<Secured>, QueueError>,
) -> Result<Secured, Refusal> {
    let Ok(waiting) = waiting else {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "busy"));
    };
    let mut stop = app.stop.clone();
    let outcome = tokio::select! {
        r = tokio::time::timeout(SECURE_WAIT, waiting) => r.ok().and_then(Result::ok),
        _ = stop.wait_for(|s| *s) => None,
    };
    outcome.ok_or((StatusCode::SERVICE_UNAVAILABLE, "not_secured"))
}

fn accepted(event_id: &str) -> Response {
    (StatusCode::ACCEPTED, Json(json!({"event_id": event_id}))).into_response()
}

// ---------------------------------------------------------------------------------------------
// The API

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendText {
    client_id: String,
    text: String,
}

async fn send_text(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: SendText = match read_json(&headers, body) {
        Ok(r) => r,
        Err((status, code)) => return error(status, code),
    };
    if !id_allowed(&req.client_id) {
        return error(StatusCode::BAD_REQUEST, "client_id_invalid");
    }
    if req.text.len() > MAX_CHAT_TEXT {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "text_too_long");
    }
    if req.text.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "text_empty");
    }
    let kind = InboundKind::Text {
        sender: app.chat.user().to_owned(),
        chat_id: CHAT_ID.to_owned(),
        private: true,
        message_id: req.client_id.clone(),
        text: req.text.clone(),
    };
    // The inbound loop decides again (and applies the configured length and rate limits, with
    // a notice on the page); this only turns what it would drop into a clear answer.
    match decide(
        app.chat.name(),
        &app.chat.allowlist(),
        &precheck(),
        &kind,
        true,
    ) {
        Action::Say(_) => {}
        _ => return error(StatusCode::BAD_REQUEST, "message_invalid"),
    }
    // Shown at once (and once: a retry with the same client id changes nothing), so the
    // conversation reads in order even if the answer comes before this request's.
    match app
        .chat
        .history()
        .record_user(&req.client_id, &req.text)
        .await
    {
        Ok(Some(version)) => app.chat.changed(version),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(channel = "web", code = e.code(), error = %e, "cannot record the user's text");
            return error(StatusCode::SERVICE_UNAVAILABLE, "history_unavailable");
        }
    }
    let event_id = format!("web-{}", req.client_id);
    match secured(&app, app.chat.submit(event_id.clone(), kind)).await {
        Ok(_) => accepted(&event_id),
        Err((status, code)) => error(status, code),
    }
}

/// The limits of the early check: validity only (the inbound loop applies the real ones).
fn precheck() -> crate::limits::Limits {
    crate::limits::Limits {
        max_text_chars: usize::MAX,
        ..crate::limits::Limits::default()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Press {
    message_id: String,
    payload: String,
}

async fn press(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: Press = match read_json(&headers, body) {
        Ok(r) => r,
        Err((status, code)) => return error(status, code),
    };
    let message_ok = (1..=72).contains(&req.message_id.len())
        && req
            .message_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !message_ok {
        return error(StatusCode::BAD_REQUEST, "message_id_invalid");
    }
    let mut nonce = [0u8; 12];
    if getrandom::getrandom(&mut nonce).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "random_unavailable");
    }
    let press_id = format!("wp-{}", hex::encode(nonce));
    let kind = InboundKind::Button {
        sender: app.chat.user().to_owned(),
        chat_id: Some(CHAT_ID.to_owned()),
        private: true,
        message_id: Some(req.message_id),
        press_id: press_id.clone(),
        payload: req.payload,
    };
    match decide(
        app.chat.name(),
        &app.chat.allowlist(),
        &precheck(),
        &kind,
        true,
    ) {
        Action::Press { .. } => {}
        _ => return error(StatusCode::BAD_REQUEST, "button_payload_invalid"),
    }
    let event_id = format!("web-{press_id}");
    let outcome = secured(&app, app.chat.submit(event_id.clone(), kind)).await;
    match outcome {
        Ok(Secured::Done) => accepted(&event_id),
        Ok(Secured::Refused) => error(StatusCode::CONFLICT, "button_not_shown"),
        Err((status, code)) => {
            app.chat.forget_press(&press_id);
            error(status, code)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

async fn list(State(app): State<App>, query: Result<Query<Since>, QueryRejection>) -> Response {
    let Ok(Query(since)) = query else {
        return error(StatusCode::BAD_REQUEST, "request_invalid");
    };
    let Ok(_poll) = app.polls.clone().try_acquire_owned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "too_many_polls");
    };
    let wait = since
        .wait_ms
        .map_or(MAX_WAIT, Duration::from_millis)
        .min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut versions = app.chat.versions();
    let mut stop = app.stop.clone();
    loop {
        let latest = *versions.borrow_and_update();
        // A page that saw a newer version than there is (the history was reset) starts over.
        let after = since.after.unwrap_or(0);
        let after = if after > latest { 0 } else { after };
        let messages = match app.chat.history().changed_after(after).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(channel = "web", code = e.code(), error = %e, "cannot read the history");
                return error(StatusCode::SERVICE_UNAVAILABLE, "history_unavailable");
            }
        };
        if !messages.is_empty() || tokio::time::Instant::now() >= deadline || *stop.borrow() {
            let version = messages.last().map_or(after, |m| m.version);
            return Json(json!({"version": version, "messages": messages})).into_response();
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = versions.changed() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_origins_and_ids() {
        for (host, ok) in [
            ("127.0.0.1:8765", true),
            ("localhost:8765", true),
            ("LOCALHOST:8765", true),
            ("[::1]:8765", true),
            ("127.0.0.1", false),
            ("127.0.0.1:8766", false),
            ("evil.example:8765", false),
            ("127.0.0.1.evil.example:8765", false),
            ("", false),
        ] {
            assert_eq!(host_allowed(host, 8765), ok, "{host}");
        }
        assert!(origin_allowed("http://127.0.0.1:8765", "127.0.0.1:8765"));
        assert!(!origin_allowed("http://localhost:8765", "127.0.0.1:8765"));
        assert!(!origin_allowed("https://127.0.0.1:8765", "127.0.0.1:8765"));
        assert!(!origin_allowed("null", "127.0.0.1:8765"));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert!(id_allowed("0f8e2c1a-1111-4e4e-9a9a-000000000000"));
        assert!(!id_allowed("short"));
        assert!(!id_allowed("has space"));
        assert!(!id_allowed(&"a".repeat(65)));
        assert!(!id_allowed("a.b.c.d.e.f"));
    }
}
