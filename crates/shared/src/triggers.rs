//! Triggers and the events they deliver (SPEC §8): kinds, per-kind config,
//! retry policy, validation, and `TriggerEvent` exactly as handlers see it.

use crate::ServiceError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// What fires a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Kv,
    Cron,
    Pubsub,
    Email,
    DeadLetter,
}

impl TriggerKind {
    /// Every kind.
    pub const ALL: [TriggerKind; 5] = [
        TriggerKind::Kv,
        TriggerKind::Cron,
        TriggerKind::Pubsub,
        TriggerKind::Email,
        TriggerKind::DeadLetter,
    ];

    /// The name used in JSON, SQL and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Kv => "kv",
            TriggerKind::Cron => "cron",
            TriggerKind::Pubsub => "pubsub",
            TriggerKind::Email => "email",
            TriggerKind::DeadLetter => "dead_letter",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<TriggerKind> {
        TriggerKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// A kv change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KvOp {
    Set,
    Delete,
}

impl KvOp {
    /// The name used in JSON and SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            KvOp::Set => "set",
            KvOp::Delete => "delete",
        }
    }
}

/// How the wait between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// `base_ms × 2^(attempt - 1)`.
    Exponential,
    /// `base_ms` every time.
    Fixed,
}

impl Backoff {
    /// The name used in JSON and SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Backoff::Exponential => "exponential",
            Backoff::Fixed => "fixed",
        }
    }

    /// The backoff named `name`.
    pub fn parse(name: &str) -> Option<Backoff> {
        [Backoff::Exponential, Backoff::Fixed]
            .into_iter()
            .find(|b| b.as_str() == name)
    }
}

/// Most runs one event may get.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest base delay between attempts: one hour.
pub const MAX_BASE_MS: u64 = 3_600_000;
/// Longest wait between two attempts, whatever the backoff: one day.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(86_400);

/// How often and how patiently a failing handler is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Runs in all, the first included (1-100).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// The first wait, in milliseconds (1-3,600,000).
    #[schema(minimum = 1, maximum = 3600000)]
    pub base_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential,
            base_ms: 1000,
        }
    }
}

impl RetryPolicy {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ServiceError> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(invalid(format!(
                "retry.max_attempts must be 1-{MAX_ATTEMPTS_LIMIT}"
            )));
        }
        if !(1..=MAX_BASE_MS).contains(&self.base_ms) {
            return Err(invalid(format!("retry.base_ms must be 1-{MAX_BASE_MS}")));
        }
        Ok(())
    }

    /// The wait before the next run after `runs_made` failed runs, scaled by
    /// `jitter` (drawn by the caller from 0.5..1.5 so retries of one burst spread out).
    pub fn delay(&self, runs_made: u32, jitter: f64) -> Duration {
        let base = Duration::from_millis(self.base_ms);
        let raw = match self.backoff {
            Backoff::Fixed => base,
            Backoff::Exponential => {
                let doublings = runs_made.saturating_sub(1).min(40);
                base.saturating_mul(1u32 << doublings.min(31))
            }
        };
        raw.min(MAX_RETRY_DELAY).mul_f64(jitter.clamp(0.0, 2.0))
    }
}

/// `kv` trigger config: changes in one collection, optionally under a key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KvTriggerConfig {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub collection: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub key_prefix: Option<String>,
    /// Which changes fire it; both when omitted.
    #[serde(default = "all_kv_ops")]
    #[schema(min_items = 1)]
    pub ops: Vec<KvOp>,
}

fn all_kv_ops() -> Vec<KvOp> {
    vec![KvOp::Set, KvOp::Delete]
}

/// `cron` trigger config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronTriggerConfig {
    /// 5 fields, or 6 with seconds first; UTC.
    #[schema(min_length = 1, max_length = 512)]
    pub schedule: String,
}

/// `pubsub` trigger config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PubsubTriggerConfig {
    /// An exact topic, or `prefix.*` (matches `prefix.a` and `prefix.a.b`, not `prefix`).
    #[schema(
        max_length = 256,
        pattern = "^[A-Za-z0-9_:-]+(\\.[A-Za-z0-9_:-]+)*(\\.\\*)?$"
    )]
    pub topic: String,
}

