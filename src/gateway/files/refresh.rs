//! Directory refresh: merges one level of the bucket listing into the catalog.
//!
//! A directory is re-listed when it is older than its share's refresh interval (0 = every
//! access) or was marked stale by `tidegate share refresh`. New objects become inodes with
//! attributes from their metadata (share defaults where there is none); an object whose ETag
//! changed is re-read (HEAD) and its cached window dropped; a clean file whose object is gone
//! vanishes, once a second listing confirms it (a file uploaded while the first listing ran is
//! not in it). Invariant: an inode with local changes not yet uploaded (`version !=
//! synced_version`) is never touched, and an object queued for deletion is not resurrected.
//! Directories are never removed by a refresh (an empty one may be a local mkdir).
//!
//! A refresh reads the catalog in one blocking step, HEADs the objects that are new or
//! changed, and writes in a second step that checks each entry again: a local change made
//! while the HEADs ran wins, as it would have without them.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::catalog::Catalog;
use crate::catalog::shares::{InodeKind, InodeRow, ShareRow};
use crate::gateway::GatewayError;
use crate::gateway::files::local::remove_staging;
use crate::gateway::files::meta;
use crate::gateway::files::{Files, path};
use crate::store::objects::{Listing, ObjectHead};

fn same_etag(a: Option<&str>, b: Option<&str>) -> bool {
    let norm = |e: Option<&str>| e.map(|s| s.trim_matches('"').to_owned());
    norm(a) == norm(b)
}

/// Whether `dir`'s listing is older than its share allows (or was never made, or marked stale).
pub(crate) fn refresh_due(share: &ShareRow, dir: &InodeRow) -> bool {
    let age =
        u64::try_from(crate::clock::unix_secs().saturating_sub(dir.refreshed_unix)).unwrap_or(0);
    !(dir.refreshed_unix != 0 && share.refresh_secs > 0 && age < share.refresh_secs)
}

/// What the first step found: the names listed, and the objects to HEAD (index into the
/// listing, the entry now at that name).
struct Plan {
    seen: HashSet<String>,
    head: Vec<(usize, Option<InodeRow>)>,
}

/// What the second step changed that the caller must forget in memory.
#[derive(Default)]
struct Applied {
    /// Inodes gone from the catalog (their staging files are removed already).
    forgotten: Vec<i64>,
    /// Inodes whose object changed: their read-ahead windows are stale.
    changed: Vec<i64>,
    dir: Option<InodeRow>,
    /// Clean names whose objects the listing did not show (`forget_vanished` decides).
    vanished: Vec<Vanished>,
}

/// A clean name the first listing did not show, as it was then: it is forgotten only if a
/// second listing misses it too and nothing uploaded it meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Vanished {
    File { id: i64, version: i64, key: String },
    Link { id: i64, key: String },
}

