//! The agent runtime in-process against a real nats-server running our generated
//! configuration, with capability tokens minted by the orchestrator's `Minter` from the
//! provisioned signing seed.
//!
//! Every request goes to `cmd.probe` from the orchestrator's connection with a fresh reply
//! subject of its own; [`Env::send`] asserts exactly one reply arrives there, and
//! [`Running::stop`] asserts the agent's own connection never drew a permission violation (a
//! second reply to the same request would: NATS allows one response).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use agent_runtime::{ActionError, Agent, AgentContext, AgentError, Outcome, RuntimeError};
use async_nats::jetstream;
use futures::StreamExt as _;
use orchestrator::mint::{MintRequest, Minter, fresh_nonce};
use protocol::acl::Identity;
use protocol::deploy::AgentConfig;
use protocol::manifest::CheckedManifest;
use protocol::message::{
    AgentReply, AgentRequest, AuditEvent, Digest, Heartbeat, Invocation, Isolation, Status,
};
use protocol::token::{ApprovalBinding, MAX_TOKEN_TEXT};
use protocol::{
    ActionName, AgentName, ApprovalId, ChatUser, CorrelationId, Envelope, MessageId, PlanId,
    Principal, UnixMillis,
};
use serde_json::{Value, json};
use test_support::{NatsServer, ServerErrors};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

const AGENT: &str = "probe";
const WAIT: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_millis(200);

const MANIFEST_JSON: &str = r#"{
  "name": "probe",
  "description": "A test agent.",
  "egress": "none",
  "actions": [
    {"name": "thing.read", "description": "Reads a thing.", "effect": "read", "timeout_ms": 10000,
     "params": {"type": "object", "additionalProperties": false, "required": ["n"],
       "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 100},
                      "sleep_ms": {"type": "integer", "minimum": 0, "maximum": 20000}}}},
    {"name": "thing.change", "description": "Changes a thing.", "effect": "change", "timeout_ms": 500,
     "params": {"type": "object", "additionalProperties": false, "required": ["n"],
       "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 100},
                      "sleep_ms": {"type": "integer", "minimum": 0, "maximum": 20000},
                      "fail": {"type": "boolean"},
                      "panic": {"type": "boolean"}}}}
  ]
}"#;

static MANIFEST: LazyLock<Option<CheckedManifest>> =
    LazyLock::new(|| CheckedManifest::from_json(MANIFEST_JSON).ok());

/// What the probe's handler saw.
struct Calls {
    log: Mutex<Vec<(String, Value)>>,
    current: AtomicU32,
    max: AtomicU32,
    started: Semaphore,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            log: Mutex::default(),
            current: AtomicU32::new(0),
            max: AtomicU32::new(0),
            started: Semaphore::new(0),
        }
    }
}

impl Calls {
    fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

struct Probe {
    calls: Arc<Calls>,
}

struct Current<'a>(&'a AtomicU32);

impl Drop for Current<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Agent for Probe {
    type Settings = serde_json::Map<String, Value>;
    const VERSION: &'static str = "9.9.9-probe";

    fn manifest() -> Option<&'static CheckedManifest> {
        MANIFEST.as_ref()
    }

    fn new(_settings: Self::Settings, _ctx: &AgentContext) -> Result<Self, AgentError> {
        Ok(Probe {
            calls: Arc::default(),
        })
    }

    async fn handle(&self, action: &ActionName, args: &Value) -> Result<Outcome, ActionError> {
        self.calls
            .log
            .lock()
            .unwrap()
            .push((action.to_string(), args.clone()));
        let now = self.calls.current.fetch_add(1, Ordering::SeqCst) + 1;
        let _current = Current(&self.calls.current);
        self.calls.max.fetch_max(now, Ordering::SeqCst);
        self.calls.started.add_permits(1);
        if let Some(ms) = args.get("sleep_ms").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if args.get("fail") == Some(&json!(true)) {
            return Err(ActionError::new(
                "probe_failed",
                "asked to fail\nwith detail",
            ));
        }
        if args.get("panic") == Some(&json!(true)) {
            panic!("asked to panic");
        }
        Ok(Outcome {
            summary: format!("{action} {}", args["n"]),
            data: json!({"n": args["n"]}),
        })
    }
}

