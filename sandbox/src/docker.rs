//! The Docker backend: every agent in its own hardened container on its own internal network,
//! on a real Docker engine (Engine API 1.41 or later, through bollard).
//!
//! What it does:
//! - builds each image from our own compiled binary and exactly the shared libraries it loads,
//!   deterministically, and loads it into the engine without a registry ([`image`]);
//! - runs each container with the same hardening (numeric unprivileged user, read-only root,
//!   no capabilities, no new privileges, a deny-by-default seccomp allowlist, resource limits,
//!   only the mounts it needs) from pure, snapshot-tested specs ([`spec`], [`seccomp`]);
//! - gives each agent its own `--internal` network on which the only other members are NATS
//!   (alias `nats`) and, if the agent needs egress, the egress proxy (alias `egress`)
//!   ([`network`]);
//! - runs NATS ([`DockerSandbox::ensure_nats`]) and the egress proxy
//!   ([`DockerSandbox::ensure_egress_proxy`]) in containers of their own;
//! - copies to each container exactly the secrets it may read (read-only mount) and writes its
//!   configuration with container paths;
//! - labels everything with its instance, so [`DockerSandbox::teardown`] removes exactly that.
//!
//! What it does not do: it never decides whether an agent should run, never mounts the Docker
//! socket or a host namespace, never pulls from a registry, never holds a signing key, and
//! never reads or logs secret contents (it copies files it is given). Images are shared,
//! content-addressed caches and survive teardown.

pub mod egress;
mod files;
pub mod image;
pub mod names;
pub mod nats;
pub mod network;
pub mod seccomp;
pub mod spec;
mod volume;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RestartContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use protocol::AgentName;
use protocol::deploy::AgentConfig;
use protocol::message::{Isolation, IsolationReport};

pub use egress::{AgentRule, EgressConfig, EgressSettings};
pub use image::ImageId;
pub use names::{Instance, LABEL_AGENT, LABEL_IMAGE, LABEL_INSTANCE, LABEL_ROLE};
pub use nats::{NatsEndpoint, NatsSettings};
pub use network::Subnet;
pub use spec::{EngineSecurity, Restart};

use crate::{AgentDeployment, AgentStatus, Backend, RunState, Sandbox, SandboxError};

/// Most bytes of container logs [`DockerSandbox::logs`] returns.
pub const MAX_LOG_BYTES: usize = 1024 * 1024;
/// How long the engine may take for one call before it is abandoned.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(120);

/// How to reach the engine and where to keep the files containers mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// This installation (or test): prefixes and labels everything created.
    pub instance: Instance,
    /// A directory the sandbox owns (created 0700): per-container copies of secrets and
    /// configuration files live here, in directories marked with the instance.
    pub state_dir: PathBuf,
}

/// How to run one agent container beyond its deployment (for probes and tests; a real agent
/// uses the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Arguments after the binary (default: none).
    pub args: Vec<String>,
    /// Environment, `KEY=value` (default: none; the agent reads `/config/agent.json`).
    pub env: Vec<String>,
    /// Restart policy (default: on failure, at most [`spec::MAX_RESTARTS`] times).
    pub restart: Restart,
    /// An image already loaded into the engine to run instead of one built from the
    /// deployment's binary (tests run probe images this way); the hardening is the same.
    pub image: Option<ImageId>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            args: Vec::new(),
            env: Vec::new(),
            restart: Restart::OnFailure(spec::MAX_RESTARTS),
            image: None,
        }
    }
}

/// An agent this sandbox started.
#[derive(Debug, Clone)]
struct Deployed {
    deployment: AgentDeployment,
    subnet: Subnet,
}

#[derive(Debug, Default)]
struct State {
    agents: BTreeMap<AgentName, Deployed>,
    nats: Option<NatsEndpoint>,
    egress: Option<EgressSettings>,
}

