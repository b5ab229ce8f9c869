//! The service's chat handling against a real nats-server: the allowlist, answers and
//! refusals, idempotent handling of a redelivered message, alerts (dismiss), and the binary's
//! configuration exit code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod service_harness;

use orchestrator::plan::{PlanOutcome, PlanRefusal};
use protocol::message::{AuditEvent, ChatIn, ErrorCode, InboundText, PlatformRef, Severity};
use protocol::{ChatUser, CorrelationId, Envelope, MessageId, Principal, UnixMillis};
use serde_json::json;
use service_harness::{
    AuditRow, ME, Options, Out, STRANGER, Scripted, World, hue_step, message_button, plan,
    refused_with,
};

fn is(kind: &'static str) -> impl Fn(&AuditRow) -> bool {
    move |r| r.kind() == kind
}

#[tokio::test]
async fn a_stranger_is_dropped_with_an_audit_row_and_no_reply() {
    let mut w = World::start().await;
    w.start_orchestrator(World::routines(), Options::default())
        .await;
    w.say_as(STRANGER, "stranger", "start bedtime").await;
    let row = w.wait_audit("sender_rejected", is("sender_rejected")).await;
    let AuditEvent::SenderRejected {
        channel,
        platform_user,
        code,
    } = &row.envelope.body
    else {
        unreachable!()
    };
    assert_eq!(
        (channel.as_str(), platform_user.as_str(), code.as_str()),
        ("terminal", "stranger", "sender_not_allowed")
    );
    // The rejection is the last thing done with the message: nothing was sent, planned or
    // even recorded as received.
    assert!(w.outs().is_empty(), "{:#?}", w.outs());
    assert_eq!(w.count_audit(is("message_received")).await, 0);
    assert_eq!(w.count_audit(is("plan_proposed")).await, 0);
    w.shutdown().await;
}

