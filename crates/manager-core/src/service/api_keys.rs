//! API keys: `pk_` + 256 random bits, shown once, stored as a SHA-256 digest.
//!
//! A fast digest is the right choice here: the key carries 256 bits of
//! entropy, so there is nothing for a slow password hash to protect, and a
//! slow hash on every request would cost more than the request.

use crate::{error::ManagerError, repo};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use picloud_shared::{
    auth::Scope,
    domain::{ApiKeyInfo, CreatedApiKey},
    ids::ApiKeyId,
    names::validate_resource_name,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// The prefix every key carries.
pub const KEY_PREFIX: &str = "pk_";
/// Length of the base64url body of a key (32 bytes, unpadded).
const KEY_BODY_LEN: usize = 43;

/// SHA-256 of a whole key string; the only form in which keys are stored.
pub fn digest_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// True when `key` has the shape of a picloud key (it may still be unknown).
pub fn is_well_formed_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|body| {
        body.len() == KEY_BODY_LEN
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// API key management and lookup.
#[derive(Clone)]
pub struct ApiKeysService {
    pool: PgPool,
}

impl ApiKeysService {
    /// A service over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates a key; the returned value is the only time the key is visible.
    pub async fn create(
        &self,
        name: &str,
        scopes: &[Scope],
    ) -> Result<CreatedApiKey, ManagerError> {
        validate_resource_name("API key", name)?;
        if scopes.is_empty() {
            return Err(ManagerError::Validation(
                "an API key needs at least one scope".into(),
            ));
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let key = generate_key();
        let info = repo::api_keys::insert(
            &self.pool,
            ApiKeyId::new(),
            name,
            &digest_key(&key),
            &scopes,
        )
        .await?;
        Ok(CreatedApiKey { info, key })
    }

    /// The key record matching a presented key, if any.
    pub async fn authenticate(&self, key: &str) -> Result<Option<ApiKeyInfo>, ManagerError> {
        if !is_well_formed_key(key) {
            return Ok(None);
        }
        Ok(repo::api_keys::find_by_digest(&self.pool, &digest_key(key)).await?)
    }

    /// Every key, newest first (never the keys themselves).
    pub async fn list(&self) -> Result<Vec<ApiKeyInfo>, ManagerError> {
        Ok(repo::api_keys::list(&self.pool).await?)
    }

    /// How many keys exist.
    pub async fn count(&self) -> Result<i64, ManagerError> {
        Ok(repo::api_keys::count(&self.pool).await?)
    }

    /// Deletes a key (caches drop it through the change notification and `forget`).
    pub async fn delete(&self, id: ApiKeyId) -> Result<(), ManagerError> {
        if repo::api_keys::delete(&self.pool, id).await? {
            Ok(())
        } else {
            Err(ManagerError::NotFound("API key"))
        }
    }

    /// Records that a key was used (callers rate-limit this).
    pub async fn touch_last_used(&self, id: ApiKeyId) -> Result<(), ManagerError> {
        Ok(repo::api_keys::touch_last_used(&self.pool, id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate_key();
        let b = generate_key();
        assert!(is_well_formed_key(&a), "{a}");
        assert_ne!(a, b);
        assert_ne!(digest_key(&a), digest_key(&b));
    }

    #[test]
    fn malformed_keys_are_recognised() {
        assert!(!is_well_formed_key(""));
        assert!(!is_well_formed_key("pk_short"));
        assert!(!is_well_formed_key(&format!("sk_{}", "a".repeat(43))));
        assert!(!is_well_formed_key(&format!("pk_{}", "a".repeat(44))));
        assert!(!is_well_formed_key(&format!("pk_{}!", "a".repeat(42))));
    }
}
