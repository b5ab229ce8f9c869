//! `cap.v1` capability tokens: claims, canonical encoding and verification.
//!
//! A token is `claims || signature`, where `claims` is the fixed binary layout below and the
//! signature is Ed25519 over `SIGNATURE_CONTEXT || claims`. There is no algorithm field: the
//! version byte pins Ed25519. Keys come only from the verifier's local [`Keyset`], never from the
//! token. On the wire a token is base64url without padding.
//!
//! ```text
//! u8        version = 1
//! u32 BE    kid
//! str8      iss   (principal)
//! str8      aud   (agent name)
//! str8      sub   (chat user)
//! str8      act   (action name)
//! [32]      args_sha256
//! [16]      plan_id
//! u16 BE    step
//! u8        approval tag: 0 = read-only by policy, 1 = approved by the user
//!   [16]    approval id      (tag 1 only)
//!   [32]    approval hash    (tag 1 only)
//! i64 BE    iat, nbf, exp    (Unix seconds)
//! [16]      jti
//! [64]      Ed25519 signature
//! ```
//! `str8` is a length byte followed by that many bytes, which must satisfy the field's name
//! grammar. Every layout has exactly one encoding, and decoding refuses anything else.
//!
//! This module verifies; it cannot sign. Signing lives in the orchestrator crate, the only
//! holder of the signing key.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::args::args_digest;
use crate::error::{KeysetError, TokenError};
use crate::id::{ApprovalId, PlanId};
use crate::message::Digest;
use crate::name::{ActionName, AgentName, ChatUser, Principal};

/// The only token version.
pub const TOKEN_VERSION: u8 = 1;
/// Domain separation prefix of the signed message.
pub const SIGNATURE_CONTEXT: &[u8] = b"assistant-cap-v1\0";
/// Largest token, in bytes (the largest valid token is 468 bytes).
pub const MAX_TOKEN_BYTES: usize = 512;
/// Largest token text (base64url of [`MAX_TOKEN_BYTES`]).
pub const MAX_TOKEN_TEXT: usize = MAX_TOKEN_BYTES.div_ceil(3) * 4;
/// Longest lifetime (`exp - iat`) a verifier accepts, in seconds.
pub const MAX_TTL_SECS: i64 = 120;
/// Lifetime the orchestrator mints by default, in seconds.
pub const DEFAULT_TTL_SECS: i64 = 30;
/// Clock skew tolerated on `nbf`, `iat` and `exp`, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 30;
/// A key that was rotated out stays valid this long after the rotation, so tokens minted just
/// before the rotation still verify.
pub const KEY_RETIREMENT_GRACE_SECS: i64 = MAX_TTL_SECS + CLOCK_SKEW_SECS;

/// A key id.
pub type KeyId = u32;

/// What the user approved for this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalBinding {
    /// A read-only action that policy lets run without asking.
    ReadOnlyPolicy,
    /// The user approved: the approval's id and the hash of the approval event (plan hash,
    /// approver, decision).
    Approved {
        /// The approval.
        id: ApprovalId,
        /// Hash binding the approval to the exact plan and approver.
        hash: Digest,
    },
}

/// The claims of a `cap.v1` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Key id (looked up in the verifier's keyset).
    pub kid: KeyId,
    /// Issuer (the orchestrator instance).
    pub iss: Principal,
    /// Audience: exactly one agent.
    pub aud: AgentName,
    /// Subject: the chat user on whose behalf the action runs.
    pub sub: ChatUser,
    /// The action.
    pub act: ActionName,
    /// SHA-256 of the canonical arguments ([`crate::args::args_digest`]).
    pub args_sha256: Digest,
    /// The plan.
    pub plan_id: PlanId,
    /// The step in the plan.
    pub step: u16,
    /// The approval.
    pub approval: ApprovalBinding,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expires (Unix seconds).
    pub exp: i64,
    /// One-time nonce (128 bits from a CSPRNG).
    pub jti: [u8; 16],
}

