//! Inbound email webhooks (SPEC §7): verifying a request's signature and
//! reading its body into an [`InboundEmail`]. No I/O here: the HTTP layer
//! hands in the headers, the raw body and the clock.

use crate::triggers::{EmailAttachment, InboundEmail};
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use mail_parser::{MessageParser, MimeHeaders};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// An app's inbound endpoint, as the admin API shows it (the secret never).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AppInbound {
    /// Where a provider posts the app's email.
    pub inbound_url: String,
    /// True when requests must be signed with the app's secret.
    pub signed: bool,
}

/// How far a Standard Webhooks timestamp may be from now, in seconds.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;
/// Longest text or html body kept whole; a longer one is cut (and flagged).
pub const MAX_BODY_CHARS: usize = 256 * 1024;
/// Most attachments listed for one email.
pub const MAX_ATTACHMENTS: usize = 100;
/// Most `message/rfc822` parts one MIME body may declare: the parser recurses
/// into each, and a deep chain of them overflows a thread's stack.
pub const MAX_NESTED_MESSAGES: usize = 32;
/// Most `Content-Type` headers one MIME body may hold. Every level of nesting
/// needs one (a part without it is text, or a digest's message whose own
/// nesting needs one again), however the type is spelled (`message/global`,
/// `multipart/digest`, spaces), so this bounds the parser's depth, and with
/// it its stack; it also bounds the parts it builds.
pub const MAX_MIME_CONTENT_TYPES: usize = 1000;
/// Most lines starting with `--` (boundary lines, at most) one MIME body may
/// hold: parts without headers cost the parser memory too.
pub const MAX_MIME_BOUNDARY_LINES: usize = 10_000;

type HmacSha256 = Hmac<Sha256>;

/// Standard base64 that accepts non-zero trailing bits, as many encoders
/// (and the JSON Schema pattern of the API) allow.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// The signature headers of a request, as sent (absent ones `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SignatureHeaders<'a> {
    /// `X-PiCloud-Signature: sha256=<hex>`.
    pub picloud: Option<&'a str>,
    /// Standard Webhooks: `webhook-id`.
    pub webhook_id: Option<&'a str>,
    /// Standard Webhooks: `webhook-timestamp` (Unix seconds).
    pub webhook_timestamp: Option<&'a str>,
    /// Standard Webhooks: `webhook-signature` (`v1,<base64>`, space-separated).
    pub webhook_signature: Option<&'a str>,
}

/// The scheme a request's signature was verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// `X-PiCloud-Signature`: over the body only (a `webhook-id` header is not covered).
    PiCloud,
    /// Standard Webhooks: over `webhook-id`, `webhook-timestamp` and the body.
    StandardWebhooks,
}

/// Checks an inbound secret before it is stored: 16-256 characters without
/// control characters, and a `whsec_` secret must be base64 after the prefix
/// (Standard Webhooks decodes it; one that does not decode could never verify).
pub fn validate_inbound_secret(secret: &str) -> Result<(), &'static str> {
    if !(16..=256).contains(&secret.chars().count()) || secret.chars().any(char::is_control) {
        return Err("must be 16-256 characters without control characters");
    }
    if let Some(encoded) = secret.strip_prefix("whsec_") {
        match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(key) if !key.is_empty() => {}
            _ => return Err("starts with whsec_, so the rest must be base64 (Standard Webhooks)"),
        }
    }
    Ok(())
}

/// The signature headers of a request, owned (a request can then be checked
/// on another thread).
#[derive(Debug, Clone, Default)]
pub struct SignatureHeaderValues {
    pub picloud: Option<String>,
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
}

impl SignatureHeaderValues {
    /// The headers, borrowed.
    pub fn headers(&self) -> SignatureHeaders<'_> {
        SignatureHeaders {
            picloud: self.picloud.as_deref(),
            webhook_id: self.webhook_id.as_deref(),
            webhook_timestamp: self.webhook_timestamp.as_deref(),
            webhook_signature: self.webhook_signature.as_deref(),
        }
    }
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Mismatch,
    Stale,
}

