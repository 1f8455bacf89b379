//! Repositories and services against a real PostgreSQL (a fresh database per test).

use picloud_manager_core::{
    service::{
        api_keys::ApiKeysService, apps::AppsService, kv::KvServiceImpl, scripts::ScriptsService,
    },
    ManagerError, MIGRATOR,
};
use picloud_shared::{
    auth::Scope,
    ids::AppId,
    kv::KvService,
    script::{CheckError, CompileError, ScriptCompiler},
    triggers::CallContext,
    ServiceError,
};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;

/// Accepts any source except one containing `syntax error`.
struct FakeCompiler;

#[async_trait::async_trait]
impl ScriptCompiler for FakeCompiler {
    async fn check(&self, _app: AppId, source: &str) -> Result<(), CheckError> {
        match source.find("syntax error") {
            Some(at) => Err(CheckError::Compile(CompileError {
                message: "syntax error".into(),
                line: 1,
                column: at + 1,
            })),
            None => Ok(()),
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn apps_create_list_get_delete(pool: PgPool) {
    let apps = AppsService::new(pool);
    let a = apps.create("first").await.unwrap();
    let b = apps.create("second").await.unwrap();
    let listed: Vec<String> = apps
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(listed, vec!["second", "first"], "newest first");
    assert_eq!(apps.get(a.id).await.unwrap(), a);
    assert!(matches!(
        apps.create("first").await,
        Err(ManagerError::Conflict(_))
    ));
    assert!(matches!(
        apps.create("bad name").await,
        Err(ManagerError::Validation(_))
    ));
    apps.delete(b.id).await.unwrap();
    assert!(matches!(
        apps.get(b.id).await,
        Err(ManagerError::NotFound("app"))
    ));
    assert!(matches!(
        apps.delete(b.id).await,
        Err(ManagerError::NotFound("app"))
    ));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn scripts_versions_compile_checks_and_names(pool: PgPool) {
    let app = AppsService::new(pool.clone()).create("app").await.unwrap();
    let scripts = ScriptsService::new(pool, Arc::new(FakeCompiler));
    let s = scripts
        .create(app.id, "hello", "1 + 1", false)
        .await
        .unwrap();
    assert_eq!(s.script.version, 1);
    assert!(!s.script.public);

    let (updated, old_name) = scripts
        .update(app.id, s.script.id, "hello2", "2 + 2", Some(true))
        .await
        .unwrap();
    assert_eq!(old_name, "hello");
    assert_eq!(updated.script.version, 2);
    assert!(updated.script.public);
    // An omitted `public` keeps its value.
    let (again, _) = scripts
        .update(app.id, s.script.id, "hello2", "3", None)
        .await
        .unwrap();
    assert!(again.script.public);
    assert_eq!(again.script.version, 3);
    assert_eq!(
        scripts.get_by_name(app.id, "hello2").await.unwrap().source,
        "3"
    );

    match scripts
        .create(app.id, "broken", "x syntax error", false)
        .await
    {
        Err(ManagerError::Compile(e)) => assert_eq!(e.column, 3),
        other => panic!("expected a compile error, got {other:?}"),
    }
    assert!(matches!(
        scripts.create(app.id, "hello2", "1", false).await,
        Err(ManagerError::Conflict(_))
    ));
    assert!(matches!(
        scripts.create(AppId::new(), "orphan", "1", false).await,
        Err(ManagerError::NotFound("app"))
    ));
    assert!(matches!(
        scripts.list(AppId::new()).await,
        Err(ManagerError::NotFound("app"))
    ));
    let deleted = scripts.delete(app.id, s.script.id).await.unwrap();
    assert_eq!(deleted.name, "hello2");
    assert!(scripts.list(app.id).await.unwrap().is_empty());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn api_keys_are_stored_as_digests_and_authenticate(pool: PgPool) {
    let keys = ApiKeysService::new(pool.clone());
    assert_eq!(keys.count().await.unwrap(), 0);
    let created = keys
        .create("ci", &[Scope::DataWrite, Scope::AppRead, Scope::AppRead])
        .await
        .unwrap();
    assert!(created.key.starts_with("pk_"));
    assert_eq!(created.info.scopes, vec![Scope::AppRead, Scope::DataWrite]);

    let found = keys.authenticate(&created.key).await.unwrap().unwrap();
    assert_eq!(found.id, created.info.id);
    assert!(keys.authenticate("pk_nope").await.unwrap().is_none());

    // The table holds no trace of the key itself.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_digest FROM api_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    let dump: String = sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!dump.contains(&created.key[3..]));

    keys.touch_last_used(found.id).await.unwrap();
    assert!(keys.list().await.unwrap()[0].last_used_at.is_some());
    keys.delete(found.id).await.unwrap();
    assert!(keys.authenticate(&created.key).await.unwrap().is_none());
    assert!(matches!(
        keys.delete(found.id).await,
        Err(ManagerError::NotFound(_))
    ));
    assert!(matches!(
        keys.create("x", &[]).await,
        Err(ManagerError::Validation(_))
    ));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn kv_round_trips_lists_pages_and_isolates_apps(pool: PgPool) {
    let apps = AppsService::new(pool.clone());
    let a = apps.create("a").await.unwrap().id;
    let b = apps.create("b").await.unwrap().id;
    let kv = KvServiceImpl::new(pool, 64);
    let ca = CallContext::for_app(a);

    for (key, value) in [
        ("s", json!("text")),
        ("i", json!(42)),
        ("f", json!(1.5)),
        ("t", json!(true)),
        ("m", json!({"x": [1, 2]})),
        ("n", json!(null)),
    ] {
        kv.set(&ca, "things", key, value.clone()).await.unwrap();
        assert_eq!(kv.get(a, "things", key).await.unwrap(), Some(value));
    }
    assert_eq!(
        kv.get(b, "things", "s").await.unwrap(),
        None,
        "apps are isolated"
    );
    assert_eq!(kv.get(a, "things", "absent").await.unwrap(), None);

    for key in ["p:2", "p:1", "q", "p_x", "p%"] {
        kv.set(&ca, "c", key, json!(1)).await.unwrap();
    }
    let page = kv.list_page(a, "c", "p", None, 2).await.unwrap();
    assert_eq!(page.keys, vec!["p%", "p:1"]);
    let page2 = kv
        .list_page(a, "c", "p", page.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(page2.keys, vec!["p:2", "p_x"]);
    assert_eq!(page2.next, None);
    // A LIKE wildcard in the prefix matches only itself.
    assert_eq!(
        kv.list_page(a, "c", "p_", None, 10).await.unwrap().keys,
        vec!["p_x"]
    );
    assert_eq!(
        kv.list_page(b, "c", "", None, 10).await.unwrap().keys,
        Vec::<String>::new()
    );

    assert!(kv.delete(&ca, "c", "q").await.unwrap());
    assert!(!kv.delete(&ca, "c", "q").await.unwrap());

    assert_eq!(
        kv.set(&ca, "c", "big", json!("x".repeat(100))).await,
        Err(ServiceError::TooLarge {
            limit: 64,
            actual: 102
        })
    );
    assert_eq!(kv.get(a, "c", "big").await.unwrap(), None, "nothing stored");
    assert!(matches!(
        kv.set(&ca, "bad/collection", "k", json!(1)).await,
        Err(ServiceError::InvalidArgument(_))
    ));
    assert!(matches!(
        kv.set(&ca, "c", "", json!(1)).await,
        Err(ServiceError::InvalidArgument(_))
    ));
    assert!(matches!(
        kv.set(&ca, "c", "k", json!("\u{0}")).await,
        Err(ServiceError::InvalidArgument(_))
    ));
}