impl Claims {
    /// The canonical claims bytes (everything but the signature).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&self.kid.to_be_bytes());
        put_str8(&mut out, self.iss.as_str());
        put_str8(&mut out, self.aud.as_str());
        put_str8(&mut out, self.sub.as_str());
        put_str8(&mut out, self.act.as_str());
        out.extend_from_slice(&self.args_sha256.0);
        out.extend_from_slice(self.plan_id.as_bytes());
        out.extend_from_slice(&self.step.to_be_bytes());
        match &self.approval {
            ApprovalBinding::ReadOnlyPolicy => out.push(0),
            ApprovalBinding::Approved { id, hash } => {
                out.push(1);
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(&hash.0);
            }
        }
        out.extend_from_slice(&self.iat.to_be_bytes());
        out.extend_from_slice(&self.nbf.to_be_bytes());
        out.extend_from_slice(&self.exp.to_be_bytes());
        out.extend_from_slice(&self.jti);
        out
    }

    /// The bytes the signature covers: [`SIGNATURE_CONTEXT`] then the claims.
    pub fn signing_input(claims_bytes: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + claims_bytes.len());
        m.extend_from_slice(SIGNATURE_CONTEXT);
        m.extend_from_slice(claims_bytes);
        m
    }

    /// The nonce as lowercase hex (how audit rows and the replay store name it).
    pub fn jti_hex(&self) -> String {
        hex::encode(self.jti)
    }
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Every name type is at most 128 bytes, so the length always fits in a byte.
    let len = u8::try_from(s.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(s.as_bytes().get(..usize::from(len)).unwrap_or_default());
}

/// Joins claims bytes and a signature into a token.
pub fn assemble(claims_bytes: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let mut t = Vec::with_capacity(claims_bytes.len() + 64);
    t.extend_from_slice(claims_bytes);
    t.extend_from_slice(signature);
    t
}

/// The text form of a token.
pub fn to_text(token: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

/// Parses the text form; the size is checked before decoding.
pub fn from_text(text: &str) -> Result<Vec<u8>, TokenError> {
    use base64::Engine as _;
    if text.len() > MAX_TOKEN_TEXT {
        return Err(TokenError::Oversized);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_decode_error| TokenError::BadEncoding)
}

/// A decoded but not yet verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The claims.
    pub claims: Claims,
    /// The signature.
    pub signature: [u8; 64],
    /// The exact claims bytes the signature covers.
    pub claims_len: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let end = self.pos.checked_add(n).ok_or(TokenError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(TokenError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let s = self.take(N)?;
        <[u8; N]>::try_from(s).map_err(|_len| TokenError::Truncated)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.array::<1>()?[0])
    }
    fn str8(&mut self) -> Result<&'a str, TokenError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_utf8| TokenError::Malformed)
    }
}

/// Decodes a token strictly (size, version, every field's grammar, exact length). Does not
/// verify anything about its validity.
pub fn decode(token: &[u8]) -> Result<Decoded, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Oversized);
    }
    let mut r = Reader { buf: token, pos: 0 };
    if r.u8()? != TOKEN_VERSION {
        return Err(TokenError::UnsupportedVersion);
    }
    let kid = u32::from_be_bytes(r.array()?);
    let iss = Principal::new(r.str8()?).map_err(|_name| TokenError::Malformed)?;
    let aud = AgentName::new(r.str8()?).map_err(|_name| TokenError::Malformed)?;
    let sub = ChatUser::new(r.str8()?).map_err(|_name| TokenError::Malformed)?;
    let act = ActionName::new(r.str8()?).map_err(|_name| TokenError::Malformed)?;
    let args_sha256 = Digest(r.array()?);
    let plan_id = PlanId::from_bytes(r.array()?);
    let step = u16::from_be_bytes(r.array()?);
    let approval = match r.u8()? {
        0 => ApprovalBinding::ReadOnlyPolicy,
        1 => ApprovalBinding::Approved {
            id: ApprovalId::from_bytes(r.array()?),
            hash: Digest(r.array()?),
        },
        _ => return Err(TokenError::Malformed),
    };
    let iat = i64::from_be_bytes(r.array()?);
    let nbf = i64::from_be_bytes(r.array()?);
    let exp = i64::from_be_bytes(r.array()?);
    let jti = r.array()?;
    let claims_len = r.pos;
    let signature = r.array::<64>()?;
    if r.pos != token.len() {
        return Err(TokenError::TrailingBytes);
    }
    Ok(Decoded {
        claims: Claims {
            kid,
            iss,
            aud,
            sub,
            act,
            args_sha256,
            plan_id,
            step,
            approval,
            iat,
            nbf,
            exp,
            jti,
        },
        signature,
        claims_len,
    })
}

