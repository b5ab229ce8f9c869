//! Which IP addresses a DNS name may lead to: [`classify`] names the special-purpose range an
//! address falls in, or says it is globally routable unicast.
//!
//! The rule is an allowlist in spirit: IPv6 must lie in global unicast `2000::/3` outside the
//! special ranges; IPv4 must lie outside every special range below. IPv6 forms that carry an
//! IPv4 address (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`,
//! 6to4 `2002::/16`) are judged by the IPv4 address they carry, so `[::ffff:127.0.0.1]` is
//! loopback. Pure functions, no I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of address something is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable unicast: acceptable for a DNS name.
    Global,
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` ("this network").
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedNat,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// IETF protocol assignments: `192.0.0.0/24`, `2001::/23`.
    ProtocolAssignment,
    /// Documentation: `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`,
    /// `3fff::/20`.
    Documentation,
    /// Benchmarking: `198.18.0.0/15` (`2001:2::/48` lies in the protocol assignments).
    Benchmarking,
    /// The deprecated 6to4 relay anycast `192.88.99.0/24`.
    Relay,
    /// Multicast: `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Reserved for future use: `240.0.0.0/4`.
    Reserved,
    /// Unique local, `fc00::/7`.
    UniqueLocal,
    /// Deprecated site-local, `fec0::/10`.
    SiteLocal,
    /// The NAT64 local-use prefix `64:ff9b:1::/48`.
    LocalNat64,
    /// IPv6 outside global unicast `2000::/3` and outside every range above (for example
    /// the discard prefix `100::/64`, SRv6 `5f00::/16`, unassigned space).
    NotGlobalUnicast,
}

impl AddressClass {
    /// Whether a DNS name may lead here.
    pub fn is_global(self) -> bool {
        self == AddressClass::Global
    }

