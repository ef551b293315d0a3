//! NFSv4.1 server state (RFC 8881 §2.10, §8, §9): client records, sessions with their slot
//! tables and reply caches, leases, and the stateids of opens and lock owners. The locks and
//! share reservations themselves are in `gateway::files::locks`, where every front end sees
//! them; this module only knows which protocol state names them.
//!
//! One mutex guards it all; no call holds it across an await or any I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::gateway::files::FileId;

use super::consts::*;

pub type SessionId = [u8; 16];
pub type Other = [u8; 12];

/// A stateid4: a sequence number and the 12 bytes that name the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateId {
    pub seq: u32,
    pub other: Other,
}

impl StateId {
    pub const ANONYMOUS: Self = Self {
        seq: 0,
        other: [0; 12],
    };
    pub const BYPASS: Self = Self {
        seq: u32::MAX,
        other: [0xff; 12],
    };
    /// The current stateid of a COMPOUND (RFC 8881 §16.2.3.1.2).
    pub const CURRENT: Self = Self {
        seq: 1,
        other: [0; 12],
    };
    /// What CLOSE returns (RFC 8881 §18.2.4).
    pub const INVALID: Self = Self {
        seq: u32::MAX,
        other: [0; 12],
    };

    pub fn is_special(&self) -> bool {
        self.other == [0; 12] || self.other == [0xff; 12]
    }
}

/// What a stateid stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateKind {
    Open {
        owner: Vec<u8>,
        access: u32,
        deny: u32,
    },
    Lock {
        owner: Vec<u8>,
        open: Other,
    },
}

#[derive(Debug, Clone)]
pub struct StateRec {
    pub client: u64,
    pub file: FileId,
    pub seq: u32,
    pub kind: StateKind,
}

/// A slot of a session's fore channel: the last sequence id it saw and that request's reply.
#[derive(Debug, Default)]
struct Slot {
    seq: u32,
    reply: Option<Arc<Vec<u8>>>,
    busy: bool,
}

/// Fore-channel limits agreed at CREATE_SESSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelAttrs {
    pub header_pad: u32,
    pub max_request: u32,
    pub max_response: u32,
    pub max_response_cached: u32,
    pub max_ops: u32,
    pub max_requests: u32,
}

struct Session {
    client: u64,
    fore: ChannelAttrs,
    slots: Vec<Slot>,
}

struct Client {
    owner: Vec<u8>,
    verifier: [u8; 8],
    confirmed: bool,
    /// The uid that made the record (EXCHANGE_ID's principal, compared on updates).
    principal: u32,
    /// The last CREATE_SESSION sequence id and that call's result, for its replay.
    cs_seq: u32,
    cs_reply: Option<Vec<u8>>,
    renewed: Instant,
    reclaim_complete: bool,
}

#[derive(Default)]
struct Inner {
    next: u64,
    clients: HashMap<u64, Client>,
    sessions: HashMap<SessionId, Session>,
    states: HashMap<Other, StateRec>,
}

/// What SEQUENCE found.
#[derive(Debug)]
pub enum Seq {
    /// A new request: run it, then `finish` the slot with its reply.
    New {
        client: u64,
        highest_slot: u32,
        fore: ChannelAttrs,
    },
    /// A retransmission of the slot's last request: this is its reply.
    Replay(Arc<Vec<u8>>),
}

/// The result of EXCHANGE_ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchanged {
    pub client: u64,
    pub seq: u32,
    pub confirmed: bool,
}

/// The state of the NFSv4.1 server.
pub struct State {
    /// Differs from run to run: client ids and stateids of an earlier run are recognised as
    /// stale, not confused with this run's.
    epoch: u32,
    lease: Duration,
    inner: Mutex<Inner>,
}

pub const MAX_SLOTS: u32 = 64;
/// Client records and sessions kept at most (a flood of EXCHANGE_IDs or CREATE_SESSIONs gets
/// DELAY rather than growing memory without bound; records of silent clients expire).
pub const MAX_CLIENTS: usize = 4096;
pub const MAX_SESSIONS_PER_CLIENT: usize = 16;
/// Replies larger than this are not cached (a retransmission then gets
/// RETRY_UNCACHED_REP): slots × sessions × this bounds the cache.
pub const MAX_CACHED_REPLY: u32 = 64 * 1024;

