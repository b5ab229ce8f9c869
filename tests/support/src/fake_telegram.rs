//! A Telegram Bot API server double, written to the official reference
//! (<https://core.telegram.org/bots/api>).
//!
//! What it does: [`FakeTelegram::start`] listens on `127.0.0.1` (plain HTTP, a free port) and
//! serves `/bot<token>/<method>` for both `GET` and `POST`, with the parameters in the query
//! string, a JSON body, an `application/x-www-form-urlencoded` body or the text fields of a
//! `multipart/form-data` body (in the latter three, object
//! parameters such as `reply_markup` may be JSON-serialized strings, as the reference allows).
//! Method names are case-insensitive, as Telegram's are. Point a client at
//! [`FakeTelegram::api_url`] (teloxide: `Bot::new(token).set_api_url(url)`).
//!
//! Methods: `getMe`, `getUpdates` (`offset` confirms and forgets earlier updates, a negative
//! offset keeps only the last `-offset` updates; `limit` 1..=100, default 100, clamped like the
//! real server; `timeout` long polling, clamped to 0..=50 s, returning as soon as an update
//! arrives; `allowed_updates`, remembered across calls and applied when an update is *created*,
//! so updates queued before a change are still delivered, exactly as the reference warns),
//! `sendMessage`, `editMessageText`, `answerCallbackQuery`, `setWebhook` / `deleteWebhook`
//! (`drop_pending_updates` honoured) / `getWebhookInfo`, and `setMyCommands`. While a webhook is
//! set, `getUpdates` fails with 409 `Conflict: can't use getUpdates method while webhook is
//! active; ...` and queued updates are POSTed to the webhook one at a time, in order, with
//! `X-Telegram-Bot-Api-Secret-Token`; a 2xx confirms an update, anything else is retried. Answers are
//! `{"ok":true,"result":...}`; errors are `{"ok":false,"error_code":N,"description":"..."}`
//! (plus `parameters.retry_after` for 429) with the HTTP status equal to `error_code`:
//! - wrong token → 401 `Unauthorized`; unknown method or path → 404 `Not Found`;
//! - text over 4096 characters (UTF-16 code units) → 400 `Bad Request: message is too long`,
//!   empty (or whitespace-only) text → 400 `Bad Request: message text is empty`,
//!   `callback_data` not 1..=64 bytes → 400 `Bad Request: BUTTON_DATA_INVALID`;
//! - editing an unknown message → 400 `Bad Request: message to edit not found`, editing to the
//!   same text and markup → 400 `Bad Request: message is not modified: ...`; an edit without
//!   `reply_markup` removes the inline keyboard, as real Telegram does;
//! - answering an unknown or already answered callback query → 400
//!   `Bad Request: query is too old and response timeout expired or query ID is invalid`.
//!
//! Test controls (Rust, not HTTP): [`FakeTelegram::user_says`] and
//! [`FakeTelegram::user_presses`] queue real-shaped `message` / `callback_query` updates
//! (checked against real payloads in `tests/fixtures/telegram/`); [`FakeTelegram::sent`],
//! [`FakeTelegram::edits`], [`FakeTelegram::answered_callbacks`], [`FakeTelegram::commands`]
//! and [`FakeTelegram::calls`] show what the bot did; [`FakeTelegram::set_blocked`] makes
//! sends and edits to a chat fail with 403 `Forbidden: bot was blocked by the user`;
//! [`FakeTelegram::rate_limit_next`] makes the next `n` calls (other than `getUpdates`, so a
//! concurrent poll loop cannot use them up) fail with 429; [`FakeTelegram::set_down`] makes
//! every call answer **502** `Bad Gateway` (in the Bot API error shape) while the port stays
//! bound, so the double can come back on the same URL.
//!
//! What it does not do (known deviations): no TLS (a webhook URL must be
//! `http://127.0.0.1:<port>/...`, where Telegram demands HTTPS on 443, 80, 88 or 8443, and the
//! double delivers as if `max_connections` were 1), no file uploads (multipart file parts are refused), media, groups
//! beyond a synthetic chat object, inline mode, or any method not listed above (they get 404
//! like unknown ones). It does not parse `parse_mode` markup: the text is stored and returned
//! as sent, without `entities`, and its length is counted before markup is stripped (only the
//! value of `parse_mode` is checked). Any integer `chat_id` is accepted (real Telegram answers
//! `chat not found` or `bot can't initiate conversation` for chats that never talked to the
//! bot); `@username` chat ids get `Bad Request: chat not found`. Concurrent `getUpdates` calls
//! are not refused with 409. `user_presses` does not check that the data is on a button of the
//! message (so tests can forge presses); for a message the double does not know it sends an
//! `InaccessibleMessage` (`date: 0`), as Bot API 7.0+ does for old messages.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The bot token the double accepts by default ([`FakeTelegram::start`]).
pub const TOKEN: &str = "123456789:AAHfakeTelegramTokenForTests_0123456";
/// The bot's user id (the part of [`TOKEN`] before the colon).
pub const BOT_ID: i64 = 123_456_789;
/// The bot's username.
pub const BOT_USERNAME: &str = "fake_assistant_bot";
/// The longest message text, in UTF-16 code units.
pub const MAX_TEXT: usize = 4096;
/// The longest `callback_data`, in bytes.
pub const MAX_CALLBACK_DATA: usize = 64;
/// The longest long-polling `timeout` honoured, in seconds (the real server's limit).
pub const MAX_POLL_TIMEOUT: u64 = 50;
/// Largest request body read, in bytes.
const MAX_REQUEST: usize = 1024 * 1024;
/// The update types delivered when `allowed_updates` is empty or was never given.
const NOT_DEFAULT_UPDATES: [&str; 3] =
    ["chat_member", "message_reaction", "message_reaction_count"];
