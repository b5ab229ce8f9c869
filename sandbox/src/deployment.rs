//! What to run and what came of it: the backend-neutral types.

use std::path::PathBuf;

use protocol::AgentName;
use protocol::deploy::AgentConfig;
use protocol::manifest::HostPort;
use protocol::message::IsolationReport;

/// Which backend runs the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Hardened containers on a Docker engine.
    Docker,
    /// Self-confining host processes (weaker; reported as such).
    Process,
}

/// A file the agent needs, copied into its private secrets directory (mounted read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// Where it is on the host.
    pub source: PathBuf,
    /// Where it goes, relative to the agent's identity directory (e.g. `tls/ca.pem`).
    pub target: PathBuf,
}

/// Resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory (and memory + swap) limit in bytes.
    pub memory_bytes: i64,
    /// Most processes/threads.
    pub pids: i64,
    /// CPU in billionths of a CPU.
    pub nano_cpus: i64,
    /// Open files.
    pub nofile: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 128 * 1024 * 1024,
            pids: 64,
            nano_cpus: 500_000_000,
            nofile: 256,
        }
    }
}

/// Everything needed to run one agent.
#[derive(Debug, Clone)]
pub struct AgentDeployment {
    /// The agent.
    pub name: AgentName,
    /// Its compiled binary on the host.
    pub binary: PathBuf,
    /// Its configuration; the backend fills in the paths, NATS URL, proxy and isolation it
    /// establishes before writing it.
    pub config: AgentConfig,
    /// Files it may read (its identity, keyset, its own secrets): nothing else of the home.
    pub secrets: Vec<SecretFile>,
    /// Where it may connect beyond NATS (empty: nowhere).
    pub egress: Vec<HostPort>,
    /// Resource limits.
    pub limits: Limits,
}

/// Run state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Running.
    Running,
    /// Being restarted by the backend's restart policy.
    Restarting,
    /// Exited with this code.
    Exited(i64),
    /// Created but not started, paused, or another transient state (named).
    Other(String),
    /// Not present.
    Missing,
}

/// What the backend knows about one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    /// The agent.
    pub name: AgentName,
    /// Its state.
    pub state: RunState,
    /// The image digest it runs (`sha256:...`), Docker only.
    pub image_digest: Option<String>,
    /// Memory in use, in bytes, where the backend can tell.
    pub memory_bytes: Option<u64>,
    /// Restarts by the backend's policy.
    pub restart_count: u32,
    /// Whether the last exit was the memory limit.
    pub oom_killed: bool,
    /// Isolation in force.
    pub isolation: IsolationReport,
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No Docker engine answered.
    #[error("docker engine unavailable: {0}")]
    DockerUnavailable(String),
    /// The engine refused or failed an operation.
    #[error("docker {operation}: {source}")]
    Docker {
        /// What was being done.
        operation: &'static str,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// Building an image failed.
    #[error("image build: {0}")]
    Image(String),
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The deployment is inconsistent (e.g. config name differs from the agent's name).
    #[error("invalid deployment: {0}")]
    Invalid(String),
    /// The agent is not known to this sandbox.
    #[error("agent {0} is not deployed")]
    UnknownAgent(AgentName),
    /// Rendering the NATS configuration, connecting to NATS or creating its streams failed.
    #[error("{operation}: {source}")]
    Provision {
        /// What was being done.
        operation: &'static str,
        /// The provisioning error.
        #[source]
        source: provision::ProvisionError,
    },
}

impl SandboxError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            SandboxError::DockerUnavailable(_) => "sandbox_docker_unavailable",
            SandboxError::Docker { .. } => "sandbox_docker_error",
            SandboxError::Image(_) => "sandbox_image_build",
            SandboxError::Io { .. } => "sandbox_io",
            SandboxError::Invalid(_) => "sandbox_invalid_deployment",
            SandboxError::UnknownAgent(_) => "sandbox_unknown_agent",
            SandboxError::Provision { .. } => "sandbox_provision",
        }
    }
}