impl SignatureError {
    /// What a client is told: fixed text, never a header value.
    pub fn message(self) -> &'static str {
        match self {
            SignatureError::Missing => {
                "this endpoint is signed: send X-PiCloud-Signature or the Standard Webhooks headers"
            }
            SignatureError::Malformed => "the signature headers are malformed",
            SignatureError::Mismatch => "the signature does not match",
            SignatureError::Stale => {
                "the webhook-timestamp is more than 5 minutes from the server's clock"
            }
        }
    }
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for SignatureError {}

/// Checks `body` against `secret` with whichever scheme the request used.
/// `X-PiCloud-Signature` wins when both are present. Every comparison is
/// `hmac`'s constant-time check over the full MAC length, so an empty or
/// truncated signature fails. `now` is Unix seconds. Returns the scheme that verified.
pub fn verify_signature(
    secret: &str,
    headers: &SignatureHeaders<'_>,
    body: &[u8],
    now: i64,
) -> Result<SignatureScheme, SignatureError> {
    if let Some(header) = headers.picloud {
        let hex_mac = header
            .trim()
            .strip_prefix("sha256=")
            .ok_or(SignatureError::Malformed)?;
        let expected = hex::decode(hex_mac).map_err(|_| SignatureError::Malformed)?;
        let mut mac = keyed(secret.as_bytes());
        mac.update(body);
        return mac
            .verify_slice(&expected)
            .map(|()| SignatureScheme::PiCloud)
            .map_err(|_| SignatureError::Mismatch);
    }
    let Some(signatures) = headers.webhook_signature else {
        return Err(SignatureError::Missing);
    };
    let (Some(id), Some(timestamp)) = (headers.webhook_id, headers.webhook_timestamp) else {
        return Err(SignatureError::Malformed);
    };
    let sent_at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    // Checked: a timestamp near i64's ends must not overflow (the fuzz test found it).
    let skew = now.checked_sub(sent_at).map(i64::unsigned_abs);
    if skew.is_none_or(|s| s > TIMESTAMP_TOLERANCE_SECS.unsigned_abs()) {
        return Err(SignatureError::Stale);
    }
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SignatureError::Mismatch)?,
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = keyed(&key);
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut matched = false;
    for candidate in signatures.split(' ').filter(|s| !s.is_empty()) {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        // Every candidate is checked, matched or not, so timing says nothing
        // about which one matched.
        matched |= mac.clone().verify_slice(&bytes).is_ok();
    }
    if matched {
        Ok(SignatureScheme::StandardWebhooks)
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// Why a body could not be read as an email.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedEmail(pub String);

/// An attachment as the generic JSON shape carries it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonAttachment {
    filename: Option<String>,
    content_type: Option<String>,
    /// The content, base64 (its size and SHA-256 are kept, not the bytes).
    content: Option<String>,
    #[serde(default, deserialize_with = "crate::values::optional_whole_number")]
    size: Option<u64>,
    sha256: Option<String>,
}

/// The generic JSON shape of SPEC §7 (every field but `from` may be absent or null).
#[derive(Deserialize)]
struct JsonEmail {
    from: Option<String>,
    #[serde(default, deserialize_with = "addresses")]
    to: Option<Vec<String>>,
    #[serde(default, deserialize_with = "addresses")]
    cc: Option<Vec<String>>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    message_id: Option<String>,
    #[serde(default, deserialize_with = "attachments")]
    attachments: Option<Vec<JsonAttachment>>,
}

/// `to`/`cc`: one address past what is kept is read (so the cut is seen),
/// the rest skipped without building them.
fn addresses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    d.deserialize_option(CappedList::<String>::new(MAX_LISTED_RECIPIENTS + 1))
}

/// `attachments`: one past the limit is read (so the refusal is seen), the
/// rest skipped without building them.
fn attachments<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<JsonAttachment>>, D::Error> {
    d.deserialize_option(CappedList::<JsonAttachment>::new(MAX_ATTACHMENTS + 1))
}

/// A JSON array (or null) of which only the first `keep` items are built:
/// a 10 MB body of `{}` items must not become gigabytes of structs.
struct CappedList<T> {
    keep: usize,
    item: std::marker::PhantomData<T>,
}

