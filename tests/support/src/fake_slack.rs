//! A Slack double (Web API + Socket Mode), written to Slack's reference
//! (<https://api.slack.com/methods>, <https://api.slack.com/apis/socket-mode>).
//!
//! What it does: [`FakeSlack::start`] listens on two free `127.0.0.1` ports, plain HTTP for the
//! Web API (point a client at [`FakeSlack::api_url`], `http://127.0.0.1:<port>/api`, calls go
//! to `<api_url>/<method>`) and plain WebSocket for Socket Mode.
//!
//! Web API (`POST`, parameters as JSON or `application/x-www-form-urlencoded`, the token as
//! `Authorization: Bearer` or a `token` parameter; answers are HTTP 200 with
//! `{"ok":true,...}` or `{"ok":false,"error":"..."}`, as Slack's are):
//! - `auth.test` (bot token): the bot's ids;
//! - `apps.connections.open` (app-level `xapp-` token; a bot token gets
//!   `not_allowed_token_type`): `{"ok":true,"url":"ws://127.0.0.1:<port>/link/?ticket=…"}`;
//! - `chat.postMessage`: `channel_not_found` for a channel the double does not know (channels
//!   become known when a user writes in them, or with [`FakeSlack::add_channel`]),
//!   `is_archived` ([`FakeSlack::archive`]), `no_text` without text and blocks,
//!   `invalid_blocks` for blocks that are not an array, more than 50 blocks, a section text
//!   over 3000 characters, a button value over 2000 characters, or duplicate `action_id`s;
//!   records the post ([`FakeSlack::posted`], blocks kept as JSON) and answers `channel`,
//!   `ts` and `message`;
//! - `chat.update`: `channel_not_found`, `message_not_found` for an unknown `ts`; replaces the
//!   text and, when given, the blocks (Slack keeps the old blocks when `blocks` is absent);
//!   recorded in [`FakeSlack::updates`];
//! - a missing token → `not_authed`, a wrong one → `invalid_auth`, an unknown method →
//!   `unknown_method`;
//! - [`FakeSlack::rate_limit_next`]: the next `n` calls get HTTP 429 with a `Retry-After`
//!   header and `{"ok":false,"error":"ratelimited"}`; [`FakeSlack::set_down`]: every call gets
//!   HTTP 503 (the port stays bound).
//!
//! Socket Mode: each connection gets `hello`, then every envelope not yet acknowledged and not
//! in flight on another open connection, in order: `events_api` envelopes queued by
//! [`FakeSlack::user_says`] (an `event_callback` with a `message` event, `channel_type` `im`
//! for `D…` channels, `channel` otherwise; [`FakeSlack::message_event`] merges extra fields such
//! as a `subtype` or `bot_id` into it) and `interactive` envelopes queued by
//! [`FakeSlack::user_presses`] (a `block_actions` payload with the pressed button as shown on
//! the message; checked key by key against Slack's `BlockActionPayload.json` in
//! `tests/support/tests/fake_slack.rs`). `{"envelope_id":…}` frames acknowledge
//! ([`FakeSlack::acks`]). When a connection closes, the envelopes it did not acknowledge are
//! **redelivered** on the next connection with `retry_attempt` incremented and
//! `retry_reason: "timeout"`, as Slack does. [`FakeSlack::disconnect`] sends
//! `{"type":"disconnect","reason":"refresh_requested"}` on every open connection and closes
//! it; [`FakeSlack::set_ignore_acks`] drops acknowledgements (as if lost in transit).
//!
//! What it does not do (known deviations): no TLS, Events API HTTP delivery (tests sign and
//! POST their own requests), `response_url`, slash commands, views or any method not listed.
//! The WebSocket path and ticket are not checked. Real Slack also retries an unacknowledged
//! envelope on the *same* connection after a few seconds; the double retries only on
//! reconnection. Message `ts` values are synthetic (`1700000000.000100`, counting up). Block
//! validation covers only the limits listed above, and `mrkdwn` is stored as sent. `user_presses`
//! does not check that the value is on a button of that message (so tests can forge presses);
//! for a value not shown, the action has `action_id` `forged`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// The bot token the double accepts.
pub const BOT_TOKEN: &str = "xoxb-1111111111-2222222222-fakeBotTokenForTests";
/// The app-level token the double accepts for Socket Mode.
pub const APP_TOKEN: &str = "xapp-1-A0FAKEAPP1-3333333333-fakeAppLevelTokenForTests";
/// The workspace id.
pub const TEAM_ID: &str = "T0FAKETEAM";
/// The app id.
pub const APP_ID: &str = "A0FAKEAPP1";
/// The bot's user id.
pub const BOT_USER_ID: &str = "U0FAKEBOT1";
/// The bot id.
pub const BOT_ID: &str = "B0FAKEBOT1";

