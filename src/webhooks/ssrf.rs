//! The SSRF guard: webhook URLs may not reach loopback, private, link-local or other
//! non-public addresses (unless `webhooks.allow_private_networks`). Names are checked after
//! DNS resolution, when connecting, so a name that later resolves elsewhere is caught too.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is a public, routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(a),
        },
    }
}

fn is_public_v4(a: Ipv4Addr) -> bool {
    let [b0, b1, b2, _] = a.octets();
    !(a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_documentation()
        || a.is_unspecified()
        || a.is_multicast()
        || b0 == 0
        || (b0 == 100 && (64..128).contains(&b1)) // shared address space (CGNAT)
        || (b0 == 192 && b1 == 0 && b2 == 0) // IETF protocol assignments
        || (b0 == 198 && (18..20).contains(&b1)) // benchmarking
        || b0 >= 240) // reserved
}

fn is_public_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    !(a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: may reach private IPv4
        || (s[0] == 0x2002)) // 6to4: may embed private IPv4
}

/// Checks a URL before it is stored or used: http(s), a host, and (for an IP literal, which
/// no resolver sees) a public address unless private networks are allowed.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(url).map_err(|e| format!("`url` is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("`url` must be http or https".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("`url` must not carry credentials".into());
    }
    let host = url.host_str().ok_or("`url` needs a host")?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    if let Ok(ip) = literal
        && !allow_private
        && !is_public(ip)
    {
        return Err(format!(
            "`url` points to a non-public address ({ip}); set webhooks.allow_private_networks to allow it"
        ));
    }
    Ok(url)
}

/// Resolves names and keeps only addresses the guard allows.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    /// Let non-public addresses through.
    pub allow_private: bool,
}

/// The error when a name resolves only to refused addresses.
pub const REFUSED: &str =
    "refused by the SSRF guard: the host resolves only to non-public addresses";

impl GuardedResolver {
    /// Resolves `host` and keeps the allowed addresses.
    ///
    /// # Errors
    /// When resolution fails or nothing allowed is left.
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let found = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let allowed: Vec<SocketAddr> = found
            .filter(|a| self.allow_private || is_public(a.ip()))
            .collect();
        if allowed.is_empty() {
            Err(REFUSED.into())
        } else {
            Ok(allowed)
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.lookup(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The resolver as reqwest wants it.
pub fn resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked_before_use() {
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert!(check_url("http://127.0.0.1:9000/hook", false).is_err());
        assert!(check_url("http://[::1]/hook", false).is_err());
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
        assert!(check_url("ftp://example.com", false).is_err());
        assert!(check_url("https://user:pw@example.com", false).is_err());
        assert!(check_url("not a url", false).is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_unless_allowed() {
        assert_eq!(
            GuardedResolver {
                allow_private: false
            }
            .lookup("localhost")
            .await
            .unwrap_err(),
            REFUSED
        );
        assert!(
            GuardedResolver {
                allow_private: true
            }
            .lookup("localhost")
            .await
            .is_ok()
        );
    }
}
