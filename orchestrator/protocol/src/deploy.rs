//! The agent configuration file: the contract between the launcher (the `sandbox` crate, which
//! writes it) and the agent runtime (which reads it at start-up).
//!
//! Inside a container it is mounted read-only at [`DEFAULT_AGENT_CONFIG_PATH`]; a process agent
//! finds it through the `AGENT_CONFIG` environment variable. It holds paths and settings only,
//! never secrets: secrets are files under `identity_dir`.

use serde::{Deserialize, Serialize};

use crate::message::IsolationReport;
use crate::name::AgentName;

/// Where a containerised agent finds its configuration.
pub const DEFAULT_AGENT_CONFIG_PATH: &str = "/config/agent.json";
/// The environment variable that overrides [`DEFAULT_AGENT_CONFIG_PATH`].
pub const AGENT_CONFIG_ENV: &str = "AGENT_CONFIG";
/// Largest configuration file accepted, in bytes.
pub const MAX_AGENT_CONFIG_BYTES: usize = 64 * 1024;

/// One agent's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent (must equal the binary's own manifest name).
    pub name: AgentName,
    /// NATS server URL, e.g. `nats://nats:4222` (TLS is always required).
    pub nats_url: String,
    /// A `provision::Layout` root holding at least `tls/ca.pem`,
    /// `tls/clients/<name>.pem` and `.key`, `nats/<name>.nk` and `keys/keyset.json`.
    pub identity_dir: String,
    /// A writable directory for the replay store and any agent state.
    pub data_dir: String,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u32,
    /// Requests handled at once; more wait.
    pub max_concurrency: u16,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace_ms: u32,
    /// The egress proxy (`http://host:port`), if the agent may reach anything beyond NATS.
    pub egress_proxy: Option<String>,
    /// Isolation as established by the launcher.
    pub isolation: IsolationReport,
    /// For process agents: confinement the runtime applies to itself before connecting.
    pub confine: Option<ConfinePlan>,
    /// The agent's own settings (its `Agent::Settings`).
    pub settings: serde_json::Value,
}

/// Self-confinement for an agent that runs as a host process (the process backend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfinePlan {
    /// Paths the agent may read (its identity files, its configuration, shared libraries).
    pub read_only: Vec<String>,
    /// Paths the agent may read and write (its data directory).
    pub read_write: Vec<String>,
    /// TCP ports the agent may connect to (NATS, and the destinations it may reach); others
    /// are refused where the kernel's Landlock supports network rules.
    pub connect_tcp_ports: Vec<u16>,
    /// Apply the seccomp allowlist.
    pub seccomp: bool,
}

impl AgentConfig {
    /// Parses a configuration file's bytes strictly.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_AGENT_CONFIG_BYTES {
            return Err(format!(
                "configuration is {} bytes; the limit is {MAX_AGENT_CONFIG_BYTES}",
                bytes.len()
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}
