//! Byte-range locks and share reservations on a share's files, protocol-neutral: NFSv4.1
//! (LOCK/LOCKT/LOCKU, OPEN's share_access/share_deny), FUSE (`getlk`/`setlk`/`flock`) and any
//! later front end take and test them here, so a lock held through one is seen by all.
//!
//! Locks are advisory and POSIX-shaped: an owner's own locks never conflict with each other, a
//! new lock over an owner's existing range replaces it (upgrade, downgrade, split), and read
//! locks are shared. State is in memory only: after a restart the table starts empty and in a
//! grace period (set by the front end that knows the lease time) during which only reclaims
//! are granted, so clients can take back what they held before anyone else takes it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::gateway::files::FileId;

/// Who holds a lock or a share reservation. `client` separates namespaces (an NFSv4 client id,
/// or 0 for local FUSE callers); `owner` is the protocol's owner within it (NFSv4 lock-owner
/// bytes, FUSE's lock_owner).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockOwner {
    pub client: u64,
    pub owner: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Read,
    Write,
}

/// One held range: `start..end`, where `end == u64::MAX` means "to the end of the file, however
/// far it grows".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub owner: LockOwner,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
}

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }

    fn conflicts(&self, owner: &LockOwner, kind: LockKind, start: u64, end: u64) -> bool {
        self.owner != *owner
            && self.overlaps(start, end)
            && (kind == LockKind::Write || self.kind == LockKind::Write)
    }
}

/// Share reservation bits (RFC 8881 §9.7): what an opener does and what it keeps others from
/// doing.
pub const SHARE_READ: u32 = 1;
pub const SHARE_WRITE: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    owner: LockOwner,
    access: u32,
    deny: u32,
}

/// Why a lock or reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Another owner holds this conflicting lock.
    Conflict(Lock),
    /// The table is in its grace period and this was not a reclaim.
    Grace,
    /// A share reservation conflicts.
    ShareDenied,
}

#[derive(Debug, Default)]
struct Table {
    locks: HashMap<FileId, Vec<Lock>>,
    shares: HashMap<FileId, Vec<Reservation>>,
}

/// The gateway's lock table.
#[derive(Debug)]
pub struct LockTable {
    table: Mutex<Table>,
    grace_until: Mutex<Option<Instant>>,
}

impl Default for LockTable {
    fn default() -> Self {
        Self::new()
    }
}

