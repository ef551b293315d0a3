//! The device mode's secrets and digests (docs/design.md §7): the job key derived from an unlock
//! code with Argon2id, the subkeys that sign manifests and name objects, the device's S3
//! credentials, and the SHA-256/MD5 digests kept per object.
//!
//! Lives in `store` because the crypto crates do (CONTRIBUTING.md, "Layers"); `gateway/import` uses
//! it and never sees a crate. Invariant: nothing derived here is reversible to the unlock code or
//! the job key; the unlock code is never logged, and a wrong code or an edited manifest file fails
//! the same key check without saying which.

use aws_lc_rs::{digest, hmac};
use md5::Digest;

use crate::store::keys::hex;
use crate::store::master::{KEY_LEN, MasterKey};

/// HKDF labels of the device mode. Part of the format: changing one orphans every device.
const LABEL_KEY_CHECK: &[u8] = b"tidegate/v1/device/key-check";
const LABEL_NAMES: &[u8] = b"tidegate/v1/device/object-names";
const LABEL_MANIFEST: &[u8] = b"tidegate/v1/device/manifest";
const LABEL_S3_ID: &[u8] = b"tidegate/v1/device/s3-access-key";
const LABEL_S3_SECRET: &[u8] = b"tidegate/v1/device/s3-secret";

/// Crockford base32: no I, L, O or U, so a code read aloud or typed is not misread.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 25 symbols of 5 bits: 125 bits, beyond guessing even without the memory-hard KDF.
const CODE_SYMBOLS: usize = 25;

/// Argon2id cost, stored in the job manifest file so it can change per job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl KdfParams {
    /// OWASP's first Argon2id recommendation (19 MiB, 2 passes) raised to 64 MiB: about a
    /// quarter second here, once per unlock.
    pub const DEFAULT: Self = Self {
        m_kib: 64 * 1024,
        t: 2,
        p: 1,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceKeyError {
    #[error("the key derivation parameters are unusable: {0}")]
    Params(String),
    #[error("the system random number generator failed")]
    Random,
    #[error("the unlock code is not in the expected form (five groups of five characters)")]
    CodeFormat,
}

/// A new unlock code: `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`.
pub fn generate_unlock_code() -> Result<String, DeviceKeyError> {
    let mut bytes = [0u8; CODE_SYMBOLS];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| DeviceKeyError::Random)?;
    let mut out = String::with_capacity(CODE_SYMBOLS + 4);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(char::from(CODE_ALPHABET[usize::from(b & 31)]));
    }
    Ok(out)
}

/// The code as typed, normalised: case and dashes/spaces do not matter, and the letters
/// Crockford maps (O→0, I/L→1) are accepted.
fn normalise_code(code: &str) -> Result<String, DeviceKeyError> {
    let mut out = String::with_capacity(CODE_SYMBOLS);
    for c in code.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        };
        if !CODE_ALPHABET.contains(&u8::try_from(c).unwrap_or(b'U')) {
            return Err(DeviceKeyError::CodeFormat);
        }
        out.push(c);
    }
    if out.len() != CODE_SYMBOLS {
        return Err(DeviceKeyError::CodeFormat);
    }
    Ok(out)
}

/// A fresh 16-byte KDF salt, hex.
pub fn new_salt() -> Result<[u8; 16], DeviceKeyError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| DeviceKeyError::Random)?;
    Ok(salt)
}

/// The job key: Argon2id(unlock code, salt). CPU- and memory-heavy by design; call it on the
/// blocking pool.
pub fn derive_job_key(
    code: &str,
    salt: &[u8],
    params: KdfParams,
) -> Result<MasterKey, DeviceKeyError> {
    let code = normalise_code(code)?;
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(KEY_LEN))
        .map_err(|e| DeviceKeyError::Params(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; KEY_LEN];
    argon
        .hash_password_into(code.as_bytes(), salt, &mut out)
        .map_err(|e| DeviceKeyError::Params(e.to_string()))?;
    Ok(MasterKey::from_bytes(out))
}

/// What the manifest file and the catalog keep to recognise the right key: an HMAC of the job
/// id under a key-check subkey. Reveals nothing about the key.
pub fn key_check(key: &MasterKey, job: &str) -> String {
    hex(&hmac_with(&key.subkey(LABEL_KEY_CHECK), job.as_bytes()))
}

