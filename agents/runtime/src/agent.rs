//! What an agent implements ([`Agent`]) and what it is given ([`AgentContext`]).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use audit::emit::AuditEmitter;
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

    /// Work the agent does besides answering commands (for example, watching a stream).
    /// Default: none.
    ///
    /// The runtime calls this once, after the agent subscribed to its commands and sent its
    /// first heartbeat, and polls the future beside the command loop. `Ok(())` ends only the
    /// background work; an error stops the agent (exit code 1), so its supervisor restarts it.
    /// When shutdown is requested, `ctx.shutdown` completes: the work should then finish
    /// promptly; it is dropped if it is still running after the shutdown grace period.
    fn background(
        &self,
        _ctx: BackgroundContext,
    ) -> Option<impl Future<Output = Result<(), AgentError>> + Send> {
        None::<std::future::Ready<Result<(), AgentError>>>
    }
}

/// What an agent's background work is given (see [`Agent::background`]).
#[derive(Debug, Clone)]
pub struct BackgroundContext {
    /// The agent's name.
    pub name: AgentName,
    /// The agent's own NATS connection: its permissions bound what the work can do.
    pub client: async_nats::Client,
    /// Publishes audit events as the agent (to `audit.<agent>`).
    pub audit: AuditEmitter,
    /// Its writable data directory.
    pub data_dir: PathBuf,
    /// Completes when the agent is asked to shut down.
    pub shutdown: ShutdownSignal,
}

/// Tells background work that the agent is shutting down.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(tokio::sync::watch::Receiver<bool>);

impl ShutdownSignal {
    /// A signal and the switch that raises it (`send(true)`).
    pub fn channel() -> (tokio::sync::watch::Sender<bool>, ShutdownSignal) {
        let (switch, signal) = tokio::sync::watch::channel(false);
        (switch, ShutdownSignal(signal))
    }

    /// Completes once shutdown was requested (also if the switch is gone).
    pub async fn requested(&mut self) {
        let _gone = self.0.wait_for(|requested| *requested).await;
    }

    /// Whether shutdown was requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
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

/// Why an agent could not be built from its settings, or why its background work stopped.
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
