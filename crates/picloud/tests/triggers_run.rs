//! Triggers whose handlers actually run: the dispatcher and the cron
//! scheduler in-process over real PostgreSQL, effects asserted through what
//! the handlers write.

mod support;

use axum::http::{Method, StatusCode};
use picloud::config::AppConfig;
use picloud_manager_core::MIGRATOR;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use support::{eventually, test_config, Running, TestApp};

const WAIT: Duration = Duration::from_secs(30);

async fn kv_value(pool: &PgPool, app: &str, collection: &str, key: &str) -> Option<Value> {
    sqlx::query_scalar::<_, sqlx::types::Json<Value>>(
        "SELECT value FROM kv_entries WHERE app_id = $1::uuid AND collection = $2 AND key = $3",
    )
    .bind(app)
    .bind(collection)
    .bind(key)
    .fetch_optional(pool)
    .await
    .unwrap()
    .map(|v| v.0)
}

async fn kv_keys(pool: &PgPool, app: &str, collection: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT key FROM kv_entries WHERE app_id = $1::uuid AND collection = $2 ORDER BY key",
    )
    .bind(app)
    .bind(collection)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `Some` when nothing of the app is pending: no outbox row, and no dead
/// letter still to fan out (its handlers' events are enqueued after it is
/// stored, by a task of their own).
async fn outbox_empty(pool: &PgPool, app: &str) -> Option<()> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM outbox WHERE app_id = $1::uuid) \
              + (SELECT count(*) FROM dead_letters WHERE app_id = $1::uuid AND NOT fanned_out)",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .unwrap();
    (n == 0).then_some(())
}

