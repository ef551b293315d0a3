//! Persistent reservations (SPC-4 §5.13): registrations per I_T nexus, the one LU-scope
//! reservation, PERSISTENT RESERVE IN (§6.15) and OUT (§6.16).
//!
//! State lives in memory only: APTPL is accepted and reported, but nothing survives a restart
//! of the gateway (the catalog has no table for it yet). ALL_TG_PT and SPEC_I_PT are not
//! supported (REPORT CAPABILITIES says so), nor is REGISTER AND MOVE. Invariant: the
//! generation grows on every registration change and never otherwise (§6.15.2).

use bytes::Bytes;

use super::super::sense::{self, Sense};
use super::super::{Nexus, ScsiResponse};
use super::{CmdResult, LuState, put_len, truncate};

/// Reservation types (SPC-4 §6.16.3 table 169).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::WriteExclusive,
            3 => Self::ExclusiveAccess,
            5 => Self::WriteExclusiveRegistrantsOnly,
            6 => Self::ExclusiveAccessRegistrantsOnly,
            7 => Self::WriteExclusiveAllRegistrants,
            8 => Self::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// All-registrants types have every registrant as a holder (§5.13.9).
    fn all_registrants(self) -> bool {
        matches!(
            self,
            Self::WriteExclusiveAllRegistrants | Self::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only and all-registrants types give every registrant access.
    fn registrants_have_access(self) -> bool {
        !matches!(self, Self::WriteExclusive | Self::ExclusiveAccess)
    }

    fn exclusive_access(self) -> bool {
        matches!(
            self,
            Self::ExclusiveAccess
                | Self::ExclusiveAccessRegistrantsOnly
                | Self::ExclusiveAccessAllRegistrants
        )
    }
}

#[derive(Debug, Clone)]
struct Registration {
    nexus: Nexus,
    key: u64,
}

#[derive(Debug, Clone)]
struct Reservation {
    /// The holder for single-holder types; for all-registrants types, whoever reserved.
    holder: Nexus,
    ty: PrType,
}

#[derive(Debug, Default)]
pub struct PrState {
    generation: u32,
    regs: Vec<Registration>,
    res: Option<Reservation>,
    /// Accepted and reported (PTPL_A) but, for now, not persisted: see the module header.
    aptpl: bool,
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2).
mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
}

/// Length of the basic PERSISTENT RESERVE OUT parameter list (§6.16.3).
const PR_OUT_PARAM_LEN: u32 = 24;

impl PrState {
    pub fn in_use(&self) -> bool {
        !self.regs.is_empty() || self.res.is_some()
    }

    fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.regs.iter().find(|r| &r.nexus == nexus).map(|r| r.key)
    }

    fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.res {
            None => false,
            Some(r) if r.ty.all_registrants() => self.key_of(nexus).is_some(),
            Some(r) => &r.holder == nexus,
        }
    }

    /// Whether `nexus` may run a reading (`write == false`) or writing command now.
    pub fn allows(&self, nexus: &Nexus, write: bool) -> bool {
        let Some(res) = &self.res else {
            return true;
        };
        if self.is_holder(nexus) {
            return true;
        }
        if res.ty.registrants_have_access() && self.key_of(nexus).is_some() {
            return true;
        }
        !write && !res.ty.exclusive_access()
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Every registered nexus but `nexus`: who gets the unit attention when `nexus` changes the
    /// reservation.
    fn other_registrants(&self, nexus: &Nexus) -> Vec<Nexus> {
        self.regs
            .iter()
            .filter(|r| &r.nexus != nexus)
            .map(|r| r.nexus.clone())
            .collect()
    }
}

