//! Crash safety of the real `audit-writer` binary against a real nats-server: SIGKILL it while
//! it is ingesting and committing, and check that no acknowledged event was lost (every stream
//! sequence at or below the consumer's ack floor has its row), then restart it and check that
//! every event ends up stored exactly once and the log verifies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use audit::{CheckpointVerifier, LogName, verify};
use protocol::message::AuditEvent;
use protocol::subject::stream;
use protocol::{CorrelationId, Envelope, MessageId, Principal, UnixMillis};
use test_support::NatsServer;

const EVENTS: u64 = 5000;

struct Paths {
    db: PathBuf,
    witness: PathBuf,
    log: PathBuf,
}

fn spawn_writer(server: &NatsServer, p: &Paths) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_audit-writer"))
        .arg("--nats-url")
        .arg(server.url())
        .arg("--identity-dir")
        .arg(server.layout().root())
        .arg("--db")
        .arg(&p.db)
        .arg("--witness")
        .arg(&p.witness)
        .arg("--checkpoint-every")
        .arg("100")
        .arg("--checkpoint-interval-secs")
        .arg("2")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn event_ids(db: &Path) -> Vec<String> {
    if !db.exists() {
        return Vec::new();
    }
    let Ok(c) = audit::store::open_read_only(db) else {
        // Created but the schema not yet committed.
        return Vec::new();
    };
    let mut stmt = c
        .prepare("SELECT event_id FROM audit ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn wait_for_rows(db: &Path, n: usize, p: &Paths, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = event_ids(db).len();
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {have} of {n} rows after 120 s; writer log:\n{}",
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ack_floor(admin: &jetstream::Context) -> u64 {
    admin
        .get_stream(stream::AUDIT)
        .await
        .unwrap()
        .consumer_info(stream::AUDIT_WRITER_CONSUMER)
        .await
        .unwrap()
        .ack_floor
        .stream_sequence
}

/// Every stream sequence at or below the ack floor has its row, and no event is stored twice.
async fn assert_no_acked_event_lost(
    admin: &jetstream::Context,
    db: &Path,
    published: &HashMap<u64, String>,
    when: &str,
) -> u64 {
    let floor = ack_floor(admin).await;
    let ids = event_ids(db);
    let stored: HashSet<&String> = ids.iter().collect();
    assert_eq!(stored.len(), ids.len(), "{when}: an event is stored twice");
    for seq in 1..=floor {
        let id = published
            .get(&seq)
            .unwrap_or_else(|| panic!("{when}: stream seq {seq} was not published by the test"));
        assert!(
            stored.contains(id),
            "{when}: stream seq {seq} (event {id}) was acknowledged (floor {floor}) but is not in the log"
        );
    }
    println!(
        "{when}: ack floor {floor}, rows {}, all acknowledged events present",
        ids.len()
    );
    floor
}

fn kill(mut child: Child) {
    // SIGKILL: no drain, no final checkpoint, acks in flight are lost.
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_event_and_restarts_store_each_event_once() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = Paths {
        db: dir.path().join("audit.db"),
        witness: dir.path().join("witness"),
        log: dir.path().join("audit-writer.log"),
    };
    let admin = jetstream::new(server.admin().await.unwrap());

    let writer = spawn_writer(&server, &p);

    // Publish the events as "hue" while the writer ingests them.
    let published: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let hue = jetstream::new(
        server
            .connect(&Principal::new("hue").unwrap())
            .await
            .unwrap(),
    );
    let sink = Arc::clone(&published);
    let publisher = tokio::spawn(async move {
        let hue_principal = Principal::new("hue").unwrap();
        for chunk in 0..EVENTS / 250 {
            let mut acks = Vec::new();
            for n in 0..250 {
                let envelope = Envelope::new(
                    MessageId::random(),
                    CorrelationId::random(),
                    hue_principal.clone(),
                    UnixMillis::now(),
                    AuditEvent::ServiceStarted {
                        version: format!("{}.{n}", chunk),
                    },
                );
                let id = envelope.id.to_string();
                let ack = hue
                    .send_publish(
                        "audit.hue",
                        jetstream::message::PublishMessage::build()
                            .payload(envelope.encode().unwrap().into())
                            .message_id(&id),
                    )
                    .await
                    .unwrap();
                acks.push((id, ack));
            }
            for (id, ack) in acks {
                let ack = ack.await.unwrap();
                assert!(!ack.duplicate);
                sink.lock().unwrap().insert(ack.sequence, id);
            }
        }
    });

    // Kill 1: early, while the backlog is being committed.
    wait_for_rows(&p.db, 1200, &p, "first run").await;
    kill(writer);
    publisher.await.unwrap();
    let published = published.lock().unwrap().clone();
    assert_eq!(published.len() as u64, EVENTS);
    let floor1 = assert_no_acked_event_lost(&admin, &p.db, &published, "after kill 1").await;
    assert!(floor1 >= 1, "the first run acknowledged nothing");

    // Kill 2: after the restart has taken over (and the first run's unacked messages were
    // redelivered once their ack wait ran out).
    let writer = spawn_writer(&server, &p);
    wait_for_rows(&p.db, 3500, &p, "second run").await;
    kill(writer);
    let floor2 = assert_no_acked_event_lost(&admin, &p.db, &published, "after kill 2").await;
    assert!(floor2 >= floor1);

    // Final run: everything arrives exactly once; SIGTERM drains and exits 0.
    let mut writer = spawn_writer(&server, &p);
    wait_for_rows(&p.db, EVENTS as usize, &p, "final run").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ack_floor(&admin).await < EVENTS {
        assert!(
            Instant::now() < deadline,
            "ack floor never reached {EVENTS}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(writer.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || writer.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "writer log:\n{}",
        std::fs::read_to_string(&p.log).unwrap_or_default()
    );
    assert_no_acked_event_lost(&admin, &p.db, &published, "after SIGTERM").await;

    let ids = event_ids(&p.db);
    assert_eq!(ids.len() as u64, EVENTS, "every event exactly once");
    let stored: HashSet<&String> = ids.iter().collect();
    assert!(published.values().all(|id| stored.contains(id)));

    let verifier = CheckpointVerifier::from_public_file(
        LogName::default_name(),
        &server.layout().checkpoint_public(),
    )
    .unwrap();
    let report = verify(&p.db, &verifier, Some(&p.witness)).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.rows_verified, EVENTS);
    // The clean shutdown signed the final head.
    let last_checkpoint: i64 = audit::store::open_read_only(&p.db)
        .unwrap()
        .query_row("SELECT max(tree_size) FROM checkpoints", [], |r| r.get(0))
        .unwrap();
    assert_eq!(last_checkpoint as u64, EVENTS);
    println!(
        "verified {} rows, {} checkpoints, {} witness notes",
        report.rows_verified, report.checkpoints_verified, report.witness_notes
    );
}

#[test]
fn bad_configuration_exits_64_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_audit-writer"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let db = dir.path().join("a.db");
    let db = db.to_str().unwrap();
    let ident = dir.path().to_str().unwrap();
    // Missing arguments, a bad number, a missing identity directory, a missing key.
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec![
            "--nats-url",
            "tls://127.0.0.1:1",
            "--identity-dir",
            ident,
            "--db",
            db,
            "--checkpoint-every",
            "x",
        ],
        vec![
            "--nats-url",
            "tls://127.0.0.1:1",
            "--identity-dir",
            "/nonexistent/x",
            "--db",
            db,
        ],
        vec![
            "--nats-url",
            "tls://127.0.0.1:1",
            "--identity-dir",
            ident,
            "--db",
            db,
            "--checkpoint-every",
            "0",
        ],
        vec![
            "--nats-url",
            "tls://127.0.0.1:1",
            "--identity-dir",
            ident,
            "--db",
            db,
        ],
    ];
    for args in cases {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {:?}", out);
    }
    // Nothing was created by the refused starts.
    assert!(!dir.path().join("a.db").exists());
}
