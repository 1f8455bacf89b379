//! The private PostgreSQL cluster picloud starts and owns when no `DATABASE_URL` is set.
//!
//! This module owns three things: the exclusive lock on `PICLOUD_DATA_DIR`
//! ([`DataDirLock`]), the life cycle of the cluster (create, recover, start, stop:
//! [`EmbeddedPostgres`]), and the way another picloud command reaches a cluster a
//! running server owns ([`EmbeddedPostgres::running_url`]).
//!
//! # Why a lock
//!
//! Two picloud processes on one data dir would fight over one cluster: the second
//! would "recover" the first one's live postmaster. So a process takes an exclusive
//! `flock` on `<data_dir>/picloud.lock` for as long as it uses the dir. The kernel drops
//! the lock when the process dies, however it dies, so the lock also answers "is a
//! PostgreSQL I find here orphaned?": whoever holds the lock and finds a postmaster of
//! its cluster still running knows a killed picloud left it behind, stops it and starts
//! it again. The lock file is opened close-on-exec, so no child ever holds it.
//!
//! # Why another user
//!
//! PostgreSQL refuses to run as root. When picloud is root it runs `initdb`, `pg_ctl`
//! and the server as the `postgres` user (setuid/setgid in the child; std also drops
//! the supplementary groups, so only that user's primary group counts), with `/` as
//! working directory so a root-only cwd is never in the way. Otherwise everything runs
//! as the current user. Children get a scrubbed environment (no stray `PG*` variables)
//! and their own process group; `pg_ctl` puts the postmaster in its own session with
//! its output in `<cluster>/postgresql.log` and stdin from `/dev/null`, so it never holds
//! our stdout/stderr (a pipe it inherited would keep CI waiting) and a terminal Ctrl-C
//! reaches only picloud, which then stops PostgreSQL itself.
//!
//! # Where the cluster lives, and why a fallback
//!
//! The cluster is `<data_dir>/pg` (mode 0700, owned by the user PostgreSQL runs as).
//! When picloud is root, the `postgres` user must be able to search every directory
//! down to the data dir; a data dir under `/root` (mode 0700) is out of its reach. The
//! cluster then lives in `/var/lib/picloud/<first 16 hex of sha256(absolute data dir)>/`
//! instead, and picloud says so at start; key files stay in the data dir. The same
//! fallback is used when `<cluster>/.s.PGSQL.5432` would exceed the 107-byte Unix
//! socket path limit. Once a cluster exists, it is used where it is, so the choice never
//! flips between starts.
//!
//! The server listens on no TCP address, only on a Unix socket in the cluster dir
//! (`unix_socket_permissions = 0700` inside a 0700 directory), so no other local user
//! can connect, which is what makes `trust` authentication acceptable. Its settings live
//! in `<cluster>/picloud.conf`, included from `postgresql.conf` and rewritten on every
//! start so a moved data dir keeps working. A fresh cluster is created by `initdb` in a
//! sibling `*.init` directory and renamed into place, so an interrupted `initdb` never
//! leaves a half-made cluster behind.
//!
//! Finding stale state relies on Linux `/proc`: processes whose working directory is the
//! cluster and whose name is `postgres` belong to it (the postmaster and its backends
//! `chdir` there). A lock file (`postmaster.pid`, the socket's `.lock`) left by a
//! cluster with no such process is removed; with such processes still around it is not.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::fs::{chown, DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection as _;

