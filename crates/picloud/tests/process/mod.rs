//! Support for tests of the real `picloud` binary: a server on its own data
//! dir and port, raw HTTP/1.1 requests, and the admin calls every such test makes.

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_picloud");

/// The master key every process of a shared-database test seals with (32 zero bytes, base64).
pub const SHARED_TEST_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A fresh, empty database in the test cluster (`DATABASE_URL` of the test
/// command), for processes that share it; its URL.
pub fn fresh_database() -> String {
    let base = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL (the test cluster): run the tests with ./scripts/test.sh");
    let name = format!("picloud_shared_{}", uuid::Uuid::new_v4().simple());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
    });
    let (before, after) = base.split_once('?').unwrap_or((&base, ""));
    let server = before.rsplit_once('/').map_or(before, |(server, _)| server);
    if after.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{after}")
    }
}

/// Runs `sql` on the database at `url` and returns the first column of each row, as text.
pub fn sql(url: &str, sql: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::{Connection, Row};
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get::<String, _>(0).unwrap_or_default())
            .collect()
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A data dir the postgres user can reach (tempdirs are 0700).
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("picloud-serve-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let dir = tmp.path().join("data");
    (tmp, dir)
}

pub fn command(data: &Path, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("PICLOUD_DATA_DIR", data)
        .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null());
    cmd
}

/// A running server whose output goes to files (a pipe nobody reads could block it).
pub struct Server {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub port: u16,
}

impl Server {
    pub fn start(data: &Path, port: u16, tag: &str, extra_env: &[(&str, &str)]) -> Server {
        Self::spawn(data, port, tag, extra_env, &["serve", "--dev"])
    }

    /// A server (not dev mode) on the database at `database_url`, shared with
    /// other processes; all of them seal with the same fixed test key.
    pub fn start_shared(
        data: &Path,
        port: u16,
        tag: &str,
        database_url: &str,
        extra_env: &[(&str, &str)],
    ) -> Server {
        let mut env = extra_env.to_vec();
        env.push(("DATABASE_URL", database_url));
        env.push(("PICLOUD_SECRET_KEY", SHARED_TEST_KEY));
        Self::spawn(data, port, tag, &env, &["serve"])
    }

    fn spawn(data: &Path, port: u16, tag: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let stdout = data.with_file_name(format!("{tag}.stdout"));
        let stderr = data.with_file_name(format!("{tag}.stderr"));
        let mut cmd = command(data, port);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Its own process group, as a terminal job would be.
        cmd.process_group(0)
            .args(args)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("spawn picloud");
        let mut server = Server {
            child,
            stdout,
            stderr,
            port,
        };
        server.wait_healthy();
        server
    }

    /// A counter's value on this server's `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = http(self.port, "GET", "/metrics", None, None).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("picloud exited early ({status}): {}", self.logs());
            }
            if let Ok((200, _)) = http(self.port, "GET", "/healthz", None, None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("picloud did not become healthy: {}", self.logs());
    }

    pub fn logs(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Sends `signal` to the whole process group and waits for the exit code.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> (i32, String) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::killpg(pgid, signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let logs = self.logs();
                return (status.code().unwrap_or(-1), logs);
            }
            assert!(
                Instant::now() < deadline,
                "picloud did not stop: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test must not leave a server (and its PostgreSQL) behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }
}

/// A response: status, raw header block and body.
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// The bytes of one HTTP/1.1 request that closes its connection.
fn request_text(method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> String {
    let body = body.unwrap_or("");
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn parse_response(response: &str) -> Response {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (headers, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    Response {
        status,
        headers,
        body,
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request_text(method, path, key, body).as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(parse_response(&response))
}

/// `count` identical requests at once, from one thread (async sockets, so the
/// flood does not also flood the test process with threads): their responses.
pub fn flood(
    port: u16,
    method: &str,
    path: &str,
    count: usize,
) -> std::thread::JoinHandle<Vec<std::io::Result<Response>>> {
    let text = request_text(method, path, None, Some("null"));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the flood");
        runtime.block_on(async move {
            let requests = (0..count).map(|_| {
                let text = text.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    stream.write_all(text.as_bytes()).await?;
                    let mut response = Vec::new();
                    tokio::time::timeout(
                        Duration::from_secs(60),
                        stream.read_to_end(&mut response),
                    )
                    .await
                    .map_err(|_| std::io::Error::other("no answer within 60 s"))??;
                    Ok(parse_response(&String::from_utf8_lossy(&response)))
                })
            });
            let mut responses = Vec::with_capacity(count);
            for request in requests.collect::<Vec<_>>() {
                responses.push(
                    request
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                );
            }
            responses
        })
    })
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    request(port, method, path, key, body).map(|r| (r.status, r.body))
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| panic!("not JSON: {s}"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// The admin key the first start wrote to `<data>/admin.key`.
pub fn admin_key(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin.key"))
        .unwrap()
        .trim_end()
        .to_owned()
}

/// Creates an app through the admin API and returns its id.
pub fn create_app(port: u16, key: &str, name: &str) -> String {
    let body = serde_json::json!({ "name": name }).to_string();
    let (status, app) = http(port, "POST", "/api/v1/admin/apps", Some(key), Some(&body)).unwrap();
    assert_eq!(status, 201, "{app}");
    json(&app)["id"].as_str().unwrap().to_owned()
}

/// Sets a secret (a string value) through the admin API.
pub fn set_secret(port: u16, key: &str, app: &str, name: &str, value: &str) {
    let body = serde_json::json!({"name": name, "value": value}).to_string();
    let path = format!("/api/v1/admin/apps/{app}/secrets");
    let (status, response) = http(port, "POST", &path, Some(key), Some(&body)).unwrap();
    assert_eq!(status, 200, "{response}");
}

/// Saves a script through the admin API and answers (status, body).
pub fn save_script(
    port: u16,
    key: &str,
    app: &str,
    name: &str,
    source: &str,
    public: bool,
) -> (u16, String) {
    let body = serde_json::json!({ "name": name, "source": source, "public": public }).to_string();
    let path = format!("/api/v1/admin/apps/{app}/scripts");
    http(port, "POST", &path, Some(key), Some(&body)).unwrap()
}

/// Saves a script through the admin API.
pub fn create_script(port: u16, key: &str, app: &str, name: &str, source: &str) {
    let (status, out) = save_script(port, key, app, name, source, false);
    assert_eq!(status, 201, "{out}");
}

/// A line of `/proc/<pid>/status` as a number (`VmHWM` in KiB, `Threads`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Process tests that measure a server's latency or memory run one at a time
/// within their test binary, so one test's load does not count against another's.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