/// Callback query ids are large numeric strings, like real ones.
const CALLBACK_ID_BASE: u64 = 666_728_699_048_485_000;

/// A message the bot sent with `sendMessage`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentMessage {
    /// The chat it went to.
    pub chat_id: i64,
    /// Its id in that chat.
    pub message_id: i64,
    /// The text as sent.
    pub text: String,
    /// The `parse_mode`, if any.
    pub parse_mode: Option<String>,
    /// The `reply_markup` as sent (parsed, if it was a JSON string), if any.
    pub reply_markup: Option<Value>,
    /// The Message object returned to the bot.
    pub message: Value,
}

/// One successful `editMessageText`.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// The chat of the edited message.
    pub chat_id: i64,
    /// The edited message's id.
    pub message_id: i64,
    /// The new text.
    pub text: String,
    /// The `parse_mode`, if any.
    pub parse_mode: Option<String>,
    /// The new `reply_markup` (none: the keyboard was removed).
    pub reply_markup: Option<Value>,
    /// The Message object returned to the bot (with `edit_date`).
    pub message: Value,
}

/// One successful `answerCallbackQuery`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnsweredCallback {
    /// The query answered.
    pub callback_query_id: String,
    /// The notification text, if any.
    pub text: Option<String>,
    /// Whether it is an alert rather than a toast.
    pub show_alert: bool,
}

/// One API call as received (after the token and method were recognised).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The method, as the reference spells it (`sendMessage`).
    pub method: String,
    /// The merged parameters (query string, then body).
    pub params: Value,
}

#[derive(Debug)]
struct State {
    token: String,
    next_update_id: i64,
    updates: VecDeque<Update>,
    allowed_updates: Option<Vec<String>>,
    next_message_id: HashMap<i64, i64>,
    /// Every message in the double's chats, by (chat id, message id).
    messages: HashMap<(i64, i64), Value>,
    chats: HashMap<i64, Value>,
    next_callback: u64,
    open_callbacks: HashSet<String>,
    sent: Vec<SentMessage>,
    edits: Vec<Edit>,
    answered: Vec<AnsweredCallback>,
    commands: Option<Value>,
    calls: Vec<Call>,
    blocked: HashSet<i64>,
    rate_limited: Option<(u32, u64)>,
    down: bool,
    /// Requests answered 502 while down (method names as requested).
    answered_down: Vec<String>,
    /// The webhook set with `setWebhook`, if any.
    webhook: Option<Webhook>,
    /// Every webhook delivery attempt: (update id, HTTP status, 0 if no answer).
    webhook_attempts: Vec<(i64, u16)>,
}

/// A webhook registered with `setWebhook`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Where updates are POSTed.
    pub url: String,
    /// Sent in `X-Telegram-Bot-Api-Secret-Token`, if set.
    pub secret_token: Option<String>,
    /// `max_connections` (1..=100, default 40).
    pub max_connections: i64,
}

