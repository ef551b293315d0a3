//! The file gateway (docs/design.md §5): shares whose files are 1:1 with objects under a bucket
//! prefix.
//!
//! Front ends (NFS, FUSE) call [`Files`] with the caller's identity; nothing here knows which
//! protocol called. The catalog's inode table is the namespace clients see (stable 64-bit file
//! ids, kept across restarts); the bucket is merged in by directory refreshes (`refresh.rs`)
//! and local changes go out through the uploader (`upload.rs`). File data is staged in one local
//! file per inode (`data.rs`, docs/decisions/0005): a COMMIT fsyncs it, and that is the
//! durability point. Invariants: a local change not yet in the bucket is never overwritten by a
//! refresh; a file id never names a different file (ids are not reused).

mod blocking;
mod blocks;
mod clean;
pub mod data;
mod early;
mod links;
mod local;
pub mod locks;
pub mod meta;
pub mod ops;
pub mod path;
pub mod refresh;
mod spares;
pub mod staging;
pub mod traffic;
pub mod upload;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::Catalog;
use crate::catalog::group::GroupSync;
use crate::catalog::shares::{InodeKind, InodeRow, ShareRow, ShareSyncStats, Squash};
use crate::gateway::GatewayError;
use crate::store::Bucket;

/// The uid/gid a squashed caller becomes (the traditional `nobody`).
pub const ANONYMOUS_ID: u32 = 65_534;
/// The most names a file may have, as PATHCONF and NFSv4's `maxlink` report it: the catalog
/// sets no limit of its own short of the 32-bit count every protocol carries.
pub const MAX_LINKS: u32 = u32::MAX;
/// How long after its last change (and COMMIT) a file waits before it is uploaded.
pub const DEFAULT_UPLOAD_DELAY: Duration = Duration::from_secs(2);
/// How stale a directory listing may get before the bucket is listed again.
pub const DEFAULT_REFRESH_SECS: u64 = 300;

/// A file id as clients see it: the catalog's inode id, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u64);

/// A file id that names no inode (removed, or never handed out): NFS3ERR_STALE and its kin.
pub(crate) fn stale(id: impl std::fmt::Display) -> GatewayError {
    GatewayError::Stale(format!("file id {id}"))
}

impl FileId {
    fn row_id(self) -> Result<i64, GatewayError> {
        i64::try_from(self.0).map_err(|_| stale(self.0))
    }

    fn of(row: &InodeRow) -> Self {
        Self(u64::try_from(row.id).unwrap_or(0))
    }
}

/// A share's catalog id; it is the file system id (fsid) clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShareId(pub i64);

/// Who is calling, as the front end learned it (AUTH_UNIX, a FUSE request's uid/gid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The client's address; `None` for local callers (FUSE), which allow-lists do not apply to.
    pub addr: Option<IpAddr>,
}

impl Caller {
    pub fn root_local() -> Self {
        Self {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            addr: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Special files: zero-byte objects with their type (and a device's numbers) in the
    /// object's metadata; they hold no data of their own.
    Fifo,
    Socket,
    BlockDev,
    CharDev,
}

/// A file's attributes as every front end reports them. Times are nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub id: FileId,
    pub share: ShareId,
    pub kind: FileKind,
    /// Permission bits only (the low 12 bits of st_mode).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// A block or character device's (major, minor); (0, 0) for every other kind.
    pub rdev: (u32, u32),
    pub atime_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    ServerNow,
    /// Nanoseconds since the epoch.
    Client(i64),
}

/// Attribute changes requested by SETATTR, CREATE, MKDIR (each `None` leaves it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    Unchecked,
    Guarded,
    /// Exclusive create with the client's verifier (RFC 1813 §3.3.8): a retransmission with the
    /// same verifier succeeds, anything else finds the file existing.
    Exclusive([u8; 8]),
}

/// How durable a WRITE must be before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stability {
    Unstable,
    DataSync,
    FileSync,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
    /// Where READDIR resumes after this entry; stable while the entry exists (a file's hard
    /// links share one file id, so the id alone cannot serve).
    pub cookie: u64,
}

/// What a MOUNT of an export path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub share: ShareId,
    pub name: String,
    pub root: FileId,
}

/// A client allow-list entry: an address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, GatewayError> {
        let bad = || GatewayError::InvalidArgument(format!("{s:?} is not an address or CIDR"));
        let (a, bits) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = if bits.is_empty() {
            max
        } else {
            bits.parse::<u8>().map_err(|_| bad())?
        };
        if bits > max {
            return Err(bad());
        }
        Ok(Self { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What `share create` asks for.
#[derive(Debug, Clone)]
pub struct ShareSpec {
    pub name: String,
    pub bucket_prefix: Option<String>,
    pub read_only: bool,
    pub squash: Squash,
    pub allowed_clients: Vec<Cidr>,
    pub default_uid: u32,
    pub default_gid: u32,
    pub default_file_mode: u32,
    pub default_dir_mode: u32,
    pub refresh: Duration,
}

impl ShareSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            bucket_prefix: None,
            read_only: false,
            squash: Squash::Root,
            allowed_clients: Vec::new(),
            default_uid: 0,
            default_gid: 0,
            default_file_mode: 0o644,
            default_dir_mode: 0o755,
            refresh: Duration::from_secs(DEFAULT_REFRESH_SECS),
        }
    }
}

/// Share names become export paths (`/NAME`) and bucket prefixes.
pub fn validate_share_name(name: &str) -> Result<(), GatewayError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(GatewayError::InvalidArgument(format!(
            "share name {name:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.', \
             not starting with '.'"
        )))
    }
}

