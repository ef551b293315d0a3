//! The cache engine through its public API: a model-based test against a plain in-memory disk,
//! torn-journal recovery, back-pressure with the bucket down, group commit, and upload
//! coalescing.

// clippy's allow-unwrap-in-tests covers #[test] fns only, not this binary's helpers.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tidegate_cache::{BoxFuture, Cache, CacheConfig, Sink, SinkError, SinkErrorKind};

/// A bucket in a map that can be switched to answer `Unavailable`, or to store an upload and
/// then never answer (the process dies between the PUT and the cache hearing of it).
#[derive(Default)]
struct MemSink {
    objects: Mutex<HashMap<String, Bytes>>,
    down: AtomicBool,
    hang_after_store: AtomicBool,
    uploads: AtomicU64,
}

impl MemSink {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    fn get(&self, name: &str) -> Option<Bytes> {
        self.objects.lock().unwrap().get(name).cloned()
    }
    fn check_up(&self) -> Result<(), SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::new(SinkErrorKind::Unavailable, "bucket down"));
        }
        Ok(())
    }
}

impl Sink for MemSink {
    fn fetch(&self, name: &str) -> BoxFuture<'_, Result<Option<Bytes>, SinkError>> {
        let name = name.to_owned();
        Box::pin(async move {
            // Yield like a network call would, so other operations interleave with this one.
            tokio::task::yield_now().await;
            self.check_up().map(|()| self.get(&name))
        })
    }
    fn upload(&self, name: &str, data: Bytes) -> BoxFuture<'_, Result<(), SinkError>> {
        let name = name.to_owned();
        Box::pin(async move {
            tokio::task::yield_now().await;
            self.check_up()?;
            self.objects.lock().unwrap().insert(name, data);
            self.uploads.fetch_add(1, Ordering::SeqCst);
            if self.hang_after_store.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    }
}

const OBJ: u64 = 64 << 10;

fn config(dir: &Path, cache_capacity: u64, buffer_capacity: u64) -> CacheConfig {
    let mut c = CacheConfig::new(
        dir.join("cache"),
        cache_capacity,
        dir.join("buffer"),
        buffer_capacity,
    );
    c.object_size = OBJ;
    c.upload_delay = Duration::ZERO;
    c.retry_initial = Duration::from_millis(1);
    c.retry_max = Duration::from_millis(20);
    c
}

/// Nothing settles or ages: objects are uploaded only when the buffer is half full, a writer
/// waits, or `drain`/`upload_now` asks; until then reads of written data come from the journal.
fn lazy_config(dir: &Path, cache_capacity: u64, buffer_capacity: u64) -> CacheConfig {
    let mut c = config(dir, cache_capacity, buffer_capacity);
    c.upload_delay = Duration::from_secs(3600);
    c.upload_max_age = Duration::from_secs(3600);
    c
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        obj: u8,
        offset: u64,
        len: u64,
        byte: u8,
    },
    Read {
        obj: u8,
        offset: u64,
        len: u64,
    },
    Discard {
        obj: u8,
        offset: u64,
        len: u64,
    },
    Flush,
    CrashAndRecover,
    /// Uploads reach the bucket, then the process dies before the cache records them.
    CrashAfterUpload,
    UploadNow {
        obj: u8,
    },
    Drain,
    SinkDown,
    SinkUp,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    // Mostly unaligned, sometimes whole pages, up to a quarter object.
    (0..OBJ, 1..=(OBJ / 4)).prop_map(|(o, l)| (o, l.min(OBJ - o)))
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..6u8, range(), any::<u8>()).prop_map(|(obj, (offset, len), byte)| Step::Write { obj, offset, len, byte }),
        5 => (0..6u8, range()).prop_map(|(obj, (offset, len))| Step::Read { obj, offset, len }),
        1 => (0..6u8, range()).prop_map(|(obj, (offset, len))| Step::Discard { obj, offset, len }),
        1 => Just(Step::Flush),
        1 => Just(Step::CrashAndRecover),
        1 => Just(Step::CrashAfterUpload),
        1 => (0..6u8).prop_map(|obj| Step::UploadNow { obj }),
        1 => Just(Step::Drain),
        1 => Just(Step::SinkDown),
        1 => Just(Step::SinkUp),
    ]
}

