//! Realtime through the real binary: two processes on one database, a
//! subscriber on one and the publisher on the other; a 100 KB message
//! arrives whole; a listener that loses its connection reconnects and says
//! so in the log; the token sent in the query string reaches no log.

mod process;

use process::*;
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    sync::mpsc,
    time::{Duration, Instant},
};

/// Opens an SSE subscription and sends each event's `data` down the channel.
fn subscribe(port: u16, path: &str) -> mpsc::Receiver<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" {
            break;
        }
    }
    let (events, received) = mpsc::channel();
    std::thread::spawn(move || {
        // Chunked transfer: a size line, that many bytes, CRLF; SSE events in
        // the joined bytes end with a blank line.
        let mut text = String::new();
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                return;
            }
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                return;
            };
            if size == 0 {
                return;
            }
            let mut chunk = vec![0u8; size + 2];
            if reader.read_exact(&mut chunk).is_err() {
                return;
            }
            text.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() && events.send(data).is_err() {
                    return;
                }
            }
        }
    });
    received
}

fn publish(port: u16, app: &str, message: &serde_json::Value) {
    let body = serde_json::json!({"topic": "news", "message": message}).to_string();
    let (status, answer) = http(
        port,
        "POST",
        &format!("/api/v1/apps/{app}/invoke/pub"),
        None,
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_publish_on_one_process_reaches_a_subscriber_on_another() {
    let _serial = serial();
    let url = fresh_database();
    let (_a_dir, a_data) = data_dir();
    let (_b_dir, b_data) = data_dir();
    let a = Server::start_shared(&a_data, free_port(), "rt-a", &url, &[]);
    let b = Server::start_shared(&b_data, free_port(), "rt-b", &url, &[]);
    let key = admin_key(&a_data);
    let app = create_app(a.port, &key, "live");
    let (status, script) = save_script(
        a.port,
        &key,
        &app,
        "pub",
        "pubsub::publish(ctx.request.body.topic, ctx.request.body.message); true",
        true,
    );
    assert_eq!(status, 201, "{script}");
    let (status, issued) = http(
        a.port,
        "POST",
        &format!("/api/v1/admin/apps/{app}/realtime/tokens"),
        Some(&key),
        Some(r#"{"topics": ["news"], "ttl_secs": 600}"#),
    )
    .unwrap();
    assert_eq!(status, 201, "{issued}");
    let token = json(&issued)["token"].as_str().unwrap().to_owned();
    // The token in the query string, as a browser's EventSource sends it.
    let events = subscribe(
        b.port,
        &format!("/api/v1/apps/{app}/realtime?topics=news&token={token}"),
    );
    // Until the first arrives: b's listener may still be connecting.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        publish(a.port, &app, &serde_json::json!({"hello": "b"}));
        if let Ok(data) = events.recv_timeout(Duration::from_millis(500)) {
            break data;
        }
        assert!(
            Instant::now() < deadline,
            "nothing arrived on the other process"
        );
    };
    assert_eq!(json(&first), serde_json::json!({"hello": "b"}));
    let large = "y".repeat(100 * 1024);
    publish(a.port, &app, &serde_json::json!({"text": large}));
    let arrived = loop {
        let data = events.recv_timeout(Duration::from_secs(10)).unwrap();
        // Earlier retries of the first message may still be on their way.
        if data.len() > 1000 {
            break data;
        }
    };
    assert_eq!(json(&arrived)["text"].as_str().unwrap(), large);
    // The listening connections are lost: each process reconnects, says so,
    // and delivers again.
    let killed = sql(
        &url,
        "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%picloud_realtime%'",
    );
    assert_eq!(
        killed,
        ["true", "true"],
        "one realtime listener per process"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b
        .logs()
        .contains("the realtime listener is connected again")
    {
        assert!(Instant::now() < deadline, "no reconnect in b's log");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        b.logs()
            .contains("the realtime listener lost its database connection")
            || b.logs().contains("the realtime listener failed"),
        "b's log does not say the connection was lost"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publish(a.port, &app, &serde_json::json!({"after": "reconnect"}));
        if let Ok(data) = events.recv_timeout(Duration::from_millis(500)) {
            if json(&data) == serde_json::json!({"after": "reconnect"}) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing arrived after reconnecting"
        );
    }
    for server in [&a, &b] {
        assert!(!server.logs().contains(&token), "the token reached a log");
        assert!(
            !server.logs().contains("token="),
            "a query string reached a log"
        );
    }
}
