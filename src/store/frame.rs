//! The chunk frame (docs/design.md §3): how a block of data is compressed, encrypted and bound to
//! its object key before it goes to the bucket, and how it is checked on the way back.
//!
//! Layout (all integers little-endian), 56-byte header then ciphertext and a 16-byte GCM tag:
//!
//! | bytes  | field                                         |
//! |--------|-----------------------------------------------|
//! | 0..4   | magic `TDG1`                                  |
//! | 4      | format version (1)                            |
//! | 5      | flags: bit 0 = body is an lz4 block           |
//! | 6..8   | reserved, zero                                |
//! | 8..12  | plaintext length (before compression)         |
//! | 12..44 | salt: the frame key is HKDF-SHA256(master, salt) |
//! | 44..56 | GCM nonce                                     |
//!
//! The AAD is the header followed by the object key, so a frame cannot be edited, truncated,
//! moved to another key or opened with another key without failing authentication.
//! Invariant: `open` returns bytes only after the GCM tag verified; every other outcome is a
//! typed [`FrameError::Corrupt`] naming the object. This module does no I/O; the AEAD crate
//! (aws-lc-rs, see docs/decisions/0001) appears nowhere else on the data path.

use std::cell::RefCell;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, Tag};
use bytes::Bytes;

use crate::store::keys::ChunkId;
use crate::store::master::MasterKey;

pub const MAGIC: [u8; 4] = *b"TDG1";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 56;
pub const TAG_LEN: usize = 16;
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const FLAG_LZ4: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_LZ4;
/// Keep lz4 output only when it saves at least 3%: below that, decompression costs more on every
/// read than the bytes saved once on upload.
const MIN_SAVING_PERCENT: usize = 3;
/// Chunks at least this long are probed before the whole is compressed (see `worth_compressing`).
const PROBE_MIN_LEN: usize = 256 << 10;
/// Four probes of 16 KiB: 6% of a 1 MiB chunk.
const PROBES: usize = 4;
const PROBE_LEN: usize = 16 << 10;
/// A probe counts as incompressible when lz4 saves less than this. Lower than the keep threshold:
/// a 16 KiB probe compresses worse than the whole chunk (less history), so only data that is
/// clearly random (lz4 output ≈ its input) skips compression.
const PROBE_MIN_SAVING_PERCENT: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorruptReason {
    Truncated,
    BadMagic,
    UnsupportedVersion(u8),
    BadHeader,
    /// The GCM tag did not verify: data changed, truncated, moved, or another key.
    Authentication,
    LengthMismatch,
    /// A parted object's parts (store::parted) are missing or do not add up to its manifest.
    PartsMismatch,
}

impl std::fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("frame is shorter than its header and tag"),
            Self::BadMagic => f.write_str("not a tidegate frame (bad magic)"),
            Self::UnsupportedVersion(v) => {
                write!(f, "frame format version {v} is not one this tidegate reads")
            }
            Self::BadHeader => f.write_str("reserved header bits are set"),
            Self::Authentication => f.write_str(
                "authentication failed: the object was altered, truncated or moved, \
                 or was sealed with another key",
            ),
            Self::LengthMismatch => f.write_str("decoded length differs from the header"),
            Self::PartsMismatch => f.write_str(
                "its parts are missing or do not add up to its manifest (length and hash)",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("integrity error in {object}: {reason}")]
    Corrupt {
        object: String,
        reason: CorruptReason,
    },
    #[error("cannot seal {object}: {len} bytes is more than a frame holds")]
    TooLarge { object: String, len: usize },
    #[error("the system random number generator failed")]
    Random,
}

/// The outcome of sealing a chunk: all-zero data is never stored (docs/design.md §3).
#[derive(Debug)]
pub enum Sealed {
    Zero,
    Chunk { id: ChunkId, frame: Vec<u8> },
}

/// Seals and opens frames under one master key. Cheap to share across threads.
#[derive(Debug, Clone)]
pub struct Codec {
    key: MasterKey,
}