    /// A short lowercase name for logs and tests.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Global => "global",
            AddressClass::Unspecified => "unspecified",
            AddressClass::ThisNetwork => "this-network",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::SharedNat => "shared-nat",
            AddressClass::LinkLocal => "link-local",
            AddressClass::ProtocolAssignment => "protocol-assignment",
            AddressClass::Documentation => "documentation",
            AddressClass::Benchmarking => "benchmarking",
            AddressClass::Relay => "6to4-relay",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
            AddressClass::UniqueLocal => "unique-local",
            AddressClass::SiteLocal => "site-local",
            AddressClass::LocalNat64 => "local-nat64",
            AddressClass::NotGlobalUnicast => "not-global-unicast",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Whether `bits` lies in `net/prefix` (both as integers).
fn in_v4(bits: u32, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    bits & mask == u32::from_be_bytes(net) & mask
}

fn in_v6(bits: u128, net: u128, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    bits & mask == net & mask
}

/// Classifies an IPv4 address.
pub fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let bits = u32::from(ip);
    // Order matters only where ranges nest (0.0.0.0 inside 0/8, the broadcast inside 240/4).
    let table: [([u8; 4], u32, AddressClass); 17] = [
        ([0, 0, 0, 0], 32, AddressClass::Unspecified),
        ([0, 0, 0, 0], 8, AddressClass::ThisNetwork),
        ([10, 0, 0, 0], 8, AddressClass::Private),
        ([100, 64, 0, 0], 10, AddressClass::SharedNat),
        ([127, 0, 0, 0], 8, AddressClass::Loopback),
        ([169, 254, 0, 0], 16, AddressClass::LinkLocal),
        ([172, 16, 0, 0], 12, AddressClass::Private),
        ([192, 0, 0, 0], 24, AddressClass::ProtocolAssignment),
        ([192, 0, 2, 0], 24, AddressClass::Documentation),
        ([192, 88, 99, 0], 24, AddressClass::Relay),
        ([192, 168, 0, 0], 16, AddressClass::Private),
        ([198, 18, 0, 0], 15, AddressClass::Benchmarking),
        ([198, 51, 100, 0], 24, AddressClass::Documentation),
        ([203, 0, 113, 0], 24, AddressClass::Documentation),
        ([224, 0, 0, 0], 4, AddressClass::Multicast),
        ([255, 255, 255, 255], 32, AddressClass::Broadcast),
        ([240, 0, 0, 0], 4, AddressClass::Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(bits, *net, *prefix))
        .map_or(AddressClass::Global, |(_, _, class)| *class)
}

/// The IPv4 address in the low 32 bits.
fn low_v4(bits: u128) -> Ipv4Addr {
    Ipv4Addr::from((bits & 0xffff_ffff) as u32)
}

/// Classifies an IPv6 address.
pub fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let bits = u128::from(ip);
    if bits == 0 {
        return AddressClass::Unspecified;
    }
    if bits == 1 {
        return AddressClass::Loopback;
    }
    // Forms that carry an IPv4 address are as good as the address they carry.
    let v4_mapped = in_v6(bits, 0xffff_0000_0000, 96);
    let v4_compatible = in_v6(bits, 0, 96);
    let nat64 = in_v6(bits, 0x0064_ff9b_u128 << 96, 96);
    if v4_mapped || v4_compatible || nat64 {
        return classify_v4(low_v4(bits));
    }
    if in_v6(bits, 0x2002_u128 << 112, 16) {
        // 6to4: the IPv4 address sits in bits 16..48.
        return classify_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    let table: [(u128, u32, AddressClass); 9] = [
        (0x0064_ff9b_0001_u128 << 80, 48, AddressClass::LocalNat64),
        (0xff_u128 << 120, 8, AddressClass::Multicast),
        (0xfc_u128 << 120, 7, AddressClass::UniqueLocal),
        (0xfe80_u128 << 112, 10, AddressClass::LinkLocal),
        (0xfec0_u128 << 112, 10, AddressClass::SiteLocal),
        (0x2001_0db8_u128 << 96, 32, AddressClass::Documentation),
        (0x2001_u128 << 112, 23, AddressClass::ProtocolAssignment),
        (0x3fff_u128 << 112, 20, AddressClass::Documentation),
        (0x2_u128 << 124, 3, AddressClass::Global),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v6(bits, *net, *prefix))
        .map_or(AddressClass::NotGlobalUnicast, |(_, _, class)| *class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        let cases = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.63.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "100.128.0.0",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.15.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "172.32.0.0",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.20",
            "198.18.0.1",
            "198.19.255.255",
            "198.20.0.0",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::808:808",
            "64:ff9b:1::808:808",
            "2002:7f00:1::1",
            "2002:808:808::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| format!("{c} {}", classify(c.parse().unwrap())))
            .collect();
        expect_test::expect![[r#"
            0.0.0.0 unspecified
            0.1.2.3 this-network
            10.0.0.1 private
            100.63.255.255 global
            100.64.0.1 shared-nat
            100.127.255.255 shared-nat
            100.128.0.0 global
            127.0.0.1 loopback
            127.255.255.254 loopback
            169.254.169.254 link-local
            172.15.255.255 global
            172.16.0.1 private
            172.31.255.255 private
            172.32.0.0 global
            192.0.0.8 protocol-assignment
            192.0.2.1 documentation
            192.88.99.1 6to4-relay
            192.168.1.20 private
            198.18.0.1 benchmarking
            198.19.255.255 benchmarking
            198.20.0.0 global
            198.51.100.7 documentation
            203.0.113.9 documentation
            224.0.0.251 multicast
            239.255.255.250 multicast
            240.0.0.1 reserved
            255.255.255.255 broadcast
            1.1.1.1 global
            8.8.8.8 global
            93.184.215.14 global
            :: unspecified
            ::1 loopback
            ::ffff:127.0.0.1 loopback
            ::ffff:10.1.2.3 private
            ::ffff:8.8.8.8 global
            ::127.0.0.1 loopback
            ::8.8.8.8 global
            64:ff9b::7f00:1 loopback
            64:ff9b::a9fe:a9fe link-local
            64:ff9b::808:808 global
            64:ff9b:1::808:808 local-nat64
            2002:7f00:1::1 loopback
            2002:808:808::1 global
            100::1 not-global-unicast
            2001::1 protocol-assignment
            2001:2::1 protocol-assignment
            2001:db8::1 documentation
            3fff::1 documentation
            5f00::1 not-global-unicast
            fc00::1 unique-local
            fd12:3456::1 unique-local
            fe80::1 link-local
            febf::1 link-local
            fec0::1 site-local
            ff02::1 multicast
            2606:4700:4700::1111 global
            2a00:1450:4001::200e global"#]]
        .assert_eq(&out.join("\n"));
    }
}