/// The Docker backend.
#[derive(Debug)]
pub struct DockerSandbox {
    /// Boxed: the backend lives in an enum next to the much smaller process backend.
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    docker: Docker,
    settings: DockerSettings,
    engine: EngineSecurity,
    state: tokio::sync::Mutex<State>,
    /// Serialises start, stop and the `ensure_*` calls (they share networks and rules).
    lifecycle: tokio::sync::Mutex<()>,
}

fn docker_error(operation: &'static str) -> impl FnOnce(bollard::errors::Error) -> SandboxError {
    move |source| SandboxError::Docker { operation, source }
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

impl DockerSandbox {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket), negotiates the API
    /// version, reads the engine's security options and creates the state directory.
    pub async fn connect(settings: DockerSettings) -> Result<DockerSandbox, SandboxError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| SandboxError::DockerUnavailable(format!("connect: {e}")))?
            .with_timeout(ENGINE_TIMEOUT)
            .negotiate_version()
            .await
            .map_err(|e| SandboxError::DockerUnavailable(format!("negotiate version: {e}")))?;
        let info = docker
            .info()
            .await
            .map_err(|e| SandboxError::DockerUnavailable(format!("info: {e}")))?;
        let engine = EngineSecurity::from_options(&info.security_options.unwrap_or_default());
        files::private_dir(&settings.state_dir)?;
        if !files::running_as_root() {
            tracing::warn!(
                "not running as root: secrets copied for containers keep their owner, so the \
                 container user (10001) cannot read them unless the engine maps users"
            );
        }
        tracing::info!(
            instance = %settings.instance,
            api = %docker.client_version(),
            engine = info.server_version.as_deref().unwrap_or("?"),
            "docker sandbox connected"
        );
        Ok(DockerSandbox {
            inner: Box::new(Inner {
                docker,
                settings,
                engine,
                state: tokio::sync::Mutex::new(State::default()),
                lifecycle: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The engine client (for inspection by tests and tools).
    pub fn client(&self) -> &Docker {
        &self.inner.docker
    }

    /// The settings.
    pub fn settings(&self) -> &DockerSettings {
        &self.inner.settings
    }

    /// What the engine offers beyond the container settings.
    pub fn engine_security(&self) -> &EngineSecurity {
        &self.inner.engine
    }

    /// An agent's container name.
    pub fn container_name(&self, agent: &AgentName) -> String {
        self.inner.settings.instance.agent_container(agent)
    }

    fn agent_dir(&self, agent: &AgentName) -> PathBuf {
        self.inner.settings.state_dir.join(agent.as_str())
    }

    /// Starts (or replaces) an agent with run options: a probe binary with its own arguments
    /// and no restarts runs exactly like an agent would.
    pub async fn start_with(
        &self,
        deployment: &AgentDeployment,
        options: &RunOptions,
    ) -> Result<AgentStatus, SandboxError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let name = &deployment.name;
        if deployment.config.name != *name {
            return Err(SandboxError::Invalid(format!(
                "the configuration names {} but the deployment is {name}",
                deployment.config.name
            )));
        }
        let (nats_ready, proxy_ready) = {
            let state = self.inner.state.lock().await;
            (state.nats.is_some(), state.egress.is_some())
        };
        if !nats_ready {
            return Err(SandboxError::Invalid(
                "NATS is not running: call ensure_nats first".to_owned(),
            ));
        }
        let needs_egress = !deployment.egress.is_empty();
        if needs_egress && !proxy_ready {
            return Err(SandboxError::Invalid(format!(
                "{name} needs egress but the egress proxy is not running"
            )));
        }
        let instance = &self.inner.settings.instance;
        let image = match &options.image {
            Some(id) => {
                if !image::exists(&self.inner.docker, id).await? {
                    return Err(SandboxError::Invalid(format!("image {id:?} is not loaded")));
                }
                id.clone()
            }
            None => {
                image::ensure(
                    &self.inner.docker,
                    &format!("agent-{name}"),
                    &deployment.binary,
                )
                .await?
            }
        };
        let container = instance.agent_container(name);
        self.remove_container(&container).await?;

        let net = instance.agent_network(name);
        let subnet = network::ensure(
            &self.inner.docker,
            &network::NetworkSpec {
                name: net.clone(),
                kind: network::Kind::Internal,
                labels: instance.labels("network", Some(name)),
            },
        )
        .await?;
        network::connect(
            &self.inner.docker,
            &net,
            &instance.nats_container(),
            &["nats"],
        )
        .await?;
        volume::ensure(
            &self.inner.docker,
            &instance.agent_volume(name),
            instance.labels("volume", Some(name)),
        )
        .await?;

        let dir = self.agent_dir(name);
        files::fresh_container_dir(&dir, instance)?;
        let secrets_dir = dir.join("secrets");
        files::copy_secrets(&secrets_dir, &deployment.secrets)?;
        let config_file = dir.join("agent.json");
        let spec = spec::agent_spec(&spec::AgentContainer {
            instance: instance.clone(),
            agent: name.clone(),
            image,
            secrets_dir,
            config_file: config_file.clone(),
            args: options.args.clone(),
            env: options.env.clone(),
            limits: deployment.limits,
            restart: options.restart,
            stop_timeout_secs: deployment
                .config
                .shutdown_grace_ms
                .div_ceil(1000)
                .clamp(1, 60)
                + 1,
        });
        let egress: Vec<String> = deployment.egress.iter().map(ToString::to_string).collect();
        let isolation = spec::isolation_report(&spec, &egress, &self.inner.engine);
        let config = container_config(&deployment.config, needs_egress, isolation);
        let text = serde_json::to_vec_pretty(&config)
            .map_err(|e| SandboxError::Invalid(format!("agent configuration: {e}")))?;
        files::write_public(&config_file, &text)?;

        self.inner.state.lock().await.agents.insert(
            name.clone(),
            Deployed {
                deployment: deployment.clone(),
                subnet,
            },
        );
        if needs_egress {
            network::connect(
                &self.inner.docker,
                &net,
                &instance.egress_container(),
                &["egress"],
            )
            .await?;
            self.reload_egress_rules().await?;
        }
        if let Err(e) = self.create_and_start(&spec).await {
            // Leave no rule behind for an agent that does not run.
            let removed = self.inner.state.lock().await.agents.remove(name);
            if needs_egress
                && removed.is_some()
                && let Err(reload) = self.reload_egress_rules().await
            {
                tracing::warn!(agent = %name, error = %reload, "egress rules not reloaded");
            }
            return Err(e);
        }
        tracing::info!(agent = %name, container = %container, %subnet, "agent started");
        self.inspect(name).await
    }

    /// Waits until an agent's container is not running and returns its exit code.
    pub async fn wait_exit(
        &self,
        agent: &AgentName,
        timeout: Duration,
    ) -> Result<i64, SandboxError> {
        let container = self.container_name(agent);
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waiting = self.inner.docker.wait_container(&container, Some(options));
        let outcome = tokio::time::timeout(timeout, waiting.next())
            .await
            .map_err(|_elapsed| {
                SandboxError::Invalid(format!("{container} still runs after {timeout:?}"))
            })?;
        match outcome {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(source)) => Err(SandboxError::Docker {
                operation: "wait for container",
                source,
            }),
            None => Err(SandboxError::UnknownAgent(agent.clone())),
        }
    }

    /// An agent container's output (stdout and stderr, interleaved), at most
    /// [`MAX_LOG_BYTES`] of its end.
    pub async fn logs(&self, agent: &AgentName) -> Result<String, SandboxError> {
        self.container_logs(&self.container_name(agent)).await
    }

    /// A container's output by container name (for NATS and the proxy too).
    pub async fn container_logs(&self, container: &str) -> Result<String, SandboxError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("all")
            .build();
        let mut stream = self.inner.docker.logs(container, Some(options));
        let mut out: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(docker_error("read logs"))?;
            out.extend_from_slice(&chunk.into_bytes());
            if out.len() > 2 * MAX_LOG_BYTES {
                let cut = out.len() - MAX_LOG_BYTES;
                out.drain(..cut);
            }
        }
        if out.len() > MAX_LOG_BYTES {
            let cut = out.len() - MAX_LOG_BYTES;
            out.drain(..cut);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Stops everything this instance runs, gracefully (SIGTERM and each container's stop
    /// timeout: agents drain, NATS flushes), agents first, then the egress proxy, then NATS;
    /// removes the containers and networks; and KEEPS the volumes (JetStream data, the agents'
    /// replay stores) and the state directory for the next start. `bot up` calls this on Ctrl-C.
    pub async fn shutdown(&self) -> Result<(), SandboxError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let containers = self.own_containers().await?;
        let role = |c: &bollard::models::ContainerSummary| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ROLE))
                .cloned()
                .unwrap_or_default()
        };
        let rank = |r: &str| match r {
            "agent" => 0,
            "egress" => 1,
            "nats" => 3,
            _ => 2,
        };
        let mut ordered: Vec<(u8, String)> = containers
            .iter()
            .filter_map(|c| c.id.clone().map(|id| (rank(&role(c)), id)))
            .collect();
        ordered.sort();
        for (_, id) in ordered {
            self.remove_container(&id).await?;
        }
        self.remove_own_networks().await?;
        *self.inner.state.lock().await = State::default();
        tracing::info!(instance = %self.inner.settings.instance, "sandbox stopped (volumes kept)");
        Ok(())
    }

    /// Removes everything labelled with this instance (containers, networks, volumes) and the
    /// directories it wrote under the state directory. Images stay (shared caches).
    pub async fn teardown(&self) -> Result<(), SandboxError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let filter = self.inner.settings.instance.filter();
        let containers = self.own_containers().await?;
        for c in containers {
            if let Some(id) = c.id {
                self.force_remove(&id).await?;
            }
        }
        self.remove_own_networks().await?;
        let volumes = self
            .inner
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(docker_error("list volumes"))?;
        for v in volumes.volumes.unwrap_or_default() {
            volume::remove(&self.inner.docker, &v.name).await?;
        }
        self.remove_own_dirs()?;
        *self.inner.state.lock().await = State::default();
        tracing::info!(instance = %self.inner.settings.instance, "sandbox torn down");
        Ok(())
    }

    /// Every container labelled with this instance, running or not.
    async fn own_containers(&self) -> Result<Vec<bollard::models::ContainerSummary>, SandboxError> {
        let filter = self.inner.settings.instance.filter();
        self.inner
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(docker_error("list containers"))
    }

    /// Removes every network labelled with this instance.
    async fn remove_own_networks(&self) -> Result<(), SandboxError> {
        let filter = self.inner.settings.instance.filter();
        let networks = self
            .inner
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(docker_error("list networks"))?;
        for n in networks {
            if let Some(name) = n.name {
                network::remove(&self.inner.docker, &name).await?;
            }
        }
        Ok(())
    }

    fn remove_own_dirs(&self) -> Result<(), SandboxError> {
        let dir = &self.inner.settings.state_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(SandboxError::Io {
                    operation: "list",
                    path: dir.clone(),
                    source,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| SandboxError::Io {
                operation: "list",
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.join(files::MARKER).is_file() {
                files::remove_container_dir(&path, &self.inner.settings.instance)?;
            }
        }
        Ok(())
    }

    /// The image of a container that is running (or restarting), if any.
    async fn running_image(&self, container: &str) -> Result<Option<ImageId>, SandboxError> {
        match self.inner.docker.inspect_container(container, None).await {
            Ok(c) => {
                let live = c
                    .state
                    .as_ref()
                    .is_some_and(|s| s.running == Some(true) || s.restarting == Some(true));
                Ok(live
                    .then(|| c.image.as_deref().and_then(|i| ImageId::parse(i).ok()))
                    .flatten())
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(source) => Err(SandboxError::Docker {
                operation: "inspect container",
                source,
            }),
        }
    }

    /// Stops (gracefully) and removes a container; nothing happens if it is absent.
    async fn remove_container(&self, container: &str) -> Result<(), SandboxError> {
        match self
            .inner
            .docker
            .stop_container(
                container,
                Some(StopContainerOptionsBuilder::default().build()),
            )
            .await
        {
            // 304: already stopped.
            Ok(()) => {}
            Err(e) if is_status(&e, 304) => {}
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(source) => {
                return Err(SandboxError::Docker {
                    operation: "stop container",
                    source,
                });
            }
        }
        self.force_remove(container).await
    }

    async fn force_remove(&self, container: &str) -> Result<(), SandboxError> {
        match self
            .inner
            .docker
            .remove_container(
                container,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // 409: removal already in progress.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(source) => Err(SandboxError::Docker {
                operation: "remove container",
                source,
            }),
        }
    }

    async fn create_and_start(&self, spec: &spec::ContainerSpec) -> Result<(), SandboxError> {
        let body = spec::container_body(spec);
        let created = self
            .inner
            .docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::default()
                        .name(&spec.name)
                        .build(),
                ),
                body,
            )
            .await
            .map_err(docker_error("create container"))?;
        for warning in &created.warnings {
            tracing::warn!(container = %spec.name, %warning, "engine warning");
        }
        self.inner
            .docker
            .start_container(&spec.name, None)
            .await
            .map_err(docker_error("start container"))
    }

    async fn published_port(&self, container: &str, port: u16) -> Result<u16, SandboxError> {
        let c = self
            .inner
            .docker
            .inspect_container(container, None)
            .await
            .map_err(docker_error("inspect container"))?;
        c.network_settings
            .and_then(|n| n.ports)
            .and_then(|mut p| p.remove(&format!("{port}/tcp")))
            .flatten()
            .into_iter()
            .flatten()
            .filter(|b| b.host_ip.as_deref() == Some("127.0.0.1"))
            .find_map(|b| b.host_port?.parse().ok())
            .ok_or_else(|| {
                SandboxError::Invalid(format!("{container} publishes no port for {port}/tcp"))
            })
    }

    /// Every network of this instance that NATS must be on: the agents' and the proxy's.
    async fn networks_needing_nats(&self) -> Result<Vec<String>, SandboxError> {
        let networks = self
            .inner
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&self.inner.settings.instance.filter())
                    .build(),
            ))
            .await
            .map_err(docker_error("list networks"))?;
        let egress_nats = self.inner.settings.instance.egress_nats_network();
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                let is_agent = n
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(LABEL_AGENT));
                let name = n.name?;
                (is_agent || name == egress_nats).then_some(name)
            })
            .collect())
    }

    async fn stop_agent(&self, name: &AgentName) -> Result<(), SandboxError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let instance = &self.inner.settings.instance;
        let container = instance.agent_container(name);
        self.remove_container(&container).await?;
        let removed = self.inner.state.lock().await.agents.remove(name);
        let net = instance.agent_network(name);
        if removed.is_some_and(|d| !d.deployment.egress.is_empty()) {
            self.reload_egress_rules().await?;
        }
        network::disconnect(&self.inner.docker, &net, &instance.egress_container()).await?;
        network::disconnect(&self.inner.docker, &net, &instance.nats_container()).await?;
        network::remove(&self.inner.docker, &net).await?;
        files::remove_container_dir(&self.agent_dir(name), instance)?;
        tracing::info!(agent = %name, "agent stopped");
        Ok(())
    }

    /// The isolation an agent was started with (from its configuration file).
    fn isolation_of(&self, name: &AgentName) -> IsolationReport {
        let path = self.agent_dir(name).join("agent.json");
        read_isolation(&path).unwrap_or_else(|reason| IsolationReport {
            level: Isolation::Container,
            measures: Vec::new(),
            missing: vec![format!("isolation report unavailable: {reason}")],
        })
    }

    async fn status(&self, name: &AgentName) -> Result<AgentStatus, SandboxError> {
        let container = self.container_name(name);
        let c = match self.inner.docker.inspect_container(&container, None).await {
            Ok(c) => c,
            Err(e) if is_status(&e, 404) => {
                if self.inner.state.lock().await.agents.contains_key(name) {
                    return Ok(AgentStatus {
                        name: name.clone(),
                        state: RunState::Missing,
                        image_digest: None,
                        memory_bytes: None,
                        restart_count: 0,
                        oom_killed: false,
                        isolation: self.isolation_of(name),
                    });
                }
                return Err(SandboxError::UnknownAgent(name.clone()));
            }
            Err(source) => {
                return Err(SandboxError::Docker {
                    operation: "inspect container",
                    source,
                });
            }
        };
        let state = c.state.clone().unwrap_or_default();
        let run_state = run_state(&state);
        let memory_bytes = if run_state == RunState::Running {
            let mut stats = self.inner.docker.stats(
                &container,
                Some(
                    StatsOptionsBuilder::default()
                        .stream(false)
                        .one_shot(true)
                        .build(),
                ),
            );
            match stats.next().await {
                Some(Ok(s)) => s.memory_stats.and_then(|m| m.usage),
                Some(Err(source)) => {
                    return Err(SandboxError::Docker {
                        operation: "read container stats",
                        source,
                    });
                }
                None => None,
            }
        } else {
            None
        };
        Ok(AgentStatus {
            name: name.clone(),
            state: run_state,
            image_digest: c.image.clone(),
            memory_bytes,
            restart_count: u32::try_from(c.restart_count.unwrap_or(0)).unwrap_or(u32::MAX),
            oom_killed: state.oom_killed.unwrap_or(false),
            isolation: self.isolation_of(name),
        })
    }
}

