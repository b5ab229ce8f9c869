//! Networks: one internal bridge per agent, the core network NATS publishes its port from, the
//! egress proxy's external network and its internal link to NATS.
//!
//! Every network gets an explicit small subnet (a /28 out of `10.213.0.0/16`): the pure
//! [`pick_subnet`] chooses a free one starting from a random slot, and creation is retried with
//! the next free slot when the engine reports an overlap (another instance, perhaps another
//! test, may be creating networks at the same time).

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

use bollard::Docker;
use bollard::models::{
    EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest,
};
use bollard::query_parameters::ListNetworksOptionsBuilder;

use crate::SandboxError;

/// The pool subnets are taken from.
pub const POOL: Subnet = Subnet {
    base: Ipv4Addr::new(10, 213, 0, 0),
    prefix: 16,
};
/// Prefix length of every network we create (14 usable addresses).
pub const SLOT_PREFIX: u8 = 28;
/// Creation attempts before giving up.
const ATTEMPTS: usize = 16;

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    base: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// A subnet; the base must have no host bits.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Option<Subnet> {
        if prefix > 32 {
            return None;
        }
        let s = Subnet { base, prefix };
        (u32::from(base) & !s.mask() == 0).then_some(s)
    }

    /// Parses `a.b.c.d/n`; `None` for IPv6 or anything else.
    pub fn parse(s: &str) -> Option<Subnet> {
        let (ip, prefix) = s.split_once('/')?;
        Subnet::new(ip.parse().ok()?, prefix.parse().ok()?)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    fn first(&self) -> u32 {
        u32::from(self.base)
    }

    fn last(&self) -> u32 {
        self.first() | !self.mask()
    }

    /// Whether two subnets share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// Whether an address is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.first()
    }

    /// The gateway the engine gives the bridge (the first address).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first().wrapping_add(1))
    }

    /// Number of /28 slots in this subnet.
    fn slots(&self) -> u32 {
        1u32 << (u32::from(SLOT_PREFIX) - u32::from(self.prefix).min(u32::from(SLOT_PREFIX)))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The first /28 of [`POOL`] at or after slot `start` (wrapping) that overlaps none of `used`.
/// Pure.
pub fn pick_subnet(used: &[Subnet], start: u32) -> Option<Subnet> {
    let slots = POOL.slots();
    (0..slots).find_map(|i| {
        let slot = (start.wrapping_add(i)) % slots;
        let base = Ipv4Addr::from(POOL.first() + (slot << (32 - u32::from(SLOT_PREFIX))));
        let candidate = Subnet::new(base, SLOT_PREFIX)?;
        (!used.iter().any(|u| u.overlaps(&candidate))).then_some(candidate)
    })
}

/// What kind of bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--internal` (nothing is forwarded out of the subnet) and no host address on the
    /// bridge (the host itself is not reachable from it).
    Internal,
    /// The core network: routed for the published port, but no masquerading, so containers on
    /// it cannot reach outside; published ports bind to 127.0.0.1 by default.
    Core,
    /// The egress proxy's way out: an ordinary routed, masqueraded bridge.
    External,
}

/// A network to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

