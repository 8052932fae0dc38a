//! A plain HTTP/1.1 client over loopback (hyper's client connection; no pooling).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};

/// Connects with a small receive buffer when `small_rcvbuf` (to make a slow reader's
/// backlog reach the server quickly).
pub async fn connect(addr: SocketAddr, small_rcvbuf: bool) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if small_rcvbuf {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    socket.connect(addr).await.unwrap()
}

/// Sends `req` on a new connection; the body streams as it arrives.
pub async fn send_on(stream: TcpStream, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.unwrap()
}

/// Builds a request with headers.
pub fn build(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from(body))).unwrap()
}

/// Opens a streaming GET (SSE, NDJSON, long-poll).
pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
    send_on(
        connect(addr, false).await,
        build(addr, "GET", path, headers, Vec::new()),
    )
    .await
}

/// One request, whole body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let res = send_on(
        connect(addr, false).await,
        build(addr, method, path, headers, body),
    )
    .await;
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// A GET returning JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    let (status, headers, body) = request(addr, "GET", path, &[], Vec::new()).await;
    assert_json(&headers, &body);
    (status, serde_json::from_slice(&body).unwrap())
}

/// A POST of JSON returning JSON.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, HeaderMap, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let (status, headers, body) =
        request(addr, "POST", path, &all, serde_json::to_vec(body).unwrap()).await;
    assert_json(&headers, &body);
    let value = serde_json::from_slice(&body).unwrap();
    (status, headers, value)
}

fn assert_json(headers: &HeaderMap, body: &[u8]) {
    let ct = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "expected JSON, got {ct:?}: {}",
        String::from_utf8_lossy(body)
    );
}

/// Asserts the API's error shape and code.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Reads a streaming body line by line (NDJSON).
pub struct LineReader {
    body: Incoming,
    buf: Vec<u8>,
}

impl LineReader {
    pub fn new(body: Incoming) -> Self {
        Self {
            body,
            buf: Vec::new(),
        }
    }

    /// The next line (without `\n`), or `None` at the end of the body.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8(line[..line.len() - 1].to_vec()).unwrap());
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("body error: {e}"),
                None => return None,
            }
        }
    }

    /// The next non-empty line parsed as JSON.
    pub async fn next_json(&mut self) -> Option<Value> {
        loop {
            let line = self.next_line().await?;
            if !line.is_empty() {
                return Some(serde_json::from_str(&line).unwrap());
            }
        }
    }
}

/// One sample of `/metrics` on `addr` (`name{labels}` exactly as written), with the given
/// headers (an admin key when keyed).
pub async fn metric(addr: SocketAddr, series: &str, headers: &[(&str, &str)]) -> f64 {
    let (status, _, body) = request(addr, "GET", "/metrics", headers, Vec::new()).await;
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {series} missing"))
        .parse()
        .unwrap()
}
