//! Two picloud processes on one database: a change made through one (or by plain
//! SQL) reaches the in-memory caches of the other through the database's change
//! notifications.

mod support;

use axum::http::{Method, StatusCode};
use picloud::{build_app_with_caches, cache_sync};
use picloud_manager_core::MIGRATOR;
use picloud_shared::auth::Scope;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use support::{test_config, test_keyring, TestApp};

/// Calls `path` through `t` with `key` until `want` comes back (a null body: any), for at most 10 s.
async fn eventually(t: &TestApp, key: &str, path: &str, want: (StatusCode, Value)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = t.call(Method::POST, path, Some(key), Some(json!({}))).await;
        if got.0 == want.0 && (want.1.is_null() || got.1 == want.1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: still {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn changes_through_one_process_reach_the_caches_of_another(pool: PgPool) {
    let a = TestApp::new(pool.clone()).await;
    let (router, caches) = build_app_with_caches(pool.clone(), test_config(), test_keyring());
    let b = TestApp {
        router,
        pool: pool.clone(),
        admin_key: a.admin_key.clone(),
    };
    let app = a.create_app("shared").await;
    let script = a.create_script(&app, "version", "1", false).await;
    let caller = a.key_with(&[Scope::DataWrite]).await;
    let invoke = format!("/api/v1/apps/{app}/invoke/version");

    // B caches the script and the key.
    let got = b
        .call(Method::POST, &invoke, Some(&caller), Some(json!({})))
        .await;
    assert_eq!(got, (StatusCode::OK, json!(1)));

    // Without listening, B keeps serving what it cached: this is what the sync fixes.
    let (status, body) = a
        .admin(
            Method::PUT,
            &format!("/api/v1/admin/apps/{app}/scripts/{script}"),
            Some(json!({"name": "version", "source": "2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = b
        .call(Method::POST, &invoke, Some(&caller), Some(json!({})))
        .await;
    assert_eq!(got, (StatusCode::OK, json!(1)), "B still has its copy");

    // B starts listening: what it cached before is dropped, then changes arrive.
    let listener = tokio::spawn(cache_sync::listen(pool.clone(), caches));
    eventually(&b, &caller, &invoke, (StatusCode::OK, json!(2))).await;

    let (status, body) = a
        .admin(
            Method::PUT,
            &format!("/api/v1/admin/apps/{app}/scripts/{script}"),
            Some(json!({"name": "version", "source": "3"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(&b, &caller, &invoke, (StatusCode::OK, json!(3))).await;

    // A key deleted through A stops working on B.
    let (_, keys) = a.admin(Method::GET, "/api/v1/admin/api-keys", None).await;
    let caller_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["scopes"] == json!(["data:write"]))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = a
        .admin(
            Method::DELETE,
            &format!("/api/v1/admin/api-keys/{caller_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(
        &b,
        &caller,
        &invoke,
        (StatusCode::UNAUTHORIZED, Value::Null),
    )
    .await;

    // Any writer counts, not only the admin API: an app deleted by plain SQL is gone on B.
    sqlx::query("DELETE FROM apps WHERE id = $1::uuid")
        .bind(&app)
        .execute(&pool)
        .await
        .unwrap();
    let admin = b.admin_key.clone();
    eventually(&b, &admin, &invoke, (StatusCode::NOT_FOUND, Value::Null)).await;

    // The listener ends with the pool.
    pool.close().await;
    tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .expect("the listener stops when the pool closes")
        .unwrap();
}
