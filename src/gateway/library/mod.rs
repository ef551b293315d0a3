//! The tape library (docs/design.md §6): its elements — one medium transport, storage slots,
//! import/export (mail) slots and drives — which tape sits in which, and moving tapes among
//! them. Moving a tape to a mail slot ejects it to the shelf.
//!
//! Where each tape is lives in the catalog (`tapes.element_type/element_index`), so it survives
//! restarts; a drive's loaded tape (`Medium`, with its position) lives in its `DriveBay`.
//! Invariants: a tape is in at most one element (the catalog's UNIQUE constraint); moves are
//! serialised; a tape leaves a drive only after its buffered writes are synced.
//!
//! Element addresses (reported by SMC MODE SENSE page 1Dh): transport 0, mail slots from
//! 0x10, drives from 0x100, storage slots from 0x400, so each kind can grow without renumbering
//! the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tidegate_cache::Cache;
use tokio::sync::Notify;

use crate::catalog::Catalog;
use crate::catalog::tapes::{ElementKind, TapeRow, TapeState};
use crate::gateway::GatewayError;
use crate::gateway::tapes::medium::Medium;

pub const TRANSPORT_ADDRESS: u16 = 0;
pub const MAIL_BASE: u16 = 0x0010;
pub const DRIVE_BASE: u16 = 0x0100;
pub const SLOT_BASE: u16 = 0x0400;

pub const DEFAULT_DRIVES: u32 = 10;
pub const DEFAULT_SLOTS: u32 = 1600;
pub const DEFAULT_MAIL_SLOTS: u32 = 8;
pub const MAX_DRIVES: u32 = (SLOT_BASE - DRIVE_BASE) as u32;
pub const MAX_MAIL_SLOTS: u32 = (DRIVE_BASE - MAIL_BASE) as u32;
pub const MAX_SLOTS: u32 = (u16::MAX - SLOT_BASE) as u32;

/// How many elements of each kind the library has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub drives: u32,
    pub slots: u32,
    pub mail_slots: u32,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            drives: DEFAULT_DRIVES,
            slots: DEFAULT_SLOTS,
            mail_slots: DEFAULT_MAIL_SLOTS,
        }
    }
}

/// One element of the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Element {
    Transport,
    Mail(u32),
    Drive(u32),
    Slot(u32),
}

impl Layout {
    /// Checks the counts fit the address plan.
    pub fn check(&self) -> Result<(), String> {
        let fits = [
            ("drives", self.drives, MAX_DRIVES),
            ("slots", self.slots, MAX_SLOTS),
            ("mail_slots", self.mail_slots, MAX_MAIL_SLOTS),
        ];
        for (what, n, max) in fits {
            if n == 0 || n > max {
                return Err(format!("library.{what} must be 1 to {max}, not {n}"));
            }
        }
        Ok(())
    }

    pub fn address(&self, e: Element) -> u16 {
        let at = |base: u16, i: u32| base.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
        match e {
            Element::Transport => TRANSPORT_ADDRESS,
            Element::Mail(i) => at(MAIL_BASE, i),
            Element::Drive(i) => at(DRIVE_BASE, i),
            Element::Slot(i) => at(SLOT_BASE, i),
        }
    }

    pub fn element(&self, addr: u16) -> Option<Element> {
        let within = |base: u16, n: u32| {
            let i = u32::from(addr.checked_sub(base)?);
            (i < n).then_some(i)
        };
        if addr == TRANSPORT_ADDRESS {
            Some(Element::Transport)
        } else if addr >= SLOT_BASE {
            within(SLOT_BASE, self.slots).map(Element::Slot)
        } else if addr >= DRIVE_BASE {
            within(DRIVE_BASE, self.drives).map(Element::Drive)
        } else {
            within(MAIL_BASE, self.mail_slots).map(Element::Mail)
        }
    }

    /// Every element in address order.
    pub fn all(&self) -> Vec<Element> {
        let mut v = vec![Element::Transport];
        v.extend((0..self.mail_slots).map(Element::Mail));
        v.extend((0..self.drives).map(Element::Drive));
        v.extend((0..self.slots).map(Element::Slot));
        v
    }
}

fn element_of(loc: (ElementKind, u32)) -> Element {
    match loc {
        (ElementKind::Slot, i) => Element::Slot(i),
        (ElementKind::Drive, i) => Element::Drive(i),
        (ElementKind::Mail, i) => Element::Mail(i),
    }
}

/// Why a move was refused (the SMC layer gives each its own sense code).
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("element address {0:#06x} does not exist")]
    InvalidElement(u16),
    #[error("source element {0:#06x} is empty")]
    SourceEmpty(u16),
    #[error("destination element {0:#06x} is full")]
    DestinationFull(u16),
    #[error("medium removal from element {0:#06x} is prevented")]
    RemovalPrevented(u16),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl From<crate::catalog::CatalogError> for MoveError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        Self::Gateway(e.into())
    }
}

