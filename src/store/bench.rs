//! `tidegate bench codec`: the speed of sealing and opening chunks and of the tree hash, each
//! beside the raw speed of the primitives it is built from, measured in the same run on the same
//! buffers, single-threaded.
//!
//! The ratios are the point: seal = (lz4 attempt + keyed BLAKE3 + AES-256-GCM) ÷ whole seal, so a
//! needless copy or pass in the codec shows as a ratio well under 1 whatever the machine.
//! Every timing is the sum of per-call times (set-up such as refreshing an in-place buffer is
//! outside the clock), best of several rounds to shed noise from the other core.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce};
use aws_lc_rs::digest::{SHA256, digest};

use crate::store::frame::{Codec, HEADER_LEN, Sealed};
use crate::store::master::MasterKey;
use crate::store::treehash;

#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Calls per round for the 1 MiB chunk steps.
    pub iterations: usize,
    pub rounds: usize,
    pub chunk_size: usize,
    /// Bytes hashed per round by the SHA-256 and tree-hash steps.
    pub hash_bytes: usize,
}

impl BenchOptions {
    pub fn full() -> Self {
        Self {
            iterations: 64,
            rounds: 5,
            chunk_size: 1 << 20,
            hash_bytes: 64 << 20,
        }
    }

    /// A few iterations: checks that every step runs, not how fast.
    pub fn quick() -> Self {
        Self {
            iterations: 2,
            rounds: 1,
            chunk_size: 1 << 20,
            hash_bytes: 3 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Ratios {
    pub treehash: f64,
    pub seal_random: f64,
    pub open_random: f64,
    pub seal_text: f64,
    pub open_text: f64,
}

/// Runs the codec benchmark and prints a line per step, then the ratio lines (the acceptance
/// line `ratios: treehash=… seal_random=… open_random=…` last).
pub fn codec(opts: BenchOptions, out: &mut dyn Write) -> io::Result<Ratios> {
    let key = MasterKey::from_bytes(*b"tidegate bench key, not a secret");
    let codec = Codec::new(key.clone());
    let n = opts.chunk_size;
    let random = noise(n, 0x9e37_79b9_7f4a_7c15);
    let text = log_text(n);
    let b = Bencher { opts, out };
    let mut b = b;
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    writeln!(
        b.out,
        "tidegate bench codec: {} KiB chunks, {} calls x {} rounds, single thread unless noted",
        n >> 10,
        opts.iterations,
        opts.rounds
    )?;

    // Hashing.
    let big = noise(opts.hash_bytes, 7);
    let sha = b.hash_step("sha256 (aws-lc-rs, raw)", &big, |d| {
        std::hint::black_box(digest(&SHA256, d));
    })?;
    let tree = b.hash_step("treehash (1 MiB leaves)", &big, |d| {
        std::hint::black_box(treehash::hash_bytes(d));
    })?;

    // Sealing primitives.
    let mut scratch = vec![0u8; lz4_flex::block::get_maximum_output_size(n)];
    let lz4_random = b.step("lz4 compress attempt, random", n, || {
        let t = Instant::now();
        std::hint::black_box(lz4_flex::block::compress_into(&random, &mut scratch).ok());
        t.elapsed()
    })?;
    let lz4_text = b.step("lz4 compress, log text", n, || {
        let t = Instant::now();
        std::hint::black_box(lz4_flex::block::compress_into(&text, &mut scratch).ok());
        t.elapsed()
    })?;
    let compressed_text = lz4_flex::block::compress(&text);
    let id_random = b.step("chunk id (keyed BLAKE3), random", n, || {
        let t = Instant::now();
        std::hint::black_box(codec.chunk_id(&random));
        t.elapsed()
    })?;
    let id_text = b.step("chunk id (keyed BLAKE3), log text", n, || {
        let t = Instant::now();
        std::hint::black_box(codec.chunk_id(&text));
        t.elapsed()
    })?;
    let salt = [3u8; 32];
    let nonce = [4u8; 12];
    let aead = LessSafeKey::new(key.frame_key(&salt));
    let mut buf = random.clone();
    let gcm_seal = b.step("aes-256-gcm seal (aws-lc-rs, shipped)", n, || {
        buf.copy_from_slice(&random);
        let t = Instant::now();
        let tag = aead.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&[0u8; HEADER_LEN][..]),
            &mut buf,
        );
        let elapsed = t.elapsed();
        std::hint::black_box(tag.ok());
        elapsed
    })?;
    let gcm_seal_text = b.step(
        "aes-256-gcm seal of lz4 output (aws-lc-rs)",
        compressed_text.len(),
        || {
            let mut body = compressed_text.clone();
            let t = Instant::now();
            let tag = aead.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[0u8; HEADER_LEN][..]),
                &mut body,
            );
            let elapsed = t.elapsed();
            std::hint::black_box(tag.ok());
            elapsed
        },
    )?;
    let alt = aes_gcm_alternative(&salt);
    b.step("aes-256-gcm seal (aes-gcm 0.11, pure Rust)", n, || {
        buf.copy_from_slice(&random);
        let t = Instant::now();
        std::hint::black_box(alt.seal(&mut buf));
        t.elapsed()
    })?;

    // Whole seals.
    let seal_random = b.step("seal, random (whole)", n, || {
        let t = Instant::now();
        let sealed = codec.seal_chunk(&random);
        let elapsed = t.elapsed();
        drop(std::hint::black_box(sealed));
        elapsed
    })?;
    let seal_text = b.step("seal, log text (whole)", n, || {
        let t = Instant::now();
        let sealed = codec.seal_chunk(&text);
        let elapsed = t.elapsed();
        drop(std::hint::black_box(sealed));
        elapsed
    })?;

    // Opening primitives and whole opens, on frames sealed above.
    let frame_random = sealed_frame(&codec, &random)?;
    let frame_text = sealed_frame(&codec, &text)?;
    let mut sealed_body = random.clone();
    let tag = aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&[0u8; HEADER_LEN][..]),
            &mut sealed_body,
        )
        .map_err(|_| io::Error::other("aead seal failed"))?;
    sealed_body.extend_from_slice(tag.as_ref());
    let mut in_out = Vec::with_capacity(sealed_body.len());
    let gcm_open = b.step("aes-256-gcm open (aws-lc-rs, shipped)", n, || {
        in_out.clear();
        in_out.extend_from_slice(&sealed_body);
        let t = Instant::now();
        let r = aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[0u8; HEADER_LEN][..]),
                &mut in_out,
            )
            .map(|p| p.len());
        let elapsed = t.elapsed();
        std::hint::black_box(r.ok());
        elapsed
    })?;
    let gcm_open_text = b.step(
        "aes-256-gcm open of lz4 output (aws-lc-rs)",
        compressed_text.len(),
        || {
            let mut body = compressed_text.clone();
            let tag = aead.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[0u8; HEADER_LEN][..]),
                &mut body,
            );
            if let Ok(tag) = tag {
                body.extend_from_slice(tag.as_ref());
            }
            let t = Instant::now();
            let r = aead
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&[0u8; HEADER_LEN][..]),
                    &mut body,
                )
                .map(|p| p.len());
            let elapsed = t.elapsed();
            std::hint::black_box(r.ok());
            elapsed
        },
    )?;
    let lz4_decompress = b.step("lz4 decompress, log text", n, || {
        let t = Instant::now();
        let d = lz4_flex::block::decompress(&compressed_text, n);
        let elapsed = t.elapsed();
        drop(std::hint::black_box(d));
        elapsed
    })?;
    let object = codec_object(&codec, &random);
    let object_text = codec_object(&codec, &text);
    let open_random = b.step("open, random (whole)", n, || {
        let frame = frame_random.clone();
        let t = Instant::now();
        let r = codec.open(&object, frame);
        let elapsed = t.elapsed();
        drop(std::hint::black_box(r));
        elapsed
    })?;
    let open_text = b.step("open, log text (whole)", n, || {
        let frame = frame_text.clone();
        let t = Instant::now();
        let r = codec.open(&object_text, frame);
        let elapsed = t.elapsed();
        drop(std::hint::black_box(r));
        elapsed
    })?;

    // All cores: the uploader seals chunks in parallel.
    let parallel = seal_parallel(&codec, &random, &text, threads, opts.iterations);
    writeln!(
        b.out,
        "  {:<48} {:>9.0} MB/s  ({threads} threads, half random, half text)",
        "seal, parallel", parallel
    )?;

    let ratios = Ratios {
        treehash: tree / sha,
        seal_random: (1.0 / lz4_random + 1.0 / id_random + 1.0 / gcm_seal) * seal_random,
        open_random: (1.0 / gcm_open) * open_random,
        seal_text: (1.0 / lz4_text
            + 1.0 / id_text
            + (compressed_text.len() as f64 / n as f64) / gcm_seal_text)
            * seal_text,
        open_text: ((compressed_text.len() as f64 / n as f64) / gcm_open_text
            + 1.0 / lz4_decompress)
            * open_text,
    };
    writeln!(
        b.out,
        "lz4 ratio on log text: {:.1}x; compressible ratios: seal_text={:.2} open_text={:.2}",
        n as f64 / compressed_text.len() as f64,
        ratios.seal_text,
        ratios.open_text
    )?;
    writeln!(
        b.out,
        "ratios: treehash={:.2} seal_random={:.2} open_random={:.2}",
        ratios.treehash, ratios.seal_random, ratios.open_random
    )?;
    Ok(ratios)
}

