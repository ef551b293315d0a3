//! Sealing a device cluster's data set (issue 19 item 4, docs/decisions/0017): `job seal` on
//! any device freezes every device's writes, then writes one signed manifest into the cluster.
//!
//! The protocol, through three kinds of objects in the cluster bucket:
//! 1. the sealing device writes `seal/begin` (sealed under the job key: who, when);
//! 2. every device notices it (at unlock, and every `WATCH_EVERY` after), stops accepting
//!    writes, waits for its commits, part records and functions in flight and writes
//!    `seal/ack/<device>`;
//! 3. once every device up has acknowledged (and the tables are whole after any return), the
//!    sealing device drops the cluster's unfinished multipart uploads (they live in the bucket,
//!    `uploads.rs`: dropped once, when no device can add a part any more), lists the cluster's
//!    records, writes the manifest as on a standalone device and stores it as `seal/manifest`;
//!    every device copies it to its own manifest file and becomes SEALED;
//! 4. the sealing device removes the segments no object names (`sweep_unreferenced`).
//!
//! Must not: decide membership (the daemon says which devices are up, `Members`). Invariant: the
//! manifest is written only after every device that could still commit a record has said it
//! will not: a device that is down cannot reach a write quorum, and one that returns sees
//! `seal/begin` before it serves.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::gateway::GatewayError;
use crate::gateway::import::Device;
use crate::gateway::import::cluster::{QuorumLost, record_key};
use crate::gateway::import::device::Inner;
use crate::gateway::import::job::JobState;
use crate::gateway::import::record;
use crate::store::StoreError;
use crate::store::device as keys;

const BEGIN: &str = "seal/begin";
const ACKS: &str = "seal/ack/";
const MANIFEST: &str = "seal/manifest";
/// How often an unlocked device looks for a seal begun elsewhere.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long a seal waits for every device up to confirm, and for whole tables.
const CONFIRM_LIMIT: Duration = Duration::from_secs(120);
/// Unreferenced segments deleted at once after a seal.
const SWEEP_DELETES: usize = 16;

/// Who began the seal, and when.
#[derive(Debug, Serialize, Deserialize)]
struct Begin {
    device: String,
    unix: i64,
}

fn aad(job: &str, what: &str) -> String {
    format!("device/{job}/{what}")
}

