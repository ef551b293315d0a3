//! Sessions (RFC 7143 §4.1): the table of live sessions by TSIH, and per session the CmdSN
//! window, the tasks in flight (for task management) and the set of its connections.
//!
//! Owns session lifetime: a session ends when its last connection ends or on logout/reset, and
//! then its target's logical units hear `nexus_lost` exactly once. Invariant: ExpCmdSN only
//! advances over CmdSNs actually received (§3.2.2.1), so the window never skips a command.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::login::{CMD_WINDOW, SessionKind};
use super::params::Params;
use crate::scsi::Nexus;

/// Serial number comparison (RFC 1982 with 32-bit serials, RFC 7143 §4.2.2.1).
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < (1 << 31)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct CmdWindow {
    exp: u32,
    /// The highest MaxCmdSN advertised; initiators ignore a lower one (§4.2.2.1), so the
    /// window we enforce never shrinks below it.
    max: u32,
    /// Received CmdSNs above `exp` (commands arriving out of order over several connections).
    ahead: BTreeSet<u32>,
}

/// Tasks one session may have in flight, window plus immediate commands.
const MAX_TASKS: usize = 2 * CMD_WINDOW as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddTask {
    Added,
    DuplicateTag,
    /// Answer TASK SET FULL (SAM-5 §5.3.1).
    Full,
}

/// A task the session knows about, for ABORT TASK and friends.
#[derive(Debug)]
pub struct TaskInfo {
    pub lun: u64,
    pub abort: Option<AbortHandle>,
}

/// How many completed task tags a session remembers for ABORT TASK answers.
const COMPLETED_REMEMBERED: usize = 256;

#[derive(Debug)]
pub struct Session {
    pub tsih: u16,
    pub isid: [u8; 6],
    pub initiator_name: String,
    pub kind: SessionKind,
    pub nexus: Arc<Nexus>,
    pub params: Params,
    window: Mutex<CmdWindow>,
    tasks: Mutex<HashMap<u32, TaskInfo>>,
    /// Tags of the last tasks that completed with a response, newest last: an ABORT TASK for one
    /// of them must say "task does not exist", not "function complete" (which §11.5.1 keeps for
    /// commands the target never received).
    completed: Mutex<std::collections::VecDeque<u32>>,
    connections: Mutex<BTreeSet<u16>>,
    closed: watch::Sender<bool>,
}

impl Session {
    pub fn target_iqn(&self) -> Option<&str> {
        match &self.kind {
            SessionKind::Discovery => None,
            SessionKind::Normal(t) => Some(&t.iqn),
        }
    }

    /// ExpCmdSN and MaxCmdSN as they stand now. The window shrinks by the tasks in flight, so
    /// a session never has more than about `CMD_WINDOW` commands queued (flow control,
    /// §4.2.2.1).
    pub fn window(&self) -> (u32, u32) {
        let in_flight = u32::try_from(lock(&self.tasks).len()).unwrap_or(u32::MAX);
        let mut w = lock(&self.window);
        let want = w
            .exp
            .wrapping_add(CMD_WINDOW.saturating_sub(in_flight))
            .wrapping_sub(1);
        if sn_lt(w.max, want) {
            w.max = want;
        }
        (w.exp, w.max)
    }

    /// Admits a non-immediate command numbered `cmd_sn`; false means it lies outside the window
    /// or is a duplicate and must be dropped silently (§3.2.2.1).
    pub fn admit(&self, cmd_sn: u32) -> bool {
        let mut w = lock(&self.window);
        let max = w.max;
        // MaxCmdSN = ExpCmdSN - 1 means an empty window.
        let size = max.wrapping_sub(w.exp).wrapping_add(1);
        let in_window = cmd_sn.wrapping_sub(w.exp) < size;
        if !in_window || !w.ahead.insert(cmd_sn) {
            return false;
        }
        loop {
            let exp = w.exp;
            if !w.ahead.remove(&exp) {
                break;
            }
            w.exp = w.exp.wrapping_add(1);
        }
        true
    }

