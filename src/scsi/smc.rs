//! The media changer logical unit (SMC-3): `Changer` answers READ ELEMENT STATUS from the
//! library's elements, moves tapes with MOVE MEDIUM, and reports the element layout in MODE
//! SENSE pages 1Dh–1Fh; the primary commands reuse `spc`.
//!
//! Presents itself as an STK L700 (docs/tapes.md). Must not know where tapes are stored: it
//! only calls `gateway::library`. Invariants: READ ELEMENT STATUS lists each element once, in
//! address order, so a barcode appears once, in the element that holds it; a refused move
//! changes nothing.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::cdb::Command;
use super::sense::{self, Sense};
use super::spc::inquiry::{self, Product};
use super::spc::{self, Access, CmdResult, LuState, mode, put_len, truncate};
use super::{BoxFuture, LogicalUnit, Nexus, ScsiRequest, ScsiResponse};
use crate::gateway::block::DeviceIdentity;
use crate::gateway::library::{Element, ElementStatus, Library, MoveError};

/// Peripheral device type of a medium changer (SPC-4 §6.6.2).
pub const TYPE_CHANGER: u8 = 0x08;

pub const CHANGER: Product<'static> = Product {
    peripheral: TYPE_CHANGER,
    removable: true,
    vendor: "STK",
    product: "L700",
    revision: "TDG1",
    // SMC-3 (SPC-4 §6.6.2 table 150).
    command_set: 0x0480,
};

mod op {
    pub const INITIALIZE_ELEMENT_STATUS: u8 = 0x07;
    pub const POSITION_TO_ELEMENT: u8 = 0x2b;
    pub const INITIALIZE_ELEMENT_STATUS_WITH_RANGE: u8 = 0x37;
    pub const MOVE_MEDIUM: u8 = 0xa5;
    pub const READ_ELEMENT_STATUS: u8 = 0xb8;
}

/// Element type codes (SMC-3 READ ELEMENT STATUS).
const ALL_TYPES: u8 = 0;
const TRANSPORT: u8 = 1;
const STORAGE: u8 = 2;
const IMPORT_EXPORT: u8 = 3;
const DATA_TRANSFER: u8 = 4;

const ELEMENT_ADDRESS_ASSIGNMENT: u8 = 0x1d;
const TRANSPORT_GEOMETRY: u8 = 0x1e;
const DEVICE_CAPABILITIES: u8 = 0x1f;
const ALL_PAGES: u8 = 0x3f;

