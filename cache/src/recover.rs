//! Startup: open both areas, reset the cache files and replay the journal into the index.
//!
//! Owns nothing after `open` returns. Invariant: every record replay sees is indexed in seq
//! order, so the rebuilt extent map of an object points every byte at the newest retained record
//! covering it, exactly as before the crash; replaying records whose effect is already in the
//! bucket only causes an idempotent re-upload.

use crate::buffer::Journal;
use crate::index::{ObjectFiles, State};
use crate::record::{self, SEGMENT_HEADER_LEN};
use crate::{Area, CacheConfig, CacheError};

/// Largest journal segment: big enough to make rotation rare, small enough to reclaim promptly.
/// Space comes back a segment at a time, so this is also the step in which a full buffer
/// admits waiting writers: at 64 MiB (and an eighth of the buffer) a sustained writer stalled
/// until 64 uploads had finished, then ran, then stalled again; at 16 MiB (and a 32nd) it
/// follows the uploads closely, and the unlink done under the index lock is a quarter as long.
const MAX_SEGMENT_BYTES: u64 = 16 << 20;
/// The buffer holds at least this many segments (when the object size allows).
const MIN_SEGMENTS: u64 = 32;

pub(crate) fn open(config: &CacheConfig) -> Result<State, CacheError> {
    let bad = |reason| Err(CacheError::Config { reason });
    if config.object_size == 0 || config.object_size > u64::from(u32::MAX) {
        return bad("object_size must be between 1 byte and 4 GiB");
    }
    if !config.page_size.is_power_of_two() || !config.object_size.is_multiple_of(config.page_size) {
        return bad("page_size must be a power of two dividing object_size");
    }
    if config.upload_concurrency == 0 {
        return bad("upload_concurrency must be at least 1");
    }
    let object_size = usize::try_from(config.object_size).map_err(|_| CacheError::Config {
        reason: "object_size does not fit in memory",
    })?;
    let max_record = record::record_len(record::MAX_NAME_LEN, object_size)
        .and_then(|l| l.checked_add(SEGMENT_HEADER_LEN))
        .ok_or(CacheError::Config {
            reason: "object_size too large",
        })? as u64;
    let segment_bytes = (config.buffer_capacity / MIN_SEGMENTS)
        .min(MAX_SEGMENT_BYTES)
        .max(max_record);
    // Two segments: the active one plus room to seal it and start the next while reclaiming.
    if config.buffer_capacity < segment_bytes.saturating_mul(2) {
        return bad("buffer_capacity must hold at least two journal segments (2 x object_size)");
    }
    let cache = Area::open(&config.cache_dir, config.cache_capacity).map_err(|source| {
        CacheError::Area {
            which: "cache",
            source,
        }
    })?;
    let buffer = Area::open(&config.buffer_dir, config.buffer_capacity).map_err(|source| {
        CacheError::Area {
            which: "upload buffer",
            source,
        }
    })?;
    let files = ObjectFiles::reset(cache.path()).map_err(|source| CacheError::CacheFile {
        name: String::new(),
        source,
    })?;
    let mut state = State::new(
        Journal::detached(buffer.path(), segment_bytes),
        files,
        config.object_size,
        config.cache_capacity,
    );
    let mut replayed = 0u64;
    // Indexed as read, so replay needs memory for one segment, not for the whole journal; the
    // data stays in the segments, where reads and uploads find it.
    let journal = Journal::open(buffer.path(), segment_bytes, |rec, at| {
        let len = match rec.op {
            record::Op::Write(d) => d.len() as u64,
            record::Op::Discard(l) => u64::from(l),
        };
        if rec
            .offset
            .checked_add(len)
            .is_none_or(|e| e > config.object_size)
        {
            // Written under another object_size: refusing beats silently truncating data.
            return Err(std::io::Error::other(format!(
                "journal record {} for {:?} lies outside object_size",
                rec.seq, rec.name
            )));
        }
        replayed += 1;
        state.apply(rec.name, rec.offset, rec.op, rec.seq, at);
        Ok(())
    })
    .map_err(|source| CacheError::Journal {
        what: "replaying",
        source,
    })?;
    state.journal = journal;
    tracing::info!(
        records = replayed,
        dirty_objects = state.dirty_names.len(),
        buffer_bytes = state.journal.total_bytes(),
        "cache opened"
    );
    Ok(state)
}
