//! The real server binary as a child process, with its log captured line by line.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

/// A running server binary.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything it wrote to stderr (its log) and stdout so far.
    pub log: Arc<Mutex<String>>,
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
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split("listen=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
            {
                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
            }
            let mut log = err_log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let out_log = Arc::clone(&log);
    std::thread::spawn(move || {
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
    ServerProcess { child, addr, log }
}

/// Runs the binary with `args` and `envs` to completion: (exit success, stdout + stderr).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = command()
        .args(args)
        .env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .output()
        .expect("the binary runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
