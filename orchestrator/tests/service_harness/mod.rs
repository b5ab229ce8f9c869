//! Test harness for the orchestrator service: a real nats-server with our generated
//! configuration, the real Hue agent (in-process, on the agent runtime) against the fake
//! bridge, the orchestrator service in-process (or its binary, for the crash tests), a user
//! simulated with the gateway identity (publishing `chat.in.terminal` / `chat.decision.terminal`
//! and pulling the `out-terminal` consumer), and the audit stream read back as the admin.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_runtime::{Agent as _, AgentContext};
use async_nats::jetstream;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use hue::Hue;
use orchestrator::clock::OffsetClock;
use orchestrator::config::Config;
use orchestrator::plan::{
    LlmComposer, Plan, PlanOutcome, PlanRequest, PlanStep, Planner, PlannerKind,
};
use orchestrator::service::{self, AgentControl, Deps, Tuning};
use protocol::acl::Identity;
use protocol::deploy::AgentConfig;
use protocol::message::{
    AlertMessage, AuditEvent, ButtonPress, ChatDecision, ChatIn, ChatOut, ChatRef, CodeReply,
    Effect, InboundText, OutboundMessage, PlanMessage, PlanProposal, PlatformRef, Verdict,
};
use protocol::{
    ActionName, AgentName, ChannelName, ChatUser, CorrelationId, Envelope, MessageId, Principal,
    UnixMillis,
};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::fake_hue::{FakeBridge, fixture_with_room_groups};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any awaited effect may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// The owner who talks to the assistant in these tests.
pub const ME: &str = "terminal:me";
/// Another owner.
pub const OTHER: &str = "terminal:other";
/// Someone who is not an owner.
pub const STRANGER: &str = "terminal:stranger";

/// Something the orchestrator sent to the terminal channel.
#[derive(Debug, Clone)]
pub enum Out {
    /// An approval card (`plan.proposed.terminal`).
    Card(PlanProposal),
    /// A new message.
    Post(OutboundMessage),
    /// An edit of an earlier message.
    Update(OutboundMessage),
}

impl Out {
    /// The text (a card's summary).
    pub fn text(&self) -> String {
        match self {
            Out::Card(p) => p.summary.clone(),
            Out::Post(m) | Out::Update(m) => m.text.clone(),
        }
    }
    /// The message key (a card's approval id).
    pub fn key(&self) -> String {
        match self {
            Out::Card(p) => p.approval_id.to_string(),
            Out::Post(m) | Out::Update(m) => m.key.clone(),
        }
    }
    /// The card, if this is one.
    pub fn card(&self) -> Option<&PlanProposal> {
        match self {
            Out::Card(p) => Some(p),
            _ => None,
        }
    }
}

/// One audit event as stored in the AUDIT stream, with the principal its subject names.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// `audit.<actor>`.
    pub actor: String,
    /// The event.
    pub envelope: Envelope<AuditEvent>,
}

impl AuditRow {
    /// The event's kind.
    pub fn kind(&self) -> &'static str {
        self.envelope.body.kind()
    }
}

/// A planner that answers from a script: exact text → outcome.
#[derive(Debug, Clone, Default)]
pub struct Scripted {
    script: Arc<Mutex<HashMap<String, PlanOutcome>>>,
}

impl Scripted {
    /// Adds an entry.
    pub fn on(self, text: &str, outcome: PlanOutcome) -> Self {
        self.script.lock().unwrap().insert(text.to_owned(), outcome);
        self
    }
}

impl Planner for Scripted {
    fn plan(&self, request: PlanRequest<'_>) -> impl Future<Output = PlanOutcome> + Send {
        let outcome = self
            .script
            .lock()
            .unwrap()
            .get(request.text)
            .cloned()
            .unwrap_or_else(|| PlanOutcome::Answer("No script for that.".to_owned()));
        async move { outcome }
    }
}

/// A Hue step, its effect from the catalog.
pub fn hue_step(action: &str, params: Value, why: &str) -> PlanStep {
    let agent = AgentName::new("hue").unwrap();
    let action = ActionName::new(action).unwrap();
    let effect = orchestrator::catalog::Catalog::all()
        .action(&agent, &action)
        .map(|(spec, _)| spec.effect)
        .unwrap_or(Effect::Change);
    PlanStep {
        agent,
        action,
        params,
        why: why.to_owned(),
        effect,
    }
}

