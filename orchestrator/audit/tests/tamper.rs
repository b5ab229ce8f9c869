//! SV-37: audit rows tampered, deleted, truncated, or the chain rewritten.
//!
//! Each case builds a real log (250 rows, a signed checkpoint every 50 rows, each also in a
//! witness file), tampers with the SQLite file the way an attacker with file access would
//! (dropping the append-only triggers through a raw connection), and checks that `verify`
//! reports exactly the expected problems, naming the first bad sequence number.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::{Path, PathBuf};

use audit::checkpoint::NoteError;
use audit::{
    AuditLog, CheckpointSigner, CheckpointSource, LogName, NewEvent, Problem, Report, RowFields,
    RowHash, Witness, row_hash, verify,
};
use protocol::{CorrelationId, UnixMillis};
use rusqlite::{Connection, params};

const ROWS: u32 = 250;
const EVERY: u32 = 50;

struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    witness: PathBuf,
    signer: CheckpointSigner,
}

fn signer() -> CheckpointSigner {
    CheckpointSigner::from_seed(LogName::default_name(), &[0x11; 32])
}

fn attacker_key() -> CheckpointSigner {
    CheckpointSigner::from_seed(LogName::default_name(), &[0x66; 32])
}

fn event(n: u32) -> NewEvent {
    let correlation = n
        .is_multiple_of(3)
        .then(|| CorrelationId::from_bytes([n as u8; 16]));
    NewEvent::new(
        format!("00000000-0000-4000-8000-{n:012}"),
        UnixMillis(1_700_000_000_000 + i64::from(n) * 1000),
        if n.is_multiple_of(2) {
            "hue"
        } else {
            "orchestrator"
        },
        "service_started",
        correlation,
        format!("{{\"n\":{n},\"text\":\"event number {n}\"}}").into_bytes(),
    )
    .unwrap()
}

/// A log of [`ROWS`] rows with a checkpoint every [`EVERY`] rows, in the DB and the witness.
fn build() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let witness_path = dir.path().join("witness");
    let signer = signer();
    let mut log = AuditLog::open(&db).unwrap();
    let mut witness = Witness::open(&witness_path).unwrap();
    for start in (1..=ROWS).step_by(EVERY as usize) {
        let events: Vec<NewEvent> = (start..start + EVERY).map(event).collect();
        log.append_batch(&events, UnixMillis(1_800_000_000_000 + i64::from(start)))
            .unwrap();
        let cp = log
            .write_checkpoint(&signer, UnixMillis(1_800_000_000_000))
            .unwrap()
            .unwrap();
        witness.append(&cp.note, cp.tree_size).unwrap();
    }
    Fixture {
        _dir: dir,
        db,
        witness: witness_path,
        signer,
    }
}

impl Fixture {
    fn verify(&self, with_witness: bool) -> Report {
        verify(
            &self.db,
            &self.signer.verifier(),
            with_witness.then_some(self.witness.as_path()),
        )
        .unwrap()
    }

    /// A raw connection with the append-only triggers dropped: what an attacker with write
    /// access to the file can do.
    fn attacker(&self) -> Connection {
        let c = Connection::open(&self.db).unwrap();
        c.execute_batch(
            "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;
             DROP TRIGGER checkpoints_no_update; DROP TRIGGER checkpoints_no_delete;",
        )
        .unwrap();
        c
    }
}

/// The four trigger findings every attack that drops the triggers leaves behind, followed by
/// `rest`.
fn after_dropping_triggers(rest: Vec<Problem>) -> Vec<Problem> {
    let mut v: Vec<Problem> = [
        "audit_no_update",
        "audit_no_delete",
        "checkpoints_no_update",
        "checkpoints_no_delete",
    ]
    .into_iter()
    .map(|name| Problem::TriggerMissing { name })
    .collect();
    v.extend(rest);
    v
}

/// seq, event_id, ts_ms, recorded_ms, actor, kind, correlation_id, payload.
type StoredRow = (
    i64,
    String,
    i64,
    i64,
    String,
    String,
    Option<String>,
    Vec<u8>,
);