/// Name of the lock file inside the data dir.
const LOCK_FILE: &str = "picloud.lock";
/// Name of the cluster directory inside the data dir.
const CLUSTER_SUBDIR: &str = "pg";
/// Parent of the clusters whose data dir the `postgres` user cannot reach.
const FALLBACK_ROOT: &str = "/var/lib/picloud";
/// The database picloud uses inside the cluster.
const DATABASE: &str = "picloud";
/// The cluster's superuser, which picloud connects as.
const SUPERUSER: &str = "postgres";
/// The OS user PostgreSQL runs as when picloud is root.
const OS_USER: &str = "postgres";
/// Port number; it only names the socket file since there is no TCP listener.
const PORT: u16 = 5432;
/// File name of the server's Unix socket inside the socket directory.
const SOCKET_FILE: &str = ".s.PGSQL.5432";
/// Longest socket path `sockaddr_un` holds (108 bytes with the terminating NUL).
const SOCKET_PATH_MAX: usize = 107;
/// How long the server may take to start or stop.
const PG_TIMEOUT: Duration = Duration::from_secs(30);
/// Server log inside the cluster dir.
const LOG_FILE: &str = "postgresql.log";
/// The log is moved to `postgresql.log.1` at start once it is larger than this.
const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Settings file inside the cluster dir, rewritten on every start.
const SETTINGS_FILE: &str = "picloud.conf";
/// Lock files a server leaves in the cluster dir (which is also its socket dir).
const SERVER_LOCK_FILES: [&str; 2] = ["postmaster.pid", ".s.PGSQL.5432.lock"];
/// `PATH` for the children: PostgreSQL finds its own binaries, `pg_ctl` needs `/bin/sh`.
const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Errors with one clear line each (they are printed as the fatal start-up error).
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Another process holds the data dir lock.
    #[error(
        "another picloud process{} is using data dir {} (lock file {}); stop it or pick another PICLOUD_DATA_DIR",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        data_dir.display(),
        lock_file.display()
    )]
    Locked {
        /// The data dir.
        data_dir: PathBuf,
        /// The lock file another process holds.
        lock_file: PathBuf,
        /// The pid recorded in the lock file, if readable.
        pid: Option<u32>,
    },
    /// A file system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No PostgreSQL server binaries on this machine.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via `pg_config --bindir` or in /usr/lib/postgresql/*/bin; install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL"
    )]
    BinariesNotFound,
    /// picloud is root and there is no `postgres` user to run PostgreSQL as.
    #[error(
        "picloud runs as root, which PostgreSQL refuses, and there is no `postgres` user to run it as; install PostgreSQL (e.g. `apt-get install postgresql`, which creates the user) or set DATABASE_URL"
    )]
    NoPostgresUser,
    /// Looking up the `postgres` user failed.
    #[error("could not look up the `postgres` user: {0}")]
    UserLookup(#[source] nix::Error),
    /// The socket path would not fit in a Unix socket address.
    #[error(
        "the PostgreSQL socket path {} would be {len} bytes, over the {SOCKET_PATH_MAX}-byte Unix limit; use a shorter PICLOUD_DATA_DIR",
        path.display()
    )]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// A path PostgreSQL's tools cannot handle.
    #[error(
        "the path {} is not valid UTF-8 or contains one of \" $ ` \\ or a newline, which pg_ctl cannot quote; use another PICLOUD_DATA_DIR",
        path.display()
    )]
    UnsupportedPath {
        /// The offending path.
        path: PathBuf,
    },
    /// The cluster directory exists but holds no cluster.
    #[error(
        "{} exists but is not a PostgreSQL cluster (no PG_VERSION); move it away so picloud can create one",
        path.display()
    )]
    NotACluster {
        /// The directory.
        path: PathBuf,
    },
    /// An existing cluster in the data dir cannot be used where it is.
    #[error(
        "the PostgreSQL cluster {} cannot be used: {reason}; fix that or move the data dir",
        cluster.display()
    )]
    ClusterUnusable {
        /// The cluster directory.
        cluster: PathBuf,
        /// Why, e.g. "the postgres user cannot search /root".
        reason: String,
    },
    /// The cluster is owned by another user than the one PostgreSQL runs as.
    #[error(
        "the PostgreSQL cluster {} is owned by uid {owner}, but PostgreSQL runs as uid {expected}; fix it with `chown -R {expected} {}`",
        path.display(),
        path.display()
    )]
    WrongOwner {
        /// The cluster directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The uid PostgreSQL runs as.
        expected: u32,
    },
    /// Processes of a dead server still use the cluster.
    #[error(
        "PostgreSQL processes {pids:?} still use cluster {} although its server is gone; stop them, then start picloud again",
        cluster.display()
    )]
    OrphanedProcesses {
        /// The cluster directory.
        cluster: PathBuf,
        /// Their pids.
        pids: Vec<i32>,
    },
    /// A PostgreSQL tool could not be run or exited with an error.
    #[error("{program} failed ({status}): {detail}")]
    Command {
        /// The program, e.g. "initdb".
        program: String,
        /// Its exit status.
        status: String,
        /// The most telling line of its output.
        detail: String,
    },
    /// The server did not start.
    #[error("PostgreSQL did not start: {detail} (log: {})", log.display())]
    StartFailed {
        /// The most telling line of the server log or of pg_ctl's output.
        detail: String,
        /// The server log.
        log: PathBuf,
    },
    /// The server started but did not accept connections in time.
    #[error(
        "PostgreSQL did not accept connections within {} s: {source} (log: {})",
        PG_TIMEOUT.as_secs(),
        log.display()
    )]
    NotReady {
        /// The last connection error.
        #[source]
        source: sqlx::Error,
        /// The server log.
        log: PathBuf,
    },
    /// Creating the `picloud` database failed.
    #[error("could not create database `picloud` in the embedded PostgreSQL: {0}")]
    CreateDatabase(#[source] sqlx::Error),
    /// The server did not stop.
    #[error("could not stop PostgreSQL of cluster {}: {detail} (log: {})", cluster.display(), log.display())]
    StopFailed {
        /// The cluster directory.
        cluster: PathBuf,
        /// What pg_ctl said.
        detail: String,
        /// The server log.
        log: PathBuf,
    },
}

