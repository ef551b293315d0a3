//! Clean copies: a file's staging file is kept after its upload, as a local copy of the object
//! it became, so that reading back what was just written (and writing it again) does not go to
//! the bucket.
//!
//! Before, an upload removed the staging file (docs/decisions/0005-file-data-path.md) and every
//! later read was a ranged GET; 4 KiB random reads of a just-written file then cost a 128 KiB
//! GET and its decryption each, and ran at about half nfs-ganesha's rate on local disk
//! (docs/testing.md, nfs4.sh run 7). A commercial file gateway keeps recently used data in its
//! local cache for the same reason.
//!
//! Rules, so that a copy is never served for data it does not hold:
//! - A copy is adopted only from a staging file that was just recorded as uploaded with its
//!   version unchanged (the uploader holds the inode lock), whole (no block map), and names the
//!   object's ETag. A read uses it only while the inode row still names that ETag and is not
//!   staged; any other content has another ETag.
//! - Copies live only in memory's index: the directory is emptied at start, so nothing stale
//!   survives a restart or a crash.
//! - A read checks after reading that the copy was not taken meanwhile (by a write staging the
//!   file, a removal or an eviction, each of which drops the entry before touching the file):
//!   otherwise it reads again the usual way.
//! - Copies take what staging leaves of the staging budget (`cache.size`) and are evicted least
//!   recently used first when staging grows; a writer never waits for them. Without a budget
//!   (unit tests) or where staging is not durable itself (device mode) none are kept.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::gateway::GatewayError;
use crate::gateway::files::Files;
use crate::gateway::files::local::io_err;
use crate::gateway::files::staging::allocated;

/// At most this many copies are kept, whatever room the budget leaves: the index is in memory
/// (about 200 bytes a copy), and a budget of gigabytes holds millions of small files, so
/// without a cap the daemon's memory grew with every file written and uploaded (issue 21: 400
/// MiB after a million 16-byte files). 100,000 copies take about 20 MiB.
pub(crate) const MAX_COPIES: usize = 100_000;

