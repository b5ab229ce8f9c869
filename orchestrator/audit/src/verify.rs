//! The verifier: reads a log read-only and says whether it is the log the writer wrote.
//!
//! It recomputes every row hash and every link, checks that sequence numbers are contiguous
//! from 1, verifies every checkpoint note (in the database and in the witness file) under the
//! checkpoint public key, checks each signed head against the stored row at its tree size,
//! checks that no signed checkpoint covers more rows than exist, and that every witness note is
//! still in the database. Each finding is a [`Problem`] with a stable code that names the first
//! bad sequence number (or, for a recomputed chain, the range it lies in).
//!
//! Soundness in one line: if every row's stored hash matches its content and its stored
//! `prev_hash`, every link matches, and the stored hash at tree size *n* equals a signed head,
//! then rows 1..=n are exactly the rows that were signed (SHA-256 collision resistance).
//!
//! What this does not do: it never writes (the database is opened read-only with
//! `query_only`), it does not repair anything, and it cannot see rows appended after the last
//! checkpoint and then deleted unless the witness or a later checkpoint covered them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::checkpoint::{CheckpointVerifier, NoteError, parse_unverified};
use crate::error::AuditError;
use crate::hash::{GENESIS, RowFields, RowHash, row_hash};
use crate::store::{Head, TRIGGERS, open_read_only};
use crate::witness::read_notes;

/// Where a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckpointSource {
    /// The `checkpoints` table.
    Database,
    /// The witness file.
    Witness,
}

impl fmt::Display for CheckpointSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointSource::Database => "database",
            CheckpointSource::Witness => "witness",
        })
    }
}

/// One finding. Every variant names the first bad sequence number or the range it lies in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A row has a field of the wrong type or size (a raw edit); `seq` is 0 when the sequence
    /// number itself is unusable.
    RowMalformed {
        /// The row.
        seq: u64,
        /// The field.
        field: &'static str,
    },
    /// The row's content no longer hashes to its stored hash: the row was edited.
    RowHashMismatch {
        /// The edited row.
        seq: u64,
    },
    /// The row's `prev_hash` is not the previous row's stored hash: row `seq - 1`'s hash or
    /// row `seq`'s link was rewritten.
    ChainBroken {
        /// The row whose link is wrong.
        seq: u64,
    },
    /// Sequence numbers skip: rows `first_missing .. next_present` were deleted.
    RowsMissing {
        /// The first missing row.
        first_missing: u64,
        /// The next row that exists.
        next_present: u64,
    },
    /// A signed checkpoint proves the log had `proven_size` rows; only `rows_found` remain.
    Truncated {
        /// The largest signed tree size.
        proven_size: u64,
        /// The last row found.
        rows_found: u64,
        /// Where the proving checkpoint came from.
        source: CheckpointSource,
    },
    /// A validly signed checkpoint's head is not the stored hash at its tree size, although
    /// the rows chain: the chain was recomputed. The first bad row lies in
    /// `last_good + 1 ..= tree_size` (`last_good` is the largest checkpoint below that still
    /// matches, or 0).
    CheckpointMismatch {
        /// The first checkpoint that no longer matches.
        tree_size: u64,
        /// The largest matching checkpoint below it.
        last_good: u64,
        /// Where the checkpoint came from.
        source: CheckpointSource,
    },
    /// A checkpoint note does not verify under the checkpoint key (another key, a bad
    /// signature, another origin, or a malformed note).
    CheckpointBadSignature {
        /// The tree size it claims (unverified), if readable.
        tree_size: Option<u64>,
        /// Where it came from.
        source: CheckpointSource,
        /// Why.
        reason: NoteError,
    },
    /// A checkpoint row's `tree_size`/`head_hash` columns disagree with its signed note.
    CheckpointRowMismatch {
        /// The row's tree size column.
        tree_size: u64,
    },
    /// Two validly signed checkpoints give different heads for one tree size (a split view).
    CheckpointConflict {
        /// The tree size.
        tree_size: u64,
    },
    /// A checkpoint in the witness file is not in the database (deleted checkpoint row).
    WitnessCheckpointMissing {
        /// Its tree size.
        tree_size: u64,
    },
    /// An append-only trigger is gone (someone had raw write access).
    TriggerMissing {
        /// The trigger.
        name: &'static str,
    },
}

