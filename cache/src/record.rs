//! The journal's on-disk record and segment-header codec (pure: bytes in, typed values out).
//!
//! Owns the byte layout only; no I/O. Key invariant: a record is accepted only if its magic,
//! length and CRC32C all check, so a torn or overwritten tail decodes as `Torn`, never as data.
//!
//! Segment header (16 bytes, little endian): magic `TGJS`, format version u32, segment id u64.
//! Record (little endian): magic `TGJR` u32 | total length u32 | seq u64 | kind u8 (1 write,
//! 2 discard) | reserved u8 (0) | name length u16 | offset u64 | data length u32 (write: payload
//! bytes that follow the name; discard: length of the zeroed range, no payload) | name (UTF-8) |
//! payload | CRC32C (Castagnoli) u32 of every preceding byte of the record.

pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"TGJS";
pub(crate) const RECORD_MAGIC: [u8; 4] = *b"TGJR";
/// Version 1 is the only journal format so far; a segment of another version is refused.
pub(crate) const JOURNAL_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
const FIXED: usize = 32;
const CRC_LEN: usize = 4;
/// Names longer than this are refused: it bounds a record header and the cache file name.
pub(crate) const MAX_NAME_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    Write(&'a [u8]),
    Discard(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) seq: u64,
    pub(crate) name: &'a str,
    pub(crate) offset: u64,
    pub(crate) op: Op<'a>,
}

/// Why decoding stopped: replay treats both as the end of the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decode {
    /// Fewer bytes than the record claims (a torn append, or clean end of segment).
    Incomplete,
    /// Bad magic, length, kind, name or CRC.
    Malformed(&'static str),
}

/// Offset of a write record's payload from the record's first byte.
pub(crate) fn payload_start(name_len: usize) -> usize {
    FIXED + name_len
}

/// Encoded length of a record, or `None` if it cannot be represented.
pub(crate) fn record_len(name_len: usize, payload_len: usize) -> Option<usize> {
    FIXED
        .checked_add(name_len)?
        .checked_add(payload_len)?
        .checked_add(CRC_LEN)
}

pub(crate) fn encode_segment_header(segment_id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC);
    h[4..8].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&segment_id.to_le_bytes());
    h
}

/// The segment id, if the header is a version-1 header.
pub(crate) fn decode_segment_header(buf: &[u8]) -> Result<u64, Decode> {
    let h = buf.get(..SEGMENT_HEADER_LEN).ok_or(Decode::Incomplete)?;
    if h[0..4] != SEGMENT_MAGIC {
        return Err(Decode::Malformed("segment magic"));
    }
    if u32::from_le_bytes(arr(&h[4..8])) != JOURNAL_VERSION {
        return Err(Decode::Malformed("segment version"));
    }
    Ok(u64::from_le_bytes(arr(&h[8..16])))
}

/// A record in three pieces — header and name, the payload (borrowed, not copied), the CRC — so
/// a write reaches the journal with one vectored write and no copy of its data.
pub(crate) struct Encoded<'a> {
    pub head: Vec<u8>,
    pub payload: &'a [u8],
    pub crc: [u8; 4],
}

impl Encoded<'_> {
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.payload.len() + self.crc.len()
    }
}

/// Encodes a record without copying its payload; `None` if the name or payload is too long.
pub(crate) fn encode_parts<'a>(rec: &Record<'a>) -> Option<Encoded<'a>> {
    if rec.name.len() > MAX_NAME_LEN {
        return None;
    }
    let (kind, data_len, payload): (u8, u32, &'a [u8]) = match rec.op {
        Op::Write(d) => (1, u32::try_from(d.len()).ok()?, d),
        Op::Discard(len) => (2, len, &[]),
    };
    let total = record_len(rec.name.len(), payload.len())?;
    let mut head = Vec::with_capacity(FIXED + rec.name.len());
    head.extend_from_slice(&RECORD_MAGIC);
    head.extend_from_slice(&u32::try_from(total).ok()?.to_le_bytes());
    head.extend_from_slice(&rec.seq.to_le_bytes());
    head.push(kind);
    head.push(0);
    head.extend_from_slice(&u16::try_from(rec.name.len()).ok()?.to_le_bytes());
    head.extend_from_slice(&rec.offset.to_le_bytes());
    head.extend_from_slice(&data_len.to_le_bytes());
    head.extend_from_slice(rec.name.as_bytes());
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    digest.update(&head);
    digest.update(payload);
    // CRC32C is 32 bits wide; crc-fast returns it in a u64, so the truncation is exact.
    let crc = (digest.finalize() as u32).to_le_bytes();
    Some(Encoded { head, payload, crc })
}

