//! Group commit for blocking code: one fsync made durable on behalf of every change that
//! finished before it started.
//!
//! A caller makes its change (a WAL frame written, a directory entry created), then calls
//! [`GroupSync::sync`]. If no sync is running it leads one: it notes how many changes have been
//! asked for so far, runs the sync outside the lock, and marks them all durable. If a sync is
//! already running it may have started before this change, so the caller waits for it to end
//! and then either finds itself covered (another leader took it) or leads the next one. While
//! one fsync runs, every operation that arrives queues behind it and the next fsync covers them
//! all: N concurrent CREATEs or COMMITs cost about two fsync latencies, not N.
//!
//! A failed sync marks nothing durable; each waiter still not covered retries as a leader, and
//! the leader's caller gets the error.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct GroupSync {
    state: Mutex<State>,
    ended: Condvar,
    syncs: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Changes announced so far (tickets handed out).
    asked: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    running: bool,
}

impl GroupSync {
    /// Returns once a `sync` that started after this call began has succeeded: everything the
    /// caller changed before calling is then as durable as `sync` makes it.
    pub fn sync<E>(&self, sync: impl Fn() -> Result<(), E>) -> Result<(), E> {
        let mut st = self.state();
        st.asked += 1;
        let ticket = st.asked;
        loop {
            if st.durable >= ticket {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                let covers = st.asked;
                drop(st);
                let result = sync();
                self.syncs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                st = self.state();
                st.running = false;
                if result.is_ok() {
                    st.durable = st.durable.max(covers);
                }
                self.ended.notify_all();
                return result;
            }
            st = self
                .ended
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Syncs run so far (fewer than the calls when operations overlapped).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is three counters updated in single statements: a panic cannot leave it
        // half-changed.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_syncs() {
        let group = Arc::new(GroupSync::default());
        let calls = 32;
        let barrier = Arc::new(std::sync::Barrier::new(calls));
        let threads: Vec<_> = (0..calls)
            .map(|_| {
                let (group, barrier) = (group.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    group.sync(|| {
                        std::thread::sleep(Duration::from_millis(20));
                        Ok::<(), ()>(())
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert!(
            group.syncs() < calls as u64 / 2,
            "{} syncs for {calls} concurrent callers",
            group.syncs()
        );
    }

    /// A caller is covered only by a sync that started after it asked: the one already running
    /// when it arrives may have missed its change.
    #[test]
    fn a_sync_running_on_arrival_does_not_cover_the_caller() {
        let group = Arc::new(GroupSync::default());
        // Bumped by each change before its caller syncs; a sync records what it saw.
        let changes = Arc::new(AtomicU64::new(0));
        let synced = Arc::new(AtomicU64::new(0));
        let (started, leader_in_sync) = std::sync::mpsc::channel();
        let leader = {
            let (group, changes, synced) = (group.clone(), changes.clone(), synced.clone());
            std::thread::spawn(move || {
                changes.fetch_add(1, Ordering::SeqCst);
                group.sync(|| {
                    let seen = changes.load(Ordering::SeqCst);
                    let _ = started.send(());
                    std::thread::sleep(Duration::from_millis(100));
                    synced.fetch_max(seen, Ordering::SeqCst);
                    Ok::<(), ()>(())
                })
            })
        };
        leader_in_sync.recv().unwrap();
        changes.fetch_add(1, Ordering::SeqCst);
        let mine = changes.load(Ordering::SeqCst);
        group
            .sync(|| {
                synced.fetch_max(changes.load(Ordering::SeqCst), Ordering::SeqCst);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert!(
            synced.load(Ordering::SeqCst) >= mine,
            "returned before a sync covered the change"
        );
        leader.join().unwrap().unwrap();
        assert_eq!(group.syncs(), 2);
    }

    #[test]
    fn a_failed_sync_covers_nobody_and_the_next_caller_retries() {
        let group = GroupSync::default();
        assert_eq!(group.sync(|| Err("disk gone")), Err("disk gone"));
        assert_eq!(group.sync(|| Ok::<(), &str>(())), Ok(()));
        assert_eq!(group.syncs(), 2);
    }
}
