//! Keeps the in-memory caches of every picloud process on one database in step.
//!
//! Database triggers (migration `0003_cache_notify`) announce each committed change
//! to a cached row on channel [`CHANNEL`]; every server listens there and drops the
//! entries the change touches. A process also drops its own entries at once when it
//! makes a change, so this matters for the *other* processes: replicas behind a load
//! balancer, and one-off CLI commands beside a server.
//!
//! If the listening connection is lost, notifications may have been missed while it
//! was down, so every cache is cleared when listening fails and again when it starts.
//! A connection that dies silently (a half-open TCP connection behind a NAT or a
//! failover) would never report an error, so an idle listener probes its connection
//! every [`PROBE_INTERVAL`] and starts over when the probe does not answer.

use crate::{http::auth::AuthCache, script_cache::ScriptCache};
use picloud_executor_core::Executor;
use picloud_shared::ids::{ApiKeyId, AppId, ScriptId};
use serde::Deserialize;
use sqlx::{postgres::PgListener, Executor as _, PgPool};
use std::sync::atomic::{AtomicU64, Ordering};
use std::{sync::Arc, time::Duration};

/// The notification channel the triggers of migration `0003_cache_notify` use.
pub const CHANNEL: &str = "picloud_cache";

/// How long to wait before listening again after an error.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long the listener may sit idle before it checks its connection.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a connection probe may take before the connection counts as dead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What changed, as the triggers announce it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// A key was deleted or its scopes changed.
    ApiKey { id: ApiKeyId },
    /// A script was updated (possibly renamed) or deleted; every name it had.
    Script {
        app_id: AppId,
        id: ScriptId,
        names: Vec<String>,
    },
    /// An app was deleted (its scripts announce their own deletion too).
    App { app_id: AppId },
    /// A table was truncated: anything may be gone.
    All,
}

/// The caches a notification can touch.
#[derive(Clone)]
pub struct Caches {
    /// API keys by digest.
    pub auth: AuthCache,
    /// Scripts by (app, name).
    pub scripts: ScriptCache,
    /// Compiled scripts by (id, version): dropped only to free memory.
    pub executor: Arc<Executor>,
    /// Times every cache was cleared to start over on notifications (a
    /// listening session began, or its connection came back).
    pub resyncs: Arc<AtomicU64>,
}

impl Caches {
    /// Drops what `change` makes stale.
    pub fn apply(&self, change: &Invalidation) {
        match change {
            Invalidation::ApiKey { id } => self.auth.forget(*id),
            Invalidation::Script { app_id, id, names } => {
                for name in names {
                    self.scripts.remove(*app_id, name);
                }
                self.executor.invalidate(*id);
            }
            Invalidation::App { app_id } => self.scripts.remove_app(*app_id),
            Invalidation::All => self.clear(),
        }
    }

    /// How many times the caches started over on notifications: once it grows,
    /// what is loaded stays cached until a notification says otherwise.
    pub fn resync_count(&self) -> u64 {
        self.resyncs.load(Ordering::SeqCst)
    }

    /// Clears every cache because notifications may have been missed, and counts it.
    fn resynced(&self) {
        self.clear();
        self.resyncs.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops everything: for when notifications may have been missed.
    pub fn clear(&self) {
        self.auth.clear();
        self.scripts.clear();
    }

    /// Applies one notification payload; one that cannot be read clears everything.
    pub fn apply_payload(&self, payload: &str) {
        match serde_json::from_str::<Invalidation>(payload) {
            Ok(change) => self.apply(&change),
            Err(error) => {
                tracing::warn!(%error, "unreadable cache notification; clearing every cache");
                self.clear();
            }
        }
    }
}

/// Listens for changes until `pool` is closed; spawn it once per server.
pub async fn listen(pool: PgPool, caches: Caches) {
    loop {
        if pool.is_closed() {
            return;
        }
        match listen_once(&pool, &caches).await {
            Ok(()) => return,
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                // Changes may go by unseen until listening works again: cache nothing stale.
                caches.clear();
                tracing::warn!(%error, "cache notifications interrupted; caches cleared, retrying");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

/// One listening session: `Ok` when the pool closes, `Err` on a failure to retry.
async fn listen_once(pool: &PgPool, caches: &Caches) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Anything cached before listening began may already be stale.
    caches.resynced();
    tracing::debug!(channel = CHANNEL, "listening for cache invalidations");
    loop {
        let next = match tokio::time::timeout(PROBE_INTERVAL, listener.try_recv()).await {
            Ok(next) => next?,
            Err(_idle) => {
                probe(&mut listener).await?;
                continue;
            }
        };
        match next {
            Some(notification) => caches.apply_payload(notification.payload()),
            None => {
                // The connection was lost and re-established: changes may have gone by.
                tracing::warn!("cache notification connection lost; clearing every cache");
                caches.resynced();
            }
        }
    }
}

/// Checks that the listening connection still answers.
async fn probe(listener: &mut PgListener) -> Result<(), sqlx::Error> {
    match tokio::time::timeout(PROBE_TIMEOUT, listener.execute("SELECT 1")).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the cache notification connection did not answer a probe",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_payloads_parse() {
        let app = AppId::new();
        let key = ApiKeyId::new();
        let id = ScriptId::new();
        let script =
            format!(r#"{{"kind":"script","app_id":"{app}","id":"{id}","names":["old","new"]}}"#);
        assert_eq!(
            serde_json::from_str::<Invalidation>(&script).unwrap(),
            Invalidation::Script {
                app_id: app,
                id,
                names: vec!["old".into(), "new".into()]
            }
        );
        assert_eq!(
            serde_json::from_str::<Invalidation>(r#"{"kind":"all"}"#).unwrap(),
            Invalidation::All
        );
        let key_change = format!(r#"{{"kind":"api_key","id":"{key}"}}"#);
        assert_eq!(
            serde_json::from_str::<Invalidation>(&key_change).unwrap(),
            Invalidation::ApiKey { id: key }
        );
        let app_change = format!(r#"{{"kind":"app","app_id":"{app}"}}"#);
        assert_eq!(
            serde_json::from_str::<Invalidation>(&app_change).unwrap(),
            Invalidation::App { app_id: app }
        );
    }
}