#[tokio::test]
async fn answers_and_refusals_reach_the_chat_with_a_code_and_the_correlation_id() {
    let mut w = World::start().await;
    let planner = Scripted::default()
        .on(
            "hello",
            PlanOutcome::Answer("Hello!\nI can run \u{202E}routines.\u{7}".to_owned()),
        )
        .on(
            "do something odd",
            PlanOutcome::Refused(PlanRefusal {
                code: ErrorCode::from_static("plan_invalid"),
                user_message: "I could not make a valid plan for that.".to_owned(),
                detail: "step 1: unknown action hue.door.unlock".to_owned(),
            }),
        );
    w.start_orchestrator(planner, Options::default()).await;
    w.say("hello").await;
    let answer = w
        .wait_out(
            "the answer",
            |o| matches!(o, Out::Post(m) if m.key.starts_with("ans-")),
        )
        .await;
    assert_eq!(answer.text(), "Hello!\nI can run routines.");
    w.wait_audit("answer_sent", is("answer_sent")).await;

    w.say("do something odd").await;
    let refusal = w
        .wait_out(
            "the refusal",
            |o| matches!(o, Out::Post(m) if m.key.starts_with("ref-")),
        )
        .await;
    let row = w.wait_audit("plan_refused", is("plan_refused")).await;
    let AuditEvent::PlanRefused { code, detail, .. } = &row.envelope.body else {
        unreachable!()
    };
    assert_eq!(code.as_str(), "plan_invalid");
    assert_eq!(detail, "step 1: unknown action hue.door.unlock");
    assert_eq!(
        refusal.text(),
        format!(
            "I could not make a valid plan for that. (code plan_invalid, ref {})",
            row.envelope.correlation_id
        )
    );
    assert!(
        !refusal.text().contains("door.unlock"),
        "no internals for the user"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn without_a_model_unknown_text_gets_the_help_answer() {
    let mut w = World::start().await;
    w.start_orchestrator(World::routines(), Options::default())
        .await;
    w.say("what can you do?").await;
    let answer = w
        .wait_out(
            "the help answer",
            |o| matches!(o, Out::Post(m) if m.key.starts_with("ans-")),
        )
        .await;
    assert!(answer.text().contains("bedtime"), "{}", answer.text());
    assert_eq!(w.count_audit(is("plan_proposed")).await, 0);
    w.shutdown().await;
}

#[tokio::test]
async fn a_redelivered_message_makes_one_plan_and_one_card() {
    let mut w = World::start().await;
    let planner = Scripted::default().on(
        "kitchen off",
        PlanOutcome::Plan(plan(
            "Kitchen off",
            vec![hue_step(
                "room.set",
                json!({"room": "Room 1", "on": false}),
                "Kitchen off.",
            )],
            false,
        )),
    );
    w.start_orchestrator(planner, Options::default()).await;
    // The same envelope twice, as a gateway retrying after the duplicate window would.
    let envelope = Envelope::new(
        MessageId::random(),
        CorrelationId::random(),
        Principal::gateway(),
        UnixMillis::now(),
        ChatIn::Text(InboundText {
            chat: World::chat("me"),
            user: ChatUser::new(ME).unwrap(),
            platform_message_id: PlatformRef::new("m-1").unwrap(),
            text: "kitchen off".to_owned(),
        }),
    );
    w.publish_envelope("chat.in.terminal", &envelope).await;
    w.wait_card(0).await;
    w.publish_envelope("chat.in.terminal", &envelope).await;
    // The second delivery finds the recorded plan and shows it again under the same message
    // id (so the stream keeps one card).
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while w.count_audit(is("plan_proposed")).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the redelivery is handled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(w.count_audit(is("message_received")).await, 1);
    let proposed: Vec<_> = w
        .audit()
        .await
        .into_iter()
        .filter_map(|r| match r.envelope.body {
            AuditEvent::PlanProposed { plan_id, .. } => Some(plan_id),
            _ => None,
        })
        .collect();
    assert_eq!(proposed[0], proposed[1], "one plan");
    assert_eq!(
        w.outs().iter().filter(|o| o.card().is_some()).count(),
        1,
        "one card"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn an_alert_is_shown_with_buttons_and_dismissed_once() {
    let mut w = World::start().await;
    w.start_orchestrator(World::routines(), Options::default())
        .await;
    let id = w
        .raise_alert(protocol::message::Alert {
            rule: ErrorCode::from_static("egress_refused"),
            severity: Severity::Warning,
            subject: Some(Principal::new("hue").unwrap()),
            summary: "hue tried to reach example.com:443".to_owned(),
            evidence: Vec::new(),
        })
        .await;
    let alert = w
        .wait_out(
            "the alert",
            |o| matches!(o, Out::Post(m) if m.key == format!("alert-{id}")),
        )
        .await;
    assert_eq!(
        alert.text(),
        format!(
            "Warning alert (egress_refused): hue tried to reach example.com:443\nAgent: hue\nRef {}",
            w.audit()
                .await
                .iter()
                .find(|r| r.kind() == "alert_raised")
                .unwrap()
                .envelope
                .correlation_id
        )
    );
    let Out::Post(m) = &alert else { unreachable!() };
    let labels: Vec<&str> = m.buttons.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["Quarantine agent", "Dismiss"]);

    // Another owner may not decide on it (alerts go to one owner).
    let dismiss = message_button(&alert, "Dismiss");
    w.press_as(service_harness::OTHER, "me", &dismiss).await;
    w.wait_audit("wrong user", refused_with("decision_wrong_user"))
        .await;
    w.press(&dismiss).await;
    let decided = w.wait_audit("alert_decided", is("alert_decided")).await;
    let AuditEvent::AlertDecided {
        alert: which,
        decision,
        by,
    } = &decided.envelope.body
    else {
        unreachable!()
    };
    assert_eq!(
        (*which, decision.as_str(), by.as_str()),
        (id, "dismiss", ME)
    );
    w.wait_out("the alert marked dismissed", |o| {
        matches!(o, Out::Update(m) if m.key == format!("alert-{id}") && m.text.ends_with("Dismissed by terminal:me."))
    })
    .await;
    w.press(&dismiss).await;
    w.wait_audit("already decided", refused_with("decision_already_decided"))
        .await;
    // A quarantine press on a dismissed alert does nothing either.
    w.press(&message_button(&alert, "Quarantine agent")).await;
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while w
        .count_audit(refused_with("decision_already_decided"))
        .await
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "quarantine refused");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(w.count_audit(is("agent_quarantined")).await, 0);
    w.shutdown().await;
}

#[tokio::test]
async fn an_alert_raised_while_the_orchestrator_is_down_is_shown_when_it_is_back() {
    let mut w = World::start().await;
    // Nobody is consuming: the alert waits in the ALERTS stream.
    let id = w
        .raise_alert(protocol::message::Alert {
            rule: ErrorCode::from_static("token_rejections"),
            severity: Severity::Critical,
            subject: Some(Principal::new("hue").unwrap()),
            summary: "hue refused 3 commands for token problems".to_owned(),
            evidence: Vec::new(),
        })
        .await;
    w.start_orchestrator(World::routines(), Options::default())
        .await;
    w.wait_out(
        "the alert after the start",
        |o| matches!(o, Out::Post(m) if m.key == format!("alert-{id}")),
    )
    .await;
    w.wait_audit("alert_raised", is("alert_raised")).await;
    // Shown and recorded once, and acknowledged: a restart does not bring it back.
    w.stop_orchestrator().await;
    w.start_orchestrator(World::routines(), Options::default())
        .await;
    w.say("what can you do").await;
    w.wait_out(
        "an answer after the restart",
        |o| matches!(o, Out::Post(m) if !m.key.starts_with("alert-")),
    )
    .await;
    let posts = w
        .outs()
        .iter()
        .filter(|o| matches!(o, Out::Post(m) if m.key == format!("alert-{id}")))
        .count();
    assert_eq!(posts, 1);
    assert_eq!(w.count_audit(is("alert_raised")).await, 1);
    w.shutdown().await;
}

#[test]
fn the_binary_exits_64_on_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "nats_url = \"tls://127.0.0.1:1\"\nowners = []\n").unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "nats_url = \"tls://127.0.0.1:1\"\nhome = \"{}\"\nowners = [\"terminal:me\"]\nagents = [\"hue\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let run = |config: &std::path::Path, fault: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.arg("--config").arg(config);
        if let Some(f) = fault {
            cmd.env("ORCHESTRATOR_FAULT", f);
        }
        cmd.output().unwrap()
    };
    assert_eq!(run(&bad, None).status.code(), Some(64));
    assert_eq!(
        run(&dir.path().join("missing.toml"), None).status.code(),
        Some(64)
    );
    assert_eq!(run(&good, Some("abort_sometimes")).status.code(), Some(64));
    // A good configuration gets past the checks and fails only at connecting (no keys, no
    // server): exit 1, not 64.
    let out = run(&good, None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
