//! The MD5s of several independent messages at once: sixteen 32-bit lanes in two AVX2
//! registers, each lane running its own MD5 (multi-buffer hashing). One MD5 cannot be split
//! (each 64-byte block depends on the one before), so a single stream runs at one core's scalar
//! rate, about 700-820 MB/s on the test machine; the parts of a multipart object are
//! independent messages, and sixteen of them advance together at about five times that
//! (3.8 GB/s on one core there). Used for multipart ETags
//! (`gateway::import::etag`). Without AVX2 (or off x86-64) the same rounds run lane by lane on
//! scalar words.
//!
//! Invariant: every digest equals the MD5 of its message as RFC 1321 defines it, whatever the
//! message lengths and however a message is split into pieces.

/// Messages hashed side by side.
pub const LANES: usize = 16;

const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// RFC 1321's table: the integer part of 2^32 × |sin(i + 1)|.
const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// One MD5 step on words of `$ops` (a module with `add`, `splat`, `rot`, `f`, `g`, `h`, `i`):
/// `w = x + rotl(w + fun(x, y, z) + K[k] + m[mi], l)`, with `r = 32 - l`.
macro_rules! step {
    ($ops:ident, $fun:ident, $m:ident, $w:ident, $x:ident, $y:ident, $z:ident, $k:expr, $mi:expr, $l:literal, $r:literal) => {
        $w = $ops::add(
            $x,
            $ops::rot::<$l, $r>($ops::add(
                $ops::add($w, $ops::$fun($x, $y, $z)),
                $ops::add($ops::splat(K[$k]), $m[$mi]),
            )),
        );
    };
}

/// The 64 steps of one block on `$state` (four words) with message words `$m`; evaluates to
/// the new state. Written once for scalar words and for the vectors of all lanes.
macro_rules! block {
    ($ops:ident, $state:expr, $m:ident) => {{
        let s = $state;
        let [mut a, mut b, mut c, mut d] = s;
        for j in 0..4 {
            let k = 4 * j;
            step!($ops, f, $m, a, b, c, d, k, k, 7, 25);
            step!($ops, f, $m, d, a, b, c, k + 1, k + 1, 12, 20);
            step!($ops, f, $m, c, d, a, b, k + 2, k + 2, 17, 15);
            step!($ops, f, $m, b, c, d, a, k + 3, k + 3, 22, 10);
        }
        for j in 0..4 {
            let k = 16 + 4 * j;
            step!($ops, g, $m, a, b, c, d, k, (5 * k + 1) % 16, 5, 27);
            step!($ops, g, $m, d, a, b, c, k + 1, (5 * k + 6) % 16, 9, 23);
            step!($ops, g, $m, c, d, a, b, k + 2, (5 * k + 11) % 16, 14, 18);
            step!($ops, g, $m, b, c, d, a, k + 3, (5 * k + 16) % 16, 20, 12);
        }
        for j in 0..4 {
            let k = 32 + 4 * j;
            step!($ops, h, $m, a, b, c, d, k, (3 * k + 5) % 16, 4, 28);
            step!($ops, h, $m, d, a, b, c, k + 1, (3 * k + 8) % 16, 11, 21);
            step!($ops, h, $m, c, d, a, b, k + 2, (3 * k + 11) % 16, 16, 16);
            step!($ops, h, $m, b, c, d, a, k + 3, (3 * k + 14) % 16, 23, 9);
        }
        for j in 0..4 {
            let k = 48 + 4 * j;
            step!($ops, i, $m, a, b, c, d, k, (7 * k) % 16, 6, 26);
            step!($ops, i, $m, d, a, b, c, k + 1, (7 * k + 7) % 16, 10, 22);
            step!($ops, i, $m, c, d, a, b, k + 2, (7 * k + 14) % 16, 15, 17);
            step!($ops, i, $m, b, c, d, a, k + 3, (7 * k + 21) % 16, 21, 11);
        }
        [
            $ops::add(s[0], a),
            $ops::add(s[1], b),
            $ops::add(s[2], c),
            $ops::add(s[3], d),
        ]
    }};
}

