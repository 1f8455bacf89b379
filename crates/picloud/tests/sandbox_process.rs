//! The sandbox held by the real binary: every runaway of the sandbox issue,
//! run against `picloud serve --dev`, leaves the process alive and serving,
//! ends within its limit with a clear error, and keeps memory, threads, the
//! health endpoint and secret values where they belong.

mod process;

use process::*;
use serde_json::Value;
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The run timeout of the server under test.
const TIMEOUT: Duration = Duration::from_secs(4);
/// What a runaway may take past its timeout: watchdog ticks, one slow
/// operation of a debug build, and the round trip.
const OVERRUN: Duration = Duration::from_millis(1500);
const SECRET: &str = "hunter2-SECRET";

/// Polls `/healthz` until stopped and keeps the slowest answer (or failure).
struct HealthWatch {
    stop: Arc<AtomicBool>,
    slowest_ms: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl HealthWatch {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, slowest_ms) = (stop.clone(), slowest_ms.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let answer = http(port, "GET", "/healthz", None, None);
                    let ms = match answer {
                        Ok((200, _)) => started.elapsed().as_millis() as u64,
                        other => {
                            eprintln!("/healthz failed: {other:?}");
                            u64::MAX
                        }
                    };
                    slowest_ms.fetch_max(ms, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            stop,
            slowest_ms,
            thread: Some(thread),
        }
    }

    /// The slowest health answer seen, in ms (`u64::MAX` for a failure).
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        let slowest = self.slowest_ms.load(Ordering::Relaxed);
        eprintln!("slowest /healthz answer: {slowest} ms");
        slowest
    }
}

/// A server with small, explicit pool settings and a short timeout.
fn start(tag: &str) -> (tempfile::TempDir, Server, String) {
    let (tmp, data) = data_dir();
    let timeout_ms = TIMEOUT.as_millis().to_string();
    let server = Server::start(
        &data,
        free_port(),
        tag,
        &[
            ("PICLOUD_SCRIPT_TIMEOUT_MS", &timeout_ms),
            ("PICLOUD_SCRIPT_MAX_OPERATIONS", "1000000000000"),
            ("PICLOUD_SCRIPT_WORKERS", "4"),
            ("PICLOUD_SCRIPT_QUEUE", "8"),
            ("PICLOUD_SCRIPT_MAX_PER_APP", "2"),
            ("PICLOUD_SCRIPT_COMPILE_TIMEOUT_MS", "50"),
        ],
    );
    let key = admin_key(&data);
    (tmp, server, key)
}

