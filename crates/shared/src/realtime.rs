//! Realtime (SPEC §9): subscriber tokens and the app signing key's stored forms.
//!
//! A token is `rt1.<claims>.<mac>`: `claims` the base64url (no padding) of the
//! JSON `{app_id, topics, exp, jti}` (`jti` a random id, so that no two minted
//! tokens are alike and a limit per token is one holder's), `mac` the base64url of HMAC-SHA256 under the
//! app's realtime signing key over `rt1.<claims>`. Checking compares the MAC
//! with `hmac`'s constant-time check over its full length.

use crate::{
    crypto::{Aad, Keyring, Sealed},
    ids::AppId,
    triggers::{topic_matches, validate_topic, validate_topic_pattern},
    ServiceError,
};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The token format's prefix (and version).
const PREFIX: &str = "rt1.";

/// Bytes of a signing key.
pub const SIGNING_KEY_BYTES: usize = 32;

/// Longest `ttl_secs` a token may have: 7 days.
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// Topics one token or one subscription may name.
pub const MAX_TOPICS: usize = 64;

/// Longest token accepted (a larger one is malformed before any work).
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// Default `PICLOUD_REALTIME_KEY_GRACE_SECS`.
pub const DEFAULT_KEY_GRACE_SECS: u64 = 3600;

/// A minted token and when it expires.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Mints subscriber tokens for scripts (`realtime::token`).
#[async_trait::async_trait]
pub trait RealtimeService: Send + Sync {
    /// A token for `topics` of the caller's app, valid for `ttl_secs`.
    async fn token(
        &self,
        ctx: &crate::triggers::CallContext,
        topics: Vec<String>,
        ttl_secs: u64,
    ) -> Result<IssuedToken, ServiceError>;
}

/// What a subscriber token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    pub app_id: uuid::Uuid,
    /// Topics, or patterns ending in `.*` (as pubsub triggers take them).
    pub topics: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// A random id (tokens minted before it was added have none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
}

impl TokenClaims {
    /// Whether the claims cover `topic`.
    pub fn covers(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| topic_matches(t, topic))
    }
}

/// Why a token was refused; the first three are 401, the last two 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match")]
    Forged,
    #[error("the token has expired")]
    Expired,
    #[error("the token is for another app")]
    OtherApp,
    #[error("the token does not grant a requested topic")]
    TopicNotGranted,
}

/// Checks topics for a token or a subscription: 1 to [`MAX_TOPICS`], each a
/// topic or a `prefix.*` pattern.
pub fn validate_topics(topics: &[String]) -> Result<(), ServiceError> {
    if topics.is_empty() || topics.len() > MAX_TOPICS {
        return Err(ServiceError::InvalidArgument(format!(
            "topics must name 1-{MAX_TOPICS} topics"
        )));
    }
    for topic in topics {
        validate_topic_pattern(topic).map_err(|_| {
            ServiceError::InvalidArgument(
                "each topic must be 1-256 characters of A-Z, a-z, 0-9, '_', '-', ':' or '.', \
                 without empty segments, optionally ending in .*"
                    .into(),
            )
        })?;
    }
    Ok(())
}

/// Checks subscription topics (exact topics only: patterns are for tokens).
pub fn validate_subscription(topics: &[String]) -> Result<(), ServiceError> {
    if topics.is_empty() || topics.len() > MAX_TOPICS {
        return Err(ServiceError::InvalidArgument(format!(
            "topics must name 1-{MAX_TOPICS} topics"
        )));
    }
    topics.iter().try_for_each(|t| validate_topic(t))
}

/// A fresh random token id (128 bits, base64url).
pub fn new_token_id() -> String {
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    B64.encode(id)
}

/// Identifies a signing key without revealing it (a keyed hash of a fixed
/// string): which key verified a stream's token, so that rotation can end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint(pub [u8; 16]);