impl Problem {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::RowMalformed { .. } => "row_malformed",
            Problem::RowHashMismatch { .. } => "row_hash_mismatch",
            Problem::ChainBroken { .. } => "chain_broken",
            Problem::RowsMissing { .. } => "rows_missing",
            Problem::Truncated { .. } => "log_truncated",
            Problem::CheckpointMismatch { .. } => "checkpoint_mismatch",
            Problem::CheckpointBadSignature { .. } => "checkpoint_bad_signature",
            Problem::CheckpointRowMismatch { .. } => "checkpoint_row_mismatch",
            Problem::CheckpointConflict { .. } => "checkpoint_conflict",
            Problem::WitnessCheckpointMissing { .. } => "witness_checkpoint_missing",
            Problem::TriggerMissing { .. } => "trigger_missing",
        }
    }

    /// The range of sequence numbers the first bad row lies in, when the problem points at
    /// rows (a single row gives a one-element range).
    pub fn bad_range(&self) -> Option<(u64, u64)> {
        match *self {
            Problem::RowMalformed { seq, .. } | Problem::RowHashMismatch { seq } => {
                Some((seq, seq))
            }
            Problem::ChainBroken { seq } => Some((seq.saturating_sub(1).max(1), seq)),
            Problem::RowsMissing {
                first_missing,
                next_present,
            } => Some((first_missing, next_present.saturating_sub(1))),
            Problem::Truncated {
                proven_size,
                rows_found,
                ..
            } => Some((rows_found + 1, proven_size)),
            Problem::CheckpointMismatch {
                tree_size,
                last_good,
                ..
            } => Some((last_good + 1, tree_size)),
            Problem::CheckpointBadSignature { .. }
            | Problem::CheckpointRowMismatch { .. }
            | Problem::CheckpointConflict { .. }
            | Problem::WitnessCheckpointMissing { .. }
            | Problem::TriggerMissing { .. } => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::RowMalformed { seq, field } => {
                write!(f, "row {seq}: field {field} has the wrong type or size")
            }
            Problem::RowHashMismatch { seq } => {
                write!(f, "row {seq}: content does not match its hash (edited)")
            }
            Problem::ChainBroken { seq } => write!(
                f,
                "row {seq}: prev_hash does not match row {}'s hash",
                seq.saturating_sub(1)
            ),
            Problem::RowsMissing {
                first_missing,
                next_present,
            } => write!(
                f,
                "rows {first_missing}..{next_present} are missing (deleted)"
            ),
            Problem::Truncated {
                proven_size,
                rows_found,
                source,
            } => write!(
                f,
                "a {source} checkpoint proves {proven_size} rows; only {rows_found} remain (truncated)"
            ),
            Problem::CheckpointMismatch {
                tree_size,
                last_good,
                source,
            } => write!(
                f,
                "signed {source} checkpoint at {tree_size} does not match the stored chain; the first bad row is in {}..={tree_size}",
                last_good + 1
            ),
            Problem::CheckpointBadSignature {
                tree_size,
                source,
                reason,
            } => match tree_size {
                Some(size) => write!(f, "{source} checkpoint at {size}: {reason}"),
                None => write!(f, "{source} checkpoint: {reason}"),
            },
            Problem::CheckpointRowMismatch { tree_size } => write!(
                f,
                "checkpoint row {tree_size}: columns disagree with the signed note"
            ),
            Problem::CheckpointConflict { tree_size } => write!(
                f,
                "two signed checkpoints at {tree_size} give different heads"
            ),
            Problem::WitnessCheckpointMissing { tree_size } => write!(
                f,
                "witness checkpoint at {tree_size} is missing from the database"
            ),
            Problem::TriggerMissing { name } => write!(f, "trigger {name} is missing"),
        }
    }
}

/// What the verifier found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Rows read and checked.
    pub rows_verified: u64,
    /// Distinct signed checkpoints that verified and match the chain.
    pub checkpoints_verified: u64,
    /// Witness notes read.
    pub witness_notes: u64,
    /// The last stored row, if any.
    pub head: Option<Head>,
    /// Findings, in the order found.
    pub problems: Vec<Problem>,
}

impl Report {
    /// No problems.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The lowest sequence number any problem points at.
    pub fn first_bad_seq(&self) -> Option<u64> {
        self.problems
            .iter()
            .filter_map(|p| p.bad_range().map(|(lo, _)| lo))
            .min()
    }
}

/// One row as stored, borrowed from SQLite's buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodedRow<'a> {
    pub(crate) fields: RowFields<'a>,
    pub(crate) prev_hash: RowHash,
    pub(crate) hash: RowHash,
}

/// The columns, in the order [`decode_row`] expects.
pub(crate) const ROW_COLUMNS: &str = "seq, event_id, ts_ms, recorded_ms, actor, kind, \
                                      correlation_id, payload, prev_hash, hash";

