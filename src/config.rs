//! Configuration: built-in defaults, an optional TOML file, `SWITCHYARD_*` environment
//! variables, then command-line flags; validated once, then turned into plain structs.

mod errors;
mod namespaces;

pub use namespaces::{ChannelsConfig, NamespaceConfig};

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use anyhow::bail;
use errors::{InvalidSetting, Setting};
use figment::{
    Figment,
    providers::{Format, Toml},
    value::Value,
};
use serde::{Deserialize, Serialize};
use switchyard_transports::TransportConfig;

/// The documented defaults; also the text of `--help`'s configuration section.
pub const DEFAULT_TOML: &str = include_str!("../config.default.toml");

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "SWITCHYARD_";

/// Variables with the prefix that are not configuration keys: `--config`'s own variable,
/// and the test suites' (CI exports them; a server binary a test starts inherits them).
const NOT_KEYS: [&str; 6] = [
    "SWITCHYARD_CONFIG",
    "SWITCHYARD_BIN",
    "SWITCHYARD_REQUIRE_BROWSER",
    "SWITCHYARD_REQUIRE_CURL",
    "SWITCHYARD_REQUIRE_NCHAN",
    "SWITCHYARD_REQUIRE_REDIS",
];

/// Keys whose environment value is taken as text as it is: secrets and origins may look
/// like numbers (an all-digit key) or lists (`[`), and must not be reinterpreted.
const TEXT_KEYS: [&str; 13] = [
    "engine",
    "redis.tls_ca_file",
    "redis.tls_client_cert_file",
    "redis.tls_client_key_file",
    "limits.trusted_proxies",
    "limits.client_ip_header",
    "auth.api_keys",
    "auth.jwt_secret",
    "auth.jwt_algorithm",
    "auth.jwt_public_key_file",
    "auth.jwt_issuer",
    "auth.jwt_audience",
    "cors.allowed_origins",
];

/// The whole configuration. See `config.default.toml` for each key's meaning and default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where durable data lives.
    pub data_dir: PathBuf,
    /// `embedded` (SQLite and in-process fan-out, one node) or `redis://host:port/db`
    /// (several nodes sharing one Redis or Valkey primary).
    pub engine: String,
    /// Seconds allowed for a graceful shutdown.
    pub shutdown_grace_secs: u64,
    /// Seconds `/readyz` answers 503 before shutdown starts.
    pub shutdown_drain_secs: u64,
    /// How log lines on stderr are written.
    pub log_format: LogFormat,
    /// Per-channel history bounds.
    pub history: HistoryConfig,
    /// Server-wide limits.
    pub limits: LimitsConfig,
    /// Shared by SSE, stream and long-poll consumers (and WebSocket queues).
    pub consumers: ConsumersConfig,
    /// WebSocket limits and keep-alive.
    pub websocket: WebSocketConfig,
    /// Long-poll holds and page sizes.
    pub poll: PollConfig,
    /// Job attempts and leases.
    pub jobs: JobsConfig,
    /// Outbound webhook delivery.
    pub webhooks: WebhooksConfig,
    /// API keys and consumer tokens.
    pub auth: AuthConfig,
    /// Browser origins allowed to call the API and open WebSockets.
    pub cors: CorsConfig,
    /// The PollToPush demo page and its optional built-in worker.
    pub demo: DemoConfig,
    /// The Redis engine's timeouts and leases (unused by the embedded engine).
    pub redis: RedisConfig,
    /// The rules of channels no namespace matches.
    pub channels: ChannelsConfig,
    /// Channel families with their own rules, first match wins.
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
}

/// How log lines on stderr are written (`log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one readable line per event, coloured on a terminal.
    #[default]
    Text,
    /// For log shippers: one JSON object per line (`timestamp`, `level`, `target`,
    /// `message`, the event's fields, and the request's `span`).
    Json,
}

