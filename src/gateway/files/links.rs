//! Hard links (docs/decisions/0013-hard-links.md): LINK adds a name to a file, and the uploader
//! keeps one complete object per name.
//!
//! The catalog keeps one inode per file (one file id, one set of attributes and data) and its
//! further names as link rows; every name is an ordinary object in the bucket, so other S3
//! clients read each name as a file. A link name's object is a server-side copy of the inode's
//! own object, made once that object holds the inode's current version. Invariant: a copy is
//! made holding both keys' locks and only from the key the inode's row still points at, so it
//! never reads an object being replaced or deleted, and the link row records the version it
//! copied.

use crate::catalog::Catalog;
use crate::catalog::shares::{InodeKind, ShareRow};
use crate::gateway::GatewayError;
use crate::gateway::files::{Attr, Caller, FileId, Files, path, stale};

/// Link names looked at per upload round, at most.
const LINK_BATCH: usize = 1024;

/// A due copy: source key, link key, the link's path, the inode version copied.
type LinkCopy = (String, String, String, i64);

/// What one pass over a share's link names did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LinkRound {
    pub copied: u64,
    pub failed: u64,
}

impl Files {
    /// LINK: gives file `file` the further name `name` in directory `dir` (RFC 1813 §3.3.15,
    /// RFC 8881 §18.9, link(2)). The new name's object follows through the uploader.
    pub async fn link(
        &self,
        caller: &Caller,
        file: FileId,
        dir: FileId,
        name: &[u8],
    ) -> Result<Attr, GatewayError> {
        // The slot checks the caller against the directory's share (allow-list, squash,
        // permissions); the file must be in that same share.
        let slot = self.slot(caller, dir, name).await?;
        let (row, share) = self.node(file).await?;
        if row.kind == InodeKind::Dir {
            return Err(GatewayError::IsDirectory(row.path));
        }
        if slot.share.id != share.id {
            return Err(GatewayError::CrossDevice(format!(
                "link from share {} into share {}",
                share.name, slot.share.name
            )));
        }
        let slot = slot.vacant()?;
        let new_path = path::join(&slot.dir.path, &slot.name);
        path::key(&share.bucket_prefix, &new_path)?;
        let lock = self.inode_lock(row.id);
        let _guard = lock.lock().await;
        let (id, parent, name) = (row.id, slot.dir.id, slot.name);
        let linked = self
            .blocking(move |c| {
                match c.add_link(id, parent, (&name, &new_path), crate::clock::unix_nanos())? {
                    Some(linked) => Ok(linked),
                    // Taken, or the file removed, since the checks above.
                    None if c.inode(id)?.is_some() => Err(GatewayError::AlreadyExists(new_path)),
                    None => Err(stale(id)),
                }
            })
            .await?;
        self.wake.notify_one();
        Ok(self.attr(&linked))
    }

    /// Copies the object of every link name of `share` whose inode's own object is current but
    /// newer than the name's.
    pub(super) async fn sync_links(&self, share: &ShareRow) -> Result<LinkRound, GatewayError> {
        let mut round = LinkRound::default();
        let share_id = share.id;
        let due = self
            .blocking(move |c| Ok(c.dirty_links(share_id, LINK_BATCH)?))
            .await?;
        for id in due {
            match self.sync_link(share, id).await {
                Ok(true) => round.copied += 1,
                Ok(false) => {}
                Err(e) => {
                    round.failed += 1;
                    tracing::warn!(share = %share.name, link = id, error = %e, "link copy failed; will retry");
                }
            }
        }
        Ok(round)
    }

    /// One link name: returns whether its object was copied.
    async fn sync_link(&self, share: &ShareRow, id: i64) -> Result<bool, GatewayError> {
        let Some((source, key, _, _)) = self.link_copy(share, id).await? else {
            return Ok(false);
        };
        // Both keys locked, in a fixed order so two copies never wait on each other.
        let (first, second) = if source < key {
            (&source, &key)
        } else {
            (&key, &source)
        };
        let first_lock = self.key_lock(first);
        let second_lock = self.key_lock(second);
        let first_guard = first_lock.lock().await;
        let second_guard = second_lock.lock().await;
        let result = self.copy_link_locked(share, id, &source, &key).await;
        drop(second_guard);
        drop(first_guard);
        self.release_key_lock(second, second_lock);
        self.release_key_lock(first, first_lock);
        result
    }

    async fn link_copy(&self, share: &ShareRow, id: i64) -> Result<Option<LinkCopy>, GatewayError> {
        let prefix = share.bucket_prefix.clone();
        self.blocking(move |c| link_copy(c, &prefix, id)).await
    }

