//! Trusted reverse proxies (`limits.trusted_proxies`): behind a load balancer every TCP peer
//! is the balancer, so per-address limits would lump all clients together. For a peer in
//! the list, the client is the right-most address of the forwarding header
//! (`limits.client_ip_header`: `X-Forwarded-For`, or the standard `Forwarded`'s `for=`)
//! that is not itself a trusted proxy. Addresses further left are whatever the client
//! claimed, so never trusted; and only the one header the proxies are said to write is read,
//! since the other one passes through them untouched, as the client wrote it.

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

/// The header the trusted proxies name the client in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, ...`
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`
    Forwarded,
}

impl ClientIpHeader {
    /// `x-forwarded-for` or `forwarded`, as `limits.client_ip_header` spells them.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            _ => anyhow::bail!(
                "`limits.client_ip_header` must be \"x-forwarded-for\" or \"forwarded\", got {name:?}"
            ),
        }
    }

    /// The hops the header lists, left to right; `None` for a hop without a usable
    /// address (`unknown`, an obfuscated name, garbage).
    fn hops(self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let (name, hop): (_, fn(&str) -> Option<IpAddr>) = match self {
            Self::XForwardedFor => ("x-forwarded-for", |h| h.trim().parse().ok()),
            Self::Forwarded => ("forwarded", forwarded_for),
        };
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(split_unquoted_commas)
            .map(hop)
            .collect()
    }
}

/// The elements of a header value: split at commas outside quoted strings.
fn split_unquoted_commas(value: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// The address in one `Forwarded` element's `for=` parameter: `192.0.2.60`,
/// `"192.0.2.60:4711"`, `"[2001:db8::1]"`, `"[2001:db8::1]:4711"`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| value.trim())
    })?;
    let node = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if let Some(v6) = node.strip_prefix('[') {
        return v6.split_once(']')?.0.parse().ok();
    }
    // IPv4, with an optional port (an IPv6 node must be bracketed).
    node.split(':')
        .next()?
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

/// The configured proxies.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<Net>,
    header: ClientIpHeader,
}

impl TrustedProxies {
    /// Parses entries like `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`; the proxies name the
    /// client in `header`.
    ///
    /// # Errors
    /// The first entry that is not an address or address block.
    pub fn parse(entries: &[String], header: ClientIpHeader) -> anyhow::Result<Self> {
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
        Ok(Self { nets, header })
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client behind a request from `peer`: `peer` itself unless it is a trusted proxy.
    ///
    /// From the right, trusted proxies are skipped; the first other hop is the client. When
    /// that hop has no usable address (a proxy wrote `unknown`), the client stays `peer`:
    /// what lies further left was written by the client, not by a proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        self.header
            .hops(headers)
            .into_iter()
            .rev()
            .find(|hop| hop.is_none_or(|ip| !self.contains(ip)))
            .flatten()
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies_reading(entries: &[&str], header: ClientIpHeader) -> TrustedProxies {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        TrustedProxies::parse(&entries, header).unwrap()
    }

    fn proxies(entries: &[&str]) -> TrustedProxies {
        proxies_reading(entries, ClientIpHeader::XForwardedFor)
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("forwarded", v.parse().unwrap());
        }
        h
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
            let parsed = TrustedProxies::parse(&[bad.to_owned()], ClientIpHeader::default());
            assert!(parsed.is_err(), "{bad}");
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
        // A hop the proxy could not name: what is left of it is the client's own claim.
        assert_eq!(p.client_ip(lb, &xff("198.51.100.1, unknown")), lb);
        // Only the configured header: a Forwarded header passes the proxy as sent.
        assert_eq!(p.client_ip(lb, &forwarded(&["for=198.51.100.1"])), lb);
    }

    #[test]
    fn the_forwarded_header_names_clients_in_every_spelling() {
        let p = proxies_reading(&["10.0.0.0/8"], ClientIpHeader::Forwarded);
        let lb = ip("10.0.0.2");
        let client = |values: &[&str]| p.client_ip(lb, &forwarded(values));
        assert_eq!(client(&["for=203.0.113.9"]), ip("203.0.113.9"));
        assert_eq!(
            client(&["For=\"203.0.113.9:4711\";proto=https"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client(&["proto=https;for=\"[2001:db8:cafe::17]:4711\""]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(client(&["for=\"[2001:db8::1]\""]), ip("2001:db8::1"));
        // Right-most untrusted hop, across elements and header lines.
        assert_eq!(
            client(&["for=1.1.1.1, for=203.0.113.9;by=10.0.0.2", "for=10.0.0.7"]),
            ip("203.0.113.9")
        );
        // A comma inside a quoted parameter does not split the element.
        assert_eq!(client(&["for=203.0.113.9;ext=\"a,b\""]), ip("203.0.113.9"));
        // Obfuscated or unknown: the client stays the balancer; garbage too.
        for unusable in [
            "for=_hidden",
            "for=unknown",
            "for=\"[::1\"",
            "proto=http",
            "for=2001:db8::1",
        ] {
            assert_eq!(client(&["for=198.51.100.1", unusable]), lb, "{unusable}");
        }
        assert_eq!(
            p.client_ip(lb, &xff("203.0.113.9")),
            lb,
            "X-Forwarded-For not read"
        );
        assert!(ClientIpHeader::parse("Forwarded").is_ok());
        assert!(ClientIpHeader::parse("x-real-ip").is_err());
    }
}
