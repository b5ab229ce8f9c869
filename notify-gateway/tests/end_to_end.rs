//! The issue's Telegram scenario end to end, with every real part except Telegram itself: the
//! Bot API double (`test_support::fake_telegram`), the gateway, a real nats-server with our
//! generated configuration, the orchestrator service (routines only, no model) and the real
//! Hue agent on the agent runtime against the simulated bridge, all in this process.
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_runtime::{Agent as _, AgentContext};
use async_nats::jetstream;
use futures::StreamExt as _;
use hue::Hue;
use notify_gateway::inbound::{Allowlist, REFUSED_PRESS_TEXT};
use notify_gateway::store::Store;
use notify_gateway::telegram::{BotToken, Telegram};
use orchestrator::config::Config;
use orchestrator::service::{self, Deps, Tuning};
use protocol::deploy::AgentConfig;
use protocol::message::AuditEvent;
use protocol::subject::stream;
use protocol::{AgentName, ChannelName, Envelope, Principal};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::fake_hue::{FakeBridge, fixture_with_room_groups, room_aliases};
use test_support::fake_telegram::{FakeTelegram, MAX_CALLBACK_DATA, SentMessage};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The owner, on Telegram (a private chat's id is the user's id).
const ALICE: i64 = 42;
/// Someone who is not on the allowlist.
const MALLORY: i64 = 666;
/// How long any awaited effect may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The simulated bridge's kitchen (`room_aliases()["kitchen"]`).
const KITCHEN: &str = "Room 1";

/// A task stopped through a oneshot.
struct Running<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    async fn stop(self) -> T {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the task stops")
            .unwrap()
    }
}

/// The whole system.
struct World {
    server: NatsServer,
    bridge: FakeBridge,
    tg: FakeTelegram,
    state: tempfile::TempDir,
    hue: Option<Running<()>>,
    orchestrator: Option<Running<Result<(), service::ServiceError>>>,
    gateway: Option<Running<Result<(), notify_gateway::GatewayError>>>,
}

impl World {
    async fn start() -> World {
        let server = NatsServer::start(&["hue"]).await.unwrap();
        let bridge = FakeBridge::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            fixture_with_room_groups(),
        )
        .await
        .unwrap();
        let tg = FakeTelegram::start().await.unwrap();
        let mut w = World {
            server,
            bridge,
            tg,
            state: tempfile::tempdir().unwrap(),
            hue: None,
            orchestrator: None,
            gateway: None,
        };
        w.start_hue().await;
        w.start_orchestrator().await;
        w.start_gateway().await;
        w
    }

    /// The Hue agent's configuration, as the sandbox would write it.
    fn hue_config(&self) -> AgentConfig {
        let identity = self.server.layout().root().to_path_buf();
        let key_file = identity.join("secrets/hue.key");
        std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
        std::fs::write(&key_file, self.bridge.application_key()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let data = self.state.path().join("hue-data");
        std::fs::create_dir_all(&data).unwrap();
        AgentConfig::from_json(
            &serde_json::to_vec(&json!({
                "name": "hue",
                "nats_url": self.server.url(),
                "identity_dir": identity,
                "data_dir": data,
                "heartbeat_interval_ms": 60000,
                "max_concurrency": 4,
                "shutdown_grace_ms": 5000,
                "egress_proxy": null,
                "isolation": {"level": "none", "measures": [], "missing": ["in-process test"]},
                "confine": null,
                "settings": {
                    "bridge": self.bridge.addr().to_string(),
                    "application_key_file": "secrets/hue.key",
                    "bridge_cert_sha256": self.bridge.cert_sha256(),
                    "request_timeout_ms": 4000
                }
            }))
            .unwrap(),
        )
        .unwrap()
    }

    /// The real Hue agent on the agent runtime, in process; waits for its first heartbeat.
    async fn start_hue(&mut self) {
        let config = self.hue_config();
        agent_runtime::entry::check_config(&config).unwrap();
        let settings = agent_runtime::entry::parse_settings::<Hue>(&config).unwrap();
        let hue = Hue::new(settings, &AgentContext::from_config(&config)).unwrap();
        let watcher = self
            .server
            .connect(&Principal::orchestrator())
            .await
            .unwrap();
        let mut status = watcher.subscribe("status.hue").await.unwrap();
        watcher.flush().await.unwrap();
        let client = self
            .server
            .connect(&Principal::new("hue").unwrap())
            .await
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent_runtime::run(config, hue, client, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        tokio::time::timeout(WAIT, status.next())
            .await
            .expect("a heartbeat from the Hue agent")
            .unwrap();
        self.hue = Some(Running { stop, task });
    }

    /// The orchestrator service in process: routines only, the owner is Alice on Telegram.
    async fn start_orchestrator(&mut self) {
        let text = format!(
            r#"
nats_url = "{url}"
home = "{home}"
state_db = "{db}"
owners = ["telegram:{ALICE}"]
agents = ["hue"]
[approval]
ttl_secs = 600
require = "change"
"#,
            url = self.server.url(),
            home = self.server.layout().root().display(),
            db = self.state.path().join("orchestrator.db").display(),
        );
        let config = Config::from_toml(&text).unwrap();
        let planner = orchestrator::plan::Planners::with_rooms(
            orchestrator::catalog::Catalog::enabled(&[AgentName::new("hue").unwrap()]),
            None,
            &room_aliases(),
        )
        .unwrap();
        let deps = Deps {
            client: self
                .server
                .connect(&Principal::orchestrator())
                .await
                .unwrap(),
            layout: self.server.layout().clone(),
            planner,
            agent_control: None,
            composer: None,
            clock: Arc::new(orchestrator::clock::SystemClock),
            fault: None,
            tuning: Tuning {
                tick: Duration::from_millis(100),
                ..Tuning::default()
            },
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service::run(config, deps, async {
            let _ = stopped.await;
        }));
        self.orchestrator = Some(Running { stop, task });
    }

    /// The gateway's Telegram channel against the Bot API double; only Alice is allowed.
    async fn start_gateway(&mut self) {
        let channel = Telegram::new(
            &BotToken::new(self.tg.token()),
            Some(url::Url::parse(&self.tg.api_url()).unwrap()),
            Duration::from_secs(1),
            ChannelName::new("telegram").unwrap(),
        );
        let client = self.server.connect(&Principal::gateway()).await.unwrap();
        let store = Store::open(&self.state.path().join("gateway.sqlite")).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(notify_gateway::run(
            channel,
            Allowlist::new([ALICE.to_string()]),
            client,
            store,
            async move {
                let _ = stopped.await;
            },
        ));
        self.gateway = Some(Running { stop, task });
    }

    /// Every audit event so far, as (`audit.<actor>` actor, event).
    async fn audit(&self) -> Vec<(String, AuditEvent)> {
        let js = jetstream::new(self.server.admin().await.unwrap());
        let mut s = js.get_stream(stream::AUDIT).await.unwrap();
        let last = s.info().await.unwrap().state.last_sequence;
        let mut rows = Vec::new();
        for seq in 1..=last {
            let m = s.get_raw_message(seq).await.unwrap();
            let actor = m.subject.as_str().trim_start_matches("audit.").to_owned();
            rows.push((
                actor,
                Envelope::<AuditEvent>::decode(&m.payload).unwrap().body,
            ));
        }
        rows
    }

    async fn count_audit(&self, kind: &str) -> usize {
        self.audit()
            .await
            .iter()
            .filter(|(_, e)| e.kind() == kind)
            .count()
    }

    /// Changes the agent made at the bridge.
    fn puts(&self) -> usize {
        self.bridge
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count()
    }

    async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.stop().await.unwrap();
        }
        if let Some(o) = self.orchestrator.take() {
            o.stop().await.unwrap();
        }
        if let Some(h) = self.hue.take() {
            h.stop().await;
        }
    }
}

