//! The bedtime scenario on Slack end to end, with every real part except Slack itself: the
//! Slack double (`test_support::fake_slack`, Web API + Socket Mode), the gateway's Slack
//! channel, a real nats-server with our generated configuration, the orchestrator service
//! (routines only, no model) and the real Hue agent on the agent runtime against the simulated
//! bridge, all in this process. The home side (server, bridge, agent, orchestrator) is the
//! shared harness in `tests/common`.
//!
//! "start bedtime" in a DM → the plan card arrives with Block Kit buttons → Approve
//! (`block_actions` over Socket Mode) → the card is updated and its buttons removed, the
//! results are posted, and the kitchen's lights are really off at the bridge. A second press
//! changes nothing (the card no longer shows the button, so the gateway refuses it before
//! publishing); a stranger gets no reply and publishes nothing.
#![cfg(feature = "slack")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{Home, KITCHEN, Running, WAIT, is_on, lights_of, until};
use notify_gateway::inbound::Allowlist;
use notify_gateway::slack::{Slack, SlackSettings, SlackToken};
use notify_gateway::store::Store;
use protocol::message::AuditEvent;
use protocol::subject::stream;
use protocol::{ChannelName, Principal};
use serde_json::Value;
use test_support::fake_slack::{APP_TOKEN, BOT_TOKEN, FakeSlack, Posted, TEAM_ID};

/// The owner, on Slack, and her direct-message conversation with the app.
const ALICE: &str = "U0ALICE01";
const ALICE_DM: &str = "D0ALICE01";
/// Someone who is not on the allowlist, and their DM with the app.
const MALLORY: &str = "U0MALLORY";
const MALLORY_DM: &str = "D0MALLORY";

/// The whole system: the home (`common::Home`), the Slack double and the gateway.
struct World {
    home: Home,
    slack: FakeSlack,
    gateway: Running<Result<(), notify_gateway::GatewayError>>,
}

impl World {
    /// The home with Alice on Slack as the owner, then the double and the gateway's Slack
    /// channel (Socket Mode) against it; only Alice is allowed.
    async fn start() -> World {
        let home = Home::start(&format!("slack:{ALICE}")).await;
        provision::client::install_crypto_provider();
        let slack = FakeSlack::start().await.unwrap();
        let settings = SlackSettings {
            bot_token: SlackToken::new(BOT_TOKEN),
            api_url: slack.api_url(),
            team_id: Some(TEAM_ID.to_owned()),
            poll_wait: Duration::from_secs(1),
        };
        let channel = Slack::socket_mode(
            ChannelName::new("slack").unwrap(),
            settings,
            SlackToken::new(APP_TOKEN),
        )
        .unwrap();
        let client = home.server.connect(&Principal::gateway()).await.unwrap();
        let store = Store::open(&home.state.path().join("gateway.sqlite")).unwrap();
        let gateway = Running::spawn(|stopped| {
            notify_gateway::run(channel, Allowlist::new([ALICE]), client, store, stopped)
        });
        World {
            home,
            slack,
            gateway,
        }
    }

    async fn shutdown(self) {
        self.gateway.stop().await.unwrap();
        self.home.stop().await;
    }
}

