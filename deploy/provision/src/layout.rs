//! Where every provisioned file lives under the root directory. Pure path arithmetic: no I/O.
//!
//! ```text
//! <root>/                                  0700
//!   tls/ca.pem, ca.key                     local CA (ca.key 0600)
//!   tls/server.pem, server.key             nats-server certificate (server.key 0600)
//!   tls/clients/<principal>.pem, .key      one client certificate per identity (.key 0600)
//!   nats/<principal>.nk                    nkey user seed per identity (0600)
//!   nats/identities.json                   principal -> kind + nkey public key
//!   nats/nats-server.conf                  rendered server configuration
//!   nats/jetstream/                        JetStream store directory
//!   keys/token-signing.seed                capability token signing seed (0600)
//!   keys/keyset.json                       the agents' verification keyset (kid 1)
//!   keys/checkpoint.seed                   audit checkpoint signing seed (0600)
//!   keys/checkpoint.pub                    its public key
//!   keys/decision-mac.key                  the orchestrator's key for MAC'd button payloads (0600)
//!   audit/audit.db                         the audit log (written by audit-writer only)
//!   audit/witness.notes                    copies of its signed checkpoints
//! ```

use std::path::{Path, PathBuf};

use protocol::Principal;

/// The provisioned file layout under one root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root` (nothing is touched on disk).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/tls`
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    /// `<root>/tls/clients`
    pub fn clients_dir(&self) -> PathBuf {
        self.tls_dir().join("clients")
    }
    /// `<root>/nats`
    pub fn nats_dir(&self) -> PathBuf {
        self.root.join("nats")
    }
    /// `<root>/keys`
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// `<root>/audit`
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }
    /// The audit log database.
    pub fn audit_db(&self) -> PathBuf {
        self.audit_dir().join("audit.db")
    }
    /// The audit witness file (a copy of every signed checkpoint; keep it on another disk or
    /// host in production and point `--witness` there).
    pub fn audit_witness(&self) -> PathBuf {
        self.audit_dir().join("witness.notes")
    }

    /// The local CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }
    /// The local CA private key (secret).
    pub fn ca_key(&self) -> PathBuf {
        self.tls_dir().join("ca.key")
    }
    /// The nats-server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.tls_dir().join("server.pem")
    }
    /// The nats-server private key (secret).
    pub fn server_key(&self) -> PathBuf {
        self.tls_dir().join("server.key")
    }
    /// A principal's client certificate.
    pub fn client_cert(&self, principal: &Principal) -> PathBuf {
        self.clients_dir().join(format!("{principal}.pem"))
    }
    /// A principal's client private key (secret).
    pub fn client_key(&self, principal: &Principal) -> PathBuf {
        self.clients_dir().join(format!("{principal}.key"))
    }
    /// A principal's nkey user seed (secret).
    pub fn nkey_seed(&self, principal: &Principal) -> PathBuf {
        self.nats_dir().join(format!("{principal}.nk"))
    }
    /// Principal -> kind and nkey public key, the input for rendering the server config.
    pub fn identities(&self) -> PathBuf {
        self.nats_dir().join("identities.json")
    }
    /// The rendered nats-server configuration.
    pub fn nats_config(&self) -> PathBuf {
        self.nats_dir().join("nats-server.conf")
    }
    /// The JetStream store directory.
    pub fn jetstream_dir(&self) -> PathBuf {
        self.nats_dir().join("jetstream")
    }
    /// The orchestrator's capability-token signing seed (secret).
    pub fn token_signing_seed(&self) -> PathBuf {
        self.keys_dir().join("token-signing.seed")
    }
    /// The token verification keyset agents load (`protocol::token::KeysetFile`).
    pub fn keyset(&self) -> PathBuf {
        self.keys_dir().join("keyset.json")
    }
    /// The orchestrator's MAC key for decision payloads (secret).
    pub fn decision_key(&self) -> PathBuf {
        self.keys_dir().join("decision-mac.key")
    }
    /// The audit checkpoint signing seed (secret).
    pub fn checkpoint_seed(&self) -> PathBuf {
        self.keys_dir().join("checkpoint.seed")
    }
    /// The audit checkpoint public key.
    pub fn checkpoint_public(&self) -> PathBuf {
        self.keys_dir().join("checkpoint.pub")
    }

    /// `path` relative to the root, for summaries (falls back to the full path).
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_its_documented_place() {
        let l = Layout::new("/r");
        let hue = Principal::new("hue").unwrap();
        let paths = [
            l.ca_cert(),
            l.ca_key(),
            l.server_cert(),
            l.server_key(),
            l.client_cert(&hue),
            l.client_key(&hue),
            l.nkey_seed(&hue),
            l.identities(),
            l.nats_config(),
            l.jetstream_dir(),
            l.token_signing_seed(),
            l.keyset(),
            l.checkpoint_seed(),
            l.checkpoint_public(),
        ];
        let out: Vec<String> = paths.iter().map(|p| l.relative(p)).collect();
        expect_test::expect![[r#"
            tls/ca.pem
            tls/ca.key
            tls/server.pem
            tls/server.key
            tls/clients/hue.pem
            tls/clients/hue.key
            nats/hue.nk
            nats/identities.json
            nats/nats-server.conf
            nats/jetstream
            keys/token-signing.seed
            keys/keyset.json
            keys/checkpoint.seed
            keys/checkpoint.pub"#]]
        .assert_eq(&out.join("\n"));
    }
}
