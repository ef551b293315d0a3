//! One cached volume as a `BlockDevice`: LBAs → 1 MiB chunks → the write-back cache.
//!
//! Owns the mapping and read-ahead; durability is the cache's (a write is durable once `flush`
//! returns or, with FUA, once the write returns). Sequential reads (a read starting where the
//! previous one ended) prefetch the next chunks so a stream does not wait on the bucket chunk by
//! chunk.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tidegate_cache::{Cache, CacheError};

use crate::catalog::Catalog;
use crate::catalog::volumes::VolumeRow;
use crate::gateway::GatewayError;
use crate::gateway::block::{BlockDevice, BoxFuture, DeviceIdentity};
use crate::gateway::volumes::{Segment, byte_range, object_name, segments, write_range};

/// Chunks fetched ahead of a sequential reader.
const READ_AHEAD_CHUNKS: u64 = 4;
/// Consecutive sequential reads before read-ahead starts (a lone read is not a stream).
const SEQUENTIAL_AFTER: u32 = 2;

pub struct Volume {
    row: VolumeRow,
    identity: DeviceIdentity,
    cache: Arc<Cache>,
    catalog: Arc<Catalog>,
    stream: Mutex<Stream>,
    /// Writes hold it shared; a snapshot's cut holds it exclusively, so the cut sees every
    /// write acknowledged before it and none after.
    gate: tokio::sync::RwLock<()>,
}

#[derive(Default)]
struct Stream {
    next_offset: u64,
    run: u32,
    prefetched_to: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

impl Volume {
    pub fn new(row: VolumeRow, cache: Arc<Cache>, catalog: Arc<Catalog>) -> Self {
        Self {
            identity: super::identity(&row),
            row,
            cache,
            catalog,
            stream: Mutex::new(Stream::default()),
            gate: tokio::sync::RwLock::new(()),
        }
    }

    /// The snapshot cut: with writes held, copies every chunk the bucket does not have yet
    /// into `stage` and returns the chunk map for the rest. The pause lasts as long as copying
    /// the not-yet-uploaded data locally, not as long as uploading it.
    ///
    /// Order matters: a chunk found clean has had its map row written (the sink writes the row
    /// before the cache marks the chunk clean) and cannot change while writes are held, so the
    /// map read after the scan is right for every chunk not staged.
    async fn capture_now(
        &self,
        stage: &mut crate::gateway::volumes::snapshot::Stage,
    ) -> Result<Vec<(u64, [u8; 32])>, GatewayError> {
        let _cut = self.gate.write().await;
        let chunks = self.row.size_bytes.div_ceil(self.row.chunk_size);
        for index in 0..chunks {
            let name = self.name(index);
            if self.cache.is_dirty(&name) {
                let data = self
                    .cache
                    .read(&name, 0, self.row.chunk_size)
                    .await
                    .map_err(cache_error)?;
                stage.push(index, &data)?;
            }
        }
        Ok(self.catalog.chunk_map(self.row.id)?)
    }

    pub fn row(&self) -> &VolumeRow {
        &self.row
    }

    fn byte_range(&self, lba: u64, blocks: u64) -> Result<(u64, u64), GatewayError> {
        byte_range(&self.row, lba, blocks)
    }

    fn segments(&self, offset: u64, len: u64) -> impl Iterator<Item = Segment> + use<> {
        segments(self.row.chunk_size, offset, len)
    }

    fn name(&self, chunk: u64) -> String {
        object_name(self.row.id, chunk)
    }

    /// Notes a read and, when it continues a stream, prefetches the chunks ahead of it.
    fn read_ahead(&self, offset: u64, len: u64) {
        let chunk_size = self.row.chunk_size;
        let last_chunk = self.row.size_bytes.div_ceil(chunk_size);
        let from_chunk = {
            let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
            if offset == s.next_offset {
                s.run = s.run.saturating_add(1);
            } else {
                s.run = 1;
                s.prefetched_to = 0;
            }
            s.next_offset = offset + len;
            if s.run < SEQUENTIAL_AFTER {
                return;
            }
            let next = (offset + len).div_ceil(chunk_size);
            let from = next.max(s.prefetched_to);
            let to = (next + READ_AHEAD_CHUNKS).min(last_chunk);
            if from >= to {
                return;
            }
            s.prefetched_to = to;
            from..to
        };
        for chunk in from_chunk {
            self.cache.prefetch(&self.name(chunk));
        }
    }
}

impl crate::gateway::volumes::snapshot::Capture for Volume {
    fn capture<'a>(
        &'a self,
        stage: &'a mut crate::gateway::volumes::snapshot::Stage,
    ) -> BoxFuture<'a, Result<crate::gateway::volumes::snapshot::ChunkMap, GatewayError>> {
        Box::pin(self.capture_now(stage))
    }
}

