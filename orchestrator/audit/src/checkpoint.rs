//! Signed checkpoints: C2SP signed notes (<https://c2sp.org/signed-note>) carrying a C2SP
//! tlog checkpoint body (<https://c2sp.org/tlog-checkpoint>) for the chain head.
//!
//! A note looks like this (the body is the text the signature covers, final newline included):
//!
//! ```text
//! assistant.local/audit
//! 1200
//! <base64 of the 32-byte head hash>
//!
//! — assistant.local/audit <base64(key id[4] || Ed25519 signature[64])>
//! ```
//!
//! The key id is `SHA-256(key name || "\n" || 0x01 || public key)[0..4]` (0x01 is the
//! signed-note signature type for Ed25519). The checkpoint key is its own Ed25519 key, never
//! the token-signing key. Signing and parsing are pure; only [`CheckpointSigner::from_seed_file`]
//! and [`CheckpointVerifier::from_public_file`] read files.
//!
//! What this does not do: no Merkle tree (the body's hash is the hash-chain head, so a
//! consistency check means recomputing the chain), no cosignatures from independent witnesses,
//! and no note extension lines (a note carrying any is refused).

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::hash::RowHash;

/// The log's name: the checkpoint origin line and the signing key's name.
pub const DEFAULT_LOG_NAME: &str = "assistant.local/audit";

/// Longest note accepted, in bytes (ours are about 200).
pub const MAX_NOTE_BYTES: usize = 4096;

/// The signed-note signature type byte for Ed25519.
const ED25519_TYPE: u8 = 0x01;

/// The em dash (U+2014) and space that open every signature line.
const SIG_LINE_PREFIX: &str = "\u{2014} ";

/// A log name, used both as the checkpoint origin and as the key name: 1 to 128 printable
/// ASCII characters, no spaces and no `+` (the signed-note key name rules, narrowed to ASCII).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LogName(String);

impl LogName {
    /// Validates and wraps.
    pub fn new(s: impl Into<String>) -> Result<Self, CheckpointKeyError> {
        let s = s.into();
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'+') {
            return Err(CheckpointKeyError::InvalidLogName);
        }
        Ok(LogName(s))
    }

    /// The default name, [`DEFAULT_LOG_NAME`].
    pub fn default_name() -> Self {
        LogName(DEFAULT_LOG_NAME.to_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LogName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogName({:?})", self.0)
    }
}

/// Why a checkpoint key could not be loaded.
#[derive(Debug, Error)]
pub enum CheckpointKeyError {
    /// The key file could not be read.
    #[error("cannot read checkpoint key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not exactly 64 lowercase hex digits and a newline (its content is not
    /// repeated here: it may be a secret).
    #[error("checkpoint key file {path} is not 64 lowercase hex digits and a newline")]
    Format {
        /// The file.
        path: String,
    },
    /// The public key is not a valid, non-weak Ed25519 point.
    #[error("checkpoint public key is not a valid Ed25519 key")]
    InvalidPublicKey,
    /// The log name breaks the key name rules.
    #[error("log name must be 1 to 128 printable ASCII characters without spaces or '+'")]
    InvalidLogName,
}

impl CheckpointKeyError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            CheckpointKeyError::Read { .. } => "checkpoint_key_unreadable",
            CheckpointKeyError::Format { .. } => "checkpoint_key_malformed",
            CheckpointKeyError::InvalidPublicKey => "checkpoint_key_invalid",
            CheckpointKeyError::InvalidLogName => "checkpoint_log_name_invalid",
        }
    }
}

/// Why a note did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    /// Not a well-formed signed note or checkpoint body.
    #[error("malformed checkpoint note: {0}")]
    Malformed(&'static str),
    /// No signature line from our key (name and key id): signed by another key, or not at all.
    #[error("checkpoint note carries no signature from the checkpoint key")]
    UnknownKey,
    /// A signature line from our key that does not verify.
    #[error("checkpoint note signature does not verify")]
    BadSignature,
    /// Signed by our key but for another log.
    #[error("checkpoint note is for another origin")]
    WrongOrigin,
}

impl NoteError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            NoteError::Malformed(_) => "note_malformed",
            NoteError::UnknownKey => "note_unknown_key",
            NoteError::BadSignature => "note_bad_signature",
            NoteError::WrongOrigin => "note_wrong_origin",
        }
    }
}

