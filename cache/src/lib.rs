//! tidegate-cache: the write-back cache and upload buffer on the appliance's local disks.
//!
//! It caches and buffers byte ranges of named objects (each at most `object_size` bytes) and
//! knows nothing of volumes, files or tapes; dirty objects go to a [`Sink`] the gateway
//! implements.
//!
//! **Durability invariant:** a write is acknowledged as durable (by [`Cache::flush`] or a `fua`
//! write) only once its bytes and its index entry are on disk. The journal record *is* the index
//! entry and, until the object is uploaded, the only copy of the data: replay rebuilds the dirty
//! index from the journal alone.
//!
//! Design, in short:
//! - *Upload buffer* (`buffer.rs`, format in `record.rs`): segment files of CRC32C-checked
//!   records `{seq, write|discard, name, offset, data}`. A write appends its record (page cache
//!   only) and points the object's dirty extent map (`extents.rs`) at the record's payload under
//!   one lock; that append is the only time the bytes are written before they are acknowledged.
//!   `flush` is a group commit: flushes that arrive while an fsync runs share the next one.
//!   Segments are reclaimed oldest first once every record in them is uploaded, or overwritten
//!   by records that are themselves fsynced, or overwritten and never promised durable (no
//!   flush covered it: ADR 0010; `index::Dirty::needed_from`). When the buffer is full, writers
//!   wait (never fail or drop).
//! - *Cache* (`index.rs`): one sparse file per object holding clean data plus, in memory, the
//!   byte ranges it holds (byte ranges, not a page bitmap, so a partial-page write never needs
//!   the base first; the bucket being down must not stall writes). Reads take dirty ranges from
//!   the journal and the rest from the cache file. A miss fetches the whole object once for all
//!   concurrent readers and fills only the ranges not held locally. Clean objects are evicted
//!   LRU; dirty, uploading and pinned ones never. Clean data is not kept across a restart.
//! - *Uploader* (`upload.rs`): uploads an object once reads and writes of the whole cache have
//!   paused for `upload_delay` (a burst is absorbed before uploads compete with it), or once it
//!   has been dirty for `upload_max_age`, or at once when the buffer is half full, writers wait,
//!   `drain` runs or `upload_now` asks; oldest dirty first, `upload_concurrency` at a time,
//!   retrying transient failures forever with capped exponential backoff. The object is
//!   assembled from the cache file (or the bucket) and its journal extents; after the upload the
//!   assembled content is written into the cache file and the extents it covered are dropped.
//! - *Misses* (`fetch.rs`): one fetch task per object, shared by readers and the uploader.
//! - *Recovery* (`recover.rs`): replay every retained record in seq order into the extent maps;
//!   the first torn record ends the journal (it is cut there, durably), so recovery yields
//!   every acknowledged write and, of the writes since the last flush, a prefix — less any
//!   that were overwritten before a flush covered them (a disk's volatile write cache gives no
//!   more: ordering is promised only across flushes).

mod buffer;
mod extents;
mod fetch;
mod index;
mod layout;
mod ranges;
mod record;
mod recover;
mod sink;
mod upload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use layout::{Area, AreaError, LAYOUT_VERSION};
pub use sink::{BoxFuture, Sink, SinkError, SinkErrorKind};

use fetch::fetch_shared;
use index::State;
use record::{Op, Record};

/// Default settle time. A second covers the bursts of a guest's writeback and of a sequential
/// writer passing through a 1 MiB object, while keeping the bucket close behind.
pub const DEFAULT_UPLOAD_DELAY: Duration = Duration::from_secs(1);
/// Default maximum age of dirty data: the span of the kernel's own dirty-page expiry
/// (`vm.dirty_expire_centisecs` = 30 s). Under steady random writes an object is never idle for
/// the settle time; without this cap it would wait for the buffer to pass half full, and with a
/// shorter one each 1 MiB object would be sealed and uploaded for a handful of 4 KiB writes.
pub const DEFAULT_UPLOAD_MAX_AGE: Duration = Duration::from_secs(30);

