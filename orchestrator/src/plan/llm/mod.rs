//! The LLM planner and the daily summary composer, over any OpenAI-compatible Chat
//! Completions endpoint (OpenAI, an Anthropic-compatible endpoint, Ollama, a llama.cpp server).
//!
//! What it does:
//! - [`LlmConfig`] (embedded in the orchestrator's configuration): base URL, model, key file,
//!   timeout, token limit and answer format. The base URL and the key come from it and from
//!   nowhere else: no environment variable is read, no proxy is used, redirects are not
//!   followed. The base URL must be `https`, or `http` to a loopback address (a local model).
//!   The key file must not be readable by group or others.
//! - [`LlmPlanner`] sends the planner prompt, the time and the catalog (generated from the
//!   manifests) and the owner's message, and expects exactly one tool call (`propose_plan` or
//!   `reply`), or with [`AnswerFormat::JsonSchema`] a JSON answer of the same shape. The answer
//!   is parsed strictly and the plan validated ([`crate::plan::validate()`]); a fixable problem
//!   gets ONE repair round (the problems, one sentence each, sent back as the tool's result or
//!   as a user message); after that, or for anything a repair would not fix, the outcome is a
//!   [`PlanOutcome::Refused`] with a stable code, a user message that quotes no model output,
//!   and a bounded detail for the audit log. No answer, however hostile, becomes a plan
//!   without passing validation.
//! - [`LlmComposer`] writes the daily summary from structured data, wrapped in labelled
//!   `<untrusted_data>` blocks that the data cannot close, with a system prompt that says the
//!   data is untrusted. On any failure the caller falls back to its template.
//!
//! Every request is sent once (no automatic retries), must answer within `timeout_ms`, and may
//! return at most [`MAX_RESPONSE_BYTES`].
//!
//! Refusal codes: transport `llm_unreachable`, `llm_timeout`, `llm_unauthorized` (401/403),
//! `llm_rate_limited` (429), `llm_server_error` (5xx), `llm_request_rejected` (other 4xx),
//! `llm_response_too_large`, `llm_response_malformed`, `llm_transport_error`; answers
//! `llm_answer_truncated`, `llm_declined`, `llm_empty_answer`, `llm_prose_instead_of_plan`;
//! after a failed repair round `llm_arguments_invalid`, `llm_unknown_tool`,
//! `llm_several_tool_calls`, `llm_answer_not_json`, or the first violation's `plan_*` code.
//!
//! What it does not do: it never executes anything, never shows model prose as a plan, never
//! gives agent data to the planner (plans are fixed before any agent runs), and never logs the
//! key.

mod answer;
mod http;
mod request;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_openai::Client;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestMessage,
    ChatCompletionRequestToolMessage, ChatCompletionRequestToolMessageContent,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionResponse,
    FinishReason,
};
use protocol::UnixMillis;
use protocol::message::{ErrorCode, MAX_LINE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use answer::{Failure, Problem};
pub use request::{MAX_REPLY_CHARS, PLAN_TOOL, REPLY_TOOL};

use answer::{Echo, Interpretation, interpret};
use http::{BoundedHttp, Endpoint, HttpFailure};
use request::Shape;

use crate::catalog::Catalog;
use crate::plan::{PlanOutcome, PlanRefusal, PlanRequest, Planner};

/// Largest response body accepted, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Longest daily summary, in characters.
pub const MAX_SUMMARY_CHARS: usize = 1500;
/// Most data given to the composer (all blocks together), in bytes.
pub const MAX_SUMMARY_DATA: usize = 32 * 1024;
/// Longest key, in bytes.
const MAX_KEY_BYTES: usize = 512;
/// Longest model name, in bytes.
const MAX_MODEL_BYTES: usize = 128;

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_max_tokens() -> u32 {
    1024
}

/// How the model is asked to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerFormat {
    /// Tool calls (`tools` + `tool_choice: required`): OpenAI, Anthropic-compatible
    /// endpoints, llama.cpp, Ollama with tool-capable models.
    #[default]
    Tools,
    /// Content constrained by `response_format: json_schema`, for servers that support
    /// structured output but not tools.
    JsonSchema,
}

/// The LLM endpoint, from the orchestrator's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The API base, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`
    /// (`/chat/completions` is appended).
    pub base_url: String,
    /// The model name.
    pub model: String,
    /// A file holding the API key (nothing else; surrounding whitespace is ignored). None for
    /// servers that need no key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// How long one request may take, in milliseconds (default 30 000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most tokens the model may generate per request (`max_completion_tokens`; default 1024).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Tool calls (default) or JSON-schema content.
    #[serde(default)]
    pub answer_format: AnswerFormat,
}