/// Bytes that differ along the write, so a read from the wrong place in a record shows.
fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ ((i.wrapping_mul(0x9E37_79B9) >> 13) as u8))
        .collect()
}

fn name(obj: u8) -> String {
    format!("v1/{obj:016x}")
}

async fn run_model(lazy: bool, steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    // Room for four objects in the cache and two to three in the buffer: eviction and
    // back-pressure both happen.
    let cfg = if lazy {
        lazy_config(dir.path(), 4 * OBJ, 3 * OBJ)
    } else {
        config(dir.path(), 4 * OBJ, 3 * OBJ)
    };
    let sink = Arc::new(MemSink::default());
    let mut cache = Cache::open(cfg.clone(), sink.clone()).unwrap();
    let mut model: HashMap<String, Vec<u8>> = HashMap::new();
    let mut down = false;
    for step in steps {
        match step {
            Step::Write {
                obj,
                offset,
                len,
                byte,
            } => {
                let data = pattern(byte, len);
                let n = name(obj);
                let w = tokio::time::timeout(
                    Duration::from_millis(100),
                    cache.write(&n, offset, &data),
                )
                .await;
                if let Ok(r) = w {
                    r.unwrap();
                } else {
                    // Blocked on a full buffer: only possible while the bucket is down. The
                    // cancelled write was not applied; bring the bucket back and redo it.
                    assert!(down, "a write blocked while the bucket was up");
                    sink.set_down(false);
                    down = false;
                    cache.write(&n, offset, &data).await.unwrap();
                }
                let m = model.entry(n).or_insert_with(|| vec![0; OBJ as usize]);
                m[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            }
            Step::Discard { obj, offset, len } => {
                let n = name(obj);
                let w = tokio::time::timeout(
                    Duration::from_millis(100),
                    cache.discard(&n, offset, len),
                )
                .await;
                if let Ok(r) = w {
                    r.unwrap();
                } else {
                    assert!(down, "a discard blocked while the bucket was up");
                    sink.set_down(false);
                    down = false;
                    cache.discard(&n, offset, len).await.unwrap();
                }
                let m = model.entry(n).or_insert_with(|| vec![0; OBJ as usize]);
                m[offset as usize..(offset + len) as usize].fill(0);
            }
            Step::Read { obj, offset, len } => {
                let n = name(obj);
                match cache.read(&n, offset, len).await {
                    Ok(got) => {
                        let zeros = vec![0; OBJ as usize];
                        let want = &model.get(&n).unwrap_or(&zeros)
                            [offset as usize..(offset + len) as usize];
                        assert!(
                            got[..] == want[..],
                            "read {n} {offset}+{len} differs from the model"
                        );
                    }
                    Err(e) => assert!(
                        down && e.sink_kind() == Some(SinkErrorKind::Unavailable),
                        "read failed with the bucket up: {e}"
                    ),
                }
            }
            Step::Flush => cache.flush().await.unwrap(),
            Step::CrashAndRecover => {
                // No flush, no close: the process dies; the page cache keeps what was written.
                drop(cache);
                cache = Cache::open(cfg.clone(), sink.clone()).unwrap();
            }
            Step::CrashAfterUpload => {
                sink.hang_after_store.store(true, Ordering::SeqCst);
                let before = sink.uploads.load(Ordering::SeqCst);
                // Drain starts uploads of everything dirty; they store and never return. The
                // wait outlasts the retry backoff (at most `retry_max`, 20 ms) of an upload that
                // failed while the bucket was down just before.
                let _ = tokio::time::timeout(Duration::from_millis(100), cache.drain()).await;
                if !down {
                    assert!(
                        cache.stats().dirty_bytes == 0
                            || sink.uploads.load(Ordering::SeqCst) > before,
                        "no upload started while the bucket was up"
                    );
                }
                drop(cache);
                sink.hang_after_store.store(false, Ordering::SeqCst);
                cache = Cache::open(cfg.clone(), sink.clone()).unwrap();
            }
            Step::UploadNow { obj } => cache.upload_now(&name(obj)),
            Step::Drain => {
                sink.set_down(false);
                down = false;
                tokio::time::timeout(Duration::from_secs(30), cache.drain())
                    .await
                    .expect("drain finishes with the bucket up")
                    .unwrap();
                for (n, want) in &model {
                    let got = sink
                        .get(n)
                        .unwrap_or_else(|| Bytes::from(vec![0; OBJ as usize]));
                    assert!(
                        got[..] == want[..],
                        "bucket object {n} differs from the model after drain"
                    );
                }
                assert_eq!(cache.stats().dirty_bytes, 0);
            }
            Step::SinkDown => {
                sink.set_down(true);
                down = true;
            }
            Step::SinkUp => {
                sink.set_down(false);
                down = false;
            }
        }
    }
    let stats = cache.stats();
    assert!(stats.buffer_bytes <= stats.buffer_capacity, "{stats:?}");
    cache.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn cache_matches_a_plain_model(lazy: bool, steps in prop::collection::vec(step(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_model(lazy, steps));
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("buffer"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs
}

/// Record layout of the torn test's writes: 32-byte header, 19-byte name, 100 bytes, CRC.
const TORN_RECORD: u64 = 32 + 19 + 100 + 4;
const TORN_WRITES: u64 = 40;

/// Writes `TORN_WRITES` distinct records, flushes, closes, then damages the journal with
/// `damage`; reopening must yield exactly the first `expect` writes, and keep new ones.
async fn torn_case(damage: impl FnOnce(&Path), expect: u64) {
    let dir = tempfile::tempdir().unwrap();
    // Nothing reaches the bucket: every write survives only through the journal.
    let cfg = lazy_config(dir.path(), 64 * OBJ, 16 * OBJ);
    let sink = Arc::new(MemSink::default());
    let cache = Cache::open(cfg.clone(), sink.clone()).unwrap();
    for i in 0..TORN_WRITES {
        cache
            .write(&name((i % 4) as u8), i * 100, &[i as u8 + 1; 100])
            .await
            .unwrap();
    }
    cache.flush().await.unwrap();
    cache.close().await;
    let segs = segments(dir.path());
    damage(segs.last().unwrap());
    let cache = Cache::open(cfg.clone(), sink.clone()).unwrap();
    let mut present = Vec::new();
    for i in 0..TORN_WRITES {
        let got = cache
            .read(&name((i % 4) as u8), i * 100, 100)
            .await
            .unwrap();
        if got[..] == [i as u8 + 1; 100] {
            present.push(i);
        } else {
            assert!(got.iter().all(|&b| b == 0), "write {i} came back garbled");
        }
    }
    assert_eq!(
        present,
        (0..expect).collect::<Vec<_>>(),
        "recovery is not the expected prefix"
    );
    // Writes after recovery survive the next recovery: the cut was made durable.
    cache.write_durable("after", 0, &[9; 10]).await.unwrap();
    drop(cache);
    let cache = Cache::open(cfg, sink).unwrap();
    assert_eq!(&cache.read("after", 0, 10).await.unwrap()[..], &[9; 10]);
    assert_eq!(
        cache.read(&name(0), 0, 100).await.unwrap()[0],
        if expect > 0 { 1 } else { 0 }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn torn_tail_recovers_exactly_the_records_before_it(cut in 0..(16 + TORN_WRITES * TORN_RECORD)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let expect = cut.saturating_sub(16) / TORN_RECORD;
        rt.block_on(torn_case(|seg| {
            std::fs::OpenOptions::new().write(true).open(seg).unwrap().set_len(cut).unwrap();
        }, expect));
    }

    #[test]
    fn flipped_byte_ends_the_journal_at_its_record(record in 0..TORN_WRITES, at in 0..TORN_RECORD, bit in 0..8u8) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(torn_case(|seg| {
            let mut bytes = std::fs::read(seg).unwrap();
            bytes[(16 + record * TORN_RECORD + at) as usize] ^= 1 << bit;
            std::fs::write(seg, bytes).unwrap();
        }, record));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_waits_while_bucket_is_down_then_completes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 * OBJ, 3 * OBJ);
    let sink = Arc::new(MemSink::default());
    sink.set_down(true);
    let cache = Cache::open(cfg, sink.clone()).unwrap();
    let writer = {
        let cache = cache.clone();
        tokio::spawn(async move {
            for i in 0..8u8 {
                cache
                    .write(&name(i), 0, &vec![i + 1; OBJ as usize])
                    .await
                    .unwrap();
            }
        })
    };
    let mut writer = writer;
    // The buffer holds about three objects; the writer must be waiting, not failing.
    let mut waited = false;
    for _ in 0..200 {
        if cache.stats().writers_waiting > 0 {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        waited,
        "no writer waited for buffer space: {:?}",
        cache.stats()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut writer)
            .await
            .is_err(),
        "the write completed while the bucket was down and the buffer full"
    );
    assert!(cache.stats().upload_errors > 0);
    sink.set_down(false);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .unwrap()
        .unwrap();
    cache.drain().await.unwrap();
    for i in 0..8u8 {
        assert_eq!(
            sink.get(&name(i)).unwrap()[..],
            vec![i + 1; OBJ as usize][..]
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.writers_waiting, 0);
    assert!(stats.buffer_bytes <= stats.buffer_capacity);
    cache.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lazy_config(dir.path(), 64 * OBJ, 16 * OBJ);
    let cache = Cache::open(cfg, Arc::new(MemSink::default())).unwrap();
    for i in 0..16u64 {
        cache.write(&name(1), i * 4096, &[7; 4096]).await.unwrap();
    }
    let flushes: Vec<_> = (0..16)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.flush().await.unwrap() })
        })
        .collect();
    for f in flushes {
        f.await.unwrap();
    }
    let stats = cache.stats();
    assert_eq!(stats.flushes, 16);
    assert!(stats.fsyncs < stats.flushes, "{stats:?}");
    cache.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch_and_never_overwrite_local_data() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 * OBJ, 16 * OBJ);
    let sink = Arc::new(MemSink::default());
    sink.objects
        .lock()
        .unwrap()
        .insert(name(3), Bytes::from(vec![5; OBJ as usize]));
    let cache = Cache::open(cfg, sink.clone()).unwrap();
    cache.write(&name(3), 10, &[8; 10]).await.unwrap();
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.read(&name(3), 0, 30).await.unwrap() })
        })
        .collect();
    for r in reads {
        let got = r.await.unwrap();
        assert_eq!(&got[..10], &[5; 10]);
        assert_eq!(&got[10..20], &[8; 10]);
        assert_eq!(&got[20..], &[5; 10]);
    }
    cache.drain().await.unwrap();
    let up = sink.get(&name(3)).unwrap();
    assert_eq!(
        &up[5..25],
        &[[5; 5], [8; 5]]
            .concat()
            .iter()
            .chain([8u8; 5].iter())
            .chain([5u8; 5].iter())
            .copied()
            .collect::<Vec<_>>()[..]
    );
    cache.close().await;
}

