//! The gateway's own durable state in SQLite (WAL, `synchronous=FULL`).
//!
//! What it does: keeps, per channel, the inbound cursor (the last platform event whose publish
//! JetStream acknowledged), the outbound map from our message key to the platform message it
//! became (so an `Update` edits the right message), and the set of outbound envelope ids already
//! delivered (so a JetStream redelivery is acknowledged without sending twice), and, per platform
//! message, the button payloads it currently shows (so an inbound press of a button the gateway
//! never showed there is refused before anything is published). Every write is one short
//! transaction committed with a full fsync before the caller goes on.
//!
//! What it does not do: no audit data (only the audit crate writes that), no message bodies, no
//! secrets. Calls are synchronous; the async shells run them on the blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::channel::Delivered;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("gateway state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A blocking task could not run.
    #[error("gateway state task: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A stored cursor is out of range.
    #[error("gateway state database holds an invalid cursor {0}")]
    BadCursor(i64),
    /// A pairing code is not in the code format.
    #[error("not a pairing code")]
    BadCode,
}

impl StoreError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::BadCode => "pairing_code_invalid",
            _ => "gateway_state_failed",
        }
    }
}

/// The buttons a posted or edited platform message shows now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The platform message.
    pub at: Delivered,
    /// The payloads of its buttons (empty: it has no keyboard).
    pub payloads: Vec<String>,
}

