//! Docker test helpers: a unique instance per test with a teardown guard,
//! a provisioned home, agent deployments, and workspace binaries built on demand.
//!
//! A missing Docker engine fails the test (never a skip).

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
#[derive(Debug)]
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
    NatsSettings::new(crate::nats_server_bin(), home.clone())
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
    build_binary(package, bin, false)
}

/// The same in the release profile (what images ship; benchmarks use it).
pub fn workspace_release_binary(package: &str, bin: &str) -> PathBuf {
    build_binary(package, bin, true)
}

fn build_binary(package: &str, bin: &str, release: bool) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut args = vec![
        "build",
        "--quiet",
        "--message-format=json",
        "-p",
        package,
        "--bin",
        bin,
    ];
    if release {
        args.push("--release");
    }
    let output = Command::new(cargo)
        .current_dir(crate::workspace_root())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo {args:?} failed:\n{}",
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

/// A copy of `archive` with one more file: `planted`, a copy of `source` owned by root with the
/// setuid bit (mode 4755). The sandbox's image builder refuses setuid files; this is how the
/// security suite plants one to prove that no-new-privileges makes it worthless.
pub fn plant_setuid_root(
    archive: &sandbox::docker::image::ImageArchive,
    source: &str,
    planted: &str,
) -> sandbox::docker::image::ImageArchive {
    use sha2::{Digest as _, Sha256};
    use std::collections::BTreeMap;
    use std::io::Read as _;

    let mut outer: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut a = tar::Archive::new(archive.bytes.as_slice());
    for entry in a.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        outer.insert(path, bytes);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&outer["manifest.json"]).unwrap();
    let layer_path = manifest[0]["Layers"][0].as_str().unwrap().to_owned();
    let config_path = manifest[0]["Config"].as_str().unwrap().to_owned();

    // The layer again, plus the planted file.
    let mut layer = tar::Builder::new(Vec::new());
    let mut source_bytes = None;
    let mut entries = archive.entries.clone();
    let mut old = tar::Archive::new(outer[&layer_path].as_slice());
    for entry in old.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path == source.trim_start_matches('/') {
            source_bytes = Some(data.clone());
        }
        layer.append(&header, data.as_slice()).unwrap();
    }
    let data = source_bytes.unwrap_or_else(|| panic!("{source} is not in the image"));
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o4755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    let planted_rel = planted.trim_start_matches('/');
    layer
        .append_data(&mut header, planted_rel, data.as_slice())
        .unwrap();
    entries.push(sandbox::docker::image::LayerEntry {
        path: planted_rel.to_owned(),
        mode: 0o4755,
        uid: 0,
        gid: 0,
        size: data.len() as u64,
    });
    let layer = layer.into_inner().unwrap();
    let layer_hex = hex::encode(Sha256::digest(&layer));

    let mut config: serde_json::Value = serde_json::from_slice(&outer[&config_path]).unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!([format!("sha256:{layer_hex}")]);
    let config = serde_json::to_vec(&config).unwrap();
    let config_hex = hex::encode(Sha256::digest(&config));
    let tag = format!("assistant/probe-setuid:{}", &config_hex[..12]);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]))
    .unwrap();

    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        out.append_data(&mut h, path, bytes).unwrap();
    };
    add(&format!("{config_hex}.json"), &config);
    add(&format!("{layer_hex}/layer.tar"), &layer);
    add("manifest.json", &manifest);
    sandbox::docker::image::ImageArchive {
        bytes: out.into_inner().unwrap(),
        id: sandbox::docker::ImageId::parse(&format!("sha256:{config_hex}")).unwrap(),
        tag,
        entries,
    }
}

/// Which seccomp profile a control container runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlSeccomp {
    /// No filter at all.
    Unconfined,
    /// The engine's default profile (it allows starting processes, which ours does not).
    EngineDefault,
}

/// Runs `args` in a control container: the agent `d`'s exact container spec (same image,
/// user, read-only root, no capabilities, no-new-privileges, limits, mounts, network) except
/// for the seccomp profile, so a test can show which layer stops what. Returns its logs.
pub async fn run_control(
    t: &TestSandbox,
    d: &AgentDeployment,
    image: sandbox::docker::ImageId,
    args: &[&str],
    seccomp: ControlSeccomp,
) -> String {
    use bollard::query_parameters::CreateContainerOptionsBuilder;
    use futures::StreamExt as _;
    use sandbox::docker::spec::{self, AgentContainer, Restart};
    let dir = t.settings().state_dir.join(d.name.as_str());
    let mut control = spec::agent_spec(&AgentContainer {
        instance: t.instance().clone(),
        agent: d.name.clone(),
        image,
        secrets_dir: dir.join("secrets"),
        config_file: dir.join("agent.json"),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: Vec::new(),
        limits: d.limits,
        restart: Restart::No,
        stop_timeout_secs: 2,
    });
    control.name = format!("{}-control-{}", t.instance(), d.name);
    let mut body = spec::container_body(&control);
    let opts = body
        .host_config
        .as_mut()
        .and_then(|h| h.security_opt.as_mut())
        .expect("the spec sets security options");
    match seccomp {
        ControlSeccomp::Unconfined => {
            for o in opts.iter_mut() {
                if o.starts_with("seccomp=") {
                    *o = "seccomp=unconfined".to_owned();
                }
            }
        }
        ControlSeccomp::EngineDefault => opts.retain(|o| !o.starts_with("seccomp=")),
    }
    assert!(opts.iter().any(|o| o == "no-new-privileges:true"));
    let docker = t.client();
    let _ = docker
        .remove_container(
            &control.name,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await;
    docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&control.name)
                    .build(),
            ),
            body,
        )
        .await
        .unwrap();
    docker.start_container(&control.name, None).await.unwrap();
    let waited = tokio::time::timeout(
        PROBE_TIMEOUT,
        docker.wait_container(&control.name, None).next(),
    )
    .await
    .expect("control container did not finish");
    assert!(matches!(waited, Some(Ok(_))), "{waited:?}");
    let logs = t.container_logs(&control.name).await.unwrap();
    // A control is weaker than an agent by design; it must not outlive its test step.
    docker
        .remove_container(
            &control.name,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .unwrap();
    logs
}
