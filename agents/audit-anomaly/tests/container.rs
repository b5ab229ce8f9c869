//! The real `agent-audit-anomaly` binary in its own hardened container (Docker backend) on a
//! real engine, with NATS in its container: it starts confined like every agent, reports
//! container isolation, binds its consumer, and raises an alert from an audit event; restarted,
//! it keeps its state on its data volume and raises nothing twice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::Duration;

use async_nats::jetstream;
use audit::emit::AuditEmitter;
use futures::StreamExt as _;
use protocol::message::{AlertMessage, AuditEvent, ErrorCode, Isolation, Status};
use protocol::{AgentName, CorrelationId, Envelope, Principal};
use sandbox::Sandbox as _;
use test_support::docker::{TestSandbox, deployment, home, nats_settings, workspace_binary};

const WAIT: Duration = Duration::from_secs(60);

fn p(name: &str) -> Principal {
    Principal::new(name).unwrap()
}

async fn next<T: protocol::envelope::Body>(sub: &mut async_nats::Subscriber) -> Envelope<T> {
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .unwrap();
    Envelope::<T>::decode(&m.payload).unwrap()
}

/// The next alert from the ALERTS stream (acknowledged, as the orchestrator does).
async fn next_alert(alerts: &mut test_support::AlertFeed) -> Envelope<AlertMessage> {
    let m = tokio::time::timeout(WAIT, alerts.next())
        .await
        .expect("an alert in time")
        .unwrap()
        .unwrap();
    m.ack().await.unwrap();
    Envelope::<AlertMessage>::decode(&m.payload).unwrap()
}

#[tokio::test]
async fn the_agent_runs_in_its_container_and_raises_alerts() {
    let t = TestSandbox::new().await;
    let home = home(t.dir.path(), &["audit-anomaly", "hue"]);
    let endpoint = t.ensure_nats(&nats_settings(&home)).await.unwrap();
    let connect = |principal: Principal| {
        let url = endpoint.url.clone();
        let home = home.clone();
        async move {
            provision::client::connect(&url, &home, &principal)
                .await
                .unwrap()
        }
    };
    let orchestrator = connect(Principal::orchestrator()).await;
    let mut status = orchestrator
        .subscribe("status.audit-anomaly")
        .await
        .unwrap();
    let mut alerts = test_support::alert_feed(&orchestrator).await.unwrap();
    orchestrator.flush().await.unwrap();

    let binary = workspace_binary("audit-anomaly", "agent-audit-anomaly");
    let d = deployment(&home, "audit-anomaly", &binary);
    let started = t.start(&d).await.unwrap();
    assert_eq!(started.isolation.level, Isolation::Container);
    let Status::Heartbeat(h) = next::<Status>(&mut status).await.body;
    assert_eq!(h.isolation.level, Isolation::Container, "{:?}", h.isolation);

    let hue = AuditEmitter::new(jetstream::new(connect(p("hue")).await), p("hue"));
    let forged = hue
        .emit(
            CorrelationId::random(),
            AuditEvent::CommandRejected {
                code: ErrorCode::from_static("token_bad_signature"),
                plan_id: None,
                step: None,
            },
        )
        .await
        .unwrap();
    let alert = next_alert(&mut alerts).await;
    let AlertMessage::Raised(a) = &alert.body;
    assert_eq!(a.rule.as_str(), "token_forged");
    assert_eq!(a.subject, Some(p("hue")));
    assert_eq!(a.evidence, vec![forged]);

    // Restarted in place: its state lives on its data volume, so the event is not looked at
    // again; the next alert is the next event's.
    let name = AgentName::new("audit-anomaly").unwrap();
    t.restart(&name).await.unwrap();
    next::<Status>(&mut status).await;
    let digest = AuditEmitter::new(
        jetstream::new(orchestrator.clone()),
        Principal::orchestrator(),
    )
    .emit(
        CorrelationId::random(),
        AuditEvent::ImageDigestChanged {
            agent: AgentName::new("hue").unwrap(),
            previous: "sha256:1".to_owned(),
            current: "sha256:2".to_owned(),
        },
    )
    .await
    .unwrap();
    let alert = next_alert(&mut alerts).await;
    let AlertMessage::Raised(a) = &alert.body;
    assert_eq!(a.rule.as_str(), "image_digest_changed", "{a:?}");
    assert_eq!(a.evidence, vec![digest]);
    t.stop(&name).await.unwrap();
}
