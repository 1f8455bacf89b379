//! The real `picloud` binary: `serve --dev` on an embedded cluster, restart with
//! data kept, the data-dir lock, CLI commands beside a running server, signals,
//! and logs that never carry keys.

mod process;

use process::*;
use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

#[test]
fn serve_dev_tour_restart_lock_cli_and_signals() {
    let (_tmp, data) = data_dir();
    let port = free_port();
    let server = Server::start(&data, port, "first", &[("PICLOUD_LOG_FORMAT", "json")]);

    // First start: an admin key, printed once and saved 0600.
    let key_file = data.join("admin.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key = key.trim_end().to_owned();
    assert!(key.starts_with("pk_"));
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&server.stdout)
        .unwrap()
        .contains(&key));

    // The README tour.
    let (status, app) = http(
        port,
        "POST",
        "/api/v1/admin/apps",
        Some(&key),
        Some(r#"{"name":"demo"}"#),
    )
    .unwrap();
    assert_eq!(status, 201, "{app}");
    let app_id = json(&app)["id"].as_str().unwrap().to_owned();
    let (status, script) = http(
        port,
        "POST",
        &format!("/api/v1/admin/apps/{app_id}/scripts"),
        Some(&key),
        Some(r#"{"name":"hello","source":"let n = ctx.request.body.n; kv::set(\"counters\", \"n\", n); #{ doubled: n * 2 }"}"#),
    )
    .unwrap();
    assert_eq!(status, 201, "{script}");
    let (status, out) = http(
        port,
        "POST",
        &format!("/api/v1/apps/{app_id}/invoke/hello"),
        Some(&key),
        Some(r#"{"n":21}"#),
    )
    .unwrap();
    assert_eq!(
        (status, json(&out)),
        (200, serde_json::json!({"doubled": 42}))
    );
    assert_eq!(http(port, "GET", "/readyz", None, None).unwrap().0, 200);

    // A second server on the same data dir refuses with one clear line.
    let second = run(command(&data, free_port()).args(["serve", "--dev"]));
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another picloud process"), "{err}");

    // CLI beside a running server uses its cluster.
    let created = run(command(&data, port).args([
        "admin",
        "create-key",
        "--name",
        "ci",
        "--scopes",
        "app:read",
    ]));
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let ci_key = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    assert_eq!(
        http(port, "GET", "/api/v1/admin/apps", Some(&ci_key), None)
            .unwrap()
            .0,
        200
    );
    let bad =
        run(command(&data, port).args(["admin", "create-key", "--name", "x", "--scopes", "root"]));
    assert!(!bad.status.success());

    // SIGTERM: exit 0, PostgreSQL stopped, and the key never reached the logs.
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 0, "{logs}");
    let stderr = logs.split("stderr:").nth(1).unwrap_or_default().to_owned();
    assert!(
        !stderr.contains(&key) && !stderr.contains(&ci_key),
        "a key reached the logs"
    );
    assert!(stderr.contains("picloud stopped"), "{stderr}");
    assert!(
        !data.join("pg/postmaster.pid").exists() || !postmaster_alive(&data),
        "PostgreSQL still runs"
    );

    // `migrate` with no server: starts the cluster for the command, then stops it.
    let migrated = run(command(&data, port).arg("migrate"));
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    // Restart: data kept, no new admin key, and a terminal Ctrl-C (SIGINT to the group) stops it cleanly.
    let server = Server::start(&data, port, "second", &[]);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim_end(), key);
    assert!(!std::fs::read_to_string(&server.stdout)
        .unwrap()
        .contains("pk_"));
    let (status, apps) = http(port, "GET", "/api/v1/admin/apps", Some(&key), None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&apps)[0]["name"], "demo");
    let (status, out) = http(
        port,
        "POST",
        &format!("/api/v1/apps/{app_id}/invoke/hello"),
        Some(&key),
        Some(r#"{"n":1}"#),
    )
    .unwrap();
    assert_eq!(
        (status, json(&out)),
        (200, serde_json::json!({"doubled": 2}))
    );
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGINT);
    assert_eq!(code, 0, "{logs}");
}

