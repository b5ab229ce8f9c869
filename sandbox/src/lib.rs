//! The sandbox: the only code that starts agent processes or containers.
//!
//! One interface ([`Sandbox`]) with two backends, chosen once at start-up ([`AnySandbox`]):
//! - `docker`: each agent in its own hardened container on its own internal network, built from
//!   our compiled binary (no shell, no package manager), with NATS in a container of our own
//!   attached to every agent network, and egress only through the egress proxy;
//! - `process`: for development and hosts without Docker, a host process with a scrubbed
//!   environment that confines itself (no_new_privs, seccomp, Landlock where the kernel allows)
//!   and reports its weaker isolation in every heartbeat.
//!
//! What it does not do: it never decides *whether* an agent should run (the orchestrator does),
//! never holds a token signing key, and never talks NATS.
#![forbid(unsafe_code)]

pub mod deployment;
pub mod docker;
pub mod process;
pub mod service;

pub use deployment::{
    AgentDeployment, AgentStatus, Backend, Limits, RunState, SandboxError, SecretFile,
};

use protocol::AgentName;

/// What every backend offers the orchestrator.
pub trait Sandbox: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Starts (or replaces) one agent.
    fn start(
        &self,
        deployment: &AgentDeployment,
    ) -> impl Future<Output = Result<AgentStatus, SandboxError>> + Send;

    /// Stops and removes one agent (idempotent).
    fn stop(&self, name: &AgentName) -> impl Future<Output = Result<(), SandboxError>> + Send;

    /// Restarts one agent in place.
    fn restart(
        &self,
        name: &AgentName,
    ) -> impl Future<Output = Result<AgentStatus, SandboxError>> + Send;

    /// State, image digest, memory, restarts and isolation of one agent.
    fn inspect(
        &self,
        name: &AgentName,
    ) -> impl Future<Output = Result<AgentStatus, SandboxError>> + Send;
}

/// The backend chosen at start-up.
#[derive(Debug)]
pub enum AnySandbox {
    /// Containers on a Docker engine.
    Docker(docker::DockerSandbox),
    /// Host processes.
    Process(process::ProcessSandbox),
}

impl Sandbox for AnySandbox {
    fn backend(&self) -> Backend {
        match self {
            AnySandbox::Docker(d) => d.backend(),
            AnySandbox::Process(p) => p.backend(),
        }
    }

    async fn start(&self, deployment: &AgentDeployment) -> Result<AgentStatus, SandboxError> {
        match self {
            AnySandbox::Docker(d) => d.start(deployment).await,
            AnySandbox::Process(p) => p.start(deployment).await,
        }
    }

    async fn stop(&self, name: &AgentName) -> Result<(), SandboxError> {
        match self {
            AnySandbox::Docker(d) => d.stop(name).await,
            AnySandbox::Process(p) => p.stop(name).await,
        }
    }

    async fn restart(&self, name: &AgentName) -> Result<AgentStatus, SandboxError> {
        match self {
            AnySandbox::Docker(d) => d.restart(name).await,
            AnySandbox::Process(p) => p.restart(name).await,
        }
    }

    async fn inspect(&self, name: &AgentName) -> Result<AgentStatus, SandboxError> {
        match self {
            AnySandbox::Docker(d) => d.inspect(name).await,
            AnySandbox::Process(p) => p.inspect(name).await,
        }
    }
}