thread_local! {
    /// lz4 output scratch, reused so a seal neither zero-fills nor allocates a second
    /// chunk-sized buffer per call.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Codec {
    pub fn new(key: MasterKey) -> Self {
        Self { key }
    }

    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(self.key.dedup_key(), data).as_bytes())
    }

    /// Seals a chunk under its content address, or reports it as all zeros.
    pub fn seal_chunk(&self, data: &[u8]) -> Result<Sealed, FrameError> {
        if is_zero(data) {
            return Ok(Sealed::Zero);
        }
        let id = self.chunk_id(data);
        let frame = self.seal(&id.object_key(), data)?;
        Ok(Sealed::Chunk { id, frame })
    }

    /// Seals `data` for the object `object` with a fresh salt and nonce.
    pub fn seal(&self, object: &str, data: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| FrameError::Random)?;
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| FrameError::Random)?;
        self.seal_with(object, data, salt, nonce)
    }

    fn seal_with(
        &self,
        object: &str,
        data: &[u8],
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, FrameError> {
        let plain_len = u32::try_from(data.len()).map_err(|_| FrameError::TooLarge {
            object: object.to_owned(),
            len: data.len(),
        })?;
        SCRATCH.with_borrow_mut(|scratch| {
            let max = lz4_flex::block::get_maximum_output_size(data.len());
            if scratch.len() < max {
                scratch.resize(max, 0);
            }
            let compressed = if worth_compressing(data, scratch) {
                lz4_flex::block::compress_into(data, &mut scratch[..max]).ok()
            } else {
                None
            };
            let (flags, body) = match compressed {
                Some(n) if n * 100 <= data.len() * (100 - MIN_SAVING_PERCENT) => {
                    (FLAG_LZ4, &scratch[..n])
                }
                _ => (0, data),
            };
            let header = encode_header(flags, plain_len, &salt, &nonce);
            let mut frame = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
            frame.extend_from_slice(&header);
            frame.extend_from_slice(body);
            let tag = self.frame_key(&salt).seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&header, object)),
                &mut frame[HEADER_LEN..],
            );
            let tag: Tag = tag.map_err(|_| FrameError::TooLarge {
                object: object.to_owned(),
                len: data.len(),
            })?;
            frame.extend_from_slice(tag.as_ref());
            Ok(frame)
        })
    }

    /// Verifies and decodes a frame read back from `object`. Decrypts in place, so an owned buffer
    /// (as fetched from the bucket) costs no copy; uncompressed data is returned as a slice of it.
    pub fn open(&self, object: &str, mut frame: Vec<u8>) -> Result<Bytes, FrameError> {
        let corrupt = |reason| FrameError::Corrupt {
            object: object.to_owned(),
            reason,
        };
        let header = parse_header(&frame).map_err(corrupt)?;
        let aad = aad(&frame[..HEADER_LEN], object);
        let opened = self
            .frame_key(&header.salt)
            .open_in_place(
                Nonce::assume_unique_for_key(header.nonce),
                Aad::from(aad),
                &mut frame[HEADER_LEN..],
            )
            .map_err(|_| corrupt(CorruptReason::Authentication))?
            .len();
        let plain_len = usize::try_from(header.plain_len)
            .map_err(|_| corrupt(CorruptReason::LengthMismatch))?;
        if header.flags & FLAG_LZ4 != 0 {
            let body = &frame[HEADER_LEN..HEADER_LEN + opened];
            let out = lz4_flex::block::decompress(body, plain_len)
                .map_err(|_| corrupt(CorruptReason::LengthMismatch))?;
            if out.len() != plain_len {
                return Err(corrupt(CorruptReason::LengthMismatch));
            }
            Ok(Bytes::from(out))
        } else {
            if opened != plain_len {
                return Err(corrupt(CorruptReason::LengthMismatch));
            }
            Ok(Bytes::from(frame).slice(HEADER_LEN..HEADER_LEN + plain_len))
        }
    }

    fn frame_key(&self, salt: &[u8]) -> LessSafeKey {
        LessSafeKey::new(self.key.frame_key(salt))
    }
}