/// Why an LLM client could not be set up (a configuration error: exit 64).
#[derive(Debug, thiserror::Error)]
pub enum LlmSetupError {
    /// The base URL is unusable.
    #[error("llm.base_url: {0}")]
    BaseUrl(String),
    /// The model name is unusable.
    #[error("llm.model: {0}")]
    Model(String),
    /// A limit is out of range.
    #[error("llm: {0}")]
    Limits(String),
    /// The key file cannot be read.
    #[error("llm.key_file {}: {source}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file's contents or permissions are unusable (the key itself is never shown).
    #[error("llm.key_file {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("llm: the HTTP client could not be built: {0}")]
    Client(#[source] reqwest::Error),
}

impl LlmSetupError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            LlmSetupError::BaseUrl(_) => "llm_base_url_invalid",
            LlmSetupError::Model(_) => "llm_model_invalid",
            LlmSetupError::Limits(_) => "llm_config_invalid",
            LlmSetupError::KeyFile { .. } => "llm_key_unreadable",
            LlmSetupError::Key { .. } => "llm_key_invalid",
            LlmSetupError::Client(_) => "llm_client_failed",
        }
    }
}

/// Why one request got no usable completion.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens there (connection refused, no route, DNS failure).
    #[error("the endpoint could not be reached: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// No complete answer within the timeout.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// A non-2xx status.
    #[error("{0}")]
    Status(HttpStatus),
    /// The body was larger than [`MAX_RESPONSE_BYTES`].
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not a chat completion.
    #[error("the response is not a chat completion: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The connection failed midway, or the request could not be built.
    #[error("the request failed: {0}")]
    Transport(String),
}

/// A non-2xx status and the error body's code, if it was a short identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP status {status}{}", api_code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct HttpStatus {
    /// The status.
    pub status: u16,
    /// The OpenAI-style error `code` or `type`.
    pub api_code: Option<String>,
}

impl CallError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Unreachable(_) => "llm_unreachable",
            CallError::Timeout(_) => "llm_timeout",
            CallError::Status(s) => match s.status {
                401 | 403 => "llm_unauthorized",
                429 => "llm_rate_limited",
                500..=599 => "llm_server_error",
                _ => "llm_request_rejected",
            },
            CallError::TooLarge(_) => "llm_response_too_large",
            CallError::Malformed(_) => "llm_response_malformed",
            CallError::Transport(_) => "llm_transport_error",
        }
    }

    /// What the user reads.
    pub fn user_message(&self) -> String {
        let what = match self {
            CallError::Unreachable(_) => "The language model could not be reached.",
            CallError::Timeout(_) => "The language model did not answer in time.",
            CallError::Status(s) => match s.status {
                401 | 403 => {
                    "The language model refused our API key; check llm.key_file in the configuration."
                }
                429 => "The language model is rate-limiting us; try again in a minute.",
                500..=599 => "The language model had an internal error; try again later.",
                _ => "The language model rejected the request.",
            },
            CallError::TooLarge(_) => "The language model's answer was too large to accept.",
            CallError::Malformed(_) => {
                "The language model's answer was not a valid chat completion."
            }
            CallError::Transport(_) => "The connection to the language model failed.",
        };
        format!("{what} Nothing was run. Routines such as \"bedtime\" still work without it.")
    }

    fn from_openai(error: OpenAIError, timeout_ms: u64) -> CallError {
        match error {
            OpenAIError::Reqwest(e) if e.is_timeout() => CallError::Timeout(timeout_ms),
            OpenAIError::Reqwest(e) if e.is_connect() => CallError::Unreachable(e.without_url()),
            OpenAIError::Reqwest(e) => CallError::Transport(e.without_url().to_string()),
            OpenAIError::Boxed(b) => match b.downcast::<HttpFailure>() {
                Ok(f) => match *f {
                    HttpFailure::TooLarge(n) => CallError::TooLarge(n),
                    HttpFailure::Status { status, api_code } => {
                        CallError::Status(HttpStatus { status, api_code })
                    }
                },
                Err(other) => CallError::Transport(other.to_string()),
            },
            OpenAIError::JSONDeserialize(e, _content) => CallError::Malformed(e),
            OpenAIError::ApiError(e) => CallError::Status(HttpStatus {
                status: e.status_code.as_u16(),
                api_code: None,
            }),
            other => CallError::Transport(other.to_string()),
        }
    }
}