    async fn copy_link_locked(
        &self,
        share: &ShareRow,
        id: i64,
        source: &str,
        key: &str,
    ) -> Result<bool, GatewayError> {
        // Checked again under the locks: the inode may have changed or moved since. From here
        // on its object at `source` cannot change (its upload needs that key's lock), so the
        // copy holds `version` even if the inode changes again meanwhile.
        let Some((now_source, now_key, link_path, version)) = self.link_copy(share, id).await?
        else {
            return Ok(false);
        };
        if now_source != source || now_key != key {
            return Ok(false);
        }
        self.bucket.copy_object(source, key).await?;
        let etag = self.bucket.head_object(key).await?.and_then(|h| h.etag);
        let (share_id, owned_key) = (share.id, key.to_owned());
        let orphan = self
            .blocking(move |c| {
                let kept =
                    c.mark_link_synced(id, (&link_path, version), &owned_key, etag.as_deref())?;
                Ok(!kept && !c.key_in_use(share_id, &owned_key)?)
            })
            .await?;
        if orphan {
            // The name was removed while its object was copied: that object belongs to nobody.
            self.bucket.delete_object(key).await?;
        }
        Ok(true)
    }
}

/// The copy link `id` is due, as (source key, link key, link path, inode version): the inode's
/// object holds its current version and the name's object does not.
fn link_copy(catalog: &Catalog, prefix: &str, id: i64) -> Result<Option<LinkCopy>, GatewayError> {
    let Some(link) = catalog.link(id)? else {
        return Ok(None);
    };
    let Some(inode) = catalog.inode(link.inode)? else {
        return Ok(None);
    };
    if inode.dirty() || link.synced_version == inode.version {
        return Ok(None);
    }
    let Some(source) = inode.remote_key else {
        return Ok(None);
    };
    let key = path::key(prefix, &link.path)?;
    Ok(Some((source, key, link.path, inode.version)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::gateway::GatewayError;
    use crate::gateway::files::tests::local_gateway;
    use crate::gateway::files::{Caller, CreateMode, SetAttr, Stability, request_refresh};

    #[tokio::test]
    async fn links_share_one_file_and_each_name_is_an_object() {
        let (bucket, files, root) = local_gateway();
        let me = Caller::root_local();
        let d = files
            .mkdir(&me, root, b"d", SetAttr::default())
            .await
            .unwrap();
        let f = files
            .create(&me, root, b"f", CreateMode::Guarded, SetAttr::default())
            .await
            .unwrap();
        files
            .write(&me, f.id, 0, b"one", Stability::FileSync)
            .await
            .unwrap();
        let object = |p: &str| bucket.path().join("bucket/shares/s").join(p);
        let linked = files.link(&me, f.id, d.id, b"l").await.unwrap();
        assert_eq!((linked.id, linked.nlink), (f.id, 2));
        let seen = files.lookup(&me, d.id, b"l").await.unwrap();
        assert_eq!(seen, linked);
        for (file, dir, name, want) in [
            (f.id, d.id, &b"l"[..], "exists"),
            (d.id, root, b"x", "is a directory"),
            (f.id, f.id, b"x", "not a directory"),
            (f.id, root, b"..", "invalid"),
        ] {
            let err = files.link(&me, file, dir, name).await.unwrap_err();
            let got = match err {
                GatewayError::AlreadyExists(_) => "exists",
                GatewayError::IsDirectory(_) => "is a directory",
                GatewayError::NotDirectory(_) => "not a directory",
                GatewayError::InvalidArgument(_) => "invalid",
                other => panic!("{want}: {other:?}"),
            };
            assert_eq!(got, want);
        }

        // Both names are objects with the file's bytes, before and after a change.
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert_eq!(std::fs::read(object("f")).unwrap(), b"one");
        assert_eq!(std::fs::read(object("d/l")).unwrap(), b"one");
        files
            .write(&me, seen.id, 0, b"two", Stability::FileSync)
            .await
            .unwrap();
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert_eq!(std::fs::read(object("f")).unwrap(), b"two");
        assert_eq!(std::fs::read(object("d/l")).unwrap(), b"two");

        // A refresh does not take the link's object for a new file.
        request_refresh(&files.catalog, "s", "").unwrap();
        let page = files.readdir(&me, d.id, 0, 100).await.unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].attr.id, f.id);

        // Renaming a name onto another name of the same file does nothing.
        files.rename(&me, root, b"f", d.id, b"l").await.unwrap();
        assert_eq!(files.lookup(&me, root, b"f").await.unwrap().nlink, 2);

        // The directory holding the link moves: the link's object follows.
        files.rename(&me, root, b"d", root, b"e").await.unwrap();
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert!(!object("d/l").exists());
        assert_eq!(std::fs::read(object("e/l")).unwrap(), b"two");

        // The file's own name goes: the link keeps the data, and its object stays.
        files.remove(&me, root, b"f").await.unwrap();
        let left = files.getattr(&me, f.id).await.unwrap();
        assert_eq!(left.nlink, 1);
        let (data, _, _) = files.read(&me, f.id, 0, 10).await.unwrap();
        assert_eq!(&data[..], b"two");
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert!(!object("f").exists());
        assert_eq!(std::fs::read(object("e/l")).unwrap(), b"two");
        files.remove(&me, d.id, b"l").await.unwrap();
        assert!(matches!(
            files.getattr(&me, f.id).await,
            Err(GatewayError::Stale(_))
        ));
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert!(!object("e/l").exists());
    }
}
