//! A set of disjoint byte ranges: which bytes of an object the cache file holds.
//!
//! Invariant: ranges are non-empty, sorted, disjoint and never adjacent (merged on insert), so
//! "is this range covered" is one map lookup.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start -> end (exclusive).
    map: BTreeMap<u64, u64>,
    total: u64,
}

impl RangeSet {
    pub(crate) fn full(len: u64) -> Self {
        let mut s = Self::default();
        s.insert(0..len);
        s
    }

    /// Bytes covered.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    pub(crate) fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // Absorb every range that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .map
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.map.remove(&s);
            self.total -= e - s;
            start = start.min(s);
            end = end.max(e);
        }
        self.map.insert(start, end);
        self.total += end - start;
    }

    pub(crate) fn covers(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        match self.map.range(..=r.start).next_back() {
            Some((_, &e)) => e >= r.end,
            None => false,
        }
    }

    /// The covered parts of `r`, in order.
    pub(crate) fn intersect(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let first = self
            .map
            .range(..=r.start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(r.start);
        for (&s, &e) in self.map.range(first..r.end) {
            let (a, b) = (s.max(r.start), e.min(r.end));
            if a < b {
                out.push(a..b);
            }
        }
        out
    }

    /// The uncovered parts of `r`, in order.
    pub(crate) fn gaps(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        for c in self.intersect(r.clone()) {
            if c.start > at {
                out.push(at..c.start);
            }
            at = c.end;
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn rangeset_matches_a_bitmap(ops in prop::collection::vec((0u64..64, 0u64..16), 0..20),
                                     q in (0u64..64, 0u64..16)) {
            let mut set = RangeSet::default();
            let mut bits = [false; 80];
            for (s, l) in ops {
                set.insert(s..s + l);
                for b in &mut bits[s as usize..(s + l) as usize] { *b = true; }
            }
            prop_assert_eq!(set.len(), bits.iter().filter(|b| **b).count() as u64);
            let (s, l) = q;
            let r = s..s + l;
            prop_assert_eq!(set.covers(r.clone()), bits[s as usize..(s + l) as usize].iter().all(|b| *b));
            let mut seen = [false; 80];
            for c in set.intersect(r.clone()) { for i in c { prop_assert!(bits[i as usize]); seen[i as usize] = true; } }
            for g in set.gaps(r.clone()) { for i in g { prop_assert!(!bits[i as usize]); seen[i as usize] = true; } }
            prop_assert!(r.clone().all(|i| seen[i as usize]));
        }
    }
}
