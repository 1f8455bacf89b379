//! `picloud serve`: start-up order, the listener, and graceful shutdown.
//!
//! Order matters: configuration, then the database (embedded or external)
//! and migrations, then the first admin key (written before the listener
//! accepts anything), then the listener. On SIGTERM or SIGINT the listener
//! stops accepting, in-flight requests get a bounded grace period
//! (`PICLOUD_SHUTDOWN_GRACE_SECS`), and the embedded PostgreSQL is stopped
//! before the process exits with 0 — even if a script thread is still busy:
//! script threads are not joined.

use crate::{
    cache_sync,
    config::Config,
    connections,
    database::{Database, Ownership},
    dispatcher,
    http::{build_router, build_state, Pools},
    scheduler,
};
use anyhow::Context;
use picloud_manager_core::{sealed::check_keys, service::api_keys::ApiKeysService};
use picloud_shared::{auth::Scope, crypto::Keyring};
use std::{io::Write, path::Path, sync::Arc};

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(config: Config, keyring: Keyring) -> anyhow::Result<()> {
    if config.dev_mode {
        tracing::warn!("dev mode is on: meant for local development only");
    }
    if let Some(reason) = &config.app.email.disabled_because {
        tracing::warn!(
            reason = reason.as_str(),
            "outbound email is disabled: every email::send fails with not_configured"
        );
    }
    let database = Database::open(
        &config,
        Ownership::Exclusive,
        Some(config.app.limits.sdk_timeout),
    )
    .await?;
    // A wrong key must never yield garbage later: refuse to start instead.
    if let Err(e) = check_keys(&database.pool, &keyring).await {
        database.close().await;
        return Err(e.into());
    }
    ensure_admin_key(&database, &config.data_dir).await?;

    warn_if_connections_exceed_open_files(config.connections.max_connections);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "PICLOUD_LISTEN: cannot listen on {}; pick a free address",
                config.listen
            )
        })?;
    let pools = Pools {
        system: database.pool.clone(),
        sdk: database.sdk_pool.clone(),
    };
    let state = build_state(pools, config.app.clone(), Arc::new(keyring))
        .context("cannot start the script worker threads")?;
    // Ends by itself when the pool closes at shutdown.
    tokio::spawn(cache_sync::listen(
        database.pool.clone(),
        state.caches.clone(),
    ));
    // Ends by itself when the pool closes at shutdown.
    tokio::spawn(crate::realtime::listen(
        database.pool.clone(),
        state.hub.clone(),
        state.realtime.clone(),
    ));
    tokio::spawn(crate::realtime::seal_plaintext_keys(state.realtime.clone()));
    let dispatcher = dispatcher::start(&state, config.dispatch);
    let (stop_scheduler, scheduler_stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(scheduler::run(database.pool.clone(), scheduler_stopped));
    let hub = state.hub.clone();
    let app = build_router(state);
    tracing::info!(address = %config.listen, "picloud is listening");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = config.connections;
    let server = tokio::spawn(connections::serve(listener, app, limits, async {
        let _ = stop_rx.await;
    }));
    shutdown_signal().await;
    tracing::info!("shutdown signal received: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(());
    let _ = stop_scheduler.send(true);
    // Event streams never end by themselves: end them, or the grace period
    // would always run out while a subscriber is connected.
    hub.close_all();
    let grace = config.shutdown_grace;
    // Handlers and requests wind down together, each within the grace period.
    let (_, _, server) = tokio::join!(dispatcher.shutdown(), scheduler, async {
        tokio::time::timeout(grace, server).await
    });
    match server {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the HTTP server task failed"),
        Err(_) => tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight requests did not finish within the grace period; stopping anyway"
        ),
    }
    database.close().await;
    tracing::info!("picloud stopped");
    Ok(())
}

/// Says so when `PICLOUD_MAX_CONNECTIONS` does not fit the open-file limit
/// (with room for the database and files): the accept loop would run out of
/// descriptors before it reaches the maximum.
fn warn_if_connections_exceed_open_files(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if (max_connections as u64).saturating_add(512) > limit.rlim_cur {
        tracing::warn!(
            max_connections,
            open_file_limit = limit.rlim_cur,
            "PICLOUD_MAX_CONNECTIONS is above what the open-file limit allows (it needs the limit minus 512); raise `ulimit -n` or lower it"
        );
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// On first start (no keys at all) creates an admin key, prints it once and
/// writes it to `<data dir>/admin.key` (0600).
async fn ensure_admin_key(database: &Database, data_dir: &Path) -> anyhow::Result<()> {
    let keys = ApiKeysService::new(database.pool.clone());
    if keys.count().await? > 0 {
        return Ok(());
    }
    let created = keys.create("admin", &[Scope::Admin]).await?;
    let path = data_dir.join("admin.key");
    let saved = create_private_file(&path, format!("{}\n", created.key).as_bytes())
        .with_context(|| format!("cannot write the admin key to {}", path.display()))?;
    if !saved {
        // Another process sharing this data dir wrote its own first key: both keys work.
        tracing::warn!(path = %path.display(), "an admin key file already exists; it was kept");
    }
    // Printed, never logged: this is the one time the key is shown.
    println!(
        "\nFirst start: created an admin API key (shown once; also saved to {}):\n\n    {}\n",
        path.display(),
        created.key
    );
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Creates a file readable by its owner only (0600) holding `contents`,
/// unless it already exists: `Ok(false)` then, and the existing file is left
/// as it is. Two processes racing to create it cannot overwrite each other or
/// see it half-written: the contents go to a private temporary file first,
/// which is then hard-linked into place (a link never replaces a file).
pub fn create_private_file(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = parent.join(format!(
        ".{name}.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}