struct Bencher<'a> {
    opts: BenchOptions,
    out: &'a mut dyn Write,
}

impl Bencher<'_> {
    /// Runs `call` (which returns its own measured time) `iterations` times per round and prints
    /// the best round's throughput. Returns MB/s.
    fn step(
        &mut self,
        name: &str,
        bytes: usize,
        mut call: impl FnMut() -> Duration,
    ) -> io::Result<f64> {
        let mut best = Duration::MAX;
        for _ in 0..self.opts.rounds.max(1) {
            let total: Duration = (0..self.opts.iterations.max(1)).map(|_| call()).sum();
            best = best.min(total);
        }
        let mbps =
            (bytes * self.opts.iterations.max(1)) as f64 / best.as_secs_f64().max(1e-9) / 1e6;
        writeln!(self.out, "  {name:<48} {mbps:>9.0} MB/s")?;
        Ok(mbps)
    }

    fn hash_step(&mut self, name: &str, data: &[u8], mut f: impl FnMut(&[u8])) -> io::Result<f64> {
        let mut best = Duration::MAX;
        for _ in 0..self.opts.rounds.max(1) {
            let t = Instant::now();
            f(data);
            best = best.min(t.elapsed());
        }
        let mbps = data.len() as f64 / best.as_secs_f64().max(1e-9) / 1e6;
        writeln!(self.out, "  {name:<48} {mbps:>9.0} MB/s")?;
        Ok(mbps)
    }
}

