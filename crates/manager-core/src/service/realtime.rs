//! Realtime (SPEC §9): each app's signing key (sealed, created on first use,
//! rotated with a grace period), subscriber tokens, and publishing messages
//! to subscribers on every process (`NOTIFY picloud_realtime`).

use crate::{error::ManagerError, repo};
use async_trait::async_trait;
use chrono::{Duration, Utc};
use picloud_shared::{
    crypto::{Aad, Keyring, Sealed},
    ids::AppId,
    realtime::{
        authorize, decode_signing_key, new_token_id, sign, unverified_claims,
        validate_subscription, validate_topics, verify, IssuedToken, KeyFingerprint, KeyState,
        RealtimeService, StoredKeyError, StoredSigningKey, TokenClaims, TokenError,
        MAX_TOKEN_TTL_SECS, SIGNING_KEY_BYTES,
    },
    triggers::CallContext,
    ServiceError,
};
use rand::RngCore;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Bytes of a notification payload past which the message goes through
/// `realtime_messages` (PostgreSQL refuses payloads of 8,000 bytes or more).
pub const MAX_INLINE_NOTIFY_BYTES: usize = 7_000;

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeRefusal {
    /// No such app.
    #[error("no such app")]
    NoApp,
    /// The request's topics are malformed.
    #[error("{0}")]
    BadTopics(String),
    /// The token failed (see [`TokenError`] for 401 or 403).
    #[error("{0}")]
    Token(TokenError),
    #[error("{0}")]
    Manager(#[from] ManagerError),
}

/// A subscriber's verified token: what it grants, which key verified it, and
/// until when its stream may stay open.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub claims: TokenClaims,
    /// The key that verified the token (rotation ends streams it no longer covers).
    pub key: KeyFingerprint,
    /// The token's expiry, or the end of the previous key's grace if sooner (Unix seconds).
    pub open_until: i64,
}

/// An app's keys that verify tokens now: the current one first, then the
/// previous one (and the end of its grace, Unix seconds) while it lasts.
struct AppKeys {
    keys: Vec<Zeroizing<Vec<u8>>>,
    previous_until: Option<i64>,
}

impl AppKeys {
    fn state(&self) -> KeyState {
        KeyState {
            current: self.keys.first().map(|k| KeyFingerprint::of(k)),
            previous: self
                .keys
                .get(1)
                .zip(self.previous_until)
                .map(|(k, until)| (KeyFingerprint::of(k), until)),
        }
    }
}

/// Signing keys, tokens and publishing.
#[derive(Clone)]
pub struct RealtimeServiceImpl {
    pool: PgPool,
    keyring: Arc<Keyring>,
    /// How long a rotated-out key keeps verifying tokens.
    grace_secs: u64,
}

impl RealtimeServiceImpl {
    /// A service over `pool`, sealing keys with `keyring`.
    pub fn new(pool: PgPool, keyring: Arc<Keyring>, grace_secs: u64) -> Self {
        Self {
            pool,
            keyring,
            grace_secs,
        }
    }

    /// The app's keys that verify tokens. With `create`, a first key is made
    /// when the app has none; `NotFound` when there is no such app.
    async fn keys(&self, app: AppId, create: bool) -> Result<AppKeys, ManagerError> {
        let mut row = repo::realtime::signing_key(&self.pool, app.0, false).await?;
        let has_key = row
            .as_ref()
            .is_some_and(|r| r.sealed.is_some() || r.plaintext.is_some());
        if !has_key && create {
            let key = new_signing_key();
            let sealed = self.seal(&key, app)?;
            repo::realtime::create_signing_key(&self.pool, app.0, &sealed).await?;
            // Another first use may have won: read what is stored.
            row = repo::realtime::signing_key(&self.pool, app.0, false).await?;
        }
        match row {
            Some(row) => self.decode(app, &row),
            None if create => Err(ManagerError::NotFound("app")),
            None => Ok(AppKeys {
                keys: Vec::new(),
                previous_until: None,
            }),
        }
    }

