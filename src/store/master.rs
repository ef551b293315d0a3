//! The gateway's master key: loading and creating the key file, and the keys derived from it.
//!
//! Owns every secret the store uses. It must not log or print key bytes; `Debug` is redacted and
//! only a one-way fingerprint ever leaves this module. Invariant: all subkeys are derived from the
//! one 32-byte master key with HKDF-SHA256 under distinct labels, so no two purposes share a key.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::hkdf;

pub(crate) const KEY_LEN: usize = 32;

/// HKDF labels. Changing one makes every existing bucket unreadable: they are part of the format.
const LABEL_DEDUP: &[u8] = b"tidegate/v1/chunk-id";
const LABEL_FINGERPRINT: &[u8] = b"tidegate/v1/fingerprint";
const LABEL_FRAME: &[u8] = b"tidegate/v1/frame";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the system random number generator failed")]
    Random,
}

/// The secret from which all chunk keys and chunk ids derive.
#[derive(Clone)]
pub struct MasterKey {
    master: [u8; KEY_LEN],
    /// Keyed-BLAKE3 key for chunk ids: ids dedupe equal data without revealing it.
    dedup: [u8; KEY_LEN],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint())
    }
}

impl MasterKey {
    pub fn from_bytes(master: [u8; KEY_LEN]) -> Self {
        let mut dedup = [0u8; KEY_LEN];
        expand(&master, &[], LABEL_DEDUP, &mut dedup);
        Self { master, dedup }
    }

    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Random)?;
        Ok(Self::from_bytes(bytes))
    }

    /// A short public identifier of the key (16 hex digits), safe to log and store.
    pub fn fingerprint(&self) -> String {
        let mut fp = [0u8; 8];
        expand(&self.master, &[], LABEL_FINGERPRINT, &mut fp);
        crate::store::keys::hex(&fp)
    }

    pub(crate) fn dedup_key(&self) -> &[u8; KEY_LEN] {
        &self.dedup
    }

    /// A 32-byte subkey for one purpose named by `label` (HKDF-SHA256). Used by the device
    /// mode for its HMAC keys and S3 credentials (`store::device`).
    pub(crate) fn subkey(&self, label: &[u8]) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        expand(&self.master, &[], label, &mut out);
        out
    }

    /// The AES-256-GCM key for one frame: HKDF-SHA256(master, salt), docs/design.md §3.
    pub(crate) fn frame_key(&self, salt: &[u8]) -> aws_lc_rs::aead::UnboundKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.master);
        let okm = prk
            .expand(&[LABEL_FRAME], &aws_lc_rs::aead::AES_256_GCM)
            .expect("HKDF-SHA256 can expand to 32 bytes");
        okm.into()
    }

    /// Reads a key file: 64 hex digits and an optional trailing newline, mode 0600 or stricter.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let bytes = crate::store::keys::parse_hex::<KEY_LEN>(text.trim()).ok_or_else(|| {
            KeyError::Invalid {
                path: path.to_path_buf(),
                reason: format!("expected {} hex digits", KEY_LEN * 2),
            }
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Writes a new key file with mode 0600, refusing to overwrite an existing one: losing the
    /// old key would make everything sealed with it unreadable.
    pub fn create_file(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        // The umask cannot widen 0600, but an inherited ACL default could; pin it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        writeln!(file, "{}", crate::store::keys::hex(&self.master)).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }
}

/// A random identifier of `N` bytes in hex (gateway ids and the like).
pub fn random_hex<const N: usize>() -> Result<String, KeyError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Random)?;
    Ok(crate::store::keys::hex(&bytes))
}

fn expand(ikm: &[u8], salt: &[u8], label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    prk.expand(&[label], Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 output of at most 32 bytes is always valid");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let key = MasterKey::generate().unwrap();
        key.create_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = MasterKey::load(&path).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        // Never overwrite an existing key.
        assert!(matches!(key.create_file(&path), Err(KeyError::Io { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::load(&path),
            Err(KeyError::Permissions { .. })
        ));
    }

    #[test]
    fn rejects_malformed_key_files() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "abc", &"zz".repeat(32), &"00".repeat(31)] {
            let path = dir.path().join("k");
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(matches!(
                MasterKey::load(&path),
                Err(KeyError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn subkeys_differ_by_purpose() {
        let key = MasterKey::from_bytes([7; KEY_LEN]);
        assert_ne!(key.dedup_key(), &[7; KEY_LEN]);
        assert_ne!(&key.dedup_key()[..8], &[0; 8]);
        assert_eq!(key.fingerprint().len(), 16);
        assert_ne!(
            key.fingerprint(),
            MasterKey::from_bytes([8; KEY_LEN]).fingerprint()
        );
    }
}