/// True when the cluster's postmaster.pid names a live process.
fn postmaster_alive(data: &Path) -> bool {
    let Ok(pid_file) = std::fs::read_to_string(data.join("pg/postmaster.pid")) else {
        return false;
    };
    let pid: i32 = pid_file
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[test]
fn config_errors_fail_start_with_one_line_naming_the_variable() {
    let (_tmp, data) = data_dir();
    for (var, value) in [
        ("PICLOUD_LISTEN", "not-an-address"),
        ("PICLOUD_MAX_REQUEST_BYTES", "lots"),
        ("PICLOUD_LOG_FORMAT", "xml"),
        ("PICLOUD_SCRIPT_TIMEOUT_MS", "0"),
    ] {
        let out = run(command(&data, free_port())
            .env(var, value)
            .args(["serve", "--dev"]));
        assert!(!out.status.success(), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{var}: {err}");
        assert!(err.contains(var), "{var}: {err}");
        assert!(
            !data.join("pg").exists(),
            "config is checked before any database work"
        );
    }
}

#[test]
fn secret_values_never_reach_logs_and_a_wrong_key_refuses_start() {
    let (_tmp, data) = data_dir();
    let port = free_port();
    let server = Server::start(
        &data,
        port,
        "keys",
        &[("RUST_LOG", "debug"), ("PICLOUD_LOG_FORMAT", "json")],
    );
    let key = admin_key(&data);
    let app = create_app(port, &key, "s");
    let secrets = format!("/api/v1/admin/apps/{app}/secrets");
    // Set, overwrite, a too-large value and a bad name, all carrying markers.
    assert_eq!(
        http(
            port,
            "POST",
            &secrets,
            Some(&key),
            Some(r#"{"name":"a","value":"MARKER-admin-1"}"#)
        )
        .unwrap()
        .0,
        200
    );
    assert_eq!(
        http(
            port,
            "POST",
            &secrets,
            Some(&key),
            Some(r#"{"name":"a","value":{"nested":"MARKER-admin-2"}}"#)
        )
        .unwrap()
        .0,
        200
    );
    let big = format!(
        r#"{{"name":"big","value":"MARKER-big-{}"}}"#,
        "z".repeat(70_000)
    );
    assert_eq!(
        http(port, "POST", &secrets, Some(&key), Some(&big))
            .unwrap()
            .0,
        413
    );
    assert_eq!(
        http(
            port,
            "POST",
            &secrets,
            Some(&key),
            Some(r#"{"name":"bad name","value":"MARKER-bad"}"#)
        )
        .unwrap()
        .0,
        422
    );
    // Every SDK error path of secrets, with marker values in the failed calls too.
    let source = r#"
        secrets::set("b", "MARKER-script");
        let v = secrets::get("a");
        log::info("got a secret");
        let e = ();
        try { secrets::get("bad/name") } catch (x) { e = x }
        let e2 = ();
        try { secrets::set("bad/name", "MARKER-bad-script-name") } catch (x) { e2 = x }
        let huge = "MARKER-huge-";
        while huge.len() < 70000 { huge += huge; }
        let e3 = ();
        try { secrets::set("h", huge) } catch (x) { e3 = x }
        #{ len: v.nested.len(), err: e.kind, err2: e2.kind, err3: e3.kind }
    "#;
    create_script(port, &key, &app, "use", source);
    let (status, out) = http(
        port,
        "POST",
        &format!("/api/v1/apps/{app}/invoke/use"),
        Some(&key),
        None,
    )
    .unwrap();
    assert_eq!(
        (status, json(&out)),
        (
            200,
            serde_json::json!({
                "len": 14,
                "err": "invalid_argument",
                "err2": "invalid_argument",
                "err3": "too_large"
            })
        )
    );
    let (_, list) = http(port, "GET", &secrets, Some(&key), None).unwrap();
    assert!(!list.contains("MARKER"), "{list}");

    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("DEV MODE"), "the dev key is warned about");
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "debug logs were captured, so the check below is meaningful"
    );
    assert!(!logs.contains("MARKER"), "a secret value reached the logs");
    // `log::info` from a script is a structured event carrying app and script.
    let script_log = logs
        .lines()
        .find(|l| l.contains("got a secret"))
        .unwrap_or_else(|| panic!("the script's log::info is missing: {logs}"));
    let script_log = json(script_log);
    assert_eq!(script_log["level"], "INFO", "{script_log}");
    assert_eq!(script_log["target"], "picloud::script", "{script_log}");
    assert_eq!(script_log["fields"]["app_id"], app.as_str(), "{script_log}");
    assert_eq!(script_log["fields"]["script"], "use", "{script_log}");
    assert_eq!(script_log["fields"]["trigger"], "http", "{script_log}");
    // stdout shows the first admin key once, by design; the logs are stderr.
    let stderr = logs.split("stderr:").nth(1).unwrap_or_default();
    assert!(!stderr.contains(&key), "an API key reached the logs");
    let dev_key = std::fs::read_to_string(data.join("master.key")).unwrap();
    assert!(
        !logs.contains(dev_key.trim()),
        "the master key reached the logs"
    );
    assert_eq!(
        std::fs::metadata(data.join("master.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // A different key than the data's: refuses to start, naming the missing key id.
    let dev_id = picloud_shared::crypto::MasterKey::from_base64(dev_key.trim())
        .unwrap()
        .id()
        .to_hex();
    let other = picloud_shared::crypto::MasterKey::generate().to_base64();
    let refused = run(command(&data, free_port())
        .env("PICLOUD_SECRET_KEY", &other)
        .args(["serve", "--dev"]));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(&dev_id), "names the key id: {err}");
    assert!(
        !err.contains(&other) && !err.contains(dev_key.trim()),
        "never the keys themselves"
    );

    // Malformed keys fail before any database work, naming the variable.
    let bad = run(command(&data, free_port())
        .env("PICLOUD_SECRET_KEY", "not base64!!")
        .args(["serve"]));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("PICLOUD_SECRET_KEY") && !err.contains("not base64"),
        "{err}"
    );
    let missing = run(command(&data, free_port())
        .env_remove("PICLOUD_SECRET_KEY")
        .env("PICLOUD_DEV_MODE", "false")
        .args(["serve"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("PICLOUD_SECRET_KEY"));
}

#[test]
fn keys_generate_prints_a_fresh_key() {
    let a = run(Command::new(BIN).args(["keys", "generate"]));
    let b = run(Command::new(BIN).args(["keys", "generate"]));
    assert!(a.status.success());
    let a = String::from_utf8_lossy(&a.stdout).trim().to_owned();
    let b = String::from_utf8_lossy(&b.stdout).trim().to_owned();
    assert_ne!(a, b);
    assert!(picloud_shared::crypto::MasterKey::from_base64(&a).is_ok());
}

/// Sets secret `name` of `app` through the admin API.
/// Invokes the `read` script of `app`, which returns every secret it knows.
fn read_secrets(port: u16, key: &str, app: &str) -> serde_json::Value {
    let path = format!("/api/v1/apps/{app}/invoke/read");
    let (status, body) = http(port, "POST", &path, Some(key), Some("{}")).unwrap();
    assert_eq!(status, 200, "{body}");
    json(&body)
}

#[test]
fn keys_rotate_beside_a_server_moves_every_secret_to_the_new_key() {
    let (_tmp, data) = data_dir();
    let port = free_port();

    // Secrets sealed under the dev key, and a script that reads them all.
    let server = Server::start(&data, port, "old", &[]);
    let key = admin_key(&data);
    let app = create_app(port, &key, "rot");
    let names = ["alpha", "beta", "gamma", "delta", "epsilon"];
    for name in names {
        set_secret(port, &key, &app, name, &format!("value-of-{name}"));
    }
    create_script(
        port,
        &key,
        &app,
        "read",
        "let out = #{}; for n in secrets::list() { out[n] = secrets::get(n); } out",
    );
    let expected: serde_json::Value = names
        .iter()
        .map(|n| (n.to_string(), serde_json::json!(format!("value-of-{n}"))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    assert_eq!(read_secrets(port, &key, &app), expected);
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 0, "{logs}");

    // The operator's steps: restart with the new key active and the old one
    // previous, rotate beside the running server, then drop the old key.
    let old_key = std::fs::read_to_string(data.join("master.key"))
        .unwrap()
        .trim()
        .to_owned();
    let new_key = picloud_shared::crypto::MasterKey::generate();
    let new_id = new_key.id().to_hex();
    let new_key = new_key.to_base64();
    let both = [
        ("PICLOUD_SECRET_KEY", new_key.as_str()),
        ("PICLOUD_SECRET_KEYS_PREVIOUS", old_key.as_str()),
    ];
    let server = Server::start(&data, port, "both", &both);
    assert_eq!(read_secrets(port, &key, &app), expected);

    let rotate = |batch: &str| {
        let output =
            run(command(&data, port)
                .envs(both)
                .args(["keys", "rotate", "--batch-size", batch]));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stdout}\n{stderr}");
        for secret in [&old_key, &new_key] {
            assert!(
                !stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()),
                "a master key reached the output"
            );
        }
        stdout
    };
    // Two rows per batch: several batches, and every row counted once.
    let first = rotate("2");
    assert!(
        first.contains("secrets: 5 re-sealed, 0 already under the active key"),
        "{first}"
    );
    assert!(first.contains(&new_id), "{first}");
    let again = rotate("2");
    assert!(
        again.contains("secrets: 0 re-sealed, 5 already under the active key"),
        "idempotent: {again}"
    );
    assert_eq!(read_secrets(port, &key, &app), expected);
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 0, "{logs}");

    // The old key is gone: every secret still reads.
    let server = Server::start(&data, port, "new", &[("PICLOUD_SECRET_KEY", &new_key)]);
    assert_eq!(read_secrets(port, &key, &app), expected);
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 0, "{logs}");

    // Only the old dev key: the data is under a key it lacks, so start is refused.
    let refused = run(command(&data, port).args(["serve", "--dev"]));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(&new_id), "names the missing key id: {err}");
}

#[test]
fn sigterm_lets_an_in_flight_invoke_finish_then_exits_0() {
    let (_tmp, data) = data_dir();
    let port = free_port();
    // The slow script busy-waits; no operation cap should end it first.
    let server = Server::start(
        &data,
        port,
        "inflight",
        &[("PICLOUD_SCRIPT_MAX_OPERATIONS", "1000000000000")],
    );
    let key = admin_key(&data);
    let app = create_app(port, &key, "slow");
    create_script(
        port,
        &key,
        &app,
        "slow",
        r#"kv::set("m", "slow", true); let t = timestamp(); while t.elapsed < 3.0 {} "finished""#,
    );
    create_script(port, &key, &app, "peek", r#"kv::get("m", "slow")"#);

    let in_flight = {
        let key = key.clone();
        let path = format!("/api/v1/apps/{app}/invoke/slow");
        std::thread::spawn(move || http(port, "POST", &path, Some(&key), Some("{}")))
    };
    let peek = format!("/api/v1/apps/{app}/invoke/peek");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "POST", &peek, Some(&key), Some("{}")).unwrap() != (200, "true".into()) {
        assert!(Instant::now() < deadline, "the slow script never started");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The signal arrives while `slow` runs: it still answers, then picloud exits 0.
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 0, "{logs}");
    let (status, body) = in_flight.join().unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "\"finished\""), "{logs}");
    assert!(logs.contains("finishing in-flight requests"), "{logs}");
    assert!(!postmaster_alive(&data), "PostgreSQL was stopped");
}

