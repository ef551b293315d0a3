//! Namespace operations: lookup, create, mkdir, symlink, mknod, remove, rmdir, rename, setattr,
//! readdir, readlink, access. Each checks the share's allow-list and squash first, then POSIX
//! permissions against the squashed caller, and records the change in the catalog; the bucket
//! follows through the uploader.
//!
//! Invariant: every change bumps the inode's `version`, so the uploader sees it; nothing here
//! talks to the bucket except a refresh before a lookup or listing, and readlink of a foreign
//! symlink.

use crate::catalog::Catalog;
use crate::catalog::shares::{InodeKind, InodeRow, ShareRow};
use crate::gateway::GatewayError;
use crate::gateway::files::blocking;
use crate::gateway::files::local::remove_staging;
use crate::gateway::files::path::{self, validate_name};
use crate::gateway::files::refresh::refresh_due;
use crate::gateway::files::{
    Attr, Caller, CreateMode, DirEntry, FileId, FileKind, Files, SetAttr, SetTime, effective,
    permits, stale,
};

/// The longest symlink target we accept or read back.
pub const MAX_SYMLINK_BYTES: usize = 4096;

/// A name in a writable directory, as create-like operations see it.
pub(super) struct Slot {
    pub(super) dir: InodeRow,
    pub(super) share: ShareRow,
    who: Caller,
    pub(super) name: String,
    existing: Option<InodeRow>,
}

impl Slot {
    /// The slot if nothing is there yet.
    pub(super) fn vacant(self) -> Result<Self, GatewayError> {
        match &self.existing {
            Some(e) => Err(GatewayError::AlreadyExists(e.path.clone())),
            None => Ok(self),
        }
    }
}

/// A file to create, or open if it is there ([`Files::create_open`]).
#[derive(Debug, Clone, Copy)]
pub struct NewFile<'a> {
    pub dir: FileId,
    pub name: &'a [u8],
    pub how: CreateMode,
    pub attrs: SetAttr,
}

/// What an open that may create did ([`Files::create_open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub attr: Attr,
    /// Whether the file is new: made by this call.
    pub created: bool,
    /// The directory before the call and after it (the same when nothing was made).
    pub dir_before: Attr,
    pub dir_after: Attr,
    /// The caller's read (4), write (2) and execute (1) bits on the file as [`Files::access`]
    /// would answer them, read in the same hops; `None` if attributes set after the create
    /// may have changed them.
    pub access: Option<u32>,
}

/// What READDIR pages are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    pub dir: Attr,
    pub entries: Vec<DirEntry>,
    pub eof: bool,
}

impl Files {
    pub async fn getattr(&self, caller: &Caller, id: FileId) -> Result<Attr, GatewayError> {
        let (row, share) = self.node(id).await?;
        self.effective(&share, caller)?;
        Ok(self.attr(&row))
    }

    pub async fn lookup(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
    ) -> Result<Attr, GatewayError> {
        self.lookup_in(caller, dir, name).await.0
    }

    /// [`Self::lookup`], with the directory's attributes as read in the same hop (`None` when
    /// the directory could not be read, or the caller may not see it): the post-operation
    /// directory attributes of an NFSv3 LOOKUP reply (RFC 1813 §3.3.3), which otherwise cost a
    /// GETATTR and a hop of their own, three times for each small file libnfs creates.
    pub async fn lookup_in(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
    ) -> (Result<Attr, GatewayError>, Option<Attr>) {
        let (row, share, entry) = match self.dir_entry(dir, name).await {
            Ok(found) => found,
            Err(e) => return (Err(e), None),
        };
        let who = match self.effective(&share, caller) {
            Ok(who) => who,
            Err(e) => return (Err(e), None),
        };
        let dir_attr = self.attr(&row);
        (
            self.lookup_as(&who, &share, &row, name, entry).await,
            Some(dir_attr),
        )
    }

    /// A directory, its share and, when no refresh of it is due, its entry `name` (`Some(None)`:
    /// there is none), read in one hop: what a lookup or a create needs first.
    async fn dir_entry(
        &self,
        dir: FileId,
        name: &[u8],
    ) -> Result<(InodeRow, ShareRow, Option<Option<InodeRow>>), GatewayError> {
        let name = validate_name(name).ok().map(str::to_owned);
        // Read inline when the catalog is free this instant, as `Files::node` reads: a path
        // lookup is one LOOKUP per component, and each would otherwise cost a hop.
        if let Some(name) = &name
            && let Some(found) = self.catalog.try_dir_entry(dir.row_id()?, name)?
        {
            let (row, share, child) = found.ok_or_else(|| stale(dir.0))?;
            let entry = entries_current(&share, &row).then_some(child);
            return Ok((row, share, entry));
        }
        self.blocking(move |c| {
            let (row, share) = blocking::node(c, dir)?;
            let entry = match name {
                Some(name) if entries_current(&share, &row) => Some(c.child(row.id, &name)?),
                _ => None,
            };
            Ok((row, share, entry))
        })
        .await
    }

