//! The shape a webhook endpoint URL must have when it is registered: `http(s)://host[:port]`
//! then an optional path, query or fragment, where the host is a DNS name, a dotted IPv4
//! address or a bracketed IPv6 address.
//!
//! A WHATWG URL parser takes much more (`https://a*b`, `http:host`, `http://127.1`, leading
//! spaces, backslashes) and quietly rewrites it; an endpoint registered that way could never
//! be delivered to, or would not be where its owner thinks. This grammar is also what
//! `docs/openapi.json` states as the pattern of `url`, so the two can be compared.

use std::net::Ipv6Addr;

/// Checks `url` against the grammar.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn check(url: &str) -> Result<(), String> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err("`url` must start with http:// or https://".into());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !tail.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "`url` may hold only visible ASCII characters (percent-encode the rest)".into(),
        );
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6
                .split_once(']')
                .ok_or("`url` has an unclosed IPv6 address")?;
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(format!("`url` host [{addr}] is not an IPv6 address"));
            }
            match after {
                "" => (None, None),
                p => (
                    None,
                    Some(p.strip_prefix(':').ok_or("`url` has a bad port")?),
                ),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        },
    };
    if let Some(host) = host
        && !is_ipv4(host)
        && !is_domain(host)
    {
        return Err(format!(
            "`url` host {host:?} is not a DNS name (letters, digits and hyphens; the last label starts with a letter), a dotted IPv4 address or a bracketed IPv6 address"
        ));
    }
    if let Some(port) = port {
        let valid = (1..=5).contains(&port.len())
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|n| n <= 65535);
        if !valid {
            return Err("`url` port must be a number from 0 to 65535".into());
        }
    }
    Ok(())
}

/// Four decimal numbers from 0 to 255 without leading zeros (`010` would be read as octal).
fn is_ipv4(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            (1..=3).contains(&p.len())
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
                && p.parse::<u16>().is_ok_and(|n| n <= 255)
        })
}

/// Labels of 1-63 letters, digits and hyphens, not starting or ending with a hyphen, split by
/// dots (one trailing dot allowed); the last starts with a letter, so that a parser never
/// reads the host as a number.
fn is_domain(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_addresses_and_ports() {
        for ok in [
            "https://example.com/hook",
            "HTTP://Example.COM.:8080/a?b=c#d",
            "http://a",
            "http://3com.com",
            "http://x--y.b-c9/",
            "http://1.2.3.4:0",
            "http://255.255.255.255:65535?",
            "http://[::1]/",
            "http://[2001:db8::8a2e:370:7334]:443#f",
            "http://[::ffff:1.2.3.4]",
            "http://h/%zz/\\|[]@",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
            // and the URL parser takes whatever the grammar does.
            assert!(super::super::ssrf::check_url(ok, true).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_a_lenient_parser_would_rewrite() {
        for bad in [
            "ftp://example.com",
            "http:example.com",
            "http:/example.com",
            " http://example.com",
            "http://",
            "http://a*b",
            "http://a_b.com",
            "http://-a.com",
            "http://a-.com",
            "http://a..b",
            "http://user:pass@example.com",
            "http://127.1",
            "http://2130706433",
            "http://1.2.3.4.5",
            "http://010.0.0.1",
            "http://256.0.0.1",
            "http://a.0x1f",
            "http://a.b:",
            "http://a.b:65536",
            "http://a.b:123456",
            "http://a.b:8x",
            "http://[::1",
            "http://[1::2::3]",
            "http://[::1]x",
            "http://a.b/ spaced",
            "http://a.b/é",
        ] {
            assert!(check(bad).is_err(), "{bad} accepted");
        }
        assert!(check(&format!("http://{}.com", "a".repeat(64))).is_err());
    }
}