impl State {
    pub fn new(lease: Duration) -> Self {
        let now = crate::clock::since_epoch();
        let epoch = (now.as_secs() as u32 ^ now.subsec_nanos()).max(1);
        Self {
            epoch,
            lease,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Each update below is complete before the guard drops, so poisoning cannot leave a
        // half-made record.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_id(&self, inner: &mut Inner) -> u64 {
        inner.next += 1;
        (u64::from(self.epoch) << 32) | (inner.next & 0xffff_ffff)
    }

    /// EXCHANGE_ID (RFC 8881 §18.35.5), for the cases a client meets: a new client, the same
    /// client again (same verifier), and a client that rebooted (new verifier: a new record
    /// that replaces the old one when confirmed).
    pub fn exchange_id(
        &self,
        owner: &[u8],
        verifier: [u8; 8],
        principal: u32,
        update: bool,
    ) -> Result<Exchanged, u32> {
        let mut inner = self.inner();
        let existing: Vec<(u64, bool, [u8; 8], u32)> = inner
            .clients
            .iter()
            .filter(|(_, c)| c.owner == owner)
            .map(|(id, c)| (*id, c.confirmed, c.verifier, c.principal))
            .collect();
        let confirmed = existing.iter().find(|e| e.1);
        if update {
            let Some(&(id, _, v, p)) = confirmed else {
                return Err(NFS4ERR_NOENT);
            };
            if v != verifier {
                return Err(NFS4ERR_NOT_SAME);
            }
            if p != principal {
                return Err(NFS4ERR_PERM);
            }
            let seq = inner.clients.get(&id).map_or(0, |c| c.cs_seq);
            return Ok(Exchanged {
                client: id,
                seq: seq.wrapping_add(1),
                confirmed: true,
            });
        }
        if let Some(&(id, _, v, p)) = confirmed {
            if p != principal {
                // Another principal (RFC 8881 §18.35.5 case 3): refused while the record has
                // sessions or state, replaced by a new record when it has none.
                let busy = inner.sessions.values().any(|s| s.client == id)
                    || inner.states.values().any(|s| s.client == id);
                if busy {
                    return Err(NFS4ERR_CLID_INUSE);
                }
                Self::drop_client(&mut inner, id);
            } else if v == verifier {
                let seq = inner.clients.get(&id).map_or(0, |c| c.cs_seq);
                return Ok(Exchanged {
                    client: id,
                    seq: seq.wrapping_add(1),
                    confirmed: true,
                });
            }
        }
        if inner.clients.len() >= MAX_CLIENTS {
            return Err(NFS4ERR_DELAY);
        }
        // Drop an earlier unconfirmed record of this owner; a confirmed one stays until the
        // new record is confirmed.
        for (id, conf, _, _) in &existing {
            if !conf {
                inner.clients.remove(id);
            }
        }
        let id = self.next_id(&mut inner);
        inner.clients.insert(
            id,
            Client {
                owner: owner.to_vec(),
                verifier,
                confirmed: false,
                principal,
                cs_seq: 0,
                cs_reply: None,
                renewed: Instant::now(),
                reclaim_complete: false,
            },
        );
        Ok(Exchanged {
            client: id,
            seq: 1,
            confirmed: false,
        })
    }

    /// CREATE_SESSION's sequencing (RFC 8881 §18.36.4): `Ok(Some(reply))` for a replay,
    /// `Ok(None)` to go ahead.
    pub fn create_session_check(
        &self,
        client: u64,
        seq: u32,
        principal: u32,
    ) -> Result<Option<Vec<u8>>, u32> {
        let inner = self.inner();
        let Some(c) = inner.clients.get(&client) else {
            return Err(NFS4ERR_STALE_CLIENTID);
        };
        // Before confirmation only the principal that made the record may confirm it
        // (RFC 8881 §18.36.4).
        if !c.confirmed && c.principal != principal {
            return Err(NFS4ERR_CLID_INUSE);
        }
        let expected = c.cs_seq.wrapping_add(1);
        if c.confirmed && seq == c.cs_seq {
            return match &c.cs_reply {
                Some(r) => Ok(Some(r.clone())),
                None => Err(NFS4ERR_SEQ_MISORDERED),
            };
        }
        if seq == expected {
            Ok(None)
        } else {
            Err(NFS4ERR_SEQ_MISORDERED)
        }
    }

    /// Makes a session for a client; confirms the client, dropping the state of an earlier
    /// record of the same owner (the client rebooted). Returns the session id and the owners
    /// whose state was dropped (so their locks can be released).
    pub fn create_session(
        &self,
        client: u64,
        seq: u32,
        fore: ChannelAttrs,
    ) -> Result<(SessionId, Vec<u64>), u32> {
        let mut inner = self.inner();
        let owner = match inner.clients.get(&client) {
            Some(c) => c.owner.clone(),
            None => return Err(NFS4ERR_STALE_CLIENTID),
        };
        if inner
            .sessions
            .values()
            .filter(|s| s.client == client)
            .count()
            >= MAX_SESSIONS_PER_CLIENT
        {
            return Err(NFS4ERR_DELAY);
        }
        let replaced: Vec<u64> = inner
            .clients
            .iter()
            .filter(|(id, c)| **id != client && c.owner == owner && c.confirmed)
            .map(|(id, _)| *id)
            .collect();
        for id in &replaced {
            Self::drop_client(&mut inner, *id);
        }
        inner.next += 1;
        let n = inner.next;
        let mut sid = [0u8; 16];
        sid[..8].copy_from_slice(&client.to_be_bytes());
        sid[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        sid[12..].copy_from_slice(&(n as u32).to_be_bytes());
        let slots = (0..fore.max_requests).map(|_| Slot::default()).collect();
        inner.sessions.insert(
            sid,
            Session {
                client,
                fore,
                slots,
            },
        );
        if let Some(c) = inner.clients.get_mut(&client) {
            c.confirmed = true;
            c.cs_seq = seq;
            c.renewed = Instant::now();
        }
        Ok((sid, replaced))
    }

    /// Keeps CREATE_SESSION's reply for a replay of the same sequence id.
    pub fn cache_create_session(&self, client: u64, reply: Vec<u8>) {
        if let Some(c) = self.inner().clients.get_mut(&client) {
            c.cs_reply = Some(reply);
        }
    }

    fn drop_client(inner: &mut Inner, id: u64) {
        inner.clients.remove(&id);
        inner.sessions.retain(|_, s| s.client != id);
        inner.states.retain(|_, s| s.client != id);
    }

    /// DESTROY_SESSION.
    pub fn destroy_session(&self, sid: &SessionId, principal: u32) -> Result<(), u32> {
        let mut inner = self.inner();
        let client = inner
            .sessions
            .get(sid)
            .map(|s| s.client)
            .ok_or(NFS4ERR_BADSESSION)?;
        if inner.clients.get(&client).map(|c| c.principal) != Some(principal) && principal != 0 {
            return Err(NFS4ERR_PERM);
        }
        inner.sessions.remove(sid);
        Ok(())
    }

    /// DESTROY_CLIENTID: only a client with no sessions (RFC 8881 §18.50.3).
    pub fn destroy_client(&self, client: u64) -> Result<Vec<u8>, u32> {
        let mut inner = self.inner();
        let owner = inner
            .clients
            .get(&client)
            .map(|c| c.owner.clone())
            .ok_or(NFS4ERR_STALE_CLIENTID)?;
        if inner.sessions.values().any(|s| s.client == client)
            || inner.states.values().any(|s| s.client == client)
        {
            return Err(NFS4ERR_CLIENTID_BUSY);
        }
        inner.clients.remove(&client);
        Ok(owner)
    }

    pub fn session_exists(&self, sid: &SessionId) -> bool {
        self.inner().sessions.contains_key(sid)
    }

    /// The client and fore channel of a session (BIND_CONN_TO_SESSION).
    pub fn session_client(&self, sid: &SessionId) -> Option<u64> {
        self.inner().sessions.get(sid).map(|s| s.client)
    }

    /// SEQUENCE (RFC 8881 §2.10.6.1): checks the slot, renews the lease.
    pub fn sequence(&self, sid: &SessionId, seq: u32, slot: u32, highest: u32) -> Result<Seq, u32> {
        let mut inner = self.inner();
        let session = inner.sessions.get_mut(sid).ok_or(NFS4ERR_BADSESSION)?;
        let nslots = session.slots.len() as u32;
        if slot >= nslots {
            return Err(NFS4ERR_BADSLOT);
        }
        if highest >= nslots || highest < slot {
            return Err(NFS4ERR_BAD_HIGH_SLOT);
        }
        let client = session.client;
        let fore = session.fore;
        let s = &mut session.slots[slot as usize];
        let out = if seq == s.seq && s.seq != 0 {
            if s.busy {
                return Err(NFS4ERR_DELAY);
            }
            match &s.reply {
                Some(r) => Seq::Replay(r.clone()),
                None => return Err(NFS4ERR_RETRY_UNCACHED_REP),
            }
        } else if seq == s.seq.wrapping_add(1) {
            s.seq = seq;
            s.busy = true;
            s.reply = None;
            Seq::New {
                client,
                highest_slot: nslots - 1,
                fore,
            }
        } else {
            return Err(NFS4ERR_SEQ_MISORDERED);
        };
        if let Some(c) = inner.clients.get_mut(&client) {
            c.renewed = Instant::now();
        }
        Ok(out)
    }

    /// Ends a request on a slot, keeping its reply for retransmissions when asked to.
    pub fn finish(&self, sid: &SessionId, slot: u32, reply: Option<Arc<Vec<u8>>>) {
        let mut inner = self.inner();
        if let Some(s) = inner
            .sessions
            .get_mut(sid)
            .and_then(|s| s.slots.get_mut(slot as usize))
        {
            s.busy = false;
            s.reply = reply;
        }
    }

    /// Clients whose lease ran out: their records, sessions and stateids go; the caller
    /// releases their locks. Returns (client id, owner) of each.
    pub fn expire(&self) -> Vec<(u64, Vec<u8>)> {
        let mut inner = self.inner();
        let lease = self.lease;
        let gone: Vec<(u64, Vec<u8>)> = inner
            .clients
            .iter()
            .filter(|(_, c)| c.renewed.elapsed() > lease)
            .map(|(id, c)| (*id, c.owner.clone()))
            .collect();
        for (id, _) in &gone {
            Self::drop_client(&mut inner, *id);
        }
        gone
    }

    /// RECLAIM_COMPLETE: `Err(COMPLETE_ALREADY)` the second time.
    pub fn reclaim_complete(&self, client: u64) -> Result<Vec<u8>, u32> {
        let mut inner = self.inner();
        let c = inner
            .clients
            .get_mut(&client)
            .ok_or(NFS4ERR_STALE_CLIENTID)?;
        if c.reclaim_complete {
            return Err(NFS4ERR_COMPLETE_ALREADY);
        }
        c.reclaim_complete = true;
        Ok(c.owner.clone())
    }

    pub fn reclaim_done(&self, client: u64) -> bool {
        self.inner()
            .clients
            .get(&client)
            .is_some_and(|c| c.reclaim_complete)
    }

    pub fn client_owner(&self, client: u64) -> Option<Vec<u8>> {
        self.inner().clients.get(&client).map(|c| c.owner.clone())
    }

    /// Owners of every confirmed client that holds state (the stable-storage record).
    pub fn owners_with_state(&self) -> Vec<Vec<u8>> {
        let inner = self.inner();
        let holding: std::collections::HashSet<u64> =
            inner.states.values().map(|s| s.client).collect();
        let mut owners: Vec<Vec<u8>> = inner
            .clients
            .iter()
            .filter(|(id, c)| c.confirmed && holding.contains(id))
            .map(|(_, c)| c.owner.clone())
            .collect();
        owners.sort();
        owners.dedup();
        owners
    }

    /// A new stateid for `rec`.
    pub fn add_state(&self, rec: StateRec) -> StateId {
        let mut inner = self.inner();
        let id = self.next_id(&mut inner);
        let mut other = [0u8; 12];
        other[..4].copy_from_slice(&self.epoch.to_be_bytes());
        other[4..].copy_from_slice(&id.to_be_bytes());
        let seq = rec.seq;
        inner.states.insert(other, rec);
        StateId { seq, other }
    }

    /// The open stateid an open-owner holds on a file, if any.
    pub fn find_open(&self, client: u64, owner: &[u8], file: FileId) -> Option<(Other, StateRec)> {
        self.find(|s| {
            s.client == client
                && s.file == file
                && matches!(&s.kind, StateKind::Open { owner: o, .. } if o == owner)
        })
    }

    /// The lock stateid a lock-owner holds on a file, if any.
    pub fn find_lock(&self, client: u64, owner: &[u8], file: FileId) -> Option<(Other, StateRec)> {
        self.find(|s| {
            s.client == client
                && s.file == file
                && matches!(&s.kind, StateKind::Lock { owner: o, .. } if o == owner)
        })
    }

    fn find(&self, f: impl Fn(&StateRec) -> bool) -> Option<(Other, StateRec)> {
        self.inner()
            .states
            .iter()
            .find(|(_, s)| f(s))
            .map(|(o, s)| (*o, s.clone()))
    }

    /// Looks a stateid up for `client` (RFC 8881 §8.2.2-§8.2.4 checks): seqid 0 matches any.
    pub fn get(&self, client: u64, sid: &StateId) -> Result<StateRec, u32> {
        let inner = self.inner();
        let Some(rec) = inner.states.get(&sid.other) else {
            let epoch =
                u32::from_be_bytes([sid.other[0], sid.other[1], sid.other[2], sid.other[3]]);
            return Err(if epoch != self.epoch && !sid.is_special() {
                NFS4ERR_STALE_STATEID
            } else {
                NFS4ERR_BAD_STATEID
            });
        };
        if rec.client != client {
            return Err(NFS4ERR_BAD_STATEID);
        }
        if sid.seq != 0 {
            if sid.seq > rec.seq {
                return Err(NFS4ERR_BAD_STATEID);
            }
            if sid.seq < rec.seq {
                return Err(NFS4ERR_OLD_STATEID);
            }
        }
        Ok(rec.clone())
    }

    /// Replaces a state's record and bumps its seqid; returns the new stateid.
    pub fn update(&self, other: &Other, f: impl FnOnce(&mut StateRec)) -> Option<StateId> {
        let mut inner = self.inner();
        let rec = inner.states.get_mut(other)?;
        f(rec);
        rec.seq = rec.seq.wrapping_add(1).max(1);
        Some(StateId {
            seq: rec.seq,
            other: *other,
        })
    }

    pub fn remove(&self, other: &Other) -> Option<StateRec> {
        self.inner().states.remove(other)
    }

    /// Lock stateids opened through an open stateid.
    pub fn locks_of_open(&self, open: &Other) -> Vec<(Other, StateRec)> {
        self.inner()
            .states
            .iter()
            .filter(|(_, s)| matches!(&s.kind, StateKind::Lock { open: o, .. } if o == open))
            .map(|(o, s)| (*o, s.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(slots: u32) -> ChannelAttrs {
        ChannelAttrs {
            header_pad: 0,
            max_request: 1 << 20,
            max_response: 1 << 20,
            max_response_cached: 4096,
            max_ops: 16,
            max_requests: slots,
        }
    }

    fn session(st: &State) -> (u64, SessionId) {
        let x = st.exchange_id(b"c1", [1; 8], 0, false).unwrap();
        assert!(!x.confirmed);
        assert_eq!(st.create_session_check(x.client, x.seq, 0), Ok(None));
        assert_eq!(
            st.create_session_check(x.client, x.seq, 7),
            Err(NFS4ERR_CLID_INUSE)
        );
        let (sid, _) = st.create_session(x.client, x.seq, attrs(4)).unwrap();
        (x.client, sid)
    }

    #[test]
    fn sessions_per_client_are_bounded() {
        let st = State::new(Duration::from_secs(60));
        let (client, _) = session(&st);
        for i in 1..MAX_SESSIONS_PER_CLIENT as u32 {
            st.create_session(client, 1 + i, attrs(1)).unwrap();
        }
        assert_eq!(
            st.create_session(client, 99, attrs(1)).err(),
            Some(NFS4ERR_DELAY)
        );
    }

    #[test]
    fn sequence_replays_misorders_and_bounds_slots() {
        let st = State::new(Duration::from_secs(60));
        let (_, sid) = session(&st);
        assert!(matches!(st.sequence(&sid, 1, 0, 0), Ok(Seq::New { .. })));
        // In progress: a retransmission waits.
        assert_eq!(st.sequence(&sid, 1, 0, 0).err(), Some(NFS4ERR_DELAY));
        st.finish(&sid, 0, Some(Arc::new(vec![1, 2, 3])));
        match st.sequence(&sid, 1, 0, 0) {
            Ok(Seq::Replay(r)) => assert_eq!(*r, vec![1, 2, 3]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            st.sequence(&sid, 5, 0, 0).err(),
            Some(NFS4ERR_SEQ_MISORDERED)
        );
        assert_eq!(st.sequence(&sid, 1, 4, 4).err(), Some(NFS4ERR_BADSLOT));
        assert_eq!(
            st.sequence(&[9; 16], 1, 0, 0).err(),
            Some(NFS4ERR_BADSESSION)
        );
        st.finish(&sid, 1, None);
        assert!(matches!(st.sequence(&sid, 1, 1, 1), Ok(Seq::New { .. })));
        st.finish(&sid, 1, None);
        assert_eq!(
            st.sequence(&sid, 1, 1, 1).err(),
            Some(NFS4ERR_RETRY_UNCACHED_REP)
        );
    }

    #[test]
    fn exchange_id_recognises_the_same_and_a_rebooted_client() {
        let st = State::new(Duration::from_secs(60));
        let (client, _) = session(&st);
        let again = st.exchange_id(b"c1", [1; 8], 0, false).unwrap();
        assert_eq!((again.client, again.confirmed), (client, true));
        assert_eq!(
            st.exchange_id(b"c1", [1; 8], 5, false),
            Err(NFS4ERR_CLID_INUSE)
        );
        let rebooted = st.exchange_id(b"c1", [2; 8], 0, false).unwrap();
        assert_ne!(rebooted.client, client);
        let (_, replaced) = st
            .create_session(rebooted.client, rebooted.seq, attrs(1))
            .unwrap();
        assert_eq!(replaced, vec![client]);
        assert_eq!(
            st.exchange_id(b"nobody", [1; 8], 0, true),
            Err(NFS4ERR_NOENT)
        );
    }

    #[test]
    fn stateids_check_owner_and_seqid() {
        let st = State::new(Duration::from_secs(60));
        let (client, _) = session(&st);
        let sid = st.add_state(StateRec {
            client,
            file: FileId(3),
            seq: 1,
            kind: StateKind::Open {
                owner: b"o".to_vec(),
                access: 1,
                deny: 0,
            },
        });
        assert!(st.get(client, &sid).is_ok());
        assert_eq!(st.get(client + 1, &sid).err(), Some(NFS4ERR_BAD_STATEID));
        let newer = st.update(&sid.other, |_| {}).unwrap();
        assert_eq!(st.get(client, &sid).err(), Some(NFS4ERR_OLD_STATEID));
        assert!(st.get(client, &newer).is_ok());
        let zero_seq = StateId { seq: 0, ..sid };
        assert!(st.get(client, &zero_seq).is_ok());
        let stale = StateId {
            seq: 1,
            other: [7; 12],
        };
        assert_eq!(st.get(client, &stale).err(), Some(NFS4ERR_STALE_STATEID));
    }

    #[test]
    fn expired_clients_lose_sessions_and_state() {
        let st = State::new(Duration::from_millis(10));
        let (client, sid) = session(&st);
        std::thread::sleep(Duration::from_millis(30));
        let gone = st.expire();
        assert_eq!(gone, vec![(client, b"c1".to_vec())]);
        assert!(!st.session_exists(&sid));
    }
}
