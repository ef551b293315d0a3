//! A tape's record index: the logical objects (records and filemarks, as SSC-3 counts them) from the
//! beginning of the tape to end of data, as runs of equal-sized records or of filemarks, and
//! the positioning rules over them (space, locate, file numbers).
//!
//! Pure: no I/O. Logical object `n` is the (n+1)th record or filemark; a position is the
//! number of objects before it (0 = beginning of tape, `objects()` = end of data). Invariant:
//! runs are contiguous (each starts where the previous ended, in objects and in bytes), none
//! is empty, and two adjacent runs never have the same kind and record size.

use crate::catalog::tapes::RunRow;

/// One logical object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// A record of `len` bytes at byte `offset` of the data stream.
    Record {
        offset: u64,
        len: u64,
    },
    Filemark,
}

/// Why a space operation stopped before its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Crossed a filemark while spacing over records (forward: now after it; reverse: before).
    Filemark,
    EndOfData,
    BeginningOfTape,
}

/// The result of a space: objects (or filemarks) actually spaced over and why it stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spaced {
    pub position: u64,
    pub done: u64,
    pub stop: Option<Stop>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    runs: Vec<RunRow>,
    /// Runs `..persisted` are known to be in the catalog unchanged.
    persisted: usize,
    /// End of data as the catalog has it: a cut that drops whole runs changes only this.
    committed_end: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tape index run at object {at} does not follow the previous run")]
pub struct BrokenIndex {
    pub at: u64,
}

fn end_of(r: &RunRow) -> (u64, u64) {
    (
        r.first_object + r.count,
        r.byte_offset + r.record_bytes.unwrap_or(0) * r.count,
    )
}

impl Index {
    /// The index as the catalog holds it; runs that do not join up are refused.
    pub fn from_runs(runs: Vec<RunRow>) -> Result<Self, BrokenIndex> {
        let mut expect = (0u64, 0u64, 0u64);
        for r in &runs {
            if (r.first_object, r.byte_offset, r.filemarks_before) != expect || r.count == 0 {
                return Err(BrokenIndex { at: r.first_object });
            }
            let (o, b) = end_of(r);
            let fm = expect.2 + if r.record_bytes.is_none() { r.count } else { 0 };
            expect = (o, b, fm);
        }
        let persisted = runs.len();
        Ok(Self {
            committed_end: expect.0,
            runs,
            persisted,
        })
    }

    pub fn runs(&self) -> &[RunRow] {
        &self.runs
    }

    /// Objects to end of data.
    pub fn objects(&self) -> u64 {
        self.runs.last().map_or(0, |r| end_of(r).0)
    }

    /// Bytes of record data to end of data.
    pub fn bytes(&self) -> u64 {
        self.runs.last().map_or(0, |r| end_of(r).1)
    }

    fn filemarks_total(&self) -> u64 {
        self.runs.last().map_or(0, |r| {
            r.filemarks_before + if r.record_bytes.is_none() { r.count } else { 0 }
        })
    }

    /// The run holding object `n`, if `n` is before end of data.
    fn run_of(&self, n: u64) -> Option<usize> {
        let i = self.runs.partition_point(|r| r.first_object <= n);
        let i = i.checked_sub(1)?;
        (n < end_of(&self.runs[i]).0).then_some(i)
    }

    pub fn get(&self, n: u64) -> Option<Object> {
        let r = &self.runs[self.run_of(n)?];
        Some(match r.record_bytes {
            None => Object::Filemark,
            Some(len) => Object::Record {
                offset: r.byte_offset + (n - r.first_object) * len,
                len,
            },
        })
    }

    /// Byte offset of the data stream at position `n` (clamped to end of data).
    pub fn byte_at(&self, n: u64) -> u64 {
        match self.run_of(n) {
            Some(i) => {
                let r = &self.runs[i];
                r.byte_offset + (n - r.first_object) * r.record_bytes.unwrap_or(0)
            }
            None => self.bytes(),
        }
    }

