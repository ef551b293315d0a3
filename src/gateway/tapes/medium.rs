//! A tape in a drive: a position over the tape's record index and its data stream in the
//! write-back cache. The SSC layer turns these outcomes into sense data; nothing here knows
//! SCSI.
//!
//! Durability: records are buffered (acknowledged once in the cache journal's page cache, as a
//! drive in buffered mode acknowledges from its buffer); `sync` — WRITE FILEMARKS, REWIND,
//! unload — fsyncs the journal and only then commits the index, so the catalog's index never
//! names data that is not durable. Writing anywhere but end of data first cuts the tape there
//! and commits the cut (tape semantics), so a crash can never pair the old index with new data.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tidegate_cache::Cache;

use crate::catalog::Catalog;
use crate::catalog::tapes::TapeRow;
use crate::gateway::GatewayError;
use crate::gateway::tapes::index::{Index, Object, Spaced, Stop};
use crate::gateway::tapes::{CHUNK_SIZE, object_name};
use crate::gateway::volumes::segments;
use crate::gateway::volumes::volume::cache_error;

/// Chunks fetched ahead of a reader: tapes are read sequentially.
const READ_AHEAD_CHUNKS: u64 = 8;
/// The early-warning zone: 1/64 of the tape, at most 1 GiB (LTO drives warn a few hundred MB
/// to a few GB before the physical end; backup products only need room to close a file).
const MAX_EARLY_WARNING_ZONE: u64 = 1 << 30;

/// What one READ found at the current position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A record: its full length, and its first `min(len, max)` bytes.
    Record {
        data: Bytes,
        len: u64,
    },
    Filemark,
    EndOfData,
}

/// The outcome of a write: how many records (or filemarks) went onto the tape, and whether the
/// tape is now past early warning or refused some of the data for lack of room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub count: u64,
    pub early_warning: bool,
    pub overflow: bool,
}

pub struct Medium {
    row: TapeRow,
    cache: Arc<Cache>,
    catalog: Arc<Catalog>,
    index: Index,
    pos: u64,
    /// Records written since the last `sync`.
    unsynced: bool,
}

impl std::fmt::Debug for Medium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Medium")
            .field("barcode", &self.row.barcode)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

/// Byte position of early warning on a tape of `size` bytes.
pub fn early_warning_at(size: u64) -> u64 {
    size - (size / 64).min(MAX_EARLY_WARNING_ZONE)
}

impl Medium {
    /// Opens the tape at its beginning.
    pub fn open(
        row: TapeRow,
        cache: Arc<Cache>,
        catalog: Arc<Catalog>,
    ) -> Result<Self, GatewayError> {
        let runs = catalog.tape_runs(row.id)?;
        let index = Index::from_runs(runs)
            .map_err(|e| GatewayError::Corrupt(format!("tape {}: {e}", row.barcode).into()))?;
        Ok(Self {
            row,
            cache,
            catalog,
            index,
            pos: 0,
            unsynced: false,
        })
    }

    pub fn row(&self) -> &TapeRow {
        &self.row
    }

    pub fn barcode(&self) -> &str {
        &self.row.barcode
    }

    pub fn read_only(&self) -> bool {
        self.row.read_only
    }

    /// Logical objects before the current position.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Logical file number (filemarks before the position).
    pub fn file_number(&self) -> u64 {
        self.index.file_at(self.pos)
    }

    pub fn end_of_data(&self) -> u64 {
        self.index.objects()
    }

    /// Bytes of record data on the tape.
    pub fn data_bytes(&self) -> u64 {
        self.index.bytes()
    }

    pub fn size_bytes(&self) -> u64 {
        self.row.size_bytes
    }

