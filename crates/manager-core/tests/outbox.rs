//! The transactional outbox on real PostgreSQL: a kv write or a publish and the
//! events of every matching trigger are written together, with the right payload.

use picloud_manager_core::{
    service::{
        apps::AppsService,
        events::EventPolicy,
        kv::KvServiceImpl,
        pubsub::PubsubServiceImpl,
        triggers::{NewTriggerRequest, TriggersService},
    },
    MIGRATOR,
};
use picloud_shared::{
    crypto::{Keyring, MasterKey},
    ids::AppId,
    kv::KvService,
    pubsub::PubsubService,
    triggers::{CallContext, KvOp, KvTriggerConfig, PubsubTriggerConfig, TriggerConfig},
};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{atomic::Ordering, Arc};
use uuid::Uuid;

struct Fixture {
    pool: PgPool,
    app: AppId,
    script: Uuid,
    triggers: TriggersService,
}

impl Fixture {
    async fn new(pool: PgPool, name: &str) -> Self {
        let app = AppsService::new(pool.clone())
            .create(name)
            .await
            .unwrap()
            .id;
        let script = Uuid::new_v4();
        sqlx::query("INSERT INTO scripts (id, app_id, name, source) VALUES ($1, $2, 'h', '1')")
            .bind(script)
            .bind(app.0)
            .execute(&pool)
            .await
            .unwrap();
        let keyring = Arc::new(
            Keyring::from_env_values(Some(&MasterKey::generate().to_base64()), None).unwrap(),
        );
        let triggers = TriggersService::new(pool.clone(), keyring, "http://x".into());
        Fixture {
            pool,
            app,
            script,
            triggers,
        }
    }

    async fn trigger(&self, config: TriggerConfig) -> Uuid {
        self.triggers
            .create(
                self.app,
                NewTriggerRequest {
                    script_id: self.script,
                    config,
                    retry: None,
                },
                None,
            )
            .await
            .unwrap()
            .id
    }

    /// (trigger id, payload, depth, origin) of every outbox row, oldest first.
    async fn outbox(&self) -> Vec<(Uuid, Value, i32, Option<Uuid>)> {
        sqlx::query_as(
            "SELECT trigger_id, payload, trigger_depth, origin_principal FROM outbox \
             WHERE app_id = $1 ORDER BY id",
        )
        .bind(self.app.0)
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(t, p, d, o): (Uuid, sqlx::types::Json<Value>, i32, Option<Uuid>)| (t, p.0, d, o))
        .collect()
    }
}