/// Creates a share (and its root directory) in the catalog; a running daemon exports it at once.
pub fn create_share(catalog: &Catalog, spec: &ShareSpec) -> Result<ShareRow, GatewayError> {
    validate_share_name(&spec.name)?;
    let prefix = path::bucket_prefix(&spec.name, spec.bucket_prefix.as_deref())?;
    for (mode, what) in [
        (spec.default_file_mode, "file"),
        (spec.default_dir_mode, "directory"),
    ] {
        if mode > 0o7777 || mode == 0 {
            return Err(GatewayError::InvalidArgument(format!(
                "default {what} mode {mode:o}: give 1 to 7777 (octal)"
            )));
        }
    }
    let existing = catalog.shares()?;
    if existing.iter().any(|s| s.name == spec.name) {
        return Err(GatewayError::AlreadyExists(format!("share {}", spec.name)));
    }
    if let Some(other) = existing.iter().find(|s| {
        s.bucket_prefix.starts_with(&prefix) || prefix.starts_with(s.bucket_prefix.as_str())
    }) {
        return Err(GatewayError::AlreadyExists(format!(
            "bucket prefix {prefix} overlaps share {}'s {}",
            other.name, other.bucket_prefix
        )));
    }
    let now = crate::clock::unix_nanos();
    let row = ShareRow {
        id: 0,
        name: spec.name.clone(),
        bucket_prefix: prefix,
        read_only: spec.read_only,
        squash: spec.squash,
        allowed_clients: spec
            .allowed_clients
            .iter()
            .map(|c| format!("{}/{}", c.addr, c.bits))
            .collect::<Vec<_>>()
            .join(","),
        default_uid: spec.default_uid,
        default_gid: spec.default_gid,
        default_file_mode: spec.default_file_mode,
        default_dir_mode: spec.default_dir_mode,
        refresh_secs: spec.refresh.as_secs(),
        created_unix: now / 1_000_000_000,
        last_upload_unix: None,
    };
    let mut root = InodeRow::new(
        0,
        None,
        "",
        InodeKind::Dir,
        (spec.default_dir_mode, spec.default_uid, spec.default_gid),
        now,
    );
    // The root has no object of its own: nothing to upload.
    root.synced_version = root.version;
    Ok(catalog.create_share(&row, &root)?)
}

pub fn list_shares(catalog: &Catalog) -> Result<Vec<ShareRow>, GatewayError> {
    Ok(catalog.shares()?)
}

/// Removes a share from the catalog. Its objects stay in the bucket; uploads not yet done are
/// lost, so a share with dirty files is refused unless `force` is set.
pub fn delete_share(catalog: &Catalog, name: &str, force: bool) -> Result<(), GatewayError> {
    let share = catalog
        .share_by_name(name)?
        .ok_or_else(|| GatewayError::NotFound(format!("share {name}")))?;
    let stats = catalog.share_sync_stats(share.id)?;
    if !force && stats.dirty_files > 0 {
        return Err(GatewayError::Busy(format!(
            "share {name} has {} files not yet uploaded; wait for `share status` to show none, \
             or pass --force",
            stats.dirty_files
        )));
    }
    catalog.delete_share(name)?;
    Ok(())
}

/// Marks a share's directories (all, or those at and below `path`) stale, so the next access
/// lists the bucket again. Returns how many directories were marked.
pub fn request_refresh(catalog: &Catalog, name: &str, path: &str) -> Result<u64, GatewayError> {
    let share = catalog
        .share_by_name(name)?
        .ok_or_else(|| GatewayError::NotFound(format!("share {name}")))?;
    Ok(catalog.invalidate_refresh(share.id, path.trim_matches('/'))?)
}

pub fn share_status(
    catalog: &Catalog,
    name: &str,
) -> Result<(ShareRow, ShareSyncStats), GatewayError> {
    let share = catalog
        .share_by_name(name)?
        .ok_or_else(|| GatewayError::NotFound(format!("share {name}")))?;
    let stats = catalog.share_sync_stats(share.id)?;
    Ok((share, stats))
}

#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// One staging file per inode being written lives here.
    pub staging_dir: PathBuf,
    pub upload_delay: Duration,
    /// The most staging files may take on disk (the daemon gives `cache.size`); `None`: no
    /// bound.
    pub staging_limit: Option<u64>,
    /// COMMIT and stable WRITEs return only once the file is in the bucket, not when its
    /// staging file is synced: for staging that is not durable itself (the device's, in memory;
    /// docs/decisions/0009-device-nfs.md).
    pub commit_uploads: bool,
}

/// Per-inode state that lives only in memory.
#[derive(Debug, Default)]
struct Live {
    /// Inodes with UNSTABLE writes not yet covered by a COMMIT: not uploaded until committed.
    uncommitted: HashSet<i64>,
    /// Inodes whose staging file was created since the staging directory was last synced.
    new_entries: HashSet<i64>,
    /// Bytes each inode's staging files take on disk, and their sum (`staging.rs`).
    staged_sizes: HashMap<i64, u64>,
    staged_bytes: u64,
    /// Writers held until uploads free staging room.
    writers_waiting: u64,
    /// When each inode last changed, for the upload delay.
    changed: HashMap<i64, Instant>,
    /// Serialises data changes and staging transitions of one inode.
    locks: HashMap<i64, Arc<tokio::sync::Mutex<()>>>,
    /// Serialises bucket writes to one key (uploads, copies, markers).
    key_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Sizes of `changed` and `locks` at which the next insert prunes them (`prune_live`).
    changed_prune_at: usize,
    locks_prune_at: usize,
}

