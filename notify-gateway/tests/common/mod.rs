//! The home side shared by the gateway's end-to-end tests (`end_to_end.rs`,
//! `slack_end_to_end.rs`, `webchat_end_to_end.rs`): a real nats-server with our generated
//! configuration, the simulated Hue bridge, the real Hue agent on the agent runtime and the
//! orchestrator service (routines only, no model), all in this process, plus the small helpers
//! those scenarios read the home with (the audit stream, the bridge's changes, a room's lights).
//!
//! It does not start a gateway or any chat platform's double, and it asserts nothing about a
//! channel: each test file starts its own channel against its own double and keeps its own
//! scenario and assertions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_runtime::{Agent as _, AgentContext};
use async_nats::jetstream;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use hue::Hue;
use orchestrator::config::Config;
use orchestrator::service::{self, Deps, Tuning};
use protocol::deploy::AgentConfig;
use protocol::message::AuditEvent;
use protocol::subject::stream;
use protocol::{AgentName, Envelope, Principal};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::fake_hue::{FakeBridge, fixture_with_room_groups, room_aliases};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any awaited effect may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// The simulated bridge's kitchen (`room_aliases()["kitchen"]`).
pub(crate) const KITCHEN: &str = "Room 1";

/// A task stopped through a oneshot.
pub(crate) struct Running<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
}

impl<T: Send + 'static> Running<T> {
    /// Spawns the task `start` builds; the future it is given completes when the task is
    /// asked to stop.
    pub(crate) fn spawn<F>(start: impl FnOnce(BoxFuture<'static, ()>) -> F) -> Running<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(start(Box::pin(async move {
            let _ = stopped.await;
        })));
        Running { stop, task }
    }

    /// Asks the task to stop and waits (bounded) for what it returns.
    pub(crate) async fn stop(self) -> T {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the task stops")
            .unwrap()
    }
}

/// The home: the server, the bridge, the Hue agent and the orchestrator, running.
pub(crate) struct Home {
    pub(crate) server: NatsServer,
    pub(crate) bridge: FakeBridge,
    /// The state directory (the orchestrator's database, the agent's data; the gateway's
    /// files go here too).
    pub(crate) state: tempfile::TempDir,
    hue: Running<()>,
    orchestrator: Running<Result<(), service::ServiceError>>,
}

impl Home {
    /// Starts the home; `owner` is the orchestrator's owner as a principal on a channel
    /// (e.g. `telegram:42`). Returns once the Hue agent has sent its first heartbeat.
    pub(crate) async fn start(owner: &str) -> Home {
        let server = NatsServer::start(&["hue"]).await.unwrap();
        let bridge = FakeBridge::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            fixture_with_room_groups(),
        )
        .await
        .unwrap();
        let state = tempfile::tempdir().unwrap();
        let hue = start_hue(&server, &bridge, &state).await;
        let orchestrator = start_orchestrator(&server, &state, owner).await;
        Home {
            server,
            bridge,
            state,
            hue,
            orchestrator,
        }
    }

    /// Every audit event so far, as (`audit.<actor>` actor, event).
    pub(crate) async fn audit(&self) -> Vec<(String, AuditEvent)> {
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

    pub(crate) async fn count_audit(&self, kind: &str) -> usize {
        self.audit()
            .await
            .iter()
            .filter(|(_, e)| e.kind() == kind)
            .count()
    }

    /// Changes the agent made at the bridge.
    pub(crate) fn puts(&self) -> usize {
        self.bridge
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count()
    }

    /// Stops the orchestrator, then the Hue agent (stop the gateway first).
    pub(crate) async fn stop(self) {
        self.orchestrator.stop().await.unwrap();
        self.hue.stop().await;
    }
}

/// The Hue agent's configuration, as the sandbox would write it.
fn hue_config(server: &NatsServer, bridge: &FakeBridge, state: &tempfile::TempDir) -> AgentConfig {
    let identity = server.layout().root().to_path_buf();
    let key_file = identity.join("secrets/hue.key");
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, bridge.application_key()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let data = state.path().join("hue-data");
    std::fs::create_dir_all(&data).unwrap();
    AgentConfig::from_json(
        &serde_json::to_vec(&json!({
            "name": "hue",
            "nats_url": server.url(),
            "identity_dir": identity,
            "data_dir": data,
            "heartbeat_interval_ms": 60000,
            "max_concurrency": 4,
            "shutdown_grace_ms": 5000,
            "egress_proxy": null,
            "isolation": {"level": "none", "measures": [], "missing": ["in-process test"]},
            "confine": null,
            "settings": {
                "bridge": bridge.addr().to_string(),
                "application_key_file": "secrets/hue.key",
                "bridge_cert_sha256": bridge.cert_sha256(),
                "request_timeout_ms": 4000
            }
        }))
        .unwrap(),
    )
    .unwrap()
}

/// The real Hue agent on the agent runtime, in process; waits for its first heartbeat.
async fn start_hue(
    server: &NatsServer,
    bridge: &FakeBridge,
    state: &tempfile::TempDir,
) -> Running<()> {
    let config = hue_config(server, bridge, state);
    agent_runtime::entry::check_config(&config).unwrap();
    let settings = agent_runtime::entry::parse_settings::<Hue>(&config).unwrap();
    let hue = Hue::new(settings, &AgentContext::from_config(&config)).unwrap();
    let watcher = server.connect(&Principal::orchestrator()).await.unwrap();
    let mut status = watcher.subscribe("status.hue").await.unwrap();
    watcher.flush().await.unwrap();
    let client = server
        .connect(&Principal::new("hue").unwrap())
        .await
        .unwrap();
    let running = Running::spawn(|stopped| async move {
        agent_runtime::run(config, hue, client, stopped)
            .await
            .unwrap();
    });
    tokio::time::timeout(WAIT, status.next())
        .await
        .expect("a heartbeat from the Hue agent")
        .unwrap();
    running
}

/// The orchestrator service in process: routines only, `owner` is its only owner.
async fn start_orchestrator(
    server: &NatsServer,
    state: &tempfile::TempDir,
    owner: &str,
) -> Running<Result<(), service::ServiceError>> {
    let text = format!(
        r#"
nats_url = "{url}"
home = "{home}"
state_db = "{db}"
owners = ["{owner}"]
agents = ["hue"]
[approval]
ttl_secs = 600
require = "change"
"#,
        url = server.url(),
        home = server.layout().root().display(),
        db = state.path().join("orchestrator.db").display(),
    );
    let config = Config::from_toml(&text).unwrap();
    let planner = orchestrator::plan::Planners::with_rooms(
        orchestrator::catalog::Catalog::enabled(&[AgentName::new("hue").unwrap()]),
        None,
        &room_aliases(),
    )
    .unwrap();
    let deps = Deps {
        client: server.connect(&Principal::orchestrator()).await.unwrap(),
        layout: server.layout().clone(),
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
    Running::spawn(|stopped| service::run(config, deps, stopped))
}

/// Waits (polling, bounded) until `f` returns something.
// The web chat's scenario polls its page over HTTP instead (an async check).
#[allow(dead_code)]
pub(crate) async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
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
pub(crate) fn lights_of(resources: &[Value], room: &str) -> Vec<Value> {
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

pub(crate) fn is_on(light: &Value) -> bool {
    light["on"]["on"].as_bool().unwrap()
}
