//! For unit tests of the API: a gateway state on the embedded engine in a temporary
//! directory ([`TestApp`]), one request through [`super::app`] without a socket, and the
//! log lines written meanwhile ([`CapturedLog`]).

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

use super::AppState;
use crate::config::Config;

/// A gateway state whose data directory lives as long as it does.
pub(crate) struct TestApp {
    pub(crate) state: Arc<AppState>,
    _data: tempfile::TempDir,
}

/// An answer, read whole.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    /// Reads the body of `res`.
    pub(crate) async fn read(
        res: http::Response<impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible>>,
    ) -> Self {
        let (parts, body) = res.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("bodies do not fail").to_bytes(),
        }
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `error.code` of an error answer.
    pub(crate) fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .expect("an error answer")
            .to_owned()
    }
}

impl TestApp {
    /// A state built from the default configuration, changed by `configure`.
    pub(crate) async fn new(configure: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut config = Config {
            data_dir: data.path().to_owned(),
            ..Config::default()
        };
        configure(&mut config);
        let gateway = crate::build(Arc::new(config))
            .await
            .expect("the gateway builds");
        Self {
            state: gateway.state,
            _data: data,
        }
    }

    /// `method path` with `headers` and `body`, through the app; the answer read whole.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        Answer::read(self.open(method, path, headers, body).await).await
    }

    /// `method path` through the app; the answer's body is left unread (a stream).
    pub(crate) async fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> http::Response<impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible>>
    {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a valid request");
        super::app(Arc::clone(&self.state))
            .oneshot(req)
            .await
            .expect("the app never fails")
    }
}

/// Log output kept in memory, for tests that check what is (not) logged.
#[derive(Clone, Default)]
pub(crate) struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Logs at `level` and above into this buffer until the guard is dropped (on this
    /// thread: `#[tokio::test]` runs on one).
    pub(crate) fn install(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_max_level(level)
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // A callsite that another test's thread was registering (with no subscriber) while
        // this one was being installed can have cached "never": tracing's interest cache
        // races with thread-local subscribers. Recomputing it now closes that window.
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// What was logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("log lines are UTF-8")
    }
}

impl Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}