/// Whether lz4 may save enough on `data` to be worth the full compression. Already compressed or
/// encrypted data (media, archives, a guest's encrypted disk) is common on volumes and tapes, and
/// lz4 spends most of a seal's time failing on it; a few probes spread over a large chunk tell
/// at a sixteenth of the cost (ZFS calls this early abort). Any probe that compresses means yes.
fn worth_compressing(data: &[u8], scratch: &mut [u8]) -> bool {
    if data.len() < PROBE_MIN_LEN {
        return true;
    }
    let stride = (data.len() - PROBE_LEN) / (PROBES - 1);
    (0..PROBES).any(|i| {
        let probe = &data[i * stride..i * stride + PROBE_LEN];
        match lz4_flex::block::compress_into(probe, scratch) {
            Ok(n) => n * 100 < PROBE_LEN * (100 - PROBE_MIN_SAVING_PERCENT),
            Err(_) => true,
        }
    })
}

/// True for all-zero (and empty) data. Folds 64-byte blocks so the check vectorises, and stops at
/// the first non-zero block, which for real data is the first one.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    let blocks_zero = blocks
        .by_ref()
        .all(|block| block.iter().fold(0u8, |acc, b| acc | b) == 0);
    blocks_zero && blocks.remainder().iter().all(|&b| b == 0)
}

struct Header {
    flags: u8,
    plain_len: u32,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
}

fn encode_header(
    flags: u8,
    plain_len: u32,
    salt: &[u8; SALT_LEN],
    nonce: &[u8; NONCE_LEN],
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = flags;
    h[8..12].copy_from_slice(&plain_len.to_le_bytes());
    h[12..44].copy_from_slice(salt);
    h[44..56].copy_from_slice(nonce);
    h
}

fn parse_header(frame: &[u8]) -> Result<Header, CorruptReason> {
    if frame.len() < HEADER_LEN + TAG_LEN {
        return Err(CorruptReason::Truncated);
    }
    if frame[0..4] != MAGIC {
        return Err(CorruptReason::BadMagic);
    }
    // Future versions get their own arm here; old ones stay readable (CONTRIBUTING.md: persisted
    // formats carry a version).
    if frame[4] != VERSION {
        return Err(CorruptReason::UnsupportedVersion(frame[4]));
    }
    let flags = frame[5];
    if flags & !KNOWN_FLAGS != 0 || frame[6..8] != [0, 0] {
        return Err(CorruptReason::BadHeader);
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&frame[8..12]);
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&frame[12..44]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&frame[44..56]);
    Ok(Header {
        flags,
        plain_len: u32::from_le_bytes(len),
        salt,
        nonce,
    })
}

