//! `GET /`: what this server is and where to go next (the API description, the demo page,
//! the browser client, the probes), as a small HTML page for browsers and as JSON for
//! everyone else, chosen by `Accept`.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::json;
use switchyard_transports::http::{full, json_bytes};

use super::{AppState, router::Reply};

const NAME: &str = "switchyard";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = env!("CARGO_PKG_DESCRIPTION");
/// Where the user guides are: the server serves the API description, not the guides.
const GUIDES: &str = "docs/ in the switchyard source: protocol.md, jobs.md, webhooks.md, \
                      transports.md, client.md, configuration.md, security.md, operations.md";

/// `GET /`: HTML when `Accept` prefers `text/html` to `application/json` (browsers), JSON
/// otherwise (no `Accept`, `*/*` as curl sends, `application/json`).
pub fn serve(state: &AppState, request: &HeaderMap) -> Reply {
    let demo = state.config.demo.enabled.then_some("/demo");
    let mut res = if prefers_html(request) {
        let mut res = Response::new(full(html(demo)));
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        // Static text and links only: no script, no framing, nothing leaks through Referer.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
                 form-action 'none'; frame-ancestors 'none'",
            ),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        res
    } else {
        let body = json!({
            "name": NAME,
            "version": VERSION,
            "description": DESCRIPTION,
            "links": {
                "openapi": "/openapi.json",
                "demo": demo,
                "client": "/v1/client.js",
                "health": "/healthz",
                "ready": "/readyz",
            },
            "docs": GUIDES,
        });
        json_bytes(
            StatusCode::OK,
            serde_json::to_vec(&body).expect("infallible"),
        )
    };
    let h = res.headers_mut();
    // The same URL answers two ways: caches must keep them apart.
    h.insert(header::VARY, HeaderValue::from_static("accept"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

fn html(demo: Option<&str>) -> String {
    let demo = demo.map_or(String::new(), |path| {
        format!(
            "<li><a href=\"{path}\">{path}</a>: the demo page (a job pushed to the browser)</li>\n"
        )
    });
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{NAME} {VERSION}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;\
         padding:0 1rem;line-height:1.5}}code{{font-size:0.95em}}</style>\n</head>\n<body>\n\
         <h1>{NAME} <small>{VERSION}</small></h1>\n<p>{DESCRIPTION}</p>\n<ul>\n\
         <li><a href=\"/openapi.json\">/openapi.json</a>: every HTTP route (OpenAPI 3.1)</li>\n\
         {demo}\
         <li><a href=\"/v1/client.js\">/v1/client.js</a>: the browser client</li>\n\
         <li><a href=\"/healthz\">/healthz</a> and <a href=\"/readyz\">/readyz</a>: probes</li>\n\
         </ul>\n<p>The guides are in <code>{GUIDES}</code>.</p>\n</body>\n</html>\n"
    )
}

/// Whether `Accept` ranks `text/html` above `application/json`; a tie (`*/*`, no `Accept`)
/// goes to JSON, the API's own format.
fn prefers_html(request: &HeaderMap) -> bool {
    let mut html = Match::NONE;
    let mut json = Match::NONE;
    for value in request.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim();
            let q = params
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            html.offer(media, "text", "html", q);
            json.offer(media, "application", "json", q);
        }
    }
    html.q > json.q
}

/// The most specific media range of an `Accept` that matched one type, and its weight.
#[derive(Clone, Copy)]
struct Match {
    /// 0: none yet, 1: `*/*`, 2: `type/*`, 3: `type/subtype`.
    specificity: u8,
    q: f32,
}

impl Match {
    const NONE: Self = Self {
        specificity: 0,
        q: 0.0,
    };

    /// Takes `media;q=q` if it matches `kind/subtype` more specifically than what was met
    /// so far (RFC 9110: the most specific range decides).
    fn offer(&mut self, media: &str, kind: &str, subtype: &str, q: f32) {
        let Some((k, s)) = media.split_once('/') else {
            return;
        };
        let specificity = match (k.trim(), s.trim()) {
            ("*", "*") => 1,
            (k, "*") if k.eq_ignore_ascii_case(kind) => 2,
            (k, s) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(subtype) => 3,
            _ => return,
        };
        if specificity > self.specificity {
            *self = Self { specificity, q };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::TestApp;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn browsers_get_html_and_everyone_else_json() {
        for browser in [
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
            "text/html",
            "application/json;q=0.5, text/*",
        ] {
            assert!(prefers_html(&accept(browser)), "{browser}");
        }
        for other in [
            "*/*",
            "application/json",
            "application/json, text/html",
            "text/html;q=0.1, */*",
            "text/html;q=0",
            "image/png",
        ] {
            assert!(!prefers_html(&accept(other)), "{other}");
        }
        assert!(!prefers_html(&HeaderMap::new()), "no Accept");
    }

    #[tokio::test]
    async fn the_index_links_what_is_served() {
        let app = TestApp::new(|_| {}).await;
        let res = app.call("GET", "/", &[("accept", "*/*")], "").await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.headers[header::VARY], "accept");
        let body = res.json();
        assert_eq!(body["name"], "switchyard");
        assert_eq!(body["version"], VERSION);
        assert_eq!(body["links"]["openapi"], "/openapi.json");
        assert_eq!(body["links"]["demo"], "/demo");
        for (_, link) in body["links"].as_object().unwrap() {
            let link = link.as_str().unwrap();
            let res = app.call("GET", link, &[], "").await;
            assert_eq!(res.status, StatusCode::OK, "{link}");
        }
        let page = app.call("GET", "/", &[("accept", "text/html")], "").await;
        assert!(
            page.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let text = String::from_utf8(page.body.to_vec()).unwrap();
        assert!(text.contains("href=\"/openapi.json\"") && text.contains("href=\"/demo\""));
        // A turned-off demo is not linked.
        let off = TestApp::new(|c| c.demo.enabled = false).await;
        let body = off.call("GET", "/", &[], "").await.json();
        assert_eq!(body["links"]["demo"], serde_json::Value::Null);
        let page = off.call("GET", "/", &[("accept", "text/html")], "").await;
        assert!(
            !String::from_utf8(page.body.to_vec())
                .unwrap()
                .contains("/demo")
        );
    }
}