/// The index of the clean copies under one directory.
#[derive(Debug)]
pub(crate) struct CleanCopies {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// [`MAX_COPIES`], smaller in tests.
    max_copies: usize,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<i64, Entry>,
    /// Use order: tick of last use → inode.
    order: BTreeMap<u64, i64>,
    tick: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Entry {
    etag: String,
    bytes: u64,
    /// Last use.
    tick: u64,
    /// Which adoption this is: a read's check after reading compares it.
    generation: u64,
}

/// What a read found: the copy's path and the entry's identity to check afterwards.
#[derive(Debug)]
pub(crate) struct Hit {
    pub path: PathBuf,
    id: i64,
    generation: u64,
}

/// The directory of clean copies, inside the staging directory.
pub(crate) const DIR: &str = "clean";
/// An earlier run's copies, set aside beside [`DIR`] until a thread has removed them.
const ASIDE: &str = "clean.old-";

/// Whether an entry of the staging directory belongs to the clean copies.
pub(crate) fn owns(name: &str) -> bool {
    name == DIR || name.starts_with(ASIDE)
}

impl CleanCopies {
    /// Starts with no copies in `staging_dir`'s [`DIR`]: copies from an earlier run are not
    /// trusted. Their directory is renamed aside and removed by a thread of its own: a million
    /// copies took longer to remove than the daemon may take to start (issue 21), and nothing
    /// needs to wait for it. What a restart interrupts is taken at the next start.
    pub(crate) fn open(staging_dir: &Path) -> Result<Self, GatewayError> {
        let dir = staging_dir.join(DIR);
        let aside = staging_dir.join(format!("{ASIDE}{}", crate::clock::unix_nanos()));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("setting aside {}", dir.display()))(e)),
        }
        let old: Vec<PathBuf> = std::fs::read_dir(staging_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(ASIDE)))
            .map(|e| e.path())
            .collect();
        if !old.is_empty() {
            let removal = std::thread::Builder::new()
                .name("tidegate-clean-rm".into())
                .spawn(move || {
                    for d in old {
                        if let Err(e) = std::fs::remove_dir_all(&d) {
                            tracing::warn!("removing old clean copies in {}: {e}", d.display());
                        }
                    }
                });
            if let Err(e) = removal {
                tracing::warn!("old clean copies stay until the next start: {e}");
            }
        }
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        Ok(Self {
            dir,
            inner: Mutex::new(Inner::default()),
            max_copies: MAX_COPIES,
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Each update below leaves the maps consistent before anything can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Each adoption has its own file name, so that a removal deferred off the async workers
    /// never takes a newer copy of the same inode.
    fn path(&self, id: i64, generation: u64) -> PathBuf {
        self.dir.join(format!("{id}.{generation}"))
    }

    /// Bytes all copies take on disk.
    pub(crate) fn bytes(&self) -> u64 {
        self.inner().bytes
    }

    /// The copy of inode `id` if it holds the object `etag`, marked as just used.
    pub(crate) fn hit(&self, id: i64, etag: Option<&str>) -> Option<Hit> {
        let etag = etag?;
        let mut inner = self.inner();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(&id)?;
        if entry.etag != etag {
            return None;
        }
        let old = std::mem::replace(&mut entry.tick, tick);
        let generation = entry.generation;
        inner.order.remove(&old);
        inner.order.insert(tick, id);
        Some(Hit {
            path: self.path(id, generation),
            id,
            generation,
        })
    }

    /// Whether the copy a read used is still the one it found: not dropped, nor dropped and
    /// adopted again.
    pub(crate) fn still(&self, hit: &Hit) -> bool {
        self.inner()
            .entries
            .get(&hit.id)
            .is_some_and(|e| e.generation == hit.generation)
    }

    /// Moves inode `id`'s whole staging file `staging`, just recorded as uploaded as `etag`,
    /// here, replacing any older copy. Blocking; run by the step that records the upload.
    pub(crate) fn adopt(&self, id: i64, etag: &str, staging: &Path) -> Result<(), GatewayError> {
        // The older copy's entry goes first, so no read trusts it any more.
        if let Some(old) = self.forget(id) {
            let _ = std::fs::remove_file(old);
        }
        let generation = {
            let mut inner = self.inner();
            inner.tick += 1;
            inner.tick
        };
        let path = self.path(id, generation);
        std::fs::rename(staging, &path).map_err(io_err(format!(
            "keeping {} as a clean copy",
            staging.display()
        )))?;
        let bytes = allocated(&path);
        let mut inner = self.inner();
        inner.order.insert(generation, id);
        inner.bytes += bytes;
        inner.entries.insert(
            id,
            Entry {
                etag: etag.to_owned(),
                bytes,
                tick: generation,
                generation,
            },
        );
        let over = inner.evict(|inner| inner.entries.len() > self.max_copies);
        drop(inner);
        remove_all(
            &over
                .into_iter()
                .map(|(id, g)| self.path(id, g))
                .collect::<Vec<_>>(),
        );
        Ok(())
    }

    /// Drops inode `id`'s entry; returns the copy's path if there was one, for the caller to
    /// reuse or remove.
    pub(crate) fn forget(&self, id: i64) -> Option<PathBuf> {
        let mut inner = self.inner();
        let entry = inner.entries.remove(&id)?;
        inner.order.remove(&entry.tick);
        inner.bytes = inner.bytes.saturating_sub(entry.bytes);
        Some(self.path(id, entry.generation))
    }

    /// Takes inode `id`'s copy for staging if it holds `etag`; a copy of other content is
    /// dropped and removed (blocking).
    pub(crate) fn take(&self, id: i64, etag: Option<&str>) -> Option<PathBuf> {
        let matches = {
            let inner = self.inner();
            inner
                .entries
                .get(&id)
                .is_some_and(|e| Some(e.etag.as_str()) == etag)
        };
        let path = self.forget(id)?;
        if matches {
            return Some(path);
        }
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Drops the least recently used copies until all take at most `room` bytes; returns their
    /// paths, for the caller to remove off the async workers.
    pub(crate) fn evict_to(&self, room: u64) -> Vec<PathBuf> {
        let gone = self.inner().evict(|inner| inner.bytes > room);
        gone.into_iter().map(|(id, g)| self.path(id, g)).collect()
    }
}

impl Inner {
    /// Drops the least recently used entries while `over` holds; returns their inodes and
    /// generations (their files are the caller's to remove).
    fn evict(&mut self, over: impl Fn(&Self) -> bool) -> Vec<(i64, u64)> {
        let mut gone = Vec::new();
        while over(self) {
            let Some((_, id)) = self.order.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&id) {
                self.bytes = self.bytes.saturating_sub(entry.bytes);
                gone.push((id, entry.generation));
            }
        }
        gone
    }
}

/// Reads `offset..end` of a copy; unlike a staging file's read, a missing or short copy is an
/// error (the caller then reads the object), never zeros. Blocking.
pub(crate) fn read_copy(path: &Path, offset: u64, end: u64) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
    std::fs::File::open(path)?.read_exact_at(&mut buf, offset)?;
    Ok(bytes::Bytes::from(buf))
}

