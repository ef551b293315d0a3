//! Medium access commands of the disk LU: READ, WRITE, WRITE AND VERIFY, VERIFY, WRITE SAME,
//! UNMAP, GET LBA STATUS and COMPARE AND WRITE (SBC-4 §5).
//!
//! Invariants: byte counts are computed with checked arithmetic; a command is validated in
//! full (range, limits, data-out length) before its first device call; data-out shorter
//! than the CDB asks for is refused without writing anything (FCP-4 option b, which libiscsi
//! accepts), longer data-out is cut to the CDB's length.

use bytes::Bytes;

use super::super::cdb::Extent;
use super::super::sense::{self, Sense};
use super::super::spc::CmdResult;
use super::super::spc::inquiry::limits;
use super::Disk;

/// GET LBA STATUS returns at most this many descriptors per command: enough for any
/// allocation length initiators use, and it bounds the device calls one command makes.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 256;

impl Disk {
    /// Bytes in `blocks` logical blocks, or INVALID FIELD IN CDB if that overflows.
    fn bytes_for(&self, blocks: u64) -> Result<usize, Sense> {
        blocks
            .checked_mul(u64::from(self.dev.block_size()))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(Sense::invalid_cdb_field(0, None))
    }

    /// Range and MAXIMUM TRANSFER LENGTH checks shared by READ/WRITE/VERIFY (SBC-4 §5.15).
    fn check_transfer(&self, ext: Extent) -> Result<usize, Sense> {
        self.check_range(ext.lba, u64::from(ext.blocks))?;
        if ext.blocks > self.limits.max_transfer {
            return Err(Sense::invalid_cdb_field(0, None));
        }
        self.bytes_for(u64::from(ext.blocks))
    }

    /// The first `need` bytes of data-out, or INVALID FIELD IN INFORMATION UNIT if fewer came.
    fn data_out(data: &Bytes, need: usize) -> Result<Bytes, Sense> {
        if data.len() < need {
            return Err(sense::INVALID_FIELD_IN_INFORMATION_UNIT);
        }
        Ok(data.slice(..need))
    }

    pub(super) async fn read(&self, ext: Extent) -> CmdResult {
        let need = self.check_transfer(ext)?;
        if ext.blocks == 0 {
            return Ok(Bytes::new());
        }
        let data = self.dev.read(ext.lba, ext.blocks).await?;
        if data.len() != need {
            tracing::warn!(
                lba = ext.lba,
                got = data.len(),
                need,
                "short read from device"
            );
            return Err(sense::INTERNAL_TARGET_FAILURE.into());
        }
        Ok(data)
    }

    pub(super) async fn write(&self, ext: Extent, fua: bool, data: &Bytes) -> CmdResult {
        let need = self.check_transfer(ext)?;
        let payload = Self::data_out(data, need)?;
        if ext.blocks == 0 {
            return Ok(Bytes::new());
        }
        // With WCE cleared (caching mode page) every write must be durable before GOOD.
        let fua = fua || !self.state().wce;
        let _shared = self.writes.read().await;
        self.dev.write(ext.lba, payload, fua).await?;
        Ok(Bytes::new())
    }

    pub(super) async fn write_and_verify(
        &self,
        ext: Extent,
        bytchk: bool,
        data: &Bytes,
    ) -> CmdResult {
        self.write(ext, false, data).await?;
        if ext.blocks > 0 {
            let back = self.read(ext).await?;
            if bytchk {
                let need = back.len();
                compare(&data[..need], &back)?;
            }
        }
        Ok(Bytes::new())
    }

