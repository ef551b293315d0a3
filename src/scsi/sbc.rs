//! The disk logical unit (SBC-4): `Disk` turns CDBs into `BlockDevice` calls and owns the LU
//! state (`spc::LuState`). This file holds dispatch and the non-I/O commands; the medium
//! access commands are in `io`.
//!
//! Must not know the transport or the volume implementation. Invariants: a command's range is
//! checked against the capacity before the device is touched; the state mutex is never held
//! across an await; COMPARE AND WRITE excludes every other write to the LU while it runs.

mod io;

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::RwLock;

use super::cdb::{self, Command};
use super::sense::{self, Sense};
use super::spc::inquiry::{self, BlockLimits};
use super::spc::{self, CmdResult, LuState, mode, opcodes, truncate};
use super::{BoxFuture, LogicalUnit, Nexus, ScsiRequest, ScsiResponse};
use crate::gateway::block::BlockDevice;

/// A direct-access block device LU over a `BlockDevice`.
pub struct Disk {
    dev: Arc<dyn BlockDevice>,
    state: Mutex<LuState>,
    /// Writes hold it shared; COMPARE AND WRITE holds it exclusively (SBC-4 §5.2 atomicity).
    writes: RwLock<()>,
    limits: BlockLimits,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("name", &self.dev.identity().name)
            .finish()
    }
}

impl Disk {
    pub fn new(dev: Arc<dyn BlockDevice>) -> Self {
        let limits = BlockLimits::new(dev.block_size());
        Self {
            dev,
            state: Mutex::new(LuState::default()),
            writes: RwLock::new(()),
            limits,
        }
    }

    fn state(&self) -> MutexGuard<'_, LuState> {
        // A panic elsewhere cannot leave LuState half-updated in a way worse than refusing
        // service, so recover the guard rather than poisoning the LU forever.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(&self, req: &ScsiRequest) -> CmdResult {
        let nexus = &*req.nexus;
        let opcode = req.cdb.first().copied().unwrap_or(0xff);
        {
            let mut st = self.state();
            st.note_nexus(nexus);
            if !spc::ua_exempt(opcode)
                && let Some(ua) = st.take_ua(nexus)
            {
                return Err(ua.into());
            }
        }
        let cmd = cdb::parse(&req.cdb)?;
        self.state().check_access(nexus, spc::access(&cmd))?;
        self.dispatch(cmd, req, nexus).await
    }

    async fn dispatch(&self, cmd: Command, req: &ScsiRequest, nexus: &Nexus) -> CmdResult {
        use Command::*;
        let data = &req.data_out;
        if let Some(r) = spc::shared(&mut self.state(), &cmd, nexus, data) {
            return r;
        }
        match cmd {
            TestUnitReady | PreventAllow { .. } | StartStopUnit { .. } => Ok(Bytes::new()),
            // Answered by `spc::shared` above.
            RequestSense { .. }
            | Reserve
            | Release
            | ReportLuns { .. }
            | PersistentReserveIn { .. }
            | PersistentReserveOut { .. } => Err(sense::INVALID_OPCODE.into()),
            Inquiry { evpd, page, alloc } => {
                let d = if evpd {
                    inquiry::vpd(page, self.dev.identity(), nexus, &self.limits)?
                } else {
                    inquiry::standard(inquiry::TYPE_DISK, inquiry::DISK_PRODUCT)
                };
                Ok(truncate(d, alloc))
            }
            ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => mode::mode_sense(
                &self.state(),
                ten,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
                (self.dev.num_blocks(), self.dev.block_size()),
            ),
            ModeSelect {
                ten,
                pf,
                sp,
                param_len,
            } => {
                let mut st = self.state();
                let bs = self.dev.block_size();
                if mode::mode_select(&mut st, ten, pf, sp, param_len, data, bs)? {
                    st.queue_ua_others(nexus, sense::MODE_PARAMETERS_CHANGED);
                }
                Ok(Bytes::new())
            }
            ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc,
            } => opcodes::report(
                opcodes::DISK_COMMANDS,
                rctd,
                options,
                opcode,
                service_action,
                alloc,
            ),
            ReadCapacity10 => {
                let last = self.dev.num_blocks().saturating_sub(1);
                let last = u32::try_from(last).unwrap_or(u32::MAX);
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&self.dev.block_size().to_be_bytes());
                Ok(Bytes::from(d))
            }
            ReadCapacity16 { alloc } => {
                let mut d = vec![0u8; 32];
                let last = self.dev.num_blocks().saturating_sub(1);
                d[..8].copy_from_slice(&last.to_be_bytes());
                d[8..12].copy_from_slice(&self.dev.block_size().to_be_bytes());
                d[14] = 0xc0; // LBPME, LBPRZ (SBC-4 §5.20.2)
                Ok(truncate(d, alloc))
            }
            GetLbaStatus { lba, alloc } => self.get_lba_status(lba, alloc).await,
            Read { ext, fua: _ } => self.read(ext).await,
            Write { ext, fua } => self.write(ext, fua, data).await,
            WriteAndVerify { ext, bytchk } => self.write_and_verify(ext, bytchk, data).await,
            Verify { ext, bytchk } => self.verify(ext, bytchk, data).await,
            WriteSame { ext, unmap, ndob } => {
                let count_byte = if req.cdb.first() == Some(&cdb::op::WRITE_SAME_10) {
                    7
                } else {
                    10
                };
                self.write_same(ext, unmap, ndob, data, count_byte).await
            }
            Unmap { param_len } => self.unmap(param_len, data).await,
            SynchronizeCache { ext } => {
                self.check_range(ext.lba, u64::from(ext.blocks))?;
                self.dev.flush().await?;
                Ok(Bytes::new())
            }
            PreFetch { ext } => {
                // We do not warm the cache on request; GOOD says "not all of it is cached".
                self.check_range(ext.lba, u64::from(ext.blocks))?;
                Ok(Bytes::new())
            }
            CompareAndWrite { ext, fua } => self.compare_and_write(ext, fua, data).await,
        }
    }

    /// LBA OUT OF RANGE unless `lba .. lba + blocks` lies within the medium (SBC-4 §4.5).
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.dev.num_blocks() => Ok(()),
            _ => Err(sense::LBA_OUT_OF_RANGE),
        }
    }
}

