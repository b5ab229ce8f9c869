//! Agent manifests: what an agent is, which actions it offers (with their parameter schemas and
//! whether they change the world), and what network egress it needs.
//!
//! Manifests are data checked into the repository (`agents/catalog`), compiled into both the
//! agent and the orchestrator, and never taken from a running agent: an agent cannot promote
//! one of its actions to "read-only" to skip approval.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::message::Effect;
use crate::name::{ActionName, AgentName};
use crate::schema::{Schema, SchemaDefinitionError};

/// Most actions one agent may offer.
pub const MAX_ACTIONS: usize = 32;

/// A manifest as stored (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The agent.
    pub name: AgentName,
    /// One line: what the agent is for.
    pub description: String,
    /// The actions.
    pub actions: Vec<ActionSpec>,
    /// Network egress the agent needs.
    pub egress: Egress,
}

/// One action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// Its name.
    pub name: ActionName,
    /// One line for the user and the planner.
    pub description: String,
    /// Read or change.
    pub effect: Effect,
    /// The parameter schema (the subset in [`crate::schema`]).
    pub params: serde_json::Value,
    /// How long the handler may take, in milliseconds.
    pub timeout_ms: u32,
}

/// Network egress an agent needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Egress {
    /// None at all: the agent talks only to NATS.
    None,
    /// Exactly these destinations.
    Hosts(Vec<HostPort>),
    /// Destinations the user configures at deployment (for example the Hue bridge's LAN
    /// address); the text says what they are.
    Configured(String),
}

/// A manifest whose every schema parsed: what agents and the orchestrator work with.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedManifest {
    /// The manifest as stored.
    pub manifest: Manifest,
    /// Parsed parameter schemas, in action order.
    pub schemas: Vec<Schema>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON for a manifest.
    #[error("manifest is malformed: {0}")]
    Malformed(String),
    /// An action's schema is outside the supported subset.
    #[error("action {action}: {source}")]
    Schema {
        /// The action.
        action: String,
        /// Why.
        #[source]
        source: SchemaDefinitionError,
    },
    /// Two actions share a name, there are none, or too many.
    #[error("manifest actions are invalid: {0}")]
    Actions(String),
    /// A parameter schema's root is not an object.
    #[error("action {0}: parameters must be an object schema")]
    NotAnObject(String),
}

impl ManifestError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ManifestError::Malformed(_) => "manifest_malformed",
            ManifestError::Schema { .. } => "manifest_schema_unsupported",
            ManifestError::Actions(_) => "manifest_actions_invalid",
            ManifestError::NotAnObject(_) => "manifest_params_not_object",
        }
    }
}

impl CheckedManifest {
    /// Parses a manifest from JSON and checks every schema.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        Self::check(manifest)
    }

    /// Checks a manifest.
    pub fn check(manifest: Manifest) -> Result<Self, ManifestError> {
        if manifest.actions.is_empty() || manifest.actions.len() > MAX_ACTIONS {
            return Err(ManifestError::Actions(format!(
                "an agent offers 1 to {MAX_ACTIONS} actions"
            )));
        }
        let mut schemas = Vec::with_capacity(manifest.actions.len());
        for (i, a) in manifest.actions.iter().enumerate() {
            if manifest
                .actions
                .iter()
                .skip(i + 1)
                .any(|b| b.name == a.name)
            {
                return Err(ManifestError::Actions(format!(
                    "{} is listed twice",
                    a.name
                )));
            }
            let schema = Schema::parse(&a.params).map_err(|source| ManifestError::Schema {
                action: a.name.to_string(),
                source,
            })?;
            if !matches!(schema, Schema::Object { .. }) {
                return Err(ManifestError::NotAnObject(a.name.to_string()));
            }
            schemas.push(schema);
        }
        Ok(CheckedManifest { manifest, schemas })
    }

    /// The agent's name.
    pub fn name(&self) -> &AgentName {
        &self.manifest.name
    }

    /// An action and its parsed schema.
    pub fn action(&self, name: &ActionName) -> Option<(&ActionSpec, &Schema)> {
        self.manifest
            .actions
            .iter()
            .zip(&self.schemas)
            .find(|(a, _)| &a.name == name)
    }
}

/// A network destination: a DNS name or an IP literal, and a port. The text form is
/// `host:port`, with IPv6 literals in brackets (`[2001:db8::1]:443`). Names are lowercase
/// letters, digits, `-` and `.` in labels of 1 to 63 bytes; anything else (userinfo, a bracketed
/// name, a trailing dot, whitespace) is refused, so one destination has exactly one spelling.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: Host,
    port: u16,
}