/// A clonable handle to the state database.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cursor (
    channel TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS posted (
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (channel, key)
);
CREATE TABLE IF NOT EXISTS shown_button (
    channel TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (channel, chat_id, message_id, payload)
);
CREATE TABLE IF NOT EXISTS delivered (
    channel TEXT NOT NULL,
    envelope_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (channel, envelope_id)
);
";

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(crate::pairing::SCHEMA)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await?
    }

    /// The cursor of the last inbound event handled on `channel`.
    pub async fn cursor(&self, channel: &str) -> Result<Option<u64>, StoreError> {
        let channel = channel.to_owned();
        self.with(move |c| {
            let v: Option<i64> = c
                .query_row(
                    "SELECT last FROM cursor WHERE channel = ?1",
                    params![channel],
                    |r| r.get(0),
                )
                .optional()?;
            v.map(|v| u64::try_from(v).map_err(|_negative| StoreError::BadCursor(v)))
                .transpose()
        })
        .await
    }

    /// Records that every event up to and including `last` is handled.
    pub async fn set_cursor(&self, channel: &str, last: u64) -> Result<(), StoreError> {
        let channel = channel.to_owned();
        let last = i64::try_from(last).map_err(|_too_big| StoreError::BadCursor(i64::MAX))?;
        self.with(move |c| {
            c.execute(
                "INSERT INTO cursor (channel, last) VALUES (?1, ?2)
                 ON CONFLICT(channel) DO UPDATE SET last = excluded.last",
                params![channel, last],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether the outbound envelope `envelope_id` was already handled.
    pub async fn is_delivered(&self, channel: &str, envelope_id: &str) -> Result<bool, StoreError> {
        let (channel, id) = (channel.to_owned(), envelope_id.to_owned());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM delivered WHERE channel = ?1 AND envelope_id = ?2",
                params![channel, id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    /// Records that `envelope_id` was handled (`outcome`: `posted`, `edited`, `refused`), for a
    /// post where the message `key` landed, and, for a post or an edit, the button payloads the
    /// message now shows (replacing what it showed before; none: its keyboard is gone); one
    /// transaction.
    pub async fn record_delivery(
        &self,
        channel: &str,
        envelope_id: &str,
        outcome: &'static str,
        posted: Option<(String, Delivered)>,
        shown: Option<Shown>,
    ) -> Result<(), StoreError> {
        let (channel, id) = (channel.to_owned(), envelope_id.to_owned());
        self.with(move |c| {
            let tx = c.transaction()?;
            if let Some(Shown { at, payloads }) = shown {
                tx.execute(
                    "DELETE FROM shown_button
                     WHERE channel = ?1 AND chat_id = ?2 AND message_id = ?3",
                    params![channel, at.chat_id, at.message_id],
                )?;
                for payload in payloads {
                    tx.execute(
                        "INSERT OR IGNORE INTO shown_button (channel, chat_id, message_id, payload)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![channel, at.chat_id, at.message_id, payload],
                    )?;
                }
            }
            if let Some((key, d)) = posted {
                tx.execute(
                    "INSERT INTO posted (channel, key, chat_id, message_id) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(channel, key) DO UPDATE
                     SET chat_id = excluded.chat_id, message_id = excluded.message_id",
                    params![channel, key, d.chat_id, d.message_id],
                )?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO delivered (channel, envelope_id, outcome) VALUES (?1, ?2, ?3)",
                params![channel, id, outcome],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Whether the platform message `message_id` in `chat_id` currently shows a button carrying
    /// exactly `payload` (as recorded by [`Store::record_delivery`]).
    pub async fn button_shown(
        &self,
        channel: &str,
        chat_id: &str,
        message_id: &str,
        payload: &str,
    ) -> Result<bool, StoreError> {
        let key = [channel, chat_id, message_id, payload].map(str::to_owned);
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM shown_button
                 WHERE channel = ?1 AND chat_id = ?2 AND message_id = ?3 AND payload = ?4",
                params![key[0], key[1], key[2], key[3]],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    /// Where the message posted under `key` landed, if it was posted.
    pub async fn posted(&self, channel: &str, key: &str) -> Result<Option<Delivered>, StoreError> {
        let (channel, key) = (channel.to_owned(), key.to_owned());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT chat_id, message_id FROM posted WHERE channel = ?1 AND key = ?2",
                params![channel, key],
                |r| {
                    Ok(Delivered {
                        chat_id: r.get(0)?,
                        message_id: r.get(1)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.sqlite");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.cursor("telegram").await.unwrap(), None);
        s.set_cursor("telegram", 41).await.unwrap();
        s.set_cursor("telegram", 42).await.unwrap();
        let d = Delivered {
            chat_id: "7".into(),
            message_id: "3".into(),
        };
        s.record_delivery(
            "telegram",
            "e1",
            "posted",
            Some(("k".into(), d.clone())),
            Some(Shown {
                at: d.clone(),
                payloads: vec!["ap:1".into(), "rj:1".into()],
            }),
        )
        .await
        .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.cursor("telegram").await.unwrap(), Some(42));
        assert_eq!(s.cursor("slack").await.unwrap(), None);
        assert!(s.is_delivered("telegram", "e1").await.unwrap());
        assert!(!s.is_delivered("telegram", "e2").await.unwrap());
        assert_eq!(s.posted("telegram", "k").await.unwrap(), Some(d.clone()));
        assert_eq!(s.posted("slack", "k").await.unwrap(), None);
        assert!(s.button_shown("telegram", "7", "3", "ap:1").await.unwrap());
        assert!(!s.button_shown("telegram", "7", "3", "ap:2").await.unwrap());
        assert!(!s.button_shown("telegram", "8", "3", "ap:1").await.unwrap());
        assert!(!s.button_shown("slack", "7", "3", "ap:1").await.unwrap());
        // An edit replaces the set; an edit without a keyboard empties it.
        let shown = |payloads: &[&str]| Shown {
            at: d.clone(),
            payloads: payloads.iter().map(|p| (*p).to_owned()).collect(),
        };
        s.record_delivery("telegram", "e2", "edited", None, Some(shown(&["ok:1"])))
            .await
            .unwrap();
        assert!(!s.button_shown("telegram", "7", "3", "ap:1").await.unwrap());
        assert!(s.button_shown("telegram", "7", "3", "ok:1").await.unwrap());
        s.record_delivery("telegram", "e3", "edited", None, Some(shown(&[])))
            .await
            .unwrap();
        assert!(!s.button_shown("telegram", "7", "3", "ok:1").await.unwrap());
    }
}
