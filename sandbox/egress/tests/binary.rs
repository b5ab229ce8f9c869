//! The `egress-proxy` binary: exit 64 on bad configuration before binding anything; SIGHUP
//! reloads (and a bad file is refused while the old rules stay); refusals reach the AUDIT
//! stream through the binary's own `egress` identity; SIGTERM stops it with exit 0.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use test_support::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_egress-proxy");

/// The child process, killed on drop if a test fails half-way.
struct Proxy {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(config: &Path) -> Proxy {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proxy {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle` (after the lines already waited for).
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited, not killed by a signal");
            }
            assert!(Instant::now() < deadline, "the proxy did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn run_to_exit(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().expect("an exit code"), stderr)
}

#[test]
fn a_bad_configuration_exits_64_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    // The listen port is taken: a proxy that got as far as binding would exit 1, not 64.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let empty_identity = dir.path().join("no-identity");
    std::fs::create_dir(&empty_identity).unwrap();
    let good_shape = config_text(
        &listen,
        "nats://127.0.0.1:4222",
        &empty_identity,
        r#"[{"name":"hue","subnet":"10.200.0.16/28","allow":["192.168.1.20:443"]}]"#,
        16,
    );
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing file", None, "egress_config_unreadable"),
        ("not json", Some("{".to_owned()), "egress_config_malformed"),
        (
            "unknown field",
            Some(good_shape.replacen('{', r#"{"debug":true,"#, 1)),
            "egress_config_malformed",
        ),
        (
            "bad subnet",
            Some(good_shape.replace("10.200.0.16/28", "10.200.0.17/28")),
            "egress_config_malformed",
        ),
        (
            "bracketed allow entry",
            Some(good_shape.replace("192.168.1.20:443", "[example.com]:443")),
            "egress_config_malformed",
        ),
        (
            "zero limit",
            Some(good_shape.replace(
                r#""max_connections_per_agent":16"#,
                r#""max_connections_per_agent":0"#,
            )),
            "egress_config_invalid",
        ),
        // Well-formed, but the identity directory holds no egress identity.
        (
            "no identity",
            Some(good_shape.clone()),
            "cannot load the egress identity",
        ),
    ];
    for (what, text, expected) in cases {
        let path = dir.path().join(format!("{}.json", what.replace(' ', "-")));
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let (code, stderr) = run_to_exit(&["--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(!stderr.contains("listening"), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
    let (code, _) = run_to_exit(&["--no-such-flag"]);
    assert_eq!(code, 64);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_refusals_are_audited_and_sigterm_stops() {
    let nats = NatsServer::start(&[]).await.unwrap();
    let up = upstream().await;
    let target = up.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("egress.json");
    let write = |allow: &str| {
        let agents = format!(r#"[{{"name":"hue","subnet":"127.0.0.0/28","allow":{allow}}}]"#);
        let text = config_text("127.0.0.1:0", nats.url(), nats.layout().root(), &agents, 16);
        std::fs::write(&path, text).unwrap();
    };
    write("[]");
    let mut proxy = Proxy::start(&path);
    let line = proxy.wait_for("listening");
    let addr: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the listening line names the address")
        .parse()
        .unwrap();
    let request = format!("CONNECT {target} HTTP/1.1\r\n\r\n");

    // Not allowed yet: refused, and the refusal reaches the AUDIT stream as the binary's own
    // `egress` identity (NATS lets it publish only audit.egress).
    let (status, body) = refused("127.0.0.2", addr, request.as_bytes()).await;
    assert_eq!((status, body.as_str()), (403, "egress_not_allowlisted\n"));
    let events = audit_events(&nats, 1).await;
    assert_eq!(
        describe(&events[0].0, &events[0].1),
        format!(
            "audit.egress from egress agent=hue source=127.0.0.2 {}:{} egress_not_allowlisted",
            up.addr.ip(),
            up.addr.port()
        )
    );

    // Allowed after SIGHUP.
    write(&format!(r#"["{target}"]"#));
    proxy.signal("HUP");
    proxy.wait_for("configuration reloaded");
    let mut tunnel = open_tunnel("127.0.0.2", addr, &target).await;

    // A broken file is refused on SIGHUP; the rules in force stay, the tunnel keeps going.
    std::fs::write(&path, "{ not json").unwrap();
    proxy.signal("HUP");
    proxy.wait_for("reload refused");
    echo(&mut tunnel, b"after a refused reload").await;
    let second = open_tunnel("127.0.0.2", addr, &target).await;
    drop((tunnel, second));

    // SIGTERM: stops, exit 0.
    proxy.signal("TERM");
    proxy.wait_for("egress proxy stopped");
    assert_eq!(proxy.wait_exit(), 0);
    assert!(
        proxy
            .seen
            .iter()
            .all(|l| !l.contains("after a refused reload")),
        "the log holds tunnel bytes"
    );
}
