//! The outbound email contract (SPEC §7): what a script asks to send, the
//! kinds a send fails with, the per-app policy, and the transport underneath
//! the service. Formatting and SMTP live in `manager-core`; this module holds
//! only what every layer needs to agree on.

use crate::{triggers::CallContext, ServiceError};
use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use utoipa::ToSchema;

/// Default `PICLOUD_EMAIL_MAX_MESSAGE_BYTES`: the formatted message's limit.
pub const DEFAULT_EMAIL_MAX_MESSAGE_BYTES: usize = 25 * 1024 * 1024;
/// Longest address accepted, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 320;
/// Most recipients (to, cc and bcc together) of one message.
pub const MAX_RECIPIENTS: usize = 100;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 200;
/// Most entries of a recipient allow-list.
pub const MAX_ALLOW_LIST: usize = 1000;
/// An allow-list entry: an address or `@domain`, printable ASCII, the domain
/// with at least two labels. [`valid_allow_entry`] is the same rule (the
/// OpenAPI document declares this pattern; a test holds them together).
pub const ALLOW_ENTRY_PATTERN: &str = r"^[!-?A-~]*@[!-\-/-?A-~]+(\.[!-\-/-?A-~]+)+$";

/// True when `entry` is an address or an `@domain` an allow-list may hold.
pub fn valid_allow_entry(entry: &str) -> bool {
    let Some((_, domain)) = entry.split_once('@') else {
        return false;
    };
    entry.len() <= MAX_ADDRESS_BYTES
        && entry.bytes().all(|b| b.is_ascii_graphic())
        && !domain.contains('@')
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| !label.is_empty())
}

/// What a script asks to send (`email::send` / `email::send_html`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundEmail {
    /// Defaults to `PICLOUD_EMAIL_FROM`.
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// Defaults to the sender.
    pub reply_to: Option<String>,
    pub subject: String,
    pub text: Option<String>,
    /// Set only by `email::send_html`: the message is multipart/alternative.
    pub html: Option<String>,
    /// The same app and key within 24 h sends once and returns the first id.
    pub idempotency_key: Option<String>,
}

impl OutboundEmail {
    /// Every recipient: to, cc, then bcc.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(String::as_str)
    }
}

/// A sent message: its `Message-ID`, as `email::send` returns it (`#{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEmail {
    pub id: String,
}

/// Why a send failed: the `kind` of the script's exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailFailure {
    /// SMTP is not configured (or its configuration is malformed).
    NotConfigured,
    /// An address that does not parse.
    InvalidAddress,
    /// A recipient outside the app's allow-list.
    RecipientDenied,
    /// The app's daily cap is spent.
    RateLimitedLocal,
    /// The formatted message is above `PICLOUD_EMAIL_MAX_MESSAGE_BYTES`.
    TooLarge,
    /// The relay refused the credentials (SMTP 535).
    AuthFailed,
    /// Worth retrying: no connection, a timeout, an SMTP 4xx reply.
    Transient,
    /// Not worth retrying: an SMTP 5xx reply.
    Permanent,
    /// A malformed call: a missing field, a header with a line break.
    InvalidArgument,
}

impl EmailFailure {
    /// Every kind, for metrics that start at 0.
    pub const ALL: [EmailFailure; 9] = [
        EmailFailure::NotConfigured,
        EmailFailure::InvalidAddress,
        EmailFailure::RecipientDenied,
        EmailFailure::RateLimitedLocal,
        EmailFailure::TooLarge,
        EmailFailure::AuthFailed,
        EmailFailure::Transient,
        EmailFailure::Permanent,
        EmailFailure::InvalidArgument,
    ];

    /// The stable name scripts and metrics see.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailFailure::NotConfigured => "not_configured",
            EmailFailure::InvalidAddress => "invalid_address",
            EmailFailure::RecipientDenied => "recipient_denied",
            EmailFailure::RateLimitedLocal => "rate_limited_local",
            EmailFailure::TooLarge => "too_large",
            EmailFailure::AuthFailed => "auth_failed",
            EmailFailure::Transient => "transient",
            EmailFailure::Permanent => "permanent",
            EmailFailure::InvalidArgument => "invalid_argument",
        }
    }
}

impl fmt::Display for EmailFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An email failure as the service error every bridge converts.
pub fn email_error(failure: EmailFailure, message: impl Into<String>) -> ServiceError {
    ServiceError::Email {
        failure,
        message: message.into(),
    }
}

/// Sends email on behalf of scripts: checks, the app's policy, idempotency,
/// then the transport.
#[async_trait]
pub trait EmailService: Send + Sync {
    /// Sends `email` for the app of `ctx`.
    async fn send(
        &self,
        ctx: &CallContext,
        email: OutboundEmail,
    ) -> Result<SentEmail, ServiceError>;
}

