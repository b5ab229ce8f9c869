//! The Docker backend against the real engine: hardened containers (as the engine reports
//! them and as the kernel shows them inside), the seccomp allowlist, NATS in its container
//! reachable over TLS from the host, agent networks that reach NATS and nothing else, the
//! egress proxy's rules, and a teardown that leaves nothing behind.
//!
//! Agents are played by the workspace's `probe` binary (`tests/probe`), run exactly as an agent
//! (same image builder, spec, secrets and network) with its own subcommand and no restarts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
};
use futures::StreamExt as _;
use protocol::AgentName;
use protocol::acl::Identity;
use protocol::manifest::HostPort;
use sandbox::docker::seccomp::Profile;
use sandbox::docker::spec::{self, Restart};
use sandbox::docker::{EgressSettings, ImageId, RunOptions};
use sandbox::{AgentDeployment, Limits, RunState, Sandbox as _};
use serde_json::Value;

use test_support::docker::{
    ControlSeccomp, PROBE_TIMEOUT, TestSandbox, deployment, home, nats_settings, probe_results,
    run_control, workspace_binary,
};

fn probe_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("probe", "probe"))
        .clone()
}

fn egress_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("egress-proxy", "egress-proxy"))
        .clone()
}

fn agent(name: &str) -> AgentName {
    AgentName::new(name).unwrap()
}

fn args(list: &[&str]) -> RunOptions {
    RunOptions {
        args: list.iter().map(|a| (*a).to_owned()).collect(),
        env: Vec::new(),
        restart: Restart::No,
        image: None,
    }
}

