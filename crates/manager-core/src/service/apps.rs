//! Creating, listing and deleting apps.

use crate::{
    error::{is_unique_violation, ManagerError},
    repo,
};
use picloud_shared::{domain::App, ids::AppId, names::validate_resource_name};
use sqlx::PgPool;

/// App management.
#[derive(Clone)]
pub struct AppsService {
    pool: PgPool,
}

impl AppsService {
    /// A service over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates an app; names are unique.
    pub async fn create(&self, name: &str) -> Result<App, ManagerError> {
        validate_resource_name("app", name)?;
        repo::apps::insert(&self.pool, AppId::new(), name)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    ManagerError::Conflict("an app with this name already exists".into())
                } else {
                    e.into()
                }
            })
    }

    /// Every app, newest first.
    pub async fn list(&self) -> Result<Vec<App>, ManagerError> {
        Ok(repo::apps::list(&self.pool).await?)
    }

    /// One app.
    pub async fn get(&self, id: AppId) -> Result<App, ManagerError> {
        repo::apps::get(&self.pool, id)
            .await?
            .ok_or(ManagerError::NotFound("app"))
    }

    /// Deletes an app with its scripts and data.
    pub async fn delete(&self, id: AppId) -> Result<(), ManagerError> {
        if !repo::apps::delete(&self.pool, id).await? {
            return Err(ManagerError::NotFound("app"));
        }
        // Its realtime keys went with it: every process ends its streams.
        if let Err(e) = repo::realtime::notify_keys_changed(&self.pool, id.0).await {
            tracing::warn!(error = %e, "a deleted app's realtime streams could not be ended; they end at their tokens' expiry");
        }
        Ok(())
    }
}