/// Maps an `io::Error` to [`EmbeddedError::Io`] for `path`.
fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> EmbeddedError + 'a {
    move |source| EmbeddedError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Exclusive lock on PICLOUD_DATA_DIR held while a picloud process uses it.
#[derive(Debug)]
pub struct DataDirLock {
    data_dir: PathBuf,
    // The flock lives as long as this open file description; dropping it unlocks.
    _file: File,
}

impl DataDirLock {
    /// Creates the data dir if missing (0711) and takes its lock, or fails with [`EmbeddedError::Locked`].
    pub fn acquire(data_dir: &Path) -> Result<Self, EmbeddedError> {
        match Self::try_acquire(data_dir)? {
            Some(lock) => Ok(lock),
            None => {
                let data_dir =
                    fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
                let lock_file = data_dir.join(LOCK_FILE);
                let pid = fs::read_to_string(&lock_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                Err(EmbeddedError::Locked {
                    data_dir,
                    lock_file,
                    pid,
                })
            }
        }
    }

    /// Tries the lock without waiting: `Ok(Some)` if free, `Ok(None)` if another process holds it.
    pub fn try_acquire(data_dir: &Path) -> Result<Option<Self>, EmbeddedError> {
        if !data_dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(data_dir)
                .map_err(io_err("create data dir", data_dir))?;
            // The umask may have taken bits away; the postgres user needs o+x.
            fs::set_permissions(data_dir, fs::Permissions::from_mode(0o711))
                .map_err(io_err("set permissions of", data_dir))?;
        }
        let data_dir = fs::canonicalize(data_dir).map_err(io_err("resolve data dir", data_dir))?;
        let lock_path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open lock file", &lock_path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        // The pid is only for the "who holds it" message; the flock is the lock.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(io_err("write lock file", &lock_path))?;
        Ok(Some(Self {
            data_dir,
            _file: file,
        }))
    }

    /// The locked data dir, absolute and with symlinks resolved.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// The private PostgreSQL cluster of a data dir, started by this process.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    cluster_dir: PathBuf,
    log_file: PathBuf,
    database_url: String,
    runner: Runner,
    /// Whether a server of ours may be running (so `stop`/`Drop` have work to do).
    running: bool,
}