impl<T> CappedList<T> {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            item: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for CappedList<T> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while items.len() < self.keep {
            match seq.next_element::<T>()? {
                Some(item) => items.push(item),
                None => return Ok(Some(items)),
            }
        }
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Some(items))
    }
}

/// Reads the generic JSON shape `{from, to[], cc[], subject, text, html,
/// message_id, attachments[]}` (`from` required). Messages name the problem,
/// never a value.
pub fn parse_json_email(
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<InboundEmail, MalformedEmail> {
    let parsed: JsonEmail = serde_json::from_slice(body).map_err(|e| {
        MalformedEmail(format!(
            "the body is not the JSON email shape ({} at line {}, column {})",
            match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof =>
                    "not JSON",
                _ => "a field of the wrong type",
            },
            e.line(),
            e.column()
        ))
    })?;
    let from = parsed
        .from
        .filter(|f| !f.trim().is_empty())
        .ok_or_else(|| MalformedEmail("from is required".into()))?;
    let to = parsed.to.unwrap_or_default();
    let listed = parsed.attachments.unwrap_or_default();
    if listed.len() > MAX_ATTACHMENTS {
        return Err(MalformedEmail(format!(
            "at most {MAX_ATTACHMENTS} attachments"
        )));
    }
    let mut attachments = Vec::with_capacity(listed.len());
    for attachment in listed {
        let (size, sha256) = match attachment.content {
            Some(content) => {
                let bytes = LENIENT_BASE64
                    .decode(content.as_bytes())
                    .map_err(|_| MalformedEmail("an attachment's content is not base64".into()))?;
                (bytes.len() as u64, hex::encode(Sha256::digest(&bytes)))
            }
            None => (
                attachment.size.unwrap_or(0),
                attachment.sha256.unwrap_or_default(),
            ),
        };
        attachments.push(EmailAttachment {
            filename: attachment.filename,
            content_type: attachment
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            size,
            sha256,
        });
    }
    let (text, text_cut) = capped(parsed.text);
    let (html, html_cut) = capped(parsed.html);
    within_limits(InboundEmail {
        from,
        to,
        cc: parsed.cc.unwrap_or_default(),
        subject: parsed.subject.unwrap_or_default(),
        text,
        html,
        message_id: parsed.message_id,
        received_at,
        attachments,
        tag: None,
        truncated: text_cut || html_cut,
    })
}

/// Reads a raw MIME message (`Content-Type: message/rfc822`). One without
/// headers, or without a `From`, is malformed. Attachments become metadata.
pub fn parse_mime_email(
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<InboundEmail, MalformedEmail> {
    let nested = body
        .windows(b"message/rfc822".len())
        .filter(|w| w.eq_ignore_ascii_case(b"message/rfc822"))
        .count();
    if nested > MAX_NESTED_MESSAGES {
        return Err(MalformedEmail(format!(
            "the MIME message nests more than {MAX_NESTED_MESSAGES} messages"
        )));
    }
    let content_types = body
        .windows(b"content-type".len())
        .filter(|w| w.eq_ignore_ascii_case(b"content-type"))
        .count();
    if content_types > MAX_MIME_CONTENT_TYPES {
        return Err(MalformedEmail(format!(
            "the MIME message has more than {MAX_MIME_CONTENT_TYPES} parts"
        )));
    }
    let boundary_lines = body.windows(3).filter(|w| w == b"\n--").count();
    if boundary_lines > MAX_MIME_BOUNDARY_LINES {
        return Err(MalformedEmail(format!(
            "the MIME message has more than {MAX_MIME_BOUNDARY_LINES} boundary lines"
        )));
    }
    let message = MessageParser::default()
        .parse(body)
        .ok_or_else(|| MalformedEmail("the body is not a MIME message".into()))?;
    if message.headers().is_empty() {
        return Err(MalformedEmail("the MIME message has no headers".into()));
    }
    let from = message
        .from()
        .and_then(|a| a.iter().find_map(mailbox))
        .ok_or_else(|| MalformedEmail("the MIME message has no From".into()))?;
    let list = |addresses: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        addresses
            .map(|a| a.iter().filter_map(mailbox).collect())
            .unwrap_or_default()
    };
    let to = list(message.to());
    let cc = list(message.cc());
    let text = message
        .text_bodies()
        .find(|p| p.is_text() && !p.is_text_html())
        .and_then(|p| p.text_contents())
        .map(str::to_owned);
    let html = message
        .html_bodies()
        .find(|p| p.is_text_html())
        .and_then(|p| p.text_contents())
        .map(str::to_owned);
    let attachments = message
        .attachments()
        .take(MAX_ATTACHMENTS)
        .map(|part| EmailAttachment {
            filename: part.attachment_name().map(str::to_owned),
            content_type: part.content_type().map_or_else(
                || "application/octet-stream".to_owned(),
                |ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                },
            ),
            size: part.contents().len() as u64,
            sha256: hex::encode(Sha256::digest(part.contents())),
        })
        .collect();
    let (text, text_cut) = capped(text);
    let (html, html_cut) = capped(html);
    within_limits(InboundEmail {
        from,
        to,
        cc,
        subject: message.subject().unwrap_or_default().to_owned(),
        text,
        html,
        message_id: message.message_id().map(|id| format!("<{id}>")),
        received_at,
        attachments,
        tag: None,
        truncated: text_cut || html_cut,
    })
}

