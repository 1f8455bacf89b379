//! Turning what a script asked to send into a formatted RFC 5322 message and
//! its envelope: every check of SPEC §7 that needs no database.

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use picloud_shared::email::{
    check_header_value, email_error, precheck_address, EmailFailure, OutboundEmail, RawEmail,
    MAX_IDEMPOTENCY_KEY_BYTES, MAX_RECIPIENTS,
};
use picloud_shared::ServiceError;
use uuid::Uuid;

/// A message ready to send, with the id `email::send` returns.
#[derive(Debug, Clone)]
pub struct Composed {
    /// The `Message-ID` header's value, angle brackets included.
    pub message_id: String,
    pub raw: RawEmail,
}

/// Checks `email` and formats it. `default_from` is `PICLOUD_EMAIL_FROM`;
/// `max_message_bytes` bounds the formatted message, and is checked on the
/// parts' sizes before anything is built.
pub fn compose(
    email: &OutboundEmail,
    default_from: Option<&str>,
    max_message_bytes: usize,
) -> Result<Composed, ServiceError> {
    let recipients = email.to.len() + email.cc.len() + email.bcc.len();
    if email.to.is_empty() {
        return Err(invalid_argument("to must name at least one address"));
    }
    if recipients > MAX_RECIPIENTS {
        return Err(invalid_argument(&format!(
            "a message has at most {MAX_RECIPIENTS} recipients (to, cc and bcc), this one has {recipients}"
        )));
    }
    if let Some(key) = &email.idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(invalid_argument(&format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} bytes"
            )));
        }
    }
    // The parts' own bytes are a lower bound of the formatted size: refuse
    // what cannot fit before building anything.
    let declared = email.subject.len()
        + email.text.as_ref().map_or(0, String::len)
        + email.html.as_ref().map_or(0, String::len);
    if declared > max_message_bytes {
        return Err(too_large(max_message_bytes));
    }
    check_header_value("subject", &email.subject)?;

    let from_text = match (&email.from, default_from) {
        (Some(from), _) => from.as_str(),
        (None, Some(default)) => default,
        (None, None) => {
            return Err(invalid_argument(
                "from is required (PICLOUD_EMAIL_FROM is not set)",
            ))
        }
    };
    let from = mailbox("from", from_text)?;
    let reply_to = match &email.reply_to {
        Some(reply_to) => mailbox("reply_to", reply_to)?,
        None => from.clone(),
    };
    let message_id = format!("<{}@{}>", Uuid::new_v4().simple(), from.email.domain());
    let mut builder = lettre::Message::builder()
        .from(from)
        .reply_to(reply_to)
        .subject(email.subject.as_str())
        .message_id(Some(message_id.clone()))
        .date_now();
    for (field, addresses) in [("to", &email.to), ("cc", &email.cc), ("bcc", &email.bcc)] {
        for address in addresses {
            let mailbox = mailbox(field, address)?;
            builder = match field {
                "to" => builder.to(mailbox),
                "cc" => builder.cc(mailbox),
                _ => builder.bcc(mailbox),
            };
        }
    }
    let built = match &email.html {
        Some(html) => {
            let mut parts = MultiPart::alternative().build();
            if let Some(text) = &email.text {
                parts = parts.singlepart(SinglePart::plain(text.clone()));
            }
            builder.multipart(parts.singlepart(SinglePart::html(html.clone())))
        }
        None => builder
            .header(ContentType::TEXT_PLAIN)
            .body(email.text.clone().unwrap_or_default()),
    }
    .map_err(|e| {
        // lettre's builder fails only on a missing From/To, which the checks above rule out.
        tracing::error!(error = %e, "a checked message could not be built");
        invalid_argument("the message could not be built")
    })?;
    let message = built.formatted();
    if message.len() > max_message_bytes {
        return Err(too_large(max_message_bytes));
    }
    let envelope = built.envelope();
    Ok(Composed {
        message_id,
        raw: RawEmail {
            sender: envelope.from().map(ToString::to_string).unwrap_or_default(),
            recipients: envelope.to().iter().map(ToString::to_string).collect(),
            message,
        },
    })
}