/// A volume tag: 32 bytes of identifier, 2 reserved, 2 of sequence number (SMC-3).
const VOLUME_TAG_LEN: usize = 36;
/// DVCID identifier of a drive: T10 vendor id form, vendor (8) + product (16) + serial (12).
const DEVICE_ID_LEN: usize = 36;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangerCommand {
    InitializeElementStatus {
        range: Option<(u16, u16)>,
    },
    PositionToElement {
        transport: u16,
        destination: u16,
    },
    MoveMedium {
        transport: u16,
        source: u16,
        destination: u16,
    },
    ReadElementStatus {
        voltag: bool,
        element_type: u8,
        start: u16,
        count: u16,
        dvcid: bool,
        alloc: u32,
    },
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Parses a changer command; `Ok(None)` for the primary commands.
fn parse(raw: &[u8]) -> Result<Option<ChangerCommand>, Sense> {
    use ChangerCommand::*;
    let Some(&opcode) = raw.first() else {
        return Err(sense::INVALID_OPCODE);
    };
    let len = match opcode {
        op::INITIALIZE_ELEMENT_STATUS => 6,
        op::POSITION_TO_ELEMENT | op::INITIALIZE_ELEMENT_STATUS_WITH_RANGE => 10,
        op::MOVE_MEDIUM | op::READ_ELEMENT_STATUS => 12,
        _ => return Ok(None),
    };
    let Some(c) = raw.get(..len) else {
        return Err(Sense::invalid_cdb_field(0, None));
    };
    if c[len - 1] & 0x05 != 0 {
        return Err(Sense::invalid_cdb_field(
            u16::try_from(len - 1).unwrap_or(0),
            None,
        ));
    }
    Ok(Some(match opcode {
        op::INITIALIZE_ELEMENT_STATUS => InitializeElementStatus { range: None },
        op::INITIALIZE_ELEMENT_STATUS_WITH_RANGE => InitializeElementStatus {
            range: (c[1] & 0x01 != 0).then(|| (be16(&c[2..4]), be16(&c[6..8]))),
        },
        op::POSITION_TO_ELEMENT => PositionToElement {
            transport: be16(&c[2..4]),
            destination: be16(&c[4..6]),
        },
        op::MOVE_MEDIUM => {
            // INVERT: our media have one side.
            if c[10] & 0x01 != 0 {
                return Err(Sense::invalid_cdb_field(10, Some(0)));
            }
            MoveMedium {
                transport: be16(&c[2..4]),
                source: be16(&c[4..6]),
                destination: be16(&c[6..8]),
            }
        }
        _ => {
            let element_type = c[1] & 0x0f;
            if element_type > DATA_TRANSFER {
                return Err(Sense::invalid_cdb_field(1, Some(3)));
            }
            ReadElementStatus {
                voltag: c[1] & 0x10 != 0,
                element_type,
                start: be16(&c[2..4]),
                count: be16(&c[4..6]),
                dvcid: c[6] & 0x01 != 0,
                alloc: u32::from_be_bytes([0, c[7], c[8], c[9]]),
            }
        }
    }))
}

fn type_code(e: Element) -> u8 {
    match e {
        Element::Transport => TRANSPORT,
        Element::Slot(_) => STORAGE,
        Element::Mail(_) => IMPORT_EXPORT,
        Element::Drive(_) => DATA_TRANSFER,
    }
}

pub struct Changer {
    library: Arc<Library>,
    identity: DeviceIdentity,
    state: Mutex<LuState>,
    /// The LUN of each drive, for the data transfer element descriptors.
    drive_luns: Vec<u64>,
}

impl std::fmt::Debug for Changer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changer")
            .field("serial", &self.identity.serial)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn move_error(e: MoveError) -> ScsiResponse {
    match e {
        MoveError::InvalidElement(_) => sense::INVALID_ELEMENT_ADDRESS.into(),
        MoveError::SourceEmpty(_) => sense::MEDIUM_SOURCE_EMPTY.into(),
        MoveError::DestinationFull(_) => sense::MEDIUM_DESTINATION_FULL.into(),
        MoveError::RemovalPrevented(_) => sense::MEDIUM_REMOVAL_PREVENTED.into(),
        MoveError::Gateway(g) => g.into(),
    }
}

impl Changer {
    pub fn new(library: Arc<Library>, drive_luns: Vec<u64>) -> Self {
        let serial = library.serial().to_owned();
        let identity = DeviceIdentity {
            name: "changer".into(),
            uuid: super::ssc::identifier(&serial, 0x08),
            serial,
        };
        Self {
            library,
            identity,
            state: Mutex::new(LuState::default()),
            drive_luns,
        }
    }

    async fn run(&self, req: &ScsiRequest) -> CmdResult {
        let nexus = &*req.nexus;
        let opcode = req.cdb.first().copied().unwrap_or(0xff);
        {
            let mut st = lock(&self.state);
            st.note_nexus(nexus);
            if !spc::ua_exempt(opcode)
                && let Some(ua) = st.take_ua(nexus)
            {
                return Err(ua.into());
            }
        }
        if let Some(cmd) = parse(&req.cdb)? {
            let access = match cmd {
                ChangerCommand::ReadElementStatus { .. } => Access::Read,
                _ => Access::Write,
            };
            lock(&self.state).check_access(nexus, access)?;
            return self.changer(cmd).await;
        }
        let cmd = super::cdb::parse(&req.cdb)?;
        lock(&self.state).check_access(nexus, spc::access(&cmd))?;
        self.primary(cmd, req, nexus)
    }

    fn check_address(&self, addr: u16) -> Result<Element, ScsiResponse> {
        self.library
            .layout()
            .element(addr)
            .ok_or_else(|| sense::INVALID_ELEMENT_ADDRESS.into())
    }

    async fn changer(&self, cmd: ChangerCommand) -> CmdResult {
        use ChangerCommand::*;
        match cmd {
            // Element status is always current (the catalog is the inventory): nothing to scan.
            InitializeElementStatus { range } => {
                if let Some((start, _)) = range {
                    self.check_address(start)?;
                }
                Ok(Bytes::new())
            }
            PositionToElement {
                transport,
                destination,
            } => {
                if self.check_address(transport)? != Element::Transport {
                    return Err(sense::INVALID_ELEMENT_ADDRESS.into());
                }
                self.check_address(destination)?;
                Ok(Bytes::new())
            }
            MoveMedium {
                transport,
                source,
                destination,
            } => {
                // Transport address 0 means "the default transport" (SMC-3).
                if transport != 0 && self.check_address(transport)? != Element::Transport {
                    return Err(sense::INVALID_ELEMENT_ADDRESS.into());
                }
                self.library
                    .move_medium(source, destination)
                    .await
                    .map_err(move_error)?;
                Ok(Bytes::new())
            }
            ReadElementStatus {
                voltag,
                element_type,
                start,
                count,
                dvcid,
                alloc,
            } => {
                let all = self.library.status()?;
                Ok(truncate(
                    self.element_status(&all, voltag, element_type, start, count, dvcid),
                    alloc,
                ))
            }
        }
    }

    /// READ ELEMENT STATUS data (SMC-3): header, then one page per run of same-typed elements.
    fn element_status(
        &self,
        all: &[ElementStatus],
        voltag: bool,
        element_type: u8,
        start: u16,
        count: u16,
        dvcid: bool,
    ) -> Vec<u8> {
        let chosen: Vec<&ElementStatus> = all
            .iter()
            .filter(|e| element_type == ALL_TYPES || type_code(e.element) == element_type)
            .filter(|e| e.address >= start)
            .take(usize::from(count))
            .collect();
        let mut pages = Vec::new();
        let mut i = 0;
        while i < chosen.len() {
            let t = type_code(chosen[i].element);
            let run: Vec<&ElementStatus> = chosen[i..]
                .iter()
                .take_while(|e| type_code(e.element) == t)
                .copied()
                .collect();
            i += run.len();
            let with_id = dvcid && t == DATA_TRANSFER;
            let mut descs = Vec::new();
            for e in &run {
                descs.extend(self.descriptor(e, voltag, with_id));
            }
            let desc_len = 12
                + if voltag { VOLUME_TAG_LEN } else { 0 }
                + if with_id { 4 + DEVICE_ID_LEN } else { 0 };
            let mut h = vec![t, if voltag { 0x80 } else { 0 }, 0, 0, 0, 0, 0, 0];
            put_len::<2>(&mut h, 2, desc_len);
            put_len::<3>(&mut h, 5, descs.len());
            pages.extend(h);
            pages.extend(descs);
        }
        let mut out = vec![0u8; 8];
        if let Some(first) = chosen.first() {
            out[0..2].copy_from_slice(&first.address.to_be_bytes());
        }
        put_len::<2>(&mut out, 2, chosen.len());
        put_len::<3>(&mut out, 5, pages.len());
        out.extend(pages);
        out
    }

    fn descriptor(&self, e: &ElementStatus, voltag: bool, with_id: bool) -> Vec<u8> {
        let mut d = vec![0u8; 12];
        d[0..2].copy_from_slice(&e.address.to_be_bytes());
        let full = u8::from(e.barcode.is_some());
        d[2] = match e.element {
            Element::Transport => full,
            // ACCESS: the transport can reach it.
            Element::Slot(_) | Element::Drive(_) => 0x08 | full,
            // INENAB, EXENAB, ACCESS.
            Element::Mail(_) => 0x38 | full,
        };
        if let Element::Drive(i) = e.element
            && let Some(&lun) = self.drive_luns.get(i as usize)
            && lun < 8
        {
            // LU VALID and the drive's LUN on this target (the field has 3 bits).
            d[6] = 0x10 | u8::try_from(lun).unwrap_or(0);
        }
        if let Some(src) = e.source {
            d[9] = 0x80; // SVALID
            d[10..12].copy_from_slice(&src.to_be_bytes());
        }
        if voltag {
            let mut tag = [0u8; VOLUME_TAG_LEN];
            if let Some(b) = &e.barcode {
                tag[..32].copy_from_slice(&inquiry::padded(b, 32));
            }
            d.extend_from_slice(&tag);
        }
        if with_id {
            let serial = match e.element {
                Element::Drive(i) => self
                    .library
                    .bays()
                    .get(i as usize)
                    .map(|b| b.serial.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            // Code set 2 (ASCII), identifier type 1 (T10 vendor id), then the identifier.
            d.extend_from_slice(&[0x02, 0x01, 0, u8::try_from(DEVICE_ID_LEN).unwrap_or(0)]);
            d.extend(inquiry::padded(super::ssc::DRIVE.vendor, 8));
            d.extend(inquiry::padded(super::ssc::DRIVE.product, 16));
            d.extend(inquiry::padded(&serial, 12));
        }
        d
    }

    fn primary(&self, cmd: Command, req: &ScsiRequest, nexus: &Nexus) -> CmdResult {
        use Command::*;
        if let Some(r) = spc::shared(&mut lock(&self.state), &cmd, nexus, &req.data_out) {
            return r;
        }
        match cmd {
            TestUnitReady => Ok(Bytes::new()),
            Inquiry { evpd, page, alloc } => Ok(truncate(
                inquiry::identified(&CHANGER, &self.identity, nexus, evpd, page)?,
                alloc,
            )),
            ModeSense {
                ten,
                pc,
                page,
                subpage,
                alloc,
                ..
            } => self.mode_sense(ten, pc, page, subpage, alloc),
            ModeSelect { param_len, .. } => {
                // Nothing of the changer is changeable: a header alone is accepted.
                let hdr = if req.cdb.first() == Some(&super::cdb::op::MODE_SELECT_10) {
                    8
                } else {
                    4
                };
                if param_len as usize > hdr {
                    return Err(
                        Sense::invalid_param_field(u16::try_from(hdr).unwrap_or(0), None).into(),
                    );
                }
                Ok(Bytes::new())
            }
            PreventAllow { prevent } => {
                self.library.set_prevent_eject(prevent & 0x01 != 0);
                Ok(Bytes::new())
            }
            _ => Err(sense::INVALID_OPCODE.into()),
        }
    }

    fn mode_sense(&self, ten: bool, pc: u8, page: u8, subpage: u8, alloc: u32) -> CmdResult {
        if pc == 3 {
            return Err(sense::SAVING_PARAMETERS_NOT_SUPPORTED.into());
        }
        if subpage != 0 && !(page == ALL_PAGES && subpage == 0xff) {
            return Err(Sense::invalid_cdb_field(3, None).into());
        }
        let codes: &[u8] = match page {
            ALL_PAGES => &[
                ELEMENT_ADDRESS_ASSIGNMENT,
                TRANSPORT_GEOMETRY,
                DEVICE_CAPABILITIES,
            ],
            ELEMENT_ADDRESS_ASSIGNMENT => &[ELEMENT_ADDRESS_ASSIGNMENT],
            TRANSPORT_GEOMETRY => &[TRANSPORT_GEOMETRY],
            DEVICE_CAPABILITIES => &[DEVICE_CAPABILITIES],
            _ => return Err(Sense::invalid_cdb_field(2, Some(5)).into()),
        };
        let changeable = pc == 1;
        let layout = self.library.layout();
        let mut pages = Vec::new();
        for &code in codes {
            let mut p = match code {
                ELEMENT_ADDRESS_ASSIGNMENT => {
                    let mut p = vec![code, 0x12];
                    for (e, n) in [
                        (Element::Transport, 1),
                        (Element::Slot(0), layout.slots),
                        (Element::Mail(0), layout.mail_slots),
                        (Element::Drive(0), layout.drives),
                    ] {
                        p.extend_from_slice(&layout.address(e).to_be_bytes());
                        p.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
                    }
                    p.extend_from_slice(&[0, 0]);
                    p
                }
                // One transport, not rotatable.
                TRANSPORT_GEOMETRY => vec![code, 0x02, 0, 0],
                _ => {
                    // Every element type can store media and every type can be a move's
                    // source or destination; no EXCHANGE MEDIUM.
                    let mut p = vec![0u8; 20];
                    p[0] = code;
                    p[1] = 0x12;
                    p[2] = 0x0e;
                    p[4..8].copy_from_slice(&[0x0e; 4]);
                    p
                }
            };
            if changeable {
                p[2..].fill(0);
            }
            pages.extend(p);
        }
        Ok(truncate(mode::assemble(ten, 0, false, &[], &pages), alloc))
    }
}

impl LogicalUnit for Changer {
    fn execute<'a>(&'a self, req: &'a ScsiRequest) -> BoxFuture<'a, ScsiResponse> {
        Box::pin(async move {
            match self.run(req).await {
                Ok(data_in) => ScsiResponse::good(data_in),
                Err(resp) => resp,
            }
        })
    }

    fn reset(&self) {
        lock(&self.state).reset();
    }

    fn nexus_lost(&self, nexus: &Nexus) {
        lock(&self.state).nexus_lost(nexus);
    }

    fn data_out_length(&self, raw: &[u8]) -> Option<u64> {
        if parse(raw).ok()?.is_some() {
            return Some(0);
        }
        match super::cdb::parse(raw).ok()? {
            Command::ModeSelect { param_len, .. }
            | Command::PersistentReserveOut { param_len, .. } => Some(u64::from(param_len)),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn changer_cdbs_parse() {
        let mv = [0xa5, 0, 0, 0, 0x04, 0x00, 0x01, 0x00, 0, 0, 0, 0];
        assert_eq!(
            parse(&mv),
            Ok(Some(ChangerCommand::MoveMedium {
                transport: 0,
                source: 0x400,
                destination: 0x100
            }))
        );
        let mut inv = mv;
        inv[10] = 1;
        assert_eq!(parse(&inv).map_err(|s| s.asc), Err(0x24));
        let res = [0xb8, 0x12, 0, 0, 0xff, 0xff, 0x01, 0, 0x10, 0, 0, 0];
        assert_eq!(
            parse(&res),
            Ok(Some(ChangerCommand::ReadElementStatus {
                voltag: true,
                element_type: STORAGE,
                start: 0,
                count: 0xffff,
                dvcid: true,
                alloc: 0x1000
            }))
        );
        assert_eq!(
            parse(&[0xb8, 0x05, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]).map_err(|s| s.asc),
            Err(0x24)
        );
        assert_eq!(parse(&[0x12, 0, 0, 0, 36, 0]), Ok(None));
    }

    proptest! {
        #[test]
        fn arbitrary_cdbs_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = parse(&raw);
        }
    }
}
