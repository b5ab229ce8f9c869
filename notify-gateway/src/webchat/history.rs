//! The web chat's conversation history in SQLite (WAL, `synchronous=FULL`), so the page shows
//! the same conversation after a reload or a gateway restart.
//!
//! What it does: one table of messages (the assistant's, as posted and edited through the
//! outbound loop, and the user's own texts once they are secured), each with the text, the
//! buttons it shows now and a version from one counter that every insert or edit advances, so
//! a page that has seen version `v` asks for the rows changed after `v`, in order. Every write
//! is one transaction committed with a full fsync before the caller goes on (a post is durable
//! before the outbound loop records it as delivered and acknowledges it).
//!
//! What it does not do: no cursor, delivery or button-shown bookkeeping (that is
//! [`crate::store`]; the button check reads the store, not this table), no pruning.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use protocol::message::Button;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

use crate::store::StoreError;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    /// The assistant (the outbound loop).
    Assistant,
    /// The user, on the page.
    User,
}

impl Author {
    fn as_str(self) -> &'static str {
        match self {
            Author::Assistant => "assistant",
            Author::User => "user",
        }
    }
}

/// One message as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebMessage {
    /// Its id (`m<n>` for the assistant's, `u-<client id>` for the user's).
    pub id: String,
    /// Who wrote it.
    pub author: Author,
    /// Plain text.
    pub text: String,
    /// The buttons it shows now.
    pub buttons: Vec<Button>,
    /// The version of its last change.
    pub version: u64,
}

