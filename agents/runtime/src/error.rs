//! Why an agent could not start or stopped running.

use std::path::PathBuf;

use protocol::AgentName;

use crate::agent::AgentError;
use crate::replay::ReplayError;

/// Exit code for a configuration problem (`EX_USAGE`, as `sysexits.h` spells it).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for a build defect (`EX_SOFTWARE`): the agent's manifest is not in this build.
pub const EXIT_SOFTWARE: u8 = 70;
/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// A problem found before anything connects. Every one is a configuration problem (exit 64)
/// except a missing manifest (exit 70) and a confinement that could not be applied (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    ConfigUnreadable {
        /// Where it was looked for.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is over the size limit.
    #[error("the configuration {path} is over {limit} bytes")]
    ConfigTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The configuration is not a valid `AgentConfig` (strict parsing, then field checks).
    #[error("invalid configuration: {0}")]
    ConfigInvalid(String),
    /// The configuration is for another agent than this binary.
    #[error("the configuration is for agent {config}, this binary is agent {manifest}")]
    WrongAgent {
        /// The name in the configuration.
        config: AgentName,
        /// The binary's agent.
        manifest: AgentName,
    },
    /// The agent's manifest is not in this build.
    #[error("the agent's manifest did not load (see the catalog's tests)")]
    ManifestMissing,
    /// The agent's settings do not parse into its `Settings` type.
    #[error("invalid agent settings: {0}")]
    Settings(#[source] serde_json::Error),
    /// The token keyset could not be loaded.
    #[error("cannot load the token keyset {path}: {reason}")]
    Keyset {
        /// The keyset file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The replay store could not be opened.
    #[error("cannot open the replay store: {0}")]
    ReplayStore(#[from] ReplayError),
    /// The agent refused its settings.
    #[error("the agent cannot start: {0}")]
    Agent(#[from] AgentError),
    /// The agent's NATS identity files are missing or unsafe.
    #[error("the agent's NATS identity is unusable: {0}")]
    Identity(#[source] provision::ProvisionError),
    /// Self-confinement failed (the agent must not run unconfined when asked to confine).
    #[error("self-confinement failed: {0}")]
    Confine(#[source] confine::ConfineError),
}

impl StartError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            StartError::ConfigUnreadable { .. } => "config_unreadable",
            StartError::ConfigTooLarge { .. } => "config_too_large",
            StartError::ConfigInvalid(_) => "config_invalid",
            StartError::WrongAgent { .. } => "config_wrong_agent",
            StartError::ManifestMissing => "manifest_missing",
            StartError::Settings(_) => "settings_invalid",
            StartError::Keyset { .. } => "keyset_unavailable",
            StartError::ReplayStore(e) => e.code(),
            StartError::Agent(e) => e.code(),
            StartError::Identity(e) => e.code(),
            StartError::Confine(e) => e.code(),
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::ManifestMissing => EXIT_SOFTWARE,
            StartError::Confine(_) => EXIT_FAILURE,
            _ => EXIT_CONFIG,
        }
    }
}

/// Why [`crate::run`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A start-up check failed.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The command subscription was refused.
    #[error("cannot subscribe to commands: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The connection could not be flushed.
    #[error("cannot flush the connection: {0}")]
    Flush(#[source] async_nats::client::FlushError),
    /// The command subscription ended (the connection was closed).
    #[error("the command subscription ended")]
    SubscriptionClosed,
    /// The agent's background work failed ([`crate::Agent::background`]).
    #[error("the agent's background work failed: {0}")]
    Background(#[source] AgentError),
}

impl RuntimeError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::Start(e) => e.code(),
            RuntimeError::Subscribe(_) => "runtime_subscribe_failed",
            RuntimeError::Flush(_) => "runtime_flush_failed",
            RuntimeError::SubscriptionClosed => "runtime_subscription_closed",
            RuntimeError::Background(e) => e.code(),
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            RuntimeError::Start(e) => e.exit_code(),
            _ => EXIT_FAILURE,
        }
    }
}