/// PERSISTENT RESERVE IN (SPC-4 §6.15).
pub fn pr_in(st: &LuState, service_action: u8, alloc: u32) -> CmdResult {
    let pr = &st.pr;
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&pr.generation.to_be_bytes());
    match service_action {
        // READ KEYS
        0 => {
            out.extend_from_slice(&[0; 4]);
            for r in &pr.regs {
                out.extend_from_slice(&r.key.to_be_bytes());
            }
            let n = out.len() - 8;
            put_len::<4>(&mut out, 4, n);
        }
        // READ RESERVATION
        1 => match &pr.res {
            None => out.extend_from_slice(&[0; 4]),
            Some(r) => {
                out.extend_from_slice(&16u32.to_be_bytes());
                // All-registrants reservations report key 0 (§6.15.3.3).
                let key = if r.ty.all_registrants() {
                    0
                } else {
                    pr.key_of(&r.holder).unwrap_or(0)
                };
                out.extend_from_slice(&key.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0, 0, r.ty as u8, 0, 0]);
            }
        },
        // REPORT CAPABILITIES (§6.15.4): its own header, not the generation.
        2 => {
            out.clear();
            let ptpl_a = u8::from(pr.aptpl);
            // PTPL_C=1; TMV=1 with ALLOW COMMANDS 0; type mask of all six types.
            out.extend_from_slice(&[0, 8, 0x01, 0x80 | ptpl_a, 0xea, 0x01, 0, 0]);
        }
        // READ FULL STATUS (§6.15.5)
        3 => {
            out.extend_from_slice(&[0; 4]);
            for r in &pr.regs {
                let holder = pr.is_holder(&r.nexus);
                let mut d = [0u8; 24];
                d[..8].copy_from_slice(&r.key.to_be_bytes());
                if holder {
                    d[12] = 0x01; // R_HOLDER
                    d[13] = pr.res.as_ref().map_or(0, |x| x.ty as u8);
                }
                d[18..20].copy_from_slice(&r.nexus.relative_port.to_be_bytes());
                let tid = transport_id(&r.nexus);
                put_len::<4>(&mut d, 20, tid.len());
                out.extend_from_slice(&d);
                out.extend_from_slice(&tid);
            }
            let n = out.len() - 8;
            put_len::<4>(&mut out, 4, n);
        }
        _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
    }
    Ok(truncate(out, alloc))
}

/// iSCSI TransportID, initiator port format (SPC-4 §7.6.4.6): protocol 5, format 01b, the
/// `name,i,0x<ISID>` string NUL-terminated and padded to a multiple of 4.
fn transport_id(nexus: &Nexus) -> Vec<u8> {
    let mut name = nexus.initiator_port.as_bytes().to_vec();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    let mut t = vec![0x45, 0, 0, 0];
    put_len::<2>(&mut t, 2, name.len());
    t.extend_from_slice(&name);
    t
}