    /// The entry `name` of `dir` after a refresh if one is due; `entry` is what
    /// [`Self::dir_entry`] found, if it looked.
    async fn entry(
        &self,
        share: &ShareRow,
        dir: &InodeRow,
        name: &str,
        entry: Option<Option<InodeRow>>,
    ) -> Result<(InodeRow, Option<InodeRow>), GatewayError> {
        if let Some(found) = entry {
            return Ok((dir.clone(), found));
        }
        let dir = self.maybe_refresh(share, dir).await?;
        let (id, name) = (dir.id, name.to_owned());
        let found = self.blocking(move |c| Ok(c.child(id, &name)?)).await?;
        Ok((dir, found))
    }

    pub(crate) async fn lookup_as(
        &self,
        who: &Caller,
        share: &ShareRow,
        dir: &InodeRow,
        name: &[u8],
        entry: Option<Option<InodeRow>>,
    ) -> Result<Attr, GatewayError> {
        if dir.kind != InodeKind::Dir {
            return Err(GatewayError::NotDirectory(dir.path.clone()));
        }
        if !permits(who, dir, 1) {
            return Err(GatewayError::PermissionDenied(format!(
                "search {}",
                dir.path
            )));
        }
        match name {
            b"." => return Ok(self.attr(dir)),
            b".." => {
                let parent = match dir.parent {
                    Some(p) => self
                        .blocking(move |c| Ok(c.inode(p)?))
                        .await?
                        .unwrap_or_else(|| dir.clone()),
                    None => dir.clone(),
                };
                return Ok(self.attr(&parent));
            }
            _ => {}
        }
        let name = validate_name(name)?;
        let (dir, child) = self.entry(share, dir, name, entry).await?;
        let child = child.ok_or_else(|| GatewayError::NotFound(path::join(&dir.path, name)))?;
        Ok(self.attr(&child))
    }

    /// A directory the caller may change, in a writable share (`row` and `share` as read).
    fn writable_dir(
        &self,
        caller: &Caller,
        (row, share): (InodeRow, ShareRow),
    ) -> Result<(InodeRow, ShareRow, Caller), GatewayError> {
        let who = writable_dir(&share, caller, &row)?;
        self.count(share.id, crate::gateway::files::traffic::Counted::Call);
        Ok((row, share, who))
    }

    /// A new file `name` in `dir` (mode given, or the share's default), made in the same hop
    /// that reads the directory and checks the name is free: what a small-file CREATE or
    /// OPEN costs most often. Otherwise (the name is taken, or a refresh of the directory is
    /// due first) the slot, for the caller to go on as for any create.
    async fn make_file(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        mode: Option<u32>,
        verf: Option<[u8; 8]>,
    ) -> Result<Made, GatewayError> {
        let (caller, name) = (caller.clone(), name.to_vec());
        let first = self
            .blocking(move |c| {
                let (dir, share) = blocking::node(c, dir)?;
                let who = writable_dir(&share, &caller, &dir)?;
                let name = validate_name(&name)?.to_owned();
                let due = refresh_due(&share, &dir);
                let existing = if due { None } else { c.child(dir.id, &name)? };
                let slot = Slot {
                    dir,
                    share,
                    who,
                    name,
                    existing,
                };
                if due || slot.existing.is_some() {
                    return Ok((slot, None, due));
                }
                let row = file_row(&slot, mode)?;
                let row = insert_file(c, &row, verf)?;
                let dir_after = blocking::current(c, slot.dir.id)?;
                Ok((slot, Some((row, dir_after)), false))
            })
            .await?;
        let (mut slot, made, due) = first;
        self.count(slot.share.id, crate::gateway::files::traffic::Counted::Call);
        if let Some((row, dir_after)) = made {
            self.touched(row.id);
            return Ok(Made::New {
                slot,
                made: Box::new((row, dir_after)),
            });
        }
        if due {
            let (dir, existing) = self.entry(&slot.share, &slot.dir, &slot.name, None).await?;
            slot.dir = dir;
            slot.existing = existing;
        }
        Ok(Made::Slot(slot))
    }