/// Saves `source` as script `name` and invokes it: (status, body JSON, time taken).
fn run_script(port: u16, key: &str, app: &str, name: &str, source: &str) -> (u16, Value, Duration) {
    create_script(port, key, app, name, source);
    let started = Instant::now();
    let (status, body) = http(
        port,
        "POST",
        &format!("/api/v1/apps/{app}/invoke/{name}"),
        Some(key),
        Some("null"),
    )
    .unwrap();
    (status, json(&body), started.elapsed())
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

/// A map holding one shared 1 MiB string under 500 keys: 1 MiB inside Rhai,
/// 500 MiB as text or JSON.
const SHARED_MAP: &str = r#"let s = "x"; while s.len() < 1048576 { s += s; }
    let m = #{}; for i in 0..500 { m[`k${i}`] = s; }"#;

#[test]
fn runaway_scripts_end_within_their_limits_and_the_server_keeps_serving() {
    let _serial = serial();
    let (_tmp, server, key) = start("sandbox");
    let port = server.port;
    let pid = server.child.id();
    let app = create_app(port, &key, "runaways");
    let health = HealthWatch::start(port);

    // Memory: deep nesting, a hugely shared value converted every way, replace.
    let hwm_before = proc_status(pid, "VmHWM");
    let rss_before = proc_status(pid, "VmRSS");
    let (status, body, _) = run_script(
        port,
        &key,
        &app,
        "nest",
        "let a = []; for i in 0..100000 { a = [a]; } 1",
    );
    assert!(
        status == 200 || (status == 500 && error_code(&body) == "script_limit"),
        "{status} {body}"
    );
    let conversions = [
        ("result", "m", "script_limit", "larger than the limit"),
        ("interpolate", "`${m}`", "script_limit", "string"),
        ("concat", r#"let x = "" + m; 1"#, "script_limit", "string"),
        (
            "kvset",
            r#"kv::set("c", "k", m); 1"#,
            "script_error",
            "too_large",
        ),
        ("throw", "throw m;", "script_error", ""),
    ];
    for (name, tail, code, mentions) in conversions {
        let (status, body, _) = run_script(port, &key, &app, name, &format!("{SHARED_MAP} {tail}"));
        assert_eq!((status, error_code(&body)), (500, code), "{name}: {body}");
        assert!(error_message(&body).contains(mentions), "{name}: {body}");
        assert!(body.to_string().len() < 10_000, "{name}: a bounded message");
    }
    let (status, body, _) = run_script(
        port,
        &key,
        &app,
        "log",
        &format!("{SHARED_MAP} log::info(m); 1"),
    );
    assert_eq!((status, body), (200, Value::from(1)));
    let (status, body, _) = run_script(
        port,
        &key,
        &app,
        "replace",
        r#"let big = "x"; while big.len() < 1000000 { big += big; } big.truncate(1000000);
           let s = "a"; while s.len() < 1000 { s += s; } s.replace("", big); s.len()"#,
    );
    assert_eq!((status, error_code(&body)), (500, "script_limit"), "{body}");
    let grown_kib = proc_status(pid, "VmHWM").saturating_sub(hwm_before);
    assert!(grown_kib < 256 * 1024, "peak RSS grew by {grown_kib} KiB");

    // Closures nest without item limits; dropping the chain needs the big stack.
    let (status, body, _) = run_script(
        port,
        &key,
        &app,
        "closures",
        "let f = || 1; loop { let g = f; f = || g.call(); }",
    );
    assert_eq!((status, error_code(&body)), (500, "script_limit"), "{body}");
    // The hundreds of MB of stack its drop touched (and the freed heap) are given back.
    let rss_grown_kib = proc_status(pid, "VmRSS").saturating_sub(rss_before);
    assert!(
        rss_grown_kib < 200 * 1024,
        "RSS stayed {rss_grown_kib} KiB above the start"
    );

    // Time: no sleep; a comparator that never returns; slow single operations.
    for (name, source) in [
        ("sleep", "sleep(25)"),
        ("sleepmax", "sleep(9223372036854775807)"),
        ("sleepfloat", "sleep(1.0e300)"),
    ] {
        let (status, body, took) = run_script(port, &key, &app, name, source);
        assert_eq!(
            (status, error_code(&body)),
            (500, "script_error"),
            "{name}: {body}"
        );
        assert!(
            error_message(&body).contains("sleep is not available"),
            "{body}"
        );
        assert!(took < Duration::from_secs(2), "{name} took {took:?}");
    }
    for (name, source) in [
        ("sort", "let a = [3, 1, 2]; a.sort(|x, y| { loop {} }); a"),
        (
            "compare",
            r#"let s = "x"; while s.len() < 131072 { s += s; } let t = "x"; while t.len() < 131072 { t += t; }
               let a = []; a.pad(500, 0); let b = []; b.pad(500, 0);
               for i in 0..500 { a[i] = s; b[i] = t; } loop { a == b; }"#,
        ),
    ] {
        let (status, body, took) = run_script(port, &key, &app, name, source);
        assert_eq!(
            (status, error_code(&body)),
            (500, "script_limit"),
            "{name}: {body}"
        );
        assert!(error_message(&body).contains("timeout"), "{name}: {body}");
        assert!(took < TIMEOUT + OVERRUN, "{name} took {took:?}");
    }

    // Compile: two concurrent saves of a source that takes ~250 ms to parse in a
    // debug build stop at the compile bound; a source above the size limit is
    // refused unread.
    let slow_source = picloud_executor_core::testing::slow_to_compile_source(40_000);
    let saves: Vec<_> = (0..2)
        .map(|n| {
            let (key, app, source) = (key.clone(), app.clone(), slow_source.clone());
            std::thread::spawn(move || {
                save_script(port, &key, &app, &format!("slow{n}"), &source, false)
            })
        })
        .collect();
    for save in saves {
        let (status, body) = save.join().unwrap();
        let body = json(&body);
        assert_eq!(
            (status, error_code(&body)),
            (422, "compile_error"),
            "{body}"
        );
        assert!(
            error_message(&body).contains("took longer than 50 ms"),
            "{body}"
        );
    }
    let (status, body) = save_script(port, &key, &app, "huge", &" ".repeat(600 * 1024), false);
    let body = json(&body);
    assert_eq!((status, error_code(&body)), (413, "too_large"), "{body}");
    assert_eq!(body["error"]["limit"], 512 * 1024);

    // Leaks: secret values never reach a response or a log line; kv NUL is an argument error.
    set_secret(port, &key, &app, "db_password", SECRET);
    for (name, source) in [
        ("leak_parse", r#"parse_int(secrets::get("db_password"))"#),
        ("leak_fn", r#"Fn(secrets::get("db_password")).call()"#),
        (
            "leak_log",
            r#"log::info(`pw is ${secrets::get("db_password")}`); throw secrets::get("db_password")"#,
        ),
    ] {
        let (status, out) = save_script(port, &key, &app, name, source, true);
        assert_eq!(status, 201, "{out}");
        let path = format!("/api/v1/apps/{app}/invoke/{name}");
        let anonymous = request(port, "POST", &path, None, Some("null")).unwrap();
        assert_eq!(anonymous.status, 500);
        assert!(!anonymous.body.contains("hunter2"), "{}", anonymous.body);
        assert!(json(&anonymous.body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("error id"));
        let (status, detail) = http(port, "POST", &path, Some(&key), Some("null")).unwrap();
        assert_eq!(status, 500);
        assert!(!detail.contains("hunter2"), "{detail}");
        assert!(detail.contains("[redacted]"), "{detail}");
    }
    // Secrets that a message would escape, make single-line, or cut.
    for (name, value) in [("nl", "line1\nNLSECRET"), ("qq", "ab\"cd\\ef-Q2SECRET")] {
        set_secret(port, &key, &app, name, value);
    }
    for (name, source) in [
        (
            "leak_nl",
            r#"let s = secrets::get("nl"); log::warn(s); log::info([s]); throw s"#,
        ),
        (
            "leak_qq",
            r#"let s = secrets::get("qq"); log::warn([s]); log::info(#{k: s}); throw [s]"#,
        ),
        (
            "leak_cut",
            r#"let s = secrets::get("db_password"); let p = "x"; p.pad(4085, "x"); log::info(p + s); let q = "x"; q.pad(987, "x"); throw q + s"#,
        ),
    ] {
        let (status, out) = save_script(port, &key, &app, name, source, true);
        assert_eq!(status, 201, "{out}");
        let path = format!("/api/v1/apps/{app}/invoke/{name}");
        for caller in [None, Some(key.as_str())] {
            let (status, detail) = http(port, "POST", &path, caller, Some("null")).unwrap();
            assert_eq!(status, 500, "{detail}");
            for shown in ["NLSECRET", "Q2SECRET", "hunter"] {
                assert!(!detail.contains(shown), "{name}: {detail}");
            }
        }
    }
    // A script cannot forge a log line.
    let (status, _, _) = run_script(
        port,
        &key,
        &app,
        "forge",
        r#"log::warn("a\nFORGED picloud line"); 1"#,
    );
    assert_eq!(status, 200);

    let (status, body, _) = run_script(port, &key, &app, "nul", r#"kv::list("c", "a\x00b")"#);
    assert_eq!((status, error_code(&body)), (500, "script_error"), "{body}");
    assert!(error_message(&body).contains("invalid_argument"), "{body}");

    let slowest = health.finish();
    assert!(
        slowest < 1000,
        "/healthz took {slowest} ms (u64::MAX: failed)"
    );
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 0, "{logs}");
    for shown in ["hunter", "NLSECRET", "Q2SECRET"] {
        assert!(
            !logs.contains(shown),
            "a secret value reached the log: {shown}"
        );
    }
    assert!(
        !logs.lines().any(|line| line.starts_with("FORGED")),
        "a script wrote a line of its own into the log"
    );
    assert!(
        logs.contains("[redacted]"),
        "the scrubbed log line is there"
    );
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(!logs.contains("database error"), "{logs}");
}

#[test]
fn a_flood_of_slow_public_invokes_is_bounded_and_other_apps_still_run() {
    let _serial = serial();
    let (_tmp, server, key) = start("flood");
    let port = server.port;
    let pid = server.child.id();
    let flooded = create_app(port, &key, "flooded");
    let other = create_app(port, &key, "other");
    let (status, out) = save_script(
        port,
        &key,
        &flooded,
        "slow",
        "let t = timestamp(); while t.elapsed < 1.5 {} 1",
        true,
    );
    assert_eq!(status, 201, "{out}");
    create_script(port, &key, &other, "quick", "40 + 2");
    let health = HealthWatch::start(port);

    let path = format!("/api/v1/apps/{flooded}/invoke/slow");
    let flood = flood(port, "POST", &path, 300);
    // While the flood runs, another app's invoke answers promptly.
    std::thread::sleep(Duration::from_millis(500));
    let threads = proc_status(pid, "Threads");
    let started = Instant::now();
    let (status, body) = http(
        port,
        "POST",
        &format!("/api/v1/apps/{other}/invoke/quick"),
        Some(&key),
        Some("null"),
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!((status, body.as_str()), (200, "42"));
    assert!(
        took < Duration::from_secs(1),
        "the other app waited {took:?}"
    );
    assert!(threads < 64, "{threads} threads during the flood");

    let mut answered = [0usize; 2];
    for response in flood.join().unwrap() {
        let response = response.unwrap();
        match response.status {
            200 => answered[0] += 1,
            503 => {
                answered[1] += 1;
                assert_eq!(
                    error_code(&json(&response.body)),
                    "unavailable",
                    "{}",
                    response.body
                );
                assert_eq!(response.header("retry-after"), Some("1"));
            }
            other => panic!("unexpected {other}: {}", response.body),
        }
    }
    assert!(answered[0] >= 2, "some flood invokes ran: {answered:?}");
    assert!(
        answered[1] > 0,
        "the queue bound refused some: {answered:?}"
    );
    let (_, metrics) = http(port, "GET", "/metrics", None, None).unwrap();
    let rejections = metrics
        .lines()
        .find_map(|l| l.strip_prefix("picloud_script_pool_rejections_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(rejections, answered[1] as u64, "{metrics}");
    assert!(
        metrics.contains("picloud_script_pool_workers 4"),
        "{metrics}"
    );
    let slowest = health.finish();
    assert!(
        slowest < 1000,
        "/healthz took {slowest} ms during the flood (u64::MAX: failed)"
    );
}

#[test]
fn sigterm_exits_0_within_the_grace_period_while_a_script_still_runs() {
    let _serial = serial();
    let (_tmp, data) = data_dir();
    let port = free_port();
    // The script may run a minute; the grace period is 2 s.
    let server = Server::start(
        &data,
        port,
        "grace",
        &[
            ("PICLOUD_SCRIPT_TIMEOUT_MS", "60000"),
            ("PICLOUD_SCRIPT_MAX_OPERATIONS", "1000000000000"),
            ("PICLOUD_SHUTDOWN_GRACE_SECS", "2"),
        ],
    );
    let key = admin_key(&data);
    let app = create_app(port, &key, "busy");
    create_script(
        port,
        &key,
        &app,
        "busy",
        r#"kv::set("m", "busy", true); loop {}"#,
    );
    create_script(port, &key, &app, "peek", r#"kv::get("m", "busy")"#);
    let in_flight = {
        let (key, path) = (key.clone(), format!("/api/v1/apps/{app}/invoke/busy"));
        std::thread::spawn(move || http(port, "POST", &path, Some(&key), Some("null")))
    };
    let peek = format!("/api/v1/apps/{app}/invoke/peek");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "POST", &peek, Some(&key), Some("null")).unwrap() != (200, "true".into()) {
        assert!(Instant::now() < deadline, "the busy script never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    let took = started.elapsed();
    assert_eq!(code, 0, "{logs}");
    assert!(took < Duration::from_secs(15), "exit took {took:?}");
    assert!(
        logs.contains("did not finish within the grace period"),
        "{logs}"
    );
    // The client saw its connection end rather than an answer.
    assert!(!matches!(in_flight.join().unwrap(), Ok((200, _))));
}