/// The fewest entries `Live::changed` or `Live::locks` prune at. Each prune drops what no
/// longer matters and sets the next bound at twice what is left, so the maps stay in proportion
/// to the files being written or locked, not to every file ever written (issue 21), at an
/// amortised O(1) per insert.
const LIVE_PRUNE_MIN: usize = 4096;

/// The next size at which a map left with `len` entries is pruned.
fn next_prune(len: usize) -> usize {
    len.saturating_mul(2).max(LIVE_PRUNE_MIN)
}

/// The file gateway over one bucket: every share in the catalog.
#[derive(Debug)]
pub struct Files {
    catalog: Arc<Catalog>,
    bucket: Arc<Bucket>,
    config: FilesConfig,
    /// WRITE/COMMIT verifier: new at every start, so clients resend what was not committed.
    verifier: [u8; 8],
    handle_generation: u64,
    live: Mutex<Live>,
    early: Mutex<early::EarlyFiles>,
    readahead: Mutex<HashMap<i64, data::Window>>,
    /// Staging files kept after their upload (`clean.rs`); `None`: none are kept.
    clean: Option<Arc<clean::CleanCopies>>,
    /// Empty files new staging files are made from (`spares.rs`); `None` where staging is
    /// in memory (device mode), where creating a file costs no inode scan.
    spares: Option<Arc<spares::Spares>>,
    wake: tokio::sync::Notify,
    /// Signalled when staging room is freed.
    space: tokio::sync::Notify,
    counters: upload::UploadCounters,
    traffic: Mutex<HashMap<i64, Arc<traffic::ShareTraffic>>>,
    lock_table: locks::LockTable,
    /// Group commit of the staging directory: concurrent COMMITs of new files share one
    /// directory fsync (staging.rs).
    dir_sync: Arc<GroupSync>,
}

impl Files {
    pub fn new(
        catalog: Arc<Catalog>,
        bucket: Arc<Bucket>,
        config: FilesConfig,
    ) -> Result<Self, GatewayError> {
        std::fs::create_dir_all(&config.staging_dir).map_err(|e| {
            GatewayError::Internal(format!("creating {}: {e}", config.staging_dir.display()).into())
        })?;
        // The start time in nanoseconds differs between any two runs of the daemon.
        let verifier = crate::clock::unix_nanos().to_be_bytes();
        let key = crate::catalog::settings::keys::FILES_HANDLE_GENERATION;
        let handle_generation = match catalog.setting(key)?.and_then(|v| v.parse().ok()) {
            Some(g) => g,
            None => {
                let g = u64::try_from(crate::clock::unix_nanos()).unwrap_or(1);
                catalog.set_settings(&[(key, &g.to_string())])?;
                g
            }
        };
        // Small files journaled in the catalog get their staging files back first (a power
        // loss may have taken the unsynced files or their names).
        let restored = local::replay_journal(&catalog, &config.staging_dir)?;
        if restored > 0 {
            tracing::info!(
                files = restored,
                "small files' staging rewritten from the catalog's journal"
            );
        }
        let staged_sizes = sweep_staging(&catalog, &config.staging_dir)?;
        // Clean copies need a budget to live in, and staging that survives a crash to come
        // from (clean.rs).
        let clean = match config.staging_limit {
            Some(_) if !config.commit_uploads => {
                Some(Arc::new(clean::CleanCopies::open(&config.staging_dir)?))
            }
            _ => None,
        };
        let spares = (!config.commit_uploads).then(|| spares::Spares::open(&config.staging_dir));
        let live = Live {
            staged_bytes: staged_sizes.values().sum(),
            staged_sizes,
            ..Live::default()
        };
        Ok(Self {
            catalog,
            bucket,
            config,
            verifier,
            handle_generation,
            live: Mutex::new(live),
            early: Mutex::new(early::EarlyFiles::default()),
            readahead: Mutex::new(HashMap::new()),
            clean,
            spares,
            wake: tokio::sync::Notify::new(),
            space: tokio::sync::Notify::new(),
            counters: upload::UploadCounters::default(),
            traffic: Mutex::new(HashMap::new()),
            lock_table: locks::LockTable::new(),
            dir_sync: Arc::default(),
        })
    }

    /// The generation file handles carry: created once per catalog and kept there, so handles
    /// survive restarts (nfsserve's default, the start time, would make every handle stale).
    pub fn handle_generation(&self) -> u64 {
        self.handle_generation
    }

    /// Byte-range locks and share reservations, shared by every front end.
    pub fn locks(&self) -> &locks::LockTable {
        &self.lock_table
    }

    /// The clients that may reclaim locks after a restart (stable-storage client records,
    /// RFC 8881 §8.4.3): recorded when a client first gets state, dropped when it goes.
    pub async fn lock_clients(&self) -> Result<Vec<Vec<u8>>, GatewayError> {
        let key = crate::catalog::settings::keys::FILES_LOCK_CLIENTS;
        let value = self
            .blocking(move |c| Ok(c.setting(key)?))
            .await?
            .unwrap_or_default();
        Ok(value
            .split(',')
            .filter(|h| !h.is_empty())
            .filter_map(crate::store::keys::unhex)
            .collect())
    }

    /// Replaces the recorded lock clients.
    pub async fn set_lock_clients(&self, clients: &[Vec<u8>]) -> Result<(), GatewayError> {
        let key = crate::catalog::settings::keys::FILES_LOCK_CLIENTS;
        let value: Vec<String> = clients.iter().map(|c| crate::store::keys::hex(c)).collect();
        let value = value.join(",");
        self.blocking(move |c| Ok(c.set_settings(&[(key, &value)])?))
            .await
    }

