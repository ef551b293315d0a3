//! `BlockDevice`: what a block front end (SCSI SBC over iSCSI) needs from a volume, protocol-free.
//!
//! The seam between `scsi::sbc` and `gateway::volumes`: volumes implement it over the cache and
//! the bucket; `MemDisk` implements it in memory for the SCSI layer's own tests. Contract:
//! - `read` returns exactly `blocks * block_size` bytes; never-written or unmapped blocks are zeros.
//! - `write` is acknowledged once the data is in the gateway's write-back cache; it is *durable*
//!   (survives a crash) only after a later `flush` returns, or at once when `fua` is set.
//! - `flush` makes every write acknowledged before the call durable (SYNCHRONIZE CACHE).
//! - `unmap` makes the blocks read as zeros and frees their space; it is durable like a write.
//! - Ranges are checked by the caller against `num_blocks`; implementations still return
//!   `OutOfRange` rather than panic on a bad one.
//! - Futures may be dropped (task abort); a dropped write may or may not have happened, but never
//!   half-happened within one block.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use bytes::Bytes;

use crate::gateway::GatewayError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Stable identity of a device, for INQUIRY VPD 80h/83h.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Human name (the volume name).
    pub name: String,
    /// Unit serial number (VPD 80h); printable ASCII, at most 32 characters.
    pub serial: String,
    /// 16 bytes unique to this device, used for the NAA IEEE Registered Extended designator.
    pub uuid: [u8; 16],
}

pub trait BlockDevice: Send + Sync {
    fn identity(&self) -> &DeviceIdentity;
    /// Logical block size in bytes (512 for volumes).
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    fn read(&self, lba: u64, blocks: u32) -> BoxFuture<'_, Result<Bytes, GatewayError>>;
    fn write(&self, lba: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), GatewayError>>;
    fn flush(&self) -> BoxFuture<'_, Result<(), GatewayError>>;
    fn unmap(&self, lba: u64, blocks: u64) -> BoxFuture<'_, Result<(), GatewayError>>;
    /// Whether `lba` is mapped (holds written data) and how many blocks from `lba` on share
    /// that state (at least 1), for GET LBA STATUS.
    fn lba_status(&self, lba: u64) -> BoxFuture<'_, Result<(bool, u64), GatewayError>>;
}

/// An in-memory disk: the reference model in tests, and a LUN before any volume exists.
#[derive(Debug)]
pub struct MemDisk {
    identity: DeviceIdentity,
    block_size: u32,
    blocks: Mutex<Vec<Option<Box<[u8]>>>>,
}

impl MemDisk {
    pub fn new(name: &str, block_size: u32, num_blocks: u64) -> Self {
        let mut uuid = [0u8; 16];
        for (i, b) in name.bytes().enumerate() {
            uuid[i % 16] ^= b.rotate_left(i as u32);
        }
        Self {
            identity: DeviceIdentity {
                name: name.to_owned(),
                serial: format!(
                    "MEM{:016x}",
                    u64::from_le_bytes(uuid[..8].try_into().unwrap_or([0; 8]))
                ),
                uuid,
            },
            block_size,
            blocks: Mutex::new(vec![None; usize::try_from(num_blocks).unwrap_or(0)]),
        }
    }

