//! How large the cache and the upload buffer are when the config does not say: a share of the
//! space their file system has for them, with a floor and a ceiling (docs/install.md, Sizing).
//!
//! Owns the rule and the measurement it needs (statvfs and what the areas already hold); it
//! changes nothing on disk. The space an area may take is the file system's free space plus
//! what the cache and the upload buffer already hold there, so a restart after they filled up
//! finds the same sizes, while a grown disk (the appliance grows its root at boot) or one that
//! other data filled finds new ones. Invariant: an automatic size is never below
//! `defaults::MIN_DISK_SIZE` and never above its ceiling.

use std::path::{Path, PathBuf};

use crate::config::{ByteSize, defaults};

/// An area's share when the other area is on the same file system (the default: both under the
/// data dir). 30% each leaves 40% for the catalog, file-gateway staging (up to the cache's
/// size) and, in the embedded default, the local-directory bucket.
pub const SHARED_PERCENT: u64 = 30;
/// An area's share when only the data dir is with it (catalog, staging).
pub const WITH_DATA_DIR_PERCENT: u64 = 50;
/// An area's share of a file system of its own, less a margin for the file system's own use.
pub const ALONE_PERCENT: u64 = 80;
/// The floor: the size every gateway got before sizing followed the disk, kept as long as it
/// leaves half the space free.
pub const FLOOR: u64 = 1 << 30;
/// Ceilings: beyond these a larger area buys little and takes long to scan at start. The
/// commercial gateway asks for at least 150 GiB of upload buffer; a disk of a few TiB gets
/// these.
pub const CACHE_CEILING: u64 = 1 << 40;
pub const BUFFER_CEILING: u64 = 512 << 30;

/// Which area is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cache,
    UploadBuffer,
}

impl Role {
    fn ceiling(self) -> u64 {
        match self {
            Self::Cache => CACHE_CEILING,
            Self::UploadBuffer => BUFFER_CEILING,
        }
    }

    /// The config key that overrides the rule.
    pub fn key(self) -> &'static str {
        match self {
            Self::Cache => "cache.size",
            Self::UploadBuffer => "upload_buffer.size",
        }
    }
}

/// Who an area shares its file system with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The other area is there too.
    OtherArea,
    /// Only the data dir.
    DataDir,
    Alone,
}

impl Sharing {
    pub fn percent(self) -> u64 {
        match self {
            Self::OtherArea => SHARED_PERCENT,
            Self::DataDir => WITH_DATA_DIR_PERCENT,
            Self::Alone => ALONE_PERCENT,
        }
    }
}

/// Why an area has its size, for `status` and `activate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sizing {
    /// `cache.size` / `upload_buffer.size` in the config file.
    Configured,
    /// The rule, from a measured file system.
    Auto {
        /// Free space plus what the areas already hold on the file system.
        available: u64,
        fs_path: PathBuf,
        sharing: Sharing,
    },
    /// The file system could not be measured: the fixed fallback (`FLOOR`).
    Unmeasured { fs_path: PathBuf },
}

/// The rule: `percent` of `available`, raised to the floor while that leaves half of
/// `available` free, capped by the role's ceiling, and never below the smallest size a disk
/// area accepts.
pub fn auto_size(role: Role, available: u64, sharing: Sharing) -> u64 {
    let share = available / 100 * sharing.percent();
    let floored = if share < FLOOR && FLOOR <= available / 2 {
        FLOOR
    } else {
        share
    };
    floored.min(role.ceiling()).max(defaults::MIN_DISK_SIZE)
}

/// Free and total bytes of a file system, and an id telling file systems apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub id: u64,
    pub free: u64,
    pub total: u64,
}

/// statvfs of `path`, or of its nearest existing parent (an area not created yet still lands on
/// that file system). Blocking: call it where blocking is allowed (config loading runs before
/// the runtime starts; the daemon calls it under `spawn_blocking`).
pub fn fs_space(path: &Path) -> Option<FsSpace> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let s = rustix::fs::statvfs(existing).ok()?;
    Some(FsSpace {
        id: s.f_fsid,
        free: s.f_bavail.saturating_mul(s.f_frsize),
        total: s.f_blocks.saturating_mul(s.f_frsize),
    })
}

/// Bytes allocated under `dir` (0 when it does not exist): what an area holds, so that its own
/// data counts as space it has rather than space taken from it.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m)))
        .map(|(p, m)| {
            if m.is_dir() {
                allocated(&p)
            } else {
                m.blocks() * 512
            }
        })
        .sum()
}

/// The sizes of the cache (`[0]`) and the upload buffer (`[1]`) by the rule, and why.
/// Blocking (statvfs and a walk of both areas).
pub fn plan(cache_dir: &Path, buffer_dir: &Path, data_dir: &Path) -> [(u64, Sizing); 2] {
    let dirs = [cache_dir, buffer_dir];
    let space = [cache_dir, buffer_dir, data_dir].map(fs_space);
    let held = dirs.map(allocated);
    let same =
        |a: usize, b: usize| matches!((space[a], space[b]), (Some(x), Some(y)) if x.id == y.id);
    let one = |role: Role, me: usize, other: usize| {
        let Some(fs) = space[me] else {
            let fs_path = dirs[me].to_path_buf();
            return (FLOOR, Sizing::Unmeasured { fs_path });
        };
        // What both areas hold counts when they share the file system; otherwise only this one.
        let (sharing, own) = if same(me, other) {
            (Sharing::OtherArea, held[me] + held[other])
        } else if same(me, 2) {
            (Sharing::DataDir, held[me])
        } else {
            (Sharing::Alone, held[me])
        };
        let available = fs.free.saturating_add(own);
        let sizing = Sizing::Auto {
            available,
            fs_path: dirs[me].to_path_buf(),
            sharing,
        };
        (auto_size(role, available, sharing), sizing)
    };
    [one(Role::Cache, 0, 1), one(Role::UploadBuffer, 1, 0)]
}

