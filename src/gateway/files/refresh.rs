//! Directory refresh: merges one level of the bucket listing into the catalog.
//!
//! A directory is re-listed when it is older than its share's refresh interval (0 = every
//! access) or was marked stale by `tidegate share refresh`. New objects become inodes with
//! attributes from their metadata (share defaults where there is none); an object whose ETag
//! changed is re-read (HEAD) and its cached window dropped; a clean file whose object is gone
//! vanishes. Invariant: an inode with local changes not yet uploaded (`version !=
//! synced_version`) is never touched, and an object queued for deletion is not resurrected.
//! Directories are never removed by a refresh (an empty one may be a local mkdir).

use std::collections::HashSet;

use crate::catalog::shares::{InodeKind, InodeRow, ShareRow};
use crate::gateway::GatewayError;
use crate::gateway::files::meta;
use crate::gateway::files::{Files, path};

fn same_etag(a: Option<&str>, b: Option<&str>) -> bool {
    let norm = |e: Option<&str>| e.map(|s| s.trim_matches('"').to_owned());
    norm(a) == norm(b)
}

impl Files {
    /// Refreshes `dir` if its listing is stale; returns the (possibly updated) row.
    pub(crate) async fn maybe_refresh(
        &self,
        share: &ShareRow,
        dir: &InodeRow,
    ) -> Result<InodeRow, GatewayError> {
        let age = u64::try_from(crate::clock::unix_secs().saturating_sub(dir.refreshed_unix))
            .unwrap_or(0);
        if dir.refreshed_unix != 0 && share.refresh_secs > 0 && age < share.refresh_secs {
            return Ok(dir.clone());
        }
        self.refresh_dir(share, dir).await
    }

    /// Lists the bucket level of `dir` and merges it into the catalog.
    pub(crate) async fn refresh_dir(
        &self,
        share: &ShareRow,
        dir: &InodeRow,
    ) -> Result<InodeRow, GatewayError> {
        let prefix = path::dir_prefix(&share.bucket_prefix, &dir.path);
        let listing = self.bucket.list_level(&prefix).await?;
        let mut seen = HashSet::new();
        for (key, size, etag, modified_ns) in &listing.objects {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            // The directory's own marker, or a key we could not name as a file.
            if name.is_empty() || path::validate_name(name.as_bytes()).is_err() {
                continue;
            }
            seen.insert(name.to_owned());
            // Queued for deletion, or the old key of an inode moved here or elsewhere but not
            // yet copied: neither is a new file.
            if self.catalog.is_pending_delete(key)? {
                continue;
            }
            match self.catalog.child(dir.id, name)? {
                // A hard link's object is a copy we made of its file's (ADR 0013), never a
                // file of its own.
                Some(child) if child.link.is_some() => {}
                Some(child) if child.dirty() || child.kind == InodeKind::Dir => {}
                Some(child)
                    if child.remote_key.as_deref() == Some(key.as_str())
                        && same_etag(child.etag.as_deref(), etag.as_deref()) => {}
                None if self.catalog.key_in_use(share.id, key)? => {}
                found => {
                    let head = self.bucket.head_object(key).await?.unwrap_or_default();
                    let m = meta::parse(&head.metadata);
                    // An object whose metadata says directory is a marker-like leftover, not
                    // a file; one that says nothing is a regular file.
                    let kind = match m.kind() {
                        Some(InodeKind::Dir) => None,
                        Some(k) => Some(k),
                        None => Some(InodeKind::File),
                    };
                    let mut row = match (found, kind) {
                        (Some(child), Some(k)) if child.kind == k => {
                            self.readahead_map_remove(child.id);
                            child
                        }
                        (found, kind) => {
                            // Another kind of file now has this name: a new file id.
                            // (With a current hard link elsewhere, it lives on there.)
                            if let Some(child) = found
                                && self.catalog.forget_inode(child.id)?
                            {
                                self.drop_local(child.id);
                            }
                            let Some(kind) = kind else { continue };
                            let path = path::join(&dir.path, name);
                            let owner = (0, 0, 0);
                            InodeRow::new(share.id, Some(dir.id), &path, kind, owner, 0)
                        }
                    };
                    row.size = *size;
                    row.etag.clone_from(etag);
                    row.remote_key = Some(key.clone());
                    row.mtime_ns = m.mtime_ns.unwrap_or(*modified_ns);
                    row.ctime_ns = m.ctime_ns.unwrap_or(row.mtime_ns);
                    row.mode = m.perm_or(if row.kind == InodeKind::Symlink {
                        0o777
                    } else {
                        share.default_file_mode
                    });
                    row.uid = m.uid.unwrap_or(share.default_uid);
                    row.gid = m.gid.unwrap_or(share.default_gid);
                    row.rdev = match row.kind {
                        InodeKind::BlockDev | InodeKind::CharDev => m.rdev.unwrap_or((0, 0)),
                        InodeKind::File
                        | InodeKind::Dir
                        | InodeKind::Symlink
                        | InodeKind::Fifo
                        | InodeKind::Socket => (0, 0),
                    };
                    row.extra_meta = m.extra;
                    row.target = None;
                    row.synced_version = row.version;
                    if row.id == 0 {
                        self.catalog.insert_inode(&row)?;
                    } else {
                        self.catalog.save_inode(&row)?;
                    }
                }
            }
        }
        for sub in &listing.prefixes {
            let Some(name) = sub.strip_prefix(&prefix) else {
                continue;
            };
            let name = name.trim_end_matches('/');
            if path::validate_name(name.as_bytes()).is_err() {
                continue;
            }
            seen.insert(name.to_owned());
            // Objects still at the old keys of a local move are not a directory of their own.
            let owned = self.catalog.prefix_owned(share.id, &format!("{sub}/"))?;
            if !owned && self.catalog.child(dir.id, name)?.is_none() {
                let owner = (share.default_dir_mode, share.default_uid, share.default_gid);
                let path = path::join(&dir.path, name);
                let mut row = InodeRow::new(
                    share.id,
                    Some(dir.id),
                    &path,
                    InodeKind::Dir,
                    owner,
                    crate::clock::unix_nanos(),
                );
                row.synced_version = row.version;
                self.catalog.insert_inode(&row)?;
            }
        }
        // Clean files whose objects are gone from the bucket vanish.
        let mut after = 0;
        loop {
            let page = self.catalog.children(dir.id, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for child in &page {
                if child.kind != InodeKind::Dir
                    && !child.dirty()
                    && child.remote_key.is_some()
                    && !seen.contains(&child.name)
                    && self.catalog.forget_inode(child.id)?
                {
                    self.drop_local(child.id);
                }
            }
        }
        // Likewise link names whose current objects are gone: the name was removed elsewhere.
        for link in self.catalog.links_in(dir.id)? {
            let current = self
                .catalog
                .inode(link.inode)?
                .is_some_and(|i| i.version == link.synced_version);
            if current && link.remote_key.is_some() && !seen.contains(&link.name) {
                self.catalog.forget_link(link.id)?;
            }
        }
        let mut row = self.catalog.inode(dir.id)?.unwrap_or_else(|| dir.clone());
        row.refreshed_unix = crate::clock::unix_secs();
        self.catalog.save_inode(&row)?;
        Ok(row)
    }

    fn readahead_map_remove(&self, id: i64) {
        self.readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}