/// A lazy cache (see `lazy_config`) over an empty bucket.
fn open_lazy(dir: &Path) -> (CacheConfig, Arc<MemSink>, Cache) {
    let cfg = lazy_config(dir, 64 * OBJ, 16 * OBJ);
    let sink = Arc::new(MemSink::default());
    let cache = Cache::open(cfg.clone(), sink.clone()).unwrap();
    (cfg, sink, cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_the_journal_only_and_read_back_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, sink, cache) = open_lazy(dir.path());
    cache.write(&name(1), 0, &[1; 8192]).await.unwrap();
    cache.write(&name(1), 4096, &[2; 100]).await.unwrap();
    cache.discard(&name(1), 6000, 1000).await.unwrap();
    let mut want = vec![1u8; 8192];
    want[4096..4196].fill(2);
    want[6000..7000].fill(0);
    assert_eq!(&cache.read(&name(1), 0, 8192).await.unwrap()[..], &want[..]);
    // The cache area holds no data yet: the journal is the only copy written.
    let objects = dir.path().join("cache/objects");
    let held: u64 = std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(held, 0);
    // Replay rebuilds the same view from the journal.
    cache.flush().await.unwrap();
    drop(cache);
    let cache = Cache::open(cfg, sink.clone()).unwrap();
    assert_eq!(&cache.read(&name(1), 0, 8192).await.unwrap()[..], &want[..]);
    assert_eq!(sink.uploads.load(Ordering::SeqCst), 0);
    cache.drain().await.unwrap();
    assert_eq!(&sink.get(&name(1)).unwrap()[..8192], &want[..]);
    // After the upload the data is clean in the cache file.
    assert_eq!(&cache.read(&name(1), 0, 8192).await.unwrap()[..], &want[..]);
    assert_eq!(cache.stats().misses, 0);
    cache.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_of_an_unsettled_object_are_coalesced_into_one_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sink, cache) = open_lazy(dir.path());
    // 100 x 4 KiB stays under half of the 1 MiB buffer: no urgency either.
    for i in 0..100u64 {
        let at = (i * 7919 % 16) * 4096;
        cache.write(&name(2), at, &[i as u8; 4096]).await.unwrap();
    }
    assert_eq!(sink.uploads.load(Ordering::SeqCst), 0);
    cache.upload_now(&name(2));
    cache.drain().await.unwrap();
    assert_eq!(sink.uploads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().uploads, 1);
    cache.close().await;
}