/// Bytes of a header field kept: RFC 5322's line limit, for an address
/// (with its display name) and a `message_id`.
pub const MAX_FIELD_BYTES: usize = 998;
/// Bytes of a subject kept.
pub const MAX_SUBJECT_BYTES: usize = 4096;
/// Addresses kept of `to`, and of `cc`.
pub const MAX_LISTED_RECIPIENTS: usize = 100;
/// Bytes of an attachment's `filename`, `content_type` and `sha256` kept.
pub const MAX_ATTACHMENT_FIELD_BYTES: usize = 255;

/// The email with every header field within its limit, so one request
/// cannot make an outbox row (per routed trigger) or a handler's strings
/// huge: a `from` over [`MAX_FIELD_BYTES`] is malformed; a longer subject,
/// `message_id` or attachment field is cut, longer addresses and addresses
/// past [`MAX_LISTED_RECIPIENTS`] are dropped, and `truncated` says so.
fn within_limits(mut email: InboundEmail) -> Result<InboundEmail, MalformedEmail> {
    if email.from.len() > MAX_FIELD_BYTES {
        return Err(MalformedEmail(format!(
            "from is longer than {MAX_FIELD_BYTES} bytes"
        )));
    }
    let mut cut = false;
    for list in [&mut email.to, &mut email.cc] {
        let before = list.len();
        list.retain(|address| address.len() <= MAX_FIELD_BYTES);
        list.truncate(MAX_LISTED_RECIPIENTS);
        cut |= list.len() < before;
    }
    cut |= cut_to(&mut email.subject, MAX_SUBJECT_BYTES);
    if let Some(id) = &mut email.message_id {
        if id.len() > MAX_FIELD_BYTES {
            // Cut, but kept distinct: it deduplicates deliveries.
            let digest = hex::encode(Sha256::digest(id.as_bytes()));
            cut_to(id, MAX_FIELD_BYTES - 80);
            id.push_str(" sha256:");
            id.push_str(&digest);
            cut = true;
        }
    }
    for attachment in &mut email.attachments {
        if let Some(name) = &mut attachment.filename {
            cut |= cut_to(name, MAX_ATTACHMENT_FIELD_BYTES);
        }
        cut |= cut_to(&mut attachment.content_type, MAX_ATTACHMENT_FIELD_BYTES);
        cut |= cut_to(&mut attachment.sha256, MAX_ATTACHMENT_FIELD_BYTES);
    }
    email.tag = email.to.iter().find_map(|address| plus_tag(address));
    email.truncated |= cut;
    scrub_nul(&mut email);
    Ok(email)
}