/// `email` trigger config. `inbound_secret` is write-only: it is sealed and
/// never returned; responses say `signed` instead.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailTriggerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        write_only,
        min_length = 16,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub inbound_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 512,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub recipient_filter: Option<String>,
}

impl std::fmt::Debug for EmailTriggerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailTriggerConfig")
            .field(
                "inbound_secret",
                &self.inbound_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("recipient_filter", &self.recipient_filter)
            .finish()
    }
}

/// The kinds whose events can die (a dead-letter handler's never do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    Kv,
    Cron,
    Pubsub,
    Email,
}

impl EventSource {
    /// The trigger kind of this source.
    pub fn kind(self) -> TriggerKind {
        match self {
            EventSource::Kv => TriggerKind::Kv,
            EventSource::Cron => TriggerKind::Cron,
            EventSource::Pubsub => TriggerKind::Pubsub,
            EventSource::Email => TriggerKind::Email,
        }
    }
}

/// `dead_letter` trigger config: every filter optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterTriggerConfig {
    /// The kind of the trigger whose event died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EventSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_id: Option<Uuid>,
}

/// A trigger's config, checked and typed by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerConfig {
    Kv(KvTriggerConfig),
    Cron(CronTriggerConfig),
    Pubsub(PubsubTriggerConfig),
    Email(EmailTriggerConfig),
    DeadLetter(DeadLetterTriggerConfig),
}

/// Longest key prefix, schedule or recipient filter, in characters.
const MAX_FILTER_CHARS: usize = 512;

impl TriggerConfig {
    /// The kind this config belongs to.
    pub fn kind(&self) -> TriggerKind {
        match self {
            TriggerConfig::Kv(_) => TriggerKind::Kv,
            TriggerConfig::Cron(_) => TriggerKind::Cron,
            TriggerConfig::Pubsub(_) => TriggerKind::Pubsub,
            TriggerConfig::Email(_) => TriggerKind::Email,
            TriggerConfig::DeadLetter(_) => TriggerKind::DeadLetter,
        }
    }

    /// The config as stored and shown: never the email trigger's inbound secret.
    pub fn public_json(&self) -> Value {
        let value = match self {
            TriggerConfig::Kv(c) => serde_json::to_value(c),
            TriggerConfig::Cron(c) => serde_json::to_value(c),
            TriggerConfig::Pubsub(c) => serde_json::to_value(c),
            TriggerConfig::Email(c) => serde_json::to_value(EmailTriggerConfig {
                inbound_secret: None,
                recipient_filter: c.recipient_filter.clone(),
            }),
            TriggerConfig::DeadLetter(c) => serde_json::to_value(c),
        };
        value.unwrap_or(Value::Null)
    }

    /// Checks what the types do not (cron syntax is checked by [`CronSchedule::parse`]).
    pub fn validate(&self) -> Result<(), ServiceError> {
        match self {
            TriggerConfig::Kv(c) => {
                crate::names::validate_dotted_name("collection", &c.collection)?;
                if let Some(prefix) = &c.key_prefix {
                    check_filter("config.key_prefix", prefix, true)?;
                }
                if c.ops.is_empty() {
                    return Err(invalid("config.ops must name at least one of set, delete"));
                }
                if c.ops
                    .iter()
                    .enumerate()
                    .any(|(i, op)| c.ops[..i].contains(op))
                {
                    return Err(invalid("config.ops must not name an op twice"));
                }
            }
            TriggerConfig::Cron(c) => check_filter("config.schedule", &c.schedule, false)?,
            TriggerConfig::Pubsub(c) => validate_topic_pattern(&c.topic)?,
            TriggerConfig::Email(c) => {
                if let Some(secret) = &c.inbound_secret {
                    crate::inbound::validate_inbound_secret(secret)
                        .map_err(|why| invalid(format!("config.inbound_secret {why}")))?;
                }
                if let Some(filter) = &c.recipient_filter {
                    check_filter("config.recipient_filter", filter, false)?;
                }
            }
            TriggerConfig::DeadLetter(_) => {}
        }
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidArgument(message.into())
}

fn check_filter(what: &str, text: &str, may_be_empty: bool) -> Result<(), ServiceError> {
    if (!may_be_empty && text.is_empty())
        || text.chars().count() > MAX_FILTER_CHARS
        || text.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "{what} must be at most {MAX_FILTER_CHARS} characters, without control characters"
        )));
    }
    Ok(())
}

