//! The replay store: a SQLite table of seen nonces (`jti`) with their expiry.
//!
//! `consume` inserts a nonce atomically and refuses one already present. Entries whose token
//! can no longer verify (`exp + skew < now`) are forgotten, which is safe because the time check
//! refuses such tokens before the store is asked. WAL and `synchronous=FULL`: a nonce that was
//! accepted survives power loss, so a restart cannot reopen a replay window.

use std::path::Path;

use protocol::TokenError;
use protocol::token::CLOCK_SKEW_SECS;
use rusqlite::{Connection, OpenFlags, params};
use thiserror::Error;

/// Garbage-collect expired nonces every this many inserts.
const GC_EVERY: u32 = 256;

/// Why the store could not be opened.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// SQLite refused.
    #[error("replay store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database did not switch to WAL.
    #[error("replay store: journal mode is {0}, not wal")]
    NotWal(String),
}

impl ReplayError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ReplayError::Sqlite(_) => "replay_store_sqlite",
            ReplayError::NotWal(_) => "replay_store_not_wal",
        }
    }
}

/// The persistent set of seen nonces.
#[derive(Debug)]
pub struct ReplayStore {
    conn: Connection,
    inserts_since_gc: u32,
}

impl ReplayStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, ReplayError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ReplayError::NotWal(mode));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "fullfsync", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS seen (
                 jti BLOB PRIMARY KEY CHECK (length(jti) = 16),
                 exp INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS seen_exp ON seen(exp);",
        )?;
        Ok(ReplayStore {
            conn,
            inserts_since_gc: 0,
        })
    }

    /// Records `jti` (valid until `exp`), or refuses it if it was seen before.
    pub fn consume(&mut self, jti: &[u8; 16], exp: i64, now: i64) -> Result<(), TokenError> {
        let inserted = self
            .conn
            .execute(
                "INSERT INTO seen (jti, exp) VALUES (?1, ?2) ON CONFLICT (jti) DO NOTHING",
                params![jti.as_slice(), exp],
            )
            .map_err(|_sqlite| TokenError::ReplayStoreUnavailable)?;
        if inserted == 0 {
            return Err(TokenError::Replayed);
        }
        self.inserts_since_gc += 1;
        if self.inserts_since_gc >= GC_EVERY {
            // A failed GC only keeps old rows longer; it never lets a token through.
            if self.forget_expired(now).is_ok() {
                self.inserts_since_gc = 0;
            }
        }
        Ok(())
    }

    /// Forgets nonces whose tokens can no longer verify; returns how many.
    pub fn forget_expired(&mut self, now: i64) -> Result<usize, ReplayError> {
        Ok(self.conn.execute(
            "DELETE FROM seen WHERE exp < ?1",
            params![now.saturating_sub(CLOCK_SKEW_SECS)],
        )?)
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> Result<u64, ReplayError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM seen", [], |r| r.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))?)
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> Result<bool, ReplayError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once_even_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.db");
        let mut store = ReplayStore::open(&path).unwrap();
        store.consume(&[1; 16], 100, 50).unwrap();
        assert_eq!(store.consume(&[1; 16], 100, 51), Err(TokenError::Replayed));
        store.consume(&[2; 16], 100, 51).unwrap();
        drop(store);
        let mut store = ReplayStore::open(&path).unwrap();
        assert_eq!(store.consume(&[1; 16], 100, 52), Err(TokenError::Replayed));
        assert_eq!(store.len().unwrap(), 2);
    }

    #[test]
    fn expired_nonces_are_forgotten_only_after_skew() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ReplayStore::open(&dir.path().join("r.db")).unwrap();
        store.consume(&[1; 16], 100, 90).unwrap();
        store.consume(&[2; 16], 200, 90).unwrap();
        // At exp + skew the token could still verify: keep it.
        assert_eq!(store.forget_expired(100 + CLOCK_SKEW_SECS).unwrap(), 0);
        assert_eq!(store.forget_expired(101 + CLOCK_SKEW_SECS).unwrap(), 1);
        assert_eq!(store.len().unwrap(), 1);
        assert_eq!(store.consume(&[2; 16], 200, 120), Err(TokenError::Replayed));
    }

    #[test]
    fn gc_runs_inline_without_losing_live_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ReplayStore::open(&dir.path().join("r.db")).unwrap();
        for i in 0..(GC_EVERY + 10) {
            let mut jti = [0u8; 16];
            jti[..4].copy_from_slice(&i.to_be_bytes());
            // Half already expired long ago, half live.
            let exp = if i % 2 == 0 { 10 } else { 10_000 };
            store.consume(&jti, exp, 5_000).unwrap();
        }
        let live = store.len().unwrap();
        assert!(live < u64::from(GC_EVERY + 10), "GC ran: {live}");
        let mut jti = [0u8; 16];
        jti[..4].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(
            store.consume(&jti, 10_000, 5_001),
            Err(TokenError::Replayed)
        );
    }

    #[test]
    fn the_store_is_durable_wal() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplayStore::open(&dir.path().join("r.db")).unwrap();
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
    }
}
