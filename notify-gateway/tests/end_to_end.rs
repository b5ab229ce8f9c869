//! The Telegram scenario end to end, with every real part except Telegram itself: the
//! Bot API double (`test_support::fake_telegram`), the gateway, a real nats-server with our
//! generated configuration, the orchestrator service (routines only, no model) and the real
//! Hue agent on the agent runtime against the simulated bridge, all in this process. The home
//! side (server, bridge, agent, orchestrator) is the shared harness in `tests/common`.
//!
//! "start bedtime" → the plan card arrives with an inline keyboard → Approve → the press is
//! answered, the card is edited, the results arrive, and the kitchen's lights are really off at
//! the bridge. A second press changes nothing (the card no longer shows the button, so the
//! gateway refuses it before publishing); a stranger gets no reply and publishes nothing.
#![cfg(feature = "telegram")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{Home, KITCHEN, Running, is_on, lights_of, until};
use notify_gateway::inbound::{Allowlist, REFUSED_PRESS_TEXT};
use notify_gateway::store::Store;
use notify_gateway::telegram::{BotToken, Telegram};
use protocol::message::AuditEvent;
use protocol::subject::stream;
use protocol::{ChannelName, Principal};
use test_support::fake_telegram::{FakeTelegram, MAX_CALLBACK_DATA, SentMessage};

/// The owner, on Telegram (a private chat's id is the user's id).
const ALICE: i64 = 42;
/// Someone who is not on the allowlist.
const MALLORY: i64 = 666;

/// The whole system: the home (`common::Home`), the Bot API double and the gateway.
struct World {
    home: Home,
    tg: FakeTelegram,
    gateway: Running<Result<(), notify_gateway::GatewayError>>,
}

impl World {
    /// The home with Alice on Telegram as the owner, then the double and the gateway's
    /// Telegram channel against it; only Alice is allowed.
    async fn start() -> World {
        let home = Home::start(&format!("telegram:{ALICE}")).await;
        let tg = FakeTelegram::start().await.unwrap();
        let channel = Telegram::new(
            &BotToken::new(tg.token()),
            Some(url::Url::parse(&tg.api_url()).unwrap()),
            Duration::from_secs(1),
            ChannelName::new("telegram").unwrap(),
        );
        let client = home.server.connect(&Principal::gateway()).await.unwrap();
        let store = Store::open(&home.state.path().join("gateway.sqlite")).unwrap();
        let gateway = Running::spawn(|stopped| {
            notify_gateway::run(
                channel,
                Allowlist::new([ALICE.to_string()]),
                client,
                store,
                stopped,
            )
        });
        World { home, tg, gateway }
    }

    async fn shutdown(self) {
        self.gateway.stop().await.unwrap();
        self.home.stop().await;
    }
}