/// [`read_copy`] only if it need not wait for the disk: the bytes are all in the page cache
/// (`RWF_NOWAIT`), as they are for a copy read or written moments ago. `None` otherwise, and
/// on any error (the caller then takes the blocking path, which reads or fails properly).
pub(crate) fn read_copy_cached(path: &Path, offset: u64, end: u64) -> Option<bytes::Bytes> {
    let want = usize::try_from(end.checked_sub(offset)?).ok()?;
    let file = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; want];
    let mut done = 0;
    while done < want {
        let n = rustix::io::preadv2(
            &file,
            &mut [std::io::IoSliceMut::new(&mut buf[done..])],
            offset + done as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        )
        .ok()?;
        if n == 0 {
            return None;
        }
        done += n;
    }
    Some(bytes::Bytes::from(buf))
}

/// Removes evicted copies (blocking).
fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

impl Files {
    /// Evicts clean copies until they fit beside staging in the budget.
    pub(crate) fn trim_clean(&self) {
        let (Some(clean), Some(limit)) = (&self.clean, self.config.staging_limit) else {
            return;
        };
        let room = limit.saturating_sub(self.live().staged_bytes);
        remove_off_workers(clean.evict_to(room));
    }

    /// Drops inode `id`'s clean copy, if any (a removed or refreshed file).
    pub(crate) fn forget_clean(&self, id: i64) {
        if let Some(path) = self.clean.as_ref().and_then(|c| c.forget(id)) {
            remove_off_workers(vec![path]);
        }
    }
}