#[derive(Debug, Clone)]
struct Update {
    id: i64,
    kind: &'static str,
    body: Value,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped whenever an update is queued (wakes long polls).
    arrivals: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running Bot API double; stopped on drop.
#[derive(Debug)]
pub struct FakeTelegram {
    addr: SocketAddr,
    token: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeTelegram {
    /// Starts on a free 127.0.0.1 port, accepting [`TOKEN`].
    pub async fn start() -> anyhow::Result<FakeTelegram> {
        Self::start_with_token(TOKEN).await
    }

    /// Starts on a free 127.0.0.1 port, accepting `token` (`<bot id>:<secret>`; the bot's user
    /// id is the part before the colon, [`BOT_ID`] if that is not a number).
    pub async fn start_with_token(token: &str) -> anyhow::Result<FakeTelegram> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the fake Telegram server")?;
        let addr = listener.local_addr()?;
        let (arrivals, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                token: token.to_owned(),
                next_update_id: 1,
                updates: VecDeque::new(),
                allowed_updates: None,
                next_message_id: HashMap::new(),
                messages: HashMap::new(),
                chats: HashMap::new(),
                next_callback: 0,
                open_callbacks: HashSet::new(),
                sent: Vec::new(),
                edits: Vec::new(),
                answered: Vec::new(),
                commands: None,
                calls: Vec::new(),
                blocked: HashSet::new(),
                rate_limited: None,
                down: false,
                answered_down: Vec::new(),
                webhook: None,
                webhook_attempts: Vec::new(),
            }),
            arrivals,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, Arc::clone(&shared), stop_rx.clone()));
        tokio::spawn(deliver_webhooks(Arc::clone(&shared), stop_rx));
        Ok(FakeTelegram {
            addr,
            token: token.to_owned(),
            shared,
            stop,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base for `Bot::set_api_url`: `http://127.0.0.1:<port>/` (calls go to
    /// `<base>bot<token>/<method>`).
    pub fn api_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The token it accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The bot's user object, as `getMe` returns it.
    pub fn bot_user(&self) -> Value {
        bot_user(&self.token)
    }

    /// The user `user_id` writes `text` in chat `chat_id` (a private chat if `chat_id` is
    /// positive, a group otherwise). Queues a `message` update (unless `allowed_updates`
    /// excludes messages) and returns the new message's id. A text starting with `/` carries a
    /// `bot_command` entity, as Telegram adds.
    pub fn user_says(&self, user_id: i64, chat_id: i64, text: &str) -> i64 {
        let mut s = self.shared.lock();
        let chat = s.chat(chat_id, user_id);
        let message_id = s.next_message_id(chat_id);
        let mut message = Map::new();
        message.insert("message_id".into(), json!(message_id));
        message.insert("from".into(), human(user_id));
        message.insert("chat".into(), chat);
        message.insert("date".into(), json!(now_secs()));
        message.insert("text".into(), json!(text));
        if text.starts_with('/') {
            let command = text.split_whitespace().next().unwrap_or(text);
            message.insert(
                "entities".into(),
                json!([{"offset": 0, "length": utf16_len(command), "type": "bot_command"}]),
            );
        }
        let message = Value::Object(message);
        s.messages.insert((chat_id, message_id), message.clone());
        let queued = s.enqueue("message", message);
        drop(s);
        if queued {
            self.shared.arrivals.send_modify(|n| *n += 1);
        }
        message_id
    }

    /// The user `user_id` presses the inline button carrying `data` under message `message_id`
    /// in chat `chat_id`. Queues a `callback_query` update (unless `allowed_updates` excludes
    /// them) carrying the message as it is now (an `InaccessibleMessage` if the double does not
    /// know it) and returns the query's id.
    pub fn user_presses(&self, user_id: i64, chat_id: i64, message_id: i64, data: &str) -> String {
        let mut s = self.shared.lock();
        let chat = s.chat(chat_id, user_id);
        let message = s
            .messages
            .get(&(chat_id, message_id))
            .cloned()
            .unwrap_or_else(|| json!({"chat": chat, "message_id": message_id, "date": 0}));
        let id = (CALLBACK_ID_BASE + s.next_callback).to_string();
        s.next_callback += 1;
        let query = json!({
            "id": id,
            "from": human(user_id),
            "message": message,
            "chat_instance": chat_instance(chat_id),
            "data": data,
        });
        s.open_callbacks.insert(id.clone());
        let queued = s.enqueue("callback_query", query);
        drop(s);
        if queued {
            self.shared.arrivals.send_modify(|n| *n += 1);
        }
        id
    }

    /// Every message the bot sent, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.shared.lock().sent.clone()
    }

    /// Every successful edit, in order.
    pub fn edits(&self) -> Vec<Edit> {
        self.shared.lock().edits.clone()
    }

    /// Every successful `answerCallbackQuery`, in order.
    pub fn answered_callbacks(&self) -> Vec<AnsweredCallback> {
        self.shared.lock().answered.clone()
    }

    /// The commands last set with `setMyCommands`, if any.
    pub fn commands(&self) -> Option<Value> {
        self.shared.lock().commands.clone()
    }

    /// Every call with a valid token and a known method, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// Updates queued and not yet confirmed.
    pub fn pending_updates(&self) -> usize {
        self.shared.lock().updates.len()
    }

    /// The user of `chat_id` blocked the bot: sends and edits there fail with 403.
    pub fn set_blocked(&self, chat_id: i64) {
        self.shared.lock().blocked.insert(chat_id);
    }

    /// The next `n` calls other than `getUpdates` fail with 429
    /// `Too Many Requests: retry after <retry_after_secs>`.
    pub fn rate_limit_next(&self, n: u32, retry_after_secs: u64) {
        self.shared.lock().rate_limited = (n > 0).then_some((n, retry_after_secs));
    }

    /// While down, every request is answered 502 `Bad Gateway` (Bot API error shape); the port
    /// stays bound.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
    }

    /// The webhook currently set, if any.
    pub fn webhook(&self) -> Option<Webhook> {
        self.shared.lock().webhook.clone()
    }

    /// Every webhook delivery attempt so far: (update id, HTTP status; 0 when the connection
    /// failed or gave no status line).
    pub fn webhook_attempts(&self) -> Vec<(i64, u16)> {
        self.shared.lock().webhook_attempts.clone()
    }

    /// The method names (as requested, unchecked) of the requests answered 502 while down.
    pub fn answered_down(&self) -> Vec<String> {
        self.shared.lock().answered_down.clone()
    }
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.task.abort();
    }
}

