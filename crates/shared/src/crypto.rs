//! Master keys, the keyring and sealing: the only place picloud encrypts.
//!
//! Every value picloud keeps encrypted at rest (user secrets, inbound-email
//! secrets, per-app realtime signing keys) is *sealed* here with the active
//! [`MasterKey`] of a [`Keyring`] and *opened* here with whichever key made it.
//! The module is pure: it reads no environment variables and touches no files,
//! so callers parse configuration once ([`Keyring::from_env_values`]) and tests
//! never need process state.
//!
//! # Why AES-256-GCM with random 96-bit nonces
//!
//! GCM is catastrophically broken by a repeated (key, nonce) pair, so each
//! seal draws a fresh 96-bit nonce from the OS CSPRNG. Random nonces collide by
//! the birthday bound: after about 2^32 seals under one key the chance of any
//! collision reaches roughly 2^-32, the limit NIST SP 800-38D sets. picloud
//! seals a value when a secret is written or a key is re-sealed, thousands or
//! millions of times in a key's life, far below that bound. Rotation
//! (`picloud keys rotate`) starts a new key and so resets the count. A counter
//! nonce would need durable, coordinated state across restarts and nodes;
//! random nonces need none.
//!
//! # Why associated data binds rows
//!
//! A sealed value is authenticated together with an [`Aad`] naming the row it
//! belongs to (`secret:{app_id}:{name}`, ...). Someone who can write to the
//! database but does not hold the key cannot copy app A's ciphertext into app
//! B's row, or swap two secrets' values, and have either open: the tag no
//! longer verifies. Every associated-data string is built by [`Aad::bytes`],
//! so no caller can spell one differently.
//!
//! # Why key ids are derived, not random
//!
//! Each ciphertext records the [`KeyId`] of the key that sealed it. The id is
//! a hash of the key (with a fixed label), so the same key always has the same
//! id on every node and after every restart, with nothing to store or keep in
//! sync; at start-up picloud can tell exactly which configured key is missing
//! for data in the database. Eight bytes of SHA-256 reveal nothing useful
//! about a 256-bit key and make an accidental collision between a handful of
//! keys negligible.

use std::fmt;

use aes_gcm::{
    aead::{Aead, Payload},
    Aes256Gcm, KeyInit,
};
use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use rand::{rngs::OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ids::AppId;

/// Environment variable holding the active master key.
pub const SECRET_KEY_VAR: &str = "PICLOUD_SECRET_KEY";
/// Environment variable holding comma-separated decrypt-only previous keys.
pub const PREVIOUS_KEYS_VAR: &str = "PICLOUD_SECRET_KEYS_PREVIOUS";
/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key id in bytes.
pub const KEY_ID_LEN: usize = 8;
/// Length of a sealing nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

const KEY_ID_LABEL: &[u8] = b"picloud-key-id-v1\0";

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Why a master key could not be loaded; each message names the variable and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The variable is unset or empty.
    #[error(
        "{var} is not set; generate one with `picloud keys generate` (base64 of 32 random bytes) or run with --dev"
    )]
    Missing {
        /// The variable (or file) that should hold the key.
        var: &'static str,
    },
    /// The value is not base64.
    #[error(
        "{var} is not valid base64; it must be the base64 of 32 random bytes, as `picloud keys generate` prints"
    )]
    Malformed {
        /// The variable (or file) holding the bad value.
        var: &'static str,
    },
    /// The value is base64 but does not decode to 32 bytes.
    #[error(
        "{var} decodes to {actual} bytes, not 32; generate a key with `picloud keys generate` (base64 of 32 random bytes)"
    )]
    WrongLength {
        /// The variable (or file) holding the bad value.
        var: &'static str,
        /// How many bytes the value decoded to.
        actual: usize,
    },
}

/// Why sealing or opening failed; never carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The value was sealed with a key the keyring does not hold.
    #[error(
        "a sealed value names key id {key_id}, which is not configured; set {SECRET_KEY_VAR} to that key or add it to {PREVIOUS_KEYS_VAR}"
    )]
    UnknownKey {
        /// The id recorded beside the ciphertext.
        key_id: KeyId,
    },
    /// Authentication failed: wrong key, tampered data or a value moved to another row.
    #[error("a sealed value failed to open (wrong key, tampered data or moved row)")]
    Decrypt,
    /// A stored part has the wrong shape (length or encoding).
    #[error("a stored sealed value is corrupt: its {field} is malformed")]
    Corrupt {
        /// Which part is malformed: "key id", "nonce" or "ciphertext".
        field: &'static str,
    },
    /// Sealing itself failed.
    #[error("a value could not be sealed: {reason}")]
    Seal {
        /// Why, without the value.
        reason: &'static str,
    },
}