/// Topics: `[A-Za-z0-9_.:-]{1,256}` with no empty segment between dots.
pub fn validate_topic(topic: &str) -> Result<(), ServiceError> {
    let ok = (1..=256).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        && topic.split('.').all(|segment| !segment.is_empty());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "topic must be 1-256 characters of A-Z, a-z, 0-9, '_', '-', ':' or '.', without empty segments",
        ))
    }
}

/// A trigger's topic: a topic, or `prefix.*`, 256 characters in all.
pub fn validate_topic_pattern(pattern: &str) -> Result<(), ServiceError> {
    if pattern.len() > 256 {
        return Err(invalid("config.topic must be at most 256 characters"));
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => validate_topic(prefix),
        None => validate_topic(pattern),
    }
}

/// Whether a trigger topic pattern matches a published topic.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => topic
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        None => pattern == topic,
    }
}

/// A parsed cron schedule: 5 fields, or 6 with seconds first; evaluated in UTC.
#[derive(Debug, Clone)]
pub struct CronSchedule(croner::Cron);

impl CronSchedule {
    /// Parses `pattern`; a bad one is `invalid_argument` naming the rule, not the input.
    pub fn parse(pattern: &str) -> Result<CronSchedule, ServiceError> {
        let fields = pattern.split_whitespace().count();
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build();
        match parser.parse(pattern) {
            Ok(cron) if pattern.starts_with('@') || fields == 5 || fields == 6 => {
                Ok(CronSchedule(cron))
            }
            _ => Err(invalid(
                "config.schedule must be a cron schedule of 5 fields, or 6 with seconds first (UTC)",
            )),
        }
    }

    /// The first tick strictly after `after`, if the schedule ever fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.0.find_next_occurrence(&after, false).ok()
    }
}

/// An attachment of an inbound email: its metadata (the content is not kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmailAttachment {
    pub filename: Option<String>,
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// An inbound email, as an `email` trigger's handler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InboundEmail {
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub message_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub attachments: Vec<EmailAttachment>,
    /// The `+tag` of the recipient address, if any.
    pub tag: Option<String>,
    /// True when something was cut to its limit: `text` or `html`, the
    /// subject, `message_id`, attachment fields, or addresses of `to`/`cc`.
    #[serde(default)]
    pub truncated: bool,
}

/// What a handler receives as `ctx.event` (SPEC §8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TriggerEvent {
    Kv {
        op: KvOp,
        collection: String,
        key: String,
        /// The new value (absent for a delete).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
        /// The value before the change (absent when there was none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<Value>,
    },
    Cron {
        schedule: String,
        fired_at: DateTime<Utc>,
    },
    Pubsub {
        topic: String,
        message: Value,
        published_at: DateTime<Utc>,
    },
    Email {
        email: InboundEmail,
    },
    DeadLetter {
        dead_letter_id: Uuid,
        /// The full event that failed.
        #[schema(no_recursion)]
        original: Box<TriggerEvent>,
        /// Runs made.
        attempts: u32,
        last_error: String,
        trigger_id: Uuid,
        script_id: Uuid,
        first_attempt_at: DateTime<Utc>,
        last_attempt_at: DateTime<Utc>,
    },
}

impl TriggerEvent {
    /// The kind of trigger this event is for.
    pub fn kind(&self) -> TriggerKind {
        match self {
            TriggerEvent::Kv { .. } => TriggerKind::Kv,
            TriggerEvent::Cron { .. } => TriggerKind::Cron,
            TriggerEvent::Pubsub { .. } => TriggerKind::Pubsub,
            TriggerEvent::Email { .. } => TriggerKind::Email,
            TriggerEvent::DeadLetter { .. } => TriggerKind::DeadLetter,
        }
    }
}

