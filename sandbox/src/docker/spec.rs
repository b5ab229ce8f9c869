//! Container specifications: pure functions from what to run to the Engine API's create body.
//!
//! Every container (agent, NATS, egress proxy) gets the same hardening: a numeric unprivileged
//! user, a read-only root filesystem, a small `noexec` tmpfs at `/tmp`, no capabilities, no new
//! privileges, a deny-by-default seccomp allowlist (inline JSON), memory (and memory + swap),
//! process, CPU and open-file limits, no IPC namespace sharing and no `/dev/shm`, a private
//! cgroup namespace, one network, bounded logs, and only the mounts listed here. Nothing is
//! privileged, no host namespace is joined, no device is added, the Docker socket is never
//! mounted, there is no init process and no health check (heartbeats report health).
//!
//! The specs are snapshot-tested (`snapshots/*.json`).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, HostConfigCgroupnsModeEnum,
    HostConfigLogConfig, Mount, MountBindOptions, MountType, NetworkingConfig, PortBinding,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use protocol::AgentName;
use protocol::message::{Isolation, IsolationReport};

use super::image::{AGENT_GID, AGENT_UID, ImageId};
use super::names::{Instance, LABEL_IMAGE};
use super::seccomp::Profile;
use crate::Limits;

/// Where an agent's secrets are mounted (read-only): its `identity_dir`.
pub const SECRETS_DIR: &str = "/run/secrets";
/// Where an agent's writable data volume is mounted: its `data_dir`.
pub const DATA_DIR: &str = "/data";
/// Where an agent's configuration file is mounted (read-only).
pub const AGENT_CONFIG_PATH: &str = protocol::deploy::DEFAULT_AGENT_CONFIG_PATH;
/// Where the NATS configuration is mounted (read-only).
pub const NATS_CONFIG_PATH: &str = "/config/nats-server.conf";
/// Where the egress proxy's configuration directory is mounted (read-only); the file is
/// `egress.json` in it.
pub const EGRESS_CONFIG_DIR: &str = "/config";
/// The port NATS listens on inside its container.
pub const NATS_PORT: u16 = 4222;
/// The port the egress proxy listens on.
pub const EGRESS_PORT: u16 = 3128;
/// The options of the `/tmp` tmpfs.
/// Owned by the container user (10001) and private to it: without `uid`/`gid` the engine mounts
/// it root-owned 0755 and the agent could not write its own scratch space.
pub const TMPFS_OPTIONS: &str = "rw,noexec,nosuid,nodev,size=16m,mode=0700,uid=10001,gid=10001";
/// Most restarts of the on-failure policy.
pub const MAX_RESTARTS: u32 = 5;
/// Size of one log file, and how many are kept.
const LOG_MAX_SIZE: &str = "1m";
const LOG_MAX_FILES: &str = "2";

/// What a container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agent (or a probe run in an agent's place).
    Agent,
    /// The NATS server.
    Nats,
    /// The egress proxy.
    Egress,
}

impl Role {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Nats => "nats",
            Role::Egress => "egress",
        }
    }

    /// Its seccomp profile.
    pub fn profile(self) -> Profile {
        match self {
            Role::Agent => Profile::Agent,
            Role::Nats => Profile::Nats,
            Role::Egress => Profile::Egress,
        }
    }
}

/// The restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Never restart (probes, one-shot runs).
    No,
    /// Restart after a non-zero exit, at most this many times.
    OnFailure(u32),
}

/// Where a mount comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host path (always mounted read-only here).
    Bind(PathBuf),
    /// A named volume (read-write).
    Volume(String),
}

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The source.
    pub source: MountSource,
    /// Where it appears in the container.
    pub target: String,
}

/// A port published to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// The container's TCP port.
    pub container_port: u16,
    /// The host address it is bound to (loopback).
    pub host_ip: Ipv4Addr,
    /// The host port (0: the engine picks a free one).
    pub host_port: u16,
}

/// Everything one container is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// The instance.
    pub instance: Instance,
    /// What it is.
    pub role: Role,
    /// The agent (agents only).
    pub agent: Option<AgentName>,
    /// Its image.
    pub image: ImageId,
    /// The network it is created on (others are connected afterwards).
    pub network: String,
    /// DNS aliases on that network.
    pub aliases: Vec<String>,
    /// Mounts.
    pub mounts: Vec<MountSpec>,
    /// Arguments after the image's entrypoint.
    pub args: Vec<String>,
    /// Environment (`KEY=value`); empty unless a caller asks.
    pub env: Vec<String>,
    /// Resource limits.
    pub limits: Limits,
    /// Restart policy.
    pub restart: Restart,
    /// A port published on the host's loopback, if any.
    pub publish: Option<Publish>,
    /// Seconds `docker stop` waits after SIGTERM.
    pub stop_timeout_secs: u32,
}