impl KeyFingerprint {
    /// The fingerprint of `key`.
    pub fn of(key: &[u8]) -> Self {
        let mut mac = keyed(key);
        mac.update(b"picloud realtime key fingerprint");
        let digest = mac.finalize().into_bytes();
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&digest[..16]);
        Self(fingerprint)
    }
}

/// Which of an app's keys verify tokens now: the current one, and the
/// previous one until its grace period ends (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyState {
    pub current: Option<KeyFingerprint>,
    pub previous: Option<(KeyFingerprint, i64)>,
}

impl KeyState {
    /// Until when (Unix seconds) a stream whose token expires at `exp` and
    /// was verified by the key `verified_by` may stay open: its expiry, or
    /// sooner when that key is the previous one; `None` when that key no
    /// longer verifies anything (rotated out twice, or its grace is over).
    pub fn open_until(&self, verified_by: KeyFingerprint, exp: i64, now: i64) -> Option<i64> {
        if self.current == Some(verified_by) {
            return Some(exp);
        }
        match self.previous {
            Some((previous, until)) if previous == verified_by && until > now => {
                Some(exp.min(until))
            }
            _ => None,
        }
    }
}

/// Signs `claims` with `key`.
pub fn sign(claims: &TokenClaims, key: &[u8]) -> String {
    // Serialising a struct of strings and numbers cannot fail.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let signed = format!("{PREFIX}{}", B64.encode(json));
    let mut mac = keyed(key);
    mac.update(signed.as_bytes());
    format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// The claims of `token`, unverified: which app's key to check it with.
pub fn unverified_claims(token: &str) -> Result<TokenClaims, TokenError> {
    let (claims, _) = split(token)?;
    let json = B64.decode(claims).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

/// Verifies `token` against any of `keys` (the app's current key, and its
/// previous one inside the grace period) and its expiry at `now` (Unix
/// seconds): its claims, and the index in `keys` of the key that signed it.
pub fn verify(token: &str, keys: &[&[u8]], now: i64) -> Result<(TokenClaims, usize), TokenError> {
    let (claims_part, mac_part) = split(token)?;
    let mac = B64.decode(mac_part).map_err(|_| TokenError::Malformed)?;
    let signed = &token[..PREFIX.len() + claims_part.len()];
    // Every key is tried, matched or not, so timing says nothing about which matched.
    let mut matched = None;
    for (index, key) in keys.iter().enumerate() {
        let mut expected = keyed(key);
        expected.update(signed.as_bytes());
        if expected.verify_slice(&mac).is_ok() {
            matched = Some(index);
        }
    }
    let Some(index) = matched else {
        return Err(TokenError::Forged);
    };
    let claims = unverified_claims(token)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok((claims, index))
}

/// Checks verified `claims` against a subscription to `topics` of `app`.
pub fn authorize(claims: &TokenClaims, app: AppId, topics: &[String]) -> Result<(), TokenError> {
    if claims.app_id != app.0 {
        return Err(TokenError::OtherApp);
    }
    if topics.iter().all(|topic| claims.covers(topic)) {
        Ok(())
    } else {
        Err(TokenError::TopicNotGranted)
    }
}

fn split(token: &str) -> Result<(&str, &str), TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (claims, mac) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    if claims.is_empty() || mac.is_empty() || mac.contains('.') {
        return Err(TokenError::Malformed);
    }
    Ok((claims, mac))
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// Why a stored signing key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoredKeyError {
    /// The sealed form does not open with the configured keys.
    #[error("the app's realtime signing key does not open with the configured keys")]
    Unopenable,
    /// A plaintext key of an older install is shorter than [`SIGNING_KEY_BYTES`]
    /// (too weak to sign with; the start-up sealing replaces it).
    #[error("the app's plaintext realtime signing key is too short to use")]
    TooShort,
}

/// An app's signing key as a row of `app_secrets` holds it: sealed, and (rows
/// of older installs) plaintext.
pub struct StoredSigningKey<'a> {
    pub plaintext: Option<&'a [u8]>,
    pub sealed: Option<Sealed>,
}

