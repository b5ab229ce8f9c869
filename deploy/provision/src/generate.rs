//! `generate`: creates whatever the layout is missing and re-renders the derived files.
//!
//! Idempotent: an existing secret is never overwritten (a second run only adds what is missing,
//! such as a new agent's certificate and nkey), and files that must agree (a seed and its public
//! key, a CA and the certificates it issued) are checked rather than silently replaced. The
//! derived public files `nats/identities.json` and `nats/nats-server.conf` are rendered again on
//! every run from the spec and the stored keys.

use std::net::SocketAddr;
use std::path::Path;

use protocol::acl::Identity;
use protocol::token::{Keyset, KeysetFile};
use protocol::{AgentName, NameError, Principal};
use serde::{Deserialize, Serialize};

use crate::error::ProvisionError;
use crate::files::{self, PUBLIC_MODE, SECRET_MODE};
use crate::keys::{self, NkeySeed, SigningKeySeed};
use crate::layout::Layout;
use crate::nats_config::{Limits, NatsConfig, NatsUser, render_nats_config};
use crate::pki::{self, Authority};

/// Host names and addresses in the server certificate unless the spec says otherwise.
pub const DEFAULT_SERVER_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1", "nats"];

/// The key id of the first token signing key in `keyset.json`.
pub const FIRST_KID: u32 = 1;

/// What to provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The agents (each gets a client certificate, an nkey and its permissions).
    pub agents: Vec<AgentName>,
    /// DNS names and IP addresses the server certificate is valid for.
    pub server_hosts: Vec<String>,
    /// Where nats-server listens for clients.
    pub listen: SocketAddr,
    /// Server limits.
    pub limits: Limits,
}

impl Spec {
    /// A spec for these agents with the default hosts, limits and `127.0.0.1:4222`.
    pub fn new(agents: Vec<AgentName>) -> Spec {
        Spec {
            agents,
            server_hosts: DEFAULT_SERVER_HOSTS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4222)),
            limits: Limits::default(),
        }
    }

    /// Every identity: the services, then the agents in spec order. An agent listed twice is an
    /// error.
    pub fn identities(&self) -> Result<Vec<Identity>, ProvisionError> {
        let mut ids = vec![
            Identity::Orchestrator,
            Identity::AuditWriter,
            Identity::Gateway,
            Identity::Admin,
            Identity::Monitor,
            Identity::Egress,
        ];
        for (i, a) in self.agents.iter().enumerate() {
            if self.agents.iter().take(i).any(|b| b == a) {
                return Err(ProvisionError::InvalidSpec(format!(
                    "agent {a} is listed twice"
                )));
            }
            ids.push(Identity::Agent(a.clone()));
        }
        Ok(ids)
    }
}

/// Checks a server certificate host: an IP address, or a DNS name of letters, digits, `-` and
/// `.` (labels of 1 to 63 characters that neither start nor end with `-`, at most 253 in all).
fn check_host(host: &str) -> Result<(), ProvisionError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() <= 253 && host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ProvisionError::InvalidSpec(format!(
            "server host {host:?} is neither an IP address nor a DNS name"
        )))
    }
}

pub(crate) fn spec_name_error(e: NameError) -> ProvisionError {
    ProvisionError::InvalidSpec(e.to_string())
}

/// What a run did, by file name relative to the root (never any key material).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files created by this run.
    pub created: Vec<String>,
    /// Files that already existed and were left alone.
    pub kept: Vec<String>,
    /// Derived files rendered again by this run.
    pub written: Vec<String>,
}

/// The kind of an identity in `identities.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityKind {
    /// [`Identity::Orchestrator`]
    Orchestrator,
    /// [`Identity::AuditWriter`]
    AuditWriter,
    /// [`Identity::Gateway`]
    Gateway,
    /// [`Identity::Admin`]
    Admin,
    /// [`Identity::Monitor`]
    Monitor,
    /// [`Identity::Egress`]
    Egress,
    /// [`Identity::Agent`]
    Agent,
}

/// One identity in `identities.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityEntry {
    /// The principal (NATS user, inbox prefix, certificate CN).
    pub principal: Principal,
    /// Which kind of identity.
    pub kind: IdentityKind,
    /// The nkey public key.
    pub nkey: String,
}

/// `nats/identities.json`: everything needed to render the server config, and nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesFile {
    /// Format version (1).
    pub version: u32,
    /// Identities, services first.
    pub identities: Vec<IdentityEntry>,
}

