//! The proxy's configuration file: its format, strict parsing and every rule it must satisfy.
//!
//! The Docker backend (the `sandbox` crate) writes this file; the format is a contract:
//!
//! ```json
//! {"listen":"0.0.0.0:3128","nats_url":"nats://nats:4222","identity_dir":"/run/secrets",
//!  "agents":[{"name":"hue","subnet":"10.200.0.16/28","allow":["192.168.1.20:443"]}],
//!  "connect_timeout_ms":5000,"idle_timeout_ms":300000,"max_connections_per_agent":16}
//! ```
//!
//! Every field is required and unknown fields are refused. [`Config::check`] adds the rules
//! the types cannot express; see its documentation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::AgentName;
use protocol::manifest::{Host, HostPort};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::target::parse_target;

/// Where the binary reads its configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/config/egress.json";
/// Largest configuration file accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;
/// Most agents one proxy serves.
pub const MAX_AGENTS: usize = 256;
/// Most allow entries per agent.
pub const MAX_ALLOW_PER_AGENT: usize = 64;
/// Longest connect timeout accepted, in milliseconds.
pub const MAX_CONNECT_TIMEOUT_MS: u64 = 60_000;
/// Longest idle timeout accepted, in milliseconds (one day).
pub const MAX_IDLE_TIMEOUT_MS: u64 = 86_400_000;
/// Largest per-agent connection limit accepted.
pub const MAX_CONNECTIONS_PER_AGENT: u32 = 1024;

/// The configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen, e.g. `0.0.0.0:3128`.
    pub listen: SocketAddr,
    /// The NATS server (`nats://` or `tls://`; TLS is always required).
    pub nats_url: String,
    /// A `provision::Layout` root holding the `egress` identity (`tls/ca.pem`,
    /// `tls/clients/egress.pem` and `.key`, `nats/egress.nk`).
    pub identity_dir: PathBuf,
    /// The agents that may use the proxy.
    pub agents: Vec<AgentRule>,
    /// How long resolving a name plus connecting may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// A tunnel with no traffic in either direction for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Connections one agent may have open at once (tunnels and requests being read).
    pub max_connections_per_agent: u32,
}