    /// The write verifier of this run (RFC 1813 §3.3.7): it changes whenever the gateway
    /// restarts, which is exactly when uncommitted writes may have been lost.
    pub fn write_verifier(&self) -> [u8; 8] {
        self.verifier
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // The maps stay consistent under a panic: each update is a single insert or remove.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inode_lock(&self, id: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut live = self.live();
        if live.locks.len() >= live.locks_prune_at {
            // A lock only the map refers to is neither held nor awaited: the next caller may
            // as well get a new one.
            live.locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            live.locks_prune_at = next_prune(live.locks.len());
        }
        live.locks.entry(id).or_default().clone()
    }

    /// Records a change for the upload delay. The uploader is not woken: nothing is due before
    /// the delay has passed, and it sleeps until the first inode is.
    fn touched(&self, id: i64) {
        let mut live = self.live();
        if live.changed.len() >= live.changed_prune_at {
            // A change older than this is treated as no record at all (`upload_round`,
            // `early_start_quiet`), so forgetting it changes nothing.
            let keep = upload::change_memory(self.config.upload_delay);
            live.changed.retain(|_, at| at.elapsed() < keep);
            live.changed_prune_at = next_prune(live.changed.len());
        }
        live.changed.insert(id, Instant::now());
    }

    /// The caller as the share sees it: refused if its address is not allowed, then squashed.
    fn effective(&self, share: &ShareRow, caller: &Caller) -> Result<Caller, GatewayError> {
        let who = effective(share, caller)?;
        self.count(share.id, traffic::Counted::Call);
        Ok(who)
    }

