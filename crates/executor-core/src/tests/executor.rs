//! Results, `ctx`, error reporting, the AST cache and the compile check.

use super::{script, script_error, Harness};
use crate::{Executor, RunContext, RunError, ScriptHandle};
use picloud_shared::script::CheckError;
use serde_json::json;
use std::sync::Arc;

#[test]
fn each_json_type_comes_back() {
    let h = Harness::new();
    assert_eq!(h.run("42").unwrap(), json!(42));
    assert_eq!(h.run("-1.5").unwrap(), json!(-1.5));
    assert_eq!(h.run(r#""héllo""#).unwrap(), json!("héllo"));
    assert_eq!(h.run("true").unwrap(), json!(true));
    assert_eq!(h.run("'c'").unwrap(), json!("c"));
    assert_eq!(
        h.run("[1, 2.5, \"x\", ()]").unwrap(),
        json!([1, 2.5, "x", null])
    );
    assert_eq!(
        h.run("#{a: 1, b: #{c: [true]}, \"with space\": ()}")
            .unwrap(),
        json!({"a": 1, "b": {"c": [true]}, "with space": null})
    );
}

#[test]
fn unit_result_is_null() {
    let h = Harness::new();
    assert_eq!(h.run("let x = 1;").unwrap(), json!(null));
    assert_eq!(h.run("()").unwrap(), json!(null));
    assert_eq!(h.run("").unwrap(), json!(null));
}

#[test]
fn body_in_result_out() {
    let h = Harness::new();
    let out = h
        .run_body("let b = ctx.request.body; b.n + 1", json!({"n": 41}))
        .unwrap();
    assert_eq!(out, json!(42));
    let echoed = h
        .run_body(
            "ctx.request.body",
            json!({"a": [1, {"b": null}], "f": 0.25}),
        )
        .unwrap();
    assert_eq!(echoed, json!({"a": [1, {"b": null}], "f": 0.25}));
}

#[test]
fn ctx_carries_app_script_request_and_event() {
    let h = Harness::new();
    let handle = script(
        "#{app: ctx.app_id, id: ctx.script.id, name: ctx.script.name,
           headers: ctx.request.headers, event: ctx.event}",
    );
    let headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("AUTHORIZATION".to_string(), "Bearer pk_secret".to_string()),
        ("Proxy-Authorization".to_string(), "Basic x".to_string()),
        ("cookie".to_string(), "session=1".to_string()),
        ("X-Tag".to_string(), "a".to_string()),
        ("x-tag".to_string(), "b".to_string()),
    ];
    let out = h
        .executor
        .run(&handle, h.http(json!(null), headers))
        .unwrap();
    assert_eq!(
        out,
        json!({
            "app": h.app.to_string(),
            "id": handle.id.to_string(),
            "name": "test-script",
            "headers": {"content-type": "application/json", "x-tag": "a, b"},
            "event": null,
        })
    );
}

#[test]
fn trigger_runs_see_the_event_and_no_request() {
    let h = Harness::new();
    let ctx = RunContext {
        app_id: h.app,
        trigger: "kv",
        request: None,
        event: Some(json!({"kind": "kv", "collection": "users", "key": "k"})),
        trigger_depth: 1,
        origin_principal: None,
        chain_id: Some(1),
    };
    let out = h
        .executor
        .run(
            &script("[ctx.request == (), ctx.event.kind, ctx.event.key]"),
            ctx,
        )
        .unwrap();
    assert_eq!(out, json!([true, "kv", "k"]));
}

#[test]
fn thrown_string_is_a_script_error_with_position() {
    let h = Harness::new();
    let message = script_error(h.run("let x = 1;\n  throw \"boom\";"));
    assert_eq!(message, "boom (line 2, column 3)");
}