/// The id of a master key: the first 8 bytes of SHA-256 over a fixed label and the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// Wraps raw id bytes, e.g. read back from storage.
    pub const fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw id bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    /// The id as 16 lowercase hex characters, the form stored in key-id columns.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 16 hex characters; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    fn derive(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(KEY_ID_LABEL)
            .chain_update(key)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// A 256-bit master key; zeroized on drop, never printed, never serialized.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    bytes: [u8; KEY_LEN],
    #[zeroize(skip)]
    id: KeyId,
}

impl MasterKey {
    fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let id = KeyId::derive(&bytes);
        Self { bytes, id }
    }

    /// A fresh key from the OS CSPRNG.
    ///
    /// Panics only if the operating system cannot supply randomness, in which
    /// case no key could be made safely at all.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(bytes.as_mut());
        Self::from_bytes(*bytes)
    }

    /// Parses the base64 of 32 bytes (padded or not, standard or URL-safe), naming [`SECRET_KEY_VAR`] in errors.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Self::parse(SECRET_KEY_VAR, text)
    }

    /// Parses an optional configuration value, naming `var` in every error; `None` or blank is [`KeyError::Missing`].
    pub fn from_env_value(var: &'static str, value: Option<&str>) -> Result<Self, KeyError> {
        match value.map(str::trim) {
            None | Some("") => Err(KeyError::Missing { var }),
            Some(text) => Self::parse(var, text),
        }
    }

    fn parse(var: &'static str, text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Malformed { var });
        }
        let decoded = Zeroizing::new(
            STANDARD_LENIENT
                .decode(text)
                .or_else(|_| URL_SAFE_LENIENT.decode(text))
                .map_err(|_| KeyError::Malformed { var })?,
        );
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        if decoded.len() != KEY_LEN {
            return Err(KeyError::WrongLength {
                var,
                actual: decoded.len(),
            });
        }
        bytes.copy_from_slice(&decoded);
        Ok(Self::from_bytes(*bytes))
    }

    /// The key as padded standard base64.
    ///
    /// Only for `picloud keys generate` and for writing the dev key file: the
    /// returned string is key material and must never be logged.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    /// This key's derived id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    // The AES key schedule lives only for the duration of one seal or open.
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.bytes).into())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &format_args!("{}", self.id))
            .finish()
    }
}

/// The active master key, which seals, plus decrypt-only previous keys kept during rotation.
pub struct Keyring {
    active: MasterKey,
    previous: Vec<MasterKey>,
}

impl Keyring {
    /// A keyring sealing with `active`; previous keys equal to it or to each other are dropped.
    pub fn new(active: MasterKey, previous: Vec<MasterKey>) -> Self {
        let mut kept: Vec<MasterKey> = Vec::with_capacity(previous.len());
        for key in previous {
            if key.id() != active.id() && !kept.iter().any(|k| k.id() == key.id()) {
                kept.push(key);
            }
        }
        Self {
            active,
            previous: kept,
        }
    }

    /// Builds the keyring from the values of [`SECRET_KEY_VAR`] and [`PREVIOUS_KEYS_VAR`] (comma-separated; blanks ignored).
    pub fn from_env_values(active: Option<&str>, previous: Option<&str>) -> Result<Self, KeyError> {
        let active = MasterKey::from_env_value(SECRET_KEY_VAR, active)?;
        let previous = previous
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| MasterKey::parse(PREVIOUS_KEYS_VAR, item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(active, previous))
    }

    /// The id of the key new seals use.
    pub fn active_id(&self) -> KeyId {
        self.active.id()
    }

    /// Whether the keyring can open values sealed under `id`.
    pub fn contains(&self, id: KeyId) -> bool {
        self.key(id).is_some()
    }

