//! The FUSE front end (crate `fuser`): mounts one share locally with the same semantics as NFS,
//! by calling `gateway::files` with the requesting process's uid and gid.
//!
//! FUSE inode numbers are file ids shifted by one, with the share's root as FUSE's inode 1.
//! `flush` (every close) and `fsync` are the COMMIT of this front end: they return once the
//! file's data is on local disk. fuser calls us on its own threads; each call blocks on the
//! daemon's tokio runtime. Must not import another front end or anything below `gateway`.
//!
//! POSIX locks (`fcntl`) and `flock` go to the gateway's lock table, where NFSv4.1 clients'
//! locks are: a lock taken here conflicts with one taken over NFS and the other way round. A
//! blocking request (F_SETLKW, `flock` without LOCK_NB) is answered from a task that retries
//! until the lock is free, so fuser's thread is never held.

pub mod errno;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::gateway::GatewayError;
use crate::gateway::files::locks::{self, LockKind, Refused};
use crate::gateway::files::{
    Attr, Caller, CreateMode, FileId, FileKind, Files, SetAttr, SetTime, Stability, meta,
};

/// How long the kernel may cache attributes and names: short, since NFS clients and the
/// bucket can change the same share.
const TTL: Duration = Duration::from_secs(1);
/// Linux's O_EXCL (fcntl.h), for exclusive create.
const O_EXCL: i32 = 0o200;
const READDIR_PAGE: usize = 256;
/// fcntl.h's lock types (Linux).
const F_RDLCK: i32 = 0;
const F_WRLCK: i32 = 1;
const F_UNLCK: i32 = 2;
/// The kernel's "to the end of the file" (OFFSET_MAX).
const OFFSET_MAX: u64 = i64::MAX as u64;
/// How often a blocking lock request looks again.
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// A mounted share; dropping it unmounts.
pub struct Mount {
    _session: fuser::BackgroundSession,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mount")
    }
}

/// Mounts share `name` at `dir` until the returned `Mount` is dropped.
pub async fn mount(
    files: Arc<Files>,
    rt: tokio::runtime::Handle,
    name: &str,
    dir: &Path,
) -> Result<Mount, GatewayError> {
    let export = files
        .export(&Caller::root_local(), &format!("/{name}"))
        .await?;
    let fs = ShareFs {
        files,
        rt,
        root: export.root,
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("tidegate:{name}")),
        MountOption::Subtype("tidegate".to_owned()),
    ];
    // Other local users reach the share too; the gateway checks their permissions.
    config.acl = SessionACL::All;
    let session = fuser::spawn_mount(fs, dir, &config).map_err(|e| {
        GatewayError::Internal(format!("mounting share {name} at {}: {e}", dir.display()).into())
    })?;
    Ok(Mount { _session: session })
}

struct ShareFs {
    files: Arc<Files>,
    rt: tokio::runtime::Handle,
    root: FileId,
}

fn time(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::ServerNow,
        TimeOrNow::SpecificTime(s) => SetTime::Client(nanos(s)),
    })
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::CharDev => FileType::CharDevice,
    }
}

/// The special file a mknod mode's type bits ask for; `Ok(None)` for a regular file.
fn mknod_kind(mode: u32) -> Result<Option<FileKind>, Errno> {
    match mode & meta::S_IFMT {
        0 | meta::S_IFREG => Ok(None),
        meta::S_IFIFO => Ok(Some(FileKind::Fifo)),
        meta::S_IFSOCK => Ok(Some(FileKind::Socket)),
        meta::S_IFBLK => Ok(Some(FileKind::BlockDev)),
        meta::S_IFCHR => Ok(Some(FileKind::CharDev)),
        _ => Err(Errno::EINVAL),
    }
}

/// The mode a create-like call asks for, after the process's umask.
fn requested_mode(mode: u32, umask: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode & !umask & 0o7777),
        ..SetAttr::default()
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        groups: Vec::new(),
        addr: None,
    }
}

