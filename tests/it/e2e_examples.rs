//! The example programs, run as a user runs them: the binaries `cargo test` builds beside
//! this one (in `target/<profile>/examples/`).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use serde_json::{Value, json};

use crate::support::{
    Config, TestServer, channel, config, http, start,
    tokens::{self, HS256_SECRET, claims},
    within,
};

const ADMIN: &str = "admin-key-0123456789abcdef";

/// A gateway with API keys (and consumer JWTs) whose auth timeout outlasts any wait of a
/// test: a client that waited for it would fail the test.
fn keyed() -> Config {
    let mut cfg = config();
    cfg.auth.api_keys = vec![ADMIN.to_owned()];
    cfg.auth.jwt_secret = HS256_SECRET.to_owned();
    cfg.websocket.auth_timeout_secs = 600;
    cfg
}

/// The example `name`'s binary. `cargo test` builds the examples before it runs any test;
/// `cargo test --test it` does not: then the test is skipped, loudly (the binary may be
/// missing or older than its source), unless CI is set, which fails it instead.
fn example(name: &str) -> Option<PathBuf> {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = profile_dir.join("examples").join(name);
    let source = format!("{}/examples/{name}.rs", env!("CARGO_MANIFEST_DIR"));
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = modified(&binary).is_some_and(|b| modified(source.as_ref()) <= Some(b));
    if built {
        return Some(binary);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(
        !ci,
        "{} is not built: run `cargo test` (or `cargo build --examples`) first",
        binary.display()
    );
    eprintln!(
        "\n*** SKIPPED: the example {name} is not built or older than its source; run `cargo build --examples` first ***\n"
    );
    None
}

/// Runs `command` to its end (within the test's wait).
async fn output(mut command: Command) -> Output {
    within(
        "the example to exit",
        tokio::task::spawn_blocking(move || command.output().unwrap()),
    )
    .await
    .unwrap()
}

fn ws_url(server: &TestServer) -> String {
    format!("ws://{}/v1/ws", server.addr)
}

#[tokio::test]
async fn ws_client_help_prints_the_usage_and_connects_nowhere() {
    let Some(ws_client) = example("ws_client") else {
        return;
    };
    let mut command = Command::new(ws_client);
    // Nothing listens there: an attempt to connect would fail instead of printing help.
    command.args(["--url", "ws://127.0.0.1:1/v1/ws", "--help"]);
    let out = output(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for option in ["--url", "--token", "--cursor", "<CHANNEL>"] {
        assert!(stdout.contains(option), "{option} in {stdout}");
    }
}

#[tokio::test]
async fn ws_client_without_a_token_on_a_keyed_gateway_says_so_at_once() {
    let Some(ws_client) = example("ws_client") else {
        return;
    };
    let server = start(keyed()).await;
    let mut command = Command::new(ws_client);
    command.args(["--url", &ws_url(&server), &channel("example-news")]);
    // Within the test's wait, far shorter than the gateway's auth timeout.
    let out = output(command).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"unauthorized\""), "{stderr}");
    assert!(stderr.contains("pass --token TOKEN"), "{stderr}");
    server.shutdown().await;
}

#[tokio::test]
async fn ws_client_prints_a_refusal_and_exits_at_once() {
    let Some(ws_client) = example("ws_client") else {
        return;
    };
    let server = start(keyed()).await;
    let token = tokens::hs256(HS256_SECRET, &claims(&["other"], 600));
    let mut command = Command::new(ws_client);
    command.args([
        "--url",
        &ws_url(&server),
        "--token",
        &token,
        &channel("example-news"),
    ]);
    let out = output(command).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"forbidden\""), "{stderr}");
    assert!(!stderr.contains("--token"), "the token was given: {stderr}");
    server.shutdown().await;
}

#[tokio::test]
async fn ws_client_prints_events_then_the_servers_close_reason() {
    let Some(ws_client) = example("ws_client") else {
        return;
    };
    let server = start(keyed()).await;
    let ch = channel("example-live");
    let mut child = Command::new(ws_client)
        .args(["--url", &ws_url(&server), "--token", ADMIN, &ch])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(serde_json::from_str::<Value>(&line).unwrap());
        }
    });
    let mut next = async || within("a line from ws_client", lines.recv()).await.unwrap();
    assert_eq!(next().await["op"], "authed");
    assert_eq!(next().await["op"], "subscribed");
    let (status, _, _) = http::post_json(
        server.addr,
        &format!("/v1/channels/{ch}/events"),
        &[("authorization", &format!("Bearer {ADMIN}"))],
        &json!({"type": "tick", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 201);
    let event = next().await;
    assert_eq!(
        (&event["op"], &event["data"]),
        (&json!("event"), &json!({"n": 1}))
    );

    server.shutdown().await;
    let out = output_of(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("closed by the gateway: 1001 server shutting down"),
        "{stderr}"
    );
}

/// Waits for a spawned `child` to exit (within the test's wait).
async fn output_of(child: std::process::Child) -> Output {
    within(
        "the example to exit",
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
    )
    .await
    .unwrap()
}