/// Runs the probe as agent `d.name` with `probe_args` to completion; returns its checks.
async fn run_probe(
    t: &TestSandbox,
    d: &AgentDeployment,
    probe_args: &[&str],
) -> BTreeMap<String, Value> {
    t.start_with(d, &args(probe_args)).await.unwrap();
    let code = t.wait_exit(&d.name, PROBE_TIMEOUT).await.unwrap();
    let logs = t.logs(&d.name).await.unwrap();
    assert_eq!(code, 0, "probe {probe_args:?} exited {code}:\n{logs}");
    assert!(
        logs.contains(r#"{"done":true}"#),
        "probe did not finish:\n{logs}"
    );
    probe_results(&logs)
}

async fn inspect(t: &TestSandbox, container: &str) -> ContainerInspectResponse {
    t.client().inspect_container(container, None).await.unwrap()
}

/// Everything the hardening promises, as the engine reports it.
fn assert_hardened(c: &ContainerInspectResponse, profile: Profile, limits: Limits) {
    let name = c.name.clone().unwrap_or_default();
    let h = c.host_config.clone().unwrap();
    let config = c.config.clone().unwrap();
    assert_eq!(config.user.as_deref(), Some("10001:10001"), "{name}: user");
    assert_eq!(h.readonly_rootfs, Some(true), "{name}: read-only root");
    assert_eq!(
        h.cap_drop,
        Some(vec!["ALL".to_owned()]),
        "{name}: capabilities"
    );
    assert!(
        h.cap_add.unwrap_or_default().is_empty(),
        "{name}: no capability added"
    );
    assert_eq!(h.privileged, Some(false), "{name}: privileged");
    let opts = h.security_opt.unwrap_or_default();
    assert!(
        opts.contains(&"no-new-privileges:true".to_owned()),
        "{name}: {opts:?}"
    );
    let seccomp: Vec<&String> = opts.iter().filter(|o| o.starts_with("seccomp")).collect();
    assert_eq!(seccomp.len(), 1, "{name}: one seccomp option");
    assert_ne!(seccomp[0], "seccomp=unconfined", "{name}: seccomp confined");
    let applied: Value = serde_json::from_str(seccomp[0].trim_start_matches("seccomp=")).unwrap();
    let ours: Value = serde_json::from_str(profile.json()).unwrap();
    assert_eq!(applied, ours, "{name}: our {} profile", profile.name());
    assert_eq!(h.memory, Some(limits.memory_bytes), "{name}: memory");
    assert_eq!(
        h.memory_swap,
        Some(limits.memory_bytes),
        "{name}: memory + swap"
    );
    assert_eq!(h.pids_limit, Some(limits.pids), "{name}: pids");
    assert_eq!(h.nano_cpus, Some(limits.nano_cpus), "{name}: cpus");
    let ulimits = h.ulimits.unwrap_or_default();
    assert_eq!(ulimits.len(), 1);
    assert_eq!(ulimits[0].name.as_deref(), Some("nofile"));
    assert_eq!(ulimits[0].hard, Some(limits.nofile));
    assert_eq!(
        h.tmpfs.unwrap_or_default().get("/tmp").map(String::as_str),
        Some(spec::TMPFS_OPTIONS),
        "{name}: tmpfs"
    );
    // No host namespace, no device, no socket.
    for (what, value) in [
        ("pid", h.pid_mode.clone()),
        ("uts", h.uts_mode.clone()),
        ("userns", h.userns_mode.clone()),
        ("cgroup", h.cgroup.clone()),
    ] {
        let value = value.unwrap_or_default();
        assert!(
            value.is_empty() || value == "private",
            "{name}: {what} mode {value}"
        );
    }
    assert_eq!(h.ipc_mode.as_deref(), Some("none"), "{name}: ipc");
    assert!(
        !h.network_mode
            .clone()
            .unwrap_or_default()
            .starts_with("host")
            && !h
                .network_mode
                .clone()
                .unwrap_or_default()
                .starts_with("container:"),
        "{name}: network mode"
    );
    assert!(h.devices.unwrap_or_default().is_empty(), "{name}: devices");
    assert!(h.binds.unwrap_or_default().is_empty(), "{name}: binds");
    assert_eq!(h.init, Some(false), "{name}: init");
    for m in c.mounts.clone().unwrap_or_default() {
        let source = m.source.clone().unwrap_or_default();
        assert!(!source.contains("docker.sock"), "{name}: {source}");
        match m.typ.as_deref() {
            Some("bind") => assert_eq!(m.rw, Some(false), "{name}: {source}"),
            Some("volume") => {
                assert_eq!(m.destination.as_deref(), Some(spec::DATA_DIR), "{name}")
            }
            Some("tmpfs") => {}
            other => panic!("{name}: unexpected mount {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_agent_container_is_hardened_as_the_engine_and_the_kernel_report_it() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue"]);
    let nats = nats_settings(&home);
    t.ensure_nats(&nats).await.unwrap();
    let d = deployment(&home, "hue", &probe_bin());
    let checks = run_probe(&t, &d, &["whoami"]).await;

    // Inside: the kernel's view.
    let who = &checks["whoami"];
    assert_eq!(who["uid"], "10001\t10001\t10001\t10001", "{who}");
    assert_eq!(who["gid"], "10001\t10001\t10001\t10001", "{who}");
    for cap in ["cap_eff", "cap_prm", "cap_bnd", "cap_amb"] {
        assert_eq!(who[cap], "0000000000000000", "{cap}: {who}");
    }
    assert_eq!(who["seccomp"], "2", "filter mode: {who}");
    assert_eq!(who["no_new_privs"], "1", "{who}");

    // Outside: the engine's view of the agent and of the NATS container.
    let name = t.container_name(&d.name);
    let c = inspect(&t, &name).await;
    assert_hardened(&c, Profile::Agent, d.limits);
    let h = c.host_config.clone().unwrap();
    assert_eq!(h.network_mode, Some(t.instance().agent_network(&d.name)));
    let mut targets: Vec<String> = c
        .mounts
        .unwrap()
        .iter()
        .map(|m| format!("{} rw={}", m.destination.clone().unwrap(), m.rw.unwrap()))
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "/config/agent.json rw=false",
            "/data rw=true",
            "/run/secrets rw=false",
        ]
    );
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(labels["assistant.sandbox.role"], "agent");
    assert_eq!(labels["assistant.sandbox.agent"], "hue");
    assert_eq!(labels["assistant.sandbox.instance"], t.instance().as_str());
    assert_eq!(Some(&labels["assistant.sandbox.image"]), c.image.as_ref());

    let n = inspect(&t, &t.instance().nats_container()).await;
    assert_hardened(&n, Profile::Nats, nats.limits);

    // The backend's status and the configuration the agent read.
    let status = t.inspect(&d.name).await.unwrap();
    assert_eq!(status.state, RunState::Exited(0));
    assert_eq!(status.image_digest, c.image);
    assert!(ImageId::parse(status.image_digest.as_deref().unwrap()).is_ok());
    assert!(!status.oom_killed);
    assert_eq!(status.restart_count, 0);
    let measures = status.isolation.measures.join("\n");
    for needle in [
        "read-only root",
        "capabilities dropped",
        "no-new-privileges",
        "seccomp allowlist",
        "no egress",
    ] {
        assert!(
            measures.contains(needle),
            "{needle} missing from {measures}"
        );
    }
    let config_file = t.settings().state_dir.join("hue/agent.json");
    let config: Value = serde_json::from_slice(&std::fs::read(config_file).unwrap()).unwrap();
    assert_eq!(config["nats_url"], "nats://nats:4222");
    assert_eq!(config["identity_dir"], "/run/secrets");
    assert_eq!(config["data_dir"], "/data");
    assert_eq!(config["egress_proxy"], Value::Null);
    assert_eq!(config["isolation"]["level"], "container");
}