/// Replaces NUL characters (valid in JSON and MIME, refused by PostgreSQL's
/// `jsonb` and `text`) with U+FFFD, in every string of the email.
fn scrub_nul(email: &mut InboundEmail) {
    let scrub = |text: &mut String| {
        if text.contains('\0') {
            *text = text.replace('\0', "\u{FFFD}");
        }
    };
    scrub(&mut email.from);
    email
        .to
        .iter_mut()
        .chain(email.cc.iter_mut())
        .for_each(scrub);
    scrub(&mut email.subject);
    for text in [
        &mut email.text,
        &mut email.html,
        &mut email.message_id,
        &mut email.tag,
    ]
    .into_iter()
    .flatten()
    {
        scrub(text);
    }
    for attachment in &mut email.attachments {
        if let Some(name) = &mut attachment.filename {
            scrub(name);
        }
        scrub(&mut attachment.content_type);
        scrub(&mut attachment.sha256);
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary; whether it did.
fn cut_to(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

/// `Name <address>` or `address`.
fn mailbox(addr: &mail_parser::Addr<'_>) -> Option<String> {
    let address = addr.address()?;
    Some(match addr.name() {
        Some(name) if !name.is_empty() => format!("{name} <{address}>"),
        _ => address.to_owned(),
    })
}

/// `body` cut to [`MAX_BODY_CHARS`], and whether it was.
fn capped(body: Option<String>) -> (Option<String>, bool) {
    match body {
        Some(text) if text.chars().count() > MAX_BODY_CHARS => {
            (Some(text.chars().take(MAX_BODY_CHARS).collect()), true)
        }
        other => (other, false),
    }
}

/// Whether `address` (`addr` or `Name <addr>`) matches a trigger's
/// `recipient_filter`: a local part with `*` wildcards (`support`, `or-0x*`)
/// or `@domain`, compared without case and without the address's `+tag`.
/// `None` when it does not match; `Some(tag)` (the tag, if any) when it does.
pub fn recipient_matches(filter: &str, address: &str) -> Option<Option<String>> {
    let address = address
        .rsplit_once('<')
        .map_or(address, |(_, a)| a.trim_end_matches('>'))
        .trim()
        .to_ascii_lowercase();
    let (local, domain) = address.rsplit_once('@')?;
    let (base, tag) = match local.split_once('+') {
        Some((base, tag)) => (base, Some(tag.to_owned()).filter(|t| !t.is_empty())),
        None => (local, None),
    };
    let filter = filter.trim().to_ascii_lowercase();
    let matched = match filter.strip_prefix('@') {
        Some(wanted) => domain == wanted,
        None => glob(&filter, base),
    };
    matched.then_some(tag)
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The `+tag` of an address's local part (`support+billing@x` → `billing`).
pub fn plus_tag(address: &str) -> Option<String> {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let local = local.rsplit_once('<').map_or(local, |(_, l)| l);
    local
        .split_once('+')
        .map(|(_, tag)| tag.to_owned())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_mime_nesting_of_any_spelling_is_refused_not_a_stack_overflow() {
        let nested = |declaration: &str, depth: usize| {
            let mut body = format!("From: a@b.co\r\n{declaration}\r\n\r\n");
            for _ in 0..depth {
                body.push_str(declaration);
                body.push_str("\r\n\r\n");
            }
            body.push_str("From: a@b.co\r\n\r\nhi\r\n");
            body.into_bytes()
        };
        for declaration in [
            "Content-Type: message/global",
            "Content-Type: multipart/digest; boundary=x",
            "CONTENT-TYPE: message / global",
        ] {
            let refused = parse_mime_email(&nested(declaration, 50_000), Utc::now()).unwrap_err();
            assert!(refused.0.contains("parts"), "{declaration}: {refused}");
            // Just under the limit, the parser's depth is fine on a 2 MiB test thread.
            let _ = parse_mime_email(&nested(declaration, MAX_MIME_CONTENT_TYPES - 2), Utc::now());
        }
        let many_parts = format!(
            "From: a@b.co\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n{}--b--\r\n",
            "--b\r\n\r\n".repeat(MAX_MIME_BOUNDARY_LINES + 1)
        );
        assert!(parse_mime_email(many_parts.as_bytes(), Utc::now())
            .unwrap_err()
            .0
            .contains("boundary lines"));
    }

    #[test]
    fn long_json_lists_are_not_built_past_what_is_kept() {
        let addresses: Vec<String> = (0..150).map(|i| format!("r{i}@example.org")).collect();
        let body = serde_json::json!({"from": "a@b.co", "to": addresses, "cc": null,
            "attachments": vec![serde_json::json!({}); 5000]});
        let parsed: JsonEmail = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(parsed.to.unwrap().len(), MAX_LISTED_RECIPIENTS + 1);
        assert!(parsed.cc.is_none());
        assert_eq!(parsed.attachments.unwrap().len(), MAX_ATTACHMENTS + 1);
        let refused = parse_json_email(body.to_string().as_bytes(), Utc::now()).unwrap_err();
        assert!(refused.0.contains("at most 100 attachments"), "{refused}");
        // A wrong type is still a wrong type.
        assert!(parse_json_email(br#"{"from":"a@b.co","to":"x"}"#, Utc::now()).is_err());
    }

    #[test]
    fn cut_message_ids_stay_distinct_and_stable() {
        let id = |tail: &str| {
            let body = serde_json::json!({"from": "a@b.co",
                "message_id": format!("<{}{tail}>", "x".repeat(2000))});
            parse_json_email(body.to_string().as_bytes(), Utc::now())
                .unwrap()
                .message_id
                .unwrap()
        };
        let (one, two) = (id("1"), id("2"));
        assert!(one.len() <= MAX_FIELD_BYTES, "{}", one.len());
        assert_ne!(one, two);
        assert_eq!(one, id("1"));
    }

    #[test]
    fn nul_characters_become_replacement_characters() {
        let body = br#"{"from":"a\u0000@b.co","to":["x\u0000@y.co"],"subject":"s\u0000",
            "text":"t\u0000","html":"h\u0000","message_id":"<m\u0000>",
            "attachments":[{"filename":"f\u0000","content_type":"c\u0000","content":"aGk="}]}"#;
        let email = parse_json_email(body, Utc::now()).unwrap();
        let json = serde_json::to_string(&email).unwrap();
        assert!(!json.contains("\\u0000"), "{json}");
        assert_eq!(email.subject, "s\u{FFFD}");
        assert_eq!(email.attachments[0].filename.as_deref(), Some("f\u{FFFD}"));
    }

    const SECRET: &str = "a-secret-of-enough-length";

    fn picloud_signature(secret: &[u8], body: &[u8]) -> String {
        let mut mac = keyed(secret);
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn webhook_signature(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
        let mut mac = keyed(key);
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn a_picloud_signature_verifies_and_every_other_fails() {
        let body = br#"{"from":"a@b.co"}"#;
        let good = picloud_signature(SECRET.as_bytes(), body);
        fn headers(value: &str) -> SignatureHeaders<'_> {
            SignatureHeaders {
                picloud: Some(value),
                ..SignatureHeaders::default()
            }
        }
        assert_eq!(
            verify_signature(SECRET, &headers(&good), body, 0),
            Ok(SignatureScheme::PiCloud)
        );
        for (value, error) in [
            ("sha256=", SignatureError::Mismatch),
            (&good[..good.len() - 1], SignatureError::Malformed),
            (&good[..good.len() - 2], SignatureError::Mismatch),
            ("sha1=abcd", SignatureError::Malformed),
            ("sha256=zz", SignatureError::Malformed),
        ] {
            assert_eq!(
                verify_signature(SECRET, &headers(value), body, 0),
                Err(error),
                "{value}"
            );
        }
        assert_eq!(
            verify_signature("another-secret-entirely", &headers(&good), body, 0),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(SECRET, &headers(&good), b"tampered", 0),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(SECRET, &SignatureHeaders::default(), body, 0),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn standard_webhooks_signatures_verify_within_the_window() {
        let body = br#"{"from":"a@b.co"}"#;
        let raw_key = b"0123456789abcdef0123";
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(raw_key)
        );
        let now = 1_700_000_000;
        let good = webhook_signature(raw_key, "msg_1", now, body);
        let ts = now.to_string();
        let check = |sig: &str, ts: &str, at: i64| {
            verify_signature(
                &secret,
                &SignatureHeaders {
                    picloud: None,
                    webhook_id: Some("msg_1"),
                    webhook_timestamp: Some(ts),
                    webhook_signature: Some(sig),
                },
                body,
                at,
            )
        };
        assert_eq!(
            check(&good, &ts, now),
            Ok(SignatureScheme::StandardWebhooks)
        );
        assert_eq!(
            check(&format!("v1,bm9wZQ== {good}"), &ts, now),
            Ok(SignatureScheme::StandardWebhooks),
            "one of several"
        );
        assert_eq!(
            check(&good, &ts, now + 299),
            Ok(SignatureScheme::StandardWebhooks)
        );
        assert_eq!(check(&good, &ts, now + 301), Err(SignatureError::Stale));
        assert_eq!(check(&good, &ts, now - 301), Err(SignatureError::Stale));
        assert_eq!(
            check("v1,", &ts, now),
            Err(SignatureError::Mismatch),
            "empty"
        );
        let truncated = &good[..good.len() - 6];
        assert_eq!(check(truncated, &ts, now), Err(SignatureError::Mismatch));
        assert_eq!(check(&good, "soon", now), Err(SignatureError::Malformed));
        assert_eq!(
            check(&good, &i64::MIN.to_string(), now),
            Err(SignatureError::Stale),
            "no overflow at the ends of the range"
        );
        assert_eq!(check("v2,abc", &ts, now), Err(SignatureError::Mismatch));
        // A secret without the whsec_ prefix is used as it is.
        let plain = webhook_signature(b"plain-secret", "msg_1", now, body);
        assert_eq!(
            verify_signature(
                "plain-secret",
                &SignatureHeaders {
                    picloud: None,
                    webhook_id: Some("msg_1"),
                    webhook_timestamp: Some(&ts),
                    webhook_signature: Some(&plain),
                },
                body,
                now
            ),
            Ok(SignatureScheme::StandardWebhooks)
        );
    }

    #[test]
    fn recipient_filters_match_local_parts_with_wildcards_or_domains() {
        let tag = |t: &str| Some(Some(t.to_owned()));
        assert_eq!(recipient_matches("support", "support@x.io"), Some(None));
        assert_eq!(
            recipient_matches("support", "Support+Billing@x.io"),
            tag("billing")
        );
        assert_eq!(
            recipient_matches("support", "Ann <support+b@x.io>"),
            tag("b")
        );
        assert_eq!(recipient_matches("support", "sales@x.io"), None);
        assert_eq!(recipient_matches("support", "supportx@x.io"), None);
        assert_eq!(recipient_matches("or-0x*", "or-0x1f@x.io"), Some(None));
        assert_eq!(recipient_matches("or-0x*", "or-1x@x.io"), None);
        assert_eq!(recipient_matches("*-team", "dev-team@x.io"), Some(None));
        assert_eq!(recipient_matches("a*b*c", "axxbyyc@x.io"), Some(None));
        assert_eq!(recipient_matches("a*b*c", "axxbyy@x.io"), None);
        assert_eq!(recipient_matches("@x.io", "anyone+t@X.IO"), tag("t"));
        assert_eq!(recipient_matches("@x.io", "anyone@y.io"), None);
        assert_eq!(recipient_matches("support", "not-an-address"), None);
    }

    #[test]
    fn raw_mime_is_read_with_attachments_as_metadata() {
        let at = Utc::now();
        let raw = b"From: Ann <ann@example.com>\r\n\
To: support+billing@example.org\r\n\
Cc: cat@example.org\r\n\
Subject: Help\r\n\
Message-ID: <m1@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain\r\n\
\r\n\
It broke.\r\n\
--b\r\n\
Content-Type: text/plain; name=\"log.txt\"\r\n\
Content-Disposition: attachment; filename=\"log.txt\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
aGVsbG8=\r\n\
--b--\r\n";
        let email = parse_mime_email(raw, at).unwrap();
        assert_eq!(email.from, "Ann <ann@example.com>");
        assert_eq!(email.to, vec!["support+billing@example.org"]);
        assert_eq!(email.cc, vec!["cat@example.org"]);
        assert_eq!(email.subject, "Help");
        assert_eq!(email.text.as_deref().map(str::trim_end), Some("It broke."));
        assert_eq!(email.html, None);
        assert_eq!(email.message_id.as_deref(), Some("<m1@example.com>"));
        assert_eq!(email.tag.as_deref(), Some("billing"));
        assert_eq!(email.attachments.len(), 1);
        assert_eq!(email.attachments[0].filename.as_deref(), Some("log.txt"));
        assert_eq!(email.attachments[0].content_type, "text/plain");
        assert_eq!(email.attachments[0].size, 5);
        let mut nested = b"From: a@b.co\r\nContent-Type: message/rfc822\r\n\r\n".to_vec();
        for _ in 0..100_000 {
            nested.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        nested.extend_from_slice(b"From: a@b.co\r\n\r\nhi\r\n");
        let err = parse_mime_email(&nested, at).unwrap_err();
        assert!(err.0.contains("nests"), "{err}");
        for bad in [
            &b""[..],
            b"no headers at all",
            b"Subject: no sender\r\n\r\nbody",
        ] {
            assert!(
                parse_mime_email(bad, at).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_json_shape_needs_a_sender_and_keeps_attachment_metadata() {
        let at = Utc::now();
        let email = parse_json_email(
            br#"{"from":"Ann <ann@example.com>","to":["support+billing@x.io"],"subject":"Hi",
                "text":"hello","attachments":[{"filename":"a.txt","content_type":"text/plain","content":"aGVsbG8="}]}"#,
            at,
        )
        .unwrap();
        assert_eq!(email.tag.as_deref(), Some("billing"));
        assert_eq!(email.received_at, at);
        assert_eq!(email.attachments[0].size, 5);
        assert_eq!(
            email.attachments[0].sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(!email.truncated);
        for bad in [
            &b"not json"[..],
            br#"{"to":["a@b.co"]}"#,
            br#"{"from":""}"#,
            br#"{"from":"a@b.co","to":"a@b.co"}"#,
            br#"{"from":"a@b.co","attachments":[{"content":"%%%"}]}"#,
        ] {
            assert!(
                parse_json_email(bad, at).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Absent and null fields are empty.
        let sparse = parse_json_email(
            br#"{"from":"a@b.co","to":null,"cc":null,"subject":null,"attachments":null}"#,
            at,
        )
        .unwrap();
        assert!(sparse.to.is_empty() && sparse.cc.is_empty() && sparse.subject.is_empty());
        let long = format!(
            r#"{{"from":"a@b.co","text":"{}"}}"#,
            "x".repeat(MAX_BODY_CHARS + 10)
        );
        let cut = parse_json_email(long.as_bytes(), at).unwrap();
        assert!(cut.truncated);
        assert_eq!(cut.text.unwrap().len(), MAX_BODY_CHARS);
    }
}

/// Arbitrary input through every parser of this module: no panic, whatever
/// the bytes. `PROPTEST_CASES` raises the count for a long run (HANDBACK.md).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn any_header() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            any::<String>().prop_map(Some),
            "(sha256=|v1,)[0-9a-zA-Z+/=]{0,90}( v1,[0-9a-zA-Z+/=]{0,60}){0,3}".prop_map(Some),
            "-?[0-9]{0,20}".prop_map(Some),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn signature_checks_never_panic(
            secret in "(whsec_)?[ -~]{0,64}",
            picloud in any_header(),
            id in any_header(),
            timestamp in any_header(),
            signature in any_header(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            now in any::<i64>(),
        ) {
            let headers = SignatureHeaders {
                picloud: picloud.as_deref(),
                webhook_id: id.as_deref(),
                webhook_timestamp: timestamp.as_deref(),
                webhook_signature: signature.as_deref(),
            };
            let _ = verify_signature(&secret, &headers, &body, now);
        }

        #[test]
        fn body_parsers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_json_email(&body, Utc::now());
            let _ = parse_mime_email(&body, Utc::now());
        }

        #[test]
        fn mime_shaped_input_never_panics(
            headers in proptest::collection::vec("[A-Za-z-]{1,20}: [ -~]{0,80}", 0..12),
            body in "[ -~\r\n]{0,400}",
        ) {
            let raw = format!("{}\r\n\r\n{}", headers.join("\r\n"), body);
            let _ = parse_mime_email(raw.as_bytes(), Utc::now());
        }

        #[test]
        fn recipient_matching_never_panics(filter in any::<String>(), address in any::<String>()) {
            let _ = recipient_matches(&filter, &address);
            let _ = plus_tag(&address);
        }
    }
}