/// A formatted message with its SMTP envelope, ready for a transport.
#[derive(Clone, PartialEq, Eq)]
pub struct RawEmail {
    /// `MAIL FROM`.
    pub sender: String,
    /// `RCPT TO`: every recipient, bcc included.
    pub recipients: Vec<String>,
    /// The RFC 5322 message (bcc not among its headers).
    pub message: Vec<u8>,
}

impl fmt::Debug for RawEmail {
    // The body is the user's data: never in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawEmail")
            .field("sender", &self.sender)
            .field("recipients", &self.recipients.len())
            .field("message_bytes", &self.message.len())
            .finish()
    }
}

/// Why a transport could not deliver a message to its relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// `AuthFailed`, `Transient` or `Permanent`.
    pub failure: EmailFailure,
    /// What happened, without credentials or message content.
    pub message: String,
}

/// Hands formatted messages to a relay: SMTP in production, a recorder in tests.
#[async_trait]
pub trait EmailTransport: Send + Sync {
    /// Delivers `email` to the relay.
    async fn send(&self, email: &RawEmail) -> Result<(), TransportError>;
}

/// The first check of an address, before it is parsed in full: one `@`, a
/// non-empty local part, a dot inside the domain, at most 320 bytes, no
/// whitespace or control characters. The message names `field`, never the value.
pub fn precheck_address(field: &str, address: &str) -> Result<(), ServiceError> {
    let bad = |why: &str| {
        Err(email_error(
            EmailFailure::InvalidAddress,
            format!("{field}: not an email address ({why})"),
        ))
    };
    if address.len() > MAX_ADDRESS_BYTES {
        return bad("longer than 320 bytes");
    }
    if address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("contains whitespace or a control character");
    }
    let mut parts = address.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return bad("it must have exactly one @");
    };
    if local.is_empty() {
        return bad("empty local part");
    }
    if domain.split('.').count() < 2 || domain.split('.').any(str::is_empty) {
        return bad("the domain needs a dot between labels");
    }
    Ok(())
}

/// Refuses a header value with a line break (header injection) or another
/// control character.
pub fn check_header_value(field: &str, value: &str) -> Result<(), ServiceError> {
    if value.chars().any(|c| c == '\r' || c == '\n') {
        return Err(email_error(
            EmailFailure::InvalidArgument,
            format!("{field} must not contain a line break"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(email_error(
            EmailFailure::InvalidArgument,
            format!("{field} must not contain a control character"),
        ));
    }
    Ok(())
}

/// Who an app may send to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RecipientPolicy {
    /// Anyone.
    #[default]
    Unrestricted,
    /// Only these addresses and `@domain`s (lower-cased).
    AllowList(Vec<String>),
}

impl RecipientPolicy {
    /// True when `address` may receive the app's mail: an exact address or its
    /// domain is listed (compared without case).
    pub fn allows(&self, address: &str) -> bool {
        let RecipientPolicy::AllowList(list) = self else {
            return true;
        };
        let address = address.to_ascii_lowercase();
        let domain = address.rsplit_once('@').map(|(_, d)| d);
        list.iter().any(|entry| match entry.strip_prefix('@') {
            Some(allowed) => domain == Some(allowed),
            None => *entry == address,
        })
    }
}

impl Serialize for RecipientPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RecipientPolicy::Unrestricted => serializer.serialize_str("unrestricted"),
            RecipientPolicy::AllowList(list) => list.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RecipientPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Word(String),
            List(Vec<String>),
        }
        match Wire::deserialize(deserializer) {
            Ok(Wire::Word(word)) if word == "unrestricted" => Ok(RecipientPolicy::Unrestricted),
            Ok(Wire::List(list)) => Ok(RecipientPolicy::AllowList(list)),
            _ => Err(serde::de::Error::custom(
                "recipients must be \"unrestricted\" or an array of addresses and @domains",
            )),
        }
    }
}

/// An app's sending policy (`GET/PUT /api/v1/admin/apps/{app_id}/email-policy`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailPolicy {
    /// `"unrestricted"`, or the addresses and `@domain`s every recipient (to,
    /// cc and bcc) must match.
    #[schema(schema_with = recipients_schema)]
    pub recipients: RecipientPolicy,
    /// Most successful sends per UTC day; `null` for no cap.
    #[serde(default, deserialize_with = "daily_cap")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub daily_cap: Option<u32>,
}

/// `"unrestricted"` or an array of allow-list entries, as the OpenAPI document shows it.
fn recipients_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["unrestricted"])),
        )
        .item(
            ArrayBuilder::new()
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(ALLOW_ENTRY_PATTERN))
                        .max_length(Some(MAX_ADDRESS_BYTES)),
                )
                .max_items(Some(MAX_ALLOW_LIST)),
        )
        .description(Some(
            "\"unrestricted\", or the addresses and @domains every recipient (to, cc and bcc) must match",
        ))
        .build()
        .into()
}

/// `daily_cap` as a whole number (`10` or `10.0`) that fits the column.
fn daily_cap<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    crate::values::optional_whole_number(deserializer)?
        .map(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| i32::try_from(*n).is_ok())
                .ok_or_else(|| serde::de::Error::custom("daily_cap must be at most 2147483647"))
        })
        .transpose()
}