#[tokio::test]
async fn seccomp_refuses_calls_outside_the_allowlist_with_eperm() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue"]);
    t.ensure_nats(&nats_settings(&home)).await.unwrap();
    let d = deployment(&home, "hue", &probe_bin());
    let filtered = run_probe(&t, &d, &["syscalls"]).await;
    let denied = [
        "unshare_user",
        "unshare_mount",
        "mount_tmpfs",
        "keyctl",
        "io_uring_setup",
        "ptrace_attach_pid1",
        "setns_net_pid1",
    ];
    for check in denied {
        let r = &filtered[check];
        assert_eq!(r["outcome"], "refused", "{check}: {r}");
        assert_eq!(r["errno"], 1, "{check} must fail with EPERM: {r}");
    }

    // The control: the very same container without the seccomp profile. keyctl (which needs
    // no capability) then works, so the EPERM above is the filter's doing.
    let image = ImageId::parse(&t.inspect(&d.name).await.unwrap().image_digest.unwrap()).unwrap();
    let logs = run_control(&t, &d, image, &["syscalls"], ControlSeccomp::Unconfined).await;
    let unfiltered = probe_results(&logs);
    assert_eq!(
        unfiltered["keyctl"]["outcome"], "allowed",
        "{}",
        unfiltered["keyctl"]
    );
    let escaped: Vec<&str> = denied
        .iter()
        .copied()
        .filter(|c| unfiltered[*c]["outcome"] == "allowed")
        .collect();
    println!("without the filter these succeed: {escaped:?}");
}

#[tokio::test]
async fn nats_in_its_container_answers_tls_from_the_host_with_the_generated_identities() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue"]);
    let endpoint = t.ensure_nats(&nats_settings(&home)).await.unwrap();
    assert!(
        endpoint.url.starts_with("nats://127.0.0.1:"),
        "{}",
        endpoint.url
    );

    let orchestrator =
        provision::client::connect(&endpoint.url, &home, &Identity::Orchestrator.principal())
            .await
            .unwrap();
    let hue = provision::client::connect(
        &endpoint.url,
        &home,
        &Identity::Agent(agent("hue")).principal(),
    )
    .await
    .unwrap();
    let mut status = orchestrator.subscribe("status.hue").await.unwrap();
    orchestrator.flush().await.unwrap();
    // The subscription is registered once a request round trip through the server completed.
    let admin = provision::client::connect(&endpoint.url, &home, &Identity::Admin.principal())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(admin);
    let mut audit = js.get_stream("AUDIT").await.unwrap();
    assert_eq!(audit.info().await.unwrap().config.subjects, ["audit.>"]);
    hue.publish("status.hue", "hello".into()).await.unwrap();
    hue.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), status.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"hello");

    // Only the loopback address is published.
    let n = inspect(&t, &t.instance().nats_container()).await;
    let ports = n.network_settings.unwrap().ports.unwrap();
    let bindings = ports["4222/tcp"].clone().unwrap();
    assert!(!bindings.is_empty());
    for b in bindings {
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"));
    }

    // A second call keeps the running server.
    let id = n.id.clone();
    let again = t.ensure_nats(&nats_settings(&home)).await.unwrap();
    assert_eq!(again, endpoint);
    assert_eq!(inspect(&t, &t.instance().nats_container()).await.id, id);
}

