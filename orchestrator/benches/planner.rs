//! Chat text → plan shown, with the routine planner (goal: p99 ≤ 20 ms). Prints figures; run
//! with `cargo bench -p orchestrator --bench planner`.
//!
//! Method: one thread (a current-thread tokio runtime), the embedded routines and the
//! checked-in catalog. Each iteration takes one of five messages in turn (four routine phrases
//! and one that matches nothing and gets the help answer) and times, with `Instant`, the whole
//! of: `Planners::plan` (normalise, match, clone the validated plan), the plan hash, the
//! approval card as the service builds it (`PlanProposal` with cleaned summary and whys, two
//! button payloads of the real 64-byte size), its validation as a wire body, its JSON encoding
//! and `render::card_text`. 2 000 warm-up iterations, then 50 000 timed ones; p50, p99 and max
//! of the individual durations. NATS, SQLite and the audit publish are not included (the
//! service's own benchmark covers that path).
//!
//! A second figure times the LLM planner against `test_support::fake_llm` on loopback (a
//! recorded tool-call answer): HTTP, parsing and validation without any model time, 500 timed
//! requests after 50 warm-up ones.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use orchestrator::catalog::Catalog;
use orchestrator::plan::{AnswerFormat, LlmConfig, PlanOutcome, PlanRequest, Planner, Planners};
use orchestrator::render;
use protocol::message::{Button, ChatRef, MAX_LINE, PlanMessage, PlanProposal, ProposedStep};
use protocol::{ApprovalId, Body as _, ChannelName, ChatUser, PlanId, UnixMillis};

const MESSAGES: [&str; 5] = [
    "start bedtime",
    "good morning!",
    "I'm leaving",
    "which lights are still on?",
    "make me a coffee",
];

fn percentiles(mut d: Vec<Duration>) -> (Duration, Duration, Duration) {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *d.last().unwrap())
}

fn show(label: &str, (p50, p99, max): (Duration, Duration, Duration), n: usize) {
    println!(
        "{label}: n={n} p50={:.1} µs p99={:.1} µs max={:.1} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        max.as_secs_f64() * 1e6
    );
}

/// Text → outcome → (for a plan) the approval card, encoded and rendered.
async fn once(planners: &Planners, user: &ChatUser, chat: &ChatRef, text: &str, i: u64) -> usize {
    let outcome = planners
        .plan(PlanRequest {
            text,
            user,
            now: UnixMillis(1_795_000_000_000 + i as i64),
        })
        .await;
    match outcome {
        PlanOutcome::Plan(plan) => {
            let hash = plan.hash();
            let payload =
                |verdict: &str| format!("ap:{verdict}:{:0>22}:{}", i, &hash.to_string()[..32]);
            let proposal = PlanProposal {
                plan_id: PlanId::from_bytes([1; 16]),
                approval_id: ApprovalId::from_bytes([2; 16]),
                chat: chat.clone(),
                requested_by: user.clone(),
                summary: render::clean_line(&plan.summary, MAX_LINE),
                steps: plan
                    .steps
                    .iter()
                    .map(|s| ProposedStep {
                        agent: s.agent.clone(),
                        action: s.action.clone(),
                        params: s.params.clone(),
                        why: render::clean_line(&s.why, MAX_LINE),
                        effect: s.effect,
                    })
                    .collect(),
                buttons: vec![
                    Button {
                        label: "Approve".to_owned(),
                        payload: payload("a"),
                    },
                    Button {
                        label: "Reject".to_owned(),
                        payload: payload("r"),
                    },
                ],
                short_code: "4821".to_owned(),
                expires_at: UnixMillis(1_795_000_600_000),
            };
            let message = PlanMessage::Proposed(proposal);
            message.validate().unwrap();
            let wire = serde_json::to_vec(&message).unwrap();
            let PlanMessage::Proposed(p) = &message;
            render::card_text(p, chrono_tz::UTC).len() + wire.len()
        }
        PlanOutcome::Answer(a) => a.len(),
        PlanOutcome::Refused(r) => r.detail.len(),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let planners = Planners::new(Catalog::all(), None).unwrap();
    let user = ChatUser::new("terminal:me").unwrap();
    let chat = ChatRef {
        channel: ChannelName::new("terminal").unwrap(),
        chat_id: protocol::message::PlatformRef::new("me").unwrap(),
    };
    runtime.block_on(async {
        for i in 0..2_000u64 {
            black_box(once(&planners, &user, &chat, MESSAGES[(i % 5) as usize], i).await);
        }
        let mut times = Vec::with_capacity(50_000);
        for i in 0..50_000u64 {
            let text = MESSAGES[(i % 5) as usize];
            let start = Instant::now();
            black_box(once(&planners, &user, &chat, black_box(text), i).await);
            times.push(start.elapsed());
        }
        let n = times.len();
        show(
            "routine planner: chat text -> plan -> approval card",
            percentiles(times),
            n,
        );
    });

    runtime.block_on(async {
        let fake = test_support::fake_llm::FakeLlm::start("sk-bench")
            .await
            .unwrap();
        fake.always(Some(test_support::fake_llm::Reply::fixture(
            "plan_kitchen_off",
        )));
        let dir = tempfile::tempdir().unwrap();
        let config = LlmConfig {
            base_url: fake.base_url(),
            model: "bench-model".to_owned(),
            key_file: Some(test_support::fake_llm::write_key_file(
                dir.path(),
                "sk-bench",
            )),
            timeout_ms: 10_000,
            max_tokens: 512,
            answer_format: AnswerFormat::Tools,
        };
        let planners =
            Planners::from_config(Catalog::all(), Some(&config), &Default::default()).unwrap();
        let text = "kitchen off and the bedroom to 30 %";
        for i in 0..50u64 {
            black_box(once(&planners, &user, &chat, text, i).await);
        }
        let mut times = Vec::with_capacity(500);
        for i in 0..500u64 {
            let start = Instant::now();
            let n = once(&planners, &user, &chat, black_box(text), i).await;
            times.push(start.elapsed());
            assert!(n > 0);
        }
        let n = times.len();
        show(
            "llm planner, loopback double (no model time): chat text -> plan -> approval card",
            percentiles(times),
            n,
        );
    });
}
