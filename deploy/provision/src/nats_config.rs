//! The nats-server configuration: a plain [`NatsConfig`] value and a pure renderer.
//!
//! Every user's permissions are rendered from [`protocol::acl::permissions`], never written by
//! hand, so the subjects table, the code and the running server cannot drift apart. Every string
//! is quoted (`$` starts a variable in the NATS config syntax; quoted strings are literal).
//! There is no `no_auth_user`: every connection authenticates with an nkey and a client
//! certificate from our CA.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use protocol::acl::{self, Identity, Permissions};

use crate::error::ProvisionError;
use crate::layout::Layout;

/// Name of the system account (the monitor lives there).
pub const SYSTEM_ACCOUNT: &str = "SYS";
/// Name of the application account (every other identity lives there).
pub const APP_ACCOUNT: &str = "APP";

/// Connection and resource limits of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message payload (bytes); equal to the largest envelope.
    pub max_payload: usize,
    /// Most simultaneous client connections.
    pub max_connections: u32,
    /// Most subscriptions per connection.
    pub max_subscriptions: u32,
    /// Most bytes buffered for one slow client before it is cut off.
    pub max_pending: u64,
    /// Seconds a write to a client may block before the client is cut off.
    pub write_deadline_secs: u32,
    /// Seconds between server pings.
    pub ping_interval_secs: u32,
    /// Unanswered pings before the connection is closed.
    pub ping_max: u32,
    /// Seconds the TLS handshake may take.
    pub tls_timeout_secs: u32,
    /// Server-wide JetStream memory store (bytes).
    pub max_memory_store: u64,
    /// Server-wide JetStream file store (bytes).
    pub max_file_store: u64,
    /// The application account's JetStream memory (bytes).
    pub app_max_memory: u64,
    /// The application account's JetStream file storage (bytes).
    pub app_max_file: u64,
    /// The application account's stream count.
    pub app_max_streams: u32,
    /// The application account's consumer count.
    pub app_max_consumers: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: protocol::MAX_ENVELOPE_BYTES,
            max_connections: 64,
            max_subscriptions: 256,
            max_pending: 8 * 1024 * 1024,
            write_deadline_secs: 5,
            ping_interval_secs: 30,
            ping_max: 2,
            tls_timeout_secs: 2,
            max_memory_store: 64 * 1024 * 1024,
            max_file_store: 1024 * 1024 * 1024,
            app_max_memory: 16 * 1024 * 1024,
            app_max_file: 512 * 1024 * 1024,
            app_max_streams: 8,
            app_max_consumers: 32,
        }
    }
}

/// One NATS user: an identity and its nkey public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    /// Who.
    pub identity: Identity,
    /// The nkey public key (`U...`).
    pub nkey: String,
}

/// Everything the rendered configuration depends on. Paths are already checked to be
/// renderable (UTF-8, no control characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Client listen address.
    pub listen: SocketAddr,
    /// Server certificate (PEM).
    pub cert_file: String,
    /// Server private key (PEM).
    pub key_file: String,
    /// The CA that client certificates must chain to.
    pub ca_file: String,
    /// JetStream store directory.
    pub store_dir: String,
    /// Limits.
    pub limits: Limits,
    /// Users, in order.
    pub users: Vec<NatsUser>,
}

/// A path as config text: UTF-8 with no control characters.
fn path_text(path: &Path) -> Result<String, ProvisionError> {
    let text = path
        .to_str()
        .ok_or_else(|| ProvisionError::UnrenderablePath {
            path: path.to_path_buf(),
            reason: "not valid UTF-8",
        })?;
    if text.chars().any(char::is_control) {
        return Err(ProvisionError::UnrenderablePath {
            path: path.to_path_buf(),
            reason: "holds a control character",
        });
    }
    Ok(text.to_owned())
}

impl NatsConfig {
    /// The configuration for a layout's files.
    pub fn for_layout(
        layout: &Layout,
        listen: SocketAddr,
        limits: Limits,
        users: Vec<NatsUser>,
    ) -> Result<NatsConfig, ProvisionError> {
        Ok(NatsConfig {
            listen,
            cert_file: path_text(&layout.server_cert())?,
            key_file: path_text(&layout.server_key())?,
            ca_file: path_text(&layout.ca_cert())?,
            store_dir: path_text(&layout.jetstream_dir())?,
            limits,
            users,
        })
    }
}

