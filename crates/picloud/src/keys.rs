//! The master keyring, sourced before any database work.
//!
//! `PICLOUD_SECRET_KEY` (+ decrypt-only `PICLOUD_SECRET_KEYS_PREVIOUS`) wins.
//! Without it, dev mode generates a random key once into
//! `<data dir>/master.key` (0600) and reuses it, warning on every start;
//! outside dev mode a missing key is fatal. There is no well-known key and no
//! unencrypted mode.

use crate::{config::Config, server::write_private_file};
use anyhow::Context;
use picloud_shared::crypto::{Keyring, MasterKey};
use std::path::Path;

/// The file the dev-mode key lives in.
pub const DEV_KEY_FILE: &str = "master.key";

/// Builds the keyring `config` describes, creating the dev key when needed.
pub fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let active = config.secret_key.as_deref();
    let previous = config.secret_keys_previous.as_deref();
    if active.is_some() || !config.dev_mode {
        return Ok(Keyring::from_env_values(active, previous)?);
    }
    let path = config.data_dir.join(DEV_KEY_FILE);
    let key = dev_key(&path)?;
    tracing::warn!(
        key_file = %path.display(),
        "DEV MODE: secrets are sealed with a generated key kept beside the data; \
         set PICLOUD_SECRET_KEY (see `picloud keys generate`) before storing anything real"
    );
    let previous = match previous {
        Some(list) => Keyring::from_env_values(Some(&key.to_base64()), Some(list))?,
        None => Keyring::new(key, Vec::new()),
    };
    Ok(previous)
}

fn dev_key(path: &Path) -> anyhow::Result<MasterKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => MasterKey::from_env_value("PICLOUD_DATA_DIR/master.key", Some(&text))
            .with_context(|| format!("the dev key file {} is damaged; restore it (or delete it to start over, losing every secret)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            write_private_file(path, format!("{}\n", key.to_base64()).as_bytes())
                .with_context(|| format!("cannot write the dev key file {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the dev key file {}", path.display())),
    }
}