impl State {
    fn next_message_id(&mut self, chat_id: i64) -> i64 {
        let next = self.next_message_id.entry(chat_id).or_insert(1);
        let id = *next;
        *next += 1;
        id
    }

    /// The chat object for `chat_id` (created for `user_id` the first time).
    fn chat(&mut self, chat_id: i64, user_id: i64) -> Value {
        self.chats
            .entry(chat_id)
            .or_insert_with(|| synthetic_chat(chat_id, user_id))
            .clone()
    }

    fn allows(&self, kind: &str) -> bool {
        match &self.allowed_updates {
            Some(list) if !list.is_empty() => list.iter().any(|k| k == kind),
            _ => !NOT_DEFAULT_UPDATES.contains(&kind),
        }
    }

    /// Queues an update if `allowed_updates` lets it be created; returns whether it did.
    fn enqueue(&mut self, kind: &'static str, body: Value) -> bool {
        if !self.allows(kind) {
            return false;
        }
        let id = self.next_update_id;
        self.next_update_id += 1;
        self.updates.push_back(Update { id, kind, body });
        true
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

fn human(user_id: i64) -> Value {
    json!({
        "id": user_id,
        "is_bot": false,
        "first_name": format!("User{user_id}"),
        "last_name": "Test",
        "username": format!("user{user_id}"),
        "language_code": "en",
    })
}

fn synthetic_chat(chat_id: i64, user_id: i64) -> Value {
    if chat_id > 0 {
        json!({
            "id": chat_id,
            "first_name": format!("User{user_id}"),
            "last_name": "Test",
            "username": format!("user{user_id}"),
            "type": "private",
        })
    } else {
        json!({"id": chat_id, "title": format!("Group {chat_id}"), "type": "group"})
    }
}

/// A stable, chat-specific numeric string, like Telegram's `chat_instance`.
fn chat_instance(chat_id: i64) -> String {
    (chat_id.unsigned_abs() ^ 0x1699_F0C3_E8A1_5D5C).to_string()
}

fn bot_id(token: &str) -> i64 {
    token
        .split(':')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or(BOT_ID)
}

fn bot_user(token: &str) -> Value {
    json!({
        "id": bot_id(token),
        "is_bot": true,
        "first_name": "Fake Assistant",
        "username": BOT_USERNAME,
        "can_join_groups": true,
        "can_read_all_group_messages": false,
        "supports_inline_queries": false,
        "can_connect_to_business": false,
        "has_main_web_app": false,
    })
}

/// The bot-facing methods, as the reference spells them.
const METHODS: [&str; 9] = [
    "getMe",
    "getUpdates",
    "sendMessage",
    "editMessageText",
    "answerCallbackQuery",
    "setWebhook",
    "deleteWebhook",
    "getWebhookInfo",
    "setMyCommands",
];

/// A Bot API error.
#[derive(Debug, Clone, PartialEq)]
struct ApiError {
    code: u16,
    description: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, description: impl Into<String>) -> ApiError {
        ApiError {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    fn bad(what: &str) -> ApiError {
        ApiError::new(400, format!("Bad Request: {what}"))
    }

    fn body(&self) -> Value {
        let mut body = json!({
            "ok": false,
            "error_code": self.code,
            "description": self.description,
        });
        if let (Some(after), Some(map)) = (self.retry_after, body.as_object_mut()) {
            map.insert("parameters".into(), json!({ "retry_after": after }));
        }
        body
    }
}

type Answer = Result<Value, ApiError>;

async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // A client gone before it was accepted is skipped.
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

fn respond(answer: &Answer) -> Response<Full<Bytes>> {
    let (status, body) = match answer {
        Ok(result) => (200, json!({"ok": true, "result": result})),
        Err(e) => (e.code, e.body()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_too_large_or_cut) => {
            return respond(&Err(ApiError::new(413, "Request Entity Too Large")));
        }
    };
    respond(&dispatch(shared, &path, &query, &content_type, &body).await)
}

/// Splits `/bot<token>/<method>`.
fn route(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/bot")?;
    let (token, method) = rest.split_once('/')?;
    (!method.is_empty() && !method.contains('/')).then_some((token, method))
}

/// The merged parameters: the query string, then the body (JSON object or form), the body
/// winning.
fn parameters(
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    let mut params = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        params.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    if content_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => params.extend(map),
            Ok(_) | Err(_) => {
                return Err(ApiError::bad("can't parse JSON object"));
            }
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in form_urlencoded::parse(body) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    } else if content_type.starts_with("multipart/form-data") {
        params.extend(multipart_fields(content_type, body)?);
    } else {
        return Err(ApiError::bad("unsupported Content-Type"));
    }
    Ok(params)
}

/// The text fields of a `multipart/form-data` body (RFC 7578), which the Bot API accepts for
/// every method (teloxide sends `setWebhook` this way). File parts are refused: the double has
/// no uploads.
fn multipart_fields(content_type: &str, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .next()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ApiError::bad("multipart boundary is missing"))?;
    let text = std::str::from_utf8(body)
        .map_err(|_not_utf8| ApiError::bad("multipart body is not UTF-8"))?;
    let delimiter = format!("--{boundary}");
    let mut fields = Map::new();
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let (head, value) = part
            .split_once("\r\n\r\n")
            .ok_or_else(|| ApiError::bad("malformed multipart part"))?;
        let value = value.strip_suffix("\r\n").unwrap_or(value);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .ok_or_else(|| ApiError::bad("multipart part without Content-Disposition"))?;
        if disposition.contains("filename=") {
            return Err(ApiError::bad(
                "file uploads are not supported by the double",
            ));
        }
        let name = disposition
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("name="))
            .map(|n| n.trim_matches('"'))
            .next()
            .ok_or_else(|| ApiError::bad("multipart part without a name"))?;
        fields.insert(name.to_owned(), Value::String(value.to_owned()));
    }
    Ok(fields)
}

