//! The process backend end to end: the real `agent-hue` binary started, supervised, restarted
//! and stopped by `sandbox::process::ProcessSandbox`, confining itself (no_new_privs, Landlock,
//! the container's seccomp allowlist), against a real nats-server and the Hue bridge double,
//! and reporting its weaker isolation honestly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use orchestrator::mint::{MintRequest, Minter, fresh_nonce};
use protocol::acl::Identity;
use protocol::message::{AgentReply, AgentRequest, Digest, Invocation, Isolation, Status};
use protocol::token::ApprovalBinding;
use protocol::{
    ActionName, AgentName, ApprovalId, ChatUser, CorrelationId, Envelope, MessageId, PlanId,
    Principal, UnixMillis,
};
use sandbox::process::{ProcessSandbox, ProcessSettings};
use sandbox::{RunState, Sandbox as _, SecretFile};
use serde_json::json;
use test_support::NatsServer;
use test_support::docker::{agent_secrets, deployment, workspace_binary};
use test_support::fake_hue::{FakeBridge, fixture_with_room_groups};

const WAIT: Duration = Duration::from_secs(20);

async fn heartbeat(statuses: &mut async_nats::Subscriber) -> protocol::message::Heartbeat {
    let m = tokio::time::timeout(WAIT, statuses.next())
        .await
        .expect("no heartbeat")
        .unwrap();
    let Status::Heartbeat(h) = Envelope::<Status>::decode(&m.payload).unwrap().body;
    h
}

#[tokio::test]
async fn a_process_agent_confines_itself_serves_and_reports_its_weaker_isolation() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let home = server.layout().clone();
    let bridge = FakeBridge::start_with(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        fixture_with_room_groups(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("app.key");
    std::fs::write(&key_file, bridge.application_key()).unwrap();

    let hue = AgentName::new("hue").unwrap();
    let mut d = deployment(&home, "hue", &workspace_binary("hue", "agent-hue"));
    assert_eq!(d.secrets, agent_secrets(&home, &hue));
    d.secrets.push(SecretFile {
        source: key_file,
        target: "hue/app.key".into(),
    });
    d.egress = vec![protocol::manifest::HostPort::parse(&bridge.addr().to_string()).unwrap()];
    d.config.nats_url = server.url().to_owned();
    d.config.heartbeat_interval_ms = 500;
    d.config.settings = json!({
        "bridge": bridge.addr().to_string(),
        "application_key_file": "hue/app.key",
        "bridge_cert_sha256": bridge.cert_sha256(),
        "request_timeout_ms": 2000,
    });

    let orchestrator = server
        .connect(&Identity::Orchestrator.principal())
        .await
        .unwrap();
    let mut statuses = orchestrator.subscribe("status.hue").await.unwrap();
    orchestrator.flush().await.unwrap();

    let sandbox = ProcessSandbox::new(ProcessSettings {
        state_dir: dir.path().join("state"),
        log_filter: "info".to_owned(),
    })
    .unwrap();
    let started = sandbox.start(&d).await.unwrap();
    assert_eq!(started.isolation.level, Isolation::Process);
    let log =
        || std::fs::read_to_string(dir.path().join("state/hue/agent.log")).unwrap_or_default();

    // The heartbeat carries what the agent really enforced, and what a process cannot have.
    let h = tokio::select! {
        h = heartbeat(&mut statuses) => h,
        () = tokio::time::sleep(WAIT) => panic!("no heartbeat:\n{}", log()),
    };
    assert_eq!(h.isolation.level, Isolation::Process, "{:?}", h.isolation);
    for measure in [
        "no_new_privs",
        "landlock: filesystem limited",
        "seccomp allowlist",
    ] {
        assert!(
            h.isolation.measures.iter().any(|m| m.starts_with(measure)),
            "{measure} missing from {:?}\n{}",
            h.isolation.measures,
            log()
        );
    }
    for gap in [
        "own network namespace",
        "egress proxy",
        "memory, pids and CPU limits",
    ] {
        assert!(
            h.isolation.missing.iter().any(|m| m.starts_with(gap)),
            "{gap} not reported: {:?}",
            h.isolation.missing
        );
    }
    // Its environment held nothing but its configuration path and log filter, and its files
    // are a private copy of exactly its own.
    let identity = dir.path().join("state/hue/identity");
    let mut files: Vec<String> = walk(&identity);
    files.sort();
    assert_eq!(
        files,
        vec![
            "hue/app.key",
            "keys/keyset.json",
            "nats/hue.nk",
            "tls/ca.pem",
            "tls/clients/hue.key",
            "tls/clients/hue.pem"
        ]
    );

    // A command under a valid token changes the bridge.
    let seed = provision::load_seed(&home.token_signing_seed()).unwrap();
    let minter = Minter::new(
        provision::FIRST_KID,
        &seed.signing_key().to_bytes(),
        Principal::orchestrator(),
    );
    let light = bridge.lights().into_iter().find(|l| l.on).unwrap();
    let args = json!({"light": light.name, "on": false});
    let action = ActionName::new("light.set").unwrap();
    let token = minter
        .mint(
            &MintRequest {
                audience: &hue,
                subject: &ChatUser::new("telegram:42").unwrap(),
                action: &action,
                args: &args,
                plan_id: PlanId::random(),
                step: 0,
                approval: ApprovalBinding::Approved {
                    id: ApprovalId::random(),
                    hash: Digest([1; 32]),
                },
                ttl_secs: 30,
            },
            UnixMillis::now().as_secs(),
            fresh_nonce().unwrap(),
        )
        .unwrap();
    let request = Envelope::new(
        MessageId::random(),
        CorrelationId::random(),
        Principal::orchestrator(),
        UnixMillis::now(),
        AgentRequest::Invoke(Invocation {
            plan_id: token.claims.plan_id,
            step: 0,
            action,
            args,
            token: token.text(),
        }),
    );
    let reply = orchestrator
        .send_request(
            "cmd.hue",
            async_nats::Request::new()
                .payload(request.encode().unwrap().into())
                .timeout(Some(WAIT)),
        )
        .await
        .unwrap();
    let reply = Envelope::<AgentReply>::decode(&reply.payload).unwrap().body;
    assert!(matches!(reply, AgentReply::Done(_)), "{reply:?}\n{}", log());
    assert!(!bridge.light(&light.name).unwrap().on);

    // The supervisor restarts a crashed agent (here: killed from outside).
    let status = sandbox.inspect(&hue).await.unwrap();
    assert_eq!(status.state, RunState::Running);
    assert!(status.memory_bytes.unwrap_or(0) > 0, "{status:?}");
    let pid = find_pid(&dir.path().join("state/hue/agent.json"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = sandbox.inspect(&hue).await.unwrap();
        if s.restart_count == 1 && s.state == RunState::Running {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not restarted: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    heartbeat(&mut statuses).await;

    // Stop: SIGTERM, the agent drains and exits, the supervisor forgets it.
    sandbox.stop(&hue).await.unwrap();
    assert!(matches!(
        sandbox.inspect(&hue).await,
        Err(sandbox::SandboxError::UnknownAgent(_))
    ));
    assert!(log().contains("confined"), "{}", log());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(
                walk(&p)
                    .into_iter()
                    .map(|f| format!("{}/{f}", p.file_name().unwrap().to_string_lossy())),
            );
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

/// The pid of the agent process whose `AGENT_CONFIG` is `config`.
fn find_pid(config: &std::path::Path) -> i32 {
    let wanted = format!("AGENT_CONFIG={}", config.display());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|v| v == wanted.as_bytes())
        {
            return pid;
        }
    }
    panic!("no agent process for {}", config.display());
}
