//! Finding the database: `DATABASE_URL`, else the embedded cluster of the data dir.

use crate::{
    config::Config,
    embedded_pg::{DataDirLock, EmbeddedPostgres},
};
use anyhow::{bail, Context};
use picloud_manager_core::MIGRATOR;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    Connection, PgConnection, PgPool,
};
use std::{str::FromStr, time::Duration};

/// Connections of the system pool (admin, dispatcher, scheduler).
const SYSTEM_CONNECTIONS: u32 = 16;

/// A pool of 32 connections; with
/// `statement_timeout`, each connection's statements are cancelled by
/// PostgreSQL past it and a connection is waited for at most as long.
/// Connections are not pinged when taken from the pool: that is a round trip
/// (and a PostgreSQL wake-up) before every statement; a connection that died
/// fails its next statement instead and is dropped.
pub fn pool_options(statement_timeout: Option<Duration>) -> PgPoolOptions {
    let options = PgPoolOptions::new()
        .max_connections(32)
        .test_before_acquire(false);
    let Some(timeout) = statement_timeout else {
        return options.acquire_timeout(Duration::from_secs(5));
    };
    let millis = timeout.as_millis().max(1);
    options
        .acquire_timeout(timeout)
        // A SET (not a startup option), so poolers that refuse startup options work too.
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                sqlx::query(&format!("SET statement_timeout = {millis}"))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
}

/// An open, migrated database and, when embedded, the cluster and lock behind it.
pub struct Database {
    /// Unbounded statements: admin, dispatcher, scheduler, CLI commands.
    pub pool: PgPool,
    /// With `statement_timeout`: the services behind SDK calls (the same as
    /// `pool` when opened without a timeout).
    pub sdk_pool: PgPool,
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
    /// Opens the database `config` points at and applies migrations. With
    /// `statement_timeout`, a second pool (`sdk_pool`) is opened whose
    /// statements PostgreSQL cancels (and rolls back) past it, waiting at most
    /// as long for a connection: the server passes `PICLOUD_SDK_TIMEOUT_MS`,
    /// so an SDK call that times out has not taken effect. CLI commands pass `None`.
    pub async fn open(
        config: &Config,
        ownership: Ownership,
        statement_timeout: Option<Duration>,
    ) -> anyhow::Result<Self> {
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
        let options = PgConnectOptions::from_str(&url)
            .context("DATABASE_URL is not a valid PostgreSQL URL")?;
        // Migrations (and their lock wait) get a connection of their own, unbounded.
        let mut migrating = PgConnection::connect_with(&options).await.context(
            "DATABASE_URL: cannot connect to PostgreSQL; check the URL and that the server is up",
        )?;
        MIGRATOR
            .run(&mut migrating)
            .await
            .context("applying database migrations failed")?;
        // Best effort: the connection is dropped either way.
        let _ = migrating.close().await;
        let pool = pool_options(None)
            .max_connections(SYSTEM_CONNECTIONS)
            .connect_with(options.clone())
            .await
            .context("DATABASE_URL: cannot connect to PostgreSQL; check the URL and that the server is up")?;
        let sdk_pool = match statement_timeout {
            None => pool.clone(),
            Some(timeout) => pool_options(Some(timeout))
                .connect_with(options)
                .await
                .context("DATABASE_URL: cannot connect to PostgreSQL; check the URL and that the server is up")?,
        };
        Ok(Self {
            pool,
            sdk_pool,
            embedded,
            _lock: lock,
        })
    }

    /// Closes the pool and stops an embedded cluster this process started.
    pub async fn close(mut self) {
        // Bounded: a connection wedged on a dead socket must not hold up shutdown.
        let closing = async {
            self.sdk_pool.close().await;
            self.pool.close().await;
        };
        if tokio::time::timeout(Duration::from_secs(10), closing)
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