/// The version of `identities.json` this build writes and reads.
pub const IDENTITIES_VERSION: u32 = 1;

impl IdentityEntry {
    fn new(identity: &Identity, nkey: &str) -> IdentityEntry {
        let kind = match identity {
            Identity::Orchestrator => IdentityKind::Orchestrator,
            Identity::AuditWriter => IdentityKind::AuditWriter,
            Identity::Gateway => IdentityKind::Gateway,
            Identity::Admin => IdentityKind::Admin,
            Identity::Monitor => IdentityKind::Monitor,
            Identity::Egress => IdentityKind::Egress,
            Identity::Agent(_) => IdentityKind::Agent,
        };
        IdentityEntry {
            principal: identity.principal(),
            kind,
            nkey: nkey.to_owned(),
        }
    }

    /// The identity this entry names (a service kind must carry its service's principal).
    pub fn identity(&self) -> Result<Identity, String> {
        let identity = match self.kind {
            IdentityKind::Orchestrator => Identity::Orchestrator,
            IdentityKind::AuditWriter => Identity::AuditWriter,
            IdentityKind::Gateway => Identity::Gateway,
            IdentityKind::Admin => Identity::Admin,
            IdentityKind::Monitor => Identity::Monitor,
            IdentityKind::Egress => Identity::Egress,
            IdentityKind::Agent => Identity::Agent(
                self.principal
                    .as_agent()
                    .ok_or_else(|| format!("{} is not an agent name", self.principal))?,
            ),
        };
        if identity.principal() != self.principal {
            return Err(format!(
                "{} does not match its kind {:?}",
                self.principal, self.kind
            ));
        }
        Ok(identity)
    }
}

/// Reads `nats/identities.json` (for rendering the config without touching any secret).
pub fn load_identities(layout: &Layout) -> Result<IdentitiesFile, ProvisionError> {
    let path = layout.identities();
    let bytes = files::read_public(&path)?;
    let file: IdentitiesFile =
        serde_json::from_slice(&bytes).map_err(|e| ProvisionError::Json {
            path: path.clone(),
            source: e,
        })?;
    if file.version != IDENTITIES_VERSION {
        return Err(ProvisionError::malformed(
            &path,
            format!("unsupported version {}", file.version),
        ));
    }
    Ok(file)
}

/// The server config for a layout from its `identities.json`.
pub fn nats_config_from_identities(
    layout: &Layout,
    listen: SocketAddr,
    limits: Limits,
    identities: &IdentitiesFile,
) -> Result<NatsConfig, ProvisionError> {
    let path = layout.identities();
    let mut users = Vec::with_capacity(identities.identities.len());
    for entry in &identities.identities {
        let identity = entry
            .identity()
            .map_err(|reason| ProvisionError::malformed(&path, reason))?;
        users.push(NatsUser {
            identity,
            nkey: entry.nkey.clone(),
        });
    }
    NatsConfig::for_layout(layout, listen, limits, users)
}

/// Records one file's fate in the summary.
struct Tally<'a> {
    layout: &'a Layout,
    summary: Summary,
}

impl Tally<'_> {
    fn created(&mut self, path: &Path) {
        let name = self.layout.relative(path);
        tracing::info!(file = %name, "created");
        self.summary.created.push(name);
    }
    fn kept(&mut self, path: &Path) {
        self.summary.kept.push(self.layout.relative(path));
    }
    fn written(&mut self, path: &Path) {
        self.summary.written.push(self.layout.relative(path));
    }
    fn record(&mut self, path: &Path, created: bool) {
        if created {
            self.created(path);
        } else {
            self.kept(path);
        }
    }
}

fn utf8(path: &Path, bytes: &[u8]) -> Result<String, ProvisionError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_utf8_error| ProvisionError::malformed(path, "expected PEM text"))
}