/// A cache with a 300 ms settle time and the given maximum age, on a sink that keeps uploads.
fn settling(dir: &Path, max_age: Duration) -> (Arc<MemSink>, Cache) {
    let mut cfg = config(dir, 64 * OBJ, 64 * OBJ);
    cfg.upload_delay = Duration::from_millis(300);
    cfg.upload_max_age = max_age;
    let sink = Arc::new(MemSink::default());
    let cache = Cache::open(cfg, sink.clone()).unwrap();
    (sink, cache)
}

/// Reads defer uploads like writes do: a dirty object read again and again waits until the
/// reads pause for the settle time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_wait_for_reads_to_pause_too() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, cache) = settling(dir.path(), Duration::from_secs(3600));
    cache.write(&name(1), 0, &[1; 4096]).await.unwrap();
    // Object 1 read back every 100 ms for 1.5 s (a verify pass right after a backup): no pause.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            &cache.read(&name(1), 0, 4096).await.unwrap()[..],
            &[1; 4096]
        );
    }
    assert!(sink.get(&name(1)).is_none(), "uploaded during the reads");
    let start = std::time::Instant::now();
    while sink.get(&name(1)).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not uploaded after the reads paused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cache.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_write_survives_losing_the_unsynced_write_that_overwrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, sink, cache) = open_lazy(dir.path());
    // Two whole-object records never share a segment: the second seals the first's segment,
    // which is when overwritten records are reclaimed.
    cache
        .write_durable(&name(0), 0, &vec![1; OBJ as usize])
        .await
        .unwrap();
    cache
        .write(&name(0), 0, &vec![2; OBJ as usize])
        .await
        .unwrap();
    drop(cache);
    // The crash loses what was never synced: the newest segment.
    let segs = segments(dir.path());
    std::fs::remove_file(segs.last().unwrap()).unwrap();
    let cache = Cache::open(cfg, sink).unwrap();
    let got = cache.read(&name(0), 0, OBJ).await.unwrap();
    assert!(
        got.iter().all(|&b| b == 1),
        "the acknowledged write was lost"
    );
    cache.close().await;
}