    /// The keys a stored row holds.
    fn decode(
        &self,
        app: AppId,
        row: &repo::realtime::SigningKeyRow,
    ) -> Result<AppKeys, ManagerError> {
        let mut keys = Vec::new();
        let current = decode_signing_key(
            StoredSigningKey {
                plaintext: row.plaintext.as_deref(),
                sealed: row.sealed.as_ref().map(opened).transpose()?,
            },
            &self.keyring,
            app,
        )
        .map_err(|e| self.unreadable(e))?;
        keys.extend(current);
        if let Some(previous) = &row.previous {
            let previous = decode_signing_key(
                StoredSigningKey {
                    plaintext: None,
                    sealed: Some(opened(previous)?),
                },
                &self.keyring,
                app,
            )
            .map_err(|e| self.unreadable(e))?;
            keys.extend(previous);
        }
        Ok(AppKeys {
            previous_until: row.previous_until.filter(|_| keys.len() > 1),
            keys,
        })
    }

    /// Which of `app`'s keys verify tokens now (none when it has no key).
    pub async fn key_state(&self, app: AppId) -> Result<KeyState, ManagerError> {
        Ok(self.keys(app, false).await?.state())
    }

    fn unreadable(&self, e: StoredKeyError) -> ManagerError {
        tracing::error!(error = %e, "an app's realtime signing key cannot be used");
        ManagerError::Unavailable("the app's realtime signing key cannot be read".into())
    }

    fn seal(&self, key: &[u8], app: AppId) -> Result<Sealed, ManagerError> {
        self.keyring
            .seal(key, &Aad::Realtime { app_id: app })
            .map_err(|e| {
                tracing::error!(error = %e, "sealing a realtime signing key failed");
                ManagerError::Unavailable("the signing key could not be sealed".into())
            })
    }

    /// A token for `topics` of `app`, valid for `ttl_secs` (1 to 7 days).
    pub async fn mint(
        &self,
        app: AppId,
        topics: Vec<String>,
        ttl_secs: u64,
    ) -> Result<IssuedToken, ManagerError> {
        validate_topics(&topics).map_err(ManagerError::from)?;
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl_secs) {
            return Err(ManagerError::Validation(format!(
                "ttl_secs must be 1-{MAX_TOKEN_TTL_SECS}"
            )));
        }
        let keys = self.keys(app, true).await?;
        let key = keys
            .keys
            .first()
            .ok_or_else(|| ManagerError::Unavailable("the app has no signing key".into()))?;
        let expires_at = Utc::now() + Duration::seconds(ttl_secs as i64);
        let claims = TokenClaims {
            app_id: app.0,
            topics,
            exp: expires_at.timestamp(),
            jti: new_token_id(),
        };
        Ok(IssuedToken {
            token: sign(&claims, key),
            expires_at,
        })
    }

    /// Replaces the app's signing key; tokens signed by the one it replaces
    /// keep verifying for the grace period, and every process ends the
    /// streams they opened when it is over (those of a key rotated out
    /// before it: at once).
    pub async fn rotate(&self, app: AppId) -> Result<(), ManagerError> {
        // A first key, when the app has none yet.
        self.keys(app, true).await?;
        // The row stays locked until the new key is stored: of two rotations
        // at once, the second retires the first's key (not the same one twice).
        let mut tx = self.pool.begin().await?;
        let row = repo::realtime::signing_key(&mut *tx, app.0, true)
            .await?
            .ok_or(ManagerError::NotFound("app"))?;
        let keys = self.decode(app, &row)?;
        let current = keys
            .keys
            .first()
            .ok_or_else(|| ManagerError::Unavailable("the app has no signing key".into()))?;
        let next = new_signing_key();
        let grace = i64::try_from(self.grace_secs).unwrap_or(i64::MAX);
        let rotated = repo::realtime::rotate_signing_key(
            &mut *tx,
            app.0,
            &self.seal(&next, app)?,
            &self.seal(current, app)?,
            grace,
        )
        .await?;
        if !rotated {
            return Err(ManagerError::NotFound("app"));
        }
        // Sent when the transaction commits.
        repo::realtime::notify_keys_changed(&mut *tx, app.0).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks a subscriber's token for `topics` of `app`: 401 kinds for a
    /// malformed, forged or expired token, 403 kinds for a valid token of
    /// another app or without a requested topic.
    pub async fn authorize(
        &self,
        app: AppId,
        token: &str,
        topics: &[String],
    ) -> Result<Authorized, SubscribeRefusal> {
        validate_subscription(topics).map_err(|e| SubscribeRefusal::BadTopics(e.to_string()))?;
        if repo::apps::get(&self.pool, app)
            .await
            .map_err(ManagerError::from)?
            .is_none()
        {
            return Err(SubscribeRefusal::NoApp);
        }
        let claimed = unverified_claims(token).map_err(SubscribeRefusal::Token)?;
        // Checked with the key of the app it names: a genuine token of
        // another app is a 403, anything else that fails a 401.
        let keys = self.keys(AppId(claimed.app_id), false).await?;
        let candidates: Vec<&[u8]> = keys.keys.iter().map(|k| k.as_slice()).collect();
        let now = Utc::now().timestamp();
        let (claims, index) = verify(token, &candidates, now).map_err(SubscribeRefusal::Token)?;
        authorize(&claims, app, topics).map_err(SubscribeRefusal::Token)?;
        let key = KeyFingerprint::of(candidates[index]);
        let open_until = keys
            .state()
            .open_until(key, claims.exp, now)
            .ok_or(SubscribeRefusal::Token(TokenError::Expired))?;
        Ok(Authorized {
            claims,
            key,
            open_until,
        })
    }

    /// Seals every signing key an older install stored in plaintext and
    /// clears the plaintext (the column stays for a later migration to drop); idempotent, and safe
    /// beside other processes doing the same. Returns how many it sealed.
    pub async fn seal_plaintext_keys(&self) -> Result<u64, ManagerError> {
        let mut sealed_total = 0u64;
        loop {
            let mut tx = self.pool.begin().await?;
            let rows = repo::realtime::plaintext_only(&mut tx, 100).await?;
            if rows.is_empty() {
                tx.commit().await?;
                return Ok(sealed_total);
            }
            for (app, key) in rows {
                let mut key = Zeroizing::new(key);
                if key.len() < SIGNING_KEY_BYTES {
                    // Too weak to keep signing with: a fresh key instead (its
                    // tokens stop verifying, which is the point).
                    tracing::warn!(%app, "a plaintext realtime signing key shorter than 32 bytes was replaced; its tokens no longer verify");
                    key = new_signing_key();
                }
                let sealed = self.seal(&key, AppId(app))?;
                repo::realtime::seal_plaintext(&mut tx, app, &sealed).await?;
                sealed_total += 1;
            }
            tx.commit().await?;
        }
    }

    /// Sends `message` on `topic` of `app` to the subscribers of every
    /// process (`NOTIFY`, through a table when too large for a payload).
    pub async fn publish(
        &self,
        app: AppId,
        topic: &str,
        message: &Value,
    ) -> Result<(), ManagerError> {
        publish(&self.pool, app, topic, message).await
    }
}

