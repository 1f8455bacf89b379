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
        chain_id: None,
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
    let events = EventPolicy::new(3, 1000);
    let kv = KvServiceImpl::with_events(pool.clone(), 1024, events.clone());
    let pubsub = PubsubServiceImpl::new(pool.clone(), 1024, events.clone());
    let at = |depth| CallContext {
        app_id: f.app,
        trigger_depth: depth,
        origin_principal: None,
        chain_id: None,
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

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_chain_past_its_event_budget_keeps_its_changes_and_drops_its_events(pool: PgPool) {
    let f = Fixture::new(pool.clone(), "a").await;
    f.trigger(kv_trigger("c", None, &[KvOp::Set, KvOp::Delete]))
        .await;
    f.trigger(kv_trigger("c", None, &[KvOp::Set])).await;
    f.trigger(TriggerConfig::Pubsub(PubsubTriggerConfig {
        topic: "t".into(),
    }))
    .await;
    let events = EventPolicy::new(8, 5);
    let kv = KvServiceImpl::with_events(pool.clone(), 1024, events.clone());
    let pubsub = PubsubServiceImpl::new(pool.clone(), 1024, events.clone());
    let in_chain = |chain_id| CallContext {
        app_id: f.app,
        trigger_depth: 1,
        origin_principal: None,
        chain_id,
    };
    // Chain 7 spends 2 + 2 of its 5 events; the third write (6 > 5) is dropped.
    kv.set(&in_chain(Some(7)), "c", "k", json!(1))
        .await
        .unwrap();
    kv.set(&in_chain(Some(7)), "c", "k", json!(2))
        .await
        .unwrap();
    assert_eq!(f.outbox().await.len(), 4);
    kv.set(&in_chain(Some(7)), "c", "k", json!(3))
        .await
        .unwrap();
    assert_eq!(f.outbox().await.len(), 4, "over the budget: dropped");
    assert_eq!(events.counters().budget_drops.load(Ordering::Relaxed), 2);
    assert_eq!(
        kv.get(f.app, "c", "k").await.unwrap(),
        Some(json!(3)),
        "the write itself stands"
    );
    // Once spent, the chain stays spent, whatever the source.
    assert!(kv.delete(&in_chain(Some(7)), "c", "k").await.unwrap());
    assert_eq!(
        pubsub
            .publish(&in_chain(Some(7)), "t", json!(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(events.counters().budget_drops.load(Ordering::Relaxed), 4);
    // Another chain has its own budget; changes outside a chain are not counted.
    assert_eq!(
        pubsub
            .publish(&in_chain(Some(8)), "t", json!(1))
            .await
            .unwrap(),
        1
    );
    for i in 0..10 {
        kv.set(&in_chain(None), "c", "k", json!(i)).await.unwrap();
    }
    assert_eq!(f.outbox().await.len(), 4 + 1 + 20);
    let chains: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT chain_id FROM outbox WHERE app_id = $1 ORDER BY id")
            .bind(f.app.0)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(chains[..4].iter().all(|c| *c == Some(7)), "{chains:?}");
    assert_eq!(chains[4], Some(8));
    assert!(
        chains[5..].iter().all(Option::is_none),
        "roots start chains"
    );
    assert_eq!(events.counters().depth_drops.load(Ordering::Relaxed), 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_queue_tables_are_vacuumed_by_dead_rows_not_by_fraction(pool: PgPool) {
    for table in ["outbox", "trigger_chains"] {
        let options: Vec<String> = sqlx::query_scalar(
            "SELECT unnest(reloptions) FROM pg_class WHERE relname = $1 AND relkind = 'r'",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap();
        for wanted in [
            "autovacuum_vacuum_scale_factor=0",
            "autovacuum_vacuum_threshold=5000",
            "autovacuum_vacuum_cost_delay=0",
        ] {
            assert!(
                options.iter().any(|o| o == wanted),
                "{table}: {wanted} missing from {options:?}"
            );
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_app_holds_at_most_its_trigger_limit(pool: PgPool) {
    let f = Fixture::new(pool.clone(), "a").await;
    let triggers = f.triggers.clone().with_max_per_app(3);
    let (app, script) = (f.app, f.script);
    let request = move || NewTriggerRequest {
        script_id: script,
        config: kv_trigger("c", None, &[KvOp::Set]),
        retry: None,
    };
    // Racing registrations cannot pass the limit together.
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let triggers = triggers.clone();
        racing.spawn(async move { triggers.create(app, request(), None).await });
    }
    let results = racing.join_all().await;
    let created: Vec<Uuid> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|t| t.id))
        .collect();
    assert_eq!(created.len(), 3, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            refused.to_string().contains("PICLOUD_MAX_TRIGGERS_PER_APP"),
            "{refused}"
        );
    }
    triggers.delete(app, created[0]).await.unwrap();
    triggers.create(app, request(), None).await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_app_over_its_pending_quota_cannot_make_changes_that_fire_triggers(pool: PgPool) {
    let f = Fixture::new(pool.clone(), "a").await;
    f.trigger(kv_trigger("c", None, &[KvOp::Set, KvOp::Delete]))
        .await;
    f.trigger(TriggerConfig::Pubsub(PubsubTriggerConfig {
        topic: "t".into(),
    }))
    .await;
    let events = EventPolicy::default().with_max_pending_per_app(2);
    let kv = KvServiceImpl::with_events(pool.clone(), 1024, events.clone());
    let pubsub = PubsubServiceImpl::new(pool.clone(), 1024, events.clone());
    let ctx = CallContext::for_app(f.app);
    kv.set(&ctx, "c", "k", json!(1)).await.unwrap();
    kv.set(&ctx, "c", "k", json!(2)).await.unwrap();
    let pending = picloud_manager_core::repo::outbox::pending_by_app(&pool)
        .await
        .unwrap();
    assert_eq!(pending, vec![(f.app.0, 2)]);
    // What the dispatcher's housekeeping does with that count.
    events.set_over_quota(
        pending
            .into_iter()
            .filter(|(_, n)| *n >= 2)
            .map(|(app, _)| app)
            .collect(),
    );
    let refused = kv.set(&ctx, "c", "k", json!(3)).await.unwrap_err();
    assert_eq!(refused.kind(), "unavailable");
    assert!(
        refused
            .to_string()
            .contains("PICLOUD_MAX_PENDING_EVENTS_PER_APP"),
        "{refused}"
    );
    assert_eq!(
        kv.get(f.app, "c", "k").await.unwrap(),
        Some(json!(2)),
        "nothing written"
    );
    assert!(kv.delete(&ctx, "c", "k").await.is_err());
    assert_eq!(
        kv.get(f.app, "c", "k").await.unwrap(),
        Some(json!(2)),
        "nothing deleted"
    );
    assert!(pubsub.publish(&ctx, "t", json!(1)).await.is_err());
    assert_eq!(f.outbox().await.len(), 2, "nothing enqueued");
    // Changes that fire nothing are made.
    kv.set(&ctx, "quiet", "k", json!(1)).await.unwrap();
    assert_eq!(pubsub.publish(&ctx, "other", json!(1)).await.unwrap(), 0);
    assert_eq!(events.counters().quota_refusals.load(Ordering::Relaxed), 3);
    // Once under the quota again, writes go through.
    events.set_over_quota(Default::default());
    kv.set(&ctx, "c", "k", json!(4)).await.unwrap();
    assert_eq!(f.outbox().await.len(), 3);
}

/// Housekeeping deletes old rows in batches and skips rows another session
/// holds, so two processes' housekeeping at once never wait on (or deadlock
/// with) each other.
#[sqlx::test(migrator = "MIGRATOR")]
async fn housekeeping_deletes_old_rows_in_batches_past_rows_another_session_holds(pool: PgPool) {
    use picloud_manager_core::repo;
    sqlx::query(
        "INSERT INTO realtime_messages (app_id, topic, message, created_at) \
         SELECT gen_random_uuid(), 't', 'm', now() - interval '2 minutes' \
         FROM generate_series(1, 12001)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO realtime_messages (app_id, topic, message) VALUES (gen_random_uuid(), 't', 'fresh')")
        .execute(&pool)
        .await
        .unwrap();
    // Another session holds one old row.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT id FROM realtime_messages WHERE message = 'm' ORDER BY id LIMIT 1 FOR UPDATE",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let deleted = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        repo::realtime::forget_old_messages(&pool),
    )
    .await
    .expect("housekeeping does not wait for a held row")
    .unwrap();
    assert_eq!(
        deleted, 12_000,
        "every old row but the held one, over three batches"
    );
    holder.rollback().await.unwrap();
    assert_eq!(repo::realtime::forget_old_messages(&pool).await.unwrap(), 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT message FROM realtime_messages")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["fresh"]);
    // The other tables' housekeeping runs the same statement shape.
    sqlx::query(
        "INSERT INTO trigger_chains (chain_id, events, last_event_at) \
         VALUES (1, 1, now() - interval '2 days'), (2, 1, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        repo::outbox::forget_chains(&pool, std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        repo::inbound::forget_old_deliveries(&pool).await.unwrap(),
        0
    );
    assert_eq!(repo::email::forget_old_keys(&pool).await.unwrap(), 0);
}