impl LockTable {
    pub fn new() -> Self {
        Self {
            table: Mutex::new(Table::default()),
            grace_until: Mutex::new(None),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update below leaves the maps consistent, so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a grace period of `length` from now (once, when the front end that serves
    /// reclaims starts).
    pub fn start_grace(&self, length: Duration) {
        *self.grace_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + length);
    }

    /// Ends the grace period early (every client that held state has reclaimed it).
    pub fn end_grace(&self) {
        *self.grace_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Byte-range locks held, share reservations held, and what is left of the grace period.
    pub fn figures(&self) -> (u64, u64, Duration) {
        let grace = self
            .grace_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |until| {
                until.saturating_duration_since(Instant::now())
            });
        let t = self.table();
        let count = |n: usize| n as u64;
        (
            count(t.locks.values().map(Vec::len).sum()),
            count(t.shares.values().map(Vec::len).sum()),
            grace,
        )
    }

    pub fn in_grace(&self) -> bool {
        let mut g = self.grace_until.lock().unwrap_or_else(|p| p.into_inner());
        match *g {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *g = None;
                false
            }
            None => false,
        }
    }

    /// The first lock of another owner that a `kind` lock on `start..end` would conflict with.
    pub fn test(
        &self,
        file: FileId,
        owner: &LockOwner,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> Option<Lock> {
        self.table()
            .locks
            .get(&file)?
            .iter()
            .find(|l| l.conflicts(owner, kind, start, end))
            .cloned()
    }

    /// Takes a lock, replacing whatever the owner held on that range. `reclaim` marks a client
    /// taking back a lock it held before a restart: only those are granted in grace.
    pub fn lock(
        &self,
        file: FileId,
        owner: &LockOwner,
        kind: LockKind,
        start: u64,
        end: u64,
        reclaim: bool,
    ) -> Result<(), Refused> {
        if !reclaim && self.in_grace() {
            return Err(Refused::Grace);
        }
        let mut t = self.table();
        let held = t.locks.entry(file).or_default();
        if let Some(c) = held.iter().find(|l| l.conflicts(owner, kind, start, end)) {
            return Err(Refused::Conflict(c.clone()));
        }
        carve(held, owner, start, end);
        held.push(Lock {
            owner: owner.clone(),
            kind,
            start,
            end,
        });
        merge(held, owner);
        Ok(())
    }

    /// Releases the owner's locks on `start..end` (splitting a lock that extends past it).
    pub fn unlock(&self, file: FileId, owner: &LockOwner, start: u64, end: u64) {
        let mut t = self.table();
        if let Some(held) = t.locks.get_mut(&file) {
            carve(held, owner, start, end);
            if held.is_empty() {
                t.locks.remove(&file);
            }
        }
    }

    /// Whether `owner` holds any lock on `file`.
    pub fn holds(&self, file: FileId, owner: &LockOwner) -> bool {
        self.table()
            .locks
            .get(&file)
            .is_some_and(|h| h.iter().any(|l| l.owner == *owner))
    }

    /// Drops every lock and reservation whose owner matches (a closed file, an expired lease).
    pub fn release_where(&self, matches: impl Fn(&LockOwner) -> bool) {
        let mut t = self.table();
        t.locks.retain(|_, held| {
            held.retain(|l| !matches(&l.owner));
            !held.is_empty()
        });
        t.shares.retain(|_, held| {
            held.retain(|r| !matches(&r.owner));
            !held.is_empty()
        });
    }

    /// Drops the owner's locks on one file.
    pub fn release_file(&self, file: FileId, owner: &LockOwner) {
        self.unlock(file, owner, 0, u64::MAX);
    }

    /// Adds (or, for an owner that has one, replaces) a share reservation. Refused if another
    /// owner denies what this one wants, or wants what this one denies.
    pub fn reserve(
        &self,
        file: FileId,
        owner: &LockOwner,
        access: u32,
        deny: u32,
    ) -> Result<(), Refused> {
        let mut t = self.table();
        let held = t.shares.entry(file).or_default();
        let clash = held
            .iter()
            .filter(|r| r.owner != *owner)
            .any(|r| r.deny & access != 0 || r.access & deny != 0);
        if clash {
            return Err(Refused::ShareDenied);
        }
        held.retain(|r| r.owner != *owner);
        held.push(Reservation {
            owner: owner.clone(),
            access,
            deny,
        });
        Ok(())
    }

    /// Removes the owner's reservation on a file.
    pub fn unreserve(&self, file: FileId, owner: &LockOwner) {
        let mut t = self.table();
        if let Some(held) = t.shares.get_mut(&file) {
            held.retain(|r| r.owner != *owner);
            if held.is_empty() {
                t.shares.remove(&file);
            }
        }
    }

    /// Whether a reservation of another owner denies `access` (a READ or WRITE without an
    /// open of one's own, e.g. with an anonymous stateid).
    pub fn denied(&self, file: FileId, owner: Option<&LockOwner>, access: u32) -> bool {
        self.table().shares.get(&file).is_some_and(|held| {
            held.iter()
                .any(|r| Some(&r.owner) != owner && r.deny & access != 0)
        })
    }
}

/// Removes `start..end` from the owner's locks, keeping the parts outside it.
fn carve(held: &mut Vec<Lock>, owner: &LockOwner, start: u64, end: u64) {
    let mut kept = Vec::with_capacity(held.len() + 1);
    for l in held.drain(..) {
        if l.owner != *owner || !l.overlaps(start, end) {
            kept.push(l);
            continue;
        }
        if l.start < start {
            kept.push(Lock {
                end: start,
                ..l.clone()
            });
        }
        if end < l.end {
            kept.push(Lock { start: end, ..l });
        }
    }
    *held = kept;
}

/// Joins the owner's adjacent or overlapping locks of one kind, so a later unlock of the whole
/// range finds one lock, as POSIX's coalescing does.
fn merge(held: &mut Vec<Lock>, owner: &LockOwner) {
    let (mut mine, others): (Vec<Lock>, Vec<Lock>) =
        held.drain(..).partition(|l| l.owner == *owner);
    mine.sort_by_key(|l| l.start);
    let mut joined: Vec<Lock> = Vec::with_capacity(mine.len());
    for l in mine {
        match joined.last_mut() {
            Some(prev) if prev.kind == l.kind && l.start <= prev.end => {
                prev.end = prev.end.max(l.end);
            }
            _ => joined.push(l),
        }
    }
    *held = others;
    held.extend(joined);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: u8) -> LockOwner {
        LockOwner {
            client: u64::from(n),
            owner: vec![n],
        }
    }

    const F: FileId = FileId(7);

    #[test]
    fn write_locks_conflict_and_read_locks_share() {
        let t = LockTable::new();
        t.lock(F, &owner(1), LockKind::Read, 0, 100, false).unwrap();
        t.lock(F, &owner(2), LockKind::Read, 50, 150, false)
            .unwrap();
        let refused = t.lock(F, &owner(3), LockKind::Write, 90, 95, false);
        assert!(matches!(refused, Err(Refused::Conflict(l)) if l.owner == owner(1)));
        assert!(t.test(F, &owner(3), LockKind::Read, 0, 10).is_none());
        assert!(
            t.lock(F, &owner(3), LockKind::Write, 150, u64::MAX, false)
                .is_ok()
        );
        assert_eq!(
            t.test(F, &owner(1), LockKind::Read, 200, 201)
                .map(|l| l.owner),
            Some(owner(3))
        );
    }

    #[test]
    fn own_locks_split_upgrade_and_unlock() {
        let t = LockTable::new();
        let o = owner(1);
        t.lock(F, &o, LockKind::Read, 0, 100, false).unwrap();
        // Upgrading the middle splits the read lock around it.
        t.lock(F, &o, LockKind::Write, 40, 60, false).unwrap();
        assert!(t.test(F, &owner(2), LockKind::Read, 0, 40).is_none());
        assert!(t.test(F, &owner(2), LockKind::Read, 45, 50).is_some());
        t.unlock(F, &o, 0, u64::MAX);
        assert!(!t.holds(F, &o));
        assert!(t.test(F, &owner(2), LockKind::Write, 0, u64::MAX).is_none());
    }

    #[test]
    fn adjacent_locks_merge_and_partial_unlock_splits() {
        let t = LockTable::new();
        let o = owner(1);
        t.lock(F, &o, LockKind::Write, 0, 10, false).unwrap();
        t.lock(F, &o, LockKind::Write, 10, 20, false).unwrap();
        t.unlock(F, &o, 5, 15);
        assert!(t.test(F, &owner(2), LockKind::Write, 5, 15).is_none());
        assert!(t.test(F, &owner(2), LockKind::Write, 0, 5).is_some());
        assert!(t.test(F, &owner(2), LockKind::Write, 15, 20).is_some());
    }

    #[test]
    fn grace_admits_only_reclaims() {
        let t = LockTable::new();
        t.start_grace(Duration::from_secs(60));
        assert_eq!(
            t.lock(F, &owner(1), LockKind::Write, 0, 1, false),
            Err(Refused::Grace)
        );
        assert!(t.lock(F, &owner(1), LockKind::Write, 0, 1, true).is_ok());
        t.end_grace();
        assert!(t.lock(F, &owner(2), LockKind::Read, 5, 6, false).is_ok());
    }

    #[test]
    fn released_owners_lose_locks_and_reservations() {
        let t = LockTable::new();
        t.lock(F, &owner(1), LockKind::Write, 0, 1, false).unwrap();
        t.reserve(F, &owner(1), SHARE_READ, SHARE_WRITE).unwrap();
        assert_eq!(
            t.reserve(F, &owner(2), SHARE_WRITE, 0),
            Err(Refused::ShareDenied)
        );
        assert!(t.denied(F, None, SHARE_WRITE));
        assert_eq!(t.figures().0, 1);
        t.release_where(|o| o.client == 1);
        assert_eq!(t.figures().0, 0);
        assert!(t.reserve(F, &owner(2), SHARE_WRITE, 0).is_ok());
        assert_eq!(t.figures().1, 1);
        assert!(t.test(F, &owner(2), LockKind::Write, 0, 1).is_none());
    }
}