mod scalar {
    pub fn add(a: u32, b: u32) -> u32 {
        a.wrapping_add(b)
    }
    pub fn splat(k: u32) -> u32 {
        k
    }
    pub fn rot<const L: u32, const R: u32>(x: u32) -> u32 {
        x.rotate_left(L)
    }
    pub fn f(b: u32, c: u32, d: u32) -> u32 {
        d ^ (b & (c ^ d))
    }
    pub fn g(b: u32, c: u32, d: u32) -> u32 {
        c ^ (d & (b ^ c))
    }
    pub fn h(b: u32, c: u32, d: u32) -> u32 {
        b ^ c ^ d
    }
    pub fn i(b: u32, c: u32, d: u32) -> u32 {
        c ^ (b | !d)
    }
}

fn compress(state: [u32; 4], block: &[u8; 64]) -> [u32; 4] {
    let m = words(block);
    block!(scalar, state, m)
}

fn words(block: &[u8; 64]) -> [u32; 16] {
    std::array::from_fn(|w| {
        u32::from_le_bytes([
            block[4 * w],
            block[4 * w + 1],
            block[4 * w + 2],
            block[4 * w + 3],
        ])
    })
}

/// A message given as pieces, read 64 bytes at a time.
struct Cursor<'a> {
    pieces: &'a [&'a [u8]],
    piece: usize,
    offset: usize,
    left: u64,
    len: u64,
}