/// PERSISTENT RESERVE OUT (SPC-4 §6.16).
pub fn pr_out(
    st: &mut LuState,
    nexus: &Nexus,
    service_action: u8,
    scope: u8,
    pr_type: u8,
    param_len: u32,
    data: &[u8],
) -> CmdResult {
    if service_action > sa::REGISTER_AND_IGNORE {
        // REGISTER AND MOVE (7) is not supported.
        return Err(Sense::invalid_cdb_field(1, Some(4)).into());
    }
    if param_len != PR_OUT_PARAM_LEN {
        return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
    }
    let Some(p) = data.get(..24) else {
        return Err(sense::INVALID_FIELD_IN_INFORMATION_UNIT.into());
    };
    let key = u64::from_be_bytes(p[0..8].try_into().unwrap_or_default());
    let sa_key = u64::from_be_bytes(p[8..16].try_into().unwrap_or_default());
    let flags = p[20];
    if flags & 0x08 != 0 {
        return Err(Sense::invalid_param_field(20, Some(3)).into()); // SPEC_I_PT
    }
    if flags & 0x04 != 0 {
        return Err(Sense::invalid_param_field(20, Some(2)).into()); // ALL_TG_PT
    }
    let aptpl = flags & 0x01 != 0;
    let current = st.pr.key_of(nexus);
    match service_action {
        sa::REGISTER | sa::REGISTER_AND_IGNORE => {
            if service_action == sa::REGISTER && current.unwrap_or(0) != key {
                return Err(ScsiResponse::conflict());
            }
            register(st, nexus, current, sa_key);
            st.pr.aptpl = aptpl;
            Ok(Bytes::new())
        }
        _ => {
            // Every other action needs a registration with the matching key (§5.13.7).
            if current != Some(key) {
                return Err(ScsiResponse::conflict());
            }
            let needs_type = matches!(
                service_action,
                sa::RESERVE | sa::RELEASE | sa::PREEMPT | sa::PREEMPT_AND_ABORT
            );
            let ty = if needs_type {
                if scope != 0 {
                    return Err(Sense::invalid_cdb_field(2, Some(7)).into());
                }
                match PrType::from_u8(pr_type) {
                    Some(t) => Some(t),
                    None => return Err(Sense::invalid_cdb_field(2, Some(3)).into()),
                }
            } else {
                None
            };
            match (service_action, ty) {
                (sa::RESERVE, Some(ty)) => reserve(st, nexus, ty),
                (sa::RELEASE, Some(ty)) => release(st, nexus, ty),
                (sa::CLEAR, _) => {
                    let others = st.pr.other_registrants(nexus);
                    st.pr.regs.clear();
                    st.pr.res = None;
                    st.pr.bump();
                    st.queue_ua_all(&others, sense::RESERVATIONS_PREEMPTED);
                    Ok(Bytes::new())
                }
                // PREEMPT AND ABORT would also abort the preempted nexuses' tasks; commands
                // here complete one at a time per LU call, so there is nothing queued to abort.
                (_, Some(ty)) => preempt(st, nexus, sa_key, ty),
                _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
            }
        }
    }
}

fn register(st: &mut LuState, nexus: &Nexus, current: Option<u64>, sa_key: u64) {
    match (current, sa_key) {
        (None, 0) => {}
        (None, k) => {
            st.pr.regs.push(Registration {
                nexus: nexus.clone(),
                key: k,
            });
            st.pr.bump();
        }
        (Some(_), 0) => {
            let was_holder = st.pr.is_holder(nexus);
            st.pr.regs.retain(|r| &r.nexus != nexus);
            st.pr.bump();
            if let Some(res) = st.pr.res.clone() {
                let release = if res.ty.all_registrants() {
                    st.pr.regs.is_empty()
                } else {
                    was_holder
                };
                if release {
                    st.pr.res = None;
                    // §5.13.11.2.3: registrants-only holders leaving tell the others.
                    if res.ty.registrants_have_access() {
                        let others: Vec<Nexus> =
                            st.pr.regs.iter().map(|r| r.nexus.clone()).collect();
                        st.queue_ua_all(&others, sense::RESERVATIONS_RELEASED);
                    }
                }
            }
        }
        (Some(_), k) => {
            for r in st.pr.regs.iter_mut().filter(|r| &r.nexus == nexus) {
                r.key = k;
            }
            st.pr.bump();
        }
    }
}

fn reserve(st: &mut LuState, nexus: &Nexus, ty: PrType) -> CmdResult {
    match &st.pr.res {
        None => {
            st.pr.res = Some(Reservation {
                holder: nexus.clone(),
                ty,
            });
            Ok(Bytes::new())
        }
        Some(r) if st.pr.is_holder(nexus) && r.ty == ty => Ok(Bytes::new()),
        Some(_) => Err(ScsiResponse::conflict()),
    }
}

fn release(st: &mut LuState, nexus: &Nexus, ty: PrType) -> CmdResult {
    let Some(res) = st.pr.res.clone() else {
        return Ok(Bytes::new());
    };
    if !st.pr.is_holder(nexus) {
        return Ok(Bytes::new()); // §5.13.10.2: not the holder, no effect
    }
    if res.ty != ty {
        return Err(sense::INVALID_RELEASE_OF_PR.into());
    }
    st.pr.res = None;
    if res.ty.registrants_have_access() {
        let others = st.pr.other_registrants(nexus);
        st.queue_ua_all(&others, sense::RESERVATIONS_RELEASED);
    }
    Ok(Bytes::new())
}

