//! The dispatcher and the cron scheduler through the real binary, with two or
//! three processes on one database: they share the work, lose nothing when one
//! is killed, and fire each cron tick once.

mod process;

use process::*;
use std::time::{Duration, Instant};

/// Sets up, through `server`, an app whose kv trigger on collection `in` runs
/// `handler`; returns (admin key, app id).
fn app_with_kv_handler(server: &Server, data: &std::path::Path, handler: &str) -> (String, String) {
    let key = admin_key(data);
    let app = create_app(server.port, &key, "work");
    let (status, script) = save_script(server.port, &key, &app, "handler", handler, false);
    assert_eq!(status, 201, "{script}");
    let script_id = json(&script)["id"].as_str().unwrap().to_owned();
    let body = serde_json::json!({
        "kind": "kv", "script_id": script_id, "config": {"collection": "in"},
        "retry": {"max_attempts": 5, "backoff": "fixed", "base_ms": 100},
    })
    .to_string();
    let (status, trigger) = http(
        server.port,
        "POST",
        &format!("/api/v1/admin/apps/{app}/triggers"),
        Some(&key),
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 201, "{trigger}");
    (key, app)
}

/// Enqueues `count` kv events (keys `e0`...) straight into the outbox, as
/// `count` writes would, and wakes the dispatchers.
fn enqueue(url: &str, app: &str, count: usize) {
    sql(
        url,
        &format!(
            "WITH t AS (SELECT id, script_id FROM triggers WHERE app_id = '{app}' AND kind = 'kv') \
             INSERT INTO outbox (app_id, trigger_id, script_id, source_kind, payload, max_attempts, backoff, base_ms, trigger_depth) \
             SELECT '{app}', t.id, t.script_id, 'kv', \
                 jsonb_build_object('kind', 'kv', 'op', 'set', 'collection', 'in', 'key', 'e' || n, 'value', n), \
                 5, 'fixed', 100, 1 \
             FROM t, generate_series(0, {last}) AS n",
            last = count - 1
        ),
    );
    sql(
        url,
        "SELECT 'woken' FROM (SELECT pg_notify('picloud_outbox', '')) AS n",
    );
}

fn count(url: &str, query: &str) -> usize {
    sql(url, &format!("SELECT ({query})::text"))[0]
        .parse()
        .unwrap()
}

/// Waits until `done` holds, at most `within`.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Handled events are recorded under their key; a second run of one event
/// would overwrite its record, so duplicates are counted from the metrics.
const RECORD_HANDLED: &str = r#"kv::set("handled", ctx.event.key, ctx.event.value)"#;

#[test]
fn three_processes_drain_ten_thousand_events_and_each_is_handled() {
    let _serial = serial();
    let url = fresh_database();
    let dirs: Vec<_> = (0..3).map(|_| data_dir()).collect();
    let servers: Vec<Server> = dirs
        .iter()
        .enumerate()
        .map(|(i, (_, data))| {
            Server::start_shared(data, free_port(), &format!("drain{i}"), &url, &[])
        })
        .collect();
    let (_, app) = app_with_kv_handler(&servers[0], &dirs[0].1, RECORD_HANDLED);
    const EVENTS: usize = 10_000;
    let started = Instant::now();
    enqueue(&url, &app, EVENTS);
    wait_until("every event handled", Duration::from_secs(600), || {
        count(&url, "SELECT count(*) FROM outbox") == 0
    });
    let took = started.elapsed();
    let handled = count(
        &url,
        &format!(
            "SELECT count(*) FROM kv_entries WHERE app_id = '{app}' AND collection = 'handled'"
        ),
    );
    assert_eq!(handled, EVENTS, "every event was handled");
    assert_eq!(count(&url, "SELECT count(*) FROM dead_letters"), 0);
    let runs: Vec<f64> = servers
        .iter()
        .map(|s| s.metric("picloud_handler_runs_total{kind=\"kv\",outcome=\"ok\"}"))
        .collect();
    let total: f64 = runs.iter().sum();
    println!(
        "drained {EVENTS} events with 3 processes in {took:?} ({:.0} events/s); runs per process {runs:?}; duplicates {}",
        EVENTS as f64 / took.as_secs_f64(),
        total - EVENTS as f64
    );
    assert!(total >= EVENTS as f64);
    assert!(
        runs.iter().filter(|r| **r > 0.0).count() >= 2,
        "the work was shared: {runs:?}"
    );
}

