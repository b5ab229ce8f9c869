//! The web chat's access token: 256 random bits, hex, in a file only the user can read.
//!
//! What it does: [`WebToken::load_or_create`] reads the token file, or creates it atomically
//! (a private temporary file in the same directory, fsynced, then hard-linked into place, so
//! a reader never sees a partial token and two starts never write two tokens) with mode 0600;
//! it refuses a file that others may read or that does not hold exactly one token.
//! [`WebToken::matches`] compares a presented token in constant time.
//!
//! What it does not do: it never prints the token (`Debug` is redacted) and keeps no copy of it
//! anywhere but in memory; it does not rotate it (delete the file and restart to get a new one).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq as _;

/// The token's length in bytes (256 bits).
const TOKEN_BYTES: usize = 32;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read or created.
    #[error("web token file {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Others may read the file.
    #[error("web token file {0} is readable by others (it must be mode 0600)")]
    Insecure(PathBuf),
    /// The file does not hold one token.
    #[error("web token file {0} does not hold one 64-hex-digit token")]
    Malformed(PathBuf),
    /// No randomness.
    #[error("no randomness for the web token: {0}")]
    Random(#[source] getrandom::Error),
}

impl TokenError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Io { .. } => "web_token_unreadable",
            TokenError::Insecure(_) => "web_token_insecure",
            TokenError::Malformed(_) => "web_token_invalid",
            TokenError::Random(_) => "web_token_random_failed",
        }
    }
}

/// The page's access token. Never printed.
#[derive(Clone)]
pub struct WebToken(String);

impl std::fmt::Debug for WebToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebToken(<redacted>)")
    }
}

impl WebToken {
    /// Reads the token at `path`, creating it (mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<WebToken, TokenError> {
        match Self::load(path) {
            Err(TokenError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Self::create(path)?;
                Self::load(path)
            }
            other => other,
        }
    }

    /// Wraps a token given in full (tests, and `bot` printing the URL). Must be 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<WebToken> {
        let ok = hex.len() == TOKEN_BYTES * 2 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| WebToken(hex.to_ascii_lowercase()))
    }

    /// The token, for building the page URL. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, compared in constant time (only the length leaks).
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }

    fn load(path: &Path) -> Result<WebToken, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(TokenError::Insecure(path.to_owned()));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        WebToken::from_hex(text.trim()).ok_or_else(|| TokenError::Malformed(path.to_owned()))
    }

    fn create(path: &Path) -> Result<(), TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut bytes).map_err(TokenError::Random)?;
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).map_err(TokenError::Random)?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(hex::encode(bytes).as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            // Fails if the file appeared meanwhile: the other token wins, ours is dropped.
            match std::fs::hard_link(&tmp, path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        written.map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn created_private_reused_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-token");
        let a = WebToken::load_or_create(&path).unwrap();
        assert_eq!(a.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = WebToken::load_or_create(&path).unwrap();
        assert_eq!(a.expose(), b.expose(), "the same token after a restart");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );
        assert!(a.matches(b.expose()));
        assert!(!a.matches(""));
        assert!(!a.matches(&b.expose()[1..]));
        assert!(!a.matches(&format!("{}0", b.expose())));
        assert_eq!(format!("{a:?}"), "WebToken(<redacted>)");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = WebToken::load_or_create(&path).unwrap_err();
        assert_eq!(e.code(), "web_token_insecure");
        assert!(!e.to_string().contains(a.expose()));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a token").unwrap();
        assert_eq!(
            WebToken::load_or_create(&path).unwrap_err().code(),
            "web_token_invalid"
        );
        assert!(WebToken::from_hex(&"a".repeat(63)).is_none());
        assert!(WebToken::from_hex(&"g".repeat(64)).is_none());
    }
}