/// `[redis]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Longest one Redis round trip may take before the operation fails as unavailable.
    pub op_timeout_ms: u64,
    /// Seconds a webhook delivery picked up by one node's dispatcher stays leased to it.
    pub delivery_lease_secs: u64,
    /// Seconds after which a node that stopped renewing its liveness key (killed, or cut
    /// off from Redis) has its presence members removed.
    pub presence_ttl_secs: u64,
    /// With `rediss://`: PEM file of the CA certificates that may sign Redis's certificate,
    /// instead of the system's roots ("" = the system's roots).
    pub tls_ca_file: String,
    /// With `rediss://`: PEM certificate chain this node presents to Redis (mutual TLS,
    /// Redis's `tls-auth-clients yes`), with `tls_client_key_file` ("" = none).
    pub tls_client_cert_file: String,
    /// With `rediss://`: PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: String,
}

/// Which engine `engine` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    /// SQLite in `data_dir` and in-process fan-out.
    Embedded,
    /// Redis (or Valkey) at this `redis://` URL.
    Redis(String),
}

impl Config {
    /// The engine `engine` names (validated at load).
    pub fn engine(&self) -> Engine {
        if self.engine == "embedded" {
            Engine::Embedded
        } else {
            Engine::Redis(self.engine.clone())
        }
    }

    /// `engine` and the `redis.tls_*` keys: a Redis URL the client accepts, TLS settings
    /// only with `rediss://`, and certificate checks never turned off.
    fn check_engine(&self) -> anyhow::Result<()> {
        let tls = self.engine.starts_with("rediss://");
        if self.engine != "embedded" {
            if !tls && !self.engine.starts_with("redis://") {
                bail!(
                    "`engine` must be \"embedded\" or a redis://host:port/db (rediss:// for TLS) URL, got {:?}",
                    self.engine_redacted()
                );
            }
            if tls && self.engine.contains('#') {
                bail!(
                    "`engine` {:?}: the Redis server's certificate is always checked (no #insecure); trust a private CA with `redis.tls_ca_file`",
                    self.engine_redacted()
                );
            }
            redis::Client::open(self.engine.as_str()).map_err(|e| {
                anyhow::anyhow!(
                    "`engine` {:?} is not a valid Redis URL: {e}",
                    self.engine_redacted()
                )
            })?;
        }
        let r = &self.redis;
        for (key, value) in [
            ("redis.tls_ca_file", &r.tls_ca_file),
            ("redis.tls_client_cert_file", &r.tls_client_cert_file),
            ("redis.tls_client_key_file", &r.tls_client_key_file),
        ] {
            if !value.is_empty() && !tls {
                bail!("`{key}` is set, but `engine` is not a rediss:// (TLS) URL");
            }
        }
        if r.tls_client_cert_file.is_empty() != r.tls_client_key_file.is_empty() {
            bail!(
                "`redis.tls_client_cert_file` and `redis.tls_client_key_file` go together: set both or neither"
            );
        }
        Ok(())
    }

    /// `engine` with any password in the URL replaced by [`REDACTED`], for logs and
    /// `switchyard config`.
    pub fn engine_redacted(&self) -> String {
        redact_url_password(&self.engine)
    }
}

/// `scheme://user:password@host...` → `scheme://user:<redacted>@host...`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    format!("{scheme}://{user}:{REDACTED}{}", &rest[at..])
}

/// `[demo]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo page at `/demo` (404 when off). Default `true`.
    pub enabled: bool,
    /// Run the built-in demo worker in-process. It claims *every* queued job, so it is off
    /// by default. Default `false`.
    pub worker: bool,
    /// Simulated work per country of the built-in worker, milliseconds. Default 500.
    pub delay_ms: u64,
}

/// `[auth]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `KEY` (every scope) or `KEY:scope+scope`; none = open mode (loopback only).
    #[serde(deserialize_with = "string_list")]
    pub api_keys: Vec<String>,
    /// `HS256`, `RS256` or `ES256`: the only algorithm consumer JWTs may use.
    pub jwt_algorithm: String,
    /// HS256 secret; empty = no HS256 JWTs.
    pub jwt_secret: String,
    /// PEM public key file for RS256 / ES256; empty = none.
    pub jwt_public_key_file: String,
    /// The `iss` consumer JWTs must carry; empty = not checked.
    pub jwt_issuer: String,
    /// What consumer JWTs' `aud` must name; empty = not checked.
    pub jwt_audience: String,
}