/// An agent container: its secrets directory and config file (read-only), its data volume, its
/// own network, on-failure restarts unless `restart` says otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentContainer {
    /// The instance.
    pub instance: Instance,
    /// The agent.
    pub agent: AgentName,
    /// Its image.
    pub image: ImageId,
    /// The host directory copied for it, mounted at [`SECRETS_DIR`].
    pub secrets_dir: PathBuf,
    /// The host config file, mounted at [`AGENT_CONFIG_PATH`].
    pub config_file: PathBuf,
    /// Arguments after the entrypoint (none for a real agent).
    pub args: Vec<String>,
    /// Environment (none for a real agent).
    pub env: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// Restart policy.
    pub restart: Restart,
    /// Stop grace, seconds.
    pub stop_timeout_secs: u32,
}

/// The spec of an agent container. Pure.
pub fn agent_spec(a: &AgentContainer) -> ContainerSpec {
    ContainerSpec {
        name: a.instance.agent_container(&a.agent),
        instance: a.instance.clone(),
        role: Role::Agent,
        agent: Some(a.agent.clone()),
        image: a.image.clone(),
        network: a.instance.agent_network(&a.agent),
        aliases: vec![a.agent.to_string()],
        mounts: vec![
            MountSpec {
                source: MountSource::Bind(a.secrets_dir.clone()),
                target: SECRETS_DIR.to_owned(),
            },
            MountSpec {
                source: MountSource::Bind(a.config_file.clone()),
                target: AGENT_CONFIG_PATH.to_owned(),
            },
            MountSpec {
                source: MountSource::Volume(a.instance.agent_volume(&a.agent)),
                target: DATA_DIR.to_owned(),
            },
        ],
        args: a.args.clone(),
        env: a.env.clone(),
        limits: a.limits,
        restart: a.restart,
        publish: None,
        stop_timeout_secs: a.stop_timeout_secs,
    }
}

/// The NATS container: TLS material (read-only), its configuration (read-only), JetStream on a
/// named volume at `/data`, created on the core network with its port published on the host's
/// loopback only.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsContainer {
    /// The instance.
    pub instance: Instance,
    /// Its image.
    pub image: ImageId,
    /// Host directory with `tls/server.pem`, `tls/server.key`, `tls/ca.pem`.
    pub secrets_dir: PathBuf,
    /// Host config file.
    pub config_file: PathBuf,
    /// Host port on 127.0.0.1 (0: any free port).
    pub host_port: u16,
    /// Limits.
    pub limits: Limits,
}

/// The spec of the NATS container. Pure.
pub fn nats_spec(n: &NatsContainer) -> ContainerSpec {
    ContainerSpec {
        name: n.instance.nats_container(),
        instance: n.instance.clone(),
        role: Role::Nats,
        agent: None,
        image: n.image.clone(),
        network: n.instance.core_network(),
        aliases: vec!["nats".to_owned()],
        mounts: vec![
            MountSpec {
                source: MountSource::Bind(n.secrets_dir.clone()),
                target: SECRETS_DIR.to_owned(),
            },
            MountSpec {
                source: MountSource::Bind(n.config_file.clone()),
                target: NATS_CONFIG_PATH.to_owned(),
            },
            MountSpec {
                source: MountSource::Volume(n.instance.nats_volume()),
                target: DATA_DIR.to_owned(),
            },
        ],
        args: vec!["-c".to_owned(), NATS_CONFIG_PATH.to_owned()],
        env: Vec::new(),
        limits: n.limits,
        restart: Restart::OnFailure(MAX_RESTARTS),
        publish: Some(Publish {
            container_port: NATS_PORT,
            host_ip: Ipv4Addr::LOCALHOST,
            host_port: n.host_port,
        }),
        stop_timeout_secs: 10,
    }
}

