//! The device's data set as a file share: a `Files` gateway over [`DeviceObjects`], for the NFS
//! front end (docs/decisions/0009-device-nfs.md).
//!
//! Everything the share keeps besides the device itself stays off the device's disks: its
//! catalog (file names, attributes) is an in-memory SQLite database, and its staging files (file
//! data being written) live in a private directory on a tmpfs, checked at open. Since neither
//! survives the process, a COMMIT returns only once the file is a device object (sealed
//! segments fsynced, record committed): that is the durability point (`commit_uploads`).
//!
//! Must not: write a name or a byte of file data anywhere but the device store and memory.
//! Invariant: once the job is sealed the share is read-only, so writes fail at once
//! (NFS3ERR_ROFS) instead of at COMMIT; on a device cluster it is also read-only while the
//! cluster has lost its write quorum (the S3 endpoint's `ServiceUnavailable`), and writable
//! again when the quorum is back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::catalog::shares::Squash;
use crate::gateway::GatewayError;
use crate::gateway::files::{self, Files, FilesConfig, ShareSpec};
use crate::gateway::import::Device;
use crate::gateway::import::objects::DeviceObjects;
use crate::store::Bucket;

/// Where staging directories go by default: the shared-memory tmpfs every Linux system mounts.
pub const DEFAULT_STAGING_ROOT: &str = "/dev/shm";
/// The most file data being written (not yet committed) kept in memory before writers wait for
/// uploads; one file larger than this is still written whole (`gateway/files/staging.rs`).
pub const STAGING_LIMIT: u64 = 2 << 30;
/// How stale a directory listing may get: objects PUT over S3 appear over NFS this quickly. The
/// device's listings are in memory, so checking often is cheap.
const REFRESH: Duration = Duration::from_secs(1);
/// How long namespace changes (create, rename, remove) wait before they reach the device: a
/// file created and then written and committed within it is stored once, at its COMMIT, not
/// first empty.
const UPLOAD_DELAY: Duration = Duration::from_secs(1);
/// `statfs` f_type of tmpfs (linux/magic.h).
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// How often the seal and quorum watcher looks.
const SEAL_POLL: Duration = Duration::from_millis(100);

/// A `Files` share over an unlocked device.
#[derive(Debug)]
pub struct DeviceShare {
    pub files: Arc<Files>,
    catalog: Arc<Catalog>,
    device: Device,
    /// The share's name, which is the device's bucket name; exported as `/<name>`.
    pub name: String,
    staging: PathBuf,
}

impl DeviceShare {
    /// Builds the share for `device`, staging under a new directory in `staging_root` (a
    /// tmpfs). Staging directories of this job left by processes that are gone (a kill -9)
    /// are removed first.
    pub fn open(device: &Device, staging_root: &Path) -> Result<Self, GatewayError> {
        let stat = rustix::fs::statfs(staging_root).map_err(|e| {
            GatewayError::InvalidArgument(format!(
                "the device's NFS staging needs a tmpfs at {}: {e}",
                staging_root.display()
            ))
        })?;
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let fs_type = stat.f_type as u64;
        if fs_type != TMPFS_MAGIC {
            return Err(GatewayError::InvalidArgument(format!(
                "{} is not a tmpfs: the device's NFS staging holds file data in the clear and \
                 must stay in memory",
                staging_root.display()
            )));
        }
        let stem = format!("tidegate-device-{}-", device.job_id());
        remove_stale(staging_root, &stem);
        let staging = staging_root.join(format!("{stem}{}", std::process::id()));
        std::fs::create_dir_all(&staging).map_err(|e| {
            GatewayError::Internal(format!("creating {}: {e}", staging.display()).into())
        })?;
        set_private(&staging)?;
        let catalog = Arc::new(Catalog::open(Path::new(":memory:"))?);
        let name = device.bucket_name().to_owned();
        let objects = DeviceObjects::new(device.clone(), &name);
        let bucket = Arc::new(Bucket::from_object_store(
            Arc::new(objects),
            &format!("device {}", device.job_id()),
        ));
        let files = Files::new(
            catalog.clone(),
            bucket,
            FilesConfig {
                staging_dir: staging.clone(),
                upload_delay: UPLOAD_DELAY,
                staging_limit: Some(STAGING_LIMIT),
                commit_uploads: true,
            },
        )?;
        let spec = ShareSpec {
            bucket_prefix: Some(name.clone()),
            read_only: device.is_sealed() || device.writes_refused().is_some(),
            // A transfer device: whoever may reach the port copies in as themselves, and
            // directories made from keys are open to every uid.
            squash: Squash::None,
            default_dir_mode: 0o777,
            refresh: REFRESH,
            ..ShareSpec::new(&name)
        };
        files::create_share(&catalog, &spec)?;
        Ok(Self {
            files: Arc::new(files),
            catalog,
            device: device.clone(),
            name,
            staging,
        })
    }

