//! The daily summary against the real system: a run missed during downtime is made up once
//! (and never again, also across a restart), an on-time run, the template's content from the
//! real Hue agent's read-only data, and the LLM composer path against the OpenAI-compatible
//! test double (with the template as the fallback when the model fails).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod service_harness;

use std::time::Duration;

use chrono::{Timelike as _, Utc};
use orchestrator::plan::{AnswerFormat, LlmComposer, LlmConfig};
use protocol::message::AuditEvent;
use service_harness::{AuditRow, Options, Out, World};
use test_support::fake_llm::{FakeLlm, Reply, content_completion, write_key_file};

fn is(kind: &'static str) -> impl Fn(&AuditRow) -> bool {
    move |r| r.kind() == kind
}

/// A daily schedule in UTC at `at`, with a catch-up window.
fn summary_section(at: chrono::DateTime<Utc>, window_secs: u64) -> String {
    format!(
        "[summary]\ncron = \"{} {} {} * * *\"\ntimezone = \"UTC\"\ncatch_up_window_secs = {window_secs}\nto = {{ user = \"terminal:me\", chat_id = \"me\" }}\n",
        at.second(),
        at.minute(),
        at.hour()
    )
}

fn summaries(w: &World) -> Vec<String> {
    w.outs()
        .iter()
        .filter(|o| matches!(o, Out::Post(m) if m.key.starts_with("summary-")))
        .map(Out::text)
        .collect()
}

async fn wait_summary(w: &World) -> String {
    w.wait_out(
        "the summary",
        |o| matches!(o, Out::Post(m) if m.key.starts_with("summary-")),
    )
    .await
    .text()
}

/// Lets the service run for many ticks (100 ms each), so a second run would have happened.
async fn many_ticks() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_missed_run_is_caught_up_once_and_never_twice() {
    let mut w = World::start().await;
    // Scheduled an hour ago, a two-hour window: the orchestrator "was down" at that time.
    let scheduled = Utc::now() - chrono::Duration::hours(1);
    let day = scheduled.date_naive().to_string();
    let opts = Options {
        summary: Some(summary_section(scheduled, 7200)),
        ..Options::default()
    };
    w.start_orchestrator(World::routines(), opts.clone()).await;
    let text = wait_summary(&w).await;
    let lights_on = w.bridge.lights().iter().filter(|l| l.on).count();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("Daily summary for {day}"));
    let phrase = match lights_on {
        0 => "No lights are on.".to_owned(),
        1 => "1 light is on".to_owned(),
        n => format!("{n} lights are on"),
    };
    assert!(
        lines[1].starts_with(&format!("• hue lights.list: {phrase}")),
        "{text}"
    );
    let sent = w.wait_audit("summary_sent", is("summary_sent")).await;
    let AuditEvent::SummarySent { day: d, caught_up } = &sent.envelope.body else {
        unreachable!()
    };
    assert_eq!((d.as_str(), *caught_up), (day.as_str(), true));
    // It read with a read-only token, like any read step.
    assert_eq!(w.count_audit(is("token_issued")).await, 1);
    assert_eq!(w.count_audit(is("plan_started")).await, 1);
    assert_eq!(w.count_audit(is("command_executed")).await, 1);

    many_ticks().await;
    assert_eq!(w.count_audit(is("summary_sent")).await, 1);

    // Restarted (still within the window): not again.
    w.stop_orchestrator().await;
    w.start_orchestrator(World::routines(), opts).await;
    w.wait_audit("the second start", |r| {
        r.kind() == "service_started" && r.actor == "orchestrator"
    })
    .await;
    many_ticks().await;
    assert_eq!(w.count_audit(is("summary_sent")).await, 1);
    assert_eq!(summaries(&w).len(), 1);
    assert_eq!(w.count_audit(is("token_issued")).await, 1);
    w.shutdown().await;
}

#[tokio::test]
async fn a_run_outside_the_window_is_skipped_and_an_on_time_run_is_not_late() {
    let mut w = World::start().await;
    // Three hours ago with a one-hour window: skipped.
    let opts = Options {
        summary: Some(summary_section(
            Utc::now() - chrono::Duration::hours(3),
            3600,
        )),
        ..Options::default()
    };
    w.start_orchestrator(World::routines(), opts).await;
    many_ticks().await;
    assert_eq!(w.count_audit(is("summary_sent")).await, 0);
    w.stop_orchestrator().await;

    // A few seconds from now: sent on time.
    let opts = Options {
        summary: Some(summary_section(
            Utc::now() + chrono::Duration::seconds(3),
            0,
        )),
        ..Options::default()
    };
    w.start_orchestrator(World::routines(), opts).await;
    let sent = w.wait_audit("summary_sent", is("summary_sent")).await;
    let AuditEvent::SummarySent { caught_up, .. } = &sent.envelope.body else {
        unreachable!()
    };
    assert!(!caught_up);
    w.shutdown().await;
}

async fn composer(fake: &FakeLlm, dir: &std::path::Path) -> LlmComposer {
    let key_file = write_key_file(dir, fake.key());
    LlmComposer::new(&LlmConfig {
        base_url: fake.base_url(),
        model: "test-model".to_owned(),
        key_file: Some(key_file),
        timeout_ms: 5000,
        max_tokens: 256,
        answer_format: AnswerFormat::Tools,
    })
    .unwrap()
}

#[tokio::test]
async fn the_llm_composer_writes_the_summary_from_untrusted_data() {
    provision::client::install_crypto_provider();
    let mut w = World::start().await;
    let fake = FakeLlm::start("sk-test-summary").await.unwrap();
    fake.push(Reply::Json(content_completion(
        "Two lights are still on: Light 4 and Light 6.",
    )));
    let scheduled = Utc::now() - chrono::Duration::minutes(30);
    let opts = Options {
        summary: Some(summary_section(scheduled, 7200)),
        composer: Some(composer(&fake, w.state.path()).await),
        ..Options::default()
    };
    w.start_orchestrator(World::routines(), opts).await;
    let text = wait_summary(&w).await;
    assert_eq!(
        text,
        format!(
            "Daily summary for {}\nTwo lights are still on: Light 4 and Light 6.",
            scheduled.date_naive()
        )
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.authorization.as_deref(), Some("Bearer sk-test-summary"));
    let user = r.texts("user").join("\n");
    assert!(user.contains("hue lights.list"), "{user}");
    assert!(
        user.to_lowercase().contains("untrusted"),
        "the data is marked untrusted: {user}"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn the_template_is_used_when_the_model_fails() {
    provision::client::install_crypto_provider();
    let mut w = World::start().await;
    let fake = FakeLlm::start("sk-test-summary").await.unwrap();
    fake.push(Reply::server_error());
    let opts = Options {
        summary: Some(summary_section(
            Utc::now() - chrono::Duration::minutes(30),
            7200,
        )),
        composer: Some(composer(&fake, w.state.path()).await),
        ..Options::default()
    };
    w.start_orchestrator(World::routines(), opts).await;
    let text = wait_summary(&w).await;
    assert!(text.contains("• hue lights.list: "), "{text}");
    assert_eq!(fake.requests().len(), 1);
    w.shutdown().await;
}
