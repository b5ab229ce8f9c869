//! The README's run command, end to end, on a real Docker engine: `bot up --simulate-hue`
//! (NATS, audit writer, egress proxy and both agents in their containers, the orchestrator),
//! then a user types "start bedtime" into `bot chat`, sees the explained plan, approves it with
//! a key, and the Hue agent in its container changes the simulated bridge's lights. The result
//! message comes back to the chat; after Ctrl-C (SIGTERM) everything stops cleanly, `bot audit
//! verify` passes, and the audit log holds every event of the request, in order. The notify
//! gateway runs too: the web chat link `bot up` prints opens the page, and a message typed
//! there reaches the orchestrator.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use protocol::manifest::HostPort;
use protocol::message::{AgentReply, AgentRequest, Invocation};
use protocol::{ActionName, CorrelationId, Envelope, MessageId, PlanId, Principal, UnixMillis};
use serde_json::Value;
use test_support::docker::{TestSandbox, workspace_binary};

/// Image import and container starts on a cold engine take a while.
const START: Duration = Duration::from_secs(300);
const STEP: Duration = Duration::from_secs(60);

/// A child process whose standard output arrives line by line.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(cmd: &mut Command) -> Lines {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Reads until a line satisfies `done`; panics with everything seen otherwise.
    fn until(&mut self, what: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if done(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "waiting for {what}: {e}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().unwrap()
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // A failed test leaves nothing running (the sandbox's drop removes the containers).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One plain HTTP/1.1 request to the web chat; the whole answer.
async fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn bot(bin: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--home")
        .arg(home)
        .env("NATS_SERVER_BIN", test_support::nats_server_bin())
        .env_remove("BOT_HOME")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// The lights of a room on the bridge: room → its devices → their light services.
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

/// Every resource of the simulated bridge, read over its real HTTPS API with the pinned
/// certificate and the application key `bot up` wrote.
async fn bridge_resources(home: &Path) -> Vec<Value> {
    let sim: Value =
        serde_json::from_slice(&std::fs::read(home.join("run/hue-sim.json")).unwrap()).unwrap();
    let key = std::fs::read_to_string(sim["application_key_file"].as_str().unwrap()).unwrap();
    let bridge = hue::bridge::Bridge::new(
        &HostPort::parse(sim["address"].as_str().unwrap()).unwrap(),
        hue::tls::parse_pin(sim["cert_sha256"].as_str().unwrap()).unwrap(),
        hue::bridge::ApplicationKey::parse(&key).unwrap(),
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let mut all = Vec::new();
    for rtype in ["room", "device", "light"] {
        all.extend(bridge.list::<Value>(rtype).await.unwrap());
    }
    all
}

fn brightness(light: &Value) -> f64 {
    light["dimming"]["brightness"].as_f64().unwrap_or(-1.0)
}

fn is_on(light: &Value) -> bool {
    light["on"]["on"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn start_bedtime_from_the_terminal_chat_end_to_end() {
    provision::client::install_crypto_provider();
    let binaries: Vec<PathBuf> = [
        ("bot", "bot"),
        ("hue", "agent-hue"),
        ("audit-anomaly", "agent-audit-anomaly"),
        ("audit", "audit-writer"),
        ("egress-proxy", "egress-proxy"),
        ("notify-gateway", "notify-gateway"),
    ]
    .iter()
    .map(|(p, b)| workspace_binary(p, b))
    .collect();
    let bot_bin = binaries[0].clone();
    let bin_dir = bot_bin.parent().unwrap().to_path_buf();
    for b in &binaries {
        assert_eq!(b.parent().unwrap(), bin_dir, "every program next to bot");
    }

    // A unique Docker instance (torn down by the drop) and the user's configuration.
    let t = TestSandbox::new().await;
    let home = t.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[bot]\nbackend = \"docker\"\nnats_port = 0\ninstance = \"{}\"\n\n\
             [orchestrator]\nowners = [\"terminal:tester\", \"web:owner\"]\n",
            t.instance().as_str()
        ),
    )
    .unwrap();
    // The gateway with the web chat on a free port (bot up writes the same with 8765).
    let web_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        home.join("gateway.toml"),
        format!(
            "nats_url = \"tls://127.0.0.1:4222\"\nhome = \"{h}\"\nstate_db = \"{h}/gateway.sqlite\"\n\
             [web]\nlisten = \"127.0.0.1:{web_port}\"\ntoken_file = \"{h}/secrets/webchat-token\"\n",
            h = home.display()
        ),
    )
    .unwrap();

    let mut up = Lines::spawn(
        bot(&bot_bin, &home)
            .arg("up")
            .arg("--simulate-hue")
            .arg("--bin-dir")
            .arg(&bin_dir),
    );
    up.until("bot up to be ready", START, |l| l.starts_with("ready:"));
    let said = up.seen.join("\n");
    // The gateway runs, with the web chat behind its token: the link bot up printed works,
    // the same request without the token does not, and a message typed there is accepted
    // (answered only once JetStream has it).
    let link = up
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("web chat: "))
        .unwrap_or_else(|| panic!("no web chat link in:\n{said}"))
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let token = link
        .strip_prefix(&format!("http://127.0.0.1:{web_port}/#"))
        .unwrap_or_else(|| panic!("{link}"))
        .to_owned();
    assert_eq!(token.len(), 64);
    let page = http(web_port, "GET", "/", None, "").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let refused = http(web_port, "GET", "/api/messages?wait_ms=0", None, "").await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let sent = http(
        web_port,
        "POST",
        "/api/messages",
        Some(&token),
        r#"{"client_id":"bot-up-test-0001","text":"hello from the web"}"#,
    )
    .await;
    assert!(sent.starts_with("HTTP/1.1 202"), "{sent}");
    assert!(said.contains("sandbox:  Docker"), "{said}");
    assert!(
        said.contains("agent:    hue started (Container isolation"),
        "{said}"
    );
    assert!(
        said.contains("agent:    audit-anomaly started (Container isolation"),
        "{said}"
    );

    let before = bridge_resources(&home).await;
    assert!(
        lights_of(&before, "Room 1").iter().any(is_on),
        "the kitchen starts with a light on"
    );

    // The user's side: the terminal chat, exactly as typed.
    let mut chat = Lines::spawn(
        bot(&bot_bin, &home)
            .args(["chat", "--as", "tester"])
            .stdin(Stdio::piped()),
    );
    chat.until("the greeting", STEP, |l| l.starts_with("Connected."));
    writeln!(chat.stdin(), "start bedtime").unwrap();
    chat.until("the buttons", STEP, |l| l.contains("[1] Approve"));
    let card = chat.seen.join("\n");
    // The explained plan: every step, its exact parameters, its why.
    for expected in [
        "Plan: Bedtime",
        "1. hue room.set {\"brightness\":20,\"mirek\":454,\"on\":true,\"room\":\"Room 11\",\"transition_ms\":600000} (changes)",
        "2. hue room.set {\"on\":false,\"room\":\"Room 1\"} (changes)",
        "why: Kitchen lights off",
        "4. hue lights.list {\"on_only\":true} (reads)",
        "[2] Reject",
    ] {
        assert!(card.contains(expected), "{expected:?} not in:\n{card}");
    }
    // Nothing has run before the approval.
    let unapproved = bridge_resources(&home).await;
    assert_eq!(
        lights_of(&unapproved, "Room 1"),
        lights_of(&before, "Room 1")
    );

    writeln!(chat.stdin(), "1").unwrap();
    chat.until("the results", STEP, |l| l.starts_with("✓ 4."));
    let all = chat.seen.join("\n");
    for n in 1..=3 {
        assert!(
            all.contains(&format!("✓ {n}. hue room.set")),
            "step {n}:\n{all}"
        );
    }
    assert!(all.contains("Approved by terminal:tester"), "{all}");
    assert!(!all.contains('✗'), "{all}");

    // The bridge really changed: kitchen off, bedroom at 10 %, living room at 20 %.
    let after = bridge_resources(&home).await;
    let kitchen = lights_of(&after, "Room 1");
    assert!(
        !kitchen.is_empty() && !kitchen.iter().any(is_on),
        "{kitchen:?}"
    );
    for (room, level) in [("Room 9", 10.0), ("Room 11", 20.0)] {
        let lights = lights_of(&after, room);
        assert!(!lights.is_empty(), "{room}");
        for l in &lights {
            assert!(is_on(l), "{room}: {l}");
            if l["dimming"].is_object() {
                assert!((brightness(l) - level).abs() < 1.0, "{room}: {l}");
            }
        }
    }

    // An attack on the Hue agent: three commands with forged tokens, sent with the
    // orchestrator's own identity. The agent refuses each; the audit-anomaly agent in its
    // container raises an alert; the owner quarantines the agent from the chat; the sandbox
    // stops its container.
    let url = std::fs::read_to_string(home.join("run/nats.url")).unwrap();
    let layout = provision::Layout::new(&home);
    let intruder = provision::client::connect(url.trim(), &layout, &Principal::orchestrator())
        .await
        .unwrap();
    for _ in 0..3 {
        let request = Envelope::new(
            MessageId::random(),
            CorrelationId::random(),
            Principal::orchestrator(),
            UnixMillis::now(),
            AgentRequest::Invoke(Invocation {
                plan_id: PlanId::random(),
                step: 0,
                action: ActionName::new("room.set").unwrap(),
                args: serde_json::json!({"room": "Room 1", "on": true}),
                token: "AAAA".to_owned(),
            }),
        );
        let reply = intruder
            .request("cmd.hue", request.encode().unwrap().into())
            .await
            .unwrap();
        let reply = Envelope::<AgentReply>::decode(&reply.payload).unwrap();
        assert!(
            matches!(reply.body, AgentReply::Rejected(_)),
            "{:?}",
            reply.body
        );
    }
    chat.until("the alert", STEP, |l| l.contains("Quarantine agent"));
    let alert = chat.seen.join("\n");
    assert!(alert.contains("hue"), "{alert}");
    let choice = chat
        .seen
        .last()
        .unwrap()
        .split("   ")
        .find(|b| b.contains("Quarantine agent"))
        .and_then(|b| b.strip_prefix('['))
        .and_then(|b| b.split(']').next())
        .unwrap()
        .to_owned();
    writeln!(chat.stdin(), "{choice}").unwrap();
    chat.until("the quarantine", STEP, |l| l.starts_with("Quarantined hue"));
    let last = chat.seen.last().unwrap().clone();
    assert!(last.contains("its container is stopped"), "{last}");
    let container = t
        .instance()
        .agent_container(&protocol::AgentName::new("hue").unwrap());
    match t.client().inspect_container(&container, None).await {
        Ok(c) => assert_ne!(
            c.state.and_then(|s| s.running),
            Some(true),
            "{container} still running"
        ),
        Err(_gone) => {}
    }
    // And the lights were not touched by the forged commands.
    let untouched = bridge_resources(&home).await;
    assert!(!lights_of(&untouched, "Room 1").iter().any(is_on));
    drop(chat.child.stdin.take());
    let status = chat.child.wait().unwrap();
    assert!(status.success(), "bot chat: {status:?}");

    // Ctrl-C: everything stops, in order, and says so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    up.until("the stop", STEP, |l| l == "stopped.");
    let status = up.child.wait().unwrap();
    assert!(
        status.success(),
        "bot up: {status:?}\n{}",
        up.seen.join("\n")
    );
    assert!(!home.join("run/nats.url").exists());

    // The audit log verifies and tells the whole story.
    let verify = bot(&bot_bin, &home)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains("OK: the chain and every signed checkpoint verify"));

    let db = rusqlite::Connection::open_with_flags(
        home.join("audit/audit.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    // The web chat's message reached the orchestrator through the gateway.
    let from_web: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE kind = 'message_received' \
             AND CAST(payload AS TEXT) LIKE '%\"text\":\"hello from the web\"%' \
             AND CAST(payload AS TEXT) LIKE '%\"user\":\"web:owner\"%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(from_web, 1);
    let correlation: String = db
        .query_row(
            "SELECT correlation_id FROM audit WHERE kind = 'plan_proposed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut stmt = db
        .prepare("SELECT actor, kind FROM audit WHERE correlation_id = ?1 ORDER BY seq")
        .unwrap();
    let story: Vec<String> = stmt
        .query_map([&correlation], |r| {
            Ok(format!(
                "{} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let step = [
        "orchestrator step_intent",
        "orchestrator token_issued",
        "hue command_received",
        "hue command_executed",
        "orchestrator step_result",
    ];
    let mut expected = vec![
        "orchestrator message_received",
        "orchestrator plan_proposed",
        "orchestrator approval_decided",
    ];
    for _ in 0..4 {
        expected.extend(step);
    }
    expected.push("orchestrator plan_finished");
    assert_eq!(story, expected);
}
