//! The process backend: agents as host processes, for development and hosts without Docker.
//!
//! Each agent gets its own directory under the state directory (0700) holding a private copy of
//! exactly the files it may read, its data directory and its configuration; it is spawned with
//! an empty environment (only `AGENT_CONFIG`) and that directory as its working directory, and
//! supervised (restarted on failure, at most [`MAX_RESTARTS`] times, with backoff). The agent
//! confines itself at start-up (`confine` crate: no_new_privs, seccomp allowlist, Landlock where
//! the kernel allows, TCP connect limited to NATS and its destinations) before it connects.
//!
//! Isolation is weaker than a container's, and every status says so: no network namespace,
//! no read-only root, no cgroup limits, no egress proxy (the agent reaches its destinations
//! directly, restricted by port only).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::AgentName;
use protocol::deploy::{AgentConfig, ConfinePlan};
use protocol::message::{Isolation, IsolationReport};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::Sandbox;
use crate::deployment::{AgentDeployment, AgentStatus, Backend, RunState, SandboxError};

/// Restarts after failures before the supervisor gives up.
pub const MAX_RESTARTS: u32 = 5;

/// Measures the process backend cannot provide, shown in every status.
pub const PROCESS_GAPS: &[&str] = &[
    "own network namespace: no (host network, TCP connect limited by port via Landlock)",
    "egress proxy: no (destinations reached directly)",
    "read-only root filesystem: no (Landlock limits paths where the kernel allows)",
    "memory, pids and CPU limits: no",
    "capabilities: those of the invoking user",
];

/// Settings for the process backend.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// Where each agent's directory lives (created 0700).
    pub state_dir: PathBuf,
    /// `RUST_LOG` for the agents (the only variable passed besides `AGENT_CONFIG`).
    pub log_filter: String,
}

#[derive(Debug)]
struct Entry {
    state: RunState,
    pid: Option<u32>,
    restarts: u32,
    stop: watch::Sender<bool>,
    deployment: AgentDeployment,
    grace: Duration,
}

/// Runs agents as supervised host processes.
#[derive(Debug)]
pub struct ProcessSandbox {
    settings: ProcessSettings,
    agents: Arc<Mutex<HashMap<AgentName, Entry>>>,
}