impl Sizing {
    /// One phrase for `status`: where the size came from.
    pub fn describe(&self, role: Role, size: u64) -> String {
        match self {
            Self::Configured => format!("{} set in the config", role.key()),
            Self::Auto {
                available,
                fs_path,
                sharing,
            } => {
                let percent = sharing.percent();
                let with = match sharing {
                    Sharing::OtherArea => ", shared with the other cache area",
                    Sharing::DataDir => ", shared with the data dir",
                    Sharing::Alone => "",
                };
                let bound = if size == role.ceiling() {
                    format!(", held at the {} ceiling", ByteSize(role.ceiling()))
                } else if size == FLOOR && *available / 100 * percent < FLOOR {
                    format!(", raised to the {} floor", ByteSize(FLOOR))
                } else {
                    String::new()
                };
                format!(
                    "automatic: {percent}% of {} (free space plus what the cache areas hold on \
                     the file system of {}{with}){bound}; set {} to choose",
                    ByteSize(*available),
                    fs_path.display(),
                    role.key()
                )
            }
            Self::Unmeasured { fs_path } => format!(
                "automatic: {} fallback, the file system of {} could not be measured; set {} \
                 to choose",
                ByteSize(FLOOR),
                fs_path.display(),
                role.key()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn auto_size_takes_its_share_between_floor_and_ceiling() {
        // (role, available, sharing, expected)
        let cases = [
            // 100 GiB shared by both areas: 30 GiB each.
            (
                Role::Cache,
                100 * GIB,
                Sharing::OtherArea,
                100 * GIB / 100 * 30,
            ),
            (
                Role::UploadBuffer,
                100 * GIB,
                Sharing::OtherArea,
                100 * GIB / 100 * 30,
            ),
            (Role::UploadBuffer, 100 * GIB, Sharing::DataDir, 50 * GIB),
            (Role::UploadBuffer, 100 * GIB, Sharing::Alone, 80 * GIB),
            // 2 GiB: 30% is below the floor, and the floor leaves half free.
            (Role::Cache, 2 * GIB, Sharing::OtherArea, GIB),
            // 1.5 GiB: the floor would take two thirds; the share stands.
            (
                Role::Cache,
                3 * GIB / 2,
                Sharing::OtherArea,
                3 * GIB / 2 / 100 * 30,
            ),
            // A tiny file system still gets the smallest area the config accepts.
            (
                Role::Cache,
                10 << 20,
                Sharing::Alone,
                defaults::MIN_DISK_SIZE,
            ),
            // Ceilings.
            (Role::Cache, 10 << 40, Sharing::OtherArea, CACHE_CEILING),
            (
                Role::UploadBuffer,
                10 << 40,
                Sharing::OtherArea,
                BUFFER_CEILING,
            ),
        ];
        for (role, available, sharing, expected) in cases {
            assert_eq!(
                auto_size(role, available, sharing),
                expected,
                "{role:?} {available} {sharing:?}"
            );
        }
    }

    #[test]
    fn describe_says_why() {
        let auto = Sizing::Auto {
            available: 10 << 40,
            fs_path: PathBuf::from("/srv/tg/cache"),
            sharing: Sharing::OtherArea,
        };
        let d = auto.describe(Role::Cache, CACHE_CEILING);
        assert!(d.contains("30% of 10 TiB"), "{d}");
        assert!(d.contains("ceiling") && d.contains("cache.size"), "{d}");
        let small = Sizing::Auto {
            available: 2 * GIB,
            fs_path: PathBuf::from("/x"),
            sharing: Sharing::OtherArea,
        };
        assert!(small.describe(Role::Cache, GIB).contains("floor"));
        assert_eq!(
            Sizing::Configured.describe(Role::UploadBuffer, GIB),
            "upload_buffer.size set in the config"
        );
    }

    #[test]
    fn plan_measures_a_real_file_system_and_counts_what_the_areas_hold() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let buffer = dir.path().join("upload-buffer");
        std::fs::create_dir_all(&buffer).unwrap();
        std::fs::write(buffer.join("0.seg"), vec![1u8; 4 << 20]).unwrap();
        let [(c, cs), (b, bs)] = plan(&cache, &buffer, dir.path());
        let Sizing::Auto {
            available, sharing, ..
        } = bs.clone()
        else {
            panic!("{bs:?}");
        };
        assert_eq!(sharing, Sharing::OtherArea);
        let free = fs_space(dir.path()).unwrap().free;
        // The segment's 4 MiB count as the areas' own; free space moves as others write.
        assert!(available >= (4 << 20), "{available}");
        assert!(
            available.abs_diff(free + (4 << 20)) < 1 << 30,
            "{available} {free}"
        );
        assert_eq!(b, auto_size(Role::UploadBuffer, available, sharing));
        assert!(matches!(cs, Sizing::Auto { .. }));
        assert!(c >= defaults::MIN_DISK_SIZE);
    }
}
