//! The in-memory index: per object which byte ranges the cache file holds (clean data), which
//! dirty ranges live in which journal records, and LRU order; plus the cache files and eviction.
//!
//! Owns `State`, which lives behind one mutex in `Cache`. Nothing here awaits or fsyncs; file
//! I/O under the lock is page-cache reads and writes only (a finished upload's whole-object
//! write happens outside it, see `upload::upload_one`). Invariants: dirty bytes are read from
//! the journal record that wrote them last (the extent map), never from the cache file, so a
//! write touches the disk once; the cache file is written only by a fill (bucket content, where
//! it holds nothing) and by a finished upload (the whole uploaded content, after which the
//! extents it covered are dropped); a dirty, uploading or pinned object is never evicted; `known`
//! only grows while an object is pinned or uploading, so a base fetched from the bucket stays
//! valid for the ranges that neither `known` nor the extents cover.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::buffer::{Journal, Location};
use crate::extents::{ExtentMap, Source};
use crate::ranges::RangeSet;
use crate::record::Op;
use crate::sink::SinkError;

/// A shared fetch: `None` until the fetch task has filled the cache with the result.
pub(crate) type FetchRx = watch::Receiver<Option<Result<Bytes, SinkError>>>;

#[derive(Debug)]
pub(crate) struct Dirty {
    /// Oldest journal seq whose effect may not be in the bucket (conservative: may be older).
    pub(crate) since_seq: u64,
    /// Seq of the newest record for this object.
    pub(crate) last_seq: u64,
    /// When the oldest data not yet uploaded was written (at most: a partial upload resets it to
    /// its capture time).
    pub(crate) first_at: Instant,
    pub(crate) last_write_at: Instant,
    /// Where the newest bytes of each dirty range are in the journal.
    pub(crate) extents: ExtentMap,
    /// An upload was asked for (`Cache::upload_now`): skip the settle time.
    pub(crate) urgent: bool,
}

