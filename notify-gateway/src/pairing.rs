//! Pairing: a one-time code that adds a chat user to a channel's allowlist.
//!
//! What it does: `bot pair <channel>` calls [`Store::start_pairing`] with a fresh [`new_code`]
//! (8 characters from a 32-symbol alphabet without look-alikes, 40 bits, shown as `ABCD-EFGH`;
//! only its SHA-256, bound to the channel, is stored) valid for [`CODE_TTL`]; a new code
//! replaces the previous one. When someone not on the allowlist writes to the assistant in a
//! private chat, the inbound loop calls [`Store::try_pair`]: a text that is the pending code
//! (`ABCD-EFGH`, `abcdefgh`, `/start ABCDEFGH`, ...) pairs that sender for good (one use only);
//! a text that looks like a code but is not the pending one counts as an attempt, and after
//! [`MAX_ATTEMPTS`] the code is void; any other text changes nothing. Paired users are kept in
//! the gateway's state database ([`Store::paired_users`]) and loaded into the allowlist at start.
//!
//! What it does not do: it does not make anyone an owner of the orchestrator (`bot pair` adds
//! the owner to `config.toml`), and it never stores or logs a code in clear.

use std::time::Duration;

use rusqlite::{OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use crate::store::{Store, StoreError};

/// How long a pairing code is valid.
pub const CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Wrong codes tried before the pending code is void.
pub const MAX_ATTEMPTS: i64 = 5;
/// The code alphabet: no 0/O, 1/I/L.
const ALPHABET: &[u8; 32] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789#";
const CODE_LEN: usize = 8;

/// The tables (created by [`Store::open`]).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pairing (
    channel TEXT PRIMARY KEY,
    code_sha256 BLOB NOT NULL,
    expires_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    paired_user TEXT
);
CREATE TABLE IF NOT EXISTS paired_user (
    channel TEXT NOT NULL,
    user_id TEXT NOT NULL,
    paired_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, user_id)
);
";

/// What a text from a stranger did to the pending pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairOutcome {
    /// It was the code: the sender is now paired.
    Paired,
    /// It looked like a code but was not the pending one (an attempt was counted).
    WrongCode,
    /// No code is pending (none, used, expired or void), or the text is not a code.
    NotACode,
}

/// A fresh code, `ABCD-EFGH`.
pub fn new_code() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; CODE_LEN];
    getrandom::getrandom(&mut bytes)?;
    // 31 symbols are used (the 32nd slot keeps the modulo unbiased and is mapped back below).
    let symbols: Vec<char> = bytes
        .iter()
        .map(|b| {
            let c = ALPHABET.get(usize::from(b & 31)).copied().unwrap_or(b'A');
            char::from(if c == b'#' { b'Z' } else { c })
        })
        .collect();
    let (a, b) = symbols.split_at(CODE_LEN / 2);
    Ok(format!(
        "{}-{}",
        a.iter().collect::<String>(),
        b.iter().collect::<String>()
    ))
}

/// The canonical form of a typed code, if `text` is one: an optional `/start` or `/pair`
/// command, then 8 code symbols, with spaces and dashes ignored and case folded.
pub fn normalize(text: &str) -> Option<String> {
    let t = text.trim();
    let t = ["/start", "/pair"]
        .iter()
        .find_map(|p| t.strip_prefix(p))
        .unwrap_or(t);
    let code: String = t
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid = code.len() == CODE_LEN && code.bytes().all(|b| b != b'#' && ALPHABET.contains(&b));
    valid.then_some(code)
}

