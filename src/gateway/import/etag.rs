//! S3 ETags computed from the bytes as they stream: the MD5 of a single-part object, or the
//! MD5 of the part MD5s with `-<parts>` for a multipart one. The import computes the ETag of
//! what it sends (uniform parts of its own part size); the export the ETag of what it copied,
//! cut at the source's part lengths. Invariant: `update` may be fed pieces of any size; the
//! result depends only on the bytes and the part boundaries.

use crate::store::device::{Md5, multipart_etag};
use crate::store::keys::hex;

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
    md5: Md5,
    in_part: u64,
    done: Vec<[u8; 16]>,
    multipart: bool,
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
        Self {
            parts,
            md5: Md5::default(),
            in_part: 0,
            done: Vec::new(),
            multipart,
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

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.part_len() - self.in_part;
            let take = usize::try_from(room.min(data.len() as u64)).unwrap_or(data.len());
            self.md5.update(&data[..take]);
            self.in_part += take as u64;
            data = &data[take..];
            if self.in_part == self.part_len() {
                self.done.push(std::mem::take(&mut self.md5).finish());
                self.in_part = 0;
            }
        }
    }

    /// The ETag, unquoted.
    pub(crate) fn finish(mut self) -> String {
        if !self.multipart {
            return match self.done.pop() {
                Some(md5) => hex(&md5),
                None => hex(&self.md5.finish()),
            };
        }
        if self.in_part > 0 || self.done.is_empty() {
            self.done.push(self.md5.finish());
        }
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
        for piece in [1, 7, 4000, 10_000] {
            let mut cases = [
                (EtagHasher::single(), whole.clone()),
                (EtagHasher::uniform(4000), three.clone()),
                (EtagHasher::listed(vec![1000, 9000]), uneven.clone()),
            ];
            for (h, _) in &mut cases {
                for chunk in data.chunks(piece) {
                    h.update(chunk);
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
