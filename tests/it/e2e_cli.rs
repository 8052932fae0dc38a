//! The binary as a user runs it: a configuration mistake is reported in one line naming
//! the setting, where its value came from and the closest valid setting; JSON logs, one
//! object per line on stderr, for log shippers; and what the docs promise of the command
//! line and the environment (the real binary, embedded engine).

use std::process::Output;

use serde_json::Value;

use crate::support::{http, process};

/// Starts the gateway (the default command) with `envs` and extra `args`; it must refuse.
fn refused(args: &[&str], envs: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut all = vec![
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let Output {
        status,
        stdout,
        stderr,
    } = process::output(&all, envs);
    let stderr = String::from_utf8(stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{}", String::from_utf8_lossy(&stdout));
    assert!(
        !data.path().join("switchyard.db").exists(),
        "refused before creating anything"
    );
    stderr
}

#[test]
fn a_misspelled_environment_variable_is_named_with_the_setting_it_probably_meant() {
    assert_eq!(
        refused(&[], &[("SWITCHYARD_HISTROY__SIZE", "5")]),
        "error: invalid configuration: unknown setting `histroy.size` from environment \
         variable SWITCHYARD_HISTROY__SIZE; did you mean `history.size` \
         (SWITCHYARD_HISTORY__SIZE)?\n"
    );
    // A security setting's typo, the case the refusal exists for.
    let said = refused(&[], &[("SWITCHYARD_AUTH__API_KEY", "k")]);
    assert!(
        said.contains("did you mean `auth.api_keys` (SWITCHYARD_AUTH__API_KEYS)?"),
        "{said}"
    );
}

#[test]
fn an_unknown_key_in_the_config_file_is_named_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    std::fs::write(&file, "[history]\nsise = 5000\n").unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(
        refused(&["--config", file], &[]),
        format!(
            "error: invalid configuration: unknown setting `history.sise` from config file \
             {file}; did you mean `history.size`?\n"
        )
    );
}

#[test]
fn a_value_of_the_wrong_type_or_out_of_range_is_named_with_its_source() {
    assert_eq!(
        refused(&[], &[("SWITCHYARD_HISTORY__SIZE", "lots")]),
        "error: invalid configuration: invalid value for `history.size` from environment \
         variable SWITCHYARD_HISTORY__SIZE: expected a whole number (0 or more), found \
         \"lots\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    std::fs::write(&file, "[demo]\nenabled = \"yes\"\n").unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(
        refused(&["--config", file], &[]),
        format!(
            "error: invalid configuration: invalid value for `demo.enabled` from config file \
             {file}: expected true or false, found \"yes\"\n"
        )
    );
    assert_eq!(
        refused(&[], &[("SWITCHYARD_HISTORY__SIZE", "0")]),
        "error: invalid configuration: `history.size` must be from 1 to 1000000, got 0 \
         (from environment variable SWITCHYARD_HISTORY__SIZE)\n"
    );
    assert_eq!(
        refused(&[], &[("SWITCHYARD_LOG_FORMAT", "xml")]),
        "error: invalid configuration: invalid value for `log_format` from environment \
         variable SWITCHYARD_LOG_FORMAT: expected one of \"text\", \"json\", found \"xml\"\n"
    );
}

/// Each line of `log` as a JSON object with the fields every line carries.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
            for field in ["timestamp", "level", "target", "message"] {
                assert!(value[field].is_string(), "no `{field}` in {line}");
            }
            let timestamp = value["timestamp"].as_str().unwrap();
            assert!(
                timestamp.ends_with('Z') && timestamp.contains('T'),
                "an RFC 3339 UTC timestamp: {line}"
            );
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                    .contains(&value["level"].as_str().unwrap()),
                "{line}"
            );
            value
        })
        .collect()
}

/// The first line whose message is `message`.
fn line<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_event_and_request_fields() {
    let data = tempfile::tempdir().unwrap();
    let server = process::spawn(
        data.path(),
        &[
            ("SWITCHYARD_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,switchyard=debug"),
        ],
    );
    let addr = server.addr;
    let (status, _, _) = http::request(
        addr,
        "GET",
        "/healthz",
        &[("x-request-id", "json-log-probe-1")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    let (exit, log) = server.stop();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(!log.contains('\u{1b}'), "escape codes: {log}");
    let lines = json_lines(&log);

    let listening = line(&lines, "switchyard listening");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "switchyard");
    assert_eq!(
        listening["listen"],
        addr.to_string(),
        "fields are top-level"
    );
    assert_eq!(
        line(
            &lines,
            "OPEN MODE: no auth.api_keys configured, so every request is allowed without credentials; fine on loopback for development, never expose it"
        )["level"],
        "WARN"
    );
    // The per-request line carries the request's span, and so its id.
    let answered = line(&lines, "answered");
    assert_eq!(answered["level"], "DEBUG");
    assert_eq!(answered["status"], 200);
    assert_eq!(answered["span"]["name"], "request");
    assert_eq!(answered["span"]["request_id"], "json-log-probe-1");
    assert_eq!(answered["span"]["path"], "/healthz");
    line(&lines, "shutting down: no new connections; telling clients");
}

#[test]
fn with_the_flag_a_fatal_error_is_a_json_line_too() {
    let data = tempfile::tempdir().unwrap();
    // A port in use: the gateway fails after logging has started.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = process::output(
        &[
            "--log-format",
            "json",
            "--listen",
            &addr,
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines = json_lines(&stderr);
    let fatal = line(&lines, "switchyard stopped");
    assert_eq!(fatal["level"], "ERROR");
    assert!(
        fatal["error"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot listen on {addr}")),
        "{fatal}"
    );
    // `config` shows the flag's effect.
    let (ok, shown) = process::run(&["config", "--log-format", "json"], &[]);
    assert!(ok && shown.contains("log_format = \"json\""), "{shown}");
}

#[test]
fn options_apply_before_the_command_name_as_after_it() {
    for args in [
        ["--listen", "127.0.0.1:9999", "config"],
        ["config", "--listen", "127.0.0.1:9999"],
    ] {
        let (ok, shown) = process::run(&args, &[]);
        assert!(ok, "{shown}");
        assert!(
            shown.starts_with("listen = \"127.0.0.1:9999\"\n"),
            "{args:?}: {shown}"
        );
    }
}

#[tokio::test]
async fn an_all_digit_api_key_from_the_environment_works() {
    let key = "12345678901234567890";
    let data = tempfile::tempdir().unwrap();
    let server = process::spawn(data.path(), &[("SWITCHYARD_AUTH__API_KEYS", key)]);
    let publish = |headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        http::post_json(
            server.addr,
            "/v1/channels/digits/events",
            &headers,
            &serde_json::json!({"data": 1}),
        )
        .await
        .0
    };
    assert_eq!(
        publish(vec![("authorization", format!("Bearer {key}"))]).await,
        201
    );
    assert_eq!(publish(Vec::new()).await, 401, "keys are required");
    let (exit, log) = server.stop();
    assert!(exit.success(), "{log}");
}
