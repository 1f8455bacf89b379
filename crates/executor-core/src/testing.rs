//! In-memory fakes of the service traits, and sources that stress the
//! compiler, for tests and benchmarks (feature `testing`).
//!
//! They keep the same rules as the real services (names and keys validated
//! through `picloud_shared::names`, value size limit, ordering and paging),
//! so a script that passes against them behaves the same against Postgres.

use async_trait::async_trait;
use picloud_shared::ids::AppId;
use picloud_shared::kv::{page_limit, KvPage, KvService};
use picloud_shared::names::{validate_dotted_name, validate_kv_key, validate_kv_list_bounds};
use picloud_shared::triggers::{validate_topic, CallContext};
use picloud_shared::values::capped_json;
use picloud_shared::ServiceError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Default largest stored value, in bytes of JSON (`PICLOUD_KV_MAX_VALUE_BYTES`).
pub const DEFAULT_KV_MAX_VALUE_BYTES: usize = 1024 * 1024;

type Collections = BTreeMap<(AppId, String), BTreeMap<String, Value>>;

/// A `BTreeMap`-backed [`KvService`].
#[derive(Debug)]
pub struct MemoryKv {
    data: Mutex<Collections>,
    max_value_bytes: usize,
    delay: Option<Duration>,
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryKv {
    /// An empty store with the default value size limit.
    pub fn new() -> Self {
        Self {
            data: Mutex::new(BTreeMap::new()),
            max_value_bytes: DEFAULT_KV_MAX_VALUE_BYTES,
            delay: None,
        }
    }

    /// The same store, but every call first sleeps `delay` (to exercise timeouts).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// The same store with another value size limit.
    pub fn with_max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = max;
        self
    }

