//! What an agent implements ([`Agent`]) and what it is given ([`AgentContext`]).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use protocol::deploy::AgentConfig;
use protocol::manifest::CheckedManifest;
use protocol::message::{ErrorCode, Outcome};
use protocol::{ActionName, AgentName};
use serde::de::DeserializeOwned;

use crate::screen::one_line;

/// One agent's logic. The runtime does everything else: configuration, NATS, strict decoding,
/// token checks, argument validation, audit events, heartbeats and shutdown.
pub trait Agent: Sized + Send + Sync + 'static {
    /// The agent's own settings (`settings` in the configuration file), parsed strictly.
    type Settings: DeserializeOwned + Send;

    /// The agent crate's version (`env!("CARGO_PKG_VERSION")`), shown in heartbeats.
    const VERSION: &'static str;

    /// The agent's manifest, normally `catalog::get(..)`. `None` only if the manifest did not
    /// load (a build defect the catalog's tests catch); the runtime then refuses to start.
    fn manifest() -> Option<&'static CheckedManifest>;

    /// Builds the agent from its settings. Called once, before anything connects; an error
    /// stops the process with exit code 64.
    fn new(settings: Self::Settings, ctx: &AgentContext) -> Result<Self, AgentError>;

    /// Performs one action. The runtime calls it only for an action of the manifest, after the
    /// capability token verified (and its nonce was recorded) and the arguments passed the
    /// action's schema, and bounds it with the action's `timeout_ms`.
    fn handle(
        &self,
        action: &ActionName,
        args: &serde_json::Value,
    ) -> impl Future<Output = Result<Outcome, ActionError>> + Send;
}

/// What an agent is given when it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentContext {
    /// The agent's name.
    pub name: AgentName,
    /// Its identity directory (a `provision::Layout` root): certificates, nkey, keyset and its
    /// own secret files, read-only.
    pub identity_dir: PathBuf,
    /// Its writable data directory.
    pub data_dir: PathBuf,
    /// The egress proxy (`http://host:port`) all its traffic beyond NATS must go through, if
    /// it may reach anything at all.
    pub egress_proxy: Option<String>,
}

impl AgentContext {
    /// The context described by a configuration.
    pub fn from_config(config: &AgentConfig) -> Self {
        AgentContext {
            name: config.name.clone(),
            identity_dir: PathBuf::from(&config.identity_dir),
            data_dir: PathBuf::from(&config.data_dir),
            egress_proxy: config.egress_proxy.clone(),
        }
    }
}

/// Why an action failed: a stable code and one line for operators. Never put secrets or raw
/// internals (file paths, keys, full upstream responses) in the message.
#[derive(Clone, PartialEq, Eq)]
pub struct ActionError {
    code: ErrorCode,
    message: String,
}

/// The longest action error message kept, in bytes.
pub const MAX_ACTION_MESSAGE: usize = 512;

impl ActionError {
    /// An error with a code of this workspace (`[a-z0-9_]`, 1 to 48 bytes; anything else
    /// becomes `agent_error`) and a message, which is cut to one line of at most
    /// [`MAX_ACTION_MESSAGE`] bytes.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        let code =
            ErrorCode::new(code).unwrap_or_else(|_bad_code| ErrorCode::from_static("agent_error"));
        ActionError {
            code,
            message: one_line(&message.into(), MAX_ACTION_MESSAGE),
        }
    }

    /// The code.
    pub fn code(&self) -> &ErrorCode {
        &self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActionError({}: {})", self.code.as_str(), self.message)
    }
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ActionError {}

/// Why an agent could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AgentError {
    code: &'static str,
    message: String,
}

impl AgentError {
    /// An error with a stable code and a one-line message (no secrets).
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        AgentError {
            code,
            message: one_line(&message.into(), MAX_ACTION_MESSAGE),
        }
    }

    /// Stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}