fn kv_trigger(collection: &str, key_prefix: Option<&str>, ops: &[KvOp]) -> TriggerConfig {
    TriggerConfig::Kv(KvTriggerConfig {
        collection: collection.into(),
        key_prefix: key_prefix.map(Into::into),
        ops: ops.to_vec(),
    })
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn kv_writes_enqueue_one_event_per_matching_trigger(pool: PgPool) {
    let f = Fixture::new(pool.clone(), "a").await;
    let other = Fixture::new(pool.clone(), "b").await;
    let all = f
        .trigger(kv_trigger("orders", None, &[KvOp::Set, KvOp::Delete]))
        .await;
    let eu_sets = f
        .trigger(kv_trigger("orders", Some("eu/"), &[KvOp::Set]))
        .await;
    let deletes = f.trigger(kv_trigger("orders", None, &[KvOp::Delete])).await;
    f.trigger(kv_trigger("users", None, &[KvOp::Set, KvOp::Delete]))
        .await;
    other
        .trigger(kv_trigger("orders", None, &[KvOp::Set, KvOp::Delete]))
        .await;
    let kv = KvServiceImpl::new(pool.clone(), 1024);
    let principal = Uuid::new_v4();
    let ctx = CallContext {
        app_id: f.app,
        trigger_depth: 0,
        origin_principal: Some(principal),
    };

    kv.set(&ctx, "orders", "eu/1", json!({"n": 1}))
        .await
        .unwrap();
    kv.set(&ctx, "orders", "eu/1", json!({"n": 2}))
        .await
        .unwrap();
    kv.set(&ctx, "orders", "us/1", json!(null)).await.unwrap();
    assert!(kv.delete(&ctx, "orders", "eu/1").await.unwrap());
    assert!(
        !kv.delete(&ctx, "orders", "missing").await.unwrap(),
        "nothing changed, no event"
    );

    let rows = f.outbox().await;
    let expect = |trigger: Uuid, payload: Value| (trigger, payload, 1, Some(principal));
    assert_eq!(
        rows,
        vec![
            expect(
                all,
                json!({"kind": "kv", "op": "set", "collection": "orders", "key": "eu/1", "value": {"n": 1}})
            ),
            expect(
                eu_sets,
                json!({"kind": "kv", "op": "set", "collection": "orders", "key": "eu/1", "value": {"n": 1}})
            ),
            expect(
                all,
                json!({"kind": "kv", "op": "set", "collection": "orders", "key": "eu/1", "value": {"n": 2}, "previous": {"n": 1}})
            ),
            expect(
                eu_sets,
                json!({"kind": "kv", "op": "set", "collection": "orders", "key": "eu/1", "value": {"n": 2}, "previous": {"n": 1}})
            ),
            expect(
                all,
                json!({"kind": "kv", "op": "set", "collection": "orders", "key": "us/1", "value": null})
            ),
            expect(
                all,
                json!({"kind": "kv", "op": "delete", "collection": "orders", "key": "eu/1", "previous": {"n": 2}})
            ),
            expect(
                deletes,
                json!({"kind": "kv", "op": "delete", "collection": "orders", "key": "eu/1", "previous": {"n": 2}})
            ),
        ]
    );
    assert!(
        other.outbox().await.is_empty(),
        "another app's triggers never fire"
    );
    // Every event is a well-formed TriggerEvent.
    for (_, payload, _, _) in &rows {
        serde_json::from_value::<picloud_shared::triggers::TriggerEvent>(payload.clone()).unwrap();
    }
    // The retry policy is copied onto the row.
    let (max_attempts, backoff, base_ms): (i32, String, i64) =
        sqlx::query_as("SELECT max_attempts, backoff, base_ms FROM outbox LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (max_attempts, backoff.as_str(), base_ms),
        (3, "exponential", 1000)
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failed_write_enqueues_nothing(pool: PgPool) {
    let f = Fixture::new(pool.clone(), "a").await;
    f.trigger(kv_trigger("c", None, &[KvOp::Set])).await;
    let kv = KvServiceImpl::new(pool.clone(), 1024);
    let ctx = CallContext::for_app(f.app);
    // PostgreSQL refuses a NUL in jsonb: the statement fails as a whole.
    assert!(kv.set(&ctx, "c", "k", json!("a\u{0}b")).await.is_err());
    assert!(f.outbox().await.is_empty());
    assert_eq!(kv.get(f.app, "c", "k").await.unwrap(), None);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn publishes_match_exact_topics_and_prefixes(pool: PgPool) {
    let f = Fixture::new(pool.clone(), "a").await;
    let exact = f
        .trigger(TriggerConfig::Pubsub(PubsubTriggerConfig {
            topic: "orders".into(),
        }))
        .await;
    let below = f
        .trigger(TriggerConfig::Pubsub(PubsubTriggerConfig {
            topic: "orders.*".into(),
        }))
        .await;
    let pubsub = PubsubServiceImpl::new(pool.clone(), 1024, EventPolicy::default());
    let ctx = CallContext::for_app(f.app);
    assert_eq!(
        pubsub
            .publish(&ctx, "orders", json!({"id": 1}))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        pubsub.publish(&ctx, "orders.new", json!(2)).await.unwrap(),
        1
    );
    assert_eq!(
        pubsub
            .publish(&ctx, "orders.new.eu", json!(3))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        pubsub.publish(&ctx, "ordersx.new", json!(4)).await.unwrap(),
        0
    );
    assert_eq!(pubsub.publish(&ctx, "other", json!(5)).await.unwrap(), 0);
    let rows = f.outbox().await;
    let got: Vec<(Uuid, Value, Value)> = rows
        .iter()
        .map(|(t, p, _, _)| (*t, p["topic"].clone(), p["message"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (exact, json!("orders"), json!({"id": 1})),
            (below, json!("orders.new"), json!(2)),
            (below, json!("orders.new.eu"), json!(3)),
        ]
    );
    for (_, payload, _, _) in &rows {
        assert_eq!(payload["kind"], "pubsub");
        let event: picloud_shared::triggers::TriggerEvent =
            serde_json::from_value(payload.clone()).unwrap();
        assert_eq!(event.kind(), picloud_shared::triggers::TriggerKind::Pubsub);
    }
    assert!(pubsub.publish(&ctx, "a..b", json!(1)).await.is_err());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_chain_deeper_than_the_limit_keeps_its_change_and_drops_its_events(pool: PgPool) {
    let f = Fixture::new(pool.clone(), "a").await;
    f.trigger(kv_trigger("c", None, &[KvOp::Set, KvOp::Delete]))
        .await;
    f.trigger(TriggerConfig::Pubsub(PubsubTriggerConfig {
        topic: "t".into(),
    }))
    .await;
    let events = EventPolicy::new(3);
    let kv = KvServiceImpl::with_events(pool.clone(), 1024, events.clone());
    let pubsub = PubsubServiceImpl::new(pool.clone(), 1024, events.clone());
    let at = |depth| CallContext {
        app_id: f.app,
        trigger_depth: depth,
        origin_principal: None,
    };
    kv.set(&at(2), "c", "k", json!(1)).await.unwrap();
    assert_eq!(f.outbox().await.len(), 1, "depth 3 is within the limit");
    assert_eq!(f.outbox().await[0].2, 3);
    kv.set(&at(3), "c", "k", json!(2)).await.unwrap();
    assert!(kv.delete(&at(3), "c", "k").await.unwrap());
    assert_eq!(pubsub.publish(&at(3), "t", json!(1)).await.unwrap(), 0);
    assert_eq!(f.outbox().await.len(), 1, "depth 4 is dropped");
    assert_eq!(events.counters().depth_drops.load(Ordering::Relaxed), 3);
    kv.set(&at(3), "c", "k2", json!(3)).await.unwrap();
    assert_eq!(
        kv.get(f.app, "c", "k2").await.unwrap(),
        Some(json!(3)),
        "the write itself stands"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_enqueue_notifies_the_dispatchers_at_commit(pool: PgPool) {
    let f = Fixture::new(pool.clone(), "a").await;
    f.trigger(kv_trigger("c", None, &[KvOp::Set])).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("picloud_outbox").await.unwrap();
    let kv = KvServiceImpl::new(pool.clone(), 1024);
    // A write no trigger matches sends nothing; one that enqueues does.
    kv.set(&CallContext::for_app(f.app), "unwatched", "k", json!(1))
        .await
        .unwrap();
    kv.set(&CallContext::for_app(f.app), "c", "k", json!(1))
        .await
        .unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(note.channel(), "picloud_outbox");
    let again =
        tokio::time::timeout(std::time::Duration::from_millis(300), listener.try_recv()).await;
    assert!(
        !matches!(again, Ok(Ok(Some(_)))),
        "one notification for the two writes, not two"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rescue_charges_an_attempt_only_to_events_whose_handler_started(pool: PgPool) {
    use picloud_manager_core::repo::outbox;
    let f = Fixture::new(pool.clone(), "a").await;
    f.trigger(kv_trigger("c", None, &[KvOp::Set])).await;
    let kv = KvServiceImpl::new(pool.clone(), 1024);
    for key in ["started", "queued"] {
        kv.set(&CallContext::for_app(f.app), "c", key, json!(1))
            .await
            .unwrap();
    }
    // A process claims both, starts one, and dies.
    let dead = Uuid::new_v4();
    let claimed = outbox::claim(&pool, dead, 60_000, 10, &[]).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let id_of = |key: &str| {
        claimed
            .iter()
            .find(|e| e.payload.0["key"] == key)
            .unwrap()
            .id
    };
    outbox::complete_and_mark_started(&pool, dead, &[], &[id_of("started")])
        .await
        .unwrap();
    // Its leases run out; another process rescues both.
    sqlx::query("UPDATE outbox SET next_attempt_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let rescued = outbox::claim(&pool, Uuid::new_v4(), 60_000, 10, &[])
        .await
        .unwrap();
    let attempts = |key: &str| {
        let e = rescued.iter().find(|e| e.payload.0["key"] == key).unwrap();
        (e.attempts, e.last_error.is_some())
    };
    assert_eq!(attempts("started"), (1, true), "the started one lost a run");
    assert_eq!(
        attempts("queued"),
        (0, false),
        "the queued one never ran: no attempt charged"
    );

    // An event rescued again and again without ever being marked started (it
    // kills its process at once) is charged from the fifth rescue on.
    for rescue in 2..=6 {
        sqlx::query("UPDATE outbox SET next_attempt_at = now() - interval '1 second'")
            .execute(&pool)
            .await
            .unwrap();
        let again = outbox::claim(&pool, Uuid::new_v4(), 60_000, 10, &[])
            .await
            .unwrap();
        let queued = again
            .iter()
            .find(|e| e.payload.0["key"] == "queued")
            .unwrap();
        let expected = if rescue >= 5 { rescue - 4 } else { 0 };
        assert_eq!(queued.attempts, expected, "rescue {rescue}");
    }
}