impl EmbeddedPostgres {
    /// Creates the cluster if needed, recovers it from a killed picloud, starts it and ensures database `picloud`.
    pub async fn start(lock: &DataDirLock) -> Result<Self, EmbeddedError> {
        let data_dir = lock.data_dir();
        let run_as = RunAs::resolve()?;
        let placement = Placement::resolve(data_dir, run_as.as_ref())?;
        let cluster_dir = placement.cluster_dir;
        match &placement.fallback_reason {
            None => {
                tracing::info!(cluster = %cluster_dir.display(), "embedded PostgreSQL cluster in the data dir")
            }
            Some(reason) => tracing::warn!(
                cluster = %cluster_dir.display(),
                data_dir = %data_dir.display(),
                "embedded PostgreSQL cluster lives outside the data dir because {reason}; key files stay in the data dir"
            ),
        }

        let version = fs::read_to_string(cluster_dir.join("PG_VERSION"))
            .ok()
            .map(|v| v.trim().to_owned());
        let runner = Runner {
            bindir: find_bindir(version.as_deref())?,
            run_as,
        };
        if version.is_none() {
            init_cluster(&runner, &cluster_dir).await?;
        }
        check_owner(&cluster_dir, runner.uid())?;
        write_settings(&runner, &cluster_dir)?;

        let log_file = cluster_dir.join(LOG_FILE);
        let mut pg = Self {
            database_url: database_url(&cluster_dir)?,
            cluster_dir,
            log_file,
            runner,
            running: false,
        };
        pg.recover().await?;
        pg.launch().await?;
        pg.ensure_database().await?;
        tracing::info!(cluster = %pg.cluster_dir.display(), "embedded PostgreSQL ready");
        Ok(pg)
    }

    /// The URL of the cluster a running picloud owns for `data_dir`, if its socket accepts connections.
    pub fn running_url(data_dir: &Path) -> Result<Option<String>, EmbeddedError> {
        let data_dir = match fs::canonicalize(data_dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("resolve data dir", data_dir)(e)),
        };
        for cluster in [data_dir.join(CLUSTER_SUBDIR), fallback_dir(&data_dir)] {
            if UnixStream::connect(cluster.join(SOCKET_FILE)).is_ok() {
                return database_url(&cluster).map(Some);
            }
        }
        Ok(None)
    }

    /// A sqlx URL for database `picloud` over the cluster's Unix socket.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The cluster directory (PGDATA, also the socket directory).
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster_dir
    }

    /// The server log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Fast shutdown (falling back to immediate), waiting for it; idempotent.
    pub async fn stop(&mut self) -> Result<(), EmbeddedError> {
        if !self.running {
            return Ok(());
        }
        self.stop_server().await?;
        self.running = false;
        tracing::info!(cluster = %self.cluster_dir.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    /// Stops a server left running by a killed picloud and clears stale lock files.
    async fn recover(&mut self) -> Result<(), EmbeddedError> {
        if let Some(pid) = running_postmaster(&self.cluster_dir) {
            tracing::warn!(
                cluster = %self.cluster_dir.display(),
                pid,
                "a PostgreSQL server left running by an earlier picloud uses this cluster; stopping it to start it again"
            );
            self.stop_server().await?;
        }
        // Backends of a killed postmaster notice its death and exit on their own.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = cluster_processes(&self.cluster_dir);
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedError::OrphanedProcesses {
                    cluster: self.cluster_dir.clone(),
                    pids,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // No process uses the cluster, so nothing these files protect is alive.
        for name in SERVER_LOCK_FILES {
            let path = self.cluster_dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(file = %path.display(), "removed a stale PostgreSQL lock file")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove stale lock file", &path)(e)),
            }
        }
        Ok(())
    }

    /// Starts the server with `pg_ctl start` and waits until it reports ready.
    async fn launch(&mut self) -> Result<(), EmbeddedError> {
        rotate_log(&self.log_file)?;
        let log_start = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let timeout = PG_TIMEOUT.as_secs().to_string();
        let mut cmd = self.runner.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.cluster_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &timeout]);
        // From here on a server may be up (even if pg_ctl gives up waiting): Drop stops it.
        self.running = true;
        let output = run(cmd, "pg_ctl start").await?;
        if !output.status.success() {
            let detail = log_excerpt(&self.log_file, log_start)
                .or_else(|| last_line(&output))
                .unwrap_or_else(|| format!("pg_ctl start exited with {}", output.status));
            return Err(EmbeddedError::StartFailed {
                detail,
                log: self.log_file.clone(),
            });
        }
        Ok(())
    }

    /// Waits until the server accepts connections, then creates database `picloud` if missing.
    async fn ensure_database(&self) -> Result<(), EmbeddedError> {
        let options = self
            .database_url
            .parse::<PgConnectOptions>()
            .map_err(|source| EmbeddedError::NotReady {
                source,
                log: self.log_file.clone(),
            })?
            .database("postgres");
        let deadline = Instant::now() + PG_TIMEOUT;
        let mut conn = loop {
            match PgConnection::connect_with(&options).await {
                Ok(conn) => break conn,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    return Err(EmbeddedError::NotReady {
                        source,
                        log: self.log_file.clone(),
                    })
                }
            }
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await
                .map_err(EmbeddedError::CreateDatabase)?;
        if !exists {
            sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
                .execute(&mut conn)
                .await
                .map_err(EmbeddedError::CreateDatabase)?;
            tracing::info!("created database `{DATABASE}` in the embedded PostgreSQL");
        }
        // A failed goodbye to a server we keep running changes nothing.
        let _ = conn.close().await;
        Ok(())
    }

    /// Stops the cluster's server if one runs: fast shutdown, then immediate.
    async fn stop_server(&self) -> Result<(), EmbeddedError> {
        if running_postmaster(&self.cluster_dir).is_none() {
            return Ok(());
        }
        let fast = run(self.stop_command("fast"), "pg_ctl stop").await?;
        if fast.status.success() {
            return Ok(());
        }
        tracing::warn!(
            cluster = %self.cluster_dir.display(),
            detail = %last_line(&fast).unwrap_or_default(),
            "PostgreSQL fast shutdown failed; trying immediate shutdown"
        );
        let immediate = run(self.stop_command("immediate"), "pg_ctl stop").await?;
        self.stop_result(&immediate)
    }

    /// Blocking twin of [`Self::stop_server`] for `Drop`.
    fn stop_server_blocking(&self) -> Result<(), EmbeddedError> {
        if running_postmaster(&self.cluster_dir).is_none() {
            return Ok(());
        }
        let fast = run_blocking(self.stop_command("fast"), "pg_ctl stop")?;
        if fast.status.success() {
            return Ok(());
        }
        let immediate = run_blocking(self.stop_command("immediate"), "pg_ctl stop")?;
        self.stop_result(&immediate)
    }

    /// The `pg_ctl stop` command with shutdown `mode`.
    fn stop_command(&self, mode: &str) -> Command {
        let mut cmd = self.runner.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.cluster_dir).args([
            "-m",
            mode,
            "-w",
            "-t",
            &PG_TIMEOUT.as_secs().to_string(),
        ]);
        cmd
    }

    /// Turns the last `pg_ctl stop` output into the result of stopping.
    fn stop_result(&self, output: &Output) -> Result<(), EmbeddedError> {
        if output.status.success() || running_postmaster(&self.cluster_dir).is_none() {
            return Ok(());
        }
        Err(EmbeddedError::StopFailed {
            cluster: self.cluster_dir.clone(),
            detail: last_line(output).unwrap_or_else(|| output.status.to_string()),
            log: self.log_file.clone(),
        })
    }
}

