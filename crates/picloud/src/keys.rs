//! The master keyring, sourced before any database work.
//!
//! `PICLOUD_SECRET_KEY` (+ decrypt-only `PICLOUD_SECRET_KEYS_PREVIOUS`) wins.
//! Without it, dev mode generates a random key once into
//! `<data dir>/master.key` (0600) and reuses it, warning on every start;
//! outside dev mode a missing key is fatal. There is no well-known key and no
//! unencrypted mode.

use crate::{config::Config, server::create_private_file};
use anyhow::Context;
use picloud_shared::crypto::{Keyring, MasterKey};
use std::path::Path;

/// The file the dev-mode key lives in.
pub const DEV_KEY_FILE: &str = "master.key";

/// Builds the keyring `config` describes, creating the dev key when needed.
pub fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let active = config.secret_key.as_ref().map(|k| k.as_str());
    let previous = config.secret_keys_previous.as_ref().map(|k| k.as_str());
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
        Some(list) => {
            let active = zeroize::Zeroizing::new(key.to_base64());
            Keyring::from_env_values(Some(&active), Some(list))?
        }
        None => Keyring::new(key, Vec::new()),
    };
    Ok(previous)
}

fn dev_key(path: &Path) -> anyhow::Result<MasterKey> {
    let read = |path: &Path| -> anyhow::Result<MasterKey> {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the dev key file {}", path.display()))?,
        );
        MasterKey::from_env_value("PICLOUD_DATA_DIR/master.key", Some(&text))
            .with_context(|| format!("the dev key file {} is damaged; restore it (or delete it to start over, losing every secret)", path.display()))
    };
    if path.exists() {
        return read(path);
    }
    let key = MasterKey::generate();
    let text = zeroize::Zeroizing::new(format!("{}\n", key.to_base64()));
    // Two first starts may race here: only one file is ever created, and the
    // loser uses the winner's key.
    if create_private_file(path, text.as_bytes())
        .with_context(|| format!("cannot write the dev key file {}", path.display()))?
    {
        Ok(key)
    } else {
        read(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_first_starts_agree_on_one_dev_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEV_KEY_FILE);
        let keys: Vec<String> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| dev_key(&path).unwrap().to_base64()))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let on_disk = std::fs::read_to_string(&path).unwrap();
        for key in &keys {
            assert_eq!(
                format!("{key}\n"),
                on_disk,
                "every racer uses the key on disk"
            );
        }
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files are left behind");
    }
}
