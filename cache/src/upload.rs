//! The uploader: a task that picks dirty objects and uploads them through the sink.
//!
//! Owns scheduling and retry; the index says what is dirty. Invariants: at most one upload per
//! object at a time and at most `upload_concurrency` overall; an upload marks clean only the
//! records up to the seq captured together with the content it sent; failures are retried
//! forever (capped exponential backoff), dirty data is never given up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use tokio::task::JoinSet;

use crate::fetch::fetch_shared;
use crate::{CacheError, Inner};

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut jobs = JoinSet::new();
    loop {
        let wake = inner.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let next = schedule(&inner, &mut jobs);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut wake => {}
            _ = sleep => {}
            Some(_) = jobs.join_next() => {}
        }
    }
}

/// Starts every upload that is due and allowed; returns when the next one becomes due.
fn schedule(inner: &Arc<Inner>, jobs: &mut JoinSet<()>) -> Option<Instant> {
    let cfg = &inner.config;
    let mut st = inner.state();
    if st.closed {
        return None;
    }
    // Every slot taken: the scan below would start nothing. A running upload's end wakes the
    // loop (`join_next`), which schedules again then; writers wake it far more often than
    // uploads end, and each scan walks every dirty object under the index lock.
    if st.uploading >= cfg.upload_concurrency {
        return None;
    }
    let now = Instant::now();
    let urgent = st.writers_waiting > 0
        || st.draining > 0
        || st.journal.total_bytes() > cfg.buffer_capacity / 2;
    // While reads or writes keep arriving, settled objects wait for a pause of the settle time
    // (or their maximum age, or pressure): uploading in the middle of a burst takes the CPU and
    // disk the upload buffer exists to give the client, and uploads again what a write burst
    // rewrites. Reads count too: a tape read back right after it was written (a backup's
    // verify pass) otherwise shares the CPU with the upload of everything it is reading.
    let busy_until = st
        .last_io_at
        .map(|t| t + cfg.upload_delay)
        .filter(|t| *t > now);
    let mut due = Vec::new();
    let mut next: Option<Instant> = None;
    let synced = st.journal.synced_seq();
    let promised = st.journal.promised_seq();
    for name in &st.dirty_names {
        let Some(obj) = st.objects.get(name) else {
            continue;
        };
        let Some(d) = &obj.dirty else { continue };
        if obj.uploading {
            continue;
        }
        let mut at = if urgent || d.urgent {
            now
        } else {
            // Coalesce: wait for the object to settle, but never past its maximum age.
            let settled = d.last_write_at + cfg.upload_delay;
            let settled = busy_until.map_or(settled, |b| settled.max(b));
            settled.min(d.first_at + cfg.upload_max_age)
        };
        if let Some(r) = obj.retry_at {
            at = at.max(r);
        }
        if at <= now {
            due.push((d.needed_from(synced, promised), name.clone()));
        } else {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    // Oldest first: that is what lets FIFO reclaim free the oldest segment soonest. Only the
    // oldest that fit in the free slots are sorted: under pressure every dirty object is due.
    let free = cfg.upload_concurrency - st.uploading;
    if due.len() > free {
        due.select_nth_unstable(free - 1);
        due.truncate(free);
    }
    due.sort_unstable();
    for (_, name) in due {
        if let Some(obj) = st.objects.get_mut(&name) {
            obj.uploading = true;
            st.uploading += 1;
            jobs.spawn(upload_one(inner.clone(), name));
        }
    }
    next
}

async fn upload_one(inner: Arc<Inner>, name: String) {
    let result = match content(&inner, &name).await {
        Ok(c) => inner
            .sink
            .upload(&name, c.data.clone())
            .await
            .map(|()| c)
            .map_err(|source| CacheError::Sink {
                name: name.clone(),
                source,
            }),
        Err(e) => Err(e),
    };
    // The uploaded content becomes the cache file's clean content. Written before the lock is
    // taken and off the runtime's threads: a 1 MiB write into fresh page cache takes
    // milliseconds, and under the index lock it stalled every reader and writer of the cache.
    // Safe unlocked: the object is `uploading`, so it is not evicted, and its extents (dropped
    // only below, under the lock) shadow every range whose file bytes change here.
    let result = match result {
        Ok(c) => {
            let files = inner.state().files();
            let (n, data) = (name.clone(), c.data.clone());
            match tokio::task::spawn_blocking(move || files.write(&n, 0, &data)).await {
                Ok(Ok(())) => Ok(c),
                Ok(Err(source)) => Err(CacheError::CacheFile {
                    name: name.clone(),
                    source,
                }),
                Err(e) => Err(CacheError::CacheFile {
                    name: name.clone(),
                    source: std::io::Error::other(e),
                }),
            }
        }
        Err(e) => Err(e),
    };
    let mut st = inner.state();
    if st.closed {
        return;
    }
    st.uploading -= 1;
    let Some(obj) = st.objects.get_mut(&name) else {
        return;
    };
    obj.uploading = false;
    let failure = match result {
        Ok(c) => {
            obj.retry_at = None;
            obj.backoff = inner.config.retry_initial;
            inner.counters.uploads.fetch_add(1, Ordering::Relaxed);
            st.uploaded(&name, c.seq, c.captured_at);
            let needed = st.needed_from();
            // Sealing the active segment is left to writers that need the space.
            if let Err(e) = st.journal.reclaim(needed, false) {
                tracing::warn!(error = %e, "journal reclaim failed");
            }
            if let Err(e) = st.evict() {
                tracing::warn!(error = %e, "cache eviction failed");
            }
            None
        }
        Err(e) => Some(e),
    };
    if let Some(e) = failure
        && let Some(obj) = st.objects.get_mut(&name)
    {
        let wait = obj
            .backoff
            .max(inner.config.retry_initial)
            .min(inner.config.retry_max);
        obj.retry_at = Some(Instant::now() + wait);
        obj.backoff = wait.saturating_mul(2).min(inner.config.retry_max);
        inner.counters.upload_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(object = %name, error = %e, retry_in = ?wait, "upload failed");
    }
    drop(st);
    inner.space.notify_waiters();
    inner.uploaded.notify_waiters();
    inner.wake.notify_one();
}

/// What an upload sends: the object's whole content as of journal seq `seq`.
struct Content {
    data: Bytes,
    seq: u64,
    captured_at: Instant,
}

/// The object's full content and the journal seq it reflects, taken under one lock.
async fn content(inner: &Arc<Inner>, name: &str) -> Result<Content, CacheError> {
    let size = inner.config.object_size;
    let capture = |st: &crate::index::State, base: Option<&[u8]>| {
        let seq = st
            .objects
            .get(name)
            .and_then(|o| o.dirty.as_ref())
            .map_or(0, |d| d.last_seq);
        let data = st
            .read(name, 0..size, base)
            .map_err(|source| CacheError::CacheFile {
                name: name.to_owned(),
                source,
            })?;
        Ok(Content {
            data: Bytes::from(data),
            seq,
            captured_at: Instant::now(),
        })
    };
    {
        let st = inner.state();
        if st.objects.get(name).is_some_and(|o| o.holds(0..size)) {
            return capture(&st, None);
        }
    }
    // Parts never written here and not cached come from the bucket; the object is marked
    // uploading, so it is not evicted and its local ranges stay newer than this base.
    let base = fetch_shared(inner, name).await?;
    let st = inner.state();
    capture(&st, Some(&base))
}