/// Encodes a record into one buffer; `None` if the name or payload is too long for the format.
#[cfg(test)]
pub(crate) fn encode(rec: &Record<'_>) -> Option<Vec<u8>> {
    let parts = encode_parts(rec)?;
    let mut out = Vec::with_capacity(parts.len());
    out.extend_from_slice(&parts.head);
    out.extend_from_slice(parts.payload);
    out.extend_from_slice(&parts.crc);
    Some(out)
}

/// Decodes the record at the start of `buf`, returning it and its encoded length.
pub(crate) fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), Decode> {
    let h = buf.get(..FIXED).ok_or(Decode::Incomplete)?;
    if h[0..4] != RECORD_MAGIC {
        return Err(Decode::Malformed("record magic"));
    }
    let total = usize::try_from(u32::from_le_bytes(arr(&h[4..8])))
        .map_err(|_| Decode::Malformed("record length"))?;
    let name_len = usize::from(u16::from_le_bytes(arr(&h[18..20])));
    let data_len = u32::from_le_bytes(arr(&h[28..32]));
    let payload_len = match h[16] {
        1 => usize::try_from(data_len).map_err(|_| Decode::Malformed("data length"))?,
        2 => 0,
        _ => return Err(Decode::Malformed("record kind")),
    };
    if name_len > MAX_NAME_LEN || record_len(name_len, payload_len) != Some(total) {
        return Err(Decode::Malformed("record length"));
    }
    let rec = buf.get(..total).ok_or(Decode::Incomplete)?;
    let body_end = total - CRC_LEN;
    if crc32c(&rec[..body_end]) != u32::from_le_bytes(arr(&rec[body_end..])) {
        return Err(Decode::Malformed("record crc"));
    }
    let name = std::str::from_utf8(&rec[FIXED..FIXED + name_len])
        .map_err(|_| Decode::Malformed("record name"))?;
    let op = match h[16] {
        1 => Op::Write(&rec[FIXED + name_len..body_end]),
        _ => Op::Discard(data_len),
    };
    let record = Record {
        seq: u64::from_le_bytes(arr(&h[8..16])),
        name,
        offset: u64::from_le_bytes(arr(&h[20..28])),
        op,
    };
    Ok((record, total))
}

fn crc32c(buf: &[u8]) -> u32 {
    // CRC32C is 32 bits wide; crc-fast returns it in a u64, so the truncation is exact.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, buf) as u32
}

/// Copies a slice whose length the caller has fixed into an array.
fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32c_matches_the_rfc_3720_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    proptest! {
        #[test]
        fn record_round_trips(seq: u64, name in "[a-z0-9/]{0,40}", offset: u64,
                              data in prop::collection::vec(any::<u8>(), 0..300), discard: Option<u32>) {
            let op = match discard { Some(l) => Op::Discard(l), None => Op::Write(&data) };
            let rec = Record { seq, name: &name, offset, op };
            let bytes = encode(&rec).unwrap();
            let (back, used) = decode(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, rec);
            // Every strict prefix is incomplete or malformed, never a record.
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn any_flipped_bit_is_rejected(data in prop::collection::vec(any::<u8>(), 1..100), bit: usize) {
            let rec = Record { seq: 7, name: "v1/0001", offset: 4096, op: Op::Write(&data) };
            let mut bytes = encode(&rec).unwrap();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&bytes).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = decode_segment_header(&bytes);
        }
    }
}
