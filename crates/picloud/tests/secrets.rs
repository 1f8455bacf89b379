//! Secrets through the admin API and through scripts.

mod support;

use axum::http::{Method, StatusCode};
use picloud_manager_core::MIGRATOR;
use serde_json::{json, Value};
use sqlx::PgPool;
use support::{assert_error, TestApp};

#[sqlx::test(migrator = "MIGRATOR")]
async fn admin_api_sets_lists_names_only_and_deletes(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let base = format!("/api/v1/admin/apps/{app}/secrets");
    let (status, set) = t
        .admin(
            Method::POST,
            &base,
            Some(json!({"name": "stripe.key", "value": "sk-marker"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["name"], "stripe.key");
    assert!(
        set["updated_at"].is_string() && set.get("value").is_none(),
        "{set}"
    );
    t.admin(
        Method::POST,
        &base,
        Some(json!({"name": "config", "value": {"a": [1, 2]}})),
    )
    .await;

    let (status, list) = t.admin(Method::GET, &base, None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["config", "stripe.key"]);
    assert!(!list.to_string().contains("sk-marker"), "{list}");
    for item in list.as_array().unwrap() {
        let mut keys: Vec<&String> = item.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["name", "updated_at"]);
    }

    let (status, _) = t
        .admin(Method::DELETE, &format!("{base}/stripe.key"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = t
        .admin(Method::DELETE, &format!("{base}/stripe.key"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let (status, body) = t
        .admin(
            Method::POST,
            &base,
            Some(json!({"name": "bad name", "value": 1})),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    let unknown = uuid::Uuid::new_v4();
    let (status, body) = t
        .admin(
            Method::GET,
            &format!("/api/v1/admin/apps/{unknown}/secrets"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{unknown}/secrets"),
            Some(json!({"name": "x", "value": 1})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn oversized_values_are_refused_with_limit_and_size(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let base = format!("/api/v1/admin/apps/{app}/secrets");
    // A JSON string of 65,535 characters serialises to 65,537 bytes: the cap + 1.
    let value = "x".repeat(64 * 1024 - 1);
    let (status, body) = t
        .admin(
            Method::POST,
            &base,
            Some(json!({"name": "big", "value": value})),
        )
        .await;
    let message = assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(body["error"]["limit"], 65536);
    assert_eq!(body["error"]["actual"], 65537);
    assert!(
        message.contains("65536") && message.contains("65537"),
        "{message}"
    );
    assert!(!message.contains("xxxx"));
    let (_, list) = t.admin(Method::GET, &base, None).await;
    assert_eq!(list, json!([]), "nothing stored");
    let exact = "x".repeat(64 * 1024 - 2);
    let (status, _) = t
        .admin(
            Method::POST,
            &base,
            Some(json!({"name": "edge", "value": exact})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "exactly the cap is accepted");
    // An oversized overwrite leaves the stored value as it was.
    let (status, body) = t
        .admin(
            Method::POST,
            &base,
            Some(json!({"name": "edge", "value": value})),
        )
        .await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");

    t.create_script(
        &app,
        "big",
        r#"
        let caught = ();
        let s = "y";
        while s.len() < 70000 { s += s; }
        try { secrets::set("s", s) } catch (e) { caught = e }
        try { secrets::set("edge", s) } catch (e) { }
        #{ kind: caught.kind, message: caught.message, stored: secrets::get("s"),
           edge_len: secrets::get("edge").len(), names: secrets::list() }
        "#,
        false,
    )
    .await;
    let (status, out) = t.invoke(&app, "big", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["kind"], "too_large", "{out}");
    assert!(out["message"].as_str().unwrap().contains("65536"), "{out}");
    assert_eq!(out["stored"], Value::Null, "nothing stored: {out}");
    assert_eq!(out["edge_len"], 64 * 1024 - 2, "{out}");
    assert_eq!(out["names"], json!(["edge"]), "{out}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn scripts_round_trip_every_type_and_apps_are_isolated(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("a").await;
    let other = t.create_app("b").await;
    let script = r#"
        secrets::set("s", "text");
        secrets::set("i", 7);
        secrets::set("f", 1.25);
        secrets::set("b", true);
        secrets::set("m", #{ user: "u", ports: [1, 2] });
        secrets::set("a", ["x", 2]);
        secrets::set("u", ());
        #{
            u: secrets::get("u"), u_type: type_of(secrets::get("u")),
            s: secrets::get("s"), s_type: type_of(secrets::get("s")),
            i: secrets::get("i"), i_type: type_of(secrets::get("i")),
            f: secrets::get("f"), f_type: type_of(secrets::get("f")),
            b: secrets::get("b"), b_type: type_of(secrets::get("b")),
            m: secrets::get("m"), m_type: type_of(secrets::get("m")),
            a: secrets::get("a"), a_type: type_of(secrets::get("a")),
            missing: secrets::get("nope"),
            names: secrets::list(),
            deleted: secrets::delete("b"),
            deleted_again: secrets::delete("b"),
        }
    "#;
    t.create_script(&app, "sec", script, false).await;
    let (status, out) = t.invoke(&app, "sec", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        out["s"], "text",
        "a string comes back as that string, not quoted JSON"
    );
    assert_eq!(out["s_type"], "string");
    assert_eq!(
        (out["i"].clone(), out["i_type"].clone()),
        (json!(7), json!("i64"))
    );
    assert_eq!(
        (out["f"].clone(), out["f_type"].clone()),
        (json!(1.25), json!("f64"))
    );
    assert_eq!(
        (out["b"].clone(), out["b_type"].clone()),
        (json!(true), json!("bool"))
    );
    assert_eq!(
        (out["m"].clone(), out["m_type"].clone()),
        (json!({"user": "u", "ports": [1, 2]}), json!("map"))
    );
    assert_eq!(
        (out["a"].clone(), out["a_type"].clone()),
        (json!(["x", 2]), json!("array"))
    );
    assert_eq!(out["missing"], Value::Null);
    assert_eq!(
        (out["u"].clone(), out["u_type"].clone()),
        (Value::Null, json!("()"))
    );
    // `()` is stored as null: a set, so the name is listed.
    assert_eq!(out["names"], json!(["a", "b", "f", "i", "m", "s", "u"]));
    assert_eq!(
        (out["deleted"].clone(), out["deleted_again"].clone()),
        (json!(true), json!(false))
    );

    // Set by the admin API, read by a script; invisible to another app.
    t.admin(
        Method::POST,
        &format!("/api/v1/admin/apps/{app}/secrets"),
        Some(json!({"name": "api", "value": "from-admin"})),
    )
    .await;
    t.create_script(&app, "read", r#"secrets::get("api")"#, false)
        .await;
    assert_eq!(
        t.invoke(&app, "read", Value::Null).await.1,
        json!("from-admin")
    );
    t.create_script(
        &other,
        "peek",
        r#"#{ v: secrets::get("api"), names: secrets::list() }"#,
        false,
    )
    .await;
    assert_eq!(
        t.invoke(&other, "peek", Value::Null).await.1,
        json!({"v": null, "names": []})
    );
}