impl<'a> Cursor<'a> {
    fn new(pieces: &'a [&'a [u8]]) -> Self {
        let len = pieces.iter().map(|p| p.len() as u64).sum();
        Self {
            pieces,
            piece: 0,
            offset: 0,
            left: len,
            len,
        }
    }

    fn full_blocks(&self) -> u64 {
        self.left / 64
    }

    /// The next 64 bytes: in place when one piece holds them, else copied into `scratch`.
    /// Only while a full block is left.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn next_block<'s>(&mut self, scratch: &'s mut [u8; 64]) -> &'s [u8; 64]
    where
        'a: 's,
    {
        if let Some(piece) = self.pieces.get(self.piece)
            && let Some(block) = piece.get(self.offset..self.offset + 64)
            && let Ok(block) = <&[u8; 64]>::try_from(block)
        {
            self.offset += 64;
            self.left -= 64;
            if self.offset == piece.len() {
                self.piece += 1;
                self.offset = 0;
            }
            return block;
        }
        self.read(scratch);
        scratch
    }

    /// Copies the next `out.len()` bytes (at most what is left) into `out`.
    fn read(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() {
            let Some(piece) = self.pieces.get(self.piece) else {
                break;
            };
            let take = (piece.len() - self.offset).min(out.len() - filled);
            out[filled..filled + take].copy_from_slice(&piece[self.offset..self.offset + take]);
            filled += take;
            self.offset += take;
            if self.offset == piece.len() {
                self.piece += 1;
                self.offset = 0;
            }
        }
        self.left -= filled as u64;
    }

    /// The last bytes (fewer than 64) with RFC 1321's padding and length, through `state`.
    fn finish(mut self, state: [u32; 4]) -> [u8; 16] {
        let mut tail = [0u8; 128];
        let rest = usize::try_from(self.left).unwrap_or(0);
        self.read(&mut tail[..rest]);
        tail[rest] = 0x80;
        let blocks = if rest < 56 { 1 } else { 2 };
        let end = blocks * 64;
        tail[end - 8..end].copy_from_slice(&(self.len.wrapping_mul(8)).to_le_bytes());
        let mut state = state;
        for block in tail[..end].chunks_exact(64) {
            let mut b = [0u8; 64];
            b.copy_from_slice(block);
            state = compress(state, &b);
        }
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

/// The MD5 of each message, each given as its pieces in order.
pub fn digest_many(messages: &[Vec<&[u8]>]) -> Vec<[u8; 16]> {
    digest_with(messages, lanes)
}

fn digest_with(
    messages: &[Vec<&[u8]>],
    lanes: fn(&mut [Cursor<'_>]) -> Vec<[u32; 4]>,
) -> Vec<[u8; 16]> {
    let mut out = Vec::with_capacity(messages.len());
    for group in messages.chunks(LANES) {
        let mut cursors: Vec<Cursor<'_>> = group.iter().map(|m| Cursor::new(m)).collect();
        let states = lanes(&mut cursors);
        out.extend(cursors.into_iter().zip(states).map(|(c, s)| c.finish(s)));
    }
    out
}

/// Runs every full block of up to `LANES` messages; returns each one's state before its tail.
fn lanes(cursors: &mut [Cursor<'_>]) -> Vec<[u32; 4]> {
    #[cfg(target_arch = "x86_64")]
    if cursors.len() > 1 && std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `avx2::lanes` needs AVX2 alone, which the CPU was just found to have.
        return unsafe { avx2::lanes(cursors) };
    }
    scalar_lanes(cursors)
}

/// `lanes` one message after the other.
fn scalar_lanes(cursors: &mut [Cursor<'_>]) -> Vec<[u32; 4]> {
    cursors
        .iter_mut()
        .map(|c| {
            let mut state = INIT;
            let mut block = [0u8; 64];
            for _ in 0..c.full_blocks() {
                c.read(&mut block);
                state = compress(state, &block);
            }
            state
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Sixteen lanes as two registers of eight, stepped together: one register's steps form a
    //! chain of dependent instructions, and a second, independent chain keeps the core's vector
    //! units busy while the first waits on its latency (8 lanes alone: about 1.7 GB/s on the
    //! test machine; compute alone 2.3 GB/s).

    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_extract_epi32, _mm256_loadu_si256,
        _mm256_or_si256, _mm256_permute2x128_si256, _mm256_set1_epi32, _mm256_slli_epi32,
        _mm256_srli_epi32, _mm256_unpackhi_epi32, _mm256_unpackhi_epi64, _mm256_unpacklo_epi32,
        _mm256_unpacklo_epi64, _mm256_xor_si256,
    };

    use super::{Cursor, INIT, K, LANES};

    /// One word of every lane: two registers of eight lanes.
    type V = [__m256i; 2];

    #[inline]
    #[target_feature(enable = "avx2")]
    fn add(a: V, b: V) -> V {
        [_mm256_add_epi32(a[0], b[0]), _mm256_add_epi32(a[1], b[1])]
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn splat(k: u32) -> V {
        [_mm256_set1_epi32(k as i32); 2]
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn rot<const L: i32, const R: i32>(x: V) -> V {
        [
            _mm256_or_si256(_mm256_slli_epi32::<L>(x[0]), _mm256_srli_epi32::<R>(x[0])),
            _mm256_or_si256(_mm256_slli_epi32::<L>(x[1]), _mm256_srli_epi32::<R>(x[1])),
        ]
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn xor(a: V, b: V) -> V {
        [_mm256_xor_si256(a[0], b[0]), _mm256_xor_si256(a[1], b[1])]
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn and(a: V, b: V) -> V {
        [_mm256_and_si256(a[0], b[0]), _mm256_and_si256(a[1], b[1])]
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn or(a: V, b: V) -> V {
        [_mm256_or_si256(a[0], b[0]), _mm256_or_si256(a[1], b[1])]
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn f(b: V, c: V, d: V) -> V {
        xor(d, and(b, xor(c, d)))
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn g(b: V, c: V, d: V) -> V {
        xor(c, and(d, xor(b, c)))
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn h(b: V, c: V, d: V) -> V {
        xor(xor(b, c), d)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn i(b: V, c: V, d: V) -> V {
        xor(c, or(b, xor(d, splat(u32::MAX))))
    }

    /// The vector ops under the names `block!` expects.
    mod ops {
        pub(super) use super::{add, f, g, h, i, rot, splat};
    }

    /// Lane `l` (0..16) of each of the four state words.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lane(state: &[V; 4], l: usize) -> [u32; 4] {
        state.map(|v| {
            let v = v[l / 8];
            (match l % 8 {
                0 => _mm256_extract_epi32::<0>(v),
                1 => _mm256_extract_epi32::<1>(v),
                2 => _mm256_extract_epi32::<2>(v),
                3 => _mm256_extract_epi32::<3>(v),
                4 => _mm256_extract_epi32::<4>(v),
                5 => _mm256_extract_epi32::<5>(v),
                6 => _mm256_extract_epi32::<6>(v),
                _ => _mm256_extract_epi32::<7>(v),
            }) as u32
        })
    }

    /// Eight 32-byte rows (one per lane) turned into eight vectors of one word per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    /// 32 bytes as a register.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(bytes: &[u8; 32]) -> __m256i {
        #[allow(unsafe_code)]
        // SAFETY: an unaligned load of exactly the 32 bytes the reference covers.
        unsafe {
            _mm256_loadu_si256(bytes.as_ptr().cast())
        }
    }

    /// `super::lanes` on AVX2: every lane advances one block per round while the longest has
    /// blocks left; a lane with none left reads zeros, its state kept from its last block.
    #[target_feature(enable = "avx2")]
    pub(super) fn lanes(cursors: &mut [Cursor<'_>]) -> Vec<[u32; 4]> {
        let rounds: Vec<u64> = cursors.iter().map(Cursor::full_blocks).collect();
        let longest = rounds.iter().copied().max().unwrap_or(0);
        let mut out: Vec<[u32; 4]> = vec![INIT; cursors.len()];
        let mut state = INIT.map(|w| splat(w));
        let zeros = [0u8; 64];
        let mut scratch = [[0u8; 64]; LANES];
        for round in 0..longest {
            let mut blocks: [&[u8; 64]; LANES] = [&zeros; LANES];
            for ((c, block), scratch) in cursors.iter_mut().zip(&mut blocks).zip(&mut scratch) {
                if c.full_blocks() > 0 {
                    *block = c.next_block(scratch);
                }
            }
            let mut m: [V; 16] = [splat(0); 16];
            for (half, group) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let rows: [__m256i; 8] = std::array::from_fn(|l| {
                    let row = &blocks[group * 8 + l][half * 32..half * 32 + 32];
                    load(row.try_into().unwrap_or(&[0; 32]))
                });
                for (w, col) in transpose(rows).into_iter().enumerate() {
                    m[half * 8 + w][group] = col;
                }
            }
            state = block!(ops, state, m);
            for (l, &n) in rounds.iter().enumerate() {
                if n == round + 1 {
                    out[l] = lane(&state, l);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8]) -> [u8; 16] {
        let mut m = crate::store::device::Md5::default();
        m.update(data);
        m.finish()
    }

    #[test]
    fn every_lane_is_the_md5_of_its_message_whatever_the_lengths_and_pieces() {
        let data: Vec<u8> = (0..301_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        // Lengths around the padding edges (55, 56, 64), empty, and unequal long ones.
        let lengths = [
            0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4096, 65_537, 100_003, 299_999,
        ];
        for piece in [7usize, 64, 1000, 1 << 20] {
            for take in [1usize, 2, 3, 9, 16, 17, 33] {
                let messages: Vec<Vec<&[u8]>> = (0..take)
                    .map(|n| {
                        let len = lengths[(n * 7 + piece) % lengths.len()];
                        let start = n * 13;
                        data[start..start + len].chunks(piece).collect()
                    })
                    .collect();
                let got = digest_many(&messages);
                assert_eq!(got, digest_with(&messages, scalar_lanes));
                for (n, (msg, md5)) in messages.iter().zip(&got).enumerate() {
                    assert_eq!(
                        *md5,
                        reference(&msg.concat()),
                        "message {n}, pieces of {piece}"
                    );
                }
            }
        }
    }

    #[test]
    fn known_answers_of_rfc_1321() {
        let got = digest_many(&[vec![b"".as_slice()], vec![b"abc".as_slice()]]);
        assert_eq!(
            crate::store::keys::hex(&got[0]),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            crate::store::keys::hex(&got[1]),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }
}