/// A running runtime.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RuntimeError>>,
    client: async_nats::Client,
    errors: ServerErrors,
}

impl Running {
    /// Asks for shutdown, waits for `run` to return, and checks the agent's connection drew no
    /// permission violation.
    async fn stop(mut self) -> Result<(), RuntimeError> {
        self.errors.sync(&self.client).await.unwrap();
        assert!(self.errors.all().is_empty(), "{:?}", self.errors.all());
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("run returns after shutdown")
            .unwrap()
    }
}

struct Env {
    server: NatsServer,
    data: tempfile::TempDir,
    minter: Minter,
    orch: async_nats::Client,
    orch_errors: ServerErrors,
    calls: Arc<Calls>,
}

enum Approval {
    ReadOnly,
    Approved,
}

impl Env {
    async fn new() -> Env {
        let server = NatsServer::start(&[AGENT, "other"]).await.unwrap();
        let seed = provision::load_seed(&server.layout().token_signing_seed()).unwrap();
        let minter = Minter::new(
            provision::FIRST_KID,
            &seed.signing_key().to_bytes(),
            Principal::orchestrator(),
        );
        let (orch, orch_errors) = server
            .connect_watching(&Identity::Orchestrator.principal())
            .await
            .unwrap();
        Env {
            data: tempfile::tempdir().unwrap(),
            server,
            minter,
            orch,
            orch_errors,
            calls: Arc::default(),
        }
    }

    fn config(&self, edit: impl FnOnce(&mut Value)) -> AgentConfig {
        let mut c = json!({
            "name": AGENT,
            "nats_url": self.server.url(),
            "identity_dir": self.server.layout().root(),
            "data_dir": self.data.path(),
            "heartbeat_interval_ms": 60000,
            "max_concurrency": 4,
            "shutdown_grace_ms": 5000,
            "egress_proxy": null,
            "isolation": {"level": "container", "measures": ["test measure"], "missing": ["test gap"]},
            "confine": null,
            "settings": {}
        });
        edit(&mut c);
        AgentConfig::from_json(&serde_json::to_vec(&c).unwrap()).unwrap()
    }

    /// Starts the runtime and returns once it is ready: its first heartbeat has arrived, and it
    /// subscribed to its commands before sending it (same connection, so the server has the
    /// subscription).
    async fn start(&self, config: AgentConfig) -> Running {
        let mut status = self.orch.subscribe("status.probe").await.unwrap();
        self.orch_errors.sync(&self.orch).await.unwrap();
        let (client, errors) = self
            .server
            .connect_watching(&Principal::new(AGENT).unwrap())
            .await
            .unwrap();
        let probe = Probe {
            calls: Arc::clone(&self.calls),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent_runtime::run(config, probe, client.clone(), async {
            let _ = stopped.await;
        }));
        tokio::time::timeout(WAIT, status.next())
            .await
            .expect("the runtime sends a heartbeat when ready")
            .unwrap();
        Running {
            stop: Some(stop),
            task,
            client,
            errors,
        }
    }

    fn mint_with(
        &self,
        minter: &Minter,
        audience: &str,
        action: &str,
        args: &Value,
        approval: Approval,
        now: i64,
    ) -> String {
        let approval = match approval {
            Approval::ReadOnly => ApprovalBinding::ReadOnlyPolicy,
            Approval::Approved => ApprovalBinding::Approved {
                id: ApprovalId::random(),
                hash: Digest([7; 32]),
            },
        };
        minter
            .mint(
                &MintRequest {
                    audience: &AgentName::new(audience).unwrap(),
                    subject: &ChatUser::new("telegram:42").unwrap(),
                    action: &ActionName::new(action).unwrap(),
                    args,
                    plan_id: PlanId::random(),
                    step: 3,
                    approval,
                    ttl_secs: 30,
                },
                now,
                fresh_nonce().unwrap(),
            )
            .unwrap()
            .text()
    }

