//! Bad input, one case per test: each gets a clear JSON error with the right status,
//! never echoes what it was given, and stores nothing.

mod support;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use picloud_manager_core::MIGRATOR;
use serde_json::{json, Value};
use sqlx::PgPool;
use support::{assert_error, TestApp};

/// A POST with the admin key and a raw (possibly broken) JSON body.
fn post_raw(t: &TestApp, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header("authorization", format!("Bearer {}", t.admin_key))
        .header("content-type", "application/json")
        .body(body.into())
        .expect("valid request")
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("errors are JSON")
}

async fn app_count(t: &TestApp) -> usize {
    let (_, list) = t.admin(Method::GET, "/api/v1/admin/apps", None).await;
    list.as_array().expect("app list").len()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn malformed_json_is_400_on_admin_routes_and_invoke(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "echo", "ctx.request.body", false)
        .await;

    let (status, bytes) = t
        .send(post_raw(&t, "/api/v1/admin/apps", "{\"name\": "))
        .await;
    let message = assert_error(
        status,
        &parse(&bytes),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(message.contains("JSON"), "{message}");

    let (status, bytes) = t
        .send(post_raw(
            &t,
            &format!("/api/v1/apps/{app}/invoke/echo"),
            "{oops-secret-looking",
        ))
        .await;
    let message = assert_error(
        status,
        &parse(&bytes),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(!message.contains("oops"), "{message}");
    assert_eq!(app_count(&t).await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn wrong_shapes_are_422_without_echoing_the_value(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let (status, bytes) = t.send(post_raw(&t, "/api/v1/admin/apps", "{}")).await;
    let message = assert_error(
        status,
        &parse(&bytes),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    assert!(message.contains("name"), "{message}");

    let (status, bytes) = t
        .send(post_raw(
            &t,
            "/api/v1/admin/apps",
            r#"{"name": ["sneaky-value"]}"#,
        ))
        .await;
    let message = assert_error(
        status,
        &parse(&bytes),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    assert!(!message.contains("sneaky"), "{message}");
    assert_eq!(app_count(&t).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unknown_apps_scripts_and_routes_are_404_and_bad_ids_400(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "echo", "ctx.request.body", false)
        .await;
    let unknown = uuid::Uuid::new_v4();

    let (status, body) = t
        .admin(Method::GET, &format!("/api/v1/admin/apps/{unknown}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t
        .admin(
            Method::GET,
            &format!("/api/v1/admin/apps/{unknown}/scripts"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t
        .admin(
            Method::GET,
            &format!("/api/v1/admin/apps/{app}/scripts/{unknown}"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t.invoke(&unknown.to_string(), "echo", Value::Null).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t.invoke(&app, "nope", Value::Null).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let (status, body) = t
        .admin(Method::GET, "/api/v1/admin/apps/not-a-uuid", None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // The fallback's exact message: the OpenAPI test recognises unserved routes by it.
    let (status, body) = t.admin(Method::GET, "/api/v1/nothing-here", None).await;
    let message = assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(message, "route not found");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn oversized_bodies_are_413_with_or_without_a_length_and_store_nothing(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    t.create_script(
        &app,
        "keep",
        "kv::set(\"c\", \"k\", ctx.request.body); 1",
        false,
    )
    .await;
    // The test config's limit is 128 KiB.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(200 * 1024));

    let mut request = post_raw(&t, "/api/v1/admin/apps", big.clone());
    request
        .headers_mut()
        .insert("content-length", big.len().into());
    let (status, bytes) = t.send(request).await;
    let body = parse(&bytes);
    let message = assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(!message.contains("xxxx"), "{message}");
    assert_eq!(body["error"]["limit"], 128 * 1024, "a 413 names its limit");

    let stream = Body::from_stream(chunked(big.into_bytes()));
    let (status, bytes) = t
        .send(post_raw(
            &t,
            &format!("/api/v1/apps/{app}/invoke/keep"),
            stream,
        ))
        .await;
    assert_error(
        status,
        &parse(&bytes),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );

    assert_eq!(app_count(&t).await, 1, "no app was created");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_entries")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the script never ran");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn invalid_names_are_422_for_apps_and_scripts(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    for name in ["", "has space", "dot.ted", "é", &"x".repeat(65)] {
        let (status, body) = t
            .admin(
                Method::POST,
                "/api/v1/admin/apps",
                Some(json!({ "name": name })),
            )
            .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        );
        let (status, body) = t
            .admin(
                Method::POST,
                &format!("/api/v1/admin/apps/{app}/scripts"),
                Some(json!({ "name": name, "source": "1" })),
            )
            .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        );
    }
    assert_eq!(app_count(&t).await, 1);
    let (_, scripts) = t
        .admin(
            Method::GET,
            &format!("/api/v1/admin/apps/{app}/scripts"),
            None,
        )
        .await;
    assert_eq!(scripts, json!([]));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn missing_or_malformed_authorization_is_401_on_admin_routes_and_invoke(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "private", "1", false).await;
    let unknown_key = format!("pk_{}", "A".repeat(43));
    let headers = [
        None,
        Some("Basic abc".to_owned()),
        Some("Bearer".to_owned()),
        Some("Bearer a b".to_owned()),
        Some("Bearer pk_short".to_owned()),
        Some("Bearer sk_live_xyz".to_owned()),
        Some(format!("Bearer {unknown_key}")),
    ];
    let invoke = format!("/api/v1/apps/{app}/invoke/private");
    for (method, uri) in [
        (Method::GET, "/api/v1/admin/apps"),
        (Method::POST, invoke.as_str()),
    ] {
        for header in &headers {
            let mut builder = Request::builder().method(method.clone()).uri(uri);
            if let Some(h) = header {
                builder = builder.header("authorization", h);
            }
            let (status, bytes) = t.send(builder.body(Body::empty()).unwrap()).await;
            let message = assert_error(
                status,
                &parse(&bytes),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
            if let Some(h) = header {
                let credential = h
                    .trim_start_matches("Bearer")
                    .trim_start_matches("Basic")
                    .trim();
                assert!(
                    credential.is_empty() || !message.contains(credential),
                    "{uri} {h}: {message}"
                );
            }
        }
    }
}

/// A body that arrives in chunks, without a Content-Length.
fn chunked(
    bytes: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
    struct Chunks(Vec<Vec<u8>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(if self.0.is_empty() {
                None
            } else {
                Some(Ok(self.0.remove(0)))
            })
        }
    }
    Chunks(bytes.chunks(8192).map(<[u8]>::to_vec).collect())
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_body_with_more_items_than_a_script_may_hold_is_413_before_it_runs(pool: PgPool) {
    let mut config = support::test_config();
    config.limits.max_array_items = 1_000;
    config.limits.max_map_items = 1_000;
    let t = TestApp::with_config(pool, config).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "keep", r#"kv::set("c", "k", 1); 1"#, true)
        .await;

    let arrays = Value::Array(vec![json!([]); 1_001]);
    let (status, body) = t.invoke(&app, "keep", arrays).await;
    let message = assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(message.contains("1001 array items"), "{message}");
    assert_eq!(
        (
            body["error"]["limit"].clone(),
            body["error"]["actual"].clone()
        ),
        (json!(1000), json!(1001))
    );

    let entries: serde_json::Map<String, Value> =
        (0..1_001).map(|i| (format!("k{i}"), json!(i))).collect();
    let (status, body) = t.invoke(&app, "keep", Value::Object(entries)).await;
    let message = assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(message.contains("1001 object entries"), "{message}");

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM kv_entries")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the script never ran");
    // At the limit it runs.
    let (status, _) = t
        .invoke(&app, "keep", Value::Array(vec![json!(1); 1_000]))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn invalid_script_names_in_invoke_paths_are_400_before_any_lookup(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    for name in ["a%00b", "a%01b", "a%0Ab", "has%20space", "dot.ted"] {
        let path = format!("/api/v1/apps/{app}/invoke/{name}");
        for key in [None, Some(t.admin_key.as_str())] {
            let (status, body) = t.call(Method::POST, &path, key, Some(json!({}))).await;
            let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
            assert!(
                message.contains("script name must be") || message.contains("control character"),
                "{name}: {message}"
            );
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn wrong_methods_are_405_in_the_json_error_shape(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let key = t.admin_key.clone();
    for (method, path) in [
        (Method::PUT, "/api/v1/admin/apps".to_owned()),
        (Method::PATCH, format!("/api/v1/admin/apps/{app}")),
        (Method::GET, format!("/api/v1/apps/{app}/invoke/s")),
        (Method::DELETE, format!("/api/v1/apps/{app}/invoke/s")),
        (Method::POST, "/healthz".to_owned()),
    ] {
        let (status, body) = t.call(method.clone(), &path, Some(&key), None).await;
        assert_error(
            status,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_key_without_the_scope_gets_403_whatever_the_body_holds(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let reader = t.key_with(&[picloud_shared::auth::Scope::DataRead]).await;
    // Every admin write route of the document, with ids that need not exist.
    let doc = serde_json::to_value(picloud::http::openapi()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/admin/") {
            continue;
        }
        for method in ["post", "put"] {
            if item.get(method).is_none() {
                continue;
            }
            let uri = path
                .split('/')
                .map(|segment| {
                    if segment.starts_with('{') {
                        uuid::Uuid::new_v4().to_string()
                    } else {
                        segment.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            for body in ["this is not JSON", r#"{"unexpected": true}"#, "[]"] {
                let request = Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .header("authorization", format!("Bearer {reader}"))
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap();
                let (status, bytes) = t.send(request).await;
                assert_error(status, &parse(&bytes), StatusCode::FORBIDDEN, "forbidden");
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} write routes found");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn control_characters_in_any_path_name_are_400(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let key = t.admin_key.clone();
    for (method, path) in [
        (
            Method::DELETE,
            format!("/api/v1/admin/apps/{app}/secrets/a%00b"),
        ),
        (
            Method::DELETE,
            format!("/api/v1/admin/apps/{app}/secrets/a%1Fb"),
        ),
        (Method::POST, format!("/api/v1/apps/{app}/invoke/a%7Fb")),
    ] {
        // Admin routes authenticate first (no database access either way); the
        // data plane refuses the name even without a key.
        let admin = path.starts_with("/api/v1/admin/");
        let (status, body) = t.call(method.clone(), &path, None, None).await;
        if admin {
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        } else {
            assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        }
        let (status, body) = t.call(method.clone(), &path, Some(&key), None).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn secret_names_outside_their_pattern_in_paths_are_400(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let long = "a".repeat(129);
    for name in ["has%20space", "null%2Cnull", "%C3%BC", long.as_str()] {
        let path = format!("/api/v1/admin/apps/{app}/secrets/{name}");
        let (status, body) = t.admin(Method::DELETE, &path, None).await;
        let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        assert!(message.contains("secret name must be"), "{name}: {message}");
    }
    // A name inside the pattern that does not exist is still a 404.
    let path = format!("/api/v1/admin/apps/{app}/secrets/no.such-secret_1");
    let (status, body) = t.admin(Method::DELETE, &path, None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

/// A body that sends its first bytes and then never ends.
fn never_ending() -> Body {
    struct Stalls(bool);
    impl futures_core::Stream for Stalls {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.0 {
                std::task::Poll::Pending
            } else {
                self.0 = true;
                std::task::Poll::Ready(Some(Ok(b"{\"name\":".to_vec())))
            }
        }
    }
    Body::from_stream(Stalls(false))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn scope_and_declared_size_are_answered_before_any_body_is_read(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let reader = t.key_with(&[picloud_shared::auth::Scope::AppRead]).await;
    let limit = support::test_config().max_request_bytes;
    let cases = [
        // A key without the scope: 403 whatever (and however slowly) it sends.
        (
            Some(reader.as_str()),
            "100",
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        // A declared length above the limit: 413 from the headers alone.
        (
            Some(t.admin_key.as_str()),
            &*(limit + 1).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        // No key at all: 401.
        (None, "100", StatusCode::UNAUTHORIZED, "unauthorized"),
    ];
    for (key, length, status, code) in cases {
        let mut builder = Request::post("/api/v1/admin/apps")
            .header("content-type", "application/json")
            .header("content-length", length)
            .header("expect", "100-continue");
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let request = builder.body(never_ending()).unwrap();
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), t.send(request))
            .await
            .unwrap_or_else(|_| panic!("{status}: the server waited for the body"));
        let body = parse(&answered.1);
        assert_error(answered.0, &body, status, code);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            assert_eq!(body["error"]["limit"], limit);
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_nul_in_script_source_is_422_not_a_database_error(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let script = t.create_script(&app, "s", "1", false).await;
    for (method, uri) in [
        (Method::POST, format!("/api/v1/admin/apps/{app}/scripts")),
        (
            Method::PUT,
            format!("/api/v1/admin/apps/{app}/scripts/{script}"),
        ),
    ] {
        let (status, body) = t
            .admin(
                method.clone(),
                &uri,
                Some(json!({"name": "n", "source": "// \u{0}\n1"})),
            )
            .await;
        let message = assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        );
        assert!(message.contains("NUL"), "{method}: {message}");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_duplicate_field_is_named_as_such(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let (status, bytes) = t
        .send(post_raw(
            &t,
            "/api/v1/admin/apps",
            r#"{"name": "a", "name": "b"}"#,
        ))
        .await;
    let body = parse(&bytes);
    let message = assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    assert_eq!(message, "request body has the field `name` twice");
    assert_eq!(app_count(&t).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_bad_key_on_a_public_script_is_401_not_ignored(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "pub", "42", true).await;
    let path = format!("/api/v1/apps/{app}/invoke/pub");
    let (status, body) = t.call(Method::POST, &path, None, Some(json!({}))).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!(42)),
        "no key is fine"
    );
    let revoked = t.key_with(&[picloud_shared::auth::Scope::DataWrite]).await;
    for key in ["pk_not-a-real-key", revoked.as_str()] {
        if key == revoked {
            let (_, keys) = t.admin(Method::GET, "/api/v1/admin/api-keys", None).await;
            let id = keys
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["name"] == "scoped")
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            t.admin(
                Method::DELETE,
                &format!("/api/v1/admin/api-keys/{id}"),
                None,
            )
            .await;
        }
        let (status, body) = t
            .call(Method::POST, &path, Some(key), Some(json!({})))
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // A valid key without data:write still runs it (as a stranger).
    let reader = t.key_with(&[picloud_shared::auth::Scope::AppRead]).await;
    let (status, body) = t
        .call(Method::POST, &path, Some(&reader), Some(json!({})))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!(42)));
}

/// A request to `uri` whose body sends `sent` and then never ends.
fn held_body_request(
    uri: &str,
    declared: usize,
    sent: Vec<u8>,
    pulled: std::sync::Arc<tokio::sync::Notify>,
) -> Request<Body> {
    use futures_util::StreamExt;
    let first = futures_util::stream::once(async move {
        pulled.notify_one();
        Ok::<_, std::io::Error>(axum::body::Bytes::from(sent))
    });
    Request::post(uri)
        .header("content-type", "application/json")
        .header("content-length", declared.to_string())
        .body(Body::from_stream(
            first.chain(futures_util::stream::pending()),
        ))
        .expect("valid request")
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bodies_hold_the_body_budget_by_what_they_sent_not_what_they_declared(pool: PgPool) {
    let mut config = support::test_config();
    config.max_body_buffer_bytes = 1 << 20;
    config.max_request_bytes = 1 << 20;
    let t = TestApp::with_config(pool, config).await;
    let app = t.create_app("budget").await;
    t.create_script(&app, "pub", "1", true).await;
    let uri = format!("/api/v1/apps/{app}/invoke/pub");
    let complete = |size: usize| {
        Request::post(&uri)
            .header("content-type", "application/json")
            .body(Body::from(format!("\"{}\"", "x".repeat(size - 2))))
            .expect("valid request")
    };
    // Declared near the whole budget but not sent: holds nothing.
    let mut held = Vec::new();
    for _ in 0..3 {
        let pulled = std::sync::Arc::new(tokio::sync::Notify::new());
        let request = held_body_request(&uri, 900_000, Vec::new(), pulled.clone());
        held.push(tokio::spawn(tower::ServiceExt::oneshot(
            t.router.clone(),
            request,
        )));
        pulled.notified().await;
    }
    let (status, body) = t.send(complete(600_000)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // Sent and held: 800 KB of the 1 MiB...
    for _ in 0..2 {
        let pulled = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut prefix = vec![b' '; 400_000];
        prefix[0] = b'[';
        let request = held_body_request(&uri, 500_000, prefix, pulled.clone());
        held.push(tokio::spawn(tower::ServiceExt::oneshot(
            t.router.clone(),
            request,
        )));
        pulled.notified().await;
        tokio::task::yield_now().await;
    }
    // ...so a body of 400 KB does not fit, while a small one does.
    let (status, body) = t.send(complete(400_000)).await;
    let body = parse(&body);
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, _) = t.send(complete(100_000)).await;
    assert_eq!(status, StatusCode::OK);
    // Once the held bodies go, their bytes come back.
    for request in held {
        request.abort();
        let _ = request.await;
    }
    let (status, _) = t.send(complete(900_000)).await;
    assert_eq!(status, StatusCode::OK);
}
