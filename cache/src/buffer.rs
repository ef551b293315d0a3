//! The upload buffer: an append-only journal of segment files in the buffer area.
//!
//! Owns the segment files: appending, rotating, what a flush must fsync, FIFO reclaim, and the
//! startup scan that hands every surviving record to replay. It does not decide which records are
//! still needed (the index does, as a sequence number) and never fsyncs on its own: callers batch
//! that (group commit in `lib.rs`).
//!
//! Invariants: record sequence numbers increase by one across the whole retained journal;
//! segments are deleted oldest first, and only when every record in them is older than the oldest
//! record still needed; after `open` the retained segments hold exactly the records replayed, so
//! a later replay never stops earlier than this one did.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::record::{self, Decode, Record, SEGMENT_HEADER_LEN};

const SEGMENT_SUFFIX: &str = ".seg";

#[derive(Debug)]
struct Segment {
    id: u64,
    file: Arc<File>,
    len: u64,
    /// Seq of the last record, or 0 if the segment holds none (seqs start at 1).
    last_seq: u64,
    synced: bool,
}

/// Where a record's payload lies in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u64,
    /// Byte offset of the payload's first byte in the segment file.
    pub(crate) pos: u64,
}

/// What one group-commit fsync covers, captured under the index lock and run outside it.
#[derive(Debug)]
pub(crate) struct SyncPlan {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
    dir_version: u64,
    upto_seq: u64,
    upto_segment: u64,
}

impl SyncPlan {
    /// Blocking: fsyncs the segments, then the directory if segments were created since.
    pub(crate) fn run(&self) -> std::io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        if let Some(dir) = &self.dir {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Payloads up to this size are copied next to their header and written with one syscall.
const SMALL_RECORD: usize = 64 << 10;

#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Oldest first; the last one is the active segment appends go to.
    segments: VecDeque<Segment>,
    next_seq: u64,
    synced_seq: u64,
    /// The newest seq a flush has started to make durable (at least `synced_seq`): a flush
    /// acknowledges every record up to its plan's seq, so those count as promised while it runs.
    promised_seq: u64,
    /// Bumped by every create or delete of a segment; a flush must fsync the directory while
    /// `dir_synced < dir_version`, so a deletion is durable before later records are acknowledged.
    dir_version: u64,
    dir_synced: u64,
    total_bytes: u64,
}

impl Journal {
    /// Scans `dir`, calls `replay` for each valid record in seq order, cuts the journal at the
    /// first torn record (truncating that segment and deleting later ones, durably), and starts
    /// a fresh active segment.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        mut replay: impl FnMut(&Record<'_>, Location) -> std::io::Result<()>,
    ) -> std::io::Result<Self> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(SEGMENT_SUFFIX)
                && let Ok(id) = u64::from_str_radix(hex, 16)
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        // Reclaim deletes a prefix; segments before a gap are reclaimed ones that a crash
        // brought back (their deletion was not yet durable). Only the run ending at the newest
        // segment is the journal.
        let mut keep_from = 0;
        for i in 1..ids.len() {
            if ids[i - 1].checked_add(1) != Some(ids[i]) {
                keep_from = i;
            }
        }
        for &id in &ids[..keep_from] {
            std::fs::remove_file(segment_path(dir, id))?;
        }
        let mut journal = Self::detached(dir, segment_bytes);
        let mut prev_seq: Option<u64> = None;
        let mut torn = false;
        for &id in &ids[keep_from..] {
            let path = segment_path(dir, id);
            if torn {
                // Records after a torn one were never acknowledged (flush syncs older segments
                // first); dropping them keeps replay a prefix of the writes.
                std::fs::remove_file(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut buf = Vec::new();
            (&file).read_to_end(&mut buf)?;
            if record::decode_segment_header(&buf) != Ok(id) {
                torn = true;
                drop(file);
                std::fs::remove_file(&path)?;
                continue;
            }
            let mut at = SEGMENT_HEADER_LEN;
            let mut last_seq = 0;
            while at < buf.len() {
                match record::decode(&buf[at..]) {
                    Ok((rec, used))
                        if prev_seq.is_none_or(|p| p.checked_add(1) == Some(rec.seq)) =>
                    {
                        let pos = (at + record::payload_start(rec.name.len())) as u64;
                        replay(&rec, Location { segment: id, pos })?;
                        prev_seq = Some(rec.seq);
                        last_seq = rec.seq;
                        at += used;
                    }
                    Ok(_) | Err(Decode::Incomplete | Decode::Malformed(_)) => {
                        torn = true;
                        break;
                    }
                }
            }
            let len = at as u64;
            if torn {
                tracing::warn!(
                    segment = id,
                    valid_bytes = len,
                    "journal ends in a torn record"
                );
                file.set_len(len)?;
                file.sync_all()?;
            }
            journal.total_bytes += len;
            journal.segments.push_back(Segment {
                id,
                file: Arc::new(file),
                len,
                last_seq,
                synced: true,
            });
        }
        if let Some(p) = prev_seq {
            journal.next_seq = p + 1;
            journal.synced_seq = p;
            journal.promised_seq = p;
        }
        // Right after the last retained segment: a gap would make the next open take the
        // retained ones for reclaimed leftovers.
        let next_id = match journal.segments.back() {
            Some(s) => s.id + 1,
            None => ids.last().map_or(0, |&id| id + 1),
        };
        journal.create_segment(next_id)?;
        // The cut and the new segment must be durable before any new record is acknowledged:
        // otherwise a later replay could stop at the old torn tail and miss the new records.
        if let Some(plan) = journal.sync_plan() {
            plan.run()?;
            journal.mark_synced(&plan);
        }
        Ok(journal)
    }

    /// An empty journal with no files yet: a stand-in while `open` replays into the index.
    pub(crate) fn detached(dir: &Path, segment_bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: VecDeque::new(),
            next_seq: 1,
            synced_seq: 0,
            promised_seq: 0,
            dir_version: 1,
            dir_synced: 0,
            total_bytes: 0,
        }
    }

