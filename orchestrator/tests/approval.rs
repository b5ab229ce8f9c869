//! Approval against the real system: a real nats-server, the real Hue agent on the fake
//! bridge, the orchestrator service, and a user simulated with the gateway identity. Each test
//! asserts the refusal (audit row and user message) and that nothing ran (no token issued, no
//! change at the bridge), then a positive control where it matters.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod service_harness;

use protocol::message::{AuditEvent, Verdict};
use service_harness::{ME, OTHER, Options, Out, STRANGER, World, button, kinds_for, refused_with};

fn is(kind: &'static str) -> impl Fn(&service_harness::AuditRow) -> bool {
    move |r| r.kind() == kind
}

async fn bedtime_card(w: &mut World, opts: Options) -> protocol::message::PlanProposal {
    w.start_orchestrator(World::routines(), opts).await;
    w.say("start bedtime").await;
    w.wait_card(0).await
}

#[tokio::test]
async fn only_the_owner_who_asked_may_decide() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    assert_eq!(card.requested_by.as_str(), ME);
    let approve = button(&card, "Approve");

    // Another owner, in the same chat: refused with a message and an audit row.
    w.press_as(OTHER, "me", &approve).await;
    w.wait_audit("wrong user refused", refused_with("decision_wrong_user"))
        .await;
    w.wait_out("the refusal message", |o| {
        o.text().contains("Only the person who asked may decide")
            && o.text().contains("decision_wrong_user")
    })
    .await;

    // Someone who is not an owner: dropped with `sender_rejected`, and no reply at all.
    let before = w.outs().len();
    w.press_as(STRANGER, "me", &approve).await;
    let rejected = w
        .wait_audit("stranger rejected", is("sender_rejected"))
        .await;
    let AuditEvent::SenderRejected {
        platform_user,
        code,
        ..
    } = &rejected.envelope.body
    else {
        unreachable!()
    };
    assert_eq!(
        (platform_user.as_str(), code.as_str()),
        ("stranger", "sender_not_allowed")
    );
    assert_eq!(w.outs().len(), before, "no reply content for a stranger");

    // Nothing ran.
    assert_eq!(w.count_audit(is("token_issued")).await, 0);
    assert_eq!(w.count_audit(is("approval_decided")).await, 0);
    assert_eq!(w.puts(), 0);

    // The owner who asked can still approve.
    w.press(&approve).await;
    w.wait_audit("plan finished", is("plan_finished")).await;
    assert!(w.puts() > 0);
    w.shutdown().await;
}

#[tokio::test]
async fn a_press_after_the_ttl_is_refused_and_nothing_runs() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    // Ten minutes and a second later.
    w.clock.advance(601_000);
    w.press(&button(&card, "Approve")).await;
    w.wait_audit("expired refusal", refused_with("decision_expired"))
        .await;
    w.wait_out("the expiry message", |o| {
        matches!(o, Out::Post(_)) && o.text().contains("expired before it was approved")
    })
    .await;
    w.wait_out("the card marked expired", |o| {
        matches!(o, Out::Update(_))
            && o.key() == card.approval_id.to_string()
            && o.text()
                .ends_with("Expired before anyone decided. Nothing was done.")
    })
    .await;
    assert_eq!(w.count_audit(is("approval_expired")).await, 1);
    assert_eq!(w.count_audit(is("approval_decided")).await, 0);
    assert_eq!(w.count_audit(is("token_issued")).await, 0);
    assert_eq!(w.puts(), 0);
    w.shutdown().await;
}

#[tokio::test]
async fn unanswered_plans_expire_on_their_own() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    w.clock.advance(601_000);
    let expired = w
        .wait_audit("approval_expired", is("approval_expired"))
        .await;
    let AuditEvent::ApprovalExpired {
        approval_id,
        plan_id,
    } = expired.envelope.body
    else {
        unreachable!()
    };
    assert_eq!((approval_id, plan_id), (card.approval_id, card.plan_id));
    let update = w
        .wait_out("the card marked expired", |o| {
            matches!(o, Out::Update(_)) && o.key() == card.approval_id.to_string()
        })
        .await;
    let Out::Update(m) = update else {
        unreachable!()
    };
    assert!(m.buttons.is_empty());
    // A press now is refused as expired, and expiry is not recorded twice.
    w.press(&button(&card, "Approve")).await;
    w.wait_audit("expired refusal", refused_with("decision_expired"))
        .await;
    assert_eq!(w.count_audit(is("approval_expired")).await, 1);
    assert_eq!(w.puts(), 0);
    w.shutdown().await;
}

#[tokio::test]
async fn a_double_press_executes_once_and_mints_each_token_once() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    let approve = button(&card, "Approve");
    // Two presses back to back (a double tap), then a third after the plan finished.
    w.press(&approve).await;
    w.press(&approve).await;
    w.wait_audit("plan finished", is("plan_finished")).await;
    w.press(&approve).await;
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while w
        .count_audit(refused_with("decision_already_decided"))
        .await
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "two no-op presses");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let steps = card.steps.len();
    assert_eq!(w.count_audit(is("approval_decided")).await, 1);
    assert_eq!(w.count_audit(is("token_issued")).await, steps);
    assert_eq!(w.count_audit(is("step_intent")).await, steps);
    assert_eq!(w.count_audit(is("command_executed")).await, steps);
    assert_eq!(w.count_audit(is("plan_finished")).await, 1);
    w.wait_out("the no-op message", |o| {
        o.text()
            .contains("That was already decided; nothing more to do.")
    })
    .await;
    w.shutdown().await;
}

