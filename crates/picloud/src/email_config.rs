//! Outbound email settings (`PICLOUD_SMTP_*`, `PICLOUD_EMAIL_*`). Unlike the
//! rest of the configuration they never stop the server: anything missing or
//! malformed disables email, says why once at start, and every send fails
//! with `not_configured`.

use picloud_manager_core::email::{
    compose::mailbox,
    smtp::{SmtpSettings, SmtpTls},
};
use picloud_shared::email::DEFAULT_EMAIL_MAX_MESSAGE_BYTES;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;
use zeroize::Zeroizing;

/// Default `PICLOUD_SMTP_POOL_SIZE`: connections kept open to the relay.
pub const DEFAULT_SMTP_POOL_SIZE: u32 = 10;

/// What the server knows about outbound email.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// The relay, when email is enabled.
    pub smtp: Option<SmtpSettings>,
    /// Why email is disabled, naming the variables (never their values).
    pub disabled_because: Option<String>,
    /// `PICLOUD_EMAIL_FROM`.
    pub from: Option<String>,
    /// `PICLOUD_EMAIL_MAX_MESSAGE_BYTES`.
    pub max_message_bytes: usize,
    /// What `GET /email/status` shows, also when disabled.
    pub status: EmailStatus,
}

impl Default for EmailConfig {
    /// What an environment without any email variable gives: disabled.
    fn default() -> Self {
        EmailConfig::read(|_| None, Duration::from_secs(5))
    }
}

/// `GET /api/v1/admin/email/status`: the relay picloud sends through. Never the password.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct EmailStatus {
    /// True when sends go to a relay; false when every send is `not_configured`.
    pub configured: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `starttls`, `tls` or `none`.
    #[schema(example = "starttls")]
    pub tls: Option<String>,
    /// The default sender (`PICLOUD_EMAIL_FROM`).
    pub from: Option<String>,
}

