//! Smoke test: every scenario at tiny scale against an in-process switchyard server
//! (`--pid` is this process, which hosts both the server and the bench), and `fanout` over
//! two in-process nodes sharing a private `redis-server` (skipped loudly when it is not
//! installed, unless `SWITCHYARD_REQUIRE_REDIS=1` or `CI` is set). `floor` needs no server;
//! `fanout`, `idle` and `compare` against Nchan start a private nginx with Nchan through
//! `bench/nchan/run.sh` (skipped loudly when nginx or the module is not installed, unless
//! `SWITCHYARD_REQUIRE_NCHAN=1` or `CI` is set).

use switchyard_bench::{
    clients::Transport,
    compare::{self, CompareOptions},
    fanout::{self, FanoutOptions, FanoutTransport},
    floor::{self, FloorOptions},
    idle::{self, IdleOptions},
    jobs::{self, JobsOptions},
    server::Server,
    webhooks::{self, WebhooksOptions},
};

/// A server on a free port with its own data directory (removed when the guard drops).
async fn start_server() -> (String, tempfile::TempDir) {
    start_server_with(|_| {}).await
}

async fn start_server_with(
    tune: impl FnOnce(&mut switchyard::config::Config),
) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = switchyard::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    // The bench talks from one address far faster than a browser would.
    config.limits.requests_per_sec_per_ip = 0.0;
    config.limits.max_connections_per_ip = 0;
    tune(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(switchyard::run(listener, config, std::future::pending()));
    (format!("http://{addr}"), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_subscribed_connections_on_each_push_transport() {
    let (url, _data) = start_server().await;
    for transport in [Transport::Ws, Transport::Sse, Transport::Stream] {
        let mut opts = IdleOptions::new(&url, transport, 20, std::process::id());
        opts.settle_secs = 0.2;
        let r = idle::run(&opts).await.unwrap();
        assert!(r.ok, "{}", r.summary());
        assert_eq!(r.connections, 20);
        assert_eq!(r.channels, 20);
        assert!(r.metrics_match, "{}", r.summary());
        assert_eq!((r.dropped, r.events_received), (0, 0));
    }
}

#[tokio::test]
async fn idle_refuses_long_poll() {
    let opts = IdleOptions::new("http://127.0.0.1:9", Transport::Poll, 1, std::process::id());
    assert!(idle::run(&opts).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_event_once_on_each_transport() {
    let (url, _data) = start_server().await;
    for (transport, rate) in [
        (FanoutTransport::Ws, 0.0),
        (FanoutTransport::Sse, 0.0),
        (FanoutTransport::Stream, 0.0),
        (FanoutTransport::Poll, 0.0),
        (FanoutTransport::Mix, 0.0),
        (FanoutTransport::Ws, 200.0),
        (FanoutTransport::Poll, 200.0),
    ] {
        let subscribers = if transport == FanoutTransport::Mix {
            8
        } else {
            5
        };
        let mut opts = FanoutOptions::new(&url, transport, subscribers, 20, std::process::id());
        opts.rate = rate;
        let r = fanout::run(&opts).await.unwrap();
        let summary = r.summary();
        assert!(r.ok, "{summary}");
        assert_eq!(
            (r.lost, r.duplicated, r.out_of_order, r.unexpected),
            (0, 0, 0, 0),
            "{summary}"
        );
        assert_eq!(r.published, 20, "{summary}");
        assert_eq!(r.delivered, subscribers as u64 * 20, "{summary}");
        assert_eq!(r.latency.samples, subscribers * 20, "{summary}");
        assert!(!r.stalled && r.disconnected == 0, "{summary}");
        // Only read, not compared: the server counts a batch after writing it, and this
        // server's counters also carry the previous iterations' stragglers.
        assert!(r.server_deliveries.is_some(), "{summary}");
        if transport == FanoutTransport::Mix {
            assert_eq!(r.by_transport.len(), 4, "{summary}");
            assert!(
                r.by_transport
                    .values()
                    .all(|t| t.subscribers == 2 && t.delivered == 40)
            );
        }
        if rate > 0.0 {
            assert!(r.publish_secs >= 19.0 / rate * 0.9, "paced: {summary}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_loss_when_the_channel_was_not_fresh() {
    let (url, _data) = start_server().await;
    // Offset 1 was published before the run: the subscribers see 2..=5 of the expected
    // 1..=5, stop at 5, and report offset 1 as lost.
    let channel = "fanout/not-fresh";
    let target = switchyard_bench::target::Target::parse(&url).unwrap();
    let mut conn = switchyard_bench::http::HttpConn::connect(&target)
        .await
        .unwrap();
    let req = conn.request(
        hyper::Method::POST,
        &switchyard_bench::publisher::publish_path(channel),
        Some((
            "application/json",
            bytes::Bytes::from_static(br#"{"data":1}"#),
        )),
    );
    assert_eq!(conn.fetch(req).await.unwrap().0, 201);
    let mut opts = FanoutOptions::new(&url, FanoutTransport::Sse, 2, 5, std::process::id());
    opts.channel = Some(channel.into());
    let r = fanout::run(&opts).await.unwrap();
    assert!(!r.ok && !r.stalled, "{}", r.summary());
    assert_eq!(
        (r.delivered, r.lost, r.duplicated),
        (8, 2, 0),
        "{}",
        r.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reports_a_stall_instead_of_hanging() {
    // The server refuses the 200-byte events (413), so nothing is ever delivered.
    let (url, _data) = start_server_with(|c| c.limits.max_event_bytes = 64).await;
    let mut opts = FanoutOptions::new(&url, FanoutTransport::Ws, 2, 5, std::process::id());
    opts.stall_secs = 1;
    let started = std::time::Instant::now();
    let r = fanout::run(&opts).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(r.stalled && !r.ok, "{}", r.summary());
    assert_eq!(
        (r.published, r.delivered, r.lost),
        (0, 0, 10),
        "{}",
        r.summary()
    );
    assert!(
        r.errors.iter().any(|e| e.contains("413")),
        "{}",
        r.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submits_every_request() {
    let (url, _data) = start_server().await;
    let mut opts = JobsOptions::new(&url, 2, std::process::id());
    opts.requests = Some(20);
    let r = jobs::run(&opts).await.unwrap();
    let summary = r.summary();
    assert!(r.ok, "{summary}");
    assert_eq!((r.sent, r.accepted, r.errors), (20, 20, 0), "{summary}");
    assert_eq!(r.latency.samples, 20, "{summary}");
    assert_eq!(r.size, 1024, "{summary}");
    assert!(
        r.submits_per_sec > 0.0 && r.server_cpu_secs >= 0.0,
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_counts_refusals_by_status() {
    // Bodies over the server's limit are refused with 413.
    let (url, _data) = start_server_with(|c| {
        c.limits.max_job_bytes = 512;
        c.jobs.max_inflight_bytes = 512;
    })
    .await;
    let mut opts = JobsOptions::new(&url, 2, std::process::id());
    opts.requests = Some(6);
    let r = jobs::run(&opts).await.unwrap();
    assert!(!r.ok, "{}", r.summary());
    assert_eq!((r.accepted, r.errors), (0, 6), "{}", r.summary());
    assert_eq!(r.errors_by_status.get("413"), Some(&6), "{}", r.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_delivers_every_event_signed() {
    let (url, _data) = start_server_with(|c| c.webhooks.allow_private_networks = true).await;
    let r = webhooks::run(&WebhooksOptions::new(&url, 20, std::process::id()))
        .await
        .unwrap();
    let summary = r.summary();
    assert!(r.ok, "{summary}");
    assert_eq!((r.published, r.delivered), (20, 20), "{summary}");
    assert_eq!(
        (r.lost, r.bad_signatures, r.duplicate_offsets, r.unexpected),
        (0, 0, 0, 0),
        "{summary}"
    );
    assert_eq!(r.latency.samples, 20, "{summary}");
    assert!(r.errors.is_empty() && !r.stalled, "{summary}");
    // The endpoint was deleted at the end.
    let target = switchyard_bench::target::Target::parse(&url).unwrap();
    let mut conn = switchyard_bench::http::HttpConn::connect(&target)
        .await
        .unwrap();
    let (status, _) = conn
        .get(&format!("/v1/webhooks/{}", r.endpoint_id))
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_with_a_dead_endpoint_still_delivers_everything_to_the_healthy_one() {
    let (url, _data) = start_server_with(|c| {
        c.webhooks.allow_private_networks = true;
        c.webhooks.attempt_timeout_secs = 2.0;
    })
    .await;
    let mut opts = WebhooksOptions::new(&url, 20, std::process::id());
    opts.dead_endpoints = 1;
    let r = webhooks::run(&opts).await.unwrap();
    let summary = r.summary();
    assert!(r.ok, "{summary}");
    assert_eq!((r.published, r.delivered, r.lost), (20, 20, 0), "{summary}");
    assert_eq!(r.dead_endpoints, 1, "{summary}");
    assert!(
        r.dead_connections >= 1,
        "the dead endpoint was tried: {summary}"
    );
    assert!(summary.contains("1 dead endpoints"), "{summary}");
    // Every endpoint the run registered was deleted at its end.
    let target = switchyard_bench::target::Target::parse(&url).unwrap();
    let mut conn = switchyard_bench::http::HttpConn::connect(&target)
        .await
        .unwrap();
    let (status, body) = conn.get("/v1/webhooks").await.unwrap();
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["webhooks"], serde_json::json!([]), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_explains_the_ssrf_guard() {
    let (url, _data) = start_server().await;
    let e = webhooks::run(&WebhooksOptions::new(&url, 5, std::process::id()))
        .await
        .unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("SWITCHYARD_WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true"),
        "{text}"
    );
}

/// A private `redis-server` on a free loopback port, without persistence; killed when
/// dropped.
struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one and waits for its `PONG`; `None` (after a loud notice) when
    /// `redis-server` is not installed and not required.
    async fn start(test: &str) -> Option<Self> {
        let required = std::env::var("SWITCHYARD_REQUIRE_REDIS").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let spawned = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                eprintln!(
                    "\n*** SKIPPED {test}: redis-server is not installed (apt-get install \
                     redis-server); set SWITCHYARD_REQUIRE_REDIS=1 to fail instead ***\n"
                );
                return None;
            }
            Err(e) => panic!("redis-server does not start: {e}"),
        };
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !server.pongs().await {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server answers PING within 10 s");
        Some(server)
    }

    async fn pongs(&self) -> bool {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut answer = [0u8; 7];
        conn.write_all(b"PING\r\n").await.is_ok()
            && conn.read_exact(&mut answer).await.is_ok()
            && &answer == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_across_two_redis_nodes() {
    let Some(redis) = RedisServer::start("fanout_across_two_redis_nodes").await else {
        return;
    };
    let (a, _data_a) = start_server_with(|c| c.engine = redis.url()).await;
    let (b, _data_b) = start_server_with(|c| c.engine = redis.url()).await;
    let me = std::process::id();

    // Subscribers on A, events published to B: every delivery crossed Redis.
    let mut opts = FanoutOptions::new(&a, FanoutTransport::Ws, 4, 20, me);
    opts.publish_url = Some(b.clone());
    opts.redis_pid = Some(redis.child.id());
    let r = fanout::run(&opts).await.unwrap();
    let summary = r.summary();
    assert!(r.ok, "{summary}");
    assert_eq!((r.published, r.delivered, r.lost), (20, 80, 0), "{summary}");
    assert_eq!(r.latency.samples, 80, "{summary}");
    assert_eq!(
        (r.nodes.clone(), r.publish_url.clone()),
        (vec![a.clone()], b.clone())
    );
    assert_eq!(r.by_node.len(), 1, "{summary}");
    assert_eq!(r.by_node[&a].subscribers, 4, "{summary}");
    assert!(r.redis_cpu_secs.is_some_and(|c| c >= 0.0), "{summary}");
    assert!(summary.contains(&format!("publishing to {b}")), "{summary}");

    // Subscribers split over A and B (every transport on each), published to B.
    let mut opts = FanoutOptions::new(&a, FanoutTransport::Mix, 8, 20, me);
    opts.url.push(b.clone());
    opts.publish_url = Some(b.clone());
    let r = fanout::run(&opts).await.unwrap();
    let summary = r.summary();
    assert!(r.ok, "{summary}");
    assert_eq!(
        (r.published, r.delivered, r.lost),
        (20, 160, 0),
        "{summary}"
    );
    assert_eq!(r.by_node.len(), 2, "{summary}");
    for node in [&a, &b] {
        let share = &r.by_node[node];
        assert_eq!((share.subscribers, share.delivered), (4, 80), "{summary}");
        assert_eq!(share.latency.samples, 80, "{summary}");
    }
    assert!(
        r.by_transport
            .values()
            .all(|t| t.subscribers == 2 && t.delivered == 40),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_writes_every_message_once_per_connection() {
    for rate in [0.0, 200.0] {
        let mut opts = FloorOptions::new(20, 5);
        opts.rate = rate;
        let r = floor::run(&opts).await.unwrap();
        let summary = r.summary();
        assert!(r.ok, "{summary}");
        assert_eq!((r.writes, r.expected_deliveries), (100, 100), "{summary}");
        assert_eq!(
            (r.write_errors, r.received_bytes),
            (0, 100 * 200),
            "{summary}"
        );
        assert!(!r.stalled && r.errors.is_empty(), "{summary}");
        assert!(r.server_cpu_secs >= 0.0, "{summary}");
        if rate > 0.0 {
            assert!(r.write_secs >= 4.0 / rate * 0.9, "paced: {summary}");
        }
    }
}

#[tokio::test]
async fn floor_refuses_empty_runs() {
    assert!(floor::run(&FloorOptions::new(0, 5)).await.is_err());
    assert!(floor::run(&FloorOptions::new(5, 0)).await.is_err());
}

/// A private nginx with Nchan on a free loopback port, started by the shipped
/// `bench/nchan/run.sh` with the shipped config; stopped when dropped.
struct NchanServer {
    child: Option<std::process::Child>,
    url: String,
    master: u32,
    workers: Vec<u32>,
    _dir: tempfile::TempDir,
}

impl NchanServer {
    /// Starts one and waits for run.sh to name its workers; `None` (after a loud notice)
    /// when nginx or Nchan is not installed and not required.
    async fn start(test: &str) -> Option<Self> {
        let required = std::env::var("SWITCHYARD_REQUIRE_NCHAN").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        let module = std::env::var("NCHAN_MODULE")
            .unwrap_or_else(|_| "/usr/lib/nginx/modules/ngx_nchan_module.so".into());
        let nginx = std::process::Command::new("nginx").arg("-v").output();
        let missing = match nginx {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("nginx is"),
            Err(e) => panic!("nginx -v does not run: {e}"),
            Ok(_) if !std::path::Path::new(&module).exists() => Some("the Nchan module is"),
            Ok(_) => None,
        };
        if let Some(what) = missing {
            assert!(
                !required,
                "{what} not installed (apt-get install nginx-light libnginx-mod-nchan), and \
                 SWITCHYARD_REQUIRE_NCHAN=1 or CI requires it"
            );
            eprintln!(
                "\n*** SKIPPED {test}: {what} not installed (apt-get install nginx-light \
                 libnginx-mod-nchan); set SWITCHYARD_REQUIRE_NCHAN=1 to fail instead ***\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/nchan/run.sh"))
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("bash runs bench/nchan/run.sh");
        // run.sh prints its NAME=value lines once both workers are started.
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut vars = std::collections::HashMap::new();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while !vars.contains_key("NCHAN_PIDS") {
                let Some(line) = lines.recv().await else {
                    break;
                };
                if let Some((k, v)) = line.split_once('=') {
                    vars.insert(k.to_owned(), v.to_owned());
                }
            }
        })
        .await;
        let master = vars.get("NCHAN_MASTER_PID").and_then(|p| p.parse().ok());
        let (Ok(()), Some(pids), Some(url), Some(master)) = (
            waited,
            vars.get("NCHAN_PIDS"),
            vars.get("NCHAN_URL"),
            master,
        ) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench/nchan/run.sh did not start Nchan within 20 s (its output: {vars:?}; \
                 nginx's log: {})",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
        };
        let workers: Vec<u32> = pids.split(',').map(|p| p.parse().unwrap()).collect();
        assert_eq!(workers.len(), 2, "two workers: {pids}");
        Some(Self {
            url: url.clone(),
            master,
            workers,
            child: Some(child),
            _dir: dir,
        })
    }
}

impl Drop for NchanServer {
    fn drop(&mut self) {
        let signal = |name: &str| {
            let _ = std::process::Command::new("bash")
                .args(["-c", &format!("kill -{name} {}", self.master)])
                .status();
        };
        // TERM makes the master stop its workers and exit; run.sh, waiting on it, reaps
        // it and exits. If that takes more than 10 s, KILL ends the master all the same.
        signal("TERM");
        let Some(mut child) = self.child.take() else {
            return;
        };
        let (exited_tx, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = exited_tx.send(child.wait());
        });
        if exited
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_err()
        {
            signal("KILL");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_idle_against_nchan() {
    let Some(nchan) = NchanServer::start("fanout_and_idle_against_nchan").await else {
        return;
    };
    for (transport, rate) in [
        (FanoutTransport::Ws, 0.0),
        (FanoutTransport::Sse, 0.0),
        (FanoutTransport::Ws, 200.0),
        (FanoutTransport::Sse, 200.0),
    ] {
        let mut opts = FanoutOptions::new(&nchan.url, transport, 5, 20, nchan.workers[0]);
        opts.server = Server::Nchan;
        opts.pids.clone_from(&nchan.workers);
        opts.rate = rate;
        let r = fanout::run(&opts).await.unwrap();
        let summary = r.summary();
        assert!(r.ok, "{summary}");
        assert_eq!(r.server, "nchan", "{summary}");
        assert_eq!((r.published, r.delivered), (20, 100), "{summary}");
        assert_eq!(
            (r.lost, r.duplicated, r.out_of_order, r.unexpected),
            (0, 0, 0, 0),
            "{summary}"
        );
        assert_eq!(r.latency.samples, 100, "{summary}");
        assert_eq!(r.server_cpu_secs_by_pid.len(), 2, "both workers: {summary}");
        assert!(r.server_deliveries.is_none(), "{summary}");
        if rate > 0.0 {
            assert!(r.publish_secs >= 19.0 / rate * 0.9, "paced: {summary}");
        }
    }
    // Nchan has no NDJSON stream.
    let mut opts = FanoutOptions::new(&nchan.url, FanoutTransport::Stream, 1, 1, nchan.workers[0]);
    opts.server = Server::Nchan;
    assert!(fanout::run(&opts).await.is_err());

    for transport in [Transport::Ws, Transport::Sse] {
        let mut opts = IdleOptions::new(&nchan.url, transport, 20, nchan.workers[0]);
        opts.server = Server::Nchan;
        opts.pids.clone_from(&nchan.workers);
        opts.settle_secs = 0.2;
        let r = idle::run(&opts).await.unwrap();
        assert!(r.ok, "{}", r.summary());
        assert!(r.metrics_match, "stub status counted them: {}", r.summary());
        assert_eq!((r.dropped, r.events_received), (0, 0), "{}", r.summary());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_tabulates_the_floor_switchyard_and_nchan() {
    let Some(nchan) = NchanServer::start("compare_tabulates_the_floor_switchyard_and_nchan").await
    else {
        return;
    };
    let (url, _data) = start_server().await;
    let opts = CompareOptions {
        switchyard_url: url,
        switchyard_pid: std::process::id(),
        nchan_url: Some(nchan.url.clone()),
        nchan_pids: nchan.workers.clone(),
        subscribers: vec![4],
        rate: 200.0,
        events: 10,
        size: 200,
        transports: vec![
            FanoutTransport::Ws,
            FanoutTransport::Sse,
            FanoutTransport::Stream,
        ],
        idle_connections: Some(10),
        idle_settle_secs: 0.2,
        stall_secs: 10,
        quiet_runs: true,
    };
    let r = compare::run(&opts).await.unwrap();
    let summary = r.summary();
    assert!(r.ok, "{summary}");
    assert_eq!(r.servers, ["switchyard", "nchan"], "{summary}");
    assert_eq!(r.rows.len(), 3, "{summary}");
    for row in &r.rows {
        assert!(
            row.floor_us.is_some() && row.problems.is_empty(),
            "{summary}"
        );
        assert!(row.p99_ms.contains_key("switchyard"), "{summary}");
        let nchan_has_it = row.transport != "stream";
        assert_eq!(row.p99_ms.contains_key("nchan"), nchan_has_it, "{summary}");
        assert_eq!(
            row.us_per_delivery.len(),
            1 + usize::from(nchan_has_it),
            "{summary}"
        );
        assert_eq!(
            row.p99_switchyard_vs_nchan.is_some(),
            nchan_has_it,
            "{summary}"
        );
    }
    assert_eq!(r.idle.len(), 3, "{summary}");
    // The markdown table: a header, its rule, one line per row; Nchan's NDJSON cells "-".
    assert!(
        summary.contains("| load | transport | switchyard µs/delivery | Nchan µs/delivery"),
        "{summary}"
    );
    let stream_row = summary
        .lines()
        .find(|l| l.starts_with("| 4 x 200/s | stream |"))
        .unwrap_or_else(|| panic!("no stream row: {summary}"));
    let cells: Vec<&str> = stream_row.split('|').map(str::trim).collect();
    // ["", load, transport, sy us, nchan us, floor us, sy/floor, nchan/floor, sy p99,
    //  nchan p99, p99 ratio, ""]
    assert_eq!(cells.len(), 12, "{stream_row}");
    for nchan_cell in [4, 7, 9, 10] {
        assert_eq!(cells[nchan_cell], "-", "{stream_row}");
    }
}