const MAX_REQUEST: usize = 1024 * 1024;

/// One successful `chat.postMessage`.
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    /// The channel.
    pub channel: String,
    /// The message's `ts`.
    pub ts: String,
    /// The `text` as sent.
    pub text: String,
    /// The `blocks` as sent (`Null` if none).
    pub blocks: Value,
}

/// One successful `chat.update`.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    /// The channel.
    pub channel: String,
    /// The updated message's `ts`.
    pub ts: String,
    /// The new `text`.
    pub text: String,
    /// The new `blocks` (`Null`: not given, the old ones were kept).
    pub blocks: Value,
}

#[derive(Debug)]
struct Envelope {
    id: String,
    kind: &'static str,
    payload: Value,
    deliveries: u32,
    acked: bool,
    /// The open connection it is in flight on.
    on: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    counter: u64,
    channels: HashSet<String>,
    archived: HashSet<String>,
    /// Messages by (channel, ts): their current JSON.
    messages: HashMap<(String, String), Value>,
    posted: Vec<Posted>,
    updates: Vec<Updated>,
    calls: Vec<String>,
    envelopes: Vec<Envelope>,
    acks: Vec<String>,
    rate_limited: Option<(u32, u64)>,
    down: bool,
    ignore_acks: bool,
    disconnects: u64,
    connections: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped on every change the WebSocket connections care about.
    changed: watch::Sender<u64>,
    ws_addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A running Slack double; stopped on drop.
#[derive(Debug)]
pub struct FakeSlack {
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl FakeSlack {
    /// Starts on two free 127.0.0.1 ports.
    pub async fn start() -> anyhow::Result<FakeSlack> {
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the fake Slack Web API")?;
        let ws = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the fake Slack Socket Mode server")?;
        let http_addr = http.local_addr()?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed,
            ws_addr: ws.local_addr()?,
        });
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve_http(http, Arc::clone(&shared), stop_rx.clone()));
        tokio::spawn(serve_ws(ws, Arc::clone(&shared), stop_rx));
        Ok(FakeSlack {
            http_addr,
            shared,
            stop,
        })
    }

    /// The Web API base: `http://127.0.0.1:<port>/api` (no trailing slash).
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.http_addr)
    }

    /// Registers a channel (`C…` public, `D…` direct message) so messages can be posted to it.
    pub fn add_channel(&self, channel: &str) {
        self.shared.lock().channels.insert(channel.to_owned());
    }

    /// Archives a channel: posts to it fail with `is_archived`.
    pub fn archive(&self, channel: &str) {
        self.shared.lock().archived.insert(channel.to_owned());
    }

    /// Queues an `events_api` envelope: `user` wrote `text` in `channel` (`D…`: a direct
    /// message with the app). Returns the envelope id.
    pub fn user_says(&self, user: &str, channel: &str, text: &str) -> String {
        self.message_event(user, channel, json!({ "text": text }))
    }

    /// Queues an `events_api` envelope whose `message` event is the one
    /// [`FakeSlack::user_says`] would send with `extra` merged over it (`{"subtype":
    /// "message_changed"}`, a `bot_id`, …). Returns the envelope id.
    pub fn message_event(&self, user: &str, channel: &str, extra: Value) -> String {
        let mut s = self.shared.lock();
        let text = extra
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let (n, mut payload) = message_payload(&mut s, user, channel, &text);
        if let (Some(event), Value::Object(extra)) = (
            payload.get_mut("event").and_then(Value::as_object_mut),
            extra,
        ) {
            event.extend(extra);
        }
        let id = queue(&mut s, n, "events_api", payload);
        drop(s);
        self.shared.bump();
        id
    }

    /// The `event_callback` payload of an envelope queued earlier (for signing and POSTing it
    /// to an Events API endpoint in tests).
    pub fn envelope_payload(&self, envelope_id: &str) -> Option<Value> {
        let s = self.shared.lock();
        s.envelopes
            .iter()
            .find(|e| e.id == envelope_id)
            .map(|e| e.payload.clone())
    }

    /// Queues an `interactive` `block_actions` envelope: `user` pressed the button whose
    /// `value` is `value` on the message `message_ts` in `channel`. Returns the envelope id.
    pub fn user_presses(&self, user: &str, channel: &str, message_ts: &str, value: &str) -> String {
        let payload = self.press_payload(user, channel, message_ts, value);
        let mut s = self.shared.lock();
        let n = s.next();
        let id = queue(&mut s, n, "interactive", payload);
        drop(s);
        self.shared.bump();
        id
    }

    /// The `block_actions` payload a press would carry (also what [`FakeSlack::user_presses`]
    /// queues).
    pub fn press_payload(&self, user: &str, channel: &str, message_ts: &str, value: &str) -> Value {
        let mut s = self.shared.lock();
        let n = s.next();
        let message = s
            .messages
            .get(&(channel.to_owned(), message_ts.to_owned()))
            .cloned();
        let shown = message.as_ref().and_then(|m| {
            m.get("blocks")?.as_array()?.iter().find_map(|b| {
                let block_id = b.get("block_id").cloned().unwrap_or(json!("fake"));
                b.get("elements")?.as_array()?.iter().find_map(|e| {
                    (e.get("value").and_then(Value::as_str) == Some(value))
                        .then(|| (block_id.clone(), e.clone()))
                })
            })
        });
        let (block_id, action_id, text) = match shown {
            Some((block_id, e)) => (
                block_id,
                e.get("action_id").cloned().unwrap_or(json!("")),
                e.get("text").cloned().unwrap_or(json!({})),
            ),
            None => (
                json!("forged"),
                json!("forged"),
                json!({"type": "plain_text", "text": "Forged", "emoji": true}),
            ),
        };
        let message = message.unwrap_or_else(|| {
            json!({
                "type": "message",
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "text": "",
                "ts": message_ts,
                "team": TEAM_ID,
                "blocks": [],
            })
        });
        json!({
            "type": "block_actions",
            "user": {
                "id": user,
                "username": format!("user{}", user.to_lowercase()),
                "name": format!("user{}", user.to_lowercase()),
                "team_id": TEAM_ID,
            },
            "api_app_id": APP_ID,
            "token": "fakeVerificationToken0001",
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": false,
            },
            "trigger_id": format!("{n}.1111111111.fake{n:08x}"),
            "team": {"id": TEAM_ID, "domain": "fake-workspace"},
            "is_enterprise_install": false,
            "channel": {
                "id": channel,
                "name": if channel.starts_with('D') { "directmessage" } else { "general" },
            },
            "message": message,
            "state": {"values": {}},
            "response_url": format!("https://hooks.slack.com/actions/{TEAM_ID}/{n}/fakeResponseUrl"),
            "actions": [{
                "action_id": action_id,
                "block_id": block_id,
                "text": text,
                "value": value,
                "type": "button",
                "action_ts": format!("{}.{:06}", 1_700_000_000 + n, n),
            }],
        })
    }

    /// Every successful `chat.postMessage`, in order.
    pub fn posted(&self) -> Vec<Posted> {
        self.shared.lock().posted.clone()
    }

    /// Every successful `chat.update`, in order.
    pub fn updates(&self) -> Vec<Updated> {
        self.shared.lock().updates.clone()
    }

    /// A message as it is now (after updates).
    pub fn message(&self, channel: &str, ts: &str) -> Option<Value> {
        self.shared
            .lock()
            .messages
            .get(&(channel.to_owned(), ts.to_owned()))
            .cloned()
    }

    /// Every acknowledged envelope id, in order (repeats included).
    pub fn acks(&self) -> Vec<String> {
        self.shared.lock().acks.clone()
    }

    /// Whether this envelope was acknowledged.
    pub fn is_acked(&self, envelope_id: &str) -> bool {
        self.shared
            .lock()
            .envelopes
            .iter()
            .any(|e| e.id == envelope_id && e.acked)
    }

    /// How many times this envelope was sent.
    pub fn deliveries(&self, envelope_id: &str) -> u32 {
        self.shared
            .lock()
            .envelopes
            .iter()
            .find(|e| e.id == envelope_id)
            .map_or(0, |e| e.deliveries)
    }

    /// Every Web API method called (after the token was recognised), in order.
    pub fn calls(&self) -> Vec<String> {
        self.shared.lock().calls.clone()
    }

    /// How many Socket Mode connections were accepted.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Makes the next `n` Web API calls fail with 429 and `Retry-After: retry_after_secs`.
    pub fn rate_limit_next(&self, n: u32, retry_after_secs: u64) {
        self.shared.lock().rate_limited = Some((n, retry_after_secs));
    }

    /// While down, every Web API call gets HTTP 503.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
    }

    /// While set, acknowledgements are dropped (as if lost).
    pub fn set_ignore_acks(&self, ignore: bool) {
        self.shared.lock().ignore_acks = ignore;
    }

    /// Sends `disconnect` (`refresh_requested`) on every open connection and closes them.
    pub fn disconnect(&self) {
        self.shared.lock().disconnects += 1;
        self.shared.bump();
    }

    /// Waits (bounded) until `envelope_id` is acknowledged.
    pub async fn wait_for_ack(&self, envelope_id: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.is_acked(envelope_id) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_acked(envelope_id)
    }
}