    fn mint(&self, action: &str, args: &Value, approval: Approval) -> String {
        let now = UnixMillis::now().as_secs();
        self.mint_with(&self.minter, AGENT, action, args, approval, now)
    }

    fn command(&self, sender: &str, action: &str, args: &Value, token: &str) -> Vec<u8> {
        Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::new(sender).unwrap(),
            UnixMillis::now(),
            AgentRequest::Invoke(Invocation {
                plan_id: PlanId::random(),
                step: 3,
                action: ActionName::new(action).unwrap(),
                args: args.clone(),
                token: token.to_owned(),
            }),
        )
        .encode()
        .unwrap()
    }

    /// Sends a command on a fresh reply subject and returns its one reply.
    async fn send(&self, payload: Vec<u8>) -> Envelope<AgentReply> {
        let correlation = Envelope::<AgentRequest>::decode(&payload)
            .ok()
            .map(|e| e.correlation_id);
        let inbox = self.orch.new_inbox();
        let mut replies = self.orch.subscribe(inbox.clone()).await.unwrap();
        self.orch_errors.sync(&self.orch).await.unwrap();
        self.orch
            .publish_with_reply("cmd.probe", inbox, payload.into())
            .await
            .unwrap();
        let first = tokio::time::timeout(WAIT, replies.next())
            .await
            .expect("a reply in time")
            .expect("the subscription is open");
        self.orch_errors.sync(&self.orch).await.unwrap();
        if let Ok(Some(second)) = tokio::time::timeout(WINDOW, replies.next()).await {
            panic!("a second reply: {:?}", second.payload);
        }
        let reply = Envelope::<AgentReply>::decode(&first.payload).unwrap();
        assert_eq!(reply.sender.as_str(), AGENT);
        if let Some(c) = correlation {
            assert_eq!(
                reply.correlation_id, c,
                "the reply carries the request's correlation id"
            );
        }
        reply
    }

    /// Audit events published by the probe, once `done` holds for them.
    async fn audit_events(&self, done: impl Fn(&[AuditEvent]) -> bool) -> Vec<AuditEvent> {
        let js = jetstream::new(self.server.admin().await.unwrap());
        let stream = js
            .get_stream(protocol::subject::stream::AUDIT)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut events = Vec::new();
        let mut next_seq = 1;
        loop {
            while let Ok(m) = stream.get_raw_message(next_seq).await {
                next_seq += 1;
                if m.subject.as_str() == "audit.probe" {
                    let e = Envelope::<AuditEvent>::decode(&m.payload).unwrap();
                    assert_eq!(e.sender.as_str(), AGENT);
                    events.push(e.body);
                }
            }
            if done(&events) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "audit events so far: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn code(reply: &Envelope<AgentReply>) -> String {
    match &reply.body {
        AgentReply::Done(o) => format!("done: {}", o.summary),
        AgentReply::Rejected(r) => format!("rejected {}", r.code.as_str()),
        AgentReply::Failed(r) => format!("failed {}", r.code.as_str()),
    }
}

fn kinds(events: &[AuditEvent]) -> Vec<&'static str> {
    events.iter().map(AuditEvent::kind).collect()
}