    /// The place `name` in a directory the caller may change, with what is there now.
    pub(super) async fn slot(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
    ) -> Result<Slot, GatewayError> {
        let (dir_row, share, entry) = self.dir_entry(dir, name).await?;
        let (dir_row, share, who) = self.writable_dir(caller, (dir_row, share))?;
        let name = validate_name(name)?.to_owned();
        let (dir_row, existing) = self.entry(&share, &dir_row, &name, entry).await?;
        Ok(Slot {
            dir: dir_row,
            share,
            who,
            name,
            existing,
        })
    }

    pub async fn create(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        how: CreateMode,
        attrs: SetAttr,
    ) -> Result<Attr, GatewayError> {
        let req = NewFile {
            dir,
            name,
            how,
            attrs,
        };
        Ok(self.create_open(caller, req).await?.attr)
    }

    /// [`Self::create`] for an open that may create (NFSv4 OPEN): also says whether the file
    /// is new and what its directory was before and after, read in the hops the create makes
    /// anyway.
    pub async fn create_open(
        &self,
        caller: &Caller,
        req: NewFile<'_>,
    ) -> Result<Opened, GatewayError> {
        let NewFile {
            dir,
            name,
            how,
            attrs,
        } = req;
        let verf = match how {
            CreateMode::Exclusive(verf) => Some(verf),
            _ => None,
        };
        let mut slot = match self.make_file(caller, dir, name, attrs.mode, verf).await? {
            Made::New { slot, made } => {
                let (row, dir_after) = *made;
                let access = rwx(&slot.who, &slot.share, &row);
                let opened = Opened {
                    attr: self.attr(&row),
                    created: true,
                    dir_before: self.attr(&slot.dir),
                    dir_after: self.attr(&dir_after),
                    access: Some(access),
                };
                return self.set_after_create(caller, attrs, opened).await;
            }
            Made::Slot(slot) => slot,
        };
        let dir_before = self.attr(&slot.dir);
        let unchanged = |attr, row: &InodeRow| Opened {
            attr,
            created: false,
            dir_before: dir_before.clone(),
            dir_after: dir_before.clone(),
            access: Some(rwx(&slot.who, &slot.share, row)),
        };
        if let Some(existing) = slot.existing.take() {
            return match how {
                CreateMode::Guarded => Err(GatewayError::AlreadyExists(existing.path)),
                CreateMode::Exclusive(verf) => {
                    let id = existing.id;
                    let made_by = self.blocking(move |c| Ok(c.create_verifier(id)?)).await?;
                    if existing.kind == InodeKind::File && made_by == Some(verf) {
                        Ok(unchanged(self.attr(&existing), &existing))
                    } else {
                        Err(GatewayError::AlreadyExists(existing.path))
                    }
                }
                CreateMode::Unchecked => {
                    if existing.kind == InodeKind::Dir {
                        return Err(GatewayError::IsDirectory(existing.path));
                    }
                    let only_size = SetAttr {
                        size: attrs.size,
                        ..SetAttr::default()
                    };
                    let attr = self
                        .setattr(caller, FileId::of(&existing), only_size)
                        .await?;
                    // A size changes nobody's access.
                    Ok(unchanged(attr, &existing))
                }
            };
        }
        // A refresh came first: the file is made in a hop of its own.
        let row = file_row(&slot, attrs.mode)?;
        let access = rwx(&slot.who, &slot.share, &row);
        let (attr, dir_after) = self.insert_in(row, slot.dir.id, verf).await?;
        let opened = Opened {
            attr,
            created: true,
            dir_before,
            dir_after,
            access: Some(access),
        };
        self.set_after_create(caller, attrs, opened).await
    }

    /// The attributes a create asked for beyond the mode (set with the new file), applied to
    /// the new file. An NFSv4.1 exclusive create may carry them too (owner, group, size: the
    /// attrset of the reply says they were set); an NFSv3 one carries none.
    async fn set_after_create(
        &self,
        caller: &Caller,
        attrs: SetAttr,
        opened: Opened,
    ) -> Result<Opened, GatewayError> {
        let rest = SetAttr {
            mode: None,
            ..attrs
        };
        if rest == SetAttr::default() {
            return Ok(opened);
        }
        Ok(Opened {
            attr: self.setattr(caller, opened.attr.id, rest).await?,
            // An owner or group set here may change them.
            access: None,
            ..opened
        })
    }