/// Reads and checks the key file.
fn read_key(path: &Path) -> Result<String, LlmSetupError> {
    let key_error = |reason: &str| LlmSetupError::Key {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let io_error = |source| LlmSetupError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(key_error(
                "is readable by group or others; make it private (chmod 600)",
            ));
        }
    }
    if meta.len() > 4096 {
        return Err(key_error("is too large to hold a key"));
    }
    let text = std::fs::read_to_string(path).map_err(io_error)?;
    let key = text.trim();
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(key_error("must hold one key of 1 to 512 characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(key_error(
            "must hold one key of visible ASCII characters, nothing else",
        ));
    }
    Ok(key.to_owned())
}

/// Checks the base URL: https, or http to a loopback address; no credentials, query or
/// fragment. Returns it without a trailing slash.
fn check_base_url(text: &str) -> Result<String, LlmSetupError> {
    let fail = |reason: &str| LlmSetupError::BaseUrl(reason.to_owned());
    let url = reqwest::Url::parse(text).map_err(|e| LlmSetupError::BaseUrl(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(fail("must not carry credentials; use key_file"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(fail("must not have a query or fragment"));
    }
    let host = url.host_str().ok_or_else(|| fail("has no host"))?;
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(fail(
                "must use https (plain http is allowed only to a loopback address)",
            ));
        }
        _ => return Err(fail("must be an https (or loopback http) URL")),
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// One configured endpoint: what the planner and the composer share.
#[derive(Debug, Clone)]
struct LlmClient {
    client: Client<Endpoint>,
    model: String,
    timeout_ms: u64,
    max_tokens: u32,
    format: AnswerFormat,
}

impl LlmClient {
    fn new(config: &LlmConfig) -> Result<LlmClient, LlmSetupError> {
        let base = check_base_url(&config.base_url)?;
        let model = config.model.as_str();
        if model.is_empty()
            || model.len() > MAX_MODEL_BYTES
            || !model.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(LlmSetupError::Model(
                "must be 1 to 128 visible ASCII characters".to_owned(),
            ));
        }
        if !(100..=600_000).contains(&config.timeout_ms) {
            return Err(LlmSetupError::Limits(
                "timeout_ms must be 100 to 600000".to_owned(),
            ));
        }
        if !(16..=65_536).contains(&config.max_tokens) {
            return Err(LlmSetupError::Limits(
                "max_tokens must be 16 to 65536".to_owned(),
            ));
        }
        let key = config.key_file.as_deref().map(read_key).transpose()?;
        let endpoint = Endpoint::new(base, key).map_err(|reason| LlmSetupError::Key {
            path: config.key_file.clone().unwrap_or_default(),
            reason,
        })?;
        // reqwest with `rustls-no-provider` needs a process-wide provider before a client is
        // built; ring is the only one in this workspace (already installed is fine).
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .user_agent(concat!(
                "assistant-orchestrator/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(LlmSetupError::Client)?;
        let client = Client::build(http.clone(), endpoint)
            .with_http_service(BoundedHttp::new(http, MAX_RESPONSE_BYTES));
        Ok(LlmClient {
            client,
            model: config.model.clone(),
            timeout_ms: config.timeout_ms,
            max_tokens: config.max_tokens,
            format: config.answer_format,
        })
    }

    fn shape(&self) -> Shape<'_> {
        Shape {
            model: &self.model,
            max_tokens: self.max_tokens,
            format: self.format,
        }
    }

    async fn complete(
        &self,
        request: CreateChatCompletionRequest,
    ) -> Result<CreateChatCompletionResponse, CallError> {
        let chat = self.client.chat();
        let call = chat.create(request);
        match tokio::time::timeout(Duration::from_millis(self.timeout_ms), call).await {
            Err(_elapsed) => Err(CallError::Timeout(self.timeout_ms)),
            Ok(result) => result.map_err(|e| CallError::from_openai(e, self.timeout_ms)),
        }
    }
}

/// Text for the audit log: control characters replaced, at most [`MAX_LINE`] bytes.
fn bounded_detail(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_LINE.saturating_sub(4) {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

fn refusal(code: &'static str, user_message: String, detail: &str) -> PlanOutcome {
    PlanOutcome::Refused(PlanRefusal {
        code: ErrorCode::from_static(code),
        user_message,
        detail: bounded_detail(detail),
    })
}

/// Plans with a model (see the module documentation).
#[derive(Debug, Clone)]
pub struct LlmPlanner {
    client: LlmClient,
    catalog: Catalog,
}

impl LlmPlanner {
    /// Sets up the client (reads the key file; connects to nothing).
    pub fn new(config: &LlmConfig, catalog: Catalog) -> Result<LlmPlanner, LlmSetupError> {
        Ok(LlmPlanner {
            client: LlmClient::new(config)?,
            catalog,
        })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.client.model
    }

    /// The first request for `text`, as JSON (what goes over the wire): for snapshots and
    /// inspection.
    pub fn request_json(&self, text: &str, now: UnixMillis) -> Value {
        let messages = request::planner_messages(&self.catalog, now, text, self.client.format);
        let req = request::planner_request(self.client.shape(), &self.catalog, messages);
        serde_json::to_value(req).unwrap_or(Value::Null)
    }

    fn prefix(&self) -> String {
        format!("llm {}", self.client.model)
    }

    /// Plans for one message.
    pub async fn plan_message(&self, request: PlanRequest<'_>) -> PlanOutcome {
        let mut messages =
            request::planner_messages(&self.catalog, request.now, request.text, self.client.format);
        let first = match self.ask(messages.clone()).await {
            Ok(i) => i,
            Err(e) => return e,
        };
        let (problem, echo) = match first {
            Interpretation::Plan(p) => return PlanOutcome::Plan(p),
            Interpretation::Answer(a) => return PlanOutcome::Answer(a),
            Interpretation::Fail(f) => {
                return refusal(
                    f.code(),
                    f.user_message(),
                    &format!("{}: {}", self.prefix(), f.detail()),
                );
            }
            Interpretation::Retry(problem, echo) => (problem, echo),
        };
        let first_detail = problem.sentences().join("; ");
        messages.extend(repair_messages(&problem, echo));
        let second = match self.ask(messages).await {
            Ok(i) => i,
            Err(PlanOutcome::Refused(mut r)) => {
                r.detail = bounded_detail(&format!(
                    "{}: first answer: {first_detail}; the repair request failed: {}",
                    self.prefix(),
                    r.detail
                ));
                return PlanOutcome::Refused(r);
            }
            Err(other) => return other,
        };
        match second {
            Interpretation::Plan(p) => PlanOutcome::Plan(p),
            Interpretation::Answer(a) => PlanOutcome::Answer(a),
            Interpretation::Fail(f) => refusal(
                f.code(),
                f.user_message(),
                &format!(
                    "{}: first answer: {first_detail}; after the repair round: {}",
                    self.prefix(),
                    f.detail()
                ),
            ),
            Interpretation::Retry(again, _) => refusal(
                again.code(),
                again.user_message(),
                &format!(
                    "{}: first answer: {first_detail}; after the repair round: {}",
                    self.prefix(),
                    again.sentences().join("; ")
                ),
            ),
        }
    }

    async fn ask(
        &self,
        messages: Vec<ChatCompletionRequestMessage>,
    ) -> Result<Interpretation, PlanOutcome> {
        let req = request::planner_request(self.client.shape(), &self.catalog, messages);
        match self.client.complete(req).await {
            Ok(response) => Ok(interpret(
                self.client.format,
                &response,
                &self.catalog,
                &self.client.model,
            )),
            Err(e) => Err(refusal(
                e.code(),
                e.user_message(),
                &format!("{}: {e}", self.prefix()),
            )),
        }
    }
}

impl Planner for LlmPlanner {
    fn plan(&self, request: PlanRequest<'_>) -> impl Future<Output = PlanOutcome> + Send {
        self.plan_message(request)
    }
}

/// The assistant's echo and the repair request, for the second round.
fn repair_messages(problem: &Problem, echo: Echo) -> Vec<ChatCompletionRequestMessage> {
    let text = request::repair_text(&problem.sentences());
    match echo {
        Echo::ToolCalls(calls) => {
            let ids: Vec<String> = calls
                .iter()
                .map(|c| match c {
                    ChatCompletionMessageToolCalls::Function(f) => f.id.clone(),
                    ChatCompletionMessageToolCalls::Custom(c) => c.id.clone(),
                })
                .collect();
            let mut out = vec![ChatCompletionRequestMessage::Assistant(
                ChatCompletionRequestAssistantMessage {
                    tool_calls: Some(calls),
                    ..Default::default()
                },
            )];
            for id in ids {
                out.push(ChatCompletionRequestMessage::Tool(
                    ChatCompletionRequestToolMessage {
                        content: ChatCompletionRequestToolMessageContent::Text(text.clone()),
                        tool_call_id: id,
                    },
                ));
            }
            out
        }
        Echo::Content(content) => vec![
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                content: Some(ChatCompletionRequestAssistantMessageContent::Text(content)),
                ..Default::default()
            }),
            ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage::from(text)),
        ],
    }
}

/// One source of data for the daily summary: what it is ("hue lights.list") and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct SummarySource {
    /// A short label (letters, digits, space, `.`, `-`, `_`, `/`; anything else becomes `_`).
    pub source: String,
    /// The data, as the agent returned it (untrusted).
    pub data: Value,
}

/// Why the composer produced no summary (the caller uses its template).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The request failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// More data than [`MAX_SUMMARY_DATA`].
    #[error("the data is {0} bytes; the limit is {MAX_SUMMARY_DATA}")]
    DataTooLarge(usize),
    /// The answer is unusable.
    #[error("the answer is unusable: {}", .0.detail())]
    Unusable(Failure),
}