/// The buttons of a posted message's actions block, as (label, value).
fn buttons(blocks: &Value) -> Vec<(String, String)> {
    blocks
        .as_array()
        .map(|b| b.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["text"]["text"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The text of a posted message's section blocks.
fn section_text(blocks: &Value) -> String {
    blocks
        .as_array()
        .map(|b| b.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|b| b["type"] == "section")
        .map(|b| b["text"]["text"].as_str().unwrap().to_owned())
        .collect()
}

fn results(slack: &FakeSlack) -> Vec<Posted> {
    slack
        .posted()
        .into_iter()
        .filter(|m| m.text.contains("\nRef "))
        .collect()
}

#[tokio::test]
async fn start_bedtime_on_slack_approve_and_the_kitchen_goes_dark() {
    let w = World::start().await;
    let kitchen = lights_of(&w.home.bridge.resources(), KITCHEN);
    assert!(!kitchen.is_empty(), "the kitchen has lights");
    assert!(kitchen.iter().any(is_on), "some kitchen light starts on");

    // A stranger: dropped with an audit row (written before the envelope is acknowledged), no
    // reply, nothing on CHAT_IN.
    let stranger = w.slack.user_says(MALLORY, MALLORY_DM, "start bedtime");
    assert!(w.slack.wait_for_ack(&stranger, WAIT).await);
    let rejected = w
        .home
        .audit()
        .await
        .into_iter()
        .find(|(_, e)| e.kind() == "sender_rejected")
        .expect("a sender_rejected row");
    assert_eq!(rejected.0, "gateway");
    let AuditEvent::SenderRejected { platform_user, .. } = &rejected.1 else {
        unreachable!()
    };
    assert_eq!(platform_user.as_str(), MALLORY);
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
    assert!(w.slack.posted().is_empty(), "no reply to the stranger");

    // The owner asks in her DM; the card arrives with its steps and Approve / Reject buttons.
    w.slack.user_says(ALICE, ALICE_DM, "start bedtime");
    let card = until("the plan card", || {
        w.slack
            .posted()
            .into_iter()
            .find(|m| !buttons(&m.blocks).is_empty())
    })
    .await;
    assert_eq!(card.channel, ALICE_DM);
    let shown = buttons(&card.blocks);
    let labels: Vec<&str> = shown.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(labels, ["Approve", "Reject"]);
    for (label, value) in &shown {
        assert!(
            !value.is_empty() && value.len() <= protocol::message::MAX_BUTTON_PAYLOAD,
            "{label}'s value is {} bytes",
            value.len()
        );
    }
    let text = section_text(&card.blocks);
    for step in [
        "1. *hue* `room.set` (changes)",
        "2. *hue* `room.set` (changes)",
        "3. *hue* `room.set` (changes)",
        "4. *hue* `lights.list` (reads)",
        "Kitchen lights off: nobody needs them at night.",
        "\"room\":\"Room 1\"",
    ] {
        assert!(text.contains(step), "{step:?} not on the card:\n{text}");
    }
    assert_eq!(w.home.puts(), 0, "nothing ran before the approval");
    assert!(w.slack.updates().is_empty());

    // Approve, as a block_actions press over Socket Mode.
    let approve = shown[0].1.clone();
    let press = w.slack.user_presses(ALICE, ALICE_DM, &card.ts, &approve);
    assert!(w.slack.wait_for_ack(&press, WAIT).await);
    let result = until("the results message", || {
        results(&w.slack).into_iter().next()
    })
    .await;
    assert_eq!(result.channel, ALICE_DM);
    for n in 1..=4 {
        assert!(
            result.text.contains(&format!("✓ {n}. hue ")),
            "step {n} not done:\n{}",
            result.text
        );
    }
    assert!(!result.text.contains('✗'), "{}", result.text);
    let finished = until("the card updated to finished", || {
        w.slack
            .updates()
            .into_iter()
            .find(|u| u.ts == card.ts && u.text.contains("Finished: done."))
    })
    .await;
    assert_eq!(finished.channel, ALICE_DM);
    assert!(buttons(&finished.blocks).is_empty(), "the buttons are gone");
    let updates = w.slack.updates();
    assert!(
        updates
            .iter()
            .all(|u| u.channel == ALICE_DM && u.ts == card.ts),
        "only the card is updated: {updates:#?}"
    );
    assert!(
        updates[0]
            .text
            .contains(&format!("Approved by slack:{ALICE}. Running…")),
        "{}",
        updates[0].text
    );
    assert!(buttons(&updates[0].blocks).is_empty());
    assert!(
        finished.text.contains("room.set") && finished.text.contains("lights.list"),
        "the updated card still shows the steps:\n{}",
        finished.text
    );
    // The message as Slack now shows it has no buttons.
    let now = w.slack.message(ALICE_DM, &card.ts).unwrap();
    assert!(buttons(&now["blocks"]).is_empty());

    // The kitchen is really dark at the bridge.
    let kitchen = lights_of(&w.home.bridge.resources(), KITCHEN);
    assert!(
        kitchen.iter().all(|l| !is_on(l)),
        "kitchen lights still on: {kitchen:#?}"
    );
    let puts = w.home.puts();
    assert!(puts > 0);
    let tokens = w.home.count_audit("token_issued").await;

    // A second press of Approve: the card no longer shows it, so the gateway refuses it before
    // publishing anything (audited, then acknowledged); nothing runs again.
    let posted_before = w.slack.posted().len();
    let again = w.slack.user_presses(ALICE, ALICE_DM, &card.ts, &approve);
    assert!(w.slack.wait_for_ack(&again, WAIT).await);
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
    assert_eq!(by.as_str(), format!("slack:{ALICE}"));
    assert_eq!(code.as_str(), "button_not_shown");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.slack.posted().len(), posted_before, "no reply");
    assert_eq!(
        w.home.count_audit("decision_refused").await,
        1,
        "the orchestrator never saw the press"
    );
    assert_eq!(
        results(&w.slack).len(),
        1,
        "one execution, one results message"
    );
    assert_eq!(w.home.puts(), puts, "no further change at the bridge");
    assert_eq!(w.home.count_audit("token_issued").await, tokens);
    assert_eq!(w.home.count_audit("plan_finished").await, 1);

    // Nothing ever went to the stranger.
    assert!(w.slack.posted().iter().all(|m| m.channel == ALICE_DM));
    w.shutdown().await;
}
