//! Slack request signing (FORMATS.md §7 "Request signing"), pure and without I/O.
//!
//! Slack signs every Events API / interactivity / slash-command request with
//! `X-Slack-Signature: v0=` + hex(HMAC-SHA256(signing_secret, `v0:` + timestamp + `:` + body))
//! and `X-Slack-Request-Timestamp: <unix seconds>`. [`verify`] checks, in this order: the body
//! size ([`MAX_BODY_BYTES`], before any hashing), both headers present and well formed, the
//! version `v0`, the timestamp within [`REPLAY_WINDOW_SECS`] of `now` (either direction; exactly
//! 300 s is accepted), and the MAC, compared in constant time over the **raw** body bytes.
//!
//! A valid signature can be replayed within the window; [`ReplayCache`] refuses a second
//! delivery of the same key (Slack's `event_id`, or the signature itself for interactivity
//! payloads, which carry no event id). It is bounded: when full of unexpired entries it refuses
//! new keys (fail closed) rather than forgetting one that could then be replayed.
//!
//! No error carries the secret, the body or the expected signature.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The largest body [`verify`] accepts: 1 MiB. Slack's payloads are far smaller (interactivity
/// bodies with a full message are tens of KiB); anything larger is refused before hashing.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How far (seconds, either direction) a request's timestamp may be from now: Slack's 5 minutes.
pub const REPLAY_WINDOW_SECS: u64 = 300;

/// The only signature version Slack defines.
const VERSION_PREFIX: &str = "v0=";

/// Hex digits of an HMAC-SHA256 tag.
const SIGNATURE_HEX_LEN: usize = 64;

/// Timestamps longer than this are not plausible unix seconds (and would not fit an `i64`).
const MAX_TIMESTAMP_DIGITS: usize = 18;

/// The app's signing secret (Slack app settings → Basic Information → Signing Secret), held
/// only as the keyed HMAC state. `Debug` is redacted; it never appears in errors or logs.
#[derive(Clone)]
pub struct SigningSecret(Hmac<Sha256>);

impl SigningSecret {
    /// Keys the HMAC with `secret`. An empty secret is refused: anyone could sign with it.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, SigningError> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(SigningError::EmptySecret);
        }
        // HMAC accepts keys of any length; the error arm is unreachable but fails closed.
        <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map(Self)
            .map_err(|_invalid_length| SigningError::EmptySecret)
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.0.clone()
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// The two signing headers, as received (`None` when absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlackHeaders<'a> {
    /// `X-Slack-Request-Timestamp`.
    pub timestamp: Option<&'a str>,
    /// `X-Slack-Signature`.
    pub signature: Option<&'a str>,
}

/// Why a request was refused. Each variant has a stable [`code`](SigningError::code); none
/// carries the secret or the expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The configured signing secret is empty.
    #[error("the Slack signing secret is empty")]
    EmptySecret,
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("Slack request body of {len} bytes exceeds the {max}-byte limit")]
    BodyTooLarge {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `X-Slack-Request-Timestamp` is absent or empty.
    #[error("Slack request has no X-Slack-Request-Timestamp header")]
    TimestampMissing,
    /// `X-Slack-Request-Timestamp` is not a plain decimal integer of unix seconds.
    #[error("Slack request timestamp is not an integer of unix seconds")]
    TimestampMalformed,
    /// `X-Slack-Signature` is absent or empty.
    #[error("Slack request has no X-Slack-Signature header")]
    SignatureMissing,
    /// `X-Slack-Signature` has a version other than `v0`.
    #[error("Slack request signature has an unsupported version (only v0 is accepted)")]
    UnsupportedVersion,
    /// `X-Slack-Signature` is not `v0=` followed by 64 hex digits.
    #[error("Slack request signature is not v0= followed by 64 hex digits")]
    SignatureMalformed,
    /// The timestamp is more than [`REPLAY_WINDOW_SECS`] from now, in either direction.
    #[error("Slack request timestamp is {skew_secs} s from now (limit {REPLAY_WINDOW_SECS} s)")]
    Stale {
        /// `|now − timestamp|` in seconds.
        skew_secs: u64,
    },
    /// The signature does not match the body, timestamp and secret.
    #[error("Slack request signature does not match")]
    Mismatch,
    /// The same key (event id or signature) was already accepted within the window.
    #[error("Slack request was already delivered (replay)")]
    Replayed,
    /// The replay cache is full of unexpired entries; the request is refused (Slack retries).
    #[error("Slack replay cache is full ({capacity} entries within the window)")]
    ReplayCacheFull {
        /// The cache's capacity.
        capacity: usize,
    },
}

impl SigningError {
    /// A stable code for logs, audit rows and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SigningError::EmptySecret => "slack_secret_empty",
            SigningError::BodyTooLarge { .. } => "slack_body_too_large",
            SigningError::TimestampMissing => "slack_timestamp_missing",
            SigningError::TimestampMalformed => "slack_timestamp_malformed",
            SigningError::SignatureMissing => "slack_signature_missing",
            SigningError::UnsupportedVersion => "slack_signature_version",
            SigningError::SignatureMalformed => "slack_signature_malformed",
            SigningError::Stale { .. } => "slack_signature_stale",
            SigningError::Mismatch => "slack_signature_mismatch",
            SigningError::Replayed => "slack_replayed",
            SigningError::ReplayCacheFull { .. } => "slack_replay_cache_full",
        }
    }
}

