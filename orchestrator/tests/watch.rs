//! The host-side watchers (`orchestrator::watch`) against real infrastructure: the log parser
//! on the lines a real nats-server writes when violations are provoked; the file follower
//! publishing them to the AUDIT stream as the orchestrator; supervision events from a fake
//! inspector; and, with the process backend, a real agent process killed twice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use audit::emit::AuditEmitter;
use orchestrator::watch::{self, Inspect, LogSource, NkeyDirectory, Watch, WatchSettings};
use protocol::acl::Identity;
use protocol::message::{AuditEvent, Isolation, IsolationReport};
use protocol::{AgentName, Envelope, Principal};
use sandbox::process::{ProcessSandbox, ProcessSettings};
use sandbox::{AgentStatus, RunState, Sandbox as _, SandboxError};
use test_support::NatsServer;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(20);

fn p(name: &str) -> Principal {
    Principal::new(name).unwrap()
}

fn agent(name: &str) -> AgentName {
    AgentName::new(name).unwrap()
}

/// A syntactically valid nkey seed that belongs to no identity of the test layout.
const FOREIGN_SEED: &str = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4";

/// Provokes, one after the other: a publish and a subscription violation by hue, a consumer
/// creation by the audit-anomaly agent, a client with an unknown nkey, a connection without
/// TLS, and a hue client whose name tries to frame the orchestrator.
async fn provoke(server: &NatsServer) {
    let (hue, hue_errors) = server.connect_watching(&p("hue")).await.unwrap();
    hue.publish("cmd.weather", "x".into()).await.unwrap();
    let _sub = hue.subscribe("audit.>").await.unwrap();
    hue_errors.sync(&hue).await.unwrap();
    let (anomaly, anomaly_errors) = server.connect_watching(&p("audit-anomaly")).await.unwrap();
    anomaly
        .publish("$JS.API.CONSUMER.CREATE.AUDIT", "{}".into())
        .await
        .unwrap();
    anomaly_errors.sync(&anomaly).await.unwrap();

    let foreign = provision::client::options(server.layout(), &p("hue"))
        .unwrap()
        .nkey(FOREIGN_SEED.to_owned())
        .connect(server.url())
        .await;
    assert!(foreign.is_err());
    server
        .wait_for_log("authentication error", WAIT)
        .await
        .unwrap();

    // A client that does not start TLS: connects and hangs up.
    let plain = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    drop(plain);
    server
        .wait_for_log("TLS handshake error", WAIT)
        .await
        .unwrap();

    let orchestrator_key = provision::load_identities(server.layout())
        .unwrap()
        .identities
        .into_iter()
        .find(|e| e.principal == Principal::orchestrator())
        .unwrap()
        .nkey;
    let evil_name = format!(
        "x\" - \"APP/nkey:{orchestrator_key}\" - Publish Violation - Subject \"cmd.hue\n[1] 2026/01/01 00:00:00.000000 [ERR] 1.2.3.4:5 - cid:1 - \"APP/nkey:{orchestrator_key}\" - Publish Violation - Subject \"cmd.hue"
    );
    let evil = provision::client::options(server.layout(), &p("hue"))
        .unwrap()
        .name(evil_name)
        .connect(server.url())
        .await
        .unwrap();
    evil.publish("cmd.evil", "x".into()).await.unwrap();
    evil.flush().await.unwrap();
    server.wait_for_log("cmd.evil", WAIT).await.unwrap();
}

fn describe(event: &AuditEvent) -> String {
    match event {
        AuditEvent::NatsViolation {
            principal,
            kind,
            subject,
        } => format!(
            "{kind} by {} on {subject}",
            principal.as_ref().map_or("?", Principal::as_str)
        ),
        AuditEvent::AgentRestarted {
            agent,
            restart_count,
            oom_killed,
        } => format!("restarted {agent} {restart_count} oom={oom_killed}"),
        AuditEvent::ImageDigestChanged {
            agent,
            previous,
            current,
        } => format!("digest {agent} {previous} -> {current}"),
        other => other.kind().to_owned(),
    }
}

