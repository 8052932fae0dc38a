//! The real server binary as a child process, with its log captured line by line.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use super::WAIT;

/// A running server binary.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything it wrote to stderr (its log) and stdout so far.
    pub log: Arc<Mutex<String>>,
    /// The threads copying its stderr and stdout into `log`, done once it has exited.
    readers: Vec<JoinHandle<()>>,
}

impl ServerProcess {
    /// Stops the server as a service manager would (SIGTERM), waits for it to exit, and
    /// returns its exit status and its whole output.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let terminated = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(terminated.success(), "kill -TERM failed");
        let mut child = self.child;
        let (exited_tx, exited_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = exited_tx.send(child.wait());
        });
        let status = exited_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the server did not exit within {WAIT:?} of SIGTERM"))
            .unwrap();
        // Its pipes are closed: the readers reach their end.
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }
}

/// The address in the startup line (`switchyard listening`), in either log format:
/// `... listen=127.0.0.1:1234 ...` or `{"listen":"127.0.0.1:1234",...}`.
fn listen_addr(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return value.get("listen")?.as_str()?.parse().ok();
    }
    line.split("listen=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(|addr| addr.parse().unwrap())
}

/// The server binary with only the configuration a test gives: `SWITCHYARD_*` variables
/// of the shell running the tests (CI exports some) are not inherited.
fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWITCHYARD_")) {
        command.env_remove(name);
    }
    command
}

/// Starts the binary on a free loopback port in `data_dir`, with extra environment
/// variables, and reads its address from the startup log line.
pub fn spawn(data_dir: &Path, envs: &[(&str, &str)]) -> ServerProcess {
    let mut child = command()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    // The log (and so the startup line with the address) is on stderr.
    let stderr = child.stderr.take().unwrap();
    let err_log = Arc::clone(&log);
    let err_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = listen_addr(&line) {
                let _ = tx.send(addr);
            }
            let mut log = err_log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let out_log = Arc::clone(&log);
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        out_log.lock().unwrap().push_str(&text);
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "the server reports its address; log:\n{}",
                log.lock().unwrap()
            )
        });
    ServerProcess {
        child,
        addr,
        log,
        readers: vec![err_reader, out_reader],
    }
}

/// Runs the binary with `args` and `envs` to completion: (exit success, stdout + stderr).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = output(args, envs);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs the binary with `args` and `envs` to completion: its exit status and its stdout
/// and stderr apart. One still running after [`WAIT`] (it started serving where it should
/// have refused) is killed and fails the test.
pub fn output(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let child = command()
        .args(args)
        .env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = child.id().to_string();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("`switchyard {}` still runs after {WAIT:?}", args.join(" "))
        }
    }
}
