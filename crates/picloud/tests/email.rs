//! Outbound email end to end: scripts call `email::send`/`email::send_html`,
//! picloud talks SMTP over TCP to a real server (aiosmtpd, started by
//! `scripts/test.sh`), and the tests read what that server accepted.

mod support;

use axum::http::{Method, StatusCode};
use mail_parser::{MessageParser, MimeHeaders};
use picloud::{config::AppConfig, email_config::EmailConfig};
use picloud_manager_core::MIGRATOR;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::{collections::HashMap, path::PathBuf, time::Duration};
use support::{assert_error, test_config, TestApp};

/// The test SMTP server `scripts/test.sh` started; a run without it fails here.
struct Smtp {
    port: u16,
    user: String,
    password: String,
    outbox: PathBuf,
}

fn smtp() -> Smtp {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the email tests need the SMTP server ./scripts/test.sh starts"
            )
        })
    };
    Smtp {
        port: var("PICLOUD_TEST_SMTP_PORT").parse().expect("a port"),
        user: var("PICLOUD_TEST_SMTP_USER"),
        password: var("PICLOUD_TEST_SMTP_PASSWORD"),
        outbox: PathBuf::from(var("PICLOUD_TEST_SMTP_OUTBOX")),
    }
}

/// Email settings pointing at the test server (plain SMTP with AUTH).
fn email_config(port: u16, password: &str) -> EmailConfig {
    let s = smtp();
    let vars: HashMap<&str, String> = HashMap::from([
        ("PICLOUD_SMTP_HOST", "127.0.0.1".to_owned()),
        ("PICLOUD_SMTP_PORT", port.to_string()),
        ("PICLOUD_SMTP_USER", s.user),
        ("PICLOUD_SMTP_PASSWORD", password.to_owned()),
        ("PICLOUD_SMTP_TLS", "none".to_owned()),
        (
            "PICLOUD_EMAIL_FROM",
            "Picloud Tests <tests@picloud.example>".to_owned(),
        ),
    ]);
    let config = EmailConfig::read(|name| vars.get(name).cloned(), Duration::from_secs(5));
    assert_eq!(config.disabled_because, None);
    config
}

fn config_with(email: EmailConfig) -> AppConfig {
    let mut config = test_config();
    config.email = email;
    // Sends wait for the relay within the run's deadline.
    config.limits.timeout = Duration::from_secs(10);
    config
}

async fn app_with_email(pool: PgPool) -> TestApp {
    let s = smtp();
    TestApp::with_config(pool, config_with(email_config(s.port, &s.password))).await
}

/// A marker no other test uses, to find this test's messages in the shared outbox.
fn token() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// A message the test server accepted.
struct Received {
    mail_from: String,
    rcpt_tos: Vec<String>,
    data: Vec<u8>,
}

