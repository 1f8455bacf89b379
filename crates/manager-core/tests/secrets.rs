//! Secrets sealed at rest, the start-up key check and rotation, on real PostgreSQL.

use picloud_manager_core::service::realtime::RealtimeServiceImpl;
use picloud_manager_core::{
    sealed::{check_keys, rotate, SealedDataError},
    service::{
        apps::AppsService,
        inbound::InboundService,
        secrets::SecretsServiceImpl,
        triggers::{NewTriggerRequest, TriggersService},
    },
    MIGRATOR,
};
use picloud_shared::{
    crypto::{Keyring, MasterKey},
    ids::AppId,
    secrets::SecretsService,
    triggers::{EmailTriggerConfig, TriggerConfig},
    ServiceError,
};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;

fn keyring_of(active: &str, previous: &[&str]) -> Arc<Keyring> {
    let previous = previous.join(",");
    Arc::new(
        Keyring::from_env_values(
            Some(active),
            (!previous.is_empty()).then_some(previous.as_str()),
        )
        .unwrap(),
    )
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn values_are_sealed_at_rest_and_capped(pool: PgPool) {
    let app = AppsService::new(pool.clone()).create("a").await.unwrap().id;
    let other = AppsService::new(pool.clone()).create("b").await.unwrap().id;
    let key = MasterKey::generate().to_base64();
    let secrets = SecretsServiceImpl::new(pool.clone(), keyring_of(&key, &[]), 64);
    secrets
        .set(app, "token", json!("plain-marker-value"))
        .await
        .unwrap();
    assert_eq!(
        secrets.get(app, "token").await.unwrap(),
        Some(json!("plain-marker-value"))
    );
    assert_eq!(
        secrets.get(other, "token").await.unwrap(),
        None,
        "apps are isolated"
    );

    let raw: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM secrets")
        .fetch_one(&pool)
        .await
        .unwrap();
    let dump: String = sqlx::query_scalar("SELECT row_to_json(s)::text FROM secrets s")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("plain-marker"));
    assert!(
        !dump.contains("plain-marker") && !dump.contains(&hex_of(b"plain-marker")),
        "{dump}"
    );

    // Moving a ciphertext to another row makes it unreadable, not wrong.
    sqlx::query("INSERT INTO secrets (app_id, name, key_id, nonce, ciphertext) SELECT $1, name, key_id, nonce, ciphertext FROM secrets WHERE app_id = $2")
        .bind(other.0).bind(app.0).execute(&pool).await.unwrap();
    assert!(matches!(
        secrets.get(other, "token").await,
        Err(ServiceError::Unavailable(_))
    ));

    let too_big = json!("x".repeat(63)); // 65 bytes of JSON
    assert_eq!(
        secrets.set(app, "big", too_big).await,
        Err(ServiceError::TooLarge {
            limit: 64,
            actual: 65
        })
    );
    assert_eq!(secrets.get(app, "big").await.unwrap(), None);
    assert!(matches!(
        secrets.set(app, "bad/name", json!(1)).await,
        Err(ServiceError::InvalidArgument(_))
    ));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn key_check_names_a_missing_key(pool: PgPool) {
    let app = AppsService::new(pool.clone()).create("a").await.unwrap().id;
    let old = MasterKey::from_base64(&MasterKey::generate().to_base64()).unwrap();
    let old_b64 = old.to_base64();
    let old_id = old.id();
    let ring = keyring_of(&old_b64, &[]);
    SecretsServiceImpl::new(pool.clone(), ring.clone(), 1024)
        .set(app, "s", json!(1))
        .await
        .unwrap();
    check_keys(&pool, &ring).await.unwrap();

    let stranger = keyring_of(&MasterKey::generate().to_base64(), &[]);
    match check_keys(&pool, &stranger).await {
        Err(e @ SealedDataError::MissingKey { .. }) => {
            assert!(e.to_string().contains(&old_id.to_hex()), "{e}");
            assert!(!e.to_string().contains(&old_b64));
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rotation_reseals_everything_and_resumes_after_interruption(pool: PgPool) {
    let apps = AppsService::new(pool.clone());
    let a = apps.create("a").await.unwrap().id;
    let b = apps.create("b").await.unwrap().id;
    let old = MasterKey::generate().to_base64();
    let new = MasterKey::generate().to_base64();
    let old_ring = keyring_of(&old, &[]);
    let writer = SecretsServiceImpl::new(pool.clone(), old_ring, 1024);
    for i in 0..7 {
        writer
            .set(a, &format!("s{i}"), json!({"i": i}))
            .await
            .unwrap();
    }
    writer.set(b, "only-b", json!("b")).await.unwrap();
    // An email trigger's inbound secret is a sealed column too.
    let inbound = signed_email_trigger(&pool, old_ring_for(&old), a).await;
    // And an app's inbound secret.
    InboundService::new(pool.clone(), old_ring_for(&old), "http://x".into())
        .set_app_secret(a, Some(zeroize::Zeroizing::new(INBOUND_SECRET.to_owned())))
        .await
        .unwrap();
    // And an app's realtime signing key, current and (after a rotation) previous.
    let realtime = RealtimeServiceImpl::new(pool.clone(), old_ring_for(&old), 3600);
    let before_rotation = realtime.mint(a, vec!["t".into()], 600).await.unwrap().token;
    realtime.rotate(a).await.unwrap();
    let after_rotation = realtime.mint(a, vec!["t".into()], 600).await.unwrap().token;

    let rotating = keyring_of(&new, &[&old]);
    // Interrupted after one batch of 3, as a crash would leave it.
    let partial = rotate(&pool, &rotating, 3, Some(1)).await.unwrap();
    assert!(!partial.complete);
    assert_eq!(
        partial.tables,
        vec![
            ("secrets", 3, 0),
            ("triggers", 0, 0),
            ("app_inbound_secrets", 0, 0),
            ("app_secrets", 0, 0),
            ("app_secrets", 0, 0)
        ]
    );
    assert_eq!(partial.remaining, 5 + 1 + 1 + 2);
    // Half way, a server holding both keys reads every value, and the old key alone
    // is no longer enough (the start-up check names the new key).
    let mixed = SecretsServiceImpl::new(pool.clone(), rotating.clone(), 1024);
    for i in 0..7 {
        assert_eq!(
            mixed.get(a, &format!("s{i}")).await.unwrap(),
            Some(json!({"i": i}))
        );
    }
    assert_eq!(mixed.get(b, "only-b").await.unwrap(), Some(json!("b")));
    let old_only = keyring_of(&old, &[]);
    let refused = check_keys(&pool, &old_only).await.unwrap_err().to_string();
    assert!(
        refused.contains(&rotating.active_id().to_string()),
        "{refused}"
    );
    // Run again: completes, and counts what the first run did.
    let done = rotate(&pool, &rotating, 3, None).await.unwrap();
    assert!(done.complete);
    assert_eq!(
        done.tables,
        vec![
            ("secrets", 5, 3),
            ("triggers", 1, 0),
            ("app_inbound_secrets", 1, 0),
            ("app_secrets", 1, 0),
            ("app_secrets", 1, 0)
        ]
    );
    assert_eq!(done.remaining, 0);
    // Idempotent.
    let again = rotate(&pool, &rotating, 3, None).await.unwrap();
    assert_eq!(
        again.tables,
        vec![
            ("secrets", 0, 8),
            ("triggers", 0, 1),
            ("app_inbound_secrets", 0, 1),
            ("app_secrets", 0, 1),
            ("app_secrets", 0, 1)
        ]
    );

    // The old key can now be dropped: every secret still reads.
    let new_only = keyring_of(&new, &[]);
    check_keys(&pool, &new_only).await.unwrap();
    let reader = SecretsServiceImpl::new(pool.clone(), new_only, 1024);
    for i in 0..7 {
        assert_eq!(
            reader.get(a, &format!("s{i}")).await.unwrap(),
            Some(json!({"i": i}))
        );
    }
    assert_eq!(reader.get(b, "only-b").await.unwrap(), Some(json!("b")));
    let triggers = TriggersService::new(pool.clone(), keyring_of(&new, &[]), "http://x".into());
    assert_eq!(
        triggers
            .inbound_secret(inbound)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some(INBOUND_SECRET)
    );
    let stored = picloud_manager_core::repo::inbound::app_secret(&pool, a.0)
        .await
        .unwrap()
        .flatten()
        .expect("the app's sealed secret");
    let sealed = picloud_shared::crypto::Sealed::from_stored(
        &stored.key_id,
        &stored.nonce,
        stored.ciphertext,
    )
    .unwrap();
    let opened = keyring_of(&new, &[])
        .open(
            &sealed,
            &picloud_shared::crypto::Aad::InboundApp { app_id: a },
        )
        .unwrap();
    assert_eq!(&opened[..], INBOUND_SECRET.as_bytes());
    // Both realtime keys were re-sealed: tokens of either still verify with the new key alone.
    let realtime = RealtimeServiceImpl::new(pool.clone(), keyring_of(&new, &[]), 3600);
    for token in [&before_rotation, &after_rotation] {
        realtime.authorize(a, token, &["t".into()]).await.unwrap();
    }
}

const INBOUND_SECRET: &str = "inbound-secret-0123456789";

fn old_ring_for(key: &str) -> Arc<Keyring> {
    keyring_of(key, &[])
}

/// An email trigger of `app` whose inbound secret is sealed with `ring`.
async fn signed_email_trigger(pool: &PgPool, ring: Arc<Keyring>, app: AppId) -> uuid::Uuid {
    let script = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO scripts (id, app_id, name, source) VALUES ($1, $2, 'h', '1')")
        .bind(script)
        .bind(app.0)
        .execute(pool)
        .await
        .unwrap();
    let triggers = TriggersService::new(pool.clone(), ring, "http://x".into());
    let created = triggers
        .create(
            app,
            NewTriggerRequest {
                script_id: script,
                config: TriggerConfig::Email(EmailTriggerConfig {
                    inbound_secret: Some(INBOUND_SECRET.into()),
                    recipient_filter: None,
                }),
                retry: None,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.signed, Some(true));
    assert_eq!(
        triggers
            .inbound_secret(created.id)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some(INBOUND_SECRET)
    );
    created.id
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rotation_waits_for_a_locked_row_and_completes_with_none_remaining(pool: PgPool) {
    let app = AppsService::new(pool.clone()).create("a").await.unwrap().id;
    let old = MasterKey::generate().to_base64();
    let new = MasterKey::generate().to_base64();
    let writer = SecretsServiceImpl::new(pool.clone(), keyring_of(&old, &[]), 1024);
    for i in 0..4 {
        writer.set(app, &format!("s{i}"), json!(i)).await.unwrap();
    }
    // Another session holds one row while the rotation starts.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM secrets WHERE name = 's2' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let rotating = keyring_of(&new, &[&old]);
    let rotation = {
        let (pool, rotating) = (pool.clone(), rotating.clone());
        tokio::spawn(async move { rotate(&pool, &rotating, 2, None).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.commit().await.unwrap();
    let report = rotation.await.unwrap().unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.remaining, 0);
    let old_keys: i64 = sqlx::query_scalar("SELECT count(*) FROM secrets WHERE key_id <> $1")
        .bind(rotating.active_id().to_hex())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(old_keys, 0, "the locked row was waited for and re-sealed");
}