/// The egress proxy container: its identity (read-only), its configuration directory
/// (read-only), created on the external egress network.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressContainer {
    /// The instance.
    pub instance: Instance,
    /// Its image.
    pub image: ImageId,
    /// Host directory with its identity (a layout root for principal `egress`).
    pub secrets_dir: PathBuf,
    /// Host directory holding `egress.json`.
    pub config_dir: PathBuf,
    /// Arguments after the entrypoint.
    pub args: Vec<String>,
    /// Limits.
    pub limits: Limits,
}

/// The spec of the egress proxy container. Pure.
pub fn egress_spec(e: &EgressContainer) -> ContainerSpec {
    ContainerSpec {
        name: e.instance.egress_container(),
        instance: e.instance.clone(),
        role: Role::Egress,
        agent: None,
        image: e.image.clone(),
        network: e.instance.egress_network(),
        aliases: vec!["egress".to_owned()],
        mounts: vec![
            MountSpec {
                source: MountSource::Bind(e.secrets_dir.clone()),
                target: SECRETS_DIR.to_owned(),
            },
            MountSpec {
                source: MountSource::Bind(e.config_dir.clone()),
                target: EGRESS_CONFIG_DIR.to_owned(),
            },
        ],
        args: e.args.clone(),
        env: Vec::new(),
        limits: e.limits,
        restart: Restart::OnFailure(MAX_RESTARTS),
        publish: None,
        stop_timeout_secs: 10,
    }
}