/// The host part of a [`HostPort`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, resolved by whoever connects.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl HostPort {
    /// Parses `host:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > 260 {
            return Err("destination is too long".to_owned());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| "unclosed '['".to_owned())?;
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_ipv6| "only IPv6 literals may be bracketed".to_owned())?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| "missing :port".to_owned())?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| "missing :port".to_owned())?;
            if host.contains(':') {
                return Err("IPv6 literals must be bracketed".to_owned());
            }
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_not_ip) => Host::Name(check_dns_name(host)?),
            };
            (host, port)
        };
        if port.is_empty()
            || port.len() > 5
            || port.starts_with('0')
            || !port.bytes().all(|b| b.is_ascii_digit())
        {
            return Err("port must be 1 to 65535, without leading zeros".to_owned());
        }
        let port: u16 = port
            .parse()
            .map_err(|_range| "port must be 1 to 65535".to_owned())?;
        if port == 0 {
            return Err("port must be 1 to 65535".to_owned());
        }
        let parsed = HostPort { host, port };
        // One destination, one spelling: IP literals must be in their canonical text form.
        if matches!(parsed.host, Host::Ip(_)) && parsed.to_string() != s {
            return Err(format!("write this address as {parsed}"));
        }
        Ok(parsed)
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn check_dns_name(host: &str) -> Result<String, String> {
    if host.is_empty() || host.len() > 253 {
        return Err("host name must be 1 to 253 bytes".to_owned());
    }
    // A name made only of digits and dots would be an IP address in some parsers.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("not a valid IP address".to_owned());
    }
    // A name whose last label starts with a digit could be read as a number (`0x7f.1`).
    if host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().next().is_some_and(|b| b.is_ascii_digit()))
    {
        return Err("the last label of a host name must start with a letter".to_owned());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err("host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-'".to_owned());
        }
    }
    Ok(host.to_owned())
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(n) => write!(f, "{n}:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

impl fmt::Debug for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPort({self})")
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPort::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_have_one_spelling() {
        let cases = [
            "api.open-meteo.com:443",
            "192.168.1.20:443",
            "[2001:db8::1]:443",
            "[::1]:80",
            "localhost:8080",
            "[example.com]:443",
            "example.com",
            "example.com:0",
            "example.com:65536",
            "example.com:+443",
            "Example.com:443",
            "example.com.:443",
            "user@example.com:443",
            "exa mple.com:443",
            "::1:443",
            "-bad.com:443",
            "1.2.3:443",
            "999.1.1.1:443",
            "example.com:0443",
            "[2001:DB8::1]:443",
            "[2001:db8:0::1]:443",
            "0x7f.1:80",
            "host.1a:80",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| match HostPort::parse(c) {
                Ok(h) => format!("{c} -> ok {h}"),
                Err(e) => format!("{c} -> {e}"),
            })
            .collect();
        expect_test::expect![[r#"
            api.open-meteo.com:443 -> ok api.open-meteo.com:443
            192.168.1.20:443 -> ok 192.168.1.20:443
            [2001:db8::1]:443 -> ok [2001:db8::1]:443
            [::1]:80 -> ok [::1]:80
            localhost:8080 -> ok localhost:8080
            [example.com]:443 -> only IPv6 literals may be bracketed
            example.com -> missing :port
            example.com:0 -> port must be 1 to 65535, without leading zeros
            example.com:65536 -> port must be 1 to 65535
            example.com:+443 -> port must be 1 to 65535, without leading zeros
            Example.com:443 -> host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-'
            example.com.:443 -> host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-'
            user@example.com:443 -> host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-'
            exa mple.com:443 -> host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-'
            ::1:443 -> IPv6 literals must be bracketed
            -bad.com:443 -> host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-'
            1.2.3:443 -> not a valid IP address
            999.1.1.1:443 -> not a valid IP address
            example.com:0443 -> port must be 1 to 65535, without leading zeros
            [2001:DB8::1]:443 -> write this address as [2001:db8::1]:443
            [2001:db8:0::1]:443 -> write this address as [2001:db8::1]:443
            0x7f.1:80 -> the last label of a host name must start with a letter
            host.1a:80 -> the last label of a host name must start with a letter"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn manifests_are_checked() {
        let ok = r#"{"name":"hue","description":"lights","egress":{"configured":"the bridge"},
            "actions":[{"name":"lights.list","description":"list","effect":"read","timeout_ms":5000,
              "params":{"type":"object","properties":{},"additionalProperties":false}}]}"#;
        let m = CheckedManifest::from_json(ok).unwrap();
        assert!(m.action(&ActionName::new("lights.list").unwrap()).is_some());
        assert!(m.action(&ActionName::new("door.unlock").unwrap()).is_none());
        let dup = ok.replace(
            r#""actions":[{"#,
            r#""actions":[{"name":"lights.list","description":"x","effect":"change","timeout_ms":1,"params":{"type":"object","additionalProperties":false}},{"#,
        );
        assert_eq!(
            CheckedManifest::from_json(&dup).unwrap_err().code(),
            "manifest_actions_invalid"
        );
        let not_object = ok.replace(
            r#"{"type":"object","properties":{},"additionalProperties":false}"#,
            r#"{"type":"boolean"}"#,
        );
        assert_eq!(
            CheckedManifest::from_json(&not_object).unwrap_err().code(),
            "manifest_params_not_object"
        );
        let extra = ok.replace(r#""name":"hue","#, r#""name":"hue","admin":true,"#);
        assert_eq!(
            CheckedManifest::from_json(&extra).unwrap_err().code(),
            "manifest_malformed"
        );
    }
}