fn aad(header: &[u8], object: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + object.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(object.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::bench::noise;
    use proptest::prelude::*;

    fn codec(byte: u8) -> Codec {
        Codec::new(MasterKey::from_bytes([byte; 32]))
    }

    fn text(len: usize) -> Vec<u8> {
        b"Nov 23 11:34:01 gw tidegate[812]: uploaded chunk in 3 ms\n"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn zero_chunks_are_not_stored() {
        let c = codec(1);
        assert!(matches!(c.seal_chunk(&[]).unwrap(), Sealed::Zero));
        assert!(matches!(
            c.seal_chunk(&vec![0; 1 << 20]).unwrap(),
            Sealed::Zero
        ));
        let mut almost = vec![0u8; 1 << 20];
        almost[(1 << 20) - 1] = 1;
        assert!(matches!(
            c.seal_chunk(&almost).unwrap(),
            Sealed::Chunk { .. }
        ));
        assert!(!is_zero(&[0, 0, 0, 1]));
    }

    #[test]
    fn compressible_data_is_compressed_and_random_is_not() {
        let c = codec(1);
        let t = c.seal("o", &text(1 << 20)).unwrap();
        assert_eq!(t[5] & FLAG_LZ4, FLAG_LZ4);
        assert!(t.len() < (1 << 20) / 4);
        let r = c.seal("o", &noise(1 << 20, 9)).unwrap();
        assert_eq!(r[5] & FLAG_LZ4, 0);
        assert_eq!(r.len(), HEADER_LEN + (1 << 20) + TAG_LEN);
        assert_eq!(c.open("o", t).unwrap(), text(1 << 20));
        assert_eq!(c.open("o", r).unwrap(), noise(1 << 20, 9));
    }

    #[test]
    fn probes_skip_random_chunks_but_not_partly_compressible_ones() {
        let mut scratch = vec![0u8; lz4_flex::block::get_maximum_output_size(PROBE_LEN)];
        assert!(!worth_compressing(&noise(1 << 20, 4), &mut scratch));
        assert!(worth_compressing(&text(1 << 20), &mut scratch));
        // Small chunks are always tried whole.
        assert!(worth_compressing(&noise(64 << 10, 4), &mut scratch));
        // Random but for a compressible last quarter: the last probe sees it, and the seal keeps
        // lz4's output because it saves far more than 3%.
        let mut mixed = noise(1 << 20, 5);
        mixed[3 << 18..].copy_from_slice(&text(1 << 18));
        assert!(worth_compressing(&mixed, &mut scratch));
        let c = codec(1);
        let sealed = c.seal("o", &mixed).unwrap();
        assert_eq!(sealed[5] & FLAG_LZ4, FLAG_LZ4);
        assert_eq!(c.open("o", sealed).unwrap(), mixed);
    }

    #[test]
    fn chunk_ids_are_keyed_and_deterministic() {
        let data = text(5000);
        assert_eq!(codec(1).chunk_id(&data), codec(1).chunk_id(&data));
        assert_ne!(codec(1).chunk_id(&data), codec(2).chunk_id(&data));
        assert_ne!(codec(1).chunk_id(&data).0, *blake3::hash(&data).as_bytes());
    }

    #[test]
    fn swapped_object_key_and_wrong_key_fail() {
        let data = text(10_000);
        let Sealed::Chunk { id, frame } = codec(1).seal_chunk(&data).unwrap() else {
            panic!("text is not zero")
        };
        let other = ChunkId([3; 32]).object_key();
        let err = codec(1).open(&other, frame.clone()).unwrap_err();
        assert!(err.to_string().contains(&other), "{err}");
        assert!(matches!(
            err,
            FrameError::Corrupt {
                reason: CorruptReason::Authentication,
                ..
            }
        ));
        let err = codec(2).open(&id.object_key(), frame.clone()).unwrap_err();
        assert!(matches!(err, FrameError::Corrupt { .. }));
        assert_eq!(codec(1).open(&id.object_key(), frame).unwrap(), data);
    }

    #[test]
    fn truncation_at_every_length_fails() {
        let c = codec(4);
        let frame = c.seal("k", &text(3000)).unwrap();
        for len in 0..frame.len() {
            let err = c.open("k", frame[..len].to_vec()).unwrap_err();
            assert!(matches!(err, FrameError::Corrupt { .. }), "len {len}");
        }
    }

    /// The v1 format is frozen: a frame sealed by an earlier build must still open, and sealing
    /// with the same salt and nonce must give the same bytes.
    #[test]
    fn version_1_fixture_still_opens() {
        let fixture = include_bytes!("fixtures/frame-v1.bin");
        let c = codec(0x42);
        let data = text(4096);
        let sealed = c
            .seal_with("chunks/fixture", &data, [1; SALT_LEN], [2; NONCE_LEN])
            .unwrap();
        assert_eq!(sealed, fixture.to_vec(), "v1 frame bytes changed");
        assert_eq!(c.open("chunks/fixture", fixture.to_vec()).unwrap(), data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..70_000), repeat in any::<bool>()) {
            let data = if repeat { data.iter().copied().cycle().take(data.len() * 4).collect() } else { data };
            let c = codec(5);
            let frame = c.seal("chunks/x", &data).unwrap();
            prop_assert_eq!(c.open("chunks/x", frame).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_is_detected(data in proptest::collection::vec(any::<u8>(), 1..5000), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let c = codec(6);
            let mut frame = c.seal("chunks/y", &data).unwrap();
            let i = pos.index(frame.len());
            frame[i] ^= 1 << bit;
            let err = c.open("chunks/y", frame).unwrap_err();
            let is_corrupt = matches!(err, FrameError::Corrupt { ref object, .. } if object == "chunks/y");
            prop_assert!(is_corrupt);
        }

        #[test]
        fn arbitrary_bytes_never_open_or_panic(frame in proptest::collection::vec(any::<u8>(), 0..400)) {
            prop_assert!(codec(7).open("chunks/z", frame).is_err());
        }
    }
}