/// One agent's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRule {
    /// The agent.
    pub name: AgentName,
    /// Its network's subnet: a client is this agent if and only if its source address lies here.
    pub subnet: Subnet,
    /// The destinations it may reach, exactly as it must ask for them (each in its canonical
    /// spelling; see [`crate::target::parse_target`]).
    #[serde(deserialize_with = "canonical_destinations")]
    pub allow: Vec<HostPort>,
}

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("the configuration is {len} bytes; the limit is {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// Not JSON of the right shape.
    #[error("the configuration is malformed: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A value breaks a rule.
    #[error("the configuration is invalid: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "egress_config_unreadable",
            ConfigError::TooLarge { .. } => "egress_config_too_large",
            ConfigError::Malformed(_) => "egress_config_malformed",
            ConfigError::Invalid(_) => "egress_config_invalid",
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_json(&bytes)
    }

    /// Parses and checks a configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { len: bytes.len() });
        }
        let config: Config = serde_json::from_slice(bytes).map_err(ConfigError::Malformed)?;
        config.check()?;
        Ok(config)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The rules the types cannot express:
    ///
    /// - `nats_url` starts with `nats://` or `tls://` and parses as a server address;
    ///   `identity_dir` is not empty;
    /// - at most [`MAX_AGENTS`] agents, each named once, with subnets that do not overlap
    ///   (so a client address names at most one agent) and are not `/0`;
    /// - at most [`MAX_ALLOW_PER_AGENT`] allow entries per agent, none twice; no name that
    ///   ends in a number (`0x7f.1` is an address to some resolvers); no IP literal that is
    ///   unspecified, multicast or broadcast, and no IPv6 literal that carries an IPv4 address
    ///   (write the IPv4 address instead: one spelling per destination);
    /// - timeouts and the connection limit are at least 1 and at most the `MAX_*` constants.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(self.nats_url.starts_with("nats://") || self.nats_url.starts_with("tls://")) {
            return invalid("nats_url must start with nats:// or tls://".to_owned());
        }
        if let Err(e) = self.nats_url.parse::<async_nats::ServerAddr>() {
            return invalid(format!("nats_url is not a server address: {e}"));
        }
        if self.identity_dir.as_os_str().is_empty() {
            return invalid("identity_dir is empty".to_owned());
        }
        if self.agents.len() > MAX_AGENTS {
            return invalid(format!("at most {MAX_AGENTS} agents"));
        }
        for (i, agent) in self.agents.iter().enumerate() {
            for earlier in self.agents.iter().take(i) {
                if earlier.name == agent.name {
                    return invalid(format!("agent {} is listed twice", agent.name));
                }
                if earlier.subnet.overlaps(&agent.subnet) {
                    return invalid(format!(
                        "the subnets of {} ({}) and {} ({}) overlap",
                        earlier.name, earlier.subnet, agent.name, agent.subnet
                    ));
                }
            }
            if agent.subnet.prefix() == 0 {
                return invalid(format!(
                    "agent {}: subnet {} holds every address",
                    agent.name, agent.subnet
                ));
            }
            if agent.allow.len() > MAX_ALLOW_PER_AGENT {
                return invalid(format!(
                    "agent {}: at most {MAX_ALLOW_PER_AGENT} allow entries",
                    agent.name
                ));
            }
            for (j, entry) in agent.allow.iter().enumerate() {
                if agent.allow.iter().take(j).any(|e| e == entry) {
                    return invalid(format!("agent {}: {entry} is listed twice", agent.name));
                }
                if let Err(why) = check_allow_entry(entry) {
                    return invalid(format!("agent {}: {entry}: {why}", agent.name));
                }
            }
        }
        let ranges = [
            (
                "connect_timeout_ms",
                self.connect_timeout_ms,
                MAX_CONNECT_TIMEOUT_MS,
            ),
            ("idle_timeout_ms", self.idle_timeout_ms, MAX_IDLE_TIMEOUT_MS),
            (
                "max_connections_per_agent",
                u64::from(self.max_connections_per_agent),
                u64::from(MAX_CONNECTIONS_PER_AGENT),
            ),
        ];
        for (field, value, max) in ranges {
            if value == 0 || value > max {
                return invalid(format!("{field} must be 1 to {max}"));
            }
        }
        Ok(())
    }
}

fn canonical_destinations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HostPort>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| parse_target(t).map_err(|why| serde::de::Error::custom(format!("{t:?}: {why}"))))
        .collect()
}

fn check_allow_entry(entry: &HostPort) -> Result<(), &'static str> {
    match entry.host() {
        // Names are fully checked by HostPort::parse (including the numeric last label).
        Host::Name(_) => {}
        Host::Ip(IpAddr::V4(v4)) => {
            if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
                return Err("not a unicast address");
            }
        }
        Host::Ip(IpAddr::V6(v6)) => {
            if v6.is_unspecified() || v6.is_multicast() {
                return Err("not a unicast address");
            }
            let embeds_v4 = v6.to_ipv4().is_some() && !v6.is_loopback();
            let nat64 = v6.segments().starts_with(&[0x64, 0xff9b, 0, 0, 0, 0]);
            let six_to_four = v6.segments().first() == Some(&0x2002);
            if embeds_v4 || nat64 || six_to_four {
                return Err("an IPv6 form of an IPv4 address; write the IPv4 address");
            }
        }
    }
    Ok(())
}