/// The create request for a network on a subnet. Pure.
pub fn create_request(spec: &NetworkSpec, subnet: Subnet) -> NetworkCreateRequest {
    let mut options = HashMap::new();
    match spec.kind {
        Kind::Internal => {
            // No address of the host on the bridge: without it, the default route the engine
            // still gives containers leads nowhere, so host services listening on every address
            // cannot be reached from the network either.
            options.insert(
                "com.docker.network.bridge.inhibit_ipv4".to_owned(),
                "true".to_owned(),
            );
        }
        Kind::External => {}
        Kind::Core => {
            options.insert(
                "com.docker.network.bridge.enable_ip_masquerade".to_owned(),
                "false".to_owned(),
            );
            options.insert(
                "com.docker.network.bridge.host_binding_ipv4".to_owned(),
                "127.0.0.1".to_owned(),
            );
        }
    }
    NetworkCreateRequest {
        name: spec.name.clone(),
        driver: Some("bridge".to_owned()),
        internal: Some(spec.kind == Kind::Internal),
        attachable: Some(false),
        enable_ipv6: Some(false),
        ipam: Some(Ipam {
            driver: Some("default".to_owned()),
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.to_string()),
                gateway: Some(subnet.gateway().to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        options: Some(options),
        labels: Some(spec.labels.clone()),
        ..Default::default()
    }
}

fn docker_error(operation: &'static str) -> impl FnOnce(bollard::errors::Error) -> SandboxError {
    move |source| SandboxError::Docker { operation, source }
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Every IPv4 subnet the engine's networks use.
pub async fn used_subnets(docker: &Docker) -> Result<Vec<Subnet>, SandboxError> {
    let networks = docker
        .list_networks(Some(ListNetworksOptionsBuilder::default().build()))
        .await
        .map_err(docker_error("list networks"))?;
    Ok(networks
        .iter()
        .filter_map(|n| n.ipam.as_ref()?.config.as_ref())
        .flatten()
        .filter_map(|c| Subnet::parse(c.subnet.as_deref()?))
        .collect())
}

/// The subnet of an existing network, or `None` if there is no such network.
pub async fn subnet_of(docker: &Docker, name: &str) -> Result<Option<Subnet>, SandboxError> {
    match docker.inspect_network(name, None).await {
        Ok(n) => Ok(n
            .ipam
            .and_then(|i| i.config)
            .unwrap_or_default()
            .iter()
            .find_map(|c| Subnet::parse(c.subnet.as_deref()?))),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(source) => Err(SandboxError::Docker {
            operation: "inspect network",
            source,
        }),
    }
}

fn random_slot() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; good enough to spread parallel creators.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() & 0xffff_ffff) as u32
}

/// Creates a network on a free /28 (or returns the subnet of the existing network of that
/// name, so the call is idempotent).
pub async fn ensure(docker: &Docker, spec: &NetworkSpec) -> Result<Subnet, SandboxError> {
    if let Some(existing) = subnet_of(docker, &spec.name).await? {
        return Ok(existing);
    }
    let mut start = random_slot();
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let used = used_subnets(docker).await?;
        let subnet = pick_subnet(&used, start).ok_or_else(|| {
            SandboxError::Invalid(format!("no free /{SLOT_PREFIX} left in {POOL}"))
        })?;
        match docker.create_network(create_request(spec, subnet)).await {
            Ok(_) => {
                tracing::debug!(network = %spec.name, %subnet, "network created");
                return Ok(subnet);
            }
            // Another creator took the subnet (or the name) between our listing and our call.
            Err(e) if is_status(&e, 400) || is_status(&e, 403) || is_status(&e, 409) => {
                if let Some(existing) = subnet_of(docker, &spec.name).await? {
                    return Ok(existing);
                }
                tracing::debug!(network = %spec.name, %subnet, error = %e, "retrying");
                last_error = Some(e);
                start = random_slot();
            }
            Err(source) => {
                return Err(SandboxError::Docker {
                    operation: "create network",
                    source,
                });
            }
        }
    }
    Err(match last_error {
        Some(source) => SandboxError::Docker {
            operation: "create network",
            source,
        },
        None => SandboxError::Invalid(format!("could not create network {}", spec.name)),
    })
}

/// Connects a container to a network with DNS aliases (nothing happens if it is already
/// connected).
pub async fn connect(
    docker: &Docker,
    network: &str,
    container: &str,
    aliases: &[&str],
) -> Result<(), SandboxError> {
    let request = NetworkConnectRequest {
        container: container.to_owned(),
        endpoint_config: Some(EndpointSettings {
            aliases: Some(aliases.iter().map(|a| (*a).to_owned()).collect()),
            ..Default::default()
        }),
    };
    match docker.connect_network(network, request).await {
        Ok(()) => Ok(()),
        // 403: "endpoint with name ... already exists in network".
        Err(e) if is_status(&e, 403) && attached(docker, network, container).await? => Ok(()),
        Err(source) => Err(SandboxError::Docker {
            operation: "connect network",
            source,
        }),
    }
}

/// Whether a container is attached to a network.
pub async fn attached(
    docker: &Docker,
    network: &str,
    container: &str,
) -> Result<bool, SandboxError> {
    match docker.inspect_container(container, None).await {
        Ok(c) => Ok(c
            .network_settings
            .and_then(|n| n.networks)
            .is_some_and(|n| n.contains_key(network))),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(source) => Err(SandboxError::Docker {
            operation: "inspect container",
            source,
        }),
    }
}