#[tokio::test]
async fn every_single_character_change_of_a_payload_is_refused() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    let approve = button(&card, "Approve");
    let alphabet: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:"
        .chars()
        .collect();
    let mut tampered = Vec::new();
    for (i, c) in approve.char_indices() {
        // The next character of the payload alphabet: every variant stays a valid payload on
        // the wire, so it reaches the orchestrator's check.
        let pos = alphabet.iter().position(|a| *a == c).unwrap();
        let other = alphabet[(pos + 1) % alphabet.len()];
        let mut t = approve.clone();
        t.replace_range(i..i + 1, &other.to_string());
        tampered.push(t);
    }
    // And the verdict flipped to Reject while keeping the approve MAC.
    tampered.push(approve.replacen("d1:A:", "d1:R:", 1));
    for t in &tampered {
        w.press(t).await;
    }
    let refused = |r: &service_harness::AuditRow| {
        refused_with("decision_tampered")(r) || refused_with("decision_unknown")(r)
    };
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while w.count_audit(refused).await < tampered.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "every tampered press refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Most are MAC failures; a changed id names no approval at all.
    assert!(w.count_audit(refused_with("decision_tampered")).await > tampered.len() / 2);
    assert_eq!(w.count_audit(is("approval_decided")).await, 0);
    assert_eq!(w.count_audit(is("token_issued")).await, 0);
    assert_eq!(w.puts(), 0);

    // The real payload still works.
    w.press(&approve).await;
    w.wait_audit("plan finished", is("plan_finished")).await;
    w.shutdown().await;
}

#[tokio::test]
async fn a_press_in_another_chat_is_refused() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    w.press_as(ME, "elsewhere", &button(&card, "Approve")).await;
    w.wait_audit("foreign chat", refused_with("decision_foreign_chat"))
        .await;
    w.wait_out("the refusal, in the chat it came from", |o| match o {
        Out::Post(m) => m.chat.chat_id.as_str() == "elsewhere" && m.text.contains("another chat"),
        _ => false,
    })
    .await;
    assert_eq!(w.count_audit(is("token_issued")).await, 0);
    assert_eq!(w.puts(), 0);
    w.shutdown().await;
}

#[tokio::test]
async fn a_pending_approval_survives_a_restart() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    w.stop_orchestrator().await;
    // A new process over the same state database.
    w.start_orchestrator(World::routines(), Options::default())
        .await;
    w.press(&button(&card, "Approve")).await;
    let finished = w.wait_audit("plan finished", is("plan_finished")).await;
    let AuditEvent::PlanFinished { plan_id, outcome } = &finished.envelope.body else {
        unreachable!()
    };
    assert_eq!((*plan_id, outcome.as_str()), (card.plan_id, "done"));
    assert!(
        !w.bridge.light("Light 6").unwrap().on,
        "Room 1 (kitchen) is off"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn the_short_code_decides_only_for_its_user_in_its_chat() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    let code = card.short_code.clone();
    assert_eq!(code.len(), 4);
    let wrong = if code == "0000" { "0001" } else { "0000" };
    w.reply_code(ME, "me", Verdict::Approve, wrong).await;
    w.wait_audit("unknown code", refused_with("decision_unknown_code"))
        .await;
    w.reply_code(ME, "elsewhere", Verdict::Approve, &code).await;
    let refusals = |r: &service_harness::AuditRow| refused_with("decision_unknown_code")(r);
    let deadline = std::time::Instant::now() + service_harness::WAIT;
    while w.count_audit(refusals).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the code is unknown in another chat"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    w.reply_code(OTHER, "me", Verdict::Approve, &code).await;
    w.wait_audit("wrong user", refused_with("decision_wrong_user"))
        .await;
    assert_eq!(w.count_audit(is("token_issued")).await, 0);

    w.reply_code(ME, "me", Verdict::Approve, &code).await;
    let decided = w.wait_audit("approved", is("approval_decided")).await;
    let AuditEvent::ApprovalDecided { verdict, by, .. } = &decided.envelope.body else {
        unreachable!()
    };
    assert_eq!((*verdict, by.as_str()), (Verdict::Approve, ME));
    w.wait_audit("plan finished", is("plan_finished")).await;
    assert!(w.puts() > 0);
    w.shutdown().await;
}

#[tokio::test]
async fn a_rejected_plan_never_runs() {
    let mut w = World::start().await;
    let card = bedtime_card(&mut w, Options::default()).await;
    w.press(&button(&card, "Reject")).await;
    let decided = w.wait_audit("rejected", is("approval_decided")).await;
    let AuditEvent::ApprovalDecided { verdict, .. } = &decided.envelope.body else {
        unreachable!()
    };
    assert_eq!(*verdict, Verdict::Reject);
    w.wait_out("the card marked rejected", |o| {
        matches!(o, Out::Update(_))
            && o.text()
                .ends_with("Rejected by terminal:me. Nothing was done.")
    })
    .await;
    // Approving afterwards is a no-op.
    w.press(&button(&card, "Approve")).await;
    w.wait_audit("no-op", refused_with("decision_already_decided"))
        .await;
    let rows = w.audit().await;
    let correlation = rows
        .iter()
        .find(|r| r.kind() == "plan_proposed")
        .unwrap()
        .envelope
        .correlation_id;
    expect_test::expect![[r#"
        [
            "orchestrator:message_received",
            "orchestrator:plan_proposed",
            "orchestrator:approval_decided",
            "orchestrator:decision_refused",
        ]
    "#]]
    .assert_debug_eq(&kinds_for(&rows, correlation));
    assert_eq!(w.puts(), 0);
    w.shutdown().await;
}