impl LogicalUnit for Disk {
    fn execute<'a>(&'a self, req: &'a ScsiRequest) -> BoxFuture<'a, ScsiResponse> {
        Box::pin(async move {
            match self.run(req).await {
                Ok(data_in) => ScsiResponse::good(data_in),
                Err(resp) => {
                    tracing::debug!(
                        initiator = %req.nexus.initiator_port,
                        lun = req.lun,
                        opcode = req.cdb.first().copied().unwrap_or(0),
                        status = ?resp.status,
                        "scsi command failed"
                    );
                    resp
                }
            }
        })
    }

    fn reset(&self) {
        self.state().reset();
    }

    fn nexus_lost(&self, nexus: &Nexus) {
        self.state().nexus_lost(nexus);
    }

    fn data_out_length(&self, cdb: &[u8]) -> Option<u64> {
        use Command::*;
        let bs = u64::from(self.dev.block_size());
        let blocks = |n: u32| u64::from(n).checked_mul(bs);
        match cdb::parse(cdb).ok()? {
            Write { ext, .. } | WriteAndVerify { ext, .. } => blocks(ext.blocks),
            Verify { bytchk: 0, .. } => Some(0),
            Verify { ext, bytchk: 1 } => blocks(ext.blocks),
            Verify { .. } => Some(bs),
            WriteSame { ndob: true, .. } => Some(0),
            WriteSame { .. } => Some(bs),
            CompareAndWrite { ext, .. } => blocks(ext.blocks)?.checked_mul(2),
            Unmap { param_len }
            | ModeSelect { param_len, .. }
            | PersistentReserveOut { param_len, .. } => Some(u64::from(param_len)),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::gateway::block::MemDisk;

    pub const BS: usize = 512;
    /// 1 MiB of 512-byte blocks.
    pub const BLOCKS: u64 = 2048;

    pub fn nexus(name: &str) -> Arc<Nexus> {
        Arc::new(Nexus {
            initiator_port: format!("iqn.2026-01.test:{name},i,0x23d000000001"),
            initiator_name: format!("iqn.2026-01.test:{name}"),
            target_port: "iqn.2026-01.io.tidegate:vol,t,0x1".into(),
            relative_port: 1,
        })
    }

    pub fn disk() -> Disk {
        Disk::new(Arc::new(MemDisk::new("vol", BS as u32, BLOCKS)))
    }

    pub async fn run(d: &dyn LogicalUnit, n: &Arc<Nexus>, cdb: &[u8], out: &[u8]) -> ScsiResponse {
        let mut c = cdb.to_vec();
        c.resize(16, 0);
        let req = ScsiRequest {
            lun: 0,
            cdb: Bytes::from(c),
            data_out: Bytes::copy_from_slice(out),
            expected_in: 65536,
            nexus: n.clone(),
        };
        d.execute(&req).await
    }

    /// Runs TEST UNIT READY until no unit attention is left, as libiscsi does after login.
    pub async fn clear_ua(d: &dyn LogicalUnit, n: &Arc<Nexus>) {
        for _ in 0..16 {
            if run(d, n, &[0], &[]).await.status == super::super::Status::Good {
                return;
            }
        }
        panic!("unit attentions never cleared");
    }

    /// (sense key, ASC, ASCQ) of a CHECK CONDITION, or None.
    pub fn sense_of(r: &ScsiResponse) -> Option<(u8, u8, u8)> {
        r.sense.as_ref().map(|s| (s[2] & 0x0f, s[12], s[13]))
    }

    pub fn cdb10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
        let mut c = vec![op, 0];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&blocks.to_be_bytes());
        c.push(0);
        c
    }

