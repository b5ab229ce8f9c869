//! The row hash: a pure function over one row's fields and the previous row's hash.
//!
//! `hash = SHA-256("assistant-audit-v1\0" || u64be(seq) || lp(event_id) || i64be(ts_ms) ||
//! i64be(recorded_ms) || lp(actor) || lp(kind) || lp(correlation_id or "") || lp(payload) ||
//! prev_hash)`, where `lp(x) = u32be(len(x)) || x`. The first row's `prev_hash` is
//! [`GENESIS`] (32 zero bytes). Every field is length-prefixed or fixed-width, so no two
//! different rows encode to the same bytes.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// Domain separation for row hashes.
pub const ROW_HASH_CONTEXT: &[u8] = b"assistant-audit-v1\0";

/// A 32-byte SHA-256 chain hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowHash(pub [u8; 32]);

/// The `prev_hash` of row 1.
pub const GENESIS: RowHash = RowHash([0u8; 32]);

impl RowHash {
    /// Wraps a stored blob, if it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(RowHash)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for RowHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowHash({})", hex::encode(self.0))
    }
}

impl fmt::Display for RowHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The fields of one row that the hash covers, borrowed (the verifier hashes straight from
/// SQLite's buffers without copying).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowFields<'a> {
    /// 1-based, contiguous sequence number.
    pub seq: u64,
    /// The event id (the envelope id, or `js-<stream sequence>` for a rejected message).
    pub event_id: &'a str,
    /// When the sender says it happened (envelope `sent_at`), Unix milliseconds.
    pub ts_ms: i64,
    /// When the writer committed it, Unix milliseconds.
    pub recorded_ms: i64,
    /// The principal from the subject.
    pub actor: &'a str,
    /// The event kind.
    pub kind: &'a str,
    /// The correlation id, if any.
    pub correlation_id: Option<&'a str>,
    /// The canonical JSON payload.
    pub payload: &'a [u8],
}

/// Writes `u32be(len) || bytes`. SQLite caps a string or blob at 1e9 bytes (`SQLITE_MAX_LENGTH`),
/// and the writer caps fields far lower, so the length always fits; saturating keeps the
/// function total without a panic path.
fn length_prefixed(h: &mut Sha256, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    h.update(len.to_be_bytes());
    h.update(bytes);
}

/// The row hash (see the module docs for the exact byte layout).
pub fn row_hash(row: &RowFields<'_>, prev_hash: &RowHash) -> RowHash {
    let mut h = Sha256::new();
    h.update(ROW_HASH_CONTEXT);
    h.update(row.seq.to_be_bytes());
    length_prefixed(&mut h, row.event_id.as_bytes());
    h.update(row.ts_ms.to_be_bytes());
    h.update(row.recorded_ms.to_be_bytes());
    length_prefixed(&mut h, row.actor.as_bytes());
    length_prefixed(&mut h, row.kind.as_bytes());
    length_prefixed(&mut h, row.correlation_id.unwrap_or("").as_bytes());
    length_prefixed(&mut h, row.payload);
    h.update(prev_hash.0);
    RowHash(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RowFields<'static> {
        RowFields {
            seq: 1,
            event_id: "00000000-0000-4000-8000-000000000001",
            ts_ms: 1_700_000_000_000,
            recorded_ms: 1_700_000_000_123,
            actor: "hue",
            kind: "service_started",
            correlation_id: Some("00000000-0000-4000-8000-0000000000c1"),
            payload: br#"{"body":{"service_started":{"version":"1.0.0"}}}"#,
        }
    }

    #[test]
    fn row_hash_matches_the_fixed_vector() {
        // The vector pins the byte layout: any change to it is a format break that old logs
        // would fail to verify against.
        let first = row_hash(&sample(), &GENESIS);
        expect_test::expect!["4de5a295280613409f99a4782a0cc64785bf61a0d3812b38902762e5ede6f3be"]
            .assert_eq(&first.to_hex());
        let second = row_hash(
            &RowFields {
                seq: 2,
                correlation_id: None,
                ..sample()
            },
            &first,
        );
        expect_test::expect!["11a581f79c8ac101bbe7ff0076e4d83f7bb808dc9f9179193bf08b700ed2181c"]
            .assert_eq(&second.to_hex());
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // Recompute the first vector by hand from the documented layout.
        let r = sample();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"assistant-audit-v1\0");
        bytes.extend_from_slice(&1u64.to_be_bytes());
        let lp = |b: &mut Vec<u8>, x: &[u8]| {
            b.extend_from_slice(&(x.len() as u32).to_be_bytes());
            b.extend_from_slice(x);
        };
        lp(&mut bytes, r.event_id.as_bytes());
        bytes.extend_from_slice(&r.ts_ms.to_be_bytes());
        bytes.extend_from_slice(&r.recorded_ms.to_be_bytes());
        lp(&mut bytes, r.actor.as_bytes());
        lp(&mut bytes, r.kind.as_bytes());
        lp(&mut bytes, r.correlation_id.unwrap().as_bytes());
        lp(&mut bytes, r.payload);
        bytes.extend_from_slice(&[0u8; 32]);
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(row_hash(&r, &GENESIS), RowHash(expected));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = row_hash(&sample(), &GENESIS);
        let variants = [
            RowFields { seq: 2, ..sample() },
            RowFields {
                event_id: "x",
                ..sample()
            },
            RowFields {
                ts_ms: 1,
                ..sample()
            },
            RowFields {
                recorded_ms: 1,
                ..sample()
            },
            RowFields {
                actor: "door",
                ..sample()
            },
            RowFields {
                kind: "other",
                ..sample()
            },
            RowFields {
                correlation_id: None,
                ..sample()
            },
            RowFields {
                payload: b"{}",
                ..sample()
            },
        ];
        for v in variants {
            assert_ne!(row_hash(&v, &GENESIS), base, "{v:?}");
        }
        assert_ne!(row_hash(&sample(), &RowHash([1; 32])), base);
        // Moving bytes between adjacent fields changes the hash (length prefixes).
        let a = RowFields {
            actor: "ab",
            kind: "c",
            ..sample()
        };
        let b = RowFields {
            actor: "a",
            kind: "bc",
            ..sample()
        };
        assert_ne!(row_hash(&a, &GENESIS), row_hash(&b, &GENESIS));
    }
}