impl Dirty {
    /// The oldest journal record this object still needs, given that records up to
    /// `synced_seq` are durable and those up to `promised_seq` are, or are being, acknowledged
    /// as durable.
    ///
    /// A record no extent points into was overwritten, but dropping it is safe only once the
    /// records that overwrote it are durable: otherwise a crash could lose both the
    /// acknowledged old write and the unacknowledged new one, and the bytes would read as what
    /// the bucket held before either. So while any record of this object is not yet synced,
    /// everything since the object's last upload is kept — unless none of those records was
    /// ever promised durable: then losing them all is what a crash before the next flush may
    /// do anyway, and a rewritten working set needs no upload to free its journal space.
    pub(crate) fn needed_from(&self, synced_seq: u64, promised_seq: u64) -> u64 {
        if self.last_seq <= synced_seq || self.since_seq > promised_seq {
            self.extents.min_seq().unwrap_or(self.last_seq)
        } else {
            self.since_seq
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Object {
    pub(crate) known: RangeSet,
    pub(crate) dirty: Option<Dirty>,
    pub(crate) uploading: bool,
    /// Readers between their miss and their overlay read.
    pub(crate) pins: u32,
    tick: u64,
    pub(crate) retry_at: Option<Instant>,
    pub(crate) backoff: Duration,
}

impl Object {
    fn evictable(&self) -> bool {
        self.dirty.is_none() && !self.uploading && self.pins == 0
    }

    /// True if every byte of `r` is held locally: dirty in the journal or clean in the file.
    pub(crate) fn holds(&self, r: Range<u64>) -> bool {
        match &self.dirty {
            Some(d) => d.extents.gaps(r).into_iter().all(|g| self.known.covers(g)),
            None => self.known.covers(r),
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) journal: Journal,
    pub(crate) objects: HashMap<String, Object>,
    pub(crate) dirty_names: HashSet<String>,
    lru: BTreeMap<u64, String>,
    next_tick: u64,
    pub(crate) cache_bytes: u64,
    pub(crate) fetching: HashMap<String, FetchRx>,
    pub(crate) uploading: usize,
    pub(crate) draining: usize,
    pub(crate) writers_waiting: u64,
    pub(crate) closed: bool,
    /// The last read or write of any object: uploads wait for client I/O to pause (see
    /// `upload::schedule`).
    pub(crate) last_io_at: Option<Instant>,
    files: Arc<ObjectFiles>,
    object_size: u64,
    capacity: u64,
}

impl State {
    pub(crate) fn new(
        journal: Journal,
        files: ObjectFiles,
        object_size: u64,
        capacity: u64,
    ) -> Self {
        Self {
            journal,
            objects: HashMap::new(),
            dirty_names: HashSet::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            cache_bytes: 0,
            fetching: HashMap::new(),
            uploading: 0,
            draining: 0,
            writers_waiting: 0,
            closed: false,
            last_io_at: None,
            files: Arc::new(files),
            object_size,
            capacity,
        }
    }

    /// The entry for `name`, created empty if absent, moved to the LRU's young end.
    pub(crate) fn touch(&mut self, name: &str) -> &mut Object {
        let tick = self.next_tick;
        self.next_tick += 1;
        let obj = self.objects.entry(name.to_owned()).or_default();
        self.lru.remove(&obj.tick);
        obj.tick = tick;
        self.lru.insert(tick, name.to_owned());
        obj
    }

    /// Indexes a journaled write or discard (seq `seq`, payload at `at`): its range now reads
    /// from the journal. The cache file is not touched.
    pub(crate) fn apply(&mut self, name: &str, offset: u64, op: Op<'_>, seq: u64, at: Location) {
        let (len, src) = match op {
            Op::Write(d) => (
                d.len() as u64,
                Source::Journal {
                    segment: at.segment,
                    pos: at.pos,
                },
            ),
            Op::Discard(l) => (u64::from(l), Source::Zero),
        };
        if len == 0 {
            // Changes no byte; the record is harmless and need not keep the object dirty.
            return;
        }
        let now = Instant::now();
        self.last_io_at = Some(now);
        let obj = self.touch(name);
        let dirty = obj.dirty.get_or_insert_with(|| Dirty {
            since_seq: seq,
            last_seq: seq,
            first_at: now,
            last_write_at: now,
            extents: ExtentMap::default(),
            urgent: false,
        });
        dirty.last_seq = seq;
        dirty.last_write_at = now;
        dirty.extents.insert(offset..offset + len, seq, src);
        if !self.dirty_names.contains(name) {
            self.dirty_names.insert(name.to_owned());
        }
    }

    /// Fills the ranges of `name` the cache does not hold from `base` (the bucket's content).
    pub(crate) fn fill(&mut self, name: &str, base: &[u8]) -> std::io::Result<()> {
        let size = self.object_size;
        let gaps = self.touch(name).known.gaps(0..size);
        for g in &gaps {
            self.files
                .write(name, g.start, &base[g.start as usize..g.end as usize])?;
        }
        let obj = self.touch(name);
        let before = obj.known.len();
        obj.known = RangeSet::full(size);
        self.cache_bytes += size - before;
        self.evict()
    }

    /// Bytes `range` of `name`: dirty ranges from the journal, clean ones from the cache file,
    /// the rest from `base` (zeros if `base` is `None`; callers pass `None` only when the range
    /// is fully held).
    pub(crate) fn read(
        &self,
        name: &str,
        range: Range<u64>,
        base: Option<&[u8]>,
    ) -> std::io::Result<Vec<u8>> {
        let mut out = match base {
            Some(b) => b[range.start as usize..range.end as usize].to_vec(),
            None => vec![0u8; (range.end - range.start) as usize],
        };
        let Some(obj) = self.objects.get(name) else {
            return Ok(out);
        };
        let slot = |r: &Range<u64>| {
            let at = (r.start - range.start) as usize;
            at..at + (r.end - r.start) as usize
        };
        let dirty = obj.dirty.as_ref().map(|d| &d.extents);
        let clean = match dirty {
            Some(e) => e.gaps(range.clone()),
            None => vec![range.clone()],
        };
        for g in clean {
            for c in obj.known.intersect(g) {
                let s = slot(&c);
                self.files.read(name, c.start, &mut out[s])?;
            }
        }
        for p in dirty.map(|e| e.pieces(range.clone())).unwrap_or_default() {
            let s = slot(&p.range);
            match p.src {
                Source::Journal { segment, pos } => {
                    self.journal.read_at(segment, pos, &mut out[s])?;
                }
                Source::Zero => out[s].fill(0),
            }
        }
        Ok(out)
    }

    /// The oldest journal seq still needed by some dirty object.
    pub(crate) fn needed_from(&self) -> u64 {
        let synced = self.journal.synced_seq();
        let promised = self.journal.promised_seq();
        self.dirty_names
            .iter()
            .filter_map(|n| {
                Some(
                    self.objects
                        .get(n)?
                        .dirty
                        .as_ref()?
                        .needed_from(synced, promised),
                )
            })
            .min()
            .unwrap_or_else(|| self.journal.next_seq())
    }

    /// Completes an upload of `name` whose content as of journal seq `seq` (captured at
    /// `captured_at`) the caller has already written into the cache file: the file is now
    /// known whole and the extents the content included are dropped, so their journal records
    /// may be reclaimed. Writes that arrived during the upload keep their extents, which still
    /// shadow the file. If the file could not be written the caller does not call this, and
    /// nothing is dropped (the data stays dirty and is uploaded again).
    pub(crate) fn uploaded(&mut self, name: &str, seq: u64, captured_at: Instant) {
        let size = self.object_size;
        let Some(obj) = self.objects.get_mut(name) else {
            return;
        };
        let before = obj.known.len();
        obj.known = RangeSet::full(size);
        self.cache_bytes += size - before;
        if let Some(d) = &mut obj.dirty {
            d.extents.remove_upto(seq);
            if d.extents.is_empty() {
                obj.dirty = None;
                self.dirty_names.remove(name);
            } else {
                d.since_seq = d.since_seq.max(seq + 1);
                d.first_at = captured_at;
                d.urgent = false;
            }
        }
    }

    /// The cache files, for writes made outside the lock (see `upload::upload_one`).
    pub(crate) fn files(&self) -> Arc<ObjectFiles> {
        self.files.clone()
    }

    /// Drops an empty clean entry (a reader's failed miss) so the map does not grow.
    pub(crate) fn forget_if_empty(&mut self, name: &str) {
        if let Some(obj) = self.objects.get(name)
            && obj.evictable()
            && obj.known.len() == 0
        {
            self.lru.remove(&obj.tick);
            self.objects.remove(name);
        }
    }

    pub(crate) fn dirty_bytes(&self) -> u64 {
        self.dirty_names
            .iter()
            .filter_map(|n| Some(self.objects.get(n)?.dirty.as_ref()?.extents.len()))
            .sum()
    }

    pub(crate) fn oldest_dirty(&self) -> Option<Instant> {
        self.dirty_names
            .iter()
            .filter_map(|n| Some(self.objects.get(n)?.dirty.as_ref()?.first_at))
            .min()
    }

    /// Evicts clean objects, least recently used first, until the cache fits its capacity.
    pub(crate) fn evict(&mut self) -> std::io::Result<()> {
        if self.cache_bytes <= self.capacity {
            return Ok(());
        }
        let mut victims = Vec::new();
        let mut freed = 0;
        for (&tick, name) in &self.lru {
            if self.cache_bytes - freed <= self.capacity {
                break;
            }
            if let Some(obj) = self.objects.get(name)
                && obj.evictable()
            {
                freed += obj.known.len();
                victims.push((tick, name.clone()));
            }
        }
        for (tick, name) in victims {
            self.lru.remove(&tick);
            if let Some(obj) = self.objects.remove(&name) {
                self.cache_bytes -= obj.known.len();
            }
            self.files.remove(&name)?;
        }
        Ok(())
    }
}

/// One sparse file per object under `<cache_dir>/objects`, named by the hex of the object name
/// (names are opaque and may hold `/`).
#[derive(Debug)]
pub(crate) struct ObjectFiles {
    dir: PathBuf,
    /// Open files by object name: opening and closing a file per 4 KiB I/O would cost more than
    /// the I/O itself. Bounded; emptied when full (re-opening is cheap, leaking fds is not).
    open: std::sync::Mutex<HashMap<String, std::sync::Arc<File>>>,
    /// Files of evicted objects, emptied and renamed `s<n>`, that new objects' files are renamed
    /// from. On ext4 without a journal creating a file steps over every inode of its block
    /// group freed in the last seconds to minutes (the kernel's `recently_deleted`); under
    /// sustained writes, with objects evicted as fast as new ones arrive, that scan was 12% of
    /// the daemon's CPU. A rename takes microseconds. Nothing is synced: clean files are not
    /// trusted across restarts, and the directory is emptied at start.
    spares: std::sync::Mutex<Spares>,
}

#[derive(Debug, Default)]
struct Spares {
    names: Vec<PathBuf>,
    /// The next spare's number; `s` keeps spare names apart from objects' hex names.
    next: u64,
}

/// Most object files held open at once.
const OPEN_FILES: usize = 512;
/// Most emptied files kept for new objects; past it evicted files are removed.
const MAX_SPARES: usize = 256;

impl ObjectFiles {
    /// Starts with an empty directory: clean data is not trusted across restarts (its validity
    /// map lived in memory); dirty data is read from the journal replay indexes.
    pub(crate) fn reset(cache_dir: &Path) -> std::io::Result<Self> {
        let dir = cache_dir.join("objects");
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            open: std::sync::Mutex::new(HashMap::new()),
            spares: std::sync::Mutex::default(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut file = String::with_capacity(name.len() * 2);
        for b in name.bytes() {
            file.push(char::from(HEX[usize::from(b >> 4)]));
            file.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        self.dir.join(file)
    }

    /// The object's file, opened (and created) once and kept open.
    fn file(&self, name: &str) -> std::io::Result<std::sync::Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(name) {
            return Ok(f.clone());
        }
        let path = self.path(name);
        let f = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => self.create(&path)?,
            Err(e) => return Err(e),
        };
        let f = std::sync::Arc::new(f);
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(name.to_owned(), f.clone());
        Ok(f)
    }

    pub(crate) fn write(&self, name: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file(name)?.write_all_at(data, offset)
    }

    fn read(&self, name: &str, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file(name)?.read_exact_at(out, offset)
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new object's file: a spare renamed into place when there is one, else created.
    fn create(&self, path: &Path) -> std::io::Result<File> {
        let spare = self.spares().names.pop();
        if let Some(spare) = spare
            && std::fs::rename(&spare, path).is_ok()
        {
            return OpenOptions::new().read(true).write(true).open(path);
        }
        OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
    }

    /// Drops an evicted object's file: emptied and kept as a spare while there is room and no
    /// one else holds it open (a holder's late write must not land in another object's file),
    /// else removed.
    fn remove(&self, name: &str) -> std::io::Result<()> {
        let held = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let path = self.path(name);
        if held
            .as_ref()
            .is_none_or(|f| std::sync::Arc::strong_count(f) == 1)
            && self.spares().names.len() < MAX_SPARES
        {
            let emptied = match &held {
                Some(f) => f.set_len(0),
                None => OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(0)),
            };
            if emptied.is_ok() {
                let mut spares = self.spares();
                let spare = self.dir.join(format!("s{}", spares.next));
                spares.next += 1;
                if std::fs::rename(&path, &spare).is_ok() {
                    spares.names.push(spare);
                    return Ok(());
                }
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn an_evicted_file_is_emptied_and_becomes_the_next_objects_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = ObjectFiles::reset(dir.path()).unwrap();
        files.write("a", 0, &[7u8; 8192]).unwrap();
        let ino = std::fs::metadata(files.path("a")).unwrap().ino();
        files.remove("a").unwrap();
        assert!(!files.path("a").exists());
        files.write("b", 4096, b"new").unwrap();
        let b = std::fs::metadata(files.path("b")).unwrap();
        assert_eq!(b.ino(), ino, "the evicted file was not reused");
        // Nothing of the evicted object's bytes is left in the new object's file.
        assert_eq!(b.len(), 4099);
        let mut head = [1u8; 4096];
        files.read("b", 0, &mut head).unwrap();
        assert_eq!(head, [0u8; 4096]);
    }

    #[test]
    fn a_file_someone_holds_is_removed_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let files = ObjectFiles::reset(dir.path()).unwrap();
        files.write("a", 0, b"held").unwrap();
        let held = files.file("a").unwrap();
        let ino = held.metadata().unwrap().ino();
        files.remove("a").unwrap();
        files.write("b", 0, b"other").unwrap();
        assert_ne!(std::fs::metadata(files.path("b")).unwrap().ino(), ino);
        // The holder still writes to its own (removed) file only.
        std::os::unix::fs::FileExt::write_all_at(&*held, b"late", 0).unwrap();
        let mut b = [0u8; 5];
        files.read("b", 0, &mut b).unwrap();
        assert_eq!(&b, b"other");
    }

    #[test]
    fn spares_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let files = ObjectFiles::reset(dir.path()).unwrap();
        for i in 0..MAX_SPARES + 10 {
            files.write(&format!("o{i}"), 0, b"x").unwrap();
        }
        for i in 0..MAX_SPARES + 10 {
            files.remove(&format!("o{i}")).unwrap();
        }
        assert_eq!(files.spares().names.len(), MAX_SPARES);
        assert_eq!(std::fs::read_dir(&files.dir).unwrap().count(), MAX_SPARES);
    }
}