/// A rewritten working set takes its journal space once: records overwritten before any flush
/// covered them were never promised durable, so sealing a segment frees them without an upload
/// (ADR 0010). With the bucket down and room for three records, forty rewrites never wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unflushed_rewrites_free_their_journal_space_without_an_upload() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lazy_config(dir.path(), 64 * OBJ, 3 * OBJ);
    let sink = Arc::new(MemSink::default());
    sink.set_down(true);
    let cache = Cache::open(cfg.clone(), sink.clone()).unwrap();
    for i in 0..40u8 {
        tokio::time::timeout(
            Duration::from_secs(5),
            cache.write(&name(0), 0, &vec![i + 1; OBJ as usize]),
        )
        .await
        .expect("a rewrite waited for an upload")
        .unwrap();
    }
    assert_eq!(sink.uploads.load(Ordering::SeqCst), 0);
    assert_eq!(cache.stats().writers_waiting, 0);
    // Once flushed, the newest write is promised and survives a crash.
    cache.flush().await.unwrap();
    drop(cache);
    let cache = Cache::open(cfg, sink.clone()).unwrap();
    let got = cache.read(&name(0), 0, OBJ).await.unwrap();
    assert!(got.iter().all(|&b| b == 40), "the flushed rewrite was lost");
    sink.set_down(false);
    cache.drain().await.unwrap();
    assert!(sink.get(&name(0)).unwrap().iter().all(|&b| b == 40));
    cache.close().await;
}

