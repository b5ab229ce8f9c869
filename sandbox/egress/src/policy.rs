//! The decision: which agent a client is, and whether it may reach what it asked for. Pure
//! functions over plain data; the server ([`crate::server`]) does the I/O around them.
//!
//! 1. [`Policy::identify`]: the client's source address must lie in exactly one agent's
//!    subnet, or it is refused (`egress_unknown_client`).
//! 2. [`admit`]: the parsed target must equal one of that agent's allow entries
//!    (`egress_not_allowlisted`). Nothing is resolved before this, so an agent cannot use the
//!    proxy's resolver to look up (or leak data through) names it was not given.
//! 3. An allowed IP literal is connected to as is, even if it is private: the user put exactly
//!    that address there (the Hue bridge lives on the LAN). An allowed name is resolved by the
//!    proxy and [`check_resolved`] requires EVERY address to be globally routable unicast
//!    (`egress_private_address` otherwise, `egress_resolve_failed` for none); the proxy then
//!    connects to those checked addresses and never resolves again, so DNS rebinding between
//!    check and use is impossible.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use protocol::AgentName;
use protocol::manifest::{Host, HostPort};

use crate::address::classify;
use crate::config::{AgentRule, Config, ConfigError};
use crate::target::parse_target;

/// Why the proxy refused; each has a stable code sent to the client and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// The destination is not on the agent's allowlist.
    NotAllowlisted,
    /// An allowlisted name resolved to an address that is not globally routable.
    PrivateAddress,
    /// The client's address lies in no agent's subnet.
    UnknownClient,
    /// The request is not a well-formed `CONNECT host:port HTTP/1.1`.
    BadRequest,
    /// An allowlisted name did not resolve.
    ResolveFailed,
    /// No connection to the destination could be made in time.
    ConnectFailed,
    /// The agent has as many connections open as it may.
    TooManyConnections,
}

impl RefusalCode {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::NotAllowlisted => "egress_not_allowlisted",
            RefusalCode::PrivateAddress => "egress_private_address",
            RefusalCode::UnknownClient => "egress_unknown_client",
            RefusalCode::BadRequest => "egress_bad_request",
            RefusalCode::ResolveFailed => "egress_resolve_failed",
            RefusalCode::ConnectFailed => "egress_connect_failed",
            RefusalCode::TooManyConnections => "egress_too_many_connections",
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal with details for the proxy's own log (never sent to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The code.
    pub code: RefusalCode,
    /// What exactly was wrong.
    pub detail: String,
}

impl Denial {
    /// A refusal.
    pub fn new(code: RefusalCode, detail: impl Into<String>) -> Denial {
        Denial {
            code,
            detail: detail.into(),
        }
    }
}

/// The rules in force: built from a checked [`Config`], swapped whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    agents: Vec<AgentRule>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_connections_per_agent: usize,
}

impl Policy {
    /// The policy a configuration describes (checked again here).
    pub fn from_config(config: &Config) -> Result<Policy, ConfigError> {
        config.check()?;
        Ok(Policy {
            agents: config.agents.clone(),
            connect_timeout: config.connect_timeout(),
            idle_timeout: config.idle_timeout(),
            max_connections_per_agent: usize::try_from(config.max_connections_per_agent)
                .unwrap_or(usize::MAX),
        })
    }

    /// The agent whose subnet holds `source`, if exactly one does.
    pub fn identify(&self, source: IpAddr) -> Option<&AgentRule> {
        let mut matching = self.agents.iter().filter(|a| a.subnet.contains(source));
        match (matching.next(), matching.next()) {
            (Some(agent), None) => Some(agent),
            _ => None,
        }
    }

    /// An agent's rules by name.
    pub fn agent(&self, name: &AgentName) -> Option<&AgentRule> {
        self.agents.iter().find(|a| &a.name == name)
    }

    /// How long resolving plus connecting may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long a tunnel may stay silent.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Connections one agent may hold.
    pub fn max_connections_per_agent(&self) -> usize {
        self.max_connections_per_agent
    }
}