/// Disconnects a container from a network (nothing happens if either is gone).
pub async fn disconnect(
    docker: &Docker,
    network: &str,
    container: &str,
) -> Result<(), SandboxError> {
    let request = bollard::models::NetworkDisconnectRequest {
        container: container.to_owned(),
        force: Some(true),
    };
    match docker.disconnect_network(network, request).await {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) || !attached(docker, network, container).await? => Ok(()),
        Err(source) => Err(SandboxError::Docker {
            operation: "disconnect network",
            source,
        }),
    }
}

/// Removes a network (nothing happens if it is gone).
pub async fn remove(docker: &Docker, name: &str) -> Result<(), SandboxError> {
    match docker.remove_network(name).await {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(source) => Err(SandboxError::Docker {
            operation: "remove network",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Subnet {
        Subnet::parse(text).unwrap()
    }

    #[test]
    fn subnets_parse_overlap_and_contain() {
        assert_eq!(Subnet::parse("10.213.0.16/28"), Some(s("10.213.0.16/28")));
        assert_eq!(Subnet::parse("10.213.0.17/28"), None, "host bits set");
        assert_eq!(Subnet::parse("fd00::/64"), None);
        assert_eq!(Subnet::parse("10.0.0.0/33"), None);
        assert!(s("10.213.0.0/16").overlaps(&s("10.213.7.0/28")));
        assert!(s("10.213.7.0/28").overlaps(&s("10.213.0.0/16")));
        assert!(!s("10.213.0.0/28").overlaps(&s("10.213.0.16/28")));
        assert!(s("10.213.0.16/28").contains(Ipv4Addr::new(10, 213, 0, 31)));
        assert!(!s("10.213.0.16/28").contains(Ipv4Addr::new(10, 213, 0, 32)));
        assert_eq!(s("10.213.0.16/28").gateway(), Ipv4Addr::new(10, 213, 0, 17));
    }

    #[test]
    fn picking_skips_used_subnets_and_wraps() {
        let used = [s("10.213.0.0/28"), s("10.213.0.16/28"), s("172.17.0.0/16")];
        assert_eq!(pick_subnet(&used, 0), Some(s("10.213.0.32/28")));
        assert_eq!(pick_subnet(&used, 4095), Some(s("10.213.255.240/28")));
        assert_eq!(pick_subnet(&used, 4096), Some(s("10.213.0.32/28")), "wraps");
        assert_eq!(pick_subnet(&[s("10.0.0.0/8")], 7), None, "pool exhausted");
        assert_eq!(
            pick_subnet(&[s("10.213.0.0/17")], 3),
            Some(s("10.213.128.0/28"))
        );
    }

    #[test]
    fn create_requests_by_kind() {
        let spec = |kind| NetworkSpec {
            name: "t-net".to_owned(),
            kind,
            labels: HashMap::new(),
        };
        let subnet = s("10.213.1.0/28");
        let out: Vec<String> = [Kind::Internal, Kind::Core, Kind::External]
            .into_iter()
            .map(|k| {
                let r = create_request(&spec(k), subnet);
                let mut opts: Vec<String> = r
                    .options
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                opts.sort();
                let ipam = r.ipam.unwrap().config.unwrap();
                format!(
                    "{k:?} internal={:?} subnet={:?} gateway={:?} {}",
                    r.internal.unwrap(),
                    ipam[0].subnet.as_deref().unwrap(),
                    ipam[0].gateway.as_deref().unwrap(),
                    opts.join(" ")
                )
            })
            .collect();
        expect_test::expect![[r#"
            Internal internal=true subnet="10.213.1.0/28" gateway="10.213.1.1" com.docker.network.bridge.inhibit_ipv4=true
            Core internal=false subnet="10.213.1.0/28" gateway="10.213.1.1" com.docker.network.bridge.enable_ip_masquerade=false com.docker.network.bridge.host_binding_ipv4=127.0.0.1
            External internal=false subnet="10.213.1.0/28" gateway="10.213.1.1" "#]]
        .assert_eq(&out.join("\n"));
    }
}
