//! `email::send` and `email::send_html` as scripts see them, over a recording service.

use super::Harness;
use picloud_shared::email::{email_error, EmailFailure, OutboundEmail};
use serde_json::json;

#[test]
fn send_passes_a_text_email_and_returns_its_id() {
    let h = Harness::new();
    let out = h
        .run(
            r#"email::send(#{to: "ann@example.com", subject: "Hi", text: "body",
                html: "<p>ignored</p>", reply_to: "help@example.org"})"#,
        )
        .unwrap();
    assert_eq!(out, json!({"id": "<1@recorded.test>"}));
    let sent = h.email.sent();
    assert_eq!(sent.len(), 1);
    let (ctx, email) = &sent[0];
    assert_eq!(ctx.app_id, h.app);
    assert_eq!(
        email,
        &OutboundEmail {
            to: vec!["ann@example.com".into()],
            subject: "Hi".into(),
            text: Some("body".into()),
            reply_to: Some("help@example.org".into()),
            ..OutboundEmail::default()
        },
        "a stray html is ignored by email::send"
    );
}

#[test]
fn send_html_passes_html_and_optional_text_and_recipient_arrays() {
    let h = Harness::new();
    h.run(
        r#"email::send_html(#{to: ["a@example.com", "b@example.com"], cc: "c@example.com",
            bcc: ["d@example.com"], subject: "S", html: "<b>x</b>", text: "x",
            from: "Shop <shop@example.org>", idempotency_key: "order-1"})"#,
    )
    .unwrap();
    h.run(r#"email::send_html(#{to: "a@example.com", subject: "S", html: "<i>y</i>"})"#)
        .unwrap();
    let sent = h.email.sent();
    assert_eq!(
        sent[0].1,
        OutboundEmail {
            from: Some("Shop <shop@example.org>".into()),
            to: vec!["a@example.com".into(), "b@example.com".into()],
            cc: vec!["c@example.com".into()],
            bcc: vec!["d@example.com".into()],
            reply_to: None,
            subject: "S".into(),
            text: Some("x".into()),
            html: Some("<b>x</b>".into()),
            idempotency_key: Some("order-1".into()),
        }
    );
    assert_eq!(sent[1].1.text, None);
    assert_eq!(sent[1].1.html.as_deref(), Some("<i>y</i>"));
}

#[test]
fn malformed_calls_are_invalid_argument_and_send_nothing() {
    let h = Harness::new();
    for (call, expected) in [
        (r#"email::send("ann@example.com")"#, "expects a map"),
        (
            r#"email::send(#{to: "a@b.co", text: "x"})"#,
            "subject is required",
        ),
        (
            r#"email::send(#{to: "a@b.co", subject: "s"})"#,
            "text is required",
        ),
        (
            r#"email::send_html(#{to: "a@b.co", subject: "s", text: "x"})"#,
            "html is required",
        ),
        (
            r#"email::send(#{to: 42, subject: "s", text: "x"})"#,
            "to must be a string or an array of strings, got i64",
        ),
        (
            r#"email::send(#{to: ["a@b.co", 1], subject: "s", text: "x"})"#,
            "an array holding i64",
        ),
        (
            r#"email::send(#{to: "a@b.co", subject: 1, text: "x"})"#,
            "subject must be a string",
        ),
        (
            r#"email::send(#{to: "a@b.co", subject: "s", text: "x", subjet: "typo"})"#,
            "unknown field `subjet`",
        ),
    ] {
        let out = h
            .run(&format!(
                "let e = (); try {{ {call} }} catch (x) {{ e = x }} e"
            ))
            .unwrap();
        assert_eq!(out["kind"], "invalid_argument", "{call}: {out}");
        let message = out["message"].as_str().unwrap();
        assert!(message.contains(expected), "{call}: {message}");
    }
    assert!(h.email.sent().is_empty());
}

#[test]
fn service_failures_are_catchable_with_their_kind() {
    let h = Harness::new();
    for failure in EmailFailure::ALL {
        h.email.fail_next(email_error(failure, "it failed"));
        let out = h
            .run(r#"let e = (); try { email::send(#{to: "a@b.co", subject: "s", text: "x"}) } catch (x) { e = x } e"#)
            .unwrap();
        assert_eq!(
            out,
            json!({"kind": failure.as_str(), "message": "it failed"})
        );
    }
}