/// A quoted config string. Backslash and double quote are escaped; inside quotes `$` is literal.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(out: &mut String, indent: &str, key: &str, items: &[String]) {
    let _ = writeln!(out, "{indent}{key}: [");
    for item in items {
        let _ = writeln!(out, "{indent}  {}", q(item));
    }
    let _ = writeln!(out, "{indent}]");
}

/// One permission dimension. An empty allow list is rendered as a full deny: an omitted
/// dimension would be unrestricted in NATS, so this fails closed whatever the table says.
fn dimension(out: &mut String, indent: &str, key: &str, allow: &[String], deny: &[String]) {
    let _ = writeln!(out, "{indent}{key}: {{");
    let inner = format!("{indent}  ");
    if allow.is_empty() {
        list(out, &inner, "deny", &[">".to_owned()]);
    } else {
        list(out, &inner, "allow", allow);
        if !deny.is_empty() {
            list(out, &inner, "deny", deny);
        }
    }
    let _ = writeln!(out, "{indent}}}");
}

fn kind(identity: &Identity) -> &'static str {
    match identity {
        Identity::Orchestrator => "plans, approvals, capability tokens, commands to agents",
        Identity::AuditWriter => "the only consumer of the AUDIT stream",
        Identity::Gateway => "the only identity that talks to chat platforms",
        Identity::Admin => "provisioning: creates streams and consumers",
        Identity::Monitor => "reads server system events",
        Identity::Egress => "the egress proxy: reports its refusals",
        Identity::Agent(_) => "agent",
    }
}

fn user(out: &mut String, u: &NatsUser) {
    let p: Permissions = acl::permissions(&u.identity);
    let _ = writeln!(
        out,
        "      # {}: {}",
        u.identity.principal(),
        kind(&u.identity)
    );
    out.push_str("      {\n");
    let _ = writeln!(out, "        nkey: {}", q(&u.nkey));
    out.push_str("        permissions: {\n");
    dimension(
        out,
        "          ",
        "publish",
        &p.publish_allow,
        &p.publish_deny,
    );
    dimension(
        out,
        "          ",
        "subscribe",
        &p.subscribe_allow,
        &p.subscribe_deny,
    );
    if let Some(r) = p.allow_responses {
        let _ = writeln!(
            out,
            "          allow_responses: {{ max: {}, expires: {} }}",
            r.max,
            q(&format!("{}s", r.expires_secs))
        );
    }
    out.push_str("        }\n");
    out.push_str("      }\n");
}

/// Renders the nats-server configuration. Pure: same input, same text.
pub fn render_nats_config(c: &NatsConfig) -> String {
    let l = &c.limits;
    let mut out = String::new();
    out.push_str(
        "# nats-server configuration, rendered by the `provision` crate (`bot init`).\n\
         # Do not edit: re-run provisioning to regenerate. Users and permissions come from\n\
         # protocol::acl::permissions. See deploy/nats/README.md.\n\n",
    );
    let _ = writeln!(out, "listen: {}\n", q(&c.listen.to_string()));

    out.push_str(
        "# TLS 1.3 only, handshake before any protocol byte, and a client certificate from our CA\n\
         # on every connection.\n",
    );
    out.push_str("tls {\n");
    let _ = writeln!(out, "  cert_file: {}", q(&c.cert_file));
    let _ = writeln!(out, "  key_file: {}", q(&c.key_file));
    let _ = writeln!(out, "  ca_file: {}", q(&c.ca_file));
    out.push_str("  verify: true\n");
    out.push_str("  min_version: \"1.3\"\n");
    out.push_str("  handshake_first: true\n");
    let _ = writeln!(out, "  timeout: {}", l.tls_timeout_secs);
    out.push_str("}\n\n");

    out.push_str("# Limits: every message is one envelope; slow or silent clients are cut off.\n");
    let _ = writeln!(out, "max_payload: {}", l.max_payload);
    let _ = writeln!(out, "max_connections: {}", l.max_connections);
    let _ = writeln!(out, "max_subscriptions: {}", l.max_subscriptions);
    let _ = writeln!(out, "max_pending: {}", l.max_pending);
    let _ = writeln!(
        out,
        "write_deadline: {}",
        q(&format!("{}s", l.write_deadline_secs))
    );
    let _ = writeln!(
        out,
        "ping_interval: {}",
        q(&format!("{}s", l.ping_interval_secs))
    );
    let _ = writeln!(out, "ping_max: {}\n", l.ping_max);

    out.push_str("jetstream {\n");
    let _ = writeln!(out, "  store_dir: {}", q(&c.store_dir));
    let _ = writeln!(out, "  max_memory_store: {}", l.max_memory_store);
    let _ = writeln!(out, "  max_file_store: {}", l.max_file_store);
    // Every JetStream write is on disk before its acknowledgement: an acknowledged intent or
    // audit event survives power loss.
    out.push_str("  sync_interval: \"always\"\n");
    out.push_str("}\n\n");

    let _ = writeln!(out, "system_account: {}\n", q(SYSTEM_ACCOUNT));
    out.push_str("accounts {\n");
    let (system, app): (Vec<&NatsUser>, Vec<&NatsUser>) =
        c.users.iter().partition(|u| u.identity.in_system_account());

    let _ = writeln!(out, "  {SYSTEM_ACCOUNT} {{");
    out.push_str("    users: [\n");
    for u in system {
        user(&mut out, u);
    }
    out.push_str("    ]\n  }\n");

    let _ = writeln!(out, "  {APP_ACCOUNT} {{");
    out.push_str("    jetstream {\n");
    let _ = writeln!(out, "      max_mem: {}", l.app_max_memory);
    let _ = writeln!(out, "      max_file: {}", l.app_max_file);
    let _ = writeln!(out, "      max_streams: {}", l.app_max_streams);
    let _ = writeln!(out, "      max_consumers: {}", l.app_max_consumers);
    out.push_str("    }\n");
    out.push_str("    users: [\n");
    for u in app {
        user(&mut out, u);
    }
    out.push_str("    ]\n  }\n}\n");
    out
}