/// Keeps secrets out of logs and panics: keys and the JWT secret print as `<redacted>`.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = self.redacted();
        f.debug_struct("AuthConfig")
            .field("api_keys", &redacted.api_keys)
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field("jwt_secret", &redacted.jwt_secret)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

/// What secrets are replaced with when the configuration is shown.
pub const REDACTED: &str = "<redacted>";

impl AuthConfig {
    /// This section with each key (but not its scopes) and the JWT secret replaced by
    /// [`REDACTED`]: what `switchyard config` prints.
    pub fn redacted(&self) -> Self {
        let api_keys = self
            .api_keys
            .iter()
            .map(|entry| match entry.rsplit_once(':') {
                Some((_, scopes)) => format!("{REDACTED}:{scopes}"),
                None => REDACTED.to_owned(),
            })
            .collect();
        let jwt_secret = if self.jwt_secret.is_empty() {
            String::new()
        } else {
            REDACTED.to_owned()
        };
        Self {
            api_keys,
            jwt_secret,
            ..self.clone()
        }
    }
}

/// `[cors]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) or `*`.
    #[serde(deserialize_with = "string_list")]
    pub allowed_origins: Vec<String>,
}

/// A list of strings from a TOML array or comma-separated text (environment variables).
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    let raw = Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a list of text values, or comma-separated text")
    })?;
    Ok(match raw {
        Raw::List(v) => v,
        Raw::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// `[webhooks]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Delays between attempts, seconds.
    #[serde(deserialize_with = "number_list")]
    pub retry_schedule_secs: Vec<f64>,
    /// Seconds per attempt.
    pub attempt_timeout_secs: f64,
    /// Seconds of failure before an endpoint is disabled.
    pub disable_after_secs: u64,
    /// Allow non-public destination addresses.
    pub allow_private_networks: bool,
    /// Deliveries in flight overall.
    pub max_concurrency: usize,
    /// Deliveries in flight per endpoint.
    pub max_per_endpoint: usize,
    /// Endpoints that may exist.
    pub max_endpoints: usize,
    /// Seconds a finished delivery is kept.
    pub delivery_retention_secs: u64,
}

/// A list of numbers from a TOML array, a comma-separated string (environment variables),
/// or a single number.
fn number_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<f64>),
        One(f64),
        Text(String),
    }
    let raw = Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a list of numbers of seconds, or comma-separated numbers",
        )
    })?;
    match raw {
        Raw::List(v) => Ok(v),
        Raw::One(n) => Ok(vec![n]),
        Raw::Text(t) => t
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| serde::de::Error::custom("expected comma-separated numbers of seconds")),
    }
}

/// `[jobs]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Claims before a job fails for good.
    pub max_attempts: u32,
    /// Default lease, milliseconds.
    pub default_lease_ms: u64,
    /// Longest lease, milliseconds.
    pub max_lease_ms: u64,
    /// Payload bytes received at once across submits.
    pub max_inflight_bytes: usize,
    /// Of those, the most one API key may hold (open mode has no share).
    pub max_inflight_bytes_per_client: usize,
    /// Seconds a finished job is kept.
    pub retention_secs: u64,
}

/// `[history]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per channel.
    pub size: usize,
    /// Seconds an event is kept.
    pub ttl_secs: u64,
    /// Bytes of history (and idempotency keys) one channel may hold (embedded engine).
    pub max_bytes_per_channel: usize,
    /// Bytes of history (and idempotency keys) all channels may hold (embedded engine).
    pub max_bytes: usize,
}