/// `address` or `Name <address>`: the address pre-checked, then parsed by lettre.
pub fn mailbox(field: &str, text: &str) -> Result<Mailbox, ServiceError> {
    check_header_value(field, text)?;
    let address = match (text.rfind('<'), text.strip_suffix('>')) {
        (Some(open), Some(inner)) => &inner[open + 1..],
        _ => text,
    };
    precheck_address(field, address)?;
    text.parse::<Mailbox>().map_err(|_| {
        email_error(
            EmailFailure::InvalidAddress,
            format!("{field}: not an email address"),
        )
    })
}

fn invalid_argument(message: &str) -> ServiceError {
    email_error(EmailFailure::InvalidArgument, message)
}

fn too_large(limit: usize) -> ServiceError {
    email_error(
        EmailFailure::TooLarge,
        format!(
            "the message is above the limit of {limit} bytes (PICLOUD_EMAIL_MAX_MESSAGE_BYTES)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    fn email() -> OutboundEmail {
        OutboundEmail {
            to: vec!["ann@example.com".into()],
            subject: "Hello".into(),
            text: Some("plain body".into()),
            ..OutboundEmail::default()
        }
    }

    fn parse(raw: &RawEmail) -> mail_parser::Message<'_> {
        MessageParser::default()
            .parse(&raw.message)
            .expect("a formatted message parses")
    }

    fn failure(result: Result<Composed, ServiceError>) -> (String, String) {
        let err = result.unwrap_err();
        (err.kind().to_owned(), err.to_string())
    }

    #[test]
    fn a_text_message_has_its_headers_body_and_envelope() {
        let composed = compose(&email(), Some("Shop <shop@example.org>"), 1 << 20).unwrap();
        let raw = &composed.raw;
        assert_eq!(raw.sender, "shop@example.org");
        assert_eq!(raw.recipients, vec!["ann@example.com"]);
        let parsed = parse(raw);
        assert_eq!(parsed.subject(), Some("Hello"));
        let from = parsed.from().unwrap().first().unwrap();
        assert_eq!(from.address(), Some("shop@example.org"));
        assert_eq!(from.name(), Some("Shop"));
        assert_eq!(
            parsed.to().unwrap().first().unwrap().address(),
            Some("ann@example.com")
        );
        assert_eq!(
            parsed.reply_to().unwrap().first().unwrap().address(),
            Some("shop@example.org"),
            "reply_to defaults to from"
        );
        assert_eq!(
            format!("<{}>", parsed.message_id().unwrap()),
            composed.message_id
        );
        assert!(composed.message_id.ends_with("@example.org>"));
        assert_eq!(parsed.body_text(0).unwrap().trim_end(), "plain body");
        let ctype = parsed.content_type().unwrap();
        assert_eq!(
            (ctype.ctype(), ctype.subtype()),
            ("text", Some("plain")),
            "a text message is a single text/plain part"
        );
    }

    #[test]
    fn an_html_message_is_multipart_alternative_with_its_text() {
        let mut with_text = email();
        with_text.html = Some("<p>rich</p>".into());
        let composed = compose(&with_text, Some("shop@example.org"), 1 << 20).unwrap();
        let parsed = parse(&composed.raw);
        let ctype = parsed.content_type().unwrap();
        assert_eq!(
            (ctype.ctype(), ctype.subtype()),
            ("multipart", Some("alternative"))
        );
        assert_eq!(parsed.text_body_count(), 1);
        assert_eq!(parsed.body_text(0).unwrap().trim_end(), "plain body");
        assert_eq!(parsed.body_html(0).unwrap().trim_end(), "<p>rich</p>");

        let mut html_only = email();
        html_only.text = None;
        html_only.html = Some("<b>only</b>".into());
        let parsed_raw = compose(&html_only, Some("shop@example.org"), 1 << 20).unwrap();
        let parsed = parse(&parsed_raw.raw);
        assert_eq!(
            parsed.content_type().unwrap().subtype(),
            Some("alternative")
        );
        assert_eq!(parsed.body_html(0).unwrap().trim_end(), "<b>only</b>");
    }

    #[test]
    fn cc_and_bcc_are_in_the_envelope_and_bcc_is_not_in_the_headers() {
        let mut e = email();
        e.cc = vec!["cat@example.com".into()];
        e.bcc = vec!["hidden@example.net".into()];
        e.from = Some("me@example.org".into());
        e.reply_to = Some("help@example.org".into());
        let composed = compose(&e, None, 1 << 20).unwrap();
        assert_eq!(
            composed.raw.recipients,
            vec!["ann@example.com", "cat@example.com", "hidden@example.net"]
        );
        let parsed = parse(&composed.raw);
        assert_eq!(
            parsed.cc().unwrap().first().unwrap().address(),
            Some("cat@example.com")
        );
        assert!(parsed.bcc().is_none());
        assert!(!String::from_utf8_lossy(&composed.raw.message).contains("hidden@"));
        assert_eq!(
            parsed.reply_to().unwrap().first().unwrap().address(),
            Some("help@example.org")
        );
    }

    #[test]
    fn each_bad_input_fails_with_its_kind_and_never_quotes_it() {
        let cases: Vec<(OutboundEmail, &str)> = vec![
            (
                OutboundEmail {
                    to: vec![],
                    ..email()
                },
                "invalid_argument",
            ),
            (
                OutboundEmail {
                    to: vec!["nobody".into()],
                    ..email()
                },
                "invalid_address",
            ),
            (
                OutboundEmail {
                    cc: vec!["a@b".into()],
                    ..email()
                },
                "invalid_address",
            ),
            (
                OutboundEmail {
                    bcc: vec!["a@@b.co".into()],
                    ..email()
                },
                "invalid_address",
            ),
            (
                OutboundEmail {
                    from: Some("x@y".into()),
                    ..email()
                },
                "invalid_address",
            ),
            (
                OutboundEmail {
                    reply_to: Some("@y.co".into()),
                    ..email()
                },
                "invalid_address",
            ),
            (
                OutboundEmail {
                    subject: "hi\r\nBcc: victim@example.com".into(),
                    ..email()
                },
                "invalid_argument",
            ),
            (
                OutboundEmail {
                    to: vec!["a@b.co\r\nBcc: victim@example.com".into()],
                    ..email()
                },
                "invalid_argument",
            ),
            (
                OutboundEmail {
                    from: Some("Evil\n <a@b.co>".into()),
                    ..email()
                },
                "invalid_argument",
            ),
            (
                OutboundEmail {
                    to: vec!["a@b.co".into(); MAX_RECIPIENTS + 1],
                    ..email()
                },
                "invalid_argument",
            ),
            (
                OutboundEmail {
                    idempotency_key: Some(String::new()),
                    ..email()
                },
                "invalid_argument",
            ),
        ];
        for (e, kind) in cases {
            let (got, message) = failure(compose(&e, Some("shop@example.org"), 1 << 20));
            assert_eq!(got, kind, "{e:?}: {message}");
            assert!(!message.contains("victim"), "{message}");
        }
        // No default sender and none given.
        let (kind, message) = failure(compose(&email(), None, 1 << 20));
        assert_eq!(kind, "invalid_argument");
        assert!(message.contains("PICLOUD_EMAIL_FROM"), "{message}");
    }

    #[test]
    fn the_size_limit_holds_before_and_after_formatting() {
        // Parts alone above the limit: refused before anything is built.
        let big = OutboundEmail {
            text: Some("x".repeat(2000)),
            ..email()
        };
        let (kind, message) = failure(compose(&big, Some("s@example.org"), 1000));
        assert_eq!(kind, "too_large");
        assert!(message.contains("1000"), "{message}");
        // Parts within it, but headers and encoding push the message past it.
        let close = OutboundEmail {
            text: Some("é".repeat(400)),
            ..email()
        };
        let (kind, _) = failure(compose(&close, Some("s@example.org"), 1000));
        assert_eq!(kind, "too_large");
        assert!(compose(&email(), Some("s@example.org"), 1000).is_ok());
    }
}