impl ComposeError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ComposeError::Call(e) => e.code(),
            ComposeError::DataTooLarge(_) => "summary_data_too_large",
            ComposeError::Unusable(f) => f.code(),
        }
    }
}

/// Writes the daily summary with a model (see the module documentation).
#[derive(Debug, Clone)]
pub struct LlmComposer {
    client: LlmClient,
}

impl LlmComposer {
    /// Sets up the client (reads the key file; connects to nothing).
    pub fn new(config: &LlmConfig) -> Result<LlmComposer, LlmSetupError> {
        Ok(LlmComposer {
            client: LlmClient::new(config)?,
        })
    }

    fn blocks(sources: &[SummarySource]) -> Result<Vec<String>, ComposeError> {
        let blocks: Vec<String> = sources
            .iter()
            .map(|s| request::untrusted_block(&s.source, &s.data))
            .collect();
        let total: usize = blocks.iter().map(String::len).sum();
        if total > MAX_SUMMARY_DATA {
            return Err(ComposeError::DataTooLarge(total));
        }
        Ok(blocks)
    }

    /// The request for these sources, as JSON: for snapshots and inspection.
    pub fn request_json(
        &self,
        now: UnixMillis,
        sources: &[SummarySource],
    ) -> Result<Value, ComposeError> {
        let blocks = Self::blocks(sources)?;
        let req = request::summary_request(self.client.shape(), now, &blocks, MAX_SUMMARY_CHARS);
        Ok(serde_json::to_value(req).unwrap_or(Value::Null))
    }