    pub(super) async fn verify(&self, ext: Extent, bytchk: u8, data: &Bytes) -> CmdResult {
        self.check_range(ext.lba, u64::from(ext.blocks))?;
        if ext.blocks == 0 {
            return Ok(Bytes::new());
        }
        let bs = self.bytes_for(1)?;
        let expect = match bytchk {
            0 => None,
            1 => Some(Self::data_out(data, self.check_transfer(ext)?)?),
            _ => Some(Self::data_out(data, bs)?),
        };
        // Reading is the verification: the device checks integrity (Corrupt -> MEDIUM ERROR).
        let mut lba = ext.lba;
        let mut left = ext.blocks;
        let mut offset = 0usize;
        while left > 0 {
            let n = left.min(self.limits.max_transfer);
            let got = self.dev.read(lba, n).await?;
            if let Some(expect) = &expect {
                for (i, block) in got.chunks(bs).enumerate() {
                    let want = if bytchk == 1 {
                        let at = offset + i * bs;
                        expect.get(at..at + bs).unwrap_or_default()
                    } else {
                        &expect[..]
                    };
                    let base = if bytchk == 1 { offset + i * bs } else { 0 };
                    compare(want, block).map_err(|s| shift(s, base))?;
                }
            }
            offset = offset.saturating_add(got.len());
            lba = lba.saturating_add(u64::from(n));
            left -= n;
        }
        Ok(Bytes::new())
    }

    pub(super) async fn write_same(
        &self,
        ext: Extent,
        unmap: bool,
        ndob: bool,
        data: &Bytes,
        count_byte: u16,
    ) -> CmdResult {
        // WSNZ=1 in VPD B0h: zero blocks is refused rather than meaning "to the end".
        if ext.blocks == 0 {
            return Err(Sense::invalid_cdb_field(count_byte, None).into());
        }
        self.check_range(ext.lba, u64::from(ext.blocks))?;
        if u64::from(ext.blocks) > self.limits.max_write_same {
            return Err(Sense::invalid_cdb_field(count_byte, None).into());
        }
        let bs = self.bytes_for(1)?;
        let block = if ndob {
            Bytes::from(vec![0u8; bs])
        } else if data.len() != bs {
            // WRITE SAME carries exactly one block (SBC-4 §5.48); anything else is refused.
            return Err(sense::INVALID_FIELD_IN_INFORMATION_UNIT.into());
        } else {
            data.clone()
        };
        let fua = !self.state().wce;
        let _shared = self.writes.read().await;
        // LBPRZ=1: unmapped blocks read as zeros, so unmapping is a zero write (SBC-4 §4.7.3.4).
        if unmap && block.iter().all(|&b| b == 0) {
            self.dev.unmap(ext.lba, u64::from(ext.blocks)).await?;
            if fua {
                self.dev.flush().await?;
            }
            return Ok(Bytes::new());
        }
        let per = self.limits.max_transfer.min(ext.blocks);
        let mut buf = Vec::with_capacity(self.bytes_for(u64::from(per))?);
        for _ in 0..per {
            buf.extend_from_slice(&block);
        }
        let buf = Bytes::from(buf);
        let mut lba = ext.lba;
        let mut left = ext.blocks;
        while left > 0 {
            let n = left.min(per);
            let chunk = buf.slice(..self.bytes_for(u64::from(n))?);
            self.dev.write(lba, chunk, fua).await?;
            lba = lba.saturating_add(u64::from(n));
            left -= n;
        }
        Ok(Bytes::new())
    }

