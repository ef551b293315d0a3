//! The problems an operator must hear about, worded once for `tidegate status` and the API's
//! `/api/v1/status` so the two never disagree (issue 9: health and alarms).

use std::path::{Path, PathBuf};

use crate::config::ByteSize;
use crate::config::sizing::{FsSpace, fs_space};

/// Space the data dir's filesystem keeps free beyond what the cache areas may still take: the
/// catalog and its WAL, file-gateway staging, snapshot stages and logs live there.
const DATA_DIR_RESERVE: u64 = 256 << 20;

/// One directory the gateway fills, with how far it may still grow.
#[derive(Debug, Clone)]
pub struct Disk {
    pub what: &'static str,
    pub path: PathBuf,
    /// Bytes it may still grow by before it reaches its configured size; `None` for the data
    /// dir, which has no configured size and gets `DATA_DIR_RESERVE` instead.
    pub growth: Option<u64>,
}

/// What the checks look at; gathered by the daemon (live) or by `status` (from the daemon's
/// status file and the disks).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub writers_waiting: u64,
    pub buffer_bytes: u64,
    pub buffer_capacity: u64,
    pub upload_errors: u64,
    pub dirty_bytes: u64,
    pub integrity_failures: u64,
    /// One sentence per damaged tape (its error names it).
    pub damaged_tapes: Vec<String>,
    pub disks: Vec<Disk>,
}

/// The damaged tapes of the catalog, as `Inputs::damaged_tapes` wants them.
pub fn damaged_tapes(tapes: &[crate::catalog::tapes::TapeRow]) -> Vec<String> {
    tapes
        .iter()
        .filter(|t| t.state == crate::catalog::tapes::TapeState::Damaged)
        .map(|t| {
            t.error
                .clone()
                .unwrap_or_else(|| format!("tape {} is damaged", t.barcode))
        })
        .collect()
}

/// The cache, the upload buffer (each with what it may still grow by, from how much it holds)
/// and the data dir.
pub fn disks(config: &crate::config::Config, cache_used: u64, buffer_used: u64) -> Vec<Disk> {
    vec![
        Disk {
            what: "cache",
            path: config.cache.path.clone(),
            growth: Some(config.cache.size.bytes().saturating_sub(cache_used)),
        },
        Disk {
            what: "upload buffer",
            path: config.upload_buffer.path.clone(),
            growth: Some(
                config
                    .upload_buffer
                    .size
                    .bytes()
                    .saturating_sub(buffer_used),
            ),
        },
        Disk {
            what: "data dir",
            path: config.data_dir.clone(),
            growth: None,
        },
    ]
}

/// Every problem, most urgent first, as sentences an operator can act on.
pub fn problems(i: &Inputs) -> Vec<String> {
    problems_with(i, fs_space)
}

fn problems_with(i: &Inputs, space: impl Fn(&Path) -> Option<FsSpace>) -> Vec<String> {
    let mut out = Vec::new();
    if i.writers_waiting > 0 {
        out.push(format!(
            "{} writer(s) held: the upload buffer is full of data not yet in the bucket",
            i.writers_waiting
        ));
    } else if i.buffer_capacity > 0 && i.buffer_bytes * 10 >= i.buffer_capacity * 9 {
        out.push(format!(
            "the upload buffer is over 90% full ({} of {}); writers will be held when it fills",
            ByteSize(i.buffer_bytes),
            ByteSize(i.buffer_capacity)
        ));
    }
    if i.upload_errors > 0 && i.dirty_bytes > 0 {
        out.push(format!(
            "{} upload error(s) with {} waiting: is the bucket reachable?",
            i.upload_errors,
            ByteSize(i.dirty_bytes)
        ));
    }
    if i.integrity_failures > 0 {
        out.push(format!(
            "{} integrity failure(s) recorded; run `tidegate scrub`",
            i.integrity_failures
        ));
    }
    out.extend(i.damaged_tapes.iter().cloned());
    out.extend(disk_problems(&i.disks, space));
    out
}

/// The upload buffer counts as small for the volumes' writes once a sample finds it this full
/// (percent): writers are held when it fills, and the buffer exists so that they are not.
const BUFFER_SMALL_PERCENT: u64 = 90;

/// Advice when the history (the last hour) shows the upload buffer near full: the install
/// guide's rule, a buffer the size of the largest burst less what the uplink carries meanwhile,
/// measured as the largest rise of client writes over bucket uploads. `None` when it fits.
pub fn buffer_warning(
    samples: &[crate::frontend::api::types::Sample],
    capacity: u64,
) -> Option<String> {
    let peak = samples.iter().map(|s| s.buffer_bytes).max()?;
    if capacity == 0 || peak.saturating_mul(100) < capacity.saturating_mul(BUFFER_SMALL_PERCENT) {
        return None;
    }
    // Backlog = writes - uploads (cumulative); its largest rise over any earlier point is the
    // largest burst the buffer had to hold.
    let mut lowest = i128::MAX;
    let mut burst = 0i128;
    for s in samples {
        let backlog = i128::from(s.write_bytes) - i128::from(s.upload_bytes);
        lowest = lowest.min(backlog);
        burst = burst.max(backlog - lowest);
    }
    let burst = u64::try_from(burst).unwrap_or(0);
    Some(format!(
        "the upload buffer ({}) reached {} in the last hour: volume writes ran up to {} ahead \
         of uploads, and writers are held when it fills; give upload_buffer.size at least the \
         largest burst less what the uplink carries during it (docs/install.md, Sizing)",
        ByteSize(capacity),
        ByteSize(peak),
        ByteSize(burst)
    ))
}