#[test]
fn a_killed_process_loses_no_event() {
    let _serial = serial();
    let url = fresh_database();
    let (tmp_a, data_a) = data_dir();
    let (_tmp_b, data_b) = data_dir();
    let fast_lease = [("PICLOUD_DISPATCH_LEASE_SECS", "2")];
    let victim = Server::start_shared(&data_a, free_port(), "victim", &url, &fast_lease);
    // Slow handlers (a busy loop of about 50 ms), so events are in flight when the kill comes.
    let (_, app) = app_with_kv_handler(
        &victim,
        &data_a,
        r#"let i = 0; while i < 20000 { i += 1; } kv::set("handled", ctx.event.key, ctx.event.value)"#,
    );
    const EVENTS: usize = 400;
    enqueue(&url, &app, EVENTS);
    wait_until("the victim to be busy", Duration::from_secs(60), || {
        count(
            &url,
            "SELECT count(*) FROM outbox WHERE lease_owner IS NOT NULL",
        ) > 0
            && count(
                &url,
                &format!("SELECT count(*) FROM kv_entries WHERE app_id = '{app}'"),
            ) > 10
    });
    let in_flight = count(
        &url,
        "SELECT count(*) FROM outbox WHERE lease_owner IS NOT NULL",
    );
    let (_, _) = victim.stop(nix::sys::signal::Signal::SIGKILL);
    drop(tmp_a);
    println!("killed a process holding {in_flight} events");
    let survivor = Server::start_shared(&data_b, free_port(), "survivor", &url, &fast_lease);
    wait_until(
        "every event handled after the leases expired",
        Duration::from_secs(300),
        || count(&url, "SELECT count(*) FROM outbox") == 0,
    );
    let handled = count(
        &url,
        &format!(
            "SELECT count(*) FROM kv_entries WHERE app_id = '{app}' AND collection = 'handled'"
        ),
    );
    assert_eq!(handled, EVENTS, "every event was handled");
    assert_eq!(
        count(&url, "SELECT count(*) FROM dead_letters"),
        0,
        "a lost run counts as an attempt, but five are plenty"
    );
    drop(survivor);
}

#[test]
fn a_one_second_cron_on_three_processes_fires_each_tick_once() {
    let _serial = serial();
    let url = fresh_database();
    let dirs: Vec<_> = (0..3).map(|_| data_dir()).collect();
    let servers: Vec<Server> = dirs
        .iter()
        .enumerate()
        .map(|(i, (_, data))| {
            Server::start_shared(data, free_port(), &format!("cron{i}"), &url, &[])
        })
        .collect();
    let key = admin_key(&dirs[0].1);
    let port = servers[0].port;
    let app = create_app(port, &key, "clock");
    let (status, script) = save_script(
        port,
        &key,
        &app,
        "tick",
        r#"let at = ctx.event.fired_at; let n = kv::get("ticks", at); if n == () { n = 0; } kv::set("ticks", at, n + 1);"#,
        false,
    );
    assert_eq!(status, 201, "{script}");
    let script_id = json(&script)["id"].as_str().unwrap().to_owned();
    let body = serde_json::json!({"kind": "cron", "script_id": script_id, "config": {"schedule": "* * * * * *"}}).to_string();
    let (status, trigger) = http(
        port,
        "POST",
        &format!("/api/v1/admin/apps/{app}/triggers"),
        Some(&key),
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 201, "{trigger}");
    let ticks = |url: &str| {
        count(
            url,
            &format!(
                "SELECT count(*) FROM kv_entries WHERE app_id = '{app}' AND collection = 'ticks'"
            ),
        )
    };
    wait_until("six ticks", Duration::from_secs(60), || ticks(&url) >= 6);
    let trigger_id = json(&trigger)["id"].as_str().unwrap().to_owned();
    let (status, _) = http(
        port,
        "DELETE",
        &format!("/api/v1/admin/apps/{app}/triggers/{trigger_id}"),
        Some(&key),
        None,
    )
    .unwrap();
    assert_eq!(status, 204);
    wait_until("no pending tick", Duration::from_secs(60), || {
        count(&url, "SELECT count(*) FROM outbox") == 0
    });
    let counts = sql(
        &url,
        &format!(
            "SELECT value::text FROM kv_entries WHERE app_id = '{app}' AND collection = 'ticks'"
        ),
    );
    assert!(counts.len() >= 6);
    assert!(
        counts.iter().all(|n| n == "1"),
        "every tick ran once: {counts:?}"
    );
    let fired: Vec<f64> = servers
        .iter()
        .map(|s| s.metric("picloud_handler_runs_total{kind=\"cron\",outcome=\"ok\"}"))
        .collect();
    assert_eq!(
        fired.iter().sum::<f64>() as usize,
        counts.len(),
        "{fired:?}"
    );
}
