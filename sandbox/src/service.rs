//! Host service processes: `nats-server` (process backend) and the `audit-writer`, which
//! `bot up` runs beside the agents.
//!
//! They are trusted services of the installation, not agents: no confinement, but the same
//! discipline as agents get: an explicit, minimal environment, their own working directory,
//! output to a log file, and a stop that signals SIGTERM and waits before killing. This module
//! exists so that starting a process stays the `sandbox` crate's job alone.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::SandboxError;

/// What to run.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// A name for logs and errors.
    pub name: String,
    /// The program.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Its working directory (created 0700 if missing).
    pub dir: PathBuf,
    /// Where its standard output and error go (appended).
    pub log: PathBuf,
}

/// A running service; dropping it kills the process.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts a service.
    pub fn spawn(spec: &ServiceSpec) -> Result<Service, SandboxError> {
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::Io {
                operation,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&spec.dir).map_err(io("create", &spec.dir))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&spec.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io("chmod", &spec.dir))?;
        }
        if let Some(parent) = spec.log.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(io("open log", &spec.log))?;
        let err = out.try_clone().map_err(io("open log", &spec.log))?;
        let child = Command::new(&spec.binary)
            .args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&spec.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(io("spawn", &spec.binary))?;
        Ok(Service {
            name: spec.name.clone(),
            child,
            log: spec.log.clone(),
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its log so far (for error messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited (and how), without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops it: SIGTERM, then SIGKILL after `grace`. Returns how it exited.
    pub async fn stop(mut self, grace: Duration) -> Result<ExitStatus, SandboxError> {
        if let Some(status) = self.try_exit() {
            return Ok(status);
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
                return Ok(status);
            }
        }
        let _ = self.child.start_kill();
        self.child.wait().await.map_err(|source| SandboxError::Io {
            operation: "wait for",
            path: PathBuf::from(&self.name),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn services_get_only_their_environment_and_stop_on_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ServiceSpec {
            name: "sleeper".to_owned(),
            binary: PathBuf::from("/bin/sh"),
            args: vec![
                "-c".to_owned(),
                "trap 'echo bye; exit 0' TERM; env > env.tmp && mv env.tmp env.txt; while :; do sleep 0.1; done"
                    .to_owned(),
            ],
            env: vec![("ONLY".to_owned(), "this".to_owned())],
            dir: dir.path().join("work"),
            log: dir.path().join("logs/sleeper.log"),
        };
        let service = Service::spawn(&spec).unwrap();
        assert!(service.id().is_some());
        let env_file = dir.path().join("work/env.txt");
        for _ in 0..100 {
            if env_file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let env = std::fs::read_to_string(&env_file).unwrap();
        assert!(env.contains("ONLY=this"), "{env}");
        assert!(!env.contains("HOME="), "the environment leaked: {env}");
        let status = service.stop(Duration::from_secs(5)).await.unwrap();
        assert!(status.success(), "{status:?}");
        assert!(std::fs::read_to_string(&spec.log).unwrap().contains("bye"));
    }
}