/// The documented example (deploy/nats/nats-server.conf.example): every service plus the agents
/// `hue` and `weather`, files under `/var/lib/assistant`, listening on all interfaces. Its nkeys
/// come from fixed, public seed bytes so the example is a valid configuration; never deploy them.
pub fn example() -> Result<NatsConfig, ProvisionError> {
    let layout = Layout::new("/var/lib/assistant");
    let spec = crate::Spec::new(vec![
        protocol::AgentName::new("hue").map_err(crate::generate::spec_name_error)?,
        protocol::AgentName::new("weather").map_err(crate::generate::spec_name_error)?,
    ]);
    let mut users = Vec::new();
    for (i, identity) in (1u8..).zip(spec.identities()?) {
        let nkey =
            crate::keys::NkeySeed::from_raw(&layout.nkey_seed(&identity.principal()), [i; 32])?;
        users.push(NatsUser {
            identity,
            nkey: nkey.public_key().to_owned(),
        });
    }
    NatsConfig::for_layout(
        &layout,
        SocketAddr::from(([0, 0, 0, 0], 4222)),
        spec.limits.clone(),
        users,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_matches_the_checked_in_file() {
        let text = render_nats_config(&example().unwrap());
        expect_test::expect_file!["../../nats/nats-server.conf.example"].assert_eq(&text);
    }

    #[test]
    fn example_nkeys_are_valid_user_public_keys() {
        for u in example().unwrap().users {
            let pair = nkeys::KeyPair::from_public_key(&u.nkey).unwrap();
            assert_eq!(pair.key_pair_type(), nkeys::KeyPairType::User);
        }
    }

    #[test]
    fn quoting_escapes_and_keeps_dollar_literal() {
        assert_eq!(q("$JS.API.>"), r#""$JS.API.>""#);
        assert_eq!(q(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn an_empty_allow_list_renders_as_a_full_deny() {
        let mut out = String::new();
        dimension(&mut out, "", "publish", &[], &[]);
        assert_eq!(out, "publish: {\n  deny: [\n    \">\"\n  ]\n}\n");
    }

    #[test]
    fn unrenderable_paths_are_refused() {
        let layout = Layout::new("/tmp/a\nb");
        let e = NatsConfig::for_layout(
            &layout,
            SocketAddr::from(([127, 0, 0, 1], 4222)),
            Limits::default(),
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "provision_unrenderable_path");
    }

    #[test]
    fn every_user_gets_exactly_the_table_permissions() {
        let config = example().unwrap();
        let text = render_nats_config(&config);
        for u in &config.users {
            let p = acl::permissions(&u.identity);
            for s in p
                .publish_allow
                .iter()
                .chain(&p.publish_deny)
                .chain(&p.subscribe_allow)
                .chain(&p.subscribe_deny)
            {
                assert!(text.contains(&q(s)), "{s} missing");
            }
            assert!(text.contains(&q(&u.nkey)));
        }
        assert!(!text.contains("no_auth_user"));
    }
}