impl Files {
    /// Refreshes `dir` if its listing is stale; returns the (possibly updated) row.
    pub(crate) async fn maybe_refresh(
        &self,
        share: &ShareRow,
        dir: &InodeRow,
    ) -> Result<InodeRow, GatewayError> {
        if !refresh_due(share, dir) {
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
        let listing = std::sync::Arc::new(self.bucket.list_level(&prefix).await?);
        // benches/scale.sh counts these to show that a restart lists nothing.
        tracing::debug!(share = %share.name, prefix, objects = listing.objects.len(), "listed the bucket level");
        let plan = {
            let (listing, prefix, dir, share_id) =
                (listing.clone(), prefix.clone(), dir.clone(), share.id);
            self.blocking(move |c| plan(c, &listing, &prefix, &dir, share_id))
                .await?
        };
        let mut heads = Vec::with_capacity(plan.head.len());
        for (i, found) in plan.head {
            let head = self
                .bucket
                .head_object(&listing.objects[i].0)
                .await?
                .unwrap_or_default();
            heads.push((i, found, head));
        }
        let applied = {
            let (share, dir, prefix) = (share.clone(), dir.clone(), prefix.clone());
            let staging_dir = self.config.staging_dir.clone();
            let seen = plan.seen;
            self.blocking(move |c| {
                apply(
                    c,
                    &share,
                    &dir,
                    (&listing, &prefix),
                    heads,
                    &seen,
                    &staging_dir,
                )
            })
            .await?
        };
        for id in applied.changed {
            self.readahead_map_remove(id);
        }
        let mut forgotten = applied.forgotten;
        if !applied.vanished.is_empty() {
            // A file uploaded after the listing was taken is not in it, yet is clean now:
            // forgetting it would hide a file that is in the bucket (issue 21: 129 of 100,000
            // files created while their directory refreshed vanished). Every candidate was
            // clean before this second listing began, so one that still exists is in it.
            let again = self.bucket.list_level(&prefix).await?;
            let names: HashSet<String> = again
                .objects
                .iter()
                .filter_map(|(key, ..)| listed_name(key, &prefix).map(str::to_owned))
                .collect();
            let (vanished, dir_id) = (applied.vanished, dir.id);
            let staging_dir = self.config.staging_dir.clone();
            forgotten.extend(
                self.blocking(move |c| forget_vanished(c, dir_id, &vanished, &names, &staging_dir))
                    .await?,
            );
        }
        for id in forgotten {
            self.drop_local(id);
        }
        Ok(applied.dir.unwrap_or_else(|| dir.clone()))
    }

    fn readahead_map_remove(&self, id: i64) {
        self.readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// The name a listed object of `dir` has, if it can name a file (not the directory's own
/// marker, nor a key we could not name as a file).
fn listed_name<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let name = key.strip_prefix(prefix)?;
    (!name.is_empty() && path::validate_name(name.as_bytes()).is_ok()).then_some(name)
}

/// The name a listed common prefix of `dir` gives its subdirectory, if it can name one.
fn listed_dir(sub: &str, prefix: &str) -> Option<String> {
    let name = sub.strip_prefix(prefix)?.trim_end_matches('/');
    path::validate_name(name.as_bytes())
        .is_ok()
        .then(|| name.to_owned())
}

/// Whether the listed object `key` (with `etag`) must be read: it is new, or its object
/// changed, and no local change or pending move owns the name.
fn wants_head(
    catalog: &Catalog,
    share_id: i64,
    key: &str,
    etag: Option<&str>,
    found: Option<&InodeRow>,
) -> Result<bool, GatewayError> {
    // Queued for deletion, or the old key of an inode moved here or elsewhere but not yet
    // copied: neither is a new file.
    if catalog.is_pending_delete(key)? {
        return Ok(false);
    }
    Ok(match found {
        // A hard link's object is a copy we made of its file's (ADR 0013), never a file of
        // its own.
        Some(child) if child.link.is_some() => false,
        Some(child) if child.dirty() || child.kind == InodeKind::Dir => false,
        Some(child) => {
            child.remote_key.as_deref() != Some(key) || !same_etag(child.etag.as_deref(), etag)
        }
        None => !catalog.key_in_use(share_id, key)?,
    })
}

/// The first step: which listed objects to HEAD.
fn plan(
    catalog: &Catalog,
    listing: &Listing,
    prefix: &str,
    dir: &InodeRow,
    share_id: i64,
) -> Result<Plan, GatewayError> {
    let mut seen = HashSet::new();
    let mut head = Vec::new();
    for (i, (key, _, etag, _)) in listing.objects.iter().enumerate() {
        let Some(name) = listed_name(key, prefix) else {
            continue;
        };
        seen.insert(name.to_owned());
        let found = catalog.child(dir.id, name)?;
        if wants_head(catalog, share_id, key, etag.as_deref(), found.as_ref())? {
            head.push((i, found));
        }
    }
    for sub in &listing.prefixes {
        if let Some(name) = listed_dir(sub, prefix) {
            seen.insert(name);
        }
    }
    Ok(Plan { seen, head })
}

/// The second step: records what the HEADs found (each entry checked again, so a local change
/// made meanwhile is kept), adds new directories, drops clean files whose objects are gone, and
/// stamps the directory as refreshed.
fn apply(
    catalog: &Catalog,
    share: &ShareRow,
    dir: &InodeRow,
    (listing, prefix): (&Listing, &str),
    heads: Vec<(usize, Option<InodeRow>, ObjectHead)>,
    seen: &HashSet<String>,
    staging_dir: &std::path::Path,
) -> Result<Applied, GatewayError> {
    let mut applied = Applied::default();
    let staging = |id: i64| -> PathBuf { staging_dir.join(id.to_string()) };
    for (i, found, head) in heads {
        let (key, size, etag, modified_ns) = &listing.objects[i];
        let Some(name) = listed_name(key, prefix) else {
            continue;
        };
        let now = catalog.child(dir.id, name)?;
        if now != found || !wants_head(catalog, share.id, key, etag.as_deref(), now.as_ref())? {
            continue;
        }
        let m = meta::parse(&head.metadata);
        // An object whose metadata says directory is a marker-like leftover, not a file; one
        // that says nothing is a regular file.
        let kind = match m.kind() {
            Some(InodeKind::Dir) => None,
            Some(k) => Some(k),
            None => Some(InodeKind::File),
        };
        let mut row = match (found, kind) {
            (Some(child), Some(k)) if child.kind == k => {
                applied.changed.push(child.id);
                child
            }
            (found, kind) => {
                // Another kind of file now has this name: a new file id.
                // (With a current hard link elsewhere, it lives on under that name.)
                if let Some(child) = found
                    && catalog.forget_inode(child.id)?
                {
                    remove_staging(&staging(child.id));
                    applied.forgotten.push(child.id);
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
            catalog.insert_inode(&row)?;
        } else {
            catalog.save_inode(&row)?;
        }
    }
    for sub in &listing.prefixes {
        let Some(name) = listed_dir(sub, prefix) else {
            continue;
        };
        // Objects still at the old keys of a local move are not a directory of their own.
        let owned = catalog.prefix_owned(share.id, &format!("{sub}/"))?;
        if !owned && catalog.child(dir.id, &name)?.is_none() {
            let owner = (share.default_dir_mode, share.default_uid, share.default_gid);
            let path = path::join(&dir.path, &name);
            let mut row = InodeRow::new(
                share.id,
                Some(dir.id),
                &path,
                InodeKind::Dir,
                owner,
                crate::clock::unix_nanos(),
            );
            row.synced_version = row.version;
            catalog.insert_inode(&row)?;
        }
    }
    // Clean names whose objects are not in the listing: gone from the bucket, or uploaded
    // after the listing was taken (`forget_vanished` tells which).
    let mut after = 0;
    loop {
        let page = catalog.children(dir.id, after, 1000)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for child in &page {
            if child.kind != InodeKind::Dir
                && !child.dirty()
                && !seen.contains(&child.name)
                && let Some(key) = &child.remote_key
            {
                applied.vanished.push(Vanished::File {
                    id: child.id,
                    version: child.version,
                    key: key.clone(),
                });
            }
        }
    }
    for link in catalog.links_in(dir.id)? {
        let current = catalog
            .inode(link.inode)?
            .is_some_and(|i| i.version == link.synced_version);
        if current
            && !seen.contains(&link.name)
            && let Some(key) = link.remote_key
        {
            applied.vanished.push(Vanished::Link { id: link.id, key });
        }
    }
    let mut row = catalog.inode(dir.id)?.unwrap_or_else(|| dir.clone());
    row.refreshed_unix = crate::clock::unix_secs();
    catalog.save_inode(&row)?;
    applied.dir = Some(row);
    Ok(applied)
}

/// Forgets the names of `dir` that the first listing missed (`vanished`) and a later one
/// (`names`) misses too, unless they changed meanwhile: a file whose object vanished from the
/// bucket was removed elsewhere, and so was a hard link name whose current object did. Returns
/// the inodes gone (their staging files removed).
fn forget_vanished(
    catalog: &Catalog,
    dir: i64,
    vanished: &[Vanished],
    names: &HashSet<String>,
    staging_dir: &std::path::Path,
) -> Result<Vec<i64>, GatewayError> {
    let mut forgotten = Vec::new();
    for v in vanished {
        match v {
            Vanished::File { id, version, key } => {
                let Some(row) = catalog.inode(*id)? else {
                    continue;
                };
                let unchanged = !row.dirty()
                    && row.version == *version
                    && row.remote_key.as_deref() == Some(key.as_str())
                    && row.parent == Some(dir);
                if unchanged && !names.contains(&row.name) && catalog.forget_inode(*id)? {
                    remove_staging(&staging_dir.join(id.to_string()));
                    forgotten.push(*id);
                }
            }
            Vanished::Link { id, key } => {
                let Some(link) = catalog.link(*id)? else {
                    continue;
                };
                let current = catalog
                    .inode(link.inode)?
                    .is_some_and(|i| i.version == link.synced_version);
                let unchanged = current
                    && link.remote_key.as_deref() == Some(key.as_str())
                    && link.parent == dir;
                if unchanged && !names.contains(&link.name) {
                    catalog.forget_link(*id)?;
                }
            }
        }
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::files::tests::local_gateway;
    use crate::gateway::files::{Caller, CreateMode, SetAttr, Stability};
    use std::time::Duration;

    /// Issue 21: a file uploaded after its directory's listing was taken is not in that
    /// listing, yet clean when the refresh applies it; it must stay. A file whose object is
    /// really gone still vanishes.
    #[tokio::test]
    async fn issue_21_a_file_uploaded_during_a_refresh_is_kept() {
        let (dir, files, root) = local_gateway();
        let me = Caller::root_local();
        let mut ids = Vec::new();
        for name in [&b"late"[..], b"gone"] {
            let f = files
                .create(&me, root, name, CreateMode::Guarded, SetAttr::default())
                .await
                .unwrap();
            files
                .write(&me, f.id, 0, b"x", Stability::FileSync)
                .await
                .unwrap();
            ids.push(i64::try_from(f.id.0).unwrap());
        }
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        let share = files.catalog.shares().unwrap().remove(0);
        let root_row = files
            .catalog
            .inode(i64::try_from(root.0).unwrap())
            .unwrap()
            .unwrap();
        let prefix = path::dir_prefix(&share.bucket_prefix, &root_row.path);
        // The first listing as taken before "late" was uploaded.
        let mut stale = files.bucket.list_level(&prefix).await.unwrap();
        stale.objects.retain(|(key, ..)| !key.ends_with("/late"));
        let seen: HashSet<String> = stale
            .objects
            .iter()
            .filter_map(|(k, ..)| listed_name(k, &prefix).map(str::to_owned))
            .collect();
        let staging = dir.path().join("staging");
        let applied = apply(
            &files.catalog,
            &share,
            &root_row,
            (&stale, &prefix),
            Vec::new(),
            &seen,
            &staging,
        )
        .unwrap();
        assert!(applied.forgotten.is_empty(), "forgotten on one listing");
        assert_eq!(applied.vanished.len(), 1);
        // Meanwhile "gone" is deleted from the bucket by someone else.
        std::fs::remove_file(dir.path().join("bucket/shares/s/gone")).unwrap();
        let again = files.bucket.list_level(&prefix).await.unwrap();
        let names = again
            .objects
            .iter()
            .filter_map(|(k, ..)| listed_name(k, &prefix).map(str::to_owned))
            .collect();
        let mut vanished = applied.vanished;
        vanished.push(Vanished::File {
            id: ids[1],
            version: files.catalog.inode(ids[1]).unwrap().unwrap().version,
            key: format!("{prefix}gone"),
        });
        let forgotten =
            forget_vanished(&files.catalog, root_row.id, &vanished, &names, &staging).unwrap();
        assert_eq!(forgotten, [ids[1]]);
        assert!(files.catalog.inode(ids[0]).unwrap().is_some(), "late kept");
        assert!(
            files.catalog.inode(ids[1]).unwrap().is_none(),
            "gone forgotten"
        );
    }
}
