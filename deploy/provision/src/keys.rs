//! Ed25519 seeds and public keys on disk, and NATS nkey seeds.
//!
//! A seed file holds exactly 64 lowercase hex digits and a newline; a public key file the same
//! for the 32-byte public key. Loading a seed refuses a file that group or others can read. The
//! secret types here have a redacted `Debug` and wipe their bytes on drop.

use std::fmt;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::ProvisionError;
use crate::files;

/// Length of a key or seed in hex digits.
const HEX_LEN: usize = 64;

/// An Ed25519 signing key loaded from (or generated for) a seed file.
pub struct SigningKeySeed {
    key: SigningKey,
}

impl SigningKeySeed {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, ProvisionError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(bytes.as_mut()).map_err(ProvisionError::Random)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from raw seed bytes (tests and fixed examples only; real keys come from
    /// [`SigningKeySeed::generate`]).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        SigningKeySeed {
            key: SigningKey::from_bytes(bytes),
        }
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as 64 lowercase hex digits.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The seed file's content: 64 lowercase hex digits and a newline.
    pub(crate) fn file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(hex::encode(self.key.to_bytes()));
        text.push('\n');
        text
    }
}

impl fmt::Debug for SigningKeySeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeySeed")
            .field("public", &self.public_hex())
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Parses `<64 lowercase hex>\n` into 32 bytes; `what` names the content for errors.
fn parse_hex_line(
    path: &Path,
    text: &[u8],
    what: &str,
) -> Result<Zeroizing<[u8; 32]>, ProvisionError> {
    let reason = || format!("expected {what}: {HEX_LEN} lowercase hex digits and a newline");
    let body = text
        .strip_suffix(b"\n")
        .filter(|b| {
            b.len() == HEX_LEN
                && b.iter()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        })
        .ok_or_else(|| ProvisionError::malformed(path, reason()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(body, out.as_mut())
        .map_err(|_hex_error| ProvisionError::malformed(path, reason()))?;
    Ok(out)
}

/// Loads an Ed25519 seed file (refused if group or others can read it).
pub fn load_seed(path: &Path) -> Result<SigningKeySeed, ProvisionError> {
    let text = files::read_secret(path)?;
    let bytes = parse_hex_line(path, &text, "an Ed25519 seed")?;
    Ok(SigningKeySeed::from_bytes(&bytes))
}

/// A 256-bit secret key for MACs (the orchestrator's decision-payload key). Same file format as
/// a seed; redacted `Debug`; wiped on drop.
pub struct MacKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl MacKey {
    /// The key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// A key from raw bytes (tests only; real keys come from provisioning).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MacKey {
            bytes: Zeroizing::new(bytes),
        }
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

/// Loads a MAC key file (refused if group or others can read it).
pub fn load_mac_key(path: &Path) -> Result<MacKey, ProvisionError> {
    let text = files::read_secret(path)?;
    let bytes = parse_hex_line(path, &text, "a 256-bit key")?;
    Ok(MacKey { bytes })
}

/// Loads an Ed25519 public key file. Weak (small-order) keys are refused.
pub fn load_public(path: &Path) -> Result<VerifyingKey, ProvisionError> {
    let text = files::read_public(path)?;
    parse_public(path, &text)
}

pub(crate) fn parse_public(path: &Path, text: &[u8]) -> Result<VerifyingKey, ProvisionError> {
    let bytes = parse_hex_line(path, text, "an Ed25519 public key")?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_point_error| ProvisionError::malformed(path, "not an Ed25519 public key"))?;
    if key.is_weak() {
        return Err(ProvisionError::malformed(
            path,
            "a weak (small-order) Ed25519 public key",
        ));
    }
    Ok(key)
}

/// The public key file's content for `key`.
pub(crate) fn public_file_text(key: &VerifyingKey) -> String {
    format!("{}\n", hex::encode(key.as_bytes()))
}

/// A NATS nkey user seed (`SU...`), as async-nats takes it.
pub struct NkeySeed {
    seed: Zeroizing<String>,
    public: String,
}

impl NkeySeed {
    /// A fresh user nkey from the operating system's random number generator.
    pub(crate) fn generate(path: &Path) -> Result<Self, ProvisionError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(raw.as_mut()).map_err(ProvisionError::Random)?;
        Self::from_raw(path, *raw)
    }

    /// A user nkey from raw seed bytes (fixed examples and tests only).
    pub fn from_raw(path: &Path, raw: [u8; 32]) -> Result<Self, ProvisionError> {
        let pair = nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, raw).map_err(|e| {
            ProvisionError::Nkey {
                path: path.to_path_buf(),
                source: e,
            }
        })?;
        Self::from_pair(path, &pair)
    }

    fn from_pair(path: &Path, pair: &nkeys::KeyPair) -> Result<Self, ProvisionError> {
        let seed = pair.seed().map_err(|e| ProvisionError::Nkey {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(NkeySeed {
            seed: Zeroizing::new(seed),
            public: pair.public_key(),
        })
    }

    /// The seed text (secret: give it to `ConnectOptions::nkey` and nothing else).
    pub fn expose_seed(&self) -> &str {
        &self.seed
    }

    /// The public key (`U...`), as listed in the server config.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The seed file's content: the seed and a newline.
    pub(crate) fn file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(self.seed.len() + 1));
        text.push_str(&self.seed);
        text.push('\n');
        text
    }
}

