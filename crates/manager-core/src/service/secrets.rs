//! `SecretsService` over PostgreSQL: JSON values sealed with the keyring.
//!
//! `set` serialises to JSON, enforces the size cap on those bytes, then seals
//! with associated data `secret:{app_id}:{name}`; `get` opens and parses, so a
//! string comes back as that string. Plaintext exists only in memory, in
//! buffers zeroized after use, and never in an error or log line.

use crate::{
    error::{is_foreign_key_violation, ManagerError},
    repo::{self, secrets::SealedRow},
};
use async_trait::async_trait;
use picloud_shared::{
    crypto::{Aad, Keyring, Sealed},
    ids::AppId,
    names::validate_dotted_name,
    secrets::{SecretInfo, SecretsService},
    values::capped_json,
    ServiceError,
};
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;

/// Secrets stored in the `secrets` table.
#[derive(Clone)]
pub struct SecretsServiceImpl {
    pool: PgPool,
    keyring: Arc<Keyring>,
    max_value_bytes: usize,
}

impl SecretsServiceImpl {
    /// A service over `pool`, sealing with `keyring`, capping values at `max_value_bytes`.
    pub fn new(pool: PgPool, keyring: Arc<Keyring>, max_value_bytes: usize) -> Self {
        Self {
            pool,
            keyring,
            max_value_bytes,
        }
    }
}

fn db_error(e: sqlx::Error) -> ServiceError {
    if is_foreign_key_violation(&e) {
        return ServiceError::NotFound("app");
    }
    ManagerError::Database(e).into()
}

fn unreadable() -> ServiceError {
    // The detail (which key, why) is logged by the caller without the value.
    ServiceError::Unavailable("the secret could not be decrypted with the configured keys".into())
}

#[async_trait]
impl SecretsService for SecretsServiceImpl {
    async fn get(&self, app: AppId, name: &str) -> Result<Option<Value>, ServiceError> {
        validate_dotted_name("secret", name)?;
        let Some(row) = repo::secrets::get(&self.pool, app, name)
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        let sealed = Sealed::from_stored(&row.key_id, &row.nonce, row.ciphertext).map_err(|e| {
            tracing::error!(app_id = %app, error = %e, "a stored secret is corrupt");
            unreadable()
        })?;
        let plaintext = self
            .keyring
            .open(&sealed, &Aad::Secret { app_id: app, name })
            .map_err(|e| {
                tracing::error!(app_id = %app, error = %e, "a stored secret failed to open");
                unreadable()
            })?;
        let value = serde_json::from_slice(&plaintext).map_err(|_| unreadable())?;
        Ok(Some(value))
    }

    async fn set(&self, app: AppId, name: &str, value: Value) -> Result<SecretInfo, ServiceError> {
        validate_dotted_name("secret", name)?;
        let plaintext = capped_json(&value, self.max_value_bytes)?;
        let sealed = self
            .keyring
            .seal(&plaintext, &Aad::Secret { app_id: app, name })
            .map_err(|e| {
                tracing::error!(error = %e, "sealing a secret failed");
                ServiceError::Unavailable("the secret could not be sealed".into())
            })?;
        let row = SealedRow {
            key_id: sealed.key_id.to_hex(),
            nonce: sealed.nonce.to_vec(),
            ciphertext: sealed.ciphertext,
        };
        repo::secrets::upsert(&self.pool, app, name, &row)
            .await
            .map_err(db_error)
    }

    async fn delete(&self, app: AppId, name: &str) -> Result<bool, ServiceError> {
        validate_dotted_name("secret", name)?;
        repo::secrets::delete(&self.pool, app, name)
            .await
            .map_err(db_error)
    }

    async fn list(&self, app: AppId) -> Result<Vec<SecretInfo>, ServiceError> {
        repo::secrets::list(&self.pool, app).await.map_err(db_error)
    }
}
