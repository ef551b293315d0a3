//! The dirty extent map of one object: which journal record holds the newest bytes of each dirty
//! range.
//!
//! Owns only the mapping (pure, no I/O). Invariant: extents are non-empty, sorted and disjoint;
//! inserting a range trims or splits whatever it overlaps, so every byte maps to the newest write
//! that covered it, and a trimmed extent keeps pointing at the matching bytes of its record.

use std::collections::BTreeMap;
use std::ops::Range;

/// Where the bytes of an extent live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// In journal segment `segment`, starting at byte `pos` of its file.
    Journal { segment: u64, pos: u64 },
    /// A discard: the range reads as zeros.
    Zero,
}

impl Source {
    /// The same source advanced by `by` bytes (for the tail of a split extent).
    fn advanced(self, by: u64) -> Self {
        match self {
            Self::Journal { segment, pos } => Self::Journal {
                segment,
                pos: pos + by,
            },
            Self::Zero => Self::Zero,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    end: u64,
    /// Journal seq of the record the bytes came from.
    seq: u64,
    src: Source,
}

/// One clipped piece of an extent, as returned by [`ExtentMap::pieces`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) range: Range<u64>,
    pub(crate) src: Source,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct ExtentMap {
    /// start -> extent.
    map: BTreeMap<u64, Extent>,
    bytes: u64,
}

impl ExtentMap {
    /// Bytes covered.
    pub(crate) fn len(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Maps `r` to `src` (written by record `seq`), shadowing whatever it overlaps.
    pub(crate) fn insert(&mut self, r: Range<u64>, seq: u64, src: Source) {
        if r.start >= r.end {
            return;
        }
        let overlapping: Vec<(u64, Extent)> = self
            .map
            .range(..r.end)
            .rev()
            .take_while(|(_, e)| e.end > r.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.map.remove(&s);
            self.bytes -= e.end - s;
            if s < r.start {
                self.put(s, Extent { end: r.start, ..e });
            }
            if e.end > r.end {
                let src = e.src.advanced(r.end - s);
                self.put(r.end, Extent { src, ..e });
            }
        }
        self.put(
            r.start,
            Extent {
                end: r.end,
                seq,
                src,
            },
        );
    }

    fn put(&mut self, start: u64, e: Extent) {
        self.bytes += e.end - start;
        self.map.insert(start, e);
    }

    /// The mapped parts of `r`, in order, each clipped to `r` with its source adjusted.
    pub(crate) fn pieces(&self, r: Range<u64>) -> Vec<Piece> {
        let first = self
            .map
            .range(..=r.start)
            .next_back()
            .map_or(r.start, |(&s, _)| s);
        self.map
            .range(first..r.end)
            .filter_map(|(&s, e)| {
                let (a, b) = (s.max(r.start), e.end.min(r.end));
                (a < b).then(|| Piece {
                    range: a..b,
                    src: e.src.advanced(a - s),
                })
            })
            .collect()
    }

    /// The unmapped parts of `r`, in order.
    pub(crate) fn gaps(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        for p in self.pieces(r.clone()) {
            if p.range.start > at {
                out.push(at..p.range.start);
            }
            at = p.range.end;
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }

    /// Drops every extent written by a record with seq at most `seq` (their bytes are now in
    /// the bucket and the cache file).
    pub(crate) fn remove_upto(&mut self, seq: u64) {
        let bytes = &mut self.bytes;
        self.map.retain(|&s, e| {
            let keep = e.seq > seq;
            if !keep {
                *bytes -= e.end - s;
            }
            keep
        });
    }

    /// The oldest record still referenced, if any: the journal must keep it.
    pub(crate) fn min_seq(&self) -> Option<u64> {
        self.map.values().map(|e| e.seq).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn j(segment: u64, pos: u64) -> Source {
        Source::Journal { segment, pos }
    }

    fn piece(range: Range<u64>, src: Source) -> Piece {
        Piece { range, src }
    }

    #[test]
    fn overlapping_inserts_split_and_trim_with_adjusted_positions() {
        // (inserts as (range, seq, source), query, expected pieces)
        type Case<'a> = (&'a [(Range<u64>, u64, Source)], Range<u64>, &'a [Piece]);
        let cases: &[Case<'_>] = &[
            // A write in the middle of an older one splits it in three.
            (
                &[(0..100, 1, j(0, 1000)), (40..60, 2, j(0, 5000))],
                0..100,
                &[
                    piece(0..40, j(0, 1000)),
                    piece(40..60, j(0, 5000)),
                    piece(60..100, j(0, 1060)),
                ],
            ),
            // Overlapping the head and the tail of two neighbours trims both.
            (
                &[
                    (0..50, 1, j(1, 0)),
                    (50..100, 2, j(1, 100)),
                    (30..70, 3, Source::Zero),
                ],
                0..100,
                &[
                    piece(0..30, j(1, 0)),
                    piece(30..70, Source::Zero),
                    piece(70..100, j(1, 120)),
                ],
            ),
            // A covering write replaces everything under it.
            (
                &[
                    (10..20, 1, j(0, 0)),
                    (30..40, 2, j(0, 10)),
                    (0..50, 3, j(2, 7)),
                ],
                0..50,
                &[piece(0..50, j(2, 7))],
            ),
            // A query clips pieces and advances their positions.
            (
                &[(0..100, 1, j(3, 200))],
                25..30,
                &[piece(25..30, j(3, 225))],
            ),
            // Empty writes change nothing.
            (&[(5..5, 1, j(0, 0))], 0..10, &[]),
        ];
        for (inserts, query, want) in cases {
            let mut m = ExtentMap::default();
            for (r, seq, src) in *inserts {
                m.insert(r.clone(), *seq, *src);
            }
            assert_eq!(m.pieces(query.clone()), *want, "inserts {inserts:?}");
        }
    }

    #[test]
    fn remove_upto_keeps_newer_records_and_min_seq_follows() {
        let mut m = ExtentMap::default();
        m.insert(0..10, 1, j(0, 0));
        m.insert(20..30, 2, j(0, 100));
        m.insert(5..25, 3, j(0, 200));
        // Record 1 is still referenced by 0..5, record 2 by 25..30.
        assert_eq!(m.min_seq(), Some(1));
        assert_eq!(m.len(), 30);
        m.remove_upto(2);
        assert_eq!(m.min_seq(), Some(3));
        assert_eq!(m.len(), 20);
        assert_eq!(m.gaps(0..30), vec![0..5, 25..30]);
        m.remove_upto(3);
        assert!(m.is_empty());
        assert_eq!(m.len(), 0);
        assert_eq!(m.min_seq(), None);
    }

    proptest! {
        /// Against a per-byte model of (seq, source byte address): every byte maps to the
        /// newest write covering it, at the right position of that write.
        #[test]
        fn extent_map_matches_a_per_byte_model(
            writes in prop::collection::vec((0u64..64, 0u64..24, any::<bool>()), 0..24),
            cut in 0u64..26,
            q in (0u64..64, 0u64..24),
        ) {
            let mut m = ExtentMap::default();
            let mut model: [Option<(u64, Option<u64>)>; 88] = [None; 88];
            for (i, (start, len, zero)) in writes.into_iter().enumerate() {
                let seq = i as u64 + 1;
                let pos = seq * 1000;
                let src = if zero { Source::Zero } else { j(seq, pos) };
                m.insert(start..start + len, seq, src);
                for b in start..start + len {
                    model[b as usize] = Some((seq, (!zero).then_some(pos + b - start)));
                }
            }
            m.remove_upto(cut);
            for slot in &mut model {
                if slot.is_some_and(|(seq, _)| seq <= cut) {
                    *slot = None;
                }
            }
            prop_assert_eq!(m.len(), model.iter().filter(|s| s.is_some()).count() as u64);
            prop_assert_eq!(m.min_seq(), model.iter().flatten().map(|(s, _)| *s).min());
            let (s, l) = q;
            let mut seen = [false; 88];
            for p in m.pieces(s..s + l) {
                for b in p.range.clone() {
                    let (_, addr) = model[b as usize].expect("a piece covers a mapped byte");
                    let got = match p.src {
                        Source::Journal { pos, .. } => Some(pos + b - p.range.start),
                        Source::Zero => None,
                    };
                    prop_assert_eq!(got, addr);
                    seen[b as usize] = true;
                }
            }
            for g in m.gaps(s..s + l) {
                for b in g {
                    prop_assert!(model[b as usize].is_none());
                    seen[b as usize] = true;
                }
            }
            prop_assert!((s..s + l).all(|b| seen[b as usize]));
        }
    }
}