    pub async fn mkdir(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        attrs: SetAttr,
    ) -> Result<Attr, GatewayError> {
        let slot = self.slot(caller, dir, name).await?.vacant()?;
        let mode = attrs.mode.unwrap_or(slot.share.default_dir_mode);
        let row = new_inode(&slot, InodeKind::Dir, mode)?;
        let attr = self.insert(row).await?;
        Ok(attr)
    }

    pub async fn symlink(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        target: &[u8],
    ) -> Result<Attr, GatewayError> {
        if target.is_empty() || target.len() > MAX_SYMLINK_BYTES || target.contains(&0) {
            return Err(GatewayError::InvalidArgument(format!(
                "symlink target must be 1 to {MAX_SYMLINK_BYTES} bytes without NUL"
            )));
        }
        let target = std::str::from_utf8(target)
            .map_err(|_| GatewayError::InvalidArgument("symlink target is not UTF-8".into()))?;
        let slot = self.slot(caller, dir, name).await?.vacant()?;
        let mut row = new_inode(&slot, InodeKind::Symlink, 0o777)?;
        row.target = Some(target.to_owned());
        row.size = target.len() as u64;
        let attr = self.insert(row).await?;
        Ok(attr)
    }

    /// MKNOD: a FIFO, socket, or block or character device (`rdev` is (major, minor), kept for
    /// devices only). It is uploaded as a zero-byte object whose metadata carries its type and
    /// device numbers, as s3fs stores them. Devices need root, as mknod(2) needs CAP_MKNOD: a
    /// device node in a share works on every client that mounts it with devices allowed.
    pub async fn mknod(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        kind: FileKind,
        attrs: SetAttr,
        rdev: (u32, u32),
    ) -> Result<Attr, GatewayError> {
        let (kind, rdev) = match kind {
            FileKind::Fifo => (InodeKind::Fifo, (0, 0)),
            FileKind::Socket => (InodeKind::Socket, (0, 0)),
            FileKind::BlockDev => (InodeKind::BlockDev, rdev),
            FileKind::CharDev => (InodeKind::CharDev, rdev),
            FileKind::File | FileKind::Dir | FileKind::Symlink => {
                return Err(GatewayError::InvalidArgument(format!(
                    "mknod makes FIFOs, sockets and devices, not a {kind:?}"
                )));
            }
        };
        let slot = self.slot(caller, dir, name).await?.vacant()?;
        if matches!(kind, InodeKind::BlockDev | InodeKind::CharDev) && slot.who.uid != 0 {
            return Err(GatewayError::PermissionDenied(format!(
                "only root makes device nodes ({})",
                path::join(&slot.dir.path, &slot.name)
            )));
        }
        let mode = attrs.mode.unwrap_or(slot.share.default_file_mode);
        let mut row = new_inode(&slot, kind, mode)?;
        row.rdev = rdev;
        let attr = self.insert(row).await?;
        // Owner and times the caller asked for (none: setattr records nothing); a special
        // file has no size to set.
        let rest = SetAttr {
            mode: None,
            size: None,
            ..attrs
        };
        self.setattr(caller, attr.id, rest).await
    }

    pub async fn readlink(&self, caller: &Caller, id: FileId) -> Result<String, GatewayError> {
        let (mut row, share) = self.node(id).await?;
        self.effective(&share, caller)?;
        if row.kind != InodeKind::Symlink {
            return Err(GatewayError::InvalidArgument(format!(
                "{} is not a symlink",
                row.path
            )));
        }
        if let Some(t) = &row.target {
            return Ok(t.clone());
        }
        // A foreign symlink: its body is the target.
        let key = row
            .remote_key
            .clone()
            .ok_or_else(|| GatewayError::NotFound(row.path.clone()))?;
        let body = self
            .bucket
            .read_object(&key, 0..MAX_SYMLINK_BYTES as u64)
            .await?;
        let target = String::from_utf8_lossy(&body).into_owned();
        row.target = Some(target.clone());
        self.blocking(move |c| Ok(c.save_inode(&row)?)).await?;
        Ok(target)
    }

    /// The entry `name` of a directory the caller may change.
    async fn existing_child(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
    ) -> Result<(ShareRow, InodeRow), GatewayError> {
        let slot = self.slot(caller, dir, name).await?;
        let child = slot
            .existing
            .ok_or_else(|| GatewayError::NotFound(path::join(&slot.dir.path, &slot.name)))?;
        Ok((slot.share, child))
    }

