//! The agent's memory across restarts: one row in a SQLite database in its data directory
//! (WAL, `synchronous=FULL`: a saved state survives power loss; each save is one transaction,
//! so a crash leaves the old state or the new one, never a mix).
//!
//! It holds the rule engine's state, the stream sequence of the last audit event processed,
//! the alerts raised but not yet confirmed sent (re-sent with the same ids after a crash, so the
//! audit log keeps one row each), and the recent alerts `alerts.recent` lists.

use std::collections::VecDeque;
use std::path::Path;

use protocol::message::Alert;
use protocol::{CorrelationId, MessageId, UnixMillis};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use crate::rules::EngineState;

/// The database file name in the data directory.
pub const STATE_DB: &str = "anomaly.db";
/// Largest saved state accepted, in bytes.
pub const MAX_STATE_BYTES: usize = 16 * 1024 * 1024;
/// Version of [`Snapshot`] this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// An alert as raised: the id is both the `alert_raised` audit event's id and the alert
/// message's envelope id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedAlert {
    /// Event id of `alert_raised` and envelope id of the `alert.<agent>` message.
    pub id: MessageId,
    /// The correlation id of the event that triggered it.
    pub correlation_id: CorrelationId,
    /// Stream time of the triggering event.
    pub raised_at: UnixMillis,
    /// The alert.
    pub alert: Alert,
}

/// Everything saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// The stream sequence of the last audit event processed (0: none).
    pub last_sequence: u64,
    /// The rule engine's state after that event.
    pub engine: EngineState,
    /// Alerts raised but not yet confirmed audited and published.
    pub pending: Vec<RecordedAlert>,
    /// The latest alerts, oldest first.
    pub recent: VecDeque<RecordedAlert>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            version: SNAPSHOT_VERSION,
            last_sequence: 0,
            engine: EngineState::default(),
            pending: Vec::new(),
            recent: VecDeque::new(),
        }
    }
}

/// Why the state could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("anomaly state: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database did not switch to WAL.
    #[error("anomaly state: journal mode is {0}, not wal")]
    NotWal(String),
    /// The saved state is over [`MAX_STATE_BYTES`].
    #[error("anomaly state: over the size limit")]
    TooLarge,
    /// The saved state is not a snapshot this build reads.
    #[error("anomaly state is not valid: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_) => "anomaly_state_sqlite",
            StoreError::NotWal(_) => "anomaly_state_not_wal",
            StoreError::TooLarge => "anomaly_state_too_large",
            StoreError::Invalid(_) => "anomaly_state_invalid",
        }
    }
}

/// The state database of one data directory.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/anomaly.db`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            data_dir.join(STATE_DB),
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal(mode));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "fullfsync", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS state (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 snapshot TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS set_aside (
                 at INTEGER NOT NULL,
                 snapshot TEXT NOT NULL
             );",
        )?;
        Ok(Store { conn })
    }

    /// Reads the snapshot; `Ok(None)` if there is none yet.
    pub fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT snapshot FROM state WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        let Some(text) = text else {
            return Ok(None);
        };
        if text.len() > MAX_STATE_BYTES {
            return Err(StoreError::TooLarge);
        }
        let snapshot: Snapshot =
            serde_json::from_str(&text).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if snapshot.version != SNAPSHOT_VERSION
            || snapshot.engine.version != crate::rules::STATE_VERSION
        {
            return Err(StoreError::Invalid(format!(
                "unsupported version {}",
                snapshot.version
            )));
        }
        Ok(Some(snapshot))
    }

    /// Replaces the snapshot in one durable transaction.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let text =
            serde_json::to_string(snapshot).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if text.len() > MAX_STATE_BYTES {
            return Err(StoreError::TooLarge);
        }
        self.conn.execute(
            "INSERT INTO state (id, snapshot) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot",
            params![text],
        )?;
        Ok(())
    }

    /// Moves an unreadable snapshot aside (kept in `set_aside` for inspection) so the agent can
    /// start over.
    pub fn set_aside(&mut self, now: UnixMillis) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO set_aside (at, snapshot) SELECT ?1, snapshot FROM state",
            params![now.0],
        )?;
        tx.execute("DELETE FROM state", [])?;
        tx.commit()?;
        Ok(())
    }

    /// How many snapshots were set aside.
    pub fn set_aside_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM set_aside", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::{ErrorCode, Severity};

    #[test]
    fn a_snapshot_round_trips_and_garbage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_none());
        let mut snapshot = Snapshot {
            last_sequence: 42,
            ..Snapshot::default()
        };
        snapshot.recent.push_back(RecordedAlert {
            id: MessageId::from_bytes([1; 16]),
            correlation_id: CorrelationId::from_bytes([2; 16]),
            raised_at: UnixMillis(1000),
            alert: Alert {
                rule: ErrorCode::from_static("token_forged"),
                severity: Severity::Critical,
                subject: None,
                summary: "x".to_owned(),
                evidence: vec![MessageId::from_bytes([3; 16])],
            },
        });
        store.save(&snapshot).unwrap();
        assert_eq!(store.load().unwrap(), Some(snapshot.clone()));
        snapshot.last_sequence = 43;
        store.save(&snapshot).unwrap();
        drop(store);
        // Reopened: the last save is there.
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().unwrap().last_sequence, 43);

        store
            .conn
            .execute(
                "UPDATE state SET snapshot = '{\"version\": 1, \"surprise\": true}'",
                [],
            )
            .unwrap();
        let e = store.load().unwrap_err();
        assert_eq!(e.code(), "anomaly_state_invalid");
        store.set_aside(UnixMillis(5)).unwrap();
        assert!(store.load().unwrap().is_none());
        assert_eq!(store.set_aside_count().unwrap(), 1);
    }
}