/// A clonable handle to the history table.
#[derive(Debug, Clone)]
pub struct History {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS web_message (
    id TEXT PRIMARY KEY,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    buttons TEXT NOT NULL,
    version INTEGER NOT NULL UNIQUE
);
";

/// Most messages one read returns.
pub const PAGE: usize = 200;

impl History {
    /// Opens (creating if needed) the table in the database at `path` (the gateway's state
    /// database is fine: this is a separate table on its own connection).
    pub fn open(path: &Path) -> Result<History, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(History {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
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

    /// Adds an assistant message; returns its id and version.
    pub async fn post(&self, text: &str, buttons: &[Button]) -> Result<(String, u64), StoreError> {
        let (text, buttons) = (text.to_owned(), encode_buttons(buttons));
        self.with(move |c| {
            let tx = c.transaction()?;
            let version = next_version(&tx)?;
            let id = format!("m{version}");
            tx.execute(
                "INSERT INTO web_message (id, author, text, buttons, version)
                 VALUES (?1, 'assistant', ?2, ?3, ?4)",
                params![id, text, buttons, to_sql(version)?],
            )?;
            tx.commit()?;
            Ok((id, version))
        })
        .await
    }

    /// Replaces an assistant message's text and buttons; returns the new version, or `None` if
    /// there is no such message.
    pub async fn edit(
        &self,
        id: &str,
        text: &str,
        buttons: &[Button],
    ) -> Result<Option<u64>, StoreError> {
        let (id, text, buttons) = (id.to_owned(), text.to_owned(), encode_buttons(buttons));
        self.with(move |c| {
            let tx = c.transaction()?;
            let version = next_version(&tx)?;
            let n = tx.execute(
                "UPDATE web_message SET text = ?2, buttons = ?3, version = ?4
                 WHERE id = ?1 AND author = 'assistant'",
                params![id, text, buttons, to_sql(version)?],
            )?;
            if n == 0 {
                return Ok(None);
            }
            tx.commit()?;
            Ok(Some(version))
        })
        .await
    }

    /// Records the user's text sent with `client_id` (once: a retry changes nothing); returns
    /// the version it got, or `None` if it was already there.
    pub async fn record_user(
        &self,
        client_id: &str,
        text: &str,
    ) -> Result<Option<u64>, StoreError> {
        let (id, text) = (format!("u-{client_id}"), text.to_owned());
        self.with(move |c| {
            let tx = c.transaction()?;
            let version = next_version(&tx)?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO web_message (id, author, text, buttons, version)
                 VALUES (?1, 'user', ?2, '[]', ?3)",
                params![id, text, to_sql(version)?],
            )?;
            if n == 0 {
                return Ok(None);
            }
            tx.commit()?;
            Ok(Some(version))
        })
        .await
    }

    /// The messages changed after `after`, oldest change first (at most [`PAGE`]).
    pub async fn changed_after(&self, after: u64) -> Result<Vec<WebMessage>, StoreError> {
        let after = to_sql(after)?;
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, author, text, buttons, version FROM web_message
                 WHERE version > ?1 ORDER BY version LIMIT ?2",
            )?;
            let limit = i64::try_from(PAGE).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![after, limit], |r| {
                let author: String = r.get(1)?;
                let buttons: String = r.get(3)?;
                let version: i64 = r.get(4)?;
                Ok(WebMessage {
                    id: r.get(0)?,
                    author: if author == Author::User.as_str() {
                        Author::User
                    } else {
                        Author::Assistant
                    },
                    text: r.get(2)?,
                    // Written by us from `Vec<Button>`; an unreadable row shows no buttons.
                    buttons: serde_json::from_str(&buttons).unwrap_or_default(),
                    version: u64::try_from(version).unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The latest version (0: empty).
    pub async fn version(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            let v: Option<i64> = c
                .query_row("SELECT MAX(version) FROM web_message", [], |r| r.get(0))
                .optional()?
                .flatten();
            let v = v.unwrap_or(0);
            u64::try_from(v).map_err(|_negative| StoreError::BadCursor(v))
        })
        .await
    }
}

fn next_version(tx: &rusqlite::Transaction<'_>) -> Result<u64, StoreError> {
    let v: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM web_message",
        [],
        |r| r.get(0),
    )?;
    let v = u64::try_from(v).map_err(|_negative| StoreError::BadCursor(v))?;
    Ok(v.saturating_add(1))
}

fn to_sql(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_too_big| StoreError::BadCursor(i64::MAX))
}

fn encode_buttons(buttons: &[Button]) -> String {
    serde_json::to_string(buttons).unwrap_or_else(|_unencodable| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[tokio::test]
    async fn versions_order_changes_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.sqlite");
        let h = History::open(&path).unwrap();
        assert_eq!(h.version().await.unwrap(), 0);
        let b = vec![Button {
            label: "Approve".into(),
            payload: "ap:1".into(),
        }];
        let (m1, v1) = h.post("card", &b).await.unwrap();
        assert_eq!((m1.as_str(), v1), ("m1", 1));
        assert_eq!(h.record_user("c-1234567", "hi").await.unwrap(), Some(2));
        assert_eq!(h.record_user("c-1234567", "hi").await.unwrap(), None);
        assert_eq!(h.edit(&m1, "card, running", &[]).await.unwrap(), Some(3));
        assert_eq!(h.edit("m99", "x", &[]).await.unwrap(), None);
        assert_eq!(h.edit("u-c-1234567", "x", &[]).await.unwrap(), None);
        drop(h);
        let h = History::open(&path).unwrap();
        assert_eq!(h.version().await.unwrap(), 3);
        let all = h.changed_after(0).await.unwrap();
        let seen: Vec<_> = all
            .iter()
            .map(|m| (m.id.as_str(), m.author, m.text.as_str(), m.version))
            .collect();
        assert_eq!(
            seen,
            [
                ("u-c-1234567", Author::User, "hi", 2),
                ("m1", Author::Assistant, "card, running", 3)
            ]
        );
        assert!(all[1].buttons.is_empty());
        assert_eq!(h.changed_after(2).await.unwrap().len(), 1);
        assert!(h.changed_after(3).await.unwrap().is_empty());
        let (m4, _) = h.post("next", &b).await.unwrap();
        assert_eq!(m4, "m4");
        assert_eq!(h.changed_after(3).await.unwrap()[0].buttons, b);
    }
}
