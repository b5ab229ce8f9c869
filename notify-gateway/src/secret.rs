//! Where a platform secret (a bot token, a signing secret) comes from: a file only the user
//! can read, or an item in the macOS Keychain.
//!
//! ```toml
//! token_file = "/Users/me/.assistant/secrets/telegram-token"             # a file, or
//! token_file = { keychain = "assistant", account = "telegram-bot-token" } # a Keychain item
//! ```
//!
//! What it does: [`SecretSource`] deserializes from either form. [`SecretSource::read`] returns
//! the secret: from a file (which must not be readable by group or others), or by running
//! `security find-generic-password -s <service> -a <account> -w` (the service and account as
//! separate arguments, never through a shell) and reading its standard output. Either way the
//! value must be one token (non-empty, no whitespace). Errors name the file or the Keychain
//! item and carry a stable code, never the secret or the tool's output.
//!
//! What it does not do: it never caches, prints or logs a secret; it does not create Keychain
//! items (`security add-generic-password -s assistant -a telegram-bot-token -w` does).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

/// The macOS Keychain tool.
pub const SECURITY_TOOL: &str = "/usr/bin/security";

/// Where a secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// A file holding the secret (one line).
    File(PathBuf),
    /// A generic password in the login Keychain.
    Keychain {
        /// The item's service (`-s`).
        keychain: String,
        /// The item's account (`-a`).
        account: String,
    },
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Others may read the file.
    #[error("the secret file {0} is readable by group or others (make it mode 0600)")]
    Exposed(PathBuf),
    /// The Keychain tool could not run or did not find the item.
    #[error(
        "the Keychain item (service {service:?}, account {account:?}) could not be read: {why}"
    )]
    Keychain {
        /// The item's service.
        service: String,
        /// The item's account.
        account: String,
        /// What went wrong (never the tool's output).
        why: String,
    },
    /// The value is not one token.
    #[error("{0} does not hold exactly one token")]
    Malformed(String),
}

impl SecretError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            SecretError::Read { .. } => "secret_unreadable",
            SecretError::Exposed(_) => "secret_file_exposed",
            SecretError::Keychain { .. } => "secret_keychain_failed",
            SecretError::Malformed(_) => "secret_invalid",
        }
    }
}

impl SecretSource {
    /// Reads the secret (the Keychain through [`SECURITY_TOOL`]).
    pub fn read(&self) -> Result<String, SecretError> {
        self.read_with(Path::new(SECURITY_TOOL))
    }

    /// Reads the secret, with `tool` as the Keychain tool (tests use a stand-in).
    pub fn read_with(&self, tool: &Path) -> Result<String, SecretError> {
        let (value, what) = match self {
            SecretSource::File(path) => {
                check_private(path)?;
                let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
                    path: path.clone(),
                    source,
                })?;
                (text, format!("the secret file {}", path.display()))
            }
            SecretSource::Keychain { keychain, account } => {
                let failed = |why: String| SecretError::Keychain {
                    service: keychain.clone(),
                    account: account.clone(),
                    why,
                };
                let out = std::process::Command::new(tool)
                    .args(["find-generic-password", "-s", keychain, "-a", account, "-w"])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .map_err(|e| failed(format!("cannot run {}: {}", tool.display(), e.kind())))?;
                if !out.status.success() {
                    // 44: errSecItemNotFound.
                    return Err(failed(match out.status.code() {
                        Some(44) => "no such item".to_owned(),
                        Some(c) => format!("{} exited with {c}", tool.display()),
                        None => format!("{} was killed", tool.display()),
                    }));
                }
                let text = String::from_utf8(out.stdout)
                    .map_err(|_not_utf8| failed("the item is not text".to_owned()))?;
                (text, format!("the Keychain item {keychain:?}/{account:?}"))
            }
        };
        let value = value.trim();
        if value.is_empty() || value.contains(char::is_whitespace) {
            return Err(SecretError::Malformed(what));
        }
        Ok(value.to_owned())
    }

    /// A short description for errors (the file or the Keychain item, never the secret).
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(p) => p.display().to_string(),
            SecretSource::Keychain { keychain, account } => {
                format!("Keychain {keychain:?}/{account:?}")
            }
        }
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SecretError::Exposed(path.to_owned()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), SecretError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        token_file: SecretSource,
    }

    fn parse(text: &str) -> Result<SecretSource, toml::de::Error> {
        toml::from_str::<Holder>(text).map(|h| h.token_file)
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn both_forms_parse_and_nothing_else() {
        assert_eq!(
            parse("token_file = \"/s/tg\"").unwrap(),
            SecretSource::File("/s/tg".into())
        );
        assert_eq!(
            parse("token_file = { keychain = \"assistant\", account = \"tg\" }").unwrap(),
            SecretSource::Keychain {
                keychain: "assistant".into(),
                account: "tg".into()
            }
        );
        assert!(parse("token_file = { keychain = \"assistant\" }").is_err());
        assert!(parse("token_file = { keychain = \"a\", account = \"b\", x = 1 }").is_err());
        assert!(parse("token_file = 3").is_err());
    }

    #[test]
    fn files_must_be_private_and_hold_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        write(&p, "123:abc\n", 0o600);
        let s = SecretSource::File(p.clone());
        assert_eq!(s.read().unwrap(), "123:abc");
        write(&p, "123:abc\n", 0o644);
        let e = s.read().unwrap_err();
        assert_eq!(e.code(), "secret_file_exposed");
        write(&p, "two words\n", 0o600);
        let e = s.read().unwrap_err();
        assert_eq!(e.code(), "secret_invalid");
        assert!(!e.to_string().contains("two words"));
        let e = SecretSource::File(dir.path().join("missing"))
            .read()
            .unwrap_err();
        assert_eq!(e.code(), "secret_unreadable");
    }

    #[test]
    fn keychain_items_are_read_with_separate_arguments_and_errors_say_nothing_secret() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("security");
        let args = dir.path().join("args");
        // A stand-in for /usr/bin/security: records its arguments one per line; knows one item.
        write(
            &tool,
            &format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {args}\n\
                 if [ \"$3\" = 'assistant' ] && [ \"$5\" = \"tg'; rm -rf / #\" ]; then echo 'xoxb-SECRET'; exit 0; fi\n\
                 echo 'security: SecKeychainSearchCopyNext: The specified item could not be found in the keychain.' >&2\n\
                 echo 'leaked-on-stdout'; exit 44\n",
                args = args.display()
            ),
            0o700,
        );
        let item = SecretSource::Keychain {
            keychain: "assistant".into(),
            account: "tg'; rm -rf / #".into(),
        };
        assert_eq!(item.read_with(&tool).unwrap(), "xoxb-SECRET");
        assert_eq!(
            std::fs::read_to_string(&args).unwrap(),
            "find-generic-password\n-s\nassistant\n-a\ntg'; rm -rf / #\n-w\n"
        );
        let missing = SecretSource::Keychain {
            keychain: "assistant".into(),
            account: "nope".into(),
        };
        let e = missing.read_with(&tool).unwrap_err();
        assert_eq!(e.code(), "secret_keychain_failed");
        assert!(e.to_string().contains("no such item"), "{e}");
        assert!(!e.to_string().contains("leaked"), "{e}");
        let e = missing.read_with(&dir.path().join("no-tool")).unwrap_err();
        assert_eq!(e.code(), "secret_keychain_failed");
    }
}
