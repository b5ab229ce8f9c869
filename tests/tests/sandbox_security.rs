//! The security validation suite against a real Docker engine and a real nats-server (in its
//! container, with our generated configuration): play the compromised agent from inside a
//! hardened container built exactly like an agent's, and check every attack fails where it
//! should, while the legitimate parties see nothing of it.
//!
//! Covered here (see SECURITY.md for the map): SV-15..18 from inside a container, SV-22..28
//! against the running Hue agent in its container (and SV-26 across a container restart),
//! SV-29, the egress proxy's refusals of non-allowlisted and private destinations (audited),
//! SV-33, SV-34 as the kernel reports it, SV-35 and SV-36. `docker_sandbox.rs` covers the rest
//! of SV-30, SV-32 and SV-34 (every syscall, with an unconfined control).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt as _;
use orchestrator::mint::{MintRequest, Minter, fresh_nonce};
use protocol::acl::Identity;
use protocol::manifest::HostPort;
use protocol::message::{AgentReply, AgentRequest, AuditEvent, Digest, Invocation, Status};
use protocol::token::ApprovalBinding;
use protocol::{
    ActionName, AgentName, ApprovalId, ChatUser, CorrelationId, Envelope, MessageId, PlanId,
    Principal, UnixMillis,
};
use sandbox::docker::spec::Restart;
use sandbox::docker::{EgressSettings, NatsEndpoint, RunOptions};
use sandbox::{AgentDeployment, Limits, RunState, Sandbox as _, SecretFile};
use serde_json::{Value, json};
use test_support::docker::{
    ControlSeccomp, PROBE_TIMEOUT, TestSandbox, deployment, home, nats_settings, plant_setuid_root,
    probe_results, run_control, workspace_binary,
};
use test_support::fake_hue::{FakeBridge, fixture_with_room_groups};

const WAIT: Duration = Duration::from_secs(30);

fn probe_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("probe", "probe"))
        .clone()
}

fn hue_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("hue", "agent-hue"))
        .clone()
}

fn egress_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("egress-proxy", "egress-proxy"))
        .clone()
}

fn run(args: &[&str]) -> RunOptions {
    RunOptions {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: Vec::new(),
        restart: Restart::No,
        image: None,
    }
}