/// Every accepted message whose raw text contains `token`.
fn received(token: &str) -> Vec<Received> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(smtp().outbox).expect("the outbox dir") {
        let path = entry.expect("an outbox entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let record: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("a record")).unwrap();
        let data = base64_decode(record["data_b64"].as_str().unwrap());
        if String::from_utf8_lossy(&data).contains(token) {
            found.push(Received {
                mail_from: record["mail_from"].as_str().unwrap().to_owned(),
                rcpt_tos: record["rcpt_tos"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect(),
                data,
            });
        }
    }
    found
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// Runs `source` in a fresh script of `app` and returns its answer.
async fn run(t: &TestApp, app: &str, source: &str) -> Value {
    let name = format!("s{}", uuid::Uuid::new_v4().simple());
    t.create_script(app, &name, source, false).await;
    let (status, out) = t.invoke(app, &name, json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

/// A script that sends `call` and answers the result or the caught error.
fn catching(call: &str) -> String {
    format!("let r = (); try {{ r = {call} }} catch (e) {{ r = e }} r")
}

async fn metric(t: &TestApp, series: &str) -> String {
    let (_, metrics) = t.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.as_str().unwrap().to_owned();
    text.lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
        .to_owned()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn send_and_send_html_arrive_with_their_envelope_and_headers(pool: PgPool) {
    let t = app_with_email(pool).await;
    let app = t.create_app("mailer").await;
    let mark = token();
    let out = run(
        &t,
        &app,
        &format!(
            r#"email::send(#{{to: ["ann@example.com", "bob@example.com"], cc: "cat@example.com",
                bcc: "hidden@example.net", subject: "Order {mark}", text: "Thanks for order {mark}."}})"#
        ),
    )
    .await;
    let id = out["id"].as_str().unwrap().to_owned();
    let got = received(&mark);
    assert_eq!(got.len(), 1);
    let message = &got[0];
    assert_eq!(message.mail_from, "tests@picloud.example");
    assert_eq!(
        message.rcpt_tos,
        vec![
            "ann@example.com",
            "bob@example.com",
            "cat@example.com",
            "hidden@example.net"
        ]
    );
    let parsed = MessageParser::default().parse(&message.data).unwrap();
    assert_eq!(parsed.subject(), Some(format!("Order {mark}").as_str()));
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("Picloud Tests"), Some("tests@picloud.example"))
    );
    let to: Vec<_> = parsed
        .to()
        .unwrap()
        .iter()
        .map(|a| a.address().unwrap())
        .collect();
    assert_eq!(to, vec!["ann@example.com", "bob@example.com"]);
    assert_eq!(
        parsed.cc().unwrap().first().unwrap().address(),
        Some("cat@example.com")
    );
    assert!(parsed.bcc().is_none(), "bcc is not a header");
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("tests@picloud.example")
    );
    assert_eq!(format!("<{}>", parsed.message_id().unwrap()), id);
    assert_eq!(
        parsed.body_text(0).unwrap().trim_end(),
        format!("Thanks for order {mark}.")
    );

    let mark = token();
    run(
        &t,
        &app,
        &format!(
            r#"email::send_html(#{{to: "ann@example.com", from: "shop@example.org", reply_to: "help@example.org",
                subject: "Rich {mark}", html: "<p>Hello {mark}</p>", text: "Hello {mark}"}})"#
        ),
    )
    .await;
    let got = received(&mark);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "shop@example.org");
    let parsed = MessageParser::default().parse(&got[0].data).unwrap();
    let ctype = parsed.content_type().unwrap();
    assert_eq!(
        (ctype.ctype(), ctype.subtype()),
        ("multipart", Some("alternative"))
    );
    assert_eq!(
        parsed.body_html(0).unwrap().trim_end(),
        format!("<p>Hello {mark}</p>")
    );
    assert_eq!(
        parsed.body_text(0).unwrap().trim_end(),
        format!("Hello {mark}")
    );
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("help@example.org")
    );
    assert_eq!(
        metric(&t, r#"picloud_email_send_total{outcome="ok"}"#).await,
        r#"picloud_email_send_total{outcome="ok"} 2"#
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn relay_failures_are_sorted_into_their_kinds(pool: PgPool) {
    let s = smtp();
    let t = app_with_email(pool.clone()).await;
    let app = t.create_app("mailer").await;
    for (local, kind, code) in [
        ("tempfail", "transient", "451"),
        ("reject", "permanent", "550"),
    ] {
        let mark = token();
        let out = run(
            &t,
            &app,
            &catching(&format!(
                r#"email::send(#{{to: "{local}-{mark}@example.com", subject: "{mark}", text: "x"}})"#
            )),
        )
        .await;
        assert_eq!(out["kind"], kind, "{out}");
        assert!(out["message"].as_str().unwrap().contains(code), "{out}");
        assert!(received(&mark).is_empty());
    }

    // Wrong credentials: auth_failed, and the password is in no message.
    let wrong = TestApp::with_config(
        pool.clone(),
        config_with(email_config(s.port, "not-the-password")),
    )
    .await;
    let app = wrong.create_app("wrong").await;
    let out = run(
        &wrong,
        &app,
        &catching(r#"email::send(#{to: "ann@example.com", subject: "s", text: "x"})"#),
    )
    .await;
    assert_eq!(out["kind"], "auth_failed", "{out}");
    assert!(!out.to_string().contains("not-the-password"));

    // Nothing listening: transient, within the SDK timeout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = TestApp::with_config(pool, config_with(email_config(closed, &s.password))).await;
    let app = down.create_app("down").await;
    let out = run(
        &down,
        &app,
        &catching(r#"email::send(#{to: "ann@example.com", subject: "s", text: "x"})"#),
    )
    .await;
    assert_eq!(out["kind"], "transient", "{out}");
    assert_eq!(
        metric(&down, r#"picloud_email_send_total{outcome="transient"}"#).await,
        r#"picloud_email_send_total{outcome="transient"} 1"#
    );
    assert_eq!(
        metric(&wrong, r#"picloud_email_send_total{outcome="auth_failed"}"#).await,
        r#"picloud_email_send_total{outcome="auth_failed"} 1"#
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_sends_fail_with_their_kind_and_send_nothing(pool: PgPool) {
    let t = app_with_email(pool).await;
    let app = t.create_app("mailer").await;
    let mark = token();
    for (call, kind) in [
        (
            format!(
                r#"email::send(#{{to: "ann@example.com", subject: "hi {mark}\r\nBcc: victim@example.com", text: "x"}})"#
            ),
            "invalid_argument",
        ),
        (
            format!(
                r#"email::send(#{{to: "ann@example.com\r\nBcc: victim@example.com", subject: "{mark}", text: "x"}})"#
            ),
            "invalid_argument",
        ),
        (
            format!(
                r#"email::send(#{{to: "ann@example.com", from: "a@b.co\nBcc: victim@example.com", subject: "{mark}", text: "x"}})"#
            ),
            "invalid_argument",
        ),
        (
            format!(r#"email::send(#{{to: "not-an-address", subject: "{mark}", text: "x"}})"#),
            "invalid_address",
        ),
        (
            format!(r#"email::send(#{{to: "ann@example.com", subject: "{mark}"}})"#),
            "invalid_argument",
        ),
    ] {
        let out = run(&t, &app, &catching(&call)).await;
        assert_eq!(out["kind"], kind, "{call}: {out}");
        assert!(!out.to_string().contains("victim"), "{out}");
    }
    assert!(received(&mark).is_empty(), "nothing was sent");
    assert!(received("victim@example.com").is_empty());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn email_is_not_configured_without_smtp_settings(pool: PgPool) {
    let t = TestApp::new(pool).await;
    let app = t.create_app("mailer").await;
    let out = run(
        &t,
        &app,
        &catching(r#"email::send(#{to: "ann@example.com", subject: "s", text: "x"})"#),
    )
    .await;
    assert_eq!(out["kind"], "not_configured", "{out}");
    let (status, body) = t
        .admin(Method::GET, "/api/v1/admin/email/status", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"configured": false, "host": null, "port": null, "tls": null, "from": null})
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_status_shows_the_relay_and_never_the_password(pool: PgPool) {
    let s = smtp();
    let t = app_with_email(pool).await;
    let (status, body) = t
        .admin(Method::GET, "/api/v1/admin/email/status", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"configured": true, "host": "127.0.0.1", "port": s.port, "tls": "none",
               "from": "Picloud Tests <tests@picloud.example>"})
    );
    assert!(!body.to_string().contains(&s.password));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_recipient_policy_covers_to_cc_and_bcc(pool: PgPool) {
    let t = app_with_email(pool).await;
    let app = t.create_app("mailer").await;
    let policy = format!("/api/v1/admin/apps/{app}/email-policy");
    let (status, body) = t.admin(Method::GET, &policy, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"recipients": "unrestricted", "daily_cap": null})
    );
    let (status, body) = t
        .admin(
            Method::PUT,
            &policy,
            Some(json!({"recipients": ["Boss@Example.net", "@example.com"], "daily_cap": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"recipients": ["boss@example.net", "@example.com"], "daily_cap": null})
    );
    let mark = token();
    let allowed = run(
        &t,
        &app,
        &format!(
            r#"email::send(#{{to: "ann@example.com", cc: "BOSS@example.net", subject: "{mark}", text: "x"}})"#
        ),
    )
    .await;
    assert!(allowed["id"].is_string(), "{allowed}");
    for recipients in [
        r#"to: ["ann@example.com", "eve@evil.example"]"#,
        r#"to: "ann@example.com", cc: "eve@evil.example""#,
        r#"to: "ann@example.com", bcc: ["eve@evil.example"]"#,
    ] {
        let mark = token();
        let out = run(
            &t,
            &app,
            &catching(&format!(
                r#"email::send(#{{{recipients}, subject: "{mark}", text: "x"}})"#
            )),
        )
        .await;
        assert_eq!(out["kind"], "recipient_denied", "{recipients}: {out}");
        assert!(received(&mark).is_empty());
    }
    assert_eq!(received(&mark).len(), 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_policies_are_422_and_unknown_apps_404(pool: PgPool) {
    let t = app_with_email(pool).await;
    let app = t.create_app("mailer").await;
    let policy = format!("/api/v1/admin/apps/{app}/email-policy");
    for body in [
        json!({"recipients": "everyone"}),
        json!({"recipients": ["not an address"]}),
        json!({"recipients": "unrestricted", "daily_cap": -1}),
        json!({"recipients": "unrestricted", "daily_cap": "ten"}),
        json!({"recipients": "unrestricted", "cap": 3}),
        json!({"daily_cap": 3}),
    ] {
        let (status, resp) = t.admin(Method::PUT, &policy, Some(body.clone())).await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{body}: {status} {resp}"
        );
        assert!(!resp.to_string().contains("not an address"), "{resp}");
    }
    let (_, stored) = t.admin(Method::GET, &policy, None).await;
    assert_eq!(
        stored,
        json!({"recipients": "unrestricted", "daily_cap": null})
    );
    let missing = format!("/api/v1/admin/apps/{}/email-policy", uuid::Uuid::new_v4());
    let (status, resp) = t.admin(Method::GET, &missing, None).await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
    let (status, resp) = t
        .admin(
            Method::PUT,
            &missing,
            Some(json!({"recipients": "unrestricted", "daily_cap": 1})),
        )
        .await;
    assert_error(status, &resp, StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_daily_cap_counts_only_successes_and_holds_under_concurrency(pool: PgPool) {
    let t = app_with_email(pool.clone()).await;
    let app = t.create_app("mailer").await;
    let (status, _) = t
        .admin(
            Method::PUT,
            &format!("/api/v1/admin/apps/{app}/email-policy"),
            Some(json!({"recipients": "unrestricted", "daily_cap": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // A failed send does not count.
    let failed = run(
        &t,
        &app,
        &catching(r#"email::send(#{to: "reject@example.com", subject: "s", text: "x"})"#),
    )
    .await;
    assert_eq!(failed["kind"], "permanent");
    // Two servers ("processes") on one database race eight sends: three pass.
    let other = app_with_email(pool).await;
    let mark = token();
    let source = catching(&format!(
        r#"email::send(#{{to: "ann@example.com", subject: "{mark}", text: "x"}})"#
    ));
    t.create_script(&app, "send", &source, false).await;
    let calls = (0..8).map(|i| {
        let server = if i % 2 == 0 { &t } else { &other };
        server.invoke(&app, "send", json!(null))
    });
    let answers = futures_util::future::join_all(calls).await;
    let kinds: Vec<String> = answers
        .iter()
        .map(|(status, out)| {
            assert_eq!(*status, StatusCode::OK, "{out}");
            if out["id"].is_string() {
                "ok".to_owned()
            } else {
                out["kind"].as_str().unwrap().to_owned()
            }
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "ok").count(), 3, "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "rate_limited_local").count(),
        5,
        "{kinds:?}"
    );
    assert_eq!(received(&mark).len(), 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_idempotency_key_sends_once_also_when_sends_race(pool: PgPool) {
    let t = app_with_email(pool).await;
    let app = t.create_app("mailer").await;
    let mark = token();
    let send = format!(
        r#"email::send(#{{to: "ann@example.com", subject: "{mark}", text: "x", idempotency_key: "order-{mark}"}}).id"#
    );
    t.create_script(&app, "send", &send, false).await;
    let answers =
        futures_util::future::join_all((0..4).map(|_| t.invoke(&app, "send", json!(null)))).await;
    let ids: Vec<&Value> = answers
        .iter()
        .map(|(status, out)| {
            assert_eq!(*status, StatusCode::OK, "{out}");
            out
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let (_, again) = t.invoke(&app, "send", json!(null)).await;
    assert_eq!(&again, ids[0]);
    assert_eq!(received(&mark).len(), 1, "one message for one key");

    // Another app's key of the same name is its own.
    let other = t.create_app("other").await;
    t.create_script(&other, "send", &send, false).await;
    let (_, theirs) = t.invoke(&other, "send", json!(null)).await;
    assert_ne!(&theirs, ids[0]);
    assert_eq!(received(&mark).len(), 2);

    // A key whose send failed can be used again.
    let failing = format!(
        r#"email::send(#{{to: "tempfail@example.com", subject: "{mark}", text: "x", idempotency_key: "retry-{mark}"}})"#
    );
    let out = run(&t, &app, &catching(&failing)).await;
    assert_eq!(out["kind"], "transient");
    let ok = run(
        &t,
        &app,
        &format!(
            r#"email::send(#{{to: "ann@example.com", subject: "{mark}", text: "x", idempotency_key: "retry-{mark}"}}).id"#
        ),
    )
    .await;
    assert!(ok.is_string(), "{ok}");
    assert_eq!(received(&mark).len(), 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_send_that_times_out_keeps_its_key_and_counts_against_the_cap(pool: PgPool) {
    let s = smtp();
    let mut config = config_with(email_config(s.port, &s.password));
    // The relay answers a message to slow-* after 3 s; the send gives up at 1 s.
    config.limits.sdk_timeout = Duration::from_secs(1);
    config.email.smtp.as_mut().unwrap().timeout = Duration::from_secs(1);
    let t = TestApp::with_config(pool, config).await;
    let app = t.create_app("mailer").await;
    let (status, _) = t
        .admin(
            Method::PUT,
            &format!("/api/v1/admin/apps/{app}/email-policy"),
            Some(json!({"recipients": "unrestricted", "daily_cap": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mark = token();
    let send = format!(
        r#"email::send(#{{to: "slow-{mark}@example.com", subject: "{mark}", text: "x", idempotency_key: "k-{mark}"}})"#
    );
    let first = run(&t, &app, &catching(&send)).await;
    assert_eq!(first["kind"], "transient", "{first}");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("may still be delivered"),
        "{first}"
    );
    // The same key does not send again: the first send's id comes back.
    let again = run(&t, &app, &catching(&send)).await;
    assert!(again["id"].is_string(), "{again}");
    // The send that may have gone out counts against the cap of 1.
    let other = run(
        &t,
        &app,
        &catching(r#"email::send(#{to: "ann@example.com", subject: "s", text: "x"})"#),
    )
    .await;
    assert_eq!(other["kind"], "rate_limited_local", "{other}");
    // The relay does take it, once.
    let delivered = support::eventually("the slow message", Duration::from_secs(10), || async {
        let got = received(&mark);
        (!got.is_empty()).then_some(got.len())
    })
    .await;
    assert_eq!(delivered, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(received(&mark).len(), 1, "sent once");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_send_its_script_stopped_waiting_for_is_still_settled(pool: PgPool) {
    let s = smtp();
    let mut config = config_with(email_config(s.port, &s.password));
    // The run's deadline (1 s) passes while the relay takes 3 s to answer.
    config.limits.timeout = Duration::from_secs(1);
    let t = TestApp::with_config(pool, config).await;
    let app = t.create_app("mailer").await;
    let mark = token();
    let send = format!(
        r#"email::send(#{{to: "slow-{mark}@example.com", subject: "{mark}", text: "x", idempotency_key: "k-{mark}"}}).id"#
    );
    t.create_script(&app, "send", &send, false).await;
    let (status, out) = t.invoke(&app, "send", json!(null)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
    assert_eq!(out["error"]["code"], "script_limit", "{out}");
    // The send went on without its script and settled its key: the same key
    // answers the first send's id without sending again.
    let id = support::eventually("the key settled", Duration::from_secs(15), || async {
        let (status, out) = t.invoke(&app, "send", json!(null)).await;
        (status == StatusCode::OK).then_some(out)
    })
    .await;
    assert!(id.as_str().unwrap().starts_with('<'), "{id}");
    assert_eq!(received(&mark).len(), 1, "sent once");
}