async fn dead_letters(t: &TestApp, app: &str) -> Vec<Value> {
    let (status, list) = t
        .admin(
            Method::GET,
            &format!("/api/v1/admin/apps/{app}/dead-letters"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array().unwrap().clone()
}

async fn trigger(t: &TestApp, app: &str, body: Value) -> String {
    let (status, created) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/triggers"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// A handler that records `ctx.event` under a key made of the event's own fields.
const RECORD: &str = r#"
    let e = ctx.event;
    let key = if e.kind == "kv" { e.op + ":" + e.key } else if e.kind == "pubsub" { e.topic } else { e.kind };
    kv::set(ctx.script.name, key, e);
"#;

async fn start(pool: PgPool) -> Running {
    TestApp::running(pool, test_config()).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn kv_triggers_run_with_the_change_and_their_filters(pool: PgPool) {
    let r = start(pool.clone()).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    let all = t.create_script(&app, "all", RECORD, false).await;
    let eu_sets = t.create_script(&app, "eu_sets", RECORD, false).await;
    let deletes = t.create_script(&app, "deletes", RECORD, false).await;
    trigger(
        t,
        &app,
        json!({"kind": "kv", "script_id": all, "config": {"collection": "orders"}}),
    )
    .await;
    trigger(t, &app, json!({"kind": "kv", "script_id": eu_sets, "config": {"collection": "orders", "key_prefix": "eu/", "ops": ["set"]}})).await;
    trigger(t, &app, json!({"kind": "kv", "script_id": deletes, "config": {"collection": "orders", "ops": ["delete"]}})).await;
    t.create_script(
        &app,
        "writer",
        r#"kv::set("orders", "eu/1", #{n: 1}); kv::set("orders", "eu/1", #{n: 2});
           kv::set("orders", "us/1", 7); kv::delete("orders", "eu/1"); kv::set("other", "eu/1", 0);"#,
        false,
    )
    .await;
    let (status, _) = t.invoke(&app, "writer", json!(null)).await;
    assert_eq!(status, StatusCode::OK);

    eventually("every event handled", WAIT, || outbox_empty(&pool, &app)).await;
    // `all` saw every change of the collection; the last event per key wins the record.
    assert_eq!(
        kv_keys(&pool, &app, "all").await,
        vec!["delete:eu/1", "set:eu/1", "set:us/1"]
    );
    assert_eq!(
        kv_value(&pool, &app, "all", "delete:eu/1").await.unwrap(),
        json!({"kind": "kv", "op": "delete", "collection": "orders", "key": "eu/1", "previous": {"n": 2}})
    );
    assert_eq!(
        kv_value(&pool, &app, "all", "set:us/1").await.unwrap(),
        json!({"kind": "kv", "op": "set", "collection": "orders", "key": "us/1", "value": 7})
    );
    let eu = kv_value(&pool, &app, "all", "set:eu/1").await.unwrap();
    assert!(
        eu == json!({"kind": "kv", "op": "set", "collection": "orders", "key": "eu/1", "value": {"n": 1}})
            || eu
                == json!({"kind": "kv", "op": "set", "collection": "orders", "key": "eu/1", "value": {"n": 2}, "previous": {"n": 1}}),
        "{eu}"
    );
    // The prefix and ops filters kept the others out.
    assert_eq!(kv_keys(&pool, &app, "eu_sets").await, vec!["set:eu/1"]);
    assert_eq!(kv_keys(&pool, &app, "deletes").await, vec!["delete:eu/1"]);
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn pubsub_triggers_match_exact_topics_and_prefixes(pool: PgPool) {
    let r = start(pool.clone()).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    let exact = t.create_script(&app, "exact", RECORD, false).await;
    let below = t.create_script(&app, "below", RECORD, false).await;
    trigger(
        t,
        &app,
        json!({"kind": "pubsub", "script_id": exact, "config": {"topic": "orders"}}),
    )
    .await;
    trigger(
        t,
        &app,
        json!({"kind": "pubsub", "script_id": below, "config": {"topic": "orders.*"}}),
    )
    .await;
    t.create_script(
        &app,
        "publisher",
        r#"for topic in ["orders", "orders.new", "orders.new.eu", "ordersx.new", "other"] {
               pubsub::publish(topic, #{ topic: topic });
           }"#,
        false,
    )
    .await;
    assert_eq!(
        t.invoke(&app, "publisher", json!(null)).await.0,
        StatusCode::OK
    );
    eventually("every event handled", WAIT, || outbox_empty(&pool, &app)).await;
    assert_eq!(kv_keys(&pool, &app, "exact").await, vec!["orders"]);
    assert_eq!(
        kv_keys(&pool, &app, "below").await,
        vec!["orders.new", "orders.new.eu"]
    );
    let event = kv_value(&pool, &app, "below", "orders.new").await.unwrap();
    assert_eq!(event["kind"], "pubsub");
    assert_eq!(event["message"], json!({"topic": "orders.new"}));
    assert!(event["published_at"].is_string());
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn cron_fires_every_second_and_stops_when_deleted(pool: PgPool) {
    let r = start(pool.clone()).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    let script = t
        .create_script(
            &app,
            "tick",
            r#"let n = kv::get("ticks", "n"); if n == () { n = 0; }
               kv::set("ticks", "n", n + 1); kv::set("ticks", "last", ctx.event);"#,
            false,
        )
        .await;
    let id = trigger(
        t,
        &app,
        json!({"kind": "cron", "script_id": script, "config": {"schedule": "* * * * * *"}}),
    )
    .await;
    eventually("two ticks", WAIT, || async {
        let n = kv_value(&pool, &app, "ticks", "n").await?;
        (n.as_i64()? >= 2).then_some(())
    })
    .await;
    let last = kv_value(&pool, &app, "ticks", "last").await.unwrap();
    assert_eq!(last["kind"], "cron");
    assert_eq!(last["schedule"], "* * * * * *");
    assert!(last["fired_at"].as_str().unwrap().ends_with('Z'));

    let (status, _) = t
        .admin(
            Method::DELETE,
            &format!("/api/v1/admin/apps/{app}/triggers/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Pending ticks went with the trigger; one already running may finish.
    eventually("no pending tick", WAIT, || outbox_empty(&pool, &app)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = kv_value(&pool, &app, "ticks", "n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        kv_value(&pool, &app, "ticks", "n").await.unwrap(),
        stopped_at,
        "no tick after the trigger was deleted"
    );
    r.stop().await;
}

/// A kv trigger whose handler counts its runs and then fails.
async fn failing_kv_trigger(t: &TestApp, app: &str, max_attempts: u32) -> (String, String) {
    let script = t
        .create_script(
            app,
            "fails",
            r#"let n = kv::get("runs", "n"); if n == () { n = 0; }
               kv::set("runs", "n", n + 1);
               throw "boom on run " + (n + 1);"#,
            false,
        )
        .await;
    let trigger_id = trigger(
        t,
        app,
        json!({"kind": "kv", "script_id": script, "config": {"collection": "in"},
               "retry": {"max_attempts": max_attempts, "backoff": "fixed", "base_ms": 20}}),
    )
    .await;
    (script, trigger_id)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failing_handler_runs_max_attempts_times_then_its_dead_letter_handler_runs(pool: PgPool) {
    let r = start(pool.clone()).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    let (failing_script, failing_trigger) = failing_kv_trigger(t, &app, 3).await;
    let dl_script = t.create_script(&app, "dl", RECORD, false).await;
    trigger(
        t,
        &app,
        json!({"kind": "dead_letter", "script_id": dl_script}),
    )
    .await;
    t.create_script(&app, "writer", r#"kv::set("in", "k", 1)"#, false)
        .await;
    assert_eq!(
        t.invoke(&app, "writer", json!(null)).await.0,
        StatusCode::OK
    );

    let handled = eventually("the dead-letter handler ran", WAIT, || async {
        kv_value(&pool, &app, "dl", "dead_letter").await
    })
    .await;
    assert_eq!(
        kv_value(&pool, &app, "runs", "n").await,
        Some(json!(3)),
        "exactly max_attempts runs"
    );
    let letters = dead_letters(t, &app).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["source"], "kv");
    assert_eq!(letter["trigger_id"], failing_trigger.as_str());
    assert_eq!(letter["script_id"], failing_script.as_str());
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap()
            .contains("boom on run 3"),
        "{letter}"
    );
    assert_eq!(
        letter["event"],
        json!({"kind": "kv", "op": "set", "collection": "in", "key": "k", "value": 1})
    );

    assert_eq!(handled["kind"], "dead_letter");
    assert_eq!(handled["dead_letter_id"], letter["id"]);
    assert_eq!(
        handled["original"], letter["event"],
        "the nested original event"
    );
    assert_eq!(handled["attempts"], 3);
    assert_eq!(handled["last_error"], letter["last_error"]);
    assert_eq!(handled["trigger_id"], failing_trigger.as_str());
    assert_eq!(handled["script_id"], failing_script.as_str());
    assert!(handled["first_attempt_at"].is_string() && handled["last_attempt_at"].is_string());

    // The admin API shows it, and the metrics count it.
    let id = letter["id"].as_str().unwrap();
    let (status, one) = t
        .admin(
            Method::GET,
            &format!("/api/v1/admin/apps/{app}/dead-letters/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&one, letter);
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("picloud_dead_letters_total{kind=\"kv\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("picloud_handler_runs_total{kind=\"kv\",outcome=\"error\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("picloud_handler_retries_total{kind=\"kv\"} 2"),
        "{metrics}"
    );
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn dead_letter_filters_choose_the_handlers(pool: PgPool) {
    let r = start(pool.clone()).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    let (failing_script, failing_trigger) = failing_kv_trigger(t, &app, 1).await;
    let other_script = t.create_script(&app, "other", "1", false).await;
    let other_trigger = trigger(
        t,
        &app,
        json!({"kind": "pubsub", "script_id": other_script, "config": {"topic": "x"}}),
    )
    .await;
    for (name, config) in [
        ("any", json!({})),
        ("by_source", json!({"source": "kv"})),
        ("by_trigger", json!({"trigger_id": failing_trigger})),
        ("by_script", json!({"script_id": failing_script})),
        ("not_source", json!({"source": "pubsub"})),
        ("not_trigger", json!({"trigger_id": other_trigger})),
        ("not_script", json!({"script_id": other_script})),
    ] {
        let script = t.create_script(&app, name, RECORD, false).await;
        trigger(
            t,
            &app,
            json!({"kind": "dead_letter", "script_id": script, "config": config}),
        )
        .await;
    }
    t.create_script(&app, "writer", r#"kv::set("in", "k", 1)"#, false)
        .await;
    assert_eq!(
        t.invoke(&app, "writer", json!(null)).await.0,
        StatusCode::OK
    );
    eventually("a dead letter", WAIT, || async {
        (!dead_letters(t, &app).await.is_empty()).then_some(())
    })
    .await;
    eventually("every handler ran", WAIT, || outbox_empty(&pool, &app)).await;
    for name in ["any", "by_source", "by_trigger", "by_script"] {
        assert!(
            kv_value(&pool, &app, name, "dead_letter").await.is_some(),
            "{name} should have run"
        );
    }
    for name in ["not_source", "not_trigger", "not_script"] {
        assert!(
            kv_value(&pool, &app, name, "dead_letter").await.is_none(),
            "{name} should not have run"
        );
    }
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failing_dead_letter_handler_is_not_dead_lettered_again(pool: PgPool) {
    let r = start(pool.clone()).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    failing_kv_trigger(t, &app, 1).await;
    let dl = t
        .create_script(
            &app,
            "dl_fails",
            r#"let n = kv::get("dl_runs", "n"); if n == () { n = 0; }
               kv::set("dl_runs", "n", n + 1); throw "the handler fails too";"#,
            false,
        )
        .await;
    trigger(
        t,
        &app,
        json!({"kind": "dead_letter", "script_id": dl,
        "retry": {"max_attempts": 2, "backoff": "fixed", "base_ms": 20}}),
    )
    .await;
    t.create_script(&app, "writer", r#"kv::set("in", "k", 1)"#, false)
        .await;
    assert_eq!(
        t.invoke(&app, "writer", json!(null)).await.0,
        StatusCode::OK
    );
    eventually("the dead-letter handler's two runs", WAIT, || async {
        let n = kv_value(&pool, &app, "dl_runs", "n").await?;
        (n == json!(2)).then_some(())
    })
    .await;
    eventually("nothing pending", WAIT, || outbox_empty(&pool, &app)).await;
    assert_eq!(
        dead_letters(t, &app).await.len(),
        1,
        "still one dead letter"
    );
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("picloud_dead_letter_handlers_exhausted_total 1"),
        "{metrics}"
    );
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn replay_runs_the_original_event_again(pool: PgPool) {
    let r = start(pool.clone()).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    let (script, _) = failing_kv_trigger(t, &app, 1).await;
    t.create_script(&app, "writer", r#"kv::set("in", "k", 41)"#, false)
        .await;
    assert_eq!(
        t.invoke(&app, "writer", json!(null)).await.0,
        StatusCode::OK
    );
    let letter = eventually("a dead letter", WAIT, || async {
        dead_letters(t, &app).await.into_iter().next()
    })
    .await;
    // Fix the handler, then replay.
    let (status, _) = t
        .admin(
            Method::PUT,
            &format!("/api/v1/admin/apps/{app}/scripts/{script}"),
            Some(json!({"name": "fails", "source": r#"kv::set("fixed", "seen", ctx.event.value + 1)"#})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = letter["id"].as_str().unwrap();
    let (status, replayed) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/dead-letters/{id}/replay"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    assert_eq!(replayed["dead_letter_id"], id);
    let seen = eventually("the replayed event handled", WAIT, || async {
        kv_value(&pool, &app, "fixed", "seen").await
    })
    .await;
    assert_eq!(seen, json!(42));
    // Delete it; a second delete and replay are 404.
    let path = format!("/api/v1/admin/apps/{app}/dead-letters/{id}");
    assert_eq!(
        t.admin(Method::DELETE, &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        t.admin(Method::DELETE, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.admin(Method::POST, &format!("{path}/replay"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_depth_limit_stops_a_handler_that_triggers_itself(pool: PgPool) {
    let config = AppConfig {
        max_trigger_depth: 4,
        ..test_config()
    };
    let r = TestApp::running(pool.clone(), config).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    let script = t
        .create_script(
            &app,
            "again",
            r#"kv::set("loop", "k", ctx.event.value + 1)"#,
            false,
        )
        .await;
    trigger(
        t,
        &app,
        json!({"kind": "kv", "script_id": script, "config": {"collection": "loop"}}),
    )
    .await;
    t.create_script(&app, "start", r#"kv::set("loop", "k", 1)"#, false)
        .await;
    assert_eq!(t.invoke(&app, "start", json!(null)).await.0, StatusCode::OK);
    eventually("the chain to stop", WAIT, || async {
        let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
        metrics
            .as_str()?
            .contains("picloud_trigger_depth_drops_total 1")
            .then_some(())
    })
    .await;
    eventually("nothing pending", WAIT, || outbox_empty(&pool, &app)).await;
    // The invoke wrote 1 (depth 0); handlers at depths 1-4 wrote 2-5; the fifth event was dropped.
    assert_eq!(kv_value(&pool, &app, "loop", "k").await, Some(json!(5)));
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_chain_budget_stops_handlers_that_fan_out_to_each_other(pool: PgPool) {
    let config = AppConfig {
        max_chain_events: 20,
        ..test_config()
    };
    let r = TestApp::running(pool.clone(), config).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    // Three triggers on one collection whose handlers write to it: every
    // write fans out to three events, a width the depth limit alone lets grow
    // to 3^8 runs.
    let script = t
        .create_script(&app, "fan", r#"kv::set("fan", "k", 1)"#, false)
        .await;
    for _ in 0..3 {
        trigger(
            t,
            &app,
            json!({"kind": "kv", "script_id": script, "config": {"collection": "fan"}}),
        )
        .await;
    }
    t.create_script(&app, "start", r#"kv::set("fan", "k", 0)"#, false)
        .await;
    assert_eq!(t.invoke(&app, "start", json!(null)).await.0, StatusCode::OK);
    // Each of the 3 root events starts a chain. A chain's handlers may
    // enqueue 20 events: writes of 3 pass while the count stays within
    // (3, 6, ..., 18), so 6 writes pass (18 events) and its other 13 writes
    // (39 events) are dropped. Runs: 3 roots + 3 x 18.
    eventually("every chain to stop", WAIT, || async {
        let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
        metrics
            .as_str()?
            .contains("picloud_trigger_budget_drops_total 117")
            .then_some(())
    })
    .await;
    eventually("nothing pending", WAIT, || outbox_empty(&pool, &app)).await;
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"picloud_handler_runs_total{kind="kv",outcome="ok"} 57"#),
        "{metrics}"
    );
    assert!(metrics.contains("picloud_trigger_budget_drops_total 117"));
    assert!(metrics.contains("picloud_trigger_depth_drops_total 0"));
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_app_with_too_many_events_waiting_is_refused_changes_that_fire_triggers(pool: PgPool) {
    let config = AppConfig {
        max_pending_events_per_app: 3,
        ..test_config()
    };
    let r = TestApp::running(pool.clone(), config).await;
    let t = &r.app;
    let app = t.create_app("a").await;
    // A handler that fails and waits a minute before its retry: its events stay.
    let script = t
        .create_script(&app, "fails", r#"throw "down""#, false)
        .await;
    trigger(
        t,
        &app,
        json!({"kind": "kv", "script_id": script, "config": {"collection": "c"},
               "retry": {"max_attempts": 2, "backoff": "fixed", "base_ms": 60000}}),
    )
    .await;
    t.create_script(
        &app,
        "write",
        r#"let r = (); try { kv::set("c", ctx.request.body, 1); r = "ok" } catch (e) { r = e.kind } r"#,
        false,
    )
    .await;
    for key in ["a", "b", "c"] {
        assert_eq!(t.invoke(&app, "write", json!(key)).await.1, json!("ok"));
    }
    // The housekeeping counts them (every 5 s) and the next change is refused.
    let probes = std::sync::atomic::AtomicUsize::new(0);
    let refused_key = eventually("a refused write", WAIT, || async {
        let key = format!(
            "d{}",
            probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (_, out) = t.invoke(&app, "write", json!(key)).await;
        (out == json!("unavailable")).then_some(key)
    })
    .await;
    assert_eq!(
        kv_value(&pool, &app, "c", &refused_key).await,
        None,
        "nothing written"
    );
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    assert!(
        !metrics
            .as_str()
            .unwrap()
            .contains("picloud_trigger_quota_refusals_total 0"),
        "the refusal is counted"
    );
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_stuck_dead_letter_fan_out_holds_up_no_other_apps_outcomes(pool: PgPool) {
    let r = start(pool.clone()).await;
    let t = &r.app;
    let poisoned = t.create_app("poisoned").await;
    let fails = t
        .create_script(&poisoned, "fails", r#"throw "down""#, false)
        .await;
    trigger(
        t,
        &poisoned,
        json!({"kind": "kv", "script_id": fails, "config": {"collection": "p"},
               "retry": {"max_attempts": 1, "backoff": "fixed", "base_ms": 1}}),
    )
    .await;
    let told = t
        .create_script(&poisoned, "told", r#"kv::set("dl", "seen", true)"#, false)
        .await;
    let dl_trigger = trigger(
        t,
        &poisoned,
        json!({"kind": "dead_letter", "script_id": told}),
    )
    .await;
    // Hold the dead_letter trigger's row: the fan-out's insert (its foreign
    // key check) waits for it, as a slow fan-out would.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM triggers WHERE id = $1::uuid FOR UPDATE")
        .bind(&dl_trigger)
        .execute(&mut *holder)
        .await
        .unwrap();
    t.create_script(&poisoned, "poison", r#"kv::set("p", "k", 1)"#, false)
        .await;
    assert_eq!(
        t.invoke(&poisoned, "poison", json!(null)).await.0,
        StatusCode::OK
    );
    eventually("the dead letter", WAIT, || async {
        dead_letters(t, &poisoned).await.into_iter().next()
    })
    .await;

    // Meanwhile another app's events complete: their outcomes are written.
    let other = t.create_app("other").await;
    let handler = t
        .create_script(
            &other,
            "h",
            r#"kv::set("done", ctx.event.key, true)"#,
            false,
        )
        .await;
    trigger(
        t,
        &other,
        json!({"kind": "kv", "script_id": handler, "config": {"collection": "v"}}),
    )
    .await;
    t.create_script(
        &other,
        "write",
        r#"for i in 0..20 { kv::set("v", `k${i}`, i) }"#,
        false,
    )
    .await;
    assert_eq!(
        t.invoke(&other, "write", json!(null)).await.0,
        StatusCode::OK
    );
    eventually("the other app's outcomes written", WAIT, || {
        outbox_empty(&pool, &other)
    })
    .await;
    assert_eq!(kv_keys(&pool, &other, "done").await.len(), 20);
    assert_eq!(
        kv_value(&pool, &poisoned, "dl", "seen").await,
        None,
        "the fan-out is still held"
    );

    holder.rollback().await.unwrap();
    eventually("the dead-letter handler", WAIT, || async {
        kv_value(&pool, &poisoned, "dl", "seen").await
    })
    .await;
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn outbox_stats_count_what_waits(pool: PgPool) {
    // No dispatcher runs here, so enqueued events stay.
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("a").await;
    let script = t.create_script(&app, "h", "1", false).await;
    trigger(
        &t,
        &app,
        json!({"kind": "kv", "script_id": script, "config": {"collection": "c"}}),
    )
    .await;
    t.create_script(
        &app,
        "writer",
        r#"kv::set("c", "a", 1); kv::set("c", "b", 2);"#,
        false,
    )
    .await;
    assert_eq!(
        t.invoke(&app, "writer", json!(null)).await.0,
        StatusCode::OK
    );
    let (status, stats) = t
        .admin(
            Method::GET,
            &format!("/api/v1/admin/apps/{app}/outbox/stats"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["depth"], 2);
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats["retrying"], 0);
    assert!(stats["oldest_age_secs"].as_f64().unwrap() >= 0.0);
    let missing = uuid::Uuid::new_v4();
    let (status, _) = t
        .admin(
            Method::GET,
            &format!("/api/v1/admin/apps/{missing}/outbox/stats"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_apps_slow_handlers_do_not_hold_up_another_apps(pool: PgPool) {
    // Handlers that run to an 8 s timeout: nothing of the hog finishes for 8 s.
    let mut config = test_config();
    config.limits.timeout = Duration::from_secs(8);
    let r = TestApp::running(pool.clone(), config).await;
    let t = &r.app;
    // A hog: 80 events, more than every dispatcher slot and more than a claim
    // takes (the other app's event is then only reachable past the hog's
    // backlog in the outbox), each running to the timeout.
    let hog = t.create_app("hog").await;
    let slow = t
        .create_script(&hog, "slow", "let i = 0; loop { i += 1; }", false)
        .await;
    trigger(
        t,
        &hog,
        json!({"kind": "kv", "script_id": slow, "config": {"collection": "c"},
        "retry": {"max_attempts": 1, "backoff": "fixed", "base_ms": 1}}),
    )
    .await;
    t.create_script(
        &hog,
        "flood",
        r#"for i in 0..80 { kv::set("c", "k" + i, i); }"#,
        false,
    )
    .await;
    assert_eq!(t.invoke(&hog, "flood", json!(null)).await.0, StatusCode::OK);
    // Another app's one quick event, enqueued after the hog's eighty.
    let other = t.create_app("other").await;
    let quick = t.create_script(&other, "quick", RECORD, false).await;
    trigger(
        t,
        &other,
        json!({"kind": "kv", "script_id": quick, "config": {"collection": "c"}}),
    )
    .await;
    t.create_script(&other, "poke", r#"kv::set("c", "k", 1)"#, false)
        .await;
    assert_eq!(
        t.invoke(&other, "poke", json!(null)).await.0,
        StatusCode::OK
    );
    eventually("the other app's handler", WAIT, || async {
        kv_value(&pool, &other, "quick", "set:k").await
    })
    .await;
    // It ran on a worker the hog could not use (an app gets at most half of
    // them) before any of the hog's handlers had finished (a finished run is
    // counted before its slot is given back): it did not wait for a dispatcher
    // slot the hog held.
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("picloud_handler_runs_total{kind=\"kv\",outcome=\"limit\"} 0"),
        "the other app waited for the hog's handlers: {metrics}"
    );
    r.stop().await;
}
