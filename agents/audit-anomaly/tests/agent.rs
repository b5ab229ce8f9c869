//! The audit-anomaly agent in-process against a real nats-server running our generated
//! configuration: audit events published as the principals that may publish them reach the
//! agent through its durable consumer; each alert arrives on `alert.audit-anomaly` and is
//! audited as `alert_raised` with the same id; `alerts.recent` answers under a real capability
//! token; a restart resumes from the durable consumer and the saved state without losing or
//! doubling an alert; the agent's identity can do nothing else; and, with the orchestrator's
//! log watcher following the real server's log, permission violations become alerts (SV-38's
//! burst of 20 from one agent: a critical alert naming it).
//!
//! "Nothing more arrived" is asserted with a barrier: the orchestrator reports an
//! `image_digest_changed` for a made-up agent, which always alerts; the agent handles the
//! stream in order, so once that alert arrives every earlier event was handled.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::Duration;

use agent_runtime::{Agent as _, AgentContext, RuntimeError};
use async_nats::jetstream;
use audit::emit::AuditEmitter;
use audit_anomaly::AuditAnomaly;
use audit_anomaly::store::{RecordedAlert, Snapshot, Store};
use futures::StreamExt as _;
use orchestrator::mint::{MintRequest, Minter, fresh_nonce};
use protocol::acl::Identity;
use protocol::deploy::AgentConfig;
use protocol::message::{
    AgentReply, AgentRequest, Alert, AlertMessage, AuditEvent, ErrorCode, Invocation, Severity,
};
use protocol::token::ApprovalBinding;
use protocol::{
    ActionName, AgentName, ChatUser, CorrelationId, Envelope, MessageId, PlanId, Principal,
    UnixMillis,
};
use serde_json::{Value, json};
use test_support::{NatsServer, ServerErrors};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(15);

fn p(name: &str) -> Principal {
    Principal::new(name).unwrap()
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RuntimeError>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the agent stops")
            .unwrap()
            .unwrap();
    }
}

struct Harness {
    server: NatsServer,
    data: tempfile::TempDir,
    orch: async_nats::Client,
    orch_errors: ServerErrors,
    alerts: test_support::AlertFeed,
    barriers: u32,
}

impl Harness {
    async fn new() -> Harness {
        let server = NatsServer::start(&["audit-anomaly", "hue"]).await.unwrap();
        let (orch, orch_errors) = server
            .connect_watching(&Identity::Orchestrator.principal())
            .await
            .unwrap();
        let alerts = test_support::alert_feed(&orch).await.unwrap();
        orch_errors.sync(&orch).await.unwrap();
        Harness {
            server,
            data: tempfile::tempdir().unwrap(),
            orch,
            orch_errors,
            alerts,
            barriers: 0,
        }
    }

    fn config(&self, settings: Value) -> AgentConfig {
        let c = json!({
            "name": "audit-anomaly",
            "nats_url": self.server.url(),
            "identity_dir": self.server.layout().root(),
            "data_dir": self.data.path(),
            "heartbeat_interval_ms": 60000,
            "max_concurrency": 2,
            "shutdown_grace_ms": 3000,
            "egress_proxy": null,
            "isolation": {"level": "container", "measures": [], "missing": []},
            "confine": null,
            "settings": settings
        });
        AgentConfig::from_json(&serde_json::to_vec(&c).unwrap()).unwrap()
    }