/// One verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// Key id.
    pub kid: KeyId,
    /// The Ed25519 public key.
    pub key: VerifyingKey,
    /// After this time (Unix seconds) tokens under this key are refused; `None` = current key.
    pub retires_at: Option<i64>,
}

/// The verifier's local keys: at most two active key ids (the current one and, during a
/// rotation, the previous one until it retires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyset {
    entries: Vec<KeyEntry>,
}

/// A keyset's stored form (`keyset.json`), as written by `bot init` and read by agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysetFile {
    /// Keys, current last.
    pub keys: Vec<KeyFileEntry>,
}

/// One key in a [`KeysetFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFileEntry {
    /// Key id.
    pub kid: KeyId,
    /// Public key, 64 lowercase hex digits.
    pub public_key: String,
    /// Retirement time (Unix seconds), if rotated out.
    pub retires_at: Option<i64>,
}

impl Keyset {
    /// Builds a keyset: one or two keys, distinct ids, no weak (small-order) keys.
    pub fn new(entries: Vec<KeyEntry>) -> Result<Self, KeysetError> {
        if entries.is_empty() {
            return Err(KeysetError::Empty);
        }
        if entries.len() > 2 {
            return Err(KeysetError::TooManyKeys);
        }
        for (i, e) in entries.iter().enumerate() {
            if e.key.is_weak() {
                return Err(KeysetError::WeakKey(e.kid));
            }
            if entries.iter().skip(i + 1).any(|o| o.kid == e.kid) {
                return Err(KeysetError::DuplicateKid(e.kid));
            }
        }
        Ok(Keyset { entries })
    }

    /// A keyset of one current key.
    pub fn single(kid: KeyId, key: VerifyingKey) -> Result<Self, KeysetError> {
        Keyset::new(vec![KeyEntry {
            kid,
            key,
            retires_at: None,
        }])
    }

    /// Parses the stored form.
    pub fn from_file(file: &KeysetFile) -> Result<Self, KeysetError> {
        let mut entries = Vec::with_capacity(file.keys.len());
        for k in &file.keys {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&k.public_key, &mut bytes)
                .map_err(|e| KeysetError::Malformed(format!("key {}: {e}", k.kid)))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_point| KeysetError::InvalidKey(k.kid))?;
            entries.push(KeyEntry {
                kid: k.kid,
                key,
                retires_at: k.retires_at,
            });
        }
        Keyset::new(entries)
    }

    /// The stored form.
    pub fn to_file(&self) -> KeysetFile {
        KeysetFile {
            keys: self
                .entries
                .iter()
                .map(|e| KeyFileEntry {
                    kid: e.kid,
                    public_key: hex::encode(e.key.as_bytes()),
                    retires_at: e.retires_at,
                })
                .collect(),
        }
    }

    /// Rotates to a new current key at `now`: the old current key retires at
    /// `now + KEY_RETIREMENT_GRACE_SECS`; keys already past retirement are dropped. Refused if a
    /// previously rotated key is still within its grace period (that would make three).
    pub fn rotate(&self, kid: KeyId, key: VerifyingKey, now: i64) -> Result<Self, KeysetError> {
        let mut entries: Vec<KeyEntry> = self
            .entries
            .iter()
            .filter(|e| e.retires_at.is_none_or(|r| r >= now))
            .cloned()
            .collect();
        for e in &mut entries {
            if e.retires_at.is_none() {
                e.retires_at = Some(now + KEY_RETIREMENT_GRACE_SECS);
            }
        }
        entries.push(KeyEntry {
            kid,
            key,
            retires_at: None,
        });
        Keyset::new(entries)
    }

    /// The entries.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    fn lookup(&self, kid: KeyId) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.kid == kid)
    }
}

/// What the verifier expects: its own identity and the request it received. These are ambient
/// facts supplied by the verifier, never taken from the token.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The verifying agent.
    pub audience: &'a AgentName,
    /// The action the request asks for.
    pub action: &'a ActionName,
    /// The arguments the request carries.
    pub args: &'a serde_json::Value,
    /// Whether the action changes the world (then a user approval is required).
    pub changes_world: bool,
}

