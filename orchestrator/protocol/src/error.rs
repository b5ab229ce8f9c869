//! Typed errors with stable codes.
//!
//! A code is part of the wire contract: it appears in replies, audit rows and user-facing
//! messages (next to a correlation id), so it never changes meaning once shipped. The `Display`
//! text is for operators and may change.

use thiserror::Error;

/// A string that failed a name's grammar.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {kind} ({len} bytes): {reason}")]
pub struct NameError {
    /// Which kind of name was being built.
    pub kind: &'static str,
    /// Why it was refused.
    pub reason: &'static str,
    /// Length of the refused input (the input itself is not kept: it may be hostile or secret).
    pub len: usize,
}

impl NameError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        "invalid_name"
    }
}

/// Why an envelope could not be decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The payload is over the size limit; nothing was parsed.
    #[error("payload of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit that applied.
        limit: usize,
    },
    /// The payload names an envelope version this build does not speak.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u64),
    /// The payload is not a well-formed envelope of the expected family.
    #[error("malformed envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The envelope parsed but a field broke a rule the type system cannot express.
    #[error("invalid envelope: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "payload_too_large",
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            DecodeError::Malformed(_) => "malformed_message",
            DecodeError::Invalid(_) => "invalid_message",
        }
    }
}

/// Why an envelope could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// The encoded envelope would exceed the size limit.
    #[error("encoded message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit that applied.
        limit: usize,
    },
    /// Serialization failed.
    #[error("could not serialize message: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl EncodeError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            EncodeError::TooLarge { .. } => "payload_too_large",
            EncodeError::Serialize(_) => "encode_failed",
        }
    }
}

/// Why a capability token was refused. Verification stops at the first failing check, in the
/// order of `SECURITY.md` §"Token verification", so the code names that check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Over [`crate::token::MAX_TOKEN_BYTES`] (or its text form over the text limit).
    #[error("token is over the size limit")]
    Oversized,
    /// The text form is not base64url without padding.
    #[error("token text is not base64url")]
    BadEncoding,
    /// The first byte names a version other than 1.
    #[error("token version is not supported")]
    UnsupportedVersion,
    /// The token ends before its last field.
    #[error("token is truncated")]
    Truncated,
    /// A field broke its grammar (a name, a flag, a length).
    #[error("token is malformed")]
    Malformed,
    /// Bytes follow the signature.
    #[error("token has trailing bytes")]
    TrailingBytes,
    /// The key id is not in the local keyset.
    #[error("token names an unknown key id")]
    UnknownKey,
    /// The key id was rotated out and its grace period has passed.
    #[error("token names a retired key id")]
    KeyRetired,
    /// The signature does not verify (strictly) under the named key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token is for another agent.
    #[error("token is for another audience")]
    WrongAudience,
    /// The token is for another action.
    #[error("token is for another action")]
    WrongAction,
    /// The arguments differ from those the token was minted for.
    #[error("token arguments do not match")]
    ArgsMismatch,
    /// `exp + skew < now`.
    #[error("token has expired")]
    Expired,
    /// `now < nbf - skew` or `now < iat - skew`.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `exp - iat` is over the maximum lifetime, or `exp <= nbf`.
    #[error("token lifetime is invalid or too long")]
    LifetimeTooLong,
    /// A change-the-world action carried no user approval.
    #[error("token carries no user approval for a changing action")]
    ApprovalMissing,
    /// The nonce was seen before.
    #[error("token was already used")]
    Replayed,
    /// The replay store could not record the nonce, so the token is refused (fail closed).
    #[error("replay store unavailable")]
    ReplayStoreUnavailable,
}

impl TokenError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Oversized => "token_oversized",
            TokenError::BadEncoding => "token_bad_encoding",
            TokenError::UnsupportedVersion => "token_unsupported_version",
            TokenError::Truncated => "token_truncated",
            TokenError::Malformed => "token_malformed",
            TokenError::TrailingBytes => "token_trailing_bytes",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::KeyRetired => "token_key_retired",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::WrongAction => "token_wrong_action",
            TokenError::ArgsMismatch => "token_args_mismatch",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::LifetimeTooLong => "token_lifetime_too_long",
            TokenError::ApprovalMissing => "token_approval_missing",
            TokenError::Replayed => "token_replayed",
            TokenError::ReplayStoreUnavailable => "token_replay_store_unavailable",
        }
    }
}

/// Why a keyset was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeysetError {
    /// More than two keys would be active.
    #[error("a keyset holds at most two active keys")]
    TooManyKeys,
    /// Two entries share a key id.
    #[error("duplicate key id {0}")]
    DuplicateKid(u32),
    /// The key is not a valid Ed25519 point.
    #[error("key {0} is not a valid Ed25519 public key")]
    InvalidKey(u32),
    /// The key has small order (a "weak" key that verifies forged signatures under plain `verify`).
    #[error("key {0} is a weak (small-order) Ed25519 key")]
    WeakKey(u32),
    /// The keyset is empty.
    #[error("a keyset needs at least one key")]
    Empty,
    /// The stored form could not be parsed.
    #[error("keyset file is malformed: {0}")]
    Malformed(String),
}

impl KeysetError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            KeysetError::TooManyKeys => "keyset_too_many_keys",
            KeysetError::DuplicateKid(_) => "keyset_duplicate_kid",
            KeysetError::InvalidKey(_) => "keyset_invalid_key",
            KeysetError::WeakKey(_) => "keyset_weak_key",
            KeysetError::Empty => "keyset_empty",
            KeysetError::Malformed(_) => "keyset_malformed",
        }
    }
}