    /// Filemarks before position `n`: the logical file number (SSC-3 READ POSITION).
    pub fn file_at(&self, n: u64) -> u64 {
        match self.run_of(n) {
            Some(i) => {
                let r = &self.runs[i];
                r.filemarks_before
                    + if r.record_bytes.is_none() {
                        n - r.first_object
                    } else {
                        0
                    }
            }
            None => self.filemarks_total(),
        }
    }

    /// Makes `n` the end of data (tape semantics: writing anywhere drops what follows).
    pub fn truncate(&mut self, n: u64) {
        if n >= self.objects() {
            return;
        }
        let i = self.runs.partition_point(|r| r.first_object < n);
        // Runs from `i` on start at or after `n`; run `i - 1` may straddle it.
        self.runs.truncate(i);
        self.persisted = self.persisted.min(i);
        if let Some(last) = self.runs.last_mut() {
            let end = end_of(last).0;
            if end > n {
                last.count = n - last.first_object;
                self.persisted = self.persisted.min(i - 1);
            }
        }
    }

    fn push(&mut self, record_bytes: Option<u64>, count: u64) {
        if count == 0 {
            return;
        }
        if let Some(last) = self.runs.last_mut()
            && last.record_bytes == record_bytes
        {
            last.count += count;
            self.persisted = self.persisted.min(self.runs.len() - 1);
            return;
        }
        let (first_object, byte_offset) = self.runs.last().map_or((0, 0), end_of);
        let filemarks_before = self.filemarks_total();
        self.runs.push(RunRow {
            first_object,
            byte_offset,
            count,
            record_bytes,
            filemarks_before,
        });
    }

    /// Appends `count` records of `len` bytes at end of data.
    pub fn push_records(&mut self, len: u64, count: u64) {
        self.push(Some(len), count);
    }

    pub fn push_filemarks(&mut self, count: u64) {
        self.push(None, count);
    }

    /// What the catalog must be told: the first object whose runs changed and the runs from
    /// there on. Call `mark_persisted` once they are committed.
    pub fn unpersisted(&self) -> (u64, &[RunRow]) {
        let from = self
            .runs
            .get(self.persisted)
            .map_or(self.objects(), |r| r.first_object);
        (from, &self.runs[self.persisted..])
    }

    pub fn is_persisted(&self) -> bool {
        self.persisted == self.runs.len() && self.committed_end == self.objects()
    }

    pub fn mark_persisted(&mut self) {
        self.persisted = self.runs.len();
        self.committed_end = self.objects();
    }

    /// Spaces over up to `count` records forward from `pos`; stops after a filemark or at EOD.
    pub fn space_records_forward(&self, mut pos: u64, count: u64) -> Spaced {
        let mut done = 0;
        while done < count {
            let Some(i) = self.run_of(pos) else {
                return stopped(pos, done, Stop::EndOfData);
            };
            let r = &self.runs[i];
            if r.record_bytes.is_none() {
                return stopped(pos + 1, done, Stop::Filemark);
            }
            let k = (count - done).min(end_of(r).0 - pos);
            pos += k;
            done += k;
        }
        finished(pos, done)
    }

    /// Spaces over up to `count` records backward; stops before a filemark or at BOT.
    pub fn space_records_reverse(&self, mut pos: u64, count: u64) -> Spaced {
        pos = pos.min(self.objects());
        let mut done = 0;
        while done < count {
            if pos == 0 {
                return stopped(0, done, Stop::BeginningOfTape);
            }
            let Some(i) = self.run_of(pos - 1) else {
                return stopped(pos, done, Stop::BeginningOfTape);
            };
            let r = &self.runs[i];
            if r.record_bytes.is_none() {
                return stopped(pos - 1, done, Stop::Filemark);
            }
            let k = (count - done).min(pos - r.first_object);
            pos -= k;
            done += k;
        }
        finished(pos, done)
    }