#[tokio::test]
async fn an_agent_reaches_nats_and_nothing_else() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue", "weather"]);
    let endpoint = t.ensure_nats(&nats_settings(&home)).await.unwrap();
    let instance = t.instance().clone();

    // Another agent, running, on its own network.
    let weather = deployment(&home, "weather", &probe_bin());
    t.start_with(&weather, &args(&["sleep"])).await.unwrap();
    let w = inspect(&t, &t.container_name(&weather.name)).await;
    let weather_ip = w.network_settings.unwrap().networks.unwrap()
        [&instance.agent_network(&weather.name)]
        .ip_address
        .clone()
        .unwrap();

    // NATS on the core network, and the host behind the core network's gateway.
    let n = inspect(&t, &instance.nats_container()).await;
    let nats_networks = n.network_settings.unwrap().networks.unwrap();
    let core = &nats_networks[&instance.core_network()];
    let nats_core_ip = core.ip_address.clone().unwrap();
    let core_gateway = core.gateway.clone().unwrap();
    // A listener on every host address: reachable from the host, not from the agent.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();

    let hue = deployment(&home, "hue", &probe_bin());
    // Its own network's gateway address (where the engine's default route points).
    t.start_with(&hue, &args(&["sleep"])).await.unwrap();
    let hue_gateway = inspect(&t, &t.container_name(&hue.name))
        .await
        .network_settings
        .unwrap()
        .networks
        .unwrap()[&instance.agent_network(&hue.name)]
        .gateway
        .clone()
        .unwrap();
    let nats_port = endpoint.host_port.to_string();
    let targets = [
        "nats:4222".to_owned(),
        format!("{hue_gateway}:{host_port}"),
        format!("{nats_core_ip}:4222"),
        format!("{core_gateway}:{nats_port}"),
        format!("{core_gateway}:{host_port}"),
        format!("{weather_ip}:4222"),
    ];
    let mut probe_args = vec![
        "net",
        "--resolve",
        "nats",
        "--resolve",
        "weather",
        "--resolve",
        "egress",
    ];
    for target in &targets {
        probe_args.push("--connect");
        probe_args.push(target);
    }
    let checks = run_probe(&t, &hue, &probe_args).await;
    let outcome = |check: &str| {
        let r = checks
            .get(check)
            .unwrap_or_else(|| panic!("{check} missing: {checks:?}"));
        (
            r["outcome"].as_str().unwrap().to_owned(),
            r["errno"].as_i64().unwrap(),
        )
    };
    assert_eq!(outcome("tcp_nats:4222").0, "allowed");
    assert_eq!(outcome("resolve_nats").0, "allowed");
    for unreachable in [
        "tcp_internet_1_1_1_1".to_owned(),
        "tcp_internet_8_8_8_8".to_owned(),
        "udp_dns_8_8_8_8".to_owned(),
        format!("tcp_{nats_core_ip}:4222"),
        format!("tcp_{core_gateway}:{nats_port}"),
        format!("tcp_{core_gateway}:{host_port}"),
        format!("tcp_{hue_gateway}:{host_port}"),
        format!("tcp_{weather_ip}:4222"),
    ] {
        // Nothing answers: no host is reachable there (timeout, EHOSTUNREACH, ENETUNREACH),
        // never a refusal by a listener (ECONNREFUSED). The datagram check cannot even bind its
        // socket (EPERM: agents are clients; bind is outside their profile).
        let (result, errno) = outcome(&unreachable);
        assert_eq!(result, "refused", "{unreachable}");
        assert!(
            [0, 1, 101, 113].contains(&errno),
            "{unreachable}: errno {errno}"
        );
    }
    // The listener on every host address saw no connection.
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener
            .accept()
            .map(|(_, peer)| peer.to_string())
            .map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock)
    );
    for unknown in ["resolve_example_com", "resolve_weather", "resolve_egress"] {
        assert_eq!(outcome(unknown).0, "refused", "{unknown}");
    }

    // With its own identity, from inside, over TLS: NATS lets it publish its own status.
    let orchestrator =
        provision::client::connect(&endpoint.url, &home, &Identity::Orchestrator.principal())
            .await
            .unwrap();
    let mut status = orchestrator.subscribe("status.hue").await.unwrap();
    orchestrator.flush().await.unwrap();
    let checks = run_probe(
        &t,
        &hue,
        &[
            "nats",
            "--url",
            "nats://nats:4222",
            "--identity-dir",
            "/run/secrets",
            "--name",
            "hue",
            "--victim",
            "weather",
        ],
    )
    .await;
    assert_eq!(
        checks["nats_connect"]["outcome"], "allowed",
        "{}",
        checks["nats_connect"]
    );
    assert_eq!(checks["publish_status.hue"]["outcome"], "allowed");
    assert_eq!(checks["publish_cmd.weather"]["outcome"], "refused");
    let got = tokio::time::timeout(Duration::from_secs(10), status.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"{}");
    drop(listener);
}