impl Drop for EmbeddedPostgres {
    /// Best-effort synchronous stop when [`EmbeddedPostgres::stop`] was not called.
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if let Err(e) = self.stop_server_blocking() {
            tracing::warn!("embedded PostgreSQL left running: {e}");
        }
    }
}

/// The user PostgreSQL runs as when picloud is root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` when not root (run as ourselves), else the `postgres` user.
    fn resolve() -> Result<Option<Self>, EmbeddedError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        match nix::unistd::User::from_name(OS_USER) {
            Ok(Some(user)) => Ok(Some(Self {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })),
            Ok(None) => Err(EmbeddedError::NoPostgresUser),
            Err(e) => Err(EmbeddedError::UserLookup(e)),
        }
    }
}

/// Runs PostgreSQL's tools from one bin dir as the right user.
#[derive(Debug)]
struct Runner {
    bindir: PathBuf,
    run_as: Option<RunAs>,
}

impl Runner {
    /// The uid PostgreSQL runs as.
    fn uid(&self) -> u32 {
        self.run_as
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |r| r.uid)
    }

    /// Gives `path` to the user PostgreSQL runs as (a no-op when that is us).
    fn give(&self, path: &Path) -> Result<(), EmbeddedError> {
        match self.run_as {
            Some(r) => {
                chown(path, Some(r.uid), Some(r.gid)).map_err(io_err("change owner of", path))
            }
            None => Ok(()),
        }
    }

    /// A command for `program` from the bin dir: scrubbed env, cwd `/`, own process group, no stdin.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir("/")
            .env_clear()
            .env("PATH", CHILD_PATH)
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(tz) = std::env::var_os("TZ") {
            cmd.env("TZ", tz);
        }
        if let Some(r) = self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        cmd
    }
}