    /// Keeps the share read-only while a device cluster has lost its write quorum, and makes
    /// it read-only for good once the job is sealed (by `job seal` on this device or, in a
    /// cluster, any device); returns then.
    pub async fn watch_seal(&self) {
        let mut read_only = self.device.is_sealed() || self.device.writes_refused().is_some();
        loop {
            let sealed = self.device.is_sealed();
            let refused = self.device.writes_refused();
            let now = sealed || refused.is_some();
            if now != read_only || sealed {
                match self.catalog.set_share_read_only(&self.name, now) {
                    Ok(_) if sealed => {
                        tracing::info!(share = %self.name, "job sealed: the NFS export is read-only");
                    }
                    Ok(_) if now => {
                        tracing::warn!(share = %self.name, reason = %refused.unwrap_or_default(), "the NFS export is read-only while writes are refused");
                    }
                    Ok(_) => {
                        tracing::info!(share = %self.name, "the NFS export accepts writes again")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "changing the device's share to read-only")
                    }
                }
                read_only = now;
            }
            if sealed {
                return;
            }
            tokio::time::sleep(SEAL_POLL).await;
        }
    }

    /// Removes the staging directory (uncommitted data dies with it, as it would in a crash).
    pub fn close(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.staging)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.staging.display(), error = %e, "removing NFS staging");
        }
    }
}

/// Removes `<root>/<stem><pid>` directories whose process no longer runs.
fn remove_stale(root: &Path, stem: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(stem)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            tracing::info!(dir = %entry.path().display(), "removing NFS staging left by a crash");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn set_private(dir: &Path) -> Result<(), GatewayError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| GatewayError::Internal(format!("restricting {}: {e}", dir.display()).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::files::{Caller, CreateMode, SetAttr, Stability};
    use crate::gateway::import::objects::tests::store;

    #[tokio::test]
    async fn staging_must_be_a_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let (device, _) = store(dir.path()).await;
        let err = DeviceShare::open(&device, Path::new("/proc")).unwrap_err();
        assert!(err.to_string().contains("not a tmpfs"), "{err}");
    }

    #[tokio::test]
    async fn a_commit_returns_with_the_file_a_device_object_and_sealing_makes_it_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (device, _) = store(dir.path()).await;
        let share = DeviceShare::open(&device, Path::new(DEFAULT_STAGING_ROOT)).unwrap();
        let me = Caller::root_local();
        let root = share.files.export(&me, "/bkt").await.unwrap().root;
        let d = share
            .files
            .mkdir(&me, root, b"dir", SetAttr::default())
            .await
            .unwrap();
        let f = share
            .files
            .create(&me, d.id, b"f.txt", CreateMode::Guarded, SetAttr::default())
            .await
            .unwrap();
        share
            .files
            .write(&me, f.id, 0, b"committed bytes", Stability::Unstable)
            .await
            .unwrap();
        assert!(device.head("dir/f.txt").is_err(), "not before the COMMIT");
        share.files.commit(&me, f.id).await.unwrap();
        let (info, _) = device.read("dir/f.txt", None).unwrap();
        assert_eq!(info.size, 15);
        assert!(
            info.metadata.iter().any(|(k, _)| k == "file-permissions"),
            "{info:?}"
        );
        // Nothing staged remains once committed.
        assert_eq!(std::fs::read_dir(&share.staging).unwrap().count(), 0);

        device.seal().await.unwrap();
        share.watch_seal().await;
        let err = share
            .files
            .write(&me, f.id, 0, b"late", Stability::Unstable)
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::ReadOnly(_)), "{err}");
        share.close();
        assert!(!share.staging.exists());
    }
}
