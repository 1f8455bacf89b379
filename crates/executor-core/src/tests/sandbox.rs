//! The sandbox stops runaway scripts with the right limit, and refuses escapes.

use super::{limit_error, script_error, Harness};
use crate::testing::MemoryKv;
use crate::SandboxLimits;
use picloud_shared::script::ScriptCompiler;
use serde_json::json;
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
