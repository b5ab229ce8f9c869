//! Execution against the real system: approved plans run step by step through the real Hue
//! agent on the fake bridge, every step write-ahead audited and token-bound; the approval
//! policy; stop-on-failure and continue-on-failure; a quarantined agent's steps refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod service_harness;

use std::sync::Arc;

use orchestrator::plan::PlanOutcome;
use protocol::Principal;
use protocol::message::{AuditEvent, ErrorCode, Severity};
use serde_json::json;
use service_harness::{
    AuditRow, Options, Out, RecordingControl, Scripted, World, button, hue_step, kinds_for,
    message_button, plan,
};

fn is(kind: &'static str) -> impl Fn(&AuditRow) -> bool {
    move |r| r.kind() == kind
}

fn results(w: &World) -> Vec<String> {
    w.outs()
        .iter()
        .filter(|o| matches!(o, Out::Post(m) if m.key.starts_with("res-")))
        .map(Out::text)
        .collect()
}

async fn wait_results(w: &World) -> String {
    w.wait_out(
        "the results message",
        |o| matches!(o, Out::Post(m) if m.key.starts_with("res-")),
    )
    .await
    .text()
}

#[tokio::test]
async fn bedtime_runs_step_by_step_with_every_audit_event_in_order() {
    let mut w = World::start().await;
    w.start_orchestrator(World::routines(), Options::default())
        .await;
    let before = w.bridge.light("Light 6").unwrap();
    assert!(before.on, "the fixture's kitchen light starts on");
    w.say("start bedtime").await;
    let card = w.wait_card(0).await;
    assert_eq!(card.steps.len(), 4);
    w.press(&button(&card, "Approve")).await;

    let text = wait_results(&w).await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(": done"), "{text}");
    for (i, line) in lines[1..5].iter().enumerate() {
        assert!(line.starts_with(&format!("✓ {}. hue ", i + 1)), "{text}");
    }
    assert!(lines[5].starts_with("Ref "), "{text}");
    // The card shows the outcome instead of its buttons.
    w.wait_out("the card marked finished", |o| {
        matches!(o, Out::Update(m) if m.key == card.approval_id.to_string() && m.text.ends_with("Finished: done."))
    })
    .await;
    // The bridge really changed: the kitchen (Room 1) is off, the bedroom (Room 9) dim.
    assert!(!w.bridge.light("Light 6").unwrap().on);

    // Every event, in order: the orchestrator's exactly; the agent's between its token and
    // the next step.
    // command_executed is published right after the agent's reply; wait for all four.
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while w.count_audit(is("command_executed")).await < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "four command_executed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rows = w.audit().await;
    let correlation = rows
        .iter()
        .find(|r| r.kind() == "message_received")
        .unwrap()
        .envelope
        .correlation_id;
    let all = kinds_for(&rows, correlation);
    let mine: Vec<&String> = all
        .iter()
        .filter(|k| k.starts_with("orchestrator:"))
        .collect();
    expect_test::expect![[r#"
        [
            "orchestrator:message_received",
            "orchestrator:plan_proposed",
            "orchestrator:approval_decided",
            "orchestrator:step_intent",
            "orchestrator:token_issued",
            "orchestrator:step_result",
            "orchestrator:step_intent",
            "orchestrator:token_issued",
            "orchestrator:step_result",
            "orchestrator:step_intent",
            "orchestrator:token_issued",
            "orchestrator:step_result",
            "orchestrator:step_intent",
            "orchestrator:token_issued",
            "orchestrator:step_result",
            "orchestrator:plan_finished",
        ]
    "#]]
    .assert_debug_eq(&mine);
    for step in 0..4u16 {
        let token = all
            .iter()
            .enumerate()
            .filter(|(_, k)| *k == "orchestrator:token_issued")
            .nth(usize::from(step))
            .unwrap()
            .0;
        let received = rows
            .iter()
            .filter(|r| r.envelope.correlation_id == correlation)
            .position(|r| {
                matches!(&r.envelope.body, AuditEvent::CommandReceived { step: Some(s), .. } if *s == step)
            })
            .unwrap();
        assert!(
            received > token,
            "step {step}: the agent received it after the token was issued"
        );
    }
    // The intent names the exact arguments and the token's nonce; the agent executed that nonce.
    let intents: Vec<(String, serde_json::Value)> = rows
        .iter()
        .filter_map(|r| match &r.envelope.body {
            AuditEvent::StepIntent { step, jti, .. } => Some((jti.clone(), step.args.clone())),
            _ => None,
        })
        .collect();
    let executed: Vec<String> = rows
        .iter()
        .filter_map(|r| match &r.envelope.body {
            AuditEvent::CommandExecuted { jti, .. } => Some(jti.clone()),
            _ => None,
        })
        .collect();
    for (jti, args) in &intents {
        assert!(executed.contains(jti), "intent {jti} executed");
        assert_eq!(
            args,
            &card.steps[intents.iter().position(|(j, _)| j == jti).unwrap()].params
        );
    }
    w.shutdown().await;
}

#[tokio::test]
async fn the_first_failure_stops_the_plan_unless_it_says_otherwise() {
    let mut w = World::start().await;
    let steps = || {
        vec![
            hue_step(
                "light.set",
                json!({"light": "Porch", "on": true}),
                "A light that does not exist.",
            ),
            hue_step(
                "room.set",
                json!({"room": "Room 1", "on": false}),
                "Kitchen off.",
            ),
        ]
    };
    let planner = Scripted::default()
        .on(
            "stop",
            PlanOutcome::Plan(plan("Stops at the first failure", steps(), false)),
        )
        .on(
            "go on",
            PlanOutcome::Plan(plan("Goes on after a failure", steps(), true)),
        );
    w.start_orchestrator(planner, Options::default()).await;

    w.say("stop").await;
    let card = w.wait_card(0).await;
    w.press(&button(&card, "Approve")).await;
    let text = wait_results(&w).await;
    expect_test::expect![[r#"
        Stops at the first failure: failed
        ✗ 1. hue light.set: failed (not_found): no light is named "Porch"; known: Light 1, Light 2, Light 3, Light 4, Light 5, Light 6, Light 7, Light 8
        – 2. hue room.set: not run (an earlier step did not succeed)"#]]
    .assert_eq(&text.lines().take(3).collect::<Vec<_>>().join("\n"));
    assert!(
        w.bridge.light("Light 6").unwrap().on,
        "the kitchen was not touched"
    );
    assert_eq!(w.count_audit(is("token_issued")).await, 1);

    w.say("go on").await;
    let card = w.wait_card(1).await;
    w.press(&button(&card, "Approve")).await;
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while results(&w).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second plan's results"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = results(&w)[1].clone();
    assert!(
        text.starts_with("Goes on after a failure: partly done\n✗ 1."),
        "{text}"
    );
    assert!(text.contains("✓ 2. hue room.set: Room 1: off"), "{text}");
    assert!(
        !w.bridge.light("Light 6").unwrap().on,
        "the kitchen is off now"
    );
    let outcomes: Vec<String> = w
        .audit()
        .await
        .iter()
        .filter_map(|r| match &r.envelope.body {
            AuditEvent::PlanFinished { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, ["failed", "partly_done"]);
    w.shutdown().await;
}

#[tokio::test]
async fn read_only_plans_run_at_once_unless_policy_asks_for_everything() {
    let mut w = World::start().await;
    w.start_orchestrator(World::routines(), Options::default())
        .await;
    w.say("which lights are on").await;
    let text = wait_results(&w).await;
    assert!(text.starts_with("Lights report"), "{text}");
    assert!(text.contains("✓ 1. hue lights.list:"), "{text}");
    assert!(
        w.outs().iter().all(|o| o.card().is_none()),
        "no card for a read-only plan"
    );
    let started = w.wait_audit("plan_started", is("plan_started")).await;
    let AuditEvent::PlanStarted { planner, steps, .. } = &started.envelope.body else {
        unreachable!()
    };
    assert_eq!(
        (planner.as_str(), steps.len()),
        ("routine:lights-report", 1)
    );
    assert_eq!(w.count_audit(is("plan_proposed")).await, 0);
    assert_eq!(w.count_audit(is("approval_decided")).await, 0);
    w.stop_orchestrator().await;

    // require = "all": the same request now asks first.
    w.start_orchestrator(
        World::routines(),
        Options {
            require_all: true,
            ..Options::default()
        },
    )
    .await;
    w.say("which lights are on").await;
    let card = w.wait_card(0).await;
    assert_eq!(card.steps.len(), 1);
    assert_eq!(
        w.count_audit(is("token_issued")).await,
        1,
        "only the first run"
    );
    w.press(&button(&card, "Approve")).await;
    w.wait_audit("approved", is("approval_decided")).await;
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while w.count_audit(is("plan_finished")).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the approved read runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    w.shutdown().await;
}

#[tokio::test]
async fn a_quarantined_agent_gets_no_tokens_until_released() {
    let mut w = World::start().await;
    let control = Arc::new(RecordingControl::default());
    w.start_orchestrator(
        World::routines(),
        Options {
            control: Some(control.clone()),
            ..Options::default()
        },
    )
    .await;
    w.raise_alert(protocol::message::Alert {
        rule: ErrorCode::from_static("token_rejections"),
        severity: Severity::Critical,
        subject: Some(Principal::new("hue").unwrap()),
        summary: "hue presented a forged token".to_owned(),
        evidence: Vec::new(),
    })
    .await;
    let alert = w
        .wait_out(
            "the alert",
            |o| matches!(o, Out::Post(m) if m.key.starts_with("alert-")),
        )
        .await;
    w.press(&message_button(&alert, "Quarantine agent")).await;
    w.wait_audit("quarantined", is("agent_quarantined")).await;
    let update = w
        .wait_out("the quarantine confirmation", |o| {
            matches!(o, Out::Update(m) if m.key == alert.key() && m.text.contains("Quarantined hue"))
        })
        .await;
    assert_eq!(*control.calls.lock().unwrap(), ["stop hue"]);

    // A plan now: its steps are refused before any intent or token.
    w.say("start bedtime").await;
    let card = w.wait_card(0).await;
    w.press(&button(&card, "Approve")).await;
    let text = wait_results(&w).await;
    assert!(
        text.contains("✗ 1. hue room.set: refused (agent_quarantined)"),
        "{text}"
    );
    assert_eq!(w.count_audit(is("step_intent")).await, 0);
    assert_eq!(w.count_audit(is("token_issued")).await, 0);
    assert_eq!(w.puts(), 0);

    // Released: tokens again.
    w.press(&message_button(&update, "Release agent")).await;
    let released = w.wait_audit("released", is("agent_released")).await;
    let AuditEvent::AgentReleased { agent, by } = &released.envelope.body else {
        unreachable!()
    };
    assert_eq!((agent.as_str(), by.as_str()), ("hue", "terminal:me"));
    assert_eq!(*control.calls.lock().unwrap(), ["stop hue", "start hue"]);
    w.say("start bedtime").await;
    let card = w.wait_card(1).await;
    w.press(&button(&card, "Approve")).await;
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while w.count_audit(is("plan_finished")).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second bedtime finishes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(w.count_audit(is("token_issued")).await, 4);
    assert!(w.puts() > 0);
    w.shutdown().await;
}
