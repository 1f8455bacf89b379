//! The OpenAPI document: well-formed, complete, and served.

mod support;

use axum::http::{Method, StatusCode};
use picloud_manager_core::MIGRATOR;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::BTreeSet;
use support::TestApp;

/// Every route the server answers, as (method, OpenAPI path).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/admin/apps"),
    ("get", "/api/v1/admin/apps"),
    ("get", "/api/v1/admin/apps/{app_id}"),
    ("delete", "/api/v1/admin/apps/{app_id}"),
    ("post", "/api/v1/admin/apps/{app_id}/scripts"),
    ("get", "/api/v1/admin/apps/{app_id}/scripts"),
    ("get", "/api/v1/admin/apps/{app_id}/scripts/{script_id}"),
    ("put", "/api/v1/admin/apps/{app_id}/scripts/{script_id}"),
    ("delete", "/api/v1/admin/apps/{app_id}/scripts/{script_id}"),
    ("get", "/api/v1/admin/apps/{app_id}/secrets"),
    ("post", "/api/v1/admin/apps/{app_id}/secrets"),
    ("delete", "/api/v1/admin/apps/{app_id}/secrets/{name}"),
    ("post", "/api/v1/admin/apps/{app_id}/triggers"),
    ("get", "/api/v1/admin/apps/{app_id}/triggers"),
    ("get", "/api/v1/admin/apps/{app_id}/triggers/{trigger_id}"),
    (
        "delete",
        "/api/v1/admin/apps/{app_id}/triggers/{trigger_id}",
    ),
    ("get", "/api/v1/admin/apps/{app_id}/dead-letters"),
    ("get", "/api/v1/admin/apps/{app_id}/dead-letters/{id}"),
    ("delete", "/api/v1/admin/apps/{app_id}/dead-letters/{id}"),
    (
        "post",
        "/api/v1/admin/apps/{app_id}/dead-letters/{id}/replay",
    ),
    ("get", "/api/v1/admin/apps/{app_id}/outbox/stats"),
    ("get", "/api/v1/admin/apps/{app_id}/email-policy"),
    ("put", "/api/v1/admin/apps/{app_id}/email-policy"),
    ("get", "/api/v1/admin/email/status"),
    ("post", "/api/v1/admin/api-keys"),
    ("get", "/api/v1/admin/api-keys"),
    ("delete", "/api/v1/admin/api-keys/{id}"),
    ("post", "/api/v1/apps/{app_id}/invoke/{script_name}"),
    ("post", "/api/v1/email-inbound/{trigger_id}"),
    ("post", "/api/v1/apps/{app_id}/email-inbound"),
    ("get", "/api/v1/admin/apps/{app_id}/email-inbound"),
    ("put", "/api/v1/admin/apps/{app_id}/email-inbound"),
    ("get", "/api/v1/apps/{app_id}/realtime"),
    ("post", "/api/v1/admin/apps/{app_id}/realtime/tokens"),
    ("post", "/api/v1/admin/apps/{app_id}/realtime/rotate-key"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/"),
];

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn check_refs(doc: &Value, node: &Value, broken: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                if resolve(doc, r).is_none() {
                    broken.push(r.clone());
                }
            }
            map.values().for_each(|v| check_refs(doc, v, broken));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v, broken)),
        _ => {}
    }
}

#[test]
fn document_is_valid_and_lists_exactly_the_routes() {
    let doc = serde_json::to_value(picloud::http::openapi()).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "OpenAPI 3"
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.clone(), path.clone()));
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}: no responses"));
            assert!(!responses.is_empty(), "{method} {path}");
            // Every templated path parameter is declared.
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            let templated: BTreeSet<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, templated, "{method} {path}");
            // Admin routes require the bearer scheme.
            if path.starts_with("/api/v1/admin") {
                assert_eq!(
                    op["security"][0]["bearer"],
                    Value::Array(vec![]),
                    "{method} {path}"
                );
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");

    let mut broken = Vec::new();
    check_refs(&doc, &doc, &mut broken);
    assert!(broken.is_empty(), "unresolved $refs: {broken:?}");
}