/// Loads or creates the CA.
fn ensure_ca(
    layout: &Layout,
    tally: &mut Tally<'_>,
    leaf_certs: &[std::path::PathBuf],
) -> Result<Authority, ProvisionError> {
    let (cert_path, key_path) = (layout.ca_cert(), layout.ca_key());
    match (files::exists(&cert_path)?, files::exists(&key_path)?) {
        (true, true) => {
            let key = files::read_secret(&key_path)?;
            let cert = files::read_public(&cert_path)?;
            let authority = Authority::load(&utf8(&cert_path, &cert)?, &utf8(&key_path, &key)?)?;
            tally.kept(&cert_path);
            tally.kept(&key_path);
            Ok(authority)
        }
        (true, false) => Err(ProvisionError::inconsistent(
            &cert_path,
            "the CA certificate exists without its key (tls/ca.key); remove the tls directory \
             to issue a new CA and new certificates",
        )),
        (false, has_key) => {
            if has_key {
                return Err(ProvisionError::inconsistent(
                    &key_path,
                    "the CA key exists without its certificate (tls/ca.pem); restore it, or \
                     remove the tls directory to issue a new CA and new certificates",
                ));
            }
            for leaf in leaf_certs {
                if files::exists(leaf)? {
                    return Err(ProvisionError::inconsistent(
                        leaf,
                        "this certificate was issued by a CA that is gone; remove the tls \
                         directory to issue a new CA and new certificates",
                    ));
                }
            }
            let (authority, issued) = Authority::generate()?;
            let created_key = files::create_new(&key_path, issued.key_pem.as_bytes(), SECRET_MODE)?;
            let created_cert =
                files::create_new(&cert_path, issued.cert_pem.as_bytes(), PUBLIC_MODE)?;
            if !(created_key && created_cert) {
                return Err(ProvisionError::inconsistent(
                    &cert_path,
                    "another provisioning run created the CA at the same time; run again",
                ));
            }
            tally.created(&key_path);
            tally.created(&cert_path);
            Ok(authority)
        }
    }
}

/// Ensures one certificate and its key. An existing key without a certificate gets a new
/// certificate for that key; a certificate without its key is an error.
fn ensure_leaf(
    tally: &mut Tally<'_>,
    cert_path: &Path,
    key_path: &Path,
    what: &str,
    issue: impl FnOnce(Option<rcgen::KeyPair>) -> Result<pki::Issued, ProvisionError>,
) -> Result<(), ProvisionError> {
    match (files::exists(cert_path)?, files::exists(key_path)?) {
        (true, true) => {
            files::check_secret_mode(key_path)?;
            tally.kept(cert_path);
            tally.kept(key_path);
            Ok(())
        }
        (true, false) => Err(ProvisionError::inconsistent(
            cert_path,
            "the certificate exists without its key; remove the certificate to issue a new pair",
        )),
        (false, true) => {
            let key_pem = files::read_secret(key_path)?;
            let key = pki::load_key(&utf8(key_path, &key_pem)?, what)?;
            let issued = issue(Some(key))?;
            let created = files::create_new(cert_path, issued.cert_pem.as_bytes(), PUBLIC_MODE)?;
            tally.record(cert_path, created);
            tally.kept(key_path);
            Ok(())
        }
        (false, false) => {
            let issued = issue(None)?;
            // Key first: a crash in between leaves a key, for which the next run issues a
            // certificate.
            let created_key = files::create_new(key_path, issued.key_pem.as_bytes(), SECRET_MODE)?;
            if !created_key {
                return Err(ProvisionError::inconsistent(
                    key_path,
                    "another provisioning run created this key at the same time; run again",
                ));
            }
            tally.created(key_path);
            let created = files::create_new(cert_path, issued.cert_pem.as_bytes(), PUBLIC_MODE)?;
            tally.record(cert_path, created);
            Ok(())
        }
    }
}

fn ensure_nkey(
    layout: &Layout,
    tally: &mut Tally<'_>,
    principal: &Principal,
) -> Result<NkeySeed, ProvisionError> {
    let path = layout.nkey_seed(principal);
    if !files::exists(&path)? {
        let fresh = NkeySeed::generate(&path)?;
        let created = files::create_new(&path, fresh.file_text().as_bytes(), SECRET_MODE)?;
        if created {
            tally.created(&path);
            return Ok(fresh);
        }
    }
    let seed = keys::load_nkey_seed(&path)?;
    tally.kept(&path);
    Ok(seed)
}

fn ensure_seed(path: &Path, tally: &mut Tally<'_>) -> Result<SigningKeySeed, ProvisionError> {
    if !files::exists(path)? {
        let fresh = SigningKeySeed::generate()?;
        if files::create_new(path, fresh.file_text().as_bytes(), SECRET_MODE)? {
            tally.created(path);
            return Ok(fresh);
        }
    }
    let seed = keys::load_seed(path)?;
    tally.kept(path);
    Ok(seed)
}

