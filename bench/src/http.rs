//! A minimal HTTP/1.1 client connection (hyper's `client::conn::http1`) driven by the task
//! that uses it: no background task per connection, keep-alive across requests.

use std::{future::Future, pin::Pin};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    client::conn::http1::{self, Connection, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::target::Target;

type Io = TokioIo<TcpStream>;

/// One keep-alive HTTP/1.1 connection. Every method also drives the connection, so a
/// single task both sends requests and reads responses.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    conn: Pin<Box<Connection<Io, Full<Bytes>>>>,
    closed: bool,
    authority: String,
    /// `Bearer <key>` sent on every request built by [`HttpConn::request`], when set.
    authorization: Option<hyper::header::HeaderValue>,
}

impl HttpConn {
    /// Performs the (trivial) HTTP/1.1 handshake on `stream`. `read_buffer` fixes hyper's
    /// read buffer size (at least 8192 to fit response heads; `None` = hyper's adaptive one).
    ///
    /// # Errors
    /// The handshake failed.
    pub async fn open(
        stream: TcpStream,
        target: &Target,
        read_buffer: Option<usize>,
    ) -> anyhow::Result<Self> {
        let mut builder = http1::Builder::new();
        if let Some(size) = read_buffer {
            builder.read_buf_exact_size(Some(size.max(8192)));
        }
        let (sender, conn) = builder
            .handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        Ok(Self {
            sender,
            conn: Box::pin(conn),
            closed: false,
            authority: target.authority.clone(),
            authorization: None,
        })
    }

    /// Sends `Authorization: Bearer <key>` on every request from now on (none for `None`).
    ///
    /// # Errors
    /// A key that cannot be a header value (control characters).
    pub fn with_api_key(mut self, key: Option<&str>) -> anyhow::Result<Self> {
        self.authorization = key
            .map(|k| hyper::header::HeaderValue::from_str(&format!("Bearer {k}")))
            .transpose()
            .context("--api-key must be printable ASCII")?;
        Ok(self)
    }

    /// Connects to `target` and opens a connection with hyper's default buffers.
    ///
    /// # Errors
    /// Connect or handshake failure.
    pub async fn connect(target: &Target) -> anyhow::Result<Self> {
        let stream = crate::target::connect(target, None)
            .await
            .with_context(|| format!("cannot connect to {}", target.addr))?;
        Self::open(stream, target, None).await
    }

    /// A request to `path` with the `Host` header (and `Authorization`, when an API key is
    /// set) filled in.
    ///
    /// # Panics
    /// On a path that is not a valid URI (the bench builds them itself).
    pub fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(auth) = &self.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header(hyper::header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        req.body(Full::new(body))
            .expect("bench-built requests are valid")
    }

    /// Sends `req`; returns the response head (the body is read with [`HttpConn::chunk`] or
    /// [`HttpConn::collect`]).
    ///
    /// # Errors
    /// The connection failed or closed.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<Response<Incoming>> {
        let fut = self.sender.send_request(req);
        drive(&mut self.conn, &mut self.closed, fut)
            .await?
            .context("request failed")
    }

    /// The next chunk of `body`'s data (`None` at its end); trailers are skipped.
    ///
    /// # Errors
    /// The connection failed mid-body.
    pub async fn chunk(&mut self, body: &mut Incoming) -> anyhow::Result<Option<Bytes>> {
        loop {
            let frame = drive(&mut self.conn, &mut self.closed, body.frame()).await?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(e).context("reading the response body"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Reads the whole of `body`.
    ///
    /// # Errors
    /// The connection failed mid-body.
    pub async fn collect(&mut self, body: Incoming) -> anyhow::Result<Bytes> {
        let collected = drive(&mut self.conn, &mut self.closed, body.collect()).await?;
        Ok(collected.context("reading the response body")?.to_bytes())
    }

    /// Sends `req` and reads the whole response.
    ///
    /// # Errors
    /// The connection failed or closed.
    pub async fn fetch(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let res = self.send(req).await?;
        let (parts, body) = res.into_parts();
        let bytes = self.collect(body).await?;
        Ok((parts.status, bytes))
    }

    /// `GET path`, whole response.
    ///
    /// # Errors
    /// The connection failed or closed.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let req = self.request(hyper::Method::GET, path, None);
        self.fetch(req).await
    }
}

/// Awaits `fut` while polling the connection that feeds it. Once the connection ends, `fut`
/// is awaited alone (it then resolves promptly: data already read, or an error).
async fn drive<F: Future>(
    conn: &mut Pin<Box<Connection<Io, Full<Bytes>>>>,
    closed: &mut bool,
    fut: F,
) -> anyhow::Result<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        if *closed {
            return Ok(fut.await);
        }
        tokio::select! {
            out = &mut fut => return Ok(out),
            result = conn.as_mut() => {
                *closed = true;
                if let Err(e) = result {
                    bail!("HTTP connection failed: {e}");
                }
            }
        }
    }
}
