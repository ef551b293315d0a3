//! Medium access commands of the disk LU: READ, WRITE, WRITE AND VERIFY, VERIFY, WRITE SAME,
//! UNMAP, GET LBA STATUS and COMPARE AND WRITE (SBC-4 §5).
//!
//! Invariants: byte counts are computed with checked arithmetic; a command is validated in
//! full (range, limits, data-out length) before its first device call. Data-out longer than
//! the CDB asks for is cut to the CDB's length; shorter data-out writes only the whole blocks
//! that came for WRITE and WRITE AND VERIFY (see `write_blocks`), and is refused with
//! INVALID FIELD IN INFORMATION UNIT for commands whose data-out is a parameter list or a
//! comparison buffer (VERIFY, WRITE SAME, UNMAP, COMPARE AND WRITE).

use bytes::Bytes;

use super::super::ScsiResponse;
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
        self.write_blocks(ext, fua, data).await?;
        Ok(Bytes::new())
    }

    /// WRITE's body; returns the blocks written. Data-out shorter than the CDB (iSCSI EDTL
    /// below the SCSI transfer length) writes the whole blocks that came and reports GOOD,
    /// the transport flagging the residual overflow (FCP-4 §9.4.2 option a, RFC 7143
    /// §11.4.5.1; libiscsi 1.19 requires this, later versions accept it).
    async fn write_blocks(
        &self,
        ext: Extent,
        fua: bool,
        data: &Bytes,
    ) -> Result<u32, ScsiResponse> {
        let need = self.check_transfer(ext)?;
        let bs = self.bytes_for(1)?.max(1);
        let have = data.len().min(need) / bs;
        if have == 0 {
            return Ok(0);
        }
        let payload = data.slice(..have * bs);
        // With WCE cleared (caching mode page) every write must be durable before GOOD.
        let fua = fua || !self.state().wce;
        let _shared = self.writes.read().await;
        self.dev.write(ext.lba, payload, fua).await?;
        Ok(u32::try_from(have).unwrap_or(u32::MAX))
    }

    pub(super) async fn write_and_verify(
        &self,
        ext: Extent,
        bytchk: bool,
        data: &Bytes,
    ) -> CmdResult {
        let written = self.write_blocks(ext, false, data).await?;
        if written > 0 {
            let back = self
                .read(Extent {
                    lba: ext.lba,
                    blocks: written,
                })
                .await?;
            if bytchk {
                compare(data.get(..back.len()).unwrap_or_default(), &back)?;
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
        self.check_range(ext.lba, u64::from(ext.blocks))?;
        // WSNZ=1 in VPD B0h: zero blocks is refused rather than meaning "to the end".
        if ext.blocks == 0 {
            return Err(Sense::invalid_cdb_field(count_byte, None).into());
        }
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
            // Zero blocks is a no-op (SBC-4 §5.3), but only without data: data-out for N=0
            // means the initiator wrapped a count past 255 into the one-byte field (libiscsi
            // 1.19's CompareAndWrite tests do exactly that), and answering GOOD would report
            // a write that never happened.
            if !data.is_empty() {
                return Err(Sense::invalid_cdb_field(13, None).into());
            }
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

#[cfg(test)]
mod tests {
    use super::super::super::Status;
    use super::super::testkit::*;

    fn pattern(blocks: usize, seed: u8) -> Vec<u8> {
        (0..blocks * BS)
            .map(|i| seed.wrapping_add((i % 251) as u8))
            .collect()
    }

    /// Expected outcome of one command: data-in, an empty GOOD, or CHECK CONDITION.
    #[derive(Debug)]
    enum Want {
        Good,
        Data(Vec<u8>),
        Check(u8, u8, u8),
    }

    async fn table(steps: Vec<(Vec<u8>, Vec<u8>, Want)>) {
        let d = disk();
        let a = nexus("a");
        clear_ua(&d, &a).await;
        for (i, (cdb, out, want)) in steps.into_iter().enumerate() {
            let r = run(&d, &a, &cdb, &out).await;
            match want {
                Want::Good => {
                    assert_eq!(
                        r.status,
                        Status::Good,
                        "step {i} {cdb:02x?} {:?}",
                        sense_of(&r)
                    );
                    assert!(r.data_in.is_empty(), "step {i}");
                }
                Want::Data(d) => {
                    assert_eq!(
                        r.status,
                        Status::Good,
                        "step {i} {cdb:02x?} {:?}",
                        sense_of(&r)
                    );
                    assert_eq!(r.data_in.as_ref(), &d[..], "step {i} {cdb:02x?}");
                }
                Want::Check(k, asc, ascq) => {
                    assert_eq!(sense_of(&r), Some((k, asc, ascq)), "step {i} {cdb:02x?}");
                }
            }
        }
    }

    const OOB: Want = Want::Check(5, 0x21, 0);
    const BAD_CDB: Want = Want::Check(5, 0x24, 0);
    const SHORT: Want = Want::Check(5, 0x0e, 0x03);
    const MISCOMPARE: Want = Want::Check(0x0e, 0x1d, 0);

    #[tokio::test]
    async fn read_write_paths() {
        let last = (BLOCKS - 1) as u32;
        let p2 = pattern(2, 7);
        let six = vec![0x0a, 0, 0, 5, 1, 0];
        let mut read6 = six.clone();
        read6[0] = 0x08;
        let mut w16fua = cdb16(0x8a, 100, 1);
        w16fua[1] = 0x08;
        table(vec![
            (cdb10(0x2a, 10, 2), p2.clone(), Want::Good),
            (cdb10(0x28, 10, 2), vec![], Want::Data(p2.clone())),
            (cdb16(0x88, 10, 2), vec![], Want::Data(p2.clone())),
            (cdb10(0x28, 12, 1), vec![], Want::Data(vec![0; BS])),
            // READ(12)/WRITE(12)
            (
                vec![0xaa, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0],
                pattern(1, 3),
                Want::Good,
            ),
            (
                vec![0xa8, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0],
                vec![],
                Want::Data(pattern(1, 3)),
            ),
            // 6-byte forms; READ(6) length 0 is 256 blocks.
            (six.clone(), pattern(1, 9), Want::Good),
            (read6.clone(), vec![], Want::Data(pattern(1, 9))),
            (w16fua, pattern(1, 1), Want::Good),
            // Zero-length transfers touch nothing, even at the last LBA + 1.
            (cdb10(0x2a, BLOCKS as u32, 0), vec![], Want::Good),
            (cdb10(0x28, BLOCKS as u32, 0), vec![], Want::Data(vec![])),
            (cdb10(0x28, BLOCKS as u32 + 1, 0), vec![], OOB),
            // Range checks.
            (cdb10(0x28, last, 2), vec![], OOB),
            (cdb10(0x2a, last, 2), pattern(2, 0), OOB),
            (cdb16(0x88, u64::MAX, 1), vec![], OOB),
            (cdb16(0x8a, u64::MAX - 1, 4), pattern(4, 0), OOB),
            // Data-out shorter than the CDB writes the whole blocks that came; longer is cut.
            (cdb10(0x2a, 30, 2), pattern(1, 5), Want::Good),
            (
                cdb10(0x28, 30, 2),
                vec![],
                Want::Data([pattern(1, 5), vec![0; BS]].concat()),
            ),
            (cdb10(0x2a, 40, 2), vec![7; BS + 200], Want::Good),
            (
                cdb10(0x28, 40, 2),
                vec![],
                Want::Data([vec![7; BS], vec![0; BS]].concat()),
            ),
            (cdb10(0x2a, 30, 1), pattern(2, 5), Want::Good),
            (
                cdb10(0x28, 30, 2),
                vec![],
                Want::Data([pattern(1, 5), vec![0; BS]].concat()),
            ),
            // Protection information is not supported.
            (
                {
                    let mut c = cdb10(0x28, 0, 1);
                    c[1] = 0x20;
                    c
                },
                vec![],
                BAD_CDB,
            ),
            // SYNCHRONIZE CACHE and PRE-FETCH check their range.
            (cdb10(0x35, 0, 0), vec![], Want::Good),
            (cdb16(0x91, last as u64, 2), vec![], OOB),
            (cdb10(0x34, 0, 8), vec![], Want::Good),
            (cdb16(0x90, BLOCKS, 1), vec![], OOB),
        ])
        .await;
    }

    #[tokio::test]
    async fn read6_zero_means_256_blocks() {
        let d = disk();
        let a = nexus("a");
        clear_ua(&d, &a).await;
        let r = run(&d, &a, &[0x08, 0, 0, 0, 0, 0], &[]).await;
        assert_eq!(r.data_in.len(), 256 * BS);
    }

    #[tokio::test]
    async fn verify_and_write_and_verify() {
        let p = pattern(2, 11);
        let mut other = p.clone();
        other[BS + 3] ^= 0xff;
        let bytchk = |op: u8, lba: u32, n: u16, b: u8| {
            let mut c = cdb10(op, lba, n);
            c[1] = b << 1;
            c
        };
        table(vec![
            (bytchk(0x2e, 40, 2, 1), p.clone(), Want::Good),
            (bytchk(0x2e, 50, 1, 0), pattern(1, 2), Want::Good),
            (cdb10(0x28, 50, 1), vec![], Want::Data(pattern(1, 2))),
            (bytchk(0x2f, 40, 2, 0), vec![], Want::Good),
            (bytchk(0x2f, 40, 2, 1), p.clone(), Want::Good),
            (bytchk(0x2f, 40, 2, 1), other.clone(), MISCOMPARE),
            (bytchk(0x2f, 40, 2, 1), pattern(1, 11), SHORT),
            (bytchk(0x2f, (BLOCKS - 1) as u32, 2, 0), vec![], OOB),
            (bytchk(0x2f, 0, 0, 1), vec![], Want::Good),
            // BYTCHK 11b: one block compared against each block in the range.
            (bytchk(0x2f, 60, 3, 3), vec![0; BS], Want::Good),
            (bytchk(0x2f, 40, 2, 3), vec![0; BS], MISCOMPARE),
            (bytchk(0x2e, (BLOCKS - 1) as u32, 2, 1), pattern(2, 0), OOB),
        ])
        .await;
    }

    #[tokio::test]
    async fn verify_miscompare_reports_offset() {
        let d = disk();
        let a = nexus("a");
        clear_ua(&d, &a).await;
        let p = pattern(2, 1);
        run(&d, &a, &cdb10(0x2a, 0, 2), &p).await;
        let mut other = p.clone();
        other[BS + 9] ^= 1;
        let mut c = cdb16(0x8f, 0, 2);
        c[1] = 0x02;
        let r = run(&d, &a, &c, &other).await;
        let s = r.sense.expect("sense");
        assert_eq!(s[0], 0xf0, "VALID set");
        assert_eq!(
            u32::from_be_bytes([s[3], s[4], s[5], s[6]]) as usize,
            BS + 9
        );
    }

    #[tokio::test]
    async fn write_same_and_unmap() {
        let blk = pattern(1, 42);
        let ws10 = |lba: u32, n: u16, unmap: bool| {
            let mut c = cdb10(0x41, lba, n);
            c[1] = if unmap { 0x08 } else { 0 };
            c
        };
        let lba_status = |lba: u64| {
            let mut c = cdb16(0x9e, lba, 24); // room for one descriptor
            c[1] = 0x12;
            c
        };
        let status_desc = |lba: u64, n: u32, dealloc: bool| {
            let mut v = vec![0, 0, 0, 20, 0, 0, 0, 0];
            v.extend_from_slice(&lba.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&[u8::from(dealloc), 0, 0, 0]);
            v
        };
        let unmap_list = |descs: &[(u64, u32)]| {
            let mut v = vec![0u8; 8];
            let n = (descs.len() * 16) as u16;
            v[0..2].copy_from_slice(&(n + 6).to_be_bytes());
            v[2..4].copy_from_slice(&n.to_be_bytes());
            for &(lba, blocks) in descs {
                v.extend_from_slice(&lba.to_be_bytes());
                v.extend_from_slice(&blocks.to_be_bytes());
                v.extend_from_slice(&[0; 4]);
            }
            v
        };
        let unmap_cdb = |len: u16| {
            let mut c = vec![0x42, 0, 0, 0, 0, 0, 0];
            c.extend_from_slice(&len.to_be_bytes());
            c.push(0);
            c
        };
        let l1 = unmap_list(&[(100, 4), (110, 2)]);
        let l_oob = unmap_list(&[(100, 1), (BLOCKS, 1)]);
        let mut ndob = cdb16(0x93, 200, 4);
        ndob[1] = 0x09;
        table(vec![
            (ws10(0, 8, false), blk.clone(), Want::Good),
            (cdb10(0x28, 7, 1), vec![], Want::Data(blk.clone())),
            (lba_status(0), vec![], Want::Data(status_desc(0, 8, false))),
            (
                lba_status(8),
                vec![],
                Want::Data(status_desc(8, (BLOCKS - 8) as u32, true)),
            ),
            // WRITE SAME UNMAP with zeros deallocates; reads return zeros (LBPRZ).
            (ws10(2, 4, true), vec![0; BS], Want::Good),
            (cdb10(0x28, 2, 1), vec![], Want::Data(vec![0; BS])),
            (lba_status(2), vec![], Want::Data(status_desc(2, 4, true))),
            // UNMAP bit with non-zero data writes the data.
            (ws10(2, 1, true), blk.clone(), Want::Good),
            (lba_status(2), vec![], Want::Data(status_desc(2, 1, false))),
            // WSNZ, data-out size, range, limits.
            (ws10(0, 0, false), blk.clone(), BAD_CDB),
            (ws10(BLOCKS as u32 + 1, 0, false), blk.clone(), OOB),
            (ws10(0, 1, false), pattern(2, 0), SHORT),
            (ws10(0, 1, false), vec![], SHORT),
            (ws10((BLOCKS - 1) as u32, 2, false), blk.clone(), OOB),
            (ndob.clone(), vec![], Want::Good),
            (
                lba_status(200),
                vec![],
                Want::Data(status_desc(200, (BLOCKS - 200) as u32, true)),
            ),
            (lba_status(BLOCKS), vec![], OOB),
            // UNMAP: parameter list length rules, range checks, then effect.
            (cdb10(0x2a, 100, 12), pattern(12, 1), Want::Good),
            (unmap_cdb(0), vec![], Want::Good),
            (unmap_cdb(4), vec![0; 4], Want::Check(5, 0x1a, 0)),
            (unmap_cdb(l_oob.len() as u16), l_oob.clone(), OOB),
            (unmap_cdb(l1.len() as u16), l1[..20].to_vec(), SHORT),
            (
                lba_status(100),
                vec![],
                Want::Data(status_desc(100, 12, false)),
            ),
            (unmap_cdb(l1.len() as u16), l1.clone(), Want::Good),
            (
                lba_status(100),
                vec![],
                Want::Data(status_desc(100, 4, true)),
            ),
            (
                lba_status(104),
                vec![],
                Want::Data(status_desc(104, 6, false)),
            ),
            (cdb10(0x28, 110, 1), vec![], Want::Data(vec![0; BS])),
        ])
        .await;
    }

    #[tokio::test]
    async fn compare_and_write_paths() {
        let old = pattern(1, 1);
        let new = pattern(1, 2);
        let caw = |lba: u64, n: u8| {
            let mut c = cdb16(0x89, lba, 0);
            c[10..14].fill(0);
            c[13] = n;
            c
        };
        let mut wrong = old.clone();
        wrong[17] ^= 0x80;
        table(vec![
            (cdb10(0x2a, 5, 1), old.clone(), Want::Good),
            (caw(5, 1), [old.clone(), new.clone()].concat(), Want::Good),
            (cdb10(0x28, 5, 1), vec![], Want::Data(new.clone())),
            (caw(5, 1), [old.clone(), pattern(1, 3)].concat(), MISCOMPARE),
            (cdb10(0x28, 5, 1), vec![], Want::Data(new.clone())),
            (caw(5, 1), old.clone(), SHORT),
            (caw(BLOCKS - 1, 2), pattern(4, 0), OOB),
            (caw(0, 0), vec![], Want::Good),
            (caw(0, 0), pattern(2, 0), BAD_CDB),
            (caw(5, 1), [wrong, new.clone()].concat(), MISCOMPARE),
        ])
        .await;
        // The miscompare offset is in the INFORMATION field.
        let d = disk();
        let a = nexus("a");
        clear_ua(&d, &a).await;
        let mut c = vec![0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        c[9] = 1;
        let mut expect = vec![0u8; BS];
        expect[100] = 1;
        let r = run(&d, &a, &c, &[expect, vec![9; BS]].concat()).await;
        let s = r.sense.expect("sense");
        assert_eq!(u32::from_be_bytes([s[3], s[4], s[5], s[6]]), 100);
    }

    #[tokio::test]
    async fn read_capacity_reports_thin_provisioning() {
        let d = disk();
        let a = nexus("a");
        clear_ua(&d, &a).await;
        let r = run(&d, &a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).await;
        assert_eq!(r.data_in.as_ref(), &[0, 0, 0x07, 0xff, 0, 0, 2, 0]);
        let mut c = cdb16(0x9e, 0, 32);
        c[1] = 0x10;
        let r = run(&d, &a, &c, &[]).await;
        assert_eq!(
            &r.data_in[..12],
            &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0]
        );
        assert_eq!(r.data_in[14] & 0xc0, 0xc0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            lba: u64,
            n: u16,
            seed: u8,
        },
        WriteSame {
            lba: u64,
            n: u16,
            byte: u8,
            unmap: bool,
        },
        Unmap {
            lba: u64,
            n: u32,
        },
        Read {
            lba: u64,
            n: u16,
        },
    }

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let lba = 0u64..70;
        prop_oneof![
            (lba.clone(), 0u16..6, any::<u8>()).prop_map(|(lba, n, seed)| Op::Write {
                lba,
                n,
                seed
            }),
            (
                lba.clone(),
                0u16..6,
                prop_oneof![Just(0u8), any::<u8>()],
                any::<bool>()
            )
                .prop_map(|(lba, n, byte, unmap)| Op::WriteSame {
                    lba,
                    n,
                    byte,
                    unmap
                }),
            (lba.clone(), 0u32..6).prop_map(|(lba, n)| Op::Unmap { lba, n }),
            (lba, 0u16..6).prop_map(|(lba, n)| Op::Read { lba, n }),
        ]
    }

    proptest::proptest! {
        /// Model-based: any sequence of writes, WRITE SAMEs, UNMAPs and reads leaves the LU
        /// reading exactly what a plain byte vector says, and out-of-range commands change
        /// nothing.
        #[test]
        fn disk_matches_byte_vector_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
            const N: u64 = 64;
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
            let dev = std::sync::Arc::new(crate::gateway::block::MemDisk::new("m", BS as u32, N));
            let d = super::Disk::new(dev);
            let a = nexus("a");
            let mut model = vec![0u8; N as usize * BS];
            rt.block_on(async {
                clear_ua(&d, &a).await;
                for op in ops {
                    let (lba, n) = match &op {
                        Op::Write { lba, n, .. } | Op::WriteSame { lba, n, .. } | Op::Read { lba, n } => (*lba, u64::from(*n)),
                        Op::Unmap { lba, n } => (*lba, u64::from(*n)),
                    };
                    let fits = lba + n <= N;
                    let range = (lba as usize * BS)..((lba + n) as usize * BS);
                    let r = match &op {
                        Op::Write { seed, .. } => {
                            let data = pattern(n as usize, *seed);
                            let r = run(&d, &a, &cdb10(0x2a, lba as u32, n as u16), &data).await;
                            if fits { model[range].copy_from_slice(&data); }
                            r
                        }
                        Op::WriteSame { byte, unmap, .. } => {
                            let mut c = cdb10(0x41, lba as u32, n as u16);
                            c[1] = if *unmap { 0x08 } else { 0 };
                            let r = run(&d, &a, &c, &vec![*byte; BS]).await;
                            if fits && n > 0 { model[range].fill(*byte); }
                            r
                        }
                        Op::Unmap { .. } => {
                            let mut p = vec![0, 22, 0, 16, 0, 0, 0, 0];
                            p.extend_from_slice(&lba.to_be_bytes());
                            p.extend_from_slice(&(n as u32).to_be_bytes());
                            p.extend_from_slice(&[0; 4]);
                            let r = run(&d, &a, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p).await;
                            if fits { model[range].fill(0); }
                            r
                        }
                        Op::Read { .. } => {
                            let r = run(&d, &a, &cdb10(0x28, lba as u32, n as u16), &[]).await;
                            if fits {
                                proptest::prop_assert_eq!(r.data_in.as_ref(), &model[range]);
                            }
                            r
                        }
                    };
                    let zero_ws = matches!(op, Op::WriteSame { .. }) && n == 0;
                    let want = if !fits { Some((5, 0x21, 0)) } else if zero_ws { Some((5, 0x24, 0)) } else { None };
                    proptest::prop_assert_eq!(sense_of(&r), want, "{:?}", op);
                }
                let all = run(&d, &a, &cdb10(0x28, 0, N as u16), &[]).await;
                proptest::prop_assert_eq!(all.data_in.as_ref(), &model[..]);
                Ok(())
            })?;
        }
    }
}