/// A settled object waits while writes to other objects keep coming, then goes up once they
/// pause for the settle time; its maximum age bounds the wait under writes that never pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_wait_for_writes_to_pause_but_not_past_the_maximum_age() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, cache) = settling(dir.path(), Duration::from_secs(3600));
    cache.write(&name(1), 0, &[1; 4096]).await.unwrap();
    // Another object written every 100 ms for 1.5 s: object 1 settled long ago, but no pause.
    for i in 0..15u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cache
            .write(&name(2), (i % 8) * 4096, &[2; 4096])
            .await
            .unwrap();
    }
    assert!(sink.get(&name(1)).is_none(), "uploaded during the burst");
    // The pause: both go up within a few settle times.
    let start = std::time::Instant::now();
    while sink.get(&name(1)).is_none() || sink.get(&name(2)).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not uploaded after the pause"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cache.close().await;

    // Writes that never pause: the maximum age still sends object 3 up.
    let dir = tempfile::tempdir().unwrap();
    let (sink, cache) = settling(dir.path(), Duration::from_millis(600));
    cache.write(&name(3), 0, &[3; 4096]).await.unwrap();
    let start = std::time::Instant::now();
    while sink.get(&name(3)).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the maximum age did not apply"
        );
        cache.write(&name(4), 0, &[4; 4096]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    cache.close().await;
}

/// A bucket whose uploads finish only as the test allows them, one permit each.
struct GatedSink {
    permits: tokio::sync::Semaphore,
    done: AtomicU64,
}

impl Sink for GatedSink {
    fn fetch(&self, _name: &str) -> BoxFuture<'_, Result<Option<Bytes>, SinkError>> {
        Box::pin(async { Ok(None) })
    }
    fn upload(&self, _name: &str, _data: Bytes) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.permits.acquire().await.unwrap().forget();
            self.done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// Lets one more upload finish and gives the cache a moment to act on it.
async fn release_one(sink: &GatedSink, released: &mut u64) {
    sink.permits.add_permits(1);
    *released += 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sink.done.load(Ordering::SeqCst) < *released && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Issue 20: a full buffer admits a waiting writer as soon as uploads free one journal
/// segment (a few objects), not after a large part of the buffer has drained; `room_for`
/// waits (counted as a waiting writer) and returns at the same point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_20_a_full_buffer_admits_writers_at_the_pace_of_uploads() {
    let dir = tempfile::tempdir().unwrap();
    // 64 objects' worth of buffer: 32 segments of two records each.
    let cfg = lazy_config(dir.path(), 256 * OBJ, 64 * OBJ);
    let sink = Arc::new(GatedSink {
        permits: tokio::sync::Semaphore::new(0),
        done: AtomicU64::new(0),
    });
    let cache = Cache::open(cfg, sink.clone()).unwrap();
    // Fill the buffer with distinct objects until a write has to wait.
    let mut i = 0u16;
    let blocked = loop {
        let c = cache.clone();
        let mut w =
            tokio::spawn(async move { c.write(&format!("o{i}"), 0, &vec![1; OBJ as usize]).await });
        i += 1;
        assert!(i < 200, "the buffer never filled: {:?}", cache.stats());
        // Done, or counted as waiting: no timing guess, the machine may be slow.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !w.is_finished() && cache.stats().writers_waiting == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "write neither done nor waiting"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if w.is_finished() {
            (&mut w).await.unwrap().unwrap();
        } else {
            break w;
        }
    };
    let room = {
        let c = cache.clone();
        tokio::spawn(async move { c.room_for(OBJ).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().writers_waiting < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!room.is_finished() && !blocked.is_finished());
    // Let uploads finish one at a time until the writer is admitted, then until `room_for` is.
    let mut released = 0;
    while !blocked.is_finished() {
        assert!(
            released < 4,
            "{released} uploads and the writer still waits ({i} objects)"
        );
        release_one(&sink, &mut released).await;
    }
    let for_writer = released;
    while !room.is_finished() {
        assert!(
            released - for_writer < 4,
            "{released} uploads and room_for still waits ({i} objects)"
        );
        release_one(&sink, &mut released).await;
    }
    blocked.await.unwrap().unwrap();
    room.await.unwrap().unwrap();
    sink.permits.add_permits(1000);
    cache.drain().await.unwrap();
    cache.close().await;
}