/// The test SMTP server `scripts/test.sh` started: (port, user, password).
fn test_smtp() -> (String, String, String) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: this test needs the SMTP server ./scripts/test.sh starts")
        })
    };
    (
        var("PICLOUD_TEST_SMTP_PORT"),
        var("PICLOUD_TEST_SMTP_USER"),
        var("PICLOUD_TEST_SMTP_PASSWORD"),
    )
}

#[test]
fn email_paths_never_log_the_smtp_password_or_message_bodies() {
    use base64::Engine;
    let (smtp_port, user, password) = test_smtp();
    let mut all_logs = String::new();
    for (tag, smtp_password) in [
        ("mail-ok", password.clone()),
        ("mail-bad-auth", format!("{password}-wrong")),
    ] {
        let (_tmp, data) = data_dir();
        let port = free_port();
        let server = Server::start(
            &data,
            port,
            tag,
            &[
                ("RUST_LOG", "debug"),
                ("PICLOUD_LOG_FORMAT", "json"),
                ("PICLOUD_SMTP_HOST", "127.0.0.1"),
                ("PICLOUD_SMTP_PORT", smtp_port.as_str()),
                ("PICLOUD_SMTP_USER", user.as_str()),
                ("PICLOUD_SMTP_PASSWORD", smtp_password.as_str()),
                ("PICLOUD_SMTP_TLS", "none"),
                ("PICLOUD_EMAIL_FROM", "logs@picloud.example"),
            ],
        );
        let key = admin_key(&data);
        let app = create_app(port, &key, "mail");
        // Every path: a send, an html send, 4xx, 5xx, a bad address, a header
        // injection, a bad call; each message carries body markers.
        let source = r#"
            let kinds = [];
            for send in [
                || email::send(#{to: "ann@example.com", subject: "SUBJECTMARK", text: "BODYMARK-text"}),
                || email::send_html(#{to: "ann@example.com", subject: "SUBJECTMARK", html: "<p>BODYMARK-html</p>", text: "BODYMARK-alt"}),
                || email::send(#{to: "tempfail@example.com", subject: "SUBJECTMARK", text: "BODYMARK-4xx"}),
                || email::send(#{to: "reject@example.com", subject: "SUBJECTMARK", text: "BODYMARK-5xx"}),
                || email::send(#{to: "nobody", subject: "SUBJECTMARK", text: "BODYMARK-address"}),
                || email::send(#{to: "ann@example.com", subject: "x\r\nBcc: b@example.com", text: "BODYMARK-inject"}),
                || email::send(#{to: "ann@example.com", subject: "SUBJECTMARK"}),
            ] {
                try { send.call(); kinds.push("ok") } catch (e) { kinds.push(e.kind) }
            }
            kinds
        "#;
        create_script(port, &key, &app, "mail", source);
        let (status, out) = http(
            port,
            "POST",
            &format!("/api/v1/apps/{app}/invoke/mail"),
            Some(&key),
            Some("null"),
        )
        .unwrap();
        assert_eq!(status, 200, "{out}");
        let kinds = json(&out);
        if tag == "mail-ok" {
            assert_eq!(
                kinds,
                serde_json::json!([
                    "ok",
                    "ok",
                    "transient",
                    "permanent",
                    "invalid_address",
                    "invalid_argument",
                    "invalid_argument"
                ])
            );
        } else {
            assert_eq!(kinds[0], "auth_failed", "{kinds}");
        }
        let (_, status) =
            http(port, "GET", "/api/v1/admin/email/status", Some(&key), None).unwrap();
        assert!(status.contains("\"configured\":true"), "{status}");
        assert!(!status.contains(&smtp_password), "{status}");
        let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(code, 0, "{logs}");
        assert!(
            logs.contains("\"level\":\"DEBUG\""),
            "debug logs were captured"
        );
        all_logs.push_str(&logs);
        // What an AUTH exchange would carry, in the forms it is sent.
        let engine = base64::engine::general_purpose::STANDARD;
        for leak in [
            smtp_password.clone(),
            engine.encode(&smtp_password),
            engine.encode(format!("\0{user}\0{smtp_password}")),
        ] {
            assert!(
                !logs.contains(&leak),
                "{tag}: the SMTP password reached the logs"
            );
        }
    }
    assert!(
        all_logs.contains("the SMTP relay"),
        "relay failures were logged"
    );
    assert!(
        !all_logs.contains("BODYMARK"),
        "a message body reached the logs"
    );
    assert!(
        !all_logs.contains("SUBJECTMARK"),
        "a subject reached the logs"
    );
}

#[test]
fn inbound_secrets_never_reach_logs() {
    let (_tmp, data) = data_dir();
    let port = free_port();
    let server = Server::start(
        &data,
        port,
        "inbound-logs",
        &[("RUST_LOG", "debug"), ("PICLOUD_LOG_FORMAT", "json")],
    );
    let key = admin_key(&data);
    let app = create_app(port, &key, "mail");
    create_script(port, &key, &app, "h", "log::info(\"got mail\"); 1");
    let script_id = {
        let (_, list) = http(
            port,
            "GET",
            &format!("/api/v1/admin/apps/{app}/scripts"),
            Some(&key),
            None,
        )
        .unwrap();
        json(&list)[0]["id"].as_str().unwrap().to_owned()
    };
    let trigger_secret = "TRIGGERSECRET-marker-0123";
    let app_secret = "APPSECRET-marker-456789";
    let body = serde_json::json!({"kind": "email", "script_id": script_id, "config": {"inbound_secret": trigger_secret}}).to_string();
    let (status, trigger) = http(
        port,
        "POST",
        &format!("/api/v1/admin/apps/{app}/triggers"),
        Some(&key),
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 201, "{trigger}");
    assert!(!trigger.contains(trigger_secret));
    let trigger = json(&trigger)["id"].as_str().unwrap().to_owned();
    let put = serde_json::json!({"secret": app_secret}).to_string();
    let (status, shown) = http(
        port,
        "PUT",
        &format!("/api/v1/admin/apps/{app}/email-inbound"),
        Some(&key),
        Some(&put),
    )
    .unwrap();
    assert_eq!(status, 200, "{shown}");
    assert!(!shown.contains(app_secret));
    // Unsigned requests to both endpoints, and a malformed one.
    let email = r#"{"from":"ann@example.com","to":["support@example.org"]}"#;
    for path in [
        format!("/api/v1/email-inbound/{trigger}"),
        format!("/api/v1/apps/{app}/email-inbound"),
    ] {
        let (status, _) = http(port, "POST", &path, None, Some(email)).unwrap();
        assert_eq!(status, 401);
    }
    let (status, out) = http(
        port,
        "POST",
        &format!("/api/v1/email-inbound/{trigger}"),
        None,
        Some("{not json"),
    )
    .unwrap();
    assert_eq!(status, 401, "{out}");
    let (code, logs) = server.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 0, "{logs}");
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "debug logs were captured"
    );
    for secret in [trigger_secret, app_secret] {
        assert!(!logs.contains(secret), "an inbound secret reached the logs");
        assert!(
            !logs.contains(&hex::encode(secret)),
            "an inbound secret reached the logs (hex)"
        );
    }
}