/// The signing key a stored row stands for: the sealed form when there is
/// one (it wins: a plaintext copy beside it is a leftover of the start-up
/// sealing), else the plaintext when it is long enough, else none (not
/// created yet).
pub fn decode_signing_key(
    stored: StoredSigningKey<'_>,
    keyring: &Keyring,
    app: AppId,
) -> Result<Option<Zeroizing<Vec<u8>>>, StoredKeyError> {
    match (stored.sealed, stored.plaintext) {
        (Some(sealed), _) => keyring
            .open(&sealed, &Aad::Realtime { app_id: app })
            .map(Some)
            .map_err(|_| StoredKeyError::Unopenable),
        (None, Some(plain)) if plain.len() < SIGNING_KEY_BYTES => Err(StoredKeyError::TooShort),
        (None, Some(plain)) => Ok(Some(Zeroizing::new(plain.to_vec()))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn claims(app: uuid::Uuid, topics: &[&str], exp: i64) -> TokenClaims {
        TokenClaims {
            app_id: app,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            exp,
            jti: new_token_id(),
        }
    }

    #[test]
    fn a_token_verifies_under_its_key_only_until_it_expires() {
        let app = uuid::Uuid::new_v4();
        let key = [7u8; 32];
        let token = sign(&claims(app, &["orders", "chat.*"], 1_000), &key);
        let (verified, index) = verify(&token, &[&key], 999).unwrap();
        assert_eq!(verified.topics, ["orders", "chat.*"]);
        assert_eq!(index, 0);
        assert_eq!(verify(&token, &[&key], 1_000), Err(TokenError::Expired));
        assert_eq!(verify(&token, &[&[8u8; 32]], 0), Err(TokenError::Forged));
        // The previous key, inside its grace period, is tried too.
        assert_eq!(verify(&token, &[&[8u8; 32], &key], 0).unwrap().1, 1);
    }

    #[test]
    fn tokens_minted_alike_differ_and_tokens_without_an_id_still_verify() {
        let app = uuid::Uuid::new_v4();
        let key = [7u8; 32];
        let one = sign(&claims(app, &["orders"], 1_000), &key);
        let two = sign(&claims(app, &["orders"], 1_000), &key);
        assert_ne!(one, two, "same app, topics and second: still two tokens");
        // A token of the first format (no jti) verifies, and its claims have none.
        let legacy = TokenClaims {
            jti: String::new(),
            ..claims(app, &["orders"], 1_000)
        };
        let token = sign(&legacy, &key);
        let json = B64
            .decode(token.split('.').nth(1).unwrap())
            .map(|j| String::from_utf8(j).unwrap())
            .unwrap();
        assert!(!json.contains("jti"), "{json}");
        assert_eq!(verify(&token, &[&key], 0).unwrap().0.jti, "");
    }

    #[test]
    fn a_stream_stays_open_while_the_key_that_verified_it_does() {
        let current = KeyFingerprint::of(&[1u8; 32]);
        let previous = KeyFingerprint::of(&[2u8; 32]);
        let older = KeyFingerprint::of(&[3u8; 32]);
        assert_ne!(current, previous);
        let state = KeyState {
            current: Some(current),
            previous: Some((previous, 500)),
        };
        assert_eq!(state.open_until(current, 1_000, 100), Some(1_000));
        // The previous key: until its grace ends, or the token's exp if sooner.
        assert_eq!(state.open_until(previous, 1_000, 100), Some(500));
        assert_eq!(state.open_until(previous, 300, 100), Some(300));
        // After the grace, or a key rotated out twice: not at all.
        assert_eq!(state.open_until(previous, 1_000, 500), None);
        assert_eq!(state.open_until(older, 1_000, 100), None);
        assert_eq!(KeyState::default().open_until(current, 1_000, 100), None);
    }

    #[test]
    fn tampered_truncated_and_malformed_tokens_are_refused() {
        let app = uuid::Uuid::new_v4();
        let key = [7u8; 32];
        let token = sign(&claims(app, &["orders"], 1_000), &key);
        let (head, mac) = token.rsplit_once('.').unwrap();
        // Claims swapped for other claims keep the old MAC: forged.
        let other = sign(&claims(app, &["everything.*"], 9_999), &key);
        let (other_head, _) = other.rsplit_once('.').unwrap();
        assert_eq!(
            verify(&format!("{other_head}.{mac}"), &[&key], 0),
            Err(TokenError::Forged)
        );
        // A MAC cut short (at a whole number of bytes, or not), or empty, never matches.
        for cut in [8, 10, 40] {
            assert!(matches!(
                verify(&format!("{head}.{}", &mac[..cut]), &[&key], 0),
                Err(TokenError::Forged | TokenError::Malformed)
            ));
        }
        assert_eq!(
            verify(&format!("{head}.{}", &mac[..40]), &[&key], 0),
            Err(TokenError::Forged)
        );
        for bad in [
            "",
            "rt1.",
            "rt1..",
            &format!("{head}."),
            "rt2.e30.AAAA",
            "rt1.!!!.AAAA",
            &format!("{token}.extra"),
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            let refused = verify(bad, &[&key], 0).unwrap_err();
            assert!(
                matches!(refused, TokenError::Malformed | TokenError::Forged),
                "{bad}: {refused:?}"
            );
        }
    }

    #[test]
    fn claims_grant_their_app_and_topics_only() {
        let app = uuid::Uuid::new_v4();
        let granted = claims(app, &["orders", "chat.*"], 1);
        let ask = |topics: &[&str]| topics.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        assert!(authorize(&granted, AppId(app), &ask(&["orders", "chat.room1"])).is_ok());
        assert_eq!(
            authorize(&granted, AppId(app), &ask(&["orders", "billing"])),
            Err(TokenError::TopicNotGranted)
        );
        assert_eq!(
            authorize(&granted, AppId(app), &ask(&["chat"])),
            Err(TokenError::TopicNotGranted)
        );
        assert_eq!(
            authorize(&granted, AppId(uuid::Uuid::new_v4()), &ask(&["orders"])),
            Err(TokenError::OtherApp)
        );
    }

    #[test]
    fn the_signing_key_decodes_from_each_of_the_four_stored_states() {
        let keyring = Keyring::new(MasterKey::generate(), Vec::new());
        let app = AppId(uuid::Uuid::new_v4());
        let sealed_key = [1u8; 32];
        let plain_key = [2u8; 32];
        let sealed = || {
            keyring
                .seal(&sealed_key, &Aad::Realtime { app_id: app })
                .unwrap()
        };
        let decode = |plaintext: Option<&[u8]>, sealed: Option<Sealed>| {
            decode_signing_key(StoredSigningKey { plaintext, sealed }, &keyring, app)
                .map(|key| key.map(|k| k.to_vec()))
        };
        // Neither: not created yet.
        assert_eq!(decode(None, None), Ok(None));
        // Plaintext only (an older install's row): used as it is.
        assert_eq!(decode(Some(&plain_key), None), Ok(Some(plain_key.to_vec())));
        // ... unless too short to be a key worth signing with.
        assert_eq!(
            decode(Some(&[2u8; 16]), None),
            Err(StoredKeyError::TooShort)
        );
        // Sealed only.
        assert_eq!(decode(None, Some(sealed())), Ok(Some(sealed_key.to_vec())));
        // Both: the sealed form wins.
        assert_eq!(
            decode(Some(&plain_key), Some(sealed())),
            Ok(Some(sealed_key.to_vec()))
        );
        // Sealed for another app: refused, never the plaintext instead.
        let other = keyring
            .seal(
                &sealed_key,
                &Aad::Realtime {
                    app_id: AppId(uuid::Uuid::new_v4()),
                },
            )
            .unwrap();
        assert_eq!(
            decode(Some(&plain_key), Some(other)),
            Err(StoredKeyError::Unopenable)
        );
    }
}