/// Every documented route is actually routed (none answers the fallback 404).
#[sqlx::test(migrator = "MIGRATOR")]
async fn every_documented_route_is_served(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let (status, served) = t
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        served,
        serde_json::to_value(picloud::http::openapi()).unwrap()
    );
    let id = uuid::Uuid::new_v4();
    for (method, path) in ROUTES {
        let uri = path
            .replace("{app_id}", &id.to_string())
            .replace("{script_id}", &id.to_string())
            .replace("{id}", &id.to_string())
            .replace("{trigger_id}", &id.to_string())
            .replace("{name}", "n")
            .replace("{script_name}", "x");
        let method: Method = method.to_uppercase().parse().unwrap();
        let (status, body) = t.admin(method.clone(), &uri, None).await;
        let fallback =
            status == StatusCode::NOT_FOUND && body["error"]["message"] == "route not found";
        assert!(!fallback, "{method} {uri} is documented but not routed");
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
    }
}

/// A second opinion from an independent OpenAPI 3.1 model: the document parses into
/// its typed structures, and every operation's parameters, request body, responses
/// and their schemas resolve.
#[test]
fn document_parses_as_openapi_3_1_and_every_reference_resolves() {
    let text = serde_json::to_string(&picloud::http::openapi()).unwrap();
    let spec = oas3::from_json(&text).expect("a well-formed OpenAPI 3.1 document");
    fn resolve_content<'a>(
        spec: &oas3::Spec,
        content: impl IntoIterator<Item = (&'a String, &'a oas3::spec::MediaType)>,
        what: &str,
    ) {
        for (media, body) in content {
            if let Some(schema) = &body.schema {
                schema
                    .resolve(spec)
                    .unwrap_or_else(|e| panic!("{what} {media}: {e}"));
            }
        }
    }
    let mut operations = 0;
    for (path, method, operation) in spec.operations() {
        let what = format!("{method} {path}");
        operations += 1;
        for parameter in &operation.parameters {
            parameter
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{what} parameter: {e}"));
        }
        if let Some(body) = &operation.request_body {
            let body = body
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{what} request body: {e}"));
            resolve_content(&spec, &body.content, &what);
        }
        let responses = operation
            .responses
            .as_ref()
            .unwrap_or_else(|| panic!("{what} documents no responses"));
        assert!(!responses.is_empty(), "{what} documents no responses");
        for (status, response) in responses {
            let response = response
                .resolve(&spec)
                .unwrap_or_else(|e| panic!("{what} {status}: {e}"));
            resolve_content(&spec, &response.content, &what);
        }
    }
    assert_eq!(operations, ROUTES.len(), "every route is an operation");

    // The model does refuse a broken document, so passing above means something.
    let mut broken = serde_json::to_value(picloud::http::openapi()).unwrap();
    broken.as_object_mut().unwrap().remove("info");
    assert!(oas3::from_json(broken.to_string()).is_err());
}

/// Every operation's path parameters are handed to it by a link from an
/// operation that creates them, so a client (and schemathesis's stateful
/// phase) can follow real ids; every link names a real operation and only
/// parameters that operation has.
#[test]
fn links_lead_to_every_operation_that_takes_an_id() {
    let doc = picloud::http::openapi();
    let mut operations = std::collections::BTreeMap::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let params: BTreeSet<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            operations.insert(op["operationId"].as_str().unwrap().to_owned(), (op, params));
        }
    }
    let mut supplied: BTreeSet<String> = BTreeSet::new();
    for (from, (op, _)) in &operations {
        for (status, response) in op["responses"].as_object().unwrap() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                assert!(status.starts_with('2'), "{from} links from {status}");
                let target = link["operationId"].as_str().unwrap();
                let (_, params) = operations
                    .get(target)
                    .unwrap_or_else(|| panic!("{from} link {name}: no operation {target}"));
                let given: BTreeSet<String> = link["parameters"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect();
                assert_eq!(
                    &given, params,
                    "{from} -> {target}: every path parameter, no other"
                );
                for expr in link["parameters"].as_object().unwrap().values() {
                    let expr = expr.as_str().unwrap();
                    assert!(
                        expr.starts_with("$response.body#/") || expr.starts_with("$request.path."),
                        "{from} -> {target}: {expr}"
                    );
                }
                supplied.insert(target.to_owned());
            }
        }
    }
    for (id, (_, params)) in &operations {
        if !params.is_empty() {
            assert!(supplied.contains(id), "no link leads to {id}");
        }
    }
}

