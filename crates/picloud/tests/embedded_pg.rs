//! The embedded PostgreSQL against the real thing: real `initdb`, real postmasters,
//! real sockets. If PostgreSQL cannot start here, these tests fail; they never skip.
//! Tests run in parallel, each in its own temp data dir; every cluster is stopped at the
//! end of its test, on panic too (by `EmbeddedPostgres`'s `Drop`).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use picloud::embedded_pg::{DataDirLock, EmbeddedError, EmbeddedPostgres};
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// A temp dir under /tmp that the postgres user can search (0711) and a data dir in it that does not exist yet.
fn searchable_data_dir() -> (TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("picloud-epg-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let data_dir = tmp.path().join("data");
    (tmp, data_dir)
}

/// Shows the module's logs in the output of a failing test.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .with_env_filter("picloud=debug")
        .try_init();
}

/// Takes the lock once a dropped holder's release is visible.
///
/// Dropping a `DataDirLock` closes its file, but a process another test forks at that
/// moment holds a copy of the descriptor (and so the flock) until it execs and the
/// close-on-exec flag drops it; tests here spawn `initdb` and `pg_ctl` in parallel, so
/// that window is real. It lasts microseconds; five seconds is far beyond it.
fn acquire_after_release(data_dir: &Path) -> DataDirLock {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(lock) = DataDirLock::try_acquire(data_dir).unwrap() {
            return lock;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the data-dir lock was not released within 5 s of its holder's drop"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

async fn create_note(pg: &EmbeddedPostgres, body: &str) {
    let mut conn = connect(pg.database_url()).await;
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (body text NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ($1)")
        .bind(body)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

async fn notes(pg: &EmbeddedPostgres) -> Vec<String> {
    let mut conn = connect(pg.database_url()).await;
    let rows = sqlx::query_scalar("SELECT body FROM notes ORDER BY body")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows
}

fn postmaster_pid(cluster_dir: &Path) -> i32 {
    let text = fs::read_to_string(cluster_dir.join("postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// Field 6 of /proc/<pid>/stat: the session id.
fn session_of(pid: &str) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(3).unwrap().parse().unwrap()
}

/// A pid that no process has: a child that already exited and was reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Replaces the pid on the first line of a lock file's text.
fn with_pid(lock_text: &str, pid: u32) -> String {
    let rest: Vec<&str> = lock_text.lines().skip(1).collect();
    format!("{pid}\n{}\n", rest.join("\n"))
}

#[tokio::test]
async fn data_survives_stop_and_start() {
    init_logging();
    let (_tmp, data_dir) = searchable_data_dir();
    let lock = DataDirLock::acquire(&data_dir).unwrap();
    let meta = fs::metadata(&data_dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o711);

    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    let cluster = pg.cluster_dir().to_path_buf();
    assert_eq!(cluster, lock.data_dir().join("pg"));
    let cluster_meta = fs::metadata(&cluster).unwrap();
    assert_eq!(cluster_meta.permissions().mode() & 0o777, 0o700);
    if is_root() {
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(cluster_meta.uid(), postgres.uid.as_raw());
    }
    assert!(pg
        .database_url()
        .starts_with("postgres://postgres@localhost/picloud?host=/"));

    // The server is in its own session, and its stdout is the log file, not ours.
    let pid = postmaster_pid(&cluster).to_string();
    assert_ne!(session_of(&pid), session_of("self"));
    let stdout = fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert_eq!(stdout, pg.log_file());

    // Another command finds the running server through its socket.
    let url = EmbeddedPostgres::running_url(&data_dir).unwrap().unwrap();
    assert_eq!(url, pg.database_url());

    create_note(&pg, "kept").await;
    pg.stop().await.unwrap();
    pg.stop().await.unwrap();
    assert!(!cluster.join("postmaster.pid").exists());
    assert_eq!(EmbeddedPostgres::running_url(&data_dir).unwrap(), None);
    drop(pg);

    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    assert_eq!(pg.cluster_dir(), cluster);
    assert_eq!(notes(&pg).await, ["kept"]);
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn second_lock_on_the_same_data_dir_is_refused_until_released() {
    init_logging();
    let (_tmp, data_dir) = searchable_data_dir();
    let first = DataDirLock::acquire(&data_dir).unwrap();

    let err = DataDirLock::acquire(&data_dir).unwrap_err();
    assert!(matches!(err, EmbeddedError::Locked { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("another picloud process"), "{message}");
    assert!(message.contains(&format!(
        "{}",
        first.data_dir().join("picloud.lock").display()
    )));
    assert!(
        message.contains(&format!("(pid {})", std::process::id())),
        "{message}"
    );
    assert!(!message.contains('\n'));
    assert!(DataDirLock::try_acquire(&data_dir).unwrap().is_none());

    drop(first);
    let second = acquire_after_release(&data_dir);
    assert!(DataDirLock::try_acquire(&data_dir).unwrap().is_none());
    drop(second);
    acquire_after_release(&data_dir);
}

#[tokio::test]
async fn server_left_running_by_a_killed_picloud_is_taken_over() {
    init_logging();
    let (_tmp, data_dir) = searchable_data_dir();
    let lock = DataDirLock::acquire(&data_dir).unwrap();
    let pg = EmbeddedPostgres::start(&lock).await.unwrap();
    create_note(&pg, "before the crash").await;
    let cluster = pg.cluster_dir().to_path_buf();
    let orphan = postmaster_pid(&cluster);
    // A killed picloud: its server keeps running, its lock is gone.
    std::mem::forget(pg);
    drop(lock);

    let lock = acquire_after_release(&data_dir);
    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    let fresh = postmaster_pid(&cluster);
    assert_ne!(fresh, orphan);
    assert!(
        fs::read_link(format!("/proc/{orphan}/cwd")).ok().as_deref() != Some(cluster.as_path()),
        "the orphaned postmaster {orphan} still runs"
    );
    assert_eq!(notes(&pg).await, ["before the crash"]);
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn stale_lock_files_do_not_prevent_start() {
    init_logging();
    let (_tmp, data_dir) = searchable_data_dir();
    let lock = DataDirLock::acquire(&data_dir).unwrap();
    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    let cluster = pg.cluster_dir().to_path_buf();
    let pid_file = fs::read_to_string(cluster.join("postmaster.pid")).unwrap();
    let socket_lock = fs::read_to_string(cluster.join(".s.PGSQL.5432.lock")).unwrap();
    create_note(&pg, "survives stale pids").await;
    pg.stop().await.unwrap();
    drop(pg);

    // The pid of a process that is gone: PostgreSQL's own check would cope.
    fs::write(
        cluster.join("postmaster.pid"),
        with_pid(&pid_file, dead_pid()),
    )
    .unwrap();
    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    assert_eq!(notes(&pg).await, ["survives stale pids"]);
    pg.stop().await.unwrap();
    drop(pg);

    // A reused pid that belongs to a live process which is no server: PostgreSQL alone would refuse.
    let alive = std::process::id();
    fs::write(cluster.join("postmaster.pid"), with_pid(&pid_file, alive)).unwrap();
    fs::write(
        cluster.join(".s.PGSQL.5432.lock"),
        with_pid(&socket_lock, alive),
    )
    .unwrap();
    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    assert_eq!(notes(&pg).await, ["survives stale pids"]);
    assert_ne!(postmaster_pid(&cluster), alive as i32);
    pg.stop().await.unwrap();
}

/// Removes a fallback cluster dir at the end of a test (declared before the server, so dropped after it).
struct RemoveDir(Option<PathBuf>);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test]
async fn unreachable_data_dir_puts_the_cluster_under_var_lib_picloud() {
    init_logging();
    // Like /root: as root, the postgres user cannot search it.
    let tmp = tempfile::Builder::new()
        .prefix("picloud-epg-private-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let data_dir = tmp.path().join("data");
    let mut cleanup = RemoveDir(None);
    let lock = DataDirLock::acquire(&data_dir).unwrap();
    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    let cluster = pg.cluster_dir().to_path_buf();
    if !is_root() {
        // Without root, PostgreSQL runs as us and always reaches our own data dir.
        assert_eq!(cluster, lock.data_dir().join("pg"));
        pg.stop().await.unwrap();
        return;
    }
    cleanup.0 = Some(cluster.clone());

    assert!(
        cluster.starts_with("/var/lib/picloud/"),
        "{}",
        cluster.display()
    );
    let name = cluster.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), 16);
    assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    let meta = fs::metadata(&cluster).unwrap();
    assert_eq!(meta.uid(), postgres.uid.as_raw());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert!(!data_dir.join("pg").exists());

    create_note(&pg, "outside the data dir").await;
    assert_eq!(
        EmbeddedPostgres::running_url(&data_dir).unwrap().as_deref(),
        Some(pg.database_url())
    );
    pg.stop().await.unwrap();
    drop(pg);

    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    assert_eq!(pg.cluster_dir(), cluster);
    assert_eq!(notes(&pg).await, ["outside the data dir"]);
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn server_that_cannot_start_fails_with_its_log_line() {
    init_logging();
    let (_tmp, data_dir) = searchable_data_dir();
    let lock = DataDirLock::acquire(&data_dir).unwrap();
    let mut pg = EmbeddedPostgres::start(&lock).await.unwrap();
    let cluster = pg.cluster_dir().to_path_buf();
    let log = pg.log_file().to_path_buf();
    pg.stop().await.unwrap();
    drop(pg);

    let auto_conf = cluster.join("postgresql.auto.conf");
    let mut settings = fs::read_to_string(&auto_conf).unwrap();
    settings.push_str("shared_buffers = 'plenty'\n");
    fs::write(&auto_conf, settings).unwrap();

    let err = EmbeddedPostgres::start(&lock).await.unwrap_err();
    assert!(matches!(err, EmbeddedError::StartFailed { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("shared_buffers"), "{message}");
    assert!(message.contains(&log.display().to_string()), "{message}");
    assert!(!message.contains('\n'), "{message}");
    assert!(!cluster.join("postmaster.pid").exists());
}
