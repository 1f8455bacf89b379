//! The production [`EmailTransport`]: lettre's async SMTP transport with its
//! connection pool (a message reuses an open connection; lettre checks it
//! with a NOOP at checkout).

use async_trait::async_trait;
use lettre::{
    address::Envelope,
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
        PoolConfig,
    },
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
};
use picloud_shared::email::{EmailFailure, EmailTransport, RawEmail, TransportError};
use std::{fmt, time::Duration};
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

/// Sends over SMTP through a pool of connections.
pub struct SmtpTransport {
    inner: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpTransport {
    /// A transport for `settings`; connects lazily, on the first send.
    pub fn new(settings: &SmtpSettings) -> Result<Self, String> {
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls | SmtpTls::Tls => {
                let parameters = TlsParameters::new(settings.host.clone())
                    .map_err(|e| format!("TLS parameters for the SMTP host: {e}"))?;
                if settings.tls == SmtpTls::Tls {
                    Tls::Wrapper(parameters)
                } else {
                    Tls::Required(parameters)
                }
            }
        };
        let inner = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
            .port(settings.port)
            .tls(tls)
            .credentials(Credentials::new(
                settings.user.clone(),
                settings.password.as_str().to_owned(),
            ))
            .timeout(Some(settings.timeout))
            .pool_config(PoolConfig::new().max_size(settings.pool_size.max(1)))
            .build();
        Ok(SmtpTransport { inner })
    }
}

#[async_trait]
impl EmailTransport for SmtpTransport {
    async fn send(&self, email: &RawEmail) -> Result<(), TransportError> {
        let envelope = envelope(email)?;
        self.inner
            .send_raw(&envelope, &email.message)
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
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
/// The message holds the reply code, never credentials or content; the
/// relay's own words go to the log.
pub fn classify(err: &lettre::transport::smtp::Error) -> TransportError {
    let code = err.status().map(u16::from);
    tracing::warn!(error = %err, code, "the SMTP relay did not take a message");
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
