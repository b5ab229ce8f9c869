//! One error type for provisioning, connecting and stream setup, with stable codes.
//!
//! No variant ever carries secret material: seed and key errors name the file and the rule that
//! was broken, never the content.

use std::path::PathBuf;

use thiserror::Error;

/// Why provisioning, connecting or stream setup failed.
#[derive(Debug, Error)]
pub enum ProvisionError {
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "read", "rename", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A secret file or private directory is open to group or others.
    #[error(
        "{} has mode {mode:03o}: secrets must not be readable or writable by group or others \
         (chmod 600 for files, 700 for directories)",
        path.display()
    )]
    InsecurePermissions {
        /// The offending path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file does not have the expected format.
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: String,
    },
    /// Two files that belong together disagree, or one of a pair is missing.
    #[error("{}: {reason}", path.display())]
    Inconsistent {
        /// The file found to be inconsistent.
        path: PathBuf,
        /// What is wrong and how to repair it.
        reason: String,
    },
    /// A path cannot be written into the nats-server configuration.
    #[error("{} cannot go into the nats-server config: {reason}", path.display())]
    UnrenderablePath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The spec is invalid (for example an agent listed twice or no server host).
    #[error("invalid provisioning spec: {0}")]
    InvalidSpec(String),
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(#[source] getrandom::Error),
    /// Certificate or key generation or parsing failed.
    #[error("certificate {what}: {source}")]
    Certificate {
        /// Which certificate or key.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// An nkey could not be created or parsed.
    #[error("nkey {}: {source}", path.display())]
    Nkey {
        /// The seed file.
        path: PathBuf,
        /// The cause (nkeys errors never include the key material).
        #[source]
        source: nkeys::error::Error,
    },
    /// A JSON file could not be encoded or decoded.
    #[error("json {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A keyset could not be built or parsed.
    #[error("keyset {}: {source}", path.display())]
    Keyset {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: protocol::KeysetError,
    },
    /// Connecting to NATS failed.
    #[error("connect to NATS as {principal}: {source}")]
    Connect {
        /// Who was connecting.
        principal: String,
        /// The cause.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream API call failed.
    #[error("JetStream {what}: {source}")]
    JetStream {
        /// Which call, on which stream or consumer.
        what: String,
        /// The cause.
        #[source]
        source: async_nats::Error,
    },
    /// The server accepted a stream or consumer but reports a setting other than the one asked
    /// for (a server that silently ignores a hardening flag must fail loudly).
    #[error("JetStream {what}: {field} is {actual}, expected {expected}")]
    Hardening {
        /// The stream or consumer.
        what: String,
        /// The setting.
        field: &'static str,
        /// What was asked for.
        expected: String,
        /// What the server reports.
        actual: String,
    },
}

impl ProvisionError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProvisionError::Io { .. } => "provision_io",
            ProvisionError::InsecurePermissions { .. } => "provision_insecure_permissions",
            ProvisionError::Malformed { .. } => "provision_malformed_file",
            ProvisionError::Inconsistent { .. } => "provision_inconsistent",
            ProvisionError::UnrenderablePath { .. } => "provision_unrenderable_path",
            ProvisionError::InvalidSpec(_) => "provision_invalid_spec",
            ProvisionError::Random(_) => "provision_random",
            ProvisionError::Certificate { .. } => "provision_certificate",
            ProvisionError::Nkey { .. } => "provision_nkey",
            ProvisionError::Json { .. } => "provision_json",
            ProvisionError::Keyset { .. } => "provision_keyset",
            ProvisionError::Connect { .. } => "nats_connect",
            ProvisionError::JetStream { .. } => "nats_jetstream",
            ProvisionError::Hardening { .. } => "nats_stream_hardening",
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ProvisionError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ProvisionError::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn inconsistent(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ProvisionError::Inconsistent {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
