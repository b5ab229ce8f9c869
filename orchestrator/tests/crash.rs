//! Crash recovery with the real `orchestrator` binary: the test hook aborts it between a step's
//! durable intent and its dispatch, or between the agent's answer and its recording; the
//! restarted binary never runs the step again, finishes the plan as `outcome_unknown`, tells
//! the user, and the audit rows say so. The real Hue agent on the fake bridge counts what was
//! executed (its PUT requests).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod service_harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::message::AuditEvent;
use service_harness::{AuditRow, ME, OTHER, Out, WAIT, World, button};

fn is(kind: &'static str) -> impl Fn(&AuditRow) -> bool {
    move |r| r.kind() == kind
}

fn write_config(w: &World) -> PathBuf {
    let path = w.state.path().join("orchestrator.toml");
    std::fs::write(
        &path,
        format!(
            "nats_url = \"{}\"\nhome = \"{}\"\nstate_db = \"{}\"\nowners = [\"{ME}\", \"{OTHER}\"]\nagents = [\"hue\"]\n",
            w.server.url(),
            w.server.layout().root().display(),
            w.state.path().join("orchestrator.db").display()
        ) + &rooms_section(),
    )
    .unwrap();
    path
}

/// The simulated bridge's room names for the routines.
fn rooms_section() -> String {
    let mut out = "[routines.rooms]\n".to_owned();
    for (role, name) in test_support::fake_hue::room_aliases() {
        out.push_str(&format!("{role} = \"{name}\"\n"));
    }
    out
}

fn spawn(config: &Path, fault: Option<&str>, log: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    match fault {
        Some(f) => cmd.env("ORCHESTRATOR_FAULT", f),
        None => cmd.env_remove("ORCHESTRATOR_FAULT"),
    };
    cmd.spawn().unwrap()
}

async fn wait_exit(child: &mut Child, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the orchestrator did not abort; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs bedtime with the binary aborting at `fault`, restarts it, and returns the world, the
/// PUTs the bridge saw before the restart, and the results message.
async fn crash_and_restart(fault: &str) -> (World, usize, String, Child) {
    let w = World::start().await;
    let config = write_config(&w);
    let log1 = w.state.path().join("first.log");
    let mut first = spawn(&config, Some(fault), &log1);
    w.say("start bedtime").await;
    let card = w.wait_card(0).await;
    w.press(&button(&card, "Approve")).await;
    let status = wait_exit(&mut first, &log1).await;
    assert!(!status.success(), "aborted: {status:?}");
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            status.signal(),
            Some(6),
            "SIGABRT from the test hook: {status:?}"
        );
    }
    let puts_before = w.puts();
    // The intent of step 1 is durable in the audit stream.
    let intents = w.count_audit(is("step_intent")).await;
    assert_eq!(intents, 1);

    let log2 = w.state.path().join("second.log");
    let second = spawn(&config, None, &log2);
    let results = w
        .wait_out(
            "the results after the restart",
            |o| matches!(o, Out::Post(m) if m.key.starts_with("res-")),
        )
        .await
        .text();
    (w, puts_before, results, second)
}

