//! Sandbox benchmarks on the real Docker engine, with release binaries (what images ship):
//! agent image size, container cold start to first heartbeat, idle resident memory per agent,
//! and the round trip of a token-checked request through the containerised Hue agent.
//! Prints figures and method; run with `cargo bench -p system-tests --bench sandbox`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use orchestrator::mint::{MintRequest, Minter, fresh_nonce};
use protocol::acl::Identity;
use protocol::manifest::HostPort;
use protocol::message::{AgentReply, AgentRequest, Digest, Invocation, Status};
use protocol::token::ApprovalBinding;
use protocol::{
    ActionName, AgentName, ApprovalId, ChatUser, CorrelationId, Envelope, MessageId, PlanId,
    Principal, UnixMillis,
};
use sandbox::docker::EgressSettings;
use sandbox::{Sandbox as _, SecretFile};
use serde_json::json;
use test_support::docker::{
    TestSandbox, deployment, home, nats_settings, workspace_release_binary,
};
use test_support::fake_hue::{FakeBridge, fixture_with_room_groups};

const STARTS: usize = 10;
const REQUESTS: usize = 300;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / 1024.0 / 1024.0)
}

async fn heartbeat(statuses: &mut async_nats::Subscriber) -> protocol::message::Heartbeat {
    let m = tokio::time::timeout(Duration::from_secs(30), statuses.next())
        .await
        .expect("no heartbeat")
        .unwrap();
    let Status::Heartbeat(h) = Envelope::<Status>::decode(&m.payload).unwrap().body;
    h
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    println!("building release binaries ...");
    let hue_bin = workspace_release_binary("hue", "agent-hue");
    let egress_bin = workspace_release_binary("egress-proxy", "egress-proxy");

    // 1. Image size: the binary plus exactly the libraries it loads.
    let spec = sandbox::docker::image::collect("agent-hue", &hue_bin).unwrap();
    let archive = sandbox::docker::image::build_archive(&spec).unwrap();
    let files: u64 = archive.entries.iter().map(|e| e.size).sum();
    let binary = std::fs::metadata(&hue_bin).unwrap().len();

    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["hue"]);
    let endpoint = t.ensure_nats(&nats_settings(&home)).await.unwrap();
    t.ensure_egress_proxy(&EgressSettings::new(egress_bin, home.clone()))
        .await
        .unwrap();
    sandbox::docker::image::import(t.client(), &archive)
        .await
        .unwrap();
    let engine_size = t
        .client()
        .inspect_image(archive.id.as_str())
        .await
        .unwrap()
        .size
        .unwrap_or(0);

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
    let key_file = t.dir.path().join("app.key");
    std::fs::write(&key_file, bridge.application_key()).unwrap();
    let mut hue = deployment(&home, "hue", &hue_bin);
    hue.secrets.push(SecretFile {
        source: key_file,
        target: "hue/app.key".into(),
    });
    hue.egress = vec![bridge_at.clone()];
    hue.config.heartbeat_interval_ms = 2_000;
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

    // 2. Cold start: `start` (container created and started, network and rules in place) until
    // the agent's first heartbeat arrives on the host; the image is already loaded.
    let mut starts = Vec::new();
    for _ in 0..STARTS {
        t.stop(&hue.name).await.unwrap();
        let begin = Instant::now();
        t.start(&hue).await.unwrap();
        heartbeat(&mut statuses).await;
        starts.push(begin.elapsed());
    }
    starts.sort();

    // 3. Idle memory, 5 s after the last start, as the engine's cgroup accounting sees it (the
    // agent's own VmRSS comes with its first heartbeat after a restart, below).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = t.inspect(&hue.name).await.unwrap();
    let idle_cgroup = status.memory_bytes.unwrap_or(0);

    // 4. Round trips with tokens minted per request (as the orchestrator does).
    let seed = provision::load_seed(&home.token_signing_seed()).unwrap();
    let minter = Minter::new(
        provision::FIRST_KID,
        &seed.signing_key().to_bytes(),
        Principal::orchestrator(),
    );
    let name = AgentName::new("hue").unwrap();
    let user = ChatUser::new("telegram:42").unwrap();
    let ask = |action: &str, args: serde_json::Value, valid: bool| {
        let action = ActionName::new(action).unwrap();
        let m = if valid {
            minter
                .mint(
                    &MintRequest {
                        audience: &name,
                        subject: &user,
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
                .unwrap()
                .text()
        } else {
            "AAAA".to_owned()
        };
        Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::orchestrator(),
            UnixMillis::now(),
            AgentRequest::Invoke(Invocation {
                plan_id: PlanId::random(),
                step: 0,
                action,
                args,
                token: m,
            }),
        )
        .encode()
        .unwrap()
    };
    let mut valid = Vec::new();
    let mut refused = Vec::new();
    for i in 0..REQUESTS + 20 {
        let payload = ask("lights.list", json!({}), true);
        let begin = Instant::now();
        let reply = client.request("cmd.hue", payload.into()).await.unwrap();
        let elapsed = begin.elapsed();
        assert!(matches!(
            Envelope::<AgentReply>::decode(&reply.payload).unwrap().body,
            AgentReply::Done(_)
        ));
        if i >= 20 {
            valid.push(elapsed);
        }
        let payload = ask("lights.list", json!({}), false);
        let begin = Instant::now();
        let reply = client.request("cmd.hue", payload.into()).await.unwrap();
        let elapsed = begin.elapsed();
        assert!(matches!(
            Envelope::<AgentReply>::decode(&reply.payload).unwrap().body,
            AgentReply::Rejected(_)
        ));
        if i >= 20 {
            refused.push(elapsed);
        }
    }
    valid.sort();
    refused.sort();
    // Idle after the load: the agent's own VmRSS in its next heartbeats (skip one in flight).
    heartbeat(&mut statuses).await;
    let loaded = heartbeat(&mut statuses).await;
    // A fresh heartbeat after the load, for the agent's own resident size.
    t.restart(&hue.name).await.unwrap();
    let h = heartbeat(&mut statuses).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_restart = t
        .inspect(&hue.name)
        .await
        .unwrap()
        .memory_bytes
        .unwrap_or(0);

    println!();
    println!("sandbox benchmark (real Docker engine on this machine, release binaries)");
    println!(
        "  image: agent-hue binary {} + libraries = {} in {} files; engine reports {}   (goal <= 20 MB)",
        mib(binary),
        mib(files),
        archive.entries.iter().filter(|e| e.size > 0).count(),
        mib(engine_size.max(0) as u64)
    );
    println!(
        "  cold start to first heartbeat, {STARTS} starts: p50 {} p90 {} max {}   (goal <= 1 s each)",
        ms(percentile(&starts, 0.5)),
        ms(percentile(&starts, 0.9)),
        ms(*starts.last().unwrap())
    );
    println!(
        "  idle memory: agent VmRSS idle after {} requests {} , after a restart {} ; cgroup (private) usage idle {} , after restart {}   (goal <= 8 MB)",
        2 * (REQUESTS + 20),
        mib(loaded.rss_bytes.unwrap_or(0)),
        mib(h.rss_bytes.unwrap_or(0)),
        mib(idle_cgroup),
        mib(after_restart)
    );
    println!(
        "  round trip, valid token, lights.list via proxy to the bridge double, {REQUESTS} requests: p50 {} p99 {}",
        ms(percentile(&valid, 0.5)),
        ms(percentile(&valid, 0.99))
    );
    println!(
        "  round trip, refused token (agent path only), {REQUESTS} requests: p50 {} p99 {}",
        ms(percentile(&refused, 0.5)),
        ms(percentile(&refused, 0.99))
    );
}
