//! Saving scripts: names, compile checks, versions.

use crate::{
    error::{is_foreign_key_violation, is_unique_violation, ManagerError},
    repo,
};
use picloud_shared::{
    domain::ScriptWithSource,
    ids::{AppId, ScriptId},
    names::validate_resource_name,
    script::{CheckError, ScriptCompiler},
};
use sqlx::PgPool;
use std::sync::Arc;

/// Script management. Every save compiles the source first.
#[derive(Clone)]
pub struct ScriptsService {
    pool: PgPool,
    compiler: Arc<dyn ScriptCompiler>,
}

/// A removed script's identity, so callers can drop caches keyed by id or name.
#[derive(Debug, Clone)]
pub struct DeletedScript {
    pub id: ScriptId,
    pub name: String,
}

impl ScriptsService {
    /// A service over `pool` that compiles with `compiler`.
    pub fn new(pool: PgPool, compiler: Arc<dyn ScriptCompiler>) -> Self {
        Self { pool, compiler }
    }

    async fn check(&self, app_id: AppId, name: &str, source: &str) -> Result<(), ManagerError> {
        validate_resource_name("script", name)?;
        // PostgreSQL text cannot hold a NUL; say so instead of failing at the insert.
        if source.contains('\0') {
            return Err(ManagerError::Validation(
                "script source must not contain the NUL character".into(),
            ));
        }
        self.compiler
            .check(app_id, source)
            .await
            .map_err(|err| match err {
                CheckError::Compile(e) => ManagerError::Compile(e),
                CheckError::Refused(e) => e.into(),
            })
    }

    /// Creates a script in an app.
    pub async fn create(
        &self,
        app_id: AppId,
        name: &str,
        source: &str,
        public: bool,
    ) -> Result<ScriptWithSource, ManagerError> {
        self.check(app_id, name, source).await?;
        repo::scripts::insert(&self.pool, ScriptId::new(), app_id, name, source, public)
            .await
            .map_err(map_write_error)
    }

    /// An app's scripts, newest first.
    pub async fn list(&self, app_id: AppId) -> Result<Vec<ScriptWithSource>, ManagerError> {
        if repo::apps::get(&self.pool, app_id).await?.is_none() {
            return Err(ManagerError::NotFound("app"));
        }
        Ok(repo::scripts::list(&self.pool, app_id).await?)
    }

    /// One script with its source.
    pub async fn get(&self, app_id: AppId, id: ScriptId) -> Result<ScriptWithSource, ManagerError> {
        repo::scripts::get(&self.pool, app_id, id)
            .await?
            .ok_or(ManagerError::NotFound("script"))
    }

    /// One script by name, for invocation.
    pub async fn get_by_name(
        &self,
        app_id: AppId,
        name: &str,
    ) -> Result<ScriptWithSource, ManagerError> {
        repo::scripts::get_by_name(&self.pool, app_id, name)
            .await?
            .ok_or(ManagerError::NotFound("script"))
    }

    /// Replaces a script; `public: None` keeps the flag. The version grows by one.
    pub async fn update(
        &self,
        app_id: AppId,
        id: ScriptId,
        name: &str,
        source: &str,
        public: Option<bool>,
    ) -> Result<(ScriptWithSource, String), ManagerError> {
        self.check(app_id, name, source).await?;
        let mut tx = self.pool.begin().await?;
        let previous = repo::scripts::get(&mut *tx, app_id, id)
            .await?
            .ok_or(ManagerError::NotFound("script"))?;
        let updated = repo::scripts::update(&mut *tx, app_id, id, name, source, public)
            .await
            .map_err(map_write_error)?
            .ok_or(ManagerError::NotFound("script"))?;
        tx.commit().await?;
        Ok((updated, previous.script.name))
    }

    /// Deletes a script.
    pub async fn delete(&self, app_id: AppId, id: ScriptId) -> Result<DeletedScript, ManagerError> {
        let name = repo::scripts::delete(&self.pool, app_id, id)
            .await?
            .ok_or(ManagerError::NotFound("script"))?;
        Ok(DeletedScript { id, name })
    }
}

fn map_write_error(e: sqlx::Error) -> ManagerError {
    if is_unique_violation(&e) {
        ManagerError::Conflict("a script with this name already exists in the app".into())
    } else if is_foreign_key_violation(&e) {
        ManagerError::NotFound("app")
    } else {
        e.into()
    }
}