    /// Resolves an export path (`/NAME` or `/NAME/sub/dir`) for MOUNT.
    pub async fn export(&self, caller: &Caller, export_path: &str) -> Result<Export, GatewayError> {
        let trimmed = export_path.trim_matches('/');
        let (name, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        let not_found = || GatewayError::NotFound(format!("export {export_path}"));
        let name = name.to_owned();
        let (share, root) = self
            .blocking(move |c| {
                let Some(share) = c.share_by_name(&name)? else {
                    return Ok(None);
                };
                let root = c.share_root(share.id)?;
                Ok(root.map(|root| (share, root)))
            })
            .await?
            .ok_or_else(not_found)?;
        let who = self.effective(&share, caller)?;
        let mut node = root;
        for part in rest.split('/').filter(|p| !p.is_empty()) {
            let attr = self
                .lookup_as(&who, &share, &node, part.as_bytes(), None)
                .await?;
            let id = attr.id.row_id()?;
            node = self
                .blocking(move |c| Ok(c.inode(id)?))
                .await?
                .ok_or_else(not_found)?;
            if node.kind != InodeKind::Dir {
                return Err(GatewayError::NotDirectory(export_path.to_owned()));
            }
        }
        Ok(Export {
            share: ShareId(share.id),
            name: share.name,
            root: FileId::of(&node),
        })
    }

    /// Export paths of every share, for MOUNT EXPORT.
    pub async fn exports(&self) -> Result<Vec<String>, GatewayError> {
        let shares = self.blocking(|c| Ok(c.shares()?)).await?;
        Ok(shares.into_iter().map(|s| format!("/{}", s.name)).collect())
    }

    fn attr(&self, row: &InodeRow) -> Attr {
        Attr {
            id: FileId::of(row),
            share: ShareId(row.share_id),
            kind: match row.kind {
                InodeKind::File => FileKind::File,
                InodeKind::Dir => FileKind::Dir,
                InodeKind::Symlink => FileKind::Symlink,
                InodeKind::Fifo => FileKind::Fifo,
                InodeKind::Socket => FileKind::Socket,
                InodeKind::BlockDev => FileKind::BlockDev,
                InodeKind::CharDev => FileKind::CharDev,
            },
            mode: row.mode & 0o7777,
            nlink: if row.kind == InodeKind::Dir {
                2
            } else {
                row.nlink.max(1)
            },
            uid: row.uid,
            gid: row.gid,
            size: row.size,
            mtime_ns: row.mtime_ns,
            ctime_ns: row.ctime_ns,
            rdev: row.rdev,
            atime_ns: row.atime_ns,
        }
    }
}

/// Removes staging files no staged inode owns (left by a crash during staging, or by a share
/// deleted with `--force`); `.part` downloads are always incomplete. Returns what the staging
/// files that stay take on disk, per inode.
fn sweep_staging(
    catalog: &Catalog,
    dir: &std::path::Path,
) -> Result<HashMap<i64, u64>, GatewayError> {
    let mut sizes = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(sizes);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if clean::owns(name) || name == spares::DIR {
            continue;
        }
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        let owned = match stem.parse::<i64>() {
            Ok(id) if ext != "part" && ext != "blocks-new" => {
                let owned = catalog.inode(id)?.is_some_and(|row| row.staged);
                if owned {
                    *sizes.entry(id).or_default() += staging::allocated(&path);
                }
                owned
            }
            _ => false,
        };
        if !owned {
            tracing::info!(file = %path.display(), "removing a staging file no inode owns");
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(sizes)
}

/// Whether `who` may read (4), write (2) or search/execute (1) `row`: root may do anything but
/// execute a file with no execute bit; others by owner, group, then other bits.
/// Who `caller` is in `share`: refused if not among its allowed clients, squashed as it says.
/// Pure, so that a blocking step may check permissions on the rows it reads.
pub(crate) fn effective(share: &ShareRow, caller: &Caller) -> Result<Caller, GatewayError> {
    if let Some(ip) = caller.addr
        && !share.allowed_clients.is_empty()
    {
        let allowed = share
            .allowed_clients
            .split(',')
            .filter_map(|c| Cidr::parse(c).ok())
            .any(|c| c.contains(ip));
        if !allowed {
            return Err(GatewayError::PermissionDenied(format!(
                "client {ip} is not in share {}'s allowed clients",
                share.name
            )));
        }
    }
    let squash = match share.squash {
        Squash::All => true,
        Squash::Root => caller.uid == 0,
        Squash::None => false,
    };
    Ok(if squash {
        Caller {
            uid: ANONYMOUS_ID,
            gid: ANONYMOUS_ID,
            groups: Vec::new(),
            addr: caller.addr,
        }
    } else {
        caller.clone()
    })
}

pub(crate) fn permits(who: &Caller, row: &InodeRow, want: u32) -> bool {
    let mode = row.mode;
    if who.uid == 0 {
        return want & 1 == 0 || row.kind == InodeKind::Dir || mode & 0o111 != 0;
    }
    let bits = if who.uid == row.uid {
        (mode >> 6) & 7
    } else if who.gid == row.gid || who.groups.contains(&row.gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_their_networks() {
        let cases = [
            ("127.0.0.0/8", "127.1.2.3", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("10.0.0.0/8", "::ffff:10.1.1.1", true),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("::1", "::1", true),
            ("fd00::/8", "fe80::1", false),
        ];
        for (net, ip, want) in cases {
            let cidr = Cidr::parse(net).unwrap();
            assert_eq!(cidr.contains(ip.parse().unwrap()), want, "{net} {ip}");
        }
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("host").is_err());
    }

    /// Issue 21: the per-inode maps hold the files being written or locked, not every file
    /// ever touched.
    #[test]
    fn issue_21_live_maps_forget_idle_files() {
        let (_dir, files, _root) = local_gateway();
        let held = files.inode_lock(1);
        for id in 2..100_000 {
            drop(files.inode_lock(id));
        }
        let live = files.live();
        assert!(
            live.locks.len() < 2 * LIVE_PRUNE_MIN,
            "{}",
            live.locks.len()
        );
        assert!(
            Arc::ptr_eq(&live.locks[&1], &held),
            "a held lock was dropped"
        );
        drop(live);
        // Changes inside the upload delay are all kept (the test gateway's delay is zero, so
        // only the grace of uncommitted writes counts: every change here is recent).
        for id in 0..10_000 {
            files.touched(id);
        }
        assert_eq!(files.live().changed.len(), 10_000);
        // Changes older than that are forgotten at the next prune.
        let old = Instant::now() - upload::change_memory(Duration::ZERO) - Duration::from_secs(1);
        for at in files.live().changed.values_mut() {
            *at = old;
        }
        for id in 10_000..10_000 + 2 * LIVE_PRUNE_MIN as i64 {
            files.touched(id);
        }
        assert!(files.live().changed.len() <= 2 * LIVE_PRUNE_MIN);
    }

    /// A new file `name` in `dir` holding "data", written FILE_SYNC, as it is after.
    async fn written(files: &Files, dir: FileId, name: &[u8]) -> Attr {
        let me = Caller::root_local();
        let f = files
            .create(&me, dir, name, CreateMode::Guarded, SetAttr::default())
            .await
            .unwrap();
        files
            .write(&me, f.id, 0, b"data", Stability::FileSync)
            .await
            .unwrap();
        files.getattr(&me, f.id).await.unwrap()
    }

    /// A gateway over a `file://` bucket in a temp dir, with the share `s` (no squash).
    pub(super) fn local_gateway() -> (tempfile::TempDir, Arc<Files>, FileId) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open(&dir.path().join("c.db")).unwrap());
        let cfg = crate::config::BucketConfig::local(dir.path().join("bucket"));
        let bucket = Arc::new(Bucket::open(&cfg, true).unwrap());
        let files = Files::new(
            catalog.clone(),
            bucket,
            FilesConfig {
                staging_dir: dir.path().join("staging"),
                upload_delay: Duration::ZERO,
                staging_limit: None,
                commit_uploads: false,
            },
        )
        .unwrap();
        let spec = ShareSpec {
            squash: Squash::None,
            ..ShareSpec::new("s")
        };
        create_share(&catalog, &spec).unwrap();
        let root = catalog
            .share_root(catalog.shares().unwrap()[0].id)
            .unwrap()
            .unwrap();
        (dir, Arc::new(files), FileId::of(&root))
    }

    #[tokio::test]
    async fn renames_reach_the_bucket_and_local_changes_win_over_a_refresh() {
        let (dir, files, root) = local_gateway();
        let me = Caller::root_local();
        let object = |p: &str| dir.path().join("bucket/shares/s").join(p);
        let f = files
            .create(&me, root, b"f", CreateMode::Guarded, SetAttr::default())
            .await
            .unwrap();
        files
            .write(&me, f.id, 0, b"hello", Stability::Unstable)
            .await
            .unwrap();
        assert_eq!(
            files.upload_round(false).await.unwrap().uploaded,
            0,
            "uncommitted"
        );
        files.commit(&me, f.id).await.unwrap();
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert_eq!(std::fs::read(object("f")).unwrap(), b"hello");

        let d = files
            .mkdir(&me, root, b"d", SetAttr::default())
            .await
            .unwrap();
        files.rename(&me, root, b"f", d.id, b"g").await.unwrap();
        let chmod = SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        };
        files.setattr(&me, f.id, chmod).await.unwrap();
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert!(!object("f").exists(), "old key deleted");
        assert_eq!(std::fs::read(object("d/g")).unwrap(), b"hello");
        let (data, eof, _) = files.read(&me, f.id, 0, 100).await.unwrap();
        assert_eq!(
            (&data[..], eof),
            (&b"hello"[..], true),
            "read from the bucket"
        );

        // A foreign object appears on refresh; one clashing with a local change loses.
        std::fs::write(object("foreign"), b"from elsewhere").unwrap();
        files
            .write(&me, f.id, 0, b"HELLO", Stability::FileSync)
            .await
            .unwrap();
        std::fs::write(object("d/g"), b"clobbered").unwrap();
        request_refresh(&files.catalog, "s", "").unwrap();
        let page = files.readdir(&me, root, 0, 100).await.unwrap();
        let mut names: Vec<_> = page.entries.iter().map(|e| e.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["d", "foreign"]);
        files.readdir(&me, d.id, 0, 100).await.unwrap();
        let (data, _, _) = files.read(&me, f.id, 0, 100).await.unwrap();
        assert_eq!(&data[..], b"HELLO", "local change not overwritten");
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert_eq!(std::fs::read(object("d/g")).unwrap(), b"HELLO");
    }

