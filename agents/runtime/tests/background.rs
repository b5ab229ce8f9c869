//! An agent's optional background work ([`Agent::background`]) against a real nats-server:
//! it runs beside the command loop with the agent's own connection and audit emitter, sees the
//! shutdown signal, may finish early without stopping the agent, and stops the agent with its
//! own error code when it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use agent_runtime::{
    ActionError, Agent, AgentContext, AgentError, BackgroundContext, Outcome, RuntimeError,
};
use async_nats::jetstream;
use futures::StreamExt as _;
use orchestrator::mint::{MintRequest, Minter, fresh_nonce};
use protocol::acl::Identity;
use protocol::deploy::AgentConfig;
use protocol::manifest::CheckedManifest;
use protocol::message::{AgentReply, AgentRequest, AuditEvent, Invocation};
use protocol::token::ApprovalBinding;
use protocol::{
    ActionName, AgentName, ChatUser, CorrelationId, Envelope, MessageId, PlanId, Principal,
    UnixMillis,
};
use serde_json::{Value, json};
use test_support::NatsServer;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

static MANIFEST: LazyLock<Option<CheckedManifest>> = LazyLock::new(|| {
    CheckedManifest::from_json(
        r#"{
  "name": "probe",
  "description": "A test agent with background work.",
  "egress": "none",
  "actions": [
    {"name": "thing.read", "description": "Reads a thing.", "effect": "read", "timeout_ms": 5000,
     "params": {"type": "object", "additionalProperties": false, "properties": {}}}
  ]
}"#,
    )
    .ok()
});

/// What the background work does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Emits an audit event, then waits for the shutdown signal.
    Watch,
    /// Returns `Ok(())` at once.
    Finish,
    /// Returns an error at once.
    Fail,
}

struct Busy {
    mode: Mode,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent for Busy {
    type Settings = serde_json::Map<String, Value>;
    const VERSION: &'static str = "1.0.0-busy";

    fn manifest() -> Option<&'static CheckedManifest> {
        MANIFEST.as_ref()
    }

    fn new(_settings: Self::Settings, _ctx: &AgentContext) -> Result<Self, AgentError> {
        Ok(Busy {
            mode: Mode::Watch,
            log: Arc::default(),
        })
    }

    async fn handle(&self, action: &ActionName, _args: &Value) -> Result<Outcome, ActionError> {
        Ok(Outcome {
            summary: format!("{action} done"),
            data: json!({}),
        })
    }

    fn background(
        &self,
        ctx: BackgroundContext,
    ) -> Option<impl Future<Output = Result<(), AgentError>> + Send> {
        let log = Arc::clone(&self.log);
        let mode = self.mode;
        Some(async move {
            let mut ctx = ctx;
            log.lock().unwrap().push(format!(
                "started as {} with data dir {}",
                ctx.name,
                ctx.data_dir.is_dir()
            ));
            match mode {
                Mode::Finish => return Ok(()),
                Mode::Fail => {
                    return Err(AgentError::new("probe_background_failed", "asked to fail"));
                }
                Mode::Watch => {}
            }
            ctx.audit
                .emit(
                    CorrelationId::random(),
                    AuditEvent::ServiceStarted {
                        version: "background".to_owned(),
                    },
                )
                .await
                .map_err(|e| AgentError::new("probe_audit_failed", e.to_string()))?;
            assert!(!ctx.shutdown.is_requested());
            ctx.shutdown.requested().await;
            assert!(ctx.shutdown.is_requested());
            log.lock().unwrap().push("shutdown seen".to_owned());
            Ok(())
        })
    }
}

struct Env {
    server: NatsServer,
    data: tempfile::TempDir,
    orch: async_nats::Client,
}

impl Env {
    async fn new() -> Env {
        let server = NatsServer::start(&["probe"]).await.unwrap();
        let orch = server
            .connect(&Identity::Orchestrator.principal())
            .await
            .unwrap();
        Env {
            data: tempfile::tempdir().unwrap(),
            server,
            orch,
        }
    }

    fn config(&self) -> AgentConfig {
        let c = json!({
            "name": "probe",
            "nats_url": self.server.url(),
            "identity_dir": self.server.layout().root(),
            "data_dir": self.data.path(),
            "heartbeat_interval_ms": 60000,
            "max_concurrency": 2,
            "shutdown_grace_ms": 2000,
            "egress_proxy": null,
            "isolation": {"level": "container", "measures": [], "missing": []},
            "confine": null,
            "settings": {}
        });
        AgentConfig::from_json(&serde_json::to_vec(&c).unwrap()).unwrap()
    }

