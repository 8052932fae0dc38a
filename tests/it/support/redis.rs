//! A private `redis-server` per test, on a free loopback port, with no persistence (or, from
//! [`RedisServer::start_persistent`], an AOF fsync'd on every write); killed when dropped.
//! Tests that need one skip loudly when the binary is missing, unless `CI` or
//! `SWITCHYARD_REQUIRE_REDIS=1` is set: then a missing server fails the test.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{certs::Certs, within};

/// A running (or killed, to be restarted) redis-server.
pub struct RedisServer {
    binary: PathBuf,
    child: Option<Child>,
    /// Its loopback port, kept across restarts.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Keeps its data across restarts (AOF, `appendfsync always`).
    persistent: bool,
    /// Where a persistent server keeps its data when not in `dir`: the caller's directory,
    /// which outlives this server.
    data_dir: Option<PathBuf>,
    /// Serves TLS only (`rediss://`), with these certificates.
    tls: Option<Tls>,
}

/// A TLS server's certificates, and whether it refuses clients without a certificate.
struct Tls {
    certs: Certs,
    clients_need_certs: bool,
}

fn binary() -> Option<PathBuf> {
    let standard = PathBuf::from("/usr/bin/redis-server");
    if standard.is_file() {
        return Some(standard);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    })
}

fn required() -> bool {
    std::env::var("SWITCHYARD_REQUIRE_REDIS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

impl RedisServer {
    /// Starts a fresh server; `None` (after a loud notice) when redis-server is missing and
    /// not required.
    ///
    /// # Panics
    /// When redis-server is missing but required, or does not answer `PING` in time.
    pub async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, false, None).await
    }

    /// Like [`start`](Self::start), serving TLS only, with a certificate from a private CA
    /// ([`Self::certs`]); with `clients_need_certs`, clients must present one it signed.
    /// `None` (after a loud notice) also when `openssl` is missing and not required.
    pub async fn start_tls(test: &str, clients_need_certs: bool) -> Option<Self> {
        let Some(certs) = Certs::make() else {
            assert!(
                !required(),
                "openssl is not installed, and CI or SWITCHYARD_REQUIRE_REDIS=1 requires it (apt-get install openssl)"
            );
            eprintln!(
                "\n*** SKIPPED {test}: openssl is not installed (apt-get install openssl) ***\n"
            );
            return None;
        };
        let mut server = Self::new(test, false, None)?;
        server.tls = Some(Tls {
            certs,
            clients_need_certs,
        });
        server.restart().await;
        Some(server)
    }

    /// The certificates of a [TLS](Self::start_tls) server.
    pub fn certs(&self) -> &Certs {
        &self.tls.as_ref().expect("a TLS server").certs
    }

    /// Like [`start`](Self::start), but every write is appended to an AOF and fsync'd before
    /// Redis replies, so a restart (even after a SIGKILL) comes back with all the data.
    pub async fn start_persistent(test: &str) -> Option<Self> {
        Self::start_with(test, true, None).await
    }

    /// Like [`start_persistent`](Self::start_persistent), with the data in `dir`: another
    /// server started in `dir` later (after this one is dropped) finds it.
    pub async fn start_persistent_in(test: &str, dir: PathBuf) -> Option<Self> {
        Self::start_with(test, true, Some(dir)).await
    }

    async fn start_with(test: &str, persistent: bool, data_dir: Option<PathBuf>) -> Option<Self> {
        let mut server = Self::new(test, persistent, data_dir)?;
        server.restart().await;
        Some(server)
    }

    /// The server, not started yet.
    fn new(test: &str, persistent: bool, data_dir: Option<PathBuf>) -> Option<Self> {
        let Some(binary) = binary() else {
            assert!(
                !required(),
                "redis-server is not installed, and CI or SWITCHYARD_REQUIRE_REDIS=1 requires it (apt-get install redis-server)"
            );
            eprintln!(
                "\n*** SKIPPED {test}: redis-server is not installed (apt-get install redis-server); set SWITCHYARD_REQUIRE_REDIS=1 to fail instead ***\n"
            );
            return None;
        };
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        Some(Self {
            binary,
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            persistent,
            data_dir,
            tls: None,
        })
    }

    /// `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// `redis://127.0.0.1:{port}/{db}` (`rediss://` for a TLS server).
    pub fn url_db(&self, db: u8) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/{db}", self.port)
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and waits until it answers `PING`: empty, unless
    /// it is [persistent](Self::start_persistent).
    pub async fn restart(&mut self) {
        self.kill();
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let port = self.port.to_string();
        let mut listen = vec!["--port".into(), port.clone()];
        if let Some(tls) = &self.tls {
            let file = |name: &str| tls.certs.path(name).display().to_string();
            listen = vec!["--port".into(), "0".into(), "--tls-port".into(), port];
            for (flag, name) in [
                ("--tls-cert-file", "server.crt"),
                ("--tls-key-file", "server.key"),
                ("--tls-ca-cert-file", "ca.crt"),
            ] {
                listen.extend([flag.to_owned(), file(name)]);
            }
            let need = if tls.clients_need_certs { "yes" } else { "no" };
            listen.extend(["--tls-auth-clients".into(), need.into()]);
        }
        let child = Command::new(&self.binary)
            .args(&listen)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(self.data_dir.as_deref().unwrap_or(self.dir.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        within("redis-server to answer PING", async {
            loop {
                let r = self.query::<String>(&mut redis::cmd("PING")).await;
                eprintln!("PING {r:?}");
                if r.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Runs one command on a fresh connection.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &mut redis::Cmd,
    ) -> redis::RedisResult<T> {
        let client = match &self.tls {
            None => redis::Client::open(self.url())?,
            Some(tls) => {
                let pem = |name| std::fs::read(tls.certs.path(name)).unwrap();
                redis::Client::build_with_tls(
                    self.url(),
                    redis::TlsCertificates {
                        client_tls: Some(redis::ClientTlsConfig {
                            client_cert: pem("client.crt"),
                            client_key: pem("client.key"),
                        }),
                        root_cert: Some(pem("ca.crt")),
                    },
                )?
            }
        };
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
