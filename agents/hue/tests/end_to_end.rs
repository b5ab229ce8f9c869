//! End to end in-process: the agent runtime serving the Hue agent over a real nats-server with
//! our generated configuration, commands sent by the orchestrator identity with tokens minted
//! from the provisioned signing seed, changing the lights of the fake bridge.
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

use agent_runtime::{Agent as _, AgentContext};
use futures::StreamExt as _;
use hue::Hue;
use orchestrator::mint::{MintRequest, Minter, fresh_nonce};
use protocol::acl::Identity;
use protocol::deploy::AgentConfig;
use protocol::message::{AgentReply, AgentRequest, Digest, Invocation};
use protocol::token::ApprovalBinding;
use protocol::{
    ActionName, AgentName, ApprovalId, ChatUser, CorrelationId, Envelope, MessageId, PlanId,
    Principal, UnixMillis,
};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::fake_hue::{FakeBridge, fixture_with_room_groups};

const WAIT: Duration = Duration::from_secs(20);

struct Orchestrator {
    client: async_nats::Client,
    minter: Minter,
}

impl Orchestrator {
    async fn ask(&self, action: &str, args: Value, approved: bool) -> AgentReply {
        let approval = if approved {
            ApprovalBinding::Approved {
                id: ApprovalId::random(),
                hash: Digest([1; 32]),
            }
        } else {
            ApprovalBinding::ReadOnlyPolicy
        };
        let hue = AgentName::new("hue").unwrap();
        let action = ActionName::new(action).unwrap();
        let plan_id = PlanId::random();
        let token = self
            .minter
            .mint(
                &MintRequest {
                    audience: &hue,
                    subject: &ChatUser::new("telegram:42").unwrap(),
                    action: &action,
                    args: &args,
                    plan_id,
                    step: 0,
                    approval,
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
                plan_id,
                step: 0,
                action,
                args,
                token: token.text(),
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
        let reply = Envelope::<AgentReply>::decode(&reply.payload).unwrap();
        assert_eq!(reply.sender.as_str(), "hue");
        assert_eq!(reply.correlation_id, request.correlation_id);
        reply.body
    }
}

fn summary(reply: &AgentReply) -> String {
    match reply {
        AgentReply::Done(o) => format!("done: {}", o.summary),
        AgentReply::Rejected(r) => format!("rejected {}", r.code.as_str()),
        AgentReply::Failed(r) => format!("failed {}: {}", r.code.as_str(), r.message),
    }
}

#[tokio::test]
async fn minted_commands_change_the_bridge_through_the_runtime() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let bridge = FakeBridge::start_with(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        fixture_with_room_groups(),
    )
    .await
    .unwrap();
    // The application key, as the sandbox would place it in the identity directory.
    let identity = server.layout().root().to_path_buf();
    let key_file = identity.join("secrets/hue.key");
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, bridge.application_key()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let config = AgentConfig::from_json(
        &serde_json::to_vec(&json!({
            "name": "hue",
            "nats_url": server.url(),
            "identity_dir": identity,
            "data_dir": data.path(),
            "heartbeat_interval_ms": 60000,
            "max_concurrency": 4,
            "shutdown_grace_ms": 5000,
            "egress_proxy": null,
            "isolation": {"level": "none", "measures": [], "missing": ["in-process test"]},
            "confine": null,
            "settings": {
                "bridge": bridge.addr().to_string(),
                "application_key_file": "secrets/hue.key",
                "bridge_cert_sha256": bridge.cert_sha256(),
                "request_timeout_ms": 2000
            }
        }))
        .unwrap(),
    )
    .unwrap();
    agent_runtime::entry::check_config(&config).unwrap();
    let settings = agent_runtime::entry::parse_settings::<Hue>(&config).unwrap();
    let hue = Hue::new(settings, &AgentContext::from_config(&config)).unwrap();

    let orch = server
        .connect(&Identity::Orchestrator.principal())
        .await
        .unwrap();
    let mut status = orch.subscribe("status.hue").await.unwrap();
    orch.flush().await.unwrap();
    let client = server
        .connect(&Principal::new("hue").unwrap())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent_runtime::run(config, hue, client, async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(WAIT, status.next())
        .await
        .expect("a heartbeat when ready")
        .unwrap();

    let seed = provision::load_seed(&server.layout().token_signing_seed()).unwrap();
    let orchestrator = Orchestrator {
        client: orch,
        minter: Minter::new(
            provision::FIRST_KID,
            &seed.signing_key().to_bytes(),
            Principal::orchestrator(),
        ),
    };

    // Bedtime: switch off Room 9, dim Light 6, then ask which lights are still on.
    let r = orchestrator
        .ask(
            "room.set",
            json!({"room": "Room 9", "on": false, "transition_ms": 2000}),
            true,
        )
        .await;
    assert_eq!(summary(&r), "done: Room 9: off, over 2000 ms.");
    for name in ["Light 2", "Light 3", "Light 7", "Light 8"] {
        assert!(!bridge.light(name).unwrap().on, "{name}");
    }
    let r = orchestrator
        .ask(
            "light.set",
            json!({"light": "light 6", "brightness": 5}),
            true,
        )
        .await;
    assert_eq!(summary(&r), "done: Light 6: 5% brightness.");
    assert_eq!(bridge.light("Light 6").unwrap().brightness, Some(5.0));
    let r = orchestrator
        .ask("lights.list", json!({"on_only": true}), false)
        .await;
    assert_eq!(summary(&r), "done: 2 lights are on: Light 4, Light 6.");
    let AgentReply::Done(outcome) = &r else {
        unreachable!()
    };
    assert_eq!(outcome.data["on"], 2);

    // A change under a read-only token never reaches the bridge.
    let puts_before = bridge
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    let r = orchestrator
        .ask("light.set", json!({"light": "Light 4", "on": false}), false)
        .await;
    assert_eq!(summary(&r), "rejected token_approval_missing");
    assert!(bridge.light("Light 4").unwrap().on);
    // Arguments outside the schema never reach the bridge either.
    let r = orchestrator
        .ask(
            "light.set",
            json!({"light": "Light 4", "brightness": 150}),
            true,
        )
        .await;
    assert_eq!(summary(&r), "rejected invalid_arguments");
    assert_eq!(
        bridge
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count(),
        puts_before
    );

    // A scene, and a bridge-side failure reported as a failure.
    let r = orchestrator
        .ask("scene.activate", json!({"scene": "Scene 6"}), true)
        .await;
    assert_eq!(summary(&r), "done: Scene Scene 6 activated in Zone 8.");
    assert!(bridge.light("Light 2").unwrap().on);
    let r = orchestrator
        .ask("light.set", json!({"light": "Porch", "on": true}), true)
        .await;
    assert!(
        summary(&r).starts_with("failed not_found: no light is named \"Porch\""),
        "{}",
        summary(&r)
    );

    let _ = stop.send(());
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Every bridge request carried the key; none was refused.
    assert!(
        bridge
            .requests()
            .iter()
            .all(|r| r.authorized && r.status == 200)
    );
}