async fn check_recovered(w: &World, results: &str) {
    let lines: Vec<&str> = results.lines().collect();
    assert!(lines[0].ends_with(": outcome unknown"), "{results}");
    assert_eq!(
        lines[1],
        "? 1. hue room.set: outcome unknown (orchestrator_restarted). It was not run again; check it yourself."
    );
    for (i, line) in lines[2..5].iter().enumerate() {
        assert!(line.starts_with(&format!("– {}. hue ", i + 2)), "{results}");
    }
    let rows = w.audit().await;
    let step_results: Vec<(u16, String, Option<String>)> = rows
        .iter()
        .filter_map(|r| match &r.envelope.body {
            AuditEvent::StepResult {
                step,
                outcome,
                code,
                ..
            } => Some((
                *step,
                outcome.clone(),
                code.as_ref().map(|c| c.as_str().to_owned()),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        step_results,
        [(
            0,
            "unknown".to_owned(),
            Some("orchestrator_restarted".to_owned())
        )]
    );
    let finished: Vec<String> = rows
        .iter()
        .filter_map(|r| match &r.envelope.body {
            AuditEvent::PlanFinished { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(finished, ["outcome_unknown"]);
    // One intent, and it stayed the only one.
    assert_eq!(w.count_audit(is("step_intent")).await, 1);
    w.wait_out(
        "the card marked finished",
        |o| matches!(o, Out::Update(m) if m.text.ends_with("Finished: outcome unknown.")),
    )
    .await;
}

#[tokio::test]
async fn killed_between_intent_and_dispatch_the_step_never_runs() {
    let (w, puts_before, results, mut second) = crash_and_restart("abort_after_intent").await;
    assert_eq!(puts_before, 0, "nothing was dispatched");
    check_recovered(&w, &results).await;
    assert_eq!(w.count_audit(is("token_issued")).await, 0);
    assert_eq!(w.count_audit(is("command_received")).await, 0);
    assert_eq!(w.puts(), 0, "and nothing ran after the restart");
    second.kill().unwrap();
    second.wait().unwrap();
    w.shutdown().await;
}

#[tokio::test]
async fn killed_between_dispatch_and_result_the_step_is_not_run_twice() {
    let (w, puts_before, results, mut second) = crash_and_restart("abort_after_dispatch").await;
    assert!(
        puts_before > 0,
        "the agent acted before the orchestrator died"
    );
    check_recovered(&w, &results).await;
    assert_eq!(w.count_audit(is("token_issued")).await, 1);
    let deadline = Instant::now() + WAIT;
    while w.count_audit(is("command_executed")).await < 1 {
        assert!(
            Instant::now() < deadline,
            "the agent's own record of the execution"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.count_audit(is("command_received")).await, 1);
    assert_eq!(w.puts(), puts_before, "nothing ran again after the restart");
    second.kill().unwrap();
    second.wait().unwrap();
    w.shutdown().await;
}

/// Stops the in-process service right after a plan was approved but before it started (the
/// decision recorded directly in the state database, as a crash right after its commit would
/// leave it), then restarts it.
async fn approved_but_not_started(advance_ms: i64) -> (World, protocol::message::PlanProposal) {
    let mut w = World::start().await;
    w.start_orchestrator(World::routines(), service_harness::Options::default())
        .await;
    w.say("start bedtime").await;
    let card = w.wait_card(0).await;
    w.stop_orchestrator().await;
    {
        let mut store =
            orchestrator::store::Store::open(&w.state.path().join("orchestrator.db")).unwrap();
        let me = protocol::ChatUser::new(ME).unwrap();
        let approved = store
            .decide(
                card.plan_id,
                protocol::message::Verdict::Approve,
                &me,
                protocol::UnixMillis::now(),
            )
            .unwrap();
        assert!(approved);
    }
    w.clock.advance(advance_ms);
    w.start_orchestrator(World::routines(), service_harness::Options::default())
        .await;
    (w, card)
}

#[tokio::test]
async fn an_approved_plan_that_never_started_runs_after_a_restart_within_its_ttl() {
    let (w, card) = approved_but_not_started(0).await;
    let results = w
        .wait_out(
            "the results",
            |o| matches!(o, Out::Post(m) if m.key == format!("res-{}", card.plan_id)),
        )
        .await
        .text();
    assert!(
        results.lines().next().unwrap().ends_with(": done"),
        "{results}"
    );
    assert_eq!(w.count_audit(is("token_issued")).await, card.steps.len());
    assert!(w.puts() > 0);
    w.shutdown().await;
}

#[tokio::test]
async fn an_approved_plan_that_never_started_expires_after_a_restart_past_its_ttl() {
    let (w, card) = approved_but_not_started(601_000).await;
    w.wait_out(
        "the expiry message",
        |o| matches!(o, Out::Post(m) if m.text.contains("could not start before it expired")),
    )
    .await;
    let expired = w
        .wait_audit("approval_expired", is("approval_expired"))
        .await;
    let AuditEvent::ApprovalExpired { plan_id, .. } = expired.envelope.body else {
        unreachable!()
    };
    assert_eq!(plan_id, card.plan_id);
    assert_eq!(w.count_audit(is("token_issued")).await, 0);
    assert_eq!(w.puts(), 0);
    w.shutdown().await;
}
