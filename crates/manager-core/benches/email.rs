//! Outbound email throughput against the local test SMTP server
//! (`scripts/bench-email.sh` starts it and sets `PICLOUD_TEST_SMTP_*`):
//! picloud's pooled transport against one connection per message (connect,
//! EHLO, AUTH, send, QUIT), with 1 and 8 concurrent senders, as a script
//! waiting on its send would be. Prints messages/s and the ratio.

use lettre::transport::smtp::{
    authentication::{Credentials, Mechanism},
    client::AsyncSmtpConnection,
    extension::ClientId,
};
use picloud_manager_core::email::{
    compose::compose,
    smtp::{envelope, SmtpSettings, SmtpTls, SmtpTransport},
};
use picloud_shared::email::{EmailTransport, OutboundEmail, RawEmail};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use zeroize::Zeroizing;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this benchmark through scripts/bench-email.sh")
    })
}

/// One connection per message, as a transport without a pool would do it
/// (`TCP_NODELAY` on, as in picloud's pool, unless `nagle`: lettre's own
/// connect, which leaves it off).
async fn send_unpooled(port: u16, credentials: &Credentials, raw: &RawEmail, nagle: bool) {
    let mut conn = if nagle {
        AsyncSmtpConnection::connect_tokio1(
            ("127.0.0.1", port),
            Some(Duration::from_secs(5)),
            &ClientId::default(),
            None,
            None,
        )
        .await
        .expect("connect")
    } else {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), &ClientId::default())
            .await
            .expect("ehlo")
    };
    conn.auth(&[Mechanism::Plain], credentials)
        .await
        .expect("auth");
    conn.send(&envelope(raw).expect("envelope"), &raw.message)
        .await
        .expect("send");
    conn.quit().await.expect("quit");
}

/// Sends `total` messages with `concurrency` senders; messages per second.
async fn run<F, Fut>(total: usize, concurrency: usize, send: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let send = Arc::new(send);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let send = send.clone();
        let share = total / concurrency + usize::from(worker < total % concurrency);
        tasks.spawn(async move {
            for _ in 0..share {
                send().await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a sender panicked");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let port: u16 = var("PICLOUD_TEST_SMTP_PORT").parse().expect("a port");
    let user = var("PICLOUD_TEST_SMTP_USER");
    let password = var("PICLOUD_TEST_SMTP_PASSWORD");
    let total: usize = std::env::var("EMAIL_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let raw = compose(
        &OutboundEmail {
            to: vec!["ann@example.com".into()],
            subject: "Your order".into(),
            text: Some("Thanks for your order. It ships tomorrow.".into()),
            ..OutboundEmail::default()
        },
        Some("shop@example.org"),
        1 << 20,
    )
    .expect("compose")
    .raw;
    let credentials = Credentials::new(user.clone(), password.clone());
    // The transport's pool spawns its upkeep on the runtime it is built in.
    let _runtime = runtime.enter();
    println!("email: {total} messages to 127.0.0.1:{port} (aiosmtpd, sink)");
    for concurrency in [1, 8] {
        let transport = Arc::new(
            SmtpTransport::new(&SmtpSettings {
                host: "127.0.0.1".into(),
                port,
                user: user.clone(),
                password: Zeroizing::new(password.clone()),
                tls: SmtpTls::None,
                pool_size: 10,
                timeout: Duration::from_secs(5),
            })
            .expect("transport"),
        );
        let pooled = runtime.block_on({
            let raw = raw.clone();
            run(total, concurrency, move || {
                let (transport, raw) = (transport.clone(), raw.clone());
                async move { transport.send(&raw).await.expect("pooled send") }
            })
        });
        let unpooled = |nagle: bool, total: usize| {
            let (raw, credentials) = (raw.clone(), credentials.clone());
            runtime.block_on(run(total, concurrency, move || {
                let (raw, credentials) = (raw.clone(), credentials.clone());
                async move { send_unpooled(port, &credentials, &raw, nagle).await }
            }))
        };
        let per_message = unpooled(false, total);
        // Nagle's stall makes this one slow: a tenth of the messages.
        let per_message_nagle = unpooled(true, (total / 10).max(concurrency));
        println!(
            "  {concurrency} concurrent: pooled {pooled:>6.0} msg/s | one connection per message {per_message:>6.0} msg/s | ratio {:.2} | (per message with Nagle on, as lettre 0.11.23 connects: {per_message_nagle:.0} msg/s)",
            pooled / per_message
        );
    }
}
