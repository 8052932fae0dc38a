//! `GET /openapi.json`: the API described as OpenAPI 3.1 (source: `docs/openapi.json`).

use http::StatusCode;
use switchyard_transports::http::json_bytes;

use super::router::Reply;

/// The document, checked against the route table by a test.
pub const SPEC: &str = include_str!("../../docs/openapi.json");

/// Serves the document.
pub fn serve() -> Reply {
    json_bytes(StatusCode::OK, SPEC)
}
