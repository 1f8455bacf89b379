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