/// Removes dropped copies on the blocking pool (inline outside a runtime). Their entries are
/// gone already, and no later copy has the same name, so it does not matter when this runs.
fn remove_off_workers(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || remove_all(&paths));
        }
        Err(_) => remove_all(&paths),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(dir: &Path, name: &str, len: usize) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![7u8; len]).unwrap();
        p
    }

    #[test]
    fn a_cached_read_is_whole_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("copy");
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        // Just written: in the page cache.
        let got = read_copy_cached(&p, 4096, 12_288).unwrap();
        assert_eq!(&got[..], &bytes[4096..12_288]);
        // Past the end is not a short answer but none (the blocking path then fails it).
        assert!(read_copy_cached(&p, 16_384, 24_576).is_none());
        assert!(read_copy_cached(&dir.path().join("gone"), 0, 10).is_none());
    }

    #[test]
    fn a_copy_serves_only_its_etag_and_a_dropped_copy_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let copies = CleanCopies::open(dir.path()).unwrap();
        copies
            .adopt(1, "\"a\"", &staged(dir.path(), "1", 8192))
            .unwrap();
        assert!(copies.hit(1, Some("\"b\"")).is_none());
        assert!(copies.hit(1, None).is_none());
        let hit = copies.hit(1, Some("\"a\"")).unwrap();
        assert_eq!(read_copy(&hit.path, 0, 8192).unwrap().len(), 8192);
        assert!(
            read_copy(&hit.path, 8000, 9000).is_err(),
            "short reads are errors"
        );
        assert!(copies.still(&hit));
        assert!(copies.forget(1).is_some());
        assert!(!copies.still(&hit));
        // Adopted again (a new upload of the same inode): the old read's check still fails.
        copies
            .adopt(1, "\"a\"", &staged(dir.path(), "1", 4096))
            .unwrap();
        assert!(!copies.still(&hit));
        let fresh = copies.hit(1, Some("\"a\"")).unwrap();
        assert!(copies.still(&fresh));
    }

    /// Issue 21: the index holds at most `max_copies` entries, the least recently used going
    /// first, with their files.
    #[test]
    fn the_number_of_copies_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let copies = CleanCopies {
            max_copies: 3,
            ..CleanCopies::open(dir.path()).unwrap()
        };
        for id in 1..=5 {
            copies
                .adopt(id, "e", &staged(dir.path(), &id.to_string(), 10))
                .unwrap();
            if id == 3 {
                assert!(copies.hit(1, Some("e")).is_some());
            }
        }
        let kept: Vec<_> = (1..=5)
            .filter(|&id| copies.hit(id, Some("e")).is_some())
            .collect();
        assert_eq!(kept, [1, 4, 5]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("clean")).unwrap().count(),
            3
        );
    }

    #[test]
    fn eviction_drops_least_recently_used_first_and_counts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let copies = CleanCopies::open(dir.path()).unwrap();
        for id in 1..=3 {
            copies
                .adopt(id, "e", &staged(dir.path(), &id.to_string(), 4096))
                .unwrap();
        }
        let each = copies.bytes() / 3;
        assert!(each >= 4096);
        // 1 is used again, so 2 is now the oldest.
        assert!(copies.hit(1, Some("e")).is_some());
        let gone = copies.evict_to(2 * each);
        assert_eq!(gone.len(), 1);
        assert!(gone[0].ends_with("2.2"), "{gone:?}");
        assert_eq!(copies.bytes(), 2 * each);
        assert!(copies.hit(2, Some("e")).is_none());
        let gone = copies.evict_to(0);
        let names: Vec<_> = gone.iter().filter_map(|p| p.file_name()).collect();
        assert_eq!(names, ["3.3", "1.1"]);
        assert_eq!(copies.bytes(), 0);
    }

    #[test]
    fn take_hands_over_a_matching_copy_and_removes_another() {
        let dir = tempfile::tempdir().unwrap();
        let copies = CleanCopies::open(dir.path()).unwrap();
        copies.adopt(5, "x", &staged(dir.path(), "5", 100)).unwrap();
        let path = copies.take(5, Some("x")).unwrap();
        assert!(path.exists());
        assert_eq!(copies.bytes(), 0);
        copies.adopt(6, "x", &staged(dir.path(), "6", 100)).unwrap();
        let hit = copies.hit(6, Some("x")).unwrap();
        assert!(copies.take(6, Some("y")).is_none());
        assert!(!hit.path.exists());
    }

    #[test]
    fn opening_empties_what_an_earlier_run_left() {
        let dir = tempfile::tempdir().unwrap();
        let clean = dir.path().join("clean");
        std::fs::create_dir_all(&clean).unwrap();
        std::fs::write(clean.join("9"), b"stale").unwrap();
        let copies = CleanCopies::open(dir.path()).unwrap();
        assert!(!clean.join("9").exists());
        assert!(copies.hit(9, Some("e")).is_none());
        // The old copies go in the background, and every set-aside directory with them.
        for _ in 0..100 {
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            if names == ["clean"] {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("old copies still there");
    }
}
