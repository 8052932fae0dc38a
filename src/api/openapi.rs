//! `GET /openapi.json`: the API described as OpenAPI 3.1 (source: `docs/openapi.json`),
//! compressed once and revalidated with its `ETag` like the other built-in files.

use std::sync::LazyLock;

use http::HeaderMap;

use super::{router::Reply, static_asset::StaticAsset};

/// The document, checked against the route table by a test.
pub const SPEC: &str = include_str!("../../docs/openapi.json");

static DOCUMENT: LazyLock<StaticAsset> =
    LazyLock::new(|| StaticAsset::new(SPEC.as_bytes(), "application/json; charset=utf-8"));

/// Serves the document.
pub fn serve(request: &HeaderMap) -> Reply {
    DOCUMENT.respond(request)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use http::Method;

    use super::SPEC;
    use crate::api::routes::{Access, Route, operations};

    /// The keys of a path item that are operations (the rest: `parameters`, `summary`, ...).
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn spec() -> Value {
        serde_json::from_str(SPEC).expect("docs/openapi.json is valid JSON")
    }

    fn operation<'a>(spec: &'a Value, method: &Method, route: &Route) -> &'a Value {
        &spec["paths"][route.path][method.as_str().to_ascii_lowercase()]
    }

    /// Follows a local `$ref` (`#/components/...`).
    fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(pointer) => spec
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
            None => value,
        }
    }

    #[test]
    fn every_error_code_is_in_the_error_schema() {
        let spec = spec();
        let listed: BTreeSet<&str> =
            spec["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
                .as_array()
                .expect("ErrorBody.code lists its codes")
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
        let codes: BTreeSet<&str> = switchyard_protocol::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(listed, codes, "docs/openapi.json's ErrorBody.code enum");
    }

    #[test]
    fn spec_is_openapi_3_1() {
        let spec = spec();
        assert_eq!(spec["openapi"], "3.1.0");
        for scheme in ["apiKey", "consumerToken"] {
            assert!(
                spec["components"]["securitySchemes"][scheme].is_object(),
                "securitySchemes.{scheme} is missing"
            );
        }
    }

    #[test]
    fn spec_documents_exactly_the_route_table() {
        let spec = spec();
        let documented: BTreeSet<(String, String)> = spec["paths"]
            .as_object()
            .expect("`paths` is an object")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("a path item is an object")
                    .keys()
                    .filter(|key| METHODS.contains(&key.as_str()))
                    .map(move |method| (method.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let routed: BTreeSet<(String, String)> = operations()
            .map(|(m, r)| (m.as_str().to_owned(), r.path.to_owned()))
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "docs/openapi.json and the route table (src/api/routes.rs) differ\n\
             routes the spec lacks: {undocumented:?}\n\
             spec operations no route serves: {unrouted:?}"
        );
    }

    #[test]
    fn path_parameters_are_declared_with_the_template_names() {
        let spec = spec();
        for (method, route) in operations() {
            let op = operation(&spec, method, route);
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| resolve(&spec, p))
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().expect("a parameter has a name"))
                .collect();
            let template: BTreeSet<&str> = route
                .path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(
                declared, template,
                "{method} {}: path parameters",
                route.path
            );
        }
    }

    #[test]
    fn security_matches_route_access() {
        let spec = spec();
        for (method, route) in operations() {
            let op = operation(&spec, method, route);
            let security = op["security"].as_array().unwrap_or_else(|| {
                panic!(
                    "{method} {}: no `security` (public routes say `security: []`)",
                    route.path
                )
            });
            let alternatives: BTreeSet<(String, Vec<String>)> = security
                .iter()
                .flat_map(|requirement| {
                    requirement
                        .as_object()
                        .expect("a security requirement is an object")
                        .iter()
                        .map(|(scheme, roles)| {
                            let roles = roles
                                .as_array()
                                .expect("roles are a list")
                                .iter()
                                .map(|r| r.as_str().expect("a role is a string").to_owned())
                                .collect();
                            (scheme.clone(), roles)
                        })
                })
                .collect();
            let scheme = |name: &str, roles: &[&str]| {
                (
                    name.to_owned(),
                    roles.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>(),
                )
            };
            let expected: BTreeSet<(String, Vec<String>)> = match route.access {
                Access::Public => BTreeSet::new(),
                Access::Key(scope) => [scheme("apiKey", &[scope.as_str()])].into(),
                Access::Consumer => [
                    scheme("consumerToken", &[]),
                    scheme("apiKey", &["subscribe"]),
                ]
                .into(),
                Access::JobReader => [
                    scheme("apiKey", &["jobs"]),
                    scheme("apiKey", &["subscribe"]),
                    scheme("consumerToken", &[]),
                ]
                .into(),
                Access::ChannelReader => [
                    scheme("apiKey", &["subscribe"]),
                    scheme("consumerToken", &[]),
                ]
                .into(),
            };
            assert_eq!(
                alternatives, expected,
                "{method} {}: `security` does not match {:?}",
                route.path, route.access
            );
            // Each alternative stands alone: `[{a}, {b}]` means a or b, never a and b.
            assert!(
                security
                    .iter()
                    .all(|r| r.as_object().is_some_and(|o| o.len() <= 1)),
                "{method} {}: a security requirement names several schemes",
                route.path
            );
        }
    }

    #[test]
    fn head_operations_mirror_their_get() {
        let spec = spec();
        for (method, route) in operations().filter(|(m, _)| **m == Method::HEAD) {
            let get = operation(&spec, &Method::GET, route);
            let head = operation(&spec, method, route);
            assert_eq!(
                head["parameters"], get["parameters"],
                "HEAD {}: parameters",
                route.path
            );
            let codes = |op: &Value| -> BTreeSet<String> {
                op["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .cloned()
                    .collect()
            };
            let mut expected = codes(get);
            if route.path == "/v1/ws" {
                // A HEAD never switches protocols, and fails the handshake check first.
                for code in ["101", "401", "426", "503"] {
                    expected.remove(code);
                }
            }
            assert_eq!(codes(head), expected, "HEAD {}: statuses", route.path);
            for (code, response) in head["responses"].as_object().unwrap() {
                assert!(
                    response.get("links").is_none(),
                    "HEAD {} {code}: links need a body to follow",
                    route.path
                );
            }
        }
    }
}