fn digest(channel: &str, code: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"assistant pairing v1\0");
    h.update(channel.as_bytes());
    h.update([0]);
    h.update(code.as_bytes());
    h.finalize().to_vec()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Store {
    /// Makes `code` the pending code of `channel` until `now_ms + CODE_TTL`, replacing any
    /// other.
    pub async fn start_pairing(
        &self,
        channel: &str,
        code: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let channel = channel.to_owned();
        let hash = normalize(code).map(|c| digest(&channel, &c));
        let expires = now_ms.saturating_add(i64::try_from(CODE_TTL.as_millis()).unwrap_or(0));
        self.with(move |c| {
            let Some(hash) = hash else {
                return Err(StoreError::BadCode);
            };
            c.execute(
                "INSERT INTO pairing (channel, code_sha256, expires_ms, attempts, paired_user)
                 VALUES (?1, ?2, ?3, 0, NULL)
                 ON CONFLICT (channel) DO UPDATE SET code_sha256 = ?2, expires_ms = ?3,
                     attempts = 0, paired_user = NULL",
                params![channel, hash, expires],
            )?;
            Ok(())
        })
        .await
    }

    /// Tries `text` from `sender` (not on the allowlist) against `channel`'s pending code.
    pub async fn try_pair(
        &self,
        channel: &str,
        sender: &str,
        text: &str,
        now_ms: i64,
    ) -> Result<PairOutcome, StoreError> {
        let Some(code) = normalize(text) else {
            return Ok(PairOutcome::NotACode);
        };
        let channel = channel.to_owned();
        let sender = sender.to_owned();
        let hash = digest(&channel, &code);
        self.with(move |c| {
            let tx = c.transaction()?;
            let row: Option<(Vec<u8>, i64, i64, Option<String>)> = tx
                .query_row(
                    "SELECT code_sha256, expires_ms, attempts, paired_user FROM pairing
                     WHERE channel = ?1",
                    params![channel],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((stored, expires, attempts, paired)) = row else {
                return Ok(PairOutcome::NotACode);
            };
            if paired.is_some() || expires < now_ms || attempts >= MAX_ATTEMPTS {
                return Ok(PairOutcome::NotACode);
            }
            if !same(&stored, &hash) {
                tx.execute(
                    "UPDATE pairing SET attempts = attempts + 1 WHERE channel = ?1",
                    params![channel],
                )?;
                tx.commit()?;
                return Ok(PairOutcome::WrongCode);
            }
            tx.execute(
                "UPDATE pairing SET paired_user = ?2 WHERE channel = ?1",
                params![channel, sender],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO paired_user (channel, user_id, paired_ms) VALUES (?1, ?2, ?3)",
                params![channel, sender, now_ms],
            )?;
            tx.commit()?;
            Ok(PairOutcome::Paired)
        })
        .await
    }

    /// Who used `code` on `channel`, if it is still the pending code and was used.
    pub async fn paired_with(
        &self,
        channel: &str,
        code: &str,
    ) -> Result<Option<String>, StoreError> {
        let channel = channel.to_owned();
        let hash = normalize(code).map(|c| digest(&channel, &c));
        self.with(move |c| {
            let Some(hash) = hash else {
                return Ok(None);
            };
            let row: Option<(Vec<u8>, Option<String>)> = c
                .query_row(
                    "SELECT code_sha256, paired_user FROM pairing WHERE channel = ?1",
                    params![channel],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row.and_then(|(stored, user)| same(&stored, &hash).then_some(user).flatten()))
        })
        .await
    }

    /// Voids `code` on `channel` if it is still the pending code (`bot pair` cancelled or
    /// timed out).
    pub async fn void_pairing(&self, channel: &str, code: &str) -> Result<(), StoreError> {
        let channel = channel.to_owned();
        let hash = normalize(code).map(|c| digest(&channel, &c));
        self.with(move |c| {
            if let Some(hash) = hash {
                c.execute(
                    "DELETE FROM pairing WHERE channel = ?1 AND code_sha256 = ?2 AND paired_user IS NULL",
                    params![channel, hash],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// The users paired on `channel`.
    pub async fn paired_users(&self, channel: &str) -> Result<Vec<String>, StoreError> {
        let channel = channel.to_owned();
        self.with(move |c| {
            let mut stmt =
                c.prepare("SELECT user_id FROM paired_user WHERE channel = ?1 ORDER BY paired_ms")?;
            let users = stmt
                .query_map(params![channel], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(users)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_are_well_formed_and_normalize() {
        for _ in 0..200 {
            let code = new_code().unwrap();
            assert_eq!(code.len(), 9);
            assert_eq!(code.as_bytes()[4], b'-');
            assert_eq!(normalize(&code).unwrap().len(), 8);
        }
        assert_eq!(normalize("abcd-efgh").as_deref(), Some("ABCDEFGH"));
        assert_eq!(normalize(" /start ABCD EFGH ").as_deref(), Some("ABCDEFGH"));
        assert_eq!(normalize("/pair abcdefgh").as_deref(), Some("ABCDEFGH"));
        assert_eq!(normalize("hello"), None);
        assert_eq!(normalize("ABCD-EFG0"), None, "0 is not in the alphabet");
        assert_eq!(normalize("ABCD-EFGHJ"), None);
        assert_eq!(normalize("ABCD-EFG#"), None);
    }

    #[tokio::test]
    async fn a_code_pairs_once_expires_and_dies_after_wrong_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let code = "ABCD-EFGH";
        store.start_pairing("telegram", code, 1_000).await.unwrap();
        // Not codes: nothing counted.
        for _ in 0..10 {
            assert_eq!(
                store
                    .try_pair("telegram", "9", "hello", 1_001)
                    .await
                    .unwrap(),
                PairOutcome::NotACode
            );
        }
        // The code of another channel does not work here.
        assert_eq!(
            store.try_pair("slack", "U1", code, 1_001).await.unwrap(),
            PairOutcome::NotACode
        );
        assert_eq!(
            store
                .try_pair("telegram", "7", "ABCD-EFGJ", 1_001)
                .await
                .unwrap(),
            PairOutcome::WrongCode
        );
        assert_eq!(store.paired_with("telegram", code).await.unwrap(), None);
        assert_eq!(
            store
                .try_pair("telegram", "42", "/start abcdefgh", 1_002)
                .await
                .unwrap(),
            PairOutcome::Paired
        );
        assert_eq!(
            store
                .paired_with("telegram", code)
                .await
                .unwrap()
                .as_deref(),
            Some("42")
        );
        // One use only.
        assert_eq!(
            store.try_pair("telegram", "43", code, 1_003).await.unwrap(),
            PairOutcome::NotACode
        );
        assert_eq!(store.paired_users("telegram").await.unwrap(), ["42"]);
        assert!(store.paired_users("slack").await.unwrap().is_empty());

        // Expiry.
        store
            .start_pairing("telegram", "JKMN-PQRS", 10_000)
            .await
            .unwrap();
        let late = 10_000 + i64::try_from(CODE_TTL.as_millis()).unwrap() + 1;
        assert_eq!(
            store
                .try_pair("telegram", "44", "JKMN-PQRS", late)
                .await
                .unwrap(),
            PairOutcome::NotACode
        );

        // Void after MAX_ATTEMPTS wrong codes, even for the right one afterwards.
        store
            .start_pairing("telegram", "TUVW-XYZ2", 20_000)
            .await
            .unwrap();
        for _ in 0..MAX_ATTEMPTS {
            assert_eq!(
                store
                    .try_pair("telegram", "66", "AAAA-AAAA", 20_001)
                    .await
                    .unwrap(),
                PairOutcome::WrongCode
            );
        }
        assert_eq!(
            store
                .try_pair("telegram", "45", "TUVW-XYZ2", 20_002)
                .await
                .unwrap(),
            PairOutcome::NotACode
        );
        // A voided code no longer pairs.
        store
            .start_pairing("telegram", "BBBB-CCCC", 25_000)
            .await
            .unwrap();
        store.void_pairing("telegram", "BBBB-CCCC").await.unwrap();
        assert_eq!(
            store
                .try_pair("telegram", "46", "BBBB-CCCC", 25_001)
                .await
                .unwrap(),
            PairOutcome::NotACode
        );
        // A new code replaces the void one; reopening keeps the paired users.
        store
            .start_pairing("telegram", "TUVW-XYZ3", 30_000)
            .await
            .unwrap();
        drop(store);
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        assert_eq!(
            store
                .try_pair("telegram", "45", "tuvw xyz3", 30_001)
                .await
                .unwrap(),
            PairOutcome::Paired
        );
        assert_eq!(store.paired_users("telegram").await.unwrap(), ["42", "45"]);
    }
}