    /// Spaces forward over `count` filemarks: ends just after the last one, or at EOD.
    pub fn space_filemarks_forward(&self, mut pos: u64, count: u64) -> Spaced {
        let mut done = 0;
        while done < count {
            let Some(mut i) = self.run_of(pos) else {
                return stopped(self.objects(), done, Stop::EndOfData);
            };
            // Adjacent record runs differ only in size: skip them all.
            while self.runs[i].record_bytes.is_some() {
                i += 1;
                match self.runs.get(i) {
                    Some(r) => pos = r.first_object,
                    None => return stopped(self.objects(), done, Stop::EndOfData),
                }
            }
            let r = &self.runs[i];
            let k = (count - done).min(end_of(r).0 - pos);
            pos += k;
            done += k;
        }
        finished(pos, done)
    }

    /// Spaces backward over `count` filemarks: ends just before the last one, or at BOT.
    pub fn space_filemarks_reverse(&self, mut pos: u64, count: u64) -> Spaced {
        pos = pos.min(self.objects());
        let mut done = 0;
        while done < count {
            if pos == 0 {
                return stopped(0, done, Stop::BeginningOfTape);
            }
            let Some(mut i) = self.run_of(pos - 1) else {
                return stopped(0, done, Stop::BeginningOfTape);
            };
            while self.runs[i].record_bytes.is_some() {
                let Some(j) = i.checked_sub(1) else {
                    return stopped(0, done, Stop::BeginningOfTape);
                };
                i = j;
                pos = end_of(&self.runs[i]).0;
            }
            let r = &self.runs[i];
            let k = (count - done).min(pos - r.first_object);
            pos -= k;
            done += k;
        }
        finished(pos, done)
    }

    /// The position just after filemark number `file` (1-based), i.e. the start of that file;
    /// `None` if the tape has fewer filemarks.
    pub fn start_of_file(&self, file: u64) -> Option<u64> {
        if file == 0 {
            return Some(0);
        }
        let s = self.space_filemarks_forward(0, file);
        (s.stop.is_none()).then_some(s.position)
    }
}

fn stopped(position: u64, done: u64, stop: Stop) -> Spaced {
    Spaced {
        position,
        done,
        stop: Some(stop),
    }
}

