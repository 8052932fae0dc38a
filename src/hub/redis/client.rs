//! The Redis client a node connects with: the `engine` URL, plus TLS from `[redis]` for a
//! `rediss://` URL (a private CA, a client certificate for mutual TLS).

use anyhow::Context as _;

use crate::config::Config;

/// The client for `url` (the `engine`), with the `redis.tls_*` files read when set.
///
/// # Errors
/// When a TLS file cannot be read or holds no PEM data, or the client rejects the URL.
pub(crate) fn client(url: &str, config: &Config) -> anyhow::Result<redis::Client> {
    let shown = config.engine_redacted();
    if !url.starts_with("rediss://") {
        return redis::Client::open(url).with_context(|| format!("engine {shown}"));
    }
    // rustls wants one crypto provider per process; a second install is a harmless error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = &config.redis;
    let root_cert = pem_file("redis.tls_ca_file", &tls.tls_ca_file)?;
    let client_tls = match (
        pem_file("redis.tls_client_cert_file", &tls.tls_client_cert_file)?,
        pem_file("redis.tls_client_key_file", &tls.tls_client_key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return redis::Client::open(url).with_context(|| format!("engine {shown}"));
    }
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .with_context(|| format!("engine {shown}: TLS settings in [redis]"))
}

/// The contents of the PEM file at `path` ("" = not set).
fn pem_file(key: &str, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
    if path.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read(path).with_context(|| format!("`{key}`: reading {path}"))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        anyhow::bail!("`{key}`: {path} holds no PEM data");
    }
    Ok(Some(pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_must_exist_and_hold_pem() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let mut config = Config {
            engine: "rediss://127.0.0.1:6380/0".into(),
            ..Config::default()
        };
        config.redis.tls_ca_file = junk.display().to_string();
        let err = format!("{:#}", client(&config.engine, &config).unwrap_err());
        assert!(
            err.contains("redis.tls_ca_file") && err.contains("no PEM"),
            "{err}"
        );
        config.redis.tls_ca_file = dir.path().join("missing.pem").display().to_string();
        let err = format!("{:#}", client(&config.engine, &config).unwrap_err());
        assert!(err.contains("reading"), "{err}");
        config.redis.tls_ca_file = String::new();
        assert!(client(&config.engine, &config).is_ok(), "system roots");
    }
}
