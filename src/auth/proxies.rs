//! Trusted reverse proxies (`limits.trusted_proxies`): behind a load balancer every TCP peer
//! is the balancer, so per-address limits would lump all clients together. For a peer in
//! the list, the client is the right-most `X-Forwarded-For` address that is not itself a
//! trusted proxy (addresses further left are whatever the client claimed, so never trusted).

use std::net::IpAddr;

use http::HeaderMap;

/// The address a per-client limit counts: an IPv4 address (IPv4-mapped IPv6 included) as
/// it is, an IPv6 address by its /64, the smallest block a host is usually given, so one
/// host cannot spread itself over countless buckets.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// An address block: an address and how many leading bits must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        fn matches(a: u128, b: u128, prefix: u8, width: u8) -> bool {
            let shift = u32::from(width - prefix);
            prefix == 0 || (a >> shift) == (b >> shift)
        }
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => matches(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                matches(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The configured proxies.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<Net>,
}

impl TrustedProxies {
    /// Parses entries like `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`.
    ///
    /// # Errors
    /// The first entry that is not an address or address block.
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let nets = entries
            .iter()
            .map(|e| {
                Net::parse(e.trim()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "`limits.trusted_proxies`: {e:?} is not an IP address or CIDR block"
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { nets })
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client behind a request from `peer`: `peer` itself unless it is a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .collect();
        hops.into_iter()
            .rev()
            .find(|hop| !self.contains(*hop))
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn limits_count_ipv6_hosts_by_their_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            limit_key(ip("2001:db8:1:2:bbbb::9")),
            limit_key(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:3::1")),
            limit_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(limit_key(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(limit_key(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
    }

    #[test]
    fn blocks_match_by_prefix() {
        let p = proxies(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(p.contains(ip("10.255.0.1")));
        assert!(!p.contains(ip("11.0.0.1")));
        assert!(p.contains(ip("192.168.1.7")));
        assert!(!p.contains(ip("192.168.1.8")));
        assert!(p.contains(ip("fd12::1")));
        assert!(
            p.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped IPv6 counts as IPv4"
        );
        assert!(proxies(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", ""] {
            assert!(TrustedProxies::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let p = proxies(&["10.0.0.0/8"]);
        let lb = ip("10.0.0.2");
        // The client claimed 1.1.1.1; the balancer appended what it saw.
        assert_eq!(
            p.client_ip(lb, &xff("1.1.1.1, 203.0.113.9")),
            ip("203.0.113.9")
        );
        assert_eq!(
            p.client_ip(lb, &xff("203.0.113.9, 10.0.0.5")),
            ip("203.0.113.9")
        );
        assert_eq!(p.client_ip(lb, &HeaderMap::new()), lb);
        assert_eq!(p.client_ip(lb, &xff("garbage")), lb);
        // A peer that is not a trusted proxy cannot choose its address.
        assert_eq!(
            p.client_ip(ip("203.0.113.1"), &xff("198.51.100.1")),
            ip("203.0.113.1")
        );
    }
}