/// Runs `cmd` to completion, capturing its output.
async fn run(cmd: Command, what: &str) -> Result<Output, EmbeddedError> {
    tokio::process::Command::from(cmd)
        .output()
        .await
        .map_err(|e| spawn_error(what, e))
}

/// Blocking twin of [`run`].
fn run_blocking(mut cmd: Command, what: &str) -> Result<Output, EmbeddedError> {
    cmd.output().map_err(|e| spawn_error(what, e))
}

/// The error for a tool that could not be run at all.
fn spawn_error(what: &str, e: io::Error) -> EmbeddedError {
    EmbeddedError::Command {
        program: what.to_owned(),
        status: "not run".to_owned(),
        detail: e.to_string(),
    }
}

/// The last non-empty line of stderr, else of stdout.
fn last_line(output: &Output) -> Option<String> {
    [&output.stderr, &output.stdout]
        .into_iter()
        .find_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        })
}

/// What the server log says since byte `from` about a failed start, as one line.
///
/// That is the last FATAL/PANIC message, with the message of the same process just
/// before it (often the cause: "invalid value for parameter …") and the DETAIL or HINT
/// after it; without one, the last line.
fn log_excerpt(log: &Path, from: u64) -> Option<String> {
    let mut file = File::open(log).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let Some(i) = lines
        .iter()
        .rposition(|l| l.contains("FATAL:") || l.contains("PANIC:"))
    else {
        return lines.last().map(|l| (*l).to_owned());
    };
    let pid = |line: &str| {
        line.split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(pid, _)| pid.to_owned())
    };
    let mut parts = Vec::new();
    if let Some(cause) = i.checked_sub(1).and_then(|j| lines.get(j)).filter(|l| {
        pid(l) == pid(lines[i])
            && ["LOG:", "ERROR:", "WARNING:"]
                .iter()
                .any(|level| l.contains(level))
    }) {
        parts.push(log_message(cause));
    }
    parts.push(log_message(lines[i]));
    if let Some(detail) = lines
        .get(i + 1)
        .filter(|l| l.contains("DETAIL:") || l.contains("HINT:"))
    {
        parts.push(log_message(detail));
    }
    Some(parts.join("; "))
}

