//! The trigger registry: create (validated against the app's scripts and the
//! kind's config rules), list, get, delete.

use crate::{error::ManagerError, repo};
use chrono::Utc;
use picloud_shared::domain::TriggerInfo;
use picloud_shared::{
    crypto::{Aad, Keyring, Sealed},
    ids::{ApiKeyId, AppId, ScriptId},
    triggers::{CronSchedule, RetryPolicy, TriggerConfig, TriggerKind},
};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Default `PICLOUD_MAX_TRIGGERS_PER_APP`: with the kv value cap it bounds
/// the outbox bytes one write can enqueue (each trigger gets its own copy).
pub const DEFAULT_MAX_TRIGGERS_PER_APP: u32 = 100;

/// A trigger to create.
pub struct NewTriggerRequest {
    pub script_id: Uuid,
    pub config: TriggerConfig,
    pub retry: Option<RetryPolicy>,
}

/// Triggers stored in the `triggers` table.
#[derive(Clone)]
pub struct TriggersService {
    pool: PgPool,
    keyring: Arc<Keyring>,
    /// The server's public base URL, for `inbound_url`.
    public_url: String,
    max_per_app: u32,
}

impl TriggersService {
    /// A service over `pool`, sealing inbound secrets with `keyring`.
    pub fn new(pool: PgPool, keyring: Arc<Keyring>, public_url: String) -> Self {
        Self {
            pool,
            keyring,
            public_url: public_url.trim_end_matches('/').to_owned(),
            max_per_app: DEFAULT_MAX_TRIGGERS_PER_APP,
        }
    }

    /// The same service allowing `max_per_app` triggers per app.
    pub fn with_max_per_app(mut self, max_per_app: u32) -> Self {
        self.max_per_app = max_per_app;
        self
    }

    /// Registers a trigger of `app` for `request.script_id`, on behalf of `created_by`.
    pub async fn create(
        &self,
        app: AppId,
        request: NewTriggerRequest,
        created_by: Option<ApiKeyId>,
    ) -> Result<TriggerInfo, ManagerError> {
        let config = request.config;
        config.validate()?;
        let kind = config.kind();
        let retry = request.retry.unwrap_or_default();
        retry.validate()?;
        let cron_next_at = match &config {
            TriggerConfig::Cron(c) => {
                let schedule = CronSchedule::parse(&c.schedule)?;
                Some(schedule.next_after(Utc::now()).ok_or_else(|| {
                    ManagerError::Validation("config.schedule never fires".into())
                })?)
            }
            _ => None,
        };
        // One registration of an app at a time, so the count cannot be raced past.
        let mut tx = self.pool.begin().await?;
        if !repo::triggers::lock_app(&mut *tx, app).await? {
            return Err(ManagerError::NotFound("app"));
        }
        let existing = repo::triggers::count(&mut *tx, app).await?;
        if existing >= i64::from(self.max_per_app) {
            return Err(ManagerError::Validation(format!(
                "this app has {existing} triggers, the most one app may have (PICLOUD_MAX_TRIGGERS_PER_APP); delete one first"
            )));
        }
        let script_id = ScriptId(request.script_id);
        if !repo::scripts::exists(&mut *tx, app, script_id).await? {
            return Err(ManagerError::Validation(
                "script_id names no script of this app".into(),
            ));
        }
        if let TriggerConfig::DeadLetter(filter) = &config {
            if let Some(trigger_id) = filter.trigger_id {
                if !repo::triggers::exists(&mut *tx, app, trigger_id).await? {
                    return Err(ManagerError::Validation(
                        "config.trigger_id names no trigger of this app".into(),
                    ));
                }
            }
            if let Some(script_id) = filter.script_id {
                if !repo::scripts::exists(&mut *tx, app, ScriptId(script_id)).await? {
                    return Err(ManagerError::Validation(
                        "config.script_id names no script of this app".into(),
                    ));
                }
            }
        }
        let id = Uuid::new_v4();
        let sealed = match &config {
            TriggerConfig::Email(c) => match &c.inbound_secret {
                Some(secret) => Some(
                    self.keyring
                        .seal(secret.as_bytes(), &Aad::Inbound { trigger_id: id })
                        .map_err(|e| {
                            tracing::error!(error = %e, "sealing an inbound secret failed");
                            ManagerError::Unavailable(
                                "the inbound secret could not be sealed".into(),
                            )
                        })?,
                ),
                None => None,
            },
            _ => None,
        };
        let public_config = config.public_json();
        let row = repo::triggers::insert(
            &mut *tx,
            &repo::triggers::NewTrigger {
                id,
                app_id: app,
                script_id,
                kind,
                config: &public_config,
                retry,
                created_by: created_by.map(|k| k.0),
                inbound_secret: sealed.as_ref(),
                cron_next_at,
            },
        )
        .await
        .map_err(|e| {
            if crate::error::is_foreign_key_violation(&e) {
                // The script or app went away between the checks and the insert.
                ManagerError::Validation("script_id names no script of this app".into())
            } else {
                e.into()
            }
        })?;
        tx.commit().await?;
        Ok(self.info(row))
    }

