//! The bedtime scenario end to end on the web chat, with every real part: the page server and
//! the gateway over real HTTP, a real nats-server with our generated configuration, the
//! orchestrator service (routines only, no model) and the real Hue agent on the agent runtime
//! against the simulated bridge, all in this process.
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_runtime::{Agent as _, AgentContext};
use async_nats::jetstream;
use futures::StreamExt as _;
use hue::Hue;
use notify_gateway::store::Store;
use notify_gateway::webchat::WebChat;
use notify_gateway::webchat::history::History;
use notify_gateway::webchat::token::WebToken;
use orchestrator::config::Config;
use orchestrator::service::{self, Deps, Tuning};
use protocol::deploy::AgentConfig;
use protocol::message::AuditEvent;
use protocol::subject::stream;
use protocol::{AgentName, ChannelName, Envelope, Principal};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::fake_hue::{FakeBridge, fixture_with_room_groups, room_aliases};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The web chat's user, as the orchestrator knows them.
const OWNER: &str = "web:owner";
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
    token: WebToken,
    base: String,
    http: reqwest::Client,
    state: tempfile::TempDir,
    hue: Option<Running<()>>,
    orchestrator: Option<Running<Result<(), service::ServiceError>>>,
    gateway: Option<Running<Result<(), notify_gateway::GatewayError>>>,
    page: Option<Running<std::io::Result<()>>>,
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
        let state = tempfile::tempdir().unwrap();
        let token = WebToken::load_or_create(&state.path().join("web-token")).unwrap();
        let mut w = World {
            server,
            bridge,
            token,
            base: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
            state,
            hue: None,
            orchestrator: None,
            gateway: None,
            page: None,
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

    /// The orchestrator service in process: routines only, the owner is the web chat's user.
    async fn start_orchestrator(&mut self) {
        let text = format!(
            r#"
nats_url = "{url}"
home = "{home}"
state_db = "{db}"
owners = ["{OWNER}"]
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

    /// The gateway's web chat: the page server on a loopback port and the gateway's loops.
    async fn start_gateway(&mut self) {
        let db = self.state.path().join("gateway.sqlite");
        let chat = WebChat::new(
            ChannelName::new("web").unwrap(),
            "owner",
            History::open(&db).unwrap(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(notify_gateway::webchat::http::serve(
            listener,
            chat.clone(),
            self.token.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        self.page = Some(Running { stop, task });
        let client = self.server.connect(&Principal::gateway()).await.unwrap();
        let store = Store::open(&db).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let allow = chat.allowlist();
        let task = tokio::spawn(notify_gateway::run(
            chat,
            allow,
            client,
            store,
            async move {
                let _ = stopped.await;
            },
        ));
        self.gateway = Some(Running { stop, task });
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
        if let Some(p) = self.page.take() {
            p.stop().await.unwrap();
        }
        if let Some(o) = self.orchestrator.take() {
            o.stop().await.unwrap();
        }
        if let Some(h) = self.hue.take() {
            h.stop().await;
        }
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
    let kitchen = lights_of(&w.bridge.resources(), KITCHEN);
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
    assert_eq!(w.puts(), 0, "nothing ran before the approval");
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
    let kitchen = lights_of(&w.bridge.resources(), KITCHEN);
    assert!(
        kitchen.iter().all(|l| !is_on(l)),
        "kitchen lights still on: {kitchen:#?}"
    );
    let puts = w.puts();
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
        w.count_audit("decision_refused").await,
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
    assert_eq!(w.puts(), puts, "no further change at the bridge");
    assert_eq!(w.count_audit("plan_finished").await, 1);
    w.shutdown().await;
}
