//! The embedded default and every default value, in one place so docs/operations.md can list them.
//!
//! With no config file, `tidegate serve` runs entirely under one data dir: the catalog, the key
//! file, the cache, the upload buffer and a local-directory bucket. Tests point the data dir at a
//! temporary directory; nothing is ever written into the source tree unless the operator runs
//! from it.

use std::path::{Path, PathBuf};

pub const NAME: &str = "tidegate";
pub const REGION: &str = "us-east-1";
pub const LOCAL_BUCKET_DIR: &str = "bucket";
pub const CONFIG_FILE: &str = "tidegate.toml";
// The cache and upload buffer sizes follow the disk: `sizing.rs` holds the rule.
pub const MIN_DISK_SIZE: u64 = 64 << 20;
/// object_store's own default is 10 retries within 3 minutes; a gateway's uploader retries again
/// on top, so a single request gives up sooner and the caller decides.
pub const MAX_RETRIES: u32 = 5;
pub const RETRY_TIMEOUT_SECS: u64 = 60;
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
pub const PART_SIZE: u64 = 16 << 20;
/// Loopback by default: exposing volumes on the network is a decision the operator makes.
pub const ISCSI_LISTEN: &str = "127.0.0.1:3260";
/// The management API and /metrics: loopback unless configured.
pub const API_LISTEN: &str = "127.0.0.1:8733";
pub const API_TOKEN_FILE: &str = "api.token";
/// NFS's registered port, on loopback for the same reason.
pub const NFS_LISTEN: &str = "127.0.0.1:2049";
/// The NFSv4.1 lease (and grace period), as Linux's own server defaults to.
pub const NFS_LEASE_SECS: u64 = 90;
/// The portmapper's registered port (RFC 1833), where clients ask for NFS and MOUNT's ports.
pub const RPCBIND_PORT: u16 = 111;
/// A committed file waits this long without changes before it is uploaded (a burst of writes
/// and attribute changes then costs one upload).
pub const UPLOAD_DELAY_MS: u64 = 2000;
/// The tape library: drives, storage slots and mail slots (the commercial gateway's layout),
/// and the smallest tape (LTO-5 holds 1.5 TB; the commercial gateway's minimum is 100 GiB).
pub const LIBRARY_DRIVES: u32 = 10;
pub const LIBRARY_SLOTS: u32 = 1600;
pub const LIBRARY_MAIL_SLOTS: u32 = 8;
pub const MIN_TAPE_SIZE: u64 = 100 << 30;
/// The share the embedded default creates on first start.
pub const SHARE_NAME: &str = "share";

/// The data dir when none is given on the command line or in `TIDEGATE_DATA_DIR`:
/// `$XDG_DATA_HOME/tidegate` when XDG_DATA_HOME is set, else `./tidegate-data`.
pub fn data_dir(xdg_data_home: Option<&Path>, cwd: &Path) -> PathBuf {
    match xdg_data_home.filter(|p| p.is_absolute()) {
        Some(xdg) => xdg.join("tidegate"),
        None => cwd.join("tidegate-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_follows_xdg() {
        let cwd = Path::new("/home/op/work");
        assert_eq!(
            data_dir(Some(Path::new("/home/op/.local/share")), cwd),
            Path::new("/home/op/.local/share/tidegate")
        );
        // The XDG spec says relative values are to be ignored.
        assert_eq!(
            data_dir(Some(Path::new("rel")), cwd),
            Path::new("/home/op/work/tidegate-data")
        );
        assert_eq!(
            data_dir(None, cwd),
            Path::new("/home/op/work/tidegate-data")
        );
    }
}