fn finished(position: u64, done: u64) -> Spaced {
    Spaced {
        position,
        done,
        stop: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: a plain list of objects (`Some(len)` record, `None` filemark).
    fn model_of(ops: &[(bool, u64, u64)]) -> (Index, Vec<Option<u64>>) {
        let mut ix = Index::default();
        let mut m = Vec::new();
        for &(fm, len, count) in ops {
            if fm {
                ix.push_filemarks(count);
                m.extend(std::iter::repeat_n(None, count as usize));
            } else {
                ix.push_records(len, count);
                m.extend(std::iter::repeat_n(Some(len), count as usize));
            }
        }
        (ix, m)
    }

    fn model_forward_records(m: &[Option<u64>], mut pos: u64, count: u64) -> Spaced {
        let mut done = 0;
        while done < count {
            match m.get(pos as usize) {
                None => return stopped(pos, done, Stop::EndOfData),
                Some(None) => return stopped(pos + 1, done, Stop::Filemark),
                Some(Some(_)) => {
                    pos += 1;
                    done += 1;
                }
            }
        }
        finished(pos, done)
    }

    fn model_reverse_records(m: &[Option<u64>], mut pos: u64, count: u64) -> Spaced {
        let mut done = 0;
        while done < count {
            if pos == 0 {
                return stopped(0, done, Stop::BeginningOfTape);
            }
            match m[pos as usize - 1] {
                None => return stopped(pos - 1, done, Stop::Filemark),
                Some(_) => {
                    pos -= 1;
                    done += 1;
                }
            }
        }
        finished(pos, done)
    }

    fn model_forward_fm(m: &[Option<u64>], mut pos: u64, count: u64) -> Spaced {
        let mut done = 0;
        while done < count {
            match m.get(pos as usize) {
                None => return stopped(m.len() as u64, done, Stop::EndOfData),
                Some(None) => done += 1,
                Some(Some(_)) => {}
            }
            pos += 1;
        }
        finished(pos, done)
    }

    fn model_reverse_fm(m: &[Option<u64>], mut pos: u64, count: u64) -> Spaced {
        let mut done = 0;
        while done < count {
            if pos == 0 {
                return stopped(0, done, Stop::BeginningOfTape);
            }
            pos -= 1;
            if m[pos as usize].is_none() {
                done += 1;
            }
        }
        finished(pos, done)
    }

    fn ops() -> impl Strategy<Value = Vec<(bool, u64, u64)>> {
        proptest::collection::vec((any::<bool>(), 1u64..4, 1u64..4), 0..12)
    }

    proptest! {
        #[test]
        fn index_matches_a_list_of_objects(ops in ops(), pos in 0u64..40, count in 0u64..8, cut in 0u64..40) {
            let (ix, m) = model_of(&ops);
            prop_assert_eq!(ix.objects(), m.len() as u64);
            let mut bytes = 0;
            let mut files = 0;
            for (n, o) in m.iter().enumerate() {
                let n = n as u64;
                prop_assert_eq!(ix.byte_at(n), bytes);
                prop_assert_eq!(ix.file_at(n), files);
                match o {
                    Some(len) => {
                        prop_assert_eq!(ix.get(n), Some(Object::Record { offset: bytes, len: *len }));
                        bytes += len;
                    }
                    None => {
                        prop_assert_eq!(ix.get(n), Some(Object::Filemark));
                        files += 1;
                    }
                }
            }
            prop_assert_eq!(ix.bytes(), bytes);
            prop_assert_eq!(ix.file_at(m.len() as u64), files);
            let pos = pos.min(m.len() as u64);
            prop_assert_eq!(ix.space_records_forward(pos, count), model_forward_records(&m, pos, count));
            prop_assert_eq!(ix.space_records_reverse(pos, count), model_reverse_records(&m, pos, count));
            prop_assert_eq!(ix.space_filemarks_forward(pos, count), model_forward_fm(&m, pos, count));
            prop_assert_eq!(ix.space_filemarks_reverse(pos, count), model_reverse_fm(&m, pos, count));
            // Truncation then reload from the runs gives the same prefix.
            let mut t = ix.clone();
            t.truncate(cut);
            let keep = (cut as usize).min(m.len());
            let (_, again) = model_of(&[]);
            prop_assert!(again.is_empty());
            prop_assert_eq!(t.objects(), keep as u64);
            for (n, o) in m[..keep].iter().enumerate() {
                prop_assert_eq!(t.get(n as u64).is_some_and(|x| matches!(x, Object::Filemark)), o.is_none());
            }
            let reloaded = Index::from_runs(t.runs().to_vec()).unwrap();
            prop_assert_eq!(reloaded.runs(), t.runs());
        }
    }

    #[test]
    fn persisted_prefix_tracks_changes() {
        let mut ix = Index::default();
        ix.push_records(10, 3);
        ix.push_filemarks(1);
        assert_eq!(ix.unpersisted().0, 0);
        ix.mark_persisted();
        assert_eq!(ix.unpersisted(), (4, &[][..]));
        ix.push_filemarks(1); // extends the filemark run: it must be rewritten
        assert_eq!(ix.unpersisted().0, 3);
        ix.mark_persisted();
        ix.truncate(2);
        let (from, runs) = ix.unpersisted();
        assert_eq!((from, runs.len(), runs[0].count), (0, 1, 2));
        ix.mark_persisted();
        ix.push_records(5, 1);
        assert_eq!(ix.unpersisted().0, 2);
        assert_eq!(ix.start_of_file(1), None);
        assert!(
            Index::from_runs(vec![RunRow {
                first_object: 1,
                byte_offset: 0,
                count: 1,
                record_bytes: None,
                filemarks_before: 0
            }])
            .is_err()
        );
    }
}