/// Disks sharing a filesystem share its free space: the cache and the upload buffer on one disk
/// must both fit. A filesystem is nearly full when its free space is less than what the areas on
/// it may still take, plus the data dir's reserve if the data dir is there too.
fn disk_problems(disks: &[Disk], space: impl Fn(&Path) -> Option<FsSpace>) -> Vec<String> {
    let mut filesystems: Vec<(FsSpace, Vec<&Disk>)> = Vec::new();
    for d in disks {
        let Some(s) = space(&d.path) else { continue };
        match filesystems.iter_mut().find(|(f, _)| f.id == s.id) {
            Some((_, on)) => on.push(d),
            None => filesystems.push((s, vec![d])),
        }
    }
    let mut out = Vec::new();
    for (fs, on) in filesystems {
        let needed: u64 = on
            .iter()
            .map(|d| d.growth.unwrap_or(DATA_DIR_RESERVE))
            .sum();
        if fs.free >= needed {
            continue;
        }
        let names: Vec<String> = on
            .iter()
            .map(|d| format!("{} ({})", d.what, d.path.display()))
            .collect();
        out.push(format!(
            "disk nearly full: the filesystem holding {} has {} free of {}, and needs {} \
             (what the cache areas may still grow by, plus {} for the catalog and staging); \
             free space there or shrink the configured sizes",
            names.join(", "),
            ByteSize(fs.free),
            ByteSize(fs.total),
            ByteSize(needed),
            ByteSize(DATA_DIR_RESERVE)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(what: &'static str, path: &str, growth: Option<u64>) -> Disk {
        Disk {
            what,
            path: PathBuf::from(path),
            growth,
        }
    }

    /// `/a` and `/b` are one filesystem, `/c` another.
    fn space(free_ab: u64, free_c: u64) -> impl Fn(&Path) -> Option<FsSpace> {
        move |p: &Path| {
            let (id, free) = if p.starts_with("/c") {
                (2, free_c)
            } else {
                (1, free_ab)
            };
            Some(FsSpace {
                id,
                free,
                total: 100 << 30,
            })
        }
    }

    #[test]
    fn a_filesystem_is_nearly_full_when_its_areas_cannot_grow_to_their_size() {
        let disks = [
            disk("cache", "/a/cache", Some(700 << 20)),
            disk("upload buffer", "/b/buf", Some(800 << 20)),
            disk("data dir", "/c", None),
        ];
        // 1.4 GiB free for 1.5 GiB of growth on one filesystem: a problem naming both areas.
        let p = disk_problems(&disks, space(1400 << 20, 1 << 30));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("cache (/a/cache)") && p[0].contains("upload buffer (/b/buf)"));
        assert!(!p[0].contains("data dir"), "{}", p[0]);
        // Enough for both: fine. The data dir wants its reserve.
        assert!(disk_problems(&disks, space(2 << 30, 1 << 30)).is_empty());
        let p = disk_problems(&disks, space(2 << 30, 100 << 20));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("data dir (/c)"), "{}", p[0]);
        // A disk that cannot be measured is skipped, not reported as full.
        assert!(disk_problems(&disks, |_: &Path| None).is_empty());
    }

    #[test]
    fn held_writers_outrank_a_nearly_full_buffer_and_errors_need_waiting_data() {
        let mut i = Inputs {
            buffer_bytes: 95,
            buffer_capacity: 100,
            ..Inputs::default()
        };
        let none = |_: &Path| None;
        let p = problems_with(&i, none);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("over 90% full"), "{}", p[0]);
        i.writers_waiting = 2;
        i.upload_errors = 3;
        let p = problems_with(&i, none);
        assert_eq!(p.len(), 1, "errors with nothing dirty are history: {p:?}");
        assert!(p[0].starts_with("2 writer(s) held"), "{}", p[0]);
        i.dirty_bytes = 1 << 20;
        i.integrity_failures = 1;
        let p = problems_with(&i, none);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[1].contains("is the bucket reachable"), "{}", p[1]);
        assert!(p[2].contains("tidegate scrub"), "{}", p[2]);
    }

    #[test]
    fn measures_a_real_filesystem_through_a_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = fs_space(&dir.path().join("not/yet")).expect("statvfs");
        assert!(s.total > 0 && s.free <= s.total, "{s:?}");
        assert_eq!(Some(s.id), fs_space(dir.path()).map(|s| s.id));
    }

    fn sample(
        write_bytes: u64,
        upload_bytes: u64,
        buffer_bytes: u64,
    ) -> crate::frontend::api::types::Sample {
        crate::frontend::api::types::Sample {
            unix: 0,
            upload_bytes,
            download_bytes: 0,
            read_bytes: 0,
            write_bytes,
            buffer_bytes,
        }
    }

    #[test]
    fn buffer_warning_names_the_burst_once_the_buffer_neared_full() {
        const MIB: u64 = 1 << 20;
        // Writes ran 900 MiB ahead of uploads and the 1 GiB buffer reached 95%.
        let full = [
            sample(0, 0, 0),
            sample(500 * MIB, 100 * MIB, 400 * MIB),
            sample(1200 * MIB, 300 * MIB, 973 * MIB),
            sample(1300 * MIB, 1300 * MIB, 0),
        ];
        let w = buffer_warning(&full, 1024 * MIB).expect("a warning");
        assert!(w.contains("900 MiB ahead"), "{w}");
        assert!(w.contains("upload_buffer.size"), "{w}");
        // The same traffic with a buffer that never passed 90%: nothing to say.
        let calm = full.map(|s| sample(s.write_bytes, s.upload_bytes, s.buffer_bytes / 2));
        assert_eq!(buffer_warning(&calm, 1024 * MIB), None);
        assert_eq!(buffer_warning(&[], 1024 * MIB), None);
    }
}