/// `[limits]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections.
    pub max_connections: usize,
    /// Channels held in memory.
    pub max_channels: usize,
    /// Largest publish body, bytes.
    pub max_event_bytes: usize,
    /// Largest job body, bytes.
    pub max_job_bytes: usize,
    /// Seconds to send request headers.
    pub header_read_timeout_secs: u64,
    /// Seconds to send a request body.
    pub body_read_timeout_secs: u64,
    /// Open connections from one client address; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Subscriptions one client address may hold over all its connections (consumers
    /// without an API key); 0 = no limit.
    pub max_subscriptions_per_ip: usize,
    /// Subscriptions one token subject (a JWT's `sub`, a job token's job) may hold over
    /// all its connections; 0 = no limit.
    pub max_subscriptions_per_user: usize,
    /// Requests per second from one client address (requests without a valid API key;
    /// in open mode, not from loopback); 0 = no limit.
    pub requests_per_sec_per_ip: f64,
    /// Burst above that rate.
    pub request_burst_per_ip: u32,
    /// Requests per second per API key; 0 = no limit.
    pub requests_per_sec_per_key: f64,
    /// Burst above that rate.
    pub request_burst_per_key: u32,
    /// Reverse proxies (addresses or CIDR blocks) whose forwarding header names the client.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    /// The header those proxies name the client in: `x-forwarded-for` or `forwarded`.
    pub client_ip_header: String,
}

/// `[consumers]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumersConfig {
    /// Live events queued per connection.
    pub queue_capacity: usize,
    /// Channels per SSE / stream / long-poll request.
    pub max_channels_per_request: usize,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// SSE `retry:` hint, milliseconds.
    pub sse_retry_ms: u64,
    /// Seconds one write may block.
    pub send_timeout_secs: u64,
}

/// `[websocket]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Largest client message, bytes.
    pub max_message_bytes: usize,
    /// Read buffer per connection, bytes.
    pub read_buffer_bytes: usize,
    /// Seconds between pings.
    pub ping_interval_secs: u64,
    /// Seconds of silence before a peer counts as dead.
    pub idle_timeout_secs: u64,
    /// Seconds a connection opened without a token has to send its `auth` frame.
    pub auth_timeout_secs: u64,
}

/// `[poll]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Default hold, seconds.
    pub default_timeout_secs: u64,
    /// Longest hold, seconds.
    pub max_timeout_secs: u64,
    /// Default events per response.
    pub default_limit: usize,
    /// Most events per response.
    pub max_limit: usize,
}

/// Values given on the command line (highest precedence).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
}

impl Default for Config {
    fn default() -> Self {
        Self::load(None, std::iter::empty(), &Overrides::default())
            .expect("the built-in defaults are valid")
    }
}