    /// A stored value, read directly (no validation, no delay).
    pub fn peek(&self, app: AppId, collection: &str, key: &str) -> Option<Value> {
        self.lock()
            .get(&(app, collection.to_owned()))
            .and_then(|c| c.get(key))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Collections> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn pause(&self) {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait]
impl KvService for MemoryKv {
    async fn set(
        &self,
        ctx: &CallContext,
        collection: &str,
        key: &str,
        value: Value,
    ) -> Result<(), ServiceError> {
        let app = ctx.app_id;
        self.pause().await;
        validate_dotted_name("collection", collection)?;
        validate_kv_key(key)?;
        capped_json(&value, self.max_value_bytes)?;
        self.lock()
            .entry((app, collection.to_owned()))
            .or_default()
            .insert(key.to_owned(), value);
        Ok(())
    }

    async fn get(
        &self,
        app: AppId,
        collection: &str,
        key: &str,
    ) -> Result<Option<Value>, ServiceError> {
        self.pause().await;
        validate_dotted_name("collection", collection)?;
        validate_kv_key(key)?;
        Ok(self.peek(app, collection, key))
    }

    async fn delete(
        &self,
        ctx: &CallContext,
        collection: &str,
        key: &str,
    ) -> Result<bool, ServiceError> {
        let app = ctx.app_id;
        self.pause().await;
        validate_dotted_name("collection", collection)?;
        validate_kv_key(key)?;
        Ok(self
            .lock()
            .get_mut(&(app, collection.to_owned()))
            .is_some_and(|c| c.remove(key).is_some()))
    }

    async fn list_page(
        &self,
        app: AppId,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, ServiceError> {
        self.pause().await;
        validate_dotted_name("collection", collection)?;
        validate_kv_list_bounds(prefix, after)?;
        let limit = page_limit(limit);
        let data = self.lock();
        let Some(keys) = data.get(&(app, collection.to_owned())) else {
            return Ok(KvPage {
                keys: Vec::new(),
                next: None,
            });
        };
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut page: Vec<String> = keys
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().cloned()
        } else {
            None
        };
        Ok(KvPage { keys: page, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn pages_follow_prefix_and_cursor() {
        block(async {
            let kv = MemoryKv::new();
            let app = AppId::new();
            for key in ["a1", "a2", "a3", "b1", "a0"] {
                kv.set(&CallContext::for_app(app), "c", key, json!(1))
                    .await
                    .unwrap();
            }
            let first = kv.list_page(app, "c", "a", None, 2).await.unwrap();
            assert_eq!(first.keys, ["a0", "a1"]);
            assert_eq!(first.next.as_deref(), Some("a1"));
            let second = kv.list_page(app, "c", "a", Some("a1"), 2).await.unwrap();
            assert_eq!(second.keys, ["a2", "a3"]);
            assert_eq!(second.next, None);
            let other_app = kv.list_page(AppId::new(), "c", "", None, 10).await.unwrap();
            assert!(other_app.keys.is_empty());
        });
    }

    #[test]
    fn validation_and_size_limit() {
        block(async {
            let kv = MemoryKv::new().with_max_value_bytes(8);
            let app = AppId::new();
            let ctx = CallContext::for_app(app);
            let bad_name = kv.set(&ctx, "a/b", "k", json!(1)).await.unwrap_err();
            assert_eq!(bad_name.kind(), "invalid_argument");
            let bad_key = kv.get(app, "c", "").await.unwrap_err();
            assert_eq!(bad_key.kind(), "invalid_argument");
            let too_large = kv
                .set(&ctx, "c", "k", json!("0123456789"))
                .await
                .unwrap_err();
            assert_eq!(
                too_large,
                ServiceError::TooLarge {
                    limit: 8,
                    actual: 12
                }
            );
        });
    }
}

/// A `BTreeMap`-backed [`SecretsService`](picloud_shared::secrets::SecretsService)
/// holding plain JSON (the real service seals; this one only keeps the rules).
#[derive(Debug)]
pub struct MemorySecrets {
    data: Mutex<BTreeMap<(AppId, String), Value>>,
    max_value_bytes: usize,
}

impl Default for MemorySecrets {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySecrets {
    /// An empty store with the default 64 KiB cap.
    pub fn new() -> Self {
        Self {
            data: Mutex::default(),
            max_value_bytes: picloud_shared::secrets::DEFAULT_SECRET_MAX_VALUE_BYTES,
        }
    }
}

#[async_trait]
impl picloud_shared::secrets::SecretsService for MemorySecrets {
    async fn get(&self, app: AppId, name: &str) -> Result<Option<Value>, ServiceError> {
        validate_dotted_name("secret", name)?;
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(data.get(&(app, name.to_owned())).cloned())
    }

    async fn set(
        &self,
        app: AppId,
        name: &str,
        value: Value,
    ) -> Result<picloud_shared::secrets::SecretInfo, ServiceError> {
        validate_dotted_name("secret", name)?;
        capped_json(&value, self.max_value_bytes)?;
        let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        data.insert((app, name.to_owned()), value);
        Ok(picloud_shared::secrets::SecretInfo {
            name: name.to_owned(),
            updated_at: chrono::Utc::now(),
        })
    }

    async fn delete(&self, app: AppId, name: &str) -> Result<bool, ServiceError> {
        validate_dotted_name("secret", name)?;
        let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(data.remove(&(app, name.to_owned())).is_some())
    }

    async fn list(
        &self,
        app: AppId,
    ) -> Result<Vec<picloud_shared::secrets::SecretInfo>, ServiceError> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(data
            .keys()
            .filter(|(a, _)| *a == app)
            .map(|(_, name)| picloud_shared::secrets::SecretInfo {
                name: name.clone(),
                updated_at: chrono::Utc::now(),
            })
            .collect())
    }
}

/// One message a [`MemoryPubsub`] received.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The context the SDK call passed.
    pub ctx: CallContext,
    /// The topic published to.
    pub topic: String,
    /// The message, as JSON.
    pub message: Value,
}

/// A [`picloud_shared::pubsub::PubsubService`] that records what is published.
#[derive(Debug, Default)]
pub struct MemoryPubsub {
    published: Mutex<Vec<Published>>,
}

impl MemoryPubsub {
    /// Everything published so far, in order.
    pub fn published(&self) -> Vec<Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl picloud_shared::pubsub::PubsubService for MemoryPubsub {
    async fn publish(
        &self,
        ctx: &CallContext,
        topic: &str,
        message: Value,
    ) -> Result<u64, ServiceError> {
        validate_topic(topic)?;
        capped_json(&message, DEFAULT_KV_MAX_VALUE_BYTES)?;
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Published {
                ctx: *ctx,
                topic: topic.to_owned(),
                message,
            });
        Ok(0)
    }
}

/// An [`EmailService`](picloud_shared::email::EmailService) that records
/// what scripts ask to send, and answers with scripted failures when told to.
#[derive(Debug, Default)]
pub struct RecordingEmail {
    sent: Mutex<Vec<(CallContext, picloud_shared::email::OutboundEmail)>>,
    failures: Mutex<Vec<ServiceError>>,
}

impl RecordingEmail {
    /// Everything asked for so far, in order.
    pub fn sent(&self) -> Vec<(CallContext, picloud_shared::email::OutboundEmail)> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes the next send fail with `error`.
    pub fn fail_next(&self, error: ServiceError) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(error);
    }
}

#[async_trait]
impl picloud_shared::email::EmailService for RecordingEmail {
    async fn send(
        &self,
        ctx: &CallContext,
        email: picloud_shared::email::OutboundEmail,
    ) -> Result<picloud_shared::email::SentEmail, ServiceError> {
        let failure = {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        if let Some(error) = failure {
            return Err(error);
        }
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.push((*ctx, email));
        Ok(picloud_shared::email::SentEmail {
            id: format!("<{}@recorded.test>", sent.len()),
        })
    }
}

/// A source Rhai takes long to compile for its size: `lines` shadowing `let`s,
/// each reading the first variable (about 250 ms of parsing for 40,000 lines in
/// a debug build; Rhai's optimiser, which we turn off, took 40 s on it).
pub fn slow_to_compile_source(lines: usize) -> String {
    let mut source = String::from("let a = 0;\n");
    for _ in 0..lines {
        source.push_str("let b = a;\n");
    }
    source
}

/// A [`picloud_shared::realtime::RealtimeService`] signing with one fixed key
/// (`MemoryRealtime::KEY`), checking topics and ttl as the real one does.
#[derive(Debug, Default)]
pub struct MemoryRealtime;

impl MemoryRealtime {
    /// The key every token is signed with.
    pub const KEY: [u8; 32] = [42; 32];
}

#[async_trait]
impl picloud_shared::realtime::RealtimeService for MemoryRealtime {
    async fn token(
        &self,
        ctx: &CallContext,
        topics: Vec<String>,
        ttl_secs: u64,
    ) -> Result<picloud_shared::realtime::IssuedToken, ServiceError> {
        use picloud_shared::realtime::{
            new_token_id, sign, validate_topics, TokenClaims, MAX_TOKEN_TTL_SECS,
        };
        validate_topics(&topics)?;
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl_secs) {
            return Err(ServiceError::InvalidArgument(format!(
                "ttl_secs must be 1-{MAX_TOKEN_TTL_SECS}"
            )));
        }
        let expires_at = chrono::Utc::now() + chrono::Duration::seconds(ttl_secs as i64);
        let claims = TokenClaims {
            app_id: ctx.app_id.0,
            topics,
            exp: expires_at.timestamp(),
            jti: new_token_id(),
        };
        Ok(picloud_shared::realtime::IssuedToken {
            token: sign(&claims, &Self::KEY),
            expires_at,
        })
    }
}