/// Where an admitted request goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Connect to exactly this address (an allowed IP literal).
    Connect(SocketAddr),
    /// Resolve this allowed name, then [`check_resolved`].
    Resolve {
        /// The name.
        name: String,
        /// The port.
        port: u16,
    },
}

/// Admits `target` for `agent` if it equals one of its allow entries.
pub fn admit(agent: &AgentRule, target: &HostPort) -> Result<Route, Denial> {
    if !agent.allow.contains(target) {
        return Err(Denial::new(
            RefusalCode::NotAllowlisted,
            format!("{target} is not on {}'s allowlist", agent.name),
        ));
    }
    Ok(match target.host() {
        Host::Ip(ip) => Route::Connect(SocketAddr::new(*ip, target.port())),
        Host::Name(name) => Route::Resolve {
            name: name.clone(),
            port: target.port(),
        },
    })
}

/// Checks what an allowed name resolved to: at least one address, and every one of them
/// globally routable unicast. Returns the addresses to connect to, in order, without
/// duplicates.
pub fn check_resolved(
    name: &str,
    port: u16,
    resolved: &[IpAddr],
) -> Result<Vec<SocketAddr>, Denial> {
    if resolved.is_empty() {
        return Err(Denial::new(
            RefusalCode::ResolveFailed,
            format!("{name} resolved to no address"),
        ));
    }
    let mut out: Vec<SocketAddr> = Vec::with_capacity(resolved.len());
    for ip in resolved {
        let class = classify(*ip);
        if !class.is_global() {
            return Err(Denial::new(
                RefusalCode::PrivateAddress,
                format!("{name} resolved to {ip} ({class})"),
            ));
        }
        let addr = SocketAddr::new(*ip, port);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// The whole decision for one request-target, given what its name would resolve to (ignored
/// for IP literals): parse, admit, check. The server runs the same steps with a real resolver
/// between [`admit`] and [`check_resolved`].
pub fn decide(
    agent: &AgentRule,
    target: &str,
    resolved: &[IpAddr],
) -> Result<Vec<SocketAddr>, Denial> {
    let target = parse_target(target).map_err(|why| Denial::new(RefusalCode::BadRequest, why))?;
    match admit(agent, &target)? {
        Route::Connect(addr) => Ok(vec![addr]),
        Route::Resolve { name, port } => check_resolved(&name, port, resolved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let config = Config::from_json(
            br#"{"listen":"0.0.0.0:3128","nats_url":"nats://nats:4222","identity_dir":"/run/secrets",
            "agents":[
              {"name":"hue","subnet":"10.200.0.16/28","allow":["192.168.1.20:443","api.example.com:443","[2001:db8::7]:8443","localhost:8080","127.0.0.1:9000"]},
              {"name":"weather","subnet":"10.200.0.32/28","allow":["api.open-meteo.com:443"]},
              {"name":"mail","subnet":"fd00:e::/64","allow":["imap.example.net:993"]}],
            "connect_timeout_ms":5000,"idle_timeout_ms":300000,"max_connections_per_agent":16}"#,
        )
        .unwrap();
        Policy::from_config(&config).unwrap()
    }

    #[test]
    fn clients_are_identified_by_subnet() {
        let p = policy();
        let cases = [
            "10.200.0.16",
            "10.200.0.20",
            "10.200.0.31",
            "10.200.0.32",
            "10.200.0.47",
            "10.200.0.48",
            "10.200.0.15",
            "::ffff:10.200.0.20",
            "fd00:e::5",
            "fd00:f::5",
            "127.0.0.1",
            "192.168.1.20",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| {
                let who = p.identify(c.parse().unwrap()).map_or_else(
                    || RefusalCode::UnknownClient.to_string(),
                    |a| a.name.to_string(),
                );
                format!("{c} -> {who}")
            })
            .collect();
        expect_test::expect![[r#"
            10.200.0.16 -> hue
            10.200.0.20 -> hue
            10.200.0.31 -> hue
            10.200.0.32 -> weather
            10.200.0.47 -> weather
            10.200.0.48 -> egress_unknown_client
            10.200.0.15 -> egress_unknown_client
            ::ffff:10.200.0.20 -> hue
            fd00:e::5 -> mail
            fd00:f::5 -> egress_unknown_client
            127.0.0.1 -> egress_unknown_client
            192.168.1.20 -> egress_unknown_client"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn targets_are_decided() {
        let p = policy();
        let hue = p.agent(&AgentName::new("hue").unwrap()).unwrap();
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|s| s.parse().unwrap()).collect() };
        let public = ips(&["93.184.215.14"]);
        let cases: Vec<(&str, Vec<IpAddr>)> = vec![
            // Allowed.
            ("192.168.1.20:443", vec![]),
            ("api.example.com:443", public.clone()),
            (
                "api.example.com:443",
                ips(&[
                    "93.184.215.14",
                    "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
                    "93.184.215.14",
                ]),
            ),
            ("[2001:db8::7]:8443", vec![]),
            ("127.0.0.1:9000", vec![]),
            // Not on the list (other port, other host, other agent's host).
            ("192.168.1.20:80", vec![]),
            ("192.168.1.21:443", vec![]),
            ("api.open-meteo.com:443", public.clone()),
            ("example.com:443", public.clone()),
            ("127.0.0.1:443", vec![]),
            // Other spellings of an allowed destination are not the destination.
            ("[example.com]:443", public.clone()),
            ("[api.example.com]:443", public.clone()),
            ("API.example.com:443", public.clone()),
            ("api.example.com.:443", public.clone()),
            ("user@api.example.com:443", public.clone()),
            ("user:pw@api.example.com:443", public.clone()),
            ("api.example.com:0443", public.clone()),
            ("api.example.com:+443", public.clone()),
            ("api.example.com", public.clone()),
            (" api.example.com:443", public.clone()),
            ("api.example.com:443/path", public.clone()),
            ("http://api.example.com:443", public.clone()),
            ("api.example.com%2e:443", public.clone()),
            ("[::ffff:192.168.1.20]:443", vec![]),
            ("[::ffff:c0a8:114]:443", vec![]),
            ("[2001:DB8::7]:8443", vec![]),
            ("[2001:db8:0::7]:8443", vec![]),
            ("[2001:0db8::7]:8443", vec![]),
            ("192.168.001.020:443", vec![]),
            ("2001:db8::7:8443", vec![]),
            // Numeric forms of loopback.
            ("2130706433:443", vec![]),
            ("0x7f000001:443", vec![]),
            ("0x7f.1:443", vec![]),
            ("0x7f.0x0.0x0.0x1:443", vec![]),
            ("0177.0.0.1:443", vec![]),
            ("127.1:443", vec![]),
            ("127.0.1:443", vec![]),
            ("[::ffff:127.0.0.1]:443", vec![]),
            ("[::1]:443", vec![]),
            ("[64:ff9b::7f00:1]:443", vec![]),
            ("[::]:443", vec![]),
            ("0.0.0.0:443", vec![]),
            ("[fe80::1%25eth0]:443", vec![]),
            ("[fe80::1%eth0]:443", vec![]),
            ("localhost:443", ips(&["127.0.0.1"])),
            // An allowed name that resolves badly: rebinding, mixed answers, nothing.
            ("localhost:8080", ips(&["127.0.0.1"])),
            ("api.example.com:443", ips(&["127.0.0.1"])),
            ("api.example.com:443", ips(&["10.0.0.5"])),
            ("api.example.com:443", ips(&["169.254.169.254"])),
            (
                "api.example.com:443",
                ips(&["93.184.215.14", "192.168.1.1"]),
            ),
            (
                "api.example.com:443",
                ips(&["192.168.1.1", "93.184.215.14"]),
            ),
            ("api.example.com:443", ips(&["::ffff:127.0.0.1"])),
            ("api.example.com:443", ips(&["64:ff9b::a9fe:a9fe"])),
            ("api.example.com:443", ips(&["64:ff9b::808:808"])),
            ("api.example.com:443", ips(&["fd00::1"])),
            ("api.example.com:443", ips(&["fe80::1"])),
            ("api.example.com:443", ips(&["100.64.0.1"])),
            ("api.example.com:443", ips(&["0.0.0.0"])),
            ("api.example.com:443", ips(&["255.255.255.255"])),
            ("api.example.com:443", ips(&["224.0.0.1"])),
            ("api.example.com:443", ips(&["198.18.0.1"])),
            ("api.example.com:443", ips(&["192.0.2.1"])),
            ("api.example.com:443", vec![]),
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|(target, resolved)| {
                let outcome = match decide(hue, target, resolved) {
                    Ok(addrs) => format!(
                        "connect {}",
                        addrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    Err(d) => format!("{} ({})", d.code, d.detail),
                };
                let resolved = if resolved.is_empty() {
                    String::new()
                } else {
                    format!(
                        " [{}]",
                        resolved
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                };
                format!("{target}{resolved} -> {outcome}")
            })
            .collect();
        expect_test::expect![[r#"
            192.168.1.20:443 -> connect 192.168.1.20:443
            api.example.com:443 [93.184.215.14] -> connect 93.184.215.14:443
            api.example.com:443 [93.184.215.14 2606:2800:21f:cb07:6820:80da:af6b:8b2c 93.184.215.14] -> connect 93.184.215.14:443 [2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443
            [2001:db8::7]:8443 -> connect [2001:db8::7]:8443
            127.0.0.1:9000 -> connect 127.0.0.1:9000
            192.168.1.20:80 -> egress_not_allowlisted (192.168.1.20:80 is not on hue's allowlist)
            192.168.1.21:443 -> egress_not_allowlisted (192.168.1.21:443 is not on hue's allowlist)
            api.open-meteo.com:443 [93.184.215.14] -> egress_not_allowlisted (api.open-meteo.com:443 is not on hue's allowlist)
            example.com:443 [93.184.215.14] -> egress_not_allowlisted (example.com:443 is not on hue's allowlist)
            127.0.0.1:443 -> egress_not_allowlisted (127.0.0.1:443 is not on hue's allowlist)
            [example.com]:443 [93.184.215.14] -> egress_bad_request (only IPv6 literals may be bracketed)
            [api.example.com]:443 [93.184.215.14] -> egress_bad_request (only IPv6 literals may be bracketed)
            API.example.com:443 [93.184.215.14] -> egress_bad_request (host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-')
            api.example.com.:443 [93.184.215.14] -> egress_bad_request (host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-')
            user@api.example.com:443 [93.184.215.14] -> egress_bad_request (host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-')
            user:pw@api.example.com:443 [93.184.215.14] -> egress_bad_request (IPv6 literals must be bracketed)
            api.example.com:0443 [93.184.215.14] -> egress_bad_request (port must be 1 to 65535, without leading zeros)
            api.example.com:+443 [93.184.215.14] -> egress_bad_request (port must be 1 to 65535, without leading zeros)
            api.example.com [93.184.215.14] -> egress_bad_request (missing :port)
             api.example.com:443 [93.184.215.14] -> egress_bad_request (host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-')
            api.example.com:443/path [93.184.215.14] -> egress_bad_request (port must be 1 to 65535, without leading zeros)
            http://api.example.com:443 [93.184.215.14] -> egress_bad_request (IPv6 literals must be bracketed)
            api.example.com%2e:443 [93.184.215.14] -> egress_bad_request (host name labels are 1 to 63 bytes of a-z, 0-9 and inner '-')
            [::ffff:192.168.1.20]:443 -> egress_not_allowlisted ([::ffff:192.168.1.20]:443 is not on hue's allowlist)
            [::ffff:c0a8:114]:443 -> egress_bad_request (write this address as [::ffff:192.168.1.20]:443)
            [2001:DB8::7]:8443 -> egress_bad_request (write this address as [2001:db8::7]:8443)
            [2001:db8:0::7]:8443 -> egress_bad_request (write this address as [2001:db8::7]:8443)
            [2001:0db8::7]:8443 -> egress_bad_request (write this address as [2001:db8::7]:8443)
            192.168.001.020:443 -> egress_bad_request (not a valid IP address)
            2001:db8::7:8443 -> egress_bad_request (IPv6 literals must be bracketed)
            2130706433:443 -> egress_bad_request (not a valid IP address)
            0x7f000001:443 -> egress_bad_request (the last label of a host name must start with a letter)
            0x7f.1:443 -> egress_bad_request (the last label of a host name must start with a letter)
            0x7f.0x0.0x0.0x1:443 -> egress_bad_request (the last label of a host name must start with a letter)
            0177.0.0.1:443 -> egress_bad_request (not a valid IP address)
            127.1:443 -> egress_bad_request (not a valid IP address)
            127.0.1:443 -> egress_bad_request (not a valid IP address)
            [::ffff:127.0.0.1]:443 -> egress_not_allowlisted ([::ffff:127.0.0.1]:443 is not on hue's allowlist)
            [::1]:443 -> egress_not_allowlisted ([::1]:443 is not on hue's allowlist)
            [64:ff9b::7f00:1]:443 -> egress_not_allowlisted ([64:ff9b::7f00:1]:443 is not on hue's allowlist)
            [::]:443 -> egress_not_allowlisted ([::]:443 is not on hue's allowlist)
            0.0.0.0:443 -> egress_not_allowlisted (0.0.0.0:443 is not on hue's allowlist)
            [fe80::1%25eth0]:443 -> egress_bad_request (only IPv6 literals may be bracketed)
            [fe80::1%eth0]:443 -> egress_bad_request (only IPv6 literals may be bracketed)
            localhost:443 [127.0.0.1] -> egress_not_allowlisted (localhost:443 is not on hue's allowlist)
            localhost:8080 [127.0.0.1] -> egress_private_address (localhost resolved to 127.0.0.1 (loopback))
            api.example.com:443 [127.0.0.1] -> egress_private_address (api.example.com resolved to 127.0.0.1 (loopback))
            api.example.com:443 [10.0.0.5] -> egress_private_address (api.example.com resolved to 10.0.0.5 (private))
            api.example.com:443 [169.254.169.254] -> egress_private_address (api.example.com resolved to 169.254.169.254 (link-local))
            api.example.com:443 [93.184.215.14 192.168.1.1] -> egress_private_address (api.example.com resolved to 192.168.1.1 (private))
            api.example.com:443 [192.168.1.1 93.184.215.14] -> egress_private_address (api.example.com resolved to 192.168.1.1 (private))
            api.example.com:443 [::ffff:127.0.0.1] -> egress_private_address (api.example.com resolved to ::ffff:127.0.0.1 (loopback))
            api.example.com:443 [64:ff9b::a9fe:a9fe] -> egress_private_address (api.example.com resolved to 64:ff9b::a9fe:a9fe (link-local))
            api.example.com:443 [64:ff9b::808:808] -> connect [64:ff9b::808:808]:443
            api.example.com:443 [fd00::1] -> egress_private_address (api.example.com resolved to fd00::1 (unique-local))
            api.example.com:443 [fe80::1] -> egress_private_address (api.example.com resolved to fe80::1 (link-local))
            api.example.com:443 [100.64.0.1] -> egress_private_address (api.example.com resolved to 100.64.0.1 (shared-nat))
            api.example.com:443 [0.0.0.0] -> egress_private_address (api.example.com resolved to 0.0.0.0 (unspecified))
            api.example.com:443 [255.255.255.255] -> egress_private_address (api.example.com resolved to 255.255.255.255 (broadcast))
            api.example.com:443 [224.0.0.1] -> egress_private_address (api.example.com resolved to 224.0.0.1 (multicast))
            api.example.com:443 [198.18.0.1] -> egress_private_address (api.example.com resolved to 198.18.0.1 (benchmarking))
            api.example.com:443 [192.0.2.1] -> egress_private_address (api.example.com resolved to 192.0.2.1 (documentation))
            api.example.com:443 -> egress_resolve_failed (api.example.com resolved to no address)"#]].assert_eq(&out.join("\n"));
    }
}
