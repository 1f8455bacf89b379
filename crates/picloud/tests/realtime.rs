//! Realtime over real HTTP routing and PostgreSQL (SPEC §9): a script's
//! publish reaching SSE subscribers (also through another server state on the
//! same database, with its own listener: another process as far as
//! PostgreSQL can tell), tokens, the signing key's sealing and rotation.

mod support;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
    Router,
};
use futures_util::StreamExt;
use picloud::{
    http::{build_router, build_state, AppState},
    realtime,
};
use picloud_manager_core::MIGRATOR;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use support::{assert_error, eventually, test_config, test_keyring, TestApp};

/// A server on `pool` with its realtime listener running (as `serve` has it).
async fn server(
    pool: &PgPool,
    keyring: std::sync::Arc<picloud_shared::crypto::Keyring>,
) -> (Router, AppState) {
    server_with(pool, keyring, |_| {}).await
}

/// [`server`] with its configuration adjusted by `adjust`.
async fn server_with(
    pool: &PgPool,
    keyring: std::sync::Arc<picloud_shared::crypto::Keyring>,
    adjust: impl FnOnce(&mut picloud::config::AppConfig),
) -> (Router, AppState) {
    // Messages of 100 KB (a published message is held to the kv value limit).
    let mut config = test_config();
    config.kv_max_value_bytes = 1 << 20;
    config.limits.max_string_bytes = 1 << 20;
    adjust(&mut config);
    let state = build_state(pool.clone(), config, keyring).expect("the app builds");
    tokio::spawn(realtime::listen(
        pool.clone(),
        state.hub.clone(),
        state.realtime.clone(),
    ));
    let hub = state.hub.clone();
    eventually("the realtime listener", Duration::from_secs(10), || {
        let listening = hub.listening();
        async move { listening.then_some(()) }
    })
    .await;
    (build_router(state.clone()), state)
}

/// An app with a public script `pub` that publishes its body's `message` to its body's `topic`.
async fn app_with_publisher(t: &TestApp) -> String {
    let app = t.create_app("live").await;
    t.create_script(
        &app,
        "pub",
        "pubsub::publish(ctx.request.body.topic, ctx.request.body.message); true",
        true,
    )
    .await;
    app
}