fn sealed_frame(codec: &Codec, data: &[u8]) -> io::Result<Vec<u8>> {
    match codec.seal_chunk(data) {
        Ok(Sealed::Chunk { frame, .. }) => Ok(frame),
        Ok(Sealed::Zero) => Err(io::Error::other("bench data is all zeros")),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

fn codec_object(codec: &Codec, data: &[u8]) -> String {
    codec.chunk_id(data).object_key()
}

fn seal_parallel(
    codec: &Codec,
    random: &[u8],
    text: &[u8],
    threads: usize,
    per_thread: usize,
) -> f64 {
    let per_thread = per_thread.max(2);
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            s.spawn(move || {
                for j in 0..per_thread {
                    let data = if (i + j) % 2 == 0 { random } else { text };
                    drop(std::hint::black_box(codec.seal_chunk(data)));
                }
            });
        }
    });
    (threads * per_thread * random.len()) as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e6
}

/// The design card's pure-Rust AEAD, kept for comparison only.
struct AesGcmAlternative {
    cipher: aes_gcm::Aes256Gcm,
}

fn aes_gcm_alternative(salt: &[u8; 32]) -> AesGcmAlternative {
    use aes_gcm::KeyInit;
    AesGcmAlternative {
        cipher: aes_gcm::Aes256Gcm::new(&(*salt).into()),
    }
}

impl AesGcmAlternative {
    fn seal(&self, buf: &mut [u8]) -> bool {
        use aes_gcm::aead::AeadInOut;
        let nonce = aes_gcm::Nonce::from([4u8; 12]);
        self.cipher
            .encrypt_inout_detached(&nonce, &[0u8; HEADER_LEN], buf.into())
            .is_ok()
    }
}

/// Deterministic incompressible bytes (xorshift64); also the tests' data generator.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Syslog-like lines with varying numbers: compresses about as well as real logs do.
fn log_text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut i: u64 = 0;
    while out.len() < len {
        let line = format!(
            "Nov 23 11:{:02}:{:02} gw-{} tidegate[{}]: volume vol{} chunk {} uploaded {} bytes in {} ms\n",
            (i / 60) % 60,
            i % 60,
            i % 3,
            800 + i % 17,
            i % 5,
            i * 7919 % 100_003,
            (i * 104_729) % 1_048_576,
            i % 97
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_bench_prints_every_step_and_the_ratio_line_last() {
        let mut out = Vec::new();
        let ratios = codec(BenchOptions::quick(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("ratios: treehash="), "{last}");
        assert!(text.contains("aes-gcm 0.11"), "{text}");
        for r in [ratios.treehash, ratios.seal_random, ratios.open_random] {
            assert!(r.is_finite() && r > 0.0, "{text}");
        }
    }
}