/// Who and what an SDK call acts for: passed through the service traits
/// (never a global), so events a handler causes carry its depth and origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    /// The app of the running script: the only app a call can touch.
    pub app_id: crate::ids::AppId,
    /// 0 for an HTTP invoke; a handler runs at its event's depth, and events
    /// it causes get one more.
    pub trigger_depth: u32,
    /// The API key the chain started from (the invoker, or whoever registered
    /// the trigger that started it), if any.
    pub origin_principal: Option<Uuid>,
    /// The trigger chain a handler's calls belong to (the id of the event the
    /// chain started from); `None` outside handlers.
    pub chain_id: Option<i64>,
}

impl CallContext {
    /// The context of a call with no trigger chain behind it (tests, tools).
    pub fn for_app(app_id: crate::ids::AppId) -> Self {
        CallContext {
            app_id,
            trigger_depth: 0,
            origin_principal: None,
            chain_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_have_exactly_the_spec_forms() {
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let kv = TriggerEvent::Kv {
            op: KvOp::Set,
            collection: "c".into(),
            key: "k".into(),
            value: Some(json!(2)),
            previous: Some(json!(1)),
        };
        assert_eq!(
            serde_json::to_value(&kv).unwrap(),
            json!({"kind": "kv", "op": "set", "collection": "c", "key": "k", "value": 2, "previous": 1})
        );
        let delete = TriggerEvent::Kv {
            op: KvOp::Delete,
            collection: "c".into(),
            key: "k".into(),
            value: None,
            previous: None,
        };
        assert_eq!(
            serde_json::to_value(&delete).unwrap(),
            json!({"kind": "kv", "op": "delete", "collection": "c", "key": "k"})
        );
        let cron = TriggerEvent::Cron {
            schedule: "* * * * *".into(),
            fired_at: at,
        };
        assert_eq!(
            serde_json::to_value(&cron).unwrap(),
            json!({"kind": "cron", "schedule": "* * * * *", "fired_at": "2026-12-01T10:00:00Z"})
        );
        let dead = TriggerEvent::DeadLetter {
            dead_letter_id: Uuid::nil(),
            original: Box::new(TriggerEvent::Pubsub {
                topic: "t".into(),
                message: json!({"a": 1}),
                published_at: at,
            }),
            attempts: 3,
            last_error: "boom".into(),
            trigger_id: Uuid::nil(),
            script_id: Uuid::nil(),
            first_attempt_at: at,
            last_attempt_at: at,
        };
        let value = serde_json::to_value(&dead).unwrap();
        assert_eq!(value["kind"], "dead_letter");
        assert_eq!(
            value["original"],
            json!({"kind": "pubsub", "topic": "t", "message": {"a": 1}, "published_at": "2026-12-01T10:00:00Z"})
        );
        assert_eq!(value["attempts"], 3);
        let back: TriggerEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back, dead);
    }

    #[test]
    fn configs_are_checked_by_kind() {
        fn kv(config: serde_json::Value) -> Result<TriggerConfig, String> {
            let typed: KvTriggerConfig =
                serde_json::from_value(config).map_err(|e| e.to_string())?;
            let config = TriggerConfig::Kv(typed);
            config.validate().map_err(|e| e.to_string())?;
            Ok(config)
        }
        let ok = kv(json!({"collection": "orders"})).unwrap();
        assert_eq!(
            ok.public_json(),
            json!({"collection": "orders", "ops": ["set", "delete"]})
        );
        for bad in [
            json!({}),
            json!({"collection": "has space"}),
            json!({"collection": "c", "ops": []}),
            json!({"collection": "c", "ops": ["upsert"]}),
            json!({"collection": "c", "extra": 1}),
            json!({"collection": "c", "key_prefix": "a\u{7}"}),
            json!({"collection": "c", "key_prefix": "é".repeat(513)}),
        ] {
            assert!(kv(bad.clone()).is_err(), "{bad}");
        }
        assert!(kv(json!({"collection": "c", "key_prefix": "é".repeat(512)})).is_ok());
        let pubsub = |topic: &str| {
            TriggerConfig::Pubsub(PubsubTriggerConfig {
                topic: topic.into(),
            })
            .validate()
        };
        assert!(pubsub("a.*").is_ok());
        assert!(pubsub("a..b").is_err());
        assert!(pubsub(&"a".repeat(257)).is_err());
        assert!(pubsub(&format!("{}.*", "a".repeat(254))).is_ok());
        assert!(pubsub(&format!("{}.*", "a".repeat(255))).is_err());
        let email = TriggerConfig::Email(EmailTriggerConfig {
            inbound_secret: Some("0123456789abcdef".into()),
            recipient_filter: None,
        });
        assert!(email.validate().is_ok());
        assert_eq!(email.public_json(), json!({}), "the secret is never shown");
        assert!(!format!("{email:?}").contains("0123456789abcdef"));
        let short = TriggerConfig::Email(EmailTriggerConfig {
            inbound_secret: Some("short".into()),
            recipient_filter: None,
        });
        assert!(short.validate().is_err());
        let control = TriggerConfig::Email(EmailTriggerConfig {
            inbound_secret: Some("\u{1}".repeat(20)),
            recipient_filter: None,
        });
        assert!(control.validate().is_err());
        for (secret, ok) in [
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", true),
            ("whsec_not base64 at all!!", false),
            ("whsec_=================", false),
        ] {
            let config = TriggerConfig::Email(EmailTriggerConfig {
                inbound_secret: Some(secret.into()),
                recipient_filter: None,
            });
            assert_eq!(config.validate().is_ok(), ok, "{secret}");
        }
        let dead: DeadLetterTriggerConfig = serde_json::from_value(json!({})).unwrap();
        assert!(TriggerConfig::DeadLetter(dead).validate().is_ok());
        assert!(serde_json::from_value::<DeadLetterTriggerConfig>(
            json!({"source": "dead_letter"})
        )
        .is_err());
    }

    #[test]
    fn cron_schedules_have_5_or_6_fields_in_utc() {
        let at: DateTime<Utc> = "2026-12-01T10:00:30Z".parse().unwrap();
        let minutely = CronSchedule::parse("* * * * *").unwrap();
        assert_eq!(
            minutely.next_after(at).unwrap(),
            "2026-12-01T10:01:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let every_second = CronSchedule::parse("* * * * * *").unwrap();
        assert_eq!(
            every_second.next_after(at).unwrap(),
            "2026-12-01T10:00:31Z".parse::<DateTime<Utc>>().unwrap()
        );
        let nightly = CronSchedule::parse("0 3 * * *").unwrap();
        assert_eq!(
            nightly.next_after(at).unwrap(),
            "2026-12-02T03:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "nonsense",
            "* * * * 2026 *",
        ] {
            let err = CronSchedule::parse(bad).unwrap_err();
            assert!(err.to_string().contains("5 fields"), "{bad}: {err}");
        }
    }

    #[test]
    fn topics_match_exactly_or_below_a_prefix() {
        assert!(topic_matches("orders", "orders"));
        assert!(!topic_matches("orders", "orders.new"));
        assert!(topic_matches("orders.*", "orders.new"));
        assert!(topic_matches("orders.*", "orders.new.eu"));
        assert!(!topic_matches("orders.*", "orders"));
        assert!(!topic_matches("orders.*", "ordersx.new"));
        assert!(!topic_matches("orders.*", "orders."));
    }

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        let exp = RetryPolicy::default();
        assert_eq!(exp.delay(1, 1.0), Duration::from_millis(1000));
        assert_eq!(exp.delay(2, 1.0), Duration::from_millis(2000));
        assert_eq!(exp.delay(3, 1.0), Duration::from_millis(4000));
        assert_eq!(exp.delay(99, 1.0), MAX_RETRY_DELAY);
        assert_eq!(exp.delay(2, 0.5), Duration::from_millis(1000));
        let fixed = RetryPolicy {
            backoff: Backoff::Fixed,
            ..exp
        };
        assert_eq!(fixed.delay(5, 1.0), Duration::from_millis(1000));
        assert!(RetryPolicy {
            max_attempts: 0,
            ..exp
        }
        .validate()
        .is_err());
        assert!(RetryPolicy { base_ms: 0, ..exp }.validate().is_err());
        assert!(RetryPolicy {
            max_attempts: 101,
            ..exp
        }
        .validate()
        .is_err());
        assert!(exp.validate().is_ok());
    }
}