    /// Starts the agent in-process and waits for its first heartbeat.
    async fn start(&self, settings: Value) -> Running {
        let config = self.config(settings);
        let agent = AuditAnomaly::new(
            serde_json::from_value(config.settings.clone()).unwrap(),
            &AgentContext::from_config(&config),
        )
        .unwrap();
        let mut status = self.orch.subscribe("status.audit-anomaly").await.unwrap();
        self.orch_errors.sync(&self.orch).await.unwrap();
        let client = self.server.connect(&p("audit-anomaly")).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent_runtime::run(config, agent, client, async {
            let _ = stopped.await;
        }));
        tokio::time::timeout(WAIT, status.next())
            .await
            .expect("a heartbeat when ready")
            .unwrap();
        Running { stop, task }
    }

    /// Publishes an audit event as `principal` (on `audit.<principal>`); returns its id.
    async fn emit(&self, principal: &str, event: AuditEvent) -> MessageId {
        let client = self.server.connect(&p(principal)).await.unwrap();
        AuditEmitter::new(jetstream::new(client), p(principal))
            .emit(CorrelationId::random(), event)
            .await
            .unwrap()
    }

    /// The next alert message.
    async fn next_alert(&mut self) -> Envelope<AlertMessage> {
        let m = tokio::time::timeout(WAIT, self.alerts.next())
            .await
            .expect("an alert in time")
            .unwrap()
            .unwrap();
        m.ack().await.unwrap();
        Envelope::<AlertMessage>::decode(&m.payload).unwrap()
    }

    /// Every alert that arrives before a fresh barrier's, as `rule subject`.
    async fn alerts_until_barrier(&mut self) -> Vec<(String, Envelope<AlertMessage>)> {
        self.barriers += 1;
        let barrier = format!("barrier{}", self.barriers);
        self.emit(
            "orchestrator",
            AuditEvent::ImageDigestChanged {
                agent: AgentName::new(barrier.clone()).unwrap(),
                previous: "sha256:1".to_owned(),
                current: "sha256:2".to_owned(),
            },
        )
        .await;
        let mut out = Vec::new();
        loop {
            let e = self.next_alert().await;
            let AlertMessage::Raised(a) = &e.body;
            let subject = a.subject.as_ref().map_or("-", Principal::as_str).to_owned();
            if subject == barrier {
                return out;
            }
            out.push((format!("{} {subject}", a.rule.as_str()), e));
        }
    }

    /// The `alert_raised` events in the AUDIT stream, with their envelope ids, in order.
    async fn audited_alerts(&self) -> Vec<(MessageId, Alert)> {
        let js = jetstream::new(self.server.admin().await.unwrap());
        let stream = js.get_stream("AUDIT").await.unwrap();
        let mut out = Vec::new();
        let mut seq = 1;
        while let Ok(m) = stream.get_raw_message(seq).await {
            seq += 1;
            if m.subject.as_str() != "audit.audit-anomaly" {
                continue;
            }
            let e = Envelope::<AuditEvent>::decode(&m.payload).unwrap();
            assert_eq!(e.sender.as_str(), "audit-anomaly");
            if let AuditEvent::AlertRaised { alert } = e.body {
                out.push((e.id, alert));
            }
        }
        out
    }

    /// The agent's consumer: (messages not yet delivered, delivered but not acknowledged).
    async fn consumer_backlog(&self) -> (u64, usize) {
        let js = jetstream::new(self.server.admin().await.unwrap());
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream("audit-anomaly", "AUDIT")
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }

    /// Waits until the agent has acknowledged everything in the stream (it acknowledges once
    /// per batch, after saving).
    async fn drained(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let backlog = self.consumer_backlog().await;
            if backlog == (0, 0) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "backlog {backlog:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Calls `alerts.recent` as the orchestrator under a real read token.
    async fn recent(&self, limit: u64) -> AgentReply {
        let seed = provision::load_seed(&self.server.layout().token_signing_seed()).unwrap();
        let minter = Minter::new(
            provision::FIRST_KID,
            &seed.signing_key().to_bytes(),
            Principal::orchestrator(),
        );
        let action = ActionName::new("alerts.recent").unwrap();
        let args = json!({ "limit": limit });
        let token = minter
            .mint(
                &MintRequest {
                    audience: &AgentName::new("audit-anomaly").unwrap(),
                    subject: &ChatUser::new("terminal:me").unwrap(),
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
                "cmd.audit-anomaly",
                async_nats::Request::new()
                    .payload(request.encode().unwrap().into())
                    .timeout(Some(WAIT)),
            )
            .await
            .unwrap();
        Envelope::<AgentReply>::decode(&reply.payload).unwrap().body
    }
}

fn rejected(code: &str) -> AuditEvent {
    AuditEvent::CommandRejected {
        code: ErrorCode::new(code).unwrap(),
        plan_id: None,
        step: None,
    }
}

fn names(alerts: &[(String, Envelope<AlertMessage>)]) -> Vec<&str> {
    alerts.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn alerts_are_published_audited_and_listed() {
    let mut h = Harness::new().await;
    let running = h.start(json!({})).await;

    let forged = h.emit("hue", rejected("token_bad_signature")).await;
    let alert = h.next_alert().await;
    let AlertMessage::Raised(a) = &alert.body;
    assert_eq!(alert.sender.as_str(), "audit-anomaly");
    assert_eq!(a.rule.as_str(), "token_forged");
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.subject, Some(p("hue")));
    assert_eq!(a.evidence, vec![forged]);

    // A lying report and an undecodable event, both about their publisher.
    h.emit(
        "hue",
        AuditEvent::NatsViolation {
            principal: Some(p("orchestrator")),
            kind: "publish".to_owned(),
            subject: "cmd.hue".to_owned(),
        },
    )
    .await;
    let hue = h.server.connect(&p("hue")).await.unwrap();
    jetstream::new(hue)
        .publish("audit.hue", "{\"not\": \"an envelope\"}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Cooled down: one alert for the two invalid events.
    let seen = h.alerts_until_barrier().await;
    assert_eq!(names(&seen), vec!["audit_event_invalid hue"]);

    // Every alert message has an `alert_raised` row with the same id and content.
    let audited = h.audited_alerts().await;
    assert_eq!(audited.len(), 3, "{audited:?}");
    assert_eq!(audited[0].0, alert.id);
    assert_eq!(AlertMessage::Raised(audited[0].1.clone()), alert.body);
    assert_eq!(audited[1].0, seen[0].1.id);

    // alerts.recent lists them newest first.
    let reply = h.recent(2).await;
    let AgentReply::Done(outcome) = reply else {
        panic!("{reply:?}")
    };
    let listed: Vec<&str> = outcome.data["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["image_digest_changed", "audit_event_invalid"]);
    assert!(
        outcome
            .summary
            .starts_with("2 recent alert(s); the latest (image_digest_changed, critical)"),
        "{}",
        outcome.summary
    );
    assert_eq!(outcome.data["alerts"][1]["id"], json!(seen[0].1.id));
    h.drained().await;
    running.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_durable_consumer_without_losing_or_doubling_alerts() {
    let mut h = Harness::new().await;
    let settings = json!({"token_rejections": {"window_secs": 3600, "threshold": 3}});
    let running = h.start(settings.clone()).await;
    h.emit("hue", rejected("token_expired")).await;
    h.emit("hue", rejected("token_expired")).await;
    assert!(h.alerts_until_barrier().await.is_empty());
    h.drained().await;
    running.stop().await;

    // While it is down: the third rejection (its window continues across the restart) and a
    // forged token.
    h.emit("hue", rejected("token_expired")).await;
    h.emit("hue", rejected("token_replayed")).await;
    let running = h.start(settings.clone()).await;
    let seen = h.alerts_until_barrier().await;
    assert_eq!(
        names(&seen),
        vec!["token_rejections hue", "token_forged hue"]
    );
    running.stop().await;

    // Another restart re-raises nothing: everything was saved and acknowledged.
    let running = h.start(settings).await;
    assert!(h.alerts_until_barrier().await.is_empty());
    h.drained().await;
    running.stop().await;
    let audited: Vec<String> = h
        .audited_alerts()
        .await
        .iter()
        .map(|(_, a)| format!("{} {:?}", a.rule.as_str(), a.subject))
        .collect();
    assert_eq!(
        audited,
        vec![
            "image_digest_changed Some(Principal(\"barrier1\"))",
            "token_rejections Some(Principal(\"hue\"))",
            "token_forged Some(Principal(\"hue\"))",
            "image_digest_changed Some(Principal(\"barrier2\"))",
            "image_digest_changed Some(Principal(\"barrier3\"))",
        ]
    );
}

#[tokio::test]
async fn alerts_pending_at_a_crash_are_re_sent_once_with_their_ids() {
    let mut h = Harness::new().await;
    // Before the "crash" the agent had saved an alert as pending and got as far as auditing
    // it (done here with its identity), but not as publishing it.
    let pending = RecordedAlert {
        id: MessageId::random(),
        correlation_id: CorrelationId::random(),
        raised_at: UnixMillis::now(),
        alert: Alert {
            rule: ErrorCode::from_static("token_forged"),
            severity: Severity::Critical,
            subject: Some(p("hue")),
            summary: "hue refused a forged token.".to_owned(),
            evidence: vec![MessageId::random()],
        },
    };
    let anomaly = h.server.connect(&p("audit-anomaly")).await.unwrap();
    AuditEmitter::new(jetstream::new(anomaly), p("audit-anomaly"))
        .emit_envelope(&Envelope::new(
            pending.id,
            pending.correlation_id,
            p("audit-anomaly"),
            UnixMillis::now(),
            AuditEvent::AlertRaised {
                alert: pending.alert.clone(),
            },
        ))
        .await
        .unwrap();
    Store::open(h.data.path())
        .unwrap()
        .save(&Snapshot {
            pending: vec![pending.clone()],
            ..Snapshot::default()
        })
        .unwrap();

    let running = h.start(json!({})).await;
    let alert = h.next_alert().await;
    assert_eq!(alert.id, pending.id);
    assert_eq!(alert.correlation_id, pending.correlation_id);
    assert_eq!(alert.body, AlertMessage::Raised(pending.alert.clone()));
    assert!(h.alerts_until_barrier().await.is_empty());
    running.stop().await;
    // One `alert_raised` row for it (the re-sent audit event was a duplicate of the same id).
    let audited = h.audited_alerts().await;
    assert_eq!(
        audited.iter().filter(|(id, _)| *id == pending.id).count(),
        1
    );
    let saved = Store::open(h.data.path()).unwrap().load().unwrap().unwrap();
    assert!(saved.pending.is_empty());
    assert_eq!(saved.recent.front().map(|r| r.id), Some(pending.id));
}

#[tokio::test]
async fn events_saved_before_a_crash_are_not_looked_at_twice() {
    let mut h = Harness::new().await;
    // Two forged-token events reach the stream; the agent (before the "crash") had handled
    // and saved them but not acknowledged them: its saved position is past them.
    h.emit("hue", rejected("token_bad_signature")).await;
    h.emit("hue", rejected("token_replayed")).await;
    let js = jetstream::new(h.server.admin().await.unwrap());
    let last = js
        .get_stream("AUDIT")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    // The agent (its identity, before the "crash") had them delivered once, unacknowledged.
    let before_crash = jetstream::new(h.server.connect(&p("audit-anomaly")).await.unwrap());
    let consumer: jetstream::consumer::PullConsumer = before_crash
        .get_consumer_from_stream("audit-anomaly", "AUDIT")
        .await
        .unwrap();
    let mut delivered = consumer.fetch().max_messages(10).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = delivered.next().await {
        // Handed back for redelivery at once (instead of after the 30 s ack wait).
        m.unwrap()
            .ack_with(jetstream::AckKind::Nak(None))
            .await
            .unwrap();
        n += 1;
    }
    assert_eq!(n, 2);
    Store::open(h.data.path())
        .unwrap()
        .save(&Snapshot {
            last_sequence: last,
            ..Snapshot::default()
        })
        .unwrap();

    let running = h.start(json!({})).await;
    // They are redelivered, skipped and acknowledged (an alert would have been sent before
    // the acknowledgement): no alert for them.
    h.drained().await;
    assert!(h.alerts_until_barrier().await.is_empty());
    running.stop().await;
}

#[tokio::test]
async fn the_agent_identity_may_do_nothing_else() {
    let mut h = Harness::new().await;
    let (client, errors) = h
        .server
        .connect_watching(&p("audit-anomaly"))
        .await
        .unwrap();
    let hue_commands = h.server.connect(&p("hue")).await.unwrap();
    let mut hue_sub = hue_commands.subscribe("cmd.hue").await.unwrap();
    hue_commands.flush().await.unwrap();
    let refused_publishes = [
        "cmd.hue",
        "alert.hue",
        "status.hue",
        "audit.orchestrator",
        "audit.hue",
        "chat.out.terminal",
        "$JS.API.CONSUMER.CREATE.AUDIT",
        "$JS.API.CONSUMER.CREATE.AUDIT.mine.audit.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.AUDIT.mine",
        "$JS.API.CONSUMER.DELETE.AUDIT.audit-anomaly",
        "$JS.API.CONSUMER.MSG.NEXT.AUDIT.audit-writer",
        "$JS.API.STREAM.PURGE.AUDIT",
        "$JS.API.STREAM.MSG.DELETE.AUDIT",
        "$JS.API.STREAM.CREATE.MINE",
    ];
    for subject in refused_publishes {
        client.publish(subject, "{}".into()).await.unwrap();
    }
    for subject in [
        "audit.>",
        "alert.>",
        "cmd.hue",
        "_INBOX_orchestrator.>",
        "status.>",
    ] {
        let _sub = client.subscribe(subject).await.unwrap();
    }
    errors.sync(&client).await.unwrap();
    for subject in refused_publishes {
        assert_eq!(
            errors.count(&format!(
                "Permissions Violation for Publish to \"{subject}\""
            )),
            1,
            "{subject}: {:?}",
            errors.all()
        );
    }
    for subject in [
        "audit.>",
        "alert.>",
        "cmd.hue",
        "_INBOX_orchestrator.>",
        "status.>",
    ] {
        assert_eq!(
            errors.count(&format!(
                "Permissions Violation for Subscription to \"{subject}\""
            )),
            1,
            "{subject}: {:?}",
            errors.all()
        );
    }
    // Through the JetStream API too: creating a consumer fails.
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("AUDIT").await;
    assert!(stream.is_ok(), "stream info is allowed: {stream:?}");
    let created = js
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some("mine".to_owned()),
                ..Default::default()
            },
            "AUDIT",
        )
        .await;
    assert!(created.is_err());
    // Nothing reached hue.
    errors.sync(&client).await.unwrap();
    hue_commands.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), hue_sub.next())
            .await
            .is_err()
    );
    // Positive control: its own alert subject works.
    client
        .publish("alert.audit-anomaly", "x".into())
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, h.alerts.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    got.ack().await.unwrap();
    assert_eq!(&got.payload[..], b"x");
}