/// What a drive holds.
#[derive(Debug, Default)]
pub struct BayState {
    pub medium: Option<Medium>,
    /// Loaded (threaded, ready); false after an unload until the next load.
    pub loaded: bool,
    /// PREVENT ALLOW MEDIUM REMOVAL from the drive's initiator.
    pub prevent: bool,
}

/// One tape drive's slot for a tape.
#[derive(Debug)]
pub struct DriveBay {
    pub index: u32,
    /// The drive's serial number (INQUIRY VPD 80h and the changer's DVCID).
    pub serial: String,
    pub state: tokio::sync::Mutex<BayState>,
    /// Bumped whenever a tape is loaded, so the drive can raise NOT READY TO READY CHANGE.
    generation: AtomicU64,
    /// Bytes clients wrote to and read from tapes in this drive since start (`/metrics`).
    pub written_bytes: AtomicU64,
    pub read_bytes: AtomicU64,
}

impl DriveBay {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// An element's content for READ ELEMENT STATUS.
#[derive(Debug, Clone)]
pub struct ElementStatus {
    pub element: Element,
    pub address: u16,
    pub barcode: Option<String>,
    /// The storage slot the tape came from (for a tape in a drive or the transport).
    pub source: Option<u16>,
}

pub struct Library {
    layout: Layout,
    catalog: Arc<Catalog>,
    cache: Arc<Cache>,
    bays: Vec<Arc<DriveBay>>,
    /// PREVENT ALLOW MEDIUM REMOVAL on the changer: no ejects through the mail slots.
    prevent_eject: AtomicBool,
    moves: tokio::sync::Mutex<()>,
    /// Woken when a tape is ejected, for the shelf worker.
    pub ejected: Arc<Notify>,
    serial: String,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Library {
    /// The library as the catalog left it: tapes in drives are loaded again at their start.
    /// `serial_base` makes the device serials unique per gateway.
    pub fn open(
        layout: Layout,
        catalog: Arc<Catalog>,
        cache: Arc<Cache>,
        serial_base: &str,
    ) -> Result<Self, GatewayError> {
        layout.check().map_err(GatewayError::InvalidArgument)?;
        let base: String = serial_base
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(6)
            .collect::<String>()
            .to_ascii_uppercase();
        let mut bays = Vec::new();
        for index in 0..layout.drives {
            bays.push(Arc::new(DriveBay {
                index,
                serial: format!("{base:0>6}{:04}", index + 1),
                state: tokio::sync::Mutex::new(BayState::default()),
                generation: AtomicU64::new(0),
                written_bytes: AtomicU64::new(0),
                read_bytes: AtomicU64::new(0),
            }));
        }
        for t in catalog.tapes()? {
            if let Some((ElementKind::Drive, i)) = t.location
                && let Some(bay) = bays.get(i as usize)
            {
                let medium = Medium::open(t, cache.clone(), catalog.clone())?;
                let mut st = bay.state.try_lock().map_err(|_| {
                    GatewayError::Internal("a drive bay is locked while opening".into())
                })?;
                st.medium = Some(medium);
                st.loaded = true;
            }
        }
        Ok(Self {
            layout,
            catalog,
            cache,
            bays,
            prevent_eject: AtomicBool::new(false),
            moves: tokio::sync::Mutex::new(()),
            ejected: Arc::new(Notify::new()),
            serial: format!("{base:0>6}L700"),
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn bays(&self) -> &[Arc<DriveBay>] {
        &self.bays
    }

    pub fn set_prevent_eject(&self, prevent: bool) {
        self.prevent_eject.store(prevent, Ordering::Release);
    }

    /// Every element and what it holds, in address order.
    pub fn status(&self) -> Result<Vec<ElementStatus>, GatewayError> {
        let tapes = self.catalog.tapes()?;
        let mut at: std::collections::HashMap<Element, &TapeRow> = Default::default();
        for t in &tapes {
            if let Some(loc) = t.location {
                at.insert(element_of(loc), t);
            }
        }
        Ok(self
            .layout
            .all()
            .into_iter()
            .map(|e| {
                let tape = at.get(&e);
                let source = match e {
                    Element::Drive(_) => tape
                        .and_then(|t| t.home_slot)
                        .map(|s| self.layout.address(Element::Slot(s))),
                    _ => None,
                };
                ElementStatus {
                    element: e,
                    address: self.layout.address(e),
                    barcode: tape.map(|t| t.barcode.clone()),
                    source,
                }
            })
            .collect())
    }

    /// MOVE MEDIUM from `src` to `dst` (element addresses).
    pub async fn move_medium(&self, src: u16, dst: u16) -> Result<(), MoveError> {
        let _one_at_a_time = self.moves.lock().await;
        let from = self
            .layout
            .element(src)
            .ok_or(MoveError::InvalidElement(src))?;
        let to = self
            .layout
            .element(dst)
            .ok_or(MoveError::InvalidElement(dst))?;
        let tapes = self.catalog.tapes()?;
        let in_element = |e: Element| {
            tapes
                .iter()
                .find(|t| t.location.map(element_of) == Some(e))
                .cloned()
        };
        let tape = in_element(from).ok_or(MoveError::SourceEmpty(src))?;
        if from == to {
            return Ok(());
        }
        if to == Element::Transport {
            return Err(MoveError::InvalidElement(dst));
        }
        if in_element(to).is_some() {
            return Err(MoveError::DestinationFull(dst));
        }
        if matches!(to, Element::Mail(_)) && self.prevent_eject.load(Ordering::Acquire) {
            return Err(MoveError::RemovalPrevented(dst));
        }
        if let Element::Drive(i) = from {
            let bay = &self.bays[i as usize];
            let mut st = bay.state.lock().await;
            if st.prevent {
                return Err(MoveError::RemovalPrevented(src));
            }
            if let Some(m) = st.medium.as_mut() {
                m.sync().await?;
            }
            st.medium = None;
            st.loaded = false;
        }
        match to {
            Element::Slot(i) => self
                .catalog
                .set_tape_location(tape.id, Some((ElementKind::Slot, i)))?,
            Element::Drive(i) => {
                let bay = &self.bays[i as usize];
                let mut st = bay.state.lock().await;
                self.catalog
                    .set_tape_location(tape.id, Some((ElementKind::Drive, i)))?;
                let row = self
                    .catalog
                    .tape_by_id(tape.id)?
                    .ok_or_else(|| GatewayError::NotFound(format!("tape {}", tape.barcode)))?;
                st.medium = Some(Medium::open(row, self.cache.clone(), self.catalog.clone())?);
                st.loaded = true;
                st.prevent = false;
                bay.generation.fetch_add(1, Ordering::AcqRel);
            }
            Element::Mail(_) => self.eject(&tape)?,
            Element::Transport => return Err(MoveError::InvalidElement(dst)),
        }
        tracing::info!(barcode = %tape.barcode, from = src, to = dst, "tape moved");
        Ok(())
    }

    /// A tape put in a mail slot leaves the library for the shelf: a written tape to be
    /// archived, a retrieved one back to its archive (which still holds its data).
    fn eject(&self, tape: &TapeRow) -> Result<(), GatewayError> {
        let next = match tape.state {
            TapeState::Retrieved => TapeState::Archived,
            _ => TapeState::InTransit,
        };
        self.catalog
            .set_tape_state_at(tape.id, next, None, tape.read_only)?;
        if next == TapeState::Archived {
            self.catalog.clear_tape_chunks(tape.id)?;
        }
        tracing::info!(barcode = %tape.barcode, state = next.label(), "tape ejected to the shelf");
        self.ejected.notify_one();
        Ok(())
    }

    /// Syncs every loaded tape (shutdown): buffered records become durable and indexed.
    pub async fn sync_all(&self) {
        for bay in &self.bays {
            let mut st = bay.state.lock().await;
            if let Some(m) = st.medium.as_mut()
                && let Err(e) = m.sync().await
            {
                tracing::error!(barcode = %m.barcode(), error = %e, "syncing a tape at shutdown");
            }
        }
    }

    /// The lowest free storage slot, if any.
    pub fn free_slot(&self) -> Result<Option<u32>, GatewayError> {
        let used: std::collections::HashSet<u32> = self
            .catalog
            .tapes()?
            .iter()
            .filter_map(|t| match t.location {
                Some((ElementKind::Slot, i)) => Some(i),
                _ => None,
            })
            .collect();
        Ok((0..self.layout.slots).find(|s| !used.contains(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_do_not_overlap() {
        let l = Layout::default();
        let all = l.all();
        assert_eq!(all.len(), 1 + 8 + 10 + 1600);
        let mut seen = std::collections::HashSet::new();
        for e in all {
            let a = l.address(e);
            assert!(seen.insert(a), "{e:?} at {a} twice");
            assert_eq!(l.element(a), Some(e));
        }
        for bad in [
            1u16,
            MAIL_BASE + 8,
            DRIVE_BASE + 10,
            SLOT_BASE + 1600,
            u16::MAX,
        ] {
            assert_eq!(l.element(bad), None, "{bad:#x}");
        }
        assert!(Layout { drives: 0, ..l }.check().is_err());
        assert!(l.check().is_ok());
    }
}