#[tokio::test]
async fn stop_keeps_the_data_volume_and_teardown_leaves_nothing_behind() {
    let t = TestSandbox::new().await;
    let other = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue"]);
    t.ensure_nats(&nats_settings(&home)).await.unwrap();
    let hue = deployment(&home, "hue", &probe_bin());
    t.start_with(&hue, &args(&["sleep"])).await.unwrap();
    assert_eq!(t.inspect(&hue.name).await.unwrap().state, RunState::Running);
    let status = t.restart(&hue.name).await.unwrap();
    assert_eq!(status.state, RunState::Running);
    assert!(status.memory_bytes.is_some_and(|m| m > 0), "{status:?}");

    // Another instance's object, which teardown must not touch.
    let other_volume = other.instance().agent_volume(&hue.name);
    t.client()
        .create_volume(bollard::models::VolumeCreateRequest {
            name: Some(other_volume.clone()),
            labels: Some(other.instance().labels("volume", Some(&hue.name))),
            ..Default::default()
        })
        .await
        .unwrap();

    let filter = t.instance().filter();
    let docker = t.client();
    t.stop(&hue.name).await.unwrap();
    t.stop(&hue.name).await.unwrap();
    assert!(matches!(t.inspect(&hue.name).await, Err(e) if e.code() == "sandbox_unknown_agent"));
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v.name == t.instance().agent_volume(&hue.name)),
        "the agent's data survives a stop"
    );
    assert!(
        !t.settings().state_dir.join("hue").exists(),
        "its secrets copy is gone"
    );
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    assert!(
        !networks
            .iter()
            .any(|n| n.name == Some(t.instance().agent_network(&hue.name)))
    );

    t.start_with(&hue, &args(&["sleep"])).await.unwrap();
    t.teardown().await.unwrap();
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default();
    assert!(containers.is_empty(), "{containers:?}");
    assert!(networks.is_empty(), "{networks:?}");
    assert!(volumes.is_empty(), "{volumes:?}");
    let left: Vec<_> = std::fs::read_dir(&t.settings().state_dir)
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    docker.inspect_volume(&other_volume).await.unwrap();
}