    /// The app's triggers, newest first.
    pub async fn list(&self, app: AppId) -> Result<Vec<TriggerInfo>, ManagerError> {
        repo::apps::get(&self.pool, app)
            .await?
            .ok_or(ManagerError::NotFound("app"))?;
        let rows = repo::triggers::list(&self.pool, app).await?;
        Ok(rows.into_iter().map(|row| self.info(row)).collect())
    }

    /// One trigger of the app.
    pub async fn get(&self, app: AppId, id: Uuid) -> Result<TriggerInfo, ManagerError> {
        let row = repo::triggers::get(&self.pool, app, id)
            .await?
            .ok_or(ManagerError::NotFound("trigger"))?;
        Ok(self.info(row))
    }

    /// Deletes a trigger and its pending events.
    pub async fn delete(&self, app: AppId, id: Uuid) -> Result<(), ManagerError> {
        if repo::triggers::delete(&self.pool, app, id).await? {
            Ok(())
        } else {
            Err(ManagerError::NotFound("trigger"))
        }
    }

    /// The inbound secret of email trigger `id`, opened; `None` when it is unsigned or no such trigger.
    pub async fn inbound_secret(
        &self,
        id: Uuid,
    ) -> Result<Option<Zeroizing<String>>, ManagerError> {
        let Some(stored) = repo::triggers::inbound_secret(&self.pool, id).await? else {
            return Ok(None);
        };
        let unreadable = |what: &str| {
            tracing::error!(trigger_id = %id, problem = what, "an inbound secret cannot be opened");
            ManagerError::Unavailable(
                "the inbound secret could not be decrypted with the configured keys".into(),
            )
        };
        let sealed = Sealed::from_stored(&stored.key_id, &stored.nonce, stored.ciphertext)
            .map_err(|_| unreadable("corrupt"))?;
        let plain = self
            .keyring
            .open(&sealed, &Aad::Inbound { trigger_id: id })
            .map_err(|_| unreadable("does not open"))?;
        let text = std::str::from_utf8(&plain).map_err(|_| unreadable("not UTF-8"))?;
        Ok(Some(Zeroizing::new(text.to_owned())))
    }

    fn info(&self, row: repo::triggers::TriggerRow) -> TriggerInfo {
        let email = row.kind == TriggerKind::Email;
        TriggerInfo {
            id: row.id,
            app_id: row.app_id.0,
            kind: row.kind,
            script_id: row.script_id.0,
            config: row.config,
            retry: row.retry,
            created_at: row.created_at,
            inbound_url: email
                .then(|| format!("{}/api/v1/email-inbound/{}", self.public_url, row.id)),
            signed: email.then_some(row.signed),
        }
    }
}