/// The content of a checkpoint: the log had `tree_size` rows and the hash of row `tree_size`
/// was `head` (for size 0, [`crate::hash::GENESIS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Number of rows covered.
    pub tree_size: u64,
    /// The hash of the last covered row.
    pub head: RowHash,
}

/// The checkpoint body (the signed text).
pub fn render_body(origin: &LogName, checkpoint: &Checkpoint) -> String {
    format!(
        "{}\n{}\n{}\n",
        origin.as_str(),
        checkpoint.tree_size,
        BASE64.encode(checkpoint.head.0)
    )
}

/// `SHA-256(key name || "\n" || 0x01 || public key)[0..4]`.
pub fn key_id(name: &LogName, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_str().as_bytes());
    h.update(b"\n");
    h.update([ED25519_TYPE]);
    h.update(public.as_bytes());
    let [a, b, c, d, ..]: [u8; 32] = h.finalize().into();
    [a, b, c, d]
}

/// Reads a file holding exactly 64 lowercase hex digits and a newline.
fn read_hex32(path: &Path) -> Result<[u8; 32], CheckpointKeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| CheckpointKeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let format = || CheckpointKeyError::Format {
        path: shown.clone(),
    };
    let hex_part = text.strip_suffix(b"\n").ok_or_else(format)?;
    if hex_part.len() != 64
        || !hex_part
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return Err(format());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_hex_error| format())?;
    Ok(out)
}

/// The checkpoint signing key with its log name. `Debug` never shows the key.
#[derive(Clone)]
pub struct CheckpointSigner {
    name: LogName,
    key: SigningKey,
    id: [u8; 4],
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.id))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CheckpointSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(name: LogName, seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let id = key_id(&name, &key.verifying_key());
        CheckpointSigner { name, key, id }
    }

    /// Loads the seed file written by provisioning (64 lowercase hex digits and a newline).
    pub fn from_seed_file(name: LogName, path: &Path) -> Result<Self, CheckpointKeyError> {
        let seed = read_hex32(path)?;
        Ok(Self::from_seed(name, &seed))
    }

    /// The matching verifier.
    pub fn verifier(&self) -> CheckpointVerifier {
        CheckpointVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            id: self.id,
        }
    }

    /// The log name.
    pub fn name(&self) -> &LogName {
        &self.name
    }

    /// Signs a checkpoint and returns the whole note.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = render_body(&self.name, checkpoint);
        let signature = self.key.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{body}\n{SIG_LINE_PREFIX}{} {}\n",
            self.name.as_str(),
            BASE64.encode(blob)
        )
    }
}

/// The checkpoint public key with its log name.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckpointVerifier {
    name: LogName,
    key: VerifyingKey,
    id: [u8; 4],
}

impl fmt::Debug for CheckpointVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointVerifier")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.id))
            .field("public_key", &hex::encode(self.key.as_bytes()))
            .finish()
    }
}

impl CheckpointVerifier {
    /// A verifier from a 32-byte public key; weak (small-order) keys are refused.
    pub fn from_public_bytes(name: LogName, bytes: &[u8; 32]) -> Result<Self, CheckpointKeyError> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_point_error| CheckpointKeyError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(CheckpointKeyError::InvalidPublicKey);
        }
        let id = key_id(&name, &key);
        Ok(CheckpointVerifier { name, key, id })
    }

    /// Loads the public key file written by provisioning (64 lowercase hex digits and a
    /// newline).
    pub fn from_public_file(name: LogName, path: &Path) -> Result<Self, CheckpointKeyError> {
        let bytes = read_hex32(path)?;
        Self::from_public_bytes(name, &bytes)
    }

    /// The 4-byte key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.id
    }

    /// The log name.
    pub fn name(&self) -> &LogName {
        &self.name
    }

    /// Verifies a note and returns its checkpoint. Signature lines from other keys are ignored
    /// (as the signed-note spec requires); at least one line must be ours and verify strictly.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let (body, signatures) = split_note(note)?;
        let mut ours = false;
        let mut verified = false;
        for line in signatures {
            let (name, blob) = parse_signature_line(line)?;
            if name != self.name.as_str() || blob.len() != 68 {
                continue;
            }
            let (id, sig) = blob.split_at(4);
            if id != self.id {
                continue;
            }
            ours = true;
            let Ok(sig) = <[u8; 64]>::try_from(sig) else {
                continue;
            };
            if self
                .key
                .verify_strict(body.as_bytes(), &Signature::from_bytes(&sig))
                .is_ok()
            {
                verified = true;
            }
        }
        if !ours {
            return Err(NoteError::UnknownKey);
        }
        if !verified {
            return Err(NoteError::BadSignature);
        }
        let (origin, checkpoint) = parse_body(body)?;
        if origin != self.name.as_str() {
            return Err(NoteError::WrongOrigin);
        }
        Ok(checkpoint)
    }
}