/// Verifies a token, fail-closed, in this order: size, version, strict decoding, key id in the
/// local keyset, key not retired, strict Ed25519 signature, audience, action, argument hash,
/// time window and lifetime, approval. Pure: the caller then records the nonce in its replay
/// store (see `SECURITY.md`).
pub fn verify(
    keyset: &Keyset,
    token: &[u8],
    expected: Expected<'_>,
    now: i64,
) -> Result<Claims, TokenError> {
    let decoded = decode(token)?;
    let claims = decoded.claims;
    let entry = keyset.lookup(claims.kid).ok_or(TokenError::UnknownKey)?;
    if entry.retires_at.is_some_and(|r| now > r) {
        return Err(TokenError::KeyRetired);
    }
    let claims_bytes = token
        .get(..decoded.claims_len)
        .ok_or(TokenError::Truncated)?;
    let signature = Signature::from_bytes(&decoded.signature);
    entry
        .key
        .verify_strict(&Claims::signing_input(claims_bytes), &signature)
        .map_err(|_signature_error| TokenError::BadSignature)?;
    if &claims.aud != expected.audience {
        return Err(TokenError::WrongAudience);
    }
    if &claims.act != expected.action {
        return Err(TokenError::WrongAction);
    }
    if args_digest(expected.args) != claims.args_sha256 {
        return Err(TokenError::ArgsMismatch);
    }
    if claims.exp <= claims.nbf || claims.exp < claims.iat {
        return Err(TokenError::LifetimeTooLong);
    }
    if claims.exp.saturating_sub(claims.iat) > MAX_TTL_SECS {
        return Err(TokenError::LifetimeTooLong);
    }
    if now > claims.exp.saturating_add(CLOCK_SKEW_SECS) {
        return Err(TokenError::Expired);
    }
    if now < claims.nbf.saturating_sub(CLOCK_SKEW_SECS)
        || now < claims.iat.saturating_sub(CLOCK_SKEW_SECS)
    {
        return Err(TokenError::NotYetValid);
    }
    if expected.changes_world && claims.approval == ApprovalBinding::ReadOnlyPolicy {
        return Err(TokenError::ApprovalMissing);
    }
    Ok(claims)
}

/// [`verify`] for the text form.
pub fn verify_text(
    keyset: &Keyset,
    token: &str,
    expected: Expected<'_>,
    now: i64,
) -> Result<Claims, TokenError> {
    verify(keyset, &from_text(token)?, expected, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(b: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[b; 32]).verifying_key()
    }

    #[test]
    fn rotation_keeps_at_most_two_keys_and_retires_the_old_one_after_the_grace() {
        let one = Keyset::single(1, key(1)).unwrap();
        let two = one.rotate(2, key(2), 1_000).unwrap();
        assert_eq!(
            two.entries()
                .iter()
                .map(|e| (e.kid, e.retires_at))
                .collect::<Vec<_>>(),
            vec![(1, Some(1_000 + KEY_RETIREMENT_GRACE_SECS)), (2, None)]
        );
        // A third key while kid 1 is still in its grace period would make three: refused.
        assert_eq!(two.rotate(3, key(3), 1_010), Err(KeysetError::TooManyKeys));
        // After the grace period kid 1 is dropped and the rotation goes through.
        let three = two
            .rotate(3, key(3), 1_001 + KEY_RETIREMENT_GRACE_SECS)
            .unwrap();
        let kids: Vec<KeyId> = three.entries().iter().map(|e| e.kid).collect();
        assert_eq!(kids, vec![2, 3]);
        // The stored form round-trips.
        assert_eq!(Keyset::from_file(&three.to_file()).unwrap(), three);
    }

    #[test]
    fn keysets_refuse_duplicates_empties_and_bad_files() {
        assert_eq!(Keyset::new(vec![]), Err(KeysetError::Empty));
        let dup = vec![
            KeyEntry {
                kid: 1,
                key: key(1),
                retires_at: None,
            },
            KeyEntry {
                kid: 1,
                key: key(2),
                retires_at: None,
            },
        ];
        assert_eq!(Keyset::new(dup), Err(KeysetError::DuplicateKid(1)));
        let bad_hex = KeysetFile {
            keys: vec![KeyFileEntry {
                kid: 1,
                public_key: "zz".to_owned(),
                retires_at: None,
            }],
        };
        assert_eq!(
            Keyset::from_file(&bad_hex).unwrap_err().code(),
            "keyset_malformed"
        );
    }
}
