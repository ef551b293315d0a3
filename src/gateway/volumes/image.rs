//! VM images in and out of volumes: `volume import` deploys a raw, qcow2 or vmdk image as a new
//! volume, `volume export` writes a volume's chunks back out as an image file.
//!
//! Owns the chunk-by-chunk paths between an image file and the chunk store. It bypasses the
//! write-back cache: an import is no client write waiting for an acknowledgement, and going
//! through the cache would write every byte to local disk twice before the bucket. Formats other
//! than raw go through `qemu-img` (`image/qemu.rs`) and a sparse raw file in the data dir's
//! `staging/`. It never prints; progress goes to a [`Progress`].
//!
//! Invariants: an import creates its volume and the whole chunk map in one catalog transaction
//! after every chunk is in the bucket, so a volume either appears complete or not at all (chunks
//! of an interrupted import are unreferenced garbage). An export writes only data that verified,
//! and its output file appears, by rename, only once complete.

pub mod qemu;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::catalog::volumes::{VolumeMode, VolumeRow};
use crate::catalog::{Catalog, CatalogError};
use crate::gateway::GatewayError;
use crate::gateway::volumes::{self, CHUNK_SIZE};
use crate::store::{ChunkId, ChunkRef, ChunkStore, StoreError};

/// One chunk-map row: chunk index within the volume and the id of the bucket chunk holding it.
pub type MapEntry = (u64, [u8; 32]);

/// Chunks read-and-sealed (import) or fetched-and-written (export) at once: enough to keep both
/// cores and the bucket busy, few enough to bound memory at a few MiB.
pub const IN_FLIGHT: usize = 4;

/// Image formats the CLI names; qemu-img may detect others on import (vdi, vhdx, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Vmdk,
}

impl ImageFormat {
    /// The name qemu-img uses for the format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
            Self::Vmdk => "vmdk",
        }
    }
}

