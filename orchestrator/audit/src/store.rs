//! The audit database: one SQLite file in WAL mode with `synchronous=FULL`, an append-only
//! hash-chained `audit` table and a `checkpoints` table of signed notes.
//!
//! [`AuditLog`] is the only code that writes audit rows. It is a plain synchronous object; the
//! [`crate::writer`] thread owns one and batches appends into group commits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{CorrelationId, UnixMillis};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, TransactionBehavior, params};

use crate::checkpoint::{Checkpoint, CheckpointSigner, CheckpointVerifier};
use crate::error::AuditError;
use crate::hash::{GENESIS, RowFields, RowHash, row_hash};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id`: "AUDT", so a stray SQLite file is never taken for an audit log.
pub const APPLICATION_ID: i64 = 0x4155_4454;

/// Longest event payload stored, in bytes. An envelope is at most 64 KiB on the wire; its
/// canonical form is about as long.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Longest event id, actor or correlation id, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// How long a connection waits on a lock held by another connection (a verifier, a backup).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE audit (
    seq            INTEGER PRIMARY KEY,
    event_id       TEXT    NOT NULL UNIQUE,
    ts_ms          INTEGER NOT NULL,
    recorded_ms    INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    correlation_id TEXT,
    payload        BLOB    NOT NULL,
    prev_hash      BLOB    NOT NULL,
    hash           BLOB    NOT NULL
);
CREATE TABLE checkpoints (
    tree_size  INTEGER PRIMARY KEY,
    head_hash  BLOB    NOT NULL,
    note       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
";

/// The trigger names the schema creates (the verifier reports any that went missing).
pub const TRIGGERS: [&str; 4] = [
    "audit_no_update",
    "audit_no_delete",
    "checkpoints_no_update",
    "checkpoints_no_delete",
];

/// The chain head: how many rows there are and the hash of the last one ([`GENESIS`] when
/// empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Rows in the log (= seq of the last row).
    pub tree_size: u64,
    /// Hash of the last row.
    pub hash: RowHash,
}

/// One event to append, with every field checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    event_id: String,
    ts: UnixMillis,
    actor: String,
    kind: String,
    correlation_id: Option<String>,
    payload: Vec<u8>,
}

fn printable_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && s.bytes().all(|b| b.is_ascii_graphic())
}

impl NewEvent {
    /// Checks and wraps: ids and actor are 1 to 64 printable ASCII bytes, the kind is 1 to 48
    /// bytes of `[a-z0-9_]` (like [`protocol::message::ErrorCode`]), the payload at most
    /// [`MAX_PAYLOAD_BYTES`].
    pub fn new(
        event_id: impl Into<String>,
        ts: UnixMillis,
        actor: impl Into<String>,
        kind: impl Into<String>,
        correlation_id: Option<CorrelationId>,
        payload: Vec<u8>,
    ) -> Result<Self, AuditError> {
        let (event_id, actor, kind) = (event_id.into(), actor.into(), kind.into());
        if !printable_id(&event_id) {
            return Err(AuditError::InvalidEvent(
                "event id must be 1 to 64 printable ASCII bytes",
            ));
        }
        if !printable_id(&actor) {
            return Err(AuditError::InvalidEvent(
                "actor must be 1 to 64 printable ASCII bytes",
            ));
        }
        if kind.is_empty()
            || kind.len() > 48
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(AuditError::InvalidEvent(
                "kind must be 1 to 48 bytes of [a-z0-9_]",
            ));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(AuditError::InvalidEvent("payload is over the size limit"));
        }
        Ok(NewEvent {
            event_id,
            ts,
            actor,
            kind,
            correlation_id: correlation_id.map(|c| c.to_string()),
            payload,
        })
    }

    /// A row whose fields the caller built from constants and bounded values (the ingest's
    /// `rejected_event` rows); skips the checks that cannot fail for them.
    pub(crate) fn rejected_row(
        event_id: String,
        ts: UnixMillis,
        actor: String,
        kind: &'static str,
        payload: Vec<u8>,
    ) -> Self {
        NewEvent {
            event_id,
            ts,
            actor,
            kind: kind.to_owned(),
            correlation_id: None,
            payload,
        }
    }

    /// The event id.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
    /// The sender's timestamp.
    pub fn ts(&self) -> UnixMillis {
        self.ts
    }
    /// The actor.
    pub fn actor(&self) -> &str {
        &self.actor
    }
    /// The kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }
    /// The correlation id text.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }
    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn fields(&self, seq: u64, recorded: UnixMillis) -> RowFields<'_> {
        RowFields {
            seq,
            event_id: &self.event_id,
            ts_ms: self.ts.0,
            recorded_ms: recorded.0,
            actor: &self.actor,
            kind: &self.kind,
            correlation_id: self.correlation_id.as_deref(),
            payload: &self.payload,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored as a new row.
    New {
        /// Its sequence number.
        seq: u64,
    },
    /// The event id was already stored with the same content (a redelivery); nothing written.
    Duplicate {
        /// The existing row.
        seq: u64,
    },
    /// The event id was already stored with *different* content; nothing written. The
    /// ingest records this as a rejected event, so a conflicting replay is never silent.
    Conflict {
        /// The existing row.
        seq: u64,
    },
}

impl Appended {
    /// The row that holds the event.
    pub fn seq(&self) -> u64 {
        match self {
            Appended::New { seq } | Appended::Duplicate { seq } | Appended::Conflict { seq } => {
                *seq
            }
        }
    }
}

/// A checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Rows covered.
    pub tree_size: u64,
    /// Hash of row `tree_size`.
    pub head: RowHash,
    /// The signed note.
    pub note: String,
}

/// The open audit database (read-write). Not `Sync`: one owner at a time.
#[derive(Debug)]
pub struct AuditLog {
    conn: Connection,
    path: PathBuf,
    head: Head,
    last_checkpoint: u64,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Applies and checks the durability settings.
fn configure(conn: &Connection) -> Result<(), AuditError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(AuditError::sqlite("set busy_timeout"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(AuditError::sqlite("set journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(AuditError::NotWal { mode });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(AuditError::sqlite("set synchronous"))?;
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .map_err(AuditError::sqlite("read synchronous"))?;
    if sync != 2 {
        return Err(AuditError::PragmaRefused {
            pragma: "synchronous=FULL",
        });
    }
    // F_FULLFSYNC on macOS; no effect elsewhere.
    conn.pragma_update(None, "fullfsync", true)
        .map_err(AuditError::sqlite("set fullfsync"))?;
    conn.pragma_update(None, "checkpoint_fullfsync", true)
        .map_err(AuditError::sqlite("set checkpoint_fullfsync"))?;
    Ok(())
}

/// Runs `PRAGMA integrity_check` and refuses anything but "ok".
fn integrity_check(conn: &Connection) -> Result<(), AuditError> {
    let mut stmt = conn
        .prepare("PRAGMA integrity_check(8)")
        .map_err(AuditError::sqlite("integrity_check"))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(AuditError::sqlite("integrity_check"))?
        .collect::<Result<_, _>>()
        .map_err(AuditError::sqlite("integrity_check"))?;
    if lines.len() == 1 && lines.first().is_some_and(|l| l == "ok") {
        return Ok(());
    }
    Err(AuditError::Corrupt {
        detail: lines.join("; "),
    })
}

/// Checks that the file holds our schema at our version, creating it in a new file.
fn ensure_schema(conn: &mut Connection) -> Result<(), AuditError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(AuditError::sqlite("read user_version"))?;
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(AuditError::sqlite("read application_id"))?;
    if version == 0 && app == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(AuditError::sqlite("read schema"))?;
        if tables != 0 {
            return Err(AuditError::NotAnAuditLog {
                detail: "the database already holds other tables",
            });
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(AuditError::sqlite("begin schema"))?;
        tx.execute_batch(SCHEMA)
            .map_err(AuditError::sqlite("create schema"))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(AuditError::sqlite("set application_id"))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(AuditError::sqlite("set user_version"))?;
        tx.commit().map_err(AuditError::sqlite("commit schema"))?;
        return Ok(());
    }
    check_identity(conn)
}

/// Checks the application id and schema version of an existing log.
pub(crate) fn check_identity(conn: &Connection) -> Result<(), AuditError> {
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(AuditError::sqlite("read application_id"))?;
    if app != APPLICATION_ID {
        return Err(AuditError::NotAnAuditLog {
            detail: "application_id is not the audit log's",
        });
    }
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(AuditError::sqlite("read user_version"))?;
    if version != SCHEMA_VERSION {
        return Err(AuditError::SchemaVersion {
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Opens an existing log read-only (for the verifier and for tests that inspect a live log).
pub fn open_read_only(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(AuditError::sqlite("open read-only"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(AuditError::sqlite("set busy_timeout"))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(AuditError::sqlite("set query_only"))?;
    check_identity(&conn)?;
    Ok(conn)
}

impl AuditLog {
    /// Opens (or creates) the log: WAL (checked), `synchronous=FULL` (checked), `fullfsync`,
    /// `checkpoint_fullfsync`, a busy timeout, `PRAGMA integrity_check` (a corrupt file is
    /// refused), then the schema (created in an empty file; otherwise its version is checked).
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(AuditError::sqlite("open"))?;
        integrity_check(&conn)?;
        configure(&conn)?;
        ensure_schema(&mut conn)?;
        let head = conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()
            .map_err(AuditError::sqlite("read head"))?;
        let head = match head {
            None => Head {
                tree_size: 0,
                hash: GENESIS,
            },
            Some((seq, hash)) => Head {
                tree_size: to_u64(seq),
                hash: RowHash::from_slice(&hash).ok_or(AuditError::TailMismatch {
                    seq: to_u64(seq),
                    detail: "stored hash is not 32 bytes",
                })?,
            },
        };
        let last_checkpoint: i64 = conn
            .query_row(
                "SELECT coalesce(max(tree_size), 0) FROM checkpoints",
                [],
                |r| r.get(0),
            )
            .map_err(AuditError::sqlite("read checkpoints"))?;
        Ok(AuditLog {
            conn,
            path: path.to_owned(),
            head,
            last_checkpoint: to_u64(last_checkpoint),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The chain head as of the last commit.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Tree size of the newest stored checkpoint (0 if none).
    pub fn last_checkpoint_size(&self) -> u64 {
        self.last_checkpoint
    }

    /// Appends events in ONE transaction (one fsync). An event whose id is already stored
    /// writes nothing and reports the existing row ([`Appended::Duplicate`] if the content is
    /// the same, [`Appended::Conflict`] if not), so a redelivery never doubles a row. Either
    /// the whole batch commits or none of it does.
    pub fn append_batch(
        &mut self,
        events: &[NewEvent],
        recorded: UnixMillis,
    ) -> Result<Vec<Appended>, AuditError> {
        let mut out = Vec::with_capacity(events.len());
        let mut head = self.head;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(AuditError::sqlite("begin append"))?;
        {
            let mut find = tx
                .prepare_cached(
                    "SELECT seq, ts_ms, actor, kind, correlation_id, payload
                     FROM audit WHERE event_id = ?1",
                )
                .map_err(AuditError::sqlite("prepare lookup"))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit (seq, event_id, ts_ms, recorded_ms, actor, kind,
                                        correlation_id, payload, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(AuditError::sqlite("prepare insert"))?;
            for event in events {
                let existing = find
                    .query_row([event.event_id()], |r| {
                        let same = r.get_ref(1)?.as_i64()? == event.ts.0
                            && r.get_ref(2)?.as_str()? == event.actor
                            && r.get_ref(3)?.as_str()? == event.kind
                            && r.get_ref(4)?.as_str_or_null()? == event.correlation_id()
                            && r.get_ref(5)?.as_blob()? == event.payload();
                        Ok((r.get::<_, i64>(0)?, same))
                    })
                    .optional()
                    .map_err(AuditError::sqlite("look up event id"))?;
                if let Some((seq, same)) = existing {
                    let seq = to_u64(seq);
                    out.push(if same {
                        Appended::Duplicate { seq }
                    } else {
                        Appended::Conflict { seq }
                    });
                    continue;
                }
                let seq = head.tree_size + 1;
                let hash = row_hash(&event.fields(seq, recorded), &head.hash);
                insert
                    .execute(params![
                        to_i64(seq),
                        event.event_id,
                        event.ts.0,
                        recorded.0,
                        event.actor,
                        event.kind,
                        event.correlation_id,
                        event.payload,
                        &head.hash.0[..],
                        &hash.0[..],
                    ])
                    .map_err(AuditError::sqlite("insert row"))?;
                head = Head {
                    tree_size: seq,
                    hash,
                };
                out.push(Appended::New { seq });
            }
        }
        tx.commit().map_err(AuditError::sqlite("commit append"))?;
        self.head = head;
        Ok(out)
    }

    /// Signs and stores a checkpoint of the current head, unless the head is already
    /// checkpointed or the log is empty.
    pub fn write_checkpoint(
        &mut self,
        signer: &CheckpointSigner,
        now: UnixMillis,
    ) -> Result<Option<StoredCheckpoint>, AuditError> {
        if self.head.tree_size == 0 || self.head.tree_size == self.last_checkpoint {
            return Ok(None);
        }
        let checkpoint = Checkpoint {
            tree_size: self.head.tree_size,
            head: self.head.hash,
        };
        let note = signer.sign(&checkpoint);
        self.conn
            .execute(
                "INSERT INTO checkpoints (tree_size, head_hash, note, created_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    to_i64(checkpoint.tree_size),
                    &checkpoint.head.0[..],
                    note,
                    now.0
                ],
            )
            .map_err(AuditError::sqlite("insert checkpoint"))?;
        self.last_checkpoint = checkpoint.tree_size;
        Ok(Some(StoredCheckpoint {
            tree_size: checkpoint.tree_size,
            head: checkpoint.head,
            note,
        }))
    }

    /// Stored checkpoints with a tree size above `after`, oldest first.
    pub fn checkpoints_after(&self, after: u64) -> Result<Vec<StoredCheckpoint>, AuditError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT tree_size, head_hash, note FROM checkpoints
                 WHERE tree_size > ?1 ORDER BY tree_size",
            )
            .map_err(AuditError::sqlite("prepare checkpoints"))?;
        let rows = stmt
            .query_map([to_i64(after)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(AuditError::sqlite("read checkpoints"))?;
        let mut out = Vec::new();
        for row in rows {
            let (size, head, note) = row.map_err(AuditError::sqlite("read checkpoint"))?;
            let tree_size = to_u64(size);
            let head = RowHash::from_slice(&head).ok_or(AuditError::TailMismatch {
                seq: tree_size,
                detail: "stored checkpoint head is not 32 bytes",
            })?;
            out.push(StoredCheckpoint {
                tree_size,
                head,
                note,
            });
        }
        Ok(out)
    }

    /// Checks the part of the log the writer is about to extend: the newest checkpoint must
    /// verify under `verifier` and match the stored row at its tree size, and every row after
    /// it must hash and chain correctly. A writer that skipped this could sign a fresh
    /// checkpoint over rows someone changed while it was down. (The full history is the
    /// verifier's job.)
    pub fn check_tail(&self, verifier: &CheckpointVerifier) -> Result<(), AuditError> {
        let last = self
            .conn
            .query_row(
                "SELECT tree_size, note FROM checkpoints ORDER BY tree_size DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(AuditError::sqlite("read last checkpoint"))?;
        let (from, mut prev) = match last {
            None => (0, GENESIS),
            Some((size, note)) => {
                let tree_size = to_u64(size);
                let checkpoint = verifier
                    .verify(&note)
                    .map_err(|source| AuditError::CheckpointNote { tree_size, source })?;
                if checkpoint.tree_size != tree_size {
                    return Err(AuditError::TailMismatch {
                        seq: tree_size,
                        detail: "checkpoint row and note disagree on the tree size",
                    });
                }
                let stored: Option<Vec<u8>> = self
                    .conn
                    .query_row("SELECT hash FROM audit WHERE seq = ?1", [size], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(AuditError::sqlite("read checkpointed row"))?;
                if stored.as_deref() != Some(&checkpoint.head.0[..]) {
                    return Err(AuditError::TailMismatch {
                        seq: tree_size,
                        detail: "the signed checkpoint head does not match the stored row",
                    });
                }
                (tree_size, checkpoint.head)
            }
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, event_id, ts_ms, recorded_ms, actor, kind, correlation_id, payload,
                        prev_hash, hash
                 FROM audit WHERE seq > ?1 ORDER BY seq",
            )
            .map_err(AuditError::sqlite("prepare tail"))?;
        let mut rows = stmt
            .query([to_i64(from)])
            .map_err(AuditError::sqlite("read tail"))?;
        let mut expected_seq = from + 1;
        while let Some(row) = rows.next().map_err(AuditError::sqlite("read tail row"))? {
            let mismatch = |detail| AuditError::TailMismatch {
                seq: expected_seq,
                detail,
            };
            let decoded = crate::verify::decode_row(row)
                .map_err(|_field| mismatch("row has a field of the wrong type"))?;
            if decoded.fields.seq != expected_seq {
                return Err(mismatch("sequence numbers are not contiguous"));
            }
            if decoded.prev_hash != prev {
                return Err(mismatch("prev_hash does not link to the previous row"));
            }
            if row_hash(&decoded.fields, &decoded.prev_hash) != decoded.hash {
                return Err(mismatch("row hash does not match its content"));
            }
            prev = decoded.hash;
            expected_seq += 1;
        }
        if expected_seq - 1 != self.head.tree_size {
            return Err(AuditError::TailMismatch {
                seq: expected_seq,
                detail: "rows end before the stored head",
            });
        }
        Ok(())
    }

    /// The raw connection, for tests in this crate.
    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LogName;

    pub(crate) fn event(n: u32) -> NewEvent {
        NewEvent::new(
            format!("ev-{n}"),
            UnixMillis(1_700_000_000_000 + i64::from(n)),
            "hue",
            "service_started",
            None,
            format!("{{\"n\":{n}}}").into_bytes(),
        )
        .unwrap()
    }

    fn count(log: &AuditLog) -> i64 {
        log.connection()
            .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn open_sets_durable_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
        let c = log.connection();
        let q = |p: &str| -> String {
            c.pragma_query_value(None, p, |r| r.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        expect_test::expect![[r#"
            journal_mode=Text("wal")
            synchronous=Integer(2)
            fullfsync=Integer(1)
            checkpoint_fullfsync=Integer(1)
            user_version=Integer(1)
            application_id=Integer(1096107092)"#]]
        .assert_eq(
            &[
                "journal_mode",
                "synchronous",
                "fullfsync",
                "checkpoint_fullfsync",
                "user_version",
                "application_id",
            ]
            .iter()
            .map(|p| format!("{p}={}", q(p)))
            .collect::<Vec<_>>()
            .join("\n"),
        );
    }

    #[test]
    fn duplicate_event_id_returns_the_same_seq_and_adds_no_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut log = AuditLog::open(&path).unwrap();
        let now = UnixMillis(1_700_000_001_000);
        let first = log.append_batch(&[event(1), event(2)], now).unwrap();
        assert_eq!(
            first,
            vec![Appended::New { seq: 1 }, Appended::New { seq: 2 }]
        );
        // Redelivered alone, redelivered inside a batch with a new event, and twice within
        // one batch.
        assert_eq!(
            log.append_batch(&[event(2)], now).unwrap(),
            vec![Appended::Duplicate { seq: 2 }]
        );
        assert_eq!(
            log.append_batch(&[event(1), event(3), event(3)], now)
                .unwrap(),
            vec![
                Appended::Duplicate { seq: 1 },
                Appended::New { seq: 3 },
                Appended::Duplicate { seq: 3 }
            ]
        );
        assert_eq!(count(&log), 3);
        // The same id with other content is a conflict, still no row.
        let forged = NewEvent::new(
            "ev-1",
            UnixMillis(1),
            "door",
            "service_started",
            None,
            b"{}".to_vec(),
        )
        .unwrap();
        assert_eq!(
            log.append_batch(&[forged], now).unwrap(),
            vec![Appended::Conflict { seq: 1 }]
        );
        assert_eq!(count(&log), 3);
        // Reopening keeps the head.
        let head = log.head();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), head);
        assert_eq!(head.tree_size, 3);
    }

    #[test]
    fn rows_chain_from_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(&dir.path().join("a.db")).unwrap();
        let now = UnixMillis(5);
        log.append_batch(&[event(1), event(2)], now).unwrap();
        let mut stmt = log
            .connection()
            .prepare("SELECT prev_hash, hash FROM audit ORDER BY seq")
            .unwrap();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows[0].0, vec![0u8; 32]);
        assert_eq!(rows[1].0, rows[0].1);
        let expected = row_hash(&event(1).fields(1, now), &GENESIS);
        assert_eq!(rows[0].1, expected.0.to_vec());
        assert_eq!(log.head().hash.0.to_vec(), rows[1].1);
    }

    #[test]
    fn events_are_checked() {
        let ok = |id: &str, actor: &str, kind: &str, len: usize| {
            NewEvent::new(id, UnixMillis(0), actor, kind, None, vec![b'x'; len]).is_ok()
        };
        assert!(ok("a", "hue", "k_1", 10));
        assert!(!ok("", "hue", "k", 1));
        assert!(!ok("a b", "hue", "k", 1));
        assert!(!ok(&"a".repeat(65), "hue", "k", 1));
        assert!(!ok("a", "", "k", 1));
        assert!(!ok("a", "hue", "Kind", 1));
        assert!(!ok("a", "hue", "", 1));
        assert!(!ok("a", "hue", "k", MAX_PAYLOAD_BYTES + 1));
        assert!(ok("a", "hue", "k", MAX_PAYLOAD_BYTES));
    }

    #[test]
    fn corrupt_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x5au8; 8192]).unwrap();
        assert_eq!(
            AuditLog::open(&garbage).unwrap_err().code(),
            "audit_db_corrupt"
        );

        // A real log with a damaged page: build several pages, then overwrite the middle.
        let damaged = dir.path().join("damaged.db");
        {
            let mut log = AuditLog::open(&damaged).unwrap();
            let events: Vec<NewEvent> = (0..400).map(event).collect();
            log.append_batch(&events, UnixMillis(1)).unwrap();
            log.connection()
                .pragma_update(None, "wal_checkpoint", "TRUNCATE")
                .unwrap();
        }
        let mut bytes = std::fs::read(&damaged).unwrap();
        assert!(bytes.len() > 5 * 4096);
        // Page 3's b-tree header and cell pointers.
        for b in &mut bytes[2 * 4096..2 * 4096 + 64] {
            *b = 0xff;
        }
        std::fs::write(&damaged, &bytes).unwrap();
        let err = AuditLog::open(&damaged).unwrap_err();
        assert_eq!(err.code(), "audit_db_corrupt", "{err}");

        let foreign = dir.path().join("foreign.db");
        {
            let c = Connection::open(&foreign).unwrap();
            c.execute_batch("CREATE TABLE t (x)").unwrap();
        }
        assert_eq!(
            AuditLog::open(&foreign).unwrap_err().code(),
            "audit_not_an_audit_log"
        );
    }

    #[test]
    fn checkpoints_are_written_once_per_head_and_the_tail_check_catches_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let signer = CheckpointSigner::from_seed(LogName::default_name(), &[3; 32]);
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.write_checkpoint(&signer, UnixMillis(1)).unwrap(), None);
        log.append_batch(&[event(1), event(2)], UnixMillis(2))
            .unwrap();
        let cp = log
            .write_checkpoint(&signer, UnixMillis(3))
            .unwrap()
            .unwrap();
        assert_eq!(cp.tree_size, 2);
        assert_eq!(log.write_checkpoint(&signer, UnixMillis(4)).unwrap(), None);
        log.append_batch(&[event(3)], UnixMillis(5)).unwrap();
        log.check_tail(&signer.verifier()).unwrap();
        assert_eq!(log.checkpoints_after(0).unwrap(), vec![cp.clone()]);
        assert_eq!(log.checkpoints_after(2).unwrap(), vec![]);

        // Another key's verifier refuses the stored checkpoint.
        let other = CheckpointSigner::from_seed(LogName::default_name(), &[4; 32]);
        assert_eq!(
            log.check_tail(&other.verifier()).unwrap_err().code(),
            "audit_checkpoint_invalid"
        );

        // Edit the row after the checkpoint behind the triggers' back.
        drop(log);
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(
            "DROP TRIGGER audit_no_update; UPDATE audit SET payload = x'00' WHERE seq = 3;",
        )
        .unwrap();
        drop(raw);
        let log = AuditLog::open(&path).unwrap();
        let err = log.check_tail(&signer.verifier()).unwrap_err();
        assert!(
            matches!(err, AuditError::TailMismatch { seq: 3, .. }),
            "{err}"
        );
    }
}