    #[tokio::test]
    async fn special_files_are_made_uploaded_kept_and_hold_no_data() {
        let (dir, files, root) = local_gateway();
        let me = Caller::root_local();
        let mode = |m| SetAttr {
            mode: Some(m),
            ..SetAttr::default()
        };
        let fifo = files
            .mknod(&me, root, b"p", FileKind::Fifo, mode(0o640), (9, 9))
            .await
            .unwrap();
        assert_eq!(
            (fifo.kind, fifo.mode, fifo.rdev, fifo.size),
            (FileKind::Fifo, 0o640, (0, 0), 0),
            "a FIFO keeps no device numbers"
        );
        let dev = files
            .mknod(
                &me,
                root,
                b"sda1",
                FileKind::BlockDev,
                SetAttr::default(),
                (8, 1),
            )
            .await
            .unwrap();
        assert_eq!(
            (dev.kind, dev.mode, dev.rdev),
            (FileKind::BlockDev, 0o644, (8, 1))
        );
        let again = files
            .mknod(
                &me,
                root,
                b"p",
                FileKind::Socket,
                SetAttr::default(),
                (0, 0),
            )
            .await;
        assert!(
            matches!(again, Err(GatewayError::AlreadyExists(_))),
            "{again:?}"
        );
        let regular = files
            .mknod(&me, root, b"f", FileKind::File, SetAttr::default(), (0, 0))
            .await;
        assert!(
            matches!(regular, Err(GatewayError::InvalidArgument(_))),
            "{regular:?}"
        );
        let read = files.read(&me, fifo.id, 0, 10).await;
        assert!(
            matches!(read, Err(GatewayError::InvalidArgument(_))),
            "{read:?}"
        );
        let write = files.write(&me, dev.id, 0, b"x", Stability::FileSync).await;
        assert!(
            matches!(write, Err(GatewayError::InvalidArgument(_))),
            "{write:?}"
        );

        // Anyone who may write the directory makes FIFOs and sockets; only root devices.
        let open = files.mkdir(&me, root, b"open", mode(0o777)).await.unwrap();
        let user = Caller {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
            addr: None,
        };
        let sock = files
            .mknod(
                &user,
                open.id,
                b"s",
                FileKind::Socket,
                SetAttr::default(),
                (0, 0),
            )
            .await
            .unwrap();
        assert_eq!((sock.kind, sock.uid), (FileKind::Socket, 1000));
        let denied = files
            .mknod(
                &user,
                open.id,
                b"tty",
                FileKind::CharDev,
                SetAttr::default(),
                (4, 1),
            )
            .await;
        assert!(
            matches!(denied, Err(GatewayError::PermissionDenied(_))),
            "{denied:?}"
        );

        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        let object = |p: &str| dir.path().join("bucket/shares/s").join(p);
        for p in ["p", "sda1", "open/s"] {
            assert_eq!(
                std::fs::read(object(p)).unwrap(),
                b"",
                "{p}: a zero-byte object"
            );
        }
        files
            .rename(&me, root, b"sda1", open.id, b"sdb1")
            .await
            .unwrap();
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert!(!object("sda1").exists() && object("open/sdb1").exists());

        // A restart keeps the kind and the device numbers.
        let catalog = Arc::new(Catalog::open(&dir.path().join("c.db")).unwrap());
        let cfg = crate::config::BucketConfig::local(dir.path().join("bucket"));
        let bucket = Arc::new(Bucket::open(&cfg, true).unwrap());
        let config = files.config.clone();
        drop(files);
        let files = Files::new(catalog, bucket, config).unwrap();
        let back = files.lookup(&me, open.id, b"sdb1").await.unwrap();
        assert_eq!(
            (back.id, back.kind, back.rdev),
            (dev.id, FileKind::BlockDev, (8, 1))
        );
    }