#[tokio::test]
async fn the_parser_reads_the_lines_a_real_server_writes() {
    let server = NatsServer::start(&["hue", "audit-anomaly"]).await.unwrap();
    provoke(&server).await;
    let nkeys = NkeyDirectory::load(server.layout()).unwrap();
    let events: Vec<String> = server
        .log()
        .lines()
        .filter_map(watch::parse_log_line)
        .map(|r| describe(&r.event(&nkeys)))
        // The harness's own round-trip barriers.
        .filter(|d| !d.contains("sync.barrier"))
        .collect();
    expect_test::expect![[r#"
        publish by hue on cmd.weather
        subscribe by hue on audit.>
        publish by audit-anomaly on $JS.API.CONSUMER.CREATE.AUDIT
        authentication by ? on authentication error (unknown nkey UAH42UG6PV55…)
        tls by ? on TLS handshake error: EOF
        publish by hue on cmd.evil"#]]
    .assert_eq(&events.join("\n"));
}

/// The orchestrator's audit events in the AUDIT stream, once `done` holds for them.
async fn orchestrator_events(
    server: &NatsServer,
    done: impl Fn(&[AuditEvent]) -> bool,
) -> Vec<AuditEvent> {
    orchestrator_events_via(server.admin().await.unwrap(), done).await
}

/// [`orchestrator_events`] through an admin connection.
async fn orchestrator_events_via(
    admin: async_nats::Client,
    done: impl Fn(&[AuditEvent]) -> bool,
) -> Vec<AuditEvent> {
    let js = jetstream::new(admin);
    let stream = js.get_stream("AUDIT").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut events = Vec::new();
        let mut seq = 1;
        while let Ok(m) = stream.get_raw_message(seq).await {
            seq += 1;
            if m.subject.as_str() == "audit.orchestrator" {
                let e = Envelope::<AuditEvent>::decode(&m.payload).unwrap();
                assert_eq!(e.sender, Principal::orchestrator());
                events.push(e.body);
            }
        }
        if done(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orchestrator events so far: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn emitter(server: &NatsServer) -> AuditEmitter {
    let client = server
        .connect(&Identity::Orchestrator.principal())
        .await
        .unwrap();
    AuditEmitter::new(jetstream::new(client), Principal::orchestrator())
}

/// No sandbox: the type parameter of an absent inspector.
type NoSandbox = ProcessSandbox;

#[tokio::test]
async fn the_file_follower_publishes_violations_as_the_orchestrator() {
    let server = NatsServer::start(&["hue", "audit-anomaly"]).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let watcher = {
        let audit = emitter(&server).await;
        let nkeys = NkeyDirectory::load(server.layout()).unwrap();
        let log = LogSource::File {
            path: server.dir().join("nats-server.log"),
            // The fresh server's log has no violation yet; reading it whole avoids racing the
            // follower's first look at the file.
            from_start: true,
            poll: Duration::from_millis(50),
        };
        tokio::spawn(async move {
            watch::run(
                Watch {
                    audit,
                    nkeys,
                    log: Some(log),
                    sandbox: None::<(&NoSandbox, Vec<AgentName>)>,
                    settings: WatchSettings::default(),
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await;
        })
    };
    provoke(&server).await;
    let events = orchestrator_events(&server, |events| {
        events.iter().any(|e| describe(e).contains("cmd.evil"))
    })
    .await;
    let described: Vec<String> = events
        .iter()
        .map(describe)
        .filter(|d| !d.contains("sync.barrier"))
        .collect();
    assert_eq!(
        described,
        vec![
            "publish by hue on cmd.weather",
            "subscribe by hue on audit.>",
            "publish by audit-anomaly on $JS.API.CONSUMER.CREATE.AUDIT",
            "authentication by ? on authentication error (unknown nkey UAH42UG6PV55…)",
            "tls by ? on TLS handshake error: EOF",
            "publish by hue on cmd.evil",
        ]
    );
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, watcher)
        .await
        .expect("the watchers stop on shutdown")
        .unwrap();
}

/// An inspector whose answers the test sets, counting inspections.
#[derive(Default)]
struct FakeInspector {
    statuses: Mutex<HashMap<AgentName, AgentStatus>>,
    inspections: AtomicU32,
}

impl FakeInspector {
    fn set(&self, name: &str, restart_count: u32, digest: &str, oom_killed: bool) {
        self.statuses.lock().unwrap().insert(
            agent(name),
            AgentStatus {
                name: agent(name),
                state: RunState::Running,
                image_digest: Some(digest.to_owned()),
                memory_bytes: Some(1),
                restart_count,
                oom_killed,
                isolation: IsolationReport {
                    level: Isolation::Container,
                    measures: Vec::new(),
                    missing: Vec::new(),
                },
            },
        );
    }

    /// Waits until `n` more inspection rounds happened.
    async fn rounds(&self, n: u32) {
        let target = self.inspections.load(Ordering::SeqCst) + n * 2;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.inspections.load(Ordering::SeqCst) < target {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Inspect for FakeInspector {
    fn status(
        &self,
        agent: &AgentName,
    ) -> impl Future<Output = Result<AgentStatus, SandboxError>> + Send {
        self.inspections.fetch_add(1, Ordering::SeqCst);
        let status = self.statuses.lock().unwrap().get(agent).cloned();
        let agent = agent.clone();
        async move { status.ok_or(SandboxError::UnknownAgent(agent)) }
    }
}

#[tokio::test]
async fn supervision_reports_restarts_and_changed_images_once_each() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let fake = FakeInspector::default();
    fake.set("hue", 1, "sha256:aaaa", false);
    // "weather" is not deployed (yet): inspected, not reported.
    let audit = emitter(&server).await;
    let watching = watch::run(
        Watch {
            audit,
            nkeys: NkeyDirectory::default(),
            log: None,
            sandbox: Some((&fake, vec![agent("hue"), agent("weather")])),
            settings: WatchSettings {
                inspect_interval: Duration::from_millis(20),
                ..WatchSettings::default()
            },
        },
        std::future::pending(),
    );
    let scenario = async {
        fake.rounds(2).await;
        fake.set("hue", 3, "sha256:aaaa", true);
        fake.set("weather", 0, "sha256:cccc", false);
        fake.rounds(2).await;
        fake.set("hue", 3, "sha256:bbbb", false);
        fake.set("weather", 1, "sha256:cccc", false);
        let events = orchestrator_events(&server, |e| e.len() >= 3).await;
        // More rounds change nothing.
        fake.rounds(5).await;
        assert_eq!(orchestrator_events(&server, |_| true).await, events);
        events
    };
    let events = tokio::select! {
        () = watching => panic!("the watchers stopped"),
        events = scenario => events,
    };
    let described: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        described,
        vec![
            "restarted hue 3 oom=true",
            "digest hue sha256:aaaa -> sha256:bbbb",
            "restarted weather 1 oom=false",
        ]
    );
}

/// The real process sandbox, counting inspections.
struct Counting<'a> {
    sandbox: &'a ProcessSandbox,
    inspections: AtomicU32,
}

impl Inspect for Counting<'_> {
    fn status(
        &self,
        agent: &AgentName,
    ) -> impl Future<Output = Result<AgentStatus, SandboxError>> + Send {
        self.inspections.fetch_add(1, Ordering::SeqCst);
        self.sandbox.inspect(agent)
    }
}

/// The pid of the agent process whose `AGENT_CONFIG` is `config`, if it runs.
fn find_pid(config: &std::path::Path) -> Option<i32> {
    let wanted = format!("AGENT_CONFIG={}", config.display());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|v| v == wanted.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// Waits for a running agent process other than `not`.
async fn running_pid(config: &std::path::Path, not: Option<i32>) -> i32 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(pid) = find_pid(config)
            && Some(pid) != not
        {
            return pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "no agent process");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_process_agent_killed_twice_is_reported_restarted_twice() {
    let server = NatsServer::start(&["audit-anomaly"]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let binary = test_support::docker::workspace_binary("audit-anomaly", "agent-audit-anomaly");
    let mut deployment =
        test_support::docker::deployment(server.layout(), "audit-anomaly", &binary);
    deployment.config.nats_url = server.url().to_owned();
    let sandbox = ProcessSandbox::new(ProcessSettings {
        state_dir: dir.path().join("state"),
        log_filter: "info".to_owned(),
    })
    .unwrap();
    sandbox.start(&deployment).await.unwrap();
    let config = dir.path().join("state/audit-anomaly/agent.json");
    let log = || {
        std::fs::read_to_string(dir.path().join("state/audit-anomaly/agent.log"))
            .unwrap_or_default()
    };
    let counting = Counting {
        sandbox: &sandbox,
        inspections: AtomicU32::new(0),
    };
    let watching = watch::run(
        Watch {
            audit: emitter(&server).await,
            nkeys: NkeyDirectory::default(),
            log: None,
            sandbox: Some((&counting, vec![agent("audit-anomaly")])),
            settings: WatchSettings {
                inspect_interval: Duration::from_millis(100),
                ..WatchSettings::default()
            },
        },
        std::future::pending(),
    );
    let scenario = async {
        let first = running_pid(&config, None).await;
        // The baseline is taken before anything happens to the agent.
        while counting.inspections.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        orchestrator_events(&server, |e| e.len() == 1).await;
        let second = running_pid(&config, Some(first)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(second),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let events = orchestrator_events(&server, |e| e.len() == 2).await;
        running_pid(&config, Some(second)).await;
        events
    };
    let events = tokio::select! {
        () = watching => panic!("the watchers stopped"),
        events = scenario => events,
    };
    let described: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        described,
        vec![
            "restarted audit-anomaly 1 oom=false",
            "restarted audit-anomaly 2 oom=false",
        ],
        "{}",
        log()
    );
    let status = sandbox.inspect(&agent("audit-anomaly")).await.unwrap();
    assert_eq!(status.restart_count, 2);
    sandbox.stop(&agent("audit-anomaly")).await.unwrap();
}

#[tokio::test]
async fn the_docker_follower_reads_the_nats_container_output() {
    let t = test_support::docker::TestSandbox::new().await;
    let home = test_support::docker::home(t.dir.path(), &["hue"]);
    let endpoint = t
        .ensure_nats(&test_support::docker::nats_settings(&home))
        .await
        .unwrap();
    let connect = |principal: Principal| {
        let url = endpoint.url.clone();
        let home = home.clone();
        async move {
            provision::client::connect(&url, &home, &principal)
                .await
                .unwrap()
        }
    };
    let audit = AuditEmitter::new(
        jetstream::new(connect(Principal::orchestrator()).await),
        Principal::orchestrator(),
    );
    let watching = watch::run(
        Watch {
            audit,
            nkeys: NkeyDirectory::load(&home).unwrap(),
            log: Some(LogSource::docker(&t)),
            sandbox: None::<(&NoSandbox, Vec<AgentName>)>,
            settings: WatchSettings::default(),
        },
        std::future::pending(),
    );
    let hue = connect(p("hue")).await;
    let admin = connect(Identity::Admin.principal()).await;
    let scenario = async {
        // The follower reads the container's output from the moment it attaches, so violate
        // until one is reported.
        let mut attempt = 0;
        loop {
            attempt += 1;
            hue.publish(format!("cmd.try{attempt}"), "x".into())
                .await
                .unwrap();
            hue.flush().await.unwrap();
            let found = tokio::time::timeout(
                Duration::from_millis(500),
                orchestrator_events_via(admin.clone(), |e| !e.is_empty()),
            )
            .await;
            if let Ok(events) = found {
                return events;
            }
            assert!(attempt < 40, "nothing reported from the container's output");
        }
    };
    let events = tokio::select! {
        () = watching => panic!("the watchers stopped"),
        events = scenario => events,
    };
    let first = describe(&events[0]);
    assert!(first.starts_with("publish by hue on cmd.try"), "{first}");
}

async fn next_line(rx: &mut tokio::sync::mpsc::Receiver<String>) -> String {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a line in time")
        .expect("the follower runs")
}

#[tokio::test]
async fn the_file_follower_handles_truncation_and_rotation() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nats-server.log");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let follower = tokio::spawn(
        LogSource::File {
            path: path.clone(),
            from_start: true,
            poll: Duration::from_millis(20),
        }
        .follow(tx),
    );
    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    // The file may appear after the follower started.
    append("one\n");
    assert_eq!(next_line(&mut rx).await, "one");
    // A line arrives only once it is complete.
    append("two\nthr");
    assert_eq!(next_line(&mut rx).await, "two");
    append("ee\n");
    assert_eq!(next_line(&mut rx).await, "three");
    // Truncated in place (copytruncate rotation): read again from the start.
    std::fs::write(&path, "four\n").unwrap();
    assert_eq!(next_line(&mut rx).await, "four");
    // Rotated: the old file renamed, a new one under the name.
    std::fs::rename(&path, dir.path().join("nats-server.log.1")).unwrap();
    append("five\n");
    assert_eq!(next_line(&mut rx).await, "five");
    drop(rx);
    tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower stops when nobody listens")
        .unwrap();
}
