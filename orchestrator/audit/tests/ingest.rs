//! Ingest against a real nats-server with our generated configuration: agents emit through
//! `AuditEmitter`, the writer ingests as the `audit` identity (bound to the provisioned
//! consumer, never creating one), and the log ends up with each event exactly once, the right
//! actor, and a `rejected_event` row for every message that could not be accepted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use audit::ingest::{self, IngestConfig, IngestStats};
use audit::{
    AuditEmitter, AuditLog, CheckpointSigner, LogName, Witness, Writer, WriterConfig, verify,
};
use protocol::message::AuditEvent;
use protocol::subject::stream;
use protocol::{CorrelationId, Envelope, MessageId, Principal, UnixMillis};
use test_support::NatsServer;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    seq: i64,
    event_id: String,
    actor: String,
    kind: String,
    correlation_id: Option<String>,
    payload: serde_json::Value,
}

fn rows(db: &Path) -> Vec<Row> {
    let c = audit::store::open_read_only(db).unwrap();
    let mut stmt = c
        .prepare(
            "SELECT seq, event_id, actor, kind, correlation_id, payload FROM audit ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([], |r| {
        let payload: Vec<u8> = r.get(5)?;
        Ok(Row {
            seq: r.get(0)?,
            event_id: r.get(1)?,
            actor: r.get(2)?,
            kind: r.get(3)?,
            correlation_id: r.get(4)?,
            payload: serde_json::from_slice(&payload).unwrap(),
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

async fn wait_for_rows(db: &Path, n: usize) -> Vec<Row> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = rows(db);
        if r.len() >= n {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} rows after 30 s: {:#?}",
            r.len(),
            r.iter().rev().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn started(n: usize) -> AuditEvent {
    AuditEvent::ServiceStarted {
        version: format!("1.0.{n}"),
    }
}

/// Publishes raw bytes on `audit.<principal>` as that principal, with a message id.
async fn publish_raw(js: &jetstream::Context, principal: &str, payload: Vec<u8>, msg_id: &str) {
    js.send_publish(
        format!("audit.{principal}"),
        jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(msg_id),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

fn envelope_bytes(id: MessageId, sender: &str, event: AuditEvent) -> Vec<u8> {
    Envelope::new(
        id,
        CorrelationId::random(),
        Principal::new(sender).unwrap(),
        UnixMillis::now(),
        event,
    )
    .encode()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_once_with_their_actor_and_bad_messages_become_rejected_rows() {
    let server = NatsServer::start(&["hue", "door", "mail"]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let witness = dir.path().join("witness");
    let signer = CheckpointSigner::from_seed_file(
        LogName::default_name(),
        &server.layout().checkpoint_seed(),
    )
    .unwrap();
    let mut wc = WriterConfig::new(signer.clone());
    wc.checkpoint_every = 10;
    let writer = Writer::spawn(
        AuditLog::open(&db).unwrap(),
        Some(Witness::open(&witness).unwrap()),
        wc,
    )
    .unwrap();

    // The writer side, as the audit identity.
    let audit_client = server.connect(&Principal::audit()).await.unwrap();
    let consumer = ingest::bind(&jetstream::new(audit_client.clone()))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = IngestConfig {
        // Below the server's 64 KiB limit, so an oversized envelope can reach the writer.
        max_envelope_bytes: 32 * 1024,
        ..IngestConfig::default()
    };
    let ingest_task = tokio::spawn(ingest::run(consumer, writer.clone(), config, async {
        let _ = stopped.await;
    }));

    // Several identities emit concurrently.
    let mut expected: HashMap<String, (String, String)> = HashMap::new();
    let mut emitters = Vec::new();
    for name in ["hue", "door", "mail", "orchestrator"] {
        let principal = Principal::new(name).unwrap();
        let client = server.connect(&principal).await.unwrap();
        emitters.push((name, AuditEmitter::new(jetstream::new(client), principal)));
    }
    let mut joins = Vec::new();
    for (name, emitter) in emitters.clone() {
        joins.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..25 {
                let corr = CorrelationId::random();
                let id = emitter.emit(corr, started(n)).await.unwrap();
                ids.push((id.to_string(), name.to_owned(), corr.to_string()));
            }
            ids
        }));
    }
    for j in joins {
        for (id, actor, corr) in j.await.unwrap() {
            expected.insert(id, (actor, corr));
        }
    }

    // Hostile and broken messages from hue (the only subject hue may publish on).
    let hue = jetstream::new(
        server
            .connect(&Principal::new("hue").unwrap())
            .await
            .unwrap(),
    );
    // The same envelope twice under different Nats-Msg-Id headers: the stream keeps both.
    let twice = MessageId::random();
    let twice_bytes = envelope_bytes(twice, "hue", started(900));
    publish_raw(&hue, "hue", twice_bytes.clone(), "first-id").await;
    publish_raw(&hue, "hue", twice_bytes.clone(), "second-id").await;
    expected.insert(twice.to_string(), ("hue".to_owned(), String::new()));

    let good_text =
        String::from_utf8(envelope_bytes(MessageId::random(), "hue", started(1))).unwrap();
    let garbage = b"\x00\x01 definitely not json".to_vec();
    let unknown_field = good_text.replacen('{', "{\"admin\":true,", 1).into_bytes();
    let padding = "p".repeat(40 * 1024);
    let oversized = good_text.replacen("1.0.1", &padding, 1).into_bytes();
    let invalid_body = good_text
        .replacen("1.0.1", &"v".repeat(200), 1)
        .into_bytes();
    let liar_id = MessageId::random();
    let liar = envelope_bytes(liar_id, "door", started(2));
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("malformed_message", garbage),
        ("malformed_message", unknown_field),
        ("payload_too_large", oversized),
        ("invalid_message", invalid_body),
        ("sender_mismatch", liar),
    ];
    for (i, (_, payload)) in bad.iter().enumerate() {
        publish_raw(&hue, "hue", payload.clone(), &format!("bad-{i}")).await;
    }
    // Door reuses one of hue's event ids with other content.
    let (stolen_id, _) = expected
        .iter()
        .find(|(_, (actor, _))| actor == "hue")
        .map(|(id, v)| (id.clone(), v.clone()))
        .unwrap();
    let door = jetstream::new(
        server
            .connect(&Principal::new("door").unwrap())
            .await
            .unwrap(),
    );
    publish_raw(
        &door,
        "door",
        envelope_bytes(MessageId::parse(&stolen_id).unwrap(), "door", started(3)),
        "door-steals",
    )
    .await;

    // Later events still flow.
    let hue_emitter = emitters[0].1.clone();
    for n in 100..105 {
        let corr = CorrelationId::random();
        let id = hue_emitter.emit(corr, started(n)).await.unwrap();
        expected.insert(id.to_string(), ("hue".to_owned(), corr.to_string()));
    }

    let accepted = expected.len();
    let rejected = bad.len() + 1;
    let all = wait_for_rows(&db, accepted + rejected).await;
    // Give a wrongly doubled row a chance to show up before stopping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    let stats: IngestStats = ingest_task.await.unwrap().unwrap();
    let closed = writer.shutdown().await.unwrap();
    audit_client.flush().await.unwrap();
    let all_after = rows(&db);
    assert_eq!(all_after.len(), all.len(), "no extra rows appeared");
    assert_eq!(all_after.len(), accepted + rejected);

    // Every accepted event exactly once, with the subject's principal as actor.
    for (id, (actor, corr)) in &expected {
        let found: Vec<&Row> = all_after.iter().filter(|r| &r.event_id == id).collect();
        assert_eq!(found.len(), 1, "event {id}");
        let row = found[0];
        assert_eq!(&row.actor, actor, "event {id}");
        assert_eq!(row.kind, "service_started");
        if !corr.is_empty() {
            assert_eq!(row.correlation_id.as_deref(), Some(corr.as_str()));
        }
        assert_eq!(row.payload["id"], serde_json::json!(id));
        assert_eq!(row.payload["sender"], serde_json::json!(actor));
    }

    // Every bad message became a rejected row, never its raw bytes, and nothing was skipped.
    let rejected_rows: Vec<&Row> = all_after
        .iter()
        .filter(|r| r.kind == "rejected_event")
        .collect();
    let mut codes: Vec<String> = rejected_rows
        .iter()
        .map(|r| r.payload["error"].as_str().unwrap().to_owned())
        .collect();
    codes.sort();
    let mut want: Vec<String> = bad.iter().map(|(c, _)| (*c).to_owned()).collect();
    want.push("event_id_conflict".to_owned());
    want.sort();
    assert_eq!(codes, want);
    for r in &rejected_rows {
        assert!(r.event_id.starts_with("js-"), "{r:?}");
        assert!(r.payload["sha256"].as_str().unwrap().len() == 64);
        assert!(r.payload.get("body").is_none());
        let code = r.payload["error"].as_str().unwrap();
        let expected_actor = if code == "event_id_conflict" {
            "door"
        } else {
            "hue"
        };
        assert_eq!(r.actor, expected_actor, "{r:?}");
    }
    let liar_row = rejected_rows
        .iter()
        .find(|r| r.payload["error"] == "sender_mismatch")
        .unwrap();
    assert_eq!(liar_row.payload["claimed_sender"], "door");
    assert!(all_after.iter().all(|r| r.event_id != liar_id.to_string()));
    let conflict = rejected_rows
        .iter()
        .find(|r| r.payload["error"] == "event_id_conflict")
        .unwrap();
    let original = all_after.iter().find(|r| r.event_id == stolen_id).unwrap();
    assert_eq!(conflict.payload["existing_seq"], original.seq);
    assert_eq!(original.actor, "hue");

    // The ingest saw every message and acked each (the two copies of `twice` included).
    assert_eq!(
        stats.received,
        (accepted + rejected + 1) as u64,
        "{stats:?}"
    );
    assert_eq!(stats.acked, stats.received, "{stats:?}");
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    assert_eq!(stats.rejected, rejected as u64, "{stats:?}");
    let admin = jetstream::new(server.admin().await.unwrap());
    let info = admin
        .get_stream(stream::AUDIT)
        .await
        .unwrap()
        .consumer_info(stream::AUDIT_WRITER_CONSUMER)
        .await
        .unwrap();
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_pending, 0, "{info:?}");
    assert_eq!(info.ack_floor.stream_sequence, stats.received, "{info:?}");

    // The writer checkpointed (every 10 rows and at shutdown) and the log verifies.
    assert_eq!(closed.last_checkpoint, closed.head.tree_size);
    let report = verify(&db, &signer.verifier(), Some(&witness)).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.rows_verified, (accepted + rejected) as u64);
    assert!(report.checkpoints_verified >= 2, "{report:?}");
    assert_eq!(report.witness_notes, report.checkpoints_verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_identity_cannot_create_or_delete_consumers() {
    // The writer binds to the provisioned consumer; it could not make its own even if it
    // tried, and it cannot delete the stream's messages.
    let server = NatsServer::start(&[]).await.unwrap();
    let js = jetstream::new(server.connect(&Principal::audit()).await.unwrap());
    assert!(ingest::bind(&js).await.is_ok());
    let mut js_short = js.clone();
    js_short.set_timeout(Duration::from_secs(2));
    let created = js_short
        .get_stream(stream::AUDIT)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("rogue".to_owned()),
            ..Default::default()
        })
        .await;
    assert!(created.is_err());
    let deleted = js_short.delete_stream(stream::AUDIT).await;
    assert!(deleted.is_err());
}

/// The server's process id, from the `[pid]` prefix of its log lines.
fn server_pid(server: &NatsServer) -> u32 {
    let log = server.log();
    let first = log.lines().next().unwrap_or_default();
    first
        .strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no [pid] prefix in the server log: {first:?}"))
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_that_times_out_retries_with_the_same_id_and_is_stored_once() {
    let server = NatsServer::start(&["hue"]).await.unwrap();
    let hue = Principal::new("hue").unwrap();
    let mut js = jetstream::new(server.connect(&hue).await.unwrap());
    js.set_timeout(Duration::from_millis(300));
    let emitter = AuditEmitter::new(js, hue.clone()).with_attempts(3);
    let envelope = Envelope::new(
        MessageId::random(),
        CorrelationId::random(),
        hue.clone(),
        UnixMillis::now(),
        started(7),
    );
    // Freeze the server: every publish is sent but no ack comes back in time.
    let pid = server_pid(&server);
    signal(pid, "-STOP");
    let result = emitter.emit_envelope(&envelope).await;
    signal(pid, "-CONT");
    let err = result.unwrap_err();
    assert_eq!(err.code(), "audit_publish_timeout");
    assert!(
        matches!(&err, audit::EmitError::Publish { id, attempts: 3, .. } if *id == envelope.id),
        "{err:?}"
    );
    // The thawed server received all three attempts under one Nats-Msg-Id and kept one; a
    // later retry of the same envelope is acknowledged as that same message.
    assert_eq!(emitter.emit_envelope(&envelope).await.unwrap(), envelope.id);
    let state = server.stream_state(stream::AUDIT).await.unwrap();
    assert_eq!(state.messages, 1, "the stream de-duplicated every retry");

    // And the writer stores it once.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = CheckpointSigner::from_seed_file(
        LogName::default_name(),
        &server.layout().checkpoint_seed(),
    )
    .unwrap();
    let writer = Writer::spawn(
        AuditLog::open(&db).unwrap(),
        None,
        WriterConfig::new(signer),
    )
    .unwrap();
    let audit_client = server.connect(&Principal::audit()).await.unwrap();
    let consumer = ingest::bind(&jetstream::new(audit_client.clone()))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ingest::run(
        consumer,
        writer.clone(),
        IngestConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let stored = wait_for_rows(&db, 1).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    writer.shutdown().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event_id, envelope.id.to_string());
}