/// Reads a row selected with [`ROW_COLUMNS`]; the error names the bad field.
pub(crate) fn decode_row<'a>(row: &'a rusqlite::Row<'a>) -> Result<DecodedRow<'a>, &'static str> {
    let int = |i: usize, name: &'static str| -> Result<i64, &'static str> {
        row.get_ref(i)
            .ok()
            .and_then(|v| v.as_i64().ok())
            .ok_or(name)
    };
    let text = |i: usize, name: &'static str| -> Result<&'a str, &'static str> {
        row.get_ref(i)
            .ok()
            .and_then(|v| v.as_str().ok())
            .ok_or(name)
    };
    let hash = |i: usize, name: &'static str| -> Result<RowHash, &'static str> {
        row.get_ref(i)
            .ok()
            .and_then(|v| v.as_blob().ok())
            .and_then(RowHash::from_slice)
            .ok_or(name)
    };
    let seq = u64::try_from(int(0, "seq")?)
        .ok()
        .filter(|s| *s > 0)
        .ok_or("seq")?;
    let correlation_id = row
        .get_ref(6)
        .ok()
        .and_then(|v| v.as_str_or_null().ok())
        .ok_or("correlation_id")?;
    let payload = row
        .get_ref(7)
        .ok()
        .and_then(|v| v.as_blob().ok())
        .ok_or("payload")?;
    Ok(DecodedRow {
        fields: RowFields {
            seq,
            event_id: text(1, "event_id")?,
            ts_ms: int(2, "ts_ms")?,
            recorded_ms: int(3, "recorded_ms")?,
            actor: text(4, "actor")?,
            kind: text(5, "kind")?,
            correlation_id,
            payload,
        },
        prev_hash: hash(8, "prev_hash")?,
        hash: hash(9, "hash")?,
    })
}

/// A signed head from one or both sources.
#[derive(Debug, Clone, Copy)]
struct Trusted {
    head: RowHash,
    source: CheckpointSource,
}

/// Verifies the log at `db` (opened read-only) against the checkpoint key and, if given, the
/// witness file. An `Err` means the check could not run (unreadable file, not an audit log);
/// tampering is reported in [`Report::problems`].
pub fn verify(
    db: &Path,
    key: &CheckpointVerifier,
    witness: Option<&Path>,
) -> Result<Report, AuditError> {
    let conn = open_read_only(db)?;
    let mut problems = Vec::new();

    // Triggers.
    {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
            .map_err(AuditError::sqlite("read triggers"))?;
        let present: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(AuditError::sqlite("read triggers"))?
            .collect::<Result<_, _>>()
            .map_err(AuditError::sqlite("read triggers"))?;
        for name in TRIGGERS {
            if !present.iter().any(|p| p == name) {
                problems.push(Problem::TriggerMissing { name });
            }
        }
    }

    // Signed heads from the database.
    let mut trusted: BTreeMap<u64, Trusted> = BTreeMap::new();
    // Every checkpoint row's tree size, valid or not (a witness note is "missing" only when its
    // row is gone; a row with a bad signature is reported as such).
    let mut in_database: Vec<u64> = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT tree_size, head_hash, note FROM checkpoints ORDER BY tree_size")
            .map_err(AuditError::sqlite("read checkpoints"))?;
        let mut rows = stmt
            .query([])
            .map_err(AuditError::sqlite("read checkpoints"))?;
        while let Some(row) = rows.next().map_err(AuditError::sqlite("read checkpoint"))? {
            let size = row
                .get_ref(0)
                .ok()
                .and_then(|v| v.as_i64().ok())
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0);
            in_database.push(size);
            let column_head = row
                .get_ref(1)
                .ok()
                .and_then(|v| v.as_blob().ok())
                .and_then(RowHash::from_slice);
            let note = row.get_ref(2).ok().and_then(|v| v.as_str().ok());
            let verified = match note {
                Some(note) => key.verify(note),
                None => Err(NoteError::Malformed("note is not text")),
            };
            match verified {
                Ok(cp) => {
                    if cp.tree_size != size || column_head != Some(cp.head) {
                        problems.push(Problem::CheckpointRowMismatch { tree_size: size });
                    }
                    add_trusted(
                        &mut trusted,
                        &mut problems,
                        cp.tree_size,
                        cp.head,
                        CheckpointSource::Database,
                    );
                }
                Err(reason) => problems.push(Problem::CheckpointBadSignature {
                    tree_size: Some(size),
                    source: CheckpointSource::Database,
                    reason,
                }),
            }
        }
    }
    in_database.sort_unstable();

    // Signed heads from the witness.
    let mut witness_notes = 0u64;
    if let Some(path) = witness {
        let mut seen = std::collections::BTreeSet::new();
        for note in read_notes(path)? {
            witness_notes += 1;
            match key.verify(&note) {
                Ok(cp) => {
                    add_trusted(
                        &mut trusted,
                        &mut problems,
                        cp.tree_size,
                        cp.head,
                        CheckpointSource::Witness,
                    );
                    if in_database.binary_search(&cp.tree_size).is_err()
                        && seen.insert(cp.tree_size)
                    {
                        problems.push(Problem::WitnessCheckpointMissing {
                            tree_size: cp.tree_size,
                        });
                    }
                }
                Err(reason) => problems.push(Problem::CheckpointBadSignature {
                    tree_size: parse_unverified(&note).ok().map(|c| c.tree_size),
                    source: CheckpointSource::Witness,
                    reason,
                }),
            }
        }
    }
    let checkpoints: Vec<(u64, Trusted)> = trusted.into_iter().collect();

    // The rows, streamed in order.
    let mut stmt = conn
        .prepare(&format!("SELECT {ROW_COLUMNS} FROM audit ORDER BY seq"))
        .map_err(AuditError::sqlite("prepare rows"))?;
    let mut rows = stmt.query([]).map_err(AuditError::sqlite("read rows"))?;
    let mut scan = Scan {
        expected_seq: 1,
        prev_hash: Some(GENESIS),
        rows_verified: 0,
        head: None,
        next_checkpoint: 0,
        last_good: 0,
        mismatch_reported: false,
        checkpoints_verified: 0,
    };
    while let Some(row) = rows.next().map_err(AuditError::sqlite("read row"))? {
        scan.row(row, &checkpoints, &mut problems);
    }

    // Checkpoints beyond the last row prove a truncation.
    let rows_found = scan.head.map_or(0, |h| h.tree_size);
    if let Some((size, t)) = checkpoints.last()
        && *size > rows_found
    {
        problems.push(Problem::Truncated {
            proven_size: *size,
            rows_found,
            source: t.source,
        });
    }

    Ok(Report {
        rows_verified: scan.rows_verified,
        checkpoints_verified: scan.checkpoints_verified,
        witness_notes,
        head: scan.head,
        problems,
    })
}

