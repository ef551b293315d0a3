//! `tidegate activate`: pairs this appliance with a bucket and a key, and records who it is.
//!
//! Order matters for safety: the bucket is checked before anything is written; a new key file
//! is written (0600) before the bucket's key check is created, so a bucket is never paired with a
//! key that exists nowhere; a bucket already paired with another key is refused and the unused
//! new key file removed; the config file is written last, so a failed activation leaves no
//! config that `serve` would pick up.

use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::catalog::settings::keys as setting;
use crate::config::Config;
use crate::daemon::{DaemonError, io, unix_now, write_atomically};
use crate::store::keycheck::{self, Pairing};
use crate::store::{Bucket, Codec, MasterKey, StoreError};

#[derive(Debug)]
pub struct Activation {
    pub config: Config,
    pub config_path: PathBuf,
    pub key_created: bool,
    pub pairing: Pairing,
    pub fingerprint: String,
    pub gateway_id: String,
}

/// Activates from config text that will be written to `config_path` once everything succeeded.
pub async fn activate(
    config_text: &str,
    config_path: &Path,
    default_data_dir: &Path,
) -> Result<Activation, DaemonError> {
    if config_path.exists() {
        return Err(DaemonError::Io {
            what: format!("{} already exists", config_path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "this gateway is already activated; edit that file, or remove it to activate again",
            ),
        });
    }
    let config = Config::parse(config_text, config_path, default_data_dir)?;
    let bucket = Bucket::open(&config.bucket, false)?;
    bucket.check().await?;

    let key_created = !config.key_file.exists();
    let key = if key_created {
        let key = MasterKey::generate()?;
        key.create_file(&config.key_file)?;
        key
    } else {
        MasterKey::load(&config.key_file)?
    };
    let codec = Codec::new(key);
    let pairing = match keycheck::ensure(&bucket, &codec, true).await {
        Ok(p) => p,
        Err(e) => {
            if key_created {
                let _ = std::fs::remove_file(&config.key_file);
            }
            return Err(match e {
                StoreError::WrongKey { .. } => DaemonError::WrongKey {
                    key_file: config.key_file.clone(),
                    source: e,
                },
                other => DaemonError::Store(other),
            });
        }
    };

    std::fs::create_dir_all(&config.data_dir).map_err(io(format!(
        "creating data dir {}",
        config.data_dir.display()
    )))?;
    let catalog = Catalog::open(&config.catalog_path())?;
    if let Some(recorded) = catalog.setting(setting::BUCKET_URL)?
        && recorded != config.bucket.location.to_string()
    {
        return Err(DaemonError::BucketMismatch {
            data_dir: config.data_dir.clone(),
            catalog: recorded,
            config: config.bucket.location.to_string(),
        });
    }
    let gateway_id = record_identity(&catalog, &config, codec.key())?;

    if let Some(dir) = config_path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    write_atomically(config_path, config_text.as_bytes())?;
    Ok(Activation {
        config,
        config_path: config_path.to_path_buf(),
        key_created,
        pairing,
        fingerprint: codec.key().fingerprint(),
        gateway_id,
    })
}

/// Records the gateway's identity in the catalog, keeping an existing gateway id.
pub(crate) fn record_identity(
    catalog: &Catalog,
    config: &Config,
    key: &MasterKey,
) -> Result<String, DaemonError> {
    let id = match catalog.setting(setting::GATEWAY_ID)? {
        Some(id) => id,
        None => crate::store::master::random_hex::<8>()?,
    };
    let now = unix_now().to_string();
    let url = config.bucket.location.to_string();
    let fingerprint = key.fingerprint();
    catalog.set_settings(&[
        (setting::GATEWAY_ID, &id),
        (setting::GATEWAY_NAME, &config.name),
        (setting::BUCKET_URL, &url),
        (setting::KEY_FINGERPRINT, &fingerprint),
        (setting::ACTIVATED_AT, &now),
    ])?;
    Ok(id)
}
