//! Finding the database: `DATABASE_URL`, else the embedded cluster of the data dir.

use crate::{
    config::Config,
    embedded_pg::{DataDirLock, EmbeddedPostgres},
};
use anyhow::{bail, Context};
use picloud_manager_core::MIGRATOR;
use sqlx::{postgres::PgPoolOptions, PgPool};
use std::time::Duration;

/// An open, migrated database and, when embedded, the cluster and lock behind it.
pub struct Database {
    pub pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
    _lock: Option<DataDirLock>,
}

/// Who may share the embedded cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// `serve`: this process must own the data dir.
    Exclusive,
    /// A one-off command: use a running server's cluster, else start one for the command.
    Shared,
}

impl Database {
    /// Opens the database `config` points at and applies migrations.
    pub async fn open(config: &Config, ownership: Ownership) -> anyhow::Result<Self> {
        let (url, embedded, lock) = match &config.database_url {
            Some(url) => (url.clone(), None, None),
            None => {
                let lock = match ownership {
                    Ownership::Exclusive => Some(DataDirLock::acquire(&config.data_dir)?),
                    Ownership::Shared => DataDirLock::try_acquire(&config.data_dir)?,
                };
                match lock {
                    Some(lock) => {
                        let pg = EmbeddedPostgres::start(&lock).await?;
                        (pg.database_url().to_owned(), Some(pg), Some(lock))
                    }
                    None => match EmbeddedPostgres::running_url(&config.data_dir)? {
                        Some(url) => (url, None, None),
                        None => bail!(
                            "the data dir {} is locked by another picloud process but its PostgreSQL is not answering; retry once that process is up or stopped",
                            config.data_dir.display()
                        ),
                    },
                }
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .context("DATABASE_URL: cannot connect to PostgreSQL; check the URL and that the server is up")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("applying database migrations failed")?;
        Ok(Self {
            pool,
            embedded,
            _lock: lock,
        })
    }

    /// Closes the pool and stops an embedded cluster this process started.
    pub async fn close(mut self) {
        // Bounded: a connection wedged on a dead socket must not hold up shutdown.
        if tokio::time::timeout(Duration::from_secs(10), self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections did not close within 10 s; stopping anyway");
        }
        if let Some(pg) = self.embedded.as_mut() {
            if let Err(e) = pg.stop().await {
                tracing::error!(error = %e, "stopping the embedded PostgreSQL failed");
            }
        }
    }
}