fn ts(n: u64) -> String {
    format!("1700000000.{:06}", 100 + n)
}

/// An `event_callback` with a plain user `message` event (`channel_type` `im` for `D…`
/// channels); registers the channel.
fn message_payload(s: &mut State, user: &str, channel: &str, text: &str) -> (u64, Value) {
    s.channels.insert(channel.to_owned());
    let n = s.next();
    let ts = ts(n);
    let event_id = format!("Ev0FAKE{n:08}");
    let channel_type = if channel.starts_with('D') {
        "im"
    } else {
        "channel"
    };
    let payload = json!({
        "token": "fakeVerificationToken0001",
        "team_id": TEAM_ID,
        "context_team_id": TEAM_ID,
        "context_enterprise_id": null,
        "api_app_id": APP_ID,
        "event": {
            "user": user,
            "type": "message",
            "ts": ts,
            "client_msg_id": format!("0b9a1d3e-0000-4000-8000-{n:012}"),
            "text": text,
            "team": TEAM_ID,
            "blocks": [{
                "type": "rich_text",
                "block_id": format!("rt{n}"),
                "elements": [{
                    "type": "rich_text_section",
                    "elements": [{"type": "text", "text": text}],
                }],
            }],
            "channel": channel,
            "event_ts": ts,
            "channel_type": channel_type,
        },
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1_700_000_000 + n,
        "authorizations": [{
            "enterprise_id": null,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "is_bot": true,
            "is_enterprise_install": false,
        }],
        "is_ext_shared_channel": false,
        "event_context": format!("4-fake-event-context-{n}"),
    });
    (n, payload)
}