    /// Starts the runtime and waits for its first heartbeat.
    async fn start(
        &self,
        agent: Busy,
    ) -> (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), RuntimeError>>,
    ) {
        let mut status = self.orch.subscribe("status.probe").await.unwrap();
        self.orch.flush().await.unwrap();
        let client = self
            .server
            .connect(&Principal::new("probe").unwrap())
            .await
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent_runtime::run(self.config(), agent, client, async {
            let _ = stopped.await;
        }));
        tokio::time::timeout(WAIT, status.next())
            .await
            .expect("a heartbeat when ready")
            .unwrap();
        (stop, task)
    }

    /// Sends `thing.read` under a valid token and returns the reply.
    async fn read(&self) -> AgentReply {
        let seed = provision::load_seed(&self.server.layout().token_signing_seed()).unwrap();
        let minter = Minter::new(
            provision::FIRST_KID,
            &seed.signing_key().to_bytes(),
            Principal::orchestrator(),
        );
        let action = ActionName::new("thing.read").unwrap();
        let args = json!({});
        let token = minter
            .mint(
                &MintRequest {
                    audience: &AgentName::new("probe").unwrap(),
                    subject: &ChatUser::new("telegram:42").unwrap(),
                    action: &action,
                    args: &args,
                    plan_id: PlanId::random(),
                    step: 0,
                    approval: ApprovalBinding::ReadOnlyPolicy,
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
        let reply = self
            .orch
            .send_request(
                "cmd.probe",
                async_nats::Request::new()
                    .payload(request.encode().unwrap().into())
                    .timeout(Some(WAIT)),
            )
            .await
            .unwrap();
        Envelope::<AgentReply>::decode(&reply.payload).unwrap().body
    }

    /// The versions of the probe's `service_started` events in the AUDIT stream, once there
    /// are `n`.
    async fn started_versions(&self, n: usize) -> Vec<String> {
        let js = jetstream::new(self.server.admin().await.unwrap());
        let stream = js.get_stream("AUDIT").await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut versions = Vec::new();
            let mut seq = 1;
            while let Ok(m) = stream.get_raw_message(seq).await {
                seq += 1;
                let e = Envelope::<AuditEvent>::decode(&m.payload).unwrap();
                if let AuditEvent::ServiceStarted { version } = e.body
                    && m.subject.as_str() == "audit.probe"
                {
                    versions.push(version);
                }
            }
            if versions.len() >= n {
                return versions;
            }
            assert!(tokio::time::Instant::now() < deadline, "{versions:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn background_work_runs_beside_commands_and_sees_the_shutdown_signal() {
    let env = Env::new().await;
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let agent = Busy {
        mode: Mode::Watch,
        log: Arc::clone(&log),
    };
    let (stop, task) = env.start(agent).await;
    // It published through the agent's own emitter (audit.probe) ...
    let versions = env.started_versions(2).await;
    assert_eq!(versions, vec!["1.0.0-busy", "background"]);
    // ... while commands are answered as usual.
    assert!(matches!(env.read().await, AgentReply::Done(_)));
    assert_eq!(
        *log.lock().unwrap(),
        vec!["started as probe with data dir true"]
    );
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec!["started as probe with data dir true", "shutdown seen"]
    );
}

#[tokio::test]
async fn background_work_that_finishes_leaves_the_agent_serving() {
    let env = Env::new().await;
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let agent = Busy {
        mode: Mode::Finish,
        log: Arc::clone(&log),
    };
    let (stop, task) = env.start(agent).await;
    assert!(matches!(env.read().await, AgentReply::Done(_)));
    assert!(matches!(env.read().await, AgentReply::Done(_)));
    assert!(!task.is_finished());
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn failed_background_work_stops_the_agent_with_its_code() {
    let env = Env::new().await;
    let agent = Busy {
        mode: Mode::Fail,
        log: Arc::default(),
    };
    let (_stop, task) = env.start(agent).await;
    let error = tokio::time::timeout(WAIT, task)
        .await
        .expect("the agent stops by itself")
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Background(_)), "{error:?}");
    assert_eq!(error.code(), "probe_background_failed");
    assert_eq!(error.exit_code(), 1);
    assert_eq!(
        error.to_string(),
        "the agent's background work failed: probe_background_failed: asked to fail"
    );
}
