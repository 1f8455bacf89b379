//! The `kv::` bridge: round trips through the fake, paging, and catchable errors.

use super::{script_error, Harness};
use crate::testing::MemoryKv;
use crate::SandboxLimits;
use serde_json::json;
use std::time::Duration;

#[test]
fn set_get_delete_round_trip() {
    let h = Harness::new();
    let out = h
        .run(
            r#"
            kv::set("users", "u1", #{name: "Ada", tags: ["x"], n: 1.5});
            kv::set("users", "nothing", ());
            let got = kv::get("users", "u1");
            let missing = kv::get("users", "nope");
            let stored_null = kv::get("users", "nothing");
            let deleted = kv::delete("users", "u1");
            let deleted_again = kv::delete("users", "u1");
            #{got: got, missing: missing, stored_null: stored_null,
              deleted: deleted, deleted_again: deleted_again, after: kv::get("users", "u1")}
            "#,
        )
        .unwrap();
    assert_eq!(
        out,
        json!({
            "got": {"name": "Ada", "tags": ["x"], "n": 1.5},
            "missing": null, "stored_null": null,
            "deleted": true, "deleted_again": false, "after": null
        })
    );
    assert_eq!(h.kv.peek(h.app, "users", "nothing"), Some(json!(null)));
}

#[test]
fn list_and_list_page() {
    let h = Harness::new();
    let out = h
        .run(
            r#"
            for k in ["b2", "a1", "b1", "b3", "c"] { kv::set("items", k, 1); }
            let all = kv::list("items");
            let b = kv::list("items", "b");
            let pages = [];
            let after = ();
            loop {
                let page = kv::list_page("items", "b", after, 2);
                pages.push(page.keys);
                if page.next == () { break; }
                after = page.next;
            }
            #{all: all, b: b, pages: pages, empty: kv::list("nothing-here")}
            "#,
        )
        .unwrap();
    assert_eq!(
        out,
        json!({
            "all": ["a1", "b1", "b2", "b3", "c"],
            "b": ["b1", "b2", "b3"],
            "pages": [["b1", "b2"], ["b3"]],
            "empty": [],
        })
    );
}

#[test]
fn list_returns_at_most_1000_keys() {
    let h = Harness::new();
    let out = h
        .run(
            r#"
            for i in 0..1005 { kv::set("many", `k${i}`, i); }
            let page = kv::list_page("many", "", (), 5000);
            [kv::list("many").len(), page.keys.len(), page.next]
            "#,
        )
        .unwrap();
    assert_eq!(out[0], json!(1000));
    assert_eq!(out[1], json!(1000));
    assert!(out[2].is_string());
}

#[test]
fn keys_belong_to_the_running_app() {
    let h = Harness::new();
    h.run(r#"kv::set("c", "k", 1)"#).unwrap();
    let other = crate::RunContext {
        app_id: picloud_shared::ids::AppId::new(),
        ..h.http(json!(null), Vec::new())
    };
    let out = h
        .executor
        .run(&super::script(r#"kv::get("c", "k")"#), other)
        .unwrap();
    assert_eq!(out, json!(null));
}

#[test]
fn caught_service_error_is_a_kind_message_map() {
    let h = Harness::new();
    let out = h
        .run(
            r#"
            let caught = ();
            try { kv::set("bad/name", "k", 1); } catch (e) { caught = e; }
            caught
            "#,
        )
        .unwrap();
    assert_eq!(out["kind"], json!("invalid_argument"));
    assert_eq!(
        out["message"],
        json!("collection name must be 1-128 characters of A-Z, a-z, 0-9, '_', '.' or '-'")
    );
}

#[test]
fn wrong_argument_types_are_invalid_argument() {
    let h = Harness::new();
    let out = h
        .run(
            r#"
            let errors = [];
            try { kv::get(1, "k"); } catch (e) { errors.push(e); }
            try { kv::set("c", "k", || 1); } catch (e) { errors.push(e); }
            try { kv::list_page("c", "", 5, 10); } catch (e) { errors.push(e); }
            try { kv::list_page("c", "", (), 0); } catch (e) { errors.push(e); }
            try { kv::list_page("c", "", (), "10"); } catch (e) { errors.push(e); }
            errors
            "#,
        )
        .unwrap();
    let errors = out.as_array().unwrap();
    assert_eq!(errors.len(), 5);
    assert!(errors
        .iter()
        .all(|e| e["kind"] == json!("invalid_argument")));
    assert_eq!(
        errors[0]["message"],
        json!("kv::get: collection must be a string, got i64")
    );
    assert_eq!(
        errors[1]["message"],
        json!("kv::set: value is a function pointer, which has no JSON form")
    );
    assert_eq!(
        errors[2]["message"],
        json!("kv::list_page: after must be a string or (), got i64")
    );
    assert_eq!(
        errors[3]["message"],
        json!("kv::list_page: limit must be at least 1")
    );
    assert_eq!(
        errors[4]["message"],
        json!("kv::list_page: limit must be an integer, got string")
    );
}

#[test]
fn too_large_values_are_too_large() {
    let h = Harness::with(
        SandboxLimits::default(),
        MemoryKv::new().with_max_value_bytes(16),
    );
    let out = h
        .run(r#"let c = (); try { kv::set("c", "k", "a long enough string") } catch (e) { c = e; } c"#)
        .unwrap();
    assert_eq!(out["kind"], json!("too_large"));
}

#[test]
fn uncaught_service_error_is_a_script_error() {
    let h = Harness::new();
    let message = script_error(h.run("\nkv::get(\"c\", \"\")"));
    assert_eq!(
        message,
        "invalid_argument: kv key must be 1-512 bytes of UTF-8 (line 2, column 5)"
    );
}

#[test]
fn writes_before_a_throw_are_kept() {
    let h = Harness::new();
    script_error(h.run(r#"kv::set("c", "k", 7); throw "after the write""#));
    assert_eq!(h.kv.peek(h.app, "c", "k"), Some(json!(7)));
}

#[test]
fn slow_service_calls_time_out_as_unavailable() {
    let h = Harness::with(
        SandboxLimits {
            sdk_timeout: Duration::from_millis(50),
            ..SandboxLimits::default()
        },
        MemoryKv::new().with_delay(Duration::from_millis(500)),
    );
    let out = h
        .run(r#"let c = (); try { kv::get("c", "k") } catch (e) { c = e; } c"#)
        .unwrap();
    assert_eq!(
        out,
        json!({"kind": "unavailable", "message": "kv::get got no answer within 112 ms; its outcome is unknown (a write may still take effect)"})
    );
}