    /// POSIX times through the gateway (issue 18): each change of a directory's entries
    /// advances its mtime and ctime, a read advances atime by relatime rules, and SETATTR
    /// stores an explicit atime.
    #[tokio::test]
    async fn issue_18_directory_times_advance_and_reads_set_atime() {
        let (_dir, files, root) = local_gateway();
        let me = Caller::root_local();
        let d = files
            .mkdir(&me, root, b"d", SetAttr::default())
            .await
            .unwrap();
        let e = files
            .mkdir(&me, root, b"e", SetAttr::default())
            .await
            .unwrap();
        let times = |files: &Arc<Files>, id: FileId| {
            let files = files.clone();
            async move {
                let a = files.getattr(&Caller::root_local(), id).await.unwrap();
                (a.mtime_ns, a.ctime_ns)
            }
        };
        // Each step changes the entries of the directories listed with it.
        let mut step = 0;
        loop {
            let before = [times(&files, d.id).await, times(&files, e.id).await];
            tokio::time::sleep(Duration::from_millis(2)).await;
            let changed: &[FileId] = match step {
                0 => {
                    files
                        .create(&me, d.id, b"f", CreateMode::Guarded, SetAttr::default())
                        .await
                        .unwrap();
                    &[d.id]
                }
                1 => {
                    files
                        .mkdir(&me, d.id, b"sub", SetAttr::default())
                        .await
                        .unwrap();
                    &[d.id]
                }
                2 => {
                    files.symlink(&me, d.id, b"l", b"f").await.unwrap();
                    &[d.id]
                }
                3 => {
                    files.rename(&me, d.id, b"f", e.id, b"g").await.unwrap();
                    &[d.id, e.id]
                }
                4 => {
                    files.rename(&me, e.id, b"g", e.id, b"h").await.unwrap();
                    &[e.id]
                }
                5 => {
                    files.remove(&me, e.id, b"h").await.unwrap();
                    &[e.id]
                }
                6 => {
                    files.rmdir(&me, d.id, b"sub").await.unwrap();
                    &[d.id]
                }
                _ => break,
            };
            for (i, dir) in [d.id, e.id].into_iter().enumerate() {
                let after = times(&files, dir).await;
                if changed.contains(&dir) {
                    assert!(after.0 > before[i].0, "step {step}: mtime of {dir:?}");
                    assert!(after.1 > before[i].1, "step {step}: ctime of {dir:?}");
                } else {
                    assert_eq!(after, before[i], "step {step}: {dir:?} untouched");
                }
            }
            step += 1;
        }

        // atime: a read of a file written since its last access advances it; a second read
        // does not (relatime); SETATTR sets it as asked.
        let written = written(&files, root, b"a").await;
        let f = written.clone();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (_, _, read) = files.read(&me, f.id, 0, 4).await.unwrap();
        assert!(read.atime_ns > written.mtime_ns, "{read:?}");
        assert_eq!(
            files.getattr(&me, f.id).await.unwrap().atime_ns,
            read.atime_ns
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (_, _, again) = files.read(&me, f.id, 0, 4).await.unwrap();
        assert_eq!(again.atime_ns, read.atime_ns, "relatime: no change since");
        let set = SetAttr {
            atime: Some(SetTime::Client(1_234_567_890_123_456_789)),
            ..SetAttr::default()
        };
        let a = files.setattr(&me, f.id, set).await.unwrap();
        assert_eq!(a.atime_ns, 1_234_567_890_123_456_789);
        assert_eq!(
            files.getattr(&me, f.id).await.unwrap().atime_ns,
            1_234_567_890_123_456_789
        );
    }

    /// Issue 18: a file operation waiting on the catalog (here on another connection's write
    /// transaction, as it would on a slow fsync) must leave the runtime's thread free. On a
    /// current-thread runtime a catalog call made inline would hold the only thread, and the
    /// ticking task next to it would not run until the create returned.
    #[test]
    fn issue_18_a_busy_catalog_leaves_the_runtime_free() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        const HOLD: Duration = Duration::from_millis(600);
        let (dir, files, root) = local_gateway();
        let db = dir.path().join("c.db");
        let released = Arc::new(AtomicBool::new(false));
        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = {
            let released = released.clone();
            std::thread::spawn(move || {
                let lock = crate::catalog::WriteLockHolder::take(&db);
                locked.send(()).unwrap();
                std::thread::sleep(HOLD);
                released.store(true, Ordering::SeqCst);
                drop(lock);
            })
        };
        is_locked.recv().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ticks = rt.block_on(async move {
            let ticks = Arc::new(AtomicU64::new(0));
            let ticker = tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        ticks.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            let create = tokio::spawn(async move {
                let me = Caller::root_local();
                files
                    .create(&me, root, b"f", CreateMode::Guarded, SetAttr::default())
                    .await
            });
            create.await.unwrap().unwrap();
            // The create had to wait for the other connection's transaction.
            assert!(released.load(Ordering::SeqCst), "the catalog was not busy");
            ticker.abort();
            ticks.load(Ordering::SeqCst)
        });
        holder.join().unwrap();
        // About 60 ticks fit in the hold; inline, none would have run.
        assert!(
            ticks >= 5,
            "only {ticks} ticks while the create waited on the catalog"
        );
    }

