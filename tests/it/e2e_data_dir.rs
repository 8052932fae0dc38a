//! The binary as a process: one gateway per data directory, its files private to the
//! gateway's user, a directory the gateway cannot write refused at startup with a message
//! that says so, and logs on stderr without colour codes when stderr is not a terminal (the
//! real binary, embedded engine).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{WAIT, process};

#[test]
fn a_second_gateway_on_the_same_data_dir_refuses_to_start_and_names_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = process::spawn(dir.path(), &[]);
    let (ok, said) = run_to_exit(gateway(dir.path()));
    assert!(!ok, "the second gateway started: {said}");
    let pid = first.child.id();
    assert!(
        said.contains(&format!("is in use by another switchyard (pid {pid})")),
        "{said}"
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Killed (as with SIGKILL, the lock goes with the process): the directory is free.
    let mut second = process::spawn(dir.path(), &[]);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

#[test]
fn a_data_dir_the_gateway_cannot_write_is_refused_at_startup() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let read_only = dir.path().join("ro");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // root may write anywhere: then the gateway runs as `nobody` (util-linux's setpriv).
    let root = std::fs::File::create(read_only.join("probe")).is_ok();
    let command = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_switchyard"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&read_only);
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWITCHYARD_")) {
            c.env_remove(name);
        }
        c
    } else {
        gateway(&read_only)
    };
    let (ok, said) = run_to_exit(command);
    assert!(!ok, "started on a read-only data_dir: {said}");
    assert!(said.contains("is not writable by this process"), "{said}");
}

/// The gateway binary on `data_dir` (a free port, no inherited `SWITCHYARD_*` variables).
fn gateway(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWITCHYARD_")) {
        command.env_remove(name);
    }
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    command
}

/// Runs `command` until it exits (success, stdout + stderr); one still running after
/// [`WAIT`] is killed and reported as started, so a refusal that does not come fails the
/// test instead of hanging it.
fn run_to_exit(mut command: Command) -> (bool, String) {
    let mut child = command
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            return (true, format!("still running after {WAIT:?}: {out:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_log_goes_to_stderr_without_colour_codes_and_stdout_stays_empty() {
    use std::io::{BufRead, BufReader, Read};

    let dir = tempfile::tempdir().unwrap();
    let mut child = gateway(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, startup) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut log = String::new();
    while !log.contains("listen=") {
        match startup.recv_timeout(WAIT) {
            Ok(line) => log.push_str(&line),
            Err(_) => {
                let _ = child.kill();
                panic!("no startup line on stderr within {WAIT:?}: {log:?}");
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log that is a pipe: {log:?}"
    );
    assert_eq!(stdout, "", "the server wrote to stdout");
}

#[test]
fn a_new_data_dir_and_its_files_are_readable_by_the_gateways_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new");
    let mut gateway = process::spawn(&dir, &[]);
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    assert_eq!(mode(&dir), 0o700, "data_dir");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for name in ["job-token.key", "switchyard.db", "switchyard.lock"] {
        assert!(files.contains(&dir.join(name)), "{name} missing: {files:?}");
    }
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
}

#[test]
fn a_job_token_key_that_others_can_read_stops_the_gateway_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("job-token.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, said) = run_to_exit(gateway(dir.path()));
    assert!(!ok, "started with a world-readable key: {said}");
    assert!(
        said.contains("has mode 644") && said.contains("chmod 600"),
        "{said}"
    );
}

#[tokio::test]
async fn readyz_reports_a_store_that_cannot_commit() {
    let server = crate::support::start(crate::support::config()).await;
    let (status, _) = crate::support::http::get_json(server.addr, "/readyz").await;
    assert_eq!(status, 200);
    // Another process takes SQLite's write lock (as a stuck backup or a full disk would
    // stop commits): reads still answer, commits cannot.
    let db = server.data.as_ref().unwrap().path().join("switchyard.db");
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (status, body) = crate::support::http::get_json(server.addr, "/readyz").await;
    crate::support::http::assert_error(status, &body, 503, "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot commit"),
        "{body}"
    );
    other.execute_batch("ROLLBACK").unwrap();
    crate::support::within("ready again", async {
        loop {
            let (status, _) = crate::support::http::get_json(server.addr, "/readyz").await;
            if status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    server.shutdown().await;
}