    /// True when the position lies past early warning (SSC-3 reports it in READ POSITION).
    pub fn past_early_warning(&self) -> bool {
        self.index.byte_at(self.pos) > early_warning_at(self.row.size_bytes)
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Reads the object at the position and moves past it (past EOD nothing moves).
    pub async fn read(&mut self, max: u64) -> Result<ReadOutcome, GatewayError> {
        match self.index.get(self.pos) {
            None => Ok(ReadOutcome::EndOfData),
            Some(Object::Filemark) => {
                self.pos += 1;
                Ok(ReadOutcome::Filemark)
            }
            Some(Object::Record { offset, len }) => {
                let data = self.read_stream(offset, len.min(max)).await?;
                self.pos += 1;
                self.read_ahead(offset, offset + len);
                Ok(ReadOutcome::Record { data, len })
            }
        }
    }

    /// Prefetches the chunks ahead of a record `start..end` that reaches a new chunk: once per
    /// chunk, not per record, and never a chunk whose data is in the journal (a fetch would
    /// GET what is already here).
    fn read_ahead(&self, start: u64, end: u64) {
        let entered = start.div_ceil(CHUNK_SIZE);
        if entered * CHUNK_SIZE >= end && start != 0 {
            return;
        }
        let last = self.index.bytes();
        for c in entered + 1..=entered + READ_AHEAD_CHUNKS {
            if c * CHUNK_SIZE >= last {
                break;
            }
            let name = object_name(self.row.id, c);
            if !self.cache.is_dirty(&name) {
                self.cache.prefetch(&name);
            }
        }
    }

    /// `len` bytes of the data stream at `offset` (the archiver reads tapes this way too).
    pub async fn read_stream(&self, offset: u64, len: u64) -> Result<Bytes, GatewayError> {
        read_stream(&self.cache, self.row.id, offset, len).await
    }

    fn check_writable(&self) -> Result<(), GatewayError> {
        if self.row.read_only {
            return Err(GatewayError::ReadOnly(format!(
                "tape {} is a retrieved tape (read-only)",
                self.row.barcode
            )));
        }
        Ok(())
    }

    /// Cuts the tape at the position if anything follows it, durably (see the module doc).
    async fn cut_here(&mut self) -> Result<(), GatewayError> {
        if self.pos >= self.index.objects() {
            return Ok(());
        }
        let old_chunks = self.index.bytes().div_ceil(CHUNK_SIZE);
        self.index.truncate(self.pos);
        self.sync().await?;
        // Whole chunks past the new end hold nothing now: let them read (and upload) as zeros.
        for c in self.index.bytes().div_ceil(CHUNK_SIZE)..old_chunks {
            self.cache
                .discard(&object_name(self.row.id, c), 0, CHUNK_SIZE)
                .await
                .map_err(cache_error)?;
        }
        Ok(())
    }

    /// Writes `data` as records of `record_len` bytes each (`data.len()` a multiple of it).
    /// Past the end of the tape nothing more is written (`overflow`); whole records that fit
    /// are.
    pub async fn write_records(
        &mut self,
        data: &[u8],
        record_len: u64,
    ) -> Result<Written, GatewayError> {
        self.check_writable()?;
        if record_len == 0 || !(data.len() as u64).is_multiple_of(record_len) {
            return Err(GatewayError::InvalidArgument(format!(
                "{} bytes are not whole records of {record_len} bytes",
                data.len()
            )));
        }
        self.cut_here().await?;
        let start = self.index.bytes();
        let room = self.row.size_bytes.saturating_sub(start);
        let wanted = data.len() as u64 / record_len;
        let count = wanted.min(room / record_len);
        let len = count * record_len;
        let bytes = usize::try_from(len).unwrap_or(usize::MAX);
        write_stream(&self.cache, self.row.id, start, &data[..bytes]).await?;
        self.index.push_records(record_len, count);
        self.pos = self.index.objects();
        self.unsynced |= count > 0;
        Ok(Written {
            count,
            early_warning: start + len > early_warning_at(self.row.size_bytes),
            overflow: count < wanted,
        })
    }

    /// Writes `count` filemarks, then makes everything before them durable (`sync`); a count
    /// of 0 only syncs (SSC-3: WRITE FILEMARKS with a zero count flushes the buffer).
    pub async fn write_filemarks(&mut self, count: u64) -> Result<Written, GatewayError> {
        if count > 0 {
            self.check_writable()?;
            self.cut_here().await?;
            self.index.push_filemarks(count);
            self.pos = self.index.objects();
        }
        self.sync().await?;
        Ok(Written {
            count,
            early_warning: self.index.bytes() > early_warning_at(self.row.size_bytes),
            overflow: false,
        })
    }

    /// Makes every record and filemark written so far durable: journal first, index second.
    pub async fn sync(&mut self) -> Result<(), GatewayError> {
        if self.unsynced {
            self.cache.flush().await.map_err(cache_error)?;
            self.unsynced = false;
        }
        if !self.index.is_persisted() {
            let (from, runs) = self.index.unpersisted();
            let end = (self.index.bytes(), self.index.objects());
            let keep = end.0.div_ceil(CHUNK_SIZE);
            self.catalog
                .commit_tape_index(self.row.id, from, runs, end, keep)?;
            self.index.mark_persisted();
            self.row.data_bytes = end.0;
            self.row.objects = end.1;
        }
        Ok(())
    }

    pub async fn rewind(&mut self) -> Result<(), GatewayError> {
        self.sync().await?;
        self.pos = 0;
        Ok(())
    }

    /// ERASE: end of data becomes the current position.
    pub async fn erase(&mut self) -> Result<(), GatewayError> {
        self.check_writable()?;
        self.cut_here().await
    }

    /// Spaces over records: forward for a positive count, reverse for a negative one.
    pub fn space_records(&mut self, count: i64) -> Spaced {
        let s = if count >= 0 {
            self.index
                .space_records_forward(self.pos, count.unsigned_abs())
        } else {
            self.index
                .space_records_reverse(self.pos, count.unsigned_abs())
        };
        self.pos = s.position;
        s
    }

    pub fn space_filemarks(&mut self, count: i64) -> Spaced {
        let s = if count >= 0 {
            self.index
                .space_filemarks_forward(self.pos, count.unsigned_abs())
        } else {
            self.index
                .space_filemarks_reverse(self.pos, count.unsigned_abs())
        };
        self.pos = s.position;
        s
    }

    pub fn space_to_end_of_data(&mut self) {
        self.pos = self.index.objects();
    }

    /// LOCATE to logical object `object`; past end of data it stops there.
    pub fn locate(&mut self, object: u64) -> Option<Stop> {
        if object > self.index.objects() {
            self.pos = self.index.objects();
            return Some(Stop::EndOfData);
        }
        self.pos = object;
        None
    }

    /// LOCATE to the start of logical file `file`.
    pub fn locate_file(&mut self, file: u64) -> Option<Stop> {
        match self.index.start_of_file(file) {
            Some(p) => {
                self.pos = p;
                None
            }
            None => {
                self.pos = self.index.objects();
                Some(Stop::EndOfData)
            }
        }
    }
}

/// `len` bytes of tape `tape`'s data stream at `offset`, through the cache.
pub async fn read_stream(
    cache: &Cache,
    tape: i64,
    offset: u64,
    len: u64,
) -> Result<Bytes, GatewayError> {
    let mut pieces = Vec::new();
    for seg in segments(CHUNK_SIZE, offset, len) {
        let piece = cache
            .read(&object_name(tape, seg.chunk), seg.offset, seg.len)
            .await
            .map_err(cache_error)?;
        pieces.push(piece);
    }
    if pieces.len() == 1 {
        return Ok(pieces.swap_remove(0));
    }
    let mut out = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    for p in pieces {
        out.extend_from_slice(&p);
    }
    Ok(out.freeze())
}

/// Writes `data` at `offset` of tape `tape`'s data stream (a retrieval refilling a tape).
pub async fn write_stream(
    cache: &Cache,
    tape: i64,
    offset: u64,
    data: &[u8],
) -> Result<(), GatewayError> {
    let mut done = 0usize;
    for seg in segments(CHUNK_SIZE, offset, data.len() as u64) {
        let n = usize::try_from(seg.len).unwrap_or(usize::MAX);
        cache
            .write(
                &object_name(tape, seg.chunk),
                seg.offset,
                &data[done..done + n],
            )
            .await
            .map_err(cache_error)?;
        done += n;
    }
    Ok(())
}
