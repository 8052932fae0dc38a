//! The browser client and the demo page: how they are served, and the browser suite
//! (`tests/browser/*.test.mjs`, run by `node --test`), which drives Debian's Chromium with
//! playwright-core against the real server binary: each forced transport, the `/demo` page
//! end to end (saving `target/browser/demo.png`), fallback when WebSocket is refused, and
//! resuming a job after a server restart.
//!
//! When node, `tests/browser/node_modules/playwright-core` or `/usr/bin/chromium` is
//! missing, the suite is skipped with a loud note, unless `CI` or
//! `SWITCHYARD_REQUIRE_BROWSER=1` is set: then it fails. `.ci/run` installs all three.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use crate::support::{config, http::request, start};

const CHROMIUM: &str = "/usr/bin/chromium";

/// What the browser suite needs that this machine lacks.
fn missing_tools(root: &Path) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node {
        missing.push("node");
    }
    if !root
        .join("tests/browser/node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push("playwright-core (npm ci --prefix tests/browser)");
    }
    if !Path::new(CHROMIUM).is_file() {
        missing.push("chromium (apt-get install -y chromium)");
    }
    missing
}

#[test]
fn browser_suite_passes_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let missing = missing_tools(root);
    if !missing.is_empty() {
        let required = std::env::var_os("CI").is_some()
            || std::env::var("SWITCHYARD_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "the browser tests must run here (CI or SWITCHYARD_REQUIRE_BROWSER=1), but this machine lacks: {}; `bash .ci/run` installs them",
            missing.join(", ")
        );
        eprintln!(
            "SKIPPED: the browser tests (tests/browser) need {}",
            missing.join(", ")
        );
        return;
    }
    let out = Command::new("node")
        .args(["--test", "tests/browser/"])
        .current_dir(root)
        .env("SWITCHYARD_BIN", env!("CARGO_BIN_EXE_switchyard"))
        .stdin(Stdio::null())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The runner's closing lines (`# tests 15`, `# pass 15`, ...), for the log.
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("# ") && !l.starts_with("# Subtest"))
        .collect();
    eprintln!("browser suite: {}", summary.join(" | "));
    assert!(
        stdout.contains("# fail 0") && !stdout.contains("# pass 0"),
        "the browser suite ran no test or failed one:\n{stdout}"
    );
}

#[tokio::test]
async fn browser_files_are_served_with_their_types() {
    let server = start(config()).await;
    let (status, headers, body) = request(server.addr, "GET", "/v1/client.js", &[], vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"], "text/javascript; charset=utf-8",
        "browsers refuse to run a module of another type"
    );
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(body, switchyard::api::assets::CLIENT_JS.as_bytes());
    let (status, headers, body) = request(server.addr, "GET", "/demo", &[], vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        String::from_utf8_lossy(&body).contains(r#"import { Switchyard } from "/v1/client.js""#)
    );
    // The page may talk to its own gateway only, and may not be framed (the browser suite
    // runs the demo under this policy).
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["referrer-policy"], "no-referrer");
    server.shutdown().await;
}

#[tokio::test]
async fn the_browser_demo_page_is_404_when_turned_off() {
    let mut c = config();
    c.demo.enabled = false;
    let server = start(c).await;
    let (status, _, body) = request(server.addr, "GET", "/demo", &[], vec![]).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    crate::support::http::assert_error(status, &body, 404, "not_found");
    let (status, _, _) = request(server.addr, "GET", "/v1/client.js", &[], vec![]).await;
    assert_eq!(
        status, 200,
        "the client is served whatever demo.enabled says"
    );
    server.shutdown().await;
}
