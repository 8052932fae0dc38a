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

use super::within;

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
        let mut server = Self {
            binary,
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            persistent,
            data_dir,
        };
        server.restart().await;
        Some(server)
    }

    /// `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// `redis://127.0.0.1:{port}/{db}`.
    pub fn url_db(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
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
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
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
                if self.query::<String>(&mut redis::cmd("PING")).await.is_ok() {
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
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