fn add_trusted(
    trusted: &mut BTreeMap<u64, Trusted>,
    problems: &mut Vec<Problem>,
    tree_size: u64,
    head: RowHash,
    source: CheckpointSource,
) {
    match trusted.get(&tree_size) {
        Some(existing) if existing.head != head => {
            problems.push(Problem::CheckpointConflict { tree_size });
        }
        Some(_) => {}
        None => {
            trusted.insert(tree_size, Trusted { head, source });
        }
    }
}

/// The streaming state of the row scan.
struct Scan {
    expected_seq: u64,
    /// The previous row's stored hash (`None` after a row that could not be read).
    prev_hash: Option<RowHash>,
    rows_verified: u64,
    head: Option<Head>,
    /// Index into the sorted checkpoints of the next one not yet reached.
    next_checkpoint: usize,
    last_good: u64,
    mismatch_reported: bool,
    checkpoints_verified: u64,
}

impl Scan {
    fn row(
        &mut self,
        row: &rusqlite::Row<'_>,
        checkpoints: &[(u64, Trusted)],
        problems: &mut Vec<Problem>,
    ) {
        let decoded = match decode_row(row) {
            Ok(d) => d,
            Err(field) => {
                let seq = row
                    .get_ref(0)
                    .ok()
                    .and_then(|v| v.as_i64().ok())
                    .and_then(|v| u64::try_from(v).ok())
                    .unwrap_or(0);
                problems.push(Problem::RowMalformed { seq, field });
                if seq >= self.expected_seq {
                    self.expected_seq = seq + 1;
                }
                // The next link cannot be checked against a row we could not read.
                self.prev_hash = None;
                self.rows_verified += 1;
                return;
            }
        };
        let seq = decoded.fields.seq;
        self.rows_verified += 1;
        let mut gap = false;
        if seq != self.expected_seq {
            gap = true;
            problems.push(Problem::RowsMissing {
                first_missing: self.expected_seq,
                next_present: seq,
            });
        }
        if row_hash(&decoded.fields, &decoded.prev_hash) != decoded.hash {
            problems.push(Problem::RowHashMismatch { seq });
        }
        // After a gap the link is expected to point at a missing row; the gap is the finding.
        if !gap && self.prev_hash.is_some_and(|p| p != decoded.prev_hash) {
            problems.push(Problem::ChainBroken { seq });
        }
        // Checkpoints whose row is missing are covered by the gap finding.
        while let Some((size, trusted)) = checkpoints.get(self.next_checkpoint) {
            if *size > seq {
                break;
            }
            if *size == seq {
                if trusted.head == decoded.hash {
                    if !self.mismatch_reported {
                        self.last_good = seq;
                    }
                    self.checkpoints_verified += 1;
                } else if !self.mismatch_reported {
                    self.mismatch_reported = true;
                    problems.push(Problem::CheckpointMismatch {
                        tree_size: seq,
                        last_good: self.last_good,
                        source: trusted.source,
                    });
                }
            }
            self.next_checkpoint += 1;
        }
        self.prev_hash = Some(decoded.hash);
        self.expected_seq = seq + 1;
        self.head = Some(Head {
            tree_size: seq,
            hash: decoded.hash,
        });
    }
}
