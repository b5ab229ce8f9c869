//! The bedtime scenario end to end on the web chat, with every real part: the page server and
//! the gateway over real HTTP, a real nats-server with our generated configuration, the
//! orchestrator service (routines only, no model) and the real Hue agent on the agent runtime
//! against the simulated bridge, all in this process. The home side (server, bridge, agent,
//! orchestrator) is the shared harness in `tests/common`.
//!
//! "start bedtime" posted → the plan card with Approve / Reject appears on `/api/messages` →
//! Approve pressed → the card is updated, the results appear, and the kitchen's lights are
//! really off at the bridge. A second press is refused by the gateway (the card no longer shows
//! the button) before anything is published.
#![cfg(feature = "web")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use common::{Home, KITCHEN, Running, WAIT, is_on, lights_of};
use notify_gateway::store::Store;
use notify_gateway::webchat::WebChat;
use notify_gateway::webchat::history::History;
use notify_gateway::webchat::token::WebToken;
use protocol::message::AuditEvent;
use protocol::{ChannelName, Principal};
use serde_json::{Value, json};

/// The web chat's user, as the orchestrator knows them.
const OWNER: &str = "web:owner";

/// The whole system: the home (`common::Home`), the page server and the gateway.
struct World {
    home: Home,
    token: WebToken,
    base: String,
    http: reqwest::Client,
    page: Running<std::io::Result<()>>,
    gateway: Running<Result<(), notify_gateway::GatewayError>>,
}

impl World {
    /// The home with the web chat's user as the owner, then the gateway's web chat: the page
    /// server on a loopback port and the gateway's loops.
    async fn start() -> World {
        let home = Home::start(OWNER).await;
        let token = WebToken::load_or_create(&home.state.path().join("web-token")).unwrap();
        let db = home.state.path().join("gateway.sqlite");
        let chat = WebChat::new(
            ChannelName::new("web").unwrap(),
            "owner",
            History::open(&db).unwrap(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let page = Running::spawn(|stopped| {
            notify_gateway::webchat::http::serve(listener, chat.clone(), token.clone(), stopped)
        });
        let client = home.server.connect(&Principal::gateway()).await.unwrap();
        let store = Store::open(&db).unwrap();
        let allow = chat.allowlist();
        let gateway =
            Running::spawn(|stopped| notify_gateway::run(chat, allow, client, store, stopped));
        World {
            home,
            token,
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
            page,
            gateway,
        }
    }

    /// POSTs JSON with the token; returns the status and the JSON answer.
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token.expose()))
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
        )
    }

    /// The whole conversation, as the page reads it.
    async fn messages(&self) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/api/messages?after=0&wait_ms=0", self.base))
            .header("Authorization", format!("Bearer {}", self.token.expose()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        body["messages"].as_array().unwrap().clone()
    }

    /// Waits until the conversation holds a message satisfying `f`.
    async fn until_message(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.messages().await.into_iter().find(|m| f(m)) {
                return m;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(self) {
        self.gateway.stop().await.unwrap();
        self.page.stop().await.unwrap();
        self.home.stop().await;
    }
}

fn text(m: &Value) -> &str {
    m["text"].as_str().unwrap()
}

fn button_payload(m: &Value, label: &str) -> String {
    m["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == label)
        .unwrap_or_else(|| panic!("no {label} button on {m:#}"))["payload"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn start_bedtime_on_the_web_chat_approve_and_the_kitchen_goes_dark() {
    let w = World::start().await;
    let kitchen = lights_of(&w.home.bridge.resources(), KITCHEN);
    assert!(!kitchen.is_empty(), "the kitchen has lights");
    assert!(kitchen.iter().any(is_on), "some kitchen light starts on");

    // The owner asks on the page.
    let (status, answer) = w
        .post(
            "/api/messages",
            json!({"client_id": "5e0c7c2a-0000-4000-8000-00000000b001", "text": "start bedtime"}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");

    // The card arrives with its steps and Approve / Reject.
    let card = w
        .until_message("the plan card", |m| {
            m["author"] == "assistant" && !m["buttons"].as_array().unwrap().is_empty()
        })
        .await;
    let labels: Vec<&str> = card["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["Approve", "Reject"]);
    for step in [
        "1. hue room.set (changes)",
        "2. hue room.set (changes)",
        "3. hue room.set (changes)",
        "4. hue lights.list (reads)",
        "Why: Kitchen lights off: nobody needs them at night.",
        r#""room":"Room 1""#,
    ] {
        assert!(
            text(&card).contains(step),
            "{step:?} not on the card:\n{}",
            text(&card)
        );
    }
    assert_eq!(w.home.puts(), 0, "nothing ran before the approval");
    let card_id = card["id"].as_str().unwrap().to_owned();

    // Approve.
    let approve = button_payload(&card, "Approve");
    let (status, answer) = w
        .post(
            "/api/press",
            json!({"message_id": card_id, "payload": approve}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let result = w
        .until_message("the results message", |m| text(m).contains("\nRef "))
        .await;
    for n in 1..=4 {
        assert!(
            text(&result).contains(&format!("✓ {n}. hue ")),
            "step {n} not done:\n{}",
            text(&result)
        );
    }
    assert!(!text(&result).contains('✗'), "{}", text(&result));
    let finished = w
        .until_message("the card updated to finished", |m| {
            m["id"] == card_id.as_str() && text(m).contains("Finished: done.")
        })
        .await;
    assert_eq!(finished["buttons"], json!([]), "the buttons are gone");
    assert!(
        text(&finished).contains("room.set") && text(&finished).contains("lights.list"),
        "the updated card still shows the steps:\n{}",
        text(&finished)
    );

    // The kitchen is really dark at the bridge.
    let kitchen = lights_of(&w.home.bridge.resources(), KITCHEN);
    assert!(
        kitchen.iter().all(|l| !is_on(l)),
        "kitchen lights still on: {kitchen:#?}"
    );
    let puts = w.home.puts();
    assert!(puts > 0);

    // A second press of Approve: refused by the gateway before publishing; nothing runs again.
    let (status, answer) = w
        .post(
            "/api/press",
            json!({"message_id": card_id, "payload": approve}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "button_not_shown");
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
    assert_eq!(by.as_str(), OWNER);
    assert_eq!(code.as_str(), "button_not_shown");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.home.count_audit("decision_refused").await,
        1,
        "the orchestrator never saw it"
    );
    let results = w
        .messages()
        .await
        .into_iter()
        .filter(|m| text(m).contains("\nRef "))
        .count();
    assert_eq!(results, 1, "one execution, one results message");
    assert_eq!(w.home.puts(), puts, "no further change at the bridge");
    assert_eq!(w.home.count_audit("plan_finished").await, 1);
    w.shutdown().await;
}