    /// UNMAP (SBC-4 §5.32): the whole parameter list is validated before anything is unmapped.
    pub(super) async fn unmap(&self, param_len: u32, data: &Bytes) -> CmdResult {
        let len = usize::try_from(param_len).unwrap_or(usize::MAX);
        if len == 0 {
            return Ok(Bytes::new());
        }
        if len < 8 {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
        }
        let list = Self::data_out(data, len)?;
        let bd_len = usize::from(u16::from_be_bytes([list[2], list[3]]));
        let descs = list.get(8..).unwrap_or_default();
        let bd_len = bd_len.min(descs.len()) / 16 * 16;
        let count = bd_len / 16;
        if count > limits::MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_param_field(2, None).into());
        }
        let mut ranges = Vec::with_capacity(count);
        let mut total = 0u64;
        for (i, d) in descs[..bd_len].chunks_exact(16).enumerate() {
            let lba = u64::from_be_bytes(d[..8].try_into().unwrap_or_default());
            let blocks = u64::from(u32::from_be_bytes(d[8..12].try_into().unwrap_or_default()));
            self.check_range(lba, blocks)?;
            total = total.saturating_add(blocks);
            if total > u64::from(self.limits.max_unmap) {
                let at = u16::try_from(8 + i * 16 + 8).unwrap_or(u16::MAX);
                return Err(Sense::invalid_param_field(at, None).into());
            }
            if blocks > 0 {
                ranges.push((lba, blocks));
            }
        }
        let _shared = self.writes.read().await;
        for (lba, blocks) in ranges {
            self.dev.unmap(lba, blocks).await?;
        }
        Ok(Bytes::new())
    }

    /// GET LBA STATUS (SBC-4 §5.6): mapped/deallocated extents from `lba` on.
    pub(super) async fn get_lba_status(&self, lba: u64, alloc: u32) -> CmdResult {
        let total = self.dev.num_blocks();
        if lba >= total {
            return Err(sense::LBA_OUT_OF_RANGE.into());
        }
        let room = usize::try_from(alloc)
            .unwrap_or(usize::MAX)
            .saturating_sub(8)
            / 16;
        let max = room.clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        let mut out = vec![0u8; 8];
        let mut at = lba;
        while at < total && out.len() < 8 + max * 16 {
            let (mapped, run) = self.dev.lba_status(at).await?;
            let run = run.clamp(1, total - at).min(u64::from(u32::MAX));
            out.extend_from_slice(&at.to_be_bytes());
            out.extend_from_slice(&u32::try_from(run).unwrap_or(u32::MAX).to_be_bytes());
            // Provisioning status 0: mapped, 1: deallocated.
            out.extend_from_slice(&[u8::from(!mapped), 0, 0, 0]);
            at += run;
        }
        let n = out.len() - 4;
        super::super::spc::put_len::<4>(&mut out, 0, n);
        Ok(super::super::spc::truncate(out, alloc))
    }

    /// COMPARE AND WRITE (SBC-4 §5.3): read, compare and write under the exclusive write lock
    /// so no other write to the LU can slip between the compare and the write.
    pub(super) async fn compare_and_write(
        &self,
        ext: Extent,
        fua: bool,
        data: &Bytes,
    ) -> CmdResult {
        if ext.blocks == 0 {
            return Ok(Bytes::new());
        }
        if ext.blocks > u32::from(limits::MAX_COMPARE_AND_WRITE_BLOCKS) {
            return Err(Sense::invalid_cdb_field(13, None).into());
        }
        self.check_range(ext.lba, u64::from(ext.blocks))?;
        let half = self.bytes_for(u64::from(ext.blocks))?;
        let Some(need) = half.checked_mul(2) else {
            return Err(Sense::invalid_cdb_field(13, None).into());
        };
        let payload = Self::data_out(data, need)?;
        let fua = fua || !self.state().wce;
        let _exclusive = self.writes.write().await;
        let current = self.dev.read(ext.lba, ext.blocks).await?;
        compare(&payload[..half], &current)?;
        self.dev.write(ext.lba, payload.slice(half..), fua).await?;
        Ok(Bytes::new())
    }
}

/// MISCOMPARE with the offset of the first differing byte in the INFORMATION field.
fn compare(expect: &[u8], got: &[u8]) -> Result<(), Sense> {
    match expect.iter().zip(got).position(|(a, b)| a != b) {
        None if expect.len() == got.len() => Ok(()),
        pos => {
            let at = pos.unwrap_or(expect.len().min(got.len()));
            Err(sense::MISCOMPARE_DURING_VERIFY.with_info(u32::try_from(at).unwrap_or(u32::MAX)))
        }
    }
}

/// Adds `base` to a miscompare offset (for comparisons done a block at a time).
fn shift(mut s: Sense, base: usize) -> Sense {
    if let Some(info) = s.info {
        let base = u32::try_from(base).unwrap_or(u32::MAX);
        s.info = Some(info.saturating_add(base));
    }
    s
}
