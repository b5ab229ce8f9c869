//! The `agent-hue` binary: every configuration problem exits 64 before it connects to anything.
//!
//! NATS is stood in for by a plain TCP listener the test holds: after each refused start, the
//! listener has accepted no connection. A valid configuration is the positive control: that
//! binary does connect (and, since the listener speaks no TLS, gives up with exit code 1).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use protocol::AgentName;
use provision::{Layout, Spec};
use serde_json::{Value, json};

const KEY: &str = "the-application-key-0123456789";

struct Case {
    name: &'static str,
    config: Option<Vec<u8>>,
}

fn base(identity: &Path, data: &Path, port: u16) -> Value {
    json!({
        "name": "hue",
        "nats_url": format!("tls://127.0.0.1:{port}"),
        "identity_dir": identity,
        "data_dir": data,
        "heartbeat_interval_ms": 60000,
        "max_concurrency": 4,
        "shutdown_grace_ms": 1000,
        "egress_proxy": null,
        "isolation": {"level": "none", "measures": [], "missing": []},
        "confine": null,
        "settings": {
            "bridge": "192.168.1.20:443",
            "application_key_file": "secrets/hue.key",
            "bridge_cert_sha256": "ab".repeat(32),
            "request_timeout_ms": 2000
        }
    })
}

fn edited(v: &Value, edit: impl FnOnce(&mut Value)) -> Option<Vec<u8>> {
    let mut v = v.clone();
    edit(&mut v);
    Some(serde_json::to_vec(&v).unwrap())
}

struct Run {
    code: Option<i32>,
    stderr: String,
}