#[tokio::test]
async fn a_valid_token_is_executed_and_answered_once() {
    let env = Env::new().await;
    let running = env.start(env.config(|_| {})).await;
    let args = json!({"n": 7});
    let token = env.mint("thing.read", &args, Approval::ReadOnly);
    let reply = env
        .send(env.command("orchestrator", "thing.read", &args, &token))
        .await;
    assert_eq!(code(&reply), "done: thing.read 7");
    let AgentReply::Done(outcome) = &reply.body else {
        unreachable!()
    };
    assert_eq!(outcome.data, json!({"n": 7}));

    let args = json!({"n": 8});
    let token = env.mint("thing.change", &args, Approval::Approved);
    let reply = env
        .send(env.command("orchestrator", "thing.change", &args, &token))
        .await;
    assert_eq!(code(&reply), "done: thing.change 8");
    assert_eq!(
        *env.calls.log.lock().unwrap(),
        vec![
            ("thing.read".to_owned(), json!({"n": 7})),
            ("thing.change".to_owned(), json!({"n": 8}))
        ]
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn refused_requests_never_reach_the_handler() {
    let env = Env::new().await;
    let running = env.start(env.config(|_| {})).await;
    let now = UnixMillis::now().as_secs();
    let read = json!({"n": 1});
    let change = json!({"n": 1});
    let forger = Minter::new(provision::FIRST_KID, &[9; 32], Principal::orchestrator());
    let valid_read = |e: &Env| e.mint("thing.read", &read, Approval::ReadOnly);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "expired",
            env.command(
                "orchestrator",
                "thing.read",
                &read,
                &env.mint_with(
                    &env.minter,
                    AGENT,
                    "thing.read",
                    &read,
                    Approval::ReadOnly,
                    now - 100,
                ),
            ),
        ),
        (
            "not yet valid",
            env.command(
                "orchestrator",
                "thing.read",
                &read,
                &env.mint_with(
                    &env.minter,
                    AGENT,
                    "thing.read",
                    &read,
                    Approval::ReadOnly,
                    now + 100,
                ),
            ),
        ),
        (
            "forged by another key",
            env.command(
                "orchestrator",
                "thing.read",
                &read,
                &env.mint_with(&forger, AGENT, "thing.read", &read, Approval::ReadOnly, now),
            ),
        ),
        (
            "for another agent",
            env.command(
                "orchestrator",
                "thing.read",
                &read,
                &env.mint_with(
                    &env.minter,
                    "other",
                    "thing.read",
                    &read,
                    Approval::ReadOnly,
                    now,
                ),
            ),
        ),
        (
            "for another action",
            env.command(
                "orchestrator",
                "thing.read",
                &read,
                &env.mint("thing.change", &read, Approval::Approved),
            ),
        ),
        (
            "for other arguments",
            env.command(
                "orchestrator",
                "thing.read",
                &json!({"n": 2}),
                &valid_read(&env),
            ),
        ),
        (
            "read-only policy for a change",
            env.command(
                "orchestrator",
                "thing.change",
                &change,
                &env.mint("thing.change", &change, Approval::ReadOnly),
            ),
        ),
        (
            "not base64url",
            env.command("orchestrator", "thing.read", &read, "!!not-a-token!!"),
        ),
        (
            "unknown action",
            env.command(
                "orchestrator",
                "door.unlock",
                &json!({}),
                &env.mint("door.unlock", &json!({}), Approval::Approved),
            ),
        ),
        (
            "invalid arguments under a valid token",
            env.command(
                "orchestrator",
                "thing.read",
                &json!({"n": 500, "extra": true}),
                &env.mint(
                    "thing.read",
                    &json!({"n": 500, "extra": true}),
                    Approval::ReadOnly,
                ),
            ),
        ),
        (
            "wrong sender",
            env.command("gateway", "thing.read", &read, &valid_read(&env)),
        ),
        ("garbage bytes", b"\x00\xff\xfegarbage".to_vec()),
        ("not an envelope", br#"{"hello": "world"}"#.to_vec()),
        (
            "oversized token",
            // Built by hand: `Envelope::encode` refuses to produce it.
            String::from_utf8(env.command("orchestrator", "thing.read", &read, "TOKEN"))
                .unwrap()
                .replace("TOKEN", &"A".repeat(MAX_TOKEN_TEXT + 1))
                .into_bytes(),
        ),
    ];
    let mut out = Vec::new();
    for (name, payload) in cases {
        let reply = env.send(payload).await;
        out.push(format!("{name}: {}", code(&reply)));
    }
    expect_test::expect![[r#"
        expired: rejected token_expired
        not yet valid: rejected token_not_yet_valid
        forged by another key: rejected token_bad_signature
        for another agent: rejected token_wrong_audience
        for another action: rejected token_wrong_action
        for other arguments: rejected token_args_mismatch
        read-only policy for a change: rejected token_approval_missing
        not base64url: rejected token_bad_encoding
        unknown action: rejected unknown_action
        invalid arguments under a valid token: rejected invalid_arguments
        wrong sender: rejected unexpected_sender
        garbage bytes: rejected malformed_message
        not an envelope: rejected malformed_message
        oversized token: rejected invalid_message"#]]
    .assert_eq(&out.join("\n"));
    assert_eq!(env.calls.count(), 0, "the handler never ran");

    // The refusal names the violations, on one line.
    let bad = json!({"n": 500, "extra": true});
    let reply = env
        .send(env.command(
            "orchestrator",
            "thing.read",
            &bad,
            &env.mint("thing.read", &bad, Approval::ReadOnly),
        ))
        .await;
    let AgentReply::Rejected(r) = &reply.body else {
        panic!("{reply:?}")
    };
    assert!(
        r.message.contains("/n: must be between 0 and 100, got 500"),
        "{}",
        r.message
    );
    assert!(
        r.message.contains("unknown property \"extra\""),
        "{}",
        r.message
    );

    // A payload over the server's max_payload never reaches the agent: the client refuses it.
    let mut huge = env.command("orchestrator", "thing.read", &read, &valid_read(&env));
    huge.resize(protocol::MAX_ENVELOPE_BYTES + 1, b' ');
    let sent = env
        .orch
        .publish_with_reply("cmd.probe", env.orch.new_inbox(), huge.into())
        .await;
    assert!(sent.is_err(), "a payload over max_payload was accepted");
    assert_eq!(env.calls.count(), 0);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_replayed_token_is_refused_also_after_a_restart() {
    let env = Env::new().await;
    let running = env.start(env.config(|_| {})).await;
    let args = json!({"n": 3});
    let token = env.mint("thing.change", &args, Approval::Approved);
    let command = env.command("orchestrator", "thing.change", &args, &token);
    assert_eq!(
        code(&env.send(command.clone()).await),
        "done: thing.change 3"
    );
    assert_eq!(
        code(&env.send(command.clone()).await),
        "rejected token_replayed"
    );
    running.stop().await.unwrap();

    // A new runtime on the same data directory remembers the nonce.
    let running = env.start(env.config(|_| {})).await;
    assert_eq!(code(&env.send(command).await), "rejected token_replayed");
    // The same token inside a fresh envelope is still the same nonce.
    let again = env.command("orchestrator", "thing.change", &args, &token);
    assert_eq!(code(&env.send(again).await), "rejected token_replayed");
    assert_eq!(env.calls.count(), 1, "the handler ran once");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn handler_timeouts_failures_and_panics_each_get_one_failed_reply() {
    let env = Env::new().await;
    let running = env.start(env.config(|_| {})).await;
    let mut out = Vec::new();
    for args in [
        json!({"n": 1, "sleep_ms": 3000}),
        json!({"n": 2, "fail": true}),
        json!({"n": 3, "panic": true}),
        json!({"n": 4}),
    ] {
        let token = env.mint("thing.change", &args, Approval::Approved);
        let started = tokio::time::Instant::now();
        let reply = env
            .send(env.command("orchestrator", "thing.change", &args, &token))
            .await;
        let message = match &reply.body {
            AgentReply::Failed(r) => r.message.clone(),
            _ => String::new(),
        };
        out.push(format!("{}: {message}", code(&reply)));
        if args.get("sleep_ms").is_some() {
            // Cut off at the manifest's 500 ms, not after the 3 s the handler wanted.
            assert!(started.elapsed() < Duration::from_millis(2500));
        }
    }
    expect_test::expect![[r#"
        failed handler_timeout: the action did not finish within 500ms
        failed probe_failed: asked to fail with detail
        failed handler_panicked: the action failed unexpectedly
        done: thing.change 4: "#]]
    .assert_eq(&out.join("\n"));
    assert_eq!(env.calls.count(), 4);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn audit_events_reach_the_audit_stream() {
    let env = Env::new().await;
    let running = env.start(env.config(|_| {})).await;
    let args = json!({"n": 5});
    let ok = env.mint("thing.read", &args, Approval::ReadOnly);
    let ok_command = env.command("orchestrator", "thing.read", &args, &ok);
    let plan_id = Envelope::<AgentRequest>::decode(&ok_command).unwrap().body;
    let AgentRequest::Invoke(invocation) = plan_id;
    assert_eq!(code(&env.send(ok_command).await), "done: thing.read 5");
    let fail = json!({"n": 6, "fail": true});
    let token = env.mint("thing.change", &fail, Approval::Approved);
    env.send(env.command("orchestrator", "thing.change", &fail, &token))
        .await;
    env.send(b"garbage".to_vec()).await;
    // A command nobody can answer is still recorded.
    env.orch
        .publish(
            "cmd.probe",
            env.command("orchestrator", "thing.read", &args, &ok).into(),
        )
        .await
        .unwrap();

    let events = env
        .audit_events(|events| {
            events
                .iter()
                .filter(|e| e.kind() == "command_rejected")
                .count()
                == 2
        })
        .await;
    expect_test::expect![[r#"
        [
            "service_started",
            "command_received",
            "command_executed",
            "command_received",
            "command_failed",
            "command_rejected",
            "command_rejected",
        ]
    "#]]
    .assert_debug_eq(&kinds(&events));
    match &events[2] {
        AuditEvent::CommandExecuted {
            action,
            plan_id,
            step,
            jti,
        } => {
            assert_eq!(action.as_str(), "thing.read");
            assert_eq!(*plan_id, invocation.plan_id);
            assert_eq!(*step, 3);
            assert_eq!(jti.len(), 32);
        }
        other => panic!("{other:?}"),
    }
    match &events[4] {
        AuditEvent::CommandFailed { code, .. } => assert_eq!(code.as_str(), "probe_failed"),
        other => panic!("{other:?}"),
    }
    match &events[5] {
        AuditEvent::CommandRejected { code, plan_id, .. } => {
            assert_eq!(code.as_str(), "malformed_message");
            assert_eq!(*plan_id, None);
        }
        other => panic!("{other:?}"),
    }
    match &events[6] {
        AuditEvent::CommandRejected { code, plan_id, .. } => {
            assert_eq!(code.as_str(), "no_reply_subject");
            assert!(plan_id.is_some());
        }
        other => panic!("{other:?}"),
    }
    // The read and the failing change ran; the unanswerable command did not.
    assert_eq!(env.calls.count(), 2);
    running.stop().await.unwrap();
}

async fn next_heartbeat(
    sub: &mut async_nats::Subscriber,
) -> (Envelope<Status>, tokio::time::Instant) {
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a heartbeat in time")
        .unwrap();
    (
        Envelope::<Status>::decode(&m.payload).unwrap(),
        tokio::time::Instant::now(),
    )
}

async fn last_heartbeat(sub: &mut async_nats::Subscriber) -> Option<Heartbeat> {
    let mut last = None;
    while let Ok(Some(m)) = tokio::time::timeout(WINDOW, sub.next()).await {
        let Status::Heartbeat(h) = Envelope::<Status>::decode(&m.payload).unwrap().body;
        last = Some(h);
    }
    last
}

#[tokio::test]
async fn heartbeats_come_at_once_then_periodically_with_the_isolation_report() {
    let env = Env::new().await;
    let mut status = env.orch.subscribe("status.probe").await.unwrap();
    env.orch_errors.sync(&env.orch).await.unwrap();
    // A one-minute period: the heartbeat `start` waits for (at most 10 s) is the one sent when
    // the runtime became ready.
    let running = env.start(env.config(|_| {})).await;
    let (first, _) = next_heartbeat(&mut status).await;
    assert_eq!(first.sender.as_str(), AGENT);
    let Status::Heartbeat(h) = &first.body;
    assert_eq!(h.version, "9.9.9-probe");
    assert_eq!(h.isolation.level, Isolation::Container);
    assert_eq!(h.isolation.measures, ["test measure"]);
    assert_eq!(h.isolation.missing, ["test gap"]);
    assert_eq!((h.in_flight, h.handled), (0, 0));
    if cfg!(target_os = "linux") {
        assert!(h.rss_bytes.is_some_and(|b| b > 0));
    }
    let args = json!({"n": 1});
    let token = env.mint("thing.read", &args, Approval::ReadOnly);
    env.send(env.command("orchestrator", "thing.read", &args, &token))
        .await;
    running.stop().await.unwrap();
    // A final heartbeat after the drain, counting the request.
    let last = last_heartbeat(&mut status)
        .await
        .expect("a final heartbeat");
    assert_eq!((last.in_flight, last.handled), (0, 1));
    assert_eq!(last.started_at, h.started_at);

    // With a 300 ms period, heartbeats keep coming.
    let running = env
        .start(env.config(|c| c["heartbeat_interval_ms"] = json!(300)))
        .await;
    let _ = next_heartbeat(&mut status).await;
    let (_, t1) = next_heartbeat(&mut status).await;
    let (_, t2) = next_heartbeat(&mut status).await;
    let (_, t3) = next_heartbeat(&mut status).await;
    assert!(t3 - t1 >= Duration::from_millis(450), "{:?}", t3 - t1);
    assert!(t2 > t1);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn concurrency_is_bounded_and_excess_requests_wait() {
    let env = Env::new().await;
    let running = env
        .start(env.config(|c| c["max_concurrency"] = json!(2)))
        .await;
    let mut sends = Vec::new();
    for n in 0..6 {
        let args = json!({"n": n, "sleep_ms": 300});
        let token = env.mint("thing.read", &args, Approval::ReadOnly);
        sends.push(env.command("orchestrator", "thing.read", &args, &token));
    }
    let started = tokio::time::Instant::now();
    let replies = futures::future::join_all(sends.into_iter().map(|p| env.send(p))).await;
    let elapsed = started.elapsed();
    for r in &replies {
        assert!(code(r).starts_with("done"), "{}", code(r));
    }
    assert_eq!(
        env.calls.max.load(Ordering::SeqCst),
        2,
        "at most two at once, and two did run"
    );
    // Six 300 ms requests two at a time take at least three rounds.
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_requests_in_flight() {
    let env = Env::new().await;
    let mut status = env.orch.subscribe("status.probe").await.unwrap();
    env.orch_errors.sync(&env.orch).await.unwrap();
    let running = env.start(env.config(|_| {})).await;
    let _ready = last_heartbeat(&mut status).await;
    let args = json!({"n": 1, "sleep_ms": 600});
    let token = env.mint("thing.read", &args, Approval::ReadOnly);
    let command = env.command("orchestrator", "thing.read", &args, &token);
    let inbox = env.orch.new_inbox();
    let mut replies = env.orch.subscribe(inbox.clone()).await.unwrap();
    env.orch_errors.sync(&env.orch).await.unwrap();
    env.orch
        .publish_with_reply("cmd.probe", inbox, command.into())
        .await
        .unwrap();
    // Shut down while the handler is running.
    env.calls.started.acquire().await.unwrap().forget();
    let result = running.stop().await;
    result.unwrap();
    let reply = tokio::time::timeout(Duration::from_millis(10), replies.next())
        .await
        .expect("the reply was sent before run returned")
        .unwrap();
    assert_eq!(
        code(&Envelope::<AgentReply>::decode(&reply.payload).unwrap()),
        "done: thing.read 1"
    );
    // After shutdown no command is taken.
    let late = env.mint("thing.read", &json!({"n": 2}), Approval::ReadOnly);
    let inbox = env.orch.new_inbox();
    let mut replies = env.orch.subscribe(inbox.clone()).await.unwrap();
    env.orch_errors.sync(&env.orch).await.unwrap();
    env.orch
        .publish_with_reply(
            "cmd.probe",
            inbox,
            env.command("orchestrator", "thing.read", &json!({"n": 2}), &late)
                .into(),
        )
        .await
        .unwrap();
    // Nobody subscribes to the commands any more: the server answers "no responders".
    let answer = tokio::time::timeout(WAIT, replies.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, Some(async_nats::StatusCode::NO_RESPONDERS));
    assert_eq!(env.calls.count(), 1);
    // The final heartbeat shows nothing in flight.
    let h = last_heartbeat(&mut status).await.unwrap();
    assert_eq!((h.in_flight, h.handled), (0, 1));
}

#[tokio::test]
async fn shutdown_refuses_commands_received_but_not_started() {
    let env = Env::new().await;
    let running = env
        .start(env.config(|c| c["max_concurrency"] = json!(1)))
        .await;
    let mut inboxes = Vec::new();
    for (n, sleep_ms) in [(1, 600), (2, 0)] {
        let args = json!({"n": n, "sleep_ms": sleep_ms});
        let token = env.mint("thing.read", &args, Approval::ReadOnly);
        let inbox = env.orch.new_inbox();
        let replies = env.orch.subscribe(inbox.clone()).await.unwrap();
        env.orch_errors.sync(&env.orch).await.unwrap();
        env.orch
            .publish_with_reply(
                "cmd.probe",
                inbox,
                env.command("orchestrator", "thing.read", &args, &token)
                    .into(),
            )
            .await
            .unwrap();
        inboxes.push(replies);
    }
    env.orch_errors.sync(&env.orch).await.unwrap();
    // The first runs; the second waits for the one permit.
    env.calls.started.acquire().await.unwrap().forget();
    running.stop().await.unwrap();
    let mut out = Vec::new();
    for mut replies in inboxes {
        let m = tokio::time::timeout(WAIT, replies.next())
            .await
            .unwrap()
            .unwrap();
        out.push(code(&Envelope::<AgentReply>::decode(&m.payload).unwrap()));
    }
    assert_eq!(out, ["done: thing.read 1", "rejected agent_shutting_down"]);
    assert_eq!(env.calls.count(), 1);
}

#[tokio::test]
async fn shutdown_answers_requests_cut_off_after_the_grace_period() {
    let env = Env::new().await;
    let running = env
        .start(env.config(|c| c["shutdown_grace_ms"] = json!(200)))
        .await;
    let args = json!({"n": 1, "sleep_ms": 8000});
    let token = env.mint("thing.read", &args, Approval::ReadOnly);
    let inbox = env.orch.new_inbox();
    let mut replies = env.orch.subscribe(inbox.clone()).await.unwrap();
    env.orch_errors.sync(&env.orch).await.unwrap();
    env.orch
        .publish_with_reply(
            "cmd.probe",
            inbox,
            env.command("orchestrator", "thing.read", &args, &token)
                .into(),
        )
        .await
        .unwrap();
    env.calls.started.acquire().await.unwrap().forget();
    let started = tokio::time::Instant::now();
    running.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for the 8 s handler"
    );
    let reply = tokio::time::timeout(WAIT, replies.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        code(&Envelope::<AgentReply>::decode(&reply.payload).unwrap()),
        "failed agent_shutdown"
    );
    env.orch_errors.sync(&env.orch).await.unwrap();
    assert!(
        tokio::time::timeout(WINDOW, replies.next()).await.is_err(),
        "one reply only"
    );
    let events = env
        .audit_events(|e| e.iter().any(|e| e.kind() == "command_failed"))
        .await;
    assert!(events.iter().any(|e| matches!(
        e,
        AuditEvent::CommandFailed { code, .. } if code.as_str() == "agent_shutdown"
    )));
}

#[tokio::test]
async fn a_configuration_for_another_agent_is_refused() {
    let env = Env::new().await;
    let client = env
        .server
        .connect(&Principal::new(AGENT).unwrap())
        .await
        .unwrap();
    let config = env.config(|c| c["name"] = json!("other"));
    let probe = Probe {
        calls: Arc::clone(&env.calls),
    };
    let e = agent_runtime::run(config, probe, client, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "config_wrong_agent");
    assert_eq!(e.exit_code(), 64);

    // A missing keyset is refused before anything is served.
    let mut config = env.config(|_| {});
    config.identity_dir = env.data.path().join("nowhere").display().to_string();
    let client = env
        .server
        .connect(&Principal::new(AGENT).unwrap())
        .await
        .unwrap();
    let probe = Probe {
        calls: Arc::clone(&env.calls),
    };
    let e = agent_runtime::run(config, probe, client, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "keyset_unavailable");
}