/// The Engine API create body for a spec. Pure.
pub fn container_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut labels = spec.instance.labels(spec.role.label(), spec.agent.as_ref());
    labels.insert(LABEL_IMAGE.to_owned(), spec.image.to_string());

    let mounts = spec
        .mounts
        .iter()
        .map(|m| match &m.source {
            MountSource::Bind(host) => Mount {
                target: Some(m.target.clone()),
                source: Some(host.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                bind_options: Some(MountBindOptions {
                    // Nothing mounted later under the source appears in the container.
                    non_recursive: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
            MountSource::Volume(name) => Mount {
                target: Some(m.target.clone()),
                source: Some(name.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(false),
                ..Default::default()
            },
        })
        .collect();

    let (exposed_ports, port_bindings) = match spec.publish {
        Some(p) => {
            let key = format!("{}/tcp", p.container_port);
            (
                Some(vec![key.clone()]),
                Some(HashMap::from([(
                    key,
                    Some(vec![PortBinding {
                        host_ip: Some(p.host_ip.to_string()),
                        host_port: Some(p.host_port.to_string()),
                    }]),
                )])),
            )
        }
        None => (None, None),
    };

    let restart_policy = match spec.restart {
        Restart::No => RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        },
        Restart::OnFailure(max) => RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(i64::from(max)),
        },
    };

    let host_config = HostConfig {
        memory: Some(spec.limits.memory_bytes),
        memory_swap: Some(spec.limits.memory_bytes),
        nano_cpus: Some(spec.limits.nano_cpus),
        pids_limit: Some(spec.limits.pids),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("nofile".to_owned()),
            soft: Some(spec.limits.nofile),
            hard: Some(spec.limits.nofile),
        }]),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec![
            "no-new-privileges:true".to_owned(),
            format!("seccomp={}", spec.role.profile().json()),
        ]),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            TMPFS_OPTIONS.to_owned(),
        )])),
        mounts: Some(mounts),
        network_mode: Some(spec.network.clone()),
        port_bindings,
        restart_policy: Some(restart_policy),
        init: Some(false),
        privileged: Some(false),
        publish_all_ports: Some(false),
        ipc_mode: Some("none".to_owned()),
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                ("max-file".to_owned(), LOG_MAX_FILES.to_owned()),
            ])),
        }),
        ..Default::default()
    };

    ContainerCreateBody {
        user: Some(format!("{AGENT_UID}:{AGENT_GID}")),
        image: Some(spec.image.to_string()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(spec.env.clone()),
        labels: Some(labels),
        exposed_ports,
        healthcheck: Some(HealthConfig {
            test: Some(vec!["NONE".to_owned()]),
            ..Default::default()
        }),
        stop_timeout: Some(i64::from(spec.stop_timeout_secs)),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                spec.network.clone(),
                EndpointSettings {
                    aliases: Some(spec.aliases.clone()),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

/// What the engine offers beyond the container settings, for the isolation report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSecurity {
    /// AppArmor is enabled on the engine.
    pub apparmor: bool,
    /// SELinux is enabled on the engine.
    pub selinux: bool,
    /// User namespace remapping is enabled on the engine.
    pub userns: bool,
}

impl EngineSecurity {
    /// Reads the engine's `SecurityOptions` (`name=seccomp,profile=default`, `name=apparmor`,
    /// ...).
    pub fn from_options(options: &[String]) -> EngineSecurity {
        let has = |n: &str| {
            options
                .iter()
                .any(|o| o.split(',').any(|kv| kv == format!("name={n}")))
        };
        EngineSecurity {
            apparmor: has("apparmor"),
            selinux: has("selinux"),
            userns: has("userns"),
        }
    }
}

fn mib(bytes: i64) -> i64 {
    bytes / (1024 * 1024)
}

/// The isolation an agent's container establishes, for its configuration and heartbeats.
/// `egress` lists the destinations it may reach through the proxy. Pure.
pub fn isolation_report(
    spec: &ContainerSpec,
    egress: &[String],
    engine: &EngineSecurity,
) -> IsolationReport {
    let profile = spec.role.profile();
    let mut measures = vec![
        format!("container {} on image {}", spec.name, spec.image.short()),
        format!("user {AGENT_UID}:{AGENT_GID}"),
        "read-only root filesystem".to_owned(),
        "all capabilities dropped".to_owned(),
        "no-new-privileges".to_owned(),
        format!(
            "seccomp allowlist {}.json ({} calls, default EPERM)",
            profile.name(),
            profile.syscalls().len() + 1
        ),
        format!("tmpfs /tmp ({TMPFS_OPTIONS})"),
        format!(
            "limits: memory {} MiB, pids {}, cpu {:.2}, open files {}",
            mib(spec.limits.memory_bytes),
            spec.limits.pids,
            spec.limits.nano_cpus as f64 / 1e9,
            spec.limits.nofile
        ),
        if egress.is_empty() {
            format!("internal network {}: NATS only", spec.network)
        } else {
            format!(
                "internal network {}: NATS and the egress proxy",
                spec.network
            )
        },
        format!("secrets read-only at {SECRETS_DIR}"),
        "no IPC namespace sharing, private cgroup namespace".to_owned(),
        if egress.is_empty() {
            "no egress".to_owned()
        } else {
            format!("egress only via the proxy, to {}", egress.join(", "))
        },
    ];
    let mut missing = Vec::new();
    if !engine.apparmor && !engine.selinux {
        missing.push("apparmor/selinux: not enabled on the engine".to_owned());
    }
    if !engine.userns {
        missing.push("user namespace remapping: not enabled on the engine".to_owned());
    }
    for m in measures.iter_mut().chain(missing.iter_mut()) {
        m.truncate(128);
    }
    IsolationReport {
        level: Isolation::Container,
        measures,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pretty JSON with every object's keys sorted, the inline seccomp profile replaced by its
    /// file name (after checking it is exactly that file).
    fn snapshot(spec: &ContainerSpec) -> String {
        let body = container_body(spec);
        let mut value = serde_json::to_value(&body).unwrap();
        let opts = value["HostConfig"]["SecurityOpt"].as_array_mut().unwrap();
        for opt in opts.iter_mut() {
            if let Some(json) = opt.as_str().unwrap().strip_prefix("seccomp=") {
                assert_eq!(json, spec.role.profile().json());
                *opt = serde_json::Value::String(format!(
                    "seccomp=<sandbox/seccomp/{}.json>",
                    spec.role.profile().name()
                ));
            }
        }
        let mut out = serde_json::to_string_pretty(&sorted(value)).unwrap();
        out.push('\n');
        out
    }

    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }

    fn instance() -> Instance {
        Instance::new("prod").unwrap()
    }

    fn image() -> ImageId {
        ImageId::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap()
    }

    fn hue() -> AgentContainer {
        AgentContainer {
            instance: instance(),
            agent: AgentName::new("hue").unwrap(),
            image: image(),
            secrets_dir: PathBuf::from("/var/lib/assistant/sandbox/hue/secrets"),
            config_file: PathBuf::from("/var/lib/assistant/sandbox/hue/agent.json"),
            args: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            restart: Restart::OnFailure(MAX_RESTARTS),
            stop_timeout_secs: 10,
        }
    }

    #[test]
    fn agent_container_spec() {
        expect_test::expect_file!["snapshots/agent.json"].assert_eq(&snapshot(&agent_spec(&hue())));
    }

    #[test]
    fn nats_container_spec() {
        let spec = nats_spec(&NatsContainer {
            instance: instance(),
            image: image(),
            secrets_dir: PathBuf::from("/var/lib/assistant/sandbox/_nats/secrets"),
            config_file: PathBuf::from("/var/lib/assistant/sandbox/_nats/nats-server.conf"),
            host_port: 4222,
            limits: Limits {
                memory_bytes: 512 * 1024 * 1024,
                pids: 256,
                nano_cpus: 1_000_000_000,
                nofile: 4096,
            },
        });
        expect_test::expect_file!["snapshots/nats.json"].assert_eq(&snapshot(&spec));
    }

    #[test]
    fn egress_container_spec() {
        let spec = egress_spec(&EgressContainer {
            instance: instance(),
            image: image(),
            secrets_dir: PathBuf::from("/var/lib/assistant/sandbox/_egress/secrets"),
            config_dir: PathBuf::from("/var/lib/assistant/sandbox/_egress/config"),
            args: Vec::new(),
            limits: Limits::default(),
        });
        expect_test::expect_file!["snapshots/egress.json"].assert_eq(&snapshot(&spec));
    }

    #[test]
    fn a_probe_run_differs_only_in_arguments_environment_and_restarts() {
        let probe = AgentContainer {
            args: vec!["probe".to_owned(), "syscalls".to_owned()],
            env: vec!["PROBE=1".to_owned()],
            restart: Restart::No,
            ..hue()
        };
        let agent = serde_json::to_value(container_body(&agent_spec(&hue()))).unwrap();
        let probe = serde_json::to_value(container_body(&agent_spec(&probe))).unwrap();
        let mut diffs = Vec::new();
        diff("", &agent, &probe, &mut diffs);
        expect_test::expect![[r#"
            /Cmd: <absent> -> ["probe","syscalls"]
            /Env/0: <absent> -> "PROBE=1"
            /HostConfig/RestartPolicy/MaximumRetryCount: 5 -> <absent>
            /HostConfig/RestartPolicy/Name: "on-failure" -> "no""#]]
        .assert_eq(&diffs.join("\n"));
    }

    fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        let show = |v: Option<&Value>| v.map_or("<absent>".to_owned(), Value::to_string);
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    match (x.get(k), y.get(k)) {
                        (Some(p), Some(q)) => diff(&format!("{path}/{k}"), p, q, out),
                        (p, q) => out.push(format!("{path}/{k}: {} -> {}", show(p), show(q))),
                    }
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    diff(&format!("{path}/{i}"), p, q, out);
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                for i in 0..x.len().max(y.len()) {
                    match (x.get(i), y.get(i)) {
                        (Some(p), Some(q)) => diff(&format!("{path}/{i}"), p, q, out),
                        (p, q) => out.push(format!("{path}/{i}: {} -> {}", show(p), show(q))),
                    }
                }
            }
            (p, q) if p != q => out.push(format!("{path}: {p} -> {q}")),
            _ => {}
        }
    }

    #[test]
    fn the_isolation_report_names_every_measure_and_gap() {
        let report = isolation_report(
            &agent_spec(&hue()),
            &["192.168.1.20:443".to_owned()],
            &EngineSecurity::from_options(&["name=seccomp,profile=default".to_owned()]),
        );
        let text = format!(
            "{:?}\n{}\n--\n{}",
            report.level,
            report.measures.join("\n"),
            report.missing.join("\n")
        );
        let count = Profile::Agent.syscalls().len() + 1;
        expect_test::expect![[r#"
            Container
            container prod-agent-hue on image abababababab
            user 10001:10001
            read-only root filesystem
            all capabilities dropped
            no-new-privileges
            seccomp allowlist agent.json (COUNT calls, default EPERM)
            tmpfs /tmp (rw,noexec,nosuid,nodev,size=16m,mode=0700,uid=10001,gid=10001)
            limits: memory 128 MiB, pids 64, cpu 0.50, open files 256
            internal network prod-net-hue: NATS and the egress proxy
            secrets read-only at /run/secrets
            no IPC namespace sharing, private cgroup namespace
            egress only via the proxy, to 192.168.1.20:443
            --
            apparmor/selinux: not enabled on the engine
            user namespace remapping: not enabled on the engine"#]]
        .assert_eq(&text.replace(&count.to_string(), "COUNT"));
    }
}