/// A local lock owner: namespace 0 in the lock table (NFSv4 client ids are never 0).
fn lock_owner(owner: LockOwner) -> locks::LockOwner {
    locks::LockOwner {
        client: 0,
        owner: owner.0.to_be_bytes().to_vec(),
    }
}

/// The kernel's inclusive `end` as the table's exclusive one.
fn lock_end(end: u64) -> u64 {
    if end >= OFFSET_MAX { u64::MAX } else { end + 1 }
}

fn name_bytes(name: &OsStr) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes()
}

impl ShareFs {
    fn id(&self, ino: INodeNo) -> FileId {
        if ino == INodeNo::ROOT {
            self.root
        } else {
            FileId(ino.0.saturating_sub(1))
        }
    }

    fn ino(&self, id: FileId) -> INodeNo {
        if id == self.root {
            INodeNo::ROOT
        } else {
            INodeNo(id.0 + 1)
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: self.ino(a.id),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: time(a.atime_ns),
            mtime: time(a.mtime_ns),
            ctime: time(a.ctime_ns),
            crtime: time(a.ctime_ns),
            kind: kind(a.kind),
            perm: u16::try_from(a.mode & 0o7777).unwrap_or(0),
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            // The kernel's 32-bit device encoding is the low half of Linux's dev_t.
            rdev: u32::try_from(meta::makedev(a.rdev)).unwrap_or(0),
            blksize: 4096,
            flags: 0,
        }
    }

    fn run<T>(&self, f: impl Future<Output = Result<T, GatewayError>>) -> Result<T, Errno> {
        self.rt.block_on(f).map_err(|e| errno::errno(&e))
    }