/// Receives the progress of an import or export. Stages run one after another; each starts
/// with `stage` and is advanced by the bytes it has done. The CLI draws it; tests ignore it.
pub trait Progress {
    fn stage(&mut self, name: &'static str, total_bytes: u64);
    fn advance(&mut self, bytes: u64);
}

/// Progress nobody watches.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&mut self, _: &'static str, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// Variants with a `source` leave it out of their own message: the CLI prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Raw images need nothing else; every other format is read or written by qemu-img.
    #[error("{what} needs qemu-img, which is not installed (apt-get install qemu-utils)")]
    NoQemuImg { what: String },
    #[error("qemu-img {op} {}: {detail}", image.display())]
    Qemu {
        op: &'static str,
        image: PathBuf,
        detail: String,
    },
    #[error("uploading chunk {index} (image bytes from {})", index * CHUNK_SIZE)]
    Upload {
        index: u64,
        #[source]
        source: StoreError,
    },
    #[error("chunk {index} of the volume ({key})")]
    Download {
        index: u64,
        key: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl ImageError {
    /// True when the operator asked for something that cannot be done (bad name, bad image,
    /// missing file); false for failures of the machine, the bucket or the data.
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Gateway(e) => matches!(
                e,
                GatewayError::InvalidArgument(_)
                    | GatewayError::AlreadyExists(_)
                    | GatewayError::NotFound(_)
            ),
            Self::NoQemuImg { .. } | Self::Qemu { .. } => true,
            Self::Io { .. } | Self::Upload { .. } | Self::Download { .. } | Self::Catalog(_) => {
                false
            }
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file in the data dir's `staging/` (or beside an output) that is removed when dropped unless it
/// was renamed into place with `persist`.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// A new, not yet created, file name in `dir` (created if needed), carrying this process's
    /// id. Files left there by image commands that died (killed, or interrupted: destructors do
    /// not run on SIGINT) are removed first; they can be as large as a disk.
    pub fn new_in(dir: &Path, what: &str) -> Result<Self, ImageError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        remove_orphans(dir);
        let unique = crate::store::master::random_hex::<8>()
            .map_err(|e| GatewayError::Internal(Box::new(e)))?;
        Ok(Self {
            path: dir.join(format!(
                "{TEMP_PREFIX}{what}-{}-{unique}.raw",
                std::process::id()
            )),
            keep: false,
        })
    }

    /// `<target>.partial`, to be renamed over `target` once complete.
    fn beside(target: &Path) -> Self {
        let mut name = target.as_os_str().to_owned();
        name.push(".partial");
        Self {
            path: PathBuf::from(name),
            keep: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn persist(mut self, target: &Path) -> Result<(), ImageError> {
        std::fs::rename(&self.path, target).map_err(io_at(target))?;
        self.keep = true;
        Ok(())
    }
}

/// Names of this module's temp files start with this, then `import-` or `export-`, the pid.
const TEMP_PREFIX: &str = "image-";

/// The pid in a temp file's name (or in that of its `.partial`), if it is one of ours.
fn temp_owner(name: &str) -> Option<u32> {
    let name = name.strip_suffix(".partial").unwrap_or(name);
    let rest = name.strip_prefix(TEMP_PREFIX)?.strip_suffix(".raw")?;
    let (_what, rest) = rest.split_once('-')?;
    rest.split_once('-')?.0.parse().ok()
}

/// Removes temp files whose process is gone. Best effort: a failure only leaves a file behind.
fn remove_orphans(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(
                file = %entry.path().display(),
                "removing a temp file left by an interrupted image command"
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An image as raw bytes, ready for `import_raw`: the image itself, or a conversion of it held
/// in a temp file for as long as this lives.
#[derive(Debug)]
pub struct RawImage {
    pub path: PathBuf,
    /// The disk size the image describes (for raw, the file's length).
    pub virtual_size: u64,
    /// The format it was read as.
    pub format: String,
    /// The backing file qemu-img read through (the volume gets the whole, flattened disk).
    pub backing_file: Option<String>,
    _temp: Option<TempFile>,
}

/// Makes `image` readable as raw: a raw image is used in place; anything else is probed,
/// checked and converted by qemu-img into a sparse file in `staging_dir` (needing about the image's
/// allocated size there). `format` None detects it (by qemu-img, or by magic number without it).
pub fn prepare_import(
    image: &Path,
    format: Option<ImageFormat>,
    staging_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<RawImage, ImageError> {
    let meta = std::fs::metadata(image).map_err(io_at(image))?;
    if !meta.is_file() {
        return Err(GatewayError::InvalidArgument(format!(
            "{} is not a regular file",
            image.display()
        ))
        .into());
    }
    let raw_in_place = |format: &str| RawImage {
        path: image.to_path_buf(),
        virtual_size: meta.len(),
        format: format.to_owned(),
        backing_file: None,
        _temp: None,
    };
    if format == Some(ImageFormat::Raw) {
        return Ok(raw_in_place("raw"));
    }
    let info = match qemu::info(image, format) {
        Ok(info) => info,
        Err(ImageError::NoQemuImg { .. }) if format.is_none() => {
            let sniffed = qemu::sniff(image)?;
            return match sniffed {
                None => Ok(raw_in_place("raw")),
                Some(format) => Err(ImageError::NoQemuImg {
                    what: format!("reading {} ({format})", image.display()),
                }),
            };
        }
        Err(e) => return Err(e),
    };
    if info.format == "raw" {
        return Ok(raw_in_place("raw"));
    }
    // Before spending time and disk on a conversion the volume could not hold.
    let size_bytes = volume_size(info.virtual_size);
    if size_bytes == 0 || size_bytes > volumes::MAX_VOLUME_SIZE {
        return Err(GatewayError::InvalidArgument(format!(
            "{} describes a {} byte disk; a volume holds 1 MiB to 32 TiB",
            image.display(),
            info.virtual_size
        ))
        .into());
    }
    // qemu-img reads past the end of a truncated image as zeros without complaint; its check
    // does not let that pass.
    qemu::check(image, &info.format)?;
    let temp = TempFile::new_in(staging_dir, "import")?;
    progress.stage("converting", info.virtual_size);
    qemu::convert(
        image,
        &info.format,
        temp.path(),
        "raw",
        info.virtual_size,
        progress,
    )?;
    Ok(RawImage {
        path: temp.path().to_path_buf(),
        virtual_size: info.virtual_size,
        format: info.format,
        backing_file: info.backing_file,
        _temp: Some(temp),
    })
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Imported {
    pub row: VolumeRow,
    /// Chunks that held data (all-zero chunks cost nothing and are not counted).
    pub stored_chunks: u64,
}

/// Volume size for an image: its virtual size rounded up to whole chunks.
pub fn volume_size(virtual_size: u64) -> u64 {
    virtual_size.div_ceil(CHUNK_SIZE).saturating_mul(CHUNK_SIZE)
}

/// Deploys a raw image as the new volume `name`: reads it in 1 MiB chunks, seals and uploads
/// those holding data (`IN_FLIGHT` at a time), then creates the volume with its chunk map in one
/// transaction. A daemon that is running serves it after its next catalog sync.
pub async fn import_raw(
    catalog: &Catalog,
    chunks: &ChunkStore,
    raw: &RawImage,
    name: &str,
    progress: &mut dyn Progress,
) -> Result<Imported, ImageError> {
    let size_bytes = volume_size(raw.virtual_size);
    // Refuse a bad name or size before uploading anything.
    volumes::check_new(catalog, name, size_bytes)?;
    let file = Arc::new(std::fs::File::open(&raw.path).map_err(io_at(&raw.path))?);
    let image_bytes = raw.virtual_size;
    progress.stage("uploading", image_bytes);
    let mut results = futures::stream::iter(0..size_bytes / CHUNK_SIZE)
        .map(|index| {
            let file = file.clone();
            let path = raw.path.clone();
            async move {
                let (data, len) = read_chunk(file, path, index, image_bytes).await?;
                let stored = match data {
                    None => ChunkRef::Zero,
                    Some(data) => chunks
                        .put(data)
                        .await
                        .map_err(|source| ImageError::Upload { index, source })?,
                };
                Ok::<_, ImageError>((index, stored, len))
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut map: Vec<MapEntry> = Vec::new();
    while let Some(result) = results.next().await {
        let (index, stored, len) = result?;
        if let ChunkRef::Stored(id) = stored {
            map.push((index, id.0));
        }
        progress.advance(len);
    }
    drop(results);
    map.sort_unstable_by_key(|(index, _)| *index);
    // Checked again inside: another volume may have taken the name meanwhile.
    let new = volumes::NewVolumeSpec {
        name,
        size_bytes,
        mode: VolumeMode::Cached,
        local_path: None,
    };
    let row = volumes::create_with(catalog, &new, |v| {
        // A cached volume: nothing to download to a local disk.
        catalog.create_volume_with_chunks(v, &map, false)
    })?;
    Ok(Imported {
        row,
        stored_chunks: map.len() as u64,
    })
}

/// Reads chunk `index` of a raw image of `image_bytes` bytes on the blocking pool: None when it
/// is all zeros, else the chunk padded with zeros to a whole chunk; and the image bytes it
/// covered.
async fn read_chunk(
    file: Arc<std::fs::File>,
    path: PathBuf,
    index: u64,
    image_bytes: u64,
) -> Result<(Option<Bytes>, u64), ImageError> {
    let offset = index * CHUNK_SIZE;
    let len = CHUNK_SIZE.min(image_bytes.saturating_sub(offset));
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        file.read_exact_at(&mut buf[..len as usize], offset)
            .map_err(io_at(&path))?;
        Ok::<_, ImageError>((!crate::store::frame::is_zero(&buf)).then(|| Bytes::from(buf)))
    });
    let data = read
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))??;
    Ok((data, len))
}

/// What an export writes out: a disk of `size_bytes` whose chunk map is `map` (a volume's now,
/// or a snapshot's).
#[derive(Debug, Clone, Copy)]
pub struct Contents<'a> {
    pub size_bytes: u64,
    pub map: &'a [MapEntry],
}

/// What an export did.
#[derive(Debug, Clone, Copy)]
pub struct Exported {
    pub size_bytes: u64,
    /// Chunks fetched from the bucket; the rest of the file is holes.
    pub fetched_chunks: u64,
}

/// Writes `contents` as a raw file at `out`: each mapped
/// chunk fetched and verified (`IN_FLIGHT` at a time) and written at its place, unmapped chunks
/// left as holes. The file is assembled as `<out>.partial` and renamed over `out` when
/// complete; a chunk that fails verification aborts the export, naming the chunk, and is
/// recorded in the catalog's integrity events so `status` shows it.
pub async fn export_raw(
    catalog: &Catalog,
    chunks: &ChunkStore,
    contents: Contents<'_>,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<Exported, ImageError> {
    let partial = TempFile::beside(out);
    let file = std::fs::File::create(partial.path()).map_err(io_at(partial.path()))?;
    let file = Arc::new(file);
    let Contents { size_bytes, map } = contents;
    let wanted: Vec<MapEntry> = map
        .iter()
        .copied()
        .filter(|(index, _)| index.saturating_mul(CHUNK_SIZE) < size_bytes)
        .collect();
    let chunk_bytes = |index: u64| CHUNK_SIZE.min(size_bytes - index * CHUNK_SIZE);
    progress.stage(
        "downloading",
        wanted.iter().map(|(index, _)| chunk_bytes(*index)).sum(),
    );
    let mut results = futures::stream::iter(wanted.iter().copied())
        .map(|(index, id)| {
            let file = file.clone();
            let path = partial.path().to_path_buf();
            async move {
                let id = ChunkId(id);
                let data = chunks.get(id).await.map_err(|source| {
                    let key = id.object_key();
                    if let StoreError::Corrupt(e) = &source
                        && let Err(db) = catalog.record_integrity_event(&key, &e.to_string())
                    {
                        tracing::error!(error = %db, "recording an integrity failure");
                    }
                    ImageError::Download { index, key, source }
                })?;
                let len = chunk_bytes(index).min(data.len() as u64);
                let write = tokio::task::spawn_blocking(move || {
                    file.write_all_at(&data[..len as usize], index * CHUNK_SIZE)
                        .map_err(io_at(&path))
                });
                write
                    .await
                    .map_err(|e| GatewayError::Internal(Box::new(e)))??;
                Ok::<_, ImageError>(chunk_bytes(index))
            }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(done) = results.next().await {
        progress.advance(done?);
    }
    drop(results);
    file.set_len(size_bytes).map_err(io_at(partial.path()))?;
    file.sync_all().map_err(io_at(partial.path()))?;
    partial.persist(out)?;
    Ok(Exported {
        size_bytes,
        fetched_chunks: wanted.len() as u64,
    })
}

/// Exports as `format`: raw is written straight to `out`; other formats are exported raw into
/// `staging_dir` (holes stay holes) and converted to `out` by qemu-img.
pub async fn export(
    catalog: &Catalog,
    chunks: &ChunkStore,
    contents: Contents<'_>,
    out: &Path,
    format: ImageFormat,
    staging_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<Exported, ImageError> {
    if format == ImageFormat::Raw {
        return export_raw(catalog, chunks, contents, out, progress).await;
    }
    // Fail before downloading anything when the conversion cannot run.
    qemu::version(&format!("exporting as {}", format.as_str()))?;
    let raw = TempFile::new_in(staging_dir, "export")?;
    let exported = export_raw(catalog, chunks, contents, raw.path(), progress).await?;
    let partial = TempFile::beside(out);
    progress.stage("converting", contents.size_bytes);
    // The conversion is a blocking subprocess wait; let the runtime move other tasks off this
    // thread meanwhile (this needs the multi-threaded runtime, which the CLI uses).
    tokio::task::block_in_place(|| {
        qemu::convert(
            raw.path(),
            "raw",
            partial.path(),
            format.as_str(),
            contents.size_bytes,
            progress,
        )
    })?;
    partial.persist(out)?;
    Ok(exported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_temp_files_are_recognised_by_their_owner() {
        for (name, owner) in [
            ("image-import-123-00ff.raw", Some(123)),
            ("image-export-7-ab.raw", Some(7)),
            ("image-import-x-00ff.raw", None),
            ("import-123-00ff.raw", None),
            ("image-export-123-00ff.raw.partial", Some(123)),
            ("image-export-123-00ff.partial", None),
            ("snapshot-stage-1", None),
        ] {
            assert_eq!(temp_owner(name), owner, "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(format!("image-import-{}-00.raw", u32::MAX));
        let ours = TempFile::new_in(dir.path(), "import").unwrap();
        std::fs::write(&dead, b"left over").unwrap();
        std::fs::write(ours.path(), b"in use").unwrap();
        let other = dir.path().join("snapshot-stage");
        std::fs::write(&other, b"not ours").unwrap();
        let next = TempFile::new_in(dir.path(), "export").unwrap();
        assert!(!dead.exists(), "orphan kept");
        assert!(ours.path().exists(), "a live process's file removed");
        assert!(other.exists(), "a file of another module removed");
        assert_ne!(next.path(), ours.path());
    }

    #[test]
    fn volume_size_rounds_up_to_whole_chunks() {
        for (image, volume) in [
            (1, CHUNK_SIZE),
            (CHUNK_SIZE, CHUNK_SIZE),
            (CHUNK_SIZE + 1, 2 * CHUNK_SIZE),
            (64 * CHUNK_SIZE - 512, 64 * CHUNK_SIZE),
            (0, 0),
        ] {
            assert_eq!(volume_size(image), volume, "{image}");
        }
    }
}
