//! Spare staging files: empty files made ahead of need by a thread of their own, so that a new
//! file's first WRITE renames one into place instead of allocating an inode on the request path.
//!
//! Why: on ext4 without a journal (the file system of this project's machines) an inode
//! allocation steps over every free inode of its block group that was deleted in the last few
//! seconds, or in the last five minutes while its inode table block is still dirty (the kernel's
//! `recently_deleted`), reading the inode table for each. After a burst of deletions nearby, one
//! `open(O_CREAT)` took 0.6–1 ms of CPU, 38% of tidegate's CPU for a small file's CREATE, WRITE
//! and COMMIT (docs/testing.md). A rename takes about 25 µs.
//!
//! A spare was created empty and never opened for writing, so taking one is the same as creating
//! the file: its name in the staging directory is not durable until a COMMIT syncs that
//! directory, as before, and a file lost to a power failure before then reads as the hole it
//! started as. Spares left by an earlier run are used again if they are still empty and have a
//! single name; anything else in their directory is removed at start.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The spares' directory, inside the staging directory (a rename never crosses file systems).
pub(crate) const DIR: &str = "spare";
/// Spares kept ready; the thread tops the pool up once it falls below [`LOW`].
const TARGET: usize = 256;
const LOW: usize = 192;
/// How long the thread waits before looking again when nothing asked, and backs off after a
/// failed create (a full disk, a permission problem): the request path then creates its files
/// itself, as it did without spares.
const IDLE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Spares {
    dir: PathBuf,
    state: Mutex<State>,
    wanted: Condvar,
}

#[derive(Debug, Default)]
struct State {
    ready: Vec<PathBuf>,
    /// The next spare's name; starts at the clock's nanoseconds so names never repeat across
    /// runs.
    next: u64,
}

impl Spares {
    /// Takes the spares an earlier run left in `staging_dir`'s [`DIR`] and starts the thread
    /// that keeps the pool filled. Spares are a speed-up only: when their directory cannot be
    /// made, there are none, and files are created as before.
    pub(crate) fn open(staging_dir: &Path) -> Arc<Self> {
        let dir = staging_dir.join(DIR);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("no spare staging files: creating {}: {e}", dir.display());
        }
        let spares = Arc::new(Self {
            state: Mutex::new(State {
                ready: reusable(&dir),
                next: u64::try_from(crate::clock::unix_nanos()).unwrap_or(0),
            }),
            dir,
            wanted: Condvar::new(),
        });
        let me = Arc::downgrade(&spares);
        if let Err(e) = std::thread::Builder::new()
            .name("tidegate-spares".into())
            .spawn(move || fill(&me))
        {
            tracing::warn!("no spare staging files: starting their thread: {e}");
        }
        spares
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each update leaves the list consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty spare file to rename into place, if one is ready.
    pub(crate) fn take(&self) -> Option<PathBuf> {
        let mut state = self.state();
        let spare = state.ready.pop();
        if state.ready.len() < LOW {
            self.wanted.notify_one();
        }
        spare
    }

    /// Spares ready now.
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.state().ready.len()
    }
}

/// The spares an earlier run left: empty regular files with one name. Anything else is
/// removed (a file with data or a second name is not a spare any more after a crash).
fn reusable(dir: &Path) -> Vec<PathBuf> {
    let mut ready = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == 0 && m.nlink() == 1 => ready.push(path),
            _ => {
                tracing::info!(file = %path.display(), "removing what is no longer a spare staging file");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    ready
}

/// The pool's thread: tops it up to [`TARGET`] whenever it falls below [`LOW`], and ends
/// once the pool is dropped.
fn fill(me: &Weak<Spares>) {
    loop {
        let Some(spares) = me.upgrade() else {
            return;
        };
        let (next, need) = {
            let mut state = spares.state();
            if state.ready.len() >= LOW {
                // Woken by a take, or after IDLE to see whether the pool is still wanted.
                let _ = spares.wanted.wait_timeout(state, IDLE);
                continue;
            }
            let need = TARGET - state.ready.len();
            let next = state.next;
            state.next += need as u64;
            (next, need)
        };
        for n in next..next + need as u64 {
            let path = spares.dir.join(n.to_string());
            let made = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match made {
                // Each one is ready at once: a writer may be waiting for the first.
                Ok(_) => spares.state().ready.push(path),
                Err(e) => {
                    tracing::debug!("creating spare staging file {}: {e}", path.display());
                    drop(spares);
                    std::thread::sleep(IDLE);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(spares: &Spares, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while spares.ready() < n {
            assert!(std::time::Instant::now() < deadline, "spares never filled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_pool_fills_and_hands_out_empty_files_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::open(dir.path());
        wait_for(&spares, TARGET);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..TARGET {
            let p = spares.take().unwrap();
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
            assert!(seen.insert(p));
        }
        // Taking below LOW woke the thread; it fills again.
        wait_for(&spares, LOW);
        assert!(!seen.contains(&spares.take().unwrap()));
    }

    #[test]
    fn a_restart_keeps_empty_single_named_spares_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let spare_dir = dir.path().join(DIR);
        std::fs::create_dir_all(&spare_dir).unwrap();
        std::fs::write(spare_dir.join("1"), b"").unwrap();
        std::fs::write(spare_dir.join("2"), b"data of a file").unwrap();
        std::fs::write(spare_dir.join("3"), b"").unwrap();
        std::fs::hard_link(spare_dir.join("3"), dir.path().join("42")).unwrap();
        let kept = reusable(&spare_dir);
        assert_eq!(kept, vec![spare_dir.join("1")]);
        assert!(!spare_dir.join("2").exists());
        assert!(!spare_dir.join("3").exists());
        // The other name of the linked file is untouched.
        assert!(dir.path().join("42").exists());
    }

    #[test]
    fn the_thread_ends_with_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::open(dir.path());
        // Filled: the thread now waits, holding the pool, until a take or IDLE.
        wait_for(&spares, TARGET);
        let weak = Arc::downgrade(&spares);
        drop(spares);
        let deadline = std::time::Instant::now() + IDLE * 5;
        while weak.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread kept the pool"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