/// The agent's configuration with the paths and endpoints of its container. Pure.
pub fn container_config(
    config: &AgentConfig,
    egress: bool,
    isolation: IsolationReport,
) -> AgentConfig {
    AgentConfig {
        nats_url: format!("nats://nats:{}", spec::NATS_PORT),
        identity_dir: spec::SECRETS_DIR.to_owned(),
        data_dir: spec::DATA_DIR.to_owned(),
        egress_proxy: egress.then(|| format!("http://egress:{}", spec::EGRESS_PORT)),
        isolation,
        confine: None,
        ..config.clone()
    }
}

fn read_isolation(path: &Path) -> Result<IsolationReport, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    AgentConfig::from_json(&bytes).map(|c| c.isolation)
}

fn run_state(state: &bollard::models::ContainerState) -> RunState {
    use bollard::models::ContainerStateStatusEnum as S;
    if state.restarting == Some(true) {
        return RunState::Restarting;
    }
    match state.status {
        Some(S::RUNNING) => RunState::Running,
        Some(S::RESTARTING) => RunState::Restarting,
        Some(S::EXITED) => RunState::Exited(state.exit_code.unwrap_or(-1)),
        Some(other) => RunState::Other(other.to_string()),
        None => RunState::Other("unknown".to_owned()),
    }
}

impl Sandbox for DockerSandbox {
    fn backend(&self) -> Backend {
        Backend::Docker
    }

    async fn start(&self, deployment: &AgentDeployment) -> Result<AgentStatus, SandboxError> {
        self.start_with(deployment, &RunOptions::default()).await
    }

    async fn stop(&self, name: &AgentName) -> Result<(), SandboxError> {
        self.stop_agent(name).await
    }

    async fn restart(&self, name: &AgentName) -> Result<AgentStatus, SandboxError> {
        let container = self.container_name(name);
        match self
            .inner
            .docker
            .restart_container(
                &container,
                Some(RestartContainerOptionsBuilder::default().build()),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => return Err(SandboxError::UnknownAgent(name.clone())),
            Err(source) => {
                return Err(SandboxError::Docker {
                    operation: "restart container",
                    source,
                });
            }
        }
        self.status(name).await
    }

    async fn inspect(&self, name: &AgentName) -> Result<AgentStatus, SandboxError> {
        self.status(name).await
    }
}