/// Each operation documents the errors it can answer: the key's (401, 403),
/// the path's (400, 404) and the body's (400, 413, and 422 for a typed body).
#[test]
fn operations_document_the_errors_they_can_answer() {
    let doc = picloud::http::openapi();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let has = |status: &str| responses.contains_key(status);
            let what = format!("{method} {path}");
            assert!(
                !has("4XX") && !has("default"),
                "{what}: a catch-all hides statuses"
            );
            if path.starts_with("/api/v1/admin") || path.contains("/invoke/") {
                assert!(has("401") && has("403"), "{what}");
            }
            if path.contains('{') {
                assert!(has("400") && has("404"), "{what}");
            }
            if op.get("requestBody").is_some() {
                assert!(
                    has("400") && has("408") && has("413") && has("503"),
                    "{what}"
                );
            }
            if op.get("requestBody").is_some() && path.starts_with("/api/v1/admin") {
                assert!(has("422"), "{what}");
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = match response.get("$ref") {
                        Some(r) => doc
                            .pointer(r.as_str().unwrap().strip_prefix('#').unwrap())
                            .unwrap()
                            .clone(),
                        None => response.clone(),
                    };
                    assert_eq!(
                        schema["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{what} {status}"
                    );
                }
            }
        }
    }
}

/// The name patterns the document declares accept exactly the names the
/// server accepts, so a schema-valid name is never refused.
#[test]
fn declared_name_patterns_match_the_server_rules() {
    use picloud_shared::names::{validate_dotted_name, validate_resource_name};
    let doc = picloud::http::openapi();
    let schema_pattern = |pointer: &str| {
        doc.pointer(pointer)
            .and_then(|p| p["pattern"].as_str())
            .unwrap_or_else(|| panic!("{pointer} declares no pattern"))
            .to_owned()
    };
    let path_pattern = |path: &str, method: &str, name: &str| {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["schema"]["pattern"].as_str())
            .unwrap_or_else(|| panic!("{method} {path} {name} declares no pattern"))
            .to_owned()
    };
    type Rule = fn(&str, &str) -> Result<(), picloud_shared::ServiceError>;
    let checks: Vec<(String, Rule)> = vec![
        (
            schema_pattern("/components/schemas/CreateApp/properties/name"),
            validate_resource_name,
        ),
        (
            schema_pattern("/components/schemas/SaveScript/properties/name"),
            validate_resource_name,
        ),
        (
            schema_pattern("/components/schemas/CreateApiKey/properties/name"),
            validate_resource_name,
        ),
        (
            schema_pattern("/components/schemas/SetSecret/properties/name"),
            validate_dotted_name,
        ),
        (
            path_pattern(
                "/api/v1/admin/apps/{app_id}/secrets/{name}",
                "delete",
                "name",
            ),
            validate_dotted_name,
        ),
        (
            path_pattern(
                "/api/v1/apps/{app_id}/invoke/{script_name}",
                "post",
                "script_name",
            ),
            validate_resource_name,
        ),
    ];
    let long = |n: usize| "a".repeat(n);
    let probes = [
        String::new(),
        "a".into(),
        "A-b_9".into(),
        "dot.ted".into(),
        "has space".into(),
        "ünï".into(),
        "line\n".into(),
        "nul\0".into(),
        "sl/ash".into(),
        long(64),
        long(65),
        long(128),
        long(129),
    ];
    for (pattern, rule) in &checks {
        let regex = regex::Regex::new(pattern).unwrap();
        for probe in &probes {
            assert_eq!(
                regex.is_match(probe),
                rule("name", probe).is_ok(),
                "pattern {pattern} and the server disagree on {probe:?}"
            );
        }
    }
}

#[test]
fn the_declared_allow_list_pattern_matches_the_server_rule() {
    use picloud_shared::email::{valid_allow_entry, ALLOW_ENTRY_PATTERN};
    let doc = picloud::http::openapi();
    let items = doc
        .pointer("/components/schemas/EmailPolicy/properties/recipients/oneOf/1/items")
        .expect("recipients declares its array form");
    assert_eq!(items["pattern"], ALLOW_ENTRY_PATTERN);
    assert_eq!(items["maxLength"], 320);
    let regex = regex::Regex::new(ALLOW_ENTRY_PATTERN).unwrap();
    let long_local = format!("{}@example.com", "a".repeat(308));
    let too_long = format!("{}@example.com", "a".repeat(309));
    for probe in [
        "ops@example.com",
        "@example.org",
        "a.b+c@sub.example.co.uk",
        "@localhost",
        "ops@localhost",
        "ops@@example.com",
        "ops@exa@mple.com",
        "ops@.example.com",
        "ops@example..com",
        "ops@example.com.",
        "has space@example.com",
        "ünï@example.com",
        "line\n@example.com",
        "",
        "@",
        "plain",
        long_local.as_str(),
        too_long.as_str(),
    ] {
        assert_eq!(
            regex.is_match(probe) && probe.len() <= 320,
            valid_allow_entry(probe),
            "the pattern and the server disagree on {probe:?}"
        );
    }
}