impl fmt::Debug for NkeySeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NkeySeed")
            .field("public", &self.public)
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Loads a user nkey seed file (refused if group or others can read it, or if it is not a user
/// seed).
pub fn load_nkey_seed(path: &Path) -> Result<NkeySeed, ProvisionError> {
    let bytes = files::read_secret(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_utf8_error| ProvisionError::malformed(path, "expected an nkey seed"))?;
    let seed = text.strip_suffix('\n').unwrap_or(text);
    let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| ProvisionError::Nkey {
        path: path.to_path_buf(),
        source: e,
    })?;
    if pair.key_pair_type() != nkeys::KeyPairType::User {
        return Err(ProvisionError::malformed(path, "expected a user nkey seed"));
    }
    NkeySeed::from_pair(path, &pair)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::files::{SECRET_MODE, create_new};

    #[test]
    fn seeds_round_trip_and_debug_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.seed");
        let seed = SigningKeySeed::from_bytes(&[7u8; 32]);
        create_new(&p, seed.file_text().as_bytes(), SECRET_MODE).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text, format!("{}\n", "07".repeat(32)));
        let loaded = load_seed(&p).unwrap();
        assert_eq!(loaded.public_hex(), seed.public_hex());
        let debug = format!("{loaded:?}");
        assert!(!debug.contains(&"07".repeat(32)), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");

        let nk = NkeySeed::from_raw(&p, [9u8; 32]).unwrap();
        let debug = format!("{nk:?}");
        assert!(!debug.contains(nk.expose_seed()), "{debug}");
        assert!(nk.public_key().starts_with('U'));
        assert!(nk.expose_seed().starts_with("SU"));
    }

    #[test]
    fn malformed_seed_files_are_refused_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [&[u8]; 6] = [
            b"",
            b"07",
            b"0707070707070707070707070707070707070707070707070707070707070707",
            b"0707070707070707070707070707070707070707070707070707070707070707\n\n",
            b"0707070707070707070707070707070707070707070707070707070707070G07\n",
            b"07070707070707070707070707070707070707070707070707070707070707AB\n",
        ];
        for (i, case) in cases.iter().enumerate() {
            let p = dir.path().join(format!("s{i}"));
            create_new(&p, case, SECRET_MODE).unwrap();
            let e = load_seed(&p).unwrap_err();
            assert_eq!(e.code(), "provision_malformed_file", "case {i}");
            assert!(!e.to_string().contains("0707"), "{e}");
        }
    }

    #[test]
    fn loose_seed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.seed");
        create_new(
            &p,
            SigningKeySeed::from_bytes(&[1; 32]).file_text().as_bytes(),
            SECRET_MODE,
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_seed(&p).unwrap_err();
        assert_eq!(e.code(), "provision_insecure_permissions");
        assert!(e.to_string().contains("644"), "{e}");
    }

    #[test]
    fn public_keys_parse_and_weak_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let seed = SigningKeySeed::from_bytes(&[3; 32]);
        let p = dir.path().join("k.pub");
        fs::write(&p, public_file_text(&seed.verifying_key())).unwrap();
        assert_eq!(load_public(&p).unwrap(), seed.verifying_key());
        // The identity point (small order).
        let mut weak = [0u8; 32];
        weak[0] = 1;
        fs::write(&p, format!("{}\n", hex::encode(weak))).unwrap();
        assert_eq!(
            load_public(&p).unwrap_err().code(),
            "provision_malformed_file"
        );
    }

    #[test]
    fn only_user_nkey_seeds_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.nk");
        let nk = NkeySeed::from_raw(&p, [5; 32]).unwrap();
        create_new(&p, nk.file_text().as_bytes(), SECRET_MODE).unwrap();
        assert_eq!(load_nkey_seed(&p).unwrap().public_key(), nk.public_key());
        let account = nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::Account, [5; 32]).unwrap();
        let q = dir.path().join("a.nk");
        create_new(&q, account.seed().unwrap().as_bytes(), SECRET_MODE).unwrap();
        assert_eq!(
            load_nkey_seed(&q).unwrap_err().code(),
            "provision_malformed_file"
        );
    }
}

#[cfg(test)]
mod mac_key_tests {
    use super::*;

    #[test]
    fn mac_keys_load_privately_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = SigningKeySeed::generate().unwrap();
        crate::files::create_new(&path, key.file_text().as_bytes(), 0o600).unwrap();
        let mac = load_mac_key(&path).unwrap();
        assert_eq!(mac.bytes(), &key.signing_key().to_bytes());
        assert_eq!(format!("{mac:?}"), "MacKey(<redacted>)");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_mac_key(&path).is_err());
    }
}
