//! The queue between commits and a job's function workers: bounded, never waited on by a
//! commit, and backed by a scan of the index for whatever it had no room for.
//!
//! In a device cluster each device's queue holds the objects that device committed; a scan takes
//! only the objects this device claims (`claims`), so two devices do not run the same object.
//!
//! Invariant: a key is queued at most once and run by one worker at a time; the queue is idle
//! only when nothing is queued, running or left to a scan.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::Notify;

use super::outcomes::Outcomes;
use super::{is_derived, matches};
use crate::gateway::import::device::{Device, Inner};
use crate::gateway::import::record::ObjectRecord;

/// The device's end of the queue: `Inner` holds one; empty when the job has no function.
#[derive(Default)]
pub(crate) struct Hook {
    pub(super) queue: OnceLock<Arc<Queue>>,
    /// A seal waits for the queue: the runs still take their derived objects and metadata.
    pub(super) finishing: AtomicBool,
}

impl Hook {
    /// Whether a seal is waiting for the functions (their writes are still taken).
    pub(crate) fn finishing(&self) -> bool {
        self.finishing.load(Ordering::SeqCst)
    }

    pub(crate) fn set_finishing(&self, finishing: bool) {
        self.finishing.store(finishing, Ordering::SeqCst);
    }

    /// Offers a just-committed object. Never waits: it runs under the commit lock.
    pub(crate) fn committed(&self, rec: &ObjectRecord) {
        if let Some(q) = self.queue.get() {
            q.offer(rec);
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        if let Some(q) = self.queue.get() {
            q.close();
        }
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) queued: VecDeque<String>,
    pub(super) queued_set: HashSet<String>,
    pub(super) running: HashSet<String>,
    /// Objects may match with no outcome and not be queued: scan the index.
    pub(super) rescan: bool,
    /// A worker is scanning (it reads the cluster meanwhile): not idle.
    pub(super) scanning: bool,
    pub(super) closed: bool,
    /// The object version (SHA-256) each key's last recorded run saw.
    pub(super) done: HashMap<String, String>,
    /// Offers the queue had no room for (left to a scan).
    pub(super) overflows: u64,
}

pub(super) struct Queue {
    pub(super) pattern: String,
    /// Keys held at most (`QUEUE_OBJECTS`; smaller in tests).
    pub(super) capacity: usize,
    pub(super) state: Mutex<State>,
    pub(super) work: Notify,
    pub(super) idle: Notify,
    /// Where runs are recorded; a cluster's scan reads the other devices' runs there too.
    pub(super) outcomes: Outcomes,
}

impl Queue {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change is a few field updates with no I/O: a panic leaves them usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn wants(&self, rec: &ObjectRecord) -> bool {
        matches(&self.pattern, &rec.key) && !is_derived(rec)
    }

    pub(super) fn offer(&self, rec: &ObjectRecord) {
        if !self.wants(rec) {
            return;
        }
        let mut st = self.lock();
        if st.done.get(&rec.key) == Some(&rec.sha256) || st.queued_set.contains(&rec.key) {
            return;
        }
        if st.queued.len() >= self.capacity {
            st.rescan = true;
            st.overflows += 1;
        } else {
            st.queued.push_back(rec.key.clone());
            st.queued_set.insert(rec.key.clone());
        }
        drop(st);
        self.work.notify_one();
    }

    /// Asks the workers for a scan (before a seal: objects no queue holds are found).
    pub(super) fn request_rescan(&self) {
        self.lock().rescan = true;
        self.work.notify_one();
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.work.notify_waiters();
        self.idle.notify_waiters();
    }

    pub(super) fn is_idle(&self) -> bool {
        let st = self.lock();
        st.closed || (st.queued.is_empty() && st.running.is_empty() && !st.rescan && !st.scanning)
    }

    pub(super) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    /// The next key to run (marked running), or `None` once the device is gone.
    pub(super) async fn next(&self, device: &Weak<Inner>) -> Option<String> {
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let scan = {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                let st = &mut *st;
                if let Some(at) = st.queued.iter().position(|k| !st.running.contains(k)) {
                    let key = st.queued.remove(at)?;
                    st.queued_set.remove(&key);
                    st.running.insert(key.clone());
                    return Some(key);
                }
                st.scanning = std::mem::take(&mut st.rescan);
                st.scanning
            };
            if scan {
                let inner = device.upgrade()?;
                self.rescan(&Device { inner }).await;
                continue;
            }
            if self.is_idle() {
                self.idle.notify_waiters();
            }
            notified.await;
        }
    }

    /// Queues objects that match, that this device claims, and have no outcome for their
    /// current version, up to the queue's bound; asks for another scan if more remain. In a
    /// cluster the scan covers the cluster's data set and the runs other devices recorded.
    pub(super) async fn rescan(&self, device: &Device) {
        if device.in_cluster()
            && let Err(e) = device.sync_all().await
        {
            tracing::warn!(job = %device.job_id(), error = %crate::error_chain::chain(&e), "functions on PUT: the scan uses this device's index as it is");
        }
        let candidates: Vec<Arc<ObjectRecord>> = device
            .read_index()
            .values()
            .filter(|rec| self.wants(rec) && claims(device, rec))
            .cloned()
            .collect();
        let recorded = if device.in_cluster() {
            self.outcomes.done(&candidates).await.unwrap_or_else(|e| {
                tracing::warn!(job = %device.job_id(), error = %crate::error_chain::chain(&e), "functions on PUT: the cluster's outcomes are not listed; the scan uses this device's");
                Default::default()
            }).0
        } else {
            HashMap::new()
        };
        let mut st = self.lock();
        st.scanning = false;
        for rec in candidates {
            let (key, sha) = (&rec.key, &rec.sha256);
            if st.done.get(key) == Some(sha)
                || recorded.get(key) == Some(sha)
                || st.queued_set.contains(key)
                || st.running.contains(key)
            {
                continue;
            }
            if st.queued.len() >= self.capacity {
                st.rescan = true;
                break;
            }
            st.queued.push_back(key.clone());
            st.queued_set.insert(key.clone());
        }
        drop(st);
        self.work.notify_waiters();
    }

    pub(super) fn finish(&self, key: &str, ran: Option<&str>) {
        let mut st = self.lock();
        st.running.remove(key);
        if let Some(sha) = ran {
            st.done.insert(key.to_owned(), sha.to_owned());
        }
        drop(st);
        if self.is_idle() {
            self.idle.notify_waiters();
        }
        self.work.notify_one();
    }
}

/// Whether a scan on `device` takes `rec` (never asked of an object offered at its commit, which
/// is this device's): on a standalone device every object; in a cluster the objects this device
/// committed, and those committed by a device that is not up now when this device is the first
/// device up (by name), so an object whose device died before running it is run once, by one
/// device. Two devices may still both run an object when they disagree on who is up (the
/// membership each last read from Garage), or when a device returns while another takes its
/// objects; a run is idempotent for the data set (its derived objects are replaced).
pub(super) fn claims(device: &Device, rec: &ObjectRecord) -> bool {
    let Some(link) = device.link() else {
        return true;
    };
    if rec.committed_by.as_deref() == Some(link.device.as_str()) {
        return true;
    }
    let Some(up) = link.members.up() else {
        return false;
    };
    let orphan = rec.committed_by.as_ref().is_none_or(|d| !up.contains(d));
    orphan && up.iter().min() == Some(&link.device)
}