/// A plan of Hue steps.
pub fn plan(summary: &str, steps: Vec<PlanStep>, continue_on_failure: bool) -> Plan {
    Plan {
        summary: summary.to_owned(),
        steps,
        planner: PlannerKind::Routine("test".to_owned()),
        continue_on_failure,
    }
}

/// Agent control that records what it was asked to do.
#[derive(Debug, Default)]
pub struct RecordingControl {
    /// `stop hue`, `start hue`, in order.
    pub calls: Mutex<Vec<String>>,
}

impl AgentControl for RecordingControl {
    fn stop<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), String>> {
        self.calls.lock().unwrap().push(format!("stop {agent}"));
        Box::pin(async { Ok(()) })
    }
    fn start<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), String>> {
        self.calls.lock().unwrap().push(format!("start {agent}"));
        Box::pin(async { Ok(()) })
    }
}

/// How the orchestrator is configured in a test.
#[derive(Clone, Default)]
pub struct Options {
    /// `approval.require = "all"`.
    pub require_all: bool,
    /// `approval.ttl_secs` (default 600).
    pub ttl_secs: Option<u64>,
    /// A `[summary]` section, verbatim.
    pub summary: Option<String>,
    /// Agent control for quarantine.
    pub control: Option<Arc<dyn AgentControl>>,
    /// The summary composer.
    pub composer: Option<LlmComposer>,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), service::ServiceError>>,
}

/// The whole system for one test.
pub struct World {
    pub server: NatsServer,
    pub bridge: FakeBridge,
    pub gateway: async_nats::Client,
    gateway_js: jetstream::Context,
    admin_js: jetstream::Context,
    outs: Arc<Mutex<Vec<Out>>>,
    /// Woken whenever an outbound message arrives (waits need not poll slowly).
    arrived: Arc<tokio::sync::Notify>,
    out_task: JoinHandle<()>,
    agent_stop: Option<oneshot::Sender<()>>,
    agent_task: Option<JoinHandle<()>>,
    pub state: tempfile::TempDir,
    pub clock: OffsetClock,
    orchestrator: Option<Running>,
}

impl World {
    /// Starts the server, the bridge, the Hue agent and the simulated gateway (not the
    /// orchestrator).
    pub async fn start() -> World {
        let mut world = World::start_without_agent().await;
        world.start_hue().await;
        world
    }

