//! Inbound email to one trigger's URL over real HTTP routing and PostgreSQL:
//! signatures (by hand and by the Standard Webhooks reference library),
//! bodies, deduplication, limits, and the handler that runs.

mod support;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use base64::Engine;
use hmac::{Hmac, Mac};
use picloud_manager_core::MIGRATOR;
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;
use std::time::Duration;
use support::{assert_error, eventually, test_config, TestApp};

const SECRET: &str = "inbound-secret-0123456789";

fn inbound(trigger: &str) -> String {
    format!("/api/v1/email-inbound/{trigger}")
}

/// Registers an email trigger on a handler that stores what it got.
async fn email_trigger(t: &TestApp, app: &str, secret: Option<&str>) -> String {
    let name = format!("on-mail-{}", uuid::Uuid::new_v4().simple());
    let script = t
        .create_script(
            app,
            &name,
            r#"kv::set("mail", "last", ctx.event.email)"#,
            false,
        )
        .await;
    let mut config = json!({});
    if let Some(secret) = secret {
        config["inbound_secret"] = json!(secret);
    }
    let (status, trigger) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/triggers"),
            Some(json!({"kind": "email", "script_id": script, "config": config})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{trigger}");
    assert_eq!(trigger["signed"], secret.is_some());
    trigger["id"].as_str().unwrap().to_owned()
}

fn picloud_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Standard Webhooks signature of `body`, made by the reference library
/// (`tests/inbound/sign.py`; `scripts/test.sh` installs it).
fn reference_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let python = std::env::var("PICLOUD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("PICLOUD_TEST_PYTHON is not set: the inbound tests need the Python tools ./scripts/test.sh installs")
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/inbound/sign.py");
    let mut child = std::process::Command::new(python)
        .args([script, secret, id, &timestamp.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the reference signer");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference signer failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn post(
    t: &TestApp,
    trigger: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(inbound(trigger))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let (status, bytes) = t
        .send(request.body(Body::from(body.to_vec())).unwrap())
        .await;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, value)
}

async fn outbox_count(pool: &PgPool, trigger: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE trigger_id = $1::uuid")
        .bind(trigger)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// What a handler stored under `collection`/`key` of `app`, once it has run.
async fn handled(what: &str, pool: &PgPool, app: &str, collection: &str, key: &str) -> Value {
    eventually(what, Duration::from_secs(30), || async {
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
    })
    .await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_signed_email_runs_its_handler_with_the_email(pool: PgPool) {
    let r = TestApp::running(pool.clone(), test_config()).await;
    let t = &r.app;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(t, &app, Some(SECRET)).await;
    let body = br#"{"from":"Ann <ann@example.com>","to":["support+billing@example.org"],
        "cc":["cat@example.org"],"subject":"Help","text":"It broke.","message_id":"<m1@example.com>",
        "attachments":[{"filename":"log.txt","content_type":"text/plain","content":"aGVsbG8="}]}"#;
    let (status, accepted) = post(
        t,
        &trigger,
        body,
        &[("x-picloud-signature", picloud_signature(SECRET, body))],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert!(accepted["event_id"].is_i64(), "{accepted}");
    let email = handled("the handler", &pool, &app, "mail", "last").await;
    assert_eq!(email["from"], "Ann <ann@example.com>");
    assert_eq!(email["to"], json!(["support+billing@example.org"]));
    assert_eq!(email["cc"], json!(["cat@example.org"]));
    assert_eq!(email["subject"], "Help");
    assert_eq!(email["text"], "It broke.");
    assert_eq!(email["message_id"], "<m1@example.com>");
    assert_eq!(email["tag"], "billing");
    assert!(
        email["received_at"].as_str().unwrap().ends_with('Z'),
        "{email}"
    );
    assert_eq!(
        email["attachments"],
        json!([{"filename": "log.txt", "content_type": "text/plain", "size": 5,
                "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}])
    );
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn standard_webhooks_signatures_from_the_reference_library_are_accepted(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef0123456789abcdef")
    );
    let trigger = email_trigger(&t, &app, Some(&secret)).await;
    let body = br#"{"from":"ann@example.com","subject":"hi"}"#;
    let ts = now();
    let signature = reference_signature(&secret, "msg_1", ts, body);
    let headers = |id: &str, ts: i64, sig: &str| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig.to_owned()),
        ]
    };
    let (status, first) = post(&t, &trigger, body, &headers("msg_1", ts, &signature)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    // The provider's retry inside the window is a duplicate: the first event, nothing enqueued.
    let (status, again) = post(&t, &trigger, body, &headers("msg_1", ts, &signature)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(outbox_count(&pool, &trigger).await, 1);
    // Several signatures, one of them right, pass.
    let ts2 = now();
    let right = reference_signature(&secret, "msg_2", ts2, body);
    let (status, _) = post(
        &t,
        &trigger,
        body,
        &headers("msg_2", ts2, &format!("v1,d3Jvbmc= {right}")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Stale, empty, truncated, or signed for another id: 401, nothing enqueued.
    let stale_ts = now() - 600;
    let stale = reference_signature(&secret, "msg_3", stale_ts, body);
    let fresh = reference_signature(&secret, "msg_4", now(), body);
    for (id, ts, sig) in [
        ("msg_3", stale_ts, stale.clone()),
        ("msg_4", now(), "v1,".to_owned()),
        ("msg_4", now(), fresh[..fresh.len() - 8].to_owned()),
        ("msg_5", now(), fresh.clone()),
    ] {
        let (status, resp) = post(&t, &trigger, body, &headers(id, ts, &sig)).await;
        assert_error(status, &resp, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(outbox_count(&pool, &trigger).await, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unsigned_or_wrongly_signed_requests_are_401_and_enqueue_nothing(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, Some(SECRET)).await;
    let body = br#"{"from":"ann@example.com"}"#;
    let good = picloud_signature(SECRET, body);
    for headers in [
        vec![],
        vec![("x-picloud-signature", "sha256=".to_owned())],
        vec![("x-picloud-signature", good[..good.len() - 2].to_owned())],
        vec![(
            "x-picloud-signature",
            picloud_signature("another-secret-value", body),
        )],
        vec![(
            "x-picloud-signature",
            picloud_signature(SECRET, b"other body"),
        )],
        vec![("webhook-signature", "v1,abc".to_owned())],
    ] {
        let (status, resp) = post(&t, &trigger, body, &headers).await;
        let message = assert_error(status, &resp, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(
            !message.contains(SECRET) && !message.contains("sha256=0"),
            "{message}"
        );
    }
    assert_eq!(outbox_count(&pool, &trigger).await, 0);
    // Without a secret any POST is accepted, as the trigger says (signed: false).
    let open = email_trigger(&t, &app, None).await;
    let (status, _) = post(&t, &open, body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_secret_the_server_cannot_open_fails_closed(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, Some(SECRET)).await;
    // The same database served with another master key.
    let other = TestApp::with_keyring(pool.clone(), test_config(), support::test_keyring()).await;
    let body = br#"{"from":"ann@example.com"}"#;
    let (status, resp) = post(
        &other,
        &trigger,
        body,
        &[("x-picloud-signature", picloud_signature(SECRET, body))],
    )
    .await;
    assert_error(status, &resp, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(outbox_count(&pool, &trigger).await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn copies_arriving_at_once_enqueue_one_event(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, None).await;
    let body = br#"{"from":"ann@example.com","message_id":"<same@example.com>"}"#;
    let answers =
        futures_util::future::join_all((0..6).map(|_| post(&t, &trigger, body, &[]))).await;
    let accepted = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 1, "{answers:?}");
    assert!(answers.iter().all(
        |(s, b)| (*s == StatusCode::ACCEPTED || *s == StatusCode::OK)
            && b["event_id"] == answers[0].1["event_id"]
    ));
    assert_eq!(outbox_count(&pool, &trigger).await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_requests_are_answered_with_their_status(pool: PgPool) {
    let mut config = test_config();
    config.inbound_max_bytes = 4096;
    let t = TestApp::with_config(pool.clone(), config).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, None).await;
    for (body, expected) in [
        (&b"{not json"[..], "not JSON"),
        (br#"{"to":["a@b.co"]}"#, "from is required"),
        (br#"{"from":"a@b.co","to":"a@b.co"}"#, "wrong type"),
    ] {
        let (status, resp) = post(&t, &trigger, body, &[]).await;
        let message = assert_error(status, &resp, StatusCode::BAD_REQUEST, "bad_request");
        assert!(message.contains(expected), "{message}");
    }
    let big = format!(r#"{{"from":"a@b.co","text":"{}"}}"#, "x".repeat(5000));
    let (status, resp) = post(&t, &trigger, big.as_bytes(), &[]).await;
    assert_error(status, &resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    // Unknown ids, and triggers of another kind, are 404.
    let (status, resp) = post(&t, &uuid::Uuid::new_v4().to_string(), b"{}", &[]).await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
    let script = t.create_script(&app, "cron", "1", false).await;
    let (_, cron) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/triggers"),
            Some(json!({"kind": "cron", "script_id": script, "config": {"schedule": "0 3 * * *"}})),
        )
        .await;
    let (status, resp) = post(&t, cron["id"].as_str().unwrap(), b"{}", &[]).await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(outbox_count(&pool, &trigger).await, 0);
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap();
    for line in [
        r#"picloud_inbound_requests_total{result="malformed"} 3"#,
        r#"picloud_inbound_requests_total{result="too_large"} 1"#,
        r#"picloud_inbound_requests_total{result="not_found"} 2"#,
        r#"picloud_inbound_requests_total{result="accepted"} 0"#,
        r#"picloud_inbound_requests_total{result="rate_limited"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn raw_mime_arrives_with_its_attachment_as_metadata(pool: PgPool) {
    let r = TestApp::running(pool.clone(), test_config()).await;
    let t = &r.app;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(t, &app, Some(SECRET)).await;
    let raw = b"From: Ann <ann@example.com>\r\nTo: support@example.org\r\nSubject: Logs\r\n\
Message-ID: <mime1@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"x.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n";
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(inbound(&trigger))
        .header("content-type", "message/rfc822")
        .header("x-picloud-signature", picloud_signature(SECRET, raw));
    request = request.header("content-length", raw.len());
    let (status, _) = t
        .send(request.body(Body::from(raw.to_vec())).unwrap())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let email = handled("the handler", &pool, &app, "mail", "last").await;
    assert_eq!(email["from"], "Ann <ann@example.com>");
    assert_eq!(email["subject"], "Logs");
    assert_eq!(email["message_id"], "<mime1@example.com>");
    assert_eq!(email["attachments"][0]["filename"], "x.bin");
    assert_eq!(email["attachments"][0]["size"], 5);
    // MIME without a sender, or without headers, is 400.
    for bad in [&b"Subject: anonymous\r\n\r\nhi"[..], b"just some text"] {
        let request = Request::builder()
            .method(Method::POST)
            .uri(inbound(&trigger))
            .header("content-type", "message/rfc822")
            .header("x-picloud-signature", picloud_signature(SECRET, bad))
            .body(Body::from(bad.to_vec()))
            .unwrap();
        let (status, _) = t.send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_url_over_its_rate_is_429_with_retry_after(pool: PgPool) {
    let mut config = test_config();
    // 5 a minute, so the burst is 5 too.
    config.inbound_rate_per_min = 5;
    let t = TestApp::with_config(pool.clone(), config).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, None).await;
    let other = email_trigger(&t, &app, None).await;
    let body = br#"{"from":"ann@example.com"}"#;
    for _ in 0..5 {
        assert_eq!(post(&t, &trigger, body, &[]).await.0, StatusCode::ACCEPTED);
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri(inbound(&trigger))
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let response = tower::ServiceExt::oneshot(t.router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    assert_eq!(
        outbox_count(&pool, &trigger).await,
        5,
        "nothing enqueued past the rate"
    );
    // Another URL has its own rate.
    assert_eq!(post(&t, &other, body, &[]).await.0, StatusCode::ACCEPTED);
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains(r#"picloud_inbound_requests_total{result="rate_limited"} 1"#));
}

/// An email trigger of `app` with `recipient_filter`, whose handler stores
/// the email under its own name.
async fn routed_trigger(t: &TestApp, app: &str, name: &str, filter: Option<&str>) -> String {
    let source = format!(r#"kv::set("routed", "{name}", ctx.event.email)"#);
    let script = t.create_script(app, name, &source, false).await;
    let config = match filter {
        Some(filter) => json!({"recipient_filter": filter}),
        None => json!({}),
    };
    let (status, trigger) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/triggers"),
            Some(json!({"kind": "email", "script_id": script, "config": config})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{trigger}");
    trigger["id"].as_str().unwrap().to_owned()
}

async fn post_to_app(
    t: &TestApp,
    app: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/apps/{app}/email-inbound"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let (status, bytes) = t
        .send(request.body(Body::from(body.to_vec())).unwrap())
        .await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_app_endpoint_routes_by_recipient_and_passes_the_tag(pool: PgPool) {
    let r = TestApp::running(pool.clone(), test_config()).await;
    let t = &r.app;
    let app = t.create_app("mail").await;
    routed_trigger(t, &app, "support", Some("support")).await;
    routed_trigger(t, &app, "orders", Some("or-0x*")).await;
    routed_trigger(t, &app, "other-domain", Some("@elsewhere.io")).await;
    // The endpoint is signed with the app's secret.
    let endpoint = format!("/api/v1/admin/apps/{app}/email-inbound");
    let (status, unsigned) = t.admin(Method::GET, &endpoint, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(unsigned["signed"], false);
    assert!(unsigned["inbound_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/api/v1/apps/{app}/email-inbound")));
    let (status, signed) = t
        .admin(Method::PUT, &endpoint, Some(json!({"secret": SECRET})))
        .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    assert_eq!(signed["signed"], true);
    assert!(!signed.to_string().contains(SECRET), "write-only");

    let body =
        br#"{"from":"ann@example.com","to":["Support+Billing@example.org"],"subject":"invoice"}"#;
    let (status, resp) = post_to_app(t, &app, body, &[]).await;
    assert_error(status, &resp, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, routed) = post_to_app(
        t,
        &app,
        body,
        &[("x-picloud-signature", picloud_signature(SECRET, body))],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{routed}");
    assert_eq!(
        routed["event_ids"].as_array().unwrap().len(),
        1,
        "only support"
    );
    let email = handled("the support handler", &pool, &app, "routed", "support").await;
    assert_eq!(email["tag"], "billing");

    // No trigger matches: 202 with no events, counted as unrouted.
    let nobody = br#"{"from":"ann@example.com","to":["sales@example.org"]}"#;
    let (status, routed) = post_to_app(
        t,
        &app,
        nobody,
        &[("x-picloud-signature", picloud_signature(SECRET, nobody))],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(routed, json!({"event_ids": []}));
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains(r#"picloud_inbound_requests_total{result="unrouted"} 1"#));
    // Unknown apps are 404; a bad secret is 422 and changes nothing.
    let (status, resp) = post_to_app(t, &uuid::Uuid::new_v4().to_string(), body, &[]).await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
    let (status, resp) = t
        .admin(Method::PUT, &endpoint, Some(json!({"secret": "short"})))
        .await;
    assert_error(
        status,
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    let (_, still) = t.admin(Method::GET, &endpoint, None).await;
    assert_eq!(still["signed"], true);
    // null makes it unsigned again.
    let (_, open) = t
        .admin(Method::PUT, &endpoint, Some(json!({"secret": null})))
        .await;
    assert_eq!(open["signed"], false);
    r.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_unsigned_app_endpoint_does_not_reach_triggers_with_their_own_secret(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let signed = email_trigger(&t, &app, Some(SECRET)).await;
    let open = email_trigger(&t, &app, None).await;
    let body = br#"{"from":"a@b.co","to":["x@y.io"]}"#;
    let (status, routed) = post_to_app(&t, &app, body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{routed}");
    assert_eq!(routed["event_ids"].as_array().unwrap().len(), 1);
    assert_eq!(outbox_count(&pool, &signed).await, 0, "its secret holds");
    assert_eq!(outbox_count(&pool, &open).await, 1);
    // With the app's endpoint signed, a verified request reaches both.
    let (status, _) = t
        .admin(
            Method::PUT,
            &format!("/api/v1/admin/apps/{app}/email-inbound"),
            Some(json!({"secret": "the-app-secret-0123456789"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = br#"{"from":"a@b.co","to":["x@y.io"],"subject":"second"}"#;
    let (status, routed) = post_to_app(
        &t,
        &app,
        body,
        &[(
            "x-picloud-signature",
            picloud_signature("the-app-secret-0123456789", body),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{routed}");
    assert_eq!(routed["event_ids"].as_array().unwrap().len(), 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_long_message_id_is_deduplicated_not_refused(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, None).await;
    let body = json!({"from": "a@b.co", "message_id": "x".repeat(5000)}).to_string();
    let (status, first) = post(&t, &trigger, body.as_bytes(), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = post(&t, &trigger, body.as_bytes(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(outbox_count(&pool, &trigger).await, 1);
}

/// Replaces trigger `trigger`'s sealed inbound secret behind the server's back
/// (as `keys rotate` re-seals it, or another process's change).
async fn reseal(
    keyring: &picloud_shared::crypto::Keyring,
    pool: &PgPool,
    trigger: &str,
    secret: &str,
) {
    use picloud_shared::crypto::Aad;
    let trigger_id = uuid::Uuid::parse_str(trigger).unwrap();
    let sealed = keyring
        .seal(secret.as_bytes(), &Aad::Inbound { trigger_id })
        .unwrap();
    sqlx::query(
        "UPDATE triggers SET inbound_key_id = $2, inbound_nonce = $3, inbound_ciphertext = $4 \
         WHERE id = $1",
    )
    .bind(trigger_id)
    .bind(sealed.key_id.to_hex())
    .bind(sealed.nonce.to_vec())
    .bind(sealed.ciphertext.clone())
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_remembered_trigger_is_checked_again_when_its_secret_changes(pool: PgPool) {
    let keyring = support::test_keyring();
    let t = TestApp::with_keyring(pool.clone(), test_config(), keyring.clone()).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, Some(SECRET)).await;
    let body = br#"{"from":"ann@example.com"}"#;
    let signed_with = |secret: &str| [("x-picloud-signature", picloud_signature(secret, body))];
    // The first request makes the server remember the trigger and its secret.
    let (status, resp) = post(&t, &trigger, body, &signed_with(SECRET)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    const NEW_SECRET: &str = "the-next-inbound-secret-42";
    reseal(&keyring, &pool, &trigger, NEW_SECRET).await;
    let (status, resp) = post(&t, &trigger, body, &signed_with(SECRET)).await;
    assert_error(status, &resp, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(outbox_count(&pool, &trigger).await, 1);
    let (status, resp) = post(&t, &trigger, body, &signed_with(NEW_SECRET)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(outbox_count(&pool, &trigger).await, 2);
    // Made unreadable after being remembered: still fails closed.
    sqlx::query("UPDATE triggers SET inbound_key_id = repeat('0', 16) WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&trigger).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let (status, resp) = post(&t, &trigger, body, &signed_with(NEW_SECRET)).await;
    assert_error(status, &resp, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(outbox_count(&pool, &trigger).await, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_remembered_trigger_that_was_deleted_is_404(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, None).await;
    let body = br#"{"from":"ann@example.com"}"#;
    let (status, resp) = post(&t, &trigger, body, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let (status, resp) = t
        .admin(
            Method::DELETE,
            &format!("/api/v1/admin/apps/{app}/triggers/{trigger}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{resp}");
    let (status, resp) = post(&t, &trigger, body, &[]).await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_batch_answers_each_email_for_itself(pool: PgPool) {
    use picloud_manager_core::repo::inbound::{deliver_batch, Delivery, DeliveryItem};
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let unsigned = email_trigger(&t, &app, None).await;
    let signed = email_trigger(&t, &app, Some(SECRET)).await;
    let id = |s: &str| uuid::Uuid::parse_str(s).unwrap();
    let item =
        |trigger: &str, key: Option<&str>, secret: Option<Vec<u8>>, check: bool| DeliveryItem {
            trigger_id: id(trigger),
            dedupe_key: key.map(str::to_owned),
            payload: r#"{"kind":"email","email":{}}"#.to_owned(),
            secret,
            check_secret: check,
        };
    let first = deliver_batch(&pool, &[item(&unsigned, Some("k1"), None, true)])
        .await
        .unwrap();
    let Delivery::Accepted(first_event) = first[0] else {
        panic!("{first:?}")
    };
    let outcomes = deliver_batch(
        &pool,
        &[
            // Seen in the previous batch.
            item(&unsigned, Some("k1"), None, true),
            // New, with and without a key.
            item(&unsigned, Some("k2"), None, true),
            item(&unsigned, None, None, true),
            // Verified as unsigned, but the trigger has a secret.
            item(&signed, Some("k3"), None, true),
            // No such trigger.
            item(&uuid::Uuid::new_v4().to_string(), None, None, true),
            // Not checked (the app endpoint's deliveries).
            item(&signed, Some("k4"), None, false),
        ],
    )
    .await
    .unwrap();
    assert_eq!(outcomes[0], Delivery::Duplicate(first_event));
    assert!(matches!(outcomes[1], Delivery::Accepted(_)), "{outcomes:?}");
    assert!(matches!(outcomes[2], Delivery::Accepted(_)), "{outcomes:?}");
    assert_eq!(outcomes[3], Delivery::SecretChanged);
    assert_eq!(outcomes[4], Delivery::NoTrigger);
    assert!(matches!(outcomes[5], Delivery::Accepted(_)), "{outcomes:?}");
    assert_eq!(outbox_count(&pool, &unsigned).await, 3);
    assert_eq!(outbox_count(&pool, &signed).await, 1);
    // The refused key was not recorded: delivered properly later, it is new.
    let later = deliver_batch(&pool, &[item(&signed, Some("k3"), None, false)])
        .await
        .unwrap();
    assert!(matches!(later[0], Delivery::Accepted(_)), "{later:?}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn requests_with_a_bad_signature_do_not_spend_a_signed_urls_rate(pool: PgPool) {
    let mut config = test_config();
    config.inbound_rate_per_min = 3;
    let t = TestApp::with_config(pool.clone(), config).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, Some(SECRET)).await;
    let body = br#"{"from":"ann@example.com"}"#;
    // Anyone who knows the URL can send these; they must not use up its rate.
    for _ in 0..10 {
        let (status, resp) = post(
            &t,
            &trigger,
            body,
            &[(
                "x-picloud-signature",
                picloud_signature("not-the-secret-at-all", body),
            )],
        )
        .await;
        assert_error(status, &resp, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let signed = [("x-picloud-signature", picloud_signature(SECRET, body))];
    for _ in 0..3 {
        let (status, resp) = post(&t, &trigger, body, &signed).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    }
    // Signed requests do spend it.
    let (status, resp) = post(&t, &trigger, body, &signed).await;
    assert_error(status, &resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(outbox_count(&pool, &trigger).await, 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_webhook_id_the_signature_does_not_cover_is_not_a_dedupe_key(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, Some(SECRET)).await;
    // X-PiCloud-Signature covers the body only: a webhook-id beside it could be
    // anyone's, and must not make a later, different email a "duplicate".
    let first = br#"{"from":"ann@example.com","text":"one"}"#;
    let second = br#"{"from":"ann@example.com","text":"two"}"#;
    let mut events = Vec::new();
    for body in [&first[..], &second[..]] {
        let (status, resp) = post(
            &t,
            &trigger,
            body,
            &[
                ("x-picloud-signature", picloud_signature(SECRET, body)),
                ("webhook-id", "msg_chosen_by_anyone".to_owned()),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
        events.push(resp["event_id"].clone());
    }
    assert_ne!(events[0], events[1]);
    // With such a signature, the message_id (which it covers) deduplicates.
    let with_id = br#"{"from":"ann@example.com","message_id":"<m1@example.com>"}"#;
    let mut answers = Vec::new();
    for webhook_id in ["msg_a", "msg_b"] {
        answers.push(
            post(
                &t,
                &trigger,
                with_id,
                &[
                    ("x-picloud-signature", picloud_signature(SECRET, with_id)),
                    ("webhook-id", webhook_id.to_owned()),
                ],
            )
            .await,
        );
    }
    assert_eq!(answers[0].0, StatusCode::ACCEPTED, "{answers:?}");
    assert_eq!(answers[1].0, StatusCode::OK, "{answers:?}");
    assert_eq!(answers[0].1["event_id"], answers[1].1["event_id"]);
    assert_eq!(outbox_count(&pool, &trigger).await, 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn oversized_header_fields_are_cut_and_flagged(pool: PgPool) {
    let mut config = test_config();
    config.inbound_max_bytes = 4 << 20;
    let t = TestApp::with_config(pool.clone(), config).await;
    let app = t.create_app("mail").await;
    let trigger = email_trigger(&t, &app, None).await;
    let many: Vec<String> = (0..150).map(|i| format!("r{i}@example.org")).collect();
    let body = json!({
        "from": "ann@example.com",
        "to": many,
        "subject": "s".repeat(2 << 20),
        "attachments": [{"filename": "f".repeat(10_000), "content": "aGk="}],
    })
    .to_string();
    let (status, resp) = post(&t, &trigger, body.as_bytes(), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let payload: sqlx::types::Json<Value> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE trigger_id = $1::uuid")
            .bind(&trigger)
            .fetch_one(&pool)
            .await
            .unwrap();
    let email = &payload.0["email"];
    assert_eq!(email["truncated"], true);
    assert_eq!(email["subject"].as_str().unwrap().len(), 4096);
    assert_eq!(email["to"].as_array().unwrap().len(), 100);
    assert_eq!(
        email["attachments"][0]["filename"].as_str().unwrap().len(),
        255
    );
    let long_from = json!({"from": format!("{}@example.com", "a".repeat(2000))}).to_string();
    let (status, resp) = post(&t, &trigger, long_from.as_bytes(), &[]).await;
    assert_error(status, &resp, StatusCode::BAD_REQUEST, "bad_request");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_whsec_secret_that_is_not_base64_is_refused(pool: PgPool) {
    let t = TestApp::new(pool.clone()).await;
    let app = t.create_app("mail").await;
    let script = t.create_script(&app, "h", "1", false).await;
    let (status, resp) = t
        .admin(
            Method::POST,
            &format!("/api/v1/admin/apps/{app}/triggers"),
            Some(json!({"kind": "email", "script_id": script,
                "config": {"inbound_secret": "whsec_this is not base64!"}})),
        )
        .await;
    assert_error(
        status,
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
    let (status, resp) = t
        .admin(
            Method::PUT,
            &format!("/api/v1/admin/apps/{app}/email-inbound"),
            Some(json!({"secret": "whsec_this is not base64!"})),
        )
        .await;
    assert_error(
        status,
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    );
}
