//! The sandbox stops runaway scripts with the right limit, and refuses escapes.

use super::{limit_error, script_error, Harness};
use crate::testing::MemoryKv;
use crate::{RunError, SandboxLimits};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn limits() -> SandboxLimits {
    SandboxLimits::default()
}

#[test]
fn endless_loop_stops_at_the_wall_clock_timeout() {
    let h = Harness::with_limits(SandboxLimits {
        max_operations: 0,
        timeout: Duration::from_millis(200),
        ..limits()
    });
    let started = Instant::now();
    let (limit, message) = limit_error(h.run("loop {}"));
    assert_eq!(limit, "timeout");
    assert_eq!(message, "script exceeded the wall-clock timeout of 200 ms");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn endless_loop_stops_at_max_operations() {
    let h = Harness::with_limits(SandboxLimits {
        max_operations: 10_000,
        ..limits()
    });
    let (limit, message) = limit_error(h.run("let i = 0;\nloop { i += 1; }"));
    assert_eq!(limit, "max_operations");
    assert!(
        message.starts_with("script exceeded the limit of 10000 operations"),
        "{message}"
    );
}

#[test]
fn limits_cannot_be_caught() {
    let h = Harness::with_limits(SandboxLimits {
        max_operations: 10_000,
        ..limits()
    });
    let (limit, _) = limit_error(h.run("try { loop {} } catch (e) { 1 }"));
    assert_eq!(limit, "max_operations");
}

#[test]
fn string_doubling_stops_at_max_string_bytes() {
    let h = Harness::new();
    let (limit, message) = limit_error(h.run(r#"let s = "x"; loop { s += s; }"#));
    assert_eq!(limit, "max_string_bytes");
    assert!(
        message.starts_with("a string exceeded the limit of 1048576 bytes"),
        "{message}"
    );
}

#[test]
fn growing_array_stops_at_max_array_items() {
    let h = Harness::with_limits(SandboxLimits {
        max_array_items: 1000,
        ..limits()
    });
    let (limit, message) = limit_error(h.run("let a = []; loop { a.push(1); }"));
    assert_eq!(limit, "max_array_items");
    assert!(message.contains("1000 items"), "{message}");
}

#[test]
fn growing_map_stops_at_max_map_items() {
    let h = Harness::with_limits(SandboxLimits {
        max_map_items: 100,
        ..limits()
    });
    let (limit, message) = limit_error(h.run(
        "let m = #{}; let i = 0; loop { let one = #{}; one[`k${i}`] = i; m.mixin(one); i += 1; }",
    ));
    assert_eq!(limit, "max_map_items");
    assert!(message.contains("100 entries"), "{message}");
}

/// Rhai checks only the new item of an indexed assignment, not the container:
/// the memory budget is what stops these.
#[test]
fn map_filled_by_index_stops_at_the_memory_budget() {
    let h = Harness::with_memory_budget(32 * 1024 * 1024);
    let started = Instant::now();
    let (limit, message) = limit_error(h.run(
        r#"let s = ""; s.pad(1000000, "x");
           let m = #{}; let i = 0;
           loop { m[`${i}`] = s + "y"; i += 1; }"#,
    ));
    assert_eq!(limit, "max_memory_bytes");
    assert!(
        message.starts_with("script exceeded the memory limit of 33554432 bytes"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn array_filled_by_index_stops_at_the_memory_budget() {
    let h = Harness::with_memory_budget(32 * 1024 * 1024);
    let (limit, _) = limit_error(h.run(
        r#"let s = ""; s.pad(1000000, "x");
           let a = []; a.pad(10000, ());
           for i in 0..10000 { a[i] = s + "y"; }"#,
    ));
    assert_eq!(limit, "max_memory_bytes");
}

#[test]
fn memory_released_during_a_run_does_not_count() {
    let h = Harness::with_memory_budget(32 * 1024 * 1024);
    let out = h
        .run(
            r#"let s = ""; s.pad(1000000, "x");
               let n = 0;
               for i in 0..200 { let t = s + "y"; n += t.len(); }
               n"#,
        )
        .unwrap();
    assert_eq!(out, json!(200 * 1_000_001));
}

#[test]
fn deep_recursion_stops_at_max_call_depth() {
    let h = Harness::with_limits(SandboxLimits {
        max_call_depth: 16,
        ..limits()
    });
    let (limit, message) = limit_error(h.run("fn f(n) { f(n + 1) }\nf(0)"));
    assert_eq!(limit, "max_call_depth");
    assert!(
        message.starts_with("script exceeded the maximum call depth of 16"),
        "{message}"
    );
}

#[test]
fn default_call_depth_is_reachable_without_overflowing_the_stack() {
    // Runs on a spawn_blocking thread like production does, at the default depth of 64.
    let h = Harness::new();
    let executor = h.executor.clone();
    let ctx = h.http(json!(null), Vec::new());
    let result = h
        .runtime
        .block_on(h.runtime.spawn_blocking(move || {
            executor.run(&super::script("fn f(n) { f(n + 1) }\nf(0)"), ctx)
        }))
        .expect("run panicked");
    assert_eq!(limit_error(result).0, "max_call_depth");
}

#[test]
fn eval_is_refused() {
    let h = Harness::new();
    assert!(h.executor.check(r#"eval("1")"#).is_err());
    let message = script_error(h.run(r#"eval("40 + 2")"#));
    assert!(message.starts_with("syntax error"), "{message}");
}

#[test]
fn imports_are_refused() {
    let h = Harness::new();
    let message = script_error(h.run("import \"x\" as y;\ny::f()"));
    assert!(message.starts_with("import is not allowed"), "{message}");
    assert!(message.ends_with("(line 1, column 8)"), "{message}");
}

#[test]
fn sdk_calls_cannot_outlast_the_run_deadline() {
    let kv = MemoryKv::new().with_delay(Duration::from_secs(2));
    let h = Harness::with(
        SandboxLimits {
            timeout: Duration::from_millis(200),
            ..limits()
        },
        kv,
    );
    let started = Instant::now();
    let (limit, _) = limit_error(h.run(r#"try { kv::get("c", "k") } catch (e) { e }"#));
    assert_eq!(limit, "timeout");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Runs `source` on a fresh thread with `stack` bytes of stack, as the pool does.
fn run_on_stack(h: &Harness, source: &str, stack: usize) -> Result<Value, RunError> {
    let (executor, ctx) = (h.executor.clone(), h.http(Value::Null, Vec::new()));
    let source = source.to_owned();
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || executor.run(&crate::tests::script(&source), ctx))
        .expect("thread starts")
        .join()
        .expect("the run does not panic")
}

#[test]
fn closures_nested_up_to_the_memory_budget_fit_the_stack() {
    // Closures nest without any item limit; only the memory budget bounds them.
    // A stack too small for the chain's drop would abort this whole test binary.
    let budget = 16 * 1024 * 1024;
    let h = Harness::with_memory_budget(budget);
    let stack = crate::script_stack_bytes(h.executor.limits(), budget);
    let (limit, _) = limit_error(run_on_stack(
        &h,
        "let f = || 1; loop { let g = f; f = || g.call(); }",
        stack,
    ));
    assert_eq!(limit, "max_memory_bytes");
}

#[test]
fn arrays_and_maps_nested_up_to_the_item_limits_fit_the_stack() {
    // Rhai's size check walks the whole value at every level, so depth costs
    // cubic time; 600 levels keep this test quick.
    let limits = SandboxLimits {
        max_array_items: 600,
        max_map_items: 600,
        ..SandboxLimits::default()
    };
    let h = Harness::with_limits(limits);
    // Exactly what the item limits ask for, without the minimum stack.
    let stack = 1_200 * crate::STACK_BYTES_PER_ITEM;
    let (limit, _) = limit_error(run_on_stack(
        &h,
        "let a = []; loop { a = [#{x: a}]; }",
        stack,
    ));
    assert!(
        ["max_array_items", "max_map_items"].contains(&limit),
        "{limit}"
    );
}

/// A script that runs `call` and answers the kind of what it threw, or "ok".
fn catch_kind(call: &str) -> String {
    format!(r#"let kind = "ok"; try {{ {call}; }} catch (e) {{ kind = e.kind; }} kind"#)
}

/// Limits with a short timeout, for runs that must end by it.
fn short_timeout(ms: u64) -> SandboxLimits {
    SandboxLimits {
        max_operations: 0,
        timeout: Duration::from_millis(ms),
        ..limits()
    }
}

/// Slack allowed past the timeout: watchdog ticks plus one slow operation in a debug build.
const OVERRUN: Duration = Duration::from_millis(400);

fn assert_times_out(h: &Harness, source: &str) {
    let started = Instant::now();
    let (limit, _) = limit_error(h.run(source));
    let took = started.elapsed();
    assert_eq!(limit, "timeout");
    assert!(
        took < h.executor.limits().timeout + OVERRUN,
        "ran {took:?} past a {:?} timeout",
        h.executor.limits().timeout
    );
}

#[test]
fn sleep_is_not_available() {
    let h = Harness::new();
    for source in [
        "sleep(1)",
        "sleep(0.5)",
        "sleep(9223372036854775807)",
        "sleep(1.0e300)",
    ] {
        let message = script_error(h.run(source));
        assert!(
            message.contains("sleep is not available"),
            "{source}: {message}"
        );
    }
}

#[test]
fn a_slow_comparison_cannot_outrun_the_deadline() {
    // Each `a == b` compares 500 pairs of distinct 128 KiB strings inside one
    // Rhai operation; checked every 1,024 operations, this loop overran by seconds.
    // (Method calls such as `a.contains(t)` meet Rhai's own size check of the
    // array first: its strings count against the string limit.)
    let h = Harness::with_limits(short_timeout(2_000));
    let setup = r#"let s = "x"; while s.len() < 131072 { s += s; } let t = "x"; while t.len() < 131072 { t += t; }
        let a = []; a.pad(500, 0); let b = []; b.pad(500, 0);
        for i in 0..500 { a[i] = s; b[i] = t; }"#;
    assert_times_out(&h, &format!("{setup} loop {{ a == b; }}"));
}

#[test]
fn a_comparator_that_never_returns_ends_the_run_at_the_deadline() {
    let h = Harness::with_limits(short_timeout(300));
    assert_times_out(&h, "let a = [3, 1, 2]; a.sort(|x, y| { loop {} }); a");
    assert_times_out(
        &h,
        "let a = []; a.pad(5000, 1); a.sort(|x, y| { let n = 0; while n < 1000 { n += 1; } 0 }); a",
    );
}

#[test]
fn comparator_errors_propagate_and_sorting_still_works() {
    let h = Harness::new();
    let message =
        script_error(h.run(r#"let a = [3, 1, 2]; a.sort(|x, y| throw "bad comparer"); a"#));
    assert!(message.contains("bad comparer"), "{message}");
    let sorted = h
        .run("let a = [3, 1, 2, 1]; a.sort(|x, y| x - y); let b = [5, 4]; b.sort(); [a, b, [2, 1].order(), [1, 2].order(|x, y| y - x)]")
        .unwrap();
    assert_eq!(sorted, json!([[1, 1, 2, 3], [4, 5], [1, 2], [2, 1]]));
    let message = script_error(h.run(r#"let a = [1, "x"]; a.sort(); a"#));
    assert!(message.contains("one type"), "{message}");
    assert_eq!(h.run("[1, [2]] == [1, [2]]").unwrap(), json!(true));
    assert_eq!(h.run("#{a: [1]} != #{a: [2]}").unwrap(), json!(true));
    assert_eq!(h.run(r#"[1, "a", 2.0].index_of("a")"#).unwrap(), json!(1));
    assert_eq!(h.run(r#"2 in [1, 2]"#).unwrap(), json!(true));
}

#[test]
fn replace_refuses_a_result_above_the_string_limit_before_building_it() {
    let h = Harness::new();
    let (limit, _) = limit_error(h.run(
        r#"let big = ""; big.pad(1000000, "x"); let s = ""; s.pad(1000, "a"); s.replace("", big); s"#,
    ));
    assert_eq!(limit, "max_string_bytes");
    assert_eq!(
        h.run(r#"let s = "a-b"; s.replace("-", "+"); s"#).unwrap(),
        json!("a+b")
    );
    assert_eq!(
        h.run(r#"let s = "ab"; s.replace("", "."); s"#).unwrap(),
        json!(".a.b.")
    );
}

/// A map holding one shared 1 MiB string under 40 keys: 1 MiB inside Rhai,
/// 40 MiB as text (the process tests use 3,000 keys: 3 GB).
const SHARED_MAP: &str = r#"let s = "x"; while s.len() < 1048576 { s += s; } let m = #{}; for i in 0..40 { m[`k${i}`] = s; }"#;

#[test]
fn text_of_a_hugely_shared_value_stops_at_the_string_limit() {
    let h = Harness::new();
    for tail in [
        "`${m}`",
        "m.to_string()",
        "print(m); 1",
        "debug([m]); 1",
        "m.to_json()",
    ] {
        let (limit, _) = limit_error(h.run(&format!("{SHARED_MAP} {tail}")));
        assert_eq!(limit, "max_string_bytes", "{tail}");
    }
}

#[test]
fn json_of_a_hugely_shared_value_stops_at_the_value_budget() {
    let h = Harness::new();
    let (limit, message) = limit_error(h.run(&format!("{SHARED_MAP} m")));
    assert_eq!(limit, "max_value_bytes");
    assert!(message.contains("16777216"), "{message}");
    for call in [r#"kv::set("c", "k", m)"#, r#"secrets::set("k", m)"#] {
        let caught = h
            .run(&format!("{SHARED_MAP} {}", catch_kind(call)))
            .unwrap();
        assert_eq!(caught, json!("too_large"), "{call}");
    }
}

#[test]
fn thrown_and_logged_huge_values_are_cut() {
    let h = Harness::new();
    let message = script_error(h.run(&format!("{SHARED_MAP} throw m;")));
    assert!(message.len() < 5_000, "{} bytes", message.len());
    assert_eq!(
        h.run(&format!("{SHARED_MAP} log::info(m); 1")).unwrap(),
        json!(1)
    );
}

#[test]
fn secret_values_never_appear_in_the_error_of_their_run() {
    let h = Harness::new();
    for tail in [
        r#"parse_int(secrets::get("pw"))"#,
        r#"Fn(secrets::get("pw")).call()"#,
        r#"throw secrets::get("pw")"#,
        r#"throw #{kind: "x", message: `no ${secrets::get("pw")}`}"#,
    ] {
        let source = format!(r#"secrets::set("pw", "hunter2-SECRET"); {tail}"#);
        let message = script_error(h.run(&source));
        assert!(!message.contains("hunter2"), "{tail}: {message}");
        assert!(message.contains("[redacted]"), "{tail}: {message}");
    }
}

#[test]
fn secrets_with_control_characters_quotes_or_at_a_cut_stay_hidden() {
    let h = Harness::new();
    // Each secret ends in a marker; no message may show the part before it.
    for (secret, tail) in [
        (r#""line1\nNLSECRET""#, "throw s"),
        (r#""line1\nNLSECRET""#, "parse_int(s)"),
        (r#""tab\there SPSECRET""#, "let m = #{}; m[s] = || 1; m"),
        (r#""ab\"cd\\ef-Q2SECRET""#, "throw [s]"),
        (r#""ab\"cd\\ef-Q2SECRET""#, "throw #{x: s}"),
        (r#""ab\"cd\\ef-Q2SECRET""#, "throw `${[s]}`"),
        (r#""ab\"cd\\ef-Q2SECRET""#, "throw s.to_debug()"),
        (r#""q\"and\nnl-QNSECRET""#, "throw [s]"),
        (r#"#{ZQXWkeyKVJP: true}"#, "throw s"),
        (r#"#{ZQXWkeyKVJP: true}"#, "throw s.keys()"),
        ("[12, 34, 56, 78]", "throw s"),
        ("[12, 34, 56, 78]", "log::info(s); throw #{v: s}.to_json()"),
        (r#""ZQXWe\u0301KVJP""#, "throw s.to_debug()"),
        ("1.5e300", "throw s"),
        // The message is cut at 1,000 characters: the cut must not leave a prefix.
        (
            r#""hunter2-SECRET""#,
            r#"let p = "x"; p.pad(987, "x"); throw p + s"#,
        ),
        (
            r#""hunter2-SECRET""#,
            r#"let p = "x"; p.pad(3995, "x"); throw p + s"#,
        ),
        (
            r#""hunter2-SECRET""#,
            r#"let p = "x"; p.pad(3995, "x"); throw [p + s]"#,
        ),
    ] {
        let source = format!(r#"secrets::set("pw", {secret}); let s = secrets::get("pw"); {tail}"#);
        let message = script_error(h.run(&source));
        let cut = tail.contains("pad(");
        assert!(
            cut || message.contains("[redacted]"),
            "{secret} / {tail}: {message}"
        );
        for shown in [
            "NLSECRET", "SPSECRET", "Q2SECRET", "QNSECRET", "hunter2", "hunter",
        ] {
            assert!(!message.contains(shown), "{secret} / {tail}: {message}");
        }
    }
}

#[test]
fn kv_arguments_with_nul_are_invalid_arguments() {
    let h = Harness::new();
    for call in [
        r#"kv::list("c", "a\x00b")"#,
        r#"kv::list_page("c", "", "a\x00", 10)"#,
        r#"kv::get("c", "a\x00b")"#,
    ] {
        let kind = h.run(&catch_kind(call)).unwrap();
        assert_eq!(kind, json!("invalid_argument"), "{call}");
    }
}

#[test]
fn a_source_that_parses_fast_compiles_fast() {
    // 40,000 shadowing lets: Rhai's optimiser would take tens of seconds on
    // these after parsing, beyond any hook; the engine does not run it.
    let h = Harness::with_limits(SandboxLimits {
        compile_timeout: Duration::from_secs(60),
        ..limits()
    });
    let started = Instant::now();
    assert!(h
        .executor
        .check(&crate::testing::slow_to_compile_source(40_000))
        .is_ok());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_compile_longer_than_the_run_timeout_does_not_fail_the_run_and_is_cached() {
    // Compiling takes ~250 ms in a debug build, past the 100 ms run timeout;
    // the slow part is a function that never runs.
    let h = Harness::with_limits(SandboxLimits {
        timeout: Duration::from_millis(100),
        compile_timeout: Duration::from_secs(60),
        ..limits()
    });
    let source = format!(
        "fn never() {{ {} }}\n42",
        crate::testing::slow_to_compile_source(40_000)
    );
    let script = super::script(&source);
    let first = h.executor.run(&script, h.http(Value::Null, Vec::new()));
    assert_eq!(
        first.unwrap(),
        json!(42),
        "the run's clock starts after its compile"
    );
    let compiled = h.executor.compile_count();
    assert_eq!(
        h.executor
            .run(&script, h.http(Value::Null, Vec::new()))
            .unwrap(),
        json!(42)
    );
    assert_eq!(
        h.executor.compile_count(),
        compiled,
        "the version compiled once and was kept"
    );
}

#[test]
fn compiling_stops_at_its_time_bound() {
    let h = Harness::with_limits(SandboxLimits {
        compile_timeout: Duration::from_millis(50),
        ..limits()
    });
    // About 250 ms of parsing in a debug build.
    let source = crate::testing::slow_to_compile_source(40_000);
    let started = Instant::now();
    let Err(picloud_shared::script::CheckError::Compile(err)) = h.executor.check(&source) else {
        panic!("expected a compile error");
    };
    assert!(
        err.message
            .contains("compiling the script took longer than 50 ms"),
        "{}",
        err.message
    );
    assert!(started.elapsed() < Duration::from_millis(50) + OVERRUN);
    let (limit, _) = limit_error(h.run(&source));
    assert_eq!(limit, "compile_timeout");
}

#[test]
fn sources_above_the_size_limit_are_refused_unread() {
    let h = Harness::with_limits(SandboxLimits {
        max_source_bytes: 100,
        ..limits()
    });
    let source = format!("{}1", " ".repeat(100));
    assert!(matches!(
        h.executor.check(&source),
        Err(picloud_shared::script::CheckError::Refused(
            picloud_shared::ServiceError::TooLarge {
                limit: 100,
                actual: 101
            }
        ))
    ));
    let (limit, _) = limit_error(h.run(&source));
    assert_eq!(limit, "max_source_bytes");
}

#[test]
fn the_ast_cache_stays_within_its_capacity() {
    let h = Harness::new();
    let executor = crate::Executor::new(
        limits(),
        crate::Services {
            kv: h.kv.clone(),
            secrets: std::sync::Arc::new(crate::testing::MemorySecrets::new()),
            pubsub: h.pubsub.clone(),
            email: h.email.clone(),
            realtime: std::sync::Arc::new(crate::testing::MemoryRealtime),
        },
        h.runtime.handle().clone(),
    )
    .with_ast_cache_bytes(CAPACITY);
    const CAPACITY: usize = 4 * 1024 * 1024;
    let source = crate::testing::slow_to_compile_source(2_000);
    for _ in 0..20 {
        let script = super::script(&source);
        let ctx = h.http(Value::Null, Vec::new());
        assert!(executor.run(&script, ctx).is_ok());
        let (_, bytes) = executor.ast_cache_usage();
        assert!(bytes <= CAPACITY, "{bytes} bytes cached");
    }
    let (entries, _) = executor.ast_cache_usage();
    assert!(
        (1..20).contains(&entries),
        "{entries} entries: nothing evicted or nothing cached"
    );
}

#[test]
fn a_run_that_passes_its_deadline_never_succeeds() {
    // The last call swallows the deadline's error (a comparator); the run still fails.
    let h = Harness::with_limits(short_timeout(100));
    let result: Result<Value, RunError> =
        h.run("let a = [2, 1]; a.sort(|x, y| { let n = 0; loop { n += 1; } })");
    assert_eq!(result.unwrap_err().limit(), Some("timeout"));
}