    /// Starts the server, the bridge and the simulated gateway, but no agent.
    pub async fn start_without_agent() -> World {
        let server = NatsServer::start(&["hue", "audit-anomaly"]).await.unwrap();
        let bridge = FakeBridge::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            fixture_with_room_groups(),
        )
        .await
        .unwrap();
        let gateway = server.connect(&Principal::gateway()).await.unwrap();
        let gateway_js = jetstream::new(gateway.clone());
        let admin_js = jetstream::new(server.admin().await.unwrap());
        let outs = Arc::new(Mutex::new(Vec::new()));
        let consumer: jetstream::consumer::PullConsumer = gateway_js
            .get_stream("CHAT_OUT")
            .await
            .unwrap()
            .get_consumer("out-terminal")
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let sink = Arc::clone(&outs);
        let arrived = Arc::new(tokio::sync::Notify::new());
        let wake = Arc::clone(&arrived);
        let out_task = tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                let out = if m.subject.as_str().starts_with("plan.proposed.") {
                    let PlanMessage::Proposed(p) =
                        Envelope::<PlanMessage>::decode(&m.payload).unwrap().body;
                    Out::Card(p)
                } else {
                    match Envelope::<ChatOut>::decode(&m.payload).unwrap().body {
                        ChatOut::Post(p) => Out::Post(p),
                        ChatOut::Update(u) => Out::Update(u),
                    }
                };
                sink.lock().unwrap().push(out);
                wake.notify_waiters();
                m.ack().await.unwrap();
            }
        });
        World {
            server,
            bridge,
            gateway,
            gateway_js,
            admin_js,
            outs,
            arrived,
            out_task,
            agent_stop: None,
            agent_task: None,
            state: tempfile::tempdir().unwrap(),
            clock: OffsetClock::new(),
            orchestrator: None,
        }
    }

    /// The Hue agent's configuration, as the sandbox would write it.
    pub fn hue_config(&self) -> AgentConfig {
        let identity = self.server.layout().root().to_path_buf();
        let key_file = identity.join("secrets/hue.key");
        std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
        std::fs::write(&key_file, self.bridge.application_key()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let data = self.state.path().join("hue-data");
        std::fs::create_dir_all(&data).unwrap();
        AgentConfig::from_json(
            &serde_json::to_vec(&json!({
                "name": "hue",
                "nats_url": self.server.url(),
                "identity_dir": identity,
                "data_dir": data,
                "heartbeat_interval_ms": 60000,
                "max_concurrency": 4,
                "shutdown_grace_ms": 5000,
                "egress_proxy": null,
                "isolation": {"level": "none", "measures": [], "missing": ["in-process test"]},
                "confine": null,
                "settings": {
                    "bridge": self.bridge.addr().to_string(),
                    "application_key_file": "secrets/hue.key",
                    "bridge_cert_sha256": self.bridge.cert_sha256(),
                    "request_timeout_ms": 4000
                }
            }))
            .unwrap(),
        )
        .unwrap()
    }

    /// Starts the real Hue agent in-process and waits for its first heartbeat.
    pub async fn start_hue(&mut self) {
        let config = self.hue_config();
        agent_runtime::entry::check_config(&config).unwrap();
        let settings = agent_runtime::entry::parse_settings::<Hue>(&config).unwrap();
        let hue = Hue::new(settings, &AgentContext::from_config(&config)).unwrap();
        self.start_agent(hue).await;
    }

    /// Starts an agent named `hue` (with the Hue manifest) in-process on the agent runtime and
    /// waits for its first heartbeat.
    pub async fn start_agent<A: agent_runtime::Agent>(&mut self, agent: A) {
        let config = self.hue_config();
        let watcher = self
            .server
            .connect(&Identity::Orchestrator.principal())
            .await
            .unwrap();
        let mut status = watcher.subscribe("status.hue").await.unwrap();
        watcher.flush().await.unwrap();
        let client = self
            .server
            .connect(&Principal::new("hue").unwrap())
            .await
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent_runtime::run(config, agent, client, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        tokio::time::timeout(WAIT, status.next())
            .await
            .expect("a heartbeat from the Hue agent")
            .unwrap();
        self.agent_stop = Some(stop);
        self.agent_task = Some(task);
    }

    /// The orchestrator's configuration for these options.
    pub fn config(&self, opts: &Options) -> Config {
        let mut text = format!(
            r#"
nats_url = "{url}"
home = "{home}"
state_db = "{db}"
owners = ["{ME}", "{OTHER}"]
agents = ["hue"]
[approval]
ttl_secs = {ttl}
require = "{require}"
"#,
            url = self.server.url(),
            home = self.server.layout().root().display(),
            db = self.state.path().join("orchestrator.db").display(),
            ttl = opts.ttl_secs.unwrap_or(600),
            require = if opts.require_all { "all" } else { "change" },
        );
        if let Some(s) = &opts.summary {
            text.push_str(s);
        }
        Config::from_toml(&text).unwrap()
    }

    /// Starts the orchestrator service in-process.
    pub async fn start_orchestrator<P: Planner + 'static>(&mut self, planner: P, opts: Options) {
        assert!(self.orchestrator.is_none(), "already running");
        let config = self.config(&opts);
        let client = self
            .server
            .connect(&Identity::Orchestrator.principal())
            .await
            .unwrap();
        let deps = Deps {
            client,
            layout: self.server.layout().clone(),
            planner,
            agent_control: opts.control.clone(),
            composer: opts.composer.clone(),
            clock: Arc::new(self.clock.clone()),
            fault: None,
            tuning: Tuning {
                tick: Duration::from_millis(100),
                ..Tuning::default()
            },
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service::run(config, deps, async {
            let _ = stopped.await;
        }));
        self.orchestrator = Some(Running { stop, task });
    }

    /// Stops the orchestrator service (graceful) and checks it stopped without error.
    pub async fn stop_orchestrator(&mut self) {
        let running = self.orchestrator.take().expect("running");
        let _ = running.stop.send(());
        tokio::time::timeout(WAIT, running.task)
            .await
            .expect("the orchestrator stops")
            .unwrap()
            .unwrap();
    }

    /// The routine planners for the enabled catalog (no model).
    pub fn routines() -> orchestrator::plan::Planners {
        orchestrator::plan::Planners::with_rooms(
            orchestrator::catalog::Catalog::enabled(&[AgentName::new("hue").unwrap()]),
            None,
            &test_support::fake_hue::room_aliases(),
        )
        .unwrap()
    }

    /// The owner's chat.
    pub fn chat(id: &str) -> ChatRef {
        ChatRef {
            channel: ChannelName::new("terminal").unwrap(),
            chat_id: PlatformRef::new(id).unwrap(),
        }
    }

    async fn publish_gateway<B: protocol::Body>(&self, subject: &str, body: B) -> MessageId {
        let envelope = Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::gateway(),
            UnixMillis::now(),
            body,
        );
        self.publish_envelope(subject, &envelope).await;
        envelope.id
    }

    /// Publishes a prepared envelope as the gateway (JetStream, acknowledged), with a fresh
    /// `Nats-Msg-Id`.
    pub async fn publish_envelope<B: protocol::Body>(&self, subject: &str, envelope: &Envelope<B>) {
        let publish = jetstream::message::PublishMessage::build()
            .payload(envelope.encode().unwrap().into())
            .message_id(MessageId::random().to_string());
        self.gateway_js
            .send_publish(subject.to_owned(), publish)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// `user` says `text` in chat `chat_id`.
    pub async fn say_as(&self, user: &str, chat_id: &str, text: &str) -> MessageId {
        let body = ChatIn::Text(InboundText {
            chat: World::chat(chat_id),
            user: ChatUser::new(user).unwrap(),
            platform_message_id: PlatformRef::new(MessageId::random().to_string()).unwrap(),
            text: text.to_owned(),
        });
        self.publish_gateway("chat.in.terminal", body).await
    }

    /// The owner says `text` in their chat.
    pub async fn say(&self, text: &str) -> MessageId {
        self.say_as(ME, "me", text).await
    }

    /// `user` presses a button with `payload` in chat `chat_id`.
    pub async fn press_as(&self, user: &str, chat_id: &str, payload: &str) -> MessageId {
        let body = ChatDecision::Button(ButtonPress {
            chat: World::chat(chat_id),
            user: ChatUser::new(user).unwrap(),
            payload: payload.to_owned(),
            platform_ref: PlatformRef::new(MessageId::random().to_string()).unwrap(),
            message_ref: None,
        });
        self.publish_gateway("chat.decision.terminal", body).await
    }

    /// The owner presses a button in their chat.
    pub async fn press(&self, payload: &str) -> MessageId {
        self.press_as(ME, "me", payload).await
    }

    /// `user` types "approve <code>" / "reject <code>" in chat `chat_id`.
    pub async fn reply_code(
        &self,
        user: &str,
        chat_id: &str,
        verdict: Verdict,
        code: &str,
    ) -> MessageId {
        let body = ChatDecision::Code(CodeReply {
            chat: World::chat(chat_id),
            user: ChatUser::new(user).unwrap(),
            verdict,
            code: code.to_owned(),
            platform_ref: PlatformRef::new(MessageId::random().to_string()).unwrap(),
        });
        self.publish_gateway("chat.decision.terminal", body).await
    }

    /// Publishes an alert as the audit-anomaly agent.
    pub async fn raise_alert(&self, alert: protocol::message::Alert) -> MessageId {
        let anomaly = self
            .server
            .connect(&Principal::new("audit-anomaly").unwrap())
            .await
            .unwrap();
        let envelope = Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::new("audit-anomaly").unwrap(),
            UnixMillis::now(),
            AlertMessage::Raised(alert),
        );
        // As the agent does: into the ALERTS stream, acknowledged.
        let publish = jetstream::message::PublishMessage::build()
            .payload(envelope.encode().unwrap().into())
            .message_id(envelope.id.to_string());
        jetstream::new(anomaly)
            .send_publish("alert.audit-anomaly", publish)
            .await
            .unwrap()
            .await
            .unwrap();
        envelope.id
    }

    /// Everything sent to the terminal channel so far.
    pub fn outs(&self) -> Vec<Out> {
        self.outs.lock().unwrap().clone()
    }

    /// Waits for an outbound message matching `pred`.
    pub async fn wait_out(&self, what: &str, pred: impl Fn(&Out) -> bool) -> Out {
        let deadline = Instant::now() + WAIT;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(o) = self.outs().into_iter().find(|o| pred(o)) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "no outbound message: {what}; got {:#?}",
                self.outs()
            );
            let _ = tokio::time::timeout(Duration::from_millis(20), arrived).await;
        }
    }

    /// Waits for the next approval card after `after` cards.
    pub async fn wait_card(&self, nth: usize) -> PlanProposal {
        let deadline = Instant::now() + WAIT;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let cards: Vec<PlanProposal> = self
                .outs()
                .iter()
                .filter_map(|o| o.card().cloned())
                .collect();
            if let Some(c) = cards.get(nth) {
                return c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no card #{nth}; got {:#?}",
                self.outs()
            );
            let _ = tokio::time::timeout(Duration::from_millis(20), arrived).await;
        }
    }

    /// Every audit event in the AUDIT stream, in stream order.
    pub async fn audit(&self) -> Vec<AuditRow> {
        let mut stream = self.admin_js.get_stream("AUDIT").await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut rows = Vec::new();
        for seq in 1..=last {
            let m = stream.get_raw_message(seq).await.unwrap();
            let actor = m.subject.as_str().trim_start_matches("audit.").to_owned();
            let envelope = Envelope::<AuditEvent>::decode(&m.payload).unwrap();
            rows.push(AuditRow { actor, envelope });
        }
        rows
    }

    /// Waits until the audit stream holds an event matching `pred`, and returns it.
    pub async fn wait_audit(&self, what: &str, pred: impl Fn(&AuditRow) -> bool) -> AuditRow {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self.audit().await.into_iter().find(|r| pred(r)) {
                return r;
            }
            if Instant::now() >= deadline {
                let kinds: Vec<String> = self
                    .audit()
                    .await
                    .iter()
                    .map(|r| format!("{}:{}", r.actor, r.kind()))
                    .collect();
                panic!("no audit event: {what}; got {kinds:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many audit events match.
    pub async fn count_audit(&self, pred: impl Fn(&AuditRow) -> bool) -> usize {
        self.audit().await.iter().filter(|r| pred(r)).count()
    }

    /// PUT requests the bridge received (each is a change the agent made).
    pub fn puts(&self) -> usize {
        self.bridge
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count()
    }

    /// Stops everything this world started.
    pub async fn shutdown(mut self) {
        if self.orchestrator.is_some() {
            self.stop_orchestrator().await;
        }
        if let Some(stop) = self.agent_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.agent_task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
        self.out_task.abort();
    }
}

/// A button's payload on a card, by label.
pub fn button(card: &PlanProposal, label: &str) -> String {
    card.buttons
        .iter()
        .find(|b| b.label == label)
        .unwrap_or_else(|| panic!("no {label} button on {card:#?}"))
        .payload
        .clone()
}

/// A button's payload on a message, by label.
pub fn message_button(out: &Out, label: &str) -> String {
    let buttons = match out {
        Out::Card(c) => c.buttons.clone(),
        Out::Post(m) | Out::Update(m) => m.buttons.clone(),
    };
    buttons
        .iter()
        .find(|b| b.label == label)
        .unwrap_or_else(|| panic!("no {label} button on {out:#?}"))
        .payload
        .clone()
}

/// Whether a row is a `decision_refused` with this code.
pub fn refused_with(code: &str) -> impl Fn(&AuditRow) -> bool + '_ {
    move |r| matches!(&r.envelope.body, AuditEvent::DecisionRefused { code: c, .. } if c.as_str() == code)
}

/// The kinds of the audit rows for one correlation id, as `actor:kind`.
pub fn kinds_for(rows: &[AuditRow], correlation: CorrelationId) -> Vec<String> {
    rows.iter()
        .filter(|r| r.envelope.correlation_id == correlation)
        .map(|r| format!("{}:{}", r.actor, r.kind()))
        .collect()
}
