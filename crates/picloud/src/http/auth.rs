//! Bearer-key authentication with an in-memory cache.
//!
//! Keys are looked up by SHA-256 digest; a hit is served from memory so the
//! hot path of a request never waits on the database. Deleting a key drops it
//! from this process's cache at once and from every other process's through
//! `cache_sync`; a load that raced the delete is not cached (a generation
//! check, as in `script_cache`). `last_used_at` is written off the request
//! path, at most once a minute per key.

use super::{error::ApiError, AppState};
use axum::{extract::FromRequestParts, http::request::Parts};
use picloud_manager_core::service::api_keys::{digest_key, is_well_formed_key, ApiKeysService};
use picloud_shared::{
    auth::{scopes_allow, Capability, Scope},
    ids::ApiKeyId,
};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, RwLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// How often, at most, a key's `last_used_at` is written.
const TOUCH_INTERVAL_SECS: i64 = 60;

/// The caller a request was authenticated as.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: ApiKeyId,
    pub scopes: Arc<[Scope]>,
}

impl Principal {
    /// `Ok` when this caller holds the scope `capability` needs, else 403.
    pub fn require(&self, capability: Capability) -> Result<(), ApiError> {
        if scopes_allow(&self.scopes, capability) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(capability.required_scope()))
        }
    }
}

struct CachedKey {
    principal: Principal,
    last_touch: AtomicI64,
}

#[derive(Default)]
struct Entries {
    by_digest: HashMap<[u8; 32], Arc<CachedKey>>,
    generation: u64,
}

/// Cache of authenticated keys by digest.
#[derive(Clone)]
pub struct AuthCache {
    keys: ApiKeysService,
    entries: Arc<RwLock<Entries>>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl AuthCache {
    /// An empty cache in front of `keys`.
    pub fn new(keys: ApiKeysService) -> Self {
        Self {
            keys,
            entries: Arc::default(),
        }
    }

    /// Resolves a presented key to its principal; `None` when it is unknown.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Principal>, ApiError> {
        if !is_well_formed_key(key) {
            return Ok(None);
        }
        let digest = digest_key(key);
        let (cached, seen) = match self.entries.read() {
            Ok(entries) => (entries.by_digest.get(&digest).cloned(), entries.generation),
            Err(_) => (None, u64::MAX),
        };
        let entry = match cached {
            Some(entry) => entry,
            None => {
                let Some(info) = self.keys.authenticate(key).await? else {
                    return Ok(None);
                };
                let entry = Arc::new(CachedKey {
                    principal: Principal {
                        key_id: info.id,
                        scopes: info.scopes.into(),
                    },
                    last_touch: AtomicI64::new(0),
                });
                if let Ok(mut entries) = self.entries.write() {
                    // A delete since `seen` may have been of this very key: do not cache it.
                    if entries.generation == seen {
                        entries.by_digest.insert(digest, entry.clone());
                    }
                }
                entry
            }
        };
        self.touch(&entry);
        Ok(Some(entry.principal.clone()))
    }

    fn touch(&self, entry: &CachedKey) {
        let now = now_secs();
        let last = entry.last_touch.load(Ordering::Relaxed);
        if now - last < TOUCH_INTERVAL_SECS {
            return;
        }
        // Only the request that wins the swap writes; the rest go on.
        if entry
            .last_touch
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let keys = self.keys.clone();
        let id = entry.principal.key_id;
        tokio::spawn(async move {
            if let Err(e) = keys.touch_last_used(id).await {
                tracing::warn!(key_id = %id, error = %e, "could not record API key use");
            }
        });
    }

    /// Drops a deleted key from the cache.
    pub fn forget(&self, id: ApiKeyId) {
        self.invalidate(|by_digest| by_digest.retain(|_, entry| entry.principal.key_id != id));
    }

    /// Whether a key is cached (for tests and diagnostics).
    pub fn is_cached(&self, id: ApiKeyId) -> bool {
        self.entries
            .read()
            .map(|e| e.by_digest.values().any(|k| k.principal.key_id == id))
            .unwrap_or(false)
    }

    /// Forgets every key (when invalidations from other processes may have been missed).
    pub fn clear(&self) {
        self.invalidate(HashMap::clear);
    }

    fn invalidate(&self, change: impl FnOnce(&mut HashMap<[u8; 32], Arc<CachedKey>>)) {
        if let Ok(mut entries) = self.entries.write() {
            change(&mut entries.by_digest);
            entries.generation = entries.generation.wrapping_add(1);
        }
    }
}

/// The bearer token of a request (an API key, or a realtime subscriber
/// token): `Ok(None)` without an Authorization header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = ApiError::Unauthorized(
        "malformed Authorization header: expected `Authorization: Bearer <token>`",
    );
    let text = value.to_str().map_err(|_| malformed)?;
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(scheme), Some(token), None) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(Some(token))
        }
        _ => Err(ApiError::Unauthorized(
            "malformed Authorization header: expected `Authorization: Bearer <token>`",
        )),
    }
}

/// Authenticates the request's bearer key: 401 when absent, malformed or unknown.
pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let token = bearer_token(&parts.headers)?.ok_or(ApiError::Unauthorized(
        "missing Authorization header: send `Authorization: Bearer pk_...`",
    ))?;
    if !is_well_formed_key(token) {
        return Err(ApiError::Unauthorized(
            "malformed API key: picloud keys look like pk_ followed by 43 characters",
        ));
    }
    state
        .caches
        .auth
        .authenticate(token)
        .await?
        .ok_or(ApiError::Unauthorized("invalid API key"))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).await
    }
}