/// PREEMPT (§5.13.11.4): removes registrations by key and may take over the reservation.
fn preempt(st: &mut LuState, nexus: &Nexus, sa_key: u64, ty: PrType) -> CmdResult {
    let res = st.pr.res.clone();
    let holder_key = res
        .as_ref()
        .filter(|r| !r.ty.all_registrants())
        .and_then(|r| st.pr.key_of(&r.holder));
    let take_over = match &res {
        Some(r) if r.ty.all_registrants() => sa_key == 0,
        Some(_) => Some(sa_key) == holder_key,
        None => false,
    };
    if sa_key == 0 && !take_over {
        return Err(Sense::invalid_param_field(8, None).into());
    }
    let removed: Vec<Nexus> = st
        .pr
        .regs
        .iter()
        .filter(|r| &r.nexus != nexus && (r.key == sa_key || (take_over && sa_key == 0)))
        .map(|r| r.nexus.clone())
        .collect();
    if removed.is_empty() && !take_over {
        return Err(ScsiResponse::conflict());
    }
    st.pr.regs.retain(|r| !removed.contains(&r.nexus));
    if !removed.is_empty() {
        st.pr.bump();
    }
    st.queue_ua_all(&removed, sense::REGISTRATIONS_PREEMPTED);
    if take_over {
        let type_changed = res.as_ref().is_some_and(|r| r.ty != ty);
        st.pr.res = Some(Reservation {
            holder: nexus.clone(),
            ty,
        });
        if type_changed {
            let others = st.pr.other_registrants(nexus);
            st.queue_ua_all(&others, sense::RESERVATIONS_RELEASED);
        }
    }
    Ok(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(i: &str) -> Nexus {
        Nexus {
            initiator_port: format!("iqn.test:{i},i,0x1"),
            initiator_name: format!("iqn.test:{i}"),
            target_port: "iqn.test:t,t,0x1".into(),
            relative_port: 1,
        }
    }

    fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        p
    }

    /// Runs PR OUT and condenses the outcome: Ok, "conflict", or the (ASC, ASCQ).
    fn out(
        st: &mut LuState,
        n: &Nexus,
        sa: u8,
        ty: u8,
        key: u64,
        sa_key: u64,
    ) -> Result<(), (u8, u8)> {
        let p = params(key, sa_key, 0);
        match pr_out(st, n, sa, 0, ty, 24, &p) {
            Ok(_) => Ok(()),
            Err(r) => Err(r.sense.map_or((0x18, 0), |s| (s[12], s[13]))),
        }
    }

    type Outcome = Result<(), (u8, u8)>;
    const CONFLICT: Outcome = Err((0x18, 0));

    #[test]
    fn register_sequence_and_generation() {
        let mut st = LuState::default();
        let (a, b) = (nexus("a"), nexus("b"));
        // (nexus, service action, type, key, sa key, expected, generation after)
        let steps: [(&Nexus, u8, u8, u64, u64, Outcome, u32); 12] = [
            (&a, sa::REGISTER, 0, 0, 0, Ok(()), 0),
            (&a, sa::REGISTER, 0, 5, 1, CONFLICT, 0),
            (&a, sa::REGISTER, 0, 0, 1, Ok(()), 1),
            (&a, sa::REGISTER, 0, 1, 2, Ok(()), 2),
            (&a, sa::REGISTER, 0, 1, 3, CONFLICT, 2),
            (&b, sa::REGISTER_AND_IGNORE, 0, 77, 9, Ok(()), 3),
            (&b, sa::RESERVE, 2, 9, 0, Err((0x24, 0)), 3),
            (&b, sa::RESERVE, 1, 8, 0, CONFLICT, 3),
            (&b, sa::RESERVE, 1, 9, 0, Ok(()), 3),
            (&a, sa::RESERVE, 1, 2, 0, CONFLICT, 3),
            // Unregistering the holder of a WE reservation releases it.
            (&b, sa::REGISTER, 0, 9, 0, Ok(()), 4),
            (&a, sa::RESERVE, 3, 2, 0, Ok(()), 4),
        ];
        for (i, (n, sa, ty, key, sa_key, want, generation)) in steps.into_iter().enumerate() {
            assert_eq!(out(&mut st, n, sa, ty, key, sa_key), want, "step {i}");
            assert_eq!(st.pr.generation, generation, "step {i}");
        }
    }

    #[test]
    fn parameter_list_errors() {
        let mut st = LuState::default();
        let a = nexus("a");
        let p = params(0, 1, 0);
        // (service action, param len, data, flags, asc)
        let cases: [(u8, u32, &[u8], u8, u8); 5] = [
            (sa::REGISTER, 23, &p, 0, 0x1a),
            (sa::REGISTER, 24, &p[..10], 0, 0x0e),
            (sa::REGISTER, 24, &p, 0x08, 0x26),
            (sa::REGISTER, 24, &p, 0x04, 0x26),
            (7, 24, &p, 0, 0x24),
        ];
        for (sa, len, data, flags, asc) in cases {
            let mut d = data.to_vec();
            if d.len() > 20 {
                d[20] = flags;
            }
            let r = pr_out(&mut st, &a, sa, 0, 0, len, &d).expect_err("must fail");
            assert_eq!(
                r.sense.expect("sense")[12],
                asc,
                "sa {sa} len {len} flags {flags}"
            );
        }
        assert!(!st.pr.in_use());
    }

    #[test]
    fn report_capabilities_and_aptpl() {
        let mut st = LuState::default();
        let a = nexus("a");
        assert!(pr_out(&mut st, &a, sa::REGISTER, 0, 0, 24, &params(0, 1, 0x01)).is_ok());
        let caps = pr_in(&st, 2, 255).expect("caps");
        assert_eq!(caps.as_ref(), &[0, 8, 0x01, 0x81, 0xea, 0x01, 0, 0]);
        let r = pr_in(&st, 9, 255).expect_err("bad sa");
        assert_eq!(r.sense.expect("sense")[12], 0x24);
        // READ KEYS truncates to the allocation length but keeps the true length field.
        let keys = pr_in(&st, 0, 8).expect("keys");
        assert_eq!(keys.as_ref(), &[0, 0, 0, 1, 0, 0, 0, 8]);
    }

    #[test]
    fn preempt_all_registrants_with_zero_key_takes_over() {
        let mut st = LuState::default();
        let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
        for (n, k) in [(&a, 1), (&b, 2), (&c, 3)] {
            assert_eq!(out(&mut st, n, sa::REGISTER, 0, 0, k), Ok(()));
        }
        assert_eq!(out(&mut st, &b, sa::RESERVE, 7, 2, 0), Ok(()));
        // Without a reservation-holder match a zero key is invalid; here it takes over.
        assert_eq!(out(&mut st, &a, sa::PREEMPT, 1, 1, 0), Ok(()));
        assert_eq!(st.pr.regs.len(), 1);
        assert!(st.pr.is_holder(&a));
        assert_eq!(st.take_ua(&b), Some(sense::REGISTRATIONS_PREEMPTED));
        assert_eq!(st.take_ua(&c), Some(sense::REGISTRATIONS_PREEMPTED));
        // Preempting a key nobody holds is a conflict; a zero key with no AR reservation is
        // an invalid parameter.
        assert_eq!(out(&mut st, &a, sa::PREEMPT, 1, 1, 42), CONFLICT);
        assert_eq!(out(&mut st, &a, sa::PREEMPT, 1, 1, 0), Err((0x26, 0)));
    }
}