/// Constant-time comparison of a stored key check with the one `key` gives.
pub fn key_check_matches(key: &MasterKey, job: &str, stored: &str) -> bool {
    let tag = hmac::Key::new(hmac::HMAC_SHA256, &key.subkey(LABEL_KEY_CHECK));
    match crate::store::keys::parse_hex::<32>(stored) {
        Some(bytes) => hmac::verify(&tag, job.as_bytes(), &bytes).is_ok(),
        None => false,
    }
}

/// The opaque id under which an object name is stored on the device: HMAC(names key, name),
/// so equal names meet in the catalog without the name being readable there.
pub fn name_id(key: &MasterKey, name: &str) -> [u8; 32] {
    hmac_with(&key.subkey(LABEL_NAMES), name.as_bytes())
}

/// HMAC-SHA256 of `data` under the manifest subkey, hex.
pub fn manifest_mac(key: &MasterKey, data: &[u8]) -> String {
    hex(&hmac_with(&key.subkey(LABEL_MANIFEST), data))
}

/// Constant-time check of a manifest HMAC.
pub fn manifest_mac_matches(key: &MasterKey, data: &[u8], mac_hex: &str) -> bool {
    let k = hmac::Key::new(hmac::HMAC_SHA256, &key.subkey(LABEL_MANIFEST));
    match crate::store::keys::parse_hex::<32>(mac_hex) {
        Some(bytes) => hmac::verify(&k, data, &bytes).is_ok(),
        None => false,
    }
}

/// The device's S3 credentials, derived from the job key: the same on every unlock, nothing
/// stored, and useless once the device is locked.
pub fn s3_credentials(key: &MasterKey) -> (String, String) {
    let id = hex(&key.subkey(LABEL_S3_ID)[..10]).to_ascii_uppercase();
    let secret = hex(&key.subkey(LABEL_S3_SECRET)[..20]);
    (format!("TDG{id}"), secret)
}

fn hmac_with(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// MD5 of a stream of bytes (ETags: a whole object's, or one part's).
#[derive(Default)]
pub struct Md5(md5::Md5);

impl std::fmt::Debug for Md5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Md5")
    }
}

impl Md5 {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.0.finalize());
        out
    }
}

/// SHA-256 alone (whole-object hash while importing).
pub struct Sha256(digest::Context);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }
}

impl Sha256 {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// The S3 ETag of a multipart object: MD5 of the parts' MD5s, then `-<parts>`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = md5::Md5::new();
    for m in part_md5s {
        h.update(m);
    }
    format!("{}-{}", hex(&h.finalize()), part_md5s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests check wiring, not cost.
    const FAST: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn codes_are_well_formed_and_normalised() {
        let code = generate_unlock_code().unwrap();
        assert_eq!(code.len(), 29);
        assert_eq!(code.split('-').count(), 5);
        let salt = [3u8; 16];
        let a = derive_job_key(&code, &salt, FAST).unwrap();
        let b = derive_job_key(&code.to_ascii_lowercase().replace('-', " "), &salt, FAST).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        for bad in ["", "short", &format!("{code}X"), &code.replace('0', "U")] {
            if bad.contains('U') || bad.len() != code.len() {
                assert!(derive_job_key(bad, &salt, FAST).is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn key_check_tells_the_right_key_from_a_wrong_one() {
        let salt = [9u8; 16];
        let right = derive_job_key("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE", &salt, FAST).unwrap();
        let wrong = derive_job_key("AAAAA-BBBBB-CCCCC-DDDDD-EEEEF", &salt, FAST).unwrap();
        let check = key_check(&right, "job-1");
        assert!(key_check_matches(&right, "job-1", &check));
        assert!(!key_check_matches(&wrong, "job-1", &check));
        assert!(!key_check_matches(&right, "job-2", &check));
        assert!(!key_check_matches(&right, "job-1", "zz"));
    }

    #[test]
    fn digests_match_known_values() {
        let (mut s, mut m) = (Sha256::default(), Md5::default());
        for piece in [&b"ab"[..], b"c"] {
            s.update(piece);
            m.update(piece);
        }
        let (sha, md5) = (s.finish(), m.finish());
        assert_eq!(
            hex(&sha),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&md5), "900150983cd24fb0d6963f7d28e17f72");
        // Two parts "abc", "abc": MD5 over the two raw MD5s.
        assert_eq!(
            multipart_etag(&[md5, md5]),
            "043a916d6cfeecedf5e04f0312ba762d-2"
        );
    }
}
