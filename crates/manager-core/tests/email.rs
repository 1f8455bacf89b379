//! The email service over real PostgreSQL with the recording transport:
//! what reaches the transport, and how its failures come back.

use mail_parser::MessageParser;
use picloud_manager_core::{
    email::recording::RecordingTransport,
    service::{
        apps::AppsService,
        email::{EmailServiceImpl, EmailSettings},
    },
    MIGRATOR,
};
use picloud_shared::{
    email::{
        EmailFailure, EmailPolicy, EmailService, OutboundEmail, RecipientPolicy, TransportError,
    },
    triggers::CallContext,
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};

async fn service(pool: &PgPool) -> (EmailServiceImpl, RecordingTransport, CallContext) {
    let app = AppsService::new(pool.clone())
        .create("mail")
        .await
        .unwrap()
        .id;
    let transport = RecordingTransport::new();
    let service = EmailServiceImpl::new(
        pool.clone(),
        Some(Arc::new(transport.clone())),
        EmailSettings {
            default_from: Some("Shop <shop@example.org>".into()),
            max_message_bytes: 1 << 20,
            send_timeout: Duration::from_secs(5),
        },
    );
    (service, transport, CallContext::for_app(app))
}

fn email() -> OutboundEmail {
    OutboundEmail {
        to: vec!["ann@example.com".into()],
        cc: vec!["cat@example.com".into()],
        bcc: vec!["hid@example.net".into()],
        subject: "Hello".into(),
        text: Some("plain".into()),
        html: Some("<p>rich</p>".into()),
        ..OutboundEmail::default()
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_transport_gets_the_formatted_message_and_its_envelope(pool: PgPool) {
    let (service, transport, ctx) = service(&pool).await;
    let sent = service.send(&ctx, email()).await.unwrap();
    let recorded = transport.sent();
    assert_eq!(recorded.len(), 1);
    let raw = &recorded[0];
    assert_eq!(raw.sender, "shop@example.org");
    assert_eq!(
        raw.recipients,
        vec!["ann@example.com", "cat@example.com", "hid@example.net"]
    );
    let parsed = MessageParser::default().parse(&raw.message).unwrap();
    assert_eq!(parsed.subject(), Some("Hello"));
    assert_eq!(format!("<{}>", parsed.message_id().unwrap()), sent.id);
    assert_eq!(parsed.body_text(0).unwrap().trim_end(), "plain");
    assert_eq!(parsed.body_html(0).unwrap().trim_end(), "<p>rich</p>");
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("shop@example.org")
    );
    assert!(parsed.bcc().is_none());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn transport_failures_keep_their_kind_and_do_not_count(pool: PgPool) {
    let (service, transport, ctx) = service(&pool).await;
    service
        .set_policy(
            ctx.app_id,
            EmailPolicy {
                recipients: RecipientPolicy::Unrestricted,
                daily_cap: Some(1),
            },
        )
        .await
        .unwrap();
    for failure in [
        EmailFailure::AuthFailed,
        EmailFailure::Transient,
        EmailFailure::Permanent,
    ] {
        transport.fail_next(TransportError {
            failure,
            message: "it failed".into(),
        });
        let err = service.send(&ctx, email()).await.unwrap_err();
        assert_eq!(err.kind(), failure.as_str());
    }
    // None of them counted: the one send the cap allows still goes.
    service.send(&ctx, email()).await.unwrap();
    let capped = service.send(&ctx, email()).await.unwrap_err();
    assert_eq!(capped.kind(), "rate_limited_local");
    assert_eq!(transport.sent().len(), 1);
    let counts = service.counters().snapshot();
    for (outcome, expected) in [
        ("ok", 1),
        ("auth_failed", 1),
        ("transient", 1),
        ("permanent", 1),
        ("rate_limited_local", 1),
        ("not_configured", 0),
    ] {
        assert_eq!(
            counts.iter().find(|(o, _)| *o == outcome).map(|(_, n)| *n),
            Some(expected),
            "{outcome}"
        );
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn without_a_transport_every_send_is_not_configured(pool: PgPool) {
    let app = AppsService::new(pool.clone())
        .create("mail")
        .await
        .unwrap()
        .id;
    let service = EmailServiceImpl::new(
        pool,
        None,
        EmailSettings {
            default_from: None,
            max_message_bytes: 1 << 20,
            send_timeout: Duration::from_secs(5),
        },
    );
    let err = service
        .send(&CallContext::for_app(app), email())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "not_configured");
}
