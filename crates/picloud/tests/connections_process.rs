//! The listener's limits, through the real binary: slow and idle connections
//! are closed, a flood of idle connections leaves `/healthz` answering, and
//! past `PICLOUD_MAX_CONNECTIONS` new connections are refused until some close.

mod process;

use process::*;
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// Lets this test process hold `files` open files (the soft limit is often 1,024).
fn allow_open_files(files: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; raising the soft limit up to the hard one needs no privilege.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= files,
            "this machine allows only {} open files; the test needs {files}",
            limit.rlim_max
        );
        limit.rlim_cur = limit.rlim_cur.max(files);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// How long until the server closes `stream` (reads until end of file).
fn time_to_close(mut stream: TcpStream) -> Duration {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    started.elapsed()
}

#[test]
fn slow_and_idle_connections_are_closed_at_the_idle_timeout() {
    let _serial = serial();
    let (_tmp, data) = data_dir();
    let port = free_port();
    let _server = Server::start(
        &data,
        port,
        "idle",
        &[("PICLOUD_HTTP_IDLE_TIMEOUT_SECS", "1")],
    );
    // Half a request head, then nothing (slowloris).
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    // Connected, never a byte.
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A finished request, then idle on keep-alive.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    for (what, stream) in [
        ("half-sent", half),
        ("silent", silent),
        ("keep-alive", kept),
    ] {
        let took = time_to_close(stream);
        assert!(
            took < Duration::from_secs(4),
            "{what} connection open for {took:?}"
        );
    }
    assert_eq!(http(port, "GET", "/healthz", None, None).unwrap().0, 200);
}

#[test]
fn past_the_maximum_new_connections_are_refused_until_some_close() {
    let _serial = serial();
    let (_tmp, data) = data_dir();
    let port = free_port();
    let _server = Server::start(
        &data,
        port,
        "max",
        &[
            ("PICLOUD_MAX_CONNECTIONS", "20"),
            ("PICLOUD_HTTP_IDLE_TIMEOUT_SECS", "60"),
        ],
    );
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // The server accepts asynchronously: wait until it counts all twenty.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let response = request(port, "GET", "/healthz", None, None).unwrap();
        if response.status == 503 {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "never refused: {}",
            response.status
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(json(&refused.body)["error"]["code"], "unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(port, "GET", "/healthz", None, None)
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "the server did not recover");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn five_thousand_idle_connections_leave_healthz_answering() {
    let _serial = serial();
    allow_open_files(6_000);
    let (_tmp, data) = data_dir();
    let port = free_port();
    let _server = Server::start(
        &data,
        port,
        "many",
        &[("PICLOUD_HTTP_IDLE_TIMEOUT_SECS", "60")],
    );
    let idle: Vec<TcpStream> = (0..5_000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let started = Instant::now();
    let (status, _) = http(port, "GET", "/healthz", None, None).unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2), "/healthz took {took:?}");
    drop(idle);
}

/// Sends a request head declaring a `length`-byte body, then `sent` of its bytes.
fn partial_request(
    port: u16,
    path: &str,
    key: Option<&str>,
    length: usize,
    sent: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(sent).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads one response's status line and headers (enough to know the status).
fn read_status(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bodies_that_never_finish_or_trickle_are_408_at_the_body_timeout() {
    let _serial = serial();
    let (_tmp, data) = data_dir();
    let port = free_port();
    let _server = Server::start(
        &data,
        port,
        "body-timeout",
        &[("PICLOUD_HTTP_BODY_TIMEOUT_SECS", "2")],
    );
    let key = admin_key(&data);
    // Half a body, then nothing.
    let mut half = partial_request(port, "/api/v1/admin/apps", Some(&key), 100, b"{\"name\"");
    // A body sent a byte every half second (each read makes progress).
    let mut trickle = partial_request(port, "/api/v1/admin/apps", Some(&key), 100, b"");
    let trickler = std::thread::spawn({
        let mut writer = trickle.try_clone().unwrap();
        move || {
            for _ in 0..20 {
                if writer.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    });
    let started = Instant::now();
    assert_eq!(read_status(&mut half), 408);
    assert_eq!(read_status(&mut trickle), 408);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered after {:?}",
        started.elapsed()
    );
    trickler.join().unwrap();
    // Nothing was created, and the server goes on.
    let (status, apps) = http(port, "GET", "/api/v1/admin/apps", Some(&key), None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&apps), serde_json::json!([]));
}

#[test]
fn clients_that_stop_reading_responses_are_disconnected() {
    let _serial = serial();
    let (_tmp, data) = data_dir();
    let port = free_port();
    let _server = Server::start(
        &data,
        port,
        "stalled",
        &[
            ("PICLOUD_HTTP_IDLE_TIMEOUT_SECS", "2"),
            ("PICLOUD_MAX_CONNECTIONS", "8"),
        ],
    );
    // Eight connections pipeline requests for the OpenAPI document and never read:
    // the server's writes stall once the socket buffers are full.
    let request = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = stream.write_all(&request);
            stream
        })
        .collect();
    // While they hold every slot, a new connection is refused; once the stall
    // limit closes them, /healthz answers again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = request_once(port) {
            if response == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "stalled connections still hold every slot after 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stalled);
}

fn request_once(port: u16) -> std::io::Result<u16> {
    Ok(request(port, "GET", "/healthz", None, None)?.status)
}

#[test]
fn declared_but_unsent_bodies_hold_none_of_the_body_budget() {
    let _serial = serial();
    let (_tmp, data) = data_dir();
    let port = free_port();
    let _server = Server::start(
        &data,
        port,
        "budget",
        &[("PICLOUD_MAX_BODY_BUFFER_BYTES", "1048576")],
    );
    let key = admin_key(&data);
    let app = create_app(port, &key, "a");
    create_script(port, &key, &app, "pub", "1");
    let (status, _) = http(
        port,
        "PUT",
        &format!(
            "/api/v1/admin/apps/{app}/scripts/{}",
            script_id(port, &key, &app, "pub")
        ),
        Some(&key),
        Some(r#"{"name": "pub", "source": "1", "public": true}"#),
    )
    .unwrap();
    assert_eq!(status, 200);
    let path = format!("/api/v1/apps/{app}/invoke/pub");
    // Bodies declared at 400 KB each and never sent hold none of the 1 MiB
    // budget (what a body holds is what it sent: tests/bad_input.rs)...
    let held: Vec<TcpStream> = (0..3)
        .map(|_| partial_request(port, &path, None, 400_000, b"[1"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // ...so a body bigger than what would be left after three reservations still fits.
    let big = format!("\"{}\"", "x".repeat(300_000));
    let response = request(port, "POST", &path, None, Some(&big)).unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    drop(held);
}

fn script_id(port: u16, key: &str, app: &str, name: &str) -> String {
    let (_, scripts) = http(
        port,
        "GET",
        &format!("/api/v1/admin/apps/{app}/scripts"),
        Some(key),
        None,
    )
    .unwrap();
    json(&scripts)
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}