/// The test harness's round trips (`ServerErrors::sync`) are real permission violations by the
/// orchestrator's test connection, and the watcher, reading the log from its start, reports
/// them like any other.
const HARNESS_BARRIER_ALERT: &str = "nats_violation orchestrator";

/// The next alert that is not about the harness's own round trips.
async fn next_alert_not_about_the_harness(h: &mut Harness) -> Envelope<AlertMessage> {
    loop {
        let alert = h.next_alert().await;
        let AlertMessage::Raised(a) = &alert.body;
        if a.rule.as_str() == "nats_violation" && a.subject == Some(Principal::orchestrator()) {
            assert!(a.summary.contains("sync.barrier"), "{}", a.summary);
            continue;
        }
        return alert;
    }
}

/// Runs the orchestrator's watchers on the server's log file until the returned sender fires.
async fn watch_server_log(h: &Harness) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    use orchestrator::watch::{self, LogSource, NkeyDirectory, Watch, WatchSettings};
    let orchestrator = h.server.connect(&Principal::orchestrator()).await.unwrap();
    let audit = AuditEmitter::new(jetstream::new(orchestrator), Principal::orchestrator());
    let nkeys = NkeyDirectory::load(h.server.layout()).unwrap();
    let log = LogSource::File {
        path: h.server.dir().join("nats-server.log"),
        from_start: true,
        poll: Duration::from_millis(50),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        watch::run(
            Watch {
                audit,
                nkeys,
                log: Some(log),
                sandbox: None::<(&sandbox::process::ProcessSandbox, Vec<AgentName>)>,
                settings: WatchSettings::default(),
            },
            async {
                let _ = stopped.await;
            },
        )
        .await;
    });
    (stop, task)
}

