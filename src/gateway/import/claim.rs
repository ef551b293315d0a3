//! One run at a time per import share of a device cluster (docs/decisions/0017): a run of
//! `job import --share I/N` holds the claim `imp/claim/<N>-<I>` in the cluster (sealed under the
//! job key: device, run, a beat counter) and rewrites it every `BEAT_EVERY` while it runs.
//!
//! Garage ignores conditional writes, so a claim cannot be taken atomically. Instead a run that
//! finds a claim watches its beat: a beat that moves is a live run, and the new run is refused
//! (`Busy`, naming the device) instead of sending the share's objects a second time; a beat
//! that stays still for `STALE` is a run that was killed, and the new run takes over. Two runs
//! starting within moments of each other both write their claim, wait `SETTLE` and read it
//! back: the one whose claim Garage kept (last writer wins) goes on, the other is refused.
//!
//! Must not: decide what is imported (the parts do). Invariant: while a run holds the claim,
//! its beat moves at least every `BEAT_EVERY` (unless the process stalls for longer than
//! `STALE`, the residual case in which two runs would both send, each object still verified).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::gateway::GatewayError;
use crate::gateway::import::Device;
use crate::gateway::import::parts::Share;
use crate::gateway::import::record;
use crate::store::{Bucket, StoreError};

const CLAIMS: &str = "imp/claim/";
/// How often a running share rewrites its claim.
const BEAT_EVERY: Duration = Duration::from_secs(2);
/// How long a claim's beat must stand still before its run counts as gone: five beats missed.
const STALE: Duration = Duration::from_secs(10);
/// How long a new claim settles before it is read back (Garage keeps the last of two writes).
const SETTLE: Duration = Duration::from_secs(2);
/// How often a claim found in place is looked at again.
const LOOK_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    device: String,
    run: String,
    beat: u64,
}

/// This run's hold on its share; the beat stops when it is released or dropped.
#[derive(Debug)]
pub(crate) struct ShareClaim {
    bucket: Arc<Bucket>,
    key: String,
    beat: tokio::task::JoinHandle<()>,
}

fn claim_key(share: Share) -> String {
    format!("{CLAIMS}{}-{}", share.count, share.index)
}

fn busy(share: Share, holder: &Claim) -> GatewayError {
    GatewayError::Busy(format!(
        "share {share} is being imported by device {} right now; running it twice at once \
         would send its objects twice. Wait for that run to end (or, if it was stopped, run \
         this again: a claim whose run is gone is taken over after {} s)",
        holder.device,
        STALE.as_secs()
    ))
}

async fn read(device: &Device, bucket: &Bucket, key: &str) -> Result<Option<Claim>, GatewayError> {
    match bucket.get(key).await {
        Ok(sealed) => {
            let aad = format!("device/{}/{key}", device.inner.job);
            Ok(Some(record::open(
                &device.inner.codec,
                &aad,
                sealed.to_vec(),
            )?))
        }
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn write(
    device: &Device,
    bucket: &Bucket,
    key: &str,
    claim: &Claim,
) -> Result<(), GatewayError> {
    let aad = format!("device/{}/{key}", device.inner.job);
    let sealed = record::seal(&device.inner.codec, &aad, claim)?;
    bucket.put(key, sealed.into()).await?;
    Ok(())
}

impl ShareClaim {
    /// Takes `share` for this run on `device` (named `name` in the cluster), waiting up to
    /// `STALE` for a claim left by a run that is gone; `Busy` while another run holds it.
    pub(crate) async fn take(
        device: &Device,
        bucket: Arc<Bucket>,
        name: &str,
        share: Share,
    ) -> Result<Self, GatewayError> {
        let key = claim_key(share);
        if let Some(first) = read(device, &bucket, &key).await? {
            let since = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(LOOK_EVERY).await;
                match read(device, &bucket, &key).await? {
                    None => break,
                    Some(now) if now != first => return Err(busy(share, &now)),
                    Some(_) if since.elapsed() >= STALE => {
                        tracing::info!(%share, device = %first.device, "import share: the claim's run is gone; taking over");
                        break;
                    }
                    Some(_) => {}
                }
            }
        }
        let mine = Claim {
            device: name.to_owned(),
            run: format!(
                "{name}-{}-{}",
                std::process::id(),
                crate::clock::unix_millis()
            ),
            beat: 0,
        };
        write(device, &bucket, &key, &mine).await?;
        tokio::time::sleep(SETTLE).await;
        match read(device, &bucket, &key).await? {
            Some(kept) if kept.run != mine.run => return Err(busy(share, &kept)),
            _ => {}
        }
        let beat = tokio::spawn({
            let (device, bucket, key) = (device.clone(), bucket.clone(), key.clone());
            async move {
                let mut claim = mine;
                loop {
                    tokio::time::sleep(BEAT_EVERY).await;
                    claim.beat += 1;
                    if let Err(e) = write(&device, &bucket, &key, &claim).await {
                        tracing::warn!(error = %e, key, "import share: renewing the claim");
                    }
                }
            }
        });
        Ok(Self { bucket, key, beat })
    }

    /// Ends the claim: the next run of the share starts at once.
    pub(crate) async fn release(&self) {
        self.beat.abort();
        if let Err(e) = self.bucket.delete(&self.key).await {
            tracing::warn!(error = %e, key = %self.key, "import share: removing the claim");
        }
    }
}

impl Drop for ShareClaim {
    fn drop(&mut self) {
        self.beat.abort();
    }
}
