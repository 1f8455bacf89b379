//! The trigger registry over HTTP: every kind, validation, secrets, scopes.

mod support;

use axum::http::{Method, StatusCode};
use picloud_manager_core::MIGRATOR;
use serde_json::{json, Value};
use sqlx::PgPool;
use support::{assert_error, TestApp};

fn triggers(app: &str) -> String {
    format!("/api/v1/admin/apps/{app}/triggers")
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_kind_registers_lists_and_deletes(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let script = t.create_script(&app, "handler", "1", false).await;
    let cases = [
        json!({"kind": "kv", "script_id": script, "config": {"collection": "orders", "key_prefix": "eu/", "ops": ["set"]}}),
        json!({"kind": "cron", "script_id": script, "config": {"schedule": "*/5 * * * * *"}, "retry": {"max_attempts": 5, "backoff": "fixed", "base_ms": 250}}),
        json!({"kind": "pubsub", "script_id": script, "config": {"topic": "orders.*"}}),
        json!({"kind": "email", "script_id": script}),
        json!({"kind": "dead_letter", "script_id": script, "config": {"source": "kv"}}),
    ];
    let mut ids = Vec::new();
    for body in &cases {
        let (status, created) = t
            .admin(Method::POST, &triggers(&app), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}: {created}");
        assert_eq!(created["kind"], body["kind"]);
        assert_eq!(created["app_id"], app.as_str());
        assert_eq!(created["script_id"], script.as_str());
        let (status, fetched) = t
            .admin(
                Method::GET,
                &format!("{}/{}", triggers(&app), created["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fetched, created);
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let (_, kv) = t
        .admin(Method::GET, &format!("{}/{}", triggers(&app), ids[0]), None)
        .await;
    assert_eq!(
        kv["config"],
        json!({"collection": "orders", "key_prefix": "eu/", "ops": ["set"]})
    );
    assert_eq!(
        kv["retry"],
        json!({"max_attempts": 3, "backoff": "exponential", "base_ms": 1000}),
        "the default retry policy"
    );
    assert!(kv.get("inbound_url").is_none() && kv.get("signed").is_none());
    let (_, cron) = t
        .admin(Method::GET, &format!("{}/{}", triggers(&app), ids[1]), None)
        .await;
    assert_eq!(
        cron["retry"],
        json!({"max_attempts": 5, "backoff": "fixed", "base_ms": 250})
    );
    let (_, email) = t
        .admin(Method::GET, &format!("{}/{}", triggers(&app), ids[3]), None)
        .await;
    assert_eq!(email["signed"], false);
    assert_eq!(
        email["inbound_url"],
        format!("http://127.0.0.1:8080/api/v1/email-inbound/{}", ids[3])
    );

    let (status, list) = t.admin(Method::GET, &triggers(&app), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 5);
    assert_eq!(list[0]["id"], ids[4].as_str(), "newest first");

    let one = format!("{}/{}", triggers(&app), ids[0]);
    let (status, _) = t.admin(Method::DELETE, &one, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = t.admin(Method::GET, &one, None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t.admin(Method::DELETE, &one, None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Deleting the script takes its triggers with it.
    t.admin(
        Method::DELETE,
        &format!("/api/v1/admin/apps/{app}/scripts/{script}"),
        None,
    )
    .await;
    let (_, list) = t.admin(Method::GET, &triggers(&app), None).await;
    assert_eq!(list, json!([]));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_registrations_are_422_and_store_nothing(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let other = t.create_app("b").await;
    let script = t.create_script(&app, "handler", "1", false).await;
    let foreign = t.create_script(&other, "theirs", "1", false).await;
    let missing = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"kind": "webhook", "script_id": script, "config": {}}),
            "",
        ),
        (
            json!({"kind": "kv", "script_id": foreign, "config": {"collection": "c"}}),
            "script_id names no script of this app",
        ),
        (
            json!({"kind": "kv", "script_id": missing, "config": {"collection": "c"}}),
            "script_id names no script of this app",
        ),
        (
            json!({"kind": "cron", "script_id": script, "config": {"schedule": "every day"}}),
            "5 fields",
        ),
        (
            json!({"kind": "cron", "script_id": script, "config": {"schedule": "* * * *"}}),
            "5 fields",
        ),
        (
            json!({"kind": "cron", "script_id": script, "config": {"schedule": "0 0 30 2 *"}}),
            "never fires",
        ),
        (
            json!({"kind": "kv", "script_id": script, "config": {"collection": "bad name"}}),
            "collection name",
        ),
        (
            json!({"kind": "kv", "script_id": script, "config": {"collection": "c", "ops": []}}),
            "ops",
        ),
        (json!({"kind": "kv", "script_id": script}), "config"),
        (
            json!({"kind": "kv", "script_id": script, "config": {"collection": "c", "ops": ["set", "set"]}}),
            "ops must not name an op twice",
        ),
        (
            json!({"kind": "kv", "script_id": script, "config": {"collection": "c"}, "retries": {"max_attempts": 1}}),
            "unknown field `retries`",
        ),
        (
            json!({"kind": "pubsub", "script_id": script, "config": {"topic": "a..b"}}),
            "topic",
        ),
        (
            json!({"kind": "email", "script_id": script, "config": {"inbound_secret": "short"}}),
            "inbound_secret",
        ),
        (
            json!({"kind": "dead_letter", "script_id": script, "config": {"source": "dead_letter"}}),
            "",
        ),
        (
            json!({"kind": "kv", "script_id": script, "config": {"collection": "c"}, "retry": {"max_attempts": 0, "backoff": "fixed", "base_ms": 1}}),
            "max_attempts",
        ),
        (
            json!({"kind": "kv", "script_id": script, "config": {"collection": "c"}, "retry": {"max_attempts": 3, "backoff": "linear", "base_ms": 1}}),
            "",
        ),
    ];
    for (body, expected) in cases {
        let (status, resp) = t
            .admin(Method::POST, &triggers(&app), Some(body.clone()))
            .await;
        let message = assert_error(
            status,
            &resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        );
        assert!(message.contains(expected), "{body}: {message}");
        assert!(
            !message.contains("every day") && !message.contains("bad name"),
            "{message}"
        );
    }
    let (_, list) = t.admin(Method::GET, &triggers(&app), None).await;
    assert_eq!(list, json!([]), "nothing was stored");

    // An unknown app is a 404, before anything else.
    let (status, resp) = t
        .admin(
            Method::POST,
            &triggers(&missing),
            Some(json!({"kind": "kv", "script_id": script, "config": {"collection": "c"}})),
        )
        .await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
    let (status, resp) = t.admin(Method::GET, &triggers(&missing), None).await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
    // A trigger of another app is not found through this one.
    let (_, theirs) = t
        .admin(
            Method::POST,
            &triggers(&other),
            Some(json!({"kind": "kv", "script_id": foreign, "config": {"collection": "c"}})),
        )
        .await;
    // A dead_letter filter names a trigger or script of this app only.
    for (config, expected) in [
        (
            json!({"trigger_id": theirs["id"]}),
            "config.trigger_id names no trigger of this app",
        ),
        (
            json!({"script_id": foreign}),
            "config.script_id names no script of this app",
        ),
    ] {
        let (status, resp) = t
            .admin(
                Method::POST,
                &triggers(&app),
                Some(json!({"kind": "dead_letter", "script_id": script, "config": config})),
            )
            .await;
        let message = assert_error(
            status,
            &resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        );
        assert_eq!(message, expected);
    }
    let path = format!("{}/{}", triggers(&app), theirs["id"].as_str().unwrap());
    let (status, resp) = t.admin(Method::GET, &path, None).await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
    let (status, resp) = t.admin(Method::DELETE, &path, None).await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_email_triggers_secret_is_sealed_and_never_shown(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("a").await;
    let script = t.create_script(&app, "handler", "1", false).await;
    let secret = "a-very-secret-inbound-value";
    let (status, created) = t
        .admin(
            Method::POST,
            &triggers(&app),
            Some(json!({"kind": "email", "script_id": script, "config": {"inbound_secret": secret, "recipient_filter": "support@"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["signed"], true);
    assert_eq!(created["config"], json!({"recipient_filter": "support@"}));
    let (_, list) = t.admin(Method::GET, &triggers(&app), None).await;
    assert!(!list.to_string().contains(secret));
    assert!(!created.to_string().contains(secret));

    let stored: (Value, Vec<u8>, String) = sqlx::query_as(
        "SELECT config, inbound_ciphertext, inbound_key_id FROM triggers WHERE id = $1::uuid",
    )
    .bind(created["id"].as_str().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!stored.0.to_string().contains(secret), "not in the config");
    assert!(
        !stored
            .1
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "sealed, not plain"
    );
    assert_eq!(stored.2.len(), 16, "a key id");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_trigger_remembers_the_key_that_registered_it(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("a").await;
    let script = t.create_script(&app, "handler", "1", false).await;
    let (_, key) = t
        .admin(
            Method::POST,
            "/api/v1/admin/api-keys",
            Some(json!({"name": "ops", "scopes": ["app:write"]})),
        )
        .await;
    let (status, created) = t
        .call(
            Method::POST,
            &triggers(&app),
            Some(key["key"].as_str().unwrap()),
            Some(json!({"kind": "dead_letter", "script_id": script})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let created_by: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT created_by FROM triggers WHERE id = $1::uuid")
            .bind(created["id"].as_str().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(created_by.unwrap().to_string(), key["id"].as_str().unwrap());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn dead_letters_page_newest_first_even_while_they_are_deleted(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("a").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO dead_letters (id, app_id, source_kind, payload, attempts, last_error, trigger_depth, \
             first_attempt_at, last_attempt_at, created_at) \
             VALUES ($1, $2::uuid, 'kv', '{}', 1, 'x', 1, now(), now(), now() - make_interval(secs => $3))",
        )
        .bind(id)
        .bind(&app)
        .bind(f64::from(10 - i))
        .execute(&pool)
        .await
        .unwrap();
        ids.push(id.to_string());
    }
    ids.reverse(); // newest first
    let base = format!("/api/v1/admin/apps/{app}/dead-letters");
    let (_, page1) = t.admin(Method::GET, &format!("{base}?limit=2"), None).await;
    let page1 = page1.as_array().unwrap().clone();
    let got: Vec<&str> = page1.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![ids[0].as_str(), ids[1].as_str()]);
    // The last of the page is deleted (replayed and cleaned up, say) before the next page.
    let last = &page1[1];
    let last_id = last["id"].as_str().unwrap();
    t.admin(Method::DELETE, &format!("{base}/{last_id}"), None)
        .await;
    let at = last["created_at"].as_str().unwrap().replace('+', "%2B");
    let (status, page2) = t
        .admin(
            Method::GET,
            &format!("{base}?limit=2&before={last_id}&before_at={at}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page2}");
    let got: Vec<&str> = page2
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[3].as_str()]);
    // `before` alone names a dead letter that is gone: a clear 404, not an empty page.
    let (status, body) = t
        .admin(
            Method::GET,
            &format!("{base}?limit=2&before={last_id}"),
            None,
        )
        .await;
    let message = assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert!(message.contains("before_at"), "{message}");
    // Bad paging parameters are 400.
    for query in ["limit=0", "limit=201", "before=nope", "before_at=yesterday"] {
        let (status, body) = t.admin(Method::GET, &format!("{base}?{query}"), None).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_dead_letter_is_replayed_once_while_its_replay_is_pending(pool: PgPool) {
    // No dispatcher runs here, so a replayed event stays pending.
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("a").await;
    let script = t.create_script(&app, "handler", "1", false).await;
    let (_, trigger) = t
        .admin(
            Method::POST,
            &triggers(&app),
            Some(json!({"kind": "kv", "script_id": script, "config": {"collection": "c"}})),
        )
        .await;
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO dead_letters (id, app_id, trigger_id, script_id, source_kind, payload, attempts, \
         last_error, trigger_depth, first_attempt_at, last_attempt_at) \
         VALUES ($1, $2::uuid, $3::uuid, $4::uuid, 'kv', '{\"kind\": \"kv\"}', 1, 'x', 1, now(), now())",
    )
    .bind(id)
    .bind(&app)
    .bind(trigger["id"].as_str().unwrap())
    .bind(&script)
    .execute(&pool)
    .await
    .unwrap();
    let replay = format!("/api/v1/admin/apps/{app}/dead-letters/{id}/replay");
    // Concurrent replays: exactly one is queued, the others are told it is pending.
    let answers =
        futures_util::future::join_all((0..6).map(|_| t.admin(Method::POST, &replay, None))).await;
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(accepted.len(), 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::ACCEPTED) {
        let message = assert_error(*status, body, StatusCode::CONFLICT, "conflict");
        assert!(message.contains("replayed already"), "{message}");
    }
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE app_id = $1::uuid")
        .bind(&app)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 1);
    // Once that event is handled (its row gone), the dead letter can be replayed again.
    sqlx::query("DELETE FROM outbox WHERE id = $1")
        .bind(accepted[0]["outbox_id"].as_i64().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let (status, body) = t.admin(Method::POST, &replay, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_ne!(body["outbox_id"], accepted[0]["outbox_id"]);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_dead_letter_page_stops_at_its_byte_budget(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("a").await;
    // Three dead letters of 5 MB events: 8 MiB holds the first two.
    for i in 0..3 {
        sqlx::query(
            "INSERT INTO dead_letters (id, app_id, source_kind, payload, attempts, last_error, trigger_depth, \
             first_attempt_at, last_attempt_at, created_at) \
             VALUES ($1, $2::uuid, 'kv', jsonb_build_object('kind', 'kv', 'value', repeat('x', 5000000)), \
                     1, 'x', 1, now(), now(), now() - make_interval(secs => $3))",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(&app)
        .bind(f64::from(i))
        .execute(&pool)
        .await
        .unwrap();
    }
    let list = format!("/api/v1/admin/apps/{app}/dead-letters");
    let (status, page) = t.admin(Method::GET, &list, None).await;
    assert_eq!(status, StatusCode::OK);
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 2, "the byte budget ends the page");
    let last = page[1]["id"].as_str().unwrap();
    let (_, rest) = t
        .admin(Method::GET, &format!("{list}?before={last}"), None)
        .await;
    assert_eq!(
        rest.as_array().unwrap().len(),
        1,
        "the next page has the rest"
    );
    // `limit` still bounds a page.
    let (_, one) = t.admin(Method::GET, &format!("{list}?limit=1"), None).await;
    assert_eq!(one.as_array().unwrap().len(), 1);
}