/// Typed access to one call's parameters (form values are strings; JSON ones may be typed).
struct Params(Map<String, Value>);

impl Params {
    fn present(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::bad(&format!("field \"{name}\" must be an integer"))),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                s.trim().parse().map(Some).map_err(|e| {
                    ApiError::bad(&format!("field \"{name}\" must be an integer: {e}"))
                })
            }
            Some(_) => Err(ApiError::bad(&format!(
                "field \"{name}\" must be an integer"
            ))),
        }
    }

    fn string(&self, name: &str) -> Option<String> {
        match self.present(name)? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    fn boolean(&self, name: &str) -> bool {
        match self.present(name) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => matches!(s.as_str(), "true" | "True" | "1"),
            Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
            _ => false,
        }
    }

    /// A JSON-typed parameter (objects and arrays may arrive JSON-serialized as strings).
    fn json(&self, name: &str) -> Result<Option<Value>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| ApiError::bad(&format!("can't parse {name} JSON object: {e}"))),
            Some(v) => Ok(Some(v.clone())),
        }
    }

    /// `chat_id`: an integer; `@username` is not a chat the double knows.
    fn chat_id(&self) -> Result<i64, ApiError> {
        match self.present("chat_id") {
            None => Err(ApiError::bad("chat_id is empty")),
            Some(Value::String(s)) if s.starts_with('@') => Err(ApiError::bad("chat not found")),
            Some(_) => self
                .int("chat_id")?
                .ok_or_else(|| ApiError::bad("chat_id is empty")),
        }
    }
}