fn ensure_keyset(
    layout: &Layout,
    tally: &mut Tally<'_>,
    seed: &SigningKeySeed,
) -> Result<(), ProvisionError> {
    let path = layout.keyset();
    let keyset_error = |source| ProvisionError::Keyset {
        path: path.clone(),
        source,
    };
    if files::exists(&path)? {
        let bytes = files::read_public(&path)?;
        let file: KeysetFile =
            serde_json::from_slice(&bytes).map_err(|e| ProvisionError::Json {
                path: path.clone(),
                source: e,
            })?;
        let keyset = Keyset::from_file(&file).map_err(keyset_error)?;
        let public = seed.verifying_key();
        if !keyset.entries().iter().any(|e| e.key == public) {
            return Err(ProvisionError::inconsistent(
                &path,
                "the keyset does not hold the public key of keys/token-signing.seed",
            ));
        }
        tally.kept(&path);
        return Ok(());
    }
    let keyset = Keyset::single(FIRST_KID, seed.verifying_key()).map_err(keyset_error)?;
    let mut text =
        serde_json::to_string_pretty(&keyset.to_file()).map_err(|e| ProvisionError::Json {
            path: path.clone(),
            source: e,
        })?;
    text.push('\n');
    let created = files::create_new(&path, text.as_bytes(), PUBLIC_MODE)?;
    tally.record(&path, created);
    Ok(())
}

fn ensure_public(
    path: &Path,
    tally: &mut Tally<'_>,
    seed: &SigningKeySeed,
) -> Result<(), ProvisionError> {
    if files::exists(path)? {
        let stored = keys::load_public(path)?;
        if stored != seed.verifying_key() {
            return Err(ProvisionError::inconsistent(
                path,
                "this public key does not belong to the seed next to it",
            ));
        }
        tally.kept(path);
        return Ok(());
    }
    let created = files::create_new(
        path,
        keys::public_file_text(&seed.verifying_key()).as_bytes(),
        PUBLIC_MODE,
    )?;
    tally.record(path, created);
    Ok(())
}