async fn mint(t: &TestApp, app: &str, topics: &[&str], ttl_secs: u64) -> String {
    let (status, issued) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/realtime/tokens"),
            Some(json!({"topics": topics, "ttl_secs": ttl_secs})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert!(
        issued["expires_at"].as_str().unwrap().ends_with('Z'),
        "{issued}"
    );
    issued["token"].as_str().unwrap().to_owned()
}

/// An open SSE stream.
struct Events {
    body: axum::body::BodyDataStream,
    buffer: String,
}

impl Events {
    /// Events until the stream ends (keep-alive comments skipped).
    async fn count_until_end(mut self) -> usize {
        let mut text = std::mem::take(&mut self.buffer);
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), self.body.next())
            .await
            .expect("the stream ends within 10 s")
        {
            text.push_str(std::str::from_utf8(&chunk.expect("the stream reads")).unwrap());
        }
        text.split("\n\n")
            .filter(|block| block.contains("data:"))
            .count()
    }

    /// The next event as `(event, data, id)`, skipping keep-alive comments.
    async fn next(&mut self) -> (String, String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data, mut id) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim_start().to_owned();
                    }
                }
                if !event.is_empty() || !data.is_empty() {
                    return (event, data, id);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream is open")
                .expect("the stream reads");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// Subscribes through `router`; `Ok` the stream, `Err` the refusal.
async fn subscribe(
    router: &Router,
    app: &str,
    topics: &str,
    token: Option<&str>,
    in_query: bool,
) -> Result<Events, (StatusCode, Value)> {
    let mut uri = format!("/api/v1/apps/{app}/realtime?topics={topics}");
    let mut request = Request::builder().method(Method::GET);
    if let Some(token) = token {
        if in_query {
            uri.push_str(&format!("&token={token}"));
        } else {
            request = request.header("authorization", format!("Bearer {token}"));
        }
    }
    let response = tower::ServiceExt::oneshot(
        router.clone(),
        request.uri(uri).body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    let status = response.status();
    if status != StatusCode::OK {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        return Err((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ));
    }
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Ok(Events {
        body: response.into_body().into_data_stream(),
        buffer: String::new(),
    })
}

async fn publish(router: &Router, app: &str, topic: &str, message: Value) {
    let response = tower::ServiceExt::oneshot(
        router.clone(),
        Request::post(format!("/api/v1/apps/{app}/invoke/pub"))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"topic": topic, "message": message}).to_string(),
            ))
            .unwrap(),
    )
    .await
    .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_scripts_publish_reaches_subscribers_of_its_topic_only(pool: PgPool) {
    let keyring = test_keyring();
    let (router, _state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let token = mint(&t, &app, &["orders", "chat.*"], 600).await;
    let mut orders = subscribe(&router, &app, "orders", Some(&token), false)
        .await
        .unwrap();
    // The token in the query, as EventSource sends it; a pattern grant.
    let mut chat = subscribe(&router, &app, "chat.room1", Some(&token), true)
        .await
        .unwrap();
    publish(&router, &app, "billing", json!({"n": 0})).await;
    publish(&router, &app, "chat.room1", json!({"says": "hi"})).await;
    publish(&router, &app, "orders", json!({"n": 1})).await;
    let (event, data, id) = orders.next().await;
    assert_eq!(event, "orders");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"n": 1})
    );
    assert!(!id.is_empty());
    let (event, data, _) = chat.next().await;
    assert_eq!(event, "chat.room1");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"says": "hi"})
    );
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    let _ = metrics;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_tokens_are_refused_with_their_status(pool: PgPool) {
    let keyring = test_keyring();
    let (router, _state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let other = t.create_app("other").await;
    let token = mint(&t, &app, &["orders"], 600).await;
    let refused = |r: Result<Events, (StatusCode, Value)>| match r {
        Ok(_) => panic!("subscribed"),
        Err(refusal) => refusal,
    };
    let (status, body) = refused(subscribe(&router, &app, "orders", None, false).await);
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = refused(subscribe(&router, &app, "orders", Some("rt1.nope"), false).await);
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // A changed MAC: forged.
    let forged = format!("{}A", &token[..token.len() - 1]);
    let forged = if forged == token {
        format!("{}B", &token[..token.len() - 1])
    } else {
        forged
    };
    let (status, body) = refused(subscribe(&router, &app, "orders", Some(&forged), false).await);
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // A topic the token does not grant, and another app's URL.
    let (status, body) =
        refused(subscribe(&router, &app, "orders,billing", Some(&token), false).await);
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = refused(subscribe(&router, &other, "orders", Some(&token), false).await);
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    // Expired.
    let short = mint(&t, &app, &["orders"], 1).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, body) = refused(subscribe(&router, &app, "orders", Some(&short), false).await);
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // No topics, or a malformed one: 400; no such app: 404.
    let (status, body) = refused(subscribe(&router, &app, "", Some(&token), false).await);
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = refused(subscribe(&router, &app, "a..b", Some(&token), false).await);
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // At most 64 topics in a subscription (and in a token, below).
    let sixty_five: Vec<String> = (0..65).map(|n| format!("t{n}")).collect();
    let (status, body) =
        refused(subscribe(&router, &app, &sixty_five.join(","), Some(&token), false).await);
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let missing = uuid::Uuid::new_v4().to_string();
    let (status, body) = refused(subscribe(&router, &missing, "orders", Some(&token), false).await);
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // Bad mint requests.
    for bad in [
        json!({"topics": [], "ttl_secs": 60}),
        json!({"topics": ["a"], "ttl_secs": 0}),
        json!({"topics": ["a"], "ttl_secs": 604801}),
        json!({"topics": ["a..b"], "ttl_secs": 60}),
        json!({"topics": sixty_five, "ttl_secs": 60}),
    ] {
        let (status, body) = t
            .admin(
                Method::POST,
                &format!("/api/v1/admin/apps/{app}/realtime/tokens"),
                Some(bad),
            )
            .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        );
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rotated_key_keeps_verifying_for_its_grace_period_only(pool: PgPool) {
    let keyring = test_keyring();
    let (router, _state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let old = mint(&t, &app, &["orders"], 600).await;
    let (status, body) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/realtime/rotate-key"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let new = mint(&t, &app, &["orders"], 600).await;
    assert!(subscribe(&router, &app, "orders", Some(&old), false)
        .await
        .is_ok());
    assert!(subscribe(&router, &app, "orders", Some(&new), false)
        .await
        .is_ok());
    // The grace period ends.
    sqlx::query("UPDATE app_secrets SET previous_until = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let Err((status, body)) = subscribe(&router, &app, "orders", Some(&old), false).await else {
        panic!("the old token still subscribes");
    };
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(subscribe(&router, &app, "orders", Some(&new), false)
        .await
        .is_ok());
    // Never stored in plaintext.
    let plaintext: Option<Vec<u8>> = sqlx::query_scalar("SELECT realtime_key FROM app_secrets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(plaintext.is_none());
}

async fn rotate(t: &TestApp, app: &str) {
    let (status, body) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/realtime/rotate-key"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rotation_ends_the_streams_of_retired_keys_on_every_server(pool: PgPool) {
    let keyring = test_keyring();
    let (one, _a) = server(&pool, keyring.clone()).await;
    let (two, _b) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring.clone()).await;
    let app = app_with_publisher(&t).await;
    let first = mint(&t, &app, &["orders"], 600).await;
    let mut first_on_one = subscribe(&one, &app, "orders", Some(&first), false)
        .await
        .unwrap();
    let mut first_on_two = subscribe(&two, &app, "orders", Some(&first), true)
        .await
        .unwrap();
    rotate(&t, &app).await;
    let second = mint(&t, &app, &["orders"], 600).await;
    let mut second_on_two = subscribe(&two, &app, "orders", Some(&second), false)
        .await
        .unwrap();
    // Inside the grace (an hour) the first key's streams still receive.
    publish(&one, &app, "orders", json!({"n": 1})).await;
    for events in [&mut first_on_one, &mut first_on_two, &mut second_on_two] {
        assert_eq!(events.next().await.1, r#"{"n":1}"#);
    }
    // Rotated again: the first key verifies nothing now, its streams end on
    // both servers; the second key's (the previous one now) live on.
    rotate(&t, &app).await;
    assert_eq!(first_on_one.count_until_end().await, 0);
    assert_eq!(first_on_two.count_until_end().await, 0);
    let third = mint(&t, &app, &["orders"], 600).await;
    let mut third_on_one = subscribe(&one, &app, "orders", Some(&third), false)
        .await
        .unwrap();
    publish(&one, &app, "orders", json!({"n": 2})).await;
    assert_eq!(second_on_two.next().await.1, r#"{"n":2}"#);
    assert_eq!(third_on_one.next().await.1, r#"{"n":2}"#);
    // A server whose rotations give one second of grace: the third key's
    // stream ends when that second is over, the second key's at once.
    let mut config = test_config();
    config.realtime_key_grace_secs = 1;
    let short_grace = TestApp::with_keyring(pool.clone(), config, keyring).await;
    rotate(&short_grace, &app).await;
    assert_eq!(second_on_two.count_until_end().await, 0);
    assert_eq!(third_on_one.count_until_end().await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_rotations_at_once_retire_two_keys(pool: PgPool) {
    let keyring = test_keyring();
    let (router, state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let app_id = picloud_shared::ids::AppId(uuid::Uuid::parse_str(&app).unwrap());
    for _ in 0..5 {
        let before = mint(&t, &app, &["orders"], 600).await;
        let (one, two) = tokio::join!(state.realtime.rotate(app_id), state.realtime.rotate(app_id));
        one.unwrap();
        two.unwrap();
        // Both rotations happened: the key before them verifies nothing.
        let Err((status, body)) = subscribe(&router, &app, "orders", Some(&before), false).await
        else {
            panic!("a key rotated out twice still verifies");
        };
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_quiet_stream_carries_keep_alive_comments(pool: PgPool) {
    let keyring = test_keyring();
    let (router, _state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let token = mint(&t, &app, &["quiet"], 600).await;
    let mut events = subscribe(&router, &app, "quiet", Some(&token), false)
        .await
        .unwrap();
    // Every 15 s: a comment line, which EventSource ignores and proxies see as traffic.
    let chunk = tokio::time::timeout(Duration::from_secs(40), events.body.next())
        .await
        .expect("a keep-alive within 40 s")
        .expect("the stream is open")
        .expect("the stream reads");
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.starts_with(':'), "{text:?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn deleting_an_app_ends_its_streams(pool: PgPool) {
    let keyring = test_keyring();
    let (router, _state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let other = t.create_app("other").await;
    t.create_script(
        &other,
        "pub",
        "pubsub::publish(ctx.request.body.topic, ctx.request.body.message); true",
        true,
    )
    .await;
    let token = mint(&t, &app, &["orders"], 600).await;
    let other_token = mint(&t, &other, &["orders"], 600).await;
    let events = subscribe(&router, &app, "orders", Some(&token), false)
        .await
        .unwrap();
    let mut others = subscribe(&router, &other, "orders", Some(&other_token), false)
        .await
        .unwrap();
    let (status, body) = t
        .admin(Method::DELETE, &format!("/api/v1/admin/apps/{app}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(events.count_until_end().await, 0);
    // Another app's streams are not touched.
    publish(&router, &other, "orders", json!("still here")).await;
    assert_eq!(others.next().await.1, r#""still here""#);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_token_an_app_and_a_server_hold_only_their_share_of_streams(pool: PgPool) {
    let keyring = test_keyring();
    let (router, _state) = server_with(&pool, keyring.clone(), |config| {
        config.realtime_streams = realtime::StreamLimits {
            per_token: 2,
            per_app: 3,
            total: 4,
        };
    })
    .await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let other = t.create_app("other").await;
    // Minted in the same second for the same topics, yet two tokens.
    let first = mint(&t, &app, &["orders"], 600).await;
    let second = mint(&t, &app, &["orders"], 600).await;
    assert_ne!(first, second);
    let refused = |r: Result<Events, (StatusCode, Value)>| match r {
        Ok(_) => panic!("subscribed past a limit"),
        Err(refusal) => refusal,
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            subscribe(&router, &app, "orders", Some(&first), false)
                .await
                .unwrap(),
        );
    }
    let (status, body) = refused(subscribe(&router, &app, "orders", Some(&first), false).await);
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("token"),
        "{body}"
    );
    held.push(
        subscribe(&router, &app, "orders", Some(&second), false)
            .await
            .unwrap(),
    );
    let (status, body) = refused(subscribe(&router, &app, "orders", Some(&second), false).await);
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("app"),
        "{body}"
    );
    let elsewhere = mint(&t, &other, &["orders"], 600).await;
    held.push(
        subscribe(&router, &other, "orders", Some(&elsewhere), false)
            .await
            .unwrap(),
    );
    let (status, body) =
        refused(subscribe(&router, &other, "orders", Some(&elsewhere), false).await);
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server"),
        "{body}"
    );
    // A closed stream gives its place back.
    held.remove(0);
    assert!(subscribe(&router, &app, "orders", Some(&first), false)
        .await
        .is_ok());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_plaintext_key_too_short_to_sign_with_is_replaced_at_start(pool: PgPool) {
    let keyring = test_keyring();
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring.clone()).await;
    let app = t.create_app("weak").await;
    let weak = [5u8; 8];
    sqlx::query("INSERT INTO app_secrets (app_id, realtime_key) VALUES ($1::uuid, $2)")
        .bind(&app)
        .bind(weak.to_vec())
        .execute(&pool)
        .await
        .unwrap();
    let token = picloud_shared::realtime::sign(
        &picloud_shared::realtime::TokenClaims {
            app_id: uuid::Uuid::parse_str(&app).unwrap(),
            topics: vec!["orders".into()],
            exp: chrono::Utc::now().timestamp() + 600,
            jti: String::new(),
        },
        &weak,
    );
    let (router, state) = server(&pool, keyring).await;
    // Never signed with, never verified with.
    let Err((status, body)) = subscribe(&router, &app, "orders", Some(&token), false).await else {
        panic!("a token of an 8-byte key subscribed");
    };
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    realtime::seal_plaintext_keys(state.realtime.clone()).await;
    let Err((status, body)) = subscribe(&router, &app, "orders", Some(&token), false).await else {
        panic!("a token of the replaced key subscribed");
    };
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let fresh = mint(&t, &app, &["orders"], 600).await;
    assert!(subscribe(&router, &app, "orders", Some(&fresh), false)
        .await
        .is_ok());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_older_installs_plaintext_key_is_sealed_at_start_and_its_tokens_still_verify(
    pool: PgPool,
) {
    let keyring = test_keyring();
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring.clone()).await;
    let app = t.create_app("legacy").await;
    let key = [9u8; 32];
    sqlx::query("INSERT INTO app_secrets (app_id, realtime_key) VALUES ($1::uuid, $2)")
        .bind(&app)
        .bind(key.to_vec())
        .execute(&pool)
        .await
        .unwrap();
    let app_id = uuid::Uuid::parse_str(&app).unwrap();
    let token = picloud_shared::realtime::sign(
        &picloud_shared::realtime::TokenClaims {
            app_id,
            topics: vec!["orders".into()],
            exp: chrono::Utc::now().timestamp() + 600,
            // A token of the first format, without an id.
            jti: String::new(),
        },
        &key,
    );
    let (router, state) = server(&pool, keyring.clone()).await;
    // Before the start-up task: read through the plaintext fallback.
    assert!(subscribe(&router, &app, "orders", Some(&token), false)
        .await
        .is_ok());
    realtime::seal_plaintext_keys(state.realtime.clone()).await;
    realtime::seal_plaintext_keys(state.realtime.clone()).await; // idempotent
    let (key_id, nonce, ciphertext): (Option<String>, Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as(
            "SELECT realtime_key_id, realtime_nonce, realtime_ciphertext FROM app_secrets",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    let sealed = picloud_shared::crypto::Sealed::from_stored(
        &key_id.expect("sealed"),
        &nonce.unwrap(),
        ciphertext.unwrap(),
    )
    .unwrap();
    let opened = keyring
        .open(
            &sealed,
            &picloud_shared::crypto::Aad::Realtime {
                app_id: picloud_shared::ids::AppId(app_id),
            },
        )
        .unwrap();
    assert_eq!(opened.as_slice(), &key);
    // The plaintext is gone, and the sealed copy verifies the same token.
    let plaintext: Option<Vec<u8>> = sqlx::query_scalar("SELECT realtime_key FROM app_secrets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(plaintext.is_none(), "the plaintext key was cleared");
    assert!(subscribe(&router, &app, "orders", Some(&token), false)
        .await
        .is_ok());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_publish_on_one_server_reaches_another_whole_even_at_100_kb(pool: PgPool) {
    let keyring = test_keyring();
    let (publisher, _a) = server(&pool, keyring.clone()).await;
    let (subscriber, _b) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let token = mint(&t, &app, &["big"], 600).await;
    let mut events = subscribe(&subscriber, &app, "big", Some(&token), false)
        .await
        .unwrap();
    let large = "x".repeat(100 * 1024);
    publish(&publisher, &app, "big", json!({"text": large})).await;
    publish(&publisher, &app, "big", json!({"small": true})).await;
    let (_, data, _) = events.next().await;
    let value: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(value["text"].as_str().unwrap().len(), 100 * 1024);
    let (_, data, _) = events.next().await;
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"small": true})
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_subscriber_that_never_reads_is_disconnected_while_another_gets_everything(pool: PgPool) {
    let keyring = test_keyring();
    let (router, state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let token = mint(&t, &app, &["firehose"], 600).await;
    let never_read = subscribe(&router, &app, "firehose", Some(&token), false)
        .await
        .unwrap();
    let mut reader = subscribe(&router, &app, "firehose", Some(&token), false)
        .await
        .unwrap();
    let total = realtime::SUBSCRIBER_BUFFER + 100;
    let reading = tokio::spawn(async move {
        for n in 0..total {
            let (_, data, _) = reader.next().await;
            assert_eq!(
                serde_json::from_str::<Value>(&data).unwrap(),
                json!({"n": n})
            );
        }
        reader
    });
    for n in 0..total {
        publish(&router, &app, "firehose", json!({"n": n})).await;
    }
    let reader = reading.await.unwrap();
    assert_eq!(state.metrics.realtime_slow_disconnects.get(), 1);
    assert_eq!(state.metrics.realtime_subscribers.get(), 1);
    // Disconnected: its stream ends at once, what waited for it dropped.
    assert_eq!(never_read.count_until_end().await, 0);
    drop(reader);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_listener_back_from_a_lost_connection_applies_the_rotations_it_missed(pool: PgPool) {
    let keyring = test_keyring();
    let (router, state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring.clone()).await;
    let app = app_with_publisher(&t).await;
    let token = mint(&t, &app, &["orders"], 600).await;
    let events = subscribe(&router, &app, "orders", Some(&token), false)
        .await
        .unwrap();
    // A rotation whose notification this process never gets (as while its
    // listener is away): the token's key retired, no grace.
    let app_id = picloud_shared::ids::AppId(uuid::Uuid::parse_str(&app).unwrap());
    let aad = picloud_shared::crypto::Aad::Realtime { app_id };
    let retired = keyring.seal(&[1u8; 32], &aad).unwrap();
    let current = keyring.seal(&[2u8; 32], &aad).unwrap();
    assert!(picloud_manager_core::repo::realtime::rotate_signing_key(
        &pool, app_id.0, &current, &retired, 0
    )
    .await
    .unwrap());
    let open_streams = state.metrics.realtime_subscribers.get();
    assert_eq!(open_streams, 1, "the stream is still open");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(killed, [true], "one listening connection");
    // Back, the listener re-reads the keys of every app with streams here.
    assert_eq!(events.count_until_end().await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_script_mints_tokens_and_first_uses_at_once_agree_on_one_key(pool: PgPool) {
    let keyring = test_keyring();
    let (router, state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = t.create_app("minting").await;
    // Two first uses at once: one key is created, and both tokens verify with it.
    let app_id = picloud_shared::ids::AppId(uuid::Uuid::parse_str(&app).unwrap());
    let (one, two) = tokio::join!(
        state.realtime.mint(app_id, vec!["a".into()], 60),
        state.realtime.mint(app_id, vec!["a".into()], 60),
    );
    for token in [one.unwrap().token, two.unwrap().token] {
        assert!(subscribe(&router, &app, "a", Some(&token), false)
            .await
            .is_ok());
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM app_secrets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    // A script hands its client a token (realtime::token).
    t.create_script(&app, "token", r#"realtime::token(["a", "b.*"], 120)"#, true)
        .await;
    let (status, token) = t.invoke(&app, "token", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let token = token.as_str().unwrap().to_owned();
    assert!(subscribe(&router, &app, "a,b.c", Some(&token), false)
        .await
        .is_ok());
    t.create_script(&app, "bad", r#"realtime::token(["a..b"], 120)"#, false)
        .await;
    let (status, _) = t.invoke(&app, "bad", json!({})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // The realtime series are on /metrics.
    let response = tower::ServiceExt::oneshot(
        router.clone(),
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    let text = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    for series in [
        "picloud_realtime_subscribers",
        "picloud_realtime_messages_delivered_total",
        "picloud_realtime_slow_disconnects_total",
    ] {
        assert!(text.contains(series), "{series} is missing from /metrics");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn streams_end_with_their_token_and_carry_any_message_once(pool: PgPool) {
    let keyring = test_keyring();
    let (router, state) = server(&pool, keyring.clone()).await;
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring).await;
    let app = app_with_publisher(&t).await;
    let token = mint(&t, &app, &["orders"], 600).await;
    // A topic named twice counts once.
    let mut events = subscribe(&router, &app, "orders,orders", Some(&token), false)
        .await
        .unwrap();
    // A forged notification (any database role can NOTIFY) is ignored, the stream lives on.
    sqlx::query(
        "SELECT pg_notify('picloud_realtime', json_build_object('a', $1::uuid, 't', 'orders', \
         'i', E'x\\ny')::text || E'\\n1')",
    )
    .bind(&app)
    .execute(&pool)
    .await
    .unwrap();
    // `null`, and a message nested as deep as a script may build.
    publish(&router, &app, "orders", Value::Null).await;
    let mut deep = json!(1);
    for _ in 0..126 {
        deep = json!([deep]);
    }
    publish(&router, &app, "orders", deep.clone()).await;
    publish(&router, &app, "orders", json!("last")).await;
    let (_, data, _) = events.next().await;
    assert_eq!(data, "null");
    let (_, data, _) = events.next().await;
    assert_eq!(data, deep.to_string());
    let (_, data, _) = events.next().await;
    assert_eq!(data, "\"last\"", "each message once");
    // A NUL in a message is refused as an argument, not as an unavailable database.
    t.create_script(&app, "nul", r#"pubsub::publish("orders", "a\x00b")"#, false)
        .await;
    let (status, body) = t.invoke(&app, "nul", json!({})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.to_string().contains("NUL"), "{body}");
    // The stream ends when its token expires.
    let short = mint(&t, &app, &["orders"], 2).await;
    let ending = subscribe(&router, &app, "orders", Some(&short), false)
        .await
        .unwrap();
    assert_eq!(ending.count_until_end().await, 0);
    // At shutdown the stream ends, and a subscribe that arrives then is a 503.
    state.hub.close_all();
    assert_eq!(events.count_until_end().await, 0);
    let Err((status, body)) = subscribe(&router, &app, "orders", Some(&token), false).await else {
        panic!("a stream opened after shutdown began");
    };
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
}