/// The ids of the orchestrator's `nats_violation` events about `principal`, once there are
/// `n`.
async fn violations_about(h: &Harness, principal: &str, n: usize) -> Vec<MessageId> {
    let js = jetstream::new(h.server.admin().await.unwrap());
    let stream = js.get_stream("AUDIT").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut ids = Vec::new();
        let mut seq = 1;
        while let Ok(m) = stream.get_raw_message(seq).await {
            seq += 1;
            if m.subject.as_str() != "audit.orchestrator" {
                continue;
            }
            let e = Envelope::<AuditEvent>::decode(&m.payload).unwrap();
            if let AuditEvent::NatsViolation {
                principal: Some(who),
                ..
            } = &e.body
                && who.as_str() == principal
            {
                ids.push(e.id);
            }
        }
        if ids.len() >= n {
            return ids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_violation_in_the_server_log_becomes_an_alert() {
    let mut h = Harness::new().await;
    let running = h.start(json!({})).await;
    let (stop_watching, watching) = watch_server_log(&h).await;
    let hue = h.server.connect(&p("hue")).await.unwrap();
    hue.publish("cmd.weather", "x".into()).await.unwrap();
    hue.flush().await.unwrap();
    let reported = violations_about(&h, "hue", 1).await;
    let alert = next_alert_not_about_the_harness(&mut h).await;
    let AlertMessage::Raised(a) = &alert.body;
    assert_eq!(a.rule.as_str(), "nats_violation");
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(a.subject, Some(p("hue")));
    assert_eq!(a.evidence, reported);
    assert_eq!(a.summary, "NATS refused hue (publish: cmd.weather).");
    assert!(h.alerts_until_barrier().await.is_empty());
    stop_watching.send(()).unwrap();
    tokio::time::timeout(WAIT, watching).await.unwrap().unwrap();
    running.stop().await;
}

#[tokio::test]
async fn sv38_a_burst_of_twenty_permission_violations_raises_a_critical_alert_naming_the_agent() {
    let mut h = Harness::new().await;
    let running = h.start(json!({})).await;
    let (stop_watching, watching) = watch_server_log(&h).await;
    let hue = h.server.connect(&p("hue")).await.unwrap();
    for i in 0..20 {
        hue.publish(format!("cmd.target{i}"), "x".into())
            .await
            .unwrap();
    }
    hue.flush().await.unwrap();
    let reported = violations_about(&h, "hue", 20).await;
    assert_eq!(reported.len(), 20);
    let mut seen = h.alerts_until_barrier().await;
    seen.retain(|(name, _)| name != HARNESS_BARRIER_ALERT);
    assert_eq!(
        names(&seen),
        vec!["nats_violation hue", "nats_violation_burst hue"]
    );
    let AlertMessage::Raised(burst) = &seen[1].1.body;
    assert_eq!(burst.severity, Severity::Critical);
    assert_eq!(burst.subject, Some(p("hue")));
    assert_eq!(burst.evidence, reported[..10].to_vec());
    assert!(
        burst
            .summary
            .starts_with("hue drew 10 NATS errors within 1 min"),
        "{}",
        burst.summary
    );
    // Audited too, with the id the orchestrator will name when the user decides.
    let audited = h.audited_alerts().await;
    assert!(
        audited
            .iter()
            .any(|(id, a)| *id == seen[1].1.id && a == burst)
    );
    stop_watching.send(()).unwrap();
    tokio::time::timeout(WAIT, watching).await.unwrap().unwrap();
    running.stop().await;
}