    /// Every key id held, the active one first.
    pub fn ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.active)
            .chain(&self.previous)
            .map(MasterKey::id)
            .collect()
    }

    fn key(&self, id: KeyId) -> Option<&MasterKey> {
        std::iter::once(&self.active)
            .chain(&self.previous)
            .find(|k| k.id() == id)
    }

    /// Seals `plaintext` bound to `aad` with the active key and a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &Aad<'_>) -> Result<Sealed, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| CryptoError::Seal {
                reason: "the OS random source failed",
            })?;
        let aad = aad.bytes();
        let ciphertext = self
            .active
            .cipher()
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Seal {
                reason: "the value is too large for AES-GCM",
            })?;
        Ok(Sealed {
            key_id: self.active.id(),
            nonce,
            ciphertext,
        })
    }

    /// Opens `sealed` with the key it names, checking it was sealed for `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &Aad<'_>) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = self.key(sealed.key_id).ok_or(CryptoError::UnknownKey {
            key_id: sealed.key_id,
        })?;
        let aad = aad.bytes();
        key.cipher()
            .decrypt(
                &sealed.nonce.into(),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active.id())
            .field(
                "previous",
                &self.previous.iter().map(MasterKey::id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A sealed value as stored: the sealing key's id, the nonce and the ciphertext with its tag appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the key that sealed the value.
    pub key_id: KeyId,
    /// The random 96-bit nonce used for this value alone.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
}

impl Sealed {
    /// Rebuilds a sealed value from raw database columns; wrong lengths are [`CryptoError::Corrupt`].
    pub fn from_parts(
        key_id_bytes: &[u8],
        nonce: &[u8],
        ciphertext: Vec<u8>,
    ) -> Result<Self, CryptoError> {
        let key_id = <[u8; KEY_ID_LEN]>::try_from(key_id_bytes)
            .map_err(|_| CryptoError::Corrupt { field: "key id" })?;
        Self::build(KeyId(key_id), nonce, ciphertext)
    }

    /// Rebuilds a sealed value whose key id is stored as hex text; malformed parts are [`CryptoError::Corrupt`].
    pub fn from_stored(
        key_id_hex: &str,
        nonce: &[u8],
        ciphertext: Vec<u8>,
    ) -> Result<Self, CryptoError> {
        let key_id = KeyId::from_hex(key_id_hex).ok_or(CryptoError::Corrupt { field: "key id" })?;
        Self::build(key_id, nonce, ciphertext)
    }

    fn build(key_id: KeyId, nonce: &[u8], ciphertext: Vec<u8>) -> Result<Self, CryptoError> {
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce)
            .map_err(|_| CryptoError::Corrupt { field: "nonce" })?;
        if ciphertext.len() < TAG_LEN {
            return Err(CryptoError::Corrupt {
                field: "ciphertext",
            });
        }
        Ok(Self {
            key_id,
            nonce,
            ciphertext,
        })
    }
}

/// The row a sealed value belongs to; the one place associated-data strings are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aad<'a> {
    /// A user secret: `secret:{app_id}:{name}`.
    Secret {
        /// The owning app.
        app_id: AppId,
        /// The secret's name.
        name: &'a str,
    },
    /// An inbound-email trigger's secret: `inbound:{trigger_id}`.
    Inbound {
        /// The trigger.
        trigger_id: uuid::Uuid,
    },
    /// An app's inbound-email secret: `inbound-app:{app_id}`.
    InboundApp {
        /// The owning app.
        app_id: AppId,
    },
    /// An app's realtime signing key: `realtime:{app_id}`.
    Realtime {
        /// The owning app.
        app_id: AppId,
    },
}