/// An IPv4 or IPv6 network in CIDR notation (`10.200.0.16/28`, `fd00:1::/64`), parsed
/// strictly: the address in its standard form, a prefix without leading zeros, and no host
/// bits set, so one network has exactly one spelling.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// Parses `address/prefix`.
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not address/prefix"))?;
        let network: IpAddr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not an IP address: {e}"))?;
        let max = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let canonical = prefix.bytes().all(|b| b.is_ascii_digit())
            && !prefix.is_empty()
            && prefix.len() <= 3
            && (prefix == "0" || !prefix.starts_with('0'));
        let prefix: u8 = match prefix.parse() {
            Ok(p) if canonical && p <= max => p,
            _ => return Err(format!("prefix {prefix:?} must be 0 to {max}")),
        };
        let subnet = Subnet { network, prefix };
        if subnet.first() != network {
            return Err(format!("{s} has host bits set"));
        }
        Ok(subnet)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The network's first address (the given address with its host bits cleared).
    fn first(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(n) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(n) & mask))
            }
            IpAddr::V6(n) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(n) & mask))
            }
        }
    }

    /// Whether `ip` lies in this network. An IPv4-mapped IPv6 address is taken as the IPv4
    /// address it carries; otherwise the families must match.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        // Two CIDR blocks overlap exactly when the larger one contains the smaller one's start.
        if self.prefix <= other.prefix {
            self.contains(other.network)
        } else {
            other.contains(self.network)
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subnet({self})")
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Subnet::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"listen":"0.0.0.0:3128","nats_url":"nats://nats:4222","identity_dir":"/run/secrets","agents":[{"name":"hue","subnet":"10.200.0.16/28","allow":["192.168.1.20:443"]}],"connect_timeout_ms":5000,"idle_timeout_ms":300000,"max_connections_per_agent":16}"#;

    #[test]
    fn the_documented_example_parses_and_round_trips() {
        let config = Config::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(config.listen, "0.0.0.0:3128".parse().unwrap());
        assert_eq!(config.agents.len(), 1);
        assert_eq!(config.agents[0].subnet.to_string(), "10.200.0.16/28");
        assert_eq!(config.connect_timeout(), Duration::from_secs(5));
        assert_eq!(serde_json::to_string(&config).unwrap(), GOOD);
    }

    fn check(edits: &[(&str, &str)]) -> String {
        let mut text = GOOD.to_owned();
        for (from, to) in edits {
            assert!(text.contains(from), "{from} not in the example");
            text = text.replacen(from, to, 1);
        }
        match Config::from_json(text.as_bytes()) {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("{}: {e}", e.code()),
        }
    }

    #[test]
    fn bad_configurations_are_refused() {
        let two = r#"{"name":"hue","subnet":"10.200.0.16/28","allow":["192.168.1.20:443"]},{"name":"mail","subnet":"10.200.0.24/29","allow":[]}"#;
        let one = r#"{"name":"hue","subnet":"10.200.0.16/28","allow":["192.168.1.20:443"]}"#;
        let one_twice = format!("{one},{one}");
        let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("unchanged", vec![]),
            (
                "unknown field",
                vec![(r#""listen""#, r#""debug":true,"listen""#)],
            ),
            (
                "missing field",
                vec![(r#","max_connections_per_agent":16"#, "")],
            ),
            (
                "unknown agent field",
                vec![(r#""name":"hue""#, r#""name":"hue","admin":true"#)],
            ),
            (
                "reserved agent name",
                vec![(r#""name":"hue""#, r#""name":"egress""#)],
            ),
            ("http url", vec![("nats://nats:4222", "http://nats:4222")]),
            ("empty identity dir", vec![("/run/secrets", "")]),
            (
                "subnet host bits",
                vec![("10.200.0.16/28", "10.200.0.17/28")],
            ),
            (
                "subnet prefix zero-padded",
                vec![("10.200.0.16/28", "10.200.0.16/028")],
            ),
            (
                "subnet prefix too long",
                vec![("10.200.0.16/28", "10.200.0.16/33")],
            ),
            (
                "subnet every address",
                vec![("10.200.0.16/28", "0.0.0.0/0")],
            ),
            ("subnet octal", vec![("10.200.0.16/28", "010.200.0.16/28")]),
            ("ipv6 subnet", vec![("10.200.0.16/28", "fd00:1::/64")]),
            ("overlapping subnets", vec![(one, two)]),
            ("duplicate agent", vec![(one, &one_twice)]),
            (
                "allow bracketed name",
                vec![("192.168.1.20:443", "[example.com]:443")],
            ),
            (
                "allow uppercase",
                vec![("192.168.1.20:443", "Example.com:443")],
            ),
            (
                "allow numeric name",
                vec![("192.168.1.20:443", "0x7f.1:443")],
            ),
            (
                "allow name ending in digits",
                vec![("192.168.1.20:443", "host.123:443")],
            ),
            (
                "allow mapped ipv6",
                vec![("192.168.1.20:443", "[::ffff:192.168.1.20]:443")],
            ),
            (
                "allow nat64",
                vec![("192.168.1.20:443", "[64:ff9b::c0a8:114]:443")],
            ),
            (
                "allow multicast",
                vec![("192.168.1.20:443", "224.0.0.1:443")],
            ),
            (
                "allow unspecified",
                vec![("192.168.1.20:443", "0.0.0.0:443")],
            ),
            (
                "allow ipv6 literal",
                vec![("192.168.1.20:443", "[2001:db8::1]:443")],
            ),
            (
                "allow loopback literal",
                vec![("192.168.1.20:443", "127.0.0.1:8080")],
            ),
            (
                "allow zero-padded port",
                vec![("192.168.1.20:443", "192.168.1.20:0443")],
            ),
            (
                "allow long ipv6",
                vec![("192.168.1.20:443", "[2001:db8:0::1]:443")],
            ),
            (
                "allow twice",
                vec![(
                    r#""192.168.1.20:443""#,
                    r#""192.168.1.20:443","192.168.1.20:443""#,
                )],
            ),
            (
                "zero connect timeout",
                vec![(r#""connect_timeout_ms":5000"#, r#""connect_timeout_ms":0"#)],
            ),
            (
                "huge idle timeout",
                vec![(
                    r#""idle_timeout_ms":300000"#,
                    r#""idle_timeout_ms":86400001"#,
                )],
            ),
            (
                "zero limit",
                vec![(
                    r#""max_connections_per_agent":16"#,
                    r#""max_connections_per_agent":0"#,
                )],
            ),
            (
                "negative limit",
                vec![(
                    r#""max_connections_per_agent":16"#,
                    r#""max_connections_per_agent":-1"#,
                )],
            ),
            ("bad listen", vec![("0.0.0.0:3128", "egress:3128")]),
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|(name, edits)| format!("{name}: {}", check(edits)))
            .collect();
        expect_test::expect![[r#"
            unchanged: ok
            unknown field: egress_config_malformed: the configuration is malformed: unknown field `debug`, expected one of `listen`, `nats_url`, `identity_dir`, `agents`, `connect_timeout_ms`, `idle_timeout_ms`, `max_connections_per_agent` at line 1 column 8
            missing field: egress_config_malformed: the configuration is malformed: missing field `max_connections_per_agent` at line 1 column 217
            unknown agent field: egress_config_malformed: the configuration is malformed: unknown field `admin`, expected one of `name`, `subnet`, `allow` at line 1 column 116
            reserved agent name: egress_config_malformed: the configuration is malformed: invalid agent name (6 bytes): is reserved for a platform service at line 1 column 111
            http url: egress_config_invalid: the configuration is invalid: nats_url must start with nats:// or tls://
            empty identity dir: egress_config_invalid: the configuration is invalid: identity_dir is empty
            subnet host bits: egress_config_malformed: the configuration is malformed: 10.200.0.17/28 has host bits set at line 1 column 134
            subnet prefix zero-padded: egress_config_malformed: the configuration is malformed: prefix "028" must be 0 to 32 at line 1 column 135
            subnet prefix too long: egress_config_malformed: the configuration is malformed: prefix "33" must be 0 to 32 at line 1 column 134
            subnet every address: egress_config_invalid: the configuration is invalid: agent hue: subnet 0.0.0.0/0 holds every address
            subnet octal: egress_config_malformed: the configuration is malformed: "010.200.0.16" is not an IP address: invalid IP address syntax at line 1 column 135
            ipv6 subnet: ok
            overlapping subnets: egress_config_invalid: the configuration is invalid: the subnets of hue (10.200.0.16/28) and mail (10.200.0.24/29) overlap
            duplicate agent: egress_config_invalid: the configuration is invalid: agent hue is listed twice
            allow bracketed name: egress_config_malformed: the configuration is malformed: "[example.com]:443": only IPv6 literals may be bracketed at line 1 column 165
            allow uppercase: egress_config_malformed: the configuration is malformed: "Example.com:443": host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-' at line 1 column 163
            allow numeric name: egress_config_malformed: the configuration is malformed: "0x7f.1:443": the last label of a host name must start with a letter at line 1 column 158
            allow name ending in digits: egress_config_malformed: the configuration is malformed: "host.123:443": the last label of a host name must start with a letter at line 1 column 160
            allow mapped ipv6: egress_config_invalid: the configuration is invalid: agent hue: [::ffff:192.168.1.20]:443: an IPv6 form of an IPv4 address; write the IPv4 address
            allow nat64: egress_config_invalid: the configuration is invalid: agent hue: [64:ff9b::c0a8:114]:443: an IPv6 form of an IPv4 address; write the IPv4 address
            allow multicast: egress_config_invalid: the configuration is invalid: agent hue: 224.0.0.1:443: not a unicast address
            allow unspecified: egress_config_invalid: the configuration is invalid: agent hue: 0.0.0.0:443: not a unicast address
            allow ipv6 literal: ok
            allow loopback literal: ok
            allow zero-padded port: egress_config_malformed: the configuration is malformed: "192.168.1.20:0443": port must be 1 to 65535, without leading zeros at line 1 column 165
            allow long ipv6: egress_config_malformed: the configuration is malformed: "[2001:db8:0::1]:443": write this address as [2001:db8::1]:443 at line 1 column 167
            allow twice: egress_config_invalid: the configuration is invalid: agent hue: 192.168.1.20:443 is listed twice
            zero connect timeout: egress_config_invalid: the configuration is invalid: connect_timeout_ms must be 1 to 60000
            huge idle timeout: egress_config_invalid: the configuration is invalid: idle_timeout_ms must be 1 to 86400000
            zero limit: egress_config_invalid: the configuration is invalid: max_connections_per_agent must be 1 to 1024
            negative limit: egress_config_malformed: the configuration is malformed: invalid value: integer `-1`, expected u32 at line 1 column 247
            bad listen: egress_config_malformed: the configuration is malformed: invalid socket address syntax at line 1 column 23"#]].assert_eq(&out.join("\n"));
    }

    #[test]
    fn subnets_contain_and_overlap() {
        let s = |t: &str| Subnet::parse(t).unwrap();
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert!(s("10.200.0.16/28").contains(ip("10.200.0.16")));
        assert!(s("10.200.0.16/28").contains(ip("10.200.0.31")));
        assert!(!s("10.200.0.16/28").contains(ip("10.200.0.32")));
        assert!(!s("10.200.0.16/28").contains(ip("10.200.0.15")));
        assert!(s("10.200.0.16/28").contains(ip("::ffff:10.200.0.20")));
        assert!(!s("10.200.0.16/28").contains(ip("fd00::10")));
        assert!(s("fd00:1::/64").contains(ip("fd00:1::abcd")));
        assert!(!s("fd00:1::/64").contains(ip("fd00:2::1")));
        assert!(!s("fd00:1::/64").contains(ip("10.0.0.1")));
        assert!(s("127.0.0.0/8").contains(ip("127.1.2.3")));
        assert!(s("10.0.0.0/8").overlaps(&s("10.200.0.16/28")));
        assert!(s("10.200.0.16/28").overlaps(&s("10.0.0.0/8")));
        assert!(!s("10.200.0.16/28").overlaps(&s("10.200.0.32/28")));
        assert!(!s("10.200.0.16/28").overlaps(&s("fd00::/8")));
        assert!(s("1.2.3.4/32").contains(ip("1.2.3.4")));
        assert!(!s("1.2.3.4/32").contains(ip("1.2.3.5")));
    }
}