/// Reads a note's checkpoint without checking any signature: only for naming the tree size in
/// a report about a note that failed verification. Never trust its result.
pub fn parse_unverified(note: &str) -> Result<Checkpoint, NoteError> {
    let (body, _) = split_note(note)?;
    parse_body(body).map(|(_, c)| c)
}

/// Splits a note into its body (final newline included) and its signature lines.
fn split_note(note: &str) -> Result<(&str, std::str::Lines<'_>), NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::Malformed("note is over the size limit"));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("note holds control characters"));
    }
    if !note.ends_with('\n') {
        return Err(NoteError::Malformed("note does not end in a newline"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("note has no signature block"))?;
    let body = note
        .get(..=split)
        .ok_or(NoteError::Malformed("note has no body"))?;
    let signatures = note
        .get(split + 2..)
        .ok_or(NoteError::Malformed("note has no signature block"))?;
    if signatures.is_empty() {
        return Err(NoteError::Malformed("note has no signature lines"));
    }
    Ok((body, signatures.lines()))
}

/// Parses `— <name> <base64>`.
fn parse_signature_line(line: &str) -> Result<(&str, Vec<u8>), NoteError> {
    let rest = line
        .strip_prefix(SIG_LINE_PREFIX)
        .ok_or(NoteError::Malformed(
            "signature line does not start with an em dash",
        ))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or(NoteError::Malformed("signature line has no signature"))?;
    if name.is_empty() || b64.contains(' ') {
        return Err(NoteError::Malformed("signature line is malformed"));
    }
    let blob = BASE64
        .decode(b64)
        .map_err(|_base64_error| NoteError::Malformed("signature is not base64"))?;
    if blob.len() < 5 {
        return Err(NoteError::Malformed("signature is too short"));
    }
    Ok((name, blob))
}

/// Parses the checkpoint body: origin, tree size, base64 head hash, nothing else.
fn parse_body(body: &str) -> Result<(&str, Checkpoint), NoteError> {
    let mut lines = body.lines();
    let origin = lines
        .next()
        .filter(|o| !o.is_empty())
        .ok_or(NoteError::Malformed("checkpoint has no origin"))?;
    let size_text = lines
        .next()
        .ok_or(NoteError::Malformed("checkpoint has no tree size"))?;
    if size_text.is_empty()
        || !size_text.bytes().all(|b| b.is_ascii_digit())
        || (size_text.len() > 1 && size_text.starts_with('0'))
    {
        return Err(NoteError::Malformed("tree size is not a canonical decimal"));
    }
    let tree_size: u64 = size_text
        .parse()
        .map_err(|_overflow| NoteError::Malformed("tree size is out of range"))?;
    let head_text = lines
        .next()
        .ok_or(NoteError::Malformed("checkpoint has no head hash"))?;
    let head = BASE64
        .decode(head_text)
        .ok()
        .and_then(|b| RowHash::from_slice(&b))
        .ok_or(NoteError::Malformed("head hash is not 32 bytes of base64"))?;
    if lines.next().is_some() {
        return Err(NoteError::Malformed("checkpoint has extension lines"));
    }
    Ok((origin, Checkpoint { tree_size, head }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CheckpointSigner {
        CheckpointSigner::from_seed(LogName::default_name(), &[7u8; 32])
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            tree_size: 1200,
            head: RowHash([0xab; 32]),
        }
    }

    #[test]
    fn note_format_is_a_c2sp_checkpoint() {
        let note = signer().sign(&checkpoint());
        expect_test::expect![[r#"
            assistant.local/audit
            1200
            q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=

            — assistant.local/audit PgG5Q3m9CFxdclj17ge/PcGPP3Yn6yCDkKhrkLAQ9AWOzW3qiK7+VoSxEPUuhDAzsgWvfq4ZyLbyZ80l6TbTTa+8Kwo=
        "#]]
        .assert_eq(&note);
        assert_eq!(signer().verifier().verify(&note), Ok(checkpoint()));
    }

    #[test]
    fn key_id_is_the_signed_note_key_hash() {
        let s = signer();
        let public = s.verifier().key;
        let mut bytes = b"assistant.local/audit\n\x01".to_vec();
        bytes.extend_from_slice(public.as_bytes());
        let digest = Sha256::digest(&bytes);
        assert_eq!(&s.verifier().key_id()[..], &digest[..4]);
        expect_test::expect!["3e01b943"].assert_eq(&hex::encode(s.verifier().key_id()));
        // Another name gives another id for the same key.
        let other = key_id(&LogName::new("other.example/log").unwrap(), &public);
        assert_ne!(other, s.verifier().key_id());
    }

    fn check(note: &str) -> String {
        match signer().verifier().verify(note) {
            Ok(c) => format!("ok {}", c.tree_size),
            Err(e) => format!("err {}", e.code()),
        }
    }

    #[test]
    fn tampered_and_foreign_notes_are_refused() {
        let good = signer().sign(&checkpoint());
        let foreign =
            CheckpointSigner::from_seed(LogName::default_name(), &[9u8; 32]).sign(&checkpoint());
        let other_origin =
            CheckpointSigner::from_seed(LogName::new("elsewhere/log").unwrap(), &[7u8; 32])
                .sign(&checkpoint());
        // Re-labelled: right name, right key id, signature from another key.
        let (_, foreign_sig) = foreign.rsplit_once(' ').unwrap();
        let (good_prefix, good_sig) = good.rsplit_once(' ').unwrap();
        let mut blob = BASE64.decode(good_sig.trim_end()).unwrap();
        let foreign_blob = BASE64.decode(foreign_sig.trim_end()).unwrap();
        blob.splice(4.., foreign_blob[4..].iter().copied());
        let relabelled = format!("{good_prefix} {}\n", BASE64.encode(&blob));
        let both = format!("{}\u{2014} someone.else/witness AAAAAAA=\n", good);
        let cases = [
            ("good", good.clone()),
            ("two lines, one ours", both),
            ("size changed", good.replace("\n1200\n", "\n1201\n")),
            (
                "head changed",
                good.replace("q6urq6urq6urq6urq6ur", "q6urq6urq6urq6urq6uA"),
            ),
            ("foreign key", foreign),
            ("relabelled signature", relabelled),
            ("other origin", other_origin),
            (
                "no signature",
                good.split("\n\n").next().unwrap().to_owned() + "\n",
            ),
            ("leading zero", good.replace("\n1200\n", "\n01200\n")),
            ("control char", good.replace("1200", "12\r00")),
            ("truncated", good[..good.len() - 1].to_owned()),
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|(name, note)| format!("{name}: {}", check(note)))
            .collect();
        expect_test::expect![[r#"
            good: ok 1200
            two lines, one ours: ok 1200
            size changed: err note_bad_signature
            head changed: err note_bad_signature
            foreign key: err note_unknown_key
            relabelled signature: err note_bad_signature
            other origin: err note_unknown_key
            no signature: err note_malformed
            leading zero: err note_bad_signature
            control char: err note_malformed
            truncated: err note_malformed"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn unverified_parse_reads_the_size_only() {
        let foreign =
            CheckpointSigner::from_seed(LogName::default_name(), &[9u8; 32]).sign(&checkpoint());
        assert_eq!(parse_unverified(&foreign), Ok(checkpoint()));
    }

    #[test]
    fn signer_debug_is_redacted() {
        let text = format!("{:?}", signer());
        assert!(text.contains("<redacted>"));
        assert!(!text.contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn key_files_are_strict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let name = LogName::default_name();
        for (content, ok) in [
            (format!("{}\n", "0a".repeat(32)), true),
            ("0a".repeat(32), false),
            (format!("{}\n", "0A".repeat(32)), false),
            (format!("{}\n\n", "0a".repeat(32)), false),
            (format!("{}\n", "0a".repeat(31)), false),
            (format!(" {}\n", "0a".repeat(32)), false),
        ] {
            std::fs::write(&path, &content).unwrap();
            let got = CheckpointSigner::from_seed_file(name.clone(), &path);
            assert_eq!(got.is_ok(), ok, "{content:?}");
            if let Err(e) = got {
                assert_eq!(e.code(), "checkpoint_key_malformed");
                assert!(!e.to_string().contains("0a0a"));
            }
        }
        let missing = CheckpointSigner::from_seed_file(name, &dir.path().join("none"));
        assert_eq!(missing.unwrap_err().code(), "checkpoint_key_unreadable");
    }
}