    /// Registers a task; a tag already in use is refused (§11.2.1.8).
    pub fn add_task(&self, itt: u32, info: TaskInfo) -> AddTask {
        let mut t = lock(&self.tasks);
        if t.contains_key(&itt) {
            return AddTask::DuplicateTag;
        }
        // Immediate commands bypass the CmdSN window, so the window alone cannot bound them.
        if t.len() >= MAX_TASKS {
            return AddTask::Full;
        }
        t.insert(itt, info);
        AddTask::Added
    }

    pub fn set_abort(&self, itt: u32, abort: AbortHandle) {
        if let Some(t) = lock(&self.tasks).get_mut(&itt) {
            t.abort = Some(abort);
        }
    }

    /// Forgets a finished task; false when it was aborted meanwhile.
    pub fn finish_task(&self, itt: u32) -> bool {
        let finished = lock(&self.tasks).remove(&itt).is_some();
        if finished {
            let mut done = lock(&self.completed);
            if done.len() >= COMPLETED_REMEMBERED {
                done.pop_front();
            }
            done.push_back(itt);
        }
        finished
    }

    /// Whether `itt` named a task that completed recently (its response went out).
    pub fn recently_completed(&self, itt: u32) -> bool {
        lock(&self.completed).contains(&itt)
    }

    /// Aborts the tasks matching `pred`, returning their tags (so connections can drop any
    /// partially received write data).
    pub fn abort_tasks(&self, pred: impl Fn(u32, &TaskInfo) -> bool) -> Vec<u32> {
        let mut tasks = lock(&self.tasks);
        let tags: Vec<u32> = tasks
            .iter()
            .filter(|(itt, t)| pred(**itt, t))
            .map(|(itt, _)| *itt)
            .collect();
        for itt in &tags {
            if let Some(a) = tasks.remove(itt).and_then(|t| t.abort) {
                a.abort();
            }
        }
        tags
    }

    pub fn has_task(&self, itt: u32) -> bool {
        lock(&self.tasks).contains_key(&itt)
    }

    pub fn subscribe_closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Asks every connection of the session to close (logout, reinstatement, cold reset).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// All sessions of one portal, by TSIH.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<u16, Arc<Session>>>,
    next_tsih: AtomicU16,
}

/// Why a connection could not join a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    NoSuchSession,
    TooManyConnections,
}

pub struct NewSession {
    pub isid: [u8; 6],
    pub initiator_name: String,
    pub kind: SessionKind,
    pub params: Params,
    pub cmd_sn: u32,
    pub nexus: Nexus,
}

impl Sessions {
    /// Creates a session with its first connection `cid`. A session with the same initiator,
    /// ISID and target is reinstated: the old one is closed (§6.3.5).
    pub fn create(&self, s: NewSession, cid: u16) -> Arc<Session> {
        let mut map = lock(&self.map);
        let iqn = match &s.kind {
            SessionKind::Discovery => None,
            SessionKind::Normal(t) => Some(t.iqn.clone()),
        };
        for old in map.values() {
            if old.isid == s.isid
                && old.initiator_name == s.initiator_name
                && old.target_iqn().map(str::to_owned) == iqn
            {
                old.close();
            }
        }
        let tsih = loop {
            // TSIH 0 is reserved for "new session" in login requests (§11.12.6).
            let t = self
                .next_tsih
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if t != 0 && !map.contains_key(&t) {
                break t;
            }
        };
        let (closed, _) = watch::channel(false);
        let session = Arc::new(Session {
            tsih,
            isid: s.isid,
            initiator_name: s.initiator_name,
            kind: s.kind,
            nexus: Arc::new(s.nexus),
            params: s.params,
            window: Mutex::new(CmdWindow {
                exp: s.cmd_sn,
                max: s.cmd_sn.wrapping_add(CMD_WINDOW - 1),
                ahead: BTreeSet::new(),
            }),
            tasks: Mutex::new(HashMap::new()),
            completed: Mutex::new(std::collections::VecDeque::new()),
            connections: Mutex::new(BTreeSet::from([cid])),
            closed,
        });
        map.insert(tsih, session.clone());
        session
    }

