//! Test harness: start a server on port 0, publish, read metrics, and wait with timeouts.

pub mod certs;
pub mod http;
pub mod process;
pub mod receiver;
pub mod redis;
pub mod sse;
pub mod tokens;
pub mod ws;

use std::{future::Future, net::SocketAddr, time::Duration};

use serde_json::{Value, json};
pub use switchyard::config::Config;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The engine this target's servers run on, named by its crate root: `tests/it` runs on the
/// embedded engine, `tests/redis_engine` runs the same suites on Redis.
pub(crate) use crate::ENGINE;

/// An engine the servers of [`start`] can run on.
#[allow(dead_code)] // each target names one
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// SQLite in the data directory and in-process fan-out.
    Embedded,
    /// A private redis-server per server (see [`start_in`]).
    Redis,
}

impl Engine {
    pub const fn is_redis(self) -> bool {
        matches!(self, Self::Redis)
    }
}

/// True when this target runs on Redis and the calling test checks something only the
/// embedded engine has (`why`): the test then returns early.
pub fn embedded_only(why: &str) -> bool {
    if ENGINE.is_redis() {
        eprintln!("not on the Redis engine: {why}");
    }
    ENGINE.is_redis()
}

/// Longest any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Fails the test if `fut` does not finish within [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The default configuration with test-friendly timings.
/// Per-address limits are off: every test talks from 127.0.0.1, often in bursts; the
/// limit tests turn them back on.
pub fn config() -> Config {
    let mut config = Config {
        shutdown_grace_secs: 5,
        ..Config::default()
    };
    config.limits.requests_per_sec_per_ip = 0.0;
    config.limits.max_connections_per_ip = 0;
    config
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    /// The server's own data directory, removed when the test ends.
    pub data: Option<tempfile::TempDir>,
    /// Its private redis-server on the Redis engine, killed when this is dropped.
    #[allow(dead_code)] // held for its `Drop`
    pub redis: Option<redis::RedisServer>,
}

/// Starts a server with `config` on an ephemeral loopback port, in a fresh data directory.
///
/// On the Redis engine ([`ENGINE`]), a `config` still on `embedded` gets a private
/// redis-server (see [`start_in`]), without persistence: nothing restarts in this directory.
pub async fn start(mut config: Config) -> TestServer {
    let data = tempfile::tempdir().unwrap();
    config.data_dir = data.path().to_owned();
    let mut server = start_on(config, Persist::No).await;
    server.data = Some(data);
    server
}

/// Starts a server with `config` as given (its `data_dir` included).
///
/// On the Redis engine ([`ENGINE`]), a `config` still on `embedded` gets a private
/// redis-server, persistent in `data_dir`, so that a restart in the same `data_dir` finds
/// its data again, as on the embedded engine. Without redis-server (and unless CI or
/// `SWITCHYARD_REQUIRE_REDIS=1` requires it) the whole target is skipped, loudly.
pub async fn start_in(config: Config) -> TestServer {
    start_on(config, Persist::InDataDir).await
}

/// Whether a private redis-server keeps its data in the server's data directory.
enum Persist {
    No,
    InDataDir,
}

async fn start_on(mut config: Config, persist: Persist) -> TestServer {
    let redis = if ENGINE.is_redis() && config.engine == "embedded" {
        let redis = redis_engine(&config.data_dir, persist).await;
        config.engine = redis.url();
        Some(redis)
    } else {
        None
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(switchyard::run(listener, config, async {
        let _ = stop_rx.await;
    }));
    TestServer {
        addr,
        stop: Some(stop_tx),
        task,
        data: None,
        redis,
    }
}

/// A private redis-server (keeping its data in `data_dir` when asked), or the end of the
/// test binary when redis-server is not installed and not required: a test cannot report
/// itself skipped, and running the suites on the embedded engine again would prove
/// nothing, so the Redis target skips all its tests at once, saying so outside the
/// captured test output.
async fn redis_engine(data_dir: &std::path::Path, persist: Persist) -> redis::RedisServer {
    let test = "the Redis engine suites";
    let server = match persist {
        Persist::No => redis::RedisServer::start(test).await,
        Persist::InDataDir => {
            let dir = data_dir.join("redis");
            std::fs::create_dir_all(&dir).unwrap();
            redis::RedisServer::start_persistent_in(test, dir).await
        }
    };
    match server {
        Some(redis) => redis,
        None => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED every test of {}: redis-server is not installed (apt-get install redis-server); set SWITCHYARD_REQUIRE_REDIS=1 to fail instead ***\n",
                env!("CARGO_CRATE_NAME")
            );
            std::process::exit(0)
        }
    }
}

impl TestServer {
    /// Publishes `data` with `event_type` on `channel`; returns the 201 body.
    pub async fn publish(&self, channel: &str, event_type: &str, data: Value) -> Value {
        let (status, _, body) = http::post_json(
            self.addr,
            &format!("/v1/channels/{channel}/events"),
            &[],
            &json!({"type": event_type, "data": data}),
        )
        .await;
        assert_eq!(status, 201, "publish failed: {body}");
        body
    }

    /// Publishes events `from..=to` with `{"n": i}` payloads; returns their cursors.
    pub async fn publish_range(&self, channel: &str, from: u64, to: u64) -> Vec<String> {
        let mut cursors = Vec::new();
        for n in from..=to {
            let body = self.publish(channel, "tick", json!({ "n": n })).await;
            assert_eq!(body["offset"], n, "offsets are consecutive");
            cursors.push(body["cursor"].as_str().unwrap().to_owned());
        }
        cursors
    }

    /// Reads one sample of `/metrics` (`name{labels}` exactly as written).
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, _, body) = http::request(self.addr, "GET", "/metrics", &[], Vec::new()).await;
        assert_eq!(status, 200);
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {series} missing"))
            .parse()
            .unwrap()
    }

    /// Waits until `series` reaches `value`.
    pub async fn wait_metric(&self, series: &str, value: f64) {
        within(&format!("{series} == {value}"), async {
            loop {
                if self.metric(series).await == value {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Stops the server and waits for it, re-raising a panic from the server task.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        match within("server shutdown", &mut self.task).await {
            Ok(result) => result.expect("server returned an error"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Starts the shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) -> &mut JoinHandle<anyhow::Result<()>> {
        let _ = self.stop.take().unwrap().send(());
        &mut self.task
    }
}

/// A channel name unique to the calling test.
pub fn channel(test: &str) -> String {
    format!("test/{test}")
}