impl Device {
    /// `LOADING` (writes accepted), `SEALING` (a cluster's seal is begun: writes refused, the
    /// manifest not written yet) or `SEALED`.
    pub fn seal_state(&self) -> &'static str {
        if !self.is_sealed() {
            "LOADING"
        } else if self.manifest_path().exists() {
            "SEALED"
        } else {
            "SEALING"
        }
    }

    fn cluster_get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, GatewayError>> {
        let bucket = self.link().map(|l| l.bucket.clone());
        let key = key.to_owned();
        async move {
            let Some(bucket) = bucket else {
                return Ok(None);
            };
            match bucket.get(&key).await {
                Ok(b) => Ok(Some(b.to_vec())),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    }

    /// One look at the cluster's seal: a seal begun elsewhere stops this device's writes
    /// (and is acknowledged); a manifest written elsewhere becomes this device's manifest file
    /// and its job state SEALED. Returns whether the manifest is here.
    pub(crate) async fn observe_seal(&self) -> Result<bool, GatewayError> {
        if !self.in_cluster() {
            return Ok(false);
        }
        let job = self.inner.job.clone();
        let state = self
            .inner
            .catalog
            .job(&job)?
            .and_then(|r| JobState::parse(&r.state));
        if state.is_some_and(|s| !s.accepts_writes()) && self.manifest_path().exists() {
            self.inner.sealed.store(true, Ordering::SeqCst);
            return Ok(true);
        }
        if !self.inner.seal_acked.load(Ordering::SeqCst) {
            let Some(sealed) = self.cluster_get(BEGIN).await? else {
                return Ok(false);
            };
            let begin: Begin = record::open(&self.inner.codec, &aad(&job, BEGIN), sealed)?;
            if self.cluster_get(MANIFEST).await?.is_none() {
                tracing::info!(job = %job, by = %begin.device, "device cluster: sealing, writes stop");
                self.freeze().await?;
                return Ok(false);
            }
            // Sealed already: every device that could write has confirmed.
            self.inner.sealed.store(true, Ordering::SeqCst);
            self.inner.seal_acked.store(true, Ordering::SeqCst);
        }
        let Some(text) = self.cluster_get(MANIFEST).await? else {
            return Ok(false);
        };
        let text = String::from_utf8(text)
            .map_err(|e| GatewayError::Corrupt(format!("the cluster's manifest: {e}").into()))?;
        self.write_manifest(&text)?;
        let check = self.check_manifest();
        if let Some(problem) = check.problem {
            return Err(GatewayError::Corrupt(
                format!("the cluster's manifest: {problem}").into(),
            ));
        }
        if state.is_some_and(|s| s.accepts_writes()) {
            self.inner
                .catalog
                .set_job_state(&job, JobState::Sealed.as_str(), None)?;
        }
        Ok(true)
    }

    /// Stops this device's writes for a seal: no new commit (or part record) passes, those in
    /// flight and the functions queued finish first; then says so in the cluster.
    async fn freeze(&self) -> Result<(), GatewayError> {
        let Some(link) = self.link() else {
            return Ok(());
        };
        // Clients are refused from here on; the functions queued still write (set first: a
        // run must not see the seal without it).
        self.inner.functions.set_finishing(true);
        self.inner.sealed.store(true, Ordering::SeqCst);
        {
            let _guard = self.lock_after_functions().await;
        }
        let ack = record::seal(
            &self.inner.codec,
            &aad(&self.inner.job, ACKS),
            &Begin {
                device: link.device.clone(),
                unix: crate::clock::unix_secs(),
            },
        )?;
        link.bucket
            .put(&format!("{ACKS}{}", link.device), ack.into())
            .await?;
        self.inner.seal_acked.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// `seal` on a device of a cluster (the module header's protocol).
    pub(crate) async fn seal_cluster(&self) -> Result<(u64, u64), GatewayError> {
        let Some(link) = self.link() else {
            return Err(GatewayError::Internal("not a cluster device".into()));
        };
        let job = self.inner.job.clone();
        if self.observe_seal().await? {
            return Ok(self.object_count());
        }
        if self.cluster_get(BEGIN).await?.is_none() {
            link.gate.check()?;
            let begin = record::seal(
                &self.inner.codec,
                &aad(&job, BEGIN),
                &Begin {
                    device: link.device.clone(),
                    unix: crate::clock::unix_secs(),
                },
            )?;
            link.bucket.put(BEGIN, begin.into()).await?;
        }
        self.freeze().await?;
        let deadline = tokio::time::Instant::now() + CONFIRM_LIMIT;
        loop {
            let waiting = self.unconfirmed().await?;
            if waiting.is_empty() && link.tables.synced() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let why = if waiting.is_empty() {
                    "the cluster's tables are still being brought up to date after a device \
                     returned"
                        .to_owned()
                } else {
                    format!(
                        "device(s) {} did not confirm that they stopped writing (unlock them, \
                         or wait until `device status` shows them DOWN)",
                        waiting.join(", ")
                    )
                };
                return Err(GatewayError::Unavailable(Box::new(QuorumLost(format!(
                    "the seal is begun (every device refuses writes) but not finished: {why}; \
                     run `job seal` again"
                )))));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // No device adds a part any more: the unfinished uploads go, as on a standalone device.
        self.drop_uploads().await?;
        // Every record committed anywhere is in the bucket now: the index is made whole.
        self.sync_all().await?;
        let (text, objects, bytes) = self.manifest_text()?;
        self.write_manifest(&text)?;
        link.bucket.put(MANIFEST, text.into_bytes().into()).await?;
        self.inner
            .catalog
            .set_job_state(&job, JobState::Sealed.as_str(), None)?;
        tracing::info!(job = %job, objects, bytes, "device cluster: sealed");
        self.sweep_after_seal().await;
        Ok((objects, bytes))
    }

    /// [`Self::sweep_unreferenced`] for `job seal`: a failure is logged, never the seal's.
    pub(crate) async fn sweep_after_seal(&self) {
        if let Err(e) = self.sweep_unreferenced().await {
            tracing::warn!(job = %self.inner.job, error = %crate::error_chain::chain(&e), "device cluster: removing unreferenced segments");
        }
    }

    /// Removes the segments in the cluster that no object of the sealed data set names: those
    /// of writes a crash interrupted, of an object replaced through two devices at once, of a
    /// part sent again through a device whose node had not seen the first copy. Only after the
    /// manifest (nothing adds a segment any more), and only while the listing of the records is
    /// known complete: the tables whole and every device of the cluster up, so each record's
    /// copies are all reachable and alike; a record that does not verify also keeps every
    /// segment (its own cannot be told). Otherwise the segments stay and `job seal` run again
    /// removes them. Returns how many were removed.
    pub(crate) async fn sweep_unreferenced(&self) -> Result<usize, GatewayError> {
        let Some(link) = self.link() else {
            return Ok(0);
        };
        let job = &self.inner.job;
        let kept = |why: String| {
            tracing::info!(job = %job, "device cluster: unreferenced segments kept: {why}; `job seal` run again removes them");
            Ok(0)
        };
        if !link.tables.synced() {
            return kept("the cluster's tables are being brought up to date".into());
        }
        match link.members.down() {
            None => return kept("the cluster's membership is not known yet".into()),
            Some(down) if !down.is_empty() => {
                return kept(format!("device(s) {} are down", down.join(", ")));
            }
            Some(_) => {}
        }
        self.sync_all().await?;
        let mut held = self.held_segments(None);
        held.extend(self.upload_segment_ids().await?);
        let known: HashSet<String> = self
            .read_index()
            .keys()
            .map(|name| record_key(&keys::name_id(&self.inner.key, name)))
            .collect();
        let unknown = link
            .bucket
            .list("rec/")
            .await?
            .into_iter()
            .filter(|o| !known.contains(&o.key))
            .count();
        if unknown > 0 {
            return kept(format!("{unknown} object record(s) do not verify"));
        }
        let orphans: Vec<String> = link
            .bucket
            .list("seg/")
            .await?
            .into_iter()
            .filter(|o| {
                o.key
                    .strip_prefix("seg/")
                    .is_some_and(|id| !held.contains(id))
            })
            .map(|o| o.key)
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let bucket = link.bucket.clone();
        let listed = orphans.len();
        let failed: Vec<StoreError> = futures::stream::iter(orphans)
            .map(move |key| {
                let bucket = bucket.clone();
                async move { bucket.delete(&key).await }
            })
            .buffer_unordered(SWEEP_DELETES)
            .filter_map(|r| std::future::ready(r.err()))
            .collect()
            .await;
        let removed = listed - failed.len();
        tracing::info!(job = %job, removed, "device cluster: removed segments no object names");
        match failed.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(removed),
        }
    }

    /// The devices up (as the daemon last saw them) that have not acknowledged the seal; while
    /// the membership is not known yet, a placeholder that keeps the seal waiting.
    async fn unconfirmed(&self) -> Result<Vec<String>, GatewayError> {
        let Some(link) = self.link() else {
            return Ok(Vec::new());
        };
        let Some(up) = link.members.up() else {
            return Ok(vec![
                "(the cluster's membership is not known yet)".to_owned(),
            ]);
        };
        let acked: std::collections::HashSet<String> = link
            .bucket
            .list(ACKS)
            .await?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(ACKS).map(str::to_owned))
            .collect();
        Ok(up.into_iter().filter(|d| !acked.contains(d)).collect())
    }
}

/// Looks for a seal begun elsewhere every `WATCH_EVERY` until the manifest is here or the
/// device is locked (its last clone dropped).
pub(crate) fn watch(device: &Device) {
    let weak: std::sync::Weak<Inner> = Arc::downgrade(&device.inner);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let Some(inner) = weak.upgrade() else { return };
            let device = Device { inner };
            match device.observe_seal().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job = %device.job_id(), error = %e, "device cluster: reading the seal")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::gateway::import::ObjectAttrs;
    use crate::gateway::import::record::ExpectedDigests;

    /// issue 19: segments no object names (a write a kill cut short, here planted) are removed
    /// by the seal only while every device is up and every record verifies; `job seal` run
    /// again removes them once that holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_seal_removes_unreferenced_segments_only_when_it_can_tell_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, bucket) =
            crate::gateway::import::cluster::tests::pair(dir.path(), |_, _| {}).await;
        let mut w = b.writer().unwrap();
        w.write(Bytes::from_static(b"kept data")).await.unwrap();
        b.put(
            "kept",
            w,
            ObjectAttrs::default(),
            ExpectedDigests::default(),
        )
        .await
        .unwrap();
        let orphan = format!("seg/{}", "0f".repeat(16));
        bucket
            .put(&orphan, Bytes::from_static(b"ciphertext of a cut write"))
            .await
            .unwrap();
        let segments = || async { bucket.list("seg/").await.unwrap().len() };
        assert_eq!(segments().await, 2);

        let members = &a.link().unwrap().members;
        members.set(vec!["a".into(), "b".into()], vec!["c".into()]);
        assert_eq!(a.seal().await.unwrap(), (1, 9));
        assert_eq!(segments().await, 2, "removed while device c was down");

        members.set(vec!["a".into(), "b".into(), "c".into()], Vec::new());
        let foreign = format!("rec/{}", "ab".repeat(32));
        bucket
            .put(&foreign, Bytes::from_static(b"not sealed by this job"))
            .await
            .unwrap();
        assert_eq!(b.seal().await.unwrap(), (1, 9));
        assert_eq!(
            segments().await,
            2,
            "removed beside a record that does not verify"
        );

        bucket.delete(&foreign).await.unwrap();
        assert_eq!(b.seal().await.unwrap(), (1, 9));
        assert_eq!(segments().await, 1);
        assert!(bucket.get(&orphan).await.is_err());
        let (_, mut s) = a.read("kept", None).unwrap();
        let mut out = Vec::new();
        while let Some(p) = futures::StreamExt::next(&mut s).await {
            out.extend_from_slice(&p.unwrap());
        }
        assert_eq!(out, b"kept data");
    }

    /// A device up in Garage that never confirms (its tidegate gone, its node alive) holds the
    /// seal for `CONFIRM_LIMIT`; then `job seal` fails naming it, writes stay refused, and the
    /// seal run again once the device is seen down finishes. (Time is paused: the 120 s pass
    /// at once.)
    #[tokio::test(start_paused = true)]
    async fn a_seal_waits_for_a_silent_device_for_its_limit_then_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, _bucket) =
            crate::gateway::import::cluster::tests::pair(dir.path(), |_, _| {}).await;
        let members = &a.link().unwrap().members;
        members.set(vec!["a".into(), "b".into(), "c".into()], Vec::new());
        let started = tokio::time::Instant::now();
        match a.seal().await {
            Err(GatewayError::Unavailable(e)) => {
                let said = e.to_string();
                assert!(said.contains("device(s) c did not confirm"), "{said}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() >= CONFIRM_LIMIT,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(a.seal_state(), "SEALING");
        assert!(a.is_sealed() && b.is_sealed(), "writes are taken again");

        members.set(vec!["a".into(), "b".into()], vec!["c".into()]);
        assert_eq!(a.seal().await.unwrap(), (0, 0));
        assert_eq!(a.seal_state(), "SEALED");
    }
}
