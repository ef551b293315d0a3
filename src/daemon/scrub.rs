//! `tidegate scrub`: reads every chunk in the bucket back through the codec and reports the ones
//! that fail verification, recording each in the catalog so `status` shows it afterwards.
//!
//! Read-only towards the bucket: a corrupt chunk is reported, never deleted or rewritten.

use futures::StreamExt;

use crate::daemon::{DaemonError, Engine};
use crate::store::StoreError;
use crate::store::keys::{CHUNKS_PREFIX, ChunkId};

/// Chunks verified at once: enough to keep the bucket busy, few enough to bound memory.
const PARALLEL: usize = 8;

#[derive(Debug, Default)]
pub struct ScrubReport {
    pub checked: u64,
    pub bytes: u64,
    pub corrupt: Vec<String>,
    pub unreadable: Vec<String>,
}

/// Scrubs every chunk; `progress` is called after each with (done, total).
pub async fn scrub(
    engine: &Engine,
    mut progress: impl FnMut(u64, u64),
) -> Result<ScrubReport, DaemonError> {
    let objects = engine.chunks.bucket().list(CHUNKS_PREFIX).await?;
    let total = objects.len() as u64;
    let mut report = ScrubReport::default();
    let chunks = &engine.chunks;
    let mut results = futures::stream::iter(objects.into_iter().map(|o| async move {
        let outcome = match ChunkId::from_object_key(&o.key) {
            Some(id) => chunks.get(id).await.map(|d| d.len() as u64),
            None => Ok(0),
        };
        (o.key, outcome)
    }))
    .buffer_unordered(PARALLEL);
    while let Some((key, outcome)) = results.next().await {
        report.checked += 1;
        match outcome {
            Ok(n) => report.bytes += n,
            Err(StoreError::Corrupt(e)) => {
                engine
                    .catalog
                    .record_integrity_event(&key, &e.to_string())?;
                report.corrupt.push(e.to_string());
            }
            Err(e) => report.unreadable.push(format!("{key}: {e}")),
        }
        progress(report.checked, total);
    }
    Ok(report)
}
