//! The Redis client a node connects with: the `engine` URL, plus TLS from `[redis]` for a
//! `rediss://` URL (a private CA, a client certificate for mutual TLS), and its command
//! connection.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{Config, RedisConfig};

/// The client for `url` (the `engine`), with the `redis.tls_*` files read when set.
///
/// # Errors
/// When a TLS file cannot be read or holds no PEM data, or the client rejects the URL.
pub(crate) fn client(url: &str, config: &Config) -> anyhow::Result<redis::Client> {
    let shown = config.engine_redacted();
    let certificates = if url.starts_with("rediss://") {
        // rustls wants one crypto provider per process; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        tls_certificates(&config.redis)?
    } else {
        None
    };
    match certificates {
        None => redis::Client::open(url).with_context(|| format!("engine {shown}")),
        Some(certificates) => redis::Client::build_with_tls(url, certificates)
            .with_context(|| format!("engine {shown}: TLS settings in [redis]")),
    }
}

/// The CA and client certificate `[redis]` names; `None` when it names neither (the
/// system's roots, no client certificate: what a plain `rediss://` URL does by itself).
fn tls_certificates(tls: &RedisConfig) -> anyhow::Result<Option<redis::TlsCertificates>> {
    let root_cert = pem_file("redis.tls_ca_file", &tls.tls_ca_file)?;
    let client_tls = match (
        pem_file("redis.tls_client_cert_file", &tls.tls_client_cert_file)?,
        private_key_file("redis.tls_client_key_file", &tls.tls_client_key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
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

/// [`pem_file`] for a private key, with a warning when others may read it.
fn private_key_file(key: &str, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let pem = pem_file(key, path)?;
    if pem.is_some() {
        crate::private_files::warn_if_shared(std::path::Path::new(path), key);
    }
    Ok(pem)
}

/// Why connecting to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// Redis did not answer.
    #[error("cannot reach Redis: {0}")]
    Unreachable(String),
}

/// A command connection to `client` that reconnects on its own, every call bounded by
/// `op_timeout`: shared by the hub and the Redis store so both fail the same way.
///
/// # Errors
/// When Redis does not answer within three `op_timeout`s.
pub(crate) async fn connection_manager(
    client: &redis::Client,
    op_timeout: Duration,
) -> Result<ConnectionManager, ConnectError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(op_timeout))
        .set_response_timeout(Some(op_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    tokio::time::timeout(
        op_timeout * 3,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| ConnectError::Unreachable("timed out".into()))?
    .map_err(|e| ConnectError::Unreachable(e.to_string()))
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