impl EmailPolicy {
    /// Checks the allow-list entries and returns the policy with them lower-cased.
    pub fn normalized(self) -> Result<Self, ServiceError> {
        let recipients = match self.recipients {
            RecipientPolicy::Unrestricted => RecipientPolicy::Unrestricted,
            RecipientPolicy::AllowList(list) => {
                if list.len() > MAX_ALLOW_LIST {
                    return Err(ServiceError::InvalidArgument(format!(
                        "recipients holds at most {MAX_ALLOW_LIST} entries"
                    )));
                }
                let mut normalized = Vec::with_capacity(list.len());
                for entry in list {
                    if !valid_allow_entry(&entry) {
                        return Err(ServiceError::InvalidArgument(
                            "recipients: an entry is neither an address nor an @domain (printable ASCII, at most 320 bytes)".into(),
                        ));
                    }
                    normalized.push(entry.to_ascii_lowercase());
                }
                RecipientPolicy::AllowList(normalized)
            }
        };
        if self
            .daily_cap
            .is_some_and(|cap| i32::try_from(cap).is_err())
        {
            return Err(ServiceError::InvalidArgument(
                "daily_cap must be at most 2147483647".into(),
            ));
        }
        Ok(EmailPolicy {
            recipients,
            daily_cap: self.daily_cap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_address_precheck_names_the_field_and_never_the_value() {
        for good in ["a@b.co", "first.last+tag@sub.example.org", "x@a.b.c"] {
            precheck_address("to", good).unwrap();
        }
        let long = format!("{}@example.com", "a".repeat(320));
        for bad in [
            "",
            "plain",
            "a@@b.co",
            "a@b@c.co",
            "@b.co",
            "a@localhost",
            "a@.b.co",
            "a@b.co.",
            "a@b..co",
            "a b@c.co",
            "a@b.co\r\nBcc: x@y.z",
            long.as_str(),
        ] {
            let err = precheck_address("to", bad).unwrap_err();
            assert_eq!(err.kind(), "invalid_address", "{bad:?}");
            assert!(err.to_string().starts_with("to: "), "{err}");
            if !bad.is_empty() {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
    }

    #[test]
    fn header_values_refuse_line_breaks() {
        check_header_value("subject", "Hello\tthere").unwrap();
        for bad in ["a\r\nBcc: x@y.z", "a\nb", "a\rb", "a\u{0}b"] {
            let err = check_header_value("subject", bad).unwrap_err();
            assert_eq!(err.kind(), "invalid_argument");
        }
    }

    #[test]
    fn the_policy_has_the_spec_shape() {
        let open: EmailPolicy =
            serde_json::from_value(json!({"recipients": "unrestricted", "daily_cap": null}))
                .unwrap();
        assert_eq!(open, EmailPolicy::default());
        assert_eq!(
            serde_json::to_value(&open).unwrap(),
            json!({"recipients": "unrestricted", "daily_cap": null})
        );
        let listed: EmailPolicy = serde_json::from_value(
            json!({"recipients": ["Ops@Example.com", "@Example.org"], "daily_cap": 10}),
        )
        .unwrap();
        let listed = listed.normalized().unwrap();
        assert_eq!(
            serde_json::to_value(&listed).unwrap(),
            json!({"recipients": ["ops@example.com", "@example.org"], "daily_cap": 10})
        );
        for bad in [
            json!({"recipients": "everyone"}),
            json!({"recipients": 3}),
            json!({"recipients": "unrestricted", "daily_cap": -1}),
            json!({"recipients": "unrestricted", "extra": 1}),
        ] {
            assert!(
                serde_json::from_value::<EmailPolicy>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let not_an_address: EmailPolicy =
            serde_json::from_value(json!({"recipients": ["nobody"]})).unwrap();
        assert_eq!(
            not_an_address.normalized().unwrap_err().kind(),
            "invalid_argument"
        );
    }

    #[test]
    fn an_allow_list_matches_addresses_and_domains_without_case() {
        let policy =
            RecipientPolicy::AllowList(vec!["ops@example.com".into(), "@example.org".into()]);
        assert!(policy.allows("OPS@example.com"));
        assert!(policy.allows("anyone@EXAMPLE.org"));
        assert!(!policy.allows("dev@example.com"));
        assert!(!policy.allows("a@sub.example.org"), "a domain is exact");
        assert!(!policy.allows("a@evil-example.org"));
        assert!(RecipientPolicy::Unrestricted.allows("anyone@anywhere.io"));
    }

    #[test]
    fn a_raw_email_never_prints_its_body() {
        let raw = RawEmail {
            sender: "a@b.co".into(),
            recipients: vec!["c@d.co".into()],
            message: b"Subject: secret plans\r\n\r\nthe body".to_vec(),
        };
        let shown = format!("{raw:?}");
        assert!(
            !shown.contains("secret plans") && !shown.contains("the body"),
            "{shown}"
        );
    }
}