    /// Adds connection `cid` to an existing session (§5.3.1: same ISID and TSIH).
    pub fn join(
        &self,
        tsih: u16,
        isid: [u8; 6],
        initiator_name: &str,
        cid: u16,
    ) -> Result<Arc<Session>, JoinError> {
        let map = lock(&self.map);
        let s = map
            .get(&tsih)
            .filter(|s| s.isid == isid && s.initiator_name == initiator_name && !*s.closed.borrow())
            .ok_or(JoinError::NoSuchSession)?;
        let mut conns = lock(&s.connections);
        // A login with a CID already in use replaces that connection (§5.3.4); we let the old
        // one notice its socket closing and count the CID once.
        if !conns.contains(&cid)
            && u32::try_from(conns.len()).unwrap_or(u32::MAX) >= s.params.max_connections
        {
            return Err(JoinError::TooManyConnections);
        }
        conns.insert(cid);
        Ok(s.clone())
    }

    /// Removes connection `cid`; when it was the last, the session ends and its units hear
    /// `nexus_lost`.
    pub fn leave(&self, session: &Arc<Session>, cid: u16) {
        let last = {
            let mut conns = lock(&session.connections);
            conns.remove(&cid);
            conns.is_empty()
        };
        if !last {
            return;
        }
        {
            let mut map = lock(&self.map);
            if map
                .get(&session.tsih)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                map.remove(&session.tsih);
            }
        }
        session.abort_tasks(|_, _| true);
        session.close();
        if let SessionKind::Normal(t) = &session.kind {
            for unit in t.luns.units() {
                unit.nexus_lost(&session.nexus);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live session (for target resets and shutdown).
    pub fn all(&self) -> Vec<Arc<Session>> {
        lock(&self.map).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_session(sessions: &Sessions, cmd_sn: u32) -> Arc<Session> {
        sessions.create(
            NewSession {
                isid: [1; 6],
                initiator_name: "iqn.i".into(),
                kind: SessionKind::Discovery,
                params: Params {
                    max_connections: 2,
                    ..Params::default()
                },
                cmd_sn,
                nexus: Nexus {
                    initiator_port: "p".into(),
                    initiator_name: "iqn.i".into(),
                    target_port: "t".into(),
                    relative_port: 1,
                },
            },
            0,
        )
    }

    #[test]
    fn sn_lt_wraps() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(2, 2));
        assert!(!sn_lt(0, u32::MAX));
    }

    #[test]
    fn admit_advances_over_received_commands_only() {
        let s = new_session(&Sessions::default(), u32::MAX);
        assert!(s.admit(0)); // ahead of ExpCmdSN
        assert_eq!(s.window().0, u32::MAX);
        assert!(s.admit(u32::MAX));
        assert_eq!(s.window().0, 1);
        assert!(!s.admit(0)); // duplicate
        assert!(!s.admit(1 + CMD_WINDOW)); // beyond MaxCmdSN
        assert!(s.admit(CMD_WINDOW));
    }

    #[test]
    fn join_respects_max_connections_and_leave_ends_session() {
        let sessions = Sessions::default();
        let s = new_session(&sessions, 1);
        assert!(sessions.join(s.tsih, [1; 6], "iqn.i", 1).is_ok());
        assert_eq!(
            sessions.join(s.tsih, [1; 6], "iqn.i", 2).err(),
            Some(JoinError::TooManyConnections)
        );
        assert_eq!(
            sessions.join(s.tsih, [2; 6], "iqn.i", 2).err(),
            Some(JoinError::NoSuchSession)
        );
        sessions.leave(&s, 0);
        assert_eq!(sessions.len(), 1);
        sessions.leave(&s, 1);
        assert!(sessions.is_empty());
        assert!(*s.subscribe_closed().borrow());
    }
}