    pub fn cdb16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
        let mut c = vec![op, 0];
        c.extend_from_slice(&lba.to_be_bytes());
        c.extend_from_slice(&blocks.to_be_bytes());
        c.extend_from_slice(&[0, 0]);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::testkit::*;
    use super::*;
    use proptest::prelude::*;

    const UA: u8 = 0x06;

    #[tokio::test]
    async fn first_command_gets_power_on_ua_except_inquiry() {
        let d = disk();
        let a = nexus("a");
        let r = run(&d, &a, &[0x12, 0, 0, 0, 36, 0], &[]).await;
        assert_eq!(r.status, Status::Good);
        assert_eq!(r.data_in.len(), 36);
        let r = run(&d, &a, &[0x00], &[]).await;
        assert_eq!(sense_of(&r), Some((UA, 0x29, 0x00)));
        let r = run(&d, &a, &[0x00], &[]).await;
        assert_eq!(r.status, Status::Good);
    }

    #[tokio::test]
    async fn spc_commands_table() {
        let d = disk();
        let a = nexus("a");
        clear_ua(&d, &a).await;
        // (cdb, data-out, expected: Ok(data-in length) or Err((key, asc)))
        type Case = (Vec<u8>, Vec<u8>, Result<usize, (u8, u8)>);
        let cases: Vec<Case> = vec![
            (vec![0x12, 0, 0, 0, 0xff, 0], vec![], Ok(74)),
            (vec![0x12, 1, 0x00, 0, 0xff, 0], vec![], Ok(10)),
            (vec![0x12, 1, 0x80, 0, 0xff, 0], vec![], Ok(4 + 19)),
            (vec![0x12, 1, 0xb0, 0, 0xff, 0], vec![], Ok(64)),
            (vec![0x12, 1, 0xb1, 0, 0xff, 0], vec![], Ok(64)),
            (vec![0x12, 1, 0xb2, 0, 0xff, 0], vec![], Ok(8)),
            (vec![0x12, 1, 0x83, 0, 4, 0], vec![], Ok(4)),
            (vec![0x12, 1, 0xc0, 0, 0xff, 0], vec![], Err((5, 0x24))),
            (vec![0x12, 0, 0x83, 0, 0xff, 0], vec![], Err((5, 0x24))),
            (vec![0x03, 0, 0, 0, 18, 0], vec![], Ok(18)),
            (vec![0x03, 1, 0, 0, 252, 0], vec![], Ok(8)),
            (vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![], Ok(8)),
            (
                vec![0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0],
                vec![],
                Err((5, 0x24)),
            ),
            (cdb16(0x9e, 0, 32).tap(|c| c[1] = 0x10), vec![], Ok(32)),
            (vec![0x1a, 0, 0x3f, 0, 0xff, 0], vec![], Ok(56)),
            (vec![0x1a, 0, 0xff, 0, 0xff, 0], vec![], Err((5, 0x39))),
            (vec![0x1b, 0, 0, 0, 1, 0], vec![], Ok(0)),
            (vec![0x1e, 0, 0, 0, 1, 0], vec![], Ok(0)),
            (
                vec![0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
                vec![],
                Ok(4 + 8 * opcodes::DISK_COMMANDS.len()),
            ),
            (
                vec![0x5e, 5, 0, 0, 0, 0, 0, 0, 0xff, 0],
                vec![],
                Err((5, 0x24)),
            ),
            (vec![0x04, 0, 0, 0, 0, 0], vec![], Err((5, 0x20))),
            (
                vec![0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0],
                vec![],
                Err((5, 0x24)),
            ),
        ];
        for (cdb, out, expect) in cases {
            let r = run(&d, &a, &cdb, &out).await;
            match expect {
                Ok(len) => {
                    assert_eq!(r.status, Status::Good, "{cdb:02x?}: {:?}", sense_of(&r));
                    assert_eq!(r.data_in.len(), len, "{cdb:02x?}");
                }
                Err((key, asc)) => {
                    let s = sense_of(&r).expect("sense");
                    assert_eq!((s.0, s.1), (key, asc), "{cdb:02x?}");
                }
            }
        }
    }

    trait Tap: Sized {
        fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
    }
    impl Tap for Vec<u8> {
        fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }

    #[tokio::test]
    async fn vpd_83_has_naa_and_target_port() {
        let d = disk();
        let a = nexus("a");
        let r = run(&d, &a, &[0x12, 1, 0x83, 1, 0, 0], &[]).await;
        let v = &r.data_in;
        assert_eq!(v[4..8], [0x01, 0x03, 0x00, 16]);
        assert_eq!(v[8] >> 4, 6, "NAA 6");
        let len = usize::from(u16::from_be_bytes([v[2], v[3]]));
        assert_eq!(len + 4, v.len());
    }

    fn pr_out(sa: u8, ty: u8, key: u64, sa_key: u64) -> (Vec<u8>, Vec<u8>) {
        let cdb = vec![0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        (cdb, p)
    }

    async fn pr(d: &Disk, n: &Arc<Nexus>, sa: u8, ty: u8, key: u64, sa_key: u64) -> Status {
        let (c, p) = pr_out(sa, ty, key, sa_key);
        run(d, n, &c, &p).await.status
    }

    async fn can(d: &Disk, n: &Arc<Nexus>, write: bool) -> bool {
        let op = if write { 0x2a } else { 0x28 };
        let data = if write { vec![0u8; BS] } else { vec![] };
        let r = run(d, n, &cdb10(op, 0, 1), &data).await;
        match r.status {
            Status::Good => true,
            Status::ReservationConflict => false,
            s => panic!("unexpected {s:?} {:?}", sense_of(&r)),
        }
    }

    #[tokio::test]
    async fn persistent_reservation_access_per_type() {
        // (type, non-registrant read, write, registrant read, write)
        let table = [
            (1u8, true, false, true, false),
            (3, false, false, false, false),
            (5, true, false, true, true),
            (6, false, false, true, true),
            (7, true, false, true, true),
            (8, false, false, true, true),
        ];
        for (ty, nr, nw, rr, rw) in table {
            let d = disk();
            let (a, b) = (nexus("a"), nexus("b"));
            clear_ua(&d, &a).await;
            clear_ua(&d, &b).await;
            assert_eq!(pr(&d, &a, 6, 0, 0, 0xa).await, Status::Good);
            assert_eq!(pr(&d, &a, 1, ty, 0xa, 0).await, Status::Good, "type {ty}");
            assert!(can(&d, &a, false).await && can(&d, &a, true).await);
            assert_eq!(
                (can(&d, &b, false).await, can(&d, &b, true).await),
                (nr, nw),
                "{ty}"
            );
            assert_eq!(pr(&d, &b, 0, 0, 0, 0xb).await, Status::Good);
            assert_eq!(
                (can(&d, &b, false).await, can(&d, &b, true).await),
                (rr, rw),
                "{ty}"
            );
            // READ RESERVATION reports the type, and key 0 for all-registrants types.
            let r = run(&d, &b, &[0x5e, 1, 0, 0, 0, 0, 0, 0, 0xff, 0], &[]).await;
            assert_eq!(r.data_in.len(), 24);
            assert_eq!(r.data_in[21], ty);
            let key = u64::from_be_bytes(r.data_in[8..16].try_into().expect("8"));
            assert_eq!(key, if ty >= 7 { 0 } else { 0xa });
            // A wrong-type release is refused; the right one frees the LU.
            let other = if ty == 1 { 3 } else { 1 };
            let r = run(
                &d,
                &a,
                &pr_out(2, other, 0xa, 0).0,
                &pr_out(2, other, 0xa, 0).1,
            )
            .await;
            assert_eq!(sense_of(&r), Some((5, 0x26, 0x04)));
            assert_eq!(pr(&d, &a, 2, ty, 0xa, 0).await, Status::Good);
            // Registrants hear of the release of a registrants-only or all-registrants type.
            let r = run(&d, &b, &[0], &[]).await;
            let expect_ua = (ty >= 5).then_some((6, 0x2a, 0x04));
            assert_eq!(sense_of(&r), expect_ua, "{ty}");
            assert!(can(&d, &b, true).await);
        }
    }

    #[tokio::test]
    async fn preempt_removes_registration_and_raises_ua() {
        let d = disk();
        let (a, b) = (nexus("a"), nexus("b"));
        clear_ua(&d, &a).await;
        clear_ua(&d, &b).await;
        assert_eq!(pr(&d, &a, 0, 0, 0, 0xa).await, Status::Good);
        assert_eq!(pr(&d, &b, 0, 0, 0, 0xb).await, Status::Good);
        // Wrong key: conflict. Unregistered reserve: conflict.
        assert_eq!(
            pr(&d, &a, 0, 0, 0x99, 0x1).await,
            Status::ReservationConflict
        );
        let c = nexus("c");
        clear_ua(&d, &c).await;
        assert_eq!(pr(&d, &c, 1, 1, 0xc, 0).await, Status::ReservationConflict);
        assert_eq!(pr(&d, &b, 1, 1, 0xb, 0).await, Status::Good);
        assert_eq!(pr(&d, &a, 1, 1, 0xa, 0).await, Status::ReservationConflict);
        let keys = run(&d, &a, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 0xff, 0], &[]).await;
        assert_eq!(&keys.data_in[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
        // a preempts b's reservation and registration.
        assert_eq!(pr(&d, &a, 4, 3, 0xa, 0xb).await, Status::Good);
        let r = run(&d, &b, &[0x00], &[]).await;
        assert_eq!(sense_of(&r), Some((6, 0x2a, 0x05)));
        assert!(!can(&d, &b, false).await);
        let keys = run(&d, &a, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 0xff, 0], &[]).await;
        assert_eq!(&keys.data_in[..8], &[0, 0, 0, 3, 0, 0, 0, 8]);
        // Full status shows a as holder with its TransportID.
        let fs = run(&d, &a, &[0x5e, 3, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]).await;
        assert_eq!(fs.data_in[8 + 12], 1);
        assert_eq!(fs.data_in[8 + 24], 0x45);
        // CLEAR drops everything; RESERVE(6) works again once PR is unused.
        assert_eq!(pr(&d, &a, 3, 0, 0xa, 0).await, Status::Good);
        assert!(can(&d, &b, true).await);
        let r = run(&d, &b, &[0x16, 0, 0, 0, 0, 0], &[]).await;
        assert_eq!(r.status, Status::Good);
    }

    #[tokio::test]
    async fn spc2_reserve_conflicts_with_other_nexus() {
        let d = disk();
        let (a, b) = (nexus("a"), nexus("b"));
        clear_ua(&d, &a).await;
        clear_ua(&d, &b).await;
        assert_eq!(
            run(&d, &a, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
            Status::Good
        );
        let ms = [0x1a, 0, 0x3f, 0, 0xff, 0];
        assert_eq!(run(&d, &a, &ms, &[]).await.status, Status::Good);
        assert_eq!(
            run(&d, &b, &ms, &[]).await.status,
            Status::ReservationConflict
        );
        assert_eq!(
            run(&d, &b, &[0x17, 0, 0, 0, 0, 0], &[]).await.status,
            Status::Good
        );
        assert_eq!(
            run(&d, &b, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
            Status::ReservationConflict
        );
        d.nexus_lost(&a);
        assert_eq!(
            run(&d, &b, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
            Status::Good
        );
        // PR OUT while an SPC-2 reservation is held: conflict.
        clear_ua(&d, &a).await;
        assert_eq!(pr(&d, &a, 6, 0, 0, 1).await, Status::ReservationConflict);
    }

    #[tokio::test]
    async fn mode_select_wce_notifies_other_nexus() {
        let d = disk();
        let (a, b) = (nexus("a"), nexus("b"));
        clear_ua(&d, &a).await;
        clear_ua(&d, &b).await;
        let cur = run(&d, &a, &[0x1a, 0x08, 0x08, 0, 0xff, 0], &[])
            .await
            .data_in;
        let mut list = cur.to_vec();
        list[0] = 0;
        list[6] &= !0x04;
        let n = u8::try_from(list.len()).expect("len");
        let r = run(&d, &a, &[0x15, 0x10, 0, 0, n, 0], &list).await;
        assert_eq!(r.status, Status::Good);
        assert_eq!(
            sense_of(&run(&d, &b, &[0], &[]).await),
            Some((6, 0x2a, 0x01))
        );
        let now = run(&d, &a, &[0x1a, 0x08, 0x08, 0, 0xff, 0], &[])
            .await
            .data_in;
        assert_eq!(now[6] & 0x04, 0);
        // Writes still work (now forced unit access).
        assert!(can(&d, &a, true).await);
    }

    #[test]
    fn data_out_length_per_command() {
        let d = disk();
        let cases: [(Vec<u8>, Option<u64>); 7] = [
            (cdb10(0x2a, 0, 3), Some(3 * 512)),
            (cdb10(0x28, 0, 3), Some(0)),
            (cdb16(0x89, 0, 0).tap(|c| c[13] = 2), Some(2048)),
            (cdb10(0x41, 0, 9), Some(512)),
            (vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], Some(24)),
            (cdb10(0x2f, 0, 4), Some(0)),
            (vec![0xff; 16], None),
        ];
        for (mut c, want) in cases {
            c.resize(16, 0);
            assert_eq!(d.data_out_length(&c), want, "{c:02x?}");
        }
    }

    #[tokio::test]
    async fn reset_raises_ua_again() {
        let d = disk();
        let a = nexus("a");
        clear_ua(&d, &a).await;
        d.reset();
        assert_eq!(sense_of(&run(&d, &a, &[0], &[]).await), Some((6, 0x29, 0)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_cdbs_never_panic(
            cdb in proptest::collection::vec(any::<u8>(), 0..20),
            op in prop::sample::select(
                opcodes::DISK_COMMANDS.iter().map(|c| c.0).collect::<Vec<_>>()),
            use_op in any::<bool>(),
            out in proptest::collection::vec(any::<u8>(), 0..1100),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
            let d = disk();
            let a = nexus("a");
            let mut cdb = cdb;
            if use_op && !cdb.is_empty() {
                cdb[0] = op;
            }
            rt.block_on(async {
                clear_ua(&d, &a).await;
                let r = run(&d, &a, &cdb, &out).await;
                if r.status == Status::CheckCondition {
                    prop_assert!(r.sense.is_some());
                }
                Ok(())
            })?;
        }
    }
}