async fn dispatch(
    shared: &Shared,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Answer {
    let routed = route(path);
    {
        let mut s = shared.lock();
        if s.down {
            let method = routed.map_or_else(String::new, |(_, m)| m.to_owned());
            s.answered_down.push(method);
            return Err(ApiError::new(502, "Bad Gateway"));
        }
    }
    let Some((token, method)) = routed else {
        return Err(ApiError::new(404, "Not Found"));
    };
    if token != shared.lock().token {
        return Err(ApiError::new(401, "Unauthorized"));
    }
    let Some(method) = METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
    else {
        return Err(ApiError::new(404, "Not Found"));
    };
    let params = Params(parameters(query, content_type, body)?);
    {
        let mut s = shared.lock();
        s.calls.push(Call {
            method: method.to_owned(),
            params: Value::Object(params.0.clone()),
        });
        if method != "getUpdates"
            && let Some((left, after)) = s.rate_limited
        {
            s.rate_limited = (left > 1).then_some((left - 1, after));
            return Err(ApiError {
                code: 429,
                description: format!("Too Many Requests: retry after {after}"),
                retry_after: Some(after),
            });
        }
    }
    match method {
        "getMe" => Ok(bot_user(&shared.lock().token)),
        "getUpdates" => get_updates(shared, &params).await,
        "sendMessage" => send_message(&mut shared.lock(), &params),
        "editMessageText" => edit_message_text(&mut shared.lock(), &params),
        "answerCallbackQuery" => answer_callback_query(&mut shared.lock(), &params),
        "setWebhook" => set_webhook(shared, &params),
        "deleteWebhook" => {
            let mut s = shared.lock();
            s.webhook = None;
            if params.boolean("drop_pending_updates") {
                s.updates.clear();
            }
            Ok(json!(true))
        }
        "getWebhookInfo" => {
            let s = shared.lock();
            let mut info = json!({
                "url": s.webhook.as_ref().map_or("", |w| w.url.as_str()),
                "has_custom_certificate": false,
                "pending_update_count": s.updates.len(),
            });
            if let (Some(w), Value::Object(o)) = (&s.webhook, &mut info) {
                o.insert("max_connections".into(), json!(w.max_connections));
                if let Some(allowed) = &s.allowed_updates {
                    o.insert("allowed_updates".into(), json!(allowed));
                }
            }
            Ok(info)
        }
        "setMyCommands" => set_my_commands(&mut shared.lock(), &params),
        _ => Err(ApiError::new(404, "Not Found")),
    }
}

/// `setWebhook`: an empty `url` removes the webhook (as `deleteWebhook`); `secret_token` must be
/// 1-256 characters of `A-Z a-z 0-9 _ -`; `max_connections` 1..=100 (default 40);
/// `allowed_updates` replaces the remembered list; `drop_pending_updates` clears the queue.
/// Deviation: the real Bot API requires an `https` URL on port 443, 80, 88 or 8443; the double
/// accepts `http://127.0.0.1:<port>/...` (it has no TLS client), and refuses anything else.
fn set_webhook(shared: &Shared, params: &Params) -> Answer {
    let url = params.string("url").unwrap_or_default();
    let secret_token = params.string("secret_token");
    if let Some(t) = &secret_token
        && (t.is_empty()
            || t.len() > 256
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return Err(ApiError::bad("secret token contains unallowed characters"));
    }
    let max_connections = params.int("max_connections")?.unwrap_or(40);
    if !(1..=100).contains(&max_connections) {
        return Err(ApiError::bad("invalid max_connections specified"));
    }
    let allowed = match params.json("allowed_updates")? {
        None => None,
        Some(Value::Array(kinds)) => Some(
            kinds
                .iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect::<Vec<_>>(),
        ),
        Some(_) => return Err(ApiError::bad("allowed_updates must be an array")),
    };
    if !url.is_empty() && !url.starts_with("http://127.0.0.1:") {
        return Err(ApiError::bad(
            "bad webhook: HTTPS url must be provided for webhook",
        ));
    }
    let mut s = shared.lock();
    if params.boolean("drop_pending_updates") {
        s.updates.clear();
    }
    if let Some(allowed) = allowed {
        s.allowed_updates = Some(allowed);
    }
    s.webhook = (!url.is_empty()).then_some(Webhook {
        url,
        secret_token,
        max_connections,
    });
    drop(s);
    shared.arrivals.send_modify(|n| *n = n.wrapping_add(1));
    Ok(json!(true))
}

/// Delivers queued updates to the webhook, like Telegram: one at a time in order (the double
/// always behaves as `max_connections = 1`), `POST` with a JSON body and the secret in
/// `X-Telegram-Bot-Api-Secret-Token`; a 2xx answer confirms the update, anything else (or no
/// answer within 10 s) is retried after a pause that grows to 1 s.
async fn deliver_webhooks(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut arrivals = shared.arrivals.subscribe();
    let mut failures = 0u32;
    loop {
        let next = {
            let s = shared.lock();
            match (&s.webhook, s.updates.front()) {
                (Some(w), Some(u)) if !s.down => Some((w.clone(), u.clone())),
                _ => None,
            }
        };
        let Some((hook, update)) = next else {
            tokio::select! {
                _ = arrivals.changed() => continue,
                // Coming back from `set_down` is not an arrival: look again now and then.
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = stop.wait_for(|d| *d) => return,
            }
        };
        let mut body = Map::new();
        body.insert("update_id".into(), json!(update.id));
        body.insert(update.kind.into(), update.body.clone());
        let body = Value::Object(body).to_string();
        let status = tokio::select! {
            s = post_webhook(&hook, &body) => s,
            _ = stop.wait_for(|d| *d) => return,
        };
        {
            let mut s = shared.lock();
            s.webhook_attempts.push((update.id, status));
            if (200..300).contains(&status) && s.updates.front().map(|u| u.id) == Some(update.id) {
                s.updates.pop_front();
            }
        }
        if (200..300).contains(&status) {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
            let pause = Duration::from_millis(100u64.saturating_mul(u64::from(failures.min(10))));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|d| *d) => return,
            }
        }
    }
}