/// See [`RealtimeServiceImpl::publish`].
pub async fn publish(
    pool: &PgPool,
    app: AppId,
    topic: &str,
    message: &Value,
) -> Result<(), ManagerError> {
    let id = Uuid::new_v4().simple().to_string();
    let text = message.to_string();
    // A header line, then the message's JSON text as it is (compact: one line).
    let inline = format!("{}\n{text}", json!({"a": app.0, "t": topic, "i": id}));
    if inline.len() <= MAX_INLINE_NOTIFY_BYTES {
        repo::realtime::notify(pool, &inline).await?;
    } else {
        repo::realtime::notify_stored(pool, app.0, topic, &id, &text).await?;
    }
    Ok(())
}

/// A fresh random signing key.
fn new_signing_key() -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(vec![0u8; SIGNING_KEY_BYTES]);
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

/// A sealed value as stored, as the keyring takes it.
fn opened(stored: &repo::realtime::StoredSeal) -> Result<Sealed, ManagerError> {
    Sealed::from_stored(&stored.key_id, &stored.nonce, stored.ciphertext.clone()).map_err(|_| {
        tracing::error!("a realtime signing key is stored malformed");
        ManagerError::Unavailable("the app's realtime signing key cannot be read".into())
    })
}

#[async_trait]
impl RealtimeService for RealtimeServiceImpl {
    async fn token(
        &self,
        ctx: &CallContext,
        topics: Vec<String>,
        ttl_secs: u64,
    ) -> Result<IssuedToken, ServiceError> {
        self.mint(ctx.app_id, topics, ttl_secs)
            .await
            .map_err(ServiceError::from)
    }
}