    pub async fn remove(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
    ) -> Result<(), GatewayError> {
        let (_, child) = self.existing_child(caller, dir, name).await?;
        if child.kind == InodeKind::Dir {
            return Err(GatewayError::IsDirectory(child.path));
        }
        let lock = self.inode_lock(child.id);
        let _guard = lock.lock().await;
        let id = child.id;
        let staging = self.staging_path(id);
        // One name of a file with hard links goes alone; the file lives on under the others,
        // and so do its staging file and its state in memory.
        let gone = self
            .blocking(move |c| {
                let gone = c.remove_entry(&child, crate::clock::unix_nanos())?;
                if gone {
                    remove_staging(&staging);
                }
                Ok(gone)
            })
            .await?;
        if gone {
            self.drop_local(id);
        }
        self.wake.notify_one();
        Ok(())
    }

    pub async fn rmdir(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
    ) -> Result<(), GatewayError> {
        let (share, child) = self.existing_child(caller, dir, name).await?;
        if child.kind != InodeKind::Dir {
            return Err(GatewayError::NotDirectory(child.path));
        }
        let child = self.maybe_refresh(&share, &child).await?;
        self.blocking(move |c| {
            if c.has_children(child.id)? {
                return Err(GatewayError::NotEmpty(child.path));
            }
            Ok(c.remove_entry(&child, crate::clock::unix_nanos())?)
        })
        .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Renames within a share. A catalog change acknowledged at once; the uploader then copies
    /// each moved object to its new key and deletes the old one, so a directory costs O(files).
    pub async fn rename(
        &self,
        caller: &Caller,
        from_dir: FileId,
        from_name: &[u8],
        to_dir: FileId,
        to_name: &[u8],
    ) -> Result<(), GatewayError> {
        let (src, dst) = self
            .blocking(move |c| Ok((blocking::node(c, from_dir)?, blocking::node(c, to_dir)?)))
            .await?;
        let (src_dir, share, _) = self.writable_dir(caller, src)?;
        let (dst_dir, dst_share, _) = self.writable_dir(caller, dst)?;
        if share.id != dst_share.id {
            return Err(GatewayError::CrossDevice(
                "rename across shares is not possible".into(),
            ));
        }
        let from_name = validate_name(from_name)?;
        let to_name = validate_name(to_name)?;
        let src_dir = self.maybe_refresh(&share, &src_dir).await?;
        let dst_dir = self.maybe_refresh(&share, &dst_dir).await?;
        let (from, to) = (from_name.to_owned(), to_name.to_owned());
        let (src_id, dst_id) = (src_dir.id, dst_dir.id);
        let (src, replaced) = self
            .blocking(move |c| {
                let Some(src) = c.child(src_id, &from)? else {
                    return Ok(None);
                };
                let replaced = match c.child(dst_id, &to)? {
                    Some(old) => {
                        let full = old.kind == InodeKind::Dir && c.has_children(old.id)?;
                        Some((old, full))
                    }
                    None => None,
                };
                Ok(Some((src, replaced)))
            })
            .await?
            .ok_or_else(|| GatewayError::NotFound(path::join(&src_dir.path, from_name)))?;
        let new_path = path::join(&dst_dir.path, to_name);
        path::key(&share.bucket_prefix, &new_path)?;
        if src.kind == InodeKind::Dir
            && (dst_dir.id == src.id || dst_dir.path.starts_with(&format!("{}/", src.path)))
        {
            return Err(GatewayError::InvalidArgument(format!(
                "cannot move {} into itself",
                src.path
            )));
        }
        if let Some((old, full)) = &replaced {
            // Two names of one file (or one name twice): success, and nothing changes (RFC
            // 8881 §18.26.3, rename(2)).
            if old.id == src.id {
                return Ok(());
            }
            match (src.kind == InodeKind::Dir, old.kind == InodeKind::Dir) {
                (true, false) => return Err(GatewayError::NotDirectory(old.path.clone())),
                (false, true) => return Err(GatewayError::IsDirectory(old.path.clone())),
                (true, true) if *full => {
                    return Err(GatewayError::NotEmpty(old.path.clone()));
                }
                _ => {}
            }
        }
        let replaced = replaced.map(|(old, _)| old);
        let lock = self.inode_lock(src.id);
        let _guard = lock.lock().await;
        let src_id = src.id;
        let replaced_id = replaced.as_ref().map(|old| old.id);
        let replaced_staging = replaced_id.map(|id| self.staging_path(id));
        let to = to_name.to_owned();
        // A replaced name of a file with hard links goes alone: the file, its staging file and
        // its state in memory stay while it has other names.
        let gone = self
            .blocking(move |c| {
                let gone = c.rename_inode(
                    &src,
                    dst_id,
                    &to,
                    &new_path,
                    crate::clock::unix_nanos(),
                    replaced.as_ref(),
                )?;
                if gone && let Some(staging) = &replaced_staging {
                    remove_staging(staging);
                }
                Ok(gone)
            })
            .await?;
        if gone && let Some(old) = replaced_id {
            self.drop_local(old);
        }
        self.touched(src_id);
        Ok(())
    }

    pub async fn setattr(
        &self,
        caller: &Caller,
        id: FileId,
        set: SetAttr,
    ) -> Result<Attr, GatewayError> {
        // One that changes nothing (an untar's chown and chmod to what the new file already
        // has) is answered on the worker when the catalog is free this instant, as
        // `Files::node` reads: no hop, no write. Reading the committed row without the inode
        // lock orders this no-op before any change in flight, as if it had arrived first.
        let row_id = id.row_id()?;
        if let Some(found) = self.catalog.try_inode_with_share(row_id)? {
            let (row, share) = found.ok_or_else(|| stale(id.0))?;
            let who = effective(&share, caller)?;
            if !check_setattr(&who, &share, &row, &set)? {
                self.count(share.id, crate::gateway::files::traffic::Counted::Call);
                return Ok(self.attr(&row));
            }
        }
        let lock = self.inode_lock(row_id);
        let mut truncated = false;
        let (row, share, changed) = loop {
            let guard = lock.lock().await;
            // Checked and changed in one hop on the row as stored now: a SETATTR of mode,
            // owner or times (three or four per file of an untar), or one that changes nothing
            // (the size 0 a client sends after creating a file with O_TRUNC), crosses to the
            // pool once, and one that changes nothing writes nothing and waits for no sync.
            let (caller, set) = (caller.clone(), set);
            let step = self
                .blocking(move |c| {
                    let (mut row, share) = blocking::node(c, id)?;
                    let who = effective(&share, &caller)?;
                    let set = if truncated {
                        SetAttr { size: None, ..set }
                    } else {
                        set
                    };
                    let changed = check_setattr(&who, &share, &row, &set)?;
                    if let Some(size) = set.size
                        && changed
                        && row.kind == InodeKind::File
                        && size != row.size
                    {
                        return Ok(SetStep::Truncate(row, size));
                    }
                    if changed {
                        apply_setattr(&mut row, set);
                        c.save_inode(&row)?;
                    }
                    Ok(SetStep::Done(row, share, changed))
                })
                .await?;
            match step {
                SetStep::Done(row, share, changed) => break (row, share, changed || truncated),
                SetStep::Truncate(row, size) => {
                    // The size first (it may fetch from the bucket, and takes the inode lock
                    // itself), then the rest on the row as it is after.
                    drop(guard);
                    self.truncate(&row, size).await?;
                    truncated = true;
                }
            }
        };
        self.count(share.id, crate::gateway::files::traffic::Counted::Call);
        // The atime is kept locally only: a change of it alone (touch -a) uploads nothing.
        let atime_only = set
            == SetAttr {
                atime: set.atime,
                ..SetAttr::default()
            };
        if changed && !atime_only {
            self.touched(row.id);
        }
        Ok(self.attr(&row))
    }

    /// Records a new inode, with its directory's new times; the uploader will create its
    /// object.
    async fn insert(&self, row: InodeRow) -> Result<Attr, GatewayError> {
        let row = self
            .blocking(move |c| Ok(c.insert_entry(&row, crate::clock::unix_nanos())?))
            .await?;
        self.touched(row.id);
        Ok(self.attr(&row))
    }

    /// [`Self::insert`] of a new file (with an exclusive create's verifier), with the directory
    /// as it is after, read in the same hop.
    async fn insert_in(
        &self,
        row: InodeRow,
        dir: i64,
        verf: Option<[u8; 8]>,
    ) -> Result<(Attr, Attr), GatewayError> {
        let (row, dir) = self
            .blocking(move |c| {
                let row = insert_file(c, &row, verf)?;
                Ok((row, blocking::current(c, dir)?))
            })
            .await?;
        self.touched(row.id);
        Ok((self.attr(&row), self.attr(&dir)))
    }
    /// Entries of a directory after `cookie` (0 = from the start), at most `max`.
    pub async fn readdir(
        &self,
        caller: &Caller,
        dir: FileId,
        cookie: u64,
        max: usize,
    ) -> Result<DirPage, GatewayError> {
        let limit = max.saturating_add(1);
        // The page is read in the same hop as the directory unless a refresh comes first.
        let (row, share, page) = self
            .blocking(move |c| {
                let (row, share) = blocking::node(c, dir)?;
                let page =
                    if row.kind == InodeKind::Dir && (cookie != 0 || !refresh_due(&share, &row)) {
                        Some(c.dir_entries(row.id, cookie, limit)?)
                    } else {
                        None
                    };
                Ok((row, share, page))
            })
            .await?;
        let who = self.effective(&share, caller)?;
        if row.kind != InodeKind::Dir {
            return Err(GatewayError::NotDirectory(row.path));
        }
        if !permits(&who, &row, 4) {
            return Err(GatewayError::PermissionDenied(format!("read {}", row.path)));
        }
        let (row, mut children) = match page {
            Some(page) => (row, page),
            None => {
                let row = self.maybe_refresh(&share, &row).await?;
                let id = row.id;
                let page = self
                    .blocking(move |c| Ok(c.dir_entries(id, cookie, limit)?))
                    .await?;
                (row, page)
            }
        };
        let eof = children.len() <= max;
        children.truncate(max);
        Ok(DirPage {
            dir: self.attr(&row),
            entries: children
                .iter()
                .map(|(cookie, c)| DirEntry {
                    name: c.name.clone(),
                    attr: self.attr(c),
                    cookie: *cookie,
                })
                .collect(),
            eof,
        })
    }

    /// ACCESS: which of read (4), write (2), execute/search (1) the caller has.
    pub async fn access(&self, caller: &Caller, id: FileId) -> Result<(Attr, u32), GatewayError> {
        let (row, share) = self.node(id).await?;
        let who = self.effective(&share, caller)?;
        Ok((self.attr(&row), rwx(&who, &share, &row)))
    }
}

/// A directory `who` may change in `share`: the caller as the share sees it. Pure, for the
/// blocking steps of create-like operations.
/// Whether `row` is a directory whose entries in the catalog can be used as they are (no
/// refresh from the bucket is due): then [`Files::dir_entry`] reads the entry it is asked for.
fn entries_current(share: &ShareRow, row: &InodeRow) -> bool {
    row.kind == InodeKind::Dir && !refresh_due(share, row)
}

fn writable_dir(share: &ShareRow, caller: &Caller, row: &InodeRow) -> Result<Caller, GatewayError> {
    let who = effective(share, caller)?;
    if share.read_only {
        return Err(GatewayError::ReadOnly(format!("share {}", share.name)));
    }
    if row.kind != InodeKind::Dir {
        return Err(GatewayError::NotDirectory(row.path.clone()));
    }
    if !permits(&who, row, 3) {
        return Err(GatewayError::PermissionDenied(format!(
            "write {}",
            row.path
        )));
    }
    Ok(who)
}

/// The row of a new inode in `slot`, owned by the caller.
fn new_inode(slot: &Slot, kind: InodeKind, mode: u32) -> Result<InodeRow, GatewayError> {
    let path = path::join(&slot.dir.path, &slot.name);
    path::key(&slot.share.bucket_prefix, &path)?;
    Ok(InodeRow::new(
        slot.share.id,
        Some(slot.dir.id),
        &path,
        kind,
        (mode & 0o7777, slot.who.uid, slot.who.gid),
        crate::clock::unix_nanos(),
    ))
}

/// The row of a new regular file in `slot`: `mode` given, or the share's default.
fn file_row(slot: &Slot, mode: Option<u32>) -> Result<InodeRow, GatewayError> {
    new_inode(
        slot,
        InodeKind::File,
        mode.unwrap_or(slot.share.default_file_mode),
    )
}

/// Records a new file in its directory; an exclusive create's verifier goes into a table of
/// its own in the same transaction, never into the file's times (which a client reads, and a
/// Linux NFSv4.1 client does not set after the create unless told a time holds the verifier).
fn insert_file(
    catalog: &Catalog,
    row: &InodeRow,
    verf: Option<[u8; 8]>,
) -> Result<InodeRow, GatewayError> {
    Ok(catalog.insert_entry_with(row, crate::clock::unix_nanos(), verf)?)
}

/// What a SETATTR's blocking step found.
enum SetStep {
    /// Checked, and applied if it changed anything: the row after, its share, and whether it
    /// changed.
    Done(InodeRow, ShareRow, bool),
    /// The size changes: truncate first (outside the hop), then apply the rest.
    Truncate(InodeRow, u64),
}

/// What [`Files::make_file`] did.
enum Made {
    /// The file is new.
    New {
        slot: Slot,
        /// The new file and the directory after.
        made: Box<(InodeRow, InodeRow)>,
    },
    /// Nothing was made: the name's slot, as [`Files::slot`] gives it.
    Slot(Slot),
}

/// The read (4), write (2) and execute (1) bits `who` has on `row` in `share` (no write in a
/// read-only share).
fn rwx(who: &Caller, share: &ShareRow, row: &InodeRow) -> u32 {
    let mut granted = 0;
    for bit in [4, 2, 1] {
        if permits(who, row, bit) {
            granted |= bit;
        }
    }
    if share.read_only {
        granted &= !2;
    }
    granted
}

/// Whether `who` may make the change `set` to `row` (`PermissionDenied`, `ReadOnly` or
/// `IsDirectory` if not), and whether it changes anything: what clients send after CREATE
/// (mode, size 0 for O_TRUNC) records nothing and schedules no upload.
fn check_setattr(
    who: &Caller,
    share: &ShareRow,
    row: &InodeRow,
    set: &SetAttr,
) -> Result<bool, GatewayError> {
    if share.read_only {
        return Err(GatewayError::ReadOnly(format!("share {}", share.name)));
    }
    let owner = who.uid == 0 || who.uid == row.uid;
    let client_time = |t: Option<SetTime>| matches!(t, Some(SetTime::Client(_)));
    if (set.mode.is_some() || client_time(set.mtime) || client_time(set.atime)) && !owner {
        return Err(GatewayError::PermissionDenied(format!(
            "not owner of {}",
            row.path
        )));
    }
    if set.uid.is_some_and(|u| u != row.uid) && who.uid != 0 {
        return Err(GatewayError::PermissionDenied(format!(
            "chown {}",
            row.path
        )));
    }
    if let Some(g) = set.gid
        && g != row.gid
        && who.uid != 0
        && !(owner && (who.gid == g || who.groups.contains(&g)))
    {
        return Err(GatewayError::PermissionDenied(format!(
            "chgrp {}",
            row.path
        )));
    }
    if (set.size.is_some()
        || set.mtime == Some(SetTime::ServerNow)
        || set.atime == Some(SetTime::ServerNow))
        && !owner
        && !permits(who, row, 2)
    {
        return Err(GatewayError::PermissionDenied(format!(
            "write {}",
            row.path
        )));
    }
    if set.size.is_some() && row.kind == InodeKind::Dir {
        return Err(GatewayError::IsDirectory(row.path.clone()));
    }
    let unchanged = set
        .size
        .is_none_or(|s| s == row.size && row.kind == InodeKind::File)
        && set.mode.is_none_or(|m| m & 0o7777 == row.mode & 0o7777)
        && set.uid.is_none_or(|u| u == row.uid)
        && set.gid.is_none_or(|g| g == row.gid)
        && same_time(set.mtime, row.mtime_ns)
        && same_time(set.atime, row.atime_ns);
    Ok(!unchanged)
}

/// Whether a SETATTR's time leaves the stored one as it is: not asked for, or the client's own
/// time equal to it (tar and rsync set times a file may already have). The server's clock
/// always moves it.
fn same_time(set: Option<SetTime>, stored_ns: i64) -> bool {
    match set {
        None => true,
        Some(SetTime::Client(t)) => t == stored_ns,
        Some(SetTime::ServerNow) => false,
    }
}

/// Applies a SETATTR's changes to `row` (already checked): the ctime becomes now, and
/// anything but the atime alone makes the inode dirty (the atime is kept locally only, so
/// `touch -a` uploads nothing).
fn apply_setattr(row: &mut InodeRow, set: SetAttr) {
    let now = crate::clock::unix_nanos();
    if let Some(m) = set.mode {
        row.mode = m & 0o7777;
    }
    if let Some(u) = set.uid {
        row.uid = u;
    }
    if let Some(g) = set.gid {
        row.gid = g;
    }
    match set.mtime {
        Some(SetTime::ServerNow) => row.mtime_ns = now,
        Some(SetTime::Client(t)) => row.mtime_ns = t,
        None => {}
    }
    match set.atime {
        Some(SetTime::ServerNow) => row.atime_ns = now,
        Some(SetTime::Client(t)) => row.atime_ns = t,
        None => {}
    }
    row.ctime_ns = now;
    let atime_only = set
        == SetAttr {
            atime: set.atime,
            ..SetAttr::default()
        };
    if !atime_only {
        row.version += 1;
    }
}