    fn entry(&self, r: Result<Attr, Errno>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// flush (every close) and fsync: the file's data is on local disk when this replies.
    fn commit(&self, req: &Request, ino: INodeNo, reply: ReplyEmpty) {
        let r = self.run(self.files.commit(&caller(req), self.id(ino)));
        Self::empty(r.map(|_| ()), reply);
    }

    fn empty(r: Result<(), Errno>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl fuser::Filesystem for ShareFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Without these the kernel keeps locks to itself, unseen by NFS clients. A kernel that
        // lacks them still mounts, with local-only locks.
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
        {
            tracing::warn!(?missing, "FUSE lock capabilities not offered by the kernel");
        }
        Ok(())
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let kind = if typ == F_RDLCK {
            LockKind::Read
        } else {
            LockKind::Write
        };
        let held =
            self.files
                .locks()
                .test(self.id(ino), &lock_owner(owner), kind, start, lock_end(end));
        match held {
            Some(l) => reply.locked(
                l.start,
                l.end.saturating_sub(1).min(OFFSET_MAX),
                match l.kind {
                    LockKind::Read => F_RDLCK,
                    LockKind::Write => F_WRLCK,
                },
                // The holder may be a remote client: no local pid to name.
                0,
            ),
            None => reply.locked(start, end, F_UNLCK, pid),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let file = self.id(ino);
        let who = lock_owner(owner);
        let end = lock_end(end);
        let kind = match typ {
            F_UNLCK => {
                self.files.locks().unlock(file, &who, start, end);
                return reply.ok();
            }
            F_RDLCK => LockKind::Read,
            _ => LockKind::Write,
        };
        let files = self.files.clone();
        let take = move || files.locks().lock(file, &who, kind, start, end, false);
        match take() {
            Ok(()) => reply.ok(),
            Err(Refused::Conflict(_) | Refused::Grace) if sleep => {
                self.rt.spawn(async move {
                    loop {
                        tokio::time::sleep(LOCK_RETRY).await;
                        match take() {
                            Ok(()) => return reply.ok(),
                            Err(Refused::Conflict(_) | Refused::Grace) => {}
                            Err(Refused::ShareDenied) => return reply.error(Errno::EACCES),
                        }
                    }
                });
            }
            Err(Refused::Conflict(_) | Refused::Grace) => reply.error(Errno::EAGAIN),
            Err(Refused::ShareDenied) => reply.error(Errno::EACCES),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of a file with a `flock` lock on it releases that lock.
        if let Some(owner) = owner {
            self.files
                .locks()
                .release_file(self.id(ino), &lock_owner(owner));
        }
        reply.ok();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.run(
            self.files
                .lookup(&caller(req), self.id(parent), name_bytes(name)),
        );
        self.entry(r, reply);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run(self.files.getattr(&caller(req), self.id(ino))) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        match self.run(self.files.setattr(&caller(req), self.id(ino), set)) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run(self.files.readlink(&caller(req), self.id(ino))) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let attrs = requested_mode(mode, umask);
        let r = self.run(
            self.files
                .mkdir(&caller(req), self.id(parent), name_bytes(name), attrs),
        );
        self.entry(r, reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let attrs = requested_mode(mode, umask);
        let (who, dir, name) = (caller(req), self.id(parent), name_bytes(name));
        let r = match mknod_kind(mode) {
            Ok(Some(kind)) => self.run(self.files.mknod(
                &who,
                dir,
                name,
                kind,
                attrs,
                meta::major_minor(u64::from(rdev)),
            )),
            Ok(None) => self.run(
                self.files
                    .create(&who, dir, name, CreateMode::Guarded, attrs),
            ),
            Err(e) => Err(e),
        };
        self.entry(r, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run(
            self.files
                .remove(&caller(req), self.id(parent), name_bytes(name)),
        );
        Self::empty(r, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run(
            self.files
                .rmdir(&caller(req), self.id(parent), name_bytes(name)),
        );
        Self::empty(r, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.run(self.files.symlink(
            &caller(req),
            self.id(parent),
            name_bytes(link_name),
            name_bytes(target.as_os_str()),
        ));
        self.entry(r, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_NOREPLACE / RENAME_EXCHANGE would need an atomic check we do not offer.
            reply.error(Errno::EINVAL);
            return;
        }
        let r = self.run(self.files.rename(
            &caller(req),
            self.id(parent),
            name_bytes(name),
            self.id(newparent),
            name_bytes(newname),
        ));
        Self::empty(r, reply);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.run(self.files.link(
            &caller(req),
            self.id(ino),
            self.id(newparent),
            name_bytes(newname),
        ));
        self.entry(r, reply);
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.run(self.files.read(&caller(req), self.id(ino), offset, size)) {
            Ok((data, _, _)) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.run(self.files.write(
            &caller(req),
            self.id(ino),
            offset,
            data,
            Stability::Unstable,
        ));
        match r {
            Ok(_) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // POSIX: closing any descriptor of a file drops the process's locks on it.
        self.files
            .locks()
            .release_file(self.id(ino), &lock_owner(owner));
        self.commit(req, ino, reply);
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.commit(req, ino, reply);
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Offsets are the gateway's READDIR cookies; "." and ".." are left to the kernel.
        let page = self.run(
            self.files
                .readdir(&caller(req), self.id(ino), offset, READDIR_PAGE),
        );
        match page {
            Ok(page) => {
                for e in &page.entries {
                    if reply.add(self.ino(e.attr.id), e.cookie, kind(e.attr.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A bucket has no fixed size: the same 1 PiB and 2^32 files NFS's FSSTAT reports.
        let blocks = (1u64 << 50) / 4096;
        reply.statfs(blocks, blocks, blocks, 1 << 32, 1 << 32, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let how = if flags & O_EXCL != 0 {
            CreateMode::Guarded
        } else {
            CreateMode::Unchecked
        };
        let attrs = requested_mode(mode, umask);
        let r = self.run(self.files.create(
            &caller(req),
            self.id(parent),
            name_bytes(name),
            how,
            attrs,
        ));
        match r {
            Ok(a) => reply.created(
                &TTL,
                &self.attr(&a),
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}
