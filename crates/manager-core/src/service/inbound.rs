//! Inbound email (SPEC §7): a request to an email trigger's endpoint is
//! checked against the trigger's secret, read as an email, and delivered
//! once (deduplicated by `webhook-id` or `message_id` for 24 hours).

use crate::repo::{self, inbound::Delivery};
use chrono::Utc;
use picloud_shared::{
    crypto::{Aad, Keyring, Sealed},
    inbound::{
        parse_json_email, parse_mime_email, verify_signature, MalformedEmail, SignatureError,
        SignatureHeaders,
    },
    triggers::TriggerEvent,
};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// An accepted email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Enqueued as this event.
    Accepted(i64),
    /// Seen within 24 hours: the first delivery's event, nothing enqueued.
    Duplicate(i64),
}

/// Why a request was not accepted; each maps to one status and one metric result.
#[derive(Debug, thiserror::Error)]
pub enum InboundRefusal {
    #[error("no email trigger with this id")]
    UnknownTrigger,
    #[error("{0}")]
    Unsigned(SignatureError),
    /// The stored secret does not open with the configured keys: fail closed.
    #[error("the signature cannot be checked")]
    SecretUnreadable,
    #[error("{0}")]
    Malformed(MalformedEmail),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// Receives inbound email for email triggers.
#[derive(Clone)]
pub struct InboundService {
    pool: PgPool,
    keyring: Arc<Keyring>,
}

impl InboundService {
    /// A service over `pool`, opening inbound secrets with `keyring`.
    pub fn new(pool: PgPool, keyring: Arc<Keyring>) -> Self {
        Self { pool, keyring }
    }

    /// True when `trigger_id` names an email trigger (checked before a body is read).
    pub async fn trigger_exists(&self, trigger_id: Uuid) -> Result<bool, sqlx::Error> {
        Ok(repo::inbound::email_trigger(&self.pool, trigger_id)
            .await?
            .is_some())
    }

    /// Checks and delivers one request to trigger `trigger_id`'s endpoint;
    /// `mime` when the body is a raw message (`message/rfc822`), else the
    /// generic JSON shape.
    pub async fn receive(
        &self,
        trigger_id: Uuid,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
        mime: bool,
    ) -> Result<Received, InboundRefusal> {
        let target = repo::inbound::email_trigger(&self.pool, trigger_id)
            .await?
            .ok_or(InboundRefusal::UnknownTrigger)?;
        if let Some(stored) = &target.secret {
            let sealed =
                Sealed::from_stored(&stored.key_id, &stored.nonce, stored.ciphertext.clone())
                    .map_err(|_| InboundRefusal::SecretUnreadable)?;
            let secret = self
                .keyring
                .open(&sealed, &Aad::Inbound { trigger_id })
                .map_err(|_| {
                    tracing::error!(trigger_id = %trigger_id, "an inbound secret does not open with the configured keys; refusing its requests");
                    InboundRefusal::SecretUnreadable
                })?;
            let secret =
                std::str::from_utf8(&secret).map_err(|_| InboundRefusal::SecretUnreadable)?;
            verify_signature(secret, headers, body, Utc::now().timestamp())
                .map_err(InboundRefusal::Unsigned)?;
        }
        let email = if mime {
            parse_mime_email(body, Utc::now())
        } else {
            parse_json_email(body, Utc::now())
        }
        .map_err(InboundRefusal::Malformed)?;
        let dedupe_key = headers
            .webhook_id
            .map(|id| format!("webhook-id:{id}"))
            .or_else(|| email.message_id.as_ref().map(|m| format!("message-id:{m}")));
        let payload = serde_json::to_value(TriggerEvent::Email { email }).map_err(|_| {
            InboundRefusal::Malformed(MalformedEmail("the email cannot be encoded".into()))
        })?;
        match repo::inbound::deliver(&self.pool, trigger_id, dedupe_key.as_deref(), &payload)
            .await?
        {
            Delivery::Accepted(id) => Ok(Received::Accepted(id)),
            Delivery::Duplicate(id) => Ok(Received::Duplicate(id)),
            Delivery::NoTrigger => Err(InboundRefusal::UnknownTrigger),
        }
    }
}