    fn check(&self, lba: u64, blocks: u64) -> Result<(usize, usize), GatewayError> {
        let total = self.num_blocks();
        match lba.checked_add(blocks) {
            Some(end) if end <= total => Ok((lba as usize, end as usize)),
            _ => Err(GatewayError::OutOfRange(format!(
                "blocks {lba}+{blocks} of {total}"
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Box<[u8]>>>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockDevice for MemDisk {
    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.lock().len() as u64
    }
    fn read(&self, lba: u64, blocks: u32) -> BoxFuture<'_, Result<Bytes, GatewayError>> {
        Box::pin(async move {
            let (start, end) = self.check(lba, u64::from(blocks))?;
            let bs = self.block_size as usize;
            let disk = self.lock();
            let mut out = vec![0u8; (end - start) * bs];
            for (i, block) in disk[start..end].iter().enumerate() {
                if let Some(data) = block {
                    out[i * bs..(i + 1) * bs].copy_from_slice(data);
                }
            }
            Ok(Bytes::from(out))
        })
    }
    fn write(&self, lba: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            let bs = self.block_size as usize;
            if !data.len().is_multiple_of(bs) {
                return Err(GatewayError::InvalidArgument(format!(
                    "{} bytes is not a whole number of {bs}-byte blocks",
                    data.len()
                )));
            }
            let (start, end) = self.check(lba, (data.len() / bs) as u64)?;
            let mut disk = self.lock();
            for (i, chunk) in data.chunks_exact(bs).enumerate() {
                disk[start + i] = Some(chunk.into());
            }
            debug_assert_eq!(start + data.len() / bs, end);
            Ok(())
        })
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async { Ok(()) })
    }
    fn unmap(&self, lba: u64, blocks: u64) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            let (start, end) = self.check(lba, blocks)?;
            self.lock()[start..end].iter_mut().for_each(|b| *b = None);
            Ok(())
        })
    }
    fn lba_status(&self, lba: u64) -> BoxFuture<'_, Result<(bool, u64), GatewayError>> {
        Box::pin(async move {
            let (start, _) = self.check(lba, 1)?;
            let disk = self.lock();
            let mapped = disk[start].is_some();
            let run = disk[start..]
                .iter()
                .take_while(|b| b.is_some() == mapped)
                .count();
            Ok((mapped, run as u64))
        })
    }
}

/// I/O counted per device since start (for metrics: IOPS and throughput per volume).
#[derive(Debug, Default)]
pub struct IoCounters {
    pub reads: std::sync::atomic::AtomicU64,
    pub read_bytes: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    pub write_bytes: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
}

/// A device that counts what passes through it.
pub struct Counted {
    inner: std::sync::Arc<dyn BlockDevice>,
    pub counters: std::sync::Arc<IoCounters>,
}

impl Counted {
    pub fn new(inner: std::sync::Arc<dyn BlockDevice>) -> Self {
        Self {
            inner,
            counters: std::sync::Arc::new(IoCounters::default()),
        }
    }

    fn count<T>(
        &self,
        r: &Result<T, GatewayError>,
        ops: &std::sync::atomic::AtomicU64,
        bytes: &std::sync::atomic::AtomicU64,
        n: u64,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        match r {
            Ok(_) => {
                ops.fetch_add(1, Relaxed);
                bytes.fetch_add(n, Relaxed);
            }
            Err(_) => {
                self.counters.errors.fetch_add(1, Relaxed);
            }
        }
    }
}

impl BlockDevice for Counted {
    fn identity(&self) -> &DeviceIdentity {
        self.inner.identity()
    }

    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }

    fn read(&self, lba: u64, blocks: u32) -> BoxFuture<'_, Result<Bytes, GatewayError>> {
        Box::pin(async move {
            let r = self.inner.read(lba, blocks).await;
            let n = r.as_ref().map_or(0, |b| b.len() as u64);
            self.count(&r, &self.counters.reads, &self.counters.read_bytes, n);
            r
        })
    }

    fn write(&self, lba: u64, data: Bytes, fua: bool) -> BoxFuture<'_, Result<(), GatewayError>> {
        Box::pin(async move {
            let n = data.len() as u64;
            let r = self.inner.write(lba, data, fua).await;
            self.count(&r, &self.counters.writes, &self.counters.write_bytes, n);
            r
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), GatewayError>> {
        self.inner.flush()
    }

    fn unmap(&self, lba: u64, blocks: u64) -> BoxFuture<'_, Result<(), GatewayError>> {
        self.inner.unmap(lba, blocks)
    }

    fn lba_status(&self, lba: u64) -> BoxFuture<'_, Result<(bool, u64), GatewayError>> {
        self.inner.lba_status(lba)
    }
}