impl EmailConfig {
    /// Reads the settings through `var` (the environment in production);
    /// `send_timeout` bounds each exchange with the relay.
    pub fn read(var: impl Fn(&str) -> Option<String>, send_timeout: Duration) -> Self {
        let mut problems: Vec<String> = Vec::new();
        let host = var("PICLOUD_SMTP_HOST").map(|h| h.trim().to_owned());
        let user = var("PICLOUD_SMTP_USER");
        let password = var("PICLOUD_SMTP_PASSWORD").map(Zeroizing::new);
        let missing: Vec<&str> = [
            ("PICLOUD_SMTP_HOST", host.is_none()),
            ("PICLOUD_SMTP_USER", user.is_none()),
            ("PICLOUD_SMTP_PASSWORD", password.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if !missing.is_empty() {
            problems.push(format!("{} not set", missing.join(", ")));
        }
        let tls = match var("PICLOUD_SMTP_TLS").as_deref().map(str::trim) {
            None | Some("starttls") => Some(SmtpTls::StartTls),
            Some("tls") => Some(SmtpTls::Tls),
            Some("none") => Some(SmtpTls::None),
            Some(_) => {
                problems.push("PICLOUD_SMTP_TLS is not starttls, tls or none".into());
                None
            }
        };
        let default_port = match tls {
            Some(SmtpTls::Tls) => 465,
            Some(SmtpTls::None) => 25,
            _ => 587,
        };
        let port = match var("PICLOUD_SMTP_PORT") {
            None => Some(default_port),
            Some(raw) => match raw.trim().parse::<u16>() {
                Ok(port) if port > 0 => Some(port),
                _ => {
                    problems.push("PICLOUD_SMTP_PORT is not a port number".into());
                    None
                }
            },
        };
        let pool_size = match var("PICLOUD_SMTP_POOL_SIZE") {
            None => DEFAULT_SMTP_POOL_SIZE,
            Some(raw) => match raw.trim().parse::<u32>() {
                Ok(size) if (1..=1000).contains(&size) => size,
                _ => {
                    problems.push("PICLOUD_SMTP_POOL_SIZE is not a number from 1 to 1000".into());
                    DEFAULT_SMTP_POOL_SIZE
                }
            },
        };
        let from = var("PICLOUD_EMAIL_FROM").map(|f| f.trim().to_owned());
        if let Some(from) = &from {
            if mailbox("PICLOUD_EMAIL_FROM", from).is_err() {
                problems.push("PICLOUD_EMAIL_FROM is not an email address".into());
            }
        }
        let max_message_bytes = match var("PICLOUD_EMAIL_MAX_MESSAGE_BYTES") {
            None => DEFAULT_EMAIL_MAX_MESSAGE_BYTES,
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(bytes) if bytes >= 1024 => bytes,
                _ => {
                    problems.push(
                        "PICLOUD_EMAIL_MAX_MESSAGE_BYTES is not a number of at least 1024".into(),
                    );
                    DEFAULT_EMAIL_MAX_MESSAGE_BYTES
                }
            },
        };
        let smtp = match (problems.is_empty(), host.clone(), user, password, tls, port) {
            (true, Some(host), Some(user), Some(password), Some(tls), Some(port)) => {
                Some(SmtpSettings {
                    host,
                    port,
                    user,
                    password,
                    tls,
                    pool_size,
                    timeout: send_timeout,
                })
            }
            _ => None,
        };
        // Without a host there is no relay to describe.
        let described = host.is_some();
        EmailConfig {
            status: EmailStatus {
                configured: smtp.is_some(),
                host,
                port: port.filter(|_| described),
                tls: tls.filter(|_| described).map(|t| t.as_str().to_owned()),
                from: from.clone(),
            },
            disabled_because: (!problems.is_empty()).then(|| problems.join("; ")),
            smtp,
            from,
            max_message_bytes,
        }
    }

    /// The same settings with email turned off for `reason`.
    pub fn disabled(mut self, reason: String) -> Self {
        self.smtp = None;
        self.status.configured = false;
        self.disabled_because = Some(reason);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> EmailConfig {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EmailConfig::read(|name| vars.get(name).cloned(), Duration::from_secs(5))
    }

    const FULL: [(&str, &str); 3] = [
        ("PICLOUD_SMTP_HOST", "smtp.example.com"),
        ("PICLOUD_SMTP_USER", "mailer"),
        ("PICLOUD_SMTP_PASSWORD", "hunter2-password"),
    ];

    #[test]
    fn host_user_and_password_enable_email_with_defaults() {
        let config = read(&FULL);
        assert_eq!(config.disabled_because, None);
        let smtp = config.smtp.unwrap();
        assert_eq!(
            (smtp.port, smtp.tls, smtp.pool_size),
            (587, SmtpTls::StartTls, 10)
        );
        assert_eq!(
            config.status,
            EmailStatus {
                configured: true,
                host: Some("smtp.example.com".into()),
                port: Some(587),
                tls: Some("starttls".into()),
                from: None,
            }
        );
        assert!(!format!("{smtp:?}").contains("hunter2"));
    }

    #[test]
    fn anything_missing_or_malformed_disables_email_and_names_it() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![],
                "PICLOUD_SMTP_HOST, PICLOUD_SMTP_USER, PICLOUD_SMTP_PASSWORD not set",
            ),
            (FULL[..2].to_vec(), "PICLOUD_SMTP_PASSWORD not set"),
            (
                [&FULL[..], &[("PICLOUD_SMTP_TLS", "ssl")]].concat(),
                "PICLOUD_SMTP_TLS",
            ),
            (
                [&FULL[..], &[("PICLOUD_SMTP_PORT", "99999")]].concat(),
                "PICLOUD_SMTP_PORT",
            ),
            (
                [&FULL[..], &[("PICLOUD_SMTP_POOL_SIZE", "0")]].concat(),
                "PICLOUD_SMTP_POOL_SIZE",
            ),
            (
                [&FULL[..], &[("PICLOUD_EMAIL_FROM", "not an address")]].concat(),
                "PICLOUD_EMAIL_FROM",
            ),
            (
                [&FULL[..], &[("PICLOUD_EMAIL_MAX_MESSAGE_BYTES", "ten")]].concat(),
                "PICLOUD_EMAIL_MAX_MESSAGE_BYTES",
            ),
        ];
        for (vars, named) in cases {
            let config = read(&vars);
            assert!(config.smtp.is_none(), "{vars:?}");
            assert!(!config.status.configured);
            let reason = config.disabled_because.unwrap();
            assert!(reason.contains(named), "{vars:?}: {reason}");
            assert!(!reason.contains("hunter2"), "{reason}");
        }
    }

    #[test]
    fn tls_modes_pick_their_usual_ports() {
        let tls = read(&[&FULL[..], &[("PICLOUD_SMTP_TLS", "tls")]].concat());
        assert_eq!(tls.smtp.unwrap().port, 465);
        let none = read(
            &[
                &FULL[..],
                &[("PICLOUD_SMTP_TLS", "none"), ("PICLOUD_SMTP_PORT", "2525")],
            ]
            .concat(),
        );
        assert_eq!(none.status.port, Some(2525));
        assert_eq!(none.status.tls.as_deref(), Some("none"));
    }
}