    fn create_segment(&mut self, id: u64) -> std::io::Result<()> {
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all_at(&record::encode_segment_header(id), 0)?;
        let len = SEGMENT_HEADER_LEN as u64;
        self.total_bytes += len;
        self.dir_version += 1;
        self.segments.push_back(Segment {
            id,
            file: Arc::new(file),
            len,
            last_seq: 0,
            synced: false,
        });
        Ok(())
    }

    /// The segment appends currently go to.
    pub(crate) fn active_segment(&self) -> Option<u64> {
        self.segments.back().map(|s| s.id)
    }

    /// The seq the next appended record must carry.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes held by retained segments (the upload buffer's fill level).
    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes appending a record of `len` bytes would add (including a new segment header).
    pub(crate) fn cost(&self, len: u64) -> u64 {
        match self.segments.back() {
            Some(s) if s.len + len <= self.segment_bytes || s.last_seq == 0 => len,
            _ => len + SEGMENT_HEADER_LEN as u64,
        }
    }

    /// Appends an encoded record carrying `next_seq()`; the page cache holds it until a flush.
    /// Returns where its payload lies, so reads can be served from it.
    pub(crate) fn append(&mut self, encoded: &record::Encoded<'_>) -> std::io::Result<Location> {
        let len = encoded.len() as u64;
        let needs_rotate = match self.segments.back() {
            Some(s) => s.len + len > self.segment_bytes && s.last_seq != 0,
            None => true,
        };
        if needs_rotate {
            let id = self.segments.back().map_or(0, |s| s.id + 1);
            self.create_segment(id)?;
        }
        let seq = self.next_seq;
        let seg = self
            .segments
            .back_mut()
            .expect("a segment was just created if none was active");
        let at = Location {
            segment: seg.id,
            pos: seg.len + encoded.head.len() as u64,
        };
        // Small records go out in one write; large ones as three so the payload is not copied
        // (a copy costs more than two extra syscalls only for payloads beyond a few pages).
        if encoded.payload.len() <= SMALL_RECORD {
            let mut one = Vec::with_capacity(encoded.len());
            one.extend_from_slice(&encoded.head);
            one.extend_from_slice(encoded.payload);
            one.extend_from_slice(&encoded.crc);
            seg.file.write_all_at(&one, seg.len)?;
        } else {
            let head = encoded.head.len() as u64;
            let payload = encoded.payload.len() as u64;
            seg.file.write_all_at(&encoded.head, seg.len)?;
            seg.file.write_all_at(encoded.payload, seg.len + head)?;
            seg.file
                .write_all_at(&encoded.crc, seg.len + head + payload)?;
        }
        seg.len += len;
        seg.last_seq = seq;
        seg.synced = false;
        self.total_bytes += len;
        self.next_seq += 1;
        Ok(at)
    }

