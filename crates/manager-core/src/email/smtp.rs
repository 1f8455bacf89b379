//! The production [`EmailTransport`]: SMTP through lettre's protocol client
//! (`AsyncSmtpConnection`: EHLO, STARTTLS, AUTH, the exchange), over a pool
//! of open connections kept here.
//!
//! Why not lettre's own pooled `AsyncSmtpTransport`: lettre 0.11.23 leaves
//! Nagle's algorithm on, and writes a message's body and its terminating
//! `.` separately, so every message waits for the relay's delayed ACK
//! (40 ms on Linux): 23 messages/s per connection, measured. The fix is
//! merged upstream (lettre#1159) but not released; until it is, this pool
//! opens the TCP connections itself with `TCP_NODELAY` and hands them to
//! lettre. Implicit TLS (`PICLOUD_SMTP_TLS=tls`) still connects through
//! lettre, so it keeps the stall until then.

use async_trait::async_trait;
use lettre::{
    address::Envelope,
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, TlsParameters},
        extension::ClientId,
    },
};
use picloud_shared::email::{EmailFailure, EmailTransport, RawEmail, TransportError};
use std::{
    fmt,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};
use tokio::{net::TcpStream, sync::Semaphore};
use zeroize::Zeroizing;

/// How the connection to the relay is secured (`PICLOUD_SMTP_TLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required), usually port 587.
    StartTls,
    /// TLS from the first byte, usually port 465.
    Tls,
    /// No encryption: a relay on the same host or in tests only.
    None,
}

impl SmtpTls {
    /// The setting's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::StartTls => "starttls",
            SmtpTls::Tls => "tls",
            SmtpTls::None => "none",
        }
    }
}

/// Where and how to send: `PICLOUD_SMTP_*`.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Zeroizing<String>,
    pub tls: SmtpTls,
    /// Most open connections to the relay.
    pub pool_size: u32,
    /// Longest wait for the relay on one command.
    pub timeout: Duration,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Connections idle longer than this are closed rather than reused.
const MAX_IDLE: Duration = Duration::from_secs(60);
/// Connections idle longer than this are checked with a NOOP before reuse.
const CHECK_AFTER: Duration = Duration::from_secs(5);

/// An open, authenticated connection waiting in the pool.
struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// Sends over SMTP through a pool of at most `pool_size` open connections.
pub struct SmtpTransport {
    settings: SmtpSettings,
    credentials: Credentials,
    tls: Option<TlsParameters>,
    hello: ClientId,
    idle: Mutex<Vec<Idle>>,
    slots: Semaphore,
}

impl SmtpTransport {
    /// A transport for `settings`; connects lazily, on the first send.
    pub fn new(settings: &SmtpSettings) -> Result<Self, String> {
        let tls = match settings.tls {
            SmtpTls::None => None,
            SmtpTls::StartTls | SmtpTls::Tls => Some(
                TlsParameters::new(settings.host.clone())
                    .map_err(|e| format!("TLS parameters for the SMTP host: {e}"))?,
            ),
        };
        Ok(SmtpTransport {
            credentials: Credentials::new(
                settings.user.clone(),
                settings.password.as_str().to_owned(),
            ),
            tls,
            hello: ClientId::default(),
            idle: Mutex::default(),
            slots: Semaphore::new(settings.pool_size.max(1) as usize),
            settings: settings.clone(),
        })
    }

