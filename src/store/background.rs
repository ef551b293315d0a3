//! Threads for the CPU-heavy work of filling the bucket (sealing chunks: BLAKE3, lz4, AES-GCM),
//! at a lower CPU priority than the threads that serve clients.
//!
//! A write is acknowledged once it is in the local journal; uploading it is background work. On a
//! small appliance (two cores) sealing at full priority takes CPU from the initiator's own I/O, so
//! a burst that fits the upload buffer is written at a fraction of local-disk speed. Niced threads
//! use whatever CPU clients leave idle; under a sustained overload the upload buffer fills, writers
//! wait, the CPU frees up and the uploads catch up (back-pressure as in docs/design.md §4). Opening
//! chunks for reads stays on tokio's blocking pool: a client waits on it.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

/// How much lower than the daemon's other threads: a nice of +5 is about a third of the CPU
/// share under contention (the kernel's weights are 1024 and 335), and all of it when nothing
/// competes. Lower still (+10, a tenth) starved uploads behind unrelated work on a busy host.
const NICE: i32 = 5;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    jobs: Mutex<Sender<Job>>,
}

static POOL: OnceLock<Option<Pool>> = OnceLock::new();

/// The background work ended without an answer (its thread panicked, or none could start).
#[derive(Debug, thiserror::Error)]
#[error("background seal thread failed")]
pub struct Lost;

/// Runs `f` on a background thread and returns its result.
pub async fn run<T, F>(f: F) -> Result<T, Lost>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some(pool) = POOL.get_or_init(start) else {
        // No thread could be started (resource limits): run at normal priority instead.
        return tokio::task::spawn_blocking(f).await.map_err(|_| Lost);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // The caller may have gone away (a cancelled upload); nothing to tell then.
        let _ = tx.send(f());
    });
    pool.jobs
        .lock()
        .map_err(|_| Lost)?
        .send(job)
        .map_err(|_| Lost)?;
    rx.await.map_err(|_| Lost)
}

fn start() -> Option<Pool> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        let spawned = std::thread::Builder::new()
            .name(format!("tidegate-seal-{i}"))
            .spawn(move || worker(&rx));
        match spawned {
            Ok(_) => started += 1,
            Err(e) => tracing::warn!(error = %e, "could not start a background seal thread"),
        }
    }
    (started > 0).then(|| Pool {
        jobs: Mutex::new(tx),
    })
}

fn worker(jobs: &Mutex<Receiver<Job>>) {
    // Linux's nice is per thread: this lowers only the calling thread. Lowering needs no
    // privilege; if it is refused anyway the work simply runs at normal priority.
    let tid = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(tid))
        .and_then(|nice| rustix::process::setpriority_process(Some(tid), (nice + NICE).min(19)));
    if let Err(e) = lowered {
        tracing::debug!(error = %e, "background seal thread keeps normal priority");
    }
    loop {
        // A poisoned lock means another worker panicked while taking a job; the queue is intact.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        // A panicking job drops its answer channel (the caller sees `Lost`); the thread lives on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_at_lower_priority_and_survives_a_panic() {
        let nice = run(|| {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("own priority")
        })
        .await
        .expect("answer");
        let ours = rustix::process::getpriority_process(None).expect("process priority");
        assert_eq!(nice, (ours + NICE).min(19));
        assert!(run(|| -> u8 { panic!("job fails") }).await.is_err());
        let sums = futures::future::join_all((0..64u64).map(|i| run(move || i * 2))).await;
        let sums: Vec<u64> = sums.into_iter().map(|r| r.expect("answer")).collect();
        assert_eq!(sums, (0..64u64).map(|i| i * 2).collect::<Vec<_>>());
    }
}
