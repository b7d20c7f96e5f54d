//! IP ranges of policies and tokens, and requested IP addresses.
//!
//! Everything is compared in canonical form: an IPv4-mapped IPv6 address
//! (`::ffff:10.0.0.1`) is the IPv4 address it maps, and a range inside
//! `::ffff:0:0/96` is the IPv4 range it maps. A range written with host bits
//! set (`10.20.1.0/16`) is refused rather than silently truncated.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// Parses a CIDR range, or a bare address meaning a single host
/// (`/32` or `/128`), into canonical form.
pub(crate) fn parse_range(input: &str) -> Result<IpNet, IpRangeError> {
    let net = if input.contains('/') {
        let net: IpNet = input.parse().map_err(|_| IpRangeError::Malformed)?;
        if net.addr() != net.network() {
            return Err(IpRangeError::HostBitsSet {
                suggestion: net.trunc().to_string(),
            });
        }
        net
    } else {
        let addr: IpAddr = input.parse().map_err(|_| IpRangeError::Malformed)?;
        IpNet::from(addr)
    };
    Ok(canonical_range(net))
}

/// The IPv4 address an IPv4-mapped IPv6 address stands for; others unchanged.
pub(crate) fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

/// True when `range` (canonical) contains `addr`.
pub(crate) fn range_contains(range: &IpNet, addr: IpAddr) -> bool {
    range.contains(&canonical_addr(addr))
}

/// True when every address of `inner` (canonical) is in `outer` (canonical).
pub(crate) fn range_within(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(inner)
}

/// Why an IP range was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum IpRangeError {
    #[error("is not an IP address or CIDR range (e.g. 10.20.0.0/16, 2001:db8::/32)")]
    Malformed,
    #[error("has host bits set; write {suggestion}")]
    HostBitsSet { suggestion: String },
}

/// Maps a range inside `::ffff:0:0/96` to the IPv4 range it stands for.
fn canonical_range(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.network().to_ipv4_mapped() {
                if let Ok(mapped) = Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(mapped);
                }
            }
        }
    }
    net
}