    /// An open connection: an idle one still alive, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, TransportError> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(Idle { mut conn, since }) = idle else {
                return self.connect().await;
            };
            let idle_for = since.elapsed();
            if idle_for > MAX_IDLE {
                conn.abort().await;
            } else if idle_for <= CHECK_AFTER || conn.test_connected().await {
                return Ok(conn);
            }
        }
    }

    /// Connects, secures and authenticates a new connection.
    async fn connect(&self) -> Result<AsyncSmtpConnection, TransportError> {
        let address = (self.settings.host.as_str(), self.settings.port);
        let timeout = self.settings.timeout;
        let mut conn = if self.settings.tls == SmtpTls::Tls {
            AsyncSmtpConnection::connect_tokio1(
                address,
                Some(timeout),
                &self.hello,
                self.tls.clone(),
                None,
            )
            .await
            .map_err(|e| classify(&e))?
        } else {
            let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the SMTP relay could not be reached");
                    return Err(unreachable("the SMTP relay could not be reached"));
                }
                Err(_) => {
                    return Err(unreachable(
                        "the SMTP relay did not accept a connection in time",
                    ))
                }
            };
            // Nagle off: see the module comment.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "TCP_NODELAY could not be set on the SMTP connection");
            }
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                .await
                .map_err(|e| classify(&e))?
        };
        if let (SmtpTls::StartTls, Some(tls)) = (self.settings.tls, &self.tls) {
            conn.starttls(tls.clone(), &self.hello)
                .await
                .map_err(|e| classify(&e))?;
        }
        conn.auth(&[Mechanism::Plain, Mechanism::Login], &self.credentials)
            .await
            .map_err(|e| classify(&e))?;
        Ok(conn)
    }
}

fn unreachable(message: &str) -> TransportError {
    TransportError {
        failure: EmailFailure::Transient,
        message: message.to_owned(),
    }
}

#[async_trait]
impl EmailTransport for SmtpTransport {
    async fn send(&self, email: &RawEmail) -> Result<(), TransportError> {
        let envelope = envelope(email)?;
        // At most pool_size connections: a send waits here for one (the
        // service bounds the wait with the SDK timeout).
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| unreachable("the SMTP transport is closed"))?;
        let mut conn = self.checkout().await?;
        match conn.send(&envelope, &email.message).await {
            Ok(_) => {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Idle {
                        conn,
                        since: Instant::now(),
                    });
                Ok(())
            }
            // A refused message may leave the session mid-transaction: start
            // afresh next time rather than reuse it.
            Err(e) => {
                conn.abort().await;
                Err(classify(&e))
            }
        }
    }
}

/// The SMTP envelope of a composed message (its addresses were parsed already).
pub fn envelope(email: &RawEmail) -> Result<Envelope, TransportError> {
    let unparsable = || TransportError {
        failure: EmailFailure::Permanent,
        message: "the envelope has an address that does not parse".into(),
    };
    let sender = email.sender.parse().map_err(|_| unparsable())?;
    let recipients = email
        .recipients
        .iter()
        .map(|r| r.parse())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| unparsable())?;
    Envelope::new(Some(sender), recipients).map_err(|_| unparsable())
}

/// Sorts a lettre error into the kinds of SPEC §7. A 535 is a permanent
/// reply in SMTP terms but means the credentials are wrong, so it comes first.
/// Neither the message nor the log holds the relay's words.
pub fn classify(err: &lettre::transport::smtp::Error) -> TransportError {
    let code = err.status().map(u16::from);
    // Never the relay's words: a reply can echo what it was sent (an AUTH
    // line, recipients). The code and the failure's category say enough.
    tracing::warn!(
        code,
        timeout = err.is_timeout(),
        tls = err.is_tls(),
        client = err.is_client(),
        "the SMTP relay did not take a message"
    );
    let (failure, message) = match code {
        Some(535) => (
            EmailFailure::AuthFailed,
            "the SMTP relay refused the credentials (535)".to_owned(),
        ),
        Some(code) if err.is_permanent() => (
            EmailFailure::Permanent,
            format!("the SMTP relay refused the message ({code})"),
        ),
        Some(code) => (
            EmailFailure::Transient,
            format!("the SMTP relay deferred the message ({code}); try again later"),
        ),
        None if err.is_timeout() => (
            EmailFailure::Transient,
            "the SMTP relay did not answer in time".to_owned(),
        ),
        None => (
            EmailFailure::Transient,
            "the SMTP relay could not be reached".to_owned(),
        ),
    };
    TransportError { failure, message }
}