fn queue(s: &mut State, n: u64, kind: &'static str, payload: Value) -> String {
    let id = format!("{n:08x}-fake-4e5b-9a1c-envelope{n:04}");
    s.envelopes.push(Envelope {
        id: id.clone(),
        kind,
        payload,
        deliveries: 0,
        acked: false,
        on: None,
    });
    id
}

// ---------------------------------------------------------------------------------------------
// Socket Mode

async fn serve_ws(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                let mut cut = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = connection(tcp, &shared) => {}
                        _ = cut.wait_for(|d| *d) => {}
                    }
                });
            }
            _ = stopping.wait_for(|d| *d) => return,
        }
    }
}

async fn connection(tcp: tokio::net::TcpStream, shared: &Arc<Shared>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let mut changed = shared.changed.subscribe();
    let (me, disconnects_at_start) = {
        let mut s = shared.lock();
        s.connections += 1;
        (s.connections, s.disconnects)
    };
    let hello = json!({
        "type": "hello",
        "num_connections": 1,
        "debug_info": {"host": "applink-fake-1", "build_number": 1, "approximate_connection_time": 18060},
        "connection_info": {"app_id": APP_ID},
    });
    if ws
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        // Everything to send now: a disconnect, or envelopes not in flight elsewhere.
        let (disconnect, frames) = {
            let mut s = shared.lock();
            let disconnect = s.disconnects > disconnects_at_start;
            let mut frames = Vec::new();
            if !disconnect {
                for e in s
                    .envelopes
                    .iter_mut()
                    .filter(|e| !e.acked && e.on.is_none())
                {
                    e.on = Some(me);
                    frames.push(json!({
                        "envelope_id": e.id,
                        "payload": e.payload,
                        "type": e.kind,
                        "accepts_response_payload": false,
                        "retry_attempt": e.deliveries,
                        "retry_reason": if e.deliveries == 0 { "" } else { "timeout" },
                    }));
                    e.deliveries += 1;
                }
            }
            (disconnect, frames)
        };
        if disconnect {
            let frame = json!({
                "type": "disconnect",
                "reason": "refresh_requested",
                "debug_info": {"host": "applink-fake-1"},
            });
            let _ = ws.send(Message::Text(frame.to_string().into())).await;
            let _ = ws.close(None).await;
            break;
        }
        let mut failed = false;
        for f in frames {
            if ws.send(Message::Text(f.to_string().into())).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            break;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { break },
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let ack = serde_json::from_str::<Value>(t.as_str())
                        .ok()
                        .and_then(|v| v.get("envelope_id").and_then(Value::as_str).map(str::to_owned));
                    if let Some(id) = ack {
                        let mut s = shared.lock();
                        if !s.ignore_acks {
                            s.acks.push(id.clone());
                            if let Some(e) = s.envelopes.iter_mut().find(|e| e.id == id) {
                                e.acked = true;
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // Whatever was in flight here and not acknowledged goes out again on the next connection.
    {
        let mut s = shared.lock();
        for e in s.envelopes.iter_mut().filter(|e| e.on == Some(me)) {
            e.on = None;
        }
    }
    shared.bump();
}

// ---------------------------------------------------------------------------------------------
// Web API

async fn serve_http(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                let mut cut = stop.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(req, &shared).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = cut.wait_for(|d| *d) => {}
                    }
                });
            }
            _ = stopping.wait_for(|d| *d) => return,
        }
    }
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn err(error: &str) -> Value {
    json!({"ok": false, "error": error})
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header(hyper::header::CONTENT_TYPE).to_ascii_lowercase();
    let authorization = header(hyper::header::AUTHORIZATION);
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_too_large) => return json_response(413, &err("request_too_large")),
    };
    {
        let mut s = shared.lock();
        if s.down {
            let mut r = Response::new(Full::new(Bytes::from_static(b"Service Unavailable")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        if let Some((n, after)) = s.rate_limited {
            s.rate_limited = (n > 1).then(|| (n - 1, after));
            let mut r = json_response(429, &err("ratelimited"));
            if let Ok(v) = hyper::header::HeaderValue::from_str(&after.to_string()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    let Some(method) = path.strip_prefix("/api/") else {
        return json_response(404, &err("unknown_method"));
    };
    let mut params = Map::new();
    if content_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => params = m,
            _ if body.iter().all(u8::is_ascii_whitespace) => {}
            _ => return json_response(200, &err("invalid_json")),
        }
    } else {
        for (k, v) in form_urlencoded::parse(&body) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let token = authorization
        .strip_prefix("Bearer ")
        .map(str::to_owned)
        .or_else(|| {
            params
                .get("token")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let Some(token) = token else {
        return json_response(200, &err("not_authed"));
    };
    if token != BOT_TOKEN && token != APP_TOKEN {
        return json_response(200, &err("invalid_auth"));
    }
    let answer = dispatch(shared, method, &token, &params);
    json_response(200, &answer)
}

fn dispatch(shared: &Shared, method: &str, token: &str, params: &Map<String, Value>) -> Value {
    let mut s = shared.lock();
    s.calls.push(method.to_owned());
    let string = |name: &str| params.get(name).and_then(Value::as_str).map(str::to_owned);
    match method {
        "apps.connections.open" => {
            if token != APP_TOKEN {
                return err("not_allowed_token_type");
            }
            let n = s.next();
            json!({"ok": true, "url": format!("ws://{}/link/?ticket=fake-ticket-{n}&app_id={APP_ID}", shared.ws_addr)})
        }
        "auth.test" | "chat.postMessage" | "chat.update" if token != BOT_TOKEN => {
            err("not_allowed_token_type")
        }
        "auth.test" => json!({
            "ok": true,
            "url": "https://fake-workspace.slack.com/",
            "team": "Fake Workspace",
            "user": "assistant",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": false,
        }),
        "chat.postMessage" => {
            let Some(channel) = string("channel").filter(|c| s.channels.contains(c)) else {
                return err("channel_not_found");
            };
            if s.archived.contains(&channel) {
                return err("is_archived");
            }
            let text = string("text").unwrap_or_default();
            let blocks = match blocks_param(params) {
                Ok(b) => b,
                Err(e) => return err(e),
            };
            if text.trim().is_empty() && blocks.is_null() {
                return err("no_text");
            }
            let n = s.next();
            let ts = ts(n);
            let mut message = json!({
                "user": BOT_USER_ID,
                "type": "message",
                "ts": ts,
                "bot_id": BOT_ID,
                "app_id": APP_ID,
                "text": text,
                "team": TEAM_ID,
                "bot_profile": {"id": BOT_ID, "app_id": APP_ID, "name": "assistant", "team_id": TEAM_ID, "deleted": false},
            });
            if let (Some(m), false) = (message.as_object_mut(), blocks.is_null()) {
                m.insert("blocks".into(), blocks.clone());
            }
            s.messages
                .insert((channel.clone(), ts.clone()), message.clone());
            s.posted.push(Posted {
                channel: channel.clone(),
                ts: ts.clone(),
                text,
                blocks,
            });
            json!({"ok": true, "channel": channel, "ts": ts, "message": message})
        }
        "chat.update" => {
            let Some(channel) = string("channel").filter(|c| s.channels.contains(c)) else {
                return err("channel_not_found");
            };
            let ts = string("ts").unwrap_or_default();
            let blocks = match blocks_param(params) {
                Ok(b) => b,
                Err(e) => return err(e),
            };
            let text = string("text").unwrap_or_default();
            let Some(message) = s.messages.get_mut(&(channel.clone(), ts.clone())) else {
                return err("message_not_found");
            };
            if let Some(m) = message.as_object_mut() {
                m.insert("text".into(), json!(text));
                m.insert("edited".into(), json!({"user": BOT_USER_ID, "ts": ts}));
                if !blocks.is_null() {
                    m.insert("blocks".into(), blocks.clone());
                }
            }
            let message = message.clone();
            s.updates.push(Updated {
                channel: channel.clone(),
                ts: ts.clone(),
                text: text.clone(),
                blocks,
            });
            json!({"ok": true, "channel": channel, "ts": ts, "text": text, "message": message})
        }
        _ => err("unknown_method"),
    }
}

/// The `blocks` parameter (a JSON array, or a JSON string of one in a form body), checked
/// against the limits the double knows. `Null` if absent.
fn blocks_param(params: &Map<String, Value>) -> Result<Value, &'static str> {
    let blocks = match params.get("blocks") {
        None | Some(Value::Null) => return Ok(Value::Null),
        Some(Value::String(s)) => {
            serde_json::from_str(s).map_err(|_not_json| "invalid_blocks_format")?
        }
        Some(v) => v.clone(),
    };
    let Some(list) = blocks.as_array() else {
        return Err("invalid_blocks_format");
    };
    if list.len() > 50 {
        return Err("invalid_blocks");
    }
    let mut action_ids = HashSet::new();
    for b in list {
        match b.get("type").and_then(Value::as_str) {
            Some("section") => {
                let text = b
                    .pointer("/text/text")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if text.is_empty() || text.chars().count() > 3000 {
                    return Err("invalid_blocks");
                }
            }
            Some("actions") => {
                let elements = b.get("elements").and_then(Value::as_array);
                let Some(elements) = elements.filter(|e| !e.is_empty() && e.len() <= 25) else {
                    return Err("invalid_blocks");
                };
                for e in elements {
                    let value = e.get("value").and_then(Value::as_str).unwrap_or("");
                    let label = e
                        .pointer("/text/text")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let action_id = e.get("action_id").and_then(Value::as_str).unwrap_or("");
                    if value.chars().count() > 2000
                        || label.is_empty()
                        || label.chars().count() > 75
                        || action_id.is_empty()
                        || !action_ids.insert(action_id.to_owned())
                    {
                        return Err("invalid_blocks");
                    }
                }
            }
            Some(_) => {}
            None => return Err("invalid_blocks"),
        }
    }
    Ok(blocks)
}

/// `tests/fixtures/slack/` (Slack's reference payloads; see `tests/fixtures/SOURCES.md`).
pub fn fixtures_dir() -> PathBuf {
    crate::workspace_root().join("tests/fixtures/slack")
}

/// A payload from `tests/fixtures/slack/<name>.json`.
pub fn fixture(name: &str) -> anyhow::Result<Value> {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// Keys of `actual` that the reference shape `reference` does not have, or has with another
/// JSON type (`null` in `actual` matches anything), recursively; arrays are compared element by
/// element against the reference element with the same `type` (else its first). The reverse
/// of `fake_telegram::shape_differences`: Slack's reference fixtures list every optional key,
/// so what we generate must be a subset.
pub fn unknown_keys(reference: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    subset(reference, actual, "$", &mut out);
    out
}

fn subset(reference: &Value, actual: &Value, at: &str, out: &mut Vec<String>) {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if actual.is_null() {
        return;
    }
    if kind(reference) != kind(actual) {
        out.push(format!(
            "{at}: expected {}, got {}",
            kind(reference),
            kind(actual)
        ));
        return;
    }
    match (reference, actual) {
        (Value::Object(r), Value::Object(a)) => {
            // An empty reference object (`"state": {}`) is free-form.
            if r.is_empty() {
                return;
            }
            for (key, value) in a {
                match r.get(key) {
                    Some(expected) => subset(expected, value, &format!("{at}.{key}"), out),
                    None => out.push(format!("{at}: unexpected key {key:?}")),
                }
            }
        }
        (Value::Array(r), Value::Array(a)) => {
            for (i, element) in a.iter().enumerate() {
                let like = r
                    .iter()
                    .find(|c| c.get("type").is_some() && c.get("type") == element.get("type"))
                    .or(r.first());
                if let Some(like) = like {
                    subset(like, element, &format!("{at}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}