/// Creates whatever `layout` is missing for `spec`, and renders `identities.json` and
/// `nats-server.conf` again. Existing secrets are never overwritten.
pub fn generate(layout: &Layout, spec: &Spec) -> Result<Summary, ProvisionError> {
    let identities = spec.identities()?;
    if spec.server_hosts.is_empty() {
        return Err(ProvisionError::InvalidSpec(
            "the server certificate needs at least one host".to_owned(),
        ));
    }
    for host in &spec.server_hosts {
        check_host(host)?;
    }
    for dir in [
        layout.root().to_path_buf(),
        layout.tls_dir(),
        layout.clients_dir(),
        layout.nats_dir(),
        layout.jetstream_dir(),
        layout.keys_dir(),
    ] {
        files::ensure_private_dir(&dir)?;
    }
    let mut tally = Tally {
        layout,
        summary: Summary::default(),
    };

    let mut leaf_certs = vec![layout.server_cert()];
    leaf_certs.extend(
        identities
            .iter()
            .map(|id| layout.client_cert(&id.principal())),
    );
    let ca = ensure_ca(layout, &mut tally, &leaf_certs)?;
    ensure_leaf(
        &mut tally,
        &layout.server_cert(),
        &layout.server_key(),
        "server",
        |key| ca.issue_server(&spec.server_hosts, key),
    )?;

    let mut users = Vec::with_capacity(identities.len());
    for identity in identities {
        let principal = identity.principal();
        ensure_leaf(
            &mut tally,
            &layout.client_cert(&principal),
            &layout.client_key(&principal),
            principal.as_str(),
            |key| ca.issue_client(principal.as_str(), key),
        )?;
        let nkey = ensure_nkey(layout, &mut tally, &principal)?;
        users.push(NatsUser {
            identity,
            nkey: nkey.public_key().to_owned(),
        });
    }

    let signing = ensure_seed(&layout.token_signing_seed(), &mut tally)?;
    ensure_keyset(layout, &mut tally, &signing)?;
    let checkpoint = ensure_seed(&layout.checkpoint_seed(), &mut tally)?;
    // A random 256-bit MAC key in the same file format (only its randomness matters).
    ensure_seed(&layout.decision_key(), &mut tally)?;
    ensure_public(&layout.checkpoint_public(), &mut tally, &checkpoint)?;

    let identities_file = IdentitiesFile {
        version: IDENTITIES_VERSION,
        identities: users
            .iter()
            .map(|u| IdentityEntry::new(&u.identity, &u.nkey))
            .collect(),
    };
    let path = layout.identities();
    let mut text =
        serde_json::to_string_pretty(&identities_file).map_err(|e| ProvisionError::Json {
            path: path.clone(),
            source: e,
        })?;
    text.push('\n');
    files::replace(&path, text.as_bytes(), PUBLIC_MODE)?;
    tally.written(&path);

    let config = NatsConfig::for_layout(layout, spec.listen, spec.limits.clone(), users)?;
    let path = layout.nats_config();
    files::replace(&path, render_nats_config(&config).as_bytes(), PUBLIC_MODE)?;
    tally.written(&path);

    Ok(tally.summary)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn spec(agents: &[&str]) -> Spec {
        Spec::new(agents.iter().map(|a| AgentName::new(*a).unwrap()).collect())
    }

    /// Every file under the root with its mode and content.
    fn snapshot(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::metadata(&path).unwrap();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let mode = meta.permissions().mode() & 0o777;
                if meta.is_dir() {
                    out.insert(format!("{rel}/"), (mode, Vec::new()));
                    stack.push(path);
                } else {
                    out.insert(rel, (mode, fs::read(&path).unwrap()));
                }
            }
        }
        out
    }

    #[test]
    fn a_fresh_run_creates_every_file_with_the_right_mode() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("root"));
        let summary = generate(&layout, &spec(&["hue"])).unwrap();
        assert!(summary.kept.is_empty(), "{summary:?}");
        assert_eq!(
            summary.written,
            vec!["nats/identities.json", "nats/nats-server.conf"]
        );
        let files = snapshot(layout.root());
        let modes: Vec<String> = files
            .iter()
            .map(|(name, (mode, _))| format!("{mode:o} {name}"))
            .collect();
        expect_test::expect![[r#"
            700 keys/
            644 keys/checkpoint.pub
            600 keys/checkpoint.seed
            600 keys/decision-mac.key
            644 keys/keyset.json
            600 keys/token-signing.seed
            700 nats/
            600 nats/admin.nk
            600 nats/audit.nk
            600 nats/egress.nk
            600 nats/gateway.nk
            600 nats/hue.nk
            644 nats/identities.json
            700 nats/jetstream/
            600 nats/monitor.nk
            644 nats/nats-server.conf
            600 nats/orchestrator.nk
            700 tls/
            600 tls/ca.key
            644 tls/ca.pem
            700 tls/clients/
            600 tls/clients/admin.key
            644 tls/clients/admin.pem
            600 tls/clients/audit.key
            644 tls/clients/audit.pem
            600 tls/clients/egress.key
            644 tls/clients/egress.pem
            600 tls/clients/gateway.key
            644 tls/clients/gateway.pem
            600 tls/clients/hue.key
            644 tls/clients/hue.pem
            600 tls/clients/monitor.key
            644 tls/clients/monitor.pem
            600 tls/clients/orchestrator.key
            644 tls/clients/orchestrator.pem
            600 tls/server.key
            644 tls/server.pem"#]]
        .assert_eq(&modes.join("\n"));
        assert_eq!(
            fs::metadata(layout.root()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut created = summary.created.clone();
        created.sort();
        let mut expected: Vec<String> = files
            .iter()
            .filter(|(name, _)| !name.ends_with('/'))
            .map(|(name, _)| name.clone())
            .filter(|n| !summary.written.contains(n))
            .collect();
        expected.sort();
        assert_eq!(created, expected);
    }

    #[test]
    fn a_second_run_keeps_every_secret_and_adds_only_the_new_agent() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("root"));
        generate(&layout, &spec(&["hue"])).unwrap();
        let before = snapshot(layout.root());

        let again = generate(&layout, &spec(&["hue"])).unwrap();
        assert!(again.created.is_empty(), "{again:?}");
        assert_eq!(snapshot(layout.root()), before);

        let summary = generate(&layout, &spec(&["hue", "weather"])).unwrap();
        assert_eq!(
            summary.created,
            vec![
                "tls/clients/weather.key",
                "tls/clients/weather.pem",
                "nats/weather.nk"
            ]
        );
        let after = snapshot(layout.root());
        for (name, content) in &before {
            if summary.written.contains(name) {
                continue;
            }
            assert_eq!(after.get(name), Some(content), "{name} changed");
        }
        let config = fs::read_to_string(layout.nats_config()).unwrap();
        assert!(config.contains("\"cmd.weather\""));
        // Summaries name files, never their content.
        let secret =
            fs::read_to_string(layout.nkey_seed(&Principal::new("weather").unwrap())).unwrap();
        assert!(!format!("{summary:?}").contains(secret.trim()));
    }

    #[test]
    fn keys_agree_with_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("root"));
        generate(&layout, &spec(&[])).unwrap();
        let signing = keys::load_seed(&layout.token_signing_seed()).unwrap();
        let file: KeysetFile = serde_json::from_slice(&fs::read(layout.keyset()).unwrap()).unwrap();
        let keyset = Keyset::from_file(&file).unwrap();
        assert_eq!(keyset.entries().len(), 1);
        assert_eq!(keyset.entries()[0].kid, FIRST_KID);
        assert_eq!(keyset.entries()[0].key, signing.verifying_key());
        let checkpoint = keys::load_seed(&layout.checkpoint_seed()).unwrap();
        assert_eq!(
            keys::load_public(&layout.checkpoint_public()).unwrap(),
            checkpoint.verifying_key()
        );
        assert_ne!(signing.public_hex(), checkpoint.public_hex());

        // The stored identities render exactly the config that was written.
        let identities = load_identities(&layout).unwrap();
        assert_eq!(identities.identities.len(), 6);
        let s = spec(&[]);
        let config = nats_config_from_identities(&layout, s.listen, s.limits, &identities).unwrap();
        assert_eq!(
            render_nats_config(&config),
            fs::read_to_string(layout.nats_config()).unwrap()
        );
    }

    #[test]
    fn a_missing_certificate_is_reissued_for_the_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("root"));
        generate(&layout, &spec(&["hue"])).unwrap();
        let hue = Principal::new("hue").unwrap();
        let key = fs::read(layout.client_key(&hue)).unwrap();
        let cert = fs::read(layout.client_cert(&hue)).unwrap();
        fs::remove_file(layout.client_cert(&hue)).unwrap();
        let summary = generate(&layout, &spec(&["hue"])).unwrap();
        assert_eq!(summary.created, vec!["tls/clients/hue.pem"]);
        assert!(summary.kept.contains(&"tls/clients/hue.key".to_owned()));
        assert_eq!(fs::read(layout.client_key(&hue)).unwrap(), key);
        assert_ne!(fs::read(layout.client_cert(&hue)).unwrap(), cert);
    }

    #[test]
    fn inconsistent_or_exposed_layouts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("root"));
        let s = spec(&["hue"]);
        generate(&layout, &s).unwrap();
        let hue = Principal::new("hue").unwrap();

        // A readable seed.
        fs::set_permissions(layout.nkey_seed(&hue), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            generate(&layout, &s).unwrap_err().code(),
            "provision_insecure_permissions"
        );
        fs::set_permissions(layout.nkey_seed(&hue), fs::Permissions::from_mode(0o600)).unwrap();

        // A certificate without its key.
        let key = fs::read(layout.client_key(&hue)).unwrap();
        fs::remove_file(layout.client_key(&hue)).unwrap();
        assert_eq!(
            generate(&layout, &s).unwrap_err().code(),
            "provision_inconsistent"
        );
        files::create_new(&layout.client_key(&hue), &key, SECRET_MODE).unwrap();

        // A public key that does not belong to its seed.
        let other = SigningKeySeed::from_bytes(&[9; 32]);
        files::replace(
            &layout.checkpoint_public(),
            keys::public_file_text(&other.verifying_key()).as_bytes(),
            PUBLIC_MODE,
        )
        .unwrap();
        assert_eq!(
            generate(&layout, &s).unwrap_err().code(),
            "provision_inconsistent"
        );
        fs::remove_file(layout.checkpoint_public()).unwrap();
        generate(&layout, &s).unwrap();

        // A CA that is gone while certificates it issued remain.
        fs::remove_file(layout.ca_cert()).unwrap();
        fs::remove_file(layout.ca_key()).unwrap();
        assert_eq!(
            generate(&layout, &s).unwrap_err().code(),
            "provision_inconsistent"
        );
    }

    #[test]
    fn invalid_specs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("root"));
        assert_eq!(
            generate(&layout, &spec(&["hue", "hue"]))
                .unwrap_err()
                .code(),
            "provision_invalid_spec"
        );
        let mut s = spec(&[]);
        s.server_hosts.clear();
        assert_eq!(
            generate(&layout, &s).unwrap_err().code(),
            "provision_invalid_spec"
        );
        for bad in ["not a host name", "-a.b", "a..b", "a_b", ""] {
            let mut s = spec(&[]);
            s.server_hosts = vec![bad.to_owned()];
            assert_eq!(
                generate(&layout, &s).unwrap_err().code(),
                "provision_invalid_spec",
                "{bad:?}"
            );
        }
        assert!(
            !layout.root().exists(),
            "nothing is written for an invalid spec"
        );
    }
}
