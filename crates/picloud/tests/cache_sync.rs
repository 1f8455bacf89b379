//! Two picloud processes on one database: a change made through one (or by plain
//! SQL) reaches the in-memory caches of the other through the database's change
//! notifications, also after the listening connection was killed.

mod support;

use axum::http::{Method, StatusCode};
use picloud::{build_app_with_caches, cache_sync};
use picloud_manager_core::MIGRATOR;
use picloud_shared::{auth::Scope, ids::ApiKeyId};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use support::{test_config, test_keyring, TestApp};

const LISTEN_QUERY: &str = r#"LISTEN "picloud_cache"%"#;

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

/// The backend pid of the listener's connection, once it listens.
async fn listener_pid(pool: &PgPool, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE $1 AND datname = current_database()",
        )
        .bind(LISTEN_QUERY)
        .fetch_all(pool)
        .await
        .unwrap();
        if let Some(pid) = pids.into_iter().find(|p| Some(*p) != not) {
            return pid;
        }
        if Instant::now() >= deadline {
            let all: Vec<(Option<String>, Option<String>)> =
                sqlx::query_as("SELECT query, state FROM pg_stat_activity")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            panic!("the listener never listened: {all:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `caches` have started over on notifications `n` times (each time
/// clears every cache, so a load made before it may not stay cached).
async fn resynced(caches: &cache_sync::Caches, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while caches.resync_count() < n {
        assert!(Instant::now() < deadline, "resync {n} never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn put_script(t: &TestApp, app: &str, script: &str, name: &str, source: &str) {
    let (status, body) = t
        .admin(
            Method::PUT,
            &format!("/api/v1/admin/apps/{app}/scripts/{script}"),
            Some(json!({"name": name, "source": source})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn changes_through_one_process_reach_the_caches_of_another(pool: PgPool) {
    let a = TestApp::new(pool.clone()).await;
    let (router, caches) =
        build_app_with_caches(pool.clone(), test_config(), test_keyring()).expect("the app builds");
    let b_caches = caches.clone();
    let b = TestApp {
        router,
        pool: pool.clone(),
        admin_key: a.admin_key.clone(),
    };
    let app = a.create_app("shared").await;
    let app_id = picloud_shared::ids::AppId(app.parse().unwrap());
    let script = a.create_script(&app, "version", "1", false).await;
    let caller = a.key_with(&[Scope::DataWrite]).await;
    let caller_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_keys WHERE scopes = '{data:write}'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let caller_id = ApiKeyId(caller_id);
    let invoke = format!("/api/v1/apps/{app}/invoke/version");
    let call = |path: String| {
        let b = &b;
        let caller = caller.clone();
        async move {
            b.call(Method::POST, &path, Some(&caller), Some(json!({})))
                .await
        }
    };

    // B caches the script and the key.
    assert_eq!(call(invoke.clone()).await, (StatusCode::OK, json!(1)));
    assert!(b_caches.scripts.get(app_id, "version").is_some());
    assert!(b_caches.auth.is_cached(caller_id));

    // Without listening, B keeps serving what it cached: this is what the sync fixes.
    put_script(&a, &app, &script, "version", "2").await;
    assert_eq!(
        call(invoke.clone()).await,
        (StatusCode::OK, json!(1)),
        "B still has its copy"
    );

    // B starts listening: what it cached before is dropped.
    let listener = tokio::spawn(cache_sync::listen(pool.clone(), caches));
    let first_pid = listener_pid(&pool, None).await;
    resynced(&b_caches, 1).await;
    eventually(&b, &caller, &invoke, (StatusCode::OK, json!(2))).await;

    // From now on each change arrives by notification; B has cached what it changes.
    assert!(b_caches.scripts.get(app_id, "version").is_some());
    put_script(&a, &app, &script, "version", "3").await;
    eventually(&b, &caller, &invoke, (StatusCode::OK, json!(3))).await;

    // A rename: the old name is gone on B, the new one answers.
    assert!(b_caches.scripts.get(app_id, "version").is_some());
    put_script(&a, &app, &script, "renamed", "4").await;
    eventually(&b, &caller, &invoke, (StatusCode::NOT_FOUND, Value::Null)).await;
    let renamed = format!("/api/v1/apps/{app}/invoke/renamed");
    assert_eq!(call(renamed.clone()).await, (StatusCode::OK, json!(4)));

    // A plain-SQL source change bumps the version (trigger) and reaches B.
    assert!(b_caches.scripts.get(app_id, "renamed").is_some());
    sqlx::query("UPDATE scripts SET source = '5' WHERE id = $1::uuid")
        .bind(&script)
        .execute(&pool)
        .await
        .unwrap();
    eventually(&b, &caller, &renamed, (StatusCode::OK, json!(5))).await;

    // The listening connection is killed: the listener reconnects and still delivers.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first_pid)
        .execute(&pool)
        .await
        .unwrap();
    listener_pid(&pool, Some(first_pid)).await;
    // Losing the connection clears every cache (once or twice, by the path the
    // failure takes): wait for the last clear before loading again.
    resynced(&b_caches, 2).await;
    assert_eq!(call(renamed.clone()).await, (StatusCode::OK, json!(5)));
    assert!(b_caches.scripts.get(app_id, "renamed").is_some());
    put_script(&a, &app, &script, "renamed", "6").await;
    eventually(&b, &caller, &renamed, (StatusCode::OK, json!(6))).await;

    // A scope change by SQL: the key is cached on B, then refused with 403.
    assert!(b_caches.auth.is_cached(caller_id));
    sqlx::query("UPDATE api_keys SET scopes = '{data:read}' WHERE id = $1")
        .bind(caller_id.0)
        .execute(&pool)
        .await
        .unwrap();
    eventually(&b, &caller, &renamed, (StatusCode::FORBIDDEN, Value::Null)).await;

    // A key deleted through A stops working on B.
    let (status, _) = a
        .admin(
            Method::DELETE,
            &format!("/api/v1/admin/api-keys/{}", caller_id.0),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(
        &b,
        &caller,
        &renamed,
        (StatusCode::UNAUTHORIZED, Value::Null),
    )
    .await;

    // TRUNCATE fires no row triggers; its statement trigger clears everything.
    let admin = b.admin_key.clone();
    eventually(&b, &admin, &renamed, (StatusCode::OK, json!(6))).await;
    assert!(b_caches.scripts.get(app_id, "renamed").is_some());
    sqlx::query("TRUNCATE apps CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    eventually(&b, &admin, &renamed, (StatusCode::NOT_FOUND, Value::Null)).await;

    // The listener ends with the pool.
    tokio::time::timeout(Duration::from_secs(10), pool.close())
        .await
        .expect("the pool closes although the listener held a connection");
    tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .expect("the listener stops when the pool closes")
        .unwrap();
}