    /// Writes the summary: plain text, at most [`MAX_SUMMARY_CHARS`], control characters
    /// (except line breaks) removed.
    pub async fn compose(
        &self,
        now: UnixMillis,
        sources: &[SummarySource],
    ) -> Result<String, ComposeError> {
        let blocks = Self::blocks(sources)?;
        let req = request::summary_request(self.client.shape(), now, &blocks, MAX_SUMMARY_CHARS);
        let response = self.client.complete(req).await?;
        let Some(choice) = response.choices.first() else {
            return Err(ComposeError::Unusable(Failure::NoChoice));
        };
        if choice.finish_reason == Some(FinishReason::Length) {
            return Err(ComposeError::Unusable(Failure::Truncated));
        }
        if choice
            .message
            .refusal
            .as_deref()
            .is_some_and(|r| !r.trim().is_empty())
        {
            return Err(ComposeError::Unusable(Failure::Declined));
        }
        let text = answer::sanitise(
            choice.message.content.as_deref().unwrap_or_default(),
            MAX_SUMMARY_CHARS,
        );
        if text.is_empty() {
            return Err(ComposeError::Unusable(Failure::Empty));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base: &str) -> LlmConfig {
        LlmConfig {
            base_url: base.to_owned(),
            model: "test-model".to_owned(),
            key_file: None,
            timeout_ms: 1000,
            max_tokens: 256,
            answer_format: AnswerFormat::Tools,
        }
    }

    #[test]
    fn base_urls_must_be_https_or_loopback() {
        let cases = [
            "https://api.openai.com/v1",
            "https://api.openai.com/v1/",
            "http://127.0.0.1:11434/v1",
            "http://localhost:8080/v1",
            "http://[::1]:8080/v1",
            "http://192.168.1.20:11434/v1",
            "http://llm.example.com/v1",
            "ftp://example.com/v1",
            "https://user:pass@api.example.com/v1",
            "https://api.example.com/v1?key=x",
            "not a url",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| match check_base_url(c) {
                Ok(u) => format!("{c} -> {u}"),
                Err(e) => format!("{c} -> {} {e}", e.code()),
            })
            .collect();
        expect_test::expect![[r#"
            https://api.openai.com/v1 -> https://api.openai.com/v1
            https://api.openai.com/v1/ -> https://api.openai.com/v1
            http://127.0.0.1:11434/v1 -> http://127.0.0.1:11434/v1
            http://localhost:8080/v1 -> http://localhost:8080/v1
            http://[::1]:8080/v1 -> http://[::1]:8080/v1
            http://192.168.1.20:11434/v1 -> llm_base_url_invalid llm.base_url: must use https (plain http is allowed only to a loopback address)
            http://llm.example.com/v1 -> llm_base_url_invalid llm.base_url: must use https (plain http is allowed only to a loopback address)
            ftp://example.com/v1 -> llm_base_url_invalid llm.base_url: must be an https (or loopback http) URL
            https://user:pass@api.example.com/v1 -> llm_base_url_invalid llm.base_url: must not carry credentials; use key_file
            https://api.example.com/v1?key=x -> llm_base_url_invalid llm.base_url: must not have a query or fragment
            not a url -> llm_base_url_invalid llm.base_url: relative URL without a base"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn configuration_is_strict() {
        let text = r#"
base_url = "http://127.0.0.1:11434/v1"
model = "llama3.1:8b"
"#;
        let c: LlmConfig = toml::from_str(text).unwrap();
        assert_eq!(c.timeout_ms, 30_000);
        assert_eq!(c.max_tokens, 1024);
        assert_eq!(c.answer_format, AnswerFormat::Tools);
        assert!(c.key_file.is_none());
        let extra = format!("{text}temperature = 0.2\n");
        assert!(toml::from_str::<LlmConfig>(&extra).is_err());
        let json = format!("{text}answer_format = \"json_schema\"\n");
        let c: LlmConfig = toml::from_str(&json).unwrap();
        assert_eq!(c.answer_format, AnswerFormat::JsonSchema);

        let mut bad = config("http://127.0.0.1:1/v1");
        bad.model = "two words".to_owned();
        assert_eq!(
            LlmClient::new(&bad).unwrap_err().code(),
            "llm_model_invalid"
        );
        let mut bad = config("http://127.0.0.1:1/v1");
        bad.timeout_ms = 0;
        assert_eq!(
            LlmClient::new(&bad).unwrap_err().code(),
            "llm_config_invalid"
        );
        let mut bad = config("http://127.0.0.1:1/v1");
        bad.max_tokens = 1;
        assert_eq!(
            LlmClient::new(&bad).unwrap_err().code(),
            "llm_config_invalid"
        );
    }

    #[test]
    fn key_files_must_be_private_and_hold_one_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let ok = write("ok", "sk-test-123\n", 0o600);
        assert_eq!(read_key(&ok).unwrap(), "sk-test-123");
        let cases = [
            write("open", "sk-test-123\n", 0o644),
            write("empty", "\n", 0o600),
            write("two", "sk-a sk-b\n", 0o600),
            dir.path().join("missing"),
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|p| {
                let e = read_key(p).unwrap_err();
                let text = e.to_string();
                assert!(!text.contains("sk-"), "{text}");
                format!(
                    "{} {}",
                    e.code(),
                    text.replace(&dir.path().display().to_string(), "<dir>")
                )
            })
            .collect();
        expect_test::expect![[r#"
            llm_key_invalid llm.key_file <dir>/open: is readable by group or others; make it private (chmod 600)
            llm_key_invalid llm.key_file <dir>/empty: must hold one key of 1 to 512 characters
            llm_key_invalid llm.key_file <dir>/two: must hold one key of visible ASCII characters, nothing else
            llm_key_unreadable llm.key_file <dir>/missing: No such file or directory (os error 2)"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn the_key_is_never_in_debug_output() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "sk-very-secret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = config("http://127.0.0.1:1/v1");
        c.key_file = Some(p);
        let planner = LlmPlanner::new(&c, Catalog::all()).unwrap();
        let composer = LlmComposer::new(&c).unwrap();
        let shown = format!("{planner:?} {composer:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}