/// One plain-HTTP/1.1 `POST` of `body` to the webhook; the status code, or 0.
async fn post_webhook(hook: &Webhook, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(rest) = hook.url.strip_prefix("http://") else {
        return 0;
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(host).await.ok()?;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(secret) = &hook.secret_token {
            request.push_str(&format!("X-Telegram-Bot-Api-Secret-Token: {secret}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(buf.get(..n)?);
        }
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace().nth(1)?.parse::<u16>().ok()
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

async fn get_updates(shared: &Shared, params: &Params) -> Answer {
    if shared.lock().webhook.is_some() {
        return Err(ApiError::new(
            409,
            "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
        ));
    }
    let offset = params.int("offset")?;
    let limit = params.int("limit")?.map_or(100, |l| l.clamp(1, 100));
    let limit = usize::try_from(limit).unwrap_or(100);
    let timeout = params.int("timeout")?.map_or(0, |t| {
        t.clamp(0, i64::try_from(MAX_POLL_TIMEOUT).unwrap_or(50))
    });
    let timeout = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
    let allowed = match params.json("allowed_updates")? {
        None => None,
        Some(Value::Array(kinds)) => Some(
            kinds
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| ApiError::bad("allowed_updates must be a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(ApiError::bad("allowed_updates must be an array")),
    };
    // Subscribed before looking, so an update queued in between still wakes the poll.
    let mut arrivals = shared.arrivals.subscribe();
    {
        let mut s = shared.lock();
        if let Some(allowed) = allowed {
            s.allowed_updates = Some(allowed);
        }
        match offset {
            Some(offset) if offset < 0 => {
                let keep = usize::try_from(offset.unsigned_abs()).unwrap_or(usize::MAX);
                let drop = s.updates.len().saturating_sub(keep);
                s.updates.drain(..drop);
            }
            Some(offset) => s.updates.retain(|u| u.id >= offset),
            None => {}
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let batch: Vec<Value> = shared
            .lock()
            .updates
            .iter()
            .take(limit)
            .map(|u| {
                let mut update = Map::new();
                update.insert("update_id".into(), json!(u.id));
                update.insert(u.kind.into(), u.body.clone());
                Value::Object(update)
            })
            .collect();
        if !batch.is_empty() {
            return Ok(Value::Array(batch));
        }
        match tokio::time::timeout_at(deadline, arrivals.changed()).await {
            Ok(Ok(())) => {}
            // The deadline passed, or the double is gone.
            Ok(Err(_)) | Err(_) => return Ok(json!([])),
        }
    }
}

/// Checks a message text the way Telegram does (length in UTF-16 code units).
fn check_text(text: Option<String>) -> Result<String, ApiError> {
    let text = text.unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::bad("message text is empty"));
    }
    if utf16_len(&text) > MAX_TEXT {
        return Err(ApiError::bad("message is too long"));
    }
    Ok(text)
}

fn check_parse_mode(params: &Params) -> Result<Option<String>, ApiError> {
    let mode = params.string("parse_mode").filter(|m| !m.is_empty());
    match mode.as_deref() {
        None => Ok(None),
        Some(m)
            if ["HTML", "Markdown", "MarkdownV2"]
                .iter()
                .any(|known| known.eq_ignore_ascii_case(m)) =>
        {
            Ok(mode)
        }
        Some(m) => Err(ApiError::bad(&format!("unsupported parse_mode \"{m}\""))),
    }
}

/// The `reply_markup` as sent, and the inline keyboard a Message would carry, if any.
fn check_markup(params: &Params) -> Result<(Option<Value>, Option<Value>), ApiError> {
    let Some(markup) = params.json("reply_markup")? else {
        return Ok((None, None));
    };
    let Some(object) = markup.as_object() else {
        return Err(ApiError::bad("object expected as reply markup"));
    };
    let Some(keyboard) = object.get("inline_keyboard") else {
        // Reply keyboards and the like are accepted but not part of the returned Message.
        return Ok((Some(markup), None));
    };
    let Some(rows) = keyboard.as_array() else {
        return Err(ApiError::bad(
            "field \"inline_keyboard\" of the InlineKeyboardMarkup should be an Array of Arrays",
        ));
    };
    for row in rows {
        let Some(buttons) = row.as_array() else {
            return Err(ApiError::bad(
                "field \"inline_keyboard\" of the InlineKeyboardMarkup should be an Array of Arrays",
            ));
        };
        for button in buttons {
            if !button.get("text").is_some_and(Value::is_string) {
                return Err(ApiError::bad(
                    "can't parse inline keyboard button: Field \"text\" must be of type String",
                ));
            }
            if let Some(data) = button.get("callback_data") {
                let len = data.as_str().map_or(0, str::len);
                if len == 0 || len > MAX_CALLBACK_DATA {
                    return Err(ApiError::bad("BUTTON_DATA_INVALID"));
                }
            }
        }
    }
    let shown = (!rows.is_empty()).then(|| json!({ "inline_keyboard": keyboard }));
    Ok((Some(markup), shown))
}

fn send_message(s: &mut State, params: &Params) -> Answer {
    let chat_id = params.chat_id()?;
    let text = check_text(params.string("text"))?;
    let parse_mode = check_parse_mode(params)?;
    let (reply_markup, keyboard) = check_markup(params)?;
    if s.blocked.contains(&chat_id) {
        return Err(ApiError::new(403, "Forbidden: bot was blocked by the user"));
    }
    let chat = s.chat(chat_id, chat_id);
    let message_id = s.next_message_id(chat_id);
    let mut message = Map::new();
    message.insert("message_id".into(), json!(message_id));
    message.insert("from".into(), bot_user_short(&s.token));
    message.insert("chat".into(), chat);
    message.insert("date".into(), json!(now_secs()));
    message.insert("text".into(), json!(text));
    if let Some(keyboard) = keyboard {
        message.insert("reply_markup".into(), keyboard);
    }
    let message = Value::Object(message);
    s.messages.insert((chat_id, message_id), message.clone());
    s.sent.push(SentMessage {
        chat_id,
        message_id,
        text,
        parse_mode,
        reply_markup,
        message: message.clone(),
    });
    Ok(message)
}

/// The bot as the `from` of its messages (the User fields only, as in real payloads).
fn bot_user_short(token: &str) -> Value {
    json!({
        "id": bot_id(token),
        "is_bot": true,
        "first_name": "Fake Assistant",
        "username": BOT_USERNAME,
    })
}

fn edit_message_text(s: &mut State, params: &Params) -> Answer {
    if params.present("inline_message_id").is_some() {
        // Inline messages are not modelled.
        return Err(ApiError::bad("message to edit not found"));
    }
    let chat_id = params.chat_id()?;
    let Some(message_id) = params.int("message_id")? else {
        return Err(ApiError::bad("message identifier is not specified"));
    };
    let text = check_text(params.string("text"))?;
    let parse_mode = check_parse_mode(params)?;
    let (reply_markup, keyboard) = check_markup(params)?;
    if s.blocked.contains(&chat_id) {
        return Err(ApiError::new(403, "Forbidden: bot was blocked by the user"));
    }
    let bot = bot_id(&s.token);
    let Some(old) = s.messages.get(&(chat_id, message_id)) else {
        return Err(ApiError::bad("message to edit not found"));
    };
    if old.pointer("/from/id").and_then(Value::as_i64) != Some(bot) {
        return Err(ApiError::bad("message can't be edited"));
    }
    if old.get("text").and_then(Value::as_str) == Some(text.as_str())
        && old.get("reply_markup") == keyboard.as_ref()
    {
        return Err(ApiError::bad(
            "message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
        ));
    }
    let mut message = old.as_object().cloned().unwrap_or_default();
    message.insert("text".into(), json!(text));
    message.insert("edit_date".into(), json!(now_secs()));
    match keyboard {
        Some(keyboard) => message.insert("reply_markup".into(), keyboard),
        None => message.remove("reply_markup"),
    };
    let message = Value::Object(message);
    s.messages.insert((chat_id, message_id), message.clone());
    s.edits.push(Edit {
        chat_id,
        message_id,
        text,
        parse_mode,
        reply_markup,
        message: message.clone(),
    });
    Ok(message)
}

fn answer_callback_query(s: &mut State, params: &Params) -> Answer {
    let id = params.string("callback_query_id").unwrap_or_default();
    if !s.open_callbacks.remove(&id) {
        return Err(ApiError::bad(
            "query is too old and response timeout expired or query ID is invalid",
        ));
    }
    s.answered.push(AnsweredCallback {
        callback_query_id: id,
        text: params.string("text"),
        show_alert: params.boolean("show_alert"),
    });
    Ok(json!(true))
}

fn set_my_commands(s: &mut State, params: &Params) -> Answer {
    let Some(Value::Array(commands)) = params.json("commands")? else {
        return Err(ApiError::bad("parameter \"commands\" is required"));
    };
    for command in &commands {
        let name = command.get("command").and_then(Value::as_str).unwrap_or("");
        let name_ok = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(ApiError::bad("BOT_COMMAND_INVALID"));
        }
        let description = command
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !(1..=256).contains(&description.chars().count()) {
            return Err(ApiError::bad("BOT_COMMAND_DESCRIPTION_INVALID"));
        }
    }
    s.commands = Some(Value::Array(commands));
    Ok(json!(true))
}

/// `tests/fixtures/telegram/` (real Bot API payloads; see the README there).
pub fn fixtures_dir() -> PathBuf {
    crate::workspace_root().join("tests/fixtures/telegram")
}

/// A real payload from `tests/fixtures/telegram/<name>.json`.
pub fn fixture(name: &str) -> anyhow::Result<Value> {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// Differences between `actual` and the shape of `reference`: every key `reference` has must be
/// in `actual` with a value of the same JSON type (integers and floats told apart), recursively
/// (arrays: element by element against the reference's first element). Empty when they match.
pub fn shape_differences(reference: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare(reference, actual, "$", &mut out);
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "float",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn compare(reference: &Value, actual: &Value, at: &str, out: &mut Vec<String>) {
    if kind(reference) != kind(actual) {
        out.push(format!(
            "{at}: expected {}, got {} ({actual})",
            kind(reference),
            kind(actual)
        ));
        return;
    }
    match (reference, actual) {
        (Value::Object(r), Value::Object(a)) => {
            for (key, value) in r {
                match a.get(key) {
                    Some(found) => compare(value, found, &format!("{at}.{key}"), out),
                    None => out.push(format!("{at}: missing key {key:?}")),
                }
            }
        }
        (Value::Array(r), Value::Array(a)) => {
            if let Some(first) = r.first() {
                if a.is_empty() {
                    out.push(format!("{at}: empty array, expected elements"));
                }
                for (i, element) in a.iter().enumerate() {
                    compare(first, element, &format!("{at}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}