/// The cache reports where data could not come from; the front end needs to know whether that
/// is damage (MEDIUM ERROR) or an outage (retry later).
pub(crate) fn cache_error(e: CacheError) -> GatewayError {
    use tidegate_cache::SinkErrorKind;
    if e.is_no_space() {
        // Named so the log and the initiator's error say which disk to look at (status too).
        return GatewayError::NoSpace(format!(
            "{e}: the cache or upload buffer disk is full (see `tidegate status`)"
        ));
    }
    match e.sink_kind() {
        Some(SinkErrorKind::Corrupt) => GatewayError::Corrupt(Box::new(e)),
        Some(SinkErrorKind::Unavailable) => GatewayError::Unavailable(Box::new(e)),
        Some(SinkErrorKind::Other) | None => GatewayError::Internal(Box::new(e)),
    }
}

impl BlockDevice for Volume {
    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn block_size(&self) -> u32 {
        self.row.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.row.size_bytes / u64::from(self.row.block_size)
    }

    fn read(&self, lba: u64, blocks: u32) -> BoxFuture<'_, Result<Bytes, GatewayError>> {
        Box::pin(async move {
            let (offset, len) = self.byte_range(lba, u64::from(blocks))?;
            self.read_ahead(offset, len);
            let reads = self.segments(offset, len).map(|s| {
                let name = self.name(s.chunk);
                async move { self.cache.read(&name, s.offset, s.len).await }
            });
            let parts = futures::future::try_join_all(reads)
                .await
                .map_err(cache_error)?;
            if parts.len() == 1 {
                return Ok(parts.into_iter().next().unwrap_or_default());
            }
            let mut out = BytesMut::with_capacity(len as usize);
            for p in parts {
                out.extend_from_slice(&p);
            }
            Ok(out.freeze())
        })
    }

    fn write(&self, lba: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            let (offset, len) = write_range(&self.row, lba, data.len())?;
            // Room in the upload buffer first, without the gate: a write that waited for
            // uploads while holding it would hold a snapshot's cut (and every write queued
            // behind the cut) for as long as uploads take.
            self.cache.room_for(len).await.map_err(cache_error)?;
            let _writing = self.gate.read().await;
            let mut at = 0usize;
            for s in self.segments(offset, len) {
                let piece = &data[at..at + s.len as usize];
                at += s.len as usize;
                self.cache
                    .write(&self.name(s.chunk), s.offset, piece)
                    .await
                    .map_err(cache_error)?;
            }
            if fua {
                self.cache.flush().await.map_err(cache_error)?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move { self.cache.flush().await.map_err(cache_error) })
    }

    fn unmap(&self, lba: u64, blocks: u64) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            let (offset, len) = self.byte_range(lba, blocks)?;
            let _writing = self.gate.read().await;
            for s in self.segments(offset, len) {
                self.cache
                    .discard(&self.name(s.chunk), s.offset, s.len)
                    .await
                    .map_err(cache_error)?;
            }
            Ok(())
        })
    }

    /// Mapped at chunk granularity: a chunk is mapped when the bucket holds it or the cache has
    /// data for it not yet uploaded.
    fn lba_status(&self, lba: u64) -> BoxFuture<'_, Result<(bool, u64), GatewayError>> {
        Box::pin(async move {
            let (offset, _) = self.byte_range(lba, 1)?;
            let bs = u64::from(self.row.block_size);
            let chunk_size = self.row.chunk_size;
            let chunks = self.row.size_bytes.div_ceil(chunk_size);
            let first = offset / chunk_size;
            // Look a bounded distance ahead: GET LBA STATUS may describe a shorter run.
            let horizon = (first + 1024).min(chunks);
            let mapped_in_bucket = self.catalog.mapped_chunks(self.row.id, first, horizon)?;
            let is_mapped = |chunk: u64| {
                mapped_in_bucket.binary_search(&chunk).is_ok()
                    || self.cache.is_dirty(&self.name(chunk))
            };
            let state = is_mapped(first);
            let mut end = first + 1;
            while end < horizon && is_mapped(end) == state {
                end += 1;
            }
            let run_blocks = (end * chunk_size - offset) / bs;
            Ok((state, run_blocks.max(1)))
        })
    }
}
