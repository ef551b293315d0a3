//! The versioned on-disk area (cache or upload buffer): a directory holding a `LAYOUT` marker.
//!
//! Invariant: an area is used only if its marker names this crate and a layout version it knows;
//! an empty directory is initialised, anything else is refused rather than overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

pub const LAYOUT_VERSION: u32 = 1;
const MARKER: &str = "LAYOUT";
const MAGIC: &str = "tidegate-cache";

#[derive(Debug, thiserror::Error)]
pub enum AreaError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not empty and holds no tidegate layout marker; refusing to use it")]
    Foreign { path: PathBuf },
    #[error("{path} has layout version {found}; this build reads version {LAYOUT_VERSION}")]
    UnknownVersion { path: PathBuf, found: String },
}

/// A cache or upload-buffer directory with its configured capacity.
#[derive(Debug, Clone)]
pub struct Area {
    path: PathBuf,
    capacity: u64,
}

impl Area {
    /// Opens the area at `path`, creating and marking it if it does not exist or is empty.
    pub fn open(path: &Path, capacity: u64) -> Result<Self, AreaError> {
        let io = |source| AreaError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        let marker = path.join(MARKER);
        if let Some(area) = Self::existing(path, capacity)? {
            return Ok(area);
        }
        // Our own half-written marker (left by a crash) does not make the directory foreign.
        let tmp = path.join(format!("{MARKER}.tmp"));
        let mut entries = std::fs::read_dir(path).map_err(io)?;
        if entries.any(|e| e.map_or(true, |e| e.path() != tmp)) {
            return Err(AreaError::Foreign {
                path: path.to_path_buf(),
            });
        }
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{MAGIC} {LAYOUT_VERSION}").map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &marker).map_err(io)?;
        std::fs::File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            capacity,
        })
    }

    /// The area at `path` if it exists and is marked, changing nothing (for `status`, which
    /// may look while a daemon is creating the area). `Ok(None)`: not created (or not marked)
    /// yet.
    pub fn existing(path: &Path, capacity: u64) -> Result<Option<Self>, AreaError> {
        let text = match std::fs::read_to_string(path.join(MARKER)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AreaError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let version =
            text.strip_prefix(MAGIC)
                .map(str::trim)
                .ok_or_else(|| AreaError::Foreign {
                    path: path.to_path_buf(),
                })?;
        if version != LAYOUT_VERSION.to_string() {
            return Err(AreaError::UnknownVersion {
                path: path.to_path_buf(),
                found: version.to_owned(),
            });
        }
        Ok(Some(Self {
            path: path.to_path_buf(),
            capacity,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of data held (allocated blocks, so sparse files count as what they occupy).
    pub fn used(&self) -> Result<u64, AreaError> {
        fn walk(dir: &Path, total: &mut u64) -> std::io::Result<()> {
            use std::os::unix::fs::MetadataExt;
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    walk(&entry.path(), total)?;
                } else {
                    *total += meta.blocks() * 512;
                }
            }
            Ok(())
        }
        let mut total = 0;
        walk(&self.path, &mut total).map_err(|source| AreaError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_reopens_and_refuses_foreign_dirs() {
        let dir = std::env::temp_dir().join(format!("tg-area-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let area = Area::open(&dir.join("cache"), 1 << 30).unwrap();
        assert_eq!(area.capacity(), 1 << 30);
        Area::open(&dir.join("cache"), 1 << 30).unwrap();

        std::fs::create_dir_all(dir.join("other")).unwrap();
        std::fs::write(dir.join("other/file"), b"x").unwrap();
        assert!(matches!(
            Area::open(&dir.join("other"), 1),
            Err(AreaError::Foreign { .. })
        ));

        std::fs::write(dir.join("cache/LAYOUT"), "tidegate-cache 99\n").unwrap();
        assert!(matches!(
            Area::open(&dir.join("cache"), 1),
            Err(AreaError::UnknownVersion { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