#[test]
fn thrown_kind_message_map_reads_kind_colon_message() {
    let h = Harness::new();
    let message = script_error(h.run(r#"throw #{kind: "not_allowed", message: "nope"}"#));
    assert_eq!(message, "not_allowed: nope (line 1, column 1)");
}

#[test]
fn errors_inside_functions_are_one_line_with_the_inner_position() {
    let h = Harness::new();
    let message = script_error(h.run("fn f(x) {\n    x.missing_method()\n}\nf(1)"));
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains("missing_method"), "{message}");
    assert!(message.ends_with("(line 2, column 7)"), "{message}");
}

#[test]
fn runtime_errors_are_script_errors() {
    let h = Harness::new();
    let message = script_error(h.run("let a = [1]; a[5]"));
    assert!(message.contains("out of bounds"), "{message}");
    let message = script_error(h.run("undefined_variable + 1"));
    assert!(message.contains("undefined_variable"), "{message}");
}

#[test]
fn results_without_a_json_form_are_script_errors() {
    let h = Harness::new();
    let message = script_error(h.run("#{f: || 1}"));
    assert_eq!(
        message,
        "cannot convert the result to JSON: result.f is a function pointer, which has no JSON form"
    );
    let message = script_error(h.run("[0.0 / 0.0]"));
    assert!(message.contains("result[0] is the float NaN"), "{message}");
    let message = script_error(h.run("1.0 / 0.0"));
    assert!(message.contains("inf"), "{message}");
}

#[test]
fn compile_errors_carry_line_and_column() {
    let h = Harness::new();
    let Err(CheckError::Compile(err)) = h.executor.check("let a = 1;\nlet b = ;") else {
        panic!("expected a compile error");
    };
    assert_eq!((err.line, err.column), (2, 9));
    assert!(!err.message.is_empty());
    assert!(h.executor.check("let a = 1; a + 1").is_ok());

    let message = script_error(h.run("let a = 1;\nlet b = ;"));
    assert!(message.starts_with("syntax error: "), "{message}");
    assert!(message.ends_with("(line 2, column 9)"), "{message}");
}

#[test]
fn cache_reuses_an_ast_per_version() {
    let h = Harness::new();
    let ctx = || h.http(json!(null), Vec::new());
    let v1 = script("1");
    assert_eq!(h.executor.run(&v1, ctx()).unwrap(), json!(1));
    assert_eq!(h.executor.run(&v1, ctx()).unwrap(), json!(1));
    assert_eq!(h.executor.compile_count(), 1);

    let v2 = ScriptHandle {
        version: 2,
        source: "2".into(),
        ..v1.clone()
    };
    assert_eq!(h.executor.run(&v2, ctx()).unwrap(), json!(2));
    assert_eq!(h.executor.run(&v2, ctx()).unwrap(), json!(2));
    assert_eq!(h.executor.compile_count(), 2);

    // A late run of the old version compiles it but does not evict the newer one.
    assert_eq!(h.executor.run(&v1, ctx()).unwrap(), json!(1));
    assert_eq!(h.executor.run(&v2, ctx()).unwrap(), json!(2));
    assert_eq!(h.executor.compile_count(), 3);

    h.executor.invalidate(v2.id);
    assert_eq!(h.executor.run(&v2, ctx()).unwrap(), json!(2));
    assert_eq!(h.executor.compile_count(), 4);
}

#[test]
fn scripts_that_fail_to_compile_are_not_cached() {
    let h = Harness::new();
    let broken = script("let = 1");
    let ctx = || h.http(json!(null), Vec::new());
    script_error(h.executor.run(&broken, ctx()));
    script_error(h.executor.run(&broken, ctx()));
    assert_eq!(h.executor.compile_count(), 2);
}

#[test]
fn runs_in_parallel_from_blocking_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Executor>();

    let h = Harness::new();
    let handle = Arc::new(script(
        "let n = ctx.request.body.n; kv::set(\"c\", `k${n}`, n); kv::get(\"c\", `k${n}`) * 2",
    ));
    let results: Vec<Result<serde_json::Value, RunError>> = h.runtime.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|n| {
                let executor = h.executor.clone();
                let handle = handle.clone();
                let ctx = h.http(json!({ "n": n }), Vec::new());
                tokio::task::spawn_blocking(move || executor.run(&handle, ctx))
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.expect("run panicked"));
        }
        out
    });
    for (n, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), json!(n * 2));
    }
}

#[test]
fn log_and_print_do_not_fail() {
    let h = Harness::new();
    let out = h
        .run(r#"log::info("hello"); log::warn(42); log::error(#{a: 1}); print("p"); debug("d"); 1"#)
        .unwrap();
    assert_eq!(out, json!(1));
}

#[test]
fn exit_and_return_end_the_script_with_their_value() {
    let h = Harness::new();
    assert_eq!(h.run("exit(7); 1").unwrap(), json!(7));
    assert_eq!(h.run("return #{ok: true}; 1").unwrap(), json!({"ok": true}));
}

#[test]
fn a_checked_source_is_not_compiled_again_by_its_first_run() {
    let h = Harness::new();
    let source = "let x = 20; x * 2 + 2";
    assert!(h.executor.check(source).is_ok());
    let before = h.executor.compile_count();
    assert_eq!(h.run(source).unwrap(), serde_json::json!(42));
    assert_eq!(
        h.executor.compile_count(),
        before,
        "the run reused the check's AST"
    );
    assert_eq!(h.run(source).unwrap(), serde_json::json!(42));
    assert_eq!(
        h.executor.compile_count(),
        before + 1,
        "a fresh script id compiles"
    );
}

#[test]
fn sdk_calls_carry_the_runs_depth_and_origin_to_the_services() {
    let h = Harness::new();
    let principal = uuid::Uuid::new_v4();
    let ctx = RunContext {
        app_id: h.app,
        trigger: "pubsub",
        request: None,
        event: Some(json!({"kind": "pubsub", "topic": "t", "message": 1})),
        trigger_depth: 3,
        origin_principal: Some(principal),
        chain_id: Some(42),
    };
    h.executor
        .run(&script(r#"pubsub::publish("orders.new", #{ id: 7 })"#), ctx)
        .unwrap();
    h.run(r#"pubsub::publish("plain", [1, 2])"#).unwrap();
    let published = h.pubsub.published();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].topic, "orders.new");
    assert_eq!(published[0].message, json!({"id": 7}));
    assert_eq!(published[0].ctx.app_id, h.app);
    assert_eq!(published[0].ctx.trigger_depth, 3);
    assert_eq!(published[0].ctx.origin_principal, Some(principal));
    assert_eq!(published[0].ctx.chain_id, Some(42));
    assert_eq!(published[1].ctx.trigger_depth, 0, "an HTTP run is depth 0");
    assert_eq!(published[1].ctx.origin_principal, None);
    assert_eq!(published[1].ctx.chain_id, None, "an HTTP run starts chains");

    let err = h.run(r#"pubsub::publish("a..b", 1)"#).unwrap_err();
    assert!(err.to_string().contains("topic"), "{err}");
    let caught = h
        .run(r#"let e = (); try { pubsub::publish("", 1) } catch (x) { e = x } e.kind"#)
        .unwrap();
    assert_eq!(caught, json!("invalid_argument"));
}