/// A log line without its timestamp and pid prefix.
fn log_message(line: &str) -> String {
    let start = [
        "PANIC:", "FATAL:", "ERROR:", "WARNING:", "LOG:", "DETAIL:", "HINT:",
    ]
    .iter()
    .filter_map(|level| line.find(level))
    .min()
    .unwrap_or(0);
    line[start..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where the cluster of a data dir lives, and why if not in the data dir.
struct Placement {
    cluster_dir: PathBuf,
    fallback_reason: Option<String>,
}

impl Placement {
    /// Picks `<data_dir>/pg` or the `/var/lib/picloud` fallback; an existing cluster stays where it is.
    fn resolve(data_dir: &Path, run_as: Option<&RunAs>) -> Result<Self, EmbeddedError> {
        let local = data_dir.join(CLUSTER_SUBDIR);
        let problem = local_problem(data_dir, &local, run_as);
        if is_cluster(&local) {
            return match problem {
                None => Ok(Self {
                    cluster_dir: local,
                    fallback_reason: None,
                }),
                Some(reason) => Err(EmbeddedError::ClusterUnusable {
                    cluster: local,
                    reason,
                }),
            };
        }
        if run_as.is_none() {
            return match problem {
                None => Ok(Self {
                    cluster_dir: local,
                    fallback_reason: None,
                }),
                Some(_) => {
                    let path = local.join(SOCKET_FILE);
                    let len = path.as_os_str().len();
                    Err(EmbeddedError::SocketPathTooLong { path, len })
                }
            };
        }
        let fallback = fallback_dir(data_dir);
        if is_cluster(&fallback) {
            let reason =
                problem.unwrap_or_else(|| "it was created there by an earlier start".to_owned());
            return Ok(Self {
                cluster_dir: fallback,
                fallback_reason: Some(reason),
            });
        }
        match problem {
            None => Ok(Self {
                cluster_dir: local,
                fallback_reason: None,
            }),
            Some(reason) => {
                let root = Path::new(FALLBACK_ROOT);
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(root)
                    .map_err(io_err("create directory", root))?;
                Ok(Self {
                    cluster_dir: fallback,
                    fallback_reason: Some(reason),
                })
            }
        }
    }
}

/// Why `<data_dir>/pg` cannot hold the cluster, if it cannot.
fn local_problem(data_dir: &Path, local: &Path, run_as: Option<&RunAs>) -> Option<String> {
    let socket_len = local.join(SOCKET_FILE).as_os_str().len();
    if socket_len > SOCKET_PATH_MAX {
        return Some(format!(
            "its socket path would be {socket_len} bytes, over the {SOCKET_PATH_MAX}-byte Unix limit"
        ));
    }
    let r = run_as?;
    first_unsearchable(data_dir, r.uid, r.gid)
        .map(|dir| format!("the postgres user cannot search {}", dir.display()))
}

/// The first of `dir` and its ancestors that `uid` with primary group `gid` may not search.
fn first_unsearchable(dir: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| match fs::metadata(d) {
            Ok(m) => !may_search(m.mode(), m.uid(), m.gid(), uid, gid),
            Err(_) => true,
        })
        .map(Path::to_path_buf)
}

/// Whether the owner, group or other execute bit of a directory applies and is set for `uid`/`gid`.
fn may_search(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let bit = if owner == uid {
        0o100
    } else if group == gid {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// `/var/lib/picloud/<first 16 hex of sha256(data dir)>`.
fn fallback_dir(data_dir: &Path) -> PathBuf {
    let digest = Sha256::digest(data_dir.as_os_str().as_bytes());
    Path::new(FALLBACK_ROOT).join(&hex::encode(digest)[..16])
}

/// Whether `dir` holds an initialised cluster.
fn is_cluster(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file()
}

/// The bin dir with `initdb`, `pg_ctl` and `postgres`: the cluster's major version first, then `pg_config`, then the newest.
fn find_bindir(major: Option<&str>) -> Result<PathBuf, EmbeddedError> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    let versioned = Path::new("/usr/lib/postgresql");
    if let Some(major) = major {
        let dir = versioned.join(major).join("bin");
        if complete(&dir) {
            return Ok(dir);
        }
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| complete(d)) {
        return Ok(dir);
    }
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(versioned)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version: Option<Vec<u32>> =
                name.to_str()?.split('.').map(|n| n.parse().ok()).collect();
            Some((version?, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(EmbeddedError::BinariesNotFound)
}

/// Rejects paths `pg_ctl` would break on (it runs the server through `sh -c "… \"path\" …"`).
fn check_path(path: &Path) -> Result<&str, EmbeddedError> {
    path.to_str()
        .filter(|s| !s.contains(['"', '$', '`', '\\', '\n', '\r']))
        .ok_or_else(|| EmbeddedError::UnsupportedPath {
            path: path.to_path_buf(),
        })
}

/// `postgres://postgres@localhost/picloud?host=<socket dir>&port=5432&sslmode=disable` (the `host` parameter, a socket dir, wins over `localhost`; an empty host does not parse).
fn database_url(socket_dir: &Path) -> Result<String, EmbeddedError> {
    let dir = check_path(socket_dir)?;
    let mut host = String::with_capacity(dir.len());
    for b in dir.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            host.push(char::from(b));
        } else {
            let _ = write!(host, "%{b:02X}");
        }
    }
    Ok(format!(
        "postgres://{SUPERUSER}@localhost/{DATABASE}?host={host}&port={PORT}&sslmode=disable"
    ))
}

/// Creates the cluster with `initdb` in `<cluster>.init`, then renames it into place.
async fn init_cluster(runner: &Runner, cluster_dir: &Path) -> Result<(), EmbeddedError> {
    check_path(cluster_dir)?;
    match fs::read_dir(cluster_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(EmbeddedError::NotACluster {
                    path: cluster_dir.to_path_buf(),
                });
            }
            fs::remove_dir(cluster_dir).map_err(io_err("remove empty directory", cluster_dir))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read directory", cluster_dir)(e)),
    }
    let mut staging = cluster_dir.as_os_str().to_owned();
    staging.push(".init");
    let staging = PathBuf::from(staging);
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .map_err(io_err("remove interrupted initdb directory", &staging))?;
    }
    DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_err("create directory", &staging))?;
    runner.give(&staging)?;

    tracing::info!(cluster = %cluster_dir.display(), "creating the embedded PostgreSQL cluster (initdb)");
    let mut cmd = runner.command("initdb");
    cmd.arg("-D")
        .arg(&staging)
        .args(["--locale=C", "-E", "UTF8", "-U", SUPERUSER])
        // Trust is safe only over the 0700 socket; never over TCP, should it ever be enabled.
        .args(["--auth-local=trust", "--auth-host=reject"]);
    let output = run(cmd, "initdb").await?;
    if !output.status.success() {
        return Err(EmbeddedError::Command {
            program: "initdb".to_owned(),
            status: output.status.to_string(),
            detail: last_line(&output).unwrap_or_default(),
        });
    }

    let conf = staging.join("postgresql.conf");
    OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| {
            writeln!(
                f,
                "\n# picloud: the settings of this private cluster, rewritten on every start.\ninclude = '{SETTINGS_FILE}'"
            )
        })
        .map_err(io_err("append to", &conf))?;
    fs::rename(&staging, cluster_dir).map_err(io_err("move new cluster into", cluster_dir))?;
    Ok(())
}

