//! The SSRF guard: webhook URLs may not reach loopback, private, link-local or other
//! non-public addresses (unless `webhooks.allow_private_networks`). Names are checked after
//! DNS resolution, when connecting, so a name that later resolves elsewhere is caught too.
//!
//! Refusals are typed ([`UrlRefused`] for a URL, [`LookupError::Refused`] for a name), so
//! callers match on them, never on their text; [`is_refusal`] finds the latter in the error
//! chain of a failed request.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is a public, routable unicast address. An IPv6 address that carries an IPv4
/// address in its last 32 bits is judged as that IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_public_v4(a),
        IpAddr::V6(a) => match embedded_v4(a) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(a),
        },
    }
}

/// The IPv4 address in an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`,
/// which includes `::1` as `0.0.0.1`: not public either way) or IPv4-translated
/// (`::ffff:0:a.b.c.d`) IPv6 address: stacks that accept these forms reach the IPv4 address.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = a.to_ipv4() {
        return Some(v4);
    }
    let s = a.segments();
    let translated = s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0;
    translated.then(|| {
        let [.., hi, lo] = s;
        Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
    })
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
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (and 64:ff9b:1::/48): may reach private IPv4
        || (s[0] == 0x2002) // 6to4: may embed private IPv4
        || (s[0] == 0x2001 && s[1] == 0x0000)) // Teredo: may embed private IPv4
}

/// Why a webhook URL is refused (400 `invalid_request`); each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    /// Not a URL at all.
    #[error("`url` is not a valid URL: {0}")]
    Invalid(String),
    /// Another scheme than http or https.
    #[error("`url` must be http or https")]
    Scheme,
    /// `user:password@` in the URL.
    #[error("`url` must not carry credentials")]
    Credentials,
    /// No host.
    #[error("`url` needs a host")]
    NoHost,
    /// An IP literal that is not public.
    #[error(
        "`url` points to a non-public address ({0}); set webhooks.allow_private_networks to allow it"
    )]
    NonPublicAddress(IpAddr),
    /// A name that resolves only to non-public addresses.
    #[error(
        "`url` host {0} resolves only to non-public addresses; set webhooks.allow_private_networks to allow it"
    )]
    NonPublicName(String),
}

/// Checks a URL before it is stored or used: http(s), a host, and (for an IP literal, which
/// no resolver sees) a public address unless private networks are allowed.
///
/// # Errors
/// What is wrong with it.
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, UrlRefused> {
    let url = reqwest::Url::parse(url).map_err(|e| UrlRefused::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefused::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    let host = url.host_str().ok_or(UrlRefused::NoHost)?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    if let Ok(ip) = literal
        && !allow_private
        && !is_public(ip)
    {
        return Err(UrlRefused::NonPublicAddress(ip));
    }
    Ok(url)
}

/// Resolves names and keeps only addresses the guard allows.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    /// Let non-public addresses through.
    pub allow_private: bool,
}

/// Why a name gave no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The resolver failed.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The name looked up.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Every address of the name is one the guard refuses.
    #[error("refused by the SSRF guard: the host resolves only to non-public addresses")]
    Refused,
}

impl GuardedResolver {
    /// Resolves `host` and keeps the allowed addresses.
    ///
    /// # Errors
    /// When resolution fails or nothing allowed is left.
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, LookupError> {
        let found =
            tokio::net::lookup_host((host, 0))
                .await
                .map_err(|source| LookupError::Resolve {
                    host: host.to_owned(),
                    source,
                })?;
        let allowed: Vec<SocketAddr> = found
            .filter(|a| self.allow_private || is_public(a.ip()))
            .collect();
        if allowed.is_empty() {
            Err(LookupError::Refused)
        } else {
            Ok(allowed)
        }
    }
}

/// Whether `e`, or an error it was caused by, is the guard's refusal of a name (as reqwest
/// reports a connection the resolver refused).
pub fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if matches!(e.downcast_ref::<LookupError>(), Some(LookupError::Refused)) {
            return true;
        }
        next = e.source();
    }
    false
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
    fn every_ipv6_form_that_embeds_an_ipv4_address_is_classified_as_that_address() {
        for private in [
            // IPv4-compatible (deprecated, RFC 4291 2.5.5.1)
            "::127.0.0.1",
            "::10.0.0.1",
            "::169.254.169.254",
            // IPv4-translated (RFC 2765)
            "::ffff:0:127.0.0.1",
            "::ffff:0:192.168.1.1",
            // IPv4-mapped, for completeness
            "::ffff:10.1.2.3",
            // local-use NAT64 (RFC 8215) and Teredo (RFC 4380) may reach private IPv4 too
            "64:ff9b:1::a00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["::8.8.8.8", "::ffff:0:8.8.8.8", "::ffff:93.184.216.34"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for url in [
            "http://[::127.0.0.1]/hook",
            "http://[::ffff:0:127.0.0.1]/hook",
        ] {
            assert!(
                matches!(check_url(url, false), Err(UrlRefused::NonPublicAddress(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn urls_are_checked_before_use() {
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert_eq!(
            check_url("http://127.0.0.1:9000/hook", false).unwrap_err(),
            UrlRefused::NonPublicAddress("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            check_url("http://[::1]/hook", false).unwrap_err(),
            UrlRefused::NonPublicAddress("::1".parse().unwrap())
        );
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
        assert_eq!(
            check_url("ftp://example.com", false).unwrap_err(),
            UrlRefused::Scheme
        );
        assert_eq!(
            check_url("https://user:pw@example.com", false).unwrap_err(),
            UrlRefused::Credentials
        );
        assert!(matches!(
            check_url("not a url", false),
            Err(UrlRefused::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_unless_allowed() {
        let refused = GuardedResolver {
            allow_private: false,
        }
        .lookup("localhost")
        .await
        .unwrap_err();
        assert!(matches!(refused, LookupError::Refused), "{refused}");
        assert!(
            GuardedResolver {
                allow_private: true
            }
            .lookup("localhost")
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn a_refusal_is_found_by_type_in_a_client_error() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(resolver(false))
            .build()
            .unwrap();
        let e = client.get("http://localhost:9/").send().await.unwrap_err();
        assert!(is_refusal(&e), "{e:?}");
        let other = std::io::Error::other("connection refused");
        assert!(!is_refusal(&other));
    }
}
