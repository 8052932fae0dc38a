//! The server's address (from `--url`) and TCP connects, optionally from rotating source IPs.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs},
};

use anyhow::{Context as _, bail};
use tokio::net::{TcpSocket, TcpStream};

/// Connections opened from one source address before moving to the next: each loopback
/// address has ~28k ephemeral ports (`net.ipv4.ip_local_port_range`).
pub const DEFAULT_PER_SOURCE_IP: usize = 10_000;

/// Where the server listens.
#[derive(Clone, Debug)]
pub struct Target {
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `host:port` as given, for `Host` headers and WebSocket URLs.
    pub authority: String,
}

impl Target {
    /// Parses `http://host:port` (a trailing `/` is allowed; paths are not).
    ///
    /// # Errors
    /// A scheme other than `http`, a path, or a host that does not resolve.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must start with http:// (got {url:?})");
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("--url must be http://host:port without a path (got {url:?})");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        Ok(Self {
            addr,
            authority: authority.to_owned(),
        })
    }
}

/// Which local address each new connection binds to.
#[derive(Clone, Debug)]
pub struct Sources {
    ips: Vec<IpAddr>,
    per_ip: usize,
    start: usize,
}

impl Sources {
    /// From `--source-ips`: `none` (let the OS pick), `auto` (127.0.0.2..=127.0.0.254 when
    /// the server is on IPv4 loopback, else none), or a comma-separated list. `auto` starts
    /// at an address picked from the process id, so back-to-back runs do not land on ports
    /// still in `TIME_WAIT` from the previous one.
    ///
    /// # Errors
    /// An entry that is not an IP address.
    pub fn parse(spec: &str, target: &Target, per_ip: usize) -> anyhow::Result<Self> {
        let per_ip = per_ip.max(1);
        let ips: Vec<IpAddr> = match spec {
            "none" => Vec::new(),
            "auto" => match target.addr.ip() {
                IpAddr::V4(v4) if v4.is_loopback() => (2..=254)
                    .map(|d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)))
                    .collect(),
                _ => Vec::new(),
            },
            list => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse()
                        .with_context(|| format!("bad source IP {s:?}"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let start = if spec == "auto" && !ips.is_empty() {
            std::process::id() as usize % ips.len()
        } else {
            0
        };
        Ok(Self { ips, per_ip, start })
    }

    /// The OS picks the source address.
    pub fn none() -> Self {
        Self {
            ips: Vec::new(),
            per_ip: DEFAULT_PER_SOURCE_IP,
            start: 0,
        }
    }

    /// The source address of the `index`-th connection, if any is configured.
    pub fn for_index(&self, index: usize) -> Option<IpAddr> {
        if self.ips.is_empty() {
            return None;
        }
        Some(self.ips[(self.start + index / self.per_ip) % self.ips.len()])
    }
}

/// Opens a TCP connection to `target`, bound to `source` (port chosen by the OS) if given.
///
/// # Errors
/// The OS's error, e.g. `EMFILE` when out of file descriptors (see [`crate::limits`]).
pub async fn connect(target: &Target, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert!(Target::parse("https://127.0.0.1:1").is_err());
        assert!(Target::parse("http://127.0.0.1:1/v1").is_err());
    }

    #[test]
    fn rotates_source_addresses() {
        let t = Target::parse("http://127.0.0.1:9").unwrap();
        let s = Sources::parse("127.0.0.2,127.0.0.3", &t, 2).unwrap();
        let got: Vec<_> = (0..5)
            .map(|i| s.for_index(i).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "127.0.0.2",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.3",
                "127.0.0.2"
            ]
        );
        assert!(
            Sources::parse("none", &t, 2)
                .unwrap()
                .for_index(0)
                .is_none()
        );
        assert!(
            Sources::parse("auto", &t, 2)
                .unwrap()
                .for_index(0)
                .is_some()
        );
    }
}