fn run(config_path: &Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_agent-hue"))
        .env_clear()
        .env("AGENT_CONFIG", config_path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn accepted(listener: &TcpListener) -> usize {
    let mut n = 0;
    loop {
        match listener.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_bad_configuration_exits_64_without_connecting() {
    let home = tempfile::tempdir().unwrap();
    let identity = home.path().join("identity");
    let data = home.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    provision::generate(
        &Layout::new(&identity),
        &Spec::new(vec![AgentName::new("hue").unwrap()]),
    )
    .unwrap();
    let key_file = identity.join("secrets/hue.key");
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, KEY).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let good = base(&identity, &data, port);

    let cases = vec![
        Case {
            name: "missing file",
            config: None,
        },
        Case {
            name: "not JSON",
            config: Some(b"name = 'hue'".to_vec()),
        },
        Case {
            name: "oversized",
            config: Some(vec![b' '; 64 * 1024 + 1]),
        },
        Case {
            name: "unknown field",
            config: edited(&good, |c| c["debug"] = json!(true)),
        },
        Case {
            name: "another agent",
            config: edited(&good, |c| c["name"] = json!("weather")),
        },
        Case {
            name: "no concurrency",
            config: edited(&good, |c| c["max_concurrency"] = json!(0)),
        },
        Case {
            name: "proxy not http",
            config: edited(&good, |c| c["egress_proxy"] = json!("socks5://x:1")),
        },
        Case {
            name: "unknown setting",
            config: edited(&good, |c| c["settings"]["verify"] = json!(false)),
        },
        Case {
            name: "bridge not host:port",
            config: edited(&good, |c| c["settings"]["bridge"] = json!("https://bridge")),
        },
        Case {
            name: "bad pin",
            config: edited(&good, |c| {
                c["settings"]["bridge_cert_sha256"] = json!("abc")
            }),
        },
        Case {
            name: "timeout too long",
            config: edited(&good, |c| {
                c["settings"]["request_timeout_ms"] = json!(60000)
            }),
        },
        Case {
            name: "key file outside",
            config: edited(&good, |c| {
                c["settings"]["application_key_file"] = json!("../hue.key")
            }),
        },
        Case {
            name: "key file missing",
            config: edited(&good, |c| {
                c["settings"]["application_key_file"] = json!("secrets/none.key")
            }),
        },
        Case {
            name: "no keyset",
            config: edited(&good, |c| c["identity_dir"] = json!(data)),
        },
    ];
    let mut out = Vec::new();
    for case in cases {
        let path = home
            .path()
            .join(format!("{}.json", case.name.replace(' ', "-")));
        if let Some(bytes) = &case.config {
            std::fs::write(&path, bytes).unwrap();
        }
        let r = run(&path);
        let code = r
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|l| l["fields"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        assert!(!r.stderr.contains(KEY), "{}: the key was logged", case.name);
        assert_eq!(accepted(&listener), 0, "{}: it connected", case.name);
        out.push(format!("{}: exit {:?} {code}", case.name, r.code));
    }
    expect_test::expect![[r#"
        missing file: exit Some(64) config_unreadable
        not JSON: exit Some(64) config_invalid
        oversized: exit Some(64) config_too_large
        unknown field: exit Some(64) config_invalid
        another agent: exit Some(64) config_wrong_agent
        no concurrency: exit Some(64) config_invalid
        proxy not http: exit Some(64) config_invalid
        unknown setting: exit Some(64) settings_invalid
        bridge not host:port: exit Some(64) settings_invalid
        bad pin: exit Some(64) settings_invalid
        timeout too long: exit Some(64) settings_invalid
        key file outside: exit Some(64) settings_invalid
        key file missing: exit Some(64) application_key_unreadable
        no keyset: exit Some(64) keyset_unavailable"#]]
    .assert_eq(&out.join("\n"));

    // Positive control: the same binary with a valid configuration does connect.
    let path = home.path().join("good.json");
    std::fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
    let child = std::thread::spawn(move || run(&path));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut connections = 0;
    while connections == 0 && Instant::now() < deadline {
        connections += accepted(&listener);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(connections > 0, "a valid configuration connects");
    let r = child.join().unwrap();
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("nats_connect_failed"), "{}", r.stderr);
    assert!(!r.stderr.contains(KEY));
}

/// Mints and sends one command as the orchestrator; returns the reply.
async fn command(
    server: &test_support::NatsServer,
    orch: &async_nats::Client,
    action: &str,
    args: Value,
) -> protocol::message::AgentReply {
    use orchestrator::mint::{MintRequest, Minter, fresh_nonce};
    use protocol::message::{AgentRequest, Digest, Invocation};
    use protocol::token::ApprovalBinding;
    use protocol::{
        ActionName, ApprovalId, ChatUser, CorrelationId, Envelope, MessageId, PlanId, Principal,
        UnixMillis,
    };
    let seed = provision::load_seed(&server.layout().token_signing_seed()).unwrap();
    let minter = Minter::new(
        provision::FIRST_KID,
        &seed.signing_key().to_bytes(),
        Principal::orchestrator(),
    );
    let hue = AgentName::new("hue").unwrap();
    let action = ActionName::new(action).unwrap();
    let plan_id = PlanId::random();
    let token = minter
        .mint(
            &MintRequest {
                audience: &hue,
                subject: &ChatUser::new("telegram:42").unwrap(),
                action: &action,
                args: &args,
                plan_id,
                step: 0,
                approval: ApprovalBinding::Approved {
                    id: ApprovalId::random(),
                    hash: Digest([2; 32]),
                },
                ttl_secs: 30,
            },
            UnixMillis::now().as_secs(),
            fresh_nonce().unwrap(),
        )
        .unwrap();
    let request = Envelope::new(
        MessageId::random(),
        CorrelationId::random(),
        Principal::orchestrator(),
        UnixMillis::now(),
        AgentRequest::Invoke(Invocation {
            plan_id,
            step: 0,
            action,
            args,
            token: token.text(),
        }),
    );
    let reply = orch
        .send_request(
            "cmd.hue",
            async_nats::Request::new()
                .payload(request.encode().unwrap().into())
                .timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap();
    Envelope::<protocol::message::AgentReply>::decode(&reply.payload)
        .unwrap()
        .body
}

async fn next_heartbeat(status: &mut async_nats::Subscriber) -> protocol::message::Heartbeat {
    use futures::StreamExt as _;
    let m = tokio::time::timeout(Duration::from_secs(20), status.next())
        .await
        .expect("a heartbeat")
        .unwrap();
    let protocol::message::Status::Heartbeat(h) =
        protocol::Envelope::<protocol::message::Status>::decode(&m.payload)
            .unwrap()
            .body;
    h
}

#[tokio::test]
async fn the_binary_serves_commands_until_sigterm_confined_or_not() {
    use protocol::acl::Identity;
    use test_support::fake_hue::{FakeBridge, fixture};

    let server = test_support::NatsServer::start(&["hue"]).await.unwrap();
    let bridge = FakeBridge::start_with(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), fixture())
        .await
        .unwrap();
    let identity = server.layout().root().to_path_buf();
    let key_file = identity.join("secrets/hue.key");
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, bridge.application_key()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let orch = server
        .connect(&Identity::Orchestrator.principal())
        .await
        .unwrap();
    let mut status = orch.subscribe("status.hue").await.unwrap();
    orch.flush().await.unwrap();

    for (round, confined) in [(0u8, false), (1, true)] {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let config_path = home.path().join("agent.json");
        // Landlock, no_new_privs and the seccomp allowlist shared with the containers.
        let confine = confined.then(|| {
            json!({
                "read_only": [identity, config_path],
                "read_write": [data],
                "connect_tcp_ports": [server.addr().port(), bridge.addr().port()],
                "seccomp": true
            })
        });
        let config = json!({
            "name": "hue",
            "nats_url": server.url(),
            "identity_dir": identity,
            "data_dir": data,
            "heartbeat_interval_ms": 60000,
            "max_concurrency": 4,
            "shutdown_grace_ms": 2000,
            "egress_proxy": null,
            "isolation": {"level": if confined { "process" } else { "none" }, "measures": ["from the launcher"], "missing": ["launcher gap"]},
            "confine": confine,
            "settings": {
                "bridge": bridge.addr().to_string(),
                "application_key_file": "secrets/hue.key",
                "bridge_cert_sha256": bridge.cert_sha256(),
                "request_timeout_ms": 2000
            }
        });
        std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
        let stderr_path = home.path().join("stderr.log");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-hue"))
            .env_clear()
            .env("AGENT_CONFIG", &config_path)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

        let h = tokio::select! {
            h = next_heartbeat(&mut status) => h,
            exit = child.wait() => panic!("round {round}: exited early ({exit:?}):\n{}", log()),
        };
        assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            h.isolation.measures.first().map(String::as_str),
            Some("from the launcher")
        );
        assert_eq!(
            h.isolation.missing.first().map(String::as_str),
            Some("launcher gap")
        );
        if confined {
            // The confinement's own report is merged in after the launcher's.
            assert!(
                h.isolation
                    .measures
                    .iter()
                    .skip(1)
                    .any(|m| m.contains("no_new_privs")),
                "{:?}\n{}",
                h.isolation,
                log()
            );
            assert!(
                h.isolation
                    .measures
                    .iter()
                    .skip(1)
                    .any(|m| m.starts_with("seccomp allowlist")),
                "{:?}",
                h.isolation
            );
            assert!(
                h.isolation
                    .measures
                    .iter()
                    .any(|m| m.starts_with("landlock: filesystem limited")),
                "{:?}",
                h.isolation
            );
        } else {
            assert_eq!(
                (h.isolation.measures.len(), h.isolation.missing.len()),
                (1, 1)
            );
        }
        assert!(h.rss_bytes.is_some_and(|b| b > 0));

        let on = round == 1;
        let reply = command(
            &server,
            &orch,
            "light.set",
            json!({"light": "Light 5", "on": on}),
        )
        .await;
        assert!(
            matches!(reply, protocol::message::AgentReply::Done(_)),
            "round {round}: {reply:?}\n{}",
            log()
        );
        assert_eq!(bridge.light("Light 5").unwrap().on, on);

        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert_eq!(exit.code(), Some(0), "round {round}:\n{}", log());
        let last = next_heartbeat(&mut status).await;
        assert_eq!(
            (last.in_flight, last.handled),
            (0, 1),
            "the final heartbeat"
        );
        assert!(
            !log().contains(bridge.application_key()),
            "the key was logged"
        );
        assert!(log().contains("\"agent ready\""), "{}", log());
    }
}