/// Fails unless the cluster dir belongs to the uid PostgreSQL runs as.
fn check_owner(cluster_dir: &Path, uid: u32) -> Result<(), EmbeddedError> {
    let meta = fs::metadata(cluster_dir).map_err(io_err("inspect", cluster_dir))?;
    if meta.uid() != uid {
        return Err(EmbeddedError::WrongOwner {
            path: cluster_dir.to_path_buf(),
            owner: meta.uid(),
            expected: uid,
        });
    }
    Ok(())
}

/// Writes `<cluster>/picloud.conf`: Unix socket only, in the cluster dir, owner-only.
fn write_settings(runner: &Runner, cluster_dir: &Path) -> Result<(), EmbeddedError> {
    let socket_dir = check_path(cluster_dir)?.replace('\'', "''");
    let path = cluster_dir.join(SETTINGS_FILE);
    let text = format!(
        "# Written by picloud on every start; edits here are lost.\n\
         listen_addresses = ''\n\
         port = {PORT}\n\
         unix_socket_directories = '{socket_dir}'\n\
         unix_socket_permissions = 0700\n\
         fsync = on\n"
    );
    fs::write(&path, text).map_err(io_err("write", &path))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .map_err(io_err("set permissions of", &path))?;
    runner.give(&path)
}

/// Moves a log over [`LOG_ROTATE_BYTES`] to `<log>.1`, replacing the previous one.
fn rotate_log(log: &Path) -> Result<(), EmbeddedError> {
    match fs::metadata(log) {
        Ok(m) if m.len() > LOG_ROTATE_BYTES => {
            let mut old = log.as_os_str().to_owned();
            old.push(".1");
            fs::rename(log, &old).map_err(io_err("rotate", log))
        }
        _ => Ok(()),
    }
}

/// The pid in `postmaster.pid`, if that process is a server of this cluster.
fn running_postmaster(cluster_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(cluster_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    cluster_processes(cluster_dir).contains(&pid).then_some(pid)
}

/// Pids of `postgres` processes whose working directory is the cluster (the server and its backends).
fn cluster_processes(cluster_dir: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cwd = fs::read_link(entry.path().join("cwd")).ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            (cwd == cluster_dir && matches!(comm.trim(), "postgres" | "postmaster")).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}
