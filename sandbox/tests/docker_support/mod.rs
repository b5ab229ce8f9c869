//! Shared helpers for the Docker tests: a unique instance per test with a teardown guard,
//! a provisioned home, agent deployments, and workspace binaries built on demand.
//!
//! A missing Docker engine fails the test (never a skip).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    dead_code,
    unreachable_pub
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use protocol::acl::Identity;
use protocol::deploy::AgentConfig;
use protocol::message::{Isolation, IsolationReport};
use protocol::{AgentName, Principal};
use provision::{Layout, Spec};
use sandbox::docker::{DockerSandbox, DockerSettings, Instance, NatsSettings};
use sandbox::{AgentDeployment, Limits, SecretFile};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh instance name: unique per process and test.
pub fn unique_instance() -> Instance {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Instance::new(format!("t{:x}-{n}-{:x}", std::process::id(), nanos % 0xfff)).unwrap()
}

/// A sandbox on a unique instance with its own state directory, torn down when dropped.
pub struct TestSandbox {
    pub sandbox: DockerSandbox,
    pub dir: tempfile::TempDir,
    settings: DockerSettings,
}

impl TestSandbox {
    pub async fn new() -> TestSandbox {
        let dir = tempfile::tempdir().unwrap();
        let settings = DockerSettings {
            instance: unique_instance(),
            state_dir: dir.path().join("state"),
        };
        let sandbox = DockerSandbox::connect(settings.clone())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Docker engine ({e}); start it (e.g. `dockerd >/tmp/dockerd.log 2>&1 &`): \
                 these tests need a real engine"
                )
            });
        TestSandbox {
            sandbox,
            dir,
            settings,
        }
    }

    pub fn instance(&self) -> &Instance {
        &self.settings.instance
    }
}

impl std::ops::Deref for TestSandbox {
    type Target = DockerSandbox;
    fn deref(&self) -> &DockerSandbox {
        &self.sandbox
    }
}

impl Drop for TestSandbox {
    fn drop(&mut self) {
        // The test's runtime is blocked in this drop, so tear down from a fresh thread with its
        // own runtime and its own engine connection.
        let settings = self.settings.clone();
        let outcome = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let sandbox = DockerSandbox::connect(settings).await?;
                sandbox.teardown().await
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("teardown failed: {e}"),
            Err(_) => eprintln!("teardown panicked"),
        }
    }
}

/// A provisioned home with these agents.
pub fn home(dir: &Path, agents: &[&str]) -> Layout {
    let layout = Layout::new(dir.join("home"));
    let spec = Spec::new(agents.iter().map(|a| AgentName::new(*a).unwrap()).collect());
    provision::generate(&layout, &spec).unwrap();
    layout
}

/// The NATS settings for a home, with the workspace's `nats-server`.
pub fn nats_settings(home: &Layout) -> NatsSettings {
    NatsSettings::new(test_support::nats_server_bin(), home.clone())
}

/// An agent's secrets from a home, at their layout paths.
pub fn agent_secrets(home: &Layout, agent: &AgentName) -> Vec<SecretFile> {
    let p = Principal::new(agent.as_str()).unwrap();
    [
        home.ca_cert(),
        home.client_cert(&p),
        home.client_key(&p),
        home.nkey_seed(&p),
        home.keyset(),
    ]
    .into_iter()
    .map(|source| SecretFile {
        target: source.strip_prefix(home.root()).unwrap().to_path_buf(),
        source,
    })
    .collect()
}

/// A deployment of `binary` as agent `name`.
pub fn deployment(home: &Layout, name: &str, binary: &Path) -> AgentDeployment {
    let agent = AgentName::new(name).unwrap();
    AgentDeployment {
        name: agent.clone(),
        binary: binary.to_path_buf(),
        config: AgentConfig {
            name: agent.clone(),
            nats_url: "filled in by the sandbox".to_owned(),
            identity_dir: "filled in".to_owned(),
            data_dir: "filled in".to_owned(),
            heartbeat_interval_ms: 5_000,
            max_concurrency: 4,
            shutdown_grace_ms: 2_000,
            egress_proxy: None,
            isolation: IsolationReport {
                level: Isolation::None,
                measures: Vec::new(),
                missing: Vec::new(),
            },
            confine: None,
            settings: serde_json::json!({}),
        },
        secrets: agent_secrets(home, &agent),
        egress: Vec::new(),
        limits: Limits::default(),
    }
}

/// The principal of an agent.
pub fn principal(identity: Identity) -> Principal {
    identity.principal()
}

/// Builds a workspace binary (`cargo build -p <package> --bin <bin>`) and returns its path, so
/// tests always run the current code.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(test_support::workspace_root())
        .args([
            "build",
            "--quiet",
            "--message-format=json",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo build -p {package} --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo did not report the {bin} executable"))
}

/// One JSON line per probe check, by check name.
pub fn probe_results(logs: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter_map(|v| Some((v["check"].as_str()?.to_owned(), v)))
        .collect()
}

/// How long a probe may run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
