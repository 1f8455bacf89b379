//! The admin API and invoke, end to end over a real PostgreSQL.

mod support;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use picloud_manager_core::MIGRATOR;
use picloud_shared::auth::Scope;
use serde_json::{json, Value};
use sqlx::PgPool;
use support::{assert_error, TestApp};

#[sqlx::test(migrator = "MIGRATOR")]
async fn apps_crud_and_shapes(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let (status, app) = t
        .admin(
            Method::POST,
            "/api/v1/admin/apps",
            Some(json!({"name": "shop"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = app["id"].as_str().unwrap().to_owned();
    assert_eq!(app["name"], "shop");
    assert!(app["created_at"].as_str().unwrap().ends_with('Z'), "{app}");
    t.create_app("blog").await;

    let (status, list) = t.admin(Method::GET, "/api/v1/admin/apps", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["blog", "shop"], "newest first");

    let (status, got) = t
        .admin(Method::GET, &format!("/api/v1/admin/apps/{id}"), None)
        .await;
    assert_eq!((status, got), (StatusCode::OK, app));

    let (status, body) = t
        .admin(
            Method::POST,
            "/api/v1/admin/apps",
            Some(json!({"name": "shop"})),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    let (status, _) = t
        .admin(Method::DELETE, &format!("/api/v1/admin/apps/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = t
        .admin(Method::DELETE, &format!("/api/v1/admin/apps/{id}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn scripts_crud_versions_and_compile_errors(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let base = format!("/api/v1/admin/apps/{app}/scripts");
    let (status, script) = t
        .admin(
            Method::POST,
            &base,
            Some(json!({"name": "hello", "source": "40 + 2"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{script}");
    assert_eq!(script["version"], 1);
    assert_eq!(script["public"], false);
    assert_eq!(script["app_id"], app.as_str());
    assert!(
        script.get("source").is_none(),
        "create answers metadata only"
    );
    let id = script["id"].as_str().unwrap();

    let (status, got) = t.admin(Method::GET, &format!("{base}/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["source"], "40 + 2");

    let (status, body) = t
        .admin(
            Method::POST,
            &base,
            Some(json!({"name": "broken", "source": "let x = 1;\nlet y = ;"})),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "compile_error",
    );
    assert_eq!(body["error"]["line"], 2, "{body}");
    assert!(body["error"]["column"].as_u64().unwrap() > 0, "{body}");

    let (status, updated) = t
        .admin(
            Method::PUT,
            &format!("{base}/{id}"),
            Some(json!({"name": "hello", "source": "1", "public": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["public"], true);
    let (_, updated) = t
        .admin(
            Method::PUT,
            &format!("{base}/{id}"),
            Some(json!({"name": "hello", "source": "2"})),
        )
        .await;
    assert_eq!(updated["version"], 3);
    assert_eq!(updated["public"], true, "an omitted public keeps its value");

    let (status, body) = t
        .admin(
            Method::PUT,
            &format!("{base}/{id}"),
            Some(json!({"name": "hello", "source": "fn ("})),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "compile_error",
    );
    let (_, got) = t.admin(Method::GET, &format!("{base}/{id}"), None).await;
    assert_eq!(got["source"], "2", "a failed update changes nothing");

    let (status, list) = t.admin(Method::GET, &base, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (status, _) = t.admin(Method::DELETE, &format!("{base}/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = t.admin(Method::GET, &format!("{base}/{id}"), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn api_keys_shown_once_and_deletion_revokes_at_once(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let (status, created) = t
        .admin(
            Method::POST,
            "/api/v1/admin/api-keys",
            Some(json!({"name": "ci", "scopes": ["app:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pk_"));
    assert_eq!(created["scopes"], json!(["app:read"]));

    let (status, list) = t.admin(Method::GET, "/api/v1/admin/api-keys", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none()),
        "{list}"
    );

    let (status, _) = t
        .call(Method::GET, "/api/v1/admin/apps", Some(&key), None)
        .await;
    assert_eq!(status, StatusCode::OK, "the key works (and is now cached)");
    let id = created["id"].as_str().unwrap();
    let (status, _) = t
        .admin(
            Method::DELETE,
            &format!("/api/v1/admin/api-keys/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = t
        .call(Method::GET, "/api/v1/admin/apps", Some(&key), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    let (status, body) = t
        .admin(
            Method::POST,
            "/api/v1/admin/api-keys",
            Some(json!({"name": "x", "scopes": ["root"]})),
        )
        .await;
    let message = assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    assert!(
        !message.contains("root"),
        "messages never echo input: {message}"
    );
}

/// Every admin route: no key → 401, a key without the scope → 403, the scope → 2xx.
#[sqlx::test(migrator = "MIGRATOR")]
async fn scope_matrix_covers_every_admin_route(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("matrix").await;
    let script = t.create_script(&app, "s", "1", false).await;

    let mut checked = std::collections::BTreeSet::new();
    for scope in [
        Scope::AppRead,
        Scope::AppWrite,
        Scope::ScriptRead,
        Scope::ScriptWrite,
        Scope::DataWrite,
        Scope::Admin,
    ] {
        // Fresh resources for routes that consume them.
        let victim_app = t
            .create_app(&format!("victim-{}", scope.as_str().replace(':', "-")))
            .await;
        let victim_script = t
            .create_script(
                &app,
                &format!("v-{}", scope.as_str().replace(':', "-")),
                "1",
                false,
            )
            .await;
        let (_, victim_key) = t
            .admin(
                Method::POST,
                "/api/v1/admin/api-keys",
                Some(json!({"name": "victim", "scopes": ["data:read"]})),
            )
            .await;
        let victim_key = victim_key["id"].as_str().unwrap().to_owned();
        let (_, victim_trigger) = t
            .admin(
                Method::POST,
                &format!("/api/v1/admin/apps/{app}/triggers"),
                Some(json!({"kind": "kv", "script_id": script, "config": {"collection": "c"}})),
            )
            .await;
        let victim_trigger = victim_trigger["id"].as_str().unwrap().to_owned();
        // A dead letter, as the dispatcher would write one.
        let victim_letter = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO dead_letters (id, app_id, trigger_id, script_id, source_kind, payload, attempts, \
             last_error, trigger_depth, first_attempt_at, last_attempt_at) \
             VALUES ($1::uuid, $2::uuid, $3::uuid, $4::uuid, 'kv', '{\"kind\":\"kv\",\"op\":\"set\",\"collection\":\"c\",\"key\":\"k\",\"value\":1}', \
             3, 'boom', 1, now(), now())",
        )
        .bind(&victim_letter)
        .bind(&app)
        .bind(&victim_trigger)
        .bind(&script)
        .execute(&t.pool)
        .await
        .unwrap();

        let routes: Vec<(Method, String, Option<Value>, StatusCode)> = match scope {
            Scope::AppRead => vec![
                (
                    Method::GET,
                    "/api/v1/admin/apps".into(),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/triggers"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/triggers/{victim_trigger}"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/dead-letters"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/dead-letters/{victim_letter}"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/outbox/stats"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/email-policy"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    "/api/v1/admin/email/status".into(),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/email-inbound"),
                    None,
                    StatusCode::OK,
                ),
            ],
            Scope::AppWrite => vec![
                (
                    Method::POST,
                    "/api/v1/admin/apps".into(),
                    Some(json!({"name": "made-by-matrix"})),
                    StatusCode::CREATED,
                ),
                (
                    Method::DELETE,
                    format!("/api/v1/admin/apps/{victim_app}"),
                    None,
                    StatusCode::NO_CONTENT,
                ),
                (
                    Method::POST,
                    format!("/api/v1/admin/apps/{app}/triggers"),
                    Some(
                        json!({"kind": "cron", "script_id": script, "config": {"schedule": "0 3 * * *"}}),
                    ),
                    StatusCode::CREATED,
                ),
                (
                    Method::POST,
                    format!("/api/v1/admin/apps/{app}/dead-letters/{victim_letter}/replay"),
                    None,
                    StatusCode::ACCEPTED,
                ),
                (
                    Method::DELETE,
                    format!("/api/v1/admin/apps/{app}/dead-letters/{victim_letter}"),
                    None,
                    StatusCode::NO_CONTENT,
                ),
                (
                    Method::DELETE,
                    format!("/api/v1/admin/apps/{app}/triggers/{victim_trigger}"),
                    None,
                    StatusCode::NO_CONTENT,
                ),
                (
                    Method::PUT,
                    format!("/api/v1/admin/apps/{app}/email-policy"),
                    Some(json!({"recipients": ["@example.com"], "daily_cap": 10})),
                    StatusCode::OK,
                ),
                (
                    Method::PUT,
                    format!("/api/v1/admin/apps/{app}/email-inbound"),
                    Some(json!({"secret": "a-secret-of-sixteen+"})),
                    StatusCode::OK,
                ),
                (
                    Method::POST,
                    format!("/api/v1/admin/apps/{app}/realtime/rotate-key"),
                    None,
                    StatusCode::NO_CONTENT,
                ),
            ],
            // Minting subscriber tokens (SPEC §3).
            Scope::DataWrite => vec![(
                Method::POST,
                format!("/api/v1/admin/apps/{app}/realtime/tokens"),
                Some(json!({"topics": ["orders"], "ttl_secs": 60})),
                StatusCode::CREATED,
            )],
            Scope::ScriptRead => vec![
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/secrets"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/scripts"),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::GET,
                    format!("/api/v1/admin/apps/{app}/scripts/{script}"),
                    None,
                    StatusCode::OK,
                ),
            ],
            Scope::ScriptWrite => vec![
                (
                    Method::POST,
                    format!("/api/v1/admin/apps/{app}/secrets"),
                    Some(json!({"name": "tok", "value": "v"})),
                    StatusCode::OK,
                ),
                (
                    Method::DELETE,
                    format!("/api/v1/admin/apps/{app}/secrets/tok"),
                    None,
                    StatusCode::NO_CONTENT,
                ),
                (
                    Method::POST,
                    format!("/api/v1/admin/apps/{app}/scripts"),
                    Some(json!({"name": "new", "source": "1"})),
                    StatusCode::CREATED,
                ),
                (
                    Method::PUT,
                    format!("/api/v1/admin/apps/{app}/scripts/{script}"),
                    Some(json!({"name": "s", "source": "2"})),
                    StatusCode::OK,
                ),
                (
                    Method::DELETE,
                    format!("/api/v1/admin/apps/{app}/scripts/{victim_script}"),
                    None,
                    StatusCode::NO_CONTENT,
                ),
            ],
            _ => vec![
                (
                    Method::POST,
                    "/api/v1/admin/api-keys".into(),
                    Some(json!({"name": "k", "scopes": ["app:read"]})),
                    StatusCode::CREATED,
                ),
                (
                    Method::GET,
                    "/api/v1/admin/api-keys".into(),
                    None,
                    StatusCode::OK,
                ),
                (
                    Method::DELETE,
                    format!("/api/v1/admin/api-keys/{victim_key}"),
                    None,
                    StatusCode::NO_CONTENT,
                ),
            ],
        };
        let wrong: Vec<Scope> = Scope::ALL
            .into_iter()
            .filter(|s| *s != scope && *s != Scope::Admin)
            .collect();
        let right = t.key_with(&[scope]).await;
        let wrong = t.key_with(&wrong).await;
        for (method, uri, body, ok) in routes {
            let (status, resp) = t.call(method.clone(), &uri, None, body.clone()).await;
            assert_error(status, &resp, StatusCode::UNAUTHORIZED, "unauthorized");
            let (status, resp) = t
                .call(method.clone(), &uri, Some(&wrong), body.clone())
                .await;
            let message = assert_error(status, &resp, StatusCode::FORBIDDEN, "forbidden");
            assert!(
                message.contains(scope.as_str()),
                "{method} {uri}: {message}"
            );
            let (status, resp) = t.call(method.clone(), &uri, Some(&right), body).await;
            assert_eq!(status, ok, "{method} {uri} with {scope}: {resp}");
            // Back to the route's template, to compare with the OpenAPI document.
            let template = uri
                .replace(&victim_app, "{app_id}")
                .replace(&app, "{app_id}")
                .replace(&victim_script, "{script_id}")
                .replace(&script, "{script_id}")
                .replace(&victim_key, "{id}")
                .replace(&victim_trigger, "{trigger_id}")
                .replace(&victim_letter, "{id}")
                .replace("/secrets/tok", "/secrets/{name}");
            checked.insert((method.to_string(), template));
        }
    }
    // Every admin route of the document (which is built with the router) was checked.
    let doc = serde_json::to_value(picloud::http::openapi()).unwrap();
    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/api/v1/admin/"))
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(|k| (k.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        checked, documented,
        "the matrix covers exactly the admin routes"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn invoke_returns_values_and_follows_updates(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let id = t
        .create_script(
            &app,
            "calc",
            "let b = ctx.request.body; #{ sum: b.n + 1, app: ctx.app_id, name: ctx.script.name }",
            false,
        )
        .await;
    let (status, out) = t.invoke(&app, "calc", json!({"n": 41})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out, json!({"sum": 42, "app": app, "name": "calc"}));

    for (source, expected) in [
        ("()", Value::Null),
        ("1.5", json!(1.5)),
        ("true", json!(true)),
        (r#""text""#, json!("text")),
        ("[1, \"two\", [3]]", json!([1, "two", [3]])),
    ] {
        let (status, _) = t
            .admin(
                Method::PUT,
                &format!("/api/v1/admin/apps/{app}/scripts/{id}"),
                Some(json!({"name": "calc", "source": source})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, out) = t.invoke(&app, "calc", Value::Null).await;
        assert_eq!(
            (status, out),
            (StatusCode::OK, expected),
            "after updating to {source}"
        );
    }

    // A renamed script answers under its new name only.
    t.admin(
        Method::PUT,
        &format!("/api/v1/admin/apps/{app}/scripts/{id}"),
        Some(json!({"name": "renamed", "source": "7"})),
    )
    .await;
    let (status, _) = t.invoke(&app, "calc", Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(t.invoke(&app, "renamed", Value::Null).await.1, json!(7));

    // Deleted: gone from the cache at once.
    t.admin(
        Method::DELETE,
        &format!("/api/v1/admin/apps/{app}/scripts/{id}"),
        None,
    )
    .await;
    let (status, body) = t.invoke(&app, "renamed", Value::Null).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let (status, body) = {
        t.create_script(&app, "thrower", r#"throw "nope""#, false)
            .await;
        t.invoke(&app, "thrower", Value::Null).await
    };
    let message = assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "script_error",
    );
    assert!(message.contains("nope"), "{message}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn public_scripts_run_without_a_key_private_ones_do_not(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "open", "\"hi\"", true).await;
    t.create_script(&app, "closed", "\"secret\"", false).await;
    let uri = |s: &str| format!("/api/v1/apps/{app}/invoke/{s}");

    let (status, out) = t.call(Method::POST, &uri("open"), None, None).await;
    assert_eq!((status, out), (StatusCode::OK, json!("hi")));
    let (status, body) = t.call(Method::POST, &uri("closed"), None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // An unknown script looks the same as a private one to a stranger.
    let (status, body) = t.call(Method::POST, &uri("missing"), None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    let reader = t.key_with(&[Scope::DataRead, Scope::AppWrite]).await;
    let (status, body) = t
        .call(Method::POST, &uri("closed"), Some(&reader), None)
        .await;
    let message = assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(message.contains("data:write"), "{message}");
    let writer = t.key_with(&[Scope::DataWrite]).await;
    let (status, out) = t
        .call(Method::POST, &uri("closed"), Some(&writer), None)
        .await;
    assert_eq!((status, out), (StatusCode::OK, json!("secret")));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn scripts_never_see_credentials_in_headers(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "h", "ctx.request.headers", false)
        .await;
    let request = Request::post(format!("/api/v1/apps/{app}/invoke/h"))
        .header("authorization", format!("Bearer {}", t.admin_key))
        .header("cookie", "session=abc")
        .header("x-custom", "yes")
        .body(Body::empty())
        .unwrap();
    let (status, bytes) = t.send(request).await;
    assert_eq!(status, StatusCode::OK);
    let headers: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(headers["x-custom"], "yes", "{headers}");
    assert!(
        headers.get("authorization").is_none() && headers.get("cookie").is_none(),
        "{headers}"
    );
    assert!(!String::from_utf8_lossy(&bytes).contains(&t.admin_key));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn kv_round_trips_every_type_through_scripts(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let other = t.create_app("b").await;
    let script = r#"
        let v = ctx.request.body;
        kv::set("things", "s", "text");
        kv::set("things", "i", 42);
        kv::set("things", "f", 2.5);
        kv::set("things", "b", false);
        kv::set("things", "m", #{ a: 1, nested: #{ list: [1, 2.5, "x", ()] } });
        kv::set("things", "a", [1, "two", true]);
        kv::set("things", "u", ());
        kv::set("other", "x:1", 1);
        #{
            s: kv::get("things", "s"), s_is_string: type_of(kv::get("things", "s")) == "string",
            i: kv::get("things", "i"), i_is_int: type_of(kv::get("things", "i")) == "i64",
            f: kv::get("things", "f"), f_is_float: type_of(kv::get("things", "f")) == "f64",
            b: kv::get("things", "b"),
            m: kv::get("things", "m"), m_is_map: type_of(kv::get("things", "m")) == "map",
            a: kv::get("things", "a"), a_is_array: type_of(kv::get("things", "a")) == "array",
            u: kv::get("things", "u"),
            missing: kv::get("things", "nope"),
            all: kv::list("things"),
            prefixed: kv::list("other", "x:"),
            none: kv::list("other", "y"),
        }
    "#;
    t.create_script(&app, "kv", script, false).await;
    let (status, out) = t.invoke(&app, "kv", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["s"], "text");
    assert_eq!(out["i"], 42);
    assert_eq!(out["f"], 2.5);
    assert_eq!(out["b"], false);
    assert_eq!(
        out["m"],
        json!({"a": 1, "nested": {"list": [1, 2.5, "x", null]}})
    );
    assert_eq!(out["a"], json!([1, "two", true]));
    assert_eq!(out["u"], Value::Null);
    assert_eq!(out["missing"], Value::Null);
    for flag in [
        "s_is_string",
        "i_is_int",
        "f_is_float",
        "m_is_map",
        "a_is_array",
    ] {
        assert_eq!(out[flag], true, "{flag}: {out}");
    }
    assert_eq!(
        out["all"],
        json!(["a", "b", "f", "i", "m", "s", "u"]),
        "() is stored, ascending order"
    );
    assert_eq!(out["prefixed"], json!(["x:1"]));
    assert_eq!(out["none"], json!([]));

    // Apps cannot see each other's kv.
    t.create_script(
        &other,
        "peek",
        r#"#{ v: kv::get("things", "s"), keys: kv::list("things") }"#,
        false,
    )
    .await;
    let (_, out) = t.invoke(&other, "peek", Value::Null).await;
    assert_eq!(out, json!({"v": null, "keys": []}));

    // SDK errors are catchable maps with kind and message.
    t.create_script(
        &app,
        "bad",
        r#"let caught = (); try { kv::set("no/slash", "k", 1) } catch (e) { caught = e } caught"#,
        false,
    )
    .await;
    let (_, out) = t.invoke(&app, "bad", Value::Null).await;
    assert_eq!(out["kind"], "invalid_argument", "{out}");
    assert!(
        out["message"].as_str().unwrap().contains("collection"),
        "{out}"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_running_runaway_script_does_not_stall_other_invokes(pool: PgPool) {
    // A long timeout and no operation cap, so `spin` is surely still running while
    // the other invokes are answered; it announces itself through kv first.
    let mut config = support::test_config();
    config.limits.timeout = std::time::Duration::from_secs(4);
    config.limits.max_operations = u64::MAX;
    let t = TestApp::with_config(pool, config).await;
    let app = t.create_app("a").await;
    t.create_script(
        &app,
        "spin",
        r#"kv::set("m", "spin", true); loop {}"#,
        false,
    )
    .await;
    t.create_script(&app, "peek", r#"kv::get("m", "spin")"#, false)
        .await;
    t.create_script(&app, "quick", "1 + 1", false).await;

    let spinning = {
        let t2 = TestApp {
            router: t.router.clone(),
            pool: t.pool.clone(),
            admin_key: t.admin_key.clone(),
        };
        let app = app.clone();
        tokio::spawn(async move { t2.invoke(&app, "spin", Value::Null).await })
    };
    let mut started = false;
    for _ in 0..300 {
        if t.invoke(&app, "peek", Value::Null).await == (StatusCode::OK, json!(true)) {
            started = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(started, "the runaway script never started");

    for _ in 0..5 {
        let (status, out) = t.invoke(&app, "quick", Value::Null).await;
        assert_eq!((status, out), (StatusCode::OK, json!(2)));
    }
    assert!(
        !spinning.is_finished(),
        "the runaway script ended before the other invokes were answered"
    );
    let (status, body) = spinning.await.unwrap();
    let message = assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "script_limit",
    );
    assert!(message.contains("timeout"), "{message}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn runaway_scripts_stop_with_a_named_limit_and_runs_are_counted(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "spin", "loop {}", false).await;
    t.create_script(
        &app,
        "bomb",
        r#"let s = "xxxxxxxx"; loop { s += s; }"#,
        false,
    )
    .await;
    t.create_script(&app, "quick", "1 + 1", false).await;
    t.create_script(&app, "thrower", r#"throw "no""#, false)
        .await;

    let (status, body) = t.invoke(&app, "spin", Value::Null).await;
    let message = assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "script_limit",
    );
    assert!(
        message.contains("timeout") || message.contains("operations"),
        "{message}"
    );
    let (status, body) = t.invoke(&app, "bomb", Value::Null).await;
    let message = assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "script_limit",
    );
    assert!(message.contains("string"), "{message}");
    let (status, body) = t.invoke(&app, "thrower", Value::Null).await;
    assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "script_error",
    );
    for _ in 0..3 {
        assert_eq!(
            t.invoke(&app, "quick", Value::Null).await,
            (StatusCode::OK, json!(2))
        );
    }

    let (status, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_owned();
    for line in [
        r#"picloud_script_runs_total{outcome="limit",trigger="http"} 2"#,
        r#"picloud_script_runs_total{outcome="error",trigger="http"} 1"#,
        r#"picloud_script_runs_total{outcome="ok",trigger="http"} 3"#,
        r#"picloud_script_run_duration_seconds_count{outcome="limit"} 2"#,
        r#"picloud_script_run_duration_seconds_count{outcome="error"} 1"#,
        r#"picloud_script_run_duration_seconds_count{outcome="ok"} 3"#,
        r#"picloud_script_run_duration_seconds_bucket{outcome="ok",le="+Inf"} 3"#,
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn health_readiness_index_and_metrics(pool: PgPool) {
    let t = TestApp::new(pool).await;
    assert_eq!(
        t.call(Method::GET, "/healthz", None, None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        t.call(Method::GET, "/readyz", None, None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let index = tower::ServiceExt::oneshot(
        t.router.clone(),
        Request::get("/").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    let content_type = index.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let (_, page) = t.call(Method::GET, "/", None, None).await;
    assert!(page.as_str().unwrap().contains("/api/v1/openapi.json"));
    let (status, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // Registered before any run, so a scraper sees the family from the start.
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("# TYPE picloud_script_runs_total counter"),
        "{metrics}"
    );

    // Readiness fails once the database is gone.
    t.pool.close().await;
    let (status, body) = t.call(Method::GET, "/readyz", None, None).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
}

/// An SDK write that cannot finish within `PICLOUD_SDK_TIMEOUT_MS` (here it
/// waits for a row another transaction holds) is cancelled by PostgreSQL, so
/// the script's `unavailable` means "not written", and the write never lands
/// later. The pool is the server's own (`database::pool_options`).
#[sqlx::test(migrator = "MIGRATOR")]
async fn an_sdk_call_past_its_timeout_is_cancelled_and_does_not_take_effect(
    _: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let sdk_timeout = std::time::Duration::from_secs(1);
    let pool = picloud::database::pool_options(Some(sdk_timeout))
        .connect_with(connect)
        .await
        .unwrap();
    let mut config = support::test_config();
    config.limits.sdk_timeout = sdk_timeout;
    config.limits.timeout = std::time::Duration::from_secs(5);
    let t = TestApp::with_config(pool.clone(), config).await;
    let app = t.create_app("a").await;
    t.create_script(&app, "first", r#"kv::set("c", "k", 1)"#, false)
        .await;
    t.create_script(
        &app,
        "second",
        r#"let r = (); try { kv::set("c", "k", 2); r = "written" } catch (e) { r = e } r"#,
        false,
    )
    .await;
    assert_eq!(t.invoke(&app, "first", json!(null)).await.0, StatusCode::OK);

    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM kv_entries WHERE collection = 'c' AND key = 'k' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (status, out) = t.invoke(&app, "second", json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["kind"], "unavailable", "{out}");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("did not take effect"),
        "{out}"
    );
    holder.rollback().await.unwrap();

    // A statement still waiting for the row would take it before this one
    // (lock waiters queue in order) and write 2 first.
    let mut reader = pool.begin().await.unwrap();
    let value: sqlx::types::Json<Value> = sqlx::query_scalar(
        "SELECT value FROM kv_entries WHERE collection = 'c' AND key = 'k' FOR UPDATE",
    )
    .fetch_one(&mut *reader)
    .await
    .unwrap();
    assert_eq!(value.0, json!(1), "the cancelled write never landed");
    reader.rollback().await.unwrap();
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(waiting, 0);
}