/// Recomputes every row hash from `from` onwards with the real hash function and rewrites the
/// stored links, as an attacker who knows the format would.
fn recompute_chain(c: &Connection, from: u64) {
    let rows: Vec<StoredRow> = {
        let mut stmt = c
            .prepare(
                "SELECT seq, event_id, ts_ms, recorded_ms, actor, kind, correlation_id, payload
                 FROM audit WHERE seq >= ?1 ORDER BY seq",
            )
            .unwrap();
        stmt.query_map([from as i64], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let prev: Vec<u8> = c
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            [from as i64 - 1],
            |r| r.get(0),
        )
        .unwrap();
    let mut prev = RowHash::from_slice(&prev).unwrap();
    for (seq, event_id, ts_ms, recorded_ms, actor, kind, correlation_id, payload) in rows {
        let hash = row_hash(
            &RowFields {
                seq: seq as u64,
                event_id: &event_id,
                ts_ms,
                recorded_ms,
                actor: &actor,
                kind: &kind,
                correlation_id: correlation_id.as_deref(),
                payload: &payload,
            },
            &prev,
        );
        c.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![&prev.0[..], &hash.0[..], seq],
        )
        .unwrap();
        prev = hash;
    }
}

fn stored_hash(c: &Connection, seq: u64) -> Vec<u8> {
    c.query_row("SELECT hash FROM audit WHERE seq = ?1", [seq as i64], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn an_untouched_log_verifies() {
    let f = build();
    let report = f.verify(true);
    assert_eq!(report.problems, vec![]);
    assert!(report.is_ok());
    assert_eq!(report.rows_verified, 250);
    assert_eq!(report.checkpoints_verified, 5);
    assert_eq!(report.witness_notes, 5);
    assert_eq!(report.head.unwrap().tree_size, 250);
    assert_eq!(report.first_bad_seq(), None);
}

#[test]
fn sql_update_and_delete_are_refused_by_the_triggers() {
    let f = build();
    let c = Connection::open(&f.db).unwrap();
    for sql in [
        "UPDATE audit SET payload = x'00' WHERE seq = 10",
        "UPDATE audit SET hash = prev_hash",
        "DELETE FROM audit WHERE seq = 10",
        "DELETE FROM audit",
        "UPDATE checkpoints SET note = 'x' WHERE tree_size = 50",
        "DELETE FROM checkpoints WHERE tree_size = 250",
    ] {
        let err = c.execute(sql, []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    drop(c);
    assert!(f.verify(true).is_ok());
}

#[test]
fn an_edited_row_is_named() {
    let f = build();
    let c = f.attacker();
    c.execute(
        "UPDATE audit SET payload = CAST('{\"n\":120,\"text\":\"nothing happened\"}' AS BLOB)
         WHERE seq = 120",
        [],
    )
    .unwrap();
    drop(c);
    let report = f.verify(true);
    assert_eq!(
        report.problems,
        after_dropping_triggers(vec![Problem::RowHashMismatch { seq: 120 }])
    );
    assert_eq!(report.first_bad_seq(), Some(120));
    assert_eq!(report.problems[4].code(), "row_hash_mismatch");
}

#[test]
fn an_edited_actor_or_time_is_named_too() {
    let f = build();
    let c = f.attacker();
    c.execute("UPDATE audit SET actor = 'door' WHERE seq = 7", [])
        .unwrap();
    c.execute("UPDATE audit SET ts_ms = ts_ms + 1 WHERE seq = 201", [])
        .unwrap();
    drop(c);
    let report = f.verify(true);
    assert_eq!(
        report.problems,
        after_dropping_triggers(vec![
            Problem::RowHashMismatch { seq: 7 },
            Problem::RowHashMismatch { seq: 201 },
        ])
    );
    assert_eq!(report.first_bad_seq(), Some(7));
}

#[test]
fn a_deleted_middle_row_is_named() {
    let f = build();
    let c = f.attacker();
    c.execute("DELETE FROM audit WHERE seq = 77", []).unwrap();
    drop(c);
    let report = f.verify(true);
    assert_eq!(
        report.problems,
        after_dropping_triggers(vec![Problem::RowsMissing {
            first_missing: 77,
            next_present: 78
        }])
    );
    assert_eq!(report.first_bad_seq(), Some(77));
    assert_eq!(report.rows_verified, 249);
}

#[test]
fn a_deleted_checkpointed_row_is_named() {
    // The row a checkpoint points at is gone: the gap is the finding, not the checkpoint.
    let f = build();
    let c = f.attacker();
    c.execute("DELETE FROM audit WHERE seq IN (100, 101)", [])
        .unwrap();
    drop(c);
    let report = f.verify(true);
    assert_eq!(
        report.problems,
        after_dropping_triggers(vec![Problem::RowsMissing {
            first_missing: 100,
            next_present: 102
        }])
    );
}

#[test]
fn a_truncated_tail_is_caught_by_the_witness() {
    let f = build();
    let c = f.attacker();
    // Delete the last 20 rows and the checkpoint that covered them.
    c.execute("DELETE FROM audit WHERE seq > 230", []).unwrap();
    c.execute("DELETE FROM checkpoints WHERE tree_size > 230", [])
        .unwrap();
    drop(c);
    let report = f.verify(true);
    assert_eq!(
        report.problems,
        after_dropping_triggers(vec![
            Problem::WitnessCheckpointMissing { tree_size: 250 },
            Problem::Truncated {
                proven_size: 250,
                rows_found: 230,
                source: CheckpointSource::Witness
            },
        ])
    );
    assert_eq!(report.first_bad_seq(), Some(231));
    // Without the witness the database alone cannot show it (only that someone had raw
    // access): this is why checkpoints are copied off the database.
    assert_eq!(f.verify(false).problems, after_dropping_triggers(vec![]));
}

#[test]
fn a_truncated_tail_is_caught_by_a_database_checkpoint() {
    let f = build();
    let c = f.attacker();
    c.execute("DELETE FROM audit WHERE seq > 230", []).unwrap();
    drop(c);
    for with_witness in [false, true] {
        let report = f.verify(with_witness);
        assert_eq!(
            report.problems,
            after_dropping_triggers(vec![Problem::Truncated {
                proven_size: 250,
                rows_found: 230,
                source: CheckpointSource::Database
            }]),
            "with witness: {with_witness}"
        );
        assert_eq!(report.first_bad_seq(), Some(231));
    }
}

#[test]
fn a_recomputed_chain_is_caught_by_the_signed_checkpoints() {
    let f = build();
    let c = f.attacker();
    c.execute(
        "UPDATE audit SET payload = CAST('{\"n\":120,\"text\":\"nothing happened\"}' AS BLOB)
         WHERE seq = 120",
        [],
    )
    .unwrap();
    recompute_chain(&c, 120);
    // Make the checkpoint rows agree with the new chain too; the notes cannot be re-signed
    // without the checkpoint key, so they keep the old heads.
    for size in [150u64, 200, 250] {
        let h = stored_hash(&c, size);
        c.execute(
            "UPDATE checkpoints SET head_hash = ?1 WHERE tree_size = ?2",
            params![h, size as i64],
        )
        .unwrap();
    }
    drop(c);
    for with_witness in [false, true] {
        let report = f.verify(with_witness);
        assert_eq!(
            report.problems,
            after_dropping_triggers(vec![
                Problem::CheckpointRowMismatch { tree_size: 150 },
                Problem::CheckpointRowMismatch { tree_size: 200 },
                Problem::CheckpointRowMismatch { tree_size: 250 },
                Problem::CheckpointMismatch {
                    tree_size: 150,
                    last_good: 100,
                    source: CheckpointSource::Database
                },
            ]),
            "with witness: {with_witness}"
        );
        // The first bad row (120) lies in the named range.
        assert_eq!(report.problems[7].bad_range(), Some((101, 150)));
        assert_eq!(report.first_bad_seq(), Some(101));
    }
}

#[test]
fn a_recomputed_chain_with_re_signed_checkpoints_is_caught_by_the_witness() {
    let f = build();
    let c = f.attacker();
    c.execute("UPDATE audit SET kind = 'plan_refused' WHERE seq = 160", [])
        .unwrap();
    recompute_chain(&c, 160);
    // Re-sign every later checkpoint with the attacker's own key.
    for size in [200u64, 250] {
        let h = RowHash::from_slice(&stored_hash(&c, size)).unwrap();
        let note = attacker_key().sign(&audit::Checkpoint {
            tree_size: size,
            head: h,
        });
        c.execute(
            "UPDATE checkpoints SET head_hash = ?1, note = ?2 WHERE tree_size = ?3",
            params![&h.0[..], note, size as i64],
        )
        .unwrap();
    }
    drop(c);
    let bad_sig = |tree_size| Problem::CheckpointBadSignature {
        tree_size: Some(tree_size),
        source: CheckpointSource::Database,
        reason: NoteError::UnknownKey,
    };
    // The database alone shows forged signatures but has no trusted head past 150.
    assert_eq!(
        f.verify(false).problems,
        after_dropping_triggers(vec![bad_sig(200), bad_sig(250)])
    );
    // The witness still holds the real notes: the rewrite is pinned to 151..=200.
    let report = f.verify(true);
    assert_eq!(
        report.problems,
        after_dropping_triggers(vec![
            bad_sig(200),
            bad_sig(250),
            Problem::CheckpointMismatch {
                tree_size: 200,
                last_good: 150,
                source: CheckpointSource::Witness
            },
        ])
    );
    assert_eq!(report.first_bad_seq(), Some(151));
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let f = build();
    let c = f.attacker();
    // Replace a real note with one for the same head signed by another key.
    let h = RowHash::from_slice(&stored_hash(&c, 100)).unwrap();
    let forged = attacker_key().sign(&audit::Checkpoint {
        tree_size: 100,
        head: h,
    });
    c.execute(
        "UPDATE checkpoints SET note = ?1 WHERE tree_size = 100",
        params![forged],
    )
    .unwrap();
    // Keep the real key id but put another key's signature behind it.
    let real = f.signer.sign(&audit::Checkpoint {
        tree_size: 150,
        head: RowHash::from_slice(&stored_hash(&c, 150)).unwrap(),
    });
    let (prefix, sig) = real.rsplit_once(' ').unwrap();
    let (_, forged_sig) = forged.rsplit_once(' ').unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut blob = b64.decode(sig.trim_end()).unwrap();
    blob[4..].copy_from_slice(&b64.decode(forged_sig.trim_end()).unwrap()[4..]);
    let relabelled = format!("{prefix} {}\n", b64.encode(&blob));
    c.execute(
        "UPDATE checkpoints SET note = ?1 WHERE tree_size = 150",
        params![relabelled],
    )
    .unwrap();
    drop(c);
    // A witness note from another key, too.
    let mut w = Witness::open(&f.witness).unwrap();
    w.append(&forged, 100).unwrap();
    drop(w);
    let report = f.verify(true);
    assert_eq!(
        report.problems,
        after_dropping_triggers(vec![
            Problem::CheckpointBadSignature {
                tree_size: Some(100),
                source: CheckpointSource::Database,
                reason: NoteError::UnknownKey,
            },
            Problem::CheckpointBadSignature {
                tree_size: Some(150),
                source: CheckpointSource::Database,
                reason: NoteError::BadSignature,
            },
            Problem::CheckpointBadSignature {
                tree_size: Some(100),
                source: CheckpointSource::Witness,
                reason: NoteError::UnknownKey,
            },
        ])
    );
    assert!(
        report
            .problems
            .iter()
            .skip(4)
            .all(|p| p.code() == "checkpoint_bad_signature")
    );
    // The witness's real notes still cover those sizes, so the chain itself checks out.
    assert_eq!(report.checkpoints_verified, 5);
}

#[test]
fn verifying_under_the_wrong_public_key_flags_every_checkpoint() {
    let f = build();
    let report = verify(&f.db, &attacker_key().verifier(), Some(&f.witness)).unwrap();
    assert_eq!(report.problems.len(), 10);
    assert!(report.problems.iter().all(|p| matches!(
        p,
        Problem::CheckpointBadSignature {
            reason: NoteError::UnknownKey,
            ..
        }
    )));
}

#[test]
fn verify_opens_read_only_and_refuses_other_files() {
    let f = build();
    let before = std::fs::read(&f.db).unwrap();
    f.verify(true);
    assert_eq!(std::fs::read(&f.db).unwrap(), before);
    let other = f.db.with_file_name("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = verify(&other, &f.signer.verifier(), None).unwrap_err();
    assert_eq!(err.code(), "audit_not_an_audit_log");
    let missing: &Path = &f.db.with_file_name("missing.db");
    assert!(verify(missing, &f.signer.verifier(), None).is_err());
}