/// Validated settings of one cache instance.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub cache_dir: PathBuf,
    pub cache_capacity: u64,
    pub buffer_dir: PathBuf,
    pub buffer_capacity: u64,
    /// Size of every object in bytes (1 MiB for volumes).
    pub object_size: u64,
    /// Bytes; must be a power of two dividing `object_size`. Validity is tracked per byte range,
    /// so this is only the unit callers should align to.
    pub page_size: u64,
    pub upload_concurrency: usize,
    /// Settle time: how long reads and writes (of any object) must pause before dirty objects
    /// are uploaded. Writes that land within it are coalesced into one upload of each object, and a
    /// burst has the CPU and disk to itself until it ends or objects reach `upload_max_age`.
    pub upload_delay: Duration,
    /// Longest an object waits for its upload once dirty, however often it is rewritten: bounds
    /// how far the bucket lags behind the local disk. Uploads also start at once when the
    /// upload buffer is more than half full, writers wait for space, or `drain`/`upload_now`
    /// asks.
    pub upload_max_age: Duration,
    /// First and largest wait between retries of a failed upload.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl CacheConfig {
    /// Defaults for volumes: 1 MiB objects, 4 KiB pages, 4 uploads, 1 s settle, 30 s maximum age,
    /// 100 ms..5 s retry.
    pub fn new(
        cache_dir: PathBuf,
        cache_capacity: u64,
        buffer_dir: PathBuf,
        buffer_capacity: u64,
    ) -> Self {
        Self {
            cache_dir,
            cache_capacity,
            buffer_dir,
            buffer_capacity,
            object_size: 1 << 20,
            page_size: 4096,
            upload_concurrency: 4,
            upload_delay: DEFAULT_UPLOAD_DELAY,
            upload_max_age: DEFAULT_UPLOAD_MAX_AGE,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// A point-in-time view for `status`.
#[derive(Debug, Clone, Default)]
pub struct CacheStats {
    pub cache_bytes: u64,
    pub dirty_bytes: u64,
    pub buffer_bytes: u64,
    pub buffer_capacity: u64,
    pub hits: u64,
    pub misses: u64,
    pub uploads: u64,
    pub upload_errors: u64,
    pub oldest_dirty_age: Option<Duration>,
    pub writers_waiting: u64,
    /// Journal fsyncs run by `flush` (group commit makes this smaller than the flush count).
    pub fsyncs: u64,
    pub flushes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("opening the {which} area")]
    Area {
        which: &'static str,
        #[source]
        source: AreaError,
    },
    #[error("invalid cache config: {reason}")]
    Config { reason: &'static str },
    #[error("upload buffer journal I/O while {what}")]
    Journal {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cache file I/O for object {name:?}")]
    CacheFile {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object {name:?}: range {offset}+{len} lies outside the object size {object_size}")]
    OutOfRange {
        name: String,
        offset: u64,
        len: u64,
        object_size: u64,
    },
    #[error("object name {name:?} is empty or longer than {max} bytes")]
    InvalidName { name: String, max: usize },
    #[error("fetching object {name:?} from the bucket")]
    Sink {
        name: String,
        #[source]
        source: SinkError,
    },
    #[error("the cache is closed")]
    Closed,
}

impl CacheError {
    /// True when the cache or upload-buffer disk (or the user's quota on it) is full: the caller
    /// can say "no space" instead of reporting an internal failure.
    pub fn is_no_space(&self) -> bool {
        let io = match self {
            Self::Journal { source, .. } | Self::CacheFile { source, .. } => source,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::StorageFull
            || io.kind() == std::io::ErrorKind::QuotaExceeded
    }

    /// The sink's error kind, so the front end can tell "medium error" from "retry".
    pub fn sink_kind(&self) -> Option<SinkErrorKind> {
        match self {
            Self::Sink { source, .. } => Some(source.kind),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    uploads: AtomicU64,
    upload_errors: AtomicU64,
    fsyncs: AtomicU64,
    flushes: AtomicU64,
}

struct Inner {
    config: CacheConfig,
    sink: Arc<dyn Sink>,
    state: Mutex<State>,
    /// Serialises fsyncs; a flush queued behind one finds its records already synced.
    sync_lock: tokio::sync::Mutex<()>,
    /// Journal space was reclaimed.
    space: Notify,
    /// An upload finished (for `drain`).
    uploaded: Notify,
    /// Something the uploader may act on changed.
    wake: Notify,
    counters: Counters,
}

impl Inner {
    /// The index. A panic while holding it is a bug; the state is still used rather than
    /// turning every later call into a panic.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the background tasks when the last handle goes away.
struct Tasks {
    inner: Arc<Inner>,
    uploader: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.inner.state().closed = true;
        if let Some(h) = self
            .uploader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
        // Wake waiters so they observe `closed` instead of hanging.
        self.inner.space.notify_waiters();
        self.inner.uploaded.notify_waiters();
    }
}

/// The write-back cache. Cheap to clone; the last clone dropped stops the background tasks
/// (dirty data stays in the journal for the next `open`).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

impl Cache {
    /// Opens or creates both areas, replays the journal and starts the uploader. Must be called
    /// inside a tokio runtime.
    pub fn open(config: CacheConfig, sink: Arc<dyn Sink>) -> Result<Self, CacheError> {
        let state = recover::open(&config)?;
        let inner = Arc::new(Inner {
            config,
            sink,
            state: Mutex::new(state),
            sync_lock: tokio::sync::Mutex::new(()),
            space: Notify::new(),
            uploaded: Notify::new(),
            wake: Notify::new(),
            counters: Counters::default(),
        });
        let uploader = tokio::spawn(upload::run(inner.clone()));
        let tasks = Arc::new(Tasks {
            inner: inner.clone(),
            uploader: Mutex::new(Some(uploader)),
        });
        Ok(Self { inner, tasks })
    }

    /// Writes `data` at `offset` of object `name`. Returns once reads see it; durable after the
    /// next `flush`. Waits while the upload buffer is full.
    pub async fn write(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), CacheError> {
        self.append(name, offset, Op::Write(data)).await
    }

    /// `write` followed by a flush covering it (SCSI FUA).
    pub async fn write_durable(
        &self,
        name: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), CacheError> {
        self.write(name, offset, data).await?;
        self.flush().await
    }

    /// Makes `len` bytes at `offset` read as zeros. Journaled and made durable like a write.
    pub async fn discard(&self, name: &str, offset: u64, len: u64) -> Result<(), CacheError> {
        let l = u32::try_from(len).map_err(|_| self.out_of_range(name, offset, len))?;
        self.append(name, offset, Op::Discard(l)).await
    }

    fn out_of_range(&self, name: &str, offset: u64, len: u64) -> CacheError {
        CacheError::OutOfRange {
            name: name.to_owned(),
            offset,
            len,
            object_size: self.inner.config.object_size,
        }
    }

    fn check(&self, name: &str, offset: u64, len: u64) -> Result<(), CacheError> {
        if name.is_empty() || name.len() > record::MAX_NAME_LEN {
            return Err(CacheError::InvalidName {
                name: name.to_owned(),
                max: record::MAX_NAME_LEN,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.inner.config.object_size => Ok(()),
            _ => Err(self.out_of_range(name, offset, len)),
        }
    }

    async fn append(&self, name: &str, offset: u64, op: Op<'_>) -> Result<(), CacheError> {
        let len = match op {
            Op::Write(d) => d.len() as u64,
            Op::Discard(l) => u64::from(l),
        };
        self.check(name, offset, len)?;
        let payload = match op {
            Op::Write(d) => d.len(),
            Op::Discard(_) => 0,
        };
        let rec_len = record::record_len(name.len(), payload)
            .ok_or_else(|| self.out_of_range(name, offset, len))? as u64;
        let inner = &self.inner;
        let capacity = inner.config.buffer_capacity;
        // Whether the uploader needs to hear of this write: it sleeps until the earliest due
        // upload, so only a newly dirty object or a filling buffer changes its plan. Waking it
        // on every write made it rescan all dirty objects thousands of times a second.
        let wake_uploader = wait_for_space(inner, |st, waited| {
            let mut fits = st.journal.total_bytes() + st.journal.cost(rec_len) <= capacity;
            if !fits {
                let needed = st.needed_from();
                st.journal
                    .reclaim(needed, true)
                    .map_err(|source| CacheError::Journal {
                        what: "reclaiming",
                        source,
                    })?;
                fits = st.journal.total_bytes() + st.journal.cost(rec_len) <= capacity;
            }
            if !fits {
                return Ok(None);
            }
            let seq = st.journal.next_seq();
            let encoded = record::encode_parts(&Record {
                seq,
                name,
                offset,
                op,
            })
            .ok_or_else(|| self.out_of_range(name, offset, len))?;
            let was_dirty = st.dirty_names.contains(name);
            let active = st.journal.active_segment();
            let at = st
                .journal
                .append(&encoded)
                .map_err(|source| CacheError::Journal {
                    what: "appending",
                    source,
                })?;
            st.apply(name, offset, op, seq, at);
            if active != Some(at.segment) {
                // A segment was sealed: free the old ones no extent points into any more
                // (records overwritten since), so rewrites of the same data need no upload
                // to make room. The write is journaled already; a failed delete only keeps
                // space.
                let needed = st.needed_from();
                if let Err(e) = st.journal.reclaim(needed, false) {
                    tracing::warn!(error = %e, "journal reclaim failed");
                }
            }
            Ok(Some(
                !was_dirty || waited || st.journal.total_bytes() > capacity / 2,
            ))
        })
        .await?;
        if wake_uploader {
            inner.wake.notify_one();
        }
        Ok(())
    }

    /// Waits until the upload buffer has room for about `bytes` more (at most a quarter of the
    /// buffer is asked for). A hint for callers that hold a lock of their own while they write
    /// (a volume's snapshot gate): waiting here first, without that lock, means the lock is not
    /// held for as long as uploads take to free space. A write may still wait, briefly, if
    /// other writers take the room first.
    pub async fn room_for(&self, bytes: u64) -> Result<(), CacheError> {
        let capacity = self.inner.config.buffer_capacity;
        let bytes = bytes.min(capacity / 4);
        wait_for_space(&self.inner, |st, _| {
            Ok((st.journal.total_bytes() + bytes <= capacity).then_some(()))
        })
        .await
    }

    /// Returns once every write that returned before this call is durable in the journal.
    /// Concurrent flushes share one fsync (group commit).
    pub async fn flush(&self) -> Result<(), CacheError> {
        let inner = &self.inner;
        inner.counters.flushes.fetch_add(1, Ordering::Relaxed);
        let target = {
            let st = inner.state();
            if st.closed {
                return Err(CacheError::Closed);
            }
            st.journal.next_seq() - 1
        };
        let _leader = inner.sync_lock.lock().await;
        let plan = {
            let mut st = inner.state();
            if st.journal.synced_seq() >= target {
                return Ok(());
            }
            match st.journal.sync_plan() {
                Some(p) => {
                    st.journal.begin_sync(&p);
                    p
                }
                None => return Ok(()),
            }
        };
        let plan = tokio::task::spawn_blocking(move || plan.run().map(|()| plan))
            .await
            .map_err(|e| CacheError::Journal {
                what: "syncing",
                source: std::io::Error::other(e),
            })?
            .map_err(|source| CacheError::Journal {
                what: "syncing",
                source,
            })?;
        inner.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        inner.state().journal.mark_synced(&plan);
        Ok(())
    }

    /// Reads `len` bytes at `offset` of `name`, fetching the object on a miss.
    pub async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, CacheError> {
        self.check(name, offset, len)?;
        let range = offset..offset + len;
        let file_err = |source| CacheError::CacheFile {
            name: name.to_owned(),
            source,
        };
        {
            let mut st = self.inner.state();
            if st.closed {
                return Err(CacheError::Closed);
            }
            st.last_io_at = Some(std::time::Instant::now());
            let obj = st.touch(name);
            if obj.holds(range.clone()) {
                self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                return st
                    .read(name, range, None)
                    .map(Bytes::from)
                    .map_err(file_err);
            }
            // Pinned: not evicted, so what it holds only grows until the overlay below.
            obj.pins += 1;
        }
        self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        let pin = Pin {
            inner: &self.inner,
            name,
        };
        let base = fetch_shared(&self.inner, name).await?;
        let st = self.inner.state();
        let out = st.read(name, range, Some(&base)).map_err(file_err)?;
        drop(st);
        drop(pin);
        Ok(Bytes::from(out))
    }

    /// True while `name` holds data not yet in the bucket (dirty, or being uploaded).
    pub fn is_dirty(&self, name: &str) -> bool {
        let st = self.inner.state();
        st.dirty_names.contains(name) || st.objects.get(name).is_some_and(|o| o.uploading)
    }

    /// Asks for `name` to be uploaded now rather than after its settle time (e.g. before a
    /// snapshot). Does nothing if it holds no dirty data; `drain` waits for everything.
    pub fn upload_now(&self, name: &str) {
        {
            let mut st = self.inner.state();
            match st.objects.get_mut(name).and_then(|o| o.dirty.as_mut()) {
                Some(d) => d.urgent = true,
                None => return,
            }
        }
        self.inner.wake.notify_one();
    }

    /// Starts fetching `name` into the cache in the background (read-ahead).
    /// Does nothing if the whole object is already held locally: the fetch would be a bucket GET
    /// (and decryption) whose result fills nothing.
    pub fn prefetch(&self, name: &str) {
        {
            let st = self.inner.state();
            let size = self.inner.config.object_size;
            if st.objects.get(name).is_some_and(|o| o.holds(0..size)) {
                return;
            }
        }
        let inner = self.inner.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            if let Err(e) = fetch_shared(&inner, &name).await {
                tracing::debug!(object = %name, error = %e, "prefetch failed");
            }
        });
    }

    /// Waits until nothing is dirty. Uploads everything at once, ignoring the settle time; while
    /// the bucket is down this waits for it.
    pub async fn drain(&self) -> Result<(), CacheError> {
        let inner = &self.inner;
        inner.state().draining += 1;
        let _guard = DrainGuard { inner };
        loop {
            let done = inner.uploaded.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            {
                let st = inner.state();
                if st.closed {
                    return Err(CacheError::Closed);
                }
                if st.dirty_names.is_empty() {
                    return Ok(());
                }
            }
            inner.wake.notify_one();
            done.await;
        }
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.inner.state();
        let c = &self.inner.counters;
        CacheStats {
            cache_bytes: st.cache_bytes,
            dirty_bytes: st.dirty_bytes(),
            buffer_bytes: st.journal.total_bytes(),
            buffer_capacity: self.inner.config.buffer_capacity,
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            uploads: c.uploads.load(Ordering::Relaxed),
            upload_errors: c.upload_errors.load(Ordering::Relaxed),
            oldest_dirty_age: st.oldest_dirty().map(|t| t.elapsed()),
            writers_waiting: st.writers_waiting,
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
        }
    }

    /// Stops the background tasks and waits for the uploader to end. Dirty data stays in the
    /// journal; writes that were not flushed may or may not survive, as after a crash.
    pub async fn close(self) {
        let handle = {
            self.inner.state().closed = true;
            self.tasks
                .uploader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        };
        if let Some(h) = handle {
            h.abort();
            let _ = h.await;
        }
    }
}

/// Runs `attempt` under the index lock until it returns `Some`, waiting for journal space
/// between tries. While it waits the caller counts as a waiting writer, which the uploader
/// treats as urgency; `attempt` is told whether it has waited.
async fn wait_for_space<T>(
    inner: &Inner,
    mut attempt: impl FnMut(&mut State, bool) -> Result<Option<T>, CacheError>,
) -> Result<T, CacheError> {
    let mut waiting = WaitGuard {
        inner,
        counted: false,
    };
    loop {
        let space = inner.space.notified();
        tokio::pin!(space);
        space.as_mut().enable();
        {
            let mut st = inner.state();
            if st.closed {
                return Err(CacheError::Closed);
            }
            if let Some(done) = attempt(&mut st, waiting.counted)? {
                return Ok(done);
            }
            if !waiting.counted {
                waiting.counted = true;
                st.writers_waiting += 1;
            }
        }
        inner.wake.notify_one();
        space.await;
    }
}

/// Counts a writer as waiting for journal space until it is done or cancelled.
struct WaitGuard<'a> {
    inner: &'a Inner,
    counted: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.counted {
            let mut st = self.inner.state();
            st.writers_waiting = st.writers_waiting.saturating_sub(1);
        }
    }
}

struct DrainGuard<'a> {
    inner: &'a Inner,
}

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.state();
        st.draining = st.draining.saturating_sub(1);
    }
}

/// A reader's pin on an object (see `index::Object::pins`), released even if cancelled.
struct Pin<'a> {
    inner: &'a Inner,
    name: &'a str,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.state();
        if let Some(obj) = st.objects.get_mut(self.name) {
            obj.pins = obj.pins.saturating_sub(1);
        }
        st.forget_if_empty(self.name);
    }
}