impl Aad<'_> {
    /// The exact associated-data bytes authenticated with the value.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Aad::Secret { app_id, name } => format!("secret:{app_id}:{name}"),
            Aad::Inbound { trigger_id } => format!("inbound:{trigger_id}"),
            Aad::InboundApp { app_id } => format!("inbound-app:{app_id}"),
            Aad::Realtime { app_id } => format!("realtime:{app_id}"),
        }
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn app() -> AppId {
        AppId::new()
    }

    fn secret(app_id: AppId, name: &str) -> Aad<'_> {
        Aad::Secret { app_id, name }
    }

    fn fixed_key(byte: u8) -> (MasterKey, String) {
        let text = STANDARD.encode([byte; KEY_LEN]);
        (MasterKey::from_base64(&text).unwrap(), text)
    }

    #[test]
    fn seal_then_open_round_trips() {
        let ring = Keyring::new(MasterKey::generate(), Vec::new());
        let a = app();
        let sealed = ring.seal(b"hunter2", &secret(a, "db.password")).unwrap();
        assert_eq!(sealed.key_id, ring.active_id());
        assert_eq!(sealed.ciphertext.len(), b"hunter2".len() + TAG_LEN);
        let opened = ring.open(&sealed, &secret(a, "db.password")).unwrap();
        assert_eq!(opened.as_slice(), b"hunter2");
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let ring = Keyring::new(MasterKey::generate(), Vec::new());
        let aad = Aad::Realtime { app_id: app() };
        let sealed = ring.seal(b"", &aad).unwrap();
        assert!(ring.open(&sealed, &aad).unwrap().is_empty());
    }

    #[test]
    fn tampering_with_any_part_fails_to_open() {
        let ring = Keyring::new(MasterKey::generate(), Vec::new());
        let aad = secret(app(), "token");
        let sealed = ring.seal(b"some secret value", &aad).unwrap();

        let mut body = sealed.clone();
        body.ciphertext[0] ^= 0x01;
        assert_eq!(ring.open(&body, &aad), Err(CryptoError::Decrypt));

        let mut tag = sealed.clone();
        let last = tag.ciphertext.len() - 1;
        tag.ciphertext[last - (TAG_LEN - 1)] ^= 0x80;
        assert_eq!(ring.open(&tag, &aad), Err(CryptoError::Decrypt));
        let mut tag_end = sealed.clone();
        tag_end.ciphertext[last] ^= 0x01;
        assert_eq!(ring.open(&tag_end, &aad), Err(CryptoError::Decrypt));

        let mut nonce = sealed.clone();
        nonce.nonce[5] ^= 0x01;
        assert_eq!(ring.open(&nonce, &aad), Err(CryptoError::Decrypt));

        let mut truncated = sealed.clone();
        truncated.ciphertext.truncate(3);
        assert_eq!(ring.open(&truncated, &aad), Err(CryptoError::Decrypt));

        let other = Aad::Realtime { app_id: app() };
        assert_eq!(ring.open(&sealed, &other), Err(CryptoError::Decrypt));
    }

    #[test]
    fn ciphertext_moved_to_another_row_fails_to_open() {
        let ring = Keyring::new(MasterKey::generate(), Vec::new());
        let (a, b) = (app(), app());
        let sealed = ring.seal(b"value", &secret(a, "api.key")).unwrap();
        assert_eq!(
            ring.open(&sealed, &secret(b, "api.key")),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            ring.open(&sealed, &secret(a, "other.key")),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            ring.open(&sealed, &Aad::InboundApp { app_id: a }),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn decrypt_error_is_generic() {
        assert_eq!(
            CryptoError::Decrypt.to_string(),
            "a sealed value failed to open (wrong key, tampered data or moved row)"
        );
    }

    #[test]
    fn aad_strings_are_exact() {
        let id = uuid::Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        let app_id = AppId(id);
        assert_eq!(
            secret(app_id, "a.b").bytes(),
            b"secret:67e55044-10b1-426f-9247-bb680e5fe0c8:a.b"
        );
        assert_eq!(
            Aad::Inbound { trigger_id: id }.bytes(),
            b"inbound:67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        assert_eq!(
            Aad::InboundApp { app_id }.bytes(),
            b"inbound-app:67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        assert_eq!(
            Aad::Realtime { app_id }.bytes(),
            b"realtime:67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
    }

    #[test]
    fn missing_key_is_missing_for_none_and_blank() {
        for value in [None, Some(""), Some("  \n")] {
            let err = MasterKey::from_env_value(SECRET_KEY_VAR, value).unwrap_err();
            assert_eq!(
                err,
                KeyError::Missing {
                    var: SECRET_KEY_VAR
                }
            );
            let text = err.to_string();
            assert!(text.starts_with("PICLOUD_SECRET_KEY is not set"), "{text}");
            assert!(text.contains("picloud keys generate"), "{text}");
            assert!(!text.contains('\n'));
        }
    }

    #[test]
    fn malformed_key_names_variable_without_echoing_input() {
        let input = "not base64!!";
        let err = MasterKey::from_env_value(SECRET_KEY_VAR, Some(input)).unwrap_err();
        assert_eq!(
            err,
            KeyError::Malformed {
                var: SECRET_KEY_VAR
            }
        );
        let text = err.to_string();
        assert!(text.contains(SECRET_KEY_VAR));
        assert!(text.contains("picloud keys generate"));
        assert!(!text.contains(input) && !text.contains("base64!!"));
        assert!(!format!("{err:?}").contains(input));
        assert!(!text.contains('\n'));
        assert_eq!(
            MasterKey::from_base64(input).unwrap_err(),
            KeyError::Malformed {
                var: SECRET_KEY_VAR
            }
        );
    }

    #[test]
    fn wrong_length_key_reports_actual_length_without_echoing_input() {
        let input = STANDARD.encode([7u8; 16]);
        let err = MasterKey::from_env_value(SECRET_KEY_VAR, Some(&input)).unwrap_err();
        assert_eq!(
            err,
            KeyError::WrongLength {
                var: SECRET_KEY_VAR,
                actual: 16
            }
        );
        let text = err.to_string();
        assert!(text.contains(SECRET_KEY_VAR) && text.contains("16"));
        assert!(text.contains("picloud keys generate"));
        assert!(!text.contains(&input));
        assert!(!format!("{err:?}").contains(&input));
        assert!(!text.contains('\n'));
    }

    #[test]
    fn key_parsing_accepts_padding_variants_and_whitespace() {
        let bytes: [u8; KEY_LEN] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xfb);
        let id = MasterKey::from_base64(&STANDARD.encode(bytes))
            .unwrap()
            .id();
        let variants = [
            format!("  {}\n", STANDARD.encode(bytes)),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
            base64::engine::general_purpose::URL_SAFE.encode(bytes),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ];
        for text in variants {
            assert_eq!(MasterKey::from_base64(&text).unwrap().id(), id, "{text}");
        }
    }

    #[test]
    fn to_base64_round_trips() {
        let key = MasterKey::generate();
        let again = MasterKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(again.id(), key.id());
    }

    #[test]
    fn debug_output_never_contains_key_bytes() {
        let (key, b64) = fixed_key(0xab);
        let hex_bytes = hex::encode([0xabu8; KEY_LEN]);
        let (prev, prev_b64) = fixed_key(0xcd);
        let prev_hex = hex::encode([0xcdu8; KEY_LEN]);
        let key_id = key.id();

        let shown = format!("{key:?}");
        assert_eq!(shown, format!("MasterKey {{ id: {key_id} }}"));
        assert!(!shown.contains(&b64) && !shown.contains(&hex_bytes));
        assert!(!format!("{key:#?}").contains(&hex_bytes));

        let ring = Keyring::new(key, vec![prev]);
        for shown in [format!("{ring:?}"), format!("{ring:#?}")] {
            for secret in [&b64, &hex_bytes, &prev_b64, &prev_hex] {
                assert!(!shown.contains(secret.as_str()), "{shown}");
            }
            assert!(shown.contains(&key_id.to_hex()), "{shown}");
        }
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let ring = Keyring::new(MasterKey::generate(), Vec::new());
        let aad = secret(app(), "same");
        let first = ring.seal(b"same value", &aad).unwrap();
        let second = ring.seal(b"same value", &aad).unwrap();
        assert_ne!(first.nonce, second.nonce);
        assert_ne!(first.ciphertext, second.ciphertext);
    }

    #[test]
    fn previous_key_opens_after_rotation_and_missing_key_is_named() {
        let (old, old_b64) = fixed_key(1);
        let old_id = old.id();
        let aad = secret(app(), "rotated");
        let sealed = Keyring::new(old, Vec::new())
            .seal(b"before rotation", &aad)
            .unwrap();

        let new_key = MasterKey::generate();
        let new_b64 = new_key.to_base64();
        let rotated = Keyring::from_env_values(Some(&new_b64), Some(&old_b64)).unwrap();
        assert_ne!(rotated.active_id(), old_id);
        assert!(rotated.contains(old_id));
        assert_eq!(
            rotated.open(&sealed, &aad).unwrap().as_slice(),
            b"before rotation"
        );
        let resealed = rotated.seal(b"before rotation", &aad).unwrap();
        assert_eq!(resealed.key_id, rotated.active_id());

        let without_old = Keyring::new(MasterKey::from_base64(&new_b64).unwrap(), Vec::new());
        assert!(!without_old.contains(old_id));
        let err = without_old.open(&sealed, &aad).unwrap_err();
        assert_eq!(err, CryptoError::UnknownKey { key_id: old_id });
        assert!(err.to_string().contains(&old_id.to_hex()));
    }

    #[test]
    fn key_id_is_stable_and_distinct() {
        let (a1, text) = fixed_key(9);
        let a2 = MasterKey::from_base64(&text).unwrap();
        let (b, _) = fixed_key(10);
        assert_eq!(a1.id(), a2.id());
        assert_ne!(a1.id(), b.id());
        assert_ne!(MasterKey::generate().id(), MasterKey::generate().id());

        let mut expected = Sha256::new();
        expected.update(b"picloud-key-id-v1\0");
        expected.update([9u8; KEY_LEN]);
        assert_eq!(a1.id().as_bytes(), &expected.finalize()[..KEY_ID_LEN]);
    }

    #[test]
    fn key_id_hex_round_trips() {
        let id = MasterKey::generate().id();
        let hex = id.to_hex();
        assert_eq!(hex.len(), 16);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(id.to_string(), hex);
        assert_eq!(format!("{id:?}"), format!("KeyId({hex})"));
        assert_eq!(KeyId::from_hex(&hex), Some(id));
        assert_eq!(KeyId::from_hex("abc"), None);
        assert_eq!(KeyId::from_hex("zzzzzzzzzzzzzzzz"), None);
        assert_eq!(KeyId::from_hex(&format!("{hex}00")), None);
    }

    #[test]
    fn from_env_values_ignores_blanks_and_the_active_key() {
        let (active, active_b64) = fixed_key(1);
        let (p1, p1_b64) = fixed_key(2);
        let (p2, p2_b64) = fixed_key(3);
        let list = format!(" , {p1_b64},,{active_b64} , {p2_b64},{p1_b64}, ");
        let ring = Keyring::from_env_values(Some(&active_b64), Some(&list)).unwrap();
        assert_eq!(ring.active_id(), active.id());
        assert_eq!(ring.ids(), vec![active.id(), p1.id(), p2.id()]);
        assert!(ring.contains(p2.id()));

        let none = Keyring::from_env_values(Some(&active_b64), None).unwrap();
        assert_eq!(none.ids(), vec![active.id()]);
        let blank = Keyring::from_env_values(Some(&active_b64), Some(" , ")).unwrap();
        assert_eq!(blank.ids(), vec![active.id()]);
    }

    #[test]
    fn from_env_values_names_the_right_variable() {
        let (_, active_b64) = fixed_key(1);
        assert_eq!(
            Keyring::from_env_values(None, Some(&active_b64)).unwrap_err(),
            KeyError::Missing {
                var: SECRET_KEY_VAR
            }
        );
        let err = Keyring::from_env_values(
            Some(&active_b64),
            Some(&format!("{active_b64},not base64!!")),
        )
        .unwrap_err();
        assert_eq!(
            err,
            KeyError::Malformed {
                var: PREVIOUS_KEYS_VAR
            }
        );
        assert!(err.to_string().starts_with(PREVIOUS_KEYS_VAR));
        let short = STANDARD.encode([0u8; 16]);
        assert_eq!(
            Keyring::from_env_values(Some(&active_b64), Some(&short)).unwrap_err(),
            KeyError::WrongLength {
                var: PREVIOUS_KEYS_VAR,
                actual: 16
            }
        );
    }

    #[test]
    fn sealed_from_parts_checks_lengths() {
        let ring = Keyring::new(MasterKey::generate(), Vec::new());
        let aad = Aad::Inbound {
            trigger_id: uuid::Uuid::new_v4(),
        };
        let sealed = ring.seal(b"inbound secret", &aad).unwrap();

        let rebuilt = Sealed::from_parts(
            sealed.key_id.as_bytes(),
            &sealed.nonce,
            sealed.ciphertext.clone(),
        )
        .unwrap();
        assert_eq!(rebuilt, sealed);
        assert_eq!(
            ring.open(&rebuilt, &aad).unwrap().as_slice(),
            b"inbound secret"
        );
        let stored = Sealed::from_stored(
            &sealed.key_id.to_hex(),
            &sealed.nonce,
            sealed.ciphertext.clone(),
        )
        .unwrap();
        assert_eq!(stored, sealed);

        let corrupt = |field| Err(CryptoError::Corrupt { field });
        assert_eq!(
            Sealed::from_parts(&[1, 2, 3], &sealed.nonce, sealed.ciphertext.clone()),
            corrupt("key id")
        );
        assert_eq!(
            Sealed::from_stored("nothex", &sealed.nonce, sealed.ciphertext.clone()),
            corrupt("key id")
        );
        assert_eq!(
            Sealed::from_parts(
                sealed.key_id.as_bytes(),
                &sealed.nonce[..8],
                sealed.ciphertext.clone()
            ),
            corrupt("nonce")
        );
        assert_eq!(
            Sealed::from_parts(sealed.key_id.as_bytes(), &sealed.nonce, vec![0; 15]),
            corrupt("ciphertext")
        );
    }
}