impl ProcessSandbox {
    /// A process backend keeping its state under `settings.state_dir`.
    pub fn new(settings: ProcessSettings) -> Result<Self, SandboxError> {
        create_private_dir(&settings.state_dir)?;
        Ok(ProcessSandbox {
            settings,
            agents: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The configuration the agent will read: paths inside its directory, no proxy, the
    /// confinement plan, and an honest isolation report.
    pub fn agent_config(
        deployment: &AgentDeployment,
        agent_dir: &Path,
    ) -> Result<AgentConfig, SandboxError> {
        let mut config = deployment.config.clone();
        if config.name != deployment.name {
            return Err(SandboxError::Invalid(format!(
                "config is for {}, deployment for {}",
                config.name, deployment.name
            )));
        }
        let identity = agent_dir.join("identity");
        let data = agent_dir.join("data");
        let nats_port = nats_port(&config.nats_url)?;
        let mut ports = vec![nats_port];
        ports.extend(deployment.egress.iter().map(|d| d.port()));
        ports.sort_unstable();
        ports.dedup();
        config.identity_dir = identity.display().to_string();
        config.data_dir = data.display().to_string();
        config.egress_proxy = None;
        config.confine = Some(ConfinePlan {
            read_only: vec![
                identity.display().to_string(),
                agent_dir.join("agent.json").display().to_string(),
            ],
            read_write: vec![data.display().to_string()],
            connect_tcp_ports: ports,
            seccomp: true,
        });
        config.isolation = IsolationReport {
            level: Isolation::Process,
            measures: vec![
                "empty environment".to_owned(),
                "private copy of its own files only".to_owned(),
            ],
            missing: PROCESS_GAPS.iter().map(|s| (*s).to_owned()).collect(),
        };
        Ok(config)
    }

    fn agent_dir(&self, name: &AgentName) -> PathBuf {
        self.settings.state_dir.join(name.as_str())
    }

    fn prepare(&self, deployment: &AgentDeployment) -> Result<PathBuf, SandboxError> {
        let dir = self.agent_dir(&deployment.name);
        create_private_dir(&dir)?;
        let identity = dir.join("identity");
        // A fresh copy each start: nothing stale, nothing beyond what the deployment lists.
        if identity.exists() {
            std::fs::remove_dir_all(&identity).map_err(io("remove", &identity))?;
        }
        create_private_dir(&identity)?;
        create_private_dir(&dir.join("data"))?;
        for secret in &deployment.secrets {
            let target = safe_join(&identity, &secret.target)?;
            if let Some(parent) = target.parent() {
                create_private_dir(parent)?;
            }
            std::fs::copy(&secret.source, &target).map_err(io("copy secret to", &target))?;
            set_mode(&target, 0o600)?;
        }
        let config = Self::agent_config(deployment, &dir)?;
        let text = serde_json::to_vec_pretty(&config)
            .map_err(|e| SandboxError::Invalid(format!("config: {e}")))?;
        let path = dir.join("agent.json");
        std::fs::write(&path, text).map_err(io("write", &path))?;
        set_mode(&path, 0o600)?;
        Ok(dir)
    }

    fn status(&self, name: &AgentName) -> Result<AgentStatus, SandboxError> {
        let agents = self.agents.lock().map_err(poisoned)?;
        let entry = agents
            .get(name)
            .ok_or_else(|| SandboxError::UnknownAgent(name.clone()))?;
        let memory_bytes = entry.pid.and_then(rss_of);
        Ok(AgentStatus {
            name: name.clone(),
            state: entry.state.clone(),
            image_digest: None,
            memory_bytes,
            restart_count: entry.restarts,
            oom_killed: false,
            isolation: IsolationReport {
                level: Isolation::Process,
                measures: vec![
                    "empty environment".to_owned(),
                    "private copy of its own files only".to_owned(),
                    "self-confinement requested: no_new_privs, seccomp allowlist, landlock"
                        .to_owned(),
                ],
                missing: PROCESS_GAPS.iter().map(|s| (*s).to_owned()).collect(),
            },
        })
    }
}

impl Sandbox for ProcessSandbox {
    fn backend(&self) -> Backend {
        Backend::Process
    }

    async fn start(&self, deployment: &AgentDeployment) -> Result<AgentStatus, SandboxError> {
        // Replace a running instance.
        if self
            .agents
            .lock()
            .map_err(poisoned)?
            .contains_key(&deployment.name)
        {
            self.stop(&deployment.name).await?;
        }
        let dir = self.prepare(deployment)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let grace = Duration::from_millis(u64::from(deployment.config.shutdown_grace_ms))
            + Duration::from_secs(2);
        self.agents.lock().map_err(poisoned)?.insert(
            deployment.name.clone(),
            Entry {
                state: RunState::Other("starting".to_owned()),
                pid: None,
                restarts: 0,
                stop: stop_tx,
                deployment: deployment.clone(),
                grace,
            },
        );
        let child = spawn(deployment, &dir, &self.settings.log_filter)?;
        tokio::spawn(supervise(
            Arc::clone(&self.agents),
            deployment.clone(),
            dir,
            self.settings.log_filter.clone(),
            child,
            stop_rx,
            grace,
        ));
        // Let the supervisor record the pid before reporting.
        tokio::task::yield_now().await;
        self.status(&deployment.name)
    }

    async fn stop(&self, name: &AgentName) -> Result<(), SandboxError> {
        let (stop, grace) = {
            let agents = self.agents.lock().map_err(poisoned)?;
            match agents.get(name) {
                Some(e) => (e.stop.clone(), e.grace),
                None => return Ok(()),
            }
        };
        let _ = stop.send(true);
        // The supervisor removes the entry once the process is gone.
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            if !self.agents.lock().map_err(poisoned)?.contains_key(name) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(SandboxError::Invalid(format!("agent {name} did not stop")))
    }

    async fn restart(&self, name: &AgentName) -> Result<AgentStatus, SandboxError> {
        let deployment = {
            let agents = self.agents.lock().map_err(poisoned)?;
            agents
                .get(name)
                .map(|e| e.deployment.clone())
                .ok_or_else(|| SandboxError::UnknownAgent(name.clone()))?
        };
        self.stop(name).await?;
        self.start(&deployment).await
    }

    async fn inspect(&self, name: &AgentName) -> Result<AgentStatus, SandboxError> {
        self.status(name)
    }
}

fn spawn(
    deployment: &AgentDeployment,
    dir: &Path,
    log_filter: &str,
) -> Result<Child, SandboxError> {
    let log = dir.join("agent.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io("open log", &log))?;
    let err = out.try_clone().map_err(io("open log", &log))?;
    Command::new(&deployment.binary)
        .env_clear()
        .env(protocol::deploy::AGENT_CONFIG_ENV, dir.join("agent.json"))
        .env("RUST_LOG", log_filter)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .map_err(io("spawn", &deployment.binary))
}

/// Owns the child: records its pid, restarts it on failure with backoff, stops it on request
/// (SIGTERM, then SIGKILL after the grace period), and removes the entry when done.
async fn supervise(
    agents: Arc<Mutex<HashMap<AgentName, Entry>>>,
    deployment: AgentDeployment,
    dir: PathBuf,
    log_filter: String,
    mut child: Child,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let name = deployment.name.clone();
    let set = |state: RunState, pid: Option<u32>, restarted: bool| {
        if let Ok(mut a) = agents.lock()
            && let Some(e) = a.get_mut(&name)
        {
            e.state = state;
            e.pid = pid;
            if restarted {
                e.restarts += 1;
            }
        }
    };
    let mut restarts = 0u32;
    loop {
        set(RunState::Running, child.id(), false);
        let exit = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.changed() => None,
        };
        match exit {
            None => {
                terminate(&mut child, grace).await;
                break;
            }
            Some(Ok(status)) if status.success() => {
                set(RunState::Exited(0), None, false);
                // A clean exit is not restarted; wait for a stop to remove the entry.
                let _ = stop.changed().await;
                break;
            }
            Some(status) => {
                let code = status.ok().and_then(|s| s.code()).map_or(-1, i64::from);
                tracing::warn!(agent = %name, code, "agent exited");
                if restarts >= MAX_RESTARTS {
                    set(RunState::Exited(code), None, false);
                    let _ = stop.changed().await;
                    break;
                }
                restarts += 1;
                set(RunState::Restarting, None, true);
                let backoff = Duration::from_millis(250 * u64::from(1u32 << restarts.min(5)));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                match spawn(&deployment, &dir, &log_filter) {
                    Ok(c) => child = c,
                    Err(e) => {
                        tracing::error!(agent = %name, error = %e, "cannot restart agent");
                        set(RunState::Exited(code), None, false);
                        let _ = stop.changed().await;
                        break;
                    }
                }
            }
        }
    }
    if let Ok(mut a) = agents.lock() {
        a.remove(&name);
    }
}

async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

fn nats_port(url: &str) -> Result<u16, SandboxError> {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .trim_end_matches('/');
    rest.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| SandboxError::Invalid(format!("NATS URL {url:?} has no port")))
}

/// Joins a relative target under `base`, refusing absolute paths and `..`.
fn safe_join(base: &Path, target: &Path) -> Result<PathBuf, SandboxError> {
    use std::path::Component;
    if target
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(SandboxError::Invalid(format!(
            "secret target {} must be a plain relative path",
            target.display()
        )));
    }
    Ok(base.join(target))
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn create_private_dir(path: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(path).map_err(io("create", path))?;
    set_mode(path, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io {
        operation,
        path,
        source,
    }
}

fn poisoned<T>(_poisoned: std::sync::PoisonError<T>) -> SandboxError {
    SandboxError::Invalid("sandbox state lock poisoned".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_targets_cannot_escape() {
        let base = Path::new("/state/hue/identity");
        assert!(safe_join(base, Path::new("tls/ca.pem")).is_ok());
        assert!(safe_join(base, Path::new("../../etc/passwd")).is_err());
        assert!(safe_join(base, Path::new("/etc/passwd")).is_err());
        assert!(safe_join(base, Path::new("tls/./ca.pem")).is_ok());
    }

    #[test]
    fn nats_ports_are_read_from_urls() {
        assert_eq!(nats_port("nats://127.0.0.1:4222").unwrap(), 4222);
        assert_eq!(nats_port("tls://localhost:14222/").unwrap(), 14222);
        assert!(nats_port("nats://localhost").is_err());
    }
}