impl Config {
    /// Layers the defaults, `file`, the `SWITCHYARD_*` pairs of `env`, and `overrides`, then
    /// validates. `env` is passed in (not read here) so tests never touch the process environment.
    ///
    /// # Errors
    /// An unreadable file, an unknown key, a value of the wrong type, or a failed check.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        for (name, value) in env {
            if NOT_KEYS.contains(&name.as_str()) {
                continue;
            }
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase().replace("__", ".");
            let value = if TEXT_KEYS.contains(&key.as_str()) {
                Value::from(value)
            } else {
                Value::from_str(&value).expect("parsing a value is infallible")
            };
            figment = figment.merge(Setting::env(&key, value, &name));
        }
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Setting::flag(
                "listen",
                listen.to_string().into(),
                "--listen",
            ));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Setting::flag(
                "data_dir",
                dir.display().to_string().into(),
                "--data-dir",
            ));
        }
        if let Some(format) = overrides.log_format {
            let name = match format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            };
            figment = figment.merge(Setting::flag("log_format", name.into(), "--log-format"));
        }
        let invalid = |e: anyhow::Error| e.context("invalid configuration");
        errors::check_known(&figment, file).map_err(invalid)?;
        let config: Config = figment
            .extract()
            .map_err(|e| invalid(errors::describe(e, file)))?;
        config
            .validate()
            .map_err(|e| invalid(errors::with_origin(e, &figment, file)))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        // Credentials are checked here too, so `switchyard config` and a refused start say
        // the same, before anything is created on disk.
        crate::auth::check_config(&self.auth)?;
        crate::auth::proxies::TrustedProxies::parse(
            &self.limits.trusted_proxies,
            crate::auth::proxies::ClientIpHeader::parse(&self.limits.client_ip_header)?,
        )?;
        fn range<T: PartialOrd + std::fmt::Display>(
            key: &'static str,
            v: T,
            lo: T,
            hi: T,
        ) -> anyhow::Result<()> {
            if v < lo || v > hi {
                return Err(InvalidSetting {
                    key,
                    message: format!("`{key}` must be from {lo} to {hi}, got {v}"),
                }
                .into());
            }
            Ok(())
        }
        self.check_engine()?;
        self.namespaces()?;
        range("redis.op_timeout_ms", self.redis.op_timeout_ms, 10, 60_000)?;
        range(
            "redis.presence_ttl_secs",
            self.redis.presence_ttl_secs,
            1,
            3600,
        )?;
        range(
            "redis.delivery_lease_secs",
            self.redis.delivery_lease_secs,
            1,
            86_400,
        )?;
        range("shutdown_drain_secs", self.shutdown_drain_secs, 0, 3600)?;
        range("history.size", self.history.size, 1, 1_000_000)?;
        range("history.ttl_secs", self.history.ttl_secs, 1, 365 * 86400)?;
        range(
            "history.max_bytes_per_channel",
            self.history.max_bytes_per_channel,
            self.limits.max_event_bytes.saturating_add(4096),
            self.history.max_bytes,
        )?;
        range(
            "limits.max_connections",
            self.limits.max_connections,
            1,
            10_000_000,
        )?;
        range(
            "limits.max_channels",
            self.limits.max_channels,
            1,
            100_000_000,
        )?;
        range(
            "limits.max_event_bytes",
            self.limits.max_event_bytes,
            64,
            64 << 20,
        )?;
        range(
            "limits.max_job_bytes",
            self.limits.max_job_bytes,
            64,
            1 << 30,
        )?;
        range(
            "limits.header_read_timeout_secs",
            self.limits.header_read_timeout_secs,
            1,
            3600,
        )?;
        range(
            "consumers.queue_capacity",
            self.consumers.queue_capacity,
            1,
            1_000_000,
        )?;
        range(
            "consumers.max_channels_per_request",
            self.consumers.max_channels_per_request,
            1,
            10_000,
        )?;
        range(
            "consumers.heartbeat_secs",
            self.consumers.heartbeat_secs,
            1,
            3600,
        )?;
        range(
            "consumers.sse_retry_ms",
            self.consumers.sse_retry_ms,
            0,
            3_600_000,
        )?;
        range(
            "consumers.send_timeout_secs",
            self.consumers.send_timeout_secs,
            1,
            3600,
        )?;
        range(
            "websocket.max_subscriptions",
            self.websocket.max_subscriptions,
            1,
            100_000,
        )?;
        range(
            "websocket.max_message_bytes",
            self.websocket.max_message_bytes,
            128,
            64 << 20,
        )?;
        range(
            "websocket.read_buffer_bytes",
            self.websocket.read_buffer_bytes,
            64,
            1 << 20,
        )?;
        range(
            "websocket.ping_interval_secs",
            self.websocket.ping_interval_secs,
            1,
            3600,
        )?;
        range(
            "websocket.idle_timeout_secs",
            self.websocket.idle_timeout_secs,
            2,
            7200,
        )?;
        range("poll.max_timeout_secs", self.poll.max_timeout_secs, 1, 60)?;
        range(
            "poll.default_timeout_secs",
            self.poll.default_timeout_secs,
            0,
            self.poll.max_timeout_secs,
        )?;
        range("poll.max_limit", self.poll.max_limit, 1, 100_000)?;
        range(
            "poll.default_limit",
            self.poll.default_limit,
            1,
            self.poll.max_limit,
        )?;
        range("jobs.max_attempts", self.jobs.max_attempts, 1, 1000)?;
        range(
            "jobs.max_lease_ms",
            self.jobs.max_lease_ms,
            100,
            7 * 86_400_000,
        )?;
        range(
            "jobs.default_lease_ms",
            self.jobs.default_lease_ms,
            100,
            self.jobs.max_lease_ms,
        )?;
        if self.jobs.max_inflight_bytes < self.limits.max_job_bytes {
            bail!("`jobs.max_inflight_bytes` must be at least `limits.max_job_bytes`");
        }
        range(
            "jobs.max_inflight_bytes_per_client",
            self.jobs.max_inflight_bytes_per_client,
            self.limits.max_job_bytes,
            self.jobs.max_inflight_bytes,
        )?;
        let w = &self.webhooks;
        if w.retry_schedule_secs.is_empty()
            || w.retry_schedule_secs.len() > 50
            || w.retry_schedule_secs
                .iter()
                .any(|s| !(0.0..=30.0 * 86400.0).contains(s))
        {
            bail!("`webhooks.retry_schedule_secs` must list 1-50 delays of 0 to 2592000 seconds");
        }
        if !(0.1..=300.0).contains(&w.attempt_timeout_secs) {
            bail!(
                "`webhooks.attempt_timeout_secs` must be from 0.1 to 300, got {}",
                w.attempt_timeout_secs
            );
        }
        range(
            "webhooks.disable_after_secs",
            w.disable_after_secs,
            1,
            365 * 86400,
        )?;
        range("webhooks.max_concurrency", w.max_concurrency, 1, 10_000)?;
        range(
            "webhooks.max_per_endpoint",
            w.max_per_endpoint,
            1,
            w.max_concurrency,
        )?;
        range("webhooks.max_endpoints", w.max_endpoints, 1, 1_000_000)?;
        range(
            "webhooks.delivery_retention_secs",
            w.delivery_retention_secs,
            1,
            10 * 365 * 86400,
        )?;
        range(
            "jobs.retention_secs",
            self.jobs.retention_secs,
            1,
            10 * 365 * 86400,
        )?;
        range(
            "limits.body_read_timeout_secs",
            self.limits.body_read_timeout_secs,
            1,
            3600,
        )?;
        let rates = [
            (
                "limits.requests_per_sec_per_ip",
                self.limits.requests_per_sec_per_ip,
            ),
            (
                "limits.requests_per_sec_per_key",
                self.limits.requests_per_sec_per_key,
            ),
        ];
        for (key, rate) in rates {
            // Below 0.001/s a bucket's refill time overflows what a timer can hold.
            if rate != 0.0 && !(0.001..=1e9).contains(&rate) {
                bail!("`{key}` must be 0 (no limit) or from 0.001 to 1e9, got {rate}");
            }
        }
        range(
            "limits.request_burst_per_ip",
            self.limits.request_burst_per_ip,
            1,
            1_000_000_000,
        )?;
        range(
            "limits.request_burst_per_key",
            self.limits.request_burst_per_key,
            1,
            1_000_000_000,
        )?;
        range(
            "websocket.auth_timeout_secs",
            self.websocket.auth_timeout_secs,
            1,
            3600,
        )?;
        for origin in &self.cors.allowed_origins {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && origin
                        .split("://")
                        .nth(1)
                        .is_some_and(|host| !host.is_empty() && !host.contains('/')));
            if !valid {
                bail!(
                    "`cors.allowed_origins`: {origin:?} is not an origin (scheme://host[:port], no path) or \"*\""
                );
            }
        }
        range("demo.delay_ms", self.demo.delay_ms, 0, 60_000)?;
        if self.websocket.idle_timeout_secs <= self.websocket.ping_interval_secs {
            bail!("`websocket.idle_timeout_secs` must exceed `websocket.ping_interval_secs`");
        }
        Ok(())
    }

    /// The channel namespaces, checked.
    ///
    /// # Errors
    /// A bad namespace (see `config/namespaces.rs`).
    pub fn namespaces(&self) -> anyhow::Result<switchyard_transports::namespaces::Namespaces> {
        namespaces::build(&self.channels, &self.namespaces, &self.history)
    }

    /// The transports' view of the configuration.
    pub fn transport_config(&self) -> TransportConfig {
        let secs = Duration::from_secs;
        TransportConfig {
            queue_capacity: self.consumers.queue_capacity,
            max_channels_per_request: self.consumers.max_channels_per_request,
            heartbeat_interval: secs(self.consumers.heartbeat_secs),
            sse_retry: Duration::from_millis(self.consumers.sse_retry_ms),
            ws_max_subscriptions: self.websocket.max_subscriptions,
            ws_max_message_bytes: self.websocket.max_message_bytes,
            ws_read_buffer_bytes: self.websocket.read_buffer_bytes,
            ws_ping_interval: secs(self.websocket.ping_interval_secs),
            ws_idle_timeout: secs(self.websocket.idle_timeout_secs),
            ws_auth_timeout: secs(self.websocket.auth_timeout_secs),
            send_timeout: secs(self.consumers.send_timeout_secs),
            poll_default_timeout: secs(self.poll.default_timeout_secs),
            poll_max_timeout: secs(self.poll.max_timeout_secs),
            poll_default_limit: self.poll.default_limit,
            poll_max_limit: self.poll.max_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn redis_passwords_are_redacted_and_urls_validated() {
        assert_eq!(
            redact_url_password("redis://:hunter2@db:6379/0"),
            "redis://:<redacted>@db:6379/0"
        );
        assert_eq!(
            redact_url_password("redis://app:hunter2@db/1"),
            "redis://app:<redacted>@db/1"
        );
        assert_eq!(
            redact_url_password("redis://db:6379/0"),
            "redis://db:6379/0"
        );
        let c = Config::load(
            None,
            env(&[("SWITCHYARD_ENGINE", "redis://:hunter2@127.0.0.1:6379/2")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.engine(),
            Engine::Redis("redis://:hunter2@127.0.0.1:6379/2".into())
        );
        assert!(!c.engine_redacted().contains("hunter2"));
        let tls = Config::load(
            None,
            env(&[
                (
                    "SWITCHYARD_ENGINE",
                    "rediss://:hunter2@redis.example:6380/0",
                ),
                ("SWITCHYARD_REDIS__TLS_CA_FILE", "/etc/ca.pem"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(tls.redis.tls_ca_file, "/etc/ca.pem");
        let bad = Config::load(
            None,
            env(&[("SWITCHYARD_ENGINE", "rediss://:hunter2@x/0#insecure")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(!format!("{bad:#}").contains("hunter2"), "{bad:#}");
    }

    #[test]
    fn defaults_match_the_api_contract() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./switchyard-data"));
        assert_eq!(c.engine, "embedded");
        assert_eq!(c.limits.max_job_bytes, 10 * 1024 * 1024);
        assert_eq!(c.consumers.heartbeat_secs, 15);
        assert!(c.demo.enabled, "the demo page is served by default");
        assert!(
            !c.demo.worker,
            "the demo worker would claim every job: off by default"
        );
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[history]\nsize = 5\nttl_secs = 7\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("SWITCHYARD_HISTORY__SIZE", "9"),
                ("SWITCHYARD_DATA_DIR", "/tmp/x"),
                ("SWITCHYARD_CONFIG", "/ignored/here.toml"),
                ("SWITCHYARD_REQUIRE_BROWSER", "1"),
                ("OTHER_THING", "1"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:9100".parse().unwrap()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9100, "flag beats file");
        assert_eq!(c.history.size, 9, "env beats file");
        assert_eq!(c.history.ttl_secs, 7, "file beats default");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn retry_schedules_come_as_lists_or_comma_separated_text() {
        let load = |v: &str| {
            Config::load(
                None,
                env(&[("SWITCHYARD_WEBHOOKS__RETRY_SCHEDULE_SECS", v)]),
                &Overrides::default(),
            )
            .map(|c| c.webhooks.retry_schedule_secs)
        };
        assert_eq!(load("1,2.5, 30").unwrap(), [1.0, 2.5, 30.0]);
        assert_eq!(load("7").unwrap(), [7.0]);
        assert!(load("1,soon").is_err());
        assert_eq!(Config::default().webhooks.retry_schedule_secs.len(), 7);
        assert!(!Config::default().webhooks.allow_private_networks);
    }

    #[test]
    fn secrets_from_the_environment_stay_text() {
        let load = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &Overrides::default());
        let c = load(&[
            (
                "SWITCHYARD_AUTH__API_KEYS",
                "12345678901234567890123, [bracketed-key-0123:publish",
            ),
            (
                "SWITCHYARD_AUTH__JWT_SECRET",
                "00000000000000000000000000000000001",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.auth.api_keys,
            ["12345678901234567890123", "[bracketed-key-0123:publish"]
        );
        assert_eq!(c.auth.jwt_secret, "00000000000000000000000000000000001");
        // Credentials are checked at load, naming the key and never echoing the secret.
        let short = format!(
            "{:#}",
            load(&[("SWITCHYARD_AUTH__JWT_SECRET", "tiny-secret")]).unwrap_err()
        );
        assert!(
            short.contains("auth.jwt_secret") && !short.contains("tiny-secret"),
            "{short}"
        );
        let alg = format!(
            "{:#}",
            load(&[("SWITCHYARD_AUTH__JWT_ALGORITHM", "HS512")]).unwrap_err()
        );
        assert!(alg.contains("auth.jwt_algorithm"), "{alg}");
        let redacted = format!("{:?}", c.auth);
        assert!(!redacted.contains("12345678901234567890123"), "{redacted}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let err = |pairs: &[(&str, &str)]| {
            format!(
                "{:#}",
                Config::load(None, env(pairs), &Overrides::default()).unwrap_err()
            )
        };
        assert!(err(&[("SWITCHYARD_HISTORY__SIZE", "0")]).contains("history.size"));
        assert!(
            err(&[("SWITCHYARD_LIMITS__REQUESTS_PER_SEC_PER_IP", "1e-300")])
                .contains("limits.requests_per_sec_per_ip")
        );
        assert!(err(&[("SWITCHYARD_HISTORY__SIZE", "lots")]).contains("size"));
        assert!(
            err(&[("SWITCHYARD_POLL__MAX_TIMEOUT_SECS", "61")]).contains("poll.max_timeout_secs")
        );
        assert!(err(&[("SWITCHYARD_NO_SUCH_KEY", "1")]).contains("no_such_key"));
        assert!(err(&[("SWITCHYARD_DEMO__DELAY_MS", "60001")]).contains("demo.delay_ms"));
        assert!(err(&[("SWITCHYARD_DEMO__WORKERS", "true")]).contains("workers"));
        assert!(err(&[("SWITCHYARD_ENGINE", "postgres://127.0.0.1/x")]).contains("engine"));
        assert!(
            err(&[("SWITCHYARD_ENGINE", "rediss://127.0.0.1/0#insecure")]).contains("#insecure")
        );
        assert!(err(&[("SWITCHYARD_REDIS__TLS_CA_FILE", "/ca.pem")]).contains("redis.tls_ca_file"));
        assert!(
            err(&[
                ("SWITCHYARD_ENGINE", "rediss://127.0.0.1/0"),
                ("SWITCHYARD_REDIS__TLS_CLIENT_CERT_FILE", "/c.pem"),
            ])
            .contains("set both or neither")
        );
        assert!(err(&[("SWITCHYARD_REDIS__DELIVERY_LEASE_SECS", "0")]).contains("delivery_lease"));
        assert!(err(&[("SWITCHYARD_LISTEN", "nowhere")]).contains("listen"));
        assert!(
            err(&[("SWITCHYARD_LIMITS__CLIENT_IP_HEADER", "x-real-ip")])
                .contains("limits.client_ip_header")
        );
        let missing = Config::load(
            Some(std::path::Path::new("/no/such.toml")),
            env(&[]),
            &Overrides::default(),
        );
        assert!(format!("{:#}", missing.unwrap_err()).contains("does not exist"));
    }
}
