//! Typed errors with stable codes. The code is what operators and users see (next to a
//! correlation id); the `Display` text is for logs and may change. Causes are always kept.

use std::sync::Arc;

use thiserror::Error;

use crate::checkpoint::{CheckpointKeyError, NoteError};

/// Everything that can go wrong opening, writing or checking the audit log.
#[derive(Debug, Error)]
pub enum AuditError {
    /// A SQLite call failed.
    #[error("audit database error during {op}: {source}")]
    Sqlite {
        /// What we were doing.
        op: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// `PRAGMA journal_mode=WAL` did not take effect.
    #[error("audit database refused WAL mode (journal_mode is {mode:?})")]
    NotWal {
        /// The mode SQLite reported.
        mode: String,
    },
    /// A durability setting did not take effect.
    #[error("audit database setting {pragma} did not take effect")]
    PragmaRefused {
        /// The pragma.
        pragma: &'static str,
    },
    /// `PRAGMA integrity_check` failed, or the file is not a database.
    #[error("audit database is corrupt: {detail}")]
    Corrupt {
        /// SQLite's first complaint.
        detail: String,
    },
    /// The file is a SQLite database but not an audit log (foreign tables or application id).
    #[error("file is not an audit log: {detail}")]
    NotAnAuditLog {
        /// What is wrong.
        detail: &'static str,
    },
    /// The schema version is one this build does not know.
    #[error("audit database schema version {found} is not supported (expected {expected})")]
    SchemaVersion {
        /// Found in `PRAGMA user_version`.
        found: i64,
        /// What this build writes.
        expected: i64,
    },
    /// A file operation failed (witness file, directories).
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An event broke a field rule before it reached the database.
    #[error("invalid audit event: {0}")]
    InvalidEvent(&'static str),
    /// The log's last signed checkpoint does not match the stored rows, or the rows after it
    /// do not chain: the log was changed while the writer was not running. The writer refuses
    /// to sign a new checkpoint over it; run `verify`.
    #[error("audit log tail does not verify at seq {seq}: {detail}")]
    TailMismatch {
        /// The first row found wrong.
        seq: u64,
        /// What is wrong.
        detail: &'static str,
    },
    /// The last stored checkpoint's note does not verify under our key.
    #[error("stored checkpoint at tree size {tree_size} does not verify: {source}")]
    CheckpointNote {
        /// The checkpoint's tree size.
        tree_size: u64,
        /// Why.
        #[source]
        source: NoteError,
    },
    /// The checkpoint key could not be loaded.
    #[error(transparent)]
    CheckpointKey(#[from] CheckpointKeyError),
    /// The writer thread has stopped; nothing more can be appended.
    #[error("audit writer is closed")]
    WriterClosed,
    /// The group commit this append was part of failed; every append in it failed.
    #[error("audit batch commit failed: {0}")]
    Batch(#[source] Arc<AuditError>),
}

impl AuditError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuditError::Sqlite { .. } => "audit_db_error",
            AuditError::NotWal { .. } => "audit_not_wal",
            AuditError::PragmaRefused { .. } => "audit_pragma_refused",
            AuditError::Corrupt { .. } => "audit_db_corrupt",
            AuditError::NotAnAuditLog { .. } => "audit_not_an_audit_log",
            AuditError::SchemaVersion { .. } => "audit_schema_unsupported",
            AuditError::Io { .. } => "audit_io_error",
            AuditError::InvalidEvent(_) => "audit_invalid_event",
            AuditError::TailMismatch { .. } => "audit_tail_mismatch",
            AuditError::CheckpointNote { .. } => "audit_checkpoint_invalid",
            AuditError::CheckpointKey(e) => e.code(),
            AuditError::WriterClosed => "audit_writer_closed",
            AuditError::Batch(inner) => inner.code(),
        }
    }

    /// Wraps a SQLite error, recognising a corrupt or foreign file.
    pub(crate) fn sqlite(op: &'static str) -> impl FnOnce(rusqlite::Error) -> AuditError {
        move |source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                AuditError::Corrupt {
                    detail: source.to_string(),
                }
            }
            _ => AuditError::Sqlite { op, source },
        }
    }

    /// Wraps an I/O error on a path.
    pub(crate) fn io(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> AuditError {
        let path = path.display().to_string();
        move |source| AuditError::Io { op, path, source }
    }
}