    /// Issue 20: a SETATTR that changes nothing persistent (what a client sends after an
    /// O_TRUNC create, or times equal to the file's own) writes no catalog row and waits for
    /// no sync; one that changes a time does both, and moves the ctime.
    #[tokio::test]
    async fn issue_20_a_setattr_that_changes_nothing_writes_nothing() {
        let (_dir, files, root) = local_gateway();
        let me = Caller::root_local();
        let before = written(&files, root, b"f").await;
        let f = before.clone();
        let version = |files: &Files| files.catalog.inode(f.id.0 as i64).unwrap().unwrap().version;
        let (syncs, v0) = (files.catalog.wal_syncs(), version(&files));
        let same = SetAttr {
            mode: Some(before.mode),
            uid: Some(before.uid),
            gid: Some(before.gid),
            size: Some(before.size),
            atime: Some(SetTime::Client(before.atime_ns)),
            mtime: Some(SetTime::Client(before.mtime_ns)),
        };
        assert_eq!(files.setattr(&me, f.id, same).await.unwrap(), before);
        assert_eq!(
            (files.catalog.wal_syncs(), version(&files)),
            (syncs, v0),
            "nothing written, nothing synced"
        );
        let later = SetAttr {
            mtime: Some(SetTime::Client(before.mtime_ns + 1)),
            ..same
        };
        let after = files.setattr(&me, f.id, later).await.unwrap();
        assert_eq!(after.mtime_ns, before.mtime_ns + 1);
        assert!(after.ctime_ns > before.ctime_ns, "{after:?}");
        assert!(
            files.catalog.wal_syncs() > syncs,
            "a change waits for a sync"
        );
        assert_eq!(version(&files), v0 + 1);
    }

    /// A LOOKUP's directory attributes come from the hop that found the entry, whether the
    /// entry is there or not.
    #[tokio::test]
    async fn lookup_in_gives_the_directory_as_read() {
        let (_dir, files, root) = local_gateway();
        let me = Caller::root_local();
        let f = files
            .create(&me, root, b"f", CreateMode::Guarded, SetAttr::default())
            .await
            .unwrap();
        let dir = files.getattr(&me, root).await.unwrap();
        let (found, d) = files.lookup_in(&me, root, b"f").await;
        assert_eq!((found.unwrap(), d.as_ref()), (f, Some(&dir)));
        let (missing, d) = files.lookup_in(&me, root, b"nope").await;
        assert!(
            matches!(missing, Err(GatewayError::NotFound(_))),
            "{missing:?}"
        );
        assert_eq!(d, Some(dir));
        let (stale, d) = files.lookup_in(&me, FileId(999_999), b"f").await;
        assert!(matches!(stale, Err(GatewayError::Stale(_))), "{stale:?}");
        assert_eq!(d, None);
    }

    #[test]
    fn share_names_are_checked() {
        for (name, ok) in [
            ("share", true),
            ("a.b-c_d", true),
            ("", false),
            (".x", false),
            ("a/b", false),
        ] {
            assert_eq!(validate_share_name(name).is_ok(), ok, "{name}");
        }
    }

    /// Small files are durable through the catalog's journal: a stable WRITE of a whole new
    /// file and the COMMIT of one carry its bytes in the catalog; a start after the staging
    /// files were lost (a power loss before their unsynced data or names reached the disk)
    /// writes them back; a later write, a truncate and an upload each end the journal row.
    #[tokio::test]
    async fn small_files_are_durable_through_the_journal() {
        let (dir, files, root) = local_gateway();
        let me = Caller::root_local();
        let f = written(&files, root, b"f").await;
        let g = files
            .create(&me, root, b"g", CreateMode::Guarded, SetAttr::default())
            .await
            .unwrap();
        files
            .write(&me, g.id, 0, b"abc", Stability::Unstable)
            .await
            .unwrap();
        let syncs = files.catalog.wal_syncs();
        files.commit(&me, g.id).await.unwrap();
        assert_eq!(files.catalog.wal_syncs(), syncs + 1, "one WAL sync");
        let (fid, gid) = (f.id.row_id().unwrap(), g.id.row_id().unwrap());
        assert_eq!(
            files.catalog.journal_entries().unwrap(),
            vec![(fid, b"data".to_vec()), (gid, b"abc".to_vec())]
        );

        // Both staging files lost: the next start writes them back from the journal.
        for id in [fid, gid] {
            std::fs::remove_file(files.staging_path(id)).unwrap();
        }
        let config = files.config.clone();
        drop(files);
        let catalog = Arc::new(Catalog::open(&dir.path().join("c.db")).unwrap());
        let bucket = Arc::new(
            Bucket::open(
                &crate::config::BucketConfig::local(dir.path().join("bucket")),
                true,
            )
            .unwrap(),
        );
        let files = Files::new(catalog, bucket, config).unwrap();
        assert!(files.catalog.journal_entries().unwrap().is_empty());
        for (id, want) in [(f.id, &b"data"[..]), (g.id, b"abc")] {
            assert_eq!(&files.read(&me, id, 0, 100).await.unwrap().0[..], want);
        }

        // Written again: the row goes (after the file and its entry are synced).
        let h = written(&files, root, b"h").await;
        files
            .write(&me, h.id, 4, b"more", Stability::Unstable)
            .await
            .unwrap();
        let hid = h.id.row_id().unwrap();
        assert!(!files.catalog.journaled(hid).unwrap());
        // Truncated: likewise.
        let t = written(&files, root, b"t").await;
        let tid = t.id.row_id().unwrap();
        assert!(files.catalog.journaled(tid).unwrap());
        let shorter = SetAttr {
            size: Some(2),
            ..SetAttr::default()
        };
        files.setattr(&me, t.id, shorter).await.unwrap();
        assert!(!files.catalog.journaled(tid).unwrap());
        // Uploaded (and so unstaged): likewise.
        let u = written(&files, root, b"u").await;
        assert!(files.catalog.journaled(u.id.row_id().unwrap()).unwrap());
        assert!(files.drain(Duration::from_secs(10)).await.unwrap());
        assert!(files.catalog.journal_entries().unwrap().is_empty());
        assert_eq!(
            std::fs::read(dir.path().join("bucket/shares/s/u")).unwrap(),
            b"data"
        );
    }
}