/// Runs a probe to completion as `d.name` and returns its checks by name.
async fn probe(
    t: &TestSandbox,
    d: &AgentDeployment,
    options: RunOptions,
) -> BTreeMap<String, Value> {
    let args = options.args.clone();
    t.start_with(d, &options).await.unwrap();
    let code = t.wait_exit(&d.name, PROBE_TIMEOUT).await.unwrap();
    let logs = t.logs(&d.name).await.unwrap();
    assert_eq!(code, 0, "probe {args:?} exited {code}:\n{logs}");
    assert!(
        logs.contains(r#"{"done":true}"#),
        "probe did not finish:\n{logs}"
    );
    probe_results(&logs)
}

fn outcome(checks: &BTreeMap<String, Value>, check: &str) -> (String, i64, String) {
    let r = checks
        .get(check)
        .unwrap_or_else(|| panic!("no check {check}: {checks:#?}"));
    (
        r["outcome"].as_str().unwrap().to_owned(),
        r["errno"].as_i64().unwrap(),
        r["detail"].to_string(),
    )
}

fn assert_refused(checks: &BTreeMap<String, Value>, check: &str, errnos: &[i64]) {
    let (result, errno, detail) = outcome(checks, check);
    assert_eq!(result, "refused", "{check} was allowed: {detail}");
    assert!(
        errnos.is_empty() || errnos.contains(&errno),
        "{check}: errno {errno} not in {errnos:?} ({detail})"
    );
}

fn assert_allowed(checks: &BTreeMap<String, Value>, check: &str) {
    let (result, _, detail) = outcome(checks, check);
    assert_eq!(result, "allowed", "{check} was refused: {detail}");
}

const EPERM: i64 = 1;
const ENOENT: i64 = 2;
const EACCES: i64 = 13;
const EROFS: i64 = 30;

/// Every JetStream message of the AUDIT stream, decoded (the admin identity reads it).
async fn audit_events(
    endpoint: &NatsEndpoint,
    home: &provision::Layout,
) -> Vec<Envelope<AuditEvent>> {
    let admin = provision::client::connect(&endpoint.url, home, &Identity::Admin.principal())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(admin);
    let mut stream = js.get_stream("AUDIT").await.unwrap();
    let info = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in info.first_sequence..=info.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await
            && let Ok(e) = Envelope::<AuditEvent>::decode(&m.payload)
        {
            out.push(e);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// SV-15..18 from inside, SV-29, SV-33, SV-34 (kernel view), SV-36.
#[tokio::test]
async fn a_compromised_agent_container_stays_inside_its_sandbox() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue", "weather"]);
    let endpoint = t.ensure_nats(&nats_settings(&home)).await.unwrap();
    let weather = deployment(&home, "weather", &probe_bin());

    // SV-34, as the kernel sees it: unprivileged, no capabilities, seccomp filter, no new privs.
    let who = probe(&t, &weather, run(&["whoami"])).await;
    let w = &who["whoami"];
    assert_eq!(w["uid"], "10001\t10001\t10001\t10001", "{w}");
    assert_eq!(w["gid"], "10001\t10001\t10001\t10001", "{w}");
    for cap in ["cap_eff", "cap_prm", "cap_bnd", "cap_amb"] {
        assert_eq!(w[cap], "0000000000000000", "{cap}: {w}");
    }
    assert_eq!(w["seccomp"], "2", "{w}");
    assert_eq!(w["no_new_privs"], "1", "{w}");

    // SV-29: the root filesystem, the secrets and the configuration are read-only; /tmp is
    // writable but nothing written there can run; only its own secrets are there.
    let fs = probe(&t, &weather, run(&["fs"])).await;
    for check in [
        "write_root_binary",
        "write_new_file_in_root",
        "write_secrets",
        "write_config",
    ] {
        assert_refused(&fs, check, &[EROFS, EACCES]);
    }
    // The image has no /etc or /bin at all (no shell, no package manager): nothing to write to.
    assert_refused(&fs, "write_etc_passwd", &[EROFS, ENOENT]);
    assert_refused(&fs, "write_bin", &[EROFS, ENOENT]);
    assert_refused(&fs, "write_proc_sysrq", &[EROFS, EACCES, ENOENT]);
    assert_allowed(&fs, "write_tmp");
    assert_allowed(&fs, "copy_to_tmp");
    // Running it is refused twice over: seccomp refuses what spawning a process needs (EPERM),
    // and /tmp is mounted noexec (EACCES) and nosuid.
    assert_refused(&fs, "exec_from_tmp", &[EPERM, EACCES]);
    let (_, _, mount) = outcome(&fs, "tmp_mount_options");
    for flag in ["noexec", "nosuid", "nodev"] {
        assert!(mount.contains(flag), "/tmp lacks {flag}: {mount}");
    }
    assert_allowed(&fs, "write_data_volume");
    assert_refused(&fs, "docker_socket", &[ENOENT]);
    let (_, _, listing) = outcome(&fs, "list_secrets");
    for own in [
        "/run/secrets/tls/ca.pem",
        "/run/secrets/tls/clients/weather.pem",
        "/run/secrets/tls/clients/weather.key",
        "/run/secrets/nats/weather.nk",
        "/run/secrets/keys/keyset.json",
    ] {
        assert!(listing.contains(own), "{own} missing from {listing}");
    }
    for foreign in [
        "hue",
        "orchestrator",
        "token-signing",
        "checkpoint",
        "ca.key",
        "admin",
    ] {
        assert!(!listing.contains(foreign), "{foreign} visible: {listing}");
    }

    // SV-33: a setuid-root binary planted in the image gains nothing.
    let base = sandbox::docker::image::build_archive(
        &sandbox::docker::image::collect("probe", &probe_bin()).unwrap(),
    )
    .unwrap();
    let planted = plant_setuid_root(&base, "/probe", "/probe-suid");
    sandbox::docker::image::import(t.client(), &planted)
        .await
        .unwrap();
    let mut options = run(&["setuid"]);
    options.image = Some(planted.id.clone());
    let suid = probe(&t, &weather, options).await;
    let (_, _, present) = outcome(&suid, "setuid_binary_present");
    assert!(present.contains("uid 0 mode 104755"), "{present}");
    // Under our profile the binary cannot even be started (spawning a process is refused)...
    assert_refused(&suid, "run_setuid_binary", &[EPERM]);
    assert_refused(&suid, "chmod_setuid_in_tmp", &[EPERM]);
    // ...and with the engine's default profile, which does allow it, no-new-privileges alone
    // keeps the effective uid at 10001.
    let logs = run_control(
        &t,
        &weather,
        planted.id.clone(),
        &["setuid"],
        ControlSeccomp::EngineDefault,
    )
    .await;
    let control = probe_results(&logs);
    let (result, _, detail) = outcome(&control, "run_setuid_binary");
    assert_eq!(result, "refused", "{detail}\n{logs}");
    assert!(detail.contains("euid stayed 10001"), "{detail}");
    let (_, _, chmod) = outcome(&control, "chmod_setuid_in_tmp");
    // If chmod is allowed, the bit may be set on a nosuid mount, where it means nothing.
    assert!(!chmod.contains("euid 0"), "{chmod}");
    t.client()
        .remove_image(
            planted.id.as_str(),
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
        .ok();

    // SV-15..18 from inside, with weather's own credentials and network: every publish and
    // subscription outside its own subjects draws a permissions violation...
    let hue_spy = provision::client::connect(&endpoint.url, &home, &Principal::new("hue").unwrap())
        .await
        .unwrap();
    let mut hue_commands = hue_spy.subscribe("cmd.hue").await.unwrap();
    let orchestrator =
        provision::client::connect(&endpoint.url, &home, &Identity::Orchestrator.principal())
            .await
            .unwrap();
    let mut orchestrator_inbox = orchestrator
        .subscribe("_INBOX_orchestrator.>")
        .await
        .unwrap();
    let mut statuses = orchestrator.subscribe("status.*").await.unwrap();
    // A round trip through the server so both subscriptions are in place.
    hue_spy.request("status.hue", "x".into()).await.ok();
    orchestrator.flush().await.unwrap();
    let before = audit_events(&endpoint, &home).await.len();
    let nats = probe(
        &t,
        &weather,
        run(&[
            "nats",
            "--url",
            "nats://nats:4222",
            "--identity-dir",
            "/run/secrets",
            "--name",
            "weather",
            "--victim",
            "hue",
        ]),
    )
    .await;
    assert_allowed(&nats, "nats_connect");
    let mut refused = 0;
    for (check, r) in &nats {
        if check.starts_with("publish_") || check.starts_with("subscribe_") {
            if check == "publish_status.weather" {
                assert_eq!(r["outcome"], "allowed", "{check}: {r}");
            } else {
                assert_eq!(r["outcome"], "refused", "{check}: {r}");
                assert!(
                    r["detail"]
                        .as_str()
                        .unwrap()
                        .to_lowercase()
                        .contains("permissions violation"),
                    "{check}: {r}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused >= 14, "{refused} refusals: {nats:#?}");
    // ...and the legitimate parties saw nothing: no command reached hue, nothing reached the
    // orchestrator's inbox, no audit event was forged, and the AUDIT stream was not purged or
    // deleted. The one thing weather may do, its own status, did arrive (positive control).
    let weather_status = tokio::time::timeout(WAIT, async {
        while let Some(m) = statuses.next().await {
            if m.subject.as_str() == "status.weather" {
                return m;
            }
        }
        panic!("status subscription ended");
    })
    .await
    .expect("weather's own status never arrived");
    assert_eq!(&weather_status.payload[..], b"{}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), hue_commands.next())
            .await
            .is_err(),
        "a command reached hue"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), orchestrator_inbox.next())
            .await
            .is_err(),
        "something reached the orchestrator's inbox"
    );
    let after = audit_events(&endpoint, &home).await;
    assert_eq!(after.len(), before, "the AUDIT stream changed");

    // SV-36: no container of this installation is privileged, shares a host namespace, mounts
    // the Docker socket or anything writable from the host, or runs as root.
    assert_no_host_escape_surface(&t).await;
}

async fn assert_no_host_escape_surface(t: &TestSandbox) {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let containers = t
        .client()
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&t.instance().filter())
                .build(),
        ))
        .await
        .unwrap();
    assert!(containers.len() >= 2, "{containers:?}");
    let state_dir = t.settings().state_dir.clone();
    for c in containers {
        let id = c.id.unwrap();
        let i = t.client().inspect_container(&id, None).await.unwrap();
        let name = i.name.clone().unwrap_or_default();
        let h = i.host_config.unwrap();
        let config = i.config.unwrap();
        let user = config.user.unwrap_or_default();
        assert!(
            !user.is_empty() && !user.starts_with('0') && !user.starts_with("root"),
            "{name}: user {user:?}"
        );
        assert_eq!(h.privileged, Some(false), "{name}: privileged");
        assert_eq!(h.readonly_rootfs, Some(true), "{name}: read-only root");
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]), "{name}: caps");
        assert!(
            h.cap_add.unwrap_or_default().is_empty(),
            "{name}: caps added"
        );
        assert!(h.devices.unwrap_or_default().is_empty(), "{name}: devices");
        for (what, mode) in [
            ("pid", h.pid_mode.clone()),
            ("ipc", h.ipc_mode.clone()),
            ("uts", h.uts_mode.clone()),
            ("userns", h.userns_mode.clone()),
            ("network", h.network_mode.clone()),
            ("cgroupns", h.cgroupns_mode.map(|m| m.to_string())),
        ] {
            assert_ne!(
                mode.as_deref(),
                Some("host"),
                "{name}: host {what} namespace"
            );
        }
        let opts = h.security_opt.unwrap_or_default();
        assert!(
            opts.iter().any(|o| o == "no-new-privileges:true"),
            "{name}: {opts:?}"
        );
        assert!(
            opts.iter()
                .any(|o| o.starts_with("seccomp=") && o != "seccomp=unconfined"),
            "{name}: seccomp"
        );
        assert!(h.pids_limit.unwrap_or(0) > 0, "{name}: pids limit");
        assert!(h.memory.unwrap_or(0) > 0, "{name}: memory limit");
        for m in i.mounts.unwrap_or_default() {
            let source = m.source.clone().unwrap_or_default();
            assert!(
                !source.contains("docker.sock"),
                "{name}: docker socket mounted"
            );
            if m.typ.as_deref() == Some("bind") {
                assert_eq!(m.rw, Some(false), "{name}: writable bind mount {source}");
                assert!(
                    PathBuf::from(&source).starts_with(&state_dir),
                    "{name}: host path {source} outside the sandbox's state"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

struct Orchestrator {
    client: async_nats::Client,
    minter: Minter,
}

impl Orchestrator {
    fn token(
        &self,
        minter: &Minter,
        audience: &str,
        action: &str,
        args: &Value,
        approval: ApprovalBinding,
        now: i64,
    ) -> String {
        minter
            .mint(
                &MintRequest {
                    audience: &AgentName::new(audience).unwrap(),
                    subject: &ChatUser::new("telegram:42").unwrap(),
                    action: &ActionName::new(action).unwrap(),
                    args,
                    plan_id: PlanId::random(),
                    step: 0,
                    approval,
                    ttl_secs: 30,
                },
                now,
                fresh_nonce().unwrap(),
            )
            .unwrap()
            .text()
    }

    async fn send(&self, action: &str, args: &Value, token: &str) -> AgentReply {
        let request = Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::orchestrator(),
            UnixMillis::now(),
            AgentRequest::Invoke(Invocation {
                plan_id: PlanId::random(),
                step: 0,
                action: ActionName::new(action).unwrap(),
                args: args.clone(),
                token: token.to_owned(),
            }),
        );
        let reply = self
            .client
            .send_request(
                "cmd.hue",
                async_nats::Request::new()
                    .payload(request.encode().unwrap().into())
                    .timeout(Some(WAIT)),
            )
            .await
            .unwrap();
        Envelope::<AgentReply>::decode(&reply.payload).unwrap().body
    }
}

fn approved() -> ApprovalBinding {
    ApprovalBinding::Approved {
        id: ApprovalId::random(),
        hash: Digest([7; 32]),
    }
}

fn code(reply: &AgentReply) -> String {
    match reply {
        AgentReply::Done(o) => format!("done: {}", o.summary),
        AgentReply::Rejected(r) => format!("rejected {}", r.code.as_str()),
        AgentReply::Failed(r) => format!("failed {}: {}", r.code.as_str(), r.message),
    }
}

async fn next_heartbeat(statuses: &mut async_nats::Subscriber) -> protocol::message::Heartbeat {
    let m = tokio::time::timeout(WAIT, statuses.next())
        .await
        .expect("no heartbeat")
        .unwrap();
    let Status::Heartbeat(h) = Envelope::<Status>::decode(&m.payload).unwrap().body;
    h
}

/// SV-22..28 against the real Hue agent in its hardened container (tokens checked by the
/// running agent, the bridge untouched by every refusal), SV-26 across a container restart,
/// and the egress proxy refusing non-allowlisted and private destinations (audited).
#[tokio::test]
async fn the_hue_agent_in_its_container_refuses_every_bad_token() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue", "weather"]);
    let endpoint = t.ensure_nats(&nats_settings(&home)).await.unwrap();
    t.ensure_egress_proxy(&EgressSettings::new(egress_bin(), home.clone()))
        .await
        .unwrap();

    // The bridge double on the host, reachable only through the proxy, behind the egress
    // network's gateway (a private IP literal, allowed because it is listed exactly).
    let bridge = FakeBridge::start_with(
        SocketAddr::from(([0, 0, 0, 0], 0)),
        fixture_with_room_groups(),
    )
    .await
    .unwrap();
    let out = t
        .client()
        .inspect_network(&t.instance().egress_network(), None)
        .await
        .unwrap();
    let gateway = out.ipam.unwrap().config.unwrap()[0]
        .gateway
        .clone()
        .unwrap();
    let bridge_at = HostPort::parse(&format!("{gateway}:{}", bridge.addr().port())).unwrap();

    let key_file = t.dir.path().join("hue-application-key");
    std::fs::write(&key_file, bridge.application_key()).unwrap();
    let mut hue = deployment(&home, "hue", &hue_bin());
    hue.secrets.push(SecretFile {
        source: key_file,
        target: "hue/app.key".into(),
    });
    hue.egress = vec![bridge_at.clone()];
    hue.config.heartbeat_interval_ms = 1_000;
    hue.config.settings = json!({
        "bridge": bridge_at.to_string(),
        "application_key_file": "hue/app.key",
        "bridge_cert_sha256": bridge.cert_sha256(),
        "request_timeout_ms": 4000,
    });

    let client =
        provision::client::connect(&endpoint.url, &home, &Identity::Orchestrator.principal())
            .await
            .unwrap();
    let mut statuses = client.subscribe("status.hue").await.unwrap();
    client.flush().await.unwrap();
    t.start(&hue).await.unwrap();
    let first = next_heartbeat(&mut statuses).await;
    assert_eq!(
        first.isolation.level,
        protocol::message::Isolation::Container
    );

    let seed = provision::load_seed(&home.token_signing_seed()).unwrap();
    let o = Orchestrator {
        client,
        minter: Minter::new(
            provision::FIRST_KID,
            seed.signing_key().as_bytes(),
            Principal::orchestrator(),
        ),
    };
    let now = UnixMillis::now().as_secs();
    let light = bridge
        .lights()
        .into_iter()
        .find(|l| l.on)
        .expect("a light that is on");
    let args = json!({"light": light.name, "on": false});

    // The valid token: done, and the bridge (behind the proxy) changed.
    let valid = o.token(&o.minter, "hue", "light.set", &args, approved(), now);
    let reply = o.send("light.set", &args, &valid).await;
    assert!(matches!(reply, AgentReply::Done(_)), "{}", code(&reply));
    assert!(
        !bridge.light(&light.name).unwrap().on,
        "the light is still on"
    );
    let puts = || {
        bridge
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count()
    };
    assert_eq!(puts(), 1);

    // Every bad token is refused by the running agent, before it touches the bridge.
    let attacker = Minter::new(1, &[0x66; 32], Principal::orchestrator());
    let other_kid = Minter::new(7, &[0x66; 32], Principal::orchestrator());
    let on = json!({"light": light.name, "on": true});
    let cases: Vec<(&str, String, &str, Value, &str)> = vec![
        (
            "forged (attacker key)",
            o.token(&attacker, "hue", "light.set", &on, approved(), now),
            "light.set",
            on.clone(),
            "token_bad_signature",
        ),
        (
            "unknown key id",
            o.token(&other_kid, "hue", "light.set", &on, approved(), now),
            "light.set",
            on.clone(),
            "token_unknown_key",
        ),
        (
            "expired",
            o.token(&o.minter, "hue", "light.set", &on, approved(), now - 300),
            "light.set",
            on.clone(),
            "token_expired",
        ),
        (
            "not yet valid",
            o.token(&o.minter, "hue", "light.set", &on, approved(), now + 300),
            "light.set",
            on.clone(),
            "token_not_yet_valid",
        ),
        (
            "for another agent",
            o.token(&o.minter, "weather", "light.set", &on, approved(), now),
            "light.set",
            on.clone(),
            "token_wrong_audience",
        ),
        (
            "for another action",
            o.token(&o.minter, "hue", "light.set", &on, approved(), now),
            "room.set",
            json!({"room": "Living room", "on": true}),
            "token_wrong_action",
        ),
        (
            "for other arguments",
            o.token(&o.minter, "hue", "light.set", &args, approved(), now),
            "light.set",
            on.clone(),
            "token_args_mismatch",
        ),
        (
            "read-only binding for a change",
            o.token(
                &o.minter,
                "hue",
                "light.set",
                &on,
                ApprovalBinding::ReadOnlyPolicy,
                now,
            ),
            "light.set",
            on.clone(),
            "token_approval_missing",
        ),
        (
            "not a token",
            "not-a-token!".to_owned(),
            "light.set",
            on.clone(),
            "token_bad_encoding",
        ),
        (
            "replayed",
            valid.clone(),
            "light.set",
            args.clone(),
            "token_replayed",
        ),
    ];
    for (what, token, action, args, expected) in &cases {
        let reply = o.send(action, args, token).await;
        assert_eq!(code(&reply), format!("rejected {expected}"), "{what}");
    }
    assert_eq!(puts(), 1, "a refused token reached the bridge");
    assert!(!bridge.light(&light.name).unwrap().on);

    // SV-26 across a restart: the nonce store lives on the agent's data volume.
    t.restart(&hue.name).await.unwrap();
    loop {
        let h = next_heartbeat(&mut statuses).await;
        if h.started_at > first.started_at {
            break;
        }
    }
    let reply = o.send("light.set", &args, &valid).await;
    assert_eq!(code(&reply), "rejected token_replayed", "after restart");
    assert_eq!(puts(), 1);

    // Every refusal was audited by the agent itself.
    let events = audit_events(&endpoint, &home).await;
    let rejected: Vec<String> = events
        .iter()
        .filter(|e| e.sender.as_str() == "hue")
        .filter_map(|e| match &e.body {
            AuditEvent::CommandRejected { code, .. } => Some(code.as_str().to_owned()),
            _ => None,
        })
        .collect();
    for (what, _, _, _, expected) in &cases {
        assert!(
            rejected.iter().any(|c| c == expected),
            "{what}: {rejected:?}"
        );
    }
    assert!(events.iter().any(
        |e| e.sender.as_str() == "hue" && matches!(e.body, AuditEvent::CommandExecuted { .. })
    ));

    // The egress proxy, probed from an egress-enabled agent network: only the listed
    // destination opens; other hosts, private and link-local addresses, NATS and the bracket
    // trick are refused, and each refusal is an audit event from the proxy.
    let mut weather = deployment(&home, "weather", &probe_bin());
    weather.egress = vec![bridge_at.clone()];
    let nats_ip = t
        .client()
        .inspect_container(&t.instance().nats_container(), None)
        .await
        .unwrap()
        .network_settings
        .unwrap()
        .networks
        .unwrap()[&t.instance().core_network()]
        .ip_address
        .clone()
        .unwrap();
    let refused_targets = [
        "127.0.0.1:22".to_owned(),
        "169.254.169.254:80".to_owned(),
        "10.0.0.1:443".to_owned(),
        format!("{nats_ip}:4222"),
        format!("{gateway}:22"),
        "1.1.1.1:443".to_owned(),
        "example.com:443".to_owned(),
        "[example.com]:443".to_owned(),
        "localhost:443".to_owned(),
    ];
    let mut args = vec![
        "egress".to_owned(),
        "--proxy".to_owned(),
        "egress:3128".to_owned(),
    ];
    for target in std::iter::once(bridge_at.to_string()).chain(refused_targets.iter().cloned()) {
        args.push("--target".to_owned());
        args.push(target);
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let checks = probe(&t, &weather, run(&arg_refs)).await;
    assert_allowed(&checks, &format!("connect_via_proxy_{bridge_at}"));
    for target in &refused_targets {
        let (result, _, detail) = outcome(&checks, &format!("connect_via_proxy_{target}"));
        assert_eq!(result, "refused", "{target}: {detail}");
        assert!(detail.contains("403"), "{target}: {detail}");
    }
    // The proxy answers 403 and audits the refusal on its own connection: the events may
    // reach the stream a moment after the probe saw its answers, so wait for them (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let egress_refusals: Vec<(Option<String>, String, String)> = loop {
        let events = audit_events(&endpoint, &home).await;
        let found: Vec<(Option<String>, String, String)> = events
            .iter()
            .filter(|e| e.sender.as_str() == "egress")
            .filter_map(|e| match &e.body {
                AuditEvent::EgressRefused {
                    agent, host, code, ..
                } => Some((
                    agent.as_ref().map(ToString::to_string),
                    host.clone(),
                    code.as_str().to_owned(),
                )),
                _ => None,
            })
            .collect();
        if found.len() >= refused_targets.len() || std::time::Instant::now() >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        egress_refusals.len() >= refused_targets.len(),
        "{egress_refusals:?}"
    );
    assert!(
        egress_refusals
            .iter()
            .all(|(agent, _, _)| agent.as_deref() == Some("weather")),
        "{egress_refusals:?}"
    );
    assert!(
        egress_refusals
            .iter()
            .any(|(_, host, code)| host == "169.254.169.254" && code == "egress_not_allowlisted"),
        "{egress_refusals:?}"
    );
}

// ---------------------------------------------------------------------------------------------

/// SV-35: a thread bomb stops at the pids limit, a memory hog is killed alone and restarted a
/// bounded number of times, and the neighbouring agent and NATS carry on.
#[tokio::test]
async fn resource_exhaustion_is_contained_to_its_own_container() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue", "weather"]);
    let endpoint = t.ensure_nats(&nats_settings(&home)).await.unwrap();

    // The neighbour: a probe that just sleeps, and a host-side NATS client.
    let neighbour = deployment(&home, "hue", &probe_bin());
    t.start_with(&neighbour, &run(&["sleep"])).await.unwrap();
    let orchestrator =
        provision::client::connect(&endpoint.url, &home, &Identity::Orchestrator.principal())
            .await
            .unwrap();

    let mut weather = deployment(&home, "weather", &probe_bin());
    weather.limits = Limits {
        memory_bytes: 64 * 1024 * 1024,
        ..Limits::default()
    };
    let threads = probe(&t, &weather, run(&["threads"])).await;
    let count = threads["thread_count"]["detail"].as_i64().unwrap();
    assert!(
        count > 0 && count < weather.limits.pids,
        "{count} threads under a pids limit of {}",
        weather.limits.pids
    );
    assert_refused(&threads, "thread_bomb", &[]);

    // The memory hog, with the agents' real restart policy.
    let mut options = run(&["memhog"]);
    options.restart = Restart::OnFailure(sandbox::docker::spec::MAX_RESTARTS);
    t.start_with(&weather, &options).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        let s = t.inspect(&weather.name).await.unwrap();
        if s.oom_killed && s.restart_count >= 1 {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no OOM kill and restart: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(status.restart_count <= sandbox::docker::spec::MAX_RESTARTS);
    let logs = t.logs(&weather.name).await.unwrap();
    let reached: i64 = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["check"] == "memhog_mib")
        .filter_map(|v| v["detail"].as_i64())
        .max()
        .unwrap_or(0);
    assert!(
        reached <= 64,
        "the hog reached {reached} MiB under a 64 MiB limit"
    );

    // Its neighbours never noticed.
    let n = t.inspect(&neighbour.name).await.unwrap();
    assert_eq!(n.state, RunState::Running, "{n:?}");
    assert_eq!(n.restart_count, 0);
    assert!(!n.oom_killed);
    orchestrator
        .publish("cmd.hue", "ping".into())
        .await
        .unwrap();
    orchestrator.flush().await.unwrap();
    let rtt = orchestrator.connection_state();
    assert_eq!(rtt, async_nats::connection::State::Connected);
    t.stop(&weather.name).await.unwrap();
}