/// The inline keyboard's buttons, as (text, callback_data), row by row.
fn keyboard(m: &SentMessage) -> Vec<(String, String)> {
    let markup = m.reply_markup.as_ref().expect("an inline keyboard");
    markup["inline_keyboard"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().clone())
        .map(|b| {
            (
                b["text"].as_str().unwrap().to_owned(),
                b["callback_data"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn results(tg: &FakeTelegram) -> Vec<SentMessage> {
    tg.sent()
        .into_iter()
        .filter(|m| m.text.contains("\nRef "))
        .collect()
}

#[tokio::test]
async fn start_bedtime_on_telegram_approve_and_the_kitchen_goes_dark() {
    let w = World::start().await;
    let kitchen = lights_of(&w.home.bridge.resources(), KITCHEN);
    assert!(!kitchen.is_empty(), "the kitchen has lights");
    assert!(kitchen.iter().any(is_on), "some kitchen light starts on");

    // A stranger: dropped with an audit row, no reply, nothing on CHAT_IN.
    w.tg.user_says(MALLORY, MALLORY, "start bedtime");
    until("the stranger's update to be confirmed", || {
        (w.tg.pending_updates() == 0).then_some(())
    })
    .await;
    let rejected = w
        .home
        .audit()
        .await
        .into_iter()
        .find(|(_, e)| e.kind() == "sender_rejected")
        .expect("a sender_rejected row (written before the cursor moved)");
    assert_eq!(rejected.0, "gateway");
    let AuditEvent::SenderRejected { platform_user, .. } = &rejected.1 else {
        unreachable!()
    };
    assert_eq!(platform_user.as_str(), MALLORY.to_string());
    assert_eq!(
        w.home
            .server
            .stream_state(stream::CHAT_IN)
            .await
            .unwrap()
            .messages,
        0,
        "the stranger published nothing"
    );
    assert!(w.tg.sent().is_empty(), "no reply to the stranger");

    // The owner asks; the card arrives with its steps and Approve / Reject.
    w.tg.user_says(ALICE, ALICE, "start bedtime");
    let card = until("the plan card", || {
        w.tg.sent().into_iter().find(|m| m.reply_markup.is_some())
    })
    .await;
    assert_eq!(card.chat_id, ALICE);
    assert_eq!(card.parse_mode.as_deref(), Some("HTML"));
    let buttons = keyboard(&card);
    let labels: Vec<&str> = buttons.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(labels, ["Approve", "Reject"]);
    for (label, data) in &buttons {
        assert!(
            !data.is_empty() && data.len() <= MAX_CALLBACK_DATA,
            "{label}'s callback_data is {} bytes",
            data.len()
        );
    }
    for step in [
        "1. <b>hue</b> room.set (changes)",
        "2. <b>hue</b> room.set (changes)",
        "3. <b>hue</b> room.set (changes)",
        "4. <b>hue</b> lights.list (reads)",
        "Kitchen lights off: nobody needs them at night.",
        "&quot;room&quot;:&quot;Room 1&quot;",
    ] {
        assert!(
            card.text.contains(step),
            "{step:?} not on the card:\n{}",
            card.text
        );
    }
    assert_eq!(w.home.puts(), 0, "nothing ran before the approval");
    assert!(w.tg.edits().is_empty());

    // Approve.
    let approve = buttons[0].1.clone();
    let press = w.tg.user_presses(ALICE, ALICE, card.message_id, &approve);
    until("the press to be answered", || {
        w.tg.answered_callbacks()
            .into_iter()
            .find(|a| a.callback_query_id == press)
    })
    .await;
    let result = until("the results message", || results(&w.tg).into_iter().next()).await;
    assert_eq!(result.chat_id, ALICE);
    for n in 1..=4 {
        assert!(
            result.text.contains(&format!("✓ {n}. hue ")),
            "step {n} not done:\n{}",
            result.text
        );
    }
    assert!(!result.text.contains('✗'), "{}", result.text);
    let finished = until("the card edited to finished", || {
        w.tg.edits()
            .into_iter()
            .find(|e| e.message_id == card.message_id && e.text.contains("Finished: done."))
    })
    .await;
    assert_eq!(finished.chat_id, ALICE);
    assert!(finished.reply_markup.is_none(), "the buttons are gone");
    // The card went "running" (queued before the execution started), then "finished"; nothing
    // else was edited.
    let edits = w.tg.edits();
    assert_eq!(edits.len(), 2, "{edits:#?}");
    assert!(
        edits
            .iter()
            .all(|e| e.chat_id == ALICE && e.message_id == card.message_id),
        "only the card is edited: {edits:#?}"
    );
    assert!(
        edits[0]
            .text
            .contains(&format!("Approved by telegram:{ALICE}. Running…")),
        "{}",
        edits[0].text
    );
    assert!(edits[0].reply_markup.is_none());
    assert_eq!(edits[1], finished);
    assert!(
        finished.text.contains("room.set") && finished.text.contains("lights.list"),
        "the edited card still shows the steps:\n{}",
        finished.text
    );

    // The kitchen is really dark at the bridge.
    let kitchen = lights_of(&w.home.bridge.resources(), KITCHEN);
    assert!(
        kitchen.iter().all(|l| !is_on(l)),
        "kitchen lights still on: {kitchen:#?}"
    );
    let puts = w.home.puts();
    assert!(puts > 0);
    let tokens = w.home.count_audit("token_issued").await;

    // A second press of Approve: the card's keyboard is gone, so the gateway refuses it before
    // publishing anything (audited, answered with a generic notice); nothing runs again.
    let sent_before = w.tg.sent().len();
    let again = w.tg.user_presses(ALICE, ALICE, card.message_id, &approve);
    let answer = until("the second press to be answered", || {
        w.tg.answered_callbacks()
            .into_iter()
            .find(|a| a.callback_query_id == again)
    })
    .await;
    assert_eq!(answer.text.as_deref(), Some(REFUSED_PRESS_TEXT));
    // The row is written before the press is answered.
    let refused = w
        .home
        .audit()
        .await
        .into_iter()
        .find(|(who, e)| who == "gateway" && e.kind() == "decision_refused")
        .expect("the gateway's decision_refused row");
    let AuditEvent::DecisionRefused { by, code } = &refused.1 else {
        unreachable!()
    };
    assert_eq!(by.as_str(), format!("telegram:{ALICE}"));
    assert_eq!(code.as_str(), "button_not_shown");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.tg.sent().len(), sent_before, "no reply beyond the notice");
    assert_eq!(
        w.home.count_audit("decision_refused").await,
        1,
        "the orchestrator never saw the press"
    );
    assert_eq!(
        results(&w.tg).len(),
        1,
        "one execution, one results message"
    );
    assert_eq!(w.home.puts(), puts, "no further change at the bridge");
    assert_eq!(w.home.count_audit("token_issued").await, tokens);
    assert_eq!(w.home.count_audit("plan_finished").await, 1);

    // Nothing ever went to the stranger.
    assert!(w.tg.sent().iter().all(|m| m.chat_id == ALICE));
    w.shutdown().await;
}