/// Verifies one Slack request: `body` is the raw request body exactly as received (for
/// interactivity, the urlencoded `payload=…` bytes, not the decoded JSON); `now_unix` is the
/// current time in unix seconds (injected so tests can use Slack's 2018 test vector).
pub fn verify(
    secret: &SigningSecret,
    headers: SlackHeaders<'_>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SigningError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(SigningError::BodyTooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let timestamp_header = headers
        .timestamp
        .filter(|t| !t.is_empty())
        .ok_or(SigningError::TimestampMissing)?;
    let signature_header = headers
        .signature
        .filter(|s| !s.is_empty())
        .ok_or(SigningError::SignatureMissing)?;
    let timestamp = parse_timestamp(timestamp_header)?;
    let tag = parse_signature(signature_header)?;

    let skew_secs = now_unix.abs_diff(timestamp);
    if skew_secs > REPLAY_WINDOW_SECS {
        return Err(SigningError::Stale { skew_secs });
    }

    let mut mac = secret.mac();
    mac.update(b"v0:");
    mac.update(timestamp_header.as_bytes());
    mac.update(b":");
    mac.update(body);
    // `verify_slice` compares in constant time (subtle's `ct_eq`).
    mac.verify_slice(&tag)
        .map_err(|_mac_error| SigningError::Mismatch)
}

/// Computes the `v0=…` signature Slack would send for `timestamp` and `body`. For tests and
/// local fakes that sign requests; the verifier never compares strings.
pub fn sign(secret: &SigningSecret, timestamp: &str, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!(
        "{VERSION_PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Plain ASCII decimal digits only: no sign, spaces, fraction or exponent. The header's exact
/// bytes are what Slack signed, so nothing is normalised.
fn parse_timestamp(header: &str) -> Result<i64, SigningError> {
    if header.len() > MAX_TIMESTAMP_DIGITS || !header.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigningError::TimestampMalformed);
    }
    header
        .parse::<i64>()
        .map_err(|_parse_error| SigningError::TimestampMalformed)
}

fn parse_signature(header: &str) -> Result<Vec<u8>, SigningError> {
    let Some(hex_tag) = header.strip_prefix(VERSION_PREFIX) else {
        // `v1=…` and the like: a version we do not know. Anything else is malformed.
        return match header.split_once('=') {
            Some((version, _))
                if version.len() >= 2
                    && version.starts_with('v')
                    && version.bytes().skip(1).all(|b| b.is_ascii_digit()) =>
            {
                Err(SigningError::UnsupportedVersion)
            }
            _ => Err(SigningError::SignatureMalformed),
        };
    };
    if hex_tag.len() != SIGNATURE_HEX_LEN {
        return Err(SigningError::SignatureMalformed);
    }
    hex::decode(hex_tag).map_err(|_hex_error| SigningError::SignatureMalformed)
}

/// A bounded memory of recently accepted requests, so a captured request replayed within the
/// signature window is refused. Keys are Slack's `event_id` (Events API; a Slack *retry*
/// carries the same id and is refused too, which is the dedup FORMATS.md asks for) or the
/// `X-Slack-Signature` value (interactivity, which has no event id).
///
/// Entries expire `ttl_secs` after they were recorded; the ttl should be at least the
/// signature window (two windows covers a request signed at the window's far edge). When all
/// `capacity` entries are unexpired, new keys are refused with
/// [`SigningError::ReplayCacheFull`]: evicting one would let it be replayed.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    ttl_secs: u64,
    /// key → the time it was recorded.
    seen: HashMap<String, i64>,
    /// Keys in insertion order, for expiry.
    order: VecDeque<(i64, String)>,
}

impl ReplayCache {
    /// The default expiry: twice the signature window, so a request stamped up to 300 s in the
    /// future and replayed 300 s after its stamp is still remembered.
    pub const DEFAULT_TTL_SECS: u64 = 2 * REPLAY_WINDOW_SECS;

    /// A cache holding at most `capacity` keys (at least 1) for `ttl_secs` each.
    pub fn new(capacity: usize, ttl_secs: u64) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            ttl_secs,
            seen: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::with_capacity(capacity.min(4096)),
        }
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many keys are held (expired ones are purged on the next record).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no keys are held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records `key` as seen at `now_unix`, or refuses it if it was seen within the ttl (or
    /// the cache is full). Call only after [`verify`] accepted the request, so forged requests
    /// cannot fill the cache.
    pub fn check_and_record(&mut self, key: &str, now_unix: i64) -> Result<(), SigningError> {
        self.purge(now_unix);
        if self.seen.contains_key(key) {
            return Err(SigningError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(SigningError::ReplayCacheFull {
                capacity: self.capacity,
            });
        }
        self.seen.insert(key.to_owned(), now_unix);
        self.order.push_back((now_unix, key.to_owned()));
        Ok(())
    }

    /// Drops entries recorded more than `ttl_secs` before `now_unix` (an entry exactly
    /// `ttl_secs` old is still held). Stops at the first unexpired entry in insertion order,
    /// so a clock that stepped back only delays expiry.
    fn purge(&mut self, now_unix: i64) {
        while let Some((recorded, _)) = self.order.front() {
            if now_unix <= *recorded || now_unix.abs_diff(*recorded) <= self.ttl_secs {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
    }
}
