//! Who is calling and what they may do: API keys with scopes for backends, consumer
//! tokens (JWTs, job tokens) for browsers, open mode on loopback only, and rate limits.
//!
//! # Layout
//! - [`keys`]: API keys (digests only, constant-time lookup, fingerprints for logs).
//! - [`jwt`] (+ [`der`]): consumer JWTs, HS256 / RS256 / ES256, algorithm from config.
//! - [`job_token`]: the per-job read token `POST /v1/jobs` returns.
//! - [`rate`]: token buckets per client address and per key.
//! - [`proxies`]: the client's address behind trusted reverse proxies.

pub mod der;
pub mod job_token;
pub mod jwt;
pub mod keys;
pub mod proxies;
pub mod rate;

use std::{net::IpAddr, str::FromStr, time::SystemTime};

use anyhow::Context as _;
use switchyard_protocol::{ChannelPattern, ErrorCode};
use switchyard_transports::{
    access::{Grant, Verifier},
    params::ParamError,
};

use crate::config::Config;
use job_token::JobTokens;
use jwt::{Algorithm, JwtVerifier};
use keys::{ApiKey, ApiKeys};

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Publish events.
    Publish,
    /// Submit, read and cancel jobs.
    Jobs,
    /// The worker API: claim and report.
    Work,
    /// Consume every channel (any transport) and read history.
    Subscribe,
    /// Webhooks, metrics, and every other scope.
    Admin,
}

impl Scope {
    /// The name used in config and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Jobs => "jobs",
            Self::Work => "work",
            Self::Subscribe => "subscribe",
            Self::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "publish" => Ok(Self::Publish),
            "jobs" => Ok(Self::Jobs),
            "work" => Ok(Self::Work),
            "subscribe" => Ok(Self::Subscribe),
            "admin" => Ok(Self::Admin),
            _ => Err(()),
        }
    }
}

/// Checks `[auth]` without touching the disk: key entries, the algorithm, the HS256
/// secret's length and the public key file.
///
/// # Errors
/// The first bad value, named by its key (never echoing a secret).
pub fn check_config(a: &crate::config::AuthConfig) -> anyhow::Result<()> {
    ApiKeys::parse(&a.api_keys)?;
    jwt_verifier(a).map(drop)
}

/// The JWT verifier `[auth]` configures, if any.
fn jwt_verifier(a: &crate::config::AuthConfig) -> anyhow::Result<Option<JwtVerifier>> {
    let algorithm: Algorithm = a.jwt_algorithm.parse().map_err(|()| {
        anyhow::anyhow!(
            "`auth.jwt_algorithm` must be HS256, RS256 or ES256, got {:?}",
            a.jwt_algorithm
        )
    })?;
    let verifier = match algorithm {
        Algorithm::Hs256 if a.jwt_secret.is_empty() => None,
        Algorithm::Hs256 => Some(JwtVerifier::hs256(&a.jwt_secret)?),
        _ if a.jwt_public_key_file.is_empty() => anyhow::bail!(
            "`auth.jwt_algorithm` = {} needs `auth.jwt_public_key_file`",
            algorithm.as_str()
        ),
        _ => {
            let pem = std::fs::read(&a.jwt_public_key_file)
                .with_context(|| format!("reading {}", a.jwt_public_key_file))?;
            Some(JwtVerifier::public_key(algorithm, &pem)?)
        }
    };
    Ok(verifier.map(|v| v.expecting(&a.jwt_issuer, &a.jwt_audience)))
}

/// Every credential the server accepts.
#[derive(Debug)]
pub struct Auth {
    /// Backends' API keys; none configured = open mode.
    pub keys: ApiKeys,
    jwt: Option<JwtVerifier>,
    /// Issues and checks job tokens.
    pub job_tokens: JobTokens,
}

impl Auth {
    /// Builds the credentials from `[auth]`, signing job tokens with `job_tokens` (its key
    /// lives in the data directory, or in Redis, shared by every node).
    ///
    /// # Errors
    /// A bad key entry, JWT secret or public key.
    pub fn from_config(config: &Config, job_tokens: JobTokens) -> anyhow::Result<Self> {
        let keys = ApiKeys::parse(&config.auth.api_keys)?;
        let jwt = jwt_verifier(&config.auth)?;
        Ok(Self {
            keys,
            jwt,
            job_tokens,
        })
    }

    /// Open mode: no API keys, so no credential is asked for (loopback only).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The API key `token` is, if any.
    pub fn key(&self, token: &str) -> Option<&ApiKey> {
        self.keys.find(token)
    }

    /// The consumer grant behind `token`: an API key with `subscribe` (every channel), a
    /// job token (its job's channel), or a JWT (its `channels`).
    ///
    /// # Errors
    /// `unauthorized`, `token_expired`, or `forbidden` for a key without `subscribe`.
    pub fn grant(&self, token: &str) -> Result<Grant, ParamError> {
        if let Some(key) = self.keys.find(token) {
            return if key.has(Scope::Subscribe) {
                Ok(Grant::everything())
            } else {
                Err(ParamError {
                    code: ErrorCode::Forbidden,
                    message: "this API key lacks the `subscribe` scope".into(),
                })
            };
        }
        if token.starts_with(job_token::PREFIX) {
            let id = self
                .job_tokens
                .verify(token)
                .ok_or_else(|| refuse("job token is not valid"))?;
            let pattern = ChannelPattern::new(crate::jobs::channel::job_channel(id).as_str())
                .map_err(|_| refuse("job token is not valid"))?;
            return Ok(Grant::channels(vec![pattern], None).with_subject(&format!("job:{id}")));
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token, SystemTime::now()),
            None => Err(refuse(
                "unknown token: it is no API key or job token, and no JWT key is configured",
            )),
        }
    }
}

impl Verifier for Auth {
    fn verify(&self, token: &str) -> Result<Grant, ParamError> {
        self.grant(token)
    }
}

/// An `unauthorized` refusal.
pub(crate) fn refuse(message: &str) -> ParamError {
    ParamError {
        code: ErrorCode::Unauthorized,
        message: message.to_owned(),
    }
}

/// Whether open mode may serve on `ip`: only where nothing but this machine reaches it.
pub fn open_mode_allowed(ip: IpAddr) -> bool {
    ip.is_loopback()
}