    /// Reads `out.len()` bytes at `pos` of segment `segment` (a record's payload, from the page
    /// cache when it is recent). The segment must still be retained: the index keeps every
    /// segment it points into (see `reclaim`), so a missing one is an error, never zeros.
    pub(crate) fn read_at(&self, segment: u64, pos: u64, out: &mut [u8]) -> std::io::Result<()> {
        let front = self.segments.front().map_or(0, |s| s.id);
        let seg = segment
            .checked_sub(front)
            .and_then(|i| self.segments.get(usize::try_from(i).ok()?))
            .filter(|s| s.id == segment && pos + out.len() as u64 <= s.len)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "journal segment {segment} no longer holds {pos}+{}",
                        out.len()
                    ),
                )
            })?;
        seg.file.read_exact_at(out, pos)
    }

    /// What an fsync must cover to make every appended record durable; `None` if nothing is.
    pub(crate) fn sync_plan(&self) -> Option<SyncPlan> {
        let written = self.next_seq - 1;
        let dir_dirty = self.dir_synced < self.dir_version;
        if written <= self.synced_seq && !dir_dirty {
            return None;
        }
        Some(SyncPlan {
            files: self
                .segments
                .iter()
                .filter(|s| !s.synced)
                .map(|s| s.file.clone())
                .collect(),
            dir: dir_dirty.then(|| self.dir.clone()),
            dir_version: self.dir_version,
            upto_seq: written,
            upto_segment: self.segments.back().map_or(0, |s| s.id),
        })
    }

    pub(crate) fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    /// Records up to this seq are durable or about to be acknowledged as durable by a running
    /// flush: a record past it was never promised to anyone.
    pub(crate) fn promised_seq(&self) -> u64 {
        self.promised_seq.max(self.synced_seq)
    }

    /// Called when a flush takes `plan` to run it: from now on its records count as promised.
    pub(crate) fn begin_sync(&mut self, plan: &SyncPlan) {
        self.promised_seq = self.promised_seq.max(plan.upto_seq);
    }

    /// Records that `plan` ran successfully.
    pub(crate) fn mark_synced(&mut self, plan: &SyncPlan) {
        self.synced_seq = self.synced_seq.max(plan.upto_seq);
        for s in &mut self.segments {
            // A segment written after the plan was taken has last_seq > upto_seq.
            if s.id <= plan.upto_segment && s.last_seq <= plan.upto_seq {
                s.synced = true;
            }
        }
        if plan.dir.is_some() {
            self.dir_synced = self.dir_synced.max(plan.dir_version);
        }
    }

    /// Deletes the oldest segments whose records are all older than `needed_from` (the oldest
    /// seq still needed). With `rotate`, a fully reclaimable active segment is sealed first so
    /// that it can go too (writers are waiting for space).
    pub(crate) fn reclaim(&mut self, needed_from: u64, rotate: bool) -> std::io::Result<()> {
        if rotate
            && let Some(active) = self.segments.back()
            && active.last_seq != 0
            && active.last_seq < needed_from
        {
            let id = active.id + 1;
            self.create_segment(id)?;
        }
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            if oldest.last_seq >= needed_from {
                break;
            }
            std::fs::remove_file(segment_path(&self.dir, oldest.id))?;
            self.total_bytes -= oldest.len;
            self.segments.pop_front();
            // Made durable by the next flush's directory fsync. Until then a crash may bring
            // it back: it then replays records already in the bucket (harmless), and it is
            // whole, because any flush after its records synced it before later records.
            self.dir_version += 1;
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}{SEGMENT_SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Op;

    fn open(dir: &Path, seen: &mut Vec<u64>) -> Journal {
        Journal::open(dir, 256, |r, _| {
            seen.push(r.seq);
            Ok(())
        })
        .unwrap()
    }

    fn append(j: &mut Journal, n: usize) {
        for _ in 0..n {
            let seq = j.next_seq();
            let rec = Record {
                seq,
                name: "o",
                offset: 0,
                op: Op::Write(&[1; 60]),
            };
            j.append(&record::encode_parts(&rec).unwrap()).unwrap();
        }
    }

    #[test]
    fn torn_middle_segment_cuts_the_journal_and_later_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), &mut Vec::new());
        append(&mut j, 12); // 97-byte records, two per 256-byte segment
        assert!(j.segments.len() >= 5);
        let middle = j.segments[2].id;
        drop(j);
        let path = segment_path(dir.path(), middle);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let mut seen = Vec::new();
        let mut j = open(dir.path(), &mut seen);
        let kept = seen.len() as u64;
        assert_eq!(seen, (1..=kept).collect::<Vec<_>>());
        assert!(kept < 12);
        append(&mut j, 3);
        drop(j);
        let mut seen = Vec::new();
        let j = open(dir.path(), &mut seen);
        assert_eq!(seen, (1..=kept + 3).collect::<Vec<_>>());
        assert_eq!(j.next_seq(), kept + 4);
    }

    #[test]
    fn reclaim_deletes_oldest_segments_only_below_the_needed_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), &mut Vec::new());
        append(&mut j, 8);
        let before = j.total_bytes();
        j.reclaim(5, false).unwrap();
        assert!(j.total_bytes() < before);
        assert!(
            j.segments
                .iter()
                .all(|s| s.last_seq == 0 || s.last_seq >= 5)
        );
        j.reclaim(9, true).unwrap();
        assert_eq!(j.segments.len(), 1);
        drop(j);
        let mut seen = Vec::new();
        open(dir.path(), &mut seen);
        assert!(seen.is_empty());
    }
}