#[tokio::test]
async fn the_egress_proxy_tunnels_exactly_the_destinations_of_the_agents_that_need_egress() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue", "weather"]);
    t.ensure_nats(&nats_settings(&home)).await.unwrap();
    let egress = EgressSettings::new(egress_bin(), home.clone());
    t.ensure_egress_proxy(&egress).await.unwrap();
    let instance = t.instance().clone();
    let proxy = instance.egress_container();
    assert_hardened(&inspect(&t, &proxy).await, Profile::Egress, egress.limits);

    // A destination the proxy can reach: a listener on the host, behind the proxy's external
    // network's gateway (an IP literal, so the proxy connects to it although it is private).
    let out = t
        .client()
        .inspect_network(&instance.egress_network(), None)
        .await
        .unwrap();
    let gateway = out.ipam.unwrap().config.unwrap()[0]
        .gateway
        .clone()
        .unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let allowed = format!("{gateway}:{}", listener.local_addr().unwrap().port());
    let refused = format!("{gateway}:{}", listener.local_addr().unwrap().port() ^ 1);
    let accepted = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));

    let mut hue = deployment(&home, "hue", &probe_bin());
    hue.egress = vec![HostPort::parse(&allowed).unwrap()];
    let weather = deployment(&home, "weather", &probe_bin());
    t.start_with(&hue, &args(&["sleep"])).await.unwrap();

    let rules_file = t.settings().state_dir.join("_egress/config/egress.json");
    let rules: Value = serde_json::from_slice(&std::fs::read(&rules_file).unwrap()).unwrap();
    let hue_net = instance.agent_network(&hue.name);
    let network = t.client().inspect_network(&hue_net, None).await.unwrap();
    let hue_subnet = network.ipam.unwrap().config.unwrap()[0]
        .subnet
        .clone()
        .unwrap();
    assert_eq!(
        rules["agents"],
        serde_json::json!([{"name": "hue", "subnet": hue_subnet, "allow": [allowed]}])
    );
    let networks = inspect(&t, &proxy)
        .await
        .network_settings
        .unwrap()
        .networks
        .unwrap();
    let mut attached: Vec<String> = networks.keys().cloned().collect();
    attached.sort();
    let mut expected = vec![
        hue_net.clone(),
        instance.egress_network(),
        instance.egress_nats_network(),
    ];
    expected.sort();
    assert_eq!(attached, expected);
    let config: Value = serde_json::from_slice(
        &std::fs::read(t.settings().state_dir.join("hue/agent.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["egress_proxy"], "http://egress:3128");

    // Through the proxy: the allowed destination opens, another port of the same host does not;
    // directly, neither is reachable.
    let checks = run_probe(
        &t,
        &hue,
        &[
            "egress",
            "--proxy",
            "egress:3128",
            "--target",
            &allowed,
            "--target",
            &refused,
        ],
    )
    .await;
    let via = |target: &str| checks[&format!("connect_via_proxy_{target}")].clone();
    assert_eq!(via(&allowed)["outcome"], "allowed", "{}", via(&allowed));
    assert!(
        via(&refused)["detail"].as_str().unwrap().contains("403"),
        "{}",
        via(&refused)
    );
    let peer = accepted.join().unwrap().unwrap();
    let proxy_ip = networks[&instance.egress_network()]
        .ip_address
        .clone()
        .unwrap();
    assert_eq!(
        peer.ip().to_string(),
        proxy_ip,
        "the tunnel comes from the proxy"
    );
    let checks = run_probe(&t, &hue, &["net", "--connect", &allowed]).await;
    assert_eq!(checks[&format!("tcp_{allowed}")]["outcome"], "refused");

    // An agent without egress cannot even name the proxy.
    let checks = run_probe(&t, &weather, &["net", "--resolve", "egress"]).await;
    assert_eq!(checks["resolve_egress"]["outcome"], "refused");

    // Stopping the agent removes its rule; the proxy reloads (SIGHUP) and keeps running.
    t.stop(&hue.name).await.unwrap();
    let rules: Value = serde_json::from_slice(&std::fs::read(&rules_file).unwrap()).unwrap();
    assert_eq!(rules["agents"], serde_json::json!([]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let state = inspect(&t, &proxy).await.state.unwrap();
    assert_eq!(
        state.running,
        Some(true),
        "{}",
        t.container_logs(&proxy).await.unwrap()
    );
    assert_eq!(state.restarting, Some(false));
}
