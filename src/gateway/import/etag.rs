//! S3 ETags computed from the bytes as they stream: the MD5 of a single-part object, or the
//! MD5 of the part MD5s with `-<parts>` for a multipart one. The import computes the ETag of
//! what it sends (uniform parts of its own part size); the export the ETag of what it copied,
//! cut at the source's part lengths. Invariant: `update` may be fed pieces of any size; the
//! result depends only on the bytes and the part boundaries.
//!
//! One MD5 runs at one core's scalar rate, and was one of the largest CPU costs of an export.
//! The parts of a multipart object are independent messages, so parts of up to
//! `HELD_BYTES / 2` are kept (their pieces, not copies) until up to `md5many::LANES` of them are
//! complete, then hashed side by side (`store::md5many`, several times one stream's rate).
//! Memory: at most `HELD_BYTES` of complete parts per hasher, plus the part being received,
//! beyond what the caller holds anyway.

use bytes::Bytes;

use crate::store::device::{Md5, multipart_etag};
use crate::store::keys::hex;
use crate::store::md5many;

/// Bytes of complete parts a hasher keeps to hash them together.
const HELD_BYTES: u64 = 64 << 20;

/// Where the parts end.
#[derive(Debug, Clone)]
enum Parts {
    /// Every part this long but the last (`u64::MAX`: a single-part object).
    Uniform(u64),
    /// Each part's length, in order.
    Listed(Vec<u64>),
}

#[derive(Debug)]
pub(crate) struct EtagHasher {
    parts: Parts,
    /// The part being received, hashed as it streams (when parts are not batched).
    md5: Md5,
    in_part: u64,
    done: Vec<[u8; 16]>,
    multipart: bool,
    /// Parts hashed together, this many at a time (0: each part streams through `md5`).
    batch: usize,
    /// Complete parts waiting for their batch, as received.
    held: Vec<Vec<Bytes>>,
    /// The pieces of the part being received, when batched.
    current: Vec<Bytes>,
}

impl EtagHasher {
    /// A single-part object: its ETag is the MD5 of its bytes.
    pub(crate) fn single() -> Self {
        Self::new(Parts::Uniform(u64::MAX), false)
    }

    /// A multipart object cut into parts of `part_size` bytes (the last one shorter).
    pub(crate) fn uniform(part_size: u64) -> Self {
        Self::new(Parts::Uniform(part_size.max(1)), true)
    }

    /// A multipart object with these part lengths.
    pub(crate) fn listed(lengths: Vec<u64>) -> Self {
        Self::new(Parts::Listed(lengths), true)
    }

    fn new(parts: Parts, multipart: bool) -> Self {
        let batch = match &parts {
            Parts::Uniform(n) if multipart => {
                usize::try_from(HELD_BYTES / n).map_or(0, |b| b.min(md5many::LANES))
            }
            _ => 0,
        };
        Self {
            parts,
            md5: Md5::default(),
            in_part: 0,
            done: Vec::new(),
            multipart,
            batch: if batch >= 2 { batch } else { 0 },
            held: Vec::new(),
            current: Vec::new(),
        }
    }

    fn part_len(&self) -> u64 {
        match &self.parts {
            Parts::Uniform(n) => *n,
            // Bytes past the listed parts fall into one more part, so a wrong length list
            // gives a wrong ETag rather than a panic.
            Parts::Listed(lens) => lens.get(self.done.len()).copied().unwrap_or(u64::MAX),
        }
    }

    pub(crate) fn update(&mut self, mut data: Bytes) {
        while !data.is_empty() {
            let room = self.part_len() - self.in_part;
            let take = usize::try_from(room.min(data.len() as u64)).unwrap_or(data.len());
            let piece = data.split_to(take);
            self.in_part += take as u64;
            if self.batch > 0 {
                self.current.push(piece);
            } else {
                self.md5.update(&piece);
            }
            if self.in_part == self.part_len() {
                self.end_part();
            }
        }
    }

    fn end_part(&mut self) {
        self.in_part = 0;
        if self.batch == 0 {
            self.done.push(std::mem::take(&mut self.md5).finish());
            return;
        }
        self.held.push(std::mem::take(&mut self.current));
        if self.held.len() == self.batch {
            self.hash_held();
        }
    }

    fn hash_held(&mut self) {
        let messages: Vec<Vec<&[u8]>> = self
            .held
            .iter()
            .map(|part| part.iter().map(|b| &b[..]).collect())
            .collect();
        let digests = md5many::digest_many(&messages);
        self.done.extend(digests);
        self.held.clear();
    }

    /// The ETag, unquoted.
    pub(crate) fn finish(mut self) -> String {
        if !self.multipart {
            return match self.done.pop() {
                Some(md5) => hex(&md5),
                None => hex(&self.md5.finish()),
            };
        }
        let parts_seen = self.done.len() + self.held.len();
        if self.in_part > 0 || parts_seen == 0 {
            self.end_part();
        }
        self.hash_held();
        multipart_etag(&self.done)
    }
}

/// Whether `etag` (quotes removed) is a multipart ETag, and of how many parts.
pub(crate) fn multipart_parts(etag: &str) -> Option<u32> {
    let (md5, parts) = etag.split_once('-')?;
    (md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| parts.parse().ok())
        .flatten()
}

/// Whether `etag` (quotes removed) looks like a plain MD5.
pub(crate) fn is_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(data: &[u8]) -> [u8; 16] {
        let mut m = Md5::default();
        m.update(data);
        m.finish()
    }

    #[test]
    fn etags_do_not_depend_on_how_the_bytes_arrive() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = hex(&md5(&data));
        let three = multipart_etag(&[
            md5(&data[..4000]),
            md5(&data[4000..8000]),
            md5(&data[8000..]),
        ]);
        let uneven = multipart_etag(&[md5(&data[..1000]), md5(&data[1000..])]);
        let cut = |len: usize| multipart_etag(&data.chunks(len).map(md5).collect::<Vec<_>>());
        // Parts hashed side by side: 104 parts fill several batches; 10 end on a boundary.
        let (many, exact) = (cut(97), cut(1000));
        // Parts too large to hold stream through one MD5.
        let streamed = multipart_etag(&[md5(&data)]);
        for piece in [1, 7, 4000, 10_000] {
            let mut cases = [
                (EtagHasher::single(), whole.clone()),
                (EtagHasher::uniform(4000), three.clone()),
                (EtagHasher::listed(vec![1000, 9000]), uneven.clone()),
                (EtagHasher::uniform(97), many.clone()),
                (EtagHasher::uniform(1000), exact.clone()),
                (EtagHasher::uniform(HELD_BYTES), streamed.clone()),
            ];
            for (h, _) in &mut cases {
                for chunk in data.chunks(piece) {
                    h.update(Bytes::copy_from_slice(chunk));
                }
            }
            for (h, want) in cases {
                assert_eq!(h.finish(), want, "pieces of {piece}");
            }
        }
        assert_eq!(
            EtagHasher::uniform(10).finish(),
            multipart_etag(&[md5(b"")])
        );
        assert_eq!(multipart_parts(&format!("{}-25", "a".repeat(32))), Some(25));
        assert_eq!(multipart_parts(&"a".repeat(32)), None);
        assert!(is_md5(&whole) && !is_md5(&three));
    }
}