/// Waits (polling, bounded) until `f` returns something.
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lights of a room, from the bridge's resources (room → devices → light services).
fn lights_of(resources: &[Value], room: &str) -> Vec<Value> {
    let by_id = |id: &str| resources.iter().find(|r| r["id"] == id);
    let room = resources
        .iter()
        .find(|r| r["type"] == "room" && r["metadata"]["name"] == room)
        .unwrap_or_else(|| panic!("no room {room}"));
    room["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| by_id(c["rid"].as_str().unwrap()))
        .flat_map(|d| d["services"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["rtype"] == "light")
        .map(|s| by_id(s["rid"].as_str().unwrap()).unwrap().clone())
        .collect()
}

fn is_on(light: &Value) -> bool {
    light["on"]["on"].as_bool().unwrap()
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
    let kitchen = lights_of(&w.bridge.resources(), KITCHEN);
    assert!(!kitchen.is_empty(), "the kitchen has lights");
    assert!(kitchen.iter().any(is_on), "some kitchen light starts on");

    // A stranger: dropped with an audit row, no reply, nothing on CHAT_IN.
    w.tg.user_says(MALLORY, MALLORY, "start bedtime");
    until("the stranger's update to be confirmed", || {
        (w.tg.pending_updates() == 0).then_some(())
    })
    .await;
    let rejected = w
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
        w.server
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
    assert_eq!(w.puts(), 0, "nothing ran before the approval");
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
    let kitchen = lights_of(&w.bridge.resources(), KITCHEN);
    assert!(
        kitchen.iter().all(|l| !is_on(l)),
        "kitchen lights still on: {kitchen:#?}"
    );
    let puts = w.puts();
    assert!(puts > 0);
    let tokens = w.count_audit("token_issued").await;

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
        w.count_audit("decision_refused").await,
        1,
        "the orchestrator never saw the press"
    );
    assert_eq!(
        results(&w.tg).len(),
        1,
        "one execution, one results message"
    );
    assert_eq!(w.puts(), puts, "no further change at the bridge");
    assert_eq!(w.count_audit("token_issued").await, tokens);
    assert_eq!(w.count_audit("plan_finished").await, 1);

    // Nothing ever went to the stranger.
    assert!(w.tg.sent().iter().all(|m| m.chat_id == ALICE));
    w.shutdown().await;
}
